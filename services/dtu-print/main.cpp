// dtu-print: keeps a CUPS queue for every printer of the group (issue 7). A libdtu-client finder
// for printer units (class 07); each matched unit gets a raw queue on the `dtu` backend's URI,
// removed again when the printer is unplugged (QueueKeeper says exactly when). Optionally one
// "my printer" queue that follows a user's session from DTU to DTU (hot-desking).
//   dtu-print [--cups-server S] [--socket P] [--prefix dtu-] [--once]
//             [--session-queue NAME --session ID]
// Off by default: nothing starts it (docs/printing.md). SIGTERM or SIGINT stops it; the queues stay.
// Exit codes (as dtu-unit): 0 done, 1 failed (the finder refused, --once could not update CUPS),
// 2 bad usage, 3 the manager is unreachable.
#include <algorithm>
#include <csignal>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "cups_admin.hpp"
#include "dtu/client/client.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/exit_codes.hpp"
#include "dtu/services/event.hpp"
#include "dtu/services/printer_uri.hpp"
#include "queue_keeper.hpp"

namespace {

using namespace dtu;
using common::Errc;
using common::Error;
using services::print::QueueKeeper;

using services::kExitFailed;
using services::kExitUnreachable;
using services::kExitUsage;

// How long --once waits for the manager's initial matches (it sends them at once).
constexpr common::Duration kSyncTimeout = std::chrono::seconds(10);

struct Options {
  std::string socket;
  std::optional<std::string> cups_server;
  std::string prefix = "dtu-";
  bool once = false;
  std::string session_queue;
  std::string session;
  std::uint32_t timeout_ms = 15000;
};

// The session queue: points at the first printer unit (in (dtu, device) order) of the DTU the
// session sits at. While the session has no printer (detached, or at a DTU without one) the queue
// is stopped ("session away"): it still points at the printer of the desk the user left, and a
// job must not print there. Jobs wait in it and print where the session next has a printer.
class SessionQueue {
 public:
  SessionQueue(QueueKeeper& keeper, std::string name, std::string session, const common::Logger& log)
      : keeper_(keeper), name_(std::move(name)), session_(std::move(session)), log_(log) {}

  void put(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units) {
    if (units.empty()) return;
    matches_[{device.dtu, device.device}] = {device, units};
    follow();
  }
  void gone(const std::string& dtu, const std::string& device) {
    matches_.erase({dtu, device});
    follow();
  }
  // The manager has sent the session's printers as they are now.
  void synced() { follow(); }

 private:
  void follow() {
    if (matches_.empty()) {
      if (stopped_) return;
      if (keeper_.stop_session_queue(
              name_, "Session " + session_ + " is away: jobs wait until it sits at a DTU with a printer")) {
        stopped_ = true;
        pointed_.clear();
        log_.info("-", "session_queue_unbound", {{"queue", name_}, {"session", session_}});
      }
      return;
    }
    const auto& [device, units] = matches_.begin()->second;
    const std::uint32_t unit = *std::min_element(units.begin(), units.end());
    const std::string uri = services::make_printer_uri(device, unit);
    if (uri == pointed_ && !stopped_) return;
    const std::string info = "Printer of session " + session_ + ": " +
                             services::printer_info(device, services::record_device_id(device));
    if (keeper_.point_session_queue(name_, uri, info)) {
      pointed_ = uri;
      stopped_ = false;
    }
  }

