#include "listing.hpp"

#include <chrono>
#include <iostream>
#include <string>

#include <cups/backend.h>
#include <nlohmann/json.hpp>

#include "backend_messages.hpp"
#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/services/event.hpp"
#include "dtu/services/printer_uri.hpp"

namespace dtu::services::cups {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The whole listing (cups-deviced waits for backends, lpinfo -v waits for cups-deviced).
constexpr common::Duration kListingBudget = 10s;
// Connecting to the manager and each request of the listing.
constexpr common::Duration kRequestTimeout = 4s;

}  // namespace

asio::awaitable<int> list_printers(std::string socket) {
  const auto deadline = Clock::now() + kListingBudget;
  auto ex = co_await asio::this_coro::executor;
  client::ClientOptions options;
  options.socket = socket;
  options.name = "cups-dtu-backend";
  options.request_timeout = kRequestTimeout;
  options.reconnect = false;
  auto connect = client::Client::connect(ex, common::SystemClock::instance(), options);
  auto connected = co_await std::move(connect);
  if (!connected.ok()) {
    debug("dtu: no dtubroker manager answers at " + socket + " (" + connected.error().describe() +
          "): no DTU printers to list");
    co_return CUPS_BACKEND_OK;
  }
  client::Client& client = **connected;

  Event synced(ex);
  client::FinderEvents events;
  events.synced = [&synced] { synced.set(); };
  auto add = client.add_finder(nlohmann::json{{"unit_class", kPrinterClass}}, std::move(events));
  auto finder = co_await std::move(add);
  if (!finder.ok()) {
    debug("dtu: the manager refused to list printers (" + finder.error().describe() + ")");
    client.close();
    co_return CUPS_BACKEND_OK;
  }
  auto wait = synced.wait(std::chrono::duration_cast<common::Duration>(deadline - Clock::now()));
  if (!co_await std::move(wait))
    debug("dtu: the manager did not finish the printer list in time; listing what came");

  // No printer is asked for its own 1284 id: that would lease every free printer at each
  // listing (a service could find them busy) and could overrun the budget. The record's
  // strings make the id; a job's side channel asks the printer itself.
  std::size_t listed = 0;
  for (const auto& [key, match] : client.matches(*finder)) {
    for (const std::uint32_t unit : match.units) {
      std::cout << printer_listing_line(match.device, unit, record_device_id(match.device)) << '\n';
      ++listed;
    }
  }
  std::cout << std::flush;
  debug("dtu: listed " + std::to_string(listed) + " DTU printer(s) through " + client.manager_id());
  client.close();
  co_return CUPS_BACKEND_OK;
}

}  // namespace dtu::services::cups
