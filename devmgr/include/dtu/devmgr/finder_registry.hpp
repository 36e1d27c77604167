#pragma once
// FinderRegistry: the finders local services registered with this manager, and what each one
// matches now (DESIGN.md §4). A device change is evaluated only against the finders the index
// (common::FinderIndex) cannot rule out; the matches are cached, so listings and the initial
// matches of a new finder are read from the cache, and each change produces exactly the events
// a service must see: finder_matched (newly matches), finder_changed (still matches, record or
// matching units changed), finder_gone (no longer matches, with the reason).
//
// Scopes are applied here, on top of the record-only `matches`: `session` finders match only the
// devices of the DTU where their session is (SessionTable), `bus` finders only the devices this
// manager owns; `dtu` and `interconnect` are decided by the records. Session finders are not in
// the index: they are filed under the DTU where their session is, which follows session_moved.
// REQUIRES: every change of the SessionTable is reported through session_moved (DeviceManager
// does, on attach and detach).
//
// A finder is stored under (client, the client's finder id); a client is an opaque key plus a
// sink that sends it frames. Keep local concerns here: the group mesh forwards distinct finders to
// peers from a separate layer (issue 5).
// Not thread-safe: the manager's io_context thread.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "dtu/common/finder.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace dtu::devmgr {

class FinderRegistry {
 public:
  using ClientKey = const void*;  // identity only, never dereferenced
  using Sink = std::function<void(common::Frame)>;
  // What a client is told, before it becomes a frame. A typed sink spares a consumer in this
  // process (the group broker) encoding and decoding every event.
  using Event = std::variant<common::FinderMatchedMsg, common::FinderChangedMsg, common::FinderGoneMsg,
                             common::FinderSyncedMsg>;
  using EventSink = std::function<void(const Event&)>;
  // Who registered a finder, for listings.
  struct Owner {
    std::string client;
    std::uint32_t pid = 0;
    std::uint32_t uid = 0;
  };

  FinderRegistry(std::string manager_id, const DeviceList& devices, const SessionTable& sessions)
      : manager_id_(std::move(manager_id)), devices_(devices), sessions_(sessions) {}

  // Registers a finder and sends the client its current matches (finder_matched each), then
  // finder_synced. Errc::invalid_argument when the client already has a live finder with this id.
  common::Result<void> add(ClientKey client, const Owner& owner, const Sink& sink, std::uint64_t finder_id,
                           common::Finder finder);
  // As add, the events handed over as messages (same events, same order).
  common::Result<void> add_typed(ClientKey client, const Owner& owner, EventSink sink, std::uint64_t finder_id,
                                 common::Finder finder);
  bool has(ClientKey client, std::uint64_t finder_id) const { return by_client_.contains({client, finder_id}); }
  // Errc::not_found when the client has no such finder. No events follow.
  common::Result<void> remove(ClientKey client, std::uint64_t finder_id);
  // The client went away: forget every finder it had.
  void remove_client(ClientKey client);

  // The device list changed (DeviceList::Listener).
  void device_updated(const common::DeviceRecord& record);
  void device_removed(const common::DeviceRecord& record, std::string_view reason);
  // A session moved (attach / detach): session-scoped finders of that session follow it: gone
  // (session_moved) for the old DTU's matches, then matched for the new DTU's.
  void session_moved(const std::string& session, const SessionTable::Move& move);

  std::vector<common::FinderInfo> list() const;
  std::size_t size() const { return entries_.size(); }
  // How many finders a device change evaluated since the start (for benchmarks and tests that
  // check the index is used).
  std::uint64_t evaluations() const { return evaluations_; }

 private:

  struct Entry {
    ClientKey client = nullptr;
    Owner owner;
    EventSink sink;
    std::uint64_t finder_id = 0;
    common::Finder finder;
    std::unordered_map<DeviceKey, std::vector<std::uint32_t>, DeviceKeyHash> matches;  // the cache
    std::optional<std::string> located;  // a session finder: the DTU it is filed under
  };

  // The units `finder` matches on `record`, scopes included.
  std::vector<std::uint32_t> evaluate(const common::Finder& finder, const common::DeviceRecord& record) const;
  // Brings one entry's cache for `record` up to date and sends the event it implies.
  void refresh(common::FinderId id, Entry& entry, const common::DeviceRecord& record,
               std::vector<std::uint32_t> units);
  void forget_match(common::FinderId id, Entry& entry, const DeviceKey& key, std::string_view reason);
  // Files a session finder under the DTU `where` (none: its session is not attached).
  void locate(common::FinderId id, Entry& entry, const std::optional<std::string>& where);

  std::string manager_id_;
  const DeviceList& devices_;
  const SessionTable& sessions_;
  common::FinderIndex index_;
  std::map<common::FinderId, Entry> entries_;
  std::map<std::pair<ClientKey, std::uint64_t>, common::FinderId> by_client_;
  // Which entries cache a device.
  std::unordered_map<DeviceKey, std::set<common::FinderId>, DeviceKeyHash> by_device_;
  std::map<std::string, std::set<common::FinderId>> by_session_;     // session-scoped finders
  std::map<std::string, std::set<common::FinderId>> session_finders_at_;  // by the DTU of their session
  common::FinderId next_id_ = 1;
  // The last record add()'s frame sinks encoded (shared with their lambdas).
  std::shared_ptr<common::LastEncodedDevice> encoded_ = std::make_shared<common::LastEncodedDevice>();
  std::uint64_t evaluations_ = 0;
};

}  // namespace dtu::devmgr
