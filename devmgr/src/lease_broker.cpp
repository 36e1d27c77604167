#include "dtu/devmgr/lease_broker.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>

#include "dtu/common/net.hpp"
#include "dtu/common/state_token.hpp"
#include "dtu/devmgr/dtu_session.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;

namespace {

// Counts the answer to an allocate (granted, or refused by error code) and how long it took.
LeaseBroker::Done<common::LeaseGrantedMsg> counted(Metrics& metrics, const common::Clock& clock,
                                                   LeaseBroker::Done<common::LeaseGrantedMsg> done) {
  return [&metrics, &clock, start = clock.now(),
          done = std::move(done)](common::Result<common::LeaseGrantedMsg> r) {
    if (r.ok()) {
      metrics.allocations.with().inc();
    } else {
      const std::error_code code = r.error().code;
      const std::string error = code.category() == common::dtu_category()
                                    ? common::errc_name(static_cast<Errc>(code.value()))
                                    : "other";
      metrics.allocation_refusals.with({{"error", error}}).inc();
    }
    metrics.allocation_latency.with().observe(std::chrono::duration<double>(clock.now() - start).count());
    done(std::move(r));
  };
}

// A lease_ended reason as a metric label: the documented ones, else "other" (a DTU's text
// must not mint series without bound).
std::string ended_label(const std::string& reason) {
  for (const char* known : {"released", "expired", "device_gone", "agent_stopping", "dtu_lost"}) {
    if (reason == known) return reason;
  }
  return "other";
}

// The error a DTU answered with, or the transport's.
Error error_of(const common::Result<Frame>& answer) {
  if (!answer.ok()) return answer.error();
  auto error = common::from_frame<common::ErrorMsg>(*answer);
  if (error.ok()) return Error(common::errc_from_name(error->code), error->reason);
  return Error(Errc::bad_payload, "unexpected " + std::string(common::message_type_name(answer->type)) + " from the DTU");
}

// A wildcard listen address is useless to a service: use the address the DTU connects from.
std::string reachable(const std::string& inband, const std::string& dtu_peer) {
  auto endpoint = common::parse_endpoint(inband);
  auto peer = common::parse_endpoint(dtu_peer);
  if (!endpoint.ok() || !peer.ok()) return inband;
  if (endpoint->host != "0.0.0.0" && endpoint->host != "::") return inband;
  endpoint->host = peer->host;
  return endpoint->to_string();
}

// The user name and group names of a uid, from the system's user database (NSS).
void describe_user(unsigned uid, std::string& user, std::vector<std::string>& groups) {
  std::vector<char> buffer(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) return;
  user = pw.pw_name;
  int count = 64;
  std::vector<gid_t> gids(static_cast<std::size_t>(count));
  if (::getgrouplist(pw.pw_name, pw.pw_gid, gids.data(), &count) < 0) {
    gids.resize(static_cast<std::size_t>(count));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, gids.data(), &count) < 0) count = 0;
  }
  gids.resize(static_cast<std::size_t>(count));
  for (gid_t gid : gids) {
    group gr{};
    group* g = nullptr;
    if (::getgrgid_r(gid, &gr, buffer.data(), buffer.size(), &g) == 0 && g != nullptr) groups.emplace_back(g->gr_name);
  }
}

std::uint32_t millis_until(common::MonoTime at, common::MonoTime now) {
  if (at <= now) return 0;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(at - now).count();
  return static_cast<std::uint32_t>(std::min<std::int64_t>(ms, UINT32_MAX));
}

}  // namespace

bool is_admin(unsigned uid) { return uid == 0 || uid == ::geteuid(); }

// A service waiting for a held unit (allocate with wait_ms).
struct LeaseBroker::Waiter {
  std::weak_ptr<LeaseHolder> client;
  const LeaseHolder* client_key = nullptr;
  common::AllocateMsg request;
  PolicyVerdict verdict;
  Error refusal;  // what the DTU said last: the answer when the wait runs out
  Done<common::LeaseGrantedMsg> done;
  std::unique_ptr<common::DeadlineGuard> deadline;
  bool trying = false;
};

LeaseBroker::LeaseBroker(Context context, common::Logger log) : context_(std::move(context)), log_(std::move(log)) {}

