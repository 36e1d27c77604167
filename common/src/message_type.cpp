#include "dtu/common/message_type.hpp"

namespace dtu::common {

std::string_view message_type_name(MessageType type) {
  switch (type) {
    case MessageType::ack: return "ack";
    case MessageType::error: return "error";
    case MessageType::heartbeat: return "heartbeat";
    case MessageType::filament_open: return "filament_open";
    case MessageType::filament_close: return "filament_close";
    case MessageType::dtu_hello: return "dtu_hello";
    case MessageType::dtu_welcome: return "dtu_welcome";
    case MessageType::device_snapshot: return "device_snapshot";
    case MessageType::device_attached: return "device_attached";
    case MessageType::device_detached: return "device_detached";
    case MessageType::client_hello: return "client_hello";
    case MessageType::client_welcome: return "client_welcome";
    case MessageType::list_devices: return "list_devices";
    case MessageType::device_list: return "device_list";
    case MessageType::device_changed: return "device_changed";
    case MessageType::lease_request: return "lease_request";
    case MessageType::lease_granted: return "lease_granted";
    case MessageType::lease_renew: return "lease_renew";
    case MessageType::lease_release: return "lease_release";
    case MessageType::lease_ended: return "lease_ended";
    case MessageType::dtu_move: return "dtu_move";
    case MessageType::allocate: return "allocate";
    case MessageType::renew: return "renew";
    case MessageType::release: return "release";
    case MessageType::register_finder: return "register_finder";
    case MessageType::unregister_finder: return "unregister_finder";
    case MessageType::finder_matched: return "finder_matched";
    case MessageType::finder_changed: return "finder_changed";
    case MessageType::finder_gone: return "finder_gone";
    case MessageType::finder_synced: return "finder_synced";
    case MessageType::list_finders: return "list_finders";
    case MessageType::finder_list: return "finder_list";
    case MessageType::list_leases: return "list_leases";
    case MessageType::lease_list: return "lease_list";
    case MessageType::session_attach: return "session_attach";
    case MessageType::session_detach: return "session_detach";
    case MessageType::list_sessions: return "list_sessions";
    case MessageType::session_list: return "session_list";
    case MessageType::get_policy: return "get_policy";
    case MessageType::policy_info: return "policy_info";
    case MessageType::reload_policy: return "reload_policy";
    case MessageType::resume_lease: return "resume_lease";
    case MessageType::group_status: return "group_status";
    case MessageType::group_info: return "group_info";
    case MessageType::reload_group: return "reload_group";
    case MessageType::drain: return "drain";
    case MessageType::undrain: return "undrain";
    case MessageType::drain_status: return "drain_status";
    case MessageType::group_exec: return "group_exec";
    case MessageType::group_exec_queued: return "group_exec_queued";
    case MessageType::group_exec_event: return "group_exec_event";
    case MessageType::group_exec_done: return "group_exec_done";
    case MessageType::list_dtus: return "list_dtus";
    case MessageType::dtu_list: return "dtu_list";
    case MessageType::peer_auth_init: return "peer_auth_init";
    case MessageType::peer_auth_challenge: return "peer_auth_challenge";
    case MessageType::peer_auth_proof: return "peer_auth_proof";
    case MessageType::peer_welcome: return "peer_welcome";
    case MessageType::peer_ownership: return "peer_ownership";
    case MessageType::peer_allocate: return "peer_allocate";
    case MessageType::peer_renew: return "peer_renew";
    case MessageType::peer_release: return "peer_release";
    case MessageType::peer_resume: return "peer_resume";
    case MessageType::peer_status: return "peer_status";
    case MessageType::peer_status_reply: return "peer_status_reply";
    case MessageType::peer_command: return "peer_command";
    case MessageType::peer_command_queued: return "peer_command_queued";
    case MessageType::peer_command_done: return "peer_command_done";
    case MessageType::inband_hello: return "inband_hello";
    case MessageType::inband_welcome: return "inband_welcome";
    case MessageType::usb_control: return "usb_control";
    case MessageType::usb_out: return "usb_out";
    case MessageType::usb_in: return "usb_in";
    case MessageType::usb_data: return "usb_data";
    case MessageType::usb_done: return "usb_done";
    case MessageType::get_device_id: return "get_device_id";
    case MessageType::device_id: return "device_id";
    case MessageType::inband_renew: return "inband_renew";
    case MessageType::inband_renewed: return "inband_renewed";
    case MessageType::channel_closing: return "channel_closing";
  }
  return "unknown";
}

bool is_known_message_type(std::uint16_t value) {
  return message_type_name(static_cast<MessageType>(value)) != "unknown";
}

}  // namespace dtu::common
