// Fuzz target: FrameDecoder over an arbitrary byte stream given in arbitrary pieces, and every
// message decoder over each frame it yields.
//
// Input: byte 0 steers the run, the rest is the stream.
//   bits 0-3  seed of the piece sizes; 0 gives the whole stream at once. With bit 7 clear, an
//             even seed streams each piece as a link does (next(input, out): frames straight
//             from the piece, an unfinished one held), an odd one feed()s it and drains
//   bits 4-5  copies of the stream fed back to back: 1, 1, 3 or 24 (long streams reach the
//             decoder's buffer compaction, which starts at 64 KiB of consumed bytes)
//   bit 6     a payload cap of 64 bytes instead of kDefaultMaxPayload
//   bit 7     feed every piece before taking frames out, instead of draining after each piece
//
// Properties, checked against an independent reading of the header (frame.hpp):
//   - a complete frame re-encodes to exactly the bytes it was decoded from, in stream order;
//   - need_more only while the next frame is really incomplete, and buffered() counts the
//     unconsumed bytes;
//   - invalid only for a header that breaks a rule, and from then on invalid forever, buffer freed;
//   - finish() is complete exactly when the stream ended on a frame boundary;
//   - every message decoder: see fuzz_check.hpp.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dtu/common/errors.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/message_type.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::Errc;
using dtu::common::Frame;
using dtu::common::FrameDecoder;
using dtu::common::kFrameHeaderSize;

// Payload cap chosen by bit 6, in bytes: small enough that the fuzzer meets it constantly.
constexpr std::size_t kSmallCap = 64;
constexpr std::size_t kCopies[] = {1, 1, 3, 24};
// Piece sizes: mostly below a header (every split point inside one), now and then a large one.
constexpr std::uint32_t kSmallPiece = 24;
constexpr std::uint32_t kLargePiece = 4096;

std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// The header at `h` (kFrameHeaderSize bytes) read independently of FrameDecoder.
struct HeaderVerdict {
  std::uint32_t length = 0;
  bool bad_version = false;
  bool too_large = false;
  bool unknown_flags = false;
  bool unknown_type = false;
  bool reply_requests = false;

  bool valid() const {
    return !bad_version && !too_large && !unknown_flags && !unknown_type && !reply_requests;
  }
  // Whether `code` names one of the rules this header breaks.
  bool explains(const std::error_code& code) const {
    const auto is = [&code](Errc errc) { return code == dtu::common::make_error_code(errc); };
    return (bad_version && is(Errc::bad_version)) || (too_large && is(Errc::frame_too_large)) ||
           (unknown_flags && is(Errc::malformed_frame)) || (unknown_type && is(Errc::unknown_type)) ||
           (reply_requests && is(Errc::malformed_frame));
  }
};

HeaderVerdict read_header(const std::uint8_t* h, std::size_t cap) {
  HeaderVerdict v;
  v.length = get_u32(h);
  const std::uint8_t flags = h[5];
  const auto type = static_cast<std::uint16_t>((h[6] << 8) | h[7]);
  v.bad_version = h[4] != dtu::common::kProtocolVersion;
  v.too_large = v.length > cap;
  v.unknown_flags = (flags & ~dtu::common::kKnownFlags) != 0;
  v.unknown_type = !dtu::common::is_known_message_type(type);
  v.reply_requests = (flags & dtu::common::kFlagReply) != 0 &&
                     (flags & (dtu::common::kFlagAckRequested | dtu::common::kFlagReplyRequested)) != 0;
  return v;
}

// xorshift32: piece sizes that depend only on the steering byte, so a crash replays exactly.
class Pieces {
 public:
  explicit Pieces(std::uint32_t seed) : state_(0x9e3779b9u * (seed + 1)) {}
  std::size_t next() {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    return (state_ % 8 == 0) ? state_ % kLargePiece : state_ % kSmallPiece;
  }

 private:
  std::uint32_t state_;
};

class Run {
 public:
  Run(std::vector<std::uint8_t> stream, std::size_t first_copy, std::size_t cap)
      : stream_(std::move(stream)), first_copy_(first_copy), cap_(cap), decoder_(cap) {}

  // Streaming (next(input, out)) instead of feed() + next(out).
  void stream_pieces() { streaming_ = true; }

  void feed(std::size_t n) {
    FUZZ_REQUIRE(fed_ + n <= stream_.size());
    const auto piece = std::span<const std::uint8_t>(stream_).subspan(fed_, n);
    if (streaming_) {
      FUZZ_REQUIRE(input_.empty());  // drained after every piece
      if (!invalid_) input_ = piece;
    } else {
      decoder_.feed(piece);
    }
    fed_ += n;
    // Ignored after invalid: nothing is buffered.
    if (invalid_) FUZZ_REQUIRE(decoder_.buffered() == 0);
  }

