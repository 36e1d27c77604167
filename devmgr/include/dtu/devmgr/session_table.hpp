#pragma once
// SessionTable: where each user session sits (DESIGN.md §4, hot-desking). The site's
// authentication manager tells the manager when a session attaches to a DTU (the user sat down
// there, or moved there) and when it detaches; session-scoped finders and the policy's `session`
// field follow it. A DTU may have several sessions (a shared kiosk): the most recently attached one
// is "the session at the DTU" for the policy.
// Not thread-safe: the manager's io_context thread.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dtu/common/clock.hpp"
#include "dtu/common/service_messages.hpp"

namespace dtu::devmgr {

class SessionTable {
 public:
  struct Move {
    std::optional<std::string> from;  // the DTU it left (none: it was not attached)
    std::optional<std::string> to;    // the DTU it is at now (none: detached)
  };

  // Session `session` of `user` is now at `dtu`.
  Move attach(const std::string& session, const std::string& user, const std::string& dtu, common::MonoTime now);
  // The session ended; nullopt when it was not attached.
  std::optional<Move> detach(const std::string& session);

  // The DTU where `session` is, if attached.
  std::optional<std::string> where(const std::string& session) const;
  // The most recently attached session at `dtu`, if any.
  std::optional<std::string> at(const std::string& dtu) const;

  std::vector<common::SessionInfo> list(common::MonoTime now) const;
  std::size_t size() const { return sessions_.size(); }

 private:
  struct Entry {
    std::string user;
    std::string dtu;
    common::MonoTime since{};
    std::uint64_t order = 0;  // attach order, to find the latest at a DTU
  };
  std::map<std::string, Entry> sessions_;
  std::uint64_t next_order_ = 0;
};

}  // namespace dtu::devmgr
