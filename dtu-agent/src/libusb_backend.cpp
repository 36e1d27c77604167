#include "dtu/agent/libusb_backend.hpp"

#include <libusb.h>
#include <sys/time.h>

#include <algorithm>
#include <asio/post.hpp>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dtu/agent/usb_descriptors.hpp"
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
// At stop(), how long the loop waits for cancelled transfers to come back before it closes their
// handles anyway (a device that never answers a cancel must not hang the agent's shutdown).
constexpr std::chrono::milliseconds kCancelWait{1000};
// The loop's wait while it collects cancelled transfers at stop().
constexpr std::chrono::microseconds kCancelPoll{10'000};
// libusb takes transfer timeouts in whole milliseconds, 0 meaning "never": a deadline that has
// already passed still gets this much, so it times out rather than waits forever.
constexpr std::chrono::milliseconds kShortestTimeout{1};

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

// Sets an unconfigured device to its first configuration (opening `handle` if needed). The value
// set, or 0 when it could not be set (logged).
std::uint8_t configure(libusb_device* device, const std::string& port, libusb_device_handle*& handle) {
  libusb_config_descriptor* first = nullptr;
  if (const int r = libusb_get_config_descriptor(device, 0, &first); r < 0) {
    logger().warn(port, "usb_configure_failed",
                  {{"reason", std::string("first configuration: ") + libusb_error_name(r)}});
    return 0;
  }
  const std::uint8_t value = first->bConfigurationValue;
  libusb_free_config_descriptor(first);
  if (handle == nullptr) {
    if (const int r = libusb_open(device, &handle); r < 0) {
      handle = nullptr;
      logger().warn(port, "usb_configure_failed", {{"reason", std::string("open: ") + libusb_error_name(r)}});
      return 0;
    }
  }
  if (const int r = libusb_set_configuration(handle, value); r < 0) {
    logger().warn(port, "usb_configure_failed", {{"configuration", value}, {"reason", libusb_error_name(r)}});
    return 0;
  }
  logger().info(port, "usb_configured", {{"configuration", value}});
  return value;
}

// Everything the agent needs about one device; configures it first when it arrived unconfigured.
// Does I/O (open, SET_CONFIGURATION, string descriptors): call it on the event thread, never
// inside a hotplug callback.
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

  libusb_device_handle* handle = nullptr;
  std::string open_failure;
  auto open = [&] {
    if (handle == nullptr && open_failure.empty()) {
      if (const int r = libusb_open(device, &handle); r < 0) {
        handle = nullptr;
        open_failure = std::string("open: ") + libusb_error_name(r);
      }
    }
    return handle != nullptr;
  };

  libusb_config_descriptor* config = nullptr;
  int got_config = libusb_get_active_config_descriptor(device, &config);
  if (got_config == LIBUSB_ERROR_NOT_FOUND && descriptor.bNumConfigurations > 0) {
    // Unconfigured (configuration 0): its units are unusable until a configuration is set.
    if (configure(device, port, handle) != 0)
      got_config = libusb_get_active_config_descriptor(device, &config);
  }
  if (got_config == 0) {
    describe_configuration(*config, info);
    libusb_free_config_descriptor(config);
  } else if (got_config != LIBUSB_ERROR_NOT_FOUND) {  // NOT_FOUND: still unconfigured, configuration 0
    // Whatever libusb could read is reported: the device without interfaces.
    logger().warn(port, "usb_config_unreadable", {{"reason", libusb_error_name(got_config)}});
    int active = 0;
    if (open() && libusb_get_configuration(handle, &active) == 0)
      info.configuration = static_cast<std::uint8_t>(active);
  }

  if (descriptor.iManufacturer != 0 || descriptor.iProduct != 0 || descriptor.iSerialNumber != 0) {
    std::string failures;
    if (!open()) failures = open_failure;
    info.manufacturer = read_string(handle, descriptor.iManufacturer, "manufacturer", failures);
    info.product = read_string(handle, descriptor.iProduct, "product", failures);
    info.serial = read_string(handle, descriptor.iSerialNumber, "serial", failures);
    if (!failures.empty()) logger().warn(port, "usb_strings_unreadable", {{"reason", failures}});
  }
  if (handle != nullptr) libusb_close(handle);
  return info;
}

