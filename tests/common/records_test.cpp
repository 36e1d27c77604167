#include "dtu/common/records.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "dtu/common/json_fields.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// What converting `j` to T throws, or "" when it does not throw.
template <typename T>
std::string error_of(const json& j) {
  try {
    (void)j.get<T>();
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

Stamp stamp(std::int64_t boot_epoch, std::uint64_t seq, std::int64_t time_us = 0) {
  Stamp s;
  s.boot_epoch = boot_epoch;
  s.seq = seq;
  s.time_us = time_us;
  return s;
}

UnitRecord allocated_unit() {
  UnitRecord u;
  u.unit = 1;
  u.interfaces = {1, 2};
  u.cls = 0x0e;
  u.subclass = 0x01;
  u.protocol = 0x00;
  u.function = "video";
  u.state = UnitState::allocated;
  u.holder = "svc-cam";
  u.lease = "lease-42";
  return u;
}

DeviceRecord full_device() {
  DeviceRecord d;
  d.dtu = "dtu-7";
  d.device = "1-1.4";
  d.bus = "usb";
  d.vid = 0x04b8;
  d.pid = 0x0e28;
  d.bcd_device = 0x0100;
  d.cls = 0xef;
  d.subclass = 0x02;
  d.protocol = 0x01;
  d.serial = "X4Z9";
  d.manufacturer = "EPSON";
  d.product = "ET-2750 \"Series\"";
  UnitRecord printer;
  printer.unit = 0;
  printer.interfaces = {0};
  printer.cls = 7;
  printer.subclass = 1;
  printer.protocol = 2;
  printer.function = "printer";
  d.units = {printer, allocated_unit()};
  d.stamp = stamp(1732185600000, 17, 1732185600123456);
  d.owner = "mgr-a";
  return d;
}

// The JSON of full_device(), for cases that break one field of it.
json device_json() {
  return json(full_device());
}

TEST_CASE("Stamp orders by boot epoch first, then by sequence number") {
  CHECK(stamp(1, 99) < stamp(2, 0));
  CHECK_FALSE(stamp(2, 0) < stamp(1, 99));
  CHECK(stamp(5, 1) < stamp(5, 2));
  CHECK_FALSE(stamp(5, 2) < stamp(5, 1));
  CHECK_FALSE(stamp(5, 2) < stamp(5, 2));
}

TEST_CASE("Stamp ordering and equality ignore the generation time") {
  CHECK(stamp(5, 1, 1000) == stamp(5, 1, 2000));
  CHECK_FALSE(stamp(5, 1, 2000) < stamp(5, 1, 1000));
  CHECK_FALSE(stamp(5, 1, 1000) < stamp(5, 1, 2000));
  // A later time does not make a lower sequence number newer.
  CHECK(stamp(5, 1, 9'000'000) < stamp(5, 2, 1));
  CHECK_FALSE(stamp(5, 1, 0) == stamp(5, 2, 0));
  CHECK_FALSE(stamp(4, 1, 0) == stamp(5, 1, 0));
}

TEST_CASE("Stamp round-trips through JSON, extreme values included") {
  const Stamp in = stamp(std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::uint64_t>::max(),
                         std::numeric_limits<std::int64_t>::min());
  const json j = in;
  CHECK(j.at("boot_epoch") == in.boot_epoch);
  const Stamp out = j.get<Stamp>();
  CHECK(out == in);
  CHECK(out.time_us == in.time_us);
}

TEST_CASE("Stamp from_json names a missing field") {
  CHECK(contains(error_of<Stamp>(json{{"boot_epoch", 1}, {"time_us", 2}}), "'seq'"));
  CHECK(contains(error_of<Stamp>(json{{"seq", 1}, {"time_us", 2}}), "'boot_epoch'"));
  CHECK(contains(error_of<Stamp>(json{{"boot_epoch", 1}, {"seq", 2}}), "'time_us'"));
}

TEST_CASE("UnitRecord round-trips through JSON, allocated and free") {
  const UnitRecord allocated = allocated_unit();
  CHECK(json(allocated).get<UnitRecord>() == allocated);

  UnitRecord free_unit;
  free_unit.unit = 3;
  free_unit.function = "storage";
  const json j = free_unit;
  CHECK(j.at("state") == "free");
  CHECK(j.at("holder").is_null());
  CHECK(j.at("lease").is_null());
  CHECK(j.get<UnitRecord>() == free_unit);
}

TEST_CASE("UnitState round-trips by name and rejects an unknown name") {
  for (UnitState s : {UnitState::free, UnitState::allocated, UnitState::unavailable}) {
    CHECK(json(s) == unit_state_name(s));
    CHECK(json(s).get<UnitState>() == s);
  }
  CHECK(std::string(unit_state_name(UnitState::unavailable)) == "unavailable");
  CHECK(contains(error_of<UnitState>(json("busy")), "busy"));
  CHECK_FALSE(error_of<UnitState>(json(2)).empty());
}

TEST_CASE("DeviceRecord round-trips through JSON with every field set") {
  const DeviceRecord in = full_device();
  CHECK(json(in).get<DeviceRecord>() == in);
}

TEST_CASE("DeviceRecord round-trips with absent optional strings and no units") {
  DeviceRecord in;
  in.dtu = "d";
  in.device = "1-2";
  const json j = in;
  CHECK(j.at("serial").is_null());
  CHECK(j.at("manufacturer").is_null());
  CHECK(j.at("product").is_null());
  const DeviceRecord out = j.get<DeviceRecord>();
  CHECK(out == in);
  CHECK_FALSE(out.serial.has_value());
}

TEST_CASE("DeviceRecord JSON writes ids as four hex digits and the class under 'class'") {
  const json j = device_json();
  CHECK(j.at("vid") == "04b8");
  CHECK(j.at("pid") == "0e28");
  CHECK(j.at("bcd_device") == "0100");
  CHECK(j.at("class") == 0xef);
  CHECK(j.at("units").at(1).at("class") == 0x0e);
  CHECK(j.at("stamp").at("seq") == 17);
}

TEST_CASE("DeviceRecord from_json defaults the optional fields it may miss") {
  json j = device_json();
  j.erase("bus");
  j.erase("owner");
  j.erase("serial");
  j.erase("manufacturer");
  j.erase("product");
  j["units"][0].erase("interfaces");
  j["units"][1].erase("holder");
  j["extra_field_from_a_newer_peer"] = 1;
  const DeviceRecord d = j.get<DeviceRecord>();
  CHECK(d.bus == "usb");
  CHECK(d.owner.empty());
  CHECK_FALSE(d.serial.has_value());
  CHECK(d.units[0].interfaces.empty());
  CHECK_FALSE(d.units[1].holder.has_value());
  CHECK(d.units[1].lease == "lease-42");
}

TEST_CASE("DeviceRecord from_json names each missing required field") {
  for (const char* key :
       {"dtu", "device", "vid", "pid", "bcd_device", "class", "subclass", "protocol", "units", "stamp"}) {
    const std::string name = key;
    CAPTURE(name);
    json j = device_json();
    j.erase(key);
    CHECK(contains(error_of<DeviceRecord>(j), std::string("'") + key + "'"));
  }
  for (const char* key : {"unit", "class", "function", "state"}) {
    const std::string name = key;
    CAPTURE(name);
    json j = device_json();
    j["units"][1].erase(key);
    CHECK(contains(error_of<DeviceRecord>(j), std::string("'") + key + "'"));
  }
}

TEST_CASE("DeviceRecord from_json names a field of the wrong JSON type") {
  const std::pair<const char*, json> cases[] = {
      {"dtu", json(5)},     {"device", json::array()}, {"vid", json(1208)},
      {"class", json("7")}, {"serial", json(true)},    {"units", json("none")},
      {"bus", json(1)},     {"owner", json::object()}, {"product", json(1.5)},
  };
  for (const auto& [key, value] : cases) {
    const std::string name = key;
    CAPTURE(name);
    json j = device_json();
    j[key] = value;
    const std::string error = error_of<DeviceRecord>(j);
    CHECK_FALSE(error.empty());
    CHECK_MESSAGE(contains(error, "'" + name + "'"), error);
  }
  const std::pair<const char*, json> unit_cases[] = {
      {"unit", json("one")}, {"function", json(3)},   {"state", json(1)},
      {"holder", json(7)},   {"interfaces", json(1)},
  };
  for (const auto& [key, value] : unit_cases) {
    const std::string name = key;
    CAPTURE(name);
    json j = device_json();
    j["units"][1][key] = value;
    const std::string error = error_of<DeviceRecord>(j);
    CHECK_FALSE(error.empty());
    CHECK_MESSAGE(contains(error, "'" + name + "'"), error);
  }
}

TEST_CASE("DeviceRecord from_json rejects a negative, fractional or out-of-range integer") {
  struct Case {
    const char* path;  // JSON pointer into device_json()
    json value;
    const char* field;
  };
  const Case cases[] = {
      {"/stamp/seq", json(-1), "seq"},
      {"/stamp/seq", json(true), "seq"},
      {"/stamp/boot_epoch", json(1e300), "boot_epoch"},
      {"/stamp/time_us", json(18446744073709551615u), "time_us"},
      {"/class", json(3.5), "class"},
      {"/class", json(-1e300), "class"},
      {"/units/0/unit", json(-1), "unit"},
      {"/units/0/unit", json(4294967296), "unit"},
      {"/units/0/subclass", json(1e300), "subclass"},
      {"/units/0/interfaces", json::array({300}), "interfaces"},
      {"/units/0/interfaces", json::array({-1}), "interfaces"},
      {"/units/0/interfaces", json::array({1.5}), "interfaces"},
      {"/units/0/interfaces", json::array({"1"}), "interfaces"},
  };
  for (const Case& c : cases) {
    const std::string path = c.path;
    const std::string value = c.value.dump();
    CAPTURE(path);
    CAPTURE(value);
    json j = device_json();
    j[json::json_pointer(path)] = c.value;
    const std::string error = error_of<DeviceRecord>(j);
    CHECK_MESSAGE(contains(error, std::string("'") + c.field + "'"), error);
  }
  json edge = device_json();
  edge["units"][0]["interfaces"] = json::array({0, 255});
  edge["units"][0]["unit"] = 4294967295u;
  edge["stamp"]["seq"] = 18446744073709551615u;
  const DeviceRecord d = edge.get<DeviceRecord>();
  CHECK(d.units[0].interfaces == std::vector<std::uint8_t>{0, 255});
  CHECK(d.units[0].unit == 4294967295u);
  CHECK(d.stamp.seq == 18446744073709551615u);
}

TEST_CASE("DeviceRecord from_json rejects a stamp or a unit that is not an object") {
  json j = device_json();
  j["stamp"] = "today";
  CHECK_FALSE(error_of<DeviceRecord>(j).empty());
  json k = device_json();
  k["units"] = json::array({"printer"});
  CHECK_FALSE(error_of<DeviceRecord>(k).empty());
}

TEST_CASE("DeviceRecord from_json rejects a hex id that is not four hex digits") {
  for (const char* bad : {"04b", "04b80", "", "04bg", "+4b8", " 4b8", "0x4b"}) {
    const std::string text = bad;
    CAPTURE(text);
    json j = device_json();
    j["vid"] = bad;
    const std::string error = error_of<DeviceRecord>(j);
    CHECK(contains(error, "field 'vid'"));
    CHECK(contains(error, "4 hex digits"));
  }
}

TEST_CASE("DeviceRecord from_json accepts upper-case hex digits") {
  json j = device_json();
  j["vid"] = "04B8";
  j["pid"] = "FFFF";
  const DeviceRecord d = j.get<DeviceRecord>();
  CHECK(d.vid == 0x04b8);
  CHECK(d.pid == 0xffff);
}

TEST_CASE("DeviceRecord from_json rejects a class outside 0..255") {
  for (int bad : {256, -1, 100000}) {
    CAPTURE(bad);
    json j = device_json();
    j["class"] = bad;
    CHECK(contains(error_of<DeviceRecord>(j), "field 'class': expected an integer in [0, 255]"));
    json k = device_json();
    k["units"][0]["protocol"] = bad;
    CHECK(contains(error_of<DeviceRecord>(k), "field 'protocol': expected an integer in [0, 255]"));
  }
  json edge = device_json();
  edge["class"] = 255;
  edge["subclass"] = 0;
  const DeviceRecord d = edge.get<DeviceRecord>();
  CHECK(d.cls == 255);
  CHECK(d.subclass == 0);
}

TEST_CASE("hex16 writes four lower-case digits and parse_hex16 reads them back") {
  CHECK(hex16(0) == "0000");
  CHECK(hex16(0x04b8) == "04b8");
  CHECK(hex16(0xabcd) == "abcd");
  CHECK(hex16(0xffff) == "ffff");
  for (std::uint32_t v = 0; v <= 0xffff; v += 0x0101) {
    const auto value = static_cast<std::uint16_t>(v);
    CHECK(parse_hex16(json{{"id", hex16(value)}}, "id") == value);
  }
}

TEST_CASE("an 8-bit field accepts 0 through 255 and names the key otherwise") {
  CHECK(field<std::uint8_t>(json{{"k", 0}}, "k") == 0);
  CHECK(field<std::uint8_t>(json{{"k", 255}}, "k") == 255);
  CHECK_THROWS_WITH_AS(field<std::uint8_t>(json{{"k", 256}}, "k"), "field 'k': expected an integer in [0, 255]",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(field<std::uint8_t>(json::object(), "k"), "missing field 'k'", std::invalid_argument);
}

TEST_CASE("is_valid_id accepts 1 to 64 characters of letters, digits, dot, underscore and dash") {
  CHECK(is_valid_id("a"));
  CHECK(is_valid_id("dtu-7"));
  CHECK(is_valid_id("Mgr_01.lab-B"));
  CHECK(is_valid_id(std::string(64, 'x')));
  CHECK(is_valid_id("0123456789"));
}

TEST_CASE("is_valid_id rejects empty, too long and every other character") {
  CHECK_FALSE(is_valid_id(""));
  CHECK_FALSE(is_valid_id(std::string(65, 'x')));
  for (std::string_view bad : {"dtu 7", "dtu/7", "dtu\\7", "dtu:7", "dtu\n", "dtu=7", "dtu\"7", "d\xc3\xbc",
                               "dtu@host", "a,b", "a*"}) {
    CAPTURE(bad);
    CHECK_FALSE(is_valid_id(bad));
  }
  CHECK_FALSE(is_valid_id(std::string_view("dtu\0x", 5)));
  CHECK_FALSE(is_valid_id("."));
  CHECK_FALSE(is_valid_id(".."));
  CHECK_FALSE(is_valid_id(".hidden"));
  CHECK_FALSE(is_valid_id("-flag"));
}

}  // namespace
}  // namespace dtu::common
