// scale_bench: one devmgr (default heartbeats, 1 s x 3) on 127.0.0.56 with a swarm of simulated
// DTUs (tests/tools/dtu_swarm.cpp, 8 devices each, one TLS link each), at 1,000 DTUs and at
// 10,000 DTUs. For each point:
//   - register_all: from the swarm's start until the manager's metrics endpoint reports every
//     DTU and every device (dtubroker_dtus, dtubroker_devices), read as soon as the swarm prints
//     "all N DTUs welcomed" (polled every kPollStep) and every 2 s besides;
//   - rss / hwm: the devmgr's VmRSS and VmHWM (/proc/<pid>/status) at steady state, after
//     kSettle of quiet and again after the CPU window (the larger is reported);
//   - cpu: the devmgr's utime+stime over the steady window (nothing but 1 s heartbeats), as a
//     share of one core; the swarm's own share is reported beside it;
//   - reconnects: DTU connections past the first per DTU (dtubroker_dtu_connects_total − N).
// Then rss_per_dtu: (rss at 10k − rss at 1k) / 9,000, in KB.
//
// Environment: SCALE_BENCH_DTUS (default 10000) sets the large point, SCALE_BENCH_STEADY_S
// (default 20) the CPU window, SCALE_BENCH_SWARM_THREADS (default 2) the swarm's threads.
// Default run: about 1.5–3 minutes.
//
// The descriptor limit is raised to its hard limit before anything starts, so the devmgr inherits
// it; the bench cannot run (exit 1, saying why) when that is below one descriptor per DTU.
//
// Not a doctest test and not registered with ctest: the doctest runner (bench_host.cpp) only hosts the one
// case, so the harness's REQUIREs report why the bench could not run.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_output.hpp"
#include "site.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using dtu::bench::Metric;
using namespace std::chrono_literals;

constexpr const char* kManagerIp = "127.0.0.56";
constexpr std::size_t kSmallPoint = 1000;
constexpr std::size_t kDevicesPerDtu = 8;
constexpr std::size_t kConnectConcurrency = 64;
// How often the swarm's output is read while DTUs register, and every how many of those polls
// the manager's metrics endpoint is (besides once the swarm says all are welcomed).
constexpr auto kPollStep = 100ms;
constexpr std::size_t kScrapeEvery = 20;
// Quiet time after the last registration before memory is read and the CPU window opens.
constexpr auto kSettle = 3s;
// Registration slower than this is reported as incomplete (what was reached, and when).
constexpr auto kRegisterLimit = 150s;
// The small point's CPU window: enough for the slope, short enough for the budget.
constexpr auto kSmallSteady = 10s;
// Descriptors the devmgr needs beyond one per DTU (listeners, socket, logs, metrics).
constexpr rlim_t kSpareDescriptors = 256;

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  try {
    return static_cast<std::size_t>(std::stoul(text));
  } catch (const std::exception&) {
    throw std::runtime_error(std::string(name) + "=" + text + ": expected a positive integer");
  }
}

// Soft RLIMIT_NOFILE up to the hard limit, so the devmgr started next inherits it.
void raise_descriptor_limit(std::size_t dtus) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) throw std::runtime_error("getrlimit(RLIMIT_NOFILE) failed");
  const rlim_t needed = static_cast<rlim_t>(dtus) + kSpareDescriptors;
  if (limit.rlim_max < needed) {
    rlimit wanted{needed, needed};
    if (::setrlimit(RLIMIT_NOFILE, &wanted) == 0) return;
    throw std::runtime_error("the devmgr needs " + std::to_string(needed) + " file descriptors for " +
                             std::to_string(dtus) + " DTUs but RLIMIT_NOFILE's hard limit is " +
                             std::to_string(limit.rlim_max) + " (raise it, or set SCALE_BENCH_DTUS lower)");
  }
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) throw std::runtime_error("setrlimit(RLIMIT_NOFILE) failed");
}

