#include "dtu/common/messages.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>

#include "dtu/common/frame_decoder.hpp"
#include "support/message_checks.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

Frame json_frame(MessageType type, std::string_view text) {
  Frame f;
  f.type = type;
  f.payload.assign(text.begin(), text.end());
  return f;
}

using dtu::testing::object_frame;
using dtu::testing::round_trip;

// The error from_frame<M> reports for `frame`. REQUIRES: it fails.
template <typename M>
Error error_of(const Frame& frame) {
  Result<M> result = Error();
  CHECK_NOTHROW(result = from_frame<M>(frame));
  REQUIRE_FALSE(result.ok());
  return result.error();
}

DeviceRecord sample_device(std::string device, std::uint64_t seq) {
  DeviceRecord d;
  d.dtu = "dtu-7";
  d.device = std::move(device);
  d.vid = 0x04b8;
  d.pid = 0x0e28;
  d.bcd_device = 0x0100;
  d.cls = 0;
  d.serial = "SN1";
  UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 7;
  u.subclass = 1;
  u.protocol = 2;
  u.function = "printer";
  u.state = UnitState::allocated;
  u.holder = "svc-print";
  u.lease = "l-1";
  d.units = {u};
  d.stamp.boot_epoch = 1732185600000;
  d.stamp.seq = seq;
  d.stamp.time_us = 1732185600000123;
  d.owner = "mgr-a";
  return d;
}

// --- Round trips ----------------------------------------------------------------------------

TEST_CASE("AckMsg round-trips as an empty JSON object") {
  const Frame f = to_frame(AckMsg{}, 3);
  CHECK(f.payload_text() == "{}");
  (void)round_trip(AckMsg{}, 3);
}

TEST_CASE("ErrorMsg round-trips") {
  const ErrorMsg out = round_trip(ErrorMsg{"not_found", "no device 1-1.4 on dtu-7"});
  CHECK(out.code == "not_found");
  CHECK(out.reason == "no device 1-1.4 on dtu-7");
}

TEST_CASE("HeartbeatMsg round-trips with and without its echo fields") {
  HeartbeatMsg bare;
  bare.sent_us = 1767225600000000;
  const HeartbeatMsg a = round_trip(bare);
  CHECK(a.sent_us == bare.sent_us);
  CHECK_FALSE(a.echo_sent_us.has_value());
  CHECK_FALSE(a.echo_received_us.has_value());

  HeartbeatMsg echo;
  echo.sent_us = -5;
  echo.echo_sent_us = std::numeric_limits<std::int64_t>::max();
  echo.echo_received_us = std::numeric_limits<std::int64_t>::min();
  const HeartbeatMsg b = round_trip(echo);
  CHECK(b.sent_us == -5);
  CHECK(b.echo_sent_us == echo.echo_sent_us);
  CHECK(b.echo_received_us == echo.echo_received_us);
}

TEST_CASE("FilamentOpenMsg and FilamentCloseMsg round-trip on their filament") {
  CHECK(round_trip(FilamentOpenMsg{"print job"}, 5).name == "print job");
  CHECK(round_trip(FilamentCloseMsg{"done \"ok\"\n"}, 0xffffffffu).reason == "done \"ok\"\n");
}

TEST_CASE("DtuHelloMsg round-trips") {
  const DtuHelloMsg out = round_trip(DtuHelloMsg{"dtu-7", "0.1.0", 1732185600000});
  CHECK(out.dtu == "dtu-7");
  CHECK(out.agent_version == "0.1.0");
  CHECK(out.boot_epoch == 1732185600000);
}

TEST_CASE("DtuHelloMsg encodes to the payload of docs/protocol.md") {
  const Frame f = to_frame(DtuHelloMsg{"dtu-7", "0.1.0", 1732185600000});
  CHECK(f.payload_text() == R"({"agent_version":"0.1.0","boot_epoch":1732185600000,"dtu":"dtu-7"})");
}

TEST_CASE("DtuWelcomeMsg round-trips") {
  const DtuWelcomeMsg out = round_trip(DtuWelcomeMsg{"mgr-a", 250, 4});
  CHECK(out.manager == "mgr-a");
  CHECK(out.heartbeat_ms == 250);
  CHECK(out.heartbeat_misses == 4);
}

