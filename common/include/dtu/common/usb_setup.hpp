#pragma once
// UsbSetup: the 8-byte setup packet of a control transfer (USB 2.0 §9.3), in host byte order.
// One definition for every layer that speaks of control transfers: the in-band messages, the
// client library and the agent's USB backends. A plain value.

#include <cstdint>

namespace dtu::common {

struct UsbSetup {
  std::uint8_t request_type = 0;  // bmRequestType: bit 7 direction (1 = IN), bits 5-6 type, 0-4 recipient
  std::uint8_t request = 0;       // bRequest
  std::uint16_t value = 0;        // wValue
  std::uint16_t index = 0;        // wIndex
  std::uint16_t length = 0;       // wLength

  bool is_in() const { return (request_type & 0x80) != 0; }
  bool operator==(const UsbSetup&) const = default;
};

}  // namespace dtu::common
