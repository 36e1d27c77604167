#include "dtu/services/printer_uri.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <tuple>

#include "dtu/common/check.hpp"

namespace dtu::services {
namespace {

constexpr std::string_view kSerialPrefix = "sn=";
constexpr char kHexDigits[] = "0123456789ABCDEF";

bool is_unreserved(unsigned char c) {
  return std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

common::Error bad_uri(std::string_view text, const std::string& why) {
  return {common::Errc::invalid_argument, "bad printer URI '" + std::string(text) + "': " + why};
}

// Splits `path` at '/' into its components (empty ones kept).
std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  while (true) {
    const auto slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) return parts;
    path.remove_prefix(slash + 1);
  }
}

std::string trimmed(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t");
  return std::string(text.substr(first, last - first + 1));
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

bool starts_with_icase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && iequals(text.substr(0, prefix.size()), prefix);
}

// A record string for a device id field: ':' and ';' would end the field early.
std::string id_field(const std::optional<std::string>& value) {
  if (!value || value->empty()) return "Unknown";
  std::string out = *value;
  std::replace_if(
      out.begin(), out.end(), [](char c) { return c == ':' || c == ';'; }, ' ');
  return out;
}

// One quoted word of a listing line.
std::string quoted_field(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"') {
      out += '\'';
    } else if (c == '\\' || static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string percent_encode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (is_unreserved(byte)) {
      out += c;
    } else {
      out += '%';
      out += kHexDigits[byte >> 4];
      out += kHexDigits[byte & 0x0f];
    }
  }
  return out;
}

common::Result<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    const int high = i + 1 < text.size() ? hex_value(text[i + 1]) : -1;
    const int low = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
    if (high < 0 || low < 0) {
      return common::Error{common::Errc::invalid_argument, "bad escape at offset " + std::to_string(i) +
                                                               " of '" + std::string(text) +
                                                               "' ('%' must be followed by two hex digits)"};
    }
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

std::string make_printer_uri(const common::DeviceRecord& device, std::uint32_t unit) {
  PrinterUri uri;
  uri.dtu = device.dtu;
  uri.unit = unit;
  if (device.serial && !device.serial->empty()) {
    uri.serial = *device.serial;
  } else {
    uri.port = device.device;
  }
  return format_printer_uri(uri);
}

std::string format_printer_uri(const PrinterUri& uri) {
  DTU_CHECK(uri.serial.empty() != uri.port.empty());
  const std::string device =
      uri.by_serial() ? std::string(kSerialPrefix) + percent_encode(uri.serial) : percent_encode(uri.port);
  return std::string(kPrinterUriScheme) + "://" + percent_encode(uri.dtu) + "/" + device + "/" +
         std::to_string(uri.unit);
}

common::Result<PrinterUri> parse_printer_uri(std::string_view text) {
  const std::string prefix = std::string(kPrinterUriScheme) + "://";
  if (!starts_with_icase(text, prefix)) return bad_uri(text, "not a dtu:// URI");
  const std::string_view rest = text.substr(prefix.size());
  if (rest.find_first_of("?#") != std::string_view::npos) {
    return bad_uri(text, "a query or fragment is not allowed");
  }
  const auto parts = split_path(rest);
  if (parts.size() < 3) return bad_uri(text, "expected dtu://<dtu>/<device>/<unit>");
  if (parts.size() > 3) return bad_uri(text, "too many path components after the unit");
  const char* const names[] = {"DTU", "device", "unit"};
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) return bad_uri(text, std::string("missing the ") + names[i]);
  }

  PrinterUri uri;
  auto dtu = percent_decode(parts[0]);
  if (!dtu) return bad_uri(text, dtu.error().detail);
  uri.dtu = std::move(*dtu);

  std::string_view device = parts[1];
  const bool by_serial = device.starts_with(kSerialPrefix);
  if (by_serial) device.remove_prefix(kSerialPrefix.size());
  auto decoded = percent_decode(device);
  if (!decoded) return bad_uri(text, decoded.error().detail);
  if (decoded->empty()) return bad_uri(text, "missing the serial number after 'sn='");
  (by_serial ? uri.serial : uri.port) = std::move(*decoded);

  const std::string_view unit = parts[2];
  const auto [end, ec] = std::from_chars(unit.data(), unit.data() + unit.size(), uri.unit);
  if (ec != std::errc{} || end != unit.data() + unit.size()) {
    return bad_uri(text, "unit '" + std::string(unit) + "' is not a number from 0 to 4294967295");
  }
  return uri;
}

