// GroupBroker: two or three managers in one process, each with its own device list, finders,
// leases and sessions, linked by real common::Links over Unix socket pairs (wrapped in PeerLinks,
// as the mesh hands them over). What a service at one manager sees of devices at another:
// matches, changes and removals with its own finder ids, one forwarded registration per distinct
// finder, finder_synced once every live peer synced, orphaned matches when a peer dies and what
// happens when it comes back, ownership news of old incarnations, and lease routing (a fake DTU,
// support/fake_dtu.hpp, behind one manager answers the lease requests).
#include "dtu/devmgr/group_broker.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/group_messages.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/common/state_token.hpp"
#include "dtu/devmgr/dtu_session.hpp"
#include "dtu/devmgr/policy.hpp"
#include "support/async_client.hpp"
#include "support/fake_dtu.hpp"
#include "support/log_capture.hpp"

namespace {

namespace common = dtu::common;
using common::DeviceRecord;
using common::Errc;
using common::Frame;
using common::MessageType;
using dtu::devmgr::DeviceList;
using dtu::devmgr::DtuSession;
using dtu::devmgr::FinderRegistry;
using dtu::devmgr::GroupBroker;
using dtu::devmgr::LeaseBroker;
using dtu::devmgr::LeaseHolder;
using dtu::devmgr::PeerLink;
using dtu::devmgr::Policy;
using dtu::devmgr::SessionTable;
using dtu::testing::FakeDtu;
using LocalSocket = asio::local::stream_protocol::socket;
using Side = common::FilamentMux::Side;
using std::chrono::milliseconds;

// Safety net for every bounded wait: each outcome arrives within milliseconds (or the grace).
constexpr auto kLimit = std::chrono::seconds(10);
// A grace window short enough to wait for.
constexpr auto kShortGrace = milliseconds(200);

common::Link::Options quiet() {
  common::Link::Options options;
  options.heartbeats = false;
  return options;
}

std::uint64_t next_seq = 0;

DeviceRecord printer(const std::string& owner, const std::string& dtu, const std::string& port,
                     common::UnitState state = common::UnitState::free) {
  DeviceRecord r;
  r.dtu = dtu;
  r.device = port;
  r.vid = 0x04b8;
  r.pid = 0x0202;
  r.owner = owner;
  common::UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 7;
  u.function = "printer";
  u.state = state;
  r.units.push_back(u);
  r.stamp = common::Stamp{100, ++next_seq, 0};
  return r;
}

common::Finder finder(const char* json) {
  auto f = common::parse_finder(nlohmann::json::parse(json));
  REQUIRE(f.ok());
  return f.value();
}

// One event as "type finder_id dtu/device [reason|orphaned]".
std::string describe(const Frame& frame) {
  switch (frame.type) {
    case MessageType::finder_matched: {
      auto m = common::from_frame<common::FinderMatchedMsg>(frame);
      REQUIRE(m.ok());
      return "matched " + std::to_string(m->finder_id) + " " + m->device.dtu + "/" + m->device.device +
             (m->device.orphaned ? " orphaned" : "");
    }
    case MessageType::finder_changed: {
      auto m = common::from_frame<common::FinderChangedMsg>(frame);
      REQUIRE(m.ok());
      return "changed " + std::to_string(m->finder_id) + " " + m->device.dtu + "/" + m->device.device +
             (m->device.orphaned ? " orphaned" : "");
    }
    case MessageType::finder_gone: {
      auto m = common::from_frame<common::FinderGoneMsg>(frame);
      REQUIRE(m.ok());
      return "gone " + std::to_string(m->finder_id) + " " + m->dtu + "/" + m->device + " " + m->reason;
    }
    case MessageType::finder_synced: {
      auto m = common::from_frame<common::FinderSyncedMsg>(frame);
      REQUIRE(m.ok());
      return "synced " + std::to_string(m->finder_id);
    }
    case MessageType::lease_ended: {
      auto m = common::from_frame<common::LeaseEndedMsg>(frame);
      REQUIRE(m.ok());
      return "lease_ended " + m->lease + " " + m->reason;
    }
    default: return std::string(common::message_type_name(frame.type));
  }
}

// A local client: what it was sent, in order.
struct Client {
  std::vector<std::string> events;
  FinderRegistry::Sink sink() {
    return [this](Frame f) { events.push_back(describe(f)); };
  }
  bool saw(const std::string& event) const {
    return std::find(events.begin(), events.end(), event) != events.end();
  }
};

// The group key every manager of a test group signs state tokens with.
const common::GroupKeys& test_keys() {
  static const common::GroupKeys keys{common::generate_key(), std::nullopt};
  return keys;
}

// A local service holding leases (what ClientSession is to the broker).
class Holder : public LeaseHolder {
 public:
  unsigned uid() const override { return 1234; }
  unsigned gid() const override { return 100; }
  unsigned pid() const override { return 77; }
  std::string holder_name() const override { return "svc[77]@C"; }
  std::string client_name() const override { return "svc"; }
  void notify(Frame frame) override { events.push_back(describe(frame)); }
  std::vector<std::string> events;
};

// One manager: its tables and its GroupBroker, with the DTU sessions the LeaseBroker looks up.
class Manager {
 public:
  Manager(asio::io_context& io, std::string id, std::uint64_t incarnation, milliseconds grace)
      : id_(std::move(id)),
        finders(id_, devices, sessions),
        leases(LeaseBroker::Context{id_, io.get_executor(), &common::SystemClock::instance(),
                                    [this](const std::string& dtu) -> std::shared_ptr<DtuSession> {
                                      auto it = dtus.find(dtu);
                                      return it == dtus.end() ? nullptr : it->second;
                                    },
                                    &devices, &sessions, [this]() -> const Policy& { return policy; }},
               common::Logger(id_)),
        group(GroupBroker::Context{id_, incarnation, io.get_executor(), &common::SystemClock::instance(),
                                   &devices, &finders, &leases, &sessions, grace,
                                   [this](const std::string& dtu) { return dtus.contains(dtu); },
                                   [this](const std::string& dtu, const std::string& new_owner) {
                                     lost.push_back(dtu + " to " + new_owner);
                                   }},
              common::Logger(id_)) {
    leases.set_group_keys(test_keys());
    devices.set_listener(DeviceList::Listener{
        [this](const DeviceRecord*, const DeviceRecord& now) {
          finders.device_updated(now);
          leases.device_updated(now);
        },
        [this](const DeviceRecord& gone, std::string_view reason) { finders.device_removed(gone, reason); }});
  }
  const std::string& id() const { return id_; }

