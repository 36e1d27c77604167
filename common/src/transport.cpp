#include "dtu/common/transport.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <utility>

#include "dtu/common/check.hpp"

namespace dtu::common {

namespace {

using asio::experimental::as_tuple;

int handshake_call(SSL* ssl, void* /*data*/, std::size_t /*length*/, std::size_t* moved) {
  *moved = 0;
  return SSL_do_handshake(ssl);
}

int read_call(SSL* ssl, void* data, std::size_t length, std::size_t* moved) {
  return SSL_read_ex(ssl, data, length, moved);
}

int write_call(SSL* ssl, void* data, std::size_t length, std::size_t* moved) {
  return SSL_write_ex(ssl, data, length, moved);
}

// The error of a failed call, as asio::ssl::stream reports the same failure. `saved_errno` is
// errno right after the call: OpenSSL's socket BIO leaves the system error there.
std::error_code failure(int ssl_error, int saved_errno) {
  if (ssl_error == SSL_ERROR_ZERO_RETURN) return asio::error::eof;  // the peer's close_notify
  const unsigned long code = ERR_get_error();
  if (code != 0) {
    if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
      return asio::ssl::error::stream_truncated;
    }
    return {static_cast<int>(code), asio::error::get_ssl_category()};
  }
  if (ssl_error == SSL_ERROR_SYSCALL && saved_errno != 0) return {saved_errno, std::system_category()};
  return asio::ssl::error::stream_truncated;  // SSL_ERROR_SYSCALL without a cause: EOF mid-stream
}

}  // namespace

TlsTransport::TlsTransport(asio::ip::tcp::socket socket, asio::ssl::context& context, Role role)
    : socket_(std::move(socket)), ssl_(SSL_new(context.native_handle())) {
  DTU_CHECK(ssl_ != nullptr);
  std::error_code ignored;
  socket_.non_blocking(true, ignored);
  // The socket BIO does not own the descriptor (BIO_NOCLOSE): socket_ closes it.
  DTU_CHECK(SSL_set_fd(ssl_, socket_.native_handle()) == 1);
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_set_read_ahead(ssl_, 1);
  if (role == Role::client) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
}

TlsTransport::~TlsTransport() { SSL_free(ssl_); }

asio::awaitable<IoResult> TlsTransport::drive(Call call, void* data, std::size_t length) {
  for (;;) {
    if (closed_) co_return IoResult{asio::error::operation_aborted, 0};
    ERR_clear_error();
    errno = 0;
    std::size_t moved = 0;
    const int rc = call(ssl_, data, length, &moved);
    const int saved_errno = errno;
    if (rc == 1) co_return IoResult{{}, moved};
    const int ssl_error = SSL_get_error(ssl_, rc);
    asio::socket_base::wait_type wait = asio::socket_base::wait_read;
    if (ssl_error == SSL_ERROR_WANT_WRITE) {
      wait = asio::socket_base::wait_write;
    } else if (ssl_error != SSL_ERROR_WANT_READ) {
      co_return IoResult{failure(ssl_error, saved_errno), 0};
    }
    auto [ec] = co_await socket_.async_wait(wait, as_tuple(asio::use_awaitable));
    if (ec) co_return IoResult{ec, 0};
  }
}

asio::awaitable<std::error_code> TlsTransport::handshake() {
  const IoResult r = co_await drive(handshake_call, nullptr, 0);
  co_return r.ec;
}

asio::awaitable<IoResult> TlsTransport::read_some(asio::mutable_buffer buffer) {
  co_return co_await drive(read_call, buffer.data(), buffer.size());
}

asio::awaitable<IoResult> TlsTransport::write_all(asio::const_buffer buffer) {
  auto* data = static_cast<unsigned char*>(const_cast<void*>(buffer.data()));  // SSL_write_ex only reads it
  std::size_t done = 0;
  while (done < buffer.size()) {
    const IoResult r = co_await drive(write_call, data + done, buffer.size() - done);
    if (r.ec) co_return IoResult{r.ec, done};
    done += r.bytes;
  }
  co_return IoResult{{}, done};
}

void TlsTransport::close() {
  if (closed_) return;
  closed_ = true;
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
}

void TlsTransport::shutdown_send() {
  if (closed_) return;
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_send, ignored);
}

}  // namespace dtu::common
