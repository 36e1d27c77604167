#include "dtu/agent/sim_backend.hpp"

#include <algorithm>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <deque>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

#include "dtu/common/log.hpp"

namespace dtu::agent {
namespace {

using common::Errc;
using common::Error;
using common::Result;
using nlohmann::json;

// A bulk endpoint's largest packet at high speed; the default when a file gives none.
constexpr std::uint16_t kDefaultMaxPacketSize = 512;
// Control requests the simulated devices answer (USB 2.0 §9.4; USB printer class 1.1 §4.2.1).
constexpr std::uint8_t kStandardDeviceIn = 0x80;  // bmRequestType: IN, standard, device
constexpr std::uint8_t kClassInterfaceIn = 0xA1;  // bmRequestType: IN, class, interface
constexpr std::uint8_t kRecipientMask = 0x1f;
constexpr std::uint8_t kRequestGetStatus = 0;
constexpr std::uint8_t kRequestGetDescriptor = 6;
constexpr std::uint8_t kRequestGetDeviceId = 0;  // printer class
constexpr std::uint8_t kDescriptorTypeDevice = 1;
constexpr std::uint8_t kDeviceDescriptorLength = 18;
constexpr std::uint8_t kControlMaxPacketSize = 64;  // bMaxPacketSize0 of a high-speed device
// The value of a simulated device's only configuration.
constexpr std::uint8_t kFirstConfiguration = 1;
// USB 2.0, the usual bcdUSB of the devices a DTU sees.
constexpr std::uint16_t kDefaultBcdUsb = 0x0200;
// An IEEE 1284 device id travels after a 2-byte length that counts itself.
constexpr std::size_t kMaxDeviceIdLength = 0xffff - 2;

const common::Logger& logger() {
  static const common::Logger log("sim-backend");
  return log;
}

std::string hex_text(std::uint64_t value, int digits) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(static_cast<std::size_t>(digits), '0');
  for (int i = digits - 1; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = kDigits[value & 0xf];
    value >>= 4;
  }
  return out;
}

std::string endpoint_text(std::uint8_t address) {
  return "0x" + hex_text(address, 2);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A short, printable rendering of a JSON value for error messages.
std::string shown(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr std::size_t kMaxShown = 40;  // characters: enough to recognise the value
  if (text.size() > kMaxShown) text = text.substr(0, kMaxShown) + "…";
  return text;
}

// A JSON integer that is not negative (parsed text gives unsigned numbers, C++ literals signed).
std::optional<std::uint64_t> non_negative(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0)
    return static_cast<std::uint64_t>(v.get<std::int64_t>());
  return std::nullopt;
}

// "a.b" paths for error messages; `base` may be empty.
std::string join(const std::string& base, const std::string& field) {
  return base.empty() ? field : base + "." + field;
}

// Reads the fields of a device description. Keeps the first error and goes on returning
// defaults, so the readers below need not check after every field; the caller checks failed().
class Reader {
 public:
  explicit Reader(std::string prefix) : prefix_(std::move(prefix)) {}

  bool failed() const { return error_.has_value(); }
  Error error() const { return Error{Errc::config_error, *error_}; }

  void fail(const std::string& where, const std::string& what) {
    if (!error_) error_ = (prefix_.empty() ? "" : prefix_ + ": ") + where + ": " + what;
  }

  // True when `value` is an object; every key must be one of `keys` or "comment".
  bool object(const json& value, const std::string& where, std::initializer_list<const char*> keys) {
    if (!value.is_object()) {
      fail(where.empty() ? "document" : where, "expected an object, got " + shown(value));
      return false;
    }
    for (const auto& item : value.items()) {
      const std::string& key = item.key();
      if (key == "comment") continue;
      if (std::none_of(keys.begin(), keys.end(), [&](const char* k) { return key == k; })) {
        fail(join(where, key), "unknown field");
        return false;
      }
    }
    return true;
  }

  // The member `key`, or nullptr when it is absent or null.
  static const json* member(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }

  const json* required(const json& obj, const std::string& where, const char* key) {
    const json* v = member(obj, key);
    if (v == nullptr) fail(join(where, key), "missing");
    return v;
  }

