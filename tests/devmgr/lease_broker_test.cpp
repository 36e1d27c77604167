// LeaseBroker and failover: a fake DTU behind a real DtuSession (support/fake_dtu.hpp) records every
// lease operation the broker sends it. Every operation carries the fence (the claim stamp of the
// DTU's current link); a grant carries a state token to the DTU and to the service; adopt()
// restores the holder of a lease the DTU brings from another manager when its token verifies
// (binding it at once to its client when that is still connected here), and keeps (never
// releases) one whose token is missing, tampered or foreign.
#include "dtu/devmgr/lease_broker.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>

#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/common/state_token.hpp"
#include "dtu/devmgr/dtu_session.hpp"
#include "dtu/devmgr/policy.hpp"
#include "support/async_client.hpp"
#include "support/fake_dtu.hpp"
#include "support/log_capture.hpp"

namespace {

namespace common = dtu::common;
using common::DeviceRecord;
using common::Errc;
using common::Frame;
using common::MessageType;
using dtu::devmgr::DeviceList;
using dtu::devmgr::DtuSession;
using dtu::devmgr::LeaseBroker;
using dtu::devmgr::LeaseHolder;
using dtu::devmgr::Policy;
using dtu::devmgr::SessionTable;
using dtu::testing::FakeDtu;
using LocalSocket = asio::local::stream_protocol::socket;
using Side = common::FilamentMux::Side;
using std::chrono::milliseconds;

constexpr auto kLimit = std::chrono::seconds(10);
const common::Stamp kClaim{1700000000000000, 42, 0};

DeviceRecord printer(const std::string& dtu) {
  DeviceRecord r;
  r.dtu = dtu;
  r.device = "1-1";
  r.vid = 0x04b8;
  r.pid = 0x0202;
  common::UnitRecord u;
  u.unit = 0;
  u.interfaces = {0};
  u.cls = 7;
  u.function = "printer";
  r.units.push_back(u);
  r.stamp = common::Stamp{kClaim.boot_epoch, 1, 0};
  return r;
}

// A service: its identity, and the events it was sent.
class Holder : public LeaseHolder {
 public:
  Holder(unsigned uid, std::string name, std::string origin = {}, unsigned pid = 77,
         std::string client = "svc")
      : uid_(uid),
        name_(std::move(name)),
        origin_(std::move(origin)),
        pid_(pid),
        client_(std::move(client)) {}
  unsigned uid() const override { return uid_; }
  unsigned gid() const override { return 100; }
  unsigned pid() const override { return pid_; }
  std::string holder_name() const override { return name_; }
  std::string client_name() const override { return client_; }
  void notify(Frame frame) override {
    auto ended = common::from_frame<common::LeaseEndedMsg>(frame);
    events.push_back(ended.ok() ? "lease_ended " + ended->lease + " " + ended->reason : "?");
  }
  std::string origin() const override { return origin_; }
  std::vector<std::string> events;

 private:
  unsigned uid_;
  std::string name_;
  std::string origin_;
  unsigned pid_;
  std::string client_;
};

// One manager "M" with its LeaseBroker, and DTUs connected to it through real DtuSessions.
class Site {
 public:
  explicit Site(bool with_keys = true)
      : leases(LeaseBroker::Context{"M", io.get_executor(), &common::SystemClock::instance(),
                                    [this](const std::string& dtu) -> std::shared_ptr<DtuSession> {
                                      auto it = dtus.find(dtu);
                                      return it == dtus.end() ? nullptr : it->second;
                                    },
                                    &devices, &sessions, [this]() -> const Policy& { return policy; }},
               common::Logger("M")) {
    if (with_keys) leases.set_group_keys(keys);
    leases.set_universal_time([] { return std::int64_t{1700000000123456}; });
    leases.set_local_holders([this] { return connected; });
  }
  ~Site() {
    for (auto& link : links_) link->close(common::Error(Errc::closed, "test over"));
    try {
      io.restart();
      io.run_for(std::chrono::milliseconds(200));
    } catch (...) {
    }
  }

