// transport_bench: the loopback floor under every dtubroker link, and the in-band channel's stream
// throughput compared with it. Four measurements; the TLS floor's runs and the in-band stream's
// take turns, so that each pair shares the machine's load of the moment:
//
//   floor.tcp_rtt        a 200-byte ping-pong between this process and a forked child over plain
//                        blocking TCP sockets (TCP_NODELAY) on 127.0.0.52: kWarmupRoundTrips
//                        untimed, then kDefaultRoundTrips timed, each round trip on its own. Three
//                        placements: unpinned; both ends pinned to one CPU (same_cpu); the ends
//                        pinned to two CPUs (cross_cpu, only when two CPUs are allowed).
//   floor.tcp_ring3      the floor under the group's figures (group_bench): 200-byte messages
//                        around a ring of three processes over plain blocking TCP (TCP_NODELAY) on
//                        127.0.0.52, this process -> child -> child -> this process, each child
//                        writing on at once what it read. The hops of an attach (a DTU in
//                        group_bench -> m1 -> m3 -> a service in group_bench) with no TLS and no
//                        work: one message at a time, kWarmupRoundTrips untimed then
//                        kDefaultRoundTrips timed (p50, p99; baseline etcd's put->watch); then
//                        kRingInFlight messages circulating for about kDefaultRunSeconds, like the
//                        8 services of the cycles figure, as allocate + release cycles per second
//                        at kHopsPerCycle hops per cycle (baseline etcd's claim cycles).
//   floor.tls_stream     a raw TLS stream from this process to a forked child on 127.0.0.53, made
//                        with the project's own TLS setup (dtu/common/tls.hpp and net.hpp: TLS 1.3,
//                        PSK with (EC)DHE, AES-128-GCM, the asio::ssl stream every link uses), one
//                        direction, kTlsBlock-byte writes for about kDefaultRunSeconds; the clock
//                        stops when the child has read and decrypted every byte (it answers one
//                        byte after the last block). The median of the runs, each run just before
//                        one of the in-band stream's.
//   dtu.inband_stream    the real path: a devmgr (127.0.0.54) and a dtu-agent on the simulated
//                        backend (in-band listener on 127.0.0.55), started with the integration
//                        harness; this process is the service: libdtu-client allocates the bench
//                        printer's unit, opens its InbandChannel and calls stream() on its bulk OUT
//                        endpoint back to back with kStreamCallBytes each, for about
//                        kDefaultRunSeconds. stream() completes when the DTU has answered usb_done
//                        for every chunk, i.e. the (simulated) device accepted every byte; the
//                        clock stops at the last completion. The median of the runs, with the TLS
//                        floor as baseline (target: at least 0.8 of it).
//
// Alongside, for finding where the in-band path loses against the floor (not targets): the CPU
// time per MB of each side of both streams (this process and the child or dtu-agent; under a
// shared CPU the side with the most CPU per MB bounds the rate), single write() round trips of
// one stream() chunk (InbandChannel::kStreamChunk) and of 200 bytes, and write() with other
// windows and chunk sizes than stream()'s (one run each).
//
// The bench printer is the demo's printer (demo/sim-devices.json) without the "sink": its OUT
// endpoint accepts and discards, so the agent does not keep gigabytes of captured bytes.
//
// MB are 10^6 bytes. Longer or shorter runs: BENCH_TRANSPORT_SECONDS (seconds per throughput run,
// default 2), BENCH_TRANSPORT_RUNS (throughput runs, default 5), BENCH_TRANSPORT_ROUND_TRIPS
// (timed round trips per placement and around the ring, default 20000). The default run takes about 30-60 s.
//
// The bench prints a table and writes its figures to $BENCH_OUT_DIR/transport.json
// (tests/bench/bench_output.hpp). It never fails on a number: it exits non-zero only when it could
// not run (a child failed, the site did not come up, a transfer failed), saying why.
//
// Threads: one (the harness starts processes, never threads, so forking beside the site is safe).
// Each floor forks children that exit when its run is over. Not a doctest test and not registered
// with ctest: the doctest runner below only hosts the one case, so the harness's REQUIREs report
// why the bench could not run.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_output.hpp"
#include "dtu/client/client.hpp"
#include "dtu/client/inband_channel.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/transport.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

namespace {

using dtu::testing::Fd;

using Clock = std::chrono::steady_clock;
using Micros = std::chrono::duration<double, std::micro>;
using Seconds = std::chrono::duration<double>;
using dtu::common::Bytes;
using dtu::common::Errc;
using dtu::common::Error;
using dtu::common::Result;

// Addresses (the bench's own: 127.0.0.52–55).
constexpr const char* kTcpIp = "127.0.0.52";
constexpr const char* kTlsIp = "127.0.0.53";
constexpr const char* kManagerIp = "127.0.0.54";
constexpr const char* kInbandIp = "127.0.0.55";

// TCP ping-pong: the message size, and the round trips per placement.
constexpr std::size_t kMessageBytes = 200;
constexpr int kWarmupRoundTrips = 1000;
constexpr int kDefaultRoundTrips = 20000;
// The ring: messages in flight for its throughput (group_bench's 8 services, one request each),
// and the process hops of one allocate + release (service -> m3 -> m1 -> DTU and back, twice).
constexpr int kRingInFlight = 8;
constexpr int kHopsPerCycle = 12;
// Throughput: seconds per run and runs (the median is reported).
constexpr double kDefaultRunSeconds = 2.0;
constexpr int kDefaultRuns = 5;
// TLS floor: bytes per write. Large, so the figure is TLS's and the kernel's, not per-call costs;
// the first byte of each block says whether it is the last (kLastBlock) or not (kMoreBlocks).
constexpr std::size_t kTlsBlock = 256 * 1024;
constexpr std::uint8_t kMoreBlocks = 0;
constexpr std::uint8_t kLastBlock = 1;
constexpr const char* kTlsIdentity = "transport-bench";
// In-band: bytes per stream() call (128 chunks of InbandChannel::kStreamChunk), and the single
// writes timed to show the per-request round trip.
constexpr std::size_t kStreamCallBytes = 8 * 1024 * 1024;
constexpr std::size_t kWriteSamples = 300;
constexpr std::size_t kSmallWriteBytes = 200;
constexpr std::uint8_t kOutEndpoint = 0x01;
// Diagnostic rows: write() calls of (chunk bytes, kept in flight), one run each. The first is what
// stream() does; the others show what a deeper window or larger chunks would give.
constexpr std::pair<std::size_t, std::size_t> kPipelines[] = {
    {64 * 1024, 4}, {64 * 1024, 16}, {256 * 1024, 4}, {256 * 1024, 16}};
constexpr const char* kDtu = "bench-dtu";
constexpr const char* kPort = "1-1";
// Bounds on waits that a healthy loopback meets at once: a blocked socket call, a handshake,
// a child's exit, one throughput run beyond its own length.
constexpr std::chrono::seconds kSocketLimit{10};
constexpr std::chrono::seconds kHandshakeLimit{10};
constexpr std::chrono::seconds kChildExitLimit{10};
constexpr std::chrono::seconds kRunSlack{30};
// One in-band write; the device answers at once.
constexpr std::chrono::seconds kWriteTimeout{10};

struct Settings {
  int round_trips = kDefaultRoundTrips;
  double run_seconds = kDefaultRunSeconds;
  int runs = kDefaultRuns;
};

// A positive number from the environment variable `name`, or `fallback` when unset. A value that
// is not a positive number stops the bench with a message naming the variable.
double env_number(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0)) {
    throw std::runtime_error(std::string(name) + "='" + text + "' is not a positive number");
  }
  return value;
}

