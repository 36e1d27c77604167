#include "dtu/devmgr/dtu_session.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "support/async_client.hpp"
#include "support/log_capture.hpp"

// DtuSession over an in-process Unix socket pair: the test plays the DTU on the other end.

namespace {

namespace common = dtu::common;
using common::Errc;
using common::Frame;
using dtu::devmgr::DeviceList;
using dtu::devmgr::DtuSession;
using dtu::testing::LogCapture;
using LocalSocket = asio::local::stream_protocol::socket;
using Side = common::FilamentMux::Side;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Safety net only: every outcome arrives within milliseconds.
constexpr auto kLimit = seconds(10);
constexpr auto kRequestTimeout = seconds(5);

// What the session told the manager.
struct Seen {
  int active = 0;
  int closed = 0;
  std::optional<common::Error> close_reason;
  std::optional<common::Stamp> claim_at_claim;  // claim() when on_claim ran
  std::size_t devices_at_claim = 99;            // the DTU's records applied when on_claim ran
  std::vector<std::vector<common::LeaseReport>> leases;
};

class Fixture {
 public:
  Fixture() {
    LocalSocket one(io_);
    LocalSocket two(io_);
    asio::local::connect_pair(one, two);
    common::Link::Options o;
    o.heartbeats = false;
    manager_link_ = common::Link::create(
        io_.get_executor(), std::make_unique<common::UnixTransport>(std::move(one)), Side::acceptor,
        common::SystemClock::instance(), common::Logger("test"), "dtu-peer", o);
    dtu_link_ = common::Link::create(
        io_.get_executor(), std::make_unique<common::UnixTransport>(std::move(two)), Side::initiator,
        common::SystemClock::instance(), common::Logger("test"), "manager-peer", o);
    session_ = std::make_shared<DtuSession>(manager_link_, "dtu-a", "m1", devices_, common::Logger("devmgr"),
                                            milliseconds(1000), 3, milliseconds(5000));
    dtu_link_->mux().set_receiver(common::FilamentMux::kControlFilament,
                                  [this](Frame frame) { to_dtu_.push_back(std::move(frame)); });
    dtu_link_->start([this](const common::Error&) { dtu_closed_ = true; });
  }
  ~Fixture() {
    manager_link_->close(common::Error(Errc::closed, "test over"));
    dtu_link_->close(common::Error(Errc::closed, "test over"));
    io_.restart();
    io_.run_for(milliseconds(200));
  }

  void start(DtuSession::Admission admission) {
    DtuSession::Hooks hooks;
    hooks.admit = [admission](const common::DtuHelloMsg&) { return admission; };
    hooks.on_active = [this](const std::shared_ptr<DtuSession>&) { ++seen_.active; };
    hooks.on_claim = [this](const std::shared_ptr<DtuSession>& s) {
      seen_.claim_at_claim = s->claim();
      seen_.devices_at_claim = devices_.list(std::string("dtu-a")).size();
    };
    hooks.on_leases = [this](const std::shared_ptr<DtuSession>&,
                             const std::vector<common::LeaseReport>& leases) {
      seen_.leases.push_back(leases);
    };
    hooks.on_closed = [this](const std::shared_ptr<DtuSession>&, const common::Error& reason) {
      ++seen_.closed;
      seen_.close_reason = reason;
    };
    session_->start(std::move(hooks));
  }

  // Sends the DTU's hello and returns the manager's answer.
  common::Result<Frame> hello(bool probe, std::int64_t boot_epoch = 0) {
    common::DtuHelloMsg msg;
    msg.dtu = "dtu-a";
    msg.agent_version = "test";
    msg.boot_epoch = boot_epoch;
    msg.probe = probe;
    std::optional<common::Result<Frame>> answer;
    dtu_link_->request(common::FilamentMux::kControlFilament, common::to_frame(msg), kRequestTimeout,
                       [&answer](common::Result<Frame> r) { answer.emplace(std::move(r)); });
    REQUIRE(run_until([&] { return answer.has_value(); }));
    return std::move(*answer);
  }

  // Posts a snapshot from the DTU and waits for its ack.
  void snapshot(common::Stamp stamp, std::vector<common::DeviceRecord> devices,
                std::vector<common::LeaseReport> leases) {
    common::DeviceSnapshotMsg msg;
    msg.dtu = "dtu-a";
    msg.stamp = stamp;
    msg.devices = std::move(devices);
    msg.leases = std::move(leases);
    bool acked = false;
    dtu_link_->post(common::FilamentMux::kControlFilament, common::to_frame(msg), kRequestTimeout,
                    [&acked](common::Result<Frame> r) { acked = r.ok(); });
    REQUIRE(run_until([&] { return acked; }));
  }

  bool run_until(const std::function<bool()>& done) {
    return dtu::testing::run_io_until(io_, done, kLimit, milliseconds(5));
  }

