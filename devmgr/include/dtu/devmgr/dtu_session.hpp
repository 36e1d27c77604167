#pragma once
// DtuSession: the manager's side of one DTU's persistent connection, after TLS has proven
// the DTU's key. State machine:
//
//   awaiting_hello --dtu_hello (id == TLS identity)--> active --link closed--> closed
//   awaiting_hello --dtu_hello{probe}, or any hello while draining--> leaving --> closed
//
// A probe (the DTU only wants the welcome's load figures) is answered with the welcome and the
// link is shut down after it; the DTU is never taken (no records, no claim). While the manager
// drains, a normal hello is refused (Errc::refused "draining", logged dtu_refused_draining) the
// same way. The DTU's ownership claim is the stamp of its first device_snapshot on this link
// (claim()); the manager learns it through Hooks::on_claim before the snapshot's records apply.
//
// Legal messages: awaiting_hello: dtu_hello (a request). active: device_snapshot,
// device_attached, device_detached, device_changed, lease_ended (posts), and the DTU's replies
// to our lease requests; leaving: none (the link drops what still arrives). We send the welcome,
// lease requests and dtu_move (a notify). Anything else — another discipline, a filament
// opened by the DTU, a hello naming another DTU, a record for another DTU, no hello within
// the handshake timeout — is a protocol error: logged with the peer and the reason, and this
// connection only is closed.
// Runs on the manager's io_context thread.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/devmgr/device_list.hpp"

namespace dtu::devmgr {

class DtuSession : public std::enable_shared_from_this<DtuSession> {
 public:
  enum class State { awaiting_hello, active, leaving, closed };

  // What the welcome tells the DTU, from the manager at the moment of the hello.
  struct Admission {
    std::int64_t universal_us = 0;  // the manager's universal time (HLC), µs
    std::uint32_t dtus = 0;         // DTUs the manager serves now
    bool draining = false;          // refuse a normal hello (a probe is still answered)
  };

  struct Hooks {
    // A hello arrived (probe or not): the manager learns its boot epoch and says what to answer.
    std::function<Admission(const common::DtuHelloMsg&)> admit;
    // A DTU finished its hello (not a probe, not refused): it is active here.
    std::function<void(const std::shared_ptr<DtuSession>&)> on_active;
    // The DTU's first device_snapshot on this link: claim() is set; its records are not applied yet.
    std::function<void(const std::shared_ptr<DtuSession>&)> on_claim;
    // Every device_snapshot, after its records applied: the leases the DTU holds.
    std::function<void(const std::shared_ptr<DtuSession>&, const std::vector<common::LeaseReport>&)> on_leases;
    // The link closed (any reason), after the session's state was updated.
    std::function<void(const std::shared_ptr<DtuSession>&, const common::Error&)> on_closed;
    // The DTU reports that a lease ended.
    std::function<void(const common::LeaseEndedMsg&)> on_lease_ended;
  };

  DtuSession(std::shared_ptr<common::Link> link, std::string identity, std::string manager_id,
             DeviceList& devices, common::Logger log,
             std::chrono::milliseconds heartbeat_interval, std::uint32_t heartbeat_misses,
             std::chrono::milliseconds hello_timeout);

  void start(Hooks hooks);
  void close(const common::Error& reason);
  // Tells an active DTU to leave this manager for another of its list (dtu_move, a notify);
  // logged dtu_move_sent. Ignored in any other state.
  void move(const std::string& reason);
  // Sends a request to the DTU (lease_request, lease_renew, lease_release); `done` gets the
  // reply, or Errc::timeout / link_lost.
  void request(common::Frame frame, common::Duration timeout, std::function<void(common::Result<common::Frame>)> done);

  State state() const { return state_; }
  const std::string& dtu() const { return identity_; }
  const std::string& peer() const { return link_->peer(); }
  std::int64_t boot_epoch() const { return boot_epoch_; }
  // The agent's version as its hello said; empty before the hello.
  const std::string& agent_version() const { return agent_version_; }
  // Whether this manager told the DTU to leave (move()); it stays listed until its link closes.
  bool moving() const { return moving_; }
  // When the DTU became active here, as the manager recorded it (set_active_since); kNever before.
  common::MonoTime active_since() const { return active_since_; }
  void set_active_since(common::MonoTime when) { active_since_ = when; }
  // The DTU's ownership claim for this link: the stamp of its first device_snapshot here. It
  // orders this connection against the DTU's connections to other managers and is the fence
  // every lease operation sent on this link carries. Empty until the snapshot arrives.
  std::optional<common::Stamp> claim() const { return claim_; }

  // Which message types are legal in which state.
  static bool is_legal(State state, common::MessageType type);

 private:
  void on_frame(common::Frame frame);
  void on_hello(const common::Frame& frame);
  void on_device_message(const common::Frame& frame);
  void protocol_error(const std::string& reason);
  // Answers the hello with `answer` as the last frame and closes the link once it is written.
  void answer_and_leave(const common::Frame& hello, common::Frame answer, const common::Error& reason);

  std::shared_ptr<common::Link> link_;
  std::string identity_;  // the DTU id the TLS PSK proved
  std::string manager_id_;
  DeviceList& devices_;
  common::Logger log_;
  std::chrono::milliseconds heartbeat_interval_;
  std::uint32_t heartbeat_misses_;
  std::chrono::milliseconds hello_timeout_;
  std::unique_ptr<common::DeadlineGuard> hello_deadline_;
  State state_ = State::awaiting_hello;
  std::int64_t boot_epoch_ = 0;
  std::string agent_version_;
  bool moving_ = false;
  common::MonoTime active_since_ = common::kNever;
  std::optional<common::Stamp> claim_;
  Hooks hooks_;
};

}  // namespace dtu::devmgr
