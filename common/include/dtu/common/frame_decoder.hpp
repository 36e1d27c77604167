#pragma once
// FrameDecoder: pure, incremental decoder of the frame layout in frame.hpp. Feed it bytes as
// they arrive; take frames out one at a time. The length cap is checked on the header alone,
// before any payload is buffered, so an attacker cannot make us allocate past the cap.
// Once it reports `invalid` it stays invalid: the caller closes the connection.
// Not thread-safe (one per connection, on that connection's thread).

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

  // Appends bytes to the decoder's buffer. Bytes after an invalid frame are ignored.
  void feed(std::span<const std::uint8_t> bytes);

  // Takes the next frame out. complete: `out` holds it. need_more: feed more bytes.
  // invalid: error_code() and error_detail() say why; no further frame will be produced.
  Status next(Frame& out);

  // At end of stream: invalid (truncated frame) if bytes of an unfinished frame remain.
  Status finish();

  std::error_code error_code() const { return error_; }
  const std::string& error_detail() const { return detail_; }
  std::size_t buffered() const { return buffer_.size() - offset_; }

 private:
  Status fail(Errc code, std::string detail);

  std::size_t max_payload_;
  std::vector<std::uint8_t> buffer_;
  std::size_t offset_ = 0;  // start of unconsumed bytes in buffer_
  std::error_code error_;
  std::string detail_;
};

}  // namespace dtu::common
