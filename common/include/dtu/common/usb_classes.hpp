#pragma once
// USB interface class codes → function names ("printer", "scanner", "storage", …): the `function`
// field of a unit record (DESIGN.md §3) and of finders (§4). Pure functions; thread-safe.

#include <cstdint>
#include <string>

namespace dtu::common {

// The function name of a USB class triple, from the base class code alone (the USB-IF class
// table); subclass and protocol are accepted so that finer names can be added without changing
// callers. Class 0x06 (still image) is "scanner"; an unassigned class is "unknown".
std::string usb_function_name(std::uint8_t cls, std::uint8_t subclass, std::uint8_t protocol);

}  // namespace dtu::common
