// Dense ring attention over P ranks, forward and backward, causal or not, contiguous or zigzag:
// equal to the single-process dense attention (fp64 to 1e-10), K/V really go around the ring
// (P-1 hops per rank, byte counts), and the per-rank shard API without run_distributed.
#include <gtest/gtest.h>

#include <chrono>
#include <tuple>

#include "attention/distributed.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
using testing::test_backend;
using testing::test_comm;

struct RingCase {
  bool causal;
  Sharding sharding;
  int64_t block;
  DType dtype;
};

std::string case_name(const ::testing::TestParamInfo<RingCase>& i) {
  return std::string(i.param.causal ? "Causal" : "Full") + "_" + sharding_name(i.param.sharding) +
         "_block" + std::to_string(i.param.block) + "_" + dtype_name(i.param.dtype);
}

class RingVsSingleProcess : public ::testing::TestWithParam<RingCase> {};

TEST_P(RingVsSingleProcess, ForwardAndBackwardMatchAndKVGoesAround) {
  const RingCase c = GetParam();
  Communicator& comm = test_comm();
  const int P = comm.world();
  const Shape g{2, 48, 2, 8};  // 48 = lcm of 2P for P = 1..4, times 2
  AttentionSpec spec;
  spec.variant = "dense";
  spec.causal = c.causal;
  spec.block_size = c.block;
  const auto in = testing::random_inputs(g, c.dtype, 100 + c.block + (c.causal ? 7 : 0));
  const bool root = comm.rank() == 0;
  DistributedInputs din;
  if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  const DistributedResult r = run_distributed(spec, DistConfig{DistMode::Ring, c.sharding}, comm,
                                              test_backend(), din, true);

  const double tol = c.dtype == DType::F64 ? kDistTolerance : 2e-5;
  if (root) {
    testing::expect_matches_single_process(r, spec, in, tol);
  }
  // Every rank's K/V visited every other rank: P steps, P-1 hops of one packed K/V shard each.
  const int64_t kv_bytes =
      2 * g.B * (g.N / P) * g.H * g.D * static_cast<int64_t>(dtype_size(c.dtype));
  EXPECT_EQ(r.forward.steps, P);
  EXPECT_EQ(r.forward.hops, P - 1);
  EXPECT_EQ(r.forward.bytes_sent, (P - 1) * kv_bytes);
  EXPECT_EQ(r.forward.bytes_received, (P - 1) * kv_bytes);
  EXPECT_EQ(r.forward_total.hops, static_cast<int64_t>(P) * (P - 1));
  // Backward: K/V again (P-1 hops), each with its dK/dV accumulator, which starts at its origin
  // and makes a P-th hop home alone.
  const int64_t grad_bytes = kv_bytes;  // fp64/fp32 gradients travel in the input precision
  EXPECT_EQ(r.backward.hops, P - 1);
  EXPECT_EQ(r.backward.bytes_sent, (P - 1) * kv_bytes + (P > 1 ? P : 0) * grad_bytes);
  EXPECT_EQ(r.backward.bytes_received, r.backward.bytes_sent);
  EXPECT_GT(r.forward.blocks_computed, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, RingVsSingleProcess,
                         ::testing::Values(RingCase{false, Sharding::Contiguous, 8, DType::F64},
                                           RingCase{true, Sharding::Contiguous, 8, DType::F64},
                                           RingCase{false, Sharding::Zigzag, 4, DType::F64},
                                           RingCase{true, Sharding::Zigzag, 4, DType::F64},
                                           RingCase{true, Sharding::Zigzag, 16, DType::F64},
                                           RingCase{true, Sharding::Contiguous, 5, DType::F32}),
                         case_name);

// fp16 / bf16: partial results merge in fp32 and gradients accumulate in fp32, so the ring's
// error against an fp64 reference stays within 2x that of the single-process run in the same
// precision (STYLE.md's rule).
TEST(Ring, HalfPrecisionWithinTwiceTheSingleProcessError) {
  Communicator& comm = test_comm();
  const Shape g{1, 48, 2, 16};
  for (DType dt : {DType::F16, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    AttentionSpec spec;
    spec.causal = true;
    spec.block_size = 4;
    const auto in = testing::random_inputs(g, dt, 900);
    const testing::FullInputs in64{in.q.to(DType::F64), in.k.to(DType::F64), in.v.to(DType::F64),
                                   in.d_o.to(DType::F64)};
    DistributedInputs din;
    if (comm.rank() == 0)
      din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
    const auto r = run_distributed(spec, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm,
                                   test_backend(), din, true);
    if (comm.rank() != 0) continue;
    const auto ref = testing::single_process(spec, in64, true);
    const auto same = testing::single_process(spec, in, true);
    for (const auto& [name, ours, theirs, exact] :
         {std::tuple{"o", r.o.view(), same.o.view(), ref.o.view()},
          std::tuple{"dq", r.dq.view(), same.dq.view(), ref.dq.view()},
          std::tuple{"dk", r.dk.view(), same.dk.view(), ref.dk.view()},
          std::tuple{"dv", r.dv.view(), same.dv.view(), ref.dv.view()}}) {
      const double err = max_abs_diff(ours, exact), base = max_abs_diff(theirs, exact);
      EXPECT_LE(err, 2.0 * base + 1e-6) << name << ": ring " << err << ", single " << base;
      EXPECT_GT(base, 0.0) << name << ": the same-precision run should round somewhere";
    }
  }
}

// Causal zigzag balances the work: every rank computes about the same number of blocks,
// while contiguous gives the last rank the most.
TEST(Ring, ZigzagBalancesCausalWork) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  if (P < 2) GTEST_SKIP() << "balance needs several ranks";
  const Shape g{1, 16 * P, 1, 4};
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = 4;
  const auto in = testing::random_inputs(g, DType::F64, 5);
  std::vector<int64_t> blocks(P);
  for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
    DistributedInputs din;
    if (comm.rank() == 0) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), {}};
    const auto r =
        run_distributed(spec, DistConfig{DistMode::Ring, sh}, comm, test_backend(), din, false);
    comm.allgather_host(&r.forward.blocks_computed, sizeof(int64_t), blocks.data(), CommOp{});
    const auto [mn, mx] = std::minmax_element(blocks.begin(), blocks.end());
    if (sh == Sharding::Zigzag)
      EXPECT_LE(*mx - *mn, 2) << "zigzag should balance causal blocks";
    else
      EXPECT_GT(*mx, 2 * *mn) << "contiguous causal is unbalanced";
  }
}

