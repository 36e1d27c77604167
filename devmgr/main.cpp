// devmgr: the device manager of one server. Parse config and flags, build the manager, stop
// it on SIGINT/SIGTERM, reload on SIGHUP, tell systemd (sd_notify) about all of it, run.
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/version.hpp"
#include "dtu/devmgr/device_manager.hpp"
#include "dtu/devmgr/service_notifier.hpp"
#include "dtu/devmgr/socket_group.hpp"

namespace {

int fail(const dtu::common::Logger& log, const std::string& event, const dtu::common::Error& error) {
  log.error("", event, {{"reason", error.describe()}});
  return 1;
}

std::string octal(unsigned mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", mode);
  return text;
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
  std::optional<std::string> metrics_listen;
  std::optional<std::string> socket_group;
  std::vector<std::string> peers;
  // The defaults shown in --help are ManagerOptions' own.
  const devmgr::ManagerOptions defaults;
  const auto ms = [](std::chrono::milliseconds d) { return std::to_string(d.count()); };
  app.add_option("-c,--config", config_path, "JSON config file (flags override it)");
  app.add_option("--id", id, "manager id in the group")->default_str(defaults.id);
  app.add_option("--dtu-listen", listen,
                 "address:port where DTUs connect (port 0: any); loopback unless asked, the packaged config "
                 "sets 0.0.0.0:4711")
      ->default_str(defaults.dtu_listen.to_string());
  app.add_option("--socket", socket, "Unix socket for services and devmgrctl")
      ->default_str(defaults.socket_path);
  app.add_option("--socket-mode", socket_mode, "the socket's permissions, octal (owner and group)")
      ->default_str(octal(defaults.socket_mode));
  app.add_option("--socket-group", socket_group,
                 "group to give the socket to (devmgr must be a member); default: devmgr's own group");
  app.add_option("--site-dtu-key", key_file, "file with the site DTU key (64 hex digits)")
      ->default_str(defaults.site_dtu_key_file);
  app.add_option("--policy", policy_file,
                 "allocation policy file (docs/policy.md); reloaded on SIGHUP; default: the built-in policy");
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat interval in ms")
      ->check(CLI::Range(50, 60000))
      ->default_str(ms(defaults.heartbeat_interval));
  app.add_option("--heartbeat-misses", heartbeat_misses, "silent intervals before a link is closed")
      ->check(CLI::Range(1, 100))
      ->default_str(std::to_string(defaults.heartbeat_misses));
  app.add_option("--log-level", log_level, "debug | info | warn | error")->default_str(defaults.log_level);
  app.add_option("--peer-listen", peer_listen,
                 "address:port of this manager in the group mesh (default: its entry in the group list)");
  app.add_option("--group", group_file, "group list file (docs/group.md); reloaded on SIGHUP; default: none");
  app.add_option("--peer", peers, "another group member, id=host:port (repeatable; added to the group list)");
  app.add_option("--group-key", group_key, "file with the group key (64 hex digits)")
      ->default_str(defaults.group_key_file);
  app.add_option("--group-key-next", group_key_next, "during a key rotation: file with the next group key");
  app.add_option("--orphan-grace-ms", orphan_grace_ms, "how long a dead peer's devices stay orphaned, in ms")
      ->check(CLI::Range(0, 3600000))
      ->default_str(ms(defaults.orphan_grace));
  app.add_option("--metrics-listen", metrics_listen,
                 "address:port of the Prometheus endpoint, e.g. 127.0.0.1:9471 (empty: none)");
  app.set_version_flag("--version", common::kVersion);
  // Usage errors exit 2 (CLI11's own codes are 100 and up), --help and --version 0.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

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
    if (!mode.ok())
      return fail(log, "config_error",
                  common::Error(common::Errc::config_error, "--socket-mode: " + mode.error().detail));
    options.socket_mode = *mode;
  }
  if (socket_group) options.socket_group = *socket_group;
  if (key_file) options.site_dtu_key_file = *key_file;
  if (policy_file) options.policy_file = *policy_file;
  if (heartbeat_ms) options.heartbeat_interval = std::chrono::milliseconds(*heartbeat_ms);
  if (heartbeat_misses) options.heartbeat_misses = static_cast<std::uint32_t>(*heartbeat_misses);
  if (log_level) options.log_level = *log_level;
  if (peer_listen) {
    auto endpoint = common::parse_endpoint(*peer_listen);
    if (!endpoint.ok())
      return fail(log, "config_error",
                  common::Error(common::Errc::config_error, "--peer-listen: " + endpoint.error().detail));
    options.peer_listen = *endpoint;
  }
  if (group_file) options.group_file = *group_file;
  options.peers.insert(options.peers.end(), peers.begin(), peers.end());
  if (group_key) options.group_key_file = *group_key;
  if (group_key_next) options.group_key_next_file = *group_key_next;
  if (metrics_listen) {
    if (metrics_listen->empty()) {
      options.metrics_listen.reset();
    } else {
      auto endpoint = common::parse_endpoint(*metrics_listen);
      if (!endpoint.ok()) {
        return fail(
            log, "config_error",
            common::Error(common::Errc::config_error, "--metrics-listen: " + endpoint.error().detail));
      }
      options.metrics_listen = *endpoint;
    }
  }
  if (orphan_grace_ms) options.orphan_grace = std::chrono::milliseconds(*orphan_grace_ms);
  if (!common::set_log_level(options.log_level)) {
    return fail(log, "config_error",
                common::Error(common::Errc::config_error,
                              "log level '" + options.log_level + "': expected debug, info, warn or error"));
  }
  if (!common::is_valid_id(options.id)) {
    return fail(log, "config_error",
                common::Error(common::Errc::config_error,
                              "manager id '" + options.id + "': expected 1-64 of [A-Za-z0-9._-]"));
  }
  auto key = common::load_key_file(options.site_dtu_key_file);
  if (!key.ok()) return fail(log, "key_error", key.error());

  asio::io_context io;
  devmgr::DeviceManager manager(io.get_executor(), common::SystemClock::instance(), options,
                                std::move(key.value()));
  if (auto started = manager.start(); !started.ok()) return fail(log, "start_failed", started.error());
  if (!options.socket_group.empty()) {
    if (auto given = devmgr::give_to_group(options.socket_path, options.socket_group); !given.ok()) {
      manager.stop();
      return fail(log, "start_failed", given.error());
    }
  }
  devmgr::ServiceNotifier notifier(io.get_executor(), options.id, manager);

  asio::signal_set reload(io, SIGHUP);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code ec, int signo) {
    if (ec) return;
    log.info("", "stopping", {{"signal", signo}});
    notifier.stopping();
    manager.stop();
    reload.cancel();
    io.stop();
  });
  // SIGHUP (systemctl reload) reads the policy, the group list and the group keys again; a
  // broken file keeps what is in force and the log says why.
  std::function<void(std::error_code, int)> on_hup = [&](std::error_code ec, int) {
    if (ec) return;
    log.info("", "reloading", {{"signal", "SIGHUP"}});
    notifier.reloading();
    (void)manager.reload_policy();
    (void)manager.reload_group();
    notifier.reloaded();
    reload.async_wait(on_hup);
  };
  reload.async_wait(on_hup);
  // READY=1 once the signals are handled too: `systemctl reload` may come at once.
  notifier.start();
  io.run();
  return 0;
}
