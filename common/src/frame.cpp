#include "dtu/common/frame.hpp"

#include <algorithm>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

void put_u16(std::vector<std::uint8_t>& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

}  // namespace

void encode_frame(const Frame& frame, std::vector<std::uint8_t>& out) {
  const std::size_t length = frame.payload_size();
  DTU_CHECK(length <= 0xffffffffu);
  DTU_CHECK((frame.flags & ~kKnownFlags) == 0);
  // reserve() allocates exactly what it is asked for: asked once per frame, a buffer of many
  // queued frames would be reallocated and copied at each one.
  const std::size_t needed = out.size() + kFrameHeaderSize + length;
  if (needed > out.capacity()) out.reserve(std::max(needed, 2 * out.capacity()));
  put_u32(out, static_cast<std::uint32_t>(length));
  out.push_back(kProtocolVersion);
  out.push_back(frame.flags);
  put_u16(out, static_cast<std::uint16_t>(frame.type));
  put_u32(out, frame.filament);
  put_u32(out, frame.txn);
  out.insert(out.end(), frame.payload.begin(), frame.payload.end());
  out.insert(out.end(), frame.tail.begin(), frame.tail.end());
}

std::vector<std::uint8_t> encode_frame(const Frame& frame) {
  std::vector<std::uint8_t> out;
  encode_frame(frame, out);
  return out;
}

}  // namespace dtu::common
