#pragma once
// In-band messages (types 192–203): what a lease holder and a DTU say to each other on the
// lease's TLS channel (DESIGN.md §2, docs/protocol.md §12). One plain struct per message with
// to_json/from_json beside it, like messages.hpp; the two binary messages (usb_out, usb_data)
// have their own frame codecs, as to_frame/from_frame specialisations. Values; not thread-safe.
//
// Every in-band request is sent on filament 0 as a request (reply_requested); errors come back
// as the `error` reply. channel_closing is the DTU's one notify.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/crypto.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/usb_setup.hpp"

namespace dtu::common {

// usb_out's binary header: [u8 endpoint][u8 flags][u16 0][u32 timeout_ms, big-endian].
inline constexpr std::size_t kUsbOutHeaderBytes = 8;
// usb_out flag: this write continues the previous one on its endpoint (a stream's second and
// later chunks). The DTU refuses it, without writing, when that previous write failed, so a
// stream never reaches the device with a gap. Other flag bits are reserved (zero).
inline constexpr std::uint8_t kUsbOutContinues = 0x01;
// The most one usb_out may carry, and the most one usb_in may ask for: a usb_out frame at the
// default payload cap (1 MiB) minus its header. Peers with a larger cap still use this bound, so
// every DTU and service agree on it.
inline constexpr std::size_t kMaxUsbTransferBytes = kDefaultMaxPayload - kUsbOutHeaderBytes;

// service -> DTU, the first request on a channel. `lease` must equal the TLS PSK identity.
struct InbandHelloMsg {
  static constexpr MessageType kType = MessageType::inband_hello;
  std::string lease;
};

// One endpoint of the leased interfaces. `type` is "bulk", "interrupt", "isochronous" (or
// "control"); `address` carries the direction in bit 7.
struct InbandEndpoint {
  std::uint8_t address = 0;
  std::string type;
  std::uint16_t max_packet_size = 0;

