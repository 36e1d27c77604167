#pragma once
// Link: one authenticated connection to a peer (manager, DTU or local client) carrying framed
// messages on filaments. Exactly one reader, one writer and one watchdog coroutine per link.
//
//  - Reader: decodes frames (FrameDecoder, size cap); a malformed frame closes this link only,
//    with a log line naming the peer and the reason.
//  - Writer: drains a bounded send queue; a peer that reads too slowly (queue above the cap, or
//    one write blocked past the write timeout) is disconnected, never allowed to grow memory.
//  - Watchdog: heartbeats (DESIGN.md §6) and every filament deadline.
//
// Heartbeats carry wall-clock stamps; each round trip feeds a ClockOffsetEstimator (RTT/2
// error) for the universal clock.
//
// Thread: everything runs on the executor given at creation. The Clock must tell steady time
// (SystemClock) because timers sleep on it.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/filament_mux.hpp"
#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/heartbeat.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/offset_estimator.hpp"
#include "dtu/common/transport.hpp"

namespace dtu::common {

class Link : public std::enable_shared_from_this<Link> {
 public:
  struct Options {
    std::size_t max_payload = kDefaultMaxPayload;
    // Bytes queued for a peer before it counts as too slow: 8 MiB (several max-size frames).
    std::size_t max_send_queue = 8 * 1024 * 1024;
    // A single write blocked this long means the peer stopped reading.
    Duration write_timeout = std::chrono::seconds(10);
    bool heartbeats = true;
    Duration heartbeat_interval = std::chrono::seconds(1);
    std::uint32_t heartbeat_misses = 3;
    // Requests from the peer left unanswered per filament before more are refused (Errc::denied,
    // logged request_limit); 0: no cap (FilamentMux::set_request_limit).
    std::size_t max_pending_requests = 0;
  };
  using CloseHandler = std::function<void(const Error& reason)>;

  static std::shared_ptr<Link> create(const asio::any_io_executor& ex, std::unique_ptr<Transport> transport,
                                      FilamentMux::Side side, const Clock& clock, Logger log,
                                      std::string peer, Options options);
  ~Link();

  // Starts the reader, writer and watchdog. `on_close` runs once, when the link closes for any
  // reason (ours or the peer's), after every pending operation has failed.
  void start(CloseHandler on_close);
  // Idempotent. Pending operations fail with Errc::link_lost.
  void close(const Error& reason);
  // Closes after one last frame: queues `last` behind what is already queued, stops handling
  // incoming frames (they are read and dropped, so the peer is never reset mid-stream), drops
  // every later send, and once `last` is written ends our direction of the stream (TCP FIN).
  // The link closes with `reason` when the peer then closes its side, or write_timeout after
  // this call at the latest. A link that is already closed or shutting down ignores the call.
  // REQUIRES: start() was called
  void shutdown(Frame last, const Error& reason);
  bool is_open() const { return !closed_; }
  bool is_shutting_down() const { return shutting_down_; }

  FilamentMux& mux() { return mux_; }
  const asio::any_io_executor& executor() const { return executor_; }
  const std::string& peer() const { return peer_; }
  Transport& transport() { return *transport_; }

  // Each of these encodes its frame into the write buffer before it returns (the awaitable
  // request: once it is awaited), or drops it when the link is closed or shutting down; so the
  // bytes a frame's Frame::tail refers to need only outlive the call.
  void notify(std::uint32_t filament, Frame frame);
  void post(std::uint32_t filament, Frame frame, Duration timeout, FilamentMux::SendDone done);
  void reply(const Frame& to, Frame response);
  void reply_error(const Frame& to, Errc code, std::string reason);
  // A request whose completion is a callback (run on the link's executor, after the mux's
  // state is updated): for callers that keep several requests in flight.
  void request(std::uint32_t filament, Frame frame, Duration timeout, FilamentMux::SendDone done);
  // Synchronous (to the coroutine) forms of request and receive.
  asio::awaitable<Result<Frame>> request(std::uint32_t filament, Frame frame, Duration timeout);
  asio::awaitable<Result<Frame>> receive(std::uint32_t filament, Duration timeout);

