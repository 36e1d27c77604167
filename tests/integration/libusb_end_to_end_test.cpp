// The real dtu-agent on its libusb backend, with USB devices emulated by umockdev: this test
// process owns the testbed and answers the devices' ioctls; devmgr and dtu-agent run as children
// under the same preload and testbed, and the device records reach devmgrctl.
#include "support/fake_usb.hpp"

#include <doctest/doctest.h>

#include "site.hpp"

using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;

TEST_CASE("dtu-agent on libusb reports emulated USB devices to devmgr and follows plug and unplug") {
  FakeUsb usb;  // before the agent starts: libusb must see the testbed from libusb_init on
  usb.plug(printer());
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.8");
  auto& a = site.start_agent("dtu-usb", {m.address}, {"--backend", "libusb"});

  json devices;
  REQUIRE(eventually([&] { return (devices = site.devices(m)).size() == 1; }, kSettle));
  const json& p = devices[0];
  CHECK(p.at("dtu") == "dtu-usb");
  CHECK(p.at("device") == "1-1");
  CHECK(p.at("vid") == "04b8");
  CHECK(p.at("pid") == "0005");
  CHECK(p.at("manufacturer") == "EPSON");  // read by the agent through a control transfer
  CHECK(p.at("serial") == "PRN0001");
  REQUIRE(p.at("units").size() == 1);
  CHECK(p.at("units")[0].at("function") == "printer");

  usb.plug(multi_function());
  REQUIRE(eventually([&] { return (devices = site.devices(m)).size() == 2; }, kSettle));
  for (const auto& d : devices) {
    if (d.at("pid") == "08a1") CHECK(d.at("units").size() == 3);
  }

  usb.unplug(multi_function());
  CHECK(eventually([&] { return site.devices(m).size() == 1; }, kSettle));
  CHECK(m.process->wait_for_log(std::regex("device_detached dtu=dtu-usb"), kSettle));
  (void)a;
}