  // A device of one of this manager's DTUs appears (owner: this manager).
  void plug(const std::string& dtu, const std::string& port,
            common::UnitState state = common::UnitState::free) {
    if (!claimed_.contains(dtu)) {
      claimed_.insert(dtu);
      group.dtu_active(dtu, common::Stamp{100, ++next_seq, 0});
    }
    devices.upsert(printer(id_, dtu, port, state));
  }
  void unplug(const std::string& dtu, const std::string& port) {
    devices.remove(dtu, port, common::Stamp{100, ++next_seq, 0});
  }

 private:
  std::string id_;
  std::set<std::string> claimed_;

 public:
  DeviceList devices;
  SessionTable sessions;
  Policy policy = Policy::builtin();
  FinderRegistry finders;
  LeaseBroker leases;
  std::map<std::string, std::shared_ptr<DtuSession>> dtus;
  std::vector<std::string> lost;  // ownership_lost calls: "<dtu> to <new owner>"
  GroupBroker group;
};

// Everything on one io_context; links close (and their coroutines end) when it goes away.
class Group {
 public:
  ~Group() {
    // The managers hear nothing more (the test's clients are gone already), then go, and with
    // them their timers; the links' coroutines end.
    *over_ = true;
    for (auto& link : links_) link->close(common::Error(Errc::closed, "test over"));
    managers_.clear();
    try {
      io_.restart();
      io_.run_for(std::chrono::seconds(2));
    } catch (...) {
    }
  }

  asio::io_context& io() { return io_; }

  Manager& add(const std::string& id, std::uint64_t incarnation = 1, milliseconds grace = milliseconds(10000)) {
    managers_.push_back(std::make_unique<Manager>(io_, id, incarnation, grace));
    return *managers_.back();
  }

  // Links two managers and tells both GroupBrokers (peer_up). Returns a's end and b's end.
  std::pair<std::shared_ptr<PeerLink>, std::shared_ptr<PeerLink>> connect(Manager& a, Manager& b,
                                                                          std::uint64_t a_incarnation = 1,
                                                                          std::uint64_t b_incarnation = 1) {
    LocalSocket one(io_);
    LocalSocket two(io_);
    asio::local::connect_pair(one, two);
    auto link_a = make_link(std::move(one), Side::initiator, b.id());
    auto link_b = make_link(std::move(two), Side::acceptor, a.id());
    // At a, the link is to b: it carries b's id and incarnation.
    auto at_a = std::make_shared<PeerLink>(link_a, b.id(), b_incarnation, "unix:" + b.id());
    auto at_b = std::make_shared<PeerLink>(link_b, a.id(), a_incarnation, "unix:" + a.id());
    wire(a, at_a);
    wire(b, at_b);
    a.group.peer_up(at_a);
    b.group.peer_up(at_b);
    return {at_a, at_b};
  }

