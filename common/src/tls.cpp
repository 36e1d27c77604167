#include "dtu/common/tls.hpp"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <utility>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

// TLS_AES_128_GCM_SHA256 as its two-byte IANA code (RFC 8446 appendix B.4).
constexpr unsigned char kTlsAes128GcmSha256[2] = {0x13, 0x01};
constexpr const char* kCipherSuites = "TLS_AES_128_GCM_SHA256";
constexpr std::size_t kMaxPskIdentityBytes = 0xffff;  // RFC 8446 §4.2.11: opaque identity<1..2^16-1>

// What one connection knows about its PSK. Client: the identity and key it offers (set by
// set_client_psk). Server: the identity whose session the find callback handed to OpenSSL.
struct PskState {
  std::string identity;
  Bytes key;

  ~PskState() {
    if (!key.empty()) OPENSSL_cleanse(key.data(), key.size());
  }
};

void cleanse(Bytes& b) {
  if (!b.empty()) OPENSSL_cleanse(b.data(), b.size());
}

void free_psk_state(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                    void* /*argp*/) {
  delete static_cast<PskState*>(ptr);
}

// SSL_dup copies ex_data pointers; give the copy its own state so each SSL frees only its own.
int dup_psk_state(CRYPTO_EX_DATA* /*to*/, const CRYPTO_EX_DATA* /*from*/, void** from_d, int /*idx*/,
                  long /*argl*/, void* /*argp*/) {
  if (*from_d != nullptr) *from_d = new PskState(*static_cast<const PskState*>(*from_d));
  return 1;
}

void free_resolver(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                   void* /*argp*/) {
  delete static_cast<PskResolver*>(ptr);
}

int psk_state_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, dup_psk_state, free_psk_state);
  DTU_CHECK(index > 0);
  return index;
}

int resolver_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_resolver);
  DTU_CHECK(index > 0);
  return index;
}

PskState* psk_state(SSL* ssl) { return static_cast<PskState*>(SSL_get_ex_data(ssl, psk_state_index())); }

PskState& ensure_psk_state(SSL* ssl) {
  if (PskState* existing = psk_state(ssl)) return *existing;
  auto* state = new PskState;
  DTU_CHECK(SSL_set_ex_data(ssl, psk_state_index(), state) == 1);
  return *state;
}

// An SSL_SESSION that carries an external PSK: key as master key, our one cipher suite,
// TLS 1.3, and no early data. nullptr when OpenSSL refuses (the handshake then fails).
SSL_SESSION* make_psk_session(SSL* ssl, const Bytes& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kTlsAes128GcmSha256);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* session = SSL_SESSION_new();
  if (session == nullptr) return nullptr;
  if (SSL_SESSION_set1_master_key(session, key.data(), key.size()) != 1 ||
      SSL_SESSION_set_cipher(session, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) != 1 ||
      SSL_SESSION_set_max_early_data(session, 0) != 1) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;
}

// Client: offers the identity and key of this connection. md is null on the first ClientHello
// and the handshake hash after a HelloRetryRequest; a PSK whose hash differs cannot be used.
int client_use_psk_session(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* id_len,
                           SSL_SESSION** session) {
  *id = nullptr;
  *id_len = 0;
  *session = nullptr;
  const PskState* state = psk_state(ssl);
  if (state == nullptr || state->identity.empty() || state->key.empty()) return 0;  // fails as "bad psk"
  SSL_SESSION* psk = make_psk_session(ssl, state->key);
  if (psk == nullptr) return 0;
  if (md != nullptr && SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(psk)) != md) {
    SSL_SESSION_free(psk);
    return 1;  // offer nothing; the handshake then fails on the certificate path
  }
  *session = psk;
  *id = reinterpret_cast<const unsigned char*>(state->identity.data());
  *id_len = state->identity.size();
  return 1;
}

