#include "dtu/devmgr/device_manager.hpp"

#include <unistd.h>

#include <algorithm>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/group_messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"

namespace dtu::devmgr {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

namespace {

// Equal but for the stamp: nothing a service would see has changed.
bool same_device(const common::DeviceRecord& a, const common::DeviceRecord& b) {
  common::DeviceRecord unstamped = a;
  unstamped.stamp = b.stamp;
  return unstamped == b;
}

double seconds(common::Duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

common::Duration median_offset(std::vector<common::Duration> peer_offsets) {
  peer_offsets.push_back(common::Duration::zero());
  std::sort(peer_offsets.begin(), peer_offsets.end());
  const std::size_t n = peer_offsets.size();
  if (n % 2 == 1) return peer_offsets[n / 2];
  return (peer_offsets[n / 2 - 1] + peer_offsets[n / 2]) / 2;
}

DeviceManager::DeviceManager(const asio::any_io_executor& ex, const common::Clock& clock, ManagerOptions options,
                             common::SecretKey site_dtu_key)
    : executor_(ex),
      clock_(clock),
      options_(std::move(options)),
      site_dtu_key_(std::move(site_dtu_key)),
      universal_(clock),
      dtu_handshakes_(options_.max_handshakes_per_source, options_.max_handshakes),
      client_connections_(options_.max_connections_per_uid, 0),
      finders_(options_.id, devices_, sessions_),
      leases_(LeaseBroker::Context{options_.id, ex, &clock,
                                   // A DTU between its hello and its snapshot has no claim yet, so
                                   // no fence: lease operations wait (unavailable, retried).
                                   [this](const std::string& dtu) {
                                     auto it = dtus_.find(dtu);
                                     return it == dtus_.end() || !it->second->claim() ? nullptr : it->second;
                                   },
                                   &devices_, &sessions_, [this]() -> const Policy& { return policy_; }},
              log_),
      incarnation_(static_cast<std::uint64_t>(common::to_micros(clock.wall_now()))),
      group_(GroupBroker::Context{options_.id, incarnation_, ex, &clock, &devices_, &finders_, &leases_, &sessions_,
                                  options_.orphan_grace,
                                  [this](const std::string& dtu) {
                                    auto it = dtus_.find(dtu);
                                    return it != dtus_.end() && it->second->claim().has_value();
                                  },
                                  [this](const std::string& dtu, const std::string& new_owner) {
                                    on_ownership_lost(dtu, new_owner);
                                  }},
             log_) {
  leases_.set_universal_time([this] { return universal_.now().wall_us; });
  leases_.set_metrics(&metrics_);
  // A lease adopted from a token of this manager goes at once to its client if still connected.
  leases_.set_local_holders([this] {
    std::vector<std::shared_ptr<LeaseHolder>> open;
    for (const auto& client : clients_) {
      if (client->state() == ClientSession::State::ready) open.push_back(client);
    }
    return open;
  });
  // Every change of the device list reaches the finders (events to services) and the broker
  // (a freed unit goes to its first waiter).
  devices_.set_listener(DeviceList::Listener{
      [this](const common::DeviceRecord* before, const common::DeviceRecord& now) {
        if (before != nullptr && same_device(*before, now)) return;  // a snapshot repeating it
        const common::MonoTime arrived = clock_.now();
        const std::uint64_t matches = group_.matches_sent();
        finders_.device_updated(now);
        if (group_.matches_sent() != matches) {
          metrics_.match_latency.with().observe(seconds(clock_.now() - arrived));
        }
        leases_.device_updated(now);
      },
      [this](const common::DeviceRecord& gone, std::string_view reason) { finders_.device_removed(gone, reason); }});
}

DeviceManager::~DeviceManager() { stop(); }

common::Link::Options DeviceManager::link_options() const {
  common::Link::Options o;
  o.max_payload = options_.max_frame_bytes;
  o.heartbeat_interval = options_.heartbeat_interval;
  o.heartbeat_misses = options_.heartbeat_misses;
  o.max_pending_requests = options_.max_pending_requests;
  return o;
}

common::Result<void> DeviceManager::start() {
  if (!options_.policy_file.empty()) {
    auto policy = Policy::load(options_.policy_file);
    if (!policy.ok()) return policy.error();
    policy_ = std::move(policy.value());
  }
  log_.info("", "policy_loaded", {{"source", policy_.source()}, {"rules", policy_.rule_count()}});
  // Keys are derived per DTU id; the TLS identity is the DTU id, so a DTU holding its own
  // derived key cannot complete a handshake under another DTU's id.
  tls_ = common::make_psk_server_context([key = site_dtu_key_](std::string_view identity) -> std::optional<common::Bytes> {
    if (!common::is_valid_id(identity)) return std::nullopt;
    return common::derive_dtu_key(key, identity);
  });
  auto acceptor = common::tcp_listen(executor_, options_.dtu_listen);
  if (!acceptor.ok()) return acceptor.error();
  dtu_acceptor_.emplace(std::move(acceptor.value()));
  bound_ = common::Endpoint{options_.dtu_listen.host, dtu_acceptor_->local_endpoint().port()};

  auto unix_acceptor = common::unix_listen(executor_, options_.socket_path, options_.socket_mode);
  if (!unix_acceptor.ok()) return unix_acceptor.error();
  client_acceptor_.emplace(std::move(unix_acceptor.value()));

  auto group = load_group();
  if (!group.ok()) return group.error();
  make_group_commands();
  if (group->address) {
    if (auto mesh = start_mesh(*group); !mesh.ok()) return mesh.error();
  } else {
    log_.info("", "group_standalone", {{"reason", group->members.empty()
                                                      ? std::string("no group configured")
                                                      : "no mesh address: no peer_listen and no entry for " +
                                                            options_.id + " in the group list"}});
  }

  if (options_.metrics_listen) {
    metrics_server_ = std::make_unique<MetricsServer>(
        executor_, *options_.metrics_listen, [this] { return render_metrics(); }, log_);
    if (auto serving = metrics_server_->start(); !serving.ok()) return serving.error();
  }

  arm_offset_timer();
  common::spawn(executor_, accept_dtus(), log_, "accept dtus");
  common::spawn(executor_, accept_clients(), log_, "accept clients");
  log_.info("", "listening", {{"id", options_.id}, {"dtu", bound_.to_string()}, {"socket", options_.socket_path},
                              {"heartbeat_ms", options_.heartbeat_interval.count()},
                              {"heartbeat_misses", options_.heartbeat_misses}});
  return {};
}

void DeviceManager::stop() {
  if (stopped_) return;
  stopped_ = true;
  offset_timer_.reset();
  drain_waiters_.clear();
  std::error_code ignored;
  if (dtu_acceptor_) dtu_acceptor_->close(ignored);
  if (client_acceptor_) {
    client_acceptor_->close(ignored);
    ::unlink(options_.socket_path.c_str());
  }
  if (commands_) commands_->stop();
  if (mesh_) mesh_->stop();
  if (metrics_server_) metrics_server_->stop();
  const Error reason(Errc::closed, "manager stopping");
  auto pending = hello_pending_;
  for (auto& s : pending) s->close(reason);
  auto active = dtus_;
  for (auto& [id, s] : active) s->close(reason);
  auto clients = clients_;
  for (auto& c : clients) c->close(reason);
}

asio::awaitable<void> DeviceManager::accept_dtus() {
  while (!stopped_) {
    auto [ec, socket] = co_await dtu_acceptor_->async_accept(as_tuple(asio::use_awaitable));
    if (stopped_) co_return;
    if (ec) {
      log_.warn("", "accept_failed", {{"listener", "dtu"}, {"reason", ec.message()}});
      continue;
    }
    std::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    auto slot = dtu_handshakes_.admit(ignored ? std::string("unknown") : remote.address().to_string());
    if (!slot.ok()) {
      refuse_connection(dtu_handshakes_, "dtu", ignored ? std::string("unknown") : common::to_string(remote),
                        slot.error());
      continue;
    }
    common::spawn(executor_, admit_dtu(std::move(socket), std::move(slot.value())), log_, "admit dtu");
  }
}

void DeviceManager::refuse_connection(const ConnectionLimiter& limiter, const char* listener,
                                      const std::string& peer, const Error& reason) {
  metrics_.connections_refused.with({{"listener", listener}}).inc();
  if (!limiter.log_latest_refusal()) return;
  log_.warn(peer, "connection_limit", {{"listener", listener}, {"refused", limiter.refused()},
                                       {"reason", reason.detail}});
}

// `slot` counts the connection against max_handshakes_per_source until the TLS handshake ends.
asio::awaitable<void> DeviceManager::admit_dtu(asio::ip::tcp::socket socket, ConnectionLimiter::Slot slot) {
  std::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  const std::string peer = ec ? std::string("unknown") : common::to_string(remote);
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  auto handshake = common::tls_accept(std::move(socket), *tls_, options_.handshake_timeout);
  auto transport = co_await std::move(handshake);
  slot.release();
  if (!transport.ok()) {
    log_.warn(peer, "handshake_failed", {{"role", "dtu"}, {"reason", transport.error().describe()}});
    if (!stopped_) metrics_.handshake_failures.with({{"side", "dtu"}}).inc();
    co_return;
  }
  if (stopped_) co_return;
  auto identity = common::accepted_psk_identity((*transport)->ssl());
  if (!identity) {
    log_.warn(peer, "handshake_failed", {{"role", "dtu"}, {"reason", "no PSK identity after handshake"}});
    metrics_.handshake_failures.with({{"side", "dtu"}}).inc();
    co_return;
  }
  auto link = common::Link::create(executor_, std::move(transport.value()), common::FilamentMux::Side::acceptor,
                                   clock_, log_, peer, link_options());
  auto session = std::make_shared<DtuSession>(link, *identity, options_.id, devices_, log_,
                                              options_.heartbeat_interval, options_.heartbeat_misses,
                                              options_.handshake_timeout);
  hello_pending_.insert(session);
  DtuSession::Hooks hooks;
  hooks.admit = [this](const common::DtuHelloMsg& hello) { return admit_dtu_hello(hello); };
  hooks.on_active = [this](const std::shared_ptr<DtuSession>& s) { on_dtu_active(s); };
  hooks.on_claim = [this](const std::shared_ptr<DtuSession>& s) { on_dtu_claim(s); };
  hooks.on_leases = [this](const std::shared_ptr<DtuSession>& s, const std::vector<common::LeaseReport>& leases) {
    leases_.adopt(s->dtu(), leases);
  };
  hooks.on_closed = [this](const std::shared_ptr<DtuSession>& s, const Error& reason) { on_dtu_closed(s, reason); };
  hooks.on_lease_ended = [this](const common::LeaseEndedMsg& ended) { leases_.lease_ended(ended); };
  session->start(std::move(hooks));
}

DtuSession::Admission DeviceManager::admit_dtu_hello(const common::DtuHelloMsg& hello) {
  if (hello.boot_epoch > 0) observe_boot_epoch(hello.boot_epoch, hello.dtu);
  DtuSession::Admission admission;
  admission.universal_us = universal_.now().wall_us;
  // The DTU's next boot epoch must beat every claim on it this manager knows of, even one taken
  // from a manager whose clock ran ahead before the offsets converged (farther ahead than the
  // universal clock follows): otherwise a rebooted DTU would lose to its own old claim.
  std::int64_t known = 0;
  if (auto claim = group_.claim_of(hello.dtu)) known = claim->boot_epoch;
  if (auto last = devices_.last_stamp(hello.dtu)) known = std::max(known, last->boot_epoch);
  if (hello.boot_epoch == 0 && known >= admission.universal_us) {
    log_.info(hello.dtu, "boot_epoch_ahead_of_clock", {{"known", known}, {"universal_us", admission.universal_us}});
    admission.universal_us = known + 1;
  }
  admission.dtus = static_cast<std::uint32_t>(dtus_.size());
  admission.draining = draining_;
  return admission;
}

void DeviceManager::observe_boot_epoch(std::int64_t boot_epoch, const std::string& from) {
  // One microsecond past it: every later now().wall_us (a welcome's universal_us, the next boot
  // epoch a DTU takes) is strictly greater than the epoch itself, not only in logical order.
  auto observed = universal_.observe(common::HlcTimestamp{boot_epoch + 1, 0});
  if (!observed.ok()) {
    // A boot epoch far in our future: a clock we do not follow (max_forward_skew), not an error.
    log_.debug("", "boot_epoch_not_observed", {{"from", from}, {"boot_epoch", boot_epoch},
                                               {"reason", observed.error().describe()}});
  }
}

void DeviceManager::update_universal_offset() {
  std::vector<common::Duration> offsets;
  if (mesh_) {
    for (const auto& link : mesh_->peers()) {
      if (auto sample = link->link().clock_offset()) offsets.push_back(sample->offset);
    }
  }
  const common::Duration offset = median_offset(std::move(offsets));
  if (offset == universal_.offset()) return;
  universal_.set_offset(offset);
  log_.debug("", "universal_offset", {{"offset_us", std::chrono::duration_cast<std::chrono::microseconds>(offset).count()}});
}

void DeviceManager::arm_offset_timer() {
  offset_timer_ = std::make_unique<common::DeadlineGuard>(executor_, kUniversalOffsetPeriod, [this] {
    update_universal_offset();
    if (!stopped_) arm_offset_timer();
  });
}

void DeviceManager::peer_frame(const std::shared_ptr<PeerLink>& link, common::Frame frame) {
  // Every DTU boot epoch a peer announces moves our clock past it too (the GroupBroker reports
  // a frame that does not decode).
  if (frame.type == common::MessageType::peer_ownership && !frame.is_binary()) {
    if (auto news = common::from_frame<common::PeerOwnershipMsg>(frame); news.ok()) {
      for (const auto& owned : news->owned) {
        if (owned.stamp.boot_epoch > 0) observe_boot_epoch(owned.stamp.boot_epoch, link->id());
      }
    }
  }
  if (commands_ && commands_->peer_frame(link->id(), frame, [link, frame](common::Frame reply) {
        link->reply(frame, std::move(reply));
      })) {
    return;
  }
  group_.peer_frame(link, std::move(frame));
}

void DeviceManager::on_dtu_active(const std::shared_ptr<DtuSession>& session) {
  hello_pending_.erase(session);
  auto it = dtus_.find(session->dtu());
  if (it != dtus_.end() && it->second != session) {
    // The DTU reconnected before its old link timed out: the new connection is the truth.
    auto old = it->second;
    dtus_.erase(it);
    log_.info(old->peer(), "dtu_replaced", {{"dtu", session->dtu()}, {"new_peer", session->peer()}});
    old->close(Error(Errc::closed, "replaced by a newer connection from the same DTU"));
  }
  session->set_active_since(clock_.now());
  dtus_[session->dtu()] = session;
  metrics_.dtu_connects.with().inc();
}

void DeviceManager::on_dtu_claim(const std::shared_ptr<DtuSession>& session) {
  auto it = dtus_.find(session->dtu());
  if (it == dtus_.end() || it->second != session || !session->claim()) return;
  const common::Stamp claim = *session->claim();
  if (claim.boot_epoch > 0) observe_boot_epoch(claim.boot_epoch, session->dtu());
  // A live connection's snapshot is the DTU's truth, even when its boot epoch is older than one
  // this manager applied before (a reboot that took its epoch from a clock running behind):
  // the stale rule orders the records of one connection, not the DTU's boots.
  devices_.forget_stamp(session->dtu());
  // The claim orders this connection against the DTU's connections to other managers.
  group_.dtu_active(session->dtu(), claim);
}

void DeviceManager::on_ownership_lost(const std::string& dtu, const std::string& new_owner) {
  // The GroupBroker calls this after its own handler returned: closing runs the DTU-lost path
  // (records dropped, leases' holders told, the group told), which reaches it again.
  auto it = dtus_.find(dtu);
  if (it == dtus_.end()) return;
  auto session = it->second;
  session->close(Error(Errc::closed, "claimed by " + new_owner + " with a newer stamp"));
}

void DeviceManager::on_dtu_closed(const std::shared_ptr<DtuSession>& session, const Error& reason) {
  hello_pending_.erase(session);
  auto it = dtus_.find(session->dtu());
  if (it == dtus_.end() || it->second != session) return;
  dtus_.erase(it);
  if (reason.code == Errc::timeout) metrics_.heartbeat_timeouts.with({{"side", "dtu"}}).inc();
  const std::size_t removed = devices_.drop_dtu(session->dtu());
  log_.warn(session->peer(), "dtu_lost", {{"dtu", session->dtu()}, {"reason", reason.describe()},
                                          {"devices_removed", removed}});
  leases_.dtu_lost(session->dtu());
  group_.dtu_lost(session->dtu());
  drain_progress();
}

void DeviceManager::drain(std::optional<std::uint32_t> wait_ms,
                          std::function<void(common::Result<common::DrainStatusMsg>)> done) {
  if (!draining_) {
    draining_ = true;
    log_.info("", "drain_started", {{"dtus", dtus_.size()}});
  }
  auto active = dtus_;
  for (auto& [id, session] : active) session->move("drain");
  if (dtus_.empty()) {
    log_.info("", "drain_done", {});
    done(common::DrainStatusMsg{true, 0});
    return;
  }
  const std::uint64_t id = ++next_drain_waiter_;
  const std::chrono::milliseconds wait = wait_ms ? std::chrono::milliseconds(*wait_ms) : kDefaultDrainWait;
  DrainWaiter waiter;
  waiter.done = std::move(done);
  waiter.deadline = std::make_unique<common::DeadlineGuard>(executor_, wait, [this, id] {
    auto it = drain_waiters_.find(id);
    if (it == drain_waiters_.end()) return;
    auto answer = std::move(it->second.done);
    drain_waiters_.erase(it);
    log_.warn("", "drain_timeout", {{"dtus", dtus_.size()}});
    answer(Error(Errc::timeout, "still holds " + std::to_string(dtus_.size()) + " DTUs"));
  });
  drain_waiters_.emplace(id, std::move(waiter));
}

void DeviceManager::drain_progress() {
  if (!draining_ || !dtus_.empty()) return;
  log_.info("", "drain_done", {});
  auto waiters = std::move(drain_waiters_);
  drain_waiters_.clear();
  for (auto& [id, waiter] : waiters) waiter.done(common::DrainStatusMsg{true, 0});
}

common::DrainStatusMsg DeviceManager::undrain() {
  const bool was = draining_;
  draining_ = false;
  log_.info("", "undrained", {{"was_draining", was}, {"dtus", dtus_.size()}});
  auto waiters = std::move(drain_waiters_);
  drain_waiters_.clear();
  for (auto& [id, waiter] : waiters) waiter.done(Error(Errc::closed, "undrained before every DTU left"));
  return common::DrainStatusMsg{false, static_cast<std::uint32_t>(dtus_.size())};
}

common::Result<void> DeviceManager::attach_session(const common::SessionAttachMsg& request) {
  if (!common::is_valid_id(request.dtu)) {
    return Error(Errc::invalid_argument, "DTU id '" + request.dtu + "': expected 1-64 of [A-Za-z0-9._-]");
  }
  if (request.session.empty() || request.user.empty()) {
    return Error(Errc::invalid_argument, "session and user must not be empty");
  }
  const auto move = sessions_.attach(request.session, request.user, request.dtu, clock_.now());
  log_.info("", "session_attached", {{"session", request.session}, {"user", request.user}, {"dtu", request.dtu},
                                     {"from", move.from ? *move.from : std::string()}});
  finders_.session_moved(request.session, move);
  group_.session_moved(request.session, move);
  return {};
}

common::Result<void> DeviceManager::detach_session(const std::string& session) {
  auto move = sessions_.detach(session);
  if (!move) return Error(Errc::not_found, "no session " + session);
  log_.info("", "session_detached", {{"session", session}, {"from", move->from ? *move->from : std::string()}});
  finders_.session_moved(session, *move);
  group_.session_moved(session, *move);
  return {};
}

common::Result<DeviceManager::GroupSettings> DeviceManager::load_group() const {
  GroupSettings group;
  if (!options_.group_file.empty()) {
    auto members = load_group_file(options_.group_file);
    if (!members.ok()) return members.error();
    group.members = std::move(members.value());
  }
  for (const auto& spec : options_.peers) {
    auto member = parse_member(spec);
    if (!member.ok()) return Error(Errc::config_error, "peer '" + spec + "': " + member.error().detail);
    group.members.push_back(std::move(member.value()));
  }
  if (auto checked = check_members(group.members); !checked.ok()) return checked.error();
  group.address = options_.peer_listen;
  for (const auto& m : group.members) {
    if (!group.address && m.id == options_.id) group.address = m.address;
  }
  if (!group.address) return group;
  auto current = common::load_key_file(options_.group_key_file);
  if (!current.ok()) return current.error();
  group.keys.current = std::move(current.value());
  if (!options_.group_key_next_file.empty()) {
    auto next = common::load_key_file(options_.group_key_next_file);
    if (!next.ok()) return next.error();
    group.keys.next = std::move(next.value());
  }
  return group;
}

common::Result<void> DeviceManager::start_mesh(const GroupSettings& group) {
  PeerMesh::Options o;
  o.id = options_.id;
  o.listen = *group.address;
  o.members = group.members;
  o.keys = group.keys;
  o.incarnation = incarnation_;
  o.heartbeat_interval = options_.heartbeat_interval;
  o.heartbeat_misses = options_.heartbeat_misses;
  o.handshake_timeout = options_.handshake_timeout;
  o.max_frame_bytes = options_.max_frame_bytes;
  o.max_handshakes_per_source = options_.max_handshakes_per_source;
  o.max_handshakes = options_.max_handshakes;
  PeerMesh::Hooks hooks;
  hooks.up = [this](const std::shared_ptr<PeerLink>& link) {
    group_.peer_up(link);
    update_universal_offset();
    if (commands_) commands_->peer_up(link->id());
  };
  hooks.down = [this](const std::shared_ptr<PeerLink>& link, const Error& reason) {
    if (reason.code == Errc::timeout) metrics_.heartbeat_timeouts.with({{"side", "peer"}}).inc();
    group_.peer_down(link, reason);
    update_universal_offset();
  };
  hooks.frame = [this](const std::shared_ptr<PeerLink>& link, common::Frame frame) {
    peer_frame(link, std::move(frame));
  };
  leases_.set_group_keys(group.keys);
  members_ = group.members;
  keys_ = group.keys;
  mesh_ = std::make_unique<PeerMesh>(executor_, clock_, std::move(o), std::move(hooks), log_);
  mesh_->on_handshake_failed([this] { metrics_.handshake_failures.with({{"side", "peer"}}).inc(); });
  mesh_->on_connection_refused([this] { metrics_.connections_refused.with({{"listener", "mesh"}}).inc(); });
  return mesh_->start();
}

std::string DeviceManager::render_metrics() {
  metrics_.info.clear();
  metrics_.info.with({{"id", options_.id}, {"version", common::kVersion}}).set(1);
  metrics_.start_time.with().set(static_cast<double>(incarnation_) / 1e6);
  metrics_.incarnation.with().set(static_cast<double>(incarnation_));
  // Every state and peer is written, 0 included, so a series never vanishes while it matters.
  metrics_.peer_links.clear();
  metrics_.peer_up.clear();
  for (const char* state : {"up", "connecting", "down"}) metrics_.peer_links.with({{"state", state}}).set(0);
  if (mesh_) {
    for (const auto& member : mesh_->status()) {
      auto& links = metrics_.peer_links.with({{"state", member.state}});
      links.set(links.value() + 1);
      metrics_.peer_up.with({{"peer", member.id}}).set(member.state == "up" ? 1 : 0);
    }
  }
  metrics_.dtus.with().set(static_cast<double>(dtus_.size()));
  metrics_.devices.with().set(static_cast<double>(devices_.device_count()));
  std::map<std::string, double> units;
  for (auto state : {common::UnitState::free, common::UnitState::allocated, common::UnitState::unavailable}) {
    units[common::unit_state_name(state)] = 0;
  }
  devices_.for_each([&units](const common::DeviceRecord& record) {
    for (const auto& unit : record.units) units[common::unit_state_name(unit.state)] += 1;
  });
  for (const auto& [state, count] : units) metrics_.units.with({{"state", state}}).set(count);
  metrics_.finders.with({{"scope", "local"}}).set(static_cast<double>(group_.local_finders()));
  metrics_.finders.with({{"scope", "held"}}).set(static_cast<double>(group_.finders_held_total()));
  metrics_.leases.with().set(static_cast<double>(leases_.size()));
  metrics_.allocations_waiting.with().set(static_cast<double>(leases_.waiting()));
  metrics_.sessions.with().set(static_cast<double>(sessions_.size()));
  metrics_.clients.with().set(static_cast<double>(clients_.size()));
  metrics_.draining.with().set(draining_ ? 1 : 0);
  metrics_.finder_matches.with().advance_to(static_cast<double>(group_.matches_sent()));
  return metrics_.render();
}

std::optional<common::Endpoint> DeviceManager::metrics_endpoint() const {
  if (!metrics_server_) return std::nullopt;
  return metrics_server_->endpoint();
}

common::GroupInfoMsg DeviceManager::group_info() const {
  common::GroupInfoMsg info;
  info.manager = options_.id;
  info.incarnation = incarnation_;
  info.draining = draining_;
  info.universal_offset_ms =
      std::chrono::duration_cast<std::chrono::duration<double, std::milli>>(universal_.offset()).count();
  common::GroupMemberInfo self;
  self.id = options_.id;
  self.address = mesh_ ? mesh_->endpoint().to_string() : std::string();
  self.self = true;
  self.state = "self";
  self.incarnation = incarnation_;
  self.dtus = static_cast<std::uint32_t>(dtus_.size());
  self.devices = static_cast<std::uint32_t>(devices_.device_count());
  info.members.push_back(std::move(self));
  if (!mesh_) return info;
  for (auto& member : mesh_->status()) {
    const auto counts = group_.counts(member.id);
    member.finders_held = counts.finders_held;
    member.finders_sent = counts.finders_sent;
    member.dtus = counts.dtus;
    info.members.push_back(std::move(member));
  }
  return info;
}

DeviceManager::PeerCount DeviceManager::peer_count() const {
  PeerCount count;
  if (!mesh_) return count;
  for (const auto& member : mesh_->status()) {
    ++count.known;
    if (member.state == "up") ++count.up;
  }
  return count;
}

void DeviceManager::group_status(std::function<void(common::GroupInfoMsg)> done) {
  struct Gather {
    common::GroupInfoMsg info;
    std::size_t pending = 1;  // released after every question is out, so an early answer cannot finish
    std::function<void(common::GroupInfoMsg)> done;
    void finish_one() {
      if (--pending == 0) done(std::move(info));
    }
  };
  update_universal_offset();
  auto gather = std::make_shared<Gather>();
  gather->info = group_info();
  gather->done = std::move(done);
  for (std::size_t i = 1; i < gather->info.members.size(); ++i) {
    auto link = mesh_ ? mesh_->peer(gather->info.members[i].id) : nullptr;
    if (!link) continue;
    ++gather->pending;
    group_.peer_devices(link, [gather, i](std::optional<std::uint32_t> devices) {
      gather->info.members[i].devices = devices;
      gather->finish_one();
    });
  }
  gather->finish_one();
}

namespace {

// Adds the devices and units of `records` (one DTU's) to `info`.
void count_devices(const std::vector<common::DeviceRecord>& records, common::DtuInfo& info) {
  for (const auto& record : records) {
    ++info.devices;
    for (const auto& unit : record.units) {
      switch (unit.state) {
        case common::UnitState::free: ++info.units_free; break;
        case common::UnitState::allocated: ++info.units_allocated; break;
        case common::UnitState::unavailable: ++info.units_unavailable; break;
      }
    }
  }
}

}  // namespace

void DeviceManager::list_dtus(bool group, std::function<void(common::DtuListMsg)> done) {
  const auto now = clock_.now();
  std::map<std::string, common::DtuInfo> dtus;
  for (const auto& [id, session] : dtus_) {
    common::DtuInfo info;
    info.dtu = id;
    info.owner = options_.id;
    info.state = session->moving() ? "moving" : "active";
    info.address = session->peer();
    info.agent_version = session->agent_version();
    // The hello of a DTU's first connection since it started has none yet: its claim has it.
    const std::int64_t boot_epoch = session->claim() ? session->claim()->boot_epoch : session->boot_epoch();
    if (boot_epoch > 0) info.boot_epoch = boot_epoch;
    if (session->active_since() != common::kNever && session->active_since() <= now) {
      info.connected_ms_ago = static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - session->active_since()).count());
    }
    count_devices(devices_.list(id), info);
    dtus.emplace(id, std::move(info));
  }
  if (!group) {
    common::DtuListMsg list;
    for (auto& entry : dtus) list.dtus.push_back(std::move(entry.second));
    done(std::move(list));
    return;
  }
  for (const auto& [id, owner] : group_.owners()) {
    if (dtus.count(id) != 0) continue;
    common::DtuInfo info;
    info.dtu = id;
    info.owner = owner;
    info.state = "remote";
    if (const auto claim = group_.claim_of(id); claim && claim->boot_epoch > 0) info.boot_epoch = claim->boot_epoch;
    dtus.emplace(id, std::move(info));
  }
  group_.list_group_devices(std::nullopt, [dtus = std::move(dtus), done = std::move(done)](
                                              std::vector<common::DeviceRecord> records) mutable {
    std::map<std::string, std::vector<common::DeviceRecord>> by_dtu;
    for (auto& record : records) by_dtu[record.dtu].push_back(std::move(record));
    for (const auto& [id, held] : by_dtu) {
      if (dtus.count(id) != 0) continue;
      // Records a member still holds for a DTU whose owner died (the grace window).
      common::DtuInfo info;
      info.dtu = id;
      info.owner = held.front().owner;
      info.state = held.front().orphaned ? "orphaned" : "remote";
      dtus.emplace(id, std::move(info));
    }
    common::DtuListMsg list;
    for (auto& [id, info] : dtus) {
      if (info.state != "active" && info.state != "moving") {
        if (auto it = by_dtu.find(id); it != by_dtu.end()) count_devices(it->second, info);
      }
      list.dtus.push_back(std::move(info));
    }
    done(std::move(list));
  });
}

common::Result<common::GroupInfoMsg> DeviceManager::reload_group() {
  auto group = load_group();
  if (!group.ok()) {
    log_.error("", "group_reload_failed", {{"reason", group.error().describe()}});
    return group.error();
  }
  if (!mesh_ && group->address) {
    if (auto started = start_mesh(*group); !started.ok()) {
      log_.error("", "group_reload_failed", {{"reason", started.error().describe()}});
      mesh_.reset();
      return started.error();
    }
  } else if (mesh_) {
    if (!group->address) {
      const Error error(Errc::config_error, "the group list has no entry for " + options_.id +
                                                " and no peer_listen is set; the group in force stays (a restart "
                                                "leaves the group)");
      log_.error("", "group_reload_failed", {{"reason", error.describe()}});
      return error;
    }
    if (*group->address != mesh_->endpoint()) {
      log_.warn("", "group_address_unchanged", {{"configured", group->address->to_string()},
                                                {"in_use", mesh_->endpoint().to_string()},
                                                {"reason", "the mesh address changes only with a restart"}});
    }
    mesh_->reload(group->members, group->keys);
    leases_.set_group_keys(group->keys);
    members_ = group->members;
    keys_ = group->keys;
  }
  return group_info();
}

common::PolicyInfoMsg DeviceManager::policy_info() const {
  return common::PolicyInfoMsg{policy_.source(), policy_.document()};
}

common::Result<common::PolicyInfoMsg> DeviceManager::reload_policy() {
  if (options_.policy_file.empty()) {
    log_.info("", "policy_reloaded", {{"source", policy_.source()}, {"rules", policy_.rule_count()}});
    return policy_info();
  }
  auto policy = Policy::load(options_.policy_file);
  if (!policy.ok()) {
    log_.error("", "policy_reload_failed", {{"file", options_.policy_file}, {"reason", policy.error().describe()},
                                            {"kept", policy_.source()}});
    return policy.error();
  }
  policy_ = std::move(policy.value());
  log_.info("", "policy_reloaded", {{"source", policy_.source()}, {"rules", policy_.rule_count()}});
  return policy_info();
}

asio::awaitable<void> DeviceManager::accept_clients() {
  while (!stopped_) {
    auto [ec, socket] = co_await client_acceptor_->async_accept(as_tuple(asio::use_awaitable));
    if (stopped_) co_return;
    if (ec) {
      log_.warn("", "accept_failed", {{"listener", "socket"}, {"reason", ec.message()}});
      continue;
    }
    auto credentials = common::peer_credentials(socket);
    if (!credentials.ok()) {
      log_.warn("unix", "client_refused", {{"reason", credentials.error().describe()}});
      continue;
    }
    const std::string peer = "unix:pid=" + std::to_string(credentials->pid) + ",uid=" + std::to_string(credentials->uid);
    auto slot = client_connections_.admit("uid " + std::to_string(credentials->uid));
    if (!slot.ok()) {
      refuse_connection(client_connections_, "socket", peer, slot.error());
      continue;
    }
    common::Link::Options o = link_options();
    o.heartbeats = false;  // a local socket reports a dead peer itself (EOF)
    auto link = common::Link::create(executor_, std::make_unique<common::UnixTransport>(std::move(socket)),
                                     common::FilamentMux::Side::acceptor, clock_, log_, peer, o);
    ClientServices services;
    services.devices = &devices_;
    services.leases = &leases_;
    services.group = &group_;
    services.list_sessions = [this] { return sessions_.list(clock_.now()); };
    services.attach_session = [this](const common::SessionAttachMsg& m) { return attach_session(m); };
    services.detach_session = [this](const std::string& session) { return detach_session(session); };
    services.policy_info = [this] { return policy_info(); };
    services.reload_policy = [this] { return reload_policy(); };
    services.group_status = [this](std::function<void(common::GroupInfoMsg)> done) { group_status(std::move(done)); };
    services.reload_group = [this] { return reload_group(); };
    services.drain = [this](std::optional<std::uint32_t> wait_ms,
                            std::function<void(common::Result<common::DrainStatusMsg>)> done) {
      drain(wait_ms, std::move(done));
    };
    services.undrain = [this] { return undrain(); };
    services.group_exec = [this](const common::GroupExecMsg& request, GroupCommands::Sink sink) {
      return commands_->start(request, std::move(sink));
    };
    services.list_dtus = [this](bool group, std::function<void(common::DtuListMsg)> done) {
      list_dtus(group, std::move(done));
    };
    services.max_finders = options_.max_finders_per_service;
    auto session = std::make_shared<ClientSession>(link, *credentials, options_.id, std::move(services), log_,
                                                   options_.handshake_timeout);
    clients_.insert(session);
    auto held = std::make_shared<ConnectionLimiter::Slot>(std::move(slot.value()));
    session->start([this, held](const std::shared_ptr<ClientSession>& s) {
      held->release();
      clients_.erase(s);
    });
  }
}

}  // namespace dtu::devmgr
