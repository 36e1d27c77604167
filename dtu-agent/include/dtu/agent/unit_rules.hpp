#pragma once
// Unit rules (DESIGN.md §3): what a unit is called and which units of one device exclude each
// other. The DTU applies them; the manager only sees their result in the unit records.
//
//  - Function names come from the USB class codes, corrected by a quirks table for devices whose
//    descriptors say less than they are: an Epson multi-function device's scanner is a
//    vendor-specific interface (ff/ff/ff), reported as "scanner".
//  - Allocating a unit makes `unavailable` every sibling that shares an endpoint address with it
//    (a descriptor fault some composite devices have: two functions on one endpoint cannot be
//    driven by two holders), and every sibling of a device the quirks table marks exclusive (one
//    function at a time).
//
// Pure functions over plain values; thread-safe.

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dtu/agent/lease_table.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/records.hpp"

namespace dtu::agent {

// One quirk: a device (vid, and pid unless any) and optionally an interface class triple.
struct UsbQuirk {
  std::uint16_t vid = 0;
  std::optional<std::uint16_t> pid;  // nullopt = every product of the vendor
  std::optional<std::uint8_t> cls;   // interface class to match; nullopt = the whole device
  std::optional<std::uint8_t> subclass;
  std::optional<std::uint8_t> protocol;
  std::optional<std::string> function;  // the name to report for a matching interface
  bool exclusive = false;               // the device serves one unit at a time
  const char* why = "";
};

// The built-in table.
std::span<const UsbQuirk> builtin_quirks();

// The function name of an interface (or association) with this class triple on `device`.
std::string unit_function(const UsbDeviceInfo& device, std::uint8_t cls, std::uint8_t subclass,
                          std::uint8_t protocol, std::span<const UsbQuirk> quirks = builtin_quirks());

// The units of `record` that allocating `unit` makes unavailable (never `unit` itself).
std::set<std::uint32_t> conflicting_units(const UsbDeviceInfo& device, const common::DeviceRecord& record,
                                          std::uint32_t unit, std::span<const UsbQuirk> quirks = builtin_quirks());

// Sets state, holder and lease of every unit of `record` from the leases held on the device:
// leased units are allocated, units conflicting with a leased one unavailable, the rest free.
void apply_leases(common::DeviceRecord& record, const UsbDeviceInfo& device, const std::vector<const Lease*>& leases,
                  std::span<const UsbQuirk> quirks = builtin_quirks());

}  // namespace dtu::agent
