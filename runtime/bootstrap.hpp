// Where a process sits among the ranks (rank, world, local rank on its host), the agreement
// every rank reaches on its configuration before the first collective, and the agreement on
// whether every rank's local preparation (allocation) succeeded. The MPI-specific part (reading
// these from MPI) is comm/mpi_communicator.hpp; this layer needs no MPI.
#pragma once
#include <cstdint>
#include <exception>
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

// Every rank passes how its local part of `op` ended (null: it succeeded) and learns whether
// every rank succeeded (one small all-reduce on the host control plane; a second one, an
// all-gather of the failures, only when some rank failed). When some rank failed, EVERY rank
// throws the same error naming `op`, the failing ranks and each one's own message (out of
// memory: the bytes requested): OutOfMemory when every failure was out of memory (that type or
// std::bad_alloc), else Error. Collective.
void agree_on_outcome(Communicator& comm, const std::string& op, std::exception_ptr failure);

// Runs `local` (this rank's part of `op` that involves no communication, such as allocating
// every buffer a distributed call needs before its first exchange), then agree_on_outcome: a
// rank that fails is never left behind by peers that went on into an exchange it will not
// join; all ranks stop together. Collective.
template <typename Local>
void run_and_agree(Communicator& comm, const std::string& op, Local&& local) {
  std::exception_ptr failure;
  try {
    local();
  } catch (const std::exception&) {
    failure = std::current_exception();
  }
  agree_on_outcome(comm, op, failure);
}

}  // namespace longattn
