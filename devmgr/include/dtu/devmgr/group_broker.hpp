#pragma once
// GroupBroker: this manager's part in the group (DESIGN.md §4–§5, docs/group.md). It sits between
// the local clients and the local FinderRegistry / LeaseBroker and makes the group look like one
// manager:
//
//  - Finders. Each distinct finder (common::Finder equality) of scope interconnect or dtu — and
//    session, forwarded as dtu = the session's DTU and re-sent when the session moves — is
//    registered once at every live peer under a distinct finder id; bus finders stay local. The
//    answers (finder_matched / changed / gone / synced) are cached per (peer, distinct finder,
//    device) and fanned out to every local client of that finder with the client's own id. A
//    client's finder_synced goes out once the local registry and every peer that was live when it
//    registered have synced.
//  - Forwarded finders of peers are held in the local FinderRegistry (client key: the PeerLink),
//    matched against this manager's own devices only, until that link goes down.
//  - Ownership: which manager (incarnation, stamp) serves each DTU, from dtu_active / dtu_lost
//    here and peer_ownership from peers. Claims are ordered by the DTU's stamp (boot_epoch, seq)
//    only, never by when they arrive: the newer claim wins. A peer's newer claim on a DTU
//    connected here means the DTU has left us: Context::ownership_lost (logged ownership_lost).
//    A peer's older claim on a DTU connected here is logged stale_claim_ignored and ours is
//    announced again. News of an older incarnation is ignored.
//  - Re-homing: a match that is gone with reason dtu_lost (here or at a peer) stays, orphaned
//    (finder_changed with record.orphaned), for the grace window; the same (dtu, device) matched
//    again from any manager within it is a finder_changed (the new owner), never gone then
//    matched; after it, finder_gone dtu_lost. Other reasons (detached, …) are gone at once.
//  - Peer death: a dead peer's matches become orphaned (finder_changed with record.orphaned) and
//    are gone (owner_lost) after the grace window unless the peer comes back and sends them again;
//    at its finder_synced the ones it did not send again are gone (resync).
//  - Allocation: allocate / renew / release / resume for a DTU connected here go to the
//    LeaseBroker; for a DTU a live peer owns they are forwarded with the service's identity
//    (OnBehalf); the owner runs its LeaseBroker for a remote holder under the same policy.
//    lease_ended comes back to the origin's client. A client that closes releases its remote
//    leases (kept ones excepted); a peer link that goes down releases nothing.
//
// An illegal message on a peer link (wrong type, a notify where a request is due, undecodable)
// is logged as peer_protocol_error and closes that link only.
// Runs on the manager's io_context thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <unordered_map>
#include <vector>

#include <asio.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/finder.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/group_messages.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/finder_registry.hpp"
#include "dtu/devmgr/lease_broker.hpp"
#include "dtu/devmgr/peer_link.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace dtu::devmgr {

// How long a peer has to answer a finder registration or a status request.
inline constexpr common::Duration kPeerRequestTimeout = std::chrono::seconds(10);
// How long list_group_devices waits for each peer: a silent peer is skipped, not waited for.
inline constexpr common::Duration kPeerListTimeout = std::chrono::seconds(1);
// Added to a forwarded lease operation's timeout for the hop between managers.
inline constexpr common::Duration kPeerHopMargin = std::chrono::seconds(2);

class GroupBroker {
 public:
  using ClientKey = FinderRegistry::ClientKey;
  template <typename T>
  using Done = LeaseBroker::Done<T>;

  struct Context {
    std::string manager_id;
    std::uint64_t incarnation = 0;
    asio::any_io_executor executor;
    const common::Clock* clock = nullptr;
    const DeviceList* devices = nullptr;
    FinderRegistry* finders = nullptr;
    LeaseBroker* leases = nullptr;
    const SessionTable* sessions = nullptr;
    // How long a dead peer's matches stay (orphaned) before they are gone.
    std::chrono::milliseconds grace{10000};
    // Whether a DTU is connected to this manager now.
    std::function<bool(const std::string& dtu)> dtu_is_local;
    // A peer announced a newer claim (DTU stamp) for a DTU connected here: the DTU went to
    // `new_owner`; the manager closes its session and drops its records.
    std::function<void(const std::string& dtu, const std::string& new_owner)> ownership_lost;
  };

