#include "dtu/common/peer_auth.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "support/log_capture.hpp"
#include "support/async_client.hpp"

// The peer handshake end to end: real TLS-PSK over loopback TCP (127.0.0.40, kernel-chosen
// ports), real Links on both ends, one io_context driven by this thread with SystemClock. A
// misbehaving peer is a bare Link the test drives step by step. Deadlines are real but small
// where a timeout is the point; every other wait is bounded by a safety net.

namespace {

namespace common = dtu::common;
using common::Bytes;
using common::Duration;
using common::Errc;
using common::Frame;
using common::GroupKeys;
using common::Link;
using common::PeerAuthParams;
using common::PeerAuthResult;
using common::PeerHello;
using common::PeerPurpose;
using common::Result;
using common::SecretKey;
using Side = common::FilamentMux::Side;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Safety net only: every outcome below arrives within milliseconds (or its own small deadline).
constexpr auto kSafetyNet = seconds(10);
constexpr auto kSlice = milliseconds(5);
// The handshake's per-step deadline in these tests.
constexpr auto kStep = milliseconds(300);
// A deadline that is not the point of the test.
constexpr auto kGenerous = seconds(5);
// The acceptor listens on kAddress; the dialer connects from kDialerAddress.
constexpr const char* kAddress = "127.0.0.40";
constexpr const char* kDialerAddress = "127.0.0.41";

template <typename T>
using Outcome = std::shared_ptr<std::optional<T>>;
using TlsResult = Result<std::unique_ptr<common::TlsTransport>>;
using AuthOutcome = Outcome<Result<PeerAuthResult>>;

using dtu::testing::LogCapture;

template <typename T>
asio::awaitable<void> store(asio::awaitable<T> task, Outcome<T> out) {
  auto result = co_await std::move(task);
  out->emplace(std::move(result));
}

asio::awaitable<TlsResult> accept_tls(std::shared_ptr<asio::ip::tcp::acceptor> acceptor,
                                      std::shared_ptr<asio::ssl::context> context) {
  auto [ec, socket] = co_await acceptor->async_accept(asio::experimental::as_tuple(asio::use_awaitable));
  if (ec) co_return common::Error(Errc::io_error, "accept failed: " + ec.message());
  auto op = common::tls_accept(std::move(socket), *context, kGenerous);
  auto r = co_await std::move(op);
  co_return r;
}

// Connects from kDialerAddress (so the test uses only its own loopback addresses), then TLS.
asio::awaitable<TlsResult> dial_tls(asio::ip::tcp::endpoint endpoint,
                                    std::shared_ptr<asio::ssl::context> context, std::string identity,
                                    Bytes key) {
  asio::ip::tcp::socket socket(co_await asio::this_coro::executor);
  std::error_code ec;
  socket.open(asio::ip::tcp::v4(), ec);
  if (!ec) socket.bind(asio::ip::tcp::endpoint(asio::ip::make_address(kDialerAddress), 0), ec);
  if (ec) co_return common::Error(Errc::io_error, "bind failed: " + ec.message());
  auto [connect_ec] =
      co_await socket.async_connect(endpoint, asio::experimental::as_tuple(asio::use_awaitable));
  if (connect_ec) co_return common::Error(Errc::io_error, "connect failed: " + connect_ec.message());
  auto op = common::tls_connect(std::move(socket), *context, identity, key, kGenerous);
  auto r = co_await std::move(op);
  co_return r;
}

bool in_group(std::string_view id) {
  return id == "m1" || id == "m2" || id == "m3";
}

SecretKey key_of(std::uint8_t fill) {
  return SecretKey{Bytes(common::kKeyBytes, fill)};
}

// Both ends of one TLS connection after the TLS handshake, before any Link.
struct TlsPair {
  TlsResult dialer = common::Error(Errc::closed);
  TlsResult acceptor = common::Error(Errc::closed);
};

// One connection between two managers: started Links on both ends and what each end knows.
struct Connection {
  std::shared_ptr<Link> dialer;
  std::shared_ptr<Link> acceptor;
  std::string dialer_id;  // as the acceptor's TLS proved it
  std::string acceptor_id;
  Bytes pair_key;
  Bytes dialer_exporter;
  Bytes acceptor_exporter;
};

// One io_context, the links made on it. On destruction it closes every link and runs the
// context until their coroutines have ended, so nothing outlives the context.
class Harness {
 public:
  Harness() = default;
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;
  ~Harness() {
    for (auto& link : links_) link->close(common::Error(Errc::closed, "test over"));
    try {
      io_.restart();
      io_.run_for(kSafetyNet);
    } catch (...) {
      // A failure is already reported by the test body.
    }
  }

