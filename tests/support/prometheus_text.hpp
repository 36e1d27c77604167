// A strict reader of the Prometheus text exposition format 0.0.4, for tests: it refuses what
// Prometheus (or `promtool check metrics`) would refuse or warn about, and gives the samples'
// values. Header-only; any thread.
//
// Checked: HELP and TYPE at most once per family and before its samples; the samples of a family
// together; metric and label names valid; label values escaped (only \\ \" \n); no label twice
// in a series and no series twice; values that parse as floats (+Inf, -Inf, NaN); counters end
// in _total; histograms have _bucket series with ascending le, cumulative counts, a +Inf bucket
// equal to _count, and _sum; every line ends in '\n'.
#pragma once

#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace dtu::testing {

using PromLabels = std::map<std::string, std::string>;

struct PromSample {
  std::string name;  // as written: x_bucket, x_sum, …
  PromLabels labels;
  double value = 0;
};

struct PromFamily {
  std::string type = "untyped";
  std::optional<std::string> help;
  std::vector<PromSample> samples;
};

struct PromText {
  std::map<std::string, PromFamily> families;
  std::string error;  // empty when the text is valid

  bool ok() const { return error.empty(); }
  // The value of the sample `name` with exactly `labels`, if there is one.
  std::optional<double> value(const std::string& name, const PromLabels& labels = {}) const {
    for (const auto& [family, f] : families) {
      for (const auto& s : f.samples) {
        if (s.name == name && s.labels == labels) return s.value;
      }
    }
    return std::nullopt;
  }
};

namespace prom_detail {

inline bool name_char(char c, bool first, bool colon) {
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
  return alpha || (!first && c >= '0' && c <= '9');
}

inline bool valid_name(std::string_view s, bool colon) {
  if (s.empty()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!name_char(s[i], i == 0, colon)) return false;
  }
  return true;
}

inline std::optional<double> parse_value(std::string_view s) {
  if (s == "+Inf" || s == "Inf") return HUGE_VAL;
  if (s == "-Inf") return -HUGE_VAL;
  if (s == "NaN") return std::nan("");
  if (s.empty()) return std::nullopt;
  const std::string text(s);
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return std::nullopt;
  if (std::isnan(v) || std::isinf(v)) return std::nullopt;  // spelled some other way
  return v;
}

// The family a sample name belongs to, given the families typed so far.
inline std::string family_of(const std::string& name, const std::map<std::string, PromFamily>& families) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string_view sv(suffix);
    if (name.size() > sv.size() && name.ends_with(sv)) {
      const std::string base = name.substr(0, name.size() - sv.size());
      auto it = families.find(base);
      if (it != families.end() && it->second.type == "histogram") return base;
    }
  }
  return name;
}

inline std::string check_histogram(const std::string& name, const PromFamily& f) {
  // Group the series by their labels without le.
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // (le, count) in order of appearance
    std::optional<double> sum, count;
  };
  std::map<PromLabels, Series> series;
  for (const auto& s : f.samples) {
    PromLabels base = s.labels;
    if (s.name == name + "_bucket") {
      auto le = base.find("le");
      if (le == base.end()) return name + "_bucket without an le label";
      auto bound = parse_value(le->second);
      if (!bound) return name + "_bucket with le=\"" + le->second + "\" that is not a number";
      base.erase(le);
      series[base].buckets.emplace_back(*bound, s.value);
    } else if (s.name == name + "_sum") {
      if (base.contains("le")) return name + "_sum with an le label";
      series[base].sum = s.value;
    } else if (s.name == name + "_count") {
      if (base.contains("le")) return name + "_count with an le label";
      series[base].count = s.value;
    } else {
      return "histogram " + name + " has a sample " + s.name;
    }
  }
  for (const auto& [labels, s] : series) {
    if (s.buckets.empty()) return name + ": a series without buckets";
    if (!s.sum || !s.count) return name + ": a series without _sum or _count";
    for (std::size_t i = 1; i < s.buckets.size(); ++i) {
      if (!(s.buckets[i - 1].first < s.buckets[i].first)) return name + ": le bounds not ascending";
      if (s.buckets[i].second < s.buckets[i - 1].second) return name + ": bucket counts not cumulative";
    }
    if (!std::isinf(s.buckets.back().first)) return name + ": no +Inf bucket";
    if (s.buckets.back().second != *s.count) return name + ": the +Inf bucket differs from _count";
  }
  return {};
}

}  // namespace prom_detail

