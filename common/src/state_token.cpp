#include "dtu/common/state_token.hpp"

#include <optional>

#include <nlohmann/json.hpp>

#include "dtu/common/crypto.hpp"

namespace dtu::common {
namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::size_t kMacBytes = 32;

int alphabet_index(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

nlohmann::json to_json_object(const StateToken& t, const std::string& key_id) {
  return nlohmann::json{{"v", t.v},
                        {"kind", t.kind},
                        {"dtu", t.dtu},
                        {"device", t.device},
                        {"unit", t.unit},
                        {"lease", t.lease},
                        {"holder", t.holder},
                        {"origin", t.origin},
                        {"client", t.client},
                        {"uid", t.uid},
                        {"gid", t.gid},
                        {"pid", t.pid},
                        {"rule", t.rule},
                        {"length_ms", t.length_ms},
                        {"max_lease_ms", t.max_lease_ms},
                        {"keep", t.keep},
                        {"issued_by", t.issued_by},
                        {"issued_us", t.issued_us},
                        {"key", key_id}};
}

// The fields of a version 1 token; any missing or mistyped one is an error (never throws).
Result<StateToken> from_json_object(const nlohmann::json& j) {
  try {
    StateToken t;
    j.at("v").get_to(t.v);
    if (t.v != kStateTokenVersion)
      return Error(Errc::bad_payload, "state token version " + std::to_string(t.v));
    j.at("kind").get_to(t.kind);
    if (t.kind != "lease") return Error(Errc::bad_payload, "state token kind '" + t.kind + "'");
    j.at("dtu").get_to(t.dtu);
    j.at("device").get_to(t.device);
    j.at("unit").get_to(t.unit);
    j.at("lease").get_to(t.lease);
    j.at("holder").get_to(t.holder);
    j.at("origin").get_to(t.origin);
    j.at("client").get_to(t.client);
    j.at("uid").get_to(t.uid);
    j.at("gid").get_to(t.gid);
    j.at("pid").get_to(t.pid);
    j.at("rule").get_to(t.rule);
    j.at("length_ms").get_to(t.length_ms);
    j.at("max_lease_ms").get_to(t.max_lease_ms);
    j.at("keep").get_to(t.keep);
    j.at("issued_by").get_to(t.issued_by);
    j.at("issued_us").get_to(t.issued_us);
    return t;
  } catch (const nlohmann::json::exception& e) {
    return Error(Errc::bad_payload, std::string("state token: ") + e.what());
  }
}

Bytes mac_of(const SecretKey& group_key, std::string_view json) {
  return hmac_sha256(state_token_key(group_key), as_bytes(json));
}

}  // namespace

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n = (std::uint32_t{static_cast<std::uint8_t>(bytes[i])} << 16) |
                            (std::uint32_t{static_cast<std::uint8_t>(bytes[i + 1])} << 8) |
                            std::uint32_t{static_cast<std::uint8_t>(bytes[i + 2])};
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(kAlphabet[(n >> 6) & 63]);
    out.push_back(kAlphabet[n & 63]);
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const std::uint32_t n = std::uint32_t{static_cast<std::uint8_t>(bytes[i])} << 16;
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
  } else if (rest == 2) {
    const std::uint32_t n = (std::uint32_t{static_cast<std::uint8_t>(bytes[i])} << 16) |
                            (std::uint32_t{static_cast<std::uint8_t>(bytes[i + 1])} << 8);
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(kAlphabet[(n >> 6) & 63]);
  }
  return out;
}

Result<std::string> base64url_decode(std::string_view text) {
  // A group of 1 character encodes no whole byte: no encoder writes it.
  if (text.size() % 4 == 1)
    return Error(Errc::bad_payload, "base64url length " + std::to_string(text.size()));
  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const int v = alphabet_index(text[i]);
    if (v < 0) return Error(Errc::bad_payload, "base64url: bad character at " + std::to_string(i));
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  // The bits left over must be zero, so that each byte string has exactly one encoding.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
    return Error(Errc::bad_payload, "base64url: stray bits at the end");
  return out;
}

Bytes state_token_key(const SecretKey& group_key) {
  return hkdf_sha256(group_key.bytes, as_bytes(kStateTokenSalt), {}, kKeyBytes);
}

Result<std::string> sign_state_token(const StateToken& token, const GroupKeys& keys) {
  // Names come from services: invalid UTF-8 is replaced rather than thrown on.
  const std::string json = to_json_object(token, group_key_id(keys.current))
                               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const Bytes mac = mac_of(keys.current, json);
  std::string text = base64url_encode(json);
  text.push_back('.');
  text += base64url_encode(std::string_view(reinterpret_cast<const char*>(mac.data()), mac.size()));
  if (text.size() > kMaxStateTokenBytes) {
    return Error(Errc::invalid_argument, "state token of " + std::to_string(text.size()) +
                                             " bytes, above the cap of " +
                                             std::to_string(kMaxStateTokenBytes));
  }
  return text;
}

Result<StateToken> verify_state_token(std::string_view text, const GroupKeys& keys) {
  if (text.size() > kMaxStateTokenBytes) {
    return Error(Errc::bad_payload, "state token of " + std::to_string(text.size()) +
                                        " bytes, above the cap of " + std::to_string(kMaxStateTokenBytes));
  }
  const auto dot = text.find('.');
  if (dot == std::string_view::npos || text.find('.', dot + 1) != std::string_view::npos) {
    return Error(Errc::bad_payload, "state token is not two parts joined by '.'");
  }
  auto json = base64url_decode(text.substr(0, dot));
  if (!json.ok()) return json.error();
  auto mac = base64url_decode(text.substr(dot + 1));
  if (!mac.ok()) return mac.error();
  if (mac->size() != kMacBytes)
    return Error(Errc::bad_payload, "state token MAC of " + std::to_string(mac->size()) + " bytes");

  // The key is chosen by the id the token names; then its MAC decides. Content that does not
  // even parse but carries a MAC-shaped tail is a tampered token, not a malformed one.
  const auto parsed = nlohmann::json::parse(*json, nullptr, false);
  std::optional<std::string> key_id;
  if (parsed.is_object()) {
    auto it = parsed.find("key");
    if (it != parsed.end() && it->is_string()) key_id = it->get<std::string>();
  }
  const SecretKey* key = nullptr;
  if (key_id) {
    if (*key_id == group_key_id(keys.current)) {
      key = &keys.current;
    } else if (keys.next && *key_id == group_key_id(*keys.next)) {
      key = &*keys.next;
    } else {
      return Error(Errc::auth_failed, "unknown key");
    }
  }
  if (key == nullptr) return Error(Errc::auth_failed, "tampered");
  const Bytes expected = mac_of(*key, *json);
  if (!constant_time_equal(expected, as_bytes(*mac))) return Error(Errc::auth_failed, "tampered");
  return from_json_object(parsed);
}

}  // namespace dtu::common
