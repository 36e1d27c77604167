#pragma once
// What dtu-unit does (docs/dtu-unit.md): choose one unit of a DTU, by id or by finder, through
// the local devmgr with libdtu-client; lease it (waiting for it if asked; the library renews the
// lease and takes it over across a manager failover); move bytes to or from it in-band; release
// it; and answer with an exit status a shell user understands. main.cpp parses the command line
// and installs the signal handling; everything else is here.
//
// Thread: run_unit_tool and every callback run on the io_context thread of the executor the
// coroutine is spawned on. The parsing helpers are pure functions.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/result.hpp"
#include "dtu/common/usb_setup.hpp"

namespace dtu::services::unit_tool {

// Exit statuses, as --help's footer and docs/dtu-unit.md tell them.
inline constexpr int kExitDone = 0;
inline constexpr int kExitFailed = 1;       // the operation failed: transfer error, STALL, policy
inline constexpr int kExitUsage = 2;        // bad command line
inline constexpr int kExitUnreachable = 3;  // no manager answers on the socket
inline constexpr int kExitBusy = 4;         // the unit is held (no --wait-ms, or the wait ran out)
inline constexpr int kExitNoUnit = 5;       // no such DTU / device / unit, or no unit matches
// After SIGINT / SIGTERM the status is 128 + the signal, as a shell reports it.
inline constexpr int kExitSignalBase = 128;

enum class Verb { write, read, device_id, control, list };

struct UnitToolOptions {
  std::string socket;
  // The unit by finder (finder JSON, already checked with parse_finder) ...
  std::optional<nlohmann::json> finder;
  // ... or by id. `list` may narrow a finder with these too.
  std::optional<std::string> dtu;
  std::optional<std::string> device;
  std::optional<std::uint32_t> unit;
  std::optional<std::uint8_t> endpoint;  // default: the unit's first bulk endpoint of the direction
  common::Duration lease_length{0};      // zero: the policy's
  std::optional<common::Duration> wait;  // wait this long for a held unit
  // Each transfer's timeout at the DTU; a read that finds nothing for this long ends `read`.
  common::Duration timeout = std::chrono::seconds(5);
  std::size_t bytes = 64 * 1024;  // read: at most this many bytes
  common::UsbSetup setup;         // control
  common::Bytes data;             // control OUT: exactly setup.length bytes
};

// How run_unit_tool learns of SIGINT / SIGTERM: main calls request(signal) from its signal
// handler (on the io_context thread); run_unit_tool registers what stops its current wait.
class Interrupt {
 public:
  // Records the signal (the first one counts) and runs the current stop action once.
  void request(int signal) {
    if (signal_ == 0) signal_ = signal;
    if (auto stop = std::exchange(stop_, nullptr)) stop();
  }
  // 0 while no signal came.
  int signal() const { return signal_; }
  // What request() runs: cancels what the tool awaits now. Runs at once if a signal came already.
  void on_request(std::function<void()> stop) {
    stop_ = std::move(stop);
    if (signal_ != 0) request(signal_);
  }
  // The same for the next signal only (the clean-up after a first one: a second one cuts it short).
  void on_next_request(std::function<void()> stop) { stop_ = std::move(stop); }

 private:
  int signal_ = 0;
  std::function<void()> stop_;
};

// Reads --finder: the JSON itself, or "@path" for a file holding it; checked with parse_finder.
// Errors (Errc::invalid_argument / io_error) say which and why, ready for "dtu-unit: --finder: ".
common::Result<nlohmann::json> read_finder_argument(const std::string& text);

// "0xA1", "161", "0" → the number, when it is at most `max`; hex with 0x, else decimal.
std::optional<std::uint32_t> parse_number(std::string_view text, std::uint32_t max);

// Hex bytes for --data: pairs of hex digits, whitespace and ':' between them ignored.
common::Result<common::Bytes> parse_hex_data(std::string_view text);

// Does everything after parsing; the exit status. Messages go to stderr prefixed "dtu-unit: ";
// data (read, control IN, device-id, list) to stdout.
asio::awaitable<int> run_unit_tool(UnitToolOptions options, Verb verb, std::shared_ptr<Interrupt> interrupt);

}  // namespace dtu::services::unit_tool
