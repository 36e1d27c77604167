#include "dtu/agent/sim_backend.hpp"

#include <doctest/doctest.h>
#include <stdlib.h>

#include <asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#ifndef DTU_SOURCE_DIR
#error "DTU_SOURCE_DIR must name the source tree (the build sets it) so the test finds demo/sim-devices.json"
#endif

namespace {

using dtu::agent::SimBackend;
using dtu::agent::SimDevice;
using dtu::agent::SimDeviceSet;
using dtu::agent::UsbControlSetup;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbEvents;
using dtu::common::Errc;
using dtu::common::Result;
using nlohmann::json;
using Bytes = std::vector<std::uint8_t>;

// A bound on how long the io_context is driven while waiting for callbacks; they arrive in
// microseconds, so this only ends a broken test.
constexpr auto kWaitLimit = std::chrono::seconds(5);
constexpr auto kNoTimeout = std::chrono::seconds(60);

const std::string kDemoFile = std::string(DTU_SOURCE_DIR) + "/demo/sim-devices.json";

// Runs handlers until done() or until nothing more can happen.
template <typename Done>
bool run_until(asio::io_context& io, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  if (io.stopped()) io.restart();
  while (!done()) {
    if (io.run_one_until(deadline) == 0) return done();
  }
  return true;
}

// Runs every handler that is ready now.
void drain(asio::io_context& io) {
  io.restart();
  io.poll();
}

struct Recorder {
  std::vector<UsbDeviceInfo> attached;
  std::vector<std::string> detached;

  UsbEvents events() {
    return UsbEvents{[this](UsbDeviceInfo info) { attached.push_back(std::move(info)); },
                     [this](std::string port) { detached.push_back(std::move(port)); }};
  }
};

Bytes bytes_of(const std::string& s) {
  return Bytes(s.begin(), s.end());
}

SimDeviceSet demo_devices() {
  auto set = dtu::agent::load_sim_devices(kDemoFile);
  if (!set) FAIL("cannot load the demo devices: " << set.error().describe());
  return std::move(set).value();
}

// Starts a backend on the demo devices and waits for the initial attached events.
struct Fixture {
  asio::io_context io;
  SimBackend backend{io.get_executor(), demo_devices()};
  Recorder rec;

  Fixture() {
    REQUIRE(backend.start(rec.events()));
    REQUIRE(run_until(io, [&] { return rec.attached.size() == 2; }));
    claim_all("1-1");
    claim_all("1-2");
  }

