#include "dtu/agent/dtu_agent.hpp"

#include <algorithm>
#include <limits>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/agent/record_builder.hpp"
#include "dtu/agent/unit_rules.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/backoff.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"

namespace dtu::agent {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

namespace {
// How long a device message may wait for the manager's ack before we log it as lost; the next
// connect sends a full snapshot anyway.
constexpr common::Duration kDeviceMessageTimeout = std::chrono::seconds(10);
// A grant later than this after the request is refused instead: the manager waits 10 s
// (devmgr's kLeaseRequestTimeout) and would drop a later answer, leaving a lease nobody holds.
constexpr common::Duration kMaxGrantDelay = std::chrono::seconds(5);

std::uint32_t millis_u32(common::Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return static_cast<std::uint32_t>(std::clamp<std::int64_t>(ms, 0, std::numeric_limits<std::uint32_t>::max()));
}

// "boot_epoch.seq", or "none": how fences and claims read in the log.
std::string stamp_text(const std::optional<common::Stamp>& stamp) {
  if (!stamp) return "none";
  return std::to_string(stamp->boot_epoch) + "." + std::to_string(stamp->seq);
}

bool is_draining_refusal(const Error& e) {
  return e.code == make_error_code(Errc::refused) && e.detail == "draining";
}

std::string unit_list(const std::set<std::uint32_t>& units) {
  std::string out;
  for (auto u : units) out += (out.empty() ? "" : ", ") + std::to_string(u);
  return out;
}
}  // namespace

DtuAgent::DtuAgent(const asio::any_io_executor& ex, const common::Clock& clock, AgentOptions options,
                   common::Bytes key, UsbBackend& backend)
    : executor_(ex),
      clock_(clock),
      options_(std::move(options)),
      key_(std::move(key)),
      backend_(backend),
      leases_(clock),
      expiry_timer_(ex),
      link_closed_(ex),
      retry_timer_(ex),
      rng_(std::random_device{}()) {}

DtuAgent::~DtuAgent() { stop(); }

common::Result<void> DtuAgent::start() {
  tls_ = common::make_psk_client_context();
  InbandServer::Hooks hooks;
  hooks.renew = [this](std::string_view id, common::Duration length) { return renew_lease(id, length); };
  InbandServer::Options inband_options;
  inband_options.dtu = options_.id;
  inband_options.max_channels = options_.max_inband_channels;
  inband_ = std::make_unique<InbandServer>(executor_, clock_, leases_, backend_, std::move(hooks),
                                           std::move(inband_options));
  auto listening = inband_->listen(options_.inband);
  if (!listening.ok()) return listening.error();
  inband_endpoint_ = *listening;
  auto started = backend_.start(UsbEvents{[this](UsbDeviceInfo info) { on_attached(std::move(info)); },
                                          [this](std::string port) { on_detached(port); }});
  if (!started.ok()) {
    inband_->stop();
    return started;
  }
  log_.info("", "started", {{"dtu", options_.id}, {"managers", options_.managers.size()}, {"pick", options_.pick},
                            {"inband", inband_endpoint_.to_string()}});
  common::spawn(executor_, run(), log_, "agent connection loop");
  common::spawn(executor_, expiry_loop(), log_, "lease expiry");
  return {};
}

void DtuAgent::stop() {
  if (stopped_) return;
  stopped_ = true;
  retry_timer_.cancel();
  expiry_timer_.cancel();
  for (const auto& lease : leases_.end_all(LeaseEnd::agent_stopping)) {
    if (inband_) inband_->lease_ended(lease, LeaseEnd::agent_stopping);
  }
  if (inband_) inband_->stop();
  if (link_) link_->close(Error(Errc::closed, "agent stopping"));
  link_closed_.cancel();
  backend_.stop();
}

common::Stamp DtuAgent::next_stamp() {
  common::Stamp s;
  s.boot_epoch = boot_epoch_;
  s.seq = ++seq_;
  s.time_us = common::to_micros(clock_.wall_now()) + universal_offset_us_;
  return s;
}

std::optional<common::Endpoint> DtuAgent::manager() const { return connected_to_; }

common::Duration DtuAgent::backoff(unsigned attempt) {
  // Jittered: DTUs that lost the same manager do not all return at once.
  return common::backoff_delay(options_.reconnect_min, options_.reconnect_max, attempt, rng_);
}

namespace {
// A link that lasted this long was working: losing it is a failover, not a flapping manager.
constexpr common::Duration kSteadyLink = std::chrono::seconds(1);
}  // namespace

asio::awaitable<void> DtuAgent::run() {
  unsigned attempt = 0;
  std::optional<std::size_t> lost;  // the manager whose link just ended
  while (!stopped_) {
    auto ordering = next_round(lost);
    const std::vector<std::size_t> order = co_await std::move(ordering);
    lost.reset();
    bool served = false;
    bool served_long = false;  // welcomed, and the link lasted kSteadyLink or more
    for (std::size_t index : order) {
      if (stopped_) co_return;
      const common::Endpoint& manager = options_.managers[index];
      const common::MonoTime started = clock_.now();
      auto op = serve(manager);
      const Error why = co_await std::move(op);
      if (stopped_) co_return;
      served = welcomed_;
      welcomed_ = false;
      connected_to_.reset();
      if (served) {
        log_.warn(manager.to_string(), "manager_lost", {{"reason", why.describe()}});
        served_long = clock_.now() - started >= kSteadyLink;
        lost = index;
        break;  // a new round, this manager last
      }
      // A draining manager refuses new DTUs: the next one at once.
      log_.warn(manager.to_string(), is_draining_refusal(why) ? "manager_draining" : "manager_unreachable",
                {{"reason", why.describe()}});
    }
    // Failover: a DTU whose steady link just ended goes to the next manager at once (the backoff
    // alone cost up to 300 ms of the re-homing time, docs/performance.md). It backs off when a
    // round found no manager, and after a link that ended soon after its welcome, so a manager
    // that welcomes and drops cannot make it spin.
    if (served_long) {
      attempt = 0;
      continue;
    }
    attempt = served ? 0 : attempt + 1;
    retry_timer_.expires_after(backoff(attempt));
    co_await retry_timer_.async_wait(as_tuple(asio::use_awaitable));
  }
}

struct DtuAgent::ProbeRound {
  explicit ProbeRound(const asio::any_io_executor& ex, std::size_t count) : loads(count), remaining(count), done(ex) {
    done.expires_at(asio::steady_timer::time_point::max());
  }
  std::vector<ManagerLoad> loads;
  std::size_t remaining;
  asio::steady_timer done;  // cancelled when the last probe has finished
};

asio::awaitable<std::vector<std::size_t>> DtuAgent::next_round(std::optional<std::size_t> tried_last) {
  const std::size_t count = options_.managers.size();
  if (options_.pick != kPickLeastLoaded) co_return connection_order(count, {}, tried_last);
  auto probing = probe_all();
  const std::vector<ManagerLoad> loads = co_await std::move(probing);
  auto order = connection_order(count, loads, tried_last);
  std::string seen;
  for (std::size_t i = 0; i < count; ++i) {
    const ManagerLoad& load = loads[i];
    seen += (seen.empty() ? "" : ", ") + options_.managers[i].to_string() + "=" +
            (!load.reachable ? std::string("unreachable")
                             : std::to_string(load.dtus) + (load.draining ? " draining" : ""));
  }
  if (!order.empty()) {
    log_.info(options_.managers[order.front()].to_string(), "manager_picked", {{"pick", options_.pick}, {"loads", seen}});
  }
  co_return order;
}

asio::awaitable<std::vector<ManagerLoad>> DtuAgent::probe_all() {
  auto round = std::make_shared<ProbeRound>(executor_, options_.managers.size());
  for (std::size_t i = 0; i < options_.managers.size(); ++i) {
    common::spawn(executor_, probe_into(round, i), log_, "manager probe");
  }
  while (round->remaining > 0 && !stopped_) co_await round->done.async_wait(as_tuple(asio::use_awaitable));
  co_return round->loads;
}

asio::awaitable<void> DtuAgent::probe_into(std::shared_ptr<ProbeRound> round, std::size_t index) {
  auto op = probe(options_.managers[index]);
  round->loads[index] = co_await std::move(op);
  if (--round->remaining == 0) round->done.cancel();
}

asio::awaitable<ManagerLoad> DtuAgent::probe(common::Endpoint manager) {
  ManagerLoad load;
  const std::string peer = manager.to_string();
  auto connect = common::tcp_connect(manager, options_.connect_timeout);
  auto socket = co_await std::move(connect);
  if (!socket.ok()) co_return load;
  auto handshake = common::tls_connect(std::move(socket.value()), *tls_, options_.id, key_, options_.connect_timeout);
  auto transport = co_await std::move(handshake);
  if (!transport.ok() || stopped_) co_return load;
  auto link = common::Link::create(executor_, std::move(transport.value()), common::FilamentMux::Side::initiator,
                                   clock_, log_, peer, common::Link::Options{});
  link->start([](const Error&) {});
  common::DtuHelloMsg hello{options_.id, common::kVersion, boot_epoch_, true};
  auto request = link->request(common::FilamentMux::kControlFilament, common::to_frame(hello),
                               options_.connect_timeout);
  auto answer = co_await std::move(request);
  if (answer.ok()) {
    if (auto welcome = common::from_frame<common::DtuWelcomeMsg>(*answer); welcome.ok()) {
      load.reachable = true;
      load.draining = welcome->draining;
      load.dtus = welcome->dtus;
    }
  }
  log_.debug(peer, "manager_probed", {{"reachable", load.reachable}, {"draining", load.draining}, {"dtus", load.dtus},
                                      {"reason", answer.ok() ? std::string("-") : answer.error().describe()}});
  link->close(Error(Errc::closed, "probe done"));
  co_return load;
}

asio::awaitable<Error> DtuAgent::serve(common::Endpoint manager) {
  const std::string peer = manager.to_string();
  auto connect = common::tcp_connect(manager, options_.connect_timeout);
  auto socket = co_await std::move(connect);
  if (!socket.ok()) co_return socket.error();
  auto handshake = common::tls_connect(std::move(socket.value()), *tls_, options_.id, key_, options_.connect_timeout);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) co_return transport.error();
  if (stopped_) co_return Error(Errc::closed, "stopping");

