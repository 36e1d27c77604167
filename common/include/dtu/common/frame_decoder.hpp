#pragma once
// FrameDecoder: pure, incremental decoder of the frame layout in frame.hpp. Give it bytes as
// they arrive; take frames out one at a time. The length cap is checked on the header alone,
// before any payload is held, so an attacker cannot make us allocate past the cap.
// Once it reports `invalid` it stays invalid: the caller closes the connection.
//
// Two ways in. A link streams: next(input, out) takes frames straight from the bytes just
// read and keeps only what an unfinished frame has so far (its header, and its payload in a
// buffer kept while a stream of large frames goes on), so a frame that arrives whole is copied
// once, into its payload, and a decoder between small frames holds no storage (a manager keeps
// 10,000 of them). feed() + next(out) buffer a copy of everything fed first, for callers that
// have the bytes before they want frames.
// Not thread-safe (one per connection, on that connection's thread).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dtu/common/errors.hpp"
#include "dtu/common/frame.hpp"

namespace dtu::common {

class FrameDecoder {
 public:
  enum class Status { complete, need_more, invalid };

  explicit FrameDecoder(std::size_t max_payload = kDefaultMaxPayload) : max_payload_(max_payload) {}

  // Decodes the next frame from the bytes held from earlier calls followed by `input`, and
  // advances `input` past the bytes it used. complete: `out` holds the frame (`input` may hold
  // more). need_more: `input` is used up and its part of an unfinished frame is held.
  // invalid: error_code() and error_detail() say why; no further frame will be produced.
  Status next(std::span<const std::uint8_t>& input, Frame& out);

  // Appends a copy of `bytes` for next(out). Bytes after an invalid frame are ignored.
  void feed(std::span<const std::uint8_t> bytes);
  // Takes the next frame out of what was fed, as next(input, out).
  Status next(Frame& out);

  // At end of stream: invalid (truncated frame) if bytes of an unfinished frame remain.
  Status finish();

  std::error_code error_code() const { return error_; }
  const std::string& error_detail() const { return detail_; }
  // Bytes held that are not yet part of a frame taken out.
  std::size_t buffered() const;
  // The capacity of the buffer kept for large frames (0 when none is kept).
  std::size_t storage() const { return partial_.capacity(); }
  // Gives that buffer back unless a frame is being filled in it (a link calls it once idle).
  void release_storage();

 private:
  Status fail(Errc code, std::string detail);
  // Checks the header at `h` (kFrameHeaderSize bytes): complete with its payload length, or invalid.
  Status check_header(const std::uint8_t* h, std::uint32_t& length);

  std::size_t max_payload_;
  // The unfinished frame: its header so far, then (once the header is whole) its payload so far.
  std::array<std::uint8_t, kFrameHeaderSize> header_{};
  std::size_t header_bytes_ = 0;
  std::uint32_t payload_length_ = 0;
  std::vector<std::uint8_t> partial_;
  // feed()'s bytes not yet decoded, from fed_offset_.
  std::vector<std::uint8_t> fed_;
  std::size_t fed_offset_ = 0;
  std::error_code error_;
  std::string detail_;
};

}  // namespace dtu::common
