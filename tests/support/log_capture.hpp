// LogCapture: collects every log line written while it lives (common::set_log_sink), for tests
// that assert what an operator would read in the log. Thread-safe (the libusb thread logs too).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/log.hpp"

namespace dtu::testing {

class LogCapture {
 public:
  LogCapture() {
    common::set_log_sink([this](std::string_view line) {
      std::lock_guard lock(mutex_);
      lines_.emplace_back(line);
    });
  }
  ~LogCapture() { common::set_log_sink(nullptr); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // How many lines contain every one of `words`.
  std::size_t count(std::initializer_list<std::string_view> words) const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& line : lines_) n += contains_all(line, words) ? 1U : 0U;
    return n;
  }
  // Whether one line contains every one of `words`.
  bool has(std::initializer_list<std::string_view> words) const { return count(words) > 0; }
  // Every line so far, for failure messages.
  std::string text() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& line : lines_) out += line + "\n";
    return out;
  }

 private:
  static bool contains_all(const std::string& line, std::initializer_list<std::string_view> words) {
    for (auto word : words) {
      if (line.find(word) == std::string::npos) return false;
    }
    return true;
  }

  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

}  // namespace dtu::testing
