// devmgrctl: the administrator's command line for a devmgr (docs/devmgrctl.md).
// Verbs: status, dtus [--group], devices [--group], group [reload], drain, undrain, finders, leases,
// sessions, policy [reload], session attach|detach, allocate, release, keygen. Each listing prints a
// table for people or, with --json, the manager's records under the message's field names.
// Exit codes: 0 done, 1 the operation failed, 2 bad usage, 3 the manager is unreachable, 4 (status)
// degraded.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/exit_codes.hpp"
#include "dtu/services/manager_client.hpp"
#include "dtu/services/table.hpp"
#include "group_exec.hpp"

namespace {

using namespace dtu;
using common::Errc;
using common::Error;

using services::kExitDone;
using services::kExitFailed;
using services::kExitUnreachable;
using services::kExitUsage;
// `status` only: the manager answers, but a group member is not up or the manager drains.
constexpr int kExitDegraded = 4;

// `allocate --hold` never renews more often than this, whatever length the manager grants.
constexpr std::chrono::milliseconds kMinRenewInterval{100};
// The longest lease length or wait devmgrctl asks for (the DTU's own bound is 24 h).
constexpr std::uint32_t kMaxLeaseMs = 24 * 60 * 60 * 1000;

// The manager's own default for how long drain waits for the DTUs to leave.
constexpr std::uint32_t kDefaultDrainWaitMs = 30000;

const char* const kClientName = "devmgrctl";
// The manager's refusal of an administrators' verb already says who may; this says what to do.
const char* const kRunAsAdmin = "run it as root, or as the user devmgr runs as.";

// Where the manager is and how long to wait for it.
struct Target {
  std::string socket;
  common::Duration timeout;
};

std::optional<Errc> errc_of(const Error& error) {
  if (error.code.category() != common::dtu_category()) return std::nullopt;
  return static_cast<Errc>(error.code.value());
}

// What to add to the manager's reason, per error code, so the user knows what to do next.
using Hints = std::map<Errc, std::string>;

// The manager could not be reached, or stopped answering: exit code 3.
int unreachable(const Error& error, const Target& target) {
  std::cerr << "devmgrctl: " << error.describe() << '\n';
  if (error.detail.find("ermission denied") != std::string::npos) {
    std::cerr
        << "devmgrctl: the socket admits only root and its group (devmgr --socket-mode); run as root or "
           "as a member of that group.\n";
  } else if (errc_of(error) == Errc::timeout) {
    std::cerr << "devmgrctl: devmgr did not answer within "
              << std::chrono::duration_cast<std::chrono::milliseconds>(target.timeout).count()
              << " ms; is it overloaded? --timeout-ms waits longer.\n";
  } else {
    std::cerr << "devmgrctl: is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET (now "
              << target.socket << ").\n";
  }
  return kExitUnreachable;
}

// The manager answered with an error: exit code 1.
int failed(const Error& error, const Hints& hints) {
  std::cerr << "devmgrctl: " << error.describe() << '\n';
  if (const auto code = errc_of(error)) {
    if (const auto it = hints.find(*code); it != hints.end())
      std::cerr << "devmgrctl: " << it->second << '\n';
  }
  return kExitFailed;
}

// The outcome of one request: the reply or the error, and whether the error means the manager
// is unreachable (no connection, the connection closed, or no answer before the deadline).
template <typename R>
struct Answer {
  std::optional<common::Result<R>> result;
  bool unreachable = false;
};

// Whether a failed call means "no answer from the manager" rather than "the manager said no":
// the connection is gone, or our own deadline passed (the manager's timeout errors, e.g. a DTU
// that did not answer, come back sooner).
bool lost_manager(const services::ManagerClient& client, const Error& error, common::MonoTime started,
                  common::Duration deadline) {
  if (!client.is_open()) return true;
  return errc_of(error) == Errc::timeout && common::SystemClock::instance().now() - started >= deadline;
}

template <typename R, typename M>
asio::awaitable<void> exchange(Target target, M request, common::Duration deadline, Answer<R>& answer) {
  const auto& clock = common::SystemClock::instance();
  auto connect = services::ManagerClient::connect(target.socket, kClientName, clock, target.timeout);
  auto client = co_await std::move(connect);
  if (!client.ok()) {
    answer.unreachable = true;
    answer.result.emplace(client.error());
    co_return;
  }
  const auto started = clock.now();
  auto call = (*client)->template call<R>(request, deadline);
  auto reply = co_await std::move(call);
  if (!reply.ok()) answer.unreachable = lost_manager(**client, reply.error(), started, deadline);
  (*client)->close();
  answer.result.emplace(std::move(reply));
}

// Sends `request` on a connection of its own and returns the reply as R.
template <typename R, typename M>
Answer<R> ask(const Target& target, const M& request, common::Duration deadline) {
  asio::io_context io;
  Answer<R> answer;
  common::spawn(io.get_executor(), exchange<R>(target, request, deadline, answer),
                common::Logger(kClientName), "request");
  io.run();
  if (!answer.result) answer.result.emplace(Error(Errc::io_error, "devmgrctl failed; see the log above"));
  return answer;
}

template <typename R, typename M>
Answer<R> ask(const Target& target, const M& request) {
  return ask<R>(target, request, target.timeout);
}

// The exit code of a failed answer. REQUIRES: !answer.result->ok()
template <typename R>
int fail(const Answer<R>& answer, const Target& target, const Hints& hints = {}) {
  const Error& error = answer.result->error();
  return answer.unreachable ? unreachable(error, target) : failed(error, hints);
}

void print_json(const nlohmann::json& j) {
  std::cout << j.dump(2) << '\n';
}

// --- listings -------------------------------------------------------------------------------------

int run_devices(const Target& target, const std::optional<std::string>& dtu, bool group, bool json) {
  auto answer = ask<common::DeviceListMsg>(target, common::ListDevicesMsg{dtu, group});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& devices = answer.result->value().devices;
  if (json) {
    print_json(devices);
  } else {
    services::device_table(devices).print(std::cout);
  }
  return kExitDone;
}

int run_finders(const Target& target, bool json) {
  auto answer = ask<common::FinderListMsg>(target, common::ListFindersMsg{});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& finders = answer.result->value().finders;
  if (json) {
    print_json(finders);
  } else {
    services::finder_table(finders).print(std::cout);
  }
  return kExitDone;
}

int run_leases(const Target& target, bool json) {
  auto answer = ask<common::LeaseListMsg>(target, common::ListLeasesMsg{});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& leases = answer.result->value().leases;
  if (json) {
    print_json(leases);
  } else {
    services::lease_table(leases).print(std::cout);
  }
  return kExitDone;
}

int run_sessions(const Target& target, bool json) {
  auto answer = ask<common::SessionListMsg>(target, common::ListSessionsMsg{});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& sessions = answer.result->value().sessions;
  if (json) {
    print_json(sessions);
  } else {
    services::session_table(sessions).print(std::cout);
  }
  return kExitDone;
}

void print_policy(const common::PolicyInfoMsg& policy, bool json) {
  if (json) {
    print_json(policy);
    return;
  }
  std::cout << "source: " << policy.source << '\n';
  for (const auto& line : services::policy_settings(policy.policy)) std::cout << line << '\n';
  const auto rules = services::policy_rule_table(policy.policy);
  if (rules.rows() == 0) {
    std::cout << "no rules\n";
  } else {
    std::cout << "rules (first match wins):\n";
    rules.print(std::cout);
  }
}

int run_policy(const Target& target, bool json) {
  auto answer = ask<common::PolicyInfoMsg>(target, common::GetPolicyMsg{});
  if (!answer.result->ok()) return fail(answer, target);
  print_policy(answer.result->value(), json);
  return kExitDone;
}

int run_policy_reload(const Target& target, bool json) {
  auto answer = ask<common::PolicyInfoMsg>(target, common::ReloadPolicyMsg{});
  if (!answer.result->ok()) {
    return fail(
        answer, target,
        {{Errc::denied, kRunAsAdmin},
         {Errc::config_error,
          "the policy in force is unchanged; fix the file and run `devmgrctl policy reload` again."}});
  }
  if (!json) std::cout << "reloaded the policy\n";
  print_policy(answer.result->value(), json);
  return kExitDone;
}

// --- group ----------------------------------------------------------------------------------------

// One line above the members: whether this manager drains, and its universal clock's offset.
void print_group_header(const common::GroupInfoMsg& info) {
  std::cout << "manager " << info.manager << (info.draining ? " (draining: refuses DTUs)" : "");
  if (info.universal_offset_ms) {
    std::ostringstream offset;
    offset << std::showpos << std::fixed << std::setprecision(1) << *info.universal_offset_ms;
    std::cout << ", universal clock " << offset.str() << " ms from its own";
  }
  std::cout << '\n';
}

int run_group(const Target& target, bool json) {
  auto answer = ask<common::GroupInfoMsg>(target, common::GroupStatusMsg{});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& info = answer.result->value();
  if (json) {
    print_json(info);
  } else {
    print_group_header(info);
    services::group_table(info.members).print(std::cout);
  }
  return kExitDone;
}

int run_group_reload(const Target& target, bool json) {
  auto answer = ask<common::GroupInfoMsg>(target, common::ReloadGroupMsg{});
  if (!answer.result->ok()) {
    return fail(answer, target,
                {{Errc::denied, kRunAsAdmin},
                 {Errc::config_error,
                  "the group list and keys in force are unchanged; fix the file and run `devmgrctl group reload` "
                  "again."}});
  }
  if (json) {
    print_json(answer.result->value());
  } else {
    std::cout << "reloaded the group list and keys\n";
    services::group_table(answer.result->value().members).print(std::cout);
  }
  return kExitDone;
}

// --- dtus and status ------------------------------------------------------------------------------

std::string optional_text(const std::optional<std::string>& value) {
  return value && !value->empty() ? *value : std::string("-");
}

void print_dtu_table(const std::vector<common::DtuInfo>& dtus, bool group) {
  std::vector<std::string> headers{"DTU"};
  if (group) headers.push_back("OWNER");
  for (const char* h : {"STATE", "ADDRESS", "AGENT", "CONNECTED", "DEVICES", "UNITS HELD/FREE"}) headers.push_back(h);
  services::Table table(std::move(headers));
  for (const auto& d : dtus) {
    std::vector<std::string> row{d.dtu};
    if (group) row.push_back(d.owner);
    row.push_back(d.state);
    row.push_back(optional_text(d.address));
    row.push_back(optional_text(d.agent_version));
    row.push_back(d.connected_ms_ago ? services::format_duration_ms(*d.connected_ms_ago) + " ago" : std::string("-"));
    row.push_back(std::to_string(d.devices));
    std::string units = std::to_string(d.units_allocated) + "/" + std::to_string(d.units_free);
    if (d.units_unavailable != 0) units += " (" + std::to_string(d.units_unavailable) + " unavailable)";
    row.push_back(std::move(units));
    table.add_row(std::move(row));
  }
  if (table.rows() == 0) {
    std::cout << (group ? "no DTU is connected to any member of the group\n" : "no DTU is connected to this manager\n");
    return;
  }
  table.print(std::cout);
}

int run_dtus(const Target& target, bool group, bool json) {
  auto answer = ask<common::DtuListMsg>(target, common::ListDtusMsg{group});
  if (!answer.result->ok()) return fail(answer, target);
  const auto& dtus = answer.result->value().dtus;
  if (json) {
    print_json(dtus);
  } else {
    print_dtu_table(dtus, group);
  }
  return kExitDone;
}

// The operator's one screen, composed from the listings. `healthy` is false (exit code 4) when a
// group member is not up or the manager drains; `problems` says which.
struct StatusReport {
  common::GroupInfoMsg group;
  std::vector<common::DtuInfo> dtus;
  std::vector<common::DeviceRecord> devices;
  std::size_t leases = 0;
  std::size_t finders = 0;
  std::size_t sessions = 0;
  std::string policy_source;

