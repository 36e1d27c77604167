#include "dtu/agent/usb_descriptors.hpp"

#include <vector>

#include <doctest/doctest.h>

using dtu::agent::collect_associations;
using dtu::agent::describe_configuration;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbInterfaceAssociation;

namespace {

using Bytes = std::vector<unsigned char>;

// An interface association descriptor (USB ECN "Interface Association Descriptors"): 8 bytes.
Bytes iad(unsigned char first, unsigned char count, unsigned char cls) {
  return {8, 0x0B, first, count, cls, 0x01, 0x00, 0x00};
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

std::vector<UsbInterfaceAssociation> associations(const Bytes& extra) {
  std::vector<UsbInterfaceAssociation> out;
  collect_associations(extra.data(), static_cast<int>(extra.size()), out);
  return out;
}

}  // namespace

TEST_CASE("associations are read from a chain of class-specific descriptors") {
  const Bytes cs_interface{5, 0x24, 0x00, 0x10, 0x01};
  const auto found = associations(concat({cs_interface, iad(0, 2, 0x0e), iad(2, 2, 0x02)}));
  REQUIRE(found.size() == 2);
  CHECK(found[0] == UsbInterfaceAssociation{0, 2, 0x0e, 0x01, 0x00});
  CHECK(found[1] == UsbInterfaceAssociation{2, 2, 0x02, 0x01, 0x00});
}

TEST_CASE("a malformed descriptor ends the walk and keeps what came before it") {
  CHECK(associations(concat({iad(0, 2, 0x0e), Bytes{1, 0x0B}, iad(2, 2, 0x02)})).size() == 1);
  CHECK(associations(concat({iad(0, 2, 0x0e), Bytes{40, 0x0B, 2, 2, 0x02, 0, 0, 0}})).size() == 1);
  // Seven bytes of type 0x0B are not an association; the walk goes on past them.
  CHECK(associations(concat({Bytes{7, 0x0B, 0, 2, 0x0e, 0, 0}, iad(3, 1, 0x03)})).size() == 1);
  CHECK(associations(Bytes{8, 0x0B, 0, 2}).empty());
}

TEST_CASE("the first association for an interface wins, across the whole configuration") {
  const Bytes in_config = iad(0, 2, 0x0e);
  const Bytes in_interface = concat({iad(0, 3, 0x02), iad(3, 1, 0x01)});
  libusb_interface_descriptor alt{};
  alt.bInterfaceNumber = 0;
  alt.bInterfaceClass = 0x0e;
  alt.extra = in_interface.data();
  alt.extra_length = static_cast<int>(in_interface.size());
  libusb_interface interface{&alt, 1};
  libusb_config_descriptor config{};
  config.bConfigurationValue = 2;
  config.bNumInterfaces = 1;
  config.interface = &interface;
  config.extra = in_config.data();
  config.extra_length = static_cast<int>(in_config.size());

  UsbDeviceInfo info;
  describe_configuration(config, info);
  CHECK(info.configuration == 2);
  REQUIRE(info.interfaces.size() == 1);
  CHECK(info.interfaces[0].cls == 0x0e);
  REQUIRE(info.associations.size() == 2);
  CHECK(info.associations[0].cls == 0x0e);
  CHECK(info.associations[1].first_interface == 3);
}
