// Emulated USB devices for tests, with umockdev: the including test process owns the testbed
// (sysfs, /dev/bus/usb nodes, uevents) and answers the devices' usbdevfs ioctls itself, on the
// testbed's worker thread; libusb — in this process or in a child such as dtu-agent, which
// inherits the preload and the testbed — sees them through libumockdev-preload. Hotplug needs
// the testbed owner under the preload too, so including this header makes the test binary
// re-exec itself with it before main().
//
// Include from exactly one source file of a test executable.
#pragma once

#include <errno.h>
#include <linux/usbdevice_fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <umockdev.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include "dtu/agent/usb_device.hpp"

namespace {

// Before main(): re-exec under libumockdev-preload unless it is already loaded. Run this way, the
// test works from ctest, from doctest_discover_tests' listing and by hand. The preload upsets
// ASan's "runtime first" check, which has to be switched off for the re-exec.
struct PreloadSelf {
  PreloadSelf() {
    const char* preload = getenv("LD_PRELOAD");
    if (preload != nullptr && std::string_view(preload).find("libumockdev-preload") != std::string_view::npos)
      return;
    std::string wanted = "libumockdev-preload.so.0";
    if (preload != nullptr && *preload != '\0') wanted += std::string(":") + preload;
    setenv("LD_PRELOAD", wanted.c_str(), 1);
    const char* asan = getenv("ASAN_OPTIONS");
    if (asan == nullptr || *asan == '\0') {
      setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
    } else if (std::string_view(asan).find("verify_asan_link_order") == std::string_view::npos) {
      setenv("ASAN_OPTIONS", (std::string(asan) + ":verify_asan_link_order=0").c_str(), 1);
    }
    // Our own arguments, as given: /proc/self/cmdline is NUL-separated.
    std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    std::vector<std::string> args;
    for (std::size_t at = 0; at < all.size();) {
      const std::size_t end = all.find('\0', at);
      args.push_back(all.substr(at, end - at));
      at = end == std::string::npos ? all.size() : end + 1;
    }
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    std::perror("re-exec under libumockdev-preload");
    _exit(2);
  }
};
const PreloadSelf preload_self;

using dtu::agent::UsbInterfaceAssociation;
using Bytes = std::vector<std::uint8_t>;

// ---- An emulated device: its descriptors, its umockdev record, and a usbdevfs ioctl handler that
// plays the device and the kernel's usbfs: control requests (descriptors, strings, GET_STATUS,
// the printer-class GET_DEVICE_ID), interface claims, kernel-driver detach and re-attach,
// SET_CONFIGURATION, and bulk/interrupt URBs whose OUT bytes are captured per endpoint and whose
// IN URBs are answered from per-endpoint queues the test fills (an IN URB stays pending until data
// is queued, it is discarded, or the device is unplugged).

struct FakeInterface {
  std::uint8_t number = 0;
  std::uint8_t alternate = 0;
  std::uint8_t cls = 0, subclass = 0, protocol = 0;
  std::vector<std::uint8_t> endpoints;  // bulk, 512-byte packets
};

struct FakeSpec {
  int devnum = 2;
  int port = 1;  // on bus 1: sysfs name "1-<port>"
  std::uint16_t vid = 0, pid = 0;
  std::string manufacturer, product, serial;  // string descriptors 1, 2, 3; empty = index 0
  std::vector<FakeInterface> interfaces;
  std::optional<UsbInterfaceAssociation> association;  // placed before its first interface
  bool strings_stall = false;                          // every string request STALLs
  std::map<std::uint8_t, std::string> device_ids;      // interface → IEEE 1284 id (GET_DEVICE_ID)
  std::map<std::uint8_t, std::string> bound_drivers;   // interface → kernel driver bound at plug
  bool unconfigured = false;      // arrives with configuration 0, until SET_CONFIGURATION
  bool malformed_config = false;  // its first interface descriptor has bLength 7: libusb refuses it
};

void put_le16(Bytes& out, std::uint16_t value) {
  out.push_back(static_cast<std::uint8_t>(value & 0xff));
  out.push_back(static_cast<std::uint8_t>(value >> 8));
}

Bytes device_descriptor(const FakeSpec& spec) {
  Bytes d{18, 1};
  put_le16(d, 0x0200);
  d.insert(d.end(), {0, 0, 0, 64});
  put_le16(d, spec.vid);
  put_le16(d, spec.pid);
  put_le16(d, 0x0100);
  d.push_back(spec.manufacturer.empty() ? 0 : 1);
  d.push_back(spec.product.empty() ? 0 : 2);
  d.push_back(spec.serial.empty() ? 0 : 3);
  d.push_back(1);
  return d;
}

Bytes config_descriptor(const FakeSpec& spec) {
  Bytes body;
  std::set<std::uint8_t> numbers;
  for (const auto& itf : spec.interfaces) {
    numbers.insert(itf.number);
    if (spec.association && itf.alternate == 0 && itf.number == spec.association->first_interface) {
      const auto& a = *spec.association;
      body.insert(body.end(), {8, 0x0B, a.first_interface, a.count, a.cls, a.subclass, a.protocol, 0});
    }
    const std::uint8_t length = spec.malformed_config && numbers.size() == 1 ? 7 : 9;
    body.insert(body.end(),
                {length, 4, itf.number, itf.alternate, static_cast<std::uint8_t>(itf.endpoints.size()),
                 itf.cls, itf.subclass, itf.protocol, 0});
    if (length < 9) body.resize(body.size() - (9 - length));
    for (std::uint8_t address : itf.endpoints) {
      body.insert(body.end(), {7, 5, address, 2});
      put_le16(body, 512);
      body.push_back(0);
    }
  }
  Bytes c{9, 2};
  put_le16(c, static_cast<std::uint16_t>(9 + body.size()));
  c.insert(c.end(), {static_cast<std::uint8_t>(numbers.size()), 1, 0, 0xc0, 1});
  c.insert(c.end(), body.begin(), body.end());
  return c;
}

std::string node_of(const FakeSpec& spec) {
  char node[32];
  std::snprintf(node, sizeof node, "bus/usb/001/%03d", spec.devnum);
  return node;
}

std::string syspath_of(const FakeSpec& spec) {
  return "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-" + std::to_string(spec.port);
}

// The device in umockdev's record format: what libusb's udev backend needs, nothing more. An
// unconfigured device has an empty bConfigurationValue, as the kernel shows it.
std::string record_of(const FakeSpec& spec) {
  Bytes blob = device_descriptor(spec);
  const Bytes config = config_descriptor(spec);
  blob.insert(blob.end(), config.begin(), config.end());
  std::string hex;
  for (std::uint8_t b : blob) {
    char two[3];
    std::snprintf(two, sizeof two, "%02X", b);
    hex += two;
  }
  std::ostringstream r;
  r << "P: " << syspath_of(spec).substr(4) << "\n"
    << "N: " << node_of(spec) << "\n"
    << "E: DEVNAME=/dev/" << node_of(spec) << "\n"
    << "E: DEVTYPE=usb_device\nE: DRIVER=usb\nE: SUBSYSTEM=usb\n"
    << "A: busnum=1\\n\nA: devnum=" << spec.devnum << "\\n\nA: speed=480\\n\n"
    << "A: bConfigurationValue=" << (spec.unconfigured ? "" : "1\\n") << "\n"
    << "H: descriptors=" << hex << "\n";
  return r.str();
}

// Answers usbdevfs ioctls for one device. handle() runs on the testbed's worker thread; the
// accessors (queue_in, out_data, …) on the test's thread: one mutex guards the state.
class FakeDeviceHandler {
 public:
  FakeDeviceHandler(FakeSpec spec, UMockdevTestbed* testbed)
      : spec_(std::move(spec)), testbed_(testbed), handler_(umockdev_ioctl_base_new()) {
    bound_ = spec_.bound_drivers;
    configuration_ = spec_.unconfigured ? 0 : 1;
    g_signal_connect(handler_, "handle-ioctl", G_CALLBACK(&FakeDeviceHandler::on_ioctl), this);
  }
  ~FakeDeviceHandler() {
    for (auto& urb : reapable_) release(urb);
    for (auto& urb : pending_in_) release(urb);
    g_object_unref(handler_);
  }
  FakeDeviceHandler(const FakeDeviceHandler&) = delete;
  FakeDeviceHandler& operator=(const FakeDeviceHandler&) = delete;

