#include "dtu/devmgr/socket_group.hpp"

#include <grp.h>
#include <unistd.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

namespace dtu::devmgr {

using common::Errc;
using common::Error;

common::Result<gid_t> find_group(const std::string& name) {
  if (name.empty()) return Error(Errc::config_error, "socket_group: empty group name");
  std::vector<char> buffer(16384);
  group entry{};
  group* found = nullptr;
  const int rc = getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
  if (rc == 0 && found != nullptr) return found->gr_gid;
  gid_t gid = 0;
  const char* end = name.data() + name.size();
  if (auto [ptr, ec] = std::from_chars(name.data(), end, gid); ec == std::errc() && ptr == end) return gid;
  std::string why = rc == 0 ? "no such group" : std::strerror(rc);
  return Error(Errc::config_error, "socket_group '" + name + "': " + why);
}

common::Result<void> give_to_group(const std::string& path, const std::string& group) {
  auto gid = find_group(group);
  if (!gid.ok()) return gid.error();
  if (::chown(path.c_str(), static_cast<uid_t>(-1), *gid) == 0) return {};
  const int err = errno;
  const std::string what = "socket " + path + " to group '" + group + "': ";
  if (err == EPERM) {
    return Error(Errc::denied,
                 what + "not permitted: devmgr (uid " + std::to_string(::geteuid()) +
                     ") is not a member of that group (add it, e.g. SupplementaryGroups=" + group + ")");
  }
  return Error(Errc::io_error, what + std::strerror(err));
}

}  // namespace dtu::devmgr
