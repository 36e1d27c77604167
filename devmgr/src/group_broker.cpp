#include "dtu/devmgr/group_broker.hpp"

#include <algorithm>

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;

namespace {

// The error a peer answered with, or why it did not answer.
Error error_of(const common::Result<Frame>& answer, const std::string& peer) {
  if (!answer.ok()) {
    if (answer.error().code == make_error_code(Errc::timeout)) {
      return Error(Errc::timeout, "manager " + peer + " did not answer in time");
    }
    // The link failing is "not reachable"; any other error is the owner's own answer (refused,
    // denied, not_found, …), passed on as it is.
    const auto& code = answer.error().code;
    if (code == make_error_code(Errc::link_lost) || code == make_error_code(Errc::closed)) {
      return Error(Errc::unavailable, "manager " + peer + " is not reachable: " + answer.error().describe());
    }
    return answer.error();
  }
  auto error = common::from_frame<common::ErrorMsg>(*answer);
  if (error.ok()) return Error(common::errc_from_name(error->code), error->reason);
  return Error(Errc::bad_payload,
               "unexpected " + std::string(common::message_type_name(answer->type)) + " from manager " + peer);
}

// Answers a peer's request with the message, or with the error.
template <typename M>
void answer(PeerLink& link, const Frame& to, const common::Result<M>& result) {
  if (!link.is_open()) return;
  if (result.ok()) return link.reply(to, common::to_frame(*result));
  const Error& error = result.error();
  const Errc code =
      error.code.category() == common::dtu_category() ? static_cast<Errc>(error.code.value()) : Errc::io_error;
  link.reply_error(to, code, error.detail.empty() ? error.code.message() : error.detail);
}

// A claim stamp for logs: "boot_epoch/seq".
std::string stamp_text(const common::Stamp& stamp) {
  return std::to_string(stamp.boot_epoch) + "/" + std::to_string(stamp.seq);
}

std::uint32_t count32(std::size_t n) { return static_cast<std::uint32_t>(std::min<std::size_t>(n, UINT32_MAX)); }

// The form a finder travels in: session scope becomes the session's DTU; none when the session is
// not attached anywhere (nothing to match) or the scope is bus (never forwarded).
std::optional<common::Finder> wire_form(const common::Finder& finder, const SessionTable& sessions) {
  switch (finder.scope) {
    case common::FinderScope::interconnect:
    case common::FinderScope::dtu: return finder;
    case common::FinderScope::bus: return std::nullopt;
    case common::FinderScope::session: {
      auto where = sessions.where(*finder.session);
      if (!where) return std::nullopt;
      common::Finder wire = finder;
      wire.scope = common::FinderScope::dtu;
      wire.scope_dtu = *where;
      wire.session.reset();
      return wire;
    }
  }
  return std::nullopt;
}

}  // namespace

// A service of a peer manager holding (or asking for) a lease here. Its identity is the origin's
// OnBehalf; its events go to the peer's current link.
class GroupBroker::RemoteHolder : public LeaseHolder {
 public:
  RemoteHolder(std::string peer, common::OnBehalf who, std::function<void(const std::string&, Frame)> send)
      : peer_(std::move(peer)), who_(std::move(who)), send_(std::move(send)) {}
  unsigned uid() const override { return who_.uid; }
  unsigned gid() const override { return who_.gid; }
  unsigned pid() const override { return who_.pid; }
  std::string holder_name() const override { return who_.holder; }
  std::string client_name() const override { return who_.client; }
  void notify(Frame frame) override { send_(peer_, std::move(frame)); }
  std::string origin() const override { return peer_; }

  void update(const common::OnBehalf& who) { who_ = who; }
  int pending = 0;  // forwarded operations not answered yet

 private:
  std::string peer_;
  common::OnBehalf who_;
  std::function<void(const std::string&, Frame)> send_;
};

GroupBroker::GroupBroker(Context context, common::Logger log)
    : context_(std::move(context)), log_(std::move(log)) {
  // Leases a DTU brings here from another manager go back to their services' managers.
  context_.leases->set_remote_holders(
      [this](const std::string& origin, const common::OnBehalf& who) -> std::shared_ptr<LeaseHolder> {
        return remote_holder(origin, who);
      });
}

GroupBroker::~GroupBroker() {
  context_.leases->set_remote_holders(nullptr);
  for (auto& [id, peer] : peers_) peer.grace.reset();
  lost_.clear();
}

bool GroupBroker::is_current(const std::shared_ptr<PeerLink>& link) const {
  auto it = peers_.find(link->id());
  return it != peers_.end() && it->second.link == link;
}

void GroupBroker::protocol_error(const std::shared_ptr<PeerLink>& link, const std::string& reason) {
  log_.warn(link->address(), "peer_protocol_error", {{"peer", link->id()}, {"reason", reason}});
  link->close(Error(Errc::illegal_state, reason));
}

// --- Mesh -------------------------------------------------------------------------------------

void GroupBroker::peer_up(const std::shared_ptr<PeerLink>& link) {
  const std::string id = link->id();
  if (auto it = peers_.find(id); it != peers_.end()) {
    // A lower incarnation means the peer's clock went back across its restart: the link is
    // still the peer's newest (frames from replaced links are dropped), so it is taken.
    if (link->incarnation() < it->second.incarnation) {
      log_.warn(link->address(), "peer_incarnation_went_back",
                {{"peer", id}, {"incarnation", link->incarnation()}, {"known", it->second.incarnation}});
    }
    if (it->second.link && it->second.link != link) {
      peer_down(it->second.link, Error(Errc::closed, "replaced by a newer link"));
    }
  }
  Peer& peer = peers_[id];
  peer.link = link;
  peer.incarnation = link->incarnation();
  log_.info(link->address(), "group_peer_up", {{"peer", id}, {"incarnation", link->incarnation()}});
  link->notify(common::to_frame(own_claims(true)));
  for (auto& [key, distinct] : distinct_) {
    if (distinct.wire) forward(distinct, link);
  }
}