  UMockdevIoctlBase* handler() const { return handler_; }
  const FakeSpec& spec() const { return spec_; }

  // Bytes the device will send on IN `endpoint`: one chunk per URB (a chunk longer than the URB's
  // buffer is split). Completes an IN URB that waits.
  void queue_in(std::uint8_t endpoint, Bytes bytes) {
    std::lock_guard lock(mutex_);
    in_queue_[endpoint].push_back(std::move(bytes));
    serve_pending();
  }
  // Every byte the host wrote to OUT `endpoint`.
  Bytes out_data(std::uint8_t endpoint) {
    std::lock_guard lock(mutex_);
    auto it = out_.find(endpoint);
    return it == out_.end() ? Bytes{} : it->second;
  }
  std::set<std::uint8_t> claimed() {
    std::lock_guard lock(mutex_);
    return claimed_;
  }
  // The kernel driver bound to `interface` now; empty when none (or usbfs, i.e. claimed).
  std::string bound_driver(std::uint8_t interface) {
    std::lock_guard lock(mutex_);
    auto it = bound_.find(interface);
    return it == bound_.end() ? std::string{} : it->second;
  }
  int configuration() {
    std::lock_guard lock(mutex_);
    return configuration_;
  }
  // How many IN URBs wait for data.
  std::size_t pending_in() {
    std::lock_guard lock(mutex_);
    return pending_in_.size();
  }
  // Like the kernel on unplug: URBs in flight complete with ENODEV, later ioctls fail with ENODEV.
  void unplug() {
    std::lock_guard lock(mutex_);
    unplugged_ = true;
    for (auto& urb : pending_in_) {
      urb.status = -ENODEV;
      reapable_.push_back(urb);
    }
    pending_in_.clear();
  }

