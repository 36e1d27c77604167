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

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iterator>
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
    if (preload != nullptr && std::string_view(preload).find("libumockdev-preload") != std::string_view::npos) return;
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
// answers the control requests libusb makes to read strings.

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
  bool strings_stall = false;                           // every string request STALLs
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
    body.insert(body.end(), {9, 4, itf.number, itf.alternate, static_cast<std::uint8_t>(itf.endpoints.size()), itf.cls,
                             itf.subclass, itf.protocol, 0});
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

// The device in umockdev's record format: what libusb's udev backend needs, nothing more.
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
    << "A: busnum=1\\n\nA: devnum=" << spec.devnum << "\\n\nA: speed=480\\n\nA: bConfigurationValue=1\\n\n"
    << "H: descriptors=" << hex << "\n";
  return r.str();
}

// Answers usbdevfs ioctls for one device. Runs on the testbed's worker thread.
class FakeDeviceHandler {
 public:
  explicit FakeDeviceHandler(FakeSpec spec) : spec_(std::move(spec)), handler_(umockdev_ioctl_base_new()) {
    g_signal_connect(handler_, "handle-ioctl", G_CALLBACK(&FakeDeviceHandler::on_ioctl), this);
  }
  ~FakeDeviceHandler() {
    for (auto& urb : reapable_) release(urb);
    g_object_unref(handler_);
  }
  FakeDeviceHandler(const FakeDeviceHandler&) = delete;
  FakeDeviceHandler& operator=(const FakeDeviceHandler&) = delete;

  UMockdevIoctlBase* handler() const { return handler_; }
  const FakeSpec& spec() const { return spec_; }

 private:
  struct Reapable {
    UMockdevIoctlData* urb;     // the client's usbdevfs_urb (our reference)
    UMockdevIoctlData* buffer;  // its data buffer (our reference)
    int status;
    Bytes reply;  // the data stage of a control IN
  };

  static void release(Reapable& r) {
    g_object_unref(r.buffer);
    g_object_unref(r.urb);
  }

  Bytes string_descriptor(std::uint8_t index) const {
    if (index == 0) return {4, 3, 0x09, 0x04};  // language table: en-US
    const std::string* text = index == 1 ? &spec_.manufacturer : index == 2 ? &spec_.product
                            : index == 3 ? &spec_.serial : nullptr;
    if (text == nullptr || text->empty()) return {};
    Bytes d{static_cast<std::uint8_t>(2 + 2 * text->size()), 3};
    for (char c : *text) d.insert(d.end(), {static_cast<std::uint8_t>(c), 0});
    return d;
  }

  // The reply to a control request; nullopt = STALL.
  std::optional<Bytes> control(const std::uint8_t* setup) const {
    const std::uint8_t type = setup[0], request = setup[1];
    const std::uint8_t descriptor = setup[3], index = setup[2];
    const std::size_t length = static_cast<std::size_t>(setup[6] | (setup[7] << 8));
    if (type != 0x80 || request != 6) return std::nullopt;  // only standard GET_DESCRIPTOR
    Bytes reply;
    if (descriptor == 1) reply = device_descriptor(spec_);
    if (descriptor == 2 && index == 0) reply = config_descriptor(spec_);
    if (descriptor == 3 && !spec_.strings_stall) reply = string_descriptor(index);
    if (reply.empty()) return std::nullopt;
    if (reply.size() > length) reply.resize(length);
    return reply;
  }

