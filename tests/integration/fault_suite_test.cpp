// The fault suite (issue 6, DESIGN.md §6 and §10): real devmgr, dtu-agent and workload processes
// (fault_site.hpp); a fault under load; then the invariants on what was recorded — never two
// holders of a unit, no allocation lost, in-band byte counts complete (fault_history.hpp) — and
// every manager's view equal to the DTUs' truth within two heartbeat timeouts after healing.
// Each scenario prints its measured detection and re-home times (by polling the logs from the
// test: the managers' own clocks may be skewed); none is asserted against a number.
//
// Deterministic seeds (the workloads' unit and hold choices), bounded loops, loopback addresses
// 127.0.0.100-117, and for the partition a private network namespace of the test's own.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "fault_history.hpp"
#include "fault_site.hpp"
#include "harness.hpp"
#include "site.hpp"

namespace {

using namespace dtu::testing;
using namespace dtu::testing::faults;
using std::chrono::milliseconds;

// How long a failover may take before the scenario gives up waiting for it (not a bound on
// the failover: the times are printed, only their existence is asserted).
constexpr milliseconds kFailoverDeadline{15000};

// What a failover of manager `victim` looked like from outside, in ms after the fault.
struct Failover {
  std::optional<long long> dtus_detected;   // every DTU homed there logged the loss
  std::optional<long long> peers_detected;  // every other manager logged peer_down for it
  std::optional<long long> rehomed;         // every such DTU connected to another manager
};

// Polls the logs (marked before the fault) until the DTUs `dtus` of manager `victim` have
// re-homed and its peers (when `peers`) noticed, or the deadline.
Failover watch_failover(FaultSite& fs, std::size_t victim, const std::vector<std::size_t>& dtus, bool peers,
                        Clock::time_point t0) {
  Failover f;
  const std::string victim_id = fs.manager(victim).id;
  eventually(
      [&] {
        if (!f.dtus_detected) {
          bool all = true;
          for (std::size_t d : dtus) all = all && fs.logged_since_mark(*fs.agent(d).process, "manager_lost");
          if (all) f.dtus_detected = ms_since(t0);
        }
        if (!f.peers_detected && peers) {
          bool all = true;
          for (std::size_t m = 0; m < FaultSite::kManagers; ++m) {
            if (m != victim)
              all = all && fs.logged_since_mark(*fs.manager(m).process, "peer_down", "peer", victim_id);
          }
          if (all) f.peers_detected = ms_since(t0);
        }
        if (!f.rehomed) {
          bool all = true;
          for (std::size_t d : dtus) {
            const std::string home = fs.home_of(d);
            all = all && fs.logged_since_mark(*fs.agent(d).process, "connected") && !home.empty() &&
                  home != victim_id;
          }
          if (all) f.rehomed = ms_since(t0);
        }
        return f.dtus_detected && (f.peers_detected || !peers) && f.rehomed;
      },
      kFailoverDeadline);
  return f;
}

std::string ms_text(const std::optional<long long>& ms) {
  return ms ? std::to_string(*ms) + " ms"
            : std::string("not within ") + std::to_string(kFailoverDeadline.count()) + " ms";
}

std::string dtu_list(FaultSite& fs, const std::vector<std::size_t>& dtus) {
  std::string out;
  for (std::size_t d : dtus) out += (out.empty() ? "" : ", ") + fs.dtu(d) + " -> " + fs.home_of(d);
  return out;
}

void report_failover(FaultSite& fs, const std::string& scenario, const Failover& f,
                     const std::vector<std::size_t>& dtus, bool peers) {
  MESSAGE(scenario << ": detection: DTUs " << ms_text(f.dtus_detected)
                   << (peers ? ", peers " + ms_text(f.peers_detected) : std::string()) << "; re-home "
                   << ms_text(f.rehomed) << " (" << dtu_list(fs, dtus) << ")");
  CHECK_MESSAGE(f.dtus_detected.has_value(), scenario << ": the DTUs never noticed their manager was gone");
  if (peers) CHECK_MESSAGE(f.peers_detected.has_value(), scenario << ": the other managers never noticed");
  CHECK_MESSAGE(f.rehomed.has_value(), scenario << ": the DTUs did not re-home: " << dtu_list(fs, dtus));
}

// The end of every scenario: the group serves again, the workloads stop, the views hold the
// DTUs' leases, and the histories hold the invariants.
void finish(FaultSite& fs, const std::string& scenario) {
  CHECK_MESSAGE(fs.wait_progress(2), scenario << ": the workloads made no progress after healing");
  fs.stop_workloads();
  fs.check_converged(scenario, "units and leases, workloads stopped", true, Clock::now());
  fs.check_history(scenario);
}

// Whether manager `m` logged that it lost DTU `dtu` (its link, or a newer claim elsewhere).
bool manager_dropped(FaultSite& fs, std::size_t m, const std::string& dtu) {
  const auto& p = *fs.manager(m).process;
  return fs.logged_since_mark(p, "ownership_lost", "dtu", dtu) ||
         fs.logged_since_mark(p, "dtu_lost", "dtu", dtu);
}

// The calling thread in a network namespace of its own with loopback up, for as long as this
// lives: every process the test starts meanwhile is inside it; the host's network is never
// touched. Throws with the reason when the namespace cannot be made.
class PrivateNetwork {
 public:
  PrivateNetwork() {
    original_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (original_ < 0)
      throw std::system_error(errno, std::system_category(), "open /proc/thread-self/ns/net");
    if (::unshare(CLONE_NEWNET) != 0) {
      const int e = errno;
      ::close(original_);
      throw std::system_error(e, std::system_category(),
                              "unshare(CLONE_NEWNET) (the suite runs as root in CI)");
    }
    auto up = run_command({"ip", "link", "set", "lo", "up"}, milliseconds(10000));
    if (up.exit_code != 0) {
      leave();
      throw std::runtime_error("ip link set lo up in the new namespace failed: " + up.err);
    }
  }
  ~PrivateNetwork() { leave(); }
  PrivateNetwork(const PrivateNetwork&) = delete;
  PrivateNetwork& operator=(const PrivateNetwork&) = delete;

