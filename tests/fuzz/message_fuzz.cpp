// Fuzz target: the JSON decoders, each given the whole input as its text.
//   - parse_json (simdjson with nlohmann behind it) against nlohmann's parser: the same texts
//     accepted, as the same values of the same types;
//   - as the payload of a frame of every message type (from_frame; properties in fuzz_check.hpp);
//   - as a DeviceRecord: one it accepts survives to_json, dump, parse and from_json unchanged,
//     and encode_device writes what dump does;
//   - as the payload of the messages decode_fast reads (simdjson, no nlohmann value), and as the
//     record inside them: what decode_fast takes, from_json takes too, as the same value;
//   - as a configuration document, both parsed here (ConfigReader over the value) and read from a
//     file (ConfigReader::load): load returns a Result, never throws, and succeeds exactly when
//     the text is a JSON object; typed reads never store a value outside their range;
//   - as an endpoint ("host:port"): one parse_endpoint accepts prints back (to_string) as text it
//     parses to the same endpoint.

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/config.hpp"
#include "dtu/common/errors.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/group_messages.hpp"
#include "dtu/common/json_parse.hpp"
#include "dtu/common/message_type.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/service_messages.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::common::ConfigReader;
using dtu::common::Errc;
using dtu::fuzz::has_code;
using nlohmann::json;

// Filament of the frames built here; any value, the round trip must keep it.
constexpr std::uint32_t kFilament = 7;

void check_payloads(const std::uint8_t* data, std::size_t size) {
  dtu::common::Frame frame;
  frame.filament = kFilament;
  frame.payload.assign(data, data + size);
  // Every number the decoder accepts as a type; the message type ranges end at 255.
  for (unsigned value = 0; value <= 0xff; ++value) {
    const auto type = static_cast<std::uint16_t>(value);
    if (!dtu::common::is_known_message_type(type)) continue;
    frame.type = static_cast<dtu::common::MessageType>(type);
    dtu::fuzz::check_own_message(frame);
  }
}

// decode_fast of M on `text` against from_json: it may give up (from_frame then decodes through
// from_json), but what it takes from_json takes, as the same value.
template <typename M>
void check_fast_decoder(std::string_view text) {
  M fast;
  if (!dtu::common::decode_fast(text, fast)) return;
  const json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  FUZZ_REQUIRE(!doc.is_discarded());
  M slow;
  try {
    slow = doc.get<M>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "from_json refused what decode_fast took: %s\n", e.what());
    dtu::fuzz::violated("decode_fast takes only what from_json takes", __FILE__, __LINE__);
  }
  if constexpr (requires { fast.device.units; }) {
    FUZZ_REQUIRE(fast.device == slow.device);
    if constexpr (requires { fast.units; }) {
      FUZZ_REQUIRE(fast.finder_id == slow.finder_id);
      FUZZ_REQUIRE(fast.units == slow.units);
    }
  } else {
    FUZZ_REQUIRE(json(fast) == json(slow));  // the lease messages: every field
  }
}

void check_fast_decoders(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check_fast_decoder<dtu::common::DeviceAttachedMsg>(input);
  check_fast_decoder<dtu::common::DeviceChangedMsg>(input);
  check_fast_decoder<dtu::common::FinderMatchedMsg>(input);
  check_fast_decoder<dtu::common::FinderChangedMsg>(input);
  check_fast_decoder<dtu::common::LeaseRequestMsg>(input);
  check_fast_decoder<dtu::common::LeaseGrantedMsg>(input);
  check_fast_decoder<dtu::common::LeaseEndedMsg>(input);
  check_fast_decoder<dtu::common::AllocateMsg>(input);
  check_fast_decoder<dtu::common::ReleaseMsg>(input);
  check_fast_decoder<dtu::common::PeerAllocateMsg>(input);
  check_fast_decoder<dtu::common::PeerReleaseMsg>(input);
  // The input as the record inside each, where most of what they read is.
  const std::string attached = R"({"device":)" + std::string(input) + "}";
  check_fast_decoder<dtu::common::DeviceAttachedMsg>(attached);
  const std::string matched = R"({"finder_id":1,"units":[0,1],"device":)" + std::string(input) + "}";
  check_fast_decoder<dtu::common::FinderMatchedMsg>(matched);
}

// encode_fast of M against nlohmann's dump(): for a message from_json takes out of `doc`, the
// direct encoder gives up or writes the same bytes.
template <typename M>
void check_fast_encoder(const json& doc) {
  M m;
  try {
    m = doc.get<M>();
  } catch (const std::exception&) {
    return;  // refused: nothing to encode
  }
  std::string fast;
  if (!dtu::common::encode_fast(m, fast)) return;
  FUZZ_REQUIRE(fast == json(m).dump(-1, ' ', false, json::error_handler_t::replace));
}

void check_device_record(const json& doc) {
  dtu::common::DeviceRecord record;
  try {
    record = doc.get<dtu::common::DeviceRecord>();
  } catch (const std::exception&) {
    return;  // refused: the message decoders turn this into bad_payload
  }
  try {
    const std::string text = json(record).dump();
    const auto again = json::parse(text).get<dtu::common::DeviceRecord>();
    FUZZ_REQUIRE(again == record);
    // The managers' own encoder writes the same bytes, directly or through nlohmann.
    FUZZ_REQUIRE(dtu::common::encode_device(record) == text);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("an accepted DeviceRecord re-encodes and decodes", __FILE__, __LINE__);
  }
}

