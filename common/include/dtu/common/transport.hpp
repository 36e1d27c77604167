#pragma once
// Transport: a byte stream under a Link — TCP+TLS (TlsTransport), a Unix socket, or plain TCP
// (tests only). Errors come back as values, never as exceptions.
// Not thread-safe: used by its link's one reader and one writer on the link's thread.

#include <cstddef>
#include <memory>
#include <string>
#include <system_error>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl.hpp>

namespace dtu::common {

struct IoResult {
  std::error_code ec;
  std::size_t bytes = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Reads what has arrived, without waiting: the bytes, asio::error::would_block when nothing
  // has, or the error (eof at the end of the stream). A link reads into a buffer of its
  // thread's (Link::read_loop), so it holds no read buffer of its own while it waits.
  virtual IoResult read_available(asio::mutable_buffer buffer) = 0;
  // Waits until read_available has something to say (bytes, the end, or an error).
  virtual asio::awaitable<std::error_code> wait_readable() = 0;
  // True when the last read_available took everything the socket had then and nothing read is
  // left undelivered: the next read_available would find nothing, so the reader may wait at
  // once. Sound because wait_readable re-arms the descriptor (asio's epoll_ctl per wait), which
  // reports bytes that arrived since. False when unsure.
  virtual bool input_drained() const { return false; }
  // Waits for bytes and reads them into `buffer`, held while it waits.
  asio::awaitable<IoResult> read_some(asio::mutable_buffer buffer);
  virtual asio::awaitable<IoResult> write_all(asio::const_buffer buffer) = 0;
  // Writes what the socket takes now, without waiting: the bytes written (maybe fewer than
  // `buffer`, maybe none: would_block), or the error. What was not written must be passed again
  // first, to write_available or write_all (OpenSSL may hold part of it in a record).
  virtual IoResult write_available(asio::const_buffer /*buffer*/) {
    return IoResult{asio::error::would_block, 0};
  }
  // Idempotent; pending reads and writes complete with an error.
  virtual void close() = 0;
  // Ends our direction of the stream (TCP FIN after the bytes already written); reads go on
  // until the peer closes its side. Idempotent; errors are ignored (close() follows anyway).
  virtual void shutdown_send() {}
  // The TLS connection, or nullptr for a plain stream.
  virtual SSL* ssl() { return nullptr; }
};

template <typename Stream>
class StreamTransport final : public Transport {
 public:
  explicit StreamTransport(Stream stream) : stream_(std::move(stream)) {
    std::error_code ignored;
    stream_.non_blocking(true, ignored);  // read_available never waits
  }

  IoResult read_available(asio::mutable_buffer buffer) override {
    std::error_code ec;
    const std::size_t n = stream_.read_some(buffer, ec);
    drained_ = !ec && n < buffer.size();
    return IoResult{ec, n};
  }
  bool input_drained() const override { return drained_; }
  asio::awaitable<std::error_code> wait_readable() override {
    auto [ec] =
        co_await stream_.async_wait(Stream::wait_read, asio::experimental::as_tuple(asio::use_awaitable));
    co_return ec;
  }
  asio::awaitable<IoResult> write_all(asio::const_buffer buffer) override {
    auto [ec, n] = co_await asio::async_write(stream_, buffer, asio::experimental::as_tuple(asio::use_awaitable));
    co_return IoResult{ec, n};
  }
  IoResult write_available(asio::const_buffer buffer) override {
    std::error_code ec;
    const std::size_t n = stream_.write_some(buffer, ec);
    return IoResult{ec, n};
  }
  void close() override {
    std::error_code ignored;
    stream_.lowest_layer().shutdown(asio::socket_base::shutdown_both, ignored);
    stream_.lowest_layer().close(ignored);
  }
  void shutdown_send() override {
    std::error_code ignored;
    stream_.lowest_layer().shutdown(asio::socket_base::shutdown_send, ignored);
  }
  Stream& stream() { return stream_; }

 private:
  Stream stream_;
  bool drained_ = false;
};

using UnixTransport = StreamTransport<asio::local::stream_protocol::socket>;
using TcpTransport = StreamTransport<asio::ip::tcp::socket>;

// TLS over a TCP socket, with OpenSSL reading and writing the socket itself (through a BIO
// that sends with MSG_NOSIGNAL: a vanished peer never raises SIGPIPE): the socket is
// non-blocking, and when OpenSSL wants to read or write more the coroutine waits for the socket
// (async_wait), then calls OpenSSL again. Unlike asio::ssl::stream, which keeps two 17 KB
// buffers and a BIO pair of two more for a connection's whole life, an idle connection holds
// only the SSL object: OpenSSL's record buffers are released between records
// (SSL_MODE_RELEASE_BUFFERS). A manager with 10,000 DTUs holds 10,000 of these
// (docs/performance.md). Records are read ahead: one recv for as many as have arrived.
//
// Errors: asio::error::eof after the peer's close_notify; asio::ssl::error::stream_truncated
// when the TCP stream ends without one (every peer of ours closes that way); OpenSSL's errors
// in asio's ssl category (describe_tls_error reads them); the socket's own errors as they come.
// After close(), every call fails with operation_aborted: the descriptor may already belong
// to another connection.
class TlsTransport final : public Transport {
 public:
  enum class Role { client, server };
  // The BIO's data (transport.cpp): the socket's descriptor, and whether its last recv came back
  // short (the socket had nothing more then).
  struct SocketState {
    int fd = -1;
    bool drained = false;
  };

  // REQUIRES: socket connected; context from make_psk_client_context (client) or
  //           make_psk_server_context (server)
  TlsTransport(asio::ip::tcp::socket socket, asio::ssl::context& context, Role role);
  ~TlsTransport() override;
  TlsTransport(const TlsTransport&) = delete;
  TlsTransport& operator=(const TlsTransport&) = delete;

  // The TLS handshake; the error as for reads. Deadlines are the caller's (close() ends it).
  asio::awaitable<std::error_code> handshake();

  IoResult read_available(asio::mutable_buffer buffer) override;
  asio::awaitable<std::error_code> wait_readable() override;
  bool input_drained() const override;
  asio::awaitable<IoResult> write_all(asio::const_buffer buffer) override;
  IoResult write_available(asio::const_buffer buffer) override;
  void close() override;
  void shutdown_send() override;
  SSL* ssl() override { return ssl_; }
  asio::ip::tcp::socket& socket() { return socket_; }

 private:
  // One call of OpenSSL on this connection: its return value, and the bytes it moved.
  using Call = int (*)(SSL* ssl, void* data, std::size_t length, std::size_t* moved);
  // Calls OpenSSL once: the bytes moved, the error, or would_block with `wait` set to what
  // OpenSSL needs from the socket.
  IoResult call_once(Call call, void* data, std::size_t length, asio::socket_base::wait_type& wait);
  // Runs `call` until OpenSSL stops asking for the socket: the bytes moved, or the error.
  asio::awaitable<IoResult> drive(Call call, void* data, std::size_t length);

  asio::ip::tcp::socket socket_;
  SocketState socket_state_;
  SSL* ssl_;
  // What the last read_available needs from the socket: OpenSSL may have to write to read
  // (a TLS 1.3 key update).
  asio::socket_base::wait_type read_wait_ = asio::socket_base::wait_read;
  bool closed_ = false;
};

}  // namespace dtu::common
