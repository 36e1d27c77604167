#include "dtu/common/inband_messages.hpp"

#include <doctest/doctest.h>

#include <cstdint>
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

InbandWelcomeMsg sample_welcome() {
  InbandWelcomeMsg m;
  m.lease = "0123456789abcdef";
  m.dtu = "dtu-7";
  m.device = "1-2";
  m.unit = 0;
  m.function = "printer";
  m.interfaces = {0, 1};
  m.endpoints = {{0x01, "bulk", 512}, {0x82, "bulk", 512}, {0x83, "interrupt", 8}};
  m.expires_in_ms = 59'000;
  return m;
}

}  // namespace

TEST_CASE("InbandHelloMsg round-trips and refuses an empty lease") {
  CHECK(round_trip(InbandHelloMsg{"0123456789abcdef"}).lease == "0123456789abcdef");
  const Error e = error_of<InbandHelloMsg>(object_frame(MessageType::inband_hello, json{{"lease", ""}}));
  CHECK(e.code == Errc::bad_payload);
  CHECK(contains(e.detail, "lease"));
}

TEST_CASE("InbandWelcomeMsg round-trips with its endpoints, and a null function") {
  const InbandWelcomeMsg m = sample_welcome();
  const InbandWelcomeMsg back = round_trip(m);
  CHECK(back.lease == m.lease);
  CHECK(back.dtu == m.dtu);
  CHECK(back.device == m.device);
  CHECK(back.unit == m.unit);
  CHECK(back.function == m.function);
  CHECK(back.interfaces == m.interfaces);
  CHECK(back.endpoints == m.endpoints);
  CHECK(back.expires_in_ms == m.expires_in_ms);

  InbandWelcomeMsg unknown = m;
  unknown.function.reset();
  CHECK_FALSE(round_trip(unknown).function.has_value());
  const json j = unknown;
  CHECK(j.contains("function"));
  CHECK(j["function"].is_null());
}

TEST_CASE("InbandWelcomeMsg rejects a bad endpoint type, an interface out of range and a negative expiry") {
  json j = sample_welcome();
  j["endpoints"][1]["type"] = "sideways";
  Error e = error_of<InbandWelcomeMsg>(object_frame(MessageType::inband_welcome, j));
  CHECK(e.code == Errc::bad_payload);
  CHECK(contains(e.detail, "endpoints[1]"));
  CHECK(contains(e.detail, "sideways"));

  j = sample_welcome();
  j["interfaces"] = json::array({0, 256});
  e = error_of<InbandWelcomeMsg>(object_frame(MessageType::inband_welcome, j));
  CHECK(contains(e.detail, "interfaces[1]"));

  j = sample_welcome();
  j["expires_in_ms"] = -1;
  e = error_of<InbandWelcomeMsg>(object_frame(MessageType::inband_welcome, j));
  CHECK(contains(e.detail, "expires_in_ms"));

  j = sample_welcome();
  j.erase("endpoints");
  e = error_of<InbandWelcomeMsg>(object_frame(MessageType::inband_welcome, j));
  CHECK(contains(e.detail, "missing field 'endpoints'"));
}

TEST_CASE("UsbControlMsg round-trips IN and OUT transfers with hex data") {
  UsbControlMsg in;
  in.setup = UsbSetup{0xa1, 0, 0, 0x0000, 1023};
  in.timeout_ms = 1000;
  const UsbControlMsg in_back = round_trip(in);
  CHECK(in_back.setup == in.setup);
  CHECK(in_back.data.empty());
  CHECK(in_back.timeout_ms == 1000);

  UsbControlMsg out;
  out.setup = UsbSetup{0x41, 0x0c, 0x1234, 0x0001, 3};
  out.data = {0xde, 0xad, 0x01};
  out.timeout_ms = 250;
  const json j = out;
  CHECK(j["data"] == "dead01");
  const UsbControlMsg out_back = round_trip(out);
  CHECK(out_back.setup == out.setup);
  CHECK(out_back.data == out.data);
}

