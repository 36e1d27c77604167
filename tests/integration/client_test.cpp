// libdtu-client (dtu/client/client.hpp) against real processes: automatic lease renewal, and
// reconnect with finder and lease resubmission when the manager restarts.
#include "dtu/client/client.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "dtu/common/clock.hpp"
#include "dtu/common/service_messages.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::client::Client;
using dtu::client::ClientOptions;
using dtu::client::FinderEvents;
using dtu::client::Lease;
using dtu::common::Errc;
using dtu::common::Result;
using dtu::common::SystemClock;
using dtu::testing::AsyncClient;
using dtu::testing::connect_client;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);
const json kStylusFinder = {{"function", "printer"}, {"product", "Stylus*"}};

template <typename T>
std::string why(const Result<T>& r) {
  return r.ok() ? std::string() : r.error().describe();
}

// The leases the manager lists (devmgrctl leases), through the client's connection.
std::vector<dtu::common::LeaseInfo> listed_leases(AsyncClient& c, Client& client) {
  auto manager = client.manager();
  if (!manager) return {};
  auto r = c.await(manager->call<dtu::common::LeaseListMsg>(dtu::common::ListLeasesMsg{}, kTimeout));
  if (!r.ok()) return {};
  return r->leases;
}

bool lists_lease(AsyncClient& c, Client& client, const std::string& lease) {
  for (const auto& l : listed_leases(c, client)) {
    if (l.lease == lease) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("a finder given as JSON with a bad field is refused naming the field, before anything is sent") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.17");
  AsyncClient c;
  auto client = connect_client(c, m, "client-test");
  auto r = c.await(client->add_finder(json{{"vid", 1208}}, {}));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == make_error_code(Errc::invalid_argument));
  CHECK_MESSAGE(r.error().detail.find("'vid'") != std::string::npos, r.error().detail);
  auto unknown = c.await(client->remove_finder(42));
  CHECK_FALSE(unknown.ok());
}

TEST_CASE("the library renews a short lease automatically, well past its length") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.17");
  site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  AsyncClient c;
  auto client = connect_client(c, m, "client-test");
  std::optional<std::string> ended;
  client->on_lease_ended([&](const Lease&, const std::string& reason) { ended = reason; });

  dtu::client::AllocateOptions options;
  options.length = 1500ms;
  auto lease = c.await(client->allocate("dtu-1", "1-1", 0, options));
  REQUIRE_MESSAGE(lease.ok(), why(lease));
  CHECK(lease->length <= 1500ms);
  CHECK(lease->length > 1000ms);

  // Three lease lengths: without renewal it would have expired twice over.
  CHECK_FALSE(c.run_until([&] { return ended.has_value(); }, 4500ms));
  CHECK_MESSAGE(!ended.has_value(), ended.value_or(""));
  json unit = site.unit(m, "dtu-1", "1-1", 0);
  CHECK(unit.value("state", "") == "allocated");
  CHECK(unit.value("lease", "") == lease->id);
  CHECK(client->leases().contains(lease->id));
  CHECK(client->leases().at(lease->id).expires > SystemClock::instance().now());

  // Released by us: the library stops renewing it and does not report its end.
  auto released = c.await(client->release(lease->id));
  REQUIRE_MESSAGE(released.ok(), why(released));
  CHECK(client->leases().empty());
  CHECK(eventually([&] { return site.unit(m, "dtu-1", "1-1", 0).value("state", "") == "free"; }, kSettle));
  c.run_until([] { return false; }, 200ms);
  CHECK_FALSE(ended.has_value());
}

