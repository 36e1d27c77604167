#pragma once
// Crypto primitives and key handling, all backed by OpenSSL (nothing hand-rolled): random bytes,
// HMAC-SHA256, HKDF-SHA256, constant-time comparison, hex, key files, and the project's key
// derivations (DESIGN.md §2):
//
//   DTU key  = HKDF-SHA256(ikm = site DTU key,  salt = "dtubroker dtu-psk v1",  info = dtu id)
//   pair key = HKDF-SHA256(ikm = group key,     salt = "dtubroker peer-psk v1",
//                          info = u16be(len) ‖ id  for both ids, in byte-wise sorted order)
//
// Free functions without shared state: thread-safe.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/result.hpp"

struct evp_mac_ctx_st;  // OpenSSL's EVP_MAC_CTX (openssl/types.h)

namespace dtu::common {

using Bytes = std::vector<std::uint8_t>;

// Size of every long-term key (site DTU key, group key) and of every derived PSK, in bytes
// (256 bits).
inline constexpr std::size_t kKeyBytes = 32;

// Salts of the two derivations; a new version of either derivation gets a new salt.
inline constexpr std::string_view kDtuPskSalt = "dtubroker dtu-psk v1";
inline constexpr std::string_view kPeerPskSalt = "dtubroker peer-psk v1";

// n bytes from OpenSSL's CSPRNG. Aborts (CHECK) if the generator cannot produce them: running on
// without randomness would hand out predictable nonces and keys.
// REQUIRES: n <= INT_MAX
Bytes random_bytes(std::size_t n);

// HMAC-SHA256(key, data): 32 bytes. Any key length, including empty.
Bytes hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data);

// HMAC-SHA256 under one key, prepared once: each mac() copies the prepared state and hashes
// data, instead of looking the algorithm up and scheduling the key again (a state token is
// signed per allocation). One object is not safe to use from two threads at once.
class HmacSha256 {
 public:
  explicit HmacSha256(std::span<const std::uint8_t> key);
  ~HmacSha256();
  HmacSha256(HmacSha256&& other) noexcept;
  HmacSha256& operator=(HmacSha256&& other) noexcept;
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  // HMAC-SHA256(key, data): 32 bytes.
  Bytes mac(std::span<const std::uint8_t> data) const;

 private:
  evp_mac_ctx_st* prepared_;  // keyed; owned
};

// HKDF-SHA256 (RFC 5869, extract then expand). salt and info may be empty.
// REQUIRES: 1 <= length <= 255 * 32
Bytes hkdf_sha256(std::span<const std::uint8_t> ikm, std::span<const std::uint8_t> salt,
                  std::span<const std::uint8_t> info, std::size_t length);

// True when a and b hold the same bytes. The time taken depends only on the length, never on
// where the first difference is (use it for every MAC and token comparison). Different
// lengths return false at once: lengths are not secret.
bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

// Lower-case hex, two characters per byte.
std::string to_hex(std::span<const std::uint8_t> bytes);

// Parses hex (either case, no separators, even length). Errc::invalid_argument with the
// offending position otherwise.
Result<Bytes> from_hex(std::string_view hex);

// The bytes of a string, without copying. The span lives as long as the viewed characters.
std::span<const std::uint8_t> as_bytes(std::string_view text);

// A long-term key (site DTU key or group key): kKeyBytes random bytes.
struct SecretKey {
  Bytes bytes;
};

// Reads a key file: exactly 64 hex characters (kKeyBytes bytes), optionally followed by
// whitespace (a trailing newline). Errors name the path and what was wrong:
// Errc::io_error when the file cannot be opened or read, Errc::config_error for bad content
// (empty, wrong length, a character that is not hex).
Result<SecretKey> load_key_file(const std::string& path);

// Writes key as 64 hex characters and a newline. The file is created (or truncated) with mode
// 0600, and an existing file's mode is reset to 0600. Refuses to follow a symlink at path.
// REQUIRES: key.bytes.size() == kKeyBytes
Result<void> write_key_file(const std::string& path, const SecretKey& key);

// A fresh random key of kKeyBytes bytes.
SecretKey generate_key();

// The PSK of one DTU: what the DTU holds and what a manager derives from the site key.
// A DTU knows only its own derived key, so it cannot compute another DTU's.
// REQUIRES: site_dtu_key.bytes not empty
Bytes derive_dtu_key(const SecretKey& site_dtu_key, std::string_view dtu_id);

// The PSK of the link between managers id_a and id_b. Symmetric:
// derive_pair_key(k, a, b) == derive_pair_key(k, b, a). The length prefixes keep the encoding
// unambiguous, so ("ab", "c") and ("a", "bc") get different keys.
// REQUIRES: group_key.bytes not empty; each id at most 65535 bytes
Bytes derive_pair_key(const SecretKey& group_key, std::string_view id_a, std::string_view id_b);

}  // namespace dtu::common