  // Runs nft inside the namespace; the error text when it fails.
  static std::optional<std::string> nft(std::vector<std::string> args) {
    args.insert(args.begin(), "nft");
    try {
      auto r = run_command(args, milliseconds(10000));
      if (r.exit_code != 0) return "nft exited " + std::to_string(r.exit_code) + ": " + r.err;
    } catch (const std::exception& e) {
      return std::string("cannot run nft (scripts/deps.sh test installs nftables): ") + e.what();
    }
    return std::nullopt;
  }

 private:
  void leave() {
    if (original_ < 0) return;
    ::setns(original_, CLONE_NEWNET);
    ::close(original_);
    original_ = -1;
  }
  int original_ = -1;
};

// The site of a scenario whose managers are at 127.0.0.<first_octet>, +1, +2.
FaultSiteOptions options(int first_octet) {
  FaultSiteOptions o;
  o.first_octet = first_octet;
  return o;
}

// Writes a libfaketime offset ("+0", "+600", …) to a FAKETIME_TIMESTAMP_FILE.
void set_fake_offset(const std::filesystem::path& file, const std::string& offset) {
  std::ofstream(file, std::ios::trunc) << offset << '\n';
}

Environment faketime(const std::string& offset,
                     const std::optional<std::filesystem::path>& file = std::nullopt) {
  Environment env = {{"LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"},
                     {"FAKETIME_DONT_FAKE_MONOTONIC", "1"}};
  if (file) {
    env["FAKETIME_TIMESTAMP_FILE"] = file->string();
    env["FAKETIME_CACHE_DURATION"] = "1";
  } else {
    env["FAKETIME"] = offset;
  }
  return env;
}

}  // namespace

