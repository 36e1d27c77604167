#include "dtu/devmgr/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <system_error>

#include "dtu/common/check.hpp"

namespace dtu::devmgr {

namespace {

bool name_char(char c, bool first, bool colon) {
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
  return alpha || (!first && c >= '0' && c <= '9');
}

// `{a="x",b="y"}` with `extra` (a histogram's le) last; "" without any label.
std::string render_labels(const MetricLabels& labels,
                          const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return {};
  std::string out = "{";
  bool first = true;
  auto put = [&](const std::string& name, const std::string& value) {
    if (!first) out += ',';
    first = false;
    out += name;
    out += "=\"";
    out += escape_label_value(value);
    out += '"';
  };
  for (const auto& [name, value] : labels) put(name, value);
  if (extra != nullptr) put(extra->first, extra->second);
  out += '}';
  return out;
}

void render_header(std::string& out, const std::string& name, const std::string& help, const char* type) {
  out += "# HELP " + name + ' ' + escape_help(help) + '\n';
  out += "# TYPE " + name + ' ' + type + '\n';
}

template <typename T>
void render_simple(std::string& out, const MetricFamily<T>& family) {
  for (const auto& [labels, series] : family.series()) {
    out += family.name() + render_labels(labels) + ' ' + format_metric_value(series.value()) + '\n';
  }
}

void render_histograms(std::string& out, const MetricFamily<Histogram>& family) {
  for (const auto& [labels, h] : family.series()) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= h.bounds().size(); ++i) {
      cumulative += h.bucket_counts()[i];
      const std::pair<std::string, std::string> le{
          "le", i < h.bounds().size() ? format_metric_value(h.bounds()[i]) : std::string("+Inf")};
      out += family.name() + "_bucket" + render_labels(labels, &le) + ' ' + std::to_string(cumulative) + '\n';
    }
    out += family.name() + "_sum" + render_labels(labels) + ' ' + format_metric_value(h.sum()) + '\n';
    out += family.name() + "_count" + render_labels(labels) + ' ' + std::to_string(h.count()) + '\n';
  }
}

}  // namespace

bool valid_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, true)) return false;
  }
  return true;
}

bool valid_label_name(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, false)) return false;
  }
  return true;
}

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string escape_help(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string format_metric_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::general);
  DTU_CHECK(ec == std::errc());
  return std::string(buffer, end);
}

std::vector<double> latency_buckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5};
}

void Counter::inc(double by) {
  DTU_CHECK(by >= 0);
  value_ += by;
}

void Counter::advance_to(double total) {
  DTU_CHECK(total >= value_);
  value_ = total;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    DTU_CHECK(std::isfinite(bounds_[i]));
    DTU_CHECK(i == 0 || bounds_[i - 1] < bounds_[i]);
  }
}

void Histogram::observe(double value) {
  // The first bucket whose upper bound is at least the value (le: less or equal).
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  ++counts_[static_cast<std::size_t>(it - bounds_.begin())];
  sum_ += value;
  ++count_;
}

template <typename T>
T& MetricFamily<T>::with(const MetricLabels& labels) {
  auto it = series_.find(labels);
  if (it != series_.end()) return it->second;
  for (const auto& [name, value] : labels) {
    DTU_CHECK(valid_label_name(name));
    if constexpr (std::is_same_v<T, Histogram>) DTU_CHECK(name != "le");
  }
  return series_.emplace(labels, make_()).first->second;
}

template class MetricFamily<Counter>;
template class MetricFamily<Gauge>;
template class MetricFamily<Histogram>;

void MetricsRegistry::add(const std::string& name, std::string type,
                          std::function<void(std::string&)> render) {
  DTU_CHECK(valid_metric_name(name));
  DTU_CHECK(std::find(names_.begin(), names_.end(), name) == names_.end());
  names_.push_back(name);
  entries_.push_back(Entry{std::move(type), std::move(render)});
}

MetricFamily<Counter>& MetricsRegistry::counter(std::string name, std::string help) {
  auto family = std::make_shared<MetricFamily<Counter>>(name, std::move(help), [] { return Counter(); });
  const MetricFamily<Counter>* f = family.get();
  add(name, "counter", [f](std::string& out) {
    render_header(out, f->name(), f->help(), "counter");
    render_simple(out, *f);
  });
  families_.push_back(family);
  return *family;
}

MetricFamily<Gauge>& MetricsRegistry::gauge(std::string name, std::string help) {
  auto family = std::make_shared<MetricFamily<Gauge>>(name, std::move(help), [] { return Gauge(); });
  const MetricFamily<Gauge>* f = family.get();
  add(name, "gauge", [f](std::string& out) {
    render_header(out, f->name(), f->help(), "gauge");
    render_simple(out, *f);
  });
  families_.push_back(family);
  return *family;
}

