#include "dtu/common/usb_classes.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

using dtu::common::usb_function_name;

TEST_CASE("usb_function_name names every assigned interface class") {
  struct Case {
    std::uint8_t cls;
    const char* name;
  };
  const Case cases[] = {
      {0x01, "audio"},
      {0x02, "communications"},
      {0x03, "hid"},
      {0x05, "physical"},
      {0x06, "scanner"},
      {0x07, "printer"},
      {0x08, "storage"},
      {0x09, "hub"},
      {0x0a, "cdc-data"},
      {0x0b, "smartcard"},
      {0x0d, "content-security"},
      {0x0e, "video"},
      {0x0f, "healthcare"},
      {0x10, "audio-video"},
      {0x11, "billboard"},
      {0xdc, "diagnostic"},
      {0xe0, "wireless"},
      {0xef, "miscellaneous"},
      {0xfe, "application"},
      {0xff, "vendor"},
  };
  for (const auto& c : cases) {
    CAPTURE(static_cast<int>(c.cls));
    CHECK(usb_function_name(c.cls, 0, 0) == c.name);
  }
}

TEST_CASE("usb_function_name calls unassigned classes unknown") {
  const std::uint8_t unassigned[] = {0x00, 0x04, 0x0c, 0x12, 0x80, 0xdb, 0xfd};
  for (std::uint8_t cls : unassigned) {
    CAPTURE(static_cast<int>(cls));
    CHECK(usb_function_name(cls, 0, 0) == "unknown");
  }
}

TEST_CASE("usb_function_name depends on the base class, not on subclass or protocol") {
  CHECK(usb_function_name(0x07, 0x01, 0x02) == "printer");
  CHECK(usb_function_name(0x08, 0x06, 0x50) == "storage");
  CHECK(usb_function_name(0xff, 0xff, 0xff) == "vendor");
  CHECK(usb_function_name(0x06, 0x01, 0x01) == "scanner");
}