  // A DTU connects: hello, then a snapshot with its claim stamp, one printer and `reports`.
  std::shared_ptr<FakeDtu> attach(const std::string& dtu, std::vector<common::LeaseReport> reports = {}) {
    DtuSession::Hooks hooks;
    hooks.on_active = [this](const std::shared_ptr<DtuSession>& s) { dtus[s->dtu()] = s; };
    hooks.on_leases = [this](const std::shared_ptr<DtuSession>& s,
                             const std::vector<common::LeaseReport>& l) { leases.adopt(s->dtu(), l); };
    hooks.on_lease_ended = [this](const common::LeaseEndedMsg& ended) { leases.lease_ended(ended); };
    FakeDtu::Options options;
    options.boot_epoch = kClaim.boot_epoch;
    options.renew_holder = "svc[77]@M";
    auto fake = FakeDtu::connect(
        io,
        [this](LocalSocket socket, Side side, std::string peer) {
          return make_link(std::move(socket), side, std::move(peer));
        },
        dtu, "M", devices, std::move(hooks), std::move(options));
    REQUIRE(run_until([&] { return dtus.contains(dtu); }));
    fake->post(common::DeviceSnapshotMsg{dtu, kClaim, {printer(dtu)}, std::move(reports)});
    REQUIRE(
        run_until([&] { return dtus.at(dtu)->claim().has_value() && devices.find(dtu, "1-1") != nullptr; }));
    return fake;
  }

  bool run_until(const std::function<bool()>& done) {
    return dtu::testing::run_io_until(io, done, kLimit, milliseconds(5));
  }
  void settle() {
    io.restart();
    io.run_for(milliseconds(100));
  }

  template <typename T>
  common::Result<T> wait(const std::function<void(LeaseBroker::Done<T>)>& call) {
    std::optional<common::Result<T>> answer;
    call([&](common::Result<T> r) { answer = std::move(r); });
    REQUIRE(run_until([&] { return answer.has_value(); }));
    return std::move(*answer);
  }

  asio::io_context io;
  common::GroupKeys keys{common::generate_key(), std::nullopt};
  DeviceList devices;
  SessionTable sessions;
  Policy policy = Policy::builtin();
  LeaseBroker leases;
  std::map<std::string, std::shared_ptr<DtuSession>> dtus;
  // The local clients connected to "M" right now.
  std::vector<std::shared_ptr<LeaseHolder>> connected;

 private:
  std::shared_ptr<common::Link> make_link(LocalSocket socket, Side side, std::string peer) {
    common::Link::Options options;
    options.heartbeats = false;
    auto link = common::Link::create(
        io.get_executor(), std::make_unique<common::UnixTransport>(std::move(socket)), side,
        common::SystemClock::instance(), common::Logger("test"), std::move(peer), options);
    links_.push_back(link);
    return link;
  }
  std::vector<std::shared_ptr<common::Link>> links_;
};

common::Result<common::LeaseGrantedMsg> allocate(Site& site, const std::shared_ptr<Holder>& holder) {
  return site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.allocate(holder, common::AllocateMsg{"dtu-1", "1-1", 0, 30000, std::nullopt, false},
                         std::move(done));
  });
}

// A token as manager `issuer` would have signed it for a service of `origin`.
common::StateToken token_for(const std::string& origin, unsigned uid, const std::string& holder) {
  common::StateToken t;
  t.dtu = "dtu-1";
  t.device = "1-1";
  t.unit = 0;
  t.holder = holder;
  t.origin = origin;
  t.client = "svc";
  t.uid = uid;
  t.gid = 100;
  t.pid = 77;
  t.rule = "default";
  t.length_ms = 30000;
  t.issued_by = "A";
  t.issued_us = 1700000000000000;
  return t;
}

