// Printing through CUPS with real processes on 127.0.0.150–.159 (issue 7): a private cupsd
// (cups_site.hpp) whose `dtu` backend runs as lp against a manager of the group, simulated DTU
// printers (demo/sim-devices.json: 1-1 serial PRN0001, 1-2 unit 0 serial MFP0042) whose captured
// bytes dtu-simctl shows, and dtu-print keeping queues in that cupsd.
#include <doctest/doctest.h>

#include <signal.h>

#include <csignal>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cups_site.hpp"
#include "site.hpp"

using dtu::testing::CommandResult;
using dtu::testing::CupsSite;
using dtu::testing::eventually;
using dtu::testing::kCupsDeadline;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The managers' socket must be reachable by the backend, which runs as lp.
const std::vector<std::string> kLpReachable = {"--socket-mode", "0666"};
// A print job of a few hundred KiB goes through in well under this on a healthy site.
constexpr std::chrono::milliseconds kJobDeadline{60000};
// The 20 MB failover job: the transfer, a failover and the rest of the transfer.
constexpr std::chrono::milliseconds kBigJobDeadline{240000};
constexpr std::size_t kBigJobBytes = 20 * 1024 * 1024;
// How long the stopped backend is let run at a time to get part of the job out, and how often.
constexpr std::chrono::milliseconds kStep{2};
constexpr int kMaxSteps = 5000;

// `size` bytes of a seeded pattern (no two jobs of a test alike), written to `path`.
std::string write_job(const std::filesystem::path& path, std::size_t size, std::uint32_t seed) {
  std::string bytes(size, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : bytes) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<char>(x & 0xff);
  }
  std::ofstream(path, std::ios::binary) << bytes;
  return bytes;
}

// Whether the printer's capture `got` holds exactly `job`; says how it differs otherwise.
bool printed_exactly(const json& got, const std::string& job) {
  std::string why;
  const bool same = dtu::testing::same_bytes(got.at("hex").get<std::string>(), job, &why);
  if (!same) MESSAGE("the printer's bytes are not the job's: " << why);
  return same;
}

// How many lines of `process`'s log match `re`.
std::size_t log_count(const Process& process, const std::regex& re) {
  const std::string log = process.log();
  return static_cast<std::size_t>(
      std::distance(std::sregex_iterator(log.begin(), log.end(), re), std::sregex_iterator()));
}

// While armed, the stopped backend `pid` is continued and killed when the test leaves the scope
// (a failed REQUIRE must not leave it stopped).
class StoppedBackend {
 public:
  explicit StoppedBackend(pid_t pid) : pid_(pid) {}
  ~StoppedBackend() {
    if (!armed_) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
  }
  StoppedBackend(const StoppedBackend&) = delete;
  StoppedBackend& operator=(const StoppedBackend&) = delete;
  // Continues it for good: it finishes its job.
  void release() {
    ::kill(pid_, SIGCONT);
    armed_ = false;
  }

 private:
  pid_t pid_;
  bool armed_ = true;
};

// What the simulated printer on `port` of agent `a` has received (its OUT endpoint 0x01).
json captured(Site& site, const Site::Agent& a, const std::string& port) {
  // Up to 40 MB of hex: seconds of the simulated DTU's time in a sanitizer build.
  auto r = site.simctl(a, {"--timeout-ms", "50000", "captured", port, "0x01"});
  REQUIRE_MESSAGE(r.exit_code == 0, "dtu-simctl captured failed: " << r.err);
  return json::parse(r.out);
}

// The dtu:// URIs `lpinfo -v` lists ("direct dtu://…" lines).
std::set<std::string> listed_uris(const CommandResult& lpinfo) {
  std::set<std::string> uris;
  std::istringstream lines(lpinfo.out);
  std::string line;
  static const std::regex kDirect(R"(^direct (dtu://\S+)$)");
  std::smatch m;
  while (std::getline(lines, line)) {
    if (std::regex_match(line, m, kDirect)) uris.insert(m[1].str());
  }
  return uris;
}

// lpadmin a raw queue on `uri`, accepting and enabled.
void add_queue(const CupsSite& cups, const std::string& name, const std::string& uri) {
  auto r = cups.run({"lpadmin", "-p", name, "-E", "-v", uri, "-m", "raw"});
  REQUIRE_MESSAGE(r.exit_code == 0, "lpadmin failed: " << r.out << r.err);
}

