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
  // The first call for a (local shape, dtypes) compares it across ranks, so that ranks fed
  // different shapes fail together instead of exchanging mismatched messages.
  void agree_on_shape(const TensorView& q, const TensorView& lse);
  // q, k, v, o (and the extra views) share q's shape; lse is [B, n, H, 1] fp32/fp64.
  static void check_local(const TensorView& q,
                          std::initializer_list<std::pair<const char*, TensorView>> same,
                          const TensorView& lse);

  AttentionSpec spec_;
  DistConfig cfg_;
  Communicator& comm_;

 private:
  std::string agreed_shape_;
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