TEST_CASE("DeviceSnapshotMsg round-trips with its devices") {
  DeviceSnapshotMsg in;
  in.dtu = "dtu-7";
  in.stamp.boot_epoch = 10;
  in.stamp.seq = 20;
  in.stamp.time_us = 30;
  in.devices = {sample_device("1-1", 1), sample_device("1-2", 2)};
  const DeviceSnapshotMsg out = round_trip(in);
  CHECK(out.dtu == in.dtu);
  CHECK(out.stamp == in.stamp);
  CHECK(out.stamp.time_us == 30);
  CHECK(out.devices == in.devices);

  DeviceSnapshotMsg empty;
  empty.dtu = "dtu-8";
  CHECK(round_trip(empty).devices.empty());
}

TEST_CASE("a probe hello says so, a welcome carries universal time, load and draining") {
  DtuHelloMsg hello{"dtu-7", "0.1.0", 0, true};
  CHECK(round_trip(hello).probe);
  CHECK(to_frame(DtuHelloMsg{"dtu-7", "0.1.0", 5, false}).payload_text().find("probe") == std::string::npos);
  const DtuWelcomeMsg out = round_trip(DtuWelcomeMsg{"mgr-a", 250, 4, 1732185600123456, 17, true});
  CHECK(out.universal_us == 1732185600123456);
  CHECK(out.dtus == 17);
  CHECK(out.draining);
  CHECK_FALSE(round_trip(DtuWelcomeMsg{"mgr-a", 250, 4, 1, 0, false}).draining);
}

TEST_CASE("a snapshot carries the DTU's leases with their state tokens, and lease operations their fence") {
  DeviceSnapshotMsg in;
  in.dtu = "dtu-7";
  in.stamp = Stamp{1732185600123456, 9, 0};
  in.leases = {LeaseReport{"00ff00ff00ff00ff", "1-1", 0, "print[12]@m1", 1000u, 25000, "tok.mac"},
               LeaseReport{"0123456789abcdef", "1-2", 1, "scan[13]@m2", std::nullopt, 100, std::nullopt}};
  CHECK(round_trip(in).leases == in.leases);

  LeaseRequestMsg request{"1-1", 0, "print[12]@m1", 1000u, 30000, in.stamp, "tok.mac"};
  const LeaseRequestMsg r = round_trip(request);
  REQUIRE(r.fence.has_value());
  CHECK(*r.fence == in.stamp);
  CHECK(r.state_token == "tok.mac");
  const LeaseRenewMsg renew = round_trip(LeaseRenewMsg{"00ff00ff00ff00ff", 30000, std::nullopt, in.stamp, std::nullopt});
  CHECK(renew.fence == in.stamp);
  CHECK_FALSE(renew.state_token.has_value());
  CHECK(round_trip(LeaseReleaseMsg{"00ff00ff00ff00ff", in.stamp}).fence == in.stamp);
  CHECK(round_trip(DtuMoveMsg{"drain"}).reason == "drain");
}

// What nlohmann's dump() writes for `msg`: the bytes encode_fast must write.
template <typename M>
std::string nlohmann_text(const M& msg) {
  return json(msg).dump(-1, ' ', false, json::error_handler_t::replace);
}