void GroupBroker::peer_down(const std::shared_ptr<PeerLink>& link, const Error& reason) {
  drop_held(link.get());
  auto it = peers_.find(link->id());
  if (it == peers_.end() || it->second.link != link) return;
  const std::string id = link->id();
  it->second.link.reset();
  log_.info(link->address(), "group_peer_down", {{"peer", id}, {"reason", reason.describe()},
                                                 {"grace_ms", context_.grace.count()}});
  orphan(id);
  it->second.grace = std::make_unique<common::DeadlineGuard>(
      context_.executor, context_.grace, [this, alive = std::weak_ptr<int>(alive_), id] {
        if (!alive.expired()) grace_over(id);
      });
}

void GroupBroker::peer_frame(const std::shared_ptr<PeerLink>& link, Frame frame) {
  const std::string type(common::message_type_name(frame.type));
  if (!is_current(link)) {
    // A link the peer has replaced (or not announced yet): what it says is no longer news.
    if (frame.wants_reply()) link->reply_error(frame, Errc::unavailable, "this peer link has been replaced");
    return;
  }
  if (frame.is_binary()) return protocol_error(link, "binary " + type + " on a peer link");
  const bool request = frame.wants_reply();
  const bool notify = !frame.wants_reply() && !frame.wants_ack();
  const std::string& peer = link->id();
  switch (frame.type) {
    case MessageType::register_finder:
      if (!request) return protocol_error(link, type + " must be a request");
      return hold_finder(link, frame);
    case MessageType::unregister_finder: {
      if (!request) return protocol_error(link, type + " must be a request");
      auto msg = common::from_frame<common::UnregisterFinderMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      auto held = held_.find(link.get());
      if (held == held_.end() || held->second.erase(msg->finder_id) == 0) {
        return link->reply_error(frame, Errc::not_found, "no forwarded finder " + std::to_string(msg->finder_id));
      }
      (void)context_.finders->remove(link.get(), msg->finder_id);
      return link->reply(frame, common::to_frame(common::AckMsg{}));
    }
    case MessageType::finder_matched:
    case MessageType::finder_changed: {
      if (!notify) return protocol_error(link, type + " must be a notify");
      if (frame.type == MessageType::finder_matched) {
        auto msg = common::from_frame<common::FinderMatchedMsg>(frame);
        if (!msg.ok()) return protocol_error(link, msg.error().describe());
        return on_remote_match(peer, msg->finder_id, std::move(msg->device), std::move(msg->units));
      }
      auto msg = common::from_frame<common::FinderChangedMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      return on_remote_match(peer, msg->finder_id, std::move(msg->device), std::move(msg->units));
    }
    case MessageType::finder_gone: {
      if (!notify) return protocol_error(link, type + " must be a notify");
      auto msg = common::from_frame<common::FinderGoneMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      return on_remote_gone(peer, *msg);
    }
    case MessageType::finder_synced: {
      if (!notify) return protocol_error(link, type + " must be a notify");
      auto msg = common::from_frame<common::FinderSyncedMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      return on_remote_synced(peer, msg->finder_id);
    }
    case MessageType::list_devices: {
      if (!request) return protocol_error(link, type + " must be a request");
      auto msg = common::from_frame<common::ListDevicesMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      // Only this manager's own devices: each peer answers for the DTUs it serves.
      return link->reply(frame, common::to_frame(common::DeviceListMsg{context_.devices->list(msg->dtu)}));
    }
    case MessageType::lease_ended: {
      if (!notify) return protocol_error(link, type + " must be a notify");
      auto msg = common::from_frame<common::LeaseEndedMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      return on_lease_ended(peer, *msg);
    }
    case MessageType::peer_ownership: {
      if (!notify) return protocol_error(link, type + " must be a notify");
      auto msg = common::from_frame<common::PeerOwnershipMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      return on_ownership(link, *msg);
    }
    case MessageType::peer_allocate:
    case MessageType::peer_renew:
    case MessageType::peer_release:
    case MessageType::peer_resume:
      if (!request) return protocol_error(link, type + " must be a request");
      return serve_lease_op(link, frame);
    case MessageType::peer_status: {
      if (!request) return protocol_error(link, type + " must be a request");
      auto msg = common::from_frame<common::PeerStatusMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      common::PeerStatusReplyMsg reply;
      reply.manager = context_.manager_id;
      reply.incarnation = context_.incarnation;
      reply.dtus = count32(context_.devices->dtu_count());
      reply.devices = count32(context_.devices->device_count());
      reply.finders_held_total = finders_held_total();
      return link->reply(frame, common::to_frame(reply));
    }
    default: return protocol_error(link, "message " + type + " is not legal on a peer link");
  }
}

// --- Finders, origin side ---------------------------------------------------------------------

void GroupBroker::forward(Distinct& distinct, const std::shared_ptr<PeerLink>& link) {
  const common::RegisterFinderMsg msg{distinct.wire_id, *distinct.wire};
  link->request(common::to_frame(msg), kPeerRequestTimeout,
                [log = log_, address = link->address(), peer = link->id(), id = msg.finder_id](common::Result<Frame> r) {
                  if (r.ok() && r->type == MessageType::ack) return;
                  const Error why = error_of(r, peer);
                  if (why.code == make_error_code(Errc::unavailable)) return;  // the link went down
                  log.warn(address, "peer_finder_refused", {{"peer", peer}, {"finder", id}, {"reason", why.describe()}});
                });
}

void GroupBroker::unforward(Distinct& distinct) {
  by_wire_.erase(distinct.wire_id);
  const common::UnregisterFinderMsg msg{distinct.wire_id};
  for (auto& [id, peer] : peers_) {
    if (!peer.link || !peer.link->is_open()) continue;
    peer.link->request(common::to_frame(msg), kPeerRequestTimeout, [](common::Result<Frame>) {});
  }
}

