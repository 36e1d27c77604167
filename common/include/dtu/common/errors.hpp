#pragma once
// dtu::common::Errc — the project's expected failures as a std::error_code category.
// Thread-safe: the category is a stateless singleton.

#include <string>
#include <system_error>

namespace dtu::common {

enum class Errc {
  ok = 0,
  timeout = 1,             // a deadline passed
  closed = 2,              // the filament or link was closed by us or gracefully by the peer
  link_lost = 3,           // the transport failed under a pending operation
  frame_too_large = 4,     // a frame's length is above the cap
  malformed_frame = 5,     // a frame header or payload is not well formed
  bad_version = 6,         // a frame carries a protocol version we do not speak
  unknown_type = 7,        // a frame carries a message type number we do not know
  bad_payload = 8,         // a payload is not the JSON the message type requires
  auth_failed = 9,         // a peer failed authentication
  send_queue_full = 10,    // a peer reads too slowly; its link is dropped
  not_found = 11,          // an id (device, unit, filament, …) is unknown
  invalid_argument = 12,   // a request or a configuration value is invalid
  illegal_state = 13,      // a message is not legal in the session's current state
  would_block = 14,        // a poll (timeout 0) found nothing
  refused = 15,            // the peer refused the operation
  config_error = 16,       // a configuration file or flag is invalid
  io_error = 17,           // a local I/O failure (file, socket)
  unavailable = 18,        // the peer or device is not reachable now; retry later
  denied = 19,             // the policy, a limit or an administrators-only rule forbids it
};

const std::error_category& dtu_category() noexcept;

inline std::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), dtu_category()};
}

// The stable short name of an error ("timeout", "link_lost", …) used on the wire and in logs.
std::string errc_name(Errc e);

// Maps a wire name back to the error; unknown names become Errc::refused.
Errc errc_from_name(std::string_view name);

}  // namespace dtu::common

template <>
struct std::is_error_code_enum<dtu::common::Errc> : std::true_type {};
