#pragma once
// GroupCommands: the parallel asynchronous group commands of one manager (seed 000,
// docs/devmgrctl.md "group exec", docs/protocol.md §8). Two roles, both here:
//
//  - Origin: start() takes a client's group_exec, sends peer_command to every chosen node at
//    once (and runs it here when this manager is chosen), and reports each node's outcome to
//    the client as it happens: queued, refused, done, failed, unreachable (no live link, or no
//    "queued" answer in time), timeout (queued but not completed within the command's timeout);
//    then group_exec_done. Completions are de-duplicated by (command id, node).
//  - Node: a peer_command is answered "queued" at once (or refused with the reason), run by the
//    Verbs (a worker thread renders heavy results off the loop), and its completion is kept in an
//    outbox until the origin acknowledges it: it is sent again on every new link to the origin
//    (peer_up). The outbox is bounded: an entry older than kOutboxMaxAge, or beyond
//    kOutboxMaxEntries, is dropped with a log line (command_completion_dropped).
//
// Time: deadlines are checked by tick(now); next_deadline() says when tick is due. With an
// executor (production), the runner arms its own timer for it; tests call tick() themselves.
// Runs on the manager's io_context thread: every method must be called on it, every callback
// runs on it. The worker thread only runs the Verbs' `render` functions, and posts back.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/command_messages.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

// How long the origin waits for a node's "queued" answer (within the command's timeout): a
// node that does not answer in this time is unreachable.
inline constexpr std::chrono::milliseconds kCommandQueueTimeout{5000};
// How long a node waits for the origin's ack of a completion before trying again on the next
// link (or the next retry).
inline constexpr std::chrono::milliseconds kCompletionAckTimeout{5000};
// A node re-sends an unacknowledged completion this often while a link to the origin is up.
inline constexpr std::chrono::milliseconds kCompletionRetry{2000};
// Outbox bounds: completions never acknowledged are dropped (logged) after 10 minutes, and the
// oldest are dropped beyond 1000 entries.
inline constexpr std::chrono::minutes kOutboxMaxAge{10};
inline constexpr std::size_t kOutboxMaxEntries = 1000;
// The largest result a node sends back (its JSON, compact): well under a frame's payload limit,
// so a completion never closes the link it travels on; a larger one is reported as failed.
inline constexpr std::size_t kMaxCommandResultBytes = 256 * 1024;
// How long the origin remembers a finished command's id, to acknowledge late duplicates
// quietly.
inline constexpr std::chrono::minutes kFinishedMemory{10};

// The verbs built in; any other is refused by the node.
bool is_group_verb(std::string_view verb);

class GroupCommands {
 public:
  using VerbDone = std::function<void(common::Result<nlohmann::json>)>;
  // What the runner uses of its manager; DeviceManager provides it (tests provide fakes).
  struct Hooks {
    // The members of the group (peers and this manager), for "every node".
    std::function<std::vector<std::string>()> members;
    // Sends a request to a peer on its live link; false when there is none. `done` gets the
    // reply frame (maybe an error frame) or the link's error.
    std::function<bool(const std::string& node, common::Frame frame, common::Duration timeout,
                       std::function<void(common::Result<common::Frame>)> done)>
        request;
    // Why this node refuses to queue `verb` with `args` now (nullopt: it queues it).
    std::function<std::optional<std::string>(const std::string& verb, const nlohmann::json& args)> refuse;
    // Runs a queued verb on the loop; `done` runs once, later or at once, with the result.
    std::function<void(const std::string& verb, const nlohmann::json& args, VerbDone done)> run;
    // The args the origin adds to a verb's request before sending it (rotate-key: its next
    // key id); may be empty.
    std::function<nlohmann::json(const std::string& verb, nlohmann::json args)> prepare_args;
  };
  // Where the origin sends a command's events (the waiting client); may outlive the client.
  struct Sink {
    std::function<void(const common::GroupExecEventMsg&)> event;
    std::function<void(const common::GroupExecDoneMsg&)> done;
  };

