#include "dtu/client/client.hpp"

#include <algorithm>
#include <limits>
#include <random>
#include <set>
#include <string_view>

#include <asio/experimental/as_tuple.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/backoff.hpp"
#include "dtu/common/config.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/log.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/service_messages.hpp"

namespace dtu::client {

using asio::experimental::as_tuple;
using common::Duration;
using common::Errc;
using common::Error;
using common::MonoTime;
using common::Result;

namespace {

using DeviceKey = std::pair<std::string, std::string>;  // (dtu, device)

// A lease is renewed when this fraction of its length has passed (the issue: "at a third").
constexpr int kRenewDivisor = 3;
// The shortest pause between two retries of a renewal or resumption.
constexpr Duration kMinRetry = std::chrono::milliseconds(50);
// Margin added to an allocate's wait for the reply's deadline: the manager answers a wait that
// timed out with the refusal, which must not race our own deadline.
constexpr Duration kWaitReplyMargin = std::chrono::seconds(2);

std::uint32_t to_ms(Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(ms, 0, std::numeric_limits<std::uint32_t>::max()));
}

// Reconnect and retry delays (common::backoff_delay), counting the failures since the last success.
class Backoff {
 public:
  Backoff(Duration min, Duration max) : min_(min), max_(max) {}

  Duration next(std::mt19937_64& rng) { return common::backoff_delay(min_, max_, failures_++, rng); }
  void reset() { failures_ = 0; }

