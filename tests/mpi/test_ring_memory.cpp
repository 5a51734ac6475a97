// Peak memory of the dense ring's forward + backward on CPU ranks, as the backend counts it
// (peak_bytes), in local [B, N/P, H, D] tensors of the input dtype: the 8 tensors a caller holds
// (q, k, v, o, d_o, dq, dk, dv), the row statistics and the ring's workspace, contiguous and
// zigzag, causal or not; the results stay exact (fp64 to 1e-10 against the single process),
// for every number of key chunks of the backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "attention/distributed.hpp"
#include "attention/ring.hpp"
#include "mpi_env.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
using testing::test_comm;

// Bounds in local tensors of the input dtype, over P ranks. fp16/bf16 inputs: the caller's 8
// tensors, the fp32 row statistics (1/32 at D = 64), alignment, and the ring's workspace of 11
// (fp32 dQ 2, three half-shard chunk buffers of K/V and fp32 dK/dV at 3 each; the forward's 7
// share it) or 5 on one rank (one chunk buffer); the step-wise backward held 29 and 11.
double half_workspace_bound(int P) { return P == 1 ? 5.05 : 11.05; }
double half_peak_bound(int P) { return 8.05 + half_workspace_bound(P); }
// fp64 inputs: dQ accumulates in place and the chunk buffers hold K/V and dK/dV in fp64 (6, or
// the forward's 3 on one rank); the step-wise backward held 15 and 5.
double f64_peak_bound(int P) { return P == 1 ? 11.05 : 14.05; }

struct MemCase {
  bool causal;
  Sharding sharding;
};

std::string case_name(const ::testing::TestParamInfo<MemCase>& i) {
  return std::string(i.param.causal ? "Causal" : "Full") + "_" + sharding_name(i.param.sharding);
}

// This rank's rows of a run, on the host in fp64, and its peak in local tensors.
struct LocalResult {
  Tensor o, lse, dq, dk, dv;
  double peak_tensors = 0;       // everything the backend held at the peak
  double workspace_tensors = 0;  // beyond the caller's tensors
};

// Forward then backward through `fwd_bwd` on a fresh CPU backend holding this rank's shards of
// `in` (converted to `dtype`); the peak is what the backend counted over both calls.
template <typename Run>
LocalResult run_local(const DistributedAttention& layout_of, const testing::FullInputs& in,
                      DType dtype, Run&& fwd_bwd) {
  Communicator& comm = test_comm();
  auto be = make_cpu_backend(1);
  const TensorView g = in.q.view();
  const Shape l = layout_of.local_shape(Shape{g.B, g.N, g.H, g.D});
  const DType lse_t = dtype == DType::F64 ? DType::F64 : DType::F32;
  auto make = [&](DType t, int64_t D) { return DeviceTensor(*be, t, l.B, l.N, l.H, D); };
  DeviceTensor q = make(dtype, l.D), k = make(dtype, l.D), v = make(dtype, l.D),
               o = make(dtype, l.D), lse = make(lse_t, 1), d_o = make(dtype, l.D),
               dq = make(dtype, l.D), dk = make(dtype, l.D), dv = make(dtype, l.D);
  for (const auto& [dst, src] : {std::pair{&q, &in.q}, std::pair{&k, &in.k}, std::pair{&v, &in.v},
                                 std::pair{&d_o, &in.d_o}}) {
    Tensor shard(dtype, l.B, l.N, l.H, l.D);
    layout_of.extract_local(comm.rank(), src->view(), shard.view());
    be->upload(dst->view(), shard.view());
  }
  be->reset_peak();
  const size_t held = be->peak_bytes();
  fwd_bwd(*be, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(), dq.view(), dk.view(),
          dv.view());
  const double unit = static_cast<double>(l.B * l.N * l.H * l.D * dtype_size(dtype));
  LocalResult r;
  r.peak_tensors = static_cast<double>(be->peak_bytes()) / unit;
  r.workspace_tensors = static_cast<double>(be->peak_bytes() - held) / unit;
  for (const auto& [out, src, D] :
       {std::tuple{&r.o, &o, l.D}, std::tuple{&r.lse, &lse, int64_t{1}},
        std::tuple{&r.dq, &dq, l.D}, std::tuple{&r.dk, &dk, l.D}, std::tuple{&r.dv, &dv, l.D}}) {
    *out = Tensor(DType::F64, l.B, l.N, l.H, D);
    be->download(out->view(), src->view());
  }
  return r;
}

