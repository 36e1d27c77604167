#pragma once
// Field readers for from_json of records and messages, written once for every decoder: they
// name the field in every error, and integer fields must hold an integer within the C++ type's
// range (nlohmann would wrap -1, truncate 1.5, and convert 1e300 with undefined behaviour).
// They throw std::invalid_argument; decoders catch it (and nlohmann's exceptions).
// Stateless, thread-safe.

#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace dtu::common {

template <typename T>
void put_optional(nlohmann::json& j, const char* key, const std::optional<T>& value) {
  if (value) {
    j[key] = *value;
  } else {
    j[key] = nullptr;
  }
}

// The value at `key`; its absence names the key.
inline const nlohmann::json& required_value(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) throw std::invalid_argument(std::string("missing field '") + key + "'");
  return *it;
}

// The value at `key`, or nullptr when absent or null.
inline const nlohmann::json* optional_value(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

// nlohmann converts any JSON number to any C++ number: -1 wraps, 1.5 truncates and 1e300 is
// undefined behaviour. A peer's integer field must hold an integer in the field's range.
template <typename T>
T to_integer(const nlohmann::json& v, const char* key) {
  if (v.is_number_unsigned()) {
    if (std::in_range<T>(v.get<std::uint64_t>())) return static_cast<T>(v.get<std::uint64_t>());
  } else if (v.is_number_integer()) {
    if (std::in_range<T>(v.get<std::int64_t>())) return static_cast<T>(v.get<std::int64_t>());
  }
  throw std::invalid_argument(std::string("field '") + key + "': expected an integer in [" +
                              std::to_string(+std::numeric_limits<T>::min()) + ", " +
                              std::to_string(+std::numeric_limits<T>::max()) + "]");
}

// nlohmann's type errors do not name the field ("type must be string, but is number"); these
// say which field was wrong.
// A required field.
template <typename T>
T field(const nlohmann::json& j, const char* key) {
  try {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      return to_integer<T>(required_value(j, key), key);
    } else {
      return required_value(j, key).template get<T>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("field '") + key + "': " + e.what());
  }
}

// An optional field: absent or null gives nullopt.
template <typename T>
std::optional<T> optional_field(const nlohmann::json& j, const char* key) {
  try {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      const nlohmann::json* value = optional_value(j, key);
      if (value == nullptr) return std::nullopt;
      return to_integer<T>(*value, key);
    } else {
      const nlohmann::json* value = optional_value(j, key);
      if (value == nullptr) return std::nullopt;
      return value->template get<T>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("field '") + key + "': " + e.what());
  }
}

// A field with a default when absent.
template <typename T>
T field_or(const nlohmann::json& j, const char* key, T fallback) {
  try {
    return j.value(key, std::move(fallback));
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("field '") + key + "': " + e.what());
  }
}

// Exactly four hex digits ("04b8"); names the key on failure.
std::uint16_t parse_hex16(const nlohmann::json& j, const char* key);

}  // namespace dtu::common
