#include "dtu/devmgr/device_manager.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "support/async_client.hpp"
#include "support/log_capture.hpp"
#include "support/temp_dir.hpp"

// DeviceManagers on loopback (127.0.0.80, and .81 for a group of two) with the test as their DTU
// over TLS: the universal clock in the welcome, probes, drain and undrain, a peer's newer claim.
// And median_offset, pure.

namespace {

namespace common = dtu::common;
using common::Errc;
using common::Frame;
using dtu::devmgr::DeviceManager;
using dtu::devmgr::ManagerOptions;
using dtu::devmgr::median_offset;
using dtu::testing::LogCapture;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

// Safety net only: every outcome arrives well within it.
constexpr auto kLimit = seconds(10);
constexpr auto kRequestTimeout = seconds(5);

// The test's DTU: one TLS link to the manager, and what the manager sent it.
struct FakeDtu {
  std::shared_ptr<common::Link> link;
  std::vector<Frame> received;
  bool closed = false;
};

// The managers' mesh port (each manager on its own loopback address). ctest runs test cases as
// processes in parallel: each group test listens on a port of its own (kMeshPort + n).
constexpr std::uint16_t kMeshPort = 4720;
// Heartbeats of a group's managers: the peers' clock offsets are sampled this often (on idle links).
constexpr auto kGroupHeartbeat = milliseconds(200);

class Fixture {
 public:
  // One standalone manager "m1" on 127.0.0.80; with `group`, also "m2" on 127.0.0.81, the two
  // forming a group (mesh on `mesh_port`).
  explicit Fixture(bool group = false, std::uint16_t mesh_port = kMeshPort)
      : site_key_(common::generate_key()) {
    const std::vector<std::string> ips =
        group ? std::vector<std::string>{"127.0.0.80", "127.0.0.81"} : std::vector<std::string>{"127.0.0.80"};
    const std::string group_key = dir_.path("group.key");
    if (group) REQUIRE(common::write_key_file(group_key, common::generate_key()).ok());
    for (std::size_t i = 0; i < ips.size(); ++i) {
      ManagerOptions o;
      o.id = "m" + std::to_string(i + 1);
      o.dtu_listen = common::Endpoint{ips[i], 0};
      o.socket_path = dir_.path(o.id + ".sock");
      if (group) {
        o.peer_listen = common::Endpoint{ips[i], mesh_port};
        o.group_key_file = group_key;
        o.heartbeat_interval = kGroupHeartbeat;
        for (std::size_t j = 0; j < ips.size(); ++j) {
          if (j != i)
            o.peers.push_back("m" + std::to_string(j + 1) + "=" + ips[j] + ":" + std::to_string(mesh_port));
        }
      }
      managers_.push_back(
          std::make_unique<DeviceManager>(io_.get_executor(), common::SystemClock::instance(), o, site_key_));
      REQUIRE(managers_.back()->start().ok());
    }
    manager_ = managers_.front().get();
  }
  ~Fixture() {
    for (auto& dtu : dtus_) dtu->link->close(common::Error(Errc::closed, "test over"));
    for (auto& m : managers_) m->stop();
    io_.restart();
    io_.run_for(milliseconds(200));
  }

  // Whether `m` has a live link to every other manager.
  bool peers_up(DeviceManager& m) {
    std::optional<common::GroupInfoMsg> info;
    m.group_status([&info](common::GroupInfoMsg i) { info.emplace(std::move(i)); });
    if (!run_until([&] { return info.has_value(); })) return false;
    std::size_t up = 0;
    for (const auto& member : info->members) up += member.state == "up" ? 1U : 0U;
    return up + 1 == managers_.size();
  }

  // Connects a DTU over TLS (no hello yet).
  std::shared_ptr<FakeDtu> connect(const std::string& id) { return connect(id, *manager_); }
  std::shared_ptr<FakeDtu> connect(const std::string& id, DeviceManager& manager) {
    auto dtu = std::make_shared<FakeDtu>();
    std::optional<common::Result<std::unique_ptr<common::TlsTransport>>> transport;
    auto context = common::make_psk_client_context();
    const common::Endpoint endpoint = manager.dtu_endpoint();
    const common::Bytes key = common::derive_dtu_key(site_key_, id);
    common::spawn(io_.get_executor(), dial(endpoint, context, id, key, transport), common::Logger("test"),
                  "dial");
    REQUIRE(run_until([&] { return transport.has_value(); }));
    REQUIRE(transport->ok());
    common::Link::Options o;
    o.heartbeats = false;
    dtu->link = common::Link::create(io_.get_executor(), std::move(transport->value()),
                                     common::FilamentMux::Side::initiator, common::SystemClock::instance(),
                                     common::Logger("test-dtu"), "m1", o);
    std::weak_ptr<FakeDtu> weak = dtu;
    dtu->link->mux().set_receiver(common::FilamentMux::kControlFilament, [weak](Frame frame) {
      if (auto d = weak.lock()) d->received.push_back(std::move(frame));
    });
    dtu->link->start([weak](const common::Error&) {
      if (auto d = weak.lock()) d->closed = true;
    });
    dtus_.push_back(dtu);
    return dtu;
  }

