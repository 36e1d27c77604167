#include "dtu/devmgr/group_commands.hpp"

#include <algorithm>
#include <array>
#include <exception>
#include <utility>

#include "dtu/common/messages.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;
using nlohmann::json;

namespace {

constexpr std::array<std::string_view, 5> kVerbs = {"reload", "drain", "undrain", "diag", "rotate-key"};

std::string verb_list() {
  std::string list;
  for (const auto verb : kVerbs) list += (list.empty() ? "" : ", ") + std::string(verb);
  return list;
}

long long millis(common::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

Frame error_frame(Errc code, std::string reason) {
  return common::to_frame(common::ErrorMsg{common::errc_name(code), std::move(reason)});
}

}  // namespace

bool is_group_verb(std::string_view verb) {
  return std::find(kVerbs.begin(), kVerbs.end(), verb) != kVerbs.end();
}

GroupCommands::GroupCommands(std::string self, std::uint64_t incarnation, const common::Clock& clock,
                             Hooks hooks, common::Logger log, std::optional<asio::any_io_executor> ex)
    : self_(std::move(self)),
      incarnation_(incarnation),
      clock_(clock),
      hooks_(std::move(hooks)),
      log_(std::move(log)),
      ex_(std::move(ex)) {
  if (ex_) worker_ = std::make_unique<asio::thread_pool>(1);
}

GroupCommands::~GroupCommands() {
  stop();
}

void GroupCommands::stop() {
  if (stopped_) return;
  stopped_ = true;
  *alive_ = false;
  timer_.reset();
  if (worker_) worker_->join();
}

void GroupCommands::later(std::function<void()> fn) {
  if (!ex_) return fn();
  asio::post(*ex_, [alive = alive_, fn = std::move(fn)] {
    if (*alive) fn();
  });
}

void GroupCommands::render_off_loop(std::function<json()> render, std::function<void(json)> done) {
  const auto run = [render = std::move(render)]() -> json {
    try {
      return render();
    } catch (const std::exception& e) {
      return json{{"error", e.what()}};
    }
  };
  if (!ex_ || !worker_) return done(run());
  asio::post(*worker_, [run, done = std::move(done), ex = *ex_, alive = alive_]() mutable {
    json rendered = run();
    asio::post(ex, [rendered = std::move(rendered), done = std::move(done), alive]() mutable {
      if (*alive) done(std::move(rendered));
    });
  });
}

// --- origin -------------------------------------------------------------------------------------

common::Result<common::GroupExecQueuedMsg> GroupCommands::start(const common::GroupExecMsg& request,
                                                                Sink sink) {
  if (stopped_) return Error(Errc::unavailable, "the manager is stopping");
  if (!is_group_verb(request.verb)) {
    return Error(Errc::invalid_argument, "unknown verb '" + request.verb + "' (verbs: " + verb_list() + ")");
  }
  const std::vector<std::string> members =
      hooks_.members ? hooks_.members() : std::vector<std::string>{self_};
  std::vector<std::string> nodes;
  for (const auto& node : request.nodes.empty() ? members : request.nodes) {
    if (std::find(members.begin(), members.end(), node) == members.end()) {
      std::string known;
      for (const auto& m : members) known += (known.empty() ? "" : ", ") + m;
      return Error(Errc::invalid_argument,
                   "'" + node + "' is not a member of the group (members: " + known + ")");
    }
    if (std::find(nodes.begin(), nodes.end(), node) == nodes.end()) nodes.push_back(node);
  }
  const auto now = clock_.now();
  const std::string id = std::to_string(incarnation_) + "-" + std::to_string(next_id_++);
  const common::Duration timeout = std::chrono::milliseconds(request.timeout_ms);
  Command command;
  command.verb = request.verb;
  command.sink = std::move(sink);
  command.deadline = now + timeout;
  for (const auto& node : nodes) {
    command.nodes[node] = NodeState{"", now + std::min<common::Duration>(timeout, kCommandQueueTimeout)};
  }
  commands_[id] = std::move(command);
  common::PeerCommandMsg msg;
  msg.command = id;
  msg.origin = self_;
  msg.verb = request.verb;
  msg.args = hooks_.prepare_args ? hooks_.prepare_args(request.verb, request.args) : request.args;
  std::string node_list;
  for (const auto& node : nodes) node_list += (node_list.empty() ? "" : ",") + node;
  log_.info(
      "", "command_started",
      {{"command", id}, {"verb", request.verb}, {"nodes", node_list}, {"timeout_ms", request.timeout_ms}});
  // The fan-out runs after the caller has answered its client: the events follow the reply.
  later([this, id, nodes, msg] {
    for (const auto& node : nodes) send_to_node(id, node, msg);
    arm_timer();
  });
  arm_timer();
  return common::GroupExecQueuedMsg{id, nodes};
}

void GroupCommands::send_to_node(const std::string& id, const std::string& node,
                                 const common::PeerCommandMsg& msg) {
  if (!commands_.contains(id)) return;
  if (node == self_) {
    if (auto reason = hooks_.refuse ? hooks_.refuse(msg.verb, msg.args) : std::nullopt) {
      return node_outcome(id, node, "refused", *reason, nullptr);
    }
    node_outcome(id, node, "queued", "", nullptr);
    seen_[{self_, id}] = clock_.now() + kFinishedMemory;
    return execute(self_, msg);
  }
  auto answered = [this, alive = alive_, id, node](common::Result<Frame> reply) {
    if (!*alive) return;
    if (!reply.ok()) {
      // The link hands the node's error reply over as a failed result: refused and
      // invalid_argument are the node's own answer; anything else (timeout, link lost) is none.
      const common::Error& error = reply.error();
      if (error.code == Errc::refused || error.code == Errc::invalid_argument) {
        node_outcome(id, node, "refused", error.detail, nullptr);
      } else {
        node_outcome(id, node, "unreachable", "no answer from " + node + ": " + error.describe(), nullptr);
      }
    } else if (reply->type == MessageType::error) {
      auto error = common::from_frame<common::ErrorMsg>(*reply);
      node_outcome(id, node, "refused", error.ok() ? error->reason : "refused", nullptr);
    } else if (auto queued = common::from_frame<common::PeerCommandQueuedMsg>(*reply); queued.ok()) {
      node_outcome(id, node, "queued", "", nullptr);
    } else {
      log_.warn(node, "bad_peer_message", {{"reason", queued.error().describe()}});
      node_outcome(id, node, "unreachable",
                   node + " answered with a bad message: " + queued.error().describe(), nullptr);
    }
    arm_timer();
  };
  const auto& state = commands_.at(id).nodes.at(node);
  const auto wait =
      std::max<common::Duration>(state.queue_deadline - clock_.now(), std::chrono::milliseconds(1));
  const bool sent = hooks_.request && hooks_.request(node, common::to_frame(msg), wait, std::move(answered));
  if (!sent) node_outcome(id, node, "unreachable", "no live link to " + node, nullptr);
}

void GroupCommands::node_outcome(const std::string& id, const std::string& node, const std::string& outcome,
                                 const std::string& detail, const json& result) {
  auto it = commands_.find(id);
  if (it == commands_.end()) return;
  auto state = it->second.nodes.find(node);
  if (state == it->second.nodes.end()) return;
  // De-duplication by (command, node): a final outcome is never replaced, and "queued" only
  // follows "no answer yet" (a completion may overtake its queued answer).
  if (common::is_final_command_outcome(state->second.outcome)) return;
  if (outcome == "queued" && !state->second.outcome.empty()) return;
  state->second.outcome = outcome;
  log_.info(node, "command_outcome",
            {{"command", id}, {"node", node}, {"outcome", outcome}, {"detail", detail}});
  if (it->second.sink.event) {
    common::GroupExecEventMsg event;
    event.command = id;
    event.node = node;
    event.outcome = outcome;
    event.detail = detail.substr(0, common::kMaxCommandTextBytes);
    event.result = result;
    it->second.sink.event(event);
  }
  finish_if_done(id);
}

void GroupCommands::finish_if_done(const std::string& id) {
  auto it = commands_.find(id);
  if (it == commands_.end()) return;
  common::GroupExecDoneMsg done;
  done.command = id;
  for (const auto& [node, state] : it->second.nodes) {
    if (!common::is_final_command_outcome(state.outcome)) return;
    done.outcomes[node] = state.outcome;
  }
  Sink sink = std::move(it->second.sink);
  commands_.erase(it);
  finished_[id] = clock_.now() + kFinishedMemory;
  std::map<std::string, int> counts;
  for (const auto& [node, outcome] : done.outcomes) ++counts[outcome];
  log_.info("", "command_finished", {{"command", id}, {"outcomes", json(counts).dump()}});
  if (sink.done) sink.done(done);
}

// --- node ---------------------------------------------------------------------------------------

bool GroupCommands::peer_frame(const std::string& from, const Frame& frame,
                               std::function<void(Frame)> reply) {
  if (frame.type == MessageType::peer_command) {
    on_peer_command(from, frame, reply);
  } else if (frame.type == MessageType::peer_command_done) {
    on_peer_done(from, frame, reply);
  } else {
    return false;
  }
  arm_timer();
  return true;
}

void GroupCommands::on_peer_command(const std::string& from, const Frame& frame,
                                    const std::function<void(Frame)>& reply) {
  auto msg = common::from_frame<common::PeerCommandMsg>(frame);
  if (!msg.ok()) {
    log_.warn(from, "bad_peer_message", {{"reason", msg.error().describe()}});
    return reply(error_frame(Errc::invalid_argument, msg.error().describe()));
  }
  // Completions go to the origin the request names: only the sender may name itself, or a
  // member could aim them at a third manager, or at this one's own pending commands.
  if (msg->origin != from) {
    log_.warn(from, "bad_peer_message",
              {{"reason", "command " + msg->command + " names origin " + msg->origin + ", not its sender"}});
    return reply(error_frame(Errc::invalid_argument, "a command's origin must be its sender " + from));
  }
  if (stopped_) return reply(error_frame(Errc::refused, self_ + " is stopping"));
  const CompletionKey key{msg->origin, msg->command};
  // The same request again (the origin's answer was lost): queued once, run once.
  if (seen_.contains(key)) return reply(common::to_frame(common::PeerCommandQueuedMsg{msg->command, self_}));
  std::optional<std::string> reason;
  if (!is_group_verb(msg->verb)) {
    reason = "unknown verb '" + msg->verb + "' (" + self_ + " knows: " + verb_list() + ")";
  } else if (hooks_.refuse) {
    reason = hooks_.refuse(msg->verb, msg->args);
  }
  if (reason) {
    log_.info(from, "command_refused",
              {{"command", msg->command}, {"origin", msg->origin}, {"verb", msg->verb}, {"reason", *reason}});
    return reply(error_frame(Errc::refused, *reason));
  }
  seen_[key] = clock_.now() + kFinishedMemory;
  log_.info(from, "command_queued",
            {{"command", msg->command}, {"origin", msg->origin}, {"verb", msg->verb}});
  reply(common::to_frame(common::PeerCommandQueuedMsg{msg->command, self_}));
  later([this, origin = msg->origin, m = *msg] { execute(origin, m); });
}

void GroupCommands::execute(const std::string& origin, const common::PeerCommandMsg& msg) {
  if (!hooks_.run) {
    common::PeerCommandDoneMsg done{msg.command, self_, "failed", "no verbs on " + self_, nullptr};
    return complete(origin, std::move(done));
  }
  hooks_.run(
      msg.verb, msg.args,
      [this, alive = alive_, origin, command = msg.command, verb = msg.verb](common::Result<json> result) {
        if (!*alive) return;
        common::PeerCommandDoneMsg done;
        done.command = command;
        done.node = self_;
        const std::size_t size =
            result.ok() ? result->dump(-1, ' ', false, json::error_handler_t::replace).size() : 0;
        if (result.ok() && size > kMaxCommandResultBytes) {
          // A result that would not fit in one frame would close the link to the origin at
          // every re-send: report its size instead.
          done.outcome = "failed";
          done.detail = verb + ": the result of " + std::to_string(size) + " bytes is above the " +
                        std::to_string(kMaxCommandResultBytes) + "-byte limit of a group command";
        } else if (result.ok()) {
          done.outcome = "done";
          done.result = std::move(result.value());
        } else {
          done.outcome = "failed";
          done.detail = result.error().describe().substr(0, common::kMaxCommandTextBytes);
        }
        log_.info(origin, "command_completed",
                  {{"command", command}, {"verb", verb}, {"outcome", done.outcome}, {"detail", done.detail}});
        complete(origin, std::move(done));
        arm_timer();
      });
}

void GroupCommands::complete(const std::string& origin, common::PeerCommandDoneMsg done) {
  if (origin == self_) {
    const std::string command = done.command;
    return node_outcome(command, self_, done.outcome, done.detail, done.result);
  }
  const auto now = clock_.now();
  const CompletionKey key{origin, done.command};
  outbox_[key] = Completion{origin, std::move(done), now, now, false};
  outbox_order_.push_back(key);
  trim_outbox(now);
  try_send(key);
}

void GroupCommands::try_send(const CompletionKey& key) {
  auto it = outbox_.find(key);
  if (it == outbox_.end() || it->second.in_flight || stopped_) return;
  auto& entry = it->second;
  auto acked = [this, alive = alive_, key](common::Result<Frame> reply) {
    if (!*alive) return;
    auto found = outbox_.find(key);
    if (found == outbox_.end()) return;
    found->second.in_flight = false;
    if (reply.ok() && reply->type == MessageType::ack) {
      log_.info(key.first, "completion_delivered", {{"command", key.second}, {"origin", key.first}});
      outbox_.erase(found);
      return;
    }
    found->second.next_try = clock_.now() + kCompletionRetry;
    log_.info(key.first, "completion_unacknowledged",
              {{"command", key.second},
               {"origin", key.first},
               {"reason",
                reply.ok() ? std::string(common::message_type_name(reply->type)) : reply.error().describe()},
               {"retry_ms", millis(kCompletionRetry)}});
    arm_timer();
  };
  entry.in_flight = hooks_.request && hooks_.request(entry.origin, common::to_frame(entry.done),
                                                     kCompletionAckTimeout, std::move(acked));
  if (!entry.in_flight) entry.next_try = clock_.now() + kCompletionRetry;
}

void GroupCommands::on_peer_done(const std::string& from, const Frame& frame,
                                 const std::function<void(Frame)>& reply) {
  auto msg = common::from_frame<common::PeerCommandDoneMsg>(frame);
  if (!msg.ok()) {
    log_.warn(from, "bad_peer_message", {{"reason", msg.error().describe()}});
    return reply(error_frame(Errc::invalid_argument, msg.error().describe()));
  }
  // Reject a completion reported for another node: a peer speaks only for itself.
  if (msg->node != from) {
    log_.warn(from, "bad_peer_message",
              {{"reason", "completion of " + msg->command + " names node " + msg->node}});
    return reply(error_frame(Errc::invalid_argument, "a completion must name its sender " + from));
  }
  // Acknowledged even when already known or forgotten: the node may then drop it.
  reply(common::to_frame(common::AckMsg{}));
  node_outcome(msg->command, msg->node, msg->outcome, msg->detail, msg->result);
}

void GroupCommands::peer_up(const std::string& node) {
  std::vector<CompletionKey> keys;
  for (const auto& [key, entry] : outbox_) {
    if (key.first == node) keys.push_back(key);
  }
  for (const auto& key : keys) {
    log_.info(node, "completion_resent", {{"command", key.second}, {"origin", node}});
    try_send(key);
  }
  arm_timer();
}

void GroupCommands::trim_outbox(common::MonoTime now) {
  while (!outbox_order_.empty()) {
    const CompletionKey key = outbox_order_.front();
    auto it = outbox_.find(key);
    if (it == outbox_.end()) {
      outbox_order_.pop_front();
      continue;
    }
    const bool too_old = now - it->second.created >= kOutboxMaxAge;
    const bool too_many = outbox_.size() > kOutboxMaxEntries;
    if (!too_old && !too_many) break;
    log_.warn(
        key.first, "command_completion_dropped",
        {{"command", key.second},
         {"origin", key.first},
         {"reason", too_old ? "not acknowledged within " + std::to_string(kOutboxMaxAge.count()) + " min"
                            : "more than " + std::to_string(kOutboxMaxEntries) + " completions waiting"}});
    outbox_.erase(it);
    outbox_order_.pop_front();
  }
}

// --- time ---------------------------------------------------------------------------------------

void GroupCommands::tick(common::MonoTime now) {
  if (stopped_) return;
  std::vector<std::string> ids;
  for (const auto& [id, command] : commands_) ids.push_back(id);
  for (const auto& id : ids) {
    auto it = commands_.find(id);
    if (it == commands_.end()) continue;
    const bool expired = now >= it->second.deadline;
    std::vector<std::pair<std::string, std::string>> outcomes;  // node, outcome
    for (const auto& [node, state] : it->second.nodes) {
      if (state.outcome.empty() && (expired || now >= state.queue_deadline)) {
        outcomes.emplace_back(node, "unreachable");
      } else if (state.outcome == "queued" && expired) {
        outcomes.emplace_back(node, "timeout");
      }
    }
    for (const auto& [node, outcome] : outcomes) {
      const std::string detail = outcome == "timeout"
                                     ? node + " queued the command but did not complete it in time"
                                     : "no queued answer from " + node + " in time";
      node_outcome(id, node, outcome, detail, nullptr);
    }
  }
  std::erase_if(finished_, [now](const auto& entry) { return entry.second <= now; });
  std::erase_if(seen_, [now](const auto& entry) { return entry.second <= now; });
  trim_outbox(now);
  std::vector<CompletionKey> due;
  for (const auto& [key, entry] : outbox_) {
    if (!entry.in_flight && entry.next_try <= now) due.push_back(key);
  }
  for (const auto& key : due) try_send(key);
  arm_timer();
}

std::optional<common::MonoTime> GroupCommands::next_deadline() const {
  std::optional<common::MonoTime> next;
  const auto consider = [&next](common::MonoTime t) {
    if (!next || t < *next) next = t;
  };
  for (const auto& [id, command] : commands_) {
    consider(command.deadline);
    for (const auto& [node, state] : command.nodes) {
      if (state.outcome.empty()) consider(state.queue_deadline);
    }
  }
  for (const auto& [key, entry] : outbox_) {
    if (!entry.in_flight) consider(entry.next_try);
    consider(entry.created + kOutboxMaxAge);
  }
  for (const auto& [id, until] : finished_) consider(until);
  for (const auto& [key, until] : seen_) consider(until);
  return next;
}

void GroupCommands::arm_timer() {
  if (!ex_ || stopped_) return;
  const auto next = next_deadline();
  if (!next) {
    timer_.reset();
    armed_for_.reset();
    return;
  }
  if (armed_for_ && *armed_for_ == *next && timer_) return;
  armed_for_ = *next;
  const auto wait = std::max<common::Duration>(*next - clock_.now(), common::Duration::zero());
  timer_ = std::make_unique<common::DeadlineGuard>(*ex_, wait, [this] {
    armed_for_.reset();
    tick(clock_.now());
  });
}

}  // namespace dtu::devmgr