common::Result<void> GroupBroker::add_finder(ClientKey client, const FinderRegistry::Owner& owner,
                                             const FinderRegistry::Sink& sink, std::uint64_t finder_id,
                                             common::Finder finder) {
  if (client_index_.contains({client, finder_id})) {
    return Error(Errc::invalid_argument, "finder " + std::to_string(finder_id) + " is already registered");
  }
  const std::uint64_t id = next_entry_++;
  ClientEntry& entry = clients_[id];
  entry.id = id;
  entry.client = client;
  entry.finder_id = finder_id;
  entry.owner = owner;
  entry.sink = sink;
  entry.finder = finder;
  client_index_[{client, finder_id}] = id;

  if (finder.scope != common::FinderScope::bus) {
    auto found = std::find_if(distinct_.begin(), distinct_.end(),
                              [&](const auto& d) { return d.second.finder == finder; });
    if (found == distinct_.end()) {
      const std::uint64_t key = next_distinct_++;
      Distinct& made = distinct_[key];
      made.finder = finder;
      made.wire = wire_form(finder, *context_.sessions);
      if (made.wire) {
        made.wire_id = next_wire_++;
        by_wire_[made.wire_id] = key;
        for (auto& [pid, peer] : peers_) {
          if (peer.link && peer.link->is_open()) forward(made, peer.link);
        }
      }
      found = distinct_.find(key);
    }
    Distinct& distinct = found->second;
    distinct.clients.insert(id);
    entry.distinct = found->first;
    if (distinct.wire) {
      for (const auto& [pid, peer] : peers_) {
        if (peer.link && peer.link->is_open() && !distinct.synced.contains(pid)) entry.waiting.insert(pid);
      }
    }
    // A client joining a finder already forwarded gets what the peers said at once.
    for (const auto& [peer, matches] : distinct.remote) {
      for (const auto& [key, match] : matches) show_match(entry, peer, match.record, match.units);
    }
  }

  auto local_sink = [this, alive = std::weak_ptr<int>(alive_), id](const FinderRegistry::Event& event) {
    if (!alive.expired()) on_local_event(id, event);
  };
  auto added = context_.finders->add_typed(client, owner, std::move(local_sink), finder_id, std::move(finder));
  if (!added.ok()) {
    (void)remove_finder(client, finder_id);
    return added.error();
  }
  return {};
}

bool GroupBroker::has_finder(ClientKey client, std::uint64_t finder_id) const {
  return client_index_.contains({client, finder_id});
}

common::Result<void> GroupBroker::remove_finder(ClientKey client, std::uint64_t finder_id) {
  auto it = client_index_.find({client, finder_id});
  if (it == client_index_.end()) return Error(Errc::not_found, "no finder " + std::to_string(finder_id));
  const std::uint64_t id = it->second;
  client_index_.erase(it);
  (void)context_.finders->remove(client, finder_id);
  auto entry = clients_.find(id);
  if (entry == clients_.end()) return {};
  if (entry->second.distinct) {
    auto d = distinct_.find(*entry->second.distinct);
    if (d != distinct_.end()) {
      d->second.clients.erase(id);
      // The last local client of this finder left: no peer needs to keep it.
      if (d->second.clients.empty()) {
        if (d->second.wire) unforward(d->second);
        distinct_.erase(d);
      }
    }
  }
  std::erase_if(lost_, [&](const auto& l) { return l.first.first == id; });
  clients_.erase(entry);
  return {};
}

void GroupBroker::remove_client(ClientKey client) {
  std::vector<std::uint64_t> ids;
  for (auto it = client_index_.lower_bound({client, 0}); it != client_index_.end() && it->first.first == client; ++it) {
    ids.push_back(it->first.second);
  }
  for (std::uint64_t finder_id : ids) (void)remove_finder(client, finder_id);
}

void GroupBroker::on_local_event(std::uint64_t id, const FinderRegistry::Event& event) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  ClientEntry& entry = it->second;
  if (const auto* matched = std::get_if<common::FinderMatchedMsg>(&event)) {
    show_match(entry, "", matched->device, matched->units);
  } else if (const auto* changed = std::get_if<common::FinderChangedMsg>(&event)) {
    show_match(entry, "", changed->device, changed->units);
  } else if (const auto* gone = std::get_if<common::FinderGoneMsg>(&event)) {
    show_gone(entry, "", gone->dtu, gone->device, gone->reason);
  } else {  // finder_synced
    entry.local_synced = true;
    maybe_synced(entry);
  }
}

void GroupBroker::show_match(ClientEntry& entry, const std::string& source, const common::DeviceRecord& record,
                             const std::vector<std::uint32_t>& units) {
  const DeviceKey key{record.dtu, record.device};
  encoded_.use(record);
  auto it = entry.shown.find(key);
  if (it == entry.shown.end()) {
    entry.shown.emplace(key, Shown{source, units, record.orphaned, encoded_.record(), false});
    ++matches_sent_;
    entry.sink(common::finder_event_frame(MessageType::finder_matched, entry.finder_id, encoded_.json(), units));
    return;
  }
  // The same device from another source (a DTU that moved to another manager, or came back
  // within the grace window) is news about the device the client knows, not a second device.
  lost_.erase({entry.id, key});
  it->second = Shown{source, units, record.orphaned, encoded_.record(), false};
  entry.sink(common::finder_event_frame(MessageType::finder_changed, entry.finder_id, encoded_.json(), units));
}

void GroupBroker::show_gone(ClientEntry& entry, const std::string& source, const std::string& dtu,
                            const std::string& device, const std::string& reason) {
  auto it = entry.shown.find({dtu, device});
  // A source the client no longer hears this device from has nothing to take back.
  if (it == entry.shown.end() || it->second.source != source) return;
  if (reason == "dtu_lost" && context_.grace.count() > 0) {
    // The DTU may be re-homing: show the match orphaned and wait for it to come back.
    if (it->second.lost) return;
    Shown& shown = it->second;
    shown.lost = true;
    shown.orphaned = true;
    common::DeviceRecord orphaned = *shown.record;
    orphaned.orphaned = true;
    encoded_.use(orphaned);
    shown.record = encoded_.record();
    entry.sink(common::finder_event_frame(MessageType::finder_changed, entry.finder_id, encoded_.json(), shown.units));
    const DeviceKey key{dtu, device};
    lost_[{entry.id, key}] = std::make_unique<common::DeadlineGuard>(
        context_.executor, context_.grace, [this, alive = std::weak_ptr<int>(alive_), id = entry.id, key] {
          if (!alive.expired()) lost_over(id, key);
        });
    return;
  }
  lost_.erase({entry.id, {dtu, device}});
  entry.shown.erase(it);
  entry.sink(common::to_frame(common::FinderGoneMsg{entry.finder_id, dtu, device, reason}));
}

