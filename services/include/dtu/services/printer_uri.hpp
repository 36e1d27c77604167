#pragma once
// Printer URIs: the dtu:// device URI of a CUPS queue on a DTU printer, shared by the `dtu`
// CUPS backend, dtu-print and the tests. Pure functions on values; thread-safe.
//
//   dtu://<dtu>/<device>/<unit>
//
//  - <dtu>: the id of the DTU the printer was found on.
//  - <device>: "sn=<serial>" when the device record has a (non-empty) serial number, else the
//    port path ("1-2.1"). A serial survives a move to another port or DTU; a port path does not.
//  - <unit>: the printer unit's number (its first interface number), decimal.
//  - Each component is percent-encoded: RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~)
//    are kept, every other byte becomes %XX (upper-case hex). The '=' of "sn=" is literal; the
//    serial after it is encoded like the rest.
//
// Resolution at print time (resolve_printer): a port path names that port on that DTU. A serial
// names the device with that serial (and a printer unit <unit>) on the named DTU when it is
// there, else the one device with it on another DTU of the group (the queue follows its
// printer). Several devices with that serial elsewhere (cheap printers often share one) are
// ambiguous: nothing is chosen, so a job never prints at another desk by a guess.
//
// Listing (backend(7), "direct <uri> "make and model" "info" "device id""):
// printer_make_and_model / printer_info / printer_device_id build the quoted fields.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"

namespace dtu::services {

inline constexpr std::string_view kPrinterUriScheme = "dtu";
// USB printer class (bInterfaceClass 07).
inline constexpr std::uint8_t kPrinterClass = 0x07;

// What a dtu:// URI names. Exactly one of `serial` and `port` is non-empty.
struct PrinterUri {
  std::string dtu;     // the DTU the queue was made for (decoded)
  std::string serial;  // the device's serial number when the URI names one (decoded)
  std::string port;    // the port path when the URI names a port (decoded)
  std::uint32_t unit = 0;

  bool by_serial() const { return !serial.empty(); }
  friend bool operator==(const PrinterUri&, const PrinterUri&) = default;
};

// Percent-encodes every byte outside the RFC 3986 unreserved set.
std::string percent_encode(std::string_view text);
// Decodes %XX escapes (either hex case). Errc::invalid_argument naming the offset for a '%' not
// followed by two hex digits.
common::Result<std::string> percent_decode(std::string_view text);

// The URI of printer unit `unit` of `device` (by serial when it has one, else by port).
std::string make_printer_uri(const common::DeviceRecord& device, std::uint32_t unit);
// The URI text of `uri`. REQUIRES: exactly one of uri.serial / uri.port non-empty.
std::string format_printer_uri(const PrinterUri& uri);
// Parses a dtu:// URI. Errc::invalid_argument with a detail a person understands ("not a dtu://
// URI", "missing the unit", "bad escape at …", "unit 'x' is not a number", …) for anything else.
// A trailing query or fragment is refused; an empty component is refused.
common::Result<PrinterUri> parse_printer_uri(std::string_view text);

// Whether `device` has a printer unit numbered `unit` (a unit of class 07, or function "printer").
bool has_printer_unit(const common::DeviceRecord& device, std::uint32_t unit);

// Which device a URI resolves to among `devices` (the current matches of a printer finder, any
// order).
struct PrinterResolution {
  enum class Outcome {
    found,      // where the URI says (a serial URI: on the named DTU, maybe at another port)
    moved,      // serial URIs only: not on the named DTU; the one device elsewhere with the serial
    ambiguous,  // serial URIs only: not on the named DTU; several devices elsewhere have the serial
    absent,     // nothing fits
  };
  Outcome outcome = Outcome::absent;
  common::DeviceRecord device;  // found / moved: the printer
  // ambiguous: the devices with the serial and a printer unit <unit>, in (dtu, port) order.
  std::vector<common::DeviceRecord> candidates;
};
PrinterResolution resolve_printer(const PrinterUri& uri, const std::vector<common::DeviceRecord>& devices);

// A value from an IEEE 1284 device id ("MFG:HP;MDL:LaserJet 4;CMD:PCL;"): the first of `keys`
// present (keys compared case-insensitively, value trimmed of blanks). Absent when none is.
std::optional<std::string> ieee1284_value(std::string_view device_id,
                                          std::initializer_list<std::string_view> keys);
// "MFG:<manufacturer>;MDL:<product>;CLS:PRINTER;" built from the record ("Unknown" for a missing
// string), ':' and ';' in the strings replaced by blanks: the device id of a listing line (the
// listing asks no printer; a job's side channel asks the printer itself).
std::string record_device_id(const common::DeviceRecord& device);
// "<make> <model>": MFG/MDL of the device id when present (the model alone when it already
// starts with the make), else manufacturer + product of the record, else "Unknown USB printer".
std::string printer_make_and_model(const common::DeviceRecord& device, std::string_view device_id);
// "<product> on DTU <dtu> (dtubroker)" (the product, else the make and model).
std::string printer_info(const common::DeviceRecord& device, std::string_view device_id);
// A backend(7) device line: direct <uri> "<make and model>" "<info>" "<device id>" (no newline);
// a double quote inside a field becomes ' and a backslash or control character a blank, so each
// field stays one quoted word.
std::string printer_listing_line(const common::DeviceRecord& device, std::uint32_t unit,
                                 std::string_view device_id);

}  // namespace dtu::services
