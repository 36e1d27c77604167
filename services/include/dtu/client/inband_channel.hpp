#pragma once
// InbandChannel: a lease holder's direct channel to the DTU that granted the lease (DESIGN.md
// §2, docs/protocol.md §12) — the part of libdtu-client that moves device data. TLS 1.3 with the
// lease token as PSK and the lease id as PSK identity, then inband_hello; after that, control
// transfers, bulk/interrupt writes and reads on the leased unit's endpoints, the printer's
// device id, and in-band renewal.
//
//   auto op = InbandChannel::connect(ex, clock, {"10.0.0.7", 4712}, lease.id, lease.token, 5s);
//   auto channel = co_await std::move(op);
//   auto job = (*channel)->stream(0x01, bytes);   // ordered, windowed, chunked
//   auto sent = co_await std::move(job);
//
// Requests on one endpoint are carried out by the DTU in the order they are made; stream()
// relies on that to keep several chunks in flight. When the DTU ends the channel (lease expired
// or released, device gone, agent stopping) it says why first: closed_reason() and the
// on_closing() callback carry it, and the operations still pending fail with Errc::closed
// naming it.
//
// Thread: the caller's io_context thread (the executor given to connect); every coroutine runs
// there. The Clock must tell steady time (SystemClock): the link sleeps on it.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/result.hpp"

namespace dtu::client {

class InbandChannel : public std::enable_shared_from_this<InbandChannel> {
 public:
  // stream(): bytes per usb_out (63 KiB: large enough for full-speed bulk, small enough to
  // interleave with other endpoints) and requests kept in flight (flow control: at most
  // kStreamWindow × kStreamChunk bytes are queued at the DTU for one stream). With its 24 header
  // bytes a chunk fills four TLS records of 16 KiB; 64 KiB spilled 24 bytes into a fifth, one
  // more record and send per chunk (docs/performance.md). A multiple of every bulk max packet
  // size (8 to 1024), so no chunk but the last ends in a short packet.
  static constexpr std::size_t kStreamChunk = 63 * 1024;
  static constexpr std::size_t kStreamWindow = 8;
  // Added to a transfer's own timeout for the deadline of its request: the round trip.
  static constexpr common::Duration kReplyMargin = std::chrono::seconds(5);
  // Deadline of the requests that move no device data (device_id, renew).
  static constexpr common::Duration kDefaultTimeout = std::chrono::seconds(5);
  // Transfer timeout of one stream() chunk at the DTU.
  static constexpr common::Duration kDefaultChunkTimeout = std::chrono::seconds(30);

  using ClosingHandler = std::function<void(const common::ChannelClosingMsg&)>;

  // Connects to the DTU's in-band endpoint, proves the lease token and says hello, each step
  // within `timeout`. Errors: Errc::auth_failed when the DTU refused the token (the lease is
  // unknown there, long gone, or the token is wrong; the text says so with the TLS reason);
  // Errc::closed when the DTU knows the lease but it has ended (the text carries the reason,
  // "expired", "released", …); Errc::unavailable / Errc::timeout when the DTU is unreachable;
  // Errc::invalid_argument for an empty lease id or a token of the wrong size.
  static asio::awaitable<common::Result<std::shared_ptr<InbandChannel>>> connect(
      asio::any_io_executor ex, const common::Clock& clock, common::Endpoint dtu, std::string lease_id,
      common::Bytes token, common::Duration timeout);
  ~InbandChannel();
  InbandChannel(const InbandChannel&) = delete;
  InbandChannel& operator=(const InbandChannel&) = delete;

  // The DTU's welcome: the unit, its interfaces and endpoints, the lease's time left at connect.
  const common::InbandWelcomeMsg& welcome() const { return welcome_; }

  // A control transfer. IN (bit 7 of request_type): returns up to setup.length bytes and `data`
  // must be empty; OUT: sends `data`, whose size must equal setup.length, and returns no bytes.
  // `timeout` bounds the transfer at the DTU (1 ms .. 10 min).
  asio::awaitable<common::Result<common::Bytes>> control(common::UsbSetup setup, common::Bytes data,
                                                         common::Duration timeout);
  // One write to an OUT endpoint; the bytes the device accepted.
  // REQUIRES: `bytes` stays valid until the returned awaitable completes.
  asio::awaitable<common::Result<std::size_t>> write(std::uint8_t endpoint,
                                                     std::span<const std::uint8_t> bytes,
                                                     common::Duration timeout);
  // One read from an IN endpoint: 1 .. max bytes. max is at most common::kMaxUsbTransferBytes.
  asio::awaitable<common::Result<common::Bytes>> read(std::uint8_t endpoint, std::size_t max,
                                                      common::Duration timeout);
  // The printer's IEEE 1284 device id; nullopt when it has none. Errc::refused: not a printer.
  asio::awaitable<common::Result<std::optional<std::string>>> device_id(
      common::Duration timeout = kDefaultTimeout);
  // Extends the lease to `length` from now (the DTU's bounds apply); the time it has left.
  asio::awaitable<common::Result<common::Duration>> renew(common::Duration length,
                                                          common::Duration timeout = kDefaultTimeout);
  // Writes all of `data` to OUT `endpoint` in order, in kStreamChunk pieces with up to
  // kStreamWindow in flight; `chunk_timeout` bounds each piece at the DTU. The total written, or
  // the first failure (by position in the data; its text says how many bytes were confirmed).
  // After a failure the DTU writes nothing more of this stream: no gap reaches the device.
  // REQUIRES: `data` stays valid until the returned awaitable completes.
  asio::awaitable<common::Result<std::size_t>> stream(std::uint8_t endpoint,
                                                      std::span<const std::uint8_t> data,
                                                      common::Duration chunk_timeout = kDefaultChunkTimeout);

  // Called once if the DTU announces the end of the channel (before the link closes).
  void on_closing(ClosingHandler handler) { closing_handler_ = std::move(handler); }
  // What the DTU said when it ended the channel; nullopt if it has not.
  const std::optional<common::ChannelClosingMsg>& closed_reason() const { return closing_; }
  bool is_open() const { return link_->is_open() && !link_->is_shutting_down(); }
  // Closes the channel; pending operations fail with Errc::link_lost. Idempotent.
  void close();

 private:
  struct StreamState;

  InbandChannel(std::shared_ptr<common::Link> link, std::shared_ptr<asio::ssl::context> tls,
                std::string lease_id);
  void start();
  void on_frame(common::Frame frame);
  // Sends a request whose transfer queues behind others on `lane` (its endpoint).
  asio::awaitable<common::Result<common::Frame>> call(std::uint8_t lane, common::Frame frame,
                                                      common::Duration timeout);
  common::Error translate(const common::Error& error) const;
  void pump(const std::shared_ptr<StreamState>& state);
  void on_chunk(const std::shared_ptr<StreamState>& state, std::size_t index, std::size_t length,
                common::Result<common::Frame> answer);

  std::shared_ptr<common::Link> link_;
  std::shared_ptr<asio::ssl::context> tls_;  // outlives the TLS stream
  std::string lease_id_;
  common::InbandWelcomeMsg welcome_;
  std::optional<common::ChannelClosingMsg> closing_;
  ClosingHandler closing_handler_;
  std::map<std::uint8_t, std::size_t> in_flight_;  // requests awaiting an answer, per endpoint
};

}  // namespace dtu::client