  link_ = common::Link::create(executor_, std::move(transport.value()), common::FilamentMux::Side::initiator,
                               clock_, log_, peer, common::Link::Options{});
  std::optional<Error> closed_reason;
  link_closed_.expires_at(asio::steady_timer::time_point::max());
  link_->mux().set_receiver(common::FilamentMux::kControlFilament,
                            [this](common::Frame frame) { on_manager_frame(frame); });
  link_->start([this, &closed_reason](const Error& reason) {
    closed_reason = reason;
    link_closed_.cancel();
  });

  common::DtuHelloMsg hello{options_.id, common::kVersion, boot_epoch_, false};
  auto request = link_->request(common::FilamentMux::kControlFilament, common::to_frame(hello),
                                options_.connect_timeout);
  auto answer = co_await std::move(request);
  if (answer.ok()) {
    auto welcome = common::from_frame<common::DtuWelcomeMsg>(*answer);
    if (!welcome.ok()) {
      log_.warn(peer, "protocol_error", {{"reason", welcome.error().describe()}});
      link_->close(welcome.error());
    } else {
      welcomed_ = true;
      connected_to_ = manager;
      link_->set_heartbeat(std::chrono::milliseconds(welcome->heartbeat_ms), welcome->heartbeat_misses);
      on_welcome(*welcome);
      common::DeviceSnapshotMsg claim = snapshot();
      log_.info(peer, "connected", {{"manager", welcome->manager}, {"devices", claim.devices.size()},
                                    {"leases", claim.leases.size()}, {"claim", stamp_text(claim.stamp)},
                                    {"heartbeat_ms", welcome->heartbeat_ms}});
      send_device_message(common::to_frame(claim), "device_snapshot");
    }
  } else {
    link_->close(answer.error());
  }
  if (!closed_reason) co_await link_closed_.async_wait(as_tuple(asio::use_awaitable));
  link_.reset();
  fence_.reset();
  co_return closed_reason.value_or(Error(Errc::closed, "stopping"));
}

