// dtu-unit (issue 7) against a real devmgr and a dtu-agent on the simulated backend
// (demo/sim-devices.json: a printer at 1-1; a printer / scanner / storage device at 1-2 whose
// scanner unit yields "SCAN\x01\x02\x03" on IN 0x84): what a shell user sees — the bytes, the
// messages and the exit status.
#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "dtu/common/crypto.hpp"
#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::CommandResult;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::run_command;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// This test's manager address (issue 7's range for dtu-unit: 127.0.0.160–169).
constexpr const char* kIp = "127.0.0.160";
// The 1284 id sim-devices.json gives the printer at 1-1.
const std::string kStylusId = "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;";
const json kStylusFinder = {{"serial", "PRN0001"}};

Site::Agent& start_site(Site& site, Site::Manager*& m) {
  m = &site.start_manager("m1", kIp);
  auto& agent = site.start_agent("dtu-1", {m->address});
  REQUIRE(eventually([&] { return site.devices(*m).size() == 2; }, kSettle));
  return agent;
}

std::vector<std::string> unit_command(const Site::Manager& m, std::vector<std::string> args) {
  std::vector<std::string> argv = {binary_path("dtu-unit"), "--socket", m.socket.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// argv with stdin from `input` (run_command and Process give /dev/null).
std::vector<std::string> with_stdin(const std::filesystem::path& input, std::vector<std::string> argv) {
  std::vector<std::string> sh = {"/bin/sh", "-c", "f=$1; shift; exec \"$@\" < \"$f\"", "sh", input.string()};
  sh.insert(sh.end(), argv.begin(), argv.end());
  return sh;
}

CommandResult unit(const Site::Manager& m, std::vector<std::string> args) {
  return run_command(unit_command(m, std::move(args)), kSettle);
}

std::string hex_of(const std::string& bytes) {
  return dtu::common::to_hex(dtu::common::Bytes(bytes.begin(), bytes.end()));
}

std::string captured_hex(Site& site, const Site::Agent& agent, const std::string& device,
                         const std::string& ep) {
  auto r = site.simctl(agent, {"captured", device, ep});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out).at("hex");
}

// Whether the printer at 1-1 received exactly `expected` on OUT 0x01; on a mismatch the message
// gives both sizes and the first byte that differs, not the (large) bytes themselves.
void check_captured(Site& site, const Site::Agent& agent, const std::string& expected) {
  const std::string got = captured_hex(site, agent, "1-1", "0x01");
  const std::string want = hex_of(expected);
  const auto differ = std::mismatch(got.begin(), got.end(), want.begin(), want.end());
  const bool same = got == want;  // a bool: doctest would print both operands of `got == want`
  CHECK_MESSAGE(same, "the printer received " << got.size() / 2 << " bytes, expected " << want.size() / 2
                                              << "; first difference at byte "
                                              << (differ.first - got.begin()) / 2);
}

std::string unit_state(Site& site, const Site::Manager& m, const std::string& device, std::uint32_t unit) {
  auto u = site.unit(m, "dtu-1", device, unit);
  return u.is_null() ? "absent" : u.at("state").get<std::string>();
}

std::string write_file(const Site& site, const std::string& name, const std::string& content) {
  const auto path = site.dir() / name;
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

// A job that is not text: every byte value, more than one 64 KiB in-band chunk.
std::string binary_job() {
  std::string job;
  for (std::size_t i = 0; i < 200 * 1024 + 3; ++i)
    job.push_back(static_cast<char>((i * 7 + (i >> 10)) & 0xff));
  return job;
}

std::set<std::string> lines_of(const std::string& text) {
  std::set<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.insert(line);
  return lines;
}

}  // namespace

TEST_CASE(
    "dtu-unit write by finder sends stdin to the matching printer, which receives exactly those bytes") {
  Site site;
  Site::Manager* m = nullptr;
  auto& agent = start_site(site, m);
  const std::string job = binary_job();
  const auto job_file = write_file(site, "job.bin", job);
  const auto finder_file = write_file(site, "finder.json", kStylusFinder.dump());

  // From a file (read in one go), the finder given inline.
  auto r = run_command(with_stdin(job_file, unit_command(*m, {"--finder", kStylusFinder.dump(), "write"})),
                       kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK_MESSAGE(r.err.find("chose dtu-1 1-1 unit 0") != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("wrote " + std::to_string(job.size()) + " bytes") != std::string::npos, r.err);
  check_captured(site, agent, job);

  // From a pipe (streamed as it comes), the finder from a file.
  const std::vector<std::string> piped = {"/bin/sh",
                                          "-c",
                                          "cat \"$1\" | \"$2\" --socket \"$3\" --finder \"$4\" write",
                                          "sh",
                                          job_file,
                                          binary_path("dtu-unit"),
                                          m->socket.string(),
                                          "@" + finder_file};
  r = run_command(piped, kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  check_captured(site, agent, job + job);

  // By id, from a pipe, as the demo does it.
  const std::vector<std::string> demo = {
      "/bin/sh",
      "-c",
      "printf 'page\\f' | \"$1\" --socket \"$2\" --dtu dtu-1 --device 1-1 --unit 0 write",
      "sh",
      binary_path("dtu-unit"),
      m->socket.string()};
  r = run_command(demo, kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  check_captured(site, agent, job + job + "page\f");
  CHECK(eventually([&] { return unit_state(site, *m, "1-1", 0) == "free"; }, kSettle));
}

TEST_CASE("dtu-unit read by finder copies the scanner unit's IN endpoint to stdout") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m);
  auto r = unit(*m, {"--finder", R"({"function": "scanner"})", "read", "--timeout-ms", "500"});
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out == std::string("SCAN\x01\x02\x03"));
  CHECK_MESSAGE(r.err.find("chose dtu-1 1-2 unit 1") != std::string::npos, r.err);
  CHECK(eventually([&] { return unit_state(site, *m, "1-2", 1) == "free"; }, kSettle));

  // Drained: a read that gets nothing before its timeout fails.
  r = unit(*m, {"--finder", R"({"function": "scanner"})", "read", "--timeout-ms", "300"});
  CHECK_MESSAGE(r.exit_code == 1, r.err);
  CHECK(r.out.empty());
}

TEST_CASE(
    "dtu-unit control GET_DEVICE_ID prints the printer's IEEE 1284 id bytes as hex, and a stalled request "
    "exits 1") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m);
  const std::vector<std::string> printer = {"--dtu", "dtu-1", "--device", "1-1", "--unit", "0"};
  auto args = printer;
  args.insert(args.end(), {"control", "--request-type", "0xA1", "--request", "0", "--value", "0", "--index",
                           "0x0000", "--length", "1024"});
  auto r = unit(*m, args);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  const std::size_t size = kStylusId.size() + 2;  // the length prefix counts itself
  const std::string answer =
      std::string{static_cast<char>(size >> 8), static_cast<char>(size & 0xff)} + kStylusId;
  CHECK(r.out == hex_of(answer) + "\n");

  args = printer;
  args.push_back("device-id");
  r = unit(*m, args);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out == kStylusId + "\n");

  // A class request the printer does not know: it STALLs.
  args = printer;
  args.insert(args.end(), {"control", "--request-type", "0xA1", "--request", "7", "--length", "8"});
  r = unit(*m, args);
  CHECK_MESSAGE(r.exit_code == 1, r.err);
  CHECK_MESSAGE(r.err.find("dtu-unit: control: ") != std::string::npos, r.err);
  CHECK(r.out.empty());
  CHECK(eventually([&] { return unit_state(site, *m, "1-1", 0) == "free"; }, kSettle));
}