void GroupBroker::lost_over(std::uint64_t id, const DeviceKey& key) {
  lost_.erase({id, key});
  auto entry = clients_.find(id);
  if (entry == clients_.end()) return;
  auto it = entry->second.shown.find(key);
  if (it == entry->second.shown.end() || !it->second.lost) return;
  entry->second.shown.erase(it);
  entry->second.sink(
      common::to_frame(common::FinderGoneMsg{entry->second.finder_id, key.first, key.second, "dtu_lost"}));
}

void GroupBroker::maybe_synced(ClientEntry& entry) {
  if (entry.synced_sent || !entry.local_synced || !entry.waiting.empty()) return;
  entry.synced_sent = true;
  entry.sink(common::to_frame(common::FinderSyncedMsg{entry.finder_id}));
}

void GroupBroker::on_remote_match(const std::string& peer, std::uint64_t wire_id, common::DeviceRecord record,
                                  std::vector<std::uint32_t> units) {
  auto w = by_wire_.find(wire_id);
  if (w == by_wire_.end()) return;  // unregistered meanwhile
  Distinct& distinct = distinct_.at(w->second);
  record.orphaned = false;
  const DeviceKey key{record.dtu, record.device};
  distinct.remote[peer][key] = RemoteMatch{record, units};
  for (std::uint64_t id : distinct.clients) show_match(clients_.at(id), peer, record, units);
}

void GroupBroker::on_remote_gone(const std::string& peer, const common::FinderGoneMsg& gone) {
  auto w = by_wire_.find(gone.finder_id);
  if (w == by_wire_.end()) return;
  Distinct& distinct = distinct_.at(w->second);
  auto from = distinct.remote.find(peer);
  if (from == distinct.remote.end() || from->second.erase({gone.dtu, gone.device}) == 0) return;
  if (from->second.empty()) distinct.remote.erase(from);
  for (std::uint64_t id : distinct.clients) show_gone(clients_.at(id), peer, gone.dtu, gone.device, gone.reason);
}

void GroupBroker::on_remote_synced(const std::string& peer, std::uint64_t wire_id) {
  auto w = by_wire_.find(wire_id);
  if (w == by_wire_.end()) return;
  Distinct& distinct = distinct_.at(w->second);
  distinct.synced.insert(peer);
  // What the peer did not send again since it came back is gone.
  drop_remote(distinct, peer, true, "resync");
  for (std::uint64_t id : distinct.clients) {
    ClientEntry& entry = clients_.at(id);
    entry.waiting.erase(peer);
    maybe_synced(entry);
  }
}

void GroupBroker::drop_remote(Distinct& distinct, const std::string& peer, bool only_orphaned,
                              const std::string& reason) {
  auto from = distinct.remote.find(peer);
  if (from == distinct.remote.end()) return;
  std::vector<DeviceKey> dropped;
  for (auto it = from->second.begin(); it != from->second.end();) {
    if (only_orphaned && !it->second.record.orphaned) {
      ++it;
      continue;
    }
    dropped.push_back(it->first);
    it = from->second.erase(it);
  }
  if (from->second.empty()) distinct.remote.erase(from);
  for (const DeviceKey& key : dropped) {
    for (std::uint64_t id : distinct.clients) show_gone(clients_.at(id), peer, key.first, key.second, reason);
  }
}

void GroupBroker::orphan(const std::string& peer) {
  for (auto& [key, distinct] : distinct_) {
    distinct.synced.erase(peer);
    if (auto from = distinct.remote.find(peer); from != distinct.remote.end()) {
      for (auto& [device, match] : from->second) {
        if (match.record.orphaned) continue;
        match.record.orphaned = true;
        // Only a client that sees the device through this peer is told: the DTU may already be
        // live here (it re-homed before the peer was declared dead).
        for (std::uint64_t id : distinct.clients) {
          ClientEntry& entry = clients_.at(id);
          auto shown = entry.shown.find(device);
          if (shown != entry.shown.end() && shown->second.source == peer) {
            show_match(entry, peer, match.record, match.units);
          }
        }
      }
    }
    // A dead peer no longer holds up anyone's finder_synced.
    for (std::uint64_t id : distinct.clients) {
      ClientEntry& entry = clients_.at(id);
      entry.waiting.erase(peer);
      maybe_synced(entry);
    }
  }
}

void GroupBroker::grace_over(const std::string& peer) {
  for (auto& [key, distinct] : distinct_) drop_remote(distinct, peer, true, "owner_lost");
  auto it = peers_.find(peer);
  if (it != peers_.end() && it->second.link) return;  // back: its own announcement is the truth
  std::erase_if(ownership_, [&](const auto& claim) { return claim.second.manager == peer; });
  log_.info("", "group_peer_forgotten", {{"peer", peer}});
}

void GroupBroker::session_moved(const std::string& session, const SessionTable::Move& move) {
  if (move.from == move.to) return;
  for (auto& [key, distinct] : distinct_) {
    if (distinct.finder.scope != common::FinderScope::session || *distinct.finder.session != session) continue;
    if (distinct.wire) {
      std::vector<std::string> from;
      for (const auto& [peer, matches] : distinct.remote) from.push_back(peer);
      for (const auto& peer : from) drop_remote(distinct, peer, false, "session_moved");
      unforward(distinct);
      distinct.wire.reset();
      distinct.synced.clear();
    }
    distinct.wire = wire_form(distinct.finder, *context_.sessions);
    if (!distinct.wire) {
      // Nothing travels now: no peer's finder_synced is due any more.
      for (std::uint64_t id : distinct.clients) {
        ClientEntry& entry = clients_.at(id);
        entry.waiting.clear();
        maybe_synced(entry);
      }
      continue;
    }
    distinct.wire_id = next_wire_++;
    by_wire_[distinct.wire_id] = key;
    for (auto& [id, peer] : peers_) {
      if (peer.link && peer.link->is_open()) forward(distinct, peer.link);
    }
  }
}

// --- Finders, owner side ----------------------------------------------------------------------

