// matcher_bench: what matching costs one manager at site scale — 100,000 device records (12,500
// DTUs × 8 devices) against 10,000 finders of a realistic mix — through exactly the structures and
// calls the manager uses: DeviceList with the listener DeviceManager installs (FinderRegistry and
// LeaseBroker follow every change), and GroupBroker::add_finder over FinderRegistry (what a
// client's register_finder runs). Everything in-process on one thread; no sockets.
//
// Measured, each from the call to its return, every finder event built (finder_matched / changed /
// gone frames handed to the clients' sinks):
//   - a device event: the attach of a new device (DeviceList::upsert of a record not there yet),
//     a unit of a present device changing state, and the detach of a device;
//   - registering one finder while the 100k devices are present (its first matches delivered);
//   - the RSS the structures add (finders, then devices with their cached matches).
// Metrics: dtu.matcher.device_event (µs, median of attach events; target ≤ 50), its p99, the
// change and detach figures, dtu.matcher.finder_register (µs, median), dtu.matcher.rss (MB).
//
// Usage: matcher_bench [--dtus N] [--finders N] [--events N] [--registrations N]
// Defaults 12500 DTUs, 10000 finders, 10000 events of each kind, 20 registrations (about two
// minutes, most of it loading the devices with the finders' events); MATCHER_BENCH_EVENTS /
// MATCHER_BENCH_REGISTRATIONS override the last two.
// Single-threaded; never fails on a number.

#include <asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_output.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/finder.hpp"
#include "dtu/common/frame.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/records.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/finder_registry.hpp"
#include "dtu/devmgr/group_broker.hpp"
#include "dtu/devmgr/lease_broker.hpp"
#include "dtu/devmgr/policy.hpp"
#include "dtu/devmgr/session_table.hpp"

namespace {

using dtu::common::DeviceRecord;
using dtu::common::Finder;
using dtu::common::Frame;
using dtu::common::UnitRecord;
using dtu::common::UnitState;
using dtu::devmgr::DeviceList;
using dtu::devmgr::FinderRegistry;
using dtu::devmgr::GroupBroker;
using dtu::devmgr::LeaseBroker;
using dtu::devmgr::SessionTable;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr std::size_t kDevicesPerDtu = 8;
constexpr std::size_t kClients = 100;  // services, each registering its share of the finders
constexpr std::uint64_t kSeed = 20261122;

struct Options {
  std::size_t dtus = 12'500;
  std::size_t finders = 10'000;
  std::size_t events = 10'000;
  std::size_t registrations = 20;
};

[[noreturn]] void usage_error(const std::string& what) {
  std::cerr << "matcher_bench: " << what
            << "\nusage: matcher_bench [--dtus N] [--finders N] [--events N] [--registrations N]\n";
  std::exit(2);
}

std::size_t parse_count(const std::string& flag, const char* text) {
  try {
    std::size_t used = 0;
    const unsigned long long value = std::stoull(text, &used);
    if (used == std::string(text).size() && value > 0) return static_cast<std::size_t>(value);
  } catch (const std::exception&) {
  }
  usage_error(flag + " needs a positive integer, got '" + text + "'");
}

Options parse_options(int argc, char** argv) {
  Options o;
  if (const char* v = std::getenv("MATCHER_BENCH_EVENTS"); v != nullptr && *v != '\0')
    o.events = parse_count("MATCHER_BENCH_EVENTS", v);
  if (const char* v = std::getenv("MATCHER_BENCH_REGISTRATIONS"); v != nullptr && *v != '\0')
    o.registrations = parse_count("MATCHER_BENCH_REGISTRATIONS", v);
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage_error("unknown argument or missing value: '" + flag + "'");
    const char* value = argv[++i];
    if (flag == "--dtus")
      o.dtus = parse_count(flag, value);
    else if (flag == "--finders")
      o.finders = parse_count(flag, value);
    else if (flag == "--events")
      o.events = parse_count(flag, value);
    else if (flag == "--registrations")
      o.registrations = parse_count(flag, value);
    else
      usage_error("unknown argument '" + flag + "'");
  }
  return o;
}

// The resident set of this process in MB (VmRSS).
double rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

double micros_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

// ---- the site's devices ------------------------------------------------------------------------

struct UnitShape {
  std::uint8_t cls, subclass, protocol;
  const char* function;
};

