#include "dtu/agent/libusb_backend.hpp"

#include <doctest/doctest.h>
#include <errno.h>
#include <linux/usbdevice_fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <umockdev.h>
#include <unistd.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/log.hpp"

// These tests emulate USB devices with umockdev: the test process owns the testbed (sysfs, the
// /dev/bus/usb nodes, uevents) and answers the devices' usbdevfs ioctls itself; libusb, inside
// LibusbBackend, sees them through libumockdev-preload. Hotplug needs the testbed owner to run
// under the preload too, so the binary re-execs itself with it before main() (support/fake_usb.hpp).

#include "support/fake_usb.hpp"
#include "support/log_capture.hpp"

namespace {

using dtu::agent::LibusbBackend;
using dtu::agent::UsbControlSetup;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbEndpoint;
using dtu::agent::UsbEvents;
using dtu::agent::UsbInterface;
using dtu::agent::UsbInterfaceAssociation;
using dtu::agent::UsbWatch;
using dtu::common::Errc;
using dtu::common::Result;

// Bounds every wait for a callback; events arrive in milliseconds, so this only ends a broken test.
constexpr auto kWaitLimit = std::chrono::seconds(5);
// The transfer timeout where the test expects data: long enough never to fire on a healthy run.
constexpr auto kTransferLimit = std::chrono::seconds(5);
// One turn of a poll for a condition no callback announces (the emulated device's state).
constexpr auto kPollStep = std::chrono::milliseconds(5);

// Collects log lines (they come from the backend's event thread).
using dtu::testing::LogCapture;

struct Fixture {
  explicit Fixture(UsbWatch watch = UsbWatch::hotplug_if_supported) : backend(io.get_executor(), watch) {}

  FakeUsb usb;  // outlives the backend
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  LibusbBackend backend;
  std::vector<UsbDeviceInfo> attached;
  std::vector<std::string> detached;

  UsbEvents events() {
    return UsbEvents{[this](UsbDeviceInfo info) { attached.push_back(std::move(info)); },
                     [this](std::string port) { detached.push_back(std::move(port)); }};
  }

  // Runs the io_context until done() holds or kWaitLimit passes.
  template <typename Done>
  bool run_until(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!done()) {
      if (io.run_one_until(deadline) == 0) return done();
    }
    return true;
  }

  const UsbDeviceInfo* find(const std::string& port) const {
    for (const auto& info : attached) {
      if (info.port == port) return &info;
    }
    return nullptr;
  }

  // Runs the io_context in short turns until `done()` holds or kWaitLimit passes: for conditions
  // that no handler signals (the emulated device's state).
  template <typename Done>
  bool eventually(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      io.run_for(kPollStep);
    }
    return true;
  }

  // Starts the backend and waits for `count` devices.
  void start(std::size_t count) {
    REQUIRE(backend.start(events()).ok());
    REQUIRE(run_until([&] { return attached.size() >= count; }));
  }

  template <typename T, typename Call>
  Result<T> wait_for(Call call) {
    std::optional<Result<T>> out;
    call([&](Result<T> r) { out.emplace(std::move(r)); });
    REQUIRE(run_until([&] { return out.has_value(); }));
    return std::move(*out);
  }
  Result<void> claim(const std::string& port, std::uint8_t interface) {
    return wait_for<void>([&](auto done) { backend.claim(port, interface, done); });
  }
  Result<void> release(const std::string& port, std::uint8_t interface) {
    return wait_for<void>([&](auto done) { backend.release(port, interface, done); });
  }
  Result<std::size_t> write(const std::string& port, std::uint8_t endpoint, Bytes data) {
    return wait_for<std::size_t>(
        [&](auto done) { backend.transfer_out(port, endpoint, data, kTransferLimit, done); });
  }
  Result<Bytes> read(const std::string& port, std::uint8_t endpoint, std::size_t max,
                     dtu::common::Duration timeout = kTransferLimit) {
    return wait_for<Bytes>([&](auto done) { backend.transfer_in(port, endpoint, max, timeout, done); });
  }
  Result<Bytes> control(const std::string& port, UsbControlSetup setup, Bytes data = {}) {
    return wait_for<Bytes>([&](auto done) { backend.control(port, setup, data, kTransferLimit, done); });
  }
};