// The kernels' tile: block_size 4 is raised to the backend's preferred tile where every key
// chunk of every shard piece is a multiple of it (256-row pieces, two chunks), as the same
// ring with block_size set to that tile counts its blocks; results match the single process.
// 96-row pieces keep block_size 4 (more, smaller blocks).
TEST(Ring, KernelTileRaisedWhereTheChunksAllowIt) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  const int64_t pref = test_backend().preferred_tile();
  ASSERT_EQ(pref, 64);
  for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
    SCOPED_TRACE(sharding_name(sh));
    const int64_t piece_rows = 256, pieces = sh == Sharding::Zigzag ? 2 : 1;
    const Shape g{1, piece_rows * pieces * P, 2, 4};
    const auto in = testing::random_inputs(g, DType::F64, 17);
    DistributedInputs din;
    if (comm.rank() == 0)
      din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
    AttentionSpec spec;
    spec.causal = sh == Sharding::Zigzag;
    int64_t blocks[2] = {0, 0};
    for (int64_t bs : {int64_t{4}, pref}) {
      spec.block_size = bs;
      const auto r =
          run_distributed(spec, DistConfig{DistMode::Ring, sh}, comm, test_backend(), din, true);
      blocks[bs == pref] = r.forward_total.blocks_computed;
      if (comm.rank() == 0) testing::expect_matches_single_process(r, spec, in, kDistTolerance);
    }
    EXPECT_GT(blocks[1], 0);
    EXPECT_EQ(blocks[0], blocks[1]);
  }
  // Pieces of 96 rows: not a multiple of two 64-row chunks, the tile stays 4.
  const Shape g{1, 96 * P, 2, 4};
  const auto in = testing::random_inputs(g, DType::F64, 18);
  DistributedInputs din;
  if (comm.rank() == 0)
    din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  AttentionSpec spec;
  spec.block_size = 4;
  const auto r = run_distributed(spec, DistConfig{DistMode::Ring, Sharding::Contiguous}, comm,
                                 test_backend(), din, true);
  EXPECT_EQ(r.forward_total.blocks_computed, (96 / 4) * (96 / 4) * int64_t{P} * P);
  if (comm.rank() == 0) testing::expect_matches_single_process(r, spec, in, kDistTolerance);
}

// The shard-level API: each rank holds only its shard; the result equals the matching rows of
// the single-process result.
TEST(Ring, ShardLevelApi) {
  Communicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  const Shape g{1, 8 * P, 3, 4};
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = 2;
  auto attn = make_distributed_attention(spec, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm);
  EXPECT_EQ(attn->name(), "ring(dense, zigzag)");
  const auto in = testing::random_inputs(g, DType::F64, 77);
  const Shape l = attn->local_shape(g);
  EXPECT_EQ(l.N, 8);
  Tensor q(DType::F64, l.B, l.N, l.H, l.D), k = q.clone(), v = q.clone();
  attn->extract_local(comm.rank(), in.q.view(), q.view());
  attn->extract_local(comm.rank(), in.k.view(), k.view());
  attn->extract_local(comm.rank(), in.v.view(), v.view());
  Tensor o(DType::F64, l.B, l.N, l.H, l.D), lse(DType::F64, l.B, l.N, l.H, 1);
  attn->forward(be, q.view(), k.view(), v.view(), o.view(), lse.view());
  const auto ref = testing::single_process(spec, in, false);
  Tensor ref_o(DType::F64, l.B, l.N, l.H, l.D);
  attn->extract_local(comm.rank(), ref.o.view(), ref_o.view());
  EXPECT_LT(max_abs_diff(o.view(), ref_o.view()), kDistTolerance);
  EXPECT_EQ(attn->counters().hops, P - 1);
  // K and V that are strided views (every second row of a larger tensor; the ring copies them
  // before sending whole shards) give the same result.
  Tensor k2(DType::F64, l.B, 2 * l.N, l.H, l.D), v2 = k2.clone();
  const TensorView ks = k2.view().rows(0, l.N, 2), vs = v2.view().rows(1, l.N, 2);
  ASSERT_FALSE(ks.is_contiguous());
  copy_view(ks, k.view());
  copy_view(vs, v.view());
  Tensor o2(DType::F64, l.B, l.N, l.H, l.D), lse2(DType::F64, l.B, l.N, l.H, 1);
  attn->forward(be, q.view(), ks, vs, o2.view(), lse2.view());
  EXPECT_EQ(max_abs_diff(o2.view(), o.view()), 0.0);
  // Wrong local shapes are rejected before any communication.
  Tensor bad(DType::F64, l.B, l.N + 1, l.H, l.D);
  EXPECT_THROW(attn->forward(be, q.view(), bad.view(), v.view(), o.view(), lse.view()),
               InvalidArgument);
}

