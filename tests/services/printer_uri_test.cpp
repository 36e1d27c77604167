#include "dtu/services/printer_uri.hpp"

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

using dtu::common::DeviceRecord;
using dtu::common::UnitRecord;
using dtu::services::PrinterUri;
using Outcome = dtu::services::PrinterResolution::Outcome;

namespace {

UnitRecord printer_unit(std::uint32_t number) {
  UnitRecord unit;
  unit.unit = number;
  unit.interfaces = {static_cast<std::uint8_t>(number)};
  unit.cls = 0x07;
  unit.subclass = 0x01;
  unit.protocol = 0x02;
  unit.function = "printer";
  return unit;
}

UnitRecord scanner_unit(std::uint32_t number) {
  UnitRecord unit;
  unit.unit = number;
  unit.interfaces = {static_cast<std::uint8_t>(number)};
  unit.cls = 0xff;
  unit.function = "scanner";
  return unit;
}

DeviceRecord printer(std::string dtu, std::string port, std::optional<std::string> serial) {
  DeviceRecord device;
  device.dtu = std::move(dtu);
  device.device = std::move(port);
  device.serial = std::move(serial);
  device.manufacturer = "EPSON";
  device.product = "Stylus Test Printer";
  device.units = {printer_unit(0)};
  return device;
}

PrinterUri parsed(const std::string& text) {
  auto uri = dtu::services::parse_printer_uri(text);
  REQUIRE_MESSAGE(uri.ok(), (uri.ok() ? "" : uri.error().describe()));
  return *uri;
}

}  // namespace

TEST_CASE("percent_encode keeps the unreserved characters and escapes every other byte") {
  CHECK(dtu::services::percent_encode("AZaz09-._~") == "AZaz09-._~");
  CHECK(dtu::services::percent_encode("a b/c%d=e") == "a%20b%2Fc%25d%3De");
  CHECK(dtu::services::percent_encode("\xc3\xa9") == "%C3%A9");
  CHECK(dtu::services::percent_encode("") == "");
}

TEST_CASE("percent_decode reads both hex cases and refuses a broken escape naming its offset") {
  CHECK(*dtu::services::percent_decode("a%20b%2fc") == "a b/c");
  CHECK(*dtu::services::percent_decode("%C3%a9") == "\xc3\xa9");
  for (const char* bad : {"%", "a%2", "%zz", "ab%g0"}) {
    CAPTURE(bad);
    auto decoded = dtu::services::percent_decode(bad);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.error().code == dtu::common::Errc::invalid_argument);
    CHECK(decoded.error().detail.find("bad escape at offset") != std::string::npos);
  }
}

TEST_CASE("make_printer_uri names the device by serial when it has one, else by port") {
  CHECK(dtu::services::make_printer_uri(printer("dtu-1", "1-1", "PRN0001"), 0) == "dtu://dtu-1/sn=PRN0001/0");
  CHECK(dtu::services::make_printer_uri(printer("dtu-1", "1-2.1", std::nullopt), 3) == "dtu://dtu-1/1-2.1/3");
  // An empty serial is no serial: it could not tell two printers apart.
  CHECK(dtu::services::make_printer_uri(printer("dtu-1", "1-2", ""), 0) == "dtu://dtu-1/1-2/0");
  CHECK(dtu::services::make_printer_uri(printer("dtu-1", "1-1", "A B/C=1"), 0) ==
        "dtu://dtu-1/sn=A%20B%2FC%3D1/0");
}

TEST_CASE("a printer URI survives format and parse unchanged") {
  std::vector<PrinterUri> uris;
  PrinterUri by_serial;
  by_serial.dtu = "lab.dtu-7";
  by_serial.serial = "X/Y Z%\xc3\xa9;\"";
  by_serial.unit = 4294967295U;
  uris.push_back(by_serial);
  PrinterUri by_port;
  by_port.dtu = "d1";
  by_port.port = "1-2.3.4";
  by_port.unit = 0;
  uris.push_back(by_port);
  PrinterUri port_like_serial;  // a port path that starts like a serial stays a port
  port_like_serial.dtu = "d1";
  port_like_serial.port = "sn=1";
  uris.push_back(port_like_serial);
  for (const auto& uri : uris) {
    const std::string text = dtu::services::format_printer_uri(uri);
    CAPTURE(text);
    CHECK(parsed(text) == uri);
  }
  CHECK(dtu::services::format_printer_uri(port_like_serial) == "dtu://d1/sn%3D1/0");
}

