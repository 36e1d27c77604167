// decode_fast (record_decode.cpp): the messages that carry a device record, read straight from
// simdjson's index, must read what from_json reads, as the same value, and give up on the rest,
// which from_frame then decodes through from_json and names.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtu/common/json_parse.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/service_messages.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

const std::string kUnitFree =
    R"({"class":7,"function":"printer","holder":null,"interfaces":[0],"lease":null,"protocol":2,)"
    R"("state":"free","subclass":1,"unit":0})";
const std::string kUnitHeld =
    R"({"class":14,"function":"video","holder":"svc-cam","interfaces":[1,2],"lease":"lease-42",)"
    R"("protocol":0,"state":"allocated","subclass":1,"unit":1})";

// A record as a DTU sends it; `head` goes in before its first field, `tail` after its last (where a
// repeated key stands, as its last value).
std::string record(const std::string& tail = "", const std::string& head = "") {
  return "{" + head +
         R"("dtu":"dtu-7","device":"1-1.4","bus":"usb","vid":"04b8","pid":"0e28",)"
         R"("bcd_device":"0100","class":0,"subclass":0,"protocol":0,"serial":"X1","manufacturer":"EPSON",)"
         R"("product":"TM-T88V","units":[)" +
         kUnitFree + "," + kUnitHeld +
         R"(],"stamp":{"boot_epoch":1700000000000000,"seq":42,"time_us":-5},)"
         R"("owner":"m1")" +
         tail + "}";
}

Frame frame_of(MessageType type, const std::string& text) {
  Frame f;
  f.type = type;
  f.payload.assign(text.begin(), text.end());
  return f;
}

// decode_fast takes `text` and reads the value from_json reads.
template <typename M>
M taken(const std::string& text) {
  INFO("text: ", text);
  M fast;
  REQUIRE(decode_fast(text, fast));
  const M slow = json::parse(text).get<M>();
  CHECK(fast.device == slow.device);
  if constexpr (requires { fast.units; }) {
    CHECK(fast.finder_id == slow.finder_id);
    CHECK(fast.units == slow.units);
  }
  return fast;
}

// decode_fast gives up on `text`, and from_frame still refuses it, naming `what`.
template <typename M>
void refused(const std::string& text, std::string_view what) {
  INFO("text: ", text);
  M fast;
  CHECK_FALSE(decode_fast(text, fast));
  const auto decoded = from_frame<M>(frame_of(M::kType, text));
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.error().code == Errc::bad_payload);
  CHECK(decoded.error().detail.find(what) != std::string::npos);
}

std::string attached(const std::string& device) {
  return R"({"device":)" + device + "}";
}
std::string matched(const std::string& device) {
  return R"({"finder_id":18446744073709551615,"device":)" + device + R"(,"units":[0,4294967295]})";
}

TEST_CASE("decode_fast reads each message that carries a device record as from_json reads it") {
  const auto a = taken<DeviceAttachedMsg>(attached(record()));
  CHECK(a.device.dtu == "dtu-7");
  CHECK(a.device.vid == 0x04b8);
  CHECK(a.device.units.size() == 2);
  CHECK(a.device.units[1].holder == "svc-cam");
  CHECK(a.device.units[1].interfaces == std::vector<std::uint8_t>{1, 2});
  CHECK(a.device.stamp.time_us == -5);
  taken<DeviceChangedMsg>(attached(record()));
  const auto m = taken<FinderMatchedMsg>(matched(record()));
  CHECK(m.finder_id == 18446744073709551615u);
  CHECK(m.units == std::vector<std::uint32_t>{0, 4294967295u});
  taken<FinderChangedMsg>(matched(record()));
}

