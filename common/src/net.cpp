#include "dtu/common/net.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/tls.hpp"

namespace dtu::common {

using asio::experimental::as_tuple;
using asio::ip::tcp;

std::string to_string(const tcp::endpoint& ep) {
  const auto address = ep.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(ep.port());
}

asio::awaitable<Result<tcp::socket>> tcp_connect(Endpoint endpoint, Duration timeout) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  tcp::socket socket(ex);
  DeadlineGuard deadline(ex, timeout, [&] {
    resolver.cancel();
    std::error_code ignored;
    socket.close(ignored);
  });
  const std::string port = std::to_string(endpoint.port);
  auto [rec, results] = co_await resolver.async_resolve(endpoint.host, port, tcp::resolver::numeric_service,
                                                         as_tuple(asio::use_awaitable));
  if (deadline.expired()) co_return Error(Errc::timeout, "resolving " + endpoint.to_string() + " timed out");
  if (rec) co_return Error(Errc::unavailable, "cannot resolve " + endpoint.to_string() + ": " + rec.message());
  auto [cec, ep] = co_await asio::async_connect(socket, results, as_tuple(asio::use_awaitable));
  if (deadline.expired()) co_return Error(Errc::timeout, "connecting to " + endpoint.to_string() + " timed out");
  if (cec) co_return Error(Errc::unavailable, "cannot connect to " + endpoint.to_string() + ": " + cec.message());
  std::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  co_return std::move(socket);
}

namespace {

asio::awaitable<Result<std::unique_ptr<TlsTransport>>> handshake(std::unique_ptr<TlsTransport> transport,
                                                                 Duration timeout) {
  auto ex = co_await asio::this_coro::executor;
  DeadlineGuard deadline(ex, timeout, [&] { transport->close(); });
  const std::error_code ec = co_await transport->handshake();
  if (deadline.expired()) co_return Error(Errc::timeout, "TLS handshake did not finish in time");
  if (ec) co_return Error(Errc::auth_failed, "TLS handshake failed: " + describe_tls_error(ec));
  co_return std::move(transport);
}

}  // namespace

asio::awaitable<Result<std::unique_ptr<TlsTransport>>> tls_connect(tcp::socket socket, asio::ssl::context& context,
                                                                   std::string identity, Bytes key,
                                                                   Duration timeout) {
  auto transport = std::make_unique<TlsTransport>(std::move(socket), context, TlsTransport::Role::client);
  set_client_psk(transport->ssl(), std::move(identity), std::move(key));
  auto op = handshake(std::move(transport), timeout);
  co_return co_await std::move(op);
}

asio::awaitable<Result<std::unique_ptr<TlsTransport>>> tls_accept(tcp::socket socket, asio::ssl::context& context,
                                                                  Duration timeout) {
  auto transport = std::make_unique<TlsTransport>(std::move(socket), context, TlsTransport::Role::server);
  auto op = handshake(std::move(transport), timeout);
  co_return co_await std::move(op);
}

Result<tcp::acceptor> tcp_listen(const asio::any_io_executor& ex, const Endpoint& endpoint) {
  std::error_code ec;
  const auto address = asio::ip::make_address(endpoint.host, ec);
  if (ec) return Error(Errc::config_error, "listen address '" + endpoint.host + "' is not an IP address");
  const tcp::endpoint ep(address, endpoint.port);
  tcp::acceptor acceptor(ex);
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error(Errc::io_error, "cannot listen on " + endpoint.to_string() + ": " + ec.message());
  return acceptor;
}

Result<asio::local::stream_protocol::acceptor> unix_listen(const asio::any_io_executor& ex, const std::string& path,
                                                           unsigned mode) {
  using asio::local::stream_protocol;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Error(Errc::io_error, "socket path " + path + " exists and is not a socket");
    }
    ::unlink(path.c_str());
  }
  std::error_code ec;
  stream_protocol::acceptor acceptor(ex);
  acceptor.open(stream_protocol(), ec);
  if (!ec) acceptor.bind(stream_protocol::endpoint(path), ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error(Errc::io_error, "cannot listen on " + path + ": " + ec.message());
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    return Error(Errc::io_error, "cannot set mode of " + path + ": " + std::strerror(errno));
  }
  return acceptor;
}

Result<PeerCredentials> peer_credentials(asio::local::stream_protocol::socket& socket) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Error(Errc::io_error, std::string("SO_PEERCRED failed: ") + std::strerror(errno));
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

}  // namespace dtu::common
