// The `dtu` CUPS backend run as cupsd runs it, without cupsd, against real managers and simulated
// DTUs on 127.0.0.140–.149: the device listing of a group, byte-exact jobs from a file and from a
// pipe, a job that waits for a held printer, a job that survives the failover of its DTU's
// manager, the backend(7) exit codes, and the side channel on fd 4.
#include <doctest/doctest.h>

#include <cups/backend.h>
#include <cups/sidechannel.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dtu/common/crypto.hpp"
#include "site.hpp"

using dtu::testing::Environment;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A job's whole run through a healthy site (connect, lease, a few MB in-band).
constexpr std::chrono::milliseconds kJobDeadline{60000};
// The back channel's descriptor in a backend (backend(7)).
constexpr int kBackChannelFd = 3;

std::string backend_path() {
  const char* override_dir = std::getenv("DTU_BINARY_DIR");
  const fs::path root = (override_dir != nullptr && *override_dir != '\0') ? override_dir : DTU_BINARY_DIR;
  const fs::path path = root / "cups" / "backend" / "dtu";
  REQUIRE_MESSAGE(::access(path.c_str(), X_OK) == 0, path.string() << " is not built");
  return path.string();
}

std::string seeded_bytes(std::size_t size, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::string data(size, '\0');
  for (auto& c : data) c = static_cast<char>(random() & 0xff);
  return data;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string hex_of(const std::string& bytes) {
  return dtu::common::to_hex(dtu::common::Bytes(bytes.begin(), bytes.end()));
}

// What the simulated printer on `port` of `agent` has received, as hex.
std::string captured_hex(Site& site, const Site::Agent& agent, const std::string& port) {
  auto captured =
      site.simctl(agent, {"--timeout-ms", "50000", "captured", port, "0x01"});  // MBs of hex: slow under ASan
  REQUIRE(captured.exit_code == 0);
  return json::parse(captured.out).at("hex").get<std::string>();
}

// The state of a unit as `m` lists it ("free", "allocated", …); empty when it does not list it.
std::string unit_state(Site& site, const Site::Manager& m, const std::string& dtu, const std::string& port) {
  const json unit = site.unit(m, dtu, port, 0);
  return unit.is_object() ? unit.value("state", "") : "";
}

std::uint64_t captured_bytes(Site& site, const Site::Agent& agent, const std::string& port) {
  auto captured =
      site.simctl(agent, {"--timeout-ms", "50000", "captured", port, "0x01"});  // MBs of hex: slow under ASan
  REQUIRE(captured.exit_code == 0);
  return json::parse(captured.out).at("bytes").get<std::uint64_t>();
}

// The backend as cupsd starts it: argv "job-id user title copies options [file]", the device URI
// and the manager's socket in the environment, stdin a pipe the test feeds (or /dev/null), and
// optionally one end of a socket pair as fd 4 (the side channel). stdout and stderr go to files
// in `dir`. Killed (SIGKILL) and reaped when the object dies. Main test thread only.
class Backend {
 public:
  struct Options {
    std::vector<std::string> args;  // after argv[0]; empty: the listing
    Environment env;
    bool stdin_pipe = false;
    int side_channel = -1;  // becomes fd 4 of the backend
    int back_channel = -1;  // becomes fd 3 of the backend
  };

  Backend(const fs::path& dir, const std::string& name, const Options& options)
      : out_path_(dir / (name + ".out")), err_path_(dir / (name + ".err")) {
    std::vector<std::string> argv = {backend_path()};
    argv.insert(argv.end(), options.args.begin(), options.args.end());
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      if (!options.env.contains(entry.substr(0, entry.find('=')))) env.push_back(entry);
    }
    for (const auto& [k, v] : options.env) env.push_back(k + "=" + v);
    std::vector<char*> c_argv, c_env;
    for (auto& a : argv) c_argv.push_back(a.data());
    c_argv.push_back(nullptr);
    for (auto& e : env) c_env.push_back(e.data());
    c_env.push_back(nullptr);

    int in_pipe[2] = {-1, -1};
    if (options.stdin_pipe) REQUIRE(::pipe2(in_pipe, O_CLOEXEC) == 0);
    const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(out >= 0);
    REQUIRE(err >= 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int in = options.stdin_pipe ? in_pipe[0] : ::open("/dev/null", O_RDONLY);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(err, 2);
      if (options.side_channel >= 0) ::dup2(options.side_channel, CUPS_SC_FD);
      if (options.back_channel >= 0) ::dup2(options.back_channel, kBackChannelFd);
      for (int fd = 3; fd < 1024; ++fd) {
        const bool keep = (fd == CUPS_SC_FD && options.side_channel >= 0) ||
                          (fd == kBackChannelFd && options.back_channel >= 0);
        if (!keep) ::close(fd);
      }
      ::execve(c_argv[0], c_argv.data(), c_env.data());
      ::_exit(127);
    }
    ::close(out);
    ::close(err);
    if (options.stdin_pipe) {
      ::close(in_pipe[0]);
      stdin_ = in_pipe[1];
    }
  }

  ~Backend() {
    if (!status_) {
      ::kill(pid_, SIGKILL);
      int raw = 0;
      ::waitpid(pid_, &raw, 0);
    }
    close_stdin();
    if (writer_.joinable()) writer_.join();
    if (dtu::testing::current_test_failed()) MESSAGE("backend stderr:\n" << err());
  }
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Writes `bytes` to the backend's stdin from a thread (the pipe blocks until the backend
  // reads); with `then_close`, closes stdin afterwards. REQUIRES: stdin_pipe, no feed running.
  void feed(std::string bytes, bool then_close) {
    if (writer_.joinable()) writer_.join();
    fed_ = false;
    writer_ = std::thread([this, data = std::move(bytes), then_close] {
      std::size_t done = 0;
      while (done < data.size()) {
        const ssize_t n = ::write(stdin_, data.data() + done, data.size() - done);
        if (n <= 0) break;  // the backend has gone (EPIPE; SIGPIPE is ignored)
        done += static_cast<std::size_t>(n);
      }
      if (then_close) {
        ::close(stdin_);
        stdin_ = -1;
      }
      fed_ = true;
    });
  }
  bool wait_fed(std::chrono::milliseconds deadline) {
    return eventually([&] { return fed_.load(); }, deadline);
  }
  void close_stdin() {
    if (writer_.joinable()) writer_.join();
    if (stdin_ >= 0) ::close(stdin_);
    stdin_ = -1;
  }

  std::string out() const { return read_file(out_path_); }
  std::string err() const { return read_file(err_path_); }
  bool wait_for_err(const std::regex& re, std::chrono::milliseconds deadline) {
    return eventually([&] { return std::regex_search(err(), re) || exited(); }, deadline) &&
           std::regex_search(err(), re);
  }
  void signal(int sig) {
    if (!status_) ::kill(pid_, sig);
  }
  // The exit status (128 + signal when killed), once it has exited within `deadline`.
  std::optional<int> wait_exit(std::chrono::milliseconds deadline) {
    eventually([&] { return exited(); }, deadline);
    return status_;
  }

 private:
  bool exited() {
    if (status_) return true;
    int raw = 0;
    if (::waitpid(pid_, &raw, WNOHANG) != pid_) return false;
    status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
    return true;
  }

  fs::path out_path_;
  fs::path err_path_;
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::thread writer_;
  std::atomic<bool> fed_{false};
  std::optional<int> status_;
};

