#include "dtu/common/heartbeat.hpp"

#include <doctest/doctest.h>

#include <chrono>

namespace dtu::common {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST_CASE("Heartbeat should_send after one silent interval, not before") {
  ManualClock clock;
  const MonoTime start = clock.now();
  const Heartbeat hb(seconds(1), 3, start);
  CHECK_FALSE(hb.should_send(start));
  CHECK_FALSE(hb.should_send(start + milliseconds(999)));
  CHECK(hb.should_send(start + seconds(1)));
  CHECK(hb.should_send(start + seconds(2)));
}

TEST_CASE("Heartbeat on_send restarts the send interval") {
  ManualClock clock;
  Heartbeat hb(seconds(1), 3, clock.now());
  clock.advance(milliseconds(700));
  hb.on_send(clock.now());
  clock.advance(milliseconds(700));
  CHECK_FALSE(hb.should_send(clock.now()));
  clock.advance(milliseconds(300));
  CHECK(hb.should_send(clock.now()));
}

TEST_CASE("Heartbeat receiving does not count as sending") {
  ManualClock clock;
  Heartbeat hb(seconds(1), 3, clock.now());
  clock.advance(milliseconds(900));
  hb.on_receive(clock.now());
  clock.advance(milliseconds(100));
  CHECK(hb.should_send(clock.now()));
}

TEST_CASE("Heartbeat is dead after misses times interval of silence, not before") {
  ManualClock clock;
  const MonoTime start = clock.now();
  const Heartbeat hb(seconds(1), 3, start);
  CHECK(hb.dead_at() == start + seconds(3));
  CHECK_FALSE(hb.is_dead(start));
  CHECK_FALSE(hb.is_dead(start + seconds(3) - milliseconds(1)));
  CHECK(hb.is_dead(start + seconds(3)));
  CHECK(hb.silence(start + milliseconds(2500)) == milliseconds(2500));
}

TEST_CASE("Heartbeat any receive resets the dead timer") {
  ManualClock clock;
  Heartbeat hb(seconds(1), 3, clock.now());
  for (int i = 0; i < 10; ++i) {
    clock.advance(milliseconds(2900));
    CHECK_FALSE(hb.is_dead(clock.now()));
    hb.on_receive(clock.now());
    CHECK(hb.silence(clock.now()) == Duration::zero());
  }
  CHECK(hb.dead_at() == clock.now() + seconds(3));
  clock.advance(seconds(3));
  CHECK(hb.is_dead(clock.now()));
}

TEST_CASE("Heartbeat sending does not keep a silent peer alive") {
  ManualClock clock;
  Heartbeat hb(seconds(1), 2, clock.now());
  for (int i = 0; i < 2; ++i) {
    clock.advance(seconds(1));
    REQUIRE(hb.should_send(clock.now()));
    hb.on_send(clock.now());
  }
  CHECK(hb.is_dead(clock.now()));
}

TEST_CASE("Heartbeat next_deadline is the earlier of the next send and the death") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start);
  CHECK(hb.next_deadline() == start + seconds(1));
  hb.on_send(start + seconds(1));
  hb.on_send(start + seconds(2));
  CHECK(hb.next_deadline() == start + seconds(3));  // send and death coincide
  hb.on_send(start + milliseconds(2500));
  CHECK(hb.next_deadline() == start + seconds(3));  // death comes first
  hb.on_receive(start + milliseconds(2500));
  CHECK(hb.next_deadline() == start + milliseconds(3500));
}

TEST_CASE("Heartbeat next_deadline with one miss allowed can be the death") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 1, start);
  hb.on_send(start + milliseconds(500));
  CHECK(hb.next_deadline() == start + seconds(1));
  CHECK(hb.dead_at() == start + seconds(1));
}

TEST_CASE("Heartbeat reconfigure applies the new parameters to the silence so far") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start);
  hb.reconfigure(milliseconds(200), 5);
  CHECK(hb.interval() == milliseconds(200));
  CHECK(hb.misses() == 5);
  CHECK(hb.dead_at() == start + seconds(1));
  CHECK(hb.should_send(start + milliseconds(200)));
  CHECK_FALSE(hb.should_send(start + milliseconds(199)));
  CHECK(hb.next_deadline() == start + milliseconds(200));
  // Silence already past the new limit is dead at once.
  CHECK(hb.is_dead(start + seconds(1)));

  hb.reconfigure(seconds(10), 4);
  CHECK_FALSE(hb.is_dead(start + seconds(39)));
  CHECK(hb.is_dead(start + seconds(40)));
}

