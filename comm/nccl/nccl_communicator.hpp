// The NCCL backend of the Communicator: one rank per GPU, exchanges and collectives over DEVICE
// buffers on the communicator's own stream, ordered against the CUDA backend's work stream with
// events; the host control plane (*_host, barrier) over MPI. Also the GPU bootstrap: which GPU
// a rank takes (its local rank), the device table every rank checks before NCCL starts (two
// ranks on one GPU, more ranks than GPUs: an error on every rank), and the ncclUniqueId
// broadcast over MPI.
#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "comm/mpi_communicator.hpp"
#include "kernels/cuda/cuda_backend.hpp"

// Opaque handles of NCCL and the CUDA runtime, so this header needs neither nccl.h nor CUDA.
struct ncclComm;
struct CUstream_st;
struct CUevent_st;

namespace longattn {

// One rank's GPU as every rank sees it after the gather (rank order).
struct GpuRankInfo {
  int rank = 0, local_rank = 0, local_world = 1;
  int device = 0;        // CUDA device index on its host (after CUDA_VISIBLE_DEVICES)
  int device_count = 0;  // GPUs visible to that rank
  std::string host, name;
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it
  uint64_t total_bytes = 0;
};

// The device index this rank should use: its local rank among the ranks of its host
// (MPI_Comm_split_type). Collective over `comm`: when a host runs more ranks than it has visible
// GPUs (or none), EVERY rank throws InvalidArgument naming the host and both counts.
int select_local_device(MPI_Comm comm = MPI_COMM_WORLD,
                        CommOptions options = comm_options_from_env());

// Every rank's GpuRankInfo for `device` on this rank, in rank order. Collective.
std::vector<GpuRankInfo> gather_gpu_table(MpiCommunicator& comm, int device);
// Throws InvalidArgument (the same on every rank, which all hold the same table) when two
// ranks use one GPU (same UUID) or a host runs more ranks than its visible GPUs.
void check_gpu_table(const std::vector<GpuRankInfo>& table);
// The rank-ordered table: rank, host, local rank, device, name, UUID prefix, memory.
std::string format_gpu_table(const std::vector<GpuRankInfo>& table);

// What an NcclCommunicator has moved since it was created (payload bytes of this rank).
struct NcclStats {
  int64_t exchanges = 0;  // start_exchange calls that moved at least one byte
  int64_t sends = 0, recvs = 0;
  int64_t bytes_sent = 0, bytes_received = 0;
  int64_t collectives = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `comm`: every rank passes the CUDA backend of its own GPU. Gathers and
  // checks the device table (rank 0 prints it to stderr when print_table), sets
  // NCCL_NVLS_ENABLE=0 unless the environment sets it, takes the ncclUniqueId from rank 0 over
  // MPI and creates a nonblocking NCCL communicator, each step bounded by the timeout.
  // `backend` must outlive every exchange; the communicator may outlive the backend if no call
  // is made after the backend is gone.
  NcclCommunicator(MPI_Comm comm, CudaBackend& backend,
                   CommOptions options = comm_options_from_env(), bool print_table = true);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string backend() const override { return "nccl"; }
  DeviceKind buffer_device() const override { return DeviceKind::Cuda; }
  double timeout_seconds() const override { return options_.timeout_seconds; }
  void set_timeout_seconds(double seconds) override;

  // ncclGroupStart / ncclSend / ncclRecv / ncclGroupEnd on the communicator's stream, which
  // first waits for everything already queued on the backend's work stream (an event), so
  // sends see finished compute and receives never overwrite what a queued kernel still reads.
  // Returns at once; the request's wait() polls the completion event and NCCL's asynchronous
  // error with the timeout, then makes the work stream wait for the transfer (no host-device
  // synchronisation of the work stream). On timeout or NCCL error: the NCCL communicator is
  // aborted and CommError names the operation, ring step, peers and how to get NCCL's
  // diagnostics.
  CommRequest start_exchange(const std::vector<SendSpec>& sends, const std::vector<RecvSpec>& recvs,
                             CommOp op) override;
  // Device collectives through NCCL (ordered like exchanges), blocking the host until done.
  void allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce, CommOp op) override;
  void broadcast(void* buf, size_t bytes, int root, CommOp op) override;
  // Host control plane over MPI (the barrier orders ranks, not device work).
  void barrier(CommOp op) override;
  void allgather_host(const void* send, size_t bytes, void* recv, CommOp op) override;
  void broadcast_host(void* buf, size_t bytes, int root, CommOp op) override;
  void allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) override;

  int device() const { return device_; }
  const std::vector<GpuRankInfo>& devices() const { return table_; }
  std::string device_table() const { return format_gpu_table(table_); }
  // NCCL's version as "2.28.3".
  static std::string nccl_version();
  const NcclStats& stats() const { return stats_; }
  // The communicator's own stream (cudaStream_t) and the backend's work stream.
  void* comm_stream() const { return comm_stream_; }
  void* work_stream() const { return work_stream_; }
  // True after a timeout or NCCL error: the NCCL communicator was aborted and every later call
  // throws CommError.
  bool broken() const { return broken_; }

 private:
  friend class NcclPendingExchange;
  // Makes the comm stream wait for the work stream's queued work.
  void order_after_work();
  // A completion event recorded on the comm stream (from a pool).
  CUevent_st* record_done();
  void recycle(CUevent_st* ev);
  // Polls `done` and NCCL's asynchronous state until done or failure (see start_exchange).
  void wait_done(CUevent_st* done, const CommOp& op, const std::string& name,
                 const std::string& peers);
  // After ncclGroupEnd (or init) of a nonblocking communicator: polls until NCCL has enqueued.
  void wait_enqueued(const CommOp& op, const std::string& name, const std::string& peers);
  [[noreturn]] void fail(const std::string& what, const CommOp& op, const std::string& name,
                         const std::string& peers, bool timed_out, double waited);
  void check_usable(const CommOp& op) const;
  void abort_nccl() noexcept;

  MpiCommunicator mpi_;  // control plane (a duplicate of the caller's communicator)
  CommOptions options_;
  int rank_ = 0, world_ = 1, device_ = 0;
  std::vector<GpuRankInfo> table_;
  ncclComm* nccl_ = nullptr;
  CUstream_st* comm_stream_ = nullptr;
  CUstream_st* work_stream_ = nullptr;
  CUevent_st* ready_ = nullptr;
  std::vector<CUevent_st*> free_events_;
  bool broken_ = false;
  NcclStats stats_;
};

// The usual bootstrap of a GPU rank: select_local_device, a CUDA backend on it, an
// NcclCommunicator over MPI_COMM_WORLD. Collective.
struct GpuRank {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<NcclCommunicator> comm;
};
GpuRank make_gpu_rank(CommOptions options = comm_options_from_env(), bool print_table = true);

}  // namespace longattn