TEST_CASE("lease_request and lease_granted are written directly, byte for byte as nlohmann writes them") {
  const std::string token = std::string(780, 'A') + ".mac-_09";
  const Stamp fence{1732185600123456, 9, -3};
  const LeaseRequestMsg requests[] = {
      {"1-1", 0, "print[12]@m1", 1000u, 30000, fence, token},
      {"1-1.4", 4294967295u, "scan", std::nullopt, 0, std::nullopt, std::nullopt},
      {"", 7, "", 0u, 1, Stamp{-1, 18446744073709551615u, 0}, ""},
  };
  for (const LeaseRequestMsg& m : requests) {
    std::string text;
    REQUIRE(encode_fast(m, text));
    CHECK(text == nlohmann_text(m));
    const Frame f = to_frame(m);
    CHECK(f.payload_text() == text);
    CHECK(round_trip(m).fence == m.fence);
  }
  const LeaseGrantedMsg grants[] = {
      {"00ff00ff00ff00ff", "dtu-7", "1-1", 0, "print[12]@m1", 25000, std::string(64, 'e'), "127.0.0.2:4712",
       token},
      {"0123456789abcdef", "dtu-8", "2-1", 3, "scan", 0, std::nullopt, std::nullopt, std::nullopt},
  };
  for (const LeaseGrantedMsg& m : grants) {
    std::string text;
    REQUIRE(encode_fast(m, text));
    CHECK(text == nlohmann_text(m));
    CHECK(to_frame(m).payload_text() == text);
    const LeaseGrantedMsg back = round_trip(m);
    CHECK(back.state_token == m.state_token);
    CHECK(back.token == m.token);
    CHECK(back.inband == m.inband);
  }

  // A string nlohmann would escape or replace is not written directly: to_frame then writes
  // nlohmann's bytes, escapes and replacements included.
  LeaseRequestMsg quoted = requests[0];
  quoted.holder = "print \"lp\"@m1";
  std::string unused;
  CHECK_FALSE(encode_fast(quoted, unused));
  CHECK(to_frame(quoted).payload_text() == nlohmann_text(quoted));
  LeaseGrantedMsg bad_utf8 = grants[0];
  bad_utf8.holder = std::string("caf\xc3\xa9 \xff");
  CHECK_FALSE(encode_fast(bad_utf8, unused));
  CHECK(to_frame(bad_utf8).payload_text() == nlohmann_text(bad_utf8));
  LeaseGrantedMsg control = grants[1];
  control.inband = std::string("host\n:1");
  CHECK_FALSE(encode_fast(control, unused));
  CHECK(round_trip(control).inband == control.inband);
}

TEST_CASE("the lease messages are read directly as from_json reads them, and refused where it refuses them") {
  // What decode_fast reads from `text`, which must be what from_json reads, field for field.
  const auto both = []<typename M>(std::string_view text, M& fast) {
    REQUIRE(decode_fast(text, fast));
    CHECK(json(fast) == json(json::parse(text).get<M>()));
  };
  const std::string token = std::string(780, 'A') + ".mac-_09";
  for (const LeaseRequestMsg& m :
       {LeaseRequestMsg{"1-1", 0, "print[12]@m1", 1000u, 30000, Stamp{1732185600123456, 9, -3}, token},
        LeaseRequestMsg{"1-1.4", 4294967295u, "scan", std::nullopt, 0, std::nullopt, std::nullopt}}) {
    LeaseRequestMsg fast;
    both(to_frame(m).payload_text(), fast);
    CHECK(fast.fence == m.fence);
    CHECK(fast.state_token == m.state_token);
  }
  const LeaseGrantedMsg grant{"00ff00ff00ff00ff",   "dtu-7",          "1-1", 0, "print[12]@m1", 25000,
                              std::string(64, 'e'), "127.0.0.2:4712", token};
  LeaseGrantedMsg fast_grant;
  both(to_frame(grant).payload_text(), fast_grant);
  CHECK(fast_grant.token == grant.token);
  const LeaseEndedMsg ended{"dtu-7", "00ff00ff00ff00ff", "1-1.4", 3, "released"};
  std::string text;
  REQUIRE(encode_fast(ended, text));
  CHECK(text == nlohmann_text(ended));
  LeaseEndedMsg fast_ended;
  both(text, fast_ended);
  CHECK(fast_ended.reason == "released");
  CHECK_FALSE(encode_fast(LeaseEndedMsg{"dtu \"7\"", "l", "d", 0, "released"}, text));

  // Keys from_json does not read are skipped; of a repeated key the last value stands; null is
  // an absent optional.
  LeaseRequestMsg odd;
  both(R"({"unit":1,"device":"a","holder":"h","length_ms":5,"extra":[1,{"x":null}],"uid":7,"uid":null,)"
       R"("fence":{"seq":1,"boot_epoch":2,"time_us":3},"state_token":null,"device":"b"})",
       odd);
  CHECK(odd.device == "b");
  CHECK_FALSE(odd.uid.has_value());
  CHECK(odd.fence == Stamp{2, 1, 3});

  // What from_json refuses, decode_fast does not take; from_frame then names the field.
  const char* refused[] = {
      R"({"device":"a","holder":"h","length_ms":5})",                             // no unit
      R"({"device":"a","unit":-1,"holder":"h","length_ms":5})",                   // out of range
      R"({"device":"a","unit":4294967296,"holder":"h","length_ms":5})",           // out of range
      R"({"device":"a","unit":1.5,"holder":"h","length_ms":5})",                  // not an integer
      R"({"device":7,"unit":1,"holder":"h","length_ms":5})",                      // not a string
      R"({"device":"a","unit":1,"holder":"h","length_ms":5,"fence":{"seq":1}})",  // a stamp short of fields
      R"({"device":"a","unit":1,"holder":"h","length_ms":5,"uid":"7"})",          // uid as text
      R"(["device","a"])",
  };
  for (const char* bad : refused) {
    CAPTURE(bad);
    LeaseRequestMsg unused;
    CHECK_FALSE(decode_fast(bad, unused));
    Frame f;
    f.type = MessageType::lease_request;
    f.payload.assign(bad, bad + std::strlen(bad));
    const auto decoded = from_frame<LeaseRequestMsg>(f);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.error().code == make_error_code(Errc::bad_payload));
  }
  LeaseGrantedMsg no_expiry;
  CHECK_FALSE(decode_fast(R"({"lease":"l","dtu":"d","device":"x","unit":0,"holder":"h"})", no_expiry));
  LeaseEndedMsg no_reason;
  CHECK_FALSE(decode_fast(R"({"dtu":"d","lease":"l","device":"x","unit":0,"reason":null})", no_reason));
}

