#include "dtu/services/table.hpp"

#include <algorithm>

#include "dtu/common/check.hpp"

namespace dtu::services {

void Table::add_row(std::vector<std::string> cells) {
  DTU_CHECK(cells.size() == headers_.size());
  rows_.push_back(std::move(cells));
}

void Table::print(std::ostream& out) const {
  std::vector<std::size_t> widths(headers_.size());
  for (std::size_t i = 0; i < headers_.size(); ++i) widths[i] = headers_[i].size();
  for (const auto& row : rows_) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    out << line << '\n';
  };
  print_row(headers_);
  for (const auto& row : rows_) print_row(row);
}

Table device_table(const std::vector<common::DeviceRecord>& devices) {
  Table table({"DTU", "DEVICE", "ID", "MANUFACTURER", "PRODUCT", "SERIAL", "UNITS", "OWNER"});
  for (const auto& d : devices) {
    std::string units;
    for (const auto& u : d.units) {
      if (!units.empty()) units += ' ';
      units += std::to_string(u.unit) + ":" + u.function;
      if (u.state != common::UnitState::free) units += "(" + std::string(common::unit_state_name(u.state)) + ")";
    }
    table.add_row({d.dtu, d.device, common::hex16(d.vid) + ":" + common::hex16(d.pid), d.manufacturer.value_or("-"),
                   d.product.value_or("-"), d.serial.value_or("-"), units.empty() ? "-" : units, d.owner});
  }
  return table;
}

}  // namespace dtu::services
