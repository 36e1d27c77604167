#include "dtu/agent/usb_backend.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dtu/agent/libusb_backend.hpp"
#include "dtu/agent/sim_backend.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/result.hpp"

// The UsbBackend contract (usb_backend.hpp), checked once for every backend: the same cases run
// against SimBackend and against LibusbBackend on umockdev-emulated devices that match the
// simulated ones. Including fake_usb.hpp makes the binary re-exec itself under
// libumockdev-preload (the simulated cases do not care).
#include "support/fake_usb.hpp"

namespace {

using dtu::agent::LibusbBackend;
using dtu::agent::SimBackend;
using dtu::agent::SimDevice;
using dtu::agent::SimDeviceSet;
using dtu::agent::UsbBackend;
using dtu::agent::UsbControlSetup;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbEndpoint;
using dtu::agent::UsbEvents;
using dtu::agent::UsbInterface;
using dtu::common::Errc;
using dtu::common::Result;

// Bounds every wait; events and transfers complete in milliseconds, so this only ends a broken test.
constexpr auto kWaitLimit = std::chrono::seconds(5);
// The transfer timeout where data is expected: long enough never to fire on a healthy run.
constexpr auto kTransferLimit = std::chrono::seconds(5);
// One turn of a poll for a condition no callback announces (a read reaching the device).
constexpr auto kPollStep = std::chrono::milliseconds(5);

const std::string kPrinterId = "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;";

// The contract's two devices, as emulated USB devices; the simulated ones are derived from them.
FakeSpec contract_printer() {
  FakeSpec s = printer();
  s.device_ids[0] = kPrinterId;
  return s;
}

FakeSpec contract_multi_function() {
  return multi_function();
}

std::string port_of(const FakeSpec& spec) {
  return "1-" + std::to_string(spec.port);
}

// What both backends must report for `spec`.
UsbDeviceInfo expected_info(const FakeSpec& spec) {
  UsbDeviceInfo info;
  info.port = port_of(spec);
  info.vid = spec.vid;
  info.pid = spec.pid;
  info.bcd_device = 0x0100;
  info.bcd_usb = 0x0200;
  if (!spec.manufacturer.empty()) info.manufacturer = spec.manufacturer;
  if (!spec.product.empty()) info.product = spec.product;
  if (!spec.serial.empty()) info.serial = spec.serial;
  info.configuration = 1;
  for (const auto& itf : spec.interfaces) {
    UsbInterface out{itf.number, itf.alternate, itf.cls, itf.subclass, itf.protocol, {}};
    for (std::uint8_t address : itf.endpoints) {
      out.endpoints.push_back(UsbEndpoint{address, dtu::agent::kUsbTransferBulk, 512});
    }
    info.interfaces.push_back(out);
  }
  return info;
}

// ---- The two ways of running a backend on those devices.

// SimBackend: the catalogue entry equivalent to the emulated device, every OUT endpoint a sink.
struct SimHarness {
  asio::io_context io;
  SimBackend backend{io.get_executor(), SimDeviceSet{}};

  void plug(const FakeSpec& spec) {
    SimDevice device;
    device.info = expected_info(spec);
    device.info.configuration = spec.unconfigured ? 0 : 1;
    for (const auto& itf : spec.interfaces) {
      for (std::uint8_t address : itf.endpoints) {
        if (!dtu::agent::is_in_endpoint(address)) device.sinks.insert(address);
      }
    }
    device.device_ids = spec.device_ids;
    REQUIRE(backend.plug_device(std::move(device)));
  }
  void unplug(const FakeSpec& spec) { REQUIRE(backend.unplug(port_of(spec))); }
  Bytes received(const FakeSpec& spec, std::uint8_t endpoint) {
    return backend.captured(port_of(spec), endpoint);
  }
  void send(const FakeSpec& spec, std::uint8_t endpoint, Bytes bytes) {
    REQUIRE(backend.feed(port_of(spec), endpoint, std::move(bytes)));
  }
  // A read waits inside the backend as soon as the call returns.
  bool read_waits(const FakeSpec&) { return true; }
};

// LibusbBackend on umockdev: the testbed outlives the backend.
struct LibusbHarness {
  FakeUsb usb;
  asio::io_context io;
  LibusbBackend backend{io.get_executor()};

  void plug(const FakeSpec& spec) { usb.plug(spec); }
  void unplug(const FakeSpec& spec) { usb.unplug(spec); }
  Bytes received(const FakeSpec& spec, std::uint8_t endpoint) { return usb.find(spec)->out_data(endpoint); }
  void send(const FakeSpec& spec, std::uint8_t endpoint, Bytes bytes) {
    usb.find(spec)->queue_in(endpoint, std::move(bytes));
  }
  // The read has reached the device and waits there for data.
  bool read_waits(const FakeSpec& spec) { return usb.find(spec)->pending_in() > 0; }
};

// The contract's vocabulary over a harness: start, wait, and each operation run to completion.
template <typename Harness>
struct Contract : Harness {
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(this->io);
  std::vector<UsbDeviceInfo> attached;
  std::vector<std::string> detached;