MetricFamily<Histogram>& MetricsRegistry::histogram(std::string name, std::string help,
                                                    std::vector<double> bounds) {
  Histogram prototype(std::move(bounds));  // checks the bounds once, here
  auto family =
      std::make_shared<MetricFamily<Histogram>>(name, std::move(help), [prototype] { return prototype; });
  const MetricFamily<Histogram>* f = family.get();
  add(name, "histogram", [f](std::string& out) {
    render_header(out, f->name(), f->help(), "histogram");
    render_histograms(out, *f);
  });
  families_.push_back(family);
  return *family;
}

std::string MetricsRegistry::render() const {
  std::string out;
  for (const auto& entry : entries_) entry.render(out);
  return out;
}

Metrics::Metrics()
    : allocations(registry_.counter("dtubroker_allocations_total",
                                    "Allocate requests granted by this manager's DTUs.")),
      allocation_refusals(registry_.counter(
          "dtubroker_allocation_refusals_total",
          "Allocate requests answered with an error, by error code (denied, refused, not_found, ...).")),
      leases_ended(
          registry_.counter("dtubroker_leases_ended_total",
                            "Leases of this manager's DTUs that ended, by reason (released, expired, "
                            "device_gone, agent_stopping, dtu_lost).")),
      handshake_failures(registry_.counter(
          "dtubroker_handshake_failures_total",
          "Connections that failed authentication: side=\"peer\" the group mesh, side=\"dtu\" a DTU's TLS or "
          "hello.")),
      connections_refused(registry_.counter(
          "dtubroker_connections_refused_total",
          "Connections closed at once because a connection limit was reached, by listener (dtu, mesh, "
          "socket): max_handshakes_per_source, max_handshakes, max_connections_per_uid.")),
      heartbeat_timeouts(
          registry_.counter("dtubroker_heartbeat_timeouts_total",
                            "Links closed because the other end went silent (missed heartbeats), "
                            "by side (peer, dtu).")),
      dtu_connects(
          registry_.counter("dtubroker_dtu_connects_total", "DTU connections that completed their hello.")),
      finder_matches(registry_.counter("dtubroker_finder_matches_total",
                                       "finder_matched events sent to this manager's services.")),
      match_latency(registry_.histogram("dtubroker_match_latency_seconds",
                                        "From a device change arriving to its finder_matched events sent.",
                                        latency_buckets())),
      allocation_latency(registry_.histogram(
          "dtubroker_allocation_latency_seconds",
          "From an allocate request arriving to its answer (grant or error).", latency_buckets())),
      info(registry_.gauge("dtubroker_info", "This manager: its id and version; always 1.")),
      start_time(registry_.gauge("dtubroker_start_time_seconds",
                                 "When this manager started, seconds since the epoch.")),
      incarnation(
          registry_.gauge("dtubroker_incarnation",
                          "This start of the manager as the group orders it (microseconds of wall time).")),
      peer_links(registry_.gauge("dtubroker_peer_links", "Links to the group's other managers, by state.")),
      peer_up(registry_.gauge("dtubroker_peer_up", "1 while the link to this peer is up, else 0.")),
      dtus(registry_.gauge("dtubroker_dtus", "DTUs connected to this manager (past their hello).")),
      devices(registry_.gauge("dtubroker_devices", "Devices of the DTUs connected to this manager.")),
      units(registry_.gauge("dtubroker_units", "Units of those devices, by state.")),
      finders(
          registry_.gauge("dtubroker_finders",
                          "Finders: scope=\"local\" registered by this manager's services, scope=\"held\" "
                          "forwarded by peers and held here.")),
      leases(registry_.gauge("dtubroker_leases", "Leases on the DTUs connected to this manager.")),
      allocations_waiting(registry_.gauge("dtubroker_allocations_waiting",
                                          "Allocate requests waiting for a held unit to free.")),
      sessions(registry_.gauge("dtubroker_sessions", "User sessions attached to DTUs.")),
      clients(registry_.gauge("dtubroker_clients", "Local clients connected to the Unix socket.")),
      draining(registry_.gauge("dtubroker_draining", "1 while this manager drains, else 0.")) {
  // The series without labels exist from the start: 0, not absent, before the first event.
  allocations.with();
  dtu_connects.with();
  finder_matches.with();
  match_latency.with();
  allocation_latency.with();
  for (const char* side : {"peer", "dtu"}) {
    handshake_failures.with({{"side", side}});
    heartbeat_timeouts.with({{"side", side}});
  }
  for (const char* listener : {"dtu", "mesh", "socket"}) connections_refused.with({{"listener", listener}});
}

}  // namespace dtu::devmgr