// A job's arguments: job-id user title copies options [file].
std::vector<std::string> job_args(const std::string& id, int copies,
                                  std::optional<fs::path> file = std::nullopt) {
  std::vector<std::string> args = {id, "alice", "test job " + id, std::to_string(copies), ""};
  if (file) args.push_back(file->string());
  return args;
}

Environment job_env(const Site::Manager& m, const std::string& uri) {
  return {{"DTUBROKER_SOCKET", m.socket.string()}, {"DEVICE_URI", uri}};
}

// The test's end of a side-channel socket pair, put on fd 4 for libcups's
// cupsSideChannelWrite/Read (they use that descriptor). fd 4 must be free when it is made — make
// it before anything else of the test opens files (a pipe to the backend's stdin, say), so that
// nothing else lands there — and is closed when it dies.
class SideChannelPeer {
 public:
  // REQUIRES: fd != CUPS_SC_FD. Takes `fd` over.
  explicit SideChannelPeer(int fd) {
    REQUIRE_MESSAGE(::fcntl(CUPS_SC_FD, F_GETFD) == -1, "fd 4 is taken in the test process");
    REQUIRE(::dup3(fd, CUPS_SC_FD, O_CLOEXEC) == CUPS_SC_FD);
    ::close(fd);
  }
  ~SideChannelPeer() { ::close(CUPS_SC_FD); }
  SideChannelPeer(const SideChannelPeer&) = delete;
  SideChannelPeer& operator=(const SideChannelPeer&) = delete;

