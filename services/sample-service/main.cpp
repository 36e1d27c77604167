// dtu-sample-service: a sample printer service built on libdtu-client (docs/service-api.md), for
// the demo and the integration tests. It registers a finder, waits until the manager has sent
// every match (synced), picks the first matched printer unit that is free, leases it, prints a
// test page in-band straight to the DTU, and releases it, saying each step on stdout:
//   dtu-sample-service [--finder JSON] [--wait-ms N] [--page FILE]
//   dtu-sample-service --hold       lease a printer and keep it (the library renews it) until
//                                   SIGTERM or SIGINT, then release it
// Exit codes (as dtu-unit): 0 done, 1 failed (no printer, busy, transfer error, lease lost),
// 2 bad usage, 3 the manager is unreachable.
#include <csignal>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/client/client.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/exit_codes.hpp"
#include "dtu/services/event.hpp"

namespace {

using namespace dtu;
using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

using services::kExitFailed;
using services::kExitUnreachable;
using services::kExitUsage;

// How long to wait for the manager's initial matches (it sends them at once).
constexpr common::Duration kSyncTimeout = std::chrono::seconds(10);

struct Options {
  std::string socket;
  std::string finder_text = R"({"function": "printer"})";
  nlohmann::json finder;  // finder_text, parsed and checked by main
  std::optional<std::uint32_t> wait_ms;
  std::uint32_t lease_ms = 0;  // 0: the policy's length
  std::string page_file;
  bool hold = false;
  std::uint32_t timeout_ms = 15000;
};

// One line for a person, at once (tests and the demo read it while we run).
void say(const std::string& line) {
  std::cout << line << std::endl;
}

int fail(const std::string& what, const Error& error) {
  std::cerr << "dtu-sample-service: " << what << ": " << error.describe() << '\n';
  return kExitFailed;
}

std::string units_text(const common::DeviceRecord& device, const std::vector<std::uint32_t>& units) {
  std::string out;
  for (std::uint32_t n : units) {
    for (const auto& u : device.units) {
      if (u.unit != n) continue;
      if (!out.empty()) out += ", ";
      out += "unit " + std::to_string(n) + " (" + (u.function.empty() ? "?" : u.function) + ", " +
             common::unit_state_name(u.state) + (u.holder ? " by " + *u.holder : "") + ")";
    }
  }
  return out;
}

struct Choice {
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
  std::optional<std::string> holder;  // set when the unit is not free
};

// The first matched printer unit that is free, in the order the matches came; else the first
// matched printer unit at all (to wait for it, or to learn its holder).
std::optional<Choice> choose(const std::vector<std::pair<std::string, std::string>>& order,
                             const std::map<std::pair<std::string, std::string>, client::Match>& matches) {
  std::optional<Choice> busy;
  for (const auto& key : order) {
    auto it = matches.find(key);
    if (it == matches.end()) continue;
    for (std::uint32_t n : it->second.units) {
      for (const auto& u : it->second.device.units) {
        if (u.unit != n || u.function != "printer") continue;
        if (u.state == common::UnitState::free) return Choice{key.first, key.second, n, std::nullopt};
        if (!busy)
          busy = Choice{key.first, key.second, n, u.holder.value_or(common::unit_state_name(u.state))};
      }
    }
  }
  return busy;
}

common::Bytes test_page(const Choice& c) {
  const std::string text =
      "\x1b"
      "E"
      "dtubroker test page\r\n"
      "printed in-band by dtu-sample-service on " +
      c.dtu + " " + c.device + " unit " + std::to_string(c.unit) +
      "\r\n\f\x1b"
      "E";
  return common::Bytes(text.begin(), text.end());
}

std::optional<std::uint8_t> bulk_out(const common::InbandWelcomeMsg& welcome) {
  for (const auto& ep : welcome.endpoints) {
    if (ep.type == "bulk" && (ep.address & 0x80) == 0) return ep.address;
  }
  return std::nullopt;
}

// Opens the lease's in-band channel and writes the page (the built-in one, or `page_file`) to
// the unit's bulk OUT endpoint. 0, or kExitFailed after saying why.
asio::awaitable<int> print_page(client::Client& service, const client::Lease& lease, const Choice& choice,
                                const std::string& page_file) {
  common::Bytes page = test_page(choice);
  if (!page_file.empty()) {
    std::ifstream in(page_file, std::ios::binary);
    if (!in) co_return fail("page", Error(Errc::io_error, "cannot read " + page_file));
    page.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto open = service.open_channel(lease);
  auto channel = co_await std::move(open);
  if (!channel.ok()) co_return fail("in-band connect", channel.error());
  auto out = bulk_out((*channel)->welcome());
  if (!out) co_return fail("print", Error(Errc::not_found, "the unit has no bulk OUT endpoint"));
  auto stream = (*channel)->stream(*out, page);
  auto sent = co_await std::move(stream);
  (*channel)->close();
  if (!sent.ok()) co_return fail("print", sent.error());
  say("printed " + std::to_string(*sent) + " bytes in-band to " + choice.dtu + " " + choice.device +
      " unit " + std::to_string(choice.unit));
  co_return 0;
}

asio::awaitable<int> run(Options o, std::shared_ptr<services::Event> stop) {
  auto ex = co_await asio::this_coro::executor;
  client::ClientOptions options;
  options.socket = o.socket;
  options.name = "dtu-sample-service";
  options.request_timeout = std::chrono::milliseconds(o.timeout_ms);
  auto connect = client::Client::connect(ex, common::SystemClock::instance(), options);
  auto connected = co_await std::move(connect);
  if (!connected.ok()) {
    std::cerr
        << "dtu-sample-service: connect: " << connected.error().describe() << '\n'
        << "dtu-sample-service: is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET.\n";
    co_return kExitUnreachable;
  }
  auto& service = **connected;
  say("connected to manager " + service.manager_id() + " at " + o.socket);

  std::string lost_reason;
  service.on_lease_ended([&lost_reason, stop](const client::Lease& lease, const std::string& reason) {
    say("lease " + lease.id + " ended: " + reason);
    lost_reason = reason;
    stop->set();  // --hold: nothing left to hold
  });
  service.on_connection([](bool up, const Error& why) {
    say(up ? std::string("reconnected to the manager; finders and leases resubmitted")
           : "lost the manager (" + why.describe() + "); reconnecting");
  });

  // The finder: every printer unit (or what --finder says), reported as it matches. The first
  // matches may arrive before the registration's answer: they are told after it.
  services::Event synced(ex);
  std::vector<std::pair<std::string, std::string>> order;
  bool registered = false;
  std::vector<std::string> early;
  auto tell = [&](const std::string& line) {
    if (registered) say(line);
    if (!registered) early.push_back(line);
  };
  client::FinderEvents events;
  events.matched = [&](const common::DeviceRecord& d, const std::vector<std::uint32_t>& units) {
    tell("matched " + d.dtu + " " + d.device + " " + units_text(d, units));
    order.emplace_back(d.dtu, d.device);
  };
  events.changed = [&](const common::DeviceRecord& d, const std::vector<std::uint32_t>& units) {
    tell("changed " + d.dtu + " " + d.device + " " + units_text(d, units));
  };
  events.gone = [&](const std::string& dtu, const std::string& device, const std::string& reason) {
    tell("gone " + dtu + " " + device + " (" + reason + ")");
  };
  events.synced = [&] { synced.set(); };
  auto add = service.add_finder(o.finder, std::move(events));
  auto finder = co_await std::move(add);
  if (!finder.ok()) co_return fail("register finder", finder.error());
  say("registered finder " + std::to_string(*finder) + " " + o.finder.dump());
  registered = true;
  for (const auto& line : early) say(line);
  auto wait_sync = synced.wait(kSyncTimeout);
  if (!co_await std::move(wait_sync)) co_return fail("register finder", Error(Errc::timeout, "no synced"));
  say("synced: " + std::to_string(service.matches(*finder).size()) + " matching device(s)");

  auto choice = choose(order, service.matches(*finder));
  if (!choice) co_return fail("choose", Error(Errc::not_found, "no printer unit matches the finder"));
  const std::string target = choice->dtu + " " + choice->device + " unit " + std::to_string(choice->unit);
  say("chose " + target + (choice->holder ? " (now held by " + *choice->holder + ")" : " (free)"));

  client::AllocateOptions allocation;
  allocation.length = std::chrono::milliseconds(o.lease_ms);
  if (o.wait_ms) {
    allocation.wait = std::chrono::milliseconds(*o.wait_ms);
    if (choice->holder) say("waiting up to " + std::to_string(*o.wait_ms) + " ms for it to be free");
  }
  auto allocate = service.allocate(choice->dtu, choice->device, choice->unit, allocation);
  auto lease = co_await std::move(allocate);
  if (!lease.ok()) co_return fail("allocate " + target, lease.error());
  // The DTU counts the length from when it answered: 59 999 ms reads as the 60 s it is.
  const auto tenths =
      (std::chrono::duration_cast<std::chrono::milliseconds>(lease->length).count() + 50) / 100;
  say("allocated lease " + lease->id + " on " + target + " for " + std::to_string(tenths / 10) + "." +
      std::to_string(tenths % 10) + " s, holder " + lease->holder);

  int code = 0;
  if (o.hold) {
    say("holding " + target + " until SIGTERM or SIGINT (renewed automatically)");
    auto hold = stop->wait(std::nullopt);
    co_await std::move(hold);
    if (!lost_reason.empty()) co_return fail("hold", Error(Errc::closed, "the lease ended: " + lost_reason));
  } else {
    auto print = print_page(service, *lease, *choice, o.page_file);
    code = co_await std::move(print);
  }
  auto release = service.release(lease->id);
  auto released = co_await std::move(release);
  if (!released.ok()) co_return fail("release", released.error());
  say("released lease " + lease->id);
  service.close();
  co_return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A sample printer service: find a printer, lease it, print a test page in-band, release it."};
  app.footer("Exit status: 0 done, 1 failed, 2 bad usage, 3 the manager is unreachable.");
  Options o;
  o.socket = services::default_socket_path();
  app.add_option("--socket", o.socket,
                 "the manager's Unix socket (default $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--finder", o.finder_text, "finder JSON (default {\"function\": \"printer\"})");
  app.add_option("--wait-ms", o.wait_ms, "when the printer is held, wait this long for it")
      ->check(CLI::Range(1, 3600000));
  app.add_option("--lease-ms", o.lease_ms, "lease length (default: the policy's)")
      ->check(CLI::Range(0, 86400000));
  app.add_option("--page", o.page_file, "print this file instead of the built-in test page");
  app.add_flag("--hold", o.hold, "keep the lease until SIGTERM or SIGINT instead of printing");
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of each request")->check(CLI::Range(1, 600000));
  app.set_version_flag("--version", common::kVersion);
  try {
    app.parse(argc, argv);
    o.finder = nlohmann::json::parse(o.finder_text);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  } catch (const nlohmann::json::exception& e) {
    std::cerr << "dtu-sample-service: --finder: not JSON: " << e.what() << '\n';
    return kExitUsage;
  }
  if (auto checked = common::parse_finder(o.finder); !checked.ok()) {
    std::cerr << "dtu-sample-service: --finder: " << checked.error().detail << '\n';
    return kExitUsage;
  }
  asio::io_context io;
  auto stop = std::make_shared<services::Event>(io.get_executor());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const std::error_code& ec, int) {
    if (ec) return;
    say("stopping");
    stop->set();
    if (!o.hold) io.stop();  // nothing to finish: the manager releases what we held
  });
  int code = kExitFailed;
  auto task = [](Options opts, std::shared_ptr<services::Event> s, int& out,
                 asio::signal_set& sig) -> asio::awaitable<void> {
    auto op = run(std::move(opts), std::move(s));
    out = co_await std::move(op);
    sig.cancel();
  };
  common::spawn(io.get_executor(), task(o, stop, code, signals), common::Logger("dtu-sample-service"),
                "sample");
  io.run();
  return code;
}
