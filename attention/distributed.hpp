// Distributed attention over P ranks: one interface for the ring (dense), the block-sparse ring,
// distributed dilated attention and data-parallel mode, the factory, and the helpers that run a
// variant on full host tensors held by rank 0 (scatter, run, gather) for `longattn run` and
// `verify`. Written against Backend and Communicator only: the same code runs on CPU ranks over
// MPI and on GPUs over NCCL.
//
// Library API in brief (every rank calls the same functions in the same order):
//   auto comm = make_mpi_communicator();          // comm/mpi_communicator.hpp
//   auto be = make_cpu_backend();
//   AttentionSpec spec; spec.variant = "dense"; spec.causal = true;
//   DistConfig cfg{DistMode::Ring, Sharding::Zigzag};
//   // rank 0 holds full host tensors; other ranks pass empty views
//   DistributedResult r = run_distributed(spec, cfg, *comm, *be, {q, k, v, d_o}, true);
//   // rank 0: r.o, r.lse, r.dq, r.dk, r.dv are the full results; r.forward_total the counters
// Or, with data already sharded (rank r holding local_shape() rows on its backend):
//   auto attn = make_distributed_attention(spec, cfg, *comm);
//   attn->forward(*be, q_local, k_local, v_local, o_local, lse_local);
//   attn->backward(*be, q_local, ..., dq_local, dk_local, dv_local);
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "attention/ring.hpp"
#include "attention/spec.hpp"
#include "comm/communicator.hpp"
#include "kernels/backend.hpp"
#include "runtime/sharding.hpp"

namespace longattn {

// ring: dense attention, K/V rotating (spec.variant "dense").
// block_sparse_ring: block-sparse attention, only needed K/V blocks travel ("block_sparse" or
//   "block_sparse:<preset>").
// dilated: distributed dilated attention, both modes ("dilated"; contiguous sharding only).
// data_parallel: whole sequences per rank, the batch split over ranks, any variant, no
//   communication inside attention.
enum class DistMode { Ring, BlockSparseRing, Dilated, DataParallel };
const char* dist_mode_name(DistMode m);
std::vector<std::string> dist_mode_names();
// One of dist_mode_names(); anything else throws InvalidArgument naming `arg` and the list.
DistMode parse_dist_mode(const std::string& s, const std::string& arg = "mode");
// The sequence-parallel mode of a variant: dense -> ring, block_sparse -> block_sparse_ring,
// dilated -> dilated.
DistMode default_dist_mode(const AttentionSpec& spec);

struct DistConfig {
  DistMode mode = DistMode::Ring;
  Sharding sharding = Sharding::Contiguous;        // sequence modes; ignored by data_parallel
  SparseRoute sparse_route = SparseRoute::Direct;  // block_sparse_ring only (attention/ring.hpp)
  // Most rows of one backward kernel call whose gradients go through an fp32 scratch
  // (block_sparse_ring: a chunk of query rows on the rank's own K/V, RingPlan::split_rows;
  // dilated groups with fp16/bf16 gradients: a run of local segments, with batches); 0:
  // automatic (backward_split_rows: an eighth of the shard, at least 262,144 rows).
  int64_t split_rows = 0;
};

// Config rules that need no shape (mode fits the variant, dilated only contiguous) and, when
// `global` is given, the shape rules for `world` ranks (N divisible by P or 2P, block size
// dividing shard pieces, B divisible by P for data_parallel, the variant's own rules).
// Throws InvalidArgument naming the argument, its value and the rule.
void validate_distributed(const AttentionSpec& spec, const DistConfig& cfg, int world,
                          const Shape* global = nullptr);

// The canonical text of (spec, cfg) whose hash every rank compares before the first collective.
std::string describe_distributed(const AttentionSpec& spec, const DistConfig& cfg);

class DistributedAttention {
 public:
  virtual ~DistributedAttention() = default;
  virtual std::string name() const = 0;  // e.g. "ring(dense, zigzag)"
  virtual const AttentionSpec& spec() const = 0;
  virtual const DistConfig& config() const = 0;
  virtual Communicator& comm() const = 0;