  struct PeerCounts {
    std::uint32_t finders_held = 0;  // forwarded finders of that peer held here (its current link)
    std::uint32_t finders_sent = 0;  // distinct finders forwarded to it (0 while it is down)
    std::optional<std::uint32_t> dtus;  // DTUs it owns; nullopt before its first announcement
  };

  GroupBroker(Context context, common::Logger log);
  ~GroupBroker();
  GroupBroker(const GroupBroker&) = delete;
  GroupBroker& operator=(const GroupBroker&) = delete;

  // --- The mesh (PeerMesh hooks) ---
  // A link to a peer is authenticated: it gets our ownership (full) and every distinct finder. A
  // newer link to the same peer replaces the older one (as if the older one went down first).
  void peer_up(const std::shared_ptr<PeerLink>& link);
  // The link ended: the forwarded finders it held are dropped, its matches orphaned (if it was the
  // peer's current link), leases held for its services stay.
  void peer_down(const std::shared_ptr<PeerLink>& link, const common::Error& reason);
  // Every frame the peer sent on filament 0 (requests and notifies; replies are the link's).
  void peer_frame(const std::shared_ptr<PeerLink>& link, common::Frame frame);

  // --- The manager ---
  // A DTU claimed this manager (its first device_snapshot here) / its link ended. `stamp` (the
  // claim) orders this claim against other managers' claims on the same DTU; when a peer has
  // already announced a newer one, the DTU is lost here at once (ownership_lost, after the call).
  void dtu_active(const std::string& dtu, const common::Stamp& stamp);
  void dtu_lost(const std::string& dtu);
  // A session moved: its forwarded session finders follow it (the local FinderRegistry is told
  // by the manager, not from here).
  void session_moved(const std::string& session, const SessionTable::Move& move);

  // --- Local clients (ClientSession) ---
  // As FinderRegistry::add, group-wide: Errc::invalid_argument when the client already has a
  // finder with this id.
  common::Result<void> add_finder(ClientKey client, const FinderRegistry::Owner& owner,
                                  const FinderRegistry::Sink& sink, std::uint64_t finder_id, common::Finder finder);
  bool has_finder(ClientKey client, std::uint64_t finder_id) const;
  // Errc::not_found when the client has no such finder. No events follow.
  common::Result<void> remove_finder(ClientKey client, std::uint64_t finder_id);
  void remove_client(ClientKey client);

  // As LeaseBroker's, for a DTU anywhere in the group. Errors besides LeaseBroker's:
  // allocate: Errc::not_found when no manager of the group has the DTU; all:
  // Errc::unavailable when its owner is not reachable now. renew / release / resume for a DTU no
  // manager claims go to the LeaseBroker (the DTU may come back here: unavailable, retry).
  void allocate(const std::shared_ptr<LeaseHolder>& holder, common::AllocateMsg request,
                Done<common::LeaseGrantedMsg> done);
  void renew(const std::shared_ptr<LeaseHolder>& holder, common::RenewMsg request, Done<common::LeaseGrantedMsg> done);
  void release(const std::shared_ptr<LeaseHolder>& holder, common::ReleaseMsg request, Done<void> done);
  void resume(const std::shared_ptr<LeaseHolder>& holder, common::ResumeLeaseMsg request,
              Done<common::LeaseGrantedMsg> done);
  // A local holder went away: its local leases and its remote ones (kept ones excepted) are
  // released.
  void holder_closed(const LeaseHolder* holder);

