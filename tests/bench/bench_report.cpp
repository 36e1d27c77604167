// bench_report: the last step of `make bench`. Reads every benchmark's figures from
// $BENCH_OUT_DIR/*.json (one object per line, tests/bench/bench_output.hpp), resolves each
// `baseline_name` to that metric's value in the same run, computes ratio = value / baseline, judges
// the target where one is given, prints one table, and writes every metric to
// $BENCH_OUT_DIR/results.json (one JSON array: name, unit, value, baseline, ratio, and the rest as
// the bench wrote it, plus `target` as text and `met` true/false where there is a target), and the
// table as Markdown to $BENCH_OUT_DIR/results.md (for docs/performance.md).
//
//   bench_report [DIR]     DIR: default $BENCH_OUT_DIR, else ./build/bench
//
// It never fails on a number: exit 1 only when DIR holds no figures or results.json cannot be
// written; a line that is not a metric is reported (file:line) and skipped.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Row {
  json metric;       // as read, then completed
  std::string file;  // where it came from (the bench's file name, for the table's grouping)
};

std::optional<double> number(const json& metric, const char* key) {
  auto it = metric.find(key);
  if (it == metric.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// A figure in at most 4 significant digits, without exponent for the ranges benches print.
std::string figure(double v) {
  char buffer[64];
  const double a = v < 0 ? -v : v;
  if (a == 0) return "0";
  if (a >= 1000) {
    std::snprintf(buffer, sizeof buffer, "%.0f", v);
  } else if (a >= 100) {
    std::snprintf(buffer, sizeof buffer, "%.1f", v);
  } else if (a >= 1) {
    std::snprintf(buffer, sizeof buffer, "%.2f", v);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.3g", v);
  }
  std::string text = buffer;
  // 20.00 → 20, 0.50 → 0.5: the table shows what was measured, not padding.
  if (text.find('.') != std::string::npos && text.find('e') == std::string::npos) {
    while (text.back() == '0') text.pop_back();
    if (text.back() == '.') text.pop_back();
  }
  return text;
}

// The target as text ("≤ 300 us", "ratio ≥ 20") and whether the figure meets it; nullopt for none.
std::optional<std::pair<std::string, bool>> judge(const json& m) {
  std::vector<std::string> parts;
  bool met = true;
  const std::string unit = m.value("unit", "");
  const double value = m.value("value", 0.0);
  const std::optional<double> ratio = number(m, "ratio");
  if (auto max = number(m, "target_max")) {
    parts.push_back("<= " + figure(*max) + " " + unit);
    met = met && value <= *max;
  }
  if (auto min = number(m, "target_min")) {
    parts.push_back(">= " + figure(*min) + " " + unit);
    met = met && value >= *min;
  }
  if (auto max = number(m, "target_ratio_max")) {
    parts.push_back("ratio <= " + figure(*max));
    met = met && ratio && *ratio <= *max;
  }
  if (auto min = number(m, "target_ratio_min")) {
    parts.push_back("ratio >= " + figure(*min));
    met = met && ratio && *ratio >= *min;
  }
  if (parts.empty()) return std::nullopt;
  std::string text = parts[0];
  for (std::size_t i = 1; i < parts.size(); ++i) text += ", " + parts[i];
  return std::make_pair(text, met);
}

std::vector<Row> read_rows(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().extension() == ".json" &&
        entry.path().filename() != "results.json") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<Row> rows;
  for (const auto& path : files) {
    std::ifstream in(path);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json metric = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!metric.is_object() || !metric.contains("name") || !metric["name"].is_string() ||
          !metric.contains("value") || !metric["value"].is_number()) {
        std::cerr << "bench_report: " << path.string() << ":" << number
                  << ": not a metric (name, value), skipped\n";
        continue;
      }
      rows.push_back({std::move(metric), path.stem().string()});
    }
  }
  return rows;
}

// Fills baseline and ratio from baseline_name (a metric of this run), or the ratio from a fixed
// baseline the bench gave.
void resolve(std::vector<Row>& rows) {
  std::map<std::string, double> values;
  for (const Row& r : rows) values[r.metric["name"].get<std::string>()] = r.metric["value"].get<double>();
  for (Row& r : rows) {
    json& m = r.metric;
    if (auto it = m.find("baseline_name"); it != m.end() && it->is_string()) {
      auto found = values.find(it->get<std::string>());
      if (found != values.end()) {
        m["baseline"] = found->second;
      } else {
        m["baseline"] = nullptr;
        m["note"] = m.value("note", "") + (m.value("note", "").empty() ? "" : "; ") + "baseline " +
                    it->get<std::string>() + " not measured in this run";
      }
    }
    const std::optional<double> baseline = number(m, "baseline");
    if (baseline && *baseline != 0) {
      m["ratio"] = m["value"].get<double>() / *baseline;
    } else {
      m["ratio"] = nullptr;
    }
    if (auto verdict = judge(m)) {
      m["target"] = verdict->first;
      m["met"] = verdict->second;
    }
  }
}