  std::vector<std::string> down_members() const {
    std::vector<std::string> down;
    for (const auto& m : group.members) {
      if (m.state != "self" && m.state != "up") down.push_back(m.id + " (" + m.state + ")");
    }
    return down;
  }
  std::vector<std::string> problems() const {
    std::vector<std::string> problems;
    for (const auto& member : down_members()) problems.push_back("group member " + member + " is not up");
    if (group.draining) problems.push_back("this manager is draining: it refuses DTUs (devmgrctl undrain)");
    return problems;
  }
  // Seconds since the manager started, from its incarnation (wall µs at its start); none when the
  // clocks disagree.
  std::optional<std::uint64_t> uptime_s() const {
    const auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    if (group.incarnation == 0 || now_us < static_cast<std::int64_t>(group.incarnation)) return std::nullopt;
    return (static_cast<std::uint64_t>(now_us) - group.incarnation) / 1000000;
  }
  std::map<std::string, std::uint32_t> units() const {
    std::map<std::string, std::uint32_t> units{{"free", 0}, {"allocated", 0}, {"unavailable", 0}};
    for (const auto& d : devices) {
      for (const auto& u : d.units) ++units[common::unit_state_name(u.state)];
    }
    return units;
  }

  nlohmann::json to_json() const {
    std::size_t up = 0;
    for (const auto& m : group.members) if (m.state == "self" || m.state == "up") ++up;
    nlohmann::json down = nlohmann::json::array();
    for (const auto& m : group.members) {
      if (m.state != "self" && m.state != "up") down.push_back(m.id);
    }
    nlohmann::json j{{"manager", group.manager},
                     {"incarnation", group.incarnation},
                     {"draining", group.draining},
                     {"healthy", problems().empty()},
                     {"problems", problems()},
                     {"members", {{"up", up}, {"total", group.members.size()}, {"down", down}}},
                     {"dtus", dtus.size()},
                     {"devices", devices.size()},
                     {"units", units()},
                     {"leases", leases},
                     {"finders", finders},
                     {"sessions", sessions},
                     {"policy_source", policy_source}};
    if (const auto uptime = uptime_s()) j["uptime_s"] = *uptime;
    return j;
  }

