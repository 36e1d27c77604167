#pragma once
// ClientSession: the manager's side of one local client (a device service or devmgrctl) on
// the Unix socket. The kernel's SO_PEERCRED credentials identify the caller; nothing the
// client says about itself is trusted. State machine:
//
//   awaiting_hello --client_hello--> ready
//
// Legal messages (all requests): awaiting_hello: client_hello. ready: list_devices, allocate,
// renew, release (handed to the LeaseBroker; the manager may send lease_ended notifies). Anything
// else, a filament opened by the client, or no hello within the timeout closes this
// connection with a logged reason. Runs on the manager's io_context thread.

#include <functional>
#include <memory>
#include <string>

#include "dtu/common/async.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/net.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/lease_broker.hpp"

namespace dtu::devmgr {

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  enum class State { awaiting_hello, ready, closed };

  ClientSession(std::shared_ptr<common::Link> link, common::PeerCredentials credentials, std::string manager_id,
                const DeviceList& devices, LeaseBroker& leases, common::Logger log,
                std::chrono::milliseconds hello_timeout);

  // `on_closed` runs once when the connection ends.
  void start(std::function<void(const std::shared_ptr<ClientSession>&)> on_closed);
  void close(const common::Error& reason) { link_->close(reason); }

  const common::PeerCredentials& credentials() const { return credentials_; }
  // How DTUs and logs name this client as a lease holder: "<program>[<pid>]@<manager>".
  std::string holder_name() const;
  // Sends an event (lease_ended) to the client.
  void notify(common::Frame frame) { link_->notify(common::FilamentMux::kControlFilament, std::move(frame)); }
  static bool is_legal(State state, common::MessageType type);

 private:
  void on_frame(common::Frame frame);
  void protocol_error(const std::string& reason);
  // Answers `to` with the message, or with the error.
  template <typename M>
  void answer(const common::Frame& to, const common::Result<M>& result);

  std::shared_ptr<common::Link> link_;
  common::PeerCredentials credentials_;
  std::string manager_id_;
  const DeviceList& devices_;
  LeaseBroker& leases_;
  common::Logger log_;
  std::chrono::milliseconds hello_timeout_;
  std::unique_ptr<common::DeadlineGuard> hello_deadline_;
  State state_ = State::awaiting_hello;
  std::string client_name_;
};

}  // namespace dtu::devmgr
