#include "dtu/common/log.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "dtu/common/errors.hpp"

namespace dtu::common {
namespace {

bool ends_with(std::string_view text, std::string_view tail) {
  return text.size() >= tail.size() && text.substr(text.size() - tail.size()) == tail;
}

// Captures log lines for the lifetime of the object and restores stderr and the level after.
class CapturedLog {
 public:
  CapturedLog() : saved_level_(log_level()) {
    set_log_sink([this](std::string_view line) { lines.emplace_back(line); });
  }
  ~CapturedLog() {
    set_log_sink(nullptr);
    set_log_level(saved_level_);
  }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  std::vector<std::string> lines;

 private:
  LogLevel saved_level_;
};

TEST_CASE("format_log_line renders level, component, peer, event and fields in order") {
  CHECK(format_log_line(LogLevel::info, "devmgr", "127.0.0.3:4711", "dtu_connected",
                        {{"dtu", "dtu-7"}, {"devices", 3}}) ==
        "info devmgr 127.0.0.3:4711 dtu_connected dtu=dtu-7 devices=3");
  CHECK(format_log_line(LogLevel::warn, "agent", "mgr-a", "reconnect", {}) == "warn agent mgr-a reconnect");
  CHECK(format_log_line(LogLevel::debug, "c", "p", "e", {}) == "debug c p e");
  CHECK(format_log_line(LogLevel::error, "c", "p", "e", {}) == "error c p e");
}

TEST_CASE("format_log_line writes - for an empty peer") {
  CHECK(format_log_line(LogLevel::info, "devmgr", "", "started", {{"id", "mgr-a"}}) ==
        "info devmgr - started id=mgr-a");
}

TEST_CASE("format_log_line quotes a value with spaces") {
  CHECK(format_log_line(LogLevel::info, "c", "-", "e", {{"reason", "peer went away"}}) ==
        R"(info c - e reason="peer went away")");
}

TEST_CASE("format_log_line escapes quotes and backslashes inside a quoted value") {
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"product", R"(ET "2750")"}}) ==
        R"(info c p e product="ET \"2750\"")");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"path", R"(C:\x)"}}) ==
        R"(info c p e path="C:\\x")");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"q", "\""}}) == R"(info c p e q="\"")");
}

TEST_CASE("format_log_line quotes a value containing =, so a value cannot forge a field") {
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"name", "a=b"}}) == R"(info c p e name="a=b")");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"name", "x admin=true"}}) ==
        R"(info c p e name="x admin=true")");
}

TEST_CASE("format_log_line escapes newlines and control characters, so a value cannot forge a line") {
  const std::string line =
      format_log_line(LogLevel::info, "c", "p", "e", {{"reason", "one\nerror devmgr - forged"}});
  CHECK(line == R"(info c p e reason="one\nerror devmgr - forged")");
  CHECK(line.find('\n') == std::string::npos);
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"v", "a\rb\tc"}}) == R"(info c p e v="a\rb\tc")");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e",
                        {{"v", std::string("a\x01"
                                           "b\x1f",
                                           4)}}) == R"(info c p e v="a\x01b\x1f")");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"v", std::string("a\0b", 3)}}) ==
        R"(info c p e v="a\x00b")");
}

TEST_CASE("format_log_line quotes an empty value") {
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"serial", ""}}) == R"(info c p e serial="")");
  const char* null_text = nullptr;
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"serial", null_text}}) == R"(info c p e serial="")");
}

TEST_CASE("format_log_line quotes a peer that needs it") {
  CHECK(format_log_line(LogLevel::info, "c", "unix:pid=4,uid=0", "e", {}) ==
        R"(info c "unix:pid=4,uid=0" e)");
  CHECK(format_log_line(LogLevel::info, "c", "evil\npeer", "e", {}) == R"(info c "evil\npeer" e)");
}

TEST_CASE("format_log_line leaves plain values and UTF-8 unquoted") {
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"path", "/run/dtubroker/devmgr.sock"}}) ==
        "info c p e path=/run/dtubroker/devmgr.sock");
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"name", "Caf\xc3\xa9"}}) ==
        "info c p e name=Caf\xc3\xa9");
}

