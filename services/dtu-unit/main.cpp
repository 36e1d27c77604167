// dtu-unit: leases one unit of a DTU through the local devmgr — by id or by finder — and moves
// bytes to or from it in-band, straight to the DTU (DESIGN.md §2, docs/dtu-unit.md). For scripts,
// raw-protocol printers and scanners.
//   dtu-unit --dtu D --device 1-1 --unit 0 write < job.prn           stdin -> the unit's bulk OUT
//   dtu-unit --finder '{"function": "scanner"}' read --bytes 4096     the unit's bulk IN -> stdout
//   dtu-unit --finder @printer.json --wait-ms 60000 device-id          a printer's IEEE 1284 id
//   dtu-unit --dtu D --device 1-1 --unit 0 control --request-type 0xA1 --request 0 --length 1024
//   dtu-unit list --finder '{"function": "printer"}'                   dtu device unit state holder
// The lease is renewed while the tool works and released at the end (also on SIGINT / SIGTERM).
// This file parses the command line and handles signals; unit_tool.cpp does the rest.
#include <csignal>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <asio.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/manager_client.hpp"
#include "unit_tool.hpp"

namespace {

using namespace dtu::services::unit_tool;

// After a signal, how long the tool may take to release and exit before it just exits (the
// manager then releases the lease when the connection closes).
constexpr std::chrono::seconds kSignalGrace{15};
// A control IN transfer reads at most this many bytes unless --length says otherwise.
constexpr std::uint32_t kDefaultControlLength = 1024;

constexpr const char* kFooter =
    "Pick the unit with --finder JSON (or @file.json) or with --dtu, --device and --unit;\n"
    "the first matching unit that is free is leased (--wait-ms: wait for one to come free).\n"
    "\n"
    "Exit status:\n"
    "  0    done\n"
    "  1    the operation failed (transfer error, STALL, refused by the policy or the DTU)\n"
    "  2    bad usage\n"
    "  3    the manager is unreachable (is devmgr running? --socket / DTUBROKER_SOCKET)\n"
    "  4    the unit is busy (no --wait-ms, or the wait ran out); the holder is named\n"
    "  5    no such unit, or no unit matches the finder\n"
    "  130  interrupted (SIGINT), 143 terminated (SIGTERM); the lease is released first";

int usage(const std::string& message) {
  std::cerr << "dtu-unit: " << message << "\ndtu-unit: see dtu-unit --help\n";
  return kExitUsage;
}

struct Control {
  std::string request_type;
  std::string request;
  std::string value = "0";
  std::string index = "0";
  std::optional<std::string> length;
  std::optional<std::string> data;  // hex, or "-" for stdin
};

// Fills the control setup and data from the flags; a usage message when they do not fit.
std::optional<std::string> read_control(const Control& c, UnitToolOptions& o) {
  auto type = parse_number(c.request_type, 0xff);
  auto request = parse_number(c.request, 0xff);
  auto value = parse_number(c.value, 0xffff);
  auto index = parse_number(c.index, 0xffff);
  if (!type) return "--request-type '" + c.request_type + "': expected a byte, e.g. 0xA1";
  if (!request) return "--request '" + c.request + "': expected a byte, e.g. 0";
  if (!value) return "--value '" + c.value + "': expected 0 .. 0xffff";
  if (!index) return "--index '" + c.index + "': expected 0 .. 0xffff";
  o.setup.request_type = static_cast<std::uint8_t>(*type);
  o.setup.request = static_cast<std::uint8_t>(*request);
  o.setup.value = static_cast<std::uint16_t>(*value);
  o.setup.index = static_cast<std::uint16_t>(*index);
  std::optional<std::uint32_t> length;
  if (c.length) {
    length = parse_number(*c.length, 0xffff);
    if (!length) return "--length '" + *c.length + "': expected 0 .. 65535";
  }
  if (o.setup.is_in()) {
    if (c.data) return "--data goes with an OUT request; bit 7 of --request-type makes this one IN";
    o.setup.length = static_cast<std::uint16_t>(length.value_or(kDefaultControlLength));
    return std::nullopt;
  }
  if (c.data && *c.data == "-") {
    o.data.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else if (c.data) {
    auto bytes = parse_hex_data(*c.data);
    if (!bytes.ok()) return "--data: " + bytes.error().detail;
    o.data = std::move(bytes.value());
  }
  if (o.data.size() > 0xffff) return "--data: more than 65535 bytes";
  if (length && *length != o.data.size()) {
    return "--length " + std::to_string(*length) + " but --data has " + std::to_string(o.data.size()) +
           " bytes";
  }
  o.setup.length = static_cast<std::uint16_t>(o.data.size());
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Lease one unit of a DTU (by id or by finder) and move bytes to or from it in-band."};
  app.footer(kFooter);
  app.fallthrough();  // the common options may come after the verb too
  UnitToolOptions o;
  o.socket = dtu::services::default_socket_path();
  std::optional<std::string> finder_text;
  std::optional<std::string> endpoint_text;
  std::optional<std::uint32_t> lease_seconds;
  std::optional<std::uint32_t> wait_ms;
  std::uint32_t timeout_ms = 5000;
  app.add_option("--socket", o.socket,
                 "the manager's Unix socket (default $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--finder", finder_text,
                 "which units: finder JSON, or @file holding it (docs/service-api.md)");
  app.add_option("--dtu", o.dtu, "the DTU's id");
  app.add_option("--device", o.device, "the device's port path, e.g. 1-2");
  app.add_option("--unit", o.unit, "the unit (its first interface number)");
  app.add_option("--endpoint", endpoint_text,
                 "endpoint address, e.g. 0x84 (default: the unit's first bulk one)");
  app.add_option("--lease-seconds", lease_seconds, "lease length (default: the policy's)")
      ->check(CLI::Range(1, 86400));
  app.add_option("--wait-ms", wait_ms, "when the unit is busy, wait up to this long for it")
      ->check(CLI::Range(1, 86400000));
  app.add_option("--timeout-ms", timeout_ms,
                 "timeout of each transfer; a read that gets nothing this long ends `read`")
      ->check(CLI::Range(1, 600000));
  app.set_version_flag("--version", dtu::common::kVersion);
  app.require_subcommand(1);
  app.add_subcommand("write", "copy stdin to the unit's bulk OUT endpoint, in order");
  auto* read = app.add_subcommand(
      "read", "copy the unit's bulk IN endpoint to stdout until --bytes or a read times out");
  read->add_option("--bytes", o.bytes, "at most this many bytes (default 65536)")
      ->check(CLI::Range(1, 1 << 30));
  app.add_subcommand("device-id", "print a printer unit's IEEE 1284 device id");
  auto* control =
      app.add_subcommand("control", "one control transfer: IN prints the answer as hex, OUT sends --data");
  Control c;
  control->add_option("--request-type", c.request_type, "bmRequestType, e.g. 0xA1 (bit 7: IN)")->required();
  control->add_option("--request", c.request, "bRequest")->required();
  control->add_option("--value", c.value, "wValue (default 0)");
  control->add_option("--index", c.index, "wIndex (default 0)");
  control->add_option("--length", c.length, "wLength (IN: default 1024; OUT: the size of --data)");
  control->add_option("--data", c.data, "OUT data as hex, or - to read it from stdin");
  app.add_subcommand("list", "print the units a finder matches: dtu device unit state holder (no lease)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    return usage(e.what());
  }
  const std::string verb_name = app.get_subcommands().front()->get_name();
  const Verb verb = verb_name == "write"       ? Verb::write
                    : verb_name == "read"      ? Verb::read
                    : verb_name == "device-id" ? Verb::device_id
                    : verb_name == "control"   ? Verb::control
                                               : Verb::list;
  if (finder_text) {
    auto finder = read_finder_argument(*finder_text);
    if (!finder.ok()) return usage("--finder: " + finder.error().detail);
    o.finder = std::move(finder.value());
  } else if (verb != Verb::list && !(o.dtu && o.device && o.unit)) {
    return usage("which unit? Give --finder, or all of --dtu, --device and --unit");
  }
  if (endpoint_text) {
    auto endpoint = parse_number(*endpoint_text, 0xff);
    if (!endpoint || (*endpoint & 0x7f) == 0 || (*endpoint & 0x70) != 0) {
      return usage("--endpoint '" + *endpoint_text + "': expected an endpoint address, e.g. 0x01 or 0x82");
    }
    o.endpoint = static_cast<std::uint8_t>(*endpoint);
  }
  if (lease_seconds) o.lease_length = std::chrono::seconds(*lease_seconds);
  if (wait_ms) o.wait = std::chrono::milliseconds(*wait_ms);
  o.timeout = std::chrono::milliseconds(timeout_ms);
  if (verb == Verb::control) {
    if (auto problem = read_control(c, o)) return usage(*problem);
  }

  asio::io_context io;
  auto interrupt = std::make_shared<Interrupt>();
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer grace(io);
  std::function<void(const std::error_code&, int)> on_signal = [&](const std::error_code& ec, int sig) {
    if (ec) return;
    if (interrupt->signal() == 0) {
      grace.expires_after(kSignalGrace);
      grace.async_wait([&io](const std::error_code& e) {
        if (!e) io.stop();
      });
    }
    interrupt->request(sig);
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);
  int code = kExitFailed;
  auto task = [](UnitToolOptions opts, Verb v, std::shared_ptr<Interrupt> stop, int& out,
                 asio::signal_set& sig, asio::steady_timer& timer) -> asio::awaitable<void> {
    auto op = run_unit_tool(std::move(opts), v, std::move(stop));
    out = co_await std::move(op);
    sig.cancel();
    timer.cancel();
  };
  dtu::common::spawn(io.get_executor(), task(std::move(o), verb, interrupt, code, signals, grace),
                     dtu::common::Logger("dtu-unit"), verb_name);
  io.run();
  if (interrupt->signal() != 0) return kExitSignalBase + interrupt->signal();
  return code;
}