void LeaseBroker::set_group_keys(std::optional<common::GroupKeys> keys) {
  keys_ = std::move(keys);
}

void LeaseBroker::set_universal_time(std::function<std::int64_t()> now_us) {
  universal_us_ = std::move(now_us);
}

void LeaseBroker::set_remote_holders(RemoteHolders make) {
  remote_holders_ = std::move(make);
}

void LeaseBroker::set_local_holders(LocalHolders list) {
  local_holders_ = std::move(list);
}

void LeaseBroker::bind(Held& held, const std::shared_ptr<LeaseHolder>& client) {
  held.client = client;
  held.client_key = client.get();
  held.releasing = false;
}

std::optional<common::Stamp> LeaseBroker::fence_of(const DtuSession& dtu) {
  return dtu.claim();
}

std::optional<std::string> LeaseBroker::issue_token(const LeaseHolder& client, const std::string& dtu,
                                                    const std::string& device, std::uint32_t unit,
                                                    const std::string& lease, const std::string& rule,
                                                    std::uint32_t length_ms, std::uint32_t max_lease_ms,
                                                    bool keep) const {
  if (!keys_) return std::nullopt;
  common::StateToken token;
  token.dtu = dtu;
  token.device = device;
  token.unit = unit;
  token.lease = lease;
  token.holder = client.holder_name();
  token.origin = client.origin().empty() ? context_.manager_id : client.origin();
  token.client = client.client_name();
  token.uid = client.uid();
  token.gid = client.gid();
  token.pid = client.pid();
  token.rule = rule;
  token.length_ms = length_ms;
  token.max_lease_ms = max_lease_ms;
  token.keep = keep;
  token.issued_by = context_.manager_id;
  token.issued_us = universal_us_ ? universal_us_() : common::to_micros(context_.clock->wall_now());
  auto text = common::sign_state_token(token, *keys_);
  if (!text.ok()) {
    log_.warn("", "state_token_not_issued",
              {{"dtu", dtu}, {"lease", lease}, {"reason", text.error().describe()}});
    return std::nullopt;
  }
  return std::move(text.value());
}

LeaseBroker::~LeaseBroker() {
  for (auto& [unit, queue] : waiting_) {
    for (auto& waiter : queue) waiter->deadline.reset();
  }
}

void LeaseBroker::allocate(const std::shared_ptr<LeaseHolder>& client, common::AllocateMsg request,
                           Done<common::LeaseGrantedMsg> done) {
  if (metrics_ != nullptr) done = counted(*metrics_, *context_.clock, std::move(done));
  const unsigned uid = client->uid();
  if (request.keep && !is_admin(uid)) {
    return done(Error(Errc::denied, "only root or the devmgr user may keep a lease beyond its connection"));
  }
  if (request.wait_ms && *request.wait_ms > kMaxAllocateWaitMs) {
    return done(Error(Errc::invalid_argument, "wait_ms above " + std::to_string(kMaxAllocateWaitMs)));
  }
  if (!context_.lookup(request.dtu)) {
    return done(Error(Errc::not_found, "DTU " + request.dtu + " is not connected to manager " + context_.manager_id));
  }
  const common::DeviceRecord* device = context_.devices->find(request.dtu, request.device);
  if (device == nullptr) return done(Error(Errc::not_found, "no device " + request.device + " on DTU " + request.dtu));
  auto unit = std::find_if(device->units.begin(), device->units.end(),
                           [&](const common::UnitRecord& u) { return u.unit == request.unit; });
  if (unit == device->units.end()) {
    return done(Error(Errc::not_found, "device " + request.device + " on DTU " + request.dtu + " has no unit " +
                                           std::to_string(request.unit)));
  }

  PolicyRequest ask;
  ask.device = device;
  ask.unit = &*unit;
  ask.session = context_.sessions->at(request.dtu);
  ask.uid = uid;
  const UserInfo& user = user_info(uid);
  ask.user = user.user;
  ask.groups = user.groups;
  ask.service = client->client_name();
  const PolicyVerdict verdict = context_.policy().evaluate(ask);
  if (!verdict.allow) {
    log_.info("", "allocation_denied", {{"dtu", request.dtu}, {"device", request.device}, {"unit", request.unit},
                                        {"uid", uid}, {"rule", verdict.rule}, {"reason", verdict.reason}});
    return done(Error(Errc::denied, verdict.reason));
  }
  if (verdict.max_leases_per_user) {
    const auto held = static_cast<std::uint32_t>(
        std::count_if(leases_.begin(), leases_.end(), [&](const auto& l) { return l.second.uid == uid; }));
    if (held >= *verdict.max_leases_per_user) {
      log_.info("", "allocation_denied", {{"dtu", request.dtu}, {"device", request.device}, {"uid", uid},
                                          {"rule", verdict.rule}, {"reason", "per-user limit"}});
      return done(Error(Errc::denied, "user " + (ask.user.empty() ? std::to_string(uid) : ask.user) + " holds " +
                                          std::to_string(held) + " leases, the limit of policy rule '" + verdict.rule +
                                          "'"));
    }
  }
  if (!request.wait_ms || *request.wait_ms == 0) return ask_dtu(client, request, verdict, std::move(done));

  std::weak_ptr<LeaseHolder> weak = client;
  ask_dtu(client, request, verdict,
          [this, alive = std::weak_ptr<int>(alive_), weak, request, verdict,
           done = std::move(done)](common::Result<common::LeaseGrantedMsg> r) mutable {
            if (alive.expired()) return;
            auto self = weak.lock();
            if (r.ok() || !self || r.error().code != make_error_code(Errc::refused)) return done(std::move(r));
            enqueue(self, request, verdict, r.error(), std::move(done));
          });
}

