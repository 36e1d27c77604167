// The fault suite's history checker on hand-written histories: clean ones pass, and each kind of
// violation the suite exists to catch (two holders, a lost allocation, short bytes, bytes that
// differ from what was written, a view that differs from the DTU) is reported. No process is
// started.
#include "fault_history.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "fault_pattern.hpp"

namespace {

using namespace dtu::testing::faults;
using Bytes = std::vector<std::uint8_t>;

// Each workload's seed in these histories.
std::uint64_t seed_of(const std::string& w) {
  return w == "w1" ? 11 : 22;
}

// A grant (of job `job`) .. bytes .. release .. released sequence of one lease.
std::string cycle(const std::string& w, const std::string& lease, const std::string& dtu, long t0, long t1,
                  std::uint64_t bytes = 100, std::uint64_t job = 1) {
  const std::string unit = R"("dtu":")" + dtu + R"(","device":"1-1","unit":0)";
  return R"({"t":)" + std::to_string(t0) + R"(,"w":")" + w + R"(","ev":"grant","lease":")" + lease + R"(",)" +
         unit + R"(,"holder":"x","seed":)" + std::to_string(seed_of(w)) + R"(,"job":)" + std::to_string(job) +
         "}\n" + R"({"t":)" + std::to_string(t0 + 1) + R"(,"w":")" + w + R"(","ev":"bytes","lease":")" +
         lease + R"(",)" + unit + R"(,"endpoint":1,"n":)" + std::to_string(bytes) + "}\n" + R"({"t":)" +
         std::to_string(t1) + R"(,"w":")" + w + R"(","ev":"release","lease":")" + lease + "\"}\n" +
         R"({"t":)" + std::to_string(t1 + 1) + R"(,"w":")" + w + R"(","ev":"released","lease":")" + lease +
         R"(","ok":true})" + "\n";
}

// What job `job` of workload `w` puts on the device, its first `n` bytes.
Bytes job_bytes(const std::string& w, std::uint64_t job, std::uint64_t n = 100) {
  return job_pattern(seed_of(w), job, n);
}