TEST(Ring, InvalidConfigurationsAreRejectedOnEveryRank) {
  Communicator& comm = test_comm();
  AttentionSpec dense;
  AttentionSpec dilated;
  dilated.variant = "dilated";
  EXPECT_THROW(
      validate_distributed(dilated, DistConfig{DistMode::Ring, Sharding::Contiguous}, comm.world()),
      InvalidArgument);
  EXPECT_THROW(
      validate_distributed(dilated, DistConfig{DistMode::Dilated, Sharding::Zigzag}, comm.world()),
      InvalidArgument);
  const Shape odd{1, 2 * comm.world() + 1, 1, 4};
  EXPECT_THROW(
      validate_distributed(dense, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm.world(), &odd),
      InvalidArgument);
  EXPECT_THROW(parse_dist_mode("allgather"), InvalidArgument);
  EXPECT_EQ(parse_dist_mode("block_sparse_ring"), DistMode::BlockSparseRing);
  // run_distributed validates rank 0's shape on every rank: all fail together.
  const auto in = testing::random_inputs(odd, DType::F64, 3);
  DistributedInputs din;
  if (comm.rank() == 0) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), {}};
  EXPECT_THROW(run_distributed(dense, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm,
                               test_backend(), din, false),
               InvalidArgument);
  comm.barrier(CommOp{"after invalid configs", -1});
}

// Inputs or configs that only some ranks get wrong: every rank fails at once (the others are
// told which rank differs), none waits for a communication timeout.
TEST(Ring, OneRankWithBadInputsFailsEveryRankQuickly) {
  Communicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  if (P < 2) GTEST_SKIP() << "needs a second rank to disagree";
  const auto t0 = std::chrono::steady_clock::now();
  AttentionSpec spec;
  auto attn = make_distributed_attention(spec, DistConfig{}, comm);
  const int64_t n = 4;
  Tensor q(DType::F64, 1, n, 2, 4), o = q.clone(), lse(DType::F64, 1, n, 2, 1);
  Tensor k_bad(DType::F64, 1, n, 3, 4);
  const bool bad = comm.rank() == P - 1;
  try {
    attn->forward(be, q.view(), bad ? k_bad.view() : q.view(), q.view(), o.view(), lse.view());
    ADD_FAILURE() << "rank " << comm.rank() << " ran with a peer's bad inputs";
  } catch (const InvalidArgument& e) {
    EXPECT_TRUE(bad) << e.what();
    EXPECT_NE(std::string(e.what()).find("must have the shape of q"), std::string::npos);
  } catch (const Error& e) {
    EXPECT_FALSE(bad) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(P - 1)), std::string::npos)
        << e.what();
  }
  // One rank's o without memory (null data): the same agreement, not a crash.
  TensorView o_none = o.view();
  o_none.data = nullptr;
  try {
    attn->forward(be, q.view(), q.view(), q.view(), bad ? o_none : o.view(), lse.view());
    ADD_FAILURE() << "rank " << comm.rank() << " ran with a peer's o without memory";
  } catch (const InvalidArgument& e) {
    EXPECT_TRUE(bad) << e.what();
    EXPECT_EQ(e.argument(), "o") << e.what();
  } catch (const Error& e) {
    EXPECT_FALSE(bad) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(P - 1)), std::string::npos)
        << e.what();
  }
  // A variant name only one rank gets wrong.
  AttentionSpec mixed;
  if (bad) mixed.variant = "densest";
  EXPECT_THROW(make_distributed_attention(mixed, DistConfig{}, comm), Error);
  // Rank 0 forgets d_o for a backward run: everyone learns it from the broadcast.
  const Shape g{1, 2 * P, 1, 4};
  const auto in = testing::random_inputs(g, DType::F64, 8);
  DistributedInputs din;
  if (comm.rank() == 0) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), {}};
  EXPECT_THROW(run_distributed(spec, DistConfig{}, comm, be, din, true), InvalidArgument);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  comm.barrier(CommOp{"after bad inputs", -1});
}

}  // namespace
}  // namespace longattn
