// State tokens: the signed lease context any manager of the group can restore. A known-answer
// vector (computed independently with Python's hmac/hashlib/json/base64), the round trip, and
// every way a token is refused: tampered, foreign key, oversize, malformed; the next key of a
// rotation verifies.
#include "dtu/common/state_token.hpp"

#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/crypto.hpp"

namespace {

namespace common = dtu::common;
using common::Errc;

common::SecretKey counting_key() {
  common::SecretKey key;
  for (int i = 0; i < 32; ++i) key.bytes.push_back(static_cast<std::uint8_t>(i));
  return key;
}

common::StateToken sample() {
  common::StateToken t;
  t.dtu = "dtu-1";
  t.device = "1-1";
  t.unit = 0;
  t.lease = "L1";
  t.holder = "svc[77]@A";
  t.origin = "A";
  t.client = "svc";
  t.uid = 1000;
  t.gid = 100;
  t.pid = 77;
  t.rule = "default";
  t.length_ms = 60000;
  t.issued_by = "A";
  t.issued_us = 1700000000000000;
  return t;
}

constexpr const char* kKnownAnswer =
    "eyJjbGllbnQiOiJzdmMiLCJkZXZpY2UiOiIxLTEiLCJkdHUiOiJkdHUtMSIsImdpZCI6MTAwLCJob2xkZXIiOiJzdmNbNzddQEEiLCJp"
    "c3N1ZWRf"
    "YnkiOiJBIiwiaXNzdWVkX3VzIjoxNzAwMDAwMDAwMDAwMDAwLCJrZWVwIjpmYWxzZSwia2V5IjoiOTcwMjQ0MzExZjYyNGU4ZCIsImtp"
    "bmQiOiJs"
    "ZWFzZSIsImxlYXNlIjoiTDEiLCJsZW5ndGhfbXMiOjYwMDAwLCJtYXhfbGVhc2VfbXMiOjAsIm9yaWdpbiI6IkEiLCJwaWQiOjc3LCJy"
    "dWxlIjoi"
    "ZGVmYXVsdCIsInVpZCI6MTAwMCwidW5pdCI6MCwidiI6MX0.z5WkA67eX7I6NH5coqtnwivGSScp17o64rv4FoGU72c";

// The token's JSON part, edited by `edit`, put back with the original MAC.
std::string edit_json(const std::string& token, const std::function<void(nlohmann::json&)>& edit) {
  const auto dot = token.find('.');
  auto json = common::base64url_decode(token.substr(0, dot));
  REQUIRE(json.ok());
  auto j = nlohmann::json::parse(*json);
  edit(j);
  return common::base64url_encode(j.dump()) + token.substr(dot);
}

}  // namespace

TEST_CASE("A state token signed with a known key is the known answer") {
  const common::GroupKeys keys{counting_key(), std::nullopt};
  auto signed_token = common::sign_state_token(sample(), keys);
  REQUIRE(signed_token.ok());
  CHECK(*signed_token == kKnownAnswer);
}

TEST_CASE("A state token round-trips through sign and verify") {
  const common::GroupKeys keys{common::generate_key(), std::nullopt};
  common::StateToken t = sample();
  t.keep = true;
  t.max_lease_ms = 300000;
  auto text = common::sign_state_token(t, keys);
  REQUIRE(text.ok());
  CHECK(text->size() <= common::kMaxStateTokenBytes);
  auto back = common::verify_state_token(*text, keys);
  REQUIRE(back.ok());
  CHECK(*back == t);
}

