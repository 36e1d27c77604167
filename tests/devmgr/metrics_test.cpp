// Metrics: the registry's text rendering (exposition format 0.0.4) — escaping, histogram
// buckets, counters — read back with the strict parser of tests/support/prometheus_text.hpp.
#include "dtu/devmgr/metrics.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "support/prometheus_text.hpp"

using dtu::devmgr::Counter;
using dtu::devmgr::escape_label_value;
using dtu::devmgr::format_metric_value;
using dtu::devmgr::Histogram;
using dtu::devmgr::Metrics;
using dtu::devmgr::MetricsRegistry;
using dtu::testing::parse_prometheus_text;

TEST_CASE("a counter family renders HELP, TYPE and one line per label set, sorted by labels") {
  MetricsRegistry registry;
  auto& refusals = registry.counter("x_refusals_total", "Refusals by error.");
  refusals.with({{"error", "refused"}}).inc();
  refusals.with({{"error", "denied"}}).inc(2);
  CHECK(registry.render() ==
        "# HELP x_refusals_total Refusals by error.\n"
        "# TYPE x_refusals_total counter\n"
        "x_refusals_total{error=\"denied\"} 2\n"
        "x_refusals_total{error=\"refused\"} 1\n");
}

TEST_CASE("label values escape backslash, double quote and newline, and read back unchanged") {
  CHECK(escape_label_value("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
  MetricsRegistry registry;
  auto& g = registry.gauge("x_peer_up", "Help with a \\ and a\nnewline.");
  const std::string nasty = "m\"2\\x\ny";
  g.with({{"peer", nasty}}).set(1);
  const std::string text = registry.render();
  CHECK(text.find("# HELP x_peer_up Help with a \\\\ and a\\nnewline.\n") != std::string::npos);
  auto parsed = parse_prometheus_text(text);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error << "\n" << text);
  CHECK(parsed.value("x_peer_up", {{"peer", nasty}}) == 1.0);
  CHECK(parsed.families.at("x_peer_up").help == "Help with a \\ and a\nnewline.");
}

TEST_CASE("histogram buckets are cumulative, end in +Inf equal to _count, with _sum") {
  MetricsRegistry registry;
  auto& h = registry.histogram("x_latency_seconds", "Latency.", {0.25, 0.5, 1});
  h.with().observe(0.125);
  h.with().observe(0.25);  // on a bound: counts in that bucket (le)
  h.with().observe(0.75);
  h.with().observe(8);  // above every bound: only +Inf
  const std::string text = registry.render();
  CHECK(text ==
        "# HELP x_latency_seconds Latency.\n"
        "# TYPE x_latency_seconds histogram\n"
        "x_latency_seconds_bucket{le=\"0.25\"} 2\n"
        "x_latency_seconds_bucket{le=\"0.5\"} 2\n"
        "x_latency_seconds_bucket{le=\"1\"} 3\n"
        "x_latency_seconds_bucket{le=\"+Inf\"} 4\n"
        "x_latency_seconds_sum 9.125\n"
        "x_latency_seconds_count 4\n");
  auto parsed = parse_prometheus_text(text);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error);
}

TEST_CASE("histogram labels come before le") {
  MetricsRegistry registry;
  auto& h = registry.histogram("x_seconds", "Latency.", {1});
  h.with({{"side", "dtu"}}).observe(0.5);
  const std::string text = registry.render();
  CHECK(text.find("x_seconds_bucket{side=\"dtu\",le=\"1\"} 1\n") != std::string::npos);
  CHECK(text.find("x_seconds_sum{side=\"dtu\"} 0.5\n") != std::string::npos);
  CHECK(parse_prometheus_text(text).ok());
}

TEST_CASE("a counter only goes up, and advance_to follows a total kept elsewhere") {
  Counter c;
  c.inc();
  c.inc(2.5);
  CHECK(c.value() == 3.5);
  c.advance_to(10);
  CHECK(c.value() == 10);
  c.advance_to(10);
  CHECK(c.value() == 10);
}

