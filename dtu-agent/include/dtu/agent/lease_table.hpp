#pragma once
// LeaseTable: the leases a DTU has granted (DESIGN.md §5). The DTU has the final word on its
// units; this table is its memory of who holds what and until when. A lease expires on the
// agent's monotonic clock unless it is renewed (through the manager, or in-band by its holder).
//
// Each lease carries a token of kLeaseTokenBytes random bytes: the PSK of the in-band TLS
// channel, with the lease id as the PSK identity (DESIGN.md §2). Ended leases are remembered
// for kEndedMemory, so a holder that comes late is told why ("expired", "released") instead of
// meeting an unknown id.
//
// Sans-I/O: time comes from the Clock; the owner (DtuAgent) calls expire() at next_expiry().
// Whether a unit may be leased (free, not made unavailable by a sibling) is the owner's check:
// the table only keeps leases. Not thread-safe: the agent's io_context thread.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/result.hpp"

namespace dtu::agent {

inline constexpr std::size_t kLeaseTokenBytes = 32;
// Bounds on a lease's length (and on one renewal): shorter is a typo, longer outlives the
// manager's knowledge of the holder.
inline constexpr common::Duration kMinLeaseLength = std::chrono::milliseconds(100);
inline constexpr common::Duration kMaxLeaseLength = std::chrono::hours(24);
// How long an ended lease is remembered (for the reason given to a late in-band client).
inline constexpr common::Duration kEndedMemory = std::chrono::minutes(10);
inline constexpr std::size_t kMaxEndedRemembered = 1024;

// Why a lease ended.
enum class LeaseEnd { released, expired, device_gone, agent_stopping };
const char* lease_end_name(LeaseEnd why);

struct Lease {
  std::string id;                        // 16 lower-case hex digits; the in-band PSK identity
  std::string device;                    // port path of the device
  std::uint32_t unit = 0;                // the unit (its first interface number)
  std::vector<std::uint8_t> interfaces;  // every interface the unit covers
  std::string holder;                    // service id, as the manager names it
  common::Bytes token;                   // kLeaseTokenBytes random bytes: the in-band PSK
  common::Duration length{};             // as granted (or last renewed)
  common::MonoTime expires{};
  std::optional<std::uint32_t> uid;      // the holder's uid, as its manager gave it (reports, logs)
  // The signed manager-side context the owner manager gave with the lease (or its last renewal);
  // opaque here, reported back on every connect so a new owner can adopt the lease.
  std::optional<std::string> state_token;
};

struct EndedLease {
  std::string id;
  std::string device;
  std::uint32_t unit = 0;
  common::Bytes token;
  LeaseEnd why = LeaseEnd::released;
  common::MonoTime at{};
};

class LeaseTable {
 public:
  explicit LeaseTable(const common::Clock& clock) : clock_(clock) {}

  // A new lease on (device, unit) for `holder`, expiring `length` from now.
  // Errors: Errc::invalid_argument when length is outside [kMinLeaseLength, kMaxLeaseLength];
  // Errc::refused when the unit is already leased (the reason names the holder and lease).
  // uid and state_token are kept with the lease as given.
  common::Result<Lease> grant(std::string device, std::uint32_t unit, std::vector<std::uint8_t> interfaces,
                              std::string holder, common::Duration length,
                              std::optional<std::uint32_t> uid = std::nullopt,
                              std::optional<std::string> state_token = std::nullopt);

  // Moves the expiry to now + length, never earlier than it was. Errors: Errc::invalid_argument
  // (length out of bounds), Errc::not_found (unknown id; an ended lease's reason is in the text).
  common::Result<Lease> renew(std::string_view id, common::Duration length);

  // Replaces the state token kept with an active lease; false when it is not active.
  bool set_state_token(std::string_view id, std::string state_token);

  // Ends one lease; nullopt when it is not active.
  std::optional<Lease> end(std::string_view id, LeaseEnd why);
  // Ends every lease on `device` (unplugged).
  std::vector<Lease> end_device(const std::string& device, LeaseEnd why);
  // Ends every lease (the agent stops).
  std::vector<Lease> end_all(LeaseEnd why);
  // Ends the leases whose expiry is at or before now.
  std::vector<Lease> expire();

  const Lease* find(std::string_view id) const;
  const Lease* holding(const std::string& device, std::uint32_t unit) const;
  std::vector<const Lease*> on_device(const std::string& device) const;
  std::vector<const Lease*> all() const;
  // A lease that ended within kEndedMemory; nullptr otherwise.
  const EndedLease* ended(std::string_view id) const;
  // The earliest expiry of an active lease, or common::kNever.
  common::MonoTime next_expiry() const;
  std::size_t size() const { return leases_.size(); }

 private:
  void remember(const Lease& lease, LeaseEnd why);

  const common::Clock& clock_;
  std::map<std::string, Lease, std::less<>> leases_;  // by id
  std::deque<EndedLease> ended_;                      // oldest first
};

}  // namespace dtu::agent
