// The attack suite (issue 10, docs/security.md): attacks on a real group of two managers
// (m1 127.0.0.200, m2 127.0.0.201; m9 127.0.0.202 is in the group list but never runs, so an
// attacker holding the group key can pose as it) with DTU d1 on m1, while a workload goes on
// beside each attack: a service on m2 allocates and releases d1's printer over and over, which
// crosses the mesh. Each attack must fail, a log line must name the attacker's address and the
// reason, and every one of the workload's operations must succeed.
#include <doctest/doctest.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "as_nobody.hpp"
#include "dtu/client/client.hpp"
#include "dtu/client/inband_channel.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/peer_auth.hpp"
#include "dtu/common/peer_messages.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/manager_client.hpp"
#include "harness.hpp"
#include "service_client.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

using dtu::common::Bytes;
using dtu::common::Link;
using dtu::common::SecretKey;
using dtu::testing::AsyncClient;
using dtu::testing::kSettle;
using dtu::testing::Site;
using namespace std::chrono_literals;
namespace common = dtu::common;
namespace client = dtu::client;

namespace {

constexpr auto kStep = 3s;

// Each test case has its own four addresses 127.0.0.<base> … <base+3> (m1, m2, m9, and the
// attacker's floods), so the cases can run in parallel.
std::string address(int base, int offset) {
  return "127.0.0." + std::to_string(base + offset);
}

// The workload: allocate d1's printer (1-1, unit 0) from m2, release it, again, until stopped.
struct Workload {
  std::size_t cycles = 0;
  std::vector<std::string> failures;
  bool stop = false;
  bool running = false;
};

asio::awaitable<void> run_workload(client::Client* service, std::shared_ptr<Workload> w) {
  w->running = true;
  asio::steady_timer pause(co_await asio::this_coro::executor);
  while (!w->stop) {
    auto allocate = service->allocate("d1", "1-1", 0, {});
    auto lease = co_await std::move(allocate);
    if (!lease.ok()) {
      w->failures.push_back("allocate: " + lease.error().describe());
    } else {
      auto release = service->release(lease->id);
      auto released = co_await std::move(release);
      if (released.ok()) {
        ++w->cycles;
      } else {
        w->failures.push_back("release: " + released.error().describe());
      }
    }
    pause.expires_after(20ms);
    auto [ec] = co_await pause.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    (void)ec;
  }
  w->running = false;
}

// One allocation of d1's 1-2 that may wait; counts its answer, and denials, in `tally`.
struct Tally {
  std::size_t answered = 0;
  std::size_t denied = 0;
};

asio::awaitable<void> allocate_waiting(client::Client* service, std::shared_ptr<Tally> tally) {
  client::AllocateOptions options;
  options.wait = std::chrono::seconds(30);
  auto allocate = service->allocate("d1", "1-2", 0, options);
  auto lease = co_await std::move(allocate);
  ++tally->answered;
  if (!lease.ok() && lease.error().code == common::make_error_code(common::Errc::denied)) ++tally->denied;
}

// One finder registration; counts it, or keeps the refusal, in `tally`.
struct FinderTally {
  std::size_t registered = 0;
  std::vector<std::string> refused;
};

asio::awaitable<void> add_finder(client::Client* service, std::shared_ptr<FinderTally> tally) {
  const nlohmann::json finder = {{"scope", "interconnect"}, {"class", 7}};
  auto add = service->add_finder(finder, {});
  auto added = co_await std::move(add);
  if (added.ok()) {
    ++tally->registered;
  } else {
    tally->refused.push_back(added.error().describe());
  }
}

// The group, d1, and the workload running on the test's io_context (so it goes on whenever the
// test awaits or waits through `c`).
struct AttackSite {
  Site site;
  Site::Manager* m1 = nullptr;
  Site::Manager* m2 = nullptr;
  Site::Agent* d1 = nullptr;
  AsyncClient c;
  std::unique_ptr<client::Client> service;
  std::shared_ptr<Workload> workload = std::make_shared<Workload>();

  int base;
  std::string m1_ip;
  std::string attacker_ip;  // where floods come from

