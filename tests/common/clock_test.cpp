#include "dtu/common/clock.hpp"

#include <doctest/doctest.h>

namespace dtu::common {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST_CASE("ManualClock starts at its documented fixed points") {
  const ManualClock clock;
  CHECK(clock.now() == MonoTime{} + seconds(1000));
  CHECK(clock.wall_now() == WallTime{} + seconds(1767225600));
}

TEST_CASE("ManualClock advance moves the steady and the wall clock together") {
  ManualClock clock;
  const MonoTime mono = clock.now();
  const WallTime wall = clock.wall_now();
  clock.advance(milliseconds(1500));
  CHECK(clock.now() - mono == milliseconds(1500));
  CHECK(clock.wall_now() - wall == milliseconds(1500));
}

TEST_CASE("ManualClock jump_wall moves only the wall clock, in either direction") {
  ManualClock clock;
  const MonoTime mono = clock.now();
  const WallTime wall = clock.wall_now();
  clock.jump_wall(seconds(30));
  CHECK(clock.wall_now() - wall == seconds(30));
  clock.jump_wall(-seconds(90));
  CHECK(clock.wall_now() - wall == -seconds(60));
  CHECK(clock.now() == mono);
}

TEST_CASE("ManualClock set_wall sets the wall clock and leaves the steady clock") {
  ManualClock clock;
  const MonoTime mono = clock.now();
  const WallTime target = WallTime{} + seconds(42);
  clock.set_wall(target);
  CHECK(clock.wall_now() == target);
  CHECK(clock.now() == mono);
}

TEST_CASE("ManualClock is usable through the Clock interface") {
  ManualClock manual;
  const Clock& clock = manual;
  const MonoTime before = clock.now();
  manual.advance(seconds(1));
  CHECK(clock.now() - before == seconds(1));
}

TEST_CASE("SystemClock instance is one process-wide object") {
  CHECK(&SystemClock::instance() == &SystemClock::instance());
  const MonoTime a = SystemClock::instance().now();
  CHECK(SystemClock::instance().now() >= a);
}

}  // namespace
}  // namespace dtu::common
