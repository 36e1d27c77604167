// devmgrctl's operator verbs against real managers and agents: `dtus` (this manager's DTUs, and
// with --group the other members' with their owner), `status` (the counts the site has; exit 4
// once a member is down), and the command-line audit: every verb answers --help, and a command
// line that does not parse exits 2 in devmgrctl, dtu-agent and dtu-simctl.
// Loopback addresses: 127.0.0.190–193.
#include <doctest/doctest.h>

#include <cstddef>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::CommandResult;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::run_command;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kToolDeadline = std::chrono::seconds(20);

// `devmgrctl ARGS --json`, parsed. REQUIREs exit code `expected`.
json ctl_json(Site& site, const Site::Manager& m, std::vector<std::string> args, int expected = 0) {
  args.push_back("--json");
  auto r = site.devmgrctl(m, args);
  REQUIRE_MESSAGE(r.exit_code == expected,
                  "devmgrctl " << args.front() << " exited " << r.exit_code << ": " << r.err << r.out);
  return json::parse(r.out);
}

// The entry of `dtu` in a `dtus --json` listing, or null.
json dtu_entry(const json& dtus, const std::string& dtu) {
  for (const auto& d : dtus) {
    if (d.at("dtu") == dtu) return d;
  }
  return nullptr;
}

// The devices `m` lists for `dtu`.
std::size_t devices_of(Site& site, const Site::Manager& m, const std::string& dtu) {
  std::size_t n = 0;
  for (const auto& d : site.devices(m)) {
    if (d.at("dtu") == dtu) ++n;
  }
  return n;
}

// The verbs a program's --help lists under "Subcommands:" (CLI11's heading).
std::vector<std::string> subcommands_in_help(const std::string& help) {
  std::vector<std::string> verbs;
  std::istringstream in(help);
  std::string line;
  bool listing = false;
  static const std::regex kVerb(R"(^\s+([a-z][a-z-]*)\b.*)");
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0 || line.rfind("SUBCOMMANDS", 0) == 0) {
      listing = true;
      continue;
    }
    if (!listing) continue;
    std::smatch m;
    if (std::regex_match(line, m, kVerb)) {
      verbs.push_back(m[1].str());
    } else if (!line.empty() && line[0] != ' ') {
      listing = false;
    }
  }
  return verbs;
}

CommandResult run(const std::string& program, std::vector<std::string> args) {
  args.insert(args.begin(), binary_path(program));
  return run_command(std::move(args), kToolDeadline);
}

}  // namespace

TEST_CASE(
    "devmgrctl dtus lists the DTU connected to the manager, and with --group a peer's DTU with its owner") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.190"}, {"m2", "127.0.0.191"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 1));
  site.start_agent("dtu-a", {m1.address});
  site.start_agent("dtu-b", {m2.address});
  REQUIRE(eventually([&] { return devices_of(site, m1, "dtu-a") > 0; }, kSettle));
  REQUIRE(eventually([&] { return devices_of(site, m2, "dtu-b") > 0; }, kSettle));

  // m1's own DTUs: one row, dtu-a, with what the serving manager knows of it.
  const json local = ctl_json(site, m1, {"dtus"});
  REQUIRE(local.size() == 1);
  const json& a = local.at(0);
  CHECK(a.at("dtu") == "dtu-a");
  CHECK(a.at("owner") == "m1");
  CHECK(a.at("state") == "active");
  CHECK_FALSE(a.at("address").get<std::string>().empty());
  CHECK_FALSE(a.at("agent_version").get<std::string>().empty());
  CHECK(a.at("boot_epoch").get<std::int64_t>() > 0);
  CHECK(a.contains("connected_ms_ago"));
  CHECK(a.at("devices").get<std::size_t>() == devices_of(site, m1, "dtu-a"));
  CHECK(a.at("units_free").get<std::uint32_t>() + a.at("units_allocated").get<std::uint32_t>() +
            a.at("units_unavailable").get<std::uint32_t>() >
        0);

  auto table = site.devmgrctl(m1, {"dtus"});
  REQUIRE_MESSAGE(table.exit_code == 0, table.err);
  CHECK(table.out.find("dtu-a") != std::string::npos);
  CHECK(table.out.find("dtu-b") == std::string::npos);

  // --group: dtu-b too, owned by m2, with the devices m2 reports for it.
  json b;
  REQUIRE(eventually(
      [&] {
        b = dtu_entry(ctl_json(site, m1, {"dtus", "--group"}), "dtu-b");
        return !b.is_null() && b.at("devices").get<std::size_t>() == devices_of(site, m2, "dtu-b");
      },
      kSettle));
  CHECK(b.at("owner") == "m2");
  CHECK(b.at("state") == "remote");
  CHECK_FALSE(b.contains("address"));
  const json grouped = ctl_json(site, m1, {"dtus", "--group"});
  CHECK(dtu_entry(grouped, "dtu-a").at("owner") == "m1");
  CHECK(grouped.size() == 2);

  auto group_table = site.devmgrctl(m1, {"dtus", "--group"});
  REQUIRE_MESSAGE(group_table.exit_code == 0, group_table.err);
  CHECK(group_table.out.find("OWNER") != std::string::npos);
  CHECK(group_table.out.find("dtu-b") != std::string::npos);
}

