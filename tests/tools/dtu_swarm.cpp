// dtu-swarm: many simulated DTUs in one process, for scale benchmarks (tests/bench/scale_bench.cpp)
// and their test (tests/integration/dtu_swarm_test.cpp). Each DTU has its own TLS connection to a
// manager, authenticated with its own derived key (derive_dtu_key, as `devmgrctl keygen --dtu`),
// and speaks the real DTU protocol: hello, a snapshot of its devices (records built by the
// agent's record_builder), heartbeats (its Link), lease requests granted, renewals and releases
// answered, dtu_move obeyed.
//
// Why not DtuAgent with the sim backend: each agent opens an in-band listener and its own TLS
// context, so 10,000 agents need 20,000+ descriptors, and this machine kind caps RLIMIT_NOFILE
// at 20,000 even for root (no CAP_SYS_RESOURCE). A swarm DTU holds one descriptor, shares one
// client context per thread, and serves no in-band channel (its grants name an address nothing
// listens on).
//
// Threads: --threads io_contexts, each run by one thread; a DTU lives on one of them and is
// touched only there. The welcomed count is an atomic read by the progress printer.
//
// Prints progress on stdout each second while DTUs connect, then "all N DTUs welcomed" once all
// are, and runs until SIGINT or SIGTERM (exit 0). Exit 1 when it cannot start, 2 on bad usage.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/agent/record_builder.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"

namespace {

using asio::experimental::as_tuple;
using dtu::common::Errc;
using dtu::common::Error;
using dtu::common::FilamentMux;
using dtu::common::Frame;

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
// TCP connect + TLS handshake + hello, per attempt: generous, a manager taking thousands of
// handshakes at once answers late but answers.
constexpr dtu::common::Duration kConnectTimeout = std::chrono::seconds(15);
// A snapshot the manager has not acked by then counts as lost: the DTU reconnects.
constexpr dtu::common::Duration kSnapshotTimeout = std::chrono::seconds(30);
// Delay before connecting again after a failure or a lost link: jittered in [min, max].
constexpr auto kRetryMin = std::chrono::milliseconds(200);
constexpr auto kRetryMax = std::chrono::milliseconds(2000);
// Descriptors kept beyond one per DTU (contexts, signals, stdio, the listeners of asio).
constexpr rlim_t kSpareDescriptors = 256;
constexpr auto kProgressPeriod = std::chrono::seconds(1);

struct SwarmOptions {
  std::vector<dtu::common::Endpoint> managers;
  std::string site_key;
  std::size_t count = 100;
  std::size_t devices = 8;
  std::string prefix = "swarm-";
  std::size_t connect_concurrency = 64;
  std::size_t threads = 1;
};

// What every DTU reports, read by the progress printer on the main thread.
struct Counters {
  std::atomic<std::size_t> welcomed{0};  // DTUs whose snapshot the manager acked, connected now
  std::atomic<std::size_t> attempts{0};  // connection attempts, successful or not
  std::atomic<std::size_t> failures{0};  // attempts that ended before the snapshot was acked
  std::atomic<std::size_t> lost{0};      // links lost after the snapshot was acked
};

// A counting semaphore for one io_context thread: at most `slots` DTUs of that thread are between
// TCP connect and their snapshot's ack at once (--connect-concurrency split over the threads).
class Gate {
 public:
  Gate(asio::any_io_executor ex, std::size_t slots) : executor_(std::move(ex)), free_(slots) {}

  asio::awaitable<void> acquire() {
    while (free_ == 0) {
      auto waiter = std::make_shared<asio::steady_timer>(executor_, asio::steady_timer::time_point::max());
      waiters_.push_back(waiter);
      co_await waiter->async_wait(as_tuple(asio::use_awaitable));
    }
    --free_;
  }
  void release() {
    ++free_;
    if (!waiters_.empty()) {
      waiters_.front()->cancel();
      waiters_.pop_front();
    }
  }