  ~Contract() { this->backend.stop(); }

  UsbBackend& usb_backend() { return this->backend; }

  void start(std::size_t count) {
    REQUIRE(usb_backend()
                .start(UsbEvents{[this](UsbDeviceInfo info) { attached.push_back(std::move(info)); },
                                 [this](std::string port) { detached.push_back(std::move(port)); }})
                .ok());
    REQUIRE(run_until([&] { return attached.size() >= count; }));
  }

  // Runs the io_context until done() holds or kWaitLimit passes.
  template <typename Done>
  bool run_until(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!done()) {
      if (this->io.run_one_until(deadline) == 0) return done();
    }
    return true;
  }

  // Runs the io_context in short turns until done() holds or kWaitLimit passes.
  template <typename Done>
  bool eventually(Done done) {
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      this->io.run_for(kPollStep);
    }
    return true;
  }

  template <typename T, typename Call>
  Result<T> wait_for(Call call) {
    std::optional<Result<T>> out;
    call([&](Result<T> r) { out.emplace(std::move(r)); });
    REQUIRE(run_until([&] { return out.has_value(); }));
    return std::move(*out);
  }
  Result<void> claim(const std::string& port, std::uint8_t interface) {
    return wait_for<void>([&](auto done) { usb_backend().claim(port, interface, done); });
  }
  Result<void> release(const std::string& port, std::uint8_t interface) {
    return wait_for<void>([&](auto done) { usb_backend().release(port, interface, done); });
  }
  Result<std::size_t> write(const std::string& port, std::uint8_t endpoint, Bytes data) {
    return wait_for<std::size_t>(
        [&](auto done) { usb_backend().transfer_out(port, endpoint, data, kTransferLimit, done); });
  }
  Result<Bytes> read(const std::string& port, std::uint8_t endpoint, std::size_t max) {
    return wait_for<Bytes>(
        [&](auto done) { usb_backend().transfer_in(port, endpoint, max, kTransferLimit, done); });
  }
  Result<Bytes> control(const std::string& port, UsbControlSetup setup) {
    return wait_for<Bytes>([&](auto done) { usb_backend().control(port, setup, {}, kTransferLimit, done); });
  }

  const UsbDeviceInfo* find(const std::string& port) const {
    for (const auto& info : attached) {
      if (info.port == port) return &info;
    }
    return nullptr;
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

// Test names end in the backend's name: "…<SimBackend>", "…<LibusbBackend>".
TYPE_TO_STRING_AS("SimBackend", Contract<SimHarness>);
TYPE_TO_STRING_AS("LibusbBackend", Contract<LibusbHarness>);
#define BACKENDS Contract<SimHarness>, Contract<LibusbHarness>

TEST_CASE_TEMPLATE("A backend reports the devices present at start with the same facts", F, BACKENDS) {
  F f;
  f.plug(contract_printer());
  f.plug(contract_multi_function());
  f.start(2);
  CHECK(f.attached.size() == 2);
  REQUIRE(f.find("1-1") != nullptr);
  REQUIRE(f.find("1-2") != nullptr);
  CHECK(*f.find("1-1") == expected_info(contract_printer()));
  CHECK(*f.find("1-2") == expected_info(contract_multi_function()));
  auto present = f.backend.devices();
  std::sort(present.begin(), present.end(), [](const auto& a, const auto& b) { return a.port < b.port; });
  REQUIRE(present.size() == 2);
  CHECK(present[0] == expected_info(contract_printer()));
  CHECK(present[1] == expected_info(contract_multi_function()));
}

TEST_CASE_TEMPLATE("A backend reports plugs and unplugs by port", F, BACKENDS) {
  F f;
  f.plug(contract_printer());
  f.start(1);
  f.plug(contract_multi_function());
  REQUIRE(f.run_until([&] { return f.attached.size() == 2; }));
  CHECK(f.attached[1] == expected_info(contract_multi_function()));
  f.unplug(contract_multi_function());
  REQUIRE(f.run_until([&] { return !f.detached.empty(); }));
  CHECK(f.detached == std::vector<std::string>{"1-2"});
  REQUIRE(f.backend.devices().size() == 1);
  CHECK(f.backend.devices()[0].port == "1-1");
}

TEST_CASE_TEMPLATE("A backend moves data only on claimed interfaces", F, BACKENDS) {
  F f;
  f.plug(contract_printer());
  f.start(1);
  CHECK(failed_with(f.write("1-1", 0x01, bytes_of("x")), Errc::illegal_state));
  REQUIRE(f.claim("1-1", 0));
  REQUIRE(f.claim("1-1", 0));  // claiming a claimed interface succeeds
  auto written = f.write("1-1", 0x01, bytes_of("\x1b@job\x0c"));
  REQUIRE(written);
  CHECK(*written == 6);
  REQUIRE(f.release("1-1", 0));
  REQUIRE(f.release("1-1", 0));  // and so does releasing a released one
  CHECK(failed_with(f.write("1-1", 0x01, bytes_of("y")), Errc::illegal_state));
  CHECK(f.received(contract_printer(), 0x01) == bytes_of("\x1b@job\x0c"));
}

TEST_CASE_TEMPLATE("A backend delivers OUT bytes to the device and IN bytes from it", F, BACKENDS) {
  F f;
  const FakeSpec mfd = contract_multi_function();
  f.plug(mfd);
  f.start(1);
  REQUIRE(f.claim("1-2", 0));
  REQUIRE(f.claim("1-2", 1));
  Bytes page(100'000);
  for (std::size_t i = 0; i < page.size(); ++i) page[i] = static_cast<std::uint8_t>(i % 251);
  auto written = f.write("1-2", 0x01, page);
  REQUIRE(written);
  CHECK(*written == page.size());
  CHECK(f.received(mfd, 0x01) == page);

  f.send(mfd, 0x84, bytes_of("SCAN\x01\x02\x03"));
  auto scan = f.read("1-2", 0x84, 512);
  REQUIRE(scan);
  CHECK(*scan == bytes_of("SCAN\x01\x02\x03"));
}

TEST_CASE_TEMPLATE("A backend rejects unknown targets, wrong directions and empty transfers", F, BACKENDS) {
  F f;
  f.plug(contract_printer());
  f.start(1);
  REQUIRE(f.claim("1-1", 0));
  CHECK(failed_with(f.claim("9-9", 0), Errc::not_found));
  CHECK(failed_with(f.claim("1-1", 5), Errc::not_found));
  CHECK(failed_with(f.write("9-9", 0x01, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.write("1-1", 0x03, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.read("1-1", 0x8f, 64), Errc::not_found));
  CHECK(failed_with(f.control("9-9", UsbControlSetup{0x80, 0, 0, 0, 2}), Errc::not_found));
  CHECK(failed_with(f.write("1-1", 0x82, bytes_of("x")), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-1", 0x01, 64), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-1", 0x82, 0), Errc::invalid_argument));
  CHECK(failed_with(f.write("1-1", 0x01, Bytes{}), Errc::invalid_argument));
}

TEST_CASE_TEMPLATE("A backend fails a read pending at unplug with unavailable", F, BACKENDS) {
  F f;
  const FakeSpec mfd = contract_multi_function();
  f.plug(mfd);
  f.start(1);
  REQUIRE(f.claim("1-2", 1));
  std::optional<Result<Bytes>> scan;
  f.backend.transfer_in("1-2", 0x84, 512, kTransferLimit,
                        [&](Result<Bytes> r) { scan.emplace(std::move(r)); });
  REQUIRE(f.eventually([&] { return f.read_waits(mfd); }));
  CHECK_FALSE(scan.has_value());
  f.unplug(mfd);
  REQUIRE(f.run_until([&] { return scan.has_value() && !f.detached.empty(); }));
  CHECK(failed_with(*scan, Errc::unavailable));
}

TEST_CASE_TEMPLATE("A backend stopped completes pending transfers with closed", F, BACKENDS) {
  F f;
  const FakeSpec mfd = contract_multi_function();
  f.plug(mfd);
  f.start(1);
  REQUIRE(f.claim("1-2", 1));
  std::optional<Result<Bytes>> scan;
  f.backend.transfer_in("1-2", 0x84, 512, kTransferLimit,
                        [&](Result<Bytes> r) { scan.emplace(std::move(r)); });
  REQUIRE(f.eventually([&] { return f.read_waits(mfd); }));
  f.backend.stop();
  REQUIRE(f.run_until([&] { return scan.has_value(); }));
  CHECK(failed_with(*scan, Errc::closed));
  CHECK(failed_with(f.write("1-2", 0x01, bytes_of("x")), Errc::closed));
  CHECK(f.detached.empty());
}

TEST_CASE_TEMPLATE("A backend answers the printer-class GET_DEVICE_ID request", F, BACKENDS) {
  F f;
  f.plug(contract_printer());
  f.plug(contract_multi_function());
  f.start(2);
  auto answer = f.control("1-1", UsbControlSetup{0xA1, 0, 0, 0x0000, 1024});
  REQUIRE(answer);
  REQUIRE(answer->size() == kPrinterId.size() + 2);
  CHECK((*answer)[0] * 256 + (*answer)[1] == static_cast<int>(kPrinterId.size() + 2));
  CHECK(std::string(answer->begin() + 2, answer->end()) == kPrinterId);
  CHECK(failed_with(f.control("1-2", UsbControlSetup{0xA1, 0, 0, 0x0000, 1024}), Errc::refused));  // no id
}

TEST_CASE_TEMPLATE("A backend configures a device that arrives unconfigured", F, BACKENDS) {
  F f;
  FakeSpec mfd = contract_multi_function();
  mfd.unconfigured = true;
  f.plug(mfd);
  f.start(1);
  CHECK(f.attached[0] == expected_info(contract_multi_function()));  // configuration 1, its units
  REQUIRE(f.claim("1-2", 0));
  CHECK(f.write("1-2", 0x01, bytes_of("x")));
}
