#include "dtu/agent/dtu_agent.hpp"

#include <asio/experimental/as_tuple.hpp>

#include "dtu/agent/record_builder.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "dtu/common/version.hpp"

namespace dtu::agent {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

namespace {
// How long a device message may wait for the manager's ack before we log it as lost; the next
// connect sends a full snapshot anyway.
constexpr common::Duration kDeviceMessageTimeout = std::chrono::seconds(10);
}  // namespace

DtuAgent::DtuAgent(const asio::any_io_executor& ex, const common::Clock& clock, AgentOptions options,
                   common::Bytes key, UsbBackend& backend)
    : executor_(ex),
      clock_(clock),
      options_(std::move(options)),
      key_(std::move(key)),
      backend_(backend),
      boot_epoch_(std::chrono::duration_cast<std::chrono::milliseconds>(clock.wall_now().time_since_epoch()).count()),
      link_closed_(ex),
      retry_timer_(ex),
      rng_(std::random_device{}()) {}

DtuAgent::~DtuAgent() { stop(); }

common::Result<void> DtuAgent::start() {
  tls_ = common::make_psk_client_context();
  auto started = backend_.start(UsbEvents{[this](UsbDeviceInfo info) { on_attached(std::move(info)); },
                                          [this](std::string port) { on_detached(port); }});
  if (!started.ok()) return started;
  log_.info("", "started", {{"dtu", options_.id}, {"boot_epoch", boot_epoch_}, {"managers", options_.managers.size()}});
  common::spawn(executor_, run(), log_, "agent connection loop");
  return {};
}

void DtuAgent::stop() {
  if (stopped_) return;
  stopped_ = true;
  retry_timer_.cancel();
  if (link_) link_->close(Error(Errc::closed, "agent stopping"));
  link_closed_.cancel();
  backend_.stop();
}

common::Stamp DtuAgent::next_stamp() {
  common::Stamp s;
  s.boot_epoch = boot_epoch_;
  s.seq = ++seq_;
  s.time_us = common::to_micros(clock_.wall_now());
  return s;
}

common::Duration DtuAgent::backoff(unsigned attempt) {
  const auto base = options_.reconnect_min * (1LL << std::min(attempt, 10U));
  const auto capped = std::min<common::Duration>(base, options_.reconnect_max);
  // Jitter in [0.5, 1.5): DTUs that lost the same manager do not all return at once.
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  return std::chrono::duration_cast<common::Duration>(capped * jitter(rng_));
}

asio::awaitable<void> DtuAgent::run() {
  unsigned attempt = 0;
  while (!stopped_) {
    bool served = false;
    for (const auto& manager : options_.managers) {
      if (stopped_) co_return;
      auto op = serve(manager);
      const Error why = co_await std::move(op);
      if (stopped_) co_return;
      if (welcomed_) served = true;
      welcomed_ = false;
      log_.warn(manager.to_string(), served ? "manager_lost" : "manager_unreachable", {{"reason", why.describe()}});
      if (served) break;  // start again from the top of the list
    }
    attempt = served ? 0 : attempt + 1;
    retry_timer_.expires_after(backoff(attempt));
    co_await retry_timer_.async_wait(as_tuple(asio::use_awaitable));
  }
}

asio::awaitable<Error> DtuAgent::serve(common::Endpoint manager) {
  const std::string peer = manager.to_string();
  auto connect = common::tcp_connect(manager, options_.connect_timeout);
  auto socket = co_await std::move(connect);
  if (!socket.ok()) co_return socket.error();
  auto handshake = common::tls_connect(std::move(socket.value()), *tls_, options_.id, key_, options_.connect_timeout);
  auto transport = co_await std::move(handshake);
  if (!transport.ok()) co_return transport.error();
  if (stopped_) co_return Error(Errc::closed, "stopping");

  link_ = common::Link::create(executor_, std::move(transport.value()), common::FilamentMux::Side::initiator,
                               clock_, log_, peer, common::Link::Options{});
  std::optional<Error> closed_reason;
  link_closed_.expires_at(asio::steady_timer::time_point::max());
  link_->mux().set_receiver(common::FilamentMux::kControlFilament, [this, peer](common::Frame frame) {
    // The manager sends nothing unsolicited on this link yet: anything is a protocol error.
    log_.warn(peer, "protocol_error", {{"reason", "unexpected " + std::string(common::message_type_name(frame.type))}});
    link_->close(Error(Errc::illegal_state, "unexpected message from the manager"));
  });
  link_->start([this, &closed_reason](const Error& reason) {
    closed_reason = reason;
    link_closed_.cancel();
  });

  common::DtuHelloMsg hello{options_.id, common::kVersion, boot_epoch_};
  auto request = link_->request(common::FilamentMux::kControlFilament, common::to_frame(hello),
                                options_.connect_timeout);
  auto answer = co_await std::move(request);
  if (answer.ok()) {
    auto welcome = common::from_frame<common::DtuWelcomeMsg>(*answer);
    if (!welcome.ok()) {
      log_.warn(peer, "protocol_error", {{"reason", welcome.error().describe()}});
      link_->close(welcome.error());
    } else {
      welcomed_ = true;
      link_->set_heartbeat(std::chrono::milliseconds(welcome->heartbeat_ms), welcome->heartbeat_misses);
      common::DeviceSnapshotMsg snapshot;
      snapshot.dtu = options_.id;
      snapshot.stamp = next_stamp();
      for (const auto& [port, record] : records_) snapshot.devices.push_back(record);
      log_.info(peer, "connected", {{"manager", welcome->manager}, {"devices", snapshot.devices.size()},
                                    {"heartbeat_ms", welcome->heartbeat_ms}});
      send_device_message(common::to_frame(snapshot), "device_snapshot");
    }
  } else {
    link_->close(answer.error());
  }
  if (!closed_reason) co_await link_closed_.async_wait(as_tuple(asio::use_awaitable));
  link_.reset();
  co_return closed_reason.value_or(Error(Errc::closed, "stopping"));
}

void DtuAgent::send_device_message(common::Frame frame, const std::string& what) {
  if (!link_ || !welcomed_) return;  // the next connect's snapshot carries it
  const std::string peer = link_->peer();
  link_->post(common::FilamentMux::kControlFilament, std::move(frame), kDeviceMessageTimeout,
              [this, peer, what](common::Result<common::Frame> r) {
                if (!r.ok()) log_.warn(peer, "report_unconfirmed", {{"message", what}, {"reason", r.error().describe()}});
              });
}

void DtuAgent::on_attached(UsbDeviceInfo info) {
  auto record = build_device_record(info, options_.id, next_stamp());
  log_.info("", "device_attached", {{"device", record.device}, {"vid", common::hex16(record.vid)},
                                    {"pid", common::hex16(record.pid)}, {"units", record.units.size()}});
  records_[record.device] = record;
  send_device_message(common::to_frame(common::DeviceAttachedMsg{std::move(record)}), "device_attached");
}

void DtuAgent::on_detached(const std::string& port) {
  if (records_.erase(port) == 0) return;
  log_.info("", "device_detached", {{"device", port}});
  send_device_message(common::to_frame(common::DeviceDetachedMsg{options_.id, port, next_stamp()}), "device_detached");
}

}  // namespace dtu::agent