TEST_CASE("UsbControlMsg rejects data on IN, a length mismatch on OUT, bad hex and a wide field") {
  json in = UsbControlMsg{UsbSetup{0x80, 6, 0x0100, 0, 18}, {}, 100};
  in["data"] = "00";
  Error e = error_of<UsbControlMsg>(object_frame(MessageType::usb_control, in));
  CHECK(e.code == Errc::bad_payload);
  CHECK(contains(e.detail, "must be empty for an IN"));

  json out = UsbControlMsg{UsbSetup{0x40, 1, 0, 0, 2}, {0x01, 0x02}, 100};
  out["data"] = "01";
  e = error_of<UsbControlMsg>(object_frame(MessageType::usb_control, out));
  CHECK(contains(e.detail, "length is 2"));

  out["data"] = "zz01";
  e = error_of<UsbControlMsg>(object_frame(MessageType::usb_control, out));
  CHECK(contains(e.detail, "field 'data'"));

  json wide = UsbControlMsg{UsbSetup{0x80, 6, 0x0100, 0, 18}, {}, 100};
  wide["request_type"] = 256;
  e = error_of<UsbControlMsg>(object_frame(MessageType::usb_control, wide));
  CHECK(contains(e.detail, "request_type"));

  wide = UsbControlMsg{UsbSetup{0x80, 6, 0x0100, 0, 18}, {}, 100};
  wide.erase("timeout_ms");
  e = error_of<UsbControlMsg>(object_frame(MessageType::usb_control, wide));
  CHECK(contains(e.detail, "timeout_ms"));
}

TEST_CASE("UsbOutMsg is a binary frame with an 8-byte header and round-trips") {
  UsbOutMsg m;
  m.endpoint = 0x01;
  m.timeout_ms = 0x01020304;
  m.data = {'J', 'O', 'B'};
  const Frame f = to_frame(m);
  CHECK(f.type == MessageType::usb_out);
  CHECK(f.is_binary());
  REQUIRE(f.payload.size() == kUsbOutHeaderBytes + 3);
  CHECK(f.payload[0] == 0x01);
  CHECK(f.payload[1] == 0);
  CHECK(f.payload[2] == 0);
  CHECK(f.payload[3] == 0);
  CHECK(f.payload[4] == 0x01);  // big-endian timeout
  CHECK(f.payload[7] == 0x04);
  const UsbOutMsg back = round_trip(m);
  CHECK_FALSE(back.continues);
  CHECK(back.endpoint == 0x01);
  CHECK(back.timeout_ms == 0x01020304);
  CHECK(back.data == m.data);

  UsbOutMsg empty;
  empty.endpoint = 0x02;
  CHECK(round_trip(empty).data.empty());

  UsbOutMsg next = m;
  next.continues = true;
  CHECK(to_frame(next).payload[1] == kUsbOutContinues);
  CHECK(round_trip(next).continues);
}

TEST_CASE("UsbOutMsg rejects a JSON frame, a short header and reserved bits set") {
  Frame f = usb_out_frame(0x01, 100, Bytes{1, 2, 3});
  f.flags = 0;
  CHECK(error_of<UsbOutMsg>(f).code == Errc::bad_payload);

  f = usb_out_frame(0x01, 100, Bytes{});
  f.payload.resize(5);
  Error e = error_of<UsbOutMsg>(f);
  CHECK(e.code == Errc::bad_payload);
  CHECK(contains(e.detail, "header"));

  f = usb_out_frame(0x01, 100, Bytes{1});
  f.payload[2] = 1;
  e = error_of<UsbOutMsg>(f);
  CHECK(contains(e.detail, "reserved"));

  f = usb_out_frame(0x01, 100, Bytes{1});
  f.payload[1] = 0x02;  // a flag bit nobody defined
  CHECK(contains(error_of<UsbOutMsg>(f).detail, "reserved"));

  CHECK(error_of<UsbOutMsg>(usb_data_frame(Bytes{1})).code == Errc::unknown_type);
}

