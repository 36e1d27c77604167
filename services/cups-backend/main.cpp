// dtu: the CUPS backend of dtubroker (backend(7)); CUPS runs it as <ServerBin>/backend/dtu.
//   dtu                                             list the group's DTU printers (lpinfo -v)
//   dtu job-id user title copies options [file]     print a job to the queue's dtu:// printer
// The device URI comes from $DEVICE_URI (else argv[0]); the manager's socket from
// $DTUBROKER_SOCKET (cups-files.conf: SetEnv DTUBROKER_SOCKET …; CUPS 2.4 ignores it in
// cupsd.conf), else the default.
// URI format: services/include/dtu/services/printer_uri.hpp; behaviour: print_job.hpp.
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include <cups/backend.h>
#include <asio.hpp>

#include "backend_messages.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/log.hpp"
#include "dtu/services/manager_client.hpp"
#include "listing.hpp"
#include "print_job.hpp"

namespace {

using namespace dtu::services::cups;

// argv[0] is the device URI when cupsd runs us without DEVICE_URI (older schedulers).
std::string device_uri(const char* argv0) {
  if (const char* env = std::getenv("DEVICE_URI"); env != nullptr && *env != '\0') return env;
  return argv0;
}

std::optional<int> parse_copies(std::string_view text) {
  int copies = 0;
  for (const char c : text) {
    if (c < '0' || c > '9' || copies > 100000) return std::nullopt;
    copies = copies * 10 + (c - '0');
  }
  if (text.empty() || copies < 1) return std::nullopt;
  return copies;
}

asio::awaitable<void> store_status(asio::awaitable<int> task, int& status) {
  status = co_await std::move(task);
}

asio::awaitable<void> print(PrintJob& job, asio::signal_set& signals, int& status) {
  auto op = job.run();
  status = co_await std::move(op);
  signals.cancel();
}

int run_listing() {
  asio::io_context io;
  int status = CUPS_BACKEND_OK;
  dtu::common::spawn(io.get_executor(),
                     store_status(list_printers(dtu::services::default_socket_path()), status),
                     dtu::common::Logger("cups-dtu-backend"), "listing");
  io.run();
  return status;
}

int run_job(JobRequest request) {
  asio::io_context io;
  PrintJob job(io.get_executor(), std::move(request));
  // cupsd cancels a job with SIGTERM: the job drops its lease and ends with CUPS_BACKEND_OK.
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&job](const asio::error_code& ec, int) {
    if (!ec) job.cancel();
  });
  int status = CUPS_BACKEND_FAILED;
  dtu::common::spawn(io.get_executor(), print(job, signals, status), dtu::common::Logger("cups-dtu-backend"),
                     "job");
  io.run();
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // cupsd closing fd 3 or 4 must not kill the job
  if (argc == 1) return run_listing();
  // backend(7): cupsd passes no arguments (list) or 5–6 (a job), never one; a lone --help or -h
  // comes from an operator, who gets the usage on stdout and status 0.
  const bool help = argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h");
  if (help || (argc != 6 && argc != 7)) {
    std::ostream& out = help ? std::cout : std::cerr;
    out << "Usage: " << argv[0] << " job-id user title copies options [file]\n"
        << "       " << argv[0] << "   (no arguments: list the DTU printers of the group)\n"
        << "The CUPS backend for printers on DTUs (dtu-cups-backend(7)): cupsd runs it with DEVICE_URI\n"
        << "set to dtu://DTU/DEVICE/UNIT; DTUBROKER_SOCKET names the manager's socket (default\n"
        << "/run/dtubroker/devmgr.sock).\n";
    return help ? CUPS_BACKEND_OK : CUPS_BACKEND_FAILED;
  }
  JobRequest request;
  request.socket = dtu::services::default_socket_path();
  request.uri = device_uri(argv[0]);
  request.job_id = argv[1];
  request.user = argv[2];
  request.title = argv[3];
  const auto copies = parse_copies(argv[4]);
  if (!copies) {
    error(std::string("dtu: bad number of copies '") + argv[4] + "' (expected a positive integer)");
    return CUPS_BACKEND_FAILED;
  }
  request.copies = *copies;
  if (argc == 7) request.file = argv[6];
  return run_job(std::move(request));
}
