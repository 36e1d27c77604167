#include "dtu/agent/dtu_agent.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/agent/sim_backend.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "support/async_client.hpp"
#include "support/psk_link.hpp"
#include "support/log_capture.hpp"

// DtuAgent against fake managers: TLS-PSK listeners in this process on 127.0.0.61-69 that say
// welcome (with the universal time, load and draining figures a test sets), record what the agent
// sends, and send lease operations and dtu_move as a manager would. The agent runs a SimBackend
// with one printer. One io_context, driven by this thread; SystemClock (links sleep on it).

namespace {

namespace common = dtu::common;
using common::Bytes;
using common::Errc;
using common::Frame;
using common::Result;
using dtu::agent::AgentOptions;
using dtu::agent::DtuAgent;
using dtu::agent::SimBackend;
using dtu::testing::LogCapture;
using dtu::testing::run_io_until;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Safety net only: every outcome here arrives within milliseconds of the event that causes it.
constexpr auto kSafetyNet = seconds(20);
constexpr const char* kDtu = "dtu-1";
constexpr std::uint32_t kLeaseMs = 60000;

dtu::agent::SimDeviceSet printer() {
  const auto doc = nlohmann::json::parse(R"({"devices": [
    {"port": "1-1", "vid": "04b8", "pid": "0005", "product": "Stylus Test Printer",
     "interfaces": [
       {"number": 0, "class": "07", "subclass": "01", "protocol": "02",
        "endpoints": [
          {"address": "0x01", "type": "bulk", "max_packet_size": 512, "sink": {}},
          {"address": "0x82", "type": "bulk", "max_packet_size": 512}]}]}
  ]})");
  auto set = dtu::agent::sim_devices_from_json(doc, "test devices");
  REQUIRE_MESSAGE(set.ok(), set.error().describe());
  return std::move(set).value();
}

// Runs `io` until `done` holds; fails the test (with the log) when the safety net passes.
void wait_for(asio::io_context& io, const std::function<bool()>& done, const LogCapture& log,
              const char* what) {
  const bool ok = run_io_until(io, done, kSafetyNet);
  REQUIRE_MESSAGE(ok, what << "\nlog:\n" << log.text());
}

using Answer = std::shared_ptr<std::optional<Result<Frame>>>;

asio::awaitable<void> request_into(std::shared_ptr<common::Link> link, Frame frame, Answer out) {
  auto op = link->request(common::FilamentMux::kControlFilament, std::move(frame), seconds(10));
  auto result = co_await std::move(op);
  out->emplace(std::move(result));
}

// Sends a request on `link` (filament 0) and waits for its answer.
Result<Frame> ask_on(asio::io_context& io, const std::shared_ptr<common::Link>& link, Frame frame,
                     const LogCapture& log) {
  auto answer = std::make_shared<std::optional<Result<Frame>>>();
  common::spawn(io.get_executor(), request_into(link, std::move(frame), answer), common::Logger("test"),
                "request");
  wait_for(
      io, [&] { return answer->has_value(); }, log, "an answer");
  return std::move(**answer);
}

class FakeManager;
asio::awaitable<void> accept_loop(FakeManager* manager);

// One fake manager: accepts the DTU's TLS-PSK connections, answers hellos, keeps the last
// welcomed link for the test to drive.
class FakeManager {
 public:
  FakeManager(asio::io_context& io, const std::string& host, Bytes key, std::string name)
      : io_(io), name_(std::move(name)) {
    tls_ = common::make_psk_server_context([key](std::string_view identity) -> std::optional<Bytes> {
      if (identity == kDtu) return key;
      return std::nullopt;
    });
    auto acceptor = common::tcp_listen(io.get_executor(), common::Endpoint{host, 0});
    REQUIRE_MESSAGE(acceptor.ok(), acceptor.error().describe());
    acceptor_.emplace(std::move(acceptor.value()));
    endpoint = common::Endpoint{host, acceptor_->local_endpoint().port()};
    common::spawn(io.get_executor(), accept_loop(this), log_, "fake manager accept");
  }
  ~FakeManager() { stop(); }

