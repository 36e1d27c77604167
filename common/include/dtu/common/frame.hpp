#pragma once
// Frame: one unit on a dtubroker byte stream, and its encoder. Plain value type.
//
// Layout (16-byte header, big-endian):
//   u32 payload_length | u8 version | u8 flags | u16 type | u32 filament | u32 txn | payload
//
// docs/protocol.md describes every field. The payload is JSON (a control message) unless
// kFlagBinary is set (device data).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/message_type.hpp"

namespace dtu::common {

inline constexpr std::uint8_t kProtocolVersion = 1;
inline constexpr std::size_t kFrameHeaderSize = 16;
// Default cap on a frame's payload: 1 MiB. Larger control messages are a bug or an attack;
// device data is sent in chunks below it.
inline constexpr std::size_t kDefaultMaxPayload = 1024 * 1024;

// Flag bits.
inline constexpr std::uint8_t kFlagBinary = 0x01;          // payload is raw bytes, not JSON
inline constexpr std::uint8_t kFlagReply = 0x02;           // answers the sender's txn
inline constexpr std::uint8_t kFlagAckRequested = 0x04;    // a post: confirm delivery with ack
inline constexpr std::uint8_t kFlagReplyRequested = 0x08;  // a request: answer with a reply
inline constexpr std::uint8_t kKnownFlags = 0x0f;

struct Frame {
  MessageType type = MessageType::ack;
  std::uint8_t flags = 0;
  std::uint32_t filament = 0;
  std::uint32_t txn = 0;
  std::vector<std::uint8_t> payload;
  // Outgoing frames only: bytes that follow `payload` on the wire, read from the sender's memory
  // when the frame is encoded, so that a chunk of device data is copied once, into the link's
  // write buffer, rather than into the frame first (usb_out_frame_view, InbandChannel::stream).
  // A Link encodes a frame in the call that queues it, so these bytes need only outlive that
  // call. The decoder never sets it: a received frame's bytes are all in `payload`.
  std::span<const std::uint8_t> tail;

  // The payload's length on the wire.
  std::size_t payload_size() const { return payload.size() + tail.size(); }

  bool is_reply() const { return (flags & kFlagReply) != 0; }
  bool wants_ack() const { return (flags & kFlagAckRequested) != 0; }
  bool wants_reply() const { return (flags & kFlagReplyRequested) != 0; }
  bool is_binary() const { return (flags & kFlagBinary) != 0; }
  std::string_view payload_text() const {
    return {reinterpret_cast<const char*>(payload.data()), payload.size()};
  }
};

// Appends the encoded frame to `out`: the header, `payload`, then `tail`.
// REQUIRES: frame.payload_size() fits in 32 bits; frame.flags only uses kKnownFlags.
void encode_frame(const Frame& frame, std::vector<std::uint8_t>& out);
std::vector<std::uint8_t> encode_frame(const Frame& frame);

}  // namespace dtu::common
