#include "dtu/common/finder.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

namespace dtu::common {

using nlohmann::json;

namespace {

// ---- usbredir filter strings ------------------------------------------------------------------

constexpr std::array<const char*, 5> kRuleTokenNames = {"class", "vendor", "product", "version", "allow"};
// Values above this cannot be in range of any token; stops accumulation before it overflows.
constexpr std::int64_t kNumberCap = 1'000'000;

// strtol(token, &end, 0) accepting the whole token, without its leading blanks.
std::optional<std::int64_t> parse_c_integer(std::string_view token) {
  bool negative = false;
  if (!token.empty() && (token.front() == '+' || token.front() == '-')) {
    negative = token.front() == '-';
    token.remove_prefix(1);
  }
  if (token.empty()) return std::nullopt;
  int base = 10;
  if (token.size() >= 2 && token[0] == '0' && (token[1] == 'x' || token[1] == 'X')) {
    base = 16;
    token.remove_prefix(2);
    if (token.empty()) return std::nullopt;
  } else if (token.size() >= 2 && token[0] == '0') {
    base = 8;
    token.remove_prefix(1);
  }
  std::int64_t value = 0;
  for (char c : token) {
    int digit = -1;
    if (c >= '0' && c <= '9')
      digit = c - '0';
    else if (c >= 'a' && c <= 'f')
      digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      digit = c - 'A' + 10;
    if (digit < 0 || digit >= base) return std::nullopt;
    value = std::min(value * base + digit, kNumberCap);
  }
  return negative ? -value : value;
}

std::string rule_error(std::size_t index, std::string_view rule, const std::string& what) {
  return "usbredir filter rule " + std::to_string(index) + " ('" + std::string(rule) + "'): " + what;
}

Result<UsbredirRule> parse_rule(std::size_t index, std::string_view rule) {
  std::array<int, 5> values{};
  std::size_t count = 0;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = rule.find(',', start);
    const std::string_view token =
        rule.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (count == values.size()) {
      return Result<UsbredirRule>(
          Errc::invalid_argument,
          rule_error(index, rule,
                     "unexpected token '" + std::string(token) + "' after allow (a rule has 5 tokens)"));
    }
    const char* name = kRuleTokenNames[count];
    if (token.empty()) {
      return Result<UsbredirRule>(Errc::invalid_argument,
                                  rule_error(index, rule, std::string("token ") + name + " is empty"));
    }
    const auto number = parse_c_integer(token);
    if (!number) {
      return Result<UsbredirRule>(Errc::invalid_argument,
                                  rule_error(index, rule,
                                             std::string("token ") + name + " '" + std::string(token) +
                                                 "' is not a number (decimal, 0x hex or 0 octal)"));
    }
    const std::int64_t low = count == 4 ? 0 : -1;
    const std::int64_t high = count == 0 ? 0xff : count == 4 ? 1 : 0xffff;
    if (*number < low || *number > high) {
      return Result<UsbredirRule>(
          Errc::invalid_argument,
          rule_error(index, rule,
                     std::string("token ") + name + " '" + std::string(token) + "' is out of range [" +
                         std::to_string(low) + ", " + std::to_string(high) + "]"));
    }
    values[count++] = static_cast<int>(*number);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (count != values.size()) {
    return Result<UsbredirRule>(
        Errc::invalid_argument,
        rule_error(index, rule,
                   "expected 5 tokens class,vendor,product,version,allow, got " + std::to_string(count)));
  }
  return UsbredirRule{values[0], values[1], values[2], values[3], values[4] == 1};
}

// One pass: the first matching rule decides; no match denies (usbredir's default, without
// usbredirfilter_fl_default_allow).
bool pass_allows(const UsbredirFilter& filter, std::uint8_t cls, std::uint16_t vid, std::uint16_t pid,
                 std::uint16_t bcd) {
  for (const UsbredirRule& rule : filter.rules) {
    if ((rule.device_class == -1 || rule.device_class == cls) &&
        (rule.vendor_id == -1 || rule.vendor_id == vid) &&
        (rule.product_id == -1 || rule.product_id == pid) &&
        (rule.device_version_bcd == -1 || rule.device_version_bcd == bcd)) {
      return rule.allow;
    }
  }
  return false;
}

std::string hex_token(int value, int digits) {
  if (value == -1) return "-1";
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "0x";
  for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) {
    out += kDigits[(value >> shift) & 0xf];
  }
  return out;
}

// ---- finder JSON --------------------------------------------------------------------------------

// A short rendering of a bad value for an error message.
std::string shown(const json& v) {
  constexpr std::size_t kMaxShown = 60;  // characters: enough to recognise the value
  std::string text = v.dump();
  if (text.size() > kMaxShown) text = text.substr(0, kMaxShown) + "…";
  return text;
}

[[noreturn]] void fail(const char* key, const std::string& what) {
  throw std::invalid_argument(std::string("finder field '") + key + "': " + what);
}

[[noreturn]] void fail_expected(const char* key, const char* expected, const json& got) {
  fail(key, std::string("expected ") + expected + ", got " + shown(got));
}

std::optional<std::uint16_t> hex4(const json& v) {
  if (!v.is_string()) return std::nullopt;
  const auto& text = v.get_ref<const std::string&>();
  if (text.size() != 4) return std::nullopt;
  std::uint16_t value = 0;
  for (char c : text) {
    int digit = -1;
    if (c >= '0' && c <= '9')
      digit = c - '0';
    else if (c >= 'a' && c <= 'f')
      digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      digit = c - 'A' + 10;
    if (digit < 0) return std::nullopt;
    value = static_cast<std::uint16_t>((value << 4) | digit);
  }
  return value;
}

std::optional<std::uint8_t> byte(const json& v) {
  if (v.is_number_unsigned()) {
    const auto n = v.get<std::uint64_t>();
    if (n <= 0xff) return static_cast<std::uint8_t>(n);
  } else if (v.is_number_integer()) {
    const auto n = v.get<std::int64_t>();
    if (n >= 0 && n <= 0xff) return static_cast<std::uint8_t>(n);
  }
  return std::nullopt;
}

std::optional<std::string> non_empty_string(const json& v) {
  if (!v.is_string() || v.get_ref<const std::string&>().empty()) return std::nullopt;
  return v.get<std::string>();
}

// One value or a non-empty list of values, each read by `one`; the set of them.
template <typename T, typename Reader>
std::set<T> one_or_list(const json& v, const char* key, const char* expected, Reader one) {
  std::set<T> out;
  if (v.is_array()) {
    if (v.empty()) fail_expected(key, expected, v);
    for (const json& item : v) {
      const auto value = one(item);
      if (!value) fail_expected(key, expected, item);
      out.insert(*value);
    }
    return out;
  }
  const auto value = one(v);
  if (!value) fail_expected(key, expected, v);
  out.insert(*value);
  return out;
}

constexpr const char* kHexExpected = "a 4-digit hex string or a non-empty list of them";
constexpr const char* kByteExpected = "an integer in [0, 255] or a non-empty list of them";
constexpr const char* kFunctionExpected = "a non-empty string or a non-empty list of them";
constexpr const char* kPatternExpected = "a non-empty string (exact or glob)";

// There is no "any": the empty finder already matches every unit.
constexpr std::array<const char*, 18> kFinderKeys = {
    "vid",        "pid",           "bcd_device",    "class",     "subclass", "protocol",
    "unit_class", "unit_subclass", "unit_protocol", "function",  "serial",   "manufacturer",
    "product",    "dtu",           "scope",         "scope_dtu", "session",  "usbredir"};

Finder finder_from_json(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("finder: expected a JSON object, got " + shown(j));
  for (const auto& item : j.items()) {
    const std::string& key = item.key();  // not a structured binding: clang 14 cannot capture one
    const json& value = item.value();
    const bool known =
        std::any_of(kFinderKeys.begin(), kFinderKeys.end(), [&key](const char* k) { return key == k; });
    if (!known) throw std::invalid_argument("finder field '" + key + "': unknown field");
    if (value.is_null()) fail(key.c_str(), "expected a value, got null (omit the field instead)");
  }
  Finder f;
  const auto hex_field = [&](const char* key, std::optional<std::set<std::uint16_t>>& out) {
    if (const auto it = j.find(key); it != j.end())
      out = one_or_list<std::uint16_t>(*it, key, kHexExpected, hex4);
  };
  const auto byte_field = [&](const char* key, std::optional<std::set<std::uint8_t>>& out) {
    if (const auto it = j.find(key); it != j.end())
      out = one_or_list<std::uint8_t>(*it, key, kByteExpected, byte);
  };
  const auto pattern_field = [&](const char* key, std::optional<std::string>& out) {
    if (const auto it = j.find(key); it != j.end()) {
      out = non_empty_string(*it);
      if (!out) fail_expected(key, kPatternExpected, *it);
    }
  };
  hex_field("vid", f.vid);
  hex_field("pid", f.pid);
  hex_field("bcd_device", f.bcd_device);
  byte_field("class", f.cls);
  byte_field("subclass", f.subclass);
  byte_field("protocol", f.protocol);
  byte_field("unit_class", f.unit_class);
  byte_field("unit_subclass", f.unit_subclass);
  byte_field("unit_protocol", f.unit_protocol);
  if (const auto it = j.find("function"); it != j.end()) {
    f.function = one_or_list<std::string>(*it, "function", kFunctionExpected, non_empty_string);
  }
  pattern_field("serial", f.serial);
  pattern_field("manufacturer", f.manufacturer);
  pattern_field("product", f.product);
  pattern_field("dtu", f.dtu);

  if (const auto it = j.find("scope"); it != j.end()) {
    const std::string name = it->is_string() ? it->get<std::string>() : std::string();
    if (name == "interconnect")
      f.scope = FinderScope::interconnect;
    else if (name == "dtu")
      f.scope = FinderScope::dtu;
    else if (name == "session")
      f.scope = FinderScope::session;
    else if (name == "bus")
      f.scope = FinderScope::bus;
    else
      fail_expected("scope", "one of \"interconnect\", \"dtu\", \"session\", \"bus\"", *it);
  }
  if (const auto it = j.find("scope_dtu"); it != j.end()) {
    if (f.scope != FinderScope::dtu) fail("scope_dtu", "only allowed with scope \"dtu\"");
    if (!it->is_string() || !is_valid_id(it->get_ref<const std::string&>())) {
      fail_expected("scope_dtu", "a DTU id (1-64 characters of [A-Za-z0-9._-])", *it);
    }
    f.scope_dtu = it->get<std::string>();
  } else if (f.scope == FinderScope::dtu) {
    fail("scope_dtu", "required with scope \"dtu\"");
  }
  if (const auto it = j.find("session"); it != j.end()) {
    if (f.scope != FinderScope::session) fail("session", "only allowed with scope \"session\"");
    f.session = non_empty_string(*it);
    if (!f.session) fail_expected("session", "a non-empty session id string", *it);
  } else if (f.scope == FinderScope::session) {
    fail("session", "required with scope \"session\"");
  }
  if (const auto it = j.find("usbredir"); it != j.end()) {
    if (!it->is_string()) fail_expected("usbredir", "a usbredir filter string", *it);
    auto filter = parse_usbredir_filter(it->get_ref<const std::string&>());
    if (!filter) fail("usbredir", filter.error().detail);
    f.usbredir = std::move(filter).value();
  }
  return f;
}

template <typename T, typename Writer>
json set_to_json(const std::set<T>& values, Writer write) {
  if (values.size() == 1) return write(*values.begin());
  json list = json::array();
  for (const T& v : values) list.push_back(write(v));
  return list;
}


// The public glob_matches (below) beside this overload, so that a plain string picks it.
using common::glob_matches;

bool glob_matches(const std::string& pattern, const std::optional<std::string>& text) {
  return text && glob_matches(pattern, *text);
}

template <typename T, typename V>
bool admits(const std::optional<std::set<T>>& allowed, const V& value) {
  return !allowed || allowed->contains(value);
}

bool device_matches(const Finder& f, const DeviceRecord& d) {
  if (!admits(f.vid, d.vid) || !admits(f.pid, d.pid) || !admits(f.bcd_device, d.bcd_device)) return false;
  if (!admits(f.cls, d.cls) || !admits(f.subclass, d.subclass) || !admits(f.protocol, d.protocol))
    return false;
  if (f.serial && !glob_matches(*f.serial, d.serial)) return false;
  if (f.manufacturer && !glob_matches(*f.manufacturer, d.manufacturer)) return false;
  if (f.product && !glob_matches(*f.product, d.product)) return false;
  if (f.dtu && !glob_matches(*f.dtu, d.dtu)) return false;
  if (f.scope == FinderScope::dtu && (!f.scope_dtu || *f.scope_dtu != d.dtu)) return false;
  if (f.usbredir && !usbredir_allows(*f.usbredir, d)) return false;
  return true;
}

bool unit_matches(const Finder& f, const UnitRecord& u) {
  return admits(f.unit_class, u.cls) && admits(f.unit_subclass, u.subclass) &&
         admits(f.unit_protocol, u.protocol) && admits(f.function, u.function);
}

}  // namespace

