// FinderRegistry: the events a service sees for its finders as devices, sessions and finders
// change; scopes; the cache behind listings; and that a device change evaluates only the
// finders the index cannot rule out.
#include "dtu/devmgr/finder_registry.hpp"

#include <iterator>
#include <map>
#include <random>

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

TEST_CASE("session finders are evaluated only at the DTU where their session is") {
  Fixture f;
  f.add(1, R"({"function": "printer", "scope": "session", "session": "S"})");
  f.add(2, R"({"function": "printer", "scope": "session", "session": "T"})");
  f.registry.session_moved("S", f.sessions.attach("S", "alice", "d1", {}));
  f.take();
  const auto before = f.registry.evaluations();
  f.devices.upsert(printer("d1", "1-1"));
  f.devices.upsert(printer("d2", "1-1"));  // no session there: nothing evaluated
  CHECK(f.take() == std::vector<std::string>{"matched 1 d1/1-1"});
  CHECK(f.registry.evaluations() - before == 1);
  // The finder follows its session, and leaves no trace where the session was.
  f.registry.session_moved("S", f.sessions.attach("S", "alice", "d2", {}));
  CHECK(f.take() == std::vector<std::string>{"gone 1 d1/1-1 session_moved", "matched 1 d2/1-1"});
  f.devices.upsert(printer("d1", "1-2"));
  CHECK(f.take().empty());
  REQUIRE(f.registry.remove(&f.client, 1).ok());
  f.devices.upsert(printer("d2", "1-2"));
  CHECK(f.take().empty());
}

namespace {

// A reference for the registry: every finder evaluated against every change, scopes applied by
// asking the SessionTable at each evaluation — what the index and the session filing must equal.
struct BruteForce {
  using Key = std::pair<std::string, std::string>;
  const SessionTable& sessions;
  std::map<std::uint64_t, dtu::common::Finder> finders;  // by client finder id (= registration order)
  std::map<std::uint64_t, std::map<Key, std::vector<std::uint32_t>>> cache;
  std::vector<std::string> events;

  std::vector<std::uint32_t> evaluate(const dtu::common::Finder& f, const DeviceRecord& r) const {
    if (f.scope == dtu::common::FinderScope::session && sessions.where(*f.session) != r.dtu) return {};
    if (f.scope == dtu::common::FinderScope::bus && r.owner != "m1") return {};
    return dtu::common::matching_units(f, r);
  }
  static std::string event(const char* type, std::uint64_t id, const DeviceRecord& r,
                           const std::vector<std::uint32_t>& units) {
    std::string out = std::string(type) + " " + std::to_string(id) + " " + r.dtu + "/" + r.device + " [";
    for (auto u : units) out += std::to_string(u) + ",";
    return out + "]";
  }
  void refresh(std::uint64_t id, const DeviceRecord& r) {
    auto units = evaluate(finders.at(id), r);
    auto& mine = cache[id];
    const Key key{r.dtu, r.device};
    const bool had = mine.contains(key);
    if (units.empty()) {
      if (had) {
        mine.erase(key);
        events.push_back("gone " + std::to_string(id) + " " + r.dtu + "/" + r.device + " no_longer_matches");
      }
      return;
    }
    events.push_back(event(had ? "changed" : "matched", id, r, units));
    mine[key] = units;
  }
  void updated(const DeviceRecord& r) {
    for (const auto& [id, f] : finders) refresh(id, r);
  }
  void removed(const std::string& dtu, const std::string& device) {
    for (auto& [id, mine] : cache) {
      if (mine.erase({dtu, device}) > 0) events.push_back("gone " + std::to_string(id) + " " + dtu + "/" + device + " detached");
    }
  }
};

// The registry's events with the matching units, in the reference's format.
std::string describe_units(const Frame& frame) {
  if (frame.type == MessageType::finder_matched) {
    auto m = dtu::common::from_frame<dtu::common::FinderMatchedMsg>(frame);
    REQUIRE(m.ok());
    return BruteForce::event("matched", m->finder_id, m->device, m->units);
  }
  if (frame.type == MessageType::finder_changed) {
    auto m = dtu::common::from_frame<dtu::common::FinderChangedMsg>(frame);
    REQUIRE(m.ok());
    return BruteForce::event("changed", m->finder_id, m->device, m->units);
  }
  return describe(frame);
}

}  // namespace

