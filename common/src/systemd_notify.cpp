#include "dtu/common/systemd_notify.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <ctime>
#include <string>
#include <system_error>

#ifdef DTU_HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "dtu/common/log.hpp"

namespace dtu::common::systemd {

namespace {

#ifdef DTU_HAVE_LIBSYSTEMD
void send(const std::string& state) {
  // unset_environment = 0: a child the daemon starts is not its service's main process, and
  // NotifyAccess=main ignores it anyway.
  const int rc = sd_notify(0, state.c_str());
  if (rc >= 0) return;
  static std::atomic<bool> logged{false};
  if (logged.exchange(true)) return;
  Logger("systemd").warn("", "systemd_notify_failed",
                         {{"state", state.substr(0, state.find('\n'))},
                          {"reason", std::error_code(-rc, std::generic_category())}});
}
#else
void send(const std::string&) {}
#endif

}  // namespace

void notify_ready() {
  send("READY=1");
}

void notify_reloading() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const auto usec =
      static_cast<std::uint64_t>(now.tv_sec) * 1000000u + static_cast<std::uint64_t>(now.tv_nsec) / 1000u;
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void notify_stopping() {
  send("STOPPING=1");
}

void notify_status(const std::string& line) {
  std::string text = line;
  std::replace(text.begin(), text.end(), '\n', ' ');
  send("STATUS=" + text);
}

void notify_watchdog() {
  send("WATCHDOG=1");
}

std::optional<std::chrono::microseconds> watchdog_interval() {
#ifdef DTU_HAVE_LIBSYSTEMD
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(usec));
  }
#endif
  return std::nullopt;
}

}  // namespace dtu::common::systemd
