#include "dtu/common/filament_mux.hpp"

#include "dtu/common/messages.hpp"

namespace dtu::common {

FilamentMux::FilamentMux(Side side) : side_(side), next_filament_(side == Side::initiator ? 1 : 2) {
  filaments_[kControlFilament].name = "control";
}

bool FilamentMux::ours(std::uint32_t filament) const {
  return (filament % 2 == 1) == (side_ == Side::initiator);
}

void FilamentMux::emit(Frame frame) {
  outbox_.push_back(std::move(frame));
  if (output_hook_) output_hook_();
}

void FilamentMux::flush() {
  if (flushing_) return;
  flushing_ = true;
  while (!deferred_.empty()) {
    auto batch = std::move(deferred_);
    deferred_.clear();
    for (auto& fn : batch) fn();
  }
  flushing_ = false;
}

Result<std::uint32_t> FilamentMux::open(std::string name) {
  if (failed_) return failure_;
  const std::uint32_t id = next_filament_;
  next_filament_ += 2;
  filaments_[id].name = name;
  emit(to_frame(FilamentOpenMsg{std::move(name)}, id));
  return id;
}

void FilamentMux::set_receiver(std::uint32_t filament, Receiver receiver) {
  auto it = filaments_.find(filament);
  if (it == filaments_.end()) return;
  Filament& f = it->second;
  f.receiver = std::move(receiver);
  if (f.receiver) {
    while (!f.queue.empty()) {
      defer([r = f.receiver, frame = std::move(f.queue.front())]() mutable { r(std::move(frame)); });
      f.queue.pop_front();
    }
  }
  flush();
}

void FilamentMux::send(std::uint32_t filament, Frame frame, std::uint8_t flag, MonoTime deadline,
                       SendDone done) {
  if (failed_) {
    defer([done = std::move(done), e = failure_] { done(e); });
    return flush();
  }
  auto it = filaments_.find(filament);
  if (it == filaments_.end() || it->second.state != State::open) {
    defer([done = std::move(done), filament] {
      done(Error(Errc::closed, "filament " + std::to_string(filament) + " is not open"));
    });
    return flush();
  }
  const std::uint32_t txn = next_txn_++;
  if (next_txn_ == 0) next_txn_ = 1;  // 0 means "no confirmation"
  frame.filament = filament;
  frame.txn = txn;
  frame.flags = static_cast<std::uint8_t>((frame.flags & kFlagBinary) | flag);
  ++it->second.pending;
  pending_.emplace(txn, Pending{filament, deadline, std::move(done)});
  emit(std::move(frame));
  flush();
}

void FilamentMux::request(std::uint32_t filament, Frame frame, MonoTime deadline, SendDone done) {
  send(filament, std::move(frame), kFlagReplyRequested, deadline, std::move(done));
}

void FilamentMux::post(std::uint32_t filament, Frame frame, MonoTime deadline, SendDone done) {
  send(filament, std::move(frame), kFlagAckRequested, deadline, std::move(done));
}

void FilamentMux::notify(std::uint32_t filament, Frame frame) {
  if (failed_) return;
  auto it = filaments_.find(filament);
  if (it == filaments_.end() || it->second.state != State::open) return;
  frame.filament = filament;
  frame.txn = 0;
  frame.flags = static_cast<std::uint8_t>(frame.flags & kFlagBinary);
  emit(std::move(frame));
}

void FilamentMux::set_request_limit(std::size_t limit, LimitHandler on_hit) {
  request_limit_ = limit;
  on_request_limit_ = std::move(on_hit);
}

std::size_t FilamentMux::unanswered(std::uint32_t filament) const {
  auto it = filaments_.find(filament);
  return it == filaments_.end() ? 0 : it->second.unanswered.size();
}

void FilamentMux::reply(const Frame& to, Frame response) {
  if (failed_ || to.txn == 0) return;
  if (request_limit_ > 0) {
    if (auto f = filaments_.find(to.filament); f != filaments_.end()) f->second.unanswered.erase(to.txn);
  }
  response.filament = to.filament;
  response.txn = to.txn;
  response.flags = static_cast<std::uint8_t>((response.flags & kFlagBinary) | kFlagReply);
  emit(std::move(response));
}

void FilamentMux::reply_error(const Frame& to, Errc code, std::string reason) {
  reply(to, to_frame(ErrorMsg{errc_name(code), std::move(reason)}));
}

void FilamentMux::receive(std::uint32_t filament, Duration timeout, MonoTime now, ReceiveDone done) {
  if (failed_) {
    defer([done = std::move(done), e = failure_] { done(e); });
    return flush();
  }
  auto it = filaments_.find(filament);
  if (it == filaments_.end()) {
    defer([done = std::move(done), filament] {
      done(Error(Errc::closed, "filament " + std::to_string(filament) + " is not open"));
    });
    return flush();
  }
  Filament& f = it->second;
  if (!f.queue.empty()) {
    defer([done = std::move(done), frame = std::move(f.queue.front())]() mutable { done(std::move(frame)); });
    f.queue.pop_front();
  } else if (timeout == Duration::zero()) {
    defer([done = std::move(done)] { done(Error(Errc::would_block, "no message queued")); });
  } else {
    const MonoTime deadline = timeout < Duration::zero() ? kNever : now + timeout;
    f.waiters.push_back(Waiter{deadline, std::move(done)});
  }
  flush();
}

void FilamentMux::close(std::uint32_t filament, std::string reason, CloseDone done) {
  auto it = filaments_.find(filament);
  if (filament == kControlFilament || failed_ || it == filaments_.end() || it->second.state != State::open) {
    defer([done = std::move(done), filament, e = failed_ ? failure_ : Error()] {
      done(e.code ? e : Error(Errc::closed, "filament " + std::to_string(filament) + " is not open"));
    });
    return flush();
  }
  it->second.state = State::closing;
  it->second.close_reason = std::move(reason);
  it->second.close_done = std::move(done);
  finish_close_if_drained(filament);
  flush();
}

void FilamentMux::finish_close_if_drained(std::uint32_t filament) {
  auto it = filaments_.find(filament);
  if (it == filaments_.end() || it->second.state != State::closing || it->second.pending > 0) return;
  emit(to_frame(FilamentCloseMsg{it->second.close_reason}, filament));
  auto done = std::move(it->second.close_done);
  drop_filament(filament, Error(Errc::closed, "filament closed"));
  if (done) defer([done = std::move(done)] { done(Result<void>()); });
}

// Removes a filament; its waiters complete with `error`. REQUIRES: no pending sends remain
// on it, or they are failed separately.
void FilamentMux::drop_filament(std::uint32_t filament, const Error& error) {
  auto it = filaments_.find(filament);
  if (it == filaments_.end()) return;
  for (auto& w : it->second.waiters) {
    defer([done = std::move(w.done), error] { done(error); });
  }
  filaments_.erase(it);
}

void FilamentMux::complete_pending(std::uint32_t txn, Result<Frame> result) {
  auto it = pending_.find(txn);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  auto f = filaments_.find(p.filament);
  if (f != filaments_.end() && f->second.pending > 0) --f->second.pending;
  defer([done = std::move(p.done), result = std::move(result)]() mutable { done(std::move(result)); });
  finish_close_if_drained(p.filament);
}

void FilamentMux::deliver(Filament& f, Frame frame) {
  if (f.receiver) {
    defer([r = f.receiver, frame = std::move(frame)]() mutable { r(std::move(frame)); });
  } else if (!f.waiters.empty()) {
    auto w = std::move(f.waiters.front());
    f.waiters.pop_front();
    defer([done = std::move(w.done), frame = std::move(frame)]() mutable { done(std::move(frame)); });
  } else {
    f.queue.push_back(std::move(frame));
  }
}

Result<void> FilamentMux::on_frame(Frame frame, MonoTime now) {
  (void)now;
  if (failed_) return {};
  Result<void> result;
  if (frame.is_reply()) {
    // A reply names its operation by (filament, txn): one on another filament answers nothing.
    if (auto p = pending_.find(frame.txn); p == pending_.end() || p->second.filament != frame.filament) {
      flush();
      return {};
    }
    if (frame.type == MessageType::error) {
      auto msg = from_frame<ErrorMsg>(frame);
      Error e = msg.ok() ? Error(errc_from_name(msg->code), msg->reason) : msg.error();
      // An error reply never completes an operation as a success, whatever code the peer sent.
      if (!e.code) e.code = make_error_code(Errc::refused);
      complete_pending(frame.txn, std::move(e));
    } else {
      // A reply whose txn is unknown arrived after its deadline: dropped.
      complete_pending(frame.txn, std::move(frame));
    }
  } else if (frame.type == MessageType::filament_open) {
    const std::uint32_t id = frame.filament;
    // Reject an id of our own parity, or one already open: the peer would hijack a filament.
    if (id == kControlFilament || ours(id) || filaments_.count(id) != 0) {
      result = Error(Errc::malformed_frame, "filament_open with id " + std::to_string(id) + " not the peer's to open");
    } else {
      auto msg = from_frame<FilamentOpenMsg>(frame);
      if (!msg.ok()) {
        result = msg.error();
      } else {
        filaments_[id].name = msg->name;
        if (open_handler_) defer([h = open_handler_, id, name = msg->name] { h(id, name); });
      }
    }
  } else if (frame.type == MessageType::filament_close) {
    const std::uint32_t id = frame.filament;
    if (id == kControlFilament) {
      result = Error(Errc::malformed_frame, "filament_close on the control filament");
    } else if (filaments_.count(id) != 0) {
      std::vector<std::uint32_t> txns;
      for (const auto& [txn, p] : pending_) {
        if (p.filament == id) txns.push_back(txn);
      }
      for (auto txn : txns) complete_pending(txn, Error(Errc::closed, "peer closed the filament"));
      auto it = filaments_.find(id);
      if (it != filaments_.end()) {
        if (it->second.close_done) {
          defer([done = std::move(it->second.close_done)] { done(Result<void>()); });
        }
        drop_filament(id, Error(Errc::closed, "peer closed the filament"));
      }
    }
  } else {
    auto it = filaments_.find(frame.filament);
    if (it == filaments_.end()) {
      // A race with a close, or a filament that never existed: answer so the sender's
      // operation ends now instead of at its deadline.
      if (frame.wants_ack() || frame.wants_reply()) {
        reply_error(frame, Errc::closed, "filament " + std::to_string(frame.filament) + " is not open");
      }
    } else if (it->second.queue.size() >= kMaxQueuedFrames) {
      result = Error(Errc::send_queue_full, "receive queue of filament " + std::to_string(frame.filament) +
                                                " above " + std::to_string(kMaxQueuedFrames) + " frames");
    } else if (request_limit_ > 0 && frame.wants_reply() && it->second.unanswered.size() >= request_limit_ &&
               !it->second.unanswered.contains(frame.txn)) {
      reply_error(frame, Errc::denied,
                  "already " + std::to_string(request_limit_) + " requests unanswered on filament " +
                      std::to_string(frame.filament));
      if (on_request_limit_) defer([h = on_request_limit_, id = frame.filament, n = request_limit_] { h(id, n); });
    } else {
      if (request_limit_ > 0 && frame.wants_reply()) it->second.unanswered.insert(frame.txn);
      if (frame.wants_ack()) {
        Frame ack = to_frame(AckMsg{});
        ack.filament = frame.filament;
        ack.txn = frame.txn;
        ack.flags = kFlagReply;
        emit(std::move(ack));
      }
      deliver(it->second, std::move(frame));
    }
  }
  flush();
  return result;
}

void FilamentMux::tick(MonoTime now) {
  std::vector<std::uint32_t> expired;
  for (const auto& [txn, p] : pending_) {
    if (p.deadline <= now) expired.push_back(txn);
  }
  for (auto txn : expired) {
    complete_pending(txn, Error(Errc::timeout, "no confirmation before the deadline"));
  }
  for (auto& [id, f] : filaments_) {
    for (auto it = f.waiters.begin(); it != f.waiters.end();) {
      if (it->deadline <= now) {
        defer([done = std::move(it->done)] { done(Error(Errc::timeout, "no message before the deadline")); });
        it = f.waiters.erase(it);
      } else {
        ++it;
      }
    }
  }
  flush();
}

MonoTime FilamentMux::next_deadline() const {
  MonoTime next = kNever;
  for (const auto& [txn, p] : pending_) next = std::min(next, p.deadline);
  for (const auto& [id, f] : filaments_) {
    for (const auto& w : f.waiters) next = std::min(next, w.deadline);
  }
  return next;
}

void FilamentMux::fail_all(const Error& error) {
  if (failed_) return;
  failed_ = true;
  failure_ = error;
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [txn, p] : pending) {
    defer([done = std::move(p.done), error]() { done(error); });
  }
  for (auto& [id, f] : filaments_) {
    for (auto& w : f.waiters) defer([done = std::move(w.done), error] { done(error); });
    f.waiters.clear();
    if (f.close_done) defer([done = std::move(f.close_done), error] { done(error); });
  }
  outbox_.clear();
  flush();
}

std::vector<Frame> FilamentMux::take_output() {
  std::vector<Frame> out(std::make_move_iterator(outbox_.begin()), std::make_move_iterator(outbox_.end()));
  outbox_.clear();
  return out;
}

bool FilamentMux::is_open(std::uint32_t filament) const {
  auto it = filaments_.find(filament);
  return it != filaments_.end() && it->second.state == State::open && !failed_;
}

}  // namespace dtu::common