  // --- Listings ---
  // The local clients' finders with their local and remote matches (MatchRef.owner, .orphaned).
  std::vector<common::FinderInfo> list_finders() const;
  // This manager's devices and every live peer's (each answers for its own DTUs; a peer silent
  // for kPeerListTimeout is skipped), sorted by (dtu, device). `dtu` narrows to one DTU.
  void list_group_devices(std::optional<std::string> dtu, std::function<void(std::vector<common::DeviceRecord>)> done);
  PeerCounts counts(const std::string& peer) const;
  // How many devices the peer has (peer_status), or nullopt when it does not answer in time.
  void peer_devices(const std::shared_ptr<PeerLink>& link, std::function<void(std::optional<std::uint32_t>)> done);
  // The manager that serves `dtu`, as far as this manager knows.
  std::optional<std::string> owner_of(const std::string& dtu) const;
  // Every DTU of the group with the manager that serves it, as far as this manager knows.
  std::map<std::string, std::string> owners() const;
  // The claim stamp of that manager on `dtu`, as far as this manager knows.
  std::optional<common::Stamp> claim_of(const std::string& dtu) const;
  // Forwarded finders held here for every peer together.
  std::uint32_t finders_held_total() const;
  // Leases this manager's clients hold on DTUs of other managers.
  std::size_t remote_leases() const { return remote_leases_.size(); }
  // Finders this manager's clients registered (each counted once, wherever it matches).
  std::size_t local_finders() const { return clients_.size(); }
  // finder_matched events sent to this manager's clients since the start (metrics).
  std::uint64_t matches_sent() const { return matches_sent_; }

 private:
  class RemoteHolder;

  // A match as one local client was told it, and where it came from.
  struct Shown {
    std::string source;  // "" for the local registry, else the peer id
    std::vector<std::uint32_t> units;
    bool orphaned = false;
    // As last shown; shared with the other finders the same device event reached (encoded_).
    std::shared_ptr<const common::DeviceRecord> record;
    bool lost = false;            // its DTU was lost: gone dtu_lost unless it matches again in time
  };
  // One finder of one local client.
  struct ClientEntry {
    std::uint64_t id = 0;  // key in clients_
    ClientKey client = nullptr;
    std::uint64_t finder_id = 0;
    FinderRegistry::Owner owner;
    FinderRegistry::Sink sink;
    common::Finder finder;
    std::optional<std::uint64_t> distinct;  // none: bus scope, never forwarded
    std::unordered_map<DeviceKey, Shown, DeviceKeyHash> shown;
    bool local_synced = false;
    std::set<std::string> waiting;  // peers whose finder_synced is still due
    bool synced_sent = false;
  };
  struct RemoteMatch {
    common::DeviceRecord record;
    std::vector<std::uint32_t> units;
  };
  // One distinct finder of the local clients and what peers matched for it.
  struct Distinct {
    common::Finder finder;               // as the clients registered it
    std::optional<common::Finder> wire;  // as forwarded; none: a session finder without a DTU
    std::uint64_t wire_id = 0;           // its distinct finder id on the peer links
    std::set<std::uint64_t> clients;     // ClientEntry ids
    std::set<std::string> synced;        // peers that synced wire_id
    std::map<std::string, std::map<DeviceKey, RemoteMatch>> remote;  // by peer id
  };
  struct Peer {
    std::shared_ptr<PeerLink> link;  // the current link; null while down
    std::uint64_t incarnation = 0;   // the newest seen
    bool announced = false;          // sent an ownership announcement
    std::unique_ptr<common::DeadlineGuard> grace;
  };
  // Who serves a DTU.
  struct Claim {
    std::string manager;
    std::uint64_t incarnation = 0;
    common::Stamp stamp;
    std::uint32_t devices = 0;
  };
  // A lease a local client holds on a peer's DTU.
  struct RemoteLease {
    std::string peer;
    std::string dtu;
    std::weak_ptr<LeaseHolder> holder;
    const LeaseHolder* holder_key = nullptr;  // identity only
    common::OnBehalf on_behalf;
    bool keep = false;
  };

