// group_bench: what a 3-manager group costs a service, measured end to end with real devmgr
// processes (the integration harness, tests/integration/site.hpp) at the default heartbeats
// (1000 ms x 3), next to the etcd workload of the same shape (tests/bench/etcd/):
//
//   attach -> notify   a DTU owned by m1 reports a plugged device; a service at m3 whose finder
//                      matches it gets `matched` (and detach -> `gone`). The etcd analogue is
//                      put on member A -> watch event on member B.
//   alloc round trip   a service at m3 allocates a unit of a DTU owned by m1 (m3 forwards to m1,
//                      m1 asks the DTU) and releases it; sequential.
//   alloc cycles/s     8 services (8 connections) each cycling allocate + release over units of
//                      its own DTU owned by m1, for a fixed time: the services at m3, spread over
//                      m1/m2/m3, and at m1 only (no peer hop).
//   failover           8 DTUs owned by m1, a service at m3 watching their devices; m1 is killed
//                      (-9) or frozen (SIGSTOP): the time until the last DTU is connected to m2 or
//                      m3, and until the service has been told the new owner of its last device.
//   convergence        a separate 5-manager group is killed and restarted at once: the time
//                      until every manager sees its 4 peers up (devmgrctl group --json).
//
// The DTUs are dtu::agent::DtuAgent instances on the simulated backend inside this process (on a
// thread of their own), so a plug is timestamped right before the backend reports it, as etcd's
// put start is, and the moment a DTU is connected again is read from the agent itself. The
// services are dtu::client::Client connections on the main thread. All times come from
// std::chrono::steady_clock in this process.
//
// Output: a table on stdout and, one JSON object per line (bench_output.hpp), $BENCH_OUT_DIR/
// group.json. Never fails on a number; exits non-zero only when it could not run, saying why
// (the harness helpers REQUIRE through the doctest runner that hosts the one case below).
//
// Longer runs: GROUP_BENCH_SAMPLES (sequential samples, default 1000), GROUP_BENCH_SECONDS
// (each throughput run, default 5), GROUP_BENCH_CRASHES (default 5), GROUP_BENCH_STOPS (default
// 3), GROUP_BENCH_CONVERGES (default 3). GROUP_BENCH_ONLY=group or =converge runs one part.
// GROUP_BENCH_AGENT_RECONNECT_MIN_MS overrides the DTUs' AgentOptions::reconnect_min (default: the
// agent's own, 200 ms), to see what the wait after a lost manager costs a failover.
//
// Threads: main (harness, services, measurements) and the DTU host's io thread (DtuHost).

#include <doctest/doctest.h>
#include <signal.h>

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_output.hpp"
#include "dtu/agent/agent_options.hpp"
#include "dtu/agent/dtu_agent.hpp"
#include "dtu/agent/sim_backend.hpp"
#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/records.hpp"
#include "site.hpp"
#include "bench/run_on.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using dtu::bench::Metric;
using dtu::bench::Target;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

// ---- configuration

constexpr int kDefaultSamples = 1000;        // sequential attach/detach pairs and alloc/release pairs
constexpr int kWarmup = 50;                  // before them, not counted
constexpr int kDefaultSeconds = 5;           // each throughput run
constexpr double kCycleWarmupSeconds = 0.5;  // the start of each throughput run, not counted
constexpr int kDefaultCrashes = 5;
constexpr int kDefaultStops = 3;
constexpr int kDefaultConverges = 3;

// The group's default heartbeat: a link is dead after 3 silent intervals of 1 s.
constexpr int kHeartbeatMs = 1000;
constexpr int kHeartbeatMisses = 3;

constexpr const char* kM1Ip = "127.0.0.82";
constexpr const char* kM2Ip = "127.0.0.83";
constexpr const char* kM3Ip = "127.0.0.84";
constexpr const char* kInbandIp = "127.0.0.85";  // the in-process DTUs' in-band listeners
const std::vector<std::string> kConvergeIps = {"127.0.0.130", "127.0.0.131", "127.0.0.132", "127.0.0.133",
                                               "127.0.0.134"};

constexpr std::size_t kDtus = 8;
// Each DTU's catalogue: two printers present (the units the services cycle over) and one absent,
// plugged and unplugged by the attach measurement.
const std::vector<std::string> kUnitPorts = {"1-1", "1-3"};
constexpr const char* kPlugPort = "1-9";
const json kWatchFinder = {{"function", "printer"}, {"product", "Stylus Bench*"}};
const json kPlugFinder = {{"function", "printer"}, {"product", "Plug Bench*"}};

// Bounds: an event that does not come within kEventLimit is lost (counted, the series goes on);
// one request within kRequestLimit; a failover within kFailoverLimit; a step the healthy group
// takes at once (start, re-home back, peers up) within kStepLimit.
constexpr auto kEventLimit = 5s;
constexpr auto kRequestLimit = 20s;
constexpr auto kFailoverLimit = 30s;
constexpr auto kStepLimit = 30s;
constexpr auto kConvergeLimit = 60s;
// How often the failover loop asks the DTUs where they are: its resolution.
constexpr auto kHomePoll = 1ms;

double us_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::micro>(to - from).count();
}
double ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