Settings read_settings() {
  Settings s;
  s.round_trips = static_cast<int>(env_number("BENCH_TRANSPORT_ROUND_TRIPS", kDefaultRoundTrips));
  s.run_seconds = env_number("BENCH_TRANSPORT_SECONDS", kDefaultRunSeconds);
  s.runs = static_cast<int>(env_number("BENCH_TRANSPORT_RUNS", kDefaultRuns));
  if (s.round_trips < 1 || s.runs < 1) {
    throw std::runtime_error("BENCH_TRANSPORT_ROUND_TRIPS and BENCH_TRANSPORT_RUNS must be at least 1");
  }
  return s;
}

std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

// ---- plain sockets and child processes

sockaddr_in address_of(const char* ip, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, ip, &addr.sin_addr) != 1)
    throw std::runtime_error(std::string("bad address ") + ip);
  return addr;
}

// Every blocking call on `fd` fails after kSocketLimit instead of hanging.
void bound_blocking_calls(int fd) {
  timeval limit{};
  limit.tv_sec = kSocketLimit.count();
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit) != 0) {
    throw std::runtime_error(errno_text("setsockopt SO_RCVTIMEO/SO_SNDTIMEO"));
  }
}

void set_nodelay(int fd) {
  const int on = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) {
    throw std::runtime_error(errno_text("setsockopt TCP_NODELAY"));
  }
}

struct Listener {
  Fd fd;
  std::uint16_t port = 0;
};

// A TCP listener on `ip`, port chosen by the kernel.
Listener listen_on(const char* ip) {
  Listener l;
  l.fd = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (l.fd.get() < 0) throw std::runtime_error(errno_text("socket"));
  const int on = 1;
  ::setsockopt(l.fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in addr = address_of(ip, 0);
  if (::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error(errno_text(std::string("bind ") + ip));
  }
  if (::listen(l.fd.get(), 4) != 0) throw std::runtime_error(errno_text("listen"));
  socklen_t length = sizeof addr;
  if (::getsockname(l.fd.get(), reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    throw std::runtime_error(errno_text("getsockname"));
  }
  l.port = ntohs(addr.sin_port);
  return l;
}

// The one connection to `listener`, within kSocketLimit.
Fd accept_one(const Listener& listener) {
  pollfd p{listener.fd.get(), POLLIN, 0};
  const int ready = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kSocketLimit).count()));
  if (ready <= 0) throw std::runtime_error("the child never connected");
  Fd fd(::accept4(listener.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (fd.get() < 0) throw std::runtime_error(errno_text("accept"));
  return fd;
}

Fd connect_to(const char* ip, std::uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw std::runtime_error(errno_text("socket"));
  bound_blocking_calls(fd.get());
  sockaddr_in addr = address_of(ip, port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error(errno_text(std::string("connect ") + ip));
  }
  return fd;
}

// Reads what has arrived, up to n bytes (waiting for the first); 0 at the end of the stream.
std::size_t read_some(int fd, std::uint8_t* data, std::size_t n) {
  for (;;) {
    const ssize_t got = ::read(fd, data, n);
    if (got >= 0) return static_cast<std::size_t>(got);
    if (errno != EINTR) throw std::runtime_error(errno_text("read"));
  }
}

// Reads exactly n bytes; false on a clean end of stream before the first byte.
bool read_exact(int fd, std::uint8_t* data, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    const std::size_t got = read_some(fd, data + done, n - done);
    if (got == 0 && done == 0) return false;
    if (got == 0) throw std::runtime_error("the peer closed in the middle of a message");
    done += got;
  }
  return true;
}

void write_exact(int fd, const std::uint8_t* data, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    const ssize_t put = ::write(fd, data + done, n - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(errno_text("write"));
    }
    done += static_cast<std::size_t>(put);
  }
}

// Forks a child that runs `body` and exits with its status (1 and a message on stderr when it
// throws). The child never returns into the caller.
pid_t fork_child(const std::function<int()>& body) {
  std::fflush(stdout);  // or the child's exit would print what the parent buffered, twice
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(errno_text("fork"));
  if (pid > 0) return pid;
  int status = 1;
  try {
    status = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "transport_bench child: %s\n", e.what());
  }
  std::fflush(stderr);
  ::_exit(status);
}

