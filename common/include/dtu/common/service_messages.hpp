#pragma once
// Service API messages (types 71–94, 99–100): finders and their events, the listings devmgrctl shows,
// sessions (hot-desking), the policy, and lease resumption. One plain struct per message with
// to_json/from_json beside it, like messages.hpp (which holds allocate / renew / release).
// docs/protocol.md §13 documents each. Values; not thread-safe.
//
// Every client message is a request on filament 0. The manager's events (finder_matched,
// finder_changed, finder_gone, finder_synced, lease_ended) are notifies on filament 0.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/finder.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"

namespace dtu::common {

// Client -> manager (request): tell me about the units `finder` matches. `finder_id` is the
// client's choice, unique on its connection (a reconnecting client registers the same ids
// again). Answered with ack, or invalid_argument naming the finder field; then the current
// matches arrive as finder_matched, then one finder_synced.
struct RegisterFinderMsg {
  static constexpr MessageType kType = MessageType::register_finder;
  std::uint64_t finder_id = 0;
  Finder finder;
};

// Client -> manager (request): forget a finder. Answered with ack (not_found when unknown).
struct UnregisterFinderMsg {
  static constexpr MessageType kType = MessageType::unregister_finder;
  std::uint64_t finder_id = 0;
};

// Manager -> client (notify): `device` now matches the finder; `units` are the unit numbers it
// matches (the record carries every unit, with state, holder and lease).
struct FinderMatchedMsg {
  static constexpr MessageType kType = MessageType::finder_matched;
  std::uint64_t finder_id = 0;
  DeviceRecord device;
  std::vector<std::uint32_t> units;
};

// Manager -> client (notify): a device that matched still matches but changed (a unit's state,
// holder or lease, or which units match).
struct FinderChangedMsg {
  static constexpr MessageType kType = MessageType::finder_changed;
  std::uint64_t finder_id = 0;
  DeviceRecord device;
  std::vector<std::uint32_t> units;
};

// Read straight from simdjson's index, as device_attached is (decode_fast in messages.hpp).
bool decode_fast(std::string_view text, FinderMatchedMsg& out);
bool decode_fast(std::string_view text, FinderChangedMsg& out);

// A device record encoded to JSON once, for the finder_matched / finder_changed frames of every
// finder the same device event reaches (encoding the record is most of an event's cost at scale,
// docs/performance.md). Decodes exactly like the frame to_frame builds, and is byte for byte the same.
std::string encode_device(const DeviceRecord& record);
// finder_matched or finder_changed (`type`) for `finder_id`, with `device_json` from encode_device.
// REQUIRES: type is finder_matched or finder_changed.
Frame finder_event_frame(MessageType type, std::uint64_t finder_id, std::string_view device_json,
                         const std::vector<std::uint32_t>& units);

// The last device record a manager encoded for finder events, shared: the finders one device
// event reaches come one after another, and each reuses the record and its JSON.
class LastEncodedDevice {
 public:
  // Makes `record` the current one; encodes it unless it equals the current one.
  void use(const DeviceRecord& record);
  const std::shared_ptr<const DeviceRecord>& record() const { return record_; }
  const std::string& json() const { return json_; }

 private:
  std::shared_ptr<const DeviceRecord> record_;
  std::string json_;
};

// Manager -> client (notify): a device no longer matches. reason: detached (unplugged),
// dtu_lost (its DTU's link ended), session_moved (a session-scoped finder's session left its
// DTU), no_longer_matches (the device changed), unregistered is never sent.
struct FinderGoneMsg {
  static constexpr MessageType kType = MessageType::finder_gone;
  std::uint64_t finder_id = 0;
  std::string dtu;
  std::string device;
  std::string reason;
};

// Manager -> client (notify): every initial match of the finder has been sent.
struct FinderSyncedMsg {
  static constexpr MessageType kType = MessageType::finder_synced;
  std::uint64_t finder_id = 0;
};

// One match, as listings show it.
struct MatchRef {
  std::string dtu;
  std::string device;
  std::vector<std::uint32_t> units;
  std::string owner;      // the manager that owns the DTU
  bool orphaned = false;  // the owner is dead; gone at the end of the grace window

