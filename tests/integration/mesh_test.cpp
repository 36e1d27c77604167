// The group mesh with real devmgr processes on 127.0.0.21–.31: a full mesh with one link per
// pair (also when every manager starts at the same instant), a silent (SIGSTOPped) manager
// declared dead after the heartbeat misses with its devices orphaned at the others, and a
// restarted one rejoining with a new incarnation.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <map>
#include <thread>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::client::Client;
using dtu::client::ClientOptions;
using dtu::client::FinderEvents;
using dtu::common::DeviceRecord;
using dtu::common::SystemClock;
using dtu::testing::AsyncClient;
using dtu::testing::connect_client;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// How many lines of `log` report event `event` about peer `peer`.
std::size_t count_events(const std::string& log, const std::string& event, const std::string& peer) {
  const std::regex line(" " + event + " .*peer=" + peer + "( |$)");
  std::size_t n = 0;
  std::size_t start = 0;
  while (start < log.size()) {
    std::size_t end = log.find('\n', start);
    if (end == std::string::npos) end = log.size();
    if (std::regex_search(log.substr(start, end - start), line)) ++n;
    start = end + 1;
  }
  return n;
}

// Every manager sees every other one up, each over exactly one link: one peer_up per peer
// and no peer_down in its log.
void check_full_mesh(Site& site, const std::vector<Site::Manager*>& managers) {
  for (auto* m : managers) {
    REQUIRE_MESSAGE(site.wait_peers_up(*m, managers.size() - 1), m->id << " sees " << site.group(*m).dump());
  }
  // Three heartbeat intervals more: a second link, or a replaced one, would show by now.
  std::this_thread::sleep_for(3 * std::chrono::milliseconds(dtu::testing::kTestHeartbeatMs));
  std::map<std::string, std::uint64_t> incarnation;
  for (auto* m : managers) incarnation[m->id] = site.member(*m, m->id).at("incarnation").get<std::uint64_t>();
  for (auto* m : managers) {
    const std::string log = m->process->log();
    for (auto* other : managers) {
      if (other == m) continue;
      CHECK_MESSAGE(count_events(log, "peer_up", other->id) == 1, m->id << " about " << other->id << ":\n" << log);
      CHECK_MESSAGE(count_events(log, "peer_down", other->id) == 0, m->id << " about " << other->id << ":\n" << log);
      json member = site.member(*m, other->id);
      CHECK(member.at("state") == "up");
      CHECK(member.at("incarnation").get<std::uint64_t>() == incarnation[other->id]);
    }
  }
}

// What a service at one manager has been told about one remote device.
struct Seen {
  std::optional<DeviceRecord> record;  // the last matched / changed record; reset by gone
  std::string gone_reason;
  int matched = 0;
};

}  // namespace

TEST_CASE("three managers started at the same instant form a full mesh with one link per pair") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.21"}, {"m2", "127.0.0.22"}, {"m3", "127.0.0.23"}});
  check_full_mesh(site, managers);
  // The group view names itself first and the peers' mesh addresses from the group list.
  json group = site.group(*managers[0]);
  CHECK(group.at("manager") == "m1");
  REQUIRE(group.at("members").size() == 3);
  CHECK(group.at("members")[0].at("self") == true);
  CHECK(site.member(*managers[0], "m3").at("address") == "127.0.0.23:4720");
}

TEST_CASE("five managers started at the same instant form a full mesh with one link per pair") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.24"},
                                    {"m2", "127.0.0.25"},
                                    {"m3", "127.0.0.26"},
                                    {"m4", "127.0.0.27"},
                                    {"m5", "127.0.0.28"}});
  check_full_mesh(site, managers);
}