// Reads a handful of typed keys (top level and nested), then reject_unknown_keys().
void read_settings(ConfigReader& config) {
  // Sentinels outside every accepted range: a read either leaves them or stores a valid value.
  bool enabled = false;
  std::string name;
  std::string key_file;
  std::vector<std::string> peers;
  double ratio = 0;
  auto heartbeat = std::chrono::milliseconds(-1);
  auto connect_timeout = std::chrono::milliseconds(-1);
  std::int64_t heartbeat_ms = -1;
  std::uint16_t port = 7;
  std::uint16_t listen_port = 0;
  std::string deep;

  config.read("enabled", enabled);
  config.read("name", name);
  config.read("tls.key_file", key_file);
  config.read("peers", peers);
  config.read("ratio", ratio);
  config.read("heartbeat", heartbeat);
  config.read("timeouts.connect", connect_timeout);
  config.read_int("heartbeat_ms", heartbeat_ms, 100, 60000);
  config.read_int("port", port);
  config.read_int("listen.port", listen_port, 1);
  config.read("a.b.c", deep);
  config.reject_unknown_keys();

  FUZZ_REQUIRE(heartbeat.count() == -1 || heartbeat.count() >= 0);
  FUZZ_REQUIRE(connect_timeout.count() == -1 || connect_timeout.count() >= 0);
  FUZZ_REQUIRE(heartbeat_ms == -1 || (heartbeat_ms >= 100 && heartbeat_ms <= 60000));
  if (!config.ok()) {
    const dtu::common::Error error = config.error();
    FUZZ_REQUIRE(has_code(error, Errc::config_error));
    FUZZ_REQUIRE(!error.detail.empty());
  }
}

void check_config(const json& doc) {
  try {
    ConfigReader config(doc, "fuzz.json");
    if (!doc.is_object()) FUZZ_REQUIRE(!config.ok());
    read_settings(config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes ConfigReader", __FILE__, __LINE__);
  }
}

// ConfigReader::load over the input as a file: an anonymous in-memory file, reached through
// /proc/self/fd, so no run leaves a file behind.
void check_config_file(const std::uint8_t* data, std::size_t size, bool is_object) {
  static const int fd = memfd_create("config_fuzz", MFD_CLOEXEC);
  if (fd < 0) return;
  if (ftruncate(fd, 0) != 0) return;
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    auto loaded = ConfigReader::load(path);
    FUZZ_REQUIRE(loaded.ok() == is_object);
    if (loaded.ok()) {
      read_settings(*loaded);
    } else {
      FUZZ_REQUIRE(has_code(loaded.error(), Errc::config_error));
      FUZZ_REQUIRE(loaded.error().detail.starts_with(path + ":"));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes ConfigReader::load", __FILE__, __LINE__);
  }
}

void check_endpoint(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto endpoint = dtu::common::parse_endpoint(text);
  if (!endpoint.ok()) {
    FUZZ_REQUIRE(has_code(endpoint.error(), Errc::invalid_argument));
    return;
  }
  const auto again = dtu::common::parse_endpoint(endpoint->to_string());
  FUZZ_REQUIRE(again.ok());
  FUZZ_REQUIRE(*again == *endpoint);
}

}  // namespace

// The same value with the same type at every node: == alone holds 1 and 1.0, 0 and -0 equal.
bool same_typed(const json& a, const json& b) {
  if (a.type() != b.type() || a != b) return false;
  if (a.is_object()) {
    for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
      if (ia.key() != ib.key() || !same_typed(ia.value(), ib.value())) return false;
    }
  } else if (a.is_array()) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!same_typed(a[i], b[i])) return false;
    }
  } else if (a.is_number_float()) {
    return a.dump() == b.dump();  // -0.0 and 0.0
  }
  return true;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_payloads(data, size);
  check_fast_decoders(data, size);
  const json doc = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  // Every message is parsed by parse_json (simdjson, then nlohmann for what it refuses): it must
  // accept exactly what nlohmann accepts, as the same value of the same types.
  const json fast = dtu::common::parse_json(std::string_view(reinterpret_cast<const char*>(data), size));
  FUZZ_REQUIRE(fast.is_discarded() == doc.is_discarded());
  FUZZ_REQUIRE(doc.is_discarded() || same_typed(fast, doc));
  if (!doc.is_discarded()) {
    check_device_record(doc);
    check_fast_encoder<dtu::common::LeaseRequestMsg>(doc);
    check_fast_encoder<dtu::common::LeaseGrantedMsg>(doc);
    check_fast_encoder<dtu::common::DeviceAttachedMsg>(doc);
    check_fast_encoder<dtu::common::DeviceChangedMsg>(doc);
    check_fast_encoder<dtu::common::DeviceSnapshotMsg>(doc);
    check_fast_encoder<dtu::common::DeviceListMsg>(doc);
    check_fast_encoder<dtu::common::LeaseEndedMsg>(doc);
    check_fast_encoder<dtu::common::LeaseReleaseMsg>(doc);
    check_fast_encoder<dtu::common::AllocateMsg>(doc);
    check_fast_encoder<dtu::common::ReleaseMsg>(doc);
    check_fast_encoder<dtu::common::PeerAllocateMsg>(doc);
    check_fast_encoder<dtu::common::PeerReleaseMsg>(doc);
    check_config(doc);
  }
  check_config_file(data, size, !doc.is_discarded() && doc.is_object());
  check_endpoint(data, size);
  return 0;
}
