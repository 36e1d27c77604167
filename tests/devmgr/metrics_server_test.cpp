// MetricsServer: the request-head parser, and the server answering real HTTP on a loopback port
// in this process (127.0.0.170, port 0; clients from 127.0.0.171): 200 with the exposition content type, 404,
// 405, 400 for junk or an oversized head, and the next client served after a bad one. The metrics_listen
// config key.
#include "dtu/devmgr/metrics_server.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <optional>
#include <string>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/config.hpp"
#include "dtu/devmgr/manager_options.hpp"
#include "support/async_client.hpp"
#include "support/log_capture.hpp"
#include "support/temp_dir.hpp"

using dtu::devmgr::HttpParse;
using dtu::devmgr::kMaxHttpHead;
using dtu::devmgr::MetricsServer;
using dtu::devmgr::parse_http_request;
using Status = dtu::devmgr::HttpParse::Status;
using namespace std::chrono_literals;

namespace {

constexpr auto kLimit = 10s;  // bound on every exchange; a local answer takes milliseconds

asio::awaitable<void> exchange_task(asio::ip::tcp::endpoint to, std::string request,
                                    std::shared_ptr<std::optional<std::string>> out) {
  using asio::experimental::as_tuple;
  auto ex = co_await asio::this_coro::executor;
  // From an address of this test's own, so the server's log names it.
  asio::ip::tcp::socket socket(ex, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.171"), 0));
  auto [ec] = co_await socket.async_connect(to, as_tuple(asio::use_awaitable));
  if (ec) {
    out->emplace("connect failed: " + ec.message());
    co_return;
  }
  auto [wec, written] =
      co_await asio::async_write(socket, asio::buffer(request), as_tuple(asio::use_awaitable));
  (void)wec;
  (void)written;
  std::string answer;
  char chunk[4096];
  for (;;) {
    auto [rec, n] = co_await socket.async_read_some(asio::buffer(chunk), as_tuple(asio::use_awaitable));
    answer.append(chunk, n);
    if (rec) break;  // EOF: the server closes after its answer
  }
  out->emplace(std::move(answer));
}

// Sends `request` and reads until the server closes; the whole answer.
std::string exchange(asio::io_context& io, const dtu::common::Endpoint& server, const std::string& request) {
  auto out = std::make_shared<std::optional<std::string>>();
  const asio::ip::tcp::endpoint to(asio::ip::make_address(server.host), server.port);
  asio::co_spawn(io, exchange_task(to, request, out), asio::detached);
  REQUIRE_MESSAGE(dtu::testing::run_io_until(
                      io, [&] { return out->has_value(); }, kLimit),
                  "no answer within the limit");
  return **out;
}

struct Served {
  asio::io_context io;
  dtu::testing::LogCapture logs;
  int renders = 0;
  MetricsServer server{io.get_executor(), dtu::common::Endpoint{"127.0.0.170", 0},
                       [this] {
                         ++renders;
                         return std::string("# TYPE x gauge\nx 1\n");
                       },
                       dtu::common::Logger("devmgr")};
  Served() { REQUIRE(server.start().ok()); }
};

}  // namespace

TEST_CASE("the parser waits for the blank line, then gives method, target and version") {
  CHECK(parse_http_request("").status == Status::indeterminate);
  CHECK(parse_http_request("GET /metrics HTTP/1.1\r\nHost: x\r\n").status == Status::indeterminate);
  const HttpParse done = parse_http_request("GET /metrics?x=1 HTTP/1.0\r\nHost: x\r\nAccept: */*\r\n\r\n");
  REQUIRE(done.status == Status::good);
  CHECK(done.request.method == "GET");
  CHECK(done.request.target == "/metrics?x=1");
  CHECK(done.request.path() == "/metrics");
  CHECK(done.request.version == "HTTP/1.0");
  CHECK(parse_http_request("GET / HTTP/1.1\n\n").status == Status::good);  // bare LF
}

TEST_CASE("the parser refuses junk, other versions, bad headers and an oversized head") {
  CHECK(parse_http_request("\x16\x03\x01\x02").status == Status::bad);  // a TLS hello
  CHECK(parse_http_request("hello there\r\n\r\n").status == Status::bad);
  CHECK(parse_http_request("GET /metrics HTTP/2.0\r\n\r\n").status == Status::bad);
  CHECK(parse_http_request("GET metrics HTTP/1.1\r\n\r\n").status == Status::bad);
  CHECK(parse_http_request("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n").status == Status::bad);
  CHECK(parse_http_request("GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n").status == Status::bad);
  const std::string big = "GET /metrics HTTP/1.1\r\nX: " + std::string(kMaxHttpHead, 'a');
  const HttpParse over = parse_http_request(big);
  CHECK(over.status == Status::bad);
  CHECK(over.error.find("longer than") != std::string::npos);
}

TEST_CASE("GET /metrics answers 200 with the exposition content type and closes") {
  Served s;
  CHECK(s.logs.has({"metrics_listening", "listen=127.0.0.170:"}));
  CHECK_FALSE(s.logs.has({"metrics_not_loopback"}));
  const std::string answer = exchange(s.io, s.server.endpoint(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(answer.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(answer.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
  CHECK(answer.find("\r\nConnection: close\r\n") != std::string::npos);
  CHECK(answer.find("\r\nContent-Length: 19\r\n") != std::string::npos);
  CHECK(answer.ends_with("\r\n\r\n# TYPE x gauge\nx 1\n"));
  CHECK(s.renders == 1);
  // HTTP/1.0 is answered in kind.
  CHECK(
      exchange(s.io, s.server.endpoint(), "GET /metrics HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK\r\n", 0) ==
      0);
}

TEST_CASE("another path is 404 and another method 405, without rendering") {
  Served s;
  CHECK(
      exchange(s.io, s.server.endpoint(), "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 Not Found\r\n", 0) ==
      0);
  const std::string post =
      exchange(s.io, s.server.endpoint(), "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  CHECK(post.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
  CHECK(post.find("\r\nAllow: GET\r\n") != std::string::npos);
  CHECK(s.renders == 0);
}

TEST_CASE("junk gets 400 and a debug line naming the client, and the next client is served") {
  dtu::common::set_log_level(dtu::common::LogLevel::debug);
  Served s;
  const std::string junk = exchange(s.io, s.server.endpoint(), std::string("\x01\x02junk\r\n\r\n", 10));
  CHECK(junk.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
  CHECK_MESSAGE(s.logs.has({"metrics_bad_request", "127.0.0.171:"}), s.logs.text());
  const std::string big =
      exchange(s.io, s.server.endpoint(), "GET /metrics HTTP/1.1\r\nX: " + std::string(9000, 'a'));
  CHECK(big.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
  CHECK(
      exchange(s.io, s.server.endpoint(), "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200 OK\r\n", 0) ==
      0);
  dtu::common::set_log_level(dtu::common::LogLevel::info);
}

TEST_CASE("after stop the port is closed") {
  Served s;
  const auto at = s.server.endpoint();
  s.server.stop();
  CHECK(exchange(s.io, at, "GET /metrics HTTP/1.1\r\n\r\n").rfind("connect failed", 0) == 0);
  CHECK(s.renders == 0);
}

TEST_CASE("metrics_listen in the config file sets the endpoint, empty turns it off, junk names the key") {
  dtu::testing::UnitTempDir dir;
  auto load = [&](const std::string& body) {
    const std::string path = dir.write("devmgr.json", body);
    auto config = dtu::common::ConfigReader::load(path);
    REQUIRE(config.ok());
    dtu::devmgr::ManagerOptions options;
    auto applied = dtu::devmgr::apply_config(*config, options);
    return std::make_pair(applied.ok() ? std::string() : applied.error().describe(), options.metrics_listen);
  };
  CHECK_FALSE(dtu::devmgr::ManagerOptions{}.metrics_listen.has_value());
  auto [ok_error, set] = load(R"({"metrics_listen": "127.0.0.1:9471"})");
  CHECK(ok_error.empty());
  REQUIRE(set.has_value());
  CHECK(set->to_string() == "127.0.0.1:9471");
  auto [off_error, off] = load(R"({"metrics_listen": ""})");
  CHECK(off_error.empty());
  CHECK_FALSE(off.has_value());
  auto [bad_error, bad] = load(R"({"metrics_listen": "127.0.0.1"})");
  CHECK_MESSAGE(bad_error.find("metrics_listen") != std::string::npos, bad_error);
}
