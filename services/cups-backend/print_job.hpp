#pragma once
// PrintJob: one CUPS job of the `dtu` backend (backend(7): dtu job-id user title copies options
// [file]). It connects to the local manager (retrying for a while), resolves the queue's
// dtu:// URI to a printer unit of the group (printer_uri.hpp), leases it (waiting while another
// service holds it: one allocate with the longest wait the manager accepts keeps the job's place
// in the unit's queue, and STATE:/INFO: lines say so, again each minute), streams the job
// in-band, answers the side channel, passes back-channel data on, releases the lease and exits
// with a backend(7) status:
//
//   CUPS_BACKEND_OK      printed, or cancelled (SIGTERM: the lease is dropped, nothing more sent)
//   CUPS_BACKEND_STOP    bad URI; the printer is no longer attached (its DTU is in the group and
//                        no DTU has it); the policy denies this printer
//   CUPS_BACKEND_RETRY   the manager is unreachable for kConnectPatience (20 s); the printer's
//                        DTU is not in the group now (off, between managers); the printer is
//                        not on the named DTU and several others have its serial (an ERROR:
//                        line names them: no guess); a transfer failed mid-job (the channel
//                        to the DTU broke, the lease ended, the printer was unplugged): CUPS
//                        sends the whole job again later, which may repeat the pages already
//                        out but never loses the job, and the next attempt stops the queue if
//                        the printer is really gone.
// A manager failover is none of these: the DTU keeps the lease and the in-band channel, the
// library renews the lease through the new owner, and the job goes on.
//
// Runs on the io_context thread of the executor given; not thread-safe. cancel() may be called
// from a signal handler's completion on that thread.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <asio.hpp>

#include "dtu/client/client.hpp"
#include "dtu/common/result.hpp"
#include "dtu/services/event.hpp"
#include "dtu/services/printer_uri.hpp"
#include "side_channel.hpp"

namespace dtu::services::cups {

struct JobRequest {
  std::string socket;  // the manager's socket
  std::string uri;     // the queue's device URI
  std::string job_id;
  std::string user;
  std::string title;
  int copies = 1;
  std::optional<std::string> file;  // absent: the job comes on stdin
};

class PrintJob : public SideChannelPrinter {
 public:
  PrintJob(asio::any_io_executor executor, JobRequest request);
  ~PrintJob() override;
  PrintJob(const PrintJob&) = delete;
  PrintJob& operator=(const PrintJob&) = delete;

  // Prints the job; the backend(7) exit status.
  asio::awaitable<int> run();
  // The job was cancelled (SIGTERM): stop waiting or sending, drop the lease, run() returns
  // CUPS_BACKEND_OK soon. Idempotent.
  void cancel();

  // SideChannelPrinter
  asio::awaitable<std::optional<std::string>> device_id() override;
  bool connected() const override;
  asio::awaitable<int> state() override;
  asio::awaitable<Drained> drain() override;
  asio::awaitable<bool> soft_reset() override;

 private:
  // What a step decided: go on, or end run() with this status.
  using Step = std::optional<int>;

  asio::awaitable<Step> connect();
  asio::awaitable<Step> resolve();
  // After the finders synced: the printer the URI names among the matches, or the status.
  Step choose_printer(bool dtu_present);
  asio::awaitable<Step> allocate();
  // While waiting_: says the waiting line again every kWaitReminder, and when the holder changes.
  asio::awaitable<void> remind_while_waiting();
  // "Waiting for printer …: <why>" (INFO:), "Still waiting …" when `why` was said last.
  void say_waiting(const std::string& why);
  asio::awaitable<Step> print();
  asio::awaitable<common::Result<std::size_t>> send_job();
  asio::awaitable<common::Result<std::size_t>> send_fd(int fd);
  asio::awaitable<common::Result<void>> send_batch(std::span<const std::uint8_t> bytes);
  void start_back_channel();
  asio::awaitable<void> finish();
  // Sleeps up to `delay`, less when cancelled.
  asio::awaitable<void> pause(common::Duration delay);
  // The holder of our unit as the finder's record shows it, or empty.
  std::string current_holder() const;
  std::string printer_name() const;

  asio::any_io_executor executor_;
  JobRequest request_;
  PrinterUri uri_;
  std::unique_ptr<client::Client> client_;
  client::FinderId printers_ = 0;
  common::DeviceRecord device_;  // the resolved printer
  std::optional<client::Lease> lease_;
  std::shared_ptr<client::InbandChannel> channel_;
  std::uint8_t out_endpoint_ = 0;
  std::optional<std::uint8_t> in_endpoint_;
  std::uint8_t interface_ = 0;
  std::optional<std::string> device_id_;  // cached answer of the printer
  std::unique_ptr<SideChannel> side_channel_;
  bool reading_back_ = false;
  bool cancelled_ = false;
  bool connecting_shown_ = false;   // STATE: +connecting-to-device is set
  std::uint64_t submitted_ = 0;     // bytes handed to the channel
  std::uint64_t acknowledged_ = 0;  // bytes the DTU confirmed written
  std::uint64_t next_progress_ = 0;
  Event wake_;            // cancel() and finder events poke waits
  Event progress_;        // set when bytes are acknowledged or the channel ends
  Event reminder_;        // wakes remind_while_waiting(): cancel, a finder change, the lease came
  bool waiting_ = false;  // the allocate step is under way
  std::string shown_;     // the reason of the last waiting line
  std::chrono::steady_clock::time_point last_said_{};  // when the last waiting line was said
};

}  // namespace dtu::services::cups