  // A hex field: "04b8", "0x04b8" or a JSON integer, at most `max`.
  std::uint64_t hex(const json& obj, const std::string& where, const char* key, std::uint64_t max,
                    std::optional<std::uint64_t> fallback) {
    const json* v = fallback ? member(obj, key) : required(obj, where, key);
    if (v == nullptr) return fallback.value_or(0);
    const std::string field = join(where, key);
    const std::string expected = "expected a hex number up to " + hex_text(max, max > 0xff ? 4 : 2);
    if (auto n = non_negative(*v)) {
      if (*n > max) fail(field, expected + ", got " + shown(*v));
      return *n > max ? 0 : *n;
    }
    if (!v->is_string()) {
      fail(field, expected + ", got " + shown(*v));
      return 0;
    }
    std::string_view text = v->get_ref<const std::string&>();
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) text.remove_prefix(2);
    std::uint64_t n = 0;
    bool ok = !text.empty() && text.size() <= 8;
    for (char c : text) {
      int d = hex_digit(c);
      if (d < 0) ok = false;
      if (ok) n = n * 16 + static_cast<std::uint64_t>(d);
    }
    if (!ok || n > max) {
      fail(field, expected + ", got " + shown(*v));
      return 0;
    }
    return n;
  }

  // A count field: a JSON integer in [min, max].
  std::uint64_t count(const json& obj, const std::string& where, const char* key, std::uint64_t min,
                      std::uint64_t max, std::optional<std::uint64_t> fallback) {
    const json* v = fallback ? member(obj, key) : required(obj, where, key);
    if (v == nullptr) return fallback.value_or(0);
    auto n = non_negative(*v);
    if (!n || *n < min || *n > max) {
      fail(join(where, key), "expected an integer from " + std::to_string(min) + " to " +
                                 std::to_string(max) + ", got " + shown(*v));
      return min;
    }
    return *n;
  }

  std::optional<std::string> optional_string(const json& obj, const std::string& where, const char* key) {
    const json* v = member(obj, key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) {
      fail(join(where, key), "expected a string or null, got " + shown(*v));
      return std::nullopt;
    }
    return v->get<std::string>();
  }

  bool boolean(const json& obj, const std::string& where, const char* key, bool fallback) {
    const json* v = member(obj, key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      fail(join(where, key), "expected true or false, got " + shown(*v));
      return fallback;
    }
    return v->get<bool>();
  }

  // An array field; nullptr (after failing) when it is not one. An absent optional array is empty.
  const json* array(const json& obj, const std::string& where, const char* key, bool is_required) {
    static const json kEmpty = json::array();
    const json* v = is_required ? required(obj, where, key) : member(obj, key);
    if (v == nullptr) return is_required ? nullptr : &kEmpty;
    if (!v->is_array()) {
      fail(join(where, key), "expected an array, got " + shown(*v));
      return nullptr;
    }
    return v;
  }

 private:
  std::string prefix_;
  std::optional<std::string> error_;
};

template <typename T>
T narrow(std::uint64_t v) {
  return static_cast<T>(v);  // the reader has checked the range
}

// "<bus>-<port>[.<port>…]", e.g. "1-1.4".
bool valid_port(std::string_view port) {
  auto digits = [&](std::size_t& i) {
    std::size_t start = i;
    while (i < port.size() && port[i] >= '0' && port[i] <= '9') ++i;
    return i > start && i - start <= 3;
  };
  std::size_t i = 0;
  if (!digits(i) || i >= port.size() || port[i] != '-') return false;
  ++i;
  if (!digits(i)) return false;
  while (i < port.size()) {
    if (port[i] != '.') return false;
    ++i;
    if (!digits(i)) return false;
  }
  return true;
}

