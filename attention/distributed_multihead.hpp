// Multihead (dilated by default) attention over the distributed variants: each rank runs the
// projections, LayerNorm and output projection on its own tokens (they act per token), and the
// attention in the middle is a DistributedAttention over all ranks. Parameter gradients are
// summed over ranks, so every rank holds the gradient of the whole sequence / batch. The
// construction, each forward and each backward take their buffers (host and device) before
// their first exchange and the ranks agree on them: a rank out of memory makes every rank throw
// the same OutOfMemory at once.
#pragma once
#include <memory>
#include <vector>

#include "attention/distributed.hpp"
#include "attention/multihead.hpp"

namespace longattn {

// A DistributedAttention seen as an AttentionVariant on this rank's local views (what
// MultiheadDilatedAttention calls). validate() takes the LOCAL shape; flops() and density()
// describe this rank's share of the global problem.
std::unique_ptr<AttentionVariant> as_local_variant(std::shared_ptr<DistributedAttention> attn);

class DistributedMultihead {
 public:
  // Collective: every rank passes the same cfg and dist (their hash is compared). cfg.seed
  // gives every rank the same initial parameters. `comm` must outlive this object.
  DistributedMultihead(const MultiheadConfig& cfg, const DistConfig& dist, Communicator& comm);

  MultiheadDilatedAttention& layer() { return *layer_; }
  DistributedAttention& attention() { return *attn_; }
  // This rank's share of global [B, N, E] inputs, as the [B, n, 1, E] shape of its views.
  Shape local_shape(int64_t B, int64_t N) const;

  // x_q, x_k, x_v, out: this rank's tokens as [B, n, 1, E] views on `be` (sequence modes: the
  // shard of DistributedAttention's layout; data_parallel: its batches). Collective.
  void forward(Backend& be, const TensorView& x_q, const TensorView& x_k, const TensorView& x_v,
               const TensorView& out);
  // d_x_* OVERWRITTEN with this rank's rows; `grads` receives the parameter gradients summed
  // over all ranks (identical on every rank). Collective.
  void backward(Backend& be, const TensorView& x_q, const TensorView& x_k, const TensorView& x_v,
                const TensorView& d_out, const TensorView& d_x_q, const TensorView& d_x_k,
                const TensorView& d_x_v, MultiheadParams& grads);

 private:
  Communicator& comm_;
  std::shared_ptr<DistributedAttention> attn_;
  std::unique_ptr<MultiheadDilatedAttention> layer_;
  std::vector<double> grad_sum_;  // every parameter gradient, summed over ranks in one call
};

}  // namespace longattn
