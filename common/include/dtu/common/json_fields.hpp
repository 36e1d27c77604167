#pragma once
// Helpers for to_json/from_json of records and messages: optional fields, and hex-string
// 16-bit ids ("04b8"). They throw std::invalid_argument or nlohmann exceptions on bad input;
// decoders catch both. Stateless, thread-safe.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

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

// Absent or null → nullopt.
template <typename T>
std::optional<T> get_optional(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return it->template get<T>();
}

// A required field; its absence names the key.
template <typename T>
T get_required(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) throw std::invalid_argument(std::string("missing field '") + key + "'");
  return it->template get<T>();
}

// Parses exactly four hex digits ("04b8"); names the key on failure.
std::uint16_t parse_hex16(const nlohmann::json& j, const char* key);

// An integer in [0, 255]; names the key on failure.
std::uint8_t get_u8(const nlohmann::json& j, const char* key);

}  // namespace dtu::common