int print(const CupsSite& cups, const std::string& queue, const std::filesystem::path& file) {
  std::string why;
  auto job = cups.print(queue, file, &why);
  REQUIRE_MESSAGE(job.has_value(), why);
  return *job;
}

// Waits until job `id` is completed; says what it was doing otherwise.
bool job_completes(const CupsSite& cups, int id, std::chrono::milliseconds deadline) {
  CupsSite::Job last;
  const bool done = cups.wait_job(id, "completed", deadline, &last);
  if (!done) MESSAGE("job " << id << " is " << last.state << " (" << last.reasons << ")");
  return done;
}

// The state of a unit as manager `m` lists it ("free", "allocated", …; empty when not listed).
std::string unit_state(Site& site, const Site::Manager& m, const std::string& dtu, const std::string& port) {
  const json unit = site.unit(m, dtu, port, 0);
  return unit.is_object() ? unit.value("state", "") : "";
}

bool has_queue(const CupsSite& cups, const std::string& name) {
  return cups.queues().contains(name);
}

}  // namespace

TEST_CASE("lpinfo -v lists the DTU printers of a 3-manager group as direct dtu:// devices") {
  Site site;
  auto managers =
      site.start_group({{"m1", "127.0.0.150"}, {"m2", "127.0.0.151"}, {"m3", "127.0.0.152"}}, kLpReachable);
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  auto& m3 = *managers[2];
  site.start_agent("dtu-a", {managers[0]->address});
  site.start_agent("dtu-b", {managers[1]->address});
  // m3, the print server's own manager, has no DTU: every printer is at a peer.
  REQUIRE(eventually(
      [&] {
        auto r = site.devmgrctl(m3, {"devices", "--group", "--json"});
        return r.exit_code == 0 && json::parse(r.out).size() == 4;
      },
      kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m3.socket, .listen = {}});

  auto lpinfo = cups.run({"lpinfo", "-v"});
  REQUIRE_MESSAGE(lpinfo.exit_code == 0, lpinfo.err);
  const std::set<std::string> expected = {"dtu://dtu-a/sn=PRN0001/0", "dtu://dtu-a/sn=MFP0042/0",
                                          "dtu://dtu-b/sn=PRN0001/0", "dtu://dtu-b/sn=MFP0042/0"};
  CHECK_MESSAGE(listed_uris(lpinfo) == expected, "lpinfo -v said:\n" << lpinfo.out);
  // The long listing names the printer and its DTU.
  auto long_listing = cups.run({"lpinfo", "-l", "-v"});
  CHECK(long_listing.out.find("Stylus Test Printer") != std::string::npos);
  CHECK(long_listing.out.find("dtu-b") != std::string::npos);
}

TEST_CASE("a raw queue on a dtu:// URI prints a file byte-exact and the job ends completed") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.153", kLpReachable);
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m.socket, .listen = "127.0.0.153:6310"});

  add_queue(cups, "q", "dtu://dtu-a/sn=PRN0001/0");
  const auto file = site.dir() / "job.bin";
  const std::string job = write_job(file, 300 * 1024 + 17, 1);
  const int id = print(cups, "q", file);
  CHECK(job_completes(cups, id, kJobDeadline));
  const json got = captured(site, agent, "1-1");
  CHECK(got.at("bytes") == job.size());
  CHECK(printed_exactly(got, job));
  // The queue stays usable: idle, accepting, and the unit is free again (released at the end).
  CHECK(eventually([&] { return cups.queues()["q"].state == "idle"; }, kSettle));
  CHECK(eventually([&] { return unit_state(site, m, "dtu-a", "1-1") == "free"; }, kSettle));
}

TEST_CASE("a job for a printer another service holds waits and says so, then prints when it is released") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.154", kLpReachable);
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m.socket, .listen = {}});
  add_queue(cups, "mfp", "dtu://dtu-a/sn=MFP0042/0");

  auto holder = std::make_unique<Process>(
      std::vector<std::string>{dtu::testing::binary_path("devmgrctl"), "--socket", m.socket.string(),
                               "allocate", "--dtu", "dtu-a", "--device", "1-2", "--unit", "0", "--hold"},
      site.dir().path(), dtu::testing::Environment{}, "holder");
  REQUIRE(eventually([&] { return unit_state(site, m, "dtu-a", "1-2") == "allocated"; }, kSettle));

  const auto file = site.dir() / "job.bin";
  const std::string job = write_job(file, 64 * 1024 + 3, 2);
  const int id = print(cups, "mfp", file);
  // The job is processing, the queue says whom it waits for, and nothing reached the printer.
  std::string message;
  CHECK_MESSAGE(eventually(
                    [&] {
                      message = cups.queues()["mfp"].state_message;
                      return message.find("in use by") != std::string::npos &&
                             message.find("devmgrctl") != std::string::npos;
                    },
                    kSettle),
                "printer-state-message: " << message);
  CHECK(cups.job(id).state == "processing");
  CHECK(captured(site, agent, "1-2").at("bytes") == 0);

  holder.reset();  // SIGTERM: devmgrctl releases its lease
  CHECK(job_completes(cups, id, kJobDeadline));
  CHECK(printed_exactly(captured(site, agent, "1-2"), job));
}

