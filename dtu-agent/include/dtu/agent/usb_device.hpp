#pragma once
// A USB device as a UsbBackend sees it: the device descriptor, its strings, the active
// configuration's interfaces (every alternate setting) with their endpoints, and its interface
// association descriptors. Plain values, copied freely; no thread affinity.
//
// These are backend facts, not records: the agent turns them into device and unit records
// (DESIGN.md §3) and stamps them.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dtu/common/usb_setup.hpp"

namespace dtu::agent {

// One endpoint descriptor. Bit 7 of `address` is the direction (1 = IN, device to host); bits
// 0-3 the endpoint number. Bits 0-1 of `attributes` are the transfer type (kUsbTransfer*).
struct UsbEndpoint {
  std::uint8_t address = 0;
  std::uint8_t attributes = 0;
  std::uint16_t max_packet_size = 0;

  bool operator==(const UsbEndpoint&) const = default;
};

inline constexpr std::uint8_t kUsbEndpointDirIn = 0x80;
inline constexpr std::uint8_t kUsbTransferTypeMask = 0x03;
inline constexpr std::uint8_t kUsbTransferControl = 0x00;
inline constexpr std::uint8_t kUsbTransferIsochronous = 0x01;
inline constexpr std::uint8_t kUsbTransferBulk = 0x02;
inline constexpr std::uint8_t kUsbTransferInterrupt = 0x03;

inline bool is_in_endpoint(std::uint8_t address) {
  return (address & kUsbEndpointDirIn) != 0;
}

// The setup packet of a control transfer: the one the in-band messages carry.
using UsbControlSetup = common::UsbSetup;

// One interface descriptor (one alternate setting of interface `number`).
struct UsbInterface {
  std::uint8_t number = 0;
  std::uint8_t alternate = 0;
  std::uint8_t cls = 0;
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;
  std::vector<UsbEndpoint> endpoints;

  bool operator==(const UsbInterface&) const = default;
};

// An interface association descriptor: interfaces first_interface .. first_interface+count-1 form
// one function (for instance a webcam's video control and streaming interfaces). Such a group is
// allocated as one unit.
struct UsbInterfaceAssociation {
  std::uint8_t first_interface = 0;
  std::uint8_t count = 0;
  std::uint8_t cls = 0;
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;

  bool operator==(const UsbInterfaceAssociation&) const = default;
};

struct UsbDeviceInfo {
  std::string port;  // stable port path per DTU, e.g. "1-1.4"; the device's identity on its DTU
  std::uint16_t vid = 0;
  std::uint16_t pid = 0;
  std::uint16_t bcd_device = 0;
  std::uint16_t bcd_usb = 0;
  std::uint8_t cls = 0;  // device class triple; 0/0/0 = defined per interface
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;
  std::optional<std::string> manufacturer;  // nullopt = absent or unreadable
  std::optional<std::string> product;
  std::optional<std::string> serial;
  std::uint8_t configuration = 0;  // active configuration value; 0 = unconfigured
  std::vector<UsbInterface> interfaces;
  std::vector<UsbInterfaceAssociation> associations;

  bool operator==(const UsbDeviceInfo&) const = default;
};

}  // namespace dtu::agent
