#include "dtu/devmgr/group_commands.hpp"

#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "dtu/common/messages.hpp"

using dtu::common::Errc;
using dtu::common::Error;
using dtu::common::Frame;
using dtu::common::GroupExecDoneMsg;
using dtu::common::GroupExecEventMsg;
using dtu::common::GroupExecMsg;
using dtu::common::ManualClock;
using dtu::common::MessageType;
using dtu::common::Result;
using dtu::devmgr::GroupCommands;
using nlohmann::json;

namespace {

// A fake group around one GroupCommands (no executor: every step runs inside the call). Links
// are switches; requests are kept until the test answers them.
struct FakeGroup {
  struct Sent {
    std::string node;
    Frame frame;
    std::function<void(Result<Frame>)> done;
  };
  ManualClock clock;
  std::vector<std::string> members{"m1", "m2", "m3"};
  std::map<std::string, bool> linked{{"m1", true}, {"m2", true}, {"m3", true}};
  std::vector<Sent> sent;
  std::optional<std::string> refusal;
  std::vector<GroupCommands::VerbDone> running;  // verbs started, not yet completed
  std::vector<GroupExecEventMsg> events;
  std::vector<GroupExecDoneMsg> summaries;
  std::unique_ptr<GroupCommands> commands;

  explicit FakeGroup(const std::string& self) {
    GroupCommands::Hooks hooks;
    hooks.members = [this] { return members; };
    hooks.request = [this](const std::string& node, Frame frame, dtu::common::Duration,
                           std::function<void(Result<Frame>)> done) {
      if (!linked[node]) return false;
      sent.push_back(Sent{node, std::move(frame), std::move(done)});
      return true;
    };
    hooks.refuse = [this](const std::string&, const json&) { return refusal; };
    hooks.run = [this](const std::string&, const json&, GroupCommands::VerbDone done) {
      running.push_back(std::move(done));
    };
    commands = std::make_unique<GroupCommands>(self, 7, clock, std::move(hooks), dtu::common::Logger("test"));
  }

  GroupCommands::Sink sink() {
    GroupCommands::Sink s;
    s.event = [this](const GroupExecEventMsg& e) { events.push_back(e); };
    s.done = [this](const GroupExecDoneMsg& d) { summaries.push_back(d); };
    return s;
  }

  // Delivers `frame` from `from` as a request; returns the reply.
  Frame deliver(const std::string& from, const Frame& frame) {
    Frame reply;
    REQUIRE(commands->peer_frame(from, frame, [&reply](Frame r) { reply = std::move(r); }));
    return reply;
  }

  std::vector<std::string> outcomes_of(const std::string& node) const {
    std::vector<std::string> out;
    for (const auto& e : events) {
      if (e.node == node) out.push_back(e.outcome);
    }
    return out;
  }
};

Frame peer_command(const std::string& command, const std::string& origin, const std::string& verb) {
  return dtu::common::to_frame(dtu::common::PeerCommandMsg{command, origin, verb, json::object()});
}

Frame queued_reply(const std::string& command, const std::string& node) {
  return dtu::common::to_frame(dtu::common::PeerCommandQueuedMsg{command, node});
}

Frame ack() {
  return dtu::common::to_frame(dtu::common::AckMsg{});
}

GroupExecMsg exec(const std::string& verb, std::uint32_t timeout_ms = 30000) {
  GroupExecMsg m;
  m.verb = verb;
  m.timeout_ms = timeout_ms;
  return m;
}

}  // namespace

TEST_CASE("A node keeps a completion whose link was lost and sends it again on the next link") {
  FakeGroup node("m2");
  const Frame queued = node.deliver("m1", peer_command("7-1", "m1", "drain"));
  REQUIRE(queued.type == MessageType::peer_command_queued);
  REQUIRE(node.running.size() == 1);

  node.running[0](json{{"draining", true}, {"dtus", 0}});
  REQUIRE(node.sent.size() == 1);
  CHECK(node.sent[0].node == "m1");
  CHECK(node.sent[0].frame.type == MessageType::peer_command_done);
  // The link to the origin is reset under the request.
  node.linked["m1"] = false;
  node.sent[0].done(Error(Errc::link_lost, "connection reset"));
  CHECK(node.commands->outbox_size() == 1);

  // A new link comes up: the completion goes again, and the ack empties the outbox.
  node.linked["m1"] = true;
  node.commands->peer_up("m1");
  REQUIRE(node.sent.size() == 2);
  auto done = dtu::common::from_frame<dtu::common::PeerCommandDoneMsg>(node.sent[1].frame);
  REQUIRE(done.ok());
  CHECK(done->command == "7-1");
  CHECK(done->node == "m2");
  CHECK(done->outcome == "done");
  CHECK(done->result["draining"] == true);
  node.sent[1].done(ack());
  CHECK(node.commands->outbox_size() == 0);
}

