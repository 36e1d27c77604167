#include "dtu/agent/agent_options.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

using dtu::agent::AgentOptions;
using dtu::agent::apply_config;
using dtu::agent::validate;
using dtu::common::ConfigReader;

TEST_CASE("the example dtu-agent config in packaging/ is valid and read completely") {
  auto config = ConfigReader::load(DTU_SOURCE_DIR "/packaging/config/dtu-agent.json");
  REQUIRE(config.ok());
  AgentOptions options;
  auto applied = apply_config(*config, options);
  REQUIRE_MESSAGE(applied.ok(), (applied.ok() ? "" : applied.error().describe()));
  CHECK(options.id == "dtu-1");
  REQUIRE(options.managers.size() == 2);
  CHECK(options.managers[1].port == 4711);
  CHECK(options.reconnect_min == std::chrono::milliseconds(200));
  CHECK(options.backend == "libusb");
  CHECK(options.inband.port == 4712);
  CHECK(options.max_inband_channels == 64);
  CHECK(validate(options).ok());
}

TEST_CASE("agent options without a manager or with a bad id are refused with a reason") {
  AgentOptions options;
  options.id = "dtu 1";
  options.sim_devices = "x.json";
  auto bad_id = validate(options);
  REQUIRE_FALSE(bad_id.ok());
  CHECK(bad_id.error().detail.find("DTU id 'dtu 1'") != std::string::npos);
  options.id = "dtu-1";
  auto no_manager = validate(options);
  REQUIRE_FALSE(no_manager.ok());
  CHECK(no_manager.error().detail.find("no manager") != std::string::npos);
}

TEST_CASE("a bad manager address in the agent config names the key") {
  ConfigReader config(nlohmann::json{{"managers", {"127.0.0.1:4711", "::1"}}}, "dtu-agent.json");
  AgentOptions options;
  auto applied = apply_config(config, options);
  REQUIRE_FALSE(applied.ok());
  CHECK(applied.error().detail.find("dtu-agent.json: key 'managers'") != std::string::npos);
}

TEST_CASE("agent options accept pick first and least-loaded and refuse any other") {
  AgentOptions options;
  options.id = "dtu-1";
  options.managers.push_back({"127.0.0.1", 4711});
  options.backend = "sim";
  options.sim_devices = "x.json";
  options.pick = "least-loaded";
  CHECK(validate(options).ok());
  options.pick = "first";
  CHECK(validate(options).ok());
  options.pick = "random";
  auto refused = validate(options);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().detail.find("pick 'random': expected 'first' or 'least-loaded'") != std::string::npos);
}

TEST_CASE("max_inband_channels is read from the agent config, 0 allowed and a negative count refused") {
  AgentOptions options;
  ConfigReader uncapped(nlohmann::json{{"max_inband_channels", 0}}, "dtu-agent.json");
  REQUIRE(apply_config(uncapped, options).ok());
  CHECK(options.max_inband_channels == 0);
  ConfigReader negative(nlohmann::json{{"max_inband_channels", -1}}, "dtu-agent.json");
  auto refused = apply_config(negative, options);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().detail.find("max_inband_channels") != std::string::npos);
}
