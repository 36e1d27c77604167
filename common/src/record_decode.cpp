// Decoders of the messages that carry a device record, and of the lease messages on an
// allocation's path, straight from simdjson's index (the declarations are beside each message). Each reads
// exactly what from_json reads through nlohmann (records.cpp, messages.cpp, service_messages.cpp) and gives
// up — false, and from_frame decodes the text again through nlohmann, which names what is wrong — at anything
// else. Every field of an object is visited in order, so of a repeated key the last value stands, as with
// nlohmann's parser; keys that from_json does not read are skipped as it skips them. Each loop
// runs over a named copy of the object or array: the range of a for must not be a reference into
// a temporary result.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtu/common/group_messages.hpp"
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

// read(key, value) for each field of an object, in order, until one returns false. False when
// `value` is not an object.
template <typename F>
bool read_fields(element value, F read) {
  if (value.type() != element_type::OBJECT) return false;
  const simdjson::dom::object fields = value.get_object().value_unsafe();
  for (const simdjson::dom::key_value_pair field : fields) {
    if (!read(field.key, field.value)) return false;
  }
  return true;
}

// read(item) for each item of an array, in order, until one returns false. False when `value` is
// not an array.
template <typename F>
bool read_items(element value, F read) {
  if (value.type() != element_type::ARRAY) return false;
  const simdjson::dom::array items = value.get_array().value_unsafe();
  for (const element item : items) {
    if (!read(item)) return false;
  }
  return true;
}

// read_fields over the top object of a message's text; false when simdjson does not take the text
// (then from_frame parses it through nlohmann).
template <typename F>
bool read_message(std::string_view text, F read) {
  const auto root = detail::simdjson_index(text);
  return root && read_fields(*root, read);
}

// An array of integers in T's range: a unit's "interfaces" (may be absent, not null) and a finder
// event's "units" (unit_array in service_messages.cpp).
template <typename T>
bool read_integers(element value, std::vector<T>& out) {
  out.clear();
  return read_items(value, [&](element item) { return read_integer(item, out.emplace_back()); });
}

// optional_field<T> of an integer: null is absent.
template <typename T>
bool read_optional_integer(element value, std::optional<T>& out) {
  if (value.type() == element_type::NULL_VALUE) {
    out.reset();
    return true;
  }
  return read_integer(value, out.emplace());
}

bool read_stamp(element value, Stamp& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "boot_epoch") return required.got(0, read_integer(v, out.boot_epoch));
                       if (key == "seq") return required.got(1, read_integer(v, out.seq));
                       if (key == "time_us") return required.got(2, read_integer(v, out.time_us));
                       return true;
                     }) &&
         required.all(3);
}

bool read_unit_state(element value, UnitState& out) {
  if (value.type() != element_type::STRING) return false;
  const auto state = parse_unit_state(value.get_string().value_unsafe());
  if (!state) return false;
  out = *state;
  return true;
}

bool read_unit(element value, UnitRecord& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "unit") return required.got(0, read_integer(v, out.unit));
                       if (key == "class") return required.got(1, read_integer(v, out.cls));
                       if (key == "subclass") return required.got(2, read_integer(v, out.subclass));
                       if (key == "protocol") return required.got(3, read_integer(v, out.protocol));
                       if (key == "function") return required.got(4, read_string(v, out.function));
                       if (key == "state") return required.got(5, read_unit_state(v, out.state));
                       if (key == "interfaces") return read_integers(v, out.interfaces);
                       if (key == "holder") return read_optional_string(v, out.holder);
                       if (key == "lease") return read_optional_string(v, out.lease);
                       return true;
                     }) &&
         required.all(6);
}

bool read_bool(element value, bool& out) {
  if (value.type() != element_type::BOOL) return false;
  out = value.get_bool().value_unsafe();
  return true;
}

// from_json(DeviceRecord). `out` starts as a default record: "bus", "owner" and "orphaned" may be
// absent (their defaults), not null.
bool read_device(element value, DeviceRecord& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "dtu") return required.got(0, read_string(v, out.dtu));
                       if (key == "device") return required.got(1, read_string(v, out.device));
                       if (key == "vid") return required.got(2, read_hex16(v, out.vid));
                       if (key == "pid") return required.got(3, read_hex16(v, out.pid));
                       if (key == "bcd_device") return required.got(4, read_hex16(v, out.bcd_device));
                       if (key == "class") return required.got(5, read_integer(v, out.cls));
                       if (key == "subclass") return required.got(6, read_integer(v, out.subclass));
                       if (key == "protocol") return required.got(7, read_integer(v, out.protocol));
                       if (key == "units") {
                         out.units.clear();
                         return required.got(8, read_items(v, [&](element item) {
                                               return read_unit(item, out.units.emplace_back());
                                             }));
                       }
                       if (key == "stamp") return required.got(9, read_stamp(v, out.stamp));
                       if (key == "bus") return read_string(v, out.bus);
                       if (key == "serial") return read_optional_string(v, out.serial);
                       if (key == "manufacturer") return read_optional_string(v, out.manufacturer);
                       if (key == "product") return read_optional_string(v, out.product);
                       if (key == "owner") return read_string(v, out.owner);
                       if (key == "orphaned") return read_bool(v, out.orphaned);
                       return true;
                     }) &&
         required.all(10);
}

// optional_field<Stamp>: null is absent.
bool read_optional_stamp(element value, std::optional<Stamp>& out) {
  if (value.type() == element_type::NULL_VALUE) {
    out.reset();
    return true;
  }
  return read_stamp(value, out.emplace());
}

