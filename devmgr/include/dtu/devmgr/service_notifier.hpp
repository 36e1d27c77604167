#pragma once
// ServiceNotifier: keeps systemd informed about one DeviceManager (docs/systemd.md). After
// start(): READY=1, then a STATUS= summary line whenever it changes (looked at every
// kStatusInterval), and WATCHDOG=1 every half of the interval systemd asks for (WatchdogSec=),
// sent from a timer on the manager's io_context: a stuck event loop stops the pings and systemd
// kills and restarts the manager. Outside systemd nothing is sent (common/systemd_notify.hpp).
// Runs on the manager's io_context thread.

#include <chrono>
#include <optional>
#include <string>

#include <asio.hpp>

#include "dtu/devmgr/device_manager.hpp"

namespace dtu::devmgr {

// How often the status summary is looked at; it is sent only when it changed.
inline constexpr std::chrono::seconds kStatusInterval{2};

// One line for `systemctl status`: "m1: 2/2 peers up, 12 DTUs, 40 devices, 5 leases, 7 finders"
// (", draining" when draining; "no group" instead of the peers without a mesh).
std::string status_line(const std::string& id, const DeviceManager& manager);

class ServiceNotifier {
 public:
  // `id`: the manager's id, which leads the status line. REQUIRES: `manager` outlives this object.
  ServiceNotifier(const asio::any_io_executor& ex, std::string id, const DeviceManager& manager);
  ~ServiceNotifier();
  ServiceNotifier(const ServiceNotifier&) = delete;
  ServiceNotifier& operator=(const ServiceNotifier&) = delete;

  // REQUIRES: the manager started. Sends READY=1 and the status; starts the timers.
  void start();
  // A reload begins (RELOADING=1) / is done (READY=1 and the status, which may have changed).
  void reloading();
  void reloaded();
  // Sends STOPPING=1 and stops the timers. Idempotent.
  void stopping();

 private:
  void send_status(bool force);
  void arm_status();
  void arm_watchdog();

  std::string id_;
  const DeviceManager& manager_;
  asio::steady_timer status_timer_;
  asio::steady_timer watchdog_timer_;
  std::optional<std::chrono::microseconds> watchdog_interval_;
  std::string last_status_;
  bool stopped_ = false;
};

}  // namespace dtu::devmgr