  void print(std::ostream& out) const {
    const auto j = to_json();
    out << "manager      " << group.manager << " (incarnation " << group.incarnation;
    if (const auto uptime = uptime_s()) out << ", up " << services::format_duration_ms(*uptime * 1000);
    out << ")" << (group.draining ? ", DRAINING" : "") << '\n';
    out << "group        " << j["members"]["up"].get<std::size_t>() << "/" << group.members.size() << " members up";
    const auto down = down_members();
    for (std::size_t i = 0; i < down.size(); ++i) out << (i == 0 ? "; not up: " : ", ") << down[i];
    out << '\n';
    out << "dtus         " << dtus.size() << '\n';
    out << "devices      " << devices.size() << '\n';
    const auto u = units();
    out << "units        " << u.at("allocated") << " allocated, " << u.at("free") << " free, " << u.at("unavailable")
        << " unavailable\n";
    out << "leases       " << leases << '\n';
    out << "finders      " << finders << '\n';
    out << "sessions     " << sessions << '\n';
    out << "policy       " << policy_source << '\n';
    const auto issues = problems();
    if (issues.empty()) {
      out << "health       ok\n";
    } else {
      for (const auto& p : issues) out << "DEGRADED     " << p << '\n';
    }
  }
};

int run_status(const Target& target, bool json) {
  StatusReport report;
  auto group = ask<common::GroupInfoMsg>(target, common::GroupStatusMsg{});
  if (!group.result->ok()) return fail(group, target);
  report.group = group.result->value();
  auto dtus = ask<common::DtuListMsg>(target, common::ListDtusMsg{false});
  if (!dtus.result->ok()) return fail(dtus, target);
  report.dtus = dtus.result->value().dtus;
  auto devices = ask<common::DeviceListMsg>(target, common::ListDevicesMsg{std::nullopt, false});
  if (!devices.result->ok()) return fail(devices, target);
  report.devices = devices.result->value().devices;
  auto leases = ask<common::LeaseListMsg>(target, common::ListLeasesMsg{});
  if (!leases.result->ok()) return fail(leases, target);
  report.leases = leases.result->value().leases.size();
  auto finders = ask<common::FinderListMsg>(target, common::ListFindersMsg{});
  if (!finders.result->ok()) return fail(finders, target);
  report.finders = finders.result->value().finders.size();
  auto sessions = ask<common::SessionListMsg>(target, common::ListSessionsMsg{});
  if (!sessions.result->ok()) return fail(sessions, target);
  report.sessions = sessions.result->value().sessions.size();
  auto policy = ask<common::PolicyInfoMsg>(target, common::GetPolicyMsg{});
  if (!policy.result->ok()) return fail(policy, target);
  report.policy_source = policy.result->value().source;
  if (json) {
    print_json(report.to_json());
  } else {
    report.print(std::cout);
  }
  return report.problems().empty() ? kExitDone : kExitDegraded;
}

// --- drain ----------------------------------------------------------------------------------------

int run_drain(const Target& target, std::optional<std::uint32_t> wait_ms, bool json) {
  // The manager answers when its last DTU left, or with a timeout after wait_ms: wait for it
  // that long plus the usual margin.
  const auto wait = std::chrono::milliseconds(wait_ms.value_or(kDefaultDrainWaitMs));
  auto answer = ask<common::DrainStatusMsg>(target, common::DrainMsg{wait_ms}, wait + target.timeout);
  if (!answer.result->ok()) {
    return fail(answer, target,
                {{Errc::denied, kRunAsAdmin},
                 {Errc::timeout,
                  "the manager stays draining (it refuses new DTUs); DTUs whose agent does not move stay until "
                  "they disconnect. Run drain again to wait more, or `devmgrctl undrain`."},
                 {Errc::closed, "an undrain came before every DTU left."}});
  }
  if (json) {
    print_json(answer.result->value());
  } else {
    std::cout << "drained: no DTU left; the manager refuses new ones until `devmgrctl undrain`\n";
  }
  return kExitDone;
}

int run_undrain(const Target& target, bool json) {
  auto answer = ask<common::DrainStatusMsg>(target, common::UndrainMsg{});
  if (!answer.result->ok()) return fail(answer, target, {{Errc::denied, kRunAsAdmin}});
  if (json) {
    print_json(answer.result->value());
  } else {
    std::cout << "undrained: the manager takes DTUs again (" << answer.result->value().dtus << " connected)\n";
  }
  return kExitDone;
}

// --- sessions -------------------------------------------------------------------------------------

int run_session_attach(const Target& target, const common::SessionAttachMsg& request, bool json) {
  auto answer = ask<common::AckMsg>(target, request);
  if (!answer.result->ok()) {
    return fail(answer, target,
                {{Errc::denied, kRunAsAdmin},
                 {Errc::not_found, "`devmgrctl devices` shows the DTUs the manager knows."}});
  }
  if (json) {
    print_json(request);
  } else {
    std::cout << "session " << request.session << " of " << request.user << " is at DTU " << request.dtu
              << '\n';
  }
  return kExitDone;
}

int run_session_detach(const Target& target, const common::SessionDetachMsg& request, bool json) {
  auto answer = ask<common::AckMsg>(target, request);
  if (!answer.result->ok()) {
    return fail(answer, target,
                {{Errc::denied, kRunAsAdmin},
                 {Errc::not_found, "`devmgrctl sessions` lists the attached sessions."}});
  }
  if (json) {
    print_json(request);
  } else {
    std::cout << "session " << request.session << " detached\n";
  }
  return kExitDone;
}

// --- leases ---------------------------------------------------------------------------------------

// What to do next when an allocation fails. A refusal names the holder's lease as
// "(lease <id>)": the hint offers the command that ends it.
Hints allocate_hints(const common::AllocateMsg& request, const Error& error) {
  static const std::regex kLeaseId(R"(\(lease ([0-9A-Za-z._-]+)\))");
  std::smatch m;
  const std::string lease = std::regex_search(error.detail, m, kLeaseId) ? m[1].str() : std::string("ID");
  Hints hints{{Errc::refused,
               "wait for the unit with --wait-ms MS, or end the holder's lease (administrators): "
               "devmgrctl release --dtu " +
                   request.dtu + " --lease " + lease},
              {Errc::not_found, "`devmgrctl devices` lists the DTUs, their devices and units."},
              {Errc::unavailable, "`devmgrctl devices` and `devmgrctl leases` show what holds the device."}};
  if (request.keep) {
    hints[Errc::denied] =
        "--keep is for administrators (root or the user devmgr runs as); --hold holds the lease while "
        "devmgrctl runs.";
  }
  return hints;
}

void print_grant(const common::LeaseGrantedMsg& grant, bool json) {
  if (json) {
    print_json(grant);
    return;
  }
  std::cout << "lease " << grant.lease << " on DTU " << grant.dtu << " device " << grant.device << " unit "
            << grant.unit << "\nholder " << grant.holder << "\nexpires in "
            << services::format_duration_ms(grant.expires_in_ms) << '\n';
}

common::Duration call_deadline(const Target& target, const common::AllocateMsg& request) {
  return target.timeout + std::chrono::milliseconds(request.wait_ms.value_or(0));
}

int run_allocate_keep(const Target& target, const common::AllocateMsg& request, bool json) {
  auto answer = ask<common::LeaseGrantedMsg>(target, request, call_deadline(target, request));
  if (!answer.result->ok()) {
    if (answer.unreachable) return fail(answer, target);
    return failed(answer.result->error(), allocate_hints(request, answer.result->error()));
  }
  const auto& grant = answer.result->value();
  print_grant(grant, json);
  if (!json) {
    std::cout << "kept after devmgrctl exits; it ends when it expires, or with: devmgrctl release --dtu "
              << grant.dtu << " --lease " << grant.lease << '\n';
  }
  return kExitDone;
}

// `allocate --hold`: the state its coroutine shares with the signal and connection handlers.
struct Hold {
  explicit Hold(const asio::any_io_executor& ex) : wake(ex) {}
  asio::steady_timer wake;                    // the next renewal; cancelled to act at once
  services::ManagerClient* client = nullptr;  // while connected
  bool granted = false;
  bool stop_requested = false;                 // SIGINT or SIGTERM
  std::optional<common::LeaseEndedMsg> ended;  // the lease ended by itself
  std::optional<Error> lost;                   // the connection closed under us
  int code = kExitFailed;
};

void request_stop(const std::shared_ptr<Hold>& hold) {
  hold->stop_requested = true;
  hold->wake.cancel();
  // Still waiting for the grant: closing the connection withdraws the request.
  if (!hold->granted && hold->client != nullptr) hold->client->close();
}

// Renews the granted lease every third of its remaining time until a stop, its end, or the
// connection's; returns the last error of a failed renewal, if any.
asio::awaitable<std::optional<Error>> keep_renewing(std::shared_ptr<Hold> hold, common::LeaseGrantedMsg grant,
                                                    std::uint32_t length_ms, common::Duration timeout) {
  std::uint32_t expires_in_ms = grant.expires_in_ms;
  // Each flag may be set by a handler while we sleep or wait for a renewal.
  const auto over = [&hold] { return hold->stop_requested || hold->ended || hold->lost; };
  while (!over()) {
    hold->wake.expires_after(std::max(kMinRenewInterval, std::chrono::milliseconds(expires_in_ms / 3)));
    auto sleep = hold->wake.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_await std::move(sleep);
    if (over()) break;
    // ManagerClient::call keeps a reference to its request until it completes: a named local.
    const common::RenewMsg renew{grant.dtu, grant.lease, length_ms};
    auto call = hold->client->call<common::LeaseGrantedMsg>(renew, timeout);
    auto renewed = co_await std::move(call);
    if (!renewed.ok() && !hold->ended && !hold->lost) co_return renewed.error();
    if (renewed.ok()) expires_in_ms = renewed->expires_in_ms;
  }
  co_return std::nullopt;
}

// A lease_ended reason as the holder of `allocate --hold` reads it.
std::string why_ended(const std::string& reason) {
  if (reason == "released") return "someone else released it (an administrator's `devmgrctl release`?)";
  if (reason == "expired") return "a renewal came too late";
  if (reason == "device_gone") return "the device was unplugged";
  if (reason == "dtu_lost") return "the manager lost its link to the DTU";
  if (reason == "agent_stopping") return "the DTU's agent is stopping";
  return "the DTU ended it";
}

asio::awaitable<void> hold_lease(Target target, common::AllocateMsg request, bool json,
                                 std::shared_ptr<Hold> hold) {
  auto connect = services::ManagerClient::connect(target.socket, kClientName, common::SystemClock::instance(),
                                                  target.timeout);
  auto client = co_await std::move(connect);
  if (!client.ok()) {
    hold->code = unreachable(client.error(), target);
    co_return;
  }
  hold->client = client->get();
  (*client)->on_lease_ended([hold](const common::LeaseEndedMsg& ended) {
    hold->ended = ended;
    hold->wake.cancel();
  });
  (*client)->on_closed([hold](const Error& reason) {
    hold->lost = reason;
    hold->wake.cancel();
  });
  if (hold->stop_requested) {
    hold->client = nullptr;
    std::cerr << "devmgrctl: interrupted before the lease was granted\n";
    co_return;
  }
  const auto started = common::SystemClock::instance().now();
  auto call = (*client)->call<common::LeaseGrantedMsg>(request, call_deadline(target, request));
  auto grant = co_await std::move(call);
  if (!grant.ok()) {
    hold->client = nullptr;
    if (hold->stop_requested) {
      std::cerr << "devmgrctl: interrupted before the lease was granted\n";
    } else if (lost_manager(**client, grant.error(), started, call_deadline(target, request))) {
      hold->code = unreachable(grant.error(), target);
    } else {
      hold->code = failed(grant.error(), allocate_hints(request, grant.error()));
    }
    co_return;
  }
  hold->granted = true;
  print_grant(*grant, json);
  std::cout.flush();
  std::cerr << "devmgrctl: holding lease " << grant->lease << ", renewing it every third of its length; "
            << "Ctrl-C or SIGTERM releases it\n";

  // Renew for as long as asked: the length given, else the length the manager granted.
  const std::uint32_t length_ms = request.length_ms != 0 ? request.length_ms : grant->expires_in_ms;
  auto renewing = keep_renewing(hold, *grant, length_ms, target.timeout);
  auto renew_error = co_await std::move(renewing);

  if (hold->ended) {
    std::cerr << "devmgrctl: lease " << grant->lease << " ended (" << hold->ended->reason
              << "): " << why_ended(hold->ended->reason) << '\n';
    hold->code = kExitFailed;
  } else if (hold->lost) {
    std::cerr << "devmgrctl: lost the manager: " << hold->lost->describe() << "\ndevmgrctl: lease "
              << grant->lease << " is no longer renewed; it ends when it expires.\n";
    hold->code = kExitUnreachable;
  } else if (renew_error) {
    std::cerr << "devmgrctl: renewing lease " << grant->lease << " failed: " << renew_error->describe()
              << '\n';
    hold->code = kExitFailed;
  } else {
    const common::ReleaseMsg release_request{grant->dtu, grant->lease};
    auto release = (*client)->call<common::AckMsg>(release_request, target.timeout);
    auto released = co_await std::move(release);
    if (released.ok()) {
      if (!json) std::cout << "released lease " << grant->lease << '\n';
      hold->code = kExitDone;
    } else {
      std::cerr << "devmgrctl: releasing lease " << grant->lease << " failed: " << released.error().describe()
                << "\ndevmgrctl: it ends when devmgrctl's connection closes, now.\n";
      hold->code = kExitFailed;
    }
  }
  hold->client = nullptr;
  (*client)->close();
}

int run_allocate_hold(const Target& target, const common::AllocateMsg& request, bool json) {
  asio::io_context io;
  auto hold = std::make_shared<Hold>(io.get_executor());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([hold](const std::error_code& ec, int) {
    if (!ec) request_stop(hold);
  });
  asio::co_spawn(io, hold_lease(target, request, json, hold), [&signals, hold](std::exception_ptr e) {
    signals.cancel();
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& failure) {
      std::cerr << "devmgrctl: " << failure.what() << '\n';
      hold->code = kExitFailed;
    }
  });
  io.run();
  return hold->code;
}