TEST_CASE(
    "the messages that carry device records are written directly, byte for byte as nlohmann writes them") {
  DeviceRecord free_unit = sample_device("1-1.4", 9);
  free_unit.serial.reset();
  free_unit.manufacturer = "EPSON";
  free_unit.units[0].state = UnitState::free;
  free_unit.units[0].holder.reset();
  free_unit.units[0].lease.reset();
  free_unit.orphaned = true;
  DeviceRecord bare = sample_device("2-1", 18446744073709551615u);
  bare.units.clear();
  bare.stamp = Stamp{-1, 0, -1795294179140706};
  const DeviceRecord records[] = {sample_device("1-1", 1), free_unit, bare};
  for (const DeviceRecord& d : records) {
    std::string text;
    REQUIRE(encode_fast(DeviceAttachedMsg{d}, text));
    CHECK(text == nlohmann_text(DeviceAttachedMsg{d}));
    CHECK(to_frame(DeviceAttachedMsg{d}).payload_text() == text);
    CHECK(round_trip(DeviceAttachedMsg{d}).device == d);
    REQUIRE(encode_fast(DeviceChangedMsg{d}, text));
    CHECK(text == nlohmann_text(DeviceChangedMsg{d}));
    CHECK(round_trip(DeviceChangedMsg{d}).device == d);
  }

  const std::string token = std::string(780, 'A') + ".mac-_09";
  const DeviceSnapshotMsg snapshots[] = {
      {"dtu-7",
       Stamp{1732185600000, 44, 1732185600000123},
       {records[0], records[1], records[2]},
       {LeaseReport{"00ff00ff00ff00ff", "1-1", 0, "print[12]@m1", 1000u, 25000, token},
        LeaseReport{"0123456789abcdef", "2-1", 4294967295u, "scan", std::nullopt, 0, std::nullopt}}},
      {"dtu-8", Stamp{}, {}, {}},
  };
  for (const DeviceSnapshotMsg& m : snapshots) {
    std::string text;
    REQUIRE(encode_fast(m, text));
    CHECK(text == nlohmann_text(m));
    const DeviceSnapshotMsg back = round_trip(m);
    CHECK(back.devices == m.devices);
    CHECK(back.leases == m.leases);
  }
  for (const DeviceListMsg& m : {DeviceListMsg{{records[0], records[1], records[2]}}, DeviceListMsg{}}) {
    std::string text;
    REQUIRE(encode_fast(m, text));
    CHECK(text == nlohmann_text(m));
    CHECK(round_trip(m).devices == m.devices);
  }

  // USB descriptor strings are the device's to choose: one that nlohmann would escape or replace
  // sends the whole message through nlohmann, which does.
  DeviceRecord odd = records[0];
  odd.product = std::string("Caf\xc3\xa9 \"Deluxe\" \xff");
  std::string unused;
  CHECK_FALSE(encode_fast(DeviceChangedMsg{odd}, unused));
  CHECK(to_frame(DeviceChangedMsg{odd}).payload_text() == nlohmann_text(DeviceChangedMsg{odd}));
  CHECK_FALSE(encode_fast(DeviceListMsg{{records[0], odd}}, unused));
  DeviceSnapshotMsg quoted_holder = snapshots[0];
  quoted_holder.leases[1].holder = "scan \"a\"";
  CHECK_FALSE(encode_fast(quoted_holder, unused));
  CHECK(round_trip(quoted_holder).leases[1].holder == "scan \"a\"");
  DeviceRecord control = records[1];
  control.units[0].function = "printer\n";
  CHECK_FALSE(encode_fast(DeviceAttachedMsg{control}, unused));
  CHECK(round_trip(DeviceAttachedMsg{control}).device == control);
}