template <typename T>
bool failed_with(const Result<T>& r, Errc code) {
  return !r.ok() && r.error().code == make_error_code(code);
}

Bytes bytes_of(std::string_view text) {
  return Bytes(text.begin(), text.end());
}

}  // namespace

TEST_CASE("LibusbBackend reports the devices present at start with ports, ids, strings and interfaces") {
  Fixture f;
  f.usb.plug(printer());
  f.usb.plug(multi_function());
  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() >= 2; }));
  CHECK(f.attached.size() == 2);

  const UsbDeviceInfo* p = f.find("1-1");
  REQUIRE(p != nullptr);
  CHECK(p->vid == 0x04b8);
  CHECK(p->pid == 0x0005);
  CHECK(p->bcd_device == 0x0100);
  CHECK(p->bcd_usb == 0x0200);
  CHECK(p->configuration == 1);
  CHECK(p->manufacturer == "EPSON");
  CHECK(p->product == "Stylus Test Printer");
  CHECK(p->serial == "PRN0001");
  REQUIRE(p->interfaces.size() == 1);
  CHECK(p->interfaces[0] == UsbInterface{0, 0, 0x07, 0x01, 0x02, {{0x01, 0x02, 512}, {0x82, 0x02, 512}}});
  CHECK(p->associations.empty());

  const UsbDeviceInfo* m = f.find("1-2");
  REQUIRE(m != nullptr);
  CHECK(m->pid == 0x08a1);
  CHECK(m->product == "Test MFP Printer-Scanner-Storage");
  CHECK(m->serial == "MFP0042");
  REQUIRE(m->interfaces.size() == 3);
  CHECK(m->interfaces[1] == UsbInterface{1, 0, 0xff, 0xff, 0xff, {{0x03, 0x02, 512}, {0x84, 0x02, 512}}});
  CHECK(m->interfaces[2].cls == 0x08);

  const auto present = f.backend.devices();
  REQUIRE(present.size() == 2);
  CHECK(present[0].port == "1-1");
  CHECK(present[1].port == "1-2");
  CHECK(f.detached.empty());
}

TEST_CASE("LibusbBackend reports a hotplugged device as attached and its removal as detached by port") {
  Fixture f;
  f.usb.plug(printer());
  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() == 1; }));

  f.usb.plug(camera());
  REQUIRE(f.run_until([&] { return f.attached.size() == 2; }));
  const UsbDeviceInfo& cam = f.attached[1];
  CHECK(cam.port == "1-3");
  CHECK(cam.vid == 0x046d);
  CHECK(cam.product == "Test Camera");
  CHECK(cam.manufacturer == std::nullopt);  // index 0: the device has none
  REQUIRE(cam.interfaces.size() == 3);
  CHECK(cam.interfaces[2] == UsbInterface{1, 1, 0x0e, 0x02, 0x00, {{0x81, 0x02, 512}}});
  REQUIRE(cam.associations.size() == 1);
  CHECK(cam.associations[0] == UsbInterfaceAssociation{0, 2, 0x0e, 0x03, 0x00});
  CHECK(f.backend.devices().size() == 2);

  f.usb.unplug(camera());
  REQUIRE(f.run_until([&] { return !f.detached.empty(); }));
  CHECK(f.detached == std::vector<std::string>{"1-3"});
  REQUIRE(f.backend.devices().size() == 1);
  CHECK(f.backend.devices()[0].port == "1-1");
}

