// devmgr and dtu-agent under systemd, as systemd sees them: the sd_notify(3) datagrams they send
// to NOTIFY_SOCKET (a socket this test binds in its temp dir), the watchdog pings, a reload and a
// stop; devmgr's command-line exit codes and --help defaults; the socket group.
#include <doctest/doctest.h>

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::Environment;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::run_command;
using dtu::testing::Site;
using dtu::testing::source_path;

namespace {

constexpr std::chrono::milliseconds kExitDeadline{10000};
// The watchdog interval given to devmgr (WATCHDOG_USEC): it pings every 100 ms.
constexpr int kWatchdogUsec = 200000;

// The service manager's end of NOTIFY_SOCKET: an AF_UNIX datagram socket bound to a path.
class NotifySocket {
 public:
  explicit NotifySocket(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const auto text = path_.string();
    if (text.size() >= sizeof addr.sun_path) throw std::runtime_error("notify socket path too long: " + text);
    std::memcpy(addr.sun_path, text.c_str(), text.size() + 1);
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::system_error(errno, std::generic_category(), "bind " + text);
    }
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // The next datagram, or nullopt when none came within `deadline`.
  std::optional<std::string> next(std::chrono::milliseconds deadline) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(deadline.count())) <= 0) return std::nullopt;
    char buffer[4096];
    const auto n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n < 0) return std::nullopt;
    std::string message(buffer, static_cast<std::size_t>(n));
    seen_.push_back(message);
    return message;
  }

  // Reads datagrams until one satisfies `pred` (-> it) or `deadline` passes (-> nullopt).
  template <class Pred>
  std::optional<std::string> wait_for(Pred pred, std::chrono::milliseconds deadline) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto message = next(left);
      if (!message) return std::nullopt;
      if (pred(*message)) return message;
    }
  }

  // Everything received so far, in order (for a failing test's report).
  std::string history() const {
    std::string all;
    for (const auto& m : seen_) all += "[" + m + "] ";
    return all;
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::vector<std::string> seen_;
};