TEST_CASE("DeviceAttachedMsg and DeviceDetachedMsg round-trip") {
  const DeviceAttachedMsg attached{sample_device("1-1.4", 9)};
  CHECK(round_trip(attached).device == attached.device);

  DeviceDetachedMsg detached;
  detached.dtu = "dtu-7";
  detached.device = "1-1.4";
  detached.stamp.boot_epoch = 3;
  detached.stamp.seq = 11;
  const DeviceDetachedMsg out = round_trip(detached);
  CHECK(out.dtu == "dtu-7");
  CHECK(out.device == "1-1.4");
  CHECK(out.stamp == detached.stamp);
}

TEST_CASE("ClientHelloMsg and ClientWelcomeMsg round-trip") {
  CHECK(round_trip(ClientHelloMsg{"devmgrctl"}).client == "devmgrctl");
  const ClientWelcomeMsg out = round_trip(ClientWelcomeMsg{"mgr-a", "0.1.0"});
  CHECK(out.manager == "mgr-a");
  CHECK(out.version == "0.1.0");
}

TEST_CASE("ListDevicesMsg round-trips with and without a DTU") {
  CHECK_FALSE(round_trip(ListDevicesMsg{}).dtu.has_value());
  CHECK(to_frame(ListDevicesMsg{}).payload_text() == "{}");
  CHECK(round_trip(ListDevicesMsg{"dtu-7"}).dtu == "dtu-7");
}

TEST_CASE("DeviceListMsg round-trips") {
  DeviceListMsg in;
  in.devices = {sample_device("1-1", 1), sample_device("2-1", 5)};
  CHECK(round_trip(in).devices == in.devices);
  CHECK(round_trip(DeviceListMsg{}).devices.empty());
}

TEST_CASE("from_frame ignores fields it does not know and fills defaults for optional ones") {
  const auto hello = from_frame<DtuHelloMsg>(
      json_frame(MessageType::dtu_hello, R"({"dtu":"d","boot_epoch":1,"future_field":[1,2]})"));
  REQUIRE(hello.ok());
  CHECK(hello->agent_version.empty());
  const auto error = from_frame<ErrorMsg>(json_frame(MessageType::error, R"({"code":"timeout"})"));
  REQUIRE(error.ok());
  CHECK(error->reason.empty());
  const auto close = from_frame<FilamentCloseMsg>(json_frame(MessageType::filament_close, "{}"));
  REQUIRE(close.ok());
  CHECK(close->reason.empty());
}

// --- Errors ---------------------------------------------------------------------------------

TEST_CASE("from_frame reports JSON that does not parse as bad_payload naming the type") {
  for (std::string_view text : {"{not json", "", "{\"name\":", "{\"name\":\"x\"} trailing", "\xff\xfe"}) {
    CAPTURE(text);
    const Error e = error_of<FilamentOpenMsg>(json_frame(MessageType::filament_open, text));
    CHECK(e.code == make_error_code(Errc::bad_payload));
    CHECK(contains(e.detail, "filament_open"));
    CHECK(contains(e.detail, "not valid JSON"));
  }
}

