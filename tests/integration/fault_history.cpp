#include "fault_history.hpp"

#include <algorithm>
#include <optional>

#include <cstdio>
#include <limits>
#include <sstream>
#include "fault_pattern.hpp"

namespace dtu::testing::faults {
namespace {

using nlohmann::json;

constexpr std::int64_t kForever = std::numeric_limits<std::int64_t>::max();

std::string hex_byte(std::uint32_t v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", v & 0xffu);
  return buf;
}

// Splits text into lines (the last one may lack its '\n').
std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    out.push_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

// Splits a log line into words; a word may hold a quoted value with backslash escapes
// (key="a b"), which comes back unquoted.
std::vector<std::string> log_words(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == ' ') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c != '"') {
      word.push_back(c);
      continue;
    }
    for (++i; i < line.size() && line[i] != '"'; ++i) {
      if (line[i] != '\\' || i + 1 == line.size()) {
        word.push_back(line[i]);
        continue;
      }
      const char e = line[++i];
      if (e == 'n')
        word.push_back('\n');
      else if (e == 'r')
        word.push_back('\r');
      else if (e == 't')
        word.push_back('\t');
      else if (e == 'x' && i + 2 < line.size()) {
        word.push_back(static_cast<char>(std::stoi(std::string(line.substr(i + 1, 2)), nullptr, 16)));
        i += 2;
      } else {
        word.push_back(e);
      }
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

// The unit of an agent log line (device=, unit=).
std::pair<std::string, std::uint32_t> unit_of(const LogLine& line) {
  const auto device = line.fields.find("device");
  const auto unit = line.fields.find("unit");
  std::uint32_t n = 0;
  if (unit != line.fields.end()) {
    try {
      n = static_cast<std::uint32_t>(std::stoul(unit->second));
    } catch (const std::exception&) {
      n = std::numeric_limits<std::uint32_t>::max();
    }
  }
  return {device == line.fields.end() ? std::string() : device->second, n};
}

std::string field(const LogLine& line, const std::string& key) {
  auto it = line.fields.find(key);
  return it == line.fields.end() ? std::string() : it->second;
}

// Holding interval of a lease in the workload's own view: from the grant until it gave the
// unit up (release), learnt it had ended, or forever (held at the end). A rebooted DTU's
// leases end at the reboot at the latest.
std::pair<std::int64_t, std::int64_t> interval(const LeaseHistory& l, const Facts& facts) {
  std::int64_t end = kForever;
  if (l.given_up_us) end = *l.given_up_us;
  if (l.lost_us) end = std::min(end, *l.lost_us);
  if (auto reboot = facts.reboots.find(l.unit.dtu);
      reboot != facts.reboots.end() && l.granted_us < reboot->second) {
    end = std::min(end, reboot->second);
  }
  return {l.granted_us, end};
}

bool ended_by_reboot(const LeaseHistory& l, const Facts& facts) {
  auto reboot = facts.reboots.find(l.unit.dtu);
  return reboot != facts.reboots.end() && l.granted_us < reboot->second;
}

// A string member of a JSON object; empty when absent or not a string (null).
std::string text_of(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string time_text(std::int64_t us) {
  return us == kForever ? std::string("the end") : std::to_string(us) + " µs";
}

}  // namespace

std::string UnitKey::text() const {
  return dtu + " " + device + " unit " + std::to_string(unit);
}

std::string SinkKey::text() const {
  return dtu + " " + device + " OUT " + hex_byte(endpoint);
}

WorkloadHistory parse_history(std::string_view workload, std::string_view jsonl) {
  WorkloadHistory h;
  h.workload = workload;
  std::map<std::string, std::size_t> by_lease;  // lease id -> index in h.leases
  auto lease_of = [&](const json& j) -> LeaseHistory* {
    const auto id = j.value("lease", std::string());
    auto it = by_lease.find(id);
    return it == by_lease.end() ? nullptr : &h.leases[it->second];
  };
  std::size_t number = 0;
  for (std::string_view text : lines_of(jsonl)) {
    ++number;
    if (text.empty()) continue;
    const std::string where = h.workload + " history line " + std::to_string(number);
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ev") || !j.contains("t")) {
      h.malformed.push_back(where + ": not a history event: " + std::string(text));
      continue;
    }
    try {
      const std::string ev = j.at("ev").get<std::string>();
      const auto t = j.at("t").get<std::int64_t>();
      if (ev == "grant") {
        LeaseHistory l;
        l.workload = h.workload;
        l.lease = j.at("lease").get<std::string>();
        l.unit = {j.at("dtu").get<std::string>(), j.at("device").get<std::string>(),
                  j.at("unit").get<std::uint32_t>()};
        l.granted_us = t;
        if (j.contains("seed")) l.seed = j.at("seed").get<std::uint64_t>();
        if (j.contains("job")) l.job = j.at("job").get<std::uint64_t>();
        by_lease[l.lease] = h.leases.size();
        h.leases.push_back(std::move(l));
        continue;
      }
      if (ev == "error" && j.value("op", std::string()) == "allocate") {
        ++h.allocate_errors;
        continue;
      }
      if (ev == "stop") {
        h.stopped = true;
        h.gave_up = j.value("gave_up", false);
        for (const auto& id : j.value("held", json::array())) {
          if (auto it = by_lease.find(id.get<std::string>()); it != by_lease.end())
            h.leases[it->second].held_at_stop = true;
        }
        continue;
      }
      LeaseHistory* l = lease_of(j);
      if (l == nullptr) {
        if (ev == "error") {
          h.malformed.push_back(where + ": " + j.value("op", std::string("?")) +
                                " failed: " + j.value("what", std::string()));
        } else {
          h.malformed.push_back(where + ": " + ev + " of a lease never granted: " + std::string(text));
        }
        continue;
      }
      if (ev == "bytes") {
        l->streams.emplace_back(j.at("endpoint").get<std::uint32_t>(), j.at("n").get<std::uint64_t>());
      } else if (ev == "release") {
        l->given_up_us = t;
      } else if (ev == "released") {
        l->released_ok = j.at("ok").get<bool>();
        l->release_error = j.value("error", std::string());
        l->release_transient = j.value("transient", false);
      } else if (ev == "lease_ended") {
        l->lost_us = t;
        l->lost_reason = j.value("reason", std::string());
      } else if (ev == "renew") {
        l->renewals.push_back({t, std::nullopt, std::nullopt, {}});
      } else if (ev == "renewed") {
        auto open = std::find_if(l->renewals.begin(), l->renewals.end(),
                                 [](const LeaseHistory::Renewal& r) { return !r.answered_us; });
        if (open == l->renewals.end()) {
          h.malformed.push_back(where + ": an answer to a renewal never sent: " + std::string(text));
          continue;
        }
        open->answered_us = t;
        open->ok = j.at("ok").get<bool>();
        open->error = j.value("error", std::string());
      } else if (ev == "error") {
        if (j.value("op", std::string()) == "stream" && j.contains("endpoint"))
          l->failed_stream = j.at("endpoint").get<std::uint32_t>();
        l->errors.push_back(j.value("op", std::string("?")) + " failed: " + j.value("what", std::string()));
      } else {
        h.malformed.push_back(where + ": unknown event " + ev);
      }
    } catch (const json::exception& e) {
      h.malformed.push_back(where + ": " + e.what() + ": " + std::string(text));
    }
  }
  return h;
}

std::optional<LogLine> parse_log_line(std::string_view text) {
  auto words = log_words(text);
  std::size_t i = 0;
  // An optional UTC timestamp leads ("2026-11-21T22:45:58.123Z").
  if (!words.empty() && !words[0].empty() && words[0].back() == 'Z' &&
      words[0].find('T') != std::string::npos)
    i = 1;
  if (words.size() < i + 4) return std::nullopt;
  LogLine line;
  line.level = words[i];
  if (line.level != "debug" && line.level != "info" && line.level != "warn" && line.level != "error")
    return std::nullopt;
  line.component = words[i + 1];
  line.peer = words[i + 2];
  line.event = words[i + 3];
  for (std::size_t k = i + 4; k < words.size(); ++k) {
    const auto eq = words[k].find('=');
    if (eq == std::string::npos) continue;
    line.fields[words[k].substr(0, eq)] = words[k].substr(eq + 1);
  }
  return line;
}

std::vector<LogLine> log_events(std::string_view log, std::string_view event) {
  std::vector<LogLine> out;
  for (std::string_view text : lines_of(log)) {
    if (text.find(event) == std::string_view::npos) continue;
    auto line = parse_log_line(text);
    if (line && line->event == event) out.push_back(std::move(*line));
  }
  return out;
}

std::map<std::pair<std::string, std::uint32_t>, std::string> open_leases(std::string_view agent_log) {
  std::map<std::pair<std::string, std::uint32_t>, std::string> open;
  for (std::string_view text : lines_of(agent_log)) {
    if (text.find("lease_") == std::string_view::npos) continue;
    auto line = parse_log_line(text);
    if (!line) continue;
    if (line->event == "lease_granted") open[unit_of(*line)] = field(*line, "lease");
    if (line->event == "lease_ended") {
      auto it = open.find(unit_of(*line));
      if (it != open.end() && it->second == field(*line, "lease")) open.erase(it);
    }
  }
  return open;
}

std::set<std::string> attached_devices(std::string_view agent_log) {
  std::set<std::string> devices;
  for (std::string_view text : lines_of(agent_log)) {
    if (text.find("device_") == std::string_view::npos) continue;
    auto line = parse_log_line(text);
    if (!line) continue;
    if (line->event == "device_attached") devices.insert(field(*line, "device"));
    if (line->event == "device_detached") devices.erase(field(*line, "device"));
  }
  return devices;
}

std::string current_manager(std::string_view agent_log) {
  std::string manager;
  for (std::string_view text : lines_of(agent_log)) {
    auto line = parse_log_line(text);
    if (!line) continue;
    if (line->event == "connected") manager = field(*line, "manager");
    if (line->event == "manager_lost" || line->event == "manager_move" || line->event == "stopping")
      manager.clear();
  }
  return manager;
}

std::vector<std::string> check_single_holder(const Facts& facts) {
  std::vector<std::string> violations;
  // The workloads' view: intervals on one unit never overlap.
  std::map<UnitKey, std::vector<const LeaseHistory*>> by_unit;
  for (const auto& w : facts.workloads) {
    for (const auto& l : w.leases) by_unit[l.unit].push_back(&l);
  }
  for (auto& [unit, leases] : by_unit) {
    std::sort(leases.begin(), leases.end(),
              [](const LeaseHistory* a, const LeaseHistory* b) { return a->granted_us < b->granted_us; });
    for (std::size_t i = 1; i < leases.size(); ++i) {
      // Against every earlier interval still open at this grant (not just the previous one).
      for (std::size_t k = 0; k < i; ++k) {
        const auto [start, end] = interval(*leases[k], facts);
        if (leases[i]->granted_us >= end) continue;
        violations.push_back("two holders of " + unit.text() + ": " + leases[i]->workload + " got lease " +
                             leases[i]->lease + " at " + std::to_string(leases[i]->granted_us) +
                             " µs while " + leases[k]->workload + " held lease " + leases[k]->lease +
                             " (from " + std::to_string(start) + " µs to " + time_text(end) + ")");
      }
    }
  }
  // The DTUs' view: a unit is granted again only after its lease ended.
  for (const auto& dtu : facts.dtus) {
    for (std::size_t n = 0; n < dtu.incarnations.size(); ++n) {
      std::map<std::pair<std::string, std::uint32_t>, std::pair<std::string, std::string>>
          open;  // -> lease, holder
      for (std::string_view text : lines_of(dtu.incarnations[n])) {
        if (text.find("lease_") == std::string_view::npos) continue;
        auto line = parse_log_line(text);
        if (!line) continue;
        const auto unit = unit_of(*line);
        const UnitKey key{dtu.dtu, unit.first, unit.second};
        if (line->event == "lease_granted") {
          if (auto it = open.find(unit); it != open.end()) {
            violations.push_back("DTU " + dtu.dtu + " (start " + std::to_string(n + 1) + ") granted " +
                                 key.text() + " to " + field(*line, "holder") + " (lease " +
                                 field(*line, "lease") + ") while lease " + it->second.first + " of " +
                                 it->second.second + " was held");
          }
          open[unit] = {field(*line, "lease"), field(*line, "holder")};
        } else if (line->event == "lease_ended") {
          auto it = open.find(unit);
          if (it != open.end() && it->second.first == field(*line, "lease")) open.erase(it);
        }
      }
    }
  }
  return violations;
}

std::vector<std::string> check_no_lost_allocation(const Facts& facts) {
  std::vector<std::string> violations;
  for (const auto& w : facts.workloads) {
    for (const auto& m : w.malformed) violations.push_back(m);
    if (!w.stopped) violations.push_back(w.workload + " did not stop cleanly (its history has no stop line)");
    if (w.gave_up) violations.push_back(w.workload + " gave up: every allocation attempt failed");
    for (const auto& l : w.leases) {
      const std::string what = w.workload + "'s lease " + l.lease + " on " + l.unit.text();
      const bool excused = ended_by_reboot(l, facts);
      if (excused) continue;  // the DTU itself reset: its leases end with it
      for (const auto& e : l.errors) violations.push_back(what + ": in-band " + e);
      if (l.lost_us) {
        violations.push_back("allocation lost: " + what + " ended without its release (" + l.lost_reason +
                             ") at " + std::to_string(*l.lost_us) + " µs");
        continue;
      }
      if (l.given_up_us) {
        if (!l.released_ok) {
          violations.push_back(what + ": released but the history has no answer");
        } else if (!*l.released_ok && !l.release_transient) {
          violations.push_back(what + ": the release failed: " + l.release_error);
        }
        continue;
      }
      if (!l.held_at_stop) {
        violations.push_back("allocation lost: " + what + " was neither released nor held when " +
                             w.workload + " stopped");
      }
    }
  }
  return violations;
}

std::vector<std::string> unanswered_releases(const Facts& facts) {
  std::vector<std::string> out;
  for (const auto& w : facts.workloads) {
    for (const auto& l : w.leases) {
      if (l.released_ok == std::optional<bool>(false) && l.release_transient) {
        out.push_back(w.workload + "'s lease " + l.lease + " on " + l.unit.text() + ": " + l.release_error);
      }
    }
  }
  return out;
}

namespace {

// One job streamed (or tried) to a sink: what the sink must hold of it.
struct SinkJob {
  const LeaseHistory* lease = nullptr;
  std::uint64_t length = 0;  // bytes the history says were written; the whole job when failed
  bool failed = false;       // the stream failed: any prefix of the job may be there
};

std::string job_text(const SinkJob& j) {
  return j.lease->workload + "'s job " + (j.lease->job ? std::to_string(*j.lease->job) : std::string("?")) +
         " (lease " + j.lease->lease + ")";
}

// Whether `capture` at `at` holds the first bytes (up to a block) of a job of `length` bytes.
bool starts_job(const std::vector<std::uint8_t>& capture, std::uint64_t at, std::uint64_t seed,
                std::uint64_t job, std::uint64_t length) {
  const std::uint64_t n = std::min<std::uint64_t>(8, length);
  if (at + n > capture.size()) return false;
  for (std::uint64_t i = 0; i < n; ++i) {
    if (capture[at + i] != pattern_byte(seed, job, i)) return false;
  }
  return true;
}

// Walks `capture` through `jobs` in order; the first difference, or nullopt when it is exactly
// the jobs (see check_bytes for what a failed job may leave).
std::optional<std::string> compare_capture(const SinkKey& sink, const std::vector<std::uint8_t>& capture,
                                           const std::vector<SinkJob>& jobs) {
  std::uint64_t at = 0;
  std::uint64_t expected_total = 0;
  for (const auto& j : jobs) {
    if (!j.failed) expected_total += j.length;
  }
  for (std::size_t k = 0; k < jobs.size(); ++k) {
    const SinkJob& j = jobs[k];
    const std::uint64_t seed = *j.lease->seed;
    const std::uint64_t job = *j.lease->job;
    std::uint64_t i = 0;
    for (; i < j.length && at + i < capture.size(); ++i) {
      const std::uint8_t want = pattern_byte(seed, job, i);
      if (capture[at + i] == want) continue;
      if (j.failed) break;  // the failed stream's prefix ends here
      return "in-band bytes differ: " + sink.text() + " byte " + std::to_string(at + i) + " is " +
             hex_byte(capture[at + i]) + ", expected " + hex_byte(want) + " (byte " + std::to_string(i) +
             " of " + std::to_string(j.length) + " of " + job_text(j) + ")";
    }
    if (i < j.length && !j.failed) {
      return "in-band bytes incomplete: the workloads wrote " + std::to_string(expected_total) +
             " bytes to " + sink.text() + ", the device captured " + std::to_string(capture.size()) +
             " (it ends at byte " + std::to_string(i) + " of " + std::to_string(j.length) + " of " +
             job_text(j) + ")";
    }
    if (j.failed && k + 1 < jobs.size()) {
      // The prefix matched greedily: the next job's first bytes may equal the failed job's
      // continuation by chance (1/256 a byte). Give back up to a block where the next job starts.
      const SinkJob& next = jobs[k + 1];
      for (std::uint64_t back = 0; back <= std::min<std::uint64_t>(i, 8); ++back) {
        if (starts_job(capture, at + i - back, *next.lease->seed, *next.lease->job, next.length)) {
          i -= back;
          break;
        }
      }
    }
    at += i;
  }
  if (at < capture.size()) {
    return "in-band bytes unexpected: " + sink.text() + " captured " + std::to_string(capture.size()) +
           " bytes, the jobs streamed to it account for " + std::to_string(at) + "; byte " +
           std::to_string(at) + " on belongs to no job" +
           (jobs.empty() ? std::string() : " (the last is " + job_text(jobs.back()) + ")");
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> check_bytes(const Facts& facts) {
  std::vector<std::string> violations;
  std::map<SinkKey, std::vector<SinkJob>> jobs;
  for (const auto& w : facts.workloads) {
    for (const auto& l : w.leases) {
      for (const auto& [endpoint, n] : l.streams) {
        if (n != facts.bytes_per_stream) {
          violations.push_back("short in-band write: " + w.workload + "'s lease " + l.lease + " on " +
                               l.unit.text() + " wrote " + std::to_string(n) + " of " +
                               std::to_string(facts.bytes_per_stream) + " bytes");
        }
      }
      // A rebooted DTU's sinks start again with its restart: only later jobs are in them.
      if (ended_by_reboot(l, facts)) continue;
      if (l.streams.empty() && !l.failed_stream) continue;  // nothing was written
      if (!l.seed || !l.job) {
        violations.push_back(w.workload + "'s lease " + l.lease +
                             " streamed, but its grant names no seed and job");
        continue;
      }
      for (const auto& [endpoint, n] : l.streams) {
        jobs[{l.unit.dtu, l.unit.device, endpoint}].push_back({&l, n, false});
      }
      if (l.failed_stream) {
        jobs[{l.unit.dtu, l.unit.device, *l.failed_stream}].push_back({&l, facts.bytes_per_stream, true});
      }
    }
  }
  std::set<SinkKey> sinks;
  for (const auto& [sink, j] : jobs) sinks.insert(sink);
  for (const auto& [sink, c] : facts.captured) sinks.insert(sink);
  for (const auto& sink : sinks) {
    auto& on_sink = jobs[sink];
    std::stable_sort(on_sink.begin(), on_sink.end(), [](const SinkJob& a, const SinkJob& b) {
      return a.lease->granted_us < b.lease->granted_us;
    });
    const auto c = facts.captured.find(sink);
    if (c == facts.captured.end()) {
      std::uint64_t w = 0;
      for (const auto& j : on_sink) w += j.failed ? 0 : j.length;
      violations.push_back("in-band bytes unaccounted: the workloads wrote " + std::to_string(w) +
                           " bytes to " + sink.text() + " and nobody read its capture");
      continue;
    }
    if (auto difference = compare_capture(sink, c->second, on_sink))
      violations.push_back(std::move(*difference));
  }
  return violations;
}

std::vector<std::string> check_invariants(const Facts& facts) {
  auto all = check_single_holder(facts);
  for (auto& v : check_no_lost_allocation(facts)) all.push_back(std::move(v));
  for (auto& v : check_bytes(facts)) all.push_back(std::move(v));
  return all;
}

std::vector<std::string> compare_view(const std::string& manager, const json& devices,
                                      const std::map<std::string, DtuTruth>& truth, bool units) {
  std::vector<std::string> differences;
  std::set<std::pair<std::string, std::string>> seen;
  const std::string who = "manager " + manager + ": ";
  if (!devices.is_array()) return {who + "devices --group --json is not an array"};
  for (const auto& d : devices) {
    const auto dtu = text_of(d, "dtu");
    const auto device = text_of(d, "device");
    seen.insert({dtu, device});
    const auto t = truth.find(dtu);
    if (t == truth.end() || !t->second.devices.contains(device)) {
      differences.push_back(who + "lists " + dtu + " " + device + ", which the DTU does not report");
      continue;
    }
    if (d.contains("orphaned") && d.at("orphaned") == true)
      differences.push_back(who + dtu + " " + device + " is still orphaned");
    const auto owner = text_of(d, "owner");
    if (owner != t->second.owner) {
      differences.push_back(who + dtu + " " + device + " owned by '" + owner +
                            "', the DTU is connected to '" + t->second.owner + "'");
    }
    if (!units) continue;
    const auto& leases = t->second.devices.at(device);
    for (const auto& u : d.contains("units") && d.at("units").is_array() ? d.at("units") : json::array()) {
      const auto n =
          u.contains("unit") && u.at("unit").is_number_unsigned() ? u.at("unit").get<std::uint32_t>() : 0u;
      const auto state = text_of(u, "state");
      const auto lease = text_of(u, "lease");
      const auto held = leases.find(n);
      const UnitKey key{dtu, device, n};
      if (held != leases.end() && (state != "allocated" || lease != held->second)) {
        differences.push_back(who + key.text() + " is " + state +
                              (lease.empty() ? "" : " (lease " + lease + ")") + ", the DTU holds lease " +
                              held->second);
      }
      if (held == leases.end() && state == "allocated") {
        differences.push_back(who + key.text() + " is allocated (lease " + lease +
                              "), the DTU holds no lease on it");
      }
    }
  }
  for (const auto& [dtu, t] : truth) {
    for (const auto& [device, leases] : t.devices) {
      if (!seen.contains({dtu, device})) differences.push_back(who + "does not list " + dtu + " " + device);
    }
  }
  return differences;
}

}  // namespace dtu::testing::faults