int env_int(const char* name, int fallback, int min, int max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::clamp(std::atoi(text), min, max);
}

json device_json(const std::string& port, const std::string& pid, const std::string& product, bool present) {
  return {{"port", port},
          {"present", present},
          {"vid", "04b8"},
          {"pid", pid},
          {"manufacturer", "EPSON"},
          {"product", product},
          {"serial", "BENCH-" + port},
          {"interfaces",
           json::array({{{"number", 0}, {"class", "07"}, {"subclass", "01"}, {"protocol", "02"}}})}};
}

dtu::agent::SimDeviceSet catalogue() {
  json devices = json::array();
  for (const auto& port : kUnitPorts)
    devices.push_back(device_json(port, "0005", "Stylus Bench Printer", true));
  devices.push_back(device_json(kPlugPort, "0006", "Plug Bench Printer", false));
  auto set = dtu::agent::sim_devices_from_json({{"devices", devices}}, "group_bench catalogue");
  if (!set.ok()) throw std::runtime_error("the bench's device catalogue: " + set.error().describe());
  return std::move(set.value());
}

dtu::common::Endpoint endpoint_of(const Site::Manager& m) {
  auto e = dtu::common::parse_endpoint(m.address);
  if (!e.ok()) throw std::runtime_error("manager " + m.id + " address: " + e.error().describe());
  return *e;
}

// ---- the DTUs: in-process agents on their own io thread

struct DtuSpec {
  std::string id;
  dtu::common::Bytes key;
};

// Several DtuAgents on the sim backend, on one io_context run by a thread of its own. Built and
// destroyed as a whole (an agent must not outlive the context's run); the main thread talks to
// them only through on_io (blocking) and plug/unplug (posted, the time returned by a future).
class DtuHost {
 public:
  DtuHost(const std::vector<DtuSpec>& specs, const std::vector<dtu::common::Endpoint>& managers)
      : thread_([this] { io_.run(); }) {
    std::optional<std::string> failure;
    on_io([&] {
      for (const auto& spec : specs) {
        dtu::agent::AgentOptions options;
        options.id = spec.id;
        options.managers = managers;
        options.backend = "sim";
        options.inband = dtu::common::Endpoint{kInbandIp, 0};
        if (const int ms = env_int("GROUP_BENCH_AGENT_RECONNECT_MIN_MS", -1, -1, 60'000); ms >= 0) {
          options.reconnect_min = std::chrono::milliseconds(ms);  // an experiment: the default is the agent's
        }
        backends_.push_back(std::make_unique<dtu::agent::SimBackend>(io_.get_executor(), catalogue()));
        agents_.push_back(std::make_unique<dtu::agent::DtuAgent>(
            io_.get_executor(), dtu::common::SystemClock::instance(), options, spec.key, *backends_.back()));
        if (auto started = agents_.back()->start(); !started.ok()) {
          failure = "DTU " + spec.id + " did not start: " + started.error().describe();
          return;
        }
      }
    });
    if (failure) {
      shut_down();
      throw std::runtime_error(*failure);
    }
  }
  ~DtuHost() { shut_down(); }
  DtuHost(const DtuHost&) = delete;
  DtuHost& operator=(const DtuHost&) = delete;

  // Where each DTU is connected (welcomed) now.
  std::vector<std::optional<dtu::common::Endpoint>> homes() {
    std::vector<std::optional<dtu::common::Endpoint>> out;
    on_io([&] {
      for (const auto& a : agents_) out.push_back(a->manager());
    });
    return out;
  }

  // Plugs (unplugs) the catalogue device `port` of DTU `i` on the io thread; the future holds the
  // time taken right before the backend reported it. Throws from get() when the backend refused.
  std::future<Clock::time_point> plug(std::size_t i, const std::string& port) { return act(i, port, true); }
  std::future<Clock::time_point> unplug(std::size_t i, const std::string& port) {
    return act(i, port, false);
  }

 private:
  std::future<Clock::time_point> act(std::size_t i, const std::string& port, bool plug_in) {
    auto promise = std::make_shared<std::promise<Clock::time_point>>();
    auto future = promise->get_future();
    asio::post(io_, [this, i, port, plug_in, promise] {
      const auto t0 = Clock::now();
      auto& backend = *backends_.at(i);
      auto done = plug_in ? backend.plug(port) : backend.unplug(port);
      if (done.ok()) {
        promise->set_value(t0);
      } else {
        promise->set_exception(std::make_exception_ptr(
            std::runtime_error("sim backend " + std::string(plug_in ? "plug " : "unplug ") + port + ": " +
                               done.error().describe())));
      }
    });
    return future;
  }

  template <typename F>
  void on_io(F f) {
    dtu::bench::run_on(io_, std::move(f));
  }

  void shut_down() {
    if (!thread_.joinable()) return;
    on_io([this] {
      for (auto& a : agents_) a->stop();
    });
    std::this_thread::sleep_for(50ms);  // the agents' coroutines see their sockets closed
    work_.reset();
    io_.stop();
    thread_.join();
    agents_.clear();
    backends_.clear();
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  std::vector<std::unique_ptr<dtu::agent::SimBackend>> backends_;  // io thread while it runs
  std::vector<std::unique_ptr<dtu::agent::DtuAgent>> agents_;      // io thread while it runs
  std::thread thread_;  // last: runs io_ from construction to shut_down
};

// ---- the services: Clients on the main thread's io_context

template <typename T>
asio::awaitable<void> store_into(asio::awaitable<T> op, std::optional<T>* out) {
  auto value = co_await std::move(op);
  out->emplace(std::move(value));
}

// Runs `op` on `io` (this thread) to completion; throws when it does not complete by `limit`.
template <typename T>
T complete(asio::io_context& io, asio::awaitable<T> op, Clock::duration limit = kRequestLimit) {
  std::optional<T> out;
  std::exception_ptr failure;
  bool done = false;
  asio::co_spawn(io, store_into(std::move(op), &out), [&](std::exception_ptr e) {
    failure = e;
    done = true;
  });
  const auto deadline = Clock::now() + limit;
  while (!done && Clock::now() < deadline) {
    io.restart();
    io.run_one_until(deadline);
  }
  if (!done) throw std::runtime_error("a request to the manager did not complete within the limit");
  if (failure) std::rethrow_exception(failure);
  return std::move(*out);
}

// Runs `io` until `done()` holds or `limit` passes; calls `tick` (if any) at least every `step`.
bool run_until(asio::io_context& io, const std::function<bool()>& done, Clock::duration limit,
               const std::function<void()>& tick = {}, Clock::duration step = 10ms) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    const auto now = Clock::now();
    if (now >= deadline) return false;
    io.restart();
    io.run_one_until(std::min(now + step, deadline));
    if (tick) tick();
  }
  return true;
}

