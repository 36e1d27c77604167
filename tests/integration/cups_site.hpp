// CupsSite: a private CUPS scheduler for integration tests — cupsd run as an ordinary child
// process (`cupsd -f -c <dir>/cupsd.conf -s <dir>/cups-files.conf`) with every directory it
// writes in its own TempDir, listening on a Unix socket there (and, when asked, on a loopback
// address), and the `dtu` backend this build made as the only backend it knows. The CUPS
// command-line tools (lpinfo, lpadmin, lp, lpstat) run against it with CUPS_SERVER=<socket>, so
// the kernel's peer credentials make the test (root) a local administrator.
//
// The backend runs as cupsd's `User` (lp), as it would on a real print server: the copy in
// <dir>/bin/backend/ is 0755 and owned by root (CUPS refuses a backend it considers unsafe and
// runs one readable by root alone as root). Everything on the way to the manager's socket must
// therefore be reachable by lp: open_to_lp() widens a directory, and managers are started with
// `--socket-mode 0666`.
//
// The configuration it writes is what docs/printing.md shows an administrator, plus the private
// paths: see write_config() in cups_site.cpp.
//
// Main test thread only; nothing here is thread-safe. The scheduler stops (SIGTERM, bounded
// wait) when the CupsSite dies; when the running test has failed, the end of cupsd's error_log is
// printed first.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

#include "harness.hpp"

namespace dtu::testing {

// How long a CUPS tool or request may take against a healthy private scheduler.
inline constexpr std::chrono::milliseconds kCupsDeadline{15000};

// The `dtu` CUPS backend and dtu-print as this build made them (DTU_BINARY_DIR, or the
// environment variable of that name). Throws std::runtime_error when not built.
std::filesystem::path cups_backend_path();
std::filesystem::path dtu_print_path();

// Whether `got_hex` (hex, as `dtu-simctl captured` shows a printer's bytes) is exactly the bytes
// `expected`. When not, *why says both lengths and the first differing byte offset, never the
// data (a job is megabytes: a doctest CHECK of the two strings would print all of them).
bool same_bytes(const std::string& got_hex, const std::string& expected, std::string* why);

// Adds search (x) permission for everyone to `dir`, so the lp user can reach a socket inside it.
void open_to_lp(const std::filesystem::path& dir);

class CupsSite {
 public:
  struct Options {
    // What the backend is told: SetEnv DTUBROKER_SOCKET <manager_socket> (cups-files.conf).
    std::filesystem::path manager_socket;
    // Also `Listen <listen>` (e.g. "127.0.0.150:6310") when not empty.
    std::string listen;
  };

  // Writes the configuration, starts cupsd and waits (kCupsDeadline) until it answers on its
  // socket. Throws std::runtime_error naming what failed (with the error_log's end).
  explicit CupsSite(Options options);
  ~CupsSite();
  CupsSite(const CupsSite&) = delete;
  CupsSite& operator=(const CupsSite&) = delete;

  const std::filesystem::path& dir() const { return dir_.path(); }
  // The scheduler's Unix socket: the value of CUPS_SERVER for its clients.
  std::filesystem::path socket() const { return dir_ / "cups.sock"; }
  Environment env() const { return {{"CUPS_SERVER", socket().string()}}; }
  // What cupsd has written to its error_log so far (it buffers: complete once it has stopped).
  std::string error_log() const;

  // Runs a CUPS tool (argv[0] looked up in PATH) against this scheduler.
  CommandResult run(std::vector<std::string> argv, std::chrono::milliseconds deadline = kCupsDeadline) const;
  // `lp -d queue file`; the job id CUPS gave it, or nullopt (with the tool's message in *why).
  std::optional<int> print(const std::string& queue, const std::filesystem::path& file,
                           std::string* why = nullptr) const;

  // A job as IPP Get-Job-Attributes tells it: job-state as its keyword ("pending", "held",
  // "processing", "stopped", "canceled", "aborted", "completed"; "unknown" when the scheduler
  // does not answer) and job-state-reasons joined with ','.
  struct Job {
    std::string state;
    std::string reasons;
  };
  Job job(int id) const;
  // Waits until job `id` is in `state`; false at the deadline or as soon as it ends in another
  // final state (canceled, aborted, completed). The last state seen goes to *last.
  bool wait_job(int id, const std::string& state, std::chrono::milliseconds deadline,
                Job* last = nullptr) const;

  // The processes running this scheduler's `dtu` backend now (found by their executable).
  std::vector<pid_t> backend_pids() const;

  // A queue as CUPS-Get-Printers tells it.
  struct Queue {
    std::string device_uri;
    std::string info;           // printer-info
    std::string state;          // "idle", "processing", "stopped"
    std::string state_message;  // printer-state-message (the backend's STATE/INFO lines)
    bool accepting = false;
  };
  // Every queue by name; empty when the scheduler does not answer.
  std::map<std::string, Queue> queues() const;

 private:
  void write_config(const Options& options) const;

  TempDir dir_;
  std::unique_ptr<Process> cupsd_;
};

}  // namespace dtu::testing