TEST_CASE(
    "killing the DTU's manager in the middle of a 20 MB job: the job completes and the bytes are exact") {
  Site site;
  // Long heartbeats: m1's death is seen at once (its sockets close), and reading back up to 20 MB
  // of capture as hex blocks the simulated DTU's event loop for seconds in a Debug+ASan build —
  // with the tests' 600 ms timeout its manager declared it lost mid-job (CI, test-asan).
  site.set_heartbeat(1000, 15);
  auto managers =
      site.start_group({{"m1", "127.0.0.155"}, {"m2", "127.0.0.156"}, {"m3", "127.0.0.157"}}, kLpReachable);
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 2));
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  auto& m3 = *managers[2];
  // The DTU's manager is m1, m2 next; the print server's manager is m3.
  auto& agent = site.start_agent("dtu-a", {m1.address, m2.address});
  REQUIRE(eventually([&] { return site.devices(m1).size() == 2; }, kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m3.socket, .listen = {}});
  add_queue(cups, "big", "dtu://dtu-a/sn=PRN0001/0");

  // The job must be caught in the middle whatever the machine's speed: the printer is held while
  // the job starts, its backend is stopped (SIGSTOP), the printer released, and the backend then
  // let run in short steps until the printer has part of the job.
  auto holder = std::make_unique<Process>(
      std::vector<std::string>{dtu::testing::binary_path("devmgrctl"), "--socket", m1.socket.string(),
                               "allocate", "--dtu", "dtu-a", "--device", "1-1", "--unit", "0", "--hold"},
      site.dir().path(), dtu::testing::Environment{}, "holder");
  REQUIRE(eventually([&] { return unit_state(site, m1, "dtu-a", "1-1") == "allocated"; }, kSettle));
  const auto file = site.dir() / "big.bin";
  const std::string job = write_job(file, kBigJobBytes, 3);
  const int id = print(cups, "big", file);
  std::vector<pid_t> backend;
  REQUIRE(eventually([&] { return (backend = cups.backend_pids()).size() == 1; }, kSettle));
  REQUIRE(::kill(backend[0], SIGSTOP) == 0);
  StoppedBackend stopped(backend[0]);
  holder.reset();  // SIGTERM: devmgrctl releases the printer
  std::uint64_t at_kill = 0;
  for (int step = 0; step < kMaxSteps && at_kill == 0; ++step) {
    ::kill(backend[0], SIGCONT);
    std::this_thread::sleep_for(kStep);
    ::kill(backend[0], SIGSTOP);
    at_kill = captured(site, agent, "1-1").at("bytes").get<std::uint64_t>();
  }
  REQUIRE_MESSAGE(at_kill > 0, "the backend sent nothing in " << kMaxSteps << " steps");
  site.kill_manager(m1);
  stopped.release();
  MESSAGE("m1 killed with " << at_kill << " of " << kBigJobBytes << " bytes printed");
  CHECK(at_kill < kBigJobBytes);  // the middle of the job, not its end

  CHECK(job_completes(cups, id, kBigJobDeadline));
  const json got = captured(site, agent, "1-1");
  CHECK(got.at("bytes") == job.size());
  CHECK(printed_exactly(got, job));
  // The DTU is at m2 now, and the printer free for the next job.
  CHECK(eventually([&] { return unit_state(site, m2, "dtu-a", "1-1") == "free"; }, kSettle));
}

