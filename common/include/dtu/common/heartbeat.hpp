#pragma once
// Heartbeat: the liveness rule of every manager–manager and DTU–manager link (DESIGN.md §6),
// without I/O. A heartbeat goes out when our direction has been silent for one interval, and at
// least every kSampleIntervals intervals however busy the link is (heartbeats carry the clock
// samples of the offset estimator, which the universal clock needs even under load); the link is
// dead when the peer's direction has been silent for `misses` intervals. Any frame counts as
// life, not only heartbeats. TCP keepalive is not relied on.
// Not thread-safe: one per link, on that link's thread.

#include <algorithm>
#include <cstdint>

#include "dtu/common/clock.hpp"

namespace dtu::common {

class Heartbeat {
 public:
  // A busy link still sends a heartbeat this many intervals after the last one.
  static constexpr std::uint32_t kSampleIntervals = 5;

  // REQUIRES: interval > 0, misses > 0.
  Heartbeat(Duration interval, std::uint32_t misses, MonoTime now)
      : interval_(interval), misses_(misses), last_sent_(now), last_heartbeat_(now), last_received_(now) {}

  // Any frame sent.
  void on_send(MonoTime now) { last_sent_ = now; }
  // A heartbeat sent.
  void on_heartbeat_sent(MonoTime now) {
    last_sent_ = now;
    last_heartbeat_ = now;
  }
  void on_receive(MonoTime now) { last_received_ = now; }

  bool should_send(MonoTime now) const { return now >= next_send(); }
  bool is_dead(MonoTime now) const { return now >= dead_at(); }
  MonoTime dead_at() const { return last_received_ + interval_ * misses_; }
  MonoTime next_send() const {
    return std::min(last_sent_ + interval_, last_heartbeat_ + interval_ * kSampleIntervals);
  }
  MonoTime next_deadline() const { return std::min(next_send(), dead_at()); }

  // New parameters (the manager's welcome sets them for a DTU); silence so far still counts.
  void reconfigure(Duration interval, std::uint32_t misses) {
    interval_ = interval;
    misses_ = misses;
  }
  Duration interval() const { return interval_; }
  std::uint32_t misses() const { return misses_; }
  Duration silence(MonoTime now) const { return now - last_received_; }
  MonoTime last_received() const { return last_received_; }

 private:
  Duration interval_;
  std::uint32_t misses_;
  MonoTime last_sent_;
  MonoTime last_heartbeat_;
  MonoTime last_received_;
};

}  // namespace dtu::common
