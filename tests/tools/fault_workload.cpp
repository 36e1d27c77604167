// dtu-fault-workload: the device service of the fault suite (tests/integration/fault_suite_test.cpp).
// It links libdtu-client like any service and loops: pick a unit (seeded), allocate it (waiting
// while another holder has it), open the lease's in-band channel, stream N bytes to the unit's
// bulk OUT endpoint, hold the lease a while (the library renews it; with --renew-ms the workload
// also renews it itself, through the same manager), release it. Each lease's stream is one job:
// job k (k-th grant, from 1) is the pattern job_pattern(seed, k, bytes) of
// tests/integration/fault_pattern.hpp, so what a device captured can be checked byte by byte.
// Every step is appended to a JSONL history that tests/integration/fault_history.hpp checks:
//
//   {"t": <CLOCK_MONOTONIC µs>, "w": "<name>", "ev": "grant", "lease", "dtu", "device", "unit", "holder",
//    "seed", "job"}                                     (the job this lease streams)
//   {"t", "w", "ev": "bytes", "lease", "dtu", "device", "unit", "endpoint", "n"}      (the stream's total)
//   {"t", "w", "ev": "renew", "lease"}                  (--renew-ms: an explicit renewal is sent)
//   {"t", "w", "ev": "renewed", "lease", "ok", "error"?}   (its answer)
//   {"t", "w", "ev": "release", "lease"}                (the workload gives the lease up: from here on
//                                                          it no longer uses the unit)
//   {"t", "w", "ev": "released", "lease", "ok", "transient"?, "error"?}   (the manager's answer;
//                                                          transient: unavailable or timeout)
//   {"t", "w", "ev": "lease_ended", "lease", "reason"}  (the lease ended without our release: lost)
//   {"t", "w", "ev": "error", "op": allocate|open|stream, "lease"?, "endpoint"? (stream), "code", "what"}
//   {"t", "w", "ev": "stop", "iterations", "held": [lease ids still held]}   (last line on a clean exit)
//
//   dtu-fault-workload --socket S --name w1 --history FILE --seed 7 --unit dtu/device/unit ...
//                      [--iterations K] [--bytes N] [--lease-ms L] [--wait-ms W] [--hold-ms MIN:MAX]
//                      [--renew-ms R] [--log-level debug|info|warn|error]
//
// Stops after K iterations (granted leases) or on SIGTERM/SIGINT, after the iteration under way
// has released its lease. Every loop is bounded: at most 20 × K allocation attempts.
// Exit status: 0 stopped cleanly, 1 gave up (attempts exhausted, history unwritable), 2 bad usage,
// 3 the manager is unreachable at start.
#include <time.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "../integration/fault_pattern.hpp"
#include "dtu/client/client.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/errors.hpp"
#include "dtu/common/log.hpp"

namespace {

using namespace dtu;
using asio::experimental::as_tuple;
using common::Errc;
using nlohmann::json;

constexpr int kExitGaveUp = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

// Pause after a failed allocation before the next attempt (the manager may be failing over).
constexpr std::chrono::milliseconds kRetryPause{100};
// Allocation attempts allowed per wanted iteration: the loop is bounded whatever fails.
constexpr int kAttemptsPerIteration = 20;

struct UnitChoice {
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
};

struct Options {
  std::string socket;
  std::string name = "workload";
  std::string history;
  std::uint64_t seed = 1;
  std::vector<std::string> unit_texts;
  std::vector<UnitChoice> units;
  int iterations = 50;
  std::size_t bytes = 16384;
  std::uint32_t lease_ms = 2400;
  std::uint32_t wait_ms = 6000;
  std::uint32_t hold_min_ms = 300;
  std::uint32_t hold_max_ms = 1500;
  std::uint32_t timeout_ms = 5000;
  std::uint32_t renew_ms = 0;  // explicit renewals every this many ms of a hold (0: none)
  std::string log_level = "info";
};

std::int64_t monotonic_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// The JSONL history: one line per event, flushed at once (the test reads it while we run and
// after a SIGKILL nothing written is lost).
class History {
 public:
  History(const std::string& path, std::string workload) : workload_(std::move(workload)) {
    file_ = std::fopen(path.c_str(), "a");
  }
  ~History() {
    if (file_ != nullptr) std::fclose(file_);
  }
  History(const History&) = delete;
  History& operator=(const History&) = delete;
  bool ok() const { return file_ != nullptr; }
  void write(const std::string& ev, json fields) {
    fields["t"] = monotonic_us();
    fields["w"] = workload_;
    fields["ev"] = ev;
    const std::string line = fields.dump() + "\n";
    std::fwrite(line.data(), 1, line.size(), file_);
    std::fflush(file_);
  }