  // `policy`: a policy file's text both managers start with (none: the built-in policy); `extra`:
  // more arguments for both.
  explicit AttackSite(int base_, const std::string& policy = {}, std::vector<std::string> extra = {})
      : base(base_), m1_ip(address(base_, 0)), attacker_ip(address(base_, 3)) {
    if (!policy.empty()) {
      std::ofstream(site.dir().path() / "policy.json") << policy;
      extra.insert(extra.end(), {"--policy", (site.dir().path() / "policy.json").string()});
    }
    auto managers =
        site.start_group({{"m1", m1_ip}, {"m2", address(base, 1)}, {"m9", address(base, 2)}}, extra);
    m1 = managers[0];
    m2 = managers[1];
    site.kill_manager(*managers[2]);
    REQUIRE(site.wait_peers_up(*m1, 1));
    d1 = &site.start_agent("d1", {m1->address});
    REQUIRE(dtu::testing::eventually([&] { return !site.unit(*m1, "d1", "1-1", 0).is_null(); }, kSettle));
    // m2 knows d1's owner once d1 is in its group listing.
    REQUIRE(dtu::testing::eventually(
        [&] { return site.devmgrctl(*m2, {"devices", "--group"}).out.find("d1") != std::string::npos; }, kSettle));
    service = dtu::testing::connect_client(c, *m2, "workload");
    asio::co_spawn(c.executor(), run_workload(service.get(), workload), asio::detached);
    REQUIRE(c.run_until([&] { return workload->cycles >= 2; }, kSettle));
  }

  // Lets the workload run on for `d`, then stops it and checks every operation succeeded and
  // some were done during the attack.
  void check_workload(std::chrono::milliseconds d = 300ms) {
    const std::size_t before = workload->cycles;
    c.run_until([] { return false; }, d);
    workload->stop = true;
    CHECK(c.run_until([&] { return !workload->running; }, kSettle));
    CHECK_MESSAGE(workload->failures.empty(), (workload->failures.empty() ? "" : workload->failures.front()));
    CHECK(workload->cycles > before);
  }

