// DeviceManager's part of the group commands (devmgrctl group exec): the GroupCommands runner's
// hooks, and the verbs as this manager runs them (docs/devmgrctl.md "group exec").
// Runs on the manager's io_context thread, except the diag dump's builder (any thread).

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "dtu/common/peer_auth.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/devmgr/device_manager.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using nlohmann::json;

namespace {

std::vector<std::string> member_names(const std::vector<GroupMember>& members) {
  std::vector<std::string> names;
  for (const auto& m : members) names.push_back(m.id + "@" + m.address.to_string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string key_id_or_empty(const std::optional<common::SecretKey>& key) {
  return key && !key->bytes.empty() ? common::group_key_id(*key) : std::string();
}

}  // namespace

void DeviceManager::make_group_commands() {
  GroupCommands::Hooks hooks;
  hooks.members = [this] {
    std::vector<std::string> ids{options_.id};
    for (const auto& m : members_) {
      if (std::find(ids.begin(), ids.end(), m.id) == ids.end()) ids.push_back(m.id);
    }
    return ids;
  };
  hooks.request = [this](const std::string& node, common::Frame frame, common::Duration timeout,
                         std::function<void(common::Result<common::Frame>)> done) {
    auto link = mesh_ ? mesh_->peer(node) : nullptr;
    if (!link || !link->is_open()) return false;
    link->request(std::move(frame), timeout, std::move(done));
    return true;
  };
  hooks.refuse = [this](const std::string& verb, const json& args) { return refuse_group_verb(verb, args); };
  hooks.run = [this](const std::string& verb, const json& args, GroupCommands::VerbDone done) {
    run_group_verb(verb, args, std::move(done));
  };
  hooks.prepare_args = [this](const std::string& verb, json args) {
    // rotate-key: every node checks that its next key is the origin's.
    if (verb == "rotate-key" && !args.contains("next_key_id"))
      args["next_key_id"] = key_id_or_empty(keys_.next);
    return args;
  };
  commands_ =
      std::make_unique<GroupCommands>(options_.id, incarnation_, clock_, std::move(hooks), log_, executor_);
}

std::optional<std::string> DeviceManager::refuse_group_verb(const std::string& verb, const json& args) const {
  if (stopped_) return options_.id + " is stopping";
  if (verb == "drain") {
    const auto it = args.find("wait_ms");
    if (it != args.end() && !it->is_null() && !it->is_number_unsigned()) {
      return "drain: wait_ms must be a number of milliseconds";
    }
  }
  if (verb != "rotate-key") return std::nullopt;
  if (!mesh_) return options_.id + " has no group mesh, hence no group key to rotate";
  if (!keys_.next) return options_.id + " has no next group key (set group_key_next_file, then reload)";
  const auto it = args.find("next_key_id");
  const std::string expected = it != args.end() && it->is_string() ? it->get<std::string>() : std::string();
  if (expected.empty()) return "the origin has no next group key to rotate to";
  const std::string mine = common::group_key_id(*keys_.next);
  if (mine != expected) {
    return options_.id + "'s next group key is " + mine + ", the origin's is " + expected + ": not rotated";
  }
  return std::nullopt;
}

common::Result<json> DeviceManager::rotate_group_key() {
  if (!mesh_ || !keys_.next) return Error(Errc::illegal_state, options_.id + " has no next group key");
  // current <- next, next <- old current: links and peers still on the old key keep working
  // (a dialer tries its next key when the first fails; the listener accepts both).
  std::swap(keys_.current, *keys_.next);
  mesh_->reload(members_, keys_);
  leases_.set_group_keys(keys_);
  const std::string current = common::group_key_id(keys_.current);
  const std::string next = key_id_or_empty(keys_.next);
  log_.info("", "group_key_rotated", {{"key_id", current}, {"next_key_id", next}});
  return json{
      {"key_id", current},
      {"next_key_id", next},
      {"summary", "rotate-key: current key " + current + ", next " + next +
                      " (in memory: swap the contents of the current and next key files to keep it)"}};
}

namespace {

// diag lists at most this many DTUs, devices, leases and finders (with the totals), so that the
// dump of a large manager stays under kMaxCommandResultBytes.
constexpr std::size_t kDiagListMax = 100;

template <typename T>
void keep_first(std::vector<T>& list) {
  if (list.size() > kDiagListMax) list.erase(list.begin() + static_cast<std::ptrdiff_t>(kDiagListMax), list.end());
}

}  // namespace

std::function<json()> DeviceManager::diag_snapshot() const {
  std::vector<std::string> dtus;
  for (const auto& [id, session] : dtus_) dtus.push_back(id);
  std::vector<common::DeviceRecord> devices;  // the first kDiagListMax, not a copy of the table
  devices_.for_each([&devices](const common::DeviceRecord& record) {
    if (devices.size() < kDiagListMax) devices.push_back(record);
  });
  auto leases = leases_.list();
  auto finders = finders_.list();
  const json totals = {{"dtus", dtus.size()},
                       {"devices", devices_.device_count()},
                       {"leases", leases.size()},
                       {"finders", finders.size()},
                       {"listed_at_most", kDiagListMax}};
  keep_first(dtus);
  keep_first(leases);
  keep_first(finders);
  std::vector<common::GroupMemberInfo> peers;
  if (mesh_) peers = mesh_->status();
  const auto uptime = std::chrono::duration_cast<std::chrono::milliseconds>(
      clock_.wall_now().time_since_epoch() - std::chrono::microseconds(incarnation_));
  return [id = options_.id, incarnation = incarnation_, draining = draining_, dtus = std::move(dtus),
          devices = std::move(devices), leases = std::move(leases), finders = std::move(finders), totals,
          peers = std::move(peers), policy_source = policy_.source(), policy_rules = policy_.rule_count(),
          key_id = mesh_ ? common::group_key_id(keys_.current) : std::string(),
          next_key_id = key_id_or_empty(keys_.next), uptime_ms = uptime.count(),
          members = member_names(members_)]() -> json {
    return json{
        {"id", id},
        {"incarnation", incarnation},
        {"uptime_ms", uptime_ms},
        {"draining", draining},
        {"totals", totals},
        {"dtus", dtus},
        {"devices", devices},
        {"leases", leases},
        {"finders", finders},
        {"peers", peers},
        {"members", members},
        {"policy", {{"source", policy_source}, {"rules", policy_rules}}},
        {"key_id", key_id},
        {"next_key_id", next_key_id},
        {"summary", "diag: " + totals["dtus"].dump() + " DTUs, " + totals["devices"].dump() + " devices, " +
                        totals["leases"].dump() + " leases, " + std::to_string(peers.size()) + " peers"}};
  };
}

void DeviceManager::run_group_verb(const std::string& verb, const json& args, GroupCommands::VerbDone done) {
  if (verb == "reload") {
    const auto members_before = member_names(members_);
    const std::string key_before = mesh_ ? common::group_key_id(keys_.current) : std::string();
    const std::string next_before = key_id_or_empty(keys_.next);
    const json policy_before = policy_.document();
    const std::string source_before = policy_.source();
    auto group = reload_group();
    auto policy = reload_policy();
    std::string errors;
    if (!group.ok()) errors += "group: " + group.error().describe();
    if (!policy.ok())
      errors += std::string(errors.empty() ? "" : "; ") + "policy: " + policy.error().describe();
    if (!errors.empty()) return done(Error(Errc::config_error, errors));
    const bool group_changed = member_names(members_) != members_before;
    const std::string key_id = mesh_ ? common::group_key_id(keys_.current) : std::string();
    const std::string next_key_id = key_id_or_empty(keys_.next);
    const bool keys_changed = key_id != key_before || next_key_id != next_before;
    const bool policy_changed = policy_.document() != policy_before || policy_.source() != source_before;
    std::string summary = "reload: policy " + std::string(policy_changed ? "changed" : "unchanged") +
                          ", group " + (group_changed ? "changed" : "unchanged");
    if (keys_changed) summary += ", keys changed (current " + key_id + ", next " + next_key_id + ")";
    return done(json{{"policy_changed", policy_changed},
                     {"policy_source", policy_.source()},
                     {"policy_rules", policy_.rule_count()},
                     {"group_changed", group_changed},
                     {"members", member_names(members_)},
                     {"keys_changed", keys_changed},
                     {"key_id", key_id},
                     {"next_key_id", next_key_id},
                     {"summary", summary}});
  }
  if (verb == "drain") {
    std::optional<std::uint32_t> wait_ms;
    if (const auto it = args.find("wait_ms"); it != args.end() && it->is_number_unsigned()) {
      wait_ms = static_cast<std::uint32_t>(std::min<std::uint64_t>(it->get<std::uint64_t>(), UINT32_MAX));
    }
    return drain(wait_ms, [done = std::move(done)](common::Result<common::DrainStatusMsg> status) {
      if (!status.ok()) return done(status.error());
      json result = *status;
      result["summary"] = "drain: no DTU left; refusing new ones until undrain";
      done(std::move(result));
    });
  }
  if (verb == "undrain") {
    json result = undrain();
    result["summary"] =
        "undrain: taking DTUs again (" + std::to_string(result.value("dtus", 0)) + " connected)";
    return done(std::move(result));
  }
  if (verb == "diag") {
    return commands_->render_off_loop(diag_snapshot(),
                                      [done = std::move(done)](json dump) { done(std::move(dump)); });
  }
  if (verb == "rotate-key") {
    if (auto refused = refuse_group_verb(verb, args)) return done(Error(Errc::refused, *refused));
    return done(rotate_group_key());
  }
  done(Error(Errc::invalid_argument, "unknown verb '" + verb + "'"));
}

}  // namespace dtu::devmgr