void read_endpoint(Reader& r, const json& e, const std::string& where, UsbInterface& interface,
                   SimDevice& device, std::set<std::uint8_t>& addresses) {
  if (!r.object(e, where, {"address", "type", "max_packet_size", "sink", "source"})) return;
  UsbEndpoint ep;
  ep.address = narrow<std::uint8_t>(r.hex(e, where, "address", 0xff, std::nullopt));
  if (r.failed()) return;
  if ((ep.address & 0x70) != 0 || (ep.address & 0x0f) == 0) {
    r.fail(join(where, "address"), "expected an endpoint address 0x01-0x0f (OUT) or 0x81-0x8f (IN), got " +
                                       endpoint_text(ep.address));
    return;
  }
  if (!addresses.insert(ep.address).second) {
    r.fail(join(where, "address"), "endpoint " + endpoint_text(ep.address) + " appears twice in the device");
    return;
  }
  std::uint8_t type = kUsbTransferBulk;
  if (const json* t = Reader::member(e, "type")) {
    if (*t == "bulk") {
      type = kUsbTransferBulk;
    } else if (*t == "interrupt") {
      type = kUsbTransferInterrupt;
    } else if (*t == "isochronous") {
      type = kUsbTransferIsochronous;
    } else {
      r.fail(join(where, "type"), "expected \"bulk\", \"interrupt\" or \"isochronous\", got " + shown(*t));
      return;
    }
  }
  ep.attributes = type;
  ep.max_packet_size =
      narrow<std::uint16_t>(r.count(e, where, "max_packet_size", 1, 0xffff, kDefaultMaxPacketSize));

  const json* sink = Reader::member(e, "sink");
  const json* source = Reader::member(e, "source");
  if (sink != nullptr) {
    if (!r.object(*sink, join(where, "sink"), {})) return;
    if (is_in_endpoint(ep.address)) {
      r.fail(join(where, "sink"), "a sink needs an OUT endpoint, " + endpoint_text(ep.address) + " is IN");
      return;
    }
    device.sinks.insert(ep.address);
  }
  if (source != nullptr) {
    const std::string at = join(where, "source");
    if (!r.object(*source, at, {"text", "hex"})) return;
    if (!is_in_endpoint(ep.address)) {
      r.fail(at, "a source needs an IN endpoint, " + endpoint_text(ep.address) + " is OUT");
      return;
    }
    const json* text = Reader::member(*source, "text");
    const json* hex = Reader::member(*source, "hex");
    if ((text == nullptr) == (hex == nullptr)) {
      r.fail(at, "expected exactly one of \"text\" and \"hex\"");
      return;
    }
    std::vector<std::uint8_t> bytes;
    if (text != nullptr) {
      if (!text->is_string()) {
        r.fail(join(at, "text"), "expected a string, got " + shown(*text));
        return;
      }
      const auto& s = text->get_ref<const std::string&>();
      bytes.assign(s.begin(), s.end());
    } else {
      auto decoded = hex->is_string()
                         ? hex_decode(hex->get_ref<const std::string&>())
                         : Result<std::vector<std::uint8_t>>(Errc::invalid_argument, "not a string");
      if (!decoded) {
        r.fail(join(at, "hex"), "expected hex digits, got " + shown(*hex));
        return;
      }
      bytes = std::move(decoded).value();
    }
    device.sources[ep.address] = std::move(bytes);
  }
  interface.endpoints.push_back(ep);
}

void read_interface(Reader& r, const json& i, const std::string& where, SimDevice& device,
                    std::set<std::uint8_t>& addresses) {
  if (!r.object(i, where,
                {"number", "alternate", "class", "subclass", "protocol", "device_id", "endpoints"})) {
    return;
  }
  UsbInterface interface;
  interface.number = narrow<std::uint8_t>(r.count(i, where, "number", 0, 0xff, std::nullopt));
  interface.alternate = narrow<std::uint8_t>(r.count(i, where, "alternate", 0, 0xff, 0));
  interface.cls = narrow<std::uint8_t>(r.hex(i, where, "class", 0xff, std::nullopt));
  interface.subclass = narrow<std::uint8_t>(r.hex(i, where, "subclass", 0xff, 0));
  interface.protocol = narrow<std::uint8_t>(r.hex(i, where, "protocol", 0xff, 0));
  std::optional<std::string> device_id = r.optional_string(i, where, "device_id");
  if (r.failed()) return;
  if (device_id && device_id->size() > kMaxDeviceIdLength) {
    r.fail(join(where, "device_id"), "longer than " + std::to_string(kMaxDeviceIdLength) + " bytes");
    return;
  }
  for (const auto& other : device.info.interfaces) {
    if (other.number == interface.number && other.alternate == interface.alternate) {
      r.fail(join(where, "number"), "interface " + std::to_string(interface.number) + " alternate " +
                                        std::to_string(interface.alternate) + " appears twice");
      return;
    }
  }
  const json* endpoints = r.array(i, where, "endpoints", false);
  if (endpoints == nullptr) return;
  for (std::size_t k = 0; k < endpoints->size() && !r.failed(); ++k) {
    read_endpoint(r, (*endpoints)[k], join(where, "endpoints[" + std::to_string(k) + "]"), interface, device,
                  addresses);
  }
  if (device_id) device.device_ids[interface.number] = std::move(*device_id);
  device.info.interfaces.push_back(std::move(interface));
}

