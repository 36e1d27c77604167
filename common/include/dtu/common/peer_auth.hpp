#pragma once
// Peer authentication: how two managers of a group prove to each other that each holds the
// group key and is who it says, on one TLS connection (docs/protocol.md "Peer mesh handshake").
//
//  - TLS 1.3 PSK: the dialer is the TLS client and offers the identity
//    "<dialer id>><acceptor id>#<key id>" with PSK = derive_pair_key(group key, dialer,
//    acceptor). The acceptor's resolver (resolve_peer_psk) knows only identities naming itself,
//    a dialer of its group and the key id of its current or next group key.
//  - Then, on filament 0 of the Link over that connection, four messages (peer_messages.hpp):
//    peer_auth_init, peer_auth_challenge, peer_auth_proof, peer_welcome. Each side sends a MAC
//    under the pair PSK over both nonces, both ids and the connection's TLS exporter, so a
//    recorded or relayed answer fails on any other connection.
//
// Key rotation: a group runs with a current key and, while rotating, a next key. A dialer
// offers its current key; if TLS fails and it has a next key, it retries once with the next
// one (the caller does this). An acceptor accepts either.
//
// Free functions are pure and thread-safe. The two coroutines run on the link's executor.

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/peer_messages.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

// The group's keys: the one in use and, during a rotation, the one that replaces it.
struct GroupKeys {
  SecretKey current;
  std::optional<SecretKey> next;
};

// Label of the TLS exporter both sides feed into their MACs, and its length in bytes.
inline constexpr std::string_view kPeerExporterLabel = "EXPORTER-dtubroker-peer-auth";
inline constexpr std::size_t kPeerExporterBytes = 32;
// Prefix of every handshake MAC input; a new version of the handshake gets a new prefix.
inline constexpr std::string_view kPeerAuthMacPrefix = "dtubroker peer-auth v1";
// Input of the key id HMAC.
inline constexpr std::string_view kGroupKeyIdLabel = "dtubroker key-id v1";

// Names a group key without revealing it: the first 8 bytes of
// HMAC-SHA256(key, "dtubroker key-id v1") as 16 lower-case hex digits.
std::string group_key_id(const SecretKey& key);

// The TLS PSK identity a dialer offers: "<dialer>><acceptor>#<group_key_id(key)>".
// REQUIRES: is_valid_id(dialer), is_valid_id(acceptor)
std::string peer_psk_identity(std::string_view dialer, std::string_view acceptor, const SecretKey& key);

struct PeerPskIdentity {
  std::string dialer, acceptor, key_id;
};
// Splits an identity made by peer_psk_identity; nullopt when it is not one (ids not valid, key
// id not 16 lower-case hex digits, separators missing or repeated).
std::optional<PeerPskIdentity> parse_peer_psk_identity(std::string_view identity);

// The PSK for an identity offered to `self`, or nullopt (unknown dialer, not us, unknown key id).
// `is_member` says whether a dialer id is in our group list. The dialer must not be `self`.
std::optional<Bytes> resolve_peer_psk(std::string_view identity, std::string_view self, const GroupKeys& keys,
                                      const std::function<bool(std::string_view id)>& is_member);

// Which way a handshake MAC goes (the u8 in its input).
enum class PeerMacDirection : std::uint8_t { dialer_to_acceptor = 1, acceptor_to_dialer = 2 };

// MAC(direction) = HMAC-SHA256(pair key, "dtubroker peer-auth v1" ‖ u8 direction ‖ dialer nonce
// ‖ acceptor nonce ‖ u16be len ‖ dialer id ‖ u16be len ‖ acceptor id ‖ exporter). 32 bytes.
// REQUIRES: each id at most 65535 bytes
Bytes peer_auth_mac(std::span<const std::uint8_t> pair_key, PeerMacDirection direction,
                    std::span<const std::uint8_t> dialer_nonce, std::span<const std::uint8_t> acceptor_nonce,
                    std::string_view dialer_id, std::string_view acceptor_id,
                    std::span<const std::uint8_t> exporter);

struct PeerAuthParams {
  std::string self_id;
  std::string peer_id;                      // dialer: the peer dialed; acceptor: the TLS-proven dialer id
  Bytes pair_key;                           // the PSK this connection used
  Bytes exporter;                           // peer_auth_exporter() of this connection
  PeerHello hello;                          // ours
  PeerPurpose purpose = PeerPurpose::link;  // dialer only
  Duration step_timeout = std::chrono::seconds(5);
  Logger log{"peer_auth"};  // writes the peer_auth_failed line (the mesh passes its own)
};

// What the handshake learnt about the peer.
struct PeerAuthResult {
  PeerHello hello;
  PeerPurpose purpose;  // the dialer's purpose (on the dialer: the one it sent)
};

// kPeerExporterBytes of the TLS exporter with label kPeerExporterLabel and an empty context.
// Errors as export_keying_material (Errc::illegal_state before the handshake completed).
Result<Bytes> peer_auth_exporter(SSL* ssl);

// Run the four steps on filament 0 of `link`, each bounded by params.step_timeout. On success
// the peer's hello (its id checked against params.peer_id) and the dialer's purpose; the link
// stays open and nothing but heartbeats has crossed it. On any failure (another message, a
// bad MAC, a wrong id, a reflected nonce, a step past its deadline, the link lost) the link is
// closed with the error (Errc::auth_failed, Errc::timeout or the link's own error), one line
// `peer_auth_failed` {reason, peer_id} is logged with the link's peer as its address, and the
// error is returned.
// From the call until the handshake ends, a filament opened by the peer fails it.
// REQUIRES: link started, no receiver set on filament 0 (uses link->receive()), no open handler
//           set on the link's mux (the handshake sets one and clears it when it ends).
asio::awaitable<Result<PeerAuthResult>> authenticate_dialer(std::shared_ptr<Link> link,
                                                            PeerAuthParams params);
asio::awaitable<Result<PeerAuthResult>> authenticate_acceptor(std::shared_ptr<Link> link,
                                                              PeerAuthParams params);

}  // namespace dtu::common
