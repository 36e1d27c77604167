#include "dtu/common/messages.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "dtu/common/json_fields.hpp"
#include "dtu/common/json_parse.hpp"
#include "dtu/common/json_text.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

// A JSON payload must be an object; a message type with no fields still sends {}.
void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

bool all_plain(const std::vector<DeviceRecord>& devices) {
  return std::all_of(devices.begin(), devices.end(),
                     [](const DeviceRecord& d) { return is_plain_device(d); });
}

std::size_t record_bytes(const DeviceRecord& d) {
  return 320 + 160 * d.units.size();
}

void write_devices(JsonText& out, const std::vector<DeviceRecord>& devices) {
  out.open_array();
  for (const DeviceRecord& d : devices) write_device(out, d);
  out.close_array();
}

// {"device":<record>}: device_attached's and device_changed's one field.
bool encode_device_message(const DeviceRecord& d, std::string& out) {
  if (!is_plain_device(d)) return false;
  out.clear();
  out.reserve(16 + record_bytes(d));
  JsonText text(out);
  text.open_object();
  text.key("device");
  write_device(text, d);
  text.close_object();
  return true;
}

// A lease request's or release's fence: the stamp, or null when there is none.
void write_fence(JsonText& out, const std::optional<Stamp>& fence) {
  if (fence) {
    write_stamp(out, *fence);
  } else {
    out.null();
  }
}

}  // namespace

Result<json> parse_payload(const Frame& frame) {
  if (frame.is_binary()) {
    return Error(Errc::bad_payload, std::string(message_type_name(frame.type)) + ": binary payload where JSON was expected");
  }
  json j = parse_json(frame.payload_text());
  if (j.is_discarded()) {
    return Error(Errc::bad_payload, std::string(message_type_name(frame.type)) + ": payload is not valid JSON");
  }
  if (!j.is_object()) {
    return Error(Errc::bad_payload, std::string(message_type_name(frame.type)) + ": payload must be a JSON object");
  }
  return j;
}

void to_json(json& j, const AckMsg&) { j = json::object(); }
void from_json(const json& j, AckMsg&) { require_object(j); }

void to_json(json& j, const ErrorMsg& m) { j = json{{"code", m.code}, {"reason", m.reason}}; }
void from_json(const json& j, ErrorMsg& m) {
  m.code = field<std::string>(j, "code");
  m.reason = field_or(j, "reason", std::string());
}

void to_json(json& j, const HeartbeatMsg& m) {
  j = json{{"sent_us", m.sent_us}};
  if (m.echo_sent_us) j["echo_sent_us"] = *m.echo_sent_us;
  if (m.echo_received_us) j["echo_received_us"] = *m.echo_received_us;
}
void from_json(const json& j, HeartbeatMsg& m) {
  m.sent_us = field<std::int64_t>(j, "sent_us");
  m.echo_sent_us = optional_field<std::int64_t>(j, "echo_sent_us");
  m.echo_received_us = optional_field<std::int64_t>(j, "echo_received_us");
}

void to_json(json& j, const FilamentOpenMsg& m) { j = json{{"name", m.name}}; }
void from_json(const json& j, FilamentOpenMsg& m) { m.name = field<std::string>(j, "name"); }

void to_json(json& j, const FilamentCloseMsg& m) { j = json{{"reason", m.reason}}; }
void from_json(const json& j, FilamentCloseMsg& m) { m.reason = field_or(j, "reason", std::string()); }

void to_json(json& j, const DtuHelloMsg& m) {
  j = json{{"dtu", m.dtu}, {"agent_version", m.agent_version}, {"boot_epoch", m.boot_epoch}};
  if (m.probe) j["probe"] = true;
}
void from_json(const json& j, DtuHelloMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.agent_version = field_or(j, "agent_version", std::string());
  m.boot_epoch = field<std::int64_t>(j, "boot_epoch");
  m.probe = field_or(j, "probe", false);
}

void to_json(json& j, const DtuWelcomeMsg& m) {
  j = json{{"manager", m.manager}, {"heartbeat_ms", m.heartbeat_ms}, {"heartbeat_misses", m.heartbeat_misses},
           {"universal_us", m.universal_us}, {"dtus", m.dtus}};
  if (m.draining) j["draining"] = true;
}
void from_json(const json& j, DtuWelcomeMsg& m) {
  m.manager = field<std::string>(j, "manager");
  m.heartbeat_ms = field<std::uint32_t>(j, "heartbeat_ms");
  m.heartbeat_misses = field<std::uint32_t>(j, "heartbeat_misses");
  m.universal_us = field<std::int64_t>(j, "universal_us");
  m.dtus = field<std::uint32_t>(j, "dtus");
  m.draining = field_or(j, "draining", false);
  if (m.heartbeat_ms == 0 || m.heartbeat_misses == 0) {
    throw std::invalid_argument("heartbeat_ms and heartbeat_misses must be positive");
  }
}

