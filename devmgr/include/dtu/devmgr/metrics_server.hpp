#pragma once
// MetricsServer: the Prometheus endpoint of a devmgr, a minimal HTTP/1.0 and 1.1 server on the
// manager's io_context. GET /metrics answers the text the render function returns (exposition
// format 0.0.4); another path is 404, another method 405, a malformed request 400. One request
// per connection (Connection: close). Each connection has a deadline for the whole exchange
// and a cap on the request head, so a client that stalls or sends junk is closed (logged at
// debug with its address) and nothing else notices.
//
// parse_http_request() is the pure part: it reads a request head incrementally.
// Runs on the manager's io_context thread; every method must be called on it.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <asio.hpp>

#include "dtu/common/config.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

struct MetricsServerState;

// The longest request head (request line and headers) accepted: a scraper sends a few hundred
// bytes; more is junk or an attack on memory.
inline constexpr std::size_t kMaxHttpHead = 8 * 1024;
// How long a connection may take from accept to the end of the answer.
inline constexpr std::chrono::seconds kHttpDeadline{5};
// At most this many scrape connections at once; more are closed at accept (logged at debug).
inline constexpr std::size_t kMaxMetricsConnections = 16;
// After a failed accept (e.g. out of descriptors), wait this long before the next.
inline constexpr std::chrono::milliseconds kAcceptRetryPause{100};

struct HttpRequest {
  std::string method;   // "GET", …
  std::string target;   // "/metrics?…" as sent
  std::string version;  // "HTTP/1.0" | "HTTP/1.1"
  std::string path() const { return target.substr(0, target.find('?')); }
};

struct HttpParse {
  enum class Status { good, bad, indeterminate };
  Status status = Status::indeterminate;
  HttpRequest request;  // when good
  std::string error;    // when bad: what is wrong
};

// Reads the request head at the start of `data` (the bytes received so far): good once the
// blank line after the headers is there, indeterminate while it may still come, bad for a
// malformed request line or header, a version other than HTTP/1.0 or 1.1, or a head longer than
// kMaxHttpHead. Lines end in CRLF (a bare LF is accepted). The body, if any, is ignored.
HttpParse parse_http_request(std::string_view data);

class MetricsServer {
 public:
  // The exposition text, computed at each scrape.
  using Render = std::function<std::string()>;

  MetricsServer(const asio::any_io_executor& ex, common::Endpoint listen, Render render, common::Logger log);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds (port 0: any free port) and starts serving; logs metrics_listening with the bound
  // listen=ADDR:PORT, and warns metrics_not_loopback for an address outside 127.0.0.0/8 and ::1.
  // Errc::config_error for an address that is not an IP address, Errc::io_error when binding
  // fails. REQUIRES: called once
  common::Result<void> start();
  // Closes the listener and every open connection; render is not called from then on. Idempotent.
  void stop();
  // The bound address (the real port when `listen` asked for port 0).
  common::Endpoint endpoint() const;

 private:
  std::shared_ptr<MetricsServerState> state_;  // shared with the connections' coroutines
};

}  // namespace dtu::devmgr
