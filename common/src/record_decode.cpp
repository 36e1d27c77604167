// Decoders of the messages that carry a device record, straight from simdjson's index (the
// declarations are beside each message). Each reads exactly what from_json reads through
// nlohmann (records.cpp, messages.cpp, service_messages.cpp) and gives up — false, and from_frame
// decodes the text again through nlohmann, which names what is wrong — at anything else. Every
// field of an object is visited in order, so of a repeated key the last value stands, as with
// nlohmann's parser; keys that from_json does not read are skipped as it skips them. Each loop
// runs over a named copy of the object or array: the range of a for must not be a reference into
// a temporary result.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/service_messages.hpp"
#include "simdjson_index.hpp"

namespace dtu::common {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// An integer in T's range (to_integer in json_fields.hpp): a number with a fraction or an
// exponent is not one.
template <typename T>
bool read_integer(element value, T& out) {
  if (value.type() == element_type::INT64) {
    const std::int64_t v = value.get_int64().value_unsafe();
    if (!std::in_range<T>(v)) return false;
    out = static_cast<T>(v);
    return true;
  }
  if (value.type() == element_type::UINT64) {
    const std::uint64_t v = value.get_uint64().value_unsafe();
    if (!std::in_range<T>(v)) return false;
    out = static_cast<T>(v);
    return true;
  }
  return false;
}

bool read_string(element value, std::string& out) {
  if (value.type() != element_type::STRING) return false;
  out.assign(value.get_string().value_unsafe());
  return true;
}

// optional_field<std::string>: null is absent.
bool read_optional_string(element value, std::optional<std::string>& out) {
  if (value.type() == element_type::NULL_VALUE) {
    out.reset();
    return true;
  }
  if (value.type() != element_type::STRING) return false;
  out.emplace(value.get_string().value_unsafe());
  return true;
}

// parse_hex16: exactly four hex digits.
bool read_hex16(element value, std::uint16_t& out) {
  if (value.type() != element_type::STRING) return false;
  const auto v = parse_hex16(value.get_string().value_unsafe());
  if (!v) return false;
  out = *v;
  return true;
}

// The required fields of one object, as bits: got(n, read) marks field n and passes the read's
// result on; all(count) when every one of the first `count` came.
class Required {
 public:
  bool got(unsigned bit, bool read) {
    bits_ |= 1u << bit;
    return read;
  }
  bool all(unsigned count) const { return bits_ == (1u << count) - 1; }

 private:
  unsigned bits_ = 0;
};

bool read_stamp(element value, Stamp& out) {
  if (value.type() != element_type::OBJECT) return false;
  Required required;
  const simdjson::dom::object fields = value.get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    bool ok = true;
    if (field.key == "boot_epoch")
      ok = required.got(0, read_integer(field.value, out.boot_epoch));
    else if (field.key == "seq")
      ok = required.got(1, read_integer(field.value, out.seq));
    else if (field.key == "time_us")
      ok = required.got(2, read_integer(field.value, out.time_us));
    if (!ok) return false;
  }
  return required.all(3);
}

bool read_unit_state(element value, UnitState& out) {
  if (value.type() != element_type::STRING) return false;
  const std::string_view text = value.get_string().value_unsafe();
  if (text == "free")
    out = UnitState::free;
  else if (text == "allocated")
    out = UnitState::allocated;
  else if (text == "unavailable")
    out = UnitState::unavailable;
  else
    return false;
  return true;
}

// from_json(UnitRecord): "interfaces" may be absent (none), not null.
bool read_interfaces(element value, std::vector<std::uint8_t>& out) {
  if (value.type() != element_type::ARRAY) return false;
  out.clear();
  const simdjson::dom::array items = value.get_array().value_unsafe();
  for (const element item : items) {
    std::uint8_t n = 0;
    if (!read_integer(item, n)) return false;
    out.push_back(n);
  }
  return true;
}

bool read_unit(element value, UnitRecord& out) {
  if (value.type() != element_type::OBJECT) return false;
  Required required;
  const simdjson::dom::object fields = value.get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    const std::string_view key = field.key;
    bool ok = true;
    if (key == "unit")
      ok = required.got(0, read_integer(field.value, out.unit));
    else if (key == "class")
      ok = required.got(1, read_integer(field.value, out.cls));
    else if (key == "subclass")
      ok = required.got(2, read_integer(field.value, out.subclass));
    else if (key == "protocol")
      ok = required.got(3, read_integer(field.value, out.protocol));
    else if (key == "function")
      ok = required.got(4, read_string(field.value, out.function));
    else if (key == "state")
      ok = required.got(5, read_unit_state(field.value, out.state));
    else if (key == "interfaces")
      ok = read_interfaces(field.value, out.interfaces);
    else if (key == "holder")
      ok = read_optional_string(field.value, out.holder);
    else if (key == "lease")
      ok = read_optional_string(field.value, out.lease);
    if (!ok) return false;
  }
  return required.all(6);
}

