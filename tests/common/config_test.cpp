#include "dtu/common/config.hpp"

#include <doctest/doctest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string_view>

#include "support/temp_dir.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

using TempDir = dtu::testing::UnitTempDir;

ConfigReader reader(std::string_view text) {
  return ConfigReader(json::parse(text), "devmgr.json");
}

TEST_CASE("ConfigReader load reads a JSON object from a file") {
  const TempDir dir;
  const std::string path = dir.write("devmgr.json", R"({"name": "m1", "heartbeat_ms": 1000})");
  auto cfg = ConfigReader::load(path);
  REQUIRE(cfg.ok());
  CHECK(cfg->origin() == path);
  std::string name;
  int64_t heartbeat = 0;
  cfg->read("name", name);
  cfg->read_int("heartbeat_ms", heartbeat, 100, 60000);
  CHECK(cfg->ok());
  CHECK(name == "m1");
  CHECK(heartbeat == 1000);
}

TEST_CASE("ConfigReader load of a missing file names the path and the system error") {
  const TempDir dir;
  const std::string path = dir.path("absent.json");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == Errc::config_error);
  CHECK(cfg.error().detail == path + ": cannot read: No such file or directory");
}

TEST_CASE("ConfigReader load of a directory reports that it cannot read it") {
  const TempDir dir;
  const std::string path = dir.path("");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().detail == path + ": cannot read: Is a directory");
}

TEST_CASE("ConfigReader load of invalid JSON names the line and column") {
  const TempDir dir;
  const std::string path = dir.write("bad.json", "{\n  \"a\": 1,\n  \"b\" 2\n}\n");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == Errc::config_error);
  INFO(cfg.error().detail);
  CHECK(cfg.error().detail.starts_with(path + ":3:7: invalid JSON: "));
  CHECK(contains(cfg.error().detail, "expected ':'"));
  CHECK_FALSE(contains(cfg.error().detail, "json.exception"));
}

TEST_CASE("ConfigReader load of a truncated file points at the end of input") {
  const TempDir dir;
  const std::string path = dir.write("cut.json", "{\"a\": [1,\n");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  INFO(cfg.error().detail);
  CHECK(cfg.error().detail.starts_with(path + ":2:1: invalid JSON: "));
  CHECK(contains(cfg.error().detail, "unexpected end of input"));
}

TEST_CASE("ConfigReader load of an empty file is invalid JSON at 1:1") {
  const TempDir dir;
  const std::string path = dir.write("empty.json", "");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().detail.starts_with(path + ":1:1: invalid JSON: "));
}

TEST_CASE("ConfigReader load requires an object at the top level") {
  const TempDir dir;
  const std::string path = dir.write("array.json", "[1, 2]");
  const auto cfg = ConfigReader::load(path);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == Errc::config_error);
  CHECK(cfg.error().detail == path + ": top level must be a JSON object, got array");
}

TEST_CASE("ConfigReader absent keys leave the defaults") {
  auto cfg = reader("{}");
  bool flag = true;
  std::string text = "default";
  std::vector<std::string> list{"a"};
  double ratio = 0.5;
  milliseconds interval(1000);
  int64_t count = 3;
  uint16_t port = 4711;
  cfg.read("flag", flag);
  cfg.read("text", text);
  cfg.read("list", list);
  cfg.read("ratio", ratio);
  cfg.read("interval", interval);
  cfg.read_int("count", count, 0, 10);
  cfg.read_int("port", port);
  cfg.read("tls.key_file", text);
  cfg.reject_unknown_keys();
  CHECK(cfg.ok());
  CHECK(flag);
  CHECK(text == "default");
  CHECK(list == std::vector<std::string>{"a"});
  CHECK(ratio == 0.5);
  CHECK(interval == milliseconds(1000));
  CHECK(count == 3);
  CHECK(port == 4711);
}

