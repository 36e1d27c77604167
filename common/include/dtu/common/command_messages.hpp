#pragma once
// Group command messages (seed 000, parallel asynchronous commands; docs/protocol.md §8):
// `devmgrctl group exec` asks its manager (the origin) to run a verb on several managers of the
// group at once. Client <-> origin: group_exec (95, request), answered with group_exec_queued
// (96); then the origin sends one group_exec_event (97, notify) per node outcome and one
// group_exec_done (98, notify) at the end. Origin <-> node on the peer link: peer_command
// (143, request) answered with peer_command_queued (144) or an error (refused); the node reports
// the completion with peer_command_done (145, a request the origin answers with ack), again on
// a later link when the first one was lost. One plain struct per message with to_json/from_json
// beside it. Values; not thread-safe.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/message_type.hpp"

namespace dtu::common {

// The longest command id, verb and free-text field a decoder accepts (bytes): ids and verbs are
// short names; a reason or summary is one line for people.
inline constexpr std::size_t kMaxCommandNameBytes = 64;
inline constexpr std::size_t kMaxCommandTextBytes = 4096;

// The outcomes of one node, as the origin reports them (docs/devmgrctl.md): `queued` (the node
// accepted the command), `refused` (it would not queue it: detail says why), `done` (result
// holds its JSON), `failed` (detail holds the error), `unreachable` (no live link to the node, or
// no "queued" answer in time), `timeout` (queued, but no completion within the timeout).
bool is_command_outcome(std::string_view outcome);
// True for a final outcome (every one but `queued`).
bool is_final_command_outcome(std::string_view outcome);

// Client -> manager (request): run `verb` with `args` on `nodes` (empty: every member of the
// group, this manager included). `timeout_ms` bounds the whole command. Administrators only.
struct GroupExecMsg {
  static constexpr MessageType kType = MessageType::group_exec;
  std::string verb;                                // reload, drain, undrain, diag, rotate-key
  nlohmann::json args = nlohmann::json::object();  // drain: {"wait_ms": N}; others: {}
  std::vector<std::string> nodes;
  std::uint32_t timeout_ms = 30000;
};

// Manager -> client (reply to group_exec): the command's id and the nodes it went to.
struct GroupExecQueuedMsg {
  static constexpr MessageType kType = MessageType::group_exec_queued;
  std::string command;
  std::vector<std::string> nodes;
};

// Manager -> client (notify): one node's outcome, as it happens. `result`: the verb's result
// (done), else null.
struct GroupExecEventMsg {
  static constexpr MessageType kType = MessageType::group_exec_event;
  std::string command;
  std::string node;
  std::string outcome;
  std::string detail;
  nlohmann::json result = nullptr;
};

// Manager -> client (notify): the command ended; every node's final outcome.
struct GroupExecDoneMsg {
  static constexpr MessageType kType = MessageType::group_exec_done;
  std::string command;
  std::map<std::string, std::string> outcomes;  // node -> final outcome
};

// Origin -> node (request): run `verb`; the completion goes back to `origin` tagged with
// `command`. rotate-key carries the origin's next key id in args ("next_key_id"). Answered with
// peer_command_queued, or an error (refused, with the reason).
struct PeerCommandMsg {
  static constexpr MessageType kType = MessageType::peer_command;
  std::string command;
  std::string origin;
  std::string verb;
  nlohmann::json args = nlohmann::json::object();
};

// Node -> origin (reply to peer_command): queued.
struct PeerCommandQueuedMsg {
  static constexpr MessageType kType = MessageType::peer_command_queued;
  std::string command;
  std::string node;
};

// Node -> origin (request, answered with ack): the command ended on `node`: outcome `done`
// (with result) or `failed` (with detail). Sent again on the next link until acknowledged.
struct PeerCommandDoneMsg {
  static constexpr MessageType kType = MessageType::peer_command_done;
  std::string command;
  std::string node;
  std::string outcome;
  std::string detail;
  nlohmann::json result = nullptr;
};

void to_json(nlohmann::json& j, const GroupExecMsg& m);
void from_json(const nlohmann::json& j, GroupExecMsg& m);
void to_json(nlohmann::json& j, const GroupExecQueuedMsg& m);
void from_json(const nlohmann::json& j, GroupExecQueuedMsg& m);
void to_json(nlohmann::json& j, const GroupExecEventMsg& m);
void from_json(const nlohmann::json& j, GroupExecEventMsg& m);
void to_json(nlohmann::json& j, const GroupExecDoneMsg& m);
void from_json(const nlohmann::json& j, GroupExecDoneMsg& m);
void to_json(nlohmann::json& j, const PeerCommandMsg& m);
void from_json(const nlohmann::json& j, PeerCommandMsg& m);
void to_json(nlohmann::json& j, const PeerCommandQueuedMsg& m);
void from_json(const nlohmann::json& j, PeerCommandQueuedMsg& m);
void to_json(nlohmann::json& j, const PeerCommandDoneMsg& m);
void from_json(const nlohmann::json& j, PeerCommandDoneMsg& m);

}  // namespace dtu::common
