#include "fault_site.hpp"

#include <time.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <doctest/doctest.h>

namespace dtu::testing::faults {
namespace {

// The units the workloads use on each DTU (demo/sim-devices.json): the printer 1-1, the MFP's
// printer (unit 0) and scanner (unit 1) interfaces; each has a bulk OUT sink.
struct SinkUnit {
  const char* device;
  std::uint32_t unit;
  std::uint32_t endpoint;
};
constexpr SinkUnit kSinkUnits[] = {{"1-1", 0, 0x01}, {"1-2", 0, 0x01}, {"1-2", 1, 0x03}};

// How often convergence is polled (each poll runs devmgrctl once per manager).
constexpr std::chrono::milliseconds kConvergePoll{50};
// A workload finishes its iteration (hold, release retried up to a lease length) within this.
constexpr std::chrono::milliseconds kWorkloadStop{30000 * kSlowdown};
// How long a workload's allocation waits for a held unit, and its requests' deadline.
constexpr int kWorkloadWaitMs = 6000 * kSlowdown;
constexpr int kWorkloadTimeoutMs = 5000 * kSlowdown;

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// "1b40" -> {0x1b, 0x40}; nullopt when it is not hex.
std::optional<std::vector<std::uint8_t>> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return out;
}

std::size_t count_lines_with(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

std::string hold_ms(int min_ms, int max_ms) {
  return std::to_string(min_ms * kSlowdown) + ":" + std::to_string(max_ms * kSlowdown);
}

std::int64_t monotonic_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

long long ms_since(Clock::time_point from) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - from).count();
}

FaultSite::FaultSite(FaultSiteOptions options) : options_(std::move(options)) {
  if (options_.workloads.empty()) {
    options_.workloads = {{"w1", 0, {}, 11, hold_ms(300, 1500), 0}, {"w2", 1, {}, 22, hold_ms(300, 1500), 0}};
  }
  site_.set_heartbeat(kHeartbeatMs, kHeartbeatMisses);
  for (std::size_t i = 0; i < kAgents; ++i) {
    dtu_ids_.push_back("dtu-" + std::to_string(i + 1));
    // Each DTU prefers another manager first: m1 gets DTUs 1 and 4, m2 DTU 2, m3 DTU 3.
    static constexpr std::size_t kOrders[kAgents][kManagers] = {{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 2, 1}};
    orders_.emplace_back(std::begin(kOrders[i]), std::end(kOrders[i]));
  }
  agents_.resize(kAgents);
}

FaultSite::~FaultSite() {
  // Workloads first: they hold leases through the managers. Frozen agents would not stop on
  // SIGTERM.
  workloads_.clear();
  try {
    end_power_cuts();
  } catch (const std::exception&) {
    // ~Process kills it anyway.
  }
}

std::string FaultSite::history_path(std::size_t w) const {
  return (site_.dir() / (options_.workloads.at(w).name + ".jsonl")).string();
}

WorkloadHistory FaultSite::history(std::size_t w) const {
  return parse_history(options_.workloads.at(w).name, read_text(history_path(w)));
}

std::vector<std::string> FaultSite::agent_argv_managers(const std::vector<std::size_t>& order) const {
  std::vector<std::string> out;
  for (std::size_t m : order) out.push_back(managers_.at(m)->address);
  return out;
}

void FaultSite::start_agent(std::size_t i, std::vector<std::string> extra) {
  auto& a = site_.start_agent(dtu_ids_[i], agent_argv_managers(orders_[i]), std::move(extra));
  agents_[i].push_back(&a);
}

void FaultSite::start() {
  std::vector<Site::Member> members;
  for (std::size_t m = 0; m < kManagers; ++m) {
    Site::Member member{
        "m" + std::to_string(m + 1),
        options_.manager_ip_prefix + std::to_string(options_.first_octet + static_cast<int>(m))};
    if (m < options_.manager_env.size()) member.env = options_.manager_env[m];
    members.push_back(member);
  }
  managers_ = site_.start_group(members);
  for (auto* m : managers_) {
    if (!site_.wait_peers_up(*m, kManagers - 1, kStepDeadline))
      throw std::runtime_error("the mesh did not form");
  }
  for (std::size_t i = 0; i < kAgents; ++i) start_agent(i);
  std::vector<std::string> last;
  if (!wait_converged(false, Clock::now(), kStepDeadline, &last)) {
    std::string why;
    for (const auto& d : last) why += "\n  " + d;
    throw std::runtime_error("the site did not come up: the managers' views differ from the DTUs:" + why);
  }
}

