#include "dtu/common/offset_estimator.hpp"

#include <cstdint>
#include <limits>
#include <string>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

// a - b, or nullopt when it overflows: the peer's timestamps come off the wire.
std::optional<int64_t> checked_sub(int64_t a, int64_t b) {
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if ((b < 0 && a > kMax + b) || (b > 0 && a < kMin + b)) return std::nullopt;
  return a - b;
}

std::optional<int64_t> checked_add(int64_t a, int64_t b) {
  if (b == std::numeric_limits<int64_t>::min()) return std::nullopt;
  return checked_sub(a, -b);
}

int64_t ns(WallTime t) {
  return std::chrono::duration_cast<Duration>(t.time_since_epoch()).count();
}

}  // namespace

ClockOffsetEstimator::ClockOffsetEstimator(size_t window) : window_(window) {
  DTU_CHECK(window >= 1);
}

Result<OffsetSample> ClockOffsetEstimator::add_sample(WallTime t1, WallTime t2, WallTime t3, WallTime t4,
                                                      MonoTime now) {
  if (t3 < t2) {
    return Error{Errc::invalid_argument,
                 "clock offset sample: peer send time t3 is before its receive time t2 (peer clock went "
                 "backwards)"};
  }
  const auto ours = checked_sub(ns(t4), ns(t1));
  const auto theirs = checked_sub(ns(t3), ns(t2));
  const auto outbound = checked_sub(ns(t2), ns(t1));
  const auto inbound = checked_sub(ns(t3), ns(t4));
  const auto rtt = ours && theirs ? checked_sub(*ours, *theirs) : std::nullopt;
  const auto sum = outbound && inbound ? checked_add(*outbound, *inbound) : std::nullopt;
  if (!rtt || !sum) {
    return Error{Errc::invalid_argument, "clock offset sample: timestamps too far apart"};
  }
  if (*rtt < 0) {
    return Error{Errc::invalid_argument, "clock offset sample: negative round trip " + std::to_string(*rtt) +
                                             " ns (a clock jumped during the exchange)"};
  }
  const OffsetSample sample{Duration(*sum / 2), Duration(*rtt), Duration(*rtt / 2), now};
  samples_.push_back(sample);
  if (samples_.size() > window_) samples_.pop_front();
  return sample;
}

std::optional<OffsetSample> ClockOffsetEstimator::estimate() const {
  std::optional<OffsetSample> best;
  for (const OffsetSample& s : samples_) {
    if (!best || s.rtt <= best->rtt) best = s;
  }
  return best;
}

}  // namespace dtu::common
