#include "dtu/agent/libusb_backend.hpp"

#include <libusb.h>
#include <sys/time.h>

#include <asio/post.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dtu/common/log.hpp"

namespace dtu::agent {

using common::Errc;
using common::Error;

namespace {

// How long one turn of the event loop waits in libusb before it looks at the stop flag, the
// queued hotplug events and the rescan clock. stop() also interrupts the wait, so this only bounds
// the wake-up when libusb_interrupt_event_handler races with entering the wait.
constexpr std::chrono::microseconds kEventWait{100'000};
// USB 3 allows hubs seven tiers deep; libusb_get_port_numbers needs room for every tier.
constexpr int kMaxPortDepth = 8;
// A string descriptor holds at most 126 UTF-16 units; 255 bytes of ASCII is always enough.
constexpr int kStringBufferSize = 256;
constexpr std::uint8_t kDescriptorTypeInterfaceAssociation = 0x0B;
constexpr std::uint8_t kInterfaceAssociationLength = 8;

const common::Logger& logger() {
  static const common::Logger log("libusb-backend");
  return log;
}

// "<bus>-<port>[.<port>…]", or empty for a root hub (no port).
std::string port_path(libusb_device* device) {
  std::uint8_t ports[kMaxPortDepth];
  const int depth = libusb_get_port_numbers(device, ports, kMaxPortDepth);
  if (depth <= 0) return {};
  std::string path = std::to_string(libusb_get_bus_number(device)) + "-";
  for (int i = 0; i < depth; ++i) {
    if (i > 0) path += '.';
    path += std::to_string(ports[i]);
  }
  return path;
}

// Interface association descriptors are not parsed by libusb 1.0.26; they end up in the "extra"
// bytes of whatever descriptor precedes them (the configuration, an interface or an endpoint).
void collect_associations(const unsigned char* extra, int length, std::vector<UsbInterfaceAssociation>& out) {
  if (extra == nullptr) return;
  int at = 0;
  while (at + 2 <= length) {
    const int size = extra[at];
    if (size < 2 || at + size > length) return;  // malformed tail: stop, keep what we have
    if (extra[at + 1] == kDescriptorTypeInterfaceAssociation && size >= kInterfaceAssociationLength) {
      UsbInterfaceAssociation iad{extra[at + 2], extra[at + 3], extra[at + 4], extra[at + 5], extra[at + 6]};
      bool seen = false;
      for (const auto& known : out) seen = seen || known.first_interface == iad.first_interface;
      if (!seen) out.push_back(iad);
    }
    at += size;
  }
}

void describe_configuration(const libusb_config_descriptor& config, UsbDeviceInfo& info) {
  info.configuration = config.bConfigurationValue;
  collect_associations(config.extra, config.extra_length, info.associations);
  for (int i = 0; i < config.bNumInterfaces; ++i) {
    const libusb_interface& interface = config.interface[i];
    for (int a = 0; a < interface.num_altsetting; ++a) {
      const libusb_interface_descriptor& alt = interface.altsetting[a];
      UsbInterface out;
      out.number = alt.bInterfaceNumber;
      out.alternate = alt.bAlternateSetting;
      out.cls = alt.bInterfaceClass;
      out.subclass = alt.bInterfaceSubClass;
      out.protocol = alt.bInterfaceProtocol;
      collect_associations(alt.extra, alt.extra_length, info.associations);
      for (int e = 0; e < alt.bNumEndpoints; ++e) {
        const libusb_endpoint_descriptor& endpoint = alt.endpoint[e];
        out.endpoints.push_back(UsbEndpoint{endpoint.bEndpointAddress, endpoint.bmAttributes, endpoint.wMaxPacketSize});
        collect_associations(endpoint.extra, endpoint.extra_length, info.associations);
      }
      info.interfaces.push_back(std::move(out));
    }
  }
}

// Reads string descriptor `index` (0 = none); a failure is noted in `failures` and gives nullopt.
std::optional<std::string> read_string(libusb_device_handle* handle, std::uint8_t index, const char* what,
                                       std::string& failures) {
  if (index == 0 || handle == nullptr) return std::nullopt;
  unsigned char text[kStringBufferSize];
  const int length = libusb_get_string_descriptor_ascii(handle, index, text, sizeof text);
  if (length < 0) {
    if (!failures.empty()) failures += ", ";
    failures += std::string(what) + ": " + libusb_error_name(length);
    return std::nullopt;
  }
  return std::string(reinterpret_cast<const char*>(text), static_cast<std::size_t>(length));
}

// Everything the agent needs about one device. Does I/O (open + string descriptors): call it on
// the event thread, never inside a hotplug callback.
UsbDeviceInfo describe(libusb_device* device, const std::string& port) {
  UsbDeviceInfo info;
  info.port = port;
  libusb_device_descriptor descriptor{};
  if (const int r = libusb_get_device_descriptor(device, &descriptor); r < 0) {
    logger().warn(port, "usb_descriptor_unreadable", {{"reason", libusb_error_name(r)}});
    return info;
  }
  info.vid = descriptor.idVendor;
  info.pid = descriptor.idProduct;
  info.bcd_device = descriptor.bcdDevice;
  info.bcd_usb = descriptor.bcdUSB;
  info.cls = descriptor.bDeviceClass;
  info.subclass = descriptor.bDeviceSubClass;
  info.protocol = descriptor.bDeviceProtocol;

  libusb_config_descriptor* config = nullptr;
  const int got_config = libusb_get_active_config_descriptor(device, &config);
  if (got_config == 0) {
    describe_configuration(*config, info);
    libusb_free_config_descriptor(config);
  } else if (got_config != LIBUSB_ERROR_NOT_FOUND) {  // NOT_FOUND: unconfigured, configuration 0
    logger().warn(port, "usb_config_unreadable", {{"reason", libusb_error_name(got_config)}});
  }

  if (descriptor.iManufacturer == 0 && descriptor.iProduct == 0 && descriptor.iSerialNumber == 0) return info;
  std::string failures;
  libusb_device_handle* handle = nullptr;
  if (const int r = libusb_open(device, &handle); r < 0) {
    failures = std::string("open: ") + libusb_error_name(r);
    handle = nullptr;
  }
  info.manufacturer = read_string(handle, descriptor.iManufacturer, "manufacturer", failures);
  info.product = read_string(handle, descriptor.iProduct, "product", failures);
  info.serial = read_string(handle, descriptor.iSerialNumber, "serial", failures);
  if (handle != nullptr) libusb_close(handle);
  if (!failures.empty()) logger().warn(port, "usb_strings_unreadable", {{"reason", failures}});
  return info;
}

}  // namespace

// The libusb side: owns the context and the event thread. Everything below except the
// constructor and stop() runs on the event thread; results leave through the two callbacks,
// which post to the io_context.
class LibusbBackend::EventThread {
 public:
  using Attached = std::function<void(UsbDeviceInfo)>;
  using Detached = std::function<void(std::string)>;

