#pragma once
// SimBackend: a UsbBackend whose devices come from a JSON catalogue instead of hardware. The demo
// and the tests run dtu-agent on it; tests (directly, or through SimControlServer and dtu-simctl)
// plug and unplug devices, read what was "printed" and feed what will be "scanned".
//
// Threading: single-threaded, no thread of its own. Construct it with the agent's io_context
// executor and call every method on that thread (or before the context runs). Every event and
// every transfer completion is delivered through asio::post on that executor, even when the call
// that caused it runs on that thread, so a callback never runs inside a SimBackend method.
//
// The device file (the demo's is demo/sim-devices.json):
//
//   {"devices": [
//     {"port": "1-2",                       required: "<bus>-<port>[.<port>…]", unique
//      "present": true,                     default true; false = in the catalogue, plug it later
//      "vid": "04b8", "pid": "08a1",        required
//      "bcd_device": "0100",                default "0000"
//      "bcd_usb": "0200",                   default "0200"
//      "class": "00", "subclass": "00", "protocol": "00",    device class triple, default 00
//      "manufacturer": "EPSON",             string, or null / left out = absent or unreadable
//      "product": "…", "serial": null,
//      "configuration": 1,                  active configuration value, default 1; 0 = arrives
//                                           unconfigured (the backend configures it: see below)
//      "interfaces": [                      required (may be empty)
//        {"number": 0, "alternate": 0,      alternate defaults to 0; (number, alternate) unique
//         "class": "07", "subclass": "01", "protocol": "02",
//         "device_id": "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;",
//                                           optional: the IEEE 1284 device id the printer-class
//                                           GET_DEVICE_ID request answers for this interface
//         "endpoints": [                    default []
//           {"address": "0x01",             bit 7 = IN; number 1-15; unique within the device
//            "type": "bulk",                bulk (default) | interrupt | isochronous
//            "max_packet_size": 512,        default 512
//            "sink": {}},                   OUT only: record every byte written (a printer)
//           {"address": "0x82",
//            "source": {"text": "SCAN\u0001"}}  IN only: bytes to yield, as the UTF-8 of "text"
//         ]}],                                  or as "hex" ("0a0b0c", whitespace ignored)
//      "associations": [                    default []; interfaces first_interface..+count-1
//        {"first_interface": 0, "count": 2, "class": "0e", "subclass": "03", "protocol": "00"}]
//     }]}
//
// Hex fields (vid, pid, bcd_*, class/subclass/protocol, address) take a hex string with an
// optional "0x" or a JSON integer; counts (number, alternate, configuration, max_packet_size,
// first_interface, count) take a JSON integer. Every object may carry a "comment"; any other
// unknown key is an error, so a typo never silently disables a behaviour.
//
// Behaviour at run time:
// - Transfers on an endpoint need its interface claimed (claim()); claims end with release(), an
//   unplug or stop().
// - An OUT endpoint with "sink" records what transfer_out writes (read it with captured()); an
//   OUT endpoint without one accepts and discards. An IN endpoint yields its "source" bytes (plus
//   whatever feed() adds) in reads of at most max_length; when it has nothing a read waits for
//   feed() up to its timeout, then fails with Errc::timeout. Interrupt endpoints behave the same.
// - Control transfers: standard GET_DESCRIPTOR(device) answers the device descriptor, GET_STATUS
//   answers {0, 0}, the printer-class GET_DEVICE_ID (bmRequestType 0xA1, bRequest 0, wIndex high
//   byte = interface) answers a 2-byte big-endian length (counting itself) and the interface's
//   "device_id"; anything else STALLs (Errc::refused).
// - A device with configuration 0 is configured with configuration 1 when it is plugged (or at
//   start()), before it is reported, with one `usb_configured` log line, as LibusbBackend does.
// - Plugging a device resets it: its sources refill from the catalogue, what its sinks captured
//   is cleared and nothing is claimed.

#include <asio/any_io_executor.hpp>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/agent/usb_backend.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

// One catalogue entry: the device, whether it is plugged, and its endpoint behaviour.
struct SimDevice {
  UsbDeviceInfo info;
  bool present = true;
  std::set<std::uint8_t> sinks;                               // OUT endpoint addresses
  std::map<std::uint8_t, std::vector<std::uint8_t>> sources;  // IN endpoint address → bytes
  std::map<std::uint8_t, std::string> device_ids;             // interface number → IEEE 1284 id
};

// A whole device file. Ports are unique.
struct SimDeviceSet {
  std::vector<SimDevice> devices;
};

// Reads and checks a device file. Errors (Errc::io_error when it cannot be read,
// Errc::config_error otherwise) name the file, the device (index and port) and the field.
common::Result<SimDeviceSet> load_sim_devices(const std::string& path);

