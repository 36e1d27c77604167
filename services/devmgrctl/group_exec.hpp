#pragma once
// `devmgrctl group exec VERB`: runs a verb on several managers of the group at once, through the
// local manager (docs/devmgrctl.md "group exec"). Prints each node's outcome as it arrives and
// a summary; --json prints one JSON object per line per event and a final summary object.
// Exit codes: 0 every chosen node done, 1 any refused/failed/unreachable/timeout, 2 bad usage,
// 3 the local manager is unreachable.
// Single-threaded: run() owns its io_context.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace dtu::devmgrctl {

class GroupExecVerb {
 public:
  // Adds `exec` and its verbs under `group`.
  explicit GroupExecVerb(CLI::App& group);
  bool parsed() const;
  // Runs the parsed command against the manager at `socket`; `connect_timeout` bounds reaching
  // it and its first answer.
  int run(const std::string& socket, std::chrono::milliseconds connect_timeout) const;

 private:
  CLI::App* exec_ = nullptr;
  CLI::App* reload_ = nullptr;
  CLI::App* drain_ = nullptr;
  CLI::App* undrain_ = nullptr;
  CLI::App* diag_ = nullptr;
  CLI::App* rotate_ = nullptr;
  std::string nodes_;
  std::uint32_t timeout_ms_ = 30000;
  std::optional<std::uint32_t> wait_ms_;
  bool json_ = false;
};

}  // namespace dtu::devmgrctl