TEST_CASE("Fault 1: kill -9 a manager under load, then restart it") {
  const std::string scenario = "fault 1 (kill -9 m1)";
  FaultSite fs(options(100));
  fs.start();
  fs.start_workloads();
  // m1: DTUs 1 and 4, and workload w1's manager.
  const auto dtus = fs.dtus_at(0);
  REQUIRE_MESSAGE(!dtus.empty(), "m1 has no DTU to fail over");
  fs.mark();
  const auto t0 = Clock::now();
  fs.site().kill_manager(fs.manager(0));
  const Failover f = watch_failover(fs, 0, dtus, true, t0);
  report_failover(fs, scenario, f, dtus, true);

  fs.site().restart_manager(fs.manager(0));
  const auto healed = Clock::now();
  MESSAGE(scenario << ": m1 back after " << ms_since(t0) << " ms");
  fs.check_converged(scenario, "devices and owners", false, healed);
  finish(fs, scenario);
}

TEST_CASE("Fault 2: SIGSTOP a manager past the heartbeat timeout, then SIGCONT") {
  const std::string scenario = "fault 2 (SIGSTOP m2)";
  FaultSite fs(options(103));
  fs.start();
  fs.start_workloads();
  // m2: DTU 2 and workload w2's manager.
  const auto dtus = fs.dtus_at(1);
  REQUIRE_MESSAGE(!dtus.empty(), "m2 has no DTU to fail over");
  fs.mark();
  const auto t0 = Clock::now();
  fs.manager(1).process->signal(SIGSTOP);
  const Failover f = watch_failover(fs, 1, dtus, true, t0);
  // Past the heartbeat timeout in any case, so that m2 wakes up with stale beliefs.
  const auto timeout = fs.site().heartbeat_timeout();
  if (Clock::now() - t0 < 2 * timeout) std::this_thread::sleep_for(2 * timeout - (Clock::now() - t0));
  fs.manager(1).process->signal(SIGCONT);
  const auto healed = Clock::now();
  report_failover(fs, scenario, f, dtus, true);
  MESSAGE(scenario << ": m2 stopped for " << ms_since(t0) << " ms");

  // Its stale claims lose: it learns it lost its DTUs (link gone or a newer claim) …
  std::optional<long long> learnt;
  eventually(
      [&] {
        for (std::size_t d : dtus) {
          if (!manager_dropped(fs, 1, fs.dtu(d))) return false;
        }
        learnt = ms_since(healed);
        return true;
      },
      kFailoverDeadline);
  MESSAGE(scenario << ": m2 dropped its DTUs " << ms_text(learnt) << " after SIGCONT");
  CHECK_MESSAGE(learnt.has_value(), scenario << ": m2 never logged dtu_lost or ownership_lost for its DTUs");
  // … and everyone, m2 included, agrees with the DTUs.
  fs.check_converged(scenario, "devices and owners", false, healed);
  finish(fs, scenario);
}

