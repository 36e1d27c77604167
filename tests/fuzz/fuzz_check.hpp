#pragma once
// Shared by the fuzz targets: FUZZ_REQUIRE, which traps (so libFuzzer records a crash and the
// replay test fails) when a decoder breaks one of its promises, and check_message<M>, the
// properties every message decoder must keep for any frame. Single-threaded, like libFuzzer.

#include <cstdio>
#include <exception>
#include <system_error>

#include <nlohmann/json.hpp>

#include "dtu/common/errors.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/messages.hpp"

namespace dtu::fuzz {

// A broken decoder contract: say which one, then trap. Not CHECK: CHECK is for the decoders'
// own invariants, this is the fuzzer's verdict on them.
[[noreturn]] inline void violated(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz property violated: %s\n", file, line, what);
  std::fflush(stderr);
  __builtin_trap();
}

#define FUZZ_REQUIRE(cond)                                              \
  do {                                                                  \
    if (!(cond)) ::dtu::fuzz::violated(#cond, __FILE__, __LINE__);      \
  } while (false)

inline bool has_code(const common::Error& error, common::Errc code) {
  return error.code == common::make_error_code(code);
}

// from_frame<M> on a frame of M's type: never throws; a binary or undecodable payload is
// bad_payload; a message it accepts re-encodes (to_frame) into a frame that decodes to the same
// message, so a relayed message never changes or fails on the way.
template <typename M>
void check_message(const common::Frame& frame) {
  using common::Errc;
  try {
    const common::Result<M> decoded = common::from_frame<M>(frame);
    if (frame.is_binary()) {
      FUZZ_REQUIRE(!decoded.ok() && has_code(decoded.error(), Errc::bad_payload));
      return;
    }
    if (!decoded.ok()) {
      FUZZ_REQUIRE(has_code(decoded.error(), Errc::bad_payload));
      FUZZ_REQUIRE(!decoded.error().detail.empty());
      return;
    }
    const common::Frame again = common::to_frame(decoded.value(), frame.filament);
    FUZZ_REQUIRE(again.type == frame.type && again.filament == frame.filament && again.flags == 0);
    const common::Result<M> redecoded = common::from_frame<M>(again);
    FUZZ_REQUIRE(redecoded.ok());
    FUZZ_REQUIRE(nlohmann::json(redecoded.value()) == nlohmann::json(decoded.value()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    violated("no exception escapes from_frame/to_frame", __FILE__, __LINE__);
  }
}

// from_frame<M> on a frame of another type: unknown_type, whatever the payload.
template <typename M>
void check_refuses(const common::Frame& frame) {
  if (frame.type == M::kType) return;
  try {
    const common::Result<M> decoded = common::from_frame<M>(frame);
    FUZZ_REQUIRE(!decoded.ok() && has_code(decoded.error(), common::Errc::unknown_type));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    violated("no exception escapes from_frame", __FILE__, __LINE__);
  }
}

template <typename... Ms>
void check_all_refuse(const common::Frame& frame) {
  (check_refuses<Ms>(frame), ...);
}

// The decoder of frame.type, through check_message. The switch has no default, so a MessageType
// added without a case here fails to compile (-Wswitch with -Werror) instead of going unfuzzed.
// REQUIRES: is_known_message_type(frame.type).
inline void check_own_message(const common::Frame& frame) {
  using namespace common;  // NOLINT: the message list reads better unqualified
  switch (frame.type) {
    case MessageType::ack: check_message<AckMsg>(frame); break;
    case MessageType::error: check_message<ErrorMsg>(frame); break;
    case MessageType::heartbeat: check_message<HeartbeatMsg>(frame); break;
    case MessageType::filament_open: check_message<FilamentOpenMsg>(frame); break;
    case MessageType::filament_close: check_message<FilamentCloseMsg>(frame); break;
    case MessageType::dtu_hello: check_message<DtuHelloMsg>(frame); break;
    case MessageType::dtu_welcome: check_message<DtuWelcomeMsg>(frame); break;
    case MessageType::device_snapshot: check_message<DeviceSnapshotMsg>(frame); break;
    case MessageType::device_attached: check_message<DeviceAttachedMsg>(frame); break;
    case MessageType::device_detached: check_message<DeviceDetachedMsg>(frame); break;
    case MessageType::client_hello: check_message<ClientHelloMsg>(frame); break;
    case MessageType::client_welcome: check_message<ClientWelcomeMsg>(frame); break;
    case MessageType::list_devices: check_message<ListDevicesMsg>(frame); break;
    case MessageType::device_list: check_message<DeviceListMsg>(frame); break;
  }
}

// Every message type in messages.hpp against one frame: the decoder of frame.type decodes it,
// every other decoder refuses it. REQUIRES: is_known_message_type(frame.type).
inline void check_every_message(const common::Frame& frame) {
  using namespace common;  // NOLINT: the message list reads better unqualified
  check_own_message(frame);
  check_all_refuse<AckMsg, ErrorMsg, HeartbeatMsg, FilamentOpenMsg, FilamentCloseMsg, DtuHelloMsg,
                   DtuWelcomeMsg, DeviceSnapshotMsg, DeviceAttachedMsg, DeviceDetachedMsg, ClientHelloMsg,
                   ClientWelcomeMsg, ListDevicesMsg, DeviceListMsg>(frame);
}

}  // namespace dtu::fuzz
