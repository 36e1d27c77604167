#include "dtu/agent/sim_control.hpp"

#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <asio/buffer.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/read_until.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dtu/agent/sim_backend.hpp"

#ifndef DTU_SOURCE_DIR
#error "DTU_SOURCE_DIR must name the source tree (the build sets it) so the test finds demo/sim-devices.json"
#endif

namespace {

using dtu::agent::SimBackend;
using dtu::agent::SimControlServer;
using dtu::agent::UsbDeviceInfo;
using dtu::agent::UsbEvents;
using dtu::common::Errc;
using nlohmann::json;
using Socket = asio::local::stream_protocol::socket;

// Ends a broken test; answers arrive in microseconds.
constexpr auto kWaitLimit = std::chrono::seconds(5);

const std::string kDemoFile = std::string(DTU_SOURCE_DIR) + "/demo/sim-devices.json";

template <typename Done>
bool run_until(asio::io_context& io, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  if (io.stopped()) io.restart();
  while (!done()) {
    if (io.run_one_until(deadline) == 0) return done();
  }
  return true;
}

dtu::agent::SimDeviceSet demo_devices() {
  auto set = dtu::agent::load_sim_devices(kDemoFile);
  if (!set) FAIL("cannot load the demo devices: " << set.error().describe());
  return std::move(set).value();
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "sim_control_test.XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// A client on the test's io_context: the server runs on the same thread, so every wait drives it.
class Client {
 public:
  Client(asio::io_context& io, const std::string& path) : io_(io), socket_(io) {
    socket_.connect(asio::local::stream_protocol::endpoint(path));
  }

  void send(std::string bytes) {
    auto data = std::make_shared<std::string>(std::move(bytes));
    std::optional<std::error_code> result;
    asio::async_write(socket_, asio::buffer(*data),
                      [data, &result](std::error_code ec, std::size_t) { result = ec; });
    REQUIRE(run_until(io_, [&] { return result.has_value(); }));
    REQUIRE_FALSE(*result);
  }

  // The next answer line, or nullopt when the server closed the connection.
  std::optional<json> answer() {
    std::optional<std::error_code> result;
    std::size_t n = 0;
    asio::async_read_until(socket_, asio::dynamic_buffer(buffer_), '\n',
                           [&](std::error_code ec, std::size_t got) {
                             result = ec;
                             n = got;
                           });
    REQUIRE(run_until(io_, [&] { return result.has_value(); }));
    if (*result) return std::nullopt;
    json out = json::parse(buffer_.substr(0, n - 1));
    buffer_.erase(0, n);
    return out;
  }

  json request(const json& req) {
    send(req.dump() + "\n");
    auto a = answer();
    REQUIRE(a.has_value());
    return *a;
  }

 private:
  asio::io_context& io_;
  Socket socket_;
  std::string buffer_;
};

struct Fixture {
  TempDir dir;
  std::string path = (dir.path / "sim.sock").string();
  asio::io_context io;
  SimBackend backend{io.get_executor(), demo_devices()};
  SimControlServer server{io.get_executor(), backend, path};
  std::vector<UsbDeviceInfo> attached;
  std::vector<std::string> detached;

  Fixture() {
    REQUIRE(backend.start(UsbEvents{[this](UsbDeviceInfo info) { attached.push_back(std::move(info)); },
                                    [this](std::string port) { detached.push_back(std::move(port)); }}));
    auto started = server.start();
    if (!started) FAIL("cannot start the control server: " << started.error().describe());
    REQUIRE(run_until(io, [&] { return attached.size() == 2; }));
  }
};

bool is_error(const json& answer, const std::string& code) {
  return answer.value("ok", true) == false && answer.value("code", "") == code &&
         !answer.value("error", "").empty();
}

}  // namespace

TEST_CASE("SimControlServer lists the catalogue with each device's presence") {
  Fixture f;
  Client c(f.io, f.path);
  json a = c.request({{"op", "list"}});
  CHECK(a["ok"] == true);
  REQUIRE(a["devices"].size() == 3);
  CHECK(a["devices"][0]["port"] == "1-1");
  CHECK(a["devices"][0]["present"] == true);
  CHECK(a["devices"][0]["vid"] == "04b8");
  CHECK(a["devices"][0]["pid"] == "0005");
  CHECK(a["devices"][1]["port"] == "1-2");
  CHECK(a["devices"][2]["port"] == "1-3");
  CHECK(a["devices"][2]["present"] == false);
}

TEST_CASE("SimControlServer unplugs and plugs devices of the running backend") {
  Fixture f;
  Client c(f.io, f.path);
  CHECK(c.request({{"op", "unplug"}, {"port", "1-2"}}) == json{{"ok", true}});
  REQUIRE(run_until(f.io, [&] { return f.detached.size() == 1; }));
  CHECK(f.detached[0] == "1-2");

  CHECK(c.request({{"op", "plug"}, {"port", "1-3"}}) == json{{"ok", true}});
  REQUIRE(run_until(f.io, [&] { return f.attached.size() == 3; }));
  CHECK(f.attached[2].port == "1-3");

  json list = c.request({{"op", "list"}});
  CHECK(list["devices"][1]["present"] == false);
  CHECK(list["devices"][2]["present"] == true);

  CHECK(is_error(c.request({{"op", "plug"}, {"port", "1-3"}}), "illegal_state"));
  CHECK(is_error(c.request({{"op", "unplug"}, {"port", "7-7"}}), "not_found"));
}

TEST_CASE("SimControlServer plugs a device described in the request") {
  Fixture f;
  Client c(f.io, f.path);
  json device = {{"port", "3-1"},
                 {"vid", "0bda"},
                 {"pid", "0129"},
                 {"interfaces", {{{"number", 0}, {"class", "08"}, {"subclass", "06"}, {"protocol", "50"}}}}};
  CHECK(c.request({{"op", "plug_device"}, {"device", device}}) == json{{"ok", true}});
  REQUIRE(run_until(f.io, [&] { return f.attached.size() == 3; }));
  CHECK(f.attached[2].vid == 0x0bda);

  device["vid"] = "not hex";
  device["port"] = "3-2";
  json bad = c.request({{"op", "plug_device"}, {"device", device}});
  CHECK(is_error(bad, "config_error"));
  CHECK(bad["error"].get<std::string>().find("vid") != std::string::npos);
}

TEST_CASE("SimControlServer shows what a sink captured and feeds a source") {
  Fixture f;
  std::optional<dtu::common::Result<void>> claimed;
  f.backend.claim("1-1", 0, [&](dtu::common::Result<void> r) { claimed = std::move(r); });
  REQUIRE(run_until(f.io, [&] { return claimed.has_value(); }));
  REQUIRE(*claimed);
  std::optional<dtu::common::Result<std::size_t>> written;
  f.backend.transfer_out("1-1", 0x01, {0x1b, 0x40, 'h', 'i'}, std::chrono::seconds(1),
                         [&](dtu::common::Result<std::size_t> r) { written = std::move(r); });
  REQUIRE(run_until(f.io, [&] { return written.has_value(); }));

  Client c(f.io, f.path);
  CHECK(c.request({{"op", "captured"}, {"port", "1-1"}, {"endpoint", 1}}) ==
        json{{"ok", true}, {"bytes", 4}, {"hex", "1b406869"}});
  CHECK(c.request({{"op", "captured"}, {"port", "1-2"}, {"endpoint", 3}}) == json{{"ok", true}, {"bytes", 0}, {"hex", ""}});
  CHECK(is_error(c.request({{"op", "captured"}, {"port", "1-1"}, {"endpoint", 0x82}}), "not_found"));
  CHECK(is_error(c.request({{"op", "captured"}, {"port", "9-9"}, {"endpoint", 1}}), "not_found"));

  CHECK(c.request({{"op", "feed"}, {"port", "1-1"}, {"endpoint", 0x82}, {"hex", "0a0b"}}) ==
        json{{"ok", true}});
  std::optional<dtu::common::Result<std::vector<std::uint8_t>>> read;
  f.backend.transfer_in("1-1", 0x82, 64, std::chrono::seconds(1),
                        [&](dtu::common::Result<std::vector<std::uint8_t>> r) { read = std::move(r); });
  REQUIRE(run_until(f.io, [&] { return read.has_value(); }));
  REQUIRE(*read);
  CHECK(**read == std::vector<std::uint8_t>{0x0a, 0x0b});

  CHECK(is_error(c.request({{"op", "feed"}, {"port", "1-1"}, {"endpoint", 0x82}, {"hex", "xyz"}}),
                 "invalid_argument"));
  CHECK(is_error(c.request({{"op", "feed"}, {"port", "1-1"}, {"endpoint", 1}, {"hex", "00"}}),
                 "invalid_argument"));
}

TEST_CASE("SimControlServer answers a malformed line with an error and keeps the connection") {
  Fixture f;
  Client c(f.io, f.path);
  c.send("this is not json\n");
  auto a = c.answer();
  REQUIRE(a.has_value());
  CHECK(is_error(*a, "bad_payload"));

  CHECK(is_error(c.request(json::array({1, 2})), "bad_payload"));
  CHECK(is_error(c.request({{"op", "dance"}}), "invalid_argument"));
  CHECK(is_error(c.request({{"op", "plug"}}), "invalid_argument"));
  CHECK(is_error(c.request({{"op", "captured"}, {"port", "1-1"}, {"endpoint", 300}}), "invalid_argument"));
  CHECK(is_error(c.request({{"op", "captured"}, {"port", "1-1"}, {"endpoint", -1}}), "invalid_argument"));

  c.send("\xff\xfe\n");  // not UTF-8
  a = c.answer();
  REQUIRE(a.has_value());
  CHECK(is_error(*a, "bad_payload"));

  CHECK(c.request({{"op", "list"}})["ok"] == true);  // still served
}

TEST_CASE("SimControlServer closes only the connection that sends an oversize line") {
  Fixture f;
  Client good(f.io, f.path);
  Client bad(f.io, f.path);
  CHECK(good.request({{"op", "list"}})["ok"] == true);

  bad.send(std::string(dtu::agent::kSimControlMaxLine + 100, 'x') + "\n");
  auto answer = bad.answer();
  REQUIRE(answer.has_value());
  CHECK(is_error(*answer, "frame_too_large"));
  CHECK_FALSE(bad.answer().has_value());  // then closed

  CHECK(good.request({{"op", "list"}})["ok"] == true);
  Client late(f.io, f.path);  // and still accepting
  CHECK(late.request({{"op", "list"}})["ok"] == true);
}

TEST_CASE("SimControlServer accepts a line of exactly the maximum length") {
  Fixture f;
  Client c(f.io, f.path);
  std::string line = R"({"op":"list","pad":")";
  line += std::string(dtu::agent::kSimControlMaxLine - line.size() - 2, 'p') + "\"}";
  REQUIRE(line.size() == dtu::agent::kSimControlMaxLine);
  c.send(line + "\n");
  auto a = c.answer();
  REQUIRE(a.has_value());
  CHECK((*a)["ok"] == true);
}

