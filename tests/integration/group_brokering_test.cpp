// Group-wide brokering with real processes on 127.0.0.32–.37: a service at m3 finds, allocates
// and prints on a DTU owned by m1; a finder at m2 sees the allocation and the release; several
// services with one finder cost one registration at the peers; the owner applies its policy to
// the service's uid, which travels with the request.
#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::client::Client;
using dtu::client::ClientOptions;
using dtu::client::FinderEvents;
using dtu::common::DeviceRecord;
using dtu::common::Errc;
using dtu::common::SystemClock;
using dtu::testing::AsyncClient;
using dtu::testing::connect_client;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const json kStylusFinder = {{"function", "printer"}, {"product", "Stylus*"}};

// The last record a finder reported for each device (matched / changed), erased on gone.
struct Watch {
  std::map<std::string, DeviceRecord> records;
  bool synced = false;
  FinderEvents events() {
    FinderEvents e;
    e.matched = [this](const DeviceRecord& d, const std::vector<std::uint32_t>&) { records[d.device] = d; };
    e.changed = [this](const DeviceRecord& d, const std::vector<std::uint32_t>&) { records[d.device] = d; };
    e.gone = [this](const std::string&, const std::string& device, const std::string&) { records.erase(device); };
    e.synced = [this] { synced = true; };
    return e;
  }
  std::string unit_state(const std::string& device) const {
    auto it = records.find(device);
    if (it == records.end() || it->second.units.empty()) return "";
    return dtu::common::unit_state_name(it->second.units[0].state);
  }
};

}  // namespace

TEST_CASE("a service at m3 finds, allocates and prints on a DTU at m1: a finder at m2 sees the allocation and the release") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.32"}, {"m2", "127.0.0.33"}, {"m3", "127.0.0.34"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  auto& m3 = *managers[2];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  auto& agent = site.start_agent("dtu-a", {m1.address});
  REQUIRE(eventually([&] { return site.devices(m1).size() == 2; }, kSettle));

  // The group's devices, from any member, each with its owner; m3 holds none of its own.
  CHECK(site.devices(m3).empty());
  auto group_devices = site.devmgrctl(m3, {"devices", "--group", "--json"});
  REQUIRE(group_devices.exit_code == 0);
  json listed = json::parse(group_devices.out);
  CHECK(listed.size() == 2);
  for (const auto& d : listed) CHECK(d.at("owner") == "m1");

  AsyncClient c;
  auto at_m2 = connect_client(c, m2, "watcher");
  auto at_m3 = connect_client(c, m3, "printing-service");
  Watch watch_m2, watch_m3;
  REQUIRE(c.await(at_m2->add_finder(kStylusFinder, watch_m2.events())).ok());
  REQUIRE(c.await(at_m3->add_finder(kStylusFinder, watch_m3.events())).ok());
  REQUIRE(c.run_until([&] { return watch_m2.synced && watch_m3.synced; }, kSettle));
  REQUIRE(watch_m3.records.contains("1-1"));
  CHECK(watch_m3.records.at("1-1").owner == "m1");
  CHECK(watch_m3.records.size() == 1);
  CHECK(watch_m2.unit_state("1-1") == "free");

  auto lease = c.await(at_m3->allocate("dtu-a", "1-1", 0, {}));
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().describe()));
  // The DTU's unit update reaches the finder at m2, naming the holder at m3.
  CHECK(c.run_until([&] { return watch_m2.unit_state("1-1") == "allocated"; }, kSettle));
  CHECK(watch_m2.records.at("1-1").units[0].holder.value_or("").find("printing-service") != std::string::npos);
  CHECK(watch_m2.records.at("1-1").units[0].holder.value_or("").find("@m3") != std::string::npos);
  // m1 brokered it for m3's service, under the service's own uid.
  auto leases = site.devmgrctl(m1, {"leases", "--json"});
  REQUIRE(leases.exit_code == 0);
  json at_owner = json::parse(leases.out);
  REQUIRE(at_owner.size() == 1);
  CHECK(at_owner[0].at("lease") == lease->id);
  CHECK(at_owner[0].at("uid") == ::getuid());

  auto released = c.await(at_m3->release(lease->id));
  REQUIRE_MESSAGE(released.ok(), (released.ok() ? "" : released.error().describe()));
  CHECK(c.run_until([&] { return watch_m2.unit_state("1-1") == "free"; }, kSettle));

  // The whole path with the sample service at m3: finder, allocation at m1, print in-band.
  const auto page_file = site.dir() / "page.txt";
  const std::string page = "group page\r\n\f";
  std::ofstream(page_file, std::ios::binary) << page;
  auto r = dtu::testing::run_command({dtu::testing::binary_path("dtu-sample-service"), "--socket", m3.socket.string(),
                                      "--finder", kStylusFinder.dump(), "--page", page_file.string()},
                                     kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK_MESSAGE(r.out.find("printed " + std::to_string(page.size()) + " bytes") != std::string::npos, r.out);
  auto captured = site.simctl(agent, {"captured", "1-1", "0x01"});
  REQUIRE(captured.exit_code == 0);
  CHECK(json::parse(captured.out).at("hex") == dtu::common::to_hex(dtu::common::Bytes(page.begin(), page.end())));
}

