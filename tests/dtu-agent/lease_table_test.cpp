#include "dtu/agent/lease_table.hpp"

#include <doctest/doctest.h>

using dtu::agent::kLeaseTokenBytes;
using dtu::agent::LeaseEnd;
using dtu::agent::LeaseTable;
using dtu::common::Errc;
using dtu::common::ManualClock;
using namespace std::chrono_literals;

TEST_CASE("a lease is granted with a fresh id and token and refused while held, naming the holder") {
  ManualClock clock;
  LeaseTable table(clock);
  auto a = table.grant("1-1", 0, {0}, "cups[12]@m1", 30s);
  REQUIRE(a.ok());
  CHECK(a->id.size() == 16);
  CHECK(a->token.size() == kLeaseTokenBytes);
  CHECK(a->expires == clock.now() + 30s);
  auto b = table.grant("1-1", 0, {0}, "sane[13]@m1", 30s);
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == make_error_code(Errc::refused));
  CHECK(b.error().detail.find("held by cups[12]@m1 (lease " + a->id + ")") != std::string::npos);
  auto other_unit = table.grant("1-1", 1, {1}, "sane[13]@m1", 30s);
  REQUIRE(other_unit.ok());
  CHECK(other_unit->id != a->id);
  CHECK(other_unit->token != a->token);
  CHECK(table.on_device("1-1").size() == 2);
  CHECK(table.holding("1-1", 1)->holder == "sane[13]@m1");
}

TEST_CASE("lease lengths outside the bounds are refused") {
  ManualClock clock;
  LeaseTable table(clock);
  CHECK(table.grant("1-1", 0, {0}, "h", 10ms).error().code == make_error_code(Errc::invalid_argument));
  CHECK(table.grant("1-1", 0, {0}, "h", 25h).error().code == make_error_code(Errc::invalid_argument));
  CHECK(table.size() == 0);
}

TEST_CASE("leases expire on the monotonic clock unless renewed, and renewals never shorten") {
  ManualClock clock;
  LeaseTable table(clock);
  auto lease = table.grant("1-1", 0, {0}, "h", 10s);
  REQUIRE(lease.ok());
  CHECK(table.next_expiry() == clock.now() + 10s);
  clock.advance(8s);
  CHECK(table.expire().empty());
  auto renewed = table.renew(lease->id, 10s);
  REQUIRE(renewed.ok());
  CHECK(renewed->expires == clock.now() + 10s);
  auto shorter = table.renew(lease->id, 1s);  // asks for less: keeps the later expiry
  REQUIRE(shorter.ok());
  CHECK(shorter->expires == renewed->expires);
  clock.advance(9999ms);
  CHECK(table.expire().empty());
  clock.advance(1ms);  // exactly at the expiry
  auto gone = table.expire();
  REQUIRE(gone.size() == 1);
  CHECK(gone[0].id == lease->id);
  CHECK(table.find(lease->id) == nullptr);
  CHECK(table.next_expiry() == dtu::common::kNever);
  // Remembered with the reason, and a renewal says so.
  REQUIRE(table.ended(lease->id) != nullptr);
  CHECK(table.ended(lease->id)->why == LeaseEnd::expired);
  CHECK(table.ended(lease->id)->token == lease->token);
  auto late = table.renew(lease->id, 10s);
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().detail.find("has ended (expired)") != std::string::npos);
  // Forgotten after kEndedMemory.
  clock.advance(dtu::agent::kEndedMemory + 1s);
  CHECK(table.ended(lease->id) == nullptr);
}

TEST_CASE("ending by id, by device and all at once reports each lease once with its reason") {
  ManualClock clock;
  LeaseTable table(clock);
  auto a = table.grant("1-1", 0, {0}, "h", 10s);
  auto b = table.grant("1-2", 0, {0}, "h", 10s);
  auto c = table.grant("1-2", 2, {2}, "h", 10s);
  REQUIRE((a.ok() && b.ok() && c.ok()));
  CHECK(table.end(a->id, LeaseEnd::released).has_value());
  CHECK_FALSE(table.end(a->id, LeaseEnd::released).has_value());
  CHECK(table.ended(a->id)->why == LeaseEnd::released);
  CHECK(table.end_device("1-2", LeaseEnd::device_gone).size() == 2);
  CHECK(table.ended(c->id)->why == LeaseEnd::device_gone);
  CHECK(table.size() == 0);
  auto d = table.grant("1-1", 0, {0}, "h", 10s);  // the unit is free again
  REQUIRE(d.ok());
  CHECK(table.end_all(LeaseEnd::agent_stopping).size() == 1);
  CHECK(std::string(dtu::agent::lease_end_name(LeaseEnd::agent_stopping)) == "agent_stopping");
}
