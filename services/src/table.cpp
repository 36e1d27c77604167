#include "dtu/services/table.hpp"

#include <algorithm>
#include <array>
#include <cstdio>

#include "dtu/common/check.hpp"

namespace dtu::services {

using nlohmann::json;

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

std::string format_duration_ms(std::uint64_t ms) {
  constexpr std::uint64_t kMinute = 60 * 1000;
  constexpr std::uint64_t kHour = 60 * kMinute;
  char text[48];
  if (ms < kMinute) {
    std::snprintf(text, sizeof text, "%llu.%llus", static_cast<unsigned long long>(ms / 1000),
                  static_cast<unsigned long long>(ms % 1000 / 100));
  } else if (ms < kHour) {
    std::snprintf(text, sizeof text, "%llum%02llus", static_cast<unsigned long long>(ms / kMinute),
                  static_cast<unsigned long long>(ms % kMinute / 1000));
  } else {
    std::snprintf(text, sizeof text, "%lluh%02llum", static_cast<unsigned long long>(ms / kHour),
                  static_cast<unsigned long long>(ms % kHour / kMinute));
  }
  return text;
}

namespace {

// A JSON scalar as a person reads it in a "name=value" field: strings bare unless they hold
// blanks, quotes or nothing (then JSON-quoted, so the field stays one word).
std::string scalar_text(const json& value) {
  if (!value.is_string()) return value.dump();
  const auto& s = value.get_ref<const std::string&>();
  const bool plain = !s.empty() && s.find_first_of(" \t\n\"'=") == std::string::npos;
  return plain ? s : value.dump();
}

// "a,b,c" for a list of scalars, the compact JSON otherwise.
std::string value_text(const json& value) {
  if (value.is_array()) {
    std::string out;
    for (const auto& item : value) {
      if (item.is_structured()) return value.dump();
      if (!out.empty()) out += ',';
      out += scalar_text(item);
    }
    return out.empty() ? "[]" : out;
  }
  if (value.is_object()) return value.dump();
  return scalar_text(value);
}

void append_field(std::string& out, const std::string& name, const std::string& text) {
  if (!out.empty()) out += ' ';
  out += name + "=" + text;
}

// Every field of `object` as "name=value"; nested objects are flattened to "outer.inner=value".
void append_fields(std::string& out, const json& object, const std::string& prefix) {
  for (const auto& [name, value] : object.items()) {
    if (value.is_object() && !value.empty()) {
      append_fields(out, value, prefix + name + ".");
    } else {
      append_field(out, prefix + name, value_text(value));
    }
  }
}

}  // namespace

std::string finder_summary(const common::Finder& finder) {
  // The order of the finder format in finder.hpp; the scope fields are written last, together.
  static constexpr std::array<const char*, 15> kFields = {
      "vid",      "pid",          "bcd_device",    "class",         "subclass",
      "protocol", "unit_class",   "unit_subclass", "unit_protocol", "function",
      "serial",   "manufacturer", "product",       "dtu",           "usbredir"};
  const json j = finder;
  std::string out;
  for (const char* field : kFields) {
    if (const auto it = j.find(field); it != j.end()) append_field(out, field, value_text(*it));
  }
  switch (finder.scope) {
    case common::FinderScope::interconnect:
      break;
    case common::FinderScope::dtu:
      append_field(out, "scope", "dtu:" + finder.scope_dtu.value_or("?"));
      break;
    case common::FinderScope::session:
      append_field(out, "scope", "session:" + scalar_text(json(finder.session.value_or("?"))));
      break;
    case common::FinderScope::bus:
      append_field(out, "scope", "bus");
      break;
  }
  return out.empty() ? "(any device)" : out;
}

Table device_table(const std::vector<common::DeviceRecord>& devices) {
  Table table({"DTU", "DEVICE", "ID", "MANUFACTURER", "PRODUCT", "SERIAL", "UNITS", "OWNER"});
  for (const auto& d : devices) {
    std::string units;
    for (const auto& u : d.units) {
      if (!units.empty()) units += ' ';
      units += std::to_string(u.unit) + ":" + u.function;
      if (u.state != common::UnitState::free)
        units += "(" + std::string(common::unit_state_name(u.state)) + ")";
    }
    table.add_row({d.dtu, d.device, common::hex16(d.vid) + ":" + common::hex16(d.pid),
                   d.manufacturer.value_or("-"), d.product.value_or("-"), d.serial.value_or("-"),
                   units.empty() ? "-" : units, d.owner});
  }
  return table;
}

namespace {

std::string optional_cell(const std::optional<std::uint32_t>& value) {
  return value ? std::to_string(*value) : std::string("-");
}

std::string millis_cell(const std::optional<double>& ms) {
  if (!ms) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.2fms", *ms);
  return text;
}

}  // namespace

Table group_table(const std::vector<common::GroupMemberInfo>& members) {
  Table table({"ID", "ADDRESS", "STATE", "INCARNATION", "RTT", "OFFSET", "HEARD", "DTUS", "DEVICES", "FINDERS"});
  for (const auto& m : members) {
    table.add_row({m.self ? m.id + " *" : m.id, m.address, m.state,
                   m.incarnation == 0 ? std::string("-") : std::to_string(m.incarnation), millis_cell(m.rtt_ms),
                   millis_cell(m.offset_ms),
                   m.last_heard_ms_ago ? format_duration_ms(*m.last_heard_ms_ago) + " ago" : std::string("-"),
                   optional_cell(m.dtus), optional_cell(m.devices),
                   m.self ? std::string("-") : std::to_string(m.finders_held) + "/" + std::to_string(m.finders_sent)});
  }
  return table;
}

Table finder_table(const std::vector<common::FinderInfo>& finders) {
  Table table({"CLIENT", "UID", "ID", "FINDER", "MATCHES"});
  for (const auto& f : finders) {
    table.add_row({f.client + "[" + std::to_string(f.pid) + "]", std::to_string(f.uid),
                   std::to_string(f.finder_id), finder_summary(f.finder), std::to_string(f.matches.size())});
  }
  return table;
}

Table lease_table(const std::vector<common::LeaseInfo>& leases) {
  Table table({"LEASE", "DTU", "DEVICE", "UNIT", "HOLDER", "UID", "EXPIRES IN", "KEEP"});
  for (const auto& l : leases) {
    table.add_row({l.lease, l.dtu, l.device, std::to_string(l.unit), l.holder, std::to_string(l.uid),
                   format_duration_ms(l.expires_in_ms), l.keep ? "yes" : "no"});
  }
  return table;
}

Table session_table(const std::vector<common::SessionInfo>& sessions) {
  Table table({"SESSION", "USER", "DTU", "SINCE"});
  for (const auto& s : sessions) {
    table.add_row({s.session, s.user, s.dtu, format_duration_ms(s.attached_ms_ago) + " ago"});
  }
  return table;
}

Table policy_rule_table(const json& policy) {
  Table table({"#", "NAME", "ACTION", "MATCH", "SETTINGS"});
  if (!policy.is_object()) return table;
  const auto rules = policy.find("rules");
  if (rules == policy.end() || !rules->is_array()) return table;
  std::size_t number = 0;
  for (const auto& rule : *rules) {
    ++number;
    if (!rule.is_object()) {
      table.add_row({std::to_string(number), "-", "-", "-", rule.dump()});
      continue;
    }
    std::string match;
    std::string settings;
    json rest = rule;
    if (const auto it = rule.find("match"); it != rule.end()) {
      if (it->is_object()) {
        append_fields(match, *it, "");
      } else {
        match = it->dump();
      }
    }
    for (const char* known : {"name", "action", "match"}) rest.erase(known);
    append_fields(settings, rest, "");
    const auto text = [&](const char* field) {
      const auto it = rule.find(field);
      return it == rule.end() ? std::string("-") : value_text(*it);
    };
    table.add_row({std::to_string(number), text("name"), text("action"), match.empty() ? "(any unit)" : match,
                   settings.empty() ? "-" : settings});
  }
  return table;
}

std::vector<std::string> policy_settings(const json& policy) {
  std::vector<std::string> lines;
  if (!policy.is_object()) return lines;
  for (const auto& [name, value] : policy.items()) {
    if (name == "rules") continue;
    std::string text;
    if (value.is_object() && !value.empty()) {
      append_fields(text, value, "");
    } else {
      text = value_text(value);
    }
    lines.push_back(name + ": " + text);
  }
  return lines;
}

}  // namespace dtu::services
