#pragma once
// LeaseBroker: the manager's part in allocation on one server (DESIGN.md §5, steps 1, 4 and 5):
// it forwards a local service's allocate / renew / release to the DTU that has the unit,
// remembers which client holds which lease, tells the holder when its lease ends, and releases a
// client's leases when its connection closes (a dead service holds nothing). The DTU has the
// final word on every lease; this is routing and bookkeeping.
//
// Only the client that obtained a lease, or another connection of the same uid (a service that
// reconnected), may renew or release it. Policy, finders and group-wide forwarding come with the
// brokering and mesh issues.
//
// Runs on the manager's io_context thread.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "dtu/common/clock.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

class ClientSession;
class DtuSession;

// How long the manager waits for a DTU's answer to a lease operation.
inline constexpr common::Duration kLeaseRequestTimeout = std::chrono::seconds(10);

class LeaseBroker {
 public:
  using DtuLookup = std::function<std::shared_ptr<DtuSession>(const std::string& dtu)>;
  template <typename T>
  using Done = std::function<void(common::Result<T>)>;

  LeaseBroker(std::string manager_id, DtuLookup lookup, common::Logger log)
      : manager_id_(std::move(manager_id)), lookup_(std::move(lookup)), log_(std::move(log)) {}

  // Asks the DTU for the unit on behalf of `client`. The grant carries the token and the
  // in-band endpoint. Errors: Errc::not_found (DTU not connected here, no such device or unit),
  // Errc::refused (held: the reason names the holder), Errc::unavailable, Errc::timeout.
  void allocate(const std::shared_ptr<ClientSession>& client, common::AllocateMsg request,
                Done<common::LeaseGrantedMsg> done);
  // Errc::not_found: no such lease here; Errc::refused: the lease belongs to another uid.
  void renew(const std::shared_ptr<ClientSession>& client, common::RenewMsg request,
             Done<common::LeaseGrantedMsg> done);
  void release(const std::shared_ptr<ClientSession>& client, common::ReleaseMsg request, Done<void> done);

  // The client's connection closed: release every lease it holds. A DTU that is not connected
  // cannot be told; its lease then ends by expiry on the DTU.
  void client_closed(const ClientSession* client);
  // A DTU reports that a lease ended: forget it and tell the holder.
  void lease_ended(const common::LeaseEndedMsg& ended);

  std::size_t size() const { return leases_.size(); }

 private:
  struct Held {
    std::string dtu;
    std::string device;
    std::uint32_t unit = 0;
    std::weak_ptr<ClientSession> client;
    const ClientSession* client_key = nullptr;  // identity only, never dereferenced
    unsigned uid = 0;
  };

  // The lease, if `client` may act on it; the error otherwise.
  common::Result<Held> check_holder(const ClientSession& client, const std::string& dtu, const std::string& lease) const;
  void send_release(const std::string& dtu, const std::string& lease, Done<void> done);

  std::string manager_id_;
  DtuLookup lookup_;
  common::Logger log_;
  std::map<std::string, Held> leases_;  // by lease id
};

}  // namespace dtu::devmgr