 private:
  struct Urb {
    UMockdevIoctlData* urb;     // the client's usbdevfs_urb (our reference)
    UMockdevIoctlData* buffer;  // its data buffer (our reference)
    int status = 0;
    Bytes reply;  // IN data (control: the data stage only)
    int actual = 0;
  };

  static void release(Urb& r) {
    g_object_unref(r.buffer);
    g_object_unref(r.urb);
  }

  static usbdevfs_urb* fields(const Urb& r) { return reinterpret_cast<usbdevfs_urb*>(r.urb->data); }

  Bytes string_descriptor(std::uint8_t index) const {
    if (index == 0) return {4, 3, 0x09, 0x04};  // language table: en-US
    const std::string* text = index == 1   ? &spec_.manufacturer
                              : index == 2 ? &spec_.product
                              : index == 3 ? &spec_.serial
                                           : nullptr;
    if (text == nullptr || text->empty()) return {};
    Bytes d{static_cast<std::uint8_t>(2 + 2 * text->size()), 3};
    for (char c : *text) d.insert(d.end(), {static_cast<std::uint8_t>(c), 0});
    return d;
  }

  // The reply to a control request; nullopt = STALL.
  std::optional<Bytes> control(const std::uint8_t* setup) const {
    const std::uint8_t type = setup[0], request = setup[1];
    const std::uint8_t descriptor = setup[3], index = setup[2];
    const std::uint8_t interface = setup[5];  // wIndex high byte (printer class)
    const std::size_t length = static_cast<std::size_t>(setup[6] | (setup[7] << 8));
    Bytes reply;
    if (type == 0x80 && request == 6) {  // GET_DESCRIPTOR
      if (descriptor == 1) reply = device_descriptor(spec_);
      if (descriptor == 2 && index == 0) reply = config_descriptor(spec_);
      if (descriptor == 3 && !spec_.strings_stall) reply = string_descriptor(index);
      if (reply.empty()) return std::nullopt;
    } else if (type == 0x80 && request == 0) {  // GET_STATUS
      reply = {0, 0};
    } else if (type == 0x80 && request == 8) {  // GET_CONFIGURATION
      reply = {static_cast<std::uint8_t>(configuration_)};
    } else if (type == 0xA1 && request == 0) {  // printer class GET_DEVICE_ID
      auto id = spec_.device_ids.find(interface);
      if (id == spec_.device_ids.end()) return std::nullopt;
      const std::size_t size = id->second.size() + 2;
      reply = {static_cast<std::uint8_t>(size >> 8), static_cast<std::uint8_t>(size & 0xff)};
      reply.insert(reply.end(), id->second.begin(), id->second.end());
    } else {
      return std::nullopt;
    }
    if (reply.size() > length) reply.resize(length);
    return reply;
  }