 private:
  asio::any_io_executor executor_;
  std::size_t free_;
  std::deque<std::shared_ptr<asio::steady_timer>> waiters_;
};

// One io_context, its thread's client TLS context and its gate.
struct Worker {
  asio::io_context io{1};
  std::shared_ptr<asio::ssl::context> tls = dtu::common::make_psk_client_context();
  Gate gate;
  std::thread thread;
  explicit Worker(std::size_t slots) : gate(io.get_executor(), slots) {}
};

// The devices of a simulated DTU: a cycle of common kinds (printer, storage, keyboard, a CDC
// serial adapter whose two interfaces form one association, a vendor-class scanner).
std::vector<dtu::agent::UsbDeviceInfo> device_catalogue(const std::string& dtu, std::size_t count) {
  using dtu::agent::UsbDeviceInfo;
  using dtu::agent::UsbInterface;
  std::vector<UsbDeviceInfo> out;
  for (std::size_t i = 0; i < count; ++i) {
    UsbDeviceInfo d;
    d.port = "1-" + std::to_string(i + 1);
    d.bcd_usb = 0x0200;
    d.configuration = 1;
    d.serial = dtu + "-" + std::to_string(i + 1);
    switch (i % 5) {
      case 0:
        d.vid = 0x04b8, d.pid = 0x08a1, d.manufacturer = "EPSON", d.product = "Swarm Printer";
        d.interfaces.push_back(UsbInterface{0, 0, 0x07, 0x01, 0x02, {}});
        break;
      case 1:
        d.vid = 0x0781, d.pid = 0x5567, d.manufacturer = "SanDisk", d.product = "Swarm Disk";
        d.interfaces.push_back(UsbInterface{0, 0, 0x08, 0x06, 0x50, {}});
        break;
      case 2:
        d.vid = 0x046d, d.pid = 0xc31c, d.manufacturer = "Logitech", d.product = "Swarm Keyboard";
        d.interfaces.push_back(UsbInterface{0, 0, 0x03, 0x01, 0x01, {}});
        break;
      case 3:
        d.vid = 0x2341, d.pid = 0x0043, d.manufacturer = "Arduino", d.product = "Swarm Serial";
        d.interfaces.push_back(UsbInterface{0, 0, 0x02, 0x02, 0x01, {}});
        d.interfaces.push_back(UsbInterface{1, 0, 0x0a, 0x00, 0x00, {}});
        d.associations.push_back(dtu::agent::UsbInterfaceAssociation{0, 2, 0x02, 0x02, 0x01});
        break;
      default:
        d.vid = 0x04a9, d.pid = 0x1909, d.manufacturer = "Canon", d.product = "Swarm Scanner";
        d.interfaces.push_back(UsbInterface{0, 0, 0xff, 0xff, 0xff, {}});
        break;
    }
    out.push_back(std::move(d));
  }
  return out;
}

// The outcome of a post, handed from its callback to the coroutine waiting on `done`.
struct SnapshotConfirmation {
  explicit SnapshotConfirmation(const asio::any_io_executor& ex)
      : done(ex, asio::steady_timer::time_point::max()) {}
  asio::steady_timer done;
  std::optional<dtu::common::Result<Frame>> result;
};

// One simulated DTU. Lives on its worker's thread; run() is its only coroutine besides its link's.
class SwarmDtu {
 public:
  SwarmDtu(Worker& worker, std::string id, dtu::common::Bytes key,
           std::vector<dtu::agent::UsbDeviceInfo> devices, const std::vector<dtu::common::Endpoint>& managers,
           std::size_t first_manager, Counters& counters)
      : worker_(worker),
        id_(std::move(id)),
        key_(std::move(key)),
        devices_(std::move(devices)),
        managers_(managers),
        next_manager_(first_manager % managers.size()),
        counters_(counters),
        link_closed_(worker.io.get_executor()),
        retry_timer_(worker.io.get_executor()),
        rng_(std::random_device{}()) {}