TEST_CASE("devmgrctl status counts what the site has, and exits 4 naming a member that is down") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.192"}, {"m2", "127.0.0.193"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 1));
  site.start_agent("dtu-a", {m1.address});
  REQUIRE(eventually([&] { return devices_of(site, m1, "dtu-a") > 0; }, kSettle));

  // One lease, kept by an administrator (the test runs devmgr as itself).
  auto kept = site.devmgrctl(m1, {"allocate", "--dtu", "dtu-a", "--device", "1-1", "--unit", "0", "--keep"});
  REQUIRE_MESSAGE(kept.exit_code == 0, kept.err);
  REQUIRE(eventually([&] { return site.unit(m1, "dtu-a", "1-1", 0).value("state", "") == "allocated"; },
                     kSettle));

  const json devices = site.devices(m1);
  std::size_t units = 0;
  for (const auto& d : devices) units += d.at("units").size();
  const json status = ctl_json(site, m1, {"status"});
  CHECK(status.at("manager") == "m1");
  CHECK(status.at("healthy") == true);
  CHECK(status.at("problems").empty());
  CHECK(status.at("draining") == false);
  CHECK(status.at("members").at("up") == 2);
  CHECK(status.at("members").at("total") == 2);
  CHECK(status.at("members").at("down").empty());
  CHECK(status.at("dtus") == 1);
  CHECK(status.at("devices").get<std::size_t>() == devices.size());
  const json& by_state = status.at("units");
  CHECK(by_state.at("allocated") == 1);
  CHECK(by_state.at("free").get<std::size_t>() + by_state.at("allocated").get<std::size_t>() +
            by_state.at("unavailable").get<std::size_t>() ==
        units);
  CHECK(status.at("leases") == 1);
  CHECK(status.at("finders") == 0);
  CHECK(status.at("sessions") == 0);
  CHECK(status.at("policy_source") == "built-in");
  CHECK(status.contains("incarnation"));
  CHECK(status.contains("uptime_s"));

  auto screen = site.devmgrctl(m1, {"status"});
  REQUIRE_MESSAGE(screen.exit_code == 0, screen.err);
  CHECK(screen.out.find("2/2 members up") != std::string::npos);
  CHECK(screen.out.find("health       ok") != std::string::npos);

  // A member dies: status still answers, degraded, and names it.
  site.kill_manager(m2);
  json degraded;
  REQUIRE(eventually(
      [&] {
        auto r = site.devmgrctl(m1, {"status", "--json"});
        if (r.exit_code != 4) return false;
        degraded = json::parse(r.out);
        return true;
      },
      kSettle));
  CHECK(degraded.at("healthy") == false);
  CHECK(degraded.at("members").at("up") == 1);
  CHECK(degraded.at("members").at("down") == json::array({"m2"}));
  REQUIRE(degraded.at("problems").size() == 1);
  CHECK(degraded.at("problems").at(0).get<std::string>().find("m2") != std::string::npos);
  auto degraded_screen = site.devmgrctl(m1, {"status"});
  CHECK(degraded_screen.exit_code == 4);
  CHECK(degraded_screen.out.find("DEGRADED") != std::string::npos);
  CHECK(degraded_screen.out.find("m2") != std::string::npos);
}