bool glob_matches(const std::string& pattern, const std::string& text) {
  // fnmatch(3) reads C strings, so a NUL would end either one early: "AB" would match a device's
  // "AB\0C" (a USB string descriptor may hold U+0000), which FinderIndex files under "AB\0C".
  if (pattern.find('\0') != std::string::npos || text.find('\0') != std::string::npos) return false;
  return ::fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}

// ---- usbredir -----------------------------------------------------------------------------------

Result<UsbredirFilter> parse_usbredir_filter(std::string_view text) {
  UsbredirFilter filter;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t bar = text.find('|', start);
    const std::size_t end = bar == std::string_view::npos ? text.size() : bar;
    const std::string_view rule = text.substr(start, end - start);
    if (!rule.empty()) {
      auto parsed = parse_rule(filter.rules.size(), rule);
      if (!parsed) return parsed.error();
      filter.rules.push_back(*parsed);
    }
    start = end + 1;
  }
  return filter;
}

std::string to_string(const UsbredirFilter& filter) {
  std::string out;
  for (const UsbredirRule& rule : filter.rules) {
    if (!out.empty()) out += '|';
    out += hex_token(rule.device_class, 2) + ',' + hex_token(rule.vendor_id, 4) + ',' +
           hex_token(rule.product_id, 4) + ',' + hex_token(rule.device_version_bcd, 4) + ',' +
           (rule.allow ? '1' : '0');
  }
  return out;
}