std::unique_ptr<dtu::client::Client> connect(asio::io_context& io, const Site::Manager& m,
                                             const std::string& name) {
  dtu::client::ClientOptions options;
  options.socket = m.socket.string();
  options.name = name;
  auto r = complete(
      io, dtu::client::Client::connect(io.get_executor(), dtu::common::SystemClock::instance(), options));
  if (!r.ok()) throw std::runtime_error("cannot connect a service to " + m.id + ": " + r.error().describe());
  return std::move(r.value());
}

void add_finder(asio::io_context& io, dtu::client::Client& c, const json& finder,
                dtu::client::FinderEvents events) {
  auto r = complete(io, c.add_finder(finder, std::move(events)));
  if (!r.ok())
    throw std::runtime_error("the manager refused the finder " + finder.dump() + ": " + r.error().describe());
}

// ---- figures

Target at_most(double max) {
  Target t;
  t.max = max;
  return t;
}
Target ratio_max(double ratio) {
  Target t;
  t.ratio_max = ratio;
  return t;
}
Target ratio_min(double ratio) {
  Target t;
  t.ratio_min = ratio;
  return t;
}

struct Row {
  std::string label;
  std::string unit;
  std::vector<double> samples;
  int lost = 0;
};

std::vector<Metric> g_metrics;
std::vector<Row> g_rows;

void print_row(const Row& r) {
  if (r.samples.empty()) {
    std::printf("  %-58s  no samples (%d lost)\n", r.label.c_str(), r.lost);
  } else {
    std::printf("  %-58s  p50 %10.1f  p99 %10.1f  max %10.1f %-5s  n=%zu%s\n", r.label.c_str(),
                dtu::bench::percentile(r.samples, 50), dtu::bench::percentile(r.samples, 99),
                *std::max_element(r.samples.begin(), r.samples.end()), r.unit.c_str(), r.samples.size(),
                r.lost > 0 ? (" lost=" + std::to_string(r.lost)).c_str() : "");
  }
  std::fflush(stdout);
  g_rows.push_back(r);
}

void add(const std::string& name, const std::string& unit, double value, std::string baseline = {},
         Target target = {}, std::string note = {}) {
  g_metrics.push_back(Metric{name, unit, value, std::move(baseline), target, std::move(note)});
}

// ---- 1. attach -> notify

