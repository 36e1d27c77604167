#include "dtu/common/crypto.hpp"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <utility>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

// A key file is 64 characters and a newline; anything much larger is not a key file, and the
// cap keeps a path like /dev/zero from being read forever.
constexpr std::size_t kMaxKeyFileBytes = 4096;
constexpr std::size_t kHmacSha256Bytes = 32;
constexpr std::size_t kMaxHkdfSha256Bytes = 255 * 32;  // RFC 5869: L <= 255 * HashLen

// OpenSSL reads through these pointers but its parameter API takes non-const ones; an empty
// span may have a null data pointer, which some providers reject, so empty inputs point here.
const std::uint8_t kEmpty[1] = {0};

void* param_data(std::span<const std::uint8_t> s) {
  return const_cast<std::uint8_t*>(s.empty() ? kEmpty : s.data());
}

struct KdfCtxDeleter {
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};
struct MacCtxDeleter {
  void operator()(EVP_MAC_CTX* ctx) const { EVP_MAC_CTX_free(ctx); }
};

// The algorithms, looked up once per process: OpenSSL 3's fetch by name takes the provider
// store's locks and searches it, which cost more than an HMAC of a state token. Fetched
// algorithms may be shared between threads; these live until the process ends.
EVP_MAC* hmac_algorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  DTU_CHECK(mac != nullptr);
  return mac;
}

EVP_KDF* hkdf_algorithm() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  DTU_CHECK(kdf != nullptr);
  return kdf;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string errno_text(int err) { return std::strerror(err); }

// Closes fd on scope exit.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  // Closes now and reports close(2)'s result (a write error can surface only here).
  int close_now() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Wipes a buffer that held key material when it goes out of scope.
class Cleanser {
 public:
  explicit Cleanser(std::string& s) : s_(s) {}
  ~Cleanser() {
    if (!s_.empty()) OPENSSL_cleanse(s_.data(), s_.size());
  }
  Cleanser(const Cleanser&) = delete;
  Cleanser& operator=(const Cleanser&) = delete;

 private:
  std::string& s_;
};

}  // namespace

Bytes random_bytes(std::size_t n) {
  DTU_CHECK(n <= static_cast<std::size_t>(INT_MAX));
  Bytes out(n);
  if (n == 0) return out;
  // A failing CSPRNG must stop us: predictable nonces and keys break every guarantee.
  DTU_CHECK(RAND_bytes(out.data(), static_cast<int>(n)) == 1);
  return out;
}

HmacSha256::HmacSha256(std::span<const std::uint8_t> key) : prepared_(EVP_MAC_CTX_new(hmac_algorithm())) {
  DTU_CHECK(prepared_ != nullptr);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  DTU_CHECK(EVP_MAC_init(prepared_, static_cast<const unsigned char*>(param_data(key)), key.size(), params) ==
            1);
}

HmacSha256::~HmacSha256() {
  EVP_MAC_CTX_free(prepared_);
}

HmacSha256::HmacSha256(HmacSha256&& other) noexcept : prepared_(std::exchange(other.prepared_, nullptr)) {}

HmacSha256& HmacSha256::operator=(HmacSha256&& other) noexcept {
  std::swap(prepared_, other.prepared_);
  return *this;
}

Bytes HmacSha256::mac(std::span<const std::uint8_t> data) const {
  DTU_CHECK(prepared_ != nullptr);
  std::unique_ptr<EVP_MAC_CTX, MacCtxDeleter> ctx(EVP_MAC_CTX_dup(prepared_));
  DTU_CHECK(ctx != nullptr);
  DTU_CHECK(EVP_MAC_update(ctx.get(), data.empty() ? kEmpty : data.data(), data.size()) == 1);
  Bytes out(kHmacSha256Bytes);
  std::size_t out_len = 0;
  DTU_CHECK(EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) == 1);
  DTU_CHECK(out_len == kHmacSha256Bytes);
  return out;
}

Bytes hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
  return HmacSha256(key).mac(data);
}

Bytes hkdf_sha256(std::span<const std::uint8_t> ikm, std::span<const std::uint8_t> salt,
                  std::span<const std::uint8_t> info, std::size_t length) {
  DTU_CHECK(length >= 1 && length <= kMaxHkdfSha256Bytes);
  std::unique_ptr<EVP_KDF_CTX, KdfCtxDeleter> ctx(EVP_KDF_CTX_new(hkdf_algorithm()));
  DTU_CHECK(ctx != nullptr);

  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, param_data(ikm), ikm.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, param_data(salt), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, param_data(info), info.size()),
      OSSL_PARAM_construct_end(),
  };
  Bytes out(length);
  DTU_CHECK(EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) == 1);
  return out;
}

bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

Result<Bytes> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return Error{Errc::invalid_argument, "hex string has odd length " + std::to_string(hex.size())};
  }
  Bytes out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      const std::size_t bad = hi < 0 ? i : i + 1;
      return Error{Errc::invalid_argument, "character at offset " + std::to_string(bad) + " is not a hex digit"};
    }
    out.push_back(static_cast<std::uint8_t>((hi << 4) | lo));
  }
  return out;
}

std::span<const std::uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

Result<SecretKey> load_key_file(const std::string& path) {
  const std::string where = "key file " + path;
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Error{Errc::io_error, "cannot open " + where + ": " + errno_text(errno)};
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error{Errc::io_error, "cannot stat " + where + ": " + errno_text(errno)};
  if (!S_ISREG(st.st_mode)) return Error{Errc::config_error, where + " is not a regular file"};

  std::string text;
  Cleanser wipe_text(text);
  text.resize(kMaxKeyFileBytes + 1);
  std::size_t used = 0;
  while (used < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + used, text.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{Errc::io_error, "cannot read " + where + ": " + errno_text(errno)};
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  if (used > kMaxKeyFileBytes) {
    return Error{Errc::config_error, where + " is larger than " + std::to_string(kMaxKeyFileBytes) +
                                         " bytes; expected 64 hex characters"};
  }
  std::string_view content(text.data(), used);
  while (!content.empty() && is_space(content.back())) content.remove_suffix(1);

  constexpr std::size_t kHexChars = kKeyBytes * 2;
  if (content.empty()) return Error{Errc::config_error, where + " is empty; expected 64 hex characters"};
  if (content.size() != kHexChars) {
    return Error{Errc::config_error, where + " holds " + std::to_string(content.size()) +
                                         " characters; expected 64 hex characters (32 bytes)"};
  }
  auto bytes = from_hex(content);
  if (!bytes) return Error{Errc::config_error, where + ": " + bytes.error().detail};
  return SecretKey{std::move(bytes).value()};
}

Result<void> write_key_file(const std::string& path, const SecretKey& key) {
  DTU_CHECK(key.bytes.size() == kKeyBytes);
  const std::string where = "key file " + path;
  // O_NOFOLLOW: a symlink planted at path must not redirect the key somewhere readable.
  FdGuard fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (fd.get() < 0) return Error{Errc::io_error, "cannot create " + where + ": " + errno_text(errno)};
  // An existing file keeps its old mode through O_TRUNC; tighten it before the key goes in,
  // so the key is never readable by others.
  if (::fchmod(fd.get(), 0600) != 0) return Error{Errc::io_error, "cannot chmod 0600 " + where + ": " + errno_text(errno)};

  std::string text = to_hex(key.bytes);
  Cleanser wipe_text(text);
  text.push_back('\n');
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error{Errc::io_error, "cannot write " + where + ": " + errno_text(errno)};
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Error{Errc::io_error, "cannot sync " + where + ": " + errno_text(errno)};
  if (fd.close_now() != 0) return Error{Errc::io_error, "cannot close " + where + ": " + errno_text(errno)};
  return {};
}

SecretKey generate_key() { return SecretKey{random_bytes(kKeyBytes)}; }

Bytes derive_dtu_key(const SecretKey& site_dtu_key, std::string_view dtu_id) {
  DTU_CHECK(!site_dtu_key.bytes.empty());
  return hkdf_sha256(site_dtu_key.bytes, as_bytes(kDtuPskSalt), as_bytes(dtu_id), kKeyBytes);
}

Bytes derive_pair_key(const SecretKey& group_key, std::string_view id_a, std::string_view id_b) {
  DTU_CHECK(!group_key.bytes.empty());
  DTU_CHECK(id_a.size() <= 0xffff && id_b.size() <= 0xffff);
  // Sorted, so both ends of the link build the same info; string_view compares bytes unsigned.
  const std::string_view first = std::min(id_a, id_b);
  const std::string_view second = std::max(id_a, id_b);
  Bytes info;
  info.reserve(4 + first.size() + second.size());
  for (const std::string_view id : {first, second}) {
    info.push_back(static_cast<std::uint8_t>(id.size() >> 8));
    info.push_back(static_cast<std::uint8_t>(id.size() & 0xff));
    const auto b = as_bytes(id);
    info.insert(info.end(), b.begin(), b.end());
  }
  return hkdf_sha256(group_key.bytes, as_bytes(kPeerPskSalt), info, kKeyBytes);
}

}  // namespace dtu::common
