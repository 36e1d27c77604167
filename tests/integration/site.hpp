// Site: a dtubroker site for integration tests — keys, devmgr and dtu-agent processes on
// loopback addresses, and the command-line tools run against them. Each test gives its managers
// their own 127.0.0.x address so tests can run in parallel. Main test thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "harness.hpp"

namespace dtu::testing {

// How long a test waits for something a healthy site does at once (start, connect, report).
inline constexpr std::chrono::milliseconds kSettle{10000};
// Heartbeats for tests: failures are noticed within 3 x 200 ms.
inline constexpr int kTestHeartbeatMs = 200;
inline constexpr int kTestHeartbeatMisses = 3;
// The mesh port of every manager of a test group (each manager has its own address).
inline constexpr int kMeshPort = 4720;

class Site {
 public:
  struct Manager {
    std::string id;
    std::string address;  // "127.0.0.x:port" where DTUs connect
    std::filesystem::path socket;
    std::unique_ptr<Process> process;
    std::vector<std::string> argv;  // how it was started (restart_manager starts it again)
    Environment env;                // its extra environment (libfaketime, say), kept on restart
  };
  struct Agent {
    std::string id;
    std::filesystem::path sim_socket;
    std::unique_ptr<Process> process;
  };

  Site();

  // The heartbeat every manager started from now on gets (default kTestHeartbeatMs x
  // kTestHeartbeatMisses); a link is declared dead after interval x misses.
  void set_heartbeat(int interval_ms, int misses);
  std::chrono::milliseconds heartbeat_timeout() const {
    return std::chrono::milliseconds(heartbeat_ms_ * heartbeat_misses_);
  }

  const TempDir& dir() const { return dir_; }
  // The site DTU key file (generated once with devmgrctl keygen).
  std::filesystem::path site_key();
  // A DTU's derived key file (devmgrctl keygen --dtu ID --site-key ...).
  std::filesystem::path dtu_key(const std::string& dtu);

  // Starts a devmgr on `ip` (port chosen by the kernel) and waits until it listens.
  Manager& start_manager(const std::string& id, const std::string& ip, std::vector<std::string> extra = {});
  struct Member {
    std::string id;
    std::string ip;
    Environment env = {};  // extra environment of this manager's process
  };
  // A group: writes the group list (each member's mesh address is ip:kMeshPort) and the group key,
  // starts every manager at once (none waits for another) and then waits until each listens.
  // `extra` goes to every manager. The managers come back in the order of `members`.
  std::vector<Manager*> start_group(const std::vector<Member>& members, const std::vector<std::string>& extra = {});
  // The group key file (devmgrctl keygen), and the group list start_group wrote.
  std::filesystem::path group_key();
  std::filesystem::path group_file() const { return dir_ / "group.json"; }
  // `devmgrctl group --json`, parsed; CHECKs the command succeeded.
  nlohmann::json group(const Manager& m);
  // The member `id` as `m` sees it in group(m), or null.
  nlohmann::json member(const Manager& m, const std::string& id);
  // Waits until `m` sees `peers` peers in state "up".
  bool wait_peers_up(const Manager& m, std::size_t peers, std::chrono::milliseconds deadline = kSettle);
  // Kills a manager with SIGKILL (a crash: it cleans nothing up) and waits until it has exited.
  void kill_manager(Manager& m);
  // Starts a killed (or stopped) manager again with its arguments, on the same DTU address and
  // port and the same socket, and waits until it listens. Its log is <id>-2.err, -3, ….
  void restart_manager(Manager& m);
  // Starts a dtu-agent on the simulated backend (demo/sim-devices.json) with its own derived key,
  // unless `extra` gives --backend or --key; its sim socket is <id>-sim.sock unless `extra`
  // gives --sim-control.
  Agent& start_agent(const std::string& id, const std::vector<std::string>& managers,
                     std::vector<std::string> extra = {});

  // Kills an agent with SIGKILL (a DTU's power cut) and waits until it has exited. Start it again
  // with start_agent (same id: same key, same sim socket; its log is <id>-2.err, …).
  void kill_agent(Agent& a);

  CommandResult devmgrctl(const Manager& m, std::vector<std::string> args);
  // `devmgrctl devices --json`, parsed; CHECKs the command succeeded.
  nlohmann::json devices(const Manager& m);
  // Unit `unit` of `device` on DTU `dtu` as devices() shows it (state, holder, lease, …); null
  // when the manager does not list it.
  nlohmann::json unit(const Manager& m, const std::string& dtu, const std::string& device,
                      std::uint32_t unit);
  CommandResult simctl(const Agent& a, std::vector<std::string> args);

 private:
  // Waits until the manager logs that it listens; its DTU address.
  std::string wait_listening(Manager& m);

  TempDir dir_;
  std::filesystem::path site_key_;
  std::filesystem::path group_key_;
  std::map<std::string, std::filesystem::path> dtu_keys_;
  int heartbeat_ms_ = kTestHeartbeatMs;
  int heartbeat_misses_ = kTestHeartbeatMisses;
  std::vector<std::unique_ptr<Manager>> managers_;
  std::vector<std::unique_ptr<Agent>> agents_;
};

}  // namespace dtu::testing
