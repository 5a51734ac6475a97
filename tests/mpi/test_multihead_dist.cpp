// Multihead attention over the distributed variants: each rank projects its own tokens, the
// attention runs distributed, parameter gradients are summed over ranks; output, input
// gradients and parameter gradients equal the single-process layer (fp64 to 1e-10).
#include <gtest/gtest.h>

#include "attention/distributed_multihead.hpp"
#include "mpi_env.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::local_part;
using testing::max_abs_diff;
using testing::multihead_reference;
using testing::MultiheadReference;
using testing::test_backend;
using testing::test_comm;

struct MhCase {
  const char* label;
  AttentionSpec attention;
  DistConfig dist;
  int64_t B, N;
};

AttentionSpec spec_of(const std::string& variant, bool causal) {
  AttentionSpec s;
  s.variant = variant;
  s.causal = causal;
  s.block_size = 4;
  s.dilated.segment_lengths = {8, 24};
  s.dilated.dilation_rates = {1, 2};
  s.sparse.block_size = 4;
  s.sparse.window_size = 8;
  s.sparse.window_given = true;
  return s;
}

std::vector<MhCase> cases() {
  return {
      {"dilated", spec_of("dilated", true), {DistMode::Dilated, Sharding::Contiguous}, 2, 48},
      {"ring", spec_of("dense", true), {DistMode::Ring, Sharding::Zigzag}, 2, 48},
      {"block_sparse_ring",
       spec_of("block_sparse", false),
       {DistMode::BlockSparseRing, Sharding::Contiguous},
       2,
       48},
      {"data_parallel",
       spec_of("dilated", false),
       {DistMode::DataParallel, Sharding::Contiguous},
       12,
       24},
  };
}

TEST(MultiheadDist, EveryModeMatchesTheSingleProcessLayer) {
  Communicator& comm = test_comm();
  Backend& be = test_backend();
  for (const MhCase& c : cases()) {
    SCOPED_TRACE(c.label);
    // Single process, every rank (small).
    const MultiheadReference ref = multihead_reference(c.attention, c.B, c.N, 5, 81, be);
    const int64_t E = ref.cfg.embed_dim;
    const Tensor &xq = ref.xq, &xk = ref.xk, &xv = ref.xv, &dout = ref.dout;
    const Tensor &out_ref = ref.out, &dxq_ref = ref.dxq, &dxk_ref = ref.dxk, &dxv_ref = ref.dxv;
    const MultiheadParams& g_ref = ref.g;

    DistributedMultihead dist(ref.cfg, c.dist, comm);
    const Shape l = dist.local_shape(c.B, c.N);
    auto local = [&](const Tensor& full) { return local_part(dist, comm.rank(), c.B, c.N, full); };
    const Tensor lq = local(xq), lk = local(xk), lv = local(xv), ld = local(dout);
    Tensor out(DType::F64, l.B, l.N, 1, E), dxq = out.clone(), dxk = out.clone(), dxv = out.clone();
    MultiheadParams g;
    dist.forward(be, lq.view(), lk.view(), lv.view(), out.view());
    dist.backward(be, lq.view(), lk.view(), lv.view(), ld.view(), dxq.view(), dxk.view(),
                  dxv.view(), g);
    EXPECT_LT(max_abs_diff(out.view(), local(out_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(dxq.view(), local(dxq_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(dxk.view(), local(dxk_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(dxv.view(), local(dxv_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.w_q.view(), g_ref.w_q.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.w_k.view(), g_ref.w_k.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.w_v.view(), g_ref.w_v.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.w_out.view(), g_ref.w_out.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.b_q.view(), g_ref.b_q.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.b_out.view(), g_ref.b_out.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.ln_weight.view(), g_ref.ln_weight.view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(g.ln_bias.view(), g_ref.ln_bias.view()), kDistTolerance);
  }
}

}  // namespace
}  // namespace longattn
