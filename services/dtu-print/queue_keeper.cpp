#include "queue_keeper.hpp"

#include <algorithm>
#include <cctype>
#include <utility>

#include "dtu/services/printer_uri.hpp"

namespace dtu::services::print {

namespace {

bool ends_with(std::string_view text, std::string_view tail) {
  return text.size() >= tail.size() && text.substr(text.size() - tail.size()) == tail;
}

// CUPS compares queue names case-insensitively: the queue `name` already is, under any case.
const std::pair<const std::string, QueueInfo>* find_queue(const std::map<std::string, QueueInfo>& queues,
                                                          const std::string& name) {
  for (const auto& entry : queues) {
    if (entry.first.size() != name.size()) continue;
    const bool same = std::equal(entry.first.begin(), entry.first.end(), name.begin(), [](char a, char b) {
      return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
    });
    if (same) return &entry;
  }
  return nullptr;
}

std::string managed_info(std::string_view info) {
  return std::string(info) + " " + std::string(kManagedMarker);
}

}  // namespace

std::string sanitise_queue_name(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, kMaxQueueName)) {
    const auto u = static_cast<unsigned char>(c);
    const bool kept = u < 0x80 && (std::isalnum(u) != 0 || c == '-' || c == '_' || c == '.');
    out += kept ? c : '-';
  }
  return out;
}

std::string queue_name_for(std::string_view prefix, const common::DeviceRecord& device, std::uint32_t unit,
                           std::uint32_t first_unit) {
  std::string name(prefix);
  name += (device.serial && !device.serial->empty()) ? *device.serial : device.dtu + "-" + device.device;
  if (unit != first_unit) name += "-u" + std::to_string(unit);
  return sanitise_queue_name(name);
}

bool is_managed(const QueueInfo& queue) {
  return ends_with(queue.info, kManagedMarker);
}

QueueKeeper::QueueKeeper(CupsAdmin& cups, std::string prefix, const common::Logger& log)
    : cups_(cups), prefix_(std::move(prefix)), log_(log) {}

void QueueKeeper::on_matched(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units) {
  ensure(device, units);
}

void QueueKeeper::on_changed(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units) {
  ensure(device, units);
}

void QueueKeeper::ensure(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units) {
  if (units.empty()) return;
  const std::uint32_t first = *std::min_element(units.begin(), units.end());
  std::optional<std::map<std::string, QueueInfo>> queues;  // asked once, when a unit needs it
  for (std::uint32_t unit : units) {
    const UnitKey key{device.dtu, device.device, unit};
    if (kept_.contains(key)) continue;
    if (auto left = left_.find(key); left != left_.end()) {
      // Back before its queue was emptied: the backend stopped the queue, its jobs print now.
      auto resumed = cups_.resume(left->second);
      if (!resumed.ok() && resumed.error().code != common::Errc::not_found) {
        ++failures_;
        log_.error("-", "queue_failed", {{"queue", left->second}, {"reason", resumed.error().describe()}});
        continue;  // tried again at the next event
      }
      if (resumed.ok()) {
        kept_[key] = left->second;
        log_.info("-", "queue_restarted", {{"queue", left->second}, {"uri", make_printer_uri(device, unit)}});
        left_.erase(left);
        continue;
      }
      left_.erase(left);  // deleted meanwhile (by an administrator): made again below
    }
    if (!queues) {
      auto listed = cups_.queues();
      if (!listed.ok()) {
        ++failures_;
        log_.error("-", "queue_failed",
                   {{"dtu", device.dtu}, {"device", device.device}, {"reason", listed.error().describe()}});
        return;
      }
      queues = std::move(listed).value();
    }
    const std::string uri = make_printer_uri(device, unit);
    const std::string base = queue_name_for(prefix_, device, unit, first);
    bool refused = false;  // CUPS refused the queue: logged once, tried again at the next event
    for (int n = 1; n <= kMaxNameSuffix && !refused; ++n) {
      const std::string name = n == 1 ? base : sanitise_queue_name(base + "-" + std::to_string(n));
      const auto* existing = find_queue(*queues, name);
      if (existing != nullptr) {
        if (!is_managed(existing->second) || existing->second.device_uri != uri) continue;  // taken
        kept_[key] = existing->first;  // ours already (made before a restart)
        log_.info("-", "queue_kept", {{"queue", existing->first}, {"uri", uri}});
        break;
      }
      const std::string info = managed_info(printer_info(device, record_device_id(device)));
      auto put = cups_.put(name, uri, info);
      if (!put.ok()) {
        ++failures_;
        log_.error("-", "queue_failed", {{"queue", name}, {"uri", uri}, {"reason", put.error().describe()}});
        refused = true;
        continue;
      }
      (*queues)[name] = QueueInfo{uri, info, 0};
      kept_[key] = name;
      log_.info("-", "queue_created", {{"queue", name}, {"uri", uri}});
      break;
    }
    if (!refused && !kept_.contains(key)) {
      ++failures_;
      log_.error("-", "queue_failed", {{"uri", uri}, {"reason", "no free name from " + base}});
    }
  }
}

