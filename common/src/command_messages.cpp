#include "dtu/common/command_messages.hpp"

#include <array>
#include <stdexcept>
#include <string>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/records.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

constexpr std::array<std::string_view, 6> kOutcomes = {"queued", "refused",     "done",
                                                       "failed", "unreachable", "timeout"};

void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

// A manager id: anything else is refused here, before it reaches a log line or a table.
std::string id_field(const json& j, const char* key) {
  std::string id = field<std::string>(j, key);
  if (!is_valid_id(id)) throw std::invalid_argument(std::string("field '") + key + "': not a valid id");
  return id;
}

// A short name (command id, verb): 1 to kMaxCommandNameBytes of [a-z0-9._-].
std::string name_field(const json& j, const char* key) {
  std::string name = field<std::string>(j, key);
  if (name.empty() || name.size() > kMaxCommandNameBytes) {
    throw std::invalid_argument(std::string("field '") + key + "': expected 1 to " +
                                std::to_string(kMaxCommandNameBytes) + " characters");
  }
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) throw std::invalid_argument(std::string("field '") + key + "': only a-z, 0-9, '.', '_' and '-'");
  }
  return name;
}

std::string text_field(const json& j, const char* key) {
  std::string text = field<std::string>(j, key);
  if (text.size() > kMaxCommandTextBytes) {
    throw std::invalid_argument(std::string("field '") + key + "': longer than " +
                                std::to_string(kMaxCommandTextBytes) + " bytes");
  }
  return text;
}

std::vector<std::string> ids_field(const json& j, const char* key) {
  const json& value = required_value(j, key);
  if (!value.is_array()) throw std::invalid_argument(std::string("field '") + key + "': expected an array");
  std::vector<std::string> ids;
  for (const json& id : value) {
    if (!id.is_string() || !is_valid_id(id.get<std::string>())) {
      throw std::invalid_argument(std::string("field '") + key + "': expected manager ids");
    }
    ids.push_back(id.get<std::string>());
  }
  return ids;
}

json object_or_empty(const json& j, const char* key) {
  const json* value = optional_value(j, key);
  if (value == nullptr) return json::object();
  if (!value->is_object())
    throw std::invalid_argument(std::string("field '") + key + "': expected an object");
  return *value;
}

std::string outcome_field(const json& j, const char* key) {
  std::string outcome = field<std::string>(j, key);
  if (!is_command_outcome(outcome))
    throw std::invalid_argument(std::string("field '") + key + "': unknown outcome");
  return outcome;
}

}  // namespace

bool is_command_outcome(std::string_view outcome) {
  for (const auto known : kOutcomes) {
    if (outcome == known) return true;
  }
  return false;
}

bool is_final_command_outcome(std::string_view outcome) {
  return is_command_outcome(outcome) && outcome != "queued";
}

void to_json(json& j, const GroupExecMsg& m) {
  j = json{{"verb", m.verb}, {"args", m.args}, {"nodes", m.nodes}, {"timeout_ms", m.timeout_ms}};
}
void from_json(const json& j, GroupExecMsg& m) {
  require_object(j);
  m.verb = name_field(j, "verb");
  m.args = object_or_empty(j, "args");
  m.nodes = ids_field(j, "nodes");
  m.timeout_ms = field<std::uint32_t>(j, "timeout_ms");
  if (m.timeout_ms == 0) throw std::invalid_argument("field 'timeout_ms': must be above 0");
}

void to_json(json& j, const GroupExecQueuedMsg& m) {
  j = json{{"command", m.command}, {"nodes", m.nodes}};
}
void from_json(const json& j, GroupExecQueuedMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  m.nodes = ids_field(j, "nodes");
}

void to_json(json& j, const GroupExecEventMsg& m) {
  j = json{{"command", m.command},
           {"node", m.node},
           {"outcome", m.outcome},
           {"detail", m.detail},
           {"result", m.result}};
}
void from_json(const json& j, GroupExecEventMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  m.node = id_field(j, "node");
  m.outcome = outcome_field(j, "outcome");
  m.detail = text_field(j, "detail");
  const json* result = optional_value(j, "result");
  m.result = result == nullptr ? json(nullptr) : *result;
}

void to_json(json& j, const GroupExecDoneMsg& m) {
  j = json{{"command", m.command}, {"outcomes", m.outcomes}};
}
void from_json(const json& j, GroupExecDoneMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  const json& outcomes = required_value(j, "outcomes");
  if (!outcomes.is_object()) throw std::invalid_argument("field 'outcomes': expected an object");
  m.outcomes.clear();
  for (const auto& [node, outcome] : outcomes.items()) {
    if (!is_valid_id(node) || !outcome.is_string() || !is_final_command_outcome(outcome.get<std::string>())) {
      throw std::invalid_argument("field 'outcomes': expected manager ids mapped to final outcomes");
    }
    m.outcomes[node] = outcome.get<std::string>();
  }
}

void to_json(json& j, const PeerCommandMsg& m) {
  j = json{{"command", m.command}, {"origin", m.origin}, {"verb", m.verb}, {"args", m.args}};
}
void from_json(const json& j, PeerCommandMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  m.origin = id_field(j, "origin");
  m.verb = name_field(j, "verb");
  m.args = object_or_empty(j, "args");
}

void to_json(json& j, const PeerCommandQueuedMsg& m) {
  j = json{{"command", m.command}, {"node", m.node}};
}
void from_json(const json& j, PeerCommandQueuedMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  m.node = id_field(j, "node");
}

void to_json(json& j, const PeerCommandDoneMsg& m) {
  j = json{{"command", m.command},
           {"node", m.node},
           {"outcome", m.outcome},
           {"detail", m.detail},
           {"result", m.result}};
}
void from_json(const json& j, PeerCommandDoneMsg& m) {
  require_object(j);
  m.command = name_field(j, "command");
  m.node = id_field(j, "node");
  m.outcome = outcome_field(j, "outcome");
  if (m.outcome != "done" && m.outcome != "failed") {
    throw std::invalid_argument("field 'outcome': a completion is done or failed");
  }
  m.detail = text_field(j, "detail");
  const json* result = optional_value(j, "result");
  m.result = result == nullptr ? json(nullptr) : *result;
}

}  // namespace dtu::common
