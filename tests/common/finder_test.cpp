#include "dtu/common/finder.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dtu::common {
namespace {

using nlohmann::json;
using Units = std::vector<std::uint32_t>;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

Finder parsed(const json& j) {
  auto f = parse_finder(j);
  REQUIRE_MESSAGE(f.ok(), (f.ok() ? std::string() : f.error().detail));
  return *f;
}

// The detail of parse_finder's error, or "" when it parses.
std::string finder_error(const json& j) {
  auto f = parse_finder(j);
  if (f.ok()) return {};
  CHECK(f.error().code == make_error_code(Errc::invalid_argument));
  return f.error().detail;
}

UsbredirFilter filter(std::string_view text) {
  auto f = parse_usbredir_filter(text);
  REQUIRE_MESSAGE(f.ok(), (f.ok() ? std::string() : f.error().detail));
  return *f;
}

std::string filter_error(std::string_view text) {
  auto f = parse_usbredir_filter(text);
  if (f.ok()) return {};
  CHECK(f.error().code == make_error_code(Errc::invalid_argument));
  return f.error().detail;
}

UnitRecord unit(std::uint32_t number, std::vector<std::uint8_t> interfaces, std::uint8_t cls,
                std::uint8_t subclass, std::uint8_t protocol, std::string function) {
  UnitRecord u;
  u.unit = number;
  u.interfaces = std::move(interfaces);
  u.cls = cls;
  u.subclass = subclass;
  u.protocol = protocol;
  u.function = std::move(function);
  return u;
}

// An Epson multi-function printer: printer, vendor-specific scanner and card-reader storage.
DeviceRecord epson_mfd() {
  DeviceRecord d;
  d.dtu = "dtu-07";
  d.device = "1-1.4";
  d.vid = 0x04b8;
  d.pid = 0x1129;
  d.bcd_device = 0x0100;
  d.serial = "X2XN012345";
  d.manufacturer = "EPSON";
  d.product = "ET-2750 Series";
  d.units = {unit(0, {0}, 0xff, 0xff, 0xff, "scanner"), unit(1, {1}, 0x07, 0x01, 0x02, "printer"),
             unit(2, {2}, 0x08, 0x06, 0x50, "storage")};
  return d;
}

DeviceRecord smartcard_reader() {
  DeviceRecord d;
  d.dtu = "dtu-12";
  d.device = "1-2";
  d.vid = 0x076b;
  d.pid = 0x3031;
  d.bcd_device = 0x0101;
  d.serial = std::nullopt;
  d.manufacturer = "OMNIKEY AG";
  d.product = "Smart Card Reader USB";
  d.units = {unit(0, {0}, 0x0b, 0x00, 0x00, "smartcard")};
  return d;
}

// A webcam (class 0xEF: interface associations): video association, audio association and the
// microphone's non-boot HID volume keys.
DeviceRecord webcam() {
  DeviceRecord d;
  d.dtu = "dtu-07";
  d.device = "1-1.2";
  d.vid = 0x046d;
  d.pid = 0x0825;
  d.bcd_device = 0x0012;
  d.cls = 0xef;
  d.subclass = 0x02;
  d.protocol = 0x01;
  d.serial = "4F2A1B3C";
  d.manufacturer = "Logitech";
  d.product = "C270 HD WEBCAM";
  d.units = {unit(0, {0, 1}, 0x0e, 0x03, 0x00, "video"), unit(2, {2, 3}, 0x01, 0x02, 0x00, "audio"),
             unit(4, {4}, 0x03, 0x00, 0x00, "hid")};
  return d;
}

// ---- parsing --------------------------------------------------------------------------------------

TEST_CASE("parse_finder reads every field, as one value or as a list") {
  const Finder f = parsed(json{{"vid", "04b8"},
                               {"pid", {"1129", "112A"}},
                               {"bcd_device", "0100"},
                               {"class", 0},
                               {"subclass", {0, 255}},
                               {"protocol", 1},
                               {"unit_class", {7, 8}},
                               {"unit_subclass", 1},
                               {"unit_protocol", {2}},
                               {"function", {"printer", "scanner"}},
                               {"serial", "X2XN*"},
                               {"manufacturer", "EPSON"},
                               {"product", "ET-[0-9]*"},
                               {"dtu", "dtu-0?"},
                               {"usbredir", "0x07,-1,-1,-1,1"}});
  CHECK(*f.vid == std::set<std::uint16_t>{0x04b8});
  CHECK(*f.pid == std::set<std::uint16_t>{0x1129, 0x112a});
  CHECK(*f.bcd_device == std::set<std::uint16_t>{0x0100});
  CHECK(*f.cls == std::set<std::uint8_t>{0});
  CHECK(*f.subclass == std::set<std::uint8_t>{0, 255});
  CHECK(*f.protocol == std::set<std::uint8_t>{1});
  CHECK(*f.unit_class == std::set<std::uint8_t>{7, 8});
  CHECK(*f.unit_subclass == std::set<std::uint8_t>{1});
  CHECK(*f.unit_protocol == std::set<std::uint8_t>{2});
  CHECK(*f.function == std::set<std::string>{"printer", "scanner"});
  CHECK(*f.serial == "X2XN*");
  CHECK(*f.manufacturer == "EPSON");
  CHECK(*f.product == "ET-[0-9]*");
  CHECK(*f.dtu == "dtu-0?");
  CHECK(f.scope == FinderScope::interconnect);
  CHECK_FALSE(f.scope_dtu);
  CHECK_FALSE(f.session);
  REQUIRE(f.usbredir);
  CHECK(f.usbredir->rules == std::vector<UsbredirRule>{{0x07, -1, -1, -1, true}});
}

TEST_CASE("parse_finder normalises a single value and a one-element list to the same finder") {
  CHECK(parsed(json{{"vid", "04b8"}}) == parsed(json{{"vid", {"04B8"}}}));
  CHECK(parsed(json{{"unit_class", {8, 7, 7}}}) == parsed(json{{"unit_class", {7, 8}}}));
  CHECK(parsed(json{{"function", "printer"}}) == parsed(json{{"function", {"printer"}}}));
}

TEST_CASE("the empty finder constrains nothing") {
  const Finder f = parsed(json::object());
  CHECK(f == Finder{});
  CHECK(json(f) == json::object());
}

TEST_CASE("a finder survives to_json and parse_finder unchanged") {
  const std::vector<json> finders = {
      json::object(),
      json{{"vid", "04b8"}, {"pid", {"1129", "112a"}}, {"function", "printer"}},
      json{{"class", {0, 239}}, {"unit_protocol", 2}, {"serial", "A\\*B"}, {"dtu", "dtu-*"}},
      json{{"scope", "dtu"}, {"scope_dtu", "dtu-07"}, {"manufacturer", "*"}, {"product", "C2?0*"}},
      json{{"scope", "session"}, {"session", "s-42"}, {"bcd_device", {"0100", "0200"}}},
      json{{"scope", "bus"}, {"usbredir", "7,0x04b8,-1,-1,1||-1,-1,-1,-1,0"}},
  };
  for (const json& j : finders) {
    CAPTURE(j.dump());
    const Finder f = parsed(j);
    CHECK(parsed(json(f)) == f);
    CHECK(j.get<Finder>() == f);
  }
  CHECK(json(parsed(json{{"usbredir", "7,1208,-1,-1,1"}}))["usbredir"] == "0x07,0x04b8,-1,-1,1");
  CHECK(json(parsed(json{{"pid", {"1129", "112a"}}}))["pid"] == json{"1129", "112a"});
  CHECK(json(parsed(json{{"pid", {"1129"}}}))["pid"] == "1129");
}

TEST_CASE("parse_finder reads the scopes and their arguments") {
  CHECK(parsed(json{{"scope", "interconnect"}}).scope == FinderScope::interconnect);
  const Finder dtu = parsed(json{{"scope", "dtu"}, {"scope_dtu", "dtu-07"}});
  CHECK(dtu.scope == FinderScope::dtu);
  CHECK(*dtu.scope_dtu == "dtu-07");
  const Finder session = parsed(json{{"scope", "session"}, {"session", "s-42"}});
  CHECK(session.scope == FinderScope::session);
  CHECK(*session.session == "s-42");
  CHECK(parsed(json{{"scope", "bus"}}).scope == FinderScope::bus);

  CHECK(contains(finder_error(json{{"scope", "dtu"}}),
                 "finder field 'scope_dtu': required with scope \"dtu\""));
  CHECK(contains(finder_error(json{{"scope", "session"}}), "finder field 'session': required"));
  CHECK(contains(finder_error(json{{"scope_dtu", "dtu-07"}}), "finder field 'scope_dtu': only allowed"));
  CHECK(contains(finder_error(json{{"scope", "bus"}, {"session", "s"}}),
                 "finder field 'session': only allowed"));
  CHECK(contains(finder_error(json{{"scope", "dtu"}, {"scope_dtu", "../etc"}}),
                 "finder field 'scope_dtu': expected a DTU id"));
  CHECK(contains(finder_error(json{{"scope", "planet"}}),
                 "finder field 'scope': expected one of \"interconnect\", \"dtu\", \"session\", \"bus\", "
                 "got \"planet\""));
}

TEST_CASE("every finder error names its field and what was expected") {
  struct Case {
    json finder;
    std::string_view expected;
  };
  const std::vector<Case> cases = {
      {json{{"vid", 12}},
       "finder field 'vid': expected a 4-digit hex string or a non-empty list of them, got 12"},
      {json{{"vid", "4b8"}}, "finder field 'vid': expected a 4-digit hex string"},
      {json{{"vid", {"04b8", "xyz1"}}},
       "finder field 'vid': expected a 4-digit hex string or a non-empty list "
       "of them, got \"xyz1\""},
      {json{{"pid", json::array()}},
       "finder field 'pid': expected a 4-digit hex string or a non-empty list of "
       "them, got []"},
      {json{{"bcd_device", "01000"}}, "finder field 'bcd_device': expected a 4-digit hex string"},
      {json{{"class", 256}},
       "finder field 'class': expected an integer in [0, 255] or a non-empty list of "
       "them, got 256"},
      {json{{"subclass", -1}}, "finder field 'subclass': expected an integer in [0, 255]"},
      {json{{"protocol", 1.5}}, "finder field 'protocol': expected an integer in [0, 255]"},
      {json{{"unit_class", "7"}}, "finder field 'unit_class': expected an integer in [0, 255]"},
      {json{{"unit_subclass", {1, true}}},
       "finder field 'unit_subclass': expected an integer in [0, 255] or a "
       "non-empty list of them, got true"},
      {json{{"unit_protocol", json::object()}}, "finder field 'unit_protocol': expected an integer"},
      {json{{"function", ""}}, "finder field 'function': expected a non-empty string or a non-empty list"},
      {json{{"function", {"printer", 3}}}, "finder field 'function': expected a non-empty string"},
      {json{{"serial", 12345}},
       "finder field 'serial': expected a non-empty string (exact or glob), got 12345"},
      {json{{"manufacturer", ""}}, "finder field 'manufacturer': expected a non-empty string"},
      {json{{"product", {"a"}}}, "finder field 'product': expected a non-empty string"},
      {json{{"dtu", false}}, "finder field 'dtu': expected a non-empty string"},
      {json{{"scope", 1}}, "finder field 'scope': expected one of"},
      {json{{"scope", "dtu"}, {"scope_dtu", 7}}, "finder field 'scope_dtu': expected a DTU id"},
      {json{{"scope", "session"}, {"session", ""}},
       "finder field 'session': expected a non-empty session id"},
      {json{{"usbredir", 7}}, "finder field 'usbredir': expected a usbredir filter string, got 7"},
      {json{{"usbredir", "7,-1,-1,-1"}}, "finder field 'usbredir': usbredir filter rule 0"},
      {json{{"vendor", "04b8"}}, "finder field 'vendor': unknown field"},
      {json{{"any", true}}, "finder field 'any': unknown field"},
      {json{{"serial", nullptr}}, "finder field 'serial': expected a value, got null"},
      {json::array(), "finder: expected a JSON object, got []"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.finder.dump());
    const std::string error = finder_error(c.finder);
    CAPTURE(error);
    CHECK(contains(error, c.expected));
  }
}

TEST_CASE("from_json of a bad finder throws parse_finder's detail") {
  CHECK_THROWS_WITH_AS(json({{"vid", 12}}).get<Finder>(), doctest::Contains("finder field 'vid'"),
                       std::invalid_argument);
}

// ---- usbredir filter strings ----------------------------------------------------------------------

TEST_CASE("parse_usbredir_filter reads usbredir's syntax") {
  CHECK(filter("").rules.empty());
  CHECK(filter("|||").rules.empty());
  CHECK(filter("0x03,-1,-1,-1,0|-1,-1,-1,-1,1").rules ==
        std::vector<UsbredirRule>{{0x03, -1, -1, -1, false}, {-1, -1, -1, -1, true}});
  // Decimal, 0x hex (either case), leading-0 octal and signs, as strtol(…, 0) reads them.
  CHECK(filter("7,0X04B8,4393,010,+1").rules == std::vector<UsbredirRule>{{7, 0x04b8, 4393, 8, true}});
  CHECK(filter("-0,0xffff,0,0x0,0").rules == std::vector<UsbredirRule>{{0, 0xffff, 0, 0, false}});
  // Empty rules are skipped.
  CHECK(filter("|7,-1,-1,-1,1||8,-1,-1,-1,0|").rules ==
        std::vector<UsbredirRule>{{7, -1, -1, -1, true}, {8, -1, -1, -1, false}});
}

TEST_CASE("parse_usbredir_filter errors name the rule and the token") {
  struct Case {
    std::string_view text;
    std::string_view expected;
  };
  const std::vector<Case> cases = {
      {"7,-1,-1,-1", "rule 0 ('7,-1,-1,-1'): expected 5 tokens class,vendor,product,version,allow, got 4"},
      {"7,-1,-1,-1,1,9", "rule 0 ('7,-1,-1,-1,1,9'): unexpected token '9' after allow"},
      {"7,-1,-1,-1,1|8,x04b8,-1,-1,1", "rule 1 ('8,x04b8,-1,-1,1'): token vendor 'x04b8' is not a number"},
      {"||7,-1,-1,-1,1||8,-1,-1,-1,1|9,-1,-1,zz,1",
       "rule 2 ('9,-1,-1,zz,1'): token version 'zz' is not a number"},
      {"0x100,-1,-1,-1,1", "rule 0 ('0x100,-1,-1,-1,1'): token class '0x100' is out of range [-1, 255]"},
      {"-2,-1,-1,-1,1", "token class '-2' is out of range [-1, 255]"},
      {"7,0x10000,-1,-1,1", "token vendor '0x10000' is out of range [-1, 65535]"},
      {"7,-1,65536,-1,1", "token product '65536' is out of range [-1, 65535]"},
      {"7,-1,-1,99999999999999999999,1", "token version '99999999999999999999' is out of range"},
      {"7,-1,-1,-1,2", "token allow '2' is out of range [0, 1]"},
      {"7,-1,-1,-1,-1", "token allow '-1' is out of range [0, 1]"},
      {"7,,-1,-1,-1,1", "rule 0 ('7,,-1,-1,-1,1'): token vendor is empty"},
      {"7,-1,-1,-1,", "token allow is empty"},
      {"7, -1,-1,-1,1", "token vendor ' -1' is not a number"},
      {"08,-1,-1,-1,1", "token class '08' is not a number"},
      {"0x,-1,-1,-1,1", "token class '0x' is not a number"},
      {"1.5,-1,-1,-1,1", "token class '1.5' is not a number"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    const std::string error = filter_error(c.text);
    CAPTURE(error);
    CHECK(contains(error, "usbredir filter rule "));
    CHECK(contains(error, c.expected));
  }
}

TEST_CASE("a usbredir filter's canonical string parses back to the same filter") {
  const UsbredirFilter f = filter("7,1208,-1,0x0100,1|-1,-1,-1,-1,0|255,65535,65535,65535,1");
  CHECK(to_string(f) == "0x07,0x04b8,-1,0x0100,1|-1,-1,-1,-1,0|0xff,0xffff,0xffff,0xffff,1");
  CHECK(filter(to_string(f)) == f);
  CHECK(to_string(UsbredirFilter{}).empty());
}

// ---- usbredir semantics ---------------------------------------------------------------------------

TEST_CASE("usbredir_allows follows usbredir's passes") {
  using Ifs = std::vector<InterfaceClass>;
  struct Case {
    std::string_view name;
    std::string_view rules;
    std::uint8_t device_class;
    Ifs interfaces;
    bool allowed;
  };
  const Ifs printer = {{0x07, 0x01, 0x02}};
  const Ifs mfd = {{0xff, 0xff, 0xff}, {0x07, 0x01, 0x02}, {0x08, 0x06, 0x50}};
  const std::vector<Case> cases = {
      {"device pass allows, interface pass allows", "0x07,-1,-1,-1,1", 0x07, printer, true},
      {"device pass denies before the interfaces", "0x07,-1,-1,-1,0|-1,-1,-1,-1,1", 0x07, printer, false},
      {"device pass that no rule matches denies", "0x07,-1,-1,-1,1", 0x09, printer, false},
      {"class 0x00 skips the device pass", "0x07,-1,-1,-1,1", 0x00, printer, true},
      {"class 0xEF skips the device pass", "0x07,-1,-1,-1,1", 0xef, printer, true},
      {"a vendor-class device is checked on its class", "0x07,-1,-1,-1,1", 0xff, printer, false},
      {"every interface needs an allowing rule", "0x07,-1,-1,-1,1|0x08,-1,-1,-1,1", 0x00, mfd, false},
      {"all interfaces allowed", "0x07,-1,-1,-1,1|0x08,-1,-1,-1,1|0xff,-1,-1,-1,1", 0x00, mfd, true},
      {"a deny of one interface denies the device", "0x08,-1,-1,-1,0|-1,-1,-1,-1,1", 0x00, mfd, false},
      {"first match wins: allow before deny", "-1,-1,-1,-1,1|0x08,-1,-1,-1,0", 0x00, mfd, true},
      {"first match wins: deny before allow", "0x08,-1,-1,-1,0|-1,-1,-1,-1,1", 0x00, mfd, false},
      {"vendor wildcard and match", "-1,0x04b8,-1,-1,1", 0x00, mfd, true},
      {"vendor mismatch leaves no rule: default deny", "-1,0x04b9,-1,-1,1", 0x00, mfd, false},
      {"product and version must match too", "-1,0x04b8,0x1129,0x0100,1", 0x00, mfd, true},
      {"version mismatch", "-1,0x04b8,0x1129,0x0101,1", 0x00, mfd, false},
      {"no rules deny a device with interfaces", "", 0x00, printer, false},
      {"no rules allow a class-0 device without interfaces", "", 0x00, {}, true},
      {"non-boot HID beside other interfaces is skipped",
       "0x01,-1,-1,-1,1",
       0x00,
       {{0x01, 0x01, 0x00}, {0x03, 0x00, 0x00}},
       true},
      {"boot HID is not skipped", "0x01,-1,-1,-1,1", 0x00, {{0x01, 0x01, 0x00}, {0x03, 0x01, 0x01}}, false},
      {"a lone non-boot HID interface is checked",
       "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
       0x00,
       {{0x03, 0x00, 0x00}},
       false},
      {"all-non-boot-HID interfaces are checked after all",
       "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
       0x00,
       {{0x03, 0x00, 0x00}, {0x03, 0x00, 0x00}},
       false},
      {"a skipped non-boot HID cannot deny",
       "0x03,-1,-1,-1,0|-1,-1,-1,-1,1",
       0x00,
       {{0x01, 0x01, 0x00}, {0x03, 0x00, 0x00}},
       true},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    CHECK(usbredir_allows(filter(c.rules), c.device_class, 0x04b8, 0x1129, 0x0100, c.interfaces) ==
          c.allowed);
  }
}

TEST_CASE("usbredir_allows on a record uses one class triple per unit") {
  // The webcam's video association unit contributes 0x0e, its audio one 0x01; the HID unit is
  // non-boot HID beside others, hence skipped; the device class 0xEF skips the device pass.
  CHECK(usbredir_allows(filter("0x0e,-1,-1,-1,1|0x01,-1,-1,-1,1"), webcam()));
  CHECK_FALSE(usbredir_allows(filter("0x0e,-1,-1,-1,1"), webcam()));
  CHECK_FALSE(usbredir_allows(filter("0x01,-1,-1,-1,0|-1,-1,-1,-1,1"), webcam()));
  CHECK(usbredir_allows(filter("0x0b,0x076b,-1,-1,1"), smartcard_reader()));
  CHECK_FALSE(usbredir_allows(filter("0x0b,0x076c,-1,-1,1"), smartcard_reader()));
}

// ---- matching -------------------------------------------------------------------------------------

TEST_CASE("finders pick units of an Epson multi-function device") {
  const DeviceRecord d = epson_mfd();
  CHECK(matching_units(parsed(json::object()), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"vid", "04b8"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"vid", "04b8"}, {"function", "printer"}}), d) == Units{1});
  CHECK(matching_units(parsed(json{{"function", {"scanner", "printer"}}}), d) == Units{0, 1});
  CHECK(matching_units(parsed(json{{"unit_class", 8}, {"unit_subclass", 6}, {"unit_protocol", 0x50}}), d) ==
        Units{2});
  CHECK(matching_units(parsed(json{{"unit_class", 8}, {"unit_protocol", 0x62}}), d).empty());
  CHECK(matching_units(parsed(json{{"class", 0}, {"pid", {"1128", "1129"}}, {"bcd_device", "0100"}}), d) ==
        Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"class", 0xff}}), d).empty());
  CHECK(matching_units(parsed(json{{"vid", "04b9"}}), d).empty());
  CHECK(matching_units(parsed(json{{"manufacturer", "EPSON"}, {"product", "ET-2750*"}}), d) ==
        Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"manufacturer", "epson"}}), d).empty());  // case-sensitive
  CHECK(matching_units(parsed(json{{"product", "ET-[0-9][0-9][0-9][0-9] Series"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"serial", "X2XN012345"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"serial", "X2XN01234"}}), d).empty());  // exact, not a prefix
  CHECK(matching_units(parsed(json{{"serial", "X2XN??????"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"dtu", "dtu-0*"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"dtu", "dtu-1*"}}), d).empty());
  CHECK(matching_units(parsed(json{{"scope", "dtu"}, {"scope_dtu", "dtu-07"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"scope", "dtu"}, {"scope_dtu", "dtu-08"}}), d).empty());
  // Session and bus scopes are the caller's to apply.
  CHECK(matching_units(parsed(json{{"scope", "session"}, {"session", "s-1"}}), d) == Units{0, 1, 2});
  CHECK(matching_units(parsed(json{{"scope", "bus"}}), d) == Units{0, 1, 2});
  // The usbredir filter judges the whole device, then unit fields pick units.
  CHECK(matching_units(parsed(json{{"usbredir", "0x07,-1,-1,-1,1|0x08,-1,-1,-1,1|0xff,0x04b8,-1,-1,1"},
                                   {"function", "printer"}}),
                       d) == Units{1});
  CHECK(
      matching_units(parsed(json{{"usbredir", "0x08,-1,-1,-1,0|-1,-1,-1,-1,1"}, {"function", "printer"}}), d)
          .empty());

  CHECK(matches(parsed(json{{"function", "storage"}}), d, d.units[2]));
  CHECK_FALSE(matches(parsed(json{{"function", "storage"}}), d, d.units[1]));
}