TEST_CASE("UsbDataMsg is a binary frame of the bytes themselves") {
  const UsbDataMsg m{Bytes{0, 1, 2, 255}};
  const Frame f = to_frame(m);
  CHECK(f.is_binary());
  CHECK(f.payload == m.data);
  CHECK(round_trip(m).data == m.data);
  CHECK(round_trip(UsbDataMsg{}).data.empty());
  Frame not_binary = f;
  not_binary.flags = 0;
  CHECK(error_of<UsbDataMsg>(not_binary).code == Errc::bad_payload);
}

TEST_CASE("UsbInMsg, UsbDoneMsg, InbandRenewMsg and InbandRenewedMsg round-trip") {
  const UsbInMsg in = round_trip(UsbInMsg{0x82, 4096, 500});
  CHECK(in.endpoint == 0x82);
  CHECK(in.length == 4096);
  CHECK(in.timeout_ms == 500);
  CHECK(round_trip(UsbDoneMsg{65536}).length == 65536);
  CHECK(round_trip(InbandRenewMsg{60000}).length_ms == 60000);
  CHECK(round_trip(InbandRenewedMsg{59999}).expires_in_ms == 59999);

  const Error e = error_of<UsbInMsg>(
      object_frame(MessageType::usb_in, json{{"endpoint", -1}, {"length", 1}, {"timeout_ms", 1}}));
  CHECK(contains(e.detail, "endpoint"));
  CHECK(contains(
      error_of<InbandRenewMsg>(object_frame(MessageType::inband_renew, json{{"length_ms", 1.5}})).detail,
      "length_ms"));
}

TEST_CASE("GetDeviceIdMsg and DeviceIdMsg round-trip, with a null device id") {
  round_trip(GetDeviceIdMsg{});
  CHECK(round_trip(DeviceIdMsg{"MFG:EPSON;CMD:ESCPL2;MDL:Test;"}).device_id ==
        std::optional<std::string>("MFG:EPSON;CMD:ESCPL2;MDL:Test;"));
  CHECK_FALSE(round_trip(DeviceIdMsg{}).device_id.has_value());
  CHECK(error_of<DeviceIdMsg>(object_frame(MessageType::device_id, json{{"device_id", 5}})).code ==
        Errc::bad_payload);
  CHECK(error_of<GetDeviceIdMsg>(object_frame(MessageType::get_device_id, json::array())).code ==
        Errc::bad_payload);
}

TEST_CASE("ChannelClosingMsg round-trips and needs its reason") {
  const ChannelClosingMsg back = round_trip(ChannelClosingMsg{"expired", "lease 0123 expired"});
  CHECK(back.reason == "expired");
  CHECK(back.detail == "lease 0123 expired");
  CHECK(round_trip(ChannelClosingMsg{"released", ""}).detail.empty());
  const Error e =
      error_of<ChannelClosingMsg>(object_frame(MessageType::channel_closing, json{{"detail", "x"}}));
  CHECK(contains(e.detail, "missing field 'reason'"));
}

TEST_CASE("A JSON in-band message in a binary frame is a bad payload") {
  Frame f = to_frame(InbandHelloMsg{"abc"});
  f.flags = kFlagBinary;
  CHECK(error_of<InbandHelloMsg>(f).code == Errc::bad_payload);
}

TEST_CASE("usb_transfer_type_name names the four endpoint types") {
  CHECK(std::string(usb_transfer_type_name(0x00)) == "control");
  CHECK(std::string(usb_transfer_type_name(0x01)) == "isochronous");
  CHECK(std::string(usb_transfer_type_name(0x02)) == "bulk");
  CHECK(std::string(usb_transfer_type_name(0x03)) == "interrupt");
  CHECK(std::string(usb_transfer_type_name(0x06)) == "bulk");  // only bits 0-1 count
}

}  // namespace dtu::common