void measure_attach(Site& site, DtuHost& host, Site::Manager& m3, int samples) {
  asio::io_context io;
  auto service = connect(io, m3, "attach-bench");
  std::optional<Clock::time_point> matched_at, gone_at;
  bool synced = false;
  dtu::client::FinderEvents events;
  events.matched = [&](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    if (d.dtu == "bench-dtu-0" && d.device == kPlugPort) matched_at = Clock::now();
  };
  events.gone = [&](const std::string& dtu, const std::string& device, const std::string&) {
    if (dtu == "bench-dtu-0" && device == kPlugPort) gone_at = Clock::now();
  };
  events.synced = [&] { synced = true; };
  add_finder(io, *service, kPlugFinder, events);
  if (!run_until(
          io, [&] { return synced; }, kStepLimit))
    throw std::runtime_error("the finder at m3 never synced");
  (void)site;

  Row attach{"attach at a DTU on m1 -> matched at a service on m3", "us", {}, 0};
  Row detach{"detach at a DTU on m1 -> gone at a service on m3", "us", {}, 0};
  auto one = [&](bool plug_in, Row* row) {
    auto& seen = plug_in ? matched_at : gone_at;
    seen.reset();
    auto t0 = plug_in ? host.plug(0, kPlugPort) : host.unplug(0, kPlugPort);
    const bool came = run_until(
        io, [&] { return seen.has_value(); }, kEventLimit);
    const auto start = t0.get();
    if (row == nullptr) {
      if (!came)
        throw std::runtime_error(std::string("warm-up: the service at m3 never saw the ") +
                                 (plug_in ? "attach" : "detach"));
    } else if (came) {
      row->samples.push_back(us_between(start, *seen));
    } else {
      ++row->lost;
    }
  };
  for (int i = 0; i < kWarmup; ++i) {
    one(true, nullptr);
    one(false, nullptr);
  }
  for (int i = 0; i < samples; ++i) {
    one(true, &attach);
    one(false, &detach);
  }
  print_row(attach);
  print_row(detach);
  const std::string note =
      "DTU in-process on m1 (plug timestamped before the sim backend reports it) -> "
      "Client finder matched at m3; sequential, after " +
      std::to_string(kWarmup) + " warm-up";
  add("dtu.attach_notify.p50", "us", dtu::bench::percentile(attach.samples, 50), "etcd.put_watch.p50",
      ratio_max(0.1), note);
  add("dtu.attach_notify.p99", "us", dtu::bench::percentile(attach.samples, 99), "etcd.put_watch.p99",
      ratio_max(0.2), note);
  add("dtu.attach_notify.samples", "count", static_cast<double>(attach.samples.size()));
  add("dtu.attach_notify.lost", "count", attach.lost);
  add("dtu.detach_notify.p50", "us", dtu::bench::percentile(detach.samples, 50), {}, {},
      "unplug on the DTU -> Client finder gone at m3");
  add("dtu.detach_notify.p99", "us", dtu::bench::percentile(detach.samples, 99));
  add("dtu.detach_notify.lost", "count", detach.lost);
}

// ---- 2. allocation round trip

void measure_alloc_rtt(Site::Manager& m3, int samples) {
  asio::io_context io;
  auto service = connect(io, m3, "alloc-bench");
  Row alloc{"allocate at m3, unit on a DTU owned by m1 -> granted", "us", {}, 0};
  Row release{"release at m3 -> done", "us", {}, 0};
  std::string last_error;
  for (int i = 0; i < kWarmup + samples; ++i) {
    const bool counted = i >= kWarmup;
    auto t0 = Clock::now();
    auto lease = complete(io, service->allocate("bench-dtu-0", kUnitPorts[0], 0, {}));
    auto t1 = Clock::now();
    if (!lease.ok()) {
      last_error = lease.error().describe();
      if (!counted) throw std::runtime_error("warm-up: allocate at m3 failed: " + last_error);
      ++alloc.lost;
      continue;
    }
    if (counted) alloc.samples.push_back(us_between(t0, t1));
    t0 = Clock::now();
    auto released = complete(io, service->release(lease->id));
    t1 = Clock::now();
    if (!released.ok()) {
      last_error = released.error().describe();
      if (!counted) throw std::runtime_error("warm-up: release at m3 failed: " + last_error);
      ++release.lost;
      continue;
    }
    if (counted) release.samples.push_back(us_between(t0, t1));
  }
  print_row(alloc);
  print_row(release);
  if (!last_error.empty()) std::printf("  (last failure: %s)\n", last_error.c_str());
  const std::string note = "Client at m3 -> m1 -> DTU and back, sequential, each followed by a release";
  add("dtu.alloc_rtt.p50", "us", dtu::bench::percentile(alloc.samples, 50), "etcd.claim.p50", at_most(300),
      note);
  add("dtu.alloc_rtt.p99", "us", dtu::bench::percentile(alloc.samples, 99), "etcd.claim.p99", at_most(2000),
      note);
  add("dtu.alloc_rtt.failed", "count", alloc.lost);
  add("dtu.release_rtt.p50", "us", dtu::bench::percentile(release.samples, 50));
  add("dtu.release_rtt.p99", "us", dtu::bench::percentile(release.samples, 99));
}

// ---- 3. allocation cycles per second, 8 services

struct Worker {
  dtu::client::Client* client = nullptr;
  std::string dtu;
  Clock::time_point count_from;
  Clock::time_point end;
  std::size_t cycles = 0;        // completed within [count_from, end]
  std::vector<double> cycle_us;  // of those
  std::size_t failures = 0;
  std::string last_error;
  bool done = false;
};

// Cycles allocate + release over the worker's units until its end. Gives up after many failures.
asio::awaitable<void> cycle(Worker* w) {
  constexpr std::size_t kMaxFailures = 100;
  for (std::size_t k = 0; Clock::now() < w->end && w->failures < kMaxFailures; ++k) {
    const auto t0 = Clock::now();
    auto alloc = w->client->allocate(w->dtu, kUnitPorts[k % kUnitPorts.size()], 0, {});
    auto lease = co_await std::move(alloc);
    if (!lease.ok()) {
      ++w->failures;
      w->last_error = lease.error().describe();
      continue;
    }
    auto release = w->client->release(lease->id);
    auto released = co_await std::move(release);
    if (!released.ok()) {
      ++w->failures;
      w->last_error = released.error().describe();
      continue;
    }
    const auto t1 = Clock::now();
    if (t0 >= w->count_from && t1 <= w->end) {
      ++w->cycles;
      w->cycle_us.push_back(us_between(t0, t1));
    }
  }
  w->done = true;
}