  struct Reply {
    cups_sc_status_t status = CUPS_SC_STATUS_NONE;
    std::string data;
  };
  // One request and its answer (bounded: libcups waits at most `timeout` seconds for each).
  Reply ask(cups_sc_command_t command, double timeout = 20.0) {
    REQUIRE(cupsSideChannelWrite(command, CUPS_SC_STATUS_NONE, nullptr, 0, timeout) == 0);
    cups_sc_command_t answered = CUPS_SC_CMD_NONE;
    Reply reply;
    char data[2048];
    int length = sizeof(data);
    REQUIRE(cupsSideChannelRead(&answered, &reply.status, data, &length, timeout) == 0);
    CHECK(answered == command);
    reply.data.assign(data, static_cast<std::size_t>(length));
    return reply;
  }
};

}  // namespace

TEST_CASE(
    "the backend without arguments lists every printer unit of the group from the records, leasing none") {
  Site site;
  auto managers = site.start_group({{"m1", "127.0.0.140"}, {"m2", "127.0.0.141"}, {"m3", "127.0.0.142"}});
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  site.start_agent("dtu-a", {managers[0]->address});
  site.start_agent("dtu-b", {managers[1]->address});
  REQUIRE(eventually(
      [&] { return site.devices(*managers[0]).size() == 2 && site.devices(*managers[1]).size() == 2; },
      kSettle));

  Backend backend(site.dir().path(), "listing",
                  {{}, {{"DTUBROKER_SOCKET", managers[2]->socket.string()}}, false, -1, -1});
  REQUIRE(backend.wait_exit(kSettle * 2) == CUPS_BACKEND_OK);
  std::vector<std::string> lines;
  std::istringstream out(backend.out());
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  const std::vector<std::string> expected = {
      R"x(direct dtu://dtu-a/sn=PRN0001/0 "EPSON Stylus Test Printer" "Stylus Test Printer on DTU dtu-a (dtubroker)" "MFG:EPSON;MDL:Stylus Test Printer;CLS:PRINTER;")x",
      R"x(direct dtu://dtu-a/sn=MFP0042/0 "EPSON Test MFP Printer-Scanner-Storage" "Test MFP Printer-Scanner-Storage on DTU dtu-a (dtubroker)" "MFG:EPSON;MDL:Test MFP Printer-Scanner-Storage;CLS:PRINTER;")x",
      R"x(direct dtu://dtu-b/sn=PRN0001/0 "EPSON Stylus Test Printer" "Stylus Test Printer on DTU dtu-b (dtubroker)" "MFG:EPSON;MDL:Stylus Test Printer;CLS:PRINTER;")x",
      R"x(direct dtu://dtu-b/sn=MFP0042/0 "EPSON Test MFP Printer-Scanner-Storage" "Test MFP Printer-Scanner-Storage on DTU dtu-b (dtubroker)" "MFG:EPSON;MDL:Test MFP Printer-Scanner-Storage;CLS:PRINTER;")x",
  };
  CHECK_MESSAGE(lines == expected, backend.out() << backend.err());
  // The listing asked no printer (the device ids come from the records): nothing was leased.
  for (std::size_t owner = 0; owner < 2; ++owner) {
    const std::string dtu = owner == 0 ? "dtu-a" : "dtu-b";
    for (const auto* port : {"1-1", "1-2"}) CHECK(unit_state(site, *managers[owner], dtu, port) == "free");
  }
}

