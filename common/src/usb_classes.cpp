#include "dtu/common/usb_classes.hpp"

namespace dtu::common {

std::string usb_function_name(std::uint8_t cls, std::uint8_t /*subclass*/, std::uint8_t /*protocol*/) {
  switch (cls) {
    case 0x01: return "audio";
    case 0x02: return "communications";
    case 0x03: return "hid";
    case 0x05: return "physical";
    case 0x06: return "scanner";  // still-image class: scanners and cameras (PTP)
    case 0x07: return "printer";
    case 0x08: return "storage";
    case 0x09: return "hub";
    case 0x0a: return "cdc-data";
    case 0x0b: return "smartcard";
    case 0x0d: return "content-security";
    case 0x0e: return "video";
    case 0x0f: return "healthcare";
    case 0x10: return "audio-video";
    case 0x11: return "billboard";
    case 0xdc: return "diagnostic";
    case 0xe0: return "wireless";
    case 0xef: return "miscellaneous";
    case 0xfe: return "application";
    case 0xff: return "vendor";
    default: return "unknown";
  }
}

}  // namespace dtu::common
