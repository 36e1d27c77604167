// devmgr: the device manager of one server. Parse config and flags, build the manager, stop
// it on SIGINT/SIGTERM, run.
#include <cstdio>
#include <functional>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/version.hpp"
#include "dtu/devmgr/device_manager.hpp"

namespace {

int fail(const dtu::common::Logger& log, const std::string& event, const dtu::common::Error& error) {
  log.error("", event, {{"reason", error.describe()}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dtu;
  const common::Logger log("devmgr");
  CLI::App app{"dtubroker device manager"};
  std::string config_path;
  std::optional<std::string> id, listen, socket, socket_mode, key_file, policy_file, log_level;
  std::optional<int> heartbeat_ms, heartbeat_misses, orphan_grace_ms;
  std::optional<std::string> peer_listen, group_file, group_key, group_key_next;
  std::vector<std::string> peers;
  app.add_option("-c,--config", config_path, "JSON config file (flags override it)");
  app.add_option("--id", id, "manager id in the group");
  app.add_option("--dtu-listen", listen, "address:port where DTUs connect (port 0: any)");
  app.add_option("--socket", socket, "Unix socket for services and devmgrctl");
  app.add_option("--socket-mode", socket_mode, "the socket's permissions, octal (default 0660: owner and group)");
  app.add_option("--site-dtu-key", key_file, "file with the site DTU key (64 hex digits)");
  app.add_option("--policy", policy_file, "allocation policy file (docs/policy.md); reloaded on SIGHUP");
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat interval in ms")->check(CLI::Range(50, 60000));
  app.add_option("--heartbeat-misses", heartbeat_misses, "silent intervals before a link is closed")
      ->check(CLI::Range(1, 100));
  app.add_option("--log-level", log_level, "debug | info | warn | error");
  app.add_option("--peer-listen", peer_listen,
                 "address:port of this manager in the group mesh (default: its entry in the group list)");
  app.add_option("--group", group_file, "group list file (docs/group.md); reloaded on SIGHUP");
  app.add_option("--peer", peers, "another group member, id=host:port (repeatable; added to the group list)");
  app.add_option("--group-key", group_key, "file with the group key (64 hex digits)");
  app.add_option("--group-key-next", group_key_next, "during a key rotation: file with the next group key");
  app.add_option("--orphan-grace-ms", orphan_grace_ms, "how long a dead peer's devices stay orphaned, in ms")
      ->check(CLI::Range(0, 3600000));
  app.set_version_flag("--version", common::kVersion);
  CLI11_PARSE(app, argc, argv);

  devmgr::ManagerOptions options;
  if (!config_path.empty()) {
    auto config = common::ConfigReader::load(config_path);
    if (!config.ok()) return fail(log, "config_error", config.error());
    if (auto applied = devmgr::apply_config(*config, options); !applied.ok()) {
      return fail(log, "config_error", applied.error());
    }
  }
  if (id) options.id = *id;
  if (listen) {
    auto endpoint = common::parse_endpoint(*listen);
    if (!endpoint.ok()) return fail(log, "config_error", endpoint.error());
    options.dtu_listen = *endpoint;
  }
  if (socket) options.socket_path = *socket;
  if (socket_mode) {
    auto mode = devmgr::parse_socket_mode(*socket_mode);
    if (!mode.ok()) return fail(log, "config_error", common::Error(common::Errc::config_error, "--socket-mode: " + mode.error().detail));
    options.socket_mode = *mode;
  }
  if (key_file) options.site_dtu_key_file = *key_file;
  if (policy_file) options.policy_file = *policy_file;
  if (heartbeat_ms) options.heartbeat_interval = std::chrono::milliseconds(*heartbeat_ms);
  if (heartbeat_misses) options.heartbeat_misses = static_cast<std::uint32_t>(*heartbeat_misses);
  if (log_level) options.log_level = *log_level;
  if (peer_listen) {
    auto endpoint = common::parse_endpoint(*peer_listen);
    if (!endpoint.ok()) return fail(log, "config_error", common::Error(common::Errc::config_error, "--peer-listen: " + endpoint.error().detail));
    options.peer_listen = *endpoint;
  }
  if (group_file) options.group_file = *group_file;
  options.peers.insert(options.peers.end(), peers.begin(), peers.end());
  if (group_key) options.group_key_file = *group_key;
  if (group_key_next) options.group_key_next_file = *group_key_next;
  if (orphan_grace_ms) options.orphan_grace = std::chrono::milliseconds(*orphan_grace_ms);
  if (!common::set_log_level(options.log_level)) {
    return fail(log, "config_error", common::Error(common::Errc::config_error,
                                                   "log level '" + options.log_level + "': expected debug, info, warn or error"));
  }
  if (!common::is_valid_id(options.id)) {
    return fail(log, "config_error", common::Error(common::Errc::config_error,
                                                   "manager id '" + options.id + "': expected 1-64 of [A-Za-z0-9._-]"));
  }
  auto key = common::load_key_file(options.site_dtu_key_file);
  if (!key.ok()) return fail(log, "key_error", key.error());

  asio::io_context io;
  devmgr::DeviceManager manager(io.get_executor(), common::SystemClock::instance(), options, std::move(key.value()));
  if (auto started = manager.start(); !started.ok()) return fail(log, "start_failed", started.error());

  asio::signal_set reload(io, SIGHUP);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code ec, int signo) {
    if (ec) return;
    log.info("", "stopping", {{"signal", signo}});
    manager.stop();
    reload.cancel();
    io.stop();
  });
  // SIGHUP (systemctl reload) reads the policy, the group list and the group keys again; a
  // broken file keeps what is in force and the log says why.
  std::function<void(std::error_code, int)> on_hup = [&](std::error_code ec, int) {
    if (ec) return;
    log.info("", "reloading", {{"signal", "SIGHUP"}});
    (void)manager.reload_policy();
    (void)manager.reload_group();
    reload.async_wait(on_hup);
  };
  reload.async_wait(on_hup);
  io.run();
  return 0;
}
