#pragma once
// Shared by the fuzz targets: FUZZ_REQUIRE, which traps (so libFuzzer records a crash and the
// replay test fails) when a decoder breaks one of its promises, the properties every message
// decoder must keep for any frame (check_own_message, check_every_message), and member_pointers
// for the strict JSON readers (config, policy, finder). Single-threaded, like libFuzzer.

#include <cstddef>
#include <cstdio>
#include <exception>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/errors.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/command_messages.hpp"
#include "dtu/common/group_messages.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/peer_messages.hpp"
#include "dtu/common/service_messages.hpp"

namespace dtu::fuzz {

// A broken decoder contract: say which one, then trap. Not CHECK: CHECK is for the decoders'
// own invariants, this is the fuzzer's verdict on them.
[[noreturn]] inline void violated(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz property violated: %s\n", file, line, what);
  std::fflush(stderr);
  __builtin_trap();
}

#define FUZZ_REQUIRE(cond)                                         \
  do {                                                             \
    if (!(cond)) ::dtu::fuzz::violated(#cond, __FILE__, __LINE__); \
  } while (false)

inline bool has_code(const common::Error& error, common::Errc code) {
  return error.code == common::make_error_code(code);
}

namespace detail {

inline void collect_members(const nlohmann::json& value, const nlohmann::json::json_pointer& at,
                            std::size_t limit, std::vector<nlohmann::json::json_pointer>& out) {
  if (value.is_object()) {
    for (const auto& item : value.items()) {
      if (out.size() == limit) return;
      const nlohmann::json::json_pointer member = at / item.key();
      out.push_back(member);
      collect_members(item.value(), member, limit, out);
    }
  } else if (value.is_array()) {
    for (std::size_t i = 0; i < value.size() && out.size() < limit; ++i) {
      collect_members(value[i], at / i, limit, out);
    }
  }
}

}  // namespace detail

// The object members of `doc` at any depth (inside arrays too), as JSON pointers, parents before
// their children; at most `limit`. The strict readers promise that every member of a document
// they accept is read: setting any one of them to null (which no reader takes) must turn the
// document into an error, or the reader ignored a member it should have refused or read.
inline std::vector<nlohmann::json::json_pointer> member_pointers(const nlohmann::json& doc,
                                                                 std::size_t limit) {
  std::vector<nlohmann::json::json_pointer> out;
  detail::collect_members(doc, nlohmann::json::json_pointer(), limit, out);
  return out;
}

// from_frame<M> on a frame of M's type: never throws; a binary or undecodable payload is
// bad_payload; a message it accepts re-encodes (to_frame) into a frame that decodes to the same
// message and encodes to the same bytes again, so a relayed message never changes or fails on
// the way.
template <typename M>
void check_message(const common::Frame& frame) {
  using common::Errc;
  try {
    const common::Result<M> decoded = common::from_frame<M>(frame);
    if (frame.is_binary()) {
      FUZZ_REQUIRE(!decoded.ok() && has_code(decoded.error(), Errc::bad_payload));
      return;
    }
    if (!decoded.ok()) {
      FUZZ_REQUIRE(has_code(decoded.error(), Errc::bad_payload));
      FUZZ_REQUIRE(!decoded.error().detail.empty());
      return;
    }
    const common::Frame again = common::to_frame(decoded.value(), frame.filament);
    FUZZ_REQUIRE(again.type == frame.type && again.filament == frame.filament && again.flags == 0);
    const common::Result<M> redecoded = common::from_frame<M>(again);
    FUZZ_REQUIRE(redecoded.ok());
    FUZZ_REQUIRE(nlohmann::json(redecoded.value()) == nlohmann::json(decoded.value()));
    FUZZ_REQUIRE(common::to_frame(redecoded.value(), frame.filament).payload == again.payload);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    violated("no exception escapes from_frame/to_frame", __FILE__, __LINE__);
  }
}

// The binary messages (usb_out, usb_data): from_frame never throws; a JSON (non-binary) frame or
// a bad header is bad_payload; an accepted one re-encodes to the same payload bytes.
template <typename M>
void check_binary_message(const common::Frame& frame) {
  using common::Errc;
  try {
    const common::Result<M> decoded = common::from_frame<M>(frame);
    if (!decoded.ok()) {
      FUZZ_REQUIRE(has_code(decoded.error(), Errc::bad_payload));
      FUZZ_REQUIRE(!decoded.error().detail.empty());
      return;
    }
    FUZZ_REQUIRE(frame.is_binary());
    const common::Frame again = common::to_frame(decoded.value(), frame.filament);
    FUZZ_REQUIRE(again.type == frame.type && again.filament == frame.filament && again.is_binary());
    FUZZ_REQUIRE(again.payload == frame.payload);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    violated("no exception escapes from_frame/to_frame", __FILE__, __LINE__);
  }
}

// from_frame<M> on a frame of another type: unknown_type, whatever the payload.
template <typename M>
void check_refuses(const common::Frame& frame) {
  if (frame.type == M::kType) return;
  try {
    const common::Result<M> decoded = common::from_frame<M>(frame);
    FUZZ_REQUIRE(!decoded.ok() && has_code(decoded.error(), common::Errc::unknown_type));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    violated("no exception escapes from_frame", __FILE__, __LINE__);
  }
}

template <typename... Ms>
void check_all_refuse(const common::Frame& frame) {
  (check_refuses<Ms>(frame), ...);
}

// The decoder of frame.type, through check_message. The switch has no default, so a MessageType
// added without a case here fails to compile (-Wswitch with -Werror) instead of going unfuzzed.
// REQUIRES: is_known_message_type(frame.type).
inline void check_own_message(const common::Frame& frame) {
  switch (frame.type) {
    case common::MessageType::ack:
      check_message<common::AckMsg>(frame);
      break;
    case common::MessageType::error:
      check_message<common::ErrorMsg>(frame);
      break;
    case common::MessageType::heartbeat:
      check_message<common::HeartbeatMsg>(frame);
      break;
    case common::MessageType::filament_open:
      check_message<common::FilamentOpenMsg>(frame);
      break;
    case common::MessageType::filament_close:
      check_message<common::FilamentCloseMsg>(frame);
      break;
    case common::MessageType::dtu_hello:
      check_message<common::DtuHelloMsg>(frame);
      break;
    case common::MessageType::dtu_welcome:
      check_message<common::DtuWelcomeMsg>(frame);
      break;
    case common::MessageType::device_snapshot:
      check_message<common::DeviceSnapshotMsg>(frame);
      break;
    case common::MessageType::device_attached:
      check_message<common::DeviceAttachedMsg>(frame);
      break;
    case common::MessageType::device_detached:
      check_message<common::DeviceDetachedMsg>(frame);
      break;
    case common::MessageType::client_hello:
      check_message<common::ClientHelloMsg>(frame);
      break;
    case common::MessageType::client_welcome:
      check_message<common::ClientWelcomeMsg>(frame);
      break;
    case common::MessageType::list_devices:
      check_message<common::ListDevicesMsg>(frame);
      break;
    case common::MessageType::device_list:
      check_message<common::DeviceListMsg>(frame);
      break;
    case common::MessageType::device_changed:
      check_message<common::DeviceChangedMsg>(frame);
      break;
    case common::MessageType::lease_request:
      check_message<common::LeaseRequestMsg>(frame);
      break;
    case common::MessageType::lease_granted:
      check_message<common::LeaseGrantedMsg>(frame);
      break;
    case common::MessageType::lease_renew:
      check_message<common::LeaseRenewMsg>(frame);
      break;
    case common::MessageType::lease_release:
      check_message<common::LeaseReleaseMsg>(frame);
      break;
    case common::MessageType::lease_ended:
      check_message<common::LeaseEndedMsg>(frame);
      break;
    case common::MessageType::dtu_move:
      check_message<common::DtuMoveMsg>(frame);
      break;
    case common::MessageType::allocate:
      check_message<common::AllocateMsg>(frame);
      break;
    case common::MessageType::renew:
      check_message<common::RenewMsg>(frame);
      break;
    case common::MessageType::release:
      check_message<common::ReleaseMsg>(frame);
      break;
    case common::MessageType::register_finder:
      check_message<common::RegisterFinderMsg>(frame);
      break;
    case common::MessageType::unregister_finder:
      check_message<common::UnregisterFinderMsg>(frame);
      break;
    case common::MessageType::finder_matched:
      check_message<common::FinderMatchedMsg>(frame);
      break;
    case common::MessageType::finder_changed:
      check_message<common::FinderChangedMsg>(frame);
      break;
    case common::MessageType::finder_gone:
      check_message<common::FinderGoneMsg>(frame);
      break;
    case common::MessageType::finder_synced:
      check_message<common::FinderSyncedMsg>(frame);
      break;
    case common::MessageType::list_finders:
      check_message<common::ListFindersMsg>(frame);
      break;
    case common::MessageType::finder_list:
      check_message<common::FinderListMsg>(frame);
      break;
    case common::MessageType::list_leases:
      check_message<common::ListLeasesMsg>(frame);
      break;
    case common::MessageType::lease_list:
      check_message<common::LeaseListMsg>(frame);
      break;
    case common::MessageType::session_attach:
      check_message<common::SessionAttachMsg>(frame);
      break;
    case common::MessageType::session_detach:
      check_message<common::SessionDetachMsg>(frame);
      break;
    case common::MessageType::list_sessions:
      check_message<common::ListSessionsMsg>(frame);
      break;
    case common::MessageType::session_list:
      check_message<common::SessionListMsg>(frame);
      break;
    case common::MessageType::get_policy:
      check_message<common::GetPolicyMsg>(frame);
      break;
    case common::MessageType::policy_info:
      check_message<common::PolicyInfoMsg>(frame);
      break;
    case common::MessageType::reload_policy:
      check_message<common::ReloadPolicyMsg>(frame);
      break;
    case common::MessageType::resume_lease:
      check_message<common::ResumeLeaseMsg>(frame);
      break;
    // group (client range): lead
    case common::MessageType::group_status:
      check_message<common::GroupStatusMsg>(frame);
      break;
    case common::MessageType::group_info:
      check_message<common::GroupInfoMsg>(frame);
      break;
    case common::MessageType::reload_group:
      check_message<common::ReloadGroupMsg>(frame);
      break;
    case common::MessageType::drain:
      check_message<common::DrainMsg>(frame);
      break;
    case common::MessageType::undrain:
      check_message<common::UndrainMsg>(frame);
      break;
    case common::MessageType::drain_status:
      check_message<common::DrainStatusMsg>(frame);
      break;
    case common::MessageType::list_dtus:
      check_message<common::ListDtusMsg>(frame);
      break;
    case common::MessageType::dtu_list:
      check_message<common::DtuListMsg>(frame);
      break;
    case common::MessageType::peer_auth_init:
      check_message<common::PeerAuthInitMsg>(frame);
      break;
    case common::MessageType::peer_auth_challenge:
      check_message<common::PeerAuthChallengeMsg>(frame);
      break;
    case common::MessageType::peer_auth_proof:
      check_message<common::PeerAuthProofMsg>(frame);
      break;
    case common::MessageType::peer_welcome:
      check_message<common::PeerWelcomeMsg>(frame);
      break;
    // peer group messages: helper "group"
    case common::MessageType::peer_ownership:
      check_message<common::PeerOwnershipMsg>(frame);
      break;
    case common::MessageType::peer_allocate:
      check_message<common::PeerAllocateMsg>(frame);
      break;
    case common::MessageType::peer_renew:
      check_message<common::PeerRenewMsg>(frame);
      break;
    case common::MessageType::peer_release:
      check_message<common::PeerReleaseMsg>(frame);
      break;
    case common::MessageType::peer_resume:
      check_message<common::PeerResumeMsg>(frame);
      break;
    case common::MessageType::peer_status:
      check_message<common::PeerStatusMsg>(frame);
      break;
    case common::MessageType::peer_status_reply:
      check_message<common::PeerStatusReplyMsg>(frame);
      break;
    // group commands: helper H1
    case common::MessageType::group_exec:
      check_message<common::GroupExecMsg>(frame);
      break;
    case common::MessageType::group_exec_queued:
      check_message<common::GroupExecQueuedMsg>(frame);
      break;
    case common::MessageType::group_exec_event:
      check_message<common::GroupExecEventMsg>(frame);
      break;
    case common::MessageType::group_exec_done:
      check_message<common::GroupExecDoneMsg>(frame);
      break;
    case common::MessageType::peer_command:
      check_message<common::PeerCommandMsg>(frame);
      break;
    case common::MessageType::peer_command_queued:
      check_message<common::PeerCommandQueuedMsg>(frame);
      break;
    case common::MessageType::peer_command_done:
      check_message<common::PeerCommandDoneMsg>(frame);
      break;
    case common::MessageType::inband_hello:
      check_message<common::InbandHelloMsg>(frame);
      break;
    case common::MessageType::inband_welcome:
      check_message<common::InbandWelcomeMsg>(frame);
      break;
    case common::MessageType::usb_control:
      check_message<common::UsbControlMsg>(frame);
      break;
    case common::MessageType::usb_in:
      check_message<common::UsbInMsg>(frame);
      break;
    case common::MessageType::usb_done:
      check_message<common::UsbDoneMsg>(frame);
      break;
    case common::MessageType::get_device_id:
      check_message<common::GetDeviceIdMsg>(frame);
      break;
    case common::MessageType::device_id:
      check_message<common::DeviceIdMsg>(frame);
      break;
    case common::MessageType::inband_renew:
      check_message<common::InbandRenewMsg>(frame);
      break;
    case common::MessageType::inband_renewed:
      check_message<common::InbandRenewedMsg>(frame);
      break;
    case common::MessageType::channel_closing:
      check_message<common::ChannelClosingMsg>(frame);
      break;
    case common::MessageType::usb_out:
      check_binary_message<common::UsbOutMsg>(frame);
      break;
    case common::MessageType::usb_data:
      check_binary_message<common::UsbDataMsg>(frame);
      break;
  }
}

// Every message type in messages.hpp against one frame: the decoder of frame.type decodes it,
// every other decoder refuses it. REQUIRES: is_known_message_type(frame.type).
inline void check_every_message(const common::Frame& frame) {
  check_own_message(frame);
  check_all_refuse<common::AckMsg, common::ErrorMsg, common::HeartbeatMsg, common::FilamentOpenMsg,
                   common::FilamentCloseMsg, common::DtuHelloMsg, common::DtuWelcomeMsg,
                   common::DeviceSnapshotMsg, common::DeviceAttachedMsg, common::DeviceDetachedMsg,
                   common::ClientHelloMsg, common::ClientWelcomeMsg, common::ListDevicesMsg,
                   common::DeviceListMsg, common::DeviceChangedMsg, common::LeaseRequestMsg, common::LeaseGrantedMsg, common::LeaseRenewMsg, common::LeaseReleaseMsg, common::LeaseEndedMsg, common::AllocateMsg, common::RenewMsg, common::ReleaseMsg, common::InbandHelloMsg, common::InbandWelcomeMsg, common::UsbControlMsg, common::UsbInMsg, common::UsbDoneMsg, common::GetDeviceIdMsg, common::DeviceIdMsg, common::InbandRenewMsg, common::InbandRenewedMsg, common::ChannelClosingMsg, common::UsbOutMsg, common::UsbDataMsg>(frame);
  check_all_refuse<common::RegisterFinderMsg, common::UnregisterFinderMsg, common::FinderMatchedMsg,
                   common::FinderChangedMsg, common::FinderGoneMsg, common::FinderSyncedMsg,
                   common::ListFindersMsg, common::FinderListMsg, common::ListLeasesMsg, common::LeaseListMsg,
                   common::SessionAttachMsg, common::SessionDetachMsg, common::ListSessionsMsg,
                   common::SessionListMsg, common::GetPolicyMsg, common::PolicyInfoMsg, common::ReloadPolicyMsg,
                   common::ResumeLeaseMsg, common::GroupStatusMsg, common::GroupInfoMsg,
                   common::ReloadGroupMsg>(frame);
  check_all_refuse<common::PeerAuthInitMsg, common::PeerAuthChallengeMsg, common::PeerAuthProofMsg,
                   common::PeerWelcomeMsg>(frame);
  check_all_refuse<common::PeerOwnershipMsg, common::PeerAllocateMsg, common::PeerRenewMsg, common::PeerReleaseMsg,
                   common::PeerResumeMsg, common::PeerStatusMsg, common::PeerStatusReplyMsg>(frame);
  check_all_refuse<common::ListDtusMsg, common::DtuListMsg>(frame);
  check_all_refuse<common::GroupExecMsg, common::GroupExecQueuedMsg, common::GroupExecEventMsg,
                   common::GroupExecDoneMsg, common::PeerCommandMsg, common::PeerCommandQueuedMsg,
                   common::PeerCommandDoneMsg>(frame);
}

}  // namespace dtu::fuzz
