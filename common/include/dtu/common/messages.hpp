#pragma once
// Messages: one plain struct per message type, with to_json/from_json beside it, and the two
// functions that move a message into and out of a Frame. docs/protocol.md documents each.
// Values; not thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/frame.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

// --- Link control ---------------------------------------------------------------------------

// Confirms a post. Empty payload ({}).
struct AckMsg {
  static constexpr MessageType kType = MessageType::ack;
};

// A failed request or post (as a reply), or the reason the sender closes the link.
struct ErrorMsg {
  static constexpr MessageType kType = MessageType::error;
  std::string code;    // errc_name(): "timeout", "refused", "not_found", …
  std::string reason;  // for people
};

// Liveness and clock calibration. Sent on filament 0 when the link has been silent for one
// heartbeat interval. The echo fields give the receiver the four NTP timestamps:
// t1 = echo_sent_us, t2 = echo_received_us, t3 = sent_us, t4 = receive time.
struct HeartbeatMsg {
  static constexpr MessageType kType = MessageType::heartbeat;
  std::int64_t sent_us = 0;                        // sender's wall clock at send
  std::optional<std::int64_t> echo_sent_us;        // sent_us of the last heartbeat received
  std::optional<std::int64_t> echo_received_us;    // our wall clock when it arrived
};

// Opens a filament; sent on the new filament's id. `name` says what it is for.
struct FilamentOpenMsg {
  static constexpr MessageType kType = MessageType::filament_open;
  std::string name;
};

// Closes a filament: the sender will send nothing more on it.
struct FilamentCloseMsg {
  static constexpr MessageType kType = MessageType::filament_close;
  std::string reason;
};

// --- DTU <-> manager ------------------------------------------------------------------------

// DTU -> manager, first message after TLS. `dtu` must equal the TLS PSK identity.
// boot_epoch: the universal time (µs) the DTU took from its first welcome since it booted, 0
// before it has one. probe: the DTU only asks for the welcome (its load figures, --pick
// least-loaded) and closes; the manager does not take it.
struct DtuHelloMsg {
  static constexpr MessageType kType = MessageType::dtu_hello;
  std::string dtu;
  std::string agent_version;
  std::int64_t boot_epoch = 0;
  bool probe = false;
};

// Manager -> DTU: accepted; heartbeat parameters the DTU must use on this link; the group's
// universal time when sent (the manager's hybrid logical clock, µs), which the DTU takes as its
// boot_epoch when it has none and uses to stamp records; how many DTUs the manager serves and
// whether it is draining (a draining manager answers a probe like this and refuses a hello with
// Errc::refused "draining").
struct DtuWelcomeMsg {
  static constexpr MessageType kType = MessageType::dtu_welcome;
  std::string manager;
  std::uint32_t heartbeat_ms = 1000;
  std::uint32_t heartbeat_misses = 3;
  std::int64_t universal_us = 0;
  std::uint32_t dtus = 0;
  bool draining = false;
};

// A lease the DTU holds, as it reports it when it connects (so a new owner adopts it).
// state_token: the opaque signed context the granting manager gave with the lease_request
// (common/state_token.hpp), returned as it came.
struct LeaseReport {
  std::string lease;
  std::string device;
  std::uint32_t unit = 0;
  std::string holder;
  std::optional<std::uint32_t> uid;
  std::uint32_t expires_in_ms = 0;  // from when the DTU sent it
  std::optional<std::string> state_token;

  friend bool operator==(const LeaseReport&, const LeaseReport&) = default;
};

// DTU -> manager: every device the DTU has, replacing whatever the manager held for it, and
// every lease it holds. `stamp` (boot_epoch, seq) is the DTU's ownership claim on this manager
// and the fence every lease operation from this manager must carry.
struct DeviceSnapshotMsg {
  static constexpr MessageType kType = MessageType::device_snapshot;
  std::string dtu;
  Stamp stamp;
  std::vector<DeviceRecord> devices;
  std::vector<LeaseReport> leases;
};

// DTU -> manager: a device appeared (or its record changed).
struct DeviceAttachedMsg {
  static constexpr MessageType kType = MessageType::device_attached;
  DeviceRecord device;
};

// DTU -> manager: a device left.
struct DeviceDetachedMsg {
  static constexpr MessageType kType = MessageType::device_detached;
  std::string dtu;
  std::string device;
  Stamp stamp;
};

// DTU -> manager: a device's units changed (state, holder, lease). Replaces the record.
struct DeviceChangedMsg {
  static constexpr MessageType kType = MessageType::device_changed;
  DeviceRecord device;
};

