#include "dtu/common/filament_mux.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtu/common/frame_decoder.hpp"
#include "dtu/common/messages.hpp"

namespace dtu::common {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Side = FilamentMux::Side;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A link in memory: an initiator and an acceptor mux whose outboxes are carried to each other
// through the real encoder and decoder, and one ManualClock for both.
struct Link {
  ManualClock clock;
  FilamentMux a{Side::initiator};
  FilamentMux b{Side::acceptor};
  std::vector<Error> a_errors;  // on_frame protocol errors at a
  std::vector<Error> b_errors;
  std::vector<Frame> a_sent;  // every frame a put on the wire
  std::vector<Frame> b_sent;

  // Carries frames both ways until both outboxes are empty.
  void pump() {
    while (a.has_output() || b.has_output()) {
      carry(a, b, a_sent, b_errors);
      carry(b, a, b_sent, a_errors);
    }
  }

  // Fires every deadline at or before the clock's time, on both sides.
  void tick() {
    a.tick(clock.now());
    b.tick(clock.now());
  }

  void advance(Duration d) {
    clock.advance(d);
    tick();
  }

  MonoTime in(Duration d) const { return clock.now() + d; }

 private:
  void carry(FilamentMux& from, FilamentMux& to, std::vector<Frame>& log, std::vector<Error>& errors) {
    for (Frame& frame : from.take_output()) {
      log.push_back(frame);
      FrameDecoder decoder;
      decoder.feed(encode_frame(frame));
      Frame wire;
      REQUIRE(decoder.next(wire) == FrameDecoder::Status::complete);
      auto result = to.on_frame(std::move(wire), clock.now());
      if (!result.ok()) errors.push_back(result.error());
    }
  }
};

// Records the completions of one operation.
struct Done {
  int calls = 0;
  std::optional<Result<Frame>> result;

  FilamentMux::SendDone send() {
    return [this](Result<Frame> r) {
      ++calls;
      result = std::move(r);
    };
  }
  bool ok() const { return result && result->ok(); }
  std::error_code code() const { return result && !result->ok() ? result->error().code : std::error_code(); }
  std::string detail() const { return result && !result->ok() ? result->error().detail : std::string(); }
  const Frame& frame() const { return result->value(); }
};

struct CloseResult {
  int calls = 0;
  std::optional<Result<void>> result;

  FilamentMux::CloseDone done() {
    return [this](Result<void> r) {
      ++calls;
      result = std::move(r);
    };
  }
  bool ok() const { return result && result->ok(); }
  std::error_code code() const { return result && !result->ok() ? result->error().code : std::error_code(); }
};

Frame hello(std::string client) {
  return to_frame(ClientHelloMsg{std::move(client)});
}

std::string client_of(const Frame& f) {
  auto msg = from_frame<ClientHelloMsg>(f);
  REQUIRE(msg.ok());
  return msg->client;
}

// Opens a filament from `a` and returns its id once the peer knows it.
std::uint32_t open_from_a(Link& link, std::string name = "data") {
  auto id = link.a.open(std::move(name));
  REQUIRE(id.ok());
  link.pump();
  return *id;
}

// --- Opening --------------------------------------------------------------------------------

TEST_CASE("FilamentMux open shows the peer's open handler the name and an id of the opener's parity") {
  Link link;
  std::vector<std::pair<std::uint32_t, std::string>> b_saw;
  std::vector<std::pair<std::uint32_t, std::string>> a_saw;
  link.b.set_open_handler([&](std::uint32_t id, const std::string& name) { b_saw.emplace_back(id, name); });
  link.a.set_open_handler([&](std::uint32_t id, const std::string& name) { a_saw.emplace_back(id, name); });

  auto first = link.a.open("print");
  auto second = link.a.open("scan");
  auto from_b = link.b.open("events");
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  REQUIRE(from_b.ok());
  CHECK(*first % 2 == 1);
  CHECK(*second % 2 == 1);
  CHECK(*second != *first);
  CHECK(*from_b % 2 == 0);
  CHECK(*from_b != FilamentMux::kControlFilament);
  CHECK(link.a.is_open(*first));  // usable at once, before the peer has heard of it
  CHECK_FALSE(link.b.is_open(*first));

  link.pump();
  REQUIRE(b_saw.size() == 2);
  CHECK(b_saw[0] == std::make_pair(*first, std::string("print")));
  CHECK(b_saw[1] == std::make_pair(*second, std::string("scan")));
  REQUIRE(a_saw.size() == 1);
  CHECK(a_saw[0] == std::make_pair(*from_b, std::string("events")));
  CHECK(link.b.is_open(*first));
  CHECK(link.a.is_open(*from_b));
  CHECK(link.a_errors.empty());
  CHECK(link.b_errors.empty());
}

TEST_CASE("FilamentMux open sends filament_open with txn 0 and no flags on the new id") {
  Link link;
  const std::uint32_t id = open_from_a(link, "print");
  REQUIRE(link.a_sent.size() == 1);
  const Frame& f = link.a_sent[0];
  CHECK(f.type == MessageType::filament_open);
  CHECK(f.filament == id);
  CHECK(f.txn == 0);
  CHECK(f.flags == 0);
  CHECK(from_frame<FilamentOpenMsg>(f)->name == "print");
}

TEST_CASE("FilamentMux control filament is open from the start and cannot be closed") {
  Link link;
  CHECK(link.a.is_open(FilamentMux::kControlFilament));
  CHECK(link.b.is_open(FilamentMux::kControlFilament));
  CloseResult closed;
  link.a.close(FilamentMux::kControlFilament, "no", closed.done());
  CHECK(closed.calls == 1);
  CHECK(closed.code() == make_error_code(Errc::closed));
  CHECK(link.a.is_open(FilamentMux::kControlFilament));
}

TEST_CASE("FilamentMux treats a filament_open with an id of the receiver's own parity as a protocol error") {
  Link link;
  // b is the acceptor: even ids are b's to open.
  auto on_b = link.b.on_frame(to_frame(FilamentOpenMsg{"hijack"}, 2), link.clock.now());
  REQUIRE_FALSE(on_b.ok());
  CHECK(on_b.error().code == make_error_code(Errc::malformed_frame));
  CHECK(contains(on_b.error().detail, "2"));
  CHECK_FALSE(link.b.is_open(2));

  auto on_a = link.a.on_frame(to_frame(FilamentOpenMsg{"hijack"}, 7), link.clock.now());
  REQUIRE_FALSE(on_a.ok());
  CHECK(on_a.error().code == make_error_code(Errc::malformed_frame));
}

TEST_CASE("FilamentMux treats a filament_open of the control filament or of an open id as a protocol error") {
  Link link;
  auto control = link.b.on_frame(to_frame(FilamentOpenMsg{"x"}, 0), link.clock.now());
  REQUIRE_FALSE(control.ok());
  CHECK(control.error().code == make_error_code(Errc::malformed_frame));

  const std::uint32_t id = open_from_a(link);
  auto again = link.b.on_frame(to_frame(FilamentOpenMsg{"again"}, id), link.clock.now());
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == make_error_code(Errc::malformed_frame));
}