void read_association(Reader& r, const json& a, const std::string& where, SimDevice& device) {
  if (!r.object(a, where, {"first_interface", "count", "class", "subclass", "protocol"})) return;
  UsbInterfaceAssociation assoc;
  assoc.first_interface = narrow<std::uint8_t>(r.count(a, where, "first_interface", 0, 0xff, std::nullopt));
  assoc.count = narrow<std::uint8_t>(r.count(a, where, "count", 1, 0xff, std::nullopt));
  assoc.cls = narrow<std::uint8_t>(r.hex(a, where, "class", 0xff, std::nullopt));
  assoc.subclass = narrow<std::uint8_t>(r.hex(a, where, "subclass", 0xff, 0));
  assoc.protocol = narrow<std::uint8_t>(r.hex(a, where, "protocol", 0xff, 0));
  if (r.failed()) return;
  for (unsigned n = assoc.first_interface; n < unsigned{assoc.first_interface} + assoc.count; ++n) {
    bool known = std::any_of(device.info.interfaces.begin(), device.info.interfaces.end(),
                             [&](const UsbInterface& i) { return i.number == n; });
    if (!known) {
      r.fail(join(where, "count"),
             "interface " + std::to_string(n) + " is not among the device's interfaces");
      return;
    }
  }
  device.info.associations.push_back(assoc);
}

// Reads one device object into `device`; errors go to `r`, prefixed with `where`.
void read_device(Reader& r, const json& d, const std::string& where_in, SimDevice& device) {
  std::string where = where_in;
  if (!r.object(d, where,
                {"port", "present", "vid", "pid", "bcd_device", "bcd_usb", "class", "subclass", "protocol",
                 "manufacturer", "product", "serial", "configuration", "interfaces", "associations"})) {
    return;
  }
  UsbDeviceInfo& info = device.info;
  const json* port = r.required(d, where, "port");
  if (port == nullptr) return;
  if (!port->is_string() || !valid_port(port->get_ref<const std::string&>())) {
    r.fail(join(where, "port"), "expected a port path like \"1-1.4\", got " + shown(*port));
    return;
  }
  info.port = port->get<std::string>();
  where += (where.empty() ? "" : " ") + std::string("(port ") + info.port + ")";

  device.present = r.boolean(d, where, "present", true);
  info.vid = narrow<std::uint16_t>(r.hex(d, where, "vid", 0xffff, std::nullopt));
  info.pid = narrow<std::uint16_t>(r.hex(d, where, "pid", 0xffff, std::nullopt));
  info.bcd_device = narrow<std::uint16_t>(r.hex(d, where, "bcd_device", 0xffff, 0));
  info.bcd_usb = narrow<std::uint16_t>(r.hex(d, where, "bcd_usb", 0xffff, kDefaultBcdUsb));
  info.cls = narrow<std::uint8_t>(r.hex(d, where, "class", 0xff, 0));
  info.subclass = narrow<std::uint8_t>(r.hex(d, where, "subclass", 0xff, 0));
  info.protocol = narrow<std::uint8_t>(r.hex(d, where, "protocol", 0xff, 0));
  info.manufacturer = r.optional_string(d, where, "manufacturer");
  info.product = r.optional_string(d, where, "product");
  info.serial = r.optional_string(d, where, "serial");
  info.configuration = narrow<std::uint8_t>(r.count(d, where, "configuration", 0, 0xff, 1));
  if (r.failed()) return;

  std::set<std::uint8_t> addresses;
  const json* interfaces = r.array(d, where, "interfaces", true);
  if (interfaces == nullptr) return;
  for (std::size_t k = 0; k < interfaces->size() && !r.failed(); ++k) {
    read_interface(r, (*interfaces)[k], join(where, "interfaces[" + std::to_string(k) + "]"), device,
                   addresses);
  }
  const json* associations = r.array(d, where, "associations", false);
  if (associations == nullptr) return;
  for (std::size_t k = 0; k < associations->size() && !r.failed(); ++k) {
    read_association(r, (*associations)[k], join(where, "associations[" + std::to_string(k) + "]"), device);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Device files

Result<SimDevice> sim_device_from_json(const json& device, const std::string& where) {
  Reader r("");
  SimDevice out;
  read_device(r, device, where.empty() ? "device" : where, out);
  if (r.failed()) return r.error();
  return out;
}

Result<SimDeviceSet> sim_devices_from_json(const json& doc, const std::string& source) {
  Reader r(source);
  SimDeviceSet set;
  if (!r.object(doc, "", {"devices"})) return r.error();
  const json* devices = r.array(doc, "", "devices", true);
  if (devices == nullptr) return r.error();
  for (std::size_t k = 0; k < devices->size(); ++k) {
    SimDevice device;
    read_device(r, (*devices)[k], "devices[" + std::to_string(k) + "]", device);
    if (r.failed()) return r.error();
    for (const auto& other : set.devices) {
      if (other.info.port == device.info.port) {
        r.fail("devices[" + std::to_string(k) + "].port", "port " + device.info.port + " appears twice");
        return r.error();
      }
    }
    set.devices.push_back(std::move(device));
  }
  return set;
}

Result<SimDeviceSet> load_sim_devices(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{Errc::io_error, path + ": cannot open the simulated device file"};
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Error{Errc::io_error, path + ": cannot read the simulated device file"};
  json doc;
  try {
    doc = json::parse(text.str());
  } catch (const json::exception& e) {  // contained here: the caller gets a Result
    return Error{Errc::config_error, path + ": not valid JSON: " + e.what()};
  }
  return sim_devices_from_json(doc, path);
}

std::string hex_encode(const std::vector<std::uint8_t>& bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) out += hex_text(b, 2);
  return out;
}

Result<std::vector<std::uint8_t>> hex_decode(std::string_view text) {
  std::vector<std::uint8_t> out;
  int high = -1;
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    int d = hex_digit(c);
    if (d < 0) return Error{Errc::invalid_argument, std::string("not a hex digit: '") + c + "'"};
    if (high < 0) {
      high = d;
    } else {
      out.push_back(static_cast<std::uint8_t>(high * 16 + d));
      high = -1;
    }
  }
  if (high >= 0) return Error{Errc::invalid_argument, "odd number of hex digits"};
  return out;
}