  const common::Clock& clock() const { return common::SystemClock::instance(); }

  template <typename T>
  Outcome<T> spawn(asio::awaitable<T> task) {
    auto out = std::make_shared<std::optional<T>>();
    asio::co_spawn(io_, store(std::move(task), out), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    return out;
  }

  bool run_until(const std::function<bool()>& done, Duration limit = kSafetyNet) {
    return dtu::testing::run_io_until(io_, done, limit, kSlice);
  }

  // A TLS connection on kAddress: the dialer offers (dialer, acceptor, offered key), the
  // acceptor resolves with resolve_peer_psk over `acceptor_keys` and the group {m1, m2, m3}.
  TlsPair tls(const std::string& dialer, const std::string& acceptor, const SecretKey& offered,
              const GroupKeys& acceptor_keys) {
    auto listener = common::tcp_listen(io_.get_executor(), common::Endpoint{kAddress, 0});
    REQUIRE(listener.ok());
    auto shared = std::make_shared<asio::ip::tcp::acceptor>(std::move(listener.value()));
    const asio::ip::tcp::endpoint endpoint = shared->local_endpoint();
    auto server = common::make_psk_server_context([acceptor, acceptor_keys](std::string_view identity) {
      return common::resolve_peer_psk(identity, acceptor, acceptor_keys, in_group);
    });
    auto accepted = spawn(accept_tls(shared, server));
    auto dialed = spawn(dial_tls(endpoint, common::make_psk_client_context(),
                                 common::peer_psk_identity(dialer, acceptor, offered),
                                 common::derive_pair_key(offered, dialer, acceptor)));
    REQUIRE(run_until([&] { return accepted->has_value() && dialed->has_value(); }));
    return TlsPair{std::move(**dialed), std::move(**accepted)};
  }

  // A connection with the same key on both ends, Links started (heartbeats on, as the mesh).
  Connection connect(const std::string& dialer = "m1", const std::string& acceptor = "m2",
                     const SecretKey& key = key_of(0x11)) {
    TlsPair pair = tls(dialer, acceptor, key, GroupKeys{key, std::nullopt});
    INFO("dialer: " << (pair.dialer.ok() ? "ok" : pair.dialer.error().describe()));
    INFO("acceptor: " << (pair.acceptor.ok() ? "ok" : pair.acceptor.error().describe()));
    REQUIRE(pair.dialer.ok());
    REQUIRE(pair.acceptor.ok());
    return links(std::move(pair), acceptor, common::derive_pair_key(key, dialer, acceptor));
  }

  Connection links(TlsPair pair, const std::string& acceptor_id, Bytes pair_key) {
    Connection c;
    auto proven = common::accepted_psk_identity(pair.acceptor.value()->ssl());
    REQUIRE(proven.has_value());
    auto identity = common::parse_peer_psk_identity(*proven);
    REQUIRE(identity.has_value());
    c.dialer_id = identity->dialer;
    c.acceptor_id = acceptor_id;
    c.pair_key = std::move(pair_key);
    auto dialer_exporter = common::peer_auth_exporter(pair.dialer.value()->ssl());
    auto acceptor_exporter = common::peer_auth_exporter(pair.acceptor.value()->ssl());
    REQUIRE(dialer_exporter.ok());
    REQUIRE(acceptor_exporter.ok());
    c.dialer_exporter = std::move(dialer_exporter.value());
    c.acceptor_exporter = std::move(acceptor_exporter.value());
    const std::string dialer_address =
        common::to_string(pair.acceptor.value()->socket().remote_endpoint());
    const std::string acceptor_address =
        common::to_string(pair.dialer.value()->socket().remote_endpoint());
    c.dialer = make_link(std::move(pair.dialer.value()), Side::initiator, acceptor_address);
    c.acceptor = make_link(std::move(pair.acceptor.value()), Side::acceptor, dialer_address);
    return c;
  }

  // Each end's parameters, as the mesh fills them.
  static PeerAuthParams dialer_params(const Connection& c, PeerPurpose purpose = PeerPurpose::link) {
    PeerAuthParams p;
    p.self_id = c.dialer_id;
    p.peer_id = c.acceptor_id;
    p.pair_key = c.pair_key;
    p.exporter = c.dialer_exporter;
    p.hello = PeerHello{c.dialer_id, 11, "127.0.0.40:4720", "0.5.0"};
    p.purpose = purpose;
    p.step_timeout = kStep;
    return p;
  }
  static PeerAuthParams acceptor_params(const Connection& c) {
    PeerAuthParams p;
    p.self_id = c.acceptor_id;
    p.peer_id = c.dialer_id;
    p.pair_key = c.pair_key;
    p.exporter = c.acceptor_exporter;
    p.hello = PeerHello{c.acceptor_id, 22, "127.0.0.41:4720", "0.5.1"};
    p.step_timeout = kStep;
    return p;
  }

  AuthOutcome dial(const Connection& c, PeerPurpose purpose = PeerPurpose::link) {
    return spawn(common::authenticate_dialer(c.dialer, dialer_params(c, purpose)));
  }
  AuthOutcome accept(const Connection& c) {
    return spawn(common::authenticate_acceptor(c.acceptor, acceptor_params(c)));
  }
  Outcome<Result<Frame>> receive(const std::shared_ptr<Link>& link) {
    return spawn(link->receive(0, kGenerous));
  }
  Outcome<Result<Frame>> request(const std::shared_ptr<Link>& link, const Frame& frame) {
    return spawn(link->request(0, frame, kGenerous));
  }

  // Waits for an outcome and hands its value over.
  template <typename T>
  T wait(const Outcome<T>& out) {
    REQUIRE(run_until([&] { return out->has_value(); }));
    return std::move(**out);
  }

 private:
  std::shared_ptr<Link> make_link(std::unique_ptr<common::TlsTransport> transport, Side side,
                                  std::string peer) {
    auto link = Link::create(io_.get_executor(), std::move(transport), side, clock(),
                             common::Logger("peer_auth_test"), std::move(peer), Link::Options{});
    link->start([](const common::Error&) {});
    links_.push_back(link);
    return link;
  }

  asio::io_context io_;
  std::vector<std::shared_ptr<Link>> links_;
};

std::string describe(const Result<PeerAuthResult>& r) {
  return r.ok() ? "ok" : r.error().describe();
}
std::string describe(const Result<Frame>& r) {
  return r.ok() ? "ok" : r.error().describe();
}

Bytes bytes_of(const std::string& hex) {
  auto b = common::from_hex(hex);
  REQUIRE(b.ok());
  return std::move(b).value();
}

// Checks the handshake failed with `code` and a reason naming `words`, and its link is closed.
void check_refused(Harness& h, const Result<PeerAuthResult>& result, const std::shared_ptr<Link>& link,
                   Errc code, std::string_view words) {
  INFO(describe(result));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == code);
  CHECK(result.error().detail.find(words) != std::string::npos);
  CHECK(h.run_until([&] { return !link->is_open(); }));
}

}  // namespace