TEST_CASE("ConfigReader reads every supported type") {
  auto cfg = reader(R"({"flag": false, "text": "x", "list": ["a", "b"], "ratio": 2,
                        "interval": "2m", "count": -4, "port": 443})");
  bool flag = true;
  std::string text;
  std::vector<std::string> list;
  double ratio = 0;
  milliseconds interval(0);
  int64_t count = 0;
  uint16_t port = 0;
  cfg.read("flag", flag);
  cfg.read("text", text);
  cfg.read("list", list);
  cfg.read("ratio", ratio);
  cfg.read("interval", interval);
  cfg.read_int("count", count, -10, 10);
  cfg.read_int("port", port, 1);
  cfg.reject_unknown_keys();
  CHECK(cfg.ok());
  CHECK_FALSE(flag);
  CHECK(text == "x");
  CHECK(list == std::vector<std::string>{"a", "b"});
  CHECK(ratio == 2.0);
  CHECK(interval == milliseconds(120000));
  CHECK(count == -4);
  CHECK(port == 443);
}

TEST_CASE("ConfigReader integer errors name the file, the key and the range") {
  auto cfg = reader(R"({"heartbeat_ms": "fast", "missed": 70000, "retries": 1.5})");
  int64_t heartbeat = 1000;
  int64_t missed = 3;
  int64_t retries = 2;
  cfg.read_int("heartbeat_ms", heartbeat, 100, 60000);
  cfg.read_int("missed", missed, 1, 100);
  cfg.read_int("retries", retries, 0, 10);
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().code == Errc::config_error);
  CHECK(cfg.error().detail ==
        "devmgr.json: key 'heartbeat_ms': expected an integer in [100, 60000], got \"fast\"; "
        "devmgr.json: key 'missed': expected an integer in [1, 100], got 70000; "
        "devmgr.json: key 'retries': expected an integer in [0, 10], got 1.5");
  CHECK(heartbeat == 1000);
  CHECK(missed == 3);
  CHECK(retries == 2);
}

TEST_CASE("ConfigReader port errors name the port range") {
  auto cfg = reader(R"({"port": 70000, "admin_port": 0})");
  uint16_t port = 4711;
  uint16_t admin_port = 9;
  cfg.read_int("port", port);
  cfg.read_int("admin_port", admin_port, 1);
  CHECK(port == 4711);
  CHECK(admin_port == 9);
  CHECK(cfg.error().detail ==
        "devmgr.json: key 'port': expected an integer in [0, 65535], got 70000; "
        "devmgr.json: key 'admin_port': expected an integer in [1, 65535], got 0");
}

TEST_CASE("ConfigReader errors for the other types say what was expected") {
  auto cfg = reader(R"({"flag": "yes", "text": 5, "list": "a", "peers": ["a", 5], "ratio": "1",
                        "interval": "fast"})");
  bool flag = false;
  std::string text;
  std::vector<std::string> list;
  std::vector<std::string> peers{"default"};
  double ratio = 0;
  milliseconds interval(7);
  cfg.read("flag", flag);
  cfg.read("text", text);
  cfg.read("list", list);
  cfg.read("peers", peers);
  cfg.read("ratio", ratio);
  cfg.read("interval", interval);
  const std::string detail = cfg.error().detail;
  CHECK(contains(detail, "devmgr.json: key 'flag': expected true or false, got \"yes\""));
  CHECK(contains(detail, "devmgr.json: key 'text': expected a string, got 5"));
  CHECK(contains(detail, "devmgr.json: key 'list': expected an array of strings, got \"a\""));
  CHECK(contains(detail, "devmgr.json: key 'peers[1]': expected a string, got 5"));
  CHECK(contains(detail, "devmgr.json: key 'ratio': expected a number, got \"1\""));
  CHECK(contains(detail,
                 "devmgr.json: key 'interval': expected a duration (integer milliseconds or a string like "
                 "\"250ms\", \"1s\", \"2m\"), got \"fast\""));
  CHECK(peers == std::vector<std::string>{"default"});
  CHECK(interval == milliseconds(7));
}

TEST_CASE("ConfigReader shortens a long offending value") {
  auto cfg = reader(R"({"text": [")" + std::string(200, 'a') + "\"]}");
  std::string text;
  cfg.read("text", text);
  CHECK(cfg.error().detail.size() < 150);
  CHECK(cfg.error().detail.ends_with("..."));
}