// Waits up to kChildExitLimit for the child to exit (then kills it); whether it exited with 0.
// *cpu_seconds (if given): the CPU time (user + system) the child used.
bool reap(pid_t pid, double* cpu_seconds = nullptr) {
  const auto deadline = Clock::now() + kChildExitLimit;
  int status = 0;
  for (;;) {
    rusage usage{};
    const pid_t r = ::wait4(pid, &status, WNOHANG, &usage);
    if (r == pid) {
      if (cpu_seconds != nullptr) {
        *cpu_seconds = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
      }
      return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    if (r < 0) return false;
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return false;
}

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0)
    throw std::runtime_error(errno_text("sched_getaffinity"));
  std::vector<int> cpus;
  for (std::size_t cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(static_cast<int>(cpu));
  }
  return cpus;
}

void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<std::size_t>(cpu), &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    throw std::runtime_error(errno_text("sched_setaffinity to CPU " + std::to_string(cpu)));
  }
}

// Pins this process to `cpu` (if any) for its lifetime, then gives back the CPUs it had.
class ScopedPin {
 public:
  explicit ScopedPin(std::optional<int> cpu) {
    CPU_ZERO(&saved_);
    if (::sched_getaffinity(0, sizeof saved_, &saved_) != 0)
      throw std::runtime_error(errno_text("sched_getaffinity"));
    if (cpu) pin_to(*cpu);
  }
  ~ScopedPin() { ::sched_setaffinity(0, sizeof saved_, &saved_); }
  ScopedPin(const ScopedPin&) = delete;
  ScopedPin& operator=(const ScopedPin&) = delete;

 private:
  cpu_set_t saved_;
};

// CPU seconds (user + system) of this process so far.
double own_cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// CPU seconds (user + system) of process `pid` so far, from /proc/<pid>/stat; 0 when unreadable.
double process_cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close_paren = text.rfind(')');
  if (close_paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(close_paren + 2));
  std::string field;
  double ticks = 0;
  // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index >= 14) ticks += std::strtod(field.c_str(), nullptr);
  }
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// ---- floor.tcp_rtt

// Writes a kMessageBytes message on `out` and waits for it to come back on `in`, one at a time:
// kWarmupRoundTrips untimed, then the microseconds of each of `round_trips`. `peer` names what
// closed early.
std::vector<double> time_round_trips(int out, int in, int round_trips, const std::string& peer) {
  std::vector<std::uint8_t> message(kMessageBytes, 0x5a);
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(round_trips));
  for (int i = 0; i < kWarmupRoundTrips + round_trips; ++i) {
    const auto t0 = Clock::now();
    write_exact(out, message.data(), message.size());
    if (!read_exact(in, message.data(), message.size())) throw std::runtime_error(peer + " closed early");
    if (i >= kWarmupRoundTrips) us.push_back(Micros(Clock::now() - t0).count());
  }
  return us;
}

struct Placement {
  std::string name;   // metric stem: "floor.tcp_rtt_same_cpu"
  std::string label;  // table row
  std::optional<int> parent_cpu;
  std::optional<int> child_cpu;
  std::vector<double> us = {};
};

// The child's side: echoes every kMessageBytes message until the parent closes.
int echo_messages(std::uint16_t port, std::optional<int> cpu) {
  if (cpu) pin_to(*cpu);
  Fd fd = connect_to(kTcpIp, port);
  set_nodelay(fd.get());
  std::vector<std::uint8_t> message(kMessageBytes);
  while (read_exact(fd.get(), message.data(), message.size())) {
    write_exact(fd.get(), message.data(), message.size());
  }
  return 0;
}

// Times `round_trips` ping-pongs (after kWarmupRoundTrips) with the ends placed as `p` says.
void measure_round_trips(Placement& p, int round_trips) {
  Listener listener = listen_on(kTcpIp);
  const std::uint16_t port = listener.port;
  const std::optional<int> child_cpu = p.child_cpu;
  const pid_t child = fork_child([&] {
    listener.fd.reset();
    return echo_messages(port, child_cpu);
  });
  std::exception_ptr failure;
  try {
    ScopedPin pin(p.parent_cpu);
    Fd fd = accept_one(listener);
    listener.fd.reset();
    bound_blocking_calls(fd.get());
    set_nodelay(fd.get());
    p.us = time_round_trips(fd.get(), fd.get(), round_trips, "the echo child");
  } catch (...) {
    failure = std::current_exception();
  }
  listener.fd.reset();
  const bool child_ok = reap(child);  // the child sees the end of stream once fd is closed above
  if (failure) std::rethrow_exception(failure);
  if (!child_ok) throw std::runtime_error("the TCP echo child failed (" + p.label + ")");
}

// ---- floor.tcp_ring3

struct RingFigures {
  std::vector<double> us;   // one message around the ring, each
  double cycles_per_s = 0;  // kRingInFlight circulating: ring trips x 3 hops / kHopsPerCycle, per second
};

// A child of the ring: accepts the previous process on `in`, connects to the next on `next_port`,
// and writes on whatever it reads, until the previous one closes.
int relay_ring(const Listener& in, std::uint16_t next_port) {
  Fd out = connect_to(kTcpIp, next_port);
  set_nodelay(out.get());
  Fd from = accept_one(in);
  bound_blocking_calls(from.get());
  std::vector<std::uint8_t> buffer(kRingInFlight * kMessageBytes);
  while (const std::size_t got = read_some(from.get(), buffer.data(), buffer.size())) {
    write_exact(out.get(), buffer.data(), got);
  }
  return 0;
}

