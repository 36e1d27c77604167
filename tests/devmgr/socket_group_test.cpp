#include "dtu/devmgr/socket_group.hpp"

#include <doctest/doctest.h>

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <nlohmann/json.hpp>

#include "dtu/common/config.hpp"
#include "dtu/devmgr/manager_options.hpp"
#include "support/temp_dir.hpp"

using dtu::common::Errc;
using dtu::devmgr::find_group;
using dtu::devmgr::give_to_group;

namespace {

// This process's own group, by name: a group it may always give its files to.
std::string own_group_name() {
  const group* entry = ::getgrgid(::getegid());
  REQUIRE(entry != nullptr);
  return entry->gr_name;
}

}  // namespace

TEST_CASE("find_group knows a group by name and by number") {
  const auto name = own_group_name();
  auto by_name = find_group(name);
  REQUIRE(by_name.ok());
  CHECK(*by_name == ::getegid());
  auto by_number = find_group(std::to_string(::getegid()));
  REQUIRE(by_number.ok());
  CHECK(*by_number == ::getegid());
}

TEST_CASE("find_group names an unknown group and says it does not exist") {
  auto missing = find_group("no-such-group-dtu");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::config_error);
  CHECK(missing.error().detail == "socket_group 'no-such-group-dtu': no such group");
}

TEST_CASE("give_to_group gives a file to the group and keeps its mode") {
  dtu::testing::UnitTempDir dir;
  const auto path = dir.write("devmgr.sock", "x");
  ::chmod(path.c_str(), 0660);
  REQUIRE(give_to_group(path, own_group_name()).ok());
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_gid == ::getegid());
  CHECK((st.st_mode & 0777) == 0660);
}

TEST_CASE("give_to_group says which socket and group when the file is missing") {
  dtu::testing::UnitTempDir dir;
  const auto path = dir.path("gone.sock");
  auto given = give_to_group(path, own_group_name());
  REQUIRE_FALSE(given.ok());
  CHECK(given.error().code == Errc::io_error);
  CHECK(given.error().detail.find("socket " + path + " to group '" + own_group_name() + "': ") == 0);
}

TEST_CASE("socket_group is a config key, empty by default") {
  dtu::devmgr::ManagerOptions options;
  CHECK(options.socket_group.empty());
  dtu::common::ConfigReader config(nlohmann::json{{"socket_group", "lp"}}, "devmgr.json");
  REQUIRE(dtu::devmgr::apply_config(config, options).ok());
  CHECK(options.socket_group == "lp");
}