// ---------------------------------------------------------------------------------------------
// SimBackend

struct PendingRead {
  std::uint64_t id = 0;
  std::size_t max_length = 0;
  std::function<void(Result<std::vector<std::uint8_t>>)> done;
  std::shared_ptr<asio::steady_timer> timer;
};

struct SimBackend::Slot {
  SimDevice device;                                            // device.present is the live state
  std::map<std::uint8_t, std::vector<std::uint8_t>> captured;  // sink → bytes written
  std::map<std::uint8_t, std::deque<std::uint8_t>> queued;     // IN endpoint → bytes not yet read
  std::map<std::uint8_t, std::deque<PendingRead>> reads;       // IN endpoint → reads waiting; only
                                                               // while queued is empty
  std::set<std::uint8_t> claimed;                              // interface numbers
};

SimBackend::SimBackend(asio::any_io_executor executor, SimDeviceSet devices)
    : executor_(std::move(executor)) {
  for (auto& device : devices.devices) {
    auto s = std::make_unique<Slot>();
    s->device = std::move(device);
    for (const auto& [ep, bytes] : s->device.sources) s->queued[ep].assign(bytes.begin(), bytes.end());
    slots_.push_back(std::move(s));
  }
}

SimBackend::~SimBackend() {
  stop();
}

SimBackend::Slot* SimBackend::slot(const std::string& port) {
  for (auto& s : slots_) {
    if (s->device.info.port == port) return s.get();
  }
  return nullptr;
}

const SimBackend::Slot* SimBackend::slot(const std::string& port) const {
  for (const auto& s : slots_) {
    if (s->device.info.port == port) return s.get();
  }
  return nullptr;
}

const SimDevice* SimBackend::find(const std::string& port) const {
  const Slot* s = slot(port);
  return s == nullptr ? nullptr : &s->device;
}

std::vector<const SimDevice*> SimBackend::catalogue() const {
  std::vector<const SimDevice*> out;
  out.reserve(slots_.size());
  for (const auto& s : slots_) out.push_back(&s->device);
  return out;
}

Result<void> SimBackend::start(UsbEvents events) {
  if (started_) return Error{Errc::illegal_state, "simulated USB backend already started"};
  started_ = true;
  events_ = std::move(events);
  for (const auto& s : slots_) {
    if (!s->device.present) continue;
    configure(*s);
    post_attached(s->device.info);
  }
  return {};
}

void SimBackend::stop() {
  if (!started_) return;
  started_ = false;
  ++generation_;
  events_ = {};
  for (auto& s : slots_) {
    fail_reads(*s, Errc::closed);
    s->claimed.clear();
  }
}

std::vector<UsbDeviceInfo> SimBackend::devices() const {
  std::vector<UsbDeviceInfo> out;
  if (!started_) return out;
  for (const auto& s : slots_) {
    if (s->device.present) out.push_back(s->device.info);
  }
  return out;
}

Result<SimBackend::Slot*> SimBackend::plugged(const std::string& port) {
  if (!started_) return Error{Errc::closed, "simulated USB backend is not running"};
  Slot* s = slot(port);
  if (s == nullptr) return Error{Errc::not_found, "no device on port " + port};
  if (!s->device.present) return Error{Errc::unavailable, "device on port " + port + " is unplugged"};
  return s;
}