  // Takes frames out until need_more or invalid.
  void drain() {
    while (!invalid_) {
      const FrameDecoder::Status status = streaming_ ? decoder_.next(input_, frame_) : decoder_.next(frame_);
      const std::size_t left = fed_ - consumed_;
      if (status == FrameDecoder::Status::complete) {
        on_frame(left);
      } else if (status == FrameDecoder::Status::need_more) {
        FUZZ_REQUIRE(input_.empty());  // a piece is used up before more is asked for
        FUZZ_REQUIRE(decoder_.buffered() == left);
        if (left >= kFrameHeaderSize) {
          const HeaderVerdict header = read_header(&stream_[consumed_], cap_);
          FUZZ_REQUIRE(header.valid());
          FUZZ_REQUIRE(kFrameHeaderSize + header.length > left);
        }
        return;
      } else {
        FUZZ_REQUIRE(left >= kFrameHeaderSize);
        const HeaderVerdict header = read_header(&stream_[consumed_], cap_);
        FUZZ_REQUIRE(!header.valid());
        FUZZ_REQUIRE(header.explains(decoder_.error_code()));
        check_stays_invalid();
        input_ = {};  // what the link would drop with the connection
        return;
      }
    }
  }

  // At end of stream.
  void finish() {
    if (invalid_) {
      FUZZ_REQUIRE(decoder_.finish() == FrameDecoder::Status::invalid);
      return;
    }
    FUZZ_REQUIRE(fed_ == stream_.size());
    const bool on_boundary = consumed_ == fed_;
    const FrameDecoder::Status status = decoder_.finish();
    if (on_boundary) {
      FUZZ_REQUIRE(status == FrameDecoder::Status::complete);
      FUZZ_REQUIRE(decoder_.next(frame_) == FrameDecoder::Status::need_more);
    } else {
      FUZZ_REQUIRE(status == FrameDecoder::Status::invalid);
      FUZZ_REQUIRE(decoder_.error_code() == dtu::common::make_error_code(Errc::malformed_frame));
      check_stays_invalid();
    }
  }

 private:
  void on_frame(std::size_t left) {
    const std::size_t size = kFrameHeaderSize + frame_.payload.size();
    FUZZ_REQUIRE(size <= left);
    FUZZ_REQUIRE(frame_.payload.size() <= cap_);
    FUZZ_REQUIRE(read_header(&stream_[consumed_], cap_).valid());
    const std::vector<std::uint8_t> encoded = dtu::common::encode_frame(frame_);
    FUZZ_REQUIRE(encoded.size() == size);
    FUZZ_REQUIRE(
        std::equal(encoded.begin(), encoded.end(), stream_.begin() + static_cast<std::ptrdiff_t>(consumed_)));
    // The copies repeat the first one's frames: decode messages once.
    if (consumed_ < first_copy_) dtu::fuzz::check_every_message(frame_);
    consumed_ += size;
    FUZZ_REQUIRE(decoder_.buffered() + input_.size() == fed_ - consumed_);
  }

  void check_stays_invalid() {
    invalid_ = true;
    FUZZ_REQUIRE(decoder_.error_code());
    FUZZ_REQUIRE(!decoder_.error_detail().empty());
    FUZZ_REQUIRE(decoder_.buffered() == 0);
    FUZZ_REQUIRE(decoder_.next(frame_) == FrameDecoder::Status::invalid);
    FUZZ_REQUIRE(decoder_.finish() == FrameDecoder::Status::invalid);
  }

  const std::vector<std::uint8_t> stream_;
  const std::size_t first_copy_;
  const std::size_t cap_;
  FrameDecoder decoder_;
  // One Frame for every next(): a field left over from the previous frame fails the re-encoding.
  Frame frame_;
  bool streaming_ = false;
  std::span<const std::uint8_t> input_;  // streaming: what is left of the last piece
  std::size_t fed_ = 0;       // bytes of stream_ fed (or given as pieces)
  std::size_t consumed_ = 0;  // bytes of stream_ taken out as frames
  bool invalid_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    FrameDecoder decoder;
    Frame frame;
    FUZZ_REQUIRE(decoder.next(frame) == FrameDecoder::Status::need_more);
    FUZZ_REQUIRE(decoder.finish() == FrameDecoder::Status::complete);
    return 0;
  }
  const std::uint8_t steer = data[0];
  const std::span<const std::uint8_t> body(data + 1, size - 1);
  const std::uint32_t seed = steer & 0x0fu;
  const std::size_t copies = kCopies[(steer >> 4) & 0x03u];
  const std::size_t cap = (steer & 0x40u) != 0 ? kSmallCap : dtu::common::kDefaultMaxPayload;
  const bool drain_each_piece = (steer & 0x80u) == 0;

  std::vector<std::uint8_t> stream;
  stream.reserve(body.size() * copies);
  for (std::size_t i = 0; i < copies; ++i) stream.insert(stream.end(), body.begin(), body.end());
  const std::size_t total = stream.size();

  Run run(std::move(stream), body.size(), cap);
  if (drain_each_piece && (seed & 1u) == 0) run.stream_pieces();
  Pieces pieces(seed);
  std::size_t fed = 0;
  while (fed < total) {
    const std::size_t n = seed == 0 ? total : std::min(pieces.next(), total - fed);
    run.feed(n);
    fed += n;
    if (drain_each_piece) run.drain();
  }
  run.drain();
  run.finish();
  return 0;
}