// One device model: its identity and its units. Models of one kind differ by pid.
struct Model {
  std::uint16_t vid = 0;
  std::uint16_t pid = 0;
  std::uint8_t cls = 0, subclass = 0, protocol = 0;
  std::string manufacturer;
  std::string product;
  std::string serial_prefix;  // empty: the model reports no serial
  std::vector<UnitShape> units;
};

struct Kind {
  std::string name;
  int weight;  // relative frequency among a DTU's six free ports
  std::vector<Model> models;
};

// A kind with `count` models per vendor: pids base, base+1, …
Kind make_kind(std::string name, int weight,
               const std::vector<std::pair<std::uint16_t, std::string>>& vendors, std::uint16_t pid_base,
               std::size_t count, std::uint8_t cls, const std::string& product,
               const std::string& serial_prefix, std::vector<UnitShape> units) {
  Kind kind{std::move(name), weight, {}};
  for (const auto& [vid, manufacturer] : vendors) {
    for (std::size_t i = 0; i < count; ++i) {
      Model m;
      m.vid = vid;
      m.pid = static_cast<std::uint16_t>(pid_base + i);
      m.cls = cls;
      m.subclass = cls == 0xef ? 2 : 0;
      m.protocol = cls == 0xef ? 1 : 0;
      m.manufacturer = manufacturer;
      m.product = product + " " + std::to_string(100 + i * 10);
      m.serial_prefix = serial_prefix.empty() ? "" : serial_prefix + manufacturer.substr(0, 2);
      m.units = units;
      kind.models.push_back(std::move(m));
    }
  }
  return kind;
}

struct Catalog {
  Kind keyboard, mouse;
  std::vector<Kind> others;  // drawn by weight for the other ports
  std::vector<const Model*> all_models;
};

Catalog make_catalog() {
  Catalog c;
  const std::vector<std::pair<std::uint16_t, std::string>> hid_vendors{
      {0x046d, "Logitech"}, {0x045e, "Microsoft"}, {0x413c, "Dell"}, {0x046a, "Cherry"}};
  c.keyboard = make_kind("keyboard", 0, hid_vendors, 0xc310, 6, 0, "Keyboard K", "", {{3, 1, 1, "hid"}});
  c.mouse = make_kind("mouse", 0, hid_vendors, 0xc050, 6, 0, "Optical Mouse M", "", {{3, 1, 2, "hid"}});
  c.others.push_back(make_kind("printer", 20,
                               {{0x04b8, "EPSON"},
                                {0x03f0, "HP"},
                                {0x04f9, "Brother"},
                                {0x04a9, "Canon"},
                                {0x043d, "Lexmark"},
                                {0x0482, "Kyocera"}},
                               0x0200, 12, 0, "Printer P", "PRN", {{7, 1, 2, "printer"}}));
  c.others.push_back(make_kind("mfp", 5, {{0x04b8, "EPSON"}, {0x03f0, "HP"}, {0x04f9, "Brother"}}, 0x0800, 6,
                               0, "MFP Printer-Scanner", "MFP",
                               {{7, 1, 2, "printer"}, {0xff, 0xff, 0xff, "vendor"}, {8, 6, 80, "storage"}}));
  c.others.push_back(make_kind("headset", 15,
                               {{0x0b0e, "Jabra"}, {0x047f, "Plantronics"}, {0x1395, "Sennheiser"}}, 0x0300,
                               8, 0, "Headset H", "HS", {{1, 1, 0, "audio"}, {3, 0, 0, "hid"}}));
  c.others.push_back(make_kind("smartcard", 15, {{0x076b, "OMNIKEY"}, {0x04e6, "SCM"}, {0x08e6, "Gemalto"}},
                               0x3021, 5, 0, "Smart Card Reader", "SC", {{0x0b, 0, 0, "smartcard"}}));
  c.others.push_back(make_kind("storage", 15,
                               {{0x0781, "SanDisk"}, {0x0951, "Kingston"}, {0x04e8, "Samsung"}}, 0x5500, 8, 0,
                               "USB Flash Drive", "FD", {{8, 6, 80, "storage"}}));
  c.others.push_back(make_kind("webcam", 10, {{0x046d, "Logitech"}, {0x045e, "Microsoft"}}, 0x0820, 6, 0xef,
                               "Webcam C", "WC", {{0x0e, 3, 0, "video"}, {1, 2, 0, "audio"}}));
  c.others.push_back(make_kind("serial", 5, {{0x0403, "FTDI"}, {0x067b, "Prolific"}}, 0x6001, 3, 0,
                               "USB-Serial", "FT", {{0xff, 0xff, 0xff, "vendor"}}));
  c.others.push_back(make_kind("barcode", 10, {{0x0c2e, "Honeywell"}, {0x05e0, "Zebra"}}, 0x0200, 6, 0,
                               "Barcode Scanner", "BC", {{3, 1, 1, "hid"}}));
  c.others.push_back(make_kind("signature", 5, {{0x056a, "Wacom"}}, 0x00a0, 4, 0, "Signature Pad", "SP",
                               {{3, 0, 0, "hid"}}));
  for (const Kind* k : {&c.keyboard, &c.mouse}) {
    for (const Model& m : k->models) c.all_models.push_back(&m);
  }
  for (const Kind& k : c.others) {
    for (const Model& m : k.models) c.all_models.push_back(&m);
  }
  return c;
}