void FaultSite::start_workloads(std::size_t grants_each) {
  for (std::size_t w = 0; w < options_.workloads.size(); ++w) {
    const auto& spec = options_.workloads[w];
    std::vector<std::string> argv = {binary_path("dtu-fault-workload"),
                                     "--socket",
                                     managers_.at(spec.manager)->socket.string(),
                                     "--name",
                                     spec.name,
                                     "--history",
                                     history_path(w),
                                     "--seed",
                                     std::to_string(spec.seed),
                                     "--iterations",
                                     "500",
                                     "--bytes",
                                     std::to_string(kStreamBytes),
                                     "--lease-ms",
                                     std::to_string(kLeaseMs),
                                     "--wait-ms",
                                     std::to_string(kWorkloadWaitMs),
                                     "--timeout-ms",
                                     std::to_string(kWorkloadTimeoutMs),
                                     "--hold-ms",
                                     spec.hold,
                                     "--renew-ms",
                                     std::to_string(spec.renew_ms)};
    std::vector<std::size_t> agents = spec.agents;
    if (agents.empty()) {
      for (std::size_t i = 0; i < kAgents; ++i) agents.push_back(i);
    }
    for (std::size_t i : agents) {
      for (const auto& u : kSinkUnits) {
        argv.push_back("--unit");
        argv.push_back(dtu_ids_.at(i) + "/" + u.device + "/" + std::to_string(u.unit));
      }
    }
    workloads_.push_back(std::make_unique<Process>(argv, site_.dir().path(), Environment{}, spec.name));
  }
  const bool loaded = eventually(
      [&] {
        for (std::size_t w = 0; w < workloads_.size(); ++w) {
          if (grants(w) < grants_each) return false;
        }
        return true;
      },
      kStepDeadline, std::chrono::milliseconds(50));
  if (!loaded) {
    std::string why;
    for (std::size_t w = 0; w < workloads_.size(); ++w) {
      why += "\n" + workload_name(w) + ": " + std::to_string(grants(w)) + " grants; history:\n" +
             read_text(history_path(w)) + workloads_[w]->log();
    }
    throw std::runtime_error("the workloads did not get going:" + why);
  }
}

std::size_t FaultSite::grants(std::size_t w) const {
  return count_lines_with(read_text(history_path(w)), "\"ev\":\"grant\"");
}

bool FaultSite::wait_progress(std::size_t more, std::chrono::milliseconds deadline) {
  std::vector<std::size_t> base;
  for (std::size_t w = 0; w < workloads_.size(); ++w) base.push_back(grants(w));
  const bool served = eventually(
      [&] {
        for (std::size_t w = 0; w < workloads_.size(); ++w) {
          if (grants(w) < base[w] + more) return false;
        }
        return true;
      },
      deadline, std::chrono::milliseconds(50));
  if (!served) {
    for (std::size_t w = 0; w < workloads_.size(); ++w) {
      MESSAGE(workload_name(w) << ": " << grants(w) - base[w] << " of " << more
                               << " more grants by the deadline");
    }
  }
  return served;
}

void FaultSite::stop_workloads() {
  for (auto& w : workloads_) w->signal(SIGTERM);
  for (std::size_t w = 0; w < workloads_.size(); ++w) {
    const auto status = workloads_[w]->wait_exit(kWorkloadStop);
    CHECK_MESSAGE(status == std::optional<int>(0),
                  workload_name(w) << " did not stop cleanly (exit "
                                   << (status ? std::to_string(*status) : "none yet") << ")");
  }
}

std::string FaultSite::home_of(std::size_t i) const {
  return current_manager(agents_.at(i).back()->process->log());
}