void DtuAgent::on_welcome(const common::DtuWelcomeMsg& welcome) {
  const std::int64_t local_us = common::to_micros(clock_.wall_now());
  // A manager without a universal clock (universal_us 0) leaves our own wall clock in charge.
  const std::int64_t universal_us = welcome.universal_us != 0 ? welcome.universal_us : local_us;
  const std::int64_t offset_change = (universal_us - local_us) - universal_offset_us_;
  universal_offset_us_ = universal_us - local_us;
  if (boot_epoch_ != 0) return;
  boot_epoch_ = universal_us;
  // Records built before the first welcome carry boot epoch 0 and local times: they become this
  // boot's records (seq kept, so their order stands).
  for (auto& [port, record] : records_) {
    record.stamp.boot_epoch = boot_epoch_;
    record.stamp.time_us += offset_change;
  }
  log_.info("", "boot_epoch", {{"boot_epoch", boot_epoch_}, {"offset_us", universal_offset_us_},
                               {"restamped", records_.size()}});
}

common::DeviceSnapshotMsg DtuAgent::snapshot() {
  common::DeviceSnapshotMsg m;
  m.dtu = options_.id;
  m.stamp = next_stamp();
  fence_ = m.stamp;
  for (const auto& [port, record] : records_) m.devices.push_back(record);
  const common::MonoTime now = clock_.now();
  for (const Lease* lease : leases_.all()) {
    m.leases.push_back(common::LeaseReport{lease->id, lease->device, lease->unit, lease->holder, lease->uid,
                                           millis_u32(lease->expires - now), lease->state_token});
  }
  return m;
}

