// Fuzz target: parse_finder (common/finder.hpp) and FinderIndex, the input being a JSON finder
// or a JSON list of finders. For every value:
//   - parse_finder never throws; it refuses with invalid_argument and a detail naming the finder
//     or one of its fields;
//   - a finder it accepts keeps the header's promises (present sets non-empty, scope_dtu exactly
//     with scope "dtu", session exactly with scope "session", patterns non-empty), writes (to_json,
//     dump) as text that parses back to an equal finder, and reads the same through from_json;
//   - a finder it accepts has every member read: the same document with any one member set to
//     null is refused.
// For a list, the finders it accepts go into one FinderIndex; against devices made from the
// finders' own values (and two fixed ones), match() equals matching_units over every finder and
// candidates() is sorted, distinct and a superset of the matches, before and after removing
// half of them.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/finder.hpp"
#include "dtu/common/records.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::DeviceRecord;
using dtu::common::Errc;
using dtu::common::Finder;
using dtu::common::FinderId;
using dtu::common::FinderIndex;
using dtu::common::FinderScope;
using dtu::common::UnitRecord;
using dtu::fuzz::has_code;
using nlohmann::json;

// Finders read from one list: beyond this the run only gets slower, not more interesting.
constexpr std::size_t kMaxFinders = 32;
// Members nulled one at a time in an accepted finder (a finder has 18 keys).
constexpr std::size_t kMaxNulled = 32;

template <typename T>
bool non_empty(const std::optional<T>& value) {
  return !value || !value->empty();
}

void check_invariants(const Finder& f) {
  FUZZ_REQUIRE(non_empty(f.vid) && non_empty(f.pid) && non_empty(f.bcd_device));
  FUZZ_REQUIRE(non_empty(f.cls) && non_empty(f.subclass) && non_empty(f.protocol));
  FUZZ_REQUIRE(non_empty(f.unit_class) && non_empty(f.unit_subclass) && non_empty(f.unit_protocol));
  FUZZ_REQUIRE(non_empty(f.function) && non_empty(f.serial) && non_empty(f.manufacturer));
  FUZZ_REQUIRE(non_empty(f.product) && non_empty(f.dtu) && non_empty(f.session));
  if (f.function) {
    for (const std::string& name : *f.function) FUZZ_REQUIRE(!name.empty());
  }
  FUZZ_REQUIRE(f.scope_dtu.has_value() == (f.scope == FinderScope::dtu));
  if (f.scope_dtu) FUZZ_REQUIRE(dtu::common::is_valid_id(*f.scope_dtu));
  FUZZ_REQUIRE(f.session.has_value() == (f.scope == FinderScope::session));
}

// The finder parse_finder reads from `doc`, with every promise checked; nullopt when refused.
std::optional<Finder> check_finder(const json& doc) {
  try {
    auto parsed = dtu::common::parse_finder(doc);
    if (!parsed.ok()) {
      FUZZ_REQUIRE(has_code(parsed.error(), Errc::invalid_argument));
      FUZZ_REQUIRE(parsed.error().detail.starts_with("finder"));
      return std::nullopt;
    }
    const Finder& f = *parsed;
    check_invariants(f);
    const json written = f;
    auto again = dtu::common::parse_finder(json::parse(written.dump()));
    FUZZ_REQUIRE(again.ok());
    FUZZ_REQUIRE(*again == f);
    FUZZ_REQUIRE(json(*again) == written);
    FUZZ_REQUIRE(doc.get<Finder>() == f);
    for (const auto& pointer : dtu::fuzz::member_pointers(doc, kMaxNulled)) {
      json nulled = doc;
      nulled[pointer] = nullptr;
      FUZZ_REQUIRE(!dtu::common::parse_finder(nulled).ok());
    }
    return f;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes parse_finder, to_json or from_json", __FILE__, __LINE__);
  }
}

template <typename T>
T first_or(const std::optional<std::set<T>>& values, T otherwise) {
  return values ? *values->begin() : otherwise;
}

