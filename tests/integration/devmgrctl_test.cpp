// devmgrctl against a real devmgr and a dtu-agent on the simulated backend: what its listings
// say (--json) after known actions, its lease verbs (allocate --keep / --hold, release), the
// session verbs, the policy and its reload, and the exit codes a script relies on.
// Loopback address: 127.0.0.18 (every test case starts its own manager on a port of its own).
#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "dtu/common/clock.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/services/manager_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::common::AckMsg;
using dtu::common::Frame;
using dtu::common::MessageType;
using dtu::common::SystemClock;
using dtu::services::ManagerClient;
using dtu::testing::AsyncClient;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);
const char* const kIp = "127.0.0.18";

// `devmgrctl ARGS --json`, parsed. REQUIREs exit code 0.
json ctl_json(Site& site, const Site::Manager& m, std::vector<std::string> args) {
  args.push_back("--json");
  auto r = site.devmgrctl(m, args);
  REQUIRE_MESSAGE(r.exit_code == 0,
                  "devmgrctl " << args.front() << " failed (" << r.exit_code << "): " << r.err);
  return json::parse(r.out);
}

// The listing with the fields that tick with time (expires_in_ms, attached_ms_ago) removed,
// after checking they are plausible.
json without_clock(json list, const char* field, std::uint32_t at_most) {
  for (auto& entry : list) {
    REQUIRE(entry.contains(field));
    CHECK(entry.at(field).get<std::uint32_t>() <= at_most);
    entry.erase(field);
  }
  return list;
}

// Each finder's matches in (dtu, device) order, so comparisons do not depend on listing order.
json sorted_matches(json finders) {
  for (auto& f : finders) {
    auto& matches = f.at("matches");
    std::sort(matches.begin(), matches.end(), [](const json& a, const json& b) {
      return std::tie(a.at("dtu"), a.at("device")) < std::tie(b.at("dtu"), b.at("device"));
    });
  }
  return finders;
}

bool unit_state_is(Site& site, const Site::Manager& m, const std::string& device, std::uint32_t unit,
                   const std::string& state) {
  for (const auto& d : site.devices(m)) {
    if (d.at("device") != device) continue;
    for (const auto& u : d.at("units")) {
      if (u.at("unit") == unit) return u.at("state") == state;
    }
  }
  return false;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

// A service that registered one finder and records what the manager tells it.
struct FinderService {
  std::unique_ptr<ManagerClient> client;
  std::vector<MessageType> events;
};

FinderService register_finder(AsyncClient& c, const Site::Manager& m, std::uint64_t id, const json& finder) {
  FinderService s;
  auto connected =
      c.await(ManagerClient::connect(m.socket.string(), "finder-test", SystemClock::instance(), kTimeout));
  REQUIRE_MESSAGE(connected.ok(), (connected.ok() ? "" : connected.error().describe()));
  s.client = std::move(connected.value());
  auto* events = &s.events;
  s.client->on_event([events](const Frame& frame) { events->push_back(frame.type); });
  dtu::common::RegisterFinderMsg request;
  request.finder_id = id;
  request.finder = finder.get<dtu::common::Finder>();
  auto registered = c.await(s.client->call<AckMsg>(request, kTimeout));
  REQUIRE_MESSAGE(registered.ok(), (registered.ok() ? "" : registered.error().describe()));
  return s;
}

}  // namespace