  void stop() {
    if (acceptor_) acceptor_->close();
    for (const auto& l : links_) l->close(common::Error(Errc::closed, "fake manager stops"));
  }
  void close_link() {
    if (link) link->close(common::Error(Errc::closed, "test closes the link"));
  }

  // The DTU's current link: welcomed and not closed since.
  bool connected() const { return link && link->is_open(); }
  const common::DeviceSnapshotMsg& snapshot() const { return snapshots.back(); }

  // Sends a request on the link and waits for its answer.
  template <typename M>
  Result<Frame> ask(const M& msg, const LogCapture& log) {
    REQUIRE(connected());
    return ask_on(io_, link, common::to_frame(msg), log);
  }

  // What the test sets.
  std::int64_t universal_us = 0;
  std::uint32_t dtus = 0;
  bool draining = false;

  // What the agent did.
  common::Endpoint endpoint;
  std::vector<common::DtuHelloMsg> hellos;  // probes and real ones
  std::vector<common::DeviceSnapshotMsg> snapshots;
  std::shared_ptr<common::Link> link;

 private:
  friend asio::awaitable<void> accept_loop(FakeManager* manager);

  void on_frame(const std::shared_ptr<common::Link>& from, const Frame& frame) {
    if (frame.type == common::MessageType::dtu_hello) {
      auto hello = common::from_frame<common::DtuHelloMsg>(frame);
      REQUIRE(hello.ok());
      hellos.push_back(*hello);
      if (draining && !hello->probe) {
        from->reply_error(frame, Errc::refused, "draining");
        return;
      }
      common::DtuWelcomeMsg welcome;
      welcome.manager = name_;
      welcome.universal_us = universal_us;
      welcome.dtus = dtus;
      welcome.draining = draining;
      from->set_heartbeat(seconds(1), 3);
      from->reply(frame, common::to_frame(welcome));
      if (!hello->probe) link = from;
    } else if (frame.type == common::MessageType::device_snapshot) {
      auto snapshot = common::from_frame<common::DeviceSnapshotMsg>(frame);
      REQUIRE(snapshot.ok());
      snapshots.push_back(*snapshot);
    }
  }

  asio::io_context& io_;
  std::string name_;
  common::Logger log_{"fake-manager"};
  std::shared_ptr<asio::ssl::context> tls_;
  std::optional<asio::ip::tcp::acceptor> acceptor_;
  std::vector<std::shared_ptr<common::Link>> links_;  // every accepted one, closed by stop()
  common::SystemClock clock_;
};

asio::awaitable<void> accept_loop(FakeManager* manager) {
  while (manager->acceptor_ && manager->acceptor_->is_open()) {
    auto [ec, socket] =
        co_await manager->acceptor_->async_accept(asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    auto handshake = common::tls_accept(std::move(socket), *manager->tls_, seconds(5));
    auto transport = co_await std::move(handshake);
    if (!transport.ok()) continue;
    auto link = common::Link::create(manager->io_.get_executor(), std::move(transport.value()),
                                     common::FilamentMux::Side::acceptor, manager->clock_, manager->log_,
                                     kDtu, common::Link::Options{});
    std::weak_ptr<common::Link> weak = link;
    link->mux().set_receiver(common::FilamentMux::kControlFilament, [manager, weak](Frame frame) {
      if (auto from = weak.lock()) manager->on_frame(from, frame);
    });
    link->start([](const common::Error&) {});
    manager->links_.push_back(link);
  }
}

// The agent under test with its backend, and the io_context both run on.
struct Site {
  explicit Site(std::vector<common::Endpoint> managers, std::string pick = "first") {
    options.id = kDtu;
    options.managers = std::move(managers);
    options.pick = std::move(pick);
    options.backend = "sim";
    options.inband = common::Endpoint{"127.0.0.60", 0};
    options.connect_timeout = milliseconds(2000);
    options.reconnect_min = milliseconds(20);
    options.reconnect_max = milliseconds(100);
  }
  ~Site() {
    if (agent) agent->stop();
    agent.reset();
    backend.reset();
  }
  void start() {
    backend = std::make_unique<SimBackend>(io.get_executor(), printer());
    agent = std::make_unique<DtuAgent>(io.get_executor(), common::SystemClock::instance(), options, key,
                                       *backend);
    auto started = agent->start();
    REQUIRE_MESSAGE(started.ok(), started.error().describe());
  }

  asio::io_context io;
  Bytes key = common::random_bytes(32);
  AgentOptions options;
  std::unique_ptr<SimBackend> backend;
  std::unique_ptr<DtuAgent> agent;
};

// A lease request for the printer's unit 0, as a manager would send it.
common::LeaseRequestMsg request_unit0(std::optional<common::Stamp> fence) {
  common::LeaseRequestMsg m;
  m.device = "1-1";
  m.unit = 0;
  m.holder = "svc-1";
  m.uid = 1000;
  m.length_ms = kLeaseMs;
  m.fence = fence;
  return m;
}

bool connected_to(const Site& site, const FakeManager& manager) {
  return manager.connected() && !manager.snapshots.empty() && site.agent->manager() == manager.endpoint;
}

std::int64_t now_us() {
  return common::to_micros(std::chrono::system_clock::now());
}

}  // namespace

