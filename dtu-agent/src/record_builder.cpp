#include "dtu/agent/record_builder.hpp"

#include <algorithm>
#include <cstdint>
#include <set>

#include "dtu/agent/unit_rules.hpp"

namespace dtu::agent {

namespace {

const UsbInterfaceAssociation* association_of(const UsbDeviceInfo& info, std::uint8_t interface) {
  for (const auto& a : info.associations) {
    if (interface >= a.first_interface && interface < a.first_interface + a.count) return &a;
  }
  return nullptr;
}

}  // namespace

common::DeviceRecord build_device_record(const UsbDeviceInfo& info, const std::string& dtu,
                                         const common::Stamp& stamp) {
  common::DeviceRecord r;
  r.dtu = dtu;
  r.device = info.port;
  r.vid = info.vid;
  r.pid = info.pid;
  r.bcd_device = info.bcd_device;
  r.cls = info.cls;
  r.subclass = info.subclass;
  r.protocol = info.protocol;
  r.serial = info.serial;
  r.manufacturer = info.manufacturer;
  r.product = info.product;
  r.stamp = stamp;
  // Interface numbers seen so far: a faulty configuration descriptor may repeat one (libusb keeps
  // every copy), yet it names one interface, so one unit, described by the first copy.
  std::set<std::uint8_t> seen;
  for (const auto& itf : info.interfaces) {
    if (itf.alternate != 0) continue;  // alternates are settings of the same unit
    if (!seen.insert(itf.number).second) continue;
    if (const auto* a = association_of(info, itf.number)) {
      // The interfaces of one association form one unit, named by its first interface.
      auto unit = std::find_if(r.units.begin(), r.units.end(),
                               [&](const common::UnitRecord& u) { return u.unit == a->first_interface; });
      if (unit == r.units.end()) {
        common::UnitRecord u;
        u.unit = a->first_interface;
        u.cls = a->cls;
        u.subclass = a->subclass;
        u.protocol = a->protocol;
        u.function = unit_function(info, a->cls, a->subclass, a->protocol);
        r.units.push_back(std::move(u));
        unit = r.units.end() - 1;
      }
      unit->interfaces.push_back(itf.number);
      continue;
    }
    common::UnitRecord u;
    u.unit = itf.number;
    u.interfaces = {itf.number};
    u.cls = itf.cls;
    u.subclass = itf.subclass;
    u.protocol = itf.protocol;
    u.function = unit_function(info, itf.cls, itf.subclass, itf.protocol);
    r.units.push_back(std::move(u));
  }
  std::sort(r.units.begin(), r.units.end(),
            [](const common::UnitRecord& a, const common::UnitRecord& b) { return a.unit < b.unit; });
  return r;
}

}  // namespace dtu::agent