  friend bool operator==(const MatchRef&, const MatchRef&) = default;
};

// Puts matches in (dtu, device) order, the order listings show them in.
void sort_matches(std::vector<MatchRef>& matches);

// One registered finder, as devmgrctl finders shows it.
struct FinderInfo {
  std::string client;  // the client's program name (from its hello)
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  std::uint64_t finder_id = 0;
  Finder finder;
  std::vector<MatchRef> matches;
};

struct ListFindersMsg {
  static constexpr MessageType kType = MessageType::list_finders;
};

struct FinderListMsg {
  static constexpr MessageType kType = MessageType::finder_list;
  std::vector<FinderInfo> finders;
};

// One lease this manager brokered, as devmgrctl leases shows it.
struct LeaseInfo {
  std::string lease;
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::string holder;
  std::uint32_t uid = 0;
  std::uint32_t expires_in_ms = 0;  // as the manager last heard from the DTU
  bool keep = false;                // outlives its client's connection
};

struct ListLeasesMsg {
  static constexpr MessageType kType = MessageType::list_leases;
};

struct LeaseListMsg {
  static constexpr MessageType kType = MessageType::lease_list;
  std::vector<LeaseInfo> leases;
};

// Admin -> manager (request): session `session` of `user` is now at DTU `dtu` (a move when it
// was at another). Answered with ack. Administrators only (root or the manager's own uid).
struct SessionAttachMsg {
  static constexpr MessageType kType = MessageType::session_attach;
  std::string session;
  std::string user;
  std::string dtu;
};

// Admin -> manager (request): the session ended or left its DTU. Answered with ack (not_found
// when unknown).
struct SessionDetachMsg {
  static constexpr MessageType kType = MessageType::session_detach;
  std::string session;
};

struct SessionInfo {
  std::string session;
  std::string user;
  std::string dtu;
  std::uint32_t attached_ms_ago = 0;

  friend bool operator==(const SessionInfo&, const SessionInfo&) = default;
};

struct ListSessionsMsg {
  static constexpr MessageType kType = MessageType::list_sessions;
};

struct SessionListMsg {
  static constexpr MessageType kType = MessageType::session_list;
  std::vector<SessionInfo> sessions;
};

struct GetPolicyMsg {
  static constexpr MessageType kType = MessageType::get_policy;
};

// The policy in force: `source` is its file (or "built-in"), `policy` its rules as JSON.
struct PolicyInfoMsg {
  static constexpr MessageType kType = MessageType::policy_info;
  std::string source;
  nlohmann::json policy;
};

// Admin -> manager (request): read the policy file again. Answered with policy_info, or
// config_error naming the file, the line and the reason (the old policy stays in force).
struct ReloadPolicyMsg {
  static constexpr MessageType kType = MessageType::reload_policy;
};

// Client -> manager (request): take over a lease this client held before its connection (or
// the manager) restarted. The token proves it: the DTU renews the lease only when the token is
// the lease's. Answered with lease_granted (without the token), or not_found / refused.
struct ResumeLeaseMsg {
  static constexpr MessageType kType = MessageType::resume_lease;
  std::string dtu;
  std::string lease;
  std::string token;  // 64 hex digits
  std::uint32_t length_ms = 0;
  std::optional<std::string> state_token;  // the lease's signed context, as lease_granted gave it
};

struct GroupStatusMsg {
  static constexpr MessageType kType = MessageType::group_status;
};

// One member of the group as the answering manager sees it.
struct GroupMemberInfo {
  std::string id;
  std::string address;              // its mesh address, host:port
  bool self = false;                // the answering manager
  std::string state;                // "self", "up", "connecting", "down" (dead or not reached yet)
  std::uint64_t incarnation = 0;    // of the current (or last) link; 0 when never linked
  std::optional<double> rtt_ms;     // heartbeat round trip
  std::optional<double> offset_ms;  // its clock minus ours
  std::optional<std::uint64_t> last_heard_ms_ago;
  std::optional<std::uint32_t> dtus;     // DTUs it owns (ownership announcements)
  std::optional<std::uint32_t> devices;  // devices on them (asked when the status was requested)
  std::uint32_t finders_held = 0;   // finders it forwarded that the answering manager holds
  std::uint32_t finders_sent = 0;   // distinct finders the answering manager forwarded to it
  std::string last_error;           // why the link last failed or closed