TEST_CASE("a silent manager is declared dead, its devices orphaned, and it rejoins: a restarted one with a new incarnation") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.29"}, {"m2", "127.0.0.30"}, {"m3", "127.0.0.31"}},
                                   {"--orphan-grace-ms", "3000"});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  auto& m3 = *managers[2];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  site.start_agent("dtu-b", {m2.address});
  REQUIRE(eventually([&] { return site.devices(m2).size() == 2; }, kSettle));

  AsyncClient c;
  auto client = connect_client(c, m3, "mesh-test");
  std::map<std::string, Seen> seen;  // by device
  bool synced = false;
  FinderEvents events;
  events.matched = [&](const DeviceRecord& d, const std::vector<std::uint32_t>&) {
    seen[d.device].record = d;
    seen[d.device].gone_reason.clear();
    ++seen[d.device].matched;
  };
  events.changed = [&](const DeviceRecord& d, const std::vector<std::uint32_t>&) { seen[d.device].record = d; };
  events.gone = [&](const std::string&, const std::string& device, const std::string& reason) {
    seen[device].record.reset();
    seen[device].gone_reason = reason;
  };
  events.synced = [&] { synced = true; };
  auto added = c.await(client->add_finder(json{{"function", "printer"}, {"product", "Stylus*"}}, events));
  REQUIRE(added.ok());
  REQUIRE(c.run_until([&] { return synced && seen["1-1"].record.has_value(); }, kSettle));
  CHECK(seen["1-1"].record->owner == "m2");
  CHECK_FALSE(seen["1-1"].record->orphaned);
  const auto first_incarnation = site.member(m1, "m2").at("incarnation").get<std::uint64_t>();

  // SIGSTOP: m2 still holds its sockets but says nothing. After the misses the others close
  // the link and m3 tells its service the printer is orphaned (not gone: the DTU may re-home).
  m2.process->signal(SIGSTOP);
  CHECK(m1.process->wait_for_log(std::regex(" peer_down .*peer=m2"), kSettle));
  CHECK(m3.process->wait_for_log(std::regex(" peer_down .*peer=m2"), kSettle));
  CHECK(c.run_until([&] { return seen["1-1"].record && seen["1-1"].record->orphaned; }, kSettle));
  CHECK(site.member(m1, "m2").at("state") != "up");

  // SIGCONT within the grace window: m2 rejoins (same incarnation) and the match is whole again.
  m2.process->signal(SIGCONT);
  REQUIRE(site.wait_peers_up(m1, 2));
  REQUIRE(site.wait_peers_up(m3, 2));
  CHECK(c.run_until([&] { return seen["1-1"].record && !seen["1-1"].record->orphaned; }, kSettle));
  CHECK(site.member(m1, "m2").at("incarnation").get<std::uint64_t>() == first_incarnation);

  // Silent past the grace window: the printer is gone for the service (owner_lost).
  m2.process->signal(SIGSTOP);
  CHECK(c.run_until([&] { return seen["1-1"].gone_reason == "owner_lost"; }, kSettle));
  CHECK_FALSE(seen["1-1"].record.has_value());

  // A crash and a restart: a new incarnation everywhere, the DTU back at m2, nothing orphaned.
  site.restart_manager(m2);
  REQUIRE(site.wait_peers_up(m1, 2));
  REQUIRE(site.wait_peers_up(m3, 2));
  const auto second_incarnation = site.member(m1, "m2").at("incarnation").get<std::uint64_t>();
  CHECK(second_incarnation != first_incarnation);
  CHECK(site.member(m3, "m2").at("incarnation").get<std::uint64_t>() == second_incarnation);
  CHECK(c.run_until([&] { return seen["1-1"].record && !seen["1-1"].record->orphaned; }, kSettle));
  REQUIRE(eventually(
      [&] {
        auto r = site.devmgrctl(m3, {"finders", "--json"});
        if (r.exit_code != 0) return false;
        json finders = json::parse(r.out);
        if (finders.size() != 1) return false;
        for (const auto& match : finders[0].at("matches")) {
          if (match.value("orphaned", false) || match.at("owner") != "m2") return false;
        }
        return finders[0].at("matches").size() == 1;
      },
      kSettle));
}