// Times single messages around the ring, then how many go round with kRingInFlight circulating.
RingFigures measure_ring(int round_trips, double seconds) {
  // Each process listens for the one before it: this process for the second child, the first
  // child for this process, the second child for the first.
  Listener mine = listen_on(kTcpIp);
  Listener first = listen_on(kTcpIp);
  Listener second = listen_on(kTcpIp);
  std::vector<pid_t> children;
  children.push_back(fork_child([&] {
    mine.fd.reset();
    second.fd.reset();
    return relay_ring(first, second.port);
  }));
  children.push_back(fork_child([&] {
    mine.fd.reset();
    first.fd.reset();
    return relay_ring(second, mine.port);
  }));
  first.fd.reset();
  second.fd.reset();
  RingFigures figures;
  std::exception_ptr failure;
  try {
    Fd out = connect_to(kTcpIp, first.port);
    set_nodelay(out.get());
    Fd in = accept_one(mine);
    mine.fd.reset();
    bound_blocking_calls(in.get());
    figures.us = time_round_trips(out.get(), in.get(), round_trips, "the ring");
    // Throughput: this process forwards what comes back, as the children do, until the time is up,
    // then takes the messages still in flight off the ring.
    std::vector<std::uint8_t> buffer(kRingInFlight * kMessageBytes, 0x5a);
    write_exact(out.get(), buffer.data(), buffer.size());
    std::size_t in_flight = buffer.size();
    std::size_t returned = 0;
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration_cast<Clock::duration>(Seconds(seconds));
    std::optional<Clock::time_point> stopped;  // when this process stopped forwarding
    while (in_flight > 0) {
      const std::size_t n = read_some(in.get(), buffer.data(), buffer.size());
      if (n == 0) throw std::runtime_error("the ring closed early");
      in_flight -= n;
      if (stopped) continue;
      returned += n;
      if (const auto now = Clock::now(); now >= end) {
        stopped = now;
        continue;
      }
      write_exact(out.get(), buffer.data(), n);
      in_flight += n;
    }
    const double trips = static_cast<double>(returned) / static_cast<double>(kMessageBytes);
    figures.cycles_per_s = trips * 3.0 / kHopsPerCycle / Seconds(*stopped - start).count();
  } catch (...) {
    failure = std::current_exception();
  }
  // Closing our end of the ring ends the first child, whose exit ends the second.
  mine.fd.reset();
  bool children_ok = true;
  for (pid_t child : children) children_ok = reap(child) && children_ok;
  if (failure) std::rethrow_exception(failure);
  if (!children_ok) throw std::runtime_error("a ring child failed");
  return figures;
}

// ---- floor.tls_stream

// Runs `op` on `io` until it completes or `limit` passes; its result, or Errc::timeout.
template <typename T>
asio::awaitable<void> store_into(asio::awaitable<Result<T>> op, std::optional<Result<T>>* out) {
  auto value = co_await std::move(op);
  out->emplace(std::move(value));
}

template <typename T>
Result<T> run_to_completion(asio::io_context& io, asio::awaitable<Result<T>> op, Clock::duration limit,
                            const std::string& what) {
  std::optional<Result<T>> out;
  std::exception_ptr failure;
  asio::co_spawn(io, store_into(std::move(op), &out), [&failure](std::exception_ptr e) { failure = e; });
  const auto deadline = Clock::now() + limit;
  while (!out && !failure && Clock::now() < deadline) {
    io.restart();
    if (io.run_one_until(deadline) == 0) break;  // no work left, or the deadline passed
  }
  if (failure) std::rethrow_exception(failure);
  if (!out) return Error(Errc::timeout, what + " did not finish in time");
  return std::move(*out);
}

Error io_failure(const std::string& what, const std::error_code& ec) {
  return Error(Errc::io_error, what + ": " + dtu::common::describe_tls_error(ec));
}

// The child's side: accepts one TLS connection, reads and decrypts blocks until the last, then
// answers one byte and waits for the writer to close.
asio::awaitable<Result<void>> tls_sink(asio::ip::tcp::acceptor& acceptor, asio::ssl::context& context) {
  auto accept = acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
  auto [ec, socket] = co_await std::move(accept);
  if (ec) co_return io_failure("accept", ec);
  auto handshake = dtu::common::tls_accept(std::move(socket), context, kHandshakeLimit);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) co_return transport.error();
  dtu::common::Transport& stream = **transport;
  std::vector<std::uint8_t> block(kTlsBlock);
  for (;;) {
    std::size_t filled = 0;
    while (filled < block.size()) {
      auto read = stream.read_some(asio::buffer(block.data() + filled, block.size() - filled));
      const auto r = co_await std::move(read);
      if (r.ec) co_return io_failure("reading the stream", r.ec);
      filled += r.bytes;
    }
    if (block[0] == kLastBlock) break;
  }
  const std::uint8_t ack = 1;
  auto write = stream.write_all(asio::buffer(&ack, 1));
  const auto w = co_await std::move(write);
  if (w.ec) co_return io_failure("answering", w.ec);
  auto read = stream.read_some(asio::buffer(block.data(), 1));  // the writer's close (an error here)
  co_await std::move(read);
  co_return Result<void>{};
}

int tls_sink_process(int listen_fd, const Bytes& key, Clock::duration limit) {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::v4(), listen_fd);
  auto context =
      dtu::common::make_psk_server_context([key](std::string_view identity) -> std::optional<Bytes> {
        if (identity == kTlsIdentity) return key;
        return std::nullopt;
      });
  auto done = run_to_completion(io, tls_sink(acceptor, *context), limit, "the TLS reader");
  if (!done.ok()) throw std::runtime_error("TLS reader: " + done.error().describe());
  return 0;
}

struct StreamRun {
  std::size_t bytes = 0;
  double seconds = 0;
  double sender_cpu = 0;    // CPU seconds of the sending process (the service) during the run
  double receiver_cpu = 0;  // CPU seconds of the receiving process (the DTU)
  double mb_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0; }
};