TEST_CASE("decode_fast defaults what from_json defaults and skips the keys it does not read") {
  // No bus, owner, orphaned, serial, manufacturer, product or interfaces; unknown keys anywhere.
  const std::string sparse =
      R"({"dtu":"d","device":"1-1","vid":"0001","pid":"0002","bcd_device":"0003","class":255,)"
      R"("subclass":0,"protocol":0,"units":[{"unit":3,"class":8,"subclass":6,"protocol":80,)"
      R"("function":"storage","state":"unavailable","colour":"blue"}],"stamp":{"boot_epoch":0,"seq":0,)"
      R"("time_us":0,"zone":[1,2]},"labels":{"room":"B-12"}})";
  const auto a = taken<DeviceAttachedMsg>(R"({"version":2,"device":)" + sparse + "}");
  CHECK(a.device.bus == "usb");
  CHECK(a.device.owner.empty());
  CHECK_FALSE(a.device.orphaned);
  CHECK_FALSE(a.device.serial.has_value());
  CHECK(a.device.units[0].interfaces.empty());
  CHECK(a.device.units[0].state == UnitState::unavailable);
  // Null optional strings, an orphaned record, escapes and upper-case hex digits.
  const auto b = taken<DeviceAttachedMsg>(
      attached(record(R"(,"serial":null,"orphaned":true,"product":"Caf\u00e9 \"TM\"\n","vid":"ABCD")")));
  CHECK(b.device.orphaned);
  CHECK(b.device.vid == 0xabcd);
  CHECK(b.device.product == std::string("Caf\xc3\xa9 \"TM\"\n"));
}

TEST_CASE("decode_fast keeps the last of a repeated key, as nlohmann's parser does") {
  const auto a =
      taken<DeviceAttachedMsg>(attached(record("", R"("owner":"first","units":[],"serial":null,)")));
  CHECK(a.device.owner == "m1");
  CHECK(a.device.units.size() == 2);
  CHECK(a.device.serial == "X1");
  // A repeated "device": the last record, read from defaults (its bus is not the first one's).
  const std::string first = record(R"(,"bus":"pci")");
  const std::string second =
      R"({"dtu":"b","device":"2","vid":"0000","pid":"0000","bcd_device":"0000","class":0,"subclass":0,)"
      R"("protocol":0,"units":[],"stamp":{"boot_epoch":1,"seq":2,"time_us":3}})";
  const auto b = taken<DeviceAttachedMsg>(R"({"device":)" + first + R"(,"device":)" + second + "}");
  CHECK(b.device.dtu == "b");
  CHECK(b.device.bus == "usb");
  CHECK(b.device.units.empty());
}

TEST_CASE("decode_fast gives up on what from_json refuses, and from_frame names the fault") {
  refused<DeviceAttachedMsg>(R"({"devices":{}})", "missing field 'device'");
  refused<DeviceAttachedMsg>(R"({"device":null})", "missing field 'dtu'");
  refused<DeviceAttachedMsg>(attached(R"({"device":"1-1"})"), "missing field 'dtu'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"class":256)")), "field 'class'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"class":1.0)")), "field 'class'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"class":-1)")), "field 'class'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"class":true)")), "field 'class'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"vid":"4b8")")), "field 'vid'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"vid":"04g8")")), "field 'vid'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"vid":1208)")), "field 'vid'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"bus":null)")), "field 'bus'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"owner":7)")), "field 'owner'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"orphaned":1)")), "field 'orphaned'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"serial":5)")), "field 'serial'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"units":{})")), "field 'units'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"stamp":[])")), "'boot_epoch'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"stamp":{"boot_epoch":1,"time_us":2})")), "'seq'");
  refused<DeviceAttachedMsg>(attached(record(R"(,"stamp":{"boot_epoch":1,"seq":-1,"time_us":2})")), "'seq'");
  refused<DeviceAttachedMsg>(
      attached(record(R"(,"stamp":{"boot_epoch":9223372036854775808,"seq":1,"time_us":2})")), "'boot_epoch'");
  const std::string unit =
      R"({"unit":0,"class":7,"subclass":1,"protocol":2,"function":"printer","state":"free")";
  refused<DeviceAttachedMsg>(attached(record(R"(,"units":[)" + unit + R"(,"state":"busy"}])")), "busy");
  refused<DeviceAttachedMsg>(attached(record(R"(,"units":[)" + unit + R"(,"interfaces":null}])")),
                             "interfaces");
  refused<DeviceAttachedMsg>(attached(record(R"(,"units":[)" + unit + R"(,"interfaces":[256]}])")),
                             "interfaces");
  refused<DeviceAttachedMsg>(attached(record(R"(,"units":[{"unit":0}])")), "missing field");
  refused<FinderMatchedMsg>(R"({"finder_id":-1,"device":)" + record() + R"(,"units":[0]})", "'finder_id'");
  refused<FinderMatchedMsg>(R"({"finder_id":1,"device":)" + record() + R"(,"units":[-1]})", "units[0]");
  refused<FinderMatchedMsg>(R"({"finder_id":1,"device":)" + record() + "}", "'units'");
  refused<FinderChangedMsg>(R"({"finder_id":1,"units":[]})", "'device'");
}

TEST_CASE("from_frame decodes through from_json the texts simdjson does not take") {
  // -0 (signed for nlohmann) and a text past simdjson's size limit: decode_fast gives up, the
  // decoder behind it reads them.
  const std::string minus_zero = attached(record(R"(,"class":-0)"));
  DeviceAttachedMsg fast;
  CHECK_FALSE(decode_fast(minus_zero, fast));
  const auto a = from_frame<DeviceAttachedMsg>(frame_of(MessageType::device_attached, minus_zero));
  REQUIRE(a.ok());
  CHECK(a->device.cls == 0);
  const std::string big = attached(record(R"(,"padding":")" + std::string(kFastParseMaxBytes, 'x') + R"(")"));
  CHECK_FALSE(decode_fast(big, fast));
  const auto b = from_frame<DeviceAttachedMsg>(frame_of(MessageType::device_attached, big));
  REQUIRE(b.ok());
  CHECK(b->device.product == "TM-T88V");
}

}  // namespace
}  // namespace dtu::common