  // Takes ownership of `context` (libusb_exit in the destructor).
  EventThread(libusb_context* context, UsbWatch watch, Attached attached, Detached detached)
      : context_(context), watch_(watch), attached_(std::move(attached)), detached_(std::move(detached)) {
    thread_ = std::thread([this] { run(); });
  }

  ~EventThread() {
    stopping_.store(true);
    libusb_interrupt_event_handler(context_);
    if (thread_.joinable()) thread_.join();
    libusb_exit(context_);
  }

  EventThread(const EventThread&) = delete;
  EventThread& operator=(const EventThread&) = delete;

 private:
  struct Pending {
    libusb_device* device;  // referenced
    bool arrived;
  };

  void run() {
    watch();
    auto next_rescan = std::chrono::steady_clock::now() + kRescanInterval;
    while (!stopping_.load()) {
      handle_pending();
      timeval wait{0, static_cast<suseconds_t>(kEventWait.count())};
      if (const int r = libusb_handle_events_timeout_completed(context_, &wait, nullptr);
          r < 0 && r != LIBUSB_ERROR_INTERRUPTED) {
        logger().debug("", "usb_event_loop_error", {{"reason", libusb_error_name(r)}});
      }
      if (!hotplug_ && std::chrono::steady_clock::now() >= next_rescan) {
        rescan();
        next_rescan = std::chrono::steady_clock::now() + kRescanInterval;
      }
    }
    if (hotplug_) libusb_hotplug_deregister_callback(context_, hotplug_handle_);
    for (auto& pending : pending_) libusb_unref_device(pending.device);
    pending_.clear();
    for (auto& [port, device] : present_) libusb_unref_device(device);
    present_.clear();
  }

