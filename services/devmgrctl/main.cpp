// devmgrctl: the administrator's command line for a devmgr. Verbs: devices, keygen.
// Exit codes: 0 done, 1 the operation failed, 2 bad usage, 3 the manager is unreachable.
#include <iostream>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <nlohmann/json.hpp>

#include "dtu/common/async.hpp"
#include "dtu/common/clock.hpp"
#include "dtu/common/crypto.hpp"
#include "dtu/common/records.hpp"
#include "dtu/common/version.hpp"
#include "dtu/services/manager_client.hpp"
#include "dtu/services/table.hpp"

namespace {

using namespace dtu;

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

int report(const common::Error& error) {
  std::cerr << "devmgrctl: " << error.describe() << '\n';
  if (error.code == common::Errc::unavailable || error.code == common::Errc::timeout) {
    std::cerr << "devmgrctl: is devmgr running? Give its socket with --socket or DTUBROKER_SOCKET.\n";
    return kExitUnreachable;
  }
  return kExitFailed;
}

int run_devices(const std::string& socket, common::Duration timeout, const std::optional<std::string>& dtu,
                bool json) {
  asio::io_context io;
  int code = 0;
  auto task = [&]() -> asio::awaitable<void> {
    auto connect = services::ManagerClient::connect(socket, "devmgrctl", common::SystemClock::instance(), timeout);
    auto client = co_await std::move(connect);
    if (!client.ok()) {
      code = report(client.error());
      co_return;
    }
    auto list = (*client)->list_devices(dtu, timeout);
    auto devices = co_await std::move(list);
    (*client)->close();
    if (!devices.ok()) {
      code = report(devices.error());
      co_return;
    }
    if (json) {
      std::cout << nlohmann::json(*devices).dump(2) << '\n';
    } else {
      services::device_table(*devices).print(std::cout);
    }
  };
  common::spawn(io.get_executor(), task(), common::Logger("devmgrctl"), "devices");
  io.run();
  return code;
}

int run_keygen(const std::string& out, const std::optional<std::string>& dtu, const std::string& site_key_file) {
  common::SecretKey key;
  if (dtu) {
    if (!common::is_valid_id(*dtu)) {
      std::cerr << "devmgrctl: DTU id '" << *dtu << "': expected 1-64 of [A-Za-z0-9._-]\n";
      return kExitUsage;
    }
    auto site = common::load_key_file(site_key_file);
    if (!site.ok()) return report(site.error());
    key.bytes = common::derive_dtu_key(*site, *dtu);
  } else {
    key = common::generate_key();
  }
  if (auto written = common::write_key_file(out, key); !written.ok()) return report(written.error());
  std::cout << (dtu ? "wrote the key of DTU " + *dtu : std::string("wrote a new key")) << " to " << out << '\n';
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"devmgrctl: inspect and operate a dtubroker device manager"};
  app.require_subcommand(1);
  std::string socket = services::default_socket_path();
  int timeout_ms = 5000;
  app.add_option("--socket", socket, "the manager's Unix socket (default: $DTUBROKER_SOCKET or /run/dtubroker/devmgr.sock)");
  app.add_option("--timeout-ms", timeout_ms, "how long to wait for the manager")->check(CLI::Range(1, 600000));
  app.set_version_flag("--version", dtu::common::kVersion);

  auto* devices = app.add_subcommand("devices", "list the devices the manager knows, with their units");
  bool json = false;
  std::optional<std::string> dtu_filter;
  devices->add_flag("--json", json, "print a JSON array of device records (stable field names)");
  devices->add_option("--dtu", dtu_filter, "only this DTU's devices");

  auto* keygen = app.add_subcommand("keygen", "write a new random key, or derive a DTU's key from the site key");
  std::string out;
  std::optional<std::string> keygen_dtu;
  std::string site_key_file = "/etc/dtubroker/site-dtu.key";
  keygen->add_option("--out", out, "file to write (mode 0600)")->required();
  keygen->add_option("--dtu", keygen_dtu, "derive the key of this DTU id instead of generating one");
  keygen->add_option("--site-key", site_key_file, "the site DTU key to derive from (with --dtu)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  const auto timeout = std::chrono::milliseconds(timeout_ms);
  if (devices->parsed()) return run_devices(socket, timeout, dtu_filter, json);
  if (keygen->parsed()) return run_keygen(out, keygen_dtu, site_key_file);
  return kExitUsage;
}