  // Completes waiting IN URBs from the queues. REQUIRES: mutex_ held.
  void serve_pending() {
    for (auto it = pending_in_.begin(); it != pending_in_.end();) {
      auto& queue = in_queue_[fields(*it)->endpoint];
      if (queue.empty()) {
        ++it;
        continue;
      }
      Urb urb = *it;
      it = pending_in_.erase(it);
      take_in(urb, queue);
      reapable_.push_back(std::move(urb));
    }
  }

  // Fills an IN URB from the front chunk of `queue`. REQUIRES: !queue.empty().
  static void take_in(Urb& urb, std::deque<Bytes>& queue) {
    Bytes& chunk = queue.front();
    const std::size_t room = static_cast<std::size_t>(fields(urb)->buffer_length);
    const std::size_t n = std::min(room, chunk.size());
    urb.reply.assign(chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    urb.actual = static_cast<int>(n);
    chunk.erase(chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    if (chunk.empty()) queue.pop_front();
  }

  bool has_interface(unsigned number) const {
    for (const auto& itf : spec_.interfaces) {
      if (itf.number == number) return true;
    }
    return false;
  }

  gboolean submit(UMockdevIoctlClient* client, UMockdevIoctlData* arg) {
    UMockdevIoctlData* urb = umockdev_ioctl_data_resolve(arg, 0, sizeof(usbdevfs_urb), nullptr);
    auto* f = reinterpret_cast<usbdevfs_urb*>(urb->data);
    const bool control_urb = f->type == USBDEVFS_URB_TYPE_CONTROL;
    const bool data_urb = f->type == USBDEVFS_URB_TYPE_BULK || f->type == USBDEVFS_URB_TYPE_INTERRUPT;
    if ((!control_urb && !data_urb) || (control_urb && f->buffer_length < 8) || f->buffer_length < 0) {
      g_object_unref(urb);
      umockdev_ioctl_client_complete(client, -1, EINVAL);
      return TRUE;
    }
    UMockdevIoctlData* buffer = umockdev_ioctl_data_resolve(urb, offsetof(usbdevfs_urb, buffer),
                                                            static_cast<gsize>(f->buffer_length), nullptr);
    Urb r{urb, buffer, 0, {}, 0};
    if (control_urb) {
      auto reply = control(buffer->data);
      r.status = reply ? 0 : -EPIPE;
      r.reply = reply.value_or(Bytes{});
      r.actual = static_cast<int>(r.reply.size());
      if (reply && (buffer->data[0] & 0x80) == 0) r.actual = f->buffer_length - 8;  // OUT: all sent
      reapable_.push_back(std::move(r));
    } else if ((f->endpoint & 0x80) == 0) {
      Bytes& out = out_[f->endpoint];
      out.insert(out.end(), buffer->data, buffer->data + f->buffer_length);
      r.actual = f->buffer_length;
      reapable_.push_back(std::move(r));
    } else {
      auto& queue = in_queue_[f->endpoint];
      if (queue.empty()) {
        pending_in_.push_back(std::move(r));
      } else {
        take_in(r, queue);
        reapable_.push_back(std::move(r));
      }
    }
    umockdev_ioctl_client_complete(client, 0, 0);
    return TRUE;
  }

  gboolean reap(UMockdevIoctlClient* client, UMockdevIoctlData* arg) {
    if (reapable_.empty()) {
      umockdev_ioctl_client_complete(client, -1, unplugged_ ? ENODEV : EAGAIN);
      return TRUE;
    }
    Urb done = std::move(reapable_.front());
    reapable_.pop_front();
    auto* f = fields(done);
    f->status = done.status;
    f->actual_length = done.actual;
    const std::size_t offset = f->type == USBDEVFS_URB_TYPE_CONTROL ? 8 : 0;
    std::copy(done.reply.begin(), done.reply.end(), done.buffer->data + offset);
    UMockdevIoctlData* slot = umockdev_ioctl_data_resolve(arg, 0, sizeof(void*), nullptr);
    umockdev_ioctl_data_set_ptr(slot, 0, done.urb);  // *arg = the reaped urb
    g_object_unref(slot);
    umockdev_ioctl_client_complete(client, 0, 0);
    release(done);
    return TRUE;
  }

  gboolean discard(UMockdevIoctlClient* client, UMockdevIoctlData* arg) {
    gulong address = 0;
    std::memcpy(&address, arg->data, sizeof address);  // the argument is the client's urb pointer
    for (auto it = pending_in_.begin(); it != pending_in_.end(); ++it) {
      if (it->urb->client_addr != address) continue;
      Urb urb = *it;
      pending_in_.erase(it);
      urb.status = -ENOENT;
      reapable_.push_back(std::move(urb));
      umockdev_ioctl_client_complete(client, 0, 0);
      return TRUE;
    }
    umockdev_ioctl_client_complete(client, -1, EINVAL);  // already done: it will be reaped
    return TRUE;
  }

  // Reads the first `size` bytes the argument points to; caller unrefs.
  static UMockdevIoctlData* pointee(UMockdevIoctlData* arg, gsize size) {
    return umockdev_ioctl_data_resolve(arg, 0, size, nullptr);
  }

  void set_configuration(int value) {
    configuration_ = value;
    const std::string text = value == 0 ? std::string{} : std::to_string(value) + "\n";
    umockdev_testbed_set_attribute(testbed_, syspath_of(spec_).c_str(), "bConfigurationValue", text.c_str());
  }

  gboolean handle(UMockdevIoctlClient* client) {
    const gulong request = umockdev_ioctl_client_get_request(client);
    UMockdevIoctlData* arg = umockdev_ioctl_client_get_arg(client);
    std::lock_guard lock(mutex_);
    if (request == USBDEVFS_REAPURB || request == USBDEVFS_REAPURBNDELAY) return reap(client, arg);
    if (unplugged_) {
      umockdev_ioctl_client_complete(client, -1, ENODEV);
      return TRUE;
    }
    auto done = [&](int result, int error) {
      umockdev_ioctl_client_complete(client, result, error);
      return TRUE;
    };
    switch (request) {
      case USBDEVFS_SUBMITURB:
        return submit(client, arg);
      case USBDEVFS_DISCARDURB:
        return discard(client, arg);
      case USBDEVFS_GET_CAPABILITIES: {
        UMockdevIoctlData* caps = pointee(arg, sizeof(guint32));
        const guint32 value = USBDEVFS_CAP_BULK_CONTINUATION | USBDEVFS_CAP_NO_PACKET_SIZE_LIM |
                              USBDEVFS_CAP_REAP_AFTER_DISCONNECT | USBDEVFS_CAP_ZERO_PACKET;
        std::memcpy(caps->data, &value, sizeof value);
        g_object_unref(caps);
        return done(0, 0);
      }
      case USBDEVFS_CLAIMINTERFACE:
      case USBDEVFS_RELEASEINTERFACE: {
        UMockdevIoctlData* data = pointee(arg, sizeof(unsigned int));
        unsigned number = 0;
        std::memcpy(&number, data->data, sizeof number);
        g_object_unref(data);
        if (!has_interface(number) || configuration_ == 0) return done(-1, ENOENT);
        const auto interface = static_cast<std::uint8_t>(number);
        if (request == USBDEVFS_RELEASEINTERFACE) {
          if (claimed_.erase(interface) == 0) return done(-1, EINVAL);
          return done(0, 0);
        }
        if (bound_.count(interface) != 0) return done(-1, EBUSY);  // a kernel driver has it
        claimed_.insert(interface);
        return done(0, 0);
      }
      case USBDEVFS_GETDRIVER: {
        UMockdevIoctlData* data = pointee(arg, sizeof(usbdevfs_getdriver));
        auto* get = reinterpret_cast<usbdevfs_getdriver*>(data->data);
        const auto interface = static_cast<std::uint8_t>(get->interface);
        std::string name = claimed_.count(interface) != 0 ? "usbfs" : "";
        if (auto it = bound_.find(interface); it != bound_.end()) name = it->second;
        if (!name.empty()) std::snprintf(get->driver, sizeof get->driver, "%s", name.c_str());
        g_object_unref(data);
        return name.empty() ? done(-1, ENODATA) : done(0, 0);
      }
      case USBDEVFS_IOCTL: {  // DISCONNECT / CONNECT a kernel driver
        UMockdevIoctlData* data = pointee(arg, sizeof(usbdevfs_ioctl));
        usbdevfs_ioctl command{};
        std::memcpy(&command, data->data, sizeof command);
        g_object_unref(data);
        const auto interface = static_cast<std::uint8_t>(command.ifno);
        if (!has_interface(static_cast<unsigned>(command.ifno))) return done(-1, EINVAL);
        if (static_cast<unsigned long>(command.ioctl_code) == USBDEVFS_DISCONNECT) {
          auto it = bound_.find(interface);
          if (it == bound_.end()) return done(-1, ENODATA);
          detached_[interface] = it->second;
          bound_.erase(it);
          return done(0, 0);
        }
        if (static_cast<unsigned long>(command.ioctl_code) == USBDEVFS_CONNECT) {
          if (claimed_.count(interface) != 0 || bound_.count(interface) != 0) return done(-1, EBUSY);
          auto it = detached_.find(interface);
          if (it == detached_.end()) return done(0, 0);  // no driver wants it
          bound_[interface] = it->second;
          detached_.erase(it);
          return done(1, 0);  // bound, as device_attach() reports
        }
        return done(-1, ENOTTY);
      }
      case USBDEVFS_DISCONNECT_CLAIM: {
        UMockdevIoctlData* data = pointee(arg, sizeof(usbdevfs_disconnect_claim));
        usbdevfs_disconnect_claim dc{};
        std::memcpy(&dc, data->data, sizeof dc);
        g_object_unref(data);
        const auto interface = static_cast<std::uint8_t>(dc.interface);
        if (!has_interface(dc.interface)) return done(-1, EINVAL);
        if (auto it = bound_.find(interface); it != bound_.end()) {
          const bool matches = it->second == dc.driver;
          const bool skip = ((dc.flags & USBDEVFS_DISCONNECT_CLAIM_IF_DRIVER) != 0 && !matches) ||
                            ((dc.flags & USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER) != 0 && matches);
          if (skip) return done(-1, EBUSY);
          detached_[interface] = it->second;
          bound_.erase(it);
        }
        claimed_.insert(interface);
        return done(0, 0);
      }
      case USBDEVFS_SETCONFIGURATION: {
        UMockdevIoctlData* data = pointee(arg, sizeof(int));
        int value = 0;
        std::memcpy(&value, data->data, sizeof value);
        g_object_unref(data);
        if (value != 0 && value != 1) return done(-1, EINVAL);
        if (!claimed_.empty()) return done(-1, EBUSY);
        set_configuration(value);
        return done(0, 0);
      }
      case USBDEVFS_SETINTERFACE:
      case USBDEVFS_CLEAR_HALT:
      case USBDEVFS_RESETEP:
        return done(0, 0);
      default:
        return done(-1, ENOTTY);
    }
  }

  static gboolean on_ioctl(UMockdevIoctlBase*, UMockdevIoctlClient* client, gpointer self) {
    return static_cast<FakeDeviceHandler*>(self)->handle(client);
  }

  FakeSpec spec_;
  UMockdevTestbed* testbed_;
  UMockdevIoctlBase* handler_;
  std::mutex mutex_;
  std::deque<Urb> reapable_;
  std::deque<Urb> pending_in_;  // IN URBs waiting for data
  std::map<std::uint8_t, std::deque<Bytes>> in_queue_;
  std::map<std::uint8_t, Bytes> out_;
  std::set<std::uint8_t> claimed_;
  std::map<std::uint8_t, std::string> bound_;     // interface → kernel driver bound now
  std::map<std::uint8_t, std::string> detached_;  // interface → kernel driver detached by the host
  int configuration_ = 1;
  bool unplugged_ = false;
};

// The testbed and the devices plugged into it. Create it before the backend starts (libusb must
// see the testbed from libusb_init on) and destroy it after the backend stops.
class FakeUsb {
 public:
  FakeUsb() : testbed_(umockdev_testbed_new()) {}
  ~FakeUsb() {
    for (const auto& device : devices_) {
      umockdev_testbed_detach_ioctl(testbed_, ("/dev/" + node_of(device->spec())).c_str(), nullptr);
    }
    devices_.clear();
    g_object_unref(testbed_);
  }
  FakeUsb(const FakeUsb&) = delete;
  FakeUsb& operator=(const FakeUsb&) = delete;

  // Plugs a device; the handler lives as long as this FakeUsb (or until its node is plugged again).
  FakeDeviceHandler* plug(const FakeSpec& spec) {
    auto device = std::make_unique<FakeDeviceHandler>(spec, testbed_);
    GError* error = nullptr;
    const std::string node = "/dev/" + node_of(spec);
    for (auto it = devices_.begin(); it != devices_.end(); ++it) {
      if (node_of((*it)->spec()) != node_of(spec)) continue;
      umockdev_testbed_detach_ioctl(testbed_, node.c_str(), nullptr);  // an earlier device on the node
      devices_.erase(it);
      break;
    }
    // The handler first, so the device can be opened as soon as its "add" is seen.
    if (!umockdev_testbed_attach_ioctl(testbed_, node.c_str(), device->handler(), &error))
      FAIL(error->message);
    if (!umockdev_testbed_add_from_string(testbed_, record_of(spec).c_str(), &error)) FAIL(error->message);
    devices_.push_back(std::move(device));
    return devices_.back().get();
  }

  // Like the kernel: URBs in flight fail with ENODEV, a "remove" uevent while sysfs still has the
  // device, then it is gone. The handler stays attached so the host can reap what failed.
  void unplug(const FakeSpec& spec) {
    if (FakeDeviceHandler* device = find(spec)) device->unplug();
    const std::string syspath = syspath_of(spec);
    umockdev_testbed_uevent(testbed_, syspath.c_str(), "remove");
    umockdev_testbed_remove_device(testbed_, syspath.c_str());
  }

  // The handler of the device last plugged on `spec`'s node; nullptr when none.
  FakeDeviceHandler* find(const FakeSpec& spec) {
    for (const auto& device : devices_) {
      if (node_of(device->spec()) == node_of(spec)) return device.get();
    }
    return nullptr;
  }

 private:
  UMockdevTestbed* testbed_;
  std::vector<std::unique_ptr<FakeDeviceHandler>> devices_;
};

[[maybe_unused]] FakeSpec printer() {
  FakeSpec s;
  s.devnum = 2;
  s.port = 1;
  s.vid = 0x04b8;
  s.pid = 0x0005;
  s.manufacturer = "EPSON";
  s.product = "Stylus Test Printer";
  s.serial = "PRN0001";
  s.interfaces = {{0, 0, 0x07, 0x01, 0x02, {0x01, 0x82}}};
  return s;
}

[[maybe_unused]] FakeSpec multi_function() {
  FakeSpec s;
  s.devnum = 3;
  s.port = 2;
  s.vid = 0x04b8;
  s.pid = 0x08a1;
  s.manufacturer = "EPSON";
  s.product = "Test MFP Printer-Scanner-Storage";
  s.serial = "MFP0042";
  s.interfaces = {{0, 0, 0x07, 0x01, 0x02, {0x01, 0x82}},
                  {1, 0, 0xff, 0xff, 0xff, {0x03, 0x84}},
                  {2, 0, 0x08, 0x06, 0x50, {0x05, 0x86}}};
  return s;
}

// A webcam-like device: an association over two interfaces, the second with an alternate setting.
[[maybe_unused]] FakeSpec camera() {
  FakeSpec s;
  s.devnum = 4;
  s.port = 3;
  s.vid = 0x046d;
  s.pid = 0x0825;
  s.product = "Test Camera";
  s.interfaces = {
      {0, 0, 0x0e, 0x01, 0x00, {0x87}}, {1, 0, 0x0e, 0x02, 0x00, {}}, {1, 1, 0x0e, 0x02, 0x00, {0x81}}};
  s.association = UsbInterfaceAssociation{0, 2, 0x0e, 0x03, 0x00};
  return s;
}

[[maybe_unused]] FakeSpec mute_device() {
  FakeSpec s;
  s.devnum = 5;
  s.port = 4;
  s.vid = 0x1234;
  s.pid = 0x5678;
  s.manufacturer = "Hidden";
  s.product = "Hidden";
  s.serial = "Hidden";
  s.interfaces = {{0, 0, 0xff, 0x00, 0x00, {0x01}}};
  s.strings_stall = true;
  return s;
}

}  // namespace