int run_release(const Target& target, const common::ReleaseMsg& request, bool json) {
  auto answer = ask<common::AckMsg>(target, request);
  if (!answer.result->ok()) {
    return fail(answer, target,
                {{Errc::denied, "only root or the user devmgr runs as may release another uid's lease."},
                 {Errc::not_found, "`devmgrctl leases` lists the leases."}});
  }
  if (json) {
    print_json(request);
  } else {
    std::cout << "released lease " << request.lease << " on DTU " << request.dtu << '\n';
  }
  return kExitDone;
}

// --- keys -----------------------------------------------------------------------------------------

int run_keygen(const std::string& out, const std::optional<std::string>& dtu,
               const std::string& site_key_file) {
  common::SecretKey key;
  if (dtu) {
    if (!common::is_valid_id(*dtu)) {
      std::cerr << "devmgrctl: DTU id '" << *dtu << "': expected 1-64 of [A-Za-z0-9._-]\n";
      return kExitUsage;
    }
    auto site = common::load_key_file(site_key_file);
    if (!site.ok()) return failed(site.error(), {});
    key.bytes = common::derive_dtu_key(*site, *dtu);
  } else {
    key = common::generate_key();
  }
  if (auto written = common::write_key_file(out, key); !written.ok()) return failed(written.error(), {});
  std::cout << (dtu ? "wrote the key of DTU " + *dtu : std::string("wrote a new key")) << " to " << out
            << '\n';
  return kExitDone;
}

