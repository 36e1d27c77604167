#pragma once
// DtuAgent: the desktop unit's side of the broker. It keeps the records of its USB devices
// (from a UsbBackend), holds one persistent TLS connection to one manager of its list (its
// owner manager), says hello, reports every device (a snapshot on each connect, then one
// message per plug or unplug), and answers heartbeats through its Link. When the link is lost
// it tries the list again from the top, with a bounded, jittered backoff.
//
// Every record is stamped here, at generation: (boot_epoch, seq) plus the time.
// Runs on one io_context thread; every method must be called on it.

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "dtu/agent/agent_options.hpp"
#include "dtu/agent/usb_backend.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/records.hpp"

namespace dtu::agent {

class DtuAgent {
 public:
  DtuAgent(const asio::any_io_executor& ex, const common::Clock& clock, AgentOptions options, common::Bytes key,
           UsbBackend& backend);
  ~DtuAgent();
  DtuAgent(const DtuAgent&) = delete;
  DtuAgent& operator=(const DtuAgent&) = delete;

  // Starts the backend and the connection loop.
  common::Result<void> start();
  // Closes the link and stops the backend. Idempotent.
  void stop();

 private:
  asio::awaitable<void> run();
  // Connects to one manager and serves the link until it closes. Returns why it ended.
  asio::awaitable<common::Error> serve(common::Endpoint manager);
  void on_attached(UsbDeviceInfo info);
  void on_detached(const std::string& port);
  void send_device_message(common::Frame frame, const std::string& what);
  common::Stamp next_stamp();
  common::Duration backoff(unsigned attempt);

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  AgentOptions options_;
  common::Bytes key_;
  UsbBackend& backend_;
  common::Logger log_{"dtu-agent"};
  std::shared_ptr<asio::ssl::context> tls_;
  std::int64_t boot_epoch_;
  std::uint64_t seq_ = 0;
  std::map<std::string, common::DeviceRecord> records_;  // by port
  std::shared_ptr<common::Link> link_;                   // set while connected
  bool welcomed_ = false;
  asio::steady_timer link_closed_;  // cancelled when the link closes
  asio::steady_timer retry_timer_;
  std::mt19937 rng_;
  bool stopped_ = false;
};

}  // namespace dtu::agent