TEST_CASE("dtu-print keeps a queue per printer: removed on unplug, created again on plug, and it prints") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.158", kLpReachable);
  auto& agent = site.start_agent("dtu-a", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m.socket, .listen = {}});
  // An administrator's own queue on a DTU printer: dtu-print never touches it.
  add_queue(cups, "office", "dtu://dtu-a/sn=PRN0001/0");

  Process print_daemon({dtu::testing::dtu_print_path().string(), "--socket", m.socket.string(),
                        "--cups-server", cups.socket().string()},
                       site.dir().path());
  REQUIRE(
      eventually([&] { return has_queue(cups, "dtu-PRN0001") && has_queue(cups, "dtu-MFP0042"); }, kSettle));
  auto queues = cups.queues();
  CHECK(queues["dtu-PRN0001"].device_uri == "dtu://dtu-a/sn=PRN0001/0");
  CHECK(queues["dtu-MFP0042"].device_uri == "dtu://dtu-a/sn=MFP0042/0");
  CHECK(queues["dtu-PRN0001"].accepting);
  CHECK(queues["dtu-PRN0001"].info.find("[dtu-print]") != std::string::npos);
  CHECK(print_daemon.wait_for_log(std::regex("queue_created.*queue=dtu-PRN0001"), kSettle));

  REQUIRE(site.simctl(agent, {"unplug", "1-1"}).exit_code == 0);
  CHECK(eventually([&] { return !has_queue(cups, "dtu-PRN0001"); }, kSettle));
  CHECK(print_daemon.wait_for_log(std::regex("queue_removed.*queue=dtu-PRN0001"), kSettle));
  CHECK(has_queue(cups, "office"));
  CHECK(has_queue(cups, "dtu-MFP0042"));

  REQUIRE(site.simctl(agent, {"plug", "1-1"}).exit_code == 0);
  CHECK(eventually([&] { return has_queue(cups, "dtu-PRN0001"); }, kSettle));

  const auto file = site.dir() / "job.bin";
  const std::string job = write_job(file, 128 * 1024 + 5, 4);
  const int id = print(cups, "dtu-PRN0001", file);
  CHECK(job_completes(cups, id, kJobDeadline));
  CHECK(printed_exactly(captured(site, agent, "1-1"), job));

  // Reseating a cable keeps the queued jobs: the queue of an unplugged printer that still has
  // jobs stays (they are not cancelled), and they print when the printer is back.
  const std::regex left_for_jobs("queue_left_for_jobs.*queue=dtu-MFP0042");
  REQUIRE(cups.run({"cupsdisable", "dtu-MFP0042"}).exit_code == 0);  // the job waits in the queue
  const auto queued_file = site.dir() / "queued.bin";
  const std::string queued = write_job(queued_file, 48 * 1024 + 7, 6);
  const int queued_id = print(cups, "dtu-MFP0042", queued_file);
  REQUIRE(site.simctl(agent, {"unplug", "1-2"}).exit_code == 0);
  CHECK(eventually([&] { return log_count(print_daemon, left_for_jobs) == 1; }, kSettle));
  CHECK(has_queue(cups, "dtu-MFP0042"));
  CHECK(cups.job(queued_id).state == "pending");
  REQUIRE(site.simctl(agent, {"plug", "1-2"}).exit_code == 0);
  CHECK(job_completes(cups, queued_id, kJobDeadline));  // dtu-print started the queue again
  CHECK(printed_exactly(captured(site, agent, "1-2"), queued));

  // Such a queue is deleted once its jobs are gone (here cancelled), and made again on plug.
  REQUIRE(cups.run({"cupsdisable", "dtu-MFP0042"}).exit_code == 0);
  const int cancelled_id = print(cups, "dtu-MFP0042", queued_file);
  REQUIRE(site.simctl(agent, {"unplug", "1-2"}).exit_code == 0);
  CHECK(eventually([&] { return log_count(print_daemon, left_for_jobs) == 2; }, kSettle));
  CHECK(has_queue(cups, "dtu-MFP0042"));
  REQUIRE(cups.run({"cancel", std::to_string(cancelled_id)}).exit_code == 0);
  CHECK(eventually([&] { return !has_queue(cups, "dtu-MFP0042"); }, kSettle));
  REQUIRE(site.simctl(agent, {"plug", "1-2"}).exit_code == 0);
  CHECK(eventually([&] { return has_queue(cups, "dtu-MFP0042"); }, kSettle));

  // SIGTERM: a clean exit, and the queues stay.
  print_daemon.signal(SIGTERM);
  CHECK(print_daemon.wait_exit(kSettle) == 0);
  CHECK(has_queue(cups, "dtu-PRN0001"));

  // --once after an unplug: the gone printer's queue is swept, the admin's queue stays.
  REQUIRE(site.simctl(agent, {"unplug", "1-1"}).exit_code == 0);
  REQUIRE(eventually([&] { return site.devices(m).size() == 1; }, kSettle));
  auto once =
      dtu::testing::run_command({dtu::testing::dtu_print_path().string(), "--socket", m.socket.string(),
                                 "--cups-server", cups.socket().string(), "--once"},
                                kCupsDeadline);
  CHECK_MESSAGE(once.exit_code == 0, once.err);
  CHECK_FALSE(has_queue(cups, "dtu-PRN0001"));
  CHECK(has_queue(cups, "dtu-MFP0042"));
  CHECK(has_queue(cups, "office"));
}

