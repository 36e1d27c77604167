#include "dtu/agent/inband_server.hpp"

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/agent/sim_backend.hpp"
#include "dtu/client/inband_channel.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/common/net.hpp"
#include "support/log_capture.hpp"
#include "support/async_client.hpp"
#include "support/psk_link.hpp"

// The in-band channel end to end: real TLS over 127.0.0.1 between an InbandServer and the
// client library's InbandChannel, on one io_context driven by this thread, over a SimBackend
// and a LeaseTable. SystemClock throughout (links sleep on it); deadlines are small where a
// timeout is the point.

namespace {

namespace common = dtu::common;
using common::Bytes;
using common::Duration;
using common::Errc;
using common::Result;
using dtu::agent::InbandServer;
using dtu::agent::Lease;
using dtu::agent::LeaseEnd;
using dtu::agent::LeaseTable;
using dtu::agent::SimBackend;
using dtu::client::InbandChannel;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Safety net only: outcomes arrive within milliseconds or their own small deadline.
constexpr auto kSafetyNet = seconds(20);
constexpr auto kSlice = milliseconds(5);
constexpr auto kGenerous = seconds(5);
constexpr auto kLeaseLength = seconds(60);

constexpr const char* kPrinterId = "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;";

// A printer (sink on OUT 0x01, status on IN 0x82) and a multi-function device (printer,
// vendor-specific scanner, storage).
dtu::agent::SimDeviceSet devices() {
  const auto doc = nlohmann::json::parse(R"({"devices": [
    {"port": "1-1", "vid": "04b8", "pid": "0005", "manufacturer": "EPSON", "product": "Stylus Test Printer",
     "interfaces": [
       {"number": 0, "class": "07", "subclass": "01", "protocol": "02",
        "device_id": "MFG:EPSON;CMD:ESCPL2,BDC;MDL:Stylus Test Printer;CLS:PRINTER;",
        "endpoints": [
          {"address": "0x01", "type": "bulk", "max_packet_size": 512, "sink": {}},
          {"address": "0x82", "type": "bulk", "max_packet_size": 512, "source": {"text": "STATUS-OK"}}]}]},
    {"port": "1-2", "vid": "04b8", "pid": "08a1", "product": "Test MFP",
     "interfaces": [
       {"number": 0, "class": "07", "subclass": "01", "protocol": "02",
        "endpoints": [
          {"address": "0x01", "type": "bulk", "sink": {}},
          {"address": "0x82", "type": "bulk"}]},
       {"number": 1, "class": "ff", "subclass": "ff", "protocol": "ff",
        "endpoints": [
          {"address": "0x03", "type": "bulk", "sink": {}},
          {"address": "0x84", "type": "bulk", "source": {"text": "SCAN"}},
          {"address": "0x85", "type": "interrupt", "max_packet_size": 8}]},
       {"number": 2, "class": "08", "subclass": "06", "protocol": "50",
        "endpoints": [
          {"address": "0x06", "type": "bulk"},
          {"address": "0x87", "type": "bulk"}]}]}
  ]})");
  auto set = dtu::agent::sim_devices_from_json(doc, "test devices");
  REQUIRE_MESSAGE(set.ok(), set.error().describe());
  return std::move(set).value();
}

using dtu::testing::LogCapture;

template <typename T>
using Outcome = std::shared_ptr<std::optional<T>>;
using Connected = Result<std::shared_ptr<InbandChannel>>;

// The SimBackend with one fault switch: the fail_out_call-th transfer_out (1-based) fails with
// Errc::timeout without writing. Completions go through the executor, as the contract says.
class FlakyBackend final : public dtu::agent::UsbBackend {
 public:
  FlakyBackend(asio::any_io_executor ex, SimBackend& inner) : ex_(std::move(ex)), inner_(inner) {}

