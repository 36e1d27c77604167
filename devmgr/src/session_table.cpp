#include "dtu/devmgr/session_table.hpp"

#include <algorithm>

namespace dtu::devmgr {

SessionTable::Move SessionTable::attach(const std::string& session, const std::string& user, const std::string& dtu,
                                        common::MonoTime now) {
  Move move{where(session), dtu};
  Entry& entry = sessions_[session];
  if (!move.from || *move.from != dtu) entry.since = now;
  entry.user = user;
  entry.dtu = dtu;
  entry.order = ++next_order_;
  return move;
}

std::optional<SessionTable::Move> SessionTable::detach(const std::string& session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return std::nullopt;
  Move move{it->second.dtu, std::nullopt};
  sessions_.erase(it);
  return move;
}

std::optional<std::string> SessionTable::where(const std::string& session) const {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return std::nullopt;
  return it->second.dtu;
}

std::optional<std::string> SessionTable::at(const std::string& dtu) const {
  const std::pair<const std::string, Entry>* latest = nullptr;
  for (const auto& entry : sessions_) {
    if (entry.second.dtu == dtu && (latest == nullptr || entry.second.order > latest->second.order)) latest = &entry;
  }
  if (latest == nullptr) return std::nullopt;
  return latest->first;
}

std::vector<common::SessionInfo> SessionTable::list(common::MonoTime now) const {
  std::vector<common::SessionInfo> out;
  out.reserve(sessions_.size());
  for (const auto& [session, entry] : sessions_) {
    const auto ago = std::chrono::duration_cast<std::chrono::milliseconds>(now - entry.since).count();
    out.push_back(common::SessionInfo{session, entry.user, entry.dtu,
                                      static_cast<std::uint32_t>(std::clamp<std::int64_t>(ago, 0, UINT32_MAX))});
  }
  return out;
}

}  // namespace dtu::devmgr
