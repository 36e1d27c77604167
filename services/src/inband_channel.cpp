#include "dtu/client/inband_channel.hpp"

#include <algorithm>

#include "dtu/common/async.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"

namespace dtu::client {

using common::Errc;
using common::Error;
using common::Frame;
using common::Result;

namespace {

// The DTU refuses a transfer timeout outside 1 ms .. 10 min.
constexpr std::uint32_t kMaxTimeoutMs = 10 * 60 * 1000;

std::uint32_t timeout_ms(common::Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return static_cast<std::uint32_t>(std::clamp<std::int64_t>(ms, 1, kMaxTimeoutMs));
}

common::Logger client_log() {
  return common::Logger("dtu-client");
}

}  // namespace

struct InbandChannel::StreamState {
  std::uint8_t endpoint = 0;
  std::span<const std::uint8_t> data;
  common::Duration chunk_timeout{};
  std::size_t next = 0;       // offset of the first byte not yet sent
  std::size_t sent = 0;       // chunks sent
  std::size_t in_flight = 0;  // chunks awaiting their answer
  std::size_t confirmed = 0;  // bytes the device accepted
  std::optional<std::size_t> failed_index;
  Error failure;
  bool finished = false;
  std::function<void(Result<std::size_t>)> done;
};

InbandChannel::InbandChannel(std::shared_ptr<common::Link> link, std::shared_ptr<asio::ssl::context> tls,
                             std::string lease_id)
    : link_(std::move(link)), tls_(std::move(tls)), lease_id_(std::move(lease_id)) {}

InbandChannel::~InbandChannel() {
  link_->close(Error(Errc::closed, "channel destroyed"));
}

void InbandChannel::close() {
  link_->close(Error(Errc::closed, "closed by the service"));
}

asio::awaitable<Result<std::shared_ptr<InbandChannel>>> InbandChannel::connect(
    asio::any_io_executor ex, const common::Clock& clock, common::Endpoint dtu, std::string lease_id,
    common::Bytes token, common::Duration timeout) {
  if (lease_id.empty()) co_return Error(Errc::invalid_argument, "empty lease id");
  if (token.size() < common::kMinPskBytes || token.size() > common::kMaxPskBytes) {
    co_return Error(Errc::invalid_argument, "a lease token has " + std::to_string(common::kMinPskBytes) +
                                                ".." + std::to_string(common::kMaxPskBytes) + " bytes, not " +
                                                std::to_string(token.size()));
  }
  const std::string where = dtu.to_string();
  auto dial = common::tcp_connect(dtu, timeout);
  auto socket = co_await std::move(dial);
  if (!socket.ok()) co_return socket.error();

  auto tls = common::make_psk_client_context();
  auto handshake = common::tls_connect(std::move(socket.value()), *tls, lease_id, std::move(token), timeout);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) {
    if (transport.error().code != Errc::auth_failed) co_return transport.error();
    co_return Error(Errc::auth_failed, "the DTU at " + where + " refused the token of lease " + lease_id +
                                           " (unknown, expired or wrong): " + transport.error().detail);
  }

  auto link = common::Link::create(ex, std::move(transport.value()), common::FilamentMux::Side::initiator,
                                   clock, client_log(), where, common::Link::Options{});
  std::shared_ptr<InbandChannel> channel(new InbandChannel(link, std::move(tls), lease_id));
  channel->start();

  auto hello = common::to_frame(common::InbandHelloMsg{lease_id});
  auto request = link->request(common::FilamentMux::kControlFilament, std::move(hello), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) {
    const Error failure = channel->translate(answer.error());
    channel->close();
    co_return failure;
  }
  auto welcome = common::from_frame<common::InbandWelcomeMsg>(*answer);
  if (!welcome.ok()) {
    channel->close();
    co_return Error(Errc::bad_payload,
                    "the DTU at " + where + " sent a bad inband_welcome: " + welcome.error().describe());
  }
  channel->welcome_ = std::move(welcome.value());
  co_return channel;
}

void InbandChannel::start() {
  std::weak_ptr<InbandChannel> weak = shared_from_this();
  link_->mux().set_receiver(common::FilamentMux::kControlFilament, [weak](Frame frame) {
    if (auto self = weak.lock()) self->on_frame(std::move(frame));
  });
  link_->mux().set_open_handler([weak](std::uint32_t, const std::string&) {
    if (auto self = weak.lock()) {
      client_log().warn(self->link_->peer(), "protocol_error", {{"reason", "the DTU opened a filament"}});
      self->link_->close(Error(Errc::illegal_state, "the DTU opened a filament"));
    }
  });
  link_->start([](const Error&) {});
}