// The messages that carry a device record are read straight from simdjson's index of the text
// (record_decode.cpp), not through a nlohmann value: building that value was most of the parse,
// at each of the three hops of an attach (docs/performance.md). Each reads what from_json reads,
// the same value; false at anything else — then from_frame decodes through from_json, which
// names the fault. tests/fuzz/message_fuzz.cpp holds the two decoders equal.
bool decode_fast(std::string_view text, DeviceAttachedMsg& out);
bool decode_fast(std::string_view text, DeviceChangedMsg& out);
// And written straight into text (JsonText, write_device), as are the snapshot and the device
// list: through a nlohmann value, the DTU's device_changed after every grant and release was half
// of its work per allocation (docs/performance.md). Each writes the bytes to_frame's dump()
// writes; false (nothing written) when a string is not plain (is_plain_json_string), and then
// to_frame encodes through nlohmann, which escapes and replaces. tests/fuzz/message_fuzz.cpp
// holds the two encoders equal.
bool encode_fast(const DeviceAttachedMsg& m, std::string& out);
bool encode_fast(const DeviceChangedMsg& m, std::string& out);
bool encode_fast(const DeviceSnapshotMsg& m, std::string& out);

// Manager -> DTU (request): lease unit `unit` of `device` to `holder` for length_ms. The DTU
// answers lease_granted, or an error: refused (held; the reason names the holder), unavailable
// (a sibling's lease makes it unusable), not_found, invalid_argument.
struct LeaseRequestMsg {
  static constexpr MessageType kType = MessageType::lease_request;
  std::string device;
  std::uint32_t unit = 0;
  std::string holder;               // the service, as its manager names it
  std::optional<std::uint32_t> uid; // the service's uid (SO_PEERCRED), for logs and policy
  std::uint32_t length_ms = 0;
  std::optional<Stamp> fence;              // the claim stamp of the DTU's current link (fencing)
  std::optional<std::string> state_token;  // kept with the lease, reported back on reconnect
};

// A granted (or renewed) lease. DTU -> manager as the reply to lease_request / lease_renew;
// manager -> service as the reply to allocate / renew. The token (the in-band TLS PSK, hex) is
// sent with the grant only; `inband` is where the service connects for the in-band channel.
struct LeaseGrantedMsg {
  static constexpr MessageType kType = MessageType::lease_granted;
  std::string lease;
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::string holder;
  std::uint32_t expires_in_ms = 0;  // from when the DTU sent it
  std::optional<std::string> token; // 64 hex digits
  std::optional<std::string> inband;  // "host:port" of the DTU's in-band listener
  std::optional<std::string> state_token;  // manager -> service: the lease's signed context
};

// The two messages of an allocation that carry a state token are written straight into text
// (JsonText), not through a nlohmann value: its dump() checked the token's ~800 characters one
// by one, twice per allocation at the owner (docs/performance.md). Each writes the bytes that
// to_frame's dump() writes; false (nothing written) when a string is not plain
// (is_plain_json_string) — then to_frame encodes through nlohmann, which escapes and replaces.
// tests/fuzz/message_fuzz.cpp holds the two encoders equal.
bool encode_fast(const LeaseRequestMsg& m, std::string& out);
bool encode_fast(const LeaseGrantedMsg& m, std::string& out);
// And read straight from simdjson's index, as device_attached is (decode_fast above): each is
// decoded at every hop of an allocation, the grant three times (record_decode.cpp).
bool decode_fast(std::string_view text, LeaseRequestMsg& out);
bool decode_fast(std::string_view text, LeaseGrantedMsg& out);

// Manager -> DTU (request): extend a lease to length_ms from now (never shortens it). `token`
// (the lease's in-band token, hex) is present when a service takes its lease over again through a
// manager that did not grant it (resume_lease): the DTU renews only when it equals the lease's.
struct LeaseRenewMsg {
  static constexpr MessageType kType = MessageType::lease_renew;
  std::string lease;
  std::uint32_t length_ms = 0;
  std::optional<std::string> token;
  std::optional<Stamp> fence;
  std::optional<std::string> state_token;  // replaces the one kept with the lease (a new owner)
};

// Manager -> DTU (request): end a lease. Answered with ack.
struct LeaseReleaseMsg {
  static constexpr MessageType kType = MessageType::lease_release;
  std::string lease;
  std::optional<Stamp> fence;
};
// Written directly, as lease_request is: the owner -> DTU, once per allocation.
bool encode_fast(const LeaseReleaseMsg& m, std::string& out);