// Server: looks the offered identity up. Returning a session only says "this identity has this
// key"; OpenSSL then checks the client's binder, so a client without the key still fails.
int server_find_psk_session(SSL* ssl, const unsigned char* identity, std::size_t identity_len,
                            SSL_SESSION** session) {
  *session = nullptr;
  const auto* resolver = static_cast<const PskResolver*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), resolver_index()));
  if (resolver == nullptr) return 0;
  const std::string_view id(reinterpret_cast<const char*>(identity), identity_len);

  std::optional<Bytes> key;
  try {
    key = (*resolver)(id);
  } catch (...) {
    // An exception must not cross OpenSSL's C frames; the handshake fails instead.
    ERR_raise(ERR_LIB_SSL, ERR_R_INTERNAL_ERROR);
    return 0;
  }
  if (key && (key->size() < kMinPskBytes || key->size() > kMaxPskBytes)) {
    cleanse(*key);
    key.reset();
  }
  if (!key) {
    // Unknown identity: abort now rather than fall back to a certificate handshake. The reason
    // goes on the error queue first, so it is what the server's handshake error reports.
    ERR_raise(ERR_LIB_SSL, SSL_R_PSK_IDENTITY_NOT_FOUND);
    return 0;
  }
  SSL_SESSION* psk = make_psk_session(ssl, *key);
  cleanse(*key);
  if (psk == nullptr) return 0;
  // Remembered for accepted_psk_identity(); meaningful only once the handshake completes,
  // i.e. once the client has proven this key.
  ensure_psk_state(ssl).identity.assign(id);
  *session = psk;
  return 1;
}

// Threat: a man in the middle that ignores the client's PSK and authenticates with any
// certificate. No certificate is ever acceptable here, so the client rejects them all.
int reject_every_certificate(int /*preverify_ok*/, X509_STORE_CTX* /*store*/) { return 0; }

void configure_common(SSL_CTX* ctx) {
  // Threat: downgrade to an older protocol without the TLS 1.3 PSK binder and key schedule.
  DTU_CHECK(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1);
  DTU_CHECK(SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1);
  DTU_CHECK(SSL_CTX_set_ciphersuites(ctx, kCipherSuites) == 1);
  // Threat: a stolen PSK decrypting recorded traffic. Without this option OpenSSL offers and
  // accepts only psk_dhe_ke, so every connection runs an ephemeral (EC)DHE.
  SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_NO_DHE_KEX);
  // Every connection re-proves the PSK: no tickets issued, none cached, nothing resumed.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  DTU_CHECK(SSL_CTX_set_num_tickets(ctx, 0) == 1);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Threat: replay of 0-RTT data, which has no replay protection.
  DTU_CHECK(SSL_CTX_set_max_early_data(ctx, 0) == 1);
  DTU_CHECK(SSL_CTX_set_recv_max_early_data(ctx, 0) == 1);
  DTU_CHECK((SSL_CTX_get_options(ctx) & SSL_OP_ALLOW_NO_DHE_KEX) == 0);
  // An idle link (a DTU between heartbeats) gives back OpenSSL's record buffers (~34 KB a
  // connection): a manager holds thousands of such links (docs/performance.md, scale).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

const char* hint_for(int reason) {
  switch (reason) {
    case SSL_R_BINDER_DOES_NOT_VERIFY: return "the client's PSK differs from ours for its identity (wrong key)";
    case SSL_R_PSK_IDENTITY_NOT_FOUND: return "the client's PSK identity is not known here";
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:
      // RFC 8446 asks for decrypt_error on a bad binder; OpenSSL servers send illegal_parameter.
      return "the peer rejected our handshake (wrong PSK for this identity?)";
    case SSL_R_TLSV1_ALERT_INTERNAL_ERROR:
      return "the peer aborted the handshake (a server reports an unknown PSK identity this way)";
    case SSL_R_BAD_PSK: return "no usable PSK for this connection (set_client_psk not called?)";
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      return "the peer presented a certificate instead of proving the PSK: not one of ours";
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
      return "the peer offered no PSK we accept: not one of ours";
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
      return "the peer does not speak TLS 1.3";
    default: return nullptr;
  }
}

}  // namespace