// What the event thread answers a request with; the io_context side turns it into the Result the
// caller's completion takes.
struct Outcome {
  std::optional<Error> error;
  std::vector<std::uint8_t> bytes;  // IN data
  std::size_t count = 0;            // OUT bytes accepted
};

// Called exactly once, on the event thread; posts the caller's completion to the io_context.
using Reply = std::function<void(Outcome)>;

Outcome failure(Errc code, std::string detail) {
  return Outcome{Error{code, std::move(detail)}, {}, 0};
}

// A libusb error code (< 0) as an Errc, with what failed and where.
Outcome usb_failure(int code, const std::string& what, const std::string& port) {
  const std::string detail = what + " on port " + port + ": " + libusb_error_name(code);
  switch (code) {
    case LIBUSB_ERROR_NO_DEVICE:
      return failure(Errc::unavailable, detail);
    case LIBUSB_ERROR_NOT_FOUND:
      return failure(Errc::not_found, detail);
    case LIBUSB_ERROR_TIMEOUT:
      return failure(Errc::timeout, detail);
    case LIBUSB_ERROR_PIPE:
      return failure(Errc::refused, detail);
    default:
      return failure(Errc::io_error, detail);
  }
}

unsigned int timeout_ms(common::Duration timeout) {
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(timeout);
  if (ms < kShortestTimeout) ms = kShortestTimeout;
  const auto most = std::chrono::milliseconds(std::numeric_limits<unsigned int>::max());
  return static_cast<unsigned int>(std::min(ms, most).count());
}

std::string endpoint_text(std::uint8_t address) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[address >> 4] + kDigits[address & 0xf];
}

}  // namespace

struct LibusbBackend::Request {
  enum class Kind { claim, release, control, out, in };
  Kind kind = Kind::claim;
  std::string port;
  std::uint8_t target = 0;  // the interface (claim, release) or the endpoint (out, in)
  UsbControlSetup setup;
  std::vector<std::uint8_t> data;  // OUT bytes
  std::size_t max_length = 0;      // in
  common::Duration timeout{};
  Reply reply;
};

// The libusb side: owns the context, the event thread, every device handle, claim and transfer.
// Everything below except the constructor, submit() and the destructor runs on the event thread;
// results leave through the callbacks and the requests' replies, which post to the io_context.
class LibusbBackend::EventThread {
 public:
  using Attached = std::function<void(UsbDeviceInfo)>;
  using Detached = std::function<void(std::string)>;

  // Takes ownership of `context` (libusb_exit in the destructor).
  EventThread(libusb_context* context, UsbWatch watch, Attached attached, Detached detached)
      : context_(context), watch_(watch), attached_(std::move(attached)), detached_(std::move(detached)) {
    thread_ = std::thread([this] { run(); });
  }

  // Fails what is pending with Errc::closed, gives claims back, closes handles and joins.
  ~EventThread() {
    stopping_.store(true);
    libusb_interrupt_event_handler(context_);
    if (thread_.joinable()) thread_.join();
    libusb_exit(context_);
  }

  EventThread(const EventThread&) = delete;
  EventThread& operator=(const EventThread&) = delete;

  // Any thread (the io_context's): queues `request` for the loop and wakes it.
  void submit(Request request) {
    {
      std::lock_guard lock(requests_mutex_);
      if (!accepting_) {
        request.reply(failure(Errc::closed, "the libusb backend is stopped"));
        return;
      }
      requests_.push_back(std::move(request));
    }
    libusb_interrupt_event_handler(context_);
  }

 private:
  struct Pending {
    libusb_device* device;  // referenced
    bool arrived;
  };

  struct Device;

  // One libusb transfer in flight; owned by its Device's `transfers`, freed by its callback.
  struct Transfer {
    EventThread* owner = nullptr;
    Device* device = nullptr;
    libusb_transfer* transfer = nullptr;
    Request::Kind kind = Request::Kind::in;
    std::uint8_t interface = 0;        // out, in: the interface owning the endpoint
    std::vector<std::uint8_t> buffer;  // control: setup packet first
    Reply reply;
    bool replied = false;  // already answered (unplug, stop): the callback only frees
  };

