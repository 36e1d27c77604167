#pragma once
// DtuAgent: the desktop unit's side of the broker. It keeps the records of its USB devices
// (from a UsbBackend), holds one persistent TLS connection to one manager of its list (its
// owner manager), says hello, reports every device and every lease it holds (a snapshot on each
// connect, then one message per plug, unplug or unit change), and answers heartbeats through its
// Link.
//
// Choosing a manager (--pick, manager_order.hpp): before each connection round the agent orders
// its list — "first": the list as written; "least-loaded": it probes every manager (hello with
// probe:true, the welcome's load figures, close) and puts reachable, not draining, less loaded
// managers first. It then tries them in that order. The manager just lost (link loss, missed
// heartbeats, or a dtu_move telling the DTU to leave) is tried last in the round after the loss.
// A hello refused with "draining" moves on to the next manager at once. When a round finds no
// manager, or the link lost had lasted under a second (a manager that welcomes and drops), the
// next round follows a bounded, jittered backoff; after a steady link it starts at once.
//
// Stamps (DESIGN.md §3): every record is stamped here, at generation, with (boot_epoch, seq) and
// the universal time. boot_epoch is 0 until the first welcome since the agent started; it is then
// the welcome's universal time (µs, the group's hybrid logical clock), so a rebooted DTU's claims
// beat its old ones wherever it connects. Records built before that are re-stamped (seq kept).
// Stamp times are the local wall clock plus the offset to the universal time seen at the last
// welcome.
//
// Ownership and fencing (DESIGN.md §6): the snapshot of each connect carries a fresh stamp, the
// DTU's claim on that manager, remembered as the link's fence. A lease_request, lease_renew or
// lease_release must carry exactly that stamp: one without it, or with another (a manager acting
// on a link it no longer has), is refused as a stale owner and logged (lease_fenced).
//
// Leases (DESIGN.md §5): the agent has the final word on its units. Its manager asks for a lease
// (lease_request); the agent refuses a unit that is held (naming the holder) or made unavailable
// by a sibling's lease (unit_rules.hpp), otherwise claims the unit's interfaces through the
// backend (detaching kernel drivers), grants the lease with a fresh in-band token, and reports the
// unit change (device_changed) stamped at generation. The manager's state token is kept with the
// lease (a renewal may replace it) and reported back in every snapshot, so a new owner can adopt
// the lease. Leases expire on the monotonic clock unless renewed (lease_renew from the manager, or
// in-band by the holder); on expiry, release, unplug or stop the interfaces are given back, the
// in-band channels of the lease are closed with the reason, and the manager is told
// (lease_ended). Losing or leaving a manager does not touch leases: the holder keeps its unit and
// its in-band channel while the agent finds a manager again.
//
// Runs on one io_context thread; every method must be called on it. The io_context must not run
// after the agent is destroyed (its coroutines refer to it).

#include <map>
#include <set>
#include <utility>
#include <vector>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "dtu/agent/agent_options.hpp"
#include "dtu/agent/inband_server.hpp"
#include "dtu/agent/lease_table.hpp"
#include "dtu/agent/manager_order.hpp"
#include "dtu/agent/usb_backend.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"

namespace dtu::agent {

class DtuAgent {
 public:
  DtuAgent(const asio::any_io_executor& ex, const common::Clock& clock, AgentOptions options, common::Bytes key,
           UsbBackend& backend);
  ~DtuAgent();
  DtuAgent(const DtuAgent&) = delete;
  DtuAgent& operator=(const DtuAgent&) = delete;

  // Starts the backend and the connection loop.
  common::Result<void> start();
  // Closes the link and stops the backend. Idempotent.
  void stop();

  // Where services reach the in-band listener (valid after start()).
  const common::Endpoint& inband_endpoint() const { return inband_endpoint_; }
  const LeaseTable& leases() const { return leases_; }
  // 0 until the first welcome since start(), then the universal time (µs) it carried.
  std::int64_t boot_epoch() const { return boot_epoch_; }
  // The manager the agent is connected to (welcomed), if any.
  std::optional<common::Endpoint> manager() const;

