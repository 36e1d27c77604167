#include "dtu/agent/inband_server.hpp"

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "inband_session.hpp"

namespace dtu::agent {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

namespace {

// A pause after a failed accept (out of descriptors, …) so the loop does not spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// Offered PSK identities are logged up to this many bytes: a peer chooses them.
constexpr std::size_t kMaxLoggedIdentity = 64;

std::string millis(common::Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

// What one TLS handshake's PSK lookup saw: the identity offered and whether it was known.
struct Attempt {
  std::string offered;
  bool looked_up = false;
  bool known = false;
};

}  // namespace

std::string lease_end_detail(std::string_view lease_id, LeaseEnd why) {
  const std::string lease = "lease " + std::string(lease_id);
  switch (why) {
    case LeaseEnd::expired:
      return lease + " expired";
    case LeaseEnd::released:
      return lease + " was released";
    case LeaseEnd::device_gone:
      return "the device of " + lease + " is gone";
    case LeaseEnd::agent_stopping:
      return "the DTU agent is stopping; " + lease + " ended";
  }
  return lease + " ended";
}

InbandServer::InbandServer(asio::any_io_executor ex, const common::Clock& clock, const LeaseTable& leases,
                           UsbBackend& backend, Hooks hooks, Options options)
    : executor_(std::move(ex)),
      clock_(clock),
      leases_(leases),
      backend_(backend),
      hooks_(std::move(hooks)),
      options_(std::move(options)) {}

InbandServer::InbandServer(asio::any_io_executor ex, const common::Clock& clock, const LeaseTable& leases,
                           UsbBackend& backend, Hooks hooks)
    : InbandServer(std::move(ex), clock, leases, backend, std::move(hooks), Options{}) {}

InbandServer::~InbandServer() {
  stop();
  // Sessions still draining their last frame hold references to this server's copies only,
  // but their close hooks call back here: close them now, while this object lives.
  auto sessions = sessions_;
  for (const auto& s : sessions) s->close(Error(Errc::closed, "in-band server destroyed"));
  sessions_.clear();
  alive_->value = false;
}

common::Result<common::Endpoint> InbandServer::listen(common::Endpoint at) {
  if (stopped_ || acceptor_)
    return Error(Errc::illegal_state, "the in-band server is already listening or stopped");
  auto acceptor = common::tcp_listen(executor_, at);
  if (!acceptor.ok()) return acceptor.error();
  acceptor_.emplace(std::move(acceptor.value()));
  const common::Endpoint bound{at.host, acceptor_->local_endpoint().port()};
  common::spawn(executor_, accept_loop(alive_), log_, "accept in-band");
  log_.info("", "inband_listening",
            {{"endpoint", bound.to_string()}, {"max_channels", options_.max_channels}});
  return bound;
}

void InbandServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  std::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  auto sessions = sessions_;
  for (const auto& s : sessions) {
    s->end(lease_end_name(LeaseEnd::agent_stopping),
           lease_end_detail(s->lease_id(), LeaseEnd::agent_stopping));
  }
}

void InbandServer::lease_ended(const Lease& lease, LeaseEnd why) {
  lease_ended(lease.id, why);
}

void InbandServer::lease_ended(std::string_view lease_id, LeaseEnd why) {
  auto sessions = sessions_;
  for (const auto& s : sessions) {
    if (s->lease_id() == lease_id) s->end(lease_end_name(why), lease_end_detail(lease_id, why));
  }
}

std::optional<common::Bytes> InbandServer::resolve(std::string_view lease_id) const {
  if (const Lease* lease = leases_.find(lease_id)) return lease->token;
  // An ended lease still completes the handshake, so its late holder can be told why.
  if (const EndedLease* gone = leases_.ended(lease_id)) return gone->token;
  return std::nullopt;
}

void InbandServer::on_session_closed(const std::shared_ptr<InbandSession>& session) {
  sessions_.erase(session);
}

asio::awaitable<void> InbandServer::accept_loop(std::shared_ptr<Alive> alive) {
  asio::steady_timer pause(executor_);
  while (alive->value && !stopped_) {
    auto [ec, socket] = co_await acceptor_->async_accept(as_tuple(asio::use_awaitable));
    if (!alive->value || stopped_) co_return;
    if (ec) {
      log_.warn("", "accept_failed", {{"listener", "inband"}, {"reason", ec.message()}});
      pause.expires_after(kAcceptRetryDelay);
      co_await pause.async_wait(as_tuple(asio::use_awaitable));
      continue;
    }
    std::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    const std::string peer = ignored ? std::string("unknown") : common::to_string(remote);
    if (options_.max_channels != 0 && handshakes_ + sessions_.size() >= options_.max_channels) {
      // Threat: a flood of connections exhausting descriptors and handshake CPU.
      log_.warn(peer, "inband_refused",
                {{"lease", "-"},
                 {"reason", "too many channels (at most " + std::to_string(options_.max_channels) + ")"}});
      socket.close(ignored);
      continue;
    }
    common::spawn(executor_, admit(std::move(socket), alive), log_, "admit in-band");
  }
}

asio::awaitable<void> InbandServer::admit(asio::ip::tcp::socket socket, std::shared_ptr<Alive> alive) {
  std::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  const std::string peer = ec ? std::string("unknown") : common::to_string(remote);
  socket.set_option(asio::ip::tcp::no_delay(true), ec);

  // One TLS context per connection, so its PSK lookup can say which identity this peer offered
  // (the log line of a refusal names it) — OpenSSL's lookup callback does not say which
  // connection asks.
  auto attempt = std::make_shared<Attempt>();
  auto tls = common::make_psk_server_context(
      [this, alive, attempt](std::string_view identity) -> std::optional<common::Bytes> {
        attempt->offered.assign(identity.substr(0, kMaxLoggedIdentity));
        attempt->looked_up = true;
        if (!alive->value) return std::nullopt;
        auto key = resolve(identity);
        attempt->known = key.has_value();
        return key;
      });
  ++handshakes_;
  auto handshake = common::tls_accept(std::move(socket), *tls, options_.handshake_timeout);
  auto transport = co_await std::move(handshake);
  if (!alive->value) co_return;
  --handshakes_;
  const std::string offered = attempt->looked_up ? attempt->offered : std::string("-");
  if (!transport.ok()) {
    std::string reason;
    if (transport.error().code == Errc::timeout) {
      reason = "TLS handshake did not finish within " + millis(options_.handshake_timeout);
    } else if (!attempt->looked_up) {
      reason = "not a dtubroker client: " + transport.error().detail;
    } else if (!attempt->known) {
      reason = "unknown lease";
    } else {
      reason = "wrong token or not a dtubroker client: " + transport.error().detail;
    }
    log_.warn(peer, "inband_refused", {{"lease", offered}, {"reason", reason}});
    co_return;
  }
  if (stopped_) co_return;
  auto identity = common::accepted_psk_identity((*transport)->ssl());
  if (!identity) {
    log_.warn(peer, "inband_refused",
              {{"lease", offered}, {"reason", "no PSK identity after the handshake"}});
    co_return;
  }

  auto link = common::Link::create(executor_, std::move(transport.value()),
                                   common::FilamentMux::Side::acceptor, clock_, log_, peer, options_.link);
  auto session = std::make_shared<InbandSession>(
      link, *identity, InbandSession::Shared{clock_, leases_, backend_, hooks_, options_, log_});
  sessions_.insert(session);
  session->start([this, alive](const std::shared_ptr<InbandSession>& s) {
    if (alive->value) on_session_closed(s);
  });
  if (leases_.find(*identity) == nullptr) {
    // A late holder: its lease ended after it got the token. Tell it why, then close.
    const EndedLease* gone = leases_.ended(*identity);
    if (gone != nullptr) {
      log_.info(peer, "inband_late_holder", {{"lease", *identity}, {"ended", lease_end_name(gone->why)}});
      session->end(lease_end_name(gone->why), lease_end_detail(*identity, gone->why));
    } else {
      session->end("ended", "lease " + *identity + " is no longer known to this DTU");
    }
  }
}

}  // namespace dtu::agent
