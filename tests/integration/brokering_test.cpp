// Brokering on one server across real processes (issue 4): devmgr and dtu-agents (simulated USB
// backend) on loopback, services being this test (libdtu-client or the low-level
// ManagerClient), dtu-sample-service processes, and a client of another uid.
#include <doctest/doctest.h>

#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/services/manager_client.hpp"
#include "as_nobody.hpp"
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
using dtu::services::ManagerClient;
using dtu::testing::AsyncClient;
using dtu::testing::connect_client;
using dtu::testing::eventually;
using dtu::testing::kSettle;
using dtu::testing::Process;
using dtu::testing::Site;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = std::chrono::seconds(10);
// The only printer of sim-devices.json that is a printer alone (1-1); 1-2 is a multi-function one.
const json kStylusFinder = {{"function", "printer"}, {"product", "Stylus*"}};

std::string describe(const dtu::common::Error& e) {
  return e.describe();
}

template <typename T>
std::string why(const Result<T>& r) {
  return r.ok() ? std::string() : describe(r.error());
}

std::unique_ptr<ManagerClient> connect_raw(AsyncClient& c, const Site::Manager& m, const std::string& name) {
  auto r = c.await(ManagerClient::connect(m.socket.string(), name, SystemClock::instance(), kTimeout));
  REQUIRE_MESSAGE(r.ok(), why(r));
  return std::move(r.value());
}

// Starts `task` on the client's io_context without waiting for it; the slot fills when it ends.
template <typename T>
std::shared_ptr<std::optional<T>> start(AsyncClient& c, asio::awaitable<T> task) {
  auto slot = std::make_shared<std::optional<T>>();
  auto wrapper = [](asio::awaitable<T> inner,
                    std::shared_ptr<std::optional<T>> out) -> asio::awaitable<void> {
    out->emplace(co_await std::move(inner));
  };
  asio::co_spawn(c.io(), wrapper(std::move(task), slot), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  return slot;
}

bool unit_state_is(Site& site, const Site::Manager& m, const std::string& dtu, const std::string& device,
                   std::uint32_t unit, const std::string& state) {
  json u = site.unit(m, dtu, device, unit);
  return u.is_object() && u.at("state") == state;
}

const dtu::common::UnitRecord* unit_in(const dtu::common::DeviceRecord& d, std::uint32_t unit) {
  for (const auto& u : d.units) {
    if (u.unit == unit) return &u;
  }
  return nullptr;
}

// A manager m1 on `ip` with one DTU, dtu-1 (demo/sim-devices.json: printer 1-1, multi-function
// 1-2), whose devices it lists. Returns the agent.
Site::Agent& start_site(Site& site, Site::Manager*& m, const std::string& ip,
                        std::vector<std::string> extra = {}) {
  m = &site.start_manager("m1", ip, std::move(extra));
  auto& agent = site.start_agent("dtu-1", {m->address});
  REQUIRE(eventually([&] { return site.devices(*m).size() == 2; }, kSettle));
  return agent;
}

}  // namespace

TEST_CASE(
    "two services compete for one printer: the loser is told the holder, and a waiting one gets it on "
    "release") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m, "127.0.0.15");
  AsyncClient c;
  auto first = connect_client(c, *m, "first-service");
  auto second = connect_client(c, *m, "second-service");

  auto won = c.await(first->allocate("dtu-1", "1-1", 0, {}));
  REQUIRE_MESSAGE(won.ok(), why(won));
  CHECK(won->holder.rfind("first-service[", 0) == 0);

  auto lost = c.await(second->allocate("dtu-1", "1-1", 0, {}));
  REQUIRE_FALSE(lost.ok());
  CHECK(lost.error().code == make_error_code(Errc::refused));
  CHECK_MESSAGE(lost.error().detail.find("held by first-service[") != std::string::npos, lost.error().detail);
  CHECK_MESSAGE(lost.error().detail.find(won->id) != std::string::npos, lost.error().detail);

  // Waiting: the request stays queued at the manager while the first service holds the unit…
  dtu::client::AllocateOptions waiting;
  waiting.wait = 30s;
  auto queued = start(c, second->allocate("dtu-1", "1-1", 0, waiting));
  c.run_until([] { return false; }, 500ms);  // let the request reach the manager and queue
  REQUIRE_FALSE(queued->has_value());
  // … and is granted once it releases.
  auto released = c.await(first->release(won->id));
  REQUIRE_MESSAGE(released.ok(), why(released));
  REQUIRE(c.run_until([&] { return queued->has_value(); }, kSettle));
  const auto& granted = **queued;
  REQUIRE_MESSAGE(granted.ok(), why(granted));
  CHECK(granted->holder.rfind("second-service[", 0) == 0);
  CHECK(granted->id != won->id);
  CHECK(eventually([&] { return site.unit(*m, "dtu-1", "1-1", 0).value("lease", "") == granted->id; },
                   kSettle));

  // A wait that runs out is refused, still naming the holder.
  dtu::client::AllocateOptions brief;
  brief.wait = 300ms;
  auto timed_out = c.await(first->allocate("dtu-1", "1-1", 0, brief));
  REQUIRE_FALSE(timed_out.ok());
  CHECK(timed_out.error().code == make_error_code(Errc::refused));
  CHECK_MESSAGE(timed_out.error().detail.find("held by second-service[") != std::string::npos,
                timed_out.error().detail);
}

