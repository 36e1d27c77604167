#include "site.hpp"

#include <algorithm>
#include <csignal>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <doctest/doctest.h>

namespace dtu::testing {

namespace {
constexpr std::chrono::milliseconds kToolDeadline{15000};
}

Site::Site() : dir_("dtu-site") {}

void Site::set_heartbeat(int interval_ms, int misses) {
  heartbeat_ms_ = interval_ms;
  heartbeat_misses_ = misses;
}

std::filesystem::path Site::site_key() {
  if (site_key_.empty()) {
    const auto path = dir_ / "site-dtu.key";
    auto r = run_command({binary_path("devmgrctl"), "keygen", "--out", path.string()}, kToolDeadline);
    if (r.exit_code != 0) throw std::runtime_error("devmgrctl keygen failed: " + r.err);
    site_key_ = path;
  }
  return site_key_;
}

std::filesystem::path Site::dtu_key(const std::string& dtu) {
  auto it = dtu_keys_.find(dtu);
  if (it != dtu_keys_.end()) return it->second;
  const auto path = dir_ / (dtu + ".key");
  auto r = run_command({binary_path("devmgrctl"), "keygen", "--dtu", dtu, "--site-key", site_key().string(),
                        "--out", path.string()},
                       kToolDeadline);
  if (r.exit_code != 0) throw std::runtime_error("devmgrctl keygen --dtu failed: " + r.err);
  dtu_keys_[dtu] = path;
  return path;
}

Site::Manager& Site::start_manager(const std::string& id, const std::string& ip,
                                   std::vector<std::string> extra) {
  auto m = std::make_unique<Manager>();
  m->id = id;
  m->socket = dir_ / (id + ".sock");
  std::vector<std::string> argv = {binary_path("devmgr"),
                                   "--id",
                                   id,
                                   "--dtu-listen",
                                   ip + ":0",
                                   "--socket",
                                   m->socket.string(),
                                   "--site-dtu-key",
                                   site_key().string(),
                                   "--heartbeat-ms",
                                   std::to_string(heartbeat_ms_),
                                   "--heartbeat-misses",
                                   std::to_string(heartbeat_misses_)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  m->argv = argv;
  m->process = std::make_unique<Process>(argv, dir_.path(), Environment{}, id);
  m->address = wait_listening(*m);
  managers_.push_back(std::move(m));
  return *managers_.back();
}

std::filesystem::path Site::group_key() {
  if (group_key_.empty()) {
    const auto path = dir_ / "group.key";
    auto r = run_command({binary_path("devmgrctl"), "keygen", "--out", path.string()}, kToolDeadline);
    if (r.exit_code != 0) throw std::runtime_error("devmgrctl keygen failed: " + r.err);
    group_key_ = path;
  }
  return group_key_;
}

std::vector<Site::Manager*> Site::start_group(const std::vector<Member>& members,
                                              const std::vector<std::string>& extra) {
  nlohmann::json list = {{"members", nlohmann::json::array()}};
  for (const auto& member : members) {
    list["members"].push_back({{"id", member.id}, {"address", member.ip + ":" + std::to_string(kMeshPort)}});
  }
  std::ofstream(group_file()) << list.dump(2) << '\n';
  const auto key = group_key();
  std::vector<Manager*> started;
  for (const auto& member : members) {
    auto m = std::make_unique<Manager>();
    m->id = member.id;
    m->socket = dir_ / (member.id + ".sock");
    std::vector<std::string> argv = {binary_path("devmgr"),
                                     "--id",
                                     member.id,
                                     "--dtu-listen",
                                     member.ip + ":0",
                                     "--socket",
                                     m->socket.string(),
                                     "--site-dtu-key",
                                     site_key().string(),
                                     "--heartbeat-ms",
                                     std::to_string(heartbeat_ms_),
                                     "--heartbeat-misses",
                                     std::to_string(heartbeat_misses_),
                                     "--group",
                                     group_file().string(),
                                     "--group-key",
                                     key.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    m->argv = argv;
    m->env = member.env;
    m->process = std::make_unique<Process>(argv, dir_.path(), m->env, member.id);
    managers_.push_back(std::move(m));
    started.push_back(managers_.back().get());
  }
  for (Manager* m : started) m->address = wait_listening(*m);
  return started;
}

nlohmann::json Site::group(const Manager& m) {
  auto r = devmgrctl(m, {"group", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, "devmgrctl group --json failed: " << r.err);
  return nlohmann::json::parse(r.out);
}

nlohmann::json Site::member(const Manager& m, const std::string& id) {
  const nlohmann::json members = group(m).at("members");
  for (const auto& member : members) {
    if (member.at("id") == id) return member;
  }
  return nullptr;
}

bool Site::wait_peers_up(const Manager& m, std::size_t peers, std::chrono::milliseconds deadline) {
  std::string last;
  const bool all_up = eventually(
      [&] {
        auto r = devmgrctl(m, {"group", "--json"});
        last = r.out + r.err;
        if (r.exit_code != 0) return false;
        std::size_t up = 0;
        const nlohmann::json group = nlohmann::json::parse(r.out);
        for (const auto& member : group.at("members")) {
          if (member.at("state") == "up") ++up;
        }
        return up == peers;
      },
      deadline);
  if (!all_up)
    MESSAGE(m.id << " does not see " << peers << " peers up; devmgrctl group --json said:\n" << last);
  return all_up;
}

std::string Site::wait_listening(Manager& m) {
  std::smatch match;
  const std::regex listening(R"( listening .* dtu=([0-9.]+:[0-9]+) )");
  if (!m.process->wait_for_log(listening, kSettle, &match)) {
    throw std::runtime_error("devmgr " + m.id + " did not start listening:\n" + m.process->log());
  }
  return match[1].str();
}

void Site::kill_manager(Manager& m) {
  m.process->signal(SIGKILL);
  if (!m.process->wait_exit(kSettle)) throw std::runtime_error("devmgr " + m.id + " survived SIGKILL");
}

void Site::restart_manager(Manager& m) {
  if (!m.process->exit_status()) kill_manager(m);
  std::vector<std::string> argv = m.argv;
  // The same port: the agents reconnect to the address they know.
  auto listen = std::find(argv.begin(), argv.end(), "--dtu-listen");
  if (listen != argv.end() && std::next(listen) != argv.end()) *std::next(listen) = m.address;
  m.process = std::make_unique<Process>(argv, dir_.path(), m.env, m.id);
  const std::string address = wait_listening(m);
  if (address != m.address) {
    throw std::runtime_error("devmgr " + m.id + " came back on " + address + ", not " + m.address);
  }
}

Site::Agent& Site::start_agent(const std::string& id, const std::vector<std::string>& managers,
                               std::vector<std::string> extra) {
  auto a = std::make_unique<Agent>();
  a->id = id;
  a->sim_socket = dir_ / (id + "-sim.sock");
  // A second process of one DTU (a reboot while the first is frozen) needs a socket of its own.
  const auto sim_control = std::find(extra.begin(), extra.end(), "--sim-control");
  if (sim_control != extra.end() && std::next(sim_control) != extra.end())
    a->sim_socket = *std::next(sim_control);
  std::vector<std::string> argv = {binary_path("dtu-agent"), "--id", id};
  // The simulated backend unless the test chose another (--backend libusb under umockdev).
  if (std::find(extra.begin(), extra.end(), "--backend") == extra.end()) {
    argv.insert(argv.end(),
                {"--backend", "sim", "--sim-devices", source_path("demo/sim-devices.json").string()});
    if (sim_control == extra.end()) argv.insert(argv.end(), {"--sim-control", a->sim_socket.string()});
  }
  // Every agent of a test listens in-band on a port of its own.
  if (std::find(extra.begin(), extra.end(), "--inband") == extra.end()) {
    argv.insert(argv.end(), {"--inband", "127.0.0.1:0"});
  }
  // A test may hand the agent another key (an impersonation attempt).
  if (std::find(extra.begin(), extra.end(), "--key") == extra.end()) {
    argv.push_back("--key");
    argv.push_back(dtu_key(id).string());
  }
  for (const auto& m : managers) {
    argv.push_back("--manager");
    argv.push_back(m);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  a->process = std::make_unique<Process>(argv, dir_.path(), Environment{}, id);
  agents_.push_back(std::move(a));
  return *agents_.back();
}

void Site::kill_agent(Agent& a) {
  a.process->signal(SIGKILL);
  if (!a.process->wait_exit(kSettle)) throw std::runtime_error("dtu-agent " + a.id + " survived SIGKILL");
}

CommandResult Site::devmgrctl(const Manager& m, std::vector<std::string> args) {
  std::vector<std::string> argv = {binary_path("devmgrctl"), "--socket", m.socket.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, kToolDeadline);
}

nlohmann::json Site::devices(const Manager& m) {
  auto r = devmgrctl(m, {"devices", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, "devmgrctl devices --json failed: " << r.err);
  return nlohmann::json::parse(r.out);
}

nlohmann::json Site::unit(const Manager& m, const std::string& dtu, const std::string& device,
                          std::uint32_t unit) {
  for (const auto& d : devices(m)) {
    if (d.at("dtu") != dtu || d.at("device") != device) continue;
    for (const auto& u : d.at("units")) {
      if (u.at("unit") == unit) return u;
    }
  }
  return nullptr;
}

CommandResult Site::simctl(const Agent& a, std::vector<std::string> args) {
  std::vector<std::string> argv = {binary_path("dtu-simctl"), "--socket", a.sim_socket.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  // Longer than kToolDeadline: a test may read back megabytes of capture with a long --timeout-ms.
  return run_command(argv, std::chrono::seconds(60));
}

}  // namespace dtu::testing
