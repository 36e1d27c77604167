#include "side_channel.hpp"

#include <array>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>

#include "backend_messages.hpp"

namespace dtu::services::cups {
namespace {

// Waits this long for a whole request once fd 4 is readable, and for cupsd to take an answer
// (seconds, as libcups takes them): cupsd and the filters answer at once.
constexpr double kSideChannelTimeout = 1.0;

}  // namespace

bool SideChannel::available() {
  struct stat st {};
  return ::fstat(CUPS_SC_FD, &st) == 0 && S_ISSOCK(st.st_mode);
}

SideChannel::SideChannel(asio::any_io_executor executor, SideChannelPrinter& printer)
    : printer_(printer), fd_(std::move(executor), ::dup(CUPS_SC_FD)) {}

SideChannel::~SideChannel() = default;

void SideChannel::stop() {
  stopped_ = true;
  asio::error_code ignored;
  fd_.cancel(ignored);
}

asio::awaitable<void> SideChannel::serve() {
  while (!stopped_) {
    auto [ec] = co_await fd_.async_wait(asio::posix::descriptor_base::wait_read,
                                        asio::experimental::as_tuple(asio::use_awaitable));
    if (ec || stopped_) break;
    cups_sc_command_t command = CUPS_SC_CMD_NONE;
    cups_sc_status_t status = CUPS_SC_STATUS_NONE;
    std::array<char, 2048> data{};
    int length = static_cast<int>(data.size());
    if (cupsSideChannelRead(&command, &status, data.data(), &length, kSideChannelTimeout) != 0) {
      // End of file (the filter side went away) or a garbled request: nobody to answer.
      debug("dtu: side channel closed or unreadable, no longer answering it");
      break;
    }
    auto op = answer(command);
    const Answer reply = co_await std::move(op);
    if (cupsSideChannelWrite(command, reply.status, reply.data.data(), static_cast<int>(reply.data.size()),
                             kSideChannelTimeout) != 0) {
      debug("dtu: could not answer a side channel request");
    }
  }
}

asio::awaitable<SideChannel::Answer> SideChannel::answer(cups_sc_command_t command) {
  Answer reply;
  switch (command) {
    case CUPS_SC_CMD_GET_DEVICE_ID: {
      auto op = printer_.device_id();
      const auto id = co_await std::move(op);
      if (id) {
        reply.status = CUPS_SC_STATUS_OK;
        reply.data = *id;
      } else {
        reply.status = printer_.connected() ? CUPS_SC_STATUS_NOT_IMPLEMENTED : CUPS_SC_STATUS_IO_ERROR;
      }
      break;
    }
    case CUPS_SC_CMD_GET_CONNECTED:
      reply.status = CUPS_SC_STATUS_OK;
      reply.data = std::string(1, printer_.connected() ? 1 : 0);
      break;
    case CUPS_SC_CMD_GET_STATE: {
      auto op = printer_.state();
      const int bits = co_await std::move(op);
      reply.status = CUPS_SC_STATUS_OK;
      reply.data = std::string(1, static_cast<char>(bits));
      break;
    }
    case CUPS_SC_CMD_DRAIN_OUTPUT: {
      auto op = printer_.drain();
      const Drained drained = co_await std::move(op);
      reply.status = drained == Drained::all         ? CUPS_SC_STATUS_OK
                     : drained == Drained::timed_out ? CUPS_SC_STATUS_TIMEOUT
                                                     : CUPS_SC_STATUS_IO_ERROR;
      break;
    }
    case CUPS_SC_CMD_SOFT_RESET: {
      auto op = printer_.soft_reset();
      const bool reset = co_await std::move(op);
      reply.status = reset ? CUPS_SC_STATUS_OK : CUPS_SC_STATUS_NOT_IMPLEMENTED;
      break;
    }
    default:
      reply.status = CUPS_SC_STATUS_NOT_IMPLEMENTED;
      break;
  }
  co_return reply;
}

}  // namespace dtu::services::cups
