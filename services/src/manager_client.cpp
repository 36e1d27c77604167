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
  // Events from the manager arrive on the control filament: hand them to the handlers.
  auto state = std::make_shared<State>();
  std::weak_ptr<common::Link> weak = link;
  link->mux().set_receiver(common::FilamentMux::kControlFilament, [state, weak](common::Frame frame) {
    if (frame.type == common::MessageType::lease_ended) {
      auto ended = common::from_frame<common::LeaseEndedMsg>(frame);
      if (ended.ok() && state->lease_ended) state->lease_ended(*ended);
      if (ended.ok()) return;
    } else if (state->event) {
      state->event(frame);
      return;
    }
    if (auto self = weak.lock()) {
      self->close(Error(Errc::illegal_state, "unexpected " + std::string(common::message_type_name(frame.type)) +
                                                 " from the manager"));
    }
  });
  link->start([state](const Error& reason) {
    state->open = false;
    if (auto closed = std::move(state->closed)) closed(reason);
  });
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
  co_return std::unique_ptr<ManagerClient>(new ManagerClient(std::move(link), welcome->manager, std::move(state)));
}

ManagerClient::~ManagerClient() { close(); }

bool ManagerClient::is_open() const { return state_->open; }

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

namespace {

std::uint32_t millis(common::Duration d) {
  return static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

}  // namespace

asio::awaitable<common::Result<common::LeaseGrantedMsg>> ManagerClient::allocate(std::string dtu, std::string device,
                                                                                  std::uint32_t unit,
                                                                                  common::Duration length,
                                                                                  common::Duration timeout) {
  common::AllocateMsg msg{std::move(dtu), std::move(device), unit, millis(length), std::nullopt, false};
  auto request = link_->request(common::FilamentMux::kControlFilament, common::to_frame(msg), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) co_return answer.error();
  co_return common::from_frame<common::LeaseGrantedMsg>(*answer);
}

asio::awaitable<common::Result<common::LeaseGrantedMsg>> ManagerClient::renew(std::string dtu, std::string lease,
                                                                               common::Duration length,
                                                                               common::Duration timeout) {
  common::RenewMsg msg{std::move(dtu), std::move(lease), millis(length)};
  auto request = link_->request(common::FilamentMux::kControlFilament, common::to_frame(msg), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) co_return answer.error();
  co_return common::from_frame<common::LeaseGrantedMsg>(*answer);
}

asio::awaitable<common::Result<void>> ManagerClient::release(std::string dtu, std::string lease,
                                                             common::Duration timeout) {
  common::ReleaseMsg msg{std::move(dtu), std::move(lease)};
  auto request = link_->request(common::FilamentMux::kControlFilament, common::to_frame(msg), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) co_return answer.error();
  co_return common::Result<void>{};
}

}  // namespace dtu::services
