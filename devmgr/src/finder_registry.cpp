#include "dtu/devmgr/finder_registry.hpp"

#include <algorithm>
#include <utility>
#include <variant>

namespace dtu::devmgr {

using common::DeviceRecord;
using common::Errc;
using common::Error;
using common::Finder;
using common::FinderId;
using common::FinderScope;
using common::MessageType;

common::Result<void> FinderRegistry::add(ClientKey client, const Owner& owner, const Sink& sink,
                                         std::uint64_t finder_id, Finder finder) {
  // The finders one device event reaches share the record's encoding (encoded_).
  EventSink framed = [sink, encoded = encoded_](const Event& event) {
    if (const auto* matched = std::get_if<common::FinderMatchedMsg>(&event)) {
      encoded->use(matched->device);
      sink(common::finder_event_frame(MessageType::finder_matched, matched->finder_id, encoded->json(), matched->units));
    } else if (const auto* changed = std::get_if<common::FinderChangedMsg>(&event)) {
      encoded->use(changed->device);
      sink(common::finder_event_frame(MessageType::finder_changed, changed->finder_id, encoded->json(), changed->units));
    } else {
      std::visit([&sink](const auto& msg) { sink(common::to_frame(msg)); }, event);
    }
  };
  return add_typed(client, owner, std::move(framed), finder_id, std::move(finder));
}

common::Result<void> FinderRegistry::add_typed(ClientKey client, const Owner& owner, EventSink sink,
                                               std::uint64_t finder_id, Finder finder) {
  if (by_client_.contains({client, finder_id})) {
    return Error(Errc::invalid_argument, "finder " + std::to_string(finder_id) + " is already registered");
  }
  const FinderId id = next_id_++;
  if (finder.scope != FinderScope::session) index_.add(id, finder);
  by_client_[{client, finder_id}] = id;
  if (finder.scope == FinderScope::session) by_session_[*finder.session].insert(id);
  Entry& entry = entries_[id];
  entry.client = client;
  entry.owner = owner;
  entry.sink = std::move(sink);
  entry.finder_id = finder_id;
  entry.finder = std::move(finder);

  // The first matches: only the devices the scope allows, then every one of those.
  std::optional<std::string> only;
  if (entry.finder.scope == FinderScope::dtu) only = entry.finder.scope_dtu;
  if (entry.finder.scope == FinderScope::session) {
    only = sessions_.where(*entry.finder.session);
    locate(id, entry, only);
    if (!only) only = std::string();  // not attached anywhere: nothing matches
  }
  if (!only || !only->empty()) {
    for (const DeviceRecord& record : devices_.list(only)) refresh(id, entry, record, evaluate(entry.finder, record));
  }
  entry.sink(Event(common::FinderSyncedMsg{finder_id}));
  return {};
}

common::Result<void> FinderRegistry::remove(ClientKey client, std::uint64_t finder_id) {
  auto it = by_client_.find({client, finder_id});
  if (it == by_client_.end()) return Error(Errc::not_found, "no finder " + std::to_string(finder_id));
  const FinderId id = it->second;
  by_client_.erase(it);
  Entry& entry = entries_.at(id);
  for (const auto& [key, units] : entry.matches) {
    auto refs = by_device_.find(key);
    if (refs == by_device_.end()) continue;
    refs->second.erase(id);
    if (refs->second.empty()) by_device_.erase(refs);
  }
  if (entry.finder.scope == FinderScope::session) {
    auto refs = by_session_.find(*entry.finder.session);
    if (refs != by_session_.end()) {
      refs->second.erase(id);
      if (refs->second.empty()) by_session_.erase(refs);
    }
    locate(id, entry, std::nullopt);
  }
  index_.remove(id);
  entries_.erase(id);
  return {};
}

void FinderRegistry::remove_client(ClientKey client) {
  std::vector<std::uint64_t> ids;
  for (auto it = by_client_.lower_bound({client, 0}); it != by_client_.end() && it->first.first == client; ++it) {
    ids.push_back(it->first.second);
  }
  for (std::uint64_t finder_id : ids) (void)remove(client, finder_id);
}

std::vector<std::uint32_t> FinderRegistry::evaluate(const Finder& finder, const DeviceRecord& record) const {
  if (finder.scope == FinderScope::session) {
    auto where = sessions_.where(*finder.session);
    if (!where || *where != record.dtu) return {};
  }
  if (finder.scope == FinderScope::bus && record.owner != manager_id_) return {};
  return common::matching_units(finder, record);
}

void FinderRegistry::refresh(FinderId id, Entry& entry, const DeviceRecord& record, std::vector<std::uint32_t> units) {
  ++evaluations_;
  const DeviceKey key{record.dtu, record.device};
  auto cached = entry.matches.find(key);
  if (units.empty()) {
    if (cached != entry.matches.end()) forget_match(id, entry, key, "no_longer_matches");
    return;
  }
  if (cached == entry.matches.end()) {
    entry.matches.emplace(key, units);
    by_device_[key].insert(id);
    entry.sink(Event(common::FinderMatchedMsg{entry.finder_id, record, std::move(units)}));
    return;
  }
  cached->second = units;
  entry.sink(Event(common::FinderChangedMsg{entry.finder_id, record, std::move(units)}));
}

void FinderRegistry::forget_match(FinderId id, Entry& entry, const DeviceKey& key, std::string_view reason) {
  entry.matches.erase(key);
  auto refs = by_device_.find(key);
  if (refs != by_device_.end()) {
    refs->second.erase(id);
    if (refs->second.empty()) by_device_.erase(refs);
  }
  entry.sink(Event(common::FinderGoneMsg{entry.finder_id, key.first, key.second, std::string(reason)}));
}

void FinderRegistry::locate(FinderId id, Entry& entry, const std::optional<std::string>& where) {
  if (entry.located == where) return;
  if (entry.located) {
    auto refs = session_finders_at_.find(*entry.located);
    if (refs != session_finders_at_.end()) {
      refs->second.erase(id);
      if (refs->second.empty()) session_finders_at_.erase(refs);
    }
  }
  entry.located = where;
  if (where) session_finders_at_[*where].insert(id);
}

void FinderRegistry::device_updated(const DeviceRecord& record) {
  // The index's candidates, the session finders whose session is at the device's DTU, and every
  // finder that matched the device before (it may no longer); in id order.
  std::vector<FinderId> ids = index_.candidates(record);
  bool merged = false;
  if (auto here = session_finders_at_.find(record.dtu); here != session_finders_at_.end()) {
    ids.insert(ids.end(), here->second.begin(), here->second.end());
    merged = true;
  }
  if (auto refs = by_device_.find({record.dtu, record.device}); refs != by_device_.end()) {
    ids.insert(ids.end(), refs->second.begin(), refs->second.end());
    merged = true;
  }
  if (merged) {
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  }
  for (FinderId id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    refresh(id, it->second, record, evaluate(it->second.finder, record));
  }
}

void FinderRegistry::device_removed(const DeviceRecord& record, std::string_view reason) {
  const DeviceKey key{record.dtu, record.device};
  auto refs = by_device_.find(key);
  if (refs == by_device_.end()) return;
  const std::set<FinderId> ids = refs->second;
  for (FinderId id : ids) {
    auto it = entries_.find(id);
    if (it != entries_.end()) forget_match(id, it->second, key, reason);
  }
}

void FinderRegistry::session_moved(const std::string& session, const SessionTable::Move& move) {
  if (move.from == move.to) return;
  auto refs = by_session_.find(session);
  if (refs == by_session_.end()) return;
  const std::set<FinderId> ids = refs->second;
  for (FinderId id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    Entry& entry = it->second;
    locate(id, entry, move.to);
    std::vector<DeviceKey> left;
    for (const auto& [key, units] : entry.matches) {
      if (move.from && key.first == *move.from) left.push_back(key);
    }
    std::sort(left.begin(), left.end());  // the events in device order
    for (const DeviceKey& key : left) forget_match(id, entry, key, "session_moved");
  }
  if (!move.to) return;
  const std::vector<DeviceRecord> there = devices_.list(*move.to);
  for (FinderId id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end()) continue;
    for (const DeviceRecord& record : there) refresh(id, it->second, record, evaluate(it->second.finder, record));
  }
}

std::vector<common::FinderInfo> FinderRegistry::list() const {
  std::vector<common::FinderInfo> out;
  out.reserve(entries_.size());
  for (const auto& [id, entry] : entries_) {
    common::FinderInfo info;
    info.client = entry.owner.client;
    info.pid = entry.owner.pid;
    info.uid = entry.owner.uid;
    info.finder_id = entry.finder_id;
    info.finder = entry.finder;
    // The registry matches only this manager's devices: it owns every one of them.
    for (const auto& [key, units] : entry.matches) {
      info.matches.push_back(common::MatchRef{key.first, key.second, units, manager_id_, false});
    }
    common::sort_matches(info.matches);
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace dtu::devmgr