void to_json(json& j, const DeviceSnapshotMsg& m) {
  j = json{{"dtu", m.dtu}, {"stamp", m.stamp}, {"devices", m.devices}, {"leases", m.leases}};
}
bool encode_fast(const DeviceSnapshotMsg& m, std::string& out) {
  if (!is_plain_json_string(m.dtu) || !all_plain(m.devices)) return false;
  for (const LeaseReport& l : m.leases) {
    if (!is_plain_json_string(l.lease) || !is_plain_json_string(l.device) ||
        !is_plain_json_string(l.holder) || !plain_or_absent(l.state_token)) {
      return false;
    }
  }
  out.clear();
  std::size_t bytes = 160;
  for (const DeviceRecord& d : m.devices) bytes += record_bytes(d);
  for (const LeaseReport& l : m.leases) bytes += 160 + (l.state_token ? l.state_token->size() : 0);
  out.reserve(bytes);
  JsonText text(out);
  text.open_object();  // the keys in sorted order
  text.key("devices");
  write_devices(text, m.devices);
  text.key("dtu").string(m.dtu);
  text.key("leases").open_array();
  for (const LeaseReport& l : m.leases) {
    text.open_object();
    text.key("device").string(l.device);
    text.key("expires_in_ms").number(l.expires_in_ms);
    text.key("holder").string(l.holder);
    text.key("lease").string(l.lease);
    text.key("state_token").string_or_null(l.state_token);
    text.key("uid").number_or_null(l.uid);
    text.key("unit").number(l.unit);
    text.close_object();
  }
  text.close_array();
  text.key("stamp");
  write_stamp(text, m.stamp);
  text.close_object();
  return true;
}

void from_json(const json& j, DeviceSnapshotMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.stamp = field<Stamp>(j, "stamp");
  m.devices = field<std::vector<DeviceRecord>>(j, "devices");
  m.leases = field_or(j, "leases", std::vector<LeaseReport>());
}

void to_json(json& j, const LeaseReport& m) {
  j = json{{"lease", m.lease}, {"device", m.device}, {"unit", m.unit}, {"holder", m.holder},
           {"expires_in_ms", m.expires_in_ms}};
  put_optional(j, "uid", m.uid);
  put_optional(j, "state_token", m.state_token);
}
void from_json(const json& j, LeaseReport& m) {
  m.lease = field<std::string>(j, "lease");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.holder = field<std::string>(j, "holder");
  m.uid = optional_field<std::uint32_t>(j, "uid");
  m.expires_in_ms = field<std::uint32_t>(j, "expires_in_ms");
  m.state_token = optional_field<std::string>(j, "state_token");
}

void to_json(json& j, const DtuMoveMsg& m) { j = json{{"reason", m.reason}}; }
void from_json(const json& j, DtuMoveMsg& m) { m.reason = field<std::string>(j, "reason"); }

void to_json(json& j, const DeviceAttachedMsg& m) { j = json{{"device", m.device}}; }
bool encode_fast(const DeviceAttachedMsg& m, std::string& out) {
  return encode_device_message(m.device, out);
}
void from_json(const json& j, DeviceAttachedMsg& m) { m.device = field<DeviceRecord>(j, "device"); }

void to_json(json& j, const DeviceDetachedMsg& m) {
  j = json{{"dtu", m.dtu}, {"device", m.device}, {"stamp", m.stamp}};
}
void from_json(const json& j, DeviceDetachedMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.stamp = field<Stamp>(j, "stamp");
}

void to_json(json& j, const ClientHelloMsg& m) { j = json{{"client", m.client}}; }
void from_json(const json& j, ClientHelloMsg& m) { m.client = field<std::string>(j, "client"); }

void to_json(json& j, const ClientWelcomeMsg& m) { j = json{{"manager", m.manager}, {"version", m.version}}; }
void from_json(const json& j, ClientWelcomeMsg& m) {
  m.manager = field<std::string>(j, "manager");
  m.version = field_or(j, "version", std::string());
}

void to_json(json& j, const ListDevicesMsg& m) {
  j = json::object();
  if (m.dtu) j["dtu"] = *m.dtu;
  if (m.group) j["group"] = true;
}
void from_json(const json& j, ListDevicesMsg& m) {
  require_object(j);
  m.dtu = optional_field<std::string>(j, "dtu");
  m.group = field_or(j, "group", false);
}