void DtuAgent::send_device_message(common::Frame frame, const std::string& what) {
  if (!link_ || !welcomed_) return;  // the next connect's snapshot carries it
  const std::string peer = link_->peer();
  link_->post(common::FilamentMux::kControlFilament, std::move(frame), kDeviceMessageTimeout,
              [this, peer, what](common::Result<common::Frame> r) {
                if (!r.ok()) log_.warn(peer, "report_unconfirmed", {{"message", what}, {"reason", r.error().describe()}});
              });
}

void DtuAgent::on_attached(UsbDeviceInfo info) {
  // A new device on a port whose old device's removal was missed: its leases are over.
  for (const auto& lease : leases_.end_device(info.port, LeaseEnd::device_gone)) lease_ended(lease, LeaseEnd::device_gone);
  auto record = build_device_record(info, options_.id, next_stamp());
  devices_.insert_or_assign(info.port, info);
  attached_seq_[info.port] = record.stamp.seq;
  log_.info("", "device_attached", {{"device", record.device}, {"vid", common::hex16(record.vid)},
                                    {"pid", common::hex16(record.pid)}, {"units", record.units.size()}});
  records_[record.device] = record;
  send_device_message(common::to_frame(common::DeviceAttachedMsg{std::move(record)}), "device_attached");
}

void DtuAgent::on_detached(const std::string& port) {
  if (records_.erase(port) == 0) return;
  devices_.erase(port);
  attached_seq_.erase(port);
  log_.info("", "device_detached", {{"device", port}});
  send_device_message(common::to_frame(common::DeviceDetachedMsg{options_.id, port, next_stamp()}), "device_detached");
  for (const auto& lease : leases_.end_device(port, LeaseEnd::device_gone)) lease_ended(lease, LeaseEnd::device_gone);
}

// --- Leases -----------------------------------------------------------------------------------

void DtuAgent::on_manager_frame(const common::Frame& frame) {
  if (!link_) return;
  const bool request = frame.wants_reply();
  switch (frame.type) {
    case common::MessageType::lease_request:
      if (request) return on_lease_request(frame);
      break;
    case common::MessageType::lease_renew:
      if (request) return on_lease_renew(frame);
      break;
    case common::MessageType::lease_release:
      if (request) return on_lease_release(frame);
      break;
    case common::MessageType::dtu_move:
      if (!request) return on_dtu_move(frame);
      break;
    default:
      break;
  }
  const std::string why = std::string(request ? "unexpected " : "unexpected non-request ") +
                          std::string(common::message_type_name(frame.type));
  log_.warn(link_->peer(), "protocol_error", {{"reason", why}});
  link_->close(Error(Errc::illegal_state, why + " from the manager"));
}

void DtuAgent::on_dtu_move(const common::Frame& frame) {
  auto msg = common::from_frame<common::DtuMoveMsg>(frame);
  if (!msg.ok()) {
    log_.warn(link_->peer(), "protocol_error", {{"reason", msg.error().describe()}});
    link_->close(msg.error());
    return;
  }
  // The manager asks us to leave (a drain): the run loop connects elsewhere, this manager last.
  // Leases and in-band channels do not depend on the link and stay as they are.
  log_.info(link_->peer(), "manager_move", {{"reason", msg->reason}, {"leases", leases_.size()}});
  link_->close(Error(Errc::closed, "asked to move (" + msg->reason + ")"));
}

