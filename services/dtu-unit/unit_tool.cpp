#include "unit_tool.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>

#include "dtu/client/client.hpp"
#include "dtu/common/async.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/finder.hpp"
#include "dtu/common/inband_messages.hpp"
#include "dtu/services/event.hpp"

namespace dtu::services::unit_tool {
namespace {

using asio::experimental::as_tuple;
using common::Errc;
using common::Error;

// How long the manager may take to send a finder's initial matches (it sends them at once).
constexpr common::Duration kSyncTimeout = std::chrono::seconds(10);
// Deadline of the release at the end: a manager in failover is retried this long, then the
// lease is left to expire on the DTU (the manager also releases it when we disconnect).
constexpr common::Duration kReleaseTimeout = std::chrono::seconds(10);

void say(const std::string& line) {
  std::cerr << "dtu-unit: " << line << '\n';
}

struct Target {
  std::string dtu;
  std::string device;
  std::uint32_t unit = 0;
};

std::string name_of(const Target& t) {
  return t.dtu + " " + t.device + " unit " + std::to_string(t.unit);
}

// One matched unit as the finder's cache shows it.
struct Candidate {
  Target target;
  common::UnitState state = common::UnitState::free;
  std::string holder;  // empty when free
};

std::string holder_text(const Candidate& c) {
  if (!c.holder.empty()) return "held by " + c.holder;
  return common::unit_state_name(c.state);  // unavailable: a sibling unit's lease blocks it
}

// The finder's matches, in the order the manager reported them, narrowed by --dtu/--device/--unit.
std::vector<Candidate> candidates(const std::vector<std::pair<std::string, std::string>>& order,
                                  const std::map<std::pair<std::string, std::string>, client::Match>& matches,
                                  const UnitToolOptions& o) {
  std::vector<Candidate> out;
  for (const auto& key : order) {
    auto it = matches.find(key);
    if (it == matches.end()) continue;
    if ((o.dtu && *o.dtu != key.first) || (o.device && *o.device != key.second)) continue;
    for (std::uint32_t n : it->second.units) {
      if (o.unit && *o.unit != n) continue;
      for (const auto& u : it->second.device.units) {
        if (u.unit != n) continue;
        out.push_back(Candidate{{key.first, key.second, n}, u.state, u.holder.value_or("")});
      }
    }
  }
  return out;
}

std::string describe_busy(const std::vector<Candidate>& all) {
  std::string text;
  for (const auto& c : all) {
    if (!text.empty()) text += "; ";
    text += name_of(c.target) + " " + holder_text(c);
  }
  return text;
}

// An error of the manager connection itself (not of the request): exit 3.
bool manager_gone(const client::Client& service, const Error& e) {
  return !service.connected() || e.code == make_error_code(Errc::link_lost) ||
         e.code == make_error_code(Errc::closed);
}

// The exit status and the advice for a failed allocation of `what`.
int allocation_failed(const client::Client& service, const std::string& what, const Error& e, bool waited) {
  say("allocate " + what + ": " + e.describe());
  if (e.code == make_error_code(Errc::refused)) {
    say(waited ? "the unit stayed busy for all of --wait-ms; try again later or ask its holder to release it"
               : "the unit is busy; wait for it with --wait-ms N, or ask its holder to release it");
    return kExitBusy;
  }
  if (e.code == make_error_code(Errc::not_found)) {
    say("no such unit; `dtu-unit list` shows the units there are");
    return kExitNoUnit;
  }
  if (manager_gone(service, e)) {
    say("lost the manager; is devmgr running?");
    return kExitUnreachable;
  }
  if (e.code == make_error_code(Errc::denied)) say("the policy forbids it; ask the administrator");
  if (e.code == make_error_code(Errc::unavailable)) say("the unit cannot be used now; try again later");
  return kExitFailed;
}

// The registered finder and what it has delivered.
struct FinderWatch {
  explicit FinderWatch(const asio::any_io_executor& ex) : synced(ex), changed(ex) {}
  Event synced;
  Event changed;  // any match came, changed or went since the last reset
  std::vector<std::pair<std::string, std::string>> order;
  client::FinderId id = 0;
};

// Registers `finder` and waits for its initial matches; nullptr after saying why (and setting
// `code`). A signal from then on ends the waits and closes the client.
asio::awaitable<std::shared_ptr<FinderWatch>> watch(const std::shared_ptr<client::Client>& client,
                                                    const nlohmann::json& finder, Interrupt& interrupt,
                                                    int& code) {
  client::Client& service = *client;
  auto w = std::make_shared<FinderWatch>(co_await asio::this_coro::executor);
  interrupt.on_request([w, client] {
    w->synced.set();
    w->changed.set();
    client->close();
  });
  client::FinderEvents events;
  events.matched = [w](const common::DeviceRecord& d, const std::vector<std::uint32_t>&) {
    // A device that went and came back keeps its first place (and is listed once).
    std::pair<std::string, std::string> key(d.dtu, d.device);
    if (std::find(w->order.begin(), w->order.end(), key) == w->order.end())
      w->order.push_back(std::move(key));
    w->changed.set();
  };
  events.changed = [w](const common::DeviceRecord&, const std::vector<std::uint32_t>&) { w->changed.set(); };
  events.gone = [w](const std::string&, const std::string&, const std::string&) { w->changed.set(); };
  events.synced = [w] { w->synced.set(); };
  auto add = service.add_finder(finder, std::move(events));
  auto id = co_await std::move(add);
  if (!id.ok()) {
    say("finder " + finder.dump() + ": " + id.error().describe());
    code = id.error().code == make_error_code(Errc::invalid_argument) ? kExitUsage
           : manager_gone(service, id.error())                        ? kExitUnreachable
                                                                      : kExitFailed;
    co_return nullptr;
  }
  w->id = *id;
  auto sync = w->synced.wait(kSyncTimeout);
  if (!co_await std::move(sync) && interrupt.signal() == 0) {
    say("the manager did not send the finder's matches within 10 s; is it overloaded?");
    code = kExitUnreachable;
    co_return nullptr;
  }
  co_return w;
}

// `list`: one line per matching unit, no lease.
asio::awaitable<int> list_units(const std::shared_ptr<client::Client>& service, const UnitToolOptions& o,
                                Interrupt& interrupt) {
  nlohmann::json finder = o.finder.value_or(nlohmann::json::object());
  int code = kExitDone;
  auto start = watch(service, finder, interrupt, code);
  auto w = co_await std::move(start);
  if (!w) co_return code;
  if (interrupt.signal() != 0) co_return kExitSignalBase + interrupt.signal();
  const auto all = candidates(w->order, service->matches(w->id), o);
  for (const auto& c : all) {
    std::cout << c.target.dtu << ' ' << c.target.device << ' ' << c.target.unit << ' '
              << common::unit_state_name(c.state) << ' ' << (c.holder.empty() ? "-" : c.holder) << '\n';
  }
  std::cout.flush();
  if (all.empty()) {
    say("no unit matches " + finder.dump());
    co_return kExitNoUnit;
  }
  co_return kExitDone;
}

struct Allocation {
  std::optional<client::Lease> lease;
  Target target;
  int code = kExitDone;  // when no lease
};

// Allocates the unit named by id, waiting in the manager's queue with --wait-ms. A signal closes
// the client: the allocation then fails quietly (the caller exits 128 + the signal).
asio::awaitable<Allocation> allocate_by_id(client::Client& service, const UnitToolOptions& o,
                                           const Interrupt& interrupt) {
  Allocation a;
  a.target = Target{*o.dtu, *o.device, *o.unit};
  client::AllocateOptions how;
  how.length = o.lease_length;
  how.wait = o.wait;
  auto allocate = service.allocate(a.target.dtu, a.target.device, a.target.unit, how);
  auto lease = co_await std::move(allocate);
  if (lease.ok()) {
    a.lease = std::move(lease.value());
  } else if (interrupt.signal() == 0) {
    a.code = allocation_failed(service, name_of(a.target), lease.error(), o.wait.has_value());
  }
  co_return a;
}

// Allocates the first matching unit that is free. With --wait-ms and every match busy: a single
// match waits in the manager's queue (first come, first served); several are watched until one
// comes free, which is then tried (someone quicker keeps us watching).
asio::awaitable<Allocation> allocate_by_finder(const std::shared_ptr<client::Client>& client,
                                               const UnitToolOptions& o, Interrupt& interrupt) {
  client::Client& service = *client;
  Allocation a;
  auto start = watch(client, *o.finder, interrupt, a.code);
  auto w = co_await std::move(start);
  if (!w) co_return a;
  const auto& clock = common::SystemClock::instance();
  const common::MonoTime deadline = clock.now() + o.wait.value_or(common::Duration{0});
  std::vector<Candidate> all;
  bool told_waiting = false;
  std::string refusal;
  for (;;) {
    if (interrupt.signal() != 0) co_return a;
    w->changed.reset();
    all = candidates(w->order, service.matches(w->id), o);
    if (all.empty()) {
      say("no unit matches " + o.finder->dump() + "; `dtu-unit list --finder '{}'` shows every unit");
      a.code = kExitNoUnit;
      co_return a;
    }
    for (const auto& c : all) {
      if (c.state != common::UnitState::free) continue;
      client::AllocateOptions how;
      how.length = o.lease_length;
      auto allocate = service.allocate(c.target.dtu, c.target.device, c.target.unit, how);
      auto lease = co_await std::move(allocate);
      if (lease.ok()) {
        a.lease = std::move(lease.value());
        a.target = c.target;
        co_return a;
      }
      if (interrupt.signal() != 0) co_return a;  // the signal closed the client
      if (lease.error().code != make_error_code(Errc::refused)) {
        a.code = allocation_failed(service, name_of(c.target), lease.error(), false);
        co_return a;
      }
      refusal = lease.error().detail;  // someone was quicker: the cache has not seen it yet
    }
    const common::MonoTime now = clock.now();
    if (!o.wait || now >= deadline) break;
    if (all.size() == 1) {
      say("waiting up to " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()) +
          " ms for " + name_of(all.front().target) + ", " + holder_text(all.front()));
      client::AllocateOptions how;
      how.length = o.lease_length;
      how.wait = deadline - now;
      a.target = all.front().target;
      auto allocate = service.allocate(a.target.dtu, a.target.device, a.target.unit, how);
      auto lease = co_await std::move(allocate);
      if (lease.ok()) {
        a.lease = std::move(lease.value());
      } else if (interrupt.signal() == 0) {
        a.code = allocation_failed(service, name_of(a.target), lease.error(), true);
      }
      co_return a;
    }
    if (!told_waiting) say("every matching unit is busy; waiting for one to come free");
    told_waiting = true;
    auto change = w->changed.wait(deadline - now);
    co_await std::move(change);
  }
  say("every matching unit is busy: " + (refusal.empty() ? describe_busy(all) : refusal));
  say(o.wait ? "none came free within --wait-ms; try again later"
             : "wait for one with --wait-ms N, or ask its holder to release it");
  a.code = kExitBusy;
  co_return a;
}

// The endpoint to use: --endpoint, or the unit's first bulk endpoint of that direction.
common::Result<std::uint8_t> pick_endpoint(const common::InbandWelcomeMsg& welcome,
                                           const std::optional<std::uint8_t>& asked, bool in) {
  if (asked) {
    if (((*asked & 0x80) != 0) != in) {
      return Error(Errc::invalid_argument, "--endpoint " + std::to_string(*asked) + " is an " +
                                               ((*asked & 0x80) != 0 ? "IN" : "OUT") + " endpoint");
    }
    return *asked;
  }
  for (const auto& ep : welcome.endpoints) {
    if (ep.type == "bulk" && ((ep.address & 0x80) != 0) == in) return ep.address;
  }
  return Error(Errc::not_found, std::string("the unit has no bulk ") + (in ? "IN" : "OUT") +
                                    " endpoint; name one with --endpoint");
}

// Puts back stdin's file status flags (asio makes a descriptor non-blocking to wait on it, and a
// terminal's flags are shared with the shell).
class RestoreStdinFlags {
 public:
  RestoreStdinFlags() : flags_(::fcntl(STDIN_FILENO, F_GETFL)) {}
  ~RestoreStdinFlags() {
    if (flags_ >= 0) ::fcntl(STDIN_FILENO, F_SETFL, flags_);
  }
  RestoreStdinFlags(const RestoreStdinFlags&) = delete;
  RestoreStdinFlags& operator=(const RestoreStdinFlags&) = delete;

