#pragma once
// Metrics: the devmgr's Prometheus metrics (docs/metrics.md) and their text rendering
// (exposition format 0.0.4). MetricsRegistry holds families of Counter, Gauge or Histogram
// series, each series named by its labels; Metrics registers the devmgr's families once, and the
// DeviceManager owns the one instance and hands a pointer to the parts that count. No global
// state. Not thread-safe: the manager's io_context thread.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dtu::devmgr {

// Label name → value, sorted by name (a series' identity).
using MetricLabels = std::map<std::string, std::string>;

// A value that only goes up (resets only with the process).
class Counter {
 public:
  // REQUIRES: by >= 0
  void inc(double by = 1);
  // For a count kept elsewhere and read at scrape time. REQUIRES: total >= value()
  void advance_to(double total);
  double value() const { return value_; }

 private:
  double value_ = 0;
};

class Gauge {
 public:
  void set(double value) { value_ = value; }
  double value() const { return value_; }

 private:
  double value_ = 0;
};

// Observations counted in buckets by upper bound (le), plus their sum and count.
class Histogram {
 public:
  // REQUIRES: bounds strictly increasing and finite (+Inf is implicit)
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  const std::vector<double>& bounds() const { return bounds_; }
  // Per bucket (not cumulative), one more than bounds(): the last is above every bound.
  const std::vector<std::uint64_t>& bucket_counts() const { return counts_; }
  double sum() const { return sum_; }
  std::uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;
  double sum_ = 0;
  std::uint64_t count_ = 0;
};

// One metric name with its help text and every labelled series of it.
template <typename T>
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, std::function<T()> make)
      : name_(std::move(name)), help_(std::move(help)), make_(std::move(make)) {}
  // The series with these labels, created on first use. REQUIRES: label names valid
  // (valid_label_name) and not "le" for a histogram.
  T& with(const MetricLabels& labels = {});
  // Drops every series (gauges whose label values come and go, rebuilt at scrape time).
  void clear() { series_.clear(); }
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::map<MetricLabels, T>& series() const { return series_; }

 private:
  std::string name_;
  std::string help_;
  std::function<T()> make_;
  std::map<MetricLabels, T> series_;
};

extern template class MetricFamily<Counter>;
extern template class MetricFamily<Gauge>;
extern template class MetricFamily<Histogram>;

// Families in registration order, rendered in that order.
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // REQUIRES: a valid metric name (valid_metric_name) not registered yet. The references stay
  // valid as long as the registry.
  MetricFamily<Counter>& counter(std::string name, std::string help);
  MetricFamily<Gauge>& gauge(std::string name, std::string help);
  MetricFamily<Histogram>& histogram(std::string name, std::string help, std::vector<double> bounds);

  // The exposition text: for each family a HELP and a TYPE line, then its series (a family
  // without series shows only those two lines).
  std::string render() const;

 private:
  struct Entry {
    std::string type;  // "counter" | "gauge" | "histogram"
    std::function<void(std::string&)> render;
  };
  void add(const std::string& name, std::string type, std::function<void(std::string&)> render);

  std::vector<Entry> entries_;
  std::vector<std::string> names_;
  std::vector<std::shared_ptr<void>> families_;  // owners of the families
};

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool valid_metric_name(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"
bool valid_label_name(std::string_view name);
// A label value as the format writes it between quotes: \ " and newline escaped.
std::string escape_label_value(std::string_view value);
// HELP text: \ and newline escaped.
std::string escape_help(std::string_view help);
// A sample value: the shortest form that reads back (%g style: 0.0001, 5e-05), "+Inf", "-Inf", "NaN".
std::string format_metric_value(double value);

// Latency buckets in seconds: 50 µs to 5 s, about three per decade (an allocation that waits for
// a held unit may take longer: it lands in +Inf).
std::vector<double> latency_buckets();

// The devmgr's metrics, every family registered at construction (docs/metrics.md lists them).
// Counters and histograms are counted where things happen; gauges are set at scrape time.
class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  std::string render() const { return registry_.render(); }

 private:
  MetricsRegistry registry_;

 public:
  // Counted where things happen.
  MetricFamily<Counter>& allocations;           // granted allocate requests
  MetricFamily<Counter>& allocation_refusals;   // {error}: allocate requests answered with an error
  MetricFamily<Counter>& leases_ended;          // {reason}: released, expired, device_gone, …
  MetricFamily<Counter>& handshake_failures;    // {side="peer"|"dtu"}
  MetricFamily<Counter>& connections_refused;   // {listener="dtu"|"mesh"|"socket"}: a connection limit hit
  MetricFamily<Counter>& heartbeat_timeouts;    // {side}: links closed for silence
  MetricFamily<Counter>& dtu_connects;          // DTUs that completed their hello
  MetricFamily<Counter>& finder_matches;        // finder_matched events sent to local services
  MetricFamily<Histogram>& match_latency;       // device change in → its finder_matched out
  MetricFamily<Histogram>& allocation_latency;  // allocate request in → answer out
  // Set at scrape time.
  MetricFamily<Gauge>& info;         // {id, version} 1
  MetricFamily<Gauge>& start_time;   // seconds since the epoch
  MetricFamily<Gauge>& incarnation;  // µs since the epoch at start
  MetricFamily<Gauge>& peer_links;   // {state}
  MetricFamily<Gauge>& peer_up;      // {peer}
  MetricFamily<Gauge>& dtus;
  MetricFamily<Gauge>& devices;
  MetricFamily<Gauge>& units;    // {state}
  MetricFamily<Gauge>& finders;  // {scope="local"|"held"}: registered here, held for peers
  MetricFamily<Gauge>& leases;
  MetricFamily<Gauge>& allocations_waiting;
  MetricFamily<Gauge>& sessions;
  MetricFamily<Gauge>& clients;
  MetricFamily<Gauge>& draining;
};

}  // namespace dtu::devmgr
