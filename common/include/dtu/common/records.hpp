#pragma once
// Device and unit records (DESIGN.md section 3): what a DTU reports and every manager keeps.
// Plain value types with nlohmann to_json/from_json; from_json throws on a bad field, and the
// message decoder turns that into Errc::bad_payload. Not thread-safe (values).

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dtu::common {

// Stamp: generated on the DTU with each record. (boot_epoch, seq) orders the records of one
// DTU; receive time never does. time_us is the universal time of generation (microseconds).
struct Stamp {
  std::int64_t boot_epoch = 0;  // universal µs the DTU took from its first welcome since it started; 0 before
  std::uint64_t seq = 0;        // increases with every record the agent generates
  std::int64_t time_us = 0;     // universal time of generation

  // Ordering by (boot_epoch, seq) only.
  friend bool operator<(const Stamp& a, const Stamp& b) {
    return std::tie(a.boot_epoch, a.seq) < std::tie(b.boot_epoch, b.seq);
  }
  friend bool operator==(const Stamp& a, const Stamp& b) {
    return a.boot_epoch == b.boot_epoch && a.seq == b.seq;
  }
};

enum class UnitState { free, allocated, unavailable };

// A unit: one allocatable interface (or interface association) of a device.
struct UnitRecord {
  std::uint32_t unit = 0;                 // first interface number of the unit
  std::vector<std::uint8_t> interfaces;   // every interface number the unit covers
  std::uint8_t cls = 0;
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;
  std::string function;                   // "printer", "scanner", "storage", …
  UnitState state = UnitState::free;
  std::optional<std::string> holder;      // service id while allocated
  std::optional<std::string> lease;       // lease id while allocated

  friend bool operator==(const UnitRecord&, const UnitRecord&) = default;
};

struct DeviceRecord {
  std::string dtu;      // the DTU's id
  std::string device;   // port path, stable per DTU ("1-1.4")
  std::string bus = "usb";
  std::uint16_t vid = 0;
  std::uint16_t pid = 0;
  std::uint16_t bcd_device = 0;
  std::uint8_t cls = 0;
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;
  std::optional<std::string> serial;        // null when absent or unreadable
  std::optional<std::string> manufacturer;
  std::optional<std::string> product;
  std::vector<UnitRecord> units;
  Stamp stamp;
  std::string owner;    // the manager that owns the DTU (set by the manager)
  // Set by a manager that holds the record of a dead peer: the record stays for the grace window
  // (the DTU may re-home) and then goes away. Encoded only when true.
  bool orphaned = false;

  friend bool operator==(const DeviceRecord&, const DeviceRecord&) = default;
};

const char* unit_state_name(UnitState state);
// The state unit_state_name names, else nullopt.
std::optional<UnitState> parse_unit_state(std::string_view text);
// A DTU or manager id: 1–64 characters of [A-Za-z0-9._-], not starting with '.' or '-'. Ids
// appear in logs, file names, command lines and TLS identities, so nothing else is accepted.
bool is_valid_id(std::string_view id);
// "04b8" for 0x04b8.
std::string hex16(std::uint16_t value);
// 0x04b8 for "04b8" or "04B8": exactly four hex digits, else nullopt.
std::optional<std::uint16_t> parse_hex16(std::string_view text);

void to_json(nlohmann::json& j, const Stamp& s);
void from_json(const nlohmann::json& j, Stamp& s);
void to_json(nlohmann::json& j, const UnitState& s);
void from_json(const nlohmann::json& j, UnitState& s);
void to_json(nlohmann::json& j, const UnitRecord& u);
void from_json(const nlohmann::json& j, UnitRecord& u);
void to_json(nlohmann::json& j, const DeviceRecord& d);
void from_json(const nlohmann::json& j, DeviceRecord& d);

}  // namespace dtu::common
