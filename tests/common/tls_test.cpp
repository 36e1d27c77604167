#include "dtu/common/tls.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace {

using dtu::common::Bytes;
using dtu::common::SecretKey;
using Tcp = asio::ip::tcp;
using TlsStream = asio::ssl::stream<Tcp::socket>;

// Safety net only: every test drives its io_context until the operations complete, which takes
// milliseconds; a bug that leaves an operation hanging fails the test after this.
constexpr auto kSafetyNet = std::chrono::seconds(10);

Bytes key_of(std::uint8_t fill) { return Bytes(32, fill); }

dtu::common::PskResolver table_resolver(std::map<std::string, Bytes, std::less<>> table) {
  return [table = std::move(table)](std::string_view identity) -> std::optional<Bytes> {
    const auto it = table.find(identity);
    if (it == table.end()) return std::nullopt;
    return it->second;
  };
}

struct HandshakeOutcome {
  std::error_code client;
  std::error_code server;
};

// A client and a server TLS stream over a real TCP connection on 127.0.0.1, both driven by one
// io_context on this thread.
class Link {
 public:
  Link(asio::ssl::context& client_context, asio::ssl::context& server_context) {
    Tcp::acceptor acceptor(io_, Tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    Tcp::socket client_socket(io_);
    Tcp::socket server_socket(io_);
    std::optional<std::error_code> accepted;
    std::optional<std::error_code> connected;
    acceptor.async_accept(server_socket, [&](std::error_code ec) { accepted = ec; });
    client_socket.async_connect(acceptor.local_endpoint(), [&](std::error_code ec) { connected = ec; });
    run();
    REQUIRE(accepted.has_value());
    REQUIRE(connected.has_value());
    REQUIRE_FALSE(*accepted);
    REQUIRE_FALSE(*connected);
    client_.emplace(std::move(client_socket), client_context);
    server_.emplace(std::move(server_socket), server_context);
  }

  TlsStream& client() { return *client_; }
  TlsStream& server() { return *server_; }
  SSL* client_ssl() { return client_->native_handle(); }
  SSL* server_ssl() { return server_->native_handle(); }

  // Runs both handshakes to completion. A side that fails closes its socket, so the other side
  // completes too even when no alert reaches it.
  HandshakeOutcome handshake() {
    std::optional<std::error_code> client_ec;
    std::optional<std::error_code> server_ec;
    client_->async_handshake(asio::ssl::stream_base::client, [&](std::error_code ec) {
      client_ec = ec;
      if (ec) close(*client_);
    });
    server_->async_handshake(asio::ssl::stream_base::server, [&](std::error_code ec) {
      server_ec = ec;
      if (ec) close(*server_);
    });
    run();
    REQUIRE(client_ec.has_value());
    REQUIRE(server_ec.has_value());
    return {*client_ec, *server_ec};
  }

  // Sends `message` from `from` and reads exactly that many bytes at `to`.
  void transfer(TlsStream& from, TlsStream& to, const std::string& message, std::string& received) {
    received.assign(message.size(), '\0');
    std::optional<std::error_code> wrote;
    std::optional<std::error_code> read;
    asio::async_write(from, asio::buffer(message), [&](std::error_code ec, std::size_t) { wrote = ec; });
    asio::async_read(to, asio::buffer(received), [&](std::error_code ec, std::size_t) { read = ec; });
    run();
    REQUIRE(wrote.has_value());
    REQUIRE(read.has_value());
    CHECK_FALSE(*wrote);
    CHECK_FALSE(*read);
  }

 private:
  void run() {
    io_.restart();
    io_.run_for(kSafetyNet);
  }
  static void close(TlsStream& stream) {
    std::error_code ignored;
    stream.lowest_layer().close(ignored);
  }

  asio::io_context io_;
  std::optional<TlsStream> client_;
  std::optional<TlsStream> server_;
};

long negotiated_group(SSL* ssl) { return SSL_get_negotiated_group(ssl); }

std::string exporter(SSL* ssl, std::string_view label) {
  const auto value = dtu::common::export_keying_material(ssl, label, dtu::common::as_bytes("context"), 32);
  REQUIRE(value.ok());
  return dtu::common::to_hex(*value);
}

// A server that authenticates with a self-signed Ed25519 certificate and ignores PSKs: what a
// man in the middle without the key could offer.
std::shared_ptr<asio::ssl::context> make_certificate_server_context() {
  auto context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* ctx = context->native_handle();
  REQUIRE(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1);
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  REQUIRE(key != nullptr);
  X509* cert = X509_new();
  REQUIRE(cert != nullptr);
  REQUIRE(X509_set_version(cert, X509_VERSION_3) == 1);
  REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert), 1) == 1);
  REQUIRE(X509_gmtime_adj(X509_getm_notBefore(cert), 0) != nullptr);
  REQUIRE(X509_gmtime_adj(X509_getm_notAfter(cert), 3600) != nullptr);
  REQUIRE(X509_set_pubkey(cert, key) == 1);
  X509_NAME* name = X509_get_subject_name(cert);
  const unsigned char cn[] = "mitm";
  REQUIRE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, cn, -1, -1, 0) == 1);
  REQUIRE(X509_set_issuer_name(cert, name) == 1);
  REQUIRE(X509_sign(cert, key, nullptr) > 0);
  REQUIRE(SSL_CTX_use_certificate(ctx, cert) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(ctx, key) == 1);
  X509_free(cert);
  EVP_PKEY_free(key);
  return context;
}