  common::Result<Frame> hello(FakeDtu& dtu, const std::string& id, std::int64_t boot_epoch,
                              bool probe = false) {
    common::DtuHelloMsg msg{id, "test", boot_epoch, probe};
    std::optional<common::Result<Frame>> answer;
    dtu.link->request(common::FilamentMux::kControlFilament, common::to_frame(msg), kRequestTimeout,
                      [&answer](common::Result<Frame> r) { answer = std::move(r); });
    REQUIRE(run_until([&] { return answer.has_value(); }));
    return std::move(*answer);
  }

  void snapshot(FakeDtu& dtu, const std::string& id, common::Stamp claim,
                std::vector<common::DeviceRecord> devices = {}) {
    common::DeviceSnapshotMsg msg;
    msg.dtu = id;
    msg.stamp = claim;
    msg.devices = std::move(devices);
    bool acked = false;
    dtu.link->post(common::FilamentMux::kControlFilament, common::to_frame(msg), kRequestTimeout,
                   [&acked](common::Result<Frame> r) { acked = r.ok(); });
    REQUIRE(run_until([&] { return acked; }));
  }

  // A DTU that said hello and sent its snapshot (its claim).
  std::shared_ptr<FakeDtu> active(const std::string& id, common::Stamp claim) {
    auto dtu = connect(id);
    REQUIRE(hello(*dtu, id, claim.boot_epoch).ok());
    snapshot(*dtu, id, claim);
    return dtu;
  }

  bool run_until(const std::function<bool()>& done, common::Duration limit = kLimit) {
    return dtu::testing::run_io_until(io_, done, limit, milliseconds(5));
  }

  static std::int64_t wall_us() { return common::to_micros(common::SystemClock::instance().wall_now()); }

  asio::io_context io_;
  dtu::testing::UnitTempDir dir_;
  common::SecretKey site_key_;
  std::vector<std::unique_ptr<DeviceManager>> managers_;
  DeviceManager* manager_ = nullptr;
  std::vector<std::shared_ptr<FakeDtu>> dtus_;

 private:
  static asio::awaitable<void> dial(
      common::Endpoint endpoint, std::shared_ptr<asio::ssl::context> context, std::string id,
      common::Bytes key, std::optional<common::Result<std::unique_ptr<common::TlsTransport>>>& out) {
    auto connect = common::tcp_connect(endpoint, kRequestTimeout);
    auto socket = co_await std::move(connect);
    if (!socket.ok()) {
      out.emplace(socket.error());
      co_return;
    }
    auto handshake = common::tls_connect(std::move(socket.value()), *context, id, key, kRequestTimeout);
    auto transport = co_await std::move(handshake);
    out.emplace(std::move(transport));
  }
};

common::DtuWelcomeMsg welcome_of(const common::Result<Frame>& answer) {
  REQUIRE(answer.ok());
  auto welcome = common::from_frame<common::DtuWelcomeMsg>(*answer);
  REQUIRE(welcome.ok());
  return *welcome;
}

bool got_move(const FakeDtu& dtu) {
  for (const auto& frame : dtu.received) {
    if (frame.type != common::MessageType::dtu_move) continue;
    auto move = common::from_frame<common::DtuMoveMsg>(frame);
    if (move.ok() && move->reason == "drain") return true;
  }
  return false;
}

}  // namespace

TEST_CASE("median_offset is the middle of zero and the peers' offsets") {
  CHECK(median_offset({}) == common::Duration::zero());
  // Clocks at +5 min, 0 and -5 min agree on the middle one.
  CHECK(median_offset({minutes(5), -minutes(5)}) == common::Duration::zero());
  // Seen from the +5 min manager its peers are at -5 and -10 min: it follows the middle one.
  CHECK(median_offset({-minutes(5), -minutes(10)}) == -minutes(5));
  // Two managers meet halfway, whichever side computes it.
  CHECK(median_offset({seconds(10)}) == seconds(5));
  CHECK(median_offset({-seconds(10)}) == -seconds(5));
  // One wild clock does not drag the group.
  CHECK(median_offset({milliseconds(2), milliseconds(3), std::chrono::hours(24)}) ==
        std::chrono::microseconds(2500));
}

