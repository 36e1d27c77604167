#pragma once
// Transport: a byte stream under a Link — TCP+TLS (asio::ssl), a Unix socket, or plain TCP
// (tests only). Errors come back as values, never as exceptions.
// Not thread-safe: used by its link's one reader and one writer on the link's thread.

#include <cstddef>
#include <memory>
#include <string>
#include <system_error>
#include <type_traits>

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
  virtual asio::awaitable<IoResult> read_some(asio::mutable_buffer buffer) = 0;
  virtual asio::awaitable<IoResult> write_all(asio::const_buffer buffer) = 0;
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
  explicit StreamTransport(Stream stream) : stream_(std::move(stream)) {}

  asio::awaitable<IoResult> read_some(asio::mutable_buffer buffer) override {
    auto [ec, n] = co_await stream_.async_read_some(buffer, asio::experimental::as_tuple(asio::use_awaitable));
    co_return IoResult{ec, n};
  }
  asio::awaitable<IoResult> write_all(asio::const_buffer buffer) override {
    auto [ec, n] = co_await asio::async_write(stream_, buffer, asio::experimental::as_tuple(asio::use_awaitable));
    co_return IoResult{ec, n};
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
  SSL* ssl() override {
    if constexpr (std::is_same_v<Stream, asio::ssl::stream<asio::ip::tcp::socket>>) {
      return stream_.native_handle();
    } else {
      return nullptr;
    }
  }
  Stream& stream() { return stream_; }

 private:
  Stream stream_;
};

using TlsStream = asio::ssl::stream<asio::ip::tcp::socket>;
using TlsTransport = StreamTransport<TlsStream>;
using UnixTransport = StreamTransport<asio::local::stream_protocol::socket>;
using TcpTransport = StreamTransport<asio::ip::tcp::socket>;

}  // namespace dtu::common