  // `ex`: when set, the runner arms its own timer for tick() and posts the fan-out after the
  // reply to the client. Without it (tests) every step runs inside the call.
  GroupCommands(std::string self, std::uint64_t incarnation, const common::Clock& clock, Hooks hooks,
                common::Logger log, std::optional<asio::any_io_executor> ex = std::nullopt);
  ~GroupCommands();
  GroupCommands(const GroupCommands&) = delete;
  GroupCommands& operator=(const GroupCommands&) = delete;

  // Origin: a client's group_exec. Errors: Errc::bad_request (unknown verb, a node that is no
  // member, a bad argument). The events follow.
  common::Result<common::GroupExecQueuedMsg> start(const common::GroupExecMsg& request, Sink sink);
  // A frame of ours from a peer: peer_command, peer_command_done. `reply` answers it (the frame
  // is a request). False when the frame is not one of ours.
  bool peer_frame(const std::string& from, const common::Frame& frame,
                  std::function<void(common::Frame)> reply);
  // A link to `node` came up: send it every completion it has not acknowledged.
  void peer_up(const std::string& node);
  // Applies every deadline due at `now`.
  void tick(common::MonoTime now);
  // When tick() is next due, or nullopt.
  std::optional<common::MonoTime> next_deadline() const;
  // Stops the timer and the worker; later completions are dropped. Idempotent.
  void stop();

  // For tests and diag: commands this origin waits on, completions in the outbox.
  std::size_t pending_commands() const { return commands_.size(); }
  std::size_t outbox_size() const { return outbox_.size(); }
  // Runs `render` on the worker thread and `done` with its result back on the loop (inline
  // without an executor).
  void render_off_loop(std::function<nlohmann::json()> render, std::function<void(nlohmann::json)> done);

 private:
  struct NodeState {
    std::string outcome;  // "" (sent, no answer yet), then an outcome
    common::MonoTime queue_deadline{};
  };
  struct Command {
    std::string verb;
    Sink sink;
    common::MonoTime deadline{};
    std::map<std::string, NodeState> nodes;
  };
  struct Completion {
    std::string origin;
    common::PeerCommandDoneMsg done;
    common::MonoTime created{};
    common::MonoTime next_try{};
    bool in_flight = false;
  };
  using CompletionKey = std::pair<std::string, std::string>;  // (origin, command)

  void send_to_node(const std::string& id, const std::string& node, const common::PeerCommandMsg& msg);
  void node_outcome(const std::string& id, const std::string& node, const std::string& outcome,
                    const std::string& detail, const nlohmann::json& result);
  void finish_if_done(const std::string& id);
  void on_peer_command(const std::string& from, const common::Frame& frame,
                       const std::function<void(common::Frame)>& reply);
  void on_peer_done(const std::string& from, const common::Frame& frame,
                    const std::function<void(common::Frame)>& reply);
  // Node: runs a queued command and files its completion.
  void execute(const std::string& origin, const common::PeerCommandMsg& msg);
  void complete(const std::string& origin, common::PeerCommandDoneMsg done);
  void try_send(const CompletionKey& key);
  void trim_outbox(common::MonoTime now);
  void arm_timer();
  void later(std::function<void()> fn);

  std::string self_;
  std::uint64_t incarnation_;
  const common::Clock& clock_;
  Hooks hooks_;
  common::Logger log_;
  std::optional<asio::any_io_executor> ex_;
  std::unique_ptr<asio::thread_pool> worker_;
  std::unique_ptr<common::DeadlineGuard> timer_;
  std::optional<common::MonoTime> armed_for_;
  std::uint64_t next_id_ = 1;
  std::map<std::string, Command> commands_;           // origin: by command id
  std::map<std::string, common::MonoTime> finished_;  // origin: finished ids, until forgotten
  std::map<CompletionKey, Completion> outbox_;        // node: unacknowledged completions
  std::deque<CompletionKey> outbox_order_;            // node: oldest first
  std::map<CompletionKey, common::MonoTime> seen_;    // node: commands queued (dedup), until forgotten
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool stopped_ = false;
};

}  // namespace dtu::devmgr