bool usbredir_allows(const UsbredirFilter& filter, std::uint8_t device_class, std::uint16_t vid,
                     std::uint16_t pid, std::uint16_t bcd_device,
                     std::span<const InterfaceClass> interfaces) {
  constexpr std::uint8_t kClassPerInterface = 0x00;
  constexpr std::uint8_t kClassMiscellaneous = 0xef;  // interface association devices
  constexpr std::uint8_t kClassHid = 0x03;
  if (device_class != kClassPerInterface && device_class != kClassMiscellaneous &&
      !pass_allows(filter, device_class, vid, pid, bcd_device)) {
    return false;
  }
  const auto non_boot_hid = [](const InterfaceClass& i) {
    return i.cls == kClassHid && i.subclass == 0x00 && i.protocol == 0x00;
  };
  // Non-boot HID interfaces of multi-interface devices are skipped unless that skips them all.
  const bool skip_non_boot_hid =
      interfaces.size() > 1 && !std::all_of(interfaces.begin(), interfaces.end(), non_boot_hid);
  for (const InterfaceClass& i : interfaces) {
    if (skip_non_boot_hid && non_boot_hid(i)) continue;
    if (!pass_allows(filter, i.cls, vid, pid, bcd_device)) return false;
  }
  return true;
}

bool usbredir_allows(const UsbredirFilter& filter, const DeviceRecord& device) {
  std::vector<InterfaceClass> interfaces;
  interfaces.reserve(device.units.size());
  for (const UnitRecord& u : device.units) interfaces.push_back({u.cls, u.subclass, u.protocol});
  return usbredir_allows(filter, device.cls, device.vid, device.pid, device.bcd_device, interfaces);
}