TEST_CASE("LogField renders integers, booleans, doubles and error codes as text") {
  const std::error_code timeout = make_error_code(Errc::timeout);
  CHECK(
      format_log_line(LogLevel::info, "c", "p", "e",
                      {{"n", std::int64_t{-5}},
                       {"u", std::uint16_t{0x04b8}},
                       {"big", std::uint64_t{18446744073709551615u}},
                       {"yes", true},
                       {"no", false},
                       {"ratio", 0.25},
                       {"ec", timeout}}) ==
      R"(info c p e n=-5 u=1208 big=18446744073709551615 yes=true no=false ratio=0.25 ec="deadline passed")");
  std::string owned = "mgr-a";
  std::string_view view = owned;
  CHECK(format_log_line(LogLevel::info, "c", "p", "e", {{"s", owned}, {"v", view}}) ==
        "info c p e s=mgr-a v=mgr-a");
}

TEST_CASE("set_log_sink captures each line once, without a trailing newline") {
  CapturedLog captured;
  set_log_level(LogLevel::debug);
  const Logger log("devmgr");
  CHECK(log.component() == "devmgr");
  log.info("127.0.0.3:4711", "dtu_connected", {{"dtu", "dtu-7"}});
  log.warn("", "slow_peer", {{"queued", 10}});
  REQUIRE(captured.lines.size() == 2);
  CHECK(ends_with(captured.lines[0], "info devmgr 127.0.0.3:4711 dtu_connected dtu=dtu-7"));
  CHECK(ends_with(captured.lines[1], "warn devmgr - slow_peer queued=10"));
  for (const auto& line : captured.lines) CHECK(line.find('\n') == std::string::npos);
}

TEST_CASE("Logger lines carry a UTC timestamp unless journald stamps them") {
  CapturedLog captured;
  set_log_level(LogLevel::info);
  Logger("c").info("p", "e");
  REQUIRE(captured.lines.size() == 1);
  const std::string& line = captured.lines[0];
  if (std::getenv("JOURNAL_STREAM") != nullptr) {
    CHECK(line == "info c p e");
  } else {
    // 2026-01-01T00:00:00.000Z info c p e
    REQUIRE(line.size() == 25 + std::string("info c p e").size());
    CHECK(line[4] == '-');
    CHECK(line[10] == 'T');
    CHECK(line[19] == '.');
    CHECK(line[23] == 'Z');
    CHECK(line[24] == ' ');
    CHECK(ends_with(line, " info c p e"));
  }
}

TEST_CASE("Logger drops lines below the log level") {
  CapturedLog captured;
  const Logger log("c");
  set_log_level(LogLevel::warn);
  CHECK(log_level() == LogLevel::warn);
  log.debug("p", "d");
  log.info("p", "i");
  log.warn("p", "w");
  log.error("p", "e");
  REQUIRE(captured.lines.size() == 2);
  CHECK(ends_with(captured.lines[0], "warn c p w"));
  CHECK(ends_with(captured.lines[1], "error c p e"));

  set_log_level(LogLevel::debug);
  log.debug("p", "d");
  REQUIRE(captured.lines.size() == 3);
  CHECK(ends_with(captured.lines[2], "debug c p d"));

  set_log_level(LogLevel::error);
  log.write(LogLevel::warn, "p", "w", {});
  CHECK(captured.lines.size() == 3);
}

TEST_CASE("set_log_sink replaces the previous sink") {
  const LogLevel saved = log_level();
  set_log_level(LogLevel::info);
  std::vector<std::string> first;
  std::vector<std::string> second;
  set_log_sink([&](std::string_view line) { first.emplace_back(line); });
  Logger("c").info("p", "one");
  set_log_sink([&](std::string_view line) { second.emplace_back(line); });
  Logger("c").info("p", "two");
  set_log_sink(nullptr);
  set_log_level(saved);
  REQUIRE(first.size() == 1);
  CHECK(ends_with(first[0], "info c p one"));
  REQUIRE(second.size() == 1);
  CHECK(ends_with(second[0], "info c p two"));
}

TEST_CASE("parse_log_level reads the four level names and nothing else") {
  LogLevel level = LogLevel::error;
  CHECK(parse_log_level("debug", level));
  CHECK(level == LogLevel::debug);
  CHECK(parse_log_level("info", level));
  CHECK(level == LogLevel::info);
  CHECK(parse_log_level("warn", level));
  CHECK(level == LogLevel::warn);
  CHECK(parse_log_level("error", level));
  CHECK(level == LogLevel::error);
  for (std::string_view bad : {"", "INFO", "warning", "trace", "info "}) {
    CAPTURE(bad);
    level = LogLevel::debug;
    CHECK_FALSE(parse_log_level(bad, level));
    CHECK(level == LogLevel::debug);
  }
}

}  // namespace
}  // namespace dtu::common
