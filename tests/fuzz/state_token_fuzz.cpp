// Fuzz target: the state token verifier (common/state_token.hpp), under a fixed group key pair
// (current and next). For any input:
//   - verify_state_token never throws and fails only with bad_payload or auth_failed; an input
//     above the 4 KiB cap is bad_payload;
//   - a token it accepts signs again to a token that verifies to the same fields;
//   - base64url_decode accepts only canonical text: encoding what it decoded gives the input back;
//   - the input as the JSON of a correctly signed token (naming our key) reaches the field parser,
//     which accepts or refuses it as bad_payload, never as auth_failed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dtu/common/crypto.hpp"
#include "dtu/common/state_token.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::Errc;
using dtu::fuzz::has_code;

const dtu::common::GroupKeys& keys() {
  static const dtu::common::GroupKeys k = [] {
    dtu::common::GroupKeys out;
    dtu::common::SecretKey next;
    for (int i = 0; i < 32; ++i) {
      out.current.bytes.push_back(static_cast<std::uint8_t>(i));
      next.bytes.push_back(static_cast<std::uint8_t>(0xff - i));
    }
    out.next = next;
    return out;
  }();
  return k;
}

void check_verify(std::string_view text) {
  auto r = dtu::common::verify_state_token(text, keys());
  if (!r.ok()) {
    FUZZ_REQUIRE(has_code(r.error(), Errc::bad_payload) || has_code(r.error(), Errc::auth_failed));
    if (text.size() > dtu::common::kMaxStateTokenBytes) FUZZ_REQUIRE(has_code(r.error(), Errc::bad_payload));
    return;
  }
  FUZZ_REQUIRE(text.size() <= dtu::common::kMaxStateTokenBytes);
  auto again = dtu::common::sign_state_token(*r, keys());
  if (!again.ok()) return;  // re-encoded above the cap (escapes written differently): refused, fine
  auto back = dtu::common::verify_state_token(*again, keys());
  FUZZ_REQUIRE(back.ok());
}

void check_base64(std::string_view text) {
  auto decoded = dtu::common::base64url_decode(text);
  if (!decoded.ok()) {
    FUZZ_REQUIRE(has_code(decoded.error(), Errc::bad_payload));
    return;
  }
  FUZZ_REQUIRE(dtu::common::base64url_encode(*decoded) == text);
}

void check_signed_json(std::string_view text) {
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (!doc.is_object()) return;
  doc["key"] = dtu::common::group_key_id(keys().current);
  const std::string json = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const auto mac =
      dtu::common::hmac_sha256(dtu::common::state_token_key(keys().current), dtu::common::as_bytes(json));
  const std::string token = dtu::common::base64url_encode(json) + "." +
                            dtu::common::base64url_encode(std::string(mac.begin(), mac.end()));
  auto r = dtu::common::verify_state_token(token, keys());
  if (!r.ok()) FUZZ_REQUIRE(has_code(r.error(), Errc::bad_payload));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_verify(text);
  check_base64(text);
  check_signed_json(text);
  return 0;
}