std::vector<std::size_t> FaultSite::dtus_at(std::size_t m) const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < kAgents; ++i) {
    if (home_of(i) == managers_.at(m)->id) out.push_back(i);
  }
  return out;
}

std::int64_t FaultSite::reboot_agent(std::size_t i, const std::vector<std::size_t>& order) {
  const std::int64_t at = monotonic_us();
  agents_.at(i).back()->process->signal(SIGSTOP);
  reboots_[dtu_ids_.at(i)] = at;
  orders_.at(i) = order;
  const auto socket = site_.dir() / (dtu_ids_[i] + "-sim-" + std::to_string(agents_[i].size() + 1) + ".sock");
  start_agent(i, {"--sim-control", socket.string()});
  return at;
}

void FaultSite::end_power_cuts() {
  for (const auto& incarnations : agents_) {
    for (std::size_t k = 0; k + 1 < incarnations.size(); ++k) {
      if (!incarnations[k]->process->exit_status()) site_.kill_agent(*incarnations[k]);
    }
  }
}

std::map<std::string, DtuTruth> FaultSite::truth() {
  std::map<std::string, DtuTruth> out;
  for (std::size_t i = 0; i < kAgents; ++i) {
    const std::string log = agents_[i].back()->process->log();
    DtuTruth t;
    t.owner = current_manager(log);
    const auto leases = open_leases(log);
    for (const auto& device : attached_devices(log)) {
      auto& units = t.devices[device];
      for (const auto& [key, lease] : leases) {
        if (key.first == device) units[key.second] = lease;
      }
    }
    out[dtu_ids_[i]] = std::move(t);
  }
  return out;
}

std::vector<std::string> FaultSite::view_differences(bool units) {
  std::vector<std::string> all;
  // Truth before and after the views: a DTU that changed meanwhile is simply polled again.
  const auto before = truth();
  std::vector<nlohmann::json> views;
  for (auto* m : managers_) {
    auto r = site_.devmgrctl(*m, {"devices", "--group", "--json"});
    if (r.exit_code != 0) {
      all.push_back("manager " + m->id + ": devmgrctl devices --group --json failed: " + r.err);
      views.emplace_back();
      continue;
    }
    views.push_back(nlohmann::json::parse(r.out, nullptr, false));
  }
  const auto after = truth();
  for (std::size_t k = 0; k < managers_.size(); ++k) {
    if (views[k].is_null()) continue;
    for (auto& d : compare_view(managers_[k]->id, views[k], after, units)) all.push_back(std::move(d));
  }
  if (!all.empty()) return all;
  // Equal to the truth after the views; it must not have moved while they were taken (without
  // `units`: only owners and devices count, leases come and go with the workloads).
  for (const auto& [dtu, t] : before) {
    const auto& a = after.at(dtu);
    bool same = t.owner == a.owner && t.devices.size() == a.devices.size();
    for (auto i = t.devices.begin(), j = a.devices.begin(); same && i != t.devices.end(); ++i, ++j)
      same = i->first == j->first && (!units || i->second == j->second);
    if (!same) return {"DTU " + dtu + " changed while the views were read"};
  }
  return {};
}

std::optional<std::chrono::milliseconds> FaultSite::wait_converged(bool units, Clock::time_point from,
                                                                   std::chrono::milliseconds deadline,
                                                                   std::vector<std::string>* last) {
  std::vector<std::string> differences;
  const auto end = from + deadline;
  for (;;) {
    differences = view_differences(units);
    if (differences.empty()) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - from);
    }
    if (Clock::now() >= end) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(kConvergePoll, end - Clock::now()));
  }
  if (last != nullptr) *last = differences;
  return std::nullopt;
}

