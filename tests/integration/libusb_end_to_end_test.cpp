// The real dtu-agent on its libusb backend, with USB devices emulated by umockdev: this test
// process owns the testbed and answers the devices' ioctls; devmgr and dtu-agent run as children
// under the same preload and testbed, and the device records reach devmgrctl.
#include "support/fake_usb.hpp"

#include <doctest/doctest.h>

#include "dtu/client/inband_channel.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/services/manager_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::client::InbandChannel;
using dtu::common::Errc;
using dtu::common::LeaseGrantedMsg;
using dtu::common::Result;
using dtu::common::SystemClock;
using dtu::services::ManagerClient;
using dtu::testing::AsyncClient;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);

// This test acting as a device service: its manager connection and its leases' channels.
struct Service {
  AsyncClient c;
  std::unique_ptr<ManagerClient> manager;

  explicit Service(const Site::Manager& m) {
    auto r = c.await(ManagerClient::connect(m.socket.string(), "test-service", SystemClock::instance(), kTimeout));
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().describe()));
    manager = std::move(r.value());
  }

  Result<LeaseGrantedMsg> allocate(const std::string& device, std::uint32_t unit) {
    return c.await(manager->allocate("dtu-usb", device, unit, 60s, kTimeout));
  }

  std::shared_ptr<InbandChannel> open(const LeaseGrantedMsg& lease) {
    auto endpoint = dtu::common::parse_endpoint(lease.inband.value_or(""));
    auto token = dtu::common::from_hex(lease.token.value_or(""));
    REQUIRE((endpoint.ok() && token.ok()));
    auto channel = c.await(
        InbandChannel::connect(c.executor(), SystemClock::instance(), *endpoint, lease.lease, *token, kTimeout));
    REQUIRE_MESSAGE(channel.ok(), (channel.ok() ? "" : channel.error().describe()));
    return *channel;
  }
};

std::string unit_state(Site& site, const Site::Manager& m, const std::string& device, std::uint32_t unit) {
  for (const auto& d : site.devices(m)) {
    if (d.at("device") != device) continue;
    for (const auto& u : d.at("units")) {
      if (u.at("unit") == unit) return u.at("state");
    }
  }
  return "absent";
}

}  // namespace

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

TEST_CASE("a service leases the emulated USB printer and streams a 5 MB job in-band: the printer receives exactly it") {
  FakeUsb usb;
  FakeDeviceHandler* printer_device = usb.plug(printer());
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.12");
  site.start_agent("dtu-usb", {m.address}, {"--backend", "libusb"});
  REQUIRE(eventually([&] { return site.devices(m).size() == 1; }, kSettle));

  Service service(m);
  auto lease = service.allocate("1-1", 0);
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().describe()));
  CHECK(eventually([&] { return unit_state(site, m, "1-1", 0) == "allocated"; }, kSettle));
  auto channel = service.open(*lease);
  CHECK(channel->welcome().endpoints.size() == 2);

  dtu::common::Bytes job(5 * 1000 * 1000 + 17);
  for (std::size_t i = 0; i < job.size(); ++i) job[i] = static_cast<std::uint8_t>((i * 131 + (i >> 12)) & 0xff);
  auto sent = service.c.await(channel->stream(0x01, job));
  REQUIRE_MESSAGE(sent.ok(), (sent.ok() ? "" : sent.error().describe()));
  CHECK(*sent == job.size());
  const auto received = printer_device->out_data(0x01);
  CHECK(received.size() == job.size());
  CHECK(received == job);

  // Status comes back from bulk IN.
  printer_device->queue_in(0x82, {0x18, 0x00});
  auto status = service.c.await(channel->read(0x82, 64, 2s));
  REQUIRE_MESSAGE(status.ok(), (status.ok() ? "" : status.error().describe()));
  CHECK(*status == dtu::common::Bytes{0x18, 0x00});

  // Unplugged during a pending read: the read fails, the lease ends as device_gone.
  std::optional<dtu::common::LeaseEndedMsg> ended;
  service.manager->on_lease_ended([&](const dtu::common::LeaseEndedMsg& e) { ended = e; });
  std::optional<Result<dtu::common::Bytes>> pending;
  dtu::common::spawn(service.c.executor(),
                     [](std::shared_ptr<InbandChannel> ch, std::optional<Result<dtu::common::Bytes>>& out)
                         -> asio::awaitable<void> {
                       auto op = ch->read(0x82, 64, 30s);
                       out.emplace(co_await std::move(op));
                     }(channel, pending),
                     dtu::common::Logger("test"), "pending read");
  service.c.run_until([] { return false; }, 300ms);  // the read is queued at the device
  usb.unplug(printer());
  REQUIRE(service.c.run_until([&] { return pending.has_value() && ended.has_value(); }, kSettle));
  CHECK_FALSE(pending->ok());
  CHECK(ended->reason == "device_gone");
  CHECK(service.c.run_until([&] { return channel->closed_reason().has_value(); }, kSettle));
  CHECK(eventually([&] { return site.devices(m).empty(); }, kSettle));
}