  void start() { dtu::common::spawn(worker_.io.get_executor(), run(), log_, "swarm dtu " + id_); }

 private:
  asio::awaitable<void> run() {
    for (;;) {
      const dtu::common::Endpoint manager = managers_[next_manager_];
      auto acquire = worker_.gate.acquire();
      co_await std::move(acquire);
      counters_.attempts.fetch_add(1, std::memory_order_relaxed);
      auto attempt = serve(manager);
      const bool was_welcomed = co_await std::move(attempt);
      if (!was_welcomed) {
        counters_.failures.fetch_add(1, std::memory_order_relaxed);
        next_manager_ = (next_manager_ + 1) % managers_.size();
      }
      std::uniform_int_distribution<long> jitter(kRetryMin.count(), kRetryMax.count());
      retry_timer_.expires_after(std::chrono::milliseconds(jitter(rng_)));
      co_await retry_timer_.async_wait(as_tuple(asio::use_awaitable));
    }
  }

  // Connects, says hello, sends the snapshot, then serves the link until it closes. Holds a gate
  // slot until the snapshot is acked or the attempt fails. True when the snapshot was acked.
  asio::awaitable<bool> serve(dtu::common::Endpoint manager) {
    const std::string peer = manager.to_string();
    bool holding_slot = true;
    auto release_slot = [&] {
      if (holding_slot) worker_.gate.release();
      holding_slot = false;
    };
    auto connect = dtu::common::tcp_connect(manager, kConnectTimeout);
    auto socket = co_await std::move(connect);
    if (!socket.ok()) {
      log_.warn(peer, "connect_failed", {{"dtu", id_}, {"reason", socket.error().describe()}});
      release_slot();
      co_return false;
    }
    auto handshake =
        dtu::common::tls_connect(std::move(socket.value()), *worker_.tls, id_, key_, kConnectTimeout);
    auto transport = co_await std::move(handshake);
    if (!transport.ok()) {
      log_.warn(peer, "handshake_failed", {{"dtu", id_}, {"reason", transport.error().describe()}});
      release_slot();
      co_return false;
    }
    link_ = dtu::common::Link::create(worker_.io.get_executor(), std::move(transport.value()),
                                      FilamentMux::Side::initiator, dtu::common::SystemClock::instance(),
                                      log_, peer, dtu::common::Link::Options{});
    std::optional<Error> closed_reason;
    link_closed_.expires_at(asio::steady_timer::time_point::max());
    link_->mux().set_receiver(FilamentMux::kControlFilament,
                              [this](Frame frame) { on_manager_frame(frame); });
    link_->start([this, &closed_reason](const Error& reason) {
      closed_reason = reason;
      link_closed_.cancel();
    });

    bool acked = false;
    const dtu::common::DtuHelloMsg hello{id_, dtu::common::kVersion, boot_epoch_, false};
    auto request =
        link_->request(FilamentMux::kControlFilament, dtu::common::to_frame(hello), kConnectTimeout);
    auto answer = co_await std::move(request);
    auto welcome = answer.ok() ? dtu::common::from_frame<dtu::common::DtuWelcomeMsg>(*answer)
                               : dtu::common::Result<dtu::common::DtuWelcomeMsg>(answer.error());
    if (!welcome.ok()) {
      log_.warn(peer, "hello_failed", {{"dtu", id_}, {"reason", welcome.error().describe()}});
      link_->close(welcome.error());
    } else {
      link_->set_heartbeat(std::chrono::milliseconds(welcome->heartbeat_ms), welcome->heartbeat_misses);
      if (boot_epoch_ == 0) boot_epoch_ = welcome->universal_us != 0 ? welcome->universal_us : 1;
      // A post, as the agent sends it: the manager acks it once the devices are in its table.
      auto snapshot = dtu::common::to_frame(make_snapshot(welcome->universal_us));
      auto confirmation = std::make_shared<SnapshotConfirmation>(worker_.io.get_executor());
      link_->post(FilamentMux::kControlFilament, std::move(snapshot), kSnapshotTimeout,
                  [confirmation](dtu::common::Result<Frame> r) {
                    confirmation->result = std::move(r);
                    confirmation->done.cancel();
                  });
      if (!confirmation->result) co_await confirmation->done.async_wait(as_tuple(asio::use_awaitable));
      acked = confirmation->result && confirmation->result->ok();
      if (!acked) {
        const Error why =
            confirmation->result ? confirmation->result->error() : Error(Errc::closed, "stopping");
        log_.warn(peer, "snapshot_unconfirmed", {{"dtu", id_}, {"reason", why.describe()}});
        link_->close(why);
      }
    }
    release_slot();
    if (acked) counters_.welcomed.fetch_add(1, std::memory_order_relaxed);
    if (!closed_reason) co_await link_closed_.async_wait(as_tuple(asio::use_awaitable));
    if (acked) {
      counters_.welcomed.fetch_sub(1, std::memory_order_relaxed);
      counters_.lost.fetch_add(1, std::memory_order_relaxed);
      log_.warn(peer, "manager_lost",
                {{"dtu", id_}, {"reason", closed_reason ? closed_reason->describe() : ""}});
    }
    link_.reset();
    co_return acked;
  }