const std::vector<std::string> kSites{"hq", "lab", "ward", "branch", "kiosk"};
const std::vector<std::string> kPorts{"1-1", "1-2", "1-3", "1-4", "2-1", "2-2", "2-3", "2-4"};

std::string dtu_id(std::size_t i) {
  char number[32];
  std::snprintf(number, sizeof number, "%05zu", i);
  return kSites[i % kSites.size()] + "-" + number;
}

class Site {
 public:
  explicit Site(std::size_t dtus) : catalog_(make_catalog()) {
    int total = 0;
    for (const Kind& k : catalog_.others) total += k.weight;
    total_weight_ = total;
    dtus_.reserve(dtus);
    for (std::size_t i = 0; i < dtus; ++i) dtus_.push_back(dtu_id(i));
  }

  const std::vector<std::string>& dtus() const { return dtus_; }
  const Catalog& catalog() const { return catalog_; }
  std::mt19937_64& rng() { return rng_; }

  std::size_t below(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_); }
  bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }

  const Model& random_model() {
    int roll = static_cast<int>(below(static_cast<std::size_t>(total_weight_)));
    for (const Kind& k : catalog_.others) {
      if (roll < k.weight) return k.models[below(k.models.size())];
      roll -= k.weight;
    }
    return catalog_.others.front().models.front();
  }

  DeviceRecord device(const std::string& dtu, const std::string& port, const Model& m) {
    DeviceRecord r;
    r.dtu = dtu;
    r.device = port;
    r.vid = m.vid;
    r.pid = m.pid;
    r.bcd_device = static_cast<std::uint16_t>(0x0100 + below(4));
    r.cls = m.cls;
    r.subclass = m.subclass;
    r.protocol = m.protocol;
    r.manufacturer = m.manufacturer;
    r.product = m.product;
    if (!m.serial_prefix.empty()) {
      char number[32];
      std::snprintf(number, sizeof number, "%08llu", static_cast<unsigned long long>(next_serial_++));
      r.serial = m.serial_prefix + number;
    }
    std::uint8_t interface = 0;
    for (const UnitShape& shape : m.units) {
      UnitRecord u;
      u.unit = interface;
      u.interfaces = {interface};
      if (shape.function == std::string_view("video"))
        u.interfaces = {interface, static_cast<std::uint8_t>(interface + 1)};
      interface = static_cast<std::uint8_t>(interface + u.interfaces.size());
      u.cls = shape.cls;
      u.subclass = shape.subclass;
      u.protocol = shape.protocol;
      u.function = shape.function;
      r.units.push_back(std::move(u));
    }
    r.owner = "m1";
    r.stamp = dtu::common::Stamp{1, ++seq_, 0};
    return r;
  }

  // The eight devices of one DTU: a keyboard, a mouse, six others.
  std::vector<DeviceRecord> dtu_devices(const std::string& dtu) {
    std::vector<DeviceRecord> out;
    out.push_back(device(dtu, kPorts[0], catalog_.keyboard.models[below(catalog_.keyboard.models.size())]));
    out.push_back(device(dtu, kPorts[1], catalog_.mouse.models[below(catalog_.mouse.models.size())]));
    for (std::size_t p = 2; p < kDevicesPerDtu; ++p) out.push_back(device(dtu, kPorts[p], random_model()));
    return out;
  }

  dtu::common::Stamp next_stamp() { return dtu::common::Stamp{1, ++seq_, 0}; }

 private:
  Catalog catalog_;
  int total_weight_ = 0;
  std::vector<std::string> dtus_;
  std::mt19937_64 rng_{kSeed};
  std::uint64_t next_serial_ = 0;
  std::uint64_t seq_ = 0;
};

