#include "dtu/devmgr/policy.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>

#include "dtu/common/check.hpp"
#include "dtu/common/config.hpp"

namespace dtu::devmgr {

namespace {

using nlohmann::json;

// Longest rendering of an offending value in an error message, in characters.
constexpr std::size_t kMaxShownValue = 60;
// The verdict's rule name when no rule matched; no rule may take it.
constexpr const char* kDefaultRuleName = "default";

constexpr std::array<const char*, 3> kTopKeys = {"defaults", "rules", "default_action"};
constexpr std::array<const char*, 3> kLimitKeys = {"lease_ms", "max_lease_ms", "max_leases_per_user"};
constexpr std::array<const char*, 7> kRuleKeys = {
    "name", "match", "action", "reason", "lease_ms", "max_lease_ms", "max_leases_per_user"};
// The finder keys a rule's match hands to common::parse_finder. Not `scope` / `scope_dtu`: a rule
// applies to the one device asked for, so "dtu" and "session" say the same thing directly; and
// `session` is the policy's own key (the session at the device's DTU), not the finder's.
constexpr std::array<const char*, 15> kFinderMatchKeys = {
    "vid",      "pid",          "bcd_device",    "class",         "subclass",
    "protocol", "unit_class",   "unit_subclass", "unit_protocol", "function",
    "serial",   "manufacturer", "product",       "dtu",           "usbredir"};

constexpr const char* kGlobsExpected = "a non-empty string (exact or glob) or a non-empty list of them";

template <std::size_t N>
bool one_of(const std::array<const char*, N>& names, const std::string& key) {
  return std::any_of(names.begin(), names.end(), [&key](const char* name) { return key == name; });
}

std::string shown(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > kMaxShownValue) text = text.substr(0, kMaxShownValue) + "...";
  return text;
}

// One field of one section is wrong; the section's parser adds where (source, rule).
struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& field, const std::string& what) {
  throw FieldError("field '" + field + "': " + what);
}

[[noreturn]] void fail_expected(const std::string& field, const std::string& expected, const json& got) {
  fail(field, "expected " + expected + ", got " + shown(got));
}

// A JSON integer that fits int64_t; nullopt for anything else (floats and booleans included).
std::optional<std::int64_t> as_integer(const json& value) {
  if (value.is_number_unsigned()) {
    const auto u = value.get<std::uint64_t>();
    if (!std::in_range<std::int64_t>(u)) return std::nullopt;
    return static_cast<std::int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<std::int64_t>();
  return std::nullopt;
}

// An integer in [min, max], or 0 when `zero` names what 0 means.
std::uint32_t read_uint(const json& value, const std::string& field, std::uint32_t min, std::uint32_t max,
                        const char* zero = nullptr) {
  const auto number = as_integer(value);
  if (number && ((*number >= min && *number <= max) || (zero && *number == 0))) {
    return static_cast<std::uint32_t>(*number);
  }
  std::string expected = "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  if (zero) expected = "0 (" + std::string(zero) + ") or " + expected;
  fail_expected(field, expected, value);
}

std::vector<std::string> read_globs(const json& value, const std::string& field) {
  const auto one = [](const json& v) { return v.is_string() && !v.get_ref<const std::string&>().empty(); };
  if (one(value)) return {value.get<std::string>()};
  if (!value.is_array() || value.empty() || !std::all_of(value.begin(), value.end(), one)) {
    fail_expected(field, kGlobsExpected, value);
  }
  return value.get<std::vector<std::string>>();
}

std::set<std::uint32_t> read_uids(const json& value, const std::string& field) {
  // (uid_t)-1 is no one's uid: it means "unchanged" to setreuid(2).
  constexpr std::int64_t kMaxUid = 0xffff'fffe;
  const auto uid = [](const json& v) {
    const auto number = as_integer(v);
    return number && *number >= 0 && *number <= kMaxUid;
  };
  const auto expected =
      "a uid (an integer in [0, " + std::to_string(kMaxUid) + "]) or a non-empty list of them";
  std::set<std::uint32_t> uids;
  if (uid(value)) {
    uids.insert(value.get<std::uint32_t>());
  } else if (value.is_array() && !value.empty() && std::all_of(value.begin(), value.end(), uid)) {
    for (const json& v : value) uids.insert(v.get<std::uint32_t>());
  } else {
    fail_expected(field, expected, value);
  }
  return uids;
}

bool read_action(const json& value, const std::string& field) {
  if (value == "allow") return true;
  if (value == "deny") return false;
  fail_expected(field, "\"allow\" or \"deny\"", value);
}

bool any_glob_matches(const std::vector<std::string>& patterns, const std::string& text) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&text](const std::string& p) { return common::glob_matches(p, text); });
}


const json& builtin_document() {
  static const json document = {
      {"defaults", {{"lease_ms", kPolicyDefaultLeaseMs}, {"max_lease_ms", 0}, {"max_leases_per_user", 0}}},
      {"rules", json::array()},
      {"default_action", "allow"},
  };
  return document;
}

}  // namespace

