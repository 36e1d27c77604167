#pragma once
// Reconnect and retry delays shared by everything that dials again after a failure (dtu-agent to
// its managers, libdtu-client to its manager, later the manager mesh): `min` doubled once per
// earlier failed attempt (at most 10 times), capped at `max`, times a jitter in [0.5, 1.5) so that
// the many clients of one restarted server do not all return in the same millisecond.
// A pure function of its arguments and the caller's random engine (thread-safe if the engine is).

#include <algorithm>
#include <chrono>
#include <random>

#include "dtu/common/clock.hpp"

namespace dtu::common {

template <typename Rng>
Duration backoff_delay(Duration min, Duration max, unsigned attempt, Rng& rng) {
  const Duration cap = std::max(min, max);
  Duration base = min;
  for (unsigned i = 0; i < std::min(attempt, 10U) && base < cap; ++i) base *= 2;
  base = std::min(base, cap);
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  return std::chrono::duration_cast<Duration>(base * jitter(rng));
}

}  // namespace dtu::common
