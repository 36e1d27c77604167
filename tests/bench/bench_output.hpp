// What every benchmark writes: one JSON object per line, to $BENCH_OUT_DIR/<bench>.json (default
// <source>/build/bench/), and the percentiles it reports. bench_report (tests/bench/bench_report.cpp,
// run last by `make bench`) reads every such file of the run, resolves each `baseline_name` to
// that metric's value from the same run, computes the ratio value / baseline, judges the target,
// prints the table and writes results.json.
//
//   {"name": "dtu.alloc_rtt.p50", "unit": "us", "value": 212.0,
//    "baseline": null, "ratio": null,          // or a fixed figure and its ratio
//    "baseline_name": "etcd.claim.p50",        // optional: a metric of the same run
//    "target_max": 300, "target_min": …,       // optional: the target on the value
//    "target_ratio_max": 0.1, "target_ratio_min": …,  // optional: the target on the ratio
//    "note": "…"}                              // optional: one line on how it was measured
//
// Benchmarks print figures; they never fail on a number. Header-only; used by the C++ benches.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dtu::bench {

struct Target {
  std::optional<double> max;        // value ≤ max
  std::optional<double> min;        // value ≥ min
  std::optional<double> ratio_max;  // value / baseline ≤ ratio_max
  std::optional<double> ratio_min;  // value / baseline ≥ ratio_min
};

struct Metric {
  std::string name;
  std::string unit;
  double value = 0;
  std::string baseline_name = {};  // empty: none
  Target target = {};
  std::string note = {};
};

// The p-th percentile (0–100) of `samples` by nearest rank; 0 for none.
inline double percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const auto rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(samples.size()) + 0.5);
  return samples[std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1)];
}

inline double median(std::vector<double> samples) {
  return percentile(std::move(samples), 50);
}

inline std::filesystem::path output_dir() {
  const char* dir = std::getenv("BENCH_OUT_DIR");
  if (dir != nullptr && *dir != '\0') return dir;
#ifdef DTU_SOURCE_DIR
  return std::filesystem::path(DTU_SOURCE_DIR) / "build" / "bench";
#else
  return std::filesystem::current_path() / "bench";
#endif
}

inline nlohmann::json to_json(const Metric& m) {
  nlohmann::json line{
      {"name", m.name}, {"unit", m.unit}, {"value", m.value}, {"baseline", nullptr}, {"ratio", nullptr}};
  if (!m.baseline_name.empty()) line["baseline_name"] = m.baseline_name;
  if (m.target.max) line["target_max"] = *m.target.max;
  if (m.target.min) line["target_min"] = *m.target.min;
  if (m.target.ratio_max) line["target_ratio_max"] = *m.target.ratio_max;
  if (m.target.ratio_min) line["target_ratio_min"] = *m.target.ratio_min;
  if (!m.note.empty()) line["note"] = m.note;
  return line;
}

// Writes `metrics` to <output_dir>/<file> (replacing it); throws std::runtime_error naming the
// path when it cannot.
inline std::filesystem::path write_metrics(const std::string& file, const std::vector<Metric>& metrics) {
  const auto dir = output_dir();
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  const auto path = dir / file;
  std::ofstream out(path, std::ios::trunc);
  for (const Metric& m : metrics) out << to_json(m).dump() << '\n';
  out.flush();
  if (!out.good()) throw std::runtime_error("cannot write " + path.string());
  return path;
}

}  // namespace dtu::bench
