#pragma once
// The in-band channel's access rules: what a lease lets its holder touch on the device
// (DESIGN.md §2 and §5: allocation is use, not ownership). A LeaseScope is computed once per
// channel from the lease and the device's descriptors; the check functions say whether one
// transfer stays inside it. Pure functions over values; thread-safe.
//
// Control transfers (endpoint 0 is shared by every unit of the device):
//   - standard requests to the device: only GET_STATUS, GET_DESCRIPTOR and GET_CONFIGURATION
//     (reading is harmless; SET_ADDRESS, SET_CONFIGURATION, SET_FEATURE … would change the
//     device under the other units' holders and the agent);
//   - class and vendor requests to the device: allowed, because scanners and many vendor
//     protocols address the device as a whole. Trade-off: such a request can affect other units
//     of the same device; the lease holder is trusted that far;
//   - any request to an interface: wIndex's low byte must be a leased interface (printer-class
//     GET_DEVICE_ID, which puts the interface in the high byte, is checked there instead);
//   - any request to an endpoint: wIndex's low byte must be a leased endpoint;
//   - recipient "other" or reserved, and the reserved request type: refused.
// Bulk, interrupt and isochronous transfers: the endpoint must belong to a leased interface and
// have the transfer's direction.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dtu/agent/lease_table.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

inline constexpr std::uint8_t kUsbClassPrinter = 0x07;

struct LeaseScope {
  std::string device;
  std::uint32_t unit = 0;
  std::vector<std::uint8_t> interfaces;           // leased interface numbers, sorted
  std::map<std::uint8_t, UsbEndpoint> endpoints;  // by address: every alternate of every leased interface
  std::uint8_t unit_class = 0;  // the unit's class (its association's, or interface alt 0's)
  std::uint8_t unit_subclass = 0;
  std::uint8_t unit_protocol = 0;
  // The leased printer-class interface (alternate 0) when the unit is a printer.
  std::optional<std::uint8_t> printer_interface;
};

// The scope of `lease` on `device` (the device the lease's port holds now).
LeaseScope lease_scope(const Lease& lease, const UsbDeviceInfo& device);

// "[0, 1]": the leased interfaces, for error texts.
std::string describe_interfaces(const std::vector<std::uint8_t>& interfaces);

// OK when `endpoint` is a leased endpoint with the wanted direction. Errc::refused (naming the
// endpoint and the leased interfaces) when it belongs to no leased interface;
// Errc::invalid_argument when its direction is wrong or it is endpoint 0.
common::Result<void> check_endpoint(const LeaseScope& scope, std::uint8_t endpoint, bool want_in);

// OK when the control request stays inside the scope (rules above); Errc::refused otherwise,
// with a reason naming the request.
common::Result<void> check_control(const LeaseScope& scope, const common::UsbSetup& setup);

// The printer-class GET_DEVICE_ID request (USB printer class 1.1 §4.2.1) for the scope's printer
// interface, alternate 0. Errc::refused when the unit is not a printer (class 7).
common::Result<common::UsbSetup> device_id_request(const LeaseScope& scope);

// The device id out of GET_DEVICE_ID's answer: the first two bytes are its big-endian length
// (which counts them). nullopt when the answer holds no id.
std::optional<std::string> parse_device_id(const std::vector<std::uint8_t>& answer);

}  // namespace dtu::agent
