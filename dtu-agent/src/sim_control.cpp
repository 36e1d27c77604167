#include "dtu/agent/sim_control.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio/buffer.hpp>
#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read_until.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "dtu/common/errors.hpp"
#include "dtu/common/log.hpp"

namespace dtu::agent {
namespace {

using common::Errc;
using common::Error;
using common::Result;
using nlohmann::json;
using Socket = asio::local::stream_protocol::socket;

// After a failed accept (out of descriptors, say), wait this long before the next: no busy loop.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_answer(const Error& error) {
  std::string code = "io_error";
  if (error.code.category() == common::dtu_category()) {
    code = common::errc_name(static_cast<Errc>(error.code.value()));
  }
  return json{{"ok", false}, {"code", code}, {"error", error.describe()}};
}

json ok_answer() {
  return json{{"ok", true}};
}

std::string hex4(std::uint16_t v) {
  std::vector<std::uint8_t> bytes{static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v & 0xff)};
  return hex_encode(bytes);
}

json optional_text(const std::optional<std::string>& s) {
  return s ? json(*s) : json(nullptr);
}

Result<std::string> string_field(const json& request, const char* key) {
  auto it = request.find(key);
  if (it == request.end() || !it->is_string()) {
    return Error{Errc::invalid_argument, std::string("request needs a string \"") + key + "\""};
  }
  return it->get<std::string>();
}

Result<std::uint8_t> endpoint_field(const json& request) {
  auto it = request.find("endpoint");
  const bool fits = it != request.end() && it->is_number_integer() && *it >= 0 && *it <= 0xff;
  if (!fits) return Error{Errc::invalid_argument, "request needs an \"endpoint\" address from 0 to 255"};
  return static_cast<std::uint8_t>(it->get<unsigned>());
}

json answer_of(const Result<void>& r) {
  return r ? ok_answer() : error_answer(r.error());
}

json handle(SimBackend& backend, const json& request) {
  if (!request.is_object()) return error_answer(Error{Errc::bad_payload, "a request is a JSON object"});
  auto op = string_field(request, "op");
  if (!op) return error_answer(op.error());

  if (*op == "list") {
    json devices = json::array();
    for (const SimDevice* d : backend.catalogue()) {
      devices.push_back({{"port", d->info.port},
                         {"present", d->present},
                         {"vid", hex4(d->info.vid)},
                         {"pid", hex4(d->info.pid)},
                         {"product", optional_text(d->info.product)}});
    }
    return json{{"ok", true}, {"devices", std::move(devices)}};
  }
  if (*op == "plug_device") {
    auto it = request.find("device");
    if (it == request.end()) return error_answer(Error{Errc::invalid_argument, "request needs a \"device\""});
    auto device = sim_device_from_json(*it, "device");
    if (!device) return error_answer(device.error());
    return answer_of(backend.plug_device(std::move(device).value()));
  }

  auto port = string_field(request, "port");
  if (!port) return error_answer(port.error());
  if (*op == "plug") return answer_of(backend.plug(*port));
  if (*op == "unplug") return answer_of(backend.unplug(*port));

  auto endpoint = endpoint_field(request);
  if (!endpoint) return error_answer(endpoint.error());
  if (*op == "captured") {
    const SimDevice* device = backend.find(*port);
    if (device == nullptr) return error_answer(Error{Errc::not_found, "no device on port " + *port});
    if (device->sinks.count(*endpoint) == 0) {
      return error_answer(Error{
          Errc::not_found, "endpoint 0x" + hex_encode({*endpoint}) + " on port " + *port + " is not a sink"});
    }
    const auto bytes = backend.captured(*port, *endpoint);
    return json{{"ok", true}, {"bytes", bytes.size()}, {"hex", hex_encode(bytes)}};
  }
  if (*op == "feed") {
    auto hex = string_field(request, "hex");
    if (!hex) return error_answer(hex.error());
    auto bytes = hex_decode(*hex);
    if (!bytes) return error_answer(bytes.error());
    return answer_of(backend.feed(*port, *endpoint, std::move(bytes).value()));
  }
  return error_answer(Error{Errc::invalid_argument, "unknown op \"" + *op + "\""});
}

bool path_fits(const std::string& path) {
  return !path.empty() && path.size() < sizeof(sockaddr_un::sun_path);
}

