// Group messages (136–142): each round-trips through the wire encoding, and the decoders refuse
// what a broken or hostile peer could send (missing fields, bad ids, wrong nesting), naming the
// field.
#include "dtu/common/group_messages.hpp"

#include <doctest/doctest.h>

#include <ostream>  // doctest prints std::error_code
#include <string>
#include <string_view>

#include "dtu/common/frame_decoder.hpp"
#include "support/message_checks.hpp"

namespace dtu::common {
namespace {

using nlohmann::json;

using dtu::testing::object_frame;
using dtu::testing::round_trip;

// The detail of the bad_payload error from_frame<M> reports. REQUIRES: it fails.
template <typename M>
std::string refusal(const json& j) {
  auto result = from_frame<M>(object_frame(M::kType, j));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == make_error_code(Errc::bad_payload));
  return result.error().detail;
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

OnBehalf someone() { return OnBehalf{1000, 100, 4242, "printd", "printd[4242]@m3"}; }

TEST_CASE("peer_ownership round-trips a full announcement and a delta") {
  PeerOwnershipMsg full;
  full.manager = "m1";
  full.incarnation = 1767225600123456;
  full.full = true;
  full.owned.push_back(OwnedDtu{"dtu-a", Stamp{1700000000000, 17, 1700000000000123}, 2});
  full.owned.push_back(OwnedDtu{"dtu-b", Stamp{5, 1, 0}, 0});
  auto back = round_trip(full);
  CHECK(back.manager == "m1");
  CHECK(back.incarnation == 1767225600123456);
  CHECK(back.full);
  CHECK(back.owned == full.owned);
  CHECK(back.lost.empty());

  PeerOwnershipMsg delta;
  delta.manager = "m1";
  delta.incarnation = 7;
  delta.lost = {"dtu-a"};
  auto d = round_trip(delta);
  CHECK_FALSE(d.full);
  CHECK(d.owned.empty());
  CHECK(d.lost == std::vector<std::string>{"dtu-a"});
}

TEST_CASE("peer_ownership refuses bad manager and DTU ids") {
  const json good = {{"manager", "m1"}, {"incarnation", 1}, {"full", false}, {"owned", json::array()},
                     {"lost", json::array()}};
  json bad = good;
  bad["manager"] = "../m1";
  CHECK(contains(refusal<PeerOwnershipMsg>(bad), "manager"));
  bad = good;
  bad["lost"] = json::array({"ok", 3});
  CHECK(contains(refusal<PeerOwnershipMsg>(bad), "lost"));
  bad = good;
  bad["owned"] = json::array({json{{"dtu", "a b"}, {"stamp", json{{"boot_epoch", 1}, {"seq", 1}, {"time_us", 0}}},
                                   {"devices", 0}}});
  CHECK(contains(refusal<PeerOwnershipMsg>(bad), "dtu"));
  bad = good;
  bad.erase("full");
  CHECK(contains(refusal<PeerOwnershipMsg>(bad), "full"));
  bad = good;
  bad["incarnation"] = -1;
  CHECK(contains(refusal<PeerOwnershipMsg>(bad), "incarnation"));
}

TEST_CASE("peer_allocate carries the service's identity and its allocate unchanged") {
  PeerAllocateMsg msg;
  msg.on_behalf = someone();
  msg.request.dtu = "dtu-a";
  msg.request.device = "1-1.4";
  msg.request.unit = 0;
  msg.request.length_ms = 30000;
  msg.request.wait_ms = 5000;
  msg.request.keep = true;
  auto back = round_trip(msg);
  CHECK(back.on_behalf == someone());
  CHECK(back.request.dtu == "dtu-a");
  CHECK(back.request.device == "1-1.4");
  CHECK(back.request.length_ms == 30000);
  CHECK(back.request.wait_ms == std::optional<std::uint32_t>(5000));
  CHECK(back.request.keep);
}

TEST_CASE("peer_renew, peer_release and peer_resume round-trip") {
  auto renew = round_trip(PeerRenewMsg{someone(), RenewMsg{"dtu-a", "L1", 1000}});
  CHECK(renew.on_behalf == someone());
  CHECK(renew.request.lease == "L1");
  CHECK(renew.request.length_ms == 1000);
  auto release = round_trip(PeerReleaseMsg{someone(), ReleaseMsg{"dtu-a", "L1"}});
  CHECK(release.request.dtu == "dtu-a");
  auto resume = round_trip(PeerResumeMsg{someone(), ResumeLeaseMsg{"dtu-a", "L1", std::string(64, 'a'), 0, "tok"}});
  CHECK(resume.request.token == std::string(64, 'a'));
  CHECK(resume.request.state_token == "tok");
}

TEST_CASE("a forwarded lease request without its service's identity is refused, naming what is missing") {
  const json request = {{"dtu", "dtu-a"}, {"device", "1-1"}, {"unit", 0}, {"length_ms", 0}};
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"request", request}}), "on_behalf"));
  json who = {{"uid", 1000}, {"gid", 100}, {"pid", 1}, {"client", "x"}, {"holder", "x[1]@m3"}};
  json bad = who;
  bad.erase("uid");
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"on_behalf", bad}, {"request", request}}), "uid"));
  bad = who;
  bad["uid"] = 1ULL << 40;  // a uid is 32 bits
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"on_behalf", bad}, {"request", request}}), "uid"));
  bad = who;
  bad["holder"] = "";
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"on_behalf", bad}, {"request", request}}), "holder"));
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"on_behalf", who}, {"request", "dtu-a"}}), "request"));
  json short_request = request;
  short_request.erase("device");
  CHECK(contains(refusal<PeerAllocateMsg>(json{{"on_behalf", who}, {"request", short_request}}), "device"));
}