  // Waits for a log line of `m` matching `pattern`; when none comes, shows the log's end.
  bool logged(Site::Manager& m, const std::string& pattern) {
    if (m.process->wait_for_log(std::regex(pattern), kSettle)) return true;
    const std::string log = m.process->log();
    MESSAGE(m.id << " logged nothing matching /" << pattern << "/; its log ends:\n"
                 << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
    return false;
  }
};

// ---- The mesh: an attacker holding the group key, posing as m9 -------------------------------

struct RawPeer {
  std::shared_ptr<Link> link;
  Bytes pair_key;
  Bytes exporter;
  bool closed = false;
};

std::unique_ptr<RawPeer> dial_mesh(AsyncClient& c, const std::string& m1_ip, const SecretKey& key) {
  auto peer = std::make_unique<RawPeer>();
  auto connect = common::tcp_connect(common::Endpoint{m1_ip, dtu::testing::kMeshPort}, kStep);
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

// Step 1: our nonce out, m1's challenge back.
common::PeerAuthChallengeMsg challenge(AsyncClient& c, RawPeer& peer, const Bytes& nonce) {
  auto request = peer.link->request(0, common::to_frame(common::PeerAuthInitMsg{"m9", "m1", common::to_hex(nonce)}), kStep);
  auto reply = c.await(std::move(request));
  REQUIRE(reply.ok());
  auto msg = common::from_frame<common::PeerAuthChallengeMsg>(*reply);
  REQUIRE(msg.ok());
  return *msg;
}

// m9's proof, as m9 at the group list's 127.0.0.202 would send it.
common::PeerAuthProofMsg proof(const std::string& mac) {
  common::PeerAuthProofMsg m;
  m.mac = mac;
  m.hello = common::PeerHello{"m9", 1, "127.0.0.202:4720", std::string(common::kVersion)};
  m.purpose = common::PeerPurpose::please_initiate;
  return m;
}

// The proof m1 expects from m9 on `peer`'s connection for dialer nonce `nonce`.
std::string mac_for(const RawPeer& peer, const Bytes& nonce, const common::PeerAuthChallengeMsg& ch) {
  auto acceptor_nonce = common::from_hex(ch.nonce);
  REQUIRE(acceptor_nonce.ok());
  return common::to_hex(common::peer_auth_mac(peer.pair_key, common::PeerMacDirection::dialer_to_acceptor, nonce,
                                              *acceptor_nonce, "m9", "m1", peer.exporter));
}

// Sends the proof; true when m1 refused it (an error reply or the link cut) and the link is
// closed afterwards.
bool refused(AsyncClient& c, RawPeer& peer, const common::PeerAuthProofMsg& m) {
  auto request = peer.link->request(0, common::to_frame(m), kStep);
  auto reply = c.await(std::move(request));
  const bool welcomed = reply.ok() && reply->type == common::MessageType::peer_welcome;
  c.run_until([&] { return peer.closed; }, kSettle);
  return !welcomed && peer.closed;
}

}  // namespace

TEST_CASE("attacks on the mesh port fail with a logged reason while the group keeps serving") {
  AttackSite s(200);
  auto key = common::load_key_file(s.site.group_key().string());
  REQUIRE(key.ok());
  auto& c = s.c;
  const std::string named = "127\\.0\\.0\\.1:[0-9]+ ";

  SUBCASE("the baseline: a peer that follows the protocol is welcomed") {
    auto peer = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(peer);
    const Bytes nonce = common::random_bytes(32);
    auto ch = challenge(c, *peer, nonce);
    auto request = peer->link->request(0, common::to_frame(proof(mac_for(*peer, nonce, ch))), kStep);
    auto reply = c.await(std::move(request));
    REQUIRE(reply.ok());
    CHECK(reply->type == common::MessageType::peer_welcome);
  }

  SUBCASE("a wrong group key: TLS fails and no message is exchanged") {
    CHECK_FALSE(dial_mesh(c, s.m1_ip, common::generate_key()));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*handshake"));
  }

  SUBCASE("a proof recorded on one connection and replayed on the next is refused") {
    auto first = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(first);
    const Bytes nonce = common::random_bytes(32);
    const std::string recorded = mac_for(*first, nonce, challenge(c, *first, nonce));
    first->link->close(common::Error(common::Errc::closed, "recorded"));
    auto second = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(second);
    (void)challenge(c, *second, nonce);  // the same dialer nonce: only the connection differs
    CHECK(refused(c, *second, proof(recorded)));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }

  SUBCASE("a challenge relayed between two live connections is refused on the second") {
    auto a = dial_mesh(c, s.m1_ip, *key);
    auto b = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(a);
    REQUIRE(b);
    const Bytes nonce = common::random_bytes(32);
    const auto ch_a = challenge(c, *a, nonce);
    (void)challenge(c, *b, nonce);
    // What a relay can compute: the answer to a's challenge, bound to a's connection.
    CHECK(refused(c, *b, proof(mac_for(*a, nonce, ch_a))));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }

  SUBCASE("m1's own MAC reflected back as the proof is refused") {
    auto peer = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(peer);
    auto ch = challenge(c, *peer, common::random_bytes(32));
    CHECK(refused(c, *peer, proof(ch.mac)));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }

  SUBCASE("m1's nonce reflected back as the dialer's is refused") {
    auto peer = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(peer);
    auto ch = challenge(c, *peer, common::random_bytes(32));
    auto reflected = common::from_hex(ch.nonce);
    REQUIRE(reflected.ok());
    auto request = peer->link->request(
        0, common::to_frame(common::PeerAuthInitMsg{"m9", "m1", common::to_hex(*reflected)}), kStep);
    auto reply = c.await(std::move(request));
    CHECK_FALSE((reply.ok() && reply->type == common::MessageType::peer_auth_challenge));
    CHECK(c.run_until([&] { return peer->closed; }, kSettle));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }

  SUBCASE("an application message before the proof gets no answer and closes the link") {
    auto peer = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(peer);
    auto request = peer->link->request(0, common::to_frame(common::ListDevicesMsg{}), kStep);
    auto reply = c.await(std::move(request));
    CHECK_FALSE((reply.ok() && reply->type == common::MessageType::device_list));
    CHECK(c.run_until([&] { return peer->closed; }, kSettle));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }

  SUBCASE("a peer that completes TLS and then says nothing is dropped at the handshake deadline") {
    auto peer = dial_mesh(c, s.m1_ip, *key);
    REQUIRE(peer);
    CHECK(c.run_until([&] { return peer->closed; }, 2 * kSettle));
    CHECK(s.logged(*s.m1, named + "peer_auth_failed .*reason="));
  }
  s.check_workload();
  CHECK(s.site.wait_peers_up(*s.m1, 1, 1s));
}

namespace {

// Open descriptors and resident memory (KiB) of a process.
std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    ++n;
  }
  return n;
}

std::size_t rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  }
  return 0;
}

