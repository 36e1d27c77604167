// Acting as another user: a client of uid and gid 65534 (nobody) in a forked child, for the
// tests that check one uid cannot touch another's leases. Main test thread only.
#pragma once

#include <doctest/doctest.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/errors.hpp"
#include "dtu/services/manager_client.hpp"

namespace dtu::testing {

inline constexpr uid_t kNobody = 65534;

// In a child process running as uid and gid 65534: connects to the manager at `socket` and asks
// it to renew, then to release, `lease` of `dtu`. The outcomes ("renew <result>; release
// <result>", each "ok" or the error code's name and detail) come back through a pipe. The
// child never returns into doctest. REQUIRES: root, and uid 65534 can reach the socket.
inline std::string renew_and_release_as_nobody(const std::string& socket, const std::string& dtu, const std::string& lease) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string outcome;
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) {
      outcome = "setuid failed";
    } else {
      asio::io_context io;
      auto task = [](std::string path, std::string d, std::string l,
                     std::string& out) -> asio::awaitable<void> {
        auto connect = services::ManagerClient::connect(path, "intruder", common::SystemClock::instance(), std::chrono::seconds(10));
        auto client = co_await std::move(connect);
        if (!client.ok()) {
          out = "connect: " + client.error().describe();
          co_return;
        }
        auto renew = (*client)->renew(d, l, std::chrono::milliseconds(60000), std::chrono::seconds(10));
        auto renewed = co_await std::move(renew);
        out = "renew " + (renewed.ok() ? std::string("ok")
                                       : common::errc_name(static_cast<common::Errc>(renewed.error().code.value())) +
                                             ": " + renewed.error().detail);
        auto release = (*client)->release(d, l, std::chrono::seconds(10));
        auto released = co_await std::move(release);
        out += "; release " + (released.ok() ? std::string("ok")
                                             : common::errc_name(static_cast<common::Errc>(released.error().code.value())) +
                                                   ": " + released.error().detail);
        (*client)->close();
      };
      asio::co_spawn(io, task(socket, dtu, lease, outcome), asio::detached);
      io.run_for(std::chrono::seconds(30));
    }
    (void)!::write(fds[1], outcome.data(), outcome.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string outcome;
  char buffer[512];
  for (;;) {
    const ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    outcome.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return outcome;
}

}  // namespace dtu::testing