TEST_CASE("from_frame reports a payload that is not a JSON object as bad_payload") {
  for (std::string_view text : {"[1,2]", "42", "\"name\"", "null", "true"}) {
    CAPTURE(text);
    const Error ack = error_of<AckMsg>(json_frame(MessageType::ack, text));
    CHECK(ack.code == make_error_code(Errc::bad_payload));
    CHECK(contains(ack.detail, "must be a JSON object"));
    const Error list = error_of<ListDevicesMsg>(json_frame(MessageType::list_devices, text));
    CHECK(list.code == make_error_code(Errc::bad_payload));
  }
}

TEST_CASE("from_frame survives a deeply nested payload") {
  const std::size_t depth = 100000;
  const std::string text = std::string(depth, '[') + std::string(depth, ']');
  const Error e = error_of<AckMsg>(json_frame(MessageType::ack, text));
  CHECK(e.code == make_error_code(Errc::bad_payload));
  const std::string object = R"({"name":)" + text + "}";
  const Error f = error_of<FilamentOpenMsg>(json_frame(MessageType::filament_open, object));
  CHECK(f.code == make_error_code(Errc::bad_payload));
}

TEST_CASE("from_frame names a missing required field") {
  struct Case {
    MessageType type;
    const char* payload;
    const char* field;
  };
  const Case cases[] = {
      {MessageType::error, R"({"reason":"x"})", "code"},
      {MessageType::heartbeat, R"({"echo_sent_us":1})", "sent_us"},
      {MessageType::filament_open, "{}", "name"},
      {MessageType::dtu_hello, R"({"dtu":"d"})", "boot_epoch"},
      {MessageType::dtu_hello, R"({"boot_epoch":1})", "dtu"},
      {MessageType::dtu_welcome, R"({"manager":"m","heartbeat_ms":1})", "heartbeat_misses"},
      {MessageType::device_snapshot, R"({"dtu":"d","stamp":{"boot_epoch":1,"seq":1,"time_us":1}})",
       "devices"},
      {MessageType::device_snapshot, R"({"dtu":"d","devices":[]})", "stamp"},
      {MessageType::device_attached, "{}", "device"},
      {MessageType::device_detached, R"({"dtu":"d","device":"1-1"})", "stamp"},
      {MessageType::client_hello, "{}", "client"},
      {MessageType::client_welcome, R"({"version":"1"})", "manager"},
      {MessageType::device_list, "{}", "devices"},
  };
  for (const Case& c : cases) {
    const Frame frame = json_frame(c.type, c.payload);
    CAPTURE(c.payload);
    Error e;
    switch (c.type) {
      case MessageType::error:
        e = error_of<ErrorMsg>(frame);
        break;
      case MessageType::heartbeat:
        e = error_of<HeartbeatMsg>(frame);
        break;
      case MessageType::filament_open:
        e = error_of<FilamentOpenMsg>(frame);
        break;
      case MessageType::dtu_hello:
        e = error_of<DtuHelloMsg>(frame);
        break;
      case MessageType::dtu_welcome:
        e = error_of<DtuWelcomeMsg>(frame);
        break;
      case MessageType::device_snapshot:
        e = error_of<DeviceSnapshotMsg>(frame);
        break;
      case MessageType::device_attached:
        e = error_of<DeviceAttachedMsg>(frame);
        break;
      case MessageType::device_detached:
        e = error_of<DeviceDetachedMsg>(frame);
        break;
      case MessageType::client_hello:
        e = error_of<ClientHelloMsg>(frame);
        break;
      case MessageType::client_welcome:
        e = error_of<ClientWelcomeMsg>(frame);
        break;
      case MessageType::device_list:
        e = error_of<DeviceListMsg>(frame);
        break;
      default:
        FAIL("no case for this type");
    }
    CHECK(e.code == make_error_code(Errc::bad_payload));
    CHECK(contains(e.detail, std::string(message_type_name(c.type))));
    CHECK(contains(e.detail, std::string("'") + c.field + "'"));
  }
}