TEST_CASE("finders and a smart-card reader without a serial") {
  const DeviceRecord d = smartcard_reader();
  CHECK(matching_units(parsed(json{{"unit_class", 0x0b}}), d) == Units{0});
  CHECK(matching_units(parsed(json{{"function", "smartcard"}, {"manufacturer", "OMNIKEY*"}}), d) == Units{0});
  // A device without a serial never matches a finder that constrains the serial, even "*".
  CHECK(matching_units(parsed(json{{"serial", "*"}}), d).empty());
  CHECK(matching_units(parsed(json{{"vid", "076b"}, {"pid", "3031"}}), d) == Units{0});
}

TEST_CASE("a pattern or a device string with a NUL matches nothing, in the index as in matches") {
  using namespace std::string_literals;
  DeviceRecord d = epson_mfd();
  d.serial = "X2XN\0garbage"s;  // a string descriptor may hold U+0000
  const Finder exact = parsed(json{{"serial", "X2XN"}});
  const Finder glob = parsed(json{{"serial", "X2XN*"}});
  const Finder with_nul = parsed(json{{"serial", "X2XN\0garbage"s}});
  CHECK(matching_units(exact, d).empty());
  CHECK(matching_units(glob, d).empty());
  CHECK(matching_units(with_nul, d).empty());
  CHECK(matching_units(with_nul, epson_mfd()).empty());
  FinderIndex index;
  index.add(1, exact);
  index.add(2, with_nul);
  CHECK(index.match(d).empty());
}

