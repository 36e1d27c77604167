#pragma once
// LeaseBroker: the manager's part in allocation on one server (DESIGN.md §5). It applies the
// policy to a local service's allocate, forwards allocate / renew / release to the DTU that has
// the unit (the DTU has the final word), queues services that chose to wait for a held unit and
// retries them in order when the unit frees, remembers which client holds which lease, tells the
// holder when its lease ends, and releases a client's leases when its connection closes (a dead
// service holds nothing) unless an administrator asked to keep them.
//
// State tokens (common/state_token.hpp): with the group key, each grant carries a signed token of
// the lease's manager-side context, to the DTU (kept with the lease) and to the service. When a
// DTU connects here and reports leases this manager does not know (it re-homed, or this manager
// restarted), adopt() restores their holders from the tokens, so the holder keeps renewing and is
// told when the lease ends. The DTU has the final word on its leases: nothing here shortens or
// releases a lease because its token is missing or bad. Every operation sent to a DTU carries the
// fence (the claim stamp of its current link, DtuSession::claim()).
//
// Access: only the holder that obtained a lease, another holder of the same uid (a service
// that reconnected), or an administrator may renew or release it. Everything here concerns DTUs
// connected to this manager; a holder is a local client (ClientSession) or a service of a peer
// manager (GroupBroker's remote holder), under the same policy, limits, waits and access rules.
//
// Runs on the manager's io_context thread.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/group_messages.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/peer_auth.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/common/state_token.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/metrics.hpp"
#include "dtu/devmgr/policy.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace dtu::devmgr {

class DtuSession;

// Who holds (or asks for) a lease: a local client or a peer manager's service. The uid is the
// kernel's (SO_PEERCRED), seen by this manager or by the peer that forwarded the request.
class LeaseHolder {
 public:
  virtual ~LeaseHolder() = default;
  virtual unsigned uid() const = 0;
  virtual unsigned gid() const = 0;
  virtual unsigned pid() const = 0;
  // How DTUs and logs name the holder: "<program>[<pid>]@<manager>".
  virtual std::string holder_name() const = 0;
  // The program name it declared (for logs and the policy's `service` field, never for access).
  virtual std::string client_name() const = 0;
  // Sends an event (lease_ended) to the holder.
  virtual void notify(common::Frame frame) = 0;
  // The id of the manager the holder's service is connected to; empty: this manager.
  virtual std::string origin() const { return {}; }
};

// How long the manager waits for a DTU's answer to a lease operation.
inline constexpr common::Duration kLeaseRequestTimeout = std::chrono::seconds(10);
// The longest a service may wait for a held unit in one allocate.
inline constexpr std::uint32_t kMaxAllocateWaitMs = 24 * 60 * 60 * 1000;

class LeaseBroker {
 public:
  using DtuLookup = std::function<std::shared_ptr<DtuSession>(const std::string& dtu)>;
  // The holder for a service of peer manager `origin` (GroupBroker's remote holder).
  using RemoteHolders =
      std::function<std::shared_ptr<LeaseHolder>(const std::string& origin, const common::OnBehalf& who)>;
  // The local clients connected right now (DeviceManager's open ClientSessions).
  using LocalHolders = std::function<std::vector<std::shared_ptr<LeaseHolder>>()>;
  template <typename T>
  using Done = std::function<void(common::Result<T>)>;

  struct Context {
    std::string manager_id;
    asio::any_io_executor executor;
    const common::Clock* clock = nullptr;
    DtuLookup lookup;
    const DeviceList* devices = nullptr;
    const SessionTable* sessions = nullptr;
    std::function<const Policy&()> policy;
  };

  LeaseBroker(Context context, common::Logger log);
  ~LeaseBroker();
  LeaseBroker(const LeaseBroker&) = delete;
  LeaseBroker& operator=(const LeaseBroker&) = delete;