// The parent's side: connects, writes kTlsBlock blocks for `seconds`, the last one marked, and
// stops the clock at the reader's answer.
asio::awaitable<Result<StreamRun>> tls_source(std::uint16_t port, Bytes key, double seconds) {
  auto dial = dtu::common::tcp_connect(dtu::common::Endpoint{kTlsIp, port}, kHandshakeLimit);
  auto socket = co_await std::move(dial);
  if (!socket.ok()) co_return socket.error();
  auto context = dtu::common::make_psk_client_context();
  auto handshake = dtu::common::tls_connect(std::move(socket.value()), *context, kTlsIdentity, std::move(key),
                                            kHandshakeLimit);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) co_return transport.error();
  dtu::common::Transport& stream = **transport;
  std::vector<std::uint8_t> block(kTlsBlock, 0xa5);
  const auto ex = co_await asio::this_coro::executor;
  StreamRun run;
  const auto start = Clock::now();
  const auto stop = start + std::chrono::duration_cast<Clock::duration>(Seconds(seconds));
  for (bool last = false; !last;) {
    last = Clock::now() >= stop;
    block[0] = last ? kLastBlock : kMoreBlocks;
    auto write = stream.write_all(asio::buffer(block));
    const auto w = co_await std::move(write);
    if (w.ec) co_return io_failure("writing the stream", w.ec);
    run.bytes += block.size();
    // A write that never had to wait never left this coroutine: when the reader kept up, the
    // in-band site's links on this io_context went unanswered for the whole run, and a run of
    // 3 s or more had the DTU close the channel as silent (heartbeats_missed=3).
    co_await asio::post(ex, asio::use_awaitable);
  }
  std::uint8_t ack = 0;
  auto read = stream.read_some(asio::buffer(&ack, 1));
  const auto r = co_await std::move(read);
  if (r.ec) co_return io_failure("waiting for the reader's answer", r.ec);
  run.seconds = Seconds(Clock::now() - start).count();
  stream.close();
  co_return run;
}

// One run of the TLS floor; its writer runs on `io`, which meanwhile goes on serving the links of
// the in-band site (their heartbeats), so that the floor can run between the in-band runs.
StreamRun measure_tls_run(double seconds, asio::io_context& io) {
  const Bytes key = dtu::common::random_bytes(32);
  Listener listener = listen_on(kTlsIp);
  const auto limit = std::chrono::duration_cast<Clock::duration>(Seconds(seconds)) + kRunSlack;
  const int listen_fd = listener.fd.get();
  const pid_t child = fork_child([&] { return tls_sink_process(listen_fd, key, limit); });
  listener.fd.reset();
  std::optional<Result<StreamRun>> run;
  std::exception_ptr failure;
  const double cpu_before = own_cpu_seconds();
  try {
    run.emplace(run_to_completion(io, tls_source(listener.port, key, seconds), limit, "the TLS writer"));
  } catch (...) {
    failure = std::current_exception();
  }
  const double sender_cpu = own_cpu_seconds() - cpu_before;
  double receiver_cpu = 0;
  const bool child_ok = reap(child, &receiver_cpu);
  if (failure) std::rethrow_exception(failure);
  if (!run->ok()) throw std::runtime_error("TLS floor: " + run->error().describe());
  if (!child_ok) throw std::runtime_error("TLS floor: the reader child failed");
  StreamRun out = run->value();
  out.sender_cpu = sender_cpu;  // includes the handshake, as the receiver's does
  out.receiver_cpu = receiver_cpu;
  return out;
}

// ---- dtu.inband_stream

struct Pipeline {
  std::size_t chunk = 0;
  std::size_t depth = 0;
  StreamRun run = {};
};

struct InbandFigures {
  std::vector<StreamRun> runs;
  std::vector<double> write_chunk_us;  // one write() of InbandChannel::kStreamChunk bytes
  std::vector<double> write_small_us;  // one write() of kSmallWriteBytes
  std::vector<Pipeline> pipelines;     // diagnostic: write() with other windows and chunk sizes
};

// The demo's printer with a discarding OUT endpoint (no "sink"): format in
// dtu-agent/include/dtu/agent/sim_backend.hpp.
nlohmann::json bench_catalogue() {
  using nlohmann::json;
  json endpoints = json::array({json{{"address", "0x01"}, {"type", "bulk"}, {"max_packet_size", 512}},
                                json{{"address", "0x82"}, {"type", "bulk"}, {"max_packet_size", 512}}});
  json interface = {{"number", 0},
                    {"class", "07"},
                    {"subclass", "01"},
                    {"protocol", "02"},
                    {"device_id", "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;"},
                    {"endpoints", endpoints}};
  json printer = {{"comment", "transport_bench: the demo printer, OUT 0x01 accepts and discards"},
                  {"port", kPort},
                  {"vid", "04b8"},
                  {"pid", "0005"},
                  {"manufacturer", "EPSON"},
                  {"product", "Stylus Test Printer"},
                  {"serial", "BENCH0001"},
                  {"interfaces", json::array({interface})}};
  return json{{"devices", json::array({printer})}};
}

std::string why(const Error& e) {
  return e.describe();
}

// Calls stream() with `data` back to back for `seconds` (at least once); the clock stops at the
// last call's completion.
asio::awaitable<Result<StreamRun>> stream_for(std::shared_ptr<dtu::client::InbandChannel> channel,
                                              const Bytes* data, double seconds) {
  StreamRun run;
  const auto start = Clock::now();
  const auto stop = start + std::chrono::duration_cast<Clock::duration>(Seconds(seconds));
  do {
    auto op = channel->stream(kOutEndpoint, *data);
    auto sent = co_await std::move(op);
    if (!sent.ok()) co_return Error(sent.error().code, "in-band stream failed: " + why(sent.error()));
    if (*sent != data->size()) {
      co_return Error(Errc::io_error, "in-band stream confirmed " + std::to_string(*sent) + " of " +
                                          std::to_string(data->size()) + " bytes");
    }
    run.bytes += *sent;
  } while (Clock::now() < stop);
  run.seconds = Seconds(Clock::now() - start).count();
  co_return run;
}

// Times kWriteSamples single writes of `size` bytes, one after another (µs each).
asio::awaitable<Result<std::vector<double>>> time_writes(std::shared_ptr<dtu::client::InbandChannel> channel,
                                                         std::size_t size) {
  const Bytes data(size, 0x3c);
  std::vector<double> us;
  us.reserve(kWriteSamples);
  for (std::size_t i = 0; i < kWriteSamples; ++i) {
    const auto t0 = Clock::now();
    auto op = channel->write(kOutEndpoint, data, kWriteTimeout);
    auto written = co_await std::move(op);
    const auto t1 = Clock::now();
    if (!written.ok()) co_return Error(written.error().code, "in-band write failed: " + why(written.error()));
    us.push_back(Micros(t1 - t0).count());
  }
  co_return us;
}