TEST_CASE("Fault 3: a manager partitioned from the group inside a private network namespace, then healed") {
  const std::string scenario = "fault 3 (partition m3)";
  std::optional<PrivateNetwork> net;
  try {
    net.emplace();
  } catch (const std::exception& e) {
    FAIL("cannot make a private network namespace for the partition: " << e.what());
  }
  // Inside the namespace the addresses are ours alone.
  FaultSite fs(options(10));
  fs.start();
  fs.start_workloads();
  // m3: DTU 3; the workloads talk to m1 and m2 and lease DTU 3's units through m3.
  const auto dtus = fs.dtus_at(2);
  REQUIRE_MESSAGE(!dtus.empty(), "m3 has no DTU to fail over");
  const std::string m3_ip = "127.0.0.12";
  const std::string table = "dtu_fault_partition";
  fs.mark();
  const auto t0 = Clock::now();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"add", "table", "inet", table},
           {"add", "chain", "inet", table, "output", "{", "type", "filter", "hook", "output", "priority", "0",
            ";", "policy", "accept", ";", "}"},
           {"add", "rule", "inet", table, "output", "ip", "daddr", m3_ip, "drop"},
           {"add", "rule", "inet", table, "output", "ip", "saddr", m3_ip, "drop"}}) {
    auto failed = PrivateNetwork::nft(args);
    REQUIRE_MESSAGE(!failed, "partition rule failed: " << *failed);
  }
  const Failover f = watch_failover(fs, 2, dtus, true, t0);
  report_failover(fs, scenario, f, dtus, true);
  // m3 on its side notices it lost its DTUs and its peers.
  std::optional<long long> isolated;
  eventually(
      [&] {
        for (std::size_t d : dtus) {
          if (!manager_dropped(fs, 2, fs.dtu(d))) return false;
        }
        if (!fs.logged_since_mark(*fs.manager(2).process, "peer_down")) return false;
        isolated = ms_since(t0);
        return true;
      },
      kFailoverDeadline);
  MESSAGE(scenario << ": m3 saw itself cut off " << ms_text(isolated) << " after the partition");
  CHECK_MESSAGE(isolated.has_value(), scenario << ": m3 never dropped its DTUs or its peers");

  auto healed_failed = PrivateNetwork::nft({"delete", "table", "inet", table});
  REQUIRE_MESSAGE(!healed_failed, "healing failed: " << *healed_failed);
  const auto healed = Clock::now();
  fs.check_converged(scenario, "devices and owners", false, healed);
  CHECK(fs.site().wait_peers_up(fs.manager(2), FaultSite::kManagers - 1));
  finish(fs, scenario);
}

TEST_CASE("Fault 4: a DTU rebooted to a different manager within one heartbeat period") {
  const std::string scenario = "fault 4 (DTU reboot)";
  FaultSite fs(options(106));
  fs.start();
  fs.start_workloads();
  // DTU 1 at m1 reboots and comes back preferring m2, while m1 still holds its old link.
  REQUIRE(fs.home_of(0) == fs.manager(0).id);
  fs.mark();
  const auto t0 = Clock::now();
  fs.reboot_agent(0, {1, 0, 2});
  std::optional<long long> rehomed;
  eventually(
      [&] {
        if (fs.home_of(0) != fs.manager(1).id) return false;
        rehomed = ms_since(t0);
        return true;
      },
      kFailoverDeadline);
  // m1's old session is still alive (it has heard nothing for less than its heartbeat timeout):
  // the newer claim at m2 must win at m1 as everywhere.
  std::optional<long long> m1_dropped;
  eventually(
      [&] {
        if (!manager_dropped(fs, 0, fs.dtu(0))) return false;
        m1_dropped = ms_since(t0);
        return true;
      },
      kFailoverDeadline);
  // The old process dies for good only now (its link closes then).
  const bool by_claim = fs.logged_since_mark(*fs.manager(0).process, "ownership_lost", "dtu", fs.dtu(0));
  fs.end_power_cuts();
  MESSAGE(scenario << ": re-home (power cut to connected at m2) " << ms_text(rehomed)
                   << "; m1 dropped the old claim " << ms_text(m1_dropped)
                   << std::string(by_claim ? " for the newer claim" : " by its link's heartbeat timeout")
                   << " (heartbeat period " << kHeartbeatMs << " ms, timeout "
                   << fs.site().heartbeat_timeout().count() << " ms)");
  REQUIRE_MESSAGE(rehomed.has_value(), scenario << ": the rebooted DTU did not connect to m2");
  WARN_MESSAGE(*rehomed <= kHeartbeatMs, scenario
                                             << ": the reboot took longer than one heartbeat period; the "
                                                "two-owners window was not exercised");
  CHECK_MESSAGE(by_claim,
                scenario << ": m1 did not give DTU 1 up for the newer claim (no ownership_lost dtu="
                         << fs.dtu(0) << "); it dropped it "
                         << std::string(m1_dropped ? "only by its own link's heartbeat timeout" : "never"));
  fs.check_converged(scenario, "devices and owners", false, t0 + milliseconds(*rehomed));
  finish(fs, scenario);
}

