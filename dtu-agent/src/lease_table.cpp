#include "dtu/agent/lease_table.hpp"

#include <algorithm>

namespace dtu::agent {

using common::Errc;
using common::Error;

namespace {

constexpr std::size_t kLeaseIdBytes = 8;  // 16 hex digits: unguessable enough for an identity

std::string millis(common::Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

common::Result<void> check_length(common::Duration length) {
  if (length < kMinLeaseLength || length > kMaxLeaseLength) {
    return Error(Errc::invalid_argument, "lease length " + millis(length) + " is outside " +
                                             millis(kMinLeaseLength) + " .. " + millis(kMaxLeaseLength));
  }
  return {};
}

}  // namespace

const char* lease_end_name(LeaseEnd why) {
  switch (why) {
    case LeaseEnd::released: return "released";
    case LeaseEnd::expired: return "expired";
    case LeaseEnd::device_gone: return "device_gone";
    case LeaseEnd::agent_stopping: return "agent_stopping";
  }
  return "unknown";
}

common::Result<Lease> LeaseTable::grant(std::string device, std::uint32_t unit, std::vector<std::uint8_t> interfaces,
                                        std::string holder, common::Duration length,
                                        std::optional<std::uint32_t> uid, std::optional<std::string> state_token) {
  if (auto ok = check_length(length); !ok.ok()) return ok.error();
  if (const Lease* held = holding(device, unit)) {
    return Error(Errc::refused, "unit " + std::to_string(unit) + " of " + device + " is held by " + held->holder +
                                    " (lease " + held->id + ")");
  }
  Lease lease;
  do {
    lease.id = common::to_hex(common::random_bytes(kLeaseIdBytes));
  } while (leases_.contains(lease.id) || ended(lease.id) != nullptr);
  lease.device = std::move(device);
  lease.unit = unit;
  lease.interfaces = std::move(interfaces);
  lease.holder = std::move(holder);
  lease.token = common::random_bytes(kLeaseTokenBytes);
  lease.length = length;
  lease.expires = clock_.now() + length;
  lease.uid = uid;
  lease.state_token = std::move(state_token);
  leases_.emplace(lease.id, lease);
  return lease;
}

common::Result<Lease> LeaseTable::renew(std::string_view id, common::Duration length) {
  if (auto ok = check_length(length); !ok.ok()) return ok.error();
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    if (const EndedLease* gone = ended(id)) {
      return Error(Errc::not_found, "lease " + std::string(id) + " has ended (" + lease_end_name(gone->why) + ")");
    }
    return Error(Errc::not_found, "no lease " + std::string(id));
  }
  it->second.length = length;
  it->second.expires = std::max(it->second.expires, clock_.now() + length);
  return it->second;
}

bool LeaseTable::set_state_token(std::string_view id, std::string state_token) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return false;
  it->second.state_token = std::move(state_token);
  return true;
}

std::optional<Lease> LeaseTable::end(std::string_view id, LeaseEnd why) {
  auto it = leases_.find(id);
  if (it == leases_.end()) return std::nullopt;
  Lease lease = std::move(it->second);
  leases_.erase(it);
  remember(lease, why);
  return lease;
}

std::vector<Lease> LeaseTable::end_device(const std::string& device, LeaseEnd why) {
  std::vector<Lease> out;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.device != device) {
      ++it;
      continue;
    }
    remember(it->second, why);
    out.push_back(std::move(it->second));
    it = leases_.erase(it);
  }
  return out;
}

std::vector<Lease> LeaseTable::end_all(LeaseEnd why) {
  std::vector<Lease> out;
  for (auto& [id, lease] : leases_) {
    remember(lease, why);
    out.push_back(std::move(lease));
  }
  leases_.clear();
  return out;
}

std::vector<Lease> LeaseTable::expire() {
  const common::MonoTime now = clock_.now();
  std::vector<Lease> out;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.expires > now) {
      ++it;
      continue;
    }
    remember(it->second, LeaseEnd::expired);
    out.push_back(std::move(it->second));
    it = leases_.erase(it);
  }
  return out;
}

const Lease* LeaseTable::find(std::string_view id) const {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

const Lease* LeaseTable::holding(const std::string& device, std::uint32_t unit) const {
  for (const auto& [id, lease] : leases_) {
    if (lease.device == device && lease.unit == unit) return &lease;
  }
  return nullptr;
}

std::vector<const Lease*> LeaseTable::on_device(const std::string& device) const {
  std::vector<const Lease*> out;
  for (const auto& [id, lease] : leases_) {
    if (lease.device == device) out.push_back(&lease);
  }
  return out;
}

std::vector<const Lease*> LeaseTable::all() const {
  std::vector<const Lease*> out;
  for (const auto& [id, lease] : leases_) out.push_back(&lease);
  return out;
}

const EndedLease* LeaseTable::ended(std::string_view id) const {
  const common::MonoTime now = clock_.now();
  for (const auto& gone : ended_) {
    if (gone.id == id && now - gone.at <= kEndedMemory) return &gone;
  }
  return nullptr;
}

common::MonoTime LeaseTable::next_expiry() const {
  common::MonoTime next = common::kNever;
  for (const auto& [id, lease] : leases_) next = std::min(next, lease.expires);
  return next;
}

void LeaseTable::remember(const Lease& lease, LeaseEnd why) {
  const common::MonoTime now = clock_.now();
  while (!ended_.empty() && (ended_.size() >= kMaxEndedRemembered || now - ended_.front().at > kEndedMemory)) {
    ended_.pop_front();
  }
  ended_.push_back(EndedLease{lease.id, lease.device, lease.unit, lease.token, why, now});
}

}  // namespace dtu::agent