TEST_CASE("DtuAgent takes its boot epoch from the first welcome and re-stamps the records built before it") {
  LogCapture log;
  Site site({});
  FakeManager manager(site.io, "127.0.0.61", site.key, "m1");
  // The group's universal time is five minutes ahead of this host's wall clock.
  const std::int64_t universal = now_us() + 300'000'000;
  manager.universal_us = universal;
  site.options.managers = {manager.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return connected_to(site, manager); }, log, "the agent's first connection");

  REQUIRE(manager.hellos.size() == 1);
  CHECK(manager.hellos[0].boot_epoch == 0);  // none yet at the first hello
  CHECK_FALSE(manager.hellos[0].probe);
  CHECK(site.agent->boot_epoch() == universal);
  const auto& snapshot = manager.snapshot();
  CHECK(snapshot.stamp.boot_epoch == universal);
  // Stamp times are universal: at or after the welcome's time, not the host's wall clock.
  CHECK(snapshot.stamp.time_us >= universal);
  CHECK(snapshot.stamp.time_us < universal + 60'000'000);
  // The printer was reported by the backend before any welcome: re-stamped into this boot, its
  // seq (from before the claim) kept.
  REQUIRE(snapshot.devices.size() == 1);
  const auto& record = snapshot.devices[0];
  CHECK(record.stamp.boot_epoch == universal);
  CHECK(record.stamp.seq < snapshot.stamp.seq);
  CHECK(record.stamp.time_us >= universal - 60'000'000);
  CHECK(log.has({"boot_epoch", "restamped=1"}));

  // A later welcome with another universal time does not change the boot epoch.
  manager.universal_us = universal + 1'000'000;
  manager.close_link();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 2 && connected_to(site, manager); }, log,
      "the reconnection");
  REQUIRE(manager.hellos.size() == 2);
  CHECK(manager.hellos[1].boot_epoch == universal);
  CHECK(manager.snapshot().stamp.boot_epoch == universal);
}

TEST_CASE("DtuAgent sends a fresh and greater claim stamp on every connect") {
  LogCapture log;
  Site site({});
  FakeManager manager(site.io, "127.0.0.61", site.key, "m1");
  manager.universal_us = now_us();
  site.options.managers = {manager.endpoint};
  site.start();
  for (std::size_t n = 1; n <= 3; ++n) {
    wait_for(
        site.io, [&] { return manager.snapshots.size() == n && connected_to(site, manager); }, log,
        "a connection");
    if (n < 3) manager.close_link();
  }
  CHECK(manager.snapshots[0].stamp < manager.snapshots[1].stamp);
  CHECK(manager.snapshots[1].stamp < manager.snapshots[2].stamp);
  CHECK(log.count({"dtu-agent", "connected", "claim="}) == 3);
}