struct PipelineState {
  Clock::time_point stop;
  std::size_t bytes = 0;
  std::size_t active = 0;
  std::optional<Error> failure;
};

// One of the `depth` writers: writes `data` until the stop time or the first failure.
asio::awaitable<void> pipeline_writer(std::shared_ptr<dtu::client::InbandChannel> channel, const Bytes* data,
                                      PipelineState* state) {
  while (!state->failure && Clock::now() < state->stop) {
    auto op = channel->write(kOutEndpoint, *data, kWriteTimeout);
    auto written = co_await std::move(op);
    if (!written.ok()) {
      state->failure = written.error();
      break;
    }
    state->bytes += *written;
  }
  --state->active;
}

// Diagnostic: p.depth write() calls of p.chunk bytes kept in flight on the endpoint (the DTU runs
// them in order), for `seconds`; shows what a deeper window or larger chunks than stream()'s give.
void run_pipeline(asio::io_context& io, const std::shared_ptr<dtu::client::InbandChannel>& channel,
                  Pipeline& p, double seconds) {
  const Bytes data(p.chunk, 0x6b);
  PipelineState state;
  const auto start = Clock::now();
  state.stop = start + std::chrono::duration_cast<Clock::duration>(Seconds(seconds));
  state.active = p.depth;
  for (std::size_t i = 0; i < p.depth; ++i) {
    asio::co_spawn(io, pipeline_writer(channel, &data, &state), [&state](std::exception_ptr e) {
      if (e && !state.failure) state.failure = Error(Errc::io_error, "a pipelined writer threw");
    });
  }
  const auto limit = state.stop + kRunSlack;
  while (state.active > 0 && Clock::now() < limit) {
    io.restart();
    if (io.run_one_until(limit) == 0) break;
  }
  if (state.active > 0) throw std::runtime_error("pipelined in-band writes did not finish in time");
  if (state.failure) throw std::runtime_error("pipelined in-band write failed: " + why(*state.failure));
  p.run.bytes = state.bytes;
  p.run.seconds = Seconds(Clock::now() - start).count();
}

// The in-band stream's runs, each after a run of `floor` (the TLS floor's, side by side), given the
// io_context that serves the in-band site.
InbandFigures measure_inband(const Settings& settings, const std::function<void(asio::io_context&)>& floor) {
  dtu::testing::Site site;
  const auto catalogue = site.dir() / "bench-devices.json";
  std::ofstream(catalogue) << bench_catalogue().dump(2);
  auto& manager = site.start_manager("bench-m", kManagerIp);
  auto& agent = site.start_agent(
      kDtu, {manager.address},
      {"--backend", "sim", "--sim-devices", catalogue.string(), "--inband", std::string(kInbandIp) + ":0"});

  // Setup goes through AsyncClient (its waits are coarse); the timed parts run the io_context
  // only until they complete (run_to_completion).
  dtu::testing::AsyncClient c;
  auto client = dtu::testing::connect_client(c, manager, "transport-bench");
  // The unit is allocatable once the agent has reported it; until then allocate fails.
  std::optional<Result<dtu::client::Lease>> lease;
  const bool granted = dtu::testing::eventually(
      [&] {
        lease.emplace(c.await(client->allocate(kDtu, kPort, 0, dtu::client::AllocateOptions{})));
        return lease->ok();
      },
      dtu::testing::kSettle, std::chrono::milliseconds(100));
  if (!granted) throw std::runtime_error("could not allocate the bench printer: " + why(lease->error()));
  auto channel = c.await(client->open_channel(lease->value()));
  if (!channel.ok()) throw std::runtime_error("could not open the in-band channel: " + why(channel.error()));

  Bytes data(kStreamCallBytes);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 131 + i / 4099);
  const auto run_limit =
      std::chrono::duration_cast<Clock::duration>(Seconds(settings.run_seconds)) + kRunSlack;
  const pid_t agent_pid = agent.process->pid();
  auto run_stream = [&](double seconds) {
    const double own_before = own_cpu_seconds();
    const double agent_before = process_cpu_seconds(agent_pid);
    auto run = run_to_completion(c.io(), stream_for(*channel, &data, seconds), run_limit, "an in-band run");
    if (!run.ok()) throw std::runtime_error(why(run.error()));
    StreamRun out = run.value();
    out.sender_cpu = own_cpu_seconds() - own_before;
    out.receiver_cpu = process_cpu_seconds(agent_pid) - agent_before;
    return out;
  };
  auto run_writes = [&](std::size_t size) {
    auto us = run_to_completion(c.io(), time_writes(*channel, size), kRunSlack, "the in-band writes");
    if (!us.ok()) throw std::runtime_error(why(us.error()));
    return us.value();
  };

  InbandFigures figures;
  run_stream(0);  // warm-up, one call: TLS, the agent's buffers, the sim backend's first transfers
  for (int i = 0; i < settings.runs; ++i) {
    floor(c.io());
    figures.runs.push_back(run_stream(settings.run_seconds));
  }
  figures.write_chunk_us = run_writes(dtu::client::InbandChannel::kStreamChunk);
  figures.write_small_us = run_writes(kSmallWriteBytes);
  for (const auto& [chunk, depth] : kPipelines) {
    Pipeline p{chunk, depth};
    run_pipeline(c.io(), *channel, p, settings.run_seconds);
    figures.pipelines.push_back(p);
  }

  auto released = c.await(client->release(lease->value().id));
  if (!released.ok()) std::printf("note: releasing the lease failed: %s\n", why(released.error()).c_str());
  return figures;
}

// ---- report