 private:
  int flags_;
};

// Streams stdin to OUT `endpoint` as it arrives: a regular file is read in one go (that never
// blocks); anything else (a pipe, a socket, a terminal, a device) asynchronously, so a slow
// producer such as a print filter or a user typing never stalls the channel's heartbeats, the
// lease's renewal or the signals.
asio::awaitable<common::Result<std::size_t>> write_stdin(client::InbandChannel& channel,
                                                         std::uint8_t endpoint, Interrupt& interrupt) {
  struct stat st {};
  if (::fstat(STDIN_FILENO, &st) == 0 && S_ISREG(st.st_mode)) {
    const std::vector<std::uint8_t> data((std::istreambuf_iterator<char>(std::cin)),
                                         std::istreambuf_iterator<char>());
    auto stream = channel.stream(endpoint, data);
    co_return co_await std::move(stream);
  }
  const RestoreStdinFlags restore;
  const int fd = ::dup(STDIN_FILENO);
  if (fd < 0) co_return Error(Errc::io_error, std::string("reading stdin: ") + std::strerror(errno));
  auto in = std::make_shared<asio::posix::stream_descriptor>(co_await asio::this_coro::executor, fd);
  std::shared_ptr<client::InbandChannel> keep = channel.shared_from_this();
  interrupt.on_request([in, keep] {
    in->cancel();
    keep->close();
  });
  std::vector<std::uint8_t> chunk(common::kMaxUsbTransferBytes);
  std::size_t total = 0;
  while (true) {
    auto read = in->async_read_some(asio::buffer(chunk), as_tuple(asio::use_awaitable));
    auto [ec, n] = co_await std::move(read);
    if (n > 0 && interrupt.signal() == 0) {
      auto stream = channel.stream(endpoint, std::span<const std::uint8_t>(chunk.data(), n));
      auto sent = co_await std::move(stream);
      if (!sent.ok()) {
        co_return Error(sent.error().code,
                        sent.error().detail + " (after " + std::to_string(total) + " bytes)");
      }
      total += *sent;
    }
    if (interrupt.signal() != 0)
      co_return Error(Errc::closed, "interrupted after " + std::to_string(total) + " bytes");
    if (ec == asio::error::eof) co_return total;
    if (ec) co_return Error(Errc::io_error, "reading stdin: " + ec.message());
  }
}

// The verb itself on an open channel; the exit status.
asio::awaitable<int> transfer(client::InbandChannel& channel, const UnitToolOptions& o, Verb verb,
                              Interrupt& interrupt) {
  const auto& welcome = channel.welcome();
  switch (verb) {
    case Verb::write: {
      auto out = pick_endpoint(welcome, o.endpoint, false);
      if (!out.ok()) {
        say("write: " + out.error().describe());
        co_return kExitFailed;
      }
      auto stream = write_stdin(channel, *out, interrupt);
      auto sent = co_await std::move(stream);
      if (!sent.ok()) {
        say("write: " + sent.error().describe());
        co_return kExitFailed;
      }
      say("wrote " + std::to_string(*sent) + " bytes to endpoint " + std::to_string(*out));
      co_return kExitDone;
    }
    case Verb::read: {
      auto in = pick_endpoint(welcome, o.endpoint, true);
      if (!in.ok()) {
        say("read: " + in.error().describe());
        co_return kExitFailed;
      }
      say("reading endpoint " + std::to_string(*in));
      std::size_t total = 0;
      int code = kExitDone;
      while (total < o.bytes && interrupt.signal() == 0) {
        auto read = channel.read(*in, std::min<std::size_t>(o.bytes - total, common::kMaxUsbTransferBytes),
                                 o.timeout);
        auto got = co_await std::move(read);
        if (!got.ok()) {
          // A read that finds nothing more ends the output; nothing at all is a failure.
          if (got.error().code != make_error_code(Errc::timeout) || total == 0) {
            say("read: " + got.error().describe());
            code = kExitFailed;
          }
          break;
        }
        std::cout.write(reinterpret_cast<const char*>(got->data()),
                        static_cast<std::streamsize>(got->size()));
        total += got->size();
      }
      std::cout.flush();
      co_return code;
    }
    case Verb::device_id: {
      auto ask = channel.device_id(o.timeout);
      auto id = co_await std::move(ask);
      if (!id.ok()) {
        say("device-id: " + id.error().describe());
        co_return kExitFailed;
      }
      if (!id->has_value()) {
        say("device-id: the printer has no IEEE 1284 device id");
        co_return kExitFailed;
      }
      std::cout << **id << std::endl;
      co_return kExitDone;
    }
    case Verb::control: {
      auto ask = channel.control(o.setup, o.data, o.timeout);
      auto answer = co_await std::move(ask);
      if (!answer.ok()) {
        say("control: " + answer.error().describe());
        if (answer.error().code == make_error_code(Errc::refused)) {
          say("the device stalled the request or the DTU refused it; check --request-type and --index");
        }
        co_return kExitFailed;
      }
      if (o.setup.is_in()) {
        std::cout << common::to_hex(*answer) << std::endl;
      } else {
        say("control: sent " + std::to_string(o.data.size()) + " bytes");
      }
      co_return kExitDone;
    }
    case Verb::list:
      break;
  }
  co_return kExitUsage;
}

asio::awaitable<int> with_client(std::shared_ptr<client::Client> client, const UnitToolOptions& o, Verb verb,
                                 Interrupt& interrupt) {
  client::Client& service = *client;
  // A signal while waiting on the manager: closing the client ends every wait (the manager
  // releases whatever it granted us); during a transfer the channel is closed instead.
  interrupt.on_request([client] { client->close(); });
  if (verb == Verb::list) {
    auto list = list_units(client, o, interrupt);
    co_return co_await std::move(list);
  }
  Allocation a;
  if (o.finder) {
    auto pick = allocate_by_finder(client, o, interrupt);
    a = co_await std::move(pick);
  } else {
    auto pick = allocate_by_id(service, o, interrupt);
    a = co_await std::move(pick);
  }
  if (interrupt.signal() != 0) co_return kExitSignalBase + interrupt.signal();
  if (!a.lease) co_return a.code;
  const std::string what = name_of(a.target);
  if (o.finder) say("chose " + what + ", lease " + a.lease->id);

  std::string ended;
  service.on_lease_ended([&ended](const client::Lease&, const std::string& reason) { ended = reason; });
  int code = kExitDone;
  auto open = service.open_channel(*a.lease);
  auto channel = co_await std::move(open);
  // A signal while the channel opened ran the stop action of the allocation: it closed the client.
  const bool client_closed = interrupt.signal() != 0;
  if (client_closed) {
    code = kExitSignalBase + interrupt.signal();
  } else if (!channel.ok()) {
    say("in-band connect to " + what + ": " + channel.error().describe());
    say("the DTU is not reachable from this server now; try again later");
    code = kExitFailed;
  } else {
    auto ch = *channel;
    interrupt.on_request([ch] { ch->close(); });
    auto run = transfer(*ch, o, verb, interrupt);
    code = co_await std::move(run);
    ch->close();
  }
  if (channel.ok()) (*channel)->close();
  // The release: a second signal, or a manager that stays away, gives up on it (the manager
  // releases our leases when we disconnect; else the lease expires on the DTU).
  interrupt.on_next_request([client] { client->close(); });
  // A closed client has nothing left to release it with: the manager releases it as we go.
  if (!ended.empty()) {
    say("the lease on " + what + " ended: " + ended);
  } else if (!client_closed) {
    const auto ex = co_await asio::this_coro::executor;
    std::function<void()> give_up = [client] { client->close(); };
    common::DeadlineGuard guard(ex, kReleaseTimeout, std::move(give_up));
    auto release = service.release(a.lease->id);
    auto released = co_await std::move(release);
    if (!released.ok())
      say("release " + what + ": " + released.error().describe() + " (the lease will expire)");
  }
  if (interrupt.signal() != 0) co_return kExitSignalBase + interrupt.signal();
  co_return code;
}

}  // namespace

