#pragma once
// The fast path parse_json and the record decoders share (json_parse.cpp): simdjson's index of a
// text, on a parser each thread keeps. Private to dtu_common: only the files built with
// simdjson's package define include it (common/CMakeLists.txt).

#include <optional>
#include <string_view>

#include <simdjson.h>

namespace dtu::common::detail {

// The root of simdjson's index of `text` when simdjson takes it with nlohmann's meaning (not
// above kFastParseMaxBytes, no possible -0, valid by simdjson's reading); nullopt otherwise. Valid
// until this thread's next call.
std::optional<simdjson::dom::element> simdjson_index(std::string_view text);

}  // namespace dtu::common::detail