void FaultSite::check_converged(const std::string& scenario, const std::string& what, bool units,
                                Clock::time_point healed) {
  const auto bound = 2 * site_.heartbeat_timeout();
  std::vector<std::string> at_bound;
  auto took = wait_converged(units, healed, bound, &at_bound);
  if (took) {
    MESSAGE(scenario << ": views equal the DTUs' truth (" << what << ") " << took->count()
                     << " ms after healing (bound " << bound.count() << " ms)");
    return;
  }
  // Past the bound: how much later, if at all, for the report.
  auto later = wait_converged(units, healed, bound + kStepDeadline);
  std::string differences;
  for (const auto& d : at_bound) differences += "\n  " + d;
  CHECK_MESSAGE(took.has_value(),
                scenario << ": views (" << what << ") differ from the DTUs' truth " << bound.count()
                         << " ms (two heartbeat timeouts) after healing"
                         << (later ? ", converged after " + std::to_string(later->count()) + " ms"
                                   : std::string(", still not converged after ") +
                                         std::to_string((bound + kStepDeadline).count()) + " ms")
                         << "; at the bound:" << differences);
}

Facts FaultSite::facts() {
  Facts f;
  f.bytes_per_stream = kStreamBytes;
  f.reboots = reboots_;
  for (std::size_t w = 0; w < options_.workloads.size(); ++w) {
    f.workloads.push_back(parse_history(options_.workloads[w].name, read_text(history_path(w))));
  }
  for (std::size_t i = 0; i < kAgents; ++i) {
    DtuLogs logs{dtu_ids_[i], {}};
    for (auto* a : agents_[i]) logs.incarnations.push_back(a->process->log());
    f.dtus.push_back(std::move(logs));
    for (const auto& u : kSinkUnits) {
      if (!attached_devices(agents_[i].back()->process->log()).contains(u.device)) continue;
      char endpoint[8];
      std::snprintf(endpoint, sizeof endpoint, "0x%02x", u.endpoint);
      auto r = site_.simctl(*agents_[i].back(), {"captured", u.device, endpoint});
      if (r.exit_code != 0) continue;  // reported by check_bytes as unaccounted if written to
      const auto answer = nlohmann::json::parse(r.out, nullptr, false);
      if (answer.is_discarded() || !answer.contains("hex") || !answer.at("hex").is_string()) continue;
      auto bytes = from_hex(answer.at("hex").get<std::string>());
      if (bytes) f.captured[{dtu_ids_[i], u.device, u.endpoint}] = std::move(*bytes);
    }
  }
  return f;
}

void FaultSite::check_history(const std::string& scenario) {
  const Facts f = facts();
  std::size_t leases = 0;
  std::size_t allocate_errors = 0;
  for (const auto& w : f.workloads) {
    leases += w.leases.size();
    allocate_errors += w.allocate_errors;
  }
  std::uint64_t compared = 0;
  for (const auto& [sink, bytes] : f.captured) compared += bytes.size();
  MESSAGE(scenario << ": " << leases << " leases in the histories, " << allocate_errors
                   << " allocation attempts refused or failed (allowed: nothing was granted); " << compared
                   << " captured bytes on " << f.captured.size() << " sinks compared with the jobs");
  CHECK_MESSAGE(leases > 0, scenario << ": the workloads got no lease at all");
  for (const auto& r : unanswered_releases(f)) {
    MESSAGE(scenario << ": a release reached no owner (the DTU ends that lease at its expiry): " << r);
  }
  for (const auto& violation : check_invariants(f)) {
    CHECK_MESSAGE(false, scenario << ": " << violation);
  }
}

void FaultSite::mark() {
  marks_.clear();
  for (auto* m : managers_) marks_[m->process.get()] = m->process->log().size();
  for (const auto& incarnations : agents_) {
    for (auto* a : incarnations) marks_[a->process.get()] = a->process->log().size();
  }
}

bool FaultSite::logged_since_mark(const Process& p, const std::string& event, const std::string& field,
                                  const std::string& value) const {
  const auto it = marks_.find(&p);
  const std::size_t from = it == marks_.end() ? 0 : it->second;
  const std::string log = p.log();
  if (from >= log.size()) return false;
  for (const auto& line : log_events(std::string_view(log).substr(from), event)) {
    if (field.empty()) return true;
    auto f = line.fields.find(field);
    if (f != line.fields.end() && f->second == value) return true;
  }
  return false;
}

}  // namespace dtu::testing::faults
