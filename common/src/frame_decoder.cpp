#include "dtu/common/frame_decoder.hpp"

namespace dtu::common {
namespace {

std::uint16_t get_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// Compact the buffer once consumed bytes dominate, so it never grows past one frame plus slack.
constexpr std::size_t kCompactThreshold = 64 * 1024;

}  // namespace

void FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  if (error_) return;
  if (offset_ > 0 && (offset_ >= kCompactThreshold || offset_ == buffer_.size())) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(offset_));
    offset_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

FrameDecoder::Status FrameDecoder::fail(Errc code, std::string detail) {
  error_ = make_error_code(code);
  detail_ = std::move(detail);
  buffer_.clear();
  buffer_.shrink_to_fit();
  offset_ = 0;
  return Status::invalid;
}

FrameDecoder::Status FrameDecoder::next(Frame& out) {
  if (error_) return Status::invalid;
  const std::size_t available = buffer_.size() - offset_;
  if (available < kFrameHeaderSize) return Status::need_more;
  const std::uint8_t* h = buffer_.data() + offset_;
  const std::uint32_t length = get_u32(h);
  const std::uint8_t version = h[4];
  const std::uint8_t flags = h[5];
  const std::uint16_t type = get_u16(h + 6);
  // Check the header before waiting for (and buffering) the payload.
  if (version != kProtocolVersion) {
    return fail(Errc::bad_version, "protocol version " + std::to_string(version) + ", expected " +
                                       std::to_string(kProtocolVersion));
  }
  if (length > max_payload_) {
    return fail(Errc::frame_too_large, "payload length " + std::to_string(length) + " above the cap of " +
                                           std::to_string(max_payload_) + " bytes");
  }
  if ((flags & ~kKnownFlags) != 0) {
    return fail(Errc::malformed_frame, "unknown flag bits " + std::to_string(flags & ~kKnownFlags));
  }
  if (!is_known_message_type(type)) {
    return fail(Errc::unknown_type, "unknown message type " + std::to_string(type));
  }
  if ((flags & kFlagReply) != 0 && (flags & (kFlagAckRequested | kFlagReplyRequested)) != 0) {
    return fail(Errc::malformed_frame, "a reply cannot request a confirmation");
  }
  if (available < kFrameHeaderSize + length) return Status::need_more;
  out.type = static_cast<MessageType>(type);
  out.flags = flags;
  out.filament = get_u32(h + 8);
  out.txn = get_u32(h + 12);
  const auto* body = h + kFrameHeaderSize;
  out.payload.assign(body, body + length);
  offset_ += kFrameHeaderSize + length;
  return Status::complete;
}

FrameDecoder::Status FrameDecoder::finish() {
  if (error_) return Status::invalid;
  const std::size_t left = buffer_.size() - offset_;
  if (left == 0) return Status::complete;
  return fail(Errc::malformed_frame,
              "stream ended inside a frame (" + std::to_string(left) + " bytes of a truncated frame)");
}

}  // namespace dtu::common
