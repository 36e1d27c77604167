#include "dtu/common/frame.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/frame_decoder.hpp"

namespace dtu::common {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes bytes_of(std::string_view text) {
  return Bytes(text.begin(), text.end());
}

Frame make_frame(MessageType type, std::uint8_t flags, std::uint32_t filament, std::uint32_t txn,
                 Bytes payload) {
  Frame f;
  f.type = type;
  f.flags = flags;
  f.filament = filament;
  f.txn = txn;
  f.payload = std::move(payload);
  return f;
}

// Encodes `in`, decodes it in one feed, and returns the single frame that comes out.
Frame round_trip(const Frame& in) {
  FrameDecoder decoder;
  decoder.feed(encode_frame(in));
  Frame out;
  REQUIRE(decoder.next(out) == FrameDecoder::Status::complete);
  CHECK(decoder.next(out) == FrameDecoder::Status::need_more);
  CHECK(decoder.buffered() == 0);
  CHECK(decoder.finish() == FrameDecoder::Status::complete);
  return out;
}

void check_same(const Frame& a, const Frame& b) {
  CHECK(a.type == b.type);
  CHECK(a.flags == b.flags);
  CHECK(a.filament == b.filament);
  CHECK(a.txn == b.txn);
  CHECK(a.payload == b.payload);
}

TEST_CASE("encode_frame matches the dtu_hello header of docs/protocol.md") {
  const std::string payload = R"({"agent_version":"0.1.0","boot_epoch":1732185600000,"dtu":"dtu-7"})";
  REQUIRE(payload.size() == 0x42);
  const Frame f = make_frame(MessageType::dtu_hello, kFlagReplyRequested, 0, 1, bytes_of(payload));
  const Bytes header{0x00, 0x00, 0x00, 0x42, 0x01, 0x08, 0x00, 0x10,
                     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01};
  Bytes expected = header;
  expected.insert(expected.end(), payload.begin(), payload.end());
  CHECK(encode_frame(f) == expected);
}

TEST_CASE("encode_frame writes every header field big-endian") {
  const Frame f = make_frame(MessageType::device_list, kFlagBinary | kFlagReply, 0x01020304, 0xa0b0c0d0,
                             Bytes{0xde, 0xad});
  const Bytes expected{0x00,
                       0x00,
                       0x00,
                       0x02,  // payload_length
                       kProtocolVersion,
                       0x03,  // version, flags
                       0x00,
                       67,  // type device_list
                       0x01,
                       0x02,
                       0x03,
                       0x04,  // filament
                       0xa0,
                       0xb0,
                       0xc0,
                       0xd0,  // txn
                       0xde,
                       0xad};
  CHECK(encode_frame(f) == expected);
}

TEST_CASE("encode_frame appends to the bytes already in the output") {
  Bytes out{0xaa, 0xbb};
  encode_frame(make_frame(MessageType::ack, 0, 0, 0, {}), out);
  REQUIRE(out.size() == 2 + kFrameHeaderSize);
  CHECK(out[0] == 0xaa);
  CHECK(out[1] == 0xbb);
  CHECK(out[2 + 4] == kProtocolVersion);
}

TEST_CASE("encode_frame grows the output geometrically as frames queue behind each other") {
  // A link queues every frame of a burst into one buffer; a reallocation per frame would copy the
  // whole queue again at each one.
  Bytes out;
  const Frame frame = make_frame(MessageType::heartbeat, 0, 0, 0, Bytes(200, 'h'));
  int reallocations = 0;
  const std::uint8_t* storage = nullptr;
  for (int i = 0; i < 1000; ++i) {
    encode_frame(frame, out);
    if (out.data() != storage) ++reallocations;
    storage = out.data();
  }
  CHECK(out.size() == 1000 * (kFrameHeaderSize + 200));
  CHECK(reallocations <= 12);  // doubling from one frame: log2(1000) + 1
}

TEST_CASE("An empty payload encodes to the bare header and round-trips") {
  const Frame in = make_frame(MessageType::ack, kFlagReply, 3, 9, {});
  const Bytes encoded = encode_frame(in);
  CHECK(encoded.size() == kFrameHeaderSize);
  CHECK(encoded[0] == 0);
  CHECK(encoded[3] == 0);
  const Frame out = round_trip(in);
  check_same(in, out);
  CHECK(out.payload.empty());
  CHECK(out.payload_text().empty());
}

TEST_CASE("A JSON payload round-trips and reads back as text") {
  const std::string text = R"({"client":"devmgrctl","n":[1,2,3]})";
  const Frame in = make_frame(MessageType::client_hello, kFlagReplyRequested, 0, 1, bytes_of(text));
  const Frame out = round_trip(in);
  check_same(in, out);
  CHECK(out.payload_text() == text);
  CHECK_FALSE(out.is_binary());
  CHECK(out.wants_reply());
}

TEST_CASE("A binary payload with every byte value round-trips unchanged") {
  Bytes payload;
  for (int i = 0; i < 512; ++i) payload.push_back(static_cast<std::uint8_t>(i % 256));
  const Frame in = make_frame(MessageType::device_attached, kFlagBinary | kFlagAckRequested, 5, 77, payload);
  const Frame out = round_trip(in);
  check_same(in, out);
  CHECK(out.is_binary());
  CHECK(out.wants_ack());
}

TEST_CASE("A tail encodes after the payload as one payload, read from the sender's bytes") {
  Bytes data;
  for (int i = 0; i < 3000; ++i) data.push_back(static_cast<std::uint8_t>(i * 7));
  Frame in = make_frame(MessageType::usb_out, kFlagBinary | kFlagReplyRequested, 3, 9, Bytes{1, 0, 0, 0});
  in.tail = data;
  CHECK(in.payload_size() == 4 + data.size());
  const Bytes wire = encode_frame(in);
  Bytes whole{1, 0, 0, 0};
  whole.insert(whole.end(), data.begin(), data.end());
  CHECK(wire ==
        encode_frame(make_frame(MessageType::usb_out, kFlagBinary | kFlagReplyRequested, 3, 9, whole)));
  data.assign(data.size(), 0);  // the encoding holds its own copy
  FrameDecoder decoder;
  decoder.feed(wire);
  Frame out;
  REQUIRE(decoder.next(out) == FrameDecoder::Status::complete);
  CHECK(out.payload == whole);
  CHECK(out.tail.empty());
}

TEST_CASE("The largest filament and txn values round-trip") {
  const Frame in = make_frame(MessageType::heartbeat, 0, 0xffffffffu, 0xffffffffu, bytes_of("{}"));
  const Frame out = round_trip(in);
  check_same(in, out);
  CHECK(out.filament == 0xffffffffu);
  CHECK(out.txn == 0xffffffffu);
}

TEST_CASE("Every known message type number round-trips") {
  for (std::uint16_t n = 0; n < 300; ++n) {
    if (!is_known_message_type(n)) continue;
    CAPTURE(n);
    const Frame in = make_frame(static_cast<MessageType>(n), 0, n, n, bytes_of("{}"));
    check_same(in, round_trip(in));
  }
}

TEST_CASE("Every legal flag combination round-trips") {
  for (std::uint8_t flags = 0; flags <= kKnownFlags; ++flags) {
    const bool reply = (flags & kFlagReply) != 0;
    const bool confirm = (flags & (kFlagAckRequested | kFlagReplyRequested)) != 0;
    if (reply && confirm) continue;
    CAPTURE(static_cast<int>(flags));
    const Frame in = make_frame(MessageType::error, flags, 1, 2, Bytes{1, 2, 3});
    check_same(in, round_trip(in));
  }
}

TEST_CASE("Frame flag accessors read their own bit only") {
  Frame f;
  CHECK_FALSE(f.is_reply());
  CHECK_FALSE(f.wants_ack());
  CHECK_FALSE(f.wants_reply());
  CHECK_FALSE(f.is_binary());
  f.flags = kFlagReply;
  CHECK(f.is_reply());
  CHECK_FALSE(f.wants_ack());
  f.flags = kFlagAckRequested;
  CHECK(f.wants_ack());
  CHECK_FALSE(f.wants_reply());
  f.flags = kFlagReplyRequested;
  CHECK(f.wants_reply());
  CHECK_FALSE(f.is_binary());
  f.flags = kFlagBinary;
  CHECK(f.is_binary());
  CHECK_FALSE(f.is_reply());
}

TEST_CASE("A default Frame is an empty ack on the control filament") {
  const Frame f;
  CHECK(f.type == MessageType::ack);
  CHECK(f.flags == 0);
  CHECK(f.filament == 0);
  CHECK(f.txn == 0);
  CHECK(f.payload.empty());
}

}  // namespace
}  // namespace dtu::common