TEST_CASE("leasing a unit makes a sibling sharing its endpoint unavailable until the lease ends") {
  FakeUsb usb;
  FakeSpec shared;  // scanner and storage functions both on IN 0x84: a composite-device fault
  shared.devnum = 7;
  shared.port = 6;
  shared.vid = 0x1234;
  shared.pid = 0x0002;
  shared.product = "Shared-endpoint MFP";
  shared.interfaces = {{0, 0, 0x07, 0x01, 0x02, {0x01, 0x82}},
                       {1, 0, 0x06, 0x01, 0x01, {0x03, 0x84}},
                       {2, 0, 0x08, 0x06, 0x50, {0x05, 0x84}}};
  usb.plug(shared);
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.13");
  site.start_agent("dtu-usb", {m.address}, {"--backend", "libusb"});
  REQUIRE(eventually([&] { return site.devices(m).size() == 1; }, kSettle));

  Service service(m);
  // Two services ask for the two siblings at the same moment: the DTU grants exactly one.
  std::optional<Result<LeaseGrantedMsg>> a, b;
  {
    Service other(m);
    auto ask = [](ManagerClient& client, std::uint32_t unit,
                  std::optional<Result<LeaseGrantedMsg>>& out) -> asio::awaitable<void> {
      auto op = client.allocate("dtu-usb", "1-6", unit, 60s, kTimeout);
      out.emplace(co_await std::move(op));
    };
    dtu::common::spawn(service.c.executor(), ask(*service.manager, 1, a), dtu::common::Logger("test"), "ask 1");
    dtu::common::spawn(other.c.executor(), ask(*other.manager, 2, b), dtu::common::Logger("test"), "ask 2");
    // `other` runs on its own io_context: drive both until both answered.
    const auto deadline = std::chrono::steady_clock::now() + kSettle;
    while ((!a || !b) && std::chrono::steady_clock::now() < deadline) {
      service.c.run_until([&] { return a.has_value(); }, 20ms);
      other.c.run_until([&] { return b.has_value(); }, 20ms);
    }
    REQUIRE((a.has_value() && b.has_value()));
    CHECK(a->ok() != b->ok());
    const auto& refused = a->ok() ? *b : *a;
    if (!refused.ok()) CHECK(refused.error().code == make_error_code(Errc::unavailable));
    // `other` closes here: the manager releases whatever it got.
  }
  auto scanner = a->ok() ? *a : service.allocate("1-6", 1);
  for (int attempt = 0; attempt < 50 && !scanner.ok(); ++attempt) {  // until the closed service's lease is gone
    service.c.run_until([] { return false; }, 100ms);
    scanner = service.allocate("1-6", 1);
  }
  REQUIRE_MESSAGE(scanner.ok(), (scanner.ok() ? "" : scanner.error().describe()));
  REQUIRE(eventually([&] { return unit_state(site, m, "1-6", 2) == "unavailable"; }, kSettle));
  CHECK(unit_state(site, m, "1-6", 1) == "allocated");
  CHECK(unit_state(site, m, "1-6", 0) == "free");

  auto storage = service.allocate("1-6", 2);
  REQUIRE_FALSE(storage.ok());
  CHECK(storage.error().code == make_error_code(Errc::unavailable));
  CHECK(storage.error().detail.find("while unit 1 is leased") != std::string::npos);
  auto printer_unit = service.allocate("1-6", 0);  // independent of the scanner
  CHECK_MESSAGE(printer_unit.ok(), (printer_unit.ok() ? "" : printer_unit.error().describe()));

  auto released = service.c.await(service.manager->release("dtu-usb", scanner->lease, kTimeout));
  REQUIRE_MESSAGE(released.ok(), (released.ok() ? "" : released.error().describe()));
  CHECK(eventually([&] { return unit_state(site, m, "1-6", 2) == "free"; }, kSettle));
  auto now_storage = service.allocate("1-6", 2);
  CHECK_MESSAGE(now_storage.ok(), (now_storage.ok() ? "" : now_storage.error().describe()));
}
