#include "dtu/common/link.hpp"

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/net.hpp"
#include "dtu/common/tls.hpp"
#include "support/async_client.hpp"
#include "support/log_capture.hpp"

// Link end to end over real in-process sockets (Unix socket pairs, and TCP+TLS on 127.0.0.1),
// on one io_context driven by this thread with SystemClock. Tests run the context until the
// awaited outcome happens; deadlines are real but small where a timeout is the point.

namespace {

namespace common = dtu::common;
using common::Duration;
using common::Errc;
using common::Frame;
using common::Link;
using common::Result;
using LocalSocket = asio::local::stream_protocol::socket;
using Side = common::FilamentMux::Side;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Safety net only: every outcome below arrives within milliseconds (or within its own small
// deadline); a bug that leaves an operation hanging fails the test after this.
constexpr auto kSafetyNet = seconds(10);
// How long the context runs between two looks at the awaited outcome.
constexpr auto kSlice = milliseconds(5);
// A deadline that is not the point of the test: far beyond any outcome, far below the net.
constexpr auto kGenerous = seconds(5);

// What a link's close handler saw. Shared with the handler, which may run after the test body.
struct Closed {
  int calls = 0;
  std::optional<common::Error> reason;
};

template <typename T>
using Outcome = std::shared_ptr<std::optional<T>>;

using dtu::testing::LogCapture;

Link::Options quiet() {
  Link::Options options;
  options.heartbeats = false;
  return options;
}

// One io_context, the links made on it and their sockets. On destruction it closes every link
// and runs the context until their coroutines have ended, so nothing outlives the context.
class Harness {
 public:
  Harness() = default;
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;
  ~Harness() {
    for (auto& link : links_) link->close(common::Error(Errc::closed, "test over"));
    try {
      io_.restart();
      io_.run_for(kSafetyNet);  // returns once every coroutine has ended
    } catch (...) {
      // A failure is already reported by the test body.
    }
  }

  asio::io_context& io() { return io_; }
  asio::any_io_executor executor() { return io_.get_executor(); }
  const common::Clock& clock() const { return common::SystemClock::instance(); }

  std::pair<LocalSocket, LocalSocket> socket_pair() {
    LocalSocket one(io_);
    LocalSocket two(io_);
    asio::local::connect_pair(one, two);
    return {std::move(one), std::move(two)};
  }

  std::shared_ptr<Link> link(std::unique_ptr<common::Transport> transport, Side side, std::string peer,
                             Link::Options options) {
    auto made = Link::create(io_.get_executor(), std::move(transport), side, clock(),
                             common::Logger("link_test"), std::move(peer), options);
    links_.push_back(made);
    return made;
  }
  std::shared_ptr<Link> unix_link(LocalSocket socket, Side side, std::string peer, Link::Options options) {
    return link(std::make_unique<common::UnixTransport>(std::move(socket)), side, std::move(peer), options);
  }

  // Two quiet links over a socket pair, started: `a` the initiator, `b` the acceptor.
  void started_pair(std::shared_ptr<Link>& a, std::shared_ptr<Link>& b) {
    auto [one, two] = socket_pair();
    a = unix_link(std::move(one), Side::initiator, "peer-b", quiet());
    b = unix_link(std::move(two), Side::acceptor, "peer-a", quiet());
    start(a);
    start(b);
  }

  static std::shared_ptr<Closed> start(const std::shared_ptr<Link>& link) {
    auto closed = std::make_shared<Closed>();
    link->start([closed](const common::Error& reason) {
      ++closed->calls;
      closed->reason = reason;
    });
    return closed;
  }

  // Runs the context until done() holds (true) or `limit` passes (false).
  bool run_until(const std::function<bool()>& done, Duration limit = kSafetyNet) {
    return dtu::testing::run_io_until(io_, done, limit, kSlice);
  }
  // Runs the context for `period` whatever happens (for "nothing goes wrong meanwhile").
  void run_for(Duration period) {
    if (io_.stopped()) io_.restart();
    io_.run_for(period);
  }

  // Starts the coroutine make() returns; the outcome holds its result once it has finished.
  template <typename Make>
  auto spawn(Make make) {
    using T = typename std::invoke_result_t<Make&>::value_type;
    auto out = std::make_shared<std::optional<T>>();
    asio::co_spawn(
        io_,
        [make = std::move(make), out]() mutable -> asio::awaitable<void> {
          auto op = make();
          auto result = co_await std::move(op);
          out->emplace(std::move(result));
        },
        [](std::exception_ptr e) {
          if (e) std::rethrow_exception(e);
        });
    return out;
  }

 private:
  asio::io_context io_;
  std::vector<std::shared_ptr<Link>> links_;
};

Frame hello(std::string client) {
  return common::to_frame(common::ClientHelloMsg{std::move(client)});
}

Frame welcome(std::string manager) {
  return common::to_frame(common::ClientWelcomeMsg{std::move(manager), "0.1"});
}

// Answers every request on `filament` of `peer` with a welcome naming `manager`.
void answer_requests(Link* peer, std::uint32_t filament, std::string manager) {
  peer->mux().set_receiver(filament, [peer, manager](Frame frame) {
    if (frame.wants_reply()) peer->reply(frame, welcome(manager));
  });
}

// Starts a read on a raw socket whose link end sends nothing; the outcome is its result (eof
// once the link closed the connection).
Outcome<std::error_code> read_error(LocalSocket& socket) {
  auto out = std::make_shared<std::optional<std::error_code>>();
  auto buffer = std::make_shared<std::array<std::uint8_t, 64>>();
  // Bytes where none were due complete it without an error: the test's eof check fails.
  socket.async_read_some(asio::buffer(*buffer),
                         [out, buffer](std::error_code ec, std::size_t) { out->emplace(ec); });
  return out;
}

std::string describe(const Result<Frame>& r) {
  return r.ok() ? "ok" : r.error().describe();
}

}  // namespace

TEST_CASE("A request on filament 0 answered by the peer completes with the reply") {
  Harness h;
  auto [one, two] = h.socket_pair();
  auto a = h.unix_link(std::move(one), Side::initiator, "peer-b", quiet());
  auto b = h.unix_link(std::move(two), Side::acceptor, "peer-a", quiet());
  auto a_closed = Harness::start(a);
  auto b_closed = Harness::start(b);
  answer_requests(b.get(), 0, "m1");

  const Frame request = hello("link_test");
  auto reply = h.spawn([a, request] { return a->request(0, request, kGenerous); });
  REQUIRE(h.run_until([&] { return reply->has_value(); }));

  const Result<Frame>& r = **reply;
  INFO(describe(r));
  REQUIRE(r.ok());
  CHECK(r->type == common::MessageType::client_welcome);
  CHECK(r->is_reply());
  CHECK(r->filament == 0);
  auto msg = common::from_frame<common::ClientWelcomeMsg>(*r);
  REQUIRE(msg.ok());
  CHECK(msg->manager == "m1");
  CHECK(a->is_open());
  CHECK(b->is_open());
  CHECK(a_closed->calls == 0);
  CHECK(b_closed->calls == 0);
}

TEST_CASE("What a frame's handler sends on another link goes out before its reply to the frame's sender") {
  // sender -> relay: a request. The relay's handler tells `onward`'s peer first and then
  // answers; both are queued while the relay handles its input. A relayed frame must not wait
  // behind the answer (nor behind the relay's next wait for input): the test drives the context
  // one handler at a time and looks at the raw sockets the moment the answer is there.
  Harness h;
  auto [sender_end, relay_end] = h.socket_pair();
  auto [onward_end, watcher_end] = h.socket_pair();
  auto relay = h.unix_link(std::move(relay_end), Side::acceptor, "sender", quiet());
  auto onward = h.unix_link(std::move(onward_end), Side::initiator, "watcher", quiet());
  Harness::start(relay);
  Harness::start(onward);
  relay->mux().set_receiver(0, [relay = relay.get(), onward = onward.get()](Frame frame) {
    onward->notify(0, hello("relayed"));
    relay->reply(frame, welcome("m1"));
  });
  h.run_for(milliseconds(20));  // both readers wait for input

  Frame request = hello("sender");
  request.flags = common::kFlagReplyRequested;
  request.txn = 1;
  const std::vector<std::uint8_t> bytes = common::encode_frame(request);
  asio::write(sender_end, asio::buffer(bytes));

  const auto deadline = h.clock().now() + kSafetyNet;
  while (sender_end.available() == 0 && h.clock().now() < deadline) {
    if (h.io().stopped()) h.io().restart();
    h.io().run_one_for(kSlice);
  }
  REQUIRE(sender_end.available() > 0);
  CHECK(watcher_end.available() > 0);  // the relayed frame went out first

  // Both arrive whole: the reply to the sender's request, the notify to the watcher.
  common::FrameDecoder decoder;
  std::array<std::uint8_t, 512> buffer{};
  const std::size_t n = sender_end.read_some(asio::buffer(buffer));
  std::span<const std::uint8_t> input(buffer.data(), n);
  Frame reply;
  REQUIRE(decoder.next(input, reply) == common::FrameDecoder::Status::complete);
  CHECK(reply.is_reply());
  CHECK(reply.type == common::MessageType::client_welcome);
  h.run_for(milliseconds(20));
  REQUIRE(watcher_end.available() > 0);
  common::FrameDecoder watcher_decoder;
  const std::size_t m = watcher_end.read_some(asio::buffer(buffer));
  std::span<const std::uint8_t> relayed_input(buffer.data(), m);
  Frame relayed;
  REQUIRE(watcher_decoder.next(relayed_input, relayed) == common::FrameDecoder::Status::complete);
  auto msg = common::from_frame<common::ClientHelloMsg>(relayed);
  REQUIRE(msg.ok());
  CHECK(msg->client == "relayed");
  CHECK(relay->is_open());
  CHECK(onward->is_open());
}

TEST_CASE("A request on a filament the initiator opened is answered on that filament") {
  Harness h;
  std::shared_ptr<Link> a, b;
  h.started_pair(a, b);
  std::vector<std::pair<std::uint32_t, std::string>> opened;
  Link* peer = b.get();
  b->mux().set_open_handler([&opened, peer](std::uint32_t id, const std::string& name) {
    opened.emplace_back(id, name);
    answer_requests(peer, id, "m-" + name);
  });

  auto id = a->mux().open("rpc");
  REQUIRE(id.ok());
  const std::uint32_t filament = *id;
  CHECK(filament % 2 == 1);  // the initiator numbers its filaments odd
  auto reply = h.spawn([a, filament] { return a->request(filament, hello("link_test"), kGenerous); });
  REQUIRE(h.run_until([&] { return reply->has_value(); }));

  const Result<Frame>& r = **reply;
  INFO(describe(r));
  REQUIRE(r.ok());
  CHECK(r->filament == filament);
  auto msg = common::from_frame<common::ClientWelcomeMsg>(*r);
  REQUIRE(msg.ok());
  CHECK(msg->manager == "m-rpc");
  REQUIRE(opened.size() == 1);
  CHECK(opened[0].first == filament);
  CHECK(opened[0].second == "rpc");
}

TEST_CASE("A request the peer never answers completes with Errc::timeout at its deadline") {
  Harness h;
  auto [one, two] = h.socket_pair();
  auto a = h.unix_link(std::move(one), Side::initiator, "peer-b", quiet());
  auto b = h.unix_link(std::move(two), Side::acceptor, "peer-a", quiet());
  Harness::start(a);
  Harness::start(b);  // no receiver: the request just queues on B

  constexpr auto kTimeout = milliseconds(150);
  const auto started = h.clock().now();
  auto reply = h.spawn([a, kTimeout] { return a->request(0, hello("link_test"), kTimeout); });
  REQUIRE(h.run_until([&] { return reply->has_value(); }));
  const auto elapsed = h.clock().now() - started;

  const Result<Frame>& r = **reply;
  REQUIRE_FALSE(r.ok());
  INFO(r.error().describe());
  CHECK(r.error().code == Errc::timeout);
  CHECK(elapsed >= kTimeout);
  CHECK(elapsed < kTimeout + seconds(2));
  CHECK(b->frames_received() == 1);  // it did arrive; nobody answered
  CHECK(a->is_open());               // a timeout fails the operation, not the link
  CHECK(a->mux().pending_sends() == 0);
}

TEST_CASE("An async post gets its completion callback with the peer's ack") {
  Harness h;
  std::shared_ptr<Link> a, b;
  h.started_pair(a, b);
  auto delivered = std::make_shared<std::vector<Frame>>();
  b->mux().set_receiver(0, [delivered](Frame frame) { delivered->push_back(std::move(frame)); });

  auto acked = std::make_shared<std::optional<Result<Frame>>>();
  a->post(0, hello("posted"), kGenerous, [acked](Result<Frame> r) { *acked = std::move(r); });
  CHECK_FALSE(acked->has_value());  // asynchronous: the caller goes on
  REQUIRE(h.run_until([&] { return acked->has_value(); }));

  const Result<Frame>& r = **acked;
  INFO(describe(r));
  REQUIRE(r.ok());
  CHECK(r->type == common::MessageType::ack);
  CHECK(r->is_reply());
  REQUIRE(delivered->size() == 1);
  CHECK(delivered->front().type == common::MessageType::client_hello);
  CHECK(delivered->front().wants_ack());
  CHECK(delivered->front().txn == r->txn);
  auto msg = common::from_frame<common::ClientHelloMsg>(delivered->front());
  REQUIRE(msg.ok());
  CHECK(msg->client == "posted");
}

TEST_CASE("A request whose frame refers to the caller's bytes sends them as they were when it was queued") {
  Harness h;
  std::shared_ptr<Link> a, b;
  h.started_pair(a, b);
  auto delivered = std::make_shared<std::vector<Frame>>();
  b->mux().set_receiver(0, [peer = b.get(), delivered](Frame frame) {
    peer->reply(frame,
                common::to_frame(common::UsbDoneMsg{frame.payload.size() - common::kUsbOutHeaderBytes}));
    delivered->push_back(std::move(frame));
  });

  std::vector<std::uint8_t> data(63 * 1024);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 13 + i / 251);
  const std::vector<std::uint8_t> sent = data;
  auto answer = std::make_shared<std::optional<Result<Frame>>>();
  a->request(0, common::usb_out_frame_view(0x01, 1000, data), kGenerous,
             [answer](Result<Frame> r) { *answer = std::move(r); });
  data.assign(data.size(), 0xee);  // the frame's tail is read while request() queues it, not later
  REQUIRE(h.run_until([&] { return answer->has_value(); }));