  friend bool operator==(const GroupMemberInfo&, const GroupMemberInfo&) = default;
};

struct GroupInfoMsg {
  static constexpr MessageType kType = MessageType::group_info;
  std::string manager;
  std::uint64_t incarnation = 0;
  std::vector<GroupMemberInfo> members;  // self first, then the peers by id
  bool draining = false;
  // The universal clock's correction to this manager's wall clock (median of the peers' offsets).
  std::optional<double> universal_offset_ms;
};

struct ReloadGroupMsg {
  static constexpr MessageType kType = MessageType::reload_group;
};

// Admin -> manager (request): tell every DTU to move to another manager and refuse new ones.
// Answered with drain_status once the manager holds no DTU, or Errc::timeout (naming how many
// it still holds) after wait_ms (default 30 s). The manager stays draining either way.
struct DrainMsg {
  static constexpr MessageType kType = MessageType::drain;
  std::optional<std::uint32_t> wait_ms;
};

// Admin -> manager (request): take DTUs again. Answered with drain_status.
struct UndrainMsg {
  static constexpr MessageType kType = MessageType::undrain;
};

struct DrainStatusMsg {
  static constexpr MessageType kType = MessageType::drain_status;
  bool draining = false;
  std::uint32_t dtus = 0;  // DTUs connected to this manager now
};

// Client -> manager (request): the DTUs this manager serves, or with `group` also those every
// other member serves (from the group's ownership table; their devices and units as each member
// answers `list_devices`). Answered with dtu_list.
struct ListDtusMsg {
  static constexpr MessageType kType = MessageType::list_dtus;
  bool group = false;
};

// One DTU as the answering manager knows it. Fields only the serving manager knows (address,
// agent_version, connected_ms_ago) are absent for a DTU another member serves.
struct DtuInfo {
  std::string dtu;
  std::string owner;                           // the manager that serves it
  std::string state;                           // "active", "moving" (told to leave: drain), "remote"
  std::optional<std::string> address;          // the DTU's connection, host:port
  std::optional<std::string> agent_version;    // as its hello said
  std::optional<std::int64_t> boot_epoch;      // universal µs; absent before its first snapshot
  std::optional<std::uint64_t> connected_ms_ago;
  std::uint32_t devices = 0;
  std::uint32_t units_free = 0;
  std::uint32_t units_allocated = 0;
  std::uint32_t units_unavailable = 0;

