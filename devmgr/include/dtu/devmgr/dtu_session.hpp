#pragma once
// DtuSession: the manager's side of one DTU's persistent connection, after TLS has proven
// the DTU's key. State machine:
//
//   awaiting_hello --dtu_hello (id == TLS identity)--> active --link closed--> closed
//
// Legal messages: awaiting_hello: dtu_hello (a request). active: device_snapshot,
// device_attached, device_detached, device_changed, lease_ended (posts), and the DTU's replies
// to our lease requests. Anything else — another discipline, a filament
// opened by the DTU, a hello naming another DTU, a record for another DTU, no hello within
// the handshake timeout — is a protocol error: logged with the peer and the reason, and this
// connection only is closed.
// Runs on the manager's io_context thread.

#include <functional>
#include <memory>
#include <string>

#include "dtu/common/async.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/devmgr/device_list.hpp"

namespace dtu::devmgr {

class DtuSession : public std::enable_shared_from_this<DtuSession> {
 public:
  enum class State { awaiting_hello, active, closed };

  struct Hooks {
    // A DTU finished its hello; return false to refuse it.
    std::function<void(const std::shared_ptr<DtuSession>&)> on_active;
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
  // Sends a request to the DTU (lease_request, lease_renew, lease_release); `done` gets the
  // reply, or Errc::timeout / link_lost.
  void request(common::Frame frame, common::Duration timeout, std::function<void(common::Result<common::Frame>)> done);

  State state() const { return state_; }
  const std::string& dtu() const { return identity_; }
  const std::string& peer() const { return link_->peer(); }
  std::int64_t boot_epoch() const { return boot_epoch_; }

  // Which message types are legal in which state.
  static bool is_legal(State state, common::MessageType type);

 private:
  void on_frame(common::Frame frame);
  void on_hello(const common::Frame& frame);
  void on_device_message(const common::Frame& frame);
  void protocol_error(const std::string& reason);

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
  Hooks hooks_;
};

}  // namespace dtu::devmgr
