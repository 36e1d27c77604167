#pragma once
// ManagerClient: a local client's connection to its devmgr over the Unix socket — the base
// of libdtu-client and of devmgrctl. The manager learns who we are from the kernel
// (SO_PEERCRED); the hello only names the program for logs.
// Coroutines on the caller's io_context thread.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/link.hpp"
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

  const std::string& manager_id() const { return manager_id_; }
  void close();

 private:
  ManagerClient(std::shared_ptr<common::Link> link, std::string manager_id)
      : link_(std::move(link)), manager_id_(std::move(manager_id)) {}

  std::shared_ptr<common::Link> link_;
  std::string manager_id_;
};

}  // namespace dtu::services