TEST_CASE("the registry's events equal evaluating every finder against every change") {
  std::mt19937_64 rng(20261122);
  const auto below = [&rng](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
  const std::vector<std::string> dtus{"d1", "d2", "d3", "d10"};
  const std::vector<std::string> ports{"1-1", "1-2", "1-3"};
  const std::vector<std::string> sessions{"S1", "S2", "S3"};
  const std::vector<const char*> finders{
      R"({"function": "printer"})",
      R"({"vid": "04b8", "pid": "0202"})",
      R"({"vid": "046d"})",
      R"({"serial": "SN1"})",
      R"({"serial": "SN*"})",
      R"({"serial": "S?2"})",
      R"({"dtu": "d1"})",
      R"({"dtu": "d1*", "function": "hid"})",
      R"({"scope": "dtu", "scope_dtu": "d2"})",
      R"({"scope": "bus", "unit_class": 7})",
      R"({"product": "Sty*"})",
      R"({})",
      R"({"function": "printer", "scope": "session", "session": "S1"})",
      R"({"scope": "session", "session": "S2"})",
      R"({"serial": "SN2", "scope": "session", "session": "S3"})",
      R"({"usbredir": "0x03,-1,-1,-1,1|-1,-1,-1,-1,0", "scope": "session", "session": "S1"})",
  };

  DeviceList devices;
  SessionTable table;
  FinderRegistry registry{"m1", devices, table};
  BruteForce reference{table, {}, {}, {}};
  std::vector<std::string> events;
  int client = 0;
  FinderRegistry::Sink sink = [&events](Frame frame) { events.push_back(describe_units(frame)); };
  devices.set_listener(DeviceList::Listener{
      [&](const DeviceRecord*, const DeviceRecord& now) {
        registry.device_updated(now);
        reference.updated(now);
      },
      [&](const DeviceRecord& gone, std::string_view) {
        registry.device_removed(gone, "detached");
        reference.removed(gone.dtu, gone.device);
      }});

  std::uint64_t next_finder = 1;
  std::uint64_t stamp = 0;
  std::size_t matched = 0;
  for (int step = 0; step < 3000; ++step) {
    const std::size_t op = below(100);
    if (op < 50) {
      DeviceRecord r = below(2) == 0 ? printer(dtus[below(dtus.size())], ports[below(ports.size())],
                                              below(3) == 0 ? UnitState::allocated : UnitState::free)
                                      : keyboard(dtus[below(dtus.size())], ports[below(ports.size())]);
      const std::size_t serial = below(4);
      if (serial < 3) r.serial = "SN" + std::to_string(serial);
      r.owner = below(2) == 0 ? "m1" : "m2";
      r.stamp = Stamp{100, ++stamp, 0};
      devices.upsert(std::move(r));
    } else if (op < 60) {
      devices.remove(dtus[below(dtus.size())], ports[below(ports.size())], Stamp{100, ++stamp, 0});
    } else if (op < 75) {
      // The reference sees the session at its new DTU as soon as the table does; the registry's
      // events for the move are its own (session_moved), so both sides are brought level first.
      const std::string& session = sessions[below(sessions.size())];
      const auto move = below(4) == 0 ? table.detach(session)
                                      : std::optional(table.attach(session, "u", dtus[below(dtus.size())], {}));
      if (move) registry.session_moved(session, *move);
      for (const auto& [id, f] : reference.finders) {
        if (f.scope != dtu::common::FinderScope::session || *f.session != session) continue;
        auto& mine = reference.cache[id];
        for (auto it = mine.begin(); it != mine.end();) {
          it = move && move->from && it->first.first == *move->from ? mine.erase(it) : std::next(it);
        }
        for (const DeviceRecord& r : devices.list()) {
          auto units = reference.evaluate(f, r);
          if (!units.empty()) mine[{r.dtu, r.device}] = units;
        }
      }
      events.clear();
      reference.events.clear();
      continue;
    } else if (op < 90 || reference.finders.empty()) {
      const std::uint64_t id = next_finder++;
      auto f = finder(finders[below(finders.size())]);
      REQUIRE(registry.add(&client, {"svc", 1, 1}, sink, id, f).ok());
      reference.finders.emplace(id, f);
      for (const DeviceRecord& r : devices.list()) reference.refresh(id, r);
      reference.events.push_back("synced " + std::to_string(id));
    } else {
      auto it = reference.finders.begin();
      std::advance(it, static_cast<std::ptrdiff_t>(below(reference.finders.size())));
      REQUIRE(registry.remove(&client, it->first).ok());
      reference.cache.erase(it->first);
      reference.finders.erase(it);
    }
    CAPTURE(step);
    REQUIRE(events == reference.events);
    matched += events.size();
    events.clear();
    reference.events.clear();
  }
  // The caches agree too (what listings show).
  for (const auto& info : registry.list()) {
    std::map<BruteForce::Key, std::vector<std::uint32_t>> cached;
    for (const auto& m : info.matches) cached[{m.dtu, m.device}] = m.units;
    CHECK(cached == reference.cache[info.finder_id]);
  }
  CHECK(matched > 1000);  // the comparison means something only if events happen
  MESSAGE("events compared: " << matched);
}