  // A reported device and what the data path holds on it.
  struct Device {
    libusb_device* device = nullptr;  // referenced
    UsbDeviceInfo info;
    libusb_device_handle* handle = nullptr;  // open while something is claimed or in flight
    std::set<std::uint8_t> claimed;
    std::set<std::uint8_t> reattach;  // claimed interfaces whose kernel driver claim() detached
    std::set<Transfer*> transfers;
  };

  void run() {
    watch();
    auto next_rescan = std::chrono::steady_clock::now() + kRescanInterval;
    while (!stopping_.load()) {
      handle_pending();
      handle_requests();
      tidy();
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
    shut_down();
  }

  // Hotplug with the present devices enumerated (they arrive as queued events), or else a first
  // scan of the device list.
  void watch() {
    if (watch_ == UsbWatch::rescan) {
      logger().info("", "usb_rescan_selected", {{"rescan_ms", kRescanInterval.count()}});
    } else if (libusb_has_capability(LIBUSB_CAP_HAS_HOTPLUG) != 0) {
      const int r = libusb_hotplug_register_callback(
          context_,
          static_cast<libusb_hotplug_event>(LIBUSB_HOTPLUG_EVENT_DEVICE_ARRIVED |
                                            LIBUSB_HOTPLUG_EVENT_DEVICE_LEFT),
          LIBUSB_HOTPLUG_ENUMERATE, LIBUSB_HOTPLUG_MATCH_ANY, LIBUSB_HOTPLUG_MATCH_ANY,
          LIBUSB_HOTPLUG_MATCH_ANY, &EventThread::on_hotplug, this, &hotplug_handle_);
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
      if (known->second->device == device) return;
      forget(known);  // a new device on the port: the old one's removal was missed
    }
    auto entry = std::make_unique<Device>();
    entry->device = libusb_ref_device(device);
    entry->info = describe(device, port);
    UsbDeviceInfo info = entry->info;
    present_.emplace(port, std::move(entry));
    attached_(std::move(info));
  }

  void left(libusb_device* device) {
    const std::string port = port_path(device);
    if (auto known = present_.find(port); known != present_.end() && known->second->device == device)
      forget(known);
  }

  // The device on `known` is gone: its transfers fail with unavailable, its claims are dropped
  // (nothing to give back), and its handle closes once libusb has returned every transfer.
  void forget(std::map<std::string, std::unique_ptr<Device>>::iterator known) {
    std::string port = known->first;
    Device& d = *known->second;
    for (Transfer* t : d.transfers) {
      if (!t->replied) {
        t->replied = true;
        t->reply(failure(Errc::unavailable, "the device on port " + port + " was unplugged"));
      }
      libusb_cancel_transfer(t->transfer);
    }
    d.claimed.clear();
    d.reattach.clear();
    leaving_.push_back(std::move(known->second));
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
      if (seen == now.end() || seen->second != known->second->device) forget(known);
      known = next;
    }
    for (auto& [port, device] : now) {
      if (stopping_.load()) break;
      if (!present_.contains(port)) arrived(device);
    }
    libusb_free_device_list(list, 1);
  }

  // ---- The data path

  void handle_requests() {
    std::deque<Request> batch;
    {
      std::lock_guard lock(requests_mutex_);
      batch.swap(requests_);
    }
    for (auto& request : batch) {
      if (stopping_.load()) {
        request.reply(failure(Errc::closed, "the libusb backend is stopped"));
        continue;
      }
      auto known = present_.find(request.port);
      if (known == present_.end()) {
        request.reply(failure(Errc::not_found, "no device on port " + request.port));
        continue;
      }
      Device& d = *known->second;
      switch (request.kind) {
        case Request::Kind::claim:
          claim(d, request);
          break;
        case Request::Kind::release:
          release(d, request);
          break;
        case Request::Kind::control:
          control(d, request);
          break;
        case Request::Kind::out:
        case Request::Kind::in:
          transfer(d, request);
          break;
      }
    }
  }

  static bool has_interface(const Device& d, std::uint8_t number) {
    for (const auto& interface : d.info.interfaces) {
      if (interface.number == number) return true;
    }
    return false;
  }

