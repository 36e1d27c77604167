// The fault suite (issue 6, DESIGN.md §6 and §10): real devmgr, dtu-agent and workload processes
// (fault_site.hpp); a fault under load; then the invariants on what was recorded — never two
// holders of a unit, no allocation lost, every in-band byte on the simulated devices exactly as
// the workloads wrote it (seeded per-job patterns, compared byte for byte: fault_history.hpp) —
// and every manager's view equal to the DTUs' truth within two heartbeat timeouts after healing.
// Each scenario prints its measured detection and re-home times (by polling the logs from the
// test: the managers' own clocks may be skewed); none is asserted against a number.
//
//   1. kill -9 m1 under load, restart it: its DTUs and peers notice, the DTUs re-home, views
//      converge.
//   2. SIGSTOP m2 just before a renewal of w2's lease (on m2's own DTU 2) is due, until DTU 2 has
//      re-homed and its new owner adopted the lease, then SIGCONT: m2 wakes with the renewal
//      queued and handles it as DTU 2's stale owner; it must be refused (in practice it dies on
//      m2's dead DTU link, or m2 no longer knows the lease; a stale op reaching the DTU would be
//      `lease_fenced`), m2 must drop DTU 2, and the lease must live on (later renewals succeed).
//   3. m3 partitioned (nft in a private network namespace), then healed: both sides notice.
//   4. DTU 1 power-cut and restarted at m2 within one heartbeat period while m1 still holds
//      its old link: m1 gives it up for the newer claim (ownership_lost).
//   5. Managers at +5 min / -5 min (libfaketime): the universal clock converges on the median,
//      a rebooted DTU's new claim wins at the manager 10 min behind, and a +10 min wall-clock
//      jump ends no lease.
//   6. w1 at m1 holds a lease on DTU 2 (owned by m2) past its length: m2 is stopped just before
//      the renewal is due, the renewal is seen in flight to m2 (sent, unanswered, m1 still sees
//      m2 up), then m2 is killed: the lease is still held at the DTU past its first expiry,
//      adopted and renewed through the new owner, and w1 never saw it end.
//   7. Rolling restart: drain, restart, undrain each manager in turn.
//
// Sanitizer builds scale every heartbeat, lease and deadline by kSlowdown (fault_site.hpp).
// Deterministic seeds (the workloads' unit and hold choices and stream contents), bounded loops,
// loopback addresses 127.0.0.100-117, and for the partition a private network namespace of the
// test's own.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
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
constexpr milliseconds kFailoverDeadline{15000 * kSlowdown};

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

// The lease workload `w` holds now: its last grant, neither given up nor ended.
std::optional<LeaseHistory> held_lease(FaultSite& fs, std::size_t w) {
  const auto h = fs.history(w);
  if (h.leases.empty()) return std::nullopt;
  const auto& l = h.leases.back();
  if (l.given_up_us || l.lost_us) return std::nullopt;
  return l;
}

// Waits (bounded) until workload `w` holds a lease granted at most `fresh` ago; nullopt at the
// deadline.
std::optional<LeaseHistory> fresh_lease(FaultSite& fs, std::size_t w, milliseconds fresh) {
  std::optional<LeaseHistory> out;
  eventually(
      [&] {
        out = held_lease(fs, w);
        return out && monotonic_us() - out->granted_us <= fresh.count() * 1000;
      },
      kFailoverDeadline, milliseconds(10));
  if (out && monotonic_us() - out->granted_us > fresh.count() * 1000) out.reset();
  return out;
}

// The renewals of a lease (the client library's, and the workload's own with --renew-ms) are due a
// third of its length after the grant and every third after: the first one due at least
// `ahead_us` from now, in monotonic µs.
std::int64_t next_renewal(const LeaseHistory& lease, std::int64_t ahead_us) {
  const std::int64_t period = kLeaseMs * 1000 / 3;
  std::int64_t due = lease.granted_us + period;
  while (due < monotonic_us() + ahead_us) due += period;
  return due;
}

void sleep_until_us(std::int64_t monotonic) {
  const auto left = monotonic - monotonic_us();
  if (left > 0) std::this_thread::sleep_for(std::chrono::microseconds(left));
}

