// The ranks the longattn command runs on: MPI is initialised only when a launcher (mpirun,
// srun) started the process, so a plain `longattn ...` never touches MPI. Gives the
// communicator the distributed variants use and the few host transfers the command needs.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "kernels/backend.hpp"

namespace longattn::cli {

class ProcessGroup {
 public:
  ProcessGroup(int* argc, char*** argv);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // MPI was initialised (started by a launcher, possibly with one rank).
  bool active() const { return active_; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  // This rank's index among the ranks of its node (its GPU), and their number; 0 and 1 without MPI.
  int local_rank() const { return local_rank_; }
  int local_world() const { return local_world_; }
  // The MPI communicator of the distributed variants; only when active().
  Communicator& comm() const;
  // The communicator that moves `be`'s memory: comm() for the CPU backend, an NCCL
  // communicator for a CUDA backend (made on first use, collectively, with comm()'s timeout;
  // rank 0 prints the device table). Only when active().
  Communicator& comm_for(Backend& be) const;

  // Every rank's string, in rank order, on rank 0; an empty vector on the other ranks.
  std::vector<std::string> gather(const std::string& mine) const;
  // The maximum of every rank's value, on every rank.
  int max_all(int value) const;
  // Point-to-point host transfer of `bytes` bytes (blocking).
  void send(const void* buf, size_t bytes, int dest, int tag) const;
  void recv(void* buf, size_t bytes, int source, int tag) const;
  // Ends every rank with `code` (when one rank fails where the others may be waiting).
  [[noreturn]] void abort(int code) const;

 private:
  bool active_ = false;
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1;
  std::unique_ptr<Communicator> comm_;
  mutable std::unique_ptr<Communicator> device_comm_;
  mutable const Backend* device_comm_backend_ = nullptr;
};

// True when the environment shows a process launcher (Open MPI, PMI, PMIx), or LONGATTN_MPI=1.
bool launched_by_mpi();

}  // namespace longattn::cli
