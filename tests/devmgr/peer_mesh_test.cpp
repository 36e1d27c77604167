#include "dtu/devmgr/peer_mesh.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/transport.hpp"
#include "support/log_capture.hpp"
#include "support/async_client.hpp"

using namespace std::chrono_literals;
using dtu::common::Endpoint;
using dtu::common::GroupKeys;
using dtu::common::SecretKey;
using dtu::devmgr::GroupMember;
using dtu::devmgr::PeerLink;
using dtu::devmgr::PeerMesh;

namespace {

// Test pace: heartbeats every 150 ms (3 misses), so a lost link is noticed within half a second.
constexpr auto kHeartbeat = 150ms;
// Bound of every wait for the mesh to settle: generous for a loaded 2-core machine.
constexpr auto kSettleLimit = 15s;

// Collects every log line (all meshes of a test log through one sink); each node logs with its
// id as the component, so "<level> m2 ..." lines are m2's.
using dtu::testing::LogCapture;

// A port no one listens on right now at `host` (these loopback addresses are this test's own).
std::uint16_t free_port(asio::io_context& io, const std::string& host) {
  asio::ip::tcp::acceptor probe(io, asio::ip::tcp::endpoint(asio::ip::make_address(host), 0));
  return probe.local_endpoint().port();
}

struct Node {
  GroupMember member;
  GroupKeys keys;
  std::uint64_t incarnation = 0;
  std::unique_ptr<PeerMesh> mesh;
  std::map<std::string, int> ups;    // by peer id
  std::map<std::string, int> downs;  // by peer id
  std::vector<std::string> down_reasons;
  std::vector<dtu::common::Frame> frames;
};

class Group {
 public:
  // `count` managers m1..mN on 127.0.0.(50+i), all with the same key.
  explicit Group(int count, std::uint64_t first_incarnation = 1) {
    const SecretKey key = dtu::common::generate_key();
    for (int i = 0; i < count; ++i) {
      auto node = std::make_unique<Node>();
      const std::string host = "127.0.0." + std::to_string(50 + i);
      node->member = GroupMember{"m" + std::to_string(i + 1), Endpoint{host, free_port(io_, host)}};
      node->keys = GroupKeys{key, std::nullopt};
      node->incarnation = first_incarnation;
      nodes_.push_back(std::move(node));
    }
  }
  ~Group() {
    for (auto& n : nodes_) n->mesh.reset();
    io_.restart();
    io_.poll();
  }

  Node& node(int i) { return *nodes_[static_cast<std::size_t>(i)]; }
  int size() const { return static_cast<int>(nodes_.size()); }
  std::vector<GroupMember> members() const {
    std::vector<GroupMember> out;
    for (const auto& n : nodes_) out.push_back(n->member);
    return out;
  }

  // Creates and starts node i's mesh with `members` (default: the whole group).
  void start(int i, std::optional<std::vector<GroupMember>> members = std::nullopt) {
    Node& n = node(i);
    PeerMesh::Options options;
    options.id = n.member.id;
    options.listen = n.member.address;
    options.members = members ? *members : this->members();
    options.keys = n.keys;
    options.incarnation = n.incarnation;
    options.heartbeat_interval = kHeartbeat;
    options.heartbeat_misses = 3;
    options.handshake_timeout = 2s;
    Node* np = &n;
    PeerMesh::Hooks hooks{[np](const std::shared_ptr<PeerLink>& link) { ++np->ups[link->id()]; },
                          [np](const std::shared_ptr<PeerLink>& link, const dtu::common::Error& reason) {
                            ++np->downs[link->id()];
                            np->down_reasons.push_back(reason.describe());
                          },
                          [np](const std::shared_ptr<PeerLink>&, dtu::common::Frame frame) {
                            np->frames.push_back(std::move(frame));
                          }};
    n.mesh = std::make_unique<PeerMesh>(io_.get_executor(), dtu::common::SystemClock::instance(), options,
                                        hooks, dtu::common::Logger(n.member.id));
    auto started = n.mesh->start();
    REQUIRE_MESSAGE(started.ok(), (started.ok() ? "" : started.error().describe()));
  }
  void stop(int i) {
    node(i).mesh->stop();
    node(i).mesh.reset();
  }

  bool running(int i) { return node(i).mesh != nullptr; }

