#include "dtu/common/service_messages.hpp"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/json_text.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

// Unit numbers: an array of integers in u32 range; names the field and the index on failure.
std::vector<std::uint32_t> unit_array(const json& j, const char* key) {
  const json& value = required_value(j, key);
  if (!value.is_array()) throw std::invalid_argument(std::string("field '") + key + "': expected an array");
  std::vector<std::uint32_t> out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    out.push_back(to_integer<std::uint32_t>(value[i], where.c_str()));
  }
  return out;
}

// The finder of a message: parse_finder's strict reading, its error naming the finder field.
Finder finder_field(const json& j, const char* key) {
  auto finder = parse_finder(required_value(j, key));
  if (!finder.ok()) throw std::invalid_argument(finder.error().detail);
  return std::move(finder.value());
}

}  // namespace

void to_json(json& j, const RegisterFinderMsg& m) { j = json{{"finder_id", m.finder_id}, {"finder", m.finder}}; }
void from_json(const json& j, RegisterFinderMsg& m) {
  m.finder_id = field<std::uint64_t>(j, "finder_id");
  m.finder = finder_field(j, "finder");
}

void to_json(json& j, const UnregisterFinderMsg& m) { j = json{{"finder_id", m.finder_id}}; }
void from_json(const json& j, UnregisterFinderMsg& m) { m.finder_id = field<std::uint64_t>(j, "finder_id"); }

void to_json(json& j, const FinderMatchedMsg& m) {
  j = json{{"finder_id", m.finder_id}, {"device", m.device}, {"units", m.units}};
}
void from_json(const json& j, FinderMatchedMsg& m) {
  m.finder_id = field<std::uint64_t>(j, "finder_id");
  m.device = field<DeviceRecord>(j, "device");
  m.units = unit_array(j, "units");
}

void to_json(json& j, const FinderChangedMsg& m) {
  j = json{{"finder_id", m.finder_id}, {"device", m.device}, {"units", m.units}};
}
void from_json(const json& j, FinderChangedMsg& m) {
  m.finder_id = field<std::uint64_t>(j, "finder_id");
  m.device = field<DeviceRecord>(j, "device");
  m.units = unit_array(j, "units");
}

std::string encode_device(const DeviceRecord& d) {
  // Written directly unless a string needs nlohmann's escaping: building the object was most of
  // an event's cost at each manager.
  if (!is_plain_device(d)) return json(d).dump(-1, ' ', false, json::error_handler_t::replace);
  std::string text;
  text.reserve(320 + 160 * d.units.size());
  JsonText out(text);
  write_device(out, d);
  return text;
}

Frame finder_event_frame(MessageType type, std::uint64_t finder_id, std::string_view device_json,
                         const std::vector<std::uint32_t>& units) {
  std::string text;
  text.reserve(device_json.size() + 48 + units.size() * 4);
  JsonText out(text);
  out.open_object();  // the keys in sorted order: what to_frame's dump(-1) writes
  out.key("device").encoded(device_json);
  out.key("finder_id").number(finder_id);
  out.key("units").open_array();
  for (const std::uint32_t unit : units) out.number(unit);
  out.close_array();
  out.close_object();
  Frame f;
  f.type = type;
  f.payload.assign(text.begin(), text.end());
  return f;
}

void sort_matches(std::vector<MatchRef>& matches) {
  std::sort(matches.begin(), matches.end(),
            [](const MatchRef& a, const MatchRef& b) { return std::tie(a.dtu, a.device) < std::tie(b.dtu, b.device); });
}

void LastEncodedDevice::use(const DeviceRecord& record) {
  // Comparing is a small fraction of encoding. Stamp's == leaves out time_us, which is encoded.
  if (record_ && *record_ == record && record_->stamp.time_us == record.stamp.time_us) return;
  record_ = std::make_shared<const DeviceRecord>(record);
  json_ = encode_device(record);
}

void to_json(json& j, const FinderGoneMsg& m) {
  j = json{{"finder_id", m.finder_id}, {"dtu", m.dtu}, {"device", m.device}, {"reason", m.reason}};
}
void from_json(const json& j, FinderGoneMsg& m) {
  m.finder_id = field<std::uint64_t>(j, "finder_id");
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.reason = field<std::string>(j, "reason");
}

void to_json(json& j, const FinderSyncedMsg& m) { j = json{{"finder_id", m.finder_id}}; }
void from_json(const json& j, FinderSyncedMsg& m) { m.finder_id = field<std::uint64_t>(j, "finder_id"); }

void to_json(json& j, const MatchRef& m) {
  j = json{{"dtu", m.dtu}, {"device", m.device}, {"units", m.units}, {"owner", m.owner}};
  if (m.orphaned) j["orphaned"] = true;
}
void from_json(const json& j, MatchRef& m) {
  require_object(j);
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.units = unit_array(j, "units");
  m.owner = field_or(j, "owner", std::string());
  m.orphaned = field_or(j, "orphaned", false);
}