common::LeaseReport report(const std::string& lease, const std::string& holder,
                           std::optional<std::string> token) {
  return common::LeaseReport{lease, "1-1", 0, holder, 1234, 25000, std::move(token)};
}

}  // namespace

TEST_CASE("Every lease operation to a DTU carries the claim stamp of its current link as the fence") {
  Site site;
  auto dtu = site.attach("dtu-1");
  auto holder = std::make_shared<Holder>(1234, "svc[77]@M");
  auto granted = allocate(site, holder);
  REQUIRE_MESSAGE(granted.ok(), granted.error().describe());
  REQUIRE(dtu->requests.size() == 1);
  CHECK(dtu->requests[0].fence == std::optional<common::Stamp>(kClaim));

  auto renewed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.renew(holder, common::RenewMsg{"dtu-1", granted->lease, 0}, std::move(done));
  });
  REQUIRE(renewed.ok());
  REQUIRE(dtu->renews.size() == 1);
  CHECK(dtu->renews[0].fence == std::optional<common::Stamp>(kClaim));

  auto resumed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.resume(holder,
                       common::ResumeLeaseMsg{"dtu-1", granted->lease, std::string(64, 'a'), 0, std::nullopt},
                       std::move(done));
  });
  REQUIRE(resumed.ok());
  REQUIRE(dtu->renews.size() == 2);
  CHECK(dtu->renews[1].fence == std::optional<common::Stamp>(kClaim));

  auto released = site.wait<void>([&](auto done) {
    site.leases.release(holder, common::ReleaseMsg{"dtu-1", granted->lease}, std::move(done));
  });
  REQUIRE(released.ok());
  REQUIRE(dtu->releases.size() == 1);
  CHECK(dtu->releases[0].fence == std::optional<common::Stamp>(kClaim));
}

TEST_CASE("A grant issues a signed state token to the DTU and to the service") {
  Site site;
  auto dtu = site.attach("dtu-1");
  auto holder = std::make_shared<Holder>(1234, "svc[77]@M");
  auto granted = allocate(site, holder);
  REQUIRE(granted.ok());

  REQUIRE(dtu->requests.size() == 1);
  REQUIRE(dtu->requests[0].state_token.has_value());
  auto at_dtu = common::verify_state_token(*dtu->requests[0].state_token, site.keys);
  REQUIRE_MESSAGE(at_dtu.ok(), at_dtu.error().describe());
  CHECK(at_dtu->dtu == "dtu-1");
  CHECK(at_dtu->device == "1-1");
  CHECK(at_dtu->holder == "svc[77]@M");
  CHECK(at_dtu->origin == "M");
  CHECK(at_dtu->issued_by == "M");
  CHECK(at_dtu->uid == 1234);
  CHECK(at_dtu->length_ms == 30000);
  CHECK(at_dtu->issued_us == 1700000000123456);
  CHECK(at_dtu->lease.empty());  // the DTU chooses the id after the manager signed

  REQUIRE(granted->state_token.has_value());
  auto at_service = common::verify_state_token(*granted->state_token, site.keys);
  REQUIRE(at_service.ok());
  CHECK(at_service->lease == granted->lease);
  CHECK(at_service->holder == "svc[77]@M");

  SUBCASE("a resumption re-issues both, naming the holder that resumed") {
    auto other = std::make_shared<Holder>(1234, "svc[78]@M");
    auto resumed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
      site.leases.resume(
          other, common::ResumeLeaseMsg{"dtu-1", granted->lease, std::string(64, 'a'), 0, std::nullopt},
          std::move(done));
    });
    REQUIRE(resumed.ok());
    REQUIRE(dtu->renews.size() == 1);
    REQUIRE(dtu->renews[0].state_token.has_value());
    auto renewed_token = common::verify_state_token(*dtu->renews[0].state_token, site.keys);
    REQUIRE(renewed_token.ok());
    CHECK(renewed_token->holder == "svc[78]@M");
    REQUIRE(resumed->state_token.has_value());
    CHECK(common::verify_state_token(*resumed->state_token, site.keys).ok());
  }
}