// ---- finders ------------------------------------------------------------------------------------

const char* finder_scope_name(FinderScope scope) {
  switch (scope) {
    case FinderScope::interconnect:
      return "interconnect";
    case FinderScope::dtu:
      return "dtu";
    case FinderScope::session:
      return "session";
    case FinderScope::bus:
      return "bus";
  }
  return "interconnect";
}

Result<Finder> parse_finder(const json& j) {
  try {
    return finder_from_json(j);
  } catch (const std::invalid_argument& e) {
    return Result<Finder>(Errc::invalid_argument, e.what());
  }
}

void from_json(const json& j, Finder& finder) {
  finder = finder_from_json(j);
}

void to_json(json& j, const Finder& f) {
  j = json::object();
  const auto hex = [](std::uint16_t v) { return json(hex16(v)); };
  const auto num = [](std::uint8_t v) { return json(v); };
  const auto str = [](const std::string& v) { return json(v); };
  if (f.vid) j["vid"] = set_to_json(*f.vid, hex);
  if (f.pid) j["pid"] = set_to_json(*f.pid, hex);
  if (f.bcd_device) j["bcd_device"] = set_to_json(*f.bcd_device, hex);
  if (f.cls) j["class"] = set_to_json(*f.cls, num);
  if (f.subclass) j["subclass"] = set_to_json(*f.subclass, num);
  if (f.protocol) j["protocol"] = set_to_json(*f.protocol, num);
  if (f.unit_class) j["unit_class"] = set_to_json(*f.unit_class, num);
  if (f.unit_subclass) j["unit_subclass"] = set_to_json(*f.unit_subclass, num);
  if (f.unit_protocol) j["unit_protocol"] = set_to_json(*f.unit_protocol, num);
  if (f.function) j["function"] = set_to_json(*f.function, str);
  if (f.serial) j["serial"] = *f.serial;
  if (f.manufacturer) j["manufacturer"] = *f.manufacturer;
  if (f.product) j["product"] = *f.product;
  if (f.dtu) j["dtu"] = *f.dtu;
  if (f.scope != FinderScope::interconnect) j["scope"] = finder_scope_name(f.scope);
  if (f.scope_dtu) j["scope_dtu"] = *f.scope_dtu;
  if (f.session) j["session"] = *f.session;
  if (f.usbredir) j["usbredir"] = to_string(*f.usbredir);
}

