#pragma once
// CupsAdmin: the few CUPS administration requests dtu-print makes (IPP through libcups):
// list the queues, add or modify a raw queue, delete one. CupsAdmin is the interface (so the
// queue logic can be driven by a fake); IppCupsAdmin talks to a real scheduler.
//
// Thread: IppCupsAdmin blocks on each request (at most kIppTimeout) and is used from one thread,
// the daemon's io_context thread; the requests go to the local scheduler and answer in
// milliseconds, which the finder's events can afford to wait for.

#include <map>
#include <optional>
#include <string>

#include "dtu/common/result.hpp"

namespace dtu::services::print {

// A queue as the scheduler reports it.
struct QueueInfo {
  std::string device_uri;
  std::string info;  // printer-info
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
};

class IppCupsAdmin final : public CupsAdmin {
 public:
  // `server`: a scheduler address as CUPS_SERVER takes it ("/run/cups/cups.sock",
  // "host[:port]"); nullopt: libcups's default (CUPS_SERVER, client.conf, the local scheduler).
  explicit IppCupsAdmin(std::optional<std::string> server);

  common::Result<std::map<std::string, QueueInfo>> queues() override;
  common::Result<void> put(const std::string& name, const std::string& device_uri,
                           const std::string& info) override;
  common::Result<void> remove(const std::string& name) override;

  // The scheduler in use, for messages ("/run/cups/cups.sock", "localhost:631").
  std::string server() const;
};

}  // namespace dtu::services::print