  Result<void> start(dtu::agent::UsbEvents events) override { return inner_.start(std::move(events)); }
  void stop() override { inner_.stop(); }
  std::vector<dtu::agent::UsbDeviceInfo> devices() const override { return inner_.devices(); }
  void claim(const std::string& port, std::uint8_t interface,
             std::function<void(Result<void>)> done) override {
    inner_.claim(port, interface, std::move(done));
  }
  void release(const std::string& port, std::uint8_t interface,
               std::function<void(Result<void>)> done) override {
    inner_.release(port, interface, std::move(done));
  }
  void control(const std::string& port, dtu::agent::UsbControlSetup setup, std::vector<std::uint8_t> data,
               Duration timeout, std::function<void(Result<std::vector<std::uint8_t>>)> done) override {
    inner_.control(port, setup, std::move(data), timeout, std::move(done));
  }
  void transfer_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                    Duration timeout, std::function<void(Result<std::size_t>)> done) override {
    if (++out_calls == fail_out_call) {
      asio::post(ex_, [done = std::move(done)] {
        done(common::Error(Errc::timeout, "simulated: the printer stalled"));
      });
      return;
    }
    inner_.transfer_out(port, endpoint, std::move(data), timeout, std::move(done));
  }
  void transfer_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length, Duration timeout,
                   std::function<void(Result<std::vector<std::uint8_t>>)> done) override {
    inner_.transfer_in(port, endpoint, max_length, timeout, std::move(done));
  }

  int fail_out_call = 0;  // 0: never
  int out_calls = 0;

 private:
  asio::any_io_executor ex_;
  SimBackend& inner_;
};

InbandServer::Options server_options() {
  InbandServer::Options o;
  o.dtu = "dtu-test";
  return o;
}

// One io_context with a SimBackend, a LeaseTable and a listening InbandServer. On destruction
// it closes every channel and runs the context until their coroutines have ended.
class Fixture {
 public:
  explicit Fixture(InbandServer::Options options = server_options())
      : backend_(io_.get_executor(), devices()), flaky_(io_.get_executor(), backend_), leases_(clock()) {
    REQUIRE(backend_.start(dtu::agent::UsbEvents{}).ok());
    InbandServer::Hooks hooks;
    hooks.renew = [this](std::string_view id, Duration length) {
      ++renewals;
      return leases_.renew(id, length);
    };
    server_ = std::make_unique<InbandServer>(io_.get_executor(), clock(), leases_, flaky_, std::move(hooks),
                                             std::move(options));
    auto bound = server_->listen(common::Endpoint{"127.0.0.1", 0});
    REQUIRE_MESSAGE(bound.ok(), bound.error().describe());
    endpoint_ = *bound;
  }
  Fixture(const Fixture&) = delete;
  Fixture& operator=(const Fixture&) = delete;
  ~Fixture() {
    for (auto& c : channels_) c->close();
    channels_.clear();
    server_.reset();
    backend_.stop();
    try {
      io_.restart();
      io_.run_for(kSafetyNet);
    } catch (...) {
    }
  }

  const common::Clock& clock() const { return common::SystemClock::instance(); }
  asio::io_context& io() { return io_; }
  InbandServer& server() { return *server_; }
  LeaseTable& leases() { return leases_; }
  SimBackend& backend() { return backend_; }
  FlakyBackend& flaky() { return flaky_; }
  const common::Endpoint& endpoint() const { return endpoint_; }

  bool run_until(const std::function<bool()>& done, Duration limit = kSafetyNet) {
    return dtu::testing::run_io_until(io_, done, limit, kSlice);
  }
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

  // Runs the coroutine to completion and returns its result.
  template <typename Make>
  auto await(Make make) {
    auto out = spawn(std::move(make));
    REQUIRE(run_until([&] { return out->has_value(); }));
    return std::move(**out);
  }

  // Grants a lease and claims its interfaces, as the agent does at grant time.
  Lease grant(const std::string& device, std::uint32_t unit, std::vector<std::uint8_t> interfaces) {
    auto lease = leases_.grant(device, unit, interfaces, "cups", kLeaseLength);
    REQUIRE_MESSAGE(lease.ok(), lease.error().describe());
    for (auto interface : interfaces) {
      auto claimed = std::make_shared<std::optional<Result<void>>>();
      backend_.claim(device, interface, [claimed](Result<void> r) { claimed->emplace(std::move(r)); });
      REQUIRE(run_until([&] { return claimed->has_value(); }));
      REQUIRE(claimed->value().ok());
    }
    return lease.value();
  }