Result<UsbEndpoint> SimBackend::transfer_endpoint(const std::string& port, std::uint8_t endpoint,
                                                  bool want_in, std::size_t length) const {
  if (!started_) return Error{Errc::closed, "simulated USB backend is not running"};
  const Slot* s = slot(port);
  if (s == nullptr) return Error{Errc::not_found, "no device on port " + port};
  if (!s->device.present) return Error{Errc::unavailable, "device on port " + port + " is unplugged"};
  std::optional<Error> unclaimed;
  for (const auto& interface : s->device.info.interfaces) {
    for (const auto& ep : interface.endpoints) {
      if (ep.address != endpoint) continue;
      if (is_in_endpoint(endpoint) != want_in) {
        return Error{Errc::invalid_argument, "endpoint " + endpoint_text(endpoint) + " on port " + port +
                                                 " is " + (want_in ? "OUT" : "IN")};
      }
      const std::uint8_t type = ep.attributes & kUsbTransferTypeMask;
      if (type != kUsbTransferBulk && type != kUsbTransferInterrupt) {
        return Error{Errc::invalid_argument, "endpoint " + endpoint_text(endpoint) + " on port " + port +
                                                 " is neither bulk nor interrupt"};
      }
      if (length == 0) return Error{Errc::invalid_argument, "a transfer of 0 bytes"};
      if (s->claimed.count(interface.number) == 0) {
        // Another interface may list the same endpoint (a descriptor fault) and be the claimed one.
        if (!unclaimed) {
          unclaimed = Error{Errc::illegal_state, "interface " + std::to_string(interface.number) + " of port " +
                                                     port + " (endpoint " + endpoint_text(endpoint) +
                                                     ") is not claimed"};
        }
        continue;
      }
      return ep;
    }
  }
  if (unclaimed) return *unclaimed;
  return Error{Errc::not_found, "no endpoint " + endpoint_text(endpoint) + " on port " + port};
}

template <typename T>
void SimBackend::post_result(std::function<void(Result<T>)> done, Result<T> result) {
  asio::post(executor_, [done = std::move(done), result = std::move(result)]() mutable {
    if (done) done(std::move(result));
  });
}

Result<SimBackend::Slot*> SimBackend::with_interface(const std::string& port, std::uint8_t interface) {
  auto s = plugged(port);
  if (!s) return s.error();
  const auto& interfaces = (*s)->device.info.interfaces;
  if (std::none_of(interfaces.begin(), interfaces.end(), [&](const UsbInterface& i) { return i.number == interface; })) {
    return Error{Errc::not_found, "no interface " + std::to_string(interface) + " on port " + port};
  }
  return *s;
}

void SimBackend::claim(const std::string& port, std::uint8_t interface, std::function<void(Result<void>)> done) {
  auto s = with_interface(port, interface);
  if (s.ok()) (*s)->claimed.insert(interface);
  post_result(std::move(done), s.ok() ? Result<void>{} : Result<void>(s.error()));
}

void SimBackend::release(const std::string& port, std::uint8_t interface, std::function<void(Result<void>)> done) {
  auto s = with_interface(port, interface);
  if (s.ok()) (*s)->claimed.erase(interface);
  post_result(std::move(done), s.ok() ? Result<void>{} : Result<void>(s.error()));
}

std::optional<std::vector<std::uint8_t>> SimBackend::answer_control(const Slot& s,
                                                                    const UsbControlSetup& setup) const {
  const UsbDeviceInfo& info = s.device.info;
  std::vector<std::uint8_t> reply;
  if (setup.request_type == kStandardDeviceIn && setup.request == kRequestGetDescriptor &&
      (setup.value >> 8) == kDescriptorTypeDevice) {
    auto le16 = [&](std::uint16_t v) {
      reply.push_back(static_cast<std::uint8_t>(v & 0xff));
      reply.push_back(static_cast<std::uint8_t>(v >> 8));
    };
    reply = {kDeviceDescriptorLength, kDescriptorTypeDevice};
    le16(info.bcd_usb);
    reply.insert(reply.end(), {info.cls, info.subclass, info.protocol, kControlMaxPacketSize});
    le16(info.vid);
    le16(info.pid);
    le16(info.bcd_device);
    reply.push_back(info.manufacturer ? 1 : 0);
    reply.push_back(info.product ? 2 : 0);
    reply.push_back(info.serial ? 3 : 0);
    reply.push_back(1);  // one configuration
  } else if ((setup.request_type & ~kRecipientMask) == kStandardDeviceIn &&
             setup.request == kRequestGetStatus) {
    reply = {0, 0};
  } else if (setup.request_type == kClassInterfaceIn && setup.request == kRequestGetDeviceId) {
    auto id = s.device.device_ids.find(static_cast<std::uint8_t>(setup.index >> 8));
    if (id == s.device.device_ids.end()) return std::nullopt;
    const std::size_t length = id->second.size() + 2;
    reply = {static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length & 0xff)};
    reply.insert(reply.end(), id->second.begin(), id->second.end());
  } else {
    return std::nullopt;
  }
  if (reply.size() > setup.length) reply.resize(setup.length);
  return reply;
}