TEST_CASE("dtu-print's session queue follows the session to the DTU it sits at") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.159", kLpReachable);
  auto& a = site.start_agent("dtu-a", {m.address});
  auto& b = site.start_agent("dtu-b", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 4; }, kSettle));
  dtu::testing::open_to_lp(site.dir().path());
  CupsSite cups({.manager_socket = m.socket, .listen = {}});

  Process print_daemon(
      {dtu::testing::dtu_print_path().string(), "--socket", m.socket.string(), "--cups-server",
       cups.socket().string(), "--session-queue", "mine", "--session", "s1"},
      site.dir().path());
  // Both DTUs have a PRN0001: the second queue of that name gets a suffix.
  REQUIRE(eventually([&] { return cups.queues().size() == 4; }, kSettle));
  auto queues = cups.queues();
  CHECK(queues.contains("dtu-PRN0001"));
  CHECK(queues.contains("dtu-PRN0001-2"));
  CHECK(queues["dtu-PRN0001"].device_uri != queues["dtu-PRN0001-2"].device_uri);
  CHECK_FALSE(queues.contains("mine"));  // the session is nowhere yet

  REQUIRE(site.devmgrctl(m, {"session", "attach", "--session", "s1", "--user", "root", "--dtu", "dtu-a"})
              .exit_code == 0);
  CHECK(eventually([&] { return cups.queues()["mine"].device_uri.starts_with("dtu://dtu-a/"); }, kSettle));
  REQUIRE(site.devmgrctl(m, {"session", "attach", "--session", "s1", "--user", "root", "--dtu", "dtu-b"})
              .exit_code == 0);
  CHECK(eventually([&] { return cups.queues()["mine"].device_uri.starts_with("dtu://dtu-b/"); }, kSettle));

  const auto file = site.dir() / "job.bin";
  const std::string job = write_job(file, 32 * 1024, 5);
  const int id = print(cups, "mine", file);
  CHECK(job_completes(cups, id, kJobDeadline));
  const std::string uri = cups.queues()["mine"].device_uri;
  const std::string port = uri.find("PRN0001") != std::string::npos ? "1-1" : "1-2";
  CHECK(printed_exactly(captured(site, b, port), job));
  CHECK(captured(site, a, port).at("bytes") == 0);

  // The session leaves its DTU: the queue stops, so a job waits in it instead of printing at
  // the desk the user left, and prints at the DTU the session sits at next.
  REQUIRE(site.devmgrctl(m, {"session", "detach", "--session", "s1"}).exit_code == 0);
  CupsSite::Queue mine;
  CHECK_MESSAGE(eventually(
                    [&] {
                      mine = cups.queues()["mine"];
                      return mine.state == "stopped";
                    },
                    kSettle),
                "queue mine is " << mine.state << " (" << mine.state_message << ")");
  CHECK(mine.state_message.find("away") != std::string::npos);
  const auto away_file = site.dir() / "away.bin";
  const std::string away = write_job(away_file, 16 * 1024 + 9, 7);
  const int away_id = print(cups, "mine", away_file);
  CHECK(cups.job(away_id).state == "pending");
  CHECK(cups.backend_pids().empty());
  CHECK(printed_exactly(captured(site, b, port), job));  // nothing more at the old desk

  REQUIRE(site.devmgrctl(m, {"session", "attach", "--session", "s1", "--user", "root", "--dtu", "dtu-a"})
              .exit_code == 0);
  CHECK(job_completes(cups, away_id, kJobDeadline));
  const std::string uri_a = cups.queues()["mine"].device_uri;
  CHECK(uri_a.starts_with("dtu://dtu-a/"));
  const std::string port_a = uri_a.find("PRN0001") != std::string::npos ? "1-1" : "1-2";
  CHECK(printed_exactly(captured(site, a, port_a), away));
  CHECK(printed_exactly(captured(site, b, port), job));
}
