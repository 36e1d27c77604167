#include "dtu/common/errors.hpp"

#include <array>
#include <utility>

namespace dtu::common {
namespace {

constexpr std::array<std::pair<Errc, const char*>, 20> kNames{{
    {Errc::ok, "ok"},
    {Errc::timeout, "timeout"},
    {Errc::closed, "closed"},
    {Errc::link_lost, "link_lost"},
    {Errc::frame_too_large, "frame_too_large"},
    {Errc::malformed_frame, "malformed_frame"},
    {Errc::bad_version, "bad_version"},
    {Errc::unknown_type, "unknown_type"},
    {Errc::bad_payload, "bad_payload"},
    {Errc::auth_failed, "auth_failed"},
    {Errc::send_queue_full, "send_queue_full"},
    {Errc::not_found, "not_found"},
    {Errc::invalid_argument, "invalid_argument"},
    {Errc::illegal_state, "illegal_state"},
    {Errc::would_block, "would_block"},
    {Errc::refused, "refused"},
    {Errc::config_error, "config_error"},
    {Errc::io_error, "io_error"},
    {Errc::unavailable, "unavailable"},
    {Errc::denied, "denied"},
}};

class DtuCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "dtu"; }
  std::string message(int value) const override {
    switch (static_cast<Errc>(value)) {
      case Errc::ok: return "success";
      case Errc::timeout: return "deadline passed";
      case Errc::closed: return "closed";
      case Errc::link_lost: return "link lost";
      case Errc::frame_too_large: return "frame length above the cap";
      case Errc::malformed_frame: return "malformed frame";
      case Errc::bad_version: return "unsupported protocol version";
      case Errc::unknown_type: return "unknown message type";
      case Errc::bad_payload: return "payload does not match the message type";
      case Errc::auth_failed: return "authentication failed";
      case Errc::send_queue_full: return "send queue full: peer too slow";
      case Errc::not_found: return "not found";
      case Errc::invalid_argument: return "invalid argument";
      case Errc::illegal_state: return "message not legal in this state";
      case Errc::would_block: return "nothing available";
      case Errc::refused: return "refused";
      case Errc::config_error: return "configuration error";
      case Errc::io_error: return "I/O error";
      case Errc::unavailable: return "unavailable";
      case Errc::denied: return "denied";
    }
    return "unknown dtu error " + std::to_string(value);
  }
};

}  // namespace

const std::error_category& dtu_category() noexcept {
  static const DtuCategory category;
  return category;
}

std::string errc_name(Errc e) {
  for (const auto& [code, text] : kNames) {
    if (code == e) return text;
  }
  return "error_" + std::to_string(static_cast<int>(e));
}

Errc errc_from_name(std::string_view name) {
  for (const auto& [code, text] : kNames) {
    if (name == text) return code;
  }
  return Errc::refused;
}

}  // namespace dtu::common