// GET /metrics from ip:port; the gauges and counters as name → value (labelled series skipped).
std::optional<std::map<std::string, double>> scrape(const std::string& ip, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  timeval timeout{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET /metrics HTTP/1.1\r\nHost: " + ip + "\r\nConnection: close\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buffer[16384];
      for (;;) {
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) break;
        response.append(buffer, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fd);
  if (response.rfind("HTTP/1.1 200", 0) != 0) return std::nullopt;
  std::map<std::string, double> values;
  std::istringstream lines(response.substr(response.find("\r\n\r\n") + 4));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#' || line.find('{') != std::string::npos) continue;
    const auto space = line.find(' ');
    if (space == std::string::npos) continue;
    try {
      values[line.substr(0, space)] = std::stod(line.substr(space + 1));
    } catch (const std::exception&) {
    }
  }
  return values;
}

// VmRSS or VmHWM of `pid`, in MB.
double memory_mb(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;  // kB
  }
  throw std::runtime_error("no " + field + " in /proc/" + std::to_string(pid) + "/status");
}

// utime + stime of `pid`, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;) fields.push_back(f);
  if (fields.size() < 13) throw std::runtime_error("cannot parse /proc/" + std::to_string(pid) + "/stat");
  const double ticks = std::stod(fields[11]) + std::stod(fields[12]);
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::filesystem::path swarm_path() {
  // dtu-swarm lives beside the other test programs: <build>/tests/tools.
  const std::filesystem::path devmgr = dtu::testing::binary_path("devmgr");
  const auto path = devmgr.parent_path().parent_path() / "tests" / "tools" / "dtu-swarm";
  if (::access(path.c_str(), X_OK) != 0) throw std::runtime_error(path.string() + " is not built");
  return path;
}

struct Point {
  std::size_t dtus = 0;
  std::optional<double> register_s;  // nullopt: not all registered within kRegisterLimit
  double reached_dtus = 0;
  double reached_devices = 0;
  double rss_mb = 0;
  double hwm_mb = 0;
  double cpu_percent = 0;
  double swarm_cpu_percent = 0;
  double swarm_rss_mb = 0;
  double reconnects = 0;
  double steady_s = 0;
};

