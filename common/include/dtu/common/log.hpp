#pragma once
// Structured one-line logging to stderr: `level component peer event key=value…`.
// A line is written with one write(2), so lines from threads never interleave. Thread-safe.
//
//   Logger log("devmgr");
//   log.info("127.0.0.3:4711", "dtu_connected", {{"dtu", id}, {"devices", n}});
//
// Values containing spaces, quotes or '=' are quoted with backslash escapes. The peer is "-"
// when there is none. A UTC timestamp leads the line unless stderr goes to journald
// (JOURNAL_STREAM is set), which stamps lines itself.

#include <concepts>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <system_error>

namespace dtu::common {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

// One key=value pair; the value is rendered to text at construction.
struct LogField {
  std::string key;
  std::string value;

  LogField(std::string k, std::string v) : key(std::move(k)), value(std::move(v)) {}
  LogField(std::string k, std::string_view v) : key(std::move(k)), value(v) {}
  LogField(std::string k, const char* v) : key(std::move(k)), value(v ? v : "") {}
  LogField(std::string k, bool v) : key(std::move(k)), value(v ? "true" : "false") {}
  template <std::integral I>
  LogField(std::string k, I v) : key(std::move(k)), value(std::to_string(v)) {}
  LogField(std::string k, double v);
  LogField(std::string k, const std::error_code& ec) : key(std::move(k)), value(ec.message()) {}
};

class Logger {
 public:
  explicit Logger(std::string component) : component_(std::move(component)) {}

  void debug(std::string_view peer, std::string_view event, std::initializer_list<LogField> fields = {}) const {
    write(LogLevel::debug, peer, event, fields);
  }
  void info(std::string_view peer, std::string_view event, std::initializer_list<LogField> fields = {}) const {
    write(LogLevel::info, peer, event, fields);
  }
  void warn(std::string_view peer, std::string_view event, std::initializer_list<LogField> fields = {}) const {
    write(LogLevel::warn, peer, event, fields);
  }
  void error(std::string_view peer, std::string_view event, std::initializer_list<LogField> fields = {}) const {
    write(LogLevel::error, peer, event, fields);
  }
  void write(LogLevel level, std::string_view peer, std::string_view event,
             std::initializer_list<LogField> fields) const;

  const std::string& component() const { return component_; }

 private:
  std::string component_;
};

// Formats one line without the timestamp and the trailing newline (exposed for tests).
std::string format_log_line(LogLevel level, std::string_view component, std::string_view peer,
                            std::string_view event, std::initializer_list<LogField> fields);

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "debug" | "info" | "warn" | "error"; false when unknown.
bool parse_log_level(std::string_view text, LogLevel& out);
// Parses and sets the level; false when `text` is not a level (the level stays).
bool set_log_level(std::string_view text);

// Replaces the sink (default: stderr) — for tests. Pass nullptr to restore stderr.
void set_log_sink(std::function<void(std::string_view line)> sink);

}  // namespace dtu::common
