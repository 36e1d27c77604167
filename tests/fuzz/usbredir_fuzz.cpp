// Fuzz target: parse_usbredir_filter (common/finder.hpp), the input being the filter text.
//   - it never throws; it refuses with invalid_argument and a detail naming the rule;
//   - an accepted filter holds only values in range (-1 or the field's range, allow 0 or 1), and
//     its canonical string (to_string) parses back to the same filter and is its own canonical
//     string;
//   - never more lenient than usbredir: text it accepts, usbredir's own reading (strtok_r on '|'
//     and ',', strtol(…, 0) per token, usbredirfilter_verify's ranges; rebuilt below) accepts
//     too, as the same rules;
//   - usbredir_allows gives the same verdict on a device record as on its class triples.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>  // strtok_r
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/finder.hpp"
#include "dtu/common/records.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::Errc;
using dtu::common::UsbredirFilter;
using dtu::common::UsbredirRule;
using dtu::fuzz::has_code;

// usbredirfilter_string_to_rules(text, ",", "|", …) as usbredir 0.12 reads it: empty rules and
// empty tokens vanish in strtok_r, each token is strtol(…, 0) with nothing after the number, a
// rule has exactly 5 tokens, and usbredirfilter_verify checks the ranges. nullopt where usbredir
// refuses the text.
std::optional<std::vector<UsbredirRule>> usbredir_reading(std::string_view text) {
  std::string buffer(text);  // strtok_r writes into it; stops at the first NUL, as usbredir does
  std::vector<UsbredirRule> rules;
  char* rule_state = nullptr;
  for (char* rule = strtok_r(buffer.data(), "|", &rule_state); rule != nullptr;
       rule = strtok_r(nullptr, "|", &rule_state)) {
    // usbredir stores each long in an int (struct usbredirfilter_rule's fields).
    int values[5] = {};
    int count = 0;
    char* token_state = nullptr;
    char* token = strtok_r(rule, ",", &token_state);
    for (; count < 5 && token != nullptr; ++count) {
      char* end = nullptr;
      values[count] = static_cast<int>(std::strtol(token, &end, 0));
      if (*end != '\0') return std::nullopt;
      token = strtok_r(nullptr, ",", &token_state);
    }
    if (count != 5 || token != nullptr) return std::nullopt;
    const auto in = [](int v, int low, int high) { return v >= low && v <= high; };
    if (!in(values[0], -1, 0xff) || !in(values[1], -1, 0xffff) || !in(values[2], -1, 0xffff) ||
        !in(values[3], -1, 0xffff) || !in(values[4], 0, 1)) {
      return std::nullopt;
    }
    rules.push_back(UsbredirRule{values[0], values[1], values[2], values[3], values[4] == 1});
  }
  return rules;
}

bool in_range(const UsbredirRule& rule) {
  const auto field = [](int v, int high) { return v == -1 || (v >= 0 && v <= high); };
  return field(rule.device_class, 0xff) && field(rule.vendor_id, 0xffff) && field(rule.product_id, 0xffff) &&
         field(rule.device_version_bcd, 0xffff);
}

// A composite device: device class 0xEF, a printer, a vendor-class scanner and non-boot HID keys.
dtu::common::DeviceRecord composite() {
  dtu::common::DeviceRecord d;
  d.vid = 0x04b8;
  d.pid = 0x1129;
  d.bcd_device = 0x0100;
  d.cls = 0xef;
  const std::uint8_t classes[][3] = {{0x07, 0x01, 0x02}, {0xff, 0xff, 0xff}, {0x03, 0x00, 0x00}};
  std::uint32_t number = 0;
  for (const auto& triple : classes) {
    dtu::common::UnitRecord u;
    u.unit = number++;
    u.cls = triple[0];
    u.subclass = triple[1];
    u.protocol = triple[2];
    d.units.push_back(u);
  }
  return d;
}

void check_verdicts(const UsbredirFilter& filter) {
  dtu::common::DeviceRecord device = composite();
  // The device itself, then as a class-7 device with one unit, then without units.
  for (int shape = 0; shape < 3; ++shape) {
    std::vector<dtu::common::InterfaceClass> interfaces;
    for (const auto& u : device.units) interfaces.push_back({u.cls, u.subclass, u.protocol});
    FUZZ_REQUIRE(dtu::common::usbredir_allows(filter, device) ==
                 dtu::common::usbredir_allows(filter, device.cls, device.vid, device.pid, device.bcd_device,
                                              interfaces));
    device.cls = 0x07;
    device.units.resize(device.units.empty() ? 0 : device.units.size() - 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto parsed = dtu::common::parse_usbredir_filter(text);
    if (!parsed.ok()) {
      FUZZ_REQUIRE(has_code(parsed.error(), Errc::invalid_argument));
      FUZZ_REQUIRE(parsed.error().detail.starts_with("usbredir filter rule "));
      return 0;
    }
    const UsbredirFilter& filter = *parsed;
    for (const UsbredirRule& rule : filter.rules) FUZZ_REQUIRE(in_range(rule));
    const std::string canonical = dtu::common::to_string(filter);
    const auto again = dtu::common::parse_usbredir_filter(canonical);
    FUZZ_REQUIRE(again.ok());
    FUZZ_REQUIRE(*again == filter);
    FUZZ_REQUIRE(dtu::common::to_string(*again) == canonical);
    const auto theirs = usbredir_reading(text);
    FUZZ_REQUIRE(theirs.has_value());
    FUZZ_REQUIRE(*theirs == filter.rules);
    check_verdicts(filter);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes parse_usbredir_filter or to_string", __FILE__, __LINE__);
  }
  return 0;
}
