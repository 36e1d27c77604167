#include "dtu/devmgr/group_config.hpp"

#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include <asio/ip/address.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/records.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;

namespace {

std::optional<asio::ip::address> ip_of(const std::string& host) {
  std::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return std::nullopt;
  return address;
}

// Why `address` cannot be a mesh address, or empty.
std::string mesh_address_problem(const common::Endpoint& address) {
  if (!ip_of(address.host)) {
    return "'" + address.host + "' is not an IP address (the initiator order compares address bytes)";
  }
  if (address.port == 0) return "port 0 is not a reachable mesh port";
  return {};
}

std::string id_problem(const std::string& id) {
  if (common::is_valid_id(id)) return {};
  return "id '" + id + "': expected 1-64 of [A-Za-z0-9._-]";
}

// Member list errors name each entry by `names[i]`.
common::Result<void> check_unique(const std::vector<GroupMember>& members,
                                  const std::vector<std::string>& names, const std::string& origin) {
  std::map<std::string, std::size_t> ids;
  // Keyed by the address, not by how it is written: "[::1]" and "[0::1]" are one mesh address, and
  // the initiator order could not tell which of the two dials.
  std::map<common::Endpoint, std::size_t, decltype(&address_less)> addresses(&address_less);
  std::vector<std::string> errors;
  for (std::size_t i = 0; i < members.size(); ++i) {
    const auto& m = members[i];
    if (auto [it, fresh] = ids.emplace(m.id, i); !fresh) {
      errors.push_back(names[i] + ": duplicate id '" + m.id + "' (also " + names[it->second] + ")");
    }
    if (auto [it, fresh] = addresses.emplace(m.address, i); !fresh) {
      errors.push_back(names[i] + ": duplicate address " + m.address.to_string() + " (also " +
                       names[it->second] + ")");
    }
  }
  if (errors.empty()) return {};
  std::string text;
  for (const auto& e : errors) text += (text.empty() ? "" : "; ") + (origin.empty() ? e : origin + ": " + e);
  return Error(Errc::config_error, std::move(text));
}

}  // namespace

common::Result<std::vector<GroupMember>> load_group_file(const std::string& path) {
  auto doc = common::load_json_file(path);
  if (!doc.ok()) return doc.error();
  if (!doc->is_object()) {
    return Error(Errc::config_error, path + ": top level must be a JSON object with \"members\"");
  }
  std::vector<std::string> errors;
  for (const auto& [key, value] : doc->items()) {
    if (key != "members") errors.push_back(path + ": unknown key '" + key + "'");
  }
  const auto members_it = doc->find("members");
  if (members_it == doc->end() || !members_it->is_array()) {
    errors.push_back(path + ": key 'members': expected an array of {\"id\", \"address\"}");
  }
  std::vector<GroupMember> members;
  std::vector<std::string> names;
  if (members_it != doc->end() && members_it->is_array()) {
    for (std::size_t i = 0; i < members_it->size(); ++i) {
      const std::string name = "members[" + std::to_string(i) + "]";
      const auto& entry = (*members_it)[i];
      if (!entry.is_object()) {
        errors.push_back(path + ": " + name + ": expected an object {\"id\", \"address\"}");
        continue;
      }
      common::ConfigReader reader(entry, path + ": " + name);
      GroupMember member;
      std::string address;
      reader.read("id", member.id);
      reader.read("address", address);
      reader.reject_unknown_keys();
      if (!reader.ok()) {
        errors.push_back(reader.error().detail);
        continue;
      }
      if (!entry.contains("id")) errors.push_back(path + ": " + name + ": missing key 'id'");
      if (!entry.contains("address")) errors.push_back(path + ": " + name + ": missing key 'address'");
      if (!entry.contains("id") || !entry.contains("address")) continue;
      if (auto why = id_problem(member.id); !why.empty()) {
        errors.push_back(path + ": " + name + ": " + why);
        continue;
      }
      auto endpoint = common::parse_endpoint(address);
      if (!endpoint.ok()) {
        errors.push_back(path + ": " + name + " (" + member.id + "): " + endpoint.error().detail);
        continue;
      }
      member.address = std::move(endpoint.value());
      if (auto why = mesh_address_problem(member.address); !why.empty()) {
        errors.push_back(path + ": " + name + " (" + member.id + "): address " + why);
        continue;
      }
      members.push_back(std::move(member));
      names.push_back(name + " (" + members.back().id + ")");
    }
  }
  if (errors.empty()) {
    auto unique = check_unique(members, names, path);
    if (!unique.ok()) return unique.error();
    return members;
  }
  std::string text;
  for (const auto& e : errors) text += (text.empty() ? "" : "; ") + e;
  return Error(Errc::config_error, std::move(text));
}

common::Result<GroupMember> parse_member(std::string_view spec) {
  const auto fail = [spec](const std::string& why) {
    return Error(Errc::invalid_argument, "peer \"" + std::string(spec) + "\": " + why);
  };
  const std::size_t eq = spec.find('=');
  if (eq == std::string_view::npos) return fail("expected id=host:port");
  GroupMember member;
  member.id = std::string(spec.substr(0, eq));
  if (auto why = id_problem(member.id); !why.empty()) return fail(why);
  auto endpoint = common::parse_endpoint(spec.substr(eq + 1));
  if (!endpoint.ok()) return fail(endpoint.error().detail);
  member.address = std::move(endpoint.value());
  if (auto why = mesh_address_problem(member.address); !why.empty()) return fail("address " + why);
  return member;
}

common::Result<void> check_members(const std::vector<GroupMember>& members) {
  std::vector<std::string> names;
  names.reserve(members.size());
  for (const auto& m : members) names.push_back(m.id + "=" + m.address.to_string());
  return check_unique(members, names, "");
}

bool address_less(const common::Endpoint& a, const common::Endpoint& b) {
  const auto ia = ip_of(a.host);
  const auto ib = ip_of(b.host);
  if (ia.has_value() != ib.has_value()) return ia.has_value();  // IP literals first
  if (!ia) return std::tie(a.host, a.port) < std::tie(b.host, b.port);
  if (ia->is_v4() != ib->is_v4()) return ia->is_v4();
  if (ia->is_v4()) {
    const auto ba = ia->to_v4().to_bytes();
    const auto bb = ib->to_v4().to_bytes();
    if (ba != bb) return ba < bb;
  } else {
    const auto ba = ia->to_v6().to_bytes();
    const auto bb = ib->to_v6().to_bytes();
    if (ba != bb) return ba < bb;
  }
  return a.port < b.port;
}

}  // namespace dtu::devmgr