const LeaseBroker::UserInfo& LeaseBroker::user_info(unsigned uid) {
  const common::MonoTime now = context_.clock->now();
  auto [it, fresh] = users_.try_emplace(uid);
  UserInfo& info = it->second;
  if (fresh || now - info.fetched >= kUserCacheTtl) {
    info.user.clear();
    info.groups.clear();
    describe_user(uid, info.user, info.groups);
    info.fetched = now;
  }
  return info;
}

void LeaseBroker::ask_dtu(const std::shared_ptr<LeaseHolder>& client, const common::AllocateMsg& request,
                          const PolicyVerdict& verdict, Done<common::LeaseGrantedMsg> done) {
  const std::uint32_t length_ms = verdict.lease_length(request.length_ms);
  auto dtu = context_.lookup(request.dtu);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + request.dtu + " is no longer connected"));
  common::LeaseRequestMsg ask;
  ask.device = request.device;
  ask.unit = request.unit;
  ask.holder = client->holder_name();
  ask.uid = client->uid();
  ask.length_ms = length_ms;
  ask.fence = fence_of(*dtu);
  // The DTU's copy has no lease id: the DTU chooses it. Its report names the lease.
  ask.state_token = issue_token(*client, request.dtu, request.device, request.unit, "", verdict.rule,
                                length_ms, verdict.max_lease_ms, request.keep);
  std::weak_ptr<LeaseHolder> weak = client;
  const std::string peer = dtu->peer();
  dtu->request(
      common::to_frame(ask), kLeaseRequestTimeout,
      [this, alive = std::weak_ptr<int>(alive_), weak, request, peer, length_ms, cap = verdict.max_lease_ms,
       rule = verdict.rule, done = std::move(done)](common::Result<Frame> answer) {
        if (alive.expired()) return;
        if (!answer.ok() || answer->type != common::MessageType::lease_granted) return done(error_of(answer));
        auto granted = common::from_frame<common::LeaseGrantedMsg>(*answer);
        if (!granted.ok()) return done(granted.error());
        if (granted->inband) granted->inband = reachable(*granted->inband, peer);
        auto self = weak.lock();
        if (!self) {
          // The service went away while the DTU granted: give the unit back at once.
          send_release(request.dtu, granted->lease, [](common::Result<void>) {});
          return done(Error(Errc::closed, "the client closed its connection"));
        }
        remember(*granted, self, length_ms, cap, request.keep, rule);
        granted->state_token = issue_token(*self, granted->dtu, granted->device, granted->unit,
                                           granted->lease, rule, length_ms, cap, request.keep);
        done(std::move(granted.value()));
      });
}