TEST_CASE("LibusbBackend without hotplug finds plugs and unplugs by rescanning the device list") {
  Fixture f(UsbWatch::rescan);
  f.usb.plug(printer());
  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() == 1; }));
  CHECK(f.attached[0].port == "1-1");
  CHECK(f.attached[0].product == "Stylus Test Printer");

  f.usb.plug(camera());  // seen by the next rescan, within kRescanInterval
  REQUIRE(f.run_until([&] { return f.attached.size() == 2; }));
  CHECK(f.attached[1].port == "1-3");
  CHECK(f.attached[1].associations.size() == 1);

  f.usb.unplug(printer());
  REQUIRE(f.run_until([&] { return !f.detached.empty(); }));
  CHECK(f.detached == std::vector<std::string>{"1-1"});
  REQUIRE(f.backend.devices().size() == 1);
  CHECK(f.backend.devices()[0].port == "1-3");
}

TEST_CASE(
    "LibusbBackend reports a device whose strings cannot be read with absent strings and one log line") {
  LogCapture log;
  Fixture f;
  f.usb.plug(mute_device());
  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() == 1; }));
  const UsbDeviceInfo& d = f.attached[0];
  CHECK(d.port == "1-4");
  CHECK(d.vid == 0x1234);
  CHECK(d.manufacturer == std::nullopt);
  CHECK(d.product == std::nullopt);
  CHECK(d.serial == std::nullopt);
  CHECK(d.interfaces.size() == 1);
  CHECK(log.count({"usb_strings_unreadable", "1-4"}) == 1);
}

TEST_CASE("LibusbBackend delivers no callback after stop() returns and can start again") {
  Fixture f;
  f.usb.plug(printer());
  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() == 1; }));
  CHECK(f.backend.start(f.events()).error().code == make_error_code(Errc::illegal_state));

  f.usb.plug(multi_function());  // its event may or may not be posted before stop()
  f.backend.stop();
  f.backend.stop();  // idempotent
  f.usb.unplug(printer());
  f.io.poll();
  CHECK(f.attached.size() == 1);
  CHECK(f.detached.empty());
  CHECK(f.backend.devices().empty());

  REQUIRE(f.backend.start(f.events()).ok());
  REQUIRE(f.run_until([&] { return f.attached.size() == 2; }));
  CHECK(f.attached[1].port == "1-2");
  CHECK(f.backend.devices().size() == 1);
  f.backend.stop();
}

TEST_CASE("LibusbBackend claims the printer interface and the printer receives bulk OUT bytes exactly") {
  Fixture f;
  FakeDeviceHandler* device = f.usb.plug(printer());
  f.start(1);
  REQUIRE(f.claim("1-1", 0));
  CHECK(device->claimed() == std::set<std::uint8_t>{0});

  const Bytes job = bytes_of("\x1b@Hello printer\x0c");
  auto written = f.write("1-1", 0x01, job);
  REQUIRE(written);
  CHECK(*written == job.size());
  CHECK(device->out_data(0x01) == job);

  Bytes big(4 * 1024 * 1024 + 17);  // a multi-megabyte job, not a multiple of the packet size
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 7 + i / 4096);
  auto large = f.write("1-1", 0x01, big);
  REQUIRE(large);
  CHECK(*large == big.size());
  Bytes expected = job;
  expected.insert(expected.end(), big.begin(), big.end());
  CHECK(device->out_data(0x01) == expected);

  REQUIRE(f.release("1-1", 0));
  CHECK(device->claimed().empty());
}

TEST_CASE("LibusbBackend reads bulk IN from the scanner interface of the multi-function device") {
  Fixture f;
  FakeDeviceHandler* device = f.usb.plug(multi_function());
  device->queue_in(0x84, bytes_of("SCAN\x01\x02\x03"));
  f.start(1);
  REQUIRE(f.claim("1-2", 1));
  CHECK(device->claimed() == std::set<std::uint8_t>{1});
  auto scan = f.read("1-2", 0x84, 512);
  REQUIRE(scan);
  CHECK(*scan == bytes_of("SCAN\x01\x02\x03"));
  // Nothing more to read: the deadline passes.
  CHECK(failed_with(f.read("1-2", 0x84, 512, std::chrono::milliseconds(20)), Errc::timeout));
}

