#include "dtu/services/table.hpp"

#include <doctest/doctest.h>

#include <sstream>

TEST_CASE("Table pads columns to their widest cell") {
  dtu::services::Table table({"A", "LONGER"});
  table.add_row({"wide-cell", "x"});
  std::ostringstream out;
  table.print(out);
  CHECK(out.str() == "A          LONGER\nwide-cell  x\n");
}

TEST_CASE("the device table summarises units and shows missing strings as '-'") {
  dtu::common::DeviceRecord d;
  d.dtu = "dtu-1";
  d.device = "1-2";
  d.vid = 0x04b8;
  d.pid = 0x08a1;
  d.owner = "m1";
  dtu::common::UnitRecord printer;
  printer.unit = 0;
  printer.function = "printer";
  dtu::common::UnitRecord scanner;
  scanner.unit = 1;
  scanner.function = "scanner";
  scanner.state = dtu::common::UnitState::allocated;
  d.units = {printer, scanner};
  std::ostringstream out;
  dtu::services::device_table({d}).print(out);
  const std::string text = out.str();
  CHECK(text.find("04b8:08a1") != std::string::npos);
  CHECK(text.find("0:printer 1:scanner(allocated)") != std::string::npos);
  CHECK(text.find("  -  ") != std::string::npos);
}