  Result<void> claim(const std::string& port, std::uint8_t interface) {
    std::optional<Result<void>> out;
    backend.claim(port, interface, [&](Result<void> r) { out = std::move(r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return std::move(*out);
  }

  Result<void> release(const std::string& port, std::uint8_t interface) {
    std::optional<Result<void>> out;
    backend.release(port, interface, [&](Result<void> r) { out = std::move(r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return std::move(*out);
  }

  // Claims every interface of the device on `port`, as a lease holder would.
  void claim_all(const std::string& port) {
    for (const auto& interface : backend.find(port)->info.interfaces) REQUIRE(claim(port, interface.number));
  }

  Result<Bytes> control(const std::string& port, UsbControlSetup setup, Bytes data = {}) {
    std::optional<Result<Bytes>> out;
    backend.control(port, setup, std::move(data), kNoTimeout, [&](Result<Bytes> r) { out = std::move(r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return std::move(*out);
  }

  Result<std::size_t> write(const std::string& port, std::uint8_t ep, Bytes data) {
    std::optional<Result<std::size_t>> out;
    backend.transfer_out(port, ep, std::move(data), kNoTimeout,
                         [&](Result<std::size_t> r) { out = std::move(r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return std::move(*out);
  }

  Result<Bytes> read(const std::string& port, std::uint8_t ep, std::size_t max,
                     dtu::common::Duration timeout) {
    std::optional<Result<Bytes>> out;
    backend.transfer_in(port, ep, max, timeout, [&](Result<Bytes> r) { out = std::move(r); });
    REQUIRE(run_until(io, [&] { return out.has_value(); }));
    return std::move(*out);
  }
};

bool failed_with(const Result<void>& r, Errc code) {
  return !r && r.error().code == code;
}
template <typename T>
bool failed_with(const Result<T>& r, Errc code) {
  return !r && r.error().code == code;
}

std::string parse_error(const json& doc) {
  auto r = dtu::agent::sim_devices_from_json(doc, "devices.json");
  if (r) return "(parsed without error)";
  CHECK(r.error().code == Errc::config_error);
  return r.error().detail;
}

// Checks that the error text contains every one of `parts`, showing the text when it does not.
void check_mentions(const std::string& error, std::initializer_list<const char*> parts) {
  INFO("error: " << error);
  for (const char* part : parts) CHECK(error.find(part) != std::string::npos);
}

json minimal_device() {
  return json::parse(R"({"port": "1-1", "vid": "04b8", "pid": "0005",
    "interfaces": [{"number": 0, "class": "07", "endpoints": [{"address": "0x01", "sink": {}}]}]})");
}

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "sim_backend_test.XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("The demo device file describes a printer, an MFP and an unplugged card reader") {
  SimDeviceSet set = demo_devices();
  REQUIRE(set.devices.size() == 3);

  const SimDevice& printer = set.devices[0];
  CHECK(printer.info.port == "1-1");
  CHECK(printer.present);
  CHECK(printer.info.vid == 0x04b8);
  CHECK(printer.info.pid == 0x0005);
  CHECK(printer.info.manufacturer == "EPSON");
  CHECK(printer.info.product == "Stylus Test Printer");
  CHECK(printer.info.serial == "PRN0001");
  CHECK(printer.info.configuration == 1);
  REQUIRE(printer.info.interfaces.size() == 1);
  CHECK(printer.info.interfaces[0].cls == 0x07);
  CHECK(printer.info.interfaces[0].subclass == 0x01);
  CHECK(printer.info.interfaces[0].protocol == 0x02);
  REQUIRE(printer.info.interfaces[0].endpoints.size() == 2);
  CHECK(printer.info.interfaces[0].endpoints[0].address == 0x01);
  CHECK(printer.info.interfaces[0].endpoints[0].attributes == dtu::agent::kUsbTransferBulk);
  CHECK(printer.info.interfaces[0].endpoints[1].address == 0x82);
  CHECK(printer.sinks == std::set<std::uint8_t>{0x01});

  const SimDevice& mfp = set.devices[1];
  CHECK(mfp.info.port == "1-2");
  CHECK(mfp.info.pid == 0x08a1);
  CHECK(mfp.info.serial == "MFP0042");
  REQUIRE(mfp.info.interfaces.size() == 3);
  CHECK(mfp.info.interfaces[1].cls == 0xff);
  CHECK(mfp.info.interfaces[2].cls == 0x08);
  CHECK(mfp.info.interfaces[2].subclass == 0x06);
  CHECK(mfp.info.interfaces[2].protocol == 0x50);
  CHECK(mfp.sinks == std::set<std::uint8_t>{0x01, 0x03});
  REQUIRE(mfp.sources.count(0x84) == 1);
  CHECK(mfp.sources.at(0x84) == Bytes{'S', 'C', 'A', 'N', 1, 2, 3});

  const SimDevice& reader = set.devices[2];
  CHECK(reader.info.port == "1-3");
  CHECK_FALSE(reader.present);
  CHECK(reader.info.interfaces[0].cls == 0x0b);
  CHECK_FALSE(reader.info.serial.has_value());
  CHECK(reader.info.interfaces[0].endpoints[2].attributes == dtu::agent::kUsbTransferInterrupt);
}

TEST_CASE("SimBackend start reports the present devices as attached, in catalogue order") {
  asio::io_context io;
  SimBackend backend(io.get_executor(), demo_devices());
  Recorder rec;
  CHECK(backend.devices().empty());  // not started yet
  REQUIRE(backend.start(rec.events()));
  CHECK(rec.attached.empty());  // delivered through the executor, never inside start()
  drain(io);
  REQUIRE(rec.attached.size() == 2);
  CHECK(rec.attached[0].port == "1-1");
  CHECK(rec.attached[1].port == "1-2");
  CHECK(rec.attached[1].product == "Test MFP Printer-Scanner-Storage");
  CHECK(rec.detached.empty());
  auto present = backend.devices();
  REQUIRE(present.size() == 2);
  CHECK(present[0] == rec.attached[0]);
  CHECK(failed_with(backend.start(rec.events()), Errc::illegal_state));
}

TEST_CASE("SimBackend reports plug and unplug as attached and detached") {
  Fixture f;
  REQUIRE(f.backend.plug("1-3"));
  CHECK(f.backend.devices().size() == 3);  // at once; the event follows
  CHECK(f.rec.attached.size() == 2);
  REQUIRE(run_until(f.io, [&] { return f.rec.attached.size() == 3; }));
  CHECK(f.rec.attached[2].port == "1-3");
  CHECK(f.rec.attached[2].product == "Smart Card Reader USB");

  REQUIRE(f.backend.unplug("1-2"));
  REQUIRE(run_until(f.io, [&] { return f.rec.detached.size() == 1; }));
  CHECK(f.rec.detached[0] == "1-2");
  auto present = f.backend.devices();
  REQUIRE(present.size() == 2);
  CHECK(present[0].port == "1-1");
  CHECK(present[1].port == "1-3");

  CHECK(failed_with(f.backend.plug("1-1"), Errc::illegal_state));
  CHECK(failed_with(f.backend.unplug("1-2"), Errc::illegal_state));
  CHECK(failed_with(f.backend.plug("9-9"), Errc::not_found));
  CHECK(failed_with(f.backend.unplug("9-9"), Errc::not_found));
}

TEST_CASE("SimBackend plug_device adds a device that is not in the catalogue") {
  Fixture f;
  auto device = dtu::agent::sim_device_from_json(
      json::parse(R"({"port": "2-1.4", "vid": "046d", "pid": "c52b", "present": false,
                     "interfaces": [{"number": 0, "class": "03", "subclass": "01", "protocol": "02",
                                     "endpoints": [{"address": "0x81", "type": "interrupt", "max_packet_size": 8}]}]})"),
      "device");
  REQUIRE(device);
  REQUIRE(f.backend.plug_device(*device));
  REQUIRE(run_until(f.io, [&] { return f.rec.attached.size() == 3; }));
  CHECK(f.rec.attached[2].port == "2-1.4");
  CHECK(f.rec.attached[2].vid == 0x046d);
  REQUIRE(f.backend.find("2-1.4") != nullptr);
  CHECK(f.backend.find("2-1.4")->present);
  CHECK(failed_with(f.backend.plug_device(*device), Errc::illegal_state));
}

TEST_CASE("A sink endpoint records every byte written to it") {
  Fixture f;
  auto first = f.write("1-1", 0x01, bytes_of("\x1b@hello "));
  REQUIRE(first);
  CHECK(*first == 8);
  REQUIRE(f.write("1-1", 0x01, bytes_of("world\f")));
  CHECK(f.backend.captured("1-1", 0x01) == bytes_of("\x1b@hello world\f"));
  CHECK(f.backend.captured("1-2", 0x01).empty());  // another device's sink

  // An OUT endpoint without a sink accepts and forgets.
  auto storage = f.write("1-2", 0x05, bytes_of("ignored"));
  REQUIRE(storage);
  CHECK(*storage == 7);
  CHECK(f.backend.captured("1-2", 0x05).empty());
}

TEST_CASE("A transfer completes through the executor, never inside the call") {
  Fixture f;
  bool called = false;
  f.backend.transfer_out("1-1", 0x01, bytes_of("x"), kNoTimeout, [&](Result<std::size_t>) { called = true; });
  f.backend.transfer_in("9-9", 0x81, 64, kNoTimeout, [&](Result<Bytes>) { called = true; });
  CHECK_FALSE(called);
  drain(f.io);
  CHECK(called);
}

TEST_CASE("A source endpoint yields its bytes in reads of at most max_length, then times out") {
  Fixture f;
  auto a = f.read("1-2", 0x84, 3, kNoTimeout);
  REQUIRE(a);
  CHECK(*a == bytes_of("SCA"));
  auto b = f.read("1-2", 0x84, 100, kNoTimeout);
  REQUIRE(b);
  CHECK(*b == Bytes{'N', 1, 2, 3});
  auto empty = f.read("1-2", 0x84, 100, std::chrono::milliseconds(0));
  CHECK(failed_with(empty, Errc::timeout));
  // A real, short deadline: the read waits, then times out.
  auto waited = f.read("1-2", 0x84, 100, std::chrono::milliseconds(1));
  CHECK(failed_with(waited, Errc::timeout));
  // An IN endpoint without a source has nothing to say.
  CHECK(failed_with(f.read("1-1", 0x82, 64, std::chrono::milliseconds(0)), Errc::timeout));
}

TEST_CASE("feed completes a waiting read and queues the rest") {
  Fixture f;
  REQUIRE(f.read("1-2", 0x84, 100, kNoTimeout));  // empties the scan
  std::optional<Result<Bytes>> got;
  f.backend.transfer_in("1-2", 0x84, 4, kNoTimeout, [&](Result<Bytes> r) { got = std::move(r); });
  drain(f.io);
  CHECK_FALSE(got.has_value());  // waits for data
  REQUIRE(f.backend.feed("1-2", 0x84, Bytes{1, 2, 3, 4, 5, 6}));
  REQUIRE(run_until(f.io, [&] { return got.has_value(); }));
  REQUIRE(*got);
  CHECK(**got == Bytes{1, 2, 3, 4});
  auto rest = f.read("1-2", 0x84, 100, kNoTimeout);
  REQUIRE(rest);
  CHECK(*rest == Bytes{5, 6});

  // feed checks its target.
  CHECK(failed_with(f.backend.feed("9-9", 0x84, Bytes{1}), Errc::not_found));
  CHECK(failed_with(f.backend.feed("1-2", 0x8f, Bytes{1}), Errc::not_found));
  CHECK(failed_with(f.backend.feed("1-2", 0x01, Bytes{1}), Errc::invalid_argument));
  CHECK(failed_with(f.backend.feed("1-3", 0x83, Bytes{1}), Errc::unavailable));
}

TEST_CASE("Transfers to an unknown port or endpoint fail with not_found") {
  Fixture f;
  CHECK(failed_with(f.write("9-9", 0x01, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.write("1-1", 0x07, bytes_of("x")), Errc::not_found));
  CHECK(failed_with(f.read("9-9", 0x82, 64, kNoTimeout), Errc::not_found));
  CHECK(failed_with(f.read("1-2", 0x8e, 64, kNoTimeout), Errc::not_found));
}

TEST_CASE("Transfers in the wrong direction or of zero length are invalid") {
  Fixture f;
  CHECK(failed_with(f.write("1-1", 0x82, bytes_of("x")), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-1", 0x01, 64, kNoTimeout), Errc::invalid_argument));
  CHECK(failed_with(f.read("1-2", 0x84, 0, kNoTimeout), Errc::invalid_argument));
}

TEST_CASE("Unplugging fails waiting reads and later transfers with unavailable") {
  Fixture f;
  REQUIRE(f.read("1-2", 0x84, 100, kNoTimeout));  // empties the scan
  std::optional<Result<Bytes>> got;
  f.backend.transfer_in("1-2", 0x84, 64, kNoTimeout, [&](Result<Bytes> r) { got = std::move(r); });
  drain(f.io);
  REQUIRE_FALSE(got.has_value());
  REQUIRE(f.backend.unplug("1-2"));
  REQUIRE(run_until(f.io, [&] { return got.has_value() && f.rec.detached.size() == 1; }));
  CHECK(failed_with(*got, Errc::unavailable));
  CHECK(failed_with(f.write("1-2", 0x01, bytes_of("x")), Errc::unavailable));
  CHECK(failed_with(f.read("1-2", 0x84, 64, kNoTimeout), Errc::unavailable));
  CHECK(failed_with(f.write("1-3", 0x02, bytes_of("x")), Errc::unavailable));  // never plugged
}

TEST_CASE("Replugging a device resets its sources and its captured bytes") {
  Fixture f;
  REQUIRE(f.write("1-2", 0x01, bytes_of("job")));
  REQUIRE(f.read("1-2", 0x84, 100, kNoTimeout));
  REQUIRE(f.backend.unplug("1-2"));
  CHECK(f.backend.captured("1-2", 0x01) == bytes_of("job"));  // kept while unplugged
  REQUIRE(f.backend.plug("1-2"));
  CHECK(f.backend.captured("1-2", 0x01).empty());
  CHECK(
      failed_with(f.read("1-2", 0x84, 100, kNoTimeout), Errc::illegal_state));  // claims end with the unplug
  f.claim_all("1-2");
  auto scan = f.read("1-2", 0x84, 100, kNoTimeout);
  REQUIRE(scan);
  CHECK(*scan == Bytes{'S', 'C', 'A', 'N', 1, 2, 3});
}

TEST_CASE("After stop no event is delivered and waiting reads fail with closed") {
  Fixture f;
  REQUIRE(f.read("1-2", 0x84, 100, kNoTimeout));
  std::optional<Result<Bytes>> got;
  f.backend.transfer_in("1-2", 0x84, 64, kNoTimeout, [&](Result<Bytes> r) { got = std::move(r); });
  REQUIRE(f.backend.unplug("1-1"));  // its detached event is posted, not yet delivered
  f.backend.stop();
  REQUIRE(run_until(f.io, [&] { return got.has_value(); }));
  drain(f.io);
  CHECK(failed_with(*got, Errc::closed));
  CHECK(f.rec.detached.empty());
  CHECK(f.backend.devices().empty());
  CHECK(failed_with(f.write("1-2", 0x01, bytes_of("x")), Errc::closed));
  f.backend.stop();  // idempotent

  // Started again, it reports what is present now.
  Recorder again;
  REQUIRE(f.backend.start(again.events()));
  REQUIRE(run_until(f.io, [&] { return again.attached.size() == 1; }));
  CHECK(again.attached[0].port == "1-2");
}

TEST_CASE("Events posted before the backend is destroyed are dropped") {
  asio::io_context io;
  Recorder rec;
  {
    SimBackend backend(io.get_executor(), demo_devices());
    REQUIRE(backend.start(rec.events()));
  }
  drain(io);
  CHECK(rec.attached.empty());
}

TEST_CASE("load_sim_devices names the file when it cannot be read or is not JSON") {
  TempDir dir;
  const std::string missing = (dir.path / "missing.json").string();
  auto r = dtu::agent::load_sim_devices(missing);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::io_error);
  CHECK(r.error().detail.find(missing) != std::string::npos);

  const std::string broken = (dir.path / "broken.json").string();
  std::ofstream(broken) << R"({"devices": [ {"port": "1-1", )";
  auto b = dtu::agent::load_sim_devices(broken);
  REQUIRE_FALSE(b);
  CHECK(b.error().code == Errc::config_error);
  CHECK(b.error().detail.find(broken) != std::string::npos);
  CHECK(b.error().detail.find("not valid JSON") != std::string::npos);
}

TEST_CASE("Malformed device files give errors naming the file, the device and the field") {
  SUBCASE("a bad vid") {
    json doc = {{"devices", json::array({minimal_device(), minimal_device()})}};
    doc["devices"][1]["port"] = "1-2";
    doc["devices"][1]["vid"] = "zz";
    check_mentions(parse_error(doc), {"devices.json", "devices[1]", "port 1-2", "vid"});
  }
  SUBCASE("a missing pid") {
    json device = minimal_device();
    device.erase("pid");
    check_mentions(parse_error({{"devices", {device}}}), {"devices[0] (port 1-1).pid: missing"});
  }
  SUBCASE("a bad port path") {
    json device = minimal_device();
    device["port"] = "usb1";
    check_mentions(parse_error({{"devices", {device}}}), {"devices[0].port"});
  }
  SUBCASE("a duplicate port") {
    check_mentions(parse_error({{"devices", {minimal_device(), minimal_device()}}}),
                   {"devices[1].port", "appears twice"});
  }
  SUBCASE("a misspelt field") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"][0]["sinks"] = json::object();
    check_mentions(parse_error({{"devices", {device}}}), {"interfaces[0].endpoints[0].sinks: unknown field"});
  }
  SUBCASE("a sink on an IN endpoint") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"][0]["address"] = "0x81";
    check_mentions(parse_error({{"devices", {device}}}), {"interfaces[0].endpoints[0].sink"});
  }
  SUBCASE("a source with bad hex") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"].push_back({{"address", "0x82"}, {"source", {{"hex", "0g"}}}});
    check_mentions(parse_error({{"devices", {device}}}), {"interfaces[0].endpoints[1].source.hex"});
  }
  SUBCASE("a source with both text and hex") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"].push_back(
        {{"address", "0x82"}, {"source", {{"hex", "00"}, {"text", "a"}}}});
    check_mentions(parse_error({{"devices", {device}}}), {"endpoints[1].source"});
  }
  SUBCASE("an endpoint address used twice") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"].push_back({{"address", 1}});
    check_mentions(parse_error({{"devices", {device}}}), {"endpoints[1].address"});
  }
  SUBCASE("an endpoint number 0") {
    json device = minimal_device();
    device["interfaces"][0]["endpoints"][0]["address"] = "0x80";
    check_mentions(parse_error({{"devices", {device}}}), {"endpoints[0].address"});
  }
  SUBCASE("a string where a number belongs") {
    json device = minimal_device();
    device["interfaces"][0]["number"] = "0";
    check_mentions(parse_error({{"devices", {device}}}), {"interfaces[0].number"});
  }
  SUBCASE("a class above 0xff") {
    json device = minimal_device();
    device["class"] = "100";
    check_mentions(parse_error({{"devices", {device}}}), {"(port 1-1).class"});
  }
  SUBCASE("an association over a missing interface") {
    json device = minimal_device();
    device["associations"] = {{{"first_interface", 0}, {"count", 2}, {"class", "0e"}}};
    check_mentions(parse_error({{"devices", {device}}}), {"associations[0].count"});
  }
  SUBCASE("a present flag that is not a boolean") {
    json device = minimal_device();
    device["present"] = "yes";
    check_mentions(parse_error({{"devices", {device}}}), {"(port 1-1).present"});
  }
  SUBCASE("no devices array") {
    check_mentions(parse_error(json::array()), {"devices.json"});
  }
}

TEST_CASE("Device files accept hex numbers as strings with or without 0x, or as integers") {
  json device = minimal_device();
  device["vid"] = "0x04B8";
  device["pid"] = 5;
  device["bcd_device"] = "0100";
  device["manufacturer"] = nullptr;
  device["comment"] = "ignored";
  auto r = dtu::agent::sim_device_from_json(device, "device");
  REQUIRE_MESSAGE(r, (r ? "" : r.error().describe()));
  CHECK(r->info.vid == 0x04b8);
  CHECK(r->info.pid == 5);
  CHECK(r->info.bcd_device == 0x0100);
  CHECK(r->info.bcd_usb == 0x0200);
  CHECK(r->info.configuration == 1);
  CHECK_FALSE(r->info.manufacturer.has_value());
  CHECK(r->info.interfaces[0].endpoints[0].max_packet_size == 512);
}

TEST_CASE("hex_encode and hex_decode round-trip bytes") {
  Bytes all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::uint8_t>(i));
  auto back = dtu::agent::hex_decode(dtu::agent::hex_encode(all));
  REQUIRE(back);
  CHECK(*back == all);
  CHECK(dtu::agent::hex_encode(Bytes{0x0a, 0xff}) == "0aff");
  auto spaced = dtu::agent::hex_decode("0A ff\n10");
  REQUIRE(spaced);
  CHECK(*spaced == Bytes{0x0a, 0xff, 0x10});
  CHECK(failed_with(dtu::agent::hex_decode("abc"), Errc::invalid_argument));
  CHECK(failed_with(dtu::agent::hex_decode("zz"), Errc::invalid_argument));
}

TEST_CASE("SimBackend transfers need the interface claimed: release and unplug end the claim") {
  Fixture f;
  REQUIRE(f.release("1-2", 1));
  auto unclaimed = f.read("1-2", 0x84, 64, kNoTimeout);
  REQUIRE(failed_with(unclaimed, Errc::illegal_state));
  CHECK(unclaimed.error().detail.find("interface 1") != std::string::npos);
  CHECK(failed_with(f.write("1-2", 0x03, bytes_of("x")), Errc::illegal_state));
  CHECK(f.write("1-2", 0x01, bytes_of("x")));  // interface 0 is still claimed
  CHECK(f.release("1-2", 1));                  // releasing an unclaimed interface succeeds
  CHECK(f.claim("1-2", 1));
  CHECK(f.claim("1-2", 1));  // and so does claiming a claimed one
  CHECK(f.read("1-2", 0x84, 64, kNoTimeout));

  CHECK(failed_with(f.claim("1-2", 7), Errc::not_found));
  CHECK(failed_with(f.claim("9-9", 0), Errc::not_found));
  CHECK(failed_with(f.claim("1-3", 0), Errc::unavailable));  // in the catalogue, not plugged
}

TEST_CASE("SimBackend moves data on interrupt endpoints like on bulk ones") {
  Fixture f;
  REQUIRE(f.backend.plug("1-3"));
  REQUIRE(run_until(f.io, [&] { return f.rec.attached.size() == 3; }));
  REQUIRE(f.claim("1-3", 0));
  REQUIRE(f.backend.feed("1-3", 0x81, Bytes{0x50, 0x03}));
  auto slot_change = f.read("1-3", 0x81, 8, kNoTimeout);
  REQUIRE(slot_change);
  CHECK(*slot_change == Bytes{0x50, 0x03});
}

TEST_CASE("SimBackend answers GET_DEVICE_ID, GET_STATUS and GET_DESCRIPTOR and STALLs anything else") {
  Fixture f;
  const std::string id = "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;";
  auto answer = f.control("1-1", UsbControlSetup{0xA1, 0, 0, 0x0000, 1024});
  REQUIRE(answer);
  REQUIRE(answer->size() == id.size() + 2);
  CHECK((*answer)[0] * 256 + (*answer)[1] == static_cast<int>(id.size() + 2));
  CHECK(std::string(answer->begin() + 2, answer->end()) == id);
  auto shortened = f.control("1-1", UsbControlSetup{0xA1, 0, 0, 0x0000, 2});
  REQUIRE(shortened);
  CHECK(shortened->size() == 2);  // the length only: a host reads it first, then the rest

  auto status = f.control("1-2", UsbControlSetup{0x80, 0, 0, 0, 2});
  REQUIRE(status);
  CHECK(*status == Bytes{0, 0});
  auto descriptor = f.control("1-2", UsbControlSetup{0x80, 6, 0x0100, 0, 18});
  REQUIRE(descriptor);
  REQUIRE(descriptor->size() == 18);
  CHECK((*descriptor)[8] == 0xb8);  // idVendor 04b8, little-endian
  CHECK((*descriptor)[9] == 0x04);
  CHECK((*descriptor)[10] == 0xa1);

  CHECK(failed_with(f.control("1-2", UsbControlSetup{0xA1, 0, 0, 0x0100, 1024}), Errc::refused));  // no id
  CHECK(failed_with(f.control("1-1", UsbControlSetup{0x40, 0x55, 0, 0, 0}), Errc::refused));  // vendor OUT
  CHECK(
      failed_with(f.control("1-1", UsbControlSetup{0x40, 0x55, 0, 0, 2}, Bytes{1}), Errc::invalid_argument));
  CHECK(failed_with(f.control("9-9", UsbControlSetup{0x80, 0, 0, 0, 2}), Errc::not_found));
}

TEST_CASE("SimBackend configures a device that arrives unconfigured before reporting it") {
  asio::io_context io;
  auto set = demo_devices();
  set.devices[0].info.configuration = 0;
  set.devices[2].info.configuration = 0;  // the card reader, plugged later
  SimBackend backend(io.get_executor(), std::move(set));
  Recorder rec;
  REQUIRE(backend.start(rec.events()));
  REQUIRE(run_until(io, [&] { return rec.attached.size() == 2; }));
  CHECK(rec.attached[0].configuration == 1);
  CHECK(rec.attached[0].interfaces.size() == 1);
  REQUIRE(backend.plug("1-3"));
  REQUIRE(run_until(io, [&] { return rec.attached.size() == 3; }));
  CHECK(rec.attached[2].configuration == 1);
}

TEST_CASE("Device files take an optional IEEE 1284 device id per interface") {
  json device = minimal_device();
  device["interfaces"][0]["device_id"] = "MFG:ACME;MDL:Laser;CLS:PRINTER;";
  auto parsed = dtu::agent::sim_device_from_json(device, "");
  REQUIRE(parsed);
  CHECK(parsed->device_ids.at(0) == "MFG:ACME;MDL:Laser;CLS:PRINTER;");
  device["interfaces"][0]["device_id"] = 7;
  check_mentions(dtu::agent::sim_device_from_json(device, "").error().detail, {"device_id"});
}