TEST_CASE("FilamentMux reports a filament_open without a name as bad_payload") {
  Link link;
  Frame f = to_frame(FilamentOpenMsg{"x"}, 3);
  const std::string empty = "{}";
  f.payload.assign(empty.begin(), empty.end());
  auto r = link.b.on_frame(f, link.clock.now());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == make_error_code(Errc::bad_payload));
  CHECK_FALSE(link.b.is_open(3));
}

TEST_CASE("FilamentMux treats filament_close on the control filament as a protocol error") {
  Link link;
  auto r = link.b.on_frame(to_frame(FilamentCloseMsg{"bye"}, 0), link.clock.now());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == make_error_code(Errc::malformed_frame));
  auto unknown = link.b.on_frame(to_frame(FilamentCloseMsg{"bye"}, 41), link.clock.now());
  CHECK(unknown.ok());
}

// --- Requests and posts ---------------------------------------------------------------------

TEST_CASE("FilamentMux request completes with the peer's reply") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) {
    CHECK(f.wants_reply());
    CHECK_FALSE(f.wants_ack());
    CHECK(f.txn != 0);
    link.b.reply(f, hello("re: " + client_of(f)));
  });
  Done done;
  link.a.request(id, hello("ping"), link.in(seconds(5)), done.send());
  CHECK(link.a.pending_sends() == 1);
  CHECK(link.a.next_deadline() == link.in(seconds(5)));
  CHECK(done.calls == 0);

  link.pump();
  REQUIRE(done.calls == 1);
  REQUIRE(done.ok());
  CHECK(done.frame().is_reply());
  CHECK(done.frame().filament == id);
  CHECK(client_of(done.frame()) == "re: ping");
  CHECK(link.a.pending_sends() == 0);
  CHECK(link.a.next_deadline() == kNever);

  link.advance(seconds(10));
  CHECK(done.calls == 1);
}

TEST_CASE("FilamentMux request works on the control filament") {
  Link link;
  link.b.set_receiver(FilamentMux::kControlFilament, [&](Frame f) { link.b.reply(f, hello("pong")); });
  Done done;
  link.a.request(FilamentMux::kControlFilament, hello("ping"), link.in(seconds(1)), done.send());
  link.pump();
  REQUIRE(done.ok());
  CHECK(client_of(done.frame()) == "pong");
}