void LeaseBroker::remember(const common::LeaseGrantedMsg& granted, const std::shared_ptr<LeaseHolder>& client,
                           std::uint32_t length_ms, std::uint32_t max_lease_ms, bool keep,
                           const std::string& rule) {
  Held held;
  held.dtu = granted.dtu;
  held.device = granted.device;
  held.unit = granted.unit;
  held.holder = granted.holder;
  bind(held, client);
  held.uid = client->uid();
  held.keep = keep;
  held.length_ms = length_ms;
  held.max_lease_ms = max_lease_ms;
  held.expires = context_.clock->now() + std::chrono::milliseconds(granted.expires_in_ms);
  held.rule = rule;
  leases_[granted.lease] = std::move(held);
  log_.info("", "lease_granted", {{"lease", granted.lease}, {"dtu", granted.dtu}, {"device", granted.device},
                                  {"unit", granted.unit}, {"holder", granted.holder},
                                  {"uid", client->uid()}, {"length_ms", length_ms}, {"keep", keep}});
}

void LeaseBroker::enqueue(const std::shared_ptr<LeaseHolder>& client, const common::AllocateMsg& request,
                          const PolicyVerdict& verdict, Error refusal, Done<common::LeaseGrantedMsg> done) {
  const UnitKey unit{request.dtu, request.device, request.unit};
  auto waiter = std::make_shared<Waiter>();
  waiter->client = client;
  waiter->client_key = client.get();
  waiter->request = request;
  waiter->verdict = verdict;
  waiter->refusal = std::move(refusal);
  waiter->done = std::move(done);
  std::weak_ptr<Waiter> weak = waiter;
  waiter->deadline = std::make_unique<common::DeadlineGuard>(
      context_.executor, std::chrono::milliseconds(*request.wait_ms),
      [this, alive = std::weak_ptr<int>(alive_), unit, weak] {
        auto w = weak.lock();
        if (alive.expired() || !w) return;
        finish_waiter(unit, w, w->refusal);
      });
  waiting_[unit].push_back(waiter);
  log_.info("", "allocation_waiting", {{"dtu", request.dtu}, {"device", request.device}, {"unit", request.unit},
                                       {"holder", client->holder_name()}, {"wait_ms", *request.wait_ms},
                                       {"queue", waiting_[unit].size()}});
  // The unit may have freed between the DTU's refusal and now.
  kick(unit);
}

void LeaseBroker::kick(const UnitKey& unit) {
  auto it = waiting_.find(unit);
  if (it == waiting_.end() || it->second.empty()) return;
  auto waiter = it->second.front();
  if (waiter->trying) return;
  const auto& [dtu, device, number] = unit;
  const common::DeviceRecord* record = context_.devices->find(dtu, device);
  if (record == nullptr) return;
  auto u = std::find_if(record->units.begin(), record->units.end(),
                        [n = number](const common::UnitRecord& r) { return r.unit == n; });
  if (u == record->units.end() || u->state != common::UnitState::free) return;
  auto client = waiter->client.lock();
  if (!client) return finish_waiter(unit, waiter, Error(Errc::closed, "the client closed its connection"));
  waiter->trying = true;
  ask_dtu(client, waiter->request, waiter->verdict,
          [this, alive = std::weak_ptr<int>(alive_), unit, waiter](common::Result<common::LeaseGrantedMsg> r) {
            if (alive.expired()) return;
            waiter->trying = false;
            if (!r.ok() && r.error().code == make_error_code(Errc::refused)) {
              // Someone was quicker: keep our place and wait for the next release.
              waiter->refusal = r.error();
              return;
            }
            if (r.ok() && !is_waiting(unit, waiter)) {
              // The wait ran out while the DTU was granting: nobody will learn of this lease,
              // so give the unit back rather than hold it until it expires.
              log_.info("", "late_grant_released", {{"lease", r->lease}, {"dtu", r->dtu}});
              send_release(r->dtu, r->lease, [](common::Result<void>) {});
              return;
            }
            finish_waiter(unit, waiter, std::move(r));
          });
}

bool LeaseBroker::is_waiting(const UnitKey& unit, const std::shared_ptr<Waiter>& waiter) const {
  auto it = waiting_.find(unit);
  return it != waiting_.end() && std::find(it->second.begin(), it->second.end(), waiter) != it->second.end();
}

