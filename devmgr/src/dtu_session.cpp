#include "dtu/devmgr/dtu_session.hpp"

#include "dtu/common/messages.hpp"

namespace dtu::devmgr {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;

DtuSession::DtuSession(std::shared_ptr<common::Link> link, std::string identity, std::string manager_id,
                       DeviceList& devices, common::Logger log,
                       std::chrono::milliseconds heartbeat_interval, std::uint32_t heartbeat_misses,
                       std::chrono::milliseconds hello_timeout)
    : link_(std::move(link)),
      identity_(std::move(identity)),
      manager_id_(std::move(manager_id)),
      devices_(devices),
      log_(std::move(log)),
      heartbeat_interval_(heartbeat_interval),
      heartbeat_misses_(heartbeat_misses),
      hello_timeout_(hello_timeout) {}

bool DtuSession::is_legal(State state, MessageType type) {
  switch (state) {
    case State::awaiting_hello: return type == MessageType::dtu_hello;
    case State::active:
      return type == MessageType::device_snapshot || type == MessageType::device_attached ||
             type == MessageType::device_detached || type == MessageType::device_changed ||
             type == MessageType::lease_ended;
    case State::leaving:
    case State::closed: return false;
  }
  return false;
}

void DtuSession::start(Hooks hooks) {
  hooks_ = std::move(hooks);
  std::weak_ptr<DtuSession> weak = shared_from_this();
  link_->mux().set_receiver(common::FilamentMux::kControlFilament, [weak](Frame frame) {
    if (auto self = weak.lock()) self->on_frame(std::move(frame));
  });
  // A DTU has no use for filaments of its own yet: one opened anyway (before its hello, or
  // to queue frames nobody reads) is a protocol error.
  link_->mux().set_open_handler([weak](std::uint32_t filament, const std::string& name) {
    if (auto self = weak.lock()) {
      self->protocol_error("filament_open " + std::to_string(filament) + " (" + name + ") is not legal from a DTU");
    }
  });
  link_->start([weak](const Error& reason) {
    auto self = weak.lock();
    if (!self) return;
    const State was = self->state_;
    self->state_ = State::closed;
    self->hello_deadline_.reset();
    if (was != State::closed && self->hooks_.on_closed) self->hooks_.on_closed(self, reason);
  });
  // A DTU that proves its key but never says hello must not hold a connection forever.
  hello_deadline_ = std::make_unique<common::DeadlineGuard>(
      link_->executor(), hello_timeout_, [weak] {
        if (auto self = weak.lock(); self && self->state_ == State::awaiting_hello) {
          self->protocol_error("no dtu_hello within the handshake timeout");
        }
      });
}

void DtuSession::close(const Error& reason) { link_->close(reason); }

void DtuSession::move(const std::string& reason) {
  if (state_ != State::active) return;
  link_->notify(common::FilamentMux::kControlFilament, common::to_frame(common::DtuMoveMsg{reason}));
  moving_ = true;
  log_.info(link_->peer(), "dtu_move_sent", {{"dtu", identity_}, {"reason", reason}});
}

void DtuSession::answer_and_leave(const Frame& hello, Frame answer, const Error& reason) {
  state_ = State::leaving;
  answer.filament = hello.filament;
  answer.txn = hello.txn;
  answer.flags = static_cast<std::uint8_t>(common::kFlagReply);
  link_->shutdown(std::move(answer), reason);
}

void DtuSession::request(Frame frame, common::Duration timeout, std::function<void(common::Result<Frame>)> done) {
  // The callback form: the reply completes in order with the frames around it, so a lease_ended
  // that follows a lease_granted on the wire reaches the broker after the grant, never before.
  link_->request(common::FilamentMux::kControlFilament, std::move(frame), timeout, std::move(done));
}

void DtuSession::protocol_error(const std::string& reason) {
  log_.warn(link_->peer(), "protocol_error", {{"dtu", identity_}, {"reason", reason}});
  link_->close(Error(Errc::illegal_state, reason));
}

void DtuSession::on_frame(Frame frame) {
  if (state_ == State::closed || state_ == State::leaving) return;
  if (frame.is_binary() || !is_legal(state_, frame.type)) {
    protocol_error("message " + std::string(common::message_type_name(frame.type)) + " is not legal in state " +
                   (state_ == State::awaiting_hello ? "awaiting_hello" : "active"));
    return;
  }
  if (frame.type == MessageType::dtu_hello) {
    on_hello(frame);
  } else {
    on_device_message(frame);
  }
}

void DtuSession::on_hello(const Frame& frame) {
  auto hello = common::from_frame<common::DtuHelloMsg>(frame);
  if (!hello.ok()) return protocol_error(hello.error().describe());
  // Reject an id other than the one the TLS key proved: a DTU must not pose as another.
  if (hello->dtu != identity_) {
    log_.warn(link_->peer(), "auth_failed", {{"reason", "dtu_hello names another DTU"},
                                             {"hello_dtu", hello->dtu}, {"key_identity", identity_}});
    link_->close(Error(Errc::auth_failed, "dtu_hello id does not match the TLS identity"));
    return;
  }
  if (!frame.wants_reply()) return protocol_error("dtu_hello must be a request");
  hello_deadline_.reset();
  boot_epoch_ = hello->boot_epoch;
  agent_version_ = hello->agent_version;
  const Admission admission = hooks_.admit ? hooks_.admit(*hello) : Admission{};
  common::DtuWelcomeMsg welcome;
  welcome.manager = manager_id_;
  welcome.heartbeat_ms = static_cast<std::uint32_t>(heartbeat_interval_.count());
  welcome.heartbeat_misses = heartbeat_misses_;
  welcome.universal_us = admission.universal_us;
  welcome.dtus = admission.dtus;
  welcome.draining = admission.draining;
  if (hello->probe) {
    log_.debug(link_->peer(), "dtu_probed", {{"dtu", identity_}, {"dtus", admission.dtus},
                                             {"draining", admission.draining}});
    return answer_and_leave(frame, common::to_frame(welcome), Error(Errc::closed, "probe answered"));
  }
  if (admission.draining) {
    log_.info(link_->peer(), "dtu_refused_draining", {{"dtu", identity_}, {"boot_epoch", boot_epoch_}});
    return answer_and_leave(frame, common::to_frame(common::ErrorMsg{common::errc_name(Errc::refused), "draining"}),
                            Error(Errc::refused, "draining"));
  }
  state_ = State::active;
  link_->set_heartbeat(heartbeat_interval_, heartbeat_misses_);
  link_->reply(frame, common::to_frame(welcome));
  log_.info(link_->peer(), "dtu_connected", {{"dtu", identity_}, {"boot_epoch", boot_epoch_},
                                             {"agent_version", hello->agent_version}});
  if (hooks_.on_active) hooks_.on_active(shared_from_this());
}

void DtuSession::on_device_message(const Frame& frame) {
  if (!frame.wants_ack()) {
    return protocol_error(std::string(common::message_type_name(frame.type)) + " must be a post");
  }
  std::string about;
  DeviceList::Applied applied = DeviceList::Applied::applied;
  switch (frame.type) {
    case MessageType::device_snapshot: {
      auto msg = common::from_frame<common::DeviceSnapshotMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (msg->dtu != identity_) return protocol_error("device_snapshot for another DTU '" + msg->dtu + "'");
      for (auto& d : msg->devices) {
        if (d.dtu != identity_) return protocol_error("device record for another DTU '" + d.dtu + "'");
        d.owner = manager_id_;
      }
      if (!claim_) {
        claim_ = msg->stamp;
        if (hooks_.on_claim) hooks_.on_claim(shared_from_this());
        if (state_ != State::active) return;  // the manager closed it
      }
      const std::size_t n = msg->devices.size();
      applied = devices_.replace(identity_, msg->stamp, std::move(msg->devices));
      log_.info(link_->peer(), "dtu_devices", {{"dtu", identity_}, {"devices", n}, {"leases", msg->leases.size()},
                                               {"stale", applied == DeviceList::Applied::stale}});
      if (hooks_.on_leases) hooks_.on_leases(shared_from_this(), msg->leases);
      break;
    }
    case MessageType::device_attached: {
      auto msg = common::from_frame<common::DeviceAttachedMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (msg->device.dtu != identity_) return protocol_error("device record for another DTU '" + msg->device.dtu + "'");
      msg->device.owner = manager_id_;
      about = msg->device.device;
      applied = devices_.upsert(std::move(msg->device));
      log_.info(link_->peer(), "device_attached", {{"dtu", identity_}, {"device", about},
                                                   {"stale", applied == DeviceList::Applied::stale}});
      break;
    }
    case MessageType::device_changed: {
      auto msg = common::from_frame<common::DeviceChangedMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (msg->device.dtu != identity_) return protocol_error("device record for another DTU '" + msg->device.dtu + "'");
      msg->device.owner = manager_id_;
      about = msg->device.device;
      applied = devices_.upsert(std::move(msg->device));
      log_.debug(link_->peer(), "device_changed", {{"dtu", identity_}, {"device", about},
                                                   {"stale", applied == DeviceList::Applied::stale}});
      break;
    }
    case MessageType::lease_ended: {
      auto msg = common::from_frame<common::LeaseEndedMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (msg->dtu != identity_) return protocol_error("lease_ended for another DTU '" + msg->dtu + "'");
      if (hooks_.on_lease_ended) hooks_.on_lease_ended(*msg);
      break;
    }
    case MessageType::device_detached: {
      auto msg = common::from_frame<common::DeviceDetachedMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (msg->dtu != identity_) return protocol_error("device_detached for another DTU '" + msg->dtu + "'");
      applied = devices_.remove(identity_, msg->device, msg->stamp);
      log_.info(link_->peer(), "device_detached", {{"dtu", identity_}, {"device", msg->device},
                                                   {"stale", applied == DeviceList::Applied::stale}});
      break;
    }
    default: return protocol_error("unexpected message");
  }
}

}  // namespace dtu::devmgr