void log_exception(const common::Logger& log, std::string_view peer, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    log.error(peer, "coroutine_failed", {{"what", ex.what()}});
  } catch (...) {
    log.error(peer, "coroutine_failed", {{"what", "unknown exception"}});
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct detail::SimControlState {
  SimControlState(asio::any_io_executor ex, SimBackend& b, std::string p)
      : executor(ex), backend(&b), path(std::move(p)), acceptor(ex) {}

  asio::any_io_executor executor;
  SimBackend* backend;
  std::string path;
  asio::local::stream_protocol::acceptor acceptor;
  std::map<std::uint64_t, std::shared_ptr<Socket>> sessions;
  std::uint64_t next_id = 1;
  bool running = false;
  common::Logger log{"sim-control"};
};

namespace {

using State = detail::SimControlState;

// One client: reads a line, answers it, until the client leaves, misbehaves or idles, or stop().
asio::awaitable<void> serve(std::shared_ptr<State> st, std::uint64_t id, std::shared_ptr<Socket> socket) {
  using namespace asio::experimental::awaitable_operators;
  const std::string peer = "simctl#" + std::to_string(id);
  std::string buffer;
  asio::steady_timer idle(st->executor);
  for (;;) {
    std::error_code read_ec;
    std::error_code idle_ec;
    idle.expires_after(kSimControlIdleTimeout);
    auto which =
        co_await (asio::async_read_until(*socket, asio::dynamic_buffer(buffer, kSimControlMaxLine + 1), '\n',
                                         asio::redirect_error(asio::use_awaitable, read_ec)) ||
                  idle.async_wait(asio::redirect_error(asio::use_awaitable, idle_ec)));
    if (!st->running) break;
    if (which.index() == 1) {
      st->log.info(
          peer, "client_idle",
          {{"seconds", std::chrono::duration_cast<std::chrono::seconds>(kSimControlIdleTimeout).count()}});
      break;
    }
    if (read_ec == asio::error::not_found) {
      st->log.warn(peer, "line_too_long", {{"max_bytes", kSimControlMaxLine}});
      std::string answer = dump(error_answer(Error{Errc::frame_too_large,
                                                   "request line longer than " +
                                                       std::to_string(kSimControlMaxLine) + " bytes"})) +
                           "\n";
      std::error_code ignored;
      co_await asio::async_write(*socket, asio::buffer(answer),
                                 asio::redirect_error(asio::use_awaitable, ignored));
      break;
    }
    if (read_ec) {
      if (read_ec != asio::error::eof) st->log.info(peer, "read_failed", {{"error", read_ec}});
      break;
    }
    const std::size_t n = std::get<0>(which);
    std::string line = buffer.substr(0, n - 1);
    buffer.erase(0, n);
    if (!line.empty() && line.back() == '\r') line.pop_back();

    json answer = handle_sim_control_request(*st->backend, line);
    if (answer.value("ok", false) == false) {
      st->log.info(peer, "request_failed", {{"error", answer.value("error", std::string())}});
    }
    std::string text = dump(answer) + "\n";
    std::error_code write_ec;
    co_await asio::async_write(*socket, asio::buffer(text),
                               asio::redirect_error(asio::use_awaitable, write_ec));
    if (write_ec || !st->running) break;
  }
  std::error_code ignored;
  socket->close(ignored);
  st->sessions.erase(id);
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> st) {
  for (;;) {
    std::error_code ec;
    Socket socket = co_await st->acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (!st->running) co_return;
    if (ec) {
      st->log.warn("-", "accept_failed", {{"error", ec}});
      asio::steady_timer delay(st->executor, kAcceptRetryDelay);
      co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (!st->running) co_return;
      continue;
    }
    const std::uint64_t id = st->next_id++;
    if (st->sessions.size() >= kSimControlMaxSessions) {
      st->log.warn("simctl#" + std::to_string(id), "too_many_clients", {{"max", kSimControlMaxSessions}});
      continue;  // the socket closes as it goes out of scope
    }
    auto shared = std::make_shared<Socket>(std::move(socket));
    st->sessions.emplace(id, shared);
    st->log.debug("simctl#" + std::to_string(id), "client_connected");
    asio::co_spawn(st->executor, serve(st, id, shared), [st, id](std::exception_ptr e) {
      log_exception(st->log, "simctl#" + std::to_string(id), e);
    });
  }
}

// Removes a socket file nobody listens on. Leaves anything else alone.
Result<void> remove_stale_socket(const std::string& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return {};
    return Error{Errc::io_error, path + ": " + std::error_code(errno, std::generic_category()).message()};
  }
  if (!S_ISSOCK(info.st_mode))
    return Error{Errc::io_error, path + " exists and is not a socket; not removing it"};
  asio::io_context probe_io;
  Socket probe(probe_io);
  std::error_code ec;
  probe.connect(asio::local::stream_protocol::endpoint(path), ec);
  if (!ec) return Error{Errc::unavailable, "a server is already listening on " + path};
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Error{Errc::io_error, "cannot remove stale socket " + path + ": " +
                                     std::error_code(errno, std::generic_category()).message()};
  }
  return {};
}

}  // namespace