Point measure(dtu::testing::Site& site, std::size_t dtus, int metrics_port, std::chrono::seconds steady,
              std::size_t swarm_threads) {
  Point p;
  p.dtus = dtus;
  const std::string id = "scale-" + std::to_string(dtus);
  auto& manager = site.start_manager(
      id, kManagerIp, {"--metrics-listen", std::string(kManagerIp) + ":" + std::to_string(metrics_port)});
  const pid_t devmgr = manager.process->pid();
  REQUIRE_MESSAGE(dtu::testing::eventually([&] { return scrape(kManagerIp, metrics_port).has_value(); }, 10s),
                  "devmgr's metrics endpoint at " << kManagerIp << ":" << metrics_port << " never answered");

  std::printf("%zu DTUs x %zu devices: starting the swarm\n", dtus, kDevicesPerDtu);
  std::fflush(stdout);
  const auto started = Clock::now();
  dtu::testing::Process swarm(
      {swarm_path().string(), "--manager", manager.address, "--site-key", site.site_key().string(), "--count",
       std::to_string(dtus), "--devices", std::to_string(kDevicesPerDtu), "--prefix", "scale-",
       "--connect-concurrency", std::to_string(kConnectConcurrency), "--threads",
       std::to_string(swarm_threads)},
      site.dir().path(), {}, "swarm-" + std::to_string(dtus));
  const auto want_devices = static_cast<double>(dtus * kDevicesPerDtu);
  // A scrape copies every device record in the manager, so it is asked only when the swarm says
  // every DTU is welcomed (its snapshot acked), and otherwise every kScrapeEvery polls.
  const std::string all_welcomed = "all " + std::to_string(dtus) + " DTUs welcomed";
  for (std::size_t poll = 0;; ++poll) {
    const bool swarm_done = swarm.out().find(all_welcomed) != std::string::npos;
    if (swarm_done || poll % kScrapeEvery == 0) {
      if (auto m = scrape(kManagerIp, metrics_port)) {
        p.reached_dtus = (*m)["dtubroker_dtus"];
        p.reached_devices = (*m)["dtubroker_devices"];
        if (p.reached_dtus == static_cast<double>(dtus) && p.reached_devices == want_devices) {
          p.register_s = std::chrono::duration<double>(Clock::now() - started).count();
          break;
        }
      }
    }
    REQUIRE_MESSAGE(!swarm.exit_status().has_value(), "dtu-swarm exited:\n" << swarm.out() << swarm.log());
    REQUIRE_MESSAGE(!manager.process->exit_status().has_value(), "devmgr exited:\n"
                                                                     << manager.process->log());
    if (Clock::now() - started > kRegisterLimit) break;
    std::this_thread::sleep_for(kPollStep);
  }
  std::printf("  registered: %.0f DTUs, %.0f devices after %.1f s\n", p.reached_dtus, p.reached_devices,
              std::chrono::duration<double>(Clock::now() - started).count());
  std::fflush(stdout);

  std::this_thread::sleep_for(kSettle);
  const double rss_before = memory_mb(devmgr, "VmRSS");
  const double devmgr_cpu0 = cpu_seconds(devmgr);
  const double swarm_cpu0 = cpu_seconds(swarm.pid());
  const auto window_start = Clock::now();
  std::this_thread::sleep_for(steady);
  const double devmgr_cpu1 = cpu_seconds(devmgr);
  const double swarm_cpu1 = cpu_seconds(swarm.pid());
  p.steady_s = std::chrono::duration<double>(Clock::now() - window_start).count();
  p.cpu_percent = 100.0 * (devmgr_cpu1 - devmgr_cpu0) / p.steady_s;
  p.swarm_cpu_percent = 100.0 * (swarm_cpu1 - swarm_cpu0) / p.steady_s;
  p.rss_mb = std::max(rss_before, memory_mb(devmgr, "VmRSS"));
  p.hwm_mb = memory_mb(devmgr, "VmHWM");
  p.swarm_rss_mb = memory_mb(swarm.pid(), "VmRSS");
  if (auto m = scrape(kManagerIp, metrics_port)) {
    p.reconnects = (*m)["dtubroker_dtu_connects_total"] - static_cast<double>(dtus);
    p.reached_dtus = (*m)["dtubroker_dtus"];
  }
  std::printf(
      "  steady %.0f s: devmgr %.1f%% CPU, RSS %.1f MB (HWM %.1f MB); swarm %.1f%% CPU, %.0f MB; "
      "%.0f DTUs connected, %.0f reconnects\n",
      p.steady_s, p.cpu_percent, p.rss_mb, p.hwm_mb, p.swarm_cpu_percent, p.swarm_rss_mb, p.reached_dtus,
      p.reconnects);
  std::fflush(stdout);
  swarm.signal(SIGTERM);
  swarm.wait_exit(10s);
  manager.process.reset();  // SIGTERM, then reaped: the next point starts alone
  return p;
}

std::string register_note(const Point& p) {
  if (p.register_s) return "swarm start until the metrics endpoint shows every DTU and device";
  return "NOT ALL REGISTERED within " + std::to_string(kRegisterLimit.count()) +
         " s: " + std::to_string(static_cast<long>(p.reached_dtus)) + " DTUs, " +
         std::to_string(static_cast<long>(p.reached_devices)) + " devices (value = the limit)";
}

dtu::bench::Target at_most(double max) {
  dtu::bench::Target t;
  t.max = max;
  return t;
}

