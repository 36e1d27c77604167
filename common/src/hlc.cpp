#include "dtu/common/hlc.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "dtu/common/check.hpp"

namespace dtu::common {
namespace {

using std::chrono::microseconds;

// The next timestamp after `ts`. A logical counter at its limit carries into wall_us, which keeps
// the order strict; it takes 2^32 events within one microsecond (or a hostile peer) to get there.
HlcTimestamp successor(HlcTimestamp ts) {
  if (ts.logical == std::numeric_limits<uint32_t>::max()) return {ts.wall_us + 1, 0};
  return {ts.wall_us, ts.logical + 1};
}

std::string seconds_text(uint64_t us) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6f s", static_cast<double>(us) / 1e6);
  return buf;
}

}  // namespace

void to_json(nlohmann::json& j, const HlcTimestamp& ts) {
  j = nlohmann::json{{"wall_us", ts.wall_us}, {"logical", ts.logical}};
}

void from_json(const nlohmann::json& j, HlcTimestamp& ts) {
  const nlohmann::json& wall = j.at("wall_us");
  const nlohmann::json& logical = j.at("logical");
  if (!wall.is_number_integer()) {
    throw nlohmann::json::type_error::create(302, "HLC wall_us must be an integer", &wall);
  }
  if (wall.is_number_unsigned() && wall.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
    throw nlohmann::json::out_of_range::create(406, "HLC wall_us out of range", &wall);
  }
  if (!logical.is_number_integer()) {
    throw nlohmann::json::type_error::create(302, "HLC logical must be an integer", &logical);
  }
  if (!logical.is_number_unsigned() || logical.get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
    throw nlohmann::json::out_of_range::create(406, "HLC logical out of range", &logical);
  }
  ts = {wall.get<int64_t>(), logical.get<uint32_t>()};
}

HybridLogicalClock::HybridLogicalClock(const Clock& clock, Duration max_forward_skew)
    : clock_(clock), max_forward_skew_us_(std::chrono::floor<microseconds>(max_forward_skew).count()) {
  DTU_CHECK(max_forward_skew >= Duration::zero());
}

int64_t HybridLogicalClock::physical_us() const {
  return std::chrono::floor<microseconds>((clock_.wall_now() + offset_).time_since_epoch()).count();
}

HlcTimestamp HybridLogicalClock::now() {
  const int64_t physical = physical_us();
  last_ = physical > last_.wall_us ? HlcTimestamp{physical, 0} : successor(last_);
  return last_;
}

Result<HlcTimestamp> HybridLogicalClock::observe(const HlcTimestamp& remote) {
  const int64_t physical = physical_us();
  // Unsigned difference: exact for any remote > physical, no overflow on hostile input.
  if (remote.wall_us > physical) {
    const uint64_t ahead = static_cast<uint64_t>(remote.wall_us) - static_cast<uint64_t>(physical);
    if (ahead > static_cast<uint64_t>(max_forward_skew_us_)) {
      return Error{
          Errc::invalid_argument,
          "remote HLC time wall_us=" + std::to_string(remote.wall_us) + " is " + seconds_text(ahead) +
              " ahead of local physical time wall_us=" + std::to_string(physical) + " (max forward skew " +
              seconds_text(static_cast<uint64_t>(max_forward_skew_us_)) + ")"};
    }
  }
  if (physical > last_.wall_us && physical > remote.wall_us) {
    last_ = {physical, 0};
  } else {
    last_ = successor(std::max(last_, remote));
  }
  return last_;
}

}  // namespace dtu::common
