#include "dtu/common/frame_decoder.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <ostream>  // doctest prints std::error_code
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dtu::common {
namespace {

using Bytes = std::vector<std::uint8_t>;
using Status = FrameDecoder::Status;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

Frame make_frame(MessageType type, std::uint8_t flags, std::uint32_t filament, std::uint32_t txn,
                 std::string_view payload) {
  Frame f;
  f.type = type;
  f.flags = flags;
  f.filament = filament;
  f.txn = txn;
  f.payload.assign(payload.begin(), payload.end());
  return f;
}

// A raw 16-byte header with any field values, legal or not.
Bytes raw_header(std::uint32_t length, std::uint8_t version, std::uint8_t flags, std::uint16_t type,
                 std::uint32_t filament = 0, std::uint32_t txn = 0) {
  Bytes h;
  for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<std::uint8_t>(length >> shift));
  h.push_back(version);
  h.push_back(flags);
  h.push_back(static_cast<std::uint8_t>(type >> 8));
  h.push_back(static_cast<std::uint8_t>(type));
  for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<std::uint8_t>(filament >> shift));
  for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<std::uint8_t>(txn >> shift));
  return h;
}

// A hello request, its ack and an empty binary frame on filament 7, back to back.
Bytes three_frames() {
  Bytes stream;
  encode_frame(make_frame(MessageType::client_hello, kFlagReplyRequested, 0, 1, R"({"client":"x"})"), stream);
  encode_frame(make_frame(MessageType::ack, kFlagReply, 0, 1, "{}"), stream);
  encode_frame(make_frame(MessageType::device_list, kFlagBinary, 7, 0, ""), stream);
  return stream;
}

constexpr std::uint16_t kHeartbeat = static_cast<std::uint16_t>(MessageType::heartbeat);

// Feeds `bytes` and returns the first status other than complete (frames are discarded).
Status drain(FrameDecoder& decoder, const Bytes& bytes) {
  decoder.feed(bytes);
  Frame f;
  Status s;
  while ((s = decoder.next(f)) == Status::complete) {
  }
  return s;
}