int g_tickets_seen = 0;

int count_ticket(SSL* /*ssl*/, SSL_SESSION* /*session*/) {
  ++g_tickets_seen;
  return 0;  // we did not keep a reference
}

}  // namespace

TEST_CASE("Contexts allow only TLS 1.3 with (EC)DHE and without tickets or early data") {
  auto client = dtu::common::make_psk_client_context();
  auto server = dtu::common::make_psk_server_context(table_resolver({}));
  for (SSL_CTX* ctx : {client->native_handle(), server->native_handle()}) {
    CHECK(SSL_CTX_get_min_proto_version(ctx) == TLS1_3_VERSION);
    CHECK(SSL_CTX_get_max_proto_version(ctx) == TLS1_3_VERSION);
    CHECK((SSL_CTX_get_options(ctx) & SSL_OP_ALLOW_NO_DHE_KEX) == 0);
    CHECK((SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET) != 0);
    CHECK(SSL_CTX_get_num_tickets(ctx) == 0);
    CHECK(SSL_CTX_get_max_early_data(ctx) == 0);
    CHECK(SSL_CTX_get_recv_max_early_data(ctx) == 0);
    CHECK(SSL_CTX_get_session_cache_mode(ctx) == SSL_SESS_CACHE_OFF);
  }
}

TEST_CASE("A client with the right key completes a TLS 1.3 PSK handshake with (EC)DHE and exchanges data") {
  const Bytes key = key_of(0x11);
  auto client_context = dtu::common::make_psk_client_context();
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", key}, {"dtu-b", key_of(0x22)}}));
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "dtu-a", key);

  const HandshakeOutcome outcome = link.handshake();
  INFO("client: " << dtu::common::describe_tls_error(outcome.client));
  INFO("server: " << dtu::common::describe_tls_error(outcome.server));
  REQUIRE_FALSE(outcome.client);
  REQUIRE_FALSE(outcome.server);

  for (SSL* ssl : {link.client_ssl(), link.server_ssl()}) {
    CHECK(SSL_version(ssl) == TLS1_3_VERSION);
    CHECK(std::string(SSL_get_cipher_name(ssl)) == "TLS_AES_128_GCM_SHA256");
    CHECK(SSL_session_reused(ssl) == 1);  // the PSK was used
    // psk_dhe_ke: a key-exchange group was negotiated, so the connection has an ephemeral share.
    CHECK(negotiated_group(ssl) != NID_undef);
  }
  EVP_PKEY* server_share = nullptr;
  CHECK(SSL_get_peer_tmp_key(link.client_ssl(), &server_share) == 1);
  EVP_PKEY_free(server_share);
  CHECK(SSL_get_early_data_status(link.client_ssl()) == SSL_EARLY_DATA_NOT_SENT);

  CHECK(dtu::common::accepted_psk_identity(link.server_ssl()) == std::optional<std::string>("dtu-a"));
  CHECK_FALSE(dtu::common::accepted_psk_identity(link.client_ssl()).has_value());

  std::string at_server;
  link.transfer(link.client(), link.server(), "hello from the client", at_server);
  CHECK(at_server == "hello from the client");
  std::string at_client;
  link.transfer(link.server(), link.client(), "and hello back", at_client);
  CHECK(at_client == "and hello back");

  const std::string client_export = exporter(link.client_ssl(), "EXPORTER-dtubroker-test");
  CHECK(client_export == exporter(link.server_ssl(), "EXPORTER-dtubroker-test"));
  CHECK(client_export != exporter(link.client_ssl(), "EXPORTER-dtubroker-other"));
  const auto other_context = dtu::common::export_keying_material(link.client_ssl(), "EXPORTER-dtubroker-test",
                                                                 dtu::common::as_bytes("other"), 32);
  REQUIRE(other_context.ok());
  CHECK(dtu::common::to_hex(*other_context) != client_export);
}

