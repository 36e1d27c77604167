#include "dtu/devmgr/lease_broker.hpp"

#include "dtu/devmgr/client_session.hpp"
#include "dtu/devmgr/dtu_session.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;

namespace {

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

}  // namespace

void LeaseBroker::allocate(const std::shared_ptr<ClientSession>& client, common::AllocateMsg request,
                           Done<common::LeaseGrantedMsg> done) {
  auto dtu = lookup_(request.dtu);
  if (!dtu) return done(Error(Errc::not_found, "DTU " + request.dtu + " is not connected to manager " + manager_id_));
  common::LeaseRequestMsg ask;
  ask.device = request.device;
  ask.unit = request.unit;
  ask.holder = client->holder_name();
  ask.uid = client->credentials().uid;
  ask.length_ms = request.length_ms;
  std::weak_ptr<ClientSession> weak = client;
  const std::string peer = dtu->peer();
  dtu->request(common::to_frame(ask), kLeaseRequestTimeout,
               [this, weak, request, peer, uid = client->credentials().uid, key = client.get(),
                done = std::move(done)](common::Result<Frame> answer) {
                 if (!answer.ok() || answer->type != common::MessageType::lease_granted) return done(error_of(answer));
                 auto granted = common::from_frame<common::LeaseGrantedMsg>(*answer);
                 if (!granted.ok()) return done(granted.error());
                 if (granted->inband) granted->inband = reachable(*granted->inband, peer);
                 if (weak.expired()) {
                   // The service went away while the DTU granted: give the unit back at once.
                   send_release(request.dtu, granted->lease, [](common::Result<void>) {});
                   return done(Error(Errc::closed, "the client closed its connection"));
                 }
                 leases_[granted->lease] = Held{request.dtu, granted->device, granted->unit, weak, key, uid};
                 log_.info("", "lease_granted", {{"lease", granted->lease}, {"dtu", request.dtu},
                                                 {"device", granted->device}, {"unit", granted->unit},
                                                 {"holder", granted->holder}, {"uid", uid}});
                 done(std::move(granted.value()));
               });
}

common::Result<LeaseBroker::Held> LeaseBroker::check_holder(const ClientSession& client, const std::string& dtu,
                                                            const std::string& lease) const {
  auto it = leases_.find(lease);
  if (it == leases_.end() || it->second.dtu != dtu) {
    return Error(Errc::not_found, "no lease " + lease + " on DTU " + dtu + " at manager " + manager_id_);
  }
  if (it->second.client_key != &client && it->second.uid != client.credentials().uid) {
    log_.warn("", "lease_access_refused", {{"lease", lease}, {"uid", client.credentials().uid},
                                           {"holder_uid", it->second.uid}});
    return Error(Errc::refused, "lease " + lease + " belongs to another user");
  }
  return it->second;
}

void LeaseBroker::renew(const std::shared_ptr<ClientSession>& client, common::RenewMsg request,
                        Done<common::LeaseGrantedMsg> done) {
  auto held = check_holder(*client, request.dtu, request.lease);
  if (!held.ok()) return done(held.error());
  auto dtu = lookup_(request.dtu);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + request.dtu + " is not connected; renew in-band or retry"));
  dtu->request(common::to_frame(common::LeaseRenewMsg{request.lease, request.length_ms, std::nullopt}), kLeaseRequestTimeout,
               [done = std::move(done)](common::Result<Frame> answer) {
                 if (!answer.ok() || answer->type != common::MessageType::lease_granted) return done(error_of(answer));
                 done(common::from_frame<common::LeaseGrantedMsg>(*answer));
               });
}

void LeaseBroker::release(const std::shared_ptr<ClientSession>& client, common::ReleaseMsg request, Done<void> done) {
  auto held = check_holder(*client, request.dtu, request.lease);
  if (!held.ok()) return done(held.error());
  send_release(request.dtu, request.lease, std::move(done));
}

void LeaseBroker::send_release(const std::string& dtu_id, const std::string& lease, Done<void> done) {
  auto dtu = lookup_(dtu_id);
  if (!dtu) return done(Error(Errc::unavailable, "DTU " + dtu_id + " is not connected; its lease expires on the DTU"));
  dtu->request(common::to_frame(common::LeaseReleaseMsg{lease}), kLeaseRequestTimeout,
               [this, lease, done = std::move(done)](common::Result<Frame> answer) {
                 if (!answer.ok() || answer->type != common::MessageType::ack) {
                   const Error why = error_of(answer);
                   // Not found: the lease had ended already; the holder's view is the same.
                   if (why.code == make_error_code(Errc::not_found)) leases_.erase(lease);
                   return done(why);
                 }
                 done({});  // lease_ended from the DTU forgets it and tells the holder
               });
}

void LeaseBroker::client_closed(const ClientSession* client) {
  std::vector<std::pair<std::string, std::string>> held;  // (dtu, lease)
  for (auto& [id, lease] : leases_) {
    if (lease.client_key != client) continue;
    held.emplace_back(lease.dtu, id);
    // The session is gone: its address may be reused by another client's session, which must not
    // pass for the holder. Only the uid rule remains until the DTU confirms the end.
    lease.client_key = nullptr;
    lease.client.reset();
  }
  for (const auto& [dtu, lease] : held) {
    log_.info("", "lease_holder_gone", {{"lease", lease}, {"dtu", dtu}});
    send_release(dtu, lease, [this, lease](common::Result<void> r) {
      if (!r.ok()) log_.warn("", "lease_release_failed", {{"lease", lease}, {"reason", r.error().describe()}});
    });
  }
}

void LeaseBroker::lease_ended(const common::LeaseEndedMsg& ended) {
  auto it = leases_.find(ended.lease);
  if (it == leases_.end() || it->second.dtu != ended.dtu) return;
  auto client = it->second.client.lock();
  leases_.erase(it);
  log_.info("", "lease_ended", {{"lease", ended.lease}, {"dtu", ended.dtu}, {"reason", ended.reason}});
  if (client) client->notify(common::to_frame(ended));
}

}  // namespace dtu::devmgr
