#include "dtu/common/peer_messages.hpp"

#include <cctype>
#include <stdexcept>
#include <string>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/records.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

std::string id_field(const json& j, const char* key) {
  std::string id = field<std::string>(j, key);
  if (!is_valid_id(id)) throw std::invalid_argument(std::string("field '") + key + "': not a valid id");
  return id;
}

// Exactly `bytes` bytes as hex: the handshake compares lengths before anything else.
std::string hex_field(const json& j, const char* key, std::size_t bytes) {
  std::string text = field<std::string>(j, key);
  bool hex = text.size() == 2 * bytes;
  for (char c : text) hex = hex && std::isxdigit(static_cast<unsigned char>(c)) != 0;
  if (!hex) {
    throw std::invalid_argument(std::string("field '") + key + "': expected " + std::to_string(2 * bytes) +
                                " hex digits");
  }
  return text;
}

std::string non_empty_field(const json& j, const char* key) {
  std::string text = field<std::string>(j, key);
  if (text.empty()) throw std::invalid_argument(std::string("field '") + key + "': empty");
  return text;
}

}  // namespace

const char* peer_purpose_name(PeerPurpose purpose) {
  switch (purpose) {
    case PeerPurpose::link:
      return "link";
    case PeerPurpose::please_initiate:
      return "please_initiate";
  }
  return "link";
}

void to_json(json& j, const PeerHello& m) {
  j = json{{"id", m.id}, {"incarnation", m.incarnation}, {"mesh", m.mesh}, {"version", m.version}};
}
void from_json(const json& j, PeerHello& m) {
  require_object(j);
  m.id = id_field(j, "id");
  m.incarnation = field<std::uint64_t>(j, "incarnation");
  m.mesh = non_empty_field(j, "mesh");
  m.version = field<std::string>(j, "version");
}

void to_json(json& j, const PeerAuthInitMsg& m) {
  j = json{{"from", m.from}, {"to", m.to}, {"nonce", m.nonce}};
}
void from_json(const json& j, PeerAuthInitMsg& m) {
  require_object(j);
  m.from = id_field(j, "from");
  m.to = id_field(j, "to");
  m.nonce = hex_field(j, "nonce", kPeerNonceBytes);
}

void to_json(json& j, const PeerAuthChallengeMsg& m) {
  j = json{{"nonce", m.nonce}, {"mac", m.mac}};
}
void from_json(const json& j, PeerAuthChallengeMsg& m) {
  require_object(j);
  m.nonce = hex_field(j, "nonce", kPeerNonceBytes);
  m.mac = hex_field(j, "mac", kPeerMacBytes);
}

void to_json(json& j, const PeerAuthProofMsg& m) {
  j = json{{"mac", m.mac}, {"hello", m.hello}, {"purpose", peer_purpose_name(m.purpose)}};
}
void from_json(const json& j, PeerAuthProofMsg& m) {
  require_object(j);
  m.mac = hex_field(j, "mac", kPeerMacBytes);
  m.hello = field<PeerHello>(j, "hello");
  const auto purpose = field<std::string>(j, "purpose");
  if (purpose == "link") {
    m.purpose = PeerPurpose::link;
  } else if (purpose == "please_initiate") {
    m.purpose = PeerPurpose::please_initiate;
  } else {
    throw std::invalid_argument("field 'purpose': expected \"link\" or \"please_initiate\"");
  }
}

void to_json(json& j, const PeerWelcomeMsg& m) {
  j = json{{"hello", m.hello}};
}
void from_json(const json& j, PeerWelcomeMsg& m) {
  require_object(j);
  m.hello = field<PeerHello>(j, "hello");
}

}  // namespace dtu::common