TEST_CASE("The server issues no session tickets") {
  const Bytes key = key_of(0x33);
  auto client_context = dtu::common::make_psk_client_context();
  // Observe tickets: OpenSSL reports a received ticket only to a client with a session cache.
  SSL_CTX_set_session_cache_mode(client_context->native_handle(),
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(client_context->native_handle(), count_ticket);
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"mgr-1", key}}));
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "mgr-1", key);
  g_tickets_seen = 0;
  const HandshakeOutcome outcome = link.handshake();
  REQUIRE_FALSE(outcome.client);
  REQUIRE_FALSE(outcome.server);
  // Tickets would arrive before any application data from the server.
  std::string at_client;
  link.transfer(link.server(), link.client(), "after the handshake", at_client);
  CHECK(at_client == "after the handshake");
  CHECK(g_tickets_seen == 0);
}

TEST_CASE("A client with the wrong key fails the handshake on both ends") {
  auto client_context = dtu::common::make_psk_client_context();
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", key_of(0x11)}}));
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "dtu-a", key_of(0x12));

  const HandshakeOutcome outcome = link.handshake();
  const std::string server_text = dtu::common::describe_tls_error(outcome.server);
  const std::string client_text = dtu::common::describe_tls_error(outcome.client);
  MESSAGE("server: " << server_text);
  MESSAGE("client: " << client_text);
  CHECK(outcome.client);
  CHECK(outcome.server);
  CHECK(server_text.find("binder does not verify") != std::string::npos);
  CHECK(server_text.find("wrong key") != std::string::npos);
  CHECK(client_text.find("wrong PSK") != std::string::npos);
  CHECK_FALSE(dtu::common::accepted_psk_identity(link.server_ssl()).has_value());
}

TEST_CASE("A client with an unknown identity fails the handshake") {
  auto client_context = dtu::common::make_psk_client_context();
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", key_of(0x11)}}));
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "dtu-zz", key_of(0x11));

  const HandshakeOutcome outcome = link.handshake();
  const std::string server_text = dtu::common::describe_tls_error(outcome.server);
  MESSAGE("server: " << server_text);
  MESSAGE("client: " << dtu::common::describe_tls_error(outcome.client));
  CHECK(outcome.client);
  CHECK(outcome.server);
  CHECK(server_text.find("psk identity not found") != std::string::npos);
  CHECK_FALSE(dtu::common::accepted_psk_identity(link.server_ssl()).has_value());
}