  // A peer link from `a` to a manager that reads everything and never answers.
  std::shared_ptr<PeerLink> connect_silent(Manager& a, const std::string& silent_id) {
    LocalSocket one(io_);
    LocalSocket two(io_);
    asio::local::connect_pair(one, two);
    auto link_a = make_link(std::move(one), Side::initiator, silent_id);
    auto far = make_link(std::move(two), Side::acceptor, a.id());
    far->mux().set_receiver(0, [](Frame) {});
    far->start([](const common::Error&) {});
    auto at_a = std::make_shared<PeerLink>(link_a, silent_id, 1, "unix:" + silent_id);
    wire(a, at_a);
    a.group.peer_up(at_a);
    return at_a;
  }

  // A DTU connected to `m`: its session says hello; `m` serves it from then on. It grants every
  // lease_request, acks a lease_release and then reports the lease ended.
  std::shared_ptr<FakeDtu> attach_dtu(Manager& m, const std::string& dtu) {
    DtuSession::Hooks hooks;
    hooks.on_active = [&m](const std::shared_ptr<DtuSession>& s) { m.dtus[s->dtu()] = s; };
    hooks.on_lease_ended = [&m](const common::LeaseEndedMsg& ended) { m.leases.lease_ended(ended); };
    FakeDtu::Options options;
    options.boot_epoch = 100;
    options.renew_holder = "svc[77]@C";
    options.inband = "127.0.0.1:4711";
    options.end_on_release = true;
    auto fake = FakeDtu::connect(
        io_,
        [this](LocalSocket socket, Side side, std::string peer) {
          return make_link(std::move(socket), side, std::move(peer));
        },
        dtu, m.id(), m.devices, std::move(hooks), std::move(options));
    REQUIRE(run_until([&] { return m.dtus.contains(dtu); }));
    m.group.dtu_active(dtu, common::Stamp{100, ++next_seq, 0});
    return fake;
  }

  bool run_until(const std::function<bool()>& done, common::Duration limit = kLimit) {
    return dtu::testing::run_io_until(io_, done, limit, milliseconds(5));
  }
  // Lets everything in flight arrive (for "nothing more happens").
  void settle(common::Duration period = milliseconds(100)) {
    io_.restart();
    io_.run_for(period);
  }

 private:
  std::shared_ptr<common::Link> make_link(LocalSocket socket, Side side, std::string peer) {
    auto link = common::Link::create(io_.get_executor(), std::make_unique<common::UnixTransport>(std::move(socket)),
                                     side, common::SystemClock::instance(), common::Logger("test"), std::move(peer),
                                     quiet());
    links_.push_back(link);
    return link;
  }
  void wire(Manager& m, const std::shared_ptr<PeerLink>& at) {
    std::weak_ptr<PeerLink> weak = at;
    at->link().mux().set_receiver(0, [&m, weak, over = over_](Frame frame) {
      if (auto l = weak.lock(); l && !*over) m.group.peer_frame(l, std::move(frame));
    });
    at->link().start([&m, weak, over = over_](const common::Error& reason) {
      if (auto l = weak.lock(); l && !*over) m.group.peer_down(l, reason);
    });
    peer_links_.push_back(at);
  }

  asio::io_context io_;
  std::shared_ptr<bool> over_ = std::make_shared<bool>(false);
  std::vector<std::unique_ptr<Manager>> managers_;
  std::vector<std::shared_ptr<common::Link>> links_;
  std::vector<std::shared_ptr<PeerLink>> peer_links_;
};

const FinderRegistry::Owner kOwner{"svc", 77, 1234};

}  // namespace

TEST_CASE("A device at one manager is matched, changed and gone for a finder at another") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  g.connect(a, c);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 7, finder(R"({"vid": "04b8"})")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 7"); }));
  CHECK(client.events == std::vector<std::string>{"matched 7 dtu-a/1-1", "synced 7"});

  a.plug("dtu-a", "1-1", common::UnitState::allocated);
  REQUIRE(g.run_until([&] { return client.saw("changed 7 dtu-a/1-1"); }));
  a.unplug("dtu-a", "1-1");
  REQUIRE(g.run_until([&] { return client.saw("gone 7 dtu-a/1-1 detached"); }));

  // Listings name the owner of each match.
  a.plug("dtu-a", "1-2");
  REQUIRE(g.run_until([&] { return client.saw("matched 7 dtu-a/1-2"); }));
  auto listed = c.group.list_finders();
  REQUIRE(listed.size() == 1);
  REQUIRE(listed[0].matches.size() == 1);
  CHECK(listed[0].matches[0].owner == "A");
  CHECK_FALSE(listed[0].matches[0].orphaned);
  CHECK(c.group.owner_of("dtu-a") == std::optional<std::string>("A"));
  CHECK(c.devices.device_count() == 0);  // records stay segregated by owner
}

