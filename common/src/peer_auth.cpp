#include "dtu/common/peer_auth.hpp"

#include <utility>

#include "dtu/common/check.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/tls.hpp"

namespace dtu::common {
namespace {

// Bytes of HMAC-SHA256(key, label) that name a key: 64 bits tell a handful of keys apart and
// say nothing useful about the key.
constexpr std::size_t kKeyIdBytes = 8;
constexpr char kIdentityArrow = '>';
constexpr char kIdentityHash = '#';

bool is_key_id(std::string_view text) {
  if (text.size() != 2 * kKeyIdBytes) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void append_u16_prefixed(Bytes& out, std::string_view text) {
  out.push_back(static_cast<std::uint8_t>(text.size() >> 8));
  out.push_back(static_cast<std::uint8_t>(text.size() & 0xff));
  const auto b = as_bytes(text);
  out.insert(out.end(), b.begin(), b.end());
}

std::string millis(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

// One handshake run: the link, the parameters and how a failure ends it.
class Handshake {
 public:
  Handshake(std::shared_ptr<Link> link, PeerAuthParams params, std::string_view role)
      : link_(std::move(link)),
        params_(std::move(params)),
        role_(role),
        violation_(std::make_shared<std::optional<Error>>()) {
    // A filament opened before the handshake ends is an application message: refuse it.
    std::weak_ptr<Link> weak = link_;
    link_->mux().set_open_handler([weak, violation = violation_](std::uint32_t id, const std::string&) {
      auto alive = weak.lock();
      if (!alive || violation->has_value()) return;
      *violation =
          Error(Errc::auth_failed, "peer opened filament " + std::to_string(id) + " before authentication");
      alive->close(**violation);
    });
  }
  ~Handshake() { link_->mux().set_open_handler(nullptr); }
  Handshake(const Handshake&) = delete;
  Handshake& operator=(const Handshake&) = delete;

  Link& link() { return *link_; }
  const PeerAuthParams& params() const { return params_; }

  // Closes the link, logs why and hands the error back. A violation seen by the open handler
  // (which already closed the link) is the real reason behind the link error.
  Error fail(Error error) {
    if (violation_->has_value()) error = **violation_;
    params_.log.warn(link_->peer(), "peer_auth_failed",
                     {{"reason", error.describe()}, {"peer_id", params_.peer_id}, {"role", role_}});
    link_->close(error);
    return error;
  }

  // The error of a step that did not complete: a missed deadline names the step.
  Error step_failed(const Error& error, std::string_view waiting_for) const {
    if (error.code == Errc::timeout) {
      return Error(Errc::timeout,
                   "no " + std::string(waiting_for) + " within " + millis(params_.step_timeout));
    }
    return error;
  }

  // Refuses a message the peer sent out of turn: anything queued on filament 0 now arrived
  // before the handshake let it (heartbeats never reach the queue).
  asio::awaitable<std::optional<Error>> nothing_queued() {
    auto op = link_->receive(FilamentMux::kControlFilament, Duration::zero());
    auto got = co_await std::move(op);
    if (got.ok()) {
      co_return Error(Errc::auth_failed,
                      std::string(message_type_name(got->type)) + " before authentication completed");
    }
    if (got.error().code != Errc::would_block) co_return got.error();
    co_return std::nullopt;
  }

 private:
  std::shared_ptr<Link> link_;
  PeerAuthParams params_;
  std::string role_;
  std::shared_ptr<std::optional<Error>> violation_;
};

// A frame of type M that is what the step expects; the error otherwise.
template <typename M>
Result<M> expect(const Frame& frame, bool must_be_request) {
  if (frame.type != M::kType) {
    return Error(Errc::auth_failed, "expected " + std::string(message_type_name(M::kType)) + ", got " +
                                        std::string(message_type_name(frame.type)));
  }
  if (must_be_request && !frame.wants_reply()) {
    return Error(Errc::auth_failed, std::string(message_type_name(M::kType)) + " is not a request");
  }
  auto msg = from_frame<M>(frame);
  if (!msg.ok()) return Error(Errc::auth_failed, msg.error().describe());
  return msg;
}

// Hex of a field the decoder already checked; a bad one is the peer's fault, never a crash.
Result<Bytes> hex_bytes(const std::string& hex, const char* what) {
  auto bytes = from_hex(hex);
  if (!bytes.ok()) return Error(Errc::auth_failed, std::string(what) + ": " + bytes.error().detail);
  return bytes;
}

}  // namespace

std::string group_key_id(const SecretKey& key) {
  const Bytes mac = hmac_sha256(key.bytes, as_bytes(kGroupKeyIdLabel));
  return to_hex(std::span<const std::uint8_t>(mac.data(), kKeyIdBytes));
}

std::string peer_psk_identity(std::string_view dialer, std::string_view acceptor, const SecretKey& key) {
  DTU_CHECK(is_valid_id(dialer) && is_valid_id(acceptor));
  std::string identity;
  identity.append(dialer).push_back(kIdentityArrow);
  identity.append(acceptor).push_back(kIdentityHash);
  identity.append(group_key_id(key));
  return identity;
}

std::optional<PeerPskIdentity> parse_peer_psk_identity(std::string_view identity) {
  const auto arrow = identity.find(kIdentityArrow);
  const auto hash = identity.find(kIdentityHash);
  if (arrow == std::string_view::npos || hash == std::string_view::npos || hash < arrow) return std::nullopt;
  PeerPskIdentity out{std::string(identity.substr(0, arrow)),
                      std::string(identity.substr(arrow + 1, hash - arrow - 1)),
                      std::string(identity.substr(hash + 1))};
  // Ids hold neither separator, so a second one fails one of these checks.
  if (!is_valid_id(out.dialer) || !is_valid_id(out.acceptor) || !is_key_id(out.key_id)) return std::nullopt;
  return out;
}

std::optional<Bytes> resolve_peer_psk(std::string_view identity, std::string_view self, const GroupKeys& keys,
                                      const std::function<bool(std::string_view id)>& is_member) {
  auto parsed = parse_peer_psk_identity(identity);
  if (!parsed || parsed->acceptor != self || parsed->dialer == self) return std::nullopt;
  if (!is_member || !is_member(parsed->dialer)) return std::nullopt;
  if (!keys.current.bytes.empty() && parsed->key_id == group_key_id(keys.current)) {
    return derive_pair_key(keys.current, parsed->dialer, parsed->acceptor);
  }
  if (keys.next && !keys.next->bytes.empty() && parsed->key_id == group_key_id(*keys.next)) {
    return derive_pair_key(*keys.next, parsed->dialer, parsed->acceptor);
  }
  return std::nullopt;
}

Bytes peer_auth_mac(std::span<const std::uint8_t> pair_key, PeerMacDirection direction,
                    std::span<const std::uint8_t> dialer_nonce, std::span<const std::uint8_t> acceptor_nonce,
                    std::string_view dialer_id, std::string_view acceptor_id,
                    std::span<const std::uint8_t> exporter) {
  DTU_CHECK(dialer_id.size() <= 0xffff && acceptor_id.size() <= 0xffff);
  Bytes input;
  input.reserve(kPeerAuthMacPrefix.size() + 1 + dialer_nonce.size() + acceptor_nonce.size() + 4 +
                dialer_id.size() + acceptor_id.size() + exporter.size());
  const auto prefix = as_bytes(kPeerAuthMacPrefix);
  input.insert(input.end(), prefix.begin(), prefix.end());
  input.push_back(static_cast<std::uint8_t>(direction));
  input.insert(input.end(), dialer_nonce.begin(), dialer_nonce.end());
  input.insert(input.end(), acceptor_nonce.begin(), acceptor_nonce.end());
  append_u16_prefixed(input, dialer_id);
  append_u16_prefixed(input, acceptor_id);
  input.insert(input.end(), exporter.begin(), exporter.end());
  return hmac_sha256(pair_key, input);
}

Result<Bytes> peer_auth_exporter(SSL* ssl) {
  return export_keying_material(ssl, kPeerExporterLabel, {}, kPeerExporterBytes);
}

namespace {

// Both nonces of a handshake, as bytes.
struct Nonces {
  Bytes dialer;
  Bytes acceptor;
};

// Dialer, steps 1 and 2: sends our nonce; checks the acceptor's MAC. The nonces.
asio::awaitable<Result<Nonces>> dialer_challenge(Handshake& hs) {
  const PeerAuthParams& p = hs.params();
  Nonces nonces{random_bytes(kPeerNonceBytes), {}};
  const Frame init = to_frame(PeerAuthInitMsg{p.self_id, p.peer_id, to_hex(nonces.dialer)});
  auto op = hs.link().request(FilamentMux::kControlFilament, init, p.step_timeout);
  auto reply = co_await std::move(op);
  if (!reply.ok()) co_return hs.step_failed(reply.error(), "peer_auth_challenge");

  auto challenge = expect<PeerAuthChallengeMsg>(*reply, false);
  if (!challenge.ok()) co_return challenge.error();
  auto nonce_a = hex_bytes(challenge->nonce, "peer_auth_challenge nonce");
  if (!nonce_a.ok()) co_return nonce_a.error();
  nonces.acceptor = std::move(*nonce_a);
  // Reject our own nonce sent back: reflection (a peer replaying our words as its own).
  if (constant_time_equal(nonces.acceptor, nonces.dialer)) {
    co_return Error(Errc::auth_failed, "peer_auth_challenge reflects our own nonce");
  }
  auto mac = hex_bytes(challenge->mac, "peer_auth_challenge mac");
  if (!mac.ok()) co_return mac.error();
  const Bytes expected = peer_auth_mac(p.pair_key, PeerMacDirection::acceptor_to_dialer, nonces.dialer,
                                       nonces.acceptor, p.self_id, p.peer_id, p.exporter);
  // Reject a MAC made for other nonces, ids or another connection: replay and relay.
  if (!constant_time_equal(*mac, expected))
    co_return Error(Errc::auth_failed, "bad MAC in peer_auth_challenge");
  auto early_op = hs.nothing_queued();
  auto early = co_await std::move(early_op);
  if (early) co_return *early;
  co_return nonces;
}

// Dialer, steps 3 and 4: sends our MAC, hello and purpose; the acceptor's hello.
asio::awaitable<Result<PeerHello>> dialer_proof(Handshake& hs, const Nonces& nonces) {
  const PeerAuthParams& p = hs.params();
  const Bytes mac = peer_auth_mac(p.pair_key, PeerMacDirection::dialer_to_acceptor, nonces.dialer,
                                  nonces.acceptor, p.self_id, p.peer_id, p.exporter);
  const Frame proof = to_frame(PeerAuthProofMsg{to_hex(mac), p.hello, p.purpose});
  auto op = hs.link().request(FilamentMux::kControlFilament, proof, p.step_timeout);
  auto answer = co_await std::move(op);
  if (!answer.ok()) co_return hs.step_failed(answer.error(), "peer_welcome");

  auto welcome = expect<PeerWelcomeMsg>(*answer, false);
  if (!welcome.ok()) co_return welcome.error();
  if (welcome->hello.id != p.peer_id) {
    co_return Error(Errc::auth_failed, "peer_welcome names " + welcome->hello.id + ", not " + p.peer_id);
  }
  co_return std::move(welcome->hello);
}

// Acceptor, steps 1 and 2: checks the dialer's ids; answers our nonce and MAC. The nonces.
asio::awaitable<Result<Nonces>> acceptor_challenge(Handshake& hs) {
  const PeerAuthParams& p = hs.params();
  auto op = hs.link().receive(FilamentMux::kControlFilament, p.step_timeout);
  auto first = co_await std::move(op);
  if (!first.ok()) co_return hs.step_failed(first.error(), "peer_auth_init");
  auto init = expect<PeerAuthInitMsg>(*first, true);
  if (!init.ok()) co_return init.error();
  // Reject ids other than those TLS proved: a peer speaking for another manager.
  if (init->from != p.peer_id) {
    co_return Error(Errc::auth_failed, "peer_auth_init from " + init->from + ", but TLS proved " + p.peer_id);
  }
  if (init->to != p.self_id) {
    co_return Error(Errc::auth_failed, "peer_auth_init is for " + init->to + ", not " + p.self_id);
  }
  auto nonce_d = hex_bytes(init->nonce, "peer_auth_init nonce");
  if (!nonce_d.ok()) co_return nonce_d.error();

  Nonces nonces{std::move(*nonce_d), random_bytes(kPeerNonceBytes)};
  // Reject our own nonce as the peer's: reflection.
  if (constant_time_equal(nonces.dialer, nonces.acceptor)) {
    co_return Error(Errc::auth_failed, "peer_auth_init reflects our own nonce");
  }
  const Bytes mac = peer_auth_mac(p.pair_key, PeerMacDirection::acceptor_to_dialer, nonces.dialer,
                                  nonces.acceptor, p.peer_id, p.self_id, p.exporter);
  hs.link().reply(*first, to_frame(PeerAuthChallengeMsg{to_hex(nonces.acceptor), to_hex(mac)}));
  co_return nonces;
}

// Acceptor, steps 3 and 4: checks the dialer's MAC and hello; welcomes it. The dialer's hello
// and purpose.
asio::awaitable<Result<PeerAuthResult>> acceptor_welcome(Handshake& hs, const Nonces& nonces) {
  const PeerAuthParams& p = hs.params();
  auto op = hs.link().receive(FilamentMux::kControlFilament, p.step_timeout);
  auto second = co_await std::move(op);
  if (!second.ok()) co_return hs.step_failed(second.error(), "peer_auth_proof");
  auto proof = expect<PeerAuthProofMsg>(*second, true);
  if (!proof.ok()) co_return proof.error();
  auto mac = hex_bytes(proof->mac, "peer_auth_proof mac");
  if (!mac.ok()) co_return mac.error();
  const Bytes expected = peer_auth_mac(p.pair_key, PeerMacDirection::dialer_to_acceptor, nonces.dialer,
                                       nonces.acceptor, p.peer_id, p.self_id, p.exporter);
  // Reject a MAC made for other nonces, ids or another connection: replay and relay.
  if (!constant_time_equal(*mac, expected)) co_return Error(Errc::auth_failed, "bad MAC in peer_auth_proof");
  if (proof->hello.id != p.peer_id) {
    co_return Error(Errc::auth_failed,
                    "peer_auth_proof hello names " + proof->hello.id + ", not " + p.peer_id);
  }
  auto early_op = hs.nothing_queued();
  auto early = co_await std::move(early_op);
  if (early) co_return *early;

  hs.link().reply(*second, to_frame(PeerWelcomeMsg{p.hello}));
  co_return PeerAuthResult{std::move(proof->hello), proof->purpose};
}

// The handshakes proper. The public functions build the Handshake and hand it over, so these
// coroutines take one nothrow-movable parameter.
asio::awaitable<Result<PeerAuthResult>> run_dialer(std::unique_ptr<Handshake> hs) {
  auto challenge_op = dialer_challenge(*hs);
  auto nonces = co_await std::move(challenge_op);
  if (!nonces.ok()) co_return hs->fail(nonces.error());
  auto proof_op = dialer_proof(*hs, *nonces);
  auto hello = co_await std::move(proof_op);
  if (!hello.ok()) co_return hs->fail(hello.error());
  co_return PeerAuthResult{std::move(*hello), hs->params().purpose};
}

asio::awaitable<Result<PeerAuthResult>> run_acceptor(std::unique_ptr<Handshake> hs) {
  auto challenge_op = acceptor_challenge(*hs);
  auto nonces = co_await std::move(challenge_op);
  if (!nonces.ok()) co_return hs->fail(nonces.error());
  auto welcome_op = acceptor_welcome(*hs, *nonces);
  auto result = co_await std::move(welcome_op);
  if (!result.ok()) co_return hs->fail(result.error());
  co_return std::move(*result);
}

}  // namespace

asio::awaitable<Result<PeerAuthResult>> authenticate_dialer(std::shared_ptr<Link> link,
                                                            PeerAuthParams params) {
  return run_dialer(std::make_unique<Handshake>(std::move(link), std::move(params), "dialer"));
}

asio::awaitable<Result<PeerAuthResult>> authenticate_acceptor(std::shared_ptr<Link> link,
                                                              PeerAuthParams params) {
  return run_acceptor(std::make_unique<Handshake>(std::move(link), std::move(params), "acceptor"));
}

}  // namespace dtu::common
