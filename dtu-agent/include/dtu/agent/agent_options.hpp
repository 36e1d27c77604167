#pragma once
// AgentOptions: how a dtu-agent is configured — defaults, then the JSON config file, then flags
// (main.cpp applies them in that order). Plain value; main thread only.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dtu/common/config.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

// The in-band listener's default TCP port.
inline constexpr std::uint16_t kDefaultInbandPort = 4712;

// --pick: how a DTU orders its managers before each connection round (manager_order.hpp).
inline constexpr const char* kPickFirst = "first";                // the list's order
inline constexpr const char* kPickLeastLoaded = "least-loaded";  // probe all, fewest DTUs first

struct AgentOptions {
  std::string id;                           // this DTU's id (required)
  std::vector<common::Endpoint> managers;   // the group's managers, in preference order
  std::string pick = kPickFirst;            // kPickFirst or kPickLeastLoaded
  std::string key_file = "/etc/dtubroker/dtu.key";  // this DTU's derived key
  std::string backend = "libusb";           // libusb (real USB) or sim (a JSON catalogue: demo, tests)
  std::string sim_devices;                  // device catalogue for the sim backend
  std::string sim_control;                  // Unix socket driving the sim backend (optional)
  // Where the in-band channel listens (DESIGN.md §2). Services reach it at this address; an
  // unspecified host (0.0.0.0) is replaced by the DTU's address as its manager sees it.
  common::Endpoint inband{"0.0.0.0", kDefaultInbandPort};
  // In-band connections this DTU holds at once, handshakes included; more are closed at accept
  // (log inband_refused). 0: no cap. A DTU is small: each channel is a TLS session and a socket.
  std::size_t max_inband_channels = 64;
  std::chrono::milliseconds connect_timeout{3000};   // TCP connect + TLS + hello, per manager
  std::chrono::milliseconds reconnect_min{200};      // first retry delay after losing all managers
  std::chrono::milliseconds reconnect_max{5000};     // cap on the retry delay
  std::string log_level = "info";
};

// Reads a dtu-agent config file into `options` (absent keys keep their value). Errors name
// the file, the key and what was expected; unknown keys are errors.
common::Result<void> apply_config(common::ConfigReader& config, AgentOptions& options);

// Checks the combination (id valid, at least one manager, known backend, …).
common::Result<void> validate(const AgentOptions& options);

}  // namespace dtu::agent