// Manager -> DTU (notify): leave this manager for another one of your list (reason "drain").
// The DTU closes the link and connects elsewhere; its leases and in-band channels stay.
struct DtuMoveMsg {
  static constexpr MessageType kType = MessageType::dtu_move;
  std::string reason;
};

// A lease ended. DTU -> manager (post), manager -> its holder (notify).
struct LeaseEndedMsg {
  static constexpr MessageType kType = MessageType::lease_ended;
  std::string dtu;
  std::string lease;
  std::string device;
  std::uint32_t unit = 0;
  std::string reason;  // released | expired | device_gone | agent_stopping | dtu_lost
};
// Written and read directly, as lease_granted is: DTU -> owner -> holder's manager -> holder,
// once per allocation.
bool encode_fast(const LeaseEndedMsg& m, std::string& out);
bool decode_fast(std::string_view text, LeaseEndedMsg& out);

// --- Service/admin <-> manager --------------------------------------------------------------

struct ClientHelloMsg {
  static constexpr MessageType kType = MessageType::client_hello;
  std::string client;  // program name, for logs ("devmgrctl")
};

struct ClientWelcomeMsg {
  static constexpr MessageType kType = MessageType::client_welcome;
  std::string manager;
  std::string version;
};

// Asks for the device table; `dtu` narrows it to one DTU.
struct ListDevicesMsg {
  static constexpr MessageType kType = MessageType::list_devices;
  std::optional<std::string> dtu;
  // From a client: also every peer's devices (each peer answers for the DTUs it owns). Never
  // set between managers.
  bool group = false;
};

struct DeviceListMsg {
  static constexpr MessageType kType = MessageType::device_list;
  std::vector<DeviceRecord> devices;
};
// Written directly, as device_changed is (encode_fast above).
bool encode_fast(const DeviceListMsg& m, std::string& out);

// Service -> manager (request): lease a unit. Answered with lease_granted (token and in-band
// endpoint included) or an error (refused with the holder, unavailable, not_found, denied by
// policy, …). length_ms 0 asks for the policy's lease length. With wait_ms the manager queues a
// refused request (unit held) and retries it, first come first served, when the unit frees, for
// at most wait_ms. `keep` (administrators only) makes a lease that outlives the connection: it
// ends by expiry or an explicit release.
struct AllocateMsg {
  static constexpr MessageType kType = MessageType::allocate;
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::uint32_t length_ms = 0;
  std::optional<std::uint32_t> wait_ms;
  bool keep = false;
};

// Service -> manager (request): extend a lease this connection holds.
struct RenewMsg {
  static constexpr MessageType kType = MessageType::renew;
  std::string dtu;
  std::string lease;
  std::uint32_t length_ms = 0;
};

// Service -> manager (request): end a lease this connection holds. Answered with ack.
struct ReleaseMsg {
  static constexpr MessageType kType = MessageType::release;
  std::string dtu;
  std::string lease;
};

// A service's allocate and release, written and read directly as the lease messages are: once
// per allocation by the service and its manager, which forwards each to the owner inside
// peer_allocate and peer_release (group_messages.hpp).
bool encode_fast(const AllocateMsg& m, std::string& out);
bool decode_fast(std::string_view text, AllocateMsg& out);
bool encode_fast(const ReleaseMsg& m, std::string& out);
bool decode_fast(std::string_view text, ReleaseMsg& out);

