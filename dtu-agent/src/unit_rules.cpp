#include "dtu/agent/unit_rules.hpp"

#include <algorithm>
#include <array>

#include "dtu/common/usb_classes.hpp"

namespace dtu::agent {

namespace {

constexpr std::uint16_t kVendorEpson = 0x04b8;
constexpr std::uint8_t kClassVendor = 0xff;

const std::array<UsbQuirk, 1> kBuiltinQuirks{{
    {kVendorEpson, std::nullopt, kClassVendor, kClassVendor, kClassVendor, "scanner", false,
     "Epson multi-function devices expose the scanner as a vendor-specific interface (ff/ff/ff); "
     "SANE's epkowa/epsonds backends drive it"},
}};

bool matches_device(const UsbQuirk& q, const UsbDeviceInfo& device) {
  return q.vid == device.vid && (!q.pid || *q.pid == device.pid);
}

bool matches_class(const UsbQuirk& q, std::uint8_t cls, std::uint8_t subclass, std::uint8_t protocol) {
  return q.cls && *q.cls == cls && (!q.subclass || *q.subclass == subclass) && (!q.protocol || *q.protocol == protocol);
}

bool exclusive(const UsbDeviceInfo& device, std::span<const UsbQuirk> quirks) {
  return std::any_of(quirks.begin(), quirks.end(),
                     [&](const UsbQuirk& q) { return q.exclusive && !q.cls && matches_device(q, device); });
}

// Every endpoint address of a unit's interfaces, over all alternate settings.
std::set<std::uint8_t> endpoints_of(const UsbDeviceInfo& device, const common::UnitRecord& unit) {
  std::set<std::uint8_t> out;
  for (const auto& itf : device.interfaces) {
    if (std::find(unit.interfaces.begin(), unit.interfaces.end(), itf.number) == unit.interfaces.end()) continue;
    for (const auto& ep : itf.endpoints) out.insert(ep.address);
  }
  return out;
}

}  // namespace

std::span<const UsbQuirk> builtin_quirks() {
  return kBuiltinQuirks;
}

std::string unit_function(const UsbDeviceInfo& device, std::uint8_t cls, std::uint8_t subclass,
                          std::uint8_t protocol, std::span<const UsbQuirk> quirks) {
  for (const auto& q : quirks) {
    if (q.function && matches_device(q, device) && matches_class(q, cls, subclass, protocol)) return *q.function;
  }
  return common::usb_function_name(cls, subclass, protocol);
}

std::set<std::uint32_t> conflicting_units(const UsbDeviceInfo& device, const common::DeviceRecord& record,
                                          std::uint32_t unit, std::span<const UsbQuirk> quirks) {
  std::set<std::uint32_t> out;
  auto self = std::find_if(record.units.begin(), record.units.end(),
                           [&](const common::UnitRecord& u) { return u.unit == unit; });
  if (self == record.units.end()) return out;
  const bool all = exclusive(device, quirks);
  const std::set<std::uint8_t> mine = endpoints_of(device, *self);
  for (const auto& other : record.units) {
    if (other.unit == unit) continue;
    if (all) {
      out.insert(other.unit);
      continue;
    }
    const std::set<std::uint8_t> theirs = endpoints_of(device, other);
    if (std::any_of(theirs.begin(), theirs.end(), [&](std::uint8_t ep) { return mine.contains(ep); })) {
      out.insert(other.unit);
    }
  }
  return out;
}

void apply_leases(common::DeviceRecord& record, const UsbDeviceInfo& device, const std::vector<const Lease*>& leases,
                  std::span<const UsbQuirk> quirks) {
  std::set<std::uint32_t> blocked;
  for (const Lease* lease : leases) {
    auto more = conflicting_units(device, record, lease->unit, quirks);
    blocked.insert(more.begin(), more.end());
  }
  for (auto& u : record.units) {
    auto held = std::find_if(leases.begin(), leases.end(), [&](const Lease* l) { return l->unit == u.unit; });
    if (held != leases.end()) {
      u.state = common::UnitState::allocated;
      u.holder = (*held)->holder;
      u.lease = (*held)->id;
    } else {
      u.state = blocked.contains(u.unit) ? common::UnitState::unavailable : common::UnitState::free;
      u.holder.reset();
      u.lease.reset();
    }
  }
}

}  // namespace dtu::agent
