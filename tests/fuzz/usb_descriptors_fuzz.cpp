// Fuzz target: a device's descriptors from libusb's parsed configuration to the record a DTU
// reports: describe_configuration (usb_descriptors.hpp), then build_device_record
// (record_builder.hpp) and the unit rules over it (unit_rules.hpp). The descriptors come from the
// device, so any contents are possible: repeated interface numbers, alternate settings without a
// setting 0, associations that overlap, name no interface or reach past 255, endpoints shared
// between interfaces, and "extra" bytes that are not a chain of descriptors at all. (libusb's own
// parse of the raw bytes into libusb_config_descriptor is libusb's; this target starts from its
// result, every count and byte chosen by the input.)
//
// Input, read in order (missing bytes read as 0; 16-bit values little-endian, as in descriptors):
//   vid, pid, bcd_device, bcd_usb (2 bytes each), class, subclass, protocol;
//   a byte whose bits 0-2 say which of manufacturer, product, serial are present, then each
//   present string as a length byte and that many bytes (a byte above 0x7f reads as '?', as
//   libusb_get_string_descriptor_ascii reports it);
//   the configuration: bConfigurationValue, its extra bytes;
//   the interface count (mod 33), each interface as its alternate setting count (mod 4) and each
//   setting as number, alternate, class, subclass, protocol, extra bytes, endpoint count (mod 17),
//   and each endpoint as address, attributes, max packet size (2), extra bytes;
//   the lease count (mod 5), each as a unit number.
//   Extra bytes are a length byte and that many bytes, each in a buffer of exactly that size (so
//   ASan sees a read past it).
//
// Properties:
//   - describe_configuration reports every alternate setting in order with its endpoints, and as
//     associations exactly the interface association descriptors (type 0x0B, at least 8 bytes)
//     in the well-formed chains of the extra bytes, first one per first interface, in walk order;
//   - the record carries the device's fields and its units in ascending, distinct unit numbers;
//     every interface number with an alternate setting 0 is in exactly one unit, and a unit
//     covers nothing else;
//   - the record crosses the wire unchanged (to_frame / from_frame of device_attached);
//   - the empty finder matches every unit, and a filter that allows everything allows the device;
//   - conflicting_units never names the unit itself and is symmetric (endpoint sharing is; no
//     built-in quirk makes a device exclusive); apply_leases leaves a leased unit allocated to its
//     holder, a unit conflicting with a leased one unavailable, and the rest free.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dtu/agent/lease_table.hpp"
#include "dtu/agent/record_builder.hpp"
#include "dtu/agent/unit_rules.hpp"
#include "dtu/agent/usb_descriptors.hpp"
#include "dtu/agent/usb_device.hpp"
#include "dtu/common/finder.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/records.hpp"
#include "fuzz_check.hpp"

