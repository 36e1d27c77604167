#include "dtu/devmgr/client_session.hpp"

#include "dtu/common/messages.hpp"
#include "dtu/common/version.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;

ClientSession::ClientSession(std::shared_ptr<common::Link> link, common::PeerCredentials credentials,
                             std::string manager_id, const DeviceList& devices, LeaseBroker& leases,
                             common::Logger log, std::chrono::milliseconds hello_timeout)
    : link_(std::move(link)),
      credentials_(credentials),
      manager_id_(std::move(manager_id)),
      devices_(devices),
      leases_(leases),
      log_(std::move(log)),
      hello_timeout_(hello_timeout) {}

bool ClientSession::is_legal(State state, MessageType type) {
  switch (state) {
    case State::awaiting_hello: return type == MessageType::client_hello;
    case State::ready:
      return type == MessageType::list_devices || type == MessageType::allocate || type == MessageType::renew ||
             type == MessageType::release;
    case State::closed: return false;
  }
  return false;
}

void ClientSession::start(std::function<void(const std::shared_ptr<ClientSession>&)> on_closed) {
  std::weak_ptr<ClientSession> weak = shared_from_this();
  link_->mux().set_receiver(common::FilamentMux::kControlFilament, [weak](Frame frame) {
    if (auto self = weak.lock()) self->on_frame(std::move(frame));
  });
  link_->mux().set_open_handler([weak](std::uint32_t filament, const std::string& name) {
    if (auto self = weak.lock()) {
      self->protocol_error("filament_open " + std::to_string(filament) + " (" + name + ") is not legal yet");
    }
  });
  hello_deadline_ = std::make_unique<common::DeadlineGuard>(link_->executor(), hello_timeout_, [weak] {
    if (auto self = weak.lock(); self && self->state_ == State::awaiting_hello) {
      self->protocol_error("no client_hello within the handshake timeout");
    }
  });
  link_->start([weak, on_closed = std::move(on_closed)](const Error& reason) {
    auto self = weak.lock();
    if (!self) return;
    self->hello_deadline_.reset();
    self->state_ = State::closed;
    self->log_.debug(self->link_->peer(), "client_closed", {{"client", self->client_name_},
                                                           {"reason", reason.describe()}});
    self->leases_.client_closed(self.get());
    if (on_closed) on_closed(self);
  });
}

std::string ClientSession::holder_name() const {
  return (client_name_.empty() ? std::string("client") : client_name_) + "[" + std::to_string(credentials_.pid) + "]@" +
         manager_id_;
}

template <typename M>
void ClientSession::answer(const Frame& to, const common::Result<M>& result) {
  if (state_ == State::closed) return;
  if (result.ok()) {
    link_->reply(to, common::to_frame(*result));
    return;
  }
  const auto& error = result.error();
  const Errc code = error.code.category() == common::dtu_category() ? static_cast<Errc>(error.code.value()) : Errc::io_error;
  link_->reply_error(to, code, error.detail.empty() ? error.code.message() : error.detail);
}

void ClientSession::protocol_error(const std::string& reason) {
  log_.warn(link_->peer(), "protocol_error", {{"uid", credentials_.uid}, {"pid", credentials_.pid},
                                              {"reason", reason}});
  link_->close(Error(Errc::illegal_state, reason));
}

void ClientSession::on_frame(Frame frame) {
  if (state_ == State::closed) return;
  if (frame.is_binary() || !is_legal(state_, frame.type)) {
    return protocol_error("message " + std::string(common::message_type_name(frame.type)) +
                          " is not legal in state " + (state_ == State::awaiting_hello ? "awaiting_hello" : "ready"));
  }
  if (!frame.wants_reply()) {
    return protocol_error(std::string(common::message_type_name(frame.type)) + " must be a request");
  }
  switch (frame.type) {
    case MessageType::client_hello: {
      auto hello = common::from_frame<common::ClientHelloMsg>(frame);
      if (!hello.ok()) return protocol_error(hello.error().describe());
      client_name_ = hello->client;
      state_ = State::ready;
      hello_deadline_.reset();
      link_->reply(frame, common::to_frame(common::ClientWelcomeMsg{manager_id_, common::kVersion}));
      log_.debug(link_->peer(), "client_connected", {{"client", client_name_}, {"uid", credentials_.uid},
                                                     {"gid", credentials_.gid}, {"pid", credentials_.pid}});
      break;
    }
    case MessageType::list_devices: {
      auto request = common::from_frame<common::ListDevicesMsg>(frame);
      if (!request.ok()) return protocol_error(request.error().describe());
      link_->reply(frame, common::to_frame(common::DeviceListMsg{devices_.list(request->dtu)}));
      break;
    }
    case MessageType::allocate: {
      auto request = common::from_frame<common::AllocateMsg>(frame);
      if (!request.ok()) return protocol_error(request.error().describe());
      std::weak_ptr<ClientSession> weak = shared_from_this();
      leases_.allocate(shared_from_this(), std::move(request.value()),
                       [weak, frame](common::Result<common::LeaseGrantedMsg> r) {
                         if (auto self = weak.lock()) self->answer(frame, r);
                       });
      break;
    }
    case MessageType::renew: {
      auto request = common::from_frame<common::RenewMsg>(frame);
      if (!request.ok()) return protocol_error(request.error().describe());
      std::weak_ptr<ClientSession> weak = shared_from_this();
      leases_.renew(shared_from_this(), std::move(request.value()),
                    [weak, frame](common::Result<common::LeaseGrantedMsg> r) {
                      if (auto self = weak.lock()) self->answer(frame, r);
                    });
      break;
    }
    case MessageType::release: {
      auto request = common::from_frame<common::ReleaseMsg>(frame);
      if (!request.ok()) return protocol_error(request.error().describe());
      std::weak_ptr<ClientSession> weak = shared_from_this();
      leases_.release(shared_from_this(), std::move(request.value()), [weak, frame](common::Result<void> r) {
        auto self = weak.lock();
        if (!self) return;
        if (r.ok()) {
          self->answer(frame, common::Result<common::AckMsg>(common::AckMsg{}));
        } else {
          self->answer(frame, common::Result<common::AckMsg>(r.error()));
        }
      });
      break;
    }
    default: return protocol_error("unexpected message");
  }
}

}  // namespace dtu::devmgr
