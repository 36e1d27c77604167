// The integration harness checked against /bin/sh, so that a failing integration test means the
// daemons, not the harness.
#include "harness.hpp"

#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <stdexcept>
#include <string>
#include <system_error>

namespace {

using dtu::testing::Process;
using dtu::testing::TempDir;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Slack allowed over a deadline before a wait counts as overrunning it (loaded CI machines).
constexpr auto kSlack = 1500ms;

// True when `pid` no longer runs: it does not exist, or it is a zombie its parent (init, for an
// orphan) has not reaped yet.
bool process_is_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto paren = line.rfind(')');  // "pid (comm) state ...": comm may hold spaces
  return paren != std::string::npos && line.compare(paren, 3, ") Z") == 0;
}

TEST_CASE("Process finds a line its program logs to stderr") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo starting >&2; echo 'hello port=4711' >&2; sleep 5"}, dir.path());
  std::smatch m;
  REQUIRE(sh.wait_for_log(std::regex(R"(hello port=(\d+))"), 5s, &m));
  CHECK(m[1] == "4711");
  CHECK(sh.log() == "starting\nhello port=4711\n");
  CHECK(sh.stderr_path() == dir / "sh.err");
}

TEST_CASE("Process reports the signal that ended its program as 128 + signal") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo hello >&2; sleep 5"}, dir.path());
  REQUIRE(sh.wait_for_log(std::regex("hello"), 5s));
  CHECK_FALSE(sh.exit_status().has_value());
  sh.signal(SIGTERM);
  CHECK(sh.wait_exit(5s) == 128 + SIGTERM);
}

TEST_CASE("Process reports its program's exit code") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo out; exit 3"}, dir.path());
  CHECK(sh.wait_exit(5s) == 3);
  CHECK(sh.out() == "out\n");
}

TEST_CASE("wait_for_log gives up at its deadline") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo hello >&2; sleep 5"}, dir.path());
  const auto start = Clock::now();
  CHECK_FALSE(sh.wait_for_log(std::regex("never logged"), 200ms));
  const auto took = Clock::now() - start;
  CHECK(took >= 200ms);
  CHECK(took < 200ms + kSlack);
}

TEST_CASE("wait_for_log gives up as soon as the program has exited") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo bye >&2; exit 1"}, dir.path());
  const auto start = Clock::now();
  CHECK_FALSE(sh.wait_for_log(std::regex("never logged"), 10s));
  CHECK(Clock::now() - start < kSlack);
  CHECK(sh.wait_for_log(std::regex("^bye$"), 0ms));
}

TEST_CASE("wait_for_log ignores a line still being written") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "printf 'port=12' >&2; sleep 5"}, dir.path());
  REQUIRE(dtu::testing::eventually([&] { return !sh.log().empty(); }, 5s));
  CHECK_FALSE(sh.wait_for_log(std::regex(R"(port=\d+)"), 100ms));
}

TEST_CASE("Process passes extra environment to its program") {
  TempDir dir;
  Process sh({"/bin/sh", "-c", "echo \"value=$DTU_SELFTEST\" >&2; sleep 5"}, dir.path(),
             {{"DTU_SELFTEST", "42"}});
  CHECK(sh.wait_for_log(std::regex("^value=42$"), 5s));
}

TEST_CASE("Process gives two programs of one name their own logs") {
  TempDir dir;
  Process first({"/bin/sh", "-c", "echo first >&2; sleep 5"}, dir.path());
  Process second({"/bin/sh", "-c", "echo second >&2; sleep 5"}, dir.path());
  CHECK(first.name() == "sh");
  CHECK(second.name() == "sh-2");
  CHECK(second.wait_for_log(std::regex("^second$"), 5s));
  CHECK_FALSE(second.wait_for_log(std::regex("first"), 0ms));
}

TEST_CASE("Process looks a bare program name up on PATH") {
  TempDir dir;
  Process sleeper({"sleep", "5"}, dir.path());
  CHECK_FALSE(sleeper.wait_exit(50ms).has_value());
}