void LeaseBroker::finish_waiter(const UnitKey& unit, const std::shared_ptr<Waiter>& waiter,
                                common::Result<common::LeaseGrantedMsg> result) {
  auto it = waiting_.find(unit);
  if (it == waiting_.end()) return;
  auto& queue = it->second;
  auto pos = std::find(queue.begin(), queue.end(), waiter);
  if (pos == queue.end()) return;  // answered already
  queue.erase(pos);
  if (queue.empty()) waiting_.erase(it);
  waiter->deadline.reset();
  if (result.ok()) {
    waiter->done(std::move(result));
  } else {
    waiter->done(result.error());
  }
  kick(unit);
}

std::size_t LeaseBroker::waiting() const {
  std::size_t n = 0;
  for (const auto& [unit, queue] : waiting_) n += queue.size();
  return n;
}

void LeaseBroker::device_updated(const common::DeviceRecord& record) {
  for (const common::UnitRecord& unit : record.units) {
    if (unit.state == common::UnitState::free) kick(UnitKey{record.dtu, record.device, unit.unit});
  }
}

common::Result<LeaseBroker::Held> LeaseBroker::check_holder(const LeaseHolder& client, const std::string& dtu,
                                                            const std::string& lease) const {
  auto it = leases_.find(lease);
  if (it == leases_.end() || it->second.dtu != dtu) {
    return Error(Errc::not_found, "no lease " + lease + " on DTU " + dtu + " at manager " + context_.manager_id);
  }
  if (it->second.unowned) {
    return Error(Errc::not_found, "lease " + lease + " on DTU " + dtu + " has no known holder at manager " +
                                      context_.manager_id + "; take it over with resume_lease");
  }
  const unsigned uid = client.uid();
  if (it->second.client_key != &client && it->second.uid != uid && !is_admin(uid)) {
    log_.warn("", "lease_access_refused",
              {{"lease", lease}, {"uid", uid}, {"from", client.holder_name()}, {"holder_uid", it->second.uid}});
    return Error(Errc::denied, "lease " + lease + " belongs to another user");
  }
  return it->second;
}

void LeaseBroker::renew(const std::shared_ptr<LeaseHolder>& client, common::RenewMsg request,
                        Done<common::LeaseGrantedMsg> done) {
  auto held = check_holder(*client, request.dtu, request.lease);
  if (!held.ok()) return done(held.error());
  auto dtu = context_.lookup(request.dtu);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + request.dtu + " is not connected; renew in-band or retry"));
  if (auto it = leases_.find(request.lease); it != leases_.end() && !it->second.client.lock()) {
    // Adopted from a token (or its holder reconnected): the renewing service of that uid is
    // the holder from now on, and is told when the lease ends.
    bind(it->second, client);
    log_.info("", "lease_bound", {{"client", client->holder_name()}, {"lease", request.lease},
                                  {"dtu", request.dtu}, {"uid", client->uid()}, {"by", "renew"}});
  }
  // Renewals keep to the cap the policy set at allocation.
  std::uint32_t length = request.length_ms != 0 ? request.length_ms : held->length_ms;
  if (held->max_lease_ms != 0) length = std::min(length, held->max_lease_ms);
  dtu->request(common::to_frame(
                   common::LeaseRenewMsg{request.lease, length, std::nullopt, fence_of(*dtu), std::nullopt}),
               kLeaseRequestTimeout,
               [this, alive = std::weak_ptr<int>(alive_), lease = request.lease,
                done = std::move(done)](common::Result<Frame> answer) {
                 if (alive.expired()) return;
                 if (!answer.ok() || answer->type != common::MessageType::lease_granted)
                   return done(error_of(answer));
                 auto granted = common::from_frame<common::LeaseGrantedMsg>(*answer);
                 if (granted.ok()) {
                   if (auto it = leases_.find(lease); it != leases_.end()) {
                     it->second.expires = context_.clock->now() + std::chrono::milliseconds(granted->expires_in_ms);
                   }
                 }
                 done(std::move(granted));
               });
}

void LeaseBroker::release(const std::shared_ptr<LeaseHolder>& client, common::ReleaseMsg request, Done<void> done) {
  auto held = check_holder(*client, request.dtu, request.lease);
  if (!held.ok()) return done(held.error());
  if (held->client_key != client.get()) {
    log_.info("", "lease_released_by_other", {{"lease", request.lease}, {"by", client->holder_name()},
                                              {"uid", client->uid()}, {"holder", held->holder}});
  }
  send_release(request.dtu, request.lease, std::move(done));
}

