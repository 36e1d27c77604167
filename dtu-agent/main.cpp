// dtu-agent: the desktop unit's agent. Parse config and flags, build the USB backend and the
// agent, stop on SIGINT/SIGTERM, run.
#include <malloc.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>

#include "dtu/agent/agent_options.hpp"
#include "dtu/agent/dtu_agent.hpp"
#include "dtu/agent/libusb_backend.hpp"
#include "dtu/agent/sim_backend.hpp"
#include "dtu/agent/sim_control.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/systemd_notify.hpp"
#include "dtu/common/version.hpp"

namespace {

// A command line CLI11 cannot parse (dtu-agent(8), EXIT STATUS).
constexpr int kExitUsage = 2;

// Freed heap kept before glibc gives it back to the kernel (its default: 128 KiB). An in-band
// stream keeps 8 chunks of 63 KiB in flight (InbandChannel::kStreamWindow), each allocated when it
// arrives and freed when the device took it; at the default, the frees at the top of the heap gave
// the pages back and every chunk faulted them in again: a fifth of the agent's CPU per MB
// streamed (docs/performance.md). 2 MiB holds the window twice over.
constexpr int kTrimThreshold = 2 * 1024 * 1024;

int fail(const dtu::common::Logger& log, const std::string& event, const dtu::common::Error& error) {
  log.error("", event, {{"reason", error.describe()}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dtu;
  mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
  const common::Logger log("dtu-agent");
  CLI::App app{"dtubroker desktop-unit agent"};
  std::string config_path;
  std::optional<std::string> id, key_file, backend_name, sim_devices, sim_control, pick, log_level, inband;
  std::vector<std::string> managers;
  app.add_option("-c,--config", config_path, "JSON config file (flags override it; default: none)");
  app.add_option("--id", id, "this DTU's id (required, here or in the config)");
  app.add_option("-m,--manager", managers, "a manager's address:port (repeat; order is preference; at least one, here or in the config)");
  app.add_option("--pick", pick,
                 "how to order the managers: first (the list as given, default) | least-loaded (probe each, "
                 "reachable and not draining first, then fewest DTUs)");
  app.add_option("--key", key_file, "file with this DTU's derived key (devmgrctl keygen --dtu; default /etc/dtubroker/dtu.key)");
  app.add_option("--usb,--backend", backend_name, "USB backend: libusb (default: real USB) | sim (a JSON catalogue)");
  app.add_option("--inband", inband, "address:port of the in-band listener (default 0.0.0.0:4712)");
  app.add_option("--sim-devices", sim_devices, "device catalogue for the sim backend (JSON; default: none)");
  app.add_option("--sim-control", sim_control, "Unix socket to plug/unplug simulated devices (dtu-simctl; default: none)");
  app.add_option("--log-level", log_level, "debug | info | warn | error (default info)");
  app.set_version_flag("--version", common::kVersion);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the reason; a usage error is 2 whatever its kind (CLI11 would use 100–127).
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  agent::AgentOptions options;
  if (!config_path.empty()) {
    auto config = common::ConfigReader::load(config_path);
    if (!config.ok()) return fail(log, "config_error", config.error());
    if (auto applied = agent::apply_config(*config, options); !applied.ok()) {
      return fail(log, "config_error", applied.error());
    }
  }
  if (id) options.id = *id;
  if (!managers.empty()) {
    options.managers.clear();
    for (const auto& text : managers) {
      auto endpoint = common::parse_endpoint(text);
      if (!endpoint.ok()) return fail(log, "config_error", endpoint.error());
      options.managers.push_back(*endpoint);
    }
  }
  if (pick) options.pick = *pick;
  if (key_file) options.key_file = *key_file;
  if (backend_name) options.backend = *backend_name;
  if (sim_devices) options.sim_devices = *sim_devices;
  if (inband) {
    auto endpoint = common::parse_endpoint(*inband);
    if (!endpoint.ok()) return fail(log, "config_error", endpoint.error());
    options.inband = *endpoint;
  }
  if (sim_control) options.sim_control = *sim_control;
  if (log_level) options.log_level = *log_level;
  if (!common::set_log_level(options.log_level)) {
    return fail(log, "config_error", common::Error(common::Errc::config_error,
                                                   "log level '" + options.log_level + "': expected debug, info, warn or error"));
  }
  if (auto valid = agent::validate(options); !valid.ok()) return fail(log, "config_error", valid.error());
  auto key = common::load_key_file(options.key_file);
  if (!key.ok()) return fail(log, "key_error", key.error());

  asio::io_context io;
  std::unique_ptr<agent::UsbBackend> backend;
  agent::SimBackend* sim = nullptr;
  if (options.backend == "sim") {
    auto devices = agent::load_sim_devices(options.sim_devices);
    if (!devices.ok()) return fail(log, "config_error", devices.error());
    auto sim_backend = std::make_unique<agent::SimBackend>(io.get_executor(), std::move(devices.value()));
    sim = sim_backend.get();
    backend = std::move(sim_backend);
  } else {
    backend = std::make_unique<agent::LibusbBackend>(io.get_executor());
  }
  std::optional<agent::SimControlServer> control;
  if (sim != nullptr && !options.sim_control.empty()) {
    control.emplace(io.get_executor(), *sim, options.sim_control);
    if (auto started = control->start(); !started.ok()) return fail(log, "start_failed", started.error());
  }
  agent::DtuAgent dtu_agent(io.get_executor(), common::SystemClock::instance(), options, key->bytes, *backend);
  if (auto started = dtu_agent.start(); !started.ok()) return fail(log, "start_failed", started.error());

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code ec, int signo) {
    if (ec) return;
    log.info("", "stopping", {{"signal", signo}});
    common::systemd::notify_stopping();
    dtu_agent.stop();
    if (control) control->stop();
    io.stop();
  });
  common::systemd::notify_ready();  // Type=notify (docs/systemd.md), once signals are handled
  io.run();
  return 0;
}