  Outcome<Connected> connect(const std::string& lease_id, Bytes token) {
    auto ex = io_.get_executor();
    const common::Endpoint at = endpoint_;
    const common::Clock& c = clock();
    return spawn([ex, &c, at, lease_id, token] {
      return InbandChannel::connect(ex, c, at, lease_id, token, kGenerous);
    });
  }

  // Connects and requires success.
  std::shared_ptr<InbandChannel> open(const Lease& lease) {
    auto connected = connect(lease.id, lease.token);
    REQUIRE(run_until([&] { return connected->has_value(); }));
    const Connected& r = **connected;
    REQUIRE_MESSAGE(r.ok(), r.error().describe());
    channels_.push_back(r.value());
    return r.value();
  }

  int renewals = 0;

 private:
  asio::io_context io_;
  SimBackend backend_;
  FlakyBackend flaky_;
  LeaseTable leases_;
  std::unique_ptr<InbandServer> server_;
  common::Endpoint endpoint_;
  std::vector<std::shared_ptr<InbandChannel>> channels_;
};

std::string text_of(const Bytes& b) {
  return std::string(b.begin(), b.end());
}

template <typename T>
std::string describe(const Result<T>& r) {
  return r.ok() ? "ok" : r.error().describe();
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A raw client link on `lease` (TLS done; the hello only if `hello`), to send what the client
// library would refuse to send.
asio::awaitable<Result<std::shared_ptr<common::Link>>> raw_link(asio::any_io_executor ex, common::Endpoint at,
                                                                std::string lease_id, Bytes token,
                                                                bool hello) {
  auto dial = dtu::testing::psk_link(ex, at, lease_id, std::move(token), kGenerous, "test");
  auto opened = co_await std::move(dial);
  if (!opened.ok()) co_return opened.error();
  auto link = std::move(opened.value());
  if (hello) {
    auto frame = common::to_frame(common::InbandHelloMsg{lease_id});
    auto request = link->request(0, std::move(frame), kGenerous);
    auto welcome = co_await std::move(request);
    if (!welcome.ok()) co_return welcome.error();
  }
  co_return link;
}

// Empties IN 0x82 of the printer, so the next read waits.
void drain_status(Fixture& f, const std::shared_ptr<InbandChannel>& channel) {
  auto status = f.await([channel] { return channel->read(0x82, 512, milliseconds(500)); });
  REQUIRE_MESSAGE(status.ok(), status.error().describe());
  CHECK(text_of(*status) == "STATUS-OK");
}

}  // namespace

TEST_CASE("The welcome names the lease, the unit and every endpoint of its interfaces") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);

  const common::InbandWelcomeMsg& w = channel->welcome();
  CHECK(w.lease == lease.id);
  CHECK(w.dtu == "dtu-test");
  CHECK(w.device == "1-1");
  CHECK(w.unit == 0);
  CHECK(w.function == std::optional<std::string>("printer"));
  CHECK(w.interfaces == std::vector<std::uint8_t>{0});
  const std::vector<common::InbandEndpoint> expected{{0x01, "bulk", 512}, {0x82, "bulk", 512}};
  CHECK(w.endpoints == expected);
  CHECK(w.expires_in_ms > 0);
  CHECK(w.expires_in_ms <= 60'000);
  CHECK(f.server().channels() == 1);
  CHECK(channel->is_open());
}

TEST_CASE("A 5 MB stream reaches the printer's sink byte for byte, in order") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);

  Bytes job(5 * 1000 * 1000);
  std::uint32_t x = 0x12345678;
  for (auto& b : job) {  // xorshift: no two chunks alike, so reordering would show
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<std::uint8_t>(x);
  }
  auto sent = f.await([channel, &job] { return channel->stream(0x01, job); });
  INFO(describe(sent));
  REQUIRE(sent.ok());
  CHECK(*sent == job.size());
  const Bytes captured = f.backend().captured("1-1", 0x01);
  CHECK(captured.size() == job.size());
  CHECK(captured == job);
}