void to_json(json& j, const FinderInfo& m) {
  j = json{{"client", m.client}, {"pid", m.pid},       {"uid", m.uid},
           {"finder_id", m.finder_id}, {"finder", m.finder}, {"matches", m.matches}};
}
void from_json(const json& j, FinderInfo& m) {
  require_object(j);
  m.client = field<std::string>(j, "client");
  m.pid = field<std::uint32_t>(j, "pid");
  m.uid = field<std::uint32_t>(j, "uid");
  m.finder_id = field<std::uint64_t>(j, "finder_id");
  m.finder = finder_field(j, "finder");
  m.matches = field<std::vector<MatchRef>>(j, "matches");
}

void to_json(json& j, const ListFindersMsg&) { j = json::object(); }
void from_json(const json& j, ListFindersMsg&) { require_object(j); }

void to_json(json& j, const FinderListMsg& m) { j = json{{"finders", m.finders}}; }
void from_json(const json& j, FinderListMsg& m) { m.finders = field<std::vector<FinderInfo>>(j, "finders"); }

void to_json(json& j, const LeaseInfo& m) {
  j = json{{"lease", m.lease}, {"dtu", m.dtu}, {"device", m.device}, {"unit", m.unit},
           {"holder", m.holder}, {"uid", m.uid}, {"expires_in_ms", m.expires_in_ms}, {"keep", m.keep}};
}
void from_json(const json& j, LeaseInfo& m) {
  require_object(j);
  m.lease = field<std::string>(j, "lease");
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.holder = field<std::string>(j, "holder");
  m.uid = field<std::uint32_t>(j, "uid");
  m.expires_in_ms = field<std::uint32_t>(j, "expires_in_ms");
  m.keep = field_or(j, "keep", false);
}

void to_json(json& j, const ListLeasesMsg&) { j = json::object(); }
void from_json(const json& j, ListLeasesMsg&) { require_object(j); }

void to_json(json& j, const LeaseListMsg& m) { j = json{{"leases", m.leases}}; }
void from_json(const json& j, LeaseListMsg& m) { m.leases = field<std::vector<LeaseInfo>>(j, "leases"); }

void to_json(json& j, const SessionAttachMsg& m) {
  j = json{{"session", m.session}, {"user", m.user}, {"dtu", m.dtu}};
}
void from_json(const json& j, SessionAttachMsg& m) {
  m.session = field<std::string>(j, "session");
  m.user = field<std::string>(j, "user");
  m.dtu = field<std::string>(j, "dtu");
}

void to_json(json& j, const SessionDetachMsg& m) { j = json{{"session", m.session}}; }
void from_json(const json& j, SessionDetachMsg& m) { m.session = field<std::string>(j, "session"); }

void to_json(json& j, const SessionInfo& m) {
  j = json{{"session", m.session}, {"user", m.user}, {"dtu", m.dtu}, {"attached_ms_ago", m.attached_ms_ago}};
}
void from_json(const json& j, SessionInfo& m) {
  require_object(j);
  m.session = field<std::string>(j, "session");
  m.user = field<std::string>(j, "user");
  m.dtu = field<std::string>(j, "dtu");
  m.attached_ms_ago = field<std::uint32_t>(j, "attached_ms_ago");
}

void to_json(json& j, const ListSessionsMsg&) { j = json::object(); }
void from_json(const json& j, ListSessionsMsg&) { require_object(j); }

void to_json(json& j, const SessionListMsg& m) { j = json{{"sessions", m.sessions}}; }
void from_json(const json& j, SessionListMsg& m) { m.sessions = field<std::vector<SessionInfo>>(j, "sessions"); }

void to_json(json& j, const GetPolicyMsg&) { j = json::object(); }
void from_json(const json& j, GetPolicyMsg&) { require_object(j); }

void to_json(json& j, const PolicyInfoMsg& m) { j = json{{"source", m.source}, {"policy", m.policy}}; }
void from_json(const json& j, PolicyInfoMsg& m) {
  m.source = field<std::string>(j, "source");
  m.policy = required_value(j, "policy");
}

void to_json(json& j, const ReloadPolicyMsg&) { j = json::object(); }
void from_json(const json& j, ReloadPolicyMsg&) { require_object(j); }

void to_json(json& j, const ResumeLeaseMsg& m) {
  j = json{{"dtu", m.dtu}, {"lease", m.lease}, {"token", m.token}, {"length_ms", m.length_ms}};
  put_optional(j, "state_token", m.state_token);
}
void from_json(const json& j, ResumeLeaseMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.lease = field<std::string>(j, "lease");
  m.token = field<std::string>(j, "token");
  m.length_ms = field<std::uint32_t>(j, "length_ms");
  m.state_token = optional_field<std::string>(j, "state_token");
}

void to_json(json& j, const GroupStatusMsg&) { j = json::object(); }
void from_json(const json& j, GroupStatusMsg&) { require_object(j); }

