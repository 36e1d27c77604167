// FakeDtu: a DTU at the far end of a real devmgr::DtuSession over a Unix socket pair, enough for
// the manager's lease code. It says hello; grants every lease_request (ids L1, L2, … in order, the
// holder and length asked for, a lease token of 64 'a'); answers every lease_renew with the length
// asked for; acks every lease_release (and, if told to, then reports that lease ended); and keeps
// every request it was sent. It keeps the manager's DtuSession alive as long as itself (a
// manager keeps its sessions in its table once active). Runs on the test's io_context thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <asio.hpp>

#include "dtu/common/link.hpp"
#include "dtu/common/messages.hpp"
#include "dtu/devmgr/device_list.hpp"
#include "dtu/devmgr/dtu_session.hpp"

namespace dtu::testing {

class FakeDtu {
 public:
  struct Options {
    std::int64_t boot_epoch = 100;           // in its hello
    std::string renew_holder = "svc[77]@M";  // the holder its renewal answers name
    std::optional<std::string> inband;       // the in-band endpoint its grants name
    bool end_on_release = false;             // after acking a release, report the lease ended
  };
  // Creates one end of the socket pair's link; the test keeps it and closes it when done.
  using MakeLink = std::function<std::shared_ptr<common::Link>(
      asio::local::stream_protocol::socket socket, common::FilamentMux::Side side, std::string peer)>;

  // Connects DTU `dtu` to manager `manager`: starts the manager's DtuSession (over `devices`,
  // heartbeat 1 s × 3, handshake 5 s) with `hooks`, and sends the fake's hello. The caller waits
  // for hooks.on_active.
  static std::shared_ptr<FakeDtu> connect(asio::io_context& io, const MakeLink& make_link,
                                          const std::string& dtu, const std::string& manager,
                                          devmgr::DeviceList& devices, devmgr::DtuSession::Hooks hooks,
                                          Options options) {
    asio::local::stream_protocol::socket one(io);
    asio::local::stream_protocol::socket two(io);
    asio::local::connect_pair(one, two);
    auto at_manager = make_link(std::move(one), common::FilamentMux::Side::acceptor, dtu);
    auto fake = std::make_shared<FakeDtu>(dtu, std::move(options));
    fake->link = make_link(std::move(two), common::FilamentMux::Side::initiator, manager);
    auto session =
        std::make_shared<devmgr::DtuSession>(at_manager, dtu, manager, devices, common::Logger(manager),
                                             std::chrono::seconds(1), 3, std::chrono::seconds(5));
    session->start(std::move(hooks));
    fake->session = session;
    std::weak_ptr<FakeDtu> weak = fake;
    fake->link->mux().set_receiver(0, [weak](common::Frame frame) {
      if (auto self = weak.lock()) self->on_frame(frame);
    });
    fake->link->start([](const common::Error&) {});
    fake->link->request(0,
                        common::to_frame(common::DtuHelloMsg{dtu, "test", fake->options_.boot_epoch, false}),
                        std::chrono::seconds(5), [](common::Result<common::Frame>) {});
    return fake;
  }

  FakeDtu(std::string dtu, Options options) : dtu_(std::move(dtu)), options_(std::move(options)) {}

  // Sends `msg` to the manager, wanting no answer (a snapshot, a lease_ended).
  template <typename M>
  void post(const M& msg) {
    link->post(0, common::to_frame(msg), std::chrono::seconds(5), [](common::Result<common::Frame>) {});
  }

  std::shared_ptr<common::Link> link;           // the DTU's end
  std::shared_ptr<devmgr::DtuSession> session;  // the manager's end, alive as long as the fake
  std::vector<common::LeaseRequestMsg> requests;
  std::vector<common::LeaseRenewMsg> renews;
  std::vector<common::LeaseReleaseMsg> releases;
  int leases = 0;  // granted so far

 private:
  void on_frame(const common::Frame& frame) {
    if (frame.type == common::MessageType::lease_request) {
      auto ask = common::from_frame<common::LeaseRequestMsg>(frame);
      REQUIRE(ask.ok());
      requests.push_back(*ask);
      common::LeaseGrantedMsg granted;
      granted.lease = "L" + std::to_string(++leases);
      granted.dtu = dtu_;
      granted.device = ask->device;
      granted.unit = ask->unit;
      granted.holder = ask->holder;
      granted.expires_in_ms = ask->length_ms;
      granted.token = std::string(64, 'a');
      granted.inband = options_.inband;
      link->reply(frame, common::to_frame(granted));
    } else if (frame.type == common::MessageType::lease_renew) {
      auto renew = common::from_frame<common::LeaseRenewMsg>(frame);
      REQUIRE(renew.ok());
      renews.push_back(*renew);
      common::LeaseGrantedMsg granted;
      granted.lease = renew->lease;
      granted.dtu = dtu_;
      granted.device = "1-1";
      granted.holder = options_.renew_holder;
      granted.expires_in_ms = renew->length_ms;
      link->reply(frame, common::to_frame(granted));
    } else if (frame.type == common::MessageType::lease_release) {
      auto release = common::from_frame<common::LeaseReleaseMsg>(frame);
      REQUIRE(release.ok());
      releases.push_back(*release);
      link->reply(frame, common::to_frame(common::AckMsg{}));
      if (options_.end_on_release) post(common::LeaseEndedMsg{dtu_, release->lease, "1-1", 0, "released"});
    }
  }

  std::string dtu_;
  Options options_;
};

}  // namespace dtu::testing