// --- Key ids, identities, resolver, MAC ------------------------------------------------------

TEST_CASE("group_key_id is the first 8 bytes of HMAC-SHA256(key, label) in hex") {
  CHECK(common::group_key_id(key_of(0x11)) == "ada84a8664591550");
  CHECK(common::group_key_id(key_of(0x11)) != common::group_key_id(key_of(0x12)));
}

TEST_CASE("A PSK identity names dialer, acceptor and key id, and parses back") {
  const std::string identity = common::peer_psk_identity("m1", "m2", key_of(0x11));
  CHECK(identity == "m1>m2#ada84a8664591550");
  auto parsed = common::parse_peer_psk_identity(identity);
  REQUIRE(parsed.has_value());
  CHECK(parsed->dialer == "m1");
  CHECK(parsed->acceptor == "m2");
  CHECK(parsed->key_id == "ada84a8664591550");
}

TEST_CASE("parse_peer_psk_identity refuses anything peer_psk_identity does not make") {
  for (const char* bad :
       {"", "m1", "m1>m2", "m1#ada84a8664591550", "m2#ada84a8664591550>m1", ">m2#ada84a8664591550",
        "m1>#ada84a8664591550", "m1>m2#", "m1>m2#ada84a866459155", "m1>m2#ada84a86645915500",
        "m1>m2#ADA84A8664591550", "m1>m2#ada84a866459155g", "m1>m2>m3#ada84a8664591550",
        "m1>m2#ada84a8664591550#ada84a8664591550", "-m1>m2#ada84a8664591550", "dtu-7"}) {
    CHECK_MESSAGE(!common::parse_peer_psk_identity(bad).has_value(), bad);
  }
}

