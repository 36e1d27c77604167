// Service messages: list_dtus (99) and dtu_list (100) round-trip through the wire encoding, keep
// the fields only the serving manager knows optional, and the decoder refuses a DTU entry
// without its counts, naming the field.
#include "dtu/common/service_messages.hpp"

#include <doctest/doctest.h>

#include <ostream>  // doctest prints std::error_code
#include <string>

#include "dtu/common/frame_decoder.hpp"
#include "support/message_checks.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

using dtu::testing::object_frame;
using dtu::testing::round_trip;

DtuInfo connected_here() {
  DtuInfo d;
  d.dtu = "dtu-7";
  d.owner = "m1";
  d.state = "active";
  d.address = "10.0.3.17:51234";
  d.agent_version = "0.8.0";
  d.boot_epoch = 1795294179140706;
  d.connected_ms_ago = 81234;
  d.devices = 2;
  d.units_free = 3;
  d.units_allocated = 1;
  return d;
}

TEST_CASE("list_dtus round-trips, and its group flag defaults to false") {
  CHECK(round_trip(ListDtusMsg{true}).group);
  CHECK_FALSE(round_trip(ListDtusMsg{}).group);
  auto empty = from_frame<ListDtusMsg>(object_frame(MessageType::list_dtus, json::object()));
  REQUIRE(empty.ok());
  CHECK_FALSE(empty->group);
}

TEST_CASE("dtu_list round-trips a DTU connected here and one another member serves") {
  DtuInfo remote;
  remote.dtu = "dtu-9";
  remote.owner = "m2";
  remote.state = "remote";
  remote.boot_epoch = 1795294170000000;
  remote.devices = 1;
  remote.units_free = 1;
  DtuListMsg list;
  list.dtus = {connected_here(), remote};
  const DtuListMsg out = round_trip(list);
  REQUIRE(out.dtus.size() == 2);
  CHECK(out.dtus[0] == connected_here());
  CHECK(out.dtus[1] == remote);

  // What the serving manager alone knows is absent for a remote DTU, not empty.
  const json j = remote;
  CHECK_FALSE(j.contains("address"));
  CHECK_FALSE(j.contains("agent_version"));
  CHECK_FALSE(j.contains("connected_ms_ago"));
  CHECK(j.at("units_unavailable") == 0);
}

TEST_CASE("dtu_list refuses a DTU entry without its device count, naming the field") {
  json entry = connected_here();
  entry.erase("devices");
  auto result =
      from_frame<DtuListMsg>(object_frame(MessageType::dtu_list, json{{"dtus", json::array({entry})}}));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == make_error_code(Errc::bad_payload));
  CHECK(result.error().detail.find("devices") != std::string::npos);
}

DeviceRecord printer_record() {
  DeviceRecord r;
  r.dtu = "dtu-7";
  r.device = "1-1.4";
  r.vid = 0x04b8;
  r.pid = 0x0005;
  r.serial = std::string("PRN\xff") + "0001";  // not UTF-8: a device's string is never trusted to be
  r.product = "Stylus Test Printer";
  UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 7;
  u.function = "printer";
  u.state = UnitState::allocated;
  u.holder = "cups-dtu-backend";
  u.lease = "L-1";
  r.units = {u};
  r.stamp = Stamp{1795294179140706, 42, 0};
  r.owner = "m1";
  r.orphaned = true;
  return r;
}

TEST_CASE("a finder event built from a device encoded once is the frame to_frame builds, byte for byte") {
  const DeviceRecord record = printer_record();
  const std::string device = encode_device(record);
  for (const std::vector<std::uint32_t>& units :
       {std::vector<std::uint32_t>{}, std::vector<std::uint32_t>{0}, std::vector<std::uint32_t>{0, 3, 250}}) {
    const Frame matched = finder_event_frame(MessageType::finder_matched, 1234567890123ULL, device, units);
    const Frame reference = to_frame(FinderMatchedMsg{1234567890123ULL, record, units});
    CHECK(matched.type == MessageType::finder_matched);
    CHECK(matched.payload_text() == reference.payload_text());
    auto decoded = from_frame<FinderMatchedMsg>(matched);
    REQUIRE(decoded.ok());
    CHECK(decoded->units == units);
    CHECK(decoded->device.dtu == "dtu-7");
    CHECK(decoded->device.orphaned);

    const Frame changed = finder_event_frame(MessageType::finder_changed, 9, device, units);
    CHECK(changed.type == MessageType::finder_changed);
    CHECK(changed.payload_text() == to_frame(FinderChangedMsg{9, record, units}).payload_text());
  }
}

TEST_CASE("encode_device writes what nlohmann writes for the record, plain or not") {
  // Plain records are written directly, others through nlohmann: the bytes must not tell.
  DeviceRecord plain = printer_record();
  plain.serial = "PRN0001";
  std::vector<DeviceRecord> records;
  records.push_back(plain);
  DeviceRecord r = plain;
  r.orphaned = false;
  r.serial.reset();
  r.manufacturer = "EPSON";
  r.units[0].holder.reset();
  r.units[0].lease.reset();
  r.units[0].state = UnitState::free;
  records.push_back(r);
  r.units.clear();  // no units
  r.vid = 0xffff;
  r.bcd_device = 0x0100;
  r.stamp = Stamp{-1, 18446744073709551615ULL, -1795294179140706};
  records.push_back(r);
  r = plain;
  UnitRecord scanner;
  scanner.unit = 1;
  scanner.interfaces = {1, 2, 255};
  scanner.cls = 255;
  scanner.subclass = 1;
  scanner.protocol = 2;
  scanner.function = "scanner";
  scanner.state = UnitState::unavailable;
  r.units.push_back(scanner);
  r.units.push_back(UnitRecord{});  // empty strings and no interfaces
  records.push_back(r);
  for (const std::string odd : {"tab\there", "quote\"", "back\\slash", "grüße", "PRN\xff"}) {
    r = plain;
    r.product = odd;
    records.push_back(r);
    r = plain;
    r.units[0].function = odd;
    records.push_back(r);
  }
  for (const DeviceRecord& record : records) {
    const std::string expected = json(record).dump(-1, ' ', false, json::error_handler_t::replace);
    CHECK(encode_device(record) == expected);
  }
}

TEST_CASE(
    "the last encoded device is encoded again for any change its JSON shows, the stamp's time included") {
  LastEncodedDevice last;
  DeviceRecord record = printer_record();
  last.use(record);
  const auto first = last.record();
  last.use(record);  // the same record: nothing encoded, the same shared copy
  CHECK(last.record() == first);
  record.stamp.time_us += 1;  // Stamp's operator== ignores time_us; the JSON does not
  last.use(record);
  CHECK(last.record() != first);
  CHECK(last.json() == encode_device(record));
  record.units[0].state = UnitState::free;
  record.units[0].holder.reset();
  last.use(record);
  CHECK(last.json() == encode_device(record));
}

}  // namespace
}  // namespace dtu::common