  // Opens the device if it is not open; nullopt on success.
  std::optional<Outcome> open(Device& d) {
    if (d.handle != nullptr) return std::nullopt;
    if (const int r = libusb_open(d.device, &d.handle); r < 0) {
      d.handle = nullptr;
      return usb_failure(r, "open", d.info.port);
    }
    return std::nullopt;
  }

  void claim(Device& d, Request& request) {
    const std::string& port = d.info.port;
    const std::uint8_t interface = request.target;
    if (!has_interface(d, interface)) {
      return request.reply(
          failure(Errc::not_found, "no interface " + std::to_string(interface) + " on port " + port));
    }
    if (d.claimed.contains(interface)) return request.reply(Outcome{});
    if (auto failed = open(d)) return request.reply(std::move(*failed));
    bool detached = false;
    if (libusb_kernel_driver_active(d.handle, interface) == 1) {
      if (const int r = libusb_detach_kernel_driver(d.handle, interface);
          r < 0 && r != LIBUSB_ERROR_NOT_FOUND) {
        return request.reply(
            usb_failure(r, "detaching the kernel driver of interface " + std::to_string(interface), port));
      }
      detached = true;
      logger().info(port, "usb_driver_detached", {{"interface", interface}});
    }
    if (const int r = libusb_claim_interface(d.handle, interface); r < 0) {
      if (detached) reattach(d, interface);
      return request.reply(usb_failure(r, "claiming interface " + std::to_string(interface), port));
    }
    d.claimed.insert(interface);
    if (detached) d.reattach.insert(interface);
    request.reply(Outcome{});
  }

  void reattach(Device& d, std::uint8_t interface) {
    const int r = libusb_attach_kernel_driver(d.handle, interface);
    if (r < 0 && r != LIBUSB_ERROR_NOT_FOUND) {
      logger().warn(d.info.port, "usb_driver_reattach_failed",
                    {{"interface", interface}, {"reason", libusb_error_name(r)}});
    } else {
      logger().info(d.info.port, "usb_driver_reattached", {{"interface", interface}});
    }
  }

  // Gives `interface` back: releases it and re-attaches the kernel driver claim() detached.
  // Transfers still in flight on it end (the kernel kills them): they fail with illegal_state.
  Outcome give_back(Device& d, std::uint8_t interface) {
    for (Transfer* t : d.transfers) {
      if (t->kind == Request::Kind::control || t->interface != interface || t->replied) continue;
      t->replied = true;
      t->reply(failure(Errc::illegal_state, "interface " + std::to_string(interface) + " of port " +
                                                d.info.port + " was released during the transfer"));
      libusb_cancel_transfer(t->transfer);
    }
    d.claimed.erase(interface);
    const int r = libusb_release_interface(d.handle, interface);
    if (d.reattach.erase(interface) != 0) reattach(d, interface);
    if (r < 0 && r != LIBUSB_ERROR_NOT_FOUND)
      return usb_failure(r, "releasing interface " + std::to_string(interface), d.info.port);
    return Outcome{};
  }

  void release(Device& d, Request& request) {
    const std::uint8_t interface = request.target;
    if (!has_interface(d, interface)) {
      return request.reply(
          failure(Errc::not_found, "no interface " + std::to_string(interface) + " on port " + d.info.port));
    }
    if (!d.claimed.contains(interface)) return request.reply(Outcome{});
    request.reply(give_back(d, interface));
  }

  void control(Device& d, Request& request) {
    const UsbControlSetup& setup = request.setup;
    const bool in = (setup.request_type & kUsbEndpointDirIn) != 0;
    if (!in && request.data.size() != setup.length) {
      return request.reply(
          failure(Errc::invalid_argument, "control OUT with wLength " + std::to_string(setup.length) +
                                              " and " + std::to_string(request.data.size()) + " bytes"));
    }
    if (auto failed = open(d)) return request.reply(std::move(*failed));
    auto t = std::make_unique<Transfer>();
    t->kind = Request::Kind::control;
    t->buffer.resize(LIBUSB_CONTROL_SETUP_SIZE + setup.length);
    libusb_fill_control_setup(t->buffer.data(), setup.request_type, setup.request, setup.value, setup.index,
                              setup.length);
    if (!in)
      std::copy(request.data.begin(), request.data.end(), t->buffer.begin() + LIBUSB_CONTROL_SETUP_SIZE);
    t->transfer = libusb_alloc_transfer(0);
    if (t->transfer == nullptr) return request.reply(failure(Errc::io_error, "libusb_alloc_transfer failed"));
    libusb_fill_control_transfer(t->transfer, d.handle, t->buffer.data(), &EventThread::on_transfer, t.get(),
                                 timeout_ms(request.timeout));
    start(d, std::move(t), request);
  }

