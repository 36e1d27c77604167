// Attacks on a real devmgr's mesh port (127.0.0.19:4720) from a raw client in this process: a
// wrong group key, a replayed proof from another connection, the manager's own MAC reflected
// back, an application message before the proof, and a client that stalls after TLS. Each one
// is cut off with a log line naming the address, and the manager keeps serving.
#include <doctest/doctest.h>

#include <memory>
#include <regex>
#include <string>

#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/peer_auth.hpp"
#include "dtu/common/peer_messages.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::common::Bytes;
using dtu::common::Frame;
using dtu::common::Link;
using dtu::common::SecretKey;
using dtu::testing::AsyncClient;
using dtu::testing::kSettle;
using dtu::testing::Site;
using namespace std::chrono_literals;
namespace common = dtu::common;

namespace {

constexpr auto kStep = 3s;

// One TLS connection to m1's mesh port, posing as group member m9 (which holds the group key:
// an insider, or a stolen key, is what the challenge-response must still stop from replaying).
struct RawPeer {
  std::shared_ptr<Link> link;
  Bytes pair_key;
  Bytes exporter;
  bool closed = false;
};

std::unique_ptr<RawPeer> dial(AsyncClient& c, const SecretKey& key) {
  auto peer = std::make_unique<RawPeer>();
  auto connect = common::tcp_connect(common::Endpoint{"127.0.0.19", dtu::testing::kMeshPort}, kStep);
  auto socket = c.await(std::move(connect));
  REQUIRE(socket.ok());
  auto context = common::make_psk_client_context();
  peer->pair_key = common::derive_pair_key(key, "m9", "m1");
  auto handshake = common::tls_connect(std::move(socket.value()), *context, common::peer_psk_identity("m9", "m1", key),
                                       peer->pair_key, kStep);
  auto transport = c.await(std::move(handshake));
  if (!transport.ok()) return nullptr;
  auto exporter = common::peer_auth_exporter((*transport)->ssl());
  REQUIRE(exporter.ok());
  peer->exporter = *exporter;
  common::Link::Options options;
  options.heartbeat_interval = 200ms;
  peer->link = Link::create(c.executor(), std::move(transport.value()), common::FilamentMux::Side::initiator,
                            common::SystemClock::instance(), common::Logger("attacker"), "m1", options);
  peer->link->start([p = peer.get()](const common::Error&) { p->closed = true; });
  return peer;
}

// Step 1: our nonce out, the manager's challenge back.
common::PeerAuthChallengeMsg challenge(AsyncClient& c, RawPeer& peer, const Bytes& nonce) {
  auto request = peer.link->request(0, common::to_frame(common::PeerAuthInitMsg{"m9", "m1", common::to_hex(nonce)}), kStep);
  auto reply = c.await(std::move(request));
  REQUIRE(reply.ok());
  auto msg = common::from_frame<common::PeerAuthChallengeMsg>(*reply);
  REQUIRE(msg.ok());
  return *msg;
}

common::PeerAuthProofMsg proof(const std::string& mac) {
  common::PeerAuthProofMsg m;
  m.mac = mac;
  m.hello = common::PeerHello{"m9", 1, "127.0.0.20:4720", std::string(common::kVersion)};
  m.purpose = common::PeerPurpose::please_initiate;
  return m;
}

// Sends the proof; true when the manager refused it (an error reply or the link cut) and the
// link is closed afterwards.
bool refused(AsyncClient& c, RawPeer& peer, const common::PeerAuthProofMsg& m) {
  auto request = peer.link->request(0, common::to_frame(m), kStep);
  auto reply = c.await(std::move(request));
  const bool welcomed = reply.ok() && reply->type == common::MessageType::peer_welcome;
  c.run_until([&] { return peer.closed; }, kSettle);
  return !welcomed && peer.closed;
}

std::size_t count_lines(const std::string& log, const std::regex& re) {
  std::size_t n = 0;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it) ++n;
  return n;
}

}  // namespace