bool matches(const Finder& finder, const DeviceRecord& device, const UnitRecord& unit) {
  return device_matches(finder, device) && unit_matches(finder, unit);
}

std::vector<std::uint32_t> matching_units(const Finder& finder, const DeviceRecord& device) {
  std::vector<std::uint32_t> out;
  if (!device_matches(finder, device)) return out;
  for (const UnitRecord& u : device.units) {
    if (unit_matches(finder, u)) out.push_back(u.unit);
  }
  return out;
}

// ---- FinderIndex --------------------------------------------------------------------------------

namespace {

// The characters up to the first one fnmatch(3) treats specially (without flags): every string
// the pattern matches starts with them. The whole pattern when it has none (it matches exactly
// itself).
std::string_view literal_prefix(std::string_view pattern) {
  return pattern.substr(0, std::min(pattern.size(), pattern.find_first_of("*?[\\")));
}

bool is_literal(std::string_view pattern) { return literal_prefix(pattern).size() == pattern.size(); }

}  // namespace

FinderIndex::Keys FinderIndex::keys_of(const Finder& f) {
  // A finder with many vid × pid combinations goes into a later bucket instead.
  constexpr std::size_t kMaxVidPidKeys = 64;
  Keys keys;
  if (f.serial && is_literal(*f.serial)) {
    keys.serial = *f.serial;
  } else if (f.scope == FinderScope::dtu && f.scope_dtu) {
    keys.dtu = *f.scope_dtu;
  } else if (f.dtu && is_literal(*f.dtu)) {
    keys.dtu = *f.dtu;
  } else if (f.vid && f.pid && f.vid->size() * f.pid->size() <= kMaxVidPidKeys) {
    for (std::uint16_t vid : *f.vid) {
      for (std::uint16_t pid : *f.pid) keys.vid_pid.push_back((std::uint32_t{vid} << 16) | pid);
    }
  } else if (f.serial && !literal_prefix(*f.serial).empty()) {
    keys.serial_prefix = std::string(literal_prefix(*f.serial));
  } else if (f.dtu && !literal_prefix(*f.dtu).empty()) {
    keys.dtu_prefix = std::string(literal_prefix(*f.dtu));
  } else if (f.vid) {
    keys.vid.assign(f.vid->begin(), f.vid->end());
  } else if (f.unit_class) {
    keys.unit_class.assign(f.unit_class->begin(), f.unit_class->end());
  } else if (f.function) {
    keys.function.assign(f.function->begin(), f.function->end());
  } else {
    keys.unindexed = true;
  }
  return keys;
}

void FinderIndex::link_prefix(PrefixBuckets& index, FinderId id, const std::string& prefix) {
  auto& bucket = index.buckets[prefix];
  if (bucket.empty()) ++index.lengths[prefix.size()];
  bucket.insert(id);
}