TEST_CASE("FilamentMux gives every request and post a fresh nonzero txn") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done d1, d2, d3;
  link.a.request(id, hello("1"), link.in(seconds(1)), d1.send());
  link.a.post(id, hello("2"), link.in(seconds(1)), d2.send());
  link.a.request(FilamentMux::kControlFilament, hello("3"), link.in(seconds(1)), d3.send());
  auto out = link.a.take_output();
  REQUIRE(out.size() == 3);
  CHECK(out[0].txn != 0);
  CHECK(out[1].txn != out[0].txn);
  CHECK(out[2].txn != out[1].txn);
  CHECK(out[2].txn != out[0].txn);
  CHECK(out[1].txn != 0);
}

TEST_CASE("FilamentMux request with no reply times out exactly at its deadline") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  const MonoTime deadline = link.in(seconds(5));
  Done done;
  link.a.request(id, hello("ping"), deadline, done.send());
  link.pump();  // b queues it; nobody answers
  CHECK(link.a.next_deadline() == deadline);

  link.advance(seconds(5) - milliseconds(1));
  CHECK(done.calls == 0);
  link.advance(milliseconds(1));
  CHECK(link.clock.now() == deadline);
  REQUIRE(done.calls == 1);
  CHECK(done.code() == make_error_code(Errc::timeout));
  CHECK(link.a.pending_sends() == 0);
  CHECK(link.a.next_deadline() == kNever);

  // The late reply is dropped: no second completion, no protocol error.
  link.b.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) {
    REQUIRE(r.ok());
    link.b.reply(*r, hello("late"));
  });
  link.pump();
  CHECK(done.calls == 1);
  CHECK(link.a_errors.empty());
}

TEST_CASE("FilamentMux tick before any deadline completes nothing") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done done;
  link.a.request(id, hello("ping"), link.in(seconds(1)), done.send());
  link.tick();
  link.a.tick(link.clock.now() - seconds(100));
  CHECK(done.calls == 0);
}

TEST_CASE("FilamentMux post completes with the ack once the peer's mux has it") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done done;
  link.a.post(id, hello("event"), link.in(seconds(5)), done.send());
  CHECK(done.calls == 0);
  link.pump();
  REQUIRE(done.calls == 1);
  REQUIRE(done.ok());
  CHECK(done.frame().type == MessageType::ack);
  CHECK(done.frame().is_reply());
  CHECK(done.frame().filament == id);
  CHECK(link.a.pending_sends() == 0);

  // Acked on arrival, before anyone read it: it waits in b's queue.
  std::optional<Result<Frame>> got;
  link.b.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) { got = std::move(r); });
  REQUIRE(got);
  REQUIRE(got->ok());
  CHECK((*got)->wants_ack());
  CHECK(client_of(got->value()) == "event");
}

TEST_CASE("FilamentMux post keeps the binary flag and sets ack_requested") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Frame data;
  data.type = MessageType::device_attached;
  data.flags = kFlagBinary | kFlagReply;  // the mux sets the discipline bits itself
  data.payload = {1, 2, 3};
  Done done;
  link.a.post(id, data, link.in(seconds(1)), done.send());
  auto out = link.a.take_output();
  REQUIRE(out.size() == 1);
  CHECK(out[0].flags == (kFlagBinary | kFlagAckRequested));
}

TEST_CASE("FilamentMux request completes with the mapped Errc and reason of the peer's error reply") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) { link.b.reply_error(f, Errc::not_found, "no device 1-1.4"); });
  Done done;
  link.a.request(id, hello("get"), link.in(seconds(5)), done.send());
  link.pump();
  REQUIRE(done.calls == 1);
  CHECK(done.code() == make_error_code(Errc::not_found));
  CHECK(done.detail() == "no device 1-1.4");
  CHECK(link.a.pending_sends() == 0);
}

TEST_CASE("FilamentMux maps an error reply with an unknown code to refused") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) { link.b.reply(f, to_frame(ErrorMsg{"teapot", "short and stout"})); });
  Done done;
  link.a.post(id, hello("x"), link.in(seconds(5)), done.send());
  link.pump();
  // The ack went first; the error reply for the same txn arrives too late to matter.
  REQUIRE(done.calls == 1);
  CHECK(done.ok());

  Done req;
  link.a.request(id, hello("y"), link.in(seconds(5)), req.send());
  link.pump();
  REQUIRE(req.calls == 1);
  CHECK(req.code() == make_error_code(Errc::refused));
  CHECK(req.detail() == "short and stout");
}

TEST_CASE("FilamentMux never completes a request with a success code from an error reply") {
  // {"code":"ok"} in an error reply would make an Error whose code reads as success.
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) { link.b.reply(f, to_frame(ErrorMsg{"ok", "not really"})); });
  Done done;
  link.a.request(id, hello("q"), link.in(seconds(5)), done.send());
  link.pump();
  REQUIRE(done.calls == 1);
  REQUIRE(done.result.has_value());
  REQUIRE_FALSE(done.result->ok());
  CHECK(done.code());
  CHECK(done.code() == make_error_code(Errc::refused));
  CHECK(done.detail() == "not really");
}

