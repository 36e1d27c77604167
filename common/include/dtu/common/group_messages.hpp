#pragma once
// Group messages (types 136–142): what managers of one group say to each other on an
// authenticated peer link, after the handshake (peer_messages.hpp). One plain struct per message
// with to_json/from_json beside it. docs/protocol.md documents each, and which client messages the
// peer link reuses with their client bodies (register_finder, finder_*, list_devices, lease_ended).
// Values; not thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/service_messages.hpp"

namespace dtu::common {

// One DTU a manager serves, as its ownership announcement names it. `stamp` orders claims on the
// same DTU from different managers (a newer stamp wins); `devices` is informational.
struct OwnedDtu {
  std::string dtu;
  Stamp stamp;
  std::uint32_t devices = 0;

  friend bool operator==(const OwnedDtu&, const OwnedDtu&) = default;
};

// Owner -> every peer (notify): the DTUs `manager` (in its incarnation) serves. full: the whole
// list, replacing everything known from that manager (sent when a link comes up); otherwise a
// delta: DTUs that became active (`owned`) or were lost (`lost`).
struct PeerOwnershipMsg {
  static constexpr MessageType kType = MessageType::peer_ownership;
  std::string manager;
  std::uint64_t incarnation = 0;
  bool full = false;
  std::vector<OwnedDtu> owned;
  std::vector<std::string> lost;
};

// The service a forwarded lease operation is for, as its own manager (the origin) saw it: the
// kernel's SO_PEERCRED uid/gid/pid, its self-declared client name, and its holder name
// ("<program>[<pid>]@<origin>"). The owner trusts it because the peer link is authenticated.
struct OnBehalf {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint32_t pid = 0;
  std::string client;
  std::string holder;

  friend bool operator==(const OnBehalf&, const OnBehalf&) = default;
};

// Origin -> owner (request): allocate for a service of the origin. Answered with lease_granted
// or an error, as allocate.
struct PeerAllocateMsg {
  static constexpr MessageType kType = MessageType::peer_allocate;
  OnBehalf on_behalf;
  AllocateMsg request;
};

// Written and read directly, as the service's allocate and release inside them are
// (messages.hpp): the owner reads one of each per allocation (record_decode.cpp).
bool encode_fast(const PeerAllocateMsg& m, std::string& out);
bool decode_fast(std::string_view text, PeerAllocateMsg& out);

// Origin -> owner (request): renew. Answered with lease_granted or an error, as renew.
struct PeerRenewMsg {
  static constexpr MessageType kType = MessageType::peer_renew;
  OnBehalf on_behalf;
  RenewMsg request;
};

// Origin -> owner (request): release. Answered with ack or an error, as release.
struct PeerReleaseMsg {
  static constexpr MessageType kType = MessageType::peer_release;
  OnBehalf on_behalf;
  ReleaseMsg request;
};
bool encode_fast(const PeerReleaseMsg& m, std::string& out);
bool decode_fast(std::string_view text, PeerReleaseMsg& out);

// Origin -> owner (request): resume a lease. Answered with lease_granted or an error.
struct PeerResumeMsg {
  static constexpr MessageType kType = MessageType::peer_resume;
  OnBehalf on_behalf;
  ResumeLeaseMsg request;
};

// Manager -> peer (request): its counts. Answered with peer_status_reply.
struct PeerStatusMsg {
  static constexpr MessageType kType = MessageType::peer_status;
};

// Peer -> manager (reply to peer_status): DTUs it serves, their devices, and how many forwarded
// finders it holds for all of its peers together.
struct PeerStatusReplyMsg {
  static constexpr MessageType kType = MessageType::peer_status_reply;
  std::string manager;
  std::uint64_t incarnation = 0;
  std::uint32_t dtus = 0;
  std::uint32_t devices = 0;
  std::uint32_t finders_held_total = 0;
};

void to_json(nlohmann::json& j, const OwnedDtu& m);
void from_json(const nlohmann::json& j, OwnedDtu& m);
void to_json(nlohmann::json& j, const PeerOwnershipMsg& m);
void from_json(const nlohmann::json& j, PeerOwnershipMsg& m);
void to_json(nlohmann::json& j, const OnBehalf& m);
void from_json(const nlohmann::json& j, OnBehalf& m);
void to_json(nlohmann::json& j, const PeerAllocateMsg& m);
void from_json(const nlohmann::json& j, PeerAllocateMsg& m);
void to_json(nlohmann::json& j, const PeerRenewMsg& m);
void from_json(const nlohmann::json& j, PeerRenewMsg& m);
void to_json(nlohmann::json& j, const PeerReleaseMsg& m);
void from_json(const nlohmann::json& j, PeerReleaseMsg& m);
void to_json(nlohmann::json& j, const PeerResumeMsg& m);
void from_json(const nlohmann::json& j, PeerResumeMsg& m);
void to_json(nlohmann::json& j, const PeerStatusMsg& m);
void from_json(const nlohmann::json& j, PeerStatusMsg& m);
void to_json(nlohmann::json& j, const PeerStatusReplyMsg& m);
void from_json(const nlohmann::json& j, PeerStatusReplyMsg& m);

}  // namespace dtu::common