void GroupBroker::hold_finder(const std::shared_ptr<PeerLink>& link, const Frame& frame) {
  auto msg = common::from_frame<common::RegisterFinderMsg>(frame);
  if (!msg.ok()) return protocol_error(link, msg.error().describe());
  if (msg->finder.scope != common::FinderScope::interconnect && msg->finder.scope != common::FinderScope::dtu) {
    return protocol_error(link, std::string("a forwarded finder has scope ") + common::finder_scope_name(msg->finder.scope));
  }
  auto& held = held_[link.get()];
  if (held.contains(msg->finder_id)) {
    return link->reply_error(frame, Errc::invalid_argument,
                             "finder " + std::to_string(msg->finder_id) + " is already registered");
  }
  // The ack goes out before the first matches.
  link->reply(frame, common::to_frame(common::AckMsg{}));
  held.insert(msg->finder_id);
  std::weak_ptr<PeerLink> weak = link;
  auto sink = [weak](Frame event) {
    if (auto l = weak.lock(); l && l->is_open()) l->notify(std::move(event));
  };
  const FinderRegistry::Owner owner{"peer:" + link->id(), 0, 0};
  (void)context_.finders->add(link.get(), owner, sink, msg->finder_id, std::move(msg->finder));
}

void GroupBroker::drop_held(const PeerLink* link) {
  auto it = held_.find(link);
  if (it == held_.end()) return;
  held_.erase(it);
  context_.finders->remove_client(link);
}

std::uint32_t GroupBroker::finders_held_total() const {
  std::size_t n = 0;
  for (const auto& [link, ids] : held_) n += ids.size();
  return count32(n);
}

// --- Ownership --------------------------------------------------------------------------------

common::PeerOwnershipMsg GroupBroker::own_claims(bool full) const {
  common::PeerOwnershipMsg msg;
  msg.manager = context_.manager_id;
  msg.incarnation = context_.incarnation;
  msg.full = full;
  for (const auto& [dtu, claim] : ownership_) {
    if (claim.manager == context_.manager_id) msg.owned.push_back(common::OwnedDtu{dtu, claim.stamp, claim.devices});
  }
  return msg;
}

void GroupBroker::broadcast(const Frame& frame) {
  for (auto& [id, peer] : peers_) {
    if (peer.link && peer.link->is_open()) peer.link->notify(frame);
  }
}

void GroupBroker::dtu_active(const std::string& dtu, const common::Stamp& stamp) {
  const std::uint32_t devices = count32(context_.devices->list(dtu).size());
  if (auto it = ownership_.find(dtu);
      it != ownership_.end() && it->second.manager != context_.manager_id && stamp < it->second.stamp) {
    // The DTU has claimed another manager since it made this claim: this link is the stale one.
    log_.warn("", "ownership_lost",
              {{"dtu", dtu},
               {"owner", it->second.manager},
               {"ours", stamp_text(stamp)},
               {"theirs", stamp_text(it->second.stamp)}});
    return lose(dtu, it->second.manager);
  }
  // Connected here with the newest claim: this is where the DTU is now.
  ownership_[dtu] = Claim{context_.manager_id, context_.incarnation, stamp, devices};
  announce(dtu, ownership_[dtu]);
}

void GroupBroker::announce(const std::string& dtu, const Claim& claim) {
  common::PeerOwnershipMsg msg;
  msg.manager = context_.manager_id;
  msg.incarnation = context_.incarnation;
  msg.owned.push_back(common::OwnedDtu{dtu, claim.stamp, claim.devices});
  broadcast(common::to_frame(msg));
}

void GroupBroker::lose(const std::string& dtu, const std::string& peer) {
  // After the caller returns: the manager closes the DTU's session, which calls back here.
  asio::post(context_.executor, [this, alive = std::weak_ptr<int>(alive_), dtu, peer] {
    if (alive.expired() || !context_.ownership_lost) return;
    // The DTU may have claimed us again meanwhile (a newer link here): then it is ours.
    auto it = ownership_.find(dtu);
    if (it == ownership_.end() || it->second.manager != peer) return;
    context_.ownership_lost(dtu, peer);
  });
}

void GroupBroker::dtu_lost(const std::string& dtu) {
  auto it = ownership_.find(dtu);
  if (it == ownership_.end() || it->second.manager != context_.manager_id) return;
  ownership_.erase(it);
  common::PeerOwnershipMsg msg;
  msg.manager = context_.manager_id;
  msg.incarnation = context_.incarnation;
  msg.lost.push_back(dtu);
  broadcast(common::to_frame(msg));
}

void GroupBroker::on_ownership(const std::shared_ptr<PeerLink>& link, const common::PeerOwnershipMsg& msg) {
  const std::string& peer = link->id();
  if (msg.manager != peer) return protocol_error(link, "peer_ownership names manager " + msg.manager);
  Peer& state = peers_[peer];
  // Reject news of an older incarnation: it must not undo what the newer one said.
  if (msg.incarnation < state.incarnation) {
    log_.debug(link->address(), "peer_ownership_stale", {{"peer", peer}, {"incarnation", msg.incarnation}});
    return;
  }
  state.incarnation = msg.incarnation;
  state.announced = true;
  if (msg.full) std::erase_if(ownership_, [&](const auto& claim) { return claim.second.manager == peer; });
  for (const common::OwnedDtu& owned : msg.owned) {
    const Claim claim{peer, msg.incarnation, owned.stamp, owned.devices};
    auto it = ownership_.find(owned.dtu);
    if (it == ownership_.end()) {
      ownership_.emplace(owned.dtu, claim);
    } else if (it->second.manager == context_.manager_id) {
      // Ours: only the DTU's own stamp decides (never which news arrived last).
      if (it->second.stamp < owned.stamp) {
        log_.warn(link->address(), "ownership_lost",
                  {{"dtu", owned.dtu},
                   {"owner", peer},
                   {"ours", stamp_text(it->second.stamp)},
                   {"theirs", stamp_text(owned.stamp)}});
        it->second = claim;
        lose(owned.dtu, peer);
      } else {
        log_.info(link->address(), "stale_claim_ignored",
                  {{"dtu", owned.dtu},
                   {"peer", peer},
                   {"ours", stamp_text(it->second.stamp)},
                   {"theirs", stamp_text(owned.stamp)}});
        announce(owned.dtu, it->second);
      }
    } else if (it->second.manager == peer || it->second.stamp < owned.stamp) {
      if (it->second.manager != peer) {
        log_.info(link->address(), "dtu_moved", {{"dtu", owned.dtu}, {"from", it->second.manager}, {"to", peer}});
      }
      it->second = claim;
    }
  }
  for (const std::string& dtu : msg.lost) {
    auto it = ownership_.find(dtu);
    if (it != ownership_.end() && it->second.manager == peer && it->second.incarnation <= msg.incarnation) {
      ownership_.erase(it);
    }
  }
}

