#include "dtu/common/records.hpp"

#include <algorithm>
#include <cstdio>
#include <type_traits>
#include <utility>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/json_text.hpp"

namespace dtu::common {

using nlohmann::json;

std::optional<std::uint16_t> parse_hex16(std::string_view text) {
  if (text.size() != 4) return std::nullopt;
  std::uint16_t value = 0;
  for (char c : text) {
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else
      return std::nullopt;
    value = static_cast<std::uint16_t>((value << 4) | digit);
  }
  return value;
}

std::uint16_t parse_hex16(const json& j, const char* key) {
  const auto value = parse_hex16(field<std::string>(j, key));
  if (!value) throw std::invalid_argument(std::string("field '") + key + "': expected 4 hex digits");
  return *value;
}

std::string hex16(std::uint16_t value) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04x", static_cast<unsigned>(value));
  return buf;
}

bool is_valid_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  // Not "." or "..", nor anything that reads as a hidden file or a command-line flag.
  if (id.front() == '.' || id.front() == '-') return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

const char* unit_state_name(UnitState state) {
  switch (state) {
    case UnitState::free: return "free";
    case UnitState::allocated: return "allocated";
    case UnitState::unavailable: return "unavailable";
  }
  return "free";
}

void to_json(json& j, const Stamp& s) {
  j = json{{"boot_epoch", s.boot_epoch}, {"seq", s.seq}, {"time_us", s.time_us}};
}

void write_stamp(JsonText& out, const Stamp& s) {
  out.open_object();  // the keys in sorted order
  out.key("boot_epoch").number(s.boot_epoch);
  out.key("seq").number(s.seq);
  out.key("time_us").number(s.time_us);
  out.close_object();
}

void from_json(const json& j, Stamp& s) {
  s.boot_epoch = field<std::int64_t>(j, "boot_epoch");
  s.seq = field<std::uint64_t>(j, "seq");
  s.time_us = field<std::int64_t>(j, "time_us");
}

void to_json(json& j, const UnitState& s) { j = unit_state_name(s); }

std::optional<UnitState> parse_unit_state(std::string_view text) {
  for (const UnitState state : {UnitState::free, UnitState::allocated, UnitState::unavailable}) {
    if (text == unit_state_name(state)) return state;
  }
  return std::nullopt;
}

void from_json(const json& j, UnitState& s) {
  const auto text = j.get<std::string>();
  const auto state = parse_unit_state(text);
  if (!state)
    throw std::invalid_argument("unit state '" + text + "': expected free, allocated or unavailable");
  s = *state;
}

void to_json(json& j, const UnitRecord& u) {
  j = json{{"unit", u.unit},
           {"interfaces", u.interfaces},
           {"class", u.cls},
           {"subclass", u.subclass},
           {"protocol", u.protocol},
           {"function", u.function},
           {"state", u.state}};
  put_optional(j, "holder", u.holder);
  put_optional(j, "lease", u.lease);
}

void from_json(const json& j, UnitRecord& u) {
  u.unit = field<std::uint32_t>(j, "unit");
  u.interfaces.clear();
  for (const json& n : field_or(j, "interfaces", std::vector<json>{})) {
    u.interfaces.push_back(to_integer<std::uint8_t>(n, "interfaces"));
  }
  u.cls = field<std::uint8_t>(j, "class");
  u.subclass = field<std::uint8_t>(j, "subclass");
  u.protocol = field<std::uint8_t>(j, "protocol");
  u.function = field<std::string>(j, "function");
  u.state = field<UnitState>(j, "state");
  u.holder = optional_field<std::string>(j, "holder");
  u.lease = optional_field<std::string>(j, "lease");
}

void to_json(json& j, const DeviceRecord& d) {
  j = json{{"dtu", d.dtu},
           {"device", d.device},
           {"bus", d.bus},
           {"vid", hex16(d.vid)},
           {"pid", hex16(d.pid)},
           {"bcd_device", hex16(d.bcd_device)},
           {"class", d.cls},
           {"subclass", d.subclass},
           {"protocol", d.protocol}};
  put_optional(j, "serial", d.serial);
  put_optional(j, "manufacturer", d.manufacturer);
  put_optional(j, "product", d.product);
  j["units"] = d.units;
  j["stamp"] = d.stamp;
  j["owner"] = d.owner;
  if (d.orphaned) j["orphaned"] = true;
}

namespace {

void write_unit(JsonText& out, const UnitRecord& u) {
  out.open_object();  // the keys in sorted order
  out.key("class").number(u.cls);
  out.key("function").string(u.function);
  out.key("holder").string_or_null(u.holder);
  out.key("interfaces").open_array();
  for (const std::uint8_t interface : u.interfaces) out.number(interface);
  out.close_array();
  out.key("lease").string_or_null(u.lease);
  out.key("protocol").number(u.protocol);
  out.key("state").string(unit_state_name(u.state));
  out.key("subclass").number(u.subclass);
  out.key("unit").number(u.unit);
  out.close_object();
}

}  // namespace

bool is_plain_device(const DeviceRecord& d) {
  return is_plain_json_string(d.dtu) && is_plain_json_string(d.device) && is_plain_json_string(d.bus) &&
         plain_or_absent(d.serial) && plain_or_absent(d.manufacturer) && plain_or_absent(d.product) &&
         is_plain_json_string(d.owner) &&
         std::all_of(d.units.begin(), d.units.end(), [](const UnitRecord& u) {
           return is_plain_json_string(u.function) && plain_or_absent(u.holder) && plain_or_absent(u.lease);
         });
}

void write_device(JsonText& out, const DeviceRecord& d) {
  out.open_object();  // the keys in sorted order
  out.key("bcd_device").string(hex16(d.bcd_device));
  out.key("bus").string(d.bus);
  out.key("class").number(d.cls);
  out.key("device").string(d.device);
  out.key("dtu").string(d.dtu);
  out.key("manufacturer").string_or_null(d.manufacturer);
  if (d.orphaned) out.key("orphaned").boolean(true);
  out.key("owner").string(d.owner);
  out.key("pid").string(hex16(d.pid));
  out.key("product").string_or_null(d.product);
  out.key("protocol").number(d.protocol);
  out.key("serial").string_or_null(d.serial);
  out.key("stamp");
  write_stamp(out, d.stamp);
  out.key("subclass").number(d.subclass);
  out.key("units").open_array();
  for (const UnitRecord& u : d.units) write_unit(out, u);
  out.close_array();
  out.key("vid").string(hex16(d.vid));
  out.close_object();
}

void from_json(const json& j, DeviceRecord& d) {
  d.dtu = field<std::string>(j, "dtu");
  d.device = field<std::string>(j, "device");
  d.bus = field_or(j, "bus", std::string("usb"));
  d.vid = parse_hex16(j, "vid");
  d.pid = parse_hex16(j, "pid");
  d.bcd_device = parse_hex16(j, "bcd_device");
  d.cls = field<std::uint8_t>(j, "class");
  d.subclass = field<std::uint8_t>(j, "subclass");
  d.protocol = field<std::uint8_t>(j, "protocol");
  d.serial = optional_field<std::string>(j, "serial");
  d.manufacturer = optional_field<std::string>(j, "manufacturer");
  d.product = optional_field<std::string>(j, "product");
  d.units = field<std::vector<UnitRecord>>(j, "units");
  d.stamp = field<Stamp>(j, "stamp");
  d.owner = field_or(j, "owner", std::string());
  d.orphaned = field_or(j, "orphaned", false);
}

}  // namespace dtu::common
