// The Prometheus endpoint of a real devmgr (issue 8, docs/metrics.md): scraped over HTTP, read
// with the strict text-format parser (tests/support/prometheus_text.hpp), and watched as traffic
// moves the counters: an allocation, a refusal, a device plug, a DTU and a peer with the wrong
// key, a peer killed. Another path is 404; a junk request or a stalled client is closed and the
// next scrape works. Addresses 127.0.0.170–179.
#include <doctest/doctest.h>

#include <array>
#include <csignal>
#include <functional>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/client/client.hpp"
#include "dtu/common/version.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"
#include "support/prometheus_text.hpp"

using dtu::testing::AsyncClient;
using dtu::testing::connect_client;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::parse_prometheus_text;
using dtu::testing::PromLabels;
using dtu::testing::PromText;
using dtu::testing::Site;
using namespace std::chrono_literals;

namespace {

// How long one HTTP exchange may take: the manager answers at once.
constexpr auto kHttpLimit = 10s;

struct HttpAnswer {
  std::string status_line;
  std::string headers;  // as sent, CRLF separated
  std::string body;
  bool closed = false;  // the server closed the connection (EOF)
};

// Connects to `at` ("ip:port"), sends `request` and reads until the server closes or kHttpLimit
// passes.
HttpAnswer http(const std::string& at, const std::string& request) {
  asio::io_context io;
  const auto colon = at.rfind(':');
  const asio::ip::tcp::endpoint to(asio::ip::make_address(at.substr(0, colon)),
                                   static_cast<unsigned short>(std::stoi(at.substr(colon + 1))));
  asio::ip::tcp::socket socket(io);
  socket.connect(to);
  asio::write(socket, asio::buffer(request));
  std::string raw;
  bool eof = false;
  std::array<char, 4096> chunk{};
  std::function<void(std::error_code, std::size_t)> on_read = [&](std::error_code ec, std::size_t n) {
    raw.append(chunk.data(), n);
    if (ec) {
      eof = true;
      return;
    }
    socket.async_read_some(asio::buffer(chunk), on_read);
  };
  socket.async_read_some(asio::buffer(chunk), on_read);
  dtu::testing::run_io_until(
      io, [&] { return eof; }, kHttpLimit);
  HttpAnswer answer;
  answer.closed = eof;
  const auto head_end = raw.find("\r\n\r\n");
  const std::string head = raw.substr(0, head_end);
  answer.status_line = head.substr(0, head.find("\r\n"));
  answer.headers = head;
  if (head_end != std::string::npos) answer.body = raw.substr(head_end + 4);
  return answer;
}

// GET /metrics, parsed strictly; the test fails on an invalid text.
PromText scrape(const std::string& at) {
  const HttpAnswer answer = http(at, "GET /metrics HTTP/1.1\r\nHost: " + at + "\r\n\r\n");
  REQUIRE_MESSAGE(answer.status_line == "HTTP/1.1 200 OK", answer.status_line);
  CHECK(answer.headers.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8") !=
        std::string::npos);
  PromText parsed = parse_prometheus_text(answer.body);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error << "\n" << answer.body);
  return parsed;
}

double value(const PromText& text, const std::string& name, const PromLabels& labels = {}) {
  auto v = text.value(name, labels);
  REQUIRE_MESSAGE(v.has_value(), "no sample " << name);
  return *v;
}

// Waits until the manager logs where its metrics listen; "ip:port".
std::string metrics_address(Site::Manager& m) {
  std::smatch match;
  REQUIRE(
      m.process->wait_for_log(std::regex(R"(metrics_listening listen=([0-9.]+:[0-9]+))"), kSettle, &match));
  return match[1].str();
}

}  // namespace