void LeaseBroker::resume(const std::shared_ptr<LeaseHolder>& client, common::ResumeLeaseMsg request,
                         Done<common::LeaseGrantedMsg> done) {
  // What this manager knows of the lease's terms: from its own record, else from the service's
  // state token when it verifies and is the same lease and uid (a token names, it does not
  // authorise: the DTU checks the lease token below).
  std::uint32_t length = request.length_ms;
  std::uint32_t cap = 0;
  bool keep = false;
  std::string rule;
  std::optional<std::pair<std::string, std::uint32_t>> unit;  // (device, unit)
  if (auto it = leases_.find(request.lease); it != leases_.end()) {
    if (!it->second.unowned) {
      auto held = check_holder(*client, request.dtu, request.lease);
      if (!held.ok()) return done(held.error());
    }
    if (length == 0) length = it->second.length_ms;
    cap = it->second.max_lease_ms;
    keep = it->second.keep;
    rule = it->second.rule;
    unit.emplace(it->second.device, it->second.unit);
  } else if (request.state_token && keys_) {
    auto token = common::verify_state_token(*request.state_token, *keys_);
    if (!token.ok()) {
      log_.warn("", "state_token_rejected",
                {{"dtu", request.dtu},
                 {"lease", request.lease},
                 {"reason", token.error().describe()},
                 {"from", client->holder_name()}});
    } else if (token->dtu == request.dtu && token->lease == request.lease && token->uid == client->uid()) {
      if (length == 0) length = token->length_ms;
      cap = token->max_lease_ms;
      keep = token->keep && is_admin(client->uid());
      rule = token->rule;
      unit.emplace(token->device, token->unit);
    }
  }
  if (length == 0) length = kPolicyDefaultLeaseMs;
  if (cap != 0) length = std::min(length, cap);
  auto dtu = context_.lookup(request.dtu);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + request.dtu + " is not connected to manager " +
                                                     context_.manager_id + " (yet); retry"));
  common::LeaseRenewMsg renew{request.lease, length, request.token, fence_of(*dtu), std::nullopt};
  // The DTU's copy names the new holder (its manager may have changed).
  if (unit)
    renew.state_token =
        issue_token(*client, request.dtu, unit->first, unit->second, "", rule, length, cap, keep);
  std::weak_ptr<LeaseHolder> weak = client;
  dtu->request(common::to_frame(renew), kLeaseRequestTimeout,
               [this, alive = std::weak_ptr<int>(alive_), weak, length, cap, keep, rule,
                done = std::move(done)](common::Result<Frame> answer) {
                 if (alive.expired()) return;
                 if (!answer.ok() || answer->type != common::MessageType::lease_granted)
                   return done(error_of(answer));
                 auto granted = common::from_frame<common::LeaseGrantedMsg>(*answer);
                 if (!granted.ok()) return done(granted.error());
                 auto self = weak.lock();
                 if (!self) return done(Error(Errc::closed, "the client closed its connection"));
                 remember(*granted, self, length, cap, keep, rule);
                 granted->state_token = issue_token(*self, granted->dtu, granted->device, granted->unit,
                                                    granted->lease, rule, length, cap, keep);
                 log_.info("", "lease_resumed", {{"lease", granted->lease}, {"holder", self->holder_name()}});
                 done(std::move(granted.value()));
               });
}

void LeaseBroker::send_release(const std::string& dtu_id, const std::string& lease, Done<void> done) {
  auto dtu = context_.lookup(dtu_id);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + dtu_id + " is not connected; its lease expires on the DTU"));
  dtu->request(common::to_frame(common::LeaseReleaseMsg{lease, fence_of(*dtu)}), kLeaseRequestTimeout,
               [this, alive = std::weak_ptr<int>(alive_), lease,
                done = std::move(done)](common::Result<Frame> answer) {
                 if (alive.expired()) return;
                 if (!answer.ok() || answer->type != common::MessageType::ack) {
                   const Error why = error_of(answer);
                   // Not found: the lease had ended already; the holder's view is the same.
                   if (why.code == make_error_code(Errc::not_found)) leases_.erase(lease);
                   return done(why);
                 }
                 done({});  // lease_ended from the DTU forgets it and tells the holder
               });
}