// This rank's results equal its rows of the single-process run.
void expect_exact(const DistributedAttention& layout_of, const AttentionSpec& spec,
                  const testing::FullInputs& in, const LocalResult& r) {
  const auto ref = testing::single_process(spec, in, true);
  for (const auto& [name, ours, full] :
       {std::tuple{"o", &r.o, &ref.o}, std::tuple{"lse", &r.lse, &ref.lse},
        std::tuple{"dq", &r.dq, &ref.dq}, std::tuple{"dk", &r.dk, &ref.dk},
        std::tuple{"dv", &r.dv, &ref.dv}}) {
    Tensor expected = ours->clone();
    layout_of.extract_local(test_comm().rank(), full->view(), expected.view());
    EXPECT_LT(max_abs_diff(ours->view(), expected.view()), kDistTolerance) << name;
  }
}

// The largest value of x over all ranks.
double max_over_ranks(double x) {
  test_comm().allreduce_host(&x, 1, ReduceOp::Max, CommOp{"test maximum", -1});
  return x;
}

class RingMemory : public ::testing::TestWithParam<MemCase> {};

TEST_P(RingMemory, ForwardBackwardPeakStaysWithinTheBoundAndExact) {
  const MemCase c = GetParam();
  Communicator& comm = test_comm();
  const int P = comm.world();
  const Shape g{2, 64 * P, 2, 64};  // 64 local rows: zigzag pieces of 32, blocks of 8
  AttentionSpec spec;
  spec.causal = c.causal;
  spec.block_size = 8;
  const DistConfig cfg{DistMode::Ring, c.sharding};
  auto attn = make_distributed_attention(spec, cfg, comm);
  auto fwd_bwd = [&](Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& o, const TensorView& lse, const TensorView& d_o,
                     const TensorView& dq, const TensorView& dk, const TensorView& dv) {
    attn->forward(be, q, k, v, o, lse);
    attn->backward(be, q, k, v, o, lse, d_o, dq, dk, dv);
    attn->release_workspace();  // the next run takes its own on its own backend
  };
  for (DType dt : {DType::BF16, DType::F64}) {
    SCOPED_TRACE(dtype_name(dt));
    const auto in = testing::random_inputs(g, dt, 300 + (c.causal ? 1 : 0));
    const LocalResult r = run_local(*attn, in, dt, fwd_bwd);
    const double peak = max_over_ranks(r.peak_tensors);
    const double workspace = max_over_ranks(r.workspace_tensors);
    if (comm.rank() == 0)
      std::cout << "[ring memory] " << case_name({c, 0}) << " " << dtype_name(dt) << " P=" << P
                << ": peak " << peak << " local tensors, workspace " << workspace << std::endl;
    if (dt == DType::BF16) {
      EXPECT_LE(peak, half_peak_bound(P));
      EXPECT_LE(workspace, half_workspace_bound(P));
      EXPECT_GE(workspace, half_workspace_bound(P) - 0.2) << "the count should see the workspace";
    } else {
      EXPECT_LE(peak, f64_peak_bound(P));
      expect_exact(*attn, spec, in, r);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, RingMemory,
                         ::testing::Values(MemCase{false, Sharding::Contiguous},
                                           MemCase{true, Sharding::Contiguous},
                                           MemCase{false, Sharding::Zigzag},
                                           MemCase{true, Sharding::Zigzag}),
                         case_name);

// Any number of key chunks gives the exact result, and the backward alone, with fp16/bf16
// inputs, holds fp32 dQ (2 local tensors) and C+1 chunk buffers of K/V (2 per shard of rows)
// and fp32 dK/dV (4 per shard), sized by the longest chunk (one buffer on one rank). The
// workspace released after the forward shows the backward's own.
TEST(RingMemory, EveryChunkCountIsExactAndHoldsWhatItShould) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  const Shape g{1, 40 * P, 2, 64};  // zigzag pieces of 20 rows, 5 blocks of 4; 256-byte rows
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = 4;
  const ShardLayout layout(Sharding::Zigzag, g.N, P);
  auto shards =
      make_distributed_attention(spec, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm);
  for (int chunks : {0, 1, 2, 3, 4}) {
    SCOPED_TRACE("chunks " + std::to_string(chunks));
    RingAttention ring(
        make_dense_ring_plan(layout, comm.rank(), spec.block_size, spec.causal, chunks), spec);
    const int C = static_cast<int>(ring.plan().key_chunks.size());
    EXPECT_EQ(C, chunks == 0 ? kRingBackwardChunks : chunks);
    for (const RingStep& st : ring.plan().steps) EXPECT_EQ(st.chunk_work.size(), size_t(C));
    DistCounters fc, bc;
    for (DType dt : {DType::F64, DType::BF16}) {
      SCOPED_TRACE(dtype_name(dt));
      const auto in = testing::random_inputs(g, dt, 500 + static_cast<uint64_t>(chunks));
      double backward_workspace = 0;
      const LocalResult r =
          run_local(*shards, in, dt,
                    [&](Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& o, const TensorView& lse, const TensorView& d_o,
                        const TensorView& dq, const TensorView& dk, const TensorView& dv) {
                      ring.forward(be, comm, q, k, v, o, lse, fc);
                      ring.release_workspace();
                      EXPECT_EQ(ring.workspace_bytes(), 0u);
                      ring.backward(be, comm, q, k, v, o, lse, d_o, dq, dk, dv, bc);
                      backward_workspace = static_cast<double>(ring.workspace_bytes());
                      ring.release_workspace();
                    });
      if (dt == DType::F64) {
        expect_exact(*shards, spec, in, r);
        continue;
      }
      const double unit = static_cast<double>(g.B * (g.N / P) * g.H * g.D * 2);
      const double rows = static_cast<double>(g.N / P);
      double most = 0;
      for (const KeyChunk& ch : ring.plan().key_chunks)
        most = std::max(most, static_cast<double>(ch.rows));
      const int buffers = P == 1 ? 1 : C + 1;
      EXPECT_NEAR(backward_workspace / unit, 2.0 + buffers * 6.0 * most / rows, 1e-9);
    }
  }
}

// The automatic count: 2 chunks for short shards, up to 4 while every part keeps 32K rows
// (2 + 6 * 5/4 = 9.5 local tensors of backward workspace at 256K rows per rank), cut at
// multiples of the block size and covering every row once.
TEST(RingMemory, AutomaticChunkCountFollowsTheShardLength) {
  EXPECT_EQ(ring_backward_chunks(1), 2);
  EXPECT_EQ(ring_backward_chunks(65536), 2);
  EXPECT_EQ(ring_backward_chunks(98304), 3);
  EXPECT_EQ(ring_backward_chunks(131072), 4);
  EXPECT_EQ(ring_backward_chunks(int64_t{1} << 22), 4);
  const int64_t block = 8192;  // few blocks: a cheap plan of a long sequence
  for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
    SCOPED_TRACE(sharding_name(sh));
    for (int64_t local : {int64_t{65536}, int64_t{262144}}) {
      const ShardLayout layout(sh, 4 * local, 4);
      const RingPlan plan = make_dense_ring_plan(layout, 1, block, true);
      const int64_t piece = sh == Sharding::Zigzag ? local / 2 : local;
      EXPECT_EQ(plan.key_chunks.size(), size_t(ring_backward_chunks(piece)));
      std::vector<int> seen(static_cast<size_t>(local), 0);
      for (const KeyChunk& c : plan.key_chunks) {
        int64_t rows = 0;
        for (const ChunkPart& p : c.parts) {
          EXPECT_EQ(p.offset % block, 0);
          const int64_t start = plan.pieces[1][p.piece].local + p.offset;
          for (int64_t r = start; r < start + p.len; ++r) ++seen[static_cast<size_t>(r)];
          rows += p.len;
        }
        EXPECT_EQ(rows, c.rows);
        EXPECT_GE(c.rows, local / static_cast<int64_t>(plan.key_chunks.size()) - block);
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), local) << "every row in one chunk";
    }
  }
}

}  // namespace
}  // namespace longattn