  // Runs the io_context until `done()` holds or `limit` passes; returns done().
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds limit = kSettleLimit) {
    return dtu::testing::run_io_until(io_, done, limit);
  }
  // Lets the meshes run for `d` (to show that nothing more happens: no churn).
  void run_for(std::chrono::milliseconds d) {
    run_until([] { return false; }, d);
  }

  // Every running node has a live link to every other running node.
  bool fully_linked() {
    for (int i = 0; i < size(); ++i) {
      if (!running(i)) continue;
      for (int j = 0; j < size(); ++j) {
        if (i == j || !running(j)) continue;
        auto link = node(i).mesh->peer(node(j).member.id);
        if (!link || !link->is_open()) return false;
      }
    }
    return true;
  }

  // Both ends of each pair hold the same TCP connection: one link per pair, not two crossing.
  void check_one_link_per_pair() {
    for (int i = 0; i < size(); ++i) {
      if (!running(i)) continue;
      CHECK(node(i).mesh->peers().size() == static_cast<std::size_t>(running_count() - 1));
      for (int j = i + 1; j < size(); ++j) {
        if (!running(j)) continue;
        auto a = node(i).mesh->peer(node(j).member.id);
        auto b = node(j).mesh->peer(node(i).member.id);
        REQUIRE(a);
        REQUIRE(b);
        CHECK(local(*a) == remote(*b));
        CHECK(remote(*a) == local(*b));
      }
    }
  }
  int running_count() {
    int n = 0;
    for (int i = 0; i < size(); ++i) n += running(i) ? 1 : 0;
    return n;
  }
  std::uint64_t links_established_total() {
    std::uint64_t total = 0;
    for (int i = 0; i < size(); ++i) total += running(i) ? node(i).mesh->links_established() : 0;
    return total;
  }

  asio::io_context& io() { return io_; }

 private:
  static asio::ip::tcp::socket& socket_of(PeerLink& link) {
    auto* tls = dynamic_cast<dtu::common::TlsTransport*>(&link.link().transport());
    REQUIRE(tls != nullptr);
    return tls->socket();
  }
  static asio::ip::tcp::endpoint local(PeerLink& link) { return socket_of(link).local_endpoint(); }
  static asio::ip::tcp::endpoint remote(PeerLink& link) { return socket_of(link).remote_endpoint(); }

  asio::io_context io_;  // first: destroyed last
  std::vector<std::unique_ptr<Node>> nodes_;
};

}  // namespace

TEST_CASE("three managers started one after another form a full mesh with one link per pair") {
  LogCapture logs;
  Group group(3);
  for (int i = 0; i < group.size(); ++i) {
    group.start(i);
    group.run_until([] { return false; }, 50ms);
  }
  REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
  group.run_for(4 * kHeartbeat);  // any second link or churn would show now
  group.check_one_link_per_pair();
  CHECK(group.links_established_total() == 6);  // 3 pairs, counted at both ends
  for (int i = 0; i < group.size(); ++i) {
    for (const auto& [peer, ups] : group.node(i).ups) CHECK(ups == 1);
    CHECK(group.node(i).downs.empty());
  }
  // The lower address dials: m1 (127.0.0.50) is the initiator of both its links.
  CHECK(logs.count({" m1 ", "peer_up", "peer=m2", "role=initiator"}) == 1);
  CHECK(logs.count({" m2 ", "peer_up", "peer=m1", "role=acceptor"}) == 1);
  CHECK(logs.count({" m3 ", "peer_up", "peer=m2", "role=acceptor"}) == 1);
}

TEST_CASE("five managers started at once form a full mesh with one link per pair") {
  LogCapture logs;
  Group group(5);
  for (int i = 0; i < group.size(); ++i) group.start(i);
  REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
  group.run_for(4 * kHeartbeat);
  group.check_one_link_per_pair();
  CHECK(group.links_established_total() == 20);  // 10 pairs, counted at both ends
  for (int i = 0; i < group.size(); ++i) CHECK(group.node(i).downs.empty());
}

