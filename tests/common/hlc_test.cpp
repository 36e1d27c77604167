#include "dtu/common/hlc.hpp"

#include <doctest/doctest.h>

#include <limits>
#include <nlohmann/json.hpp>

namespace dtu::common {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

int64_t wall_us(const Clock& clock) {
  return std::chrono::floor<microseconds>(clock.wall_now().time_since_epoch()).count();
}

TEST_CASE("HLC now follows the wall clock with a zero logical counter when time moves") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  CHECK(hlc.now() == HlcTimestamp{wall_us(clock), 0});
  clock.advance(milliseconds(5));
  CHECK(hlc.now() == HlcTimestamp{wall_us(clock), 0});
  CHECK(hlc.last() == HlcTimestamp{wall_us(clock), 0});
}

TEST_CASE("HLC logical counter increments while the wall clock stands still") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp a = hlc.now();
  const HlcTimestamp b = hlc.now();
  const HlcTimestamp c = hlc.now();
  CHECK(b == HlcTimestamp{a.wall_us, 1});
  CHECK(c == HlcTimestamp{a.wall_us, 2});
}

TEST_CASE("HLC stays monotonic across a backwards wall clock jump") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp before = hlc.now();
  clock.jump_wall(-seconds(10));
  HlcTimestamp previous = before;
  for (int i = 0; i < 5; ++i) {
    clock.advance(seconds(1));
    const HlcTimestamp t = hlc.now();
    CHECK(t > previous);
    CHECK(t.wall_us == before.wall_us);
    previous = t;
  }
  clock.advance(seconds(10));
  const HlcTimestamp after = hlc.now();
  CHECK(after == HlcTimestamp{wall_us(clock), 0});
}

TEST_CASE("HLC observe of a remote ahead moves the clock past it") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp remote{wall_us(clock) + 2'000'000, 7};
  const auto received = hlc.observe(remote);
  REQUIRE(received.ok());
  CHECK(*received == HlcTimestamp{remote.wall_us, 8});
  CHECK(hlc.now() == HlcTimestamp{remote.wall_us, 9});
  clock.advance(seconds(3));
  CHECK(hlc.now() == HlcTimestamp{wall_us(clock), 0});
}

TEST_CASE("HLC observe of a remote behind is stamped after the local history") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp local = hlc.now();
  const auto received = hlc.observe({local.wall_us - 1000, 50});
  REQUIRE(received.ok());
  CHECK(*received == HlcTimestamp{local.wall_us, 1});
  clock.advance(microseconds(1));
  const auto later = hlc.observe({local.wall_us - 1000, 50});
  REQUIRE(later.ok());
  CHECK(*later == HlcTimestamp{local.wall_us + 1, 0});
}

TEST_CASE("HLC observe of an equal wall time takes the larger logical counter plus one") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp local = hlc.now();
  const auto received = hlc.observe({local.wall_us, 41});
  REQUIRE(received.ok());
  CHECK(*received == HlcTimestamp{local.wall_us, 42});
}

TEST_CASE("HLC rejects a remote two minutes ahead and leaves the clock unchanged") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp before = hlc.now();
  const HlcTimestamp remote{before.wall_us + std::chrono::floor<microseconds>(minutes(2)).count(), 0};
  const auto received = hlc.observe(remote);
  REQUIRE_FALSE(received.ok());
  CHECK(received.error().code == Errc::invalid_argument);
  CHECK(received.error().detail.find(std::to_string(remote.wall_us)) != std::string::npos);
  CHECK(received.error().detail.find(std::to_string(before.wall_us)) != std::string::npos);
  CHECK(hlc.last() == before);
  CHECK(hlc.now() == HlcTimestamp{before.wall_us, 1});
}

TEST_CASE("HLC accepts a remote exactly max_forward_skew ahead") {
  ManualClock clock;
  HybridLogicalClock hlc(clock, seconds(5));
  const HlcTimestamp remote{wall_us(clock) + 5'000'000, 0};
  CHECK(hlc.observe(remote).ok());
  CHECK_FALSE(hlc.observe({remote.wall_us + 1, 0}).ok());
}

TEST_CASE("HLC rejects extreme remote times without overflow") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  CHECK_FALSE(hlc.observe({std::numeric_limits<int64_t>::max(), 0}).ok());
  const auto oldest = hlc.observe({std::numeric_limits<int64_t>::min(), 0});
  REQUIRE(oldest.ok());
  CHECK(*oldest == HlcTimestamp{wall_us(clock), 0});
}

