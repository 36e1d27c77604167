#include "dtu/devmgr/metrics_server.hpp"

#include <optional>
#include <set>
#include <utility>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/net.hpp"

namespace dtu::devmgr {

using asio::experimental::as_tuple;
using asio::ip::tcp;
using common::Errc;
using common::Error;

namespace {

bool is_token_char(char c) {
  // RFC 9110 tchar
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_token_char(c)) return false;
  }
  return true;
}

// Visible ASCII only: a target with spaces or control bytes is junk.
bool is_target(std::string_view s) {
  if (s.empty() || s.front() != '/') return false;
  for (char c : s) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

HttpParse bad(std::string why) {
  HttpParse p;
  p.status = HttpParse::Status::bad;
  p.error = std::move(why);
  return p;
}

std::string response(std::string_view version, std::string_view status, std::string_view content_type,
                     std::string_view body, std::string_view extra_headers = {}) {
  std::string out;
  out.reserve(body.size() + 200);
  out += version;
  out += ' ';
  out += status;
  out += "\r\nContent-Type: ";
  out += content_type;
  out += "\r\nContent-Length: " + std::to_string(body.size());
  out += "\r\nConnection: close\r\n";
  out += extra_headers;
  out += "\r\n";
  out += body;
  return out;
}

}  // namespace

HttpParse parse_http_request(std::string_view data) {
  HttpParse result;
  std::size_t pos = 0;
  bool first = true;
  while (true) {
    const std::size_t eol = data.find('\n', pos);
    if (eol == std::string_view::npos) {
      if (data.size() > kMaxHttpHead)
        return bad("request head longer than " + std::to_string(kMaxHttpHead) + " bytes");
      // A request line must start with a method: junk is told apart before the head is complete.
      if (first && !data.empty()) {
        const std::size_t space = data.find(' ');
        const std::string_view method = data.substr(0, space);
        for (char c : method) {
          if (!is_token_char(c)) return bad("not an HTTP request line");
        }
      }
      return result;
    }
    if (eol + 1 > kMaxHttpHead)
      return bad("request head longer than " + std::to_string(kMaxHttpHead) + " bytes");
    std::string_view line = data.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = eol + 1;
    if (first) {
      first = false;
      const std::size_t a = line.find(' ');
      const std::size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
      if (b == std::string_view::npos || line.find(' ', b + 1) != std::string_view::npos) {
        return bad("request line is not METHOD TARGET VERSION");
      }
      const std::string_view method = line.substr(0, a);
      const std::string_view target = line.substr(a + 1, b - a - 1);
      const std::string_view version = line.substr(b + 1);
      if (!is_token(method)) return bad("bad method");
      if (!is_target(target)) return bad("bad request target");
      if (version != "HTTP/1.0" && version != "HTTP/1.1")
        return bad("unsupported version (HTTP/1.0 or 1.1 only)");
      result.request = HttpRequest{std::string(method), std::string(target), std::string(version)};
      continue;
    }
    if (line.empty()) {
      result.status = HttpParse::Status::good;
      return result;
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon)))
      return bad("malformed header line");
    for (char c : line.substr(colon + 1)) {
      if ((c < 0x20 && c != '\t') || c == 0x7f) return bad("control character in a header value");
    }
  }
}

struct MetricsServerState {
  MetricsServerState(const asio::any_io_executor& ex, common::Endpoint where, MetricsServer::Render r,
                     common::Logger l)
      : executor(ex), listen(std::move(where)), render(std::move(r)), log(std::move(l)) {}

  asio::any_io_executor executor;
  common::Endpoint listen;
  MetricsServer::Render render;
  common::Logger log;
  std::optional<tcp::acceptor> acceptor;
  common::Endpoint bound;
  std::set<std::shared_ptr<tcp::socket>> open;
  bool stopped = false;

  // The answer to a complete request.
  std::string answer(const HttpRequest& request) const {
    if (request.method != "GET") {
      return response(request.version, "405 Method Not Allowed", "text/plain; charset=utf-8",
                      "only GET is served here\n", "Allow: GET\r\n");
    }
    if (request.path() != "/metrics") {
      return response(request.version, "404 Not Found", "text/plain; charset=utf-8",
                      "the metrics are at /metrics\n");
    }
    return response(request.version, "200 OK", "text/plain; version=0.0.4; charset=utf-8", render());
  }
};