TEST_CASE("A state token's JSON is nlohmann's canonical form, whatever its names hold") {
  // Plain names are written directly, others through nlohmann: either way the JSON must be
  // what nlohmann writes for it (sorted keys, no spaces), and every field must come back.
  const common::GroupKeys keys{common::generate_key(), std::nullopt};
  const std::vector<std::string> names = {
      "svc",  "",      "with space and ~", "quote \" here", "back\\slash", "new\nline", "tab\tbell\x07",
      "\x7f", "grüße", "\xe2\x82\xac",     "€uro"};
  for (const std::string& name : names) {
    CAPTURE(name);
    common::StateToken t = sample();
    t.client = name;
    t.rule = name;
    t.holder = name + "[77]@A";
    t.issued_us = -1;  // a negative number is written as nlohmann writes one
    t.keep = name.size() % 2 == 0;
    auto text = common::sign_state_token(t, keys);
    REQUIRE(text.ok());
    auto json = common::base64url_decode(text->substr(0, text->find('.')));
    REQUIRE(json.ok());
    CHECK(*json == nlohmann::json::parse(*json).dump());
    auto back = common::verify_state_token(*text, keys);
    REQUIRE(back.ok());
    CHECK(*back == t);
  }
  // Invalid UTF-8 is replaced (U+FFFD), not refused.
  common::StateToken bad = sample();
  bad.client =
      "a\xff"
      "b";
  auto text = common::sign_state_token(bad, keys);
  REQUIRE(text.ok());
  auto back = common::verify_state_token(*text, keys);
  REQUIRE(back.ok());
  CHECK(back->client ==
        "a\xef\xbf\xbd"
        "b");
}

TEST_CASE("A tampered state token is refused as tampered") {
  const common::GroupKeys keys{common::generate_key(), std::nullopt};
  auto text = common::sign_state_token(sample(), keys);
  REQUIRE(text.ok());

  SUBCASE("a field changed, the MAC kept") {
    auto tampered = edit_json(*text, [](nlohmann::json& j) { j["uid"] = 0; });
    auto r = common::verify_state_token(tampered, keys);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == make_error_code(Errc::auth_failed));
    CHECK(r.error().detail == "tampered");
  }
  SUBCASE("the MAC changed") {
    // Its first character: all six bits are the MAC's. (The last one carries two padding bits
    // that must be zero; 'A' -> 'B' there made a non-canonical encoding, refused as malformed,
    // one run in 16.)
    std::string tampered = *text;
    char& first = tampered[tampered.find('.') + 1];
    first = first == 'A' ? 'B' : 'A';
    auto r = common::verify_state_token(tampered, keys);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == make_error_code(Errc::auth_failed));
  }
  SUBCASE("the JSON replaced by something that is not JSON") {
    const std::string tampered = common::base64url_encode("not json") + text->substr(text->find('.'));
    auto r = common::verify_state_token(tampered, keys);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == make_error_code(Errc::auth_failed));
  }
}

TEST_CASE("A state token of another group is refused as signed by an unknown key") {
  const common::GroupKeys ours{common::generate_key(), std::nullopt};
  const common::GroupKeys theirs{common::generate_key(), std::nullopt};
  auto text = common::sign_state_token(sample(), theirs);
  REQUIRE(text.ok());
  auto r = common::verify_state_token(*text, ours);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == make_error_code(Errc::auth_failed));
  CHECK(r.error().detail == "unknown key");

  // Naming our key id does not help: the MAC is still theirs.
  auto claimed = edit_json(*text, [&](nlohmann::json& j) { j["key"] = common::group_key_id(ours.current); });
  auto r2 = common::verify_state_token(claimed, ours);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == make_error_code(Errc::auth_failed));
  CHECK(r2.error().detail == "tampered");
}

TEST_CASE("During a key rotation tokens of the current and the next key both verify") {
  const common::SecretKey old_key = common::generate_key();
  const common::SecretKey new_key = common::generate_key();
  // A manager that has rotated already signs with the new key...
  auto by_new = common::sign_state_token(sample(), common::GroupKeys{new_key, std::nullopt});
  REQUIRE(by_new.ok());
  // ...and one still on the old key, with the new one as next, accepts it, and its own.
  const common::GroupKeys rotating{old_key, new_key};
  CHECK(common::verify_state_token(*by_new, rotating).ok());
  auto by_old = common::sign_state_token(sample(), rotating);
  REQUIRE(by_old.ok());
  CHECK(common::verify_state_token(*by_old, rotating).ok());
  // Once the old key is retired, its tokens are unknown.
  auto r = common::verify_state_token(*by_old, common::GroupKeys{new_key, std::nullopt});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().detail == "unknown key");
}