TEST_CASE("resolve_peer_psk gives the pair key only to a member dialing us with a key we hold") {
  const GroupKeys keys{key_of(0x11), std::nullopt};
  const auto pair = common::derive_pair_key(key_of(0x11), "m1", "m2");
  CHECK(common::resolve_peer_psk(common::peer_psk_identity("m1", "m2", key_of(0x11)), "m2", keys, in_group) ==
        pair);

  SUBCASE("unknown dialer") {
    CHECK_FALSE(
        common::resolve_peer_psk(common::peer_psk_identity("m9", "m2", key_of(0x11)), "m2", keys, in_group));
  }
  SUBCASE("not us") {
    CHECK_FALSE(
        common::resolve_peer_psk(common::peer_psk_identity("m1", "m3", key_of(0x11)), "m2", keys, in_group));
  }
  SUBCASE("ourselves as the dialer") {
    CHECK_FALSE(
        common::resolve_peer_psk(common::peer_psk_identity("m2", "m2", key_of(0x11)), "m2", keys, in_group));
  }
  SUBCASE("unknown key id") {
    CHECK_FALSE(
        common::resolve_peer_psk(common::peer_psk_identity("m1", "m2", key_of(0x22)), "m2", keys, in_group));
  }
  SUBCASE("not an identity of ours") {
    CHECK_FALSE(common::resolve_peer_psk("dtu-7", "m2", keys, in_group));
  }
}

TEST_CASE("resolve_peer_psk accepts the next key during a rotation, with its own pair key") {
  const GroupKeys keys{key_of(0x11), key_of(0x22)};
  CHECK(common::resolve_peer_psk(common::peer_psk_identity("m1", "m2", key_of(0x11)), "m2", keys, in_group) ==
        common::derive_pair_key(key_of(0x11), "m1", "m2"));
  CHECK(common::resolve_peer_psk(common::peer_psk_identity("m1", "m2", key_of(0x22)), "m2", keys, in_group) ==
        common::derive_pair_key(key_of(0x22), "m1", "m2"));
  CHECK_FALSE(
      common::resolve_peer_psk(common::peer_psk_identity("m1", "m2", key_of(0x33)), "m2", keys, in_group));
}

TEST_CASE("peer_auth_mac matches the known answer of its documented input") {
  Bytes key(32);
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
  const Bytes nonce_d(32, 0xd0);
  const Bytes nonce_a(32, 0xa0);
  const Bytes exporter(32, 0xee);
  CHECK(common::to_hex(common::peer_auth_mac(key, common::PeerMacDirection::dialer_to_acceptor, nonce_d,
                                             nonce_a, "m1", "m2", exporter)) ==
        "995d93c93fc95eaa14456e4a63939a432ae54898b5810b150882ce99dcb22fdf");
  CHECK(common::to_hex(common::peer_auth_mac(key, common::PeerMacDirection::acceptor_to_dialer, nonce_d,
                                             nonce_a, "m1", "m2", exporter)) ==
        "9a1054ba1c7d8ff4432e90f110f72a94caa8283c1d375b66436dfa9cca502250");
}

TEST_CASE("peer_auth_mac changes when any one input changes") {
  using common::PeerMacDirection;
  const Bytes key(32, 0x01);
  const Bytes nonce_d(32, 0xd0);
  const Bytes nonce_a(32, 0xa0);
  const Bytes exporter(32, 0xee);
  const Bytes base = common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1",
                                           "m2", exporter);
  Bytes other(32, 0x02);
  CHECK(common::peer_auth_mac(other, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1", "m2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::acceptor_to_dialer, nonce_d, nonce_a, "m1", "m2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_a, nonce_d, "m1", "m2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, other, nonce_a, "m1", "m2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, other, "m1", "m2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m2", "m1",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1", "m3",
                              exporter) != base);
  // The length prefixes keep ("m1", "m2") apart from ("m1m", "2").
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1m", "2",
                              exporter) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1", "m2",
                              other) != base);
  CHECK(common::peer_auth_mac(key, PeerMacDirection::dialer_to_acceptor, nonce_d, nonce_a, "m1", "m2",
                              exporter) == base);
}