TEST_CASE("ConfigReader durations accept integer milliseconds and unit strings") {
  auto cfg = reader(R"({"a": 250, "b": "250ms", "c": "1s", "d": "2m", "e": "1h", "f": 0})");
  milliseconds a{}, b{}, c{}, d{}, e{}, f{1};
  cfg.read("a", a);
  cfg.read("b", b);
  cfg.read("c", c);
  cfg.read("d", d);
  cfg.read("e", e);
  cfg.read("f", f);
  CHECK(cfg.ok());
  CHECK(a == milliseconds(250));
  CHECK(b == milliseconds(250));
  CHECK(c == milliseconds(1000));
  CHECK(d == milliseconds(120000));
  CHECK(e == milliseconds(3600000));
  CHECK(f == milliseconds(0));
}

TEST_CASE("ConfigReader durations reject negatives, fractions, spaces, unknown units and overflow") {
  for (const char* bad : {R"(-5)", R"(1.5)", R"("-5s")", R"("1.5s")", R"("5 s")", R"("5")", R"("5d")",
                          R"("ms")", R"("")", R"("9223372036854775807h")", R"(true)"}) {
    CAPTURE(bad);
    auto cfg = reader(std::string(R"({"interval": )") + bad + "}");
    milliseconds interval(42);
    cfg.read("interval", interval);
    CHECK_FALSE(cfg.ok());
    CHECK(interval == milliseconds(42));
  }
}

TEST_CASE("ConfigReader dotted keys reach into nested objects") {
  auto cfg = reader(R"({"tls": {"key_file": "/k.pem", "limits": {"max_frames": 64}}})");
  std::string key_file;
  int64_t max_frames = 0;
  cfg.read("tls.key_file", key_file);
  cfg.read_int("tls.limits.max_frames", max_frames, 1, 1024);
  cfg.reject_unknown_keys();
  CHECK(cfg.ok());
  CHECK(key_file == "/k.pem");
  CHECK(max_frames == 64);
}

TEST_CASE("ConfigReader a dotted key through a non-object names the non-object once") {
  auto cfg = reader(R"({"tls": "on"})");
  std::string key_file;
  std::string cert_file;
  cfg.read("tls.key_file", key_file);
  cfg.read("tls.cert_file", cert_file);
  cfg.reject_unknown_keys();
  CHECK(cfg.error().detail == "devmgr.json: key 'tls': expected an object, got \"on\"");
}

TEST_CASE("ConfigReader reject_unknown_keys names every key never read, nested ones too") {
  auto cfg = reader(R"({"heartbeat_ms": 1000, "hearbeat_ms": 5,
                        "tls": {"key_file": "/k", "key_fil": "/typo"},
                        "tsl": {"key_file": "/k"}})");
  int64_t heartbeat = 0;
  std::string key_file;
  cfg.read_int("heartbeat_ms", heartbeat, 100, 60000);
  cfg.read("tls.key_file", key_file);
  cfg.read("tls.cert_file", key_file);
  cfg.reject_unknown_keys();
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().detail ==
        "devmgr.json: unknown key 'hearbeat_ms'; devmgr.json: unknown key 'tls.key_fil'; "
        "devmgr.json: unknown key 'tsl'");
}

TEST_CASE("ConfigReader reject_unknown_keys refuses a name with a dot, which no read reaches") {
  auto cfg = reader(R"({"tls.key_file": "/k", "tls": {"key_file": "/k", "limits.max": 1}})");
  std::string key_file;
  int64_t max = 0;
  cfg.read("tls.key_file", key_file);
  cfg.read_int("tls.limits.max", max, 0, 10);
  cfg.reject_unknown_keys();
  REQUIRE_FALSE(cfg.ok());
  CHECK(cfg.error().detail ==
        "devmgr.json: key 'tls.limits.max': a name with '.' is never read (nest objects instead); "
        "devmgr.json: key 'tls.key_file': a name with '.' is never read (nest objects instead)");
  CHECK(max == 0);
}