 private:
  Duration min_;
  Duration max_;
  unsigned failures_ = 0;
};

// Whether a client-visible difference separates two records of one device (the stamp and the
// owner change on every report after a reconnect without anything a service cares about).
bool same_view(const common::DeviceRecord& a, const common::DeviceRecord& b) {
  common::DeviceRecord x = a;
  common::DeviceRecord y = b;
  x.stamp = {};
  y.stamp = {};
  x.owner.clear();
  y.owner.clear();
  return x == y;
}

// Why the DTU says a lease ended, from its not_found text "lease <id> has ended (<why>)";
// "ended" when it does not say.
std::string ended_reason(const std::string& detail) {
  static constexpr std::string_view kMarker = "has ended (";
  const auto at = detail.find(kMarker);
  if (at == std::string::npos) return "ended";
  const auto from = at + kMarker.size();
  const auto to = detail.find(')', from);
  if (to == std::string::npos || to == from) return "ended";
  return detail.substr(from, to - from);
}

bool is_transient(const Error& e) {
  return e.code == Errc::timeout || e.code == Errc::unavailable || e.code == Errc::link_lost ||
         e.code == Errc::closed || e.code == Errc::send_queue_full;
}

}  // namespace

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  struct FinderEntry {
    common::Finder finder;
    FinderEvents events;
    std::map<DeviceKey, Match> matches;
    bool adding = false;       // add_finder's registration is in flight
    bool resyncing = false;    // registered again after a reconnect, initial matches arriving
    std::set<DeviceKey> seen;  // while resyncing: the devices the manager reported again
  };

  struct LeaseEntry {
    LeaseEntry(Lease l, const asio::any_io_executor& ex, const ClientOptions& o)
        : lease(std::move(l)),
          wake(std::make_shared<asio::steady_timer>(ex)),
          retry(o.reconnect_min, o.reconnect_max) {}
    Lease lease;
    bool needs_resume = false;   // the manager does not know it (reconnect, DTU lost)
    bool lost_with_dtu = false;  // the manager said lease_ended dtu_lost
    MonoTime next_action{};
    std::shared_ptr<asio::steady_timer> wake;
    Backoff retry;
  };

  Impl(asio::any_io_executor executor, const common::Clock& c, ClientOptions o)
      : ex(std::move(executor)),
        clock(c),
        options(std::move(o)),
        connection_lost(ex),
        backoff_timer(ex),
        rng(std::random_device{}()),
        log(options.name) {}

  // --- connection ------------------------------------------------------------------------------

  void adopt(std::unique_ptr<services::ManagerClient> client) {
    manager = std::shared_ptr<services::ManagerClient>(std::move(client));
    manager_id = manager->manager_id();
    const std::uint64_t gen = ++generation;
    std::weak_ptr<Impl> weak = shared_from_this();
    manager->on_event([weak, gen](const common::Frame& frame) {
      auto self = weak.lock();
      if (self && !self->closed && self->generation == gen) self->on_event(frame);
    });
    manager->on_lease_ended([weak, gen](const common::LeaseEndedMsg& ended) {
      auto self = weak.lock();
      if (self && !self->closed && self->generation == gen) self->on_lease_ended_msg(ended);
    });
    manager->on_closed([weak, gen](const Error& why) {
      auto self = weak.lock();
      if (!self || self->generation != gen) return;
      self->close_reason = why;
      self->connection_lost.cancel();
    });
  }

  bool is_up() const { return !closed && manager && manager->is_open(); }

  // Watches the connection: when it drops, reconnects with backoff and resubmits.
  static asio::awaitable<void> supervise(std::shared_ptr<Impl> self) {
    for (;;) {
      while (self->is_up()) {
        self->connection_lost.expires_at(asio::steady_timer::time_point::max());
        auto wait = self->connection_lost.async_wait(as_tuple(asio::use_awaitable));
        co_await std::move(wait);
      }
      if (self->closed) co_return;
      self->manager.reset();
      self->log.warn("", "manager_lost", {{"reason", self->close_reason.describe()}});
      self->notify_connection(false, self->close_reason);
      if (self->closed || !self->options.reconnect) co_return;
      Backoff backoff(self->options.reconnect_min, self->options.reconnect_max);
      while (!self->manager) {
        self->backoff_timer.expires_after(backoff.next(self->rng));
        auto sleep = self->backoff_timer.async_wait(as_tuple(asio::use_awaitable));
        co_await std::move(sleep);
        if (self->closed) co_return;
        auto connect = services::ManagerClient::connect(self->options.socket, self->options.name, self->clock,
                                                        self->options.request_timeout);
        auto client = co_await std::move(connect);
        if (self->closed) co_return;
        if (!client.ok()) {
          self->log.debug("", "reconnect_failed", {{"reason", client.error().describe()}});
          continue;
        }
        self->adopt(std::move(client.value()));
      }
      self->log.info("", "manager_reconnected", {{"manager", self->manager_id}});
      self->resume_leases();  // first: their expiry does not wait for the finders
      auto resubmit = resubmit_finders(self);
      co_await std::move(resubmit);
      if (self->closed) co_return;
      if (self->is_up()) self->notify_connection(true, Error());
    }
  }

  void notify_connection(bool connected, const Error& why) {
    if (auto handler = connection_handler) handler(connected, why);
  }

  // --- finders ---------------------------------------------------------------------------------

  // Registers every finder again under its id; their initial matches are reconciled with the
  // cache as they arrive (on_matched, then finish_resync at finder_synced).
  static asio::awaitable<void> resubmit_finders(std::shared_ptr<Impl> self) {
    std::vector<FinderId> ids;
    for (auto& [id, entry] : self->finders) {
      if (entry.adding) continue;  // its own registration fails with the old connection
      entry.resyncing = true;
      entry.seen.clear();
      ids.push_back(id);
    }
    for (FinderId id : ids) {
      auto it = self->finders.find(id);
      if (it == self->finders.end() || !self->is_up()) continue;
      auto manager = self->manager;
      // A named message: call() holds a reference to it until the coroutine completes.
      const common::RegisterFinderMsg msg{id, it->second.finder};
      auto call = manager->call<common::AckMsg>(msg, self->options.request_timeout);
      auto ack = co_await std::move(call);
      if (self->closed) co_return;
      if (!ack.ok()) {
        self->log.warn("", "finder_resubmit_failed", {{"finder", id}, {"reason", ack.error().describe()}});
        if (!is_transient(ack.error())) {
          self->finish_resync(id);  // the manager will not match it
        } else if (self->is_up()) {
          // The connection is up but did not answer: start over on a new one.
          self->manager->close();
          co_return;
        }
      } else {
        self->log.debug("", "finder_resubmitted", {{"finder", id}});
      }
    }
  }

  void on_event(const common::Frame& frame) {
    switch (frame.type) {
      case common::MessageType::finder_matched: {
        auto msg = common::from_frame<common::FinderMatchedMsg>(frame);
        if (msg.ok()) on_matched(msg->finder_id, std::move(msg->device), std::move(msg->units), false);
        if (!msg.ok()) bad_event(frame, msg.error());
        return;
      }
      case common::MessageType::finder_changed: {
        auto msg = common::from_frame<common::FinderChangedMsg>(frame);
        if (msg.ok()) on_matched(msg->finder_id, std::move(msg->device), std::move(msg->units), true);
        if (!msg.ok()) bad_event(frame, msg.error());
        return;
      }
      case common::MessageType::finder_gone: {
        auto msg = common::from_frame<common::FinderGoneMsg>(frame);
        if (msg.ok()) on_gone(msg->finder_id, msg->dtu, msg->device, msg->reason);
        if (!msg.ok()) bad_event(frame, msg.error());
        return;
      }
      case common::MessageType::finder_synced: {
        auto msg = common::from_frame<common::FinderSyncedMsg>(frame);
        if (msg.ok()) finish_resync(msg->finder_id, true);
        if (!msg.ok()) bad_event(frame, msg.error());
        return;
      }
      default:
        log.warn("", "unexpected_event", {{"type", common::message_type_name(frame.type)}});
    }
  }

  void bad_event(const common::Frame& frame, const Error& error) const {
    log.warn("", "bad_event",
             {{"type", common::message_type_name(frame.type)}, {"reason", error.describe()}});
  }

  void on_matched(FinderId id, common::DeviceRecord device, std::vector<std::uint32_t> units, bool changed) {
    auto it = finders.find(id);
    if (it == finders.end()) return;  // unregistered meanwhile
    FinderEntry& entry = it->second;
    DeviceKey key{device.dtu, device.device};
    auto known = entry.matches.find(key);
    bool deliver_changed = changed;
    if (entry.resyncing) entry.seen.insert(key);
    if (entry.resyncing && !changed) {
      if (known != entry.matches.end()) {
        // Matched again after a reconnect: silent unless something a service sees differs.
        if (same_view(known->second.device, device) && known->second.units == units) return;
        deliver_changed = true;
      }
    } else if (changed && known == entry.matches.end()) {
      deliver_changed = false;  // a change of a device we never saw matched: it is news
    }
    entry.matches[key] = Match{device, units};
    auto handler = deliver_changed ? entry.events.changed : entry.events.matched;
    if (handler) handler(device, units);
  }

  void on_gone(FinderId id, const std::string& dtu, const std::string& device, const std::string& reason) {
    auto it = finders.find(id);
    if (it == finders.end()) return;
    it->second.matches.erase({dtu, device});
    it->second.seen.erase({dtu, device});
    if (auto handler = it->second.events.gone) handler(dtu, device, reason);
  }

  // The end of a finder's initial matches (`synced`): after a reconnect, what the manager did
  // not report again is gone. Also used when a resubmission failed for good (no synced then).
  void finish_resync(FinderId id, bool synced = false) {
    auto it = finders.find(id);
    if (it == finders.end()) return;
    std::vector<DeviceKey> lost;
    if (it->second.resyncing) {
      for (const auto& [key, match] : it->second.matches) {
        if (!it->second.seen.contains(key)) lost.push_back(key);
      }
      for (const auto& key : lost) it->second.matches.erase(key);
      it->second.resyncing = false;
      it->second.seen.clear();
    }
    for (const auto& key : lost) {
      auto again = finders.find(id);  // a callback may have removed it
      if (closed || again == finders.end()) return;
      if (auto handler = again->second.events.gone) handler(key.first, key.second, "resync");
    }
    if (!synced) return;
    auto again = finders.find(id);
    if (closed || again == finders.end()) return;
    if (auto handler = again->second.events.synced) handler();
  }

  static asio::awaitable<Result<FinderId>> add_finder(std::shared_ptr<Impl> self, common::Finder finder,
                                                      FinderEvents events) {
    if (!self->is_up()) co_return self->not_connected();
    const FinderId id = self->next_finder_id++;
    FinderEntry entry;
    entry.finder = finder;
    entry.events = std::move(events);
    entry.adding = true;
    // Before the request: the matches may arrive before this coroutine resumes.
    self->finders.emplace(id, std::move(entry));
    auto manager = self->manager;
    const common::RegisterFinderMsg msg{id, std::move(finder)};
    auto call = manager->call<common::AckMsg>(msg, self->options.request_timeout);
    auto ack = co_await std::move(call);
    auto it = self->finders.find(id);
    if (!ack.ok()) {
      if (it != self->finders.end()) self->finders.erase(it);
      co_return ack.error();
    }
    if (it != self->finders.end()) it->second.adding = false;
    if (self->closed) co_return Error(Errc::closed, "the client was closed");
    co_return id;
  }

  static asio::awaitable<Result<void>> remove_finder(std::shared_ptr<Impl> self, FinderId id) {
    if (self->finders.erase(id) == 0) co_return Error(Errc::not_found, "no finder " + std::to_string(id));
    if (!self->is_up()) co_return Result<void>{};  // the next connection will not register it
    auto manager = self->manager;
    const common::UnregisterFinderMsg msg{id};
    auto call = manager->call<common::AckMsg>(msg, self->options.request_timeout);
    auto ack = co_await std::move(call);
    if (!ack.ok() && !is_transient(ack.error())) co_return ack.error();
    co_return Result<void>{};
  }

  // --- leases ----------------------------------------------------------------------------------

  Lease lease_from_grant(const common::LeaseGrantedMsg& grant, Duration asked, bool keep) const {
    Lease lease;
    lease.id = grant.lease;
    lease.dtu = grant.dtu;
    lease.device = grant.device;
    lease.unit = grant.unit;
    lease.holder = grant.holder;
    const Duration granted = std::chrono::milliseconds(grant.expires_in_ms);
    lease.length = asked > Duration::zero() ? std::min(asked, granted) : granted;
    lease.expires = clock.now() + granted;
    lease.token = grant.token.value_or("");
    lease.inband = grant.inband.value_or("");
    lease.state_token = grant.state_token.value_or("");
    lease.keep = keep;
    return lease;
  }

  static asio::awaitable<Result<Lease>> allocate(std::shared_ptr<Impl> self, std::string dtu,
                                                 std::string device, std::uint32_t unit,
                                                 AllocateOptions options) {
    if (!self->is_up()) co_return self->not_connected();
    common::AllocateMsg msg{std::move(dtu),        std::move(device), unit,
                            to_ms(options.length), std::nullopt,      options.keep};
    Duration timeout = self->options.request_timeout;
    if (options.wait) {
      msg.wait_ms = to_ms(*options.wait);
      timeout += *options.wait + kWaitReplyMargin;
    }
    auto manager = self->manager;
    auto call = manager->call<common::LeaseGrantedMsg>(msg, timeout);
    auto grant = co_await std::move(call);
    if (!grant.ok()) co_return grant.error();
    Lease lease = self->lease_from_grant(*grant, options.length, options.keep);
    if (self->closed) co_return Error(Errc::closed, "the client was closed");
    self->track(lease);
    co_return lease;
  }

  void track(const Lease& lease) {
    auto [it, inserted] = leases.try_emplace(lease.id, lease, ex, options);
    if (!inserted) it->second.lease = lease;
    it->second.next_action = clock.now() + lease.length / kRenewDivisor;
    if (inserted) {
      common::spawn(ex, keep_alive(shared_from_this(), lease.id), log, "keep lease " + lease.id);
    } else {
      it->second.wake->cancel();
    }
  }

  // Renews (or, after a reconnect, resumes) one lease at a third of its length until it ends.
  static asio::awaitable<void> keep_alive(std::shared_ptr<Impl> self, std::string id) {
    for (;;) {
      auto it = self->leases.find(id);
      if (self->closed || it == self->leases.end()) co_return;
      auto wake = it->second.wake;
      const MonoTime now = self->clock.now();
      if (now < it->second.next_action) {
        wake->expires_after(it->second.next_action - now);
        auto sleep = wake->async_wait(as_tuple(asio::use_awaitable));
        co_await std::move(sleep);
        continue;  // woken early (reconnect, lease_ended) or on time: look again
      }
      LeaseEntry& entry = it->second;
      if (now >= entry.lease.expires) {
        self->end_lease(id, entry.lost_with_dtu ? "dtu_lost" : "expired");
        co_return;
      }
      if (!self->is_up()) {  // the supervisor wakes us once reconnected
        entry.next_action = self->retry_at(entry, now);
        continue;
      }
      const bool resume = entry.needs_resume;
      const Lease lease = entry.lease;
      auto manager = self->manager;
      Result<common::LeaseGrantedMsg> answer = Error(Errc::closed);
      if (resume) {
        // The state token lets a manager that never saw this lease restore its terms.
        common::ResumeLeaseMsg msg{
            lease.dtu, lease.id, lease.token, to_ms(lease.length),
            lease.state_token.empty() ? std::nullopt : std::optional(lease.state_token)};
        auto call = manager->call<common::LeaseGrantedMsg>(msg, self->options.request_timeout);
        answer = co_await std::move(call);
      } else {
        common::RenewMsg msg{lease.dtu, lease.id, to_ms(lease.length)};
        auto call = manager->call<common::LeaseGrantedMsg>(msg, self->options.request_timeout);
        answer = co_await std::move(call);
      }
      it = self->leases.find(id);
      if (self->closed || it == self->leases.end()) co_return;  // released or ended meanwhile
      self->on_keep_alive_answer(it->second, resume, answer);
      if (!self->leases.contains(id)) co_return;
    }
  }

  // When to retry a renewal or resumption: after the backoff, but no later than a sixth of the
  // lease's length before it expires (a backoff grown during a failover must not outlast the
  // lease), and never sooner than kMinRetry from now.
  MonoTime retry_at(LeaseEntry& entry, MonoTime now) {
    const MonoTime backoff = now + entry.retry.next(rng);
    const MonoTime latest = entry.lease.expires - entry.lease.length / 6;
    return std::max(now + kMinRetry, std::min(backoff, latest));
  }

  void on_keep_alive_answer(LeaseEntry& entry, bool resume, const Result<common::LeaseGrantedMsg>& answer) {
    const MonoTime now = clock.now();
    const std::string id = entry.lease.id;
    if (answer.ok()) {
      entry.lease.expires = now + std::chrono::milliseconds(answer->expires_in_ms);
      if (!answer->holder.empty()) entry.lease.holder = answer->holder;
      if (answer->state_token) entry.lease.state_token = *answer->state_token;  // a new owner's
      entry.next_action = now + entry.lease.length / kRenewDivisor;
      entry.retry.reset();
      if (resume) {
        entry.needs_resume = false;
        entry.lost_with_dtu = false;
        log.info("", "lease_resumed", {{"lease", id}, {"dtu", entry.lease.dtu}});
      }
      return;
    }
    const Error& error = answer.error();
    // A resumption the DTU answers not_found: the lease has ended there ("lease … has ended
    // (expired)"), nothing left to take over.
    if (resume && error.code == Errc::not_found) {
      log.warn("", "lease_resume_failed", {{"lease", id}, {"reason", error.describe()}});
      end_lease(id, ended_reason(error.detail));
      return;
    }
    // A renewal answered not_found: the manager does not know the lease (it lost its DTU, or
    // restarted): take it over with resume_lease. Transient errors: retry. Both until its expiry.
    if (is_transient(error) || error.code == Errc::not_found) {
      if (error.code == Errc::not_found) entry.needs_resume = true;
      entry.next_action = retry_at(entry, now);
      log.debug("", resume ? "lease_resume_retry" : "lease_renew_retry",
                {{"lease", id}, {"reason", error.describe()}});
      return;
    }
    log.warn("", resume ? "lease_resume_failed" : "lease_renew_failed",
             {{"lease", id}, {"reason", error.describe()}});
    std::string reason = error.code.message();
    if (error.code.category() == common::dtu_category())
      reason = common::errc_name(static_cast<Errc>(error.code.value()));
    end_lease(id, reason);
  }

  // Every lease is taken over again on the new connection, at once.
  void resume_leases() {
    const MonoTime now = clock.now();
    for (auto& [id, entry] : leases) {
      entry.needs_resume = true;
      entry.retry.reset();
      entry.next_action = now;
      entry.wake->cancel();
    }
  }

  void on_lease_ended_msg(const common::LeaseEndedMsg& ended) {
    auto it = leases.find(ended.lease);
    if (it == leases.end()) return;  // released by us, or not ours
    if (ended.reason == "dtu_lost") {
      // The DTU keeps the lease until it expires: take it over when the DTU is back.
      it->second.needs_resume = true;
      it->second.lost_with_dtu = true;
      it->second.next_action = retry_at(it->second, clock.now());
      it->second.wake->cancel();
      log.info("", "lease_in_doubt", {{"lease", ended.lease}, {"dtu", ended.dtu}});
      return;
    }
    end_lease(ended.lease, ended.reason);
  }

  void end_lease(const std::string& id, const std::string& reason) {
    auto it = leases.find(id);
    if (it == leases.end()) return;
    Lease lease = it->second.lease;
    it->second.wake->cancel();
    leases.erase(it);
    log.info("", "lease_ended", {{"lease", id}, {"reason", reason}});
    if (closed) return;
    if (auto handler = lease_ended_handler) handler(lease, reason);
  }

  static asio::awaitable<Result<Lease>> renew(std::shared_ptr<Impl> self, std::string id, Duration length) {
    auto it = self->leases.find(id);
    if (it == self->leases.end()) co_return Error(Errc::not_found, "no lease " + id + " held by this client");
    if (!self->is_up()) co_return self->not_connected();
    if (length > Duration::zero()) it->second.lease.length = length;
    common::RenewMsg msg{it->second.lease.dtu, id, to_ms(it->second.lease.length)};
    auto manager = self->manager;
    auto call = manager->call<common::LeaseGrantedMsg>(msg, self->options.request_timeout);
    auto answer = co_await std::move(call);
    if (!answer.ok()) co_return answer.error();
    it = self->leases.find(id);
    if (it == self->leases.end()) co_return Error(Errc::not_found, "lease " + id + " ended meanwhile");
    const MonoTime now = self->clock.now();
    it->second.lease.expires = now + std::chrono::milliseconds(answer->expires_in_ms);
    if (answer->state_token) it->second.lease.state_token = *answer->state_token;
    it->second.next_action = now + it->second.lease.length / kRenewDivisor;
    it->second.wake->cancel();
    co_return it->second.lease;
  }

  // Forgets the lease at once (no more renewals), then tells the DTU through the manager. A
  // release that meets a failover (no manager, or the DTU's owner not reachable yet) is retried
  // with backoff until an owner answers or the lease would have expired anyway, so the unit is
  // freed as soon as the group can, not at its expiry.
  static asio::awaitable<Result<void>> release(std::shared_ptr<Impl> self, std::string id) {
    auto it = self->leases.find(id);
    if (it == self->leases.end()) co_return Error(Errc::not_found, "no lease " + id + " held by this client");
    const std::string dtu = it->second.lease.dtu;
    const MonoTime expires = it->second.lease.expires;
    it->second.wake->cancel();
    self->leases.erase(it);
    Backoff retry(self->options.reconnect_min, self->options.reconnect_max);
    asio::steady_timer sleep_timer(self->ex);
    for (;;) {
      Result<common::AckMsg> ack = self->not_connected();
      if (self->is_up()) {
        auto manager = self->manager;
        const common::ReleaseMsg msg{dtu, id};
        auto call = manager->call<common::AckMsg>(msg, self->options.request_timeout);
        ack = co_await std::move(call);
      }
      if (ack.ok()) co_return Result<void>{};
      const Duration delay = retry.next(self->rng);
      if (self->closed || !is_transient(ack.error()) || self->clock.now() + delay >= expires) co_return ack.error();
      self->log.debug("", "lease_release_retry", {{"lease", id}, {"reason", ack.error().describe()}});
      sleep_timer.expires_after(delay);
      auto sleep = sleep_timer.async_wait(as_tuple(asio::use_awaitable));
      co_await std::move(sleep);
    }
  }

  Error not_connected() const {
    if (closed) return Error(Errc::closed, "the client was closed");
    return Error(Errc::unavailable, "not connected to the manager at " + options.socket + " (reconnecting)");
  }

  void close() {
    if (closed) return;
    closed = true;
    for (auto& [id, entry] : leases) entry.wake->cancel();
    leases.clear();
    finders.clear();
    lease_ended_handler = nullptr;
    connection_handler = nullptr;
    connection_lost.cancel();
    backoff_timer.cancel();
    if (manager) manager->close();
  }

  asio::any_io_executor ex;
  const common::Clock& clock;
  ClientOptions options;
  std::shared_ptr<services::ManagerClient> manager;
  std::string manager_id;
  std::uint64_t generation = 0;  // of the connection: callbacks of an older one are ignored
  Error close_reason{Errc::closed, "connection closed"};
  bool closed = false;
  FinderId next_finder_id = 1;
  std::map<FinderId, FinderEntry> finders;
  std::map<std::string, LeaseEntry> leases;
  std::function<void(const Lease&, const std::string&)> lease_ended_handler;
  std::function<void(bool, const Error&)> connection_handler;
  asio::steady_timer connection_lost;  // cancelled when the connection closes: wakes supervise()
  asio::steady_timer backoff_timer;
  std::mt19937_64 rng;
  common::Logger log;
};

