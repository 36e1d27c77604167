#pragma once
// Result<T>: a value or an error (std::error_code plus a human-readable detail).
// A plain value type; not thread-safe beyond what its members are.

#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include "dtu/common/check.hpp"
#include "dtu/common/errors.hpp"

namespace dtu::common {

// Error: what went wrong (code) and, for people, where and why (detail).
struct Error {
  std::error_code code;
  std::string detail;

  Error() = default;
  Error(std::error_code c, std::string d = {}) : code(c), detail(std::move(d)) {}
  Error(Errc c, std::string d = {}) : code(make_error_code(c)), detail(std::move(d)) {}

  // "detail (message)" or just the message when there is no detail.
  std::string describe() const {
    return detail.empty() ? code.message() : detail + " (" + code.message() + ")";
  }
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  Result(Errc code, std::string detail = {}) : v_(Error{code, std::move(detail)}) {}

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  // REQUIRES: ok()
  T& value() & { DTU_CHECK(ok()); return std::get<T>(v_); }
  const T& value() const& { DTU_CHECK(ok()); return std::get<T>(v_); }
  T&& value() && { DTU_CHECK(ok()); return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // REQUIRES: !ok()
  const Error& error() const { DTU_CHECK(!ok()); return std::get<Error>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT
  Result(Errc code, std::string detail = {}) : error_(code, std::move(detail)), failed_(true) {}

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  // REQUIRES: !ok()
  const Error& error() const { DTU_CHECK(failed_); return error_; }

 private:
  Error error_;
  bool failed_ = false;
};

}  // namespace dtu::common
