#pragma once
// Dialling and accepting with deadlines: TCP connect, TLS-PSK handshakes, Unix sockets.
// Every wait here is bounded; on a timeout the socket is closed and Errc::timeout returned.
// Coroutines on the caller's executor.

#include <memory>
#include <string>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/transport.hpp"

namespace dtu::common {

// "127.0.0.2:4711"
std::string to_string(const asio::ip::tcp::endpoint& ep);

// Resolves (numeric addresses need no DNS) and connects within `timeout`.
asio::awaitable<Result<asio::ip::tcp::socket>> tcp_connect(Endpoint endpoint, Duration timeout);

// Client side of TLS 1.3 with an external PSK (identity, key), within `timeout`.
asio::awaitable<Result<std::unique_ptr<TlsTransport>>> tls_connect(asio::ip::tcp::socket socket,
                                                                   asio::ssl::context& context,
                                                                   std::string identity, Bytes key,
                                                                   Duration timeout);

// Server side; `context` resolves identities to keys (make_psk_server_context).
asio::awaitable<Result<std::unique_ptr<TlsTransport>>> tls_accept(asio::ip::tcp::socket socket,
                                                                  asio::ssl::context& context,
                                                                  Duration timeout);

// Binds a TCP acceptor (SO_REUSEADDR) to `endpoint`; port 0 picks a free port.
Result<asio::ip::tcp::acceptor> tcp_listen(const asio::any_io_executor& ex, const Endpoint& endpoint);

// Binds a Unix stream acceptor at `path` (removing a stale socket file first) and sets the
// file's mode to `mode`.
Result<asio::local::stream_protocol::acceptor> unix_listen(const asio::any_io_executor& ex,
                                                           const std::string& path, unsigned mode);

// Peer credentials of a Unix socket (SO_PEERCRED): what the kernel says, not what the caller says.
struct PeerCredentials {
  int pid = -1;
  unsigned uid = 0;
  unsigned gid = 0;
};
Result<PeerCredentials> peer_credentials(asio::local::stream_protocol::socket& socket);

}  // namespace dtu::common