TEST_CASE("metrics: a scrape reads valid text, and allocations, plugs and a wrong-key DTU move it") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.170", {"--metrics-listen", "127.0.0.170:0"});
  const std::string at = metrics_address(m);
  CHECK_FALSE(m.process->log().find("metrics_not_loopback") != std::string::npos);

  PromText before = scrape(at);
  CHECK(value(before, "dtubroker_info", {{"id", "m1"}, {"version", dtu::common::kVersion}}) == 1);
  CHECK(value(before, "dtubroker_dtus") == 0);
  CHECK(value(before, "dtubroker_draining") == 0);
  CHECK(value(before, "dtubroker_start_time_seconds") > 1.6e9);
  CHECK(before.families.at("dtubroker_allocations_total").type == "counter");
  CHECK(before.families.at("dtubroker_allocation_latency_seconds").type == "histogram");

  auto& agent = site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  PromText connected = scrape(at);
  CHECK(value(connected, "dtubroker_dtus") == 1);
  CHECK(value(connected, "dtubroker_dtu_connects_total") == 1);
  CHECK(value(connected, "dtubroker_devices") == 2);
  // demo/sim-devices.json: the printer has one unit, the multi-function device three.
  CHECK(value(connected, "dtubroker_units", {{"state", "free"}}) == 4);
  CHECK(value(connected, "dtubroker_units", {{"state", "allocated"}}) == 0);

  // An allocation: granted counter and the latency histogram's count move by one.
  AsyncClient c;
  auto first = connect_client(c, m, "first-service");
  auto second = connect_client(c, m, "second-service");
  auto lease = c.await(first->allocate("dtu-1", "1-1", 0, {}));
  REQUIRE_MESSAGE(lease.ok(), lease.error().describe());
  PromText allocated = scrape(at);
  CHECK(value(allocated, "dtubroker_allocations_total") == 1);
  CHECK(value(allocated, "dtubroker_allocation_latency_seconds_count") == 1);
  CHECK(value(allocated, "dtubroker_allocation_latency_seconds_sum") > 0);
  CHECK(value(allocated, "dtubroker_leases") == 1);
  CHECK(value(allocated, "dtubroker_clients") == 2);
  CHECK(eventually(
      [&] {
        return value(scrape(at), "dtubroker_units", {{"state", "allocated"}}) == 1;
      },
      kSettle));

  // A refusal (held by the first service) is counted by its error code.
  auto refused = c.await(second->allocate("dtu-1", "1-1", 0, {}));
  REQUIRE_FALSE(refused.ok());
  PromText after_refusal = scrape(at);
  CHECK(value(after_refusal, "dtubroker_allocation_refusals_total", {{"error", "refused"}}) == 1);
  CHECK(value(after_refusal, "dtubroker_allocations_total") == 1);
  CHECK(value(after_refusal, "dtubroker_allocation_latency_seconds_count") == 2);

  // A release ends the lease (counted by reason when the DTU reports it).
  auto released = c.await(first->release(lease->id));
  REQUIRE_MESSAGE(released.ok(), released.error().describe());
  CHECK(eventually(
      [&] {
        return scrape(at).value("dtubroker_leases_ended_total", {{"reason", "released"}}) == 1.0;
      },
      kSettle));

  // A device plug: a finder that waits for the printer hears of it; devices +1, and the match
  // counter and latency histogram move.
  REQUIRE(site.simctl(agent, {"unplug", "1-1"}).exit_code == 0);
  REQUIRE(eventually([&] { return value(scrape(at), "dtubroker_devices") == 1; }, kSettle));
  int matched = 0;
  dtu::client::FinderEvents events;
  events.matched = [&](const dtu::common::DeviceRecord&, const std::vector<std::uint32_t>&) { ++matched; };
  auto finder =
      c.await(second->add_finder(nlohmann::json{{"function", "printer"}, {"product", "Stylus*"}}, events));
  REQUIRE(finder.ok());
  PromText unplugged = scrape(at);
  CHECK(value(unplugged, "dtubroker_finders", {{"scope", "local"}}) == 1);
  const double matches_before = value(unplugged, "dtubroker_finder_matches_total");
  const double latency_before = value(unplugged, "dtubroker_match_latency_seconds_count");
  REQUIRE(site.simctl(agent, {"plug", "1-1"}).exit_code == 0);
  REQUIRE(c.run_until([&] { return matched == 1; }, kSettle));
  PromText plugged = scrape(at);
  CHECK(value(plugged, "dtubroker_devices") == 2);
  CHECK(value(plugged, "dtubroker_finder_matches_total") == matches_before + 1);
  CHECK(value(plugged, "dtubroker_match_latency_seconds_count") == latency_before + 1);

  // A DTU with another DTU's key fails its handshake: counted on the dtu side.
  const double dtu_failures =
      before.value("dtubroker_handshake_failures_total", {{"side", "dtu"}}).value_or(0);
  site.start_agent("dtu-impostor", {m.address}, {"--key", site.dtu_key("dtu-1").string()});
  CHECK(eventually(
      [&] {
        return scrape(at).value("dtubroker_handshake_failures_total", {{"side", "dtu"}}).value_or(0) >
               dtu_failures;
      },
      kSettle));
  CHECK(value(scrape(at), "dtubroker_dtus") == 1);
}