TEST_CASE("DtuAgent refuses lease operations without this link's claim stamp as a stale owner") {
  LogCapture log;
  Site site({});
  FakeManager manager(site.io, "127.0.0.61", site.key, "m1");
  manager.universal_us = now_us();
  site.options.managers = {manager.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 1 && connected_to(site, manager); }, log,
      "a connection");
  const common::Stamp first_claim = manager.snapshot().stamp;

  // The claim of an earlier link, as a manager that lost the DTU and came back would hold it.
  manager.close_link();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 2 && connected_to(site, manager); }, log,
      "the reconnection");
  const common::Stamp claim = manager.snapshot().stamp;
  REQUIRE(first_claim < claim);

  auto no_fence = manager.ask(request_unit0(std::nullopt), log);
  REQUIRE_FALSE(no_fence.ok());
  CHECK(no_fence.error().code == make_error_code(Errc::refused));
  CHECK(no_fence.error().detail.find("stale owner") != std::string::npos);

  auto stale = manager.ask(request_unit0(first_claim), log);
  REQUIRE_FALSE(stale.ok());
  CHECK(stale.error().code == make_error_code(Errc::refused));
  CHECK(stale.error().detail.find("stale owner") != std::string::npos);
  CHECK(site.agent->leases().size() == 0);
  const std::string first_text =
      std::to_string(first_claim.boot_epoch) + "." + std::to_string(first_claim.seq);
  const std::string claim_text = std::to_string(claim.boot_epoch) + "." + std::to_string(claim.seq);
  CHECK(log.has({"lease_fenced", "lease_request", "unit 0 of 1-1", "fence=none", claim_text}));
  CHECK(log.has({"lease_fenced", "lease_request", first_text, claim_text}));

  auto granted = manager.ask(request_unit0(claim), log);
  REQUIRE_MESSAGE(granted.ok(), granted.error().describe());
  auto lease = common::from_frame<common::LeaseGrantedMsg>(*granted);
  REQUIRE(lease.ok());

  common::LeaseRenewMsg renew{lease->lease, kLeaseMs, std::nullopt, first_claim, std::nullopt};
  auto stale_renew = manager.ask(renew, log);
  REQUIRE_FALSE(stale_renew.ok());
  CHECK(stale_renew.error().detail.find("stale owner") != std::string::npos);

  common::LeaseReleaseMsg release{lease->lease, first_claim};
  auto stale_release = manager.ask(release, log);
  REQUIRE_FALSE(stale_release.ok());
  CHECK(stale_release.error().detail.find("stale owner") != std::string::npos);
  CHECK(site.agent->leases().find(lease->lease) != nullptr);  // still held
  CHECK(log.has({"lease_fenced", "lease_release", "lease " + lease->lease}));

  release.fence = claim;
  auto released = manager.ask(release, log);
  CHECK(released.ok());
  CHECK(site.agent->leases().size() == 0);
}

TEST_CASE("DtuAgent keeps the state token with a lease and reports it on the next connect") {
  LogCapture log;
  Site site({});
  FakeManager manager(site.io, "127.0.0.61", site.key, "m1");
  manager.universal_us = now_us();
  site.options.managers = {manager.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 1 && connected_to(site, manager); }, log,
      "a connection");
  CHECK(manager.snapshot().leases.empty());

  auto request = request_unit0(manager.snapshot().stamp);
  request.state_token = "token-from-m1";
  auto granted = manager.ask(request, log);
  REQUIRE_MESSAGE(granted.ok(), granted.error().describe());
  const std::string lease = common::from_frame<common::LeaseGrantedMsg>(*granted)->lease;

  manager.close_link();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 2 && connected_to(site, manager); }, log,
      "the reconnection");
  REQUIRE(manager.snapshot().leases.size() == 1);
  const common::LeaseReport& report = manager.snapshot().leases[0];
  CHECK(report.lease == lease);
  CHECK(report.device == "1-1");
  CHECK(report.unit == 0);
  CHECK(report.holder == "svc-1");
  CHECK(report.uid == std::optional<std::uint32_t>(1000));
  CHECK(report.state_token == std::optional<std::string>("token-from-m1"));
  CHECK(report.expires_in_ms > 0);
  CHECK(report.expires_in_ms <= kLeaseMs);

  // A renewal without a token keeps it; one with a token (a new owner's context) replaces it.
  common::LeaseRenewMsg renew{lease, kLeaseMs, std::nullopt, manager.snapshot().stamp, std::nullopt};
  REQUIRE(manager.ask(renew, log).ok());
  CHECK(site.agent->leases().find(lease)->state_token == std::optional<std::string>("token-from-m1"));
  renew.state_token = "token-from-m2";
  REQUIRE(manager.ask(renew, log).ok());
  manager.close_link();
  wait_for(
      site.io, [&] { return manager.snapshots.size() == 3 && connected_to(site, manager); }, log,
      "the second reconnection");
  REQUIRE(manager.snapshot().leases.size() == 1);
  CHECK(manager.snapshot().leases[0].state_token == std::optional<std::string>("token-from-m2"));
}