void to_json(json& j, const DeviceListMsg& m) { j = json{{"devices", m.devices}}; }
bool encode_fast(const DeviceListMsg& m, std::string& out) {
  if (!all_plain(m.devices)) return false;
  out.clear();
  std::size_t bytes = 16;
  for (const DeviceRecord& d : m.devices) bytes += record_bytes(d);
  out.reserve(bytes);
  JsonText text(out);
  text.open_object();
  text.key("devices");
  write_devices(text, m.devices);
  text.close_object();
  return true;
}
void from_json(const json& j, DeviceListMsg& m) {
  m.devices = field<std::vector<DeviceRecord>>(j, "devices");
}

void to_json(json& j, const DeviceChangedMsg& m) { j = json{{"device", m.device}}; }
bool encode_fast(const DeviceChangedMsg& m, std::string& out) {
  return encode_device_message(m.device, out);
}
void from_json(const json& j, DeviceChangedMsg& m) { m.device = field<DeviceRecord>(j, "device"); }

void to_json(json& j, const LeaseRequestMsg& m) {
  j = json{{"device", m.device}, {"unit", m.unit}, {"holder", m.holder}, {"length_ms", m.length_ms}};
  put_optional(j, "uid", m.uid);
  put_optional(j, "fence", m.fence);
  put_optional(j, "state_token", m.state_token);
}

bool encode_fast(const LeaseRequestMsg& m, std::string& out) {
  if (!is_plain_json_string(m.device) || !is_plain_json_string(m.holder) || !plain_or_absent(m.state_token)) {
    return false;
  }
  out.clear();
  out.reserve(160 + (m.state_token ? m.state_token->size() : 0));
  JsonText text(out);
  text.open_object();  // the keys in sorted order
  text.key("device").string(m.device);
  text.key("fence");
  write_fence(text, m.fence);
  text.key("holder").string(m.holder);
  text.key("length_ms").number(m.length_ms);
  text.key("state_token").string_or_null(m.state_token);
  text.key("uid").number_or_null(m.uid);
  text.key("unit").number(m.unit);
  text.close_object();
  return true;
}

void from_json(const json& j, LeaseRequestMsg& m) {
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.holder = field<std::string>(j, "holder");
  m.uid = optional_field<std::uint32_t>(j, "uid");
  m.length_ms = field<std::uint32_t>(j, "length_ms");
  m.fence = optional_field<Stamp>(j, "fence");
  m.state_token = optional_field<std::string>(j, "state_token");
}

void to_json(json& j, const LeaseGrantedMsg& m) {
  j = json{{"lease", m.lease}, {"dtu", m.dtu}, {"device", m.device}, {"unit", m.unit},
           {"holder", m.holder}, {"expires_in_ms", m.expires_in_ms}};
  put_optional(j, "token", m.token);
  put_optional(j, "inband", m.inband);
  put_optional(j, "state_token", m.state_token);
}

bool encode_fast(const LeaseGrantedMsg& m, std::string& out) {
  if (!is_plain_json_string(m.lease) || !is_plain_json_string(m.dtu) || !is_plain_json_string(m.device) ||
      !is_plain_json_string(m.holder) || !plain_or_absent(m.token) || !plain_or_absent(m.inband) ||
      !plain_or_absent(m.state_token)) {
    return false;
  }
  out.clear();
  out.reserve(220 + (m.state_token ? m.state_token->size() : 0));
  JsonText text(out);
  text.open_object();  // the keys in sorted order
  text.key("device").string(m.device);
  text.key("dtu").string(m.dtu);
  text.key("expires_in_ms").number(m.expires_in_ms);
  text.key("holder").string(m.holder);
  text.key("inband").string_or_null(m.inband);
  text.key("lease").string(m.lease);
  text.key("state_token").string_or_null(m.state_token);
  text.key("token").string_or_null(m.token);
  text.key("unit").number(m.unit);
  text.close_object();
  return true;
}

void from_json(const json& j, LeaseGrantedMsg& m) {
  m.lease = field<std::string>(j, "lease");
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.holder = field<std::string>(j, "holder");
  m.expires_in_ms = field<std::uint32_t>(j, "expires_in_ms");
  m.token = optional_field<std::string>(j, "token");
  m.inband = optional_field<std::string>(j, "inband");
  m.state_token = optional_field<std::string>(j, "state_token");
}