void SimBackend::control(const std::string& port, UsbControlSetup setup, std::vector<std::uint8_t> data,
                         common::Duration /*timeout: a simulated device answers at once*/,
                         std::function<void(Result<std::vector<std::uint8_t>>)> done) {
  Result<std::vector<std::uint8_t>> result = [&]() -> Result<std::vector<std::uint8_t>> {
    auto s = plugged(port);
    if (!s) return s.error();
    const bool in = (setup.request_type & kUsbEndpointDirIn) != 0;
    if (!in && data.size() != setup.length) {
      return Error{Errc::invalid_argument, "control OUT with wLength " + std::to_string(setup.length) +
                                               " and " + std::to_string(data.size()) + " bytes"};
    }
    auto reply = answer_control(**s, setup);
    if (!reply) return Error{Errc::refused, "the device on port " + port + " STALLed the control request"};
    if (!in) return std::vector<std::uint8_t>{};
    return std::move(*reply);
  }();
  post_result(std::move(done), std::move(result));
}

void SimBackend::transfer_out(const std::string& port, std::uint8_t endpoint, std::vector<std::uint8_t> data,
                              common::Duration /*timeout: a simulated device always accepts at once*/,
                              std::function<void(Result<std::size_t>)> done) {
  Result<std::size_t> result = [&]() -> Result<std::size_t> {
    auto ep = transfer_endpoint(port, endpoint, /*want_in=*/false, data.size());
    if (!ep) return ep.error();
    Slot* s = slot(port);
    if (s->device.sinks.count(endpoint) != 0) {
      auto& sink = s->captured[endpoint];
      sink.insert(sink.end(), data.begin(), data.end());
    }
    return data.size();
  }();
  post_result(std::move(done), std::move(result));
}

void SimBackend::transfer_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
                             common::Duration timeout,
                             std::function<void(Result<std::vector<std::uint8_t>>)> done) {
  auto complete = [this, &done](Result<std::vector<std::uint8_t>> result) {
    post_result(std::move(done), std::move(result));
  };
  auto ep = transfer_endpoint(port, endpoint, /*want_in=*/true, max_length);
  if (!ep) return complete(ep.error());
  Slot* s = slot(port);
  auto& queued = s->queued[endpoint];
  if (!queued.empty()) {
    std::size_t n = std::min(max_length, queued.size());
    auto first = queued.begin();
    auto last = first + static_cast<std::ptrdiff_t>(n);
    std::vector<std::uint8_t> bytes(first, last);
    queued.erase(first, last);
    return complete(std::move(bytes));
  }
  if (timeout <= common::Duration::zero()) {
    return complete(
        Error{Errc::timeout, "no data on endpoint " + endpoint_text(endpoint) + " of port " + port});
  }
  PendingRead read;
  read.id = next_read_id_++;
  read.max_length = max_length;
  read.done = std::move(done);
  read.timer = std::make_shared<asio::steady_timer>(executor_, timeout);
  read.timer->async_wait([this, alive = std::weak_ptr<int>(alive_), timer = read.timer, port, endpoint,
                          id = read.id](std::error_code ec) {
    if (ec || alive.expired()) return;  // cancelled: the read was completed or failed elsewhere
    on_read_timeout(port, endpoint, id);
  });
  s->reads[endpoint].push_back(std::move(read));
}

void SimBackend::on_read_timeout(const std::string& port, std::uint8_t endpoint, std::uint64_t read_id) {
  Slot* s = slot(port);
  if (s == nullptr) return;
  auto& reads = s->reads[endpoint];
  auto it = std::find_if(reads.begin(), reads.end(), [&](const PendingRead& r) { return r.id == read_id; });
  if (it == reads.end()) return;
  auto done = std::move(it->done);
  reads.erase(it);
  // Already inside a handler of our own, not inside a caller's method: call directly.
  if (done) done(Error{Errc::timeout, "no data on endpoint " + endpoint_text(endpoint) + " of port " + port});
}

void SimBackend::fail_reads(Slot& s, Errc why) {
  const std::string detail = why == Errc::closed ? "simulated USB backend stopped"
                                                 : "device on port " + s.device.info.port + " was unplugged";
  for (auto& [ep, reads] : s.reads) {
    for (auto& read : reads) {
      read.timer->cancel();
      asio::post(executor_, [done = std::move(read.done), why, detail]() {
        if (done) done(Error{why, detail});
      });
    }
    reads.clear();
  }
}

