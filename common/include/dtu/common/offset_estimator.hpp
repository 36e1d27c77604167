#pragma once
// ClockOffsetEstimator: how far one peer's wall clock is from ours, from NTP-style exchanges.
// Each exchange gives four wall-clock timestamps:
//   t1 our send, t2 peer receive, t3 peer send, t4 our receive (t1, t4 ours; t2, t3 the peer's).
//   offset = ((t2 - t1) + (t3 - t4)) / 2   peer minus us: peer time ~ our time + offset
//   rtt    = (t4 - t1) - (t3 - t2)         time spent on the network
//   error  = rtt / 2                       the true offset lies within offset +/- error
// Network delay is rarely symmetric, and the asymmetry is what the error bounds, so the estimate is
// the sample with the smallest rtt among the last `window` (the classic NTP jitter filter).
//
// Not thread-safe: one estimator per link, used on that link's thread.

#include <cstddef>
#include <deque>
#include <optional>

#include "dtu/common/clock.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

struct OffsetSample {
  Duration offset{};  // peer minus us
  Duration rtt{};
  Duration error{};  // rtt / 2
  MonoTime at{};     // when the exchange completed (our steady clock)
};

class ClockOffsetEstimator {
 public:
  // REQUIRES: window >= 1.
  explicit ClockOffsetEstimator(size_t window = 8);

  // Records one exchange completed at `now` and returns its sample.
  // Errc::invalid_argument, nothing recorded: t3 < t2 (the peer's clock went backwards), a
  // negative rtt (a clock jumped during the exchange), or timestamps too far apart to subtract.
  Result<OffsetSample> add_sample(WallTime t1, WallTime t2, WallTime t3, WallTime t4, MonoTime now);

  // The minimum-rtt sample of the last `window` samples (the newest among equals); nullopt when
  // there are none.
  std::optional<OffsetSample> estimate() const;

  void reset() { samples_.clear(); }
  size_t size() const { return samples_.size(); }

 private:
  size_t window_;
  std::deque<OffsetSample> samples_;  // oldest first, at most window_
};

}  // namespace dtu::common
