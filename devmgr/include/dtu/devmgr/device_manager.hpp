#pragma once
// DeviceManager: one devmgr. Accepts DTUs over TLS (PSK derived per DTU from the site key,
// DESIGN.md §2) and local clients over the Unix socket, keeps the device list, the sessions, the
// finders (FinderRegistry), the leases (LeaseBroker) and the policy, and owns every live
// session; stop() ends them all (SIGTERM), reload_policy() reads the policy file again (SIGHUP).
//
// Universal clock: one HybridLogicalClock whose offset is median_offset() of the live peer
// links' estimates, recomputed every second and whenever a peer link comes or goes; it observes
// every DTU boot epoch it hears of (hellos, claims, peers' ownership news), so a DTU that took
// its boot epoch from any manager's welcome is ordered before anything stamped here later.
// A DTU's claim (DtuSession::claim()) goes to the GroupBroker when its snapshot arrives; a peer's
// newer claim closes the local session (ownership_lost). Drain: every DTU is told to move, new
// ones are refused until undrain().
// Runs on one io_context thread; every method must be called on it.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/hlc.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/result.hpp"
#include "dtu/devmgr/client_session.hpp"
#include "dtu/devmgr/connection_limiter.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/dtu_session.hpp"
#include "dtu/devmgr/finder_registry.hpp"
#include "dtu/devmgr/group_broker.hpp"
#include "dtu/devmgr/group_commands.hpp"
#include "dtu/devmgr/group_config.hpp"
#include "dtu/devmgr/peer_mesh.hpp"
#include "dtu/devmgr/lease_broker.hpp"
#include "dtu/devmgr/manager_options.hpp"
#include "dtu/devmgr/metrics.hpp"
#include "dtu/devmgr/metrics_server.hpp"
#include "dtu/devmgr/policy.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace dtu::devmgr {

// How long drain waits for the DTUs to leave when the request names no wait.
inline constexpr std::chrono::milliseconds kDefaultDrainWait{30000};
// How often the universal clock's offset follows the peer links' estimates.
inline constexpr std::chrono::milliseconds kUniversalOffsetPeriod{1000};

// The universal clock's offset: the median of {0} (this manager) and the peers' offsets (their
// clock minus ours); with an even count, the mean of the two middle values. Managers whose
// estimates agree thus settle on the same middle clock: +5 min, 0 and -5 min agree on 0.
common::Duration median_offset(std::vector<common::Duration> peer_offsets);

class DeviceManager {
 public:
  DeviceManager(const asio::any_io_executor& ex, const common::Clock& clock, ManagerOptions options,
                common::SecretKey site_dtu_key);
  ~DeviceManager();
  DeviceManager(const DeviceManager&) = delete;
  DeviceManager& operator=(const DeviceManager&) = delete;

  // Loads the policy file (if configured), binds the DTU listener and the Unix socket and starts
  // accepting.
  common::Result<void> start();
  // Reads the policy file again. On error the policy in force stays, and the error says why
  // (file, line, rule). Without a policy file the built-in policy stays.
  common::Result<common::PolicyInfoMsg> reload_policy();
  // Reads the group list and the group keys again: the mesh dials new peers and drops removed
  // ones (a manager that had no mesh address and has one now starts its mesh). On error the
  // group in force stays and the error says why (group_reload_failed in the log).
  common::Result<common::GroupInfoMsg> reload_group();
  // Every member of the group as this manager sees it, itself first; the peers' device counts
  // are asked for (a peer that does not answer within a second shows none).
  void group_status(std::function<void(common::GroupInfoMsg)> done);
  // The DTUs connected here (state active, or moving once told to leave), sorted by id; with
  // `group` also every other member's DTU from the ownership table, with the devices and units
  // its member reports (list_group_devices: a silent member's DTUs show none).
  void list_dtus(bool group, std::function<void(common::DtuListMsg)> done);
  // Stops accepting and closes every session and peer link. Idempotent.
  void stop();
  // Starts draining (logged drain_started): every active DTU gets dtu_move{"drain"} and every new
  // hello is refused until undrain(). `done` runs once: with drain_status when no DTU is left
  // (logged drain_done), or Errc::timeout "still holds N DTUs" after `wait_ms` (default
  // kDefaultDrainWait), or Errc::closed when undrain() comes first. The manager stays draining.
  void drain(std::optional<std::uint32_t> wait_ms, std::function<void(common::Result<common::DrainStatusMsg>)> done);
  // Takes DTUs again (logged undrained).
  common::DrainStatusMsg undrain();
  bool draining() const { return draining_; }

  // The bound DTU endpoint (the real port when the options asked for port 0).
  common::Endpoint dtu_endpoint() const { return bound_; }
  const DeviceList& devices() const { return devices_; }
  const LeaseBroker& leases() const { return leases_; }
  const FinderRegistry& finders() const { return finders_; }
  // The Prometheus text (docs/metrics.md): the counters, and the gauges read now.
  std::string render_metrics();
  // The bound metrics address (the real port for port 0); nullopt without metrics_listen.
  std::optional<common::Endpoint> metrics_endpoint() const;
  // The group layer: the mesh's hooks (peer_up / peer_down / peer_frame) go here.
  GroupBroker& group() { return group_; }
  const GroupBroker& group() const { return group_; }
  // This start of the manager (orders news about it in the group): microseconds of wall time at
  // construction.
  std::uint64_t incarnation() const { return incarnation_; }
  const SessionTable& sessions() const { return sessions_; }
  const Policy& policy() const { return policy_; }
  std::size_t dtu_count() const { return dtus_.size(); }
  // The group's other members this manager knows of, and how many of them have a live link
  // (both 0 without a mesh).
  struct PeerCount {
    std::size_t up = 0;
    std::size_t known = 0;
  };
  PeerCount peer_count() const;
  // The group's universal clock as this manager keeps it (offset: the median of the live peer
  // links' estimates and zero).
  common::HybridLogicalClock& universal() { return universal_; }
  const common::HybridLogicalClock& universal() const { return universal_; }

