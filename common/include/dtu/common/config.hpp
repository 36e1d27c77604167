#pragma once
// ConfigReader: reads typed settings out of a JSON configuration file and collects every error,
// each naming the file, the key and what was expected:
//
//   auto cfg = ConfigReader::load("/etc/dtubroker/devmgr.json");
//   if (!cfg) return fail(cfg.error());
//   cfg->read_int("heartbeat_ms", heartbeat_ms, 100, 60000);
//   cfg->read("tls.key_file", key_file);
//   cfg->reject_unknown_keys();
//   if (!cfg->ok()) return fail(cfg->error());
//
// Keys are dotted paths into nested objects ("tls.key_file"). An absent key leaves `out` untouched,
// so defaults stay; a value of the wrong type also leaves it untouched and records an error.
//
// Endpoint / parse_endpoint: "host:port" and "[v6addr]:port" as written in configs and flags.
//
// Not thread-safe: used at startup on the main thread.

#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/result.hpp"

namespace dtu::common {

// The JSON document in the file at `path` (any JSON value). Errc::config_error:
// "<path>: cannot read: <strerror>", "<path>:<line>:<col>: invalid JSON: <why>".
Result<nlohmann::json> load_json_file(const std::string& path);

class ConfigReader {
 public:
  // `origin` names the document in errors (normally the file name).
  ConfigReader(nlohmann::json doc, std::string origin);

  // Errc::config_error: "<path>: cannot read: <strerror>", "<path>:<line>:<col>: invalid JSON: <why>",
  // or a top level that is not an object.
  static Result<ConfigReader> load(const std::string& path);

  void read(std::string_view key, bool& out);
  void read(std::string_view key, std::string& out);
  void read(std::string_view key, std::vector<std::string>& out);
  void read(std::string_view key, double& out);  // any JSON number
  // A non-negative JSON integer of milliseconds, or a string "<integer><unit>" with unit
  // ms, s, m or h ("250ms", "1s", "2m").
  void read(std::string_view key, std::chrono::milliseconds& out);

  // A JSON integer in [min, max]. REQUIRES: min <= max.
  void read_int(std::string_view key, int64_t& out, int64_t min, int64_t max);
  // A port; a listener may allow 0 (any free port). REQUIRES: min <= max.
  void read_int(std::string_view key, uint16_t& out, uint16_t min = 0, uint16_t max = 65535);

  // Records "unknown key 'x'" for every key that no read() asked for, at any depth: catches typos.
  // A whole object no read() reached into is reported once, by its own key. A name containing '.'
  // is an error too: no read() reaches it ({"tls.key_file": …} is not the key tls.key_file).
  // Call after the last read().
  void reject_unknown_keys();

  bool ok() const { return errors_.empty(); }
  // All errors joined by "; ", as Errc::config_error. REQUIRES: !ok().
  Error error() const;

  const std::string& origin() const { return origin_; }

 private:
  // The value at `key`, or nullptr when absent. Marks `key` as read.
  const nlohmann::json* find(std::string_view key);
  void add_type_error(std::string_view key, std::string_view expected, const nlohmann::json& got);
  void collect_unknown(const nlohmann::json& object, const std::string& prefix);

  nlohmann::json doc_;
  std::string origin_;
  std::set<std::string, std::less<>> read_keys_;
  std::vector<std::string> errors_;
};

struct Endpoint {
  std::string host;  // a name, an IPv4 address, or an IPv6 address without brackets
  uint16_t port = 0;

  // "host:port", or "[v6addr]:port" when the host contains ':'.
  std::string to_string() const;
  auto operator<=>(const Endpoint&) const = default;
};

// Parses "host:port" or "[v6addr]:port" with a port in [0, 65535].
// Errc::invalid_argument with a detail naming `text` and what is wrong.
Result<Endpoint> parse_endpoint(std::string_view text);

}  // namespace dtu::common