TEST_CASE("A DTU's derived key does not authenticate it as another DTU") {
  const SecretKey site = dtu::common::generate_key();
  auto server_context = dtu::common::make_psk_server_context(
      [site](std::string_view dtu_id) -> std::optional<Bytes> { return dtu::common::derive_dtu_key(site, dtu_id); });
  auto client_context = dtu::common::make_psk_client_context();
  const Bytes key_a = dtu::common::derive_dtu_key(site, "dtu-a");

  SUBCASE("dtu-a with its own key is accepted as dtu-a") {
    Link link(*client_context, *server_context);
    dtu::common::set_client_psk(link.client_ssl(), "dtu-a", key_a);
    const HandshakeOutcome outcome = link.handshake();
    REQUIRE_FALSE(outcome.client);
    REQUIRE_FALSE(outcome.server);
    CHECK(dtu::common::accepted_psk_identity(link.server_ssl()) == std::optional<std::string>("dtu-a"));
  }
  SUBCASE("dtu-a's key under the identity dtu-b is refused") {
    Link link(*client_context, *server_context);
    dtu::common::set_client_psk(link.client_ssl(), "dtu-b", key_a);
    const HandshakeOutcome outcome = link.handshake();
    MESSAGE("server: " << dtu::common::describe_tls_error(outcome.server));
    CHECK(outcome.client);
    CHECK(outcome.server);
    CHECK_FALSE(dtu::common::accepted_psk_identity(link.server_ssl()).has_value());
  }
}

TEST_CASE("A client refuses a server that authenticates with a certificate instead of the PSK") {
  auto client_context = dtu::common::make_psk_client_context();
  auto server_context = make_certificate_server_context();
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "dtu-a", key_of(0x11));

  const HandshakeOutcome outcome = link.handshake();
  const std::string client_text = dtu::common::describe_tls_error(outcome.client);
  MESSAGE("client: " << client_text);
  CHECK(outcome.client);
  CHECK(outcome.server);
  CHECK(client_text.find("certificate verify failed") != std::string::npos);
}

TEST_CASE("A server refuses a client that offers no PSK") {
  asio::ssl::context plain_client(asio::ssl::context::tls_client);
  plain_client.set_verify_mode(asio::ssl::verify_none);
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", key_of(0x11)}}));
  Link link(plain_client, *server_context);

  const HandshakeOutcome outcome = link.handshake();
  MESSAGE("server: " << dtu::common::describe_tls_error(outcome.server));
  CHECK(outcome.client);
  CHECK(outcome.server);
}

TEST_CASE("A client connection without set_client_psk fails its handshake") {
  auto client_context = dtu::common::make_psk_client_context();
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", key_of(0x11)}}));
  Link link(*client_context, *server_context);

  const HandshakeOutcome outcome = link.handshake();
  const std::string client_text = dtu::common::describe_tls_error(outcome.client);
  MESSAGE("client: " << client_text);
  CHECK(outcome.client);
  CHECK(outcome.server);
  CHECK(client_text.find("bad psk") != std::string::npos);
}

TEST_CASE("A resolver that returns a too-short key is treated as an unknown identity") {
  const Bytes short_key(8, 0x44);
  auto server_context = dtu::common::make_psk_server_context(table_resolver({{"dtu-a", short_key}}));
  auto client_context = dtu::common::make_psk_client_context();
  Link link(*client_context, *server_context);
  dtu::common::set_client_psk(link.client_ssl(), "dtu-a", key_of(0x44));

  const HandshakeOutcome outcome = link.handshake();
  CHECK(outcome.client);
  CHECK(outcome.server);
  CHECK(dtu::common::describe_tls_error(outcome.server).find("psk identity not found") != std::string::npos);
}

TEST_CASE("The exporter refuses to run before the handshake") {
  auto client_context = dtu::common::make_psk_client_context();
  asio::io_context io;
  TlsStream stream(io, *client_context);
  const auto value = dtu::common::export_keying_material(stream.native_handle(), "EXPORTER-x", {}, 32);
  REQUIRE_FALSE(value.ok());
  CHECK(value.error().code == dtu::common::Errc::illegal_state);
  CHECK_FALSE(dtu::common::accepted_psk_identity(stream.native_handle()).has_value());
}

TEST_CASE("describe_tls_error names non-TLS errors by category") {
  CHECK(dtu::common::describe_tls_error({}) == "no error");
  const std::string refused = dtu::common::describe_tls_error(asio::error::connection_refused);
  CHECK(refused.find("system") != std::string::npos);
  CHECK(dtu::common::describe_tls_error(asio::ssl::error::stream_truncated).find("close_notify") !=
        std::string::npos);
}