Bytes cat(std::vector<Bytes> parts) {
  Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

std::string stop(const std::string& w, long t, const std::string& held = "") {
  return R"({"t":)" + std::to_string(t) + R"(,"w":")" + w + R"(","ev":"stop","iterations":1,"held":[)" +
         (held.empty() ? "" : "\"" + held + "\"") + "]}\n";
}

const std::string kAgentLog =
    "2026-11-21T22:00:00.000Z info dtu-agent 127.0.0.101:4711 connected manager=m1 devices=2 "
    "heartbeat_ms=300\n"
    "2026-11-21T22:00:00.100Z info dtu-agent - lease_granted lease=L1 device=1-1 unit=0 holder=w1[1]@m1 "
    "uid=0 "
    "length_ms=2400\n"
    "2026-11-21T22:00:00.200Z info dtu-agent - lease_ended lease=L1 device=1-1 unit=0 holder=w1[1]@m1 "
    "reason=released\n"
    "2026-11-21T22:00:00.300Z info dtu-agent - lease_granted lease=L2 device=1-1 unit=0 holder=w2[2]@m2 "
    "uid=0 "
    "length_ms=2400\n"
    "2026-11-21T22:00:00.400Z info dtu-agent - lease_ended lease=L2 device=1-1 unit=0 holder=w2[2]@m2 "
    "reason=released\n";

Facts clean_facts() {
  Facts f;
  f.bytes_per_stream = 100;
  f.workloads.push_back(parse_history("w1", cycle("w1", "L1", "d1", 1000, 2000) + stop("w1", 9000)));
  f.workloads.push_back(parse_history("w2", cycle("w2", "L2", "d1", 3000, 4000) + stop("w2", 9000)));
  f.dtus.push_back({"d1", {kAgentLog}});
  f.captured[{"d1", "1-1", 1}] = cat({job_bytes("w1", 1), job_bytes("w2", 1)});
  return f;
}

bool mentions(const std::vector<std::string>& violations, const std::string& text) {
  for (const auto& v : violations) {
    if (v.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("The history checker passes a clean history") {
  const auto violations = check_invariants(clean_facts());
  CHECK_MESSAGE(violations.empty(), violations.front());
}

TEST_CASE("The history checker reports two workloads holding one unit at once") {
  Facts f = clean_facts();
  // w2's grant comes before w1 gave the unit up.
  f.workloads[1] = parse_history("w2", cycle("w2", "L2", "d1", 1500, 4000) + stop("w2", 9000));
  const auto violations = check_single_holder(f);
  REQUIRE(violations.size() == 1);
  CHECK(mentions(violations, "two holders of d1 1-1 unit 0"));
  CHECK(mentions(violations, "lease L1"));
}

TEST_CASE("The history checker reports a unit held forever by one workload and granted to another") {
  Facts f = clean_facts();
  const std::string grant_only =
      R"({"t":1000,"w":"w1","ev":"grant","lease":"L1","dtu":"d1","device":"1-1","unit":0,"holder":"x"})"
      "\n";
  f.workloads[0] = parse_history("w1", grant_only + stop("w1", 9000, "L1"));
  CHECK(mentions(check_single_holder(f), "two holders"));
}

TEST_CASE("The history checker reports a DTU that granted a unit twice") {
  Facts f = clean_facts();
  f.dtus[0].incarnations[0] =
      "info dtu-agent - lease_granted lease=L1 device=1-1 unit=0 holder=a uid=0 length_ms=1\n"
      "info dtu-agent - lease_granted lease=L2 device=1-1 unit=0 holder=b uid=0 length_ms=1\n";
  const auto violations = check_single_holder(f);
  REQUIRE(violations.size() == 1);
  CHECK(mentions(violations,
                 "DTU d1 (start 1) granted d1 1-1 unit 0 to b (lease L2) while lease L1 of a was held"));
}

TEST_CASE("The history checker reports a lost allocation") {
  SUBCASE("the lease ended without the workload's release") {
    Facts f = clean_facts();
    const std::string lost =
        R"({"t":1000,"w":"w1","ev":"grant","lease":"L1","dtu":"d1","device":"1-1","unit":0,"holder":"x"})"
        "\n"
        R"({"t":1001,"w":"w1","ev":"bytes","lease":"L1","dtu":"d1","device":"1-1","unit":0,"endpoint":1,"n":100})"
        "\n"
        R"({"t":1500,"w":"w1","ev":"lease_ended","lease":"L1","reason":"expired"})"
        "\n";
    f.workloads[0] = parse_history("w1", lost + stop("w1", 9000));
    const auto violations = check_no_lost_allocation(f);
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations,
                   "allocation lost: w1's lease L1 on d1 1-1 unit 0 ended without its release (expired)"));
  }
  SUBCASE("the lease is neither released nor held at the end") {
    Facts f = clean_facts();
    const std::string vanished =
        R"({"t":1000,"w":"w1","ev":"grant","lease":"L1","dtu":"d1","device":"1-1","unit":0,"holder":"x"})"
        "\n";
    f.workloads[0] = parse_history("w1", vanished + stop("w1", 9000));
    CHECK(mentions(check_no_lost_allocation(f), "neither released nor held"));
  }
  SUBCASE("the release failed") {
    Facts f = clean_facts();
    std::string text = cycle("w1", "L1", "d1", 1000, 2000);
    text.replace(text.find(R"("ok":true)"), 9, R"("ok":false,"error":"not_found: no lease L1")");
    f.workloads[0] = parse_history("w1", text + stop("w1", 9000));
    CHECK(mentions(check_no_lost_allocation(f), "the release failed: not_found"));
  }
  SUBCASE("a release that reached no owner is not a loss") {
    Facts f = clean_facts();
    std::string text = cycle("w1", "L1", "d1", 1000, 2000);
    text.replace(text.find(R"("ok":true)"), 9, R"("ok":false,"transient":true,"error":"unavailable")");
    f.workloads[0] = parse_history("w1", text + stop("w1", 9000));
    CHECK(check_no_lost_allocation(f).empty());
    CHECK(unanswered_releases(f).size() == 1);
  }
  SUBCASE("the workload never stopped") {
    Facts f = clean_facts();
    f.workloads[0] = parse_history("w1", cycle("w1", "L1", "d1", 1000, 2000));
    CHECK(mentions(check_no_lost_allocation(f), "w1 did not stop cleanly"));
  }
  SUBCASE("a lease still held at the end is not lost") {
    Facts f = clean_facts();
    const std::string held =
        R"({"t":5000,"w":"w1","ev":"grant","lease":"L3","dtu":"d1","device":"1-1","unit":0,"holder":"x"})"
        "\n";
    f.workloads[0] = parse_history("w1", cycle("w1", "L1", "d1", 1000, 2000) + held + stop("w1", 9000, "L3"));
    CHECK(check_no_lost_allocation(f).empty());
  }
}

TEST_CASE("The history checker reports an in-band stream that failed") {
  Facts f = clean_facts();
  std::string text = cycle("w1", "L1", "d1", 1000, 2000);
  text += "";
  const std::string failed =
      R"({"t":1002,"w":"w1","ev":"error","op":"stream","lease":"L1","code":"closed","what":"closed: expired"})"
      "\n";
  text.insert(text.find("{\"t\":2000"), failed);
  f.workloads[0] = parse_history("w1", text + stop("w1", 9000));
  CHECK(mentions(check_no_lost_allocation(f), "in-band stream failed: closed: expired"));
}

TEST_CASE("The history checker reports short in-band bytes") {
  SUBCASE("a stream wrote less than asked") {
    Facts f = clean_facts();
    f.workloads[0] = parse_history("w1", cycle("w1", "L1", "d1", 1000, 2000, 60) + stop("w1", 9000));
    f.captured[{"d1", "1-1", 1}] = cat({job_bytes("w1", 1, 60), job_bytes("w2", 1)});
    const auto violations = check_bytes(f);
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "short in-band write: w1's lease L1 on d1 1-1 unit 0 wrote 60 of 100 bytes"));
  }
  SUBCASE("the device captured less than the workloads wrote") {
    Facts f = clean_facts();
    f.captured[{"d1", "1-1", 1}].resize(150);
    const auto violations = check_bytes(f);
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "wrote 200 bytes to d1 1-1 OUT 0x01, the device captured 150"));
  }
  SUBCASE("nobody read the device's capture") {
    Facts f = clean_facts();
    f.captured.clear();
    CHECK(mentions(check_bytes(f), "nobody read its capture"));
  }
}