void report(const Point& small, const Point& large) {
  // Over the DTUs actually connected: a run whose large point did not register them all still
  // gives the slope.
  const double per_dtu_kb =
      (large.rss_mb - small.rss_mb) * 1024.0 / std::max(1.0, large.reached_dtus - small.reached_dtus);
  std::printf("\nscale: one devmgr, heartbeats 1 s x 3, DTUs from dtu-swarm (%zu devices each)\n",
              kDevicesPerDtu);
  std::printf("%-10s %12s %10s %10s %10s %11s %10s %10s\n", "DTUs", "register (s)", "RSS (MB)", "HWM (MB)",
              "CPU (%)", "swarm CPU", "window (s)", "reconnects");
  for (const Point* p : {&small, &large}) {
    const std::string reg = p->register_s ? std::to_string(*p->register_s).substr(0, 6) : "incomplete";
    std::printf("%-10zu %12s %10.1f %10.1f %10.1f %11.1f %10.1f %10.0f\n", p->dtus, reg.c_str(), p->rss_mb,
                p->hwm_mb, p->cpu_percent, p->swarm_cpu_percent, p->steady_s, p->reconnects);
  }
  std::printf(
      "RSS per DTU (slope from %.0f to %.0f connected): %.1f KB; targets at %zu: RSS <= 300 MB, CPU <= 25 "
      "%%\n",
      small.reached_dtus, large.reached_dtus, per_dtu_kb, large.dtus);

  const auto reg = [](const Point& p) {
    return p.register_s.value_or(static_cast<double>(kRegisterLimit.count()));
  };
  const std::string at = " at " + std::to_string(large.dtus) + " DTUs x 8 devices";
  std::vector<Metric> metrics = {
      {"dtu.scale.register_all", "s", reg(large), "", {}, register_note(large) + at},
      {"dtu.scale.rss", "MB", large.rss_mb, "", at_most(300.0), "devmgr VmRSS at steady state" + at},
      {"dtu.scale.hwm", "MB", large.hwm_mb, "", {}, "devmgr VmHWM (peak, registration included)" + at},
      {"dtu.scale.cpu", "%", large.cpu_percent, "", at_most(25.0),
       "devmgr utime+stime over " + std::to_string(static_cast<int>(large.steady_s)) +
           " s of 1 s heartbeats" + at},
      {"dtu.scale.swarm_cpu",
       "%",
       large.swarm_cpu_percent,
       "",
       {},
       "dtu-swarm's own CPU in the same window" + at},
      {"dtu.scale.reconnects", "count", large.reconnects, "", {}, "DTU connections past the first" + at},
      {"dtu.scale.rss_per_dtu",
       "KB",
       per_dtu_kb,
       "",
       {},
       "(RSS at " + std::to_string(static_cast<long>(large.reached_dtus)) + " DTUs - RSS at " +
           std::to_string(static_cast<long>(small.reached_dtus)) + ") / difference"},
      {"dtu.scale.1k.register_all", "s", reg(small), "", {}, register_note(small) + " at 1000 DTUs"},
      {"dtu.scale.1k.rss", "MB", small.rss_mb, "", {}, "devmgr VmRSS at 1000 DTUs"},
      {"dtu.scale.1k.cpu", "%", small.cpu_percent, "", {}, "devmgr CPU at 1000 DTUs"},
  };
  const auto path = dtu::bench::write_metrics("scale.json", metrics);
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace

TEST_CASE("scale: one manager with thousands of DTUs") {
  const std::size_t large = env_size("SCALE_BENCH_DTUS", 10000);
  const auto steady = std::chrono::seconds(env_size("SCALE_BENCH_STEADY_S", 20));
  const std::size_t threads = env_size("SCALE_BENCH_SWARM_THREADS", 2);
  REQUIRE_MESSAGE(large > kSmallPoint, "SCALE_BENCH_DTUS must be above " << kSmallPoint);
  raise_descriptor_limit(large);
  swarm_path();  // fails now, not after the first point, when it is missing

  dtu::testing::Site site;
  site.set_heartbeat(1000, 3);  // the defaults, not the tests' fast heartbeats
  const Point small = measure(site, kSmallPoint, 9561, std::chrono::seconds(kSmallSteady), threads);
  const Point big = measure(site, large, 9562, steady, threads);
  report(small, big);
}