common::Result<nlohmann::json> read_finder_argument(const std::string& text) {
  std::string json_text = text;
  std::string origin = "the finder";
  if (!text.empty() && text.front() == '@') {
    const std::string path = text.substr(1);
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error(Errc::io_error, "cannot read " + path + ": " + std::strerror(errno));
    std::ostringstream all;
    all << in.rdbuf();
    json_text = all.str();
    origin = path;
  }
  nlohmann::json finder;
  try {
    finder = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    return Error(Errc::invalid_argument, origin + " is not JSON: " + e.what());
  }
  if (auto checked = common::parse_finder(finder); !checked.ok()) return checked.error();
  return finder;
}

std::optional<std::uint32_t> parse_number(std::string_view text, std::uint32_t max) {
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    text.remove_prefix(2);
  }
  if (text.empty() || text.size() > 10) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (base == 16 && c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (base == 16 && c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (digit < 0) return std::nullopt;
    value = value * static_cast<std::uint64_t>(base) + static_cast<std::uint64_t>(digit);
  }
  if (value > max) return std::nullopt;
  return static_cast<std::uint32_t>(value);
}

common::Result<common::Bytes> parse_hex_data(std::string_view text) {
  std::string digits;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c)) == 0 && c != ':') digits.push_back(c);
  }
  return common::from_hex(digits);
}

asio::awaitable<int> run_unit_tool(UnitToolOptions options, Verb verb, std::shared_ptr<Interrupt> interrupt) {
  client::ClientOptions how;
  how.socket = options.socket;
  how.name = "dtu-unit";
  auto connect =
      client::Client::connect(co_await asio::this_coro::executor, common::SystemClock::instance(), how);
  auto connected = co_await std::move(connect);
  if (!connected.ok()) {
    say("cannot reach the manager at " + options.socket + ": " + connected.error().describe());
    say("is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET.");
    co_return kExitUnreachable;
  }
  std::shared_ptr<client::Client> service = std::move(connected.value());
  if (interrupt->signal() != 0) co_return kExitSignalBase + interrupt->signal();
  service->on_connection([](bool up, const Error& why) {
    say(up ? std::string("reconnected to the manager; the lease is kept")
           : "lost the manager (" + why.describe() + "); reconnecting");
  });
  auto run = with_client(service, options, verb, *interrupt);
  const int code = co_await std::move(run);
  service->close();
  co_return code;
}

}  // namespace dtu::services::unit_tool