TEST_CASE("finders and a webcam with interface-association units") {
  const DeviceRecord d = webcam();
  CHECK(matching_units(parsed(json{{"function", "video"}}), d) == Units{0});
  CHECK(matching_units(parsed(json{{"unit_class", {0x01, 0x0e}}}), d) == Units{0, 2});
  CHECK(matching_units(parsed(json{{"class", 0xef}, {"subclass", 2}, {"protocol", 1}}), d) == Units{0, 2, 4});
  CHECK(matching_units(parsed(json{{"class", 0xef}, {"unit_class", 3}}), d) == Units{4});
  CHECK(matching_units(parsed(json{{"usbredir", "0x0e,-1,-1,-1,1|0x01,-1,-1,-1,1"}, {"function", "audio"}}),
                       d) == Units{2});
}

// ---- the index --------------------------------------------------------------------------------------

TEST_CASE("FinderIndex narrows to candidates and forgets removed finders") {
  FinderIndex index;
  index.add(1, parsed(json{{"vid", "04b8"}, {"pid", "1129"}}));
  index.add(2, parsed(json{{"vid", "076b"}}));
  index.add(3, parsed(json{{"unit_class", 0x0e}}));
  index.add(4, parsed(json{{"function", "printer"}}));
  index.add(5, parsed(json{{"serial", "X2XN*"}}));  // by its literal prefix "X2XN"
  index.add(6, parsed(json{{"vid", "04b8"}, {"pid", "9999"}}));
  CHECK(index.size() == 6);

  CHECK(index.candidates(epson_mfd()) == std::vector<FinderId>{1, 4, 5});
  CHECK(index.candidates(smartcard_reader()) == std::vector<FinderId>{2});
  CHECK(index.candidates(webcam()) == std::vector<FinderId>{3});
  CHECK(index.match(epson_mfd()) == std::map<FinderId, Units>{{1, {0, 1, 2}}, {4, {1}}, {5, {0, 1, 2}}});
  CHECK(index.match(webcam()) == std::map<FinderId, Units>{{3, {0}}});

  CHECK(index.remove(4));
  CHECK_FALSE(index.remove(4));
  CHECK(index.find(4) == nullptr);
  CHECK(index.candidates(epson_mfd()) == std::vector<FinderId>{1, 5});

  // Adding under an existing id replaces the finder and its buckets.
  index.add(1, parsed(json{{"function", "video"}}));
  CHECK(index.size() == 5);
  CHECK(index.candidates(epson_mfd()) == std::vector<FinderId>{5});
  CHECK(index.match(webcam()) == std::map<FinderId, Units>{{1, {0}}, {3, {0}}});
  REQUIRE(index.find(1) != nullptr);
  CHECK(*index.find(1) == parsed(json{{"function", "video"}}));
}

