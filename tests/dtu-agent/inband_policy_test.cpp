#include "dtu/agent/inband_policy.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <ostream>  // doctest prints std::error_code
#include <string>

namespace dtu::agent {
namespace {

using common::Errc;
using common::UsbSetup;

// An MFP: printer (interface 0, with an alternate setting), scanner (1), and a video function
// made of interfaces 2-3 (one association).
UsbDeviceInfo mfp() {
  UsbDeviceInfo d;
  d.port = "1-2";
  d.interfaces = {
      {0, 0, 0x07, 1, 2, {{0x01, 0x02, 512}, {0x82, 0x02, 512}}},
      {0, 1, 0x07, 1, 3, {{0x01, 0x02, 512}, {0x82, 0x02, 512}, {0x83, 0x03, 8}}},
      {1, 0, 0xff, 0xff, 0xff, {{0x04, 0x02, 512}, {0x85, 0x02, 512}}},
      {2, 0, 0x0e, 1, 0, {{0x86, 0x03, 16}}},
      {3, 0, 0x0e, 2, 0, {{0x87, 0x01, 1024}}},
  };
  d.associations = {{2, 2, 0x0e, 3, 0}};
  return d;
}

Lease lease_of(std::uint32_t unit, std::vector<std::uint8_t> interfaces) {
  Lease l;
  l.id = "0123456789abcdef";
  l.device = "1-2";
  l.unit = unit;
  l.interfaces = std::move(interfaces);
  return l;
}

Errc code_of(const common::Result<void>& r) {
  return r.ok() ? Errc::ok : static_cast<Errc>(r.error().code.value());
}

}  // namespace

TEST_CASE("lease_scope takes every endpoint of every alternate of the leased interfaces, and no other") {
  const LeaseScope printer = lease_scope(lease_of(0, {0}), mfp());
  CHECK(printer.interfaces == std::vector<std::uint8_t>{0});
  CHECK(printer.endpoints.size() == 3);  // 0x01, 0x82 and the alternate's 0x83
  CHECK(printer.endpoints.contains(0x83));
  CHECK_FALSE(printer.endpoints.contains(0x04));
  CHECK(printer.unit_class == 0x07);
  CHECK(printer.printer_interface == std::optional<std::uint8_t>(0));

  const LeaseScope video = lease_scope(lease_of(2, {2, 3}), mfp());
  CHECK(video.unit_class == 0x0e);  // the association's class
  CHECK(video.unit_subclass == 3);
  CHECK(video.endpoints.size() == 2);
  CHECK_FALSE(video.printer_interface.has_value());
}

TEST_CASE("check_endpoint refuses endpoints of other units and checks the direction") {
  const LeaseScope scanner = lease_scope(lease_of(1, {1}), mfp());
  CHECK(check_endpoint(scanner, 0x04, false).ok());
  CHECK(check_endpoint(scanner, 0x85, true).ok());
  const auto other = check_endpoint(scanner, 0x01, false);
  REQUIRE_FALSE(other.ok());
  CHECK(code_of(other) == Errc::refused);
  CHECK(other.error().detail.find("0x01") != std::string::npos);
  CHECK(other.error().detail.find("[1]") != std::string::npos);
  CHECK(code_of(check_endpoint(scanner, 0x85, false)) == Errc::invalid_argument);
  CHECK(code_of(check_endpoint(scanner, 0x00, false)) == Errc::invalid_argument);
  CHECK(code_of(check_endpoint(scanner, 0x80, true)) == Errc::invalid_argument);
}

TEST_CASE("check_control lets standard reads, class and vendor requests reach the device, nothing else") {
  const LeaseScope scanner = lease_scope(lease_of(1, {1}), mfp());
  CHECK(check_control(scanner, UsbSetup{0x80, 6, 0x0100, 0, 18}).ok());                 // GET_DESCRIPTOR
  CHECK(check_control(scanner, UsbSetup{0x80, 0, 0, 0, 2}).ok());                       // GET_STATUS
  CHECK(check_control(scanner, UsbSetup{0x80, 8, 0, 0, 1}).ok());                       // GET_CONFIGURATION
  CHECK(code_of(check_control(scanner, UsbSetup{0x00, 9, 1, 0, 0})) == Errc::refused);  // SET_CONFIGURATION
  CHECK(code_of(check_control(scanner, UsbSetup{0x00, 5, 7, 0, 0})) == Errc::refused);  // SET_ADDRESS
  CHECK(code_of(check_control(scanner, UsbSetup{0x00, 3, 1, 0, 0})) == Errc::refused);  // SET_FEATURE
  CHECK(check_control(scanner, UsbSetup{0xc0, 0x0c, 0, 0, 4}).ok());                    // vendor, device
  CHECK(check_control(scanner, UsbSetup{0x40, 0x0c, 0, 0, 0}).ok());
  CHECK(code_of(check_control(scanner, UsbSetup{0xe0, 0, 0, 0, 0})) == Errc::refused);  // reserved type
  CHECK(code_of(check_control(scanner, UsbSetup{0xa3, 0, 0, 1, 4})) == Errc::refused);  // recipient other
}

TEST_CASE("check_control needs a leased interface or endpoint in wIndex") {
  const LeaseScope scanner = lease_scope(lease_of(1, {1}), mfp());
  CHECK(check_control(scanner, UsbSetup{0xc1, 1, 0, 0x0001, 4}).ok());
  CHECK(check_control(scanner, UsbSetup{0x01, 11, 0, 0x0001, 0}).ok());  // SET_INTERFACE on its own interface
  CHECK(code_of(check_control(scanner, UsbSetup{0xc1, 1, 0, 0x0000, 4})) == Errc::refused);
  CHECK(check_control(scanner, UsbSetup{0x02, 1, 0, 0x0085, 0}).ok());  // CLEAR_FEATURE(HALT) on 0x85
  CHECK(code_of(check_control(scanner, UsbSetup{0x02, 1, 0, 0x0082, 0})) == Errc::refused);

  // The printer class names the interface of GET_DEVICE_ID in wIndex's high byte.
  auto device = mfp();
  device.interfaces[2].cls = 0x07;  // make interface 1 a second printer
  const LeaseScope second = lease_scope(lease_of(1, {1}), device);
  CHECK(check_control(second, UsbSetup{0xa1, 0, 0, 0x0100, 1023}).ok());
  CHECK(code_of(check_control(second, UsbSetup{0xa1, 0, 0, 0x0000, 1023})) == Errc::refused);
}

TEST_CASE("device_id_request addresses the printer interface: other units are refused") {
  const auto request = device_id_request(lease_scope(lease_of(0, {0}), mfp()));
  REQUIRE(request.ok());
  CHECK(request->request_type == 0xa1);
  CHECK(request->request == 0);
  CHECK(request->value == 0);
  CHECK(request->index == 0x0000);
  CHECK(request->length == 1023);

  auto device = mfp();
  device.interfaces[2].cls = 0x07;
  const auto second = device_id_request(lease_scope(lease_of(1, {1}), device));
  REQUIRE(second.ok());
  CHECK(second->index == 0x0100);

  const auto scanner = device_id_request(lease_scope(lease_of(1, {1}), mfp()));
  REQUIRE_FALSE(scanner.ok());
  CHECK(static_cast<Errc>(scanner.error().code.value()) == Errc::refused);
}

TEST_CASE("parse_device_id strips the big-endian length and survives a lying one") {
  // GET_DEVICE_ID's answer: a 2-byte big-endian length, then the text.
  const auto answer = [](std::size_t length, const std::string& text) {
    std::vector<std::uint8_t> out(text.size() + 2);
    out[0] = static_cast<std::uint8_t>(length >> 8);
    out[1] = static_cast<std::uint8_t>(length & 0xff);
    std::copy(text.begin(), text.end(), out.begin() + 2);
    return out;
  };
  const std::string id = "MFG:X;MDL:Y;";
  CHECK(parse_device_id(answer(id.size() + 2, id)) == std::optional<std::string>(id));
  CHECK(parse_device_id(answer(0xff00, id)) == std::optional<std::string>(id));  // longer than what came
  CHECK(parse_device_id(answer(6, id)) == std::optional<std::string>("MFG:"));
  CHECK_FALSE(parse_device_id(answer(2, "")).has_value());
  CHECK_FALSE(parse_device_id({}).has_value());
  CHECK_FALSE(parse_device_id(answer(3, std::string(1, '\0'))).has_value());  // only a NUL
}

}  // namespace dtu::agent
