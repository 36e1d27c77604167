#pragma once
// FilamentMux: the sans-I/O core of a link's filaments (seed 003): several logical sessions
// multiplexed on one link, each opened and closed independently.
//
//  - request(): the peer must answer with reply(); completes with the reply or an error.
//  - post(): the peer's mux confirms delivery with an ack; completes with the ack or an error.
//  - notify(): one way, no confirmation (events, heartbeats).
//  - receive(): takes the next incoming frame of a filament; timeout 0 polls, a negative
//    timeout waits forever. set_receiver() delivers by callback instead.
//  - Requests the peer sends us count as unanswered until reply() answers them. With a cap
//    (set_request_limit), a request above it is answered Errc::denied at once and never
//    delivered: a peer cannot pile up work it never waits for.
//  - close(): graceful; completes once the filament's outstanding sends are confirmed or their
//    deadlines pass, then tells the peer. fail_all() (link lost) completes everything at once.
//
// Time comes in as arguments; the owner calls tick(now) at next_deadline(). Frames to send
// collect in an outbox that the owner drains (the output hook says when there is something).
// Completions run after the mux's state is updated and may call back into the mux.
// Not thread-safe: one mux per link, used on that link's thread.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <unordered_set>
#include <vector>

#include "dtu/common/clock.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

class FilamentMux {
 public:
  // The initiator of a link numbers its filaments odd, the acceptor even: no collisions.
  enum class Side { initiator, acceptor };

  using SendDone = std::function<void(Result<Frame>)>;
  using ReceiveDone = std::function<void(Result<Frame>)>;
  using Receiver = std::function<void(Frame)>;
  using CloseDone = std::function<void(Result<void>)>;
  using OpenHandler = std::function<void(std::uint32_t filament, const std::string& name)>;
  using LimitHandler = std::function<void(std::uint32_t filament, std::size_t limit)>;

  // Filament 0 is the link's control filament: always open, never closed.
  static constexpr std::uint32_t kControlFilament = 0;
  // Frames queued on one filament with no reader; more is a peer flooding us.
  static constexpr std::size_t kMaxQueuedFrames = 4096;

  explicit FilamentMux(Side side);

  // Opens a filament named `name` (the peer's open handler sees the name). Usable at once.
  Result<std::uint32_t> open(std::string name);
  // Called when the peer opens a filament. Without a handler peer opens are accepted silently.
  void set_open_handler(OpenHandler handler) { open_handler_ = std::move(handler); }
  // Delivers the filament's incoming frames by callback from now on (queued ones first).
  // An empty function returns to queueing.
  void set_receiver(std::uint32_t filament, Receiver receiver);
  // At most `limit` unanswered requests from the peer per filament (0: no cap). `on_hit` runs
  // (deferred, like a completion) for each request refused by the cap.
  void set_request_limit(std::size_t limit, LimitHandler on_hit);
  // Called whenever the outbox gains frames.
  void set_output_hook(std::function<void()> hook) { output_hook_ = std::move(hook); }

  void request(std::uint32_t filament, Frame frame, MonoTime deadline, SendDone done);
  void post(std::uint32_t filament, Frame frame, MonoTime deadline, SendDone done);
  void notify(std::uint32_t filament, Frame frame);
  // Answers a request (or a post, in place of the automatic ack — unusual).
  // REQUIRES: `to` was received with wants_reply().
  void reply(const Frame& to, Frame response);
  void reply_error(const Frame& to, Errc code, std::string reason);

  void receive(std::uint32_t filament, Duration timeout, MonoTime now, ReceiveDone done);

  void close(std::uint32_t filament, std::string reason, CloseDone done);
  // The link is gone: every pending operation and every later call fails with `error`.
  void fail_all(const Error& error);

  // Handles one incoming frame. An error is a protocol violation: close the link.
  Result<void> on_frame(Frame frame, MonoTime now);
  // Fails operations whose deadline is at or before `now`.
  void tick(MonoTime now);
  // The earliest deadline of any pending operation, or kNever.
  MonoTime next_deadline() const;

  std::vector<Frame> take_output();
  bool has_output() const { return !outbox_.empty(); }

  bool is_open(std::uint32_t filament) const;
  std::size_t pending_sends() const { return pending_.size(); }
  // The peer's requests on `filament` not yet answered (counted only under a request limit).
  std::size_t unanswered(std::uint32_t filament) const;

 private:
  enum class State { open, closing };
  struct Waiter {
    MonoTime deadline;
    ReceiveDone done;
  };
  struct Filament {
    std::string name;
    State state = State::open;
    Receiver receiver;
    std::deque<Frame> queue;
    std::deque<Waiter> waiters;
    std::size_t pending = 0;
    std::unordered_set<std::uint32_t> unanswered;  // txns of the peer's requests; under a request limit
    std::string close_reason;
    CloseDone close_done;
  };
  struct Pending {
    std::uint32_t filament;
    MonoTime deadline;
    SendDone done;
  };

  void send(std::uint32_t filament, Frame frame, std::uint8_t flag, MonoTime deadline, SendDone done);
  void emit(Frame frame);
  void deliver(Filament& f, Frame frame);
  void complete_pending(std::uint32_t txn, Result<Frame> result);
  void finish_close_if_drained(std::uint32_t filament);
  void drop_filament(std::uint32_t filament, const Error& error);
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  void flush();
  bool ours(std::uint32_t filament) const;

  Side side_;
  std::uint32_t next_filament_;
  std::uint32_t next_txn_ = 1;
  std::map<std::uint32_t, Filament> filaments_;
  std::map<std::uint32_t, Pending> pending_;  // by txn
  std::deque<Frame> outbox_;
  std::vector<std::function<void()>> deferred_;
  bool flushing_ = false;
  bool failed_ = false;
  Error failure_;
  OpenHandler open_handler_;
  std::size_t request_limit_ = 0;
  LimitHandler on_request_limit_;
  std::function<void()> output_hook_;
};

}  // namespace dtu::common