void LeaseBroker::holder_closed(const LeaseHolder* client) {
  // Its waits end without an answer: nobody is left to read it.
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    auto& queue = it->second;
    for (auto w = queue.begin(); w != queue.end();) {
      if ((*w)->client_key == client) {
        (*w)->deadline.reset();
        w = queue.erase(w);
      } else {
        ++w;
      }
    }
    it = queue.empty() ? waiting_.erase(it) : std::next(it);
  }
  std::vector<std::pair<std::string, std::string>> held;  // (dtu, lease)
  for (auto& [id, lease] : leases_) {
    if (lease.client_key != client) continue;
    // The session is gone: its address may be reused by another client's session, which must not
    // pass for the holder. Only the uid rule remains until the DTU confirms the end.
    lease.client_key = nullptr;
    lease.client.reset();
    lease.releasing = !lease.keep;
    if (!lease.keep) held.emplace_back(lease.dtu, id);
  }
  for (const auto& [dtu, lease] : held) {
    log_.info("", "lease_holder_gone", {{"lease", lease}, {"dtu", dtu}});
    send_release(dtu, lease, [this, lease = lease](common::Result<void> r) {  // a copy: clang < 16
      if (!r.ok()) log_.warn("", "lease_release_failed", {{"lease", lease}, {"reason", r.error().describe()}});
    });
  }
}

void LeaseBroker::release_unbound(const std::string& dtu, const std::string& lease) {
  auto it = leases_.find(lease);
  if (it == leases_.end() || it->second.dtu != dtu) return;
  Held& held = it->second;
  if (held.keep || held.releasing || held.client_key != nullptr) return;
  held.releasing = true;
  log_.info("", "lease_holder_gone", {{"lease", lease}, {"dtu", dtu}});
  send_release(dtu, lease, [this, lease](common::Result<void> r) {
    if (!r.ok()) log_.warn("", "lease_release_failed", {{"lease", lease}, {"reason", r.error().describe()}});
  });
}

void LeaseBroker::lease_ended(const common::LeaseEndedMsg& ended) {
  auto it = leases_.find(ended.lease);
  if (it == leases_.end() || it->second.dtu != ended.dtu) return;
  auto client = it->second.client.lock();
  leases_.erase(it);
  log_.info("", "lease_ended", {{"lease", ended.lease}, {"dtu", ended.dtu}, {"reason", ended.reason}});
  if (metrics_ != nullptr) metrics_->leases_ended.with({{"reason", ended_label(ended.reason)}}).inc();
  if (client) client->notify(common::to_frame(ended));
}

void LeaseBroker::dtu_lost(const std::string& dtu) {
  std::vector<common::LeaseEndedMsg> ended;
  for (const auto& [id, lease] : leases_) {
    if (lease.dtu == dtu) ended.push_back(common::LeaseEndedMsg{dtu, id, lease.device, lease.unit, "dtu_lost"});
  }
  for (const auto& e : ended) lease_ended(e);
  std::vector<std::pair<UnitKey, std::shared_ptr<Waiter>>> failed;
  for (const auto& [unit, queue] : waiting_) {
    if (std::get<0>(unit) != dtu) continue;
    for (const auto& w : queue) failed.emplace_back(unit, w);
  }
  for (const auto& [unit, w] : failed) {
    finish_waiter(unit, w, Error(Errc::unavailable, "DTU " + dtu + " disconnected while waiting for its unit"));
  }
}

void LeaseBroker::adopt(const std::string& dtu, const std::vector<common::LeaseReport>& leases) {
  for (const auto& report : leases) {
    if (auto it = leases_.find(report.lease); it != leases_.end() && it->second.dtu == dtu) continue;  // ours
    adopt_one(dtu, report);
  }
}