TEST_CASE("a live peer link carries frames and reports its incarnation, rtt and offset") {
  LogCapture logs;
  Group group(2, 7);
  group.start(0);
  group.start(1);
  REQUIRE(group.run_until([&] { return group.fully_linked(); }));
  auto link = group.node(0).mesh->peer("m2");
  REQUIRE(link);
  CHECK(link->id() == "m2");
  CHECK(link->incarnation() == 7);
  CHECK(link->address() == group.node(1).member.address.to_string());
  link->notify(dtu::common::to_frame(dtu::common::ReloadGroupMsg{}));
  REQUIRE(group.run_until([&] { return !group.node(1).frames.empty(); }));
  CHECK(group.node(1).frames.front().type == dtu::common::MessageType::reload_group);

  // A heartbeat round trip gives the rtt and offset.
  REQUIRE(group.run_until([&] {
    auto status = group.node(0).mesh->status();
    return status.size() == 1 && status[0].rtt_ms.has_value();
  }));
  auto status = group.node(0).mesh->status();
  CHECK(status[0].id == "m2");
  CHECK(status[0].address == group.node(1).member.address.to_string());
  CHECK_FALSE(status[0].self);
  CHECK(status[0].state == "up");
  CHECK(status[0].incarnation == 7);
  CHECK(status[0].offset_ms.has_value());
  CHECK(status[0].last_heard_ms_ago.has_value());
}

TEST_CASE("a stopped manager is reported down and links again, once per pair, when it restarts") {
  LogCapture logs;
  Group group(4);
  for (int i = 0; i < group.size(); ++i) group.start(i);
  REQUIRE(group.run_until([&] { return group.fully_linked(); }));

  // m2: the initiator towards m3 and m4, the responder towards m1.
  group.stop(1);
  REQUIRE_MESSAGE(group.run_until([&] {
    for (int i : {0, 2, 3}) {
      if (group.node(i).downs["m2"] != 1) return false;
    }
    return true;
  }),
                  logs.text());
  for (int i : {0, 2, 3}) {
    CHECK(group.node(i).mesh->peer("m2") == nullptr);
    auto status = group.node(i).mesh->status();
    auto m2 = std::find_if(status.begin(), status.end(), [](const auto& s) { return s.id == "m2"; });
    REQUIRE(m2 != status.end());
    CHECK(m2->state != "up");
    CHECK_FALSE(m2->last_error.empty());
  }

  group.node(1).incarnation = 2;
  group.node(1).ups.clear();
  group.start(1);
  REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
  group.run_for(4 * kHeartbeat);
  group.check_one_link_per_pair();
  for (int i : {0, 2, 3}) {
    CHECK(group.node(i).mesh->peer("m2")->incarnation() == 2);
    CHECK(group.node(i).ups["m2"] == 2);
    CHECK(group.node(i).downs["m2"] == 1);
  }
  // Exactly one new link per pair with m2; the other links were untouched.
  CHECK(group.node(1).mesh->links_established() == 3);
  for (int i : {0, 2, 3}) CHECK(group.node(i).mesh->links_established() == 4);
}

TEST_CASE("a higher manager started first makes the lower one dial at once instead of after its backoff") {
  LogCapture logs;
  Group group(2);
  // m1 (lower, the initiator) alone: its dials to m2 fail and its backoff grows.
  group.start(0);
  REQUIRE(group.run_until([&] { return logs.count({" m1 ", "peer_dial_failed", "peer=m2"}) >= 5; }));
  // Its next dial is at least 800 ms away (base 1.6 s x jitter >= 0.5); m2 asks after one
  // heartbeat interval (150 ms).
  const std::size_t failures = logs.count({" m1 ", "peer_dial_failed", "peer=m2"});
  group.start(1);
  REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
  CHECK(logs.count({" m2 ", "please_initiate_sent", "peer=m1"}) >= 1);
  CHECK(logs.count({" m1 ", "please_initiate_received", "peer=m2", "action=dialing"}) == 1);
  // The link came from the dial please_initiate triggered, not from a backoff timer that fired
  // after another failure.
  CHECK(logs.count({" m1 ", "peer_dial_failed", "peer=m2"}) == failures);
  CHECK(logs.count({" m1 ", "peer_up", "peer=m2", "role=initiator"}) == 1);
  group.run_for(4 * kHeartbeat);
  group.check_one_link_per_pair();
  CHECK(group.links_established_total() == 2);
}