  INFO(describe(**answer));
  REQUIRE((*answer)->ok());
  REQUIRE(delivered->size() == 1);
  auto out = common::from_frame<common::UsbOutMsg>(delivered->front());
  REQUIRE(out.ok());
  CHECK(out->endpoint == 0x01);
  CHECK(out->timeout_ms == 1000);
  CHECK(out->data == sent);
}

TEST_CASE("receive() polls with would_block, times out, and takes a notify sent by the peer") {
  Harness h;
  std::shared_ptr<Link> a, b;
  h.started_pair(a, b);

  auto polled = h.spawn([a] { return a->receive(0, Duration::zero()); });
  REQUIRE(h.run_until([&] { return polled->has_value(); }));
  REQUIRE_FALSE((*polled)->ok());
  CHECK((*polled)->error().code == Errc::would_block);

  constexpr auto kTimeout = milliseconds(100);
  const auto started = h.clock().now();
  auto waited = h.spawn([a, kTimeout] { return a->receive(0, kTimeout); });
  REQUIRE(h.run_until([&] { return waited->has_value(); }));
  const auto elapsed = h.clock().now() - started;
  REQUIRE_FALSE((*waited)->ok());
  CHECK((*waited)->error().code == Errc::timeout);
  CHECK(elapsed >= kTimeout);
  CHECK(elapsed < kTimeout + seconds(2));

  auto received = h.spawn([a] { return a->receive(0, kGenerous); });
  // The reader waits first (its deadline is armed), then the peer sends.
  REQUIRE(h.run_until([&] { return a->mux().next_deadline() != common::kNever; }));
  b->notify(0, hello("notified"));
  REQUIRE(h.run_until([&] { return received->has_value(); }));
  const Result<Frame>& r = **received;
  INFO(describe(r));
  REQUIRE(r.ok());
  CHECK(r->type == common::MessageType::client_hello);
  CHECK(r->txn == 0);  // a notify asks for no confirmation
  CHECK_FALSE(r->wants_ack());
  CHECK_FALSE(r->wants_reply());
  auto msg = common::from_frame<common::ClientHelloMsg>(*r);
  REQUIRE(msg.ok());
  CHECK(msg->client == "notified");
}