// ---- the finders -------------------------------------------------------------------------------

// Sessions of users sitting at DTUs: session i is at DTU (i * 3) mod dtus.
std::string session_id(std::size_t i) {
  return "sess-" + std::to_string(i);
}

std::string hex4(std::uint16_t v) {
  return dtu::common::hex16(v);
}

// A realistic mix, as JSON (parsed with parse_finder, as from a client). Most finders are narrow
// (a session's, a DTU's, one device's), a few are broad, so a device event concerns a handful of
// finders. Shares: per-session 30 % (smartcard, audio, scanner, printer, storage by a usbredir
// filter), DTU-scoped 24 %, one device by serial (some with its vid) 15 %, DTU exact or glob of 5
// DTUs 10 %, model drivers vid:pid 5 %, class triples / manufacturer / product globs within 100
// DTUs 10.5 %, serial globs 3 %, bus-scoped 2 %, vendor + unit class 0.5 %, and 10 broad ones
// ("any printer", "everything", a usbredir filter alone).
json make_finder(Site& site, const std::vector<std::pair<std::string, std::uint16_t>>& serials,
                 std::size_t index, std::size_t sessions) {
  const auto& dtus = site.dtus();
  const auto& models = site.catalog().all_models;
  const Model& model = *models[site.below(models.size())];
  const std::string& some_dtu = dtus[site.below(dtus.size())];
  const std::size_t slot = index % 1000;
  if (index < 10) {
    const json broad[] = {json{{"function", "printer"}},
                          json::object(),
                          json{{"unit_class", 7}},
                          json{{"function", "smartcard"}},
                          json{{"function", {"storage", "scanner"}}},
                          json{{"class", 0xef}, {"subclass", 2}, {"protocol", 1}},
                          json{{"function", "printer"}, {"scope", "bus"}},
                          json{{"manufacturer", "EPSON*"}},
                          json{{"usbredir", "0x08,-1,-1,-1,1|-1,-1,-1,-1,0"}},
                          json{{"function", "video"}}};
    return broad[index];
  }
  const std::string session = session_id(site.below(sessions));
  if (slot < 300) {
    static const char* kSessionFunctions[] = {"smartcard", "audio", "scanner", "printer"};
    if (slot % 5 == 4)
      return json{{"usbredir", "0x08,-1,-1,-1,1|-1,-1,-1,-1,0"}, {"scope", "session"}, {"session", session}};
    return json{{"function", kSessionFunctions[slot % 4]}, {"scope", "session"}, {"session", session}};
  }
  if (slot < 500) {
    if (slot % 2 == 0) return json{{"function", "printer"}, {"scope", "dtu"}, {"scope_dtu", some_dtu}};
    return json{{"unit_class", {3, 0x0b}}, {"scope", "dtu"}, {"scope_dtu", some_dtu}};
  }
  if (slot < 650) {
    // One device by its serial.
    const auto& [serial, vid] = serials[site.below(serials.size())];
    if (slot % 3 == 0) return json{{"serial", serial}, {"vid", hex4(vid)}};
    return json{{"serial", serial}};
  }
  if (slot < 700) {
    if (slot % 4 == 0)
      return json{{"vid", hex4(model.vid)},
                  {"pid", {hex4(model.pid), hex4(static_cast<std::uint16_t>(model.pid + 1))}}};
    if (slot % 4 == 1)
      return json{{"vid", hex4(model.vid)}, {"pid", hex4(model.pid)}, {"bcd_device", "0101"}};
    return json{{"vid", hex4(model.vid)}, {"pid", hex4(model.pid)}};
  }
  if (slot < 705) return json{{"vid", hex4(model.vid)}, {"unit_class", model.units.front().cls}};
  // A DTU glob of 100 DTUs ("hq-001*"): a ward's or a lab's.
  const std::string hundred = some_dtu.substr(0, some_dtu.size() - 2) + "*";
  if (slot < 760) {
    return json{
        {"class", 0}, {"unit_class", 8}, {"unit_subclass", 6}, {"unit_protocol", 80}, {"dtu", hundred}};
  }
  if (slot < 860) {
    if (slot % 2 == 0) return json{{"dtu", some_dtu}, {"function", "printer"}};
    return json{{"dtu", some_dtu.substr(0, some_dtu.size() - 1) + "[0-4]"}};
  }
  if (slot < 890) {
    static const char* kSerialGlobs[] = {"PRNEP0000*", "SCOM000?1*", "HSJa0000[0-3]*", "FDSa0001*"};
    return json{{"serial", kSerialGlobs[slot % 4]}};
  }
  if (slot < 940) {
    if (slot % 2 == 0) {
      return json{
          {"manufacturer", model.manufacturer}, {"unit_class", model.units.front().cls}, {"dtu", hundred}};
    }
    return json{{"product", "*" + model.product.substr(model.product.size() - 3)},
                {"function", model.units.front().function},
                {"dtu", hundred}};
  }
  if (slot < 960) return json{{"scope", "bus"}, {"function", "storage"}, {"dtu", hundred}};
  return json{{"function", "storage"}, {"scope", "dtu"}, {"scope_dtu", some_dtu}};
}