std::shared_ptr<asio::ssl::context> make_psk_client_context() {
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX* ctx = context->native_handle();
  configure_common(ctx);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, reject_every_certificate);
  SSL_CTX_set_psk_use_session_callback(ctx, client_use_psk_session);
  return context;
}

void set_client_psk(SSL* ssl, std::string identity, Bytes key) {
  DTU_CHECK(ssl != nullptr && !SSL_is_server(ssl));
  DTU_CHECK(!identity.empty() && identity.size() <= kMaxPskIdentityBytes);
  DTU_CHECK(key.size() >= kMinPskBytes && key.size() <= kMaxPskBytes);
  PskState& state = ensure_psk_state(ssl);
  cleanse(state.key);
  state.identity = std::move(identity);
  state.key = std::move(key);
}

std::shared_ptr<asio::ssl::context> make_psk_server_context(PskResolver resolver) {
  DTU_CHECK(static_cast<bool>(resolver));
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* ctx = context->native_handle();
  configure_common(ctx);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);  // no client certificates: the PSK is the proof
  auto* owned = new PskResolver(std::move(resolver));  // freed with the SSL_CTX (free_resolver)
  if (SSL_CTX_set_ex_data(ctx, resolver_index(), owned) != 1) {
    delete owned;
    DTU_CHECK(false);
  }
  SSL_CTX_set_psk_find_session_callback(ctx, server_find_psk_session);
  return context;
}

std::optional<std::string> accepted_psk_identity(SSL* ssl) {
  if (ssl == nullptr || !SSL_is_server(ssl) || !SSL_is_init_finished(ssl)) return std::nullopt;
  // SSL_session_reused: the handshake used a PSK (ours are the only PSKs there are).
  if (SSL_session_reused(ssl) != 1) return std::nullopt;
  const PskState* state = psk_state(ssl);
  if (state == nullptr || state->identity.empty()) return std::nullopt;
  return state->identity;
}

Result<Bytes> export_keying_material(SSL* ssl, std::string_view label, std::span<const std::uint8_t> context,
                                     std::size_t length) {
  if (ssl == nullptr || !SSL_is_init_finished(ssl)) {
    return Error{Errc::illegal_state, "TLS exporter used before the handshake completed"};
  }
  if (length == 0) return Error{Errc::invalid_argument, "TLS exporter asked for 0 bytes"};
  static const unsigned char kNone[1] = {0};
  Bytes out(length);
  ERR_clear_error();
  const int rc = SSL_export_keying_material(ssl, out.data(), out.size(), label.data(), label.size(),
                                            context.empty() ? kNone : context.data(), context.size(),
                                            /*use_context=*/1);
  if (rc != 1) {
    const unsigned long err = ERR_get_error();
    const char* reason = err != 0 ? ERR_reason_error_string(err) : nullptr;
    return Error{Errc::invalid_argument,
                 std::string("TLS exporter failed: ") + (reason != nullptr ? reason : "unknown OpenSSL error")};
  }
  return out;
}

std::string describe_tls_error(const std::error_code& ec) {
  if (!ec) return "no error";
  if (ec == asio::ssl::error::stream_truncated) {
    return "TLS: the peer closed the connection without a close_notify (stream truncated)";
  }
  if (ec == asio::error::eof) return "TLS: the peer closed the connection";
  if (ec.category() != asio::error::get_ssl_category()) {
    return std::string(ec.category().name()) + ": " + ec.message();
  }
  // asio stores ERR_get_error()'s unsigned long as an int; undo that.
  const auto code = static_cast<unsigned long>(static_cast<unsigned int>(ec.value()));
  const char* reason = ERR_reason_error_string(code);
  const char* lib = ERR_lib_error_string(code);
  std::string text = "TLS: ";
  text += reason != nullptr ? reason : "OpenSSL error " + std::to_string(code);
  if (lib != nullptr) {
    text += " (";
    text += lib;
    text += ')';
  }
  if (ERR_GET_LIB(code) == ERR_LIB_SSL) {
    if (const char* hint = hint_for(ERR_GET_REASON(code))) {
      text += ": ";
      text += hint;
    }
  }
  return text;
}

}  // namespace dtu::common
