#pragma once
// UsbBackend: how dtu-agent finds USB devices and moves data to and from them. One
// implementation per source of devices: SimBackend (a JSON catalogue, for the demo and tests) and
// LibusbBackend (real USB, hotplug on its own event thread). Both pass the same contract tests
// (tests/dtu-agent/backend_contract_test.cpp).
//
// A device that arrives unconfigured (configuration 0) is configured by the backend with its
// first configuration before it is reported, so its units can be used (DESIGN.md §3).
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

  // Data path, used in-band by the lease holder (DESIGN.md §2, the in-band channel). Every
  // completion (`done`) is called exactly once, on the io_context thread, never from inside the
  // call. Common errors:
  //   Errc::not_found         the port, the interface or the endpoint is unknown
  //   Errc::invalid_argument  wrong direction or transfer type, or a zero length
  //   Errc::illegal_state     the interface owning the endpoint is not claimed (claim first)
  //   Errc::unavailable       the device is unplugged, or was unplugged during the transfer
  //   Errc::timeout           nothing moved within `timeout`
  //   Errc::refused           the device STALLed the request
  //   Errc::io_error          any other failure the backend reports (with its reason)
  //   Errc::closed            the backend was stopped

  // Claims interface `interface` of `port` for the lease holder: detaches a kernel driver bound
  // to it (remembering to give it back) and claims it. Claiming a claimed interface succeeds.
  virtual void claim(const std::string& port, std::uint8_t interface,
                     std::function<void(common::Result<void>)> done) = 0;
  // Gives the interface back: releases it and re-attaches the kernel driver that claim()
  // detached. Releasing an unclaimed interface succeeds. An unplug releases everything.
  virtual void release(const std::string& port, std::uint8_t interface,
                       std::function<void(common::Result<void>)> done) = 0;

  // A control transfer on endpoint 0. Direction from bit 7 of setup.request_type: IN reads up to
  // setup.length bytes (the result holds what the device returned, possibly fewer); OUT sends
  // `data` (setup.length must equal data.size()) and the result is empty. No claim is needed.
  virtual void control(const std::string& port, UsbControlSetup setup, std::vector<std::uint8_t> data,
                       common::Duration timeout,
                       std::function<void(common::Result<std::vector<std::uint8_t>>)> done) = 0;

  // Writes `data` to a bulk or interrupt OUT `endpoint` (address with the direction bit, e.g.
  // 0x01). On success, the number of bytes the device accepted.
  virtual void transfer_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                            common::Duration timeout, std::function<void(common::Result<std::size_t>)> done) = 0;
  // Reads from a bulk or interrupt IN `endpoint` (e.g. 0x82). On success, between 1 and
  // max_length bytes.
  virtual void transfer_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
                           common::Duration timeout,
                           std::function<void(common::Result<std::vector<std::uint8_t>>)> done) = 0;
};

}  // namespace dtu::agent
