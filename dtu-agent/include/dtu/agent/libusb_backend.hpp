#pragma once
// LibusbBackend: a UsbBackend on real USB through libusb-1.0. It reports the devices present at
// start(), then hotplug arrivals and removals (libusb hotplug; where the platform has none, a
// rescan every kRescanInterval that diffs the device list).
//
// Threading: the public methods run on the agent's io_context thread, like every UsbBackend.
// start() creates a libusb context and a thread of its own (EventThread) that runs libusb's event
// loop, reads descriptors and strings, and owns every device handle, claim and transfer. The two
// threads share exactly two structures:
//   - io_context → event thread: a mutex-protected queue of requests (claim, release, control,
//     transfer_out, transfer_in); queuing one wakes the loop with libusb_interrupt_event_handler;
//   - event thread → io_context: asio::post of events and of every completion.
// Everything else lives on one side only. stop() joins the event thread.
//
// A device's identity is its port path "<bus>-<port>[.<port>…]" (libusb bus number and port
// numbers). Root hubs have no port path and are not reported. A string descriptor that cannot be
// read is reported as absent (std::nullopt) with one log line naming the port and the reason. A
// configuration descriptor libusb refuses is reported as no interfaces with a
// `usb_config_unreadable` warning naming the port. A device that arrives unconfigured is set to
// its first configuration before it is reported (`usb_configured`).
//
// Data path: the event thread opens a device when it is first needed (a claim or a control
// transfer) and closes it when nothing is claimed and no transfer is in flight. claim() detaches
// a kernel driver bound to the interface and release() re-attaches it. Transfers are libusb
// asynchronous transfers, so a slow IN read never holds up other requests. libusb's transfer
// status maps to Errc: TIMED_OUT → timeout, NO_DEVICE → unavailable, STALL → refused, others →
// io_error with libusb's name. An unplug fails the device's pending transfers with unavailable and
// drops its claims; stop() fails every pending request and transfer with closed, gives claimed
// interfaces back and closes every handle.

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
  void claim(const std::string& port, std::uint8_t interface,
             std::function<void(common::Result<void>)> done) override;
  void release(const std::string& port, std::uint8_t interface,
               std::function<void(common::Result<void>)> done) override;
  void control(const std::string& port, UsbControlSetup setup, std::vector<std::uint8_t> data,
               common::Duration timeout,
               std::function<void(common::Result<std::vector<std::uint8_t>>)> done) override;
  void transfer_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                    common::Duration timeout, std::function<void(common::Result<std::size_t>)> done) override;
  void transfer_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
                   common::Duration timeout,
                   std::function<void(common::Result<std::vector<std::uint8_t>>)> done) override;

  bool started() const { return started_; }

 private:
  class EventThread;

  struct Request;  // one data-path request on its way to the event thread

  // Run on the io_context thread; `run` is the start() the event came from (stale ones drop).
  void on_attached(std::uint64_t run, UsbDeviceInfo info);
  void on_detached(std::uint64_t run, const std::string& port);
  // Hands `request` to the event thread, or completes it with Errc::closed when stopped.
  void hand_over(Request request);

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
