// The systemd files of packaging/systemd as systemd itself reads them, offline: the units pass
// `systemd-analyze verify` (with ExecStart= pointing at the programs this build made, since the
// packaged /usr/sbin paths do not exist here) and a broken copy does not; `systemd-analyze
// security` rates devmgr.service; systemd-sysusers and systemd-tmpfiles apply the users and the
// key permissions to a scratch root. Needs the package systemd (scripts/deps.sh test).
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>

#include "harness.hpp"

using dtu::testing::binary_path;
using dtu::testing::run_command;
using dtu::testing::source_path;
using dtu::testing::TempDir;

namespace {

constexpr std::chrono::milliseconds kToolDeadline{60000};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// The packaged unit `name`, copied into `dir` with its ExecStart= program replaced by `program`.
std::filesystem::path unit_copy(const TempDir& dir, const std::string& name, const std::string& packaged,
                                const std::string& program) {
  auto text = read_file(source_path("packaging/systemd/" + name));
  REQUIRE(text.find("ExecStart=" + packaged + " ") != std::string::npos);
  text = std::regex_replace(text, std::regex("ExecStart=" + packaged + " "), "ExecStart=" + program + " ");
  const auto path = dir / name;
  write_file(path, text);
  return path;
}

// `systemd-analyze verify`: man pages are not looked up (none installed in a build tree). It exits
// 0 on a mistyped value and only says so, so anything it says counts as a failure.
dtu::testing::CommandResult verify(const std::filesystem::path& unit) {
  return run_command({"systemd-analyze", "verify", "--man=no", unit.string()}, kToolDeadline);
}

}  // namespace

TEST_CASE("the packaged units pass systemd-analyze verify") {
  TempDir dir("dtu-units");
  for (const auto& [name, packaged, program] :
       {std::tuple{"devmgr.service", "/usr/sbin/devmgr", "devmgr"},
        std::tuple{"dtu-agent.service", "/usr/sbin/dtu-agent", "dtu-agent"}}) {
    const auto unit = unit_copy(dir, name, packaged, binary_path(program));
    const auto r = verify(unit);
    INFO(name, ": ", r.err, r.out);
    CHECK(r.exit_code == 0);
    CHECK(r.err.empty());
  }
}

TEST_CASE("systemd-analyze verify as this test runs it rejects a broken unit") {
  TempDir dir("dtu-units");
  const auto unit = unit_copy(dir, "devmgr.service", "/usr/sbin/devmgr", binary_path("devmgr"));
  write_file(unit, std::regex_replace(read_file(unit), std::regex("Type=notify"), "Type=notifyy"));
  const auto r = verify(unit);
  INFO(r.err);
  CHECK((r.exit_code != 0 || !r.err.empty()));
  CHECK(r.err.find("notifyy") != std::string::npos);
}

TEST_CASE("systemd-analyze security rates devmgr.service OK") {
  TempDir dir("dtu-units");
  const auto unit = unit_copy(dir, "devmgr.service", "/usr/sbin/devmgr", binary_path("devmgr"));
  const auto r =
      run_command({"systemd-analyze", "security", "--offline=true", "--man=no", "--no-pager", unit.string()},
                  kToolDeadline);
  std::smatch level;
  const bool rated = std::regex_search(
      r.out, level, std::regex("Overall exposure level for devmgr\\.service: ([0-9.]+) ([A-Z]+)"));
  if (rated) MESSAGE("devmgr.service exposure: ", level[1].str(), " ", level[2].str());
  INFO(r.out, r.err);
  REQUIRE(rated);
  // systemd's levels: OK (< 2), MEDIUM, EXPOSED, UNSAFE. The packaged unit is meant to stay OK.
  CHECK(level[2].str() == "OK");
}

// The two snippets come from two packages (dtubroker-devmgr, dtubroker-agent); a machine with
// both installed applies both.
TEST_CASE("sysusers creates dtubroker and dtu-agent, and only dtu-agent is in dtu-usb") {
  TempDir root("dtu-sysroot");
  std::filesystem::create_directories(root / "etc");
  const auto r = run_command({"systemd-sysusers", "--root=" + root.path().string(),
                              source_path("packaging/systemd/dtubroker.sysusers").string(),
                              source_path("packaging/systemd/dtu-agent.sysusers").string()},
                             kToolDeadline);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto passwd = read_file(root / "etc/passwd");
  const auto groups = read_file(root / "etc/group");
  INFO(passwd, groups);
  CHECK(std::regex_search(passwd,
                          std::regex("^dtubroker:x:[0-9]+:[0-9]+:[^:]*:/var/lib/dtubroker:/usr/sbin/nologin$",
                                     std::regex::multiline)));
  CHECK(std::regex_search(passwd, std::regex("^dtu-agent:x:[0-9]+:[0-9]+:", std::regex::multiline)));
  CHECK(std::regex_search(groups, std::regex("^dtubroker:x:[0-9]+:$", std::regex::multiline)));
  CHECK(std::regex_search(groups, std::regex("^dtu-usb:x:[0-9]+:dtu-agent$", std::regex::multiline)));
}

TEST_CASE("tmpfiles makes a copied key readable by its daemon's group and nobody else") {
  TempDir root("dtu-sysroot");
  std::filesystem::create_directories(root / "etc/dtubroker");
  auto users = run_command({"systemd-sysusers", "--root=" + root.path().string(),
                            source_path("packaging/systemd/dtubroker.sysusers").string()},
                           kToolDeadline);
  REQUIRE(users.exit_code == 0);
  const auto key = root / "etc/dtubroker/site-dtu.key";
  write_file(key, std::string(64, 'a') + "\n");
  std::filesystem::permissions(key, std::filesystem::perms(0644));
  const auto r = run_command({"systemd-tmpfiles", "--root=" + root.path().string(), "--create",
                              source_path("packaging/systemd/dtubroker.tmpfiles").string()},
                             kToolDeadline);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  struct stat st {};
  REQUIRE(::stat(key.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0640);
  // The group is the root's dtubroker (the scratch /etc/group), not whatever the host calls so.
  std::smatch gid;
  const auto groups = read_file(root / "etc/group");
  REQUIRE(std::regex_search(groups, gid, std::regex("^dtubroker:x:([0-9]+):", std::regex::multiline)));
  CHECK(st.st_gid == static_cast<gid_t>(std::stoul(gid[1].str())));
}

TEST_CASE("the udev rule gives USB device nodes to dtu-usb only") {
  const auto rules = read_file(source_path("packaging/udev/70-dtubroker.rules"));
  CHECK(rules.find("MODE=\"0660\", GROUP=\"dtu-usb\"") != std::string::npos);
  CHECK(rules.find("GROUP=\"dtubroker\"") == std::string::npos);
}