TEST_CASE("a raw peer with the right PSK that replays, reflects, talks early or stalls is cut off, and the manager keeps serving") {
  Site site;
  // m9 is in the group list but never runs: the attacker poses as it.
  auto managers = site.start_group({{"m1", "127.0.0.19"}, {"m9", "127.0.0.20"}}, {});
  auto& m1 = *managers[0];
  site.kill_manager(*managers[1]);
  auto key = common::load_key_file(site.group_key().string());
  REQUIRE(key.ok());
  AsyncClient c;
  const std::regex auth_failed("127\\.0\\.0\\.1:[0-9]+ peer_auth_failed ");
  std::size_t failures = 0;

  SUBCASE("a peer that follows the protocol is welcomed (the baseline the attacks differ from)") {
    auto peer = dial(c, *key);
    REQUIRE(peer);
    const Bytes nonce = common::random_bytes(32);
    auto ch = challenge(c, *peer, nonce);
    auto acceptor_nonce = common::from_hex(ch.nonce);
    REQUIRE(acceptor_nonce.ok());
    const Bytes mac = common::peer_auth_mac(peer->pair_key, common::PeerMacDirection::dialer_to_acceptor, nonce,
                                            *acceptor_nonce, "m9", "m1", peer->exporter);
    auto request = peer->link->request(0, common::to_frame(proof(common::to_hex(mac))), kStep);
    auto reply = c.await(std::move(request));
    REQUIRE(reply.ok());
    CHECK(reply->type == common::MessageType::peer_welcome);
    CHECK(m1.process->wait_for_log(std::regex(" please_initiate_received "), kSettle));
  }

  SUBCASE("the wrong group key: TLS fails, no message is exchanged") {
    CHECK_FALSE(dial(c, common::generate_key()));
    CHECK(m1.process->wait_for_log(std::regex("127\\.0\\.0\\.1:[0-9]+ (handshake_failed|peer_auth_failed|peer_refused) "), kSettle));
  }

  SUBCASE("a proof recorded on one connection and replayed on another is refused") {
    auto first = dial(c, *key);
    REQUIRE(first);
    const Bytes nonce = common::random_bytes(32);
    auto ch1 = challenge(c, *first, nonce);
    auto n1 = common::from_hex(ch1.nonce);
    REQUIRE(n1.ok());
    const Bytes recorded = common::peer_auth_mac(first->pair_key, common::PeerMacDirection::dialer_to_acceptor, nonce,
                                                 *n1, "m9", "m1", first->exporter);
    first->link->close(common::Error(common::Errc::closed, "recorded"));
    auto second = dial(c, *key);
    REQUIRE(second);
    (void)challenge(c, *second, nonce);  // the same dialer nonce: only the connection differs
    CHECK(refused(c, *second, proof(common::to_hex(recorded))));
    failures = 1;
  }

  SUBCASE("the manager's own MAC reflected back as the proof is refused") {
    auto peer = dial(c, *key);
    REQUIRE(peer);
    auto ch = challenge(c, *peer, common::random_bytes(32));
    CHECK(refused(c, *peer, proof(ch.mac)));
    failures = 1;
  }

  SUBCASE("the manager's nonce reflected back as ours is refused") {
    auto peer = dial(c, *key);
    REQUIRE(peer);
    auto ch = challenge(c, *peer, common::random_bytes(32));
    auto other = dial(c, *key);
    REQUIRE(other);
    auto reflected = common::from_hex(ch.nonce);
    REQUIRE(reflected.ok());
    auto request = other->link->request(
        0, common::to_frame(common::PeerAuthInitMsg{"m9", "m1", common::to_hex(*reflected)}), kStep);
    auto reply = c.await(std::move(request));
    // Whether or not it answers step 1, the relayed MAC cannot pass on this connection.
    if (reply.ok() && reply->type == common::MessageType::peer_auth_challenge) {
      const Bytes mac = common::peer_auth_mac(peer->pair_key, common::PeerMacDirection::dialer_to_acceptor, *reflected,
                                              *reflected, "m9", "m1", peer->exporter);
      CHECK(refused(c, *other, proof(common::to_hex(mac))));
    } else {
      CHECK(c.run_until([&] { return other->closed; }, kSettle));
    }
    failures = 1;
  }

  SUBCASE("an application message before the proof is refused and gets no answer") {
    auto peer = dial(c, *key);
    REQUIRE(peer);
    auto request = peer->link->request(0, common::to_frame(common::ListDevicesMsg{}), kStep);
    auto reply = c.await(std::move(request));
    CHECK_FALSE((reply.ok() && reply->type == common::MessageType::device_list));
    CHECK(c.run_until([&] { return peer->closed; }, kSettle));
    failures = 1;
  }

  SUBCASE("a peer that completes TLS and then says nothing is dropped at the handshake deadline") {
    auto peer = dial(c, *key);
    REQUIRE(peer);
    CHECK(c.run_until([&] { return peer->closed; }, 2 * kSettle));
    failures = 1;
  }

  if (failures > 0) {
    CHECK_MESSAGE(dtu::testing::eventually([&] { return count_lines(m1.process->log(), auth_failed) >= failures; }, kSettle),
                  m1.process->log());
  }
  // The manager still serves its clients.
  auto r = site.devmgrctl(m1, {"devices"});
  CHECK(r.exit_code == 0);
}
