#pragma once
// The manager group's member list (DESIGN.md §4): which managers form the group and where each
// one's mesh listener is. Read from the group file and from `--peer id=host:port` flags, and the
// order that makes the lower address of a pair its initiator.
//
// Group file:
//   {"members": [{"id": "m1", "address": "10.0.0.1:4720"},
//                {"id": "m2", "address": "10.0.0.2:4720"}]}
// It may list this manager's own entry (one file for the whole group). A mesh address is an IP
// address and a non-zero port: the initiator order compares the address's bytes, so a host name
// (which could resolve differently on each manager) is refused.
//
// Free functions without shared state: thread-safe.

#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/config.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

struct GroupMember {
  std::string id;            // common::is_valid_id
  common::Endpoint address;  // its mesh listener

  friend bool operator==(const GroupMember&, const GroupMember&) = default;
};

// The members of the group file at `path`. Errc::config_error naming the file and the entry
// ("members[2]") for: an unreadable file or bad JSON, a missing or non-array "members", an entry
// that is not an object, an unknown key, a bad or missing id, a bad or missing address, a
// duplicate id, a duplicate address.
common::Result<std::vector<GroupMember>> load_group_file(const std::string& path);

// One member from the flag form "id=host:port". Errc::invalid_argument naming `spec` otherwise.
common::Result<GroupMember> parse_member(std::string_view spec);

// Checks a member list put together from several sources (the file plus flags): no duplicate
// id, no duplicate address. Errc::config_error naming the two entries otherwise.
common::Result<void> check_members(const std::vector<GroupMember>& members);

// The initiator order of mesh addresses: the IP address's bytes (every IPv4 address before every
// IPv6 one), then the port. The lower address of a pair dials and reconnects.
// A host that is not an IP literal sorts after every IP address, by text (never in a loaded
// list: load_group_file and parse_member refuse it).
bool address_less(const common::Endpoint& a, const common::Endpoint& b);

}  // namespace dtu::devmgr