std::optional<std::string> GroupBroker::owner_of(const std::string& dtu) const {
  auto it = ownership_.find(dtu);
  if (it == ownership_.end()) return std::nullopt;
  return it->second.manager;
}

std::map<std::string, std::string> GroupBroker::owners() const {
  std::map<std::string, std::string> owners;
  for (const auto& [dtu, claim] : ownership_) owners[dtu] = claim.manager;
  return owners;
}

std::optional<common::Stamp> GroupBroker::claim_of(const std::string& dtu) const {
  auto it = ownership_.find(dtu);
  if (it == ownership_.end()) return std::nullopt;
  return it->second.stamp;
}

// --- Allocation, origin side ------------------------------------------------------------------

common::Result<std::shared_ptr<PeerLink>> GroupBroker::route(const std::string& dtu) const {
  auto it = ownership_.find(dtu);
  if (it == ownership_.end()) {
    return Error(Errc::not_found, "DTU " + dtu + " is not connected to any manager of the group");
  }
  if (it->second.manager == context_.manager_id) return std::shared_ptr<PeerLink>();  // here after all
  auto peer = peers_.find(it->second.manager);
  if (peer == peers_.end() || !peer->second.link || !peer->second.link->is_open()) {
    return Error(Errc::unavailable,
                 "DTU " + dtu + " is served by manager " + it->second.manager + ", which is not reachable now; retry");
  }
  return peer->second.link;
}

common::OnBehalf GroupBroker::on_behalf(const LeaseHolder& holder) const {
  return common::OnBehalf{holder.uid(), holder.gid(), holder.pid(), holder.client_name(), holder.holder_name()};
}

void GroupBroker::forward_lease_op(const std::shared_ptr<PeerLink>& link, Frame frame, common::Duration timeout,
                                   const std::shared_ptr<LeaseHolder>& holder, bool remember, bool keep,
                                   Done<common::LeaseGrantedMsg> done) {
  std::weak_ptr<LeaseHolder> weak = holder;
  link->request(std::move(frame), timeout,
                [this, alive = std::weak_ptr<int>(alive_), weak, key = holder.get(), who = on_behalf(*holder),
                 peer = link->id(), remember, keep, done = std::move(done)](common::Result<Frame> answer) {
                  if (alive.expired()) return;
                  if (!answer.ok() || answer->type != MessageType::lease_granted) return done(error_of(answer, peer));
                  auto granted = common::from_frame<common::LeaseGrantedMsg>(*answer);
                  if (!granted.ok()) return done(granted.error());
                  // A lease renewed at a new owner (its DTU re-homed) is that owner's now.
                  if (auto known = remote_leases_.find(granted->lease); known != remote_leases_.end()) {
                    known->second.peer = peer;
                  }
                  if (remember) {
                    if (weak.expired()) {
                      // The service went away while the owner granted: give the unit back.
                      if (!keep) send_to_peer_release(peer, who, granted->dtu, granted->lease);
                      return done(Error(Errc::closed, "the client closed its connection"));
                    }
                    remote_leases_[granted->lease] = RemoteLease{peer, granted->dtu, weak, key, who, keep};
                    log_.info("", "remote_lease_granted", {{"lease", granted->lease}, {"dtu", granted->dtu},
                                                           {"owner", peer}, {"holder", who.holder}, {"uid", who.uid}});
                  }
                  done(std::move(granted.value()));
                });
}

void GroupBroker::allocate(const std::shared_ptr<LeaseHolder>& holder, common::AllocateMsg request,
                           Done<common::LeaseGrantedMsg> done) {
  if (context_.dtu_is_local(request.dtu)) return context_.leases->allocate(holder, std::move(request), std::move(done));
  auto link = route(request.dtu);
  if (!link.ok()) return done(link.error());
  if (!*link) return context_.leases->allocate(holder, std::move(request), std::move(done));
  const common::Duration timeout =
      kLeaseRequestTimeout + kPeerHopMargin + std::chrono::milliseconds(request.wait_ms.value_or(0));
  const bool keep = request.keep;
  forward_lease_op(*link, common::to_frame(common::PeerAllocateMsg{on_behalf(*holder), std::move(request)}), timeout,
                   holder, true, keep, std::move(done));
}

void GroupBroker::renew(const std::shared_ptr<LeaseHolder>& holder, common::RenewMsg request,
                        Done<common::LeaseGrantedMsg> done) {
  if (!context_.dtu_is_local(request.dtu) && !ownership_.contains(request.dtu) &&
      remote_leases_.contains(request.lease)) {
    // Its DTU is between managers (failover): the lease lives on at the DTU.
    return done(
        Error(Errc::unavailable, "DTU " + request.dtu + " has no known manager now (it is moving); retry"));
  }
  // A DTU no manager claims now is answered here as before the group: its lease may be one this
  // manager knows, and the DTU may come back (unavailable: retry).
  if (context_.dtu_is_local(request.dtu) || !ownership_.contains(request.dtu)) {
    return context_.leases->renew(holder, std::move(request), std::move(done));
  }
  auto link = route(request.dtu);
  if (!link.ok()) return done(link.error());
  if (!*link) return context_.leases->renew(holder, std::move(request), std::move(done));
  forward_lease_op(*link, common::to_frame(common::PeerRenewMsg{on_behalf(*holder), std::move(request)}),
                   kLeaseRequestTimeout + kPeerHopMargin, holder, false, false, std::move(done));
}

void GroupBroker::resume(const std::shared_ptr<LeaseHolder>& holder, common::ResumeLeaseMsg request,
                         Done<common::LeaseGrantedMsg> done) {
  // A DTU no manager claims now is answered here as before the group: its lease may be one this
  // manager knows, and the DTU may come back (unavailable: retry).
  if (context_.dtu_is_local(request.dtu) || !ownership_.contains(request.dtu)) {
    return context_.leases->resume(holder, std::move(request), std::move(done));
  }
  auto link = route(request.dtu);
  if (!link.ok()) return done(link.error());
  if (!*link) return context_.leases->resume(holder, std::move(request), std::move(done));
  forward_lease_op(*link, common::to_frame(common::PeerResumeMsg{on_behalf(*holder), std::move(request)}),
                   kLeaseRequestTimeout + kPeerHopMargin, holder, true, false, std::move(done));
}