TEST_CASE("kill -9 of a service holding a printer frees the unit at once, and another service can lease it") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m, "127.0.0.15");
  const std::string sample = dtu::testing::binary_path("dtu-sample-service");
  const std::vector<std::string> base = {sample, "--socket", m->socket.string(), "--finder",
                                         kStylusFinder.dump()};

  // A service holding the printer (dtu-sample-service --hold).
  std::vector<std::string> hold = base;
  hold.push_back("--hold");
  Process holder(hold, site.dir().path(), {}, "holder");
  REQUIRE_MESSAGE(
      eventually([&] { return holder.out().find("holding dtu-1 1-1 unit 0") != std::string::npos; }, kSettle),
      holder.out() << holder.log());

  // Another sample service is refused and says who holds it.
  auto busy = dtu::testing::run_command(base, kSettle);
  CHECK(busy.exit_code == 1);
  CHECK_MESSAGE(
      busy.err.find("held by dtu-sample-service[" + std::to_string(holder.pid()) + "]") != std::string::npos,
      busy.err);

  // A watching service: its finder reports the unit's state.
  AsyncClient c;
  auto watcher = connect_client(c, *m, "watcher");
  std::optional<std::string> state;
  std::optional<std::chrono::steady_clock::time_point> freed_at;
  FinderEvents events;
  auto seen = [&](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    const auto* u = unit_in(d, 0);
    if (u == nullptr) return;
    state = dtu::common::unit_state_name(u->state);
    if (u->state == dtu::common::UnitState::free && !freed_at) freed_at = std::chrono::steady_clock::now();
  };
  events.matched = seen;
  events.changed = seen;
  auto finder = c.await(watcher->add_finder(kStylusFinder, events));
  REQUIRE_MESSAGE(finder.ok(), why(finder));
  REQUIRE(c.run_until([&] { return state == "allocated"; }, kSettle));

  const auto killed_at = std::chrono::steady_clock::now();
  holder.signal(SIGKILL);
  REQUIRE(holder.wait_exit(kSettle) == 128 + SIGKILL);
  // The issue asks for one second; the bound here is generous for a loaded machine, the figure
  // is reported.
  REQUIRE(c.run_until([&] { return freed_at.has_value(); }, kSettle));
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*freed_at - killed_at).count();
  MESSAGE("kill -9 -> finder_changed (unit free) in " << ms << " ms");
  CHECK(unit_state_is(site, *m, "dtu-1", "1-1", 0, "free"));

  auto taken = c.await(watcher->allocate("dtu-1", "1-1", 0, {}));
  CHECK_MESSAGE(taken.ok(), why(taken));
}

TEST_CASE("a lease that is not renewed expires: its holder is told and the unit is free again") {
  Site site;
  Site::Manager* m = nullptr;
  start_site(site, m, "127.0.0.16");
  AsyncClient c;
  auto service = connect_raw(c, *m, "lazy-service");
  std::optional<dtu::common::LeaseEndedMsg> ended;
  service->on_lease_ended([&](const dtu::common::LeaseEndedMsg& e) { ended = e; });

  auto lease = c.await(service->allocate("dtu-1", "1-2", 1, 1000ms, kTimeout));
  REQUIRE_MESSAGE(lease.ok(), why(lease));
  CHECK(lease->expires_in_ms <= 1000);
  REQUIRE(eventually([&] { return unit_state_is(site, *m, "dtu-1", "1-2", 1, "allocated"); }, kSettle));

  REQUIRE(c.run_until([&] { return ended.has_value(); }, kSettle));
  CHECK(ended->lease == lease->lease);
  CHECK(ended->reason == "expired");
  CHECK(eventually([&] { return unit_state_is(site, *m, "dtu-1", "1-2", 1, "free"); }, kSettle));
  auto listed = c.await(service->call<dtu::common::LeaseListMsg>(dtu::common::ListLeasesMsg{}, kTimeout));
  REQUIRE_MESSAGE(listed.ok(), why(listed));
  for (const auto& l : listed->leases) CHECK(l.lease != lease->lease);
  // Renewing it now is too late.
  auto late = c.await(service->renew("dtu-1", lease->lease, 1000ms, kTimeout));
  CHECK_FALSE(late.ok());
}

