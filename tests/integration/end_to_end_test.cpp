// The first end-to-end path: a real devmgr and a real dtu-agent (simulated USB backend) on
// loopback, read through devmgrctl exactly as an operator would.
#include <signal.h>

#include <doctest/doctest.h>

#include <set>

#include "site.hpp"

using dtu::testing::CommandResult;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;

namespace {

std::set<std::string> ports(const json& devices) {
  std::set<std::string> out;
  for (const auto& d : devices) out.insert(d.at("device").get<std::string>());
  return out;
}

const json* find_device(const json& devices, const std::string& port) {
  for (const auto& d : devices) {
    if (d.at("device") == port) return &d;
  }
  return nullptr;
}

// Heartbeat timeout of the test managers plus slack for a loaded machine.
constexpr std::chrono::milliseconds kNoticeDeadline{dtu::testing::kTestHeartbeatMs * dtu::testing::kTestHeartbeatMisses * 5};

}  // namespace

TEST_CASE("devmgrctl devices shows exactly the simulated devices and their units") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.2");
  auto& a = site.start_agent("dtu-1", {m.address});
  json devices;
  REQUIRE(eventually([&] { return (devices = site.devices(m)).size() == 2; }, kSettle));

  CHECK(ports(devices) == std::set<std::string>{"1-1", "1-2"});
  const json* printer = find_device(devices, "1-1");
  REQUIRE(printer != nullptr);
  CHECK(printer->at("dtu") == "dtu-1");
  CHECK(printer->at("owner") == "m1");
  CHECK(printer->at("bus") == "usb");
  CHECK(printer->at("vid") == "04b8");
  CHECK(printer->at("pid") == "0005");
  CHECK(printer->at("manufacturer") == "EPSON");
  CHECK(printer->at("product") == "Stylus Test Printer");
  CHECK(printer->at("serial") == "PRN0001");
  REQUIRE(printer->at("units").size() == 1);
  CHECK(printer->at("units")[0].at("unit") == 0);
  CHECK(printer->at("units")[0].at("function") == "printer");
  CHECK(printer->at("units")[0].at("class") == 7);
  CHECK(printer->at("units")[0].at("state") == "free");
  CHECK(printer->at("stamp").at("seq").get<std::uint64_t>() > 0);

  const json* mfd = find_device(devices, "1-2");
  REQUIRE(mfd != nullptr);
  CHECK(mfd->at("pid") == "08a1");
  CHECK(mfd->at("serial") == "MFP0042");
  REQUIRE(mfd->at("units").size() == 3);
  CHECK(mfd->at("units")[0].at("function") == "printer");
  CHECK(mfd->at("units")[1].at("function") == "scanner");  // vendor class ff/ff/ff, Epson quirk
  CHECK(mfd->at("units")[1].at("class") == 255);
  CHECK(mfd->at("units")[2].at("function") == "storage");
  for (const auto& u : mfd->at("units")) CHECK(u.at("state") == "free");

  // The table for people carries the same devices.
  CommandResult table = site.devmgrctl(m, {"devices"});
  REQUIRE(table.exit_code == 0);
  CHECK(table.out.find("DTU") == 0);
  CHECK(table.out.find("Stylus Test Printer") != std::string::npos);
  CHECK(table.out.find("0:printer 1:scanner 2:storage") != std::string::npos);
  (void)a;
}

TEST_CASE("unplugging and plugging a simulated device updates the manager's list") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.3");
  auto& a = site.start_agent("dtu-7", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  CommandResult unplug = site.simctl(a, {"unplug", "1-2"});
  REQUIRE_MESSAGE(unplug.exit_code == 0, unplug.err);
  CHECK(eventually([&] { return ports(site.devices(m)) == std::set<std::string>{"1-1"}; }, kSettle));
  CHECK(m.process->wait_for_log(std::regex("device_detached dtu=dtu-7 device=1-2"), kSettle));

  CommandResult plug = site.simctl(a, {"plug", "1-3"});
  REQUIRE_MESSAGE(plug.exit_code == 0, plug.err);
  json devices;
  REQUIRE(eventually([&] { return ports(devices = site.devices(m)) == std::set<std::string>{"1-1", "1-3"}; }, kSettle));
  const json* reader = find_device(devices, "1-3");
  REQUIRE(reader != nullptr);
  CHECK(reader->at("units")[0].at("function") == "smartcard");
}

TEST_CASE("the manager notices a silent DTU within the heartbeat timeout and the DTU returns when it wakes") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.4");
  auto& a = site.start_agent("dtu-2", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  // SIGSTOP: the TCP connection stays up, only heartbeats stop — the case TCP cannot see.
  const auto stopped_at = std::chrono::steady_clock::now();
  a.process->signal(SIGSTOP);
  REQUIRE(m.process->wait_for_log(std::regex("dtu_lost dtu=dtu-2 reason=.*silent"), kNoticeDeadline + kSettle));
  const auto noticed_after = std::chrono::steady_clock::now() - stopped_at;
  MESSAGE("silent DTU noticed after " << std::chrono::duration_cast<std::chrono::milliseconds>(noticed_after).count()
                                      << " ms (heartbeat timeout " << dtu::testing::kTestHeartbeatMs * dtu::testing::kTestHeartbeatMisses << " ms)");
  CHECK(m.process->wait_for_log(std::regex("peer_silent"), kSettle));
  CHECK(site.devices(m).empty());

  // Woken up, the agent finds its link closed, reconnects and reports its devices again.
  a.process->signal(SIGCONT);
  CHECK(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
}

TEST_CASE("the manager notices a killed DTU and drops its devices") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.5");
  auto& a = site.start_agent("dtu-3", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  a.process->signal(SIGKILL);
  REQUIRE(m.process->wait_for_log(std::regex("dtu_lost dtu=dtu-3 reason="), kNoticeDeadline + kSettle));
  CHECK(site.devices(m).empty());
}

TEST_CASE("a DTU with a key for another id, or a wrong key, is refused and the manager keeps serving") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.6");
  auto& good = site.start_agent("dtu-good", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  // dtu-evil presents dtu-good's derived key under its own id: the manager derives dtu-evil's
  // key, the PSK binder fails, and nothing of dtu-evil is ever accepted.
  site.dtu_key("dtu-good");
  auto& evil = site.start_agent("dtu-evil", {m.address}, {"--key", site.dtu_key("dtu-good").string()});
  CHECK(m.process->wait_for_log(std::regex("handshake_failed role=dtu reason="), kSettle));

  for (const auto& d : site.devices(m)) CHECK(d.at("dtu") == "dtu-good");
  CHECK(m.process->log().find("dtu_connected dtu=dtu-evil") == std::string::npos);
  (void)good;
  (void)evil;
}
