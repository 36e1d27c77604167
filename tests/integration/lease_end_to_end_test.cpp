// Leases and the in-band channel across real processes: devmgr and dtu-agent (simulated USB
// backend) on loopback, and this test acting as a device service — ManagerClient to allocate
// through the manager, InbandChannel to move the bytes straight to the DTU.
#include <doctest/doctest.h>

#include <regex>
#include <string>
#include <vector>

#include "dtu/client/inband_channel.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/services/manager_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::client::InbandChannel;
using dtu::common::Bytes;
using dtu::common::Errc;
using dtu::common::LeaseGrantedMsg;
using dtu::common::Result;
using dtu::common::SystemClock;
using dtu::services::ManagerClient;
using dtu::testing::AsyncClient;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);

std::unique_ptr<ManagerClient> connect(AsyncClient& c, const Site::Manager& m, const std::string& name) {
  auto r = c.await(ManagerClient::connect(m.socket.string(), name, SystemClock::instance(), kTimeout));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().describe()));
  return std::move(r.value());
}

Result<LeaseGrantedMsg> allocate(AsyncClient& c, ManagerClient& client, const std::string& device,
                                 std::uint32_t unit, std::chrono::milliseconds length = 60s) {
  return c.await(client.allocate("dtu-1", device, unit, length, kTimeout));
}

Result<std::shared_ptr<InbandChannel>> open_channel(AsyncClient& c, const LeaseGrantedMsg& lease) {
  auto endpoint = dtu::common::parse_endpoint(lease.inband.value_or(""));
  REQUIRE(endpoint.ok());
  auto token = dtu::common::from_hex(lease.token.value_or(""));
  REQUIRE(token.ok());
  return c.await(InbandChannel::connect(c.executor(), SystemClock::instance(), *endpoint, lease.lease, *token, kTimeout));
}

// The unit `unit` of `device` as devmgrctl shows it.
json unit_of(Site& site, const Site::Manager& m, const std::string& device, std::uint32_t unit) {
  for (const auto& d : site.devices(m)) {
    if (d.at("device") != device) continue;
    for (const auto& u : d.at("units")) {
      if (u.at("unit") == unit) return u;
    }
  }
  return json();
}

bool unit_state_is(Site& site, const Site::Manager& m, const std::string& device, std::uint32_t unit,
                   const std::string& state) {
  json u = unit_of(site, m, device, unit);
  return u.is_object() && u.at("state") == state;
}

Bytes job_bytes(std::size_t n) {
  Bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>((i * 31 + i / 977) & 0xff);
  return out;
}

}  // namespace

TEST_CASE("a service leases a printer through the manager and prints in-band: the sim printer gets every byte") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.9");
  auto& a = site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  AsyncClient c;
  auto service = connect(c, m, "print-service");
  auto lease = allocate(c, *service, "1-1", 0);
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().describe()));
  CHECK(lease->dtu == "dtu-1");
  CHECK(lease->holder.find("print-service[") == 0);
  CHECK(lease->token.value_or("").size() == 64);
  CHECK(lease->inband.value_or("").rfind("127.0.0.1:", 0) == 0);

  // Every manager view shows the holder and the lease.
  REQUIRE(eventually([&] { return unit_state_is(site, m, "1-1", 0, "allocated"); }, kSettle));
  json unit = unit_of(site, m, "1-1", 0);
  CHECK(unit.at("lease") == lease->lease);
  CHECK(unit.at("holder") == lease->holder);

  auto channel = open_channel(c, *lease);
  REQUIRE_MESSAGE(channel.ok(), (channel.ok() ? "" : channel.error().describe()));
  CHECK((*channel)->welcome().device == "1-1");
  auto id = c.await((*channel)->device_id());
  REQUIRE(id.ok());
  CHECK(id->value_or("").find("MDL:Stylus Test Printer") != std::string::npos);

  // Small enough for dtu-simctl to show it back (its answers are lines of at most 64 KiB); the
  // multi-megabyte job runs against the emulated printer in libusb_end_to_end_test.
  const Bytes job = job_bytes(24 * 1024 + 321);
  auto sent = c.await((*channel)->stream(0x01, job));
  REQUIRE_MESSAGE(sent.ok(), (sent.ok() ? "" : sent.error().describe()));
  CHECK(*sent == job.size());
  auto captured = site.simctl(a, {"captured", "1-1", "0x01"});
  REQUIRE(captured.exit_code == 0);
  CHECK(json::parse(captured.out).at("hex") == dtu::common::to_hex(job));

  // Release: the DTU ends the lease, closes the channel saying why, the unit is free again.
  std::optional<dtu::common::LeaseEndedMsg> ended;
  service->on_lease_ended([&](const dtu::common::LeaseEndedMsg& e) { ended = e; });
  auto released = c.await(service->release("dtu-1", lease->lease, kTimeout));
  REQUIRE_MESSAGE(released.ok(), (released.ok() ? "" : released.error().describe()));
  CHECK(c.run_until([&] { return ended.has_value() && (*channel)->closed_reason().has_value(); }, kSettle));
  CHECK(ended->reason == "released");
  CHECK((*channel)->closed_reason()->reason == "released");
  CHECK(eventually([&] { return unit_state_is(site, m, "1-1", 0, "free"); }, kSettle));
}