json handle_sim_control_request(SimBackend& backend, std::string_view line) {
  json request = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) return error_answer(Error{Errc::bad_payload, "request is not valid JSON"});
  try {
    return handle(backend, request);
  } catch (const json::exception& e) {  // a bug of ours, but one that must not end the server
    return error_answer(Error{Errc::bad_payload, std::string("cannot handle request: ") + e.what()});
  }
}

SimControlServer::SimControlServer(asio::any_io_executor executor, SimBackend& backend,
                                   std::string socket_path)
    : executor_(std::move(executor)), backend_(backend), socket_path_(std::move(socket_path)) {}

SimControlServer::~SimControlServer() {
  stop();
}

Result<void> SimControlServer::start() {
  if (state_) return Error{Errc::illegal_state, "simulator control server already started"};
  if (!path_fits(socket_path_)) {
    return Error{Errc::invalid_argument, "socket path \"" + socket_path_ + "\" is empty or longer than " +
                                             std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes"};
  }
  if (auto removed = remove_stale_socket(socket_path_); !removed) return removed;

  auto st = std::make_shared<detail::SimControlState>(executor_, backend_, socket_path_);
  std::error_code ec;
  const asio::local::stream_protocol::endpoint endpoint(socket_path_);
  st->acceptor.open(endpoint.protocol(), ec);
  if (!ec) st->acceptor.bind(endpoint, ec);
  if (ec) return Error{Errc::io_error, "cannot bind " + socket_path_ + ": " + ec.message()};
  // Before listen(), so no client can connect while the mode is still the umask's.
  if (::chmod(socket_path_.c_str(), S_IRUSR | S_IWUSR) != 0) {
    ec = std::error_code(errno, std::generic_category());
  }
  if (!ec) st->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::error_code ignored;
    st->acceptor.close(ignored);
    ::unlink(socket_path_.c_str());
    return Error{Errc::io_error, "cannot listen on " + socket_path_ + ": " + ec.message()};
  }
  st->running = true;
  state_ = st;
  st->log.info("-", "sim_control_listening", {{"socket", socket_path_}});
  asio::co_spawn(executor_, accept_loop(st), [st](std::exception_ptr e) { log_exception(st->log, "-", e); });
  return {};
}

void SimControlServer::stop() {
  if (!state_) return;
  auto st = std::move(state_);
  st->running = false;
  std::error_code ignored;
  st->acceptor.close(ignored);
  for (auto& [id, socket] : st->sessions) socket->close(ignored);
  st->sessions.clear();
  ::unlink(st->path.c_str());
  st->log.info("-", "sim_control_stopped", {{"socket", st->path}});
}

Result<json> sim_control_call(const std::string& socket_path, const json& request, common::Duration timeout) {
  if (!path_fits(socket_path)) {
    return Error{Errc::invalid_argument, "socket path \"" + socket_path + "\" is empty or too long"};
  }
  asio::io_context io;
  Socket socket(io);
  std::error_code ec;
  socket.connect(asio::local::stream_protocol::endpoint(socket_path), ec);
  if (ec) return Error{Errc::unavailable, "cannot connect to " + socket_path + ": " + ec.message()};

  const std::string out = dump(request) + "\n";
  std::string in;
  std::optional<Result<json>> result;
  asio::async_write(socket, asio::buffer(out), [&](std::error_code write_ec, std::size_t) {
    if (write_ec) {
      result = Error{Errc::link_lost, "cannot send to " + socket_path + ": " + write_ec.message()};
      return;
    }
    asio::async_read_until(
        socket, asio::dynamic_buffer(in, kSimControlMaxAnswer + 1), '\n',
        [&](std::error_code read_ec, std::size_t n) {
          if (read_ec) {
            result = Error{Errc::link_lost, socket_path + " closed without answering: " + read_ec.message()};
            return;
          }
          json answer = json::parse(in.substr(0, n - 1), nullptr, /*allow_exceptions=*/false);
          if (answer.is_discarded() || !answer.is_object()) {
            result = Error{Errc::bad_payload, socket_path + " answered something that is not a JSON object"};
          } else {
            result = std::move(answer);
          }
        });
  });
  io.run_for(timeout);
  if (!result) return Error{Errc::timeout, "no answer from " + socket_path};
  return std::move(*result);
}

}  // namespace dtu::agent
