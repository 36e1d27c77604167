#include "dtu/devmgr/manager_options.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

using dtu::common::ConfigReader;
using dtu::devmgr::apply_config;
using dtu::devmgr::ManagerOptions;

TEST_CASE("the example devmgr config in packaging/ is valid and read completely") {
  auto config = ConfigReader::load(DTU_SOURCE_DIR "/packaging/config/devmgr.json");
  REQUIRE(config.ok());
  ManagerOptions options;
  auto applied = apply_config(*config, options);
  REQUIRE_MESSAGE(applied.ok(), (applied.ok() ? "" : applied.error().describe()));
  CHECK(options.id == "m1");
  CHECK(options.dtu_listen.port == 4711);
  CHECK(options.heartbeat_interval == std::chrono::seconds(1));
  CHECK(options.heartbeat_misses == 3);
  CHECK(options.socket_mode == 0660);
  CHECK(options.policy_file == "/etc/dtubroker/policy.json");
}

TEST_CASE("socket_mode is an octal string: anything else names the key") {
  ManagerOptions options;
  ConfigReader good(nlohmann::json{{"socket_mode", "0666"}}, "devmgr.json");
  REQUIRE(apply_config(good, options).ok());
  CHECK(options.socket_mode == 0666);
  for (const char* bad : {"666x", "", "0999", "01777", "rw-rw----"}) {
    ConfigReader config(nlohmann::json{{"socket_mode", bad}}, "devmgr.json");
    auto applied = apply_config(config, options);
    if (std::string(bad).empty()) {
      CHECK(applied.ok());  // empty: the key keeps its default
      continue;
    }
    REQUIRE_FALSE(applied.ok());
    CHECK(applied.error().detail.find("socket_mode") != std::string::npos);
  }
}

TEST_CASE("a devmgr config error names the file, the key and what was expected") {
  ConfigReader config(nlohmann::json{{"heartbeat_misses", 0}, {"dtu_listen", "nowhere"}}, "devmgr.json");
  ManagerOptions options;
  auto applied = apply_config(config, options);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().detail.find("devmgr.json") != std::string::npos);
  CHECK(applied.error().detail.find("heartbeat_misses") != std::string::npos);
}

TEST_CASE("a devmgr config with an unknown key is refused") {
  ConfigReader config(nlohmann::json{{"hearbeat_misses", 3}}, "devmgr.json");
  ManagerOptions options;
  auto applied = apply_config(config, options);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().detail.find("unknown key 'hearbeat_misses'") != std::string::npos);
}

TEST_CASE("a bad dtu_listen address in the config is named") {
  ConfigReader config(nlohmann::json{{"dtu_listen", "127.0.0.1"}}, "devmgr.json");
  ManagerOptions options;
  auto applied = apply_config(config, options);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().detail.find("devmgr.json: key 'dtu_listen'") != std::string::npos);
}

TEST_CASE("the resource limits are read from the config, 0 turning one off, and a negative one is refused") {
  ManagerOptions options;
  CHECK(options.max_handshakes_per_source == 64);
  CHECK(options.max_pending_requests == 256);
  ConfigReader config(nlohmann::json{{"max_handshakes_per_source", 8},
                                     {"max_handshakes", 0},
                                     {"max_connections_per_uid", 16},
                                     {"max_finders_per_service", 32},
                                     {"max_pending_requests", 4}},
                      "devmgr.json");
  REQUIRE(apply_config(config, options).ok());
  CHECK(options.max_handshakes_per_source == 8);
  CHECK(options.max_handshakes == 0);
  CHECK(options.max_connections_per_uid == 16);
  CHECK(options.max_finders_per_service == 32);
  CHECK(options.max_pending_requests == 4);
  ConfigReader bad(nlohmann::json{{"max_finders_per_service", -1}}, "devmgr.json");
  auto applied = apply_config(bad, options);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().detail.find("max_finders_per_service") != std::string::npos);
}