bool has_printer_unit(const common::DeviceRecord& device, std::uint32_t unit) {
  return std::any_of(device.units.begin(), device.units.end(), [&](const common::UnitRecord& u) {
    return u.unit == unit && (u.cls == kPrinterClass || u.function == "printer");
  });
}

PrinterResolution resolve_printer(const PrinterUri& uri, const std::vector<common::DeviceRecord>& devices) {
  using Outcome = PrinterResolution::Outcome;
  PrinterResolution resolution;
  if (!uri.by_serial()) {
    for (const auto& device : devices) {
      if (device.dtu == uri.dtu && device.device == uri.port && has_printer_unit(device, uri.unit)) {
        resolution.outcome = Outcome::found;
        resolution.device = device;
        return resolution;
      }
    }
    return resolution;
  }
  std::vector<common::DeviceRecord> elsewhere;
  for (const auto& device : devices) {
    if (device.serial != uri.serial || !has_printer_unit(device, uri.unit)) continue;
    if (device.dtu == uri.dtu) {
      resolution.outcome = Outcome::found;
      resolution.device = device;
      return resolution;
    }
    elsewhere.push_back(device);
  }
  if (elsewhere.size() == 1) {
    resolution.outcome = Outcome::moved;
    resolution.device = std::move(elsewhere.front());
  } else if (elsewhere.size() > 1) {
    std::sort(elsewhere.begin(), elsewhere.end(), [](const auto& a, const auto& b) {
      return std::tie(a.dtu, a.device) < std::tie(b.dtu, b.device);
    });
    resolution.outcome = Outcome::ambiguous;
    resolution.candidates = std::move(elsewhere);
  }
  return resolution;
}

std::optional<std::string> ieee1284_value(std::string_view device_id,
                                          std::initializer_list<std::string_view> keys) {
  for (const auto key : keys) {
    std::string_view rest = device_id;
    while (!rest.empty()) {
      const auto semi = rest.find(';');
      const std::string_view field = rest.substr(0, semi);
      rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
      const auto colon = field.find(':');
      if (colon == std::string_view::npos) continue;
      if (iequals(trimmed(field.substr(0, colon)), key)) {
        std::string value = trimmed(field.substr(colon + 1));
        if (!value.empty()) return value;
      }
    }
  }
  return std::nullopt;
}

std::string record_device_id(const common::DeviceRecord& device) {
  return "MFG:" + id_field(device.manufacturer) + ";MDL:" + id_field(device.product) + ";CLS:PRINTER;";
}

std::string printer_make_and_model(const common::DeviceRecord& device, std::string_view device_id) {
  auto make = ieee1284_value(device_id, {"MFG", "MANUFACTURER"});
  auto model = ieee1284_value(device_id, {"MDL", "MODEL"});
  if (!make && device.manufacturer && !device.manufacturer->empty()) make = device.manufacturer;
  if (!model && device.product && !device.product->empty()) model = device.product;
  if (!make && !model) return "Unknown USB printer";
  if (!make) return *model;
  if (!model) return *make;
  if (starts_with_icase(*model, *make)) return *model;
  return *make + " " + *model;
}

std::string printer_info(const common::DeviceRecord& device, std::string_view device_id) {
  const std::string name = device.product && !device.product->empty()
                               ? *device.product
                               : printer_make_and_model(device, device_id);
  return name + " on DTU " + device.dtu + " (dtubroker)";
}

std::string printer_listing_line(const common::DeviceRecord& device, std::uint32_t unit,
                                 std::string_view device_id) {
  return "direct " + make_printer_uri(device, unit) + " " +
         quoted_field(printer_make_and_model(device, device_id)) + " " +
         quoted_field(printer_info(device, device_id)) + " " + quoted_field(device_id);
}

}  // namespace dtu::services
