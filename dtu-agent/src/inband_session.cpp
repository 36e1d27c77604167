#include "inband_session.hpp"

#include <algorithm>
#include <cstdio>

#include "dtu/agent/record_builder.hpp"

namespace dtu::agent {

using common::Errc;
using common::Error;
using common::Frame;
using common::MessageType;

namespace {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

std::string hex8(std::uint8_t v) {
  char text[8];
  std::snprintf(text, sizeof text, "0x%02x", v);
  return text;
}

std::string millis(common::Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

// The request's routing (filament, txn, flags) without its payload: enough to answer it.
Frame header_of(const Frame& f) {
  Frame h;
  h.type = f.type;
  h.flags = f.flags;
  h.filament = f.filament;
  h.txn = f.txn;
  return h;
}

Errc errc_of(const Error& e) {
  if (e.code.category() == common::dtu_category()) return static_cast<Errc>(e.code.value());
  return Errc::io_error;
}

bool is_request_type(MessageType t) {
  return t == MessageType::usb_control || t == MessageType::usb_out || t == MessageType::usb_in ||
         t == MessageType::get_device_id || t == MessageType::inband_renew;
}

common::Result<void> check_timeout(std::uint32_t timeout_ms) {
  if (timeout_ms == 0 || timeout_ms > InbandSession::kMaxTransferTimeoutMs) {
    return Error(Errc::invalid_argument, "timeout_ms " + std::to_string(timeout_ms) + " is outside 1 .. " +
                                             std::to_string(InbandSession::kMaxTransferTimeoutMs));
  }
  return {};
}

}  // namespace

InbandSession::InbandSession(std::shared_ptr<common::Link> link, std::string lease_id, Shared shared)
    : link_(std::move(link)), lease_id_(std::move(lease_id)), shared_(std::move(shared)) {}

void InbandSession::start(ClosedHook on_closed) {
  on_closed_ = std::move(on_closed);
  std::weak_ptr<InbandSession> weak = shared_from_this();
  link_->mux().set_receiver(common::FilamentMux::kControlFilament, [weak](Frame frame) {
    if (auto self = weak.lock()) self->on_frame(std::move(frame));
  });
  link_->mux().set_open_handler([weak](std::uint32_t filament, const std::string& name) {
    if (auto self = weak.lock()) {
      self->protocol_error("filament_open " + std::to_string(filament) + " (" + name +
                           ") is not legal in-band");
    }
  });
  link_->start([weak](const Error& reason) {
    auto self = weak.lock();
    if (!self) return;
    self->state_ = State::closed;
    self->hello_deadline_.reset();
    self->lanes_.clear();
    self->shared_.log.info(self->peer(), "inband_channel_closed",
                           {{"lease", self->lease_id_}, {"reason", reason.describe()}});
    if (self->on_closed_) {
      auto hook = std::move(self->on_closed_);
      self->on_closed_ = nullptr;
      hook(self);
    }
  });
  // A holder that proves the token but never says hello must not hold a channel forever.
  hello_deadline_ =
      std::make_unique<common::DeadlineGuard>(link_->executor(), shared_.options.handshake_timeout, [weak] {
        auto self = weak.lock();
        if (self && self->state_ == State::awaiting_hello) {
          self->protocol_error("no inband_hello within " + millis(self->shared_.options.handshake_timeout));
        }
      });
}

void InbandSession::end(const std::string& reason, const std::string& detail) {
  if (state_ == State::closing || state_ == State::closed) return;
  state_ = State::closing;
  hello_deadline_.reset();
  shared_.log.info(peer(), "inband_channel_closing",
                   {{"lease", lease_id_}, {"reason", reason}, {"detail", detail}});
  auto last = common::to_frame(common::ChannelClosingMsg{reason, detail});
  link_->shutdown(std::move(last), Error(Errc::closed, "channel closing: " + reason));
}

void InbandSession::close(const Error& why) {
  link_->close(why);
}

void InbandSession::protocol_error(const std::string& reason) {
  if (state_ == State::closed) return;
  shared_.log.warn(peer(), "protocol_error", {{"lease", lease_id_}, {"reason", reason}});
  link_->close(Error(Errc::illegal_state, reason));
}

void InbandSession::answer_error(const Frame& to, const Error& error) {
  link_->reply_error(to, errc_of(error), error.detail.empty() ? error.describe() : error.detail);
}

void InbandSession::on_frame(Frame frame) {
  if (state_ == State::closing || state_ == State::closed) return;
  const std::string type(common::message_type_name(frame.type));
  if (!frame.wants_reply()) return protocol_error(type + " must be a request");
  if (state_ == State::awaiting_hello) {
    if (frame.type != MessageType::inband_hello) return protocol_error(type + " before inband_hello");
    return on_hello(frame);
  }
  if (!is_request_type(frame.type)) return protocol_error(type + " is not legal on an active channel");
  on_request(std::move(frame));
}

void InbandSession::on_hello(const Frame& frame) {
  auto hello = common::from_frame<common::InbandHelloMsg>(frame);
  if (!hello.ok()) return protocol_error(hello.error().describe());
  // Threat: a holder of one lease naming another after proving its own token.
  if (hello->lease != lease_id_) {
    return protocol_error("inband_hello names lease '" + hello->lease + "' but the TLS identity is " +
                          lease_id_);
  }
  if (!lease_still_active()) return;
  const Lease& lease = *shared_.leases.find(lease_id_);
  const auto devices = shared_.backend.devices();
  const auto device = std::find_if(devices.begin(), devices.end(),
                                   [&](const UsbDeviceInfo& d) { return d.port == lease.device; });
  if (device == devices.end()) {
    return end(lease_end_name(LeaseEnd::device_gone), lease_end_detail(lease_id_, LeaseEnd::device_gone));
  }
  scope_ = lease_scope(lease, *device);

  common::InbandWelcomeMsg welcome;
  welcome.lease = lease_id_;
  welcome.dtu = shared_.options.dtu;
  welcome.device = lease.device;
  welcome.unit = lease.unit;
  const auto record = build_device_record(*device, shared_.options.dtu, common::Stamp{});
  for (const auto& unit : record.units) {
    if (unit.unit == lease.unit) welcome.function = unit.function;
  }
  welcome.interfaces = scope_.interfaces;
  for (const auto& [address, ep] : scope_.endpoints) {
    welcome.endpoints.push_back({address, common::usb_transfer_type_name(ep.attributes), ep.max_packet_size});
  }
  welcome.expires_in_ms = std::max<std::int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(lease.expires - shared_.clock.now()).count());

