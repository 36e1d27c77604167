// The fault suite's history checker: reads what the workloads (tests/tools/fault_workload.cpp)
// and the DTUs (dtu-agent logs) recorded during a scenario, and checks the invariants of
// DESIGN.md §10 on it:
//   1. never two holders of a unit — the workloads' holding intervals (grant .. release, on
//      CLOCK_MONOTONIC, shared by every process of the machine) never overlap on one unit, and
//      no DTU log shows a second grant of a unit before the first ended;
//   3. zero allocations lost — every grant ends with the workload's own release (answered ok)
//      or is still held when the workload stops, and its in-band channel worked throughout;
//      and in-band bytes are complete and intact — every stream wrote all its bytes, and what
//      each simulated device's sink captured is, byte for byte, the concatenation of the jobs
//      (fault_pattern.hpp) the histories say were streamed to it, in grant order (check_bytes
//      says what a failed stream may leave);
//   2. views equal to the DTUs' truth — compare_view() compares one manager's
//      `devmgrctl devices --group --json` with what the DTUs report.
// Pure functions over text and JSON: fault_history_test.cpp feeds them hand-written histories.
// Each check returns the violations found, one readable sentence each (empty: the invariant
// holds). Not thread-safe; no I/O.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dtu::testing::faults {

// A unit of a device of a DTU.
struct UnitKey {
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  auto operator<=>(const UnitKey&) const = default;
  std::string text() const;  // "dtu-1 1-2 unit 0"
};

// An OUT endpoint of a simulated device that records what is written to it ("sink").
struct SinkKey {
  std::string dtu;
  std::string device;
  std::uint32_t endpoint = 0;
  auto operator<=>(const SinkKey&) const = default;
  std::string text() const;  // "dtu-1 1-2 OUT 0x01"
};

// One lease as a workload's history tells it.
struct LeaseHistory {
  std::string workload;
  std::string lease;
  UnitKey unit;
  std::int64_t granted_us = 0;              // when the workload had the grant
  std::optional<std::int64_t> given_up_us;  // `release`: the workload stops using the unit
  std::optional<bool> released_ok;          // the manager's answer to the release
  std::string release_error;
  bool release_transient = false;       // answered unavailable / timeout: no owner reachable
  std::optional<std::int64_t> lost_us;  // `lease_ended`: it ended without our release
  std::string lost_reason;
  bool held_at_stop = false;                                     // listed in the final `stop` line
  std::optional<std::uint64_t> seed;                             // the job this lease streams
  std::optional<std::uint64_t> job;                              //   (fault_pattern.hpp)
  std::vector<std::pair<std::uint32_t, std::uint64_t>> streams;  // (endpoint, bytes) per stream
  std::optional<std::uint32_t> failed_stream;                    // endpoint of a stream that failed
  std::vector<std::string> errors;                               // open / stream failures of this lease
  // Explicit renewals (--renew-ms): when each was sent and, once answered, how.
  struct Renewal {
    std::int64_t sent_us = 0;
    std::optional<std::int64_t> answered_us;
    std::optional<bool> ok;
    std::string error;
  };
  std::vector<Renewal> renewals;
};

struct WorkloadHistory {
  std::string workload;
  std::vector<LeaseHistory> leases;    // in grant order
  bool stopped = false;                // the history ends with a `stop` line
  bool gave_up = false;                // ... which says the workload gave up
  std::size_t allocate_errors = 0;     // failed allocations (allowed: nothing was granted)
  std::vector<std::string> malformed;  // lines that could not be read
};

// Parses a workload's JSONL history (fault_workload.cpp documents the lines).
WorkloadHistory parse_history(std::string_view workload, std::string_view jsonl);

// A DTU's log: the stderr of each of its agent processes in start order (a restart is a reboot:
// the new process starts with no lease).
struct DtuLogs {
  std::string dtu;
  std::vector<std::string> incarnations;
};

// Everything a scenario recorded.
struct Facts {
  std::vector<WorkloadHistory> workloads;
  std::vector<DtuLogs> dtus;
  // What each sink captured (for a rebooted DTU: since its last start).
  std::map<SinkKey, std::vector<std::uint8_t>> captured;
  // Bytes each stream must write (the workloads' --bytes).
  std::uint64_t bytes_per_stream = 0;
  // DTUs that were rebooted (agent killed and started again), with the monotonic µs of the kill:
  // their leases granted before it ended with the reboot (a DTU's reset is not a manager failure)
  // and their sinks' counts restarted then.
  std::map<std::string, std::int64_t> reboots;
};

// Invariant 1 on the workloads' intervals and the DTUs' logs.
std::vector<std::string> check_single_holder(const Facts& facts);
// Invariant 3: no allocation lost, every workload stopped cleanly, no in-band failure. A
// release answered unavailable or timeout (no owner reachable during a failover) is not a loss:
// the workload gave the unit up and the DTU ends the lease at its expiry; any other failed
// release is (the manager no longer knew the lease).
std::vector<std::string> check_no_lost_allocation(const Facts& facts);
// Releases that reached no owner (answered unavailable or timeout), for the report.
std::vector<std::string> unanswered_releases(const Facts& facts);
// In-band bytes: each stream complete, and each sink's capture exactly the jobs streamed to it,
// in grant order: a job the history says was streamed (`bytes`, n) is job_pattern(seed, job, n);
// a job whose stream failed may have left any prefix of its pattern (the DTU writes nothing of
// a stream after its first failure: a prefix, never a gap), including none or all of it; a job
// that never streamed (its channel did not open) left nothing. Jobs of a rebooted DTU from
// before its reboot are not in its sinks. The first difference of each sink is reported with
// its position in the capture and in the job (one flipped byte, a lost, repeated, reordered or
// foreign chunk all show there), as are bytes past the last job.
std::vector<std::string> check_bytes(const Facts& facts);
// All of the above.
std::vector<std::string> check_invariants(const Facts& facts);

// One line of a dtubroker log (`<time> <level> <component> <peer> <event> key=value…`), split.
struct LogLine {
  std::string level;
  std::string component;
  std::string peer;
  std::string event;
  std::map<std::string, std::string> fields;
};
// nullopt for a line that is not a structured log line.
std::optional<LogLine> parse_log_line(std::string_view line);
// Every line of `log` whose event is `event`, in order.
std::vector<LogLine> log_events(std::string_view log, std::string_view event);

// What a DTU reports about itself: the manager it is connected to and its devices, each with the
// leases it holds by unit (unit -> lease id).
struct DtuTruth {
  std::string owner;
  std::map<std::string, std::map<std::uint32_t, std::string>> devices;
};
// The leases a DTU holds now by (device, unit) -> lease id, from its current incarnation's log.
std::map<std::pair<std::string, std::uint32_t>, std::string> open_leases(std::string_view agent_log);
// The devices a DTU has plugged now (device_attached not followed by device_detached), from
// its current incarnation's log.
std::set<std::string> attached_devices(std::string_view agent_log);
// The manager a DTU's agent is connected to now (its last `connected` line not followed by a
// loss of that manager), or empty.
std::string current_manager(std::string_view agent_log);

// Compares one manager's `devices --group --json` with the DTUs' truth (by DTU id): the same
// devices, each with the DTU's owner and not orphaned; with `units`, the same leases (a unit
// the DTU holds a lease on is `allocated` with that lease, any other unit is not allocated).
std::vector<std::string> compare_view(const std::string& manager, const nlohmann::json& devices,
                                      const std::map<std::string, DtuTruth>& truth, bool units);

}  // namespace dtu::testing::faults
