#pragma once
// DTU_CHECK(cond): our own invariant. When it fails the program is broken: log file:line and
// abort. Never use it for peer input — that is a protocol error that closes the peer's
// connection. (Not plain CHECK: doctest owns that name in the tests.) Thread-safe.

namespace dtu::common {
[[noreturn]] void check_failed(const char* expr, const char* file, int line);
}  // namespace dtu::common

#define DTU_CHECK(cond)                                                  \
  do {                                                                   \
    if (!(cond)) ::dtu::common::check_failed(#cond, __FILE__, __LINE__); \
  } while (false)
