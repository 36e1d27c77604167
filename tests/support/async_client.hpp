// AsyncClient: runs a service's coroutines (ManagerClient, InbandChannel) from a test's main
// thread with bounded waits. The io_context runs only inside await() and run_until(), so a test
// calls one of them whenever a channel must answer heartbeats (at least once a second).
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <utility>

#include <asio.hpp>
#include <doctest/doctest.h>

namespace dtu::testing {

// Runs `io` (restarting it when it ran out of work) in slices of `slice` until `done()` holds or
// `limit` passes; returns done(). Every test that drives an io_context itself waits this way.
inline bool run_io_until(asio::io_context& io, const std::function<bool()>& done, std::chrono::nanoseconds limit,
                         std::chrono::nanoseconds slice = std::chrono::milliseconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    io.restart();
    io.run_one_for(slice);
  }
  return done();
}

class AsyncClient {
 public:
  // The bound on any single await(): a healthy site answers far sooner.
  static constexpr std::chrono::seconds kAwaitLimit{60};

  asio::io_context& io() { return io_; }
  asio::any_io_executor executor() { return io_.get_executor(); }

  // Runs `task` to completion (at most kAwaitLimit) and returns its value.
  template <typename T>
  T await(asio::awaitable<T> task) {
    std::optional<T> out;
    std::exception_ptr failure;
    // The result types (Result<T>) have no default value, which co_spawn's completion needs:
    // the wrapper hands the value over itself.
    auto wrapper = [](asio::awaitable<T> inner, std::optional<T>& slot) -> asio::awaitable<void> {
      slot.emplace(co_await std::move(inner));
    };
    asio::co_spawn(io_, wrapper(std::move(task), out), [&](std::exception_ptr e) { failure = e; });
    const auto deadline = std::chrono::steady_clock::now() + kAwaitLimit;
    while (!out && !failure && std::chrono::steady_clock::now() < deadline) {
      io_.restart();
      io_.run_for(std::chrono::milliseconds(50));
    }
    if (failure) std::rethrow_exception(failure);
    REQUIRE_MESSAGE(out.has_value(), "a client operation did not complete within the limit");
    return std::move(*out);
  }

  // Runs the io_context until `done()` holds or `limit` passes; returns done().
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds limit) {
    return run_io_until(io_, done, limit);
  }

 private:
  asio::io_context io_;
};

}  // namespace dtu::testing
