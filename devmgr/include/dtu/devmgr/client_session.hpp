#pragma once
// ClientSession: the manager's side of one local client (a device service or devmgrctl) on
// the Unix socket. The kernel's SO_PEERCRED credentials identify the caller; nothing the
// client says about itself is trusted. State machine:
//
//   awaiting_hello --client_hello--> ready
//
// Legal messages (all requests): awaiting_hello: client_hello. ready: list_devices (with group:
// every manager's), allocate, renew, release, resume_lease, register_finder, unregister_finder,
// list_finders (all through the GroupBroker, which serves local DTUs from the LeaseBroker and
// FinderRegistry and forwards the rest), list_leases, list_sessions, list_dtus, get_policy, and the
// administrators' session_attach, session_detach, reload_policy, reload_group, drain, undrain,
// group_exec (others get Errc::denied). The manager sends lease_ended, finder_* and
// group_exec_event / group_exec_done notifies. Anything else,
// a filament opened by the client, or no hello within the timeout closes this connection with a
// logged reason. When the connection closes its finders are dropped and its leases released
// (after the current handler, never inside it). A ClientSession is the LeaseHolder of the leases
// it obtains.
// Runs on the manager's io_context thread.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "dtu/common/async.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/finder_registry.hpp"
#include "dtu/devmgr/group_broker.hpp"
#include "dtu/devmgr/group_commands.hpp"
#include "dtu/devmgr/lease_broker.hpp"

namespace dtu::devmgr {

// What a client session may use of its manager. The functions are the manager's own operations
// (sessions and policy change state beyond one client).
struct ClientServices {
  const DeviceList* devices = nullptr;
  const LeaseBroker* leases = nullptr;  // list_leases
  GroupBroker* group = nullptr;         // finders, allocation, group listings
  std::function<std::vector<common::SessionInfo>()> list_sessions;
  std::function<common::Result<void>(const common::SessionAttachMsg&)> attach_session;
  std::function<common::Result<void>(const std::string& session)> detach_session;
  std::function<common::PolicyInfoMsg()> policy_info;
  std::function<common::Result<common::PolicyInfoMsg>()> reload_policy;
  std::function<void(std::function<void(common::GroupInfoMsg)>)> group_status;
  std::function<common::Result<common::GroupInfoMsg>()> reload_group;
  // Drain: `done` runs once, when the manager holds no DTU (drain_status) or after `wait_ms`
  // (Errc::timeout naming how many it still holds); DeviceManager::drain.
  using DrainDone = std::function<void(common::Result<common::DrainStatusMsg>)>;
  std::function<void(std::optional<std::uint32_t> wait_ms, DrainDone done)> drain;
  std::function<common::DrainStatusMsg()> undrain;
  // group_exec (administrators): GroupCommands::start; the events go to the sink.
  std::function<common::Result<common::GroupExecQueuedMsg>(const common::GroupExecMsg&, GroupCommands::Sink)>
      group_exec;
  // list_dtus: `done` runs once with the DTUs (with `group`: every member's); DeviceManager::list_dtus.
  std::function<void(bool group, std::function<void(common::DtuListMsg)> done)> list_dtus;
  // The most finders this connection may hold (ManagerOptions::max_finders_per_service); 0: no cap.
  std::size_t max_finders = 0;
};

class ClientSession : public LeaseHolder, public std::enable_shared_from_this<ClientSession> {
 public:
  enum class State { awaiting_hello, ready, closed };

  ClientSession(std::shared_ptr<common::Link> link, common::PeerCredentials credentials, std::string manager_id,
                ClientServices services, common::Logger log, std::chrono::milliseconds hello_timeout);

  // `on_closed` runs once when the connection ends.
  void start(std::function<void(const std::shared_ptr<ClientSession>&)> on_closed);
  void close(const common::Error& reason) { link_->close(reason); }

  State state() const { return state_; }
  const common::PeerCredentials& credentials() const { return credentials_; }
  unsigned uid() const override { return credentials_.uid; }
  unsigned gid() const override { return credentials_.gid; }
  unsigned pid() const override { return static_cast<unsigned>(credentials_.pid); }
  // How DTUs and logs name this client as a lease holder: "<program>[<pid>]@<manager>".
  std::string holder_name() const override;
  // The program name the client gave in its hello (self-declared: for logs and the policy's
  // `service` field, never for access decisions).
  std::string client_name() const override { return client_name_; }
  // Sends an event (lease_ended) to the client.
  void notify(common::Frame frame) override {
    link_->notify(common::FilamentMux::kControlFilament, std::move(frame));
  }
  static bool is_legal(State state, common::MessageType type);

 private:
  void on_frame(common::Frame frame);
  void protocol_error(const std::string& reason);
  // Answers `to` with the message, or with the error.
  template <typename M>
  void answer(const common::Frame& to, const common::Result<M>& result);
  void answer_void(const common::Frame& to, const common::Result<void>& result);
  // False (and answers denied) when the caller is not an administrator.
  bool require_admin(const common::Frame& request, const char* what);
  void on_request(const common::Frame& frame);
  // Decodes a request of type M, or closes the connection naming what was wrong.
  template <typename M>
  std::optional<M> decode(const common::Frame& frame);

  std::shared_ptr<common::Link> link_;
  common::PeerCredentials credentials_;
  std::string manager_id_;
  ClientServices services_;
  common::Logger log_;
  std::chrono::milliseconds hello_timeout_;
  std::unique_ptr<common::DeadlineGuard> hello_deadline_;
  State state_ = State::awaiting_hello;
  std::string client_name_;
  std::size_t finders_ = 0;  // registered on this connection (max_finders)
};

}  // namespace dtu::devmgr
