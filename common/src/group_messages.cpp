#include "dtu/common/group_messages.hpp"

#include <stdexcept>
#include <string>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/json_text.hpp"

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

namespace {

void write_on_behalf(JsonText& out, const OnBehalf& m) {
  out.open_object();  // the keys in sorted order
  out.key("client").string(m.client);
  out.key("gid").number(m.gid);
  out.key("holder").string(m.holder);
  out.key("pid").number(m.pid);
  out.key("uid").number(m.uid);
  out.close_object();
}

// {"on_behalf": ..., "request": ...}, the request written by write_request.
template <typename M, typename WriteRequest>
void write_forwarded(const M& m, std::string& out, WriteRequest write_request) {
  out.clear();
  out.reserve(256 + m.on_behalf.client.size() + m.on_behalf.holder.size());
  JsonText text(out);
  text.open_object();
  text.key("on_behalf");
  write_on_behalf(text, m.on_behalf);
  text.key("request");
  write_request(text, m.request);
  text.close_object();
}

bool plain(const OnBehalf& m) {
  return is_plain_json_string(m.client) && is_plain_json_string(m.holder);
}

}  // namespace

void to_json(json& j, const PeerAllocateMsg& m) { j = json{{"on_behalf", m.on_behalf}, {"request", m.request}}; }
bool encode_fast(const PeerAllocateMsg& m, std::string& out) {
  if (!plain(m.on_behalf) || !is_plain_json_string(m.request.dtu) ||
      !is_plain_json_string(m.request.device)) {
    return false;
  }
  write_forwarded(m, out, write_allocate);
  return true;
}
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
bool encode_fast(const PeerReleaseMsg& m, std::string& out) {
  if (!plain(m.on_behalf) || !is_plain_json_string(m.request.dtu) || !is_plain_json_string(m.request.lease)) {
    return false;
  }
  write_forwarded(m, out, write_release);
  return true;
}
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