TEST_CASE("Two clients with the same finder cost one forwarded registration, and both get their events") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  g.connect(a, c);
  Client one;
  Client two;
  REQUIRE(c.group.add_finder(&one, kOwner, one.sink(), 1, finder(R"({"function": "printer"})")).ok());
  REQUIRE(c.group.add_finder(&two, kOwner, two.sink(), 9, finder(R"({"function": "printer"})")).ok());
  REQUIRE(g.run_until([&] { return one.saw("synced 1") && two.saw("synced 9"); }));
  CHECK(one.saw("matched 1 dtu-a/1-1"));
  CHECK(two.saw("matched 9 dtu-a/1-1"));
  CHECK(a.group.counts("C").finders_held == 1);
  CHECK(a.finders.size() == 1);
  CHECK(c.group.counts("A").finders_sent == 1);

  a.plug("dtu-a", "1-3");
  REQUIRE(g.run_until([&] { return one.saw("matched 1 dtu-a/1-3") && two.saw("matched 9 dtu-a/1-3"); }));

  // The first leaving keeps the registration; the last leaving ends it at the peer.
  REQUIRE(c.group.remove_finder(&one, 1).ok());
  g.settle();
  CHECK(a.group.counts("C").finders_held == 1);
  c.group.remove_client(&two);
  REQUIRE(g.run_until([&] { return a.group.counts("C").finders_held == 0; }));
  CHECK(a.finders.size() == 0);
  CHECK(c.group.counts("A").finders_sent == 0);
}

TEST_CASE("A client joining a forwarded finder gets the cached remote matches at once") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  g.connect(a, c);
  Client first;
  REQUIRE(c.group.add_finder(&first, kOwner, first.sink(), 1, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return first.saw("synced 1"); }));
  Client late;
  REQUIRE(c.group.add_finder(&late, kOwner, late.sink(), 2, finder("{}")).ok());
  // Without running the io_context: from the cache, and synced since every peer has synced.
  CHECK(late.events == std::vector<std::string>{"matched 2 dtu-a/1-1", "synced 2"});
}

TEST_CASE("finder_synced waits for every live peer: a peer that goes down stops counting") {
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  b.plug("dtu-b", "2-1");
  g.connect(a, c);
  g.connect(b, c);
  auto silent = g.connect_silent(c, "S");
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 5, finder("{}")).ok());
  CHECK_FALSE(client.saw("synced 5"));  // the local registry has synced, the peers not yet
  REQUIRE(g.run_until([&] { return client.saw("matched 5 dtu-a/1-1") && client.saw("matched 5 dtu-b/2-1"); }));
  g.settle();
  CHECK_FALSE(client.saw("synced 5"));  // S never answers
  silent->close(common::Error(Errc::closed, "test: S dies"));
  REQUIRE(g.run_until([&] { return client.saw("synced 5"); }));
  CHECK(client.events.back() == "synced 5");
  CHECK(client.events.size() == 3);
}

TEST_CASE("A dead peer's matches are orphaned, then gone owner_lost after the grace window") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C", 1, kShortGrace);
  a.plug("dtu-a", "1-1");
  auto [at_a, at_c] = g.connect(a, c);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 3, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 3"); }));

  at_a->close(common::Error(Errc::closed, "test: A dies"));
  REQUIRE(g.run_until([&] { return client.saw("changed 3 dtu-a/1-1 orphaned"); }));
  auto listed = c.group.list_finders();
  REQUIRE(listed.size() == 1);
  REQUIRE(listed[0].matches.size() == 1);
  CHECK(listed[0].matches[0].orphaned);
  CHECK(a.finders.size() == 0);  // A dropped what C had forwarded
  REQUIRE(g.run_until([&] { return client.saw("gone 3 dtu-a/1-1 owner_lost"); }));
  CHECK(c.group.list_finders()[0].matches.empty());
  CHECK_FALSE(c.group.owner_of("dtu-a").has_value());
}

