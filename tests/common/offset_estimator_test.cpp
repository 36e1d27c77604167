#include "dtu/common/offset_estimator.hpp"

#include <doctest/doctest.h>

#include <limits>

namespace dtu::common {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// The four timestamps of one exchange starting at our wall time `t1`, against a peer whose clock
// reads `offset` ahead of ours, with the given one-way delays and the peer's processing time.
struct Exchange {
  WallTime t1, t2, t3, t4;
};

Exchange exchange(WallTime t1, Duration offset, Duration outbound, Duration inbound,
                  Duration processing = milliseconds(1)) {
  const WallTime t2 = t1 + outbound + offset;
  const WallTime t3 = t2 + processing;
  const WallTime t4 = t1 + outbound + processing + inbound;
  return {t1, t2, t3, t4};
}

Result<OffsetSample> add(ClockOffsetEstimator& estimator, const Exchange& e, MonoTime now) {
  return estimator.add_sample(e.t1, e.t2, e.t3, e.t4, now);
}

TEST_CASE("ClockOffsetEstimator gives the exact offset under symmetric delay") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  const auto sample =
      add(estimator, exchange(clock.wall_now(), milliseconds(-250), milliseconds(4), milliseconds(4)),
          clock.now());
  REQUIRE(sample.ok());
  CHECK(sample->offset == milliseconds(-250));
  CHECK(sample->rtt == milliseconds(8));
  CHECK(sample->error == milliseconds(4));
  CHECK(sample->at == clock.now());
}

TEST_CASE("ClockOffsetEstimator measures a peer 5 s ahead") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  REQUIRE(
      add(estimator, exchange(clock.wall_now(), seconds(5), milliseconds(10), milliseconds(10)), clock.now())
          .ok());
  const auto estimate = estimator.estimate();
  REQUIRE(estimate.has_value());
  CHECK(estimate->offset == seconds(5));
  CHECK(estimate->rtt == milliseconds(20));
}

TEST_CASE("ClockOffsetEstimator bounds the error of asymmetric delay by half the round trip") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  const Duration true_offset = seconds(2);
  const auto sample =
      add(estimator, exchange(clock.wall_now(), true_offset, milliseconds(30), milliseconds(2)), clock.now());
  REQUIRE(sample.ok());
  CHECK(sample->rtt == milliseconds(32));
  CHECK(sample->error == milliseconds(16));
  CHECK(sample->offset == true_offset + milliseconds(14));  // (outbound - inbound) / 2
  CHECK(sample->offset - sample->error <= true_offset);
  CHECK(true_offset <= sample->offset + sample->error);
}

TEST_CASE("ClockOffsetEstimator picks the minimum round-trip sample among jittery ones") {
  ManualClock clock;
  ClockOffsetEstimator estimator;
  const Duration true_offset = milliseconds(700);
  const Duration delays[][2] = {{milliseconds(40), milliseconds(5)},
                                {milliseconds(3), milliseconds(2)},
                                {milliseconds(5), milliseconds(60)},
                                {milliseconds(20), milliseconds(20)}};
  for (const auto& d : delays) {
    clock.advance(seconds(1));
    REQUIRE(add(estimator, exchange(clock.wall_now(), true_offset, d[0], d[1]), clock.now()).ok());
  }
  const auto estimate = estimator.estimate();
  REQUIRE(estimate.has_value());
  CHECK(estimate->rtt == milliseconds(5));
  CHECK(estimate->offset == true_offset + std::chrono::microseconds(500));
  CHECK(estimate->at == clock.now() - seconds(2));
}

TEST_CASE("ClockOffsetEstimator prefers the newest sample among equal round trips") {
  ManualClock clock;
  ClockOffsetEstimator estimator;
  REQUIRE(
      add(estimator, exchange(clock.wall_now(), seconds(1), milliseconds(2), milliseconds(2)), clock.now())
          .ok());
  clock.advance(seconds(1));
  REQUIRE(
      add(estimator, exchange(clock.wall_now(), seconds(2), milliseconds(2), milliseconds(2)), clock.now())
          .ok());
  CHECK(estimator.estimate()->offset == seconds(2));
}

TEST_CASE("ClockOffsetEstimator rejects a negative round trip and records nothing") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  Exchange e = exchange(clock.wall_now(), seconds(1), milliseconds(5), milliseconds(5));
  e.t4 = e.t1 - seconds(1);  // our clock stepped back during the exchange
  const auto sample = add(estimator, e, clock.now());
  REQUIRE_FALSE(sample.ok());
  CHECK(sample.error().code == Errc::invalid_argument);
  CHECK(sample.error().detail.find("negative round trip") != std::string::npos);
  CHECK(estimator.size() == 0);
  CHECK_FALSE(estimator.estimate().has_value());
}

TEST_CASE("ClockOffsetEstimator rejects a peer send time before its receive time") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  Exchange e = exchange(clock.wall_now(), seconds(1), milliseconds(5), milliseconds(5));
  e.t3 = e.t2 - milliseconds(1);
  const auto sample = add(estimator, e, clock.now());
  REQUIRE_FALSE(sample.ok());
  CHECK(sample.error().code == Errc::invalid_argument);
  CHECK(sample.error().detail.find("t3") != std::string::npos);
  CHECK(estimator.size() == 0);
}

TEST_CASE("ClockOffsetEstimator rejects peer timestamps too far apart to subtract") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  const WallTime oldest = WallTime::min();
  const WallTime newest = WallTime::max();
  const auto sample = estimator.add_sample(clock.wall_now(), oldest, newest, clock.wall_now(), clock.now());
  REQUIRE_FALSE(sample.ok());
  CHECK(sample.error().code == Errc::invalid_argument);
  CHECK(estimator.size() == 0);
}

TEST_CASE("ClockOffsetEstimator window drops the oldest samples") {
  ManualClock clock;
  ClockOffsetEstimator estimator(3);
  // The best sample comes first, then three worse ones push it out of the window.
  REQUIRE(
      add(estimator, exchange(clock.wall_now(), seconds(9), milliseconds(1), milliseconds(1)), clock.now())
          .ok());
  for (int i = 1; i <= 3; ++i) {
    clock.advance(seconds(1));
    REQUIRE(add(estimator, exchange(clock.wall_now(), seconds(i), milliseconds(10 * i), milliseconds(10 * i)),
                clock.now())
                .ok());
  }
  CHECK(estimator.size() == 3);
  const auto estimate = estimator.estimate();
  REQUIRE(estimate.has_value());
  CHECK(estimate->offset == seconds(1));
  CHECK(estimate->rtt == milliseconds(20));
}

TEST_CASE("ClockOffsetEstimator reset forgets every sample") {
  const ManualClock clock;
  ClockOffsetEstimator estimator;
  REQUIRE(
      add(estimator, exchange(clock.wall_now(), seconds(1), milliseconds(1), milliseconds(1)), clock.now())
          .ok());
  CHECK(estimator.size() == 1);
  estimator.reset();
  CHECK(estimator.size() == 0);
  CHECK_FALSE(estimator.estimate().has_value());
}

}  // namespace
}  // namespace dtu::common
