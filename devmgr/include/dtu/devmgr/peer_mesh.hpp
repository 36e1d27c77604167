#pragma once
// PeerMesh: this manager's links to the other managers of its group (DESIGN.md §4,
// docs/group.md). It listens on the mesh address, dials, authenticates (common/peer_auth.hpp)
// and keeps exactly one PeerLink per pair of managers:
//
//  - The lower mesh address of a pair (address_less) is its initiator: it dials with purpose
//    `link` and alone reconnects, with a jittered backoff from kMinBackoff to kMaxBackoff,
//    reset when a link comes up.
//  - The higher one never keeps a link it dialed. Without a link to a lower peer for one
//    heartbeat interval (after start, or after losing the link) it dials that peer with purpose
//    `please_initiate`, at most once per backoff step; the lower one then dials at once
//    (cancelling its backoff), after closing a link it still has (the higher one evidently lost
//    it). A please_initiate that arrives while a dial to that peer is in flight, or less than
//    one heartbeat interval after the current link came up (it crossed that link's handshake),
//    is ignored: one link results, and a higher peer that really has no link asks again.
//  - A `link` connection from a lower peer replaces the link we had with it ("replaced"); one
//    from a higher peer (its group list orders us differently) is refused.
//  - Every peer socket has TCP_NODELAY and TCP_USER_TIMEOUT = heartbeat interval x misses, and
//    every link heartbeats both ways, so a dead peer is noticed within that time.
//  - A dialer offers its current group key; when the TLS handshake fails and a next key is
//    configured, it tries once more with the next key (rotation). The listener accepts both.
//
// After the handshake every frame on filament 0 goes to Hooks::frame; a filament opened by the
// peer is a protocol error (logged, that link closed). Hooks::up runs once per link, before its
// first frame; Hooks::down once per link that was up (its close reason), before the up of a
// link that replaces it.
//
// Thread: the manager's io_context thread; every method must be called on it, and every hook
// runs on it. The mesh's coroutines keep its state alive until they end, so destroying a
// PeerMesh (which stops it) while they are suspended is safe.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/peer_auth.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/devmgr/connection_limiter.hpp"
#include "dtu/devmgr/group_config.hpp"
#include "dtu/devmgr/peer_link.hpp"

namespace dtu::devmgr {

class PeerMesh {
 public:
  // Reconnect backoff of the initiator, and the pace of please_initiate: 100 ms doubling to 2 s
  // (jittered x[0.5, 1.5)), so a restarted peer is found again within about 2 s.
  static constexpr std::chrono::milliseconds kMinBackoff{100};
  static constexpr std::chrono::milliseconds kMaxBackoff{2000};

  struct Options {
    std::string id;           // this manager (common::is_valid_id)
    common::Endpoint listen;  // where the mesh listener binds (port 0: any free port, for tests)
    // The group list. An entry with our own id is not a peer: its address is our mesh address
    // for the initiator order and our hello (the peers order us by it). Without such an entry
    // our mesh address is `listen` with the bound port, which must then be the address the
    // peers have for us (not 0.0.0.0).
    std::vector<GroupMember> members;
    common::GroupKeys keys;
    std::uint64_t incarnation = 0;  // ours, sent in every hello
    std::chrono::milliseconds heartbeat_interval{1000};
    std::uint32_t heartbeat_misses = 3;
    // Bounds each of: TCP connect, TLS handshake, each step of the peer handshake.
    std::chrono::milliseconds handshake_timeout{5000};
    std::size_t max_frame_bytes = common::kDefaultMaxPayload;
    // Accepted connections until authenticated, per source address and in all (0: no cap);
    // ManagerOptions::max_handshakes_per_source, max_handshakes.
    std::size_t max_handshakes_per_source = 64;
    std::size_t max_handshakes = 1024;
  };
  struct Hooks {
    std::function<void(const std::shared_ptr<PeerLink>&)> up;
    std::function<void(const std::shared_ptr<PeerLink>&, const common::Error&)> down;
    // Every frame on filament 0 after the handshake.
    std::function<void(const std::shared_ptr<PeerLink>&, common::Frame)> frame;
  };

  // `clock` must tell steady time (links sleep on it) and outlive the mesh.
  PeerMesh(const asio::any_io_executor& ex, const common::Clock& clock, Options options, Hooks hooks,
           common::Logger log);
  ~PeerMesh();
  PeerMesh(const PeerMesh&) = delete;
  PeerMesh& operator=(const PeerMesh&) = delete;

  // Binds the mesh listener (port 0 picks a free port) and starts dialing.
  // Errc::config_error for a bad id or listen address, Errc::io_error when binding fails.
  // REQUIRES: called once
  common::Result<void> start();
  // `hook` runs each time a connection fails the handshake (TLS or the peer handshake), at
  // either end; it is already logged (metrics count it). REQUIRES: called before start()
  void on_handshake_failed(std::function<void()> hook);
  // Called for each connection refused by max_handshakes_per_source or max_handshakes.
  void on_connection_refused(std::function<void()> hook);
  // Closes the listener, every link and every connection in progress. Idempotent. No hook runs
  // from the call on (not even down for the links it closes).
  void stop();
  // Replaces the member list and the keys. New peers are dialed (or awaited); the links of
  // removed peers (or of peers whose address changed) close with a down hook; live links of
  // the others stay (new keys apply to the next connection).
  void reload(std::vector<GroupMember> members, common::GroupKeys keys);

  // The live link to `id`, or nullptr.
  std::shared_ptr<PeerLink> peer(const std::string& id) const;
  // Every live link, by peer id.
  std::vector<std::shared_ptr<PeerLink>> peers() const;
  // One entry per peer (never ourselves), by id: state "up" | "connecting" | "down", the
  // incarnation of the current or last link, heartbeat rtt and clock offset, when it was last
  // heard from, why its last connection failed or closed. finders_*, dtus and devices are left
  // empty for the caller to fill.
  std::vector<common::GroupMemberInfo> status() const;
  // The bound mesh address (the real port when `listen` asked for port 0).
  common::Endpoint endpoint() const;
  // Links that came up since start (each counted once at this end).
  std::uint64_t links_established() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dtu::devmgr