TEST_CASE(
    "dtu-unit on a busy unit exits 4 naming the holder, and with --wait-ms writes once the holder releases "
    "it") {
  Site site;
  Site::Manager* m = nullptr;
  auto& agent = start_site(site, m);
  const std::string job = "\x1b@waited job\f";
  const auto job_file = write_file(site, "job.prn", job);

  Process holder({binary_path("dtu-sample-service"), "--socket", m->socket.string(), "--finder",
                  json{{"function", "printer"}, {"product", "Stylus*"}}.dump(), "--hold"},
                 site.dir().path(), {}, "holder");
  REQUIRE_MESSAGE(
      eventually([&] { return holder.out().find("holding dtu-1 1-1 unit 0") != std::string::npos; }, kSettle),
      holder.out() << holder.log());
  const std::string held_by = "dtu-sample-service[" + std::to_string(holder.pid()) + "]@m1";

  // list shows the holder and takes nothing.
  auto r = unit(*m, {"list", "--finder", R"({"vid": "04b8"})"});
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(lines_of(r.out) == std::set<std::string>{"dtu-1 1-1 0 allocated " + held_by, "dtu-1 1-2 0 free -",
                                                 "dtu-1 1-2 1 free -", "dtu-1 1-2 2 free -"});

  // By id and by finder, without waiting: exit 4, the holder named.
  r = run_command(
      with_stdin(job_file, unit_command(*m, {"--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "write"})),
      kSettle);
  CHECK_MESSAGE(r.exit_code == 4, r.err);
  CHECK_MESSAGE(r.err.find("held by " + held_by) != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("--wait-ms") != std::string::npos, r.err);
  r = run_command(with_stdin(job_file, unit_command(*m, {"--finder", kStylusFinder.dump(), "write"})),
                  kSettle);
  CHECK_MESSAGE(r.exit_code == 4, r.err);
  CHECK_MESSAGE(r.err.find("held by " + held_by) != std::string::npos, r.err);

  // A wait that runs out: exit 4 too.
  r = run_command(with_stdin(job_file, unit_command(*m, {"--dtu", "dtu-1", "--device", "1-1", "--unit", "0",
                                                         "--wait-ms", "300", "write"})),
                  kSettle);
  CHECK_MESSAGE(r.exit_code == 4, r.err);
  CHECK_MESSAGE(r.err.find("held by " + held_by) != std::string::npos, r.err);
  CHECK(captured_hex(site, agent, "1-1", "0x01").empty());

  // The manager's allocation_waiting events: each wait it queued.
  auto waits = [&] {
    const std::string log = m->process->log();
    std::size_t n = 0;
    for (auto at = log.find("allocation_waiting"); at != std::string::npos;
         at = log.find("allocation_waiting", at + 1))
      ++n;
    return n;
  };
  REQUIRE(waits() == 1);  // the wait that ran out

  // Ctrl-C while queued: exit 130 and nothing else to say (no allocation error).
  Process queued(with_stdin(job_file, unit_command(*m, {"--dtu", "dtu-1", "--device", "1-1", "--unit", "0",
                                                        "--wait-ms", "30000", "write"})),
                 site.dir().path(), {}, "queued");
  REQUIRE_MESSAGE(eventually([&] { return waits() == 2; }, kSettle), queued.log());
  queued.signal(SIGINT);
  CHECK_MESSAGE(queued.wait_exit(kSettle) == 130, queued.log());
  CHECK_MESSAGE(queued.log().find("allocate ") == std::string::npos, queued.log());
  CHECK_MESSAGE(queued.log().find("lost the manager") == std::string::npos, queued.log());

  // Waiting by finder: queued at the manager, then written when the holder releases.
  Process waiter(with_stdin(job_file, unit_command(*m, {"--finder", kStylusFinder.dump(), "--wait-ms",
                                                        "30000", "write"})),
                 site.dir().path(), {}, "waiter");
  REQUIRE_MESSAGE(eventually([&] { return waits() == 3; }, kSettle), waiter.log());
  CHECK_MESSAGE(waiter.log().find("waiting up to ") != std::string::npos, waiter.log());
  holder.signal(SIGTERM);
  CHECK(holder.wait_exit(kSettle) == 0);
  CHECK_MESSAGE(waiter.wait_exit(kSettle) == 0, waiter.log());
  check_captured(site, agent, job);
  CHECK(eventually([&] { return unit_state(site, *m, "1-1", 0) == "free"; }, kSettle));
}

TEST_CASE(
    "dtu-unit keeps its lease renewed while a slow producer feeds it, and SIGTERM releases the unit and "
    "exits 143") {
  Site site;
  Site::Manager* m = nullptr;
  auto& agent = start_site(site, m);

  // A 2 s lease and a producer that pauses 5 s, two and a half lease lengths: only the library's
  // renewals (every 2/3 s) keep it. (A 1 s lease left a loaded machine 2/3 s for each renewal.)
  const std::vector<std::string> slow = {"/bin/sh",
                                         "-c",
                                         "(printf 'first '; sleep 5; printf 'second') | \"$1\" --socket "
                                         "\"$2\" --finder \"$3\" --lease-seconds 2 write",
                                         "sh",
                                         binary_path("dtu-unit"),
                                         m->socket.string(),
                                         kStylusFinder.dump()};
  auto r = run_command(slow, 2 * kSettle);  // the pause and then the usual bound
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  check_captured(site, agent, "first second");

  // A read that would wait a minute on the printer's status endpoint, stopped with SIGTERM.
  Process reader(
      unit_command(*m, {"--dtu", "dtu-1", "--device", "1-2", "--unit", "0", "read", "--timeout-ms", "60000"}),
      site.dir().path(), {}, "reader");
  // Signalled once the read is under way: a signal before the in-band channel is open closes the
  // connection instead, and the manager releases the lease (lease_holder_gone).
  REQUIRE_MESSAGE(
      eventually([&] { return reader.log().find("reading endpoint") != std::string::npos; }, kSettle),
      reader.log());
  CHECK(unit_state(site, *m, "1-2", 0) == "allocated");
  reader.signal(SIGTERM);
  CHECK(reader.wait_exit(kSettle) == 143);
  CHECK(eventually([&] { return unit_state(site, *m, "1-2", 0) == "free"; }, kSettle));
  // Released by dtu-unit itself, not by the manager noticing that its connection closed.
  CHECK_MESSAGE(m->process->log().find("lease_holder_gone") == std::string::npos, m->process->log());
}

TEST_CASE("dtu-unit write from a terminal sends each line as it is typed, and ends at Ctrl-D") {
  Site site;
  Site::Manager* m = nullptr;
  auto& agent = start_site(site, m);
  // A pseudo-terminal: dtu-unit's stdin is its slave side, the test types on the master side.
  const int master = ::posix_openpt(O_RDWR | O_NOCTTY);
  REQUIRE(master >= 0);
  REQUIRE(::grantpt(master) == 0);
  REQUIRE(::unlockpt(master) == 0);
  const std::string terminal = ::ptsname(master);
  auto type = [&](const std::string& text) {
    REQUIRE(::write(master, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  };
  Process writer(with_stdin(terminal, unit_command(*m, {"--finder", kStylusFinder.dump(), "write"})),
                 site.dir().path(), {}, "writer");
  REQUIRE_MESSAGE(
      eventually([&] { return writer.log().find("chose dtu-1 1-1 unit 0") != std::string::npos; }, kSettle),
      writer.log());
  type("first line\n");
  // Sent while the terminal stays open: stdin is not read to its end first.
  CHECK_MESSAGE(
      eventually([&] { return captured_hex(site, agent, "1-1", "0x01") == hex_of("first line\n"); }, kSettle),
      writer.log());
  type("second line\n\x04");  // Ctrl-D at the start of a line: end of input
  CHECK_MESSAGE(writer.wait_exit(kSettle) == 0, writer.log());
  CHECK_MESSAGE(writer.log().find("wrote 23 bytes") != std::string::npos, writer.log());
  check_captured(site, agent, "first line\nsecond line\n");
  ::close(master);
  CHECK(eventually([&] { return unit_state(site, *m, "1-1", 0) == "free"; }, kSettle));
}

TEST_CASE(
    "dtu-unit's lease survives the failover of its DTU's manager in the middle of a write, and the bytes "
    "arrive exactly") {
  Site site;
  // m1 is this server's manager; the DTU is on m2 (its list puts m2 first) until m2 dies.
  auto managers = site.start_group({{"m1", "127.0.0.161"}, {"m2", "127.0.0.162"}});
  auto& m1 = *managers[0];
  auto& m2 = *managers[1];
  for (auto* m : managers) REQUIRE(site.wait_peers_up(*m, 1));
  auto& agent = site.start_agent("dtu-1", {m2.address, m1.address});
  REQUIRE(eventually(
      [&] {
        return unit(m1, {"list", "--finder", kStylusFinder.dump()}).exit_code == 0;
      },
      kSettle));

  // A 3 s lease (renewed every second), and a producer that pauses 4 s after its first bytes.
  const std::vector<std::string> slow = {"/bin/sh",
                                         "-c",
                                         "(printf 'before failover '; sleep 4; printf 'after failover') | "
                                         "\"$1\" --socket \"$2\" --finder \"$3\" "
                                         "--lease-seconds 3 write",
                                         "sh",
                                         binary_path("dtu-unit"),
                                         m1.socket.string(),
                                         kStylusFinder.dump()};
  Process writer(slow, site.dir().path(), {}, "writer");
  REQUIRE_MESSAGE(
      eventually([&] { return writer.log().find("chose dtu-1 1-1 unit 0") != std::string::npos; }, kSettle),
      writer.log());
  site.kill_manager(m2);
  CHECK(m1.process->wait_for_log(std::regex("dtu_connected dtu=dtu-1"), kSettle));  // the DTU re-homed
  CHECK_MESSAGE(writer.wait_exit(kSettle) == 0, writer.log());
  check_captured(site, agent, "before failover after failover");
  CHECK(eventually(
      [&] {
        return unit(m1, {"list", "--finder", kStylusFinder.dump()}).out == "dtu-1 1-1 0 free -\n";
      },
      kSettle));
}

TEST_CASE("dtu-unit exits 5 when no unit matches, 3 when no manager answers and 2 on bad usage, saying why") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m);

  auto r = unit(*m, {"--finder", R"({"vid": "ffff"})", "read"});
  CHECK_MESSAGE(r.exit_code == 5, r.err);
  CHECK_MESSAGE(r.err.find("dtu-unit: no unit matches") != std::string::npos, r.err);
  r = unit(*m, {"list", "--finder", R"({"vid": "ffff"})"});
  CHECK_MESSAGE(r.exit_code == 5, r.err);
  CHECK(r.out.empty());
  r = unit(*m, {"--dtu", "dtu-1", "--device", "9-9", "--unit", "0", "device-id"});
  CHECK_MESSAGE(r.exit_code == 5, r.err);
  CHECK_MESSAGE(r.err.find("no device 9-9 on DTU dtu-1") != std::string::npos, r.err);
  r = unit(*m, {"--dtu", "nowhere", "--device", "1-1", "--unit", "0", "device-id"});
  CHECK_MESSAGE(r.exit_code == 5, r.err);

  r = run_command({binary_path("dtu-unit"), "--socket", (site.dir() / "nobody.sock").string(), "--dtu",
                   "dtu-1", "--device", "1-1", "--unit", "0", "device-id"},
                  kSettle);
  CHECK_MESSAGE(r.exit_code == 3, r.err);
  CHECK_MESSAGE(r.err.find("is devmgr running?") != std::string::npos, r.err);

  // Each bad command line, and a word of the reason its message must give.
  struct Bad {
    std::vector<std::string> args;
    std::string reason;
  };
  const std::vector<Bad> bad = {
      {{"read"}, "which unit?"},
      {{"--dtu", "dtu-1", "--device", "1-1", "--unit", "0"}, "A subcommand is required"},
      {{"--finder", "{not json", "read"}, "is not JSON"},
      {{"--finder", R"({"vid": 12})", "read"}, "finder field 'vid'"},
      {{"--finder", "@" + (site.dir() / "missing.json").string(), "read"}, "cannot read "},
      {{"--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "control", "--request-type", "0xA1", "--request",
        "0", "--data", "00"},
       "--data goes with an OUT request"},
      {{"--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "control", "--request-type", "0x121", "--request",
        "0"},
       "--request-type '0x121': expected a byte"},
      {{"--dtu", "dtu-1", "--device", "1-1", "--unit", "0", "--endpoint", "0x99", "read"},
       "--endpoint '0x99': expected an endpoint address"},
  };
  for (const auto& b : bad) {
    r = unit(*m, b.args);
    CHECK_MESSAGE(r.exit_code == 2, b.args.back() << ": " << r.err);
    CHECK_MESSAGE(r.err.find("dtu-unit: ") == 0, r.err);
    CHECK_MESSAGE(r.err.find(b.reason) != std::string::npos, "expected \"" << b.reason << "\" in: " << r.err);
  }
  CHECK(eventually([&] { return unit_state(site, *m, "1-1", 0) == "free"; }, kSettle));
}
