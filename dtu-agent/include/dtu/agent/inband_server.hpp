#pragma once
// InbandServer: the DTU agent's in-band listener (DESIGN.md §2, docs/protocol.md §12). The
// service holding a lease connects straight to the DTU over TLS 1.3 with the lease's token as
// PSK and the lease id as PSK identity, says inband_hello, and then moves data on the leased
// unit: control, bulk/interrupt OUT and IN transfers, the printer's device id, in-band renewal.
//
//  - TLS: the resolver knows the tokens of the active leases, and of the ended leases the table
//    still remembers; a channel of an ended lease is told why (channel_closing) and closed, so
//    a late holder learns "expired" or "released" instead of meeting a bare handshake failure.
//    Unknown ids, wrong tokens and stalled handshakes are refused with one log line
//    (`inband_refused`) naming the peer, the lease id offered and the reason.
//  - One InbandSession per channel (src/inband_session.hpp): requests on one endpoint run in
//    arrival order (FIFO), different endpoints concurrently.
//  - At most Options::max_channels connections at once (handshakes included; the agent's
//    max_inband_channels config key).
//
// How the agent drives it: construct with the agent's LeaseTable and backend; listen(); call
// lease_ended() for every lease that ends (expiry, release, device gone, agent stopping) — each
// of its channels then gets channel_closing{reason} and closes; stop() before the backend and
// the table go away. The agent claims a unit's interfaces when it grants a lease and releases
// them when the lease ends; this server never claims. Hooks::renew is how an in-band renewal
// reaches the agent (which renews in its table and re-arms its expiry timer; the manager keeps
// no expiries, so it is not told).
//
// Thread: everything on the agent's io_context thread (the executor given), like the table and
// the backend. The Clock must tell steady time (SystemClock): links sleep on it.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include <asio.hpp>

#include "dtu/agent/lease_table.hpp"
#include "dtu/agent/usb_backend.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

class InbandSession;

class InbandServer {
 public:
  struct Hooks {
    // The holder asks to extend `lease_id` to `length` from now. The agent renews in its table
    // (LeaseTable::renew: its errors reach the holder). Empty: in-band
    // renewal is refused.
    std::function<common::Result<Lease>(std::string_view lease_id, common::Duration length)> renew;
  };

  struct Options {
    std::string dtu;  // this DTU's id, for inband_welcome
    // TLS handshake, and then the inband_hello, must each finish within this.
    common::Duration handshake_timeout = std::chrono::seconds(5);
    // Connections at once, handshakes included; more are refused at accept (logged). 0: no cap.
    std::size_t max_channels = 64;
    // Heartbeats 1 s × 3 and the 1 MiB frame cap by default, like every link.
    common::Link::Options link;
  };

  // The references (clock, leases, backend) must outlive the server. Without `options` the
  // defaults apply, and inband_welcome names no DTU (an empty `dtu`).
  InbandServer(asio::any_io_executor ex, const common::Clock& clock, const LeaseTable& leases,
               UsbBackend& backend, Hooks hooks, Options options);
  InbandServer(asio::any_io_executor ex, const common::Clock& clock, const LeaseTable& leases,
               UsbBackend& backend, Hooks hooks);
  ~InbandServer();  // stop()s
  InbandServer(const InbandServer&) = delete;
  InbandServer& operator=(const InbandServer&) = delete;

  // Binds and starts accepting. `at.port` 0 lets the kernel pick; the result is the bound
  // endpoint. Errors: Errc::config_error (not an IP address), Errc::io_error (cannot bind),
  // Errc::illegal_state (already listening or stopped).
  common::Result<common::Endpoint> listen(common::Endpoint at);

  // Stops accepting; every channel gets channel_closing{"agent_stopping"} and closes, every
  // handshake in progress is dropped. Idempotent.
  void stop();

  // `lease` ended for `why`: its channels get channel_closing{lease_end_name(why), detail} and
  // close. Transfers still running complete on the backend; their answers are dropped.
  void lease_ended(const Lease& lease, LeaseEnd why);
  void lease_ended(std::string_view lease_id, LeaseEnd why);

  // Channels past their TLS handshake (awaiting hello, or active), not yet closed.
  std::size_t channels() const { return sessions_.size(); }
  const Options& options() const { return options_; }

 private:
  struct Alive {
    bool value = true;
  };

  asio::awaitable<void> accept_loop(std::shared_ptr<Alive> alive);
  asio::awaitable<void> admit(asio::ip::tcp::socket socket, std::shared_ptr<Alive> alive);
  std::optional<common::Bytes> resolve(std::string_view lease_id) const;
  void on_session_closed(const std::shared_ptr<InbandSession>& session);

  asio::any_io_executor executor_;
  const common::Clock& clock_;
  const LeaseTable& leases_;
  UsbBackend& backend_;
  Hooks hooks_;
  Options options_;
  common::Logger log_{"dtu-agent"};
  std::optional<asio::ip::tcp::acceptor> acceptor_;
  std::set<std::shared_ptr<InbandSession>> sessions_;
  std::size_t handshakes_ = 0;
  bool stopped_ = false;
  std::shared_ptr<Alive> alive_ = std::make_shared<Alive>();
};

// The channel_closing detail for a lease that ended for `why`.
std::string lease_end_detail(std::string_view lease_id, LeaseEnd why);

}  // namespace dtu::agent