  state_ = State::active;
  hello_deadline_.reset();
  link_->reply(frame, common::to_frame(welcome));
  shared_.log.info(peer(), "inband_channel_open",
                   {{"lease", lease_id_},
                    {"holder", lease.holder},
                    {"device", lease.device},
                    {"unit", lease.unit},
                    {"endpoints", welcome.endpoints.size()}});
}

bool InbandSession::lease_still_active() {
  if (const Lease* lease = shared_.leases.find(lease_id_)) {
    if (lease->expires > shared_.clock.now()) return true;
    end(lease_end_name(LeaseEnd::expired), lease_end_detail(lease_id_, LeaseEnd::expired));
    return false;
  }
  if (const EndedLease* gone = shared_.leases.ended(lease_id_)) {
    end(lease_end_name(gone->why), lease_end_detail(lease_id_, gone->why));
  } else {
    end("ended", "lease " + lease_id_ + " is no longer known to this DTU");
  }
  return false;
}

void InbandSession::on_request(Frame frame) {
  if (!lease_still_active()) return;
  switch (frame.type) {
    case MessageType::inband_renew:
      return on_renew(frame);
    case MessageType::get_device_id: {
      auto msg = common::from_frame<common::GetDeviceIdMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (auto ok = device_id_request(scope_); !ok.ok()) return answer_error(frame, ok.error());
      return enqueue(0, header_of(frame), *msg, 0);
    }
    case MessageType::usb_control: {
      auto msg = common::from_frame<common::UsbControlMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (auto ok = check_control(scope_, msg->setup); !ok.ok()) return answer_error(frame, ok.error());
      if (auto ok = check_timeout(msg->timeout_ms); !ok.ok()) return answer_error(frame, ok.error());
      const std::size_t bytes = msg->data.size() + msg->setup.length;
      return enqueue(0, header_of(frame), std::move(msg.value()), bytes);
    }
    case MessageType::usb_out: {
      auto msg = common::from_frame<common::UsbOutMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (auto ok = check_endpoint(scope_, msg->endpoint, false); !ok.ok())
        return answer_error(frame, ok.error());
      if (auto ok = check_timeout(msg->timeout_ms); !ok.ok()) return answer_error(frame, ok.error());
      const std::uint8_t lane = msg->endpoint;
      const std::size_t bytes = msg->data.size();
      return enqueue(lane, header_of(frame), std::move(msg.value()), bytes);
    }
    case MessageType::usb_in: {
      auto msg = common::from_frame<common::UsbInMsg>(frame);
      if (!msg.ok()) return protocol_error(msg.error().describe());
      if (auto ok = check_endpoint(scope_, msg->endpoint, true); !ok.ok())
        return answer_error(frame, ok.error());
      if (msg->length == 0 || msg->length > common::kMaxUsbTransferBytes) {
        return answer_error(frame,
                            Error(Errc::invalid_argument, "usb_in length " + std::to_string(msg->length) +
                                                              " is outside 1 .. " +
                                                              std::to_string(common::kMaxUsbTransferBytes)));
      }
      if (auto ok = check_timeout(msg->timeout_ms); !ok.ok()) return answer_error(frame, ok.error());
      return enqueue(msg->endpoint, header_of(frame), *msg, msg->length);
    }
    default:
      return protocol_error("unexpected " + std::string(common::message_type_name(frame.type)));
  }
}

void InbandSession::on_renew(const Frame& frame) {
  auto msg = common::from_frame<common::InbandRenewMsg>(frame);
  if (!msg.ok()) return protocol_error(msg.error().describe());
  if (!shared_.hooks.renew)
    return answer_error(frame, Error(Errc::refused, "in-band renewal is not available"));
  auto renewed = shared_.hooks.renew(lease_id_, std::chrono::milliseconds(msg->length_ms));
  if (!renewed.ok()) return answer_error(frame, renewed.error());
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(renewed->expires - shared_.clock.now());
  link_->reply(frame, common::to_frame(common::InbandRenewedMsg{std::max<std::int64_t>(0, left.count())}));
  shared_.log.info(peer(), "inband_renewed", {{"lease", lease_id_}, {"expires_in_ms", left.count()}});
}

void InbandSession::enqueue(std::uint8_t lane, Frame request, Work work, std::size_t bytes) {
  // Threat: a holder queueing requests without bound to exhaust the agent's memory.
  if (pending_requests_ >= kMaxPendingRequests || pending_bytes_ + bytes > kMaxPendingBytes) {
    return answer_error(request,
                        Error(Errc::refused, "too many requests in flight on this channel (at most " +
                                                 std::to_string(kMaxPendingRequests) + " requests, " +
                                                 std::to_string(kMaxPendingBytes) + " bytes)"));
  }
  ++pending_requests_;
  pending_bytes_ += bytes;
  lanes_[lane].queue.push_back(Job{std::move(request), std::move(work), bytes});
  run_next(lane);
}

void InbandSession::run_next(std::uint8_t lane_key) {
  Lane& lane = lanes_[lane_key];
  if (state_ != State::active || lane.busy || lane.queue.empty()) return;
  lane.busy = true;
  Job& job = lane.queue.front();  // stays queued until finish()
  if (auto* out = std::get_if<common::UsbOutMsg>(&job.work)) {
    if (out->continues && lane.broken) {
      // The stream this write continues already failed: writing it would leave a gap.
      return finish(lane_key, Error(Errc::refused, "not attempted: an earlier write to endpoint " +
                                                       hex8(lane_key) + " of this stream failed"));
    }
    lane.broken = false;  // a write that starts anew
  }
  auto self = shared_from_this();
  const std::string& port = scope_.device;
  auto bytes_done = [self, lane_key](common::Result<std::vector<std::uint8_t>> r) {
    if (!r.ok()) return self->finish(lane_key, r.error());
    self->finish(lane_key, common::usb_data_frame(r.value()));
  };
  std::visit(Overloaded{
                 [&](common::UsbControlMsg& m) {
                   shared_.backend.control(port, m.setup, std::move(m.data),
                                           std::chrono::milliseconds(m.timeout_ms), bytes_done);
                 },
                 [&](common::UsbOutMsg& m) {
                   shared_.backend.transfer_out(
                       port, m.endpoint, std::move(m.data), std::chrono::milliseconds(m.timeout_ms),
                       [self, lane_key](common::Result<std::size_t> r) {
                         if (!r.ok()) return self->finish(lane_key, r.error());
                         self->finish(lane_key, common::to_frame(common::UsbDoneMsg{r.value()}));
                       });
                 },
                 [&](common::UsbInMsg& m) {
                   shared_.backend.transfer_in(port, m.endpoint, m.length,
                                               std::chrono::milliseconds(m.timeout_ms), bytes_done);
                 },
                 [&](common::GetDeviceIdMsg&) {
                   // REQUIRES (checked at enqueue): the unit is a printer.
                   shared_.backend.control(
                       port, device_id_request(scope_).value(), {}, std::chrono::seconds(5),
                       [self, lane_key](common::Result<std::vector<std::uint8_t>> r) {
                         if (!r.ok()) return self->finish(lane_key, r.error());
                         self->finish(lane_key,
                                      common::to_frame(common::DeviceIdMsg{parse_device_id(r.value())}));
                       });
                 },
             },
             job.work);
}

void InbandSession::finish(std::uint8_t lane_key, common::Result<Frame> answer) {
  if (state_ != State::active) return;  // closing or closed: the answer is dropped
  Lane& lane = lanes_[lane_key];
  if (lane.queue.empty()) return;
  Job job = std::move(lane.queue.front());
  lane.queue.pop_front();
  lane.busy = false;
  --pending_requests_;
  pending_bytes_ -= job.bytes;
  if (answer.ok()) {
    link_->reply(job.request, std::move(answer.value()));
  } else {
    const Error& e = answer.error();
    if (e.code == Errc::unavailable) {
      shared_.log.info(peer(), "inband_transfer_failed",
                       {{"lease", lease_id_}, {"device", scope_.device}, {"reason", e.describe()}});
    }
    answer_error(job.request, e);
    // The writes that continue this one (sent before the holder could know) are refused.
    if (job.request.type == MessageType::usb_out) lane.broken = true;
  }
  run_next(lane_key);
}

}  // namespace dtu::agent