// from_json(AllocateMsg). `out` starts as a default request: "wait_ms" and "keep" may be absent.
bool read_allocate(element value, AllocateMsg& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "dtu") return required.got(0, read_string(v, out.dtu));
                       if (key == "device") return required.got(1, read_string(v, out.device));
                       if (key == "unit") return required.got(2, read_integer(v, out.unit));
                       if (key == "length_ms") return required.got(3, read_integer(v, out.length_ms));
                       if (key == "wait_ms") return read_optional_integer(v, out.wait_ms);
                       if (key == "keep") return read_bool(v, out.keep);
                       return true;
                     }) &&
         required.all(4);
}

bool read_release(element value, ReleaseMsg& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "dtu") return required.got(0, read_string(v, out.dtu));
                       if (key == "lease") return required.got(1, read_string(v, out.lease));
                       return true;
                     }) &&
         required.all(2);
}

// from_json(OnBehalf): every field required, and a holder that is not empty.
bool read_on_behalf(element value, OnBehalf& out) {
  Required required;
  return read_fields(value,
                     [&](std::string_view key, element v) {
                       if (key == "uid") return required.got(0, read_integer(v, out.uid));
                       if (key == "gid") return required.got(1, read_integer(v, out.gid));
                       if (key == "pid") return required.got(2, read_integer(v, out.pid));
                       if (key == "client") return required.got(3, read_string(v, out.client));
                       if (key == "holder") return required.got(4, read_string(v, out.holder));
                       return true;
                     }) &&
         required.all(5) && !out.holder.empty();
}

// {"on_behalf": ..., "request": ...}: a lease operation forwarded to the owner.
template <typename M, typename ReadRequest>
bool decode_forwarded(std::string_view text, M& out, ReadRequest read_request) {
  bool on_behalf = false;
  bool request = false;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key == "on_behalf") {
                          out.on_behalf = OnBehalf{};  // a repeated key: the last object, read from defaults
                          on_behalf = true;
                          return read_on_behalf(v, out.on_behalf);
                        }
                        if (key == "request") {
                          out.request = {};
                          request = true;
                          return read_request(v, out.request);
                        }
                        return true;
                      }) &&
         on_behalf && request;
}

// {"device": record}: device_attached and device_changed.
template <typename M>
bool decode_device_message(std::string_view text, M& out) {
  bool device = false;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key != "device") return true;
                        out.device = DeviceRecord{};  // a repeated key: the last record, read from defaults
                        device = true;
                        return read_device(v, out.device);
                      }) &&
         device;
}

// finder_matched and finder_changed.
template <typename M>
bool decode_finder_event(std::string_view text, M& out) {
  Required required;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key == "finder_id") return required.got(0, read_integer(v, out.finder_id));
                        if (key == "device") {
                          out.device = DeviceRecord{};
                          return required.got(1, read_device(v, out.device));
                        }
                        if (key == "units") return required.got(2, read_integers(v, out.units));
                        return true;
                      }) &&
         required.all(3);
}

}  // namespace

bool decode_fast(std::string_view text, LeaseRequestMsg& out) {
  Required required;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key == "device") return required.got(0, read_string(v, out.device));
                        if (key == "unit") return required.got(1, read_integer(v, out.unit));
                        if (key == "holder") return required.got(2, read_string(v, out.holder));
                        if (key == "length_ms") return required.got(3, read_integer(v, out.length_ms));
                        if (key == "uid") return read_optional_integer(v, out.uid);
                        if (key == "fence") return read_optional_stamp(v, out.fence);
                        if (key == "state_token") return read_optional_string(v, out.state_token);
                        return true;
                      }) &&
         required.all(4);
}

bool decode_fast(std::string_view text, LeaseGrantedMsg& out) {
  Required required;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key == "lease") return required.got(0, read_string(v, out.lease));
                        if (key == "dtu") return required.got(1, read_string(v, out.dtu));
                        if (key == "device") return required.got(2, read_string(v, out.device));
                        if (key == "unit") return required.got(3, read_integer(v, out.unit));
                        if (key == "holder") return required.got(4, read_string(v, out.holder));
                        if (key == "expires_in_ms")
                          return required.got(5, read_integer(v, out.expires_in_ms));
                        if (key == "token") return read_optional_string(v, out.token);
                        if (key == "inband") return read_optional_string(v, out.inband);
                        if (key == "state_token") return read_optional_string(v, out.state_token);
                        return true;
                      }) &&
         required.all(6);
}

bool decode_fast(std::string_view text, LeaseEndedMsg& out) {
  Required required;
  return read_message(text,
                      [&](std::string_view key, element v) {
                        if (key == "dtu") return required.got(0, read_string(v, out.dtu));
                        if (key == "lease") return required.got(1, read_string(v, out.lease));
                        if (key == "device") return required.got(2, read_string(v, out.device));
                        if (key == "unit") return required.got(3, read_integer(v, out.unit));
                        if (key == "reason") return required.got(4, read_string(v, out.reason));
                        return true;
                      }) &&
         required.all(5);
}

bool decode_fast(std::string_view text, AllocateMsg& out) {
  const auto root = detail::simdjson_index(text);
  return root && read_allocate(*root, out);
}

bool decode_fast(std::string_view text, ReleaseMsg& out) {
  const auto root = detail::simdjson_index(text);
  return root && read_release(*root, out);
}

bool decode_fast(std::string_view text, PeerAllocateMsg& out) {
  return decode_forwarded(text, out, read_allocate);
}

bool decode_fast(std::string_view text, PeerReleaseMsg& out) {
  return decode_forwarded(text, out, read_release);
}

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