TEST_CASE("Closing the peer's link fails a pending request with Errc::link_lost and calls on_close once") {
  Harness h;
  auto [one, two] = h.socket_pair();
  auto a = h.unix_link(std::move(one), Side::initiator, "peer-b", quiet());
  auto b = h.unix_link(std::move(two), Side::acceptor, "peer-a", quiet());
  auto a_closed = Harness::start(a);
  auto b_closed = Harness::start(b);

  const auto started = h.clock().now();
  auto reply = h.spawn([a] { return a->request(0, hello("link_test"), kGenerous); });
  REQUIRE(h.run_until([&] { return b->frames_received() == 1; }));
  REQUIRE_FALSE(reply->has_value());
  b->close(common::Error(Errc::closed, "test closes B"));
  REQUIRE(h.run_until([&] { return reply->has_value(); }));

  const Result<Frame>& r = **reply;
  REQUIRE_FALSE(r.ok());
  INFO(r.error().describe());
  CHECK(r.error().code == Errc::link_lost);
  CHECK(h.clock().now() - started < kGenerous);  // at once, not at the deadline
  CHECK_FALSE(a->is_open());
  CHECK(a_closed->calls == 1);
  REQUIRE(a_closed->reason.has_value());
  CHECK(a_closed->reason->code == Errc::link_lost);
  CHECK_FALSE(a_closed->reason->detail.empty());
  CHECK(b_closed->calls == 1);
  REQUIRE(b_closed->reason.has_value());
  CHECK(b_closed->reason->code == Errc::closed);
  CHECK(b_closed->reason->detail == "test closes B");

  // Closing again changes nothing; a later request fails at once.
  a->close(common::Error(Errc::closed, "again"));
  auto late = h.spawn([a] { return a->request(0, hello("late"), kGenerous); });
  REQUIRE(h.run_until([&] { return late->has_value(); }));
  REQUIRE_FALSE((*late)->ok());
  CHECK((*late)->error().code == Errc::link_lost);
  CHECK(a_closed->calls == 1);
  CHECK(b_closed->calls == 1);
}

