#include "dtu/common/usb_classes.hpp"

#include <array>
#include <utility>

namespace dtu::common {
namespace {

// The USB-IF base class codes that name a function; every other code is "unknown".
constexpr std::array<std::pair<std::uint8_t, const char*>, 20> kFunctionNames{{
    {0x01, "audio"},         {0x02, "communications"},   {0x03, "hid"},        {0x05, "physical"},
    {0x06, "scanner"},  // still image: scanners and cameras (PTP)
    {0x07, "printer"},       {0x08, "storage"},          {0x09, "hub"},        {0x0a, "cdc-data"},
    {0x0b, "smartcard"},     {0x0d, "content-security"}, {0x0e, "video"},      {0x0f, "healthcare"},
    {0x10, "audio-video"},   {0x11, "billboard"},        {0xdc, "diagnostic"}, {0xe0, "wireless"},
    {0xef, "miscellaneous"}, {0xfe, "application"},      {0xff, "vendor"},
}};

}  // namespace

std::string usb_function_name(std::uint8_t cls, std::uint8_t /*subclass*/, std::uint8_t /*protocol*/) {
  for (const auto& [code, name] : kFunctionNames) {
    if (code == cls) return name;
  }
  return "unknown";
}

}  // namespace dtu::common