TEST_CASE("the DTU refuses a held unit naming the holder, and a service that dies loses its leases") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.10");
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  AsyncClient c;
  auto first = connect(c, m, "scan-service");
  auto second = connect(c, m, "other-service");
  auto lease = allocate(c, *first, "1-2", 1);
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().describe()));

  auto refused = allocate(c, *second, "1-2", 1);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == make_error_code(Errc::refused));
  CHECK(refused.error().detail.find("held by scan-service[") != std::string::npos);

  // Unknown units and devices are named in the refusal.
  auto no_unit = allocate(c, *second, "1-2", 7);
  REQUIRE_FALSE(no_unit.ok());
  CHECK(no_unit.error().detail.find("no unit 7") != std::string::npos);
  auto no_device = allocate(c, *second, "9-9", 0);
  REQUIRE_FALSE(no_device.ok());
  CHECK(no_device.error().code == make_error_code(Errc::not_found));

  // The holder's connection closes: the manager releases its lease at the DTU.
  first->close();
  first.reset();
  CHECK(c.run_until([] { return false; }, 200ms) == false);  // let the close reach the manager
  REQUIRE(eventually([&] { return unit_state_is(site, m, "1-2", 1, "free"); }, kSettle));
  auto now_mine = allocate(c, *second, "1-2", 1);
  CHECK_MESSAGE(now_mine.ok(), (now_mine.ok() ? "" : now_mine.error().describe()));
}

TEST_CASE("an expired lease closes its in-band channel with the reason, and its token opens nothing") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.11");
  auto& a = site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  AsyncClient c;
  auto service = connect(c, m, "print-service");
  std::optional<dtu::common::LeaseEndedMsg> ended;
  service->on_lease_ended([&](const dtu::common::LeaseEndedMsg& e) { ended = e; });
  auto lease = allocate(c, *service, "1-1", 0, 1500ms);
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().describe()));
  auto channel = open_channel(c, *lease);
  REQUIRE_MESSAGE(channel.ok(), (channel.ok() ? "" : channel.error().describe()));

  // Not renewed: the DTU's clock ends it; the channel is told why, the service too.
  REQUIRE(c.run_until([&] { return (*channel)->closed_reason().has_value() && ended.has_value(); }, kSettle));
  CHECK((*channel)->closed_reason()->reason == "expired");
  CHECK(ended->reason == "expired");
  CHECK(ended->lease == lease->lease);
  CHECK(eventually([&] { return unit_state_is(site, m, "1-1", 0, "free"); }, kSettle));

  // The expired token: the DTU still knows it, and says the lease expired.
  auto late = open_channel(c, *lease);
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().detail.find("expired") != std::string::npos);

  // A forged token for a live lease: refused at the handshake, and the agent logs who tried.
  auto live = allocate(c, *service, "1-1", 0);
  REQUIRE(live.ok());
  LeaseGrantedMsg forged = *live;
  forged.token = dtu::common::to_hex(dtu::common::random_bytes(32));
  auto refused = open_channel(c, forged);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == make_error_code(Errc::auth_failed));
  CHECK(a.process->wait_for_log(std::regex("inband_refused .*lease=" + live->lease), kSettle));
  // The real token still works.
  auto good = open_channel(c, *live);
  CHECK_MESSAGE(good.ok(), (good.ok() ? "" : good.error().describe()));
}

TEST_CASE("dtu-unit prints stdin in-band, reads a printer's device id, and says when the unit is busy") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.14");
  auto& a = site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  const std::string unit = dtu::testing::binary_path("dtu-unit");
  const std::vector<std::string> target = {"--socket", m.socket.string(), "--dtu", "dtu-1", "--device", "1-1",
                                           "--unit", "0"};
  auto with = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {unit};
    argv.insert(argv.end(), target.begin(), target.end());
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  // stdin through a shell: the harness gives a command no input of its own.
  std::string line = "printf 'ESC-P job\\f' | '" + unit + "'";
  for (const auto& arg : target) line += " '" + arg + "'";
  auto printed = dtu::testing::run_command({"/bin/sh", "-c", line + " write"}, kSettle);
  CHECK_MESSAGE(printed.exit_code == 0, printed.err);
  auto captured = site.simctl(a, {"captured", "1-1", "0x01"});
  const std::string job = "ESC-P job\f";
  CHECK(json::parse(captured.out).at("hex") == dtu::common::to_hex(Bytes(job.begin(), job.end())));
  CHECK(eventually([&] { return unit_state_is(site, m, "1-1", 0, "free"); }, kSettle));  // released at exit

  auto id = dtu::testing::run_command(with({"device-id"}), kSettle);
  CHECK(id.exit_code == 0);
  CHECK(id.out.find("MDL:Stylus Test Printer") != std::string::npos);

  // Held by a service: dtu-unit says busy (exit 4) and names the holder.
  AsyncClient c;
  auto service = connect(c, m, "print-service");
  REQUIRE(allocate(c, *service, "1-1", 0).ok());
  auto busy = dtu::testing::run_command(with({"device-id"}), kSettle);
  CHECK(busy.exit_code == 4);
  CHECK(busy.err.find("held by print-service[") != std::string::npos);
  auto usage = dtu::testing::run_command({unit, "write"}, kSettle);
  CHECK(usage.exit_code == 2);
}
