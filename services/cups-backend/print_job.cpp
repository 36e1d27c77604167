#include "print_job.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <span>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cups/backend.h>
#include <cups/sidechannel.h>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "backend_messages.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/log.hpp"

namespace dtu::services::cups {
namespace {

using namespace std::chrono_literals;
using common::Errc;
using common::Error;

// How long a job waits for an unreachable manager before CUPS retries it later.
constexpr common::Duration kConnectPatience = 20s;
// Deadline of connect and of each request to the manager.
constexpr common::Duration kRequestTimeout = 10s;
// Waits between connection attempts: from the first doubling to the last.
constexpr common::Duration kRetryFirst = 500ms;
constexpr common::Duration kRetryLast = 4s;
// How long the manager may take to deliver the group's printers (it asks no DTU for them).
constexpr common::Duration kSyncTimeout = 10s;
// One allocate-with-wait: the longest wait a manager accepts (wait_ms ≤ 24 h, docs/protocol.md
// `allocate`), so the job keeps its place in the unit's first-come-first-served queue. A new
// request would go to the back of the queue.
constexpr common::Duration kLongestWait = std::chrono::hours(24);
// While it waits, the backend says so again this often (and at once when the holder changes).
constexpr common::Duration kWaitReminder = 60s;
// Pause before allocating again when the manager or the DTU is unavailable.
constexpr common::Duration kUnavailablePause = 2s;
// The longest a side-channel drain waits for the printer (the side channel answers nothing
// else meanwhile); then it answers CUPS_SC_STATUS_TIMEOUT.
constexpr common::Duration kDrainDeadline = 30s;
// Bytes read from the job before they are streamed (stream() keeps 4 × 64 KiB in flight).
constexpr std::size_t kBatchBytes = 256 * 1024;
// A DEBUG: progress line every so many bytes.
constexpr std::uint64_t kProgressEvery = 1024 * 1024;
// Printer-class requests (USB Printer Class 1.1, §4.2): GET_PORT_STATUS and SOFT_RESET, to the
// printer's interface; the port status bits it answers.
constexpr std::uint8_t kGetPortStatus = 1;
constexpr std::uint8_t kSoftReset = 2;
constexpr std::uint8_t kClassInterfaceIn = 0xa1;
constexpr std::uint8_t kClassInterfaceOut = 0x21;
constexpr std::uint8_t kPortPaperEmpty = 0x20;
constexpr std::uint8_t kPortSelect = 0x10;
constexpr std::uint8_t kPortNotError = 0x08;
constexpr common::Duration kControlTimeout = 2s;
// One back-channel read at the DTU: short, so the reader notices the end of the job soon.
constexpr common::Duration kBackChannelRead = 1s;
// How long one cupsBackChannelWrite may wait for cupsd (seconds, as libcups takes them).
constexpr double kBackChannelWriteTimeout = 1.0;
// The back channel's file descriptor (backend(7); cupsBackChannelWrite writes to it).
constexpr int kBackChannelFd = 3;

// The holder a refusal names ("… held by print-svc[4711]@m1 (lease …)"), else the whole text.
std::string holder_in(const std::string& refusal) {
  constexpr std::string_view kHeldBy = "held by ";
  const auto at = refusal.find(kHeldBy);
  if (at == std::string::npos) return refusal;
  const auto start = at + kHeldBy.size();
  return refusal.substr(start, refusal.find(' ', start) - start);
}

bool back_channel_available() {
  struct stat st {};
  // cupsd gives a pipe or a socket; anything else on fd 3 was inherited from a shell.
  return ::fstat(kBackChannelFd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
}

}  // namespace

PrintJob::PrintJob(asio::any_io_executor executor, JobRequest request)
    : executor_(executor),
      request_(std::move(request)),
      wake_(executor),
      progress_(executor),
      reminder_(executor) {}

PrintJob::~PrintJob() = default;

std::string PrintJob::printer_name() const {
  const std::string what = device_.product.value_or(uri_.by_serial() ? uri_.serial : uri_.port);
  return what + " on DTU " + device_.dtu + " port " + device_.device;
}

void PrintJob::cancel() {
  if (cancelled_) return;
  cancelled_ = true;
  info("dtu: job " + request_.job_id + " cancelled");
  reading_back_ = false;
  if (channel_) channel_->close();
  // Closing the connection makes the manager drop our lease (and a queued wait) at once.
  if (client_) client_->close();
  if (side_channel_) side_channel_->stop();
  wake_.poke();
  progress_.poke();
  reminder_.poke();
}

asio::awaitable<void> PrintJob::pause(common::Duration delay) {
  wake_.reset();
  auto wait = wake_.wait(delay);
  co_await std::move(wait);
}

asio::awaitable<int> PrintJob::run() {
  auto parsed = parse_printer_uri(request_.uri);
  if (!parsed.ok()) {
    error("dtu: " + parsed.error().detail);
    co_return CUPS_BACKEND_STOP;
  }
  uri_ = std::move(*parsed);
  if (SideChannel::available()) {
    side_channel_ = std::make_unique<SideChannel>(executor_, *this);
    common::spawn(executor_, side_channel_->serve(), common::Logger("cups-dtu-backend"), "side channel");
  }
  Step step;
  {
    auto op = connect();
    step = co_await std::move(op);
  }
  if (!step) {
    auto op = resolve();
    step = co_await std::move(op);
  }
  if (!step) {
    auto op = allocate();
    step = co_await std::move(op);
  }
  if (!step) {
    auto op = print();
    step = co_await std::move(op);
  }
  auto done = finish();
  co_await std::move(done);
  co_return cancelled_ ? CUPS_BACKEND_OK : step.value_or(CUPS_BACKEND_OK);
}

asio::awaitable<PrintJob::Step> PrintJob::connect() {
  const auto give_up = std::chrono::steady_clock::now() + kConnectPatience;
  common::Duration delay = kRetryFirst;
  while (!cancelled_) {
    client::ClientOptions options;
    options.socket = request_.socket;
    options.name = "cups-dtu[job " + request_.job_id + "]";
    options.request_timeout = kRequestTimeout;
    auto op = client::Client::connect(executor_, common::SystemClock::instance(), options);
    auto connected = co_await std::move(op);
    if (connected.ok()) {
      client_ = std::move(*connected);
      debug("dtu: connected to manager " + client_->manager_id() + " at " + request_.socket);
      co_return std::nullopt;
    }
    const std::string waiting =
        "dtu: waiting for the dtubroker manager at " + request_.socket + ": " + connected.error().describe();
    if (!connecting_shown_) {
      state_reason("+" + std::string(kConnectingReason));
      connecting_shown_ = true;
      info(waiting);
    } else {
      debug(waiting);
    }
    if (std::chrono::steady_clock::now() + delay > give_up) {
      error("dtu: no dtubroker manager answers at " + request_.socket + "; the job will be retried later");
      co_return CUPS_BACKEND_RETRY;
    }
    auto sleep = pause(delay);
    co_await std::move(sleep);
    delay = std::min(delay * 2, kRetryLast);
  }
  co_return CUPS_BACKEND_OK;
}

asio::awaitable<PrintJob::Step> PrintJob::resolve() {
  Event printers_synced(executor_);
  Event dtu_synced(executor_);
  client::FinderEvents events;
  events.synced = [&printers_synced] { printers_synced.set(); };
  events.changed = [this](const common::DeviceRecord&, const std::vector<std::uint32_t>&) {
    wake_.poke();
    reminder_.poke();  // a new holder is said at once
  };
  auto add = client_->add_finder(nlohmann::json{{"unit_class", kPrinterClass}}, std::move(events));
  auto finder = co_await std::move(add);
  if (!finder.ok()) {
    if (cancelled_) co_return CUPS_BACKEND_OK;
    error("dtu: the manager refused to look for printers: " + finder.error().describe());
    co_return finder.error().code == Errc::denied ? CUPS_BACKEND_STOP : CUPS_BACKEND_RETRY;
  }
  printers_ = *finder;
  // Whether the URI's DTU is in the group now: any device of it (a DTU that is off is not).
  std::optional<client::FinderId> dtu_finder;
  if (common::is_valid_id(uri_.dtu)) {
    client::FinderEvents dtu_events;
    dtu_events.synced = [&dtu_synced] { dtu_synced.set(); };
    auto add_dtu = client_->add_finder(nlohmann::json{{"dtu", uri_.dtu}}, std::move(dtu_events));
    auto added = co_await std::move(add_dtu);
    if (added.ok()) dtu_finder = *added;
  }
  auto wait_printers = printers_synced.wait(kSyncTimeout);
  const bool printers_ready = co_await std::move(wait_printers);
  bool dtu_present = false;
  if (dtu_finder) {
    auto wait_dtu = dtu_synced.wait(kSyncTimeout);
    if (co_await std::move(wait_dtu)) dtu_present = !client_->matches(*dtu_finder).empty();
    auto remove = client_->remove_finder(*dtu_finder);
    auto removed = co_await std::move(remove);
    (void)removed;  // the finder goes with the connection anyway
  }
  if (cancelled_) co_return CUPS_BACKEND_OK;
  if (!printers_ready) {
    error("dtu: the manager did not list the group's printers in time; the job will be retried later");
    co_return CUPS_BACKEND_RETRY;
  }
  co_return choose_printer(dtu_present);
}

namespace {

// "DTU d2 port 1-2, DTU d3 port 1-1"
std::string places(const std::vector<common::DeviceRecord>& devices) {
  std::string text;
  for (const auto& device : devices) {
    if (!text.empty()) text += ", ";
    text += "DTU " + device.dtu + " port " + device.device;
  }
  return text;
}

}  // namespace

PrintJob::Step PrintJob::choose_printer(bool dtu_present) {
  using Outcome = PrinterResolution::Outcome;
  // Orphaned records count: a printer whose DTU is between managers is still where it is.
  std::vector<common::DeviceRecord> devices;
  for (const auto& [key, match] : client_->matches(printers_)) devices.push_back(match.device);
  auto found = resolve_printer(uri_, devices);
  switch (found.outcome) {
    case Outcome::found:
    case Outcome::moved:
      if (found.device.orphaned) {
        info("dtu: DTU " + found.device.dtu + " of printer " + request_.uri +
             " is between managers; the job will be retried later");
        return CUPS_BACKEND_RETRY;
      }
      device_ = std::move(found.device);
      if (found.outcome == Outcome::moved) {
        info("dtu: printer " + uri_.serial + " is now on DTU " + device_.dtu + " port " + device_.device);
      }
      return std::nullopt;
    case Outcome::ambiguous:
      // Guessing could print at another desk: an administrator says which one is meant.
      error("dtu: printer " + request_.uri + " is not on DTU " + uri_.dtu + " and " +
            std::to_string(found.candidates.size()) + " printers elsewhere have serial number " +
            uri_.serial + " (" + places(found.candidates) +
            "); not guessing which one. Plug it back into DTU " + uri_.dtu +
            ", or point the queue at the one you mean (lpadmin -v with its dtu:// URI from lpinfo -v); the "
            "job will be retried later");
      return CUPS_BACKEND_RETRY;
    case Outcome::absent:
      break;
  }
  if (!dtu_present) {
    info("dtu: DTU " + uri_.dtu + " is not connected to the group; the job will be retried later");
    return CUPS_BACKEND_RETRY;
  }
  error("dtu: printer " + request_.uri + " is no longer attached (DTU " + uri_.dtu +
        (uri_.by_serial() ? " and no other DTU of the group has it)" : " has no printer unit there)"));
  return CUPS_BACKEND_STOP;
}

std::string PrintJob::current_holder() const {
  const auto matches = client_->matches(printers_);
  const auto it = matches.find({device_.dtu, device_.device});
  if (it == matches.end()) return {};
  for (const auto& unit : it->second.device.units) {
    if (unit.unit == uri_.unit && unit.state == common::UnitState::allocated)
      return unit.holder.value_or("another service");
  }
  return {};
}

void PrintJob::say_waiting(const std::string& why) {
  if (!connecting_shown_) {
    state_reason("+" + std::string(kConnectingReason));
    connecting_shown_ = true;
  }
  if (why == shown_) {
    info("Still waiting for printer " + printer_name() + ": " + why);
  } else {
    info("Waiting for printer " + printer_name() + ": " + why);
  }
  shown_ = why;
  last_said_ = std::chrono::steady_clock::now();
}

asio::awaitable<void> PrintJob::remind_while_waiting() {
  while (waiting_ && !cancelled_) {
    reminder_.reset();
    const auto since = std::chrono::steady_clock::now() - last_said_;
    auto wait = reminder_.wait(since < kWaitReminder ? kWaitReminder - since : kWaitReminder);
    co_await std::move(wait);
    if (!waiting_ || cancelled_) break;
    const std::string holder = current_holder();
    if (holder.empty() && shown_.empty()) continue;  // nothing known to say yet
    const std::string why = holder.empty() ? shown_ : "in use by " + holder;
    if (why != shown_ || std::chrono::steady_clock::now() - last_said_ >= kWaitReminder) say_waiting(why);
  }
}

asio::awaitable<PrintJob::Step> PrintJob::allocate() {
  if (const std::string holder = current_holder(); !holder.empty()) say_waiting("in use by " + holder);
  // One request for the whole wait; remind_while_waiting() repeats the waiting line meanwhile
  // and ends when this step does.
  struct StopReminder {
    PrintJob& job;
    ~StopReminder() {
      job.waiting_ = false;
      job.reminder_.poke();
    }
  };
  waiting_ = true;
  const StopReminder stop_reminder{*this};
  common::spawn(executor_, remind_while_waiting(), common::Logger("cups-dtu-backend"), "waiting line");
  while (!cancelled_) {
    client::AllocateOptions how;
    how.wait = kLongestWait;
    auto op = client_->allocate(device_.dtu, device_.device, uri_.unit, how);
    auto lease = co_await std::move(op);
    if (cancelled_) break;
    if (lease.ok()) {
      lease_ = std::move(*lease);
      debug("dtu: leased " + printer_name() + " unit " + std::to_string(uri_.unit) + " (lease " + lease_->id +
            ")");
      co_return std::nullopt;
    }
    const Error& why = lease.error();
    if (why.code == Errc::refused) {
      // The whole wait ran out: ask again (at the back of the queue; a day has passed).
      const std::string holder = current_holder();
      say_waiting("in use by " + (holder.empty() ? holder_in(why.detail) : holder));
    } else if (why.code == Errc::denied) {
      error("dtu: the dtubroker policy does not let this queue use " + printer_name() + ": " +
            why.describe());
      co_return CUPS_BACKEND_STOP;
    } else if (why.code == Errc::not_found) {
      info("dtu: " + printer_name() + " went away before it could be leased; the job will be retried later");
      co_return CUPS_BACKEND_RETRY;
    } else {
      if (why.describe() != shown_) say_waiting(why.describe());
      auto sleep = pause(kUnavailablePause);
      co_await std::move(sleep);
    }
  }
  co_return CUPS_BACKEND_OK;
}

asio::awaitable<PrintJob::Step> PrintJob::print() {
  auto open = client_->open_channel(*lease_);
  auto channel = co_await std::move(open);
  if (cancelled_) co_return CUPS_BACKEND_OK;
  if (!channel.ok()) {
    error("dtu: cannot reach DTU " + device_.dtu + " in-band: " + channel.error().describe() +
          "; the job will be retried later");
    co_return CUPS_BACKEND_RETRY;
  }
  channel_ = std::move(*channel);
  channel_->on_closing([this](const common::ChannelClosingMsg&) { progress_.poke(); });
  const auto& welcome = channel_->welcome();
  interface_ = welcome.interfaces.empty() ? static_cast<std::uint8_t>(uri_.unit) : welcome.interfaces.front();
  std::optional<std::uint8_t> out;
  for (const auto& ep : welcome.endpoints) {
    const bool is_in = (ep.address & 0x80) != 0;
    if (ep.type != "bulk") continue;
    if (!is_in && !out) out = ep.address;
    if (is_in && !in_endpoint_) in_endpoint_ = ep.address;
  }
  if (!out) {
    error("dtu: " + printer_name() + " unit " + std::to_string(uri_.unit) +
          " has no bulk OUT endpoint to print to");
    co_return CUPS_BACKEND_STOP;
  }
  out_endpoint_ = *out;
  if (connecting_shown_) {
    state_reason("-" + std::string(kConnectingReason));
    connecting_shown_ = false;
  }
  info("dtu: sending the job to " + printer_name());
  start_back_channel();

  auto send = send_job();
  auto sent = co_await std::move(send);
  reading_back_ = false;
  if (cancelled_) co_return CUPS_BACKEND_OK;
  if (!sent.ok()) {
    error("dtu: printing on " + printer_name() + " failed: " + sent.error().describe() +
          "; the job will be retried later");
    co_return CUPS_BACKEND_RETRY;
  }
  info("dtu: sent " + std::to_string(*sent) + " bytes to " + printer_name());
  co_return std::nullopt;
}

asio::awaitable<common::Result<std::size_t>> PrintJob::send_job() {
  if (!request_.file) {
    auto op = send_fd(STDIN_FILENO);
    co_return co_await std::move(op);
  }
  std::size_t total = 0;
  for (int copy = 0; copy < request_.copies && !cancelled_; ++copy) {
    const int fd = ::open(request_.file->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      co_return Error(Errc::io_error, "cannot open " + *request_.file + ": " + std::strerror(errno));
    auto op = send_fd(fd);
    auto sent = co_await std::move(op);
    ::close(fd);
    if (!sent.ok()) co_return sent;
    total += *sent;
  }
  co_return total;
}

asio::awaitable<common::Result<std::size_t>> PrintJob::send_fd(int fd) {
  struct stat st {};
  const bool is_stream = ::fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
  // A pipe (the filter chain) is read asynchronously, so a slow filter never stalls the side
  // channel or the channel's heartbeats; a file is read directly.
  std::optional<asio::posix::stream_descriptor> stream;
  if (is_stream) {
    const int copy = ::dup(fd);
    if (copy < 0) co_return Error(Errc::io_error, std::string("reading the job: ") + std::strerror(errno));
    stream.emplace(executor_, copy);
    stream->non_blocking(true);
  }
  std::vector<std::uint8_t> batch(kBatchBytes);
  std::size_t total = 0;
  bool end = false;
  while (!end && !cancelled_) {
    std::size_t filled = 0;
    while (filled < batch.size()) {
      const auto room = asio::buffer(batch.data() + filled, batch.size() - filled);
      if (stream) {
        // Whatever the filter has written is sent at once; more is batched while it flows.
        asio::error_code ec;
        const std::size_t n = stream->read_some(room, ec);
        filled += n;
        if (ec == asio::error::would_block || ec == asio::error::try_again) {
          if (filled > 0) break;
          auto [wait_ec] = co_await stream->async_wait(asio::posix::descriptor_base::wait_read,
                                                       asio::experimental::as_tuple(asio::use_awaitable));
          if (wait_ec) co_return Error(Errc::io_error, "reading the job: " + wait_ec.message());
          continue;
        }
        if (ec == asio::error::eof) {
          end = true;
          break;
        }
        if (ec) co_return Error(Errc::io_error, "reading the job: " + ec.message());
      } else {
        const ssize_t n = ::read(fd, batch.data() + filled, batch.size() - filled);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) co_return Error(Errc::io_error, std::string("reading the job: ") + std::strerror(errno));
        if (n == 0) {
          end = true;
          break;
        }
        filled += static_cast<std::size_t>(n);
      }
    }
    if (filled == 0) continue;
    auto op = send_batch(std::span<const std::uint8_t>(batch.data(), filled));
    auto sent = co_await std::move(op);
    if (!sent.ok()) co_return sent.error();
    total += filled;
  }
  co_return total;
}

asio::awaitable<common::Result<void>> PrintJob::send_batch(std::span<const std::uint8_t> bytes) {
  submitted_ += bytes.size();
  auto op = channel_->stream(out_endpoint_, bytes);
  auto sent = co_await std::move(op);
  if (!sent.ok()) {
    progress_.poke();
    co_return Error(sent.error().code,
                    sent.error().detail + " (after " + std::to_string(acknowledged_) + " bytes)");
  }
  acknowledged_ += *sent;
  progress_.poke();
  if (acknowledged_ >= next_progress_) {
    debug("dtu: sent " + std::to_string(acknowledged_) + " bytes");
    next_progress_ = acknowledged_ + kProgressEvery;
  }
  co_return common::Result<void>{};
}

namespace {

// Reads the printer's bulk IN endpoint while `reading` holds and hands what comes to cupsd
// (fd 3). Errors end the reading, never the job.
asio::awaitable<void> read_back_channel(std::shared_ptr<client::InbandChannel> channel, std::uint8_t endpoint,
                                        const bool& reading) {
  while (reading && channel->is_open()) {
    auto op = channel->read(endpoint, common::kMaxUsbTransferBytes, kBackChannelRead);
    auto data = co_await std::move(op);
    if (!data.ok()) {
      if (data.error().code == Errc::timeout) continue;
      if (reading) debug("dtu: back channel ends: " + data.error().describe());
      co_return;
    }
    if (!data->empty() && cupsBackChannelWrite(reinterpret_cast<const char*>(data->data()), data->size(),
                                               kBackChannelWriteTimeout) < 0) {
      debug("dtu: cupsd did not take back-channel data; dropped " + std::to_string(data->size()) + " bytes");
    }
  }
}

}  // namespace

void PrintJob::start_back_channel() {
  if (!in_endpoint_ || !back_channel_available()) return;
  reading_back_ = true;
  common::spawn(executor_, read_back_channel(channel_, *in_endpoint_, reading_back_),
                common::Logger("cups-dtu-backend"), "back channel");
}

asio::awaitable<void> PrintJob::finish() {
  reading_back_ = false;
  if (side_channel_) side_channel_->stop();
  if (channel_) channel_->close();
  if (lease_ && client_ && !cancelled_) {
    auto op = client_->release(lease_->id);
    auto released = co_await std::move(op);
    if (!released.ok()) debug("dtu: release: " + released.error().describe() + " (the lease will expire)");
  }
  if (connecting_shown_) state_reason("-" + std::string(kConnectingReason));
  if (client_) client_->close();
}

asio::awaitable<std::optional<std::string>> PrintJob::device_id() {
  if (device_id_ || !connected()) co_return device_id_;
  auto op = channel_->device_id();
  auto id = co_await std::move(op);
  if (id.ok() && *id) device_id_ = **id;
  co_return device_id_;
}

bool PrintJob::connected() const {
  return channel_ && channel_->is_open();
}

asio::awaitable<int> PrintJob::state() {
  if (!connected()) co_return CUPS_SC_STATE_OFFLINE;
  common::UsbSetup setup;
  setup.request_type = kClassInterfaceIn;
  setup.request = kGetPortStatus;
  setup.index = interface_;
  setup.length = 1;
  auto op = channel_->control(setup, {}, kControlTimeout);
  auto status = co_await std::move(op);
  // A printer that STALLs GET_PORT_STATUS (or a channel busy failing) is taken as online.
  if (!status.ok() || status->empty()) co_return CUPS_SC_STATE_ONLINE;
  const std::uint8_t bits = status->front();
  int state = (bits & kPortSelect) != 0 ? CUPS_SC_STATE_ONLINE : CUPS_SC_STATE_OFFLINE;
  if ((bits & kPortPaperEmpty) != 0) state |= CUPS_SC_STATE_MEDIA_EMPTY;
  if ((bits & kPortNotError) == 0) state |= CUPS_SC_STATE_ERROR;
  co_return state;
}

asio::awaitable<Drained> PrintJob::drain() {
  const auto give_up = std::chrono::steady_clock::now() + kDrainDeadline;
  while (connected() && acknowledged_ < submitted_ && !cancelled_) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= give_up) {
      debug("dtu: drain: the printer took no more within " + std::to_string(kDrainDeadline / 1s) + " s (" +
            std::to_string(submitted_ - acknowledged_) + " bytes outstanding)");
      co_return Drained::timed_out;
    }
    progress_.reset();
    auto wait = progress_.wait(std::min<common::Duration>(1s, give_up - now));
    co_await std::move(wait);
  }
  co_return connected() && acknowledged_ == submitted_ ? Drained::all : Drained::channel_ended;
}

asio::awaitable<bool> PrintJob::soft_reset() {
  if (!connected()) co_return false;
  common::UsbSetup setup;
  setup.request_type = kClassInterfaceOut;
  setup.request = kSoftReset;
  setup.index = interface_;
  auto op = channel_->control(setup, {}, kControlTimeout);
  auto done = co_await std::move(op);
  co_return done.ok();
}

}  // namespace dtu::services::cups
