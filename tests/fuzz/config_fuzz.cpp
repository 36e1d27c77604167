// Fuzz target: the daemons' configuration readers, the input being a JSON config document read
// through ConfigReader as a devmgr config (devmgr::apply_config) and as a dtu-agent config
// (agent::apply_config, then agent::validate). ConfigReader::load itself is message_fuzz's.
//   - nothing throws; a refusal is config_error with a detail that starts with the file name;
//   - a config it accepts has every member read: the same document with any one member set to
//     null is refused (unknown keys are errors, so a key that is neither read nor refused would
//     be a setting silently dropped);
//   - accepted options hold values in their documented ranges, and their endpoints print
//     (to_string) as text that parses back to them;
//   - validate accepts only what its contract names: a valid id, a manager, a known pick and
//     backend with the files it needs, 0 < reconnect_min <= reconnect_max.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include <nlohmann/json.hpp>

#include "dtu/agent/agent_options.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/records.hpp"
#include "dtu/devmgr/manager_options.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::ConfigReader;
using dtu::common::Endpoint;
using dtu::common::Errc;
using dtu::fuzz::has_code;
using nlohmann::json;

constexpr const char* kDevmgrFile = "fuzz-devmgr.json";
constexpr const char* kAgentFile = "fuzz-agent.json";
// Members nulled one at a time in an accepted document; beyond this the run only gets slower.
constexpr std::size_t kMaxNulled = 64;

void check_prints_back(const Endpoint& endpoint) {
  const auto again = dtu::common::parse_endpoint(endpoint.to_string());
  FUZZ_REQUIRE(again.ok());
  FUZZ_REQUIRE(*again == endpoint);
}

void check_refusal(const dtu::common::Error& error, const char* file) {
  FUZZ_REQUIRE(has_code(error, Errc::config_error));
  FUZZ_REQUIRE(error.detail.starts_with(std::string(file) + ": "));
}

bool devmgr_accepts(const json& doc, dtu::devmgr::ManagerOptions& options) {
  ConfigReader config(doc, kDevmgrFile);
  const auto applied = dtu::devmgr::apply_config(config, options);
  if (!applied.ok()) check_refusal(applied.error(), kDevmgrFile);
  return applied.ok();
}

void check_devmgr(const json& doc) {
  dtu::devmgr::ManagerOptions options;
  if (!devmgr_accepts(doc, options)) return;
  FUZZ_REQUIRE(options.heartbeat_misses >= 1 && options.heartbeat_misses <= 100);
  FUZZ_REQUIRE(options.max_frame_bytes >= 4096 && options.max_frame_bytes <= 64 * 1024 * 1024);
  FUZZ_REQUIRE(options.socket_mode <= 0777);
  FUZZ_REQUIRE(options.heartbeat_interval.count() >= 0 && options.handshake_timeout.count() >= 0);
  FUZZ_REQUIRE(options.orphan_grace.count() >= 0);
  check_prints_back(options.dtu_listen);
  if (options.peer_listen) check_prints_back(*options.peer_listen);
  if (options.metrics_listen) check_prints_back(*options.metrics_listen);
  for (const auto& pointer : dtu::fuzz::member_pointers(doc, kMaxNulled)) {
    json nulled = doc;
    nulled[pointer] = nullptr;
    dtu::devmgr::ManagerOptions ignored;
    if (devmgr_accepts(nulled, ignored)) {
      std::fprintf(stderr, "accepted with %s null\n", pointer.to_string().c_str());
      dtu::fuzz::violated("a devmgr config with a null member is refused", __FILE__, __LINE__);
    }
  }
}

bool agent_accepts(const json& doc, dtu::agent::AgentOptions& options) {
  ConfigReader config(doc, kAgentFile);
  const auto applied = dtu::agent::apply_config(config, options);
  if (!applied.ok()) check_refusal(applied.error(), kAgentFile);
  return applied.ok();
}

void check_validate(const dtu::agent::AgentOptions& options) {
  const auto valid = dtu::agent::validate(options);
  if (!valid.ok()) {
    FUZZ_REQUIRE(has_code(valid.error(), Errc::config_error));
    FUZZ_REQUIRE(!valid.error().detail.empty());
    return;
  }
  FUZZ_REQUIRE(dtu::common::is_valid_id(options.id));
  FUZZ_REQUIRE(!options.managers.empty());
  FUZZ_REQUIRE(options.pick == dtu::agent::kPickFirst || options.pick == dtu::agent::kPickLeastLoaded);
  if (options.backend == "sim") {
    FUZZ_REQUIRE(!options.sim_devices.empty());
  } else {
    FUZZ_REQUIRE(options.backend == "libusb" && options.sim_devices.empty() && options.sim_control.empty());
  }
  FUZZ_REQUIRE(options.reconnect_min.count() > 0 && options.reconnect_min <= options.reconnect_max);
}

void check_agent(const json& doc) {
  dtu::agent::AgentOptions options;
  if (!agent_accepts(doc, options)) return;
  FUZZ_REQUIRE(options.connect_timeout.count() >= 0);
  for (const Endpoint& manager : options.managers) check_prints_back(manager);
  check_prints_back(options.inband);
  check_validate(options);
  for (const auto& pointer : dtu::fuzz::member_pointers(doc, kMaxNulled)) {
    json nulled = doc;
    nulled[pointer] = nullptr;
    dtu::agent::AgentOptions ignored;
    if (agent_accepts(nulled, ignored)) {
      std::fprintf(stderr, "accepted with %s null\n", pointer.to_string().c_str());
      dtu::fuzz::violated("a dtu-agent config with a null member is refused", __FILE__, __LINE__);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  try {
    check_devmgr(doc);
    check_agent(doc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes apply_config or validate", __FILE__, __LINE__);
  }
  return 0;
}
