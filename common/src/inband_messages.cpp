#include "dtu/common/inband_messages.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "dtu/common/json_fields.hpp"

namespace dtu::common {

using nlohmann::json;

namespace {

void require_object(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("payload must be a JSON object");
}

// An array of integers each within T's range; names the field and the index on failure.
template <typename T>
std::vector<T> integer_array(const json& j, const char* key) {
  const json& value = required_value(j, key);
  if (!value.is_array()) throw std::invalid_argument(std::string("field '") + key + "': expected an array");
  std::vector<T> out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    out.push_back(to_integer<T>(value[i], where.c_str()));
  }
  return out;
}

void put_setup(json& j, const UsbSetup& s) {
  j["request_type"] = s.request_type;
  j["request"] = s.request;
  j["value"] = s.value;
  j["index"] = s.index;
  j["length"] = s.length;
}

UsbSetup get_setup(const json& j) {
  UsbSetup s;
  s.request_type = field<std::uint8_t>(j, "request_type");
  s.request = field<std::uint8_t>(j, "request");
  s.value = field<std::uint16_t>(j, "value");
  s.index = field<std::uint16_t>(j, "index");
  s.length = field<std::uint16_t>(j, "length");
  return s;
}

std::int64_t non_negative_ms(const json& j, const char* key) {
  const auto v = field<std::int64_t>(j, key);
  if (v < 0) throw std::invalid_argument(std::string("field '") + key + "': must not be negative");
  return v;
}

void put_u32_be(std::uint8_t* out, std::uint32_t v) {
  out[0] = static_cast<std::uint8_t>(v >> 24);
  out[1] = static_cast<std::uint8_t>(v >> 16);
  out[2] = static_cast<std::uint8_t>(v >> 8);
  out[3] = static_cast<std::uint8_t>(v);
}

std::uint32_t get_u32_be(const std::uint8_t* in) {
  return (std::uint32_t{in[0]} << 24) | (std::uint32_t{in[1]} << 16) | (std::uint32_t{in[2]} << 8) |
         std::uint32_t{in[3]};
}

Error wrong_type(MessageType expected, const Frame& frame) {
  return Error(Errc::unknown_type, "expected " + std::string(message_type_name(expected)) + ", got " +
                                       std::string(message_type_name(frame.type)));
}

}  // namespace

const char* usb_transfer_type_name(std::uint8_t attributes) {
  switch (attributes & 0x03) {
    case 0:
      return "control";
    case 1:
      return "isochronous";
    case 2:
      return "bulk";
    default:
      return "interrupt";
  }
}

void to_json(json& j, const InbandHelloMsg& m) {
  j = json{{"lease", m.lease}};
}
void from_json(const json& j, InbandHelloMsg& m) {
  m.lease = field<std::string>(j, "lease");
  if (m.lease.empty()) throw std::invalid_argument("field 'lease': must not be empty");
}

void to_json(json& j, const InbandEndpoint& m) {
  j = json{{"address", m.address}, {"type", m.type}, {"max_packet_size", m.max_packet_size}};
}
void from_json(const json& j, InbandEndpoint& m) {
  require_object(j);
  m.address = field<std::uint8_t>(j, "address");
  m.type = field<std::string>(j, "type");
  if (m.type != "bulk" && m.type != "interrupt" && m.type != "isochronous" && m.type != "control") {
    throw std::invalid_argument("field 'type': '" + m.type +
                                "' is not bulk, interrupt, isochronous or control");
  }
  m.max_packet_size = field<std::uint16_t>(j, "max_packet_size");
}

void to_json(json& j, const InbandWelcomeMsg& m) {
  j = json{{"lease", m.lease},
           {"dtu", m.dtu},
           {"device", m.device},
           {"unit", m.unit},
           {"interfaces", m.interfaces},
           {"endpoints", m.endpoints},
           {"expires_in_ms", m.expires_in_ms}};
  put_optional(j, "function", m.function);
}
void from_json(const json& j, InbandWelcomeMsg& m) {
  m.lease = field<std::string>(j, "lease");
  m.dtu = field<std::string>(j, "dtu");
  m.device = field<std::string>(j, "device");
  m.unit = field<std::uint32_t>(j, "unit");
  m.function = optional_field<std::string>(j, "function");
  m.interfaces = integer_array<std::uint8_t>(j, "interfaces");
  const json& endpoints = required_value(j, "endpoints");
  if (!endpoints.is_array()) throw std::invalid_argument("field 'endpoints': expected an array");
  m.endpoints.clear();
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    try {
      m.endpoints.push_back(endpoints[i].get<InbandEndpoint>());
    } catch (const std::exception& e) {
      throw std::invalid_argument("endpoints[" + std::to_string(i) + "]: " + e.what());
    }
  }
  m.expires_in_ms = non_negative_ms(j, "expires_in_ms");
}

void to_json(json& j, const UsbControlMsg& m) {
  j = json::object();
  put_setup(j, m.setup);
  j["data"] = to_hex(m.data);
  j["timeout_ms"] = m.timeout_ms;
}
void from_json(const json& j, UsbControlMsg& m) {
  m.setup = get_setup(j);
  const auto hex = optional_field<std::string>(j, "data");
  m.data.clear();
  if (hex) {
    auto bytes = from_hex(*hex);
    if (!bytes.ok()) throw std::invalid_argument("field 'data': " + bytes.error().detail);
    m.data = std::move(bytes.value());
  }
  if (m.setup.is_in() && !m.data.empty()) {
    throw std::invalid_argument("field 'data': must be empty for an IN control transfer");
  }
  if (!m.setup.is_in() && m.data.size() != m.setup.length) {
    throw std::invalid_argument("field 'data': " + std::to_string(m.data.size()) +
                                " bytes for an OUT control transfer whose length is " +
                                std::to_string(m.setup.length));
  }
  m.timeout_ms = field<std::uint32_t>(j, "timeout_ms");
}

