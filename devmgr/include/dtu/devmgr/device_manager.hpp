#pragma once
// DeviceManager: one devmgr. Accepts DTUs over TLS (PSK derived per DTU from the site key,
// DESIGN.md §2) and local clients over the Unix socket, keeps the device list, the sessions, the
// finders (FinderRegistry), the leases (LeaseBroker) and the policy, and owns every live
// session; stop() ends them all (SIGTERM), reload_policy() reads the policy file again (SIGHUP).
// Runs on one io_context thread; every method must be called on it.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/result.hpp"
#include "dtu/devmgr/client_session.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/dtu_session.hpp"
#include "dtu/devmgr/finder_registry.hpp"
#include "dtu/devmgr/lease_broker.hpp"
#include "dtu/devmgr/manager_options.hpp"
#include "dtu/devmgr/policy.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace dtu::devmgr {

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
  // Stops accepting and closes every session. Idempotent.
  void stop();

  // The bound DTU endpoint (the real port when the options asked for port 0).
  common::Endpoint dtu_endpoint() const { return bound_; }
  const DeviceList& devices() const { return devices_; }
  const LeaseBroker& leases() const { return leases_; }
  const FinderRegistry& finders() const { return finders_; }
  const SessionTable& sessions() const { return sessions_; }
  const Policy& policy() const { return policy_; }
  std::size_t dtu_count() const { return dtus_.size(); }

 private:
  asio::awaitable<void> accept_dtus();
  asio::awaitable<void> accept_clients();
  asio::awaitable<void> admit_dtu(asio::ip::tcp::socket socket);
  void on_dtu_active(const std::shared_ptr<DtuSession>& session);
  void on_dtu_closed(const std::shared_ptr<DtuSession>& session, const common::Error& reason);
  common::Link::Options link_options() const;
  common::Result<void> attach_session(const common::SessionAttachMsg& request);
  common::Result<void> detach_session(const std::string& session);
  common::PolicyInfoMsg policy_info() const;

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  ManagerOptions options_;
  common::SecretKey site_dtu_key_;
  common::Logger log_{"devmgr"};
  std::shared_ptr<asio::ssl::context> tls_;
  std::optional<asio::ip::tcp::acceptor> dtu_acceptor_;
  std::optional<asio::local::stream_protocol::acceptor> client_acceptor_;
  common::Endpoint bound_;
  DeviceList devices_;
  SessionTable sessions_;
  Policy policy_ = Policy::builtin();
  FinderRegistry finders_;
  LeaseBroker leases_;
  std::set<std::shared_ptr<DtuSession>> hello_pending_;
  std::map<std::string, std::shared_ptr<DtuSession>> dtus_;  // active, by DTU id
  std::set<std::shared_ptr<ClientSession>> clients_;
  bool stopped_ = false;
};

}  // namespace dtu::devmgr
