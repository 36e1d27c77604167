// dtu-unit: leases one unit of a DTU through the local devmgr and moves bytes to or from it
// in-band, straight to the DTU (DESIGN.md §2). For scripts, raw-protocol printers and scanners.
//   dtu-unit --dtu D --device 1-1 --unit 0 write < job.prn     stdin -> the unit's bulk OUT endpoint
//   dtu-unit --dtu D --device 1-2 --unit 1 read --bytes 4096    the unit's IN endpoint -> stdout
//   dtu-unit --dtu D --device 1-1 --unit 0 device-id            a printer's IEEE 1284 id
// The lease is released at the end. Finders (instead of --dtu/--device/--unit) come with the
// brokering work.
// Exit codes: 0 done, 1 the operation failed (unit busy, transfer error), 2 bad usage, 3 the
// manager is unreachable.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>

#include "dtu/client/inband_channel.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/manager_client.hpp"

namespace {

using namespace dtu;
using common::Errc;
using common::Error;

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

struct Request {
  std::string socket;
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::optional<std::string> endpoint;  // "0x01"; default: the unit's first bulk endpoint
  std::uint32_t lease_seconds = 300;
  std::uint32_t timeout_ms = 5000;
  std::size_t bytes = 64 * 1024;  // read: at most this many bytes
};

int report(const std::string& what, const Error& error) {
  std::cerr << "dtu-unit: " << what << ": " << error.describe() << '\n';
  if (what == "connect" && (error.code == Errc::unavailable || error.code == Errc::timeout)) {
    std::cerr << "dtu-unit: is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET.\n";
    return kExitUnreachable;
  }
  if (error.code == Errc::refused || error.code == Errc::unavailable) {
    std::cerr << "dtu-unit: the unit is in use or unusable now; try again later.\n";
  }
  return kExitFailed;
}

std::optional<std::uint8_t> parse_address(const std::string& text) {
  try {
    std::size_t used = 0;
    const unsigned long value = std::stoul(text, &used, 0);
    if (used != text.size() || value > 0xff) return std::nullopt;
    return static_cast<std::uint8_t>(value);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The endpoint to use: the one asked for, or the unit's first bulk endpoint of that direction.
common::Result<std::uint8_t> pick_endpoint(const common::InbandWelcomeMsg& welcome,
                                           const std::optional<std::string>& asked, bool in) {
  if (asked) {
    auto address = parse_address(*asked);
    if (!address) return Error(Errc::invalid_argument, "endpoint '" + *asked + "': expected e.g. 0x01 or 0x82");
    return *address;
  }
  for (const auto& ep : welcome.endpoints) {
    if (ep.type == "bulk" && ((ep.address & 0x80) != 0) == in) return ep.address;
  }
  return Error(Errc::not_found, std::string("the unit has no bulk ") + (in ? "IN" : "OUT") + " endpoint");
}

// Streams stdin to OUT `endpoint` as it arrives: a pipe is read asynchronously (a slow producer,
// e.g. a print filter, never stalls the channel's heartbeats), anything else in one go.
asio::awaitable<common::Result<std::size_t>> write_stdin(client::InbandChannel& channel, std::uint8_t endpoint) {
  struct stat st {};
  if (::fstat(STDIN_FILENO, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    const std::vector<std::uint8_t> data((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto stream = channel.stream(endpoint, data);
    co_return co_await std::move(stream);
  }
  const int fd = ::dup(STDIN_FILENO);
  if (fd < 0) co_return Error(Errc::io_error, std::string("reading stdin: ") + std::strerror(errno));
  asio::posix::stream_descriptor in(co_await asio::this_coro::executor, fd);
  std::vector<std::uint8_t> chunk(common::kMaxUsbTransferBytes);
  std::size_t total = 0;
  while (true) {
    auto [ec, n] = co_await in.async_read_some(asio::buffer(chunk), asio::experimental::as_tuple(asio::use_awaitable));
    if (n > 0) {
      auto stream = channel.stream(endpoint, std::span<const std::uint8_t>(chunk.data(), n));
      auto sent = co_await std::move(stream);
      if (!sent.ok()) {
        co_return Error(sent.error().code, sent.error().detail + " (after " + std::to_string(total) + " bytes)");
      }
      total += *sent;
    }
    if (ec == asio::error::eof) co_return total;
    if (ec) co_return Error(Errc::io_error, "reading stdin: " + ec.message());
  }
}

asio::awaitable<int> run(Request request, std::string verb) {
  const common::Duration timeout = std::chrono::milliseconds(request.timeout_ms);
  auto connect = services::ManagerClient::connect(request.socket, "dtu-unit", common::SystemClock::instance(), timeout);
  auto manager = co_await std::move(connect);
  if (!manager.ok()) co_return report("connect", manager.error());
  auto allocate = (*manager)->allocate(request.dtu, request.device, request.unit,
                                       std::chrono::seconds(request.lease_seconds), timeout);
  auto lease = co_await std::move(allocate);
  if (!lease.ok()) co_return report("allocate", lease.error());
  auto endpoint = common::parse_endpoint(lease->inband.value_or(""));
  auto token = common::from_hex(lease->token.value_or(""));
  if (!endpoint.ok() || !token.ok()) {
    co_return report("allocate", Error(Errc::bad_payload, "the grant has no usable in-band endpoint or token"));
  }
  auto open = client::InbandChannel::connect(co_await asio::this_coro::executor, common::SystemClock::instance(),
                                             *endpoint, lease->lease, *token, timeout);
  auto channel = co_await std::move(open);
  int code = 0;
  if (!channel.ok()) {
    code = report("in-band connect", channel.error());
  } else if (verb == "write") {
    auto out = pick_endpoint((*channel)->welcome(), request.endpoint, false);
    if (!out.ok()) {
      code = report("write", out.error());
    } else {
      auto stream = write_stdin(**channel, *out);
      auto sent = co_await std::move(stream);
      if (!sent.ok()) code = report("write", sent.error());
      if (sent.ok()) std::cerr << "dtu-unit: wrote " << *sent << " bytes to endpoint " << int(*out) << '\n';
    }
  } else if (verb == "read") {
    auto in = pick_endpoint((*channel)->welcome(), request.endpoint, true);
    if (!in.ok()) code = report("read", in.error());
    std::size_t total = 0;
    while (in.ok() && total < request.bytes) {
      auto read = (*channel)->read(*in, std::min<std::size_t>(request.bytes - total, common::kMaxUsbTransferBytes),
                                   timeout);
      auto got = co_await std::move(read);
      if (!got.ok()) {
        // A read that finds nothing more ends the output; nothing at all is a failure.
        if (got.error().code != Errc::timeout || total == 0) code = report("read", got.error());
        break;
      }
      std::cout.write(reinterpret_cast<const char*>(got->data()), static_cast<std::streamsize>(got->size()));
      total += got->size();
    }
    std::cout.flush();
  } else {  // device-id
    auto ask = (*channel)->device_id(timeout);
    auto id = co_await std::move(ask);
    if (!id.ok()) {
      code = report("device-id", id.error());
    } else {
      std::cout << id->value_or("") << '\n';
    }
  }
  if (channel.ok()) (*channel)->close();
  auto release = (*manager)->release(request.dtu, lease->lease, timeout);
  auto released = co_await std::move(release);
  if (!released.ok()) std::cerr << "dtu-unit: release: " << released.error().describe() << " (the lease will expire)\n";
  (*manager)->close();
  co_return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Lease one unit of a DTU and move bytes to or from it in-band."};
  app.footer("Exit status: 0 done, 1 the operation failed, 2 bad usage, 3 the manager is unreachable.");
  Request request;
  request.socket = services::default_socket_path();
  app.add_option("--socket", request.socket, "the manager's Unix socket (default $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--dtu", request.dtu, "the DTU's id")->required();
  app.add_option("--device", request.device, "the device's port path, e.g. 1-2")->required();
  app.add_option("--unit", request.unit, "the unit (its first interface number)")->required();
  app.add_option("--endpoint", request.endpoint, "endpoint address (default: the unit's first bulk one)");
  app.add_option("--lease-seconds", request.lease_seconds, "lease length")->check(CLI::Range(1, 86400));
  app.add_option("--timeout-ms", request.timeout_ms, "deadline of each step and read")->check(CLI::Range(1, 600000));
  app.set_version_flag("--version", common::kVersion);
  app.require_subcommand(1);
  app.add_subcommand("write", "copy stdin to the unit's OUT endpoint, in order");
  auto* read = app.add_subcommand("read", "copy the unit's IN endpoint to stdout until --bytes or a read times out");
  read->add_option("--bytes", request.bytes, "at most this many bytes")->check(CLI::Range(1, 1 << 30));
  app.add_subcommand("device-id", "print a printer unit's IEEE 1284 device id");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  const std::string verb = app.get_subcommands().front()->get_name();
  asio::io_context io;
  int code = kExitFailed;
  auto task = [](Request r, std::string v, int& out) -> asio::awaitable<void> {
    auto op = run(std::move(r), std::move(v));
    out = co_await std::move(op);
  };
  common::spawn(io.get_executor(), task(request, verb, code), common::Logger("dtu-unit"), verb);
  io.run();
  return code;
}
