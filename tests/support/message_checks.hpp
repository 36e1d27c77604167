// Helpers for the message tests (tests/common/*messages_test.cpp): a frame carrying any JSON
// under a type, and the round trip every message must survive (to_frame, the wire encoding, the
// frame decoder, from_frame). doctest assertions; test thread only.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "dtu/common/frame.hpp"
#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/messages.hpp"

namespace dtu::testing {

// A frame of `type` whose payload is `j` as JSON text, whatever the message's schema says.
inline common::Frame object_frame(common::MessageType type, const nlohmann::json& j) {
  const std::string text = j.dump();
  common::Frame f;
  f.type = type;
  f.payload.assign(text.begin(), text.end());
  return f;
}

// `msg` encoded, sent through the frame codec and decoded again; REQUIREs that it decodes.
template <typename M>
M round_trip(const M& msg, std::uint32_t filament = 0) {
  const common::Frame sent = common::to_frame(msg, filament);
  CHECK(sent.type == M::kType);
  CHECK(sent.filament == filament);
  // A plain message: no reply or request flags (a binary message carries kFlagBinary).
  CHECK((sent.flags & ~common::kFlagBinary) == 0);
  CHECK(sent.txn == 0);
  common::FrameDecoder decoder;
  decoder.feed(common::encode_frame(sent));
  common::Frame received;
  REQUIRE(decoder.next(received) == common::FrameDecoder::Status::complete);
  auto result = common::from_frame<M>(received);
  REQUIRE_MESSAGE(result.ok(), result.error().describe());
  return std::move(result).value();
}

}  // namespace dtu::testing