// The same from a parsed document; `source` names it in errors (a file name, "request", …).
common::Result<SimDeviceSet> sim_devices_from_json(const nlohmann::json& doc, const std::string& source);

// One device object of the format above; `where` prefixes errors.
common::Result<SimDevice> sim_device_from_json(const nlohmann::json& device, const std::string& where);

// Lower-case hex, two digits a byte, no separators.
std::string hex_encode(const std::vector<std::uint8_t>& bytes);
// Accepts upper or lower case and ignores whitespace; Errc::invalid_argument on anything else or
// an odd number of digits.
common::Result<std::vector<std::uint8_t>> hex_decode(std::string_view text);

class SimBackend final : public UsbBackend {
 public:
  // `executor`: the agent's io_context executor; every callback is posted to it.
  SimBackend(asio::any_io_executor executor, SimDeviceSet devices);
  ~SimBackend() override;  // stop()s; no callback of a started backend runs afterwards
  SimBackend(const SimBackend&) = delete;
  SimBackend& operator=(const SimBackend&) = delete;

  // UsbBackend. start() reports the present devices in catalogue order. Transfers on a stopped
  // backend fail with Errc::closed; on a catalogue device that is not plugged, Errc::unavailable.
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

  // Run-time control. Changes take effect at once (devices(), transfers); the events follow
  // through the executor, in call order, while started.

  // Plugs the catalogue device on `port`. Errc::not_found: no such port; Errc::illegal_state:
  // already plugged.
  common::Result<void> plug(const std::string& port);
  // Adds `device` to the catalogue (replacing an unplugged entry on its port) and plugs it, whatever
  // its `present` says. Errc::invalid_argument: no port; Errc::illegal_state: port in use.
  common::Result<void> plug_device(SimDevice device);
  // Unplugs the device on `port`; its pending reads fail with Errc::unavailable. Errc::not_found:
  // no such port; Errc::illegal_state: not plugged.
  common::Result<void> unplug(const std::string& port);

  // Every byte written to sink `endpoint` of `port` since the device was last plugged; empty when
  // there is no such sink. Kept after an unplug.
  std::vector<std::uint8_t> captured(const std::string& port, std::uint8_t endpoint) const;
  // Queues more bytes on IN `endpoint` of `port`, completing reads that wait. Errc::not_found: no
  // such port or endpoint; Errc::invalid_argument: an OUT endpoint; Errc::unavailable: unplugged.
  common::Result<void> feed(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> bytes);

  // The catalogue entry on `port` (present says whether it is plugged now); nullptr when unknown.
  // Valid until the next plug_device().
  const SimDevice* find(const std::string& port) const;
  // Every catalogue entry, in catalogue order.
  std::vector<const SimDevice*> catalogue() const;
  bool started() const { return started_; }

 private:
  struct Slot;

  Slot* slot(const std::string& port);
  const Slot* slot(const std::string& port) const;
  // The plugged device on `port`, or the error an operation on it reports.
  common::Result<Slot*> plugged(const std::string& port);
  // A plugged device that has interface `interface`; Errc::not_found names what is missing.
  common::Result<Slot*> with_interface(const std::string& port, std::uint8_t interface);
  // The endpoint descriptor `endpoint` of a plugged device whose interface is claimed, for a
  // transfer of `length` bytes, or the error the transfer reports.
  common::Result<UsbEndpoint> transfer_endpoint(const std::string& port, std::uint8_t endpoint, bool want_in,
                                                std::size_t length) const;
  // The answer of the simulated device to a control request; nullopt = STALL.
  std::optional<std::vector<std::uint8_t>> answer_control(const Slot& s, const UsbControlSetup& setup) const;
  // Configures a device that arrives unconfigured (configuration 0), as a real backend does.
  void configure(Slot& s);
  template <typename T>
  void post_result(std::function<void(common::Result<T>)> done, common::Result<T> result);
  void plug_slot(Slot& s);
  void fail_reads(Slot& s, common::Errc why);
  void on_read_timeout(const std::string& port, std::uint8_t endpoint, std::uint64_t read_id);
  void post_attached(const UsbDeviceInfo& info);
  void post_detached(const std::string& port);

  asio::any_io_executor executor_;
  std::vector<std::unique_ptr<Slot>> slots_;  // catalogue order
  UsbEvents events_;
  bool started_ = false;
  std::uint64_t generation_ = 0;  // bumped by stop(): events posted before it are dropped
  std::uint64_t next_read_id_ = 1;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // posted handlers hold a weak_ptr
};

}  // namespace dtu::agent
