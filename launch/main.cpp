// The longattn command: dispatches to the subcommands and alone decides the exit code
// (0 ok, 1 error, 2 invalid argument, 3 verification above tolerance).
#include <boost/program_options/errors.hpp>
#include <cstring>
#include <memory>
#include <iostream>
#include <string>
#include <vector>

#include "launch/bench.hpp"
#include "launch/commands.hpp"
#include "launch/process_group.hpp"
#include "launch/options.hpp"
#include "runtime/error.hpp"

// The build may pass the project version; otherwise this release's.
#ifndef LONGATTN_VERSION
#define LONGATTN_VERSION "0.1.0"
#endif

namespace {

using longattn::cli::Args;
using longattn::cli::ProcessGroup;

struct Command {
  const char* name;
  const char* summary;
  int (*fn)(const Args&, const ProcessGroup&);
};

const Command kCommands[] = {
    {"run", "run one attention variant on .npy or random inputs; write O, LSE (and dQ, dK, dV)",
     longattn::cli::cmd_run},
    {"pattern", "summarise a block-sparse pattern's block mask (pairs, density, per-row counts)",
     longattn::cli::cmd_pattern},
    {"verify", "check variants against the naive fp64 reference (--all: every variant and preset)",
     longattn::cli::cmd_verify},
    {"bench", "time variants over the ranks: nccl-tests-style table, suites, --json/--csv",
     longattn::cli::cmd_bench},
};

void print_usage(std::ostream& os) {
  os << "longattn " << LONGATTN_VERSION
     << ": exact long-sequence attention (dense, dilated, block-sparse), forward and backward,\n"
        "on CPU ranks and CUDA GPUs.\n\n"
        "Usage: longattn <command> [options]      (longattn <command> --help lists its options)\n\n"
        "Commands:\n";
  for (const auto& c : kCommands) os << "  " << c.name << std::string(10 - std::strlen(c.name), ' ') << c.summary << "\n";
  os << "\nExit codes: 0 ok, 1 error, 2 invalid argument, 3 verification above tolerance\n"
        "(bench: #wrong > 0), 4 bench regression beyond its threshold.\n"
        "Several CPU ranks: mpirun -np 4 longattn verify --all  (add --oversubscribe with fewer "
        "cores,\n--allow-run-as-root as root).\n";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace longattn::cli;
  std::unique_ptr<ProcessGroup> session;
  try {
    session = std::make_unique<ProcessGroup>(&argc, &argv);
  } catch (const std::exception& e) {
    std::cerr << "longattn: error: " << e.what() << "\n";
    return kExitError;
  }
  const ProcessGroup& mpi = *session;
  try {
    const Args all(argv + 1, argv + argc);
    if (all.empty() || all[0] == "--help" || all[0] == "-h" || all[0] == "help") {
      if (all.size() >= 2 && all[0] == "help") {
        for (const auto& c : kCommands)
          if (all[1] == c.name) return c.fn({"--help"}, mpi);
      }
      if (mpi.rank() == 0) print_usage(all.empty() ? std::cerr : std::cout);
      return all.empty() ? kExitInvalidArgument : kExitOk;
    }
    if (all[0] == "--version") {
      if (mpi.rank() == 0) std::cout << "longattn " << LONGATTN_VERSION << "\n";
      return kExitOk;
    }
    for (const auto& c : kCommands)
      if (all[0] == c.name) return c.fn(Args(all.begin() + 1, all.end()), mpi);
    if (mpi.rank() == 0) {
      std::cerr << "longattn: unknown command '" << all[0] << "'; the commands are:";
      for (const auto& c : kCommands) std::cerr << " " << c.name;
      std::cerr << " (see longattn --help)\n";
    }
    return kExitInvalidArgument;
  } catch (const UsageError& e) {
    // Every rank parsed the same arguments, so every rank stops here: rank 0 reports.
    if (mpi.rank() == 0) std::cerr << "longattn: " << e.what() << "\n";
    return kExitInvalidArgument;
  } catch (const longattn::InvalidArgument& e) {
    if (mpi.rank() == 0) std::cerr << "longattn: " << e.what() << "\n";
    return kExitInvalidArgument;
  } catch (const std::exception& e) {
    std::cerr << "longattn";
    if (mpi.world() > 1) std::cerr << " rank " << mpi.rank();
    std::cerr << ": error: " << e.what() << "\n";
    // Other ranks may be waiting for this one in a collective: end them all.
    if (mpi.world() > 1) mpi.abort(kExitError);
    return kExitError;
  }
}