TEST_CASE("A frame above the receiver's max_payload closes the link with Errc::frame_too_large") {
  Harness h;
  LogCapture logs;
  auto [raw, mine] = h.socket_pair();
  auto a = h.unix_link(std::move(mine), Side::acceptor, "raw-peer-7", quiet());
  auto closed = Harness::start(a);

  // A header announcing 2 MiB of client_hello on filament 0; the payload never comes.
  // clang-format off
  const std::array<std::uint8_t, common::kFrameHeaderSize> header{
      0x00, 0x20, 0x00, 0x00,  // payload length 2 MiB
      common::kProtocolVersion,
      0x00,                    // flags
      0x00, 0x40,              // client_hello
      0, 0, 0, 0,              // filament
      0, 0, 0, 0,              // txn
  };
  // clang-format on
  asio::write(raw, asio::buffer(header));
  auto peer_saw = read_error(raw);
  REQUIRE(h.run_until([&] { return closed->calls > 0; }));

  REQUIRE(closed->reason.has_value());
  INFO(closed->reason->describe());
  CHECK(closed->reason->code == Errc::frame_too_large);
  CHECK(closed->calls == 1);
  INFO(logs.text());
  CHECK(logs.has({"raw-peer-7", "protocol_error", "frame_too_large"}));
  // The one connection is closed: the peer reads end of stream.
  REQUIRE(h.run_until([&] { return peer_saw->has_value(); }));
  CHECK(**peer_saw == asio::error::eof);
}

TEST_CASE("Garbage bytes close the link with a protocol_error log line") {
  Harness h;
  LogCapture logs;
  auto [raw, mine] = h.socket_pair();
  auto a = h.unix_link(std::move(mine), Side::acceptor, "raw-peer-8", quiet());
  auto closed = Harness::start(a);

  const std::string garbage = "ZZZZZZZZ this is not a dtubroker frame ZZZZZZZZ";
  asio::write(raw, asio::buffer(garbage));
  REQUIRE(h.run_until([&] { return closed->calls > 0; }));

  REQUIRE(closed->reason.has_value());
  INFO(closed->reason->describe());
  CHECK(closed->reason->code == Errc::bad_version);  // 'Z' where the version byte goes
  CHECK(a->frames_received() == 0);
  INFO(logs.text());
  CHECK(logs.has({"raw-peer-8", "protocol_error"}));
}

TEST_CASE("shutdown() delivers its last frame after earlier ones, drops later traffic and closes with its reason") {
  Harness h;
  auto [one, two] = h.socket_pair();
  auto a = h.unix_link(std::move(one), Side::acceptor, "peer-b", quiet());
  auto b = h.unix_link(std::move(two), Side::initiator, "peer-a", quiet());
  auto a_seen = std::make_shared<std::vector<std::string>>();
  auto b_seen = std::make_shared<std::vector<std::string>>();
  a->mux().set_receiver(0, [a_seen](Frame f) { a_seen->push_back(std::string(f.payload_text())); });
  b->mux().set_receiver(0, [b_seen](Frame f) {
    auto msg = common::from_frame<common::ClientHelloMsg>(f);
    b_seen->push_back(msg.ok() ? msg->client : "?");
  });
  auto a_closed = Harness::start(a);
  auto b_closed = Harness::start(b);

  a->notify(0, hello("first"));
  a->shutdown(hello("last"), common::Error(Errc::closed, "lease over"));
  CHECK(a->is_shutting_down());
  a->notify(0, hello("too late"));                            // dropped: after the last frame
  a->shutdown(hello("second last"), common::Error(Errc::refused, "ignored"));  // ignored
  b->notify(0, hello("from b"));                              // read by a, not handled
  REQUIRE(h.run_until([&] { return a_closed->calls > 0 && b_closed->calls > 0; }));

  CHECK(*b_seen == std::vector<std::string>{"first", "last"});
  CHECK(a_seen->empty());
  REQUIRE(a_closed->reason.has_value());
  CHECK(a_closed->reason->code == Errc::closed);
  CHECK(a_closed->reason->detail == "lease over");
  REQUIRE(b_closed->reason.has_value());
  CHECK(b_closed->reason->code == Errc::link_lost);  // b saw the stream end after the last frame
  CHECK(a_closed->calls == 1);
}