bool DtuAgent::refuse_stale_owner(const common::Frame& frame, const std::optional<common::Stamp>& fence,
                                  const std::string& what) {
  // Reject a lease operation that does not carry this link's claim: it comes from a manager that
  // may have lost this DTU (hung, partitioned) and acts on stale beliefs — the unit would get two
  // holders. Ops only arrive on the current link, so this also guards against reordering.
  if (fence && fence_ && *fence == *fence_) return false;
  log_.warn(link_->peer(), "lease_fenced", {{"op", std::string(common::message_type_name(frame.type))}, {"about", what},
                                            {"fence", stamp_text(fence)}, {"claim", stamp_text(fence_)}});
  link_->reply_error(frame, Errc::refused,
                     "stale owner: fence " + stamp_text(fence) + " is not this link's claim " + stamp_text(fence_));
  return true;
}

template <typename M>
std::optional<M> DtuAgent::decode_request(const common::Frame& frame) {
  auto msg = common::from_frame<M>(frame);
  if (msg.ok()) return std::move(msg.value());
  log_.warn(link_->peer(), "protocol_error", {{"reason", msg.error().describe()}});
  link_->reply_error(frame, Errc::bad_payload, msg.error().detail);
  return std::nullopt;
}

void DtuAgent::on_lease_request(const common::Frame& frame) {
  auto msg = decode_request<common::LeaseRequestMsg>(frame);
  if (!msg) return;
  if (refuse_stale_owner(frame, msg->fence, "unit " + std::to_string(msg->unit) + " of " + msg->device)) return;
  std::weak_ptr<common::Link> weak = link_;
  auto answer_error = [this, weak, frame, device = msg->device, unit = msg->unit](Errc code, const std::string& why) {
    log_.info("", "lease_refused", {{"device", device}, {"unit", unit}, {"code", common::errc_name(code)}, {"reason", why}});
    if (auto link = weak.lock()) link->reply_error(frame, code, why);
  };
  const common::Duration length = std::chrono::milliseconds(msg->length_ms);
  if (length < kMinLeaseLength || length > kMaxLeaseLength) {
    return answer_error(Errc::invalid_argument, "lease length " + std::to_string(msg->length_ms) + " ms is out of bounds");
  }
  auto record = records_.find(msg->device);
  if (record == records_.end()) return answer_error(Errc::not_found, "no device " + msg->device + " on this DTU");
  auto unit = std::find_if(record->second.units.begin(), record->second.units.end(),
                           [&](const common::UnitRecord& u) { return u.unit == msg->unit; });
  if (unit == record->second.units.end()) {
    return answer_error(Errc::not_found, "device " + msg->device + " has no unit " + std::to_string(msg->unit));
  }
  const std::string what = "unit " + std::to_string(msg->unit) + " of " + msg->device;
  if (unit->state == common::UnitState::allocated) {
    return answer_error(Errc::refused, what + " is held by " + unit->holder.value_or("?") + " (lease " +
                                           unit->lease.value_or("?") + ")");
  }
  if (auto blocked = blockers(msg->device, msg->unit); !blocked.empty()) {
    return answer_error(Errc::unavailable, what + " is unavailable while unit " + unit_list(blocked) + " is leased");
  }
  const auto key = std::make_pair(msg->device, msg->unit);
  if (claiming_.contains(key)) return answer_error(Errc::refused, what + " is being leased to another holder");
  claiming_.insert(key);
  const std::uint64_t attached_seq = attached_seq_[msg->device];
  const common::MonoTime asked_at = clock_.now();
  std::weak_ptr<int> alive = alive_;
  claim_interfaces(
      msg->device, unit->interfaces, 0,
      [this, alive, weak, frame, request = *msg, key, length, what, attached_seq, asked_at,
       interfaces = unit->interfaces, answer_error](common::Result<void> claimed) {
        if (alive.expired()) return;  // the agent is gone; the backend gives claims back on stop
        claiming_.erase(key);
        Lease claim{"", request.device, request.unit, interfaces, "", {}, {}, {}, {}, {}};
        // Gives back what was claimed, unless a lease now holds it (a replaced device's own leases).
        auto give_back = [&] {
          if (!claimed.ok()) return;
          for (const Lease* held : leases_.on_device(request.device)) {
            if (held->interfaces == interfaces) return;
          }
          release_interfaces(claim);
        };
        if (stopped_) return give_back();
        // Unplugged (or replaced) while the interfaces were being claimed.
        auto now = records_.find(request.device);
        if (now == records_.end() || attached_seq_[request.device] != attached_seq) {
          give_back();
          return answer_error(Errc::unavailable, what + " was unplugged");
        }
        if (!claimed.ok()) {
          const bool gone = claimed.error().code == make_error_code(Errc::unavailable);
          return answer_error(gone ? Errc::unavailable : Errc::refused,
                              what + ": cannot claim it: " + claimed.error().describe());
        }
        // A sibling leased while this one was being claimed.
        if (auto blocked = blockers(request.device, request.unit); !blocked.empty()) {
          give_back();
          return answer_error(Errc::unavailable, what + " is unavailable while unit " + unit_list(blocked) + " is leased");
        }
        // The manager stops waiting after its own deadline and would drop a late grant, leaving
        // a lease nobody holds.
        if (clock_.now() - asked_at > kMaxGrantDelay) {
          give_back();
          return answer_error(Errc::timeout, what + ": claiming its interfaces took too long");
        }
        auto lease =
            leases_.grant(request.device, request.unit, interfaces, request.holder, length, request.uid, request.state_token);
        if (!lease.ok()) {
          give_back();
          return answer_error(static_cast<Errc>(lease.error().code.value()), lease.error().detail);
        }
        log_.info("", "lease_granted",
                  {{"lease", lease->id}, {"device", lease->device}, {"unit", lease->unit}, {"holder", lease->holder},
                   {"uid", request.uid ? std::to_string(*request.uid) : "-"}, {"length_ms", request.length_ms}});
        expiry_timer_.cancel();  // re-arm for the new expiry
        auto link = weak.lock();
        if (link && link->is_open()) {
          // The grant before the unit's new state, as a release's ack comes before it: the
          // manager answers the service as soon as it reads the grant, and the state follows
          // in the same write instead of being handled (and sent to every finder) first.
          link->reply(frame, common::to_frame(granted_message(*lease, true)));
          report_units(lease->device);
          return;
        }
        report_units(lease->device);
        // Nobody can learn the token: end the lease at once rather than hold the unit for nothing.
        log_.warn("", "lease_unanswered", {{"lease", lease->id}, {"reason", "manager link lost"}});
        if (auto ended = leases_.end(lease->id, LeaseEnd::released)) lease_ended(*ended, LeaseEnd::released);
      });
}