bool has_line(const std::string& message, const std::string& line) {
  return ("\n" + message + "\n").find("\n" + line + "\n") != std::string::npos;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

// Runs argv with WATCHDOG_PID set to its own pid (the shell execs it, so the pid stays), as
// systemd does for a service's main process.
std::vector<std::string> with_watchdog_pid(const std::vector<std::string>& argv) {
  std::vector<std::string> wrapped = {"/bin/sh", "-c", "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"",
                                      "sh"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

std::vector<std::string> devmgr_argv(Site& site, const std::string& id, const std::string& ip) {
  return {binary_path("devmgr"),
          "--id",
          id,
          "--dtu-listen",
          ip + ":0",
          "--socket",
          (site.dir() / (id + ".sock")).string(),
          "--site-dtu-key",
          site.site_key().string()};
}

}  // namespace

TEST_CASE("devmgr tells systemd it is ready, what it serves, that it lives, reloads and stops") {
  Site site;
  NotifySocket notify(site.dir() / "notify.sock");
  const Environment env = {{"NOTIFY_SOCKET", notify.path().string()},
                           {"WATCHDOG_USEC", std::to_string(kWatchdogUsec)}};
  Process m(with_watchdog_pid(devmgr_argv(site, "sd1", "127.0.0.180")), site.dir().path(), env, "sd1");

  INFO("notifications: ", notify.history());
  REQUIRE(notify.wait_for([](const std::string& s) { return has_line(s, "READY=1"); }, kSettle));
  // The listeners are bound by the time READY=1 arrives: a client may connect at once.
  CHECK(std::filesystem::exists(site.dir() / "sd1.sock"));
  const auto status =
      notify.wait_for([](const std::string& s) { return starts_with(s, "STATUS="); }, kSettle);
  REQUIRE(status);
  CHECK(starts_with(*status, "STATUS=sd1: no group, 0 DTUs, 0 devices, 0 leases"));

  SUBCASE("the watchdog is pinged again and again") {
    int pings = 0;
    for (int i = 0; i < 3; ++i) {
      if (notify.wait_for([](const std::string& s) { return has_line(s, "WATCHDOG=1"); }, kSettle)) ++pings;
    }
    CHECK(pings == 3);
  }

  SUBCASE("the status follows a DTU that connects") {
    NotifySocket agent_notify(site.dir() / "agent-notify.sock");
    std::smatch listening;
    REQUIRE(
        m.wait_for_log(std::regex("listening id=sd1 dtu=(127\\.0\\.0\\.180:[0-9]+)"), kSettle, &listening));
    const std::string address = listening[1];
    Process agent({binary_path("dtu-agent"), "--id", "desk-1", "--backend", "sim", "--sim-devices",
                   source_path("demo/sim-devices.json").string(), "--inband", "127.0.0.181:0", "--key",
                   site.dtu_key("desk-1").string(), "--manager", address},
                  site.dir().path(), {{"NOTIFY_SOCKET", agent_notify.path().string()}}, "desk-1");
    INFO("agent notifications: ", agent_notify.history());
    CHECK(agent_notify.wait_for([](const std::string& s) { return has_line(s, "READY=1"); }, kSettle));
    CHECK(notify.wait_for(
        [](const std::string& s) { return starts_with(s, "STATUS=sd1: no group, 1 DTUs, "); }, kSettle));
    agent.signal(SIGTERM);
    CHECK(agent_notify.wait_for([](const std::string& s) { return has_line(s, "STOPPING=1"); }, kSettle));
    CHECK(agent.wait_exit(kExitDeadline) == 0);
  }

  SUBCASE("SIGHUP is a reload: RELOADING=1 with the monotonic clock, then READY=1") {
    m.signal(SIGHUP);
    const auto reloading =
        notify.wait_for([](const std::string& s) { return has_line(s, "RELOADING=1"); }, kSettle);
    REQUIRE(reloading);
    CHECK(reloading->find("MONOTONIC_USEC=") != std::string::npos);
    CHECK(notify.wait_for([](const std::string& s) { return has_line(s, "READY=1"); }, kSettle));
  }

  SUBCASE("SIGTERM: STOPPING=1, and devmgr exits 0") {
    m.signal(SIGTERM);
    CHECK(notify.wait_for([](const std::string& s) { return has_line(s, "STOPPING=1"); }, kSettle));
    CHECK(m.wait_exit(kExitDeadline) == 0);
  }
}

TEST_CASE("devmgr does not ping a watchdog that systemd set for another process") {
  Site site;
  NotifySocket notify(site.dir() / "notify.sock");
  const Environment env = {{"NOTIFY_SOCKET", notify.path().string()},
                           {"WATCHDOG_USEC", std::to_string(kWatchdogUsec)},
                           {"WATCHDOG_PID", "1"}};
  Process m(devmgr_argv(site, "sd2", "127.0.0.182"), site.dir().path(), env, "sd2");
  INFO("notifications: ", notify.history());
  REQUIRE(notify.wait_for([](const std::string& s) { return has_line(s, "READY=1"); }, kSettle));
  // Everything devmgr sends until it stops: no ping among it.
  m.signal(SIGTERM);
  bool pinged = false;
  const auto stopping = notify.wait_for(
      [&](const std::string& s) {
        pinged = pinged || has_line(s, "WATCHDOG=1");
        return has_line(s, "STOPPING=1");
      },
      kSettle);
  CHECK(stopping);
  CHECK_FALSE(pinged);
}

TEST_CASE("devmgr exits 2 on a usage error and says what was wrong") {
  const auto r = run_command({binary_path("devmgr"), "--bogus"}, kExitDeadline);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--bogus") != std::string::npos);
  const auto range = run_command({binary_path("devmgr"), "--heartbeat-ms", "5"}, kExitDeadline);
  CHECK(range.exit_code == 2);
  CHECK(range.err.find("--heartbeat-ms") != std::string::npos);
}

TEST_CASE("devmgr --help exits 0 and shows each default") {
  const auto r = run_command({binary_path("devmgr"), "--help"}, kExitDeadline);
  CHECK(r.exit_code == 0);
  // CLI11 writes an option's default after '=' at the end of its name column.
  const auto shows = [&](const std::string& flag, const std::string& value) {
    return std::regex_search(r.out, std::regex("\\s" + flag + " [^\\n]*=" + value + "(\\s|$)"));
  };
  INFO(r.out);
  CHECK(shows("--id", "devmgr"));
  CHECK(shows("--dtu-listen", "127\\.0\\.0\\.1:4711"));
  CHECK(r.out.find("0.0.0.0:4711") != std::string::npos);  // what the packaged config sets
  CHECK(shows("--socket", "/run/dtubroker/devmgr\\.sock"));
  CHECK(shows("--socket-mode", "0660"));
  CHECK(r.out.find("--socket-group") != std::string::npos);
  CHECK(shows("--site-dtu-key", "/etc/dtubroker/site-dtu\\.key"));
  CHECK(shows("--heartbeat-ms", "1000"));
  CHECK(shows("--heartbeat-misses", "3"));
  CHECK(shows("--group-key", "/etc/dtubroker/group\\.key"));
  CHECK(shows("--orphan-grace-ms", "10000"));
  CHECK(shows("--log-level", "info"));
}

TEST_CASE("devmgr gives its socket to the socket group") {
  Site site;
  // A group this test may give the socket to: its own primary group (always a member).
  const gid_t gid = ::getegid();
  const group* entry = ::getgrgid(gid);
  REQUIRE(entry != nullptr);
  const std::string name = entry->gr_name;
  auto argv = devmgr_argv(site, "sd3", "127.0.0.183");
  argv.insert(argv.end(), {"--socket-group", name, "--socket-mode", "0660"});
  Process m(argv, site.dir().path(), {}, "sd3");
  REQUIRE(m.wait_for_log(std::regex("listening id=sd3 "), kSettle));
  struct stat st {};
  REQUIRE(::stat((site.dir() / "sd3.sock").c_str(), &st) == 0);
  CHECK(st.st_gid == gid);
  CHECK((st.st_mode & 0777) == 0660);
}

TEST_CASE("devmgr refuses to start with an unknown socket group and names it") {
  Site site;
  auto argv = devmgr_argv(site, "sd4", "127.0.0.184");
  argv.insert(argv.end(), {"--socket-group", "no-such-group-dtu"});
  const auto r = run_command(argv, kExitDeadline);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("start_failed") != std::string::npos);
  CHECK(r.err.find("socket_group 'no-such-group-dtu': no such group") != std::string::npos);
}

TEST_CASE("devmgr refuses a socket group it is not a member of and says how to fix it") {
  Site site;
  // devmgr runs as an ordinary user outside the group root: this test's own user, or nobody when
  // the test runs as root (who could give the socket to any group).
  std::vector<std::string> argv;
  if (::geteuid() == 0) argv = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"};
  std::filesystem::permissions(site.dir().path(), std::filesystem::perms::all);
  std::filesystem::permissions(site.site_key(), std::filesystem::perms(0644));
  auto devmgr = devmgr_argv(site, "sd5", "127.0.0.185");
  argv.insert(argv.end(), devmgr.begin(), devmgr.end());
  argv.insert(argv.end(), {"--socket-group", "root"});
  const auto r = run_command(argv, kExitDeadline);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("start_failed") != std::string::npos);
  CHECK(r.err.find("to group 'root': not permitted") != std::string::npos);
  CHECK(r.err.find("SupplementaryGroups=root") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(site.dir() / "sd5.sock"));
}
