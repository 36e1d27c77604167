#include "dtu/devmgr/connection_limiter.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;

ConnectionLimiter::ConnectionLimiter(std::size_t per_source, std::size_t total)
    : state_(std::make_shared<State>(State{per_source, total, {}, 0, 0})) {}

ConnectionLimiter::Slot& ConnectionLimiter::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    source_ = std::move(other.source_);
  }
  return *this;
}

void ConnectionLimiter::Slot::release() {
  if (!state_) return;
  auto it = state_->by_source.find(source_);
  if (it != state_->by_source.end() && --it->second == 0) state_->by_source.erase(it);
  --state_->total;
  state_.reset();
}

common::Result<ConnectionLimiter::Slot> ConnectionLimiter::admit(const std::string& source) {
  State& s = *state_;
  if (s.total_cap > 0 && s.total >= s.total_cap) {
    ++s.refused;
    return Error(Errc::denied, "limit of " + std::to_string(s.total_cap) + " connections in all reached");
  }
  std::size_t& mine = s.by_source[source];
  if (s.per_source > 0 && mine >= s.per_source) {
    ++s.refused;
    return Error(Errc::denied, "limit of " + std::to_string(s.per_source) + " connections from " + source + " reached");
  }
  ++mine;
  ++s.total;
  return Slot(state_, source);
}

std::size_t ConnectionLimiter::open(const std::string& source) const {
  auto it = state_->by_source.find(source);
  return it == state_->by_source.end() ? 0 : it->second;
}

}  // namespace dtu::devmgr