std::set<std::uint32_t> DtuAgent::blockers(const std::string& port, std::uint32_t unit) const {
  std::set<std::uint32_t> out;
  auto record = records_.find(port);
  auto device = devices_.find(port);
  if (record == records_.end() || device == devices_.end()) return out;
  for (const Lease* lease : leases_.on_device(port)) {
    if (lease->unit != unit && conflicting_units(device->second, record->second, lease->unit).contains(unit)) {
      out.insert(lease->unit);
    }
  }
  for (const auto& [claiming_port, claiming_unit] : claiming_) {
    if (claiming_port == port && claiming_unit != unit &&
        conflicting_units(device->second, record->second, claiming_unit).contains(unit)) {
      out.insert(claiming_unit);
    }
  }
  return out;
}

void DtuAgent::on_lease_renew(const common::Frame& frame) {
  auto msg = decode_request<common::LeaseRenewMsg>(frame);
  if (!msg) return;
  if (refuse_stale_owner(frame, msg->fence, "lease " + msg->lease)) return;
  if (msg->token) {
    // A service taking its lease over through a manager that did not grant it: the token is
    // the proof that it is the holder.
    const agent::Lease* lease = leases_.find(msg->lease);
    auto token = common::from_hex(*msg->token);
    if (lease != nullptr && (!token.ok() || !common::constant_time_equal(*token, lease->token))) {
      log_.warn(link_->peer(), "lease_resume_refused", {{"lease", msg->lease}, {"reason", "token mismatch"}});
      link_->reply_error(frame, Errc::refused, "lease " + msg->lease + ": the token does not match");
      return;
    }
  }
  auto renewed = renew_lease(msg->lease, std::chrono::milliseconds(msg->length_ms));
  if (!renewed.ok()) {
    link_->reply_error(frame, static_cast<Errc>(renewed.error().code.value()), renewed.error().detail);
    return;
  }
  // A new owner's context replaces the old one (reported on the next connect).
  if (msg->state_token) leases_.set_state_token(msg->lease, *msg->state_token);
  link_->reply(frame, common::to_frame(granted_message(*renewed, false)));
}