void LeaseBroker::adopt_one(const std::string& dtu, const common::LeaseReport& report) {
  Held held;
  held.dtu = dtu;
  held.device = report.device;
  held.unit = report.unit;
  held.holder = report.holder;
  held.uid = report.uid.value_or(0);
  held.length_ms = report.expires_in_ms;
  held.expires = context_.clock->now() + std::chrono::milliseconds(report.expires_in_ms);

  // Why the token cannot restore the holder, or "" when it can.
  std::string rejected;
  common::Result<common::StateToken> token = Error(Errc::not_found);
  if (!report.state_token) {
    rejected = "no state token";
  } else if (!keys_) {
    rejected = "no group key to verify it";
  } else {
    token = common::verify_state_token(*report.state_token, *keys_);
    if (!token.ok()) {
      rejected = token.error().describe();
    } else if (token->dtu != dtu || token->device != report.device || token->unit != report.unit ||
               token->holder != report.holder || (!token->lease.empty() && token->lease != report.lease)) {
      // A valid token moved onto another lease: replay.
      rejected = "the token is for another lease";
    }
  }
  if (!rejected.empty()) {
    // The DTU keeps the lease until it expires there: nothing is shortened or released here.
    log_.warn("", "state_token_rejected", {{"dtu", dtu}, {"lease", report.lease}, {"reason", rejected}});
    held.unowned = true;
    leases_[report.lease] = std::move(held);
    return;
  }
  held.uid = token->uid;
  held.length_ms = token->length_ms;
  held.max_lease_ms = token->max_lease_ms;
  held.keep = token->keep;
  held.rule = token->rule;
  std::shared_ptr<LeaseHolder> local;
  if (token->origin != context_.manager_id && remote_holders_) {
    auto holder = remote_holders_(
        token->origin, common::OnBehalf{token->uid, token->gid, token->pid, token->client, token->holder});
    if (holder) bind(held, holder);
  } else if (token->origin == context_.manager_id && local_holders_) {
    // The DTU came back (or here) while its holder stayed connected to this manager: it holds
    // the lease again at once, as if it had obtained it here.
    local = connected_holder(*token, dtu, report.lease);
    if (local) bind(held, local);
  }
  // Any other service of this manager (or one of a peer we cannot reach by name) gets the lease
  // back when it renews or resumes it under its uid.
  leases_[report.lease] = std::move(held);
  log_.info("", "lease_adopted",
            {{"lease", report.lease},
             {"dtu", dtu},
             {"device", report.device},
             {"unit", report.unit},
             {"holder", token->holder},
             {"origin", token->origin},
             {"uid", token->uid},
             {"expires_in_ms", report.expires_in_ms}});
  if (local) {
    log_.info("", "lease_bound", {{"client", local->holder_name()}, {"lease", report.lease}, {"dtu", dtu},
                                  {"uid", local->uid()}, {"by", "adopt"}});
  }
}

std::shared_ptr<LeaseHolder> LeaseBroker::connected_holder(const common::StateToken& token,
                                                           const std::string& dtu,
                                                           const std::string& lease) const {
  std::vector<std::shared_ptr<LeaseHolder>> named;
  for (const auto& client : local_holders_()) {
    if (!client || !client->origin().empty() || client->uid() != token.uid) continue;
    if (token.pid != 0 && client->pid() != token.pid) continue;
    if (!token.client.empty() && client->client_name() != token.client) continue;
    named.push_back(client);
  }
  if (named.size() == 1) return named.front();
  if (named.size() > 1) {
    log_.warn("", "lease_bind_ambiguous",
              {{"lease", lease},
               {"dtu", dtu},
               {"uid", token.uid},
               {"pid", token.pid},
               {"client", token.client},
               {"candidates", named.size()},
               {"reason", "several connected clients match the state token; the lease waits for the first "
                          "of them to renew or resume it"}});
  }
  return nullptr;
}

bool LeaseBroker::holds(const LeaseHolder* holder) const {
  return std::any_of(leases_.begin(), leases_.end(), [&](const auto& l) { return l.second.client_key == holder; });
}

std::vector<common::LeaseInfo> LeaseBroker::list() const {
  const common::MonoTime now = context_.clock->now();
  std::vector<common::LeaseInfo> out;
  out.reserve(leases_.size());
  for (const auto& [id, lease] : leases_) {
    out.push_back(common::LeaseInfo{id, lease.dtu, lease.device, lease.unit, lease.holder, lease.uid,
                                    millis_until(lease.expires, now), lease.keep});
  }
  return out;
}

}  // namespace dtu::devmgr