// ---- the manager's structures ------------------------------------------------------------------

// What a client receives: counted, not kept (the frames are built, as for a real client).
struct ClientSink {
  std::uint64_t frames = 0;
  std::uint64_t bytes = 0;
};

struct Manager {
  asio::io_context io;
  DeviceList devices;
  SessionTable sessions;
  dtu::devmgr::Policy policy;
  FinderRegistry finders{"m1", devices, sessions};
  LeaseBroker leases{
      LeaseBroker::Context{"m1", io.get_executor(), &dtu::common::SystemClock::instance(),
                           [](const std::string&) { return std::shared_ptr<dtu::devmgr::DtuSession>(); },
                           &devices, &sessions, [this]() -> const dtu::devmgr::Policy& { return policy; }},
      dtu::common::Logger("m1")};
  GroupBroker group{
      GroupBroker::Context{"m1", 1, io.get_executor(), &dtu::common::SystemClock::instance(), &devices,
                           &finders, &leases, &sessions, std::chrono::milliseconds(10000),
                           [](const std::string&) { return true; },
                           [](const std::string&, const std::string&) {}},
      dtu::common::Logger("m1")};
  std::vector<ClientSink> clients = std::vector<ClientSink>(kClients);

  Manager() {
    // As DeviceManager's constructor: every change reaches the finders, then the lease broker.
    devices.set_listener(DeviceList::Listener{
        [this](const DeviceRecord*, const DeviceRecord& now) {
          finders.device_updated(now);
          leases.device_updated(now);
        },
        [this](const DeviceRecord& gone, std::string_view reason) { finders.device_removed(gone, reason); }});
  }

  FinderRegistry::Sink sink(std::size_t client) {
    ClientSink* target = &clients[client];
    return [target](Frame frame) {
      ++target->frames;
      target->bytes += frame.payload.size();
    };
  }
  std::uint64_t frames() const {
    std::uint64_t n = 0;
    for (const ClientSink& c : clients) n += c.frames;
    return n;
  }
};

struct Summary {
  std::string what;
  std::vector<double> samples;
  std::uint64_t frames = 0;
};

void print(const Summary& s) {
  std::printf("  %-44s n=%-7zu median %9.1f us   p99 %9.1f us   max %9.1f us   events built %llu\n",
              s.what.c_str(), s.samples.size(), dtu::bench::median(s.samples),
              dtu::bench::percentile(s.samples, 99),
              s.samples.empty() ? 0.0 : *std::max_element(s.samples.begin(), s.samples.end()),
              static_cast<unsigned long long>(s.frames));
}