std::vector<double> throughputs(const std::vector<StreamRun>& runs) {
  std::vector<double> out;
  for (const auto& r : runs) out.push_back(r.mb_per_s());
  return out;
}

double total_mb(const std::vector<StreamRun>& runs) {
  double bytes = 0;
  for (const auto& r : runs) bytes += static_cast<double>(r.bytes);
  return bytes / 1e6;
}

void print_latency_row(const std::string& label, const std::vector<double>& us) {
  if (us.empty()) {
    std::printf("  %-50s %8s %9s %9s %9s\n", label.c_str(), "-", "-", "-", "-");
    return;
  }
  std::printf("  %-50s %8zu %9.1f %9.1f %9.1f\n", label.c_str(), us.size(), dtu::bench::percentile(us, 50),
              dtu::bench::percentile(us, 99), *std::max_element(us.begin(), us.end()));
}

// CPU milliseconds per MB moved, over all runs: {sender, receiver}.
std::pair<double, double> cpu_ms_per_mb(const std::vector<StreamRun>& runs) {
  double sender = 0;
  double receiver = 0;
  for (const auto& r : runs) {
    sender += r.sender_cpu;
    receiver += r.receiver_cpu;
  }
  const double mb = total_mb(runs);
  if (mb <= 0) return {0, 0};
  return {sender * 1e3 / mb, receiver * 1e3 / mb};
}

void print_throughput_row(const std::string& label, const std::vector<StreamRun>& runs) {
  const auto values = throughputs(runs);
  std::printf("  %-50s %5zu runs %8.1f %9.1f %9.1f   (%.0f MB in all)\n", label.c_str(), values.size(),
              dtu::bench::median(values), *std::min_element(values.begin(), values.end()),
              *std::max_element(values.begin(), values.end()), total_mb(runs));
}

}  // namespace

