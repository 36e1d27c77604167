#include "dtu/devmgr/service_notifier.hpp"

#include <string>
#include <system_error>
#include <utility>

#include "dtu/common/systemd_notify.hpp"

namespace dtu::devmgr {

namespace sd = common::systemd;

std::string status_line(const std::string& id, const DeviceManager& manager) {
  const auto peers = manager.peer_count();
  std::string line = id + ": ";
  if (peers.known == 0) {
    line += "no group";
  } else {
    line += std::to_string(peers.up) + "/" + std::to_string(peers.known) + " peers up";
  }
  line += ", " + std::to_string(manager.dtu_count()) + " DTUs";
  line += ", " + std::to_string(manager.devices().device_count()) + " devices";
  line += ", " + std::to_string(manager.leases().size()) + " leases";
  line += ", " + std::to_string(manager.finders().size()) + " finders";
  if (manager.draining()) line += ", draining";
  return line;
}

ServiceNotifier::ServiceNotifier(const asio::any_io_executor& ex, std::string id,
                                 const DeviceManager& manager)
    : id_(std::move(id)), manager_(manager), status_timer_(ex), watchdog_timer_(ex) {}

ServiceNotifier::~ServiceNotifier() {
  status_timer_.cancel();
  watchdog_timer_.cancel();
}

void ServiceNotifier::start() {
  sd::notify_ready();
  send_status(true);
  arm_status();
  watchdog_interval_ = sd::watchdog_interval();
  if (watchdog_interval_) {
    sd::notify_watchdog();
    arm_watchdog();
  }
}

void ServiceNotifier::reloading() {
  sd::notify_reloading();
}

void ServiceNotifier::reloaded() {
  sd::notify_ready();
  send_status(true);
}

void ServiceNotifier::stopping() {
  if (stopped_) return;
  stopped_ = true;
  status_timer_.cancel();
  watchdog_timer_.cancel();
  sd::notify_stopping();
}

void ServiceNotifier::send_status(bool force) {
  auto line = status_line(id_, manager_);
  if (!force && line == last_status_) return;
  sd::notify_status(line);
  last_status_ = std::move(line);
}

void ServiceNotifier::arm_status() {
  status_timer_.expires_after(kStatusInterval);
  status_timer_.async_wait([this](std::error_code ec) {
    if (ec || stopped_) return;
    send_status(false);
    arm_status();
  });
}

void ServiceNotifier::arm_watchdog() {
  // Half the interval, as sd_watchdog_enabled(3) advises: one late ping is not yet a kill.
  watchdog_timer_.expires_after(*watchdog_interval_ / 2);
  watchdog_timer_.async_wait([this](std::error_code ec) {
    if (ec || stopped_) return;
    sd::notify_watchdog();
    arm_watchdog();
  });
}

}  // namespace dtu::devmgr