  // Finders (origin side).
  void forward(Distinct& distinct, const std::shared_ptr<PeerLink>& link);
  void unforward(Distinct& distinct);
  void on_local_event(std::uint64_t entry, const FinderRegistry::Event& event);
  void show_match(ClientEntry& entry, const std::string& source, const common::DeviceRecord& record,
                  const std::vector<std::uint32_t>& units);
  void show_gone(ClientEntry& entry, const std::string& source, const std::string& dtu, const std::string& device,
                 const std::string& reason);
  // The grace window of a match whose DTU was lost ran out.
  void lost_over(std::uint64_t entry, const DeviceKey& key);
  void maybe_synced(ClientEntry& entry);
  void on_remote_match(const std::string& peer, std::uint64_t wire_id, common::DeviceRecord record,
                       std::vector<std::uint32_t> units);
  void on_remote_gone(const std::string& peer, const common::FinderGoneMsg& gone);
  void on_remote_synced(const std::string& peer, std::uint64_t wire_id);
  void orphan(const std::string& peer);
  void grace_over(const std::string& peer);
  void drop_remote(Distinct& distinct, const std::string& peer, bool only_orphaned, const std::string& reason);
  // Finders (owner side).
  void hold_finder(const std::shared_ptr<PeerLink>& link, const common::Frame& frame);
  void drop_held(const PeerLink* link);
  // Ownership.
  void on_ownership(const std::shared_ptr<PeerLink>& link, const common::PeerOwnershipMsg& msg);
  // A newer claim of `peer` on a DTU connected here: tell the manager (after this call).
  void lose(const std::string& dtu, const std::string& peer);
  void announce(const std::string& dtu, const Claim& claim);
  void broadcast(const common::Frame& frame);
  common::PeerOwnershipMsg own_claims(bool full) const;
  // Allocation (origin side): the owner's live link, or the error a client gets.
  common::Result<std::shared_ptr<PeerLink>> route(const std::string& dtu) const;
  common::OnBehalf on_behalf(const LeaseHolder& holder) const;
  void forward_lease_op(const std::shared_ptr<PeerLink>& link, common::Frame frame, common::Duration timeout,
                        const std::shared_ptr<LeaseHolder>& holder, bool remember, bool keep,
                        Done<common::LeaseGrantedMsg> done);
  void on_lease_ended(const std::string& peer, const common::LeaseEndedMsg& ended);
  // Releases a lease at its owner for a holder that is gone (logged when it cannot).
  void send_to_peer_release(const std::string& peer, const common::OnBehalf& who, const std::string& dtu,
                            const std::string& lease);
  // Allocation (owner side).
  void serve_lease_op(const std::shared_ptr<PeerLink>& link, const common::Frame& frame);
  std::shared_ptr<RemoteHolder> remote_holder(const std::string& peer, const common::OnBehalf& who);
  void prune_holders();
  void send_to_peer(const std::string& peer, common::Frame frame);

  void protocol_error(const std::shared_ptr<PeerLink>& link, const std::string& reason);
  // The peer's current link when `link` is it.
  bool is_current(const std::shared_ptr<PeerLink>& link) const;

  Context context_;
  common::Logger log_;
  std::map<std::string, Peer> peers_;            // by peer id
  std::map<std::uint64_t, ClientEntry> clients_;  // by registration order
  std::map<std::pair<ClientKey, std::uint64_t>, std::uint64_t> client_index_;
  std::map<std::uint64_t, Distinct> distinct_;   // by local id
  std::map<std::uint64_t, std::uint64_t> by_wire_;  // wire id -> distinct
  std::map<const PeerLink*, std::set<std::uint64_t>> held_;  // forwarded finders held, by link
  std::map<std::string, Claim> ownership_;       // by DTU
  std::map<std::string, RemoteLease> remote_leases_;  // by lease id (origin side)
  std::map<std::pair<std::string, std::string>, std::shared_ptr<RemoteHolder>> holders_;  // (peer, holder)
  std::map<std::pair<std::uint64_t, DeviceKey>, std::unique_ptr<common::DeadlineGuard>>
      lost_;  // (entry, device)
  std::uint64_t next_entry_ = 1;
  std::uint64_t next_distinct_ = 1;
  std::uint64_t next_wire_ = 1;
  std::uint64_t matches_sent_ = 0;
  // The device record of the last finder event and its JSON. One device event reaches many
  // finders (7 at the matcher bench's mix); each client's frame reuses the encoding, and each
  // Shown the record (encoding per finder was most of an event's cost, docs/performance.md).
  common::LastEncodedDevice encoded_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace dtu::devmgr
