#pragma once
// The `dtu` CUPS backend's messages to cupsd (backend(7)): one line per message on stderr, with
// the prefix cupsd acts on (ERROR:, INFO:, DEBUG:, STATE:). Main thread only.

#include <iostream>
#include <string_view>

namespace dtu::services::cups {

// Writes "<prefix> <text>\n" to stderr and flushes (cupsd reads the pipe as it comes).
inline void emit(std::string_view prefix, std::string_view text) {
  std::cerr << prefix << ' ' << text << '\n' << std::flush;
}
inline void error(std::string_view text) {
  emit("ERROR:", text);
}
inline void info(std::string_view text) {
  emit("INFO:", text);
}
inline void debug(std::string_view text) {
  emit("DEBUG:", text);
}
// "STATE: +reason" / "STATE: -reason": sets or clears a printer-state-reasons keyword.
inline void state_reason(std::string_view change) {
  emit("STATE:", change);
}

// The printer-state-reason shown while the backend waits for the manager or the printer.
inline constexpr std::string_view kConnectingReason = "connecting-to-device";

}  // namespace dtu::services::cups
