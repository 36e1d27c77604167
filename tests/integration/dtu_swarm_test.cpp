// dtu-swarm (tests/tools/dtu_swarm.cpp) against a real devmgr on 127.0.0.57, so the tool the scale
// benchmark stands on keeps working: 20 simulated DTUs, each with its own key and TLS link, are
// all listed by the manager with 8 devices each, and stay connected through heartbeats.
#include <doctest/doctest.h>

#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "site.hpp"

using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* kManagerIp = "127.0.0.57";

// dtu-swarm is built beside the other test programs, in <build>/tests/tools.
std::string swarm_path() {
  const std::filesystem::path devmgr = dtu::testing::binary_path("devmgr");
  const auto path = devmgr.parent_path().parent_path() / "tests" / "tools" / "dtu-swarm";
  REQUIRE_MESSAGE(::access(path.c_str(), X_OK) == 0, path.string() << " is not built");
  return path.string();
}

// Devices per DTU as `devmgrctl devices --json` lists them.
std::map<std::string, int> devices_per_dtu(Site& site, const Site::Manager& m) {
  std::map<std::string, int> count;
  for (const auto& d : site.devices(m)) ++count[d.at("dtu").get<std::string>()];
  return count;
}

}  // namespace

TEST_CASE("dtu-swarm connects 20 DTUs with 8 devices each, and the manager lists them all") {
  Site site;
  auto& m = site.start_manager("m1", kManagerIp);
  Process swarm(
      {swarm_path(), "--manager", m.address, "--site-key", site.site_key().string(), "--count", "20",
       "--devices", "8", "--prefix", "swarm-", "--connect-concurrency", "4", "--threads", "2"},
      site.dir().path());
  REQUIRE_MESSAGE(eventually([&] { return swarm.out().find("all 20 DTUs welcomed") != std::string::npos; },
                             kSettle),
                  "dtu-swarm said:\n"
                      << swarm.out() << swarm.log());

  std::map<std::string, int> expected;
  for (int i = 1; i <= 20; ++i) expected[(i < 10 ? "swarm-0" : "swarm-") + std::to_string(i)] = 8;
  CHECK(devices_per_dtu(site, m) == expected);
  auto dtus = site.devmgrctl(m, {"dtus", "--json"});
  REQUIRE_MESSAGE(dtus.exit_code == 0, dtus.err);
  CHECK(json::parse(dtus.out).size() == 20);

  // Past three heartbeat timeouts the links are still up: the swarm answers heartbeats.
  const auto silent_for = site.heartbeat_timeout() * 3;
  CHECK_FALSE(eventually(
      [&] {
        return m.process->log().find("heartbeat_timeout") != std::string::npos ||
               swarm.log().find("manager_lost") != std::string::npos;
      },
      std::chrono::duration_cast<std::chrono::milliseconds>(silent_for)));
  CHECK(devices_per_dtu(site, m) == expected);

  swarm.signal(SIGTERM);
  CHECK(swarm.wait_exit(kSettle) == 0);
  CHECK(swarm.out().find("dtu-swarm: stopped") != std::string::npos);
  // The manager sees them go.
  CHECK(eventually([&] { return site.devices(m).empty(); }, kSettle));
}

TEST_CASE("dtu-swarm with the wrong site key is refused by the manager and says why") {
  Site site;
  auto& m = site.start_manager("m1", kManagerIp);
  const auto wrong_key = site.dir() / "wrong-site.key";
  auto made = site.devmgrctl(m, {"keygen", "--out", wrong_key.string()});
  REQUIRE_MESSAGE(made.exit_code == 0, made.err);
  Process swarm({swarm_path(), "--manager", m.address, "--site-key", wrong_key.string(), "--count", "2"},
                site.dir().path());
  CHECK(swarm.wait_for_log(std::regex("handshake_failed dtu=swarm-1"), kSettle));
  CHECK(swarm.out().find("all 2 DTUs welcomed") == std::string::npos);
  CHECK(site.devices(m).empty());
}

TEST_CASE("dtu-swarm rejects a bad command line with exit 2 and names the option") {
  Site site;
  auto r = dtu::testing::run_command({swarm_path(), "--manager", "127.0.0.57", "--site-key", "x"}, kSettle);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--manager 127.0.0.57") != std::string::npos);
  r = dtu::testing::run_command({swarm_path(), "--manager", "127.0.0.57:1", "--site-key", "/nonexistent/key"},
                                kSettle);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("--site-key") != std::string::npos);
}
