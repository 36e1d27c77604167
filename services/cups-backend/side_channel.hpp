#pragma once
// SideChannel: answers the CUPS side channel (fd 4, CUPS_SC_FD; backend(7), cupsSideChannelRead)
// while a job is printed: filters ask the backend for the printer's device id, whether it is
// connected, its state, to drain its output or to soft-reset it. What the answers say comes from
// a SideChannelPrinter (the print job). Runs as one coroutine on the backend's io_context thread;
// not thread-safe.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <cups/sidechannel.h>
#include <asio.hpp>

namespace dtu::services::cups {

// How a drain ended.
enum class Drained {
  all,            // every byte handed to the printer so far is acknowledged
  channel_ended,  // the channel to the printer ended first
  timed_out,      // the printer took no more within the drain's deadline (a stalled printer)
};

// What the side channel asks of the printer. Every coroutine runs on the io_context thread.
class SideChannelPrinter {
 public:
  virtual ~SideChannelPrinter() = default;
  // The IEEE 1284 device id; nullopt when the printer has none or cannot be asked now.
  virtual asio::awaitable<std::optional<std::string>> device_id() = 0;
  // Whether the in-band channel to the printer is open.
  virtual bool connected() const = 0;
  // CUPS_SC_STATE_* bits (ONLINE when the printer does not report its port status).
  virtual asio::awaitable<int> state() = 0;
  // Completes once every byte handed to the printer so far is acknowledged, when the channel
  // ends, or at a deadline (the side channel answers nothing else meanwhile).
  virtual asio::awaitable<Drained> drain() = 0;
  // A printer-class SOFT_RESET; false when the printer refused (STALL) or is not connected.
  virtual asio::awaitable<bool> soft_reset() = 0;
};

class SideChannel {
 public:
  // Whether fd 4 is a side channel socket (absent when the backend is run by hand).
  static bool available();

  // REQUIRES: available(); `printer` outlives serve().
  SideChannel(asio::any_io_executor executor, SideChannelPrinter& printer);
  ~SideChannel();
  SideChannel(const SideChannel&) = delete;
  SideChannel& operator=(const SideChannel&) = delete;

  // Answers requests until stop() or until the side channel closes.
  asio::awaitable<void> serve();
  // Ends serve() (a request being answered is finished first). Idempotent.
  void stop();

 private:
  // The answer to one request: status and data for cupsSideChannelWrite.
  struct Answer {
    cups_sc_status_t status = CUPS_SC_STATUS_NOT_IMPLEMENTED;
    std::string data;
  };
  asio::awaitable<Answer> answer(cups_sc_command_t command);

  SideChannelPrinter& printer_;
  asio::posix::stream_descriptor fd_;  // a dup of fd 4, for waiting on readability
  bool stopped_ = false;
};

}  // namespace dtu::services::cups
