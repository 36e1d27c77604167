#pragma once
// Small coroutine helpers shared by every daemon. All run on the caller's io_context thread.
//  - spawn(): co_spawn with a completion handler that logs an escaped exception (never detached).
//  - await_callback<T>(): turns a callback API (the sans-I/O cores) into an awaitable.
//  - DeadlineGuard: runs an action (usually "close the socket") if a deadline passes first;
//    used around connect and handshakes so no network wait is unbounded.
//
// Rule for every coroutine in the project (g++ 12): never put a temporary with a destructor in
// a co_await expression — `co_await f(std::string("x"))`, `co_await link->request(0,
// to_frame(m), t)`. g++ 12 may destroy such temporaries twice (a double free seen here under
// ASan). Build the awaitable in a local first: `auto op = f(...); auto r = co_await std::move(op);`.

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/log.hpp"

namespace dtu::common {

template <typename Awaitable>
void spawn(const asio::any_io_executor& ex, Awaitable&& task, const Logger& log, std::string what) {
  asio::co_spawn(ex, std::forward<Awaitable>(task),
                 [log, what = std::move(what)](std::exception_ptr e) {
                   if (!e) return;
                   try {
                     std::rethrow_exception(e);
                   } catch (const std::exception& failure) {
                     log.error("", "task_failed", {{"task", what}, {"what", failure.what()}});
                   }
                 });
}

// Calls start(callback) and suspends until callback(value) runs; the resumption is posted to
// the awaiting coroutine's executor, so the callback may run inside the sans-I/O core.
template <typename T, typename Start>
asio::awaitable<T> await_callback(Start start) {
  return asio::async_initiate<const asio::use_awaitable_t<>&, void(T)>(
      [start = std::move(start)](auto handler) mutable {
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        start([shared](T value) {
          auto ex = asio::get_associated_executor(*shared);
          asio::post(ex, [shared, value = std::move(value)]() mutable { (*shared)(std::move(value)); });
        });
      },
      asio::use_awaitable);
}

class DeadlineGuard {
 public:
  DeadlineGuard(const asio::any_io_executor& ex, Duration timeout, std::function<void()> on_expire)
      : state_(std::make_shared<State>(ex)) {
    state_->timer.expires_after(timeout);
    state_->timer.async_wait([state = state_, fn = std::move(on_expire)](std::error_code ec) {
      if (ec || state->cancelled) return;
      state->expired = true;
      fn();
    });
  }
  ~DeadlineGuard() { cancel(); }
  DeadlineGuard(const DeadlineGuard&) = delete;
  DeadlineGuard& operator=(const DeadlineGuard&) = delete;

  void cancel() {
    state_->cancelled = true;
    state_->timer.cancel();
  }
  bool expired() const { return state_->expired; }

 private:
  struct State {
    explicit State(const asio::any_io_executor& ex) : timer(ex) {}
    asio::steady_timer timer;
    bool cancelled = false;
    bool expired = false;
  };
  std::shared_ptr<State> state_;
};

}  // namespace dtu::common