TEST_CASE("Process throws when the program cannot be started") {
  TempDir dir;
  CHECK_THROWS_AS(Process({"/nonexistent/dtu-program"}, dir.path()), std::system_error);
  CHECK_THROWS_AS(Process({"no-such-program-on-path"}, dir.path()), std::system_error);
}

TEST_CASE("A destroyed Process leaves nothing of its process group running") {
  TempDir dir;
  pid_t pid = 0;
  pid_t child = 0;
  Clock::time_point stopping;
  {
    // A grandchild of the test, in the program's process group: ~Process must stop it too.
    Process sh({"/bin/sh", "-c", "sleep 30 & echo child=$! >&2; wait"}, dir.path());
    std::smatch m;
    REQUIRE(sh.wait_for_log(std::regex(R"(child=(\d+))"), 5s, &m));
    pid = sh.pid();
    child = static_cast<pid_t>(std::stoi(m[1]));
    stopping = Clock::now();
  }
  CHECK(Clock::now() - stopping < kSlack);  // the shell obeyed SIGTERM: no wait for kStopGrace
  CHECK(process_is_gone(pid));
  // The grandchild is not ours to reap: it dies once the kernel delivers its SIGKILL.
  CHECK(dtu::testing::eventually([&] { return process_is_gone(child); }, 5s));
}

TEST_CASE("run_command captures output and the exit code") {
  const auto r = dtu::testing::run_command({"/bin/sh", "-c", "echo out; echo err >&2; exit 7"}, 5s);
  CHECK(r.exit_code == 7);
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
}

TEST_CASE("run_command passes extra environment") {
  const auto r =
      dtu::testing::run_command({"/bin/sh", "-c", "echo $DTU_SELFTEST"}, 5s, {{"DTU_SELFTEST", "x"}});
  CHECK(r.exit_code == 0);
  CHECK(r.out == "x\n");
}

TEST_CASE("run_command kills a command at its deadline and reports 124") {
  const auto start = Clock::now();
  const auto r = dtu::testing::run_command({"/bin/sh", "-c", "echo partial; sleep 10"}, 300ms);
  const auto took = Clock::now() - start;
  CHECK(r.exit_code == 124);
  CHECK(r.out == "partial\n");
  CHECK(took >= 300ms);
  CHECK(took < 300ms + kSlack);
}

TEST_CASE("run_command reports a plain sleep 10 as timed out within its deadline") {
  const auto start = Clock::now();
  CHECK(dtu::testing::run_command({"sleep", "10"}, 200ms).exit_code == 124);
  CHECK(Clock::now() - start < 200ms + kSlack);
}

TEST_CASE("run_command does not wait for what a command left running") {
  const auto start = Clock::now();
  const auto r = dtu::testing::run_command({"/bin/sh", "-c", "sleep 30 & echo done"}, 10s);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "done\n");
  CHECK(Clock::now() - start < kSlack);
}

TEST_CASE("TempDir removes its directory and everything in it") {
  std::filesystem::path path;
  {
    TempDir dir("dtu-selftest");
    path = dir.path();
    REQUIRE(std::filesystem::is_directory(path));
    std::filesystem::create_directories(dir / "a" / "b");
  }
  if (std::getenv("DTU_KEEP_TMP") == nullptr) CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("eventually is true once the predicate holds and false at the deadline") {
  int calls = 0;
  CHECK(dtu::testing::eventually([&] { return ++calls == 3; }, 5s, 1ms));
  CHECK(calls == 3);
  const auto start = Clock::now();
  CHECK_FALSE(dtu::testing::eventually([] { return false; }, 100ms));
  CHECK(Clock::now() - start >= 100ms);
}

TEST_CASE("binary_path finds each program of this build") {
  // CMake builds them before this test (add_dependencies in tests/integration/CMakeLists.txt).
  for (const char* program : {"devmgr", "dtu-agent", "dtu-simctl", "devmgrctl"}) {
    CAPTURE(program);
    CHECK(std::filesystem::is_regular_file(dtu::testing::binary_path(program)));
  }
}

TEST_CASE("binary_path knows the project's programs by name only") {
  CHECK_THROWS_AS(dtu::testing::binary_path("bash"), std::invalid_argument);
}

}  // namespace
