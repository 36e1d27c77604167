#include "dtu/devmgr/policy.hpp"

#include <doctest/doctest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/temp_dir.hpp"

#ifndef DTU_SOURCE_DIR
#error "DTU_SOURCE_DIR must name the source tree (the build sets it) so the test finds packaging/policy"
#endif

namespace dtu::devmgr {
namespace {

using common::DeviceRecord;
using common::UnitRecord;
using nlohmann::json;

const std::string kShippedPolicy = std::string(DTU_SOURCE_DIR) + "/packaging/policy/policy.json";

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

using TempDir = dtu::testing::UnitTempDir;

UnitRecord unit(std::uint32_t number, std::uint8_t cls, std::uint8_t subclass, std::uint8_t protocol,
                std::string function) {
  UnitRecord u;
  u.unit = number;
  u.interfaces = {static_cast<std::uint8_t>(number)};
  u.cls = cls;
  u.subclass = subclass;
  u.protocol = protocol;
  u.function = std::move(function);
  return u;
}

DeviceRecord device(std::string dtu, std::string port, std::uint16_t vid, std::uint16_t pid,
                    std::vector<UnitRecord> units) {
  DeviceRecord d;
  d.dtu = std::move(dtu);
  d.device = std::move(port);
  d.vid = vid;
  d.pid = pid;
  d.bcd_device = 0x0100;
  d.units = std::move(units);
  d.owner = "m1";
  return d;
}

// The demo's single-function printer (demo/sim-devices.json, port 1-1) on a kiosk DTU.
DeviceRecord printer() {
  DeviceRecord d = device("kiosk-1", "1-1", 0x04b8, 0x0005, {unit(0, 0x07, 0x01, 0x02, "printer")});
  d.manufacturer = "EPSON";
  d.product = "Stylus Test Printer";
  d.serial = "PRN0001";
  return d;
}

// The demo's multi-function device: printer, vendor-specific scanner, card-reader storage.
DeviceRecord mfp() {
  DeviceRecord d = device("office-7", "1-2", 0x04b8, 0x08a1,
                          {unit(0, 0x07, 0x01, 0x02, "printer"), unit(1, 0xff, 0xff, 0xff, "vendor"),
                           unit(2, 0x08, 0x06, 0x50, "storage")});
  d.manufacturer = "EPSON";
  d.product = "Test MFP Printer-Scanner-Storage";
  d.serial = "MFP0042";
  return d;
}

// A smart card reader that reports no serial number.
DeviceRecord card_reader() {
  DeviceRecord d = device("office-7", "1-3", 0x076b, 0x3021, {unit(0, 0x0b, 0x00, 0x00, "smartcard")});
  d.manufacturer = "OMNIKEY AG";
  d.product = "Smart Card Reader USB";
  return d;
}

DeviceRecord boot_keyboard() {
  return device("office-7", "1-4", 0x413c, 0x2107, {unit(0, 0x03, 0x01, 0x01, "hid")});
}

DeviceRecord boot_mouse() {
  return device("office-7", "1-5", 0x046d, 0xc077, {unit(0, 0x03, 0x01, 0x02, "hid")});
}

// A barcode scanner or foot pedal: HID without the boot protocol.
DeviceRecord plain_hid() {
  return device("office-7", "1-6", 0x05e0, 0x1200, {unit(0, 0x03, 0x00, 0x00, "hid")});
}

DeviceRecord hub() {
  DeviceRecord d = device("office-7", "1-7", 0x05e3, 0x0608, {unit(0, 0x09, 0x00, 0x01, "hub")});
  d.cls = 0x09;
  return d;
}

DeviceRecord scanner() {
  return device("office-7", "1-8", 0x04a9, 0x1909, {unit(0, 0x06, 0x01, 0x01, "scanner")});
}

// alice (uid 1000, groups alice and staff) asks through dtu-print for `unit_index` of `d`;
// no session is attached at the DTU.
PolicyRequest request(const DeviceRecord& d, std::size_t unit_index = 0) {
  PolicyRequest r;
  r.device = &d;
  r.unit = &d.units.at(unit_index);
  r.uid = 1000;
  r.user = "alice";
  r.groups = {"alice", "staff"};
  r.service = "dtu-print";
  return r;
}

Policy parsed(const json& document) {
  auto policy = Policy::parse(document, "test.json");
  REQUIRE_MESSAGE(policy.ok(), (policy.ok() ? "" : policy.error().describe()));
  return std::move(policy).value();
}

// The error detail of a document that must not parse.
std::string error_of(const json& document) {
  auto policy = Policy::parse(document, "test.json");
  REQUIRE_FALSE(policy.ok());
  CHECK(policy.error().code == common::Errc::config_error);
  return policy.error().detail;
}

// Whether a single deny rule with this match refuses the request (everything else is allowed).
bool rule_matches(const json& match, const PolicyRequest& r) {
  const Policy policy = parsed({{"rules", {{{"name", "r"}, {"match", match}, {"action", "deny"}}}}});
  const PolicyVerdict verdict = policy.evaluate(r);
  CHECK(verdict.rule == (verdict.allow ? "default" : "r"));
  return !verdict.allow;
}

TEST_CASE("the built-in policy allows everything with 60 s leases and no caps") {
  const Policy policy = Policy::builtin();
  CHECK(policy.source() == "built-in");
  CHECK(policy.rule_count() == 0);
  CHECK(policy.document().at("default_action") == "allow");
  for (const DeviceRecord& d : {printer(), hub(), boot_keyboard(), mfp()}) {
    const PolicyVerdict verdict = policy.evaluate(request(d));
    CHECK(verdict.allow);
    CHECK(verdict.rule == "default");
    CHECK(verdict.reason.empty());
    CHECK(verdict.lease_ms == 60000);
    CHECK(verdict.max_lease_ms == 0);
    CHECK_FALSE(verdict.max_leases_per_user.has_value());
  }
}

TEST_CASE("Policy rules are tried in order and the first matching rule decides") {
  const Policy policy =
      parsed({{"rules",
               {{{"name", "deny-storage"}, {"match", {{"function", "storage"}}}, {"action", "deny"}},
                {{"name", "allow-epson"}, {"match", {{"vid", "04b8"}}}, {"action", "allow"}},
                {{"name", "deny-all"}, {"match", json::object()}, {"action", "deny"}}}}});
  CHECK(policy.rule_count() == 3);
  const DeviceRecord multi = mfp();
  // The storage unit of an Epson device: the earlier deny wins over the later allow.
  CHECK(policy.evaluate(request(multi, 2)).rule == "deny-storage");
  CHECK_FALSE(policy.evaluate(request(multi, 2)).allow);
  // Its printer unit: the allow wins over the later catch-all deny.
  CHECK(policy.evaluate(request(multi, 0)).rule == "allow-epson");
  CHECK(policy.evaluate(request(multi, 0)).allow);
  // Not Epson: only the catch-all matches.
  const DeviceRecord reader = card_reader();
  CHECK(policy.evaluate(request(reader)).rule == "deny-all");
  CHECK_FALSE(policy.evaluate(request(reader)).allow);
}

TEST_CASE("Policy without a matching rule applies default_action, allow when it is absent") {
  const json rules = {{{"name", "deny-storage"}, {"match", {{"function", "storage"}}}, {"action", "deny"}}};
  const DeviceRecord d = printer();
  const PolicyVerdict allowed = parsed({{"rules", rules}}).evaluate(request(d));
  CHECK(allowed.allow);
  CHECK(allowed.rule == "default");
  CHECK(allowed.reason.empty());

  const PolicyVerdict also_allowed =
      parsed({{"rules", rules}, {"default_action", "allow"}}).evaluate(request(d));
  CHECK(also_allowed.allow);

  const PolicyVerdict denied = parsed({{"rules", rules}, {"default_action", "deny"}}).evaluate(request(d));
  CHECK_FALSE(denied.allow);
  CHECK(denied.rule == "default");
  CHECK(denied.reason == "no policy rule allows it (default_action is deny)");
}

TEST_CASE("Policy of an empty document is the built-in one") {
  const Policy policy = parsed(json::object());
  const DeviceRecord d = hub();
  const PolicyVerdict verdict = policy.evaluate(request(d));
  CHECK(verdict.allow);
  CHECK(verdict.lease_ms == 60000);
  CHECK(verdict.max_lease_ms == 0);
  CHECK_FALSE(verdict.max_leases_per_user.has_value());
}

TEST_CASE("Policy device and unit fields each match and fail to match on their own") {
  const DeviceRecord d = printer();
  const PolicyRequest r = request(d);
  struct Case {
    json match;
    bool matches;
  };
  const std::vector<Case> cases = {
      {json::object(), true},
      {{{"vid", "04b8"}}, true},
      {{{"vid", "04b9"}}, false},
      {{{"vid", {"04b9", "04b8"}}}, true},
      {{{"pid", "0005"}}, true},
      {{{"pid", "0006"}}, false},
      {{{"bcd_device", "0100"}}, true},
      {{{"bcd_device", "0200"}}, false},
      {{{"class", 0}}, true},
      {{{"class", 7}}, false},
      {{{"subclass", 0}}, true},
      {{{"subclass", 1}}, false},
      {{{"protocol", 0}}, true},
      {{{"protocol", 2}}, false},
      {{{"unit_class", 7}}, true},
      {{{"unit_class", 8}}, false},
      {{{"unit_class", {8, 7}}}, true},
      {{{"unit_subclass", 1}}, true},
      {{{"unit_subclass", 6}}, false},
      {{{"unit_protocol", 2}}, true},
      {{{"unit_protocol", 1}}, false},
      {{{"function", "printer"}}, true},
      {{{"function", "storage"}}, false},
      {{{"function", {"scanner", "printer"}}}, true},
      {{{"serial", "PRN0001"}}, true},
      {{{"serial", "PRN*"}}, true},
      {{{"serial", "MFP*"}}, false},
      {{{"manufacturer", "EPS?N"}}, true},
      {{{"manufacturer", "Canon*"}}, false},
      {{{"product", "*Printer"}}, true},
      {{{"product", "*Scanner"}}, false},
      {{{"dtu", "kiosk-1"}}, true},
      {{{"dtu", "kiosk-*"}}, true},
      {{{"dtu", "office-*"}}, false},
      {{{"usbredir", "0x07,-1,-1,-1,1"}}, true},
      {{{"usbredir", "0x07,-1,-1,-1,0|-1,-1,-1,-1,1"}}, false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.match.dump());
    CHECK(rule_matches(c.match, r) == c.matches);
  }
}

TEST_CASE("Policy string fields never match a device that does not report the string") {
  const DeviceRecord d = card_reader();  // no serial
  CHECK_FALSE(rule_matches({{"serial", "*"}}, request(d)));
  CHECK(rule_matches({{"manufacturer", "*"}}, request(d)));
}

TEST_CASE("Policy unit fields judge the unit asked for, not its siblings") {
  const DeviceRecord d = mfp();
  const json match = {{"function", "storage"}};
  CHECK_FALSE(rule_matches(match, request(d, 0)));
  CHECK_FALSE(rule_matches(match, request(d, 1)));
  CHECK(rule_matches(match, request(d, 2)));
  CHECK(rule_matches({{"unit_class", 0xff}}, request(d, 1)));
  CHECK_FALSE(rule_matches({{"unit_class", 0xff}}, request(d, 0)));
}

TEST_CASE("Policy session field matches the session at the DTU and never when none is attached") {
  const DeviceRecord d = printer();
  PolicyRequest r = request(d);
  CHECK_FALSE(rule_matches({{"session", "*"}}, r));
  r.session = "";
  CHECK_FALSE(rule_matches({{"session", "*"}}, r));
  r.session = "alice-42";
  CHECK(rule_matches({{"session", "*"}}, r));
  CHECK(rule_matches({{"session", "alice-42"}}, r));
  CHECK(rule_matches({{"session", "alice-*"}}, r));
  CHECK_FALSE(rule_matches({{"session", "bob-*"}}, r));
  CHECK(rule_matches({{"session", {"bob-*", "alice-*"}}}, r));
  // A rule without `session` ignores whether one is attached.
  CHECK(rule_matches({{"function", "printer"}}, r));
}

TEST_CASE("Policy uid field matches one uid or a list of them") {
  const DeviceRecord d = printer();
  const PolicyRequest r = request(d);
  CHECK(rule_matches({{"uid", 1000}}, r));
  CHECK_FALSE(rule_matches({{"uid", 0}}, r));
  CHECK(rule_matches({{"uid", {0, 1000}}}, r));
  CHECK_FALSE(rule_matches({{"uid", {0, 1001}}}, r));
}

TEST_CASE("Policy user field matches the user name by glob and never a uid without a name") {
  const DeviceRecord d = printer();
  PolicyRequest r = request(d);
  CHECK(rule_matches({{"user", "alice"}}, r));
  CHECK(rule_matches({{"user", "al*"}}, r));
  CHECK_FALSE(rule_matches({{"user", "bob"}}, r));
  CHECK(rule_matches({{"user", {"bob", "alice"}}}, r));
  r.user = "";
  CHECK_FALSE(rule_matches({{"user", "*"}}, r));
}

TEST_CASE("Policy group field matches when any of the uid's groups is named") {
  const DeviceRecord d = printer();
  PolicyRequest r = request(d);
  CHECK(rule_matches({{"group", "staff"}}, r));
  CHECK(rule_matches({{"group", "alice"}}, r));
  CHECK_FALSE(rule_matches({{"group", "lp"}}, r));
  CHECK(rule_matches({{"group", {"lp", "staff"}}}, r));
  CHECK_FALSE(rule_matches({{"group", {"lp", "wheel"}}}, r));
  CHECK(rule_matches({{"group", "sta*"}}, r));
  r.groups.clear();
  CHECK_FALSE(rule_matches({{"group", "*"}}, r));
}

TEST_CASE("Policy service field matches the self-declared service name by glob") {
  const DeviceRecord d = printer();
  PolicyRequest r = request(d);
  CHECK(rule_matches({{"service", "dtu-print"}}, r));
  CHECK(rule_matches({{"service", "dtu-print*"}}, r));
  CHECK_FALSE(rule_matches({{"service", "dtu-scan*"}}, r));
  CHECK(rule_matches({{"service", {"dtu-scan*", "dtu-pr?nt"}}}, r));
  r.service = "";
  CHECK_FALSE(rule_matches({{"service", "*"}}, r));
}

TEST_CASE("Policy globs never match a name holding a NUL, which fnmatch would cut short") {
  const DeviceRecord d = printer();
  PolicyRequest r = request(d);
  r.service = std::string("dtu-print\0x", 11);
  CHECK_FALSE(rule_matches({{"service", "dtu-print"}}, r));
  CHECK_FALSE(rule_matches({{"service", "dtu-print*"}}, r));
  r.service = "dtu-print";
  CHECK_FALSE(rule_matches({{"service", std::string("dtu-print\0", 10)}}, r));
}

TEST_CASE("Policy match fields combine with and") {
  const DeviceRecord d = printer();
  const PolicyRequest r = request(d);
  CHECK(rule_matches({{"function", "printer"}, {"group", "staff"}, {"dtu", "kiosk-*"}}, r));
  CHECK_FALSE(rule_matches({{"function", "printer"}, {"group", "lp"}, {"dtu", "kiosk-*"}}, r));
  CHECK_FALSE(rule_matches({{"function", "scanner"}, {"group", "staff"}, {"dtu", "kiosk-*"}}, r));
  CHECK_FALSE(rule_matches({{"function", "printer"}, {"group", "staff"}, {"dtu", "office-*"}}, r));
}

TEST_CASE("Policy verdicts carry the defaults' lease numbers, and a rule overrides each one") {
  const Policy policy = parsed({
      {"defaults", {{"lease_ms", 30000}, {"max_lease_ms", 600000}, {"max_leases_per_user", 8}}},
      {"rules",
       {{{"name", "printers"},
         {"match", {{"function", "printer"}}},
         {"action", "allow"},
         {"lease_ms", 120000}},
        {{"name", "scanners"},
         {"match", {{"function", "scanner"}}},
         {"action", "allow"},
         {"max_lease_ms", 0},
         {"max_leases_per_user", 0}},
        {{"name", "cards"},
         {"match", {{"function", "smartcard"}}},
         {"action", "allow"},
         {"max_leases_per_user", 2}},
        {{"name", "no-storage"}, {"match", {{"function", "storage"}}}, {"action", "deny"}}}},
  });
  const DeviceRecord p = printer();
  const PolicyVerdict printing = policy.evaluate(request(p));
  CHECK(printing.rule == "printers");
  CHECK(printing.lease_ms == 120000);
  CHECK(printing.max_lease_ms == 600000);
  CHECK(printing.max_leases_per_user == 8u);

  const DeviceRecord s = scanner();
  const PolicyVerdict scanning = policy.evaluate(request(s));
  CHECK(scanning.lease_ms == 30000);
  CHECK(scanning.max_lease_ms == 0);
  CHECK_FALSE(scanning.max_leases_per_user.has_value());

  const DeviceRecord c = card_reader();
  const PolicyVerdict cards = policy.evaluate(request(c));
  CHECK(cards.lease_ms == 30000);
  CHECK(cards.max_leases_per_user == 2u);

  // Allowed by default: still the defaults' numbers.
  const DeviceRecord k = boot_keyboard();
  const PolicyVerdict other = policy.evaluate(request(k));
  CHECK(other.allow);
  CHECK(other.rule == "default");
  CHECK(other.lease_ms == 30000);
  CHECK(other.max_lease_ms == 600000);
  CHECK(other.max_leases_per_user == 8u);
}

TEST_CASE("PolicyVerdict lease_length uses lease_ms for 0 and caps a longer request") {
  PolicyVerdict verdict;
  verdict.lease_ms = 60000;
  verdict.max_lease_ms = 0;
  CHECK(verdict.lease_length(0) == 60000);
  CHECK(verdict.lease_length(86400000) == 86400000);
  verdict.max_lease_ms = 3600000;
  CHECK(verdict.lease_length(0) == 60000);
  CHECK(verdict.lease_length(5000) == 5000);
  CHECK(verdict.lease_length(7200000) == 3600000);
}

TEST_CASE("Policy deny verdicts give a reason that names the rule") {
  const Policy policy =
      parsed({{"rules",
               {{{"name", "no-mass-storage"},
                 {"match", {{"function", "storage"}}},
                 {"action", "deny"},
                 {"reason", "USB storage is not shared on this site"}},
                {{"name", "no-hubs"}, {"match", {{"function", "hub"}}}, {"action", "deny"}}}}});
  const DeviceRecord m = mfp();
  const PolicyVerdict storage = policy.evaluate(request(m, 2));
  CHECK_FALSE(storage.allow);
  CHECK(storage.rule == "no-mass-storage");
  CHECK(storage.reason == "policy rule 'no-mass-storage': USB storage is not shared on this site");
  const DeviceRecord h = hub();
  const PolicyVerdict hubs = policy.evaluate(request(h));
  CHECK(hubs.rule == "no-hubs");
  CHECK(hubs.reason == "policy rule 'no-hubs' denies it");
}

TEST_CASE("Policy errors name the source, the rule by index and name, and the field") {
  struct Case {
    json rule;
    std::string expected;
  };
  const auto rule = [](json match, json extra = json::object()) {
    json r = {{"name", "r1"}, {"match", std::move(match)}, {"action", "allow"}};
    r.update(extra);
    return r;
  };
  const std::vector<Case> cases = {
      {rule({{"vid", "4b8"}}), "field 'match.vid': expected a 4-digit hex string"},
      {rule({{"class", 256}}), "field 'match.class'"},
      {rule({{"function", ""}}), "field 'match.function'"},
      {rule({{"serial", nullptr}}), "field 'match.serial'"},
      {rule({{"usbredir", "0x07,-1,-1"}}), "field 'match.usbredir'"},
      {rule({{"group", 5}}),
       "field 'match.group': expected a non-empty string (exact or glob) or a non-empty list "
       "of them, got 5"},
      {rule({{"group", json::array()}}), "field 'match.group'"},
      {rule({{"user", {"alice", 7}}}), "field 'match.user'"},
      {rule({{"service", ""}}), "field 'match.service'"},
      {rule({{"session", true}}), "field 'match.session'"},
      {rule({{"uid", -1}}), "field 'match.uid': expected a uid"},
      {rule({{"uid", "1000"}}), "field 'match.uid'"},
      {rule({{"uid", 4294967295}}), "field 'match.uid'"},
      {rule({{"scope", "session"}}), "field 'match.scope': a finder's scope has no meaning in a policy rule"},
      {rule({{"scope_dtu", "kiosk-1"}}), "field 'match.scope_dtu'"},
      {rule({{"fucntion", "printer"}}), "field 'match.fucntion': unknown field"},
      {rule(json::object(), {{"lease", 1000}}), "field 'lease': unknown field"},
      {rule(json::object(), {{"lease_ms", 99}}),
       "field 'lease_ms': expected an integer in [100, 86400000], got 99"},
      {rule(json::object(), {{"lease_ms", 86400001}}), "field 'lease_ms'"},
      {rule(json::object(), {{"lease_ms", 1500.5}}), "field 'lease_ms'"},
      {rule(json::object(), {{"max_lease_ms", 50}}),
       "field 'max_lease_ms': expected 0 (no cap) or an integer in [100, 86400000], got 50"},
      {rule(json::object(), {{"max_leases_per_user", -1}}),
       "field 'max_leases_per_user': expected 0 (no limit) or an integer in [1, 100000], got -1"},
      {rule(json::object(), {{"max_leases_per_user", 100001}}), "field 'max_leases_per_user'"},
      {rule(json::object(), {{"lease_ms", 7200000}, {"max_lease_ms", 3600000}}),
       "field 'lease_ms': the lease length 7200000 is above the cap max_lease_ms 3600000"},
      {rule(json::object(), {{"max_lease_ms", 30000}}),
       "field 'max_lease_ms': the lease length 60000 is above the cap max_lease_ms 30000 (set lease_ms too)"},
      {rule(json::object(), {{"action", "permit"}}),
       "field 'action': expected \"allow\" or \"deny\", got \"permit\""},
      {rule(json::object(), {{"reason", "why not"}}), "field 'reason': only on deny rules"},
      {rule(json::object(), {{"action", "deny"}, {"reason", ""}}),
       "field 'reason': expected a non-empty string"},
      {rule(json::object(), {{"action", "deny"}, {"lease_ms", 1000}}),
       "field 'lease_ms': only on allow rules"},
      {rule(json::object(), {{"action", "deny"}, {"max_leases_per_user", 3}}),
       "field 'max_leases_per_user': only on allow rules"},
      {rule(json::object(), {{"name", "default"}}), "rules[0] ('default'): field 'name'"},
      {rule(json::object(), {{"name", ""}}), "rules[0] (''): field 'name': expected a non-empty string"},
      {rule(json::object(), {{"match", {"printer"}}}), "field 'match': expected an object"},
      {{{"name", "r1"}, {"action", "allow"}}, "rules[0] ('r1'): field 'match': required"},
      {{{"name", "r1"}, {"match", json::object()}}, "rules[0] ('r1'): field 'action': required"},
      {{{"match", json::object()}, {"action", "allow"}}, "rules[0]: field 'name': required"},
      {{{"name", 5}, {"match", json::object()}, {"action", "allow"}}, "rules[0]: field 'name': expected"},
      {"printer", "rules[0]: expected a rule object, got \"printer\""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.rule.dump());
    const std::string detail = error_of({{"rules", {c.rule}}});
    CAPTURE(detail);
    CHECK(detail.starts_with("test.json: rules[0]"));
    CHECK(contains(detail, c.expected));
    if (c.rule.is_object() && c.rule.contains("name") && c.rule.at("name") == "r1") {
      CHECK(contains(detail, "rules[0] ('r1'): field '"));
    }
  }
}

TEST_CASE("Policy errors outside the rules name the source and the field") {
  struct Case {
    json document;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {json::array(), "test.json: expected a JSON object at the top level, got []"},
      {{{"rule", json::array()}}, "test.json: field 'rule': unknown field"},
      {{{"rules", json::object()}}, "test.json: field 'rules': expected a list of rules, got {}"},
      {{{"default_action", "permit"}}, "test.json: field 'default_action': expected \"allow\" or \"deny\""},
      {{{"default_action", true}}, "test.json: field 'default_action'"},
      {{{"defaults", 60000}}, "test.json: field 'defaults': expected an object, got 60000"},
      {{{"defaults", {{"lease", 60000}}}}, "test.json: field 'defaults.lease': unknown field"},
      {{{"defaults", {{"lease_ms", 10}}}},
       "test.json: field 'defaults.lease_ms': expected an integer in [100, "},
      {{{"defaults", {{"max_lease_ms", 86400001}}}}, "test.json: field 'defaults.max_lease_ms'"},
      {{{"defaults", {{"max_leases_per_user", "8"}}}}, "test.json: field 'defaults.max_leases_per_user'"},
      {{{"defaults", {{"lease_ms", 120000}, {"max_lease_ms", 60000}}}},
       "test.json: field 'defaults.lease_ms': the lease length 120000 is above the cap max_lease_ms 60000"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.document.dump());
    const std::string detail = error_of(c.document);
    CAPTURE(detail);
    CHECK(contains(detail, c.expected));
  }
}

TEST_CASE("Policy refuses two rules with the same name") {
  const std::string detail =
      error_of({{"rules",
                 {{{"name", "printers"}, {"match", json::object()}, {"action", "allow"}},
                  {{"name", "printers"}, {"match", {{"function", "printer"}}}, {"action", "deny"}}}}});
  CHECK(contains(detail,
                 "test.json: rules[1] ('printers'): field 'name': another rule is named 'printers' already"));
}

TEST_CASE("Policy reports every faulty rule at once") {
  const std::string detail =
      error_of({{"defaults", {{"lease_ms", 1}}},
                {"rules",
                 {{{"name", "a"}, {"match", {{"vid", 1}}}, {"action", "allow"}},
                  {{"name", "b"}, {"match", json::object()}, {"action", "allow"}},
                  {{"name", "c"}, {"match", {{"uid", "root"}}}, {"action", "allow"}}}}});
  CHECK(contains(detail, "test.json: field 'defaults.lease_ms'"));
  CHECK(contains(detail, "test.json: rules[0] ('a'): field 'match.vid'"));
  CHECK(contains(detail, "test.json: rules[2] ('c'): field 'match.uid'"));
  CHECK_FALSE(contains(detail, "rules[1]"));
}

TEST_CASE("Policy load reads a file and keeps its path and document") {
  const TempDir dir;
  const std::string path = dir.write("policy.json", R"({
  "rules": [ { "name": "no-storage", "match": { "function": "storage" }, "action": "deny" } ]
})");
  auto policy = Policy::load(path);
  REQUIRE_MESSAGE(policy.ok(), (policy.ok() ? "" : policy.error().describe()));
  CHECK(policy->source() == path);
  CHECK(policy->rule_count() == 1);
  CHECK(policy->document().at("rules").at(0).at("name") == "no-storage");
  const DeviceRecord m = mfp();
  CHECK_FALSE(policy->evaluate(request(m, 2)).allow);
}

TEST_CASE("Policy load of a broken file names the file, the line and the column") {
  const TempDir dir;
  // A missing comma after the first rule: the second '{' on line 4, column 5.
  const std::string path = dir.write("policy.json",
                                     "{\n"
                                     "  \"rules\": [\n"
                                     "    { \"name\": \"a\", \"match\": {}, \"action\": \"allow\" }\n"
                                     "    { \"name\": \"b\", \"match\": {}, \"action\": \"deny\" }\n"
                                     "  ]\n"
                                     "}\n");
  auto policy = Policy::load(path);
  REQUIRE_FALSE(policy.ok());
  CHECK(policy.error().code == common::Errc::config_error);
  CAPTURE(policy.error().detail);
  CHECK(policy.error().detail.starts_with(path + ":4:5: invalid JSON: "));
}

TEST_CASE("Policy load of a missing file says it cannot read it") {
  auto policy = Policy::load("/nonexistent/dtubroker/policy.json");
  REQUIRE_FALSE(policy.ok());
  CHECK(policy.error().code == common::Errc::config_error);
  CHECK(policy.error().detail ==
        "/nonexistent/dtubroker/policy.json: cannot read: No such file or directory");
}

TEST_CASE("Policy load of a file with a bad rule names the file and the rule") {
  const TempDir dir;
  const std::string path =
      dir.write("policy.json", R"({"rules": [{"name": "x", "match": {"scope": "dtu"}, "action": "allow"}]})");
  auto policy = Policy::load(path);
  REQUIRE_FALSE(policy.ok());
  CHECK(policy.error().detail.starts_with(path + ": rules[0] ('x'): field 'match.scope'"));
}

// The promises docs/policy.md makes about the shipped default.
TEST_CASE("the shipped default policy loads and gives the verdicts its documentation promises") {
  auto loaded = Policy::load(kShippedPolicy);
  REQUIRE_MESSAGE(loaded.ok(), (loaded.ok() ? "" : loaded.error().describe()));
  const Policy& policy = *loaded;
  CHECK(policy.source() == kShippedPolicy);
  CHECK(policy.rule_count() == 2);

  const auto check_allowed = [&policy](const DeviceRecord& d, std::size_t unit_index) {
    CAPTURE(d.device);
    CAPTURE(unit_index);
    const PolicyVerdict verdict = policy.evaluate(request(d, unit_index));
    CHECK(verdict.allow);
    CHECK(verdict.rule == "default");
    CHECK(verdict.lease_ms == 60000);
    CHECK(verdict.max_lease_ms == 3600000);
    CHECK(verdict.max_leases_per_user == 128u);
    CHECK(verdict.lease_length(0) == 60000);
    CHECK(verdict.lease_length(7200000) == 3600000);
  };
  const DeviceRecord p = printer();
  const DeviceRecord m = mfp();
  const DeviceRecord s = scanner();
  const DeviceRecord c = card_reader();
  const DeviceRecord h = plain_hid();
  check_allowed(p, 0);
  check_allowed(m, 0);
  check_allowed(m, 1);
  check_allowed(m, 2);  // USB storage is shared
  check_allowed(s, 0);
  check_allowed(c, 0);
  check_allowed(h, 0);  // barcode scanners, pedals: HID without the boot protocol

  const DeviceRecord hb = hub();
  const PolicyVerdict hubs = policy.evaluate(request(hb));
  CHECK_FALSE(hubs.allow);
  CHECK(hubs.rule == "hubs-carry-the-dtu-devices");
  CHECK(contains(hubs.reason, "policy rule 'hubs-carry-the-dtu-devices': "));

  for (const DeviceRecord& d : {boot_keyboard(), boot_mouse()}) {
    const PolicyVerdict verdict = policy.evaluate(request(d));
    CHECK_FALSE(verdict.allow);
    CHECK(verdict.rule == "boot-keyboards-and-mice-drive-the-desktop");
  }
}

}  // namespace
}  // namespace dtu::devmgr