TEST_CASE(
    "an allocation's requests are written byte for byte as nlohmann writes them, and read as from_json reads "
    "them") {
  const auto nlohmann_text = [](const auto& m) {
    return json(m).dump(-1, ' ', false, json::error_handler_t::replace);
  };
  // decode_fast of what to_frame wrote, which must be what from_json reads, field for field.
  const auto both = []<typename M>(const M& m) {
    const Frame f = to_frame(m);
    M fast;
    REQUIRE(decode_fast(f.payload_text(), fast));
    CHECK(json(fast) == json(json::parse(f.payload_text()).get<M>()));
    CHECK(json(fast) == json(m));
  };
  const AllocateMsg asks[] = {{"dtu-a", "1-1.4", 0, 30000, 5000u, true},
                              {"dtu-b", "2-1", 4294967295u, 0, std::nullopt, false}};
  for (const AllocateMsg& ask : asks) {
    std::string text;
    REQUIRE(encode_fast(ask, text));
    CHECK(text == nlohmann_text(ask));
    both(ask);
    const PeerAllocateMsg forwarded{someone(), ask};
    REQUIRE(encode_fast(forwarded, text));
    CHECK(text == nlohmann_text(forwarded));
    both(forwarded);
  }
  const ReleaseMsg release{"dtu-a", "00ff00ff00ff00ff"};
  std::string text;
  REQUIRE(encode_fast(release, text));
  CHECK(text == nlohmann_text(release));
  both(release);
  REQUIRE(encode_fast(PeerReleaseMsg{someone(), release}, text));
  CHECK(text == nlohmann_text(PeerReleaseMsg{someone(), release}));
  both(PeerReleaseMsg{someone(), release});
  for (const LeaseReleaseMsg& m : {LeaseReleaseMsg{"00ff00ff00ff00ff", Stamp{1732185600123456, 9, -3}},
                                   LeaseReleaseMsg{"l", std::nullopt}}) {
    REQUIRE(encode_fast(m, text));
    CHECK(text == nlohmann_text(m));
    CHECK(round_trip(m).fence == m.fence);
  }

  // A name nlohmann would escape goes through nlohmann.
  OnBehalf quoted = someone();
  quoted.client = "print \"d\"";
  CHECK_FALSE(encode_fast(PeerAllocateMsg{quoted, asks[0]}, text));
  CHECK(to_frame(PeerAllocateMsg{quoted, asks[0]}).payload_text() ==
        nlohmann_text(PeerAllocateMsg{quoted, asks[0]}));
  CHECK(round_trip(PeerReleaseMsg{quoted, release}).on_behalf == quoted);

  // Of a repeated request the last stands whole: an optional the first had is not carried over.
  PeerAllocateMsg last;
  const std::string repeated =
      R"({"request":{"dtu":"a","device":"d","unit":1,"length_ms":5,"wait_ms":9,"keep":true},)"
      R"("on_behalf":{"uid":1,"gid":2,"pid":3,"client":"c","holder":"h"},)"
      R"("request":{"dtu":"b","device":"e","unit":2,"length_ms":6}})";
  REQUIRE(decode_fast(repeated, last));
  CHECK(json(last) == json(json::parse(repeated).get<PeerAllocateMsg>()));
  CHECK_FALSE(last.request.wait_ms.has_value());
  CHECK_FALSE(last.request.keep);
  // What from_json refuses, decode_fast does not take (the refusals above name the field).
  PeerAllocateMsg unused;
  CHECK_FALSE(decode_fast(R"({"on_behalf":{"uid":1,"gid":2,"pid":3,"client":"c","holder":""},)"
                          R"("request":{"dtu":"b","device":"e","unit":2,"length_ms":6}})",
                          unused));
  CHECK_FALSE(decode_fast(R"({"on_behalf":{"uid":1,"gid":2,"pid":3,"client":"c","holder":"h"},)"
                          R"("request":{"dtu":"b","device":"e","unit":2,"length_ms":6,"keep":null}})",
                          unused));
  CHECK_FALSE(decode_fast(R"({"on_behalf":{"uid":1,"gid":2,"pid":3,"client":"c","holder":"h"}})", unused));
  AllocateMsg no_unit;
  CHECK_FALSE(decode_fast(R"({"dtu":"b","device":"e","length_ms":6})", no_unit));
  ReleaseMsg no_lease;
  CHECK_FALSE(decode_fast(R"({"dtu":"b","lease":null})", no_lease));
}

