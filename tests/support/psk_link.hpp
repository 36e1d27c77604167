// psk_link: a raw client link to a TLS-PSK listener (a DTU's in-band server), opened as a lease
// holder opens it — TCP connect, the TLS handshake with `identity` (the lease id) and `key` (its
// token) as the PSK, then a started common::Link on the initiator side that has sent nothing yet.
// For tests that drive the protocol by hand, including what the client library would refuse to
// send. Runs on the executor's thread.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/tls.hpp"

namespace dtu::testing {

// The link, or the connect's or the handshake's error. `timeout` bounds each of the two steps;
// `log_name` names the link's logger.
inline asio::awaitable<common::Result<std::shared_ptr<common::Link>>> psk_link(
    asio::any_io_executor ex, common::Endpoint at, std::string identity, common::Bytes key,
    common::Duration timeout, std::string log_name) {
  auto dial = common::tcp_connect(at, timeout);
  auto socket = co_await std::move(dial);
  if (!socket.ok()) co_return socket.error();
  auto tls = common::make_psk_client_context();
  auto handshake = common::tls_connect(std::move(socket.value()), *tls, identity, std::move(key), timeout);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) co_return transport.error();
  auto link = common::Link::create(ex, std::move(transport.value()), common::FilamentMux::Side::initiator,
                                   common::SystemClock::instance(), common::Logger(std::move(log_name)),
                                   "dtu", common::Link::Options{});
  link->start([](const common::Error&) {});
  co_return link;
}

}  // namespace dtu::testing
