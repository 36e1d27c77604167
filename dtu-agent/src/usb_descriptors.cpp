#include "dtu/agent/usb_descriptors.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace dtu::agent {

namespace {

constexpr std::uint8_t kDescriptorTypeInterfaceAssociation = 0x0B;
constexpr int kInterfaceAssociationLength = 8;

}  // namespace

void collect_associations(const unsigned char* extra, int length, std::vector<UsbInterfaceAssociation>& out) {
  if (extra == nullptr) return;
  int at = 0;
  while (at + 2 <= length) {
    const int size = extra[at];
    if (size < 2 || at + size > length) return;  // malformed tail: stop, keep what we have
    if (extra[at + 1] == kDescriptorTypeInterfaceAssociation && size >= kInterfaceAssociationLength) {
      UsbInterfaceAssociation iad{extra[at + 2], extra[at + 3], extra[at + 4], extra[at + 5], extra[at + 6]};
      const bool seen = std::any_of(out.begin(), out.end(), [&iad](const UsbInterfaceAssociation& known) {
        return known.first_interface == iad.first_interface;
      });
      if (!seen) out.push_back(iad);
    }
    at += size;
  }
}

void describe_configuration(const libusb_config_descriptor& config, UsbDeviceInfo& info) {
  info.configuration = config.bConfigurationValue;
  collect_associations(config.extra, config.extra_length, info.associations);
  for (int i = 0; i < config.bNumInterfaces; ++i) {
    const libusb_interface& interface = config.interface[i];
    for (int a = 0; a < interface.num_altsetting; ++a) {
      const libusb_interface_descriptor& alt = interface.altsetting[a];
      UsbInterface out;
      out.number = alt.bInterfaceNumber;
      out.alternate = alt.bAlternateSetting;
      out.cls = alt.bInterfaceClass;
      out.subclass = alt.bInterfaceSubClass;
      out.protocol = alt.bInterfaceProtocol;
      collect_associations(alt.extra, alt.extra_length, info.associations);
      for (int e = 0; e < alt.bNumEndpoints; ++e) {
        const libusb_endpoint_descriptor& endpoint = alt.endpoint[e];
        out.endpoints.push_back(
            UsbEndpoint{endpoint.bEndpointAddress, endpoint.bmAttributes, endpoint.wMaxPacketSize});
        collect_associations(endpoint.extra, endpoint.extra_length, info.associations);
      }
      info.interfaces.push_back(std::move(out));
    }
  }
}

}  // namespace dtu::agent
