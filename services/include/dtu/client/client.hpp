#pragma once
// Client: libdtu-client, what a device service links to find, lease and keep units of DTUs
// through its server's devmgr (DESIGN.md §4–5, docs/service-api.md). It wraps one
// services::ManagerClient connection and adds what every service would otherwise write itself:
//
//  - finders with per-finder callbacks (matched / changed / gone / synced) and a cache of the
//    current matches;
//  - allocate (optionally waiting for a held unit), renew, release, and the automatic renewal
//    of every lease it holds at a third of the lease's length;
//  - automatic reconnect when the manager goes away or restarts (backoff 100 ms doubling to 2 s,
//    each delay × a jitter in [0.5, 1.5)), then resubmission: each finder is registered again
//    under its id, each lease is taken over again with resume_lease (retried while the manager
//    does not know the DTU yet, until the lease's expiry).
//
//   auto op = Client::connect(io.get_executor(), SystemClock::instance(), {.name = "print-svc"});
//   auto client = co_await std::move(op);
//   auto add = (*client)->add_finder(finder, {.matched = ..., .synced = ...});
//   auto id = co_await std::move(add);
//   auto alloc = (*client)->allocate("dtu-1", "1-1", 0, {});
//   auto lease = co_await std::move(alloc);           // renewed until released or lost
//   auto open = (*client)->open_channel(*lease);
//   auto channel = co_await std::move(open);          // InbandChannel: the device's data
//
// What a service sees across a reconnect: on_connection(false, why) when the connection drops,
// nothing while it is down (requests fail with Errc::unavailable), then on_connection(true) once
// the new connection is up and every finder has been registered again. For each finder the
// manager's initial matches are compared with the cache: a device that matches again is silent,
// or `changed` when its record or matched units differ; a device that did not match before is
// `matched`; a cached device the manager did not report is `gone` with reason "resync" (after a
// manager restart, typically because its DTU has not reconnected yet: it comes back as
// `matched`). Then `synced` is called again. Leases: while the lease's expiry has not passed
// the library asks the manager to resume it (same lease id, token checked by the DTU, and the
// lease's state token, so a manager that never saw the lease restores its terms), retrying
// while the manager answers unavailable (its DTU has not reconnected yet, or is moving between
// managers); the same happens after lease_ended dtu_lost, when the DTU re-homes to another
// manager of the group (the client's manager forwards to the new owner); a lease that cannot
// be resumed ends with on_lease_ended ("expired" when its time ran out, the DTU's reason when it
// had ended there, "refused" when the DTU rejected the token).
//
// Thread: not thread-safe. Every member function and every callback runs on the io_context
// thread of the executor given to connect; the coroutines must be awaited there. The Clock must
// tell steady time (SystemClock): timers sleep on it. Callbacks may call member functions (spawn
// coroutines from them; do not block).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <nlohmann/json_fwd.hpp>

#include "dtu/client/inband_channel.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/finder.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"
#include "dtu/services/manager_client.hpp"