void DtuAgent::on_lease_release(const common::Frame& frame) {
  auto msg = decode_request<common::LeaseReleaseMsg>(frame);
  if (!msg) return;
  if (refuse_stale_owner(frame, msg->fence, "lease " + msg->lease)) return;
  auto lease = leases_.end(msg->lease, LeaseEnd::released);
  if (!lease) {
    const EndedLease* gone = leases_.ended(msg->lease);
    link_->reply_error(frame, Errc::not_found,
                       "lease " + msg->lease + (gone ? std::string(" has ended (") + lease_end_name(gone->why) + ")"
                                                     : std::string(" is unknown")));
    return;
  }
  link_->reply(frame, common::to_frame(common::AckMsg{}));
  lease_ended(*lease, LeaseEnd::released);
}

void DtuAgent::claim_interfaces(const std::string& port, std::vector<std::uint8_t> interfaces, std::size_t next,
                                std::function<void(common::Result<void>)> done) {
  if (next == interfaces.size()) return done({});
  const std::uint8_t interface = interfaces[next];
  backend_.claim(port, interface,
                 [this, alive = std::weak_ptr<int>(alive_), port, interfaces = std::move(interfaces), next,
                  done = std::move(done)](common::Result<void> r) mutable {
                   if (alive.expired()) return;
                   if (!r.ok()) {
                     // Give back what was claimed before the failure.
                     for (std::size_t i = 0; i < next; ++i) backend_.release(port, interfaces[i], [](common::Result<void>) {});
                     return done(r);
                   }
                   claim_interfaces(port, std::move(interfaces), next + 1, std::move(done));
                 });
}

void DtuAgent::release_interfaces(const Lease& lease) {
  for (std::uint8_t interface : lease.interfaces) {
    backend_.release(lease.device, interface,
                     [this, alive = std::weak_ptr<int>(alive_), device = lease.device, interface](common::Result<void> r) {
      if (!alive.expired() && !r.ok() && !stopped_) {
        log_.warn("", "usb_release_failed", {{"device", device}, {"interface", interface}, {"reason", r.error().describe()}});
      }
    });
  }
}

common::Result<Lease> DtuAgent::renew_lease(std::string_view id, common::Duration length) {
  auto renewed = leases_.renew(id, length);
  if (renewed.ok()) {
    expiry_timer_.cancel();
    log_.debug("", "lease_renewed", {{"lease", renewed->id}, {"length_ms", millis_u32(length)}});
  }
  return renewed;
}

void DtuAgent::lease_ended(const Lease& lease, LeaseEnd why) {
  log_.info("", "lease_ended", {{"lease", lease.id}, {"device", lease.device}, {"unit", lease.unit},
                                {"holder", lease.holder}, {"reason", lease_end_name(why)}});
  if (why != LeaseEnd::device_gone) release_interfaces(lease);
  if (inband_) inband_->lease_ended(lease, why);
  if (records_.contains(lease.device)) report_units(lease.device);
  send_device_message(common::to_frame(common::LeaseEndedMsg{options_.id, lease.id, lease.device, lease.unit,
                                                              lease_end_name(why)}),
                      "lease_ended");
}

void DtuAgent::report_units(const std::string& port) {
  auto record = records_.find(port);
  auto device = devices_.find(port);
  if (record == records_.end() || device == devices_.end()) return;
  apply_leases(record->second, device->second, leases_.on_device(port));
  record->second.stamp = next_stamp();
  send_device_message(common::to_frame(common::DeviceChangedMsg{record->second}), "device_changed");
}

asio::awaitable<void> DtuAgent::expiry_loop() {
  while (!stopped_) {
    const common::MonoTime next = leases_.next_expiry();
    expiry_timer_.expires_at(next == common::kNever ? asio::steady_timer::time_point::max() : next);
    co_await expiry_timer_.async_wait(as_tuple(asio::use_awaitable));
    if (stopped_) co_return;
    for (const auto& lease : leases_.expire()) lease_ended(lease, LeaseEnd::expired);
  }
}

common::LeaseGrantedMsg DtuAgent::granted_message(const Lease& lease, bool with_token) const {
  common::LeaseGrantedMsg m;
  m.lease = lease.id;
  m.dtu = options_.id;
  m.device = lease.device;
  m.unit = lease.unit;
  m.holder = lease.holder;
  m.expires_in_ms = millis_u32(lease.expires - clock_.now());
  if (with_token) m.token = common::to_hex(lease.token);
  m.inband = inband_endpoint_.to_string();
  return m;
}

}  // namespace dtu::agent
