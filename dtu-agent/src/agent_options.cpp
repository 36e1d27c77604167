#include "dtu/agent/agent_options.hpp"

#include <cstddef>
#include <cstdint>

#include "dtu/common/records.hpp"

namespace dtu::agent {

using common::Errc;
using common::Error;

common::Result<void> apply_config(common::ConfigReader& config, AgentOptions& options) {
  config.read("id", options.id);
  std::vector<std::string> managers;
  config.read("managers", managers);
  config.read("pick", options.pick);
  config.read("key_file", options.key_file);
  config.read("backend", options.backend);
  config.read("sim.devices", options.sim_devices);
  config.read("sim.control", options.sim_control);
  std::string inband;
  config.read("inband", inband);
  auto max_channels = static_cast<std::int64_t>(options.max_inband_channels);
  config.read_int("max_inband_channels", max_channels, 0, 65'536);
  options.max_inband_channels = static_cast<std::size_t>(max_channels);
  config.read("connect_timeout", options.connect_timeout);
  config.read("reconnect_min", options.reconnect_min);
  config.read("reconnect_max", options.reconnect_max);
  config.read("log_level", options.log_level);
  config.reject_unknown_keys();
  if (!config.ok()) return config.error();
  if (!managers.empty()) options.managers.clear();
  for (const auto& text : managers) {
    auto endpoint = common::parse_endpoint(text);
    if (!endpoint.ok()) {
      return Error(Errc::config_error, config.origin() + ": key 'managers': " + endpoint.error().detail);
    }
    options.managers.push_back(*endpoint);
  }
  if (!inband.empty()) {
    auto endpoint = common::parse_endpoint(inband);
    if (!endpoint.ok()) return Error(Errc::config_error, config.origin() + ": key 'inband': " + endpoint.error().detail);
    options.inband = *endpoint;
  }
  return {};
}

common::Result<void> validate(const AgentOptions& options) {
  if (!common::is_valid_id(options.id)) {
    return Error(Errc::config_error, "DTU id '" + options.id + "': expected 1-64 of [A-Za-z0-9._-]");
  }
  if (options.managers.empty()) return Error(Errc::config_error, "no manager given (--manager or 'managers')");
  if (options.pick != kPickFirst && options.pick != kPickLeastLoaded) {
    return Error(Errc::config_error,
                 "pick '" + options.pick + "': expected '" + kPickFirst + "' or '" + kPickLeastLoaded + "'");
  }
  if (options.backend == "sim") {
    if (options.sim_devices.empty()) return Error(Errc::config_error, "the sim backend needs a device file (--sim-devices)");
  } else if (options.backend == "libusb") {
    if (!options.sim_devices.empty() || !options.sim_control.empty()) {
      return Error(Errc::config_error, "--sim-devices and --sim-control need the sim backend, not libusb");
    }
  } else {
    return Error(Errc::config_error, "backend '" + options.backend + "': expected 'sim' or 'libusb'");
  }
  if (options.reconnect_min.count() <= 0 || options.reconnect_max < options.reconnect_min) {
    return Error(Errc::config_error, "reconnect delays: expected 0 < reconnect_min <= reconnect_max");
  }
  return {};
}

}  // namespace dtu::agent
