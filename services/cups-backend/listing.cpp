#include "listing.hpp"

#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <cups/backend.h>
#include <nlohmann/json.hpp>

#include "backend_messages.hpp"
#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/services/printer_uri.hpp"
#include "event.hpp"

namespace dtu::services::cups {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The whole listing (cups-deviced waits for backends, lpinfo -v waits for cups-deviced).
constexpr common::Duration kListingBudget = 10s;
// Connecting to the manager and each request of the listing.
constexpr common::Duration kRequestTimeout = 4s;
// Asking one free printer for its device id (lease, in-band connect, the request): a printer
// that takes longer gets the id built from its record.
constexpr common::Duration kDeviceIdTimeout = 2s;
// What a probe lease asks for: long enough for one question, short if we die holding it.
constexpr common::Duration kProbeLeaseLength = 15s;

// The printer's own IEEE 1284 id, asked in-band under a short lease, when the unit is free and
// the budget allows; nullopt otherwise (the caller builds one from the record).
asio::awaitable<std::optional<std::string>> ask_device_id(client::Client& client,
                                                          const common::DeviceRecord& device,
                                                          std::uint32_t unit) {
  const auto it = std::find_if(device.units.begin(), device.units.end(),
                               [&](const common::UnitRecord& u) { return u.unit == unit; });
  if (it == device.units.end() || it->state != common::UnitState::free || device.orphaned)
    co_return std::nullopt;
  client::AllocateOptions how;
  how.length = kProbeLeaseLength;
  auto allocate = client.allocate(device.dtu, device.device, unit, how);
  auto lease = co_await std::move(allocate);
  if (!lease.ok()) co_return std::nullopt;
  std::optional<std::string> id;
  auto open = client.open_channel(*lease);
  auto channel = co_await std::move(open);
  if (channel.ok()) {
    auto ask = (*channel)->device_id(kDeviceIdTimeout);
    auto answer = co_await std::move(ask);
    if (answer.ok() && *answer && !(*answer)->empty()) id = **answer;
    (*channel)->close();
  }
  auto release = client.release(lease->id);
  auto released = co_await std::move(release);
  (void)released;  // not released: the probe lease expires at the DTU in kProbeLeaseLength
  co_return id;
}

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

  std::size_t listed = 0;
  for (const auto& [key, match] : client.matches(*finder)) {
    for (const std::uint32_t unit : match.units) {
      std::optional<std::string> id;
      if (Clock::now() + kDeviceIdTimeout * 2 < deadline) {
        auto ask = ask_device_id(client, match.device, unit);
        id = co_await std::move(ask);
      }
      std::cout << printer_listing_line(match.device, unit, id.value_or(record_device_id(match.device)))
                << '\n';
      ++listed;
    }
  }
  std::cout << std::flush;
  debug("dtu: listed " + std::to_string(listed) + " DTU printer(s) through " + client.manager_id());
  client.close();
  co_return CUPS_BACKEND_OK;
}

}  // namespace dtu::services::cups
