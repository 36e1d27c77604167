#pragma once
// Table: plain-text tables for people (devmgrctl's default output). Columns are padded to their
// widest cell; nothing is truncated. Value type, not thread-safe.

#include <ostream>
#include <string>
#include <vector>

#include "dtu/common/records.hpp"

namespace dtu::services {

class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  // REQUIRES: cells.size() == number of headers.
  void add_row(std::vector<std::string> cells);
  void print(std::ostream& out) const;
  std::size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// The device table of `devmgrctl devices`: one row per device, its units summarised as
// "0:printer 1:scanner(allocated)".
Table device_table(const std::vector<common::DeviceRecord>& devices);

}  // namespace dtu::services