TEST_CASE("A stream whose chunk fails writes nothing after it, and a new write starts anew") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  f.flaky().fail_out_call = 3;  // the third chunk; the fourth is already in flight by then

  constexpr std::size_t kChunk = InbandChannel::kStreamChunk;
  Bytes job(10 * kChunk);
  for (std::size_t i = 0; i < job.size(); ++i) job[i] = static_cast<std::uint8_t>(i % 251);
  auto sent = f.await([channel, &job] { return channel->stream(0x01, job); });
  REQUIRE_FALSE(sent.ok());
  INFO(sent.error().describe());
  CHECK(sent.error().code == Errc::timeout);
  CHECK(contains(sent.error().detail,
                 "after " + std::to_string(2 * kChunk) + " of " + std::to_string(job.size())));
  // Exactly the chunks before the failed one: no gap, nothing after it.
  CHECK(f.backend().captured("1-1", 0x01) == Bytes(job.begin(), job.begin() + 2 * kChunk));

  const Bytes retry{'R', 'E', 'T', 'R', 'Y'};
  auto again = f.await([channel, &retry] { return channel->write(0x01, retry, kGenerous); });
  REQUIRE_MESSAGE(again.ok(), again.error().describe());
  CHECK(f.backend().captured("1-1", 0x01).size() == 2 * kChunk + retry.size());
  CHECK(channel->is_open());
}

TEST_CASE("A read returns the bytes of an IN endpoint, and write returns the bytes accepted") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  drain_status(f, channel);

  const Bytes hello{'%', '!', 'P', 'S'};
  auto written = f.await([channel, &hello] { return channel->write(0x01, hello, kGenerous); });
  REQUIRE_MESSAGE(written.ok(), written.error().describe());
  CHECK(*written == 4);
  CHECK(f.backend().captured("1-1", 0x01) == hello);

  auto too_big =
      f.await([channel] { return channel->read(0x82, common::kMaxUsbTransferBytes + 1, kGenerous); });
  REQUIRE_FALSE(too_big.ok());
  CHECK(too_big.error().code == Errc::invalid_argument);
}

TEST_CASE("The DTU refuses a usb_in longer than the frame cap allows") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto raw = f.await([ex = f.io().get_executor(), at = f.endpoint(), lease] {
    return raw_link(ex, at, lease.id, lease.token, true);
  });
  REQUIRE_MESSAGE(raw.ok(), raw.error().describe());
  auto link = raw.value();
  auto answer = f.await([link] {
    auto frame = common::to_frame(common::UsbInMsg{0x82, common::kMaxUsbTransferBytes + 1, 100});
    return link->request(0, std::move(frame), kGenerous);
  });
  REQUIRE_FALSE(answer.ok());
  CHECK(answer.error().code == Errc::invalid_argument);
  CHECK(contains(answer.error().detail, "usb_in length"));
  CHECK(link->is_open());
  link->close(common::Error(Errc::closed, "test over"));
}

TEST_CASE("device_id returns the printer's IEEE 1284 id without its length prefix") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  auto id = f.await([channel] { return channel->device_id(); });
  REQUIRE_MESSAGE(id.ok(), id.error().describe());
  CHECK(*id == std::optional<std::string>(kPrinterId));
}