const char* const kAllocateNeedsMode =
    "devmgrctl allocate: choose --hold or --keep. A lease lives only as long as the connection that took it, "
    "so "
    "without one of them it would end the moment devmgrctl exits.\n"
    "  --hold  keeps devmgrctl running, renewing the lease, until Ctrl-C or SIGTERM releases it;\n"
    "  --keep  (administrators) makes a lease that outlives devmgrctl: it ends when it expires or with "
    "`devmgrctl release`.\n";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"devmgrctl: inspect and operate a dtubroker device manager"};
  app.footer(
      "Exit status: 0 done, 1 the operation failed, 2 bad usage, 3 the manager is unreachable,\n"
      "4 (status only) degraded: a group member is not up, or the manager drains.\n"
      "Each verb has --help; docs/devmgrctl.md describes them all.");
  app.require_subcommand(1);
  app.fallthrough();  // --socket and --timeout-ms may follow the verb
  std::string socket = services::default_socket_path();
  int timeout_ms = 5000;
  bool json = false;
  app.add_option("--socket", socket,
                 "the manager's Unix socket (default: $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--timeout-ms", timeout_ms, "how long to wait for the manager to connect and to answer, in ms (default 5000)")
      ->check(CLI::Range(1, 600000));
  app.set_version_flag("--version", dtu::common::kVersion);
  const auto add_json = [&json](CLI::App* verb, const std::string& what) {
    verb->add_flag("--json", json, "print " + what + " as JSON (stable field names: the message's)");
  };

  auto* status = app.add_subcommand(
      "status", "one screen: the manager, the group's members up, DTUs, devices, units, leases, policy; exit 4 "
                "when degraded (a member not up, or draining)");
  add_json(status, "{manager, incarnation, uptime_s, draining, healthy, problems, members: {up, total, down}, dtus, "
                   "devices, units: {free, allocated, unavailable}, leases, finders, sessions, policy_source}");

  auto* dtus = app.add_subcommand("dtus", "list the DTUs connected to this manager (--group: to every member)");
  bool group_dtus = false;
  dtus->add_flag("--group", group_dtus, "also the DTUs the other members serve, with their owner (default: off)");
  add_json(dtus, "an array of DTUs (dtu, owner, state, address, agent_version, boot_epoch, connected_ms_ago, "
                 "devices, units_free, units_allocated, units_unavailable)");

  auto* devices = app.add_subcommand("devices", "list the devices the manager knows, with their units");
  std::optional<std::string> dtu_filter;
  add_json(devices, "an array of device records");
  devices->add_option("--dtu", dtu_filter, "only this DTU's devices (default: every DTU)");
  bool group_devices = false;
  devices->add_flag("--group", group_devices, "the devices of the whole group, each member answering for its DTUs (default: off)");

  auto* group = app.add_subcommand("group", "list the members of the group: links, incarnations, clocks, counts");
  group->require_subcommand(0, 1);
  group->fallthrough();
  add_json(group, "{manager, incarnation, draining, universal_offset_ms, members: [{id, address, self, state, incarnation, rtt_ms, offset_ms, "
                  "last_heard_ms_ago, dtus, devices, finders_held, finders_sent, last_error}]}");
  auto* group_reload = group->add_subcommand(
      "reload", "read the group list and keys again (administrators): new peers are dialed, removed ones dropped");
  add_json(group_reload, "the group after the reload, as `group --json`");
  const dtu::devmgrctl::GroupExecVerb group_exec(*group);  // group exec VERB (group_exec.cpp)

  auto* drain = app.add_subcommand(
      "drain", "(administrators) move every DTU to another manager and refuse new ones; waits until none is left");
  std::optional<std::uint32_t> drain_wait_ms;
  drain->add_option("--wait-ms", drain_wait_ms, "how long the manager waits for the DTUs to leave (default 30000)")
      ->check(CLI::Range(std::uint32_t{0}, kMaxLeaseMs));
  add_json(drain, "{draining, dtus}");
  auto* undrain = app.add_subcommand("undrain", "(administrators) take DTUs again after a drain");
  add_json(undrain, "{draining, dtus}");

  auto* finders = app.add_subcommand("finders", "list the finders services registered, with their matches");
  add_json(finders, "an array of finders (client, pid, uid, finder_id, finder, matches)");

  auto* leases = app.add_subcommand("leases", "list the leases this manager brokered");
  add_json(leases, "an array of leases (lease, dtu, device, unit, holder, uid, expires_in_ms, keep)");

  auto* sessions = app.add_subcommand("sessions", "list the attached sessions (hot-desking)");
  add_json(sessions, "an array of sessions (session, user, dtu, attached_ms_ago)");

  auto* policy = app.add_subcommand("policy", "show the allocation policy in force: its source and rules");
  policy->require_subcommand(0, 1);
  policy->fallthrough();
  add_json(policy, "{source, policy}");
  auto* reload = policy->add_subcommand(
      "reload", "read the policy file again (administrators); a broken file keeps the old policy");
  add_json(reload, "the new {source, policy}");

  auto* session = app.add_subcommand("session", "attach or detach a user's session (administrators)");
  session->require_subcommand(1);
  session->fallthrough();
  common::SessionAttachMsg attach_request;
  auto* attach = session->add_subcommand("attach", "bind session S of user U to the DTU the user sits at");
  attach->add_option("--session", attach_request.session, "the session id")->required();
  attach->add_option("--user", attach_request.user, "the session's user name")->required();
  attach->add_option("--dtu", attach_request.dtu, "the DTU id")->required();
  add_json(attach, "the request");
  common::SessionDetachMsg detach_request;
  auto* detach = session->add_subcommand("detach", "the session ended or left its DTU");
  detach->add_option("--session", detach_request.session, "the session id")->required();
  add_json(detach, "the request");

  auto* allocate =
      app.add_subcommand("allocate", "lease a unit: --hold it while devmgrctl runs, or --keep it");
  common::AllocateMsg allocate_request;
  std::optional<std::uint32_t> wait_ms;
  bool hold = false;
  allocate->add_option("--dtu", allocate_request.dtu, "the DTU id")->required();
  allocate->add_option("--device", allocate_request.device, "the device's port path, e.g. 1-2")->required();
  allocate->add_option("--unit", allocate_request.unit, "the unit number")->required();
  allocate
      ->add_option("--length-ms", allocate_request.length_ms, "lease length (default: the policy's, 60000)")
      ->check(CLI::Range(std::uint32_t{1}, kMaxLeaseMs));
  allocate
      ->add_option("--wait-ms", wait_ms,
                   "if the unit is held, wait this long for it, first come first served (default: do not wait)")
      ->check(CLI::Range(std::uint32_t{0}, kMaxLeaseMs));
  auto* keep_flag = allocate->add_flag("--keep", allocate_request.keep,
                                       "(administrators) the lease outlives devmgrctl; print it and exit");
  allocate
      ->add_flag("--hold", hold, "keep running and renewing the lease until SIGINT/SIGTERM, then release it")
      ->excludes(keep_flag);
  add_json(allocate, "the grant (lease, dtu, device, unit, holder, expires_in_ms, token, inband)");

  auto* release = app.add_subcommand(
      "release", "end a lease (administrators may end anyone's; others only their own uid's)");
  common::ReleaseMsg release_request;
  release->add_option("--dtu", release_request.dtu, "the DTU id")->required();
  release->add_option("--lease", release_request.lease, "the lease id (devmgrctl leases lists them)")
      ->required();
  add_json(release, "the request");

  auto* keygen =
      app.add_subcommand("keygen", "write a new random key, or derive a DTU's key from the site key");
  std::string out;
  std::optional<std::string> keygen_dtu;
  std::string site_key_file = "/etc/dtubroker/site-dtu.key";
  keygen->add_option("--out", out, "file to write (mode 0600)")->required();
  keygen->add_option("--dtu", keygen_dtu, "derive the key of this DTU id instead of generating one");
  keygen->add_option("--site-key", site_key_file, "the site DTU key to derive from, with --dtu (default /etc/dtubroker/site-dtu.key)");

  for (auto* verb : app.get_subcommands({})) verb->fallthrough();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitDone : kExitUsage;
  }
  const Target target{socket, std::chrono::milliseconds(timeout_ms)};
  if (status->parsed()) return run_status(target, json);
  if (dtus->parsed()) return run_dtus(target, group_dtus, json);
  if (devices->parsed()) return run_devices(target, dtu_filter, group_devices, json);
  if (group_exec.parsed()) return group_exec.run(socket, std::chrono::milliseconds(timeout_ms));
  if (group_reload->parsed()) return run_group_reload(target, json);
  if (group->parsed()) return run_group(target, json);
  if (drain->parsed()) return run_drain(target, drain_wait_ms, json);
  if (undrain->parsed()) return run_undrain(target, json);
  if (finders->parsed()) return run_finders(target, json);
  if (leases->parsed()) return run_leases(target, json);
  if (sessions->parsed()) return run_sessions(target, json);
  if (reload->parsed()) return run_policy_reload(target, json);
  if (policy->parsed()) return run_policy(target, json);
  if (attach->parsed()) return run_session_attach(target, attach_request, json);
  if (detach->parsed()) return run_session_detach(target, detach_request, json);
  if (allocate->parsed()) {
    allocate_request.wait_ms = wait_ms;
    if (allocate_request.keep) return run_allocate_keep(target, allocate_request, json);
    if (hold) return run_allocate_hold(target, allocate_request, json);
    std::cerr << kAllocateNeedsMode;
    return kExitUsage;
  }
  if (release->parsed()) return run_release(target, release_request, json);
  if (keygen->parsed()) return run_keygen(out, keygen_dtu, site_key_file);
  return kExitUsage;
}