  void transfer(Device& d, Request& request) {
    const std::string& port = d.info.port;
    const std::uint8_t address = request.target;
    const bool want_in = request.kind == Request::Kind::in;
    const UsbEndpoint* endpoint = nullptr;
    std::uint8_t interface = 0;
    // An endpoint listed by several interfaces (a descriptor fault unit_rules.hpp handles) belongs
    // to whichever of them is claimed.
    for (const auto& candidate : d.info.interfaces) {
      for (const auto& ep : candidate.endpoints) {
        if (ep.address != address) continue;
        if (endpoint == nullptr || (!d.claimed.contains(interface) && d.claimed.contains(candidate.number))) {
          endpoint = &ep;
          interface = candidate.number;
        }
      }
    }
    if (endpoint == nullptr) {
      return request.reply(
          failure(Errc::not_found, "no endpoint " + endpoint_text(address) + " on port " + port));
    }
    if (is_in_endpoint(address) != want_in) {
      return request.reply(failure(
          Errc::invalid_argument,
          "endpoint " + endpoint_text(address) + " on port " + port + " is " + (want_in ? "OUT" : "IN")));
    }
    const std::uint8_t type = endpoint->attributes & kUsbTransferTypeMask;
    if (type != kUsbTransferBulk && type != kUsbTransferInterrupt) {
      return request.reply(failure(
          Errc::invalid_argument,
          "endpoint " + endpoint_text(address) + " on port " + port + " is neither bulk nor interrupt"));
    }
    const std::size_t length = want_in ? request.max_length : request.data.size();
    if (length == 0 || length > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      return request.reply(
          failure(Errc::invalid_argument, "a transfer of " + std::to_string(length) + " bytes"));
    }
    if (!d.claimed.contains(interface)) {
      return request.reply(failure(Errc::illegal_state, "interface " + std::to_string(interface) +
                                                            " of port " + port + " (endpoint " +
                                                            endpoint_text(address) + ") is not claimed"));
    }
    auto t = std::make_unique<Transfer>();
    t->kind = request.kind;
    t->interface = interface;
    if (want_in) {
      t->buffer.resize(length);
    } else {
      t->buffer = std::move(request.data);
    }
    t->transfer = libusb_alloc_transfer(0);
    if (t->transfer == nullptr) return request.reply(failure(Errc::io_error, "libusb_alloc_transfer failed"));
    const auto fill = type == kUsbTransferBulk ? &libusb_fill_bulk_transfer : &libusb_fill_interrupt_transfer;
    fill(t->transfer, d.handle, address, t->buffer.data(), static_cast<int>(length),
         &EventThread::on_transfer, t.get(), timeout_ms(request.timeout));
    start(d, std::move(t), request);
  }

  // Submits a filled transfer; it answers `request` when it completes.
  void start(Device& d, std::unique_ptr<Transfer> t, Request& request) {
    if (t->transfer == nullptr) return request.reply(failure(Errc::io_error, "libusb_alloc_transfer failed"));
    t->owner = this;
    t->device = &d;
    t->reply = std::move(request.reply);
    if (const int r = libusb_submit_transfer(t->transfer); r < 0) {
      t->reply(usb_failure(r, "submitting a transfer", d.info.port));
      libusb_free_transfer(t->transfer);
      return;
    }
    d.transfers.insert(t.release());
  }

  // Runs inside libusb's event handling, on this thread.
  static void LIBUSB_CALL on_transfer(libusb_transfer* transfer) {
    auto* t = static_cast<Transfer*>(transfer->user_data);
    t->owner->finished(t);
  }

  void finished(Transfer* t) {
    libusb_transfer* transfer = t->transfer;
    if (!t->replied) {
      t->replied = true;
      t->reply(outcome_of(*t));
    }
    t->device->transfers.erase(t);
    libusb_free_transfer(transfer);
    delete t;
  }