TEST_CASE("a job from a file with two copies and a job from a pipe reach the printer byte-exact") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.143");
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  const std::string file_job = seeded_bytes(1 << 20, 1);
  const fs::path file = site.dir() / "job1.bin";
  std::ofstream(file, std::ios::binary) << file_job;
  {
    Backend job(site.dir().path(), "job1",
                {job_args("1", 2, file), job_env(m, "dtu://dtu-a/sn=PRN0001/0"), false, -1, -1});
    REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_OK);
    CHECK(job.err().find("INFO: dtu: sent " + std::to_string(2 * file_job.size()) + " bytes") !=
          std::string::npos);
  }
  CHECK(captured_hex(site, agent, "1-1") == hex_of(file_job + file_job));

  // From a pipe, as a filter chain hands it over: copies is ignored (the filters made them).
  const std::string piped_job = seeded_bytes((1 << 20) + 12345, 2);
  Backend job(site.dir().path(), "job2", {job_args("2", 3), job_env(m, "dtu://dtu-a/1-2/0"), true, -1, -1});
  job.feed(piped_job, true);
  REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_OK);
  CHECK(captured_hex(site, agent, "1-2") == hex_of(piped_job));
  CHECK(unit_state(site, m, "dtu-a", "1-2") == "free");
}

TEST_CASE("a job for a held printer waits naming the holder and prints when it is released") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.144");
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  Process holder({dtu::testing::binary_path("devmgrctl"), "--socket", m.socket.string(), "allocate", "--dtu",
                  "dtu-a", "--device", "1-1", "--unit", "0", "--hold"},
                 site.dir().path());
  REQUIRE(eventually([&] { return unit_state(site, m, "dtu-a", "1-1") == "allocated"; }, kSettle));

  const std::string data = seeded_bytes(300000, 3);
  const fs::path file = site.dir() / "job.bin";
  std::ofstream(file, std::ios::binary) << data;
  Backend job(site.dir().path(), "job",
              {job_args("7", 1, file), job_env(m, "dtu://dtu-a/sn=PRN0001/0"), false, -1, -1});
  CHECK(job.wait_for_err(std::regex("STATE: \\+connecting-to-device"), kSettle));
  CHECK(job.wait_for_err(std::regex("INFO: Waiting for printer .*: in use by devmgrctl\\[[0-9]+\\]@m1"),
                         kSettle));
  CHECK_FALSE(job.wait_exit(0ms));
  CHECK(captured_bytes(site, agent, "1-1") == 0);

  // A second job waits too; cancelled (SIGTERM, as cupsd cancels), it ends cleanly and prints
  // nothing.
  const fs::path other = site.dir() / "cancelled.bin";
  std::ofstream(other, std::ios::binary) << "never printed";
  Backend cancelled(site.dir().path(), "cancelled",
                    {job_args("8", 1, other), job_env(m, "dtu://dtu-a/sn=PRN0001/0"), false, -1, -1});
  CHECK(cancelled.wait_for_err(std::regex("INFO: Waiting for printer .*: in use by devmgrctl"), kSettle));
  cancelled.signal(SIGTERM);
  CHECK(cancelled.wait_exit(kSettle) == CUPS_BACKEND_OK);
  CHECK(cancelled.err().find("INFO: dtu: job 8 cancelled") != std::string::npos);

  holder.signal(SIGTERM);  // devmgrctl --hold releases and exits
  REQUIRE(holder.wait_exit(kSettle) == 0);
  REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_OK);
  CHECK(job.err().find("STATE: -connecting-to-device") != std::string::npos);
  CHECK(captured_hex(site, agent, "1-1") == hex_of(data));
}