// `n` TCP connections from `from` to `to` that never start TLS. Blocking connects: the
// kernel completes them whether or not the manager accepts.
std::vector<asio::ip::tcp::socket> half_open(asio::io_context& io, const std::string& from,
                                             const asio::ip::tcp::endpoint& to, int n) {
  std::vector<asio::ip::tcp::socket> sockets;
  sockets.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    asio::ip::tcp::socket s(io);
    s.open(asio::ip::tcp::v4());
    s.bind(asio::ip::tcp::endpoint(asio::ip::make_address(from), 0));
    std::error_code ec;
    s.connect(to, ec);
    if (!ec) sockets.push_back(std::move(s));
  }
  return sockets;
}

asio::ip::tcp::endpoint tcp_of(const std::string& address) {
  auto endpoint = common::parse_endpoint(address);
  REQUIRE(endpoint.ok());
  return {asio::ip::make_address(endpoint->host), endpoint->port};
}

}  // namespace

TEST_CASE("a thousand half-open connections on each TCP port stay bounded, and legitimate DTUs and peers still connect") {
  // The flood needs more descriptors than the default soft limit of 1,024.
  rlimit files{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &files) == 0);
  files.rlim_cur = std::min<rlim_t>(files.rlim_max, 8192);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &files) == 0);
  REQUIRE(files.rlim_cur >= 2200);

  AttackSite s(204);
  const pid_t pid = s.m1->process->pid();
  const std::size_t fds_before = open_fds(pid);
  const std::size_t rss_before = rss_kib(pid);

  auto dtu_flood = half_open(s.c.io(), s.attacker_ip, tcp_of(s.m1->address), 1000);
  auto mesh_flood =
      half_open(s.c.io(), s.attacker_ip, tcp_of(s.m1_ip + ":" + std::to_string(dtu::testing::kMeshPort)), 1000);
  CHECK(dtu_flood.size() == 1000);
  CHECK(mesh_flood.size() == 1000);
  const std::string from = std::regex_replace(s.attacker_ip, std::regex("\\."), "\\.") + ":[0-9]+ ";
  CHECK(s.logged(*s.m1, from + "connection_limit .*listener=dtu"));
  CHECK(s.logged(*s.m1, from + "connection_limit .*listener=mesh"));

  // While the flood holds its connections: m1 holds at most 64 of each (the default
  // max_handshakes_per_source) and little memory for them.
  s.c.run_until([] { return false; }, 500ms);
  const std::size_t fds_during = open_fds(pid);
  const std::size_t rss_during = rss_kib(pid);
  MESSAGE("m1 descriptors " << fds_before << " -> " << fds_during << ", RSS " << rss_before << " -> " << rss_during
                            << " KiB");
  CHECK(fds_during <= fds_before + 2 * 64 + 16);
  CHECK(rss_during <= rss_before + 64 * 1024);

  // A new DTU connects and its devices are listed; the peer link is re-made after a restart of m2.
  s.site.start_agent("d2", {s.m1->address});
  CHECK(s.c.run_until([&] { return !s.site.unit(*s.m1, "d2", "1-1", 0).is_null(); }, kSettle));
  s.site.kill_manager(*s.m2);
  s.site.restart_manager(*s.m2);
  CHECK(s.site.wait_peers_up(*s.m1, 1));
  // The workload's service was on m2: connect it again.
  s.workload->stop = true;
  s.c.run_until([&] { return !s.workload->running; }, kSettle);
  s.service = dtu::testing::connect_client(s.c, *s.m2, "workload");
  s.workload = std::make_shared<Workload>();
  asio::co_spawn(s.c.executor(), run_workload(s.service.get(), s.workload), asio::detached);
  s.check_workload(1s);
  dtu_flood.clear();
  mesh_flood.clear();
}