void to_json(json& j, const GroupMemberInfo& m) {
  j = json{{"id", m.id},
           {"address", m.address},
           {"self", m.self},
           {"state", m.state},
           {"incarnation", m.incarnation},
           {"finders_held", m.finders_held},
           {"finders_sent", m.finders_sent},
           {"last_error", m.last_error}};
  if (m.rtt_ms) j["rtt_ms"] = *m.rtt_ms;
  if (m.offset_ms) j["offset_ms"] = *m.offset_ms;
  if (m.last_heard_ms_ago) j["last_heard_ms_ago"] = *m.last_heard_ms_ago;
  if (m.dtus) j["dtus"] = *m.dtus;
  if (m.devices) j["devices"] = *m.devices;
}
void from_json(const json& j, GroupMemberInfo& m) {
  require_object(j);
  m.id = field<std::string>(j, "id");
  m.address = field<std::string>(j, "address");
  m.self = field<bool>(j, "self");
  m.state = field<std::string>(j, "state");
  m.incarnation = field<std::uint64_t>(j, "incarnation");
  m.rtt_ms = optional_field<double>(j, "rtt_ms");
  m.offset_ms = optional_field<double>(j, "offset_ms");
  m.last_heard_ms_ago = optional_field<std::uint64_t>(j, "last_heard_ms_ago");
  m.dtus = optional_field<std::uint32_t>(j, "dtus");
  m.devices = optional_field<std::uint32_t>(j, "devices");
  m.finders_held = field<std::uint32_t>(j, "finders_held");
  m.finders_sent = field<std::uint32_t>(j, "finders_sent");
  m.last_error = field<std::string>(j, "last_error");
}

void to_json(json& j, const GroupInfoMsg& m) {
  j = json{{"manager", m.manager}, {"incarnation", m.incarnation}, {"members", m.members}};
  if (m.draining) j["draining"] = true;
  put_optional(j, "universal_offset_ms", m.universal_offset_ms);
}
void from_json(const json& j, GroupInfoMsg& m) {
  require_object(j);
  m.manager = field<std::string>(j, "manager");
  m.incarnation = field<std::uint64_t>(j, "incarnation");
  m.members = field<std::vector<GroupMemberInfo>>(j, "members");
  m.draining = field_or(j, "draining", false);
  m.universal_offset_ms = optional_field<double>(j, "universal_offset_ms");
}

void to_json(json& j, const ReloadGroupMsg&) { j = json::object(); }
void from_json(const json& j, ReloadGroupMsg&) { require_object(j); }

void to_json(json& j, const DrainMsg& m) {
  j = json::object();
  put_optional(j, "wait_ms", m.wait_ms);
}
void from_json(const json& j, DrainMsg& m) {
  require_object(j);
  m.wait_ms = optional_field<std::uint32_t>(j, "wait_ms");
}

void to_json(json& j, const UndrainMsg&) { j = json::object(); }
void from_json(const json& j, UndrainMsg&) { require_object(j); }

void to_json(json& j, const DrainStatusMsg& m) { j = json{{"draining", m.draining}, {"dtus", m.dtus}}; }
void from_json(const json& j, DrainStatusMsg& m) {
  m.draining = field<bool>(j, "draining");
  m.dtus = field<std::uint32_t>(j, "dtus");
}

void to_json(json& j, const ListDtusMsg& m) {
  j = json::object();
  if (m.group) j["group"] = true;
}
void from_json(const json& j, ListDtusMsg& m) {
  require_object(j);
  m.group = field_or(j, "group", false);
}

void to_json(json& j, const DtuInfo& m) {
  j = json{{"dtu", m.dtu},
           {"owner", m.owner},
           {"state", m.state},
           {"devices", m.devices},
           {"units_free", m.units_free},
           {"units_allocated", m.units_allocated},
           {"units_unavailable", m.units_unavailable}};
  // Absent, not null, when unknown (as group_info's members).
  if (m.address) j["address"] = *m.address;
  if (m.agent_version) j["agent_version"] = *m.agent_version;
  if (m.boot_epoch) j["boot_epoch"] = *m.boot_epoch;
  if (m.connected_ms_ago) j["connected_ms_ago"] = *m.connected_ms_ago;
}
void from_json(const json& j, DtuInfo& m) {
  require_object(j);
  m.dtu = field<std::string>(j, "dtu");
  m.owner = field<std::string>(j, "owner");
  m.state = field<std::string>(j, "state");
  m.address = optional_field<std::string>(j, "address");
  m.agent_version = optional_field<std::string>(j, "agent_version");
  m.boot_epoch = optional_field<std::int64_t>(j, "boot_epoch");
  m.connected_ms_ago = optional_field<std::uint64_t>(j, "connected_ms_ago");
  m.devices = field<std::uint32_t>(j, "devices");
  m.units_free = field<std::uint32_t>(j, "units_free");
  m.units_allocated = field<std::uint32_t>(j, "units_allocated");
  m.units_unavailable = field<std::uint32_t>(j, "units_unavailable");
}

void to_json(json& j, const DtuListMsg& m) { j = json{{"dtus", m.dtus}}; }
void from_json(const json& j, DtuListMsg& m) {
  require_object(j);
  m.dtus = field<std::vector<DtuInfo>>(j, "dtus");
}

}  // namespace dtu::common
