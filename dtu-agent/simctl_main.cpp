// dtu-simctl: drives the simulated USB backend of a running dtu-agent through its control socket.
// Prints the agent's JSON answer. Exit status: 0 ok, 1 the agent answered with an error, 2 no
// answer (cannot connect, timeout).

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "dtu/agent/sim_control.hpp"

namespace {

// "0x84" (hex) or "132" (decimal): an endpoint address.
std::optional<std::uint8_t> parse_endpoint(const std::string& text) {
  const bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  const std::string digits = hex ? text.substr(2) : text;
  if (digits.empty() || digits.size() > 3) return std::nullopt;
  unsigned value = 0;
  for (char c : digits) {
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (hex && c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (hex && c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      return std::nullopt;
    }
    value = value * (hex ? 16u : 10u) + d;
  }
  if (value > 0xff) return std::nullopt;
  return static_cast<std::uint8_t>(value);
}

// Exit codes (the footer and dtu-simctl(1) list them).
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Drive the simulated USB devices of a running dtu-agent."};
  app.footer("Exit status: 0 ok, 1 the agent answered with an error, 2 bad usage, 3 no answer.");
  std::string socket_path;
  std::string port;
  std::string endpoint_text;
  std::string hex;
  app.add_option("--socket", socket_path, "the agent's simulator control socket (required; no default)")->required();
  // A capture of many megabytes, read back as hex, keeps a slow (sanitizer) build busy for seconds.
  unsigned timeout_ms = 5000;
  app.add_option("--timeout-ms", timeout_ms, "how long to wait for the agent's answer (default 5000)")
      ->check(CLI::Range(1u, 600000u));
  app.require_subcommand(1);
  auto* list = app.add_subcommand("list", "list the simulated devices and whether each is plugged");
  auto* plug = app.add_subcommand("plug", "plug a catalogue device");
  auto* unplug = app.add_subcommand("unplug", "unplug a device");
  auto* captured = app.add_subcommand("captured", "show, as hex, what was written to a sink endpoint");
  auto* feed = app.add_subcommand("feed", "queue bytes (hex) on an IN endpoint");
  for (auto* sub : {plug, unplug, captured, feed})
    sub->add_option("PORT", port, "port path, e.g. 1-2")->required();
  const CLI::Validator endpoint_address(
      [](std::string& text) { return parse_endpoint(text) ? std::string() : "not an address from 0 to 255"; },
      "0x84|132");
  for (auto* sub : {captured, feed}) {
    sub->add_option("ENDPOINT", endpoint_text, "endpoint address, e.g. 0x01 or 132")
        ->required()
        ->check(endpoint_address);
  }
  feed->add_option("HEX", hex, "bytes to queue, e.g. 0a0b0c")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the reason; a usage error is 2 whatever its kind (CLI11 would use 100–127).
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  nlohmann::json request;
  if (list->parsed()) request = {{"op", "list"}};
  if (plug->parsed() || unplug->parsed())
    request = {{"op", plug->parsed() ? "plug" : "unplug"}, {"port", port}};
  if (captured->parsed() || feed->parsed()) {
    request = {{"op", captured->parsed() ? "captured" : "feed"},
               {"port", port},
               {"endpoint", *parse_endpoint(endpoint_text)}};  // checked by the validator
    if (feed->parsed()) request["hex"] = hex;
  }

  auto answer = dtu::agent::sim_control_call(socket_path, request, std::chrono::milliseconds(timeout_ms));
  if (!answer) {
    std::cerr << "dtu-simctl: " << answer.error().describe() << "\n"
              << "Is dtu-agent running with the simulated backend and its control socket at " << socket_path
              << "? Start it with --sim-control " << socket_path
              << ", or pass the socket it was given with --socket.\n";
    return kExitUnreachable;
  }
  std::cout << answer->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return answer->value("ok", false) ? 0 : 1;
}
