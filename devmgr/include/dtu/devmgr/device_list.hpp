#pragma once
// DeviceList: the manager's table of device records, by DTU and port path (DESIGN.md §3).
// Records of one DTU are ordered by their stamp (boot_epoch, seq), generated on the DTU:
// an update older than what the list holds for that DTU is stale and ignored, whatever
// order the network delivered them in. Receive time never decides anything.
// Every applied change is reported to the listener after the list holds it (the finder registry
// and the lease broker follow the list this way).
// Not thread-safe: owned by the manager, used on its io_context thread.

#include <cstddef>
#include <functional>
#include <string_view>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dtu/common/records.hpp"

namespace dtu::devmgr {

// A device in the manager's tables: (dtu, port path). The per-finder tables that follow devices
// hash it: at 100k devices, trees of these string pairs cost a third of a device event in
// comparisons (docs/performance.md).
using DeviceKey = std::pair<std::string, std::string>;
struct DeviceKeyHash {
  std::size_t operator()(const DeviceKey& key) const {
    const std::size_t dtu = std::hash<std::string>{}(key.first);
    return dtu ^ (std::hash<std::string>{}(key.second) + 0x9e3779b97f4a7c15ULL + (dtu << 6) + (dtu >> 2));
  }
};

class DeviceList {
 public:
  enum class Applied { applied, stale };

  struct Listener {
    // A record was added (`before` null) or replaced.
    std::function<void(const common::DeviceRecord* before, const common::DeviceRecord& now)> updated;
    // A record left the list: reason "detached" (unplugged, or absent from a newer snapshot) or
    // "dtu_lost" (drop_dtu).
    std::function<void(const common::DeviceRecord& gone, std::string_view reason)> removed;
  };
  void set_listener(Listener listener) { listener_ = std::move(listener); }

  // Replaces every record of `dtu` with `devices` (a snapshot).
  Applied replace(const std::string& dtu, const common::Stamp& stamp, std::vector<common::DeviceRecord> devices);
  // Adds or replaces one record.
  Applied upsert(common::DeviceRecord record);
  // Removes one device.
  Applied remove(const std::string& dtu, const std::string& device, const common::Stamp& stamp);
  // Forgets every device of `dtu` (its link is gone); returns how many were removed.
  // The DTU's last stamp is kept, so a delayed old record cannot resurrect a device.
  std::size_t drop_dtu(const std::string& dtu);

  // Records sorted by (dtu, device); all DTUs, or only `dtu`.
  std::vector<common::DeviceRecord> list(const std::optional<std::string>& dtu = std::nullopt) const;
  // Calls fn(record) for every record, sorted by (dtu, device), copying none: for counts and
  // samples (a metrics scrape at 10,000 DTUs copied 80,000 records). fn must not change the list.
  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const auto& [id, table] : devices_) {
      for (const auto& [port, record] : table) fn(record);
    }
  }
  // The record of one device, or nullptr.
  const common::DeviceRecord* find(const std::string& dtu, const std::string& device) const;
  std::size_t device_count() const;
  std::size_t dtu_count() const { return devices_.size(); }
  // Forgets the last stamp of `dtu`, which has no records now (a new connection's snapshot comes
  // next and is applied whatever its stamp).
  void forget_stamp(const std::string& dtu);
  // The newest stamp applied for `dtu` (kept after it left), or nullopt when it was never here.
  std::optional<common::Stamp> last_stamp(const std::string& dtu) const;

 private:
  // True (and remembers the stamp) when `stamp` is newer than the last applied for `dtu`.
  bool advance(const std::string& dtu, const common::Stamp& stamp);

  std::map<std::string, std::map<std::string, common::DeviceRecord>> devices_;  // dtu -> port -> record
  std::map<std::string, common::Stamp> last_stamp_;
  Listener listener_;
};

}  // namespace dtu::devmgr