  static Outcome outcome_of(const Transfer& t) {
    const libusb_transfer& transfer = *t.transfer;
    const std::string& port = t.device->info.port;
    const std::string what = t.kind == Request::Kind::control
                                 ? "control transfer"
                                 : "transfer on endpoint " + endpoint_text(transfer.endpoint);
    switch (transfer.status) {
      case LIBUSB_TRANSFER_COMPLETED: {
        Outcome done;
        const auto actual = static_cast<std::size_t>(transfer.actual_length);
        if (t.kind == Request::Kind::out) done.count = actual;
        if (t.kind == Request::Kind::in)
          done.bytes.assign(t.buffer.begin(), t.buffer.begin() + static_cast<std::ptrdiff_t>(actual));
        if (t.kind == Request::Kind::control && (t.buffer[0] & kUsbEndpointDirIn) != 0) {
          const auto* data = libusb_control_transfer_get_data(t.transfer);
          done.bytes.assign(data, data + actual);
        }
        return done;
      }
      case LIBUSB_TRANSFER_TIMED_OUT:
        return failure(Errc::timeout, "nothing moved: " + what + " on port " + port);
      case LIBUSB_TRANSFER_NO_DEVICE:
        return failure(Errc::unavailable, what + " on port " + port + ": the device is gone");
      case LIBUSB_TRANSFER_STALL:
        return failure(Errc::refused, "the device on port " + port + " STALLed the " + what);
      case LIBUSB_TRANSFER_CANCELLED:  // we cancel only what we already answered
        return failure(Errc::closed, what + " on port " + port + " was cancelled");
      default:
        return failure(Errc::io_error, what + " on port " + port + ": " + libusb_error_name(transfer.status));
    }
  }

  // Closes what nothing needs any more: handles of present devices with no claim and no transfer,
  // and unplugged devices once libusb has returned their transfers.
  void tidy() {
    for (auto& [port, d] : present_) {
      if (d->handle != nullptr && d->claimed.empty() && d->transfers.empty()) {
        libusb_close(d->handle);
        d->handle = nullptr;
      }
    }
    for (auto it = leaving_.begin(); it != leaving_.end();) {
      if (!(*it)->transfers.empty()) {
        ++it;
        continue;
      }
      close(**it);
      it = leaving_.erase(it);
    }
  }

  // Closes `d`'s handle and drops the device reference. A transfer libusb never returned is
  // dropped from libusb's books by libusb_close and freed here.
  void close(Device& d) {
    if (d.handle != nullptr) libusb_close(d.handle);
    d.handle = nullptr;
    for (Transfer* t : d.transfers) {
      libusb_free_transfer(t->transfer);
      delete t;
    }
    d.transfers.clear();
    libusb_unref_device(d.device);
    d.device = nullptr;
  }

  // stop(): everything pending fails with closed, claims are given back, handles close.
  void shut_down() {
    {
      std::lock_guard lock(requests_mutex_);
      accepting_ = false;
    }
    handle_requests();  // stopping_: each fails with closed
    std::vector<Device*> all;
    for (auto& [port, d] : present_) all.push_back(d.get());
    for (auto& d : leaving_) all.push_back(d.get());
    bool in_flight = false;
    for (Device* d : all) {
      for (Transfer* t : d->transfers) {
        if (!t->replied) {
          t->replied = true;
          t->reply(failure(Errc::closed, "the libusb backend stopped"));
        }
        libusb_cancel_transfer(t->transfer);
        in_flight = true;
      }
    }
    const auto deadline = std::chrono::steady_clock::now() + kCancelWait;
    while (in_flight && std::chrono::steady_clock::now() < deadline) {
      timeval wait{0, static_cast<suseconds_t>(kCancelPoll.count())};
      libusb_handle_events_timeout_completed(context_, &wait, nullptr);
      in_flight = false;
      for (Device* d : all) in_flight = in_flight || !d->transfers.empty();
    }
    for (auto& [port, d] : present_) {
      for (std::uint8_t interface : std::set<std::uint8_t>(d->claimed)) give_back(*d, interface);
      close(*d);
    }
    present_.clear();
    for (auto& d : leaving_) close(*d);
    leaving_.clear();
    if (hotplug_) libusb_hotplug_deregister_callback(context_, hotplug_handle_);
    for (auto& pending : pending_) libusb_unref_device(pending.device);
    pending_.clear();
  }