// A device that has, wherever `f` constrains it, the first value `f` allows (the pattern itself
// for a glob), so most finders match it, and those built from other finders often do not.
DeviceRecord device_like(const Finder& f) {
  DeviceRecord d;
  d.dtu = f.scope_dtu ? *f.scope_dtu : f.dtu ? *f.dtu : "dtu-1";
  d.device = "1-1";
  d.vid = first_or<std::uint16_t>(f.vid, 0x04b8);
  d.pid = first_or<std::uint16_t>(f.pid, 0x1129);
  d.bcd_device = first_or<std::uint16_t>(f.bcd_device, 0x0100);
  d.cls = first_or<std::uint8_t>(f.cls, 0);
  d.subclass = first_or<std::uint8_t>(f.subclass, 0);
  d.protocol = first_or<std::uint8_t>(f.protocol, 0);
  d.serial = f.serial;
  d.manufacturer = f.manufacturer;
  d.product = f.product;
  UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = first_or<std::uint8_t>(f.unit_class, 7);
  u.subclass = first_or<std::uint8_t>(f.unit_subclass, 1);
  u.protocol = first_or<std::uint8_t>(f.unit_protocol, 2);
  u.function = f.function ? *f.function->begin() : "printer";
  d.units.push_back(u);
  UnitRecord other = u;
  other.unit = 1;
  other.interfaces = {1};
  other.cls = 8;
  other.function = "storage";
  d.units.push_back(other);
  return d;
}

// An Epson printer-scanner-card reader and a device without strings or units.
std::vector<DeviceRecord> fixed_devices() {
  DeviceRecord epson;
  epson.dtu = "dtu-07";
  epson.device = "1-1.4";
  epson.vid = 0x04b8;
  epson.pid = 0x1129;
  epson.bcd_device = 0x0100;
  epson.serial = "X2XN012345";
  epson.manufacturer = "EPSON";
  epson.product = "ET-2750 Series";
  const auto unit = [](std::uint32_t number, std::uint8_t cls, const char* function) {
    UnitRecord u;
    u.unit = number;
    u.interfaces = {static_cast<std::uint8_t>(number)};
    u.cls = cls;
    u.function = function;
    return u;
  };
  epson.units = {unit(0, 0xff, "scanner"), unit(1, 0x07, "printer"), unit(2, 0x08, "storage")};
  DeviceRecord bare;
  bare.dtu = "dtu-12";
  bare.device = "2-1";
  return {epson, bare};
}

// match() equals matching_units over every finder in `finders`; candidates() is sorted, distinct
// and covers every match.
void check_index(const FinderIndex& index, const std::map<FinderId, Finder>& finders,
                 const std::vector<DeviceRecord>& devices) {
  FUZZ_REQUIRE(index.size() == finders.size());
  for (const DeviceRecord& device : devices) {
    std::map<FinderId, std::vector<std::uint32_t>> expected;
    for (const auto& [id, finder] : finders) {
      auto units = dtu::common::matching_units(finder, device);
      if (!units.empty()) expected.emplace(id, std::move(units));
    }
    FUZZ_REQUIRE(index.match(device) == expected);
    const std::vector<FinderId> candidates = index.candidates(device);
    FUZZ_REQUIRE(std::adjacent_find(candidates.begin(), candidates.end(), std::greater_equal<>()) ==
                 candidates.end());
    for (const auto& match : expected) {
      FUZZ_REQUIRE(std::binary_search(candidates.begin(), candidates.end(), match.first));
    }
  }
}

void check_list(const json& list) {
  FUZZ_REQUIRE(!dtu::common::parse_finder(list).ok());
  std::map<FinderId, Finder> finders;
  std::vector<DeviceRecord> devices = fixed_devices();
  FinderIndex index;
  for (std::size_t i = 0; i < list.size() && i < kMaxFinders; ++i) {
    auto finder = check_finder(list[i]);
    if (!finder) continue;
    devices.push_back(device_like(*finder));
    index.add(i, *finder);
    finders.emplace(i, *std::move(finder));
  }
  check_index(index, finders, devices);
  for (auto it = finders.begin(); it != finders.end();) {
    if (it->first % 2 == 0) {
      FUZZ_REQUIRE(index.remove(it->first));
      it = finders.erase(it);
    } else {
      ++it;
    }
  }
  FUZZ_REQUIRE(!index.remove(kMaxFinders));
  check_index(index, finders, devices);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  if (doc.is_array()) {
    check_list(doc);
  } else if (const auto finder = check_finder(doc)) {
    FinderIndex index;
    index.add(0, *finder);
    std::vector<DeviceRecord> devices = fixed_devices();
    devices.push_back(device_like(*finder));
    check_index(index, {{0, *finder}}, devices);
  }
  return 0;
}