TEST_CASE("parse_printer_uri reads a serial, a port and the unit") {
  const PrinterUri serial = parsed("dtu://dtu-1/sn=PRN0001/0");
  CHECK(serial.dtu == "dtu-1");
  CHECK(serial.serial == "PRN0001");
  CHECK(serial.port.empty());
  CHECK(serial.by_serial());
  CHECK(serial.unit == 0);
  const PrinterUri port = parsed("DTU://dtu-2/1-2.1/2");
  CHECK(port.dtu == "dtu-2");
  CHECK(port.port == "1-2.1");
  CHECK_FALSE(port.by_serial());
  CHECK(port.unit == 2);
}

TEST_CASE("parse_printer_uri refuses bad URIs saying why") {
  struct Case {
    const char* uri;
    const char* why;
  };
  const std::vector<Case> cases = {
      {"usb://EPSON/Stylus?serial=1", "not a dtu:// URI"},
      {"dtu:/dtu-1/1-1/0", "not a dtu:// URI"},
      {"", "not a dtu:// URI"},
      {"dtu://dtu-1/1-1", "expected dtu://<dtu>/<device>/<unit>"},
      {"dtu://dtu-1", "expected dtu://<dtu>/<device>/<unit>"},
      {"dtu://dtu-1/1-1/0/extra", "too many path components"},
      {"dtu:///1-1/0", "missing the DTU"},
      {"dtu://dtu-1//0", "missing the device"},
      {"dtu://dtu-1/1-1/", "missing the unit"},
      {"dtu://dtu-1/sn=/0", "missing the serial number"},
      {"dtu://dtu-1/sn=%4/0", "bad escape at offset"},
      {"dtu://dt%zzu/1-1/0", "bad escape at offset"},
      {"dtu://dtu-1/1-1/x", "unit 'x' is not a number"},
      {"dtu://dtu-1/1-1/-1", "unit '-1' is not a number"},
      {"dtu://dtu-1/1-1/1x", "unit '1x' is not a number"},
      {"dtu://dtu-1/1-1/4294967296", "is not a number from 0 to 4294967295"},
      {"dtu://dtu-1/1-1/0?waitprinter=no", "a query or fragment is not allowed"},
      {"dtu://dtu-1/1-1/0#frag", "a query or fragment is not allowed"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.uri);
    auto uri = dtu::services::parse_printer_uri(c.uri);
    REQUIRE_FALSE(uri.ok());
    CHECK(uri.error().code == dtu::common::Errc::invalid_argument);
    CHECK(uri.error().detail.find(c.why) != std::string::npos);
    CHECK(uri.error().detail.find(std::string("'") + c.uri + "'") != std::string::npos);
  }
}

TEST_CASE("a port URI resolves to that port of that DTU only") {
  const std::vector<DeviceRecord> devices = {printer("d1", "1-1", std::nullopt),
                                             printer("d2", "1-1", std::nullopt)};
  const auto found = dtu::services::resolve_printer(parsed("dtu://d2/1-1/0"), devices);
  REQUIRE(found.outcome == Outcome::found);
  CHECK(found.device.dtu == "d2");
  CHECK(dtu::services::resolve_printer(parsed("dtu://d3/1-1/0"), devices).outcome == Outcome::absent);
  CHECK(dtu::services::resolve_printer(parsed("dtu://d1/1-2/0"), devices).outcome == Outcome::absent);
  CHECK(dtu::services::resolve_printer(parsed("dtu://d1/1-1/1"), devices).outcome == Outcome::absent);
}

