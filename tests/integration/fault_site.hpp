// FaultSite: the group every fault scenario (fault_suite_test.cpp) runs — three managers
// (m1, m2, m3 on 127.0.0.<first>, +1, +2), four simulated DTUs whose lists name every manager
// (each in another order, so each manager starts with DTUs of its own), and workload services
// (tests/tools/fault_workload.cpp) allocating, streaming in-band and releasing on them. It
// gathers what the scenario needs to judge: the histories and DTU logs for fault_history.hpp's
// checks, the DTUs' truth for the views, and measured times.
//
// Main test thread only (Processes die with the thread that started them).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "fault_history.hpp"
#include "harness.hpp"
#include "site.hpp"

namespace dtu::testing::faults {

// How much slower than a release build the programs run: sanitizer builds
// (tests/integration/CMakeLists.txt defines DTU_FAULT_SLOWDOWN for DTU_SANITIZE and DTU_TSAN) run
// every scenario with heartbeats, leases, hold times and deadlines this many times longer, so
// that the same invariants hold there, the convergence bound (two heartbeat timeouts) included.
#ifdef DTU_FAULT_SLOWDOWN
inline constexpr int kSlowdown = DTU_FAULT_SLOWDOWN;
#else
inline constexpr int kSlowdown = 1;
#endif
// Heartbeats of the fault suite: a link is dead after 300 ms x 3 silent intervals (x kSlowdown).
inline constexpr int kHeartbeatMs = 300 * kSlowdown;
inline constexpr int kHeartbeatMisses = 3;
// Leases are short so that failovers fall inside them and renewals happen often (every 1 s).
inline constexpr std::uint32_t kLeaseMs = 3000 * kSlowdown;
// Bytes each workload streams in-band per lease (several 64 KiB chunks, so a failover can fall in
// the middle of a stream); dtu-simctl answers a sink's whole capture, up to kSimControlMaxAnswer.
inline constexpr std::uint64_t kStreamBytes = 256 * 1024;
// How long the suite waits for a step a healthy or healing group takes at once.
inline constexpr std::chrono::milliseconds kStepDeadline{15000 * kSlowdown};

// `ms` scaled by kSlowdown, for the margins a scenario keeps around a due time.
constexpr std::chrono::milliseconds slow(int ms) {
  return std::chrono::milliseconds(ms * kSlowdown);
}
// A workload's --hold-ms MIN:MAX, scaled by kSlowdown.
std::string hold_ms(int min_ms, int max_ms);

using Clock = std::chrono::steady_clock;

// CLOCK_MONOTONIC in µs, the clock of the workloads' histories.
std::int64_t monotonic_us();
// Milliseconds from `from` to now, for the printed timings.
long long ms_since(Clock::time_point from);

struct WorkloadSpec {
  std::string name;
  std::size_t manager = 0;          // index of the manager whose socket it talks to
  std::vector<std::size_t> agents;  // DTUs whose units it picks from (empty: every DTU)
  std::uint64_t seed = 1;
  std::string hold = "300:1500";  // ms it keeps each lease after streaming, MIN:MAX (hold_ms())
  int renew_ms = 0;               // it also renews each lease itself this often (0: only the library)
};

struct FaultSiteOptions {
  int first_octet = 100;                 // m1 at 127.0.0.<first_octet>
  std::vector<Environment> manager_env;  // extra environment per manager (libfaketime)
  std::vector<WorkloadSpec> workloads;   // empty: w1 at m1 and w2 at m2 over every DTU
  std::string manager_ip_prefix = "127.0.0.";
};

class FaultSite {
 public:
  static constexpr std::size_t kManagers = 3;
  static constexpr std::size_t kAgents = 4;

  explicit FaultSite(FaultSiteOptions options);
  ~FaultSite();
  FaultSite(const FaultSite&) = delete;
  FaultSite& operator=(const FaultSite&) = delete;