TEST_CASE("two services with the same finder cost one registration at each peer, and both are answered") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.35"}, {"m2", "127.0.0.36"}, {"m3", "127.0.0.37"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  auto& m3 = *managers[2];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  site.start_agent("dtu-a", {m1.address});
  REQUIRE(eventually([&] { return site.devices(m1).size() == 2; }, kSettle));

  AsyncClient c;
  auto first = connect_client(c, m3, "first");
  auto second = connect_client(c, m3, "second");
  Watch one, two;
  REQUIRE(c.await(first->add_finder(kStylusFinder, one.events())).ok());
  REQUIRE(c.await(second->add_finder(kStylusFinder, two.events())).ok());
  REQUIRE(c.run_until([&] { return one.synced && two.synced; }, kSettle));
  CHECK(one.records.contains("1-1"));
  CHECK(two.records.contains("1-1"));

  for (auto* peer : {&m1, &m2}) {
    json member = site.member(*peer, "m3");
    CHECK_MESSAGE(member.at("finders_held") == 1, peer->id << ": " << member.dump());
  }
  CHECK(site.member(m3, "m1").at("finders_sent") == 1);

  // A unit change reaches both through the one registration.
  auto lease = c.await(first->allocate("dtu-a", "1-1", 0, {}));
  REQUIRE(lease.ok());
  CHECK(c.run_until([&] { return one.unit_state("1-1") == "allocated" && two.unit_state("1-1") == "allocated"; },
                    kSettle));
  // The second one is refused while the first holds it, and the reason names the holder.
  auto refused = c.await(second->allocate("dtu-a", "1-1", 0, {}));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == make_error_code(Errc::refused));
  CHECK_MESSAGE(refused.error().detail.find("first") != std::string::npos, refused.error().detail);

  // The last one leaving takes the registration away at the peers.
  CHECK(c.await(first->remove_finder(1)).ok());
  CHECK(site.member(m1, "m3").at("finders_held") == 1);
  CHECK(c.await(second->remove_finder(1)).ok());
  CHECK(eventually([&] { return site.member(m1, "m3").at("finders_held") == 0; }, kSettle));
}

TEST_CASE("the owning manager applies its policy to the uid of a service at another manager") {
  Site site;
  const auto policy = site.dir() / "policy.json";
  std::ofstream(policy) << json{{"rules", {{{"name", "no-printing-for-this-uid"},
                                            {"match", {{"function", "printer"}, {"uid", ::getuid()}}},
                                            {"action", "deny"},
                                            {"reason", "printers are not for this uid"}}}}}
                               .dump();
  // Only m1's policy denies; the service asks at m2, whose policy would allow it.
  auto managers = site.start_group({{"m1", "127.0.0.38"}, {"m2", "127.0.0.39"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  REQUIRE(site.wait_peers_up(m1, 1));
  REQUIRE(site.wait_peers_up(m2, 1));
  m1.argv.insert(m1.argv.end(), {"--policy", policy.string()});
  site.restart_manager(m1);  // now with the policy
  REQUIRE(site.wait_peers_up(m1, 1));
  site.start_agent("dtu-a", {m1.address});
  REQUIRE(eventually([&] { return site.devices(m1).size() == 2; }, kSettle));
  AsyncClient c;
  auto client = connect_client(c, m2, "denied-service");
  auto lease = c.await(client->allocate("dtu-a", "1-1", 0, {}));
  REQUIRE_FALSE(lease.ok());
  CHECK(lease.error().code == make_error_code(Errc::denied));
  CHECK_MESSAGE(lease.error().detail.find("printers are not for this uid") != std::string::npos, lease.error().detail);
  CHECK(m1.process->wait_for_log(std::regex(" allocation_denied .*rule=no-printing-for-this-uid"), kSettle));
}