TEST_CASE("A peer back within the grace window replaces its orphaned matches: what it lost is gone at its synced") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");  // a 10 s grace: nothing expires during this test
  a.plug("dtu-a", "1-1");
  a.plug("dtu-a", "1-2");
  auto [at_a, at_c] = g.connect(a, c);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 4, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 4"); }));
  REQUIRE(client.saw("matched 4 dtu-a/1-2"));

  at_a->close(common::Error(Errc::closed, "test: link lost"));
  REQUIRE(g.run_until([&] {
    return client.saw("changed 4 dtu-a/1-1 orphaned") && client.saw("changed 4 dtu-a/1-2 orphaned");
  }));
  a.unplug("dtu-a", "1-2");  // while the link is down
  client.events.clear();

  g.connect(a, c, 1, 2);  // A restarted: a new incarnation
  REQUIRE(g.run_until([&] { return client.saw("gone 4 dtu-a/1-2 resync"); }));
  CHECK(client.events == std::vector<std::string>{"changed 4 dtu-a/1-1", "gone 4 dtu-a/1-2 resync"});
  auto listed = c.group.list_finders();
  REQUIRE(listed[0].matches.size() == 1);
  CHECK_FALSE(listed[0].matches[0].orphaned);
}

TEST_CASE("Ownership news of an older incarnation does not remove a newer one's") {
  Group g;
  Manager& a = g.add("A", 2);
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  auto [at_a, at_c] = g.connect(a, c, 2, 1);
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a").has_value(); }));
  CHECK(c.group.counts("A").dtus == std::optional<std::uint32_t>(1));

  common::PeerOwnershipMsg stale;
  stale.manager = "A";
  stale.incarnation = 1;
  stale.lost = {"dtu-a"};
  c.group.peer_frame(at_c, common::to_frame(stale));
  CHECK(c.group.owner_of("dtu-a") == std::optional<std::string>("A"));
  stale.full = true;  // an old full announcement without the DTU changes nothing either
  c.group.peer_frame(at_c, common::to_frame(stale));
  CHECK(c.group.owner_of("dtu-a") == std::optional<std::string>("A"));

  common::PeerOwnershipMsg current = stale;
  current.full = false;
  current.incarnation = 2;
  c.group.peer_frame(at_c, common::to_frame(current));
  CHECK_FALSE(c.group.owner_of("dtu-a").has_value());
}

TEST_CASE("An ownership claim with an older stamp loses to the DTU's newer claim at another manager") {
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  g.connect(a, c);
  g.connect(b, c);
  a.group.dtu_active("dtu-x", common::Stamp{100, 5, 0});
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-x") == std::optional<std::string>("A"); }));
  b.group.dtu_active("dtu-x", common::Stamp{100, 9, 0});  // it moved to B
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-x") == std::optional<std::string>("B"); }));
  a.group.dtu_lost("dtu-x");  // A notices late: its loss does not undo B's claim
  g.settle();
  CHECK(c.group.owner_of("dtu-x") == std::optional<std::string>("B"));
}

TEST_CASE("An illegal message on a peer link closes that link only") {
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  auto [at_a, at_c] = g.connect(a, c);
  auto [at_b, at_c2] = g.connect(b, c);
  c.group.peer_frame(at_c, common::to_frame(common::ClientHelloMsg{"intruder"}));
  REQUIRE(g.run_until([&] { return !at_c->is_open(); }));
  g.settle();
  CHECK(at_c2->is_open());
}

TEST_CASE("Allocation for an unknown DTU is not_found, for a dead owner unavailable") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  auto [at_a, at_c] = g.connect(a, c);
  auto holder = std::make_shared<Holder>();
  std::optional<common::Result<common::LeaseGrantedMsg>> answer;
  c.group.allocate(holder, common::AllocateMsg{"dtu-nowhere", "1-1", 0, 0, std::nullopt, false},
                   [&](common::Result<common::LeaseGrantedMsg> r) { answer = std::move(r); });
  REQUIRE(answer.has_value());
  REQUIRE_FALSE(answer->ok());
  CHECK(answer->error().code == make_error_code(Errc::not_found));
  CHECK(answer->error().detail == "DTU dtu-nowhere is not connected to any manager of the group");

  a.plug("dtu-a", "1-1");
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a").has_value(); }));
  at_a->close(common::Error(Errc::closed, "test: A dies"));
  REQUIRE(g.run_until([&] { return !at_c->is_open(); }));
  g.settle();
  answer.reset();
  c.group.allocate(holder, common::AllocateMsg{"dtu-a", "1-1", 0, 0, std::nullopt, false},
                   [&](common::Result<common::LeaseGrantedMsg> r) { answer = std::move(r); });
  REQUIRE(answer.has_value());
  REQUIRE_FALSE(answer->ok());
  CHECK(answer->error().code == make_error_code(Errc::unavailable));
}

