#pragma once
// LibusbBackend: a UsbBackend on real USB through libusb-1.0. It reports the devices present at
// start(), then hotplug arrivals and removals (libusb hotplug; where the platform has none, a
// rescan every kRescanInterval that diffs the device list).
//
// Threading: the public methods run on the agent's io_context thread, like every UsbBackend.
// start() creates a libusb context and a thread of its own that runs libusb's event loop, reads
// descriptors and strings, and hands each result to the executor with asio::post. That post is
// the only structure the two threads share; the backend's state lives on the io_context thread
// and the event thread's state lives on the event thread. stop() joins the event thread.
//
// A device's identity is its port path "<bus>-<port>[.<port>…]" (libusb bus number and port
// numbers). Root hubs have no port path and are not reported. A string descriptor that cannot be
// read is reported as absent (std::nullopt) with one log line naming the port and the reason.
//
// In-band transfers (bulk_out, bulk_in) are not implemented yet: on a started backend they
// complete with Errc::unavailable ("in-band transfers arrive with the lease work").

#include <asio/any_io_executor.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dtu/agent/usb_backend.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

// How often the fallback diffs the device list when libusb has no hotplug support.
inline constexpr std::chrono::milliseconds kRescanInterval{1000};

// How the backend learns of plugs and unplugs.
enum class UsbWatch {
  hotplug_if_supported,  // libusb hotplug; the rescan when libusb has none
  rescan,                // always the rescan (the fallback, selectable so tests exercise it)
};

class LibusbBackend final : public UsbBackend {
 public:
  // `executor`: the agent's io_context executor; every callback is posted to it.
  explicit LibusbBackend(asio::any_io_executor executor, UsbWatch watch = UsbWatch::hotplug_if_supported);
  ~LibusbBackend() override;  // stop()s
  LibusbBackend(const LibusbBackend&) = delete;
  LibusbBackend& operator=(const LibusbBackend&) = delete;

  // UsbBackend. start() fails with Errc::io_error when libusb cannot be initialised.
  common::Result<void> start(UsbEvents events) override;
  void stop() override;
  std::vector<UsbDeviceInfo> devices() const override;
  void bulk_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                common::Duration timeout, std::function<void(common::Result<std::size_t>)> done) override;
  void bulk_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
               common::Duration timeout,
               std::function<void(common::Result<std::vector<std::uint8_t>>)> done) override;

  bool started() const { return started_; }

 private:
  class EventThread;

  // Run on the io_context thread; `run` is the start() the event came from (stale ones drop).
  void on_attached(std::uint64_t run, UsbDeviceInfo info);
  void on_detached(std::uint64_t run, const std::string& port);
  // Posts done(Errc::closed / unavailable) for a transfer that cannot start.
  template <typename T>
  void refuse_transfer(std::function<void(common::Result<T>)> done) const;

  asio::any_io_executor executor_;
  UsbWatch watch_;
  UsbEvents events_;
  bool started_ = false;
  std::uint64_t run_ = 0;                         // bumped by start(): tags posted events
  std::map<std::string, UsbDeviceInfo> devices_;  // by port
  std::unique_ptr<EventThread> thread_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // posted handlers hold a weak_ptr
};

}  // namespace dtu::agent