  gboolean handle(UMockdevIoctlClient* client) {
    const gulong request = umockdev_ioctl_client_get_request(client);
    UMockdevIoctlData* arg = umockdev_ioctl_client_get_arg(client);
    std::lock_guard lock(mutex_);
    if (request == USBDEVFS_SUBMITURB) {
      UMockdevIoctlData* urb = umockdev_ioctl_data_resolve(arg, 0, sizeof(usbdevfs_urb), nullptr);
      auto* fields = reinterpret_cast<usbdevfs_urb*>(urb->data);
      if (fields->type != USBDEVFS_URB_TYPE_CONTROL || fields->buffer_length < 8) {
        g_object_unref(urb);
        umockdev_ioctl_client_complete(client, -1, EINVAL);
        return TRUE;
      }
      UMockdevIoctlData* buffer = umockdev_ioctl_data_resolve(
          urb, offsetof(usbdevfs_urb, buffer), static_cast<gsize>(fields->buffer_length), nullptr);
      auto reply = control(buffer->data);
      reapable_.push_back(Reapable{urb, buffer, reply ? 0 : -EPIPE, reply.value_or(Bytes{})});
      umockdev_ioctl_client_complete(client, 0, 0);
      return TRUE;
    }
    if (request == USBDEVFS_REAPURB || request == USBDEVFS_REAPURBNDELAY) {
      if (reapable_.empty()) {
        umockdev_ioctl_client_complete(client, -1, EAGAIN);
        return TRUE;
      }
      Reapable done = reapable_.front();
      reapable_.pop_front();
      auto* fields = reinterpret_cast<usbdevfs_urb*>(done.urb->data);
      fields->status = done.status;
      fields->actual_length = static_cast<int>(done.reply.size());
      std::copy(done.reply.begin(), done.reply.end(), done.buffer->data + 8);
      UMockdevIoctlData* slot = umockdev_ioctl_data_resolve(arg, 0, sizeof(void*), nullptr);
      umockdev_ioctl_data_set_ptr(slot, 0, done.urb);  // *arg = the reaped urb
      g_object_unref(slot);
      umockdev_ioctl_client_complete(client, 0, 0);
      release(done);
      return TRUE;
    }
    umockdev_ioctl_client_complete(client, -1, ENOTTY);  // capabilities, drivers, …: not emulated
    return TRUE;
  }

  static gboolean on_ioctl(UMockdevIoctlBase*, UMockdevIoctlClient* client, gpointer self) {
    return static_cast<FakeDeviceHandler*>(self)->handle(client);
  }

  FakeSpec spec_;
  UMockdevIoctlBase* handler_;
  std::mutex mutex_;
  std::deque<Reapable> reapable_;
};

// The testbed and the devices plugged into it. Create it before the backend starts (libusb must
// see the testbed from libusb_init on) and destroy it after the backend stops.
class FakeUsb {
 public:
  FakeUsb() : testbed_(umockdev_testbed_new()) {}
  ~FakeUsb() {
    devices_.clear();
    g_object_unref(testbed_);
  }
  FakeUsb(const FakeUsb&) = delete;
  FakeUsb& operator=(const FakeUsb&) = delete;

  void plug(const FakeSpec& spec) {
    auto device = std::make_unique<FakeDeviceHandler>(spec);
    GError* error = nullptr;
    const std::string node = "/dev/" + node_of(spec);
    // The handler first, so the device can be opened as soon as its "add" is seen.
    if (!umockdev_testbed_attach_ioctl(testbed_, node.c_str(), device->handler(), &error)) FAIL(error->message);
    if (!umockdev_testbed_add_from_string(testbed_, record_of(spec).c_str(), &error)) FAIL(error->message);
    devices_.push_back(std::move(device));
  }

  // Like the kernel: a "remove" uevent while sysfs still has the device, then it is gone.
  void unplug(const FakeSpec& spec) {
    const std::string syspath = syspath_of(spec);
    umockdev_testbed_uevent(testbed_, syspath.c_str(), "remove");
    umockdev_testbed_remove_device(testbed_, syspath.c_str());
    umockdev_testbed_detach_ioctl(testbed_, ("/dev/" + node_of(spec)).c_str(), nullptr);
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
  s.interfaces = {{0, 0, 0x0e, 0x01, 0x00, {0x87}}, {1, 0, 0x0e, 0x02, 0x00, {}}, {1, 1, 0x0e, 0x02, 0x00, {0x81}}};
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