Result<void> SimBackend::feed(const std::string& port, std::uint8_t endpoint,
                              std::vector<std::uint8_t> bytes) {
  Slot* s = slot(port);
  if (s == nullptr) return Error{Errc::not_found, "no device on port " + port};
  if (!s->device.present) return Error{Errc::unavailable, "device on port " + port + " is unplugged"};
  bool known = false;
  for (const auto& interface : s->device.info.interfaces) {
    for (const auto& ep : interface.endpoints) known = known || ep.address == endpoint;
  }
  if (!known) return Error{Errc::not_found, "no endpoint " + endpoint_text(endpoint) + " on port " + port};
  if (!is_in_endpoint(endpoint)) {
    return Error{Errc::invalid_argument,
                 "endpoint " + endpoint_text(endpoint) + " on port " + port + " is OUT"};
  }
  auto& queued = s->queued[endpoint];
  queued.insert(queued.end(), bytes.begin(), bytes.end());
  auto& reads = s->reads[endpoint];
  while (!reads.empty() && !queued.empty()) {
    PendingRead read = std::move(reads.front());
    reads.pop_front();
    read.timer->cancel();
    std::size_t n = std::min(read.max_length, queued.size());
    auto first = queued.begin();
    auto last = first + static_cast<std::ptrdiff_t>(n);
    std::vector<std::uint8_t> chunk(first, last);
    queued.erase(first, last);
    asio::post(executor_, [done = std::move(read.done), chunk = std::move(chunk)]() mutable {
      if (done) done(std::move(chunk));
    });
  }
  return {};
}

std::vector<std::uint8_t> SimBackend::captured(const std::string& port, std::uint8_t endpoint) const {
  const Slot* s = slot(port);
  if (s == nullptr) return {};
  auto it = s->captured.find(endpoint);
  return it == s->captured.end() ? std::vector<std::uint8_t>{} : it->second;
}

void SimBackend::plug_slot(Slot& s) {
  s.device.present = true;
  s.captured.clear();
  s.queued.clear();
  s.reads.clear();  // none: an unplugged device has no waiting reads
  s.claimed.clear();
  for (const auto& [ep, bytes] : s.device.sources) s.queued[ep].assign(bytes.begin(), bytes.end());
  if (!started_) return;
  configure(s);
  post_attached(s.device.info);
}

void SimBackend::configure(Slot& s) {
  if (s.device.info.configuration != 0) return;
  s.device.info.configuration = kFirstConfiguration;
  logger().info(s.device.info.port, "usb_configured", {{"configuration", kFirstConfiguration}});
}

Result<void> SimBackend::plug(const std::string& port) {
  Slot* s = slot(port);
  if (s == nullptr) return Error{Errc::not_found, "no catalogue device on port " + port};
  if (s->device.present) return Error{Errc::illegal_state, "device on port " + port + " is already plugged"};
  plug_slot(*s);
  return {};
}

Result<void> SimBackend::plug_device(SimDevice device) {
  if (device.info.port.empty()) return Error{Errc::invalid_argument, "simulated device without a port"};
  Slot* s = slot(device.info.port);
  if (s != nullptr && s->device.present) {
    return Error{Errc::illegal_state, "port " + device.info.port + " already has a device"};
  }
  if (s == nullptr) {
    slots_.push_back(std::make_unique<Slot>());
    s = slots_.back().get();
  }
  s->device = std::move(device);
  plug_slot(*s);
  return {};
}

Result<void> SimBackend::unplug(const std::string& port) {
  Slot* s = slot(port);
  if (s == nullptr) return Error{Errc::not_found, "no catalogue device on port " + port};
  if (!s->device.present) return Error{Errc::illegal_state, "device on port " + port + " is not plugged"};
  s->device.present = false;
  s->claimed.clear();
  fail_reads(*s, Errc::unavailable);
  if (started_) post_detached(port);
  return {};
}

void SimBackend::post_attached(const UsbDeviceInfo& info) {
  asio::post(executor_, [this, alive = std::weak_ptr<int>(alive_), generation = generation_, info]() mutable {
    if (alive.expired() || generation != generation_ || !started_) return;
    auto attached = events_.attached;  // a copy: the callback may stop() us
    if (attached) attached(std::move(info));
  });
}

void SimBackend::post_detached(const std::string& port) {
  asio::post(executor_, [this, alive = std::weak_ptr<int>(alive_), generation = generation_, port]() mutable {
    if (alive.expired() || generation != generation_ || !started_) return;
    auto detached = events_.detached;
    if (detached) detached(std::move(port));
  });
}

}  // namespace dtu::agent