 private:
  std::string workload_;
  std::FILE* file_ = nullptr;
};

std::optional<UnitChoice> parse_unit(const std::string& text) {
  const auto a = text.find('/');
  const auto b = text.rfind('/');
  if (a == std::string::npos || a == b || a == 0 || b == a + 1 || b + 1 == text.size()) return std::nullopt;
  try {
    std::size_t used = 0;
    const unsigned long n = std::stoul(text.substr(b + 1), &used);
    if (used != text.size() - b - 1 || n > 255) return std::nullopt;
    return UnitChoice{text.substr(0, a), text.substr(a + 1, b - a - 1), static_cast<std::uint32_t>(n)};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<std::uint8_t> bulk_out(const common::InbandWelcomeMsg& welcome) {
  for (const auto& ep : welcome.endpoints) {
    if (ep.type == "bulk" && (ep.address & 0x80) == 0) return ep.address;
  }
  return std::nullopt;
}

json error_fields(const std::string& op, const common::Error& e) {
  return json{{"op", op}, {"code", e.code.message()}, {"what", e.describe()}};
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(d);
  auto wait = timer.async_wait(as_tuple(asio::use_awaitable));
  co_await std::move(wait);
}

struct Shared {
  bool stop = false;
  std::set<std::string> ended;  // leases that ended without our release
};

// Releases `lease` (one attempt: the library forgets the lease whatever the answer, and the
// DTU ends it at its expiry if no manager could). Writes `release` before and `released` after;
// `transient` says the answer was unavailable or timeout (no owner reachable: a failover).
asio::awaitable<void> release_lease(client::Client& service, History& history, const client::Lease& lease) {
  history.write("release", {{"lease", lease.id}});
  auto op = service.release(lease.id);
  auto released = co_await std::move(op);
  if (released.ok()) {
    history.write("released", {{"lease", lease.id}, {"ok", true}});
    co_return;
  }
  const bool transient = released.error().code == make_error_code(Errc::unavailable) ||
                         released.error().code == make_error_code(Errc::timeout);
  history.write(
      "released",
      {{"lease", lease.id}, {"ok", false}, {"transient", transient}, {"error", released.error().describe()}});
}

// Opens the channel and streams the payload; writes `bytes` or `error`.
asio::awaitable<void> use_lease(client::Client& service, History& history, const client::Lease& lease,
                                const common::Bytes& payload) {
  auto open = service.open_channel(lease);
  auto channel = co_await std::move(open);
  if (!channel.ok()) {
    json f = error_fields("open", channel.error());
    f["lease"] = lease.id;
    history.write("error", f);
    co_return;
  }
  auto out = bulk_out((*channel)->welcome());
  if (!out) {
    history.write(
        "error",
        {{"op", "open"}, {"lease", lease.id}, {"code", "not_found"}, {"what", "no bulk OUT endpoint"}});
    (*channel)->close();
    co_return;
  }
  auto stream = (*channel)->stream(*out, payload);
  auto sent = co_await std::move(stream);
  (*channel)->close();
  if (!sent.ok()) {
    json f = error_fields("stream", sent.error());
    f["lease"] = lease.id;
    f["endpoint"] = *out;  // a prefix of the job may have reached it
    history.write("error", f);
    co_return;
  }
  history.write("bytes", {{"lease", lease.id},
                          {"dtu", lease.dtu},
                          {"device", lease.device},
                          {"unit", lease.unit},
                          {"endpoint", *out},
                          {"n", *sent}});
}

// Holds `lease` for `hold` from now. With `renew_every` > 0, renews it explicitly every
// `renew_every` after `granted` meanwhile (writes `renew` before and `renewed` after each), until
// the hold is over or the lease ended.
asio::awaitable<void> hold_lease(client::Client& service, History& history, const client::Lease& lease,
                                 std::chrono::steady_clock::time_point granted,
                                 std::chrono::milliseconds hold, std::chrono::milliseconds renew_every,
                                 std::shared_ptr<Shared> shared) {
  const auto until = std::chrono::steady_clock::now() + hold;
  auto next = granted + renew_every;
  while (renew_every.count() > 0 && next < until && !shared->ended.contains(lease.id)) {
    const auto now = std::chrono::steady_clock::now();
    if (next > now) {
      auto pause = sleep_for(std::chrono::ceil<std::chrono::milliseconds>(next - now));
      co_await std::move(pause);
    }
    if (shared->ended.contains(lease.id)) co_return;
    history.write("renew", {{"lease", lease.id}});
    auto op = service.renew(lease.id, common::Duration::zero());
    auto renewed = co_await std::move(op);
    if (renewed.ok()) {
      history.write("renewed", {{"lease", lease.id}, {"ok", true}});
    } else {
      history.write("renewed", {{"lease", lease.id}, {"ok", false}, {"error", renewed.error().describe()}});
    }
    next += renew_every;
  }
  const auto now = std::chrono::steady_clock::now();
  if (now < until) {
    auto pause = sleep_for(std::chrono::ceil<std::chrono::milliseconds>(until - now));
    co_await std::move(pause);
  }
}

asio::awaitable<int> run(Options o, std::shared_ptr<Shared> shared) {
  auto ex = co_await asio::this_coro::executor;
  History history(o.history, o.name);
  if (!history.ok()) {
    std::cerr << "dtu-fault-workload: cannot open " << o.history << '\n';
    co_return kExitGaveUp;
  }
  client::ClientOptions options;
  options.socket = o.socket;
  options.name = o.name;
  options.request_timeout = std::chrono::milliseconds(o.timeout_ms);
  auto connect = client::Client::connect(ex, common::SystemClock::instance(), options);
  auto connected = co_await std::move(connect);
  if (!connected.ok()) {
    history.write("error", error_fields("connect", connected.error()));
    co_return kExitUnreachable;
  }
  auto& service = **connected;
  service.on_lease_ended([&history, shared](const client::Lease& lease, const std::string& reason) {
    shared->ended.insert(lease.id);
    history.write("lease_ended", {{"lease", lease.id}, {"reason", reason}});
  });

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<std::size_t> pick(0, o.units.size() - 1);
  std::uniform_int_distribution<std::uint32_t> hold(o.hold_min_ms, o.hold_max_ms);
  int done = 0;
  std::uint64_t job = 0;  // grants so far: the job number of the lease being used
  int attempts = 0;
  while (!shared->stop && done < o.iterations) {
    if (++attempts > kAttemptsPerIteration * o.iterations) {
      history.write("stop", {{"iterations", done}, {"held", json::array()}, {"gave_up", true}});
      co_return kExitGaveUp;
    }
    const UnitChoice& u = o.units[pick(rng)];
    const auto hold_ms = std::chrono::milliseconds(hold(rng));
    client::AllocateOptions allocation;
    allocation.length = std::chrono::milliseconds(o.lease_ms);
    allocation.wait = std::chrono::milliseconds(o.wait_ms);
    auto allocate = service.allocate(u.dtu, u.device, u.unit, allocation);
    auto lease = co_await std::move(allocate);
    if (!lease.ok()) {
      json f = error_fields("allocate", lease.error());
      f["dtu"] = u.dtu;
      f["device"] = u.device;
      f["unit"] = u.unit;
      history.write("error", f);
      auto pause = sleep_for(kRetryPause);
      co_await std::move(pause);
      continue;
    }
    const auto granted = std::chrono::steady_clock::now();
    ++job;
    history.write("grant", {{"lease", lease->id},
                            {"dtu", lease->dtu},
                            {"device", lease->device},
                            {"unit", lease->unit},
                            {"holder", lease->holder},
                            {"seed", o.seed},
                            {"job", job}});
    const common::Bytes payload = testing::faults::job_pattern(o.seed, job, o.bytes);
    auto use = use_lease(service, history, *lease, payload);
    co_await std::move(use);
    auto wait =
        hold_lease(service, history, *lease, granted, hold_ms, std::chrono::milliseconds(o.renew_ms), shared);
    co_await std::move(wait);
    if (!shared->ended.contains(lease->id)) {
      auto release = release_lease(service, history, *lease);
      co_await std::move(release);
    }
    ++done;
  }
  json held = json::array();
  for (const auto& [id, lease] : service.leases()) held.push_back(id);
  history.write("stop", {{"iterations", done}, {"held", held}});
  service.close();
  co_return 0;
}

bool parse_hold(const std::string& text, Options& o) {
  const auto colon = text.find(':');
  if (colon == std::string::npos) return false;
  try {
    o.hold_min_ms = static_cast<std::uint32_t>(std::stoul(text.substr(0, colon)));
    o.hold_max_ms = static_cast<std::uint32_t>(std::stoul(text.substr(colon + 1)));
  } catch (const std::exception&) {
    return false;
  }
  return o.hold_min_ms <= o.hold_max_ms;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The fault suite's workload: allocate, stream in-band, release, in a seeded loop."};
  Options o;
  std::string hold_text = "300:1500";
  app.add_option("--socket", o.socket, "the manager's Unix socket")->required();
  app.add_option("--name", o.name, "this workload's name (client name and history tag)");
  app.add_option("--history", o.history, "JSONL history file (appended)")->required();
  app.add_option("--seed", o.seed, "seed of the unit and hold-time choices");
  app.add_option("--unit", o.unit_texts, "a unit to use, dtu/device/unit (repeat)")->required();
  app.add_option("--iterations", o.iterations, "stop after this many leases")->check(CLI::Range(1, 100000));
  app.add_option("--bytes", o.bytes, "bytes streamed in-band per lease")
      ->check(CLI::Range(1, 16 * 1024 * 1024));
  app.add_option("--lease-ms", o.lease_ms, "lease length")->check(CLI::Range(100, 600000));
  app.add_option("--wait-ms", o.wait_ms, "how long an allocation waits for a held unit")
      ->check(CLI::Range(1, 600000));
  app.add_option("--hold-ms", hold_text, "MIN:MAX ms to hold each lease after streaming");
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of each request")->check(CLI::Range(1, 600000));
  app.add_option("--renew-ms", o.renew_ms, "also renew each lease explicitly every this many ms (0: never)")
      ->check(CLI::Range(0, 600000));
  app.add_option("--log-level", o.log_level, "the client library's log level: debug, info, warn or error");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  for (const auto& text : o.unit_texts) {
    auto u = parse_unit(text);
    if (!u) {
      std::cerr << "dtu-fault-workload: --unit " << text << ": expected dtu/device/unit\n";
      return kExitUsage;
    }
    o.units.push_back(*u);
  }
  if (!parse_hold(hold_text, o)) {
    std::cerr << "dtu-fault-workload: --hold-ms " << hold_text << ": expected MIN:MAX with MIN <= MAX\n";
    return kExitUsage;
  }

  if (!common::set_log_level(o.log_level)) {
    std::cerr << "dtu-fault-workload: --log-level " << o.log_level
              << ": expected debug, info, warn or error\n";
    return kExitUsage;
  }

  asio::io_context io;
  auto shared = std::make_shared<Shared>();
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([shared](const std::error_code& ec, int) {
    if (!ec) shared->stop = true;  // finish the iteration under way, then stop
  });
  int code = kExitGaveUp;
  auto task = [](Options opts, std::shared_ptr<Shared> s, int& out,
                 asio::signal_set& sig) -> asio::awaitable<void> {
    auto op = run(std::move(opts), std::move(s));
    out = co_await std::move(op);
    sig.cancel();
  };
  common::spawn(io.get_executor(), task(o, shared, code, signals), common::Logger("dtu-fault-workload"),
                "workload");
  io.run();
  return code;
}