TEST_CASE("A remote allocation goes to the owner with the service's identity, and lease_ended comes back") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  g.connect(a, c);
  auto dtu = g.attach_dtu(a, "dtu-a");
  a.devices.upsert(printer("A", "dtu-a", "1-1"));
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a").has_value(); }));

  auto holder = std::make_shared<Holder>();
  std::optional<common::Result<common::LeaseGrantedMsg>> granted;
  c.group.allocate(holder, common::AllocateMsg{"dtu-a", "1-1", 0, 30000, std::nullopt, false},
                   [&](common::Result<common::LeaseGrantedMsg> r) { granted = std::move(r); });
  REQUIRE(g.run_until([&] { return granted.has_value(); }));
  REQUIRE_MESSAGE(granted->ok(), granted->error().describe());
  CHECK((*granted)->lease == "L1");
  CHECK((*granted)->token == std::optional<std::string>(std::string(64, 'a')));
  REQUIRE(dtu->requests.size() == 1);
  CHECK(dtu->requests[0].holder == "svc[77]@C");
  CHECK(dtu->requests[0].uid == std::optional<std::uint32_t>(1234));
  CHECK(c.group.remote_leases() == 1);
  auto at_owner = a.leases.list();
  REQUIRE(at_owner.size() == 1);
  CHECK(at_owner[0].uid == 1234);

  std::optional<common::Result<common::LeaseGrantedMsg>> renewed;
  c.group.renew(holder, common::RenewMsg{"dtu-a", "L1", 10000},
                [&](common::Result<common::LeaseGrantedMsg> r) { renewed = std::move(r); });
  REQUIRE(g.run_until([&] { return renewed.has_value(); }));
  CHECK(renewed->ok());

  std::optional<common::Result<void>> released;
  c.group.release(holder, common::ReleaseMsg{"dtu-a", "L1"}, [&](common::Result<void> r) { released = std::move(r); });
  REQUIRE(g.run_until([&] { return released.has_value(); }));
  CHECK(released->ok());
  REQUIRE(g.run_until([&] { return !holder->events.empty(); }));
  CHECK(holder->events == std::vector<std::string>{"lease_ended L1 released"});
  CHECK(c.group.remote_leases() == 0);
  g.settle();
  CHECK(a.leases.size() == 0);
}

TEST_CASE("A client that closes releases its remote leases at the owner") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  g.connect(a, c);
  auto dtu = g.attach_dtu(a, "dtu-a");
  a.devices.upsert(printer("A", "dtu-a", "1-1"));
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a").has_value(); }));
  auto holder = std::make_shared<Holder>();
  std::optional<common::Result<common::LeaseGrantedMsg>> granted;
  c.group.allocate(holder, common::AllocateMsg{"dtu-a", "1-1", 0, 0, std::nullopt, false},
                   [&](common::Result<common::LeaseGrantedMsg> r) { granted = std::move(r); });
  REQUIRE(g.run_until([&] { return granted.has_value(); }));
  REQUIRE(granted->ok());
  c.group.holder_closed(holder.get());
  REQUIRE(g.run_until([&] { return dtu->releases.size() == 1; }));
  CHECK(dtu->releases[0].lease == (*granted)->lease);
  REQUIRE(g.run_until([&] { return a.leases.size() == 0; }));
  CHECK(holder->events.empty());  // nobody is left to tell
}

TEST_CASE("list_group_devices answers with this manager's devices and every live peer's") {
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  a.plug("dtu-a", "1-1");
  b.plug("dtu-b", "2-1");
  c.plug("dtu-c", "3-1");
  g.connect(a, c);
  g.connect(b, c);
  std::optional<std::vector<DeviceRecord>> listed;
  c.group.list_group_devices(std::nullopt, [&](std::vector<DeviceRecord> d) { listed = std::move(d); });
  REQUIRE(g.run_until([&] { return listed.has_value(); }));
  REQUIRE(listed->size() == 3);
  CHECK((*listed)[0].owner == "A");
  CHECK((*listed)[1].owner == "B");
  CHECK((*listed)[2].owner == "C");
}