asio::awaitable<Result<std::unique_ptr<Client>>> Client::connect(asio::any_io_executor ex,
                                                                 const common::Clock& clock,
                                                                 ClientOptions options) {
  auto impl = std::make_shared<Impl>(ex, clock, std::move(options));
  auto connect = services::ManagerClient::connect(impl->options.socket, impl->options.name, clock,
                                                  impl->options.request_timeout);
  auto manager = co_await std::move(connect);
  if (!manager.ok()) co_return manager.error();
  impl->adopt(std::move(manager.value()));
  common::spawn(ex, Impl::supervise(impl), impl->log, "supervise the manager connection");
  co_return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::~Client() {
  close();
}

asio::awaitable<Result<FinderId>> Client::add_finder(common::Finder finder, FinderEvents events) {
  return Impl::add_finder(impl_, std::move(finder), std::move(events));
}

asio::awaitable<Result<FinderId>> Client::add_finder(const nlohmann::json& finder, FinderEvents events) {
  auto parsed = common::parse_finder(finder);
  if (!parsed.ok()) {
    return [](Error error) -> asio::awaitable<Result<FinderId>> { co_return error; }(parsed.error());
  }
  return Impl::add_finder(impl_, std::move(parsed.value()), std::move(events));
}

asio::awaitable<Result<void>> Client::remove_finder(FinderId id) {
  return Impl::remove_finder(impl_, id);
}

std::map<std::pair<std::string, std::string>, Match> Client::matches(FinderId id) const {
  auto it = impl_->finders.find(id);
  if (it == impl_->finders.end()) return {};
  return it->second.matches;
}

asio::awaitable<Result<Lease>> Client::allocate(std::string dtu, std::string device, std::uint32_t unit,
                                                AllocateOptions options) {
  return Impl::allocate(impl_, std::move(dtu), std::move(device), unit, std::move(options));
}

asio::awaitable<Result<Lease>> Client::renew(const std::string& lease_id, Duration length) {
  return Impl::renew(impl_, lease_id, length);
}

asio::awaitable<Result<void>> Client::release(const std::string& lease_id) {
  return Impl::release(impl_, lease_id);
}

std::map<std::string, Lease> Client::leases() const {
  std::map<std::string, Lease> out;
  for (const auto& [id, entry] : impl_->leases) out.emplace(id, entry.lease);
  return out;
}

asio::awaitable<Result<std::shared_ptr<InbandChannel>>> Client::open_channel(const Lease& lease) {
  auto endpoint = common::parse_endpoint(lease.inband);
  auto token = common::from_hex(lease.token);
  if (!endpoint.ok() || !token.ok()) {
    return [](std::string id) -> asio::awaitable<Result<std::shared_ptr<InbandChannel>>> {
      co_return Error(Errc::invalid_argument, "lease " + id + " has no usable in-band endpoint or token");
    }(lease.id);
  }
  return InbandChannel::connect(impl_->ex, impl_->clock, *endpoint, lease.id, *token,
                                impl_->options.request_timeout);
}

void Client::on_lease_ended(std::function<void(const Lease&, const std::string&)> handler) {
  impl_->lease_ended_handler = std::move(handler);
}

void Client::on_connection(std::function<void(bool, const Error&)> handler) {
  impl_->connection_handler = std::move(handler);
}

bool Client::connected() const {
  return impl_->is_up();
}

const std::string& Client::manager_id() const {
  return impl_->manager_id;
}

std::shared_ptr<services::ManagerClient> Client::manager() const {
  return impl_->is_up() ? impl_->manager : nullptr;
}

void Client::close() {
  impl_->close();
}

}  // namespace dtu::client