namespace {


}  // namespace

TEST_CASE("a service of another uid can neither renew nor release someone else's unit") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to start a client as uid 65534");
    return;
  }
  Site site;
  // uid 65534 must reach the socket: through the test directory, and the socket's own mode.
  std::filesystem::permissions(site.dir().path(), std::filesystem::perms::owner_all |
                                                      std::filesystem::perms::group_exec |
                                                      std::filesystem::perms::others_exec);
  Site::Manager* m = nullptr;
  start_site(site, m, "127.0.0.16", {"--socket-mode", "0666"});
  AsyncClient c;
  auto owner = connect_client(c, *m, "owner-service");
  auto lease = c.await(owner->allocate("dtu-1", "1-1", 0, {}));
  REQUIRE_MESSAGE(lease.ok(), why(lease));

  const std::string outcome = dtu::testing::renew_and_release_as_nobody(m->socket.string(), "dtu-1", lease->id);
  CHECK_MESSAGE(outcome.rfind("renew denied:", 0) == 0, outcome);
  CHECK_MESSAGE(outcome.find("; release denied:") != std::string::npos, outcome);
  CHECK(m->process->wait_for_log(std::regex("uid=65534.*(denied|not_holder|holder)"), kSettle));

  // Still ours: the DTU and the manager say so, and the holder was never told it ended.
  bool ended = false;
  owner->on_lease_ended([&](const Lease&, const std::string&) { ended = true; });
  c.run_until([] { return false; }, 300ms);
  CHECK_FALSE(ended);
  json unit = site.unit(*m, "dtu-1", "1-1", 0);
  CHECK(unit.value("state", "") == "allocated");
  CHECK(unit.value("lease", "") == lease->id);
  auto listed =
      c.await(owner->manager()->call<dtu::common::LeaseListMsg>(dtu::common::ListLeasesMsg{}, kTimeout));
  REQUIRE_MESSAGE(listed.ok(), why(listed));
  bool held = false;
  for (const auto& l : listed->leases) held = held || (l.lease == lease->id && l.uid == 0);
  CHECK(held);
  auto released = c.await(owner->release(lease->id));
  CHECK_MESSAGE(released.ok(), why(released));
}

namespace {

// Attaches session `session` to `dtu`: with `devmgrctl session attach` when it has the verb,
// else with session_attach sent as root through the given client.
void attach_session(Site& site, const Site::Manager& m, AsyncClient& c, Client& admin,
                    const std::string& session, const std::string& user, const std::string& dtu) {
  auto r = site.devmgrctl(m, {"session", "attach", "--session", session, "--user", user, "--dtu", dtu});
  if (r.exit_code == 0) return;
  MESSAGE("devmgrctl session attach: exit " << r.exit_code << " " << r.err
                                            << "; sending session_attach instead");
  auto ack = c.await(admin.manager()->call<dtu::common::AckMsg>(
      dtu::common::SessionAttachMsg{session, user, dtu}, kTimeout));
  REQUIRE_MESSAGE(ack.ok(), why(ack));
}

}  // namespace