TEST_CASE("a 20 MB job from m3 survives the SIGKILL of m1, the manager of the printer's DTU") {
  Site site;
  // Long heartbeats: m1's death is seen at once (its sockets close), and reading back up to 20 MB
  // of capture as hex blocks the simulated DTU's event loop for seconds in a Debug+ASan build —
  // with the tests' 600 ms timeout its manager declared it lost mid-job (CI, test-asan).
  site.set_heartbeat(1000, 15);
  auto managers = site.start_group({{"m1", "127.0.0.145"}, {"m2", "127.0.0.146"}, {"m3", "127.0.0.147"}});
  auto& m1 = *managers[0];
  auto& m3 = *managers[2];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  auto& agent = site.start_agent("dtu-a", {m1.address, managers[1]->address});
  REQUIRE(eventually([&] { return site.devices(m1).size() == 2; }, kSettle));

  const std::string data = seeded_bytes(20 << 20, 4);
  const std::size_t half = data.size() / 2;
  Backend job(site.dir().path(), "job",
              {job_args("20", 1), job_env(m3, "dtu://dtu-a/sn=PRN0001/0"), true, -1, -1});
  job.feed(data.substr(0, half), false);
  // The first half is through (the pipe holds back the second until we write it).
  REQUIRE(job.wait_fed(kJobDeadline));
  // Some bytes are through: the backend reports what the DTU acknowledged. (Not by reading the
  // capture back: megabytes of hex keep the simulated DTU busy for seconds in a sanitizer build,
  // long enough for the job's in-band channel to declare it silent.)
  REQUIRE(job.wait_for_err(std::regex("DEBUG: dtu: sent [0-9]+ bytes"), kJobDeadline));

  site.kill_manager(m1);
  // The DTU re-homes to m2; the job's channel to the DTU never depended on m1.
  REQUIRE(eventually(
      [&] {
        auto owners = site.devmgrctl(m3, {"devices", "--group", "--json"});
        if (owners.exit_code != 0) return false;
        for (const auto& d : json::parse(owners.out)) {
          if (d.at("dtu") == "dtu-a" && d.value("owner", "") == "m2" && !d.value("orphaned", false))
            return true;
        }
        return false;
      },
      kJobDeadline));
  job.feed(data.substr(half), true);
  REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_OK);
  CHECK(captured_hex(site, agent, "1-1") == hex_of(data));
}

TEST_CASE(
    "backend exit codes: retry when no manager answers, stop for a printer no DTU has and for a bad URI") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.148");
  auto& agent_a = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  const fs::path file = site.dir() / "job.bin";
  std::ofstream(file, std::ios::binary) << "page\f";

  SUBCASE("no manager at the socket: retry later") {
    Backend job(site.dir().path(), "unreachable",
                {job_args("1", 1, file),
                 {{"DTUBROKER_SOCKET", (site.dir() / "nobody.sock").string()},
                  {"DEVICE_URI", "dtu://dtu-a/sn=PRN0001/0"}},
                 false,
                 -1,
                 -1});
    REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_RETRY);
    CHECK(job.err().find("STATE: +connecting-to-device") != std::string::npos);
    CHECK(job.err().find("no dtubroker manager answers at") != std::string::npos);
  }
  SUBCASE("a serial no DTU has: stop the queue") {
    Backend job(site.dir().path(), "gone",
                {job_args("2", 1, file), job_env(m, "dtu://dtu-a/sn=NOPE0000/0"), false, -1, -1});
    REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_STOP);
    CHECK(job.err().find("ERROR: dtu: printer dtu://dtu-a/sn=NOPE0000/0 is no longer attached") !=
          std::string::npos);
  }
  SUBCASE("a serial on no named DTU but on several others: retry later, naming them, printing nowhere") {
    auto& agent_b = site.start_agent("dtu-b", {m.address});  // the same printers, serial numbers included
    REQUIRE(eventually([&] { return site.devices(m).size() == 4; }, kSettle));
    Backend job(site.dir().path(), "ambiguous",
                {job_args("5", 1, file), job_env(m, "dtu://dtu-c/sn=PRN0001/0"), false, -1, -1});
    REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_RETRY);
    CHECK_MESSAGE(
        job.err().find("ERROR: dtu: printer dtu://dtu-c/sn=PRN0001/0 is not on DTU dtu-c and 2 printers "
                       "elsewhere have serial number PRN0001 (DTU dtu-a port 1-1, DTU dtu-b port 1-1)") !=
            std::string::npos,
        job.err());
    CHECK(captured_hex(site, agent_a, "1-1").empty());
    CHECK(captured_hex(site, agent_b, "1-1").empty());
  }
  SUBCASE("a DTU that is not in the group: retry later") {
    Backend job(site.dir().path(), "off",
                {job_args("3", 1, file), job_env(m, "dtu://dtu-off/1-1/0"), false, -1, -1});
    REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_RETRY);
    CHECK(job.err().find("DTU dtu-off is not connected to the group") != std::string::npos);
  }
  SUBCASE("a malformed URI: stop the queue, saying what is wrong") {
    Backend job(site.dir().path(), "bad",
                {job_args("4", 1, file), job_env(m, "dtu://dtu-a/1-1/first"), false, -1, -1});
    REQUIRE(job.wait_exit(kSettle) == CUPS_BACKEND_STOP);
    CHECK(
        job.err().find("ERROR: dtu: bad printer URI 'dtu://dtu-a/1-1/first': unit 'first' is not a number") !=
        std::string::npos);
  }
}

