#include "dtu/devmgr/manager_options.hpp"

#include <charconv>

namespace dtu::devmgr {

using common::Errc;
using common::Error;

common::Result<unsigned> parse_socket_mode(const std::string& text) {
  unsigned mode = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, mode, 8);
  if (text.empty() || ec != std::errc() || ptr != end || mode > 0777) {
    return Error(Errc::config_error, "expected an octal mode such as \"0660\", got \"" + text + "\"");
  }
  return mode;
}

common::Result<void> apply_config(common::ConfigReader& config, ManagerOptions& options) {
  config.read("id", options.id);
  std::string listen = options.dtu_listen.to_string();
  config.read("dtu_listen", listen);
  config.read("socket", options.socket_path);
  config.read("site_dtu_key_file", options.site_dtu_key_file);
  config.read("policy_file", options.policy_file);
  std::string mode;  // absent: keep the default
  config.read("socket_mode", mode);
  config.read("socket_group", options.socket_group);
  config.read("heartbeat_interval", options.heartbeat_interval);
  std::int64_t misses = options.heartbeat_misses;
  config.read_int("heartbeat_misses", misses, 1, 100);
  config.read("handshake_timeout", options.handshake_timeout);
  auto max_frame = static_cast<std::int64_t>(options.max_frame_bytes);
  config.read_int("max_frame_bytes", max_frame, 4096, 64 * 1024 * 1024);
  auto read_limit = [&config](const char* key, std::size_t& value) {
    auto v = static_cast<std::int64_t>(value);
    config.read_int(key, v, 0, 1'000'000);
    value = static_cast<std::size_t>(v);
  };
  read_limit("max_handshakes_per_source", options.max_handshakes_per_source);
  read_limit("max_handshakes", options.max_handshakes);
  read_limit("max_connections_per_uid", options.max_connections_per_uid);
  read_limit("max_finders_per_service", options.max_finders_per_service);
  read_limit("max_pending_requests", options.max_pending_requests);
  config.read("log_level", options.log_level);
  std::string peer_listen = options.peer_listen ? options.peer_listen->to_string() : std::string();
  config.read("peer_listen", peer_listen);
  config.read("group_file", options.group_file);
  config.read("peers", options.peers);
  config.read("group_key_file", options.group_key_file);
  config.read("group_key_next_file", options.group_key_next_file);
  config.read("orphan_grace", options.orphan_grace);
  std::string metrics_listen = options.metrics_listen ? options.metrics_listen->to_string() : std::string();
  config.read("metrics_listen", metrics_listen);
  config.reject_unknown_keys();
  if (!config.ok()) return config.error();
  auto endpoint = common::parse_endpoint(listen);
  if (!endpoint.ok()) {
    return Error(Errc::config_error, config.origin() + ": key 'dtu_listen': " + endpoint.error().detail);
  }
  options.dtu_listen = *endpoint;
  if (!peer_listen.empty()) {
    auto mesh = common::parse_endpoint(peer_listen);
    if (!mesh.ok()) return Error(Errc::config_error, config.origin() + ": key 'peer_listen': " + mesh.error().detail);
    options.peer_listen = *mesh;
  }
  if (metrics_listen.empty()) {
    options.metrics_listen.reset();
  } else {
    auto metrics = common::parse_endpoint(metrics_listen);
    if (!metrics.ok()) {
      return Error(Errc::config_error, config.origin() + ": key 'metrics_listen': " + metrics.error().detail);
    }
    options.metrics_listen = *metrics;
  }
  options.heartbeat_misses = static_cast<std::uint32_t>(misses);
  if (!mode.empty()) {
    auto parsed = parse_socket_mode(mode);
    if (!parsed.ok()) return Error(Errc::config_error, config.origin() + ": key 'socket_mode': " + parsed.error().detail);
    options.socket_mode = *parsed;
  }
  options.max_frame_bytes = static_cast<std::size_t>(max_frame);
  return {};
}

}  // namespace dtu::devmgr