  dtu::common::DeviceSnapshotMsg make_snapshot(std::int64_t universal_us) {
    dtu::common::DeviceSnapshotMsg m;
    m.dtu = id_;
    m.stamp = next_stamp(universal_us);
    fence_ = m.stamp;
    for (const auto& info : devices_)
      m.devices.push_back(dtu::agent::build_device_record(info, id_, next_stamp(universal_us)));
    return m;
  }

  dtu::common::Stamp next_stamp(std::int64_t universal_us) {
    return dtu::common::Stamp{boot_epoch_, ++seq_, universal_us};
  }

  void on_manager_frame(const Frame& frame) {
    if (!link_) return;
    switch (frame.type) {
      case dtu::common::MessageType::lease_request:
        if (frame.wants_reply()) return grant(frame);
        break;
      case dtu::common::MessageType::lease_renew:
        if (frame.wants_reply()) return renew(frame);
        break;
      case dtu::common::MessageType::lease_release:
        if (frame.wants_reply()) return link_->reply(frame, dtu::common::to_frame(dtu::common::AckMsg{}));
        break;
      case dtu::common::MessageType::dtu_move:
        // Leave for the next manager of the list, as the agent does.
        next_manager_ = (next_manager_ + 1) % managers_.size();
        link_->close(Error(Errc::closed, "dtu_move"));
        return;
      default:
        break;
    }
    if (frame.wants_reply())
      link_->reply_error(frame, Errc::illegal_state, "dtu-swarm does not serve this request");
  }

  void grant(const Frame& frame) {
    auto msg = dtu::common::from_frame<dtu::common::LeaseRequestMsg>(frame);
    if (!msg.ok()) return link_->reply_error(frame, Errc::bad_payload, msg.error().describe());
    dtu::common::LeaseGrantedMsg granted;
    granted.lease = dtu::common::to_hex(dtu::common::random_bytes(8));
    granted.dtu = id_;
    granted.device = msg->device;
    granted.unit = msg->unit;
    granted.holder = msg->holder;
    granted.expires_in_ms = msg->length_ms;
    granted.token = dtu::common::to_hex(dtu::common::random_bytes(32));
    granted.inband = "127.0.0.1:9";  // nothing listens: the swarm serves no in-band channel
    link_->reply(frame, dtu::common::to_frame(granted));
  }

