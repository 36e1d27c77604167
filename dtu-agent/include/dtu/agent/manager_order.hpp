#pragma once
// The order in which a DTU tries the managers of its list in one connection round (--pick).
// Plain functions of what the DTU knows; the probes that measure each manager's load are
// DtuAgent's. Pure; any thread.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace dtu::agent {

// What a probe (hello with probe:true, then the welcome) learned about one manager.
struct ManagerLoad {
  bool reachable = false;  // it answered the probe with a welcome
  bool draining = false;   // it refuses new DTUs
  std::uint32_t dtus = 0;  // how many DTUs it serves now
};

// Indices into a manager list of `count` entries, in the order to try them.
//   - loads empty (--pick first): list order.
//   - loads given (--pick least-loaded): reachable before unreachable, then not draining before
//     draining, then fewer DTUs, then list order. REQUIRES: loads.size() == count.
//   - tried_last: the manager just lost (or that told the DTU to move) goes last, unless it is
//     the only one; a loss is more often the manager's fault than the network's.
std::vector<std::size_t> connection_order(std::size_t count, std::span<const ManagerLoad> loads,
                                          std::optional<std::size_t> tried_last);

}  // namespace dtu::agent