TEST_CASE("A LibusbBackend IN read waits for data while other transfers go on") {
  Fixture f;
  FakeDeviceHandler* device = f.usb.plug(multi_function());
  f.start(1);
  REQUIRE(f.claim("1-2", 0));
  REQUIRE(f.claim("1-2", 1));
  std::optional<Result<Bytes>> scan;
  f.backend.transfer_in("1-2", 0x84, 512, kTransferLimit,
                        [&](Result<Bytes> r) { scan.emplace(std::move(r)); });
  REQUIRE(f.eventually([&] { return device->pending_in() == 1; }));

  auto written = f.write("1-2", 0x01, bytes_of("page"));  // not held up by the waiting read
  REQUIRE(written);
  CHECK(device->out_data(0x01) == bytes_of("page"));
  CHECK_FALSE(scan.has_value());

  device->queue_in(0x84, bytes_of("late scan"));
  REQUIRE(f.run_until([&] { return scan.has_value(); }));
  REQUIRE(*scan);
  CHECK(**scan == bytes_of("late scan"));
}

TEST_CASE("Unplugging during a pending LibusbBackend IN read fails it with unavailable") {
  Fixture f;
  FakeDeviceHandler* device = f.usb.plug(multi_function());
  f.start(1);
  REQUIRE(f.claim("1-2", 1));
  std::optional<Result<Bytes>> scan;
  f.backend.transfer_in("1-2", 0x84, 512, kTransferLimit,
                        [&](Result<Bytes> r) { scan.emplace(std::move(r)); });
  REQUIRE(f.eventually([&] { return device->pending_in() == 1; }));

  f.usb.unplug(multi_function());
  REQUIRE(f.run_until([&] { return scan.has_value() && !f.detached.empty(); }));
  CHECK(failed_with(*scan, Errc::unavailable));
  CHECK(f.detached == std::vector<std::string>{"1-2"});
  CHECK(failed_with(f.read("1-2", 0x84, 512), Errc::not_found));  // the port is empty now
}

TEST_CASE(
    "A LibusbBackend transfer on an unclaimed interface fails with illegal_state naming the interface") {
  Fixture f;
  FakeDeviceHandler* device = f.usb.plug(multi_function());
  device->queue_in(0x84, bytes_of("SCAN"));
  f.start(1);
  REQUIRE(f.claim("1-2", 0));
  auto read = f.read("1-2", 0x84, 512);
  REQUIRE(failed_with(read, Errc::illegal_state));
  CHECK(read.error().detail.find("interface 1") != std::string::npos);
  CHECK(failed_with(f.write("1-2", 0x03, bytes_of("x")), Errc::illegal_state));
  REQUIRE(f.release("1-2", 0));
  CHECK(failed_with(f.write("1-2", 0x01, bytes_of("x")), Errc::illegal_state));
  CHECK(device->out_data(0x01).empty());
  CHECK(device->out_data(0x03).empty());
}