// 8 services, the i-th at managers[i % size], each on DTU bench-dtu-i. Returns cycles/s.
double measure_cycles(const std::string& label, const std::vector<Site::Manager*>& managers, int seconds,
                      std::vector<double>* cycle_us) {
  asio::io_context io;
  std::vector<std::unique_ptr<dtu::client::Client>> services;
  for (std::size_t i = 0; i < kDtus; ++i) {
    services.push_back(connect(io, *managers[i % managers.size()], "cycle-bench-" + std::to_string(i)));
  }
  const auto start = Clock::now();
  const auto count_from =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(kCycleWarmupSeconds));
  const auto end = count_from + std::chrono::seconds(seconds);
  std::vector<Worker> workers(kDtus);
  for (std::size_t i = 0; i < kDtus; ++i) {
    workers[i].client = services[i].get();
    workers[i].dtu = "bench-dtu-" + std::to_string(i);
    workers[i].count_from = count_from;
    workers[i].end = end;
    asio::co_spawn(io, cycle(&workers[i]), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  }
  const bool finished = run_until(
      io, [&] { return std::all_of(workers.begin(), workers.end(), [](const Worker& w) { return w.done; }); },
      std::chrono::seconds(seconds) + kRequestLimit + 5s);
  if (!finished) throw std::runtime_error(label + ": the services did not finish their cycles");
  std::size_t cycles = 0, failures = 0;
  std::string last_error;
  for (const auto& w : workers) {
    cycles += w.cycles;
    failures += w.failures;
    if (!w.last_error.empty()) last_error = w.last_error;
    cycle_us->insert(cycle_us->end(), w.cycle_us.begin(), w.cycle_us.end());
  }
  const double rate = static_cast<double>(cycles) / static_cast<double>(seconds);
  std::printf(
      "  %-58s  %10.0f cycles/s  (%zu in %d s, cycle p50 %.0f us p99 %.0f us%s%s)\n", label.c_str(), rate,
      cycles, seconds, dtu::bench::percentile(*cycle_us, 50), dtu::bench::percentile(*cycle_us, 99),
      failures > 0 ? (", " + std::to_string(failures) + " failed: ").c_str() : "", last_error.c_str());
  std::fflush(stdout);
  return rate;
}

void measure_throughput(Site::Manager& m1, Site::Manager& m2, Site::Manager& m3, int seconds) {
  std::vector<double> at_m3_us, spread_us, local_us;
  const double at_m3 =
      measure_cycles("8 services at m3, DTUs on m1: alloc+release", {&m3}, seconds, &at_m3_us);
  const double spread = measure_cycles("8 services over m1/m2/m3, DTUs on m1: alloc+release", {&m1, &m2, &m3},
                                       seconds, &spread_us);
  const double local =
      measure_cycles("8 services at m1, DTUs on m1: alloc+release", {&m1}, seconds, &local_us);
  add("dtu.alloc_cycle.throughput", "ops/s", at_m3, "etcd.claim_cycle.throughput", ratio_min(20),
      "allocate+release cycles/s, 8 Client connections at m3, each over units of its own DTU owned by m1, " +
          std::to_string(seconds) + " s");
  add("dtu.alloc_cycle.cycle.p50", "us", dtu::bench::percentile(at_m3_us, 50));
  add("dtu.alloc_cycle.cycle.p99", "us", dtu::bench::percentile(at_m3_us, 99));
  add("dtu.alloc_cycle_spread.throughput", "ops/s", spread, "etcd.claim_cycle.throughput", {},
      "as dtu.alloc_cycle.throughput with the 8 services spread over m1, m2, m3");
  add("dtu.alloc_cycle_local.throughput", "ops/s", local, "etcd.claim_cycle.throughput", {},
      "as dtu.alloc_cycle.throughput with the 8 services at m1 (no peer hop)");
}

// ---- 4. failover

// What the watching service at m3 knows: the records of the DTUs' printers, and for a failover
// in progress, when it was first told each device's new owner (not m1, not orphaned).
struct FailoverWatch {
  std::map<std::pair<std::string, std::string>, dtu::common::DeviceRecord> records;
  bool synced = false;
  bool watching = false;
  std::map<std::pair<std::string, std::string>, Clock::time_point> told;

  dtu::client::FinderEvents events() {
    dtu::client::FinderEvents e;
    e.matched = [this](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) { seen(d); };
    e.changed = [this](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) { seen(d); };
    e.gone = [this](const std::string& dtu, const std::string& device, const std::string&) {
      records.erase({dtu, device});
    };
    e.synced = [this] { synced = true; };
    return e;
  }
  void seen(const dtu::common::DeviceRecord& d) {
    const auto key = std::make_pair(d.dtu, d.device);
    records[key] = d;
    if (watching && d.owner != "m1" && !d.orphaned && !told.contains(key)) told[key] = Clock::now();
  }
  // Every DTU's printers are known, owned by `owner` and not orphaned.
  bool all_at(const std::string& owner) const {
    if (records.size() != kDtus * kUnitPorts.size()) return false;
    return std::all_of(records.begin(), records.end(),
                       [&](const auto& r) { return r.second.owner == owner && !r.second.orphaned; });
  }
};