std::string pad(std::string s, std::size_t width) {
  // Pads by display width; the table is ASCII but for the metric names benches choose.
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

std::string baseline_text(const json& m) {
  if (auto b = number(m, "baseline")) {
    std::string text = figure(*b);
    if (m.contains("baseline_name")) text += " (" + m["baseline_name"].get<std::string>() + ")";
    return text;
  }
  return m.contains("baseline_name") ? "not measured" : "-";
}

void print_table(const std::vector<Row>& rows) {
  std::size_t name_width = 6;
  std::size_t baseline_width = 8;
  for (const Row& r : rows) {
    name_width = std::max(name_width, r.metric["name"].get<std::string>().size());
    baseline_width = std::max(baseline_width, baseline_text(r.metric).size());
  }
  std::cout << "\n== dtubroker benchmarks: every figure of this run ==\n";
  std::string last_file;
  int met = 0;
  int missed = 0;
  for (const Row& r : rows) {
    const json& m = r.metric;
    if (r.file != last_file) {
      std::cout << "\n[" << r.file << "]\n"
                << pad("metric", name_width) << "  " << pad("value", 12) << pad("unit", 8)
                << pad("baseline", baseline_width + 2) << pad("ratio", 10) << "target\n";
      last_file = r.file;
    }
    std::string ratio = "-";
    if (auto q = number(m, "ratio")) ratio = figure(*q);
    std::string target;
    if (m.contains("target")) {
      target = m["target"].get<std::string>() + (m["met"].get<bool>() ? "  met" : "  MISSED");
      (m["met"].get<bool>() ? met : missed) += 1;
    }
    std::cout << pad(m["name"].get<std::string>(), name_width) << "  "
              << pad(figure(m["value"].get<double>()), 12) << pad(m.value("unit", ""), 8)
              << pad(baseline_text(m), baseline_width + 2) << pad(ratio, 10) << target << "\n";
  }
  std::cout << "\n" << rows.size() << " figures; targets: " << met << " met, " << missed << " missed\n";
  if (missed > 0) {
    std::cout << "missed:";
    for (const Row& r : rows) {
      if (r.metric.contains("met") && !r.metric["met"].get<bool>())
        std::cout << " " << r.metric["name"].get<std::string>();
    }
    std::cout << "\n";
  }
}

// The same table in Markdown, for docs/performance.md.
std::string markdown(const std::vector<Row>& rows) {
  std::ostringstream out;
  out << "| metric | value | unit | baseline | ratio | target |\n|---|---:|---|---|---:|---|\n";
  for (const Row& r : rows) {
    const json& m = r.metric;
    std::string ratio = "-";
    if (auto q = number(m, "ratio")) ratio = figure(*q);
    std::string target;
    if (m.contains("target"))
      target = m["target"].get<std::string>() + (m["met"].get<bool>() ? " — met" : " — **missed**");
    out << "| " << m["name"].get<std::string>() << " | " << figure(m["value"].get<double>()) << " | "
        << m.value("unit", "") << " | " << baseline_text(m) << " | " << ratio << " | " << target << " |\n";
  }
  return out.str();
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = "build/bench";
  if (const char* env = std::getenv("BENCH_OUT_DIR"); env != nullptr && *env != '\0') dir = env;
  if (argc > 1) dir = argv[1];
  if (argc > 2 || (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help"))) {
    std::cerr << "usage: bench_report [DIR]   (default $BENCH_OUT_DIR, else build/bench)\n";
    return 2;
  }
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    std::cerr << "bench_report: " << dir.string() << " is not a directory (run `make bench`)\n";
    return 1;
  }
  std::vector<Row> rows = read_rows(dir);
  if (rows.empty()) {
    std::cerr << "bench_report: no figures in " << dir.string() << "/*.json\n";
    return 1;
  }
  resolve(rows);
  print_table(rows);
  json all = json::array();
  for (const Row& r : rows) {
    json m = r.metric;
    m["bench"] = r.file;
    all.push_back(std::move(m));
  }
  const fs::path out = dir / "results.json";
  std::ofstream file(out, std::ios::trunc);
  file << all.dump(2) << "\n";
  file.flush();
  if (!file.good()) {
    std::cerr << "bench_report: cannot write " << out.string() << "\n";
    return 1;
  }
  const fs::path table = dir / "results.md";
  std::ofstream md(table, std::ios::trunc);
  md << markdown(rows);
  md.flush();
  if (!md.good()) {
    std::cerr << "bench_report: cannot write " << table.string() << "\n";
    return 1;
  }
  std::cout << "results: " << out.string() << " (table: " << table.string() << ")\n";
  return 0;
}