  // The group keys that sign and verify state tokens; nullopt (the default, a standalone
  // manager): no token is issued and every reported one is rejected.
  void set_group_keys(std::optional<common::GroupKeys> keys);
  // The group's universal time in µs (tokens' issued_us); default: the clock's wall time.
  void set_universal_time(std::function<std::int64_t()> now_us);
  // How adopt() gets the holder of a lease whose token names a peer as origin (set by
  // GroupBroker); unset: such leases wait for a resume like an unknown holder's.
  void set_remote_holders(RemoteHolders make);
  // The local clients connected to this manager right now (past their hello, not closing).
  // adopt() binds a lease whose token names this manager as origin to the one of them it names
  // (uid, and pid and program when the token has them); unset: such leases wait for the
  // client's renew or resume.
  void set_local_holders(LocalHolders list);
  // Where allocations (granted, refused by error, latency) and ended leases are counted; null
  // (the default): nowhere. REQUIRES: outlives the broker
  void set_metrics(Metrics* metrics) { metrics_ = metrics; }

  // Asks the DTU for the unit on behalf of `client`, after the policy allowed it. The grant
  // carries the token and the in-band endpoint. Errors: Errc::not_found (DTU not connected here,
  // no such device or unit), Errc::denied (policy, per-user limit, keep without being an
  // administrator), Errc::refused (held: the reason names the holder; after wait_ms when the
  // request waited), Errc::unavailable, Errc::timeout.
  void allocate(const std::shared_ptr<LeaseHolder>& client, common::AllocateMsg request,
                Done<common::LeaseGrantedMsg> done);
  // Errc::not_found: no such lease here; Errc::denied: the lease belongs to another uid.
  void renew(const std::shared_ptr<LeaseHolder>& client, common::RenewMsg request,
             Done<common::LeaseGrantedMsg> done);
  void release(const std::shared_ptr<LeaseHolder>& client, common::ReleaseMsg request, Done<void> done);
  // A client takes over a lease it held before a reconnect; the DTU checks the token.
  void resume(const std::shared_ptr<LeaseHolder>& client, common::ResumeLeaseMsg request,
              Done<common::LeaseGrantedMsg> done);

  // The holder went away (a local client's connection closed): drop its waits and release every
  // lease it holds (but kept ones). A DTU that is not connected cannot be told; its lease then
  // ends by expiry on the DTU.
  void holder_closed(const LeaseHolder* holder);
  // A lease of a DTU connected here whose holder, a client of this manager, just closed — but
  // which adopt() bound to nobody (the client closed before the DTU re-homed here, or several
  // clients matched its token): released at the DTU as the client's close would have, unless
  // kept or held by a client now. Logged lease_holder_gone. GroupBroker calls it for the remote
  // leases of a closing client whose DTU has moved here.
  void release_unbound(const std::string& dtu, const std::string& lease);
  // A DTU reports that a lease ended: forget it and tell the holder.
  void lease_ended(const common::LeaseEndedMsg& ended);
  // A device record changed: a unit that became free hands itself to its first waiter.
  void device_updated(const common::DeviceRecord& record);
  // The DTU's link ended: its leases' holders are told (reason dtu_lost) and its waits fail.
  void dtu_lost(const std::string& dtu);
  // The DTU connected here and reported the leases it holds (its snapshot): each one not known
  // here is adopted from its state token, which restores the holder and the terms; logged
  // lease_adopted. The holder: a peer's service through set_remote_holders; a service of this
  // manager, the one connected client (set_local_holders) of the token's uid, pid and program,
  // bound at once (lease_bound) as if it had obtained the lease here — several such clients bind
  // none (lease_bind_ambiguous) — and otherwise the first of that uid to renew or resume it. A
  // missing or invalid token is logged state_token_rejected and the lease waits, unowned, for a
  // resume_lease (the DTU checks its lease token); renew and release of it answer
  // Errc::not_found meanwhile. Never shortens or releases a lease.
  void adopt(const std::string& dtu, const std::vector<common::LeaseReport>& leases);

  std::vector<common::LeaseInfo> list() const;
  // Whether any lease here is held by `holder`.
  bool holds(const LeaseHolder* holder) const;
  std::size_t size() const { return leases_.size(); }
  std::size_t waiting() const;