void FinderIndex::unlink_prefix(PrefixBuckets& index, FinderId id, const std::string& prefix) {
  const auto it = index.buckets.find(prefix);
  if (it == index.buckets.end()) return;
  it->second.erase(id);
  if (!it->second.empty()) return;
  index.buckets.erase(it);
  const auto length = index.lengths.find(prefix.size());
  if (length != index.lengths.end() && --length->second == 0) index.lengths.erase(length);
}

void FinderIndex::take_prefixes(const PrefixBuckets& index, std::string_view text, std::vector<FinderId>& out) {
  for (const auto& in_use : index.lengths) {
    const std::size_t length = in_use.first;
    if (length > text.size()) break;
    const auto it = index.buckets.find(text.substr(0, length));
    if (it != index.buckets.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

void FinderIndex::unlink(FinderId id, const Keys& keys) {
  const auto erase_from = [id](auto& buckets, const auto& key) {
    const auto it = buckets.find(key);
    if (it == buckets.end()) return;
    it->second.erase(id);
    if (it->second.empty()) buckets.erase(it);
  };
  if (keys.serial) erase_from(by_serial_, *keys.serial);
  if (keys.dtu) erase_from(by_dtu_, *keys.dtu);
  for (auto k : keys.vid_pid) erase_from(by_vid_pid_, k);
  if (keys.serial_prefix) unlink_prefix(by_serial_prefix_, id, *keys.serial_prefix);
  if (keys.dtu_prefix) unlink_prefix(by_dtu_prefix_, id, *keys.dtu_prefix);
  for (auto k : keys.vid) erase_from(by_vid_, k);
  for (auto k : keys.unit_class) erase_from(by_unit_class_, k);
  for (const auto& k : keys.function) erase_from(by_function_, k);
  if (keys.unindexed) unindexed_.erase(id);
}

void FinderIndex::add(FinderId id, Finder finder) {
  remove(id);
  const Keys keys = keys_of(finder);
  if (keys.serial) by_serial_[*keys.serial].insert(id);
  if (keys.dtu) by_dtu_[*keys.dtu].insert(id);
  for (auto k : keys.vid_pid) by_vid_pid_[k].insert(id);
  if (keys.serial_prefix) link_prefix(by_serial_prefix_, id, *keys.serial_prefix);
  if (keys.dtu_prefix) link_prefix(by_dtu_prefix_, id, *keys.dtu_prefix);
  for (auto k : keys.vid) by_vid_[k].insert(id);
  for (auto k : keys.unit_class) by_unit_class_[k].insert(id);
  for (const auto& k : keys.function) by_function_[k].insert(id);
  if (keys.unindexed) unindexed_.insert(id);
  finders_.emplace(id, std::move(finder));
}

bool FinderIndex::remove(FinderId id) {
  const auto it = finders_.find(id);
  if (it == finders_.end()) return false;
  unlink(id, keys_of(it->second));
  finders_.erase(it);
  return true;
}

const Finder* FinderIndex::find(FinderId id) const {
  const auto it = finders_.find(id);
  return it == finders_.end() ? nullptr : &it->second;
}

std::vector<FinderId> FinderIndex::candidates(const DeviceRecord& device) const {
  std::vector<FinderId> out(unindexed_.begin(), unindexed_.end());
  const auto take = [&out](const auto& buckets, const auto& key) {
    const auto it = buckets.find(key);
    if (it != buckets.end()) out.insert(out.end(), it->second.begin(), it->second.end());
  };
  // A device without a serial matches no finder that constrains it.
  if (device.serial) {
    take(by_serial_, *device.serial);
    take_prefixes(by_serial_prefix_, *device.serial, out);
  }
  take(by_dtu_, device.dtu);
  take_prefixes(by_dtu_prefix_, device.dtu, out);
  take(by_vid_pid_, (std::uint32_t{device.vid} << 16) | device.pid);
  take(by_vid_, device.vid);
  for (const UnitRecord& u : device.units) {
    take(by_unit_class_, u.cls);
    take(by_function_, u.function);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::map<FinderId, std::vector<std::uint32_t>> FinderIndex::match(const DeviceRecord& device) const {
  std::map<FinderId, std::vector<std::uint32_t>> out;
  for (FinderId id : candidates(device)) {
    auto units = matching_units(finders_.at(id), device);
    if (!units.empty()) out.emplace(id, std::move(units));
  }
  return out;
}

}  // namespace dtu::common