  void renew(const Frame& frame) {
    auto msg = dtu::common::from_frame<dtu::common::LeaseRenewMsg>(frame);
    if (!msg.ok()) return link_->reply_error(frame, Errc::bad_payload, msg.error().describe());
    dtu::common::LeaseGrantedMsg granted;
    granted.lease = msg->lease;
    granted.dtu = id_;
    granted.expires_in_ms = msg->length_ms;
    link_->reply(frame, dtu::common::to_frame(granted));
  }

  Worker& worker_;
  std::string id_;
  dtu::common::Bytes key_;
  std::vector<dtu::agent::UsbDeviceInfo> devices_;
  const std::vector<dtu::common::Endpoint>& managers_;
  std::size_t next_manager_;
  Counters& counters_;
  dtu::common::Logger log_{"dtu-swarm"};
  std::shared_ptr<dtu::common::Link> link_;
  asio::steady_timer link_closed_;
  asio::steady_timer retry_timer_;
  std::mt19937 rng_;
  std::int64_t boot_epoch_ = 0;
  std::uint64_t seq_ = 0;
  std::optional<dtu::common::Stamp> fence_;
};

// Raises the soft descriptor limit (and the hard one when allowed) to `needed`. Error when the
// hard limit stays below it.
dtu::common::Result<void> raise_descriptor_limit(rlim_t needed) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0)
    return Error(Errc::io_error, "getrlimit(RLIMIT_NOFILE) failed");
  if (limit.rlim_cur >= needed) return {};
  if (limit.rlim_max < needed) {
    rlimit wanted{needed, needed};
    if (::setrlimit(RLIMIT_NOFILE, &wanted) == 0) return {};
  }
  if (limit.rlim_max < needed) {
    return Error(Errc::config_error, "needs " + std::to_string(needed) +
                                         " file descriptors but RLIMIT_NOFILE's hard limit is " +
                                         std::to_string(limit.rlim_max) +
                                         " and cannot be raised (no CAP_SYS_RESOURCE?): lower --count");
  }
  limit.rlim_cur = needed;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0)
    return Error(Errc::io_error, "setrlimit(RLIMIT_NOFILE) failed");
  return {};
}