TEST_CASE("The history checker compares what the device captured with the jobs, byte for byte") {
  // Chunks of 25 bytes: w1's job 1 is A0..A3, w2's job 1 is B0..B3.
  const Bytes a = job_bytes("w1", 1);
  const Bytes b = job_bytes("w2", 1);
  auto chunk = [](const Bytes& job, int k) {
    return Bytes(job.begin() + 25 * k, job.begin() + 25 * (k + 1));
  };
  auto with_capture = [](Bytes capture) {
    Facts f = clean_facts();
    f.captured[{"d1", "1-1", 1}] = std::move(capture);
    return check_bytes(f);
  };
  SUBCASE("the jobs in grant order pass") {
    CHECK(with_capture(cat({a, b})).empty());
  }
  SUBCASE("one flipped byte") {
    Bytes c = cat({a, b});
    c[137] ^= 0x01;
    const auto violations = with_capture(c);
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "in-band bytes differ: d1 1-1 OUT 0x01 byte 137"));
    CHECK(mentions(violations, "byte 37 of 100 of w2's job 1 (lease L2)"));
  }
  SUBCASE("a missing chunk") {
    const auto violations = with_capture(cat({chunk(a, 0), chunk(a, 2), chunk(a, 3), b}));
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "byte 25 is"));
    CHECK(mentions(violations, "of w1's job 1 (lease L1)"));
  }
  SUBCASE("a duplicated chunk") {
    const auto violations =
        with_capture(cat({chunk(a, 0), chunk(a, 1), chunk(a, 1), chunk(a, 2), chunk(a, 3), b}));
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "byte 50 is"));
  }
  SUBCASE("a chunk of another job") {
    const auto violations = with_capture(cat({chunk(a, 0), chunk(b, 1), chunk(a, 2), chunk(a, 3), b}));
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "byte 25 is"));
  }
  SUBCASE("the jobs in the wrong order") {
    const auto violations = with_capture(cat({b, a}));
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "byte 0 is"));
  }
  SUBCASE("bytes after the last job") {
    const auto violations = with_capture(cat({a, b, chunk(a, 0)}));
    REQUIRE(violations.size() == 1);
    CHECK(mentions(violations, "captured 225 bytes, the jobs streamed to it account for 200"));
  }
}