TEST_CASE(
    "metrics: another path is 404, another method 405, and junk or a stalled client closes only itself") {
  Site site;
  auto& m =
      site.start_manager("m1", "127.0.0.175", {"--metrics-listen", "127.0.0.175:0", "--log-level", "debug"});
  const std::string at = metrics_address(m);

  const HttpAnswer missing = http(at, "GET /other HTTP/1.1\r\n\r\n");
  CHECK(missing.status_line == "HTTP/1.1 404 Not Found");
  CHECK(missing.closed);
  CHECK(http(at, "DELETE /metrics HTTP/1.0\r\n\r\n").status_line == "HTTP/1.0 405 Method Not Allowed");

  const HttpAnswer junk = http(at, std::string("\x16\x03\x01\x00\xff\x01\r\n\r\n", 10));
  CHECK(junk.status_line == "HTTP/1.1 400 Bad Request");
  CHECK(junk.closed);
  CHECK(m.process->wait_for_log(std::regex("metrics_bad_request"), kSettle));

  // A client that connects and says nothing is closed at the deadline (5 s), while another
  // client is served meanwhile.
  asio::io_context io;
  asio::ip::tcp::socket stalled(io);
  const auto colon = at.rfind(':');
  stalled.connect(asio::ip::tcp::endpoint(asio::ip::make_address(at.substr(0, colon)),
                                          static_cast<unsigned short>(std::stoi(at.substr(colon + 1)))));
  PromText meanwhile = scrape(at);
  CHECK(value(meanwhile, "dtubroker_dtus") == 0);
  bool stalled_closed = false;
  std::array<char, 64> buffer{};
  stalled.async_read_some(asio::buffer(buffer),
                          [&](std::error_code ec, std::size_t) { stalled_closed = bool(ec); });
  CHECK(dtu::testing::run_io_until(
      io, [&] { return stalled_closed; }, 15s));
  CHECK(m.process->wait_for_log(std::regex("metrics_client_closed.*no complete request"), kSettle));

  // The manager is unaffected: it still serves its socket and the next scrape.
  CHECK(site.devmgrctl(m, {"devices"}).exit_code == 0);
  scrape(at);
  CHECK_FALSE(m.process->exit_status().has_value());
}

TEST_CASE(
    "metrics: peer links by state, a frozen peer times out, a killed one shows down, a wrong-key one fails") {
  Site site;
  // Both export metrics on 127.0.0.172 (ports of their own); the test reads m1's.
  auto group =
      site.start_group({{"m1", "127.0.0.172"}, {"m2", "127.0.0.173"}}, {"--metrics-listen", "127.0.0.172:0"});
  Site::Manager& m1 = *group[0];
  Site::Manager& m2 = *group[1];
  const std::string at = metrics_address(m1);
  REQUIRE(site.wait_peers_up(m1, 1));

  PromText up = scrape(at);
  CHECK(value(up, "dtubroker_peer_links", {{"state", "up"}}) == 1);
  CHECK(value(up, "dtubroker_peer_links", {{"state", "down"}}) == 0);
  CHECK(value(up, "dtubroker_peer_up", {{"peer", "m2"}}) == 1);
  const double peer_failures = up.value("dtubroker_handshake_failures_total", {{"side", "peer"}}).value_or(0);

  // A frozen peer goes silent: m1 closes the link for missed heartbeats.
  m2.process->signal(SIGSTOP);
  CHECK(eventually(
      [&] {
        return scrape(at).value("dtubroker_heartbeat_timeouts_total", {{"side", "peer"}}) >= 1.0;
      },
      kSettle));
  CHECK(value(scrape(at), "dtubroker_peer_links", {{"state", "up"}}) == 0);
  m2.process->signal(SIGCONT);
  REQUIRE(site.wait_peers_up(m1, 1));

  site.kill_manager(m2);
  CHECK(eventually([&] { return scrape(at).value("dtubroker_peer_up", {{"peer", "m2"}}) == 0.0; }, kSettle));
  PromText down = scrape(at);
  CHECK(value(down, "dtubroker_peer_links", {{"state", "up"}}) == 0);

  // An impostor at m2's address with another group key: its handshakes with m1 fail.
  const auto wrong_key = site.dir() / "wrong-group.key";
  REQUIRE(dtu::testing::run_command(
              {dtu::testing::binary_path("devmgrctl"), "keygen", "--out", wrong_key.string()}, kSettle)
              .exit_code == 0);
  site.start_manager("m2", "127.0.0.173",
                     {"--group", site.group_file().string(), "--group-key", wrong_key.string()});
  CHECK(eventually(
      [&] {
        return scrape(at).value("dtubroker_handshake_failures_total", {{"side", "peer"}}).value_or(0) >
               peer_failures;
      },
      kSettle));
  CHECK(value(scrape(at), "dtubroker_peer_up", {{"peer", "m2"}}) == 0);
}