TEST_CASE(
    "A node retries an unacknowledged completion while the origin is unreachable, then drops it after the "
    "bound") {
  FakeGroup node("m2");
  node.linked["m1"] = false;
  node.deliver("m1", peer_command("7-1", "m1", "undrain"));
  node.running[0](json::object());
  CHECK(node.commands->outbox_size() == 1);
  CHECK(node.sent.empty());
  REQUIRE(node.commands->next_deadline().has_value());

  node.clock.advance(dtu::devmgr::kCompletionRetry);
  node.linked["m1"] = true;
  node.commands->tick(node.clock.now());
  REQUIRE(node.sent.size() == 1);  // the retry found the link
  node.linked["m1"] = false;
  node.sent[0].done(Error(Errc::timeout, "no ack"));

  node.clock.advance(dtu::devmgr::kOutboxMaxAge);
  node.commands->tick(node.clock.now());
  CHECK(node.commands->outbox_size() == 0);
}

TEST_CASE("The same peer_command twice is queued once and run once") {
  FakeGroup node("m2");
  CHECK(node.deliver("m1", peer_command("7-1", "m1", "diag")).type == MessageType::peer_command_queued);
  CHECK(node.deliver("m1", peer_command("7-1", "m1", "diag")).type == MessageType::peer_command_queued);
  CHECK(node.running.size() == 1);
}

TEST_CASE("The origin reports one outcome per node: a duplicate completion is acknowledged and ignored") {
  FakeGroup origin("m1");
  auto queued = origin.commands->start(exec("reload"), origin.sink());
  REQUIRE(queued.ok());
  CHECK(queued->nodes == std::vector<std::string>{"m1", "m2", "m3"});
  REQUIRE(origin.sent.size() == 2);  // m2 and m3; m1 runs here
  REQUIRE(origin.running.size() == 1);
  origin.running[0](json{{"summary", "reload: policy unchanged, group unchanged"}});
  CHECK(origin.outcomes_of("m1") == std::vector<std::string>{"queued", "done"});

  for (auto& sent : origin.sent) sent.done(queued_reply(queued->command, sent.node));
  const dtu::common::PeerCommandDoneMsg done{queued->command, "m2", "done", "", json{{"summary", "ok"}}};
  CHECK(origin.deliver("m2", dtu::common::to_frame(done)).type == MessageType::ack);
  CHECK(origin.deliver("m2", dtu::common::to_frame(done)).type == MessageType::ack);
  CHECK(origin.outcomes_of("m2") == std::vector<std::string>{"queued", "done"});
  CHECK(origin.summaries.empty());

  const dtu::common::PeerCommandDoneMsg failed{queued->command, "m3", "failed", "policy: bad rule", nullptr};
  origin.deliver("m3", dtu::common::to_frame(failed));
  REQUIRE(origin.summaries.size() == 1);
  CHECK(origin.summaries[0].outcomes ==
        std::map<std::string, std::string>{{"m1", "done"}, {"m2", "done"}, {"m3", "failed"}});
  CHECK(origin.commands->pending_commands() == 0);
  // A late duplicate after the end is still acknowledged.
  CHECK(origin.deliver("m2", dtu::common::to_frame(done)).type == MessageType::ack);
  CHECK(origin.summaries.size() == 1);
}

TEST_CASE("A command naming another origin than its sender is refused and not run") {
  FakeGroup node("m2");
  const Frame reply = node.deliver("m3", peer_command("7-1", "m1", "diag"));
  REQUIRE(reply.type == MessageType::error);
  CHECK(node.running.empty());
}

TEST_CASE("A completion naming another node than its sender is refused") {
  FakeGroup origin("m1");
  auto queued = origin.commands->start(exec("diag"), origin.sink());
  REQUIRE(queued.ok());
  const dtu::common::PeerCommandDoneMsg forged{queued->command, "m3", "done", "", nullptr};
  CHECK(origin.deliver("m2", dtu::common::to_frame(forged)).type == MessageType::error);
  CHECK(origin.outcomes_of("m3").empty());
}

