#pragma once
// Device discovery of the `dtu` CUPS backend (backend(7): run without arguments): one
// "direct dtu://… "make and model" "info" "device id"" line on stdout per printer unit the local
// manager lets this user see, across the whole group. Runs on the caller's io_context thread.

#include <string>

#include <asio.hpp>

namespace dtu::services::cups {

// Lists the printers through the manager at `socket`; the exit status (always CUPS_BACKEND_OK:
// an unreachable or refusing manager means "no devices", said on a DEBUG: line). Bounded by
// about kListingBudget.
asio::awaitable<int> list_printers(std::string socket);

}  // namespace dtu::services::cups