namespace {

// An insider DTU: d9's own key (a DTU of the site) on m1's DTU port, sending raw bytes.
std::unique_ptr<common::TlsTransport> dial_dtu(AsyncClient& c, Site& site, const std::string& address,
                                               const std::string& identity, const std::string& key_of) {
  auto key = common::load_key_file(site.dtu_key(key_of).string());
  REQUIRE(key.ok());
  auto endpoint = common::parse_endpoint(address);
  REQUIRE(endpoint.ok());
  auto connect = common::tcp_connect(*endpoint, kStep);
  auto socket = c.await(std::move(connect));
  REQUIRE(socket.ok());
  auto context = common::make_psk_client_context();
  auto handshake = common::tls_connect(std::move(socket.value()), *context, identity, key->bytes, kStep);
  auto transport = c.await(std::move(handshake));
  if (!transport.ok()) return nullptr;
  return std::move(transport.value());
}

// Writes `bytes`, then reads until the manager closes the connection; true when it did.
bool closed_after(AsyncClient& c, common::TlsTransport& t, const Bytes& bytes) {
  auto write = t.write_all(asio::buffer(bytes));
  (void)c.await(std::move(write));
  std::vector<std::uint8_t> buffer(4096);
  for (int i = 0; i < 100; ++i) {
    auto read = t.read_some(asio::buffer(buffer));
    auto r = c.await(std::move(read));
    if (r.ec) return true;
  }
  return false;
}

Bytes hello_frame() {
  common::DtuHelloMsg hello;
  hello.dtu = "d9";
  return common::encode_frame(common::to_frame(hello));
}

}  // namespace

TEST_CASE("bad frames from an authenticated DTU close that connection only, with the reason logged") {
  AttackSite s(208);
  auto t = dial_dtu(s.c, s.site, s.m1->address, "d9", "d9");
  REQUIRE(t);
  const std::string named = "127\\.0\\.0\\.1:[0-9]+ ";

  SUBCASE("a frame longer than max_frame_bytes") {
    Bytes frame = hello_frame();
    frame[0] = 0x7f;  // payload length 2 GiB
    CHECK(closed_after(s.c, *t, frame));
    CHECK(s.logged(*s.m1, named + ".*frame_too_large"));
  }
  SUBCASE("a frame of another protocol version") {
    Bytes frame = hello_frame();
    frame[4] = 0x63;
    CHECK(closed_after(s.c, *t, frame));
    CHECK(s.logged(*s.m1, named + ".*bad_version"));
  }
  SUBCASE("an unknown message type") {
    Bytes frame = hello_frame();
    frame[6] = 0x7f;
    frame[7] = 0xfe;
    CHECK(closed_after(s.c, *t, frame));
    CHECK(s.logged(*s.m1, named + ".*unknown_type"));
  }
  SUBCASE("a payload that is not JSON") {
    common::Frame f = common::to_frame(common::DtuHelloMsg{});
    f.payload.assign({'{', 'n', 'o', 't'});
    CHECK(closed_after(s.c, *t, common::encode_frame(f)));
    CHECK(s.logged(*s.m1, named + "protocol_error dtu=d9 .*not valid JSON"));
  }
  SUBCASE("a message not legal before the hello") {
    CHECK(closed_after(s.c, *t, common::encode_frame(common::to_frame(common::ListDevicesMsg{}))));
    CHECK(s.logged(*s.m1, named + ".*(not legal|illegal)"));
  }
  s.check_workload();
}

TEST_CASE("a DTU that claims another DTU's id fails TLS, and the real one keeps its devices") {
  AttackSite s(212);
  // d9's key with d1's id: the manager derives d1's key from the site key, so TLS fails.
  CHECK_FALSE(dial_dtu(s.c, s.site, s.m1->address, "d1", "d9"));
  CHECK(s.logged(*s.m1, "127\\.0\\.0\\.1:[0-9]+ handshake_failed .*role=dtu"));
  CHECK_FALSE(s.site.unit(*s.m1, "d1", "1-1", 0).is_null());
  s.check_workload();
}

