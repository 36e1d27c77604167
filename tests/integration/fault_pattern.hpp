// The fault suite's stream content: every in-band job a workload (tests/tools/fault_workload.cpp)
// streams is a seeded, position-dependent byte pattern, so that the history checker
// (fault_history.hpp) can tell a lost, duplicated, reordered or foreign chunk in what a simulated
// device captured from the bytes the history says were written. Header-only and dependency-free:
// the workload and the checker compile the same function. Pure; any thread.
#pragma once

#include <cstdint>
#include <vector>

namespace dtu::testing::faults {

// Byte `offset` of job `job` of the workload seeded `seed`. Each 8-byte block is one splitmix64
// output of (seed, job, block): two jobs (or two offsets of one job) agree on a block only by
// chance (2^-64), so any misplaced 64 KiB chunk differs at its first byte with probability
// 255/256 and within its first block almost surely.
inline std::uint8_t pattern_byte(std::uint64_t seed, std::uint64_t job, std::uint64_t offset) {
  std::uint64_t x =
      seed * 0x9E3779B97F4A7C15ull + job * 0xC2B2AE3D27D4EB4Full + (offset / 8) * 0x165667B19E3779F9ull;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<std::uint8_t>(x >> (8 * (offset % 8)));
}

// The first `length` bytes of job `job` of the workload seeded `seed`.
inline std::vector<std::uint8_t> job_pattern(std::uint64_t seed, std::uint64_t job, std::uint64_t length) {
  std::vector<std::uint8_t> out(length);
  for (std::uint64_t i = 0; i < length; ++i) out[i] = pattern_byte(seed, job, i);
  return out;
}

}  // namespace dtu::testing::faults