std::string dtu_id(const std::string& prefix, std::size_t index, std::size_t count) {
  const std::string number = std::to_string(index + 1);
  const std::size_t width = std::to_string(count).size();
  return prefix + std::string(width - number.size(), '0') + number;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dtu;
  CLI::App app{"dtu-swarm: many simulated DTUs in one process, each with its own TLS link to a manager"};
  SwarmOptions options;
  std::vector<std::string> managers;
  std::string log_level = "warn";
  app.add_option("-m,--manager", managers,
                 "a manager's address:port (repeat: DTU i starts at manager i mod M)")
      ->required();
  app.add_option("--site-key", options.site_key, "the site DTU key file (each DTU's key is derived from it)")
      ->required();
  app.add_option("--count", options.count, "how many DTUs (default 100)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}));
  app.add_option("--devices", options.devices, "devices per DTU (default 8)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{127}));
  app.add_option("--prefix", options.prefix, "DTU ids are PREFIX + a zero-padded number (default swarm-)");
  app.add_option("--connect-concurrency", options.connect_concurrency,
                 "DTUs between connect and their snapshot's ack at once (default 64)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}));
  app.add_option("--threads", options.threads, "io threads (default 1)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{64}));
  app.add_option("--log-level", log_level, "debug | info | warn | error (default warn)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  const common::Logger log("dtu-swarm");
  if (!common::set_log_level(log_level)) {
    std::cerr << "dtu-swarm: --log-level " << log_level << ": expected debug, info, warn or error\n";
    return kExitUsage;
  }
  for (const auto& text : managers) {
    auto endpoint = common::parse_endpoint(text);
    if (!endpoint.ok()) {
      std::cerr << "dtu-swarm: --manager " << text << ": " << endpoint.error().describe() << '\n';
      return kExitUsage;
    }
    options.managers.push_back(*endpoint);
  }
  auto site_key = common::load_key_file(options.site_key);
  if (!site_key.ok()) {
    std::cerr << "dtu-swarm: --site-key: " << site_key.error().describe() << '\n';
    return kExitFailed;
  }
  if (auto raised = raise_descriptor_limit(static_cast<rlim_t>(options.count) + kSpareDescriptors);
      !raised.ok()) {
    std::cerr << "dtu-swarm: " << raised.error().describe() << '\n';
    return kExitFailed;
  }
  std::signal(SIGPIPE, SIG_IGN);

  // Workers first: the DTUs refer to them, and die before them (reverse order of declaration).
  std::vector<std::unique_ptr<Worker>> workers;
  for (std::size_t t = 0; t < options.threads; ++t) {
    const std::size_t slots = options.connect_concurrency / options.threads +
                              (t < options.connect_concurrency % options.threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(std::max<std::size_t>(1, slots)));
  }
  Counters counters;
  std::vector<std::unique_ptr<SwarmDtu>> dtus;
  dtus.reserve(options.count);
  for (std::size_t i = 0; i < options.count; ++i) {
    std::string id = dtu_id(options.prefix, i, options.count);
    common::Bytes key = common::derive_dtu_key(*site_key, id);
    auto devices = device_catalogue(id, options.devices);
    dtus.push_back(std::make_unique<SwarmDtu>(*workers[i % workers.size()], std::move(id), std::move(key),
                                              std::move(devices), options.managers, i, counters));
  }
  for (auto& d : dtus) d->start();

  std::cout << "dtu-swarm: " << options.count << " DTUs x " << options.devices << " devices, "
            << options.managers.size() << " manager(s), " << options.threads << " thread(s), "
            << options.connect_concurrency << " concurrent connects" << std::endl;
  const auto started = std::chrono::steady_clock::now();
  for (auto& w : workers) {
    w->thread = std::thread([&io = w->io] {
      auto guard = asio::make_work_guard(io);
      io.run();
    });
  }

  // The main thread prints progress and waits for a signal.
  asio::io_context main_io;
  asio::signal_set signals(main_io, SIGINT, SIGTERM);
  asio::steady_timer progress(main_io);
  bool all_announced = false;
  bool stopping = false;
  // While connecting, check often (the "all welcomed" line is timed by its readers) but print
  // progress lines only once a second.
  std::size_t ticks = 0;
  std::function<void()> poll = [&] {
    if (stopping) return;
    const std::size_t welcomed = counters.welcomed.load();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (welcomed == options.count && !all_announced) {
      all_announced = true;
      std::printf("all %zu DTUs welcomed (%.2f s)\n", options.count, seconds);
      std::fflush(stdout);
    } else if (welcomed != options.count) {
      all_announced = false;
      if (ticks % 10 == 0) {
        std::printf("welcomed %zu/%zu after %.1f s (attempts %zu, failed %zu, lost %zu)\n", welcomed,
                    options.count, seconds, counters.attempts.load(), counters.failures.load(),
                    counters.lost.load());
        std::fflush(stdout);
      }
    }
    ++ticks;
    progress.expires_after(std::chrono::milliseconds(100));
    progress.async_wait([&](std::error_code ec) {
      if (!ec) poll();
    });
  };
  poll();
  signals.async_wait([&](std::error_code ec, int signo) {
    if (ec) return;
    log.info("", "stopping", {{"signal", signo}});
    stopping = true;
    progress.cancel();
  });
  main_io.run();
  for (auto& w : workers) w->io.stop();
  for (auto& w : workers) w->thread.join();
  // The DTUs go first (their links live on in their coroutines), then the io_contexts, whose
  // destruction ends those coroutines.
  dtus.clear();
  workers.clear();
  std::cout << "dtu-swarm: stopped" << std::endl;
  return 0;
}