TEST_CASE("FinderIndex files finders by serial, by DTU and by the literal prefix of their globs") {
  FinderIndex index;
  index.add(1, parsed(json{{"serial", "X2XN012345"}, {"function", "printer"}}));  // exact serial
  index.add(2, parsed(json{{"scope", "dtu"}, {"scope_dtu", "dtu-12"}}));          // exact DTU
  index.add(3, parsed(json{{"dtu", "dtu-07"}, {"vid", "04b8"}}));                  // exact DTU
  index.add(4, parsed(json{{"dtu", "dtu-0*"}}));                                   // prefix "dtu-0"
  index.add(5, parsed(json{{"serial", "4F2A?1*"}}));                               // prefix "4F2A"
  index.add(6, parsed(json{{"serial", "*2345"}}));                                 // no prefix
  index.add(7, parsed(json{{"dtu", "\\dtu-07"}}));  // an escape: no literal prefix, unindexed
  index.add(8, parsed(json{{"serial", "[X]2XN*"}}));                               // no prefix
  index.add(9, parsed(json{{"dtu", "dtu-1"}, {"scope", "dtu"}, {"scope_dtu", "dtu-12"}}));

  CHECK(index.candidates(epson_mfd()) == std::vector<FinderId>{1, 3, 4, 6, 7, 8});
  CHECK(index.candidates(smartcard_reader()) == std::vector<FinderId>{2, 6, 7, 8, 9});
  CHECK(index.candidates(webcam()) == std::vector<FinderId>{3, 4, 5, 6, 7, 8});
  // Candidates are only a superset: the matches are the finders' own verdicts.
  CHECK(index.match(epson_mfd()).size() == 6);
  CHECK(index.match(epson_mfd()).at(1) == Units{1});  // its printer unit
  CHECK(index.match(smartcard_reader()) == std::map<FinderId, Units>{{2, {0}}});
  CHECK(index.match(webcam()).contains(4));
  CHECK_FALSE(index.match(webcam()).contains(5));  // "4F2A1B3C": no '?' then '1'

  CHECK(index.remove(4));
  CHECK(index.remove(5));
  CHECK(index.candidates(webcam()) == std::vector<FinderId>{3, 6, 7, 8});
  index.add(4, parsed(json{{"dtu", "dtu-07*"}}));  // a new prefix length
  CHECK(index.candidates(webcam()) == std::vector<FinderId>{3, 4, 6, 7, 8});
}