TEST_CASE("peer_auth_exporter refuses a connection whose handshake has not completed") {
  auto context = common::make_psk_client_context();
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(context->native_handle()), SSL_free);
  REQUIRE(ssl != nullptr);
  auto exporter = common::peer_auth_exporter(ssl.get());
  REQUIRE_FALSE(exporter.ok());
  CHECK(exporter.error().code == Errc::illegal_state);
}

// --- TLS -------------------------------------------------------------------------------------

TEST_CASE("A dialer offering a group key the acceptor does not hold fails TLS on both ends") {
  Harness h;
  TlsPair pair = h.tls("m1", "m2", key_of(0x22), GroupKeys{key_of(0x11), std::nullopt});
  REQUIRE_FALSE(pair.dialer.ok());
  REQUIRE_FALSE(pair.acceptor.ok());
  INFO("dialer: " << pair.dialer.error().describe());
  INFO("acceptor: " << pair.acceptor.error().describe());
  CHECK(pair.dialer.error().code == Errc::auth_failed);
  CHECK(pair.acceptor.error().code == Errc::auth_failed);
}

TEST_CASE("A dialer not in the acceptor's group fails TLS") {
  Harness h;
  TlsPair pair = h.tls("m9", "m2", key_of(0x11), GroupKeys{key_of(0x11), std::nullopt});
  REQUIRE_FALSE(pair.dialer.ok());
  CHECK(pair.dialer.error().code == Errc::auth_failed);
}

TEST_CASE("Both ends export the same keying material, and another connection exports other material") {
  Harness h;
  Connection one = h.connect();
  Connection two = h.connect();
  CHECK(one.dialer_exporter.size() == common::kPeerExporterBytes);
  CHECK(one.dialer_exporter == one.acceptor_exporter);
  CHECK(two.dialer_exporter == two.acceptor_exporter);
  CHECK(one.dialer_exporter != two.dialer_exporter);
}

// --- The handshake ---------------------------------------------------------------------------

TEST_CASE("Dialer and acceptor authenticate each other and each gets the other's hello") {
  LogCapture logs;
  Harness h;
  Connection c = h.connect();
  CHECK(c.dialer_id == "m1");
  auto accepted = h.accept(c);
  auto dialed = h.dial(c);
  const Result<PeerAuthResult> a = h.wait(accepted);
  const Result<PeerAuthResult> d = h.wait(dialed);
  INFO("acceptor: " << describe(a));
  INFO("dialer: " << describe(d));
  REQUIRE(a.ok());
  REQUIRE(d.ok());
  CHECK(a->hello == Harness::dialer_params(c).hello);
  CHECK(a->purpose == PeerPurpose::link);
  CHECK(d->hello == Harness::acceptor_params(c).hello);
  CHECK(d->purpose == PeerPurpose::link);
  CHECK(c.dialer->is_open());
  CHECK(c.acceptor->is_open());
  INFO(logs.text());
  CHECK_FALSE(logs.has({"peer_auth_failed"}));

  // The link then carries application messages both ways.
  Link* acceptor = c.acceptor.get();
  c.acceptor->mux().set_receiver(0, [acceptor](Frame frame) {
    if (frame.wants_reply()) acceptor->reply(frame, common::to_frame(common::DeviceListMsg{}));
  });
  const Result<Frame> reply = h.wait(h.request(c.dialer, common::to_frame(common::ListDevicesMsg{})));
  INFO(describe(reply));
  REQUIRE(reply.ok());
  CHECK(reply->type == common::MessageType::device_list);
}

TEST_CASE("The acceptor learns a please_initiate purpose") {
  Harness h;
  Connection c = h.connect("m3", "m1");
  auto accepted = h.accept(c);
  auto dialed = h.dial(c, PeerPurpose::please_initiate);
  const Result<PeerAuthResult> a = h.wait(accepted);
  const Result<PeerAuthResult> d = h.wait(dialed);
  INFO("acceptor: " << describe(a));
  REQUIRE(a.ok());
  REQUIRE(d.ok());
  CHECK(a->purpose == PeerPurpose::please_initiate);
  CHECK(a->hello.id == "m3");
  CHECK(d->hello.id == "m1");
}

