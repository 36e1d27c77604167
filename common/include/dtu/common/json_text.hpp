#pragma once
// JsonText: writes JSON straight into a string, byte for byte as nlohmann's dump() (no indent)
// writes the same value, for the encodings on hot paths (the messages of an allocation, a device
// record per device event), where building an nlohmann object first cost more than the rest of
// the work (docs/performance.md). Each message's encode_fast beside its declaration says which.
//
//   std::string out;
//   JsonText(out).open_object().key("a").number(1).key("b").string("x").close_object();
//
// The caller's part of the bargain, since it is what makes the bytes nlohmann's:
// - keys in sorted (byte-wise) order within each object, as nlohmann's std::map keeps them;
// - only plain strings (is_plain_json_string) as keys and values: nlohmann escapes the rest and
//   replaces invalid UTF-8, so a value with any other byte is encoded through nlohmann instead.

#include <charconv>
#include <concepts>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>

namespace dtu::common {

// Printable ASCII without '"' or '\': written into JSON as it is, by nlohmann and by JsonText.
inline bool is_plain_json_string(std::string_view s) {
  for (const char c : s) {
    if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return false;
  }
  return true;
}

// A string JsonText may write as it is, or none (written as null).
inline bool plain_or_absent(const std::optional<std::string>& s) {
  return !s || is_plain_json_string(*s);
}

class JsonText {
 public:
  explicit JsonText(std::string& out) : out_(out) {}

  JsonText& open_object() { return open('{'); }
  JsonText& close_object() { return close('}'); }
  JsonText& open_array() { return open('['); }
  JsonText& close_array() { return close(']'); }

  // REQUIRES: is_plain_json_string(name)
  JsonText& key(std::string_view name) {
    separate();
    quoted(name);
    out_.push_back(':');
    first_ = true;  // the value that follows takes no comma
    return *this;
  }
  // REQUIRES: is_plain_json_string(value)
  JsonText& string(std::string_view value) {
    separate();
    quoted(value);
    return *this;
  }
  // The string, or null when there is none (as put_optional writes it).
  // REQUIRES: !value or is_plain_json_string(*value)
  JsonText& string_or_null(const std::optional<std::string>& value) {
    return value ? string(*value) : null();
  }
  // The number, or null when there is none (as put_optional writes it).
  template <std::integral T>
  JsonText& number_or_null(const std::optional<T>& value) {
    return value ? number(*value) : null();
  }
  template <std::integral T>
  requires(!std::same_as<T, bool>) JsonText& number(T value) {
    separate();
    char digits[24];
    const auto end = std::to_chars(std::begin(digits), std::end(digits), value).ptr;
    out_.append(digits, end);
    return *this;
  }
  JsonText& boolean(bool value) { return literal(value ? "true" : "false"); }
  JsonText& null() { return literal("null"); }
  // A value encoded already (encode_device's record), copied in as it is.
  JsonText& encoded(std::string_view json) { return literal(json); }

 private:
  void separate() {
    if (!first_) out_.push_back(',');
    first_ = false;
  }
  void quoted(std::string_view text) {
    out_.push_back('"');
    out_.append(text);
    out_.push_back('"');
  }
  JsonText& open(char bracket) {
    separate();
    out_.push_back(bracket);
    first_ = true;
    return *this;
  }
  JsonText& close(char bracket) {
    out_.push_back(bracket);
    first_ = false;
    return *this;
  }
  JsonText& literal(std::string_view text) {
    separate();
    out_.append(text);
    return *this;
  }

  std::string& out_;
  bool first_ = true;
};

struct Stamp;
struct DeviceRecord;
// A stamp as to_json(Stamp) writes it (records.cpp): a device record's, a lease request's fence.
void write_stamp(JsonText& out, const Stamp& stamp);
// True when every string of the record is plain (is_plain_json_string), so write_device may
// write it.
bool is_plain_device(const DeviceRecord& record);
// A device record as to_json(DeviceRecord) writes it (records.cpp).
// REQUIRES: is_plain_device(record)
void write_device(JsonText& out, const DeviceRecord& record);

struct AllocateMsg;
struct ReleaseMsg;
// A service's allocate and release as their to_json writes them (messages.cpp), on their own and
// inside the owner's peer_allocate and peer_release (group_messages.cpp).
// REQUIRES: every string of the message plain (is_plain_json_string)
void write_allocate(JsonText& out, const AllocateMsg& m);
void write_release(JsonText& out, const ReleaseMsg& m);

}  // namespace dtu::common