TEST_CASE("ConfigReader a key read with the wrong type is not also reported unknown") {
  auto cfg = reader(R"({"flag": 1})");
  bool flag = false;
  cfg.read("flag", flag);
  cfg.reject_unknown_keys();
  CHECK(cfg.error().detail == "devmgr.json: key 'flag': expected true or false, got 1");
}

TEST_CASE("ConfigReader built from a non-object reports it and reads nothing") {
  ConfigReader cfg(json(5), "inline");
  std::string text = "default";
  cfg.read("text", text);
  cfg.reject_unknown_keys();
  CHECK(text == "default");
  CHECK(cfg.error().detail == "inline: top level must be a JSON object, got number");
}

TEST_CASE("parse_endpoint accepts host:port and [v6addr]:port") {
  const auto name = parse_endpoint("devmgr-1.example:4711");
  REQUIRE(name.ok());
  CHECK(*name == Endpoint{"devmgr-1.example", 4711});
  const auto v4 = parse_endpoint("127.0.0.3:0");
  REQUIRE(v4.ok());
  CHECK(*v4 == Endpoint{"127.0.0.3", 0});
  const auto v6 = parse_endpoint("[::1]:65535");
  REQUIRE(v6.ok());
  CHECK(*v6 == Endpoint{"::1", 65535});
  const auto scoped = parse_endpoint("[fe80::1%eth0]:443");
  REQUIRE(scoped.ok());
  CHECK(scoped->host == "fe80::1%eth0");
}

TEST_CASE("Endpoint to_string brackets IPv6 hosts and round-trips through parse_endpoint") {
  for (const Endpoint& e :
       {Endpoint{"localhost", 80}, Endpoint{"10.0.0.1", 0}, Endpoint{"2001:db8::7", 4711}}) {
    const auto parsed = parse_endpoint(e.to_string());
    REQUIRE(parsed.ok());
    CHECK(*parsed == e);
  }
  CHECK(Endpoint{"2001:db8::7", 4711}.to_string() == "[2001:db8::7]:4711");
  CHECK(Endpoint{"localhost", 80}.to_string() == "localhost:80");
}

TEST_CASE("Endpoint orders by host, then port") {
  CHECK(Endpoint{"a", 9} < Endpoint{"b", 1});
  CHECK(Endpoint{"a", 1} < Endpoint{"a", 2});
}

TEST_CASE("parse_endpoint errors name the text and what is wrong") {
  const struct {
    const char* text;
    const char* why;
  } cases[] = {
      {"localhost", "expected host:port or [v6addr]:port"},
      {":80", "missing host"},
      {"host:", "missing port"},
      {"host:65536", "port must be an integer in [0, 65535]"},
      {"host:-1", "port must be an integer in [0, 65535]"},
      {"host:+1", "port must be an integer in [0, 65535]"},
      {"host:8o", "port must be an integer in [0, 65535]"},
      {"host:99999999999", "port must be an integer in [0, 65535]"},
      {"::1:80", "an IPv6 address must be in brackets"},
      {"[::1]80", "expected ':' and a port after ']'"},
      {"[::1]", "expected ':' and a port after ']'"},
      {"[::1:80", "missing ']'"},
      {"[]:80", "empty IPv6 address"},
      {"[::1]:", "missing port"},
      {"my host:80", "invalid character in host"},
      {"", "expected host:port or [v6addr]:port"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    const auto parsed = parse_endpoint(c.text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().code == Errc::invalid_argument);
    CHECK(parsed.error().detail.starts_with("endpoint \"" + std::string(c.text) + "\": "));
    CHECK(contains(parsed.error().detail, c.why));
  }
}

TEST_CASE("parse_endpoint refuses a NUL in the host, where C APIs would cut the host short") {
  using namespace std::string_view_literals;
  for (const std::string_view text : {"10.0.0.1\0x:4720"sv, "[::\0\0001]:4720"sv, "\0:80"sv}) {
    const auto parsed = parse_endpoint(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().code == Errc::invalid_argument);
    CHECK(contains(parsed.error().detail, "invalid character in host"));
  }
}

}  // namespace
}  // namespace dtu::common