// The workload's own renewals of `lease` sent at or after `since_us`, as its history tells them now.
std::vector<LeaseHistory::Renewal> renewals_since(FaultSite& fs, std::size_t w, const std::string& lease,
                                                  std::int64_t since_us) {
  std::vector<LeaseHistory::Renewal> out;
  for (const auto& l : fs.history(w).leases) {
    if (l.lease != lease) continue;
    for (const auto& r : l.renewals) {
      if (r.sent_us >= since_us) out.push_back(r);
    }
  }
  return out;
}

// The first of them, if any.
std::optional<LeaseHistory::Renewal> renewal_since(FaultSite& fs, std::size_t w, const std::string& lease,
                                                   std::int64_t since_us) {
  auto all = renewals_since(fs, w, lease, since_us);
  if (all.empty()) return std::nullopt;
  return all.front();
}

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
  // Under ASan the preload comes before the ASan runtime: its link-order check would abort the
  // manager. Appended to what the test inherited (ignored by a build without ASan).
  const char* asan = std::getenv("ASAN_OPTIONS");
  env["ASAN_OPTIONS"] = (asan != nullptr && *asan != '\0' ? std::string(asan) + ":" : std::string()) +
                        "verify_asan_link_order=0";
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
  // w2 at m2 leases only DTU 2's units (m2's own DTU) and holds each lease through renewals,
  // renewing it itself too; w1 at m1 uses every DTU.
  auto o = options(103);
  o.workloads = {{"w1", 0, {}, 11, hold_ms(300, 1500), 0},
                 {"w2", 1, {1}, 22, hold_ms(6000, 7000), kLeaseMs / 3}};
  FaultSite fs(o);
  fs.start();
  fs.start_workloads(1);
  const auto dtus = fs.dtus_at(1);
  REQUIRE_MESSAGE(dtus == std::vector<std::size_t>{1},
                  scenario << ": m2 does not hold DTU 2 alone: " << dtu_list(fs, dtus));
  // m2 stops just before a renewal of w2's lease is due: the renewal waits in m2's socket.
  const auto lease = fresh_lease(fs, 1, milliseconds(kLeaseMs));
  REQUIRE_MESSAGE(lease.has_value(), scenario << ": w2 holds no lease on DTU 2");
  const std::int64_t due = next_renewal(*lease, slow(300).count() * 1000);
  sleep_until_us(due - slow(100).count() * 1000);
  fs.mark();
  const auto t0 = Clock::now();
  const std::int64_t stopped_us = monotonic_us();
  fs.manager(1).process->signal(SIGSTOP);
  std::optional<LeaseHistory::Renewal> queued;
  eventually([&] { return (queued = renewal_since(fs, 1, lease->lease, stopped_us)).has_value(); },
             kFailoverDeadline, milliseconds(10));
  MESSAGE(scenario << ": w2 sent a renewal of " << lease->lease << " to the stopped m2 "
                   << (queued ? std::to_string((queued->sent_us - stopped_us) / 1000) + " ms after SIGSTOP"
                              : std::string("never")));
  const Failover f = watch_failover(fs, 1, dtus, true, t0);
  // The DTU's new owner adopts the lease while m2 sleeps.
  std::optional<std::size_t> adopter;
  eventually(
      [&] {
        for (std::size_t m : {0u, 2u}) {
          if (fs.logged_since_mark(*fs.manager(m).process, "lease_adopted", "lease", lease->lease))
            adopter = m;
        }
        return adopter.has_value();
      },
      kFailoverDeadline);
  // Past the heartbeat timeout in any case: the DTU and the peers have given m2 up.
  const auto timeout = fs.site().heartbeat_timeout();
  if (Clock::now() - t0 < timeout) std::this_thread::sleep_for(timeout - (Clock::now() - t0));
  // Read before the signal: the resumed m2 may answer before this thread runs again after it.
  const auto healed = Clock::now();
  const std::int64_t resumed_us = monotonic_us();
  fs.manager(1).process->signal(SIGCONT);
  report_failover(fs, scenario, f, dtus, true);
  CHECK_MESSAGE(adopter.has_value(), scenario << ": no manager adopted " << lease->lease << " from DTU 2");
  MESSAGE(scenario << ": m2 stopped for " << ms_since(t0) << " ms; "
                   << (adopter ? fs.manager(*adopter).id + " adopted " + lease->lease
                               : std::string("nobody adopted ") + lease->lease));

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
  // … and the renewal it found queued on waking, it handled as DTU 2's owner still: on its dead
  // link to the DTU, which left it for m3. The DTU never sees it (it takes lease operations only
  // on its current link, fenced by that link's claim: lease_fenced if one got there), and w2 is
  // answered with the loss of that link.
  std::optional<LeaseHistory::Renewal> answered;
  eventually(
      [&] {
        answered = renewal_since(fs, 1, lease->lease, stopped_us);
        return answered && answered->answered_us;
      },
      kFailoverDeadline, milliseconds(10));
  REQUIRE_MESSAGE((queued && queued->sent_us < resumed_us),
                  scenario << ": w2 sent no renewal while m2 was stopped");
  REQUIRE_MESSAGE((answered && answered->answered_us),
                  scenario << ": the renewal queued at m2 was never answered");
  const bool fenced = fs.logged_since_mark(*fs.agent(1).process, "lease_fenced");
  bool stale_claim = false;
  for (std::size_t m : {0u, 2u}) {
    stale_claim =
        stale_claim || fs.logged_since_mark(*fs.manager(m).process, "stale_claim_ignored", "dtu", fs.dtu(1));
  }
  MESSAGE(
      scenario << ": the renewal queued at the stopped m2 was answered "
               << (*answered->answered_us - resumed_us) / 1000
               << " ms after SIGCONT: " << (*answered->ok ? std::string("ok") : "refused: " + answered->error)
               << "; DTU 2 logged lease_fenced: " << std::string(fenced ? "yes" : "no")
               << ", peers logged stale_claim_ignored for it: " << std::string(stale_claim ? "yes" : "no"));
  CHECK_MESSAGE(*answered->answered_us >= resumed_us, scenario << ": m2 answered the renewal while stopped?");
  CHECK_MESSAGE((!*answered->ok || fenced || stale_claim),
                scenario << ": the renewal m2 handled on waking, as DTU 2's stale owner, was not refused");
  // The lease lives on at the new owner: a later renewal of it succeeds (through m2, which
  // forwards it there now).
  std::string after;  // what the renewals after it got
  const bool renewed = eventually(
      [&] {
        after.clear();
        for (const auto& r : renewals_since(fs, 1, lease->lease, *answered->answered_us)) {
          if (!r.ok) continue;
          if (*r.ok) return true;
          after += "\n  " + r.error;
        }
        return false;
      },
      kFailoverDeadline, milliseconds(10));
  CHECK_MESSAGE(renewed,
                scenario << ": no renewal of " << lease->lease << " succeeded after m2 woke:" << after);
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
    REQUIRE_MESSAGE(
        agreed, scenario << ": the managers' universal clocks did not converge on the median: " << offsets);
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
  // w1 at m1 leases only DTU 2's units (owned by m2: its renewals go w1 -> m1 -> m2 -> DTU 2) and
  // holds each lease past its length, renewing it itself too; w2 at m3 shares DTU 2 and uses DTU 3.
  auto o = options(112);
  o.workloads = {{"w1", 0, {1}, 61, hold_ms(4500, 5500), kLeaseMs / 3},
                 {"w2", 2, {1, 2}, 62, hold_ms(300, 1500), 0}};
  FaultSite fs(o);
  fs.start();
  fs.start_workloads(1);
  REQUIRE(fs.home_of(1) == fs.manager(1).id);
  // A lease of w1 whose first renewal is still ahead: m2 stops just before it is due.
  const auto lease = fresh_lease(fs, 0, milliseconds(kLeaseMs / 3) - slow(400));
  REQUIRE_MESSAGE(lease.has_value(), scenario << ": w1 got no lease on DTU 2");
  const std::int64_t due = next_renewal(*lease, slow(200).count() * 1000);
  const std::int64_t first_expiry = lease->granted_us + kLeaseMs * 1000;
  REQUIRE(due == lease->granted_us + kLeaseMs * 1000 / 3);
  sleep_until_us(due - slow(150).count() * 1000);
  fs.mark();
  const auto t0 = Clock::now();
  const std::int64_t stopped_us = monotonic_us();
  fs.manager(1).process->signal(SIGSTOP);
  // The renewal goes out on time; m1 still sees its link to m2 up (m2 has been silent for less
  // than the heartbeat timeout), so it forwards it to m2, where it waits unanswered.
  std::optional<LeaseHistory::Renewal> in_flight;
  eventually([&] { return (in_flight = renewal_since(fs, 0, lease->lease, stopped_us)).has_value(); },
             kFailoverDeadline, milliseconds(5));
  REQUIRE_MESSAGE(in_flight.has_value(), scenario << ": w1 did not renew " << lease->lease);
  const bool m1_saw_m2_down =
      fs.logged_since_mark(*fs.manager(0).process, "peer_down", "peer", fs.manager(1).id);
  const bool unanswered = !renewal_since(fs, 0, lease->lease, stopped_us)->answered_us;
  MESSAGE(scenario << ": renewal of " << lease->lease << " sent " << (in_flight->sent_us - stopped_us) / 1000
                   << " ms after m2 stopped; in flight to m2 (m1 still sees m2 up: "
                   << std::string(m1_saw_m2_down ? "no" : "yes")
                   << ", unanswered: " << std::string(unanswered ? "yes" : "no") << ")");
  CHECK_MESSAGE((!m1_saw_m2_down && unanswered),
                scenario << ": the renewal was not in flight to m2 when it was killed");
  fs.site().kill_manager(fs.manager(1));
  const std::int64_t killed_us = monotonic_us();
  MESSAGE(scenario << ": killed m2 " << (killed_us - due) / 1000 << " ms after the renewal was due");
  const Failover f = watch_failover(fs, 1, {1}, true, t0);
  report_failover(fs, scenario, f, {1}, true);
  // Past the lease's first expiry (the one before the renewal that met the kill): still held.
  sleep_until_us(first_expiry + slow(500).count() * 1000);
  std::optional<std::size_t> adopter;
  for (std::size_t m : {0u, 2u}) {
    if (fs.logged_since_mark(*fs.manager(m).process, "lease_adopted", "lease", lease->lease)) adopter = m;
  }
  const auto at_dtu = open_leases(fs.agent(1).process->log());
  bool held_at_dtu = false;
  for (const auto& [unit, id] : at_dtu) held_at_dtu = held_at_dtu || id == lease->lease;
  std::optional<LeaseHistory> now;
  for (const auto& l : fs.history(0).leases) {
    if (l.lease == lease->lease) now = l;
  }
  REQUIRE(now.has_value());
  std::string renewals;
  bool renewed_after_kill = false;
  for (const auto& r : now->renewals) {
    if (r.sent_us < stopped_us) continue;
    renewals += "\n  sent +" + std::to_string((r.sent_us - stopped_us) / 1000) + " ms: " +
                (r.ok ? (*r.ok ? std::string("ok") : "failed: " + r.error) : std::string("unanswered"));
    renewed_after_kill =
        renewed_after_kill || (r.ok == std::optional<bool>(true) && *r.answered_us > killed_us);
  }
  MESSAGE(scenario << ": " << (monotonic_us() - first_expiry) / 1000 << " ms past its first expiry, "
                   << lease->lease << " is " << std::string(held_at_dtu ? "held" : "not held")
                   << " at DTU 2 (now at " << fs.home_of(1) << "; adopted by "
                   << (adopter ? fs.manager(*adopter).id : std::string("nobody"))
                   << "); w1's renewals since m2 stopped:" << renewals);
  CHECK_MESSAGE(held_at_dtu,
                scenario << ": " << lease->lease << " did not outlive its first expiry at DTU 2");
  CHECK_MESSAGE(!now->lost_us,
                scenario << ": w1 saw " << lease->lease << " end (" << now->lost_reason << ")");
  CHECK_MESSAGE(!now->given_up_us, scenario << ": w1 gave " << lease->lease << " up before its first expiry");
  CHECK_MESSAGE(adopter.has_value(), scenario << ": no manager adopted " << lease->lease << " from DTU 2");
  CHECK_MESSAGE(renewed_after_kill, scenario << ": no renewal of " << lease->lease
                                             << " succeeded through the new owner after m2 died");
  // The group serves on.
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