TEST_CASE("A standalone manager (no group key) issues no state token") {
  Site site(false);
  auto dtu = site.attach("dtu-1");
  auto granted = allocate(site, std::make_shared<Holder>(1234, "svc[77]@M"));
  REQUIRE(granted.ok());
  REQUIRE(dtu->requests.size() == 1);
  CHECK_FALSE(dtu->requests[0].state_token.has_value());
  CHECK_FALSE(granted->state_token.has_value());
}

TEST_CASE(
    "A lease reported with a valid token of this manager is adopted: its service renews it and hears its "
    "end") {
  dtu::testing::LogCapture log;
  Site site;
  auto token = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(token.ok());
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
  REQUIRE(site.leases.size() == 1);
  CHECK(log.has({"lease_adopted", "L9", "svc[77]@M", "origin=M"}));
  auto listed = site.leases.list();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].holder == "svc[77]@M");
  CHECK(listed[0].uid == 1234);

  // The service reconnected (another session object, same uid): its renewal is accepted.
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  auto renewed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.renew(service, common::RenewMsg{"dtu-1", "L9", 0}, std::move(done));
  });
  REQUIRE_MESSAGE(renewed.ok(), renewed.error().describe());
  REQUIRE(dtu->renews.size() == 1);
  CHECK(dtu->renews[0].length_ms == 30000);  // the terms the token carried
  CHECK(dtu->renews[0].fence == std::optional<common::Stamp>(kClaim));

  // Another uid may not.
  auto stranger = std::make_shared<Holder>(999, "evil[1]@M");
  auto refused = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.renew(stranger, common::RenewMsg{"dtu-1", "L9", 0}, std::move(done));
  });
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == make_error_code(Errc::denied));

  dtu->link->post(0, common::to_frame(common::LeaseEndedMsg{"dtu-1", "L9", "1-1", 0, "expired"}),
                  std::chrono::seconds(5), [](common::Result<Frame>) {});
  REQUIRE(site.run_until([&] { return !service->events.empty(); }));
  CHECK(service->events == std::vector<std::string>{"lease_ended L9 expired"});
}

TEST_CASE("A lease reported with a valid token of a peer's service goes back to that peer's holder") {
  dtu::testing::LogCapture log;
  Site site;
  std::shared_ptr<Holder> remote;
  std::vector<std::string> asked;
  site.leases.set_remote_holders(
      [&](const std::string& origin, const common::OnBehalf& who) -> std::shared_ptr<LeaseHolder> {
        asked.push_back(origin + " " + who.holder + " " + std::to_string(who.uid));
        remote = std::make_shared<Holder>(who.uid, who.holder, origin);
        return remote;
      });
  auto token = common::sign_state_token(token_for("B", 1234, "svc[77]@B"), site.keys);
  REQUIRE(token.ok());
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@B", *token)});
  CHECK(asked == std::vector<std::string>{"B svc[77]@B 1234"});
  CHECK(log.has({"lease_adopted", "L9", "origin=B"}));
  REQUIRE(remote);
  CHECK(site.leases.holds(remote.get()));

  // Renewals from the holder's manager are accepted: it is the holder.
  auto renewed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.renew(remote, common::RenewMsg{"dtu-1", "L9", 0}, std::move(done));
  });
  CHECK(renewed.ok());
  dtu->link->post(0, common::to_frame(common::LeaseEndedMsg{"dtu-1", "L9", "1-1", 0, "released"}),
                  std::chrono::seconds(5), [](common::Result<Frame>) {});
  REQUIRE(site.run_until([&] { return !remote->events.empty(); }));
  CHECK(remote->events == std::vector<std::string>{"lease_ended L9 released"});
}