TEST_CASE("During a rotation a dialer offering the next key authenticates with an acceptor holding both") {
  Harness h;
  TlsPair pair = h.tls("m1", "m2", key_of(0x22), GroupKeys{key_of(0x11), key_of(0x22)});
  REQUIRE(pair.dialer.ok());
  REQUIRE(pair.acceptor.ok());
  Connection c = h.links(std::move(pair), "m2", common::derive_pair_key(key_of(0x22), "m1", "m2"));
  auto accepted = h.accept(c);
  auto dialed = h.dial(c);
  const Result<PeerAuthResult> a = h.wait(accepted);
  const Result<PeerAuthResult> d = h.wait(dialed);
  INFO("acceptor: " << describe(a));
  INFO("dialer: " << describe(d));
  CHECK(a.ok());
  CHECK(d.ok());
}

TEST_CASE("An acceptor whose peer stalls after TLS cuts it at the step deadline") {
  LogCapture logs;
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  check_refused(h, h.wait(accepted), c.acceptor, Errc::timeout, "peer_auth_init");
  INFO(logs.text());
  CHECK(logs.has({c.acceptor->peer(), "peer_auth_failed", "peer_auth_init", "m1"}));
}

TEST_CASE("A dialer whose acceptor never answers the proof gives up at the step deadline") {
  Harness h;
  Connection c = h.connect();
  auto dialed = h.dial(c);
  // A fake acceptor answers step 1 correctly, then goes silent.
  const Result<Frame> first = h.wait(h.receive(c.acceptor));
  REQUIRE(first.ok());
  auto init = common::from_frame<common::PeerAuthInitMsg>(*first);
  REQUIRE(init.ok());
  const Bytes nonce_a(32, 0x5a);
  const Bytes mac = common::peer_auth_mac(c.pair_key, common::PeerMacDirection::acceptor_to_dialer,
                                          bytes_of(init->nonce), nonce_a, "m1", "m2", c.acceptor_exporter);
  c.acceptor->reply(
      *first, common::to_frame(common::PeerAuthChallengeMsg{common::to_hex(nonce_a), common::to_hex(mac)}));
  check_refused(h, h.wait(dialed), c.dialer, Errc::timeout, "peer_welcome");
}

TEST_CASE("A dialer refuses an acceptor that sends its nonce back as its own") {
  LogCapture logs;
  Harness h;
  Connection c = h.connect();
  auto dialed = h.dial(c);
  const Result<Frame> first = h.wait(h.receive(c.acceptor));
  REQUIRE(first.ok());
  auto init = common::from_frame<common::PeerAuthInitMsg>(*first);
  REQUIRE(init.ok());
  const Bytes nonce = bytes_of(init->nonce);
  // Even with a MAC made right over the reflected nonce.
  const Bytes mac = common::peer_auth_mac(c.pair_key, common::PeerMacDirection::acceptor_to_dialer, nonce,
                                          nonce, "m1", "m2", c.acceptor_exporter);
  c.acceptor->reply(*first, common::to_frame(common::PeerAuthChallengeMsg{init->nonce, common::to_hex(mac)}));
  check_refused(h, h.wait(dialed), c.dialer, Errc::auth_failed, "reflects");
  INFO(logs.text());
  CHECK(logs.has({"peer_auth_failed", "reflects"}));
}

TEST_CASE("A challenge recorded on one connection is refused on another") {
  Harness h;
  // Connection one: a real handshake, its challenge recorded by a fake acceptor.
  Connection one = h.connect();
  auto dialed_one = h.dial(one);
  const Result<Frame> first = h.wait(h.receive(one.acceptor));
  REQUIRE(first.ok());
  auto init = common::from_frame<common::PeerAuthInitMsg>(*first);
  REQUIRE(init.ok());
  const Bytes nonce_a(32, 0x5a);
  const Bytes mac = common::peer_auth_mac(one.pair_key, common::PeerMacDirection::acceptor_to_dialer,
                                          bytes_of(init->nonce), nonce_a, "m1", "m2", one.acceptor_exporter);
  const common::PeerAuthChallengeMsg recorded{common::to_hex(nonce_a), common::to_hex(mac)};
  one.acceptor->reply(*first, common::to_frame(recorded));  // the dialer's proof then goes unanswered

  // Connection two: the recorded challenge replayed.
  Connection two = h.connect();
  auto dialed_two = h.dial(two);
  const Result<Frame> second = h.wait(h.receive(two.acceptor));
  REQUIRE(second.ok());
  two.acceptor->reply(*second, common::to_frame(recorded));
  check_refused(h, h.wait(dialed_two), two.dialer, Errc::auth_failed, "bad MAC in peer_auth_challenge");
}