 private:
  struct Held {
    std::string dtu;
    std::string device;
    std::uint32_t unit = 0;
    std::string holder;
    std::weak_ptr<LeaseHolder> client;
    const LeaseHolder* client_key = nullptr;  // identity only, never dereferenced
    unsigned uid = 0;
    bool keep = false;
    std::uint32_t length_ms = 0;
    std::uint32_t max_lease_ms = 0;  // the policy's cap at allocation, applied to renewals; 0: none
    common::MonoTime expires{};
    std::string rule;      // the policy rule that allowed it ("" when adopted without a token)
    bool unowned = false;  // adopted without a valid token: only resume_lease takes it
    bool releasing = false;  // its holder closed and the release went to the DTU
  };
  using UnitKey = std::tuple<std::string, std::string, std::uint32_t>;  // (dtu, device, unit)
  struct Waiter;

  // The lease, if `client` may act on it; the error otherwise.
  common::Result<Held> check_holder(const LeaseHolder& client, const std::string& dtu, const std::string& lease) const;
  // Sends the lease request for an allocation the policy allowed; `done` gets the DTU's answer.
  void ask_dtu(const std::shared_ptr<LeaseHolder>& client, const common::AllocateMsg& request,
               const PolicyVerdict& verdict, Done<common::LeaseGrantedMsg> done);
  void enqueue(const std::shared_ptr<LeaseHolder>& client, const common::AllocateMsg& request,
               const PolicyVerdict& verdict, common::Error refusal, Done<common::LeaseGrantedMsg> done);
  // Offers the unit to its first waiter, if it has one and none is being tried.
  void kick(const UnitKey& unit);
  // Whether `waiter` still waits for `unit` (not answered yet).
  bool is_waiting(const UnitKey& unit, const std::shared_ptr<Waiter>& waiter) const;
  void finish_waiter(const UnitKey& unit, const std::shared_ptr<Waiter>& waiter,
                     common::Result<common::LeaseGrantedMsg> result);
  void send_release(const std::string& dtu, const std::string& lease, Done<void> done);
  void remember(const common::LeaseGrantedMsg& granted, const std::shared_ptr<LeaseHolder>& client,
                std::uint32_t length_ms, std::uint32_t max_lease_ms, bool keep, const std::string& rule);
  // A signed state token for `client`'s lease, or nullopt without group keys (or, logged, when
  // it cannot be signed).
  std::optional<std::string> issue_token(const LeaseHolder& client, const std::string& dtu,
                                         const std::string& device, std::uint32_t unit,
                                         const std::string& lease, const std::string& rule,
                                         std::uint32_t length_ms, std::uint32_t max_lease_ms,
                                         bool keep) const;
  // Makes `client` the holder of `held`: its renewals pass, it hears lease_ended, and the lease
  // is released when it closes (unless kept).
  static void bind(Held& held, const std::shared_ptr<LeaseHolder>& client);
  // The connected local client a token of this manager names (its uid, and its pid and program
  // when the token has them); nullptr when none is connected or, logged, when several are.
  std::shared_ptr<LeaseHolder> connected_holder(const common::StateToken& token, const std::string& dtu,
                                                const std::string& lease) const;
  // The fence for operations on `dtu`'s current link.
  static std::optional<common::Stamp> fence_of(const DtuSession& dtu);
  void adopt_one(const std::string& dtu, const common::LeaseReport& report);

  // A uid's user name and groups for the policy, from NSS (getpwuid_r, getgrouplist), kept for
  // kUserCacheTtl: every lookup re-reads nsswitch.conf, /etc/passwd and /etc/group, which cost an
  // allocation more than the rest of the manager's work (measured, docs/performance.md). A change
  // of someone's groups reaches the policy within that time.
  struct UserInfo {
    std::string user;
    std::vector<std::string> groups;
    common::MonoTime fetched{};
  };
  static constexpr common::Duration kUserCacheTtl = std::chrono::seconds(30);
  const UserInfo& user_info(unsigned uid);

  Context context_;
  common::Logger log_;
  std::map<unsigned, UserInfo> users_;  // by uid; at most one entry per uid that asked
  std::optional<common::GroupKeys> keys_;
  std::function<std::int64_t()> universal_us_;
  RemoteHolders remote_holders_;
  LocalHolders local_holders_;
  Metrics* metrics_ = nullptr;
  std::map<std::string, Held> leases_;  // by lease id
  std::map<UnitKey, std::deque<std::shared_ptr<Waiter>>> waiting_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

// Whether a local client may do what only administrators may: root, or the uid devmgr runs as.
bool is_admin(unsigned uid);

}  // namespace dtu::devmgr