TEST_CASE("shutdown() closes the link at write_timeout when the peer never closes its side") {
  Harness h;
  auto [raw, mine] = h.socket_pair();  // the raw end reads nothing and keeps its side open
  constexpr auto kWriteTimeout = milliseconds(150);
  Link::Options options = quiet();
  options.write_timeout = kWriteTimeout;
  auto a = h.unix_link(std::move(mine), Side::acceptor, "lingering-peer", options);
  auto closed = Harness::start(a);

  const auto started = h.clock().now();
  a->shutdown(hello("last"), common::Error(Errc::closed, "going away"));
  REQUIRE(h.run_until([&] { return closed->calls > 0; }));
  const auto elapsed = h.clock().now() - started;

  REQUIRE(closed->reason.has_value());
  CHECK(closed->reason->detail == "going away");
  CHECK(elapsed >= kWriteTimeout);
  CHECK(elapsed < kWriteTimeout + seconds(2));
  // The last frame reached the peer's socket before the close.
  std::array<std::uint8_t, 256> buffer{};
  std::error_code ec;
  const std::size_t n = raw.read_some(asio::buffer(buffer), ec);
  CHECK_FALSE(ec);
  CHECK(n > common::kFrameHeaderSize);
}

TEST_CASE("A link whose peer sends nothing for heartbeat_misses intervals closes with Errc::timeout") {
  Harness h;
  LogCapture logs;
  auto [raw, mine] = h.socket_pair();  // the raw end never writes (and never reads)
  constexpr auto kInterval = milliseconds(50);
  constexpr std::uint32_t kMisses = 3;
  Link::Options options;
  options.heartbeat_interval = kInterval;
  options.heartbeat_misses = kMisses;
  const auto started = h.clock().now();
  auto a = h.unix_link(std::move(mine), Side::initiator, "silent-peer", options);
  auto closed = Harness::start(a);

  REQUIRE(h.run_until([&] { return closed->calls > 0; }));
  const auto elapsed = h.clock().now() - started;

  REQUIRE(closed->reason.has_value());
  INFO(closed->reason->describe());
  CHECK(closed->reason->code == Errc::timeout);
  CHECK(elapsed >= kInterval * kMisses);
  CHECK(elapsed < kInterval * kMisses + seconds(1));
  INFO(logs.text());
  CHECK(logs.has({"silent-peer", "peer_silent"}));
}

TEST_CASE("Two idle links with heartbeats stay open past five intervals and sample the clock offset") {
  Harness h;
  auto [one, two] = h.socket_pair();
  constexpr auto kInterval = milliseconds(50);
  Link::Options options;
  options.heartbeat_interval = kInterval;
  options.heartbeat_misses = 3;
  auto a = h.unix_link(std::move(one), Side::initiator, "peer-b", options);
  auto b = h.unix_link(std::move(two), Side::acceptor, "peer-a", options);
  auto a_closed = Harness::start(a);
  auto b_closed = Harness::start(b);

  h.run_for(8 * kInterval);  // silence would have killed the link after 3

  CHECK(a->is_open());
  CHECK(b->is_open());
  CHECK(a_closed->calls == 0);
  CHECK(b_closed->calls == 0);
  CHECK(a->frames_received() >= 5);  // heartbeats, nothing else
  CHECK(b->frames_received() >= 5);
  for (const auto& link : {a, b}) {
    const auto sample = link->clock_offset();
    REQUIRE(sample.has_value());
    INFO("offset " << sample->offset.count() << " ns, error " << sample->error.count() << " ns");
    CHECK(sample->error >= Duration::zero());
    // One clock on both ends: the true offset is 0, which lies within offset +/- error.
    CHECK(std::chrono::abs(sample->offset) <= sample->error + milliseconds(1));
    CHECK(std::chrono::abs(sample->offset) < milliseconds(50));
  }
}

TEST_CASE("The acceptor answers a heartbeat at once, echoing it, long before its own timer") {
  Harness h;
  auto [raw, mine] = h.socket_pair();  // the raw end plays the DTU
  Link::Options options;
  options.heartbeat_interval = seconds(60);  // its own timer cannot fire during the test
  auto a = h.unix_link(std::move(mine), Side::acceptor, "raw-dtu", options);
  auto closed = Harness::start(a);

  common::HeartbeatMsg ping;
  ping.sent_us = 1234567;
  asio::write(raw, asio::buffer(common::encode_frame(common::to_frame(ping))));

  common::FrameDecoder decoder;
  std::optional<Frame> answer;
  std::array<std::uint8_t, 256> buffer{};
  bool reading = false;
  const bool answered = h.run_until([&] {
    if (!reading && !answer) {
      reading = true;
      raw.async_read_some(asio::buffer(buffer), [&](std::error_code ec, std::size_t n) {
        reading = false;
        if (ec) return;
        decoder.feed({buffer.data(), n});
        Frame frame;
        if (decoder.next(frame) == common::FrameDecoder::Status::complete) answer = std::move(frame);
      });
    }
    return answer.has_value();
  }, kGenerous);
  REQUIRE(answered);
  CHECK(answer->type == common::MessageType::heartbeat);
  auto pong = common::from_frame<common::HeartbeatMsg>(*answer);
  REQUIRE(pong.ok());
  REQUIRE(pong->echo_sent_us.has_value());
  CHECK(*pong->echo_sent_us == ping.sent_us);
  CHECK(pong->echo_received_us.has_value());
  CHECK(a->is_open());
  CHECK(closed->calls == 0);
  raw.cancel();
}

