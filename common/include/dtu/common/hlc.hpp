#pragma once
// HybridLogicalClock: the group's universal clock (Kulkarni et al., "Logical Physical Clocks").
// A timestamp is (wall_us, logical): wall_us follows physical time (the local wall clock plus the
// universal-clock correction from the offset estimator) and logical orders events within one
// microsecond or while a slow clock catches up. Every timestamp issued is strictly greater than
// every timestamp issued or observed before it, so a receive is always ordered after its send.
//
// Not thread-safe: one instance per daemon, used on the io_context thread.

#include <compare>
#include <cstdint>

#include <nlohmann/json_fwd.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

struct HlcTimestamp {
  int64_t wall_us = 0;   // microseconds since the Unix epoch, universal time
  uint32_t logical = 0;  // tie-breaker among timestamps with the same wall_us

  auto operator<=>(const HlcTimestamp&) const = default;
  bool operator==(const HlcTimestamp&) const = default;
};

// {"wall_us": N, "logical": N}. from_json throws nlohmann exceptions only (a missing key, a
// non-integer, a logical outside uint32).
void to_json(nlohmann::json& j, const HlcTimestamp& ts);
void from_json(const nlohmann::json& j, HlcTimestamp& ts);

class HybridLogicalClock {
 public:
  // REQUIRES: max_forward_skew >= 0. `clock` outlives this object.
  explicit HybridLogicalClock(const Clock& clock, Duration max_forward_skew = std::chrono::seconds(60));

  // A local or send event: strictly greater than every timestamp issued or observed so far,
  // even if the wall clock jumped backwards.
  HlcTimestamp now();

  // A receive event carrying `remote`. Returns a timestamp strictly greater than `remote` and
  // than everything issued or observed so far.
  // Errc::invalid_argument, clock unchanged: `remote` is more than max_forward_skew ahead of our
  // physical time (a peer with a broken clock must not drag the group into the future).
  Result<HlcTimestamp> observe(const HlcTimestamp& remote);

  // The greatest timestamp issued or observed; {0, 0} before the first event.
  HlcTimestamp last() const { return last_; }

  // The universal-clock correction added to the local wall clock (from ClockOffsetEstimator).
  // Lowering it never makes the clock go backwards.
  void set_offset(Duration offset) { offset_ = offset; }
  Duration offset() const { return offset_; }

 private:
  int64_t physical_us() const;

  const Clock& clock_;
  int64_t max_forward_skew_us_;
  Duration offset_{};
  HlcTimestamp last_;
};

}  // namespace dtu::common