TEST_CASE("transport floor and in-band stream") {
  dtu::common::set_log_level(dtu::common::LogLevel::warn);
  const Settings settings = read_settings();
  const std::vector<int> cpus = allowed_cpus();

  std::vector<Placement> placements;
  placements.push_back({"floor.tcp_rtt", "unpinned", std::nullopt, std::nullopt});
  placements.push_back(
      {"floor.tcp_rtt_same_cpu", "both ends on CPU " + std::to_string(cpus.at(0)), cpus.at(0), cpus.at(0)});
  if (cpus.size() >= 2) {
    placements.push_back({"floor.tcp_rtt_cross_cpu",
                          "ends on CPUs " + std::to_string(cpus[0]) + " and " + std::to_string(cpus[1]),
                          cpus[0], cpus[1]});
  } else {
    std::printf("only one CPU is allowed here: no cross-CPU placement\n");
  }
  for (auto& p : placements) {
    std::printf("TCP ping-pong, %s: %d + %d round trips of %zu bytes...\n", p.label.c_str(),
                kWarmupRoundTrips, settings.round_trips, kMessageBytes);
    std::fflush(stdout);
    measure_round_trips(p, settings.round_trips);
  }

  std::printf("TCP ring of 3 processes: %d + %d messages one at a time, then %d in flight for %.1f s...\n",
              kWarmupRoundTrips, settings.round_trips, kRingInFlight, settings.run_seconds);
  std::fflush(stdout);
  const RingFigures ring = measure_ring(settings.round_trips, settings.run_seconds);

  std::printf(
      "TLS stream and in-band stream (devmgr on %s, dtu-agent in-band on %s): %d runs of %.1f s each, "
      "taking turns...\n",
      kManagerIp, kInbandIp, settings.runs, settings.run_seconds);
  std::fflush(stdout);
  std::vector<StreamRun> tls_runs;
  const InbandFigures inband = measure_inband(
      settings, [&](asio::io_context& io) { tls_runs.push_back(measure_tls_run(settings.run_seconds, io)); });

  const double tls_mb_s = dtu::bench::median(throughputs(tls_runs));
  const double inband_mb_s = dtu::bench::median(throughputs(inband.runs));
  const double ratio = tls_mb_s > 0 ? inband_mb_s / tls_mb_s : 0;

  std::printf("\ntransport floor and in-band stream (loopback, MB = 10^6 bytes)\n");
  std::printf("  %-50s %8s %9s %9s %9s\n", "round trip (us)", "samples", "median", "p99", "max");
  for (const auto& p : placements) print_latency_row("TCP 200-byte ping-pong, " + p.label, p.us);
  print_latency_row("TCP ring of 3 processes, 200 bytes round", ring.us);
  print_latency_row("in-band write() of a stream() chunk, 1 at a time", inband.write_chunk_us);
  print_latency_row("in-band write() of 200 bytes, one at a time", inband.write_small_us);
  std::printf("  %-50s %8.0f cycles/s (%d in flight, %d hops per cycle)\n",
              "TCP ring of 3 processes, circulating", ring.cycles_per_s, kRingInFlight, kHopsPerCycle);
  std::printf("  %-50s %10s %8s %9s %9s\n", "throughput (MB/s)", "", "median", "min", "max");
  print_throughput_row("raw TLS stream (the floor)", tls_runs);
  print_throughput_row("in-band stream() to the sim printer", inband.runs);
  for (const auto& p : inband.pipelines) {
    const std::string label = "diagnostic: write() " + std::to_string(p.chunk / 1024) + " KiB x " +
                              std::to_string(p.depth) + " in flight";
    std::printf("  %-50s %5d run  %8.1f\n", label.c_str(), 1, p.run.mb_per_s());
  }
  std::printf("  in-band / TLS floor: %.2f (target >= 0.80); run by run:", ratio);
  for (std::size_t i = 0; i < inband.runs.size() && i < tls_runs.size(); ++i) {
    std::printf(" %.2f", inband.runs[i].mb_per_s() / tls_runs[i].mb_per_s());
  }
  std::printf("\n");
  const auto [tls_send_cpu, tls_receive_cpu] = cpu_ms_per_mb(tls_runs);
  const auto [inband_send_cpu, inband_receive_cpu] = cpu_ms_per_mb(inband.runs);
  std::printf("  %-50s %10s %9s\n", "CPU ms per MB (user + system)", "sender", "receiver");
  std::printf("  %-50s %10.2f %9.2f\n", "raw TLS stream: writer, reader", tls_send_cpu, tls_receive_cpu);
  std::printf("  %-50s %10.2f %9.2f\n", "in-band stream: service (this process), dtu-agent", inband_send_cpu,
              inband_receive_cpu);
  std::printf(
      "\nTCP: one process and a forked child, blocking sockets, TCP_NODELAY; %d warm-up round trips not "
      "counted.\n"
      "Ring: this process -> child -> child -> this process, the hops of an attach in group_bench, "
      "with no TLS and no work.\n"
      "TLS: the project's TLS 1.3 PSK + (EC)DHE, AES-128-GCM, %zu KiB writes, timed to the reader's answer "
      "after the last byte.\n"
      "In-band: InbandChannel::stream() of %zu MiB per call (%zu KiB chunks, %zu in flight) back to back; a "
      "call completes when\n"
      "the DTU confirmed every chunk (usb_done: the simulated device accepted it). Figures are printed, "
      "never asserted.\n",
      kWarmupRoundTrips, kTlsBlock / 1024, kStreamCallBytes / (1024 * 1024),
      dtu::client::InbandChannel::kStreamChunk / 1024, dtu::client::InbandChannel::kStreamWindow);

  using dtu::bench::Metric;
  std::vector<Metric> metrics;
  for (const auto& p : placements) {
    const std::string how = "200-byte TCP ping-pong between two processes, " + p.label + ", " +
                            std::to_string(p.us.size()) + " round trips";
    metrics.push_back(Metric{p.name + ".p50", "us", dtu::bench::percentile(p.us, 50), "", {}, how});
    metrics.push_back(Metric{p.name + ".p99", "us", dtu::bench::percentile(p.us, 99), "", {}, how});
  }
  const std::string ring_how =
      "200 bytes around a ring of 3 processes over TCP (an attach's hops: DTU -> m1 "
      "-> m3 -> service, no TLS, no work), " +
      std::to_string(ring.us.size()) + " messages one at a time";
  metrics.push_back(Metric{
      "floor.tcp_ring3.p50", "us", dtu::bench::percentile(ring.us, 50), "etcd.put_watch.p50", {}, ring_how});
  metrics.push_back(Metric{
      "floor.tcp_ring3.p99", "us", dtu::bench::percentile(ring.us, 99), "etcd.put_watch.p99", {}, ring_how});
  metrics.push_back(
      Metric{"floor.tcp_ring3.cycles",
             "ops/s",
             ring.cycles_per_s,
             "etcd.claim_cycle.throughput",
             {},
             "the same ring with " + std::to_string(kRingInFlight) +
                 " messages circulating, each process writing on what it reads: ring trips x 3 / " +
                 std::to_string(kHopsPerCycle) + " hops of an allocate + release, per second"});
  metrics.push_back(
      Metric{"floor.tls_stream.throughput",
             "MB/s",
             tls_mb_s,
             "",
             {},
             "raw TLS 1.3 PSK AES-128-GCM stream between two processes, one direction, median of " +
                 std::to_string(tls_runs.size()) + " runs"});
  dtu::bench::Target inband_target;
  inband_target.ratio_min = 0.8;
  metrics.push_back(Metric{"dtu.inband_stream.throughput", "MB/s", inband_mb_s, "floor.tls_stream.throughput",
                           inband_target,
                           "InbandChannel::stream() to a sim printer's bulk OUT, timed to the DTU's last "
                           "usb_done, median of " +
                               std::to_string(inband.runs.size()) + " runs"});
  metrics.push_back(Metric{"dtu.inband_stream.write_chunk.p50",
                           "us",
                           dtu::bench::percentile(inband.write_chunk_us, 50),
                           "",
                           {},
                           "one InbandChannel::write() of a stream() chunk (" +
                               std::to_string(dtu::client::InbandChannel::kStreamChunk / 1024) +
                               " KiB), request to usb_done"});
  metrics.push_back(Metric{"dtu.inband_stream.write_200b.p50",
                           "us",
                           dtu::bench::percentile(inband.write_small_us, 50),
                           "",
                           {},
                           "one InbandChannel::write() of 200 bytes, request to usb_done"});
  for (const auto& p : inband.pipelines) {
    const std::string stem = "dtu.inband_stream.write_" + std::to_string(p.chunk / 1024) + "k_x" +
                             std::to_string(p.depth) + ".throughput";
    metrics.push_back(Metric{stem,
                             "MB/s",
                             p.run.mb_per_s(),
                             "floor.tls_stream.throughput",
                             {},
                             "diagnostic: InbandChannel::write() of " + std::to_string(p.chunk / 1024) +
                                 " KiB with " + std::to_string(p.depth) + " in flight, one run"});
  }
  metrics.push_back(Metric{"floor.tls_stream.writer_cpu",
                           "ms/MB",
                           tls_send_cpu,
                           "",
                           {},
                           "CPU (user + system) of the TLS writer per MB, handshake included"});
  metrics.push_back(Metric{"floor.tls_stream.reader_cpu",
                           "ms/MB",
                           tls_receive_cpu,
                           "",
                           {},
                           "CPU (user + system) of the TLS reader per MB, handshake included"});
  metrics.push_back(Metric{"dtu.inband_stream.service_cpu",
                           "ms/MB",
                           inband_send_cpu,
                           "floor.tls_stream.writer_cpu",
                           {},
                           "CPU (user + system) of the service process per MB streamed"});
  metrics.push_back(Metric{"dtu.inband_stream.agent_cpu",
                           "ms/MB",
                           inband_receive_cpu,
                           "floor.tls_stream.reader_cpu",
                           {},
                           "CPU (user + system) of dtu-agent per MB streamed (/proc/<pid>/stat)"});
  const auto path = dtu::bench::write_metrics("transport.json", metrics);
  std::printf("figures written to %s\n", path.c_str());
}
