// `devmgrctl group exec` with real processes on 127.0.0.43–.51: a verb runs on every manager of
// a 3-manager group and each reports; a killed manager is reported unreachable within the
// timeout; a completion still reaches devmgrctl when the peer link that carried the request is
// reset mid-run (ss -K) and the command completes while the link is down; rotate-key swaps the group keys and
// the links come back up afterwards.
#include <doctest/doctest.h>

#include <csignal>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::CommandResult;
using dtu::testing::eventually;
using dtu::testing::kMeshPort;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::run_command;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The JSON lines of `group exec --json` output.
std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

// The final outcome event of `node` in `lines`, or null.
json final_event(const std::vector<json>& lines, const std::string& node) {
  for (const auto& line : lines) {
    if (line.value("event", "") == "outcome" && line.value("node", "") == node &&
        line.value("outcome", "") != "queued") {
      return line;
    }
  }
  return nullptr;
}

json summary_of(const std::vector<json>& lines) {
  for (const auto& line : lines) {
    if (line.value("event", "") == "summary") return line;
  }
  return nullptr;
}

// Kills every TCP connection to or from the mesh listener on `ip` (both ends: the dialer's
// socket, whose source address is the kernel's choice, and the accepted one).
void reset_mesh_links(const std::string& ip) {
  const std::string port = ":" + std::to_string(kMeshPort);
  for (const auto& filter : {std::vector<std::string>{"dst", ip, "dport", "=", port},
                             std::vector<std::string>{"src", ip, "sport", "=", port}}) {
    std::vector<std::string> argv{"ss", "-K", "-t"};
    argv.insert(argv.end(), filter.begin(), filter.end());
    const CommandResult killed = run_command(argv, kSettle);
    REQUIRE_MESSAGE(killed.exit_code == 0, "ss -K failed: " << killed.err);
  }
}

std::size_t count_matches(const std::string& text, const std::regex& re) {
  return static_cast<std::size_t>(
      std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

}  // namespace

TEST_CASE(
    "group exec runs reload, diag, drain and undrain on every member, and reports a killed member "
    "unreachable") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.43"}, {"m2", "127.0.0.44"}, {"m3", "127.0.0.45"}});
  auto& m1 = *managers[0];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));

  // reload: every node done, one line each and a summary.
  auto reload = site.devmgrctl(m1, {"group", "exec", "reload"});
  REQUIRE_MESSAGE(reload.exit_code == 0, reload.out << reload.err);
  for (const char* node : {"m1", "m2", "m3"}) {
    CHECK(std::regex_search(reload.out, std::regex(std::string("(^|\n)") + node +
                                                   " +done +reload: policy unchanged, group unchanged")));
  }
  CHECK(reload.out.find("3 nodes: 3 done") != std::string::npos);

  // diag --json: a state dump per node, under its own id.
  auto diag = site.devmgrctl(m1, {"group", "exec", "diag", "--json"});
  REQUIRE_MESSAGE(diag.exit_code == 0, diag.out << diag.err);
  const auto lines = json_lines(diag.out);
  REQUIRE(!lines.empty());
  CHECK(lines.front().at("event") == "queued");
  CHECK(lines.front().at("verb") == "diag");
  for (const char* node : {"m1", "m2", "m3"}) {
    const json event = final_event(lines, node);
    REQUIRE_MESSAGE(event.is_object(), "no outcome for " << node << " in " << diag.out);
    CHECK(event.at("outcome") == "done");
    const json& dump = event.at("result");
    CHECK(dump.at("id") == node);
    CHECK(dump.at("draining") == false);
    CHECK(dump.at("peers").size() == 2);
    CHECK(dump.at("key_id").get<std::string>().size() == 16);
    CHECK(dump.contains("uptime_ms"));
    CHECK(dump.at("policy").at("source") == "built-in");
  }
  const json summary = summary_of(lines);
  REQUIRE(summary.is_object());
  CHECK(summary.at("ok") == true);
  CHECK(summary.at("outcomes") == json{{"m1", "done"}, {"m2", "done"}, {"m3", "done"}});

  // drain and undrain on two chosen nodes (they hold no DTU: the drain ends at once).
  auto drain = site.devmgrctl(m1, {"group", "exec", "drain", "--wait-ms", "2000", "--nodes", "m2,m3"});
  REQUIRE_MESSAGE(drain.exit_code == 0, drain.out << drain.err);
  CHECK(drain.out.find("2 nodes: 2 done") != std::string::npos);
  CHECK(site.group(*managers[1]).value("draining", false) == true);
  CHECK(site.group(*managers[2]).value("draining", false) == true);
  CHECK(site.group(m1).value("draining", false) == false);
  auto undrain = site.devmgrctl(m1, {"group", "exec", "undrain", "--nodes", "m2,m3"});
  REQUIRE_MESSAGE(undrain.exit_code == 0, undrain.out << undrain.err);
  CHECK(site.group(*managers[1]).value("draining", false) == false);
  CHECK(site.group(*managers[2]).value("draining", false) == false);

  // A killed member: unreachable within the timeout; the others done; exit 1.
  site.kill_manager(*managers[2]);
  auto partial = site.devmgrctl(m1, {"group", "exec", "reload", "--timeout-ms", "3000"});
  CHECK(partial.exit_code == 1);
  CHECK(std::regex_search(partial.out, std::regex("(^|\n)m3 +unreachable")));
  CHECK(partial.out.find("3 nodes: 2 done, 1 unreachable") != std::string::npos);

  // Usage errors exit 2 and say why.
  auto unknown = site.devmgrctl(m1, {"group", "exec", "reload", "--nodes", "m9"});
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err.find("'m9' is not a member of the group") != std::string::npos);
  auto no_verb = site.devmgrctl(m1, {"group", "exec"});
  CHECK(no_verb.exit_code == 2);
}

