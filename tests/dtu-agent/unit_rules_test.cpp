#include "dtu/agent/unit_rules.hpp"

#include <doctest/doctest.h>

#include "dtu/agent/record_builder.hpp"

using dtu::agent::apply_leases;
using dtu::agent::build_device_record;
using dtu::agent::conflicting_units;
using dtu::agent::Lease;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbInterface;
using dtu::agent::UsbQuirk;
using dtu::common::UnitState;

namespace {

UsbInterface itf(std::uint8_t number, std::uint8_t cls, std::vector<std::uint8_t> endpoints) {
  UsbInterface i{};
  i.number = number;
  i.cls = cls;
  for (auto address : endpoints) i.endpoints.push_back({address, 2, 512});
  return i;
}

Lease lease_on(std::uint32_t unit, const std::string& holder) {
  Lease l;
  l.id = "lease-" + std::to_string(unit);
  l.device = "1-2";
  l.unit = unit;
  l.interfaces = {static_cast<std::uint8_t>(unit)};
  l.holder = holder;
  return l;
}

// A printer/scanner/storage device whose scanner and storage functions share IN 0x84: a
// descriptor fault of some composite devices.
UsbDeviceInfo shared_endpoint_device() {
  UsbDeviceInfo d{};
  d.port = "1-2";
  d.vid = 0x1234;
  d.pid = 0x0002;
  d.interfaces = {itf(0, 0x07, {0x01, 0x82}), itf(1, 0x06, {0x03, 0x84}), itf(2, 0x08, {0x05, 0x84})};
  return d;
}

}  // namespace

TEST_CASE("units that share an endpoint exclude each other: the others stay free") {
  const UsbDeviceInfo device = shared_endpoint_device();
  auto record = build_device_record(device, "dtu-1", {1, 1, 1});
  CHECK(conflicting_units(device, record, 1) == std::set<std::uint32_t>{2});
  CHECK(conflicting_units(device, record, 2) == std::set<std::uint32_t>{1});
  CHECK(conflicting_units(device, record, 0).empty());
  CHECK(conflicting_units(device, record, 9).empty());  // unknown unit

  const Lease scanning = lease_on(1, "sane[7]@m1");
  apply_leases(record, device, {&scanning});
  CHECK(record.units[0].state == UnitState::free);
  CHECK(record.units[1].state == UnitState::allocated);
  CHECK(record.units[1].holder == "sane[7]@m1");
  CHECK(record.units[1].lease == "lease-1");
  CHECK(record.units[2].state == UnitState::unavailable);
  CHECK_FALSE(record.units[2].holder.has_value());

  apply_leases(record, device, {});  // released: everything free again, no stale holder
  for (const auto& u : record.units) {
    CHECK(u.state == UnitState::free);
    CHECK_FALSE(u.lease.has_value());
  }
}

TEST_CASE("a device the quirks table marks exclusive serves one unit at a time") {
  UsbDeviceInfo device{};
  device.port = "1-2";
  device.vid = 0xabcd;
  device.pid = 0x0001;
  device.interfaces = {itf(0, 0x07, {0x01}), itf(1, 0xff, {0x02}), itf(2, 0x08, {0x03})};
  const std::vector<UsbQuirk> quirks{{0xabcd, 0x0001, std::nullopt, std::nullopt, std::nullopt, std::nullopt, true, "test"}};
  auto record = build_device_record(device, "dtu-1", {1, 1, 1});
  CHECK(conflicting_units(device, record, 0, quirks) == std::set<std::uint32_t>{1, 2});
  CHECK(conflicting_units(device, record, 0).empty());  // the built-in table does not know it
  const Lease printing = lease_on(0, "cups[1]@m1");
  apply_leases(record, device, {&printing}, quirks);
  CHECK(record.units[0].state == UnitState::allocated);
  CHECK(record.units[1].state == UnitState::unavailable);
  CHECK(record.units[2].state == UnitState::unavailable);
}

TEST_CASE("the quirks table names Epson's vendor-class scanner interface") {
  UsbDeviceInfo device{};
  device.vid = 0x04b8;
  CHECK(dtu::agent::unit_function(device, 0xff, 0xff, 0xff) == "scanner");
  CHECK(dtu::agent::unit_function(device, 0xff, 0x00, 0x00) == "vendor");
  CHECK(dtu::agent::unit_function(device, 0x07, 0x01, 0x02) == "printer");
  device.vid = 0x03f0;
  CHECK(dtu::agent::unit_function(device, 0xff, 0xff, 0xff) == "vendor");
}
