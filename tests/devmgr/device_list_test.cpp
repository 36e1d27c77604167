#include "dtu/devmgr/device_list.hpp"

#include <doctest/doctest.h>

using dtu::common::DeviceRecord;
using dtu::common::Stamp;
using dtu::devmgr::DeviceList;

namespace {

DeviceRecord record(const std::string& dtu, const std::string& port, std::uint64_t seq, std::int64_t boot = 100) {
  DeviceRecord r;
  r.dtu = dtu;
  r.device = port;
  r.stamp = Stamp{boot, seq, 0};
  return r;
}

}  // namespace

TEST_CASE("DeviceList replaces a DTU's devices with a snapshot") {
  DeviceList list;
  CHECK(list.replace("d1", Stamp{100, 1, 0}, {record("d1", "1-1", 1), record("d1", "1-2", 1)}) ==
        DeviceList::Applied::applied);
  CHECK(list.device_count() == 2);
  CHECK(list.replace("d1", Stamp{100, 2, 0}, {record("d1", "1-3", 2)}) == DeviceList::Applied::applied);
  auto devices = list.list();
  REQUIRE(devices.size() == 1);
  CHECK(devices[0].device == "1-3");
}

TEST_CASE("DeviceList ignores a record older than what it holds for that DTU") {
  DeviceList list;
  CHECK(list.upsert(record("d1", "1-1", 5)) == DeviceList::Applied::applied);
  // Delivered late: generated before seq 5 on the DTU, so it must not undo it.
  CHECK(list.remove("d1", "1-1", Stamp{100, 4, 0}) == DeviceList::Applied::stale);
  CHECK(list.device_count() == 1);
  CHECK(list.upsert(record("d1", "1-1", 5)) == DeviceList::Applied::stale);  // a replay
  CHECK(list.remove("d1", "1-1", Stamp{100, 6, 0}) == DeviceList::Applied::applied);
  CHECK(list.device_count() == 0);
}

TEST_CASE("DeviceList orders by boot epoch before sequence number") {
  DeviceList list;
  CHECK(list.upsert(record("d1", "1-1", 900, 100)) == DeviceList::Applied::applied);
  // The DTU rebooted: its sequence restarts, its boot epoch is newer.
  CHECK(list.replace("d1", Stamp{200, 1, 0}, {}) == DeviceList::Applied::applied);
  CHECK(list.device_count() == 0);
  CHECK(list.upsert(record("d1", "1-2", 950, 100)) == DeviceList::Applied::stale);
}

TEST_CASE("DeviceList keeps DTUs apart and lists them sorted") {
  DeviceList list;
  CHECK(list.upsert(record("d2", "1-1", 1)) == DeviceList::Applied::applied);
  CHECK(list.upsert(record("d1", "1-2", 1)) == DeviceList::Applied::applied);
  CHECK(list.upsert(record("d1", "1-1", 2)) == DeviceList::Applied::applied);
  auto all = list.list();
  REQUIRE(all.size() == 3);
  CHECK(all[0].dtu == "d1");
  CHECK(all[0].device == "1-1");
  CHECK(all[2].dtu == "d2");
  CHECK(list.list(std::string("d2")).size() == 1);
  CHECK(list.dtu_count() == 2);
}

TEST_CASE("DeviceList drops a lost DTU but still refuses its stale records") {
  DeviceList list;
  CHECK(list.upsert(record("d1", "1-1", 3)) == DeviceList::Applied::applied);
  CHECK(list.drop_dtu("d1") == 1);
  CHECK(list.drop_dtu("d1") == 0);
  CHECK(list.upsert(record("d1", "1-1", 2)) == DeviceList::Applied::stale);
  CHECK(list.device_count() == 0);
}
