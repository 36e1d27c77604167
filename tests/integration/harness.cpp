#include "harness.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <system_error>
#include <utility>

#ifndef DTU_BINARY_DIR
#error "DTU_BINARY_DIR (the CMake build tree) must be defined"
#endif
#ifndef DTU_SOURCE_DIR
#error "DTU_SOURCE_DIR (the source tree) must be defined"
#endif

extern char** environ;

namespace dtu::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Lines of a program's stderr printed when a test fails.
constexpr std::size_t kTailLines = 40;

// Set by the doctest listener below while the current test case has a failed check.
bool g_test_failed = false;

class FailureListener : public doctest::IReporter {
 public:
  explicit FailureListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { g_test_failed = false; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override { g_test_failed = true; }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& data) override {
    if (data.m_failed && (data.m_at & doctest::assertType::is_warn) == 0) g_test_failed = true;
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

[[noreturn]] void throw_errno(const std::string& what, int err = errno) {
  throw std::system_error(err, std::system_category(), what);
}

std::pair<Fd, Fd> make_pipe() {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) throw_errno("pipe2");
  return {Fd(fds[0]), Fd(fds[1])};
}

// The program execve() should run: argv0 itself when it holds a '/', else the first executable of
// that name on PATH (the child's PATH when the caller overrides it).
std::string resolve_program(const std::string& argv0, const Environment& env) {
  if (argv0.find('/') != std::string::npos) return argv0;
  std::string path_list = "/usr/local/bin:/usr/bin:/bin";
  if (const auto it = env.find("PATH"); it != env.end()) {
    path_list = it->second;
  } else if (const char* p = std::getenv("PATH")) {
    path_list = p;
  }
  std::size_t begin = 0;
  for (;;) {
    const std::size_t end = path_list.find(':', begin);
    std::string dir = path_list.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + argv0;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  throw_errno("cannot start " + argv0 + ": not found on PATH", ENOENT);
}

// The exit status of `pid` if it has exited, as a shell reports it (128 + signal when killed),
// without reaping it: an unreaped child keeps its pid and process group id ours. -1 when the child
// is gone already (reaped behind our back).
std::optional<int> peek_exit(pid_t pid) {
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno != EINTR) return -1;
  }
  if (info.si_pid != pid) return std::nullopt;
  return info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
}

// Waits for `pid` to end and frees its pid; returns its status as peek_exit does.
int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Starts argv in a new process group with stdin from /dev/null and stdout/stderr on the given
// descriptors. Returns once the program has been exec'd; throws when exec fails.
pid_t spawn(const std::vector<std::string>& argv, const Environment& env, int out_fd, int err_fd) {
  if (argv.empty()) throw std::invalid_argument("spawn: empty argv");
  const std::string program = resolve_program(argv[0], env);

  // Everything the child needs is built here: between fork and exec only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (!env.contains(std::string(entry.substr(0, entry.find('='))))) env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  std::vector<std::string> arg_strings = argv;
  std::vector<char*> c_argv;
  for (auto& a : arg_strings) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  std::vector<char*> c_env;
  for (auto& e : env_strings) c_env.push_back(e.data());
  c_env.push_back(nullptr);

  const Fd null_in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_in.get() < 0) throw_errno("open /dev/null");
  auto [err_pipe_r, err_pipe_w] = make_pipe();  // carries errno when exec fails; EOF when it worked
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    const int report_fd = err_pipe_w.get();
    ::setpgid(0, 0);
    // Die with the test: a crashed or killed test runner leaves no daemon behind.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
    if (::dup2(null_in.get(), 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) {
      const int e = errno;
      [[maybe_unused]] auto n = ::write(report_fd, &e, sizeof e);
      ::_exit(127);
    }
    // Descriptors the test holds (its sockets, say) must not leak into the daemon.
    const auto last = static_cast<unsigned>(report_fd);
    if ((last > 3 && ::close_range(3, last - 1, 0) != 0) || ::close_range(last + 1, ~0U, 0) != 0) {
      for (int fd = 3; fd < 1024; ++fd) {
        if (fd != report_fd) ::close(fd);
      }
    }
    ::execve(program.c_str(), c_argv.data(), c_env.data());
    const int e = errno;
    [[maybe_unused]] auto n = ::write(report_fd, &e, sizeof e);
    ::_exit(127);
  }

  err_pipe_w.reset();
  int exec_errno = 0;
  ssize_t n;
  while ((n = ::read(err_pipe_r.get(), &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  if (n > 0) {
    reap(pid);
    throw_errno("cannot start " + program, exec_errno);
  }
  return pid;
}

void drain(int fd, std::string& into) {
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n > 0) {
      into.append(buf.data(), static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      return;
    }
  }
}

std::string read_file(const fs::path& path, std::size_t from = 0) {
  std::string text;
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() >= 0 && ::lseek(fd.get(), static_cast<off_t>(from), SEEK_SET) >= 0) drain(fd.get(), text);
  return text;
}

