// A device service's connection for integration tests: libdtu-client's Client connected to one
// manager of a Site, driven by an AsyncClient. Main test thread only.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include <doctest/doctest.h>

#include "dtu/client/client.hpp"
#include "dtu/common/clock.hpp"
#include "site.hpp"
#include "support/async_client.hpp"

namespace dtu::testing {

// Connects as the service `name`; REQUIREs that the manager accepts it.
inline std::unique_ptr<client::Client> connect_client(AsyncClient& c, const Site::Manager& m, const std::string& name) {
  client::ClientOptions options;
  options.socket = m.socket.string();
  options.name = name;
  auto r = c.await(client::Client::connect(c.executor(), common::SystemClock::instance(), options));
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : r.error().describe()));
  return std::move(r.value());
}

}  // namespace dtu::testing
