#pragma once
// The control socket's group (socket_group, --socket-group): the group whose members may connect
// when socket_mode gives the group rw (docs/systemd.md: the CUPS backend runs as lp with only the
// group lp). Plain functions; main thread, before the io_context runs.

#include <sys/types.h>
#include <string>

#include "dtu/common/result.hpp"

namespace dtu::devmgr {

// The id of the group called `name` (or a number). Errc::config_error naming it when unknown.
common::Result<gid_t> find_group(const std::string& name);

// Gives the file at `path` to `group`. Errc::config_error when the group is unknown,
// Errc::denied when this process may not (it is neither root nor a member of the group),
// Errc::io_error otherwise; the error names the socket, the group and why.
common::Result<void> give_to_group(const std::string& path, const std::string& group);

}  // namespace dtu::devmgr
