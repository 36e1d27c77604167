#include "dtu/devmgr/client_session.hpp"

#include <optional>

#include "dtu/common/messages.hpp"
#include "dtu/common/version.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;

ClientSession::ClientSession(std::shared_ptr<common::Link> link, common::PeerCredentials credentials,
                             std::string manager_id, ClientServices services, common::Logger log,
                             std::chrono::milliseconds hello_timeout)
    : link_(std::move(link)),
      credentials_(credentials),
      manager_id_(std::move(manager_id)),
      services_(std::move(services)),
      log_(std::move(log)),
      hello_timeout_(hello_timeout) {}

bool ClientSession::is_legal(State state, MessageType type) {
  switch (state) {
    case State::awaiting_hello: return type == MessageType::client_hello;
    case State::ready:
      switch (type) {
        case MessageType::list_devices:
        case MessageType::allocate:
        case MessageType::renew:
        case MessageType::release:
        case MessageType::resume_lease:
        case MessageType::register_finder:
        case MessageType::unregister_finder:
        case MessageType::list_finders:
        case MessageType::list_leases:
        case MessageType::list_sessions:
        case MessageType::list_dtus:
        case MessageType::session_attach:
        case MessageType::session_detach:
        case MessageType::get_policy:
        case MessageType::reload_policy:
        case MessageType::group_status:
        case MessageType::reload_group:
        case MessageType::drain:
        case MessageType::group_exec:
        case MessageType::undrain: return true;
        default: return false;
      }
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
    // Clean up after the code that closed the link has returned: it may be iterating the
    // finders or leases this would change (a slow client's send queue overflowing mid-event).
    asio::post(self->link_->executor(), [self, on_closed = std::move(on_closed)] {
      self->services_.group->remove_client(self.get());
      self->services_.group->holder_closed(self.get());
      if (on_closed) on_closed(self);
    });
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
  if (frame.type == MessageType::client_hello) {
    auto hello = common::from_frame<common::ClientHelloMsg>(frame);
    if (!hello.ok()) return protocol_error(hello.error().describe());
    client_name_ = hello->client;
    state_ = State::ready;
    hello_deadline_.reset();
    link_->reply(frame, common::to_frame(common::ClientWelcomeMsg{manager_id_, common::kVersion}));
    log_.debug(link_->peer(), "client_connected", {{"client", client_name_}, {"uid", credentials_.uid},
                                                   {"gid", credentials_.gid}, {"pid", credentials_.pid}});
    return;
  }
  on_request(frame);
}

void ClientSession::answer_void(const Frame& to, const common::Result<void>& result) {
  if (result.ok()) {
    answer(to, common::Result<common::AckMsg>(common::AckMsg{}));
  } else {
    answer(to, common::Result<common::AckMsg>(result.error()));
  }
}

bool ClientSession::require_admin(const Frame& request, const char* what) {
  if (is_admin(credentials_.uid)) return true;
  log_.warn(link_->peer(), "admin_only", {{"request", what}, {"uid", credentials_.uid}});
  link_->reply_error(request, Errc::denied,
                     std::string("only root or the devmgr user may ") + what + " (you are uid " +
                         std::to_string(credentials_.uid) + ")");
  return false;
}

template <typename M>
std::optional<M> ClientSession::decode(const Frame& frame) {
  auto message = common::from_frame<M>(frame);
  if (!message.ok()) {
    protocol_error(message.error().describe());
    return std::nullopt;
  }
  return std::move(message.value());
}

void ClientSession::on_request(const Frame& frame) {
  std::weak_ptr<ClientSession> weak = shared_from_this();
  auto reply_lease = [weak, frame](common::Result<common::LeaseGrantedMsg> r) {
    if (auto self = weak.lock()) self->answer(frame, r);
  };
  switch (frame.type) {
    case MessageType::list_devices: {
      auto request = decode<common::ListDevicesMsg>(frame);
      if (!request) return;
      if (!request->group) {
        link_->reply(frame, common::to_frame(common::DeviceListMsg{services_.devices->list(request->dtu)}));
        return;
      }
      services_.group->list_group_devices(request->dtu, [weak, frame](std::vector<common::DeviceRecord> devices) {
        if (auto self = weak.lock(); self && self->state_ != State::closed) {
          self->link_->reply(frame, common::to_frame(common::DeviceListMsg{std::move(devices)}));
        }
      });
      return;
    }
    case MessageType::allocate: {
      auto request = decode<common::AllocateMsg>(frame);
      if (!request) return;
      services_.group->allocate(shared_from_this(), std::move(request.value()), reply_lease);
      return;
    }
    case MessageType::renew: {
      auto request = decode<common::RenewMsg>(frame);
      if (!request) return;
      services_.group->renew(shared_from_this(), std::move(request.value()), reply_lease);
      return;
    }
    case MessageType::resume_lease: {
      auto request = decode<common::ResumeLeaseMsg>(frame);
      if (!request) return;
      services_.group->resume(shared_from_this(), std::move(request.value()), reply_lease);
      return;
    }
    case MessageType::release: {
      auto request = decode<common::ReleaseMsg>(frame);
      if (!request) return;
      services_.group->release(shared_from_this(), std::move(request.value()), [weak, frame](common::Result<void> r) {
        if (auto self = weak.lock()) self->answer_void(frame, r);
      });
      return;
    }
    case MessageType::register_finder: {
      // A finder the parser refuses is the service's mistake, not a broken peer: answer with
      // the field at fault and keep the connection.
      auto request = common::from_frame<common::RegisterFinderMsg>(frame);
      if (!request.ok()) {
        log_.info(link_->peer(), "finder_refused", {{"client", client_name_}, {"reason", request.error().detail}});
        link_->reply_error(frame, Errc::invalid_argument, request.error().detail);
        return;
      }
      if (services_.group->has_finder(this, request->finder_id)) {
        link_->reply_error(frame, Errc::invalid_argument,
                           "finder " + std::to_string(request->finder_id) + " is already registered");
        return;
      }
      if (services_.max_finders > 0 && finders_ >= services_.max_finders) {
        log_.warn(link_->peer(), "finder_limit", {{"client", client_name_}, {"uid", credentials_.uid},
                                                  {"limit", services_.max_finders}});
        link_->reply_error(frame, Errc::denied,
                           "this connection holds " + std::to_string(finders_) + " finders, the limit");
        return;
      }
      const FinderRegistry::Owner owner{client_name_, static_cast<std::uint32_t>(credentials_.pid),
                                        static_cast<std::uint32_t>(credentials_.uid)};
      // The ack goes out before the first matches: the sink queues them after it on filament 0.
      link_->reply(frame, common::to_frame(common::AckMsg{}));
      auto sink = [weak](Frame event) {
        if (auto self = weak.lock(); self && self->state_ != State::closed) self->notify(std::move(event));
      };
      if (services_.group->add_finder(this, owner, sink, request->finder_id, std::move(request->finder)).ok()) {
        ++finders_;
      }
      log_.debug(link_->peer(), "finder_registered", {{"client", client_name_}, {"finder", request->finder_id}});
      return;
    }
    case MessageType::unregister_finder: {
      auto request = decode<common::UnregisterFinderMsg>(frame);
      if (!request) return;
      auto removed = services_.group->remove_finder(this, request->finder_id);
      if (removed.ok()) --finders_;
      answer_void(frame, removed);
      return;
    }
    case MessageType::list_finders: {
      auto request = decode<common::ListFindersMsg>(frame);
      if (!request) return;
      link_->reply(frame, common::to_frame(common::FinderListMsg{services_.group->list_finders()}));
      return;
    }
    case MessageType::list_leases: {
      auto request = decode<common::ListLeasesMsg>(frame);
      if (!request) return;
      link_->reply(frame, common::to_frame(common::LeaseListMsg{services_.leases->list()}));
      return;
    }
    case MessageType::list_sessions: {
      auto request = decode<common::ListSessionsMsg>(frame);
      if (!request) return;
      link_->reply(frame, common::to_frame(common::SessionListMsg{services_.list_sessions()}));
      return;
    }
    case MessageType::get_policy: {
      auto request = decode<common::GetPolicyMsg>(frame);
      if (!request) return;
      link_->reply(frame, common::to_frame(services_.policy_info()));
      return;
    }
    case MessageType::session_attach: {
      auto request = decode<common::SessionAttachMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "attach sessions")) return;
      answer_void(frame, services_.attach_session(*request));
      return;
    }
    case MessageType::session_detach: {
      auto request = decode<common::SessionDetachMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "detach sessions")) return;
      answer_void(frame, services_.detach_session(request->session));
      return;
    }
    case MessageType::reload_policy: {
      auto request = decode<common::ReloadPolicyMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "reload the policy")) return;
      answer(frame, services_.reload_policy());
      return;
    }
    case MessageType::list_dtus: {
      auto request = decode<common::ListDtusMsg>(frame);
      if (!request) return;
      services_.list_dtus(request->group, [weak, frame](common::DtuListMsg list) {
        if (auto self = weak.lock(); self && self->state_ != State::closed) {
          self->link_->reply(frame, common::to_frame(std::move(list)));
        }
      });
      return;
    }
    case MessageType::group_status: {
      auto request = decode<common::GroupStatusMsg>(frame);
      if (!request) return;
      services_.group_status([weak, frame](common::GroupInfoMsg info) {
        if (auto self = weak.lock()) self->answer(frame, common::Result<common::GroupInfoMsg>(std::move(info)));
      });
      return;
    }
    case MessageType::reload_group: {
      auto request = decode<common::ReloadGroupMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "reload the group")) return;
      answer(frame, services_.reload_group());
      return;
    }
    case MessageType::drain: {
      auto request = decode<common::DrainMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "drain the manager")) return;
      services_.drain(request->wait_ms, [weak, frame](common::Result<common::DrainStatusMsg> status) {
        if (auto self = weak.lock()) self->answer(frame, status);
      });
      return;
    }
    case MessageType::undrain: {
      auto request = decode<common::UndrainMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "undrain the manager")) return;
      link_->reply(frame, common::to_frame(services_.undrain()));
      return;
    }
    case MessageType::group_exec: {
      auto request = decode<common::GroupExecMsg>(frame);
      if (!request) return;
      if (!require_admin(frame, "run group commands")) return;
      GroupCommands::Sink sink;
      sink.event = [weak](const common::GroupExecEventMsg& event) {
        if (auto self = weak.lock(); self && self->state_ != State::closed) self->notify(common::to_frame(event));
      };
      sink.done = [weak](const common::GroupExecDoneMsg& done) {
        if (auto self = weak.lock(); self && self->state_ != State::closed) self->notify(common::to_frame(done));
      };
      answer(frame, services_.group_exec(*request, std::move(sink)));
      return;
    }
    default: return protocol_error("unexpected message");
  }
}

}  // namespace dtu::devmgr