void InbandChannel::on_frame(Frame frame) {
  if (frame.type != common::MessageType::channel_closing || frame.wants_reply() || frame.wants_ack()) {
    client_log().warn(
        link_->peer(), "protocol_error",
        {{"lease", lease_id_},
         {"reason", "unexpected " + std::string(common::message_type_name(frame.type)) + " from the DTU"}});
    link_->close(Error(Errc::illegal_state, "unexpected message from the DTU"));
    return;
  }
  auto msg = common::from_frame<common::ChannelClosingMsg>(frame);
  if (!msg.ok()) {
    client_log().warn(link_->peer(), "protocol_error",
                      {{"lease", lease_id_}, {"reason", msg.error().describe()}});
    link_->close(msg.error());
    return;
  }
  if (closing_) return;
  closing_ = std::move(msg.value());
  client_log().info(link_->peer(), "channel_closing",
                    {{"lease", lease_id_}, {"reason", closing_->reason}, {"detail", closing_->detail}});
  if (closing_handler_) {
    auto handler = std::move(closing_handler_);
    closing_handler_ = nullptr;
    handler(*closing_);
  }
}

Error InbandChannel::translate(const Error& error) const {
  if (closing_ && (error.code == Errc::link_lost || error.code == Errc::closed)) {
    return Error(Errc::closed, "the DTU closed the channel: " + closing_->reason +
                                   (closing_->detail.empty() ? "" : " (" + closing_->detail + ")"));
  }
  return error;
}

asio::awaitable<Result<Frame>> InbandChannel::call(std::uint8_t lane, Frame frame, common::Duration timeout) {
  auto self = shared_from_this();
  // The DTU runs one endpoint's requests one after another: this one may wait for those ahead.
  const std::size_t position = ++in_flight_[lane];
  const common::Duration deadline = timeout * static_cast<long>(position) + kReplyMargin;
  auto request = link_->request(common::FilamentMux::kControlFilament, std::move(frame), deadline);
  auto answer = co_await std::move(request);
  --in_flight_[lane];
  if (!answer.ok()) co_return translate(answer.error());
  co_return answer;
}

asio::awaitable<Result<common::Bytes>> InbandChannel::control(common::UsbSetup setup, common::Bytes data,
                                                              common::Duration timeout) {
  if (setup.is_in() && !data.empty())
    co_return Error(Errc::invalid_argument, "data given for an IN control transfer");
  if (!setup.is_in() && data.size() != setup.length) {
    co_return Error(Errc::invalid_argument, "an OUT control transfer's length must equal its data's size");
  }
  common::UsbControlMsg msg{setup, std::move(data), timeout_ms(timeout)};
  auto frame = common::to_frame(msg);
  auto op = call(0, std::move(frame), timeout);
  auto answer = co_await std::move(op);
  if (!answer.ok()) co_return answer.error();
  auto bytes = common::from_frame<common::UsbDataMsg>(*answer);
  if (!bytes.ok()) co_return bytes.error();
  co_return std::move(bytes->data);
}

asio::awaitable<Result<std::size_t>> InbandChannel::write(std::uint8_t endpoint,
                                                          std::span<const std::uint8_t> bytes,
                                                          common::Duration timeout) {
  if (bytes.size() > common::kMaxUsbTransferBytes) {
    co_return Error(
        Errc::invalid_argument,
        "one write carries at most " + std::to_string(common::kMaxUsbTransferBytes) + " bytes; use stream()");
  }
  auto frame = common::usb_out_frame(endpoint, timeout_ms(timeout), bytes);
  auto op = call(endpoint, std::move(frame), timeout);
  auto answer = co_await std::move(op);
  if (!answer.ok()) co_return answer.error();
  auto done = common::from_frame<common::UsbDoneMsg>(*answer);
  if (!done.ok()) co_return done.error();
  co_return static_cast<std::size_t>(done->length);
}

asio::awaitable<Result<common::Bytes>> InbandChannel::read(std::uint8_t endpoint, std::size_t max,
                                                           common::Duration timeout) {
  if (max == 0 || max > common::kMaxUsbTransferBytes) {
    co_return Error(Errc::invalid_argument, "a read asks for 1 .. " +
                                                std::to_string(common::kMaxUsbTransferBytes) +
                                                " bytes, not " + std::to_string(max));
  }
  common::UsbInMsg msg{endpoint, static_cast<std::uint32_t>(max), timeout_ms(timeout)};
  auto frame = common::to_frame(msg);
  auto op = call(endpoint, std::move(frame), timeout);
  auto answer = co_await std::move(op);
  if (!answer.ok()) co_return answer.error();
  auto bytes = common::from_frame<common::UsbDataMsg>(*answer);
  if (!bytes.ok()) co_return bytes.error();
  co_return std::move(bytes->data);
}

