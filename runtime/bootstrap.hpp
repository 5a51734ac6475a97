// Where a process sits among the ranks (rank, world, local rank on its host) and the agreement
// every rank reaches on its configuration before the first collective. The MPI-specific part
// (reading these from MPI) is comm/mpi_communicator.hpp; this layer needs no MPI.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace longattn {

class Communicator;

struct RankInfo {
  int rank = 0, world = 1;
  int local_rank = 0, local_world = 1;  // among the ranks on this host (one GPU each)
  std::string host;
};

// FNV-1a 64-bit hash of a canonical configuration string.
uint64_t config_hash(std::string_view canonical);

// Every rank passes the canonical string of the configuration it is about to run; their hashes
// are compared across all ranks (one small all-gather on the host control plane). A mismatch
// throws Error on EVERY rank naming the ranks whose hash differs from rank 0's and this rank's
// own description, so no rank goes on to a collective its peers will never join. `what` says
// which configuration ("distributed attention", ...).
void agree_on_config(Communicator& comm, std::string_view canonical, const std::string& what);

}  // namespace longattn
