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

namespace {

using dtu::agent::LibusbBackend;
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

// Collects log lines (they come from the backend's event thread).
class LogCapture {
 public:
  LogCapture() {
    dtu::common::set_log_sink([this](std::string_view line) {
      std::lock_guard lock(mutex_);
      lines_.emplace_back(line);
    });
  }
  ~LogCapture() { dtu::common::set_log_sink(nullptr); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::size_t count(std::string_view a, std::string_view b) {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& line : lines_) n += line.find(a) != std::string::npos && line.find(b) != std::string::npos;
    return n;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

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
};

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

TEST_CASE("LibusbBackend reports a device whose strings cannot be read with absent strings and one log line") {
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
  CHECK(log.count("usb_strings_unreadable", "1-4") == 1);
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

TEST_CASE("LibusbBackend refuses in-band transfers until the lease work lands") {
  Fixture f;
  f.usb.plug(printer());
  REQUIRE(f.backend.start(f.events()).ok());
  std::optional<Result<std::size_t>> written;
  std::optional<Result<Bytes>> read;
  f.backend.bulk_out("1-1", 0x01, Bytes{1, 2, 3}, std::chrono::seconds(1),
                     [&](Result<std::size_t> r) { written.emplace(std::move(r)); });
  f.backend.bulk_in("1-1", 0x82, 64, std::chrono::seconds(1), [&](Result<Bytes> r) { read.emplace(std::move(r)); });
  CHECK_FALSE(written.has_value());  // never from inside the call
  REQUIRE(f.run_until([&] { return written.has_value() && read.has_value(); }));
  REQUIRE_FALSE(written->ok());
  CHECK(written->error().code == make_error_code(Errc::unavailable));
  REQUIRE_FALSE(read->ok());
  CHECK(read->error().code == make_error_code(Errc::unavailable));
}