void GroupBroker::release(const std::shared_ptr<LeaseHolder>& holder, common::ReleaseMsg request, Done<void> done) {
  if (!context_.dtu_is_local(request.dtu) && !ownership_.contains(request.dtu)) {
    // A DTU no manager claims now: a lease this manager does not know may live on at the DTU,
    // which is between managers (failover, drain) and is adopted where it connects next; the
    // holder retries an unavailable release (not_found would be final, and the unit stay held
    // until its expiry).
    const std::string dtu = request.dtu;
    return context_.leases->release(
        holder, std::move(request), [dtu, done = std::move(done)](common::Result<void> released) {
          if (released.ok() || released.error().code != Errc::not_found) return done(std::move(released));
          done(Error(Errc::unavailable,
                     "DTU " + dtu + " has no known manager now (it may be moving): " + released.error().detail));
        });
  }
  // A DTU no manager claims now is answered here as before the group: its lease may be one this
  // manager knows, and the DTU may come back (unavailable: retry).
  if (context_.dtu_is_local(request.dtu) || !ownership_.contains(request.dtu)) {
    return context_.leases->release(holder, std::move(request), std::move(done));
  }
  auto link = route(request.dtu);
  if (!link.ok()) return done(link.error());
  if (!*link) return context_.leases->release(holder, std::move(request), std::move(done));
  (*link)->request(common::to_frame(common::PeerReleaseMsg{on_behalf(*holder), std::move(request)}),
                   kLeaseRequestTimeout + kPeerHopMargin,
                   [peer = (*link)->id(), done = std::move(done)](common::Result<Frame> answer) {
                     if (answer.ok() && answer->type == MessageType::ack) return done({});
                     done(error_of(answer, peer));
                   });
}

void GroupBroker::send_to_peer_release(const std::string& peer, const common::OnBehalf& who, const std::string& dtu,
                                       const std::string& lease) {
  auto it = peers_.find(peer);
  if (it == peers_.end() || !it->second.link || !it->second.link->is_open()) {
    log_.warn("", "lease_release_failed", {{"lease", lease}, {"owner", peer}, {"reason", "owner not reachable; the lease expires on the DTU"}});
    return;
  }
  it->second.link->request(
      common::to_frame(common::PeerReleaseMsg{who, common::ReleaseMsg{dtu, lease}}), kLeaseRequestTimeout + kPeerHopMargin,
      [log = log_, lease, peer](common::Result<Frame> answer) {
        if (answer.ok() && answer->type == MessageType::ack) return;
        log.warn("", "lease_release_failed", {{"lease", lease}, {"owner", peer}, {"reason", error_of(answer, peer).describe()}});
      });
}

void GroupBroker::holder_closed(const LeaseHolder* holder) {
  context_.leases->holder_closed(holder);
  std::vector<std::pair<std::string, RemoteLease>> gone;
  for (auto it = remote_leases_.begin(); it != remote_leases_.end();) {
    if (it->second.holder_key != holder) {
      ++it;
      continue;
    }
    gone.emplace_back(it->first, std::move(it->second));
    it = remote_leases_.erase(it);
  }
  for (const auto& [lease, held] : gone) {
    if (held.keep) continue;
    // The DTU re-homed here since the grant: the local LeaseBroker adopted the lease. Bound to
    // this client, it was released just now (context_.leases->holder_closed above); bound to
    // nobody (the client closed first, or its token named several clients), release it here.
    if (context_.dtu_is_local(held.dtu)) {
      context_.leases->release_unbound(held.dtu, lease);
      continue;
    }
    // It re-homed to another peer: that one holds the lease now, not the one that granted it.
    const std::string owner = owner_of(held.dtu).value_or(held.peer);
    log_.info("", "lease_holder_gone", {{"lease", lease}, {"dtu", held.dtu}, {"owner", owner}});
    send_to_peer_release(owner, held.on_behalf, held.dtu, lease);
  }
}

void GroupBroker::on_lease_ended(const std::string& peer, const common::LeaseEndedMsg& ended) {
  auto it = remote_leases_.find(ended.lease);
  if (it == remote_leases_.end() || it->second.dtu != ended.dtu) return;
  // From the manager that granted it, or from the one its DTU re-homed to (which adopted it).
  if (it->second.peer != peer && owner_of(ended.dtu) != peer) return;
  auto holder = it->second.holder.lock();
  remote_leases_.erase(it);
  log_.info("", "remote_lease_ended", {{"lease", ended.lease}, {"dtu", ended.dtu}, {"owner", peer},
                                       {"reason", ended.reason}});
  if (holder) holder->notify(common::to_frame(ended));
}

// --- Allocation, owner side -------------------------------------------------------------------

std::shared_ptr<GroupBroker::RemoteHolder> GroupBroker::remote_holder(const std::string& peer,
                                                                       const common::OnBehalf& who) {
  prune_holders();
  // Keyed by uid too: a later process of another uid reusing the name and pid is someone else.
  auto& slot = holders_[{peer, who.holder + "#" + std::to_string(who.uid)}];
  if (!slot) {
    slot = std::make_shared<RemoteHolder>(peer, who, [this, alive = std::weak_ptr<int>(alive_)](const std::string& to, Frame frame) {
      if (alive.expired()) return;
      send_to_peer(to, std::move(frame));
      // A lease of it may just have ended: forget holders that hold nothing (after this call).
      asio::post(context_.executor, [this, alive] {
        if (!alive.expired()) prune_holders();
      });
    });
  } else {
    slot->update(who);
  }
  return slot;
}

void GroupBroker::prune_holders() {
  std::erase_if(holders_, [&](const auto& entry) {
    return entry.second->pending == 0 && !context_.leases->holds(entry.second.get());
  });
}

void GroupBroker::send_to_peer(const std::string& peer, Frame frame) {
  auto it = peers_.find(peer);
  if (it == peers_.end() || !it->second.link || !it->second.link->is_open()) {
    log_.info("", "peer_event_dropped", {{"peer", peer}, {"type", common::message_type_name(frame.type)}});
    return;
  }
  it->second.link->notify(std::move(frame));
}