  // Hotplug with the present devices enumerated (they arrive as queued events), or else a first
  // scan of the device list.
  void watch() {
    if (watch_ == UsbWatch::rescan) {
      logger().info("", "usb_rescan_selected", {{"rescan_ms", kRescanInterval.count()}});
    } else if (libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG) != 0) {
      const int r = libusb_hotplug_register_callback(
          context_,
          static_cast<libusb_hotplug_event>(LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED | LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT),
          LIBUSB_HOTPLUG_ENUMERATE, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
          &EventThread::on_hotplug, this, &hotplug_handle_);
      hotplug_ = r == LIBUSB_SUCCESS;
      if (!hotplug_) logger().warn("", "usb_hotplug_unavailable", {{"reason", libusb_error_name(r)}});
    } else {
      logger().info("", "usb_hotplug_unsupported", {{"rescan_ms", kRescanInterval.count()}});
    }
    if (!hotplug_) rescan();
  }

  // Runs inside libusb (on this thread): only queue, never do I/O here.
  static int LIBUSB_CALL on_hotplug(libusb_context*, libusb_device* device, libusb_hotplug_event event,
                                    void* self) {
    static_cast<EventThread*>(self)->pending_.push_back(
        Pending{libusb_ref_device(device), event == LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED});
    return 0;  // stay registered
  }

  void handle_pending() {
    // Reading strings runs libusb's event loop, which may queue more events: take a batch at a time.
    while (!pending_.empty() && !stopping_.load()) {
      std::vector<Pending> batch;
      batch.swap(pending_);
      for (auto& pending : batch) {
        if (pending.arrived && !stopping_.load()) {
          arrived(pending.device);
        } else if (!pending.arrived) {
          left(pending.device);
        }
        libusb_unref_device(pending.device);
      }
    }
  }

  void arrived(libusb_device* device) {
    const std::string port = port_path(device);
    if (port.empty()) return;  // a root hub
    if (auto known = present_.find(port); known != present_.end()) {
      if (known->second == device) return;
      forget(known);  // a new device on the port: the old one's removal was missed
    }
    present_.emplace(port, libusb_ref_device(device));
    attached_(describe(device, port));
  }

  void left(libusb_device* device) {
    const std::string port = port_path(device);
    if (auto known = present_.find(port); known != present_.end() && known->second == device) forget(known);
  }

  void forget(std::map<std::string, libusb_device*>::iterator known) {
    std::string port = known->first;
    libusb_unref_device(known->second);
    present_.erase(known);
    detached_(std::move(port));
  }

  // The fallback without hotplug: diff the device list against what was reported.
  void rescan() {
    libusb_device** list = nullptr;
    const ssize_t count = libusb_get_device_list(context_, &list);
    if (count < 0) {
      logger().warn("", "usb_rescan_failed", {{"reason", libusb_error_name(static_cast<int>(count))}});
      return;
    }
    std::map<std::string, libusb_device*> now;
    for (ssize_t i = 0; i < count; ++i) {
      if (std::string port = port_path(list[i]); !port.empty()) now.emplace(std::move(port), list[i]);
    }
    for (auto known = present_.begin(); known != present_.end();) {
      auto seen = now.find(known->first);
      auto next = std::next(known);
      if (seen == now.end() || seen->second != known->second) forget(known);
      known = next;
    }
    for (auto& [port, device] : now) {
      if (stopping_.load()) break;
      if (!present_.contains(port)) arrived(device);
    }
    libusb_free_device_list(list, 1);
  }