  asio::io_context io_;
  DeviceList devices_;
  std::shared_ptr<common::Link> manager_link_;
  std::shared_ptr<common::Link> dtu_link_;
  std::shared_ptr<DtuSession> session_;
  std::vector<Frame> to_dtu_;
  bool dtu_closed_ = false;
  Seen seen_;
};

common::DeviceRecord record(const std::string& device, common::Stamp stamp) {
  common::DeviceRecord r;
  r.dtu = "dtu-a";
  r.device = device;
  r.stamp = stamp;
  return r;
}

common::DtuWelcomeMsg welcome_of(const common::Result<Frame>& answer) {
  REQUIRE(answer.ok());
  auto welcome = common::from_frame<common::DtuWelcomeMsg>(*answer);
  REQUIRE(welcome.ok());
  return *welcome;
}

}  // namespace

TEST_CASE("DtuSession answers a probe with the welcome's load figures and closes without taking the DTU") {
  Fixture f;
  f.start(DtuSession::Admission{1'767'225'600'000'000, 4, false});
  const auto welcome = welcome_of(f.hello(/*probe=*/true));
  CHECK(welcome.manager == "m1");
  CHECK(welcome.universal_us == 1'767'225'600'000'000);
  CHECK(welcome.dtus == 4);
  CHECK_FALSE(welcome.draining);
  REQUIRE(f.run_until([&] { return f.seen_.closed == 1 && f.dtu_closed_; }));
  CHECK(f.seen_.active == 0);
  CHECK(f.session_->state() == DtuSession::State::closed);
  CHECK_FALSE(f.session_->claim().has_value());
}

TEST_CASE("A draining DtuSession still answers a probe, saying it drains") {
  Fixture f;
  f.start(DtuSession::Admission{5, 2, true});
  const auto welcome = welcome_of(f.hello(/*probe=*/true));
  CHECK(welcome.draining);
  CHECK(welcome.dtus == 2);
  REQUIRE(f.run_until([&] { return f.seen_.closed == 1; }));
  CHECK(f.seen_.active == 0);
}

TEST_CASE("A draining DtuSession refuses a hello with refused draining and logs dtu_refused_draining") {
  LogCapture logs;
  Fixture f;
  f.start(DtuSession::Admission{5, 0, true});
  const auto answer = f.hello(/*probe=*/false, 42);
  REQUIRE_FALSE(answer.ok());
  CHECK(answer.error().code == common::make_error_code(Errc::refused));
  CHECK(answer.error().detail.find("draining") != std::string::npos);
  REQUIRE(f.run_until([&] { return f.seen_.closed == 1 && f.dtu_closed_; }));
  CHECK(f.seen_.active == 0);
  CHECK(logs.has({"dtu_refused_draining", "dtu-a"}));
  CHECK(f.devices_.dtu_count() == 0);
}

TEST_CASE(
    "DtuSession takes the DTU's claim from its first snapshot, before the records apply, and hands over the "
    "leases") {
  Fixture f;
  f.start(DtuSession::Admission{1'000'000, 0, false});
  const auto welcome = welcome_of(f.hello(/*probe=*/false));
  CHECK(welcome.universal_us == 1'000'000);
  CHECK(f.seen_.active == 1);
  CHECK(f.session_->state() == DtuSession::State::active);
  CHECK_FALSE(f.session_->claim().has_value());

  const common::Stamp claim{1'000'000, 7, 0};
  common::LeaseReport lease;
  lease.lease = "L1";
  lease.device = "1-2";
  lease.unit = 0;
  lease.holder = "svc[1]@m0";
  lease.expires_in_ms = 5000;
  lease.state_token = "token";
  f.snapshot(claim, {record("1-2", claim)}, {lease});
  REQUIRE(f.session_->claim().has_value());
  CHECK(*f.session_->claim() == claim);
  REQUIRE(f.seen_.claim_at_claim.has_value());
  CHECK(*f.seen_.claim_at_claim == claim);
  CHECK(f.seen_.devices_at_claim == 0);
  CHECK(f.devices_.list(std::string("dtu-a")).size() == 1);
  REQUIRE(f.seen_.leases.size() == 1);
  CHECK(f.seen_.leases[0] == std::vector<common::LeaseReport>{lease});

  // A later snapshot on the same link does not move the claim (the fence of this link).
  const common::Stamp later{1'000'000, 9, 0};
  f.snapshot(later, {record("1-2", later)}, {});
  CHECK(*f.session_->claim() == claim);
  CHECK(f.seen_.leases.size() == 2);
}

TEST_CASE("DtuSession sends dtu_move to an active DTU as a notify") {
  Fixture f;
  f.start(DtuSession::Admission{});
  welcome_of(f.hello(/*probe=*/false));
  f.session_->move("drain");
  REQUIRE(f.run_until([&] { return !f.to_dtu_.empty(); }));
  const Frame& frame = f.to_dtu_.front();
  CHECK(frame.type == common::MessageType::dtu_move);
  CHECK_FALSE(frame.wants_reply());
  auto move = common::from_frame<common::DtuMoveMsg>(frame);
  REQUIRE(move.ok());
  CHECK(move->reason == "drain");
}
