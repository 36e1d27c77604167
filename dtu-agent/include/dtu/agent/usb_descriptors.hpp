#pragma once
// What the agent reads out of a configuration descriptor that libusb has parsed: the interfaces
// (one entry per alternate setting), their endpoints, and the interface associations. The bytes
// come from the device, so nothing in them is trusted: counts, numbers and the "extra" bytes may
// be anything (tests/fuzz/usb_descriptors_fuzz.cpp). Pure functions; LibusbBackend calls them.

#include <vector>

#include <libusb.h>

#include "dtu/agent/usb_device.hpp"

namespace dtu::agent {

// Appends to `out` the interface association descriptors found in `extra`, the bytes libusb did
// not parse after some descriptor (libusb 1.0.26 leaves associations there). The bytes are read
// as a chain of descriptors, each starting with its length; a length below 2 or past the end
// stops the walk and keeps what came before. An association whose first interface is already in
// `out` is skipped: the first one wins.
void collect_associations(const unsigned char* extra, int length, std::vector<UsbInterfaceAssociation>& out);

// Fills info.configuration, info.interfaces and info.associations from `config`. Associations
// are collected from the extra bytes of the configuration, then of each alternate setting and
// its endpoints, in descriptor order.
void describe_configuration(const libusb_config_descriptor& config, UsbDeviceInfo& info);

}  // namespace dtu::agent
