#include "dtu/common/frame_decoder.hpp"

#include <algorithm>
#include <cstring>

namespace dtu::common {
namespace {

std::uint16_t get_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// Compact fed bytes once consumed bytes dominate, so the copy never grows past one frame plus slack.
constexpr std::size_t kCompactThreshold = 64 * 1024;
// An unfinished frame's payload collects in one buffer that the decoder keeps from frame to
// frame while a stream goes on (a device-data chunk spans several TLS records): filling a new
// vector per frame instead, allocated when its header arrived, cost the in-band stream a fifth
// of its throughput (docs/performance.md). A frame below this size that happened to span two
// reads (a DTU's snapshot) gives the buffer back at once, so an idle link keeps none: kept at
// 16 KiB, 10,000 DTUs cost 34 MB more. Below InbandChannel::kStreamChunk (63 KiB of data).
constexpr std::size_t kKeepForStream = 32 * 1024;

// The frame whose header is at `h`, without its payload.
void take_header(const std::uint8_t* h, Frame& out) {
  out.flags = h[5];
  out.type = static_cast<MessageType>(get_u16(h + 6));
  out.filament = get_u32(h + 8);
  out.txn = get_u32(h + 12);
}

}  // namespace

FrameDecoder::Status FrameDecoder::fail(Errc code, std::string detail) {
  error_ = make_error_code(code);
  detail_ = std::move(detail);
  fed_.clear();
  fed_.shrink_to_fit();
  fed_offset_ = 0;
  header_bytes_ = 0;
  std::vector<std::uint8_t>().swap(partial_);
  return Status::invalid;
}

FrameDecoder::Status FrameDecoder::check_header(const std::uint8_t* h, std::uint32_t& length) {
  length = get_u32(h);
  const std::uint8_t version = h[4];
  const std::uint8_t flags = h[5];
  const std::uint16_t type = get_u16(h + 6);
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
  return Status::complete;
}

FrameDecoder::Status FrameDecoder::next(std::span<const std::uint8_t>& input, Frame& out) {
  if (error_) return Status::invalid;
  // A whole frame at the front of `input`, nothing held: straight from the caller's bytes.
  if (header_bytes_ == 0 && input.size() >= kFrameHeaderSize) {
    std::uint32_t length = 0;
    if (check_header(input.data(), length) == Status::invalid) return Status::invalid;
    if (input.size() - kFrameHeaderSize >= length) {
      take_header(input.data(), out);
      const auto* body = input.data() + kFrameHeaderSize;
      out.payload.assign(body, body + length);
      input = input.subspan(kFrameHeaderSize + length);
      return Status::complete;
    }
  }
  // Otherwise the unfinished frame takes what it needs: first its header, then its payload.
  if (header_bytes_ < kFrameHeaderSize) {
    const std::size_t take = std::min(kFrameHeaderSize - header_bytes_, input.size());
    if (take > 0) std::memcpy(header_.data() + header_bytes_, input.data(), take);  // data() may be null
    header_bytes_ += take;
    input = input.subspan(take);
    if (header_bytes_ < kFrameHeaderSize) return Status::need_more;
    if (check_header(header_.data(), payload_length_) == Status::invalid) return Status::invalid;
    partial_.clear();
  }
  const std::size_t take = std::min<std::size_t>(payload_length_ - partial_.size(), input.size());
  const auto* from = input.data();
  partial_.insert(partial_.end(), from, from + take);
  input = input.subspan(take);
  if (partial_.size() < payload_length_) return Status::need_more;
  take_header(header_.data(), out);
  out.payload.assign(partial_.begin(), partial_.end());
  partial_.clear();
  if (payload_length_ < kKeepForStream) release_storage();
  header_bytes_ = 0;
  return Status::complete;
}

void FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  if (error_) return;
  if (fed_offset_ > 0 && (fed_offset_ >= kCompactThreshold || fed_offset_ == fed_.size())) {
    fed_.erase(fed_.begin(), fed_.begin() + static_cast<std::ptrdiff_t>(fed_offset_));
    fed_offset_ = 0;
  }
  fed_.insert(fed_.end(), bytes.begin(), bytes.end());
}

FrameDecoder::Status FrameDecoder::next(Frame& out) {
  if (error_) return Status::invalid;
  std::span<const std::uint8_t> input(fed_.data() + fed_offset_, fed_.size() - fed_offset_);
  const Status status = next(input, out);
  if (status != Status::invalid) fed_offset_ = fed_.size() - input.size();
  return status;
}

void FrameDecoder::release_storage() {
  if (partial_.empty()) std::vector<std::uint8_t>().swap(partial_);
}

std::size_t FrameDecoder::buffered() const {
  // partial_ is empty until the unfinished frame's header is whole.
  return fed_.size() - fed_offset_ + header_bytes_ + partial_.size();
}

FrameDecoder::Status FrameDecoder::finish() {
  if (error_) return Status::invalid;
  const std::size_t left = buffered();
  if (left == 0) return Status::complete;
  return fail(Errc::malformed_frame,
              "stream ended inside a frame (" + std::to_string(left) + " bytes of a truncated frame)");
}

}  // namespace dtu::common
