// Configuration as an operator meets it: a JSON file, flags that override it, and errors that
// say which file, which key and what was expected.
#include <doctest/doctest.h>

#include <fstream>

#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::run_command;
using dtu::testing::Site;

namespace {

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

constexpr std::chrono::milliseconds kExitDeadline{10000};

}  // namespace

TEST_CASE("devmgr reads its config file and flags override it") {
  Site site;
  const auto config = site.dir() / "devmgr.json";
  write_file(config, R"({"id": "from-file", "dtu_listen": "127.0.0.7:0", "heartbeat_interval": "750ms",
                         "socket": ")" + (site.dir() / "m.sock").string() + R"(",
                         "site_dtu_key_file": ")" + site.site_key().string() + R"("})");
  Process m({binary_path("devmgr"), "--config", config.string(), "--id", "from-flag"}, site.dir().path());
  CHECK(m.wait_for_log(std::regex(" listening id=from-flag dtu=127\\.0\\.0\\.7:[0-9]+ .*heartbeat_ms=750 "), kSettle));
}

TEST_CASE("a devmgr config error names the file and the key, and devmgr exits 1") {
  Site site;
  const auto config = site.dir() / "bad.json";
  write_file(config, R"({"id": "m1", "heartbeat_misses": "three"})");
  auto r = run_command({binary_path("devmgr"), "--config", config.string()}, kExitDeadline);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("config_error") != std::string::npos);
  CHECK(r.err.find("bad.json: key 'heartbeat_misses'") != std::string::npos);
}

TEST_CASE("a config file that is not JSON is reported with its line and column") {
  Site site;
  const auto config = site.dir() / "broken.json";
  write_file(config, "{\n  \"id\": \"m1\",\n  oops\n}\n");
  auto r = run_command({binary_path("devmgr"), "--config", config.string()}, kExitDeadline);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("broken.json:3:") != std::string::npos);
}

TEST_CASE("dtu-agent refuses to start without a readable key and says which file") {
  Site site;
  auto r = run_command({binary_path("dtu-agent"), "--id", "dtu-1", "--manager", "127.0.0.7:1", "--key",
                        (site.dir() / "missing.key").string(), "--backend", "sim", "--sim-devices",
                        dtu::testing::source_path("demo/sim-devices.json").string()},
                       kExitDeadline);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("missing.key") != std::string::npos);
}

TEST_CASE("devmgrctl says how to reach the manager when nothing listens") {
  Site site;
  auto r = run_command({binary_path("devmgrctl"), "--socket", (site.dir() / "nobody.sock").string(), "devices"},
                       kExitDeadline);
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("nobody.sock") != std::string::npos);
  CHECK(r.err.find("--socket") != std::string::npos);
}
