#pragma once
// StateToken: the manager-side context of one lease, signed under the group key so that any
// manager of the group can restore it without the manager that issued it and without disk
// (DESIGN.md §5, docs/protocol.md "State tokens"). The granting manager hands it to the DTU
// (lease_request.state_token, kept with the lease and reported back on every connect) and to the
// service (lease_granted.state_token, sent back with resume_lease).
//
// Wire form, at most kMaxStateTokenBytes characters:
//
//   base64url(json) "." base64url(HMAC-SHA256(K, json))      (no padding)
//   K = HKDF-SHA256(ikm = group key, salt = "dtubroker state-token v1", info = "")
//
// The JSON names the key that signed it (group_key_id, field "key"), so a token signed with the
// current or the next key of a rotation verifies at every manager that has that key.
// A token is not secret (anyone on its path may read it) and it is not an authorisation by
// itself: it only carries who held the lease so that a DTU's report can be tied back to a holder.
//
// Free functions without shared state: thread-safe.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dtu/common/peer_auth.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

// Above this a token is refused unread (and not issued): it travels in every lease report.
inline constexpr std::size_t kMaxStateTokenBytes = 4096;
// Salt of the token key derivation; a new token format gets a new salt.
inline constexpr std::string_view kStateTokenSalt = "dtubroker state-token v1";
inline constexpr int kStateTokenVersion = 1;

struct StateToken {
  int v = kStateTokenVersion;
  std::string kind = "lease";
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  // The lease id, or empty in the token the DTU keeps: the manager signs it before the DTU has
  // chosen the id; the DTU's report names the lease.
  std::string lease;
  std::string holder;  // "<program>[<pid>]@<manager>", as the DTU records it
  std::string origin;  // the id of the holder's manager (where its service is connected)
  std::string client;  // the program name the service declared
  unsigned uid = 0;
  unsigned gid = 0;
  unsigned pid = 0;
  std::string rule;                // the policy rule that allowed the allocation
  std::uint32_t length_ms = 0;     // the lease length granted
  std::uint32_t max_lease_ms = 0;  // the policy's cap on renewals; 0: none
  bool keep = false;               // the lease outlives its holder's connection
  std::string issued_by;           // the manager that signed it
  std::int64_t issued_us = 0;      // universal time of signing (µs)

  friend bool operator==(const StateToken&, const StateToken&) = default;
};

// The signing key derived from one group key (32 bytes).
Bytes state_token_key(const SecretKey& group_key);

// Signs `token` with keys.current. Errc::invalid_argument when the result would exceed
// kMaxStateTokenBytes (a field far too long).
// REQUIRES: keys.current.bytes not empty
Result<std::string> sign_state_token(const StateToken& token, const GroupKeys& keys);

// Checks and decodes a token. Errors:
//   Errc::bad_payload  malformed: longer than kMaxStateTokenBytes, not two base64url parts, or
//                      a correctly signed JSON without the fields of version 1;
//   Errc::auth_failed  "unknown key": signed with a key that is neither keys.current nor
//                      keys.next (a foreign group or a retired key); "tampered": the MAC does
//                      not match the content.
Result<StateToken> verify_state_token(std::string_view text, const GroupKeys& keys);

// base64url without padding (RFC 4648 §5), for the token's two parts.
std::string base64url_encode(std::string_view bytes);
// nullopt-like error (Errc::bad_payload) on a character outside the alphabet, padding, or a
// length that no encoding produces.
Result<std::string> base64url_decode(std::string_view text);

}  // namespace dtu::common
