// A scanner's data path through the broker (issue 7, docs/scanners.md): a still-image (class 06)
// scanner emulated with umockdev, the real dtu-agent on its libusb backend, a devmgr, and
// dtu-unit choosing the scanner by finder. This test process owns the testbed and plays the
// scanner's usbdevfs side: it captures what is written to bulk OUT and answers bulk IN URBs from a
// scripted sequence of transfers, as a recorded scan would.
#include "support/fake_usb.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "site.hpp"

using dtu::testing::binary_path;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::run_command;
using dtu::testing::Site;
using nlohmann::json;

namespace {

// This test's manager address (issue 7's range for dtu-unit: 127.0.0.160–169).
constexpr const char* kIp = "127.0.0.167";

FakeSpec still_image_scanner() {
  FakeSpec s;
  s.devnum = 9;
  s.port = 7;
  s.vid = 0x1234;
  s.pid = 0x5006;
  s.manufacturer = "Test";
  s.product = "Still-Image Scanner";
  s.serial = "SCN0007";
  s.interfaces = {{0, 0, 0x06, 0x01, 0x01, {0x01, 0x82}}};  // still image: command OUT, data IN
  return s;
}

// The scan as the scanner sends it, one bulk IN transfer per entry: a header, image lines
// (every byte value) of a full 512-byte packet each, and a short last transfer.
std::vector<Bytes> recorded_scan() {
  std::vector<Bytes> transfers;
  const std::string header = "SCAN 64x12 gray8\n";
  transfers.emplace_back(header.begin(), header.end());
  for (std::size_t line = 0; line < 12; ++line) {
    Bytes packet(512);
    for (std::size_t i = 0; i < packet.size(); ++i)
      packet[i] = static_cast<std::uint8_t>((i + 37 * line) & 0xff);
    transfers.push_back(packet);
  }
  transfers.push_back({0xde, 0xad, 0xbe, 0xef, 0x0a});
  return transfers;
}

}  // namespace

TEST_CASE(
    "dtu-unit reads the exact byte sequence an emulated USB scanner yields, through dtu-agent on libusb and "
    "devmgr") {
  FakeUsb usb;  // before the agent starts: libusb must see the testbed from libusb_init on
  FakeDeviceHandler* scanner = usb.plug(still_image_scanner());
  Site site;
  auto& m = site.start_manager("m1", kIp);
  site.start_agent("dtu-scan", {m.address}, {"--backend", "libusb"});
  json devices;
  REQUIRE(eventually([&] { return (devices = site.devices(m)).size() == 1; }, kSettle));
  REQUIRE(devices[0].at("units").size() == 1);
  CHECK(devices[0].at("units")[0].at("function") == "scanner");

  const std::string finder = R"({"function": "scanner", "serial": "SCN0007"})";
  const std::vector<std::string> base = {binary_path("dtu-unit"), "--socket", m.socket.string(), "--finder",
                                         finder};

  auto list = base;
  list.insert(list.begin() + 1, "list");
  auto r = run_command(list, kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out == "dtu-scan 1-7 0 free -\n");

  // A script drives the scanner: a command to bulk OUT, then the image from bulk IN.
  const std::string command =
      "\x1b"
      "S"
      "scan 300dpi";
  const auto command_file = site.dir() / "command.bin";
  std::ofstream(command_file, std::ios::binary) << command;
  auto write = base;
  write.push_back("write");
  std::vector<std::string> with_stdin = {"/bin/sh", "-c", "f=$1; shift; exec \"$@\" < \"$f\"", "sh",
                                         command_file.string()};
  with_stdin.insert(with_stdin.end(), write.begin(), write.end());
  r = run_command(with_stdin, kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(scanner->out_data(0x01) == Bytes(command.begin(), command.end()));

  Bytes expected;
  for (auto& transfer : recorded_scan()) {
    expected.insert(expected.end(), transfer.begin(), transfer.end());
    scanner->queue_in(0x82, std::move(transfer));
  }
  auto read = base;
  read.insert(read.end(), {"read", "--timeout-ms", "500"});
  r = run_command(read, kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK_MESSAGE(r.err.find("chose dtu-scan 1-7 unit 0") != std::string::npos, r.err);
  CHECK(r.out.size() == expected.size());
  CHECK(Bytes(r.out.begin(), r.out.end()) == expected);
  CHECK(eventually(
      [&] {
        auto u = site.unit(m, "dtu-scan", "1-7", 0);
        return !u.is_null() && u.at("state") == "free";
      },
      kSettle));
}
