#pragma once
// UsbBackend: how dtu-agent finds USB devices and moves data to and from them. One
// implementation per source of devices: SimBackend (a JSON catalogue, for the demo and tests) and,
// later, a libusb backend (hotplug on its own event thread).
//
// Threading: every method is called on the agent's io_context thread, and every callback (events
// and transfer completions) runs on that thread too. A backend with a thread of its own hands
// results over with asio::post; none calls back from inside the method that caused the callback,
// so callers never re-enter.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dtu/agent/usb_device.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

// What the backend reports. An empty function is not called.
struct UsbEvents {
  // A device appeared (or was present at start). Its port is unique among present devices.
  std::function<void(UsbDeviceInfo)> attached;
  // The device on `port` went away; transfers to it now fail with Errc::unavailable.
  std::function<void(std::string port)> detached;
};

class UsbBackend {
 public:
  virtual ~UsbBackend() = default;

  // Starts reporting: first one `attached` per device present now, then `attached` and `detached`
  // as devices are plugged and unplugged, until stop().
  // Errors: Errc::illegal_state when already started; a backend's own failure (Errc::io_error,
  // Errc::unavailable) when it cannot watch devices at all.
  virtual common::Result<void> start(UsbEvents events) = 0;

  // Stops reporting. No event callback runs after stop() returns; pending transfers complete with
  // Errc::closed. Idempotent; a stopped backend may be started again.
  virtual void stop() = 0;

  // The devices present now (empty unless started). Reflects plugs and unplugs as soon as the
  // backend knows of them, possibly before the matching event has been delivered.
  virtual std::vector<UsbDeviceInfo> devices() const = 0;

  // Data path, used in-band by the lease holder. `endpoint` is the endpoint address (direction
  // bit included: OUT 0x01, IN 0x82). `done` is called exactly once, on the io_context thread,
  // never from inside the call. Errors:
  //   Errc::not_found         the port or the endpoint is unknown
  //   Errc::invalid_argument  the endpoint has the wrong direction or type, or max_length is 0
  //   Errc::unavailable       the device is unplugged, or was unplugged during the transfer
  //   Errc::timeout           nothing moved within `timeout`
  //   Errc::closed            the backend was stopped
  // bulk_out: on success, the number of bytes the device accepted.
  virtual void bulk_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                        common::Duration timeout, std::function<void(common::Result<std::size_t>)> done) = 0;
  // bulk_in: on success, between 1 and max_length bytes.
  virtual void bulk_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
                       common::Duration timeout,
                       std::function<void(common::Result<std::vector<std::uint8_t>>)> done) = 0;
};

}  // namespace dtu::agent