TEST_CASE("FilamentMux completes a request whose error reply is malformed with bad_payload") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) { link.b.reply(f, to_frame(ErrorMsg{"x", "y"})); });
  Done done;
  link.a.request(id, hello("q"), link.in(seconds(5)), done.send());
  Frame sent = link.a.take_output().at(0);
  Frame bad_error;
  bad_error.type = MessageType::error;
  bad_error.filament = id;
  bad_error.txn = sent.txn;
  bad_error.flags = kFlagReply;
  const std::string text = R"({"reason":"no code"})";
  bad_error.payload.assign(text.begin(), text.end());
  CHECK(link.a.on_frame(bad_error, link.clock.now()).ok());
  REQUIRE(done.calls == 1);
  CHECK(done.code() == make_error_code(Errc::bad_payload));
}

TEST_CASE("FilamentMux answers a request on an unknown filament with an error reply") {
  Link link;
  Frame f = hello("lost");
  f.filament = 9;
  f.txn = 77;
  f.flags = kFlagAckRequested;
  auto r = link.b.on_frame(f, link.clock.now());
  CHECK(r.ok());
  auto out = link.b.take_output();
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == MessageType::error);
  CHECK(out[0].is_reply());
  CHECK(out[0].filament == 9);
  CHECK(out[0].txn == 77);
  auto msg = from_frame<ErrorMsg>(out[0]);
  REQUIRE(msg.ok());
  CHECK(msg->code == "closed");
  CHECK(contains(msg->reason, "filament 9 is not open"));

  // A notify on an unknown filament is dropped without an answer.
  Frame n = hello("lost");
  n.filament = 9;
  CHECK(link.b.on_frame(n, link.clock.now()).ok());
  CHECK_FALSE(link.b.has_output());
}

TEST_CASE("FilamentMux request on a filament the peer never heard of fails with closed at once") {
  Link link;
  auto id = link.a.open("lost");
  REQUIRE(id.ok());
  (void)link.a.take_output();  // the filament_open never arrives
  Done req, post;
  link.a.request(*id, hello("x"), link.in(seconds(30)), req.send());
  link.a.post(*id, hello("y"), link.in(seconds(30)), post.send());
  link.pump();
  REQUIRE(req.calls == 1);
  CHECK(req.code() == make_error_code(Errc::closed));
  REQUIRE(post.calls == 1);
  CHECK(post.code() == make_error_code(Errc::closed));
  CHECK(link.clock.now() < link.in(seconds(30)));
}

TEST_CASE("FilamentMux request on a filament that is not open fails with closed") {
  Link link;
  Done done;
  link.a.request(5, hello("x"), link.in(seconds(1)), done.send());
  REQUIRE(done.calls == 1);
  CHECK(done.code() == make_error_code(Errc::closed));
  CHECK(contains(done.detail(), "filament 5"));
  CHECK_FALSE(link.a.has_output());
}

TEST_CASE("FilamentMux notify sends one way with txn 0") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::vector<Frame> got;
  link.b.set_receiver(id, [&](Frame f) { got.push_back(std::move(f)); });
  link.a.notify(id, hello("event"));
  link.pump();
  REQUIRE(got.size() == 1);
  CHECK(got[0].txn == 0);
  CHECK(got[0].flags == 0);
  CHECK(link.b_sent.empty());  // no ack
  link.a.notify(77, hello("nowhere"));
  CHECK_FALSE(link.a.has_output());
}

// --- Receiving ------------------------------------------------------------------------------

TEST_CASE("FilamentMux receive with timeout 0 polls") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::optional<Result<Frame>> got;
  link.b.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) { got = std::move(r); });
  REQUIRE(got);
  REQUIRE_FALSE(got->ok());
  CHECK(got->error().code == make_error_code(Errc::would_block));
  CHECK(link.b.next_deadline() == kNever);

  link.a.notify(id, hello("one"));
  link.a.notify(id, hello("two"));
  link.pump();
  std::vector<std::string> seen;
  for (int i = 0; i < 3; ++i) {
    link.b.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) {
      seen.push_back(r.ok() ? client_of(*r) : errc_name(static_cast<Errc>(r.error().code.value())));
    });
  }
  CHECK(seen == std::vector<std::string>{"one", "two", "would_block"});
}

TEST_CASE("FilamentMux receive with a positive timeout waits and times out at the deadline") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  int calls = 0;
  std::optional<Result<Frame>> got;
  link.b.receive(id, seconds(2), link.clock.now(), [&](Result<Frame> r) {
    ++calls;
    got = std::move(r);
  });
  CHECK(calls == 0);
  CHECK(link.b.next_deadline() == link.in(seconds(2)));
  link.advance(seconds(2) - milliseconds(1));
  CHECK(calls == 0);
  link.advance(milliseconds(1));
  REQUIRE(calls == 1);
  CHECK(got->error().code == make_error_code(Errc::timeout));
  CHECK(link.b.next_deadline() == kNever);

  // A frame arriving later queues for the next reader instead of going to the expired one.
  link.a.notify(id, hello("late"));
  link.pump();
  CHECK(calls == 1);
}