void QueueKeeper::on_gone(const std::string& dtu, const std::string& device, const std::string& reason) {
  if (reason != "detached" && reason != "no_longer_matches") return;  // it comes back: jobs wait
  std::optional<std::map<std::string, QueueInfo>> queues;             // asked once, when a queue needs it
  for (auto it = kept_.begin(); it != kept_.end();) {
    const auto& [key_dtu, key_device, unit] = it->first;
    if (key_dtu != dtu || key_device != device) {
      ++it;
      continue;
    }
    if (!queues) {
      auto listed = cups_.queues();
      if (!listed.ok()) {
        // Whether its jobs are done is unknown: left, and tidy() looks again.
        ++failures_;
        log_.error("-", "queue_failed",
                   {{"dtu", dtu}, {"device", device}, {"reason", listed.error().describe()}});
        queues.emplace();
      } else {
        queues = std::move(listed).value();
      }
    }
    const auto* queue = find_queue(*queues, it->second);
    if (queue == nullptr || queue->second.jobs > 0) {
      log_.info("-", "queue_left_for_jobs",
                {{"queue", it->second},
                 {"jobs", queue == nullptr ? std::string("unknown") : std::to_string(queue->second.jobs)},
                 {"dtu", dtu},
                 {"device", device},
                 {"reason", reason}});
      left_[it->first] = it->second;
      it = kept_.erase(it);
      continue;
    }
    auto removed = cups_.remove(it->second);
    if (removed.ok() || removed.error().code == common::Errc::not_found) {
      log_.info("-", "queue_removed",
                {{"queue", it->second}, {"dtu", dtu}, {"device", device}, {"reason", reason}});
    } else {
      ++failures_;
      log_.error("-", "queue_failed", {{"queue", it->second}, {"reason", removed.error().describe()}});
    }
    it = kept_.erase(it);
  }
}

bool QueueKeeper::tidy() {
  if (left_.empty()) return false;
  auto queues = cups_.queues();
  if (!queues.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"reason", queues.error().describe()}});
    return true;
  }
  for (auto it = left_.begin(); it != left_.end();) {
    const auto* queue = find_queue(*queues, it->second);
    if (queue != nullptr && queue->second.jobs > 0) {
      ++it;
      continue;
    }
    if (queue != nullptr) {
      auto removed = cups_.remove(it->second);
      if (!removed.ok() && removed.error().code != common::Errc::not_found) {
        ++failures_;
        log_.error("-", "queue_failed", {{"queue", it->second}, {"reason", removed.error().describe()}});
        ++it;
        continue;
      }
      log_.info("-", "queue_removed", {{"queue", it->second}, {"reason", "jobs_done"}});
    }
    it = left_.erase(it);
  }
  return !left_.empty();
}

std::size_t QueueKeeper::sweep(const std::set<std::string>& current_uris) {
  auto queues = cups_.queues();
  if (!queues.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"reason", queues.error().describe()}});
    return 0;
  }
  std::size_t removed = 0;
  for (const auto& [name, queue] : *queues) {
    if (!is_managed(queue) || current_uris.contains(queue.device_uri)) continue;
    if (session_queue_ && *session_queue_ == name) continue;
    if (queue.jobs > 0) {
      log_.info("-", "queue_left_for_jobs",
                {{"queue", name}, {"jobs", std::to_string(queue.jobs)}, {"uri", queue.device_uri}});
      continue;
    }
    auto r = cups_.remove(name);
    if (!r.ok()) {
      ++failures_;
      log_.error("-", "queue_failed", {{"queue", name}, {"reason", r.error().describe()}});
      continue;
    }
    log_.info("-", "queue_removed", {{"queue", name}, {"uri", queue.device_uri}, {"reason", "not_matched"}});
    ++removed;
    // clang before 16 cannot capture a structured binding: name it explicitly.
    std::erase_if(kept_, [&removed_name = name](const auto& entry) { return entry.second == removed_name; });
  }
  return removed;
}

bool QueueKeeper::point_session_queue(const std::string& name, const std::string& device_uri,
                                      const std::string& info) {
  session_queue_ = name;
  auto queues = cups_.queues();
  if (!queues.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"queue", name}, {"reason", queues.error().describe()}});
    return false;
  }
  const auto* existing = find_queue(*queues, name);
  if (existing != nullptr && !is_managed(existing->second)) {
    ++failures_;
    log_.error("-", "queue_failed",
               {{"queue", name}, {"reason", "an administrator's queue has that name; left alone"}});
    return false;
  }
  if (existing == nullptr || existing->second.device_uri != device_uri) {
    auto put = cups_.put(name, device_uri, managed_info(info));
    if (!put.ok()) {
      ++failures_;
      log_.error("-", "queue_failed",
                 {{"queue", name}, {"uri", device_uri}, {"reason", put.error().describe()}});
      return false;
    }
    log_.info("-", existing != nullptr ? "session_queue_moved" : "queue_created",
              {{"queue", name}, {"uri", device_uri}});
  }
  // Started in any case: stopped while the session was away, its jobs print at this desk now.
  auto resumed = cups_.resume(name);
  if (!resumed.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"queue", name}, {"reason", resumed.error().describe()}});
    return false;
  }
  return true;
}

bool QueueKeeper::stop_session_queue(const std::string& name, const std::string& message) {
  session_queue_ = name;
  auto queues = cups_.queues();
  if (!queues.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"queue", name}, {"reason", queues.error().describe()}});
    return false;
  }
  const auto* existing = find_queue(*queues, name);
  if (existing == nullptr) return true;
  if (!is_managed(existing->second)) {
    ++failures_;
    log_.error("-", "queue_failed",
               {{"queue", name}, {"reason", "an administrator's queue has that name; left alone"}});
    return false;
  }
  auto paused = cups_.pause(name, message);
  if (!paused.ok()) {
    ++failures_;
    log_.error("-", "queue_failed", {{"queue", name}, {"reason", paused.error().describe()}});
    return false;
  }
  log_.info("-", "session_queue_stopped", {{"queue", name}, {"uri", existing->second.device_uri}});
  return true;
}

}  // namespace dtu::services::print
