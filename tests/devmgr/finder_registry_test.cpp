// FinderRegistry: the events a service sees for its finders as devices, sessions and finders
// change; scopes; the cache behind listings; and that a device change evaluates only the
// finders the index cannot rule out.
#include "dtu/devmgr/finder_registry.hpp"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "dtu/common/service_messages.hpp"

using dtu::common::DeviceRecord;
using dtu::common::Frame;
using dtu::common::MessageType;
using dtu::common::Stamp;
using dtu::common::UnitRecord;
using dtu::common::UnitState;
using dtu::devmgr::DeviceList;
using dtu::devmgr::FinderRegistry;
using dtu::devmgr::SessionTable;

namespace {

std::uint64_t seq = 0;

DeviceRecord printer(const std::string& dtu, const std::string& port, UnitState state = UnitState::free) {
  DeviceRecord r;
  r.dtu = dtu;
  r.device = port;
  r.vid = 0x04b8;
  r.pid = 0x0202;
  r.owner = "m1";
  r.product = "Stylus";
  UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 7;
  u.function = "printer";
  u.state = state;
  r.units.push_back(u);
  r.stamp = Stamp{100, ++seq, 0};
  return r;
}

DeviceRecord keyboard(const std::string& dtu, const std::string& port) {
  DeviceRecord r;
  r.dtu = dtu;
  r.device = port;
  r.vid = 0x046d;
  r.pid = 0xc31c;
  r.owner = "m1";
  UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 3;
  u.function = "hid";
  r.units.push_back(u);
  r.stamp = Stamp{100, ++seq, 0};
  return r;
}

dtu::common::Finder finder(const char* json) {
  auto f = dtu::common::parse_finder(nlohmann::json::parse(json));
  REQUIRE(f.ok());
  return f.value();
}

// One event as "type finder_id dtu/device [reason]".
std::string describe(const Frame& frame) {
  switch (frame.type) {
    case MessageType::finder_matched: {
      auto m = dtu::common::from_frame<dtu::common::FinderMatchedMsg>(frame);
      REQUIRE(m.ok());
      return "matched " + std::to_string(m->finder_id) + " " + m->device.dtu + "/" + m->device.device;
    }
    case MessageType::finder_changed: {
      auto m = dtu::common::from_frame<dtu::common::FinderChangedMsg>(frame);
      REQUIRE(m.ok());
      return "changed " + std::to_string(m->finder_id) + " " + m->device.dtu + "/" + m->device.device;
    }
    case MessageType::finder_gone: {
      auto m = dtu::common::from_frame<dtu::common::FinderGoneMsg>(frame);
      REQUIRE(m.ok());
      return "gone " + std::to_string(m->finder_id) + " " + m->dtu + "/" + m->device + " " + m->reason;
    }
    case MessageType::finder_synced: {
      auto m = dtu::common::from_frame<dtu::common::FinderSyncedMsg>(frame);
      REQUIRE(m.ok());
      return "synced " + std::to_string(m->finder_id);
    }
    default: return "unexpected " + std::string(dtu::common::message_type_name(frame.type));
  }
}

// A manager's list, sessions and registry, wired as DeviceManager wires them, and one client.
struct Fixture {
  DeviceList devices;
  SessionTable sessions;
  FinderRegistry registry{"m1", devices, sessions};
  std::vector<std::string> events;
  int client = 0;  // its address is the client key
  FinderRegistry::Sink sink = [this](Frame f) { events.push_back(describe(f)); };

  Fixture() {
    devices.set_listener(DeviceList::Listener{
        [this](const DeviceRecord*, const DeviceRecord& now) { registry.device_updated(now); },
        [this](const DeviceRecord& gone, std::string_view reason) { registry.device_removed(gone, reason); }});
  }
  void add(std::uint64_t id, const char* json) {
    REQUIRE(registry.add(&client, {"svc", 42, 1000}, sink, id, finder(json)).ok());
  }
  std::vector<std::string> take() { return std::exchange(events, {}); }
};

}  // namespace

TEST_CASE("a new finder is sent its current matches, then synced") {
  Fixture f;
  f.devices.upsert(printer("d1", "1-1"));
  f.devices.upsert(keyboard("d1", "1-2"));
  f.devices.upsert(printer("d2", "1-1"));
  f.add(7, R"({"function": "printer"})");
  CHECK(f.take() == std::vector<std::string>{"matched 7 d1/1-1", "matched 7 d2/1-1", "synced 7"});
  f.add(8, R"({"vid": "1234"})");
  CHECK(f.take() == std::vector<std::string>{"synced 8"});
}

TEST_CASE("device events: matched on attach, changed on a unit change, gone on detach and on DTU loss") {
  Fixture f;
  f.add(1, R"({"function": "printer"})");
  f.take();
  f.devices.upsert(printer("d1", "1-1"));
  f.devices.upsert(keyboard("d1", "1-2"));  // not ours: no event
  CHECK(f.take() == std::vector<std::string>{"matched 1 d1/1-1"});
  f.devices.upsert(printer("d1", "1-1", UnitState::allocated));
  CHECK(f.take() == std::vector<std::string>{"changed 1 d1/1-1"});
  f.devices.remove("d1", "1-1", Stamp{100, ++seq, 0});
  CHECK(f.take() == std::vector<std::string>{"gone 1 d1/1-1 detached"});
  f.devices.upsert(printer("d2", "3-1"));
  f.take();
  f.devices.drop_dtu("d2");
  CHECK(f.take() == std::vector<std::string>{"gone 1 d2/3-1 dtu_lost"});
}