TEST_CASE("The history checker accepts a prefix of a job whose stream failed, and nothing else of it") {
  // w1's stream of L1 failed (the channel closed): a prefix of its job may be on the device.
  Facts f = clean_facts();
  std::string text = cycle("w1", "L1", "d1", 1000, 2000);
  const auto bytes_line = text.find(R"("ev":"bytes")");
  const auto line_start = text.rfind('\n', bytes_line) + 1;
  text.replace(line_start, text.find('\n', bytes_line) + 1 - line_start,
               R"({"t":1002,"w":"w1","ev":"error","op":"stream","lease":"L1","endpoint":1,"code":"closed",)"
               R"("what":"closed: link lost"})"
               "\n");
  f.workloads[0] = parse_history("w1", text + stop("w1", 9000));
  const Bytes b = job_bytes("w2", 1);
  SUBCASE("a prefix passes") {
    for (std::uint64_t n : {0ull, 1ull, 25ull, 64ull, 100ull}) {
      CAPTURE(n);
      f.captured[{"d1", "1-1", 1}] = cat({job_bytes("w1", 1, n), b});
      CHECK(check_bytes(f).empty());
    }
  }
  SUBCASE("a gap in it does not") {
    Bytes c = job_bytes("w1", 1, 50);
    c.erase(c.begin() + 10, c.begin() + 20);
    f.captured[{"d1", "1-1", 1}] = cat({c, b});
    CHECK(mentions(check_bytes(f), "in-band bytes differ: d1 1-1 OUT 0x01 byte 10"));
  }
}

TEST_CASE("The history checker excuses leases that ended with their DTU's reboot") {
  Facts f = clean_facts();
  const std::string lost =
      R"({"t":1000,"w":"w1","ev":"grant","lease":"L1","dtu":"d1","device":"1-1","unit":0,"holder":"x"})"
      "\n"
      R"({"t":1001,"w":"w1","ev":"bytes","lease":"L1","dtu":"d1","device":"1-1","unit":0,"endpoint":1,"n":100})"
      "\n"
      R"({"t":3500,"w":"w1","ev":"lease_ended","lease":"L1","reason":"dtu_lost"})"
      "\n";
  f.workloads[0] = parse_history("w1", lost + stop("w1", 9000));
  f.reboots["d1"] = 1500;                             // L1 ended with the reboot, before w2's grant at 3000
  f.captured[{"d1", "1-1", 1}] = job_bytes("w2", 1);  // only w2's bytes since the restart
  CHECK(check_invariants(f).empty());
}