  friend bool operator==(const DtuInfo&, const DtuInfo&) = default;
};

struct DtuListMsg {
  static constexpr MessageType kType = MessageType::dtu_list;
  std::vector<DtuInfo> dtus;  // sorted by DTU id
};

void to_json(nlohmann::json& j, const RegisterFinderMsg& m);
void from_json(const nlohmann::json& j, RegisterFinderMsg& m);
void to_json(nlohmann::json& j, const UnregisterFinderMsg& m);
void from_json(const nlohmann::json& j, UnregisterFinderMsg& m);
void to_json(nlohmann::json& j, const FinderMatchedMsg& m);
void from_json(const nlohmann::json& j, FinderMatchedMsg& m);
void to_json(nlohmann::json& j, const FinderChangedMsg& m);
void from_json(const nlohmann::json& j, FinderChangedMsg& m);
void to_json(nlohmann::json& j, const FinderGoneMsg& m);
void from_json(const nlohmann::json& j, FinderGoneMsg& m);
void to_json(nlohmann::json& j, const FinderSyncedMsg& m);
void from_json(const nlohmann::json& j, FinderSyncedMsg& m);
void to_json(nlohmann::json& j, const MatchRef& m);
void from_json(const nlohmann::json& j, MatchRef& m);
void to_json(nlohmann::json& j, const FinderInfo& m);
void from_json(const nlohmann::json& j, FinderInfo& m);
void to_json(nlohmann::json& j, const ListFindersMsg& m);
void from_json(const nlohmann::json& j, ListFindersMsg& m);
void to_json(nlohmann::json& j, const FinderListMsg& m);
void from_json(const nlohmann::json& j, FinderListMsg& m);
void to_json(nlohmann::json& j, const LeaseInfo& m);
void from_json(const nlohmann::json& j, LeaseInfo& m);
void to_json(nlohmann::json& j, const ListLeasesMsg& m);
void from_json(const nlohmann::json& j, ListLeasesMsg& m);
void to_json(nlohmann::json& j, const LeaseListMsg& m);
void from_json(const nlohmann::json& j, LeaseListMsg& m);
void to_json(nlohmann::json& j, const SessionAttachMsg& m);
void from_json(const nlohmann::json& j, SessionAttachMsg& m);
void to_json(nlohmann::json& j, const SessionDetachMsg& m);
void from_json(const nlohmann::json& j, SessionDetachMsg& m);
void to_json(nlohmann::json& j, const SessionInfo& m);
void from_json(const nlohmann::json& j, SessionInfo& m);
void to_json(nlohmann::json& j, const ListSessionsMsg& m);
void from_json(const nlohmann::json& j, ListSessionsMsg& m);
void to_json(nlohmann::json& j, const SessionListMsg& m);
void from_json(const nlohmann::json& j, SessionListMsg& m);
void to_json(nlohmann::json& j, const GetPolicyMsg& m);
void from_json(const nlohmann::json& j, GetPolicyMsg& m);
void to_json(nlohmann::json& j, const PolicyInfoMsg& m);
void from_json(const nlohmann::json& j, PolicyInfoMsg& m);
void to_json(nlohmann::json& j, const ReloadPolicyMsg& m);
void from_json(const nlohmann::json& j, ReloadPolicyMsg& m);
void to_json(nlohmann::json& j, const ResumeLeaseMsg& m);
void from_json(const nlohmann::json& j, ResumeLeaseMsg& m);
void to_json(nlohmann::json& j, const GroupStatusMsg& m);
void from_json(const nlohmann::json& j, GroupStatusMsg& m);
void to_json(nlohmann::json& j, const GroupMemberInfo& m);
void from_json(const nlohmann::json& j, GroupMemberInfo& m);
void to_json(nlohmann::json& j, const GroupInfoMsg& m);
void from_json(const nlohmann::json& j, GroupInfoMsg& m);
void to_json(nlohmann::json& j, const ReloadGroupMsg& m);
void from_json(const nlohmann::json& j, ReloadGroupMsg& m);
void to_json(nlohmann::json& j, const DrainMsg& m);
void from_json(const nlohmann::json& j, DrainMsg& m);
void to_json(nlohmann::json& j, const UndrainMsg& m);
void from_json(const nlohmann::json& j, UndrainMsg& m);
void to_json(nlohmann::json& j, const DrainStatusMsg& m);
void from_json(const nlohmann::json& j, DrainStatusMsg& m);
void to_json(nlohmann::json& j, const ListDtusMsg& m);
void from_json(const nlohmann::json& j, ListDtusMsg& m);
void to_json(nlohmann::json& j, const DtuInfo& m);
void from_json(const nlohmann::json& j, DtuInfo& m);
void to_json(nlohmann::json& j, const DtuListMsg& m);
void from_json(const nlohmann::json& j, DtuListMsg& m);

}  // namespace dtu::common
