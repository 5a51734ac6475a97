// The MPI backend of the Communicator (host buffers; the CPU backend and CI use it), the MPI
// bootstrap (rank, world, local rank) and the MPI checking macro. Every wait is a polling loop
// bounded by the communicator's timeout: a peer that never answers becomes a CommError naming
// the operation, ring step and peer, never a hang.
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "runtime/bootstrap.hpp"

namespace longattn {

// Throws CommError "host rank R: file:line: MPI call `call` failed: <MPI error string>".
void mpi_check_failed(int code, const char* call, const char* file, int line);
#define LONGATTN_MPI_CHECK(call)                                                 \
  do {                                                                           \
    const int longattn_mpi_rc_ = (call);                                         \
    if (longattn_mpi_rc_ != MPI_SUCCESS)                                         \
      ::longattn::mpi_check_failed(longattn_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// Rank, world, and the local rank among the ranks sharing this host (MPI_Comm_split_type with
// MPI_COMM_TYPE_SHARED). Also sets the logging rank prefix. Collective over `comm`.
RankInfo mpi_rank_info(MPI_Comm comm = MPI_COMM_WORLD);

// Initialises MPI (thread level FUNNELED: only the calling thread talks to MPI) unless it
// already is, reads the RankInfo, and finalises on destruction if it initialised.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  const RankInfo& info() const { return info_; }

 private:
  bool owns_ = false;
  RankInfo info_;
};

// For main() only: tears down every rank of MPI_COMM_WORLD with this exit code. This is what a
// program does after a CommError so that the ranks still waiting do not wait for their timeout.
[[noreturn]] void mpi_abort(int exit_code);

class MpiCommunicator final : public Communicator {
 public:
  // Works on a duplicate of `comm` (collective), so longattn's messages never match the
  // application's. Errors are returned, not fatal, and become CommError.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD,
                           CommOptions options = comm_options_from_env());
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string backend() const override { return "mpi"; }
  DeviceKind buffer_device() const override { return DeviceKind::Cpu; }
  double timeout_seconds() const override { return options_.timeout_seconds; }
  void set_timeout_seconds(double seconds) override;

  CommRequest start_exchange(const std::vector<SendSpec>& sends, const std::vector<RecvSpec>& recvs,
                             CommOp op) override;
  void allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce, CommOp op) override;
  void broadcast(void* buf, size_t bytes, int root, CommOp op) override;
  void barrier(CommOp op) override;
  void allgather_host(const void* send, size_t bytes, void* recv, CommOp op) override;
  void broadcast_host(void* buf, size_t bytes, int root, CommOp op) override;
  void allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) override;

  MPI_Comm handle() const { return comm_; }
  // True after a wait timed out: outstanding messages were abandoned and the communicator must
  // not be used again (the program is expected to abort).
  bool broken() const { return broken_; }

 private:
  friend class MpiPendingExchange;
  void wait_collective(MPI_Request& req, CommOp op, const char* what);
  void check_usable(CommOp op) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, world_ = 1;
  CommOptions options_;
  bool broken_ = false;
};

// Builds an MpiCommunicator over MPI_COMM_WORLD with the environment's options.
std::unique_ptr<Communicator> make_mpi_communicator(CommOptions options = comm_options_from_env());

}  // namespace longattn