  bool operator==(const InbandEndpoint&) const = default;
};

// DTU -> service: the reply to inband_hello. The leased unit, every endpoint of its interfaces
// (all alternate settings), and how long the lease has left.
struct InbandWelcomeMsg {
  static constexpr MessageType kType = MessageType::inband_welcome;
  std::string lease;
  std::string dtu;
  std::string device;  // port path
  std::uint32_t unit = 0;
  std::optional<std::string> function;  // "printer", "scanner", …; null when the device is unknown
  std::vector<std::uint8_t> interfaces;
  std::vector<InbandEndpoint> endpoints;  // sorted by address
  std::int64_t expires_in_ms = 0;
};

// service -> DTU: a control transfer on endpoint 0. IN reads up to `length` bytes; OUT sends
// `data`, whose size must equal `length` (`data` must be empty for IN). Reply: usb_data.
struct UsbControlMsg {
  static constexpr MessageType kType = MessageType::usb_control;
  UsbSetup setup;
  Bytes data;  // hex on the wire
  std::uint32_t timeout_ms = 0;
};

// service -> DTU (binary): bytes for an OUT endpoint. Reply: usb_done.
struct UsbOutMsg {
  static constexpr MessageType kType = MessageType::usb_out;
  std::uint8_t endpoint = 0;
  bool continues = false;  // kUsbOutContinues
  std::uint32_t timeout_ms = 0;
  Bytes data;
};

// service -> DTU: read up to `length` bytes from an IN endpoint. Reply: usb_data.
struct UsbInMsg {
  static constexpr MessageType kType = MessageType::usb_in;
  std::uint8_t endpoint = 0;
  std::uint32_t length = 0;
  std::uint32_t timeout_ms = 0;
};

// DTU -> service (binary reply): the bytes read; empty for a control OUT.
struct UsbDataMsg {
  static constexpr MessageType kType = MessageType::usb_data;
  Bytes data;
};

// DTU -> service: the reply to usb_out, the bytes the device accepted.
struct UsbDoneMsg {
  static constexpr MessageType kType = MessageType::usb_done;
  std::uint64_t length = 0;
};

// service -> DTU: the IEEE 1284 device id of a leased printer. Reply: device_id.
struct GetDeviceIdMsg {
  static constexpr MessageType kType = MessageType::get_device_id;
};

struct DeviceIdMsg {
  static constexpr MessageType kType = MessageType::device_id;
  std::optional<std::string> device_id;  // null when the printer returned none
};

// service -> DTU: extend the lease by `length_ms` from now (in-band, without the manager).
struct InbandRenewMsg {
  static constexpr MessageType kType = MessageType::inband_renew;
  std::uint32_t length_ms = 0;
};

struct InbandRenewedMsg {
  static constexpr MessageType kType = MessageType::inband_renewed;
  std::int64_t expires_in_ms = 0;
};

// DTU -> service (notify): the channel ends now. `reason`: "expired", "released",
// "device_gone", "agent_stopping", or another word; `detail` is for people.
struct ChannelClosingMsg {
  static constexpr MessageType kType = MessageType::channel_closing;
  std::string reason;
  std::string detail;
};

void to_json(nlohmann::json& j, const InbandHelloMsg& m);
void from_json(const nlohmann::json& j, InbandHelloMsg& m);
void to_json(nlohmann::json& j, const InbandEndpoint& m);
void from_json(const nlohmann::json& j, InbandEndpoint& m);
void to_json(nlohmann::json& j, const InbandWelcomeMsg& m);
void from_json(const nlohmann::json& j, InbandWelcomeMsg& m);
void to_json(nlohmann::json& j, const UsbControlMsg& m);
void from_json(const nlohmann::json& j, UsbControlMsg& m);
void to_json(nlohmann::json& j, const UsbInMsg& m);
void from_json(const nlohmann::json& j, UsbInMsg& m);
void to_json(nlohmann::json& j, const UsbDoneMsg& m);
void from_json(const nlohmann::json& j, UsbDoneMsg& m);
void to_json(nlohmann::json& j, const GetDeviceIdMsg& m);
void from_json(const nlohmann::json& j, GetDeviceIdMsg& m);
void to_json(nlohmann::json& j, const DeviceIdMsg& m);
void from_json(const nlohmann::json& j, DeviceIdMsg& m);
void to_json(nlohmann::json& j, const InbandRenewMsg& m);
void from_json(const nlohmann::json& j, InbandRenewMsg& m);
void to_json(nlohmann::json& j, const InbandRenewedMsg& m);
void from_json(const nlohmann::json& j, InbandRenewedMsg& m);
void to_json(nlohmann::json& j, const ChannelClosingMsg& m);
void from_json(const nlohmann::json& j, ChannelClosingMsg& m);

// The endpoint type name of bmAttributes bits 0-1: "control", "isochronous", "bulk", "interrupt".
const char* usb_transfer_type_name(std::uint8_t attributes);

// A usb_out frame (binary) carrying a copy of `data`.
// REQUIRES: data.size() <= kMaxUsbTransferBytes
Frame usb_out_frame(std::uint8_t endpoint, std::uint32_t timeout_ms, std::span<const std::uint8_t> data,
                    bool continues = false, std::uint32_t filament = 0);
// The same frame referring to `data` (Frame::tail) instead: `data` is copied once, when a Link
// queues the frame, straight into its write buffer.
// REQUIRES: data.size() <= kMaxUsbTransferBytes; `data` outlives the call that queues the frame.
Frame usb_out_frame_view(std::uint8_t endpoint, std::uint32_t timeout_ms, std::span<const std::uint8_t> data,
                         bool continues = false, std::uint32_t filament = 0);
// A usb_data frame (binary) carrying `data`.
Frame usb_data_frame(std::span<const std::uint8_t> data, std::uint32_t filament = 0);

// The binary messages: to_frame/from_frame specialisations, so they read like the JSON ones.
// from_frame errors: Errc::unknown_type (another type), Errc::bad_payload (not binary, a short
// header, a reserved header bit set, a payload above kMaxUsbTransferBytes).
template <>
inline Frame to_frame<UsbOutMsg>(const UsbOutMsg& msg, std::uint32_t filament) {
  return usb_out_frame(msg.endpoint, msg.timeout_ms, msg.data, msg.continues, filament);
}
template <>
inline Frame to_frame<UsbDataMsg>(const UsbDataMsg& msg, std::uint32_t filament) {
  return usb_data_frame(msg.data, filament);
}
template <>
Result<UsbOutMsg> from_frame<UsbOutMsg>(const Frame& frame);
template <>
Result<UsbDataMsg> from_frame<UsbDataMsg>(const Frame& frame);

}  // namespace dtu::common