TEST_CASE("An endpoint outside the lease is refused and the channel keeps working") {
  Fixture f;
  const Lease scanner = f.grant("1-2", 1, {1});  // the MFP's scanner; its printer is not leased
  auto channel = f.open(scanner);
  CHECK(channel->welcome().function == std::optional<std::string>("scanner"));  // Epson's ff/ff/ff rule
  CHECK(channel->welcome().endpoints.size() == 3);

  const Bytes page{'P'};
  auto refused = f.await([channel, &page] { return channel->write(0x01, page, kGenerous); });
  REQUIRE_FALSE(refused.ok());
  INFO(refused.error().describe());
  CHECK(refused.error().code == Errc::refused);
  CHECK(contains(refused.error().detail, "0x01"));
  CHECK(contains(refused.error().detail, "[1]"));
  CHECK(f.backend().captured("1-2", 0x01).empty());

  auto not_printer = f.await([channel] { return channel->device_id(); });
  REQUIRE_FALSE(not_printer.ok());
  CHECK(not_printer.error().code == Errc::refused);

  // A standard request that would reconfigure the whole device.
  auto reconfigure = f.await([channel] {
    return channel->control(common::UsbSetup{0x00, 9 /*SET_CONFIGURATION*/, 1, 0, 0}, {}, kGenerous);
  });
  REQUIRE_FALSE(reconfigure.ok());
  CHECK(reconfigure.error().code == Errc::refused);
  // An interface request naming the unleased printer interface.
  auto other_interface = f.await([channel] {
    return channel->control(common::UsbSetup{0xa1, 1, 0, 0x0000, 1}, {}, kGenerous);
  });
  REQUIRE_FALSE(other_interface.ok());
  CHECK(other_interface.error().code == Errc::refused);

  auto descriptor = f.await([channel] {
    return channel->control(common::UsbSetup{0x80, 6 /*GET_DESCRIPTOR*/, 0x0100, 0, 18}, {}, kGenerous);
  });
  REQUIRE_MESSAGE(descriptor.ok(), descriptor.error().describe());
  CHECK(descriptor->size() == 18);

  auto scan = f.await([channel] { return channel->read(0x84, 64, kGenerous); });
  REQUIRE_MESSAGE(scan.ok(), scan.error().describe());
  CHECK(text_of(*scan) == "SCAN");
  CHECK(channel->is_open());
}

TEST_CASE("A wrong token is refused: the client says so and the server logs the peer and the reason") {
  LogCapture logs;
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  Bytes wrong = lease.token;
  wrong[0] ^= 0xff;
  auto connected = f.connect(lease.id, wrong);
  REQUIRE(f.run_until([&] { return connected->has_value(); }));
  const Connected& r = **connected;
  REQUIRE_FALSE(r.ok());
  INFO(r.error().describe());
  CHECK(r.error().code == Errc::auth_failed);
  CHECK(contains(r.error().detail, "refused the token of lease " + lease.id));
  CHECK(contains(r.error().detail, "unknown, expired or wrong"));
  REQUIRE(f.run_until([&] { return logs.has({"inband_refused"}); }));
  INFO(logs.text());
  CHECK(logs.has({"inband_refused", "127.0.0.1:", "lease=" + lease.id, "wrong token"}));
  CHECK(f.server().channels() == 0);
}

TEST_CASE("An unknown lease id is refused and logged as unknown") {
  LogCapture logs;
  Fixture f;
  auto connected = f.connect("00000000deadbeef", Bytes(32, 0x42));
  REQUIRE(f.run_until([&] { return connected->has_value(); }));
  const Connected& r = **connected;
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::auth_failed);
  REQUIRE(f.run_until([&] { return logs.has({"inband_refused"}); }));
  INFO(logs.text());
  CHECK(logs.has({"inband_refused", "127.0.0.1:", "lease=00000000deadbeef", "unknown lease"}));
}

TEST_CASE("A holder of an expired lease completes the handshake and is told 'expired'") {
  LogCapture logs;
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  REQUIRE(f.leases().end(lease.id, LeaseEnd::expired).has_value());
  auto connected = f.connect(lease.id, lease.token);
  REQUIRE(f.run_until([&] { return connected->has_value(); }));
  const Connected& r = **connected;
  REQUIRE_FALSE(r.ok());
  INFO(r.error().describe());
  CHECK(r.error().code == Errc::closed);
  CHECK(contains(r.error().detail, "expired"));
  CHECK(contains(r.error().detail, "lease " + lease.id + " expired"));
  INFO(logs.text());
  CHECK(logs.has({"inband_late_holder", lease.id, "expired"}));
  REQUIRE(f.run_until([&] { return f.server().channels() == 0; }));
}