TEST_CASE("A node that refuses rotate-key is reported refused with its reason") {
  FakeGroup node("m2");
  node.refusal = "m2 has no next group key (set group_key_next_file, then reload)";
  const Frame reply = node.deliver("m1", peer_command("7-1", "m1", "rotate-key"));
  REQUIRE(reply.type == MessageType::error);
  auto error = dtu::common::from_frame<dtu::common::ErrorMsg>(reply);
  REQUIRE(error.ok());
  CHECK(error->code == "refused");
  CHECK(node.running.empty());

  FakeGroup origin("m1");
  origin.members = {"m1", "m2"};
  GroupExecMsg request = exec("rotate-key");
  request.nodes = {"m2"};
  auto queued = origin.commands->start(request, origin.sink());
  REQUIRE(queued.ok());
  REQUIRE(origin.sent.size() == 1);
  // The link hands an error reply over as a failed result with the node's code and reason.
  origin.sent[0].done(Error(Errc::refused, error->reason));
  REQUIRE(origin.events.size() == 1);
  CHECK(origin.events[0].outcome == "refused");
  CHECK(origin.events[0].detail.find("no next group key") != std::string::npos);
  REQUIRE(origin.summaries.size() == 1);
}

TEST_CASE(
    "The origin reports a node without a link unreachable at once, and a queued node timeout at the "
    "deadline") {
  FakeGroup origin("m1");
  origin.linked["m3"] = false;
  auto queued = origin.commands->start(exec("drain", 2000), origin.sink());
  REQUIRE(queued.ok());
  CHECK(origin.outcomes_of("m3") == std::vector<std::string>{"unreachable"});
  REQUIRE(origin.sent.size() == 1);
  origin.sent[0].done(queued_reply(queued->command, "m2"));
  CHECK(origin.outcomes_of("m2") == std::vector<std::string>{"queued"});
  CHECK(origin.summaries.empty());

  REQUIRE(origin.commands->next_deadline().has_value());
  origin.clock.advance(std::chrono::milliseconds(1999));
  origin.commands->tick(origin.clock.now());
  CHECK(origin.summaries.empty());
  origin.clock.advance(std::chrono::milliseconds(1));
  origin.commands->tick(origin.clock.now());
  CHECK(origin.outcomes_of("m2") == std::vector<std::string>{"queued", "timeout"});
  CHECK(origin.outcomes_of("m1") ==
        std::vector<std::string>{"queued", "timeout"});  // its own drain still runs
  REQUIRE(origin.summaries.size() == 1);
  CHECK(origin.summaries[0].outcomes.at("m3") == "unreachable");
}

TEST_CASE("The origin reports unreachable a node that does not answer queued within the queue timeout") {
  FakeGroup origin("m1");
  GroupExecMsg request = exec("diag");
  request.nodes = {"m2"};
  auto queued = origin.commands->start(request, origin.sink());
  REQUIRE(queued.ok());
  origin.clock.advance(dtu::devmgr::kCommandQueueTimeout);
  origin.commands->tick(origin.clock.now());
  CHECK(origin.outcomes_of("m2") == std::vector<std::string>{"unreachable"});
  REQUIRE(origin.summaries.size() == 1);
  // Its queued answer arriving later changes nothing.
  origin.sent[0].done(queued_reply(queued->command, "m2"));
  CHECK(origin.events.size() == 1);
}

TEST_CASE("group exec refuses an unknown verb and a node that is no member") {
  FakeGroup origin("m1");
  auto verb = origin.commands->start(exec("format-disk"), origin.sink());
  REQUIRE_FALSE(verb.ok());
  CHECK(verb.error().detail.find("unknown verb") != std::string::npos);
  GroupExecMsg request = exec("diag");
  request.nodes = {"m9"};
  auto node = origin.commands->start(request, origin.sink());
  REQUIRE_FALSE(node.ok());
  CHECK(node.error().detail.find("'m9' is not a member") != std::string::npos);
}

TEST_CASE("Group command messages reject bad input") {
  Frame frame = dtu::common::to_frame(dtu::common::PeerCommandDoneMsg{"7-1", "m2", "queued", "", nullptr});
  CHECK_FALSE(dtu::common::from_frame<dtu::common::PeerCommandDoneMsg>(frame).ok());
  GroupExecMsg bad = exec("Reload!");
  CHECK_FALSE(dtu::common::from_frame<GroupExecMsg>(dtu::common::to_frame(bad)).ok());
  GroupExecMsg zero = exec("reload", 0);
  CHECK_FALSE(dtu::common::from_frame<GroupExecMsg>(dtu::common::to_frame(zero)).ok());
  GroupExecMsg good = exec("rotate-key");
  good.nodes = {"m1", "m2"};
  auto decoded = dtu::common::from_frame<GroupExecMsg>(dtu::common::to_frame(good));
  REQUIRE(decoded.ok());
  CHECK(decoded->nodes == good.nodes);
}