TEST_CASE(
    "DtuAgent with pick least-loaded connects to the reachable, not draining manager with fewest DTUs") {
  LogCapture log;
  Site site({}, "least-loaded");
  FakeManager busy(site.io, "127.0.0.61", site.key, "busy");
  FakeManager draining(site.io, "127.0.0.62", site.key, "draining");
  FakeManager light(site.io, "127.0.0.63", site.key, "light");
  busy.dtus = 5;
  draining.dtus = 0;
  draining.draining = true;
  light.dtus = 2;
  for (auto* m : {&busy, &draining, &light}) m->universal_us = now_us();
  // An address where nobody listens: unreachable, so tried last.
  common::Endpoint nobody;
  {
    auto closed = common::tcp_listen(site.io.get_executor(), common::Endpoint{"127.0.0.69", 0});
    REQUIRE(closed.ok());
    nobody = common::Endpoint{"127.0.0.69", closed->local_endpoint().port()};
  }
  site.options.managers = {nobody, busy.endpoint, draining.endpoint, light.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return connected_to(site, light); }, log, "a connection to the least loaded manager");

  // Every reachable manager was probed; only the chosen one got a real hello.
  for (auto* m : {&busy, &draining}) {
    REQUIRE(m->hellos.size() == 1);
    CHECK(m->hellos[0].probe);
    CHECK(m->snapshots.empty());
  }
  REQUIRE(light.hellos.size() == 2);
  CHECK(light.hellos[0].probe);
  CHECK_FALSE(light.hellos[1].probe);
  CHECK(log.has({"manager_picked", light.endpoint.to_string(), "least-loaded",
                 nobody.to_string() + "=unreachable", busy.endpoint.to_string() + "=5",
                 draining.endpoint.to_string() + "=0 draining", light.endpoint.to_string() + "=2"}));
}

TEST_CASE("DtuAgent moves on at once from a manager that refuses its hello as draining") {
  LogCapture log;
  Site site({});
  FakeManager draining(site.io, "127.0.0.61", site.key, "draining");
  FakeManager open(site.io, "127.0.0.62", site.key, "open");
  draining.draining = true;
  draining.universal_us = open.universal_us = now_us();
  site.options.managers = {draining.endpoint, open.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return connected_to(site, open); }, log, "a connection to the second manager");
  REQUIRE(draining.hellos.size() >= 1);
  CHECK_FALSE(draining.hellos[0].probe);
  CHECK(draining.snapshots.empty());
  CHECK(log.has({"manager_draining", draining.endpoint.to_string(), "draining"}));
  // The first round went on to the next manager: no "none reachable" round in between.
  CHECK(log.count({"manager_unreachable"}) == 0);
}