TEST_CASE("A lease reported with a missing, tampered or foreign token is kept unowned until resumed") {
  dtu::testing::LogCapture log;
  Site site;
  const common::GroupKeys foreign{common::generate_key(), std::nullopt};
  auto theirs = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), foreign);
  REQUIRE(theirs.ok());
  auto ours = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(ours.ok());
  std::string tampered = *ours;
  tampered[10] = tampered[10] == 'A' ? 'B' : 'A';
  auto moved = common::sign_state_token(token_for("M", 0, "root[1]@M"), site.keys);  // another lease's
  REQUIRE(moved.ok());

  auto dtu =
      site.attach("dtu-1", {report("L1", "svc[77]@M", std::nullopt), report("L2", "svc[77]@M", *theirs),
                            report("L3", "svc[77]@M", tampered), report("L4", "svc[77]@M", *moved)});
  CHECK(log.has({"state_token_rejected", "dtu-1", "L1", "no state token"}));
  CHECK(log.has({"state_token_rejected", "dtu-1", "L2", "unknown key"}));
  CHECK(log.has({"state_token_rejected", "dtu-1", "L3", "reason"}));
  CHECK(log.has({"state_token_rejected", "dtu-1", "L4", "another lease"}));
  CHECK_FALSE(log.has({"lease_adopted"}));
  site.settle();
  // Nothing is released or shortened: the DTU has the final word.
  CHECK(dtu->releases.empty());
  CHECK(dtu->renews.empty());
  CHECK(site.leases.size() == 4);

  // A renewal cannot take it (not_found makes the client library resume) ...
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  auto renewed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.renew(service, common::RenewMsg{"dtu-1", "L2", 0}, std::move(done));
  });
  REQUIRE_FALSE(renewed.ok());
  CHECK(renewed.error().code == make_error_code(Errc::not_found));
  // ... a resume_lease with the DTU-checked lease token does.
  auto resumed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.resume(service, common::ResumeLeaseMsg{"dtu-1", "L2", std::string(64, 'a'), 0, std::nullopt},
                       std::move(done));
  });
  REQUIRE_MESSAGE(resumed.ok(), resumed.error().describe());
  REQUIRE(dtu->renews.size() == 1);
  CHECK(dtu->renews[0].token == std::optional<std::string>(std::string(64, 'a')));
  CHECK(site.leases.holds(service.get()));
}

namespace {

// Ends lease `lease` on the fake DTU, as the DTU would tell its manager.
void end_on_dtu(FakeDtu& dtu, const std::string& lease, const std::string& reason) {
  dtu.link->post(0, common::to_frame(common::LeaseEndedMsg{"dtu-1", lease, "1-1", 0, reason}),
                 std::chrono::seconds(5), [](common::Result<Frame>) {});
}

}  // namespace

TEST_CASE("A lease adopted from a token of this manager is bound at once to its still-connected client") {
  dtu::testing::LogCapture log;
  Site site;
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  site.connected = {std::make_shared<Holder>(1234, "other[90]@M", "", 90, "other"),
                    std::make_shared<Holder>(555, "svc[77]@M"), service};
  auto token = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(token.ok());
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
  CHECK(log.has({"lease_adopted", "L9", "origin=M"}));
  CHECK_MESSAGE(log.count({"lease_bound", "client=svc[77]@M", "lease=L9", "by=adopt"}) == 1, log.text());
  CHECK(site.leases.holds(service.get()));

  // Without a renew or resume, it hears the lease's end ...
  end_on_dtu(*dtu, "L9", "expired");
  REQUIRE(site.run_until([&] { return !service->events.empty(); }));
  CHECK(service->events == std::vector<std::string>{"lease_ended L9 expired"});
  CHECK(site.leases.size() == 0);
  // ... and nothing was asked of the DTU on its behalf.
  CHECK(dtu->renews.empty());
  CHECK(dtu->releases.empty());
}