 private:
  asio::awaitable<void> accept_dtus();
  asio::awaitable<void> accept_clients();
  asio::awaitable<void> admit_dtu(asio::ip::tcp::socket socket, ConnectionLimiter::Slot slot);
  // Counts a refused connection, and logs it when the limiter says to.
  void refuse_connection(const ConnectionLimiter& limiter, const char* listener, const std::string& peer,
                         const common::Error& reason);
  void on_dtu_active(const std::shared_ptr<DtuSession>& session);
  void on_dtu_closed(const std::shared_ptr<DtuSession>& session, const common::Error& reason);
  DtuSession::Admission admit_dtu_hello(const common::DtuHelloMsg& hello);
  void on_dtu_claim(const std::shared_ptr<DtuSession>& session);
  void on_ownership_lost(const std::string& dtu, const std::string& new_owner);
  // Moves the universal clock forward past a DTU boot epoch heard from `from`.
  void observe_boot_epoch(std::int64_t boot_epoch, const std::string& from);
  // Sets the universal clock's offset from the live peer links' estimates.
  void update_universal_offset();
  void arm_offset_timer();
  void peer_frame(const std::shared_ptr<PeerLink>& link, common::Frame frame);
  // Answers the drain requests waiting for the DTUs to leave once none is left.
  void drain_progress();
  common::Link::Options link_options() const;
  common::Result<void> attach_session(const common::SessionAttachMsg& request);
  common::Result<void> detach_session(const std::string& session);
  common::PolicyInfoMsg policy_info() const;
  // The group list (file, then --peer entries), the keys and this manager's mesh address
  // (peer_listen, else its own entry); no address: no mesh.
  struct GroupSettings {
    std::vector<GroupMember> members;
    common::GroupKeys keys;
    std::optional<common::Endpoint> address;
  };
  common::Result<GroupSettings> load_group() const;
  common::Result<void> start_mesh(const GroupSettings& group);
  // Group commands (device_manager_commands.cpp): builds commands_; runs, refuses and
  // describes the verbs of `devmgrctl group exec` on this manager.
  void make_group_commands();
  void run_group_verb(const std::string& verb, const nlohmann::json& args, GroupCommands::VerbDone done);
  std::optional<std::string> refuse_group_verb(const std::string& verb, const nlohmann::json& args) const;
  // Builds the diag dump from copies of the state taken now: safe to call on any thread.
  std::function<nlohmann::json()> diag_snapshot() const;
  common::Result<nlohmann::json> rotate_group_key();
  // The members without the peers' device counts.
  common::GroupInfoMsg group_info() const;

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  ManagerOptions options_;
  common::SecretKey site_dtu_key_;
  common::Logger log_{"devmgr"};
  Metrics metrics_;  // before everything that counts into it
  common::HybridLogicalClock universal_;
  ConnectionLimiter dtu_handshakes_;      // DTU connections in their TLS handshake
  ConnectionLimiter client_connections_;  // socket connections, by uid
  std::shared_ptr<asio::ssl::context> tls_;
  std::optional<asio::ip::tcp::acceptor> dtu_acceptor_;
  std::optional<asio::local::stream_protocol::acceptor> client_acceptor_;
  common::Endpoint bound_;
  DeviceList devices_;
  SessionTable sessions_;
  Policy policy_ = Policy::builtin();
  FinderRegistry finders_;
  LeaseBroker leases_;
  std::uint64_t incarnation_ = 0;
  GroupBroker group_;
  std::set<std::shared_ptr<DtuSession>> hello_pending_;
  std::map<std::string, std::shared_ptr<DtuSession>> dtus_;  // active, by DTU id
  std::set<std::shared_ptr<ClientSession>> clients_;
  // Declared after group_: destroyed first, so no hook reaches a destroyed GroupBroker.
  std::unique_ptr<PeerMesh> mesh_;
  // Group commands (device_manager_commands.cpp); after mesh_: destroyed before it.
  std::unique_ptr<GroupCommands> commands_;
  // The group list and keys in force (rotate-key swaps the keys in memory).
  std::vector<GroupMember> members_;
  common::GroupKeys keys_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<common::DeadlineGuard> offset_timer_;
  bool draining_ = false;
  struct DrainWaiter {
    std::function<void(common::Result<common::DrainStatusMsg>)> done;
    std::unique_ptr<common::DeadlineGuard> deadline;
  };
  std::map<std::uint64_t, DrainWaiter> drain_waiters_;
  std::uint64_t next_drain_waiter_ = 0;
  bool stopped_ = false;
};

}  // namespace dtu::devmgr