namespace {

using dtu::agent::Lease;
using dtu::agent::UsbDeviceInfo;
using dtu::common::DeviceRecord;
using dtu::common::UnitRecord;
using dtu::common::UnitState;

constexpr std::size_t kMaxInterfaces = 32;
constexpr std::size_t kMaxEndpoints = 16;
constexpr std::size_t kMaxAlternates = 3;
constexpr std::size_t kMaxLeases = 4;

// The input, front to back; 0 once it runs out.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  std::uint16_t word() {
    const std::uint8_t low = byte();
    return static_cast<std::uint16_t>(low | (byte() << 8));
  }
  std::size_t count(std::size_t max) { return byte() % (max + 1); }
  std::string ascii() {
    std::string out(byte(), '\0');
    for (char& c : out) {
      const std::uint8_t b = byte();
      c = b > 0x7f ? '?' : static_cast<char>(b);
    }
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

using Bytes = std::vector<unsigned char>;

// A configuration descriptor as libusb hands it over, with the storage its pointers point into.
struct Configuration {
  libusb_config_descriptor config{};
  std::vector<libusb_interface> interfaces;
  std::vector<std::vector<libusb_interface_descriptor>> alternates;
  std::vector<std::vector<libusb_endpoint_descriptor>> endpoints;  // one list per alternate
  std::vector<std::unique_ptr<Bytes>> extras;
  std::vector<const Bytes*> walk;  // every extra, in the order describe_configuration reads them

  // Extra bytes of exactly their length; nullptr when there are none, as libusb leaves them.
  const unsigned char* extra(Input& in, int& length) {
    auto bytes = std::make_unique<Bytes>(in.byte());
    for (unsigned char& b : *bytes) b = in.byte();
    walk.push_back(bytes.get());
    length = static_cast<int>(bytes->size());
    const unsigned char* data = bytes->empty() ? nullptr : bytes->data();
    extras.push_back(std::move(bytes));
    return data;
  }
};

UsbDeviceInfo read_device(Input& in) {
  UsbDeviceInfo info;
  info.port = "1-1.4";
  info.vid = in.word();
  info.pid = in.word();
  info.bcd_device = in.word();
  info.bcd_usb = in.word();
  info.cls = in.byte();
  info.subclass = in.byte();
  info.protocol = in.byte();
  const std::uint8_t strings = in.byte();
  if (strings & 1) info.manufacturer = in.ascii();
  if (strings & 2) info.product = in.ascii();
  if (strings & 4) info.serial = in.ascii();
  return info;
}

void read_configuration(Input& in, Configuration& c) {
  c.config.bConfigurationValue = in.byte();
  c.config.extra = c.extra(in, c.config.extra_length);
  const std::size_t interfaces = in.count(kMaxInterfaces);
  c.config.bNumInterfaces = static_cast<std::uint8_t>(interfaces);
  for (std::size_t i = 0; i < interfaces; ++i) {
    std::vector<libusb_interface_descriptor> alternates(in.count(kMaxAlternates));
    for (libusb_interface_descriptor& alt : alternates) {
      alt.bInterfaceNumber = in.byte();
      alt.bAlternateSetting = in.byte();
      alt.bInterfaceClass = in.byte();
      alt.bInterfaceSubClass = in.byte();
      alt.bInterfaceProtocol = in.byte();
      alt.extra = c.extra(in, alt.extra_length);
      std::vector<libusb_endpoint_descriptor> endpoints(in.count(kMaxEndpoints));
      for (libusb_endpoint_descriptor& endpoint : endpoints) {
        endpoint.bEndpointAddress = in.byte();
        endpoint.bmAttributes = in.byte();
        endpoint.wMaxPacketSize = in.word();
        endpoint.extra = c.extra(in, endpoint.extra_length);
      }
      alt.bNumEndpoints = static_cast<std::uint8_t>(endpoints.size());
      c.endpoints.push_back(std::move(endpoints));
    }
    c.alternates.push_back(std::move(alternates));
  }
  // Pointers last: the vectors above no longer move.
  std::size_t list = 0;
  for (auto& alternates : c.alternates) {
    for (libusb_interface_descriptor& alt : alternates) alt.endpoint = c.endpoints[list++].data();
    c.interfaces.push_back(libusb_interface{alternates.data(), static_cast<int>(alternates.size())});
  }
  c.config.interface = c.interfaces.data();
}

// The descriptors in one extra, read as USB 2.0 section 9.5 lays them out: each begins with its
// length, and the chain ends at a length below 2 or one that runs past the bytes.
std::vector<std::span<const unsigned char>> chain(const Bytes& bytes) {
  std::vector<std::span<const unsigned char>> out;
  std::span<const unsigned char> rest(bytes);
  while (rest.size() >= 2 && rest[0] >= 2 && rest[0] <= rest.size()) {
    out.push_back(rest.first(rest[0]));
    rest = rest.subspan(rest[0]);
  }
  return out;
}

void check_walk(const Configuration& c, const UsbDeviceInfo& info) {
  FUZZ_REQUIRE(info.configuration == c.config.bConfigurationValue);
  std::size_t at = 0;
  for (std::size_t i = 0; i < c.alternates.size(); ++i) {
    for (const libusb_interface_descriptor& alt : c.alternates[i]) {
      FUZZ_REQUIRE(at < info.interfaces.size());
      const dtu::agent::UsbInterface& itf = info.interfaces[at++];
      FUZZ_REQUIRE(itf.number == alt.bInterfaceNumber && itf.alternate == alt.bAlternateSetting);
      FUZZ_REQUIRE(itf.cls == alt.bInterfaceClass && itf.subclass == alt.bInterfaceSubClass &&
                   itf.protocol == alt.bInterfaceProtocol);
      FUZZ_REQUIRE(itf.endpoints.size() == alt.bNumEndpoints);
      for (std::size_t e = 0; e < itf.endpoints.size(); ++e) {
        FUZZ_REQUIRE(itf.endpoints[e].address == alt.endpoint[e].bEndpointAddress &&
                     itf.endpoints[e].attributes == alt.endpoint[e].bmAttributes &&
                     itf.endpoints[e].max_packet_size == alt.endpoint[e].wMaxPacketSize);
      }
    }
  }
  FUZZ_REQUIRE(at == info.interfaces.size());

  std::vector<dtu::agent::UsbInterfaceAssociation> expected;
  std::set<std::uint8_t> firsts;
  for (const Bytes* bytes : c.walk) {
    for (const auto d : chain(*bytes)) {
      if (d[1] != 0x0B || d.size() < 8 || !firsts.insert(d[2]).second) continue;
      expected.push_back({d[2], d[3], d[4], d[5], d[6]});
    }
  }
  FUZZ_REQUIRE(info.associations == expected);
}

void check_record(const UsbDeviceInfo& info, const DeviceRecord& record) {
  FUZZ_REQUIRE(record.dtu == "dtu-1" && record.device == info.port);
  FUZZ_REQUIRE(record.vid == info.vid && record.pid == info.pid && record.bcd_device == info.bcd_device);
  FUZZ_REQUIRE(record.cls == info.cls && record.subclass == info.subclass &&
               record.protocol == info.protocol);
  FUZZ_REQUIRE(record.serial == info.serial && record.manufacturer == info.manufacturer &&
               record.product == info.product);
  std::set<std::uint8_t> expected;
  for (const auto& itf : info.interfaces) {
    if (itf.alternate == 0) expected.insert(itf.number);
  }
  std::multiset<std::uint8_t> covered;
  for (std::size_t i = 0; i < record.units.size(); ++i) {
    const UnitRecord& u = record.units[i];
    if (i > 0) FUZZ_REQUIRE(record.units[i - 1].unit < u.unit);
    FUZZ_REQUIRE(!u.interfaces.empty());
    FUZZ_REQUIRE(u.state == UnitState::free && !u.holder && !u.lease);
    covered.insert(u.interfaces.begin(), u.interfaces.end());
  }
  FUZZ_REQUIRE(std::equal(covered.begin(), covered.end(), expected.begin(), expected.end()));
}

void check_wire(const DeviceRecord& record) {
  const auto frame = dtu::common::to_frame(dtu::common::DeviceAttachedMsg{record});
  const auto back = dtu::common::from_frame<dtu::common::DeviceAttachedMsg>(frame);
  FUZZ_REQUIRE(back.ok());
  FUZZ_REQUIRE(back->device == record);
}

void check_matching(const DeviceRecord& record) {
  std::vector<std::uint32_t> all;
  for (const UnitRecord& u : record.units) all.push_back(u.unit);
  FUZZ_REQUIRE(dtu::common::matching_units(dtu::common::Finder{}, record) == all);
  const dtu::common::UsbredirFilter allow_all{{dtu::common::UsbredirRule{-1, -1, -1, -1, true}}};
  FUZZ_REQUIRE(dtu::common::usbredir_allows(allow_all, record));
}

void check_leases(Input& in, const UsbDeviceInfo& info, const DeviceRecord& built) {
  std::map<std::uint32_t, std::set<std::uint32_t>> conflicts;
  for (const UnitRecord& u : built.units) {
    conflicts[u.unit] = dtu::agent::conflicting_units(info, built, u.unit);
    FUZZ_REQUIRE(!conflicts[u.unit].contains(u.unit));
  }
  for (const auto& [unit, others] : conflicts) {
    for (std::uint32_t other : others) {
      FUZZ_REQUIRE(conflicts.contains(other) && conflicts[other].contains(unit));
    }
  }
  std::vector<Lease> leases(in.count(kMaxLeases));
  std::vector<const Lease*> held;
  for (std::size_t i = 0; i < leases.size(); ++i) {
    leases[i].id = "lease-" + std::to_string(i);
    leases[i].device = info.port;
    leases[i].unit = in.byte();
    leases[i].holder = "service-" + std::to_string(i);
    held.push_back(&leases[i]);
  }
  DeviceRecord record = built;
  dtu::agent::apply_leases(record, info, held);
  FUZZ_REQUIRE(record.units.size() == built.units.size());
  for (const UnitRecord& u : record.units) {
    const auto lease =
        std::find_if(held.begin(), held.end(), [&u](const Lease* l) { return l->unit == u.unit; });
    if (lease != held.end()) {
      FUZZ_REQUIRE(u.state == UnitState::allocated && u.holder == (*lease)->holder &&
                   u.lease == (*lease)->id);
      continue;
    }
    const bool blocked = std::any_of(held.begin(), held.end(), [&](const Lease* l) {
      return conflicts.contains(l->unit) && conflicts[l->unit].contains(u.unit);
    });
    FUZZ_REQUIRE(u.state == (blocked ? UnitState::unavailable : UnitState::free));
    FUZZ_REQUIRE(!u.holder && !u.lease);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  UsbDeviceInfo info = read_device(in);
  Configuration configuration;
  read_configuration(in, configuration);
  try {
    dtu::agent::describe_configuration(configuration.config, info);
    check_walk(configuration, info);
    const DeviceRecord record = dtu::agent::build_device_record(info, "dtu-1", dtu::common::Stamp{1, 2, 3});
    check_record(info, record);
    check_wire(record);
    check_matching(record);
    check_leases(in, info, record);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    dtu::fuzz::violated("no exception escapes describe_configuration, build_device_record or the unit rules", __FILE__, __LINE__);
  }
  return 0;
}
