#include "dtu/devmgr/peer_mesh.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <utility>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/backoff.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"

// g++ 12 inlines asio's coroutine frame allocator into the two large coroutines below (dial,
// admit) and then flags its matching sized delete as mismatched: a known false positive of
// -Wmismatched-new-delete with coroutines (GCC PR 109224). The allocation is asio's own.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace dtu::devmgr {

using asio::experimental::as_tuple;
using asio::ip::tcp;
using common::Errc;
using common::Error;

namespace {

using TcpUserTimeout = asio::detail::socket_option::integer<IPPROTO_TCP, TCP_USER_TIMEOUT>;

// Backoff steps stop counting here (backoff_delay caps the delay long before).
constexpr unsigned kMaxAttempt = 16;

// TCP_NODELAY: small control frames must not wait for Nagle. TCP_USER_TIMEOUT: unacknowledged
// data fails the connection after `user_timeout`, so the kernel does not hide a dead peer
// behind minutes of retransmissions while our heartbeats sit in its send buffer.
void tune_socket(tcp::socket& socket, std::chrono::milliseconds user_timeout) {
  std::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(TcpUserTimeout(static_cast<int>(user_timeout.count())), ignored);
}

double to_ms(common::Duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace

class PeerMesh::Impl : public std::enable_shared_from_this<Impl> {
 public:
  // One member of the group other than us.
  struct Peer {
    explicit Peer(const asio::any_io_executor& ex) : timer(ex) {}
    GroupMember member;
    std::string address;             // member.address as text (logs, PeerLink)
    bool initiator = false;          // our address is the lower: we dial and reconnect
    bool removed = false;            // reload dropped it or the mesh stopped: its loop ends
    std::shared_ptr<PeerLink> link;  // the live link, or nullptr
    common::MonoTime link_up_at{};
    bool dialing = false;           // a `link` dial to it is in flight
    int connecting = 0;             // connections to or from it in progress (status)
    unsigned attempt = 0;           // backoff step
    bool wake_pending = false;      // wake() came while the loop was not sleeping
    asio::steady_timer timer;       // the loop's sleep
    std::uint64_t incarnation = 0;  // of the current or last link
    std::optional<common::MonoTime> last_heard;
    std::string last_error;
  };

  Impl(const asio::any_io_executor& ex, const common::Clock& clock, Options options, Hooks hooks,
       common::Logger log)
      : executor_(ex),
        clock_(clock),
        options_(std::move(options)),
        hooks_(std::move(hooks)),
        log_(std::move(log)),
        keys_(options_.keys),
        rng_(std::random_device{}()),
        handshakes_(options_.max_handshakes_per_source, options_.max_handshakes) {}

  common::Result<void> start();
  void stop();
  void reload(std::vector<GroupMember> members, common::GroupKeys keys);
  std::shared_ptr<PeerLink> peer(const std::string& id) const;
  std::vector<std::shared_ptr<PeerLink>> peers() const;
  std::vector<common::GroupMemberInfo> status() const;
  common::Endpoint endpoint() const { return bound_; }
  std::uint64_t links_established() const { return links_established_; }
  void on_handshake_failed(std::function<void()> hook) { handshake_failed_ = std::move(hook); }
  void on_connection_refused(std::function<void()> hook) { connection_refused_ = std::move(hook); }

 private:
  static asio::awaitable<void> accept_loop(std::shared_ptr<Impl> self);
  static asio::awaitable<void> admit(std::shared_ptr<Impl> self, tcp::socket socket, ConnectionLimiter::Slot slot);
  static asio::awaitable<void> peer_loop(std::shared_ptr<Impl> self, std::shared_ptr<Peer> peer);
  static asio::awaitable<common::Result<void>> dial(std::shared_ptr<Impl> self, std::shared_ptr<Peer> peer,
                                                    common::PeerPurpose purpose);
  static asio::awaitable<void> sleep(std::shared_ptr<Peer> peer, common::Duration duration);
  static asio::awaitable<void> close_later(std::shared_ptr<Impl> self, std::shared_ptr<common::Link> link,
                                           common::Duration delay);

  // Our mesh address for the order: our own entry in `members` if it has one, else the
  // bound listener.
  common::Endpoint self_address(const std::vector<GroupMember>& members) const;
  // Adds, keeps or drops peers so they match `members` (our own entry skipped).
  void apply_members(const std::vector<GroupMember>& members);
  void drop_peer(const std::shared_ptr<Peer>& peer, const Error& reason);
  bool is_member(std::string_view id) const;

  common::Link::Options link_options() const;
  common::PeerHello hello() const;
  std::chrono::milliseconds user_timeout() const {
    return options_.heartbeat_interval * static_cast<int>(options_.heartbeat_misses);
  }
  common::Duration next_backoff(Peer& peer);
  static void wake(Peer& peer);
  void handshake_failed() const {
    if (handshake_failed_) handshake_failed_();
  }

  // Starts `link` with our close handler; the link is tracked until its handshake ends.
  void start_link(const std::shared_ptr<common::Link>& link, const std::string& peer_id);
  void link_closed(const std::string& peer_id, const common::Link* link, const Error& reason);
  // Makes an authenticated link the live link of `peer` (replacing an older one); false when
  // the link closed meanwhile.
  bool install(const std::shared_ptr<Peer>& peer, const std::shared_ptr<common::Link>& link,
               const common::PeerHello& hello, std::string_view role);
  // The live link of `peer` is gone: close it, log, down hook, wake the peer's loop.
  void retire(Peer& peer, const Error& reason);
  void please_initiate_received(const std::shared_ptr<Peer>& peer, const std::shared_ptr<common::Link>& link,
                                common::MonoTime accepted_at);

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  Options options_;
  Hooks hooks_;
  std::function<void()> handshake_failed_;
  std::function<void()> connection_refused_;
  common::Logger log_;
  common::GroupKeys keys_;
  std::mt19937 rng_;
  std::shared_ptr<asio::ssl::context> client_tls_;
  std::shared_ptr<asio::ssl::context> server_tls_;
  std::optional<tcp::acceptor> acceptor_;
  common::Endpoint bound_;
  common::Endpoint self_address_;
  std::map<std::string, std::shared_ptr<Peer>, std::less<>> peers_;
  std::set<std::shared_ptr<common::Link>> handshaking_;  // started, not yet installed or dropped
  ConnectionLimiter handshakes_;  // accepted connections until their handshake ends
  std::uint64_t links_established_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

// ---- setup -------------------------------------------------------------------------------

common::Result<void> PeerMesh::Impl::start() {
  DTU_CHECK(!started_);
  started_ = true;
  if (!common::is_valid_id(options_.id)) {
    return Error(Errc::config_error, "manager id '" + options_.id + "': expected 1-64 of [A-Za-z0-9._-]");
  }
  auto acceptor = common::tcp_listen(executor_, options_.listen);
  if (!acceptor.ok()) return acceptor.error();
  acceptor_.emplace(std::move(acceptor.value()));
  bound_ = common::Endpoint{options_.listen.host, acceptor_->local_endpoint().port()};

  client_tls_ = common::make_psk_client_context();
  // The resolver runs before the dialer has proven anything: it only looks the identity up.
  std::weak_ptr<Impl> weak = weak_from_this();
  server_tls_ =
      common::make_psk_server_context([weak](std::string_view identity) -> std::optional<common::Bytes> {
        auto self = weak.lock();
        if (!self || self->stopped_) return std::nullopt;
        return common::resolve_peer_psk(identity, self->options_.id, self->keys_,
                                        [&self](std::string_view id) { return self->is_member(id); });
      });

  apply_members(options_.members);
  common::spawn(executor_, accept_loop(shared_from_this()), log_, "accept peers");
  log_.info("", "mesh_listening",
            {{"id", options_.id},
             {"mesh", self_address_.to_string()},
             {"listen", bound_.to_string()},
             {"peers", peers_.size()},
             {"key_id", common::group_key_id(keys_.current)},
             {"next_key_id", keys_.next ? common::group_key_id(*keys_.next) : std::string()}});
  return {};
}

void PeerMesh::Impl::stop() {
  if (stopped_) return;
  stopped_ = true;
  hooks_ = Hooks{};
  std::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  const Error reason(Errc::closed, "manager stopping");
  for (auto& [id, peer] : peers_) {
    peer->removed = true;
    if (peer->link) retire(*peer, reason);
    wake(*peer);
  }
  auto pending = handshaking_;
  handshaking_.clear();
  for (auto& link : pending) link->close(reason);
}

void PeerMesh::Impl::reload(std::vector<GroupMember> members, common::GroupKeys keys) {
  if (stopped_ || keys.current.bytes.empty()) return;  // REQUIRES of reload: a group key
  keys_ = std::move(keys);
  const std::size_t before = peers_.size();
  apply_members(members);
  log_.info("", "group_reloaded",
            {{"peers", peers_.size()},
             {"before", before},
             {"key_id", common::group_key_id(keys_.current)},
             {"next_key_id", keys_.next ? common::group_key_id(*keys_.next) : std::string()}});
}

common::Endpoint PeerMesh::Impl::self_address(const std::vector<GroupMember>& members) const {
  for (const auto& m : members) {
    if (m.id == options_.id) return m.address;
  }
  return bound_;
}

void PeerMesh::Impl::apply_members(const std::vector<GroupMember>& members) {
  const common::Endpoint self = self_address(members);
  const bool self_moved = started_ && !(self == self_address_) && !peers_.empty();
  self_address_ = self;
  std::map<std::string, const GroupMember*> wanted;
  for (const auto& m : members) {
    if (m.id == options_.id) continue;
    if (m.address == self_address_) {
      log_.error(m.address.to_string(), "peer_refused",
                 {{"peer", m.id}, {"reason", "the group list gives it our own mesh address"}});
      continue;
    }
    wanted[m.id] = &m;
  }
  // Drop peers that left, moved, or whose role changed with our own address.
  for (auto it = peers_.begin(); it != peers_.end();) {
    auto found = wanted.find(it->first);
    if (found == wanted.end()) {
      auto peer = it->second;
      it = peers_.erase(it);
      drop_peer(peer, Error(Errc::closed, "removed from the group"));
    } else if (!(found->second->address == it->second->member.address) || self_moved) {
      auto peer = it->second;
      it = peers_.erase(it);
      drop_peer(peer, Error(Errc::closed, "mesh address changed"));
    } else {
      ++it;
    }
  }
  for (const auto& [id, member] : wanted) {
    if (peers_.contains(id)) continue;
    auto peer = std::make_shared<Peer>(executor_);
    peer->member = *member;
    peer->address = member->address.to_string();
    peer->initiator = address_less(self_address_, member->address);
    peers_.emplace(id, peer);
    common::spawn(executor_, peer_loop(shared_from_this(), peer), log_, "peer " + id);
  }
}

void PeerMesh::Impl::drop_peer(const std::shared_ptr<Peer>& peer, const Error& reason) {
  peer->removed = true;
  if (peer->link) retire(*peer, reason);
  wake(*peer);
  log_.info(peer->address, "peer_removed", {{"peer", peer->member.id}, {"reason", reason.detail}});
}

bool PeerMesh::Impl::is_member(std::string_view id) const {
  auto it = peers_.find(id);
  return it != peers_.end() && !it->second->removed;
}

common::Link::Options PeerMesh::Impl::link_options() const {
  common::Link::Options o;
  o.max_payload = options_.max_frame_bytes;
  o.heartbeats = true;
  o.heartbeat_interval = options_.heartbeat_interval;
  o.heartbeat_misses = options_.heartbeat_misses;
  return o;
}

common::PeerHello PeerMesh::Impl::hello() const {
  return common::PeerHello{options_.id, options_.incarnation, self_address_.to_string(), common::kVersion};
}

common::Duration PeerMesh::Impl::next_backoff(Peer& peer) {
  const auto delay = common::backoff_delay(kMinBackoff, kMaxBackoff, peer.attempt, rng_);
  peer.attempt = std::min(peer.attempt + 1, kMaxAttempt);
  return delay;
}

void PeerMesh::Impl::wake(Peer& peer) {
  peer.wake_pending = true;
  peer.timer.cancel();
}

// ---- one loop per peer: dial (initiator) or ask to be dialed (responder) ----------------

asio::awaitable<void> PeerMesh::Impl::sleep(std::shared_ptr<Peer> peer, common::Duration duration) {
  if (peer->wake_pending) {
    peer->wake_pending = false;
    co_return;
  }
  if (duration == common::Duration::max()) {
    peer->timer.expires_at(asio::steady_timer::time_point::max());
  } else {
    peer->timer.expires_after(duration);
  }
  co_await peer->timer.async_wait(as_tuple(asio::use_awaitable));
  peer->wake_pending = false;
}

asio::awaitable<void> PeerMesh::Impl::peer_loop(std::shared_ptr<Impl> self, std::shared_ptr<Peer> peer) {
  // The responder gives the initiator one heartbeat interval to dial before asking it to.
  bool grace = true;
  while (!self->stopped_ && !peer->removed) {
    if (peer->link) {
      auto wait = sleep(peer, common::Duration::max());
      co_await std::move(wait);
      grace = true;
      if (!peer->link && peer->initiator) {
        if (self->clock_.now() - peer->link_up_at >= self->options_.heartbeat_interval) {
          peer->attempt = 0;  // a link that lived: reconnect at once
        } else {
          // Refused or closed as soon as it was up: back off, or two managers that disagree
          // would redo full handshakes as fast as they can.
          auto pause = sleep(peer, self->next_backoff(*peer));
          co_await std::move(pause);
        }
      }
      continue;
    }
    if (!peer->initiator && grace) {
      grace = false;
      auto wait = sleep(peer, self->options_.heartbeat_interval);
      co_await std::move(wait);
      continue;
    }
    const auto purpose = peer->initiator ? common::PeerPurpose::link : common::PeerPurpose::please_initiate;
    auto op = dial(self, peer, purpose);
    auto result = co_await std::move(op);
    if (self->stopped_ || peer->removed) co_return;
    if (result.ok() && purpose == common::PeerPurpose::link) continue;
    const auto delay = self->next_backoff(*peer);
    if (!result.ok()) {
      peer->last_error = result.error().describe();
      self->log_.warn(peer->address, "peer_dial_failed",
                      {{"peer", peer->member.id},
                       {"purpose", common::peer_purpose_name(purpose)},
                       {"reason", peer->last_error},
                       {"retry_ms", std::chrono::duration_cast<std::chrono::milliseconds>(delay).count()}});
    }
    auto wait = sleep(peer, delay);
    co_await std::move(wait);
  }
}

asio::awaitable<common::Result<void>> PeerMesh::Impl::dial(std::shared_ptr<Impl> self,
                                                           std::shared_ptr<Peer> peer,
                                                           common::PeerPurpose purpose) {
  const bool for_link = purpose == common::PeerPurpose::link;
  struct InFlight {
    Peer& peer;
    bool for_link;
    InFlight(Peer& p, bool l) : peer(p), for_link(l) {
      ++peer.connecting;
      if (for_link) peer.dialing = true;
    }
    ~InFlight() {
      --peer.connecting;
      if (for_link) peer.dialing = false;
    }
  } in_flight(*peer, for_link);
  const Error stopping(Errc::closed, "peer removed or mesh stopping");
  const std::string& self_id = self->options_.id;
  const std::string& peer_id = peer->member.id;
  const common::Duration timeout = self->options_.handshake_timeout;
  const common::GroupKeys keys = self->keys_;

  // The current key first; when TLS refuses it and a next key is configured, the next one
  // (the peer may have rotated before us).
  std::unique_ptr<common::TlsTransport> transport;
  common::Bytes pair_key;
  Error failure;
  const std::array<const common::SecretKey*, 2> offers = {&keys.current, keys.next ? &*keys.next : nullptr};
  for (const common::SecretKey* key : offers) {
    if (key == nullptr) break;
    auto connect = common::tcp_connect(peer->member.address, timeout);
    auto socket = co_await std::move(connect);
    if (self->stopped_ || peer->removed) co_return stopping;
    if (!socket.ok()) co_return socket.error();
    tune_socket(*socket, self->user_timeout());
    pair_key = common::derive_pair_key(*key, self_id, peer_id);
    auto handshake =
        common::tls_connect(std::move(socket.value()), *self->client_tls_,
                            common::peer_psk_identity(self_id, peer_id, *key), pair_key, timeout);
    auto tls = co_await std::move(handshake);
    if (self->stopped_ || peer->removed) co_return stopping;
    if (tls.ok()) {
      transport = std::move(tls.value());
      break;
    }
    failure = tls.error();
    if (key != &keys.current) failure.detail += " (with the next group key too)";
    if (failure.code != Errc::auth_failed) co_return failure;
  }
  if (!transport) {  // every key was refused
    self->handshake_failed();
    co_return failure;
  }

  auto exporter = common::peer_auth_exporter(transport->ssl());
  if (!exporter.ok()) co_return exporter.error();
  auto link =
      common::Link::create(self->executor_, std::move(transport), common::FilamentMux::Side::initiator,
                           self->clock_, self->log_, peer->address, self->link_options());
  self->start_link(link, peer_id);
  common::PeerAuthParams params{
      self_id, peer_id, std::move(pair_key), std::move(exporter.value()), self->hello(), purpose, timeout, self->log_};
  auto auth = common::authenticate_dialer(link, std::move(params));
  auto authed = co_await std::move(auth);
  self->handshaking_.erase(link);
  if (self->stopped_ || peer->removed) {
    link->close(stopping);
    co_return stopping;
  }
  if (!authed.ok()) {  // logged (peer_auth_failed), link closed
    self->handshake_failed();
    co_return authed.error();
  }
  if (!for_link) {
    link->close(Error(Errc::closed, "please_initiate delivered"));
    self->log_.info(peer->address, "please_initiate_sent", {{"peer", peer_id}});
    co_return common::Result<void>{};
  }
  if (!self->install(peer, link, authed->hello, "initiator")) {
    co_return Error(Errc::link_lost, "link closed right after the handshake");
  }
  co_return common::Result<void>{};
}

// ---- accepting ---------------------------------------------------------------------------

asio::awaitable<void> PeerMesh::Impl::accept_loop(std::shared_ptr<Impl> self) {
  while (!self->stopped_) {
    auto [ec, socket] = co_await self->acceptor_->async_accept(as_tuple(asio::use_awaitable));
    if (self->stopped_) co_return;
    if (ec) {
      self->log_.warn("", "accept_failed", {{"listener", "mesh"}, {"reason", ec.message()}});
      continue;
    }
    std::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    auto slot = self->handshakes_.admit(ignored ? std::string("unknown") : remote.address().to_string());
    if (!slot.ok()) {
      if (self->connection_refused_) self->connection_refused_();
      if (self->handshakes_.log_latest_refusal()) {
        self->log_.warn(ignored ? std::string("unknown") : common::to_string(remote), "connection_limit",
                        {{"listener", "mesh"}, {"refused", self->handshakes_.refused()},
                         {"reason", slot.error().detail}});
      }
      continue;
    }
    common::spawn(self->executor_, admit(self, std::move(socket), std::move(slot.value())), self->log_,
                  "admit peer");
  }
}

// `slot` counts the connection against the handshake caps until admit() returns: authenticated,
// refused or closed.
asio::awaitable<void> PeerMesh::Impl::admit(std::shared_ptr<Impl> self, tcp::socket socket,
                                            ConnectionLimiter::Slot slot) {
  const common::MonoTime accepted_at = self->clock_.now();
  std::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  const std::string from = ec ? std::string("unknown") : common::to_string(remote);
  tune_socket(socket, self->user_timeout());
  auto handshake =
      common::tls_accept(std::move(socket), *self->server_tls_, self->options_.handshake_timeout);
  auto transport = co_await std::move(handshake);
  if (self->stopped_) co_return;
  if (!transport.ok()) {
    self->log_.warn(from, "peer_auth_failed", {{"reason", transport.error().describe()}});
    self->handshake_failed();
    co_return;
  }
  // The resolver accepted the identity, so it parses and names a member; the keys or the
  // members may have changed since, hence the checks.
  const auto identity = common::accepted_psk_identity((*transport)->ssl());
  const auto parsed = identity ? common::parse_peer_psk_identity(*identity) : std::nullopt;
  auto pair_key = identity
                      ? common::resolve_peer_psk(*identity, self->options_.id, self->keys_,
                                                 [&self](std::string_view id) { return self->is_member(id); })
                      : std::nullopt;
  if (!parsed || !pair_key) {
    self->log_.warn(from, "peer_auth_failed", {{"reason", "PSK identity no longer valid (group reloaded?)"}});
    self->handshake_failed();
    co_return;
  }
  auto peer = self->peers_.find(parsed->dialer)->second;
  ++peer->connecting;
  auto exporter = common::peer_auth_exporter((*transport)->ssl());
  if (!exporter.ok()) {
    --peer->connecting;
    self->log_.warn(from, "peer_auth_failed",
                    {{"peer", peer->member.id}, {"reason", exporter.error().describe()}});
    self->handshake_failed();
    co_return;
  }
  auto link =
      common::Link::create(self->executor_, std::move(transport.value()), common::FilamentMux::Side::acceptor,
                           self->clock_, self->log_, from, self->link_options());
  self->start_link(link, peer->member.id);
  common::PeerAuthParams params{self->options_.id,
                                peer->member.id,
                                std::move(pair_key.value()),
                                std::move(exporter.value()),
                                self->hello(),
                                common::PeerPurpose::link,
                                self->options_.handshake_timeout,
                                self->log_};
  auto auth = common::authenticate_acceptor(link, std::move(params));
  auto authed = co_await std::move(auth);
  slot.release();
  --peer->connecting;
  if (self->stopped_) {
    link->close(Error(Errc::closed, "manager stopping"));
    co_return;
  }
  if (!authed.ok()) {  // logged (peer_auth_failed), link closed
    self->handshaking_.erase(link);
    peer->last_error = authed.error().describe();
    self->handshake_failed();
    co_return;
  }
  if (peer->removed) {
    self->handshaking_.erase(link);
    self->log_.warn(from, "peer_refused", {{"peer", peer->member.id}, {"reason", "removed from the group"}});
    link->close(Error(Errc::refused, "removed from the group"));
    co_return;
  }
  if (authed->purpose == common::PeerPurpose::please_initiate) {
    self->please_initiate_received(peer, link, accepted_at);
    co_return;
  }
  self->handshaking_.erase(link);
  if (peer->initiator) {
    // Threat: two managers whose group lists disagree on the order would each keep a link.
    const std::string reason = "a link dialed by a higher mesh address (" + peer->address + " > ours " +
                               self->self_address_.to_string() + "): do the group lists agree?";
    self->log_.warn(from, "peer_refused", {{"peer", peer->member.id}, {"reason", reason}});
    link->close(Error(Errc::refused, reason));
    co_return;
  }
  self->install(peer, link, authed->hello, "acceptor");
}

void PeerMesh::Impl::please_initiate_received(const std::shared_ptr<Peer>& peer,
                                              const std::shared_ptr<common::Link>& link,
                                              common::MonoTime accepted_at) {
  // The dialer closes after our welcome; close it ourselves if it does not.
  common::spawn(executor_, close_later(shared_from_this(), link, options_.handshake_timeout), log_,
                "close please_initiate");
  std::string action;
  if (!peer->initiator) {
    action = "ignored: we are the higher address (do the group lists agree?)";
  } else if (peer->dialing) {
    action = "ignored: our dial is in flight";
  } else if (peer->link && peer->link_up_at + options_.heartbeat_interval >= accepted_at) {
    // The request most likely crossed this link's handshake (the higher one decided before it
    // had the link). If it really lost the link, it asks again at its backoff pace.
    action = "ignored: our link is as new as the request";
  } else if (peer->link) {
    action = "reconnecting";
    retire(*peer, Error(Errc::link_lost, "the peer lost this link (it asked us to dial again)"));
  } else {
    action = "dialing";
  }
  log_.info(peer->address, "please_initiate_received", {{"peer", peer->member.id}, {"action", action}});
  if (action == "dialing" || action == "reconnecting") {
    peer->attempt = 0;
    wake(*peer);
  }
}

asio::awaitable<void> PeerMesh::Impl::close_later(std::shared_ptr<Impl> self,
                                                  std::shared_ptr<common::Link> link,
                                                  common::Duration delay) {
  asio::steady_timer timer(self->executor_);
  timer.expires_after(delay);
  co_await timer.async_wait(as_tuple(asio::use_awaitable));
  self->handshaking_.erase(link);
  link->close(Error(Errc::closed, "please_initiate answered"));
}

// ---- links -------------------------------------------------------------------------------

void PeerMesh::Impl::start_link(const std::shared_ptr<common::Link>& link, const std::string& peer_id) {
  handshaking_.insert(link);
  std::weak_ptr<Impl> weak = weak_from_this();
  std::weak_ptr<common::Link> weak_link = link;
  link->start([weak, weak_link, peer_id, ex = executor_](const Error& reason) {
    // Link::close runs this inside whatever closed the link — a send overflowing the queue in
    // the middle of FinderRegistry::add or a GroupBroker handler: retire the link (and run the
    // down hook) after that code has returned.
    auto closed = weak_link.lock();
    if (!closed) return;
    asio::post(ex, [weak, closed, peer_id, reason] {
      if (auto self = weak.lock()) self->link_closed(peer_id, closed.get(), reason);
    });
  });
}

void PeerMesh::Impl::link_closed(const std::string& peer_id, const common::Link* link, const Error& reason) {
  auto it = peers_.find(peer_id);
  if (it == peers_.end()) return;
  Peer& peer = *it->second;
  if (peer.link && &peer.link->link() == link) retire(peer, reason);
}

bool PeerMesh::Impl::install(const std::shared_ptr<Peer>& peer, const std::shared_ptr<common::Link>& link,
                             const common::PeerHello& hello, std::string_view role) {
  if (!link->is_open() || link->is_shutting_down()) return false;
  if (peer->link) retire(*peer, Error(Errc::closed, "replaced"));
  auto peer_link = std::make_shared<PeerLink>(link, peer->member.id, hello.incarnation, peer->address);
  peer->link = peer_link;
  peer->link_up_at = clock_.now();
  peer->last_heard = peer->link_up_at;
  peer->incarnation = hello.incarnation;
  ++links_established_;
  log_.info(peer->address, "peer_up",
            {{"peer", peer->member.id},
             {"incarnation", hello.incarnation},
             {"role", role},
             {"version", hello.version}});

  // Application messages travel on filament 0 only: a filament the peer opens is a protocol
  // error (the peer is authenticated, so it is a bug or a newer protocol; log and close).
  std::weak_ptr<common::Link> weak_link = link;
  link->mux().set_open_handler([weak_link, log = log_, address = peer->address, id = peer->member.id,
                                ex = executor_](std::uint32_t filament, const std::string& name) {
    const std::string reason = "opened filament " + std::to_string(filament) + " '" + name + "'";
    log.warn(address, "peer_protocol_error", {{"peer", id}, {"reason", reason}});
    asio::post(ex, [weak_link, reason] {
      if (auto l = weak_link.lock()) l->close(Error(Errc::illegal_state, reason));
    });
  });
  if (hooks_.up) hooks_.up(peer_link);
  if (peer->link != peer_link) return true;  // the hook closed it
  std::weak_ptr<Impl> weak = weak_from_this();
  std::weak_ptr<PeerLink> weak_peer_link = peer_link;
  std::weak_ptr<Peer> weak_peer = peer;
  link->mux().set_receiver(common::FilamentMux::kControlFilament,
                           [weak, weak_peer_link, weak_peer](common::Frame frame) {
                             auto self = weak.lock();
                             auto l = weak_peer_link.lock();
                             if (!self || !l || self->stopped_) return;
                             if (auto p = weak_peer.lock()) p->last_heard = self->clock_.now();
                             if (self->hooks_.frame) self->hooks_.frame(l, std::move(frame));
                           });
  wake(*peer);
  return true;
}

void PeerMesh::Impl::retire(Peer& peer, const Error& reason) {
  auto old = std::move(peer.link);
  peer.link = nullptr;
  if (!old) return;
  if (peer.last_heard && old->link().last_received() > *peer.last_heard) {
    peer.last_heard = old->link().last_received();
  }
  peer.last_error = reason.describe();
  old->close(reason);  // its close handler finds it retired already
  log_.warn(peer.address, "peer_down", {{"peer", peer.member.id}, {"reason", reason.describe()}});
  if (hooks_.down) hooks_.down(old, reason);
  wake(peer);
}

// ---- queries -----------------------------------------------------------------------------

std::shared_ptr<PeerLink> PeerMesh::Impl::peer(const std::string& id) const {
  auto it = peers_.find(id);
  return it == peers_.end() ? nullptr : it->second->link;
}

std::vector<std::shared_ptr<PeerLink>> PeerMesh::Impl::peers() const {
  std::vector<std::shared_ptr<PeerLink>> out;
  for (const auto& [id, peer] : peers_) {
    if (peer->link) out.push_back(peer->link);
  }
  return out;
}

std::vector<common::GroupMemberInfo> PeerMesh::Impl::status() const {
  std::vector<common::GroupMemberInfo> out;
  const common::MonoTime now = clock_.now();
  for (const auto& [id, peer] : peers_) {
    common::GroupMemberInfo info;
    info.id = id;
    info.address = peer->address;
    info.state = peer->link ? "up" : peer->connecting > 0 ? "connecting" : "down";
    info.incarnation = peer->incarnation;
    auto last_heard = peer->last_heard;
    if (peer->link) {
      if (auto o = peer->link->link().clock_offset()) {
        info.rtt_ms = to_ms(o->rtt);
        info.offset_ms = to_ms(o->offset);
      }
      const common::MonoTime received = peer->link->link().last_received();
      if (!last_heard || received > *last_heard) last_heard = received;
    }
    if (last_heard) {
      info.last_heard_ms_ago = static_cast<std::uint64_t>(std::max<std::int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(now - *last_heard).count()));
    }
    info.last_error = peer->last_error;
    out.push_back(std::move(info));
  }
  return out;
}

// ---- PeerMesh ----------------------------------------------------------------------------

PeerMesh::PeerMesh(const asio::any_io_executor& ex, const common::Clock& clock, Options options, Hooks hooks,
                   common::Logger log)
    : impl_(std::make_shared<Impl>(ex, clock, std::move(options), std::move(hooks), std::move(log))) {}

PeerMesh::~PeerMesh() {
  impl_->stop();
}

common::Result<void> PeerMesh::start() {
  return impl_->start();
}
void PeerMesh::on_handshake_failed(std::function<void()> hook) {
  impl_->on_handshake_failed(std::move(hook));
}

void PeerMesh::on_connection_refused(std::function<void()> hook) {
  impl_->on_connection_refused(std::move(hook));
}
void PeerMesh::stop() {
  impl_->stop();
}
void PeerMesh::reload(std::vector<GroupMember> members, common::GroupKeys keys) {
  impl_->reload(std::move(members), std::move(keys));
}
std::shared_ptr<PeerLink> PeerMesh::peer(const std::string& id) const {
  return impl_->peer(id);
}
std::vector<std::shared_ptr<PeerLink>> PeerMesh::peers() const {
  return impl_->peers();
}
std::vector<common::GroupMemberInfo> PeerMesh::status() const {
  return impl_->status();
}
common::Endpoint PeerMesh::endpoint() const {
  return impl_->endpoint();
}
std::uint64_t PeerMesh::links_established() const {
  return impl_->links_established();
}

}  // namespace dtu::devmgr