// The last `count` lines of text, without the final newline.
std::string last_lines(const std::string& text, std::size_t count) {
  std::size_t end = text.size();
  if (end > 0 && text[end - 1] == '\n') --end;
  std::size_t begin = end;
  for (std::size_t lines = 0; begin > 0; --begin) {
    if (text[begin - 1] == '\n' && ++lines == count) break;
  }
  return text.substr(begin, end - begin);
}

}  // namespace
}  // namespace dtu::testing

DOCTEST_REGISTER_LISTENER("dtu-failure-tracker", 1, dtu::testing::FailureListener);

namespace dtu::testing {

bool current_test_failed() {
  return g_test_failed;
}

void flush_test_report() {
  std::fflush(stdout);
}

TempDir::TempDir(std::string_view prefix) {
  const char* tmp = std::getenv("TMPDIR");
  const fs::path base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  std::string pattern = (base / (std::string(prefix) + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) throw_errno("mkdtemp " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  if (std::getenv("DTU_KEEP_TMP") != nullptr) {
    std::fprintf(stderr, "[harness] kept %s (DTU_KEEP_TMP)\n", path_.c_str());
    return;
  }
  if (current_test_failed() || std::uncaught_exceptions() > uncaught_at_start_) {
    flush_test_report();
    std::fprintf(stderr, "[harness] removing %s of a failed test; set DTU_KEEP_TMP=1 to keep it\n",
                 path_.c_str());
  }
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

Process::Process(std::vector<std::string> argv, const fs::path& log_dir, const Environment& env,
                 std::string name)
    : name_(std::move(name)) {
  if (argv.empty()) throw std::invalid_argument("Process: empty argv");
  if (name_.empty()) name_ = fs::path(argv[0]).filename().string();

  // Claim <name>.err (O_EXCL), so two programs of one name in one directory get separate logs.
  Fd err_fd;
  const std::string stem = name_;
  for (int n = 2;; ++n) {
    stderr_path_ = log_dir / (name_ + ".err");
    err_fd = Fd(::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (err_fd.get() >= 0) break;
    if (errno != EEXIST) throw_errno("open " + stderr_path_.string());
    name_ = stem + "-" + std::to_string(n);
  }
  stdout_path_ = log_dir / (name_ + ".out");
  const Fd out_fd(::open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out_fd.get() < 0) throw_errno("open " + stdout_path_.string());

  pid_ = spawn(argv, env, out_fd.get(), err_fd.get());
}

Process::~Process() {
  // -1: reaped behind our back (SIGCHLD ignored?); its pid may be someone else's now.
  if (pid_ <= 0 || exit_status() == -1) return;
  if (!exit_status()) {
    ::kill(-pid_, SIGTERM);
    if (!wait_exit(kStopGrace)) {
      std::fprintf(stderr, "[harness] %s (pid %d) ignored SIGTERM for %lld ms; killing it\n", name_.c_str(),
                   pid_, static_cast<long long>(kStopGrace.count()));
    }
  }
  // Whatever is left of its process group; the group id is still ours while the child is unreaped.
  ::kill(-pid_, SIGKILL);
  const int status = reap(pid_);
  if (!exit_status_) exit_status_ = status;

  if (current_test_failed() || std::uncaught_exceptions() > uncaught_at_start_) {
    refresh_log();
    flush_test_report();
    std::fprintf(
        stderr, "[harness] ---- %s (pid %d, exit %d) stderr %s, last %zu lines:\n%s\n[harness] ---- end %s\n",
        name_.c_str(), pid_, exit_status_.value_or(-1), stderr_path_.c_str(), kTailLines,
        last_lines(log_cache_, kTailLines).c_str(), name_.c_str());
  }
}

std::optional<int> Process::exit_status() {
  if (!exit_status_) exit_status_ = peek_exit(pid_);
  return exit_status_;
}

std::optional<int> Process::wait_exit(std::chrono::milliseconds deadline) {
  eventually([this] { return exit_status().has_value(); }, deadline);
  return exit_status_;
}

void Process::signal(int sig) {
  // Safe after exit too: the child stays unreaped (a zombie) until ~Process, so its pid is not reused.
  ::kill(pid_, sig);
}

void Process::refresh_log() const {
  log_cache_ += read_file(stderr_path_, log_cache_.size());
}

std::string Process::log() const {
  refresh_log();
  return log_cache_;
}

std::string Process::out() const {
  return read_file(stdout_path_);
}

bool Process::wait_for_log(const std::regex& re, std::chrono::milliseconds deadline, std::smatch* m) {
  const auto end = Clock::now() + deadline;
  std::size_t scanned = 0;  // log_cache_ before this offset holds no match
  for (;;) {
    const bool exited = exit_status().has_value();  // before reading: its last words are then in the file
    refresh_log();
    for (std::size_t nl; (nl = log_cache_.find('\n', scanned)) != std::string::npos; scanned = nl + 1) {
      std::string line = log_cache_.substr(scanned, nl - scanned);
      if (!std::regex_search(line, re)) continue;
      matched_line_ = std::move(line);
      if (m != nullptr) std::regex_search(matched_line_, *m, re);
      return true;
    }
    const auto now = Clock::now();
    if (exited || now >= end) return false;
    std::this_thread::sleep_for(std::min<Clock::duration>(kPollStep, end - now));
  }
}

CommandResult run_command(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                          const Environment& env) {
  const auto end = Clock::now() + deadline;
  auto [out_r, out_w] = make_pipe();
  auto [err_r, err_w] = make_pipe();
  const pid_t pid = spawn(argv, env, out_w.get(), err_w.get());
  out_w.reset();
  err_w.reset();

  CommandResult result{0, {}, {}};
  std::array<pollfd, 2> fds{{{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}}};
  std::array<std::string*, 2> sinks{&result.out, &result.err};
  std::optional<int> status;
  for (;;) {
    if (!status && (status = peek_exit(pid))) ::kill(-pid, SIGKILL);  // it is done: stop what it left behind
    if (status && fds[0].fd < 0 && fds[1].fd < 0) break;
    const auto now = Clock::now();
    if (now >= end) break;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(end - now);
    const auto wait = std::min<std::chrono::milliseconds>(left, kPollStep);
    if (::poll(fds.data(), fds.size(), static_cast<int>(wait.count())) < 0 && errno != EINTR) {
      throw_errno("poll");
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      std::array<char, 4096> buf{};
      const ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
      if (n > 0) {
        sinks[i]->append(buf.data(), static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;  // EOF; the Fd closes it
      }
    }
  }
  if (!status) ::kill(-pid, SIGKILL);  // the deadline passed
  reap(pid);
  // Keep what was already written but not yet read; nothing here blocks on a straggler.
  for (std::size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].fd < 0) continue;
    ::fcntl(fds[i].fd, F_SETFL, O_NONBLOCK);
    drain(fds[i].fd, *sinks[i]);
  }
  result.exit_code = status ? *status : 124;
  return result;
}

std::string binary_path(std::string_view name) {
  static const std::map<std::string_view, std::string_view> kPrograms = {
      {"devmgr", "devmgr/devmgr"},
      {"dtu-agent", "dtu-agent/dtu-agent"},
      {"dtu-simctl", "dtu-agent/dtu-simctl"},
      {"devmgrctl", "services/devmgrctl"},
      {"dtu-unit", "services/dtu-unit"},
      {"dtu-sample-service", "services/dtu-sample-service"},
      {"dtu-fault-workload", "tests/tools/dtu-fault-workload"},
  };
  const auto it = kPrograms.find(name);
  if (it == kPrograms.end()) throw std::invalid_argument("binary_path: unknown program " + std::string(name));
  const char* override_dir = std::getenv("DTU_BINARY_DIR");
  const fs::path root = (override_dir != nullptr && *override_dir != '\0') ? override_dir : DTU_BINARY_DIR;
  const fs::path path = root / it->second;
  if (::access(path.c_str(), X_OK) != 0) {
    throw std::runtime_error("binary_path: " + path.string() +
                             " is not built (cmake --build the tree first)");
  }
  return path.string();
}

fs::path source_path(std::string_view relative) {
  return fs::path(DTU_SOURCE_DIR) / relative;
}

}  // namespace dtu::testing