TEST_CASE(
    "Fault 5: managers at +5 min and -5 min and a clock jump keep ownership ordered and leases on monotonic "
    "time") {
  const std::string scenario = "fault 5 (clock skew)";
  const TempDir clocks("dtu-fault-clock");
  const auto jump_file = clocks / "m2.faketime";
  set_fake_offset(jump_file, "+0");
  auto o = options(109);
  o.manager_env = {faketime("+300"), faketime("", jump_file), faketime("-300")};
  FaultSite fs(o);
  fs.start();
  {
    // The group agrees on one universal clock, the median of the three (m2's): each manager's
    // correction converges to minus its own skew.
    const double expected_ms[] = {-300000.0, 0.0, 300000.0};
    std::string offsets;
    const bool agreed = eventually(
        [&] {
          offsets.clear();
          bool all = true;
          for (std::size_t i = 0; i < 3; ++i) {
            const auto g = fs.site().group(fs.manager(i));
            const double got = g.value("universal_offset_ms", 1e12);
            offsets += fs.manager(i).id + "=" + std::to_string(got) + "ms ";
            all = all && std::abs(got - expected_ms[i]) < 5000.0;
          }
          return all;
        },
        kFailoverDeadline);
    MESSAGE(scenario << ": universal clock corrections " << offsets);
    REQUIRE_MESSAGE(agreed, scenario << ": the managers' universal clocks did not converge on the median: "
                                     << offsets);
  }
  fs.start_workloads();
  // DTU 1 at m1 (+5 min) reboots to m3 (-5 min): its new claim must beat the old one although
  // m3's wall clock is ten minutes behind m1's.
  REQUIRE(fs.home_of(0) == fs.manager(0).id);
  fs.mark();
  const auto t0 = Clock::now();
  fs.reboot_agent(0, {2, 0, 1});
  std::optional<long long> rehomed;
  eventually(
      [&] {
        if (fs.home_of(0) != fs.manager(2).id) return false;
        rehomed = ms_since(t0);
        return true;
      },
      kFailoverDeadline);
  eventually([&] { return manager_dropped(fs, 0, fs.dtu(0)); }, kFailoverDeadline);
  const bool by_claim = fs.logged_since_mark(*fs.manager(0).process, "ownership_lost", "dtu", fs.dtu(0));
  fs.end_power_cuts();
  MESSAGE(scenario << ": DTU 1 rebooted from m1 (+5 min) to m3 (-5 min): connected after " << ms_text(rehomed)
                   << "; m1 dropped it "
                   << std::string(by_claim ? "for the newer claim" : "by heartbeat timeout or never"));
  REQUIRE(rehomed.has_value());
  CHECK_MESSAGE(by_claim,
                scenario << ": m1 (+5 min) did not yield DTU 1 to m3's newer claim (no ownership_lost)");
  fs.check_converged(scenario, "devices and owners after the reboot", false, t0 + milliseconds(*rehomed));

  // A jump: m2's wall clock leaps 10 minutes forward under load. Leases run on monotonic time:
  // none may end early (no allocation lost, checked on the histories).
  set_fake_offset(jump_file, "+600");
  const auto jumped = Clock::now();
  CHECK_MESSAGE(fs.wait_progress(3), scenario << ": the workloads stalled after the clock jump");
  MESSAGE(scenario << ": m2 jumped +10 min; the group kept serving for " << ms_since(jumped) << " ms");
  fs.check_converged(scenario, "devices and owners after the jump", false, Clock::now());
  finish(fs, scenario);
}

