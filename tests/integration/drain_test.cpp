// Drain with real processes on 127.0.0.70–.73: `devmgrctl drain` on a manager returns once its
// DTU is served by another manager, the drained manager refuses DTUs meanwhile, and undrain puts
// it back in rotation; a drain whose DTU cannot leave in time exits 1 naming how many stayed.
#include <doctest/doctest.h>

#include <csignal>
#include <regex>
#include <string>
#include <vector>

#include "site.hpp"

using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// Whether `m` lists devices and every one of them is on `dtu`'s DTU (so that DTU is connected there).
bool serves(Site& site, const Site::Manager& m, const std::string& dtu) {
  const json devices = site.devices(m);
  if (devices.empty()) return false;
  for (const auto& d : devices) {
    if (d.at("dtu") == dtu) return true;
  }
  return false;
}

bool serves_none(Site& site, const Site::Manager& m, const std::string& dtu) {
  for (const auto& d : site.devices(m)) {
    if (d.at("dtu") == dtu) return false;
  }
  return true;
}

}  // namespace

TEST_CASE(
    "devmgrctl drain returns once the DTU is on another manager, and undrain puts the manager back in "
    "rotation") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.70"}, {"m2", "127.0.0.71"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 1));

  // The agent prefers m1 (--pick first, its list in order).
  auto& a = site.start_agent("dtu-a", {m1.address, m2.address});
  REQUIRE(eventually([&] { return serves(site, m1, "dtu-a"); }, kSettle));

  // drain answers once m1 holds no DTU; by then the agent has moved to m2.
  auto drained = site.devmgrctl(m1, {"drain", "--wait-ms", "10000", "--json"});
  REQUIRE_MESSAGE(drained.exit_code == 0, drained.err);
  const json status = json::parse(drained.out);
  CHECK(status.at("draining") == true);
  CHECK(status.at("dtus") == 0);
  CHECK(m1.process->wait_for_log(std::regex("drain_started"), kSettle));
  CHECK(m1.process->wait_for_log(std::regex("drain_done"), kSettle));
  CHECK(a.process->wait_for_log(std::regex("manager_move"), kSettle));
  REQUIRE(eventually([&] { return serves(site, m2, "dtu-a"); }, kSettle));
  CHECK(serves_none(site, m1, "dtu-a"));

  // `group` says m1 drains.
  const json group = site.group(m1);
  CHECK(group.at("draining") == true);
  CHECK(group.contains("universal_offset_ms"));
  auto table = site.devmgrctl(m1, {"group"});
  REQUIRE(table.exit_code == 0);
  CHECK(table.out.find("draining") != std::string::npos);

  // While m1 drains it refuses a new DTU, which goes on to m2.
  auto& b = site.start_agent("dtu-b", {m1.address, m2.address});
  CHECK(m1.process->wait_for_log(std::regex("dtu_refused_draining.*dtu-b"), kSettle));
  CHECK(eventually([&] { return serves(site, m2, "dtu-b"); }, kSettle));
  CHECK(serves_none(site, m1, "dtu-b"));
  (void)b;

  // undrain: m1 takes DTUs again; a new agent that prefers it connects to it.
  auto undrained = site.devmgrctl(m1, {"undrain", "--json"});
  REQUIRE_MESSAGE(undrained.exit_code == 0, undrained.err);
  CHECK(json::parse(undrained.out).value("draining", false) == false);
  CHECK(m1.process->wait_for_log(std::regex("undrained"), kSettle));
  CHECK(site.group(m1).value("draining", false) == false);
  site.start_agent("dtu-c", {m1.address, m2.address});
  CHECK(eventually([&] { return serves(site, m1, "dtu-c"); }, kSettle));
}

TEST_CASE("devmgrctl drain exits 1 naming the DTUs still held when they cannot leave within its wait") {
  Site site;
  // Heartbeats far longer than the test's drain wait: the stopped agent's link stays up meanwhile.
  site.set_heartbeat(2000, 10);
  auto& m = site.start_manager("m1", "127.0.0.72");
  auto& a = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return serves(site, m, "dtu-a"); }, kSettle));

  a.process->signal(SIGSTOP);  // it cannot act on dtu_move
  auto timed_out = site.devmgrctl(m, {"drain", "--wait-ms", "300"});
  a.process->signal(SIGCONT);
  CHECK(timed_out.exit_code == 1);
  CHECK(timed_out.err.find("still holds 1 DTUs") != std::string::npos);
  CHECK(site.group(m).at("draining") == true);

  // Once it runs again it leaves (it was told to); a second drain then succeeds.
  auto drained = site.devmgrctl(m, {"drain", "--wait-ms", "10000"});
  CHECK_MESSAGE(drained.exit_code == 0, drained.err);
  CHECK(drained.out.find("drained") != std::string::npos);
}

TEST_CASE("devmgrctl drain and undrain exit 3 when the manager is unreachable") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.73");
  site.kill_manager(m);
  CHECK(site.devmgrctl(m, {"drain"}).exit_code == 3);
  CHECK(site.devmgrctl(m, {"undrain"}).exit_code == 3);
}