void to_json(json& j, const UsbInMsg& m) {
  j = json{{"endpoint", m.endpoint}, {"length", m.length}, {"timeout_ms", m.timeout_ms}};
}
void from_json(const json& j, UsbInMsg& m) {
  m.endpoint = field<std::uint8_t>(j, "endpoint");
  m.length = field<std::uint32_t>(j, "length");
  m.timeout_ms = field<std::uint32_t>(j, "timeout_ms");
}

void to_json(json& j, const UsbDoneMsg& m) {
  j = json{{"length", m.length}};
}
void from_json(const json& j, UsbDoneMsg& m) {
  m.length = field<std::uint64_t>(j, "length");
}

void to_json(json& j, const GetDeviceIdMsg&) {
  j = json::object();
}
void from_json(const json& j, GetDeviceIdMsg&) {
  require_object(j);
}

void to_json(json& j, const DeviceIdMsg& m) {
  j = json::object();
  put_optional(j, "device_id", m.device_id);
}
void from_json(const json& j, DeviceIdMsg& m) {
  require_object(j);
  m.device_id = optional_field<std::string>(j, "device_id");
}

void to_json(json& j, const InbandRenewMsg& m) {
  j = json{{"length_ms", m.length_ms}};
}
void from_json(const json& j, InbandRenewMsg& m) {
  m.length_ms = field<std::uint32_t>(j, "length_ms");
}

void to_json(json& j, const InbandRenewedMsg& m) {
  j = json{{"expires_in_ms", m.expires_in_ms}};
}
void from_json(const json& j, InbandRenewedMsg& m) {
  m.expires_in_ms = non_negative_ms(j, "expires_in_ms");
}

void to_json(json& j, const ChannelClosingMsg& m) {
  j = json{{"reason", m.reason}, {"detail", m.detail}};
}
void from_json(const json& j, ChannelClosingMsg& m) {
  m.reason = field<std::string>(j, "reason");
  m.detail = field_or(j, "detail", std::string());
}

Frame usb_out_frame_view(std::uint8_t endpoint, std::uint32_t timeout_ms, std::span<const std::uint8_t> data,
                         bool continues, std::uint32_t filament) {
  DTU_CHECK(data.size() <= kMaxUsbTransferBytes);
  Frame f;
  f.type = MessageType::usb_out;
  f.flags = kFlagBinary;
  f.filament = filament;
  f.payload.resize(kUsbOutHeaderBytes);
  f.payload[0] = endpoint;
  f.payload[1] = continues ? kUsbOutContinues : 0;  // bytes 2-3 reserved, zero
  put_u32_be(&f.payload[4], timeout_ms);
  f.tail = data;
  return f;
}

Frame usb_out_frame(std::uint8_t endpoint, std::uint32_t timeout_ms, std::span<const std::uint8_t> data,
                    bool continues, std::uint32_t filament) {
  Frame f = usb_out_frame_view(endpoint, timeout_ms, data, continues, filament);
  // The data appended after the header: resize() would zero-fill its room first, a second pass
  // over every byte (docs/performance.md).
  f.payload.reserve(kUsbOutHeaderBytes + data.size());
  f.payload.insert(f.payload.end(), data.begin(), data.end());
  f.tail = {};
  return f;
}

Frame usb_data_frame(std::span<const std::uint8_t> data, std::uint32_t filament) {
  Frame f;
  f.type = MessageType::usb_data;
  f.flags = kFlagBinary;
  f.filament = filament;
  f.payload.assign(data.begin(), data.end());
  return f;
}

template <>
Result<UsbOutMsg> from_frame<UsbOutMsg>(const Frame& frame) {
  if (frame.type != MessageType::usb_out) return wrong_type(MessageType::usb_out, frame);
  if (!frame.is_binary()) return Error(Errc::bad_payload, "usb_out: payload must be binary");
  if (frame.payload.size() < kUsbOutHeaderBytes) {
    return Error(Errc::bad_payload, "usb_out: " + std::to_string(frame.payload.size()) +
                                        " bytes, shorter than its 8-byte header");
  }
  if ((frame.payload[1] & ~kUsbOutContinues) != 0 || frame.payload[2] != 0 || frame.payload[3] != 0) {
    return Error(Errc::bad_payload, "usb_out: reserved header bits must be zero");
  }
  if (frame.payload.size() - kUsbOutHeaderBytes > kMaxUsbTransferBytes) {
    return Error(Errc::bad_payload, "usb_out: more than " + std::to_string(kMaxUsbTransferBytes) + " bytes");
  }
  UsbOutMsg m;
  m.endpoint = frame.payload[0];
  m.continues = (frame.payload[1] & kUsbOutContinues) != 0;
  m.timeout_ms = get_u32_be(&frame.payload[4]);
  m.data.assign(frame.payload.begin() + kUsbOutHeaderBytes, frame.payload.end());
  return m;
}

template <>
Result<UsbDataMsg> from_frame<UsbDataMsg>(const Frame& frame) {
  if (frame.type != MessageType::usb_data) return wrong_type(MessageType::usb_data, frame);
  if (!frame.is_binary()) return Error(Errc::bad_payload, "usb_data: payload must be binary");
  return UsbDataMsg{frame.payload};
}

}  // namespace dtu::common