TEST_CASE("A proof recorded on one connection is refused on another, even with the same dialer nonce") {
  Harness h;
  const std::string nonce_d(64, '7');
  const common::PeerAuthInitMsg init{"m1", "m2", nonce_d};

  // Connection one: a fake dialer completes a correct handshake with a real acceptor.
  Connection one = h.connect();
  auto accepted_one = h.accept(one);
  const Result<Frame> challenge_frame = h.wait(h.request(one.dialer, common::to_frame(init)));
  REQUIRE(challenge_frame.ok());
  auto challenge = common::from_frame<common::PeerAuthChallengeMsg>(*challenge_frame);
  REQUIRE(challenge.ok());
  const Bytes mac =
      common::peer_auth_mac(one.pair_key, common::PeerMacDirection::dialer_to_acceptor, bytes_of(nonce_d),
                            bytes_of(challenge->nonce), "m1", "m2", one.dialer_exporter);
  const common::PeerAuthProofMsg recorded{common::to_hex(mac), Harness::dialer_params(one).hello,
                                          PeerPurpose::link};
  const Result<Frame> welcome = h.wait(h.request(one.dialer, common::to_frame(recorded)));
  INFO(describe(welcome));
  REQUIRE(welcome.ok());
  CHECK(welcome->type == common::MessageType::peer_welcome);
  REQUIRE(h.wait(accepted_one).ok());

  // Connection two: same nonce, then the recorded proof.
  Connection two = h.connect();
  auto accepted_two = h.accept(two);
  REQUIRE(h.wait(h.request(two.dialer, common::to_frame(init))).ok());
  const Result<Frame> refused = h.wait(h.request(two.dialer, common::to_frame(recorded)));
  CHECK_FALSE(refused.ok());
  check_refused(h, h.wait(accepted_two), two.acceptor, Errc::auth_failed, "bad MAC in peer_auth_proof");
}

TEST_CASE("A relay between two connections fails on both ends: the MACs bind each connection") {
  // The relay holds the pair key (the worst case) and sits between a real dialer (connection
  // b, where it is the acceptor) and a real acceptor (connection a, where it is the dialer),
  // passing the nonces and MACs along.
  Harness h;
  Connection a = h.connect();
  Connection b = h.connect();
  auto accepted = h.accept(a);
  auto dialed = h.dial(b);

  // The dialer's init, relayed to the acceptor as the relay's own.
  const Result<Frame> init_frame = h.wait(h.receive(b.acceptor));
  REQUIRE(init_frame.ok());
  auto init = common::from_frame<common::PeerAuthInitMsg>(*init_frame);
  REQUIRE(init.ok());
  const Result<Frame> challenge_frame = h.wait(h.request(a.dialer, common::to_frame(*init)));
  REQUIRE(challenge_frame.ok());
  auto challenge = common::from_frame<common::PeerAuthChallengeMsg>(*challenge_frame);
  REQUIRE(challenge.ok());

  SUBCASE("the acceptor's MAC relayed to the dialer") {
    b.acceptor->reply(*init_frame, common::to_frame(*challenge));
    check_refused(h, h.wait(dialed), b.dialer, Errc::auth_failed, "bad MAC in peer_auth_challenge");
  }
  SUBCASE("the dialer's MAC relayed to the acceptor") {
    // The relay answers the dialer with a challenge valid on b, using the acceptor's nonce, so
    // the dialer's proof covers the same nonces as a: only the connection differs.
    const Bytes mac =
        common::peer_auth_mac(b.pair_key, common::PeerMacDirection::acceptor_to_dialer, bytes_of(init->nonce),
                              bytes_of(challenge->nonce), "m1", "m2", b.acceptor_exporter);
    b.acceptor->reply(*init_frame,
                      common::to_frame(common::PeerAuthChallengeMsg{challenge->nonce, common::to_hex(mac)}));
    const Result<Frame> proof_frame = h.wait(h.receive(b.acceptor));
    REQUIRE(proof_frame.ok());
    auto proof = common::from_frame<common::PeerAuthProofMsg>(*proof_frame);
    REQUIRE(proof.ok());
    auto relayed = h.request(a.dialer, common::to_frame(*proof));
    check_refused(h, h.wait(accepted), a.acceptor, Errc::auth_failed, "bad MAC in peer_auth_proof");
  }
}

