#pragma once
// QueueKeeper: what dtu-print does with a printer finder's events — one raw CUPS queue per
// matched printer unit, on the `dtu` backend's URI for it (services/printer_uri.hpp), and
// optionally one "session queue" that follows a user's session to the DTU it sits at.
//
//  - matched / changed: the unit's queue exists (created when missing; an existing queue of
//    ours on the same URI is adopted, so a restart creates nothing twice).
//  - gone detached / no_longer_matches: the device's queues are deleted — but a queue that still
//    has jobs (pending, held, processing) is left (queue_left_for_jobs): CUPS would cancel them
//    with the queue, and a reseated cable must not lose them. The backend stops such a queue when
//    it finds the printer gone; the printer matched again restarts it (its jobs print), and
//    tidy() deletes it once its jobs are gone (printed elsewhere, cancelled). dtu_lost, resync
//    and session_moved keep the queues (the DTU comes back, jobs wait in the queue meanwhile).
//  - Only queues dtu-print made are ever modified or deleted: they carry kManagedMarker at the
//    end of their printer-info. A name taken by another queue gets a suffix (-2, -3, …).
//  - sweep(): deletes our queues whose URI no printer matches now and that have no jobs
//    (dtu-print --once).
//
// Each queue created or removed is logged as one line (queue_created / queue_removed), failures
// as queue_failed; CUPS being away is not fatal: the next event tries again.
//
// Thread: the daemon's io_context thread; not thread-safe.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "cups_admin.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/records.hpp"

namespace dtu::services::print {

// Ends the printer-info of every queue dtu-print made: how it recognises its own queues.
inline constexpr std::string_view kManagedMarker = "[dtu-print]";
// Longest CUPS queue name (CUPS refuses 128 characters and more).
inline constexpr std::size_t kMaxQueueName = 127;
// How many suffixes (-2 … -N) are tried when a name is taken.
inline constexpr int kMaxNameSuffix = 99;

// A queue name from `text` under CUPS's rules: letters, digits, '-', '_' and '.' kept, every
// other byte (blank, '/', '#', '@', quotes, control characters, non-ASCII) becomes '-', at most
// kMaxQueueName characters. "dtu-" for an empty `text` is the caller's business.
std::string sanitise_queue_name(std::string_view text);
// The queue name for printer unit `unit` of `device`: prefix + serial (else DTU id + '-' + port
// path), + "-u<unit>" when `unit` is not the device's lowest matched printer unit `first_unit`.
std::string queue_name_for(std::string_view prefix, const common::DeviceRecord& device, std::uint32_t unit,
                           std::uint32_t first_unit);
bool is_managed(const QueueInfo& queue);

class QueueKeeper {
 public:
  QueueKeeper(CupsAdmin& cups, std::string prefix, const common::Logger& log);

  void on_matched(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units);
  void on_changed(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units);
  void on_gone(const std::string& dtu, const std::string& device, const std::string& reason);
  // Deletes every queue of ours whose device URI is none of `current_uris` (except the session
  // queue, and queues that still have jobs). Returns how many it deleted.
  std::size_t sweep(const std::set<std::string>& current_uris);
  // Deletes the queues left for their jobs (on_gone) that have none now. True while some are
  // still left (the caller asks again later).
  bool tidy();
  bool has_left_queues() const { return !left_.empty(); }

  // The session queue `name` points at `device_uri` (created when missing) and is started.
  // Refused (logged, false) when `name` is an administrator's own queue.
  bool point_session_queue(const std::string& name, const std::string& device_uri, const std::string& info);
  // The session has no printer: the session queue `name` is stopped with printer-state-message
  // `message`, so that no job goes to the printer of the desk the user left; jobs wait in it. True
  // when stopped, or when there is no such queue yet.
  bool stop_session_queue(const std::string& name, const std::string& message);

  // The queue of each unit we keep, by (dtu, device, unit).
  using UnitKey = std::tuple<std::string, std::string, std::uint32_t>;
  const std::map<UnitKey, std::string>& kept() const { return kept_; }
  // How many CUPS requests failed so far (each was logged as queue_failed).
  std::size_t failures() const { return failures_; }

 private:
  void ensure(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units);

  CupsAdmin& cups_;
  std::string prefix_;
  const common::Logger& log_;
  std::map<UnitKey, std::string> kept_;
  std::map<UnitKey, std::string> left_;  // gone, but left for their jobs
  std::optional<std::string> session_queue_;
  std::size_t failures_ = 0;
};

}  // namespace dtu::services::print