TEST_CASE("A link keeps its write buffers through a burst and gives them back once idle, even at 100 ms heartbeats") {
  Harness h;
  auto [one, two] = h.socket_pair();
  Link::Options options;
  options.heartbeat_interval = milliseconds(100);  // heartbeats are writes too: they must not count
  options.heartbeat_misses = 3;
  auto a = h.unix_link(std::move(one), Side::initiator, "peer-b", options);
  auto b = h.unix_link(std::move(two), Side::acceptor, "peer-a", options);
  auto a_closed = Harness::start(a);
  auto b_closed = Harness::start(b);

  a->notify(0, hello(std::string(256 * 1024, 'x')));  // a burst: one 256 KiB frame, queued for b's receive()
  h.run_for(milliseconds(50));
  CHECK(a->write_buffer_capacity() >= 256 * 1024);  // kept right after the burst
  h.run_for(Link::kBufferIdle + milliseconds(600));  // several heartbeats written meanwhile
  CHECK(a->write_buffer_capacity() <= 2 * Link::kIdleBufferBytes);
  CHECK(a->is_open());
  CHECK(b->is_open());
}

TEST_CASE("A link to a peer that never reads closes with Errc::send_queue_full at the queue cap") {
  Harness h;
  LogCapture logs;
  auto [raw, mine] = h.socket_pair();  // the raw end never reads
  mine.set_option(asio::socket_base::send_buffer_size(64 * 1024));
  Link::Options options = quiet();
  options.max_send_queue = 64 * 1024;
  auto a = h.unix_link(std::move(mine), Side::initiator, "slow-peer", options);
  auto closed = Harness::start(a);

  Frame big;
  big.type = common::MessageType::device_attached;
  big.flags = common::kFlagBinary;
  big.payload.assign(16 * 1024, 0xab);
  // 4096 notifies would be 64 MiB: the link must give up long before.
  constexpr std::size_t kAttempts = 4096;
  std::size_t sent = 0;
  for (; sent < kAttempts && a->is_open(); ++sent) {
    a->notify(0, big);
    h.io().poll();  // let the writer move what the socket takes
  }
  REQUIRE(h.run_until([&] { return closed->calls > 0; }));

  INFO("notifies before the close: " << sent);
  CHECK(sent < kAttempts);
  REQUIRE(closed->reason.has_value());
  INFO(closed->reason->describe());
  CHECK(closed->reason->code == Errc::send_queue_full);
  INFO(logs.text());
  CHECK(logs.has({"slow-peer", "slow_peer"}));
}

TEST_CASE("A link whose one write stays blocked past write_timeout closes as a slow peer") {
  Harness h;
  LogCapture logs;
  auto [raw, mine] = h.socket_pair();  // the raw end never reads
  mine.set_option(asio::socket_base::send_buffer_size(64 * 1024));
  constexpr auto kWriteTimeout = milliseconds(150);
  Link::Options options = quiet();
  options.write_timeout = kWriteTimeout;
  auto a = h.unix_link(std::move(mine), Side::initiator, "stuck-peer", options);
  auto closed = Harness::start(a);

  Frame big;  // far more than the socket buffers, well under the queue cap
  big.type = common::MessageType::device_attached;
  big.flags = common::kFlagBinary;
  big.payload.assign(common::kDefaultMaxPayload, 0xcd);
  const auto started = h.clock().now();
  a->notify(0, big);
  REQUIRE(h.run_until([&] { return closed->calls > 0; }));
  const auto elapsed = h.clock().now() - started;

  REQUIRE(closed->reason.has_value());
  INFO(closed->reason->describe());
  CHECK(closed->reason->code == Errc::send_queue_full);
  CHECK(elapsed >= kWriteTimeout);
  CHECK(elapsed < kWriteTimeout + seconds(2));
  INFO(logs.text());
  CHECK(logs.has({"stuck-peer", "slow_peer", "write blocked"}));
}

namespace {

using TlsResult = Result<std::unique_ptr<common::TlsTransport>>;

constexpr auto kHandshakeTimeout = seconds(5);

common::Bytes key_of(std::uint8_t fill) {
  return common::Bytes(32, fill);
}

std::shared_ptr<asio::ssl::context> server_context_for(std::string identity, common::Bytes key) {
  return common::make_psk_server_context([identity = std::move(identity), key = std::move(key)](
                                             std::string_view offered) -> std::optional<common::Bytes> {
    if (offered == identity) return key;
    return std::nullopt;
  });
}

// The server's half: accept one TCP connection, then tls_accept on it.
Outcome<TlsResult> serve_one(Harness& h, asio::ip::tcp::acceptor& acceptor,
                             std::shared_ptr<asio::ssl::context> context, Duration timeout) {
  return h.spawn([&acceptor, context, timeout]() -> asio::awaitable<TlsResult> {
    auto [ec, socket] = co_await acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) co_return common::Error(Errc::io_error, "accept failed: " + ec.message());
    auto op = common::tls_accept(std::move(socket), *context, timeout);
    auto r = co_await std::move(op);
    co_return r;
  });
}