TEST_CASE("FilamentMux receive with a positive timeout gets a frame that arrives in time") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  int calls = 0;
  std::optional<Result<Frame>> got;
  link.b.receive(id, seconds(2), link.clock.now(), [&](Result<Frame> r) {
    ++calls;
    got = std::move(r);
  });
  link.clock.advance(seconds(1));
  link.a.notify(id, hello("in time"));
  link.pump();
  REQUIRE(calls == 1);
  REQUIRE(got->ok());
  CHECK(client_of(got->value()) == "in time");
  CHECK(link.b.next_deadline() == kNever);
  link.advance(seconds(5));
  CHECK(calls == 1);
}

TEST_CASE("FilamentMux receive with a negative timeout waits forever for the next frame") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  int calls = 0;
  std::optional<Result<Frame>> got;
  link.b.receive(id, Duration(-1), link.clock.now(), [&](Result<Frame> r) {
    ++calls;
    got = std::move(r);
  });
  CHECK(link.b.next_deadline() == kNever);
  link.advance(std::chrono::hours(24 * 365));
  CHECK(calls == 0);
  CHECK(link.b.next_deadline() == kNever);
  link.a.notify(id, hello("finally"));
  link.pump();
  REQUIRE(calls == 1);
  REQUIRE(got->ok());
  CHECK(client_of(got->value()) == "finally");
}

TEST_CASE("FilamentMux serves waiting readers in the order they asked") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::vector<std::string> order;
  link.b.receive(id, Duration(-1), link.clock.now(),
                 [&](Result<Frame> r) { order.push_back("1:" + client_of(*r)); });
  link.b.receive(id, Duration(-1), link.clock.now(),
                 [&](Result<Frame> r) { order.push_back("2:" + client_of(*r)); });
  link.a.notify(id, hello("a"));
  link.a.notify(id, hello("b"));
  link.pump();
  CHECK(order == std::vector<std::string>{"1:a", "2:b"});
}

TEST_CASE("FilamentMux receive on an unknown filament fails with closed") {
  Link link;
  std::optional<Result<Frame>> got;
  link.a.receive(42, seconds(1), link.clock.now(), [&](Result<Frame> r) { got = std::move(r); });
  REQUIRE(got);
  CHECK(got->error().code == make_error_code(Errc::closed));
}

TEST_CASE("FilamentMux set_receiver delivers queued frames first, then new ones, in order") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.a.notify(id, hello("q1"));
  link.a.post(id, hello("q2"), link.in(seconds(1)), [](Result<Frame>) {});
  link.pump();
  std::vector<std::string> got;
  link.b.set_receiver(id, [&](Frame f) { got.push_back(client_of(f)); });
  CHECK(got == std::vector<std::string>{"q1", "q2"});
  link.a.notify(id, hello("n1"));
  link.pump();
  CHECK(got == std::vector<std::string>{"q1", "q2", "n1"});

  // An empty receiver returns to queueing.
  link.b.set_receiver(id, {});
  link.a.notify(id, hello("queued"));
  link.pump();
  CHECK(got.size() == 3);
  std::optional<Result<Frame>> polled;
  link.b.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) { polled = std::move(r); });
  REQUIRE(polled);
  REQUIRE(polled->ok());
  CHECK(client_of(polled->value()) == "queued");
}

TEST_CASE("FilamentMux returns an error when a filament's receive queue passes its cap") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  for (std::size_t i = 0; i < FilamentMux::kMaxQueuedFrames; ++i) link.a.notify(id, hello("f"));
  link.pump();
  CHECK(link.b_errors.empty());
  link.a.notify(id, hello("one too many"));
  link.pump();
  REQUIRE(link.b_errors.size() == 1);
  CHECK(link.b_errors[0].code == make_error_code(Errc::send_queue_full));
  CHECK(contains(link.b_errors[0].detail, std::to_string(FilamentMux::kMaxQueuedFrames)));
}