TEST_CASE("A lease bound at adoption is released when its client disconnects, unless kept") {
  dtu::testing::LogCapture log;
  Site site;
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  site.connected = {service};
  common::StateToken terms = token_for("M", 1234, "svc[77]@M");
  bool kept = false;
  SUBCASE("an ordinary lease") { kept = false; }
  SUBCASE("a kept lease") { kept = true; }
  terms.keep = kept;
  auto token = common::sign_state_token(terms, site.keys);
  REQUIRE(token.ok());
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
  REQUIRE(log.has({"lease_bound", "client=svc[77]@M", "lease=L9"}));

  site.connected.clear();
  site.leases.holder_closed(service.get());
  CHECK_FALSE(site.leases.holds(service.get()));
  if (kept) {
    site.settle();
    CHECK(dtu->releases.empty());
    CHECK(site.leases.size() == 1);
  } else {
    REQUIRE(site.run_until([&] { return !dtu->releases.empty(); }));
    REQUIRE(dtu->releases.size() == 1);
    CHECK(dtu->releases[0].lease == "L9");
    CHECK(dtu->releases[0].fence == std::optional<common::Stamp>(kClaim));
    CHECK(log.has({"lease_holder_gone", "L9"}));
  }
}

TEST_CASE("Several connected clients of the lease's uid: the token's pid and program pick one, else none") {
  dtu::testing::LogCapture log;
  Site site;
  auto token = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(token.ok());

  SUBCASE("the pid tells them apart") {
    auto older = std::make_shared<Holder>(1234, "svc[76]@M", "", 76);
    auto service = std::make_shared<Holder>(1234, "svc[77]@M");
    site.connected = {older, service};
    site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
    CHECK(log.has({"lease_bound", "client=svc[77]@M", "lease=L9"}));
    CHECK(site.leases.holds(service.get()));
    CHECK_FALSE(site.leases.holds(older.get()));
  }
  SUBCASE("the program tells them apart") {
    auto helper = std::make_shared<Holder>(1234, "helper[77]@M", "", 77, "helper");
    auto service = std::make_shared<Holder>(1234, "svc[77]@M");
    site.connected = {helper, service};
    site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
    CHECK(log.has({"lease_bound", "client=svc[77]@M", "lease=L9"}));
    CHECK(site.leases.holds(service.get()));
    CHECK_FALSE(site.leases.holds(helper.get()));
  }
  SUBCASE("two connections of the same process stay ambiguous: none is bound, the first to renew takes it") {
    auto one = std::make_shared<Holder>(1234, "svc[77]@M");
    auto two = std::make_shared<Holder>(1234, "svc[77]@M");
    site.connected = {one, two};
    auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
    CHECK(log.has({"lease_adopted", "L9"}));
    CHECK(log.has({"lease_bind_ambiguous", "lease=L9", "uid=1234", "candidates=2", "reason="}));
    CHECK_FALSE(log.has({"lease_bound"}));
    CHECK_FALSE(site.leases.holds(one.get()));
    CHECK_FALSE(site.leases.holds(two.get()));

    auto renewed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
      site.leases.renew(two, common::RenewMsg{"dtu-1", "L9", 0}, std::move(done));
    });
    REQUIRE_MESSAGE(renewed.ok(), renewed.error().describe());
    CHECK(log.has({"lease_bound", "client=svc[77]@M", "lease=L9", "by=renew"}));
    CHECK(site.leases.holds(two.get()));
  }
  SUBCASE("no client of the token's pid is connected: none is bound") {
    site.connected = {std::make_shared<Holder>(1234, "svc[80]@M", "", 80)};
    site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
    CHECK(log.has({"lease_adopted", "L9"}));
    CHECK_FALSE(log.has({"lease_bound"}));
    CHECK_FALSE(log.has({"lease_bind_ambiguous"}));
    CHECK(site.leases.size() == 1);
  }
}

