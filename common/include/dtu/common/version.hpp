#pragma once
// The software version every program reports (hello messages, --version).

namespace dtu::common {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace dtu::common
