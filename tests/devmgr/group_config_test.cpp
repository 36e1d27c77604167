#include "dtu/devmgr/group_config.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"

using dtu::common::Endpoint;
using dtu::common::Errc;
using dtu::devmgr::address_less;
using dtu::devmgr::check_members;
using dtu::devmgr::GroupMember;
using dtu::devmgr::load_group_file;
using dtu::devmgr::parse_member;
using dtu::testing::UnitTempDir;

namespace {

bool mentions(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a group file lists every member with its mesh address") {
  UnitTempDir dir;
  const auto path = dir.write("group.json", R"({"members": [
      {"id": "m1", "address": "10.0.0.1:4720"},
      {"id": "m2", "address": "10.0.0.2:4720"},
      {"id": "m3", "address": "[fd00::3]:4721"}]})");
  auto members = load_group_file(path);
  REQUIRE_MESSAGE(members.ok(), (members.ok() ? "" : members.error().describe()));
  REQUIRE(members->size() == 3);
  CHECK((*members)[0] == GroupMember{"m1", Endpoint{"10.0.0.1", 4720}});
  CHECK((*members)[1] == GroupMember{"m2", Endpoint{"10.0.0.2", 4720}});
  CHECK((*members)[2] == GroupMember{"m3", Endpoint{"fd00::3", 4721}});
}

TEST_CASE("an empty member list is a valid group of one") {
  UnitTempDir dir;
  auto members = load_group_file(dir.write("group.json", R"({"members": []})"));
  REQUIRE(members.ok());
  CHECK(members->empty());
}

TEST_CASE("a group file error names the file and the entry") {
  UnitTempDir dir;
  struct Case {
    const char* content;
    std::vector<std::string> expected;  // each must appear in the error
  };
  const std::vector<Case> cases = {
      {R"({"members": [{"id": "m1", "address": "10.0.0.1:4720", "adress": "x"}]})",
       {"members[0]", "unknown key 'adress'"}},
      {R"({"members": [{"id": "m1", "address": "10.0.0.1:4720"}, {"id": "bad id!", "address": "10.0.0.2:1"}]})",
       {"members[1]", "bad id!"}},
      {R"({"members": [{"id": "m1", "address": "10.0.0.1:4720"}, {"id": "m1", "address": "10.0.0.2:4720"}]})",
       {"members[1]", "duplicate id 'm1'", "members[0]"}},
      {R"({"members": [{"id": "m1", "address": "10.0.0.1:4720"}, {"id": "m2", "address": "10.0.0.1:4720"}]})",
       {"members[1]", "duplicate address 10.0.0.1:4720"}},
      {R"({"members": [{"id": "m1", "address": "[::1]:4720"}, {"id": "m2", "address": "[0:0::1]:4720"}]})",
       {"members[1]", "duplicate address [0:0::1]:4720", "members[0]"}},
      {R"({"members": [{"id": "m1", "address": "mgr1.example:4720"}]})", {"members[0]", "not an IP address"}},
      {R"({"members": [{"id": "m1", "address": "10.0.0.1:0"}]})", {"members[0]", "port 0"}},
      {R"({"members": [{"id": "m1", "address": "10.0.0.1"}]})", {"members[0]", "10.0.0.1"}},
      {R"({"members": [{"id": "m1"}]})", {"members[0]", "missing key 'address'"}},
      {R"({"members": [{"id": 7, "address": "10.0.0.1:1"}]})", {"members[0]", "'id'"}},
      {R"({"members": ["m1"]})", {"members[0]", "expected an object"}},
      {R"({"member": []})", {"unknown key 'member'", "'members'"}},
      {R"({"members": [)", {"invalid JSON"}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.content);
    const auto path = dir.write("group.json", c.content);
    auto members = load_group_file(path);
    REQUIRE_FALSE(members.ok());
    CHECK(members.error().code == Errc::config_error);
    CHECK(mentions(members.error().detail, path));
    for (const auto& part : c.expected) {
      CAPTURE(part);
      CHECK(mentions(members.error().detail, part));
    }
  }
}

TEST_CASE("a missing group file is an error naming the path") {
  UnitTempDir dir;
  auto members = load_group_file(dir.path("absent.json"));
  REQUIRE_FALSE(members.ok());
  CHECK(mentions(members.error().detail, dir.path("absent.json")));
}

TEST_CASE("--peer takes id=host:port") {
  auto member = parse_member("m2=127.0.0.3:4720");
  REQUIRE(member.ok());
  CHECK(*member == GroupMember{"m2", Endpoint{"127.0.0.3", 4720}});
  auto v6 = parse_member("m3=[::1]:4720");
  REQUIRE(v6.ok());
  CHECK(v6->address == Endpoint{"::1", 4720});
  for (const char* bad : {"m2", "=127.0.0.3:4720", "m 2=127.0.0.3:4720", "m2=127.0.0.3",
                          "m2=host.example:4720", "m2=127.0.0.3:0", "m2=127.0.0.3:70000"}) {
    CAPTURE(bad);
    auto parsed = parse_member(bad);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().code == Errc::invalid_argument);
    CHECK(mentions(parsed.error().detail, bad));
  }
}

TEST_CASE("members from the file and from flags must not repeat an id or an address") {
  std::vector<GroupMember> members = {{"m1", {"10.0.0.1", 1}}, {"m2", {"10.0.0.2", 1}}};
  CHECK(check_members(members).ok());
  members.push_back({"m2", {"10.0.0.3", 1}});
  auto dup = check_members(members);
  REQUIRE_FALSE(dup.ok());
  CHECK(mentions(dup.error().detail, "duplicate id 'm2'"));
  members.back() = {"m3", {"10.0.0.1", 1}};
  dup = check_members(members);
  REQUIRE_FALSE(dup.ok());
  CHECK(mentions(dup.error().detail, "duplicate address 10.0.0.1:1"));
}

TEST_CASE("the initiator order compares address bytes, then the port, IPv4 before IPv6") {
  // Bytes, not text: "10.0.0.9" < "10.0.0.10" although the string compares the other way.
  CHECK(address_less({"10.0.0.9", 4720}, {"10.0.0.10", 4720}));
  CHECK_FALSE(address_less({"10.0.0.10", 4720}, {"10.0.0.9", 4720}));
  CHECK(address_less({"127.0.0.2", 4721}, {"127.0.0.3", 1}));
  CHECK(address_less({"127.0.0.2", 1}, {"127.0.0.2", 2}));
  CHECK_FALSE(address_less({"127.0.0.2", 2}, {"127.0.0.2", 2}));
  CHECK(address_less({"255.255.255.255", 65535}, {"::", 1}));
  CHECK_FALSE(address_less({"::1", 1}, {"10.0.0.1", 1}));
  CHECK(address_less({"fd00::2", 1}, {"fd00::10", 1}));
  // A strict weak order: sorting a list gives one answer whatever the input order.
  std::vector<Endpoint> a = {{"10.0.0.10", 1}, {"::1", 1}, {"10.0.0.9", 2}, {"10.0.0.9", 1}};
  std::vector<Endpoint> b(a.rbegin(), a.rend());
  std::sort(a.begin(), a.end(), address_less);
  std::sort(b.begin(), b.end(), address_less);
  CHECK(a == b);
  CHECK(a.front() == Endpoint{"10.0.0.9", 1});
  CHECK(a.back() == Endpoint{"::1", 1});
}