TEST_CASE("FilamentMux refuses a request above the request limit with denied, and takes more once one is answered") {
  Link link;
  std::vector<std::pair<std::uint32_t, std::size_t>> hits;
  link.b.set_request_limit(2, [&](std::uint32_t filament, std::size_t limit) { hits.emplace_back(filament, limit); });
  const std::uint32_t id = open_from_a(link);
  std::vector<Frame> held;  // requests b has and does not answer yet
  link.b.set_receiver(id, [&](Frame f) { held.push_back(std::move(f)); });
  Done first, second, third, control;
  link.a.request(id, hello("1"), link.in(seconds(5)), first.send());
  link.a.request(id, hello("2"), link.in(seconds(5)), second.send());
  link.a.request(id, hello("3"), link.in(seconds(5)), third.send());
  link.pump();
  CHECK(held.size() == 2);
  CHECK(link.b.unanswered(id) == 2);
  REQUIRE(third.calls == 1);
  CHECK(third.code() == make_error_code(Errc::denied));
  CHECK(contains(third.detail(), "already 2 requests unanswered on filament " + std::to_string(id)));
  REQUIRE(hits.size() == 1);
  CHECK(hits[0] == std::make_pair(id, std::size_t{2}));
  CHECK(first.calls == 0);
  CHECK(link.b_errors.empty());  // a limit is not a protocol error: the link stays

  // Notifies and posts are not requests: they pass while the requests are held.
  Done post;
  link.a.post(id, hello("p"), link.in(seconds(5)), post.send());
  link.pump();
  CHECK(post.ok());

  // The cap is per filament: the control filament still takes requests.
  link.b.set_receiver(FilamentMux::kControlFilament, [&](Frame f) { link.b.reply(f, hello("ok")); });
  link.a.request(FilamentMux::kControlFilament, hello("c"), link.in(seconds(5)), control.send());
  link.pump();
  CHECK(control.ok());

  link.b.reply(held[0], hello("r1"));
  link.pump();
  CHECK(first.ok());
  CHECK(link.b.unanswered(id) == 1);
  Done fourth;
  link.a.request(id, hello("4"), link.in(seconds(5)), fourth.send());
  link.pump();
  CHECK(fourth.calls == 0);  // delivered, not refused
  CHECK(held.size() == 4);   // the post and request 4 joined
  CHECK(hits.size() == 1);
}

TEST_CASE("FilamentMux without a request limit counts nothing and refuses nothing") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::size_t delivered = 0;
  link.b.set_receiver(id, [&](Frame) { ++delivered; });
  std::vector<Done> done(300);
  for (auto& d : done) link.a.request(id, hello("x"), link.in(seconds(5)), d.send());
  link.pump();
  CHECK(delivered == 300);
  CHECK(link.b.unanswered(id) == 0);
}

// --- Closing --------------------------------------------------------------------------------

TEST_CASE("FilamentMux close waits for outstanding posts to be acked, then the peer forgets the filament") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done p1, p2;
  link.a.post(id, hello("1"), link.in(seconds(5)), p1.send());
  link.a.post(id, hello("2"), link.in(seconds(5)), p2.send());
  CloseResult closed;
  link.a.close(id, "finished", closed.done());
  CHECK(closed.calls == 0);
  CHECK_FALSE(link.a.is_open(id));  // no new sends while closing

  Done refused;
  link.a.post(id, hello("3"), link.in(seconds(5)), refused.send());
  REQUIRE(refused.calls == 1);
  CHECK(refused.code() == make_error_code(Errc::closed));

  std::vector<std::string> b_got;
  link.b.set_receiver(id, [&](Frame f) { b_got.push_back(client_of(f)); });
  link.pump();
  CHECK(p1.ok());
  CHECK(p2.ok());
  REQUIRE(closed.calls == 1);
  CHECK(closed.ok());
  CHECK(b_got == std::vector<std::string>{"1", "2"});
  // filament_close went out only after both posts.
  REQUIRE(link.a_sent.size() >= 4);
  CHECK(link.a_sent.back().type == MessageType::filament_close);
  CHECK(from_frame<FilamentCloseMsg>(link.a_sent.back())->reason == "finished");
  CHECK(link.a_sent.back().txn == 0);

  CHECK_FALSE(link.a.is_open(id));
  CHECK_FALSE(link.b.is_open(id));
  Done from_b;
  link.b.post(id, hello("anyone?"), link.in(seconds(5)), from_b.send());
  REQUIRE(from_b.calls == 1);
  CHECK(from_b.code() == make_error_code(Errc::closed));
  CHECK(link.a_errors.empty());
  CHECK(link.b_errors.empty());
}

TEST_CASE("FilamentMux close with nothing outstanding completes at once") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  CloseResult closed;
  link.a.close(id, "", closed.done());
  REQUIRE(closed.calls == 1);
  CHECK(closed.ok());
  link.pump();
  CHECK_FALSE(link.b.is_open(id));
  CloseResult again;
  link.a.close(id, "", again.done());
  REQUIRE(again.calls == 1);
  CHECK(again.code() == make_error_code(Errc::closed));
}

TEST_CASE("FilamentMux close completes when the outstanding deadlines pass instead") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done post;
  link.a.post(id, hello("into the void"), link.in(seconds(3)), post.send());
  (void)link.a.take_output();  // the peer never sees it
  CloseResult closed;
  link.a.close(id, "done", closed.done());
  CHECK(link.a.next_deadline() == link.in(seconds(3)));
  link.advance(seconds(3) - milliseconds(1));
  CHECK(closed.calls == 0);
  link.advance(milliseconds(1));
  REQUIRE(post.calls == 1);
  CHECK(post.code() == make_error_code(Errc::timeout));
  REQUIRE(closed.calls == 1);
  CHECK(closed.ok());
  link.pump();
  CHECK_FALSE(link.b.is_open(id));
}

