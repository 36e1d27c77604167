#include "dtu/common/check.hpp"

#include <cstdio>
#include <cstdlib>

namespace dtu::common {

void check_failed(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "fatal check %s:%d CHECK(%s) failed\n", file, line, expr);
  std::fflush(stderr);
  std::abort();
}

}  // namespace dtu::common