TEST_CASE("from_frame names a field of the wrong JSON type") {
  const Error open = error_of<FilamentOpenMsg>(json_frame(MessageType::filament_open, R"({"name":5})"));
  CHECK(open.code == make_error_code(Errc::bad_payload));
  CHECK(contains(open.detail, "'name'"));

  const Error hello =
      error_of<DtuHelloMsg>(json_frame(MessageType::dtu_hello, R"({"dtu":"d","boot_epoch":"soon"})"));
  CHECK(hello.code == make_error_code(Errc::bad_payload));
  CHECK(contains(hello.detail, "'boot_epoch'"));

  const Error version = error_of<DtuHelloMsg>(
      json_frame(MessageType::dtu_hello, R"({"dtu":"d","agent_version":1,"boot_epoch":1})"));
  CHECK(contains(version.detail, "'agent_version'"));

  const Error heartbeat =
      error_of<HeartbeatMsg>(json_frame(MessageType::heartbeat, R"({"sent_us":1,"echo_sent_us":"x"})"));
  CHECK(contains(heartbeat.detail, "'echo_sent_us'"));

  const Error list = error_of<ListDevicesMsg>(json_frame(MessageType::list_devices, R"({"dtu":7})"));
  CHECK(contains(list.detail, "'dtu'"));

  const Error devices = error_of<DeviceListMsg>(json_frame(MessageType::device_list, R"({"devices":{}})"));
  CHECK(contains(devices.detail, "'devices'"));

  const Error reason =
      error_of<ErrorMsg>(json_frame(MessageType::error, R"({"code":"timeout","reason":[]})"));
  CHECK(contains(reason.detail, "'reason'"));

  json device = sample_device("1-1", 1);
  device["units"][0]["function"] = 12;
  const Error nested =
      error_of<DeviceAttachedMsg>(object_frame(MessageType::device_attached, json{{"device", device}}));
  CHECK(nested.code == make_error_code(Errc::bad_payload));
  CHECK(contains(nested.detail, "'function'"));
}

TEST_CASE("from_frame rejects a negative, fractional or out-of-range number in an integer field") {
  struct Case {
    const char* payload;
    const char* field;
  };
  const Case welcome_cases[] = {
      {R"({"manager":"m","heartbeat_ms":-1,"heartbeat_misses":3})", "heartbeat_ms"},
      {R"({"manager":"m","heartbeat_ms":4294967296,"heartbeat_misses":3})", "heartbeat_ms"},
      {R"({"manager":"m","heartbeat_ms":1.5,"heartbeat_misses":3})", "heartbeat_ms"},
      {R"({"manager":"m","heartbeat_ms":1000,"heartbeat_misses":1e300})", "heartbeat_misses"},
  };
  for (const Case& c : welcome_cases) {
    CAPTURE(std::string(c.payload));
    const Error e = error_of<DtuWelcomeMsg>(json_frame(MessageType::dtu_welcome, c.payload));
    CHECK(e.code == make_error_code(Errc::bad_payload));
    CHECK_MESSAGE(contains(e.detail, std::string("'") + c.field + "'"), e.detail);
  }
  const Case heartbeat_cases[] = {
      {R"({"sent_us":1e300})", "sent_us"},
      {R"({"sent_us":18446744073709551615})", "sent_us"},
      {R"({"sent_us":1,"echo_sent_us":-1e300})", "echo_sent_us"},
      {R"({"sent_us":1,"echo_received_us":0.5})", "echo_received_us"},
  };
  for (const Case& c : heartbeat_cases) {
    CAPTURE(std::string(c.payload));
    const Error e = error_of<HeartbeatMsg>(json_frame(MessageType::heartbeat, c.payload));
    CHECK(e.code == make_error_code(Errc::bad_payload));
    CHECK_MESSAGE(contains(e.detail, std::string("'") + c.field + "'"), e.detail);
  }
  // The edges of each range still pass.
  const auto edge = from_frame<DtuWelcomeMsg>(json_frame(
      MessageType::dtu_welcome, R"({"manager":"m","heartbeat_ms":4294967295,"heartbeat_misses":1,"universal_us":1,"dtus":0})"));
  REQUIRE(edge.ok());
  CHECK(edge->heartbeat_ms == 4294967295u);
  const auto low =
      from_frame<HeartbeatMsg>(json_frame(MessageType::heartbeat, R"({"sent_us":-9223372036854775808})"));
  REQUIRE(low.ok());
  CHECK(low->sent_us == std::numeric_limits<std::int64_t>::min());
}