TEST_CASE(
    "while a job prints the side channel answers device id, connection, state, drain and soft reset, and "
    "back-channel data arrives") {
  std::signal(SIGPIPE, SIG_IGN);
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.149");
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));

  int pair[2] = {-1, -1};
  REQUIRE(::socketpair(AF_LOCAL, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  for (int& fd : pair) {  // away from fd 4, which SideChannelPeer swaps
    const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
    REQUIRE(moved >= 10);
    ::close(fd);
    fd = moved;
  }
  SideChannelPeer peer(pair[0]);
  int back[2] = {-1, -1};  // the back channel: the backend writes fd 3, the test reads
  REQUIRE(::pipe2(back, O_CLOEXEC | O_NONBLOCK) == 0);
  Backend job(site.dir().path(), "job",
              {job_args("9", 1), job_env(m, "dtu://dtu-a/sn=PRN0001/0"), true, pair[1], back[1]});
  ::close(pair[1]);
  ::close(back[1]);

  const std::string first = seeded_bytes(100000, 5);
  job.feed(first, false);
  REQUIRE(job.wait_fed(kJobDeadline));
  REQUIRE(eventually([&] { return captured_bytes(site, agent, "1-1") == first.size(); }, kJobDeadline));

  auto connected = peer.ask(CUPS_SC_CMD_GET_CONNECTED);
  CHECK(connected.status == CUPS_SC_STATUS_OK);
  CHECK(connected.data == std::string(1, '\1'));
  auto id = peer.ask(CUPS_SC_CMD_GET_DEVICE_ID);
  CHECK(id.status == CUPS_SC_STATUS_OK);
  CHECK(id.data == "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;");
  auto state = peer.ask(CUPS_SC_CMD_GET_STATE);
  CHECK(state.status == CUPS_SC_STATUS_OK);
  REQUIRE(state.data.size() == 1);
  CHECK((state.data[0] & CUPS_SC_STATE_ONLINE) != 0);
  // The simulated printer STALLs printer-class SOFT_RESET.
  CHECK(peer.ask(CUPS_SC_CMD_SOFT_RESET).status == CUPS_SC_STATUS_NOT_IMPLEMENTED);
  CHECK(peer.ask(CUPS_SC_CMD_GET_BIDI).status == CUPS_SC_STATUS_NOT_IMPLEMENTED);

  // What the printer says on its IN endpoint reaches the back channel.
  REQUIRE(site.simctl(agent, {"feed", "1-1", "0x82", hex_of("@PJL INFO STATUS\r\n")}).exit_code == 0);
  std::string back_data;
  CHECK(eventually(
      [&] {
        char buffer[256];
        const ssize_t n = ::read(back[0], buffer, sizeof(buffer));
        if (n > 0) back_data.append(buffer, static_cast<std::size_t>(n));
        return back_data == "@PJL INFO STATUS\r\n";
      },
      kSettle));
  ::close(back[0]);

  // Drain: answered once every byte handed over so far is on the printer.
  const std::string second = seeded_bytes(500000, 6);
  job.feed(second, false);
  REQUIRE(job.wait_fed(kJobDeadline));
  REQUIRE(job.wait_for_err(std::regex("DEBUG: dtu: sent "), kSettle));
  CHECK(peer.ask(CUPS_SC_CMD_DRAIN_OUTPUT).status == CUPS_SC_STATUS_OK);
  job.close_stdin();
  REQUIRE(job.wait_exit(kJobDeadline) == CUPS_BACKEND_OK);
  CHECK(captured_hex(site, agent, "1-1") == hex_of(first + second));
}
