#pragma once
// TempDir for unit tests: a fresh directory under the system temp dir, removed with everything in
// it at scope exit, with helpers to name and write files in it. Main test thread only.
// (Integration tests have their own in tests/integration/harness.hpp, with the site's layout.)

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <doctest/doctest.h>

namespace dtu::testing {

class UnitTempDir {
 public:
  UnitTempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dtu_test_XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~UnitTempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  UnitTempDir(const UnitTempDir&) = delete;
  UnitTempDir& operator=(const UnitTempDir&) = delete;

  // The path of `name` in the directory (the file need not exist).
  std::string path(const std::string& name) const { return (path_ / name).string(); }
  // Writes `content` to `name` (replacing it) and returns its path.
  std::string write(const std::string& name, const std::string& content) const {
    const std::string file = path(name);
    std::ofstream(file, std::ios::binary) << content;
    return file;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace dtu::testing