TEST_CASE("Tokens of more group keys than a thread keeps derived each verify under their own key only") {
  // Signing derives the token key and key id once per key and keeps a few: with more keys than
  // that in turn, every token must still name and be signed by its own key.
  std::vector<common::SecretKey> keys;
  std::vector<std::string> tokens;
  for (int round = 0; round < 2; ++round) {
    for (std::size_t i = 0; i < 7; ++i) {
      if (round == 0) keys.push_back(common::generate_key());
      auto text = common::sign_state_token(sample(), common::GroupKeys{keys[i], std::nullopt});
      REQUIRE(text.ok());
      if (round == 0) tokens.push_back(*text);
      CHECK(*text == tokens[i]);  // the same token and key sign to the same text
    }
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    CHECK(common::verify_state_token(tokens[i], common::GroupKeys{keys[i], std::nullopt}).ok());
    auto other =
        common::verify_state_token(tokens[i], common::GroupKeys{keys[(i + 1) % keys.size()], std::nullopt});
    REQUIRE_FALSE(other.ok());
    CHECK(other.error().detail == "unknown key");
  }
}

TEST_CASE("A state token above 4 KiB is neither issued nor read") {
  const common::GroupKeys keys{common::generate_key(), std::nullopt};
  common::StateToken t = sample();
  t.holder = std::string(4000, 'x');
  auto text = common::sign_state_token(t, keys);
  REQUIRE_FALSE(text.ok());
  CHECK(text.error().code == make_error_code(Errc::invalid_argument));

  auto r = common::verify_state_token(std::string(common::kMaxStateTokenBytes + 1, 'A'), keys);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == make_error_code(Errc::bad_payload));
}

TEST_CASE("A malformed state token is refused as a bad payload") {
  const common::GroupKeys keys{common::generate_key(), std::nullopt};
  for (const std::string text : {"", ".", "abc", "a.b.c", "!!!.AAAA", "eyJ9.A", "eyJ9.AAAA"}) {
    CAPTURE(text);
    auto r = common::verify_state_token(text, keys);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == make_error_code(Errc::bad_payload));
  }

  SUBCASE("correctly signed but without the fields of version 1") {
    const std::string json = nlohmann::json{{"v", 2}, {"key", common::group_key_id(keys.current)}}.dump();
    const auto mac = common::hmac_sha256(common::state_token_key(keys.current), common::as_bytes(json));
    const std::string text =
        common::base64url_encode(json) + "." + common::base64url_encode(std::string(mac.begin(), mac.end()));
    auto r = common::verify_state_token(text, keys);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == make_error_code(Errc::bad_payload));
  }

  SUBCASE("correctly signed with numbers that are no integer of their field") {
    // 6.67e27 as the int version was undefined behaviour in nlohmann's conversion (the fuzz
    // target's find); -1 as the unsigned uid would wrap, 1.5 as the unit truncate.
    const std::string good = *common::sign_state_token(sample(), keys);
    for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
             {"v", 6.66666666666666666666666666e27}, {"uid", -1}, {"unit", 1.5}, {"length_ms", 1e300}}) {
      CAPTURE(key);
      auto doc = nlohmann::json::parse(*common::base64url_decode(good.substr(0, good.find('.'))));
      doc[key] = value;
      const std::string json = doc.dump();
      const auto mac = common::hmac_sha256(common::state_token_key(keys.current), common::as_bytes(json));
      const std::string text =
          common::base64url_encode(json) + "." + common::base64url_encode(std::string(mac.begin(), mac.end()));
      auto r = common::verify_state_token(text, keys);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == make_error_code(Errc::bad_payload));
      CHECK(r.error().detail.find("'" + key + "'") != std::string::npos);
    }
  }
}

TEST_CASE("base64url round-trips every length and refuses what no encoder writes") {
  std::string bytes;
  for (int n = 0; n < 70; ++n) {
    auto back = common::base64url_decode(common::base64url_encode(bytes));
    REQUIRE(back.ok());
    CHECK(*back == bytes);
    bytes.push_back(static_cast<char>(n * 37));
  }
  CHECK(common::base64url_encode("\xfb\xff") == "-_8");
  CHECK_FALSE(common::base64url_decode("A").ok());     // one character holds no byte
  CHECK_FALSE(common::base64url_decode("AB==").ok());  // padding is not used
  CHECK_FALSE(common::base64url_decode("AB").ok());    // stray bits: "AA" is the encoding of 0x00
}
