#pragma once
// Policy: the manager's allocation rules (DESIGN.md §5 step 3; the file format and the shipped
// default are in docs/policy.md). A JSON rule file, first matching rule wins, over the device and
// unit asked for, the DTU, the session attached at that DTU, the caller's uid / user name / groups
// (from SO_PEERCRED) and its self-declared service name; a rule allows or denies and sets the
// lease length, a cap on requested lengths and a per-user lease limit.
//
//   {
//     "defaults": { "lease_ms": 60000, "max_lease_ms": 3600000, "max_leases_per_user": 8 },
//     "rules": [
//       { "name": "no-mass-storage", "match": { "function": "storage" }, "action": "deny",
//         "reason": "USB storage is not shared on this site" },
//       { "name": "printers-for-staff", "match": { "function": "printer", "group": ["staff", "lp"] },
//         "action": "allow", "lease_ms": 120000 }
//     ],
//     "default_action": "allow"
//   }
//
// A Policy is a value, immutable once built: evaluate() only reads, so any thread may call it.
// The manager keeps one on its io_context thread and replaces it whole on reload.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/finder.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

// Lease lengths a policy may set, in milliseconds: the DTU's own bounds (dtu-agent's
// kMinLeaseLength and kMaxLeaseLength), so that no policy value is one every DTU refuses.
inline constexpr std::uint32_t kPolicyMinLeaseMs = 100;
inline constexpr std::uint32_t kPolicyMaxLeaseMs = 24 * 60 * 60 * 1000;
// The lease length when neither the service nor the policy names one (DESIGN.md §5: 60 s).
inline constexpr std::uint32_t kPolicyDefaultLeaseMs = 60'000;
// Largest per-user lease limit a file may write; a limit is a guard, not a tuning knob, and a
// bound keeps a typo (an extra zero or three) visible.
inline constexpr std::uint32_t kPolicyMaxLeasesPerUser = 100'000;

// Who asks for which unit: everything a rule may look at.
struct PolicyRequest {
  const common::DeviceRecord* device = nullptr;  // the device (never null when evaluated)
  const common::UnitRecord* unit = nullptr;      // one of device->units
  std::optional<std::string> session;            // the session currently attached at the device's DTU
  std::uint32_t uid = 0;                         // from SO_PEERCRED
  std::string user;                              // user name of uid ("" if none)
  std::vector<std::string> groups;               // names of the uid's groups (primary + supplementary)
  std::string service;                           // the client's self-declared program name
};

struct PolicyVerdict {
  bool allow = true;
  std::string rule;  // name of the rule that decided, or "default"
  // Empty when allowed. When denied, a sentence for the refused service and the log that names
  // the rule: "policy rule 'no-mass-storage': USB storage is not shared on this site",
  // "policy rule 'x' denies it" (a deny rule without a reason), or "no policy rule allows it
  // (default_action is deny)".
  std::string reason;
  std::uint32_t lease_ms = kPolicyDefaultLeaseMs;    // lease length when the service asks for 0
  std::uint32_t max_lease_ms = 0;                    // cap on a requested length; 0 = no cap
  std::optional<std::uint32_t> max_leases_per_user;  // limit on leases one uid holds at once

  // The length to ask the DTU for when the service asked for `requested_ms`: lease_ms when it
  // asked for 0, else what it asked for, capped at max_lease_ms (when there is a cap).
  std::uint32_t lease_length(std::uint32_t requested_ms) const;
};

class Policy {
 public:
  // The built-in policy used when no file is configured: allow everything, 60 s leases, no caps.
  static Policy builtin();
  // Parses a policy document. Errors: Errc::config_error naming `source`, the rule (index and
  // name) and the field and what was expected, e.g.
  //   "policy.json: rules[1] ('printers-for-staff'): field 'match.group': expected a non-empty
  //    string (exact or glob) or a non-empty list of them, got 5".
  // Every rule with an error is reported (joined by "; "); unknown keys at any level are errors.
  static common::Result<Policy> parse(const nlohmann::json& document, const std::string& source);
  // Reads and parses a file. Errc::config_error: "<path>: cannot read: <why>",
  // "<path>:<line>:<column>: invalid JSON: <why>", or parse()'s errors with `path` as source.
  static common::Result<Policy> load(const std::string& path);

  // The first rule whose match holds decides; none → default_action with the defaults' numbers.
  // REQUIRES: request.device and request.unit are set, and unit is one of device->units.
  PolicyVerdict evaluate(const PolicyRequest& request) const;

  const std::string& source() const { return source_; }         // the path, or "built-in"
  const nlohmann::json& document() const { return document_; }  // what was loaded
  std::size_t rule_count() const { return rules_.size(); }

 private:
  // A per-user limit as written: 0 means "no limit".
  struct Limits {
    std::uint32_t lease_ms = kPolicyDefaultLeaseMs;
    std::uint32_t max_lease_ms = 0;
    std::uint32_t max_leases_per_user = 0;
  };

  struct Rule {
    std::string name;
    bool allow = true;
    std::string reason;     // deny rules only; may be empty
    common::Finder finder;  // the device and unit fields of `match` (the empty finder: any unit)
    // The policy fields of `match`; an absent field does not constrain. Strings are fnmatch globs.
    std::optional<std::vector<std::string>> session;
    std::optional<std::set<std::uint32_t>> uid;
    std::optional<std::vector<std::string>> user;
    std::optional<std::vector<std::string>> group;
    std::optional<std::vector<std::string>> service;
    Limits limits;  // the defaults with this rule's overrides applied

    bool matches(const PolicyRequest& request) const;
  };

  friend class PolicyParser;

  std::string source_;
  nlohmann::json document_;
  Limits defaults_;
  std::vector<Rule> rules_;
  bool default_allow_ = true;
};

}  // namespace dtu::devmgr