TEST_CASE("lease_ended closes the channel with the reason, failing a transfer in flight") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  drain_status(f, channel);
  auto seen = std::make_shared<std::optional<common::ChannelClosingMsg>>();
  channel->on_closing([seen](const common::ChannelClosingMsg& m) { seen->emplace(m); });

  auto pending = f.spawn([channel] { return channel->read(0x82, 64, seconds(10)); });
  f.run_for(milliseconds(50));
  REQUIRE_FALSE(pending->has_value());

  REQUIRE(f.leases().end(lease.id, LeaseEnd::expired).has_value());
  f.server().lease_ended(lease, LeaseEnd::expired);
  REQUIRE(f.run_until([&] { return pending->has_value() && seen->has_value(); }));
  CHECK((*seen)->reason == "expired");
  REQUIRE(channel->closed_reason().has_value());
  CHECK(channel->closed_reason()->detail == "lease " + lease.id + " expired");
  const Result<Bytes>& read = **pending;
  REQUIRE_FALSE(read.ok());
  INFO(read.error().describe());
  CHECK(read.error().code == Errc::closed);
  CHECK(contains(read.error().detail, "expired"));
  REQUIRE(f.run_until([&] { return !channel->is_open() && f.server().channels() == 0; }));
}

TEST_CASE("A released lease's channel is told 'released'") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  REQUIRE(f.leases().end(lease.id, LeaseEnd::released).has_value());
  f.server().lease_ended(lease.id, LeaseEnd::released);
  REQUIRE(f.run_until([&] { return channel->closed_reason().has_value(); }));
  CHECK(channel->closed_reason()->reason == "released");
  auto after = f.await([channel] { return channel->device_id(); });
  CHECK_FALSE(after.ok());
}

TEST_CASE("Unplugging the device fails a pending read with unavailable") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  drain_status(f, channel);

  auto pending = f.spawn([channel] { return channel->read(0x82, 64, seconds(10)); });
  f.run_for(milliseconds(50));
  REQUIRE_FALSE(pending->has_value());
  REQUIRE(f.backend().unplug("1-1").ok());
  REQUIRE(f.run_until([&] { return pending->has_value(); }));
  const Result<Bytes>& read = **pending;
  REQUIRE_FALSE(read.ok());
  INFO(read.error().describe());
  CHECK(read.error().code == Errc::unavailable);
}

TEST_CASE("An in-band renewal extends the lease in the table") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  auto renewed = f.await([channel] { return channel->renew(seconds(300)); });
  REQUIRE_MESSAGE(renewed.ok(), renewed.error().describe());
  CHECK(*renewed > seconds(290));
  CHECK(*renewed <= seconds(300));
  CHECK(f.renewals == 1);
  const Lease* now = f.leases().find(lease.id);
  REQUIRE(now != nullptr);
  CHECK(now->expires > lease.expires + seconds(200));

  auto too_long = f.await([channel] { return channel->renew(std::chrono::hours(48)); });
  REQUIRE_FALSE(too_long.ok());
  CHECK(too_long.error().code == Errc::invalid_argument);
}

TEST_CASE("A garbage frame after the hello closes only that channel") {
  LogCapture logs;
  Fixture f;
  const Lease printer = f.grant("1-1", 0, {0});
  const Lease scanner = f.grant("1-2", 1, {1});
  auto good = f.open(scanner);

  auto bad = f.await([ex = f.io().get_executor(), at = f.endpoint(), printer] {
    return raw_link(ex, at, printer.id, printer.token, true);
  });
  REQUIRE_MESSAGE(bad.ok(), bad.error().describe());
  auto link = bad.value();
  REQUIRE(f.server().channels() == 2);

  // Bytes that are no frame at all, on the TLS stream of a welcomed channel.
  auto sent = f.await([link]() -> asio::awaitable<common::IoResult> {
    static const std::string garbage = "ZZZZZZZZ not a dtubroker frame ZZZZZZZZ";
    auto op = link->transport().write_all(asio::buffer(garbage));
    co_return co_await std::move(op);
  });
  CHECK_FALSE(sent.ec);
  REQUIRE(f.run_until([&] { return !link->is_open() && f.server().channels() == 1; }));
  INFO(logs.text());
  CHECK(logs.has({"protocol_error"}));

  auto scan = f.await([good] { return good->read(0x84, 64, kGenerous); });
  REQUIRE_MESSAGE(scan.ok(), scan.error().describe());
  CHECK(text_of(*scan) == "SCAN");
}