TEST_CASE(
    "A DTU that re-homes to another peer within the grace window shows up as changed, never gone then "
    "matched") {
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");  // a 10 s grace: nothing expires during this test
  a.plug("dtu-a", "1-1");
  g.connect(a, c);
  g.connect(b, c);
  g.connect(a, b);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 5, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 5"); }));
  REQUIRE(client.saw("matched 5 dtu-a/1-1"));
  client.events.clear();

  // The DTU's link to A drops: A's view says gone dtu_lost; the client sees it orphaned.
  a.devices.drop_dtu("dtu-a");
  a.group.dtu_lost("dtu-a");
  REQUIRE(g.run_until([&] { return client.saw("changed 5 dtu-a/1-1 orphaned"); }));
  // It connects to B.
  b.plug("dtu-a", "1-1");
  REQUIRE(g.run_until([&] { return client.saw("changed 5 dtu-a/1-1"); }));
  g.settle();
  CHECK(client.events == std::vector<std::string>{"changed 5 dtu-a/1-1 orphaned", "changed 5 dtu-a/1-1"});
  auto listed = c.group.list_finders();
  REQUIRE(listed.size() == 1);
  REQUIRE(listed[0].matches.size() == 1);
  CHECK(listed[0].matches[0].owner == "B");
  CHECK_FALSE(listed[0].matches[0].orphaned);
  CHECK(c.group.owner_of("dtu-a") == std::optional<std::string>("B"));
}

TEST_CASE("A DTU lost here and found at a peer within the grace window shows up as changed") {
  Group g;
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  c.plug("dtu-c", "1-1");
  g.connect(b, c);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 6, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 6"); }));
  client.events.clear();

  c.devices.drop_dtu("dtu-c");
  c.group.dtu_lost("dtu-c");
  REQUIRE(g.run_until([&] { return client.saw("changed 6 dtu-c/1-1 orphaned"); }));
  b.plug("dtu-c", "1-1");
  REQUIRE(g.run_until([&] { return client.saw("changed 6 dtu-c/1-1"); }));
  g.settle();
  CHECK(client.events == std::vector<std::string>{"changed 6 dtu-c/1-1 orphaned", "changed 6 dtu-c/1-1"});
  CHECK(c.group.list_finders()[0].matches[0].owner == "B");
}

TEST_CASE("A lost DTU that comes back nowhere within the grace window is gone dtu_lost") {
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C", 1, kShortGrace);
  a.plug("dtu-a", "1-1");
  a.plug("dtu-a", "1-2");
  g.connect(a, c);
  Client client;
  REQUIRE(c.group.add_finder(&client, kOwner, client.sink(), 7, finder("{}")).ok());
  REQUIRE(g.run_until([&] { return client.saw("synced 7"); }));
  client.events.clear();

  // A real unplug is gone at once; the loss of the DTU waits for the grace window.
  a.unplug("dtu-a", "1-2");
  REQUIRE(g.run_until([&] { return client.saw("gone 7 dtu-a/1-2 detached"); }));
  a.devices.drop_dtu("dtu-a");
  a.group.dtu_lost("dtu-a");
  REQUIRE(g.run_until([&] { return client.saw("gone 7 dtu-a/1-1 dtu_lost"); }));
  CHECK(client.events == std::vector<std::string>{"gone 7 dtu-a/1-2 detached", "changed 7 dtu-a/1-1 orphaned",
                                                  "gone 7 dtu-a/1-1 dtu_lost"});
  CHECK(c.group.list_finders()[0].matches.empty());
}

TEST_CASE("A peer's newer claim on a DTU connected here takes it: ownership_lost") {
  dtu::testing::LogCapture log;
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  g.connect(a, c);
  c.group.dtu_active("dtu-x", common::Stamp{100, 7, 0});
  REQUIRE(g.run_until([&] { return a.group.owner_of("dtu-x") == std::optional<std::string>("C"); }));
  // The DTU rebooted (a later boot epoch, a lower seq) and connected to A.
  a.group.dtu_active("dtu-x", common::Stamp{200, 1, 0});
  REQUIRE(g.run_until([&] { return !c.lost.empty(); }));
  CHECK(c.lost == std::vector<std::string>{"dtu-x to A"});
  CHECK(c.group.owner_of("dtu-x") == std::optional<std::string>("A"));
  CHECK(log.has({"ownership_lost", "dtu-x", "owner=A"}));
  g.settle();
  CHECK(a.lost.empty());
}