TEST_CASE("a family without series shows its HELP and TYPE only") {
  MetricsRegistry registry;
  registry.counter("x_total", "Nothing yet.");
  CHECK(registry.render() == "# HELP x_total Nothing yet.\n# TYPE x_total counter\n");
  CHECK(parse_prometheus_text(registry.render()).ok());
}

TEST_CASE("values print in the shortest form that reads back, with the format's infinities") {
  CHECK(format_metric_value(0) == "0");
  CHECK(format_metric_value(3) == "3");
  CHECK(format_metric_value(0.25) == "0.25");
  CHECK(format_metric_value(5e-05) == "5e-05");
  CHECK(format_metric_value(0.0001) == "0.0001");
  CHECK(format_metric_value(1.7e15) == "1.7e+15");
  CHECK(std::stod(format_metric_value(1763790000123456.0)) == 1763790000123456.0);  // µs stay exact
  CHECK(format_metric_value(HUGE_VAL) == "+Inf");
  CHECK(format_metric_value(-HUGE_VAL) == "-Inf");
  CHECK(format_metric_value(std::nan("")) == "NaN");
}

TEST_CASE("the devmgr's metrics all start with dtubroker_ and render as valid text") {
  Metrics metrics;
  metrics.allocations.with().inc();
  metrics.allocation_refusals.with({{"error", "denied"}}).inc();
  metrics.match_latency.with().observe(0.0002);
  metrics.peer_links.with({{"state", "up"}}).set(2);
  const std::string text = metrics.render();
  auto parsed = parse_prometheus_text(text);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error << "\n" << text);
  CHECK(parsed.families.size() >= 20);
  for (const auto& [name, family] : parsed.families) {
    CHECK_MESSAGE(name.rfind("dtubroker_", 0) == 0, name);
    CHECK_MESSAGE(family.help.has_value(), name);
    CHECK_MESSAGE(family.type != "untyped", name);
  }
  CHECK(parsed.value("dtubroker_allocations_total") == 1.0);
  CHECK(parsed.value("dtubroker_match_latency_seconds_count") == 1.0);
  CHECK(parsed.value("dtubroker_match_latency_seconds_bucket", {{"le", "0.00025"}}) == 1.0);
  CHECK(parsed.value("dtubroker_match_latency_seconds_bucket", {{"le", "0.0001"}}) == 0.0);
}

TEST_CASE("the strict parser refuses what Prometheus refuses") {
  using dtu::testing::parse_prometheus_text;
  CHECK_FALSE(parse_prometheus_text("x 1").ok());                            // no final newline
  CHECK_FALSE(parse_prometheus_text("x{a=\"b\\t\"} 1\n").ok());              // bad escape
  CHECK_FALSE(parse_prometheus_text("x{a=b} 1\n").ok());                     // unquoted
  CHECK_FALSE(parse_prometheus_text("x{a=\"1\",a=\"2\"} 1\n").ok());         // label twice
  CHECK_FALSE(parse_prometheus_text("x 1\ny 1\nx 2\n").ok());                // family split
  CHECK_FALSE(parse_prometheus_text("x 1\nx 2\n").ok());                     // series twice
  CHECK_FALSE(parse_prometheus_text("x one\n").ok());                        // not a number
  CHECK_FALSE(parse_prometheus_text("# TYPE x counter\nx_total 1\n").ok());  // counter name
  CHECK_FALSE(parse_prometheus_text("x 1\n# TYPE x gauge\n").ok());          // TYPE after samples
  CHECK_FALSE(parse_prometheus_text("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                                    "h_sum 1\nh_count 1\n")
                  .ok());  // not cumulative
  CHECK_FALSE(parse_prometheus_text("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n").ok());
  CHECK(parse_prometheus_text("# a comment\n# TYPE x gauge\nx{a=\"q\\\"\"} -1.5e3 1700000000000\n").ok());
}