TEST_CASE("devmgrctl status exits 3 and says what to do when no manager answers") {
  Site site;
  auto r = run("devmgrctl", {"status", "--socket", (site.dir() / "nobody.sock").string()});
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("is devmgr running?") != std::string::npos);
}

TEST_CASE("Every devmgrctl verb answers --help with exit 0") {
  const auto top = run("devmgrctl", {"--help"});
  REQUIRE(top.exit_code == 0);
  const auto verbs = subcommands_in_help(top.out);
  const std::set<std::string> listed(verbs.begin(), verbs.end());
  for (const char* expected : {"status", "dtus", "devices", "group", "finders", "leases", "sessions",
                               "policy", "allocate", "release", "drain", "undrain", "session", "keygen"}) {
    CHECK_MESSAGE(listed.count(expected) == 1, "devmgrctl --help does not list " << expected);
  }
  // Each verb and each of its own verbs (group reload, session attach, …): two levels at most.
  std::vector<std::vector<std::string>> pending;
  for (const auto& verb : verbs) pending.push_back({verb});
  for (std::size_t i = 0; i < pending.size(); ++i) {
    auto args = pending[i];
    args.push_back("--help");
    const auto help = run("devmgrctl", args);
    CHECK_MESSAGE(help.exit_code == 0,
                  "devmgrctl " << pending[i].front() << " --help exited " << help.exit_code);
    CHECK_MESSAGE(help.out.find("Usage") != std::string::npos, "no usage for " << pending[i].back());
    if (pending[i].size() < 2) {
      for (const auto& sub : subcommands_in_help(help.out)) pending.push_back({pending[i].front(), sub});
    }
  }
  CHECK(pending.size() > verbs.size());  // group, policy and session have verbs of their own
}

TEST_CASE("A command line that does not parse exits 2 in devmgrctl, dtu-agent and dtu-simctl") {
  Site site;
  const std::string socket = (site.dir() / "none.sock").string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--no-such-flag"}, {"no-such-verb"}, {"status", "--no-such-flag"}, {"allocate", "--dtu"}, {}}) {
    const auto r = run("devmgrctl", args);
    CHECK_MESSAGE(r.exit_code == 2, "devmgrctl with " << args.size() << " args exited " << r.exit_code);
    CHECK_FALSE(r.err.empty());
  }
  const auto agent = run("dtu-agent", {"--no-such-flag"});
  CHECK(agent.exit_code == 2);
  CHECK_FALSE(agent.err.empty());
  const auto agent_help = run("dtu-agent", {"--help"});
  CHECK(agent_help.exit_code == 0);
  CHECK(agent_help.out.find("default info") != std::string::npos);

  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"--socket", socket, "no-such-verb"},
                                             {"--socket", socket, "captured", "1-1", "not-an-address"}}) {
    const auto r = run("dtu-simctl", args);
    CHECK_MESSAGE(r.exit_code == 2, "dtu-simctl with " << args.size() << " args exited " << r.exit_code);
  }
  // Parsed, but nobody listens: 3, as devmgrctl.
  const auto unanswered = run("dtu-simctl", {"--socket", socket, "list"});
  CHECK(unanswered.exit_code == 3);
  CHECK(unanswered.err.find("Is dtu-agent running") != std::string::npos);
}