void GroupBroker::serve_lease_op(const std::shared_ptr<PeerLink>& link, const Frame& frame) {
  std::weak_ptr<PeerLink> weak = link;
  auto finish = [this, alive = std::weak_ptr<int>(alive_)](const std::shared_ptr<RemoteHolder>& holder) {
    if (alive.expired()) return;
    --holder->pending;
    prune_holders();
  };
  auto reply_lease = [weak, frame, finish](const std::shared_ptr<RemoteHolder>& holder) {
    return [weak, frame, finish, holder](common::Result<common::LeaseGrantedMsg> r) {
      if (auto l = weak.lock()) answer(*l, frame, r);
      finish(holder);
    };
  };
  switch (frame.type) {
    case MessageType::peer_allocate: {
      auto msg = common::from_frame<common::PeerAllocateMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      auto holder = remote_holder(link->id(), msg->on_behalf);
      ++holder->pending;
      log_.info(link->address(), "peer_allocate", {{"peer", link->id()}, {"dtu", msg->request.dtu},
                                                   {"device", msg->request.device}, {"holder", msg->on_behalf.holder},
                                                   {"uid", msg->on_behalf.uid}});
      return context_.leases->allocate(holder, std::move(msg->request), reply_lease(holder));
    }
    case MessageType::peer_renew: {
      auto msg = common::from_frame<common::PeerRenewMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      auto holder = remote_holder(link->id(), msg->on_behalf);
      ++holder->pending;
      return context_.leases->renew(holder, std::move(msg->request), reply_lease(holder));
    }
    case MessageType::peer_resume: {
      auto msg = common::from_frame<common::PeerResumeMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      auto holder = remote_holder(link->id(), msg->on_behalf);
      ++holder->pending;
      return context_.leases->resume(holder, std::move(msg->request), reply_lease(holder));
    }
    case MessageType::peer_release: {
      auto msg = common::from_frame<common::PeerReleaseMsg>(frame);
      if (!msg.ok()) return protocol_error(link, msg.error().describe());
      auto holder = remote_holder(link->id(), msg->on_behalf);
      ++holder->pending;
      return context_.leases->release(holder, std::move(msg->request), [weak, frame, finish, holder](common::Result<void> r) {
        if (auto l = weak.lock()) {
          if (r.ok()) {
            answer(*l, frame, common::Result<common::AckMsg>(common::AckMsg{}));
          } else {
            answer(*l, frame, common::Result<common::AckMsg>(r.error()));
          }
        }
        finish(holder);
      });
    }
    default: return protocol_error(link, "unexpected message");
  }
}

// --- Listings ---------------------------------------------------------------------------------

std::vector<common::FinderInfo> GroupBroker::list_finders() const {
  std::vector<common::FinderInfo> out;
  out.reserve(clients_.size());
  for (const auto& [id, entry] : clients_) {
    common::FinderInfo info;
    info.client = entry.owner.client;
    info.pid = entry.owner.pid;
    info.uid = entry.owner.uid;
    info.finder_id = entry.finder_id;
    info.finder = entry.finder;
    for (const auto& [key, shown] : entry.shown) {
      info.matches.push_back(common::MatchRef{key.first, key.second, shown.units,
                                              shown.source.empty() ? context_.manager_id : shown.source,
                                              shown.orphaned});
    }
    common::sort_matches(info.matches);
    out.push_back(std::move(info));
  }
  return out;
}

void GroupBroker::list_group_devices(std::optional<std::string> dtu,
                                     std::function<void(std::vector<common::DeviceRecord>)> done) {
  struct Gather {
    std::vector<common::DeviceRecord> records;
    std::size_t waiting = 0;
    std::function<void(std::vector<common::DeviceRecord>)> done;
    void finish() {
      // Ours first: while a DTU moves, the manager it is connected to tells the truth.
      std::stable_sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
        return std::tie(a.dtu, a.device) < std::tie(b.dtu, b.device);
      });
      records.erase(std::unique(records.begin(), records.end(),
                                [](const auto& a, const auto& b) { return a.dtu == b.dtu && a.device == b.device; }),
                    records.end());
      done(std::move(records));
    }
  };
  auto gather = std::make_shared<Gather>();
  gather->records = context_.devices->list(dtu);
  gather->done = std::move(done);
  std::vector<std::shared_ptr<PeerLink>> live;
  for (const auto& [id, peer] : peers_) {
    if (peer.link && peer.link->is_open()) live.push_back(peer.link);
  }
  gather->waiting = live.size();
  if (live.empty()) return gather->finish();
  for (const auto& link : live) {
    link->request(common::to_frame(common::ListDevicesMsg{dtu, false}), kPeerListTimeout,
                  [gather](common::Result<Frame> answer) {
                    if (answer.ok() && answer->type == MessageType::device_list) {
                      auto list = common::from_frame<common::DeviceListMsg>(*answer);
                      if (list.ok()) {
                        for (auto& record : list->devices) gather->records.push_back(std::move(record));
                      }
                    }
                    if (--gather->waiting == 0) gather->finish();
                  });
  }
}

GroupBroker::PeerCounts GroupBroker::counts(const std::string& peer) const {
  PeerCounts out;
  auto it = peers_.find(peer);
  if (it == peers_.end()) return out;
  if (it->second.link) {
    if (auto held = held_.find(it->second.link.get()); held != held_.end()) out.finders_held = count32(held->second.size());
    out.finders_sent = count32(static_cast<std::size_t>(
        std::count_if(distinct_.begin(), distinct_.end(), [](const auto& d) { return d.second.wire.has_value(); })));
  }
  if (it->second.announced) {
    out.dtus = count32(static_cast<std::size_t>(std::count_if(
        ownership_.begin(), ownership_.end(), [&](const auto& claim) { return claim.second.manager == peer; })));
  }
  return out;
}

void GroupBroker::peer_devices(const std::shared_ptr<PeerLink>& link,
                               std::function<void(std::optional<std::uint32_t>)> done) {
  link->request(common::to_frame(common::PeerStatusMsg{}), kPeerListTimeout,
                [done = std::move(done)](common::Result<Frame> answer) {
                  if (answer.ok() && answer->type == MessageType::peer_status_reply) {
                    auto reply = common::from_frame<common::PeerStatusReplyMsg>(*answer);
                    if (reply.ok()) return done(reply->devices);
                  }
                  done(std::nullopt);
                });
}

}  // namespace dtu::devmgr