TEST_CASE(
    "LibusbBackend rejects unknown ports, interfaces and endpoints, wrong directions and empty transfers") {
  Fixture f;
  f.usb.plug(printer());
  f.start(1);
  REQUIRE(f.claim("1-1", 0));
  CHECK(failed_with(f.claim("9-9", 0), Errc::not_found));
  CHECK(failed_with(f.claim("1-1", 4), Errc::not_found));
  CHECK(failed_with(f.write("9-9", 0x01, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.write("1-1", 0x07, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.read("1-1", 0x8e, 64), Errc::not_found));
  CHECK(failed_with(f.write("1-1", 0x82, bytes_of("x")), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-1", 0x01, 64), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-1", 0x82, 0), Errc::invalid_argument));
  CHECK(failed_with(f.write("1-1", 0x01, Bytes{}), Errc::invalid_argument));
}

TEST_CASE("LibusbBackend detaches a bound kernel driver on claim and re-attaches it on release") {
  LogCapture log;
  Fixture f;
  FakeSpec spec = printer();
  spec.bound_drivers[0] = "usblp";
  FakeDeviceHandler* device = f.usb.plug(spec);
  f.start(1);
  CHECK(device->bound_driver(0) == "usblp");
  REQUIRE(f.claim("1-1", 0));
  CHECK(device->bound_driver(0).empty());
  CHECK(device->claimed() == std::set<std::uint8_t>{0});
  CHECK(log.count({"usb_driver_detached", "1-1"}) == 1);
  REQUIRE(f.write("1-1", 0x01, bytes_of("x")));

  REQUIRE(f.release("1-1", 0));
  CHECK(device->claimed().empty());
  CHECK(device->bound_driver(0) == "usblp");
  CHECK(log.count({"usb_driver_reattached", "1-1"}) == 1);
}

TEST_CASE("LibusbBackend answers the printer-class GET_DEVICE_ID control request, and a STALL is refused") {
  Fixture f;
  FakeSpec spec = printer();
  const std::string id = "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;";
  spec.device_ids[0] = id;
  f.usb.plug(spec);
  f.start(1);
  auto answer = f.control("1-1", UsbControlSetup{0xA1, 0, 0, 0x0000, 1024});  // no claim needed
  REQUIRE(answer);
  REQUIRE(answer->size() == id.size() + 2);
  CHECK((*answer)[0] * 256 + (*answer)[1] == static_cast<int>(id.size() + 2));
  CHECK(std::string(answer->begin() + 2, answer->end()) == id);
  auto status = f.control("1-1", UsbControlSetup{0x80, 0, 0, 0, 2});
  REQUIRE(status);
  CHECK(*status == Bytes{0, 0});
  CHECK(failed_with(f.control("1-1", UsbControlSetup{0xC0, 0x55, 0, 0, 4}), Errc::refused));
  CHECK(
      failed_with(f.control("1-1", UsbControlSetup{0x40, 0x55, 0, 0, 2}, Bytes{1}), Errc::invalid_argument));
}

TEST_CASE("LibusbBackend configures a device that arrives unconfigured and reports it with its units") {
  LogCapture log;
  Fixture f;
  FakeSpec spec = multi_function();
  spec.unconfigured = true;
  FakeDeviceHandler* device = f.usb.plug(spec);
  CHECK(device->configuration() == 0);
  f.start(1);
  const UsbDeviceInfo& d = f.attached[0];
  CHECK(d.port == "1-2");
  CHECK(d.configuration == 1);
  CHECK(d.interfaces.size() == 3);
  CHECK(d.product == "Test MFP Printer-Scanner-Storage");
  CHECK(device->configuration() == 1);
  CHECK(log.count({"usb_configured", "1-2"}) == 1);
  REQUIRE(f.claim("1-2", 0));
  CHECK(f.write("1-2", 0x01, bytes_of("x")));
}

TEST_CASE("LibusbBackend reports a device whose configuration descriptor libusb refuses, with a warning") {
  LogCapture log;
  Fixture f;
  FakeSpec spec = printer();
  spec.malformed_config = true;
  f.usb.plug(spec);
  f.start(1);
  const UsbDeviceInfo& d = f.attached[0];
  CHECK(d.port == "1-1");
  CHECK(d.vid == 0x04b8);
  CHECK(d.product == "Stylus Test Printer");
  CHECK(d.interfaces.empty());
  CHECK(log.count({"usb_config_unreadable", "1-1"}) == 1);
}

TEST_CASE("LibusbBackend stop() completes pending transfers with closed and gives claims back") {
  Fixture f;
  FakeSpec spec = multi_function();
  spec.bound_drivers[1] = "vendor-scanner";
  FakeDeviceHandler* device = f.usb.plug(spec);
  f.start(1);
  REQUIRE(f.claim("1-2", 1));
  std::optional<Result<Bytes>> scan;
  f.backend.transfer_in("1-2", 0x84, 512, kTransferLimit,
                        [&](Result<Bytes> r) { scan.emplace(std::move(r)); });
  REQUIRE(f.eventually([&] { return device->pending_in() == 1; }));
  f.backend.stop();
  REQUIRE(f.run_until([&] { return scan.has_value(); }));
  CHECK(failed_with(*scan, Errc::closed));
  CHECK(device->claimed().empty());
  CHECK(device->bound_driver(1) == "vendor-scanner");
  CHECK(failed_with(f.claim("1-2", 1), Errc::closed));
}
