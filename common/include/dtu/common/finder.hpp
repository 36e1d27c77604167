#pragma once
// Finders (DESIGN.md section 4): the patterns a service registers to be told about devices, the
// usbredir filter strings a finder may carry, and FinderIndex, which narrows the finders worth
// evaluating against a device. Finder, UsbredirFilter and the functions are plain values and pure
// functions (thread-safe); FinderIndex is a value that is not thread-safe (its owner's thread).
//
// Finder JSON (every key optional; an unknown key is an error):
//   vid, pid, bcd_device            "04b8" or ["04b8", "04b9"]   (exactly 4 hex digits)
//   class, subclass, protocol       7 or [7, 255]                (device descriptor, 0–255)
//   unit_class, unit_subclass,      7 or [7, 255]                (unit record, 0–255)
//     unit_protocol
//   function                        "printer" or ["printer", "scanner"]
//   serial                          exact or glob
//   manufacturer, product           glob
//   dtu                             exact or glob (the DTU id)
//   scope                           "interconnect" (default) | "dtu" (needs scope_dtu) |
//                                   "session" (needs session) | "bus"
//   usbredir                        "class,vendor,product,version,allow|…"
// Globs are POSIX fnmatch(3) with no flags: `*`, `?`, `[...]`, backslash escapes, case-sensitive,
// `*` crosses `/`. A string without glob characters therefore matches exactly. A pattern or a
// device string that holds a NUL matches nothing (fnmatch would stop reading at the NUL).
// A list means "any of"; fields are combined with "and". A string field the device does not
// report (serial, manufacturer or product null) never matches a finder that constrains it.
// The empty finder `{}` constrains nothing and matches every unit of every device.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"

namespace dtu::common {

// One rule of a usbredir filter: -1 in a numeric field is the wildcard.
struct UsbredirRule {
  int device_class = -1;        // -1 or 0–255
  int vendor_id = -1;           // -1 or 0–65535
  int product_id = -1;          // -1 or 0–65535
  int device_version_bcd = -1;  // -1 or 0–65535
  bool allow = false;

  friend bool operator==(const UsbredirRule&, const UsbredirRule&) = default;
};

// A parsed usbredir filter string, checked with usbredir's semantics (usbredirfilter.c,
// usbredirfilter_check with flags 0): see usbredir_allows.
struct UsbredirFilter {
  std::vector<UsbredirRule> rules;

  friend bool operator==(const UsbredirFilter&, const UsbredirFilter&) = default;
};

// Parses usbredir's filter syntax: rules separated by '|', each "class,vendor,product,version,allow"
// separated by ','. Numbers are read like usbredir's strtol(…, 0): decimal, 0x hex or leading-0
// octal, optional sign; -1 is the wildcard. Empty rules ("a||b", a leading or trailing '|', the
// empty string) are skipped as usbredir does. Stricter than usbredir, never more lenient: an empty
// token ("1,,2,3,4,1", which usbredir's strtok would collapse), leading or trailing blanks, a value
// out of range (usbredir truncates to int) and an allow other than 0 or 1 are errors.
// Errors are Errc::invalid_argument naming the rule index (from 0) and the token.
Result<UsbredirFilter> parse_usbredir_filter(std::string_view text);

// A glob of the kind above (fnmatch(3), no flags) matches `text`; a NUL in either never matches.
// Policy rules use the same globs.
bool glob_matches(const std::string& pattern, const std::string& text);

// The canonical string of a filter ("0x07,0x04b8,-1,-1,1|-1,-1,-1,-1,0"); parses back to itself.
std::string to_string(const UsbredirFilter& filter);

// The class triple of one interface as the usbredir check sees it.
struct InterfaceClass {
  std::uint8_t cls = 0;
  std::uint8_t subclass = 0;
  std::uint8_t protocol = 0;
};

// usbredir's verdict with its default flags (0: no default-allow, non-boot HID skipped):
// 1. The device pass, skipped when the device class is 0x00 (per interface) or 0xEF
//    (miscellaneous / interface association).
// 2. One pass per interface (alternate setting 0 only, as usbredirhost does). When there is more
//    than one interface, an interface of class 0x03/0x00/0x00 (non-boot HID, e.g. the volume keys
//    of a headset) is skipped; if that skips every interface, all of them are checked after all.
// In each pass the first rule whose class (the pass's class), vendor, product and version match
// decides; a deny ends the check with "denied", and a pass that no rule matches denies too.
// Allowed when every pass that ran allowed (so a class-0 device without interfaces is allowed).
bool usbredir_allows(const UsbredirFilter& filter, std::uint8_t device_class, std::uint16_t vid,
                     std::uint16_t pid, std::uint16_t bcd_device, std::span<const InterfaceClass> interfaces);

// The check above on a device record. Units stand for interfaces: each unit contributes one
// triple, its own; an interface-association unit therefore contributes its association's
// function class, not the classes of the interfaces it covers (a rule on the class of one
// interface inside an association, e.g. CDC data 0x0A under a CDC 0x02 association, is not seen),
// and the "more than one interface" condition counts units.
bool usbredir_allows(const UsbredirFilter& filter, const DeviceRecord& device);

enum class FinderScope { interconnect, dtu, session, bus };

const char* finder_scope_name(FinderScope scope);

struct Finder {
  // An absent field does not constrain; a present set is never empty and holds sorted, distinct
  // values (parse_finder normalises), so equal finders compare equal.
  std::optional<std::set<std::uint16_t>> vid;
  std::optional<std::set<std::uint16_t>> pid;
  std::optional<std::set<std::uint16_t>> bcd_device;
  std::optional<std::set<std::uint8_t>> cls;
  std::optional<std::set<std::uint8_t>> subclass;
  std::optional<std::set<std::uint8_t>> protocol;
  std::optional<std::set<std::uint8_t>> unit_class;
  std::optional<std::set<std::uint8_t>> unit_subclass;
  std::optional<std::set<std::uint8_t>> unit_protocol;
  std::optional<std::set<std::string>> function;
  std::optional<std::string> serial;        // fnmatch pattern
  std::optional<std::string> manufacturer;  // fnmatch pattern
  std::optional<std::string> product;       // fnmatch pattern
  std::optional<std::string> dtu;           // fnmatch pattern on DeviceRecord::dtu
  FinderScope scope = FinderScope::interconnect;
  std::optional<std::string> scope_dtu;  // set exactly when scope == dtu (a valid id)
  std::optional<std::string> session;    // set exactly when scope == session (non-empty)
  std::optional<UsbredirFilter> usbredir;

