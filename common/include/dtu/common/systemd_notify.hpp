#pragma once
// Tells the service manager about this daemon's state (sd_notify(3)): READY=1, RELOADING=1,
// STOPPING=1, STATUS=, WATCHDOG=1. Started outside systemd (no NOTIFY_SOCKET in the environment)
// every call does nothing, and so does a build without libsystemd (DTU_HAVE_LIBSYSTEMD unset).
// A failed send is logged once (systemd_notify_failed) and otherwise ignored: the daemon runs on.
// Stateless; any thread.

#include <chrono>
#include <optional>
#include <string>

namespace dtu::common::systemd {

// The daemon has started: its listeners are bound and it serves (Type=notify waits for this).
void notify_ready();
// The daemon is reading its configuration again; READY=1 (notify_ready) follows when done.
// Carries MONOTONIC_USEC, which systemd 253 and later want with it.
void notify_reloading();
// The daemon is shutting down.
void notify_stopping();
// One line for `systemctl status` (newlines are replaced by spaces).
void notify_status(const std::string& line);
// The event loop is alive (WatchdogSec=): due every watchdog_interval() / 2.
void notify_watchdog();
// The watchdog interval systemd set for this process (WATCHDOG_USEC, with WATCHDOG_PID naming
// it), or nullopt when the watchdog is off.
std::optional<std::chrono::microseconds> watchdog_interval();

}  // namespace dtu::common::systemd
