#pragma once
// The exit codes the long-running services share (dtu-print, dtu-sample-service), so scripts and
// systemd units read them the same way; their man pages list them. devmgrctl and dtu-unit use the
// same numbers for the same meanings and add their own above 3.

namespace dtu::services {

inline constexpr int kExitDone = 0;         // finished, or stopped by SIGINT / SIGTERM
inline constexpr int kExitFailed = 1;       // the work failed (the message says why)
inline constexpr int kExitUsage = 2;        // bad command line or configuration
inline constexpr int kExitUnreachable = 3;  // the manager could not be reached

}  // namespace dtu::services
