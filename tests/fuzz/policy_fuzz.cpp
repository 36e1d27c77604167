// Fuzz target: Policy::parse (devmgr/policy.hpp), the input being a policy document, and
// evaluate() over a fixed set of requests.
//   - parse never throws; it refuses with config_error and a detail that starts with the source;
//   - a policy it accepts keeps the document it was given, and has every member of it read: the
//     same document with any one member set to null is refused (docs/policy.md: unknown keys and
//     nulls are errors at every level);
//   - every verdict of an accepted policy is one the file could have written: its rule is
//     "default" or a rule of the file; an allow has no reason and a deny has one; lease_ms within
//     [kPolicyMinLeaseMs, kPolicyMaxLeaseMs]; max_lease_ms 0 (no cap) or in the same range and not
//     below lease_ms; max_leases_per_user absent or in [1, kPolicyMaxLeasesPerUser]; lease_length
//     gives lease_ms for 0 and never more than the cap.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/records.hpp"
#include "dtu/devmgr/policy.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::DeviceRecord;
using dtu::common::Errc;
using dtu::common::UnitRecord;
using dtu::devmgr::Policy;
using dtu::devmgr::PolicyRequest;
using dtu::devmgr::PolicyVerdict;
using dtu::fuzz::has_code;
using nlohmann::json;

constexpr const char* kSource = "fuzz-policy.json";
// Members nulled one at a time in an accepted document; beyond this the run only gets slower.
constexpr std::size_t kMaxNulled = 64;

UnitRecord unit(std::uint32_t number, std::uint8_t cls, std::uint8_t subclass, std::uint8_t protocol,
                const char* function) {
  UnitRecord u;
  u.unit = number;
  u.interfaces = {static_cast<std::uint8_t>(number)};
  u.cls = cls;
  u.subclass = subclass;
  u.protocol = protocol;
  u.function = function;
  return u;
}

// docs/policy.md's cast: a multi-function printer on a kiosk DTU, a card reader without a
// serial, a boot keyboard and a hub.
const std::vector<DeviceRecord>& devices() {
  static const std::vector<DeviceRecord> all = [] {
    DeviceRecord mfp;
    mfp.dtu = "kiosk-1";
    mfp.device = "1-2";
    mfp.vid = 0x04b8;
    mfp.pid = 0x08a1;
    mfp.bcd_device = 0x0100;
    mfp.manufacturer = "EPSON";
    mfp.product = "Test MFP Printer-Scanner-Storage";
    mfp.serial = "MFP0042";
    mfp.units = {unit(0, 0x07, 0x01, 0x02, "printer"), unit(1, 0xff, 0xff, 0xff, "scanner"),
                 unit(2, 0x08, 0x06, 0x50, "storage")};
    DeviceRecord reader;
    reader.dtu = "office-7";
    reader.device = "1-3";
    reader.vid = 0x076b;
    reader.pid = 0x3021;
    reader.manufacturer = "OMNIKEY AG";
    reader.units = {unit(0, 0x0b, 0x00, 0x00, "smartcard")};
    DeviceRecord keyboard;
    keyboard.dtu = "office-7";
    keyboard.device = "1-4";
    keyboard.vid = 0x413c;
    keyboard.pid = 0x2107;
    keyboard.units = {unit(0, 0x03, 0x01, 0x01, "hid")};
    DeviceRecord hub;
    hub.dtu = "office-7";
    hub.device = "1-7";
    hub.cls = 0x09;
    hub.units = {unit(0, 0x09, 0x00, 0x01, "hub")};
    return std::vector<DeviceRecord>{mfp, reader, keyboard, hub};
  }();
  return all;
}

// alice through dtu-print with no session attached, and root with no service name in session s-42.
std::vector<PolicyRequest> requests(const DeviceRecord& device, const UnitRecord& unit) {
  PolicyRequest alice;
  alice.device = &device;
  alice.unit = &unit;
  alice.uid = 1000;
  alice.user = "alice";
  alice.groups = {"alice", "staff"};
  alice.service = "dtu-print";
  PolicyRequest root;
  root.device = &device;
  root.unit = &unit;
  root.session = "s-42";
  root.uid = 0;
  root.user = "root";
  root.groups = {"root"};
  return {alice, root};
}

void check_verdict(const PolicyVerdict& v, const std::set<std::string>& rule_names) {
  using dtu::devmgr::kPolicyMaxLeaseMs;
  using dtu::devmgr::kPolicyMinLeaseMs;
  FUZZ_REQUIRE(v.rule == "default" || rule_names.contains(v.rule));
  FUZZ_REQUIRE(v.allow == v.reason.empty());
  FUZZ_REQUIRE(v.lease_ms >= kPolicyMinLeaseMs && v.lease_ms <= kPolicyMaxLeaseMs);
  FUZZ_REQUIRE(v.max_lease_ms == 0 ||
               (v.max_lease_ms >= kPolicyMinLeaseMs && v.max_lease_ms <= kPolicyMaxLeaseMs));
  FUZZ_REQUIRE(v.max_lease_ms == 0 || v.lease_ms <= v.max_lease_ms);
  FUZZ_REQUIRE(!v.max_leases_per_user || (*v.max_leases_per_user >= 1 &&
                                          *v.max_leases_per_user <= dtu::devmgr::kPolicyMaxLeasesPerUser));
  FUZZ_REQUIRE(v.lease_length(0) == v.lease_ms);
  if (v.max_lease_ms != 0) FUZZ_REQUIRE(v.lease_length(kPolicyMaxLeaseMs) == v.max_lease_ms);
}

void check_policy(const json& doc) {
  auto policy = Policy::parse(doc, kSource);
  if (!policy.ok()) {
    FUZZ_REQUIRE(has_code(policy.error(), Errc::config_error));
    FUZZ_REQUIRE(policy.error().detail.starts_with(std::string(kSource) + ": "));
    return;
  }
  FUZZ_REQUIRE(policy->source() == kSource);
  FUZZ_REQUIRE(policy->document() == doc);
  std::set<std::string> rule_names;
  if (const auto rules = doc.find("rules"); rules != doc.end()) {
    for (const json& rule : *rules) rule_names.insert(rule.at("name").get<std::string>());
    FUZZ_REQUIRE(policy->rule_count() == rules->size());
  }
  for (const DeviceRecord& device : devices()) {
    for (const UnitRecord& unit : device.units) {
      for (const PolicyRequest& request : requests(device, unit)) {
        check_verdict(policy->evaluate(request), rule_names);
      }
    }
  }
  for (const auto& pointer : dtu::fuzz::member_pointers(doc, kMaxNulled)) {
    json nulled = doc;
    nulled[pointer] = nullptr;
    if (Policy::parse(nulled, kSource).ok()) {
      std::fprintf(stderr, "accepted with %s null\n", pointer.to_string().c_str());
      dtu::fuzz::violated("a policy with a null member is refused", __FILE__, __LINE__);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  try {
    check_policy(doc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes Policy::parse or evaluate", __FILE__, __LINE__);
  }
  return 0;
}
