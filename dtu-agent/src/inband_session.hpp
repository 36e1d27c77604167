#pragma once
// InbandSession: one in-band channel on the DTU (the agent side of a lease holder's TLS link),
// owned by InbandServer. One Link (reader, writer, watchdog) under a small state machine:
//
//   awaiting_hello --inband_hello (request, lease == TLS identity)--> active
//   awaiting_hello --no hello within the handshake timeout----------> closed (logged)
//   any            --end(reason): channel_closing, Link::shutdown---> closing --drained--> closed
//   any            --link closed, protocol error-------------------> closed
//
// In `active`, requests on one endpoint run strictly in arrival order (one FIFO lane per
// endpoint address; control transfers and get_device_id share lane 0), lanes run concurrently.
// After a failed write, the writes that continue it (kUsbOutContinues: a stream's later chunks,
// sent before the holder could know) are refused unwritten, so a stream never reaches the device
// with a gap; a write without the flag starts anew. A request outside the lease is answered with an error and
// the channel stays; a malformed or illegal frame closes this channel only (logged).
//
// Thread: the agent's io_context thread. Backend completions hold the session alive; after it
// closed they change nothing.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>

#include "dtu/agent/inband_policy.hpp"
#include "dtu/agent/inband_server.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/link.hpp"

namespace dtu::agent {

class InbandSession : public std::enable_shared_from_this<InbandSession> {
 public:
  // What every session of a server shares. The referenced objects are the agent's and outlive
  // the session's useful life; after the session closed it touches none of them.
  struct Shared {
    const common::Clock& clock;
    const LeaseTable& leases;
    UsbBackend& backend;
    InbandServer::Hooks hooks;
    InbandServer::Options options;
    common::Logger log;
  };
  using ClosedHook = std::function<void(const std::shared_ptr<InbandSession>&)>;

  // Requests queued or running on one channel, and their bytes: a holder may keep a window of
  // writes in flight, not flood the agent's memory.
  static constexpr std::size_t kMaxPendingRequests = 64;
  static constexpr std::size_t kMaxPendingBytes = 16 * 1024 * 1024;
  // Bounds on a transfer's timeout_ms: every wait has a deadline, and none is "forever".
  static constexpr std::uint32_t kMaxTransferTimeoutMs = 10 * 60 * 1000;

  InbandSession(std::shared_ptr<common::Link> link, std::string lease_id, Shared shared);

  // Starts the link and the hello deadline. `on_closed` runs once when the channel has closed.
  void start(ClosedHook on_closed);
  // Sends channel_closing{reason, detail} as the last frame and shuts the channel down.
  void end(const std::string& reason, const std::string& detail);
  // Closes at once, without a last frame.
  void close(const common::Error& why);

  const std::string& lease_id() const { return lease_id_; }
  const std::string& peer() const { return link_->peer(); }

 private:
  enum class State { awaiting_hello, active, closing, closed };
  using Work =
      std::variant<common::UsbControlMsg, common::UsbOutMsg, common::UsbInMsg, common::GetDeviceIdMsg>;
  struct Job {
    common::Frame request;  // header only: answered by filament and txn
    Work work;
    std::size_t bytes = 0;
  };
  struct Lane {
    std::deque<Job> queue;
    bool busy = false;
    bool broken = false;  // the last usb_out failed: writes that continue it are refused
  };

  void on_frame(common::Frame frame);
  void on_hello(const common::Frame& frame);
  void on_request(common::Frame frame);
  void on_renew(const common::Frame& frame);
  // False (and the channel ended) when the lease is no longer active.
  bool lease_still_active();
  void enqueue(std::uint8_t lane, common::Frame request, Work work, std::size_t bytes);
  void run_next(std::uint8_t lane);
  // The running job of `lane` is done: answer it and start the next one.
  void finish(std::uint8_t lane, common::Result<common::Frame> answer);
  void protocol_error(const std::string& reason);
  void answer_error(const common::Frame& to, const common::Error& error);

  std::shared_ptr<common::Link> link_;
  std::string lease_id_;
  Shared shared_;
  State state_ = State::awaiting_hello;
  LeaseScope scope_;
  std::map<std::uint8_t, Lane> lanes_;
  std::size_t pending_requests_ = 0;
  std::size_t pending_bytes_ = 0;
  std::unique_ptr<common::DeadlineGuard> hello_deadline_;
  ClosedHook on_closed_;
};

}  // namespace dtu::agent
