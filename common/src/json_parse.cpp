#include "dtu/common/json_parse.hpp"

#include <cctype>
#include <cstdint>
#include <string>

#include "simdjson_index.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

// The value of `element`, typed as nlohmann's parser types it: a non-negative integer is
// unsigned, a negative one signed, a number with a fraction or an exponent a double. simdjson
// limits nesting to 1024, which bounds the recursion.
json to_json_value(simdjson::dom::element element) {
  using simdjson::dom::element_type;
  switch (element.type()) {
    case element_type::OBJECT: {
      // A named copy: the range of a for must not be a reference into a temporary result.
      const simdjson::dom::object fields = element.get_object().value_unsafe();
      json::object_t object;
      for (const simdjson::dom::key_value_pair field : fields) {
        // operator[]: of a repeated key the last value stands, as with nlohmann's parser.
        object[std::string(field.key)] = to_json_value(field.value);
      }
      return json(std::move(object));
    }
    case element_type::ARRAY: {
      const simdjson::dom::array items = element.get_array().value_unsafe();
      json::array_t array;
      for (const simdjson::dom::element item : items) {
        array.push_back(to_json_value(item));
      }
      return json(std::move(array));
    }
    case element_type::STRING:
      return json(std::string(element.get_string().value_unsafe()));
    case element_type::INT64: {
      const std::int64_t value = element.get_int64().value_unsafe();
      if (value >= 0) return json(static_cast<std::uint64_t>(value));
      return json(value);
    }
    case element_type::UINT64:
      return json(element.get_uint64().value_unsafe());
    case element_type::DOUBLE:
      return json(element.get_double().value_unsafe());
    case element_type::BOOL:
      return json(element.get_bool().value_unsafe());
    case element_type::NULL_VALUE:
      break;
  }
  return json(nullptr);
}

// Whether `text` may hold the number -0 (an integer zero with a minus sign): nlohmann types it
// signed, where simdjson's value is an integer zero like any other. A "-0" that ends a token after
// ':', '[' or ',' counts, in a string too: such text only takes the slower parser.
bool may_hold_minus_zero(std::string_view text) {
  for (std::size_t at = text.find("-0"); at != std::string_view::npos; at = text.find("-0", at + 1)) {
    const std::size_t next = at + 2;
    if (next < text.size() && (std::isdigit(static_cast<unsigned char>(text[next])) != 0 ||
                               text[next] == '.' || text[next] == 'e' || text[next] == 'E')) {
      continue;  // -0.5, -0e1: not an integer; -01 is refused by both
    }
    const std::size_t before = text.find_last_not_of(" \t\n\r", at == 0 ? 0 : at - 1);
    if (at == 0 || before == std::string_view::npos || text[before] == ':' || text[before] == '[' ||
        text[before] == ',') {
      return true;
    }
  }
  return false;
}

}  // namespace

namespace detail {

std::optional<simdjson::dom::element> simdjson_index(std::string_view text) {
  // Empty text (refused by both) may come with a null data(), which simdjson would copy from.
  if (text.empty() || text.size() > kFastParseMaxBytes || may_hold_minus_zero(text)) return std::nullopt;
  thread_local simdjson::dom::parser parser(kFastParseMaxBytes);
  simdjson::dom::element root;
  // The text is copied into a padded buffer of the parser's: simdjson reads past the end.
  if (parser.parse(text.data(), text.size(), /*realloc_if_needed=*/true).get(root) != simdjson::SUCCESS) {
    return std::nullopt;
  }
  return root;
}

}  // namespace detail

json parse_json(std::string_view text) {
  if (const auto root = detail::simdjson_index(text)) return to_json_value(*root);
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

}  // namespace dtu::common
