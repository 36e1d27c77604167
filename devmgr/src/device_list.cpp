#include "dtu/devmgr/device_list.hpp"

#include <optional>

namespace dtu::devmgr {

using common::DeviceRecord;
using common::Stamp;

bool DeviceList::advance(const std::string& dtu, const Stamp& stamp) {
  auto it = last_stamp_.find(dtu);
  if (it != last_stamp_.end() && !(it->second < stamp)) return false;
  last_stamp_[dtu] = stamp;
  return true;
}

DeviceList::Applied DeviceList::replace(const std::string& dtu, const Stamp& stamp,
                                        std::vector<DeviceRecord> devices) {
  if (!advance(dtu, stamp)) return Applied::stale;
  std::map<std::string, DeviceRecord> before;
  if (auto it = devices_.find(dtu); it != devices_.end()) before = std::move(it->second);
  auto& table = devices_[dtu];
  table.clear();
  for (auto& d : devices) table[d.device] = std::move(d);
  const std::map<std::string, DeviceRecord> now = table;  // listeners may change the list
  if (table.empty()) devices_.erase(dtu);
  for (const auto& [port, record] : before) {
    if (!now.contains(port) && listener_.removed) listener_.removed(record, "detached");
  }
  for (const auto& [port, record] : now) {
    auto old = before.find(port);
    if (listener_.updated) listener_.updated(old == before.end() ? nullptr : &old->second, record);
  }
  return Applied::applied;
}

DeviceList::Applied DeviceList::upsert(DeviceRecord record) {
  if (!advance(record.dtu, record.stamp)) return Applied::stale;
  auto& table = devices_[record.dtu];
  const std::string port = record.device;
  std::optional<DeviceRecord> before;
  if (auto it = table.find(port); it != table.end()) before = std::move(it->second);
  table[port] = record;
  if (listener_.updated) listener_.updated(before ? &*before : nullptr, record);
  return Applied::applied;
}

DeviceList::Applied DeviceList::remove(const std::string& dtu, const std::string& device, const Stamp& stamp) {
  if (!advance(dtu, stamp)) return Applied::stale;
  auto it = devices_.find(dtu);
  if (it == devices_.end()) return Applied::applied;
  auto record = it->second.find(device);
  if (record == it->second.end()) return Applied::applied;
  const DeviceRecord gone = std::move(record->second);
  it->second.erase(record);
  if (it->second.empty()) devices_.erase(it);
  if (listener_.removed) listener_.removed(gone, "detached");
  return Applied::applied;
}

std::size_t DeviceList::drop_dtu(const std::string& dtu) {
  auto it = devices_.find(dtu);
  if (it == devices_.end()) return 0;
  const std::map<std::string, DeviceRecord> gone = std::move(it->second);
  devices_.erase(it);
  if (listener_.removed) {
    for (const auto& [port, record] : gone) listener_.removed(record, "dtu_lost");
  }
  return gone.size();
}

std::vector<DeviceRecord> DeviceList::list(const std::optional<std::string>& dtu) const {
  std::vector<DeviceRecord> out;
  if (dtu) {  // one DTU: a lookup, not a walk over every DTU (quadratic at 10k DTUs, docs/performance.md)
    auto it = devices_.find(*dtu);
    if (it != devices_.end()) {
      for (const auto& [port, record] : it->second) out.push_back(record);
    }
    return out;
  }
  for (const auto& [id, table] : devices_) {
    for (const auto& [port, record] : table) out.push_back(record);
  }
  return out;
}

const DeviceRecord* DeviceList::find(const std::string& dtu, const std::string& device) const {
  auto it = devices_.find(dtu);
  if (it == devices_.end()) return nullptr;
  auto record = it->second.find(device);
  return record == it->second.end() ? nullptr : &record->second;
}

void DeviceList::forget_stamp(const std::string& dtu) { last_stamp_.erase(dtu); }

std::optional<common::Stamp> DeviceList::last_stamp(const std::string& dtu) const {
  auto it = last_stamp_.find(dtu);
  if (it == last_stamp_.end()) return std::nullopt;
  return it->second;
}

std::size_t DeviceList::device_count() const {
  std::size_t n = 0;
  for (const auto& [id, table] : devices_) n += table.size();
  return n;
}

}  // namespace dtu::devmgr
