#include "dtu/common/transport.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <utility>

#include "dtu/common/check.hpp"

namespace dtu::common {

namespace {

using asio::experimental::as_tuple;

// The BIO between OpenSSL and the socket. OpenSSL's own socket BIO writes with write(2), which
// raises SIGPIPE when the peer has gone and kills a daemon that does not ignore it; this one
// sends with MSG_NOSIGNAL, so a peer that resets its connection only fails that connection.
// The BIO's data is the transport's SocketState: the descriptor, which the BIO never closes,
// and whether the last recv came back short.
TlsTransport::SocketState& state_of(BIO* bio) {
  return *static_cast<TlsTransport::SocketState*>(BIO_get_data(bio));
}
int socket_of(BIO* bio) {
  return state_of(bio).fd;
}

bool would_block(int error) { return error == EAGAIN || error == EWOULDBLOCK || error == EINTR; }

int bio_write(BIO* bio, const char* data, int length) {
  BIO_clear_retry_flags(bio);
  const ssize_t n = ::send(socket_of(bio), data, static_cast<std::size_t>(length), MSG_NOSIGNAL);
  if (n < 0 && would_block(errno)) BIO_set_retry_write(bio);
  return static_cast<int>(n);
}

int bio_read(BIO* bio, char* data, int length) {
  BIO_clear_retry_flags(bio);
  const ssize_t n = ::recv(socket_of(bio), data, static_cast<std::size_t>(length), MSG_NOSIGNAL);
  state_of(bio).drained = n > 0 && n < length;
  if (n < 0 && would_block(errno)) BIO_set_retry_read(bio);
  if (n == 0 && length > 0) BIO_set_flags(bio, BIO_FLAGS_IN_EOF);  // OpenSSL asks BIO_eof()
  return static_cast<int>(n);
}

long bio_ctrl(BIO* bio, int command, long /*number*/, void* /*pointer*/) {
  switch (command) {
    case BIO_CTRL_FLUSH:
      return 1;  // nothing is buffered here
    case BIO_CTRL_EOF:
      return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0 ? 1 : 0;
    default:
      return 0;
  }
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* socket_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "dtubroker socket");
    DTU_CHECK(m != nullptr);
    DTU_CHECK(BIO_meth_set_write(m, bio_write) == 1 && BIO_meth_set_read(m, bio_read) == 1 &&
              BIO_meth_set_ctrl(m, bio_ctrl) == 1 && BIO_meth_set_create(m, bio_create) == 1);
    return m;
  }();
  return method;
}

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
// errno right after the call: the socket BIO leaves the system error there.
std::error_code failure(int ssl_error, int saved_errno) {
  if (ssl_error == SSL_ERROR_ZERO_RETURN) return asio::error::eof;  // the peer's close_notify
  const unsigned long code = ERR_get_error();
  if (code != 0) {
    if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
      return asio::ssl::error::stream_truncated;
    }
    return {static_cast<int>(code), asio::error::get_ssl_category()};
  }
  if (ssl_error == SSL_ERROR_SYSCALL && saved_errno != 0) return {saved_errno, asio::error::get_system_category()};
  return asio::ssl::error::stream_truncated;  // SSL_ERROR_SYSCALL without a cause: EOF mid-stream
}

}  // namespace

asio::awaitable<IoResult> Transport::read_some(asio::mutable_buffer buffer) {
  for (;;) {
    const IoResult r = read_available(buffer);
    if (r.ec != asio::error::would_block) co_return r;
    const std::error_code ec = co_await wait_readable();
    if (ec) co_return IoResult{ec, 0};
  }
}

TlsTransport::TlsTransport(asio::ip::tcp::socket socket, asio::ssl::context& context, Role role)
    : socket_(std::move(socket)), ssl_(SSL_new(context.native_handle())) {
  DTU_CHECK(ssl_ != nullptr);
  std::error_code ignored;
  socket_.non_blocking(true, ignored);
  BIO* bio = BIO_new(socket_method());
  DTU_CHECK(bio != nullptr);
  socket_state_.fd = socket_.native_handle();
  BIO_set_data(bio, &socket_state_);
  SSL_set_bio(ssl_, bio, bio);  // the SSL owns the BIO (one reference for both directions)
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_set_read_ahead(ssl_, 1);
  if (role == Role::client) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
}

TlsTransport::~TlsTransport() { SSL_free(ssl_); }

IoResult TlsTransport::call_once(Call call, void* data, std::size_t length,
                                 asio::socket_base::wait_type& wait) {
  if (closed_) return IoResult{asio::error::operation_aborted, 0};
  ERR_clear_error();
  errno = 0;
  std::size_t moved = 0;
  const int rc = call(ssl_, data, length, &moved);
  const int saved_errno = errno;
  if (rc == 1) return IoResult{{}, moved};
  const int ssl_error = SSL_get_error(ssl_, rc);
  if (ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE) {
    wait = ssl_error == SSL_ERROR_WANT_READ ? asio::socket_base::wait_read : asio::socket_base::wait_write;
    return IoResult{asio::error::would_block, 0};
  }
  return IoResult{failure(ssl_error, saved_errno), 0};
}

asio::awaitable<IoResult> TlsTransport::drive(Call call, void* data, std::size_t length) {
  for (;;) {
    asio::socket_base::wait_type wait = asio::socket_base::wait_read;
    const IoResult r = call_once(call, data, length, wait);
    if (r.ec != asio::error::would_block) co_return r;
    auto [ec] = co_await socket_.async_wait(wait, as_tuple(asio::use_awaitable));
    if (ec) co_return IoResult{ec, 0};
  }
}

asio::awaitable<std::error_code> TlsTransport::handshake() {
  const IoResult r = co_await drive(handshake_call, nullptr, 0);
  co_return r.ec;
}

IoResult TlsTransport::read_available(asio::mutable_buffer buffer) {
  return call_once(read_call, buffer.data(), buffer.size(), read_wait_);
}

bool TlsTransport::input_drained() const {
  // SSL_has_pending: a record read ahead (or part of one) is still in OpenSSL's buffer.
  return !closed_ && socket_state_.drained && SSL_has_pending(ssl_) == 0;
}

asio::awaitable<std::error_code> TlsTransport::wait_readable() {
  if (closed_) co_return asio::error::operation_aborted;
  auto [ec] = co_await socket_.async_wait(read_wait_, as_tuple(asio::use_awaitable));
  co_return ec;
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

IoResult TlsTransport::write_available(asio::const_buffer buffer) {
  asio::socket_base::wait_type ignored = asio::socket_base::wait_write;
  return call_once(write_call, const_cast<void*>(buffer.data()), buffer.size(), ignored);
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
