#pragma once
// SimControlServer: a Unix stream socket through which tests and dtu-simctl drive the SimBackend
// of a running dtu-agent. JSON lines: one request a line, one answer a line, in order.
//
//   {"op":"list"}                                → {"ok":true,"devices":[{"port":"1-1","present":true,
//                                                    "vid":"04b8","pid":"0005","product":"…"},…]}
//   {"op":"plug","port":"1-3"}                   → {"ok":true}
//   {"op":"plug_device","device":{…}}            → {"ok":true}   (a device object of the device file)
//   {"op":"unplug","port":"1-2"}                 → {"ok":true}
//   {"op":"captured","port":"1-1","endpoint":1}  → {"ok":true,"bytes":2,"hex":"1b40"}
//   {"op":"feed","port":"1-2","endpoint":132,"hex":"0a0b"} → {"ok":true}
//   anything that fails                          → {"ok":false,"code":"not_found","error":"<reason>"}
//
// "endpoint" is the endpoint address as a JSON integer (IN endpoints have bit 7 set: 0x84 = 132).
// A line that is not such a request gets an error answer and the connection stays; a line longer
// than kSimControlMaxLine bytes gets an error answer and that connection is closed; so does a
// client idle for kSimControlIdleTimeout. Other clients are served throughout.
//
// Threading: runs as coroutines on the agent's io_context; call start() and stop() on its thread.
// The socket is created mode 0600: whoever can connect can plug devices into this DTU.

#include <asio/any_io_executor.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "dtu/agent/sim_backend.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

namespace detail {
struct SimControlState;  // one per start(): the listener and the connections of that run
}  // namespace detail

// Bytes in one request line, newline excluded: far above any real request (a plug_device with a
// large descriptor is a few KiB), low enough that a client cannot make us buffer much.
inline constexpr std::size_t kSimControlMaxLine = 64 * 1024;
// The longest answer sim_control_call reads (captured data of a 20 MB print job is 40 MB of hex).
inline constexpr std::size_t kSimControlMaxAnswer = 128 * 1024 * 1024;
// A client that sends nothing for this long is disconnected: every wait has a deadline.
inline constexpr common::Duration kSimControlIdleTimeout = std::chrono::minutes(5);
// Connections served at once; more are closed at accept. A test harness needs a handful.
inline constexpr std::size_t kSimControlMaxSessions = 32;

class SimControlServer {
 public:
  // REQUIRES: `backend` outlives this server, or at least its stop().
  SimControlServer(asio::any_io_executor executor, SimBackend& backend, std::string socket_path);
  ~SimControlServer();  // stop()
  SimControlServer(const SimControlServer&) = delete;
  SimControlServer& operator=(const SimControlServer&) = delete;

  // Binds and listens on the socket path, then serves until stop(). A socket file left behind by a
  // dead server is removed first. Errors: Errc::invalid_argument (path too long for a Unix socket),
  // Errc::unavailable (a live server is listening there), Errc::io_error (the path exists and is
  // not a socket, or bind/listen failed), Errc::illegal_state (already started).
  common::Result<void> start();
  // Closes the listener and every connection and removes the socket file. Idempotent; the backend
  // is not touched after it returns.
  void stop();

  const std::string& socket_path() const { return socket_path_; }

 private:
  asio::any_io_executor executor_;
  SimBackend& backend_;
  std::string socket_path_;
  std::shared_ptr<detail::SimControlState> state_;  // shared with the coroutines of the run
};

// The answer to one request line (its newline removed). Applies the request to `backend`; no
// I/O. Never throws on bad input.
nlohmann::json handle_sim_control_request(SimBackend& backend, std::string_view line);

// Client side (dtu-simctl): connects, sends `request`, waits up to `timeout` for the answer line.
// Blocks the calling thread; do not call it on the thread that runs the server. Errors:
// Errc::unavailable (cannot connect), Errc::timeout, Errc::link_lost (closed before answering),
// Errc::bad_payload (the answer is not a JSON object), Errc::invalid_argument (path too long).
common::Result<nlohmann::json> sim_control_call(const std::string& socket_path, const nlohmann::json& request,
                                                common::Duration timeout);

}  // namespace dtu::agent
