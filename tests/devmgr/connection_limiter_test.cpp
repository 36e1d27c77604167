#include "dtu/devmgr/connection_limiter.hpp"

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dtu::devmgr {
namespace {

TEST_CASE("ConnectionLimiter refuses a source at its cap, takes others, and gives the place back on release") {
  ConnectionLimiter limiter(2, 0);
  auto a1 = limiter.admit("10.0.0.1");
  auto a2 = limiter.admit("10.0.0.1");
  REQUIRE(a1.ok());
  REQUIRE(a2.ok());
  auto a3 = limiter.admit("10.0.0.1");
  REQUIRE_FALSE(a3.ok());
  CHECK(a3.error().code == common::make_error_code(common::Errc::denied));
  CHECK(a3.error().detail == "limit of 2 connections from 10.0.0.1 reached");
  CHECK(limiter.refused() == 1);
  CHECK(limiter.admit("10.0.0.2").ok());  // a temporary: admitted and released at once
  CHECK(limiter.open("10.0.0.2") == 0);
  CHECK(limiter.open("10.0.0.1") == 2);
  a1->release();
  a1->release();  // twice: counted once
  CHECK(limiter.open("10.0.0.1") == 1);
  auto again = limiter.admit("10.0.0.1");
  CHECK(again.ok());
  CHECK(limiter.open() == 2);
}

TEST_CASE("ConnectionLimiter refuses everyone at the total cap") {
  ConnectionLimiter limiter(0, 3);
  std::vector<ConnectionLimiter::Slot> held;
  for (const char* source : {"a", "b", "c"}) {
    auto slot = limiter.admit(source);
    REQUIRE(slot.ok());
    held.push_back(std::move(slot.value()));
  }
  auto refused = limiter.admit("d");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().detail == "limit of 3 connections in all reached");
  held.pop_back();  // destroyed: released
  CHECK(limiter.admit("d").ok());
}

TEST_CASE("ConnectionLimiter slots move without counting twice, and outlive the limiter safely") {
  std::optional<ConnectionLimiter::Slot> kept;
  {
    ConnectionLimiter limiter(1, 1);
    auto slot = limiter.admit("x");
    REQUIRE(slot.ok());
    ConnectionLimiter::Slot moved = std::move(slot.value());
    ConnectionLimiter::Slot assigned;
    assigned = std::move(moved);
    CHECK(limiter.open("x") == 1);
    CHECK(limiter.open() == 1);
    kept.emplace(std::move(assigned));
  }
  kept.reset();  // the limiter is gone; the slot's shared state is not
}

TEST_CASE("ConnectionLimiter with no caps admits anything") {
  ConnectionLimiter limiter(0, 0);
  std::vector<ConnectionLimiter::Slot> held;
  for (int i = 0; i < 1000; ++i) {
    auto slot = limiter.admit("same");
    REQUIRE(slot.ok());
    held.push_back(std::move(slot.value()));
  }
  CHECK(limiter.open("same") == 1000);
  CHECK(limiter.refused() == 0);
}

}  // namespace
}  // namespace dtu::devmgr