TEST_CASE("A message that is not legal on the channel closes it with a protocol error") {
  LogCapture logs;
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto link = f.await([ex = f.io().get_executor(), at = f.endpoint(), lease] {
    return raw_link(ex, at, lease.id, lease.token, false);
  });
  REQUIRE_MESSAGE(link.ok(), link.error().describe());
  // A transfer before the hello.
  auto answer = f.await([l = link.value()] {
    auto frame = common::to_frame(common::UsbInMsg{0x82, 64, 100});
    return l->request(0, std::move(frame), kGenerous);
  });
  CHECK_FALSE(answer.ok());
  REQUIRE(f.run_until([&] { return !link.value()->is_open(); }));
  INFO(logs.text());
  CHECK(logs.has({"protocol_error", "usb_in before inband_hello"}));
}

TEST_CASE("A client that stalls in the TLS handshake is dropped at the deadline and logged") {
  LogCapture logs;
  InbandServer::Options options = server_options();
  options.handshake_timeout = milliseconds(200);
  Fixture f(options);
  asio::ip::tcp::socket idle(f.io());
  idle.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.endpoint().port));
  const std::string half_hello("\x16\x03\x01\x00\xff", 5);  // a TLS record header, then nothing
  asio::write(idle, asio::buffer(half_hello));

  auto dropped = std::make_shared<std::optional<std::error_code>>();
  auto buffer = std::make_shared<std::array<std::uint8_t, 64>>();
  idle.async_read_some(asio::buffer(*buffer),
                       [dropped, buffer](std::error_code ec, std::size_t) { dropped->emplace(ec); });
  const auto started = f.clock().now();
  REQUIRE(f.run_until([&] { return dropped->has_value(); }));
  const auto elapsed = f.clock().now() - started;
  CHECK(**dropped);  // eof or reset: the server closed it
  CHECK(elapsed >= milliseconds(150));
  CHECK(elapsed < seconds(3));
  REQUIRE(f.run_until([&] { return logs.has({"inband_refused"}); }));
  INFO(logs.text());
  CHECK(logs.has({"inband_refused", "127.0.0.1:", "did not finish within 200ms"}));
}

TEST_CASE("Connections above max_channels are refused at accept and logged") {
  LogCapture logs;
  InbandServer::Options options = server_options();
  options.max_channels = 1;
  Fixture f(options);
  const Lease lease = f.grant("1-1", 0, {0});
  auto first = f.open(lease);
  auto second = f.connect(lease.id, lease.token);
  REQUIRE(f.run_until([&] { return second->has_value(); }));
  CHECK_FALSE((**second).ok());
  INFO(logs.text());
  CHECK(logs.has({"inband_refused", "too many channels"}));
  CHECK(first->is_open());
}

TEST_CASE("max_channels 0 admits channels without a cap") {
  LogCapture logs;
  InbandServer::Options options = server_options();
  options.max_channels = 0;
  Fixture f(options);
  const Lease lease = f.grant("1-1", 0, {0});
  auto first = f.open(lease);
  auto second = f.open(lease);
  CHECK(first->is_open());
  CHECK(second->is_open());
  REQUIRE(f.run_until([&] { return f.server().channels() == 2; }));
  CHECK_FALSE(logs.has({"inband_refused"}));
}

TEST_CASE("stop() tells every channel the agent is stopping") {
  Fixture f;
  const Lease lease = f.grant("1-1", 0, {0});
  auto channel = f.open(lease);
  f.server().stop();
  REQUIRE(f.run_until([&] { return channel->closed_reason().has_value(); }));
  CHECK(channel->closed_reason()->reason == "agent_stopping");
  REQUIRE(f.run_until([&] { return f.server().channels() == 0; }));
}
