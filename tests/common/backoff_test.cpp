#include "dtu/common/backoff.hpp"

#include <doctest/doctest.h>

#include <random>

using dtu::common::backoff_delay;
using dtu::common::Duration;
using namespace std::chrono_literals;

TEST_CASE("backoff_delay doubles per attempt up to the cap, always within the jitter band") {
  std::mt19937_64 rng(42);
  const Duration min = 100ms;
  const Duration max = 2s;
  const Duration expected_base[] = {100ms, 200ms, 400ms, 800ms, 1600ms, 2s, 2s, 2s};
  for (unsigned attempt = 0; attempt < 8; ++attempt) {
    for (int i = 0; i < 200; ++i) {
      const Duration d = backoff_delay(min, max, attempt, rng);
      CHECK(d >= expected_base[attempt] / 2);
      CHECK(d < expected_base[attempt] * 3 / 2);
    }
  }
  // Doubling stops after 10 attempts even when the cap is far away.
  const Duration far = backoff_delay(Duration(1ms), Duration(1h), 50, rng);
  CHECK(far < 1024ms * 3 / 2);
}
