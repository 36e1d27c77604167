#include "dtu/common/group_messages.hpp"

#include <stdexcept>
#include <string>

#include "dtu/common/json_fields.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

// A manager or DTU id: anything else is refused here, before it reaches a log line or a table.
std::string id_field(const json& j, const char* key) {
  std::string id = field<std::string>(j, key);
  if (!is_valid_id(id)) throw std::invalid_argument(std::string("field '") + key + "': not a valid id");
  return id;
}

// A nested object of type T; its errors are prefixed with the field's name.
template <typename T>
T object_field(const json& j, const char* key) {
  const json& value = required_value(j, key);
  if (!value.is_object()) throw std::invalid_argument(std::string("field '") + key + "': expected an object");
  try {
    return value.get<T>();
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string(key) + ": " + e.what());
  }
}

}  // namespace

void to_json(json& j, const OwnedDtu& m) { j = json{{"dtu", m.dtu}, {"stamp", m.stamp}, {"devices", m.devices}}; }
void from_json(const json& j, OwnedDtu& m) {
  require_object(j);
  m.dtu = id_field(j, "dtu");
  m.stamp = object_field<Stamp>(j, "stamp");
  m.devices = field<std::uint32_t>(j, "devices");
}

void to_json(json& j, const PeerOwnershipMsg& m) {
  j = json{{"manager", m.manager}, {"incarnation", m.incarnation}, {"full", m.full}, {"owned", m.owned},
           {"lost", m.lost}};
}
void from_json(const json& j, PeerOwnershipMsg& m) {
  require_object(j);
  m.manager = id_field(j, "manager");
  m.incarnation = field<std::uint64_t>(j, "incarnation");
  m.full = field<bool>(j, "full");
  m.owned = field<std::vector<OwnedDtu>>(j, "owned");
  const json& lost = required_value(j, "lost");
  if (!lost.is_array()) throw std::invalid_argument("field 'lost': expected an array");
  m.lost.clear();
  for (const json& dtu : lost) {
    if (!dtu.is_string() || !is_valid_id(dtu.get<std::string>())) {
      throw std::invalid_argument("field 'lost': expected DTU ids");
    }
    m.lost.push_back(dtu.get<std::string>());
  }
}

void to_json(json& j, const OnBehalf& m) {
  j = json{{"uid", m.uid}, {"gid", m.gid}, {"pid", m.pid}, {"client", m.client}, {"holder", m.holder}};
}
void from_json(const json& j, OnBehalf& m) {
  require_object(j);
  m.uid = field<std::uint32_t>(j, "uid");
  m.gid = field<std::uint32_t>(j, "gid");
  m.pid = field<std::uint32_t>(j, "pid");
  m.client = field<std::string>(j, "client");
  m.holder = field<std::string>(j, "holder");
  if (m.holder.empty()) throw std::invalid_argument("field 'holder': must not be empty");
}

void to_json(json& j, const PeerAllocateMsg& m) { j = json{{"on_behalf", m.on_behalf}, {"request", m.request}}; }
void from_json(const json& j, PeerAllocateMsg& m) {
  require_object(j);
  m.on_behalf = object_field<OnBehalf>(j, "on_behalf");
  m.request = object_field<AllocateMsg>(j, "request");
}

void to_json(json& j, const PeerRenewMsg& m) { j = json{{"on_behalf", m.on_behalf}, {"request", m.request}}; }
void from_json(const json& j, PeerRenewMsg& m) {
  require_object(j);
  m.on_behalf = object_field<OnBehalf>(j, "on_behalf");
  m.request = object_field<RenewMsg>(j, "request");
}

void to_json(json& j, const PeerReleaseMsg& m) { j = json{{"on_behalf", m.on_behalf}, {"request", m.request}}; }
void from_json(const json& j, PeerReleaseMsg& m) {
  require_object(j);
  m.on_behalf = object_field<OnBehalf>(j, "on_behalf");
  m.request = object_field<ReleaseMsg>(j, "request");
}

void to_json(json& j, const PeerResumeMsg& m) { j = json{{"on_behalf", m.on_behalf}, {"request", m.request}}; }
void from_json(const json& j, PeerResumeMsg& m) {
  require_object(j);
  m.on_behalf = object_field<OnBehalf>(j, "on_behalf");
  m.request = object_field<ResumeLeaseMsg>(j, "request");
}

void to_json(json& j, const PeerStatusMsg&) { j = json::object(); }
void from_json(const json& j, PeerStatusMsg&) { require_object(j); }

void to_json(json& j, const PeerStatusReplyMsg& m) {
  j = json{{"manager", m.manager}, {"incarnation", m.incarnation}, {"dtus", m.dtus}, {"devices", m.devices},
           {"finders_held_total", m.finders_held_total}};
}
void from_json(const json& j, PeerStatusReplyMsg& m) {
  require_object(j);
  m.manager = id_field(j, "manager");
  m.incarnation = field<std::uint64_t>(j, "incarnation");
  m.dtus = field<std::uint32_t>(j, "dtus");
  m.devices = field<std::uint32_t>(j, "devices");
  m.finders_held_total = field<std::uint32_t>(j, "finders_held_total");
}

}  // namespace dtu::common
