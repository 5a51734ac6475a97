// The subcommands of the longattn command. Each parses its own options, returns an exit code
// (options.hpp's ExitCode) and throws UsageError / InvalidArgument / Error for main() to report.
#pragma once
#include <string>
#include <vector>

#include "launch/process_group.hpp"

namespace longattn::cli {

using Args = std::vector<std::string>;

int cmd_run(const Args& args, const ProcessGroup& mpi);
int cmd_pattern(const Args& args, const ProcessGroup& mpi);
int cmd_verify(const Args& args, const ProcessGroup& mpi);

}  // namespace longattn::cli
