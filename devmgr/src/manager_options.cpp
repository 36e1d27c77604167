#include "dtu/devmgr/manager_options.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;

common::Result<void> apply_config(common::ConfigReader& config, ManagerOptions& options) {
  config.read("id", options.id);
  std::string listen = options.dtu_listen.to_string();
  config.read("dtu_listen", listen);
  config.read("socket", options.socket_path);
  config.read("site_dtu_key_file", options.site_dtu_key_file);
  config.read("heartbeat_interval", options.heartbeat_interval);
  std::int64_t misses = options.heartbeat_misses;
  config.read_int("heartbeat_misses", misses, 1, 100);
  config.read("handshake_timeout", options.handshake_timeout);
  auto max_frame = static_cast<std::int64_t>(options.max_frame_bytes);
  config.read_int("max_frame_bytes", max_frame, 4096, 64 * 1024 * 1024);
  config.read("log_level", options.log_level);
  config.reject_unknown_keys();
  if (!config.ok()) return config.error();
  auto endpoint = common::parse_endpoint(listen);
  if (!endpoint.ok()) {
    return Error(Errc::config_error, config.origin() + ": key 'dtu_listen': " + endpoint.error().detail);
  }
  options.dtu_listen = *endpoint;
  options.heartbeat_misses = static_cast<std::uint32_t>(misses);
  options.max_frame_bytes = static_cast<std::size_t>(max_frame);
  return {};
}

}  // namespace dtu::devmgr