// How long the DTUs stay at m1 before each fault.
constexpr Clock::duration kSteadyBeforeFault = 1500ms;

struct FailoverGroup {
  Site& site;
  Site::Manager& m1;
  Site::Manager& m2;
  Site::Manager& m3;
  std::vector<DtuSpec> specs;
  std::unique_ptr<DtuHost>& host;
};

// (Re)starts the DTUs and waits until every one is at m1 and the watcher sees them all there.
void home_at_m1(FailoverGroup& g, asio::io_context& io, FailoverWatch& watch) {
  g.host.reset();
  g.host = std::make_unique<DtuHost>(
      g.specs, std::vector<dtu::common::Endpoint>{endpoint_of(g.m1), endpoint_of(g.m2), endpoint_of(g.m3)});
  const auto m1 = endpoint_of(g.m1);
  auto all_home = [&] {
    auto homes = g.host->homes();
    return std::all_of(homes.begin(), homes.end(), [&](const auto& h) { return h == m1; });
  };
  if (!run_until(
          io, [&] { return all_home() && watch.all_at("m1"); }, kStepLimit, {}, 20ms)) {
    throw std::runtime_error(
        "the DTUs did not all come home to m1 (or m3's service did not see it) within " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kStepLimit).count()) + " s");
  }
  // A site's links are steady long before a failure: a DTU backs off before reconnecting only
  // when its link ended within a second of the welcome (dtu_agent.hpp), which a fault right after
  // homing would be.
  const auto steady_until = Clock::now() + kSteadyBeforeFault;
  run_until(
      io, [&] { return Clock::now() >= steady_until; }, kSteadyBeforeFault + 1s);
}

struct FailoverResult {
  std::optional<double> rehome_ms;
  std::optional<double> told_ms;
};

// One failover: `sig` to m1, then until every DTU is connected elsewhere and the watcher has
// been told the new owner of every device.
FailoverResult fail_m1(FailoverGroup& g, asio::io_context& io, FailoverWatch& watch, int sig) {
  const auto m1 = endpoint_of(g.m1);
  std::vector<std::optional<Clock::time_point>> rehomed(kDtus);
  watch.told.clear();
  watch.watching = true;
  auto poll = [&] {
    auto homes = g.host->homes();
    const auto now = Clock::now();
    for (std::size_t i = 0; i < homes.size(); ++i) {
      if (!rehomed[i] && homes[i] && *homes[i] != m1) rehomed[i] = now;
    }
  };
  auto finished = [&] {
    return std::all_of(rehomed.begin(), rehomed.end(), [](const auto& t) { return t.has_value(); }) &&
           watch.told.size() == kDtus * kUnitPorts.size();
  };
  const auto t0 = Clock::now();
  g.m1.process->signal(sig);
  run_until(io, finished, kFailoverLimit, poll, kHomePoll);
  watch.watching = false;
  FailoverResult out;
  if (std::all_of(rehomed.begin(), rehomed.end(), [](const auto& t) { return t.has_value(); })) {
    out.rehome_ms = ms_between(t0, **std::max_element(rehomed.begin(), rehomed.end()));
  }
  if (watch.told.size() == kDtus * kUnitPorts.size()) {
    Clock::time_point last = t0;
    for (const auto& [key, at] : watch.told) last = std::max(last, at);
    out.told_ms = ms_between(t0, last);
  }
  return out;
}

// m1 back (restarted clean), its peers up again, the DTUs home at m1.
void restore_m1(FailoverGroup& g, asio::io_context& io, FailoverWatch& watch, bool stopped) {
  if (stopped) g.m1.process->signal(SIGCONT);
  g.site.restart_manager(g.m1);  // kills it first when it still runs
  for (auto* m : {&g.m1, &g.m2, &g.m3}) {
    if (!g.site.wait_peers_up(*m, 2, kStepLimit))
      throw std::runtime_error(m->id + " does not see its peers up again");
  }
  home_at_m1(g, io, watch);
}

void report_failover(const std::string& name, const std::string& what,
                     const std::vector<FailoverResult>& runs, std::optional<double> target_max,
                     const std::string& baseline, const std::string& note) {
  Row rehome{what + ": last DTU re-homed", "ms", {}, 0};
  Row told{what + ": service at m3 told of the last", "ms", {}, 0};
  for (const auto& r : runs) {
    if (r.rehome_ms) {
      rehome.samples.push_back(*r.rehome_ms);
    } else {
      ++rehome.lost;
    }
    if (r.told_ms) {
      told.samples.push_back(*r.told_ms);
    } else {
      ++told.lost;
    }
  }
  print_row(rehome);
  print_row(told);
  Target target;
  target.max = target_max;
  auto emit = [&](const std::string& stem, const Row& row) {
    if (row.samples.empty()) return;  // none finished: the printed row says so
    add(stem, "ms", dtu::bench::median(row.samples), baseline, target,
        note + "; median of " + std::to_string(row.samples.size()));
    add(stem + ".max", "ms", *std::max_element(row.samples.begin(), row.samples.end()));
  };
  emit(name + ".rehome", rehome);
  emit(name + ".told", told);
  add(name + ".incomplete", "count", std::max(rehome.lost, told.lost));
}