TEST_CASE("Fault 6: the owner manager dies during a lease renewal") {
  const std::string scenario = "fault 6 (m2 dies mid-renewal)";
  // w1 at m1 leases only DTU 2's units (owned by m2) and holds each lease through renewals;
  // w2 at m3 shares DTU 2 and uses DTU 3.
  auto o = options(112);
  o.workloads = {{"w1", 0, {1}, 61, "2500:3500"}, {"w2", 2, {1, 2}, 62, "300:1500"}};
  FaultSite fs(o);
  fs.start();
  fs.start_workloads(1);
  REQUIRE(fs.home_of(1) == fs.manager(1).id);
  // The next renewal of w1's current lease: a third of its length after the grant (the client
  // library's schedule), on the monotonic clock the history uses.
  const auto history = parse_history("w1", [&] {
    std::ifstream in(fs.history_path(0));
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }());
  REQUIRE(!history.leases.empty());
  const auto& lease = history.leases.back();
  std::int64_t renewal = lease.granted_us + kLeaseMs * 1000 / 3;
  while (renewal < monotonic_us()) renewal += kLeaseMs * 1000 / 3;
  std::this_thread::sleep_for(std::chrono::microseconds(renewal - monotonic_us() + 5000));
  fs.mark();
  const auto t0 = Clock::now();
  fs.site().kill_manager(fs.manager(1));
  MESSAGE(scenario << ": killed m2 " << (monotonic_us() - renewal) / 1000
                   << " ms after the scheduled renewal of " << lease.lease << " ("
                   << std::string(lease.given_up_us ? "already given up" : "held") << ")");
  const Failover f = watch_failover(fs, 1, {1}, true, t0);
  report_failover(fs, scenario, f, {1}, true);
  // The lease must live on: w1 keeps renewing it through the new owner.
  CHECK_MESSAGE(fs.wait_progress(2), scenario << ": the workloads stalled after the failover");
  fs.site().restart_manager(fs.manager(1));
  fs.check_converged(scenario, "devices and owners", false, Clock::now());
  finish(fs, scenario);
}

TEST_CASE("Fault 7: rolling restart of every manager through drain, restart, undrain") {
  const std::string scenario = "fault 7 (rolling restart)";
  FaultSite fs(options(115));
  fs.start();
  fs.start_workloads();
  for (std::size_t m = 0; m < FaultSite::kManagers; ++m) {
    auto& manager = fs.manager(m);
    const auto held = fs.dtus_at(m);
    fs.mark();
    const auto t0 = Clock::now();
    auto drained = fs.site().devmgrctl(manager, {"drain", "--wait-ms", "10000"});
    const auto drain_ms = ms_since(t0);
    MESSAGE(scenario << ": drain " << manager.id << " (" << held.size() << " DTUs) answered after "
                     << drain_ms << " ms, exit " << drained.exit_code << ": " << drained.out << drained.err);
    REQUIRE_MESSAGE(drained.exit_code == 0, scenario << ": devmgrctl drain " << manager.id << " failed");
    CHECK_MESSAGE(fs.dtus_at(m).empty(),
                  scenario << ": " << manager.id << " still holds DTUs after drain: " << dtu_list(fs, held));
    // A drained manager goes down with nothing to lose.
    manager.process->signal(SIGTERM);
    CHECK(manager.process->wait_exit(kStepDeadline).has_value());
    fs.site().restart_manager(manager);
    auto undrained = fs.site().devmgrctl(manager, {"undrain"});
    CHECK_MESSAGE(undrained.exit_code == 0,
                  scenario << ": devmgrctl undrain " << manager.id << ": " << undrained.err);
    CHECK(fs.site().wait_peers_up(manager, FaultSite::kManagers - 1, kStepDeadline));
    MESSAGE(scenario << ": " << manager.id << " drained, restarted and back in rotation after "
                     << ms_since(t0) << " ms");
    fs.check_converged(scenario, "devices and owners after restarting " + manager.id, false, Clock::now());
    CHECK_MESSAGE(fs.wait_progress(1), scenario << ": the workloads stalled after restarting " << manager.id);
  }
  finish(fs, scenario);
}