// Random values from small pools, so that random finders and devices often meet.
struct Generator {
  std::mt19937_64 rng{20240611};

  std::size_t below(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); }
  bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }
  template <typename T>
  T pick(const std::vector<T>& pool) {
    return pool[below(pool.size())];
  }
  template <typename T>
  std::set<T> some(const std::vector<T>& pool) {
    std::set<T> out;
    const std::size_t n = 1 + below(3);
    for (std::size_t i = 0; i < n; ++i) out.insert(pick(pool));
    return out;
  }

  const std::vector<std::uint16_t> vids{0x04b8, 0x046d, 0x076b, 0x1234};
  const std::vector<std::uint16_t> pids{0x0001, 0x0002, 0x1129, 0x3031};
  const std::vector<std::uint16_t> bcds{0x0100, 0x0200};
  const std::vector<std::uint8_t> classes{0x00, 0x01, 0x03, 0x07, 0x08, 0x0b, 0x0e, 0xef, 0xff};
  const std::vector<std::uint8_t> small{0x00, 0x01, 0x02};
  const std::vector<std::string> functions{"printer", "scanner", "storage", "video", "audio", "hid"};
  const std::vector<std::string> dtus{"dtu-1", "dtu-2", "dtu-10"};
  const std::vector<std::string> serials{"A1", "A2", "B1"};
  const std::vector<std::string> serial_globs{"A1", "A*", "?1", "[AB]2", "*", "B1", "A1*", "A\\1", "B"};
  const std::vector<std::string> products{"Printer X", "Cam", "Reader"};
  const std::vector<std::string> product_globs{"Printer*", "C?m", "*er*", "Reader"};

  DeviceRecord device() {
    DeviceRecord d;
    d.dtu = pick(dtus);
    d.device = "1-" + std::to_string(below(8));
    d.vid = pick(vids);
    d.pid = pick(pids);
    d.bcd_device = pick(bcds);
    d.cls = pick(classes);
    d.subclass = pick(small);
    d.protocol = pick(small);
    if (chance(80)) d.serial = pick(serials);
    if (chance(80)) d.manufacturer = pick(products);
    if (chance(80)) d.product = pick(products);
    const std::size_t units = below(4);
    for (std::size_t i = 0; i < units; ++i) {
      d.units.push_back(unit(static_cast<std::uint32_t>(i), {static_cast<std::uint8_t>(i)}, pick(classes),
                             pick(small), pick(small), pick(functions)));
    }
    return d;
  }

  UsbredirFilter usbredir() {
    UsbredirFilter f;
    const std::size_t rules = below(4);
    for (std::size_t i = 0; i < rules; ++i) {
      UsbredirRule r;
      r.device_class = chance(50) ? -1 : pick(classes);
      r.vendor_id = chance(60) ? -1 : pick(vids);
      r.product_id = chance(80) ? -1 : pick(pids);
      r.device_version_bcd = chance(80) ? -1 : pick(bcds);
      r.allow = chance(70);
      f.rules.push_back(r);
    }
    return f;
  }

  Finder finder() {
    Finder f;
    if (chance(40)) f.vid = some(vids);
    if (chance(30)) f.pid = some(pids);
    if (chance(10)) f.bcd_device = some(bcds);
    if (chance(10)) f.cls = some(classes);
    if (chance(10)) f.subclass = some(small);
    if (chance(10)) f.protocol = some(small);
    if (chance(30)) f.unit_class = some(classes);
    if (chance(10)) f.unit_subclass = some(small);
    if (chance(10)) f.unit_protocol = some(small);
    if (chance(30)) f.function = some(functions);
    if (chance(20)) f.serial = pick(serial_globs);
    if (chance(10)) f.manufacturer = pick(product_globs);
    if (chance(10)) f.product = pick(product_globs);
    if (chance(15)) f.dtu = pick(std::vector<std::string>{"dtu-1", "dtu-?", "dtu-1*", "dtu-10", "dtu-", "d*", "dtu-2"});
    if (chance(10)) {
      f.scope = FinderScope::dtu;
      f.scope_dtu = pick(dtus);
    }
    if (chance(10)) f.usbredir = usbredir();
    return f;
  }
};