namespace {

void close_socket(tcp::socket& socket) {
  std::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

asio::awaitable<void> serve(std::shared_ptr<MetricsServerState> state, std::shared_ptr<tcp::socket> socket,
                            std::string peer) {
  // Stalling: the whole exchange has one deadline, after which the socket is closed.
  common::DeadlineGuard deadline(state->executor, kHttpDeadline, [socket] { close_socket(*socket); });
  std::string head;
  HttpParse parsed;
  char chunk[1024];
  while (parsed.status == HttpParse::Status::indeterminate) {
    auto [ec, n] = co_await socket->async_read_some(asio::buffer(chunk), as_tuple(asio::use_awaitable));
    if (state->stopped) break;
    if (ec) {
      const bool timed_out = deadline.expired();
      state->log.debug(
          peer, "metrics_client_closed",
          {{"reason", timed_out ? std::string("no complete request within 5 s") : ec.message()}});
      state->open.erase(socket);
      co_return;
    }
    head.append(chunk, n);
    parsed = parse_http_request(head);
  }
  if (state->stopped) {
    state->open.erase(socket);
    co_return;
  }
  std::string out;
  if (parsed.status == HttpParse::Status::bad) {
    state->log.debug(peer, "metrics_bad_request", {{"reason", parsed.error}});
    out = response("HTTP/1.1", "400 Bad Request", "text/plain; charset=utf-8", parsed.error + "\n");
  } else {
    out = state->answer(parsed.request);
  }
  auto [ec, n] = co_await asio::async_write(*socket, asio::buffer(out), as_tuple(asio::use_awaitable));
  if (ec && !state->stopped) state->log.debug(peer, "metrics_client_closed", {{"reason", ec.message()}});
  (void)n;
  close_socket(*socket);
  state->open.erase(socket);
}

asio::awaitable<void> accept_loop(std::shared_ptr<MetricsServerState> state) {
  while (!state->stopped) {
    auto [ec, socket] = co_await state->acceptor->async_accept(as_tuple(asio::use_awaitable));
    if (state->stopped) co_return;
    if (ec) {
      state->log.warn("", "accept_failed", {{"listener", "metrics"}, {"reason", ec.message()}});
      // Out of descriptors (or the like): pause instead of spinning on the same error.
      asio::steady_timer pause(state->executor, kAcceptRetryPause);
      auto [waited] = co_await pause.async_wait(as_tuple(asio::use_awaitable));
      (void)waited;
      continue;
    }
    std::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    std::string peer = ignored ? std::string("unknown") : common::to_string(remote);
    if (state->open.size() >= kMaxMetricsConnections) {
      // A scraper needs one connection: many at once are a client gone wrong, and must not
      // take the descriptors the DTUs and peers need.
      state->log.debug(peer, "metrics_client_refused",
                       {{"reason", "already " + std::to_string(state->open.size()) + " connections"}});
      close_socket(socket);
      continue;
    }
    auto shared = std::make_shared<tcp::socket>(std::move(socket));
    state->open.insert(shared);
    common::spawn(state->executor, serve(state, shared, std::move(peer)), state->log, "metrics client");
  }
}

}  // namespace

MetricsServer::MetricsServer(const asio::any_io_executor& ex, common::Endpoint listen, Render render,
                             common::Logger log)
    : state_(std::make_shared<MetricsServerState>(ex, std::move(listen), std::move(render), std::move(log))) {
}

MetricsServer::~MetricsServer() {
  stop();
}

common::Result<void> MetricsServer::start() {
  auto acceptor = common::tcp_listen(state_->executor, state_->listen);
  if (!acceptor.ok()) {
    return Error(acceptor.error().code, "metrics endpoint: " + acceptor.error().detail);
  }
  state_->acceptor.emplace(std::move(acceptor.value()));
  const auto local = state_->acceptor->local_endpoint();
  state_->bound = common::Endpoint{state_->listen.host, local.port()};
  state_->log.info("", "metrics_listening", {{"listen", state_->bound.to_string()}});
  if (!local.address().is_loopback()) {
    // Exposure: the endpoint has no authentication; anyone who reaches it reads the group's shape.
    state_->log.warn(
        "", "metrics_not_loopback",
        {{"listen", state_->bound.to_string()},
         {"advice", "the endpoint has no authentication: firewall it to the Prometheus server"}});
  }
  common::spawn(state_->executor, accept_loop(state_), state_->log, "accept metrics");
  return {};
}

void MetricsServer::stop() {
  if (state_->stopped) return;
  state_->stopped = true;
  std::error_code ignored;
  if (state_->acceptor) state_->acceptor->close(ignored);
  auto open = std::move(state_->open);
  state_->open.clear();
  for (const auto& socket : open) close_socket(*socket);
}

common::Endpoint MetricsServer::endpoint() const {
  return state_->bound;
}

}  // namespace dtu::devmgr
