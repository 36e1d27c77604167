#pragma once
// PeerLink: one authenticated link to a peer manager (DESIGN.md §2, §4). The mesh (PeerMesh)
// creates it once both sides passed the handshake and the hellos are exchanged; the group
// layer (GroupBroker) sends and answers on it. Every application message travels on filament 0:
// requests (a reply or an error comes back), notifies (nothing comes back). A PeerLink never
// reopens: a new connection to the same peer is a new PeerLink.
// Runs on the manager's io_context thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "dtu/common/errors.hpp"
#include "dtu/common/link.hpp"
#include "dtu/common/result.hpp"

namespace dtu::devmgr {

class PeerLink {
 public:
  // `id`: the peer's manager id, proven by the handshake; `incarnation`: from its hello;
  // `address`: its mesh address from the group list ("host:port").
  PeerLink(std::shared_ptr<common::Link> link, std::string id, std::uint64_t incarnation, std::string address)
      : link_(std::move(link)), id_(std::move(id)), incarnation_(incarnation), address_(std::move(address)) {}

  const std::string& id() const { return id_; }
  std::uint64_t incarnation() const { return incarnation_; }
  const std::string& address() const { return address_; }
  bool is_open() const { return link_->is_open() && !link_->is_shutting_down(); }

  void notify(common::Frame frame) { link_->notify(common::FilamentMux::kControlFilament, std::move(frame)); }
  // `done` runs on the link's executor with the reply frame (which may be an error frame) or the
  // transport's error (Errc::timeout, Errc::link_lost).
  void request(common::Frame frame, common::Duration timeout, std::function<void(common::Result<common::Frame>)> done) {
    link_->request(common::FilamentMux::kControlFilament, std::move(frame), timeout, std::move(done));
  }
  void reply(const common::Frame& to, common::Frame response) { link_->reply(to, std::move(response)); }
  void reply_error(const common::Frame& to, common::Errc code, std::string reason) {
    link_->reply_error(to, code, std::move(reason));
  }
  void close(const common::Error& reason) { link_->close(reason); }

  common::Link& link() { return *link_; }
  const common::Link& link() const { return *link_; }

 private:
  std::shared_ptr<common::Link> link_;
  std::string id_;
  std::uint64_t incarnation_ = 0;
  std::string address_;
};

}  // namespace dtu::devmgr
