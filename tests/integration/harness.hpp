// Process harness for integration tests: starts the real programs (devmgr, dtu-agent, ...), waits on
// what they log with deadlines instead of fixed sleeps, and makes sure no daemon outlives its test.
//
// Everything here is used from the test's main thread; none of it is thread-safe. A Process is
// killed when the thread that started it exits (PR_SET_PDEATHSIG), so start daemons from the
// thread that runs the test.
//
// When the running doctest test case has failed, ~Process prints the tail of the program's stderr
// and ~TempDir names the directory it removes, so a CI log shows what the daemons said.
#pragma once

#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

namespace dtu::testing {

// A file descriptor closed at scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// How often the wait functions look again. Short enough to keep tests quick, long enough not to
// spin; a wait never sleeps past its deadline whatever the step.
inline constexpr std::chrono::milliseconds kPollStep{20};

// Extra environment for a child: NAME -> value, added to (or overriding) the test's environment.
using Environment = std::map<std::string, std::string>;

// A temporary directory, removed with everything in it when this object dies, unless the
// environment variable DTU_KEEP_TMP is set (then its path is printed and it stays).
// Declare it before the Processes that write into it, so they stop before it goes.
class TempDir {
 public:
  // Creates $TMPDIR/<prefix>-XXXXXX (or /tmp/...). Throws std::system_error on failure.
  explicit TempDir(std::string_view prefix = "dtu-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
  int uncaught_at_start_ = std::uncaught_exceptions();
};

// One running program. stdout goes to <log_dir>/<name>.out and stderr to <log_dir>/<name>.err;
// stdin is /dev/null. The child leads its own process group, so ~Process also stops whatever it
// started. The child is reaped only by ~Process: until then its pid cannot be reused, so signal()
// is always safe.
class Process {
 public:
  // Starts argv[0] (a path, or a name looked up in PATH) with argv. `name` is the stem of the log
  // files (default: the program's file name; "-2", "-3", ... is appended when taken).
  // REQUIRES: argv is not empty; log_dir exists.
  // Throws std::system_error when the program cannot be started (errno of the exec).
  Process(std::vector<std::string> argv, const std::filesystem::path& log_dir, const Environment& env = {},
          std::string name = {});
  // SIGTERM to the process group, up to kStopGrace for the child to exit, then SIGKILL; reaps it.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Grace given to a child between SIGTERM and SIGKILL at destruction.
  static constexpr std::chrono::milliseconds kStopGrace{3000};

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  const std::filesystem::path& stdout_path() const { return stdout_path_; }
  const std::filesystem::path& stderr_path() const { return stderr_path_; }

  // Waits until a complete line (ending in '\n') of stderr contains a match for `re`
  // (std::regex_search), looking from the start of the log every kPollStep. Returns false when
  // `deadline` passes, or as soon as the program has exited without logging such a line.
  // On success *m (if given) holds the match; it refers into a copy of the line owned by this
  // Process and stays valid until the next wait_for_log.
  bool wait_for_log(const std::regex& re, std::chrono::milliseconds deadline, std::smatch* m = nullptr);

  // Everything the program has written to stderr (resp. stdout) so far.
  std::string log() const;
  std::string out() const;

  // Sends `sig` to the program (not to its children). No effect once it has exited.
  void signal(int sig);

  // Waits up to `deadline` for the program to exit. Returns its exit status, or 128 + the signal
  // that killed it, like a shell; nullopt when it is still running.
  std::optional<int> wait_exit(std::chrono::milliseconds deadline);

  // The exit status (as wait_exit) if the program has exited by now, without waiting.
  std::optional<int> exit_status();

 private:
  void refresh_log() const;

  std::string name_;
  pid_t pid_ = -1;
  std::filesystem::path stdout_path_;
  std::filesystem::path stderr_path_;
  std::optional<int> exit_status_;
  int uncaught_at_start_ = std::uncaught_exceptions();
  mutable std::string log_cache_;  // stderr read so far; the file only grows
  std::string matched_line_;       // what the smatch of the last wait_for_log refers into
};

struct CommandResult {
  int exit_code;  // exit status, 128 + signal, or 124 when the deadline killed it (as timeout(1))
  std::string out;
  std::string err;
};

// Runs argv to completion with stdin from /dev/null and both outputs captured. At the deadline the
// command (its whole process group) is killed and exit_code is 124; what it wrote so far is kept.
// Anything the command leaves running in its process group is killed once it exits.
// REQUIRES: argv is not empty. Throws std::system_error when it cannot be started.
CommandResult run_command(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                          const Environment& env = {});

// The path of a program this build made: "devmgr", "dtu-agent", "dtu-simctl", "devmgrctl",
// "dtu-unit", "dtu-sample-service" or "dtu-fault-workload" (tests/tools/), under the CMake build
// tree (DTU_BINARY_DIR, overridden by the environment variable of that name to test other
// binaries). Throws std::invalid_argument for another name and std::runtime_error when the
// program has not been built.
std::string binary_path(std::string_view name);

// A file of the source tree, e.g. source_path("tests/integration/data/policy.conf").
std::filesystem::path source_path(std::string_view relative);

// True once the test case doctest is running has a failed assertion (false outside doctest).
bool current_test_failed();

// Flushes stdout, where doctest reports (a pipe under ctest, so buffered), before a failed test's
// logs go to stderr: the failed assertion then comes first in the output, not after the logs.
void flush_test_report();

// Calls pred() until it returns true (-> true) or `deadline` passes (-> false), every `step`.
// pred is always tried once more at the deadline; no sleep goes past it.
template <class F>
bool eventually(F pred, std::chrono::milliseconds deadline, std::chrono::milliseconds step = kPollStep) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    if (pred()) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) return false;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(step, end - now));
  }
}

}  // namespace dtu::testing
