#include "dtu/agent/record_builder.hpp"

#include <doctest/doctest.h>

using dtu::agent::build_device_record;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbInterface;
using dtu::agent::UsbInterfaceAssociation;

namespace {

UsbInterface itf(std::uint8_t number, std::uint8_t cls, std::uint8_t alternate = 0) {
  UsbInterface i{};
  i.number = number;
  i.alternate = alternate;
  i.cls = cls;
  return i;
}

// An interface with a full class triple.
UsbInterface itf3(std::uint8_t number, std::uint8_t cls, std::uint8_t subclass, std::uint8_t protocol) {
  UsbInterface i = itf(number, cls);
  i.subclass = subclass;
  i.protocol = protocol;
  return i;
}

}  // namespace

TEST_CASE("a multi-function device becomes one unit per interface with its function") {
  UsbDeviceInfo info{};
  info.port = "1-2";
  info.vid = 0x04b8;
  info.pid = 0x08a1;
  info.manufacturer = "EPSON";
  info.serial = std::nullopt;  // unreadable strings stay null
  info.interfaces = {itf(0, 0x07), itf3(1, 0xff, 0xff, 0xff), itf(2, 0x08)};
  auto r = build_device_record(info, "dtu-1", dtu::common::Stamp{7, 3, 42});
  CHECK(r.dtu == "dtu-1");
  CHECK(r.device == "1-2");
  CHECK(r.vid == 0x04b8);
  CHECK(r.stamp.seq == 3);
  CHECK_FALSE(r.serial.has_value());
  REQUIRE(r.units.size() == 3);
  CHECK(r.units[0].function == "printer");
  CHECK(r.units[1].function == "scanner");  // Epson's vendor-class scanner, named by the quirks table
  CHECK(r.units[2].function == "storage");
  CHECK(r.units[2].interfaces == std::vector<std::uint8_t>{2});
  for (const auto& u : r.units) CHECK(u.state == dtu::common::UnitState::free);
}

TEST_CASE("a vendor-class interface stays vendor unless the quirks table knows the device") {
  UsbDeviceInfo info{};
  info.port = "1-3";
  info.vid = 0x1234;  // not Epson
  info.pid = 0x0001;
  info.interfaces = {itf3(0, 0xff, 0xff, 0xff)};
  CHECK(build_device_record(info, "dtu-1", dtu::common::Stamp{1, 1, 1}).units[0].function == "vendor");
  info.vid = 0x04b8;
  info.interfaces = {itf(0, 0x07), itf3(1, 0xff, 0x00, 0x00)};  // Epson, but not the ff/ff/ff scanner
  CHECK(build_device_record(info, "dtu-1", dtu::common::Stamp{1, 1, 1}).units[1].function == "vendor");
}

TEST_CASE("an interface association forms one unit and alternate settings add none") {
  UsbDeviceInfo info{};
  info.port = "1-4";
  // A webcam: video control + streaming (associated), its alternate setting, and audio.
  info.interfaces = {itf(0, 0x0e), itf(1, 0x0e), itf(1, 0x0e, 1), itf(2, 0x01), itf(3, 0x01)};
  UsbInterfaceAssociation video{};
  video.first_interface = 0;
  video.count = 2;
  video.cls = 0x0e;
  UsbInterfaceAssociation audio{};
  audio.first_interface = 2;
  audio.count = 2;
  audio.cls = 0x01;
  info.associations = {video, audio};
  auto r = build_device_record(info, "dtu-1", {});
  REQUIRE(r.units.size() == 2);
  CHECK(r.units[0].unit == 0);
  CHECK(r.units[0].function == "video");
  CHECK(r.units[0].interfaces == std::vector<std::uint8_t>{0, 1});
  CHECK(r.units[1].unit == 2);
  CHECK(r.units[1].function == "audio");
  CHECK(r.units[1].interfaces == std::vector<std::uint8_t>{2, 3});
}

TEST_CASE("an interface number a faulty descriptor repeats is one unit, described by its first copy") {
  UsbDeviceInfo info{};
  info.port = "1-5";
  // Interface 0 twice with alternate setting 0 (libusb reports both), inside an association and out.
  info.interfaces = {itf(0, 0x07), itf(1, 0x08), itf(0, 0xff), itf(2, 0x0e), itf(2, 0x0e)};
  UsbInterfaceAssociation video{};
  video.first_interface = 2;
  video.count = 1;
  video.cls = 0x0e;
  info.associations = {video};
  auto r = build_device_record(info, "dtu-1", {});
  REQUIRE(r.units.size() == 3);
  CHECK(r.units[0].unit == 0);
  CHECK(r.units[0].function == "printer");
  CHECK(r.units[0].interfaces == std::vector<std::uint8_t>{0});
  CHECK(r.units[1].unit == 1);
  CHECK(r.units[2].unit == 2);
  CHECK(r.units[2].interfaces == std::vector<std::uint8_t>{2});
}
