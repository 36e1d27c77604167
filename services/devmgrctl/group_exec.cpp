#include "group_exec.hpp"

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/command_messages.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/services/exit_codes.hpp"
#include "dtu/services/manager_client.hpp"

namespace dtu::devmgrctl {

namespace {

using common::Errc;
using common::Error;
using nlohmann::json;

using services::kExitDone;
using services::kExitFailed;
using services::kExitUnreachable;
using services::kExitUsage;
// How long devmgrctl waits past the command's timeout for the manager's final summary (the
// manager itself reports every node by then).
constexpr std::chrono::milliseconds kSummaryGrace{5000};
const char* const kClientName = "devmgrctl";

// Outcomes in the order the summary names them.
const std::vector<std::string> kSummaryOrder = {"done", "failed", "refused", "unreachable", "timeout"};

std::optional<Errc> errc_of(const Error& error) {
  if (error.code.category() != common::dtu_category()) return std::nullopt;
  return static_cast<Errc>(error.code.value());
}

std::string describe_result(const common::GroupExecEventMsg& event) {
  if (event.outcome != "done") return event.detail;
  if (event.result.is_object()) {
    if (const auto it = event.result.find("summary"); it != event.result.end() && it->is_string()) {
      return it->get<std::string>();
    }
  }
  return event.result.dump();
}

// What one run saw; filled by the coroutine, read after io.run().
struct Run {
  int code = kExitFailed;
  std::optional<common::GroupExecQueuedMsg> queued;
  std::optional<common::GroupExecDoneMsg> done;
  std::map<std::string, std::string> outcomes;  // node -> final outcome seen in events
};

struct Request {
  std::string socket;
  std::chrono::milliseconds connect_timeout;
  common::GroupExecMsg msg;
  bool json = false;
};

void print_event(const common::GroupExecEventMsg& event, bool as_json, std::size_t width) {
  if (as_json) {
    json line = event;
    line["event"] = "outcome";
    std::cout << line.dump() << std::endl;
    return;
  }
  if (event.outcome == "queued") return;  // people see the final outcome only
  std::cout << std::left << std::setw(static_cast<int>(width) + 2) << event.node << std::setw(13)
            << event.outcome << describe_result(event) << std::endl;
}

asio::awaitable<void> exchange(Request request, Run& run) {
  const auto& clock = common::SystemClock::instance();
  auto connect =
      services::ManagerClient::connect(request.socket, kClientName, clock, request.connect_timeout);
  auto client = co_await std::move(connect);
  if (!client.ok()) {
    std::cerr << "devmgrctl: " << client.error().describe() << '\n';
    run.code = kExitUnreachable;
    co_return;
  }
  auto ex = co_await asio::this_coro::executor;
  auto wake = std::make_shared<asio::steady_timer>(ex);
  auto pending = std::make_shared<std::vector<common::GroupExecEventMsg>>();
  auto finished = std::make_shared<std::optional<common::GroupExecDoneMsg>>();
  auto lost = std::make_shared<bool>(false);
  std::size_t width = 0;
  (*client)->on_event([wake, pending, finished](const common::Frame& frame) {
    if (frame.type == common::MessageType::group_exec_event) {
      if (auto event = common::from_frame<common::GroupExecEventMsg>(frame); event.ok())
        pending->push_back(*event);
    } else if (frame.type == common::MessageType::group_exec_done) {
      if (auto done = common::from_frame<common::GroupExecDoneMsg>(frame); done.ok()) *finished = *done;
    }
    wake->cancel();
  });
  (*client)->on_closed([wake, lost](const Error&) {
    *lost = true;
    wake->cancel();
  });
  const auto started = clock.now();
  auto call = (*client)->call<common::GroupExecQueuedMsg>(request.msg, request.connect_timeout);
  auto queued = co_await std::move(call);
  if (!queued.ok()) {
    const Error& error = queued.error();
    const bool no_answer = !(*client)->is_open() || (errc_of(error) == Errc::timeout &&
                                                     clock.now() - started >= request.connect_timeout);
    std::cerr << "devmgrctl: " << error.describe() << '\n';
    if (errc_of(error) == Errc::denied)
      std::cerr << "devmgrctl: run it as root, or as the user devmgr runs as.\n";
    run.code = no_answer ? kExitUnreachable : kExitFailed;
    co_return;
  }
  run.queued = *queued;
  for (const auto& node : queued->nodes) width = std::max(width, node.size());
  if (request.json) {
    json line = *queued;
    line["event"] = "queued";
    line["verb"] = request.msg.verb;
    std::cout << line.dump() << std::endl;
  }
  const auto deadline = clock.now() + std::chrono::milliseconds(request.msg.timeout_ms) + kSummaryGrace;
  // Bounded: every pass either handles an event, or ends at the deadline or the connection's end.
  while (true) {
    for (const auto& event : *pending) {
      if (event.command != queued->command) continue;
      print_event(event, request.json, width);
      if (common::is_final_command_outcome(event.outcome)) run.outcomes[event.node] = event.outcome;
    }
    pending->clear();
    if (*finished && (*finished)->command == queued->command) break;
    if (*lost || clock.now() >= deadline) break;
    wake->expires_at(std::chrono::steady_clock::now() + (deadline - clock.now()));
    auto [ec] = co_await wake->async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    (void)ec;
  }
  if (*finished) run.done = **finished;
  (*client)->close();
  if (!run.done) {
    std::cerr << "devmgrctl: "
              << (*lost ? "the manager closed the connection" : "no summary from the manager")
              << " before the command ended\n";
  }
}

}  // namespace

GroupExecVerb::GroupExecVerb(CLI::App& group) {
  exec_ = group.add_subcommand(
      "exec",
      "(administrators) run a verb on several managers of the group at once; prints each node's outcome");
  exec_->require_subcommand(1);
  exec_->fallthrough();
  exec_->add_option("--nodes", nodes_,
                    "only these members, comma-separated (default: every member, this one too)");
  exec_
      ->add_option("--timeout-ms", timeout_ms_, "how long the command may take on every node (default 30000; drain: its --wait-ms + 5000)")
      ->check(CLI::Range(std::uint32_t{1}, std::uint32_t{24 * 60 * 60 * 1000}));
  exec_->add_flag("--json", json_,
                  "one JSON object per line: {event: queued|outcome|summary, ...} (docs/devmgrctl.md)");
  reload_ = exec_->add_subcommand("reload", "read the group list, keys and policy again on every node");
  drain_ = exec_->add_subcommand("drain", "drain every node: move its DTUs away, refuse new ones");
  drain_->add_option("--wait-ms", wait_ms_, "how long each node waits for its DTUs to leave (default 30000)")
      ->check(CLI::Range(std::uint32_t{0}, std::uint32_t{24 * 60 * 60 * 1000}));
  undrain_ = exec_->add_subcommand("undrain", "take DTUs again on every node");
  diag_ = exec_->add_subcommand("diag", "a JSON dump of every node's state");
  rotate_ = exec_->add_subcommand(
      "rotate-key", "make the next group key current on every node (in memory; then edit each config)");
  for (auto* verb : {reload_, drain_, undrain_, diag_, rotate_}) verb->fallthrough();
}

bool GroupExecVerb::parsed() const {
  return exec_->parsed();
}

int GroupExecVerb::run(const std::string& socket, std::chrono::milliseconds connect_timeout) const {
  Request request{socket, connect_timeout, {}, json_};
  request.msg.timeout_ms = timeout_ms_;
  if (reload_->parsed()) request.msg.verb = "reload";
  if (drain_->parsed()) {
    request.msg.verb = "drain";
    if (wait_ms_) request.msg.args["wait_ms"] = *wait_ms_;
    // A node's drain may take its whole wait: the command's own bound must outlast it, or a
    // drain still going well would be reported timeout.
    const std::uint64_t wait = wait_ms_ ? *wait_ms_ : 30000;
    if (exec_->count("--timeout-ms") == 0) {
      request.msg.timeout_ms = static_cast<std::uint32_t>(std::min<std::uint64_t>(wait + 5000, 24 * 60 * 60 * 1000));
    } else if (request.msg.timeout_ms <= wait) {
      std::cerr << "devmgrctl: warning: --timeout-ms is not above --wait-ms: nodes still draining then are "
                   "reported timeout\n";
    }
  }
  if (undrain_->parsed()) request.msg.verb = "undrain";
  if (diag_->parsed()) request.msg.verb = "diag";
  if (rotate_->parsed()) request.msg.verb = "rotate-key";
  if (request.msg.verb.empty()) {
    std::cerr << "devmgrctl: group exec needs a verb: reload, drain, undrain, diag or rotate-key\n";
    return kExitUsage;
  }
  std::stringstream list(nodes_);
  for (std::string node; std::getline(list, node, ',');) {
    if (node.empty()) continue;
    if (!common::is_valid_id(node)) {
      std::cerr << "devmgrctl: --nodes: '" << node << "' is not a manager id\n";
      return kExitUsage;
    }
    request.msg.nodes.push_back(node);
  }
  asio::io_context io;
  Run run;
  common::spawn(io.get_executor(), exchange(request, run), common::Logger(kClientName), "group exec");
  io.run();
  if (run.code == kExitUnreachable || !run.queued) return run.code;
  const auto& outcomes = run.done ? run.done->outcomes : run.outcomes;
  std::map<std::string, int> counts;
  for (const auto& [node, outcome] : outcomes) ++counts[outcome];
  const bool all_done = run.done && counts["done"] == static_cast<int>(run.queued->nodes.size());
  if (json_) {
    json summary{{"event", "summary"},
                 {"command", run.queued->command},
                 {"nodes", run.queued->nodes.size()},
                 {"outcomes", outcomes},
                 {"ok", all_done}};
    std::cout << summary.dump() << std::endl;
  } else {
    std::cout << run.queued->nodes.size() << (run.queued->nodes.size() == 1 ? " node: " : " nodes: ");
    bool first = true;
    for (const auto& outcome : kSummaryOrder) {
      if (counts[outcome] == 0) continue;
      std::cout << (first ? "" : ", ") << counts[outcome] << ' ' << outcome;
      first = false;
    }
    if (first) std::cout << "no outcome";
    std::cout << '\n';
  }
  if (!run.done) return kExitUnreachable;
  return all_done ? kExitDone : kExitFailed;
}

}  // namespace dtu::devmgrctl