TEST_CASE("after the manager restarts, the library registers its finders again and resumes its leases") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.17");
  auto& agent = site.start_agent("dtu-1", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  AsyncClient c;
  auto client = connect_client(c, m, "client-test");

  std::vector<std::string> events;  // what the finder reported, in order
  int synced = 0;
  std::optional<std::string> unit_state;  // of 1-1 unit 0, from the events
  auto note_state = [&](const dtu::common::DeviceRecord& d) {
    for (const auto& u : d.units) {
      if (u.unit == 0) unit_state = dtu::common::unit_state_name(u.state);
    }
  };
  FinderEvents finder_events;
  finder_events.matched = [&](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    events.push_back("matched " + d.device);
    note_state(d);
  };
  finder_events.changed = [&](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    events.push_back("changed " + d.device);
    note_state(d);
  };
  finder_events.gone = [&](const std::string&, const std::string& device, const std::string& reason) {
    events.push_back("gone " + device + " " + reason);
  };
  finder_events.synced = [&] { ++synced; };
  std::vector<bool> connection;
  client->on_connection([&](bool up, const dtu::common::Error&) { connection.push_back(up); });
  std::optional<std::string> ended;
  client->on_lease_ended([&](const Lease&, const std::string& reason) { ended = reason; });

  auto finder = c.await(client->add_finder(kStylusFinder, finder_events));
  REQUIRE_MESSAGE(finder.ok(), why(finder));
  REQUIRE(c.run_until([&] { return synced == 1; }, kSettle));
  CHECK(events == std::vector<std::string>{"matched 1-1"});
  dtu::client::AllocateOptions options;
  options.length = 20s;
  auto lease = c.await(client->allocate("dtu-1", "1-1", 0, options));
  REQUIRE_MESSAGE(lease.ok(), why(lease));
  REQUIRE(c.run_until([&] { return unit_state == "allocated"; }, kSettle));

  // The manager crashes and comes back on the same socket and address.
  site.kill_manager(m);
  REQUIRE(c.run_until([&] { return !connection.empty(); }, kSettle));
  CHECK(connection.front() == false);
  CHECK_FALSE(client->connected());
  site.restart_manager(m);
  REQUIRE(c.run_until([&] { return connection.size() == 2; }, kSettle));
  CHECK(connection.back() == true);
  REQUIRE(c.run_until([&] { return synced == 2; }, kSettle));

  // The finder is registered again, under its id.
  auto finders =
      c.await(client->manager()->call<dtu::common::FinderListMsg>(dtu::common::ListFindersMsg{}, kTimeout));
  REQUIRE_MESSAGE(finders.ok(), why(finders));
  REQUIRE(finders->finders.size() == 1);
  CHECK(finders->finders[0].finder_id == *finder);
  CHECK(finders->finders[0].client == "client-test");

  // Once the DTU is back, the lease is ours again: same id, listed by the manager, shown by the
  // device list, and never reported as ended.
  REQUIRE(eventually([&] { return site.devices(m).size() == 2; }, kSettle));
  REQUIRE(c.run_until([&] { return lists_lease(c, *client, lease->id); }, kSettle));
  json unit = site.unit(m, "dtu-1", "1-1", 0);
  CHECK(unit.value("state", "") == "allocated");
  CHECK(unit.value("lease", "") == lease->id);
  CHECK(unit.value("holder", "") == lease->holder);
  CHECK_MESSAGE(!ended.has_value(), ended.value_or(""));
  CHECK(client->leases().contains(lease->id));
  // The finder reports the printer again (matched when the DTU came back after our resync).
  REQUIRE(c.run_until([&] { return client->matches(*finder).size() == 1; }, kSettle));
  MESSAGE("finder events across the restart: " << json(events).dump());

  // Events flow on the new connection: releasing the unit is seen as a change.
  unit_state.reset();
  auto released = c.await(client->release(lease->id));
  REQUIRE_MESSAGE(released.ok(), why(released));
  CHECK(c.run_until([&] { return unit_state == "free"; }, kSettle));
  // And a device unplugged now is gone for the finder.
  REQUIRE(site.simctl(agent, {"unplug", "1-1"}).exit_code == 0);
  CHECK(c.run_until([&] { return !events.empty() && events.back() == "gone 1-1 detached"; }, kSettle));
  CHECK_FALSE(ended.has_value());
}