TEST_CASE("from_frame rejects a bad hex id inside a device, naming the field") {
  json device = sample_device("1-1", 1);
  device["vid"] = "04b";
  const Error e =
      error_of<DeviceAttachedMsg>(object_frame(MessageType::device_attached, json{{"device", device}}));
  CHECK(e.code == make_error_code(Errc::bad_payload));
  CHECK(contains(e.detail, "device_attached"));
  CHECK(contains(e.detail, "field 'vid'"));
}

TEST_CASE("from_frame rejects a class above 255, naming the field") {
  json device = sample_device("1-1", 1);
  device["class"] = 256;
  const Error e = error_of<DeviceListMsg>(
      object_frame(MessageType::device_list, json{{"devices", json::array({device})}}));
  CHECK(e.code == make_error_code(Errc::bad_payload));
  CHECK(contains(e.detail, "field 'class'"));
  json unit_device = sample_device("1-1", 1);
  unit_device["units"][0]["subclass"] = 1000;
  const Error u = error_of<DeviceListMsg>(
      object_frame(MessageType::device_list, json{{"devices", json::array({unit_device})}}));
  CHECK(contains(u.detail, "field 'subclass'"));
}

TEST_CASE("from_frame rejects a welcome with zero heartbeat parameters") {
  const Error ms = error_of<DtuWelcomeMsg>(
      json_frame(MessageType::dtu_welcome, R"({"manager":"m","heartbeat_ms":0,"heartbeat_misses":3,"universal_us":1,"dtus":0})"));
  CHECK(ms.code == make_error_code(Errc::bad_payload));
  CHECK(contains(ms.detail, "heartbeat_ms"));
  const Error misses = error_of<DtuWelcomeMsg>(
      json_frame(MessageType::dtu_welcome, R"({"manager":"m","heartbeat_ms":10,"heartbeat_misses":0,"universal_us":1,"dtus":0})"));
  CHECK(misses.code == make_error_code(Errc::bad_payload));
}

TEST_CASE("from_frame rejects a frame of another message type as unknown_type") {
  const Frame f = to_frame(DtuHelloMsg{"dtu-7", "0.1.0", 1});
  const Error e = error_of<ClientHelloMsg>(f);
  CHECK(e.code == make_error_code(Errc::unknown_type));
  CHECK(contains(e.detail, "expected client_hello"));
  CHECK(contains(e.detail, "got dtu_hello"));
  Frame unknown = f;
  unknown.type = static_cast<MessageType>(999);
  const Error u = error_of<DtuHelloMsg>(unknown);
  CHECK(u.code == make_error_code(Errc::unknown_type));
  CHECK(contains(u.detail, "got unknown"));
}

TEST_CASE("from_frame rejects a binary payload where JSON is expected") {
  Frame f = to_frame(ClientHelloMsg{"devmgrctl"});
  f.flags = kFlagBinary;
  const Error e = error_of<ClientHelloMsg>(f);
  CHECK(e.code == make_error_code(Errc::bad_payload));
  CHECK(contains(e.detail, "client_hello"));
  CHECK(contains(e.detail, "binary payload"));
}

TEST_CASE("parse_payload returns the JSON object of a frame") {
  const auto parsed = parse_payload(json_frame(MessageType::heartbeat, R"({"sent_us":7})"));
  REQUIRE(parsed.ok());
  CHECK(parsed->at("sent_us") == 7);
}

}  // namespace

TEST_CASE("to_frame replaces invalid UTF-8 from a device string instead of throwing") {
  DeviceRecord d = sample_device("1-1", 1);
  d.product = std::string("Printer \xff\xfe");
  Frame f;
  CHECK_NOTHROW(f = to_frame(DeviceAttachedMsg{d}));
  auto back = from_frame<DeviceAttachedMsg>(f);
  REQUIRE(back.ok());
  REQUIRE(back->device.product.has_value());
  CHECK(back->device.product->rfind("Printer ", 0) == 0);
  CHECK(*back->device.product != *d.product);
}

}  // namespace dtu::common
