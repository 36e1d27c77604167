// Fuzz target: the manager group's member list (devmgr/group_config.hpp), the input being read
// both as a group file (load_group_file) and as a `--peer` flag (parse_member).
//   - neither throws; load_group_file refuses with config_error naming the file, parse_member
//     with invalid_argument naming the flag's text;
//   - every member either accepts has a valid id and a mesh address that is an IP literal (the
//     whole host, nothing after it) with a non-zero port, and prints back: parse_member of
//     "<id>=<address>" gives the same member;
//   - a loaded list passes check_members, and its addresses are distinct in the initiator order
//     (address_less orders every pair one way), which is what "no duplicate address" is for: of
//     two members the lower address dials;
//   - a loaded file has every member read: the same document with any one member set to null is
//     refused.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <asio/ip/address.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/records.hpp"
#include "dtu/devmgr/group_config.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::Errc;
using dtu::devmgr::GroupMember;
using dtu::fuzz::has_code;
using nlohmann::json;

// Members nulled one at a time in a loaded file; beyond this the run only gets slower.
constexpr std::size_t kMaxNulled = 32;

bool is_ip_literal(const std::string& host) {
  if (host.find('\0') != std::string::npos) return false;  // asio would read only the part before it
  std::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

void check_member(const GroupMember& member) {
  FUZZ_REQUIRE(dtu::common::is_valid_id(member.id));
  FUZZ_REQUIRE(is_ip_literal(member.address.host));
  FUZZ_REQUIRE(member.address.port != 0);
  const auto again = dtu::devmgr::parse_member(member.id + "=" + member.address.to_string());
  FUZZ_REQUIRE(again.ok());
  FUZZ_REQUIRE(*again == member);
}

void check_flag(std::string_view spec) {
  const auto member = dtu::devmgr::parse_member(spec);
  if (!member.ok()) {
    FUZZ_REQUIRE(has_code(member.error(), Errc::invalid_argument));
    FUZZ_REQUIRE(member.error().detail.starts_with("peer \""));
    return;
  }
  check_member(*member);
}

void check_list(const std::vector<GroupMember>& members) {
  FUZZ_REQUIRE(dtu::devmgr::check_members(members).ok());
  for (std::size_t i = 0; i < members.size(); ++i) {
    check_member(members[i]);
    for (std::size_t j = i + 1; j < members.size(); ++j) {
      FUZZ_REQUIRE(members[i].id != members[j].id);
      const auto& a = members[i].address;
      const auto& b = members[j].address;
      if (!dtu::devmgr::address_less(a, b) && !dtu::devmgr::address_less(b, a)) {
        std::fprintf(stderr, "%s and %s: the same mesh address\n", a.to_string().c_str(),
                     b.to_string().c_str());
        dtu::fuzz::violated("the members' addresses are distinct in the initiator order", __FILE__, __LINE__);
      }
    }
  }
}

// The group file at `path` after writing `bytes` into the anonymous file behind it.
dtu::common::Result<std::vector<GroupMember>> load(int fd, const std::string& path, std::string_view bytes) {
  if (ftruncate(fd, 0) != 0) dtu::fuzz::violated("ftruncate of the memfd", __FILE__, __LINE__);
  if (!bytes.empty() && pwrite(fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
    dtu::fuzz::violated("pwrite to the memfd", __FILE__, __LINE__);
  }
  return dtu::devmgr::load_group_file(path);
}

// load_group_file over the input as a file: an anonymous in-memory file, reached through
// /proc/self/fd, so no run leaves a file behind.
void check_file(std::string_view bytes) {
  static const int fd = memfd_create("group_config_fuzz", MFD_CLOEXEC);
  if (fd < 0) return;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const auto members = load(fd, path, bytes);
  if (!members.ok()) {
    FUZZ_REQUIRE(has_code(members.error(), Errc::config_error));
    FUZZ_REQUIRE(members.error().detail.starts_with(path + ":"));
    return;
  }
  check_list(*members);
  const json doc = json::parse(bytes);  // it loaded, so it parses
  for (const auto& pointer : dtu::fuzz::member_pointers(doc, kMaxNulled)) {
    json nulled = doc;
    nulled[pointer] = nullptr;
    if (load(fd, path, nulled.dump()).ok()) {
      std::fprintf(stderr, "accepted with %s null\n", pointer.to_string().c_str());
      dtu::fuzz::violated("a group file with a null member is refused", __FILE__, __LINE__);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    check_file(bytes);
    check_flag(bytes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes load_group_file, parse_member or check_members", __FILE__,
                        __LINE__);
  }
  return 0;
}