TEST_CASE("a device that changes so it no longer matches is gone with reason no_longer_matches") {
  Fixture f;
  f.add(1, R"({"function": "printer", "product": "Styl*"})");
  f.devices.upsert(printer("d1", "1-1"));
  f.take();
  DeviceRecord renamed = printer("d1", "1-1");
  renamed.product = "Other";
  f.devices.upsert(renamed);
  CHECK(f.take() == std::vector<std::string>{"gone 1 d1/1-1 no_longer_matches"});
}

TEST_CASE("a snapshot that drops a device reports it gone, detached") {
  Fixture f;
  f.add(1, R"({"function": "printer"})");
  CHECK(f.take() == std::vector<std::string>{"synced 1"});
  f.devices.replace("d1", Stamp{100, ++seq, 0}, {printer("d1", "1-1"), printer("d1", "1-2")});
  CHECK(f.take() == std::vector<std::string>{"matched 1 d1/1-1", "matched 1 d1/1-2"});
  f.devices.replace("d1", Stamp{100, ++seq, 0}, {printer("d1", "1-2")});
  CHECK(f.take() == std::vector<std::string>{"gone 1 d1/1-1 detached", "changed 1 d1/1-2"});
}

TEST_CASE("scope dtu matches one DTU only: scope bus only this manager's devices") {
  Fixture f;
  f.add(1, R"({"function": "printer", "scope": "dtu", "scope_dtu": "d2"})");
  f.add(2, R"({"function": "printer", "scope": "bus"})");
  f.take();
  f.devices.upsert(printer("d1", "1-1"));
  CHECK(f.take() == std::vector<std::string>{"matched 2 d1/1-1"});
  DeviceRecord elsewhere = printer("d2", "1-1");
  elsewhere.owner = "m2";  // owned by another manager (the mesh, later)
  f.devices.upsert(elsewhere);
  CHECK(f.take() == std::vector<std::string>{"matched 1 d2/1-1"});
}

TEST_CASE("a session-scoped finder follows its session: gone for the old DTU, then matched at the new one") {
  Fixture f;
  f.devices.upsert(printer("d1", "1-1"));
  f.devices.upsert(printer("d2", "1-1"));
  f.devices.upsert(printer("d2", "1-2"));
  f.add(5, R"({"function": "printer", "scope": "session", "session": "S"})");
  CHECK(f.take() == std::vector<std::string>{"synced 5"});  // S is nowhere yet

  auto now = dtu::common::MonoTime{};
  f.registry.session_moved("S", f.sessions.attach("S", "alice", "d1", now));
  CHECK(f.take() == std::vector<std::string>{"matched 5 d1/1-1"});
  f.registry.session_moved("S", f.sessions.attach("S", "alice", "d2", now));
  CHECK(f.take() == std::vector<std::string>{"gone 5 d1/1-1 session_moved", "matched 5 d2/1-1", "matched 5 d2/1-2"});
  // Devices of other DTUs do not match while S is at d2.
  f.devices.upsert(printer("d1", "1-9"));
  CHECK(f.take().empty());
  auto left = f.sessions.detach("S");
  REQUIRE(left);
  f.registry.session_moved("S", *left);
  CHECK(f.take() == std::vector<std::string>{"gone 5 d2/1-1 session_moved", "gone 5 d2/1-2 session_moved"});
}

TEST_CASE("listings come from the cache: unregistering and a closed client stop the events") {
  Fixture f;
  f.devices.upsert(printer("d1", "1-1"));
  f.add(1, R"({"function": "printer"})");
  f.add(2, R"({"vid": "046d"})");
  auto list = f.registry.list();
  REQUIRE(list.size() == 2);
  CHECK(list[0].client == "svc");
  CHECK(list[0].pid == 42);
  CHECK(list[0].uid == 1000);
  CHECK(list[0].finder_id == 1);
  REQUIRE(list[0].matches.size() == 1);
  CHECK(list[0].matches[0] == dtu::common::MatchRef{"d1", "1-1", {0}, "m1", false});
  CHECK(list[1].matches.empty());

  CHECK(!f.registry.add(&f.client, {"svc", 42, 1000}, f.sink, 1, finder("{}")).ok());  // id in use
  REQUIRE(f.registry.remove(&f.client, 1).ok());
  CHECK(f.registry.remove(&f.client, 1).error().code == dtu::common::Errc::not_found);
  f.take();
  f.devices.upsert(printer("d1", "1-2"));
  CHECK(f.take().empty());
  f.registry.remove_client(&f.client);
  CHECK(f.registry.size() == 0);
  f.devices.upsert(keyboard("d1", "1-3"));
  CHECK(f.take().empty());
}

TEST_CASE("a device change evaluates only the finders its index keys allow") {
  Fixture f;
  // 200 finders on other vendors, one on ours, one unindexed.
  for (std::uint64_t i = 0; i < 200; ++i) {
    char json[64];
    std::snprintf(json, sizeof json, R"({"vid": "%04x"})", static_cast<unsigned>(0x1000 + i));
    f.add(100 + i, json);
  }
  f.add(1, R"({"vid": "04b8"})");
  f.add(2, R"({"product": "Sty*"})");
  f.take();
  const auto before = f.registry.evaluations();
  f.devices.upsert(printer("d1", "1-1"));
  CHECK(f.take() == std::vector<std::string>{"matched 1 d1/1-1", "matched 2 d1/1-1"});
  CHECK(f.registry.evaluations() - before == 2);
}