void to_json(json& j, const LeaseRenewMsg& m) {
  j = json{{"lease", m.lease}, {"length_ms", m.length_ms}};
  put_optional(j, "token", m.token);
  put_optional(j, "fence", m.fence);
  put_optional(j, "state_token", m.state_token);
}
void from_json(const json& j, LeaseRenewMsg& m) {
  m.lease = field<std::string>(j, "lease");
  m.length_ms = field<std::uint32_t>(j, "length_ms");
  m.token = optional_field<std::string>(j, "token");
  m.fence = optional_field<Stamp>(j, "fence");
  m.state_token = optional_field<std::string>(j, "state_token");
}

void to_json(json& j, const LeaseReleaseMsg& m) {
  j = json{{"lease", m.lease}};
  put_optional(j, "fence", m.fence);
}
bool encode_fast(const LeaseReleaseMsg& m, std::string& out) {
  if (!is_plain_json_string(m.lease)) return false;
  out.clear();
  out.reserve(96 + m.lease.size());
  JsonText text(out);
  text.open_object();  // the keys in sorted order
  text.key("fence");
  write_fence(text, m.fence);
  text.key("lease").string(m.lease);
  text.close_object();
  return true;
}
void from_json(const json& j, LeaseReleaseMsg& m) {
  m.lease = field<std::string>(j, "lease");
  m.fence = optional_field<Stamp>(j, "fence");
}

void to_json(json& j, const LeaseEndedMsg& m) {
  j = json{{"dtu", m.dtu}, {"lease", m.lease}, {"device", m.device}, {"unit", m.unit}, {"reason", m.reason}};
}
bool encode_fast(const LeaseEndedMsg& m, std::string& out) {
  if (!is_plain_json_string(m.dtu) || !is_plain_json_string(m.lease) || !is_plain_json_string(m.device) ||
      !is_plain_json_string(m.reason)) {
    return false;
  }
  out.clear();
  out.reserve(96 + m.dtu.size() + m.lease.size() + m.device.size() + m.reason.size());
  JsonText text(out);
  text.open_object();  // the keys in sorted order
  text.key("device").string(m.device);
  text.key("dtu").string(m.dtu);
  text.key("lease").string(m.lease);
  text.key("reason").string(m.reason);
  text.key("unit").number(m.unit);
  text.close_object();
  return true;
}

void from_json(const json& j, LeaseEndedMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.lease = field<std::string>(j, "lease");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.reason = field<std::string>(j, "reason");
}

void to_json(json& j, const AllocateMsg& m) {
  j = json{{"dtu", m.dtu}, {"device", m.device}, {"unit", m.unit}, {"length_ms", m.length_ms}};
  put_optional(j, "wait_ms", m.wait_ms);
  if (m.keep) j["keep"] = true;
}
void write_allocate(JsonText& out, const AllocateMsg& m) {
  out.open_object();  // the keys in sorted order
  out.key("device").string(m.device);
  out.key("dtu").string(m.dtu);
  if (m.keep) out.key("keep").boolean(true);
  out.key("length_ms").number(m.length_ms);
  out.key("unit").number(m.unit);
  out.key("wait_ms").number_or_null(m.wait_ms);
  out.close_object();
}

bool encode_fast(const AllocateMsg& m, std::string& out) {
  if (!is_plain_json_string(m.dtu) || !is_plain_json_string(m.device)) return false;
  out.clear();
  out.reserve(96 + m.dtu.size() + m.device.size());
  JsonText text(out);
  write_allocate(text, m);
  return true;
}

void from_json(const json& j, AllocateMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.length_ms = field<std::uint32_t>(j, "length_ms");
  m.wait_ms = optional_field<std::uint32_t>(j, "wait_ms");
  m.keep = field_or(j, "keep", false);
}

void to_json(json& j, const RenewMsg& m) { j = json{{"dtu", m.dtu}, {"lease", m.lease}, {"length_ms", m.length_ms}}; }
void from_json(const json& j, RenewMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.lease = field<std::string>(j, "lease");
  m.length_ms = field<std::uint32_t>(j, "length_ms");
}

void to_json(json& j, const ReleaseMsg& m) { j = json{{"dtu", m.dtu}, {"lease", m.lease}}; }

void write_release(JsonText& out, const ReleaseMsg& m) {
  out.open_object();  // the keys in sorted order
  out.key("dtu").string(m.dtu);
  out.key("lease").string(m.lease);
  out.close_object();
}

bool encode_fast(const ReleaseMsg& m, std::string& out) {
  if (!is_plain_json_string(m.dtu) || !is_plain_json_string(m.lease)) return false;
  out.clear();
  out.reserve(32 + m.dtu.size() + m.lease.size());
  JsonText text(out);
  write_release(text, m);
  return true;
}

void from_json(const json& j, ReleaseMsg& m) {
  m.dtu = field<std::string>(j, "dtu");
  m.lease = field<std::string>(j, "lease");
}

}  // namespace dtu::common