void measure_failover(FailoverGroup& g, int crashes, int stops) {
  asio::io_context io;
  auto service = connect(io, g.m3, "failover-bench");
  FailoverWatch watch;
  add_finder(io, *service, kWatchFinder, watch.events());
  if (!run_until(
          io, [&] { return watch.synced; }, kStepLimit))
    throw std::runtime_error("the finder at m3 never synced");
  home_at_m1(g, io, watch);

  std::vector<FailoverResult> crash_runs, stop_runs;
  for (int i = 0; i < crashes; ++i) {
    crash_runs.push_back(fail_m1(g, io, watch, SIGKILL));
    std::printf("    kill -9 m1 #%d: re-homed %s ms, told %s ms\n", i + 1,
                crash_runs.back().rehome_ms ? std::to_string(*crash_runs.back().rehome_ms).c_str() : "-",
                crash_runs.back().told_ms ? std::to_string(*crash_runs.back().told_ms).c_str() : "-");
    std::fflush(stdout);
    restore_m1(g, io, watch, false);
  }
  for (int i = 0; i < stops; ++i) {
    stop_runs.push_back(fail_m1(g, io, watch, SIGSTOP));
    std::printf("    SIGSTOP m1 #%d: re-homed %s ms, told %s ms\n", i + 1,
                stop_runs.back().rehome_ms ? std::to_string(*stop_runs.back().rehome_ms).c_str() : "-",
                stop_runs.back().told_ms ? std::to_string(*stop_runs.back().told_ms).c_str() : "-");
    std::fflush(stdout);
    restore_m1(g, io, watch, true);
  }
  report_failover(
      "dtu.failover_crash", "kill -9 m1 (8 DTUs)", crash_runs, 100, "etcd.failover",
      "kill -9 of the DTUs' manager -> last DTU connected to m2/m3 (read from the agents every 1 ms) "
      "or the service at m3 told its new owner");
  report_failover(
      "dtu.failover_silent", "SIGSTOP m1 (8 DTUs)", stop_runs, 3.0 * kHeartbeatMs + 300, {},
      "SIGSTOP of the DTUs' manager at 1000 ms x 3 heartbeats -> last DTU re-homed / service told");
}

// ---- 5. convergence of a 5-manager group

void measure_converge(int reps) {
  Site site;
  site.set_heartbeat(kHeartbeatMs, kHeartbeatMisses);
  std::vector<Site::Member> members;
  for (std::size_t i = 0; i < kConvergeIps.size(); ++i)
    members.push_back({"g" + std::to_string(i + 1), kConvergeIps[i]});
  auto managers = site.start_group(members);
  const std::size_t peers = managers.size() - 1;
  for (auto* m : managers) {
    if (!site.wait_peers_up(*m, peers, kStepLimit))
      throw std::runtime_error(m->id + " of the 5-group never saw its peers");
  }
  Row converge{"5 managers killed, restarted at once -> all see 4 peers up", "ms", {}, 0};
  std::vector<double> poll_ms;
  for (int rep = 0; rep < reps; ++rep) {
    for (auto* m : managers) m->process->signal(SIGKILL);
    for (auto* m : managers) {
      if (!m->process->wait_exit(kStepLimit))
        throw std::runtime_error("devmgr " + m->id + " survived SIGKILL");
    }
    const auto t0 = Clock::now();
    for (auto* m : managers) {  // as Site::restart_manager, without waiting for each to listen
      std::vector<std::string> argv = m->argv;
      auto listen = std::find(argv.begin(), argv.end(), "--dtu-listen");
      if (listen != argv.end() && std::next(listen) != argv.end()) *std::next(listen) = m->address;
      m->process = std::make_unique<dtu::testing::Process>(argv, site.dir().path(), m->env, m->id);
    }
    std::set<std::string> pending;
    std::string last_answer;  // the last answer of a manager not converged, for the report
    for (auto* m : managers) pending.insert(m->id);
    Clock::time_point last = t0;
    const auto deadline = t0 + kConvergeLimit;
    while (!pending.empty() && Clock::now() < deadline) {
      for (auto* m : managers) {
        if (!pending.contains(m->id)) continue;
        const auto asked = Clock::now();
        auto r = site.devmgrctl(*m, {"group", "--json"});
        const auto answered = Clock::now();
        poll_ms.push_back(ms_between(asked, answered));
        last_answer = m->id + ": exit " + std::to_string(r.exit_code) + ": " + r.out + r.err;
        if (r.exit_code != 0) continue;  // not listening yet
        std::size_t up = 0;
        const json group = json::parse(r.out);
        for (const auto& member : group.at("members")) {
          if (member.at("state") == "up") ++up;
        }
        if (up == peers) {
          pending.erase(m->id);
          last = std::max(last, answered);
        }
      }
    }
    if (pending.empty()) {
      converge.samples.push_back(ms_between(t0, last));
      std::printf("    restart #%d: converged in %.0f ms\n", rep + 1, converge.samples.back());
    } else {
      ++converge.lost;
      std::printf(
          "    restart #%d: not converged within %lld s; last answer %s\n", rep + 1,
          static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kConvergeLimit).count()),
          last_answer.c_str());
    }
    std::fflush(stdout);
  }
  print_row(converge);
  const double poll = dtu::bench::median(poll_ms);
  if (!converge.samples.empty()) {
    add("dtu.group_converge", "ms", dtu::bench::median(converge.samples), {}, {},
        "5 managers (1000 ms x 3 heartbeats) killed and started at once -> each sees 4 peers up in devmgrctl "
        "group --json (polled; one poll takes ~" +
            std::to_string(static_cast<int>(poll + 0.5)) + " ms); median of " +
            std::to_string(converge.samples.size()));
    add("dtu.group_converge.max", "ms", *std::max_element(converge.samples.begin(), converge.samples.end()));
  }
  add("dtu.group_converge.incomplete", "count", converge.lost);
  add("dtu.group_converge.poll.p50", "ms", poll);
}

