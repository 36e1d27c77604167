#include "dtu/services/table.hpp"

#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

using dtu::common::FinderInfo;
using dtu::common::LeaseInfo;
using dtu::common::SessionInfo;
using nlohmann::json;

namespace {

std::string printed(const dtu::services::Table& table) {
  std::ostringstream out;
  table.print(out);
  return out.str();
}

dtu::common::Finder finder_of(const json& j) {
  auto finder = dtu::common::parse_finder(j);
  REQUIRE_MESSAGE(finder.ok(), (finder.ok() ? "" : finder.error().describe()));
  return *finder;
}

}  // namespace

TEST_CASE("Table pads columns to their widest cell") {
  dtu::services::Table table({"A", "LONGER"});
  table.add_row({"wide-cell", "x"});
  std::ostringstream out;
  table.print(out);
  CHECK(out.str() == "A          LONGER\nwide-cell  x\n");
}

TEST_CASE("the device table summarises units and shows missing strings as '-'") {
  dtu::common::DeviceRecord d;
  d.dtu = "dtu-1";
  d.device = "1-2";
  d.vid = 0x04b8;
  d.pid = 0x08a1;
  d.owner = "m1";
  dtu::common::UnitRecord printer;
  printer.unit = 0;
  printer.function = "printer";
  dtu::common::UnitRecord scanner;
  scanner.unit = 1;
  scanner.function = "scanner";
  scanner.state = dtu::common::UnitState::allocated;
  d.units = {printer, scanner};
  std::ostringstream out;
  dtu::services::device_table({d}).print(out);
  const std::string text = out.str();
  CHECK(text.find("04b8:08a1") != std::string::npos);
  CHECK(text.find("0:printer 1:scanner(allocated)") != std::string::npos);
  CHECK(text.find("  -  ") != std::string::npos);
}

TEST_CASE("durations read as tenths of seconds under a minute, then minutes, then hours") {
  using dtu::services::format_duration_ms;
  CHECK(format_duration_ms(0) == "0.0s");
  CHECK(format_duration_ms(850) == "0.8s");
  CHECK(format_duration_ms(59'999) == "59.9s");
  CHECK(format_duration_ms(60'000) == "1m00s");
  CHECK(format_duration_ms(245'500) == "4m05s");
  CHECK(format_duration_ms(3'599'999) == "59m59s");
  CHECK(format_duration_ms(3'600'000) == "1h00m");
  CHECK(format_duration_ms(7'380'000) == "2h03m");
}

TEST_CASE("a finder summary lists its fields in the format's order and its scope last") {
  using dtu::services::finder_summary;
  CHECK(finder_summary(finder_of({{"scope", "session"}, {"session", "s1"}, {"function", "printer"}})) ==
        "function=printer scope=session:s1");
  CHECK(finder_summary(finder_of({{"pid", "0005"}, {"vid", json::array({"04b9", "04b8"})}, {"class", 7}})) ==
        "vid=04b8,04b9 pid=0005 class=7");
  CHECK(finder_summary(finder_of({{"product", "Stylus *"}, {"scope", "dtu"}, {"scope_dtu", "dtu-1"}})) ==
        "product=\"Stylus *\" scope=dtu:dtu-1");
  CHECK(finder_summary(finder_of({{"usbredir", "0x07,-1,-1,-1,1"}, {"scope", "bus"}})) ==
        "usbredir=0x07,-1,-1,-1,1 scope=bus");
  CHECK(finder_summary(finder_of(json::object())) == "(any device)");
}

TEST_CASE(
    "the finder table shows the client with its pid, the uid, the finder id, the finder and its matches") {
  FinderInfo printers;
  printers.client = "print-service";
  printers.pid = 4242;
  printers.uid = 1000;
  printers.finder_id = 7;
  printers.finder = finder_of({{"function", "printer"}, {"scope", "session"}, {"session", "s1"}});
  printers.matches = {{"dtu-1", "1-1", {0}, "m1", false}, {"dtu-1", "1-2", {0}, "m1", false}};
  FinderInfo all;
  all.client = "audit";
  all.pid = 9;
  all.uid = 0;
  all.finder_id = 1;
  CHECK(printed(dtu::services::finder_table({printers, all})) ==
        "CLIENT               UID   ID  FINDER                             MATCHES\n"
        "print-service[4242]  1000  7   function=printer scope=session:s1  2\n"
        "audit[9]             0     1   (any device)                       0\n");
}

TEST_CASE("the lease table shows each lease with its holder, expiry and whether it is kept") {
  LeaseInfo held{"5f3a9c0e12345678", "dtu-1", "1-1", 0, "print-service[4242]@m1", 1000, 59'500, false};
  LeaseInfo kept{"00000000000000aa", "dtu-2", "1-2.3", 2, "devmgrctl[77]@m1", 0, 3'600'000, true};
  CHECK(printed(dtu::services::lease_table({held, kept})) ==
        "LEASE             DTU    DEVICE  UNIT  HOLDER                  UID   EXPIRES IN  KEEP\n"
        "5f3a9c0e12345678  dtu-1  1-1     0     print-service[4242]@m1  1000  59.5s       no\n"
        "00000000000000aa  dtu-2  1-2.3   2     devmgrctl[77]@m1        0     1h00m       yes\n");
}

TEST_CASE("the session table shows where each session is and since when") {
  std::vector<SessionInfo> sessions = {{"s1", "alice", "dtu-1", 4'000},
                                       {"session-22", "bob", "dtu-2", 245'000}};
  CHECK(printed(dtu::services::session_table(sessions)) ==
        "SESSION     USER   DTU    SINCE\n"
        "s1          alice  dtu-1  4.0s ago\n"
        "session-22  bob    dtu-2  4m05s ago\n");
}

TEST_CASE("empty listings print their headers alone") {
  CHECK(printed(dtu::services::finder_table({})) == "CLIENT  UID  ID  FINDER  MATCHES\n");
  CHECK(printed(dtu::services::lease_table({})) ==
        "LEASE  DTU  DEVICE  UNIT  HOLDER  UID  EXPIRES IN  KEEP\n");
  CHECK(printed(dtu::services::session_table({})) == "SESSION  USER  DTU  SINCE\n");
}

TEST_CASE("the policy table numbers the rules in order, with their match and other settings") {
  const json policy = json::parse(R"({
    "defaults": { "lease_ms": 60000, "max_leases_per_user": 8 },
    "rules": [
      { "name": "no-mass-storage", "match": { "function": "storage" }, "action": "deny",
        "reason": "USB storage is not shared" },
      { "name": "printers-for-staff", "match": { "function": "printer", "group": ["staff", "lp"] },
        "action": "allow", "lease_ms": 120000 },
      { "action": "allow" }
    ],
    "default_action": "deny"
  })");
  CHECK(
      printed(dtu::services::policy_rule_table(policy)) ==
      "#  NAME                ACTION  MATCH                            SETTINGS\n"
      "1  no-mass-storage     deny    function=storage                 reason=\"USB storage is not shared\"\n"
      "2  printers-for-staff  allow   function=printer group=staff,lp  lease_ms=120000\n"
      "3  -                   allow   (any unit)                       -\n");
  CHECK(dtu::services::policy_settings(policy) ==
        std::vector<std::string>{"default_action: deny", "defaults: lease_ms=60000 max_leases_per_user=8"});
  CHECK(dtu::services::policy_rule_table(json::object()).rows() == 0);
}