TEST_CASE("HLC carries a saturated logical counter into the wall time") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  const HlcTimestamp remote{wall_us(clock), std::numeric_limits<uint32_t>::max()};
  const auto received = hlc.observe(remote);
  REQUIRE(received.ok());
  CHECK(*received > remote);
  CHECK(*received == HlcTimestamp{remote.wall_us + 1, 0});
}

TEST_CASE("HLC offset shifts physical time and lowering it never goes backwards") {
  ManualClock clock;
  HybridLogicalClock hlc(clock);
  hlc.set_offset(seconds(3));
  CHECK(hlc.offset() == seconds(3));
  const HlcTimestamp ahead = hlc.now();
  CHECK(ahead.wall_us == wall_us(clock) + 3'000'000);
  hlc.set_offset(Duration::zero());
  CHECK(hlc.now() == HlcTimestamp{ahead.wall_us, 1});
  hlc.set_offset(seconds(-70));
  const HlcTimestamp remote{wall_us(clock) - 5'000'000, 0};
  CHECK_FALSE(hlc.observe(remote).ok());  // 65 s ahead of the corrected physical time
}

TEST_CASE("HLC timestamps between skewed clocks order every receive after its send") {
  ManualClock clock_a;
  ManualClock clock_b;
  clock_b.jump_wall(-seconds(30));  // B's wall clock is 30 s behind A's
  HybridLogicalClock a(clock_a);
  HybridLogicalClock b(clock_b);
  for (int round = 0; round < 20; ++round) {
    clock_a.advance(milliseconds(1));
    clock_b.advance(milliseconds(1));
    const HlcTimestamp sent_by_a = a.now();
    clock_a.advance(milliseconds(3));
    clock_b.advance(milliseconds(3));
    const auto received_by_b = b.observe(sent_by_a);
    REQUIRE(received_by_b.ok());
    CHECK(*received_by_b > sent_by_a);

    const HlcTimestamp sent_by_b = b.now();
    CHECK(sent_by_b > *received_by_b);
    clock_a.advance(milliseconds(2));
    clock_b.advance(milliseconds(2));
    const auto received_by_a = a.observe(sent_by_b);
    REQUIRE(received_by_a.ok());
    CHECK(*received_by_a > sent_by_b);
    // A runs ahead, so B is carried along A's time and the logical counters stay small.
    CHECK(received_by_a->wall_us == wall_us(clock_a));
    CHECK(received_by_a->logical == 0);
    CHECK(sent_by_b.logical <= 2);
  }
}

TEST_CASE("HlcTimestamp orders by wall time, then by logical counter") {
  CHECK(HlcTimestamp{1, 9} < HlcTimestamp{2, 0});
  CHECK(HlcTimestamp{2, 0} < HlcTimestamp{2, 1});
  CHECK(HlcTimestamp{2, 1} == HlcTimestamp{2, 1});
}

TEST_CASE("HlcTimestamp round-trips through JSON") {
  const HlcTimestamp ts{1767225600123456, 17};
  const nlohmann::json j = ts;
  CHECK(j == nlohmann::json::parse(R"({"wall_us":1767225600123456,"logical":17})"));
  CHECK(j.get<HlcTimestamp>() == ts);
  const HlcTimestamp negative{-5, 0};
  CHECK(nlohmann::json(negative).get<HlcTimestamp>() == negative);
}

TEST_CASE("HlcTimestamp from_json throws nlohmann exceptions on bad input") {
  using nlohmann::json;
  CHECK_THROWS_AS(json::parse(R"({"wall_us":1})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"logical":1})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"wall_us":"1","logical":1})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"wall_us":1.5,"logical":1})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"wall_us":1,"logical":-1})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"wall_us":1,"logical":4294967296})").get<HlcTimestamp>(), json::exception);
  CHECK_THROWS_AS(json::parse(R"({"wall_us":9223372036854775808,"logical":0})").get<HlcTimestamp>(),
                  json::exception);
  CHECK_THROWS_AS(json::parse("[1,2]").get<HlcTimestamp>(), json::exception);
  CHECK(json::parse(R"({"wall_us":1,"logical":4294967295})").get<HlcTimestamp>() ==
        HlcTimestamp{1, 4294967295});
}

}  // namespace
}  // namespace dtu::common
