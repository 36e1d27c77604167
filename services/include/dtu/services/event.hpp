#pragma once
// Event: a flag one coroutine waits for, with an optional deadline — set by libdtu-client's
// callbacks (a finder's `synced`, a match arriving) and awaited by the tools' main coroutines.
// One waiter at a time. io_context thread only; not thread-safe.

#include <optional>
#include <utility>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/clock.hpp"

namespace dtu::services {

class Event {
 public:
  explicit Event(asio::any_io_executor executor) : timer_(std::move(executor)) {}

  // Sets the flag and wakes the waiter.
  void set() {
    set_ = true;
    timer_.cancel();
  }
  // Wakes the waiter without setting the flag (it looks at the world again).
  void poke() { timer_.cancel(); }
  // Clears the flag: the next wait() waits again.
  void reset() { set_ = false; }
  bool is_set() const { return set_; }

  // Waits until set(), poke() or `timeout` (forever when nullopt); returns is_set().
  asio::awaitable<bool> wait(std::optional<common::Duration> timeout) {
    if (set_) co_return true;
    if (timeout) {
      timer_.expires_after(*timeout);
    } else {
      timer_.expires_at(asio::steady_timer::time_point::max());
    }
    auto sleep = timer_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_await std::move(sleep);
    co_return set_;
  }

 private:
  asio::steady_timer timer_;
  bool set_ = false;
};

}  // namespace dtu::services