TEST_CASE("The history checker reads dtubroker log lines") {
  auto line = parse_log_line(
      R"(2026-11-21T22:00:00.000Z warn dtu-agent 127.0.0.1:9 manager_lost reason="link lost: eof" n=3)");
  REQUIRE(line);
  CHECK(line->level == "warn");
  CHECK(line->peer == "127.0.0.1:9");
  CHECK(line->event == "manager_lost");
  CHECK(line->fields.at("reason") == "link lost: eof");
  CHECK(line->fields.at("n") == "3");
  CHECK_FALSE(parse_log_line("not a log line"));
  CHECK(current_manager(kAgentLog) == "m1");
  CHECK(open_leases(kAgentLog).empty());
  CHECK(open_leases(kAgentLog.substr(0, kAgentLog.find("lease_ended"))).size() == 1);
}

TEST_CASE("compare_view finds what differs from the DTUs' truth") {
  const std::map<std::string, DtuTruth> truth = {{"d1", DtuTruth{"m1", {{"1-1", {{0, "L1"}}}, {"1-2", {}}}}}};
  const nlohmann::json same = nlohmann::json::parse(R"([
    {"dtu": "d1", "device": "1-1", "owner": "m1", "units": [{"unit": 0, "state": "allocated", "lease": "L1"}]},
    {"dtu": "d1", "device": "1-2", "owner": "m1", "units": [{"unit": 0, "state": "free"}]}])");
  CHECK(compare_view("m2", same, truth, true).empty());

  const nlohmann::json stale = nlohmann::json::parse(R"([
    {"dtu": "d1", "device": "1-1", "owner": "m3", "orphaned": true,
     "units": [{"unit": 0, "state": "free"}]}])");
  const auto differences = compare_view("m2", stale, truth, true);
  CHECK(mentions(differences, "manager m2: d1 1-1 is still orphaned"));
  CHECK(mentions(differences, "owned by 'm3', the DTU is connected to 'm1'"));
  CHECK(mentions(differences, "d1 1-1 unit 0 is free, the DTU holds lease L1"));
  CHECK(mentions(differences, "does not list d1 1-2"));
  // Without units only devices and owners count.
  CHECK(compare_view("m2", stale, truth, false).size() == 3);
}

TEST_CASE("The history parser pairs explicit renewals with their answers") {
  const std::string text =
      R"({"t":1000,"w":"w1","ev":"grant","lease":"L1","dtu":"d1","device":"1-1","unit":0,"holder":"x","seed":11,"job":1})"
      "\n"
      R"({"t":2000,"w":"w1","ev":"renew","lease":"L1"})"
      "\n"
      R"({"t":2500,"w":"w1","ev":"renewed","lease":"L1","ok":false,"error":"link lost"})"
      "\n"
      R"({"t":3000,"w":"w1","ev":"renew","lease":"L1"})"
      "\n"
      R"({"t":3001,"w":"w1","ev":"renewed","lease":"L1","ok":true})"
      "\n"
      R"({"t":4000,"w":"w1","ev":"renew","lease":"L1"})"
      "\n"
      R"({"t":4001,"w":"w1","ev":"renewed","lease":"L2","ok":true})"
      "\n";
  const auto h = parse_history("w1", text);
  REQUIRE(h.leases.size() == 1);
  const auto& l = h.leases[0];
  CHECK(l.seed == std::optional<std::uint64_t>(11));
  CHECK(l.job == std::optional<std::uint64_t>(1));
  REQUIRE(l.renewals.size() == 3);
  CHECK(l.renewals[0].sent_us == 2000);
  CHECK(l.renewals[0].answered_us == std::optional<std::int64_t>(2500));
  CHECK(l.renewals[0].ok == std::optional<bool>(false));
  CHECK(l.renewals[0].error == "link lost");
  CHECK(l.renewals[1].ok == std::optional<bool>(true));
  CHECK(!l.renewals[2].answered_us);  // still in flight
  // An answer for a lease never granted is reported.
  REQUIRE(h.malformed.size() == 1);
  CHECK(h.malformed[0].find("renewed of a lease never granted") != std::string::npos);
}
