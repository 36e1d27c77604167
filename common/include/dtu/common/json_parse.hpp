#pragma once
// parse_json: JSON text into nlohmann::json, as nlohmann::json::parse(text, nullptr, false) does
// (the same values; the same texts refused, as a discarded value), about twice as fast.
//
// Every message a link receives is parsed, and nlohmann's parser runs ~100 instructions a byte:
// half of a manager's work per attach was parsing the device record (docs/performance.md).
// simdjson validates and indexes the text first, then the value is built from its index.
// Whatever simdjson refuses — invalid JSON, and also valid JSON it does not take: a byte-order
// mark, numbers beyond 64 bits, nesting deeper than 1024 — texts above kFastParseMaxBytes, and
// texts that may hold the number -0 (signed for nlohmann, a plain zero for simdjson) go to
// nlohmann's own parser, so what is accepted, and as what type, does not change. A differential
// check in tests/fuzz/message_fuzz.cpp holds the two parsers equal.
//
// Thread-safe: each thread keeps its own simdjson parser (its buffers sized to the largest text it
// parsed, at most kFastParseMaxBytes).

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

namespace dtu::common {

inline constexpr std::size_t kFastParseMaxBytes = 64 * 1024;

nlohmann::json parse_json(std::string_view text);

}  // namespace dtu::common
