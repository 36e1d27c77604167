#pragma once
// MessageType: every message type number of the dtubroker protocol. A number is never reused:
// a retired type stays here as a comment. docs/protocol.md documents each one.
// Ranges: 1–15 link control, 16–63 DTU <-> manager, 64–127 service/admin <-> manager,
// 128–191 manager <-> manager (peer mesh), 192–255 in-band (service <-> DTU).

#include <cstdint>
#include <string_view>

namespace dtu::common {

enum class MessageType : std::uint16_t {
  // Link control.
  ack = 1,             // confirms a post (any filament)
  error = 2,           // a failed request or post, or the reason a link is closed
  heartbeat = 3,       // liveness and clock calibration (filament 0)
  filament_open = 4,   // opens a filament (sent on the new filament's id)
  filament_close = 5,  // closes a filament gracefully
  // DTU <-> manager.
  dtu_hello = 16,        // DTU -> manager: who I am, my boot epoch
  dtu_welcome = 17,      // manager -> DTU: accepted, heartbeat parameters
  device_snapshot = 18,  // DTU -> manager: every device, sent after welcome
  device_attached = 19,  // DTU -> manager: one device appeared or changed
  device_detached = 20,  // DTU -> manager: one device left
  device_changed = 21,   // DTU -> manager: a device's units changed (state, holder, lease)
  lease_request = 22,    // manager -> DTU: grant a unit to a holder for a time
  lease_granted = 23,    // DTU -> manager, manager -> client: the lease (reply)
  lease_renew = 24,      // manager -> DTU: extend a lease
  lease_release = 25,    // manager -> DTU: end a lease
  lease_ended = 26,      // DTU -> manager, manager -> client: a lease ended, and why
  dtu_move = 27,         // manager -> DTU: leave this manager for another of your list (drain)
  // Service/admin <-> manager.
  client_hello = 64,   // client -> manager: client name and protocol version
  client_welcome = 65, // manager -> client: manager id, software version
  list_devices = 66,   // client -> manager: request the device table
  device_list = 67,    // manager -> client: the device table
  allocate = 68,       // client -> manager: lease a unit
  renew = 69,          // client -> manager: extend a lease
  release = 70,        // client -> manager: end a lease
  register_finder = 71,    // client -> manager: be told about the devices a finder matches
  unregister_finder = 72,  // client -> manager: forget a finder
  finder_matched = 73,     // manager -> client: a device (some of its units) matches a finder
  finder_changed = 74,     // manager -> client: a matched device changed (state, holder, units)
  finder_gone = 75,        // manager -> client: a matched device no longer matches, and why
  finder_synced = 76,      // manager -> client: every initial match of a finder was sent
  list_finders = 77,       // client -> manager: request every registered finder
  finder_list = 78,        // manager -> client: the finders and their matches
  list_leases = 79,        // client -> manager: request the leases this manager brokered
  lease_list = 80,         // manager -> client: the leases
  session_attach = 81,     // authentication manager -> manager: session S of user U is at DTU D
  session_detach = 82,     // authentication manager -> manager: session S ended
  list_sessions = 83,      // client -> manager: request the sessions
  session_list = 84,       // manager -> client: the sessions
  get_policy = 85,         // client -> manager: request the policy in force
  policy_info = 86,        // manager -> client: the policy in force and where it came from
  reload_policy = 87,      // admin -> manager: read the policy file again
  resume_lease = 88,       // client -> manager: take a lease over again after a reconnect
  group_status = 89,       // client -> manager: request the state of every group member
  group_info = 90,         // manager -> client: the members, their links and counts
  reload_group = 91,       // admin -> manager: read the group file and keys again
  drain = 92,              // admin -> manager: move every DTU away, refuse new ones
  undrain = 93,            // admin -> manager: take DTUs again
  drain_status = 94,       // manager -> admin: draining or not, DTUs still held (reply)
  group_exec = 95,         // admin -> manager: run a verb on several managers (group exec)
  group_exec_queued = 96,  // manager -> admin: the command's id and nodes (reply)
  group_exec_event = 97,   // manager -> admin: one node's outcome of a group command
  group_exec_done = 98,    // manager -> admin: the group command ended; every node's outcome
  list_dtus = 99,          // client -> manager: request the DTUs it serves (or the group's)
  dtu_list = 100,          // manager -> client: the DTUs (reply)
  // Manager <-> manager (peer mesh). The peer link also carries, with the same bodies:
  // register_finder / unregister_finder (a forwarded finder), finder_matched / changed / gone /
  // synced (its answers), list_devices / device_list and lease_ended (docs/protocol.md §6).
  peer_auth_init = 128,       // dialer -> acceptor: ids and the dialer's nonce
  peer_auth_challenge = 129,  // acceptor -> dialer: the acceptor's nonce and MAC (reply)
  peer_auth_proof = 130,      // dialer -> acceptor: the dialer's MAC, its hello and purpose
  peer_welcome = 131,         // acceptor -> dialer: authenticated; the acceptor's hello (reply)
  peer_ownership = 136,       // owner -> every peer: DTUs it serves (stamped) and DTUs it lost
  peer_allocate = 137,        // origin -> owner: allocate for a service of the origin (uid carried)
  peer_renew = 138,           // origin -> owner: renew a lease for a service of the origin
  peer_release = 139,         // origin -> owner: release a lease for a service of the origin
  peer_resume = 140,          // origin -> owner: resume a lease for a service of the origin
  peer_status = 141,          // manager -> peer: request its counts
  peer_status_reply = 142,    // peer -> manager: DTUs, devices, finders it holds (reply)
  peer_command = 143,         // origin -> node: run a group command's verb
  peer_command_queued = 144,  // node -> origin: queued (reply; an error: refused)
  peer_command_done = 145,    // node -> origin: the command's completion (request, answered ack)
  // 146: reserved for group commands.
  // In-band (service <-> DTU, over the lease's TLS channel).
  inband_hello = 192,     // service -> DTU: first request; names the lease
  inband_welcome = 193,   // DTU -> service: the leased unit, its endpoints, the expiry
  usb_control = 194,      // service -> DTU: a control transfer
  usb_out = 195,          // service -> DTU: bytes to an OUT endpoint (binary)
  usb_in = 196,           // service -> DTU: read from an IN endpoint
  usb_data = 197,         // DTU -> service: bytes read (binary reply)
  usb_done = 198,         // DTU -> service: bytes written (reply)
  get_device_id = 199,    // service -> DTU: the printer's IEEE 1284 device id
  device_id = 200,        // DTU -> service: the device id (reply)
  inband_renew = 201,     // service -> DTU: extend the lease in-band
  inband_renewed = 202,   // DTU -> service: the new expiry (reply)
  channel_closing = 203,  // DTU -> service: the channel ends now, and why
};

// True for every number listed above: the decoder rejects any other.
bool is_known_message_type(std::uint16_t value);

// The snake_case name of a type ("device_snapshot"), or "unknown".
std::string_view message_type_name(MessageType type);

}  // namespace dtu::common
