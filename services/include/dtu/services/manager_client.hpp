#pragma once
// ManagerClient: a local client's connection to its devmgr over the Unix socket — the base
// of libdtu-client and of devmgrctl. The manager learns who we are from the kernel
// (SO_PEERCRED); the hello only names the program for logs.
// Coroutines on the caller's io_context thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/service_messages.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/result.hpp"

namespace dtu::services {

// Where a client finds its manager: $DTUBROKER_SOCKET, else /run/dtubroker/devmgr.sock.
std::string default_socket_path();

class ManagerClient {
 public:
  // Connects and says hello within `timeout`. Errc::unavailable when nothing listens there.
  static asio::awaitable<common::Result<std::unique_ptr<ManagerClient>>> connect(
      std::string socket_path, std::string client_name, const common::Clock& clock, common::Duration timeout);
  ~ManagerClient();

  asio::awaitable<common::Result<std::vector<common::DeviceRecord>>> list_devices(
      std::optional<std::string> dtu, common::Duration timeout);

  // Leases a unit (DESIGN.md §5). The grant carries the lease id, the in-band token (hex) and
  // the DTU's in-band endpoint. Errors come from the manager or the DTU: Errc::refused (held:
  // the detail names the holder), Errc::unavailable, Errc::not_found, Errc::timeout.
  asio::awaitable<common::Result<common::LeaseGrantedMsg>> allocate(std::string dtu, std::string device,
                                                                     std::uint32_t unit, common::Duration length,
                                                                     common::Duration timeout);
  asio::awaitable<common::Result<common::LeaseGrantedMsg>> renew(std::string dtu, std::string lease,
                                                                  common::Duration length, common::Duration timeout);
  asio::awaitable<common::Result<void>> release(std::string dtu, std::string lease, common::Duration timeout);

  // Called, on the io_context thread, when a lease of ours ends (expired, released, device_gone, …).
  void on_lease_ended(std::function<void(const common::LeaseEndedMsg&)> handler) {
    state_->lease_ended = std::move(handler);
  }

  // Sends any client request and reads the reply as R (AckMsg for requests answered with ack).
  // The manager's error reply comes back as its Errc and reason. Not a coroutine itself: the
  // request is encoded at the call, so a temporary argument may die before the co_await.
  template <typename R, typename M>
  asio::awaitable<common::Result<R>> call(const M& request, common::Duration timeout) {
    return decode_reply<R>(link_->request(common::FilamentMux::kControlFilament, common::to_frame(request), timeout));
  }

  // Called, on the io_context thread, for every other event the manager sends (finder_matched,
  // finder_changed, finder_gone, finder_synced). Without a handler such an event closes the
  // connection as a protocol error.
  void on_event(std::function<void(const common::Frame&)> handler) { state_->event = std::move(handler); }

  const std::string& manager_id() const { return manager_id_; }
  // Whether the connection is still up.
  bool is_open() const;
  // Called once when the connection ends (manager gone, protocol error, close()).
  void on_closed(std::function<void(const common::Error&)> handler) { state_->closed = std::move(handler); }
  void close();

 private:
  struct State {
    std::function<void(const common::LeaseEndedMsg&)> lease_ended;
    std::function<void(const common::Frame&)> event;
    std::function<void(const common::Error&)> closed;
    bool open = true;
  };

  template <typename R>
  static asio::awaitable<common::Result<R>> decode_reply(asio::awaitable<common::Result<common::Frame>> pending) {
    auto answer = co_await std::move(pending);
    if (!answer.ok()) co_return answer.error();
    co_return common::from_frame<R>(*answer);
  }

  ManagerClient(std::shared_ptr<common::Link> link, std::string manager_id, std::shared_ptr<State> state)
      : link_(std::move(link)), manager_id_(std::move(manager_id)), state_(std::move(state)) {}

  std::shared_ptr<common::Link> link_;
  std::string manager_id_;
  std::shared_ptr<State> state_;
};

}  // namespace dtu::services