TEST_CASE("A standalone DeviceManager's universal clock has no offset and runs at its wall clock") {
  Fixture f;
  CHECK(f.manager_->universal().offset() == common::Duration::zero());
  const std::int64_t before = Fixture::wall_us();
  const std::int64_t universal = f.manager_->universal().now().wall_us;
  CHECK(universal >= before);
  CHECK(universal <= Fixture::wall_us());
}

TEST_CASE("A DeviceManager's welcome is later than every DTU boot epoch it has heard of") {
  Fixture f;
  // A DTU that took its boot epoch from a manager whose clock runs 20 s ahead of ours.
  const std::int64_t ahead = Fixture::wall_us() + 20'000'000;
  auto first = f.connect("dtu-a");
  const auto welcome = welcome_of(f.hello(*first, "dtu-a", ahead));
  CHECK(welcome.manager == "m1");
  CHECK(welcome.universal_us > ahead);
  CHECK(welcome.dtus == 0);
  CHECK_FALSE(welcome.draining);
  // A claim heard later from another DTU moves the clock past it as well.
  const std::int64_t further = ahead + 10'000'000;
  auto second = f.connect("dtu-b");
  REQUIRE(f.hello(*second, "dtu-b", 0).ok());
  f.snapshot(*second, "dtu-b", common::Stamp{further, 1, 0});
  CHECK(f.manager_->universal().now().wall_us > further);
  // A third DTU's welcome counts the DTUs served.
  auto third = f.connect("dtu-c");
  CHECK(welcome_of(f.hello(*third, "dtu-c", 0)).dtus == 2);
}

TEST_CASE("A probe gets the welcome and is never taken as a DTU of the manager") {
  Fixture f;
  auto served = f.active("dtu-a", common::Stamp{Fixture::wall_us(), 1, 0});
  auto probe = f.connect("dtu-b");
  const auto welcome = welcome_of(f.hello(*probe, "dtu-b", 0, /*probe=*/true));
  CHECK(welcome.dtus == 1);
  REQUIRE(f.run_until([&] { return probe->closed; }));
  CHECK(f.manager_->dtu_count() == 1);
}

TEST_CASE("drain moves every DTU away, answers when none is left, refuses DTUs until undrain") {
  LogCapture logs;
  Fixture f;
  auto dtu = f.active("dtu-a", common::Stamp{Fixture::wall_us(), 1, 0});
  REQUIRE(f.manager_->dtu_count() == 1);

  std::optional<common::Result<common::DrainStatusMsg>> drained;
  f.manager_->drain(10'000,
                    [&drained](common::Result<common::DrainStatusMsg> r) { drained.emplace(std::move(r)); });
  CHECK(f.manager_->draining());
  CHECK(logs.has({"drain_started", "dtus=1"}));
  REQUIRE(f.run_until([&] { return got_move(*dtu); }));
  CHECK_FALSE(drained.has_value());

  // The DTU leaves as told.
  dtu->link->close(common::Error(Errc::closed, "moving"));
  REQUIRE(f.run_until([&] { return drained.has_value(); }));
  REQUIRE(drained->ok());
  CHECK((*drained)->draining);
  CHECK((*drained)->dtus == 0);
  CHECK(logs.has({"drain_done"}));
  CHECK(f.manager_->dtu_count() == 0);

  // While draining: a hello is refused, a probe says so.
  auto again = f.connect("dtu-a");
  const auto refused = f.hello(*again, "dtu-a", 1);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == common::make_error_code(Errc::refused));
  CHECK(refused.error().detail == "draining");
  CHECK(logs.has({"dtu_refused_draining", "dtu-a"}));
  auto probe = f.connect("dtu-a");
  CHECK(welcome_of(f.hello(*probe, "dtu-a", 1, /*probe=*/true)).draining);

  // undrain: back in rotation.
  const auto status = f.manager_->undrain();
  CHECK_FALSE(status.draining);
  CHECK(logs.has({"undrained"}));
  auto back = f.connect("dtu-a");
  CHECK_FALSE(welcome_of(f.hello(*back, "dtu-a", 1)).draining);
  CHECK(f.manager_->dtu_count() == 1);
}

TEST_CASE("drain of a manager with no DTU answers at once") {
  Fixture f;
  std::optional<common::Result<common::DrainStatusMsg>> drained;
  f.manager_->drain(std::nullopt,
                    [&drained](common::Result<common::DrainStatusMsg> r) { drained.emplace(std::move(r)); });
  REQUIRE(drained.has_value());
  REQUIRE(drained->ok());
  CHECK((*drained)->dtus == 0);
}