// GROUP_BENCH_ONLY=group (sections 1-4, one 3-manager group) or converge (section 5); unset: both.
bool wanted(const std::string& part) {
  const char* only = std::getenv("GROUP_BENCH_ONLY");
  return only == nullptr || *only == '\0' || part == only;
}

void write_figures() {
  const auto path = dtu::bench::write_metrics("group.json", g_metrics);
  std::printf("figures written to %s\n", path.c_str());
}

void run_bench() {
  const int samples = env_int("GROUP_BENCH_SAMPLES", kDefaultSamples, 1, 1'000'000);
  const int seconds = env_int("GROUP_BENCH_SECONDS", kDefaultSeconds, 1, 3600);
  const int crashes = env_int("GROUP_BENCH_CRASHES", kDefaultCrashes, 1, 1000);
  const int stops = env_int("GROUP_BENCH_STOPS", kDefaultStops, 1, 1000);
  const int converges = env_int("GROUP_BENCH_CONVERGES", kDefaultConverges, 1, 1000);

  if (wanted("group")) {
    Site site;
    site.set_heartbeat(kHeartbeatMs, kHeartbeatMisses);
    auto managers = site.start_group({{"m1", kM1Ip}, {"m2", kM2Ip}, {"m3", kM3Ip}});
    auto& m1 = *managers[0];
    auto& m2 = *managers[1];
    auto& m3 = *managers[2];
    for (auto* m : managers)
      REQUIRE_MESSAGE(site.wait_peers_up(*m, 2, kStepLimit), m->id << " never saw its peers");
    std::vector<DtuSpec> specs;
    for (std::size_t i = 0; i < kDtus; ++i) {
      const std::string id = "bench-dtu-" + std::to_string(i);
      auto key = dtu::common::load_key_file(site.dtu_key(id).string());
      REQUIRE_MESSAGE(key.ok(), "the key of " << id << ": " << (key.ok() ? "" : key.error().describe()));
      specs.push_back({id, key->bytes});
    }
    std::unique_ptr<DtuHost> host;
    FailoverGroup group{site, m1, m2, m3, specs, host};
    {  // the DTUs at m1, seen there
      asio::io_context io;
      FailoverWatch watch;
      auto service = connect(io, m3, "start-bench");
      add_finder(io, *service, kWatchFinder, watch.events());
      home_at_m1(group, io, watch);
    }
    std::printf("group m1 %s, m2 %s, m3 %s (heartbeat %d ms x %d), %zu DTUs in this process owned by m1\n",
                m1.address.c_str(), m2.address.c_str(), m3.address.c_str(), kHeartbeatMs, kHeartbeatMisses,
                kDtus);
    std::printf("attach -> notify: %d attach/detach pairs after %d warm-up...\n", samples, kWarmup);
    std::fflush(stdout);
    measure_attach(site, *host, m3, samples);
    std::printf("allocation round trip: %d allocate/release pairs after %d warm-up...\n", samples, kWarmup);
    std::fflush(stdout);
    measure_alloc_rtt(m3, samples);
    std::printf("allocation cycles, 8 services, %d s each (after %.1f s not counted)...\n", seconds,
                kCycleWarmupSeconds);
    std::fflush(stdout);
    measure_throughput(m1, m2, m3, seconds);
    std::printf("failover: %d x kill -9, %d x SIGSTOP of m1...\n", crashes, stops);
    std::fflush(stdout);
    measure_failover(group, crashes, stops);
    host.reset();
  }
  if (!wanted("converge")) return;
  std::printf("convergence: 5-manager group on %s-%s, %d restarts...\n", kConvergeIps.front().c_str(),
              kConvergeIps.back().c_str(), converges);
  std::fflush(stdout);
  measure_converge(converges);
}

}  // namespace

TEST_CASE("group benchmarks") {
  // The in-process agents' lines (manager_lost at each failover, by design) are noise here.
  dtu::common::set_log_level(dtu::common::LogLevel::error);
  try {
    run_bench();
  } catch (...) {
    write_figures();  // what was measured before it stopped
    throw;
  }
  write_figures();
}