TEST_CASE("group exec delivers a completion after the peer link that carried the request was reset") {
  Site site;
  // Heartbeats far longer than the test: the stopped agent's link stays up, and only the reset
  // takes the peer link down.
  site.set_heartbeat(2000, 10);
  auto managers = site.start_group({{"m1", "127.0.0.46"}, {"m2", "127.0.0.47"}, {"m3", "127.0.0.48"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  // A DTU of m2 that cannot act on dtu_move while stopped: m2's drain runs until it continues.
  auto& agent = site.start_agent("dtu-r", {m2.address});
  REQUIRE(eventually([&] { return !site.devices(m2).empty(); }, kSettle));
  agent.process->signal(SIGSTOP);

  Process exec({binary_path("devmgrctl"), "--socket", m1.socket.string(), "group", "exec", "drain",
                "--wait-ms", "30000", "--nodes", "m2", "--timeout-ms", "40000", "--json"},
               site.dir().path(), {}, "group-exec");
  REQUIRE(m2.process->wait_for_log(std::regex("command_queued.*verb=drain"), kSettle));
  REQUIRE(m2.process->wait_for_log(std::regex("drain_started"), kSettle));

  // Cut the link while m1 (the origin, and the dialer: the lower mesh address initiates) is
  // stopped, so it cannot come back before m2's drain completes.
  m1.process->signal(SIGSTOP);
  reset_mesh_links("127.0.0.47");
  CHECK(m2.process->wait_for_log(std::regex("peer_down peer=m1"), kSettle));
  // The DTU leaves; m2's drain completes while it has no link to the origin.
  agent.process->signal(SIGCONT);
  CHECK(m2.process->wait_for_log(std::regex("command_completed .*outcome=done"), kSettle));
  CHECK(count_matches(m2.process->log(), std::regex(R"(\speer_up peer=m1)")) == 1);
  // m1 runs again, finds its link gone and dials m2 again: the completion goes over the new link.
  m1.process->signal(SIGCONT);
  CHECK(m1.process->wait_for_log(std::regex("peer_down peer=m2"), kSettle));
  CHECK(eventually([&] { return count_matches(m1.process->log(), std::regex(R"(\speer_up peer=m2)")) >= 2; },
                   kSettle));
  CHECK(m2.process->wait_for_log(std::regex("completion_resent .*origin=m1"), kSettle));

  const auto code = exec.wait_exit(40s);
  REQUIRE(code.has_value());
  CHECK_MESSAGE(*code == 0, exec.out());
  const auto lines = json_lines(exec.out());
  const json event = final_event(lines, "m2");
  REQUIRE_MESSAGE(event.is_object(), exec.out());
  CHECK(event.at("outcome") == "done");
  CHECK(event.at("result").at("draining") == true);
  CHECK(event.at("result").at("dtus") == 0);
  const json summary = summary_of(lines);
  REQUIRE(summary.is_object());
  CHECK(summary.at("outcomes") == json{{"m2", "done"}});
  CHECK(m2.process->wait_for_log(std::regex("completion_delivered"), kSettle));
}

TEST_CASE("group exec rotate-key makes the next group key current on every member and the links come back") {
  Site site;
  const auto next_key = site.dir() / "group-next.key";
  const CommandResult keygen =
      run_command({binary_path("devmgrctl"), "keygen", "--out", next_key.string()}, kSettle);
  REQUIRE_MESSAGE(keygen.exit_code == 0, keygen.err);
  auto managers = site.start_group({{"m1", "127.0.0.49"}, {"m2", "127.0.0.50"}, {"m3", "127.0.0.51"}},
                                   {"--group-key-next", next_key.string()});
  auto& m1 = *managers[0];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));

  auto before = site.devmgrctl(m1, {"group", "exec", "diag", "--json"});
  REQUIRE_MESSAGE(before.exit_code == 0, before.out << before.err);
  const json dump = final_event(json_lines(before.out), "m1").at("result");
  const std::string old_id = dump.at("key_id");
  const std::string next_id = dump.at("next_key_id");
  REQUIRE(next_id.size() == 16);

  auto rotate = site.devmgrctl(m1, {"group", "exec", "rotate-key", "--json"});
  REQUIRE_MESSAGE(rotate.exit_code == 0, rotate.out << rotate.err);
  const auto lines = json_lines(rotate.out);
  for (const char* node : {"m1", "m2", "m3"}) {
    const json event = final_event(lines, node);
    REQUIRE_MESSAGE(event.is_object(), rotate.out);
    CHECK(event.at("outcome") == "done");
    CHECK(event.at("result").at("key_id") == next_id);
    CHECK(event.at("result").at("next_key_id") == old_id);
  }
  for (auto* m : managers)
    CHECK(m->process->wait_for_log(std::regex("group_key_rotated key_id=" + next_id), kSettle));

  // New links are made with the new key: drop them all and they come back.
  for (const char* ip : {"127.0.0.49", "127.0.0.50", "127.0.0.51"}) reset_mesh_links(ip);
  CHECK(m1.process->wait_for_log(std::regex("peer_down"), kSettle));
  for (auto* m : managers) CHECK(site.wait_peers_up(*m, 2));
  auto after = site.devmgrctl(m1, {"group", "exec", "diag"});
  CHECK_MESSAGE(after.exit_code == 0, after.out << after.err);
}