TEST_CASE("FilamentMux close ends the closing side's waiting readers with closed") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::optional<Result<Frame>> got;
  link.a.receive(id, Duration(-1), link.clock.now(), [&](Result<Frame> r) { got = std::move(r); });
  link.a.close(id, "", [](Result<void>) {});
  REQUIRE(got);
  CHECK(got->error().code == make_error_code(Errc::closed));
}

TEST_CASE("FilamentMux peer close fails pending sends and waiting readers with closed") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  Done from_b;
  link.b.request(id, hello("question"), link.in(seconds(5)), from_b.send());
  std::optional<Result<Frame>> b_reader;
  link.b.receive(id, seconds(5), link.clock.now(), [&](Result<Frame> r) { b_reader = std::move(r); });
  (void)link.b.take_output();  // a never sees the request
  link.a.close(id, "bye", [](Result<void>) {});
  link.pump();
  REQUIRE(from_b.calls == 1);
  CHECK(from_b.code() == make_error_code(Errc::closed));
  REQUIRE(b_reader);
  CHECK(b_reader->error().code == make_error_code(Errc::closed));
  CHECK_FALSE(link.b.is_open(id));
  CHECK(link.b.next_deadline() == kNever);
}

// --- Link loss ------------------------------------------------------------------------------

TEST_CASE("FilamentMux fail_all completes every pending operation with the error, once") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  const std::uint32_t other = open_from_a(link, "other");
  Done req, post;
  link.a.request(id, hello("r"), link.in(seconds(5)), req.send());
  link.a.post(other, hello("p"), link.in(seconds(5)), post.send());
  int receive_calls = 0;
  std::optional<Result<Frame>> forever, timed;
  link.a.receive(id, Duration(-1), link.clock.now(), [&](Result<Frame> r) {
    ++receive_calls;
    forever = std::move(r);
  });
  link.a.receive(FilamentMux::kControlFilament, seconds(1), link.clock.now(), [&](Result<Frame> r) {
    ++receive_calls;
    timed = std::move(r);
  });
  CloseResult closed;
  link.a.close(other, "", closed.done());
  CHECK(closed.calls == 0);
  CHECK(link.a.has_output());

  link.a.fail_all(Error(Errc::link_lost, "connection reset"));
  REQUIRE(req.calls == 1);
  CHECK(req.code() == make_error_code(Errc::link_lost));
  CHECK(req.detail() == "connection reset");
  REQUIRE(post.calls == 1);
  CHECK(post.code() == make_error_code(Errc::link_lost));
  CHECK(receive_calls == 2);
  CHECK(forever->error().code == make_error_code(Errc::link_lost));
  CHECK(timed->error().code == make_error_code(Errc::link_lost));
  REQUIRE(closed.calls == 1);
  CHECK(closed.code() == make_error_code(Errc::link_lost));
  CHECK_FALSE(link.a.has_output());
  CHECK(link.a.pending_sends() == 0);
  CHECK(link.a.next_deadline() == kNever);

  link.advance(seconds(10));
  link.a.fail_all(Error(Errc::timeout, "again"));
  CHECK(req.calls == 1);
  CHECK(post.calls == 1);
  CHECK(receive_calls == 2);
  CHECK(closed.calls == 1);
}

TEST_CASE("FilamentMux after fail_all fails every later call at once") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.a.fail_all(Error(Errc::link_lost, "eof"));
  CHECK_FALSE(link.a.is_open(id));
  CHECK_FALSE(link.a.is_open(FilamentMux::kControlFilament));

  auto opened = link.a.open("late");
  REQUIRE_FALSE(opened.ok());
  CHECK(opened.error().code == make_error_code(Errc::link_lost));

  Done req, post;
  link.a.request(id, hello("x"), link.in(seconds(1)), req.send());
  link.a.post(id, hello("x"), link.in(seconds(1)), post.send());
  CHECK(req.code() == make_error_code(Errc::link_lost));
  CHECK(post.code() == make_error_code(Errc::link_lost));
  CHECK(req.detail() == "eof");

  std::optional<Result<Frame>> got;
  link.a.receive(id, Duration::zero(), link.clock.now(), [&](Result<Frame> r) { got = std::move(r); });
  REQUIRE(got);
  CHECK(got->error().code == make_error_code(Errc::link_lost));

  CloseResult closed;
  link.a.close(id, "", closed.done());
  CHECK(closed.code() == make_error_code(Errc::link_lost));

  link.a.notify(id, hello("x"));
  link.a.reply(hello("x"), hello("y"));
  CHECK_FALSE(link.a.has_output());

  // Frames that were still in flight are ignored.
  Frame in = hello("in flight");
  in.filament = id;
  CHECK(link.a.on_frame(in, link.clock.now()).ok());
  CHECK(link.a.pending_sends() == 0);
}

