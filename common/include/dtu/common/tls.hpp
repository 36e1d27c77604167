#pragma once
// TLS contexts for every link of the project: TLS 1.3 with an external pre-shared key and
// (EC)DHE, no certificates anywhere (DESIGN.md §2).
//
//   - version TLS 1.3 only; cipher suite TLS_AES_128_GCM_SHA256 (the PSK's hash is SHA-256);
//   - key exchange psk_dhe_ke only: every connection runs an ephemeral (EC)DHE, so recording
//     traffic and later stealing a PSK does not decrypt it (forward secrecy);
//   - no session tickets, no session cache, no early data: every connection proves the PSK
//     afresh and nothing can be replayed as 0-RTT;
//   - the client accepts no certificate: a server that skips the PSK and authenticates with a
//     certificate fails the handshake.
//
// Client:  auto ctx = make_psk_client_context();
//          co_await tls_connect(std::move(socket), *ctx, "dtu-7", derived_key, timeout);  // net.hpp
// Server:  auto ctx = make_psk_server_context([&](std::string_view id) { return key_of(id); });
//          co_await tls_accept(...); then accepted_psk_identity(t->ssl()) is the proven identity.
// (The contexts work as well for an asio::ssl::stream, as tls_test does.)
//
// Threading: a context may be shared by connections on any thread (OpenSSL's SSL_CTX is
// thread-safe). The PSK resolver runs on the thread that drives the server handshake (in this
// project: the daemon's one io_context thread). The SSL* functions below act on one connection
// and must be called on the thread that owns its stream.
//
// Setup failures of the contexts (OpenSSL refusing TLS 1.3 or AES-128-GCM) mean a broken
// OpenSSL installation, not a runtime condition; they abort with CHECK rather than return an
// error.

#include <openssl/ssl.h>

#include <asio/ssl.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "dtu/common/crypto.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

// Bounds on a PSK, in bytes. The binder of a PSK handshake lets an eavesdropper test guesses
// offline, so a PSK must be a full-entropy key of at least 128 bits, never a password.
inline constexpr std::size_t kMinPskBytes = 16;
inline constexpr std::size_t kMaxPskBytes = 64;

// A client context. Every connection made from it needs set_client_psk() before its handshake;
// one without fails the handshake.
std::shared_ptr<asio::ssl::context> make_psk_client_context();

// Sets the identity and key this client connection offers. The values are kept with the SSL
// object and wiped when it is freed; a second call replaces the first.
// REQUIRES: ssl comes from a context of make_psk_client_context(), before its handshake;
//           identity not empty and at most 65535 bytes;
//           kMinPskBytes <= key.size() <= kMaxPskBytes
void set_client_psk(SSL* ssl, std::string identity, Bytes key);

// Maps an identity offered by a client to its key, or nullopt when the identity is unknown.
// Runs during the handshake, before the client has proven anything: it must not act on the
// identity beyond the lookup. A returned key outside [kMinPskBytes, kMaxPskBytes] is treated
// as unknown.
using PskResolver = std::function<std::optional<Bytes>(std::string_view identity)>;

// A server context. A client whose identity the resolver does not know, or whose key differs
// from the resolved one, fails the handshake.
// REQUIRES: resolver is callable
std::shared_ptr<asio::ssl::context> make_psk_server_context(PskResolver resolver);

// On a server connection whose handshake has completed: the identity whose PSK the client
// proved. Callers bind the connection to this identity (a DTU id, a manager id, a lease id).
// nullopt before the handshake completes, on a client connection, or if no PSK was used.
std::optional<std::string> accepted_psk_identity(SSL* ssl);

// The RFC 8446 §7.5 exporter: length bytes bound to this connection's secrets, equal on both
// ends and different for every other connection, label or context. Errors:
// Errc::illegal_state before the handshake has completed, Errc::invalid_argument when length
// is 0 or OpenSSL refuses the request.
Result<Bytes> export_keying_material(SSL* ssl, std::string_view label, std::span<const std::uint8_t> context,
                                     std::size_t length);

// Readable text for an error from a TLS stream: OpenSSL's reason (and a hint for the PSK
// failures operators meet: wrong key, unknown identity, a peer that is not one of ours) when
// the error is from asio's ssl category; the plain message otherwise.
std::string describe_tls_error(const std::error_code& ec);

}  // namespace dtu::common
