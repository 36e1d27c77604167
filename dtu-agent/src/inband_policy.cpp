#include "dtu/agent/inband_policy.hpp"

#include <algorithm>
#include <cstdio>

namespace dtu::agent {

using common::Errc;
using common::Error;

namespace {

// bmRequestType fields (USB 2.0 §9.3.1).
constexpr std::uint8_t kTypeMask = 0x60;
constexpr std::uint8_t kTypeStandard = 0x00;
constexpr std::uint8_t kTypeClass = 0x20;
constexpr std::uint8_t kTypeReserved = 0x60;
constexpr std::uint8_t kRecipientMask = 0x1f;
constexpr std::uint8_t kRecipientDevice = 0;
constexpr std::uint8_t kRecipientInterface = 1;
constexpr std::uint8_t kRecipientEndpoint = 2;

// Standard requests (USB 2.0 table 9-4) a holder may send to the device: reads only.
constexpr std::uint8_t kGetStatus = 0;
constexpr std::uint8_t kGetDescriptor = 6;
constexpr std::uint8_t kGetConfiguration = 8;

// Printer class (USB printer class 1.1 §4.2): GET_DEVICE_ID, and the size of the buffer it gets.
constexpr std::uint8_t kPrinterGetDeviceId = 0;
constexpr std::uint8_t kPrinterGetDeviceIdType = 0xa1;  // IN, class, interface
constexpr std::uint16_t kDeviceIdMaxLength = 1023;

std::string hex8(std::uint8_t v) {
  char text[8];
  std::snprintf(text, sizeof text, "0x%02x", v);
  return text;
}

std::string describe(const common::UsbSetup& s) {
  return "control request (bmRequestType " + hex8(s.request_type) + ", bRequest " +
         std::to_string(s.request) + ", wIndex " + std::to_string(s.index) + ")";
}

bool leased(const LeaseScope& scope, std::uint8_t interface) {
  return std::binary_search(scope.interfaces.begin(), scope.interfaces.end(), interface);
}

}  // namespace

LeaseScope lease_scope(const Lease& lease, const UsbDeviceInfo& device) {
  LeaseScope scope;
  scope.device = lease.device;
  scope.unit = lease.unit;
  scope.interfaces = lease.interfaces;
  std::sort(scope.interfaces.begin(), scope.interfaces.end());
  scope.interfaces.erase(std::unique(scope.interfaces.begin(), scope.interfaces.end()),
                         scope.interfaces.end());

  bool from_association = false;
  for (const auto& a : device.associations) {
    if (a.first_interface == lease.unit) {
      scope.unit_class = a.cls;
      scope.unit_subclass = a.subclass;
      scope.unit_protocol = a.protocol;
      from_association = true;
    }
  }
  for (const auto& itf : device.interfaces) {
    if (!leased(scope, itf.number)) continue;
    for (const auto& ep : itf.endpoints) scope.endpoints.emplace(ep.address, ep);
    if (itf.alternate != 0) continue;
    if (!from_association && itf.number == lease.unit) {
      scope.unit_class = itf.cls;
      scope.unit_subclass = itf.subclass;
      scope.unit_protocol = itf.protocol;
    }
    if (itf.cls == kUsbClassPrinter && !scope.printer_interface) scope.printer_interface = itf.number;
  }
  return scope;
}

std::string describe_interfaces(const std::vector<std::uint8_t>& interfaces) {
  std::string text = "[";
  for (std::size_t i = 0; i < interfaces.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(interfaces[i]);
  }
  return text + "]";
}

common::Result<void> check_endpoint(const LeaseScope& scope, std::uint8_t endpoint, bool want_in) {
  if ((endpoint & 0x0f) == 0) {
    return Error(Errc::invalid_argument,
                 "endpoint " + hex8(endpoint) + " is the control endpoint: use usb_control");
  }
  const auto it = scope.endpoints.find(endpoint);
  if (it == scope.endpoints.end()) {
    // Threat: a holder reaching into another unit of the same device (another holder's data).
    return Error(Errc::refused, "endpoint " + hex8(endpoint) + " is not on the leased interfaces " +
                                    describe_interfaces(scope.interfaces) + " of " + scope.device);
  }
  if (is_in_endpoint(endpoint) != want_in) {
    return Error(Errc::invalid_argument, "endpoint " + hex8(endpoint) + " is an " +
                                             (is_in_endpoint(endpoint) ? "IN" : "OUT") + " endpoint");
  }
  return {};
}

common::Result<void> check_control(const LeaseScope& scope, const common::UsbSetup& setup) {
  const std::uint8_t type = setup.request_type & kTypeMask;
  const std::uint8_t recipient = setup.request_type & kRecipientMask;
  if (type == kTypeReserved) return Error(Errc::refused, describe(setup) + " uses the reserved request type");
  switch (recipient) {
    case kRecipientDevice:
      if (type != kTypeStandard) return {};  // class and vendor requests to the device: see the header
      if (setup.is_in() && (setup.request == kGetStatus || setup.request == kGetDescriptor ||
                            setup.request == kGetConfiguration)) {
        return {};
      }
      // Threat: a holder reconfiguring the whole device (SET_CONFIGURATION, SET_ADDRESS, …)
      // under the other units' holders and the agent.
      return Error(Errc::refused,
                   "standard " + describe(setup) +
                       " to the device is not allowed in-band (only GET_STATUS, GET_DESCRIPTOR, "
                       "GET_CONFIGURATION)");
    case kRecipientInterface: {
      std::uint8_t interface = static_cast<std::uint8_t>(setup.index & 0xff);
      // Printer GET_DEVICE_ID (class, IN, bRequest 0) names the interface in wIndex's high byte and
      // the alternate setting in its low byte; nothing else of a printer lease is read that way.
      if (type == kTypeClass && setup.is_in() && scope.unit_class == kUsbClassPrinter &&
          setup.request == kPrinterGetDeviceId) {
        interface = static_cast<std::uint8_t>(setup.index >> 8);
      }
      if (!leased(scope, interface)) {
        return Error(Errc::refused, describe(setup) + " names interface " + std::to_string(interface) +
                                        ", not one of the leased interfaces " +
                                        describe_interfaces(scope.interfaces));
      }
      return {};
    }
    case kRecipientEndpoint: {
      const auto endpoint = static_cast<std::uint8_t>(setup.index & 0xff);
      if (!scope.endpoints.contains(endpoint)) {
        return Error(Errc::refused, describe(setup) + " names endpoint " + hex8(endpoint) +
                                        ", not an endpoint of the leased interfaces " +
                                        describe_interfaces(scope.interfaces));
      }
      return {};
    }
    default:
      return Error(Errc::refused,
                   describe(setup) + " has a recipient other than the device, an interface or an endpoint");
  }
}

common::Result<common::UsbSetup> device_id_request(const LeaseScope& scope) {
  if (scope.unit_class != kUsbClassPrinter || !scope.printer_interface) {
    return Error(Errc::refused, "unit " + std::to_string(scope.unit) + " of " + scope.device +
                                    " is not a printer (class " + std::to_string(scope.unit_class) + ")");
  }
  common::UsbSetup s;
  s.request_type = kPrinterGetDeviceIdType;
  s.request = kPrinterGetDeviceId;
  s.value = 0;  // the first configuration index
  // Interface in the high byte, alternate setting (0: the agent never selects another) in the low.
  s.index = static_cast<std::uint16_t>(*scope.printer_interface << 8);
  s.length = kDeviceIdMaxLength;
  return s;
}

std::optional<std::string> parse_device_id(const std::vector<std::uint8_t>& answer) {
  if (answer.size() <= 2) return std::nullopt;
  // The length counts its own two bytes; trust it only as far as the bytes received.
  std::size_t length = (std::size_t{answer[0]} << 8) | answer[1];
  if (length < 2 || length > answer.size()) length = answer.size();
  std::string id(answer.begin() + 2, answer.begin() + static_cast<std::ptrdiff_t>(length));
  while (!id.empty() && id.back() == '\0') id.pop_back();
  if (id.empty()) return std::nullopt;
  return id;
}

}  // namespace dtu::agent