// --- Re-entrancy ----------------------------------------------------------------------------

TEST_CASE("FilamentMux completions may call back into the mux") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  link.b.set_receiver(id, [&](Frame f) {
    if (f.wants_reply()) link.b.reply(f, hello("re: " + client_of(f)));
  });

  // A chain of requests, each sent from the previous one's completion.
  std::vector<std::string> replies;
  std::function<void(Result<Frame>)> next = [&](Result<Frame> r) {
    REQUIRE(r.ok());
    // The mux has updated its state before the completion runs.
    CHECK(link.a.pending_sends() == 0);
    replies.push_back(client_of(*r));
    if (replies.size() < 50) {
      link.a.request(id, hello(std::to_string(replies.size())), link.in(seconds(1)), next);
    }
  };
  link.a.request(id, hello("0"), link.in(seconds(1)), next);
  link.pump();
  REQUIRE(replies.size() == 50);
  CHECK(replies.front() == "re: 0");
  CHECK(replies.back() == "re: 49");
}

TEST_CASE("FilamentMux open handler and receivers may open, send and close re-entrantly") {
  Link link;
  std::vector<std::string> log;
  link.b.set_open_handler([&](std::uint32_t id, const std::string& name) {
    log.push_back("open " + name);
    link.b.set_receiver(id, [&, id](Frame f) {
      log.push_back("got " + client_of(f));
      if (f.wants_reply()) link.b.reply(f, hello("ok"));
      link.b.close(id, "one is enough", [&](Result<void> r) {
        log.push_back(r.ok() ? "b closed" : "b close failed");
        auto again = link.b.open("follow-up");
        CHECK(again.ok());
      });
    });
  });
  std::vector<std::string> a_opens;
  link.a.set_open_handler([&](std::uint32_t, const std::string& name) { a_opens.push_back(name); });

  auto id = link.a.open("job");
  REQUIRE(id.ok());
  Done done;
  link.a.request(*id, hello("work"), link.in(seconds(1)), done.send());
  link.pump();
  CHECK(log == std::vector<std::string>{"open job", "got work", "b closed"});
  REQUIRE(done.calls == 1);
  CHECK(done.ok());
  CHECK(a_opens == std::vector<std::string>{"follow-up"});
  CHECK_FALSE(link.a.is_open(*id));
  CHECK(link.a_errors.empty());
  CHECK(link.b_errors.empty());
}

TEST_CASE("FilamentMux completions run by fail_all may call back into the failed mux") {
  Link link;
  const std::uint32_t id = open_from_a(link);
  std::vector<std::string> log;
  link.a.request(id, hello("x"), link.in(seconds(1)), [&](Result<Frame> r) {
    log.push_back("request " + errc_name(static_cast<Errc>(r.error().code.value())));
    link.a.post(id, hello("retry"), link.in(seconds(1)), [&](Result<Frame> again) {
      log.push_back("retry " + errc_name(static_cast<Errc>(again.error().code.value())));
    });
    link.a.fail_all(Error(Errc::timeout, "nested"));  // already failed: no effect
  });
  link.a.fail_all(Error(Errc::link_lost, "gone"));
  CHECK(log == std::vector<std::string>{"request link_lost", "retry link_lost"});
}

TEST_CASE("FilamentMux output hook fires when the outbox gains frames") {
  Link link;
  int hooks = 0;
  link.a.set_output_hook([&] { ++hooks; });
  auto id = link.a.open("x");
  REQUIRE(id.ok());
  CHECK(hooks == 1);
  link.a.notify(*id, hello("y"));
  CHECK(hooks == 2);
  CHECK(link.a.take_output().size() == 2);
  CHECK_FALSE(link.a.has_output());
}

}  // namespace

TEST_CASE("FilamentMux ignores a reply that names the right txn on another filament") {
  Link link;
  const std::uint32_t data = open_from_a(link);
  Done done;
  link.a.request(data, hello("x"), link.in(std::chrono::seconds(1)), done.send());
  link.pump();
  REQUIRE(link.a_sent.size() >= 2);
  const Frame& request = link.a_sent.back();
  // A peer answering on the control filament with the request's txn answers nothing.
  Frame stray = to_frame(ClientWelcomeMsg{"m", "v"});
  stray.filament = FilamentMux::kControlFilament;
  stray.txn = request.txn;
  stray.flags = kFlagReply;
  CHECK(link.a.on_frame(stray, link.clock.now()).ok());
  CHECK(done.calls == 0);
  link.advance(std::chrono::seconds(1));
  CHECK(done.code() == Errc::timeout);
}

}  // namespace dtu::common