TEST_CASE("FinderIndex::match equals a scan of every finder with matches") {
  Generator gen;
  FinderIndex index;
  std::map<FinderId, Finder> all;
  constexpr int kFinders = 400;
  constexpr int kDevices = 400;
  for (FinderId id = 1; id <= kFinders; ++id) {
    Finder f = gen.finder();
    REQUIRE(parsed(json(f)) == f);  // random finders are valid finders
    all.emplace(id, f);
    index.add(id, std::move(f));
  }
  // Remove and re-add a few, so the buckets are exercised under change.
  for (FinderId id = 1; id <= kFinders; id += 7) {
    CHECK(index.remove(id));
    if (id % 2 == 0) {
      all.erase(id);
    } else {
      index.add(id, all.at(id));
    }
  }

  std::size_t total_matches = 0;
  std::size_t total_candidates = 0;
  for (int i = 0; i < kDevices; ++i) {
    const DeviceRecord d = gen.device();
    std::map<FinderId, Units> expected;
    for (const auto& [id, f] : all) {
      Units units;
      for (const UnitRecord& u : d.units) {
        if (matches(f, d, u)) units.push_back(u.unit);
      }
      CHECK(units == matching_units(f, d));
      if (!units.empty()) expected.emplace(id, std::move(units));
    }
    CAPTURE(json(d).dump());
    CHECK(index.match(d) == expected);
    total_matches += expected.size();
    total_candidates += index.candidates(d).size();
  }
  // The property means something only if matches happen, and the index only if it prunes.
  CHECK(total_matches > static_cast<std::size_t>(kDevices));
  CHECK(total_candidates < all.size() * static_cast<std::size_t>(kDevices) * 3 / 4);
  MESSAGE("matches " << total_matches << ", candidates " << total_candidates);
}

}  // namespace
}  // namespace dtu::common