int run(const Options& options) {
  // The serials the site's devices will have (the same generator, same seed), for the finders
  // that name one device.
  std::vector<std::pair<std::string, std::uint16_t>> serials;  // serial, vid
  {
    Site dry(options.dtus);
    for (const std::string& dtu : dry.dtus()) {
      for (const DeviceRecord& d : dry.dtu_devices(dtu)) {
        if (d.serial) serials.emplace_back(*d.serial, d.vid);
      }
    }
  }
  const double rss_start = rss_mb();
  Site site(options.dtus);
  site.rng().seed(kSeed + 1);       // the finders' draws
  Site devices_site(options.dtus);  // the devices: the same draws as the dry run above
  Manager manager;
  const std::size_t sessions = std::max<std::size_t>(1, options.dtus / 3);
  for (std::size_t i = 0; i < sessions; ++i) {
    const std::string& dtu = site.dtus()[(i * 3) % site.dtus().size()];
    const auto move =
        manager.sessions.attach(session_id(i), "user" + std::to_string(i), dtu, dtu::common::MonoTime{});
    manager.finders.session_moved(session_id(i), move);
  }
  std::printf("matcher_bench: %zu DTUs x %zu devices, %zu finders from %zu clients, %zu sessions\n",
              options.dtus, kDevicesPerDtu, options.finders, kClients, sessions);

  // 1. The finders, registered before the devices arrive (as at a manager's start).
  std::uint64_t next_finder_id = 1;
  std::vector<std::pair<FinderRegistry::ClientKey, std::uint64_t>> registered;
  const auto t_finders = Clock::now();
  for (std::size_t i = 0; i < options.finders; ++i) {
    auto parsed = dtu::common::parse_finder(make_finder(site, serials, i, sessions));
    if (!parsed) {
      std::cerr << "matcher_bench: a generated finder is invalid: " << parsed.error().detail << "\n";
      return 1;
    }
    const std::size_t client = i % kClients;
    const auto* key = &manager.clients[client];
    const std::uint64_t id = next_finder_id++;
    auto added =
        manager.group.add_finder(key, FinderRegistry::Owner{"svc" + std::to_string(client), 1000, 1000},
                                 manager.sink(client), id, std::move(parsed).value());
    if (!added.ok()) {
      std::cerr << "matcher_bench: registering finder " << i << " failed: " << added.error().detail << "\n";
      return 1;
    }
    registered.emplace_back(key, id);
  }
  const double finders_s = micros_since(t_finders) / 1e6;
  const double rss_finders = rss_mb();

  // 2. The devices: one snapshot per DTU (each a batch of 8 device events).
  const auto t_devices = Clock::now();
  const std::uint64_t frames_before_load = manager.frames();
  for (const std::string& dtu : devices_site.dtus()) {
    manager.devices.replace(dtu, devices_site.next_stamp(), devices_site.dtu_devices(dtu));
  }
  const double load_s = micros_since(t_devices) / 1e6;
  const std::uint64_t load_frames = manager.frames() - frames_before_load;
  const double rss_loaded = rss_mb();
  std::printf(
      "  registered %zu finders in %.2f s; loaded %zu devices in %.2f s (%llu events built); "
      "finder evaluations so far %llu\n",
      options.finders, finders_s, manager.devices.device_count(), load_s,
      static_cast<unsigned long long>(load_frames),
      static_cast<unsigned long long>(manager.finders.evaluations()));

  // 3. Device events at full size: attach a new device on a random DTU (a ninth port), change a
  // unit of it, detach it again — the device count stays at the site's.
  Summary attach{"attach of a new device", {}, 0};
  Summary change{"unit state change of a present device", {}, 0};
  Summary detach{"detach of a device", {}, 0};
  attach.samples.reserve(options.events);
  change.samples.reserve(options.events);
  detach.samples.reserve(options.events);
  const std::uint64_t evaluations_before = manager.finders.evaluations();
  for (std::size_t i = 0; i < options.events; ++i) {
    const std::string& dtu = devices_site.dtus()[devices_site.below(devices_site.dtus().size())];
    DeviceRecord record = devices_site.device(dtu, "3-1", devices_site.random_model());
    DeviceRecord changed = record;
    changed.units.front().state = UnitState::allocated;
    changed.units.front().holder = "svc1";
    changed.units.front().lease = "lease-" + std::to_string(i);
    changed.stamp = devices_site.next_stamp();
    const auto removed_stamp = devices_site.next_stamp();

    std::uint64_t frames = manager.frames();
    auto start = Clock::now();
    manager.devices.upsert(std::move(record));
    attach.samples.push_back(micros_since(start));
    attach.frames += manager.frames() - frames;

    frames = manager.frames();
    start = Clock::now();
    manager.devices.upsert(std::move(changed));
    change.samples.push_back(micros_since(start));
    change.frames += manager.frames() - frames;

    frames = manager.frames();
    start = Clock::now();
    manager.devices.remove(dtu, "3-1", removed_stamp);
    detach.samples.push_back(micros_since(start));
    detach.frames += manager.frames() - frames;
  }
  const double evaluations_per_event =
      static_cast<double>(manager.finders.evaluations() - evaluations_before) /
      static_cast<double>(2 * options.events);

  // 4. Registering one finder against the 100k devices (then removing it, untimed).
  Summary registration{"register one finder (100k devices present)", {}, 0};
  for (std::size_t i = 0; i < options.registrations; ++i) {
    auto parsed = dtu::common::parse_finder(
        make_finder(site, serials, 10 + i * 997 % std::max<std::size_t>(1, options.finders - 10), sessions));
    if (!parsed) continue;
    const std::size_t client = i % kClients;
    const auto* key = &manager.clients[client];
    const std::uint64_t id = next_finder_id++;
    const std::uint64_t frames = manager.frames();
    const auto start = Clock::now();
    auto added = manager.group.add_finder(key, FinderRegistry::Owner{"svc", 1000, 1000}, manager.sink(client),
                                          id, std::move(parsed).value());
    registration.samples.push_back(micros_since(start));
    registration.frames += manager.frames() - frames;
    if (added.ok()) (void)manager.group.remove_finder(key, id);
  }

  std::printf("  per device event (from the DeviceList call to its return, events built for the clients):\n");
  print(attach);
  print(change);
  print(detach);
  std::printf("  finders evaluated per attach/change event: %.1f of %zu\n", evaluations_per_event,
              options.finders);
  print(registration);
  std::printf(
      "  RSS: %.1f MB at start, +%.1f MB with the finders, +%.1f MB with the devices (total +%.1f MB)\n",
      rss_start, rss_finders - rss_start, rss_loaded - rss_finders, rss_loaded - rss_start);

  using dtu::bench::Metric;
  using dtu::bench::Target;
  const std::string shape = std::to_string(options.dtus * kDevicesPerDtu) + " devices x " +
                            std::to_string(options.finders) + " finders";
  std::vector<Metric> metrics{
      Metric{"dtu.matcher.device_event", "us", dtu::bench::median(attach.samples), "", Target{50, {}, {}, {}},
             "median attach of a new device -> finder events built, " + shape + ", " +
                 std::to_string(attach.samples.size()) + " events"},
      Metric{"dtu.matcher.device_event.p99", "us", dtu::bench::percentile(attach.samples, 99), "", Target{},
             "p99 of the same"},
      Metric{"dtu.matcher.device_change", "us", dtu::bench::median(change.samples), "", Target{},
             "median unit state change of a matched device"},
      Metric{"dtu.matcher.device_detach", "us", dtu::bench::median(detach.samples), "", Target{},
             "median detach of a device"},
      Metric{"dtu.matcher.evaluations_per_event", "count", evaluations_per_event, "", Target{},
             "finders evaluated per attach/change event"},
      Metric{"dtu.matcher.finder_register", "us", dtu::bench::median(registration.samples), "", Target{},
             "median registration of one finder against " + std::to_string(options.dtus * kDevicesPerDtu) +
                 " devices, first matches delivered; " + std::to_string(registration.samples.size()) +
                 " samples"},
      Metric{"dtu.matcher.finder_register.p99", "us", dtu::bench::percentile(registration.samples, 99), "",
             Target{}, "p99 of the same"},
      Metric{"dtu.matcher.load", "s", load_s, "", Target{},
             "time to load every DTU's snapshot with the finders registered"},
      Metric{"dtu.matcher.rss", "MB", rss_loaded - rss_start, "", Target{},
             "RSS added by the device list, finders and cached matches (" + shape + ")"},
  };
  const auto path = dtu::bench::write_metrics("matcher_bench.json", metrics);
  std::printf("  wrote %s\n", path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "matcher_bench: could not run: " << e.what() << "\n";
    return 1;
  }
}
