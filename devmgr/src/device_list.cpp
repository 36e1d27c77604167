#include "dtu/devmgr/device_list.hpp"

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
  auto& table = devices_[dtu];
  table.clear();
  for (auto& d : devices) table[d.device] = std::move(d);
  if (table.empty()) devices_.erase(dtu);
  return Applied::applied;
}

DeviceList::Applied DeviceList::upsert(DeviceRecord record) {
  if (!advance(record.dtu, record.stamp)) return Applied::stale;
  auto& table = devices_[record.dtu];
  const std::string port = record.device;
  table[port] = std::move(record);
  return Applied::applied;
}

DeviceList::Applied DeviceList::remove(const std::string& dtu, const std::string& device, const Stamp& stamp) {
  if (!advance(dtu, stamp)) return Applied::stale;
  auto it = devices_.find(dtu);
  if (it != devices_.end()) {
    it->second.erase(device);
    if (it->second.empty()) devices_.erase(it);
  }
  return Applied::applied;
}

std::size_t DeviceList::drop_dtu(const std::string& dtu) {
  auto it = devices_.find(dtu);
  if (it == devices_.end()) return 0;
  const std::size_t n = it->second.size();
  devices_.erase(it);
  return n;
}

std::vector<DeviceRecord> DeviceList::list(const std::optional<std::string>& dtu) const {
  std::vector<DeviceRecord> out;
  for (const auto& [id, table] : devices_) {
    if (dtu && id != *dtu) continue;
    for (const auto& [port, record] : table) out.push_back(record);
  }
  return out;
}

std::size_t DeviceList::device_count() const {
  std::size_t n = 0;
  for (const auto& [id, table] : devices_) n += table.size();
  return n;
}

}  // namespace dtu::devmgr