TEST_CASE("a session move delivers gone for the old DTU's matches, then matched for the new DTU's") {
  Site site;
  auto& m = site.start_manager("m1", "127.0.0.16");
  site.start_agent("dtu-1", {m.address});
  site.start_agent("dtu-2", {m.address});
  REQUIRE(eventually([&] { return site.devices(m).size() == 4; }, kSettle));

  AsyncClient c;
  auto service = connect_client(c, m, "session-service");
  std::vector<std::string> seen;
  bool synced = false;
  FinderEvents events;
  events.matched = [&](const dtu::common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    seen.push_back("matched " + d.dtu + " " + d.device);
  };
  events.gone = [&](const std::string& dtu, const std::string& device, const std::string& reason) {
    seen.push_back("gone " + dtu + " " + device + " " + reason);
  };
  events.synced = [&] { synced = true; };
  const json finder = {{"function", "printer"}, {"scope", "session"}, {"session", "S"}};
  auto id = c.await(service->add_finder(finder, events));
  REQUIRE_MESSAGE(id.ok(), why(id));
  REQUIRE(c.run_until([&] { return synced; }, kSettle));
  CHECK(seen.empty());  // the session is nowhere yet

  // Both printers of dtu-1 (1-1, and 1-2's printer unit).
  attach_session(site, m, c, *service, "S", "alice", "dtu-1");
  REQUIRE(c.run_until([&] { return seen.size() == 2; }, kSettle));
  std::sort(seen.begin(), seen.end());
  CHECK(seen == std::vector<std::string>{"matched dtu-1 1-1", "matched dtu-1 1-2"});

  seen.clear();
  attach_session(site, m, c, *service, "S", "alice", "dtu-2");
  REQUIRE(c.run_until([&] { return seen.size() == 4; }, kSettle));
  c.run_until([] { return false; }, 200ms);  // nothing more should come
  REQUIRE(seen.size() == 4);
  std::vector<std::string> gone(seen.begin(), seen.begin() + 2);
  std::vector<std::string> matched(seen.begin() + 2, seen.end());
  std::sort(gone.begin(), gone.end());
  std::sort(matched.begin(), matched.end());
  CHECK(gone == std::vector<std::string>{"gone dtu-1 1-1 session_moved", "gone dtu-1 1-2 session_moved"});
  CHECK(matched == std::vector<std::string>{"matched dtu-2 1-1", "matched dtu-2 1-2"});
  const auto cached = service->matches(*id);
  CHECK(cached.size() == 2);
  CHECK(cached.contains({"dtu-2", "1-1"}));
}

TEST_CASE(
    "dtu-sample-service prints a test page in-band and releases it, and a waiting one prints when a holding "
    "one stops") {
  Site site;
  Site::Manager* m = nullptr;
  auto& agent = start_site(site, m, "127.0.0.15");
  const auto page_file = site.dir() / "page.txt";
  const std::string page =
      "\x1b"
      "Esample page\r\n\f";
  std::ofstream(page_file, std::ios::binary) << page;

  auto r = dtu::testing::run_command(
      {dtu::testing::binary_path("dtu-sample-service"), "--socket", m->socket.string(), "--finder",
       kStylusFinder.dump(), "--page", page_file.string()},
      kSettle);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  const std::vector<std::string> steps = {
      "registered finder 1", "matched dtu-1 1-1 unit 0 (printer, free)", "allocated lease ",
      "printed " + std::to_string(page.size()) + " bytes", "released lease "};
  for (const auto& step : steps) {
    CHECK_MESSAGE(r.out.find(step) != std::string::npos, "no '" << step << "' in:\n" << r.out);
  }
  auto captured = site.simctl(agent, {"captured", "1-1", "0x01"});
  REQUIRE(captured.exit_code == 0);
  CHECK(json::parse(captured.out).at("hex") ==
        dtu::common::to_hex(dtu::common::Bytes(page.begin(), page.end())));
  CHECK(eventually([&] { return unit_state_is(site, *m, "dtu-1", "1-1", 0, "free"); }, kSettle));

  // One holds the printer (--hold), another waits for it (--wait-ms) and prints once the first
  // is stopped with SIGTERM and releases it.
  const std::vector<std::string> base = {dtu::testing::binary_path("dtu-sample-service"), "--socket",
                                         m->socket.string(), "--finder", kStylusFinder.dump()};
  std::vector<std::string> hold = base;
  hold.push_back("--hold");
  Process holder(hold, site.dir().path(), {}, "holder");
  REQUIRE_MESSAGE(
      eventually([&] { return holder.out().find("holding dtu-1 1-1 unit 0") != std::string::npos; }, kSettle),
      holder.out() << holder.log());
  std::vector<std::string> wait = base;
  wait.insert(wait.end(), {"--wait-ms", "30000", "--page", page_file.string()});
  Process waiter(wait, site.dir().path(), {}, "waiter");
  REQUIRE_MESSAGE(
      eventually([&] { return waiter.out().find("waiting up to 30000 ms") != std::string::npos; }, kSettle),
      waiter.out() << waiter.log());
  holder.signal(SIGTERM);
  CHECK(holder.wait_exit(kSettle) == 0);
  CHECK_MESSAGE(holder.out().find("released lease ") != std::string::npos, holder.out());
  CHECK(waiter.wait_exit(kSettle) == 0);
  CHECK_MESSAGE(waiter.out().find("printed " + std::to_string(page.size()) + " bytes") != std::string::npos,
                waiter.out() << waiter.log());
  captured = site.simctl(agent, {"captured", "1-1", "0x01"});
  const std::string twice = page + page;
  CHECK(json::parse(captured.out).at("hex") ==
        dtu::common::to_hex(dtu::common::Bytes(twice.begin(), twice.end())));
}
