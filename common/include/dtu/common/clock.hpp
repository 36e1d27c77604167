#pragma once
// Clock: the only source of time in the project. Production code takes a `const Clock&`;
// tests pass a ManualClock and move time by hand, so no unit test ever sleeps.
//
// Two kinds of time:
//  - MonoTime (steady): deadlines, heartbeats, timeouts. Never jumps.
//  - WallTime (system): what the universal clock (HLC) is built on. Can jump and be skewed.
//
// SystemClock is thread-safe. ManualClock is for single-threaded tests.

#include <chrono>

namespace dtu::common {

using MonoTime = std::chrono::steady_clock::time_point;
using WallTime = std::chrono::system_clock::time_point;
using Duration = std::chrono::nanoseconds;

// A time point that never comes: "no deadline".
inline constexpr MonoTime kNever = MonoTime::max();

class Clock {
 public:
  virtual ~Clock() = default;
  virtual MonoTime now() const = 0;
  virtual WallTime wall_now() const = 0;
};

class SystemClock final : public Clock {
 public:
  MonoTime now() const override { return std::chrono::steady_clock::now(); }
  WallTime wall_now() const override { return std::chrono::system_clock::now(); }

  // A process-wide instance for main() to inject.
  static const SystemClock& instance() {
    static const SystemClock clock;
    return clock;
  }
};

// ManualClock: time moves only when a test says so. Starts at an arbitrary fixed point
// (mono: 1000 s after the steady epoch; wall: 2026-01-01T00:00:00Z).
class ManualClock final : public Clock {
 public:
  ManualClock()
      : mono_(MonoTime{} + std::chrono::seconds(1000)),
        wall_(WallTime{} + std::chrono::seconds(1767225600)) {}

  MonoTime now() const override { return mono_; }
  WallTime wall_now() const override { return wall_; }

  // Moves both clocks forward by d (as real time passing does).
  void advance(Duration d) {
    mono_ += d;
    wall_ += std::chrono::duration_cast<WallTime::duration>(d);
  }
  // Moves only the wall clock (an NTP step or a skewed host); d may be negative.
  void jump_wall(Duration d) { wall_ += std::chrono::duration_cast<WallTime::duration>(d); }
  void set_wall(WallTime t) { wall_ = t; }

 private:
  MonoTime mono_;
  WallTime wall_;
};

}  // namespace dtu::common