TEST_CASE("SimControlServer removes a stale socket file at start and its own at stop") {
  TempDir dir;
  const std::string path = (dir.path / "stale.sock").string();
  {
    // A socket file whose server died: bound, never unlinked.
    asio::io_context io;
    asio::local::stream_protocol::acceptor dead(io);
    dead.open();
    dead.bind(asio::local::stream_protocol::endpoint(path));
  }
  REQUIRE(std::filesystem::exists(path));

  asio::io_context io;
  SimBackend backend(io.get_executor(), demo_devices());
  SimControlServer server(io.get_executor(), backend, path);
  auto started = server.start();
  REQUIRE_MESSAGE(started, (started ? "" : started.error().describe()));
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0600);

  Client c(io, path);
  CHECK(c.request({{"op", "list"}})["ok"] == true);

  // A second server on the same path finds a live one and refuses.
  SimControlServer second(io.get_executor(), backend, path);
  auto r = second.start();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::unavailable);

  server.stop();
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(c.answer().has_value());  // its connections are closed too
}

TEST_CASE("SimControlServer leaves a path that is not a socket alone") {
  TempDir dir;
  const std::string path = (dir.path / "file").string();
  { std::ofstream(path) << "precious"; }
  asio::io_context io;
  SimBackend backend(io.get_executor(), demo_devices());
  SimControlServer server(io.get_executor(), backend, path);
  auto r = server.start();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::io_error);
  CHECK(std::filesystem::exists(path));

  SimControlServer too_long(io.get_executor(), backend, "/tmp/" + std::string(200, 'a'));
  auto t = too_long.start();
  REQUIRE_FALSE(t);
  CHECK(t.error().code == Errc::invalid_argument);
}

TEST_CASE("sim_control_call gets the answer of a server running on another thread") {
  TempDir dir;
  const std::string path = (dir.path / "sim.sock").string();
  asio::io_context io;
  SimBackend backend(io.get_executor(), demo_devices());
  SimControlServer server(io.get_executor(), backend, path);
  REQUIRE(server.start());
  auto work = asio::make_work_guard(io);
  std::thread agent([&] { io.run(); });

  auto answer = dtu::agent::sim_control_call(path, {{"op", "unplug"}, {"port", "1-1"}}, kWaitLimit);
  auto error = dtu::agent::sim_control_call(path, {{"op", "unplug"}, {"port", "1-1"}}, kWaitLimit);

  asio::post(io, [&] {
    server.stop();
    work.reset();
  });
  agent.join();
  REQUIRE(answer);
  CHECK(*answer == json{{"ok", true}});
  REQUIRE(error);
  CHECK(is_error(*error, "illegal_state"));
}

TEST_CASE("sim_control_call reports unavailable when nobody listens") {
  TempDir dir;
  auto r = dtu::agent::sim_control_call((dir.path / "none.sock").string(), {{"op", "list"}}, kWaitLimit);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::unavailable);
}