TEST_CASE("a service's floods and forgeries are refused with a logged reason, and the workload goes on") {
  // Any uid may reach the socket (the other-uid attack): through the test directory, and its mode.
  AttackSite s(216, {}, {"--socket-mode", "0666"});
  std::filesystem::permissions(s.site.dir().path(), std::filesystem::perms::owner_all |
                                                        std::filesystem::perms::group_exec |
                                                        std::filesystem::perms::others_exec);
  auto& c = s.c;
  auto attacker = dtu::testing::connect_client(c, *s.m2, "attacker");

  SUBCASE("requests piled up beyond max_pending_requests are refused denied") {
    auto holder = dtu::testing::connect_client(c, *s.m2, "holder");
    auto held = c.await(holder->allocate("d1", "1-2", 0, {}));
    REQUIRE(held.ok());
    // 300 allocations that wait for the held unit: 256 wait, the rest are refused at once.
    auto tally = std::make_shared<Tally>();
    for (int i = 0; i < 300; ++i) {
      asio::co_spawn(c.executor(), allocate_waiting(attacker.get(), tally), asio::detached);
    }
    CHECK(c.run_until([&] { return tally->answered >= 44; }, kSettle));
    CHECK(tally->denied == 44);
    CHECK(s.logged(*s.m2, "\"?unix:pid=[0-9]+,uid=0\"? request_limit .*limit=256"));
    attacker.reset();  // its waiting allocations go with it
  }

  SUBCASE("finders beyond max_finders_per_service are refused denied") {
    // All at once (one await each would take the harness's 50 ms slice each).
    auto tally = std::make_shared<FinderTally>();
    for (int i = 0; i < 1030; ++i) asio::co_spawn(c.executor(), add_finder(attacker.get(), tally), asio::detached);
    CHECK(c.run_until([&] { return tally->registered + tally->refused.size() == 1030; }, kSettle));
    CHECK(tally->registered == 1024);
    REQUIRE(tally->refused.size() == 6);
    CHECK_MESSAGE(tally->refused[0].find("denied") != std::string::npos, tally->refused[0]);
    CHECK(s.logged(*s.m2, "\"?unix:pid=[0-9]+,uid=0\"? finder_limit .*limit=1024"));
  }

  SUBCASE("connections beyond max_connections_per_uid are closed at once") {
    std::vector<asio::local::stream_protocol::socket> flood;
    for (int i = 0; i < 300; ++i) {
      asio::local::stream_protocol::socket socket(c.io());
      std::error_code ec;
      socket.connect(asio::local::stream_protocol::endpoint(s.m2->socket.string()), ec);
      if (!ec) flood.push_back(std::move(socket));
    }
    CHECK(s.logged(*s.m2, "\"?unix:pid=[0-9]+,uid=0\"? connection_limit .*listener=socket"));
    flood.clear();
    // Once they are gone the uid connects again.
    CHECK(c.run_until([&] { return false; }, 200ms) == false);
    auto again = dtu::testing::connect_client(c, *s.m2, "after-flood");
    CHECK(again);
  }

  SUBCASE("another uid can neither renew nor release a service's lease") {
    if (::geteuid() != 0) {
      MESSAGE("skipped: needs root to start a client as uid 65534");
      return;
    }
    auto lease = c.await(attacker->allocate("d1", "1-2", 0, {}));
    REQUIRE(lease.ok());
    const std::string outcome = dtu::testing::renew_and_release_as_nobody(s.m2->socket.string(), "d1", lease->id);
    CHECK_MESSAGE(outcome.rfind("renew denied:", 0) == 0, outcome);
    CHECK_MESSAGE(outcome.find("; release denied:") != std::string::npos, outcome);
    // Refused by the lease's manager, m1 (the request came through m2), naming who asked.
    CHECK(s.logged(*s.m1, "lease_access_refused lease=.?" + lease->id + ".? uid=65534 from=.?intruder"));
    CHECK(s.site.unit(*s.m1, "d1", "1-2", 0).value("lease", "") == lease->id);  // still the service's
  }

  SUBCASE("an expired lease's token opens nothing") {
    // libdtu-client renews; a bare ManagerClient does not, so its 1.5 s lease runs out.
    auto connect = dtu::services::ManagerClient::connect(s.m2->socket.string(), "lapsed", common::SystemClock::instance(),
                                                         kStep);
    auto lapsed = c.await(std::move(connect));
    REQUIRE(lapsed.ok());
    bool ended = false;
    (*lapsed)->on_lease_ended([&](const common::LeaseEndedMsg&) { ended = true; });
    auto allocate = (*lapsed)->allocate("d1", "1-2", 0, 1500ms, kStep);
    auto lease = c.await(std::move(allocate));
    REQUIRE(lease.ok());
    REQUIRE(c.run_until([&] { return ended; }, kSettle));
    auto endpoint = common::parse_endpoint(lease->inband.value_or(""));
    REQUIRE(endpoint.ok());
    auto token = common::from_hex(lease->token.value_or(""));
    REQUIRE(token.ok());
    auto open = client::InbandChannel::connect(c.executor(), common::SystemClock::instance(), *endpoint, lease->lease,
                                               *token, kStep);
    auto channel = c.await(std::move(open));
    REQUIRE_FALSE(channel.ok());
    CHECK_MESSAGE(channel.error().detail.find("expired") != std::string::npos, channel.error().describe());
    CHECK(s.d1->process->wait_for_log(
        std::regex("127\\.0\\.0\\.1:[0-9]+ inband_late_holder lease=.?" + lease->lease + ".? ended=expired"), kSettle));
  }

  SUBCASE("a tampered state token is refused, and a guessed lease token opens nothing") {
    auto lease = c.await(attacker->allocate("d1", "1-2", 0, {}));
    REQUIRE(lease.ok());
    REQUIRE_FALSE(lease->state_token.empty());
    // A state token is only read for a lease its manager does not know (after a failover): ask
    // to resume an unknown lease with a tampered copy of a real token.
    std::string forged = lease->state_token;
    forged[forged.size() / 2] = forged[forged.size() / 2] == 'A' ? 'B' : 'A';
    common::ResumeLeaseMsg resume{"d1", "L-forged", common::to_hex(common::random_bytes(32)), 60000, forged};
    auto reply = c.await(attacker->manager()->call<common::LeaseGrantedMsg>(resume, kStep));
    CHECK_FALSE(reply.ok());
    CHECK(s.logged(*s.m1, "state_token_rejected .*lease=.?L-forged.*from=.?attacker"));

    auto endpoint = common::parse_endpoint(lease->inband);
    REQUIRE(endpoint.ok());
    auto open = client::InbandChannel::connect(c.executor(), common::SystemClock::instance(), *endpoint, lease->id,
                                               common::random_bytes(32), kStep);
    auto channel = c.await(std::move(open));
    CHECK_FALSE(channel.ok());
    CHECK(s.d1->process->wait_for_log(std::regex("127\\.0\\.0\\.1:[0-9]+ .*(handshake|refused|token)"), kSettle));
  }
  s.check_workload();
}

