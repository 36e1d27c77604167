#pragma once
// Peer handshake messages (types 128–131): the challenge–response two managers of a group run
// on filament 0 right after their TLS-PSK handshake, before any other message (peer_auth.hpp
// runs it; docs/protocol.md "Peer mesh handshake" documents each). One plain struct per message
// with to_json/from_json beside it. Values; not thread-safe.
//
// Decoding is strict: every field is required, ids must be common::is_valid_id, nonces and MACs
// are exactly kPeerNonceBytes / kPeerMacBytes bytes written as lower- or upper-case hex, and
// purpose is "link" or "please_initiate".

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dtu/common/message_type.hpp"

namespace dtu::common {

// Bytes of a handshake nonce (64 hex digits on the wire): fresh from the CSPRNG per connection.
inline constexpr std::size_t kPeerNonceBytes = 32;
// Bytes of a handshake MAC (HMAC-SHA256; 64 hex digits on the wire).
inline constexpr std::size_t kPeerMacBytes = 32;

// Why the dialer opened the connection. `link`: this connection becomes the pair's link.
// `please_initiate`: the dialer is the higher of the pair and asks the lower one to dial it
// (the acceptor answers peer_welcome and the connection ends).
enum class PeerPurpose { link, please_initiate };

// "link" | "please_initiate".
const char* peer_purpose_name(PeerPurpose purpose);

// Who a manager is, as its peer learns it at the end of the handshake.
struct PeerHello {
  std::string id;                 // the manager's id (common::is_valid_id)
  std::uint64_t incarnation = 0;  // changes at every start of the manager
  std::string mesh;               // its mesh address, "host:port"
  std::string version;            // its software version, for logs and status

  friend bool operator==(const PeerHello&, const PeerHello&) = default;
};

// Dialer -> acceptor (request), step 1: who talks to whom, and the dialer's nonce (hex).
struct PeerAuthInitMsg {
  static constexpr MessageType kType = MessageType::peer_auth_init;
  std::string from;   // the dialer's id: must equal the id its TLS PSK identity proved
  std::string to;     // the acceptor's id
  std::string nonce;  // kPeerNonceBytes, hex
};

// Acceptor -> dialer (reply to peer_auth_init), step 2: the acceptor's nonce and its MAC over
// the handshake (direction acceptor -> dialer), both hex.
struct PeerAuthChallengeMsg {
  static constexpr MessageType kType = MessageType::peer_auth_challenge;
  std::string nonce;
  std::string mac;
};

// Dialer -> acceptor (request), step 3: the dialer's MAC (direction dialer -> acceptor), its
// hello and why it dialed.
struct PeerAuthProofMsg {
  static constexpr MessageType kType = MessageType::peer_auth_proof;
  std::string mac;
  PeerHello hello;
  PeerPurpose purpose = PeerPurpose::link;
};

// Acceptor -> dialer (reply to peer_auth_proof), step 4: authenticated; the acceptor's hello.
struct PeerWelcomeMsg {
  static constexpr MessageType kType = MessageType::peer_welcome;
  PeerHello hello;
};

void to_json(nlohmann::json& j, const PeerHello& m);
void from_json(const nlohmann::json& j, PeerHello& m);
void to_json(nlohmann::json& j, const PeerAuthInitMsg& m);
void from_json(const nlohmann::json& j, PeerAuthInitMsg& m);
void to_json(nlohmann::json& j, const PeerAuthChallengeMsg& m);
void from_json(const nlohmann::json& j, PeerAuthChallengeMsg& m);
void to_json(nlohmann::json& j, const PeerAuthProofMsg& m);
void from_json(const nlohmann::json& j, PeerAuthProofMsg& m);
void to_json(nlohmann::json& j, const PeerWelcomeMsg& m);
void from_json(const nlohmann::json& j, PeerWelcomeMsg& m);

}  // namespace dtu::common
