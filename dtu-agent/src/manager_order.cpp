#include "dtu/agent/manager_order.hpp"

#include <algorithm>
#include <numeric>
#include <tuple>

#include "dtu/common/check.hpp"

namespace dtu::agent {

std::vector<std::size_t> connection_order(std::size_t count, std::span<const ManagerLoad> loads,
                                          std::optional<std::size_t> tried_last) {
  DTU_CHECK(loads.empty() || loads.size() == count);
  std::vector<std::size_t> order(count);
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (!loads.empty()) {
    auto rank = [&](std::size_t i) {
      const ManagerLoad& load = loads[i];
      return std::make_tuple(!load.reachable, load.draining, load.dtus, i);
    };
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return rank(a) < rank(b); });
  }
  if (tried_last && count > 1) {
    auto it = std::find(order.begin(), order.end(), *tried_last);
    if (it != order.end()) std::rotate(it, it + 1, order.end());
  }
  return order;
}

}  // namespace dtu::agent