void to_json(nlohmann::json& j, const AckMsg& m);
void from_json(const nlohmann::json& j, AckMsg& m);
void to_json(nlohmann::json& j, const ErrorMsg& m);
void from_json(const nlohmann::json& j, ErrorMsg& m);
void to_json(nlohmann::json& j, const HeartbeatMsg& m);
void from_json(const nlohmann::json& j, HeartbeatMsg& m);
void to_json(nlohmann::json& j, const FilamentOpenMsg& m);
void from_json(const nlohmann::json& j, FilamentOpenMsg& m);
void to_json(nlohmann::json& j, const FilamentCloseMsg& m);
void from_json(const nlohmann::json& j, FilamentCloseMsg& m);
void to_json(nlohmann::json& j, const DtuHelloMsg& m);
void from_json(const nlohmann::json& j, DtuHelloMsg& m);
void to_json(nlohmann::json& j, const DtuWelcomeMsg& m);
void from_json(const nlohmann::json& j, DtuWelcomeMsg& m);
void to_json(nlohmann::json& j, const DeviceSnapshotMsg& m);
void from_json(const nlohmann::json& j, DeviceSnapshotMsg& m);
void to_json(nlohmann::json& j, const DeviceAttachedMsg& m);
void from_json(const nlohmann::json& j, DeviceAttachedMsg& m);
void to_json(nlohmann::json& j, const DeviceDetachedMsg& m);
void from_json(const nlohmann::json& j, DeviceDetachedMsg& m);
void to_json(nlohmann::json& j, const ClientHelloMsg& m);
void from_json(const nlohmann::json& j, ClientHelloMsg& m);
void to_json(nlohmann::json& j, const ClientWelcomeMsg& m);
void from_json(const nlohmann::json& j, ClientWelcomeMsg& m);
void to_json(nlohmann::json& j, const ListDevicesMsg& m);
void from_json(const nlohmann::json& j, ListDevicesMsg& m);
void to_json(nlohmann::json& j, const DeviceListMsg& m);
void from_json(const nlohmann::json& j, DeviceListMsg& m);
void to_json(nlohmann::json& j, const DeviceChangedMsg& m);
void from_json(const nlohmann::json& j, DeviceChangedMsg& m);
void to_json(nlohmann::json& j, const LeaseRequestMsg& m);
void from_json(const nlohmann::json& j, LeaseRequestMsg& m);
void to_json(nlohmann::json& j, const LeaseGrantedMsg& m);
void from_json(const nlohmann::json& j, LeaseGrantedMsg& m);
void to_json(nlohmann::json& j, const LeaseRenewMsg& m);
void from_json(const nlohmann::json& j, LeaseRenewMsg& m);
void to_json(nlohmann::json& j, const LeaseReleaseMsg& m);
void from_json(const nlohmann::json& j, LeaseReleaseMsg& m);
void to_json(nlohmann::json& j, const LeaseEndedMsg& m);
void from_json(const nlohmann::json& j, LeaseEndedMsg& m);
void to_json(nlohmann::json& j, const LeaseReport& m);
void from_json(const nlohmann::json& j, LeaseReport& m);
void to_json(nlohmann::json& j, const DtuMoveMsg& m);
void from_json(const nlohmann::json& j, DtuMoveMsg& m);
void to_json(nlohmann::json& j, const AllocateMsg& m);
void from_json(const nlohmann::json& j, AllocateMsg& m);
void to_json(nlohmann::json& j, const RenewMsg& m);
void from_json(const nlohmann::json& j, RenewMsg& m);
void to_json(nlohmann::json& j, const ReleaseMsg& m);
void from_json(const nlohmann::json& j, ReleaseMsg& m);

// Parses a JSON payload; never throws. Errc::bad_payload names the type and the reason.
Result<nlohmann::json> parse_payload(const Frame& frame);

// Builds a frame carrying `msg` as JSON on `filament`.
template <typename M>
Frame to_frame(const M& msg, std::uint32_t filament = 0) {
  Frame f;
  f.type = M::kType;
  f.filament = filament;
  std::string text;
  if constexpr (requires(const M& m, std::string& out) { encode_fast(m, out); }) {
    if (encode_fast(msg, text)) {
      f.payload.assign(text.begin(), text.end());
      return f;
    }
  }
  // Strings from devices (USB descriptors) may not be valid UTF-8: replace, never throw.
  text = nlohmann::json(msg).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  f.payload.assign(text.begin(), text.end());
  return f;
}

// Reads a message of type M out of a frame; never throws. Errors: Errc::unknown_type when the
// frame carries another type, Errc::bad_payload when the JSON is bad or misses a field.
template <typename M>
Result<M> from_frame(const Frame& frame) {
  if (frame.type != M::kType) {
    return Error(Errc::unknown_type, "expected " + std::string(message_type_name(M::kType)) + ", got " +
                                         std::string(message_type_name(frame.type)));
  }
  if constexpr (requires(M & m, std::string_view text) { decode_fast(text, m); }) {
    if (!frame.is_binary()) {
      M m;
      if (decode_fast(frame.payload_text(), m)) return m;
    }
  }
  auto parsed = parse_payload(frame);
  if (!parsed.ok()) return parsed.error();
  try {
    return parsed.value().template get<M>();
  } catch (const std::exception& e) {
    return Error(Errc::bad_payload, std::string(message_type_name(M::kType)) + ": " + e.what());
  }
}

}  // namespace dtu::common