bool read_units(element value, std::vector<UnitRecord>& out) {
  if (value.type() != element_type::ARRAY) return false;
  out.clear();
  const simdjson::dom::array items = value.get_array().value_unsafe();
  for (const element item : items) {
    if (!read_unit(item, out.emplace_back())) return false;
  }
  return true;
}

bool read_bool(element value, bool& out) {
  if (value.type() != element_type::BOOL) return false;
  out = value.get_bool().value_unsafe();
  return true;
}

// from_json(DeviceRecord). `out` starts as a default record: "bus", "owner" and "orphaned" may be
// absent (their defaults), not null.
bool read_device(element value, DeviceRecord& out) {
  if (value.type() != element_type::OBJECT) return false;
  Required required;
  const simdjson::dom::object fields = value.get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    const std::string_view key = field.key;
    bool ok = true;
    if (key == "dtu")
      ok = required.got(0, read_string(field.value, out.dtu));
    else if (key == "device")
      ok = required.got(1, read_string(field.value, out.device));
    else if (key == "vid")
      ok = required.got(2, read_hex16(field.value, out.vid));
    else if (key == "pid")
      ok = required.got(3, read_hex16(field.value, out.pid));
    else if (key == "bcd_device")
      ok = required.got(4, read_hex16(field.value, out.bcd_device));
    else if (key == "class")
      ok = required.got(5, read_integer(field.value, out.cls));
    else if (key == "subclass")
      ok = required.got(6, read_integer(field.value, out.subclass));
    else if (key == "protocol")
      ok = required.got(7, read_integer(field.value, out.protocol));
    else if (key == "units")
      ok = required.got(8, read_units(field.value, out.units));
    else if (key == "stamp")
      ok = required.got(9, read_stamp(field.value, out.stamp));
    else if (key == "bus")
      ok = read_string(field.value, out.bus);
    else if (key == "serial")
      ok = read_optional_string(field.value, out.serial);
    else if (key == "manufacturer")
      ok = read_optional_string(field.value, out.manufacturer);
    else if (key == "product")
      ok = read_optional_string(field.value, out.product);
    else if (key == "owner")
      ok = read_string(field.value, out.owner);
    else if (key == "orphaned")
      ok = read_bool(field.value, out.orphaned);
    if (!ok) return false;
  }
  return required.all(10);
}

// unit_array in service_messages.cpp: required, integers in u32 range.
bool read_unit_numbers(element value, std::vector<std::uint32_t>& out) {
  if (value.type() != element_type::ARRAY) return false;
  out.clear();
  const simdjson::dom::array items = value.get_array().value_unsafe();
  for (const element item : items) {
    std::uint32_t n = 0;
    if (!read_integer(item, n)) return false;
    out.push_back(n);
  }
  return true;
}

// {"device": record}: device_attached and device_changed.
template <typename M>
bool decode_device_message(std::string_view text, M& out) {
  const auto root = detail::simdjson_index(text);
  if (!root || root->type() != element_type::OBJECT) return false;
  bool device = false;
  const simdjson::dom::object fields = root->get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    if (field.key != "device") continue;
    out.device = DeviceRecord{};  // a repeated key: the last record, read from defaults
    if (!read_device(field.value, out.device)) return false;
    device = true;
  }
  return device;
}

// finder_matched and finder_changed.
template <typename M>
bool decode_finder_event(std::string_view text, M& out) {
  const auto root = detail::simdjson_index(text);
  if (!root || root->type() != element_type::OBJECT) return false;
  Required required;
  const simdjson::dom::object fields = root->get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    bool ok = true;
    if (field.key == "finder_id") {
      ok = required.got(0, read_integer(field.value, out.finder_id));
    } else if (field.key == "device") {
      out.device = DeviceRecord{};
      ok = required.got(1, read_device(field.value, out.device));
    } else if (field.key == "units") {
      ok = required.got(2, read_unit_numbers(field.value, out.units));
    }
    if (!ok) return false;
  }
  return required.all(3);
}

}  // namespace

bool decode_fast(std::string_view text, DeviceAttachedMsg& out) {
  return decode_device_message(text, out);
}
bool decode_fast(std::string_view text, DeviceChangedMsg& out) {
  return decode_device_message(text, out);
}
bool decode_fast(std::string_view text, FinderMatchedMsg& out) {
  return decode_finder_event(text, out);
}
bool decode_fast(std::string_view text, FinderChangedMsg& out) {
  return decode_finder_event(text, out);
}

}  // namespace dtu::common