  // This rank's share of a global shape, and back.
  virtual Shape local_shape(const Shape& global) const = 0;
  virtual Shape global_shape(const Shape& local) const = 0;
  // Host copies between a full tensor and rank `rank`'s local part (the scatter/gather layout).
  virtual void extract_local(int rank, const TensorView& full, const TensorView& local) const = 0;
  virtual void insert_local(int rank, const TensorView& local, const TensorView& full) const = 0;

  // Local views on the backend: q, k, v, o [local_shape], lse [B, n, H, 1] fp32 (fp64 on the
  // CPU). o and lse are overwritten with this rank's rows of the global result (for dilated:
  // the lse of the single-process variant, see attention/dilated.hpp). Collective: every rank
  // calls it with its shard. The first call for a shape compares the shape across ranks.
  virtual void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse) = 0;
  // o and lse from forward (this rank's rows of the global result); dq, dk, dv OVERWRITTEN.
  virtual void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& o, const TensorView& lse, const TensorView& d_o,
                        const TensorView& dq, const TensorView& dk, const TensorView& dv) = 0;
  // What the last forward or backward did on this rank.
  const DistCounters& counters() const { return counters_; }
  // Frees the device workspace kept between calls (the ring's buffers and masks); the next
  // call takes it again. Local: no communication.
  virtual void release_workspace() {}

 protected:
  DistCounters counters_;
};

// Validates the config, then every rank compares its hash (collective over `comm`: all ranks
// call it together; a rank with a different config makes EVERY rank throw Error naming the
// differing ranks). `comm` must outlive the returned object.
std::unique_ptr<DistributedAttention> make_distributed_attention(const AttentionSpec& spec,
                                                                 const DistConfig& cfg,
                                                                 Communicator& comm);

// Scatter / gather between rank 0's full host tensor and every rank's local tensor on the
// backend, in `attn`'s layout. `full` is read (scatter) or written (gather) on rank 0 only; its
// shape must be attn.global_shape(local). Collective: rank 0's check of `full` and every rank's
// staging buffers are agreed on before the first message, so a wrong `full` or a rank out of
// memory makes every rank throw the same Error (OutOfMemory) naming it.
void scatter_from_root(const DistributedAttention& attn, Backend& be, const TensorView& full,
                       const TensorView& local);
void gather_to_root(const DistributedAttention& attn, Backend& be, const TensorView& local,
                    const TensorView& full);

// Full host inputs, read on rank 0 only (other ranks pass default views). d_o is needed for
// the backward.
struct DistributedInputs {
  TensorView q, k, v, d_o;
};

struct DistributedResult {
  Shape shape;                     // the global shape (every rank)
  DType dtype = DType::F32;        // of q, k, v, o and the gradients
  Tensor o, lse, dq, dk, dv;       // full results on rank 0 (lse fp64 for fp64 inputs, else fp32)
  DistCounters forward, backward;  // this rank
  DistCounters forward_total, backward_total;            // summed over ranks (steps: the maximum)
  double forward_seconds = 0.0, backward_seconds = 0.0;  // slowest rank, excluding scatter/gather
  size_t peak_bytes = 0;                                 // this rank's backend peak
};

// The helper behind `longattn run` and `verify` under mpirun: rank 0's shape and dtype are
// broadcast, the config agreed, the inputs scattered, the variant run (forward, and backward
// when `backward`), the results gathered on rank 0. Collective; each phase (scatter, forward,
// gather, then the same for the backward) takes its buffers before its first exchange and the
// ranks agree on them, so a rank out of memory makes every rank throw the same OutOfMemory at
// once; any rank's failure to answer becomes CommError within the communicator's timeout.
DistributedResult run_distributed(const AttentionSpec& spec, const DistConfig& cfg,
                                  Communicator& comm, Backend& be, const DistributedInputs& in,
                                  bool backward);

}  // namespace longattn
