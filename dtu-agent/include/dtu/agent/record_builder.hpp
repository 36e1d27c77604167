#pragma once
// Turns what a USB backend sees into the device record a DTU reports (DESIGN.md §3): the port
// path as the device id, descriptor fields, strings (null when unreadable), and one unit per
// interface (alternate setting 0), or per interface association. Pure functions.

#include <string>

#include "dtu/agent/usb_device.hpp"
#include "dtu/common/records.hpp"

namespace dtu::agent {

common::DeviceRecord build_device_record(const UsbDeviceInfo& info, const std::string& dtu,
                                         const common::Stamp& stamp);

}  // namespace dtu::agent