// The client's half: tcp_connect, then tls_connect with (identity, key).
Outcome<TlsResult> dial(Harness& h, std::uint16_t port, std::shared_ptr<asio::ssl::context> context,
                        std::string identity, common::Bytes key) {
  return h.spawn([port, context, identity, key]() -> asio::awaitable<TlsResult> {
    const common::Endpoint endpoint{"127.0.0.1", port};  // outlives the connect
    auto connect = common::tcp_connect(endpoint, kHandshakeTimeout);
    auto socket = co_await std::move(connect);
    if (!socket.ok()) co_return socket.error();
    auto op = common::tls_connect(std::move(socket.value()), *context, identity, key, kHandshakeTimeout);
    auto r = co_await std::move(op);
    co_return r;
  });
}

}  // namespace

TEST_CASE("A link over TLS-PSK transports carries a request and its reply") {
  auto client_context = common::make_psk_client_context();
  auto server_context = server_context_for("dtu-1", key_of(0x11));
  Harness h;
  auto acceptor = common::tcp_listen(h.executor(), common::Endpoint{"127.0.0.1", 0});
  REQUIRE(acceptor.ok());
  const std::uint16_t port = acceptor->local_endpoint().port();

  auto served = serve_one(h, *acceptor, server_context, kHandshakeTimeout);
  auto dialled = dial(h, port, client_context, "dtu-1", key_of(0x11));
  REQUIRE(h.run_until([&] { return served->has_value() && dialled->has_value(); }));
  TlsResult& server = **served;
  TlsResult& client = **dialled;
  INFO("server: " << (server.ok() ? "ok" : server.error().describe()));
  INFO("client: " << (client.ok() ? "ok" : client.error().describe()));
  REQUIRE(server.ok());
  REQUIRE(client.ok());
  CHECK(common::accepted_psk_identity(server.value()->ssl()) == std::optional<std::string>("dtu-1"));

  auto manager = h.link(std::move(server.value()), Side::acceptor, "dtu-1", quiet());
  auto dtu = h.link(std::move(client.value()), Side::initiator, "manager", quiet());
  auto manager_closed = Harness::start(manager);
  auto dtu_closed = Harness::start(dtu);
  answer_requests(manager.get(), 0, "m-tls");

  auto reply = h.spawn([dtu] { return dtu->request(0, hello("dtu-1"), kGenerous); });
  REQUIRE(h.run_until([&] { return reply->has_value(); }));
  const Result<Frame>& r = **reply;
  INFO(describe(r));
  REQUIRE(r.ok());
  auto msg = common::from_frame<common::ClientWelcomeMsg>(*r);
  REQUIRE(msg.ok());
  CHECK(msg->manager == "m-tls");
  CHECK(dtu->transport().ssl() != nullptr);
  CHECK(manager_closed->calls == 0);
  CHECK(dtu_closed->calls == 0);
}

namespace {

// A TLS pair over loopback, both handshakes done: (server, client).
std::pair<std::unique_ptr<common::TlsTransport>, std::unique_ptr<common::TlsTransport>> tls_pair(Harness& h) {
  auto client_context = common::make_psk_client_context();
  auto server_context = server_context_for("dtu-1", key_of(0x11));
  auto acceptor = common::tcp_listen(h.executor(), common::Endpoint{"127.0.0.1", 0});
  REQUIRE(acceptor.ok());
  auto served = serve_one(h, *acceptor, server_context, kHandshakeTimeout);
  auto dialled = dial(h, acceptor->local_endpoint().port(), client_context, "dtu-1", key_of(0x11));
  REQUIRE(h.run_until([&] { return served->has_value() && dialled->has_value(); }));
  REQUIRE((**served).ok());
  REQUIRE((**dialled).ok());
  return {std::move((**served).value()), std::move((**dialled).value())};
}

}  // namespace

TEST_CASE("Writing over TLS to a peer that reset the connection fails the write without SIGPIPE") {
  // The default disposition, as in a daemon that never touches SIGPIPE: a write(2) to the reset
  // socket would end this process.
  std::signal(SIGPIPE, SIG_DFL);
  Harness h;
  auto pair = tls_pair(h);
  auto& server = pair.first;
  auto& client = pair.second;
  server->socket().set_option(asio::socket_base::linger(true, 0));  // close sends a reset
  server->close();
  const std::vector<std::uint8_t> chunk(64 * 1024, 0x5a);
  std::optional<common::IoResult> failed;
  for (int i = 0; i < 50 && !failed; ++i) {
    auto write = h.spawn([&client, &chunk] { return client->write_all(asio::buffer(chunk)); });
    REQUIRE(h.run_until([&] { return write->has_value(); }));
    if ((**write).ec) failed = **write;
  }
  REQUIRE(failed.has_value());
  INFO(failed->ec.message());
  CHECK((failed->ec == asio::error::broken_pipe || failed->ec == asio::error::connection_reset));
}

namespace {

// Frame `seq` of the order test: a binary frame of `size` bytes, its first four the sequence
// number, the rest a byte of it.
Frame numbered(std::uint32_t seq, std::size_t size) {
  Frame frame;
  frame.type = common::MessageType::device_attached;
  frame.flags = common::kFlagBinary;
  frame.payload.assign(size, static_cast<std::uint8_t>(seq * 7u));
  for (std::size_t i = 0; i < 4; ++i) frame.payload[i] = static_cast<std::uint8_t>(seq >> (8 * i));
  return frame;
}

}  // namespace

