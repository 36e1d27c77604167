#pragma once
// ManagerOptions: everything a devmgr is configured with — defaults, then the JSON config file,
// then command-line flags (main.cpp applies them in that order). Plain value; main thread only.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

struct ManagerOptions {
  std::string id = "devmgr";                               // this manager's id in the group
  common::Endpoint dtu_listen{"127.0.0.1", 4711};          // where DTUs connect (TLS)
  std::string socket_path = "/run/dtubroker/devmgr.sock";  // services and devmgrctl
  // Owner and group may connect; services run in the socket's group (docs/operations.md).
  unsigned socket_mode = 0660;
  // The socket's group (chowned after bind; devmgr must be a member); empty: devmgr's own group.
  std::string socket_group;
  std::string site_dtu_key_file = "/etc/dtubroker/site-dtu.key";
  // The allocation policy (docs/policy.md); empty: the built-in policy (allow all, 60 s leases).
  std::string policy_file;
  std::chrono::milliseconds heartbeat_interval{1000};
  std::uint32_t heartbeat_misses = 3;
  std::chrono::milliseconds handshake_timeout{5000};  // TLS plus hello
  std::size_t max_frame_bytes = common::kDefaultMaxPayload;
  // Resource limits (docs/security.md, Limits); 0 means no cap. Each one hit is logged.
  // TCP connections from one address still in their TLS handshake, on each TCP listener (DTUs,
  // mesh), and from all addresses together: a flood of half-open connections stays bounded.
  std::size_t max_handshakes_per_source = 64;
  std::size_t max_handshakes = 1024;
  std::size_t max_connections_per_uid = 256;   // open connections on the socket from one uid
  std::size_t max_finders_per_service = 1024;  // finders one service connection holds
  // A service's or DTU's requests not yet answered, per filament; more are refused (denied).
  std::size_t max_pending_requests = 256;
  std::string log_level = "info";
  // The group (docs/group.md). The mesh runs when this manager has a mesh address: `peer_listen`,
  // or else its own entry in the group list. Without one it serves alone.
  std::optional<common::Endpoint> peer_listen;
  std::string group_file;          // {"members": [{"id", "address"}, …]}; reloaded on SIGHUP
  std::vector<std::string> peers;  // more members, "id=host:port" (flags; kept across reloads)
  std::string group_key_file = "/etc/dtubroker/group.key";
  std::string group_key_next_file;  // during a key rotation: the next group key (docs/group.md)
  // How long a dead peer's devices stay `orphaned` (their DTUs may re-home) before they are gone.
  std::chrono::milliseconds orphan_grace{10000};
  // Where the Prometheus endpoint listens (docs/metrics.md); none: no endpoint. Meant for
  // loopback; another address works but is logged metrics_not_loopback (firewall it).
  std::optional<common::Endpoint> metrics_listen;
};

// Reads a socket mode written in octal ("0660"). Errc::config_error otherwise.
common::Result<unsigned> parse_socket_mode(const std::string& text);

// Reads the keys of a devmgr config file into `options` (absent keys keep their value).
// Errors name the file, the key and what was expected; unknown keys are errors.
common::Result<void> apply_config(common::ConfigReader& config, ManagerOptions& options);

}  // namespace dtu::devmgr