TEST_CASE("release_unbound releases an adopted lease nobody holds, once, and leaves bound and kept ones") {
  dtu::testing::LogCapture log;
  Site site;
  auto token = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(token.ok());
  common::StateToken kept_terms = token_for("M", 1234, "svc[77]@M");
  kept_terms.keep = true;
  auto kept_token = common::sign_state_token(kept_terms, site.keys);
  REQUIRE(kept_token.ok());
  // Nobody connected: L9 and the kept L8 are adopted unbound.
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token), report("L8", "svc[77]@M", *kept_token)});
  REQUIRE(site.leases.size() == 2);
  CHECK_FALSE(log.has({"lease_bound"}));

  site.leases.release_unbound("dtu-1", "L8");  // kept: stays
  site.leases.release_unbound("dtu-2", "L9");  // another DTU's lease of that id: not this one
  site.leases.release_unbound("dtu-1", "L9");
  site.leases.release_unbound("dtu-1", "L9");  // asked twice: released once
  REQUIRE(site.run_until([&] { return !dtu->releases.empty(); }));
  site.settle();
  REQUIRE(dtu->releases.size() == 1);
  CHECK(dtu->releases[0].lease == "L9");
  CHECK(log.count({"lease_holder_gone", "L9"}) == 1);

  // A lease bound to a connected client is that client's to release.
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  site.connected = {service};
  common::StateToken terms2 = token_for("M", 1234, "svc[77]@M");
  terms2.dtu = "dtu-2";
  auto token2 = common::sign_state_token(terms2, site.keys);
  REQUIRE(token2.ok());
  auto dtu2 = site.attach("dtu-2", {report("L7", "svc[77]@M", *token2)});
  REQUIRE(site.leases.holds(service.get()));
  site.leases.release_unbound("dtu-2", "L7");
  site.settle();
  CHECK(dtu2->releases.empty());
}

TEST_CASE("A lease of a peer's service is never bound to a local client of the same uid") {
  dtu::testing::LogCapture log;
  Site site;
  auto local = std::make_shared<Holder>(1234, "svc[77]@M");
  site.connected = {local};
  auto token = common::sign_state_token(token_for("B", 1234, "svc[77]@B"), site.keys);
  REQUIRE(token.ok());
  site.attach("dtu-1", {report("L9", "svc[77]@B", *token)});
  CHECK(log.has({"lease_adopted", "L9", "origin=B"}));
  CHECK_FALSE(log.has({"lease_bound"}));
  CHECK_FALSE(site.leases.holds(local.get()));
}

TEST_CASE("A resume_lease from the client a lease was bound to at adoption is a plain success") {
  dtu::testing::LogCapture log;
  Site site;
  auto service = std::make_shared<Holder>(1234, "svc[77]@M");
  site.connected = {service};
  auto token = common::sign_state_token(token_for("M", 1234, "svc[77]@M"), site.keys);
  REQUIRE(token.ok());
  auto dtu = site.attach("dtu-1", {report("L9", "svc[77]@M", *token)});
  REQUIRE(site.leases.holds(service.get()));

  auto resumed = site.wait<common::LeaseGrantedMsg>([&](auto done) {
    site.leases.resume(service, common::ResumeLeaseMsg{"dtu-1", "L9", std::string(64, 'a'), 0, std::nullopt},
                       std::move(done));
  });
  REQUIRE_MESSAGE(resumed.ok(), resumed.error().describe());
  CHECK(resumed->lease == "L9");
  // Still one lease, held by the same client, bound once.
  auto listed = site.leases.list();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].lease == "L9");
  CHECK(site.leases.holds(service.get()));
  CHECK(log.count({"lease_bound", "lease=L9"}) == 1);
  CHECK(dtu->releases.empty());

  // Its end reaches the client once.
  end_on_dtu(*dtu, "L9", "released");
  REQUIRE(site.run_until([&] { return !service->events.empty(); }));
  site.settle();
  CHECK(service->events == std::vector<std::string>{"lease_ended L9 released"});
}
