// The Communicator interface of longattn: grouped point-to-point exchanges (the ring's send to
// next / receive from previous, sub-group all-gathers), collectives, and a small host-side
// control plane. Backends: MPI over host buffers (comm/mpi_communicator.hpp), NCCL over device
// buffers (comm/nccl/). attention/ code sees only this header: no mpi.h, no nccl.h here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dtype.hpp"
#include "runtime/tensor.hpp"

namespace longattn {

// What a communication call is doing, reported when it times out or fails: "ring_forward kv",
// step 3. step < 0 means the call is not part of a ring.
struct CommOp {
  const char* name = "comm";
  int step = -1;
};

// How long any wait may last before the rank gives up with CommError.
struct CommOptions {
  static constexpr double kDefaultTimeoutSeconds = 300.0;
  double timeout_seconds = kDefaultTimeoutSeconds;
};

// kDefaultTimeoutSeconds, or LONGATTN_COMM_TIMEOUT (seconds, a positive number) when set.
// A malformed value throws InvalidArgument naming the variable.
double comm_timeout_from_env();
// Options with the timeout from the environment (what programs normally use).
CommOptions comm_options_from_env();

// One side of a grouped exchange. Buffers live where the communicator's buffer_device() says.
struct SendSpec {
  const void* buf = nullptr;
  size_t bytes = 0;
  int peer = 0;
};
struct RecvSpec {
  void* buf = nullptr;
  size_t bytes = 0;
  int peer = 0;
};

enum class ReduceOp { Sum, Max, Min };

// An exchange in flight, filled in by a backend.
class PendingComm {
 public:
  virtual ~PendingComm() = default;  // abandons what is still outstanding (never blocks)
  // Blocks until every send and receive has completed; throws CommError after the
  // communicator's timeout naming the operation, the step and the peers still outstanding.
  virtual void wait() = 0;
};

// A move-only handle on an exchange in flight. An empty handle waits for nothing.
class CommRequest {
 public:
  CommRequest() = default;
  explicit CommRequest(std::unique_ptr<PendingComm> p) : pending_(std::move(p)) {}
  bool active() const { return pending_ != nullptr; }
  void wait() {
    if (!pending_) return;
    auto p = std::move(pending_);
    p->wait();
  }

 private:
  std::unique_ptr<PendingComm> pending_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string backend() const = 0;  // "mpi", "nccl"
  // Where exchange, collective and broadcast buffers must live (Cpu for MPI, Cuda for NCCL).
  virtual DeviceKind buffer_device() const = 0;
  virtual double timeout_seconds() const = 0;
  virtual void set_timeout_seconds(double seconds) = 0;

  // Posts every send and receive as one group and returns at once; the buffers must stay
  // untouched (sends) or unread (receives) until the request is waited. Zero-byte entries are
  // skipped: both sides derive sizes from the same plan. Between two ranks, messages of
  // successive calls match in the order they were posted.
  virtual CommRequest start_exchange(const std::vector<SendSpec>& sends,
                                     const std::vector<RecvSpec>& recvs, CommOp op) = 0;

  // Blocking collectives over all ranks on buffer_device() memory, each bounded by the timeout.
  // allreduce: dtype F64 or F32, in place.
  virtual void allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce, CommOp op) = 0;
  virtual void broadcast(void* buf, size_t bytes, int root, CommOp op) = 0;
  virtual void barrier(CommOp op) = 0;

  // Control plane on HOST memory (small messages: hashes, shapes, counters), on every backend.
  // allgather_host: recv holds world() * bytes, rank i's contribution at i * bytes.
  virtual void allgather_host(const void* send, size_t bytes, void* recv, CommOp op) = 0;
  virtual void broadcast_host(void* buf, size_t bytes, int root, CommOp op) = 0;
  virtual void allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) = 0;

  // --- Helpers built on the primitives above ---
  int next() const { return (rank() + 1) % world(); }
  int prev() const { return (rank() + world() - 1) % world(); }

  // The ring's grouped step: send `bytes` of send_buf to `next`, receive `bytes` into recv_buf
  // from `prev`, as one non-blocking group.
  CommRequest start_sendrecv_ring(const void* send_buf, void* recv_buf, size_t bytes, int next,
                                  int prev, CommOp op) {
    return start_exchange({SendSpec{send_buf, bytes, next}}, {RecvSpec{recv_buf, bytes, prev}}, op);
  }
  void sendrecv_ring(const void* send_buf, void* recv_buf, size_t bytes, int next, int prev,
                     CommOp op) {
    start_sendrecv_ring(send_buf, recv_buf, bytes, next, prev, op).wait();
  }
  // General blocking send-to / receive-from given peers (either side may be zero bytes).
  void sendrecv(const void* send_buf, size_t send_bytes, int dst, void* recv_buf, size_t recv_bytes,
                int src, CommOp op) {
    start_exchange({SendSpec{send_buf, send_bytes, dst}}, {RecvSpec{recv_buf, recv_bytes, src}}, op)
        .wait();
  }

  // All-gather within a sub-group `ranks` (this rank among them, same list on every member):
  // this rank's `send` (bytes[i] for member i, possibly different per member) goes to every
  // other member, and member i's contribution arrives in recv[i]. This rank's own slot is
  // left untouched (the caller already holds that data and copies it with its backend).
  CommRequest start_allgather_group(const std::vector<int>& ranks, const void* send,
                                    const std::vector<size_t>& bytes,
                                    const std::vector<void*>& recv, CommOp op) {
    std::vector<SendSpec> sends;
    std::vector<RecvSpec> recvs;
    size_t mine = 0;
    for (size_t i = 0; i < ranks.size(); ++i)
      if (ranks[i] == rank()) mine = bytes[i];
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] == rank()) continue;
      sends.push_back(SendSpec{send, mine, ranks[i]});
      recvs.push_back(RecvSpec{recv[i], bytes[i], ranks[i]});
    }
    return start_exchange(sends, recvs, op);
  }
  void allgather_group(const std::vector<int>& ranks, const void* send,
                       const std::vector<size_t>& bytes, const std::vector<void*>& recv,
                       CommOp op) {
    start_allgather_group(ranks, send, bytes, recv, op).wait();
  }
};

}  // namespace longattn