TEST_CASE("A peer's older claim on a DTU connected here is ignored and ours announced again") {
  dtu::testing::LogCapture log;
  Group g;
  Manager& a = g.add("A");
  Manager& c = g.add("C");
  auto [at_a, at_c] = g.connect(a, c);
  c.group.dtu_active("dtu-x", common::Stamp{100, 7, 0});
  REQUIRE(g.run_until([&] { return a.group.owner_of("dtu-x") == std::optional<std::string>("C"); }));
  // A (hung until now) announces its claim from the DTU's earlier link: older than C's, so it
  // loses whatever the arrival order.
  common::PeerOwnershipMsg stale;
  stale.manager = "A";
  stale.incarnation = 1;
  stale.owned.push_back(common::OwnedDtu{"dtu-x", common::Stamp{100, 3, 0}, 1});
  c.group.peer_frame(at_c, common::to_frame(stale));
  CHECK(log.has({"stale_claim_ignored", "dtu-x", "peer=A"}));
  CHECK(c.group.owner_of("dtu-x") == std::optional<std::string>("C"));
  g.settle();
  CHECK(c.lost.empty());

  // A DTU link that turns out older than a claim A knows of loses at once.
  a.group.dtu_active("dtu-x", common::Stamp{100, 3, 0});
  REQUIRE(g.run_until([&] { return !a.lost.empty(); }));
  CHECK(a.lost == std::vector<std::string>{"dtu-x to C"});
  CHECK(a.group.owner_of("dtu-x") == std::optional<std::string>("C"));
}

TEST_CASE(
    "A lease survives its owner's death: renewals wait, the new owner adopts it and its end reaches the "
    "service") {
  dtu::testing::LogCapture log;
  Group g;
  Manager& a = g.add("A");
  Manager& b = g.add("B");
  Manager& c = g.add("C");
  auto [at_a, at_c] = g.connect(a, c);
  g.connect(b, c);
  auto old_dtu = g.attach_dtu(a, "dtu-a");
  a.devices.upsert(printer("A", "dtu-a", "1-1"));
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a") == std::optional<std::string>("A"); }));

  auto holder = std::make_shared<Holder>();
  std::optional<common::Result<common::LeaseGrantedMsg>> granted;
  c.group.allocate(holder, common::AllocateMsg{"dtu-a", "1-1", 0, 30000, std::nullopt, false},
                   [&](common::Result<common::LeaseGrantedMsg> r) { granted = std::move(r); });
  REQUIRE(g.run_until([&] { return granted.has_value(); }));
  REQUIRE(granted->ok());
  REQUIRE((*granted)->state_token.has_value());  // the service's copy, through C
  REQUIRE(old_dtu->requests.size() == 1);
  REQUIRE(old_dtu->requests[0].state_token.has_value());  // the DTU's copy
  auto origin = common::verify_state_token(*old_dtu->requests[0].state_token, test_keys());
  REQUIRE(origin.ok());
  CHECK(origin->origin == "C");
  CHECK(origin->issued_by == "A");

  // A dies. Until the DTU has a new owner, a renewal is unavailable (the library retries).
  at_a->close(common::Error(Errc::closed, "test: A dies"));
  REQUIRE(g.run_until([&] { return !at_c->is_open(); }));
  std::optional<common::Result<common::LeaseGrantedMsg>> renewed;
  c.group.renew(holder, common::RenewMsg{"dtu-a", "L1", 0},
                [&](common::Result<common::LeaseGrantedMsg> r) { renewed = std::move(r); });
  REQUIRE(g.run_until([&] { return renewed.has_value(); }));
  REQUIRE_FALSE(renewed->ok());
  CHECK(renewed->error().code == make_error_code(Errc::unavailable));

  // The DTU re-homes to B and reports its lease with the token it kept.
  auto new_dtu = g.attach_dtu(b, "dtu-a");
  b.devices.upsert(printer("B", "dtu-a", "1-1"));
  b.leases.adopt("dtu-a", {common::LeaseReport{"L1", "1-1", 0, "svc[77]@C", 1234, 25000,
                                               old_dtu->requests[0].state_token}});
  CHECK(log.has({"lease_adopted", "L1", "origin=C"}));
  REQUIRE(g.run_until([&] { return c.group.owner_of("dtu-a") == std::optional<std::string>("B"); }));

  // The service's renewal now goes to B, which accepts it.
  renewed.reset();
  c.group.renew(holder, common::RenewMsg{"dtu-a", "L1", 0},
                [&](common::Result<common::LeaseGrantedMsg> r) { renewed = std::move(r); });
  REQUIRE(g.run_until([&] { return renewed.has_value(); }));
  REQUIRE_MESSAGE(renewed->ok(), renewed->error().describe());

  // Its end, at B, reaches the service at C.
  new_dtu->link->post(0, common::to_frame(common::LeaseEndedMsg{"dtu-a", "L1", "1-1", 0, "expired"}),
                      std::chrono::seconds(5), [](common::Result<Frame>) {});
  REQUIRE(g.run_until([&] { return !holder->events.empty(); }));
  CHECK(holder->events == std::vector<std::string>{"lease_ended L1 expired"});
  CHECK(c.group.remote_leases() == 0);
}