asio::awaitable<Result<std::optional<std::string>>> InbandChannel::device_id(common::Duration timeout) {
  auto frame = common::to_frame(common::GetDeviceIdMsg{});
  auto op = call(0, std::move(frame), timeout);
  auto answer = co_await std::move(op);
  if (!answer.ok()) co_return answer.error();
  auto msg = common::from_frame<common::DeviceIdMsg>(*answer);
  if (!msg.ok()) co_return msg.error();
  co_return std::move(msg->device_id);
}

asio::awaitable<Result<common::Duration>> InbandChannel::renew(common::Duration length,
                                                               common::Duration timeout) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(length).count();
  if (ms <= 0 || ms > std::numeric_limits<std::uint32_t>::max()) {
    co_return Error(Errc::invalid_argument, "a lease length of " + std::to_string(ms) + " ms");
  }
  auto frame = common::to_frame(common::InbandRenewMsg{static_cast<std::uint32_t>(ms)});
  auto self = shared_from_this();
  auto request = link_->request(common::FilamentMux::kControlFilament, std::move(frame), timeout);
  auto answer = co_await std::move(request);
  if (!answer.ok()) co_return translate(answer.error());
  auto msg = common::from_frame<common::InbandRenewedMsg>(*answer);
  if (!msg.ok()) co_return msg.error();
  co_return common::Duration(std::chrono::milliseconds(msg->expires_in_ms));
}

asio::awaitable<Result<std::size_t>> InbandChannel::stream(std::uint8_t endpoint,
                                                           std::span<const std::uint8_t> data,
                                                           common::Duration chunk_timeout) {
  auto self = shared_from_this();
  if (data.empty()) co_return std::size_t{0};
  auto state = std::make_shared<StreamState>();
  state->endpoint = endpoint;
  state->data = data;
  state->chunk_timeout = chunk_timeout;
  auto op = common::await_callback<Result<std::size_t>>([self, state](auto done) {
    state->done = std::move(done);
    self->pump(state);
  });
  auto result = co_await std::move(op);
  co_return result;
}

void InbandChannel::pump(const std::shared_ptr<StreamState>& state) {
  auto self = shared_from_this();
  while (!state->failed_index && state->in_flight < kStreamWindow && state->next < state->data.size()) {
    const std::size_t length = std::min(kStreamChunk, state->data.size() - state->next);
    const std::size_t index = state->sent++;
    // Every chunk but the first continues the stream: the DTU writes none after a failed one.
    // The frame refers to the caller's data, which link_->request() below copies into the link's
    // write buffer before it returns: one copy of each byte instead of two (docs/performance.md).
    auto frame =
        common::usb_out_frame_view(state->endpoint, timeout_ms(state->chunk_timeout),
                                   state->data.subspan(state->next, length), /*continues=*/index > 0);
    state->next += length;
    ++state->in_flight;
    // This chunk may wait at the DTU behind the others in flight.
    const common::Duration deadline =
        state->chunk_timeout * static_cast<long>(state->in_flight) + kReplyMargin;
    link_->request(common::FilamentMux::kControlFilament, std::move(frame), deadline,
                   [self, state, index, length](Result<Frame> answer) {
                     self->on_chunk(state, index, length, std::move(answer));
                   });
  }
  if (state->finished || state->in_flight > 0) return;
  if (!state->failed_index && state->next < state->data.size()) return;
  state->finished = true;
  auto done = std::move(state->done);
  if (state->failed_index) {
    done(Error(state->failure.code, state->failure.detail + " (after " + std::to_string(state->confirmed) +
                                        " of " + std::to_string(state->data.size()) + " bytes)"));
  } else {
    done(state->confirmed);
  }
}

void InbandChannel::on_chunk(const std::shared_ptr<StreamState>& state, std::size_t index, std::size_t length,
                             Result<Frame> answer) {
  --state->in_flight;
  std::optional<Error> failure;
  if (!answer.ok()) {
    failure = translate(answer.error());
  } else if (auto done = common::from_frame<common::UsbDoneMsg>(*answer); !done.ok()) {
    failure = done.error();
  } else if (done->length != length) {
    failure = Error(Errc::io_error, "the device accepted " + std::to_string(done->length) + " of a " +
                                        std::to_string(length) + "-byte chunk");
  } else if (!state->failed_index) {
    state->confirmed += length;
  }
  // The first failure by position in the data is the cause; later ones follow from it.
  if (failure && (!state->failed_index || index < *state->failed_index)) {
    state->failed_index = index;
    state->failure = *failure;
  }
  pump(state);
}

}  // namespace dtu::client