TEST_CASE("Heartbeat handles long intervals and many misses without overflow") {
  ManualClock clock;
  const MonoTime start = clock.now();
  const Heartbeat hb(std::chrono::hours(24), 1000, start);
  CHECK(hb.dead_at() == start + std::chrono::hours(24) * 1000);
  CHECK(hb.dead_at() > start);
  CHECK_FALSE(hb.is_dead(start + std::chrono::hours(24 * 999)));
}

TEST_CASE("Heartbeat goes out every kSampleIntervals intervals on a busy link, so the clock keeps being sampled") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start);
  // Traffic every 500 ms: never a silent interval.
  for (int i = 1; i < 10; ++i) {
    clock.advance(milliseconds(500));
    CHECK(hb.should_send(clock.now()) == (clock.now() >= start + seconds(Heartbeat::kSampleIntervals)));
    if (hb.should_send(clock.now())) break;
    hb.on_send(clock.now());
  }
  CHECK(hb.should_send(start + seconds(5)));
  hb.on_heartbeat_sent(start + seconds(5));
  hb.on_send(start + milliseconds(5500));
  hb.on_receive(start + milliseconds(5500));
  CHECK_FALSE(hb.should_send(start + milliseconds(6000)));
  CHECK(hb.next_deadline() == start + milliseconds(6500));
}

TEST_CASE("Heartbeat answering side answers a heartbeat at once and its own timer waits one and a half intervals") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start, /*answers=*/true);
  CHECK(hb.answers());
  // Its timer leaves room for the peer's next heartbeat, which comes a little after one interval.
  CHECK(hb.send_silence() == milliseconds(1500));
  CHECK_FALSE(hb.should_send(start + seconds(1)));
  CHECK_FALSE(hb.should_send(start + milliseconds(1499)));
  CHECK(hb.should_send(start + milliseconds(1500)));
  // The peer's heartbeat arrives 1,010 ms in: answered, and the timer moves 1.5 s past the answer.
  const MonoTime arrival = start + milliseconds(1010);
  hb.on_receive(arrival);
  CHECK(hb.should_answer(arrival));
  hb.on_answer_sent(arrival);
  CHECK(hb.next_send() == arrival + milliseconds(1500));
  // Steady state: the peer's heartbeats, each a little more than an interval apart, are answered
  // before the timer would fire, so the timer never does.
  MonoTime at = arrival;
  for (int i = 0; i < 10; ++i) {
    at += milliseconds(1020);
    CHECK(at < hb.next_send());
    hb.on_receive(at);
    REQUIRE(hb.should_answer(at));
    hb.on_answer_sent(at);
  }
}

TEST_CASE("Heartbeat answering side answers at most one heartbeat per half interval") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start, /*answers=*/true);
  // The first is answered however soon it comes, and a heartbeat of our timer does not count.
  CHECK(hb.should_answer(start));
  hb.on_heartbeat_sent(start + milliseconds(900));
  CHECK(hb.should_answer(start + milliseconds(900)));
  hb.on_answer_sent(start + seconds(1));
  CHECK_FALSE(hb.should_answer(start + milliseconds(1001)));
  CHECK_FALSE(hb.should_answer(start + milliseconds(1499)));
  CHECK(hb.should_answer(start + milliseconds(1500)));
}

TEST_CASE("Heartbeat only the answering side answers, and one allowed a single miss keeps a one-interval timer") {
  ManualClock clock;
  const MonoTime start = clock.now();
  const Heartbeat initiator(seconds(1), 3, start);
  CHECK_FALSE(initiator.should_answer(start + seconds(10)));
  CHECK(initiator.send_silence() == seconds(1));
  // With misses 1 the peer calls us dead after one silent interval: 1.5 would be too late.
  const Heartbeat single(seconds(1), 1, start, /*answers=*/true);
  CHECK(single.send_silence() == seconds(1));
  CHECK(single.should_send(start + seconds(1)));
  CHECK(single.should_answer(start + seconds(1)));
}

TEST_CASE("Heartbeat answering side on a busy link still sends every kSampleIntervals intervals") {
  ManualClock clock;
  const MonoTime start = clock.now();
  Heartbeat hb(seconds(1), 3, start, /*answers=*/true);
  for (int i = 1; i <= 9; ++i) hb.on_send(start + milliseconds(500) * i);
  CHECK(hb.next_send() == start + seconds(Heartbeat::kSampleIntervals));
}

}  // namespace
}  // namespace dtu::common
