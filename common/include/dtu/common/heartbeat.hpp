#pragma once
// Heartbeat: the liveness rule of every manager–manager and DTU–manager link (DESIGN.md §6),
// without I/O. A heartbeat goes out when our direction has been silent for one interval, and at
// least every kSampleIntervals intervals however busy the link is (heartbeats carry the clock
// samples of the offset estimator, which the universal clock needs even under load); the link is
// dead when the peer's direction has been silent for `misses` intervals. Any frame counts as
// life, not only heartbeats. TCP keepalive is not relied on.
//
// One wake-up per interval: the answering side (a link's acceptor: the manager) sends its
// heartbeat in answer to each one it receives, in the wake-up that read it, and its own timer
// waits 3/2 intervals (kAnswerSilenceNum/Den) instead of one, so that it does not fire just
// before the peer's next heartbeat arrives (one interval plus the peer's timer lateness after
// the last).
// The answer also gives the peer an immediate clock sample. A side allowed a single miss keeps
// the one-interval timer, or its peer would call it dead between two heartbeats.
// Not thread-safe: one per link, on that link's thread.

#include <algorithm>
#include <cstdint>
#include <optional>

#include "dtu/common/clock.hpp"

namespace dtu::common {

class Heartbeat {
 public:
  // A busy link still sends a heartbeat this many intervals after the last one.
  static constexpr std::uint32_t kSampleIntervals = 5;
  // The answering side's own timer, in intervals (3/2) of silence in our direction; it fires
  // only when the peer sends no heartbeat (a busy peer, or one that is going quiet).
  static constexpr std::uint32_t kAnswerSilenceNum = 3;
  static constexpr std::uint32_t kAnswerSilenceDen = 2;

  // REQUIRES: interval > 0, misses > 0.
  Heartbeat(Duration interval, std::uint32_t misses, MonoTime now, bool answers = false)
      : interval_(interval),
        misses_(misses),
        answers_(answers),
        last_sent_(now),
        last_heartbeat_(now),
        last_received_(now) {}

  // Any frame sent.
  void on_send(MonoTime now) { last_sent_ = now; }
  // A heartbeat sent.
  void on_heartbeat_sent(MonoTime now) {
    last_sent_ = now;
    last_heartbeat_ = now;
  }
  void on_receive(MonoTime now) { last_received_ = now; }

  bool should_send(MonoTime now) const { return now >= next_send(); }
  // A heartbeat from the peer arrived: answer it now? At most one answer per half interval, so
  // a peer sending heartbeats in a loop gets no more back than two per interval.
  bool should_answer(MonoTime now) const {
    return answers_ && (!last_answer_ || now >= *last_answer_ + interval_ / 2);
  }
  // A heartbeat sent in answer to the peer's.
  void on_answer_sent(MonoTime now) {
    on_heartbeat_sent(now);
    last_answer_ = now;
  }
  bool is_dead(MonoTime now) const { return now >= dead_at(); }
  MonoTime dead_at() const { return last_received_ + interval_ * misses_; }
  MonoTime next_send() const {
    return std::min(last_sent_ + send_silence(), last_heartbeat_ + interval_ * kSampleIntervals);
  }
  // How long our direction may be silent before the timer sends a heartbeat.
  Duration send_silence() const {
    return answers_ && misses_ >= 2 ? interval_ * kAnswerSilenceNum / kAnswerSilenceDen : interval_;
  }
  MonoTime next_deadline() const { return std::min(next_send(), dead_at()); }

  // New parameters (the manager's welcome sets them for a DTU); silence so far still counts.
  void reconfigure(Duration interval, std::uint32_t misses) {
    interval_ = interval;
    misses_ = misses;
  }
  Duration interval() const { return interval_; }
  std::uint32_t misses() const { return misses_; }
  bool answers() const { return answers_; }
  Duration silence(MonoTime now) const { return now - last_received_; }
  MonoTime last_received() const { return last_received_; }

 private:
  Duration interval_;
  std::uint32_t misses_;
  bool answers_;
  MonoTime last_sent_;
  MonoTime last_heartbeat_;
  MonoTime last_received_;
  std::optional<MonoTime> last_answer_;
};

}  // namespace dtu::common