  libusb_context* context_;
  UsbWatch watch_;
  Attached attached_;
  Detached detached_;
  std::atomic<bool> stopping_{false};
  // Shared with the io_context thread (submit()), under requests_mutex_.
  std::mutex requests_mutex_;
  std::deque<Request> requests_;
  bool accepting_ = true;
  // Event thread only from here on.
  bool hotplug_ = false;
  libusb_hotplug_callback_handle hotplug_handle_{};
  std::vector<Pending> pending_;                            // filled by on_hotplug
  std::map<std::string, std::unique_ptr<Device>> present_;  // reported devices by port
  std::vector<std::unique_ptr<Device>> leaving_;            // unplugged, transfers still in libusb
  std::thread thread_;                                      // last: starts after the members above exist
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
  thread_.reset();  // joins: pending requests and transfers have posted Errc::closed
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

namespace {

// The reply of a request whose caller waits for a Result<T>: posts done(result) to `executor`.
// The posted handler touches only `done`, so it is safe after the backend is gone.
template <typename T>
Reply reply_to(asio::any_io_executor executor, std::function<void(common::Result<T>)> done) {
  return [executor = std::move(executor), done = std::move(done)](Outcome outcome) mutable {
    asio::post(executor, [done = std::move(done), outcome = std::move(outcome)]() mutable {
      if (!done) return;
      if (outcome.error) return done(common::Result<T>(std::move(*outcome.error)));
      if constexpr (std::is_same_v<T, void>) {
        done(common::Result<void>());
      } else if constexpr (std::is_same_v<T, std::size_t>) {
        done(common::Result<T>(outcome.count));
      } else {
        done(common::Result<T>(std::move(outcome.bytes)));
      }
    });
  };
}

}  // namespace

void LibusbBackend::hand_over(Request request) {
  if (!started_) return request.reply(failure(Errc::closed, "the libusb backend is stopped"));
  thread_->submit(std::move(request));
}

void LibusbBackend::claim(const std::string& port, std::uint8_t interface,
                          std::function<void(common::Result<void>)> done) {
  Request request;
  request.kind = Request::Kind::claim;
  request.port = port;
  request.target = interface;
  request.reply = reply_to<void>(executor_, std::move(done));
  hand_over(std::move(request));
}

void LibusbBackend::release(const std::string& port, std::uint8_t interface,
                            std::function<void(common::Result<void>)> done) {
  Request request;
  request.kind = Request::Kind::release;
  request.port = port;
  request.target = interface;
  request.reply = reply_to<void>(executor_, std::move(done));
  hand_over(std::move(request));
}

void LibusbBackend::control(const std::string& port, UsbControlSetup setup, std::vector<std::uint8_t> data,
                            common::Duration timeout,
                            std::function<void(common::Result<std::vector<std::uint8_t>>)> done) {
  Request request;
  request.kind = Request::Kind::control;
  request.port = port;
  request.setup = setup;
  request.data = std::move(data);
  request.timeout = timeout;
  request.reply = reply_to<std::vector<std::uint8_t>>(executor_, std::move(done));
  hand_over(std::move(request));
}

void LibusbBackend::transfer_out(const std::string& port, std::uint8_t endpoint,
                                 std::vector<std::uint8_t> data, common::Duration timeout,
                                 std::function<void(common::Result<std::size_t>)> done) {
  Request request;
  request.kind = Request::Kind::out;
  request.port = port;
  request.target = endpoint;
  request.data = std::move(data);
  request.timeout = timeout;
  request.reply = reply_to<std::size_t>(executor_, std::move(done));
  hand_over(std::move(request));
}

void LibusbBackend::transfer_in(const std::string& port, std::uint8_t endpoint, std::size_t max_length,
                                common::Duration timeout,
                                std::function<void(common::Result<std::vector<std::uint8_t>>)> done) {
  Request request;
  request.kind = Request::Kind::in;
  request.port = port;
  request.target = endpoint;
  request.max_length = max_length;
  request.timeout = timeout;
  request.reply = reply_to<std::vector<std::uint8_t>>(executor_, std::move(done));
  hand_over(std::move(request));
}

}  // namespace dtu::agent
