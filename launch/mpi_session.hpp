// The longattn command's MPI session: initialised only when a launcher (mpirun, srun) started
// the process, so a plain `longattn ...` never touches MPI. Rank 0 gathers per-rank text.
#pragma once
#include <string>
#include <vector>

namespace longattn::cli {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool active() const { return active_; }  // MPI was initialised (under a launcher)
  int rank() const { return rank_; }
  int world() const { return world_; }
  // Ranks on this node (for sharing the cores among them); 1 without MPI.
  int local_world() const { return local_world_; }
  // Every rank's string, in rank order, on rank 0; an empty vector on the other ranks.
  std::vector<std::string> gather(const std::string& mine) const;
  // The maximum of every rank's value, on every rank.
  int max_all(int value) const;
  void barrier() const;
  // Ends every rank with `code` (used when one rank fails where the others may be waiting).
  [[noreturn]] void abort(int code) const;

 private:
  bool active_ = false;
  int rank_ = 0, world_ = 1, local_world_ = 1;
};

// True when the environment shows a process launcher (Open MPI, MPICH/PMI, PMIx, SLURM step).
bool launched_by_mpi();

}  // namespace longattn::cli