TEST_CASE("peer_status and its reply round-trip") {
  round_trip(PeerStatusMsg{});
  auto reply = round_trip(PeerStatusReplyMsg{"m2", 9, 2, 5, 3});
  CHECK(reply.manager == "m2");
  CHECK(reply.incarnation == 9);
  CHECK(reply.dtus == 2);
  CHECK(reply.devices == 5);
  CHECK(reply.finders_held_total == 3);
  CHECK(contains(refusal<PeerStatusMsg>(json::array()), "object"));
  CHECK(contains(refusal<PeerStatusReplyMsg>(json{{"manager", "m2"}, {"incarnation", 1}, {"dtus", 0}, {"devices", 0}}),
                 "finders_held_total"));
}

TEST_CASE("a group decoder refuses another message type") {
  auto result = from_frame<PeerAllocateMsg>(to_frame(PeerStatusMsg{}));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().code == make_error_code(Errc::unknown_type));
}

}  // namespace
}  // namespace dtu::common

namespace dtu::common {

TEST_CASE("drain, undrain and drain_status round-trip, and group_info says whether the manager drains") {
  CHECK(round_trip(DrainMsg{5000u}).wait_ms == 5000u);
  CHECK_FALSE(round_trip(DrainMsg{}).wait_ms.has_value());
  (void)round_trip(UndrainMsg{});
  const DrainStatusMsg status = round_trip(DrainStatusMsg{true, 3});
  CHECK(status.draining);
  CHECK(status.dtus == 3);
  GroupInfoMsg info;
  info.manager = "m1";
  info.draining = true;
  info.universal_offset_ms = -2.5;
  const GroupInfoMsg out = round_trip(info);
  CHECK(out.draining);
  CHECK(out.universal_offset_ms == -2.5);
  CHECK_FALSE(round_trip(GroupInfoMsg{}).draining);
}

}  // namespace dtu::common