TEST_CASE("An application request sent before the proof is refused and closes the link") {
  LogCapture logs;
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  REQUIRE(
      h.wait(h.request(c.dialer, common::to_frame(common::PeerAuthInitMsg{"m1", "m2", std::string(64, '1')})))
          .ok());
  const Result<Frame> listed = h.wait(h.request(c.dialer, common::to_frame(common::ListDevicesMsg{})));
  CHECK_FALSE(listed.ok());
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed,
                "expected peer_auth_proof, got list_devices");
  INFO(logs.text());
  CHECK(logs.has({c.acceptor->peer(), "peer_auth_failed", "list_devices"}));
}

TEST_CASE("An application request as the first message is refused") {
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  auto listed = h.request(c.dialer, common::to_frame(common::ListDevicesMsg{}));
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed,
                "expected peer_auth_init, got list_devices");
  CHECK_FALSE(h.wait(listed).ok());
}

TEST_CASE("An application message sent right behind a valid proof is refused") {
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  const std::string nonce_d(64, '3');
  const Result<Frame> challenge_frame =
      h.wait(h.request(c.dialer, common::to_frame(common::PeerAuthInitMsg{"m1", "m2", nonce_d})));
  REQUIRE(challenge_frame.ok());
  auto challenge = common::from_frame<common::PeerAuthChallengeMsg>(*challenge_frame);
  REQUIRE(challenge.ok());
  const Bytes mac =
      common::peer_auth_mac(c.pair_key, common::PeerMacDirection::dialer_to_acceptor, bytes_of(nonce_d),
                            bytes_of(challenge->nonce), "m1", "m2", c.dialer_exporter);
  // Both queued before the link writes: they leave together, the proof first.
  auto proof = std::make_shared<std::optional<Result<Frame>>>();
  c.dialer->request(0,
                    common::to_frame(common::PeerAuthProofMsg{
                        common::to_hex(mac), Harness::dialer_params(c).hello, PeerPurpose::link}),
                    kGenerous, [proof](const Result<Frame>& r) { proof->emplace(r); });
  c.dialer->notify(0, common::to_frame(common::ListDevicesMsg{}));
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed,
                "list_devices before authentication completed");
  CHECK_FALSE(h.wait(proof).ok());
}

TEST_CASE("A filament opened before authentication is refused") {
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  REQUIRE(c.dialer->mux().open("early").ok());
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed, "opened filament");
}

TEST_CASE("An acceptor refuses a peer_auth_init naming another dialer than TLS proved") {
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  auto init =
      h.request(c.dialer, common::to_frame(common::PeerAuthInitMsg{"m3", "m2", std::string(64, '1')}));
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed, "but TLS proved m1");
  CHECK_FALSE(h.wait(init).ok());
}

TEST_CASE("An acceptor refuses a peer_auth_init for another acceptor") {
  Harness h;
  Connection c = h.connect();
  auto accepted = h.accept(c);
  auto init =
      h.request(c.dialer, common::to_frame(common::PeerAuthInitMsg{"m1", "m3", std::string(64, '1')}));
  check_refused(h, h.wait(accepted), c.acceptor, Errc::auth_failed, "is for m3");
  CHECK_FALSE(h.wait(init).ok());
}

TEST_CASE("A dialer refuses a welcome naming another manager than it dialed") {
  Harness h;
  Connection c = h.connect();
  auto dialed = h.dial(c);
  const Result<Frame> first = h.wait(h.receive(c.acceptor));
  REQUIRE(first.ok());
  auto init = common::from_frame<common::PeerAuthInitMsg>(*first);
  REQUIRE(init.ok());
  const Bytes nonce_a(32, 0x5a);
  const Bytes mac = common::peer_auth_mac(c.pair_key, common::PeerMacDirection::acceptor_to_dialer,
                                          bytes_of(init->nonce), nonce_a, "m1", "m2", c.acceptor_exporter);
  c.acceptor->reply(
      *first, common::to_frame(common::PeerAuthChallengeMsg{common::to_hex(nonce_a), common::to_hex(mac)}));
  const Result<Frame> proof = h.wait(h.receive(c.acceptor));
  REQUIRE(proof.ok());
  c.acceptor->reply(*proof,
                    common::to_frame(common::PeerWelcomeMsg{PeerHello{"m3", 1, "127.0.0.42:4720", "0.5"}}));
  check_refused(h, h.wait(dialed), c.dialer, Errc::auth_failed, "peer_welcome names m3");
}