  libusb_context* context_;
  UsbWatch watch_;
  Attached attached_;
  Detached detached_;
  std::atomic<bool> stopping_{false};
  // Event thread only from here on.
  bool hotplug_ = false;
  libusb_hotplug_callback_handle hotplug_handle_{};
  std::vector<Pending> pending_;                    // filled by on_hotplug
  std::map<std::string, libusb_device*> present_;  // reported devices by port, referenced
  std::thread thread_;                              // last: starts after the members above exist
};

LibusbBackend::LibusbBackend(asio::any_io_executor executor, UsbWatch watch)
    : executor_(std::move(executor)), watch_(watch) {}

LibusbBackend::~LibusbBackend() {
  stop();
}

common::Result<void> LibusbBackend::start(UsbEvents events) {
  if (started_) return Error(Errc::illegal_state, "the libusb backend is already started");
  libusb_context* context = nullptr;
  if (const int r = libusb_init(&context); r < 0) {
    return Error(Errc::io_error, std::string("libusb_init: ") + libusb_error_name(r));
  }
  ++run_;
  events_ = std::move(events);
  started_ = true;
  const std::weak_ptr<int> alive = alive_;
  auto attached = [executor = executor_, alive, self = this, run = run_](UsbDeviceInfo info) {
    asio::post(executor, [alive, self, run, info = std::move(info)]() mutable {
      if (alive.lock()) self->on_attached(run, std::move(info));
    });
  };
  auto detached = [executor = executor_, alive, self = this, run = run_](std::string port) {
    asio::post(executor, [alive, self, run, port = std::move(port)] {
      if (alive.lock()) self->on_detached(run, port);
    });
  };
  thread_ = std::make_unique<EventThread>(context, watch_, std::move(attached), std::move(detached));
  return {};
}

void LibusbBackend::stop() {
  if (!started_) return;
  started_ = false;
  thread_.reset();  // joins: nothing is posted after this
  devices_.clear();
  events_ = {};
}

std::vector<UsbDeviceInfo> LibusbBackend::devices() const {
  std::vector<UsbDeviceInfo> out;
  out.reserve(devices_.size());
  for (const auto& [port, info] : devices_) out.push_back(info);
  return out;
}

void LibusbBackend::on_attached(std::uint64_t run, UsbDeviceInfo info) {
  if (!started_ || run != run_) return;  // posted before a stop()
  devices_.insert_or_assign(info.port, info);
  if (auto callback = events_.attached) callback(std::move(info));
}

void LibusbBackend::on_detached(std::uint64_t run, const std::string& port) {
  if (!started_ || run != run_) return;
  if (devices_.erase(port) == 0) return;
  if (auto callback = events_.detached) callback(port);
}

template <typename T>
void LibusbBackend::refuse_transfer(std::function<void(common::Result<T>)> done) const {
  Error why = started_ ? Error(Errc::unavailable, "in-band transfers arrive with the lease work")
                       : Error(Errc::closed, "the libusb backend is stopped");
  asio::post(executor_, [done = std::move(done), why = std::move(why)] { done(why); });
}

void LibusbBackend::bulk_out(const std::string&, std::uint8_t, std::vector<std::uint8_t>, common::Duration,
                             std::function<void(common::Result<std::size_t>)> done) {
  refuse_transfer<std::size_t>(std::move(done));
}

void LibusbBackend::bulk_in(const std::string&, std::uint8_t, std::size_t, common::Duration,
                            std::function<void(common::Result<std::vector<std::uint8_t>>)> done) {
  refuse_transfer<std::vector<std::uint8_t>>(std::move(done));
}

}  // namespace dtu::agent
