#pragma once
// Event: a flag one coroutine can wait for with a deadline (set by callbacks of libdtu-client,
// e.g. a finder's `synced`). One waiter at a time. io_context thread only; not thread-safe.

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/clock.hpp"

namespace dtu::services::cups {

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
  void reset() { set_ = false; }
  bool is_set() const { return set_; }

  // Waits until set(), poke() or `timeout`; whether the flag is set.
  asio::awaitable<bool> wait(common::Duration timeout) {
    if (set_) co_return true;
    timer_.expires_after(timeout);
    co_await timer_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_return set_;
  }

 private:
  asio::steady_timer timer_;
  bool set_ = false;
};

}  // namespace dtu::services::cups