void check_invalid(FrameDecoder& decoder, Errc code, std::string_view detail_part) {
  Frame f;
  CHECK(decoder.next(f) == Status::invalid);
  CHECK(decoder.error_code() == make_error_code(code));
  CHECK(contains(decoder.error_detail(), detail_part));
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("FrameDecoder needs more until a whole header has arrived") {
  FrameDecoder decoder;
  Frame f;
  CHECK(decoder.next(f) == Status::need_more);
  const Bytes header = raw_header(0, kProtocolVersion, 0, kHeartbeat);
  decoder.feed(Bytes(header.begin(), header.begin() + 15));
  CHECK(decoder.next(f) == Status::need_more);
  CHECK(decoder.buffered() == 15);
  CHECK_FALSE(decoder.error_code());
  decoder.feed(Bytes(header.begin() + 15, header.end()));
  CHECK(decoder.next(f) == Status::complete);
  CHECK(f.type == MessageType::heartbeat);
  CHECK(f.payload.empty());
}

TEST_CASE("FrameDecoder produces a frame fed one byte at a time only at its last byte") {
  const Frame in = make_frame(MessageType::device_attached, kFlagAckRequested, 3, 41, R"({"device":{}})");
  const Bytes encoded = encode_frame(in);
  FrameDecoder decoder;
  Frame out;
  for (std::size_t i = 0; i + 1 < encoded.size(); ++i) {
    decoder.feed(std::span<const std::uint8_t>(&encoded[i], 1));
    REQUIRE(decoder.next(out) == Status::need_more);
  }
  decoder.feed(std::span<const std::uint8_t>(&encoded.back(), 1));
  REQUIRE(decoder.next(out) == Status::complete);
  CHECK(out.type == in.type);
  CHECK(out.flags == in.flags);
  CHECK(out.filament == in.filament);
  CHECK(out.txn == in.txn);
  CHECK(out.payload == in.payload);
  CHECK(decoder.next(out) == Status::need_more);
  CHECK(decoder.finish() == Status::complete);
}

TEST_CASE("FrameDecoder takes several frames out of one feed, in order") {
  Bytes stream;
  for (std::uint32_t i = 0; i < 5; ++i) {
    encode_frame(make_frame(MessageType::device_detached, 0, i, i + 100, std::string(i, 'x')), stream);
  }
  FrameDecoder decoder;
  decoder.feed(stream);
  Frame f;
  for (std::uint32_t i = 0; i < 5; ++i) {
    REQUIRE(decoder.next(f) == Status::complete);
    CHECK(f.filament == i);
    CHECK(f.txn == i + 100);
    CHECK(f.payload.size() == i);
  }
  CHECK(decoder.next(f) == Status::need_more);
  CHECK(decoder.buffered() == 0);
}

TEST_CASE("FrameDecoder decodes a stream split at every possible point, fed or streamed") {
  const Bytes stream = three_frames();
  for (const bool streaming : {false, true}) {
    for (std::size_t split = 0; split <= stream.size(); ++split) {
      CAPTURE(streaming);
      CAPTURE(split);
      FrameDecoder decoder;
      std::vector<Frame> frames;
      // One read's bytes: fed (copied) then drained, or streamed as a link does.
      const auto take = [&](std::span<const std::uint8_t> piece) {
        Frame f;
        if (!streaming) decoder.feed(piece);
        while ((streaming ? decoder.next(piece, f) : decoder.next(f)) == Status::complete) frames.push_back(f);
        if (streaming) CHECK(piece.empty());  // used up; feed() copied it instead
      };
      take({stream.data(), split});
      // What the first piece left unfinished is held: the caller's bytes may be reused.
      std::size_t used = 0;
      for (const Frame& frame : frames) used += kFrameHeaderSize + frame.payload.size();
      CHECK(decoder.buffered() == split - used);
      take({stream.data() + split, stream.size() - split});
      REQUIRE(frames.size() == 3);
      CHECK(frames[0].type == MessageType::client_hello);
      CHECK(frames[0].payload_text() == R"({"client":"x"})");
      CHECK(frames[1].type == MessageType::ack);
      CHECK(frames[2].type == MessageType::device_list);
      CHECK(frames[2].filament == 7);
      CHECK(decoder.finish() == Status::complete);
    }
  }
}

TEST_CASE("FrameDecoder keeps decoding a long stream fed in odd-sized chunks") {
  // Enough data that consumed bytes pass the decoder's compaction threshold several times.
  Bytes stream;
  const std::uint32_t count = 300;
  for (std::uint32_t i = 0; i < count; ++i) {
    encode_frame(make_frame(MessageType::device_attached, kFlagBinary, i, i, std::string(1000 + i, 'a')),
                 stream);
  }
  FrameDecoder decoder;
  std::uint32_t seen = 0;
  Frame f;
  for (std::size_t at = 0; at < stream.size(); at += 777) {
    const std::size_t n = std::min<std::size_t>(777, stream.size() - at);
    decoder.feed(std::span<const std::uint8_t>(stream.data() + at, n));
    while (decoder.next(f) == Status::complete) {
      REQUIRE(f.filament == seen);
      REQUIRE(f.payload.size() == 1000 + seen);
      ++seen;
    }
    REQUIRE(decoder.buffered() < 2 * (kFrameHeaderSize + 1000 + count));
  }
  CHECK(seen == count);
  CHECK(decoder.finish() == Status::complete);
}

TEST_CASE("FrameDecoder finish reports a header truncated at end of stream") {
  const Bytes header = raw_header(0, kProtocolVersion, 0, kHeartbeat);
  FrameDecoder decoder;
  decoder.feed(Bytes(header.begin(), header.begin() + 10));
  Frame f;
  CHECK(decoder.next(f) == Status::need_more);
  CHECK(decoder.finish() == Status::invalid);
  CHECK(decoder.error_code() == make_error_code(Errc::malformed_frame));
  CHECK(contains(decoder.error_detail(), "truncated"));
  CHECK(contains(decoder.error_detail(), "10 bytes"));
  CHECK(decoder.next(f) == Status::invalid);
}

TEST_CASE("FrameDecoder finish reports a payload truncated at end of stream") {
  Bytes stream = encode_frame(make_frame(MessageType::heartbeat, 0, 0, 0, R"({"sent_us":1})"));
  stream.pop_back();
  FrameDecoder decoder;
  CHECK(drain(decoder, stream) == Status::need_more);
  CHECK(decoder.finish() == Status::invalid);
  CHECK(decoder.error_code() == make_error_code(Errc::malformed_frame));
  CHECK(contains(decoder.error_detail(), "truncated"));
}

TEST_CASE("FrameDecoder finish after whole frames is a clean end of stream") {
  FrameDecoder decoder;
  CHECK(decoder.finish() == Status::complete);
  CHECK(drain(decoder, encode_frame(make_frame(MessageType::ack, 0, 0, 0, "{}"))) == Status::need_more);
  CHECK(decoder.finish() == Status::complete);
  CHECK_FALSE(decoder.error_code());
}

TEST_CASE("FrameDecoder rejects a length above the cap from the header alone") {
  FrameDecoder decoder(100);
  // Only the header: the payload never arrives, yet the decoder already knows.
  decoder.feed(raw_header(101, kProtocolVersion, 0, kHeartbeat));
  check_invalid(decoder, Errc::frame_too_large, "101");
  CHECK(contains(decoder.error_detail(), "cap of 100 bytes"));
}

TEST_CASE("FrameDecoder rejects the largest length with the default cap before any payload") {
  FrameDecoder decoder;
  decoder.feed(raw_header(0xffffffffu, kProtocolVersion, 0, kHeartbeat));
  check_invalid(decoder, Errc::frame_too_large, "4294967295");
  CHECK(contains(decoder.error_detail(), std::to_string(kDefaultMaxPayload)));
}

TEST_CASE("FrameDecoder accepts a payload exactly at a configured cap") {
  FrameDecoder decoder(8);
  decoder.feed(encode_frame(make_frame(MessageType::device_list, kFlagBinary, 0, 0, "12345678")));
  Frame f;
  REQUIRE(decoder.next(f) == Status::complete);
  CHECK(f.payload.size() == 8);
}

TEST_CASE("FrameDecoder with a cap of zero accepts only empty payloads") {
  FrameDecoder decoder(0);
  decoder.feed(encode_frame(make_frame(MessageType::ack, 0, 0, 0, "")));
  Frame f;
  REQUIRE(decoder.next(f) == Status::complete);
  decoder.feed(encode_frame(make_frame(MessageType::ack, 0, 0, 0, "{}")));
  check_invalid(decoder, Errc::frame_too_large, "payload length 2");
}

TEST_CASE("FrameDecoder default cap is 1 MiB") {
  FrameDecoder at_cap;
  at_cap.feed(
      raw_header(static_cast<std::uint32_t>(kDefaultMaxPayload), kProtocolVersion, kFlagBinary, kHeartbeat));
  Frame f;
  CHECK(at_cap.next(f) == Status::need_more);
  FrameDecoder above;
  above.feed(raw_header(static_cast<std::uint32_t>(kDefaultMaxPayload + 1), kProtocolVersion, kFlagBinary,
                        kHeartbeat));
  check_invalid(above, Errc::frame_too_large, "1048577");
}

TEST_CASE("FrameDecoder rejects a protocol version other than 1") {
  for (std::uint8_t version : {std::uint8_t{0}, std::uint8_t{2}, std::uint8_t{255}}) {
    CAPTURE(static_cast<int>(version));
    FrameDecoder decoder;
    decoder.feed(raw_header(0, version, 0, kHeartbeat));
    check_invalid(decoder, Errc::bad_version, "protocol version " + std::to_string(version));
  }
}

TEST_CASE("FrameDecoder rejects an unknown message type number") {
  for (std::uint16_t type :
       {std::uint16_t{0}, std::uint16_t{6}, std::uint16_t{15}, std::uint16_t{999}, std::uint16_t{0xffff}}) {
    CAPTURE(type);
    FrameDecoder decoder;
    decoder.feed(raw_header(2, kProtocolVersion, 0, type));
    check_invalid(decoder, Errc::unknown_type, "unknown message type " + std::to_string(type));
  }
}

TEST_CASE("FrameDecoder rejects reserved flag bits") {
  for (std::uint8_t flags :
       {std::uint8_t{0x10}, std::uint8_t{0x20}, std::uint8_t{0x40}, std::uint8_t{0x80}, std::uint8_t{0xff}}) {
    CAPTURE(static_cast<int>(flags));
    FrameDecoder decoder;
    decoder.feed(raw_header(0, kProtocolVersion, flags, kHeartbeat));
    check_invalid(decoder, Errc::malformed_frame, "unknown flag bits");
  }
}

TEST_CASE("FrameDecoder rejects a reply that also requests a confirmation") {
  for (std::uint8_t flags :
       {std::uint8_t{kFlagReply | kFlagAckRequested}, std::uint8_t{kFlagReply | kFlagReplyRequested},
        std::uint8_t{kFlagReply | kFlagAckRequested | kFlagReplyRequested | kFlagBinary}}) {
    CAPTURE(static_cast<int>(flags));
    FrameDecoder decoder;
    decoder.feed(raw_header(0, kProtocolVersion, flags, kHeartbeat, 1, 1));
    check_invalid(decoder, Errc::malformed_frame, "reply cannot request a confirmation");
  }
}

TEST_CASE("FrameDecoder rejects an HTTP request as a wrong version") {
  FrameDecoder decoder;
  const std::string_view http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  decoder.feed(Bytes(http.begin(), http.end()));
  check_invalid(decoder, Errc::bad_version, "protocol version");
}

TEST_CASE("FrameDecoder survives garbage byte streams and ends need_more or invalid") {
  std::uint32_t state = 12345;
  auto next_byte = [&state] {
    state = state * 1103515245u + 12345u;
    return static_cast<std::uint8_t>(state >> 16);
  };
  for (int round = 0; round < 500; ++round) {
    CAPTURE(round);
    Bytes garbage(static_cast<std::size_t>(1 + round % 97));
    for (auto& b : garbage) b = next_byte();
    // Half the rounds start with a plausible header, so later checks get exercised too.
    if (round % 2 == 0 && garbage.size() >= kFrameHeaderSize) {
      garbage[0] = 0;
      garbage[1] = 0;
      garbage[4] = kProtocolVersion;
      garbage[5] &= kKnownFlags;
    }
    FrameDecoder decoder(64);
    const Status s = drain(decoder, garbage);
    REQUIRE((s == Status::need_more || s == Status::invalid));
    if (s == Status::invalid) {
      CHECK(decoder.error_code());
      CHECK_FALSE(decoder.error_detail().empty());
    }
    const Status end = decoder.finish();
    CHECK((end == Status::complete || end == Status::invalid));
    if (end == Status::invalid) CHECK_FALSE(decoder.error_detail().empty());
  }
}

TEST_CASE("FrameDecoder stays invalid after an error, whatever is fed next") {
  FrameDecoder decoder;
  decoder.feed(raw_header(0, 7, 0, kHeartbeat));
  Frame f;
  REQUIRE(decoder.next(f) == Status::invalid);
  const std::error_code code = decoder.error_code();
  const std::string detail = decoder.error_detail();
  decoder.feed(encode_frame(make_frame(MessageType::ack, 0, 0, 0, "{}")));
  CHECK(decoder.buffered() == 0);
  CHECK(decoder.next(f) == Status::invalid);
  CHECK(decoder.next(f) == Status::invalid);
  CHECK(decoder.finish() == Status::invalid);
  CHECK(decoder.error_code() == code);
  CHECK(decoder.error_detail() == detail);
}

TEST_CASE("FrameDecoder returns the good frames before the bad one that follows them") {
  Bytes stream = encode_frame(make_frame(MessageType::heartbeat, 0, 0, 0, R"({"sent_us":5})"));
  const Bytes bad = raw_header(0, kProtocolVersion, 0x80, kHeartbeat);
  stream.insert(stream.end(), bad.begin(), bad.end());
  FrameDecoder decoder;
  decoder.feed(stream);
  Frame f;
  REQUIRE(decoder.next(f) == Status::complete);
  CHECK(f.payload_text() == R"({"sent_us":5})");
  check_invalid(decoder, Errc::malformed_frame, "unknown flag bits");
}

TEST_CASE("FrameDecoder leaves the output frame untouched when it needs more") {
  FrameDecoder decoder;
  Frame f = make_frame(MessageType::error, kFlagBinary, 9, 9, "keep");
  decoder.feed(raw_header(10, kProtocolVersion, 0, kHeartbeat));
  CHECK(decoder.next(f) == Status::need_more);
  CHECK(f.type == MessageType::error);
  CHECK(f.payload_text() == "keep");
}

// Streaming, as a link reads: next(input, out) straight from the bytes just read.

TEST_CASE("FrameDecoder streaming takes whole frames from the input and holds nothing between them") {
  Bytes stream;
  encode_frame(make_frame(MessageType::client_hello, kFlagReplyRequested, 0, 1, R"({"client":"x"})"), stream);
  encode_frame(make_frame(MessageType::ack, kFlagReply, 0, 1, "{}"), stream);
  FrameDecoder decoder;
  std::span<const std::uint8_t> input(stream);
  Frame f;
  REQUIRE(decoder.next(input, f) == Status::complete);
  CHECK(f.type == MessageType::client_hello);
  CHECK(f.payload_text() == R"({"client":"x"})");
  CHECK(input.size() == kFrameHeaderSize + 2);  // the ack is left in the input
  CHECK(decoder.buffered() == 0);
  REQUIRE(decoder.next(input, f) == Status::complete);
  CHECK(f.type == MessageType::ack);
  CHECK(f.is_reply());
  CHECK(input.empty());
  CHECK(decoder.next(input, f) == Status::need_more);
  CHECK(decoder.buffered() == 0);
  CHECK(decoder.finish() == Status::complete);
}

TEST_CASE("FrameDecoder streaming checks a header before its payload arrives and stays invalid") {
  FrameDecoder decoder(100);
  const Bytes header = raw_header(101, kProtocolVersion, 0, kHeartbeat);
  std::span<const std::uint8_t> input(header.data(), 10);
  Frame f;
  CHECK(decoder.next(input, f) == Status::need_more);
  CHECK(decoder.buffered() == 10);
  input = std::span<const std::uint8_t>(header.data() + 10, header.size() - 10);
  CHECK(decoder.next(input, f) == Status::invalid);
  CHECK(decoder.error_code() == make_error_code(Errc::frame_too_large));
  CHECK(decoder.buffered() == 0);
  const Bytes good = encode_frame(make_frame(MessageType::ack, 0, 0, 0, "{}"));
  std::span<const std::uint8_t> more(good);
  CHECK(decoder.next(more, f) == Status::invalid);
}

TEST_CASE("FrameDecoder streaming finish reports a payload truncated at end of stream") {
  const Bytes frame = encode_frame(make_frame(MessageType::ack, 0, 0, 0, "0123456789"));
  FrameDecoder decoder;
  std::span<const std::uint8_t> input(frame.data(), frame.size() - 3);
  Frame f;
  CHECK(decoder.next(input, f) == Status::need_more);
  CHECK(decoder.buffered() == frame.size() - 3);
  CHECK(decoder.finish() == Status::invalid);
  CHECK(contains(decoder.error_detail(), "truncated"));
}

TEST_CASE("FrameDecoder streaming keeps its buffer through a stream of large frames, and none for small ones") {
  FrameDecoder decoder;
  Frame f;
  // A 63 KiB chunk of device data (InbandChannel::kStreamChunk) arrives in 16 KiB reads, as TLS
  // records bring it.
  const Bytes large =
      encode_frame(make_frame(MessageType::ack, kFlagBinary, 3, 0, std::string(63 * 1024, 'x')));
  for (int round = 0; round < 2; ++round) {
    std::vector<Status> statuses;
    for (std::size_t at = 0; at < large.size(); at += 16 * 1024) {
      std::span<const std::uint8_t> piece(large.data() + at, std::min<std::size_t>(16 * 1024, large.size() - at));
      statuses.push_back(decoder.next(piece, f));
      CHECK(piece.empty());
    }
    CHECK(statuses.back() == Status::complete);
    CHECK(f.payload.size() == 63 * 1024);
    CHECK(f.filament == 3);
    CHECK(decoder.storage() >= 63 * 1024);  // kept for the next chunk
  }
  decoder.release_storage();  // what the link does once idle
  CHECK(decoder.storage() == 0);
  // A small frame that happened to span two reads gives its buffer back at once.
  const Bytes small = encode_frame(make_frame(MessageType::ack, 0, 0, 0, std::string(3000, 'y')));
  std::span<const std::uint8_t> first(small.data(), 1000);
  CHECK(decoder.next(first, f) == Status::need_more);
  CHECK(decoder.storage() > 0);
  decoder.release_storage();  // never while a frame is being filled
  CHECK(decoder.buffered() == 1000);
  std::span<const std::uint8_t> rest(small.data() + 1000, small.size() - 1000);
  REQUIRE(decoder.next(rest, f) == Status::complete);
  CHECK(f.payload_text() == std::string(3000, 'y'));
  CHECK(decoder.storage() == 0);
}

}  // namespace
}  // namespace dtu::common
