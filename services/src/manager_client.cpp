#include "dtu/services/manager_client.hpp"

#include <cstdlib>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/messages.hpp"

namespace dtu::services {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

std::string default_socket_path() {
  if (const char* env = std::getenv("DTUBROKER_SOCKET"); env != nullptr && *env != '\0') return env;
  return "/run/dtubroker/devmgr.sock";
}

asio::awaitable<common::Result<std::unique_ptr<ManagerClient>>> ManagerClient::connect(
    std::string socket_path, std::string client_name, const common::Clock& clock, common::Duration timeout) {
  auto ex = co_await asio::this_coro::executor;
  asio::local::stream_protocol::socket socket(ex);
  {
    common::DeadlineGuard deadline(ex, timeout, [&] {
      std::error_code ignored;
      socket.close(ignored);
    });
    const asio::local::stream_protocol::endpoint endpoint(socket_path);
    auto [ec] = co_await socket.async_connect(endpoint, as_tuple(asio::use_awaitable));
    if (deadline.expired()) co_return Error(Errc::timeout, "connecting to " + socket_path + " timed out");
    if (ec) {
      co_return Error(Errc::unavailable, "cannot connect to the manager at " + socket_path + ": " + ec.message());
    }
  }
  common::Link::Options options;
  options.heartbeats = false;  // a local socket reports a dead peer itself (EOF)
  auto link = common::Link::create(ex, std::make_unique<common::UnixTransport>(std::move(socket)),
                                   common::FilamentMux::Side::initiator, clock, common::Logger(client_name),
                                   socket_path, options);
  link->start([](const Error&) {});
  auto request = link->request(common::FilamentMux::kControlFilament,
                               common::to_frame(common::ClientHelloMsg{client_name}), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) {
    link->close(answer.error());
    co_return answer.error();
  }
  auto welcome = common::from_frame<common::ClientWelcomeMsg>(*answer);
  if (!welcome.ok()) {
    link->close(welcome.error());
    co_return welcome.error();
  }
  co_return std::unique_ptr<ManagerClient>(new ManagerClient(std::move(link), welcome->manager));
}

ManagerClient::~ManagerClient() { close(); }

void ManagerClient::close() { link_->close(Error(Errc::closed, "client done")); }

asio::awaitable<common::Result<std::vector<common::DeviceRecord>>> ManagerClient::list_devices(
    std::optional<std::string> dtu, common::Duration timeout) {
  auto request = link_->request(common::FilamentMux::kControlFilament,
                                common::to_frame(common::ListDevicesMsg{std::move(dtu)}), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) co_return answer.error();
  auto list = common::from_frame<common::DeviceListMsg>(*answer);
  if (!list.ok()) co_return list.error();
  co_return std::move(list->devices);
}

}  // namespace dtu::services
