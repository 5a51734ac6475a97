// Shared parts of the distributed variants (internal to attention/): the sequence-sharded base
// class (layout, local shapes, shape agreement across ranks, checks of local views) and the
// factory of distributed dilated attention (attention/distributed_dilated.cpp).
#pragma once
#include <memory>
#include <string>

#include "attention/distributed.hpp"

namespace longattn {

class DistributedBase : public DistributedAttention {
 public:
  DistributedBase(const AttentionSpec& spec, const DistConfig& cfg, Communicator& comm)
      : spec_(spec), cfg_(cfg), comm_(comm) {}
  const AttentionSpec& spec() const override { return spec_; }
  const DistConfig& config() const override { return cfg_; }
  Communicator& comm() const override { return comm_; }

 protected:
  // Checks this rank's views (k, v, o and the others share q's shape; lse is [B, n, H, 1]
  // fp32/fp64; the global shape they imply is valid for the config), then compares the local
  // shape and dtypes with every rank: ranks fed different or invalid inputs all fail together,
  // none goes on to exchange mismatched messages. A rank whose own inputs are invalid throws
  // its InvalidArgument; the others throw the mismatch Error naming it. Collective.
  void check_and_agree(const TensorView& q,
                       std::initializer_list<std::pair<const char*, TensorView>> same,
                       const TensorView& lse);

  AttentionSpec spec_;
  DistConfig cfg_;
  Communicator& comm_;
};

// Sequence sharding: rank r holds N / P rows of every batch and head.
class SequenceShardedBase : public DistributedBase {
 public:
  using DistributedBase::DistributedBase;
  ShardLayout layout(int64_t N) const { return ShardLayout(cfg_.sharding, N, comm_.world()); }
  Shape local_shape(const Shape& g) const override {
    return Shape{g.B, layout(g.N).local_len(), g.H, g.D};
  }
  Shape global_shape(const Shape& l) const override {
    return Shape{l.B, l.N * comm_.world(), l.H, l.D};
  }
  void extract_local(int rank, const TensorView& full, const TensorView& local) const override {
    extract_shard(layout(full.N), rank, full, local);
  }
  void insert_local(int rank, const TensorView& local, const TensorView& full) const override {
    insert_shard(layout(full.N), rank, local, full);
  }
};

std::unique_ptr<DistributedAttention> make_distributed_dilated(const AttentionSpec& spec,
                                                               const DistConfig& cfg,
                                                               Communicator& comm);

}  // namespace longattn