TEST_CASE("a serial URI prefers the named DTU and follows the printer elsewhere only when it is the one") {
  SUBCASE("on the named DTU, at another port, even with the same serial elsewhere") {
    const std::vector<DeviceRecord> devices = {printer("d2", "1-1", "S1"), printer("d1", "1-4", "S1"),
                                               printer("d3", "1-1", "S1")};
    const auto found = dtu::services::resolve_printer(parsed("dtu://d1/sn=S1/0"), devices);
    REQUIRE(found.outcome == Outcome::found);
    CHECK(found.device.dtu == "d1");
    CHECK(found.device.device == "1-4");
  }
  SUBCASE("moved to the only other DTU that has the serial") {
    const std::vector<DeviceRecord> devices = {printer("d2", "1-3", "S1"), printer("d1", "1-1", "S2")};
    const auto found = dtu::services::resolve_printer(parsed("dtu://d1/sn=S1/0"), devices);
    REQUIRE(found.outcome == Outcome::moved);
    CHECK(found.device.dtu == "d2");
    CHECK(found.device.device == "1-3");
    CHECK(found.candidates.empty());
  }
  SUBCASE("several printers elsewhere share the serial: none is chosen, all are named in order") {
    const std::vector<DeviceRecord> devices = {printer("d3", "1-1", "S1"), printer("d2", "1-3", "S1"),
                                               printer("d2", "1-2", "S1"), printer("d1", "1-1", "S2")};
    const auto found = dtu::services::resolve_printer(parsed("dtu://d1/sn=S1/0"), devices);
    REQUIRE(found.outcome == Outcome::ambiguous);
    REQUIRE(found.candidates.size() == 3);
    CHECK(found.candidates[0].dtu == "d2");
    CHECK(found.candidates[0].device == "1-2");
    CHECK(found.candidates[1].dtu == "d2");
    CHECK(found.candidates[1].device == "1-3");
    CHECK(found.candidates[2].dtu == "d3");
  }
  SUBCASE("nowhere, or without that printer unit") {
    std::vector<DeviceRecord> devices = {printer("d1", "1-1", "S2")};
    DeviceRecord scanner = printer("d1", "1-2", "S1");
    scanner.units = {scanner_unit(0)};
    devices.push_back(scanner);
    DeviceRecord other_scanner = scanner;  // a second device with the serial but no printer unit
    other_scanner.dtu = "d2";
    devices.push_back(other_scanner);
    devices.push_back(printer("d3", "1-1", "S1"));
    const auto found = dtu::services::resolve_printer(parsed("dtu://d1/sn=S1/0"), devices);
    CHECK(found.outcome == Outcome::moved);
    CHECK(found.device.dtu == "d3");
    devices.pop_back();
    CHECK(dtu::services::resolve_printer(parsed("dtu://d1/sn=S1/0"), devices).outcome == Outcome::absent);
  }
}

TEST_CASE("ieee1284_value finds a key in any case and trims the value") {
  const std::string id = "MFG:EPSON;CMD:ESCPL2,BDC; mdl : Stylus Test ;CLS:PRINTER;";
  CHECK(dtu::services::ieee1284_value(id, {"MFG", "MANUFACTURER"}) == "EPSON");
  CHECK(dtu::services::ieee1284_value(id, {"MODEL", "MDL"}) == "Stylus Test");
  CHECK_FALSE(dtu::services::ieee1284_value(id, {"DES"}));
  CHECK_FALSE(dtu::services::ieee1284_value("garbage", {"MFG"}));
}

TEST_CASE("make and model come from the device id, else from the record") {
  DeviceRecord device = printer("d1", "1-1", "S1");
  CHECK(dtu::services::printer_make_and_model(device, "MFG:HP;MDL:LaserJet 4;") == "HP LaserJet 4");
  CHECK(dtu::services::printer_make_and_model(device, "MFG:HP;MDL:HP LaserJet 4;") == "HP LaserJet 4");
  CHECK(dtu::services::printer_make_and_model(device, "") == "EPSON Stylus Test Printer");
  device.manufacturer.reset();
  device.product.reset();
  CHECK(dtu::services::printer_make_and_model(device, "") == "Unknown USB printer");
  CHECK(dtu::services::record_device_id(device) == "MFG:Unknown;MDL:Unknown;CLS:PRINTER;");
  device.manufacturer = "A;B:C";
  CHECK(dtu::services::record_device_id(device) == "MFG:A B C;MDL:Unknown;CLS:PRINTER;");
}

TEST_CASE("a listing line is the backend format with four quoted fields") {
  const DeviceRecord device = printer("d1", "1-1", "PRN0001");
  CHECK(dtu::services::printer_listing_line(device, 0, "MFG:EPSON;MDL:Stylus Test Printer;") ==
        "direct dtu://d1/sn=PRN0001/0 \"EPSON Stylus Test Printer\" \"Stylus Test Printer on DTU d1 "
        "(dtubroker)\" "
        "\"MFG:EPSON;MDL:Stylus Test Printer;\"");
  DeviceRecord odd = device;
  odd.product = "Say \"hi\"\\";
  const std::string line = dtu::services::printer_listing_line(odd, 0, "");
  CHECK(line.find("\"Say 'hi'  on DTU d1 (dtubroker)\"") != std::string::npos);
}