 private:
  struct ProbeRound;
  asio::awaitable<void> run();
  // The managers' indices in the order of the next connection round (probing them first for
  // --pick least-loaded); `tried_last` is the manager just lost.
  asio::awaitable<std::vector<std::size_t>> next_round(std::optional<std::size_t> tried_last);
  // Probes every manager at once; returns when each probe has answered or failed.
  asio::awaitable<std::vector<ManagerLoad>> probe_all();
  asio::awaitable<void> probe_into(std::shared_ptr<ProbeRound> round, std::size_t index);
  // One probe: connect, hello{probe:true}, the welcome's load figures, close. Unreachable on
  // any failure; each step bounded by connect_timeout.
  asio::awaitable<ManagerLoad> probe(common::Endpoint manager);
  // Connects to one manager and serves the link until it closes. Returns why it ended.
  asio::awaitable<common::Error> serve(common::Endpoint manager);
  // Takes the boot epoch (the first time) and the universal time offset from a welcome.
  void on_welcome(const common::DtuWelcomeMsg& welcome);
  common::DeviceSnapshotMsg snapshot();
  void on_attached(UsbDeviceInfo info);
  void on_detached(const std::string& port);
  void send_device_message(common::Frame frame, const std::string& what);
  // Requests from the manager on the control filament.
  void on_manager_frame(const common::Frame& frame);
  // The request's message, or nullopt after answering bad_payload (logged with the manager).
  template <typename M>
  std::optional<M> decode_request(const common::Frame& frame);
  // Refuses (and logs) a lease operation whose fence is not this link's claim stamp: a manager
  // that is no longer this DTU's owner must not act on it. True when refused.
  bool refuse_stale_owner(const common::Frame& frame, const std::optional<common::Stamp>& fence,
                          const std::string& what);
  void on_dtu_move(const common::Frame& frame);
  void on_lease_request(const common::Frame& frame);
  void on_lease_renew(const common::Frame& frame);
  // The units whose leases (granted, or being granted) make `unit` of `port` unavailable.
  std::set<std::uint32_t> blockers(const std::string& port, std::uint32_t unit) const;
  void on_lease_release(const common::Frame& frame);
  // Claims `interfaces` of `port` one after another, then calls done (the first error, if any).
  void claim_interfaces(const std::string& port, std::vector<std::uint8_t> interfaces, std::size_t next,
                        std::function<void(common::Result<void>)> done);
  void release_interfaces(const Lease& lease);
  // Renews a lease (from the manager or in-band) and re-arms the expiry timer.
  common::Result<Lease> renew_lease(std::string_view id, common::Duration length);
  // Everything that follows the end of a lease.
  void lease_ended(const Lease& lease, LeaseEnd why);
  // Recomputes the unit states of `port` from its leases and reports the change.
  void report_units(const std::string& port);
  asio::awaitable<void> expiry_loop();
  common::LeaseGrantedMsg granted_message(const Lease& lease, bool with_token) const;
  common::Stamp next_stamp();
  common::Duration backoff(unsigned attempt);

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  AgentOptions options_;
  common::Bytes key_;
  UsbBackend& backend_;
  common::Logger log_{"dtu-agent"};
  std::shared_ptr<asio::ssl::context> tls_;
  std::int64_t boot_epoch_ = 0;           // universal µs from the first welcome; 0 before it
  std::int64_t universal_offset_us_ = 0;  // universal time − local wall time, at the last welcome
  std::uint64_t seq_ = 0;
  std::map<std::string, common::DeviceRecord> records_;  // by port
  std::map<std::string, UsbDeviceInfo> devices_;         // by port: what the rules look at
  std::map<std::string, std::uint64_t> attached_seq_;    // by port: the seq of its attach record
  LeaseTable leases_;
  std::set<std::pair<std::string, std::uint32_t>> claiming_;  // (port, unit) being granted
  std::unique_ptr<InbandServer> inband_;
  common::Endpoint inband_endpoint_;
  asio::steady_timer expiry_timer_;
  std::shared_ptr<common::Link> link_;                   // set while connected
  bool welcomed_ = false;
  std::optional<common::Endpoint> connected_to_;  // while welcomed
  std::optional<common::Stamp> fence_;            // this link's claim stamp, once the snapshot is built
  asio::steady_timer link_closed_;  // cancelled when the link closes
  asio::steady_timer retry_timer_;
  std::mt19937 rng_;
  bool stopped_ = false;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // backend callbacks hold a weak_ptr
};

}  // namespace dtu::agent