TEST_CASE("a policy or config file with an error is refused naming where, and what is in force stays") {
  const std::string good = R"({"rules": [{"name": "everyone", "match": {}, "action": "allow"}]})";
  AttackSite s(220, good);
  const std::filesystem::path policy = s.site.dir().path() / "policy.json";
  std::ofstream(policy) << "{\n  \"rules\": [\n    {\"name\": \"broken\",,}\n  ]\n}\n";
  auto r = s.site.devmgrctl(*s.m1, {"policy", "reload"});
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.err.find("policy.json:3:") != std::string::npos, r.err);
  CHECK(s.logged(*s.m1, "policy_reload_failed .*policy\\.json:3:"));
  auto shown = s.site.devmgrctl(*s.m1, {"policy"});
  CHECK(shown.exit_code == 0);
  CHECK_MESSAGE(shown.out.find("everyone") != std::string::npos, shown.out);

  // A config file with an error: a manager started on it refuses to start, naming the file and
  // the key; the group goes on.
  const std::filesystem::path config = s.site.dir().path() / "bad-devmgr.json";
  std::ofstream(config) << R"({"id": "m3", "max_pending_requests": -5})";
  auto started = dtu::testing::run_command({dtu::testing::binary_path("devmgr"), "--config", config.string()}, kSettle);
  CHECK(started.exit_code == 1);
  CHECK_MESSAGE(started.err.find("bad-devmgr.json: key 'max_pending_requests'") != std::string::npos, started.err);
  s.check_workload();
}
