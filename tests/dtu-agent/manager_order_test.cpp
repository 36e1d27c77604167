#include "dtu/agent/manager_order.hpp"

#include <doctest/doctest.h>

#include <vector>

using dtu::agent::connection_order;
using dtu::agent::ManagerLoad;
using Order = std::vector<std::size_t>;

TEST_CASE("pick first tries the managers in list order") {
  CHECK(connection_order(3, {}, std::nullopt) == Order{0, 1, 2});
}

TEST_CASE("the manager just lost is tried last unless it is the only one") {
  CHECK(connection_order(3, {}, 0) == Order{1, 2, 0});
  CHECK(connection_order(3, {}, 1) == Order{0, 2, 1});
  CHECK(connection_order(1, {}, 0) == Order{0});
}

TEST_CASE(
    "pick least-loaded puts reachable before unreachable, then not draining, then fewer DTUs, then list "
    "order") {
  const std::vector<ManagerLoad> loads = {
      {false, false, 0},  // 0: unreachable
      {true, false, 5},   // 1
      {true, true, 0},    // 2: draining
      {true, false, 2},   // 3
      {true, false, 2},   // 4: as loaded as 3, later in the list
  };
  CHECK(connection_order(5, loads, std::nullopt) == Order{3, 4, 1, 2, 0});
  // The lost manager goes last even when it looks least loaded.
  CHECK(connection_order(5, loads, 3) == Order{4, 1, 2, 0, 3});
}
