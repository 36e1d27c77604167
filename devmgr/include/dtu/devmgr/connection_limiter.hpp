#pragma once
// ConnectionLimiter: the cap on connections one listener holds at once, per source (a remote
// address on a TCP port, a uid on the Unix socket) and for all sources together
// (docs/security.md, Limits). admit() hands out a Slot that gives its place back when it is
// released or destroyed, so a connection cannot leak its count on any path. A refusal is
// Errc::denied naming the cap. Runs on the manager's io thread.

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include "dtu/common/result.hpp"

namespace dtu::devmgr {

class ConnectionLimiter {
  struct State;

 public:
  // 0 for either cap: no cap of that kind.
  ConnectionLimiter(std::size_t per_source, std::size_t total);

  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept = default;
    Slot& operator=(Slot&& other) noexcept;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { release(); }
    void release();

   private:
    friend class ConnectionLimiter;
    Slot(std::shared_ptr<State> state, std::string source) : state_(std::move(state)), source_(std::move(source)) {}
    std::shared_ptr<State> state_;
    std::string source_;
  };

  common::Result<Slot> admit(const std::string& source);

  std::size_t open(const std::string& source) const;
  std::size_t open() const { return state_->total; }
  // Connections refused so far.
  std::uint64_t refused() const { return state_->refused; }
  // Whether the latest refusal is one to log: the first, then one in 100, so a flood does not
  // flood the log too.
  bool log_latest_refusal() const { return state_->refused % 100 == 1; }

 private:
  struct State {
    std::size_t per_source;
    std::size_t total_cap;
    std::unordered_map<std::string, std::size_t> by_source;
    std::size_t total = 0;
    std::uint64_t refused = 0;
  };
  std::shared_ptr<State> state_;
};

}  // namespace dtu::devmgr
