#pragma once
// DtuAgent: the desktop unit's side of the broker. It keeps the records of its USB devices
// (from a UsbBackend), holds one persistent TLS connection to one manager of its list (its
// owner manager), says hello, reports every device (a snapshot on each connect, then one
// message per plug or unplug), and answers heartbeats through its Link. When the link is lost
// it tries the list again from the top, with a bounded, jittered backoff.
//
// Every record is stamped here, at generation: (boot_epoch, seq) plus the time.
//
// Leases (DESIGN.md §5): the agent has the final word on its units. Its manager asks for a lease
// (lease_request); the agent refuses a unit that is held (naming the holder) or made unavailable
// by a sibling's lease (unit_rules.hpp), otherwise claims the unit's interfaces through the
// backend (detaching kernel drivers), grants the lease with a fresh in-band token, and reports the
// unit change (device_changed) stamped at generation. Leases expire on the monotonic clock unless
// renewed (lease_renew from the manager, or in-band by the holder); on expiry, release, unplug or
// stop the interfaces are given back, the in-band channels of the lease are closed with the
// reason, and the manager is told (lease_ended). A lost manager link does not touch leases: the
// holder keeps its unit and its in-band channel while the agent finds a manager again.
//
// Runs on one io_context thread; every method must be called on it.

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

 private:
  asio::awaitable<void> run();
  // Connects to one manager and serves the link until it closes. Returns why it ended.
  asio::awaitable<common::Error> serve(common::Endpoint manager);
  void on_attached(UsbDeviceInfo info);
  void on_detached(const std::string& port);
  void send_device_message(common::Frame frame, const std::string& what);
  // Requests from the manager on the control filament.
  void on_manager_frame(const common::Frame& frame);
  // The request's message, or nullopt after answering bad_payload (logged with the manager).
  template <typename M>
  std::optional<M> decode_request(const common::Frame& frame);
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
  std::int64_t boot_epoch_;
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
  asio::steady_timer link_closed_;  // cancelled when the link closes
  asio::steady_timer retry_timer_;
  std::mt19937 rng_;
  bool stopped_ = false;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // backend callbacks hold a weak_ptr
};

}  // namespace dtu::agent