  QueueKeeper& keeper_;
  std::string name_;
  std::string session_;
  const common::Logger& log_;
  std::map<std::pair<std::string, std::string>, std::pair<common::DeviceRecord, std::vector<std::uint32_t>>>
      matches_;
  std::string pointed_;   // the URI the queue points at, when started
  bool stopped_ = false;  // stopped for want of a printer
};

// Every kTidyInterval while queues are left for their jobs: deletes those whose jobs are done.
constexpr common::Duration kTidyInterval = std::chrono::seconds(2);

// `keeper` is run()'s: touched only while `stop` is not set (run() cancels `timer` once it is).
asio::awaitable<void> tidy_left_queues(QueueKeeper& keeper, std::shared_ptr<asio::steady_timer> timer,
                                       std::shared_ptr<services::Event> stop) {
  while (!stop->is_set()) {
    timer->expires_after(kTidyInterval);
    auto sleep = timer->async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_await std::move(sleep);
    if (!stop->is_set() && keeper.has_left_queues()) keeper.tidy();
  }
}

asio::awaitable<int> run(Options o, std::shared_ptr<services::Event> stop) {
  const common::Logger log("dtu-print");
  auto ex = co_await asio::this_coro::executor;
  services::print::IppCupsAdmin cups(o.cups_server);
  QueueKeeper keeper(cups, o.prefix, log);

  client::ClientOptions options;
  options.socket = o.socket;
  options.name = "dtu-print";
  options.request_timeout = std::chrono::milliseconds(o.timeout_ms);
  options.reconnect = !o.once;
  auto connect = client::Client::connect(ex, common::SystemClock::instance(), options);
  auto connected = co_await std::move(connect);
  if (!connected.ok()) {
    std::cerr << "dtu-print: connect: " << connected.error().describe() << '\n'
              << "dtu-print: is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET (now "
              << o.socket << ").\n";
    co_return kExitUnreachable;
  }
  auto& service = **connected;
  log.info("-", "started",
           {{"manager", service.manager_id()}, {"socket", o.socket}, {"cups", cups.server()}});
  service.on_connection([&log](bool up, const Error& why) {
    if (up) log.info("-", "manager_reconnected");
    if (!up) log.warn("-", "manager_lost", {{"reason", why.describe()}});
  });

  services::Event printers_synced(ex);
  client::FinderEvents events;
  events.matched = [&keeper](const common::DeviceRecord& d, const std::vector<std::uint32_t>& units) {
    keeper.on_matched(d, units);
  };
  events.changed = [&keeper](const common::DeviceRecord& d, const std::vector<std::uint32_t>& units) {
    keeper.on_changed(d, units);
  };
  events.gone = [&keeper](const std::string& dtu, const std::string& device, const std::string& reason) {
    keeper.on_gone(dtu, device, reason);
  };
  events.synced = [&printers_synced] { printers_synced.set(); };
  auto add = service.add_finder(nlohmann::json{{"unit_class", services::kPrinterClass}}, std::move(events));
  auto finder = co_await std::move(add);
  if (!finder.ok()) {
    std::cerr << "dtu-print: register the printer finder: " << finder.error().describe() << '\n';
    co_return kExitFailed;
  }

  services::Event session_synced(ex);
  std::optional<SessionQueue> session_queue;
  if (!o.session_queue.empty()) {
    session_queue.emplace(keeper, o.session_queue, o.session, log);
    client::FinderEvents session_events;
    auto* sq = &*session_queue;
    session_events.matched = [sq](const common::DeviceRecord& d, const std::vector<std::uint32_t>& units) {
      sq->put(d, units);
    };
    session_events.changed = session_events.matched;
    session_events.gone = [sq](const std::string& dtu, const std::string& device, const std::string&) {
      sq->gone(dtu, device);
    };
    session_events.synced = [&session_synced, sq] {
      sq->synced();
      session_synced.set();
    };
    const nlohmann::json session_finder = {
        {"unit_class", services::kPrinterClass}, {"scope", "session"}, {"session", o.session}};
    auto add_session = service.add_finder(session_finder, std::move(session_events));
    auto session_finder_id = co_await std::move(add_session);
    if (!session_finder_id.ok()) {
      std::cerr << "dtu-print: register the session finder: " << session_finder_id.error().describe() << '\n';
      co_return kExitFailed;
    }
  } else {
    session_synced.set();
  }

  if (o.once) {
    auto wait_printers = printers_synced.wait(kSyncTimeout);
    const bool printers_ok = co_await std::move(wait_printers);
    auto wait_session = session_synced.wait(kSyncTimeout);
    const bool session_ok = co_await std::move(wait_session);
    if (!printers_ok || !session_ok) {
      std::cerr << "dtu-print: the manager did not send its matches within "
                << std::chrono::duration_cast<std::chrono::seconds>(kSyncTimeout).count() << " s\n";
      co_return kExitFailed;
    }
    std::set<std::string> current;
    for (const auto& [key, match] : service.matches(*finder)) {
      for (std::uint32_t unit : match.units) current.insert(services::make_printer_uri(match.device, unit));
    }
    keeper.sweep(current);
    service.close();
    if (keeper.failures() > 0) {
      std::cerr << "dtu-print: " << keeper.failures()
                << " CUPS request(s) failed (see the queue_failed lines)\n";
      co_return kExitFailed;
    }
    co_return 0;
  }

  auto tidy_timer = std::make_shared<asio::steady_timer>(ex);
  common::spawn(ex, tidy_left_queues(keeper, tidy_timer, stop), log, "tidy");
  auto wait_stop = stop->wait(std::nullopt);
  co_await std::move(wait_stop);
  tidy_timer->cancel();
  log.info("-", "stopping", {{"queues", keeper.kept().size()}});
  service.close();
  co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Keep a CUPS queue for every printer of the dtubroker group, and optionally one that follows a "
      "session."};
  app.footer(
      "Each queue is raw, on the dtu backend's URI; dtu-print marks its queues with \"[dtu-print]\" at the "
      "end of\n"
      "their description and never touches another queue.\n"
      "Exit status: 0 done, 1 failed, 2 bad usage, 3 the manager is unreachable.");
  Options o;
  o.socket = services::default_socket_path();
  app.add_option("--socket", o.socket,
                 "the manager's Unix socket (default $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--cups-server", o.cups_server,
                 "the CUPS scheduler: a socket path or host[:port] (default $CUPS_SERVER or the local one)");
  app.add_option("--prefix", o.prefix, "start of every queue name (default dtu-)");
  app.add_flag(
      "--once", o.once,
      "create the queues of the printers there are now, delete ours of printers that are gone, and exit");
  auto* session_queue =
      app.add_option("--session-queue", o.session_queue,
                     "also keep this queue pointing at a printer of the DTU where --session sits");
  auto* session = app.add_option("--session", o.session, "the session --session-queue follows");
  session_queue->needs(session);
  session->needs(session_queue);
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of each request to the manager")
      ->check(CLI::Range(1, 600000));
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug | info | warn | error");
  app.set_version_flag("--version", common::kVersion);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  if (!common::set_log_level(log_level)) {
    std::cerr << "dtu-print: --log-level: '" << log_level << "' is not one of debug, info, warn, error\n";
    return kExitUsage;
  }
  if (services::print::sanitise_queue_name(o.prefix) != o.prefix) {
    std::cerr << "dtu-print: --prefix '" << o.prefix
              << "': a CUPS queue name takes only letters, digits, '-', '_' and '.'\n";
    return kExitUsage;
  }
  if (!o.session_queue.empty() &&
      (services::print::sanitise_queue_name(o.session_queue) != o.session_queue)) {
    std::cerr << "dtu-print: --session-queue '" << o.session_queue
              << "': a CUPS queue name takes only letters, digits, '-', '_' and '.' (at most 127)\n";
    return kExitUsage;
  }

  asio::io_context io;
  auto stop = std::make_shared<services::Event>(io.get_executor());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const std::error_code& ec, int) {
    if (!ec) stop->set();
  });
  int code = kExitFailed;
  auto task = [](Options opts, std::shared_ptr<services::Event> s, int& out,
                 asio::signal_set& sig) -> asio::awaitable<void> {
    auto op = run(std::move(opts), std::move(s));
    out = co_await std::move(op);
    sig.cancel();
  };
  common::spawn(io.get_executor(), task(o, stop, code, signals), common::Logger("dtu-print"), "dtu-print");
  io.run();
  return code;
}