TEST_CASE("Small and large frames over TLS to a peer not reading yet arrive whole and in order") {
  // Small frames are written in place (Link::flush), large ones by the writer; with the peer's
  // socket full, in-place writes come back short or blocked and the writer takes over from the
  // first unwritten byte (OpenSSL may hold part of a record). Sizes from 1 byte to 40 KiB.
  Harness h;
  auto pair = tls_pair(h);
  // Small socket buffers: the peer's socket is full after a few dozen in-place writes.
  pair.second->socket().set_option(asio::socket_base::send_buffer_size(32 * 1024));
  pair.first->socket().set_option(asio::socket_base::receive_buffer_size(32 * 1024));
  Link::Options options = quiet();
  options.max_send_queue = 64 * 1024 * 1024;
  auto receiver = h.link(std::move(pair.first), Side::acceptor, "sender", options);
  auto sender = h.link(std::move(pair.second), Side::initiator, "receiver", options);
  auto sender_closed = Harness::start(sender);

  constexpr std::uint32_t kFrames = 600;
  // The first 200 all small, so that in-place writes meet the full socket; then mixed.
  auto size_of = [](std::uint32_t seq) -> std::size_t {
    if (seq >= 200 && seq % 7 == 3) return 40 * 1024;  // the writer's
    return 4 + (seq * 37u) % (4 * 1024 - 64);          // up to the in-place limit
  };
  std::size_t total = 0;
  for (std::uint32_t seq = 0; seq < kFrames; ++seq) {
    sender->notify(0, numbered(seq, size_of(seq)));
    total += size_of(seq);
    h.io().poll();  // the posted flush, or the writer, moves what the socket takes now
  }
  h.run_for(milliseconds(50));  // whatever fits in the socket buffers is written meanwhile
  INFO("payload bytes sent: " << total);

  auto got = std::make_shared<std::vector<Frame>>();
  receiver->mux().set_receiver(0, [got](Frame f) { got->push_back(std::move(f)); });
  auto receiver_closed = Harness::start(receiver);
  REQUIRE(h.run_until([&] { return got->size() >= kFrames; }));

  std::size_t first_wrong = kFrames;
  for (std::uint32_t seq = 0; seq < kFrames && first_wrong == kFrames; ++seq) {
    if ((*got)[seq].payload != numbered(seq, size_of(seq)).payload) first_wrong = seq;
  }
  CHECK_MESSAGE(first_wrong == kFrames, "frame " << first_wrong << " is not the one sent in that place");
  CHECK(got->size() == kFrames);
  CHECK(sender_closed->calls == 0);
  CHECK(receiver_closed->calls == 0);
}

TEST_CASE("A TLS read reports stream_truncated when the peer closes without close_notify, and fails after close") {
  Harness h;
  auto pair = tls_pair(h);
  auto& server = pair.first;
  auto& client = pair.second;
  std::vector<std::uint8_t> buffer(1024);
  const std::string greeting = "hello";
  auto write = h.spawn([&server, &greeting] { return server->write_all(asio::buffer(greeting)); });
  REQUIRE(h.run_until([&] { return write->has_value(); }));
  auto read = h.spawn([&client, &buffer] { return client->read_some(asio::buffer(buffer)); });
  REQUIRE(h.run_until([&] { return read->has_value(); }));
  REQUIRE_FALSE((**read).ec);
  CHECK(std::string(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>((**read).bytes)) == greeting);

  server->close();  // as every peer of ours closes: no close_notify
  auto truncated = h.spawn([&client, &buffer] { return client->read_some(asio::buffer(buffer)); });
  REQUIRE(h.run_until([&] { return truncated->has_value(); }));
  CHECK((**truncated).ec == asio::ssl::error::stream_truncated);

  client->close();
  auto after = h.spawn([&client, &buffer] { return client->read_some(asio::buffer(buffer)); });
  REQUIRE(h.run_until([&] { return after->has_value(); }));
  CHECK((**after).ec == asio::error::operation_aborted);
}

TEST_CASE("A wrong TLS key makes tls_connect and tls_accept fail with Errc::auth_failed") {
  auto client_context = common::make_psk_client_context();
  auto server_context = server_context_for("dtu-1", key_of(0x11));
  Harness h;
  auto acceptor = common::tcp_listen(h.executor(), common::Endpoint{"127.0.0.1", 0});
  REQUIRE(acceptor.ok());
  const std::uint16_t port = acceptor->local_endpoint().port();

  auto served = serve_one(h, *acceptor, server_context, kHandshakeTimeout);
  auto dialled = dial(h, port, client_context, "dtu-1", key_of(0x22));
  REQUIRE(h.run_until([&] { return served->has_value() && dialled->has_value(); }));
  const TlsResult& server = **served;
  const TlsResult& client = **dialled;
  REQUIRE_FALSE(server.ok());
  REQUIRE_FALSE(client.ok());
  INFO("server: " << server.error().describe());
  INFO("client: " << client.error().describe());
  CHECK(server.error().code == Errc::auth_failed);
  CHECK(client.error().code == Errc::auth_failed);
}

TEST_CASE("tls_accept fails with Errc::timeout when the client connects but never starts TLS") {
  auto server_context = server_context_for("dtu-1", key_of(0x11));
  Harness h;
  auto acceptor = common::tcp_listen(h.executor(), common::Endpoint{"127.0.0.1", 0});
  REQUIRE(acceptor.ok());
  asio::ip::tcp::socket idle(h.io());
  idle.connect(acceptor->local_endpoint());  // loopback: the backlog takes it at once

  constexpr auto kTimeout = milliseconds(200);
  const auto started = h.clock().now();
  auto served = serve_one(h, *acceptor, server_context, kTimeout);
  REQUIRE(h.run_until([&] { return served->has_value(); }));
  const auto elapsed = h.clock().now() - started;

  const TlsResult& server = **served;
  REQUIRE_FALSE(server.ok());
  INFO(server.error().describe());
  CHECK(server.error().code == Errc::timeout);
  CHECK(elapsed >= kTimeout);
  CHECK(elapsed < kTimeout + seconds(2));
}