TEST_CASE("reload adds a peer and removes one") {
  LogCapture logs;
  Group group(3);
  const auto all = group.members();
  const std::vector<GroupMember> two = {all[0], all[1]};
  group.start(0, two);
  group.start(1, two);
  group.start(2, all);
  REQUIRE(group.run_until([&] { return group.node(0).mesh->peer("m2") != nullptr; }));
  // m3 is not (yet) in m1's and m2's lists: their TLS refuses it.
  REQUIRE(group.run_until([&] { return logs.count({" m1 ", "peer_auth_failed"}) >= 1; }));
  CHECK(group.node(2).mesh->peers().empty());

  group.node(0).mesh->reload(all, group.node(0).keys);
  group.node(1).mesh->reload(all, group.node(1).keys);
  REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
  group.check_one_link_per_pair();

  // m1 drops m3: both ends see the link go down, and it stays down (m1's TLS refuses m3).
  group.node(0).mesh->reload(two, group.node(0).keys);
  CHECK(group.node(0).downs["m3"] == 1);
  CHECK(group.node(0).mesh->peer("m3") == nullptr);
  REQUIRE(group.run_until([&] { return group.node(2).downs["m1"] == 1; }));
  group.run_for(4 * kHeartbeat);
  CHECK(group.node(0).mesh->peer("m3") == nullptr);
  CHECK(group.node(2).mesh->peer("m1") == nullptr);
  CHECK(group.node(0).ups["m3"] == 1);
  auto status = group.node(0).mesh->status();
  REQUIRE(status.size() == 1);
  CHECK(status[0].id == "m2");
  // m2 and m3 keep their link.
  CHECK(group.node(1).mesh->peer("m3") != nullptr);
  CHECK(group.node(1).downs["m3"] == 0);
}

TEST_CASE("a manager with another group key never links, and the logs say why") {
  LogCapture logs;
  Group group(2);
  group.node(1).keys = GroupKeys{dtu::common::generate_key(), std::nullopt};
  group.start(0);
  group.start(1);
  REQUIRE(group.run_until([&] {
    return logs.count({" m1 ", "peer_dial_failed", "peer=m2"}) >= 3 &&
           logs.count({" m2 ", "peer_auth_failed"}) >= 3;
  }));
  CHECK(group.node(0).ups.empty());
  CHECK(group.node(1).ups.empty());
  CHECK(group.node(0).mesh->peer("m2") == nullptr);
  // The dialer and the acceptor both say it is the TLS handshake (the PSK) that failed.
  CHECK(logs.count({" m1 ", "peer_dial_failed", "TLS handshake failed"}) >= 1);
  CHECK(logs.count({" m2 ", "peer_auth_failed", "TLS handshake failed"}) >= 1);
  auto status = group.node(0).mesh->status();
  REQUIRE(status.size() == 1);
  CHECK(status[0].state != "up");
  CHECK(status[0].last_error.find("TLS") != std::string::npos);
}

TEST_CASE("during a key rotation a manager with the new key links with one that has it as next") {
  const SecretKey k1 = dtu::common::generate_key();
  const SecretKey k2 = dtu::common::generate_key();
  SUBCASE("the dialer has only the new key") {
    LogCapture logs;
    Group group(2);
    group.node(0).keys = GroupKeys{k2, std::nullopt};
    group.node(1).keys = GroupKeys{k1, k2};
    group.start(0);
    group.start(1);
    REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
    CHECK(logs.count({" m1 ", "peer_dial_failed"}) == 0);
  }
  SUBCASE("the dialer still offers the old key first") {
    LogCapture logs;
    Group group(2);
    group.node(0).keys = GroupKeys{k1, k2};
    group.node(1).keys = GroupKeys{k2, std::nullopt};
    group.start(0);
    group.start(1);
    REQUIRE_MESSAGE(group.run_until([&] { return group.fully_linked(); }), logs.text());
    // The retry with the next key happens within the same dial.
    CHECK(logs.count({" m1 ", "peer_dial_failed"}) == 0);
  }
}

TEST_CASE("a peer that opens a filament is a protocol error: the link closes and comes back") {
  LogCapture logs;
  Group group(2);
  group.start(0);
  group.start(1);
  REQUIRE(group.run_until([&] { return group.fully_linked(); }));
  auto link = group.node(0).mesh->peer("m2");
  REQUIRE(link);
  REQUIRE(link->link().mux().open("side channel").ok());
  REQUIRE(group.run_until([&] { return group.node(1).downs["m1"] == 1 && group.node(0).downs["m2"] == 1; }));
  CHECK(logs.count({" m2 ", "peer_protocol_error", "peer=m1"}) == 1);
  REQUIRE(group.run_until([&] { return group.fully_linked(); }));
  CHECK(group.node(0).ups["m2"] == 2);
}