  static constexpr std::size_t kIdleBufferBytes = 4096;  // what an idle link keeps of each buffer
  static constexpr Duration kBufferIdle = std::chrono::milliseconds(500);  // idle before that

  void set_heartbeat(Duration interval, std::uint32_t misses);
  // The peer's clock minus ours, from heartbeat round trips; nullopt before the first one.
  std::optional<OffsetSample> clock_offset() const { return offset_.estimate(); }
  std::uint64_t frames_received() const { return frames_received_; }
  // When the last frame (of any kind, heartbeats included) arrived; the link's start before any.
  MonoTime last_received() const { return heartbeat_.last_received(); }
  // The capacity of the link's two write buffers: a burst's size while streaming, at most
  // 2 × kIdleBufferBytes once the link has written nothing large for kBufferIdle.
  std::size_t write_buffer_capacity() const { return write_buffer_.capacity() + writing_buffer_.capacity(); }

 private:
  Link(const asio::any_io_executor& ex, std::unique_ptr<Transport> transport, FilamentMux::Side side,
       const Clock& clock, Logger log, std::string peer, Options options);

  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  asio::awaitable<void> watchdog_loop();
  void drain_output();
  void schedule_flush();
  void flush();
  void finish_send();
  void handle_input(std::span<const std::uint8_t> input);
  static void end_input_batch(bool now);
  void handle_frame(Frame frame);
  void handle_heartbeat(const Frame& frame);
  void send_heartbeat(MonoTime now);
  // When the watchdog must next run: the earliest of the deadlines it keeps (the mux's, the
  // heartbeat's, a write's, the shutdown's, the release of large buffers).
  MonoTime watchdog_deadline(MonoTime now) const;
  // Wakes the watchdog when a deadline now falls before the time it sleeps towards. Most calls
  // (every frame received, every request sent) only move deadlines later, or add one later than
  // the next heartbeat's, and wake nothing: the watchdog finds the later deadlines when it runs,
  // which it does anyway for the heartbeat it sends or answers (handle_heartbeat moves it then).
  void rearm();
  bool holds_large_buffers() const;
  void release_large_buffers();

  asio::any_io_executor executor_;
  std::unique_ptr<Transport> transport_;
  const Clock& clock_;
  Logger log_;
  std::string peer_;
  Options options_;
  FilamentMux mux_;
  FrameDecoder decoder_;
  Heartbeat heartbeat_;
  ClockOffsetEstimator offset_;
  asio::steady_timer writer_wake_;
  asio::steady_timer watchdog_timer_;
  std::vector<std::uint8_t> write_buffer_;    // frames queued while writing_buffer_ goes out
  std::vector<std::uint8_t> writing_buffer_;  // the chunk being written
  MonoTime last_burst_end_{};  // the end of the last write, or read, above kIdleBufferBytes
  std::size_t queued_bytes_ = 0;  // write_buffer_ plus the chunk being written
  bool writing_ = false;
  bool handling_input_ = false;  // the reader is handling what it read: it flushes at the end
  bool flush_posted_ = false;
  MonoTime write_started_{};
  bool closed_ = false;
  bool shutting_down_ = false;  // shutdown(): the last frame is queued, input is dropped
  bool send_shut_ = false;      // shutdown(): the last frame is written and our FIN sent
  MonoTime shutdown_deadline_ = kNever;
  Error shutdown_reason_;
  CloseHandler on_close_;
  std::uint64_t refused_requests_ = 0;  // by the request limit
  std::optional<std::int64_t> last_peer_sent_us_;   // for the echo in our next heartbeat
  std::optional<std::int64_t> last_peer_received_us_;
  std::uint64_t frames_received_ = 0;
};

// Wall-clock microseconds since the Unix epoch.
std::int64_t to_micros(WallTime t);
WallTime from_micros(std::int64_t us);

}  // namespace dtu::common
