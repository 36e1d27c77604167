#include "dtu/common/crypto.hpp"

#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>

#include "support/temp_dir.hpp"

namespace {

using dtu::common::as_bytes;
using dtu::common::Bytes;
using dtu::common::Errc;
using dtu::common::from_hex;
using dtu::common::SecretKey;
using dtu::common::to_hex;

Bytes hex(std::string_view text) {
  auto bytes = from_hex(text);
  REQUIRE(bytes.ok());
  return std::move(bytes).value();
}

Bytes repeated(std::uint8_t value, std::size_t n) { return Bytes(n, value); }

using TempDir = dtu::testing::UnitTempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::string text(4096, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  return text;
}

unsigned file_mode(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<unsigned>(st.st_mode & 07777);
}

const std::string kKeyHex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

}  // namespace

// RFC 4231 §4.2–4.4.
TEST_CASE("hmac_sha256 matches RFC 4231 test cases 1 to 3") {
  CHECK(to_hex(dtu::common::hmac_sha256(repeated(0x0b, 20), as_bytes("Hi There"))) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  CHECK(to_hex(dtu::common::hmac_sha256(as_bytes("Jefe"), as_bytes("what do ya want for nothing?"))) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  CHECK(to_hex(dtu::common::hmac_sha256(repeated(0xaa, 20), repeated(0xdd, 50))) ==
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
}

TEST_CASE("hmac_sha256 accepts an empty key and empty data") {
  // HMAC-SHA256("", "") is a well-known constant.
  CHECK(to_hex(dtu::common::hmac_sha256({}, {})) ==
        "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST_CASE("A prepared HmacSha256 gives each message its own MAC, also after a move") {
  dtu::common::HmacSha256 jefe(as_bytes("Jefe"));
  // Twice, then another message: no state is carried from one mac() to the next.
  for (int i = 0; i < 2; ++i) {
    CHECK(to_hex(jefe.mac(as_bytes("what do ya want for nothing?"))) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  }
  CHECK(jefe.mac(as_bytes("Hi There")) == dtu::common::hmac_sha256(as_bytes("Jefe"), as_bytes("Hi There")));
  dtu::common::HmacSha256 moved(std::move(jefe));
  CHECK(to_hex(moved.mac(as_bytes("what do ya want for nothing?"))) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  dtu::common::HmacSha256 empty({});
  CHECK(to_hex(empty.mac({})) == "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
  empty = std::move(moved);
  CHECK(to_hex(empty.mac(repeated(0xdd, 0))) == to_hex(dtu::common::hmac_sha256(as_bytes("Jefe"), {})));
}

// RFC 5869 appendix A.1 and A.3.
TEST_CASE("hkdf_sha256 matches RFC 5869 test cases 1 and 3") {
  CHECK(to_hex(dtu::common::hkdf_sha256(repeated(0x0b, 22), hex("000102030405060708090a0b0c"),
                                        hex("f0f1f2f3f4f5f6f7f8f9"), 42)) ==
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  CHECK(to_hex(dtu::common::hkdf_sha256(repeated(0x0b, 22), {}, {}, 42)) ==
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST_CASE("random_bytes returns the requested length and differs between calls") {
  const Bytes a = dtu::common::random_bytes(32);
  const Bytes b = dtu::common::random_bytes(32);
  CHECK(a.size() == 32);
  CHECK(a != b);
  CHECK(dtu::common::random_bytes(0).empty());
}

TEST_CASE("hex round-trips all byte values and accepts upper case") {
  Bytes all(256);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint8_t>(i);
  const std::string text = to_hex(all);
  CHECK(text.size() == 512);
  CHECK(text.substr(0, 8) == "00010203");
  CHECK(text.substr(504) == "fcfdfeff");
  CHECK(hex(text) == all);
  CHECK(hex("DEADbeef") == Bytes{0xde, 0xad, 0xbe, 0xef});
  CHECK(hex("").empty());
  CHECK(to_hex({}).empty());
}

TEST_CASE("from_hex rejects odd lengths and non-hex characters") {
  const auto odd = from_hex("abc");
  REQUIRE_FALSE(odd.ok());
  CHECK(odd.error().code == Errc::invalid_argument);
  CHECK(odd.error().detail.find("odd length") != std::string::npos);

  const auto bad = from_hex("00g1");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::invalid_argument);
  CHECK(bad.error().detail.find("offset 2") != std::string::npos);

  CHECK_FALSE(from_hex("0x00").ok());
  CHECK_FALSE(from_hex("00 1").ok());
  CHECK_FALSE(from_hex("0:").ok());
}

TEST_CASE("constant_time_equal compares contents and treats different lengths as unequal") {
  const Bytes a{1, 2, 3, 4};
  CHECK(dtu::common::constant_time_equal(a, Bytes{1, 2, 3, 4}));
  CHECK_FALSE(dtu::common::constant_time_equal(a, Bytes{1, 2, 3, 5}));
  CHECK_FALSE(dtu::common::constant_time_equal(a, Bytes{0, 2, 3, 4}));
  CHECK_FALSE(dtu::common::constant_time_equal(a, Bytes{1, 2, 3}));
  CHECK_FALSE(dtu::common::constant_time_equal(a, Bytes{1, 2, 3, 4, 0}));
  CHECK(dtu::common::constant_time_equal(Bytes{}, Bytes{}));
  CHECK_FALSE(dtu::common::constant_time_equal(Bytes{}, a));
}

TEST_CASE("as_bytes views the characters of a string") {
  const auto view = as_bytes("AZ");
  REQUIRE(view.size() == 2);
  CHECK(view[0] == 0x41);
  CHECK(view[1] == 0x5a);
}

TEST_CASE("derive_dtu_key is the documented HKDF and differs per DTU id") {
  const SecretKey site{hex(kKeyHex)};
  const Bytes a = dtu::common::derive_dtu_key(site, "dtu-a");
  CHECK(a.size() == 32);
  CHECK(a == dtu::common::derive_dtu_key(site, "dtu-a"));
  CHECK(a != dtu::common::derive_dtu_key(site, "dtu-b"));
  CHECK(a != dtu::common::derive_dtu_key(site, "dtu-a "));
  CHECK(a != dtu::common::derive_dtu_key(SecretKey{dtu::common::random_bytes(32)}, "dtu-a"));
  CHECK(a == dtu::common::hkdf_sha256(site.bytes, as_bytes("dtubroker dtu-psk v1"), as_bytes("dtu-a"), 32));
}

TEST_CASE("derive_pair_key is symmetric in its ids and differs per pair") {
  const SecretKey group{hex(kKeyHex)};
  const Bytes ab = dtu::common::derive_pair_key(group, "mgr-a", "mgr-b");
  CHECK(ab.size() == 32);
  CHECK(ab == dtu::common::derive_pair_key(group, "mgr-b", "mgr-a"));
  CHECK(ab != dtu::common::derive_pair_key(group, "mgr-a", "mgr-c"));
  CHECK(ab != dtu::common::derive_pair_key(group, "mgr-b", "mgr-c"));
  CHECK(ab != dtu::common::derive_pair_key(SecretKey{dtu::common::random_bytes(32)}, "mgr-a", "mgr-b"));
  // Length prefixes: moving a byte from one id to the other changes the key.
  CHECK(dtu::common::derive_pair_key(group, "ab", "c") != dtu::common::derive_pair_key(group, "a", "bc"));
  // The documented encoding: ids sorted, each prefixed by its 2-byte big-endian length.
  Bytes info{0x00, 0x05};
  for (char c : std::string_view("mgr-a")) info.push_back(static_cast<std::uint8_t>(c));
  info.push_back(0x00);
  info.push_back(0x05);
  for (char c : std::string_view("mgr-b")) info.push_back(static_cast<std::uint8_t>(c));
  CHECK(ab == dtu::common::hkdf_sha256(group.bytes, as_bytes("dtubroker peer-psk v1"), info, 32));
  // A pair key is not a DTU key of the same material.
  CHECK(ab != dtu::common::derive_dtu_key(group, "mgr-a"));
}

TEST_CASE("write_key_file then load_key_file returns the same key in a 0600 file") {
  TempDir dir;
  const std::string path = dir.path("group.key");
  const SecretKey key = dtu::common::generate_key();
  CHECK(key.bytes.size() == 32);
  REQUIRE(dtu::common::write_key_file(path, key).ok());
  CHECK(file_mode(path) == 0600);
  const auto loaded = dtu::common::load_key_file(path);
  REQUIRE(loaded.ok());
  CHECK(loaded->bytes == key.bytes);

  CHECK(read_text(path) == to_hex(key.bytes) + "\n");
}

TEST_CASE("write_key_file tightens an existing file to 0600 and replaces its content") {
  TempDir dir;
  const std::string path = dir.path("site.key");
  write_text(path, "old content that is much longer than a key file would ever be............\n");
  REQUIRE(::chmod(path.c_str(), 0644) == 0);
  const SecretKey key{hex(kKeyHex)};
  REQUIRE(dtu::common::write_key_file(path, key).ok());
  CHECK(file_mode(path) == 0600);
  const auto loaded = dtu::common::load_key_file(path);
  REQUIRE(loaded.ok());
  CHECK(loaded->bytes == key.bytes);
}

TEST_CASE("write_key_file refuses to follow a symlink") {
  TempDir dir;
  const std::string target = dir.path("target");
  const std::string link = dir.path("link.key");
  write_text(target, "untouched");
  REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
  const auto written = dtu::common::write_key_file(link, dtu::common::generate_key());
  REQUIRE_FALSE(written.ok());
  CHECK(written.error().code == Errc::io_error);
  CHECK(written.error().detail.find(link) != std::string::npos);
  CHECK(read_text(target) == "untouched");
}

TEST_CASE("load_key_file accepts trailing whitespace and upper-case hex") {
  TempDir dir;
  const std::string path = dir.path("k");
  write_text(path, kKeyHex + " \r\n\n");
  auto loaded = dtu::common::load_key_file(path);
  REQUIRE(loaded.ok());
  CHECK(loaded->bytes == hex(kKeyHex));

  std::string upper = kKeyHex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  write_text(path, upper);
  loaded = dtu::common::load_key_file(path);
  REQUIRE(loaded.ok());
  CHECK(loaded->bytes == hex(kKeyHex));
}

TEST_CASE("load_key_file rejects bad files with the path and the reason") {
  TempDir dir;
  const std::string path = dir.path("bad.key");

  SUBCASE("a missing file") {
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::io_error);
    CHECK(r.error().detail.find(path) != std::string::npos);
    CHECK(r.error().detail.find("No such file") != std::string::npos);
  }
  SUBCASE("an empty file") {
    write_text(path, "\n");
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::config_error);
    CHECK(r.error().detail.find(path) != std::string::npos);
    CHECK(r.error().detail.find("empty") != std::string::npos);
  }
  SUBCASE("a key that is too short") {
    write_text(path, kKeyHex.substr(2) + "\n");
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::config_error);
    CHECK(r.error().detail.find(path) != std::string::npos);
    CHECK(r.error().detail.find("62 characters") != std::string::npos);
  }
  SUBCASE("a key that is too long") {
    write_text(path, kKeyHex + "00");
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().detail.find("66 characters") != std::string::npos);
  }
  SUBCASE("a character that is not hex") {
    std::string text = kKeyHex;
    text[10] = 'x';
    write_text(path, text);
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::config_error);
    CHECK(r.error().detail.find(path) != std::string::npos);
    CHECK(r.error().detail.find("offset 10 is not a hex digit") != std::string::npos);
  }
  SUBCASE("leading whitespace") {
    write_text(path, " " + kKeyHex.substr(1));
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().detail.find("offset 0") != std::string::npos);
  }
  SUBCASE("a file far larger than a key") {
    write_text(path, std::string(10000, 'a'));
    const auto r = dtu::common::load_key_file(path);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::config_error);
    CHECK(r.error().detail.find("larger than") != std::string::npos);
  }
  SUBCASE("a directory") {
    const auto r = dtu::common::load_key_file(dir.path(""));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::config_error);
    CHECK(r.error().detail.find("not a regular file") != std::string::npos);
  }
}
