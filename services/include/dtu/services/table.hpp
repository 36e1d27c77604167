#pragma once
// Table: plain-text tables for people (devmgrctl's default output). Columns are padded to their
// widest cell; nothing is truncated. Value type, not thread-safe.
// The *_table functions below build devmgrctl's tables from the manager's replies; they are pure.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/finder.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/service_messages.hpp"

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

// A duration for a table cell, rounded down: "0.8s", "59.9s" under a minute, "4m05s" under an
// hour, "2h03m" beyond.
std::string format_duration_ms(std::uint64_t ms);

// A finder on one line, its fields in the order of the finder format (finder.hpp) as
// "name=value", lists joined with ',', strings with blanks or quotes JSON-quoted, the scope as
// "scope=session:S", "scope=dtu:D" or "scope=bus" (the default, interconnect, is not shown):
// "function=printer scope=session:s1". The empty finder is "(any device)".
std::string finder_summary(const common::Finder& finder);

// The device table of `devmgrctl devices`: one row per device, its units summarised as
// "0:printer 1:scanner(allocated)".
Table device_table(const std::vector<common::DeviceRecord>& devices);

// `devmgrctl finders`: CLIENT ("name[pid]"), UID, ID (the client's finder id), FINDER (the
// summary above), MATCHES (how many devices it matches now).
Table finder_table(const std::vector<common::FinderInfo>& finders);

// `devmgrctl leases`: LEASE, DTU, DEVICE, UNIT, HOLDER, UID, EXPIRES IN, KEEP ("yes" / "no").
Table lease_table(const std::vector<common::LeaseInfo>& leases);

// `devmgrctl group`: ID (self marked "*"), ADDRESS, STATE, INCARNATION, RTT, OFFSET, HEARD
// ("0.8s ago"), DTUS, DEVICES, FINDERS ("held/sent": finders of that member this manager holds /
// distinct finders this manager forwarded to it); "-" where unknown.
Table group_table(const std::vector<common::GroupMemberInfo>& members);
// `devmgrctl sessions`: SESSION, USER, DTU, SINCE ("4m05s ago").
Table session_table(const std::vector<common::SessionInfo>& sessions);

// `devmgrctl policy` (the format is in docs/policy.md): one row per rule of the policy's "rules"
// array, numbered from 1 in the order they are tried (first match wins): #, NAME, ACTION, MATCH
// (the match's fields as "name=value", like finder_summary; "(any unit)" when it has none) and
// SETTINGS (the rule's other fields, e.g. lease_ms=120000 reason="..."). A policy without a
// "rules" array gives an empty table.
Table policy_rule_table(const nlohmann::json& policy);

// The policy's top-level settings other than its rules, one "name: value" line each in name
// order; an object's fields are written as "name=value" ("defaults: lease_ms=60000 ...").
std::vector<std::string> policy_settings(const nlohmann::json& policy);

}  // namespace dtu::services