// Reads a policy document into a Policy, collecting one error per faulty section (the top
// level, `defaults`, each rule).
class PolicyParser {
 public:
  explicit PolicyParser(std::string source) : source_(std::move(source)) {}

  common::Result<Policy> parse(const json& document) {
    Policy policy;
    policy.source_ = source_;
    policy.document_ = document;
    if (!document.is_object()) {
      return common::Error{common::Errc::config_error,
                           source_ + ": expected a JSON object at the top level, got " + shown(document)};
    }
    section("", [&] {
      for (const auto& item : document.items()) {
        if (!one_of(kTopKeys, item.key())) fail(item.key(), "unknown field");
      }
      if (const auto it = document.find("default_action"); it != document.end()) {
        policy.default_allow_ = read_action(*it, "default_action");
      }
    });
    if (const auto it = document.find("defaults"); it != document.end()) {
      section("", [&] {
        if (!it->is_object()) fail_expected("defaults", "an object", *it);
        for (const auto& item : it->items()) {
          if (!one_of(kLimitKeys, item.key())) fail("defaults." + item.key(), "unknown field");
        }
        read_limits(*it, "defaults.", policy.defaults_);
      });
    }
    if (const auto it = document.find("rules"); it != document.end()) {
      if (!it->is_array()) {
        section("", [&] { fail_expected("rules", "a list of rules", *it); });
      } else {
        for (std::size_t index = 0; index < it->size(); ++index) {
          read_rule((*it)[index], index, policy);
        }
      }
    }
    if (!problems_.empty()) {
      std::string text;
      for (const std::string& problem : problems_) text += (text.empty() ? "" : "; ") + problem;
      return common::Error{common::Errc::config_error, std::move(text)};
    }
    return policy;
  }

 private:
  // Runs `body`; a FieldError it throws becomes "<source>: <where>: <what>".
  template <typename Body>
  void section(const std::string& where, Body body) {
    try {
      body();
    } catch (const FieldError& e) {
      problems_.push_back(source_ + ": " + (where.empty() ? "" : where + ": ") + e.what());
    }
  }

  // Reads the limit keys present in `object` over `limits`, then checks that the lease length
  // fits under the cap. `prefix` leads the field names in errors ("defaults." or "").
  static void read_limits(const json& object, const std::string& prefix, Policy::Limits& limits) {
    if (const auto it = object.find("lease_ms"); it != object.end()) {
      limits.lease_ms = read_uint(*it, prefix + "lease_ms", kPolicyMinLeaseMs, kPolicyMaxLeaseMs);
    }
    if (const auto it = object.find("max_lease_ms"); it != object.end()) {
      limits.max_lease_ms =
          read_uint(*it, prefix + "max_lease_ms", kPolicyMinLeaseMs, kPolicyMaxLeaseMs, "no cap");
    }
    if (const auto it = object.find("max_leases_per_user"); it != object.end()) {
      limits.max_leases_per_user =
          read_uint(*it, prefix + "max_leases_per_user", 1, kPolicyMaxLeasesPerUser, "no limit");
    }
    if (limits.max_lease_ms != 0 && limits.lease_ms > limits.max_lease_ms) {
      // Name the field this object set; the other value may come from the defaults.
      const bool set_lease = object.contains("lease_ms");
      fail(prefix + (set_lease ? "lease_ms" : "max_lease_ms"),
           "the lease length " + std::to_string(limits.lease_ms) + " is above the cap max_lease_ms " +
               std::to_string(limits.max_lease_ms) + (set_lease ? "" : " (set lease_ms too)"));
    }
  }

  void read_rule(const json& value, std::size_t index, Policy& policy) {
    std::string where = "rules[" + std::to_string(index) + "]";
    if (value.is_object()) {
      if (const auto name = value.find("name"); name != value.end() && name->is_string()) {
        where += " ('" + name->get<std::string>() + "')";
      }
    }
    section(where, [&] {
      if (!value.is_object()) throw FieldError("expected a rule object, got " + shown(value));
      for (const auto& item : value.items()) {
        if (!one_of(kRuleKeys, item.key())) fail(item.key(), "unknown field");
      }
      Policy::Rule rule;
      const auto name = value.find("name");
      if (name == value.end()) fail("name", "required (a name for the logs and the refused service)");
      if (!name->is_string() || name->get_ref<const std::string&>().empty()) {
        fail_expected("name", "a non-empty string", *name);
      }
      rule.name = name->get<std::string>();
      if (rule.name == kDefaultRuleName) fail("name", "\"default\" names the default_action in verdicts");
      if (std::find(seen_names_.begin(), seen_names_.end(), rule.name) != seen_names_.end()) {
        fail("name", "another rule is named '" + rule.name + "' already");
      }
      seen_names_.push_back(rule.name);  // taken, whether this rule turns out valid or not

      const auto action = value.find("action");
      if (action == value.end()) fail("action", "required (\"allow\" or \"deny\")");
      rule.allow = read_action(*action, "action");

      const auto match = value.find("match");
      if (match == value.end()) fail("match", "required ({} matches every request)");
      read_match(*match, rule);

      if (const auto reason = value.find("reason"); reason != value.end()) {
        if (rule.allow) fail("reason", "only on deny rules (it is what the refused service is told)");
        if (!reason->is_string() || reason->get_ref<const std::string&>().empty()) {
          fail_expected("reason", "a non-empty string", *reason);
        }
        rule.reason = reason->get<std::string>();
      }
      if (!rule.allow) {
        for (const char* key : kLimitKeys) {
          if (value.contains(key)) fail(key, "only on allow rules (a denied request gets no lease)");
        }
      }
      rule.limits = policy.defaults_;
      read_limits(value, "", rule.limits);
      policy.rules_.push_back(std::move(rule));
    });
  }