TEST_CASE("DtuAgent leaves a manager that sends dtu_move and keeps its leases and in-band channels") {
  LogCapture log;
  Site site({});
  FakeManager first(site.io, "127.0.0.61", site.key, "m1");
  FakeManager second(site.io, "127.0.0.62", site.key, "m2");
  first.universal_us = second.universal_us = now_us();
  site.options.managers = {first.endpoint, second.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return connected_to(site, first); }, log, "a connection to the first manager");

  auto request = request_unit0(first.snapshot().stamp);
  request.state_token = "ctx";
  auto granted_frame = first.ask(request, log);
  REQUIRE_MESSAGE(granted_frame.ok(), granted_frame.error().describe());
  const auto granted = *common::from_frame<common::LeaseGrantedMsg>(*granted_frame);
  const auto expires_before = site.agent->leases().find(granted.lease)->expires;

  // The holder's in-band channel: TLS with the lease as the PSK, inband_hello, one write.
  std::shared_ptr<common::Link> channel;
  {
    std::optional<Result<std::shared_ptr<common::Link>>> opened;
    auto open_channel =
        [](asio::any_io_executor ex, common::Endpoint at, std::string lease, Bytes token,
           std::optional<Result<std::shared_ptr<common::Link>>>& out) -> asio::awaitable<void> {
      auto dial = dtu::testing::psk_link(ex, at, lease, token, seconds(5), "holder");
      auto link = co_await std::move(dial);
      out.emplace(std::move(link));
    };
    const Bytes token = *common::from_hex(*granted.token);
    common::spawn(
        site.io.get_executor(),
        open_channel(site.io.get_executor(), site.agent->inband_endpoint(), granted.lease, token, opened),
        common::Logger("test"), "open channel");
    wait_for(
        site.io, [&] { return opened.has_value(); }, log, "the in-band connection");
    REQUIRE_MESSAGE(opened->ok(), opened->error().describe());
    channel = opened->value();
  }
  auto ask_channel = [&](Frame frame) { return ask_on(site.io, channel, std::move(frame), log); };
  auto hello = ask_channel(common::to_frame(common::InbandHelloMsg{granted.lease}));
  REQUIRE_MESSAGE(hello.ok(), hello.error().describe());
  auto write = [&](const std::string& text) {
    common::UsbOutMsg out;
    out.endpoint = 0x01;
    out.timeout_ms = 5000;
    out.data.assign(text.begin(), text.end());
    return ask_channel(common::to_frame(out));
  };
  REQUIRE(write("before ").ok());

  common::DtuMoveMsg move{"drain"};
  first.link->notify(common::FilamentMux::kControlFilament, common::to_frame(move));
  wait_for(
      site.io, [&] { return connected_to(site, second); }, log, "the move to the second manager");
  CHECK(log.has({"manager_move", first.endpoint.to_string(), "drain"}));
  CHECK_FALSE(first.connected());

  // The new owner is told about the lease, with its context; the lease itself is untouched.
  REQUIRE(second.snapshot().leases.size() == 1);
  CHECK(second.snapshot().leases[0].lease == granted.lease);
  CHECK(second.snapshot().leases[0].state_token == std::optional<std::string>("ctx"));
  const dtu::agent::Lease* kept = site.agent->leases().find(granted.lease);
  REQUIRE(kept != nullptr);
  CHECK(kept->expires == expires_before);
  CHECK(log.count({"lease_ended"}) == 0);
  // The channel opened before the move still carries data after it.
  CHECK(channel->is_open());
  REQUIRE(write("after").ok());
  const auto captured = site.backend->captured("1-1", 0x01);
  CHECK(std::string(captured.begin(), captured.end()) == "before after");
  channel->close(common::Error(Errc::closed, "test done"));
}

TEST_CASE("DtuAgent tries the manager it just lost last in the next round") {
  LogCapture log;
  Site site({});
  FakeManager first(site.io, "127.0.0.61", site.key, "m1");
  FakeManager second(site.io, "127.0.0.62", site.key, "m2");
  first.universal_us = second.universal_us = now_us();
  site.options.managers = {first.endpoint, second.endpoint};
  site.start();
  wait_for(
      site.io, [&] { return connected_to(site, first); }, log, "a connection to the first manager");
  // The first manager drops the link but is still there: the agent goes to the second anyway.
  first.close_link();
  wait_for(
      site.io, [&] { return connected_to(site, second); }, log, "a connection to the second manager");
  CHECK(first.hellos.size() == 1);
  CHECK(log.has({"manager_lost", first.endpoint.to_string()}));
  // And back when the second is lost: the list order holds again after that round.
  second.close_link();
  wait_for(
      site.io, [&] { return first.snapshots.size() == 2 && connected_to(site, first); }, log,
      "a connection back to the first manager");
}