inline PromText parse_prometheus_text(std::string_view text) {
  using namespace prom_detail;
  PromText out;
  auto fail = [&](std::size_t line_no, const std::string& why) {
    out.error = "line " + std::to_string(line_no) + ": " + why;
    return out;
  };
  if (!text.empty() && text.back() != '\n') return fail(0, "the text does not end in a newline");
  std::set<std::string> closed;  // families whose samples ended (another family came after)
  std::string current;           // the family of the last line
  std::set<std::pair<std::string, PromLabels>> seen;
  std::size_t line_no = 0;
  std::size_t pos = 0;
  auto enter = [&](const std::string& family) -> bool {
    if (family == current) return true;
    if (closed.contains(family)) return false;
    if (!current.empty()) closed.insert(current);
    current = family;
    return true;
  };
  while (pos < text.size()) {
    const std::size_t eol = text.find('\n', pos);
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (line.empty()) continue;
    if (line.front() == '#') {
      // "# HELP name text" / "# TYPE name type"; other comments are allowed.
      if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
        const bool help = line[2] == 'H';
        std::string_view rest = line.substr(7);
        const std::size_t sp = rest.find(' ');
        const std::string name(rest.substr(0, sp));
        const std::string_view arg = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
        if (!valid_name(name, true)) return fail(line_no, "invalid metric name '" + name + "'");
        if (!enter(name)) return fail(line_no, "family " + name + " appears in two places");
        PromFamily& f = out.families[name];
        if (help) {
          if (f.help) return fail(line_no, "second HELP for " + name);
          std::string unescaped;
          for (std::size_t i = 0; i < arg.size(); ++i) {
            if (arg[i] != '\\') {
              unescaped += arg[i];
              continue;
            }
            if (i + 1 >= arg.size() || (arg[i + 1] != '\\' && arg[i + 1] != 'n')) {
              return fail(line_no, "bad escape in the HELP of " + name);
            }
            unescaped += arg[++i] == 'n' ? '\n' : '\\';
          }
          f.help = unescaped;
        } else {
          if (f.type != "untyped" || !f.samples.empty())
            return fail(line_no, "TYPE of " + name + " not first");
          static const std::set<std::string_view> types = {"counter", "gauge", "histogram", "summary",
                                                           "untyped"};
          if (!types.contains(arg)) return fail(line_no, "unknown type '" + std::string(arg) + "'");
          f.type = std::string(arg);
          if (f.type == "counter" && !name.ends_with("_total")) {
            return fail(line_no, "counter " + name + " does not end in _total");
          }
        }
      }
      continue;
    }
    // name{label="value",…} value [timestamp]
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    PromSample sample;
    sample.name = std::string(line.substr(0, i));
    if (!valid_name(sample.name, true)) return fail(line_no, "invalid metric name '" + sample.name + "'");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (true) {
        if (i < line.size() && line[i] == '}') {
          ++i;
          break;
        }
        std::size_t eq = line.find('=', i);
        if (eq == std::string_view::npos) return fail(line_no, "label without '='");
        const std::string label(line.substr(i, eq - i));
        if (!valid_name(label, false) || label.starts_with("__")) {
          return fail(line_no, "invalid label name '" + label + "'");
        }
        i = eq + 1;
        if (i >= line.size() || line[i] != '"') return fail(line_no, "label value not quoted");
        ++i;
        std::string value;
        bool closed_quote = false;
        while (i < line.size()) {
          const char c = line[i++];
          if (c == '"') {
            closed_quote = true;
            break;
          }
          if (c == '\\') {
            if (i >= line.size()) return fail(line_no, "escape at the end of a line");
            const char e = line[i++];
            if (e == '\\') {
              value += '\\';
            } else if (e == '"') {
              value += '"';
            } else if (e == 'n') {
              value += '\n';
            } else {
              return fail(line_no, std::string("bad escape \\") + e + " in a label value");
            }
            continue;
          }
          value += c;
        }
        if (!closed_quote) return fail(line_no, "unterminated label value");
        if (!sample.labels.emplace(label, value).second) return fail(line_no, "label " + label + " twice");
        if (i < line.size() && line[i] == ',') {
          ++i;
          continue;
        }
        if (i < line.size() && line[i] == '}') continue;
        return fail(line_no, "expected ',' or '}' after a label");
      }
    }
    if (i >= line.size() || line[i] != ' ') return fail(line_no, "expected a space before the value");
    std::string_view rest = line.substr(i + 1);
    const std::size_t sp = rest.find(' ');
    auto value = parse_value(rest.substr(0, sp));
    if (!value) return fail(line_no, "value '" + std::string(rest.substr(0, sp)) + "' is not a number");
    if (sp != std::string_view::npos) {
      const std::string ts(rest.substr(sp + 1));
      char* end = nullptr;
      (void)std::strtoll(ts.c_str(), &end, 10);
      if (ts.empty() || end != ts.c_str() + ts.size()) return fail(line_no, "bad timestamp '" + ts + "'");
    }
    sample.value = *value;
    const std::string family = family_of(sample.name, out.families);
    if (!enter(family)) return fail(line_no, "family " + family + " appears in two places");
    if (!seen.emplace(sample.name, sample.labels).second)
      return fail(line_no, "series " + sample.name + " twice");
    PromFamily& f = out.families[family];
    if (f.type == "counter" && sample.value < 0) return fail(line_no, "negative counter " + sample.name);
    f.samples.push_back(std::move(sample));
  }
  for (const auto& [name, f] : out.families) {
    if (f.type == "histogram") {
      if (auto why = check_histogram(name, f); !why.empty()) {
        out.error = why;
        return out;
      }
    }
  }
  return out;
}

}  // namespace dtu::testing