  static void read_match(const json& match, Policy::Rule& rule) {
    if (!match.is_object()) fail_expected("match", "an object ({} matches every request)", match);
    json finder = json::object();
    for (const auto& item : match.items()) {
      const std::string& key = item.key();
      const json& value = item.value();
      const std::string field = "match." + key;
      if (one_of(kFinderMatchKeys, key)) {
        finder[key] = value;
      } else if (key == "session") {
        rule.session = read_globs(value, field);
      } else if (key == "uid") {
        rule.uid = read_uids(value, field);
      } else if (key == "user") {
        rule.user = read_globs(value, field);
      } else if (key == "group") {
        rule.group = read_globs(value, field);
      } else if (key == "service") {
        rule.service = read_globs(value, field);
      } else if (key == "scope" || key == "scope_dtu") {
        fail(field,
             "a finder's scope has no meaning in a policy rule, which judges the one device asked for: "
             "use \"dtu\" (a DTU id glob) or \"session\" (the session attached at the device's DTU)");
      } else {
        fail(field, "unknown field");
      }
    }
    auto parsed = common::parse_finder(finder);
    if (!parsed) {
      // parse_finder says "finder field 'vid': <what>"; here the field lives under "match".
      constexpr std::string_view kFinderPrefix = "finder field '";
      const std::string& detail = parsed.error().detail;
      if (detail.starts_with(kFinderPrefix)) {
        throw FieldError("field 'match." + detail.substr(kFinderPrefix.size()));
      }
      throw FieldError("field 'match': " + detail);
    }
    rule.finder = std::move(parsed).value();
  }

  std::string source_;
  std::vector<std::string> problems_;
  std::vector<std::string> seen_names_;  // the names of the rules read so far, valid or not
};

std::uint32_t PolicyVerdict::lease_length(std::uint32_t requested_ms) const {
  const std::uint32_t length = requested_ms == 0 ? lease_ms : requested_ms;
  return max_lease_ms != 0 ? std::min(length, max_lease_ms) : length;
}

Policy Policy::builtin() {
  auto policy = parse(builtin_document(), "built-in");
  DTU_CHECK(policy.ok());
  return std::move(policy).value();
}

common::Result<Policy> Policy::parse(const json& document, const std::string& source) {
  return PolicyParser(source).parse(document);
}

common::Result<Policy> Policy::load(const std::string& path) {
  auto document = common::load_json_file(path);
  if (!document) return document.error();
  return parse(*document, path);
}

bool Policy::Rule::matches(const PolicyRequest& request) const {
  if (!common::matches(finder, *request.device, *request.unit)) return false;
  // A value the request lacks (no session attached, a uid without a name) never matches a rule
  // that constrains it, as a finder treats a device's missing serial.
  if (session &&
      (!request.session || request.session->empty() || !any_glob_matches(*session, *request.session)))
    return false;
  if (uid && !uid->contains(request.uid)) return false;
  if (user && (request.user.empty() || !any_glob_matches(*user, request.user))) return false;
  if (group && std::none_of(request.groups.begin(), request.groups.end(),
                            [this](const std::string& g) { return any_glob_matches(*group, g); }))
    return false;
  if (service && (request.service.empty() || !any_glob_matches(*service, request.service))) return false;
  return true;
}

PolicyVerdict Policy::evaluate(const PolicyRequest& request) const {
  DTU_CHECK(request.device != nullptr && request.unit != nullptr);
  const auto verdict = [](bool allow, std::string rule, std::string reason, const Limits& limits) {
    PolicyVerdict v;
    v.allow = allow;
    v.rule = std::move(rule);
    if (!allow) v.reason = std::move(reason);
    v.lease_ms = limits.lease_ms;
    v.max_lease_ms = limits.max_lease_ms;
    if (limits.max_leases_per_user != 0) v.max_leases_per_user = limits.max_leases_per_user;
    return v;
  };
  for (const Rule& rule : rules_) {
    if (!rule.matches(request)) continue;
    std::string reason = rule.reason.empty() ? "policy rule '" + rule.name + "' denies it"
                                             : "policy rule '" + rule.name + "': " + rule.reason;
    return verdict(rule.allow, rule.name, std::move(reason), rule.limits);
  }
  return verdict(default_allow_, kDefaultRuleName, "no policy rule allows it (default_action is deny)",
                 defaults_);
}

}  // namespace dtu::devmgr