  friend bool operator==(const Finder&, const Finder&) = default;
};

// Reads a finder strictly. Errors are Errc::invalid_argument with a detail that names the field
// and the expectation, e.g. "finder field 'vid': expected a 4-digit hex string or a non-empty list
// of them, got 12". Empty strings and empty lists are errors (they would match nothing).
Result<Finder> parse_finder(const nlohmann::json& j);

// to_json writes a single-valued set as a scalar and the rest as lists; parse_finder reads it back
// to an equal finder. from_json throws std::invalid_argument with parse_finder's detail.
void to_json(nlohmann::json& j, const Finder& finder);
void from_json(const nlohmann::json& j, Finder& finder);

// Whether `finder` matches `unit` of `device`: device fields against the device record, unit
// fields (unit_class/subclass/protocol, function) against the unit, the usbredir filter (if any)
// against the whole device (usbredir_allows above). Scope: "dtu" requires device.dtu ==
// scope_dtu; "session" and "bus" depend on state outside the records (where a session is now,
// which bus is local) and are not evaluated here: the caller narrows by them.
// REQUIRES: `unit` is one of device.units (only its fields are read).
bool matches(const Finder& finder, const DeviceRecord& device, const UnitRecord& unit);

// The unit numbers of `device` that `finder` matches, in the device's unit order.
std::vector<std::uint32_t> matching_units(const Finder& finder, const DeviceRecord& device);

using FinderId = std::uint64_t;

// The finders a manager evaluates, indexed so that a device change evaluates only the finders
// that could match it. Each finder sits in the buckets of its most selective indexed constraint,
// in this order: an exact serial; an exact DTU (scope "dtu", or a `dtu` pattern without glob
// characters); vid:pid (when both are constrained and they combine to few keys); the literal
// prefix of a serial glob ("PRN00*" → "PRN00"); the literal prefix of a `dtu` glob; vid; unit
// class; function; else the unindexed bucket (which every device consults).
// Not thread-safe: owned by one thread.
class FinderIndex {
 public:
  // Adds or replaces the finder under `id`.
  void add(FinderId id, Finder finder);
  // Removes it; an unknown id is ignored. Returns whether it was there.
  bool remove(FinderId id);

  std::size_t size() const { return finders_.size(); }
  // The finder under `id`, or nullptr.
  const Finder* find(FinderId id) const;

  // A sorted superset of the finders that match some unit of `device` (the others are provably
  // excluded by their bucket key).
  std::vector<FinderId> candidates(const DeviceRecord& device) const;

  // Every finder that matches at least one unit of `device`, with the units it matches; only
  // candidates are evaluated. Equal to scanning every finder with matching_units.
  std::map<FinderId, std::vector<std::uint32_t>> match(const DeviceRecord& device) const;

 private:
  // A finder's bucket: one kind of key, one or more values of it.
  struct Keys {
    std::optional<std::string> serial;        // exact
    std::optional<std::string> dtu;           // exact
    std::vector<std::uint32_t> vid_pid;       // (vid << 16) | pid
    std::optional<std::string> serial_prefix;  // non-empty literal prefix of a glob
    std::optional<std::string> dtu_prefix;     // non-empty literal prefix of a glob
    std::vector<std::uint16_t> vid;
    std::vector<std::uint8_t> unit_class;
    std::vector<std::string> function;
    bool unindexed = false;
  };
  // Buckets keyed by strings, looked up by string_view.
  using StringBuckets = std::map<std::string, std::set<FinderId>, std::less<>>;
  // Prefix buckets with the count of buckets of each prefix length (a device's string is looked
  // up once per length in use).
  struct PrefixBuckets {
    StringBuckets buckets;
    std::map<std::size_t, std::size_t> lengths;
  };
  static Keys keys_of(const Finder& finder);
  void unlink(FinderId id, const Keys& keys);
  static void link_prefix(PrefixBuckets& index, FinderId id, const std::string& prefix);
  static void unlink_prefix(PrefixBuckets& index, FinderId id, const std::string& prefix);
  static void take_prefixes(const PrefixBuckets& index, std::string_view text, std::vector<FinderId>& out);

  std::map<FinderId, Finder> finders_;
  StringBuckets by_serial_;
  StringBuckets by_dtu_;
  std::map<std::uint32_t, std::set<FinderId>> by_vid_pid_;
  PrefixBuckets by_serial_prefix_;
  PrefixBuckets by_dtu_prefix_;
  std::map<std::uint16_t, std::set<FinderId>> by_vid_;
  std::map<std::uint8_t, std::set<FinderId>> by_unit_class_;
  StringBuckets by_function_;
  std::set<FinderId> unindexed_;
};

}  // namespace dtu::common
