#pragma once
// run_on(io, f): runs f on the thread that runs `io` and waits until it has returned. For the
// benches that keep an io_context on a thread of their own and reach what lives there only
// through it (group_bench's DTU agents, hotplug_latency_bench's libusb backend).
// REQUIRES: some other thread runs `io` (else this waits forever).

#include <future>

#include <asio/io_context.hpp>
#include <asio/post.hpp>

namespace dtu::bench {

template <typename F>
void run_on(asio::io_context& io, F f) {
  std::promise<void> done;
  asio::post(io, [&] {
    f();
    done.set_value();
  });
  done.get_future().wait();
}

}  // namespace dtu::bench
