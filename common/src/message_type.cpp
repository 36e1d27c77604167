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
  }
  return "unknown";
}

bool is_known_message_type(std::uint16_t value) {
  return message_type_name(static_cast<MessageType>(value)) != "unknown";
}

}  // namespace dtu::common