TEST_CASE("devmgrctl lists finders, leases and sessions as JSON after known actions, and ends them") {
  Site site;
  auto& m = site.start_manager("m1", kIp);
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  // A fresh manager: nothing registered, leased or attached; the built-in policy.
  CHECK(ctl_json(site, m, {"finders"}) == json::array());
  CHECK(ctl_json(site, m, {"leases"}) == json::array());
  CHECK(ctl_json(site, m, {"sessions"}) == json::array());
  CHECK(ctl_json(site, m, {"policy"}).at("source") == "built-in");

  // A session at dtu-1, and a service with a printer finder scoped to it.
  auto attached =
      site.devmgrctl(m, {"session", "attach", "--session", "s1", "--user", "alice", "--dtu", "dtu-1"});
  CHECK_MESSAGE(attached.exit_code == 0, attached.err);
  CHECK(attached.out == "session s1 of alice is at DTU dtu-1\n");
  CHECK(without_clock(ctl_json(site, m, {"sessions"}), "attached_ms_ago", 60'000) ==
        json::parse(R"([{"session": "s1", "user": "alice", "dtu": "dtu-1"}])"));

  AsyncClient c;
  const json finder = {{"function", "printer"}, {"scope", "session"}, {"session", "s1"}};
  auto service = register_finder(c, m, 5, finder);
  REQUIRE(c.run_until(
      [&] {
        return std::count(service.events.begin(), service.events.end(), MessageType::finder_synced) == 1;
      },
      kSettle));
  json expected_finder = {{"client", "finder-test"},
                          {"pid", ::getpid()},
                          {"uid", ::getuid()},
                          {"finder_id", 5},
                          {"finder", finder},
                          {"matches", json::parse(R"([{"dtu": "dtu-1", "device": "1-1", "units": [0], "owner": "m1"},
                                                       {"dtu": "dtu-1", "device": "1-2", "units": [0], "owner": "m1"}])")}};
  CHECK(sorted_matches(ctl_json(site, m, {"finders"})) == json::array({expected_finder}));
  auto table = site.devmgrctl(m, {"finders"});
  CHECK(table.out.find("finder-test[" + std::to_string(::getpid()) + "]") != std::string::npos);
  CHECK(table.out.find("function=printer scope=session:s1  2") != std::string::npos);

  // allocate --keep: the lease outlives the devmgrctl that took it.
  auto kept =
      site.devmgrctl(m, {"allocate", "--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "--keep", "--json"});
  REQUIRE_MESSAGE(kept.exit_code == 0, kept.err);
  const json grant = json::parse(kept.out);
  CHECK(grant.at("dtu") == "dtu-1");
  CHECK(grant.at("device") == "1-1");
  CHECK(grant.at("unit") == 0);
  CHECK(std::regex_match(grant.at("holder").get<std::string>(), std::regex(R"(devmgrctl\[[0-9]+\]@m1)")));
  CHECK(grant.at("expires_in_ms").get<std::uint32_t>() <= 60'000);
  CHECK(grant.at("token").get<std::string>().size() == 64);
  const std::string lease = grant.at("lease");
  const json expected_lease = {
      {"lease", lease},    {"dtu", "dtu-1"}, {"device", "1-1"}, {"unit", 0}, {"holder", grant.at("holder")},
      {"uid", ::getuid()}, {"keep", true}};
  CHECK(without_clock(ctl_json(site, m, {"leases"}), "expires_in_ms", 60'000) ==
        json::array({expected_lease}));
  CHECK(eventually([&] { return unit_state_is(site, m, "1-1", 0, "allocated"); }, kSettle));

  // The held unit: another allocation is refused, naming the holder and the command that ends it.
  auto refused =
      site.devmgrctl(m, {"allocate", "--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "--keep"});
  CHECK(refused.exit_code == 1);
  CHECK(refused.err.find("held by devmgrctl[") != std::string::npos);
  CHECK(refused.err.find("devmgrctl release --dtu dtu-1 --lease " + lease) != std::string::npos);
  auto no_unit =
      site.devmgrctl(m, {"allocate", "--dtu", "dtu-1", "--device", "9-9", "--unit", "0", "--keep"});
  CHECK(no_unit.exit_code == 1);
  CHECK(no_unit.err.find("devmgrctl devices") != std::string::npos);

  // release ends it; a second release finds nothing.
  auto released = site.devmgrctl(m, {"release", "--dtu", "dtu-1", "--lease", lease});
  CHECK_MESSAGE(released.exit_code == 0, released.err);
  CHECK(released.out == "released lease " + lease + " on DTU dtu-1\n");
  CHECK(eventually([&] { return ctl_json(site, m, {"leases"}) == json::array(); }, kSettle));
  CHECK(eventually([&] { return unit_state_is(site, m, "1-1", 0, "free"); }, kSettle));
  auto again = site.devmgrctl(m, {"release", "--dtu", "dtu-1", "--lease", lease});
  CHECK(again.exit_code == 1);
  CHECK(again.err.find("devmgrctl leases") != std::string::npos);

  // The session detached: the finder stays registered and matches nothing.
  auto detached = site.devmgrctl(m, {"session", "detach", "--session", "s1"});
  CHECK_MESSAGE(detached.exit_code == 0, detached.err);
  CHECK(ctl_json(site, m, {"sessions"}) == json::array());
  expected_finder["matches"] = json::array();
  CHECK(
      eventually([&] { return ctl_json(site, m, {"finders"}) == json::array({expected_finder}); }, kSettle));
  auto unknown = site.devmgrctl(m, {"session", "detach", "--session", "s1"});
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err.find("devmgrctl sessions") != std::string::npos);

  // The service's connection closes: its finder goes.
  service.client->close();
  CHECK(eventually([&] { return ctl_json(site, m, {"finders"}) == json::array(); }, kSettle));
}

TEST_CASE("devmgrctl allocate --hold renews the lease past its length until SIGTERM, then releases it") {
  Site site;
  auto& m = site.start_manager("m1", kIp);
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  // Without --hold or --keep devmgrctl refuses, saying why.
  auto neither = site.devmgrctl(m, {"allocate", "--dtu", "dtu-1", "--device", "1-2", "--unit", "1"});
  CHECK(neither.exit_code == 2);
  CHECK(neither.err.find("choose --hold or --keep") != std::string::npos);

  constexpr int kLengthMs = 1200;
  Process holder(
      {dtu::testing::binary_path("devmgrctl"), "--socket", m.socket.string(), "allocate", "--dtu", "dtu-1",
       "--device", "1-2", "--unit", "1", "--length-ms", std::to_string(kLengthMs), "--hold"},
      site.dir().path(), {}, "holder");
  std::smatch held;
  REQUIRE(holder.wait_for_log(std::regex("holding lease ([0-9a-f]+)"), kSettle, &held));
  const std::string lease = held[1].str();
  CHECK(holder.out().find("lease " + lease + " on DTU dtu-1 device 1-2 unit 1\n") == 0);

  // Several lease lengths later the lease is still there: devmgrctl renews it.
  AsyncClient idle;
  idle.run_until([] { return false; }, std::chrono::milliseconds(3 * kLengthMs));
  CHECK(!holder.exit_status().has_value());
  auto leases = ctl_json(site, m, {"leases"});
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].at("lease") == lease);
  CHECK(leases[0].at("keep") == false);
  CHECK(unit_state_is(site, m, "1-2", 1, "allocated"));

  holder.signal(SIGTERM);
  CHECK(holder.wait_exit(kSettle) == 0);
  CHECK(holder.out().find("released lease " + lease + "\n") != std::string::npos);
  CHECK(ctl_json(site, m, {"leases"}) == json::array());
  CHECK(eventually([&] { return unit_state_is(site, m, "1-2", 1, "free"); }, kSettle));
}

TEST_CASE(
    "devmgrctl allocate --hold --wait-ms waits for a held unit, and a release under it ends devmgrctl with "
    "1") {
  Site site;
  auto& m = site.start_manager("m1", kIp);
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  const std::vector<std::string> unit = {"--dtu", "dtu-1", "--device", "1-1", "--unit", "0"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.begin() + 1, unit.begin(), unit.end());
    return args;
  };

  auto kept = site.devmgrctl(m, with({"allocate", "--keep", "--json"}));
  REQUIRE_MESSAGE(kept.exit_code == 0, kept.err);
  const std::string first = json::parse(kept.out).at("lease");

  // The waiter queues behind the kept lease and gets the unit when it is released.
  std::vector<std::string> argv = {dtu::testing::binary_path("devmgrctl"), "--socket", m.socket.string()};
  for (const auto& arg : with({"allocate", "--hold", "--wait-ms", "60000"})) argv.push_back(arg);
  Process waiter(argv, site.dir().path(), {}, "waiter");
  REQUIRE(m.process->wait_for_log(std::regex("allocation_waiting .*device=1-1"), kSettle));
  CHECK(!waiter.exit_status().has_value());
  auto released = site.devmgrctl(m, {"release", "--dtu", "dtu-1", "--lease", first});
  CHECK_MESSAGE(released.exit_code == 0, released.err);
  std::smatch held;
  REQUIRE(waiter.wait_for_log(std::regex("holding lease ([0-9a-f]+)"), kSettle, &held));
  const std::string second = held[1].str();
  CHECK(second != first);

  // An administrator ends the waiter's lease: devmgrctl says so and fails.
  auto ended = site.devmgrctl(m, {"release", "--dtu", "dtu-1", "--lease", second});
  CHECK_MESSAGE(ended.exit_code == 0, ended.err);
  CHECK(waiter.wait_exit(kSettle) == 1);
  CHECK(waiter.log().find("lease " + second + " ended (released)") != std::string::npos);
}

TEST_CASE(
    "devmgrctl policy shows the file in force, and a broken file on reload names its line and changes "
    "nothing") {
  Site site;
  const auto policy_file = site.dir() / "policy.json";
  const std::string first = R"({
  "defaults": { "lease_ms": 30000 },
  "rules": [
    { "name": "no-storage", "match": { "function": "storage" }, "action": "deny", "reason": "not here" }
  ],
  "default_action": "allow"
}
)";
  write_file(policy_file, first);
  auto& m = site.start_manager("m1", kIp, {"--policy", policy_file.string()});

  const json shown = ctl_json(site, m, {"policy"});
  CHECK(shown == json{{"source", policy_file.string()}, {"policy", json::parse(first)}});
  auto table = site.devmgrctl(m, {"policy"});
  CHECK(table.exit_code == 0);
  CHECK(table.out.find("source: " + policy_file.string() + "\n") == 0);
  CHECK(table.out.find("1  no-storage  deny    function=storage  reason=\"not here\"") != std::string::npos);

  // Line 3 lacks a comma: the reload fails naming file and line, and the old policy stays.
  write_file(policy_file, "{\n  \"defaults\": { \"lease_ms\": 1000 }\n  \"rules\": []\n}\n");
  auto broken = site.devmgrctl(m, {"policy", "reload"});
  CHECK(broken.exit_code == 1);
  CHECK_MESSAGE(broken.err.find(policy_file.string() + ":3:") != std::string::npos, broken.err);
  CHECK(broken.err.find("policy in force is unchanged") != std::string::npos);
  CHECK(ctl_json(site, m, {"policy"}) == shown);

  // Fixed: the reload prints what it loaded.
  const std::string second = R"({ "rules": [], "default_action": "deny" })";
  write_file(policy_file, second);
  CHECK(ctl_json(site, m, {"policy", "reload"}) ==
        json{{"source", policy_file.string()}, {"policy", json::parse(second)}});
  CHECK(ctl_json(site, m, {"policy"}).at("policy") == json::parse(second));

  // SIGHUP (systemctl reload) does the same: a broken file is logged and changes nothing, a good
  // one is in force afterwards.
  write_file(policy_file, "{ \"rules\": [ }\n");
  m.process->signal(SIGHUP);
  CHECK(m.process->wait_for_log(std::regex("policy_reload_failed.*policy\\.json:1:"), kSettle));
  CHECK(ctl_json(site, m, {"policy"}).at("policy") == json::parse(second));
  const std::string third = R"({ "defaults": { "lease_ms": 5000 }, "rules": [] })";
  write_file(policy_file, third);
  m.process->signal(SIGHUP);
  CHECK(eventually([&] { return ctl_json(site, m, {"policy"}).at("policy") == json::parse(third); }, kSettle));
}

TEST_CASE("devmgrctl says the manager is unreachable with exit code 3") {
  Site site;
  Site::Manager absent;
  absent.socket = site.dir() / "absent.sock";
  auto r = site.devmgrctl(absent, {"leases"});
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("is devmgr running?") != std::string::npos);
}

TEST_CASE("devmgrctl run by another uid lists, but is refused what only administrators may do") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to run devmgrctl as another uid");
    return;
  }
  Site site;
  auto& m = site.start_manager("m1", kIp, {"--socket-mode", "0666"});
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  // The site directory is private (mkdtemp); let the other uid reach the socket in it.
  std::filesystem::permissions(site.dir().path(), std::filesystem::perms::others_exec,
                               std::filesystem::perm_options::add);
  const std::string ctl = dtu::testing::binary_path("devmgrctl");
  auto as_nobody = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534",  "--clear-groups",
                                     ctl,       "--socket",      m.socket.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return dtu::testing::run_command(argv, kSettle);
  };
  if (as_nobody({"--version"}).exit_code != 0) {
    MESSAGE("skipped: uid 65534 cannot run " << ctl << " (setpriv missing or the build tree is private)");
    return;
  }
  auto listed = as_nobody({"leases", "--json"});
  CHECK_MESSAGE(listed.exit_code == 0, listed.err);

  auto kept =
      site.devmgrctl(m, {"allocate", "--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "--keep", "--json"});
  REQUIRE_MESSAGE(kept.exit_code == 0, kept.err);
  const std::string lease = json::parse(kept.out).at("lease");

  auto release = as_nobody({"release", "--dtu", "dtu-1", "--lease", lease});
  CHECK(release.exit_code == 1);
  CHECK_MESSAGE(release.err.find("only root or the user devmgr runs as may release another uid's lease") !=
                    std::string::npos,
                release.err);
  auto keep = as_nobody({"allocate", "--dtu", "dtu-1", "--device", "1-2", "--unit", "2", "--keep"});
  CHECK(keep.exit_code == 1);
  CHECK_MESSAGE(keep.err.find("--keep is for administrators") != std::string::npos, keep.err);
  auto attach = as_nobody({"session", "attach", "--session", "s9", "--user", "mallory", "--dtu", "dtu-1"});
  CHECK(attach.exit_code == 1);
  CHECK_MESSAGE(attach.err.find("(denied)\ndevmgrctl: run it as root") != std::string::npos, attach.err);
  auto reload = as_nobody({"policy", "reload"});
  CHECK(reload.exit_code == 1);
  CHECK_MESSAGE(reload.err.find("(denied)\ndevmgrctl: run it as root") != std::string::npos, reload.err);

  // Nothing changed.
  CHECK(ctl_json(site, m, {"leases"}).size() == 1);
  CHECK(ctl_json(site, m, {"sessions"}) == json::array());
}
