#include "dtu/common/link.hpp"

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/messages.hpp"

namespace dtu::common {

using asio::experimental::as_tuple;

namespace {
// Bytes are read into one buffer per thread, not per link: a manager holds thousands of links
// that only ever carry heartbeats and small messages, and a link's bytes are decoded (into
// frames, or into its decoder's unfinished frame) before its reader next waits, so nothing of
// the buffer outlives one wake-up. 64 KiB keeps a stream's syscalls few.
constexpr std::size_t kReadChunk = 64 * 1024;
// Reads in a row without waiting before the reader lets the thread's other links run: a peer
// that keeps its socket full does not starve their heartbeats.
constexpr int kReadsBeforeYield = 16;

std::span<std::uint8_t> thread_read_buffer() {
  static thread_local std::vector<std::uint8_t> buffer(kReadChunk);
  return buffer;
}

// The reader handling its input on this thread, and the other links of its executor that its
// frames gave output to. Those are sent when the input is handled, before the reader's own
// output (Link::handle_input): a frame's effect on the rest of the system (a device record on
// its way to a peer, a service told) does not wait behind the reply to its sender, nor behind
// the reader's next wait (docs/performance.md).
thread_local Link* t_reader = nullptr;
thread_local std::vector<std::shared_ptr<Link>> t_reader_outputs;

std::string millis(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}
}  // namespace

std::int64_t to_micros(WallTime t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

WallTime from_micros(std::int64_t us) {
  return WallTime{std::chrono::duration_cast<WallTime::duration>(std::chrono::microseconds(us))};
}

std::shared_ptr<Link> Link::create(const asio::any_io_executor& ex, std::unique_ptr<Transport> transport,
                                   FilamentMux::Side side, const Clock& clock, Logger log, std::string peer,
                                   Options options) {
  return std::shared_ptr<Link>(
      new Link(ex, std::move(transport), side, clock, std::move(log), std::move(peer), options));
}

Link::Link(const asio::any_io_executor& ex, std::unique_ptr<Transport> transport, FilamentMux::Side side,
           const Clock& clock, Logger log, std::string peer, Options options)
    : executor_(ex),
      transport_(std::move(transport)),
      clock_(clock),
      log_(std::move(log)),
      peer_(std::move(peer)),
      options_(options),
      mux_(side),
      decoder_(options.max_payload),
      heartbeat_(options.heartbeat_interval, options.heartbeat_misses, clock.now(),
                 /*answers=*/side == FilamentMux::Side::acceptor),
      writer_wake_(ex),
      watchdog_timer_(ex) {}

Link::~Link() { transport_->close(); }

void Link::start(CloseHandler on_close) {
  on_close_ = std::move(on_close);
  mux_.set_output_hook([this] { drain_output(); });
  if (options_.max_pending_requests > 0) {
    mux_.set_request_limit(options_.max_pending_requests, [this](std::uint32_t filament, std::size_t limit) {
      // The first refusal and every thousandth: a flooding peer must not flood the log too.
      if (refused_requests_++ % 1000 != 0) return;
      log_.warn(peer_, "request_limit", {{"filament", filament}, {"limit", limit}, {"refused", refused_requests_},
                                         {"reason", "too many requests unanswered; refused"}});
    });
  }
  auto self = shared_from_this();
  spawn(executor_, [self]() -> asio::awaitable<void> { co_await self->read_loop(); }, log_, "link reader");
  spawn(executor_, [self]() -> asio::awaitable<void> { co_await self->write_loop(); }, log_, "link writer");
  spawn(executor_, [self]() -> asio::awaitable<void> { co_await self->watchdog_loop(); }, log_, "link watchdog");
}

void Link::close(const Error& reason) {
  if (closed_) return;
  closed_ = true;
  transport_->close();
  writer_wake_.cancel();
  watchdog_timer_.cancel();
  write_buffer_.clear();
  mux_.fail_all(Error(Errc::link_lost, "link to " + peer_ + " closed: " + reason.describe()));
  if (on_close_) {
    auto handler = std::move(on_close_);
    on_close_ = nullptr;
    handler(reason);
  }
}

void Link::shutdown(Frame last, const Error& reason) {
  if (closed_ || shutting_down_) return;
  drain_output();  // what was queued before the last frame goes out before it
  if (closed_) return;
  shutting_down_ = true;
  shutdown_reason_ = reason;
  shutdown_deadline_ = clock_.now() + options_.write_timeout;
  const std::size_t before = write_buffer_.size();
  encode_frame(last, write_buffer_);
  queued_bytes_ += write_buffer_.size() - before;
  writer_wake_.cancel();
  rearm();
}

void Link::finish_send() {
  if (send_shut_) return;
  send_shut_ = true;
  transport_->shutdown_send();
}

void Link::drain_output() {
  if (closed_) return;
  if (shutting_down_) {
    (void)mux_.take_output();  // nothing goes out after the last frame
    return;
  }
  bool any = false;
  for (const Frame& frame : mux_.take_output()) {
    const std::size_t before = write_buffer_.size();
    encode_frame(frame, write_buffer_);
    queued_bytes_ += write_buffer_.size() - before;
    any = true;
  }
  if (!any) return;
  if (queued_bytes_ > options_.max_send_queue) {
    log_.warn(peer_, "slow_peer", {{"queued_bytes", queued_bytes_}, {"cap", options_.max_send_queue}});
    close(Error(Errc::send_queue_full, "send queue above " + std::to_string(options_.max_send_queue) + " bytes"));
    return;
  }
  heartbeat_.on_send(clock_.now());
  schedule_flush();
}

// Small output goes out from the thread that queued it — at the end of the reader's batch, or
// from a handler posted behind the current one, so the frames of one handler share a write —
// rather than by waking the writer: a heartbeat answer costs no timer cancel and re-arm and no
// coroutine resume (docs/performance.md). The writer takes what is large or does not fit.
void Link::schedule_flush() {
  if (writing_ || shutting_down_) {
    writer_wake_.cancel();
    return;
  }
  if (handling_input_ || flush_posted_) return;
  flush_posted_ = true;
  if (t_reader != nullptr && t_reader->executor_ == executor_) {
    t_reader_outputs.push_back(shared_from_this());
    return;
  }
  asio::post(executor_, [self = shared_from_this()] {
    self->flush_posted_ = false;
    self->flush();
  });
}

void Link::flush() {
  if (closed_ || writing_ || write_buffer_.empty()) return;
  if (!shutting_down_ && write_buffer_.size() <= kIdleBufferBytes) {
    const IoResult r = transport_->write_available(asio::buffer(write_buffer_));
    if (r.ec && r.ec != asio::error::would_block) {
      close(Error(Errc::link_lost, "write failed: " + r.ec.message()));
      return;
    }
    queued_bytes_ -= r.bytes;
    write_buffer_.erase(write_buffer_.begin(), write_buffer_.begin() + static_cast<std::ptrdiff_t>(r.bytes));
    if (write_buffer_.empty()) return;
  }
  writer_wake_.cancel();  // the rest, from its first byte: OpenSSL may hold part of it in a record
}

asio::awaitable<void> Link::read_loop() {
  auto self = shared_from_this();
  int reads_in_a_row = 0;
  bool drained = false;
  while (!closed_) {
    // Here, between reads, every byte of the thread's buffer has been decoded (or is held by the
    // decoder), so the reader may wait without it.
    if (reads_in_a_row == kReadsBeforeYield) {
      reads_in_a_row = 0;
      co_await asio::post(executor_, asio::use_awaitable);
      continue;
    }
    const std::span<std::uint8_t> buffer = thread_read_buffer();
    // After a read that emptied the socket, wait at once: a read now would only find nothing
    // (one syscall per heartbeat saved; Transport::input_drained).
    IoResult r = drained ? IoResult{asio::error::would_block, 0}
                         : transport_->read_available(asio::buffer(buffer.data(), buffer.size()));
    drained = false;
    if (r.ec == asio::error::would_block) {
      reads_in_a_row = 0;
      const std::error_code ec = co_await transport_->wait_readable();
      if (closed_) co_return;
      if (!ec) continue;
      r = IoResult{ec, 0};
    } else {
      ++reads_in_a_row;
    }
    if (shutting_down_) {
      // Input after shutdown() is read (so the peer is not reset) but not handled.
      if (r.ec) {
        close(shutdown_reason_);
        co_return;
      }
      heartbeat_.on_receive(clock_.now());
      continue;
    }
    if (r.ec) {
      const bool eof = r.ec == asio::error::eof || r.ec == asio::ssl::error::stream_truncated;
      if (eof && decoder_.finish() == FrameDecoder::Status::invalid) {
        log_.warn(peer_, "protocol_error", {{"reason", decoder_.error_detail()}});
      }
      close(Error(Errc::link_lost, eof ? "peer closed the connection" : r.ec.message()));
      co_return;
    }
    const MonoTime now = clock_.now();
    heartbeat_.on_receive(now);
    if (r.bytes > kIdleBufferBytes) last_burst_end_ = now;  // the decoder's buffer is in use
    handle_input(std::span<const std::uint8_t>(buffer.data(), r.bytes));
    if (closed_) co_return;
    flush();  // what the frames queued here, after what they queued on other links
    if (closed_) co_return;
    drained = transport_->input_drained();
  }
}

// What the frames make us send goes out in one write per link after them: what they queued on
// other links here, first; the reader's own when this returns (read_loop). A bad frame closes
// the link and ends the loop, as does a handler that closes or shuts it down.
void Link::handle_input(std::span<const std::uint8_t> input) {
  const bool outermost = t_reader == nullptr;  // input handled inside other input joins its batch
  if (outermost) t_reader = this;
  handling_input_ = true;
  try {
    for (;;) {
      Frame frame;
      const auto status = decoder_.next(input, frame);
      if (status == FrameDecoder::Status::need_more) break;
      if (status == FrameDecoder::Status::invalid) {
        log_.warn(peer_, "protocol_error", {{"code", errc_name(static_cast<Errc>(decoder_.error_code().value()))},
                                            {"reason", decoder_.error_detail()}});
        close(Error(decoder_.error_code(), decoder_.error_detail()));
        break;
      }
      handle_frame(std::move(frame));
      if (closed_ || shutting_down_) break;  // the rest of `input` is dropped, as later input is
    }
  } catch (...) {
    if (outermost) end_input_batch(/*now=*/false);
    throw;
  }
  handling_input_ = false;
  if (outermost) end_input_batch(/*now=*/true);
}

// Sends what the batch's frames queued on other links: `now`, or (unwinding) from handlers
// posted as schedule_flush would have.
void Link::end_input_batch(bool now) {
  t_reader = nullptr;  // what a flush below makes others queue (a close) goes the usual way
  for (std::size_t i = 0; i < t_reader_outputs.size(); ++i) {
    std::shared_ptr<Link>& link = t_reader_outputs[i];
    if (now) {
      link->flush_posted_ = false;
      link->flush();
    } else {
      asio::post(link->executor_, [link] {
        link->flush_posted_ = false;
        link->flush();
      });
    }
  }
  t_reader_outputs.clear();
}

void Link::handle_frame(Frame frame) {
  ++frames_received_;
  if (frame.type == MessageType::heartbeat && frame.filament == FilamentMux::kControlFilament &&
      !frame.is_reply()) {
    handle_heartbeat(frame);
    return;
  }
  auto result = mux_.on_frame(std::move(frame), clock_.now());
  if (!result.ok()) {
    log_.warn(peer_, "protocol_error", {{"code", errc_name(static_cast<Errc>(result.error().code.value()))},
                                        {"reason", result.error().detail}});
    close(result.error());
    return;
  }
  rearm();
}

void Link::handle_heartbeat(const Frame& frame) {
  auto msg = from_frame<HeartbeatMsg>(frame);
  if (!msg.ok()) {
    log_.warn(peer_, "protocol_error", {{"reason", msg.error().describe()}});
    close(msg.error());
    return;
  }
  const WallTime t4 = clock_.wall_now();
  last_peer_sent_us_ = msg->sent_us;
  last_peer_received_us_ = to_micros(t4);
  if (msg->echo_sent_us && msg->echo_received_us) {
    auto sample = offset_.add_sample(from_micros(*msg->echo_sent_us), from_micros(*msg->echo_received_us),
                                     from_micros(msg->sent_us), t4, clock_.now());
    if (!sample.ok()) {
      log_.debug(peer_, "clock_sample_rejected", {{"reason", sample.error().describe()}});
    }
  }
  // The acceptor answers in this wake-up instead of waking again on its own timer (heartbeat.hpp);
  // the watchdog then sleeps towards the later deadline. It is moved there now, not left to find
  // it when its timer fires: that would be a wake-up of its own per heartbeat, for nothing (a
  // manager with 10,000 DTUs used 26 -> 42 % of a core that way, docs/performance.md).
  const MonoTime now = clock_.now();
  if (options_.heartbeats && heartbeat_.should_answer(now)) {
    send_heartbeat(now);
    heartbeat_.on_answer_sent(now);
    watchdog_timer_.cancel();
  }
}

void Link::send_heartbeat(MonoTime now) {
  HeartbeatMsg hb;
  hb.sent_us = to_micros(clock_.wall_now());
  hb.echo_sent_us = last_peer_sent_us_;
  hb.echo_received_us = last_peer_received_us_;
  mux_.notify(FilamentMux::kControlFilament, to_frame(hb));
  heartbeat_.on_heartbeat_sent(now);
}

asio::awaitable<void> Link::write_loop() {
  auto self = shared_from_this();
  while (!closed_) {
    if (write_buffer_.empty()) {
      writer_wake_.expires_at(asio::steady_timer::time_point::max());
      co_await writer_wake_.async_wait(as_tuple(asio::use_awaitable));
      continue;
    }
    // The two buffers trade places: frames queue into the one just written (cleared, its capacity
    // kept) while this one goes out, so a stream does not allocate and fault in a new buffer at
    // every write (docs/performance.md).
    std::vector<std::uint8_t>& chunk = writing_buffer_;
    chunk.clear();
    chunk.swap(write_buffer_);
    writing_ = true;
    write_started_ = clock_.now();
    // Wakes the watchdog only when it would sleep past this write's deadline: most writes (every
    // heartbeat) end long before the deadline it already sleeps towards.
    rearm();
    const IoResult r = co_await transport_->write_all(asio::buffer(chunk));
    writing_ = false;
    if (closed_) co_return;
    queued_bytes_ -= chunk.size();
    if (r.ec) {
      close(shutting_down_ ? shutdown_reason_ : Error(Errc::link_lost, "write failed: " + r.ec.message()));
      co_return;
    }
    // The watchdog releases large buffers kBufferIdle after the last large write. Small writes
    // (heartbeats) do not count: at heartbeats of 500 ms or less they would keep them forever.
    if (chunk.size() > kIdleBufferBytes) last_burst_end_ = clock_.now();
    rearm();  // if the large buffers are due for release before the watchdog would run
    if (shutting_down_ && write_buffer_.empty()) finish_send();
  }
}

asio::awaitable<void> Link::watchdog_loop() {
  auto self = shared_from_this();
  while (!closed_) {
    const MonoTime now = clock_.now();
    // Idle: a link keeps no large buffer between bursts (10,000 DTU links would hold their
    // snapshot's size each). Not at the end of every write: a stream with a few chunks in flight
    // goes idle between them, and re-growing the buffers page-faulted every chunk in
    // (docs/performance.md). Before the heartbeat below queues a frame.
    if (holds_large_buffers() && !writing_ && write_buffer_.empty() && now >= last_burst_end_ + kBufferIdle) {
      release_large_buffers();
    }
    if (options_.heartbeats) {
      if (heartbeat_.is_dead(now)) {
        log_.warn(peer_, "peer_silent", {{"silence", millis(heartbeat_.silence(now))},
                                         {"heartbeats_missed", heartbeat_.misses()}});
        close(Error(Errc::timeout, "peer silent for " + millis(heartbeat_.silence(now)) + " (" +
                                       std::to_string(heartbeat_.misses()) + " heartbeats missed)"));
        co_return;
      }
      if (heartbeat_.should_send(now) && !shutting_down_) send_heartbeat(now);
    }
    if (shutting_down_ && now >= shutdown_deadline_) {
      log_.debug(peer_, "shutdown_timeout", {{"reason", shutdown_reason_.describe()}});
      close(shutdown_reason_);
      co_return;
    }
    if (writing_ && now >= write_started_ + options_.write_timeout) {
      log_.warn(peer_, "slow_peer", {{"reason", "write blocked"}, {"for", millis(now - write_started_)}});
      close(Error(Errc::send_queue_full, "a write blocked for " + millis(now - write_started_)));
      co_return;
    }
    mux_.tick(now);
    if (closed_) co_return;
    watchdog_timer_.expires_at(watchdog_deadline(now));
    co_await watchdog_timer_.async_wait(as_tuple(asio::use_awaitable));
  }
}

MonoTime Link::watchdog_deadline(MonoTime now) const {
  MonoTime next = mux_.next_deadline();
  if (holds_large_buffers() && now < last_burst_end_ + kBufferIdle)
    next = std::min(next, last_burst_end_ + kBufferIdle);
  if (options_.heartbeats) next = std::min(next, heartbeat_.next_deadline());
  if (writing_) next = std::min(next, write_started_ + options_.write_timeout);
  if (shutting_down_) next = std::min(next, shutdown_deadline_);
  return next;
}

void Link::rearm() {
  if (watchdog_deadline(clock_.now()) < watchdog_timer_.expiry()) watchdog_timer_.cancel();
}

bool Link::holds_large_buffers() const {
  return write_buffer_.capacity() > kIdleBufferBytes || writing_buffer_.capacity() > kIdleBufferBytes ||
         decoder_.storage() > 0;
}

void Link::release_large_buffers() {
  if (writing_buffer_.capacity() > kIdleBufferBytes) std::vector<std::uint8_t>().swap(writing_buffer_);
  if (write_buffer_.capacity() > kIdleBufferBytes) std::vector<std::uint8_t>().swap(write_buffer_);
  decoder_.release_storage();
}

void Link::notify(std::uint32_t filament, Frame frame) { mux_.notify(filament, std::move(frame)); }

void Link::post(std::uint32_t filament, Frame frame, Duration timeout, FilamentMux::SendDone done) {
  mux_.post(filament, std::move(frame), clock_.now() + timeout, std::move(done));
  rearm();
}

void Link::request(std::uint32_t filament, Frame frame, Duration timeout, FilamentMux::SendDone done) {
  mux_.request(filament, std::move(frame), clock_.now() + timeout, std::move(done));
  rearm();
}

void Link::reply(const Frame& to, Frame response) { mux_.reply(to, std::move(response)); }

void Link::reply_error(const Frame& to, Errc code, std::string reason) {
  mux_.reply_error(to, code, std::move(reason));
}

asio::awaitable<Result<Frame>> Link::request(std::uint32_t filament, Frame frame, Duration timeout) {
  auto self = shared_from_this();
  const MonoTime deadline = clock_.now() + timeout;
  auto held = std::make_shared<Frame>(std::move(frame));
  auto op = await_callback<Result<Frame>>([self, filament, deadline, held](auto done) {
    self->mux_.request(filament, std::move(*held), deadline, std::move(done));
    self->rearm();
  });
  auto result = co_await std::move(op);
  co_return result;
}

asio::awaitable<Result<Frame>> Link::receive(std::uint32_t filament, Duration timeout) {
  auto self = shared_from_this();
  auto op = await_callback<Result<Frame>>([self, filament, timeout](auto done) {
    self->mux_.receive(filament, timeout, self->clock_.now(), std::move(done));
    self->rearm();
  });
  auto result = co_await std::move(op);
  co_return result;
}

void Link::set_heartbeat(Duration interval, std::uint32_t misses) {
  heartbeat_.reconfigure(interval, misses);
  rearm();
}

}  // namespace dtu::common
