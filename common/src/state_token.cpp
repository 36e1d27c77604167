#include "dtu/common/state_token.hpp"

#include <algorithm>
#include <exception>
#include <iterator>
#include <optional>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/crypto.hpp"
#include "dtu/common/json_fields.hpp"
#include "dtu/common/json_parse.hpp"
#include "dtu/common/json_text.hpp"

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

// The token's JSON, byte for byte what to_json_object(...).dump() writes, but written directly
// when every string is plain: building the object cost more than the HMAC. Anything else
// (escapes, invalid UTF-8 to replace) goes through nlohmann.
std::string to_json_text(const StateToken& t, const std::string& key_id) {
  const std::string_view strings[] = {t.kind,   t.dtu,    t.device, t.lease,     t.holder,
                                      t.origin, t.client, t.rule,   t.issued_by, key_id};
  if (!std::all_of(std::begin(strings), std::end(strings), is_plain_json_string)) {
    return to_json_object(t, key_id).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string text;
  text.reserve(320);
  JsonText out(text);
  out.open_object();  // the keys in sorted order
  out.key("client").string(t.client);
  out.key("device").string(t.device);
  out.key("dtu").string(t.dtu);
  out.key("gid").number(t.gid);
  out.key("holder").string(t.holder);
  out.key("issued_by").string(t.issued_by);
  out.key("issued_us").number(t.issued_us);
  out.key("keep").boolean(t.keep);
  out.key("key").string(key_id);
  out.key("kind").string(t.kind);
  out.key("lease").string(t.lease);
  out.key("length_ms").number(t.length_ms);
  out.key("max_lease_ms").number(t.max_lease_ms);
  out.key("origin").string(t.origin);
  out.key("pid").number(t.pid);
  out.key("rule").string(t.rule);
  out.key("uid").number(t.uid);
  out.key("unit").number(t.unit);
  out.key("v").number(t.v);
  out.close_object();
  return text;
}

// The fields of a version 1 token; any missing or mistyped one is an error (never throws).
// Integers go through field<>: nlohmann alone would convert 1e28 to an int with undefined
// behaviour (found by the state_token fuzz target).
Result<StateToken> from_json_object(const nlohmann::json& j) {
  try {
    StateToken t;
    const auto read = [&j](auto& to, const char* key) { to = field<std::remove_reference_t<decltype(to)>>(j, key); };
    read(t.v, "v");
    if (t.v != kStateTokenVersion)
      return Error(Errc::bad_payload, "state token version " + std::to_string(t.v));
    read(t.kind, "kind");
    if (t.kind != "lease") return Error(Errc::bad_payload, "state token kind '" + t.kind + "'");
    read(t.dtu, "dtu");
    read(t.device, "device");
    read(t.unit, "unit");
    read(t.lease, "lease");
    read(t.holder, "holder");
    read(t.origin, "origin");
    read(t.client, "client");
    read(t.uid, "uid");
    read(t.gid, "gid");
    read(t.pid, "pid");
    read(t.rule, "rule");
    read(t.length_ms, "length_ms");
    read(t.max_lease_ms, "max_lease_ms");
    read(t.keep, "keep");
    read(t.issued_by, "issued_by");
    read(t.issued_us, "issued_us");
    return t;
  } catch (const std::exception& e) {  // field<>'s std::invalid_argument, nlohmann's exceptions
    return Error(Errc::bad_payload, std::string("state token: ") + e.what());
  }
}

// What a group key derives for state tokens: the HMAC under the token key, prepared, and the
// key's id. Deriving them (HKDF, then an HMAC for the id) cost twice what signing a token does,
// and a manager signs two tokens per allocation, so each thread keeps the last few keys' (a
// group has a current and, while rotating, a next key).
struct TokenKey {
  Bytes group_key;
  HmacSha256 mac;
  std::string id;
};

constexpr std::size_t kCachedTokenKeys = 4;

// The reference is valid until the next call on the same thread.
const TokenKey& token_key(const SecretKey& group_key) {
  thread_local std::vector<TokenKey> keys;
  for (const TokenKey& k : keys) {
    if (k.group_key == group_key.bytes) return k;
  }
  if (keys.size() == kCachedTokenKeys) keys.erase(keys.begin());
  keys.push_back({group_key.bytes, HmacSha256(state_token_key(group_key)), group_key_id(group_key)});
  return keys.back();
}

Bytes mac_of(const SecretKey& group_key, std::string_view json) {
  return token_key(group_key).mac.mac(as_bytes(json));
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
  const std::string json = to_json_text(token, token_key(keys.current).id);
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
  const auto parsed = parse_json(*json);
  std::optional<std::string> key_id;
  if (parsed.is_object()) {
    auto it = parsed.find("key");
    if (it != parsed.end() && it->is_string()) key_id = it->get<std::string>();
  }
  const SecretKey* key = nullptr;
  if (key_id) {
    if (*key_id == token_key(keys.current).id) {
      key = &keys.current;
    } else if (keys.next && *key_id == token_key(*keys.next).id) {
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
