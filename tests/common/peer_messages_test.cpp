#include "dtu/common/peer_messages.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>

#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/messages.hpp"
#include "support/message_checks.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

const std::string kNonce(64, 'a');
const std::string kMac = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

using dtu::testing::object_frame;
using dtu::testing::round_trip;

// The error from_frame<M> reports for the JSON `j`. REQUIRES: it fails.
template <typename M>
Error error_of(const json& j) {
  Result<M> result = Error();
  CHECK_NOTHROW(result = from_frame<M>(object_frame(M::kType, j)));
  REQUIRE_FALSE(result.ok());
  return result.error();
}

PeerHello sample_hello() {
  return PeerHello{"m1", 18446744073709551615ULL, "127.0.0.40:4720", "0.5.0"};
}

json hello_json() {
  return json{{"id", "m1"}, {"incarnation", 7}, {"mesh", "127.0.0.40:4720"}, {"version", "0.5.0"}};
}

}  // namespace

TEST_CASE("peer_auth_init round-trips and names its fields") {
  const PeerAuthInitMsg sent{"m1", "m2", kNonce};
  const PeerAuthInitMsg got = round_trip(sent);
  CHECK(got.from == "m1");
  CHECK(got.to == "m2");
  CHECK(got.nonce == kNonce);
  CHECK(json(sent) == json{{"from", "m1"}, {"to", "m2"}, {"nonce", kNonce}});
}

TEST_CASE("peer_auth_challenge round-trips, hex of either case kept as sent") {
  const PeerAuthChallengeMsg got = round_trip(PeerAuthChallengeMsg{kNonce, kMac});
  CHECK(got.nonce == kNonce);
  CHECK(got.mac == kMac);
}

TEST_CASE("peer_auth_proof round-trips its hello and both purposes") {
  for (PeerPurpose purpose : {PeerPurpose::link, PeerPurpose::please_initiate}) {
    const PeerAuthProofMsg got = round_trip(PeerAuthProofMsg{kMac, sample_hello(), purpose});
    CHECK(got.mac == kMac);
    CHECK(got.hello == sample_hello());
    CHECK(got.purpose == purpose);
  }
  CHECK(json(PeerAuthProofMsg{kMac, sample_hello(), PeerPurpose::please_initiate})["purpose"] ==
        "please_initiate");
  CHECK(json(PeerAuthProofMsg{kMac, sample_hello(), PeerPurpose::link})["purpose"] == "link");
}

TEST_CASE("peer_welcome round-trips its hello") {
  const PeerWelcomeMsg got = round_trip(PeerWelcomeMsg{sample_hello()});
  CHECK(got.hello == sample_hello());
}

TEST_CASE("peer_auth_init refuses a missing field, a bad id and a nonce that is not 64 hex digits") {
  const json good{{"from", "m1"}, {"to", "m2"}, {"nonce", kNonce}};
  CHECK(from_frame<PeerAuthInitMsg>(object_frame(MessageType::peer_auth_init, good)).ok());
  for (const char* key : {"from", "to", "nonce"}) {
    json j = good;
    j.erase(key);
    const Error e = error_of<PeerAuthInitMsg>(j);
    CHECK(e.code == Errc::bad_payload);
    CHECK_MESSAGE(contains(e.detail, key), e.detail);
  }
  for (const char* bad_id : {"", "-m1", "m1>m2", "m1#x", "a b"}) {
    json j = good;
    j["from"] = bad_id;
    CHECK_MESSAGE(contains(error_of<PeerAuthInitMsg>(j).detail, "from"), bad_id);
  }
  for (const std::string& bad_nonce :
       {std::string(62, 'a'), std::string(66, 'a'), std::string(63, 'a') + "g", std::string()}) {
    json j = good;
    j["nonce"] = bad_nonce;
    CHECK_MESSAGE(contains(error_of<PeerAuthInitMsg>(j).detail, "nonce"), bad_nonce);
  }
  json number = good;
  number["nonce"] = 5;
  CHECK(contains(error_of<PeerAuthInitMsg>(number).detail, "nonce"));
  CHECK(error_of<PeerAuthInitMsg>(json::array()).code == Errc::bad_payload);
}

TEST_CASE("peer_auth_challenge refuses a MAC or nonce of the wrong length") {
  CHECK(contains(error_of<PeerAuthChallengeMsg>(json{{"nonce", kNonce}, {"mac", kMac.substr(2)}}).detail,
                 "mac"));
  CHECK(contains(error_of<PeerAuthChallengeMsg>(json{{"nonce", kNonce + "00"}, {"mac", kMac}}).detail,
                 "nonce"));
  CHECK(contains(error_of<PeerAuthChallengeMsg>(json{{"nonce", kNonce}}).detail, "mac"));
}

TEST_CASE("peer_auth_proof refuses an unknown purpose and a bad hello") {
  const json good{{"mac", kMac}, {"hello", hello_json()}, {"purpose", "link"}};
  CHECK(from_frame<PeerAuthProofMsg>(object_frame(MessageType::peer_auth_proof, good)).ok());

  json purpose = good;
  purpose["purpose"] = "takeover";
  CHECK(contains(error_of<PeerAuthProofMsg>(purpose).detail, "purpose"));
  json no_purpose = good;
  no_purpose.erase("purpose");
  CHECK(contains(error_of<PeerAuthProofMsg>(no_purpose).detail, "purpose"));

  for (const char* key : {"id", "incarnation", "mesh", "version"}) {
    json j = good;
    j["hello"].erase(key);
    CHECK_MESSAGE(contains(error_of<PeerAuthProofMsg>(j).detail, key), key);
  }
  json bad_id = good;
  bad_id["hello"]["id"] = "../m1";
  CHECK(contains(error_of<PeerAuthProofMsg>(bad_id).detail, "id"));
  json negative = good;
  negative["hello"]["incarnation"] = -1;
  CHECK(contains(error_of<PeerAuthProofMsg>(negative).detail, "incarnation"));
  json empty_mesh = good;
  empty_mesh["hello"]["mesh"] = "";
  CHECK(contains(error_of<PeerAuthProofMsg>(empty_mesh).detail, "mesh"));
  json not_object = good;
  not_object["hello"] = "m1";
  CHECK(error_of<PeerAuthProofMsg>(not_object).code == Errc::bad_payload);
}

TEST_CASE("peer_welcome refuses a missing hello") {
  CHECK(contains(error_of<PeerWelcomeMsg>(json::object()).detail, "hello"));
  CHECK(from_frame<PeerWelcomeMsg>(object_frame(MessageType::peer_welcome, json{{"hello", hello_json()}}))
            .ok());
}

TEST_CASE("A peer handshake message is refused as another peer handshake type") {
  const Frame init = to_frame(PeerAuthInitMsg{"m1", "m2", kNonce});
  const auto as_welcome = from_frame<PeerWelcomeMsg>(init);
  REQUIRE_FALSE(as_welcome.ok());
  CHECK(as_welcome.error().code == Errc::unknown_type);
}

}  // namespace dtu::common