TEST_CASE("drain gives up after its wait naming the DTUs that stayed, and stays draining") {
  Fixture f;
  auto stubborn = f.active("dtu-a", common::Stamp{Fixture::wall_us(), 1, 0});
  std::optional<common::Result<common::DrainStatusMsg>> drained;
  f.manager_->drain(100,
                    [&drained](common::Result<common::DrainStatusMsg> r) { drained.emplace(std::move(r)); });
  REQUIRE(f.run_until([&] { return drained.has_value(); }));
  REQUIRE_FALSE(drained->ok());
  CHECK(drained->error().code == common::make_error_code(Errc::timeout));
  CHECK(drained->error().detail == "still holds 1 DTUs");
  CHECK(f.manager_->draining());
  CHECK(f.manager_->dtu_count() == 1);
}

TEST_CASE("group_status reports draining and the universal clock's offset") {
  Fixture f;
  std::optional<common::GroupInfoMsg> info;
  f.manager_->group_status([&info](common::GroupInfoMsg i) { info.emplace(std::move(i)); });
  REQUIRE(f.run_until([&] { return info.has_value(); }));
  CHECK_FALSE(info->draining);
  REQUIRE(info->universal_offset_ms.has_value());
  CHECK(*info->universal_offset_ms == 0.0);

  f.manager_->drain(std::nullopt, [](common::Result<common::DrainStatusMsg>) {});
  info.reset();
  f.manager_->group_status([&info](common::GroupInfoMsg i) { info.emplace(std::move(i)); });
  REQUIRE(f.run_until([&] { return info.has_value(); }));
  CHECK(info->draining);
}

TEST_CASE("A peer's newer claim on a DTU closes its session here and drops its records") {
  LogCapture logs;
  Fixture f(/*group=*/true);
  DeviceManager& m1 = *f.managers_[0];
  DeviceManager& m2 = *f.managers_[1];
  REQUIRE(f.run_until([&] { return f.peers_up(m1) && f.peers_up(m2); }));

  const std::int64_t epoch = Fixture::wall_us();
  common::DeviceRecord printer;
  printer.dtu = "dtu-a";
  printer.device = "1-1";
  printer.stamp = common::Stamp{epoch, 1, 0};
  auto at_m1 = f.connect("dtu-a", m1);
  REQUIRE(f.hello(*at_m1, "dtu-a", epoch).ok());
  f.snapshot(*at_m1, "dtu-a", common::Stamp{epoch, 1, 0}, {printer});
  REQUIRE(m1.devices().list(std::string("dtu-a")).size() == 1);

  // The DTU connects to m2 with a newer claim while its link to m1 still looks alive.
  auto at_m2 = f.connect("dtu-a", m2);
  REQUIRE(f.hello(*at_m2, "dtu-a", epoch).ok());
  printer.stamp = common::Stamp{epoch, 2, 0};
  f.snapshot(*at_m2, "dtu-a", common::Stamp{epoch, 2, 0}, {printer});

  REQUIRE(f.run_until([&] { return at_m1->closed; }));
  CHECK(m1.dtu_count() == 0);
  CHECK(m1.devices().list(std::string("dtu-a")).empty());
  CHECK(m2.dtu_count() == 1);
  CHECK_FALSE(at_m2->closed);
  CHECK(logs.has({"ownership_lost", "dtu-a"}));
  CHECK(logs.has({"dtu_lost", "dtu-a", "claimed by m2 with a newer stamp"}));
}

TEST_CASE("A manager's universal clock goes halfway to its one peer's clock, as group_status reports") {
  Fixture f(/*group=*/true, kMeshPort + 1);
  DeviceManager& m1 = *f.managers_[0];
  REQUIRE(f.run_until([&] { return f.peers_up(m1); }));
  // Wait for the first heartbeat round trip's estimate of the peer's offset. Heartbeats go out on
  // an idle link only: ask now and then, not in a tight loop.
  std::optional<common::GroupInfoMsg> info;
  const auto estimated = [&] {
    info.reset();
    m1.group_status([&info](common::GroupInfoMsg i) { info.emplace(std::move(i)); });
    return f.run_until([&] { return info.has_value(); }) && info->members.size() == 2 &&
           info->members[1].offset_ms.has_value();
  };
  for (int i = 0; i < 20 && !estimated(); ++i) {
    f.io_.restart();
    f.io_.run_for(kGroupHeartbeat * 3);
  }
  REQUIRE(info.has_value());
  REQUIRE(info->members.size() == 2);
  REQUIRE(info->members[1].offset_ms.has_value());
  REQUIRE(info->universal_offset_ms.has_value());
  CHECK(*info->universal_offset_ms == doctest::Approx(*info->members[1].offset_ms / 2).epsilon(0.001));
}