  // Starts the group and the DTUs and waits until every manager sees every DTU where it is.
  // Throws (the scenario cannot run) when the site does not come up.
  void start();
  // Starts the workloads and waits until each has had `grants` leases (the group under load).
  void start_workloads(std::size_t grants = 2);
  // Leases granted to workload `w` so far.
  std::size_t grants(std::size_t w) const;
  // Waits until every workload has had `more` grants beyond what it had when called: the group
  // serves again. False at the deadline.
  bool wait_progress(std::size_t more, std::chrono::milliseconds deadline = kStepDeadline);
  // SIGTERM to every workload; each finishes its iteration, releases and exits. CHECKs that
  // each exited 0.
  void stop_workloads();

  Site& site() { return site_; }
  Site::Manager& manager(std::size_t i) { return *managers_.at(i); }
  Site::Agent& agent(std::size_t i) { return *agents_.at(i).back(); }
  const std::string& dtu(std::size_t i) const { return dtu_ids_.at(i); }
  const std::string& workload_name(std::size_t w) const { return options_.workloads.at(w).name; }
  std::string history_path(std::size_t w) const;
  // Workload `w`'s history as recorded so far.
  WorkloadHistory history(std::size_t w) const;
  // The manager ids the DTU's agent lists, in its order.
  std::vector<std::size_t> agent_order(std::size_t i) const { return orders_.at(i); }
  // The manager (id) DTU `i` says it is connected to now; empty when none.
  std::string home_of(std::size_t i) const;
  // The DTUs homed at manager `m` now.
  std::vector<std::size_t> dtus_at(std::size_t m) const;

  // A DTU reboot as a power cut: its agent is frozen (SIGSTOP: it sends nothing more, not even
  // a FIN, so its manager still believes in the old link), and a new agent process of the same
  // DTU starts at once with the managers in `order`. The frozen one is killed (-9) by
  // end_power_cuts(). Returns the monotonic µs of the cut.
  std::int64_t reboot_agent(std::size_t i, const std::vector<std::size_t>& order);
  // Kills every frozen agent process (its sockets close then).
  void end_power_cuts();

  // The DTUs' truth and each manager's differences from it (fault_history.hpp compare_view).
  std::map<std::string, DtuTruth> truth();
  std::vector<std::string> view_differences(bool units);
  // Polls every manager's view until it equals the truth; the time from `from` when it did.
  std::optional<std::chrono::milliseconds> wait_converged(bool units, Clock::time_point from,
                                                          std::chrono::milliseconds deadline,
                                                          std::vector<std::string>* last = nullptr);
  // Invariant 2: every view equals the DTUs' truth within two heartbeat timeouts of `healed`.
  // CHECKs it, prints the time it took (and, when it missed the bound, whether it converged
  // later and what still differed at the bound).
  void check_converged(const std::string& scenario, const std::string& what, bool units,
                       Clock::time_point healed);

  // What the scenario recorded, for fault_history.hpp's checks.
  Facts facts();
  // Runs every history check and reports each violation (CHECK fails once per violation).
  void check_history(const std::string& scenario);

  // Logs watched from a point on: see(p, event) finds an event logged by p after mark().
  void mark();
  bool logged_since_mark(const Process& p, const std::string& event, const std::string& field = {},
                         const std::string& value = {}) const;

 private:
  std::vector<std::string> agent_argv_managers(const std::vector<std::size_t>& order) const;
  void start_agent(std::size_t i, std::vector<std::string> extra = {});

  FaultSiteOptions options_;
  Site site_;
  std::vector<Site::Manager*> managers_;
  std::vector<std::string> dtu_ids_;
  std::vector<std::vector<std::size_t>> orders_;
  std::vector<std::vector<Site::Agent*>> agents_;  // every incarnation, the current one last
  std::vector<std::unique_ptr<Process>> workloads_;
  std::map<std::string, std::int64_t> reboots_;
  std::map<const Process*, std::size_t> marks_;
};

}  // namespace dtu::testing::faults