namespace dtu::client {

struct ClientOptions {
  // The manager's socket: $DTUBROKER_SOCKET, else /run/dtubroker/devmgr.sock.
  std::string socket = services::default_socket_path();
  // The program's name as the manager shows it (holders read "<name>[<pid>]@<manager>").
  std::string name = "dtu-client";
  // Deadline of connect, hello and each request (allocate adds its wait). The manager itself
  // waits up to 10 s for a DTU's answer, hence a little more.
  common::Duration request_timeout = std::chrono::seconds(15);
  // Reconnect delays: from reconnect_min doubling to reconnect_max, each × a jitter in [0.5, 1.5).
  common::Duration reconnect_min = std::chrono::milliseconds(100);
  common::Duration reconnect_max = std::chrono::seconds(2);
  // Whether to reconnect at all when the connection drops (false: requests fail from then on).
  bool reconnect = true;
};

using FinderId = std::uint64_t;

// The callbacks of one finder; any may be empty. `units` are the unit numbers of `device` the
// finder matches (the record carries every unit with its state, holder and lease).
struct FinderEvents {
  std::function<void(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units)> matched;
  std::function<void(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units)> changed;
  // reason: detached | dtu_lost | session_moved | no_longer_matches (from the manager), or
  // resync (not reported again after a reconnect, see above).
  std::function<void(const std::string& dtu, const std::string& device, const std::string& reason)> gone;
  // Every current match has been delivered (after registering, and again after each reconnect).
  std::function<void()> synced;
};

// A finder's current match, as the cache keeps it.
struct Match {
  common::DeviceRecord device;
  std::vector<std::uint32_t> units;
};

struct AllocateOptions {
  // Lease length; zero asks for the policy's (60 s unless the policy says otherwise). The
  // policy may shorten it: Lease::length is what was granted.
  common::Duration length{0};
  // When the unit is held, wait up to this long for it (the manager queues the request, first
  // come first served). Absent: a held unit is refused at once.
  std::optional<common::Duration> wait;
  // Administrators only: the lease outlives this client's connection.
  bool keep = false;
};

// A lease this client holds. The token and the in-band endpoint are what open_channel (or
// InbandChannel::connect) needs.
struct Lease {
  std::string id;
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::string holder;          // as the DTU records it, "<name>[<pid>]@<manager>"
  common::Duration length{0};  // as granted; renewals ask for the same
  common::MonoTime expires{};  // as last confirmed by the DTU (our clock)
  std::string token;           // 64 hex digits: the in-band TLS PSK
  std::string inband;          // "host:port" of the DTU's in-band listener
  // The manager's signed context of the lease (holder, terms; docs/protocol.md "State
  // tokens"), as the last grant or resumption gave it; sent back with resume_lease. Empty from
  // a manager without a group key.
  std::string state_token;
  bool keep = false;
};

class Client {
 public:
  // Connects to the manager (one attempt, within options.request_timeout). Errc::unavailable or
  // Errc::timeout when no manager answers there; afterwards the client reconnects by itself.
  static asio::awaitable<common::Result<std::unique_ptr<Client>>> connect(asio::any_io_executor ex,
                                                                          const common::Clock& clock,
                                                                          ClientOptions options);
  // Closes the connection; leases still held are released by the manager (except keep ones).
  // Pending requests fail (Errc::link_lost or Errc::closed); no callback runs afterwards.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Registers a finder and returns its id once the manager accepted it (the initial matches
  // and `synced` follow through `events`, possibly before this coroutine resumes).
  // Errc::invalid_argument naming the field for a bad finder; Errc::unavailable while
  // reconnecting.
  asio::awaitable<common::Result<FinderId>> add_finder(common::Finder finder, FinderEvents events);
  // The same from finder JSON (common/finder.hpp documents it); parse errors name the field.
  asio::awaitable<common::Result<FinderId>> add_finder(const nlohmann::json& finder, FinderEvents events);
  // Forgets a finder: no callback of it runs after this call. Errc::not_found when unknown.
  asio::awaitable<common::Result<void>> remove_finder(FinderId id);
  // A finder's current matches by (dtu, device); empty for an unknown id.
  std::map<std::pair<std::string, std::string>, Match> matches(FinderId id) const;

  // Leases unit `unit` of `device` on `dtu`; the library then renews it at a third of its length
  // until release() or its end. Errors (docs/service-api.md): Errc::refused (held: the detail
  // names the holder), Errc::denied (policy or limit: the detail names the rule),
  // Errc::unavailable, Errc::not_found, Errc::timeout.
  asio::awaitable<common::Result<Lease>> allocate(std::string dtu, std::string device, std::uint32_t unit,
                                                  AllocateOptions options);
  // Extends a lease of ours now to `length` (zero: its granted length). The automatic renewal
  // makes this unnecessary; it is for a service that wants a longer lease.
  asio::awaitable<common::Result<Lease>> renew(const std::string& lease_id, common::Duration length);
  // Ends a lease of ours. The library stops renewing it at once; a release that meets a failover
  // (manager reconnecting, the DTU's owner not reachable yet) is retried with the reconnect
  // backoff until an owner answers or the lease's expiry comes first (then the last error: the
  // lease expires at the DTU). on_lease_ended is not called for it.
  // Errc::not_found when it is not ours (or no longer held).
  asio::awaitable<common::Result<void>> release(const std::string& lease_id);
  // The leases held now, by id.
  std::map<std::string, Lease> leases() const;

  // Opens the in-band channel of a lease of ours (InbandChannel::connect with its token and
  // endpoint), within options.request_timeout.
  asio::awaitable<common::Result<std::shared_ptr<InbandChannel>>> open_channel(const Lease& lease);

  // Called when a lease of ours ends other than by our release(): reason from the DTU or the
  // manager (released by an administrator, expired, device_gone, agent_stopping), or from the
  // library: "expired" when it could neither renew nor resume it in time, "refused" / "denied"
  // when the manager or the DTU refused a renewal or resumption, "dtu_lost" when it was lost
  // with its DTU and never came back, the DTU's reason (or "ended") when a resumption found it
  // ended there. The lease is no longer in leases().
  void on_lease_ended(std::function<void(const Lease& lease, const std::string& reason)> handler);
  // Called when the connection drops (connected = false, with why) and when it is back and every
  // finder is registered again (connected = true).
  void on_connection(std::function<void(bool connected, const common::Error& why)> handler);

  // Whether a connection to the manager is up now.
  bool connected() const;
  // The manager's id (from its welcome); empty before the first connection.
  const std::string& manager_id() const;
  // The connection itself, for the requests this class does not wrap (listings, sessions:
  // call<Reply>(msg, timeout)); nullptr while reconnecting. Do not set its handlers.
  std::shared_ptr<services::ManagerClient> manager() const;

  // Stops everything: closes the connection, stops renewing and reconnecting. Idempotent.
  void close();

 private:
  struct Impl;
  explicit Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace dtu::client
