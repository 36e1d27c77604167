#pragma once
// CupsAdmin: the few CUPS administration requests dtu-print makes (IPP through libcups):
// list the queues, add or modify a raw queue, delete one, stop (pause) and restart one.
// CupsAdmin is the interface (so the queue logic can be driven by a fake); IppCupsAdmin talks to
// a real scheduler.
//
// Thread: IppCupsAdmin blocks on each request (connecting and answering each at most
// kIppTimeout: a scheduler that hangs fails the request with Errc::unavailable instead of
// blocking the caller) and is used from one thread, the daemon's io_context thread; the requests
// go to the local scheduler and answer in milliseconds, which the finder's events can afford to
// wait for.

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>

#include <cups/cups.h>

#include "dtu/common/result.hpp"

namespace dtu::services::print {

// The longest one CUPS request may take (connecting, then each wait for the scheduler's data).
inline constexpr std::chrono::milliseconds kIppTimeout{10000};

// A queue as the scheduler reports it.
struct QueueInfo {
  std::string device_uri;
  std::string info;      // printer-info
  std::size_t jobs = 0;  // queued-job-count: jobs not ended yet (pending, held, processing)
};

class CupsAdmin {
 public:
  virtual ~CupsAdmin() = default;
  // Every queue by name (CUPS-Get-Printers). Errc::unavailable when the scheduler does not answer.
  virtual common::Result<std::map<std::string, QueueInfo>> queues() = 0;
  // Creates queue `name`, or modifies it, as a raw queue (no PPD) on `device_uri` with
  // printer-info `info`, accepting jobs and enabled (CUPS-Add-Modify-Printer).
  virtual common::Result<void> put(const std::string& name, const std::string& device_uri,
                                   const std::string& info) = 0;
  // Deletes queue `name` (CUPS-Delete-Printer); its pending jobs are cancelled by CUPS.
  virtual common::Result<void> remove(const std::string& name) = 0;
  // Stops queue `name` (Pause-Printer) with printer-state-message `message`: it keeps accepting
  // jobs, which wait in it until resume().
  virtual common::Result<void> pause(const std::string& name, const std::string& message) = 0;
  // Starts queue `name` again (Resume-Printer): its waiting jobs print.
  virtual common::Result<void> resume(const std::string& name) = 0;
};

class IppCupsAdmin final : public CupsAdmin {
 public:
  // `server`: a scheduler address as CUPS_SERVER takes it ("/run/cups/cups.sock",
  // "host[:port]"); nullopt: libcups's default (CUPS_SERVER, client.conf, the local scheduler).
  explicit IppCupsAdmin(std::optional<std::string> server);
  ~IppCupsAdmin() override;
  IppCupsAdmin(const IppCupsAdmin&) = delete;
  IppCupsAdmin& operator=(const IppCupsAdmin&) = delete;

  common::Result<std::map<std::string, QueueInfo>> queues() override;
  common::Result<void> put(const std::string& name, const std::string& device_uri,
                           const std::string& info) override;
  common::Result<void> remove(const std::string& name) override;
  common::Result<void> pause(const std::string& name, const std::string& message) override;
  common::Result<void> resume(const std::string& name) override;

  // The scheduler in use, for messages ("/run/cups/cups.sock", "localhost:631").
  std::string server() const;

 private:
  // Sends `request` (consumed) on our connection (made here, and made again after a failure);
  // the response (to ippDelete) or an error naming `what` and CUPS's reason.
  common::Result<ipp_t*> call(ipp_t* request, const std::string& what);
  void disconnect();

  http_t* http_ = nullptr;
};

}  // namespace dtu::services::print
