// Distributed dilated attention, both modes, causal or not, forward and backward, equal to the
// single-process dilated attention (fp64 to 1e-10); segments inside a shard cost no
// communication; spanning segments exchange exactly their dilated rows among the ranks that
// hold some of them.
#include <gtest/gtest.h>

#include "attention/distributed.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
using testing::test_backend;
using testing::test_comm;

struct DilatedCase {
  DilatedMode mode;
  bool causal;
  bool exact_grad;
  std::vector<int64_t> segments, rates;
  int64_t H;
};

std::string case_name(const ::testing::TestParamInfo<DilatedCase>& i) {
  const auto& c = i.param;
  std::string s = c.mode == DilatedMode::Groups ? "groups" : "longnet";
  s += c.causal ? "_causal" : "_full";
  if (c.exact_grad) s += "_exactgrad";
  for (auto x : c.segments) s += "_s" + std::to_string(x);
  for (auto x : c.rates) s += "_r" + std::to_string(x);
  return s + "_h" + std::to_string(c.H);
}

AttentionSpec dilated_spec(const DilatedCase& c) {
  AttentionSpec spec;
  spec.variant = "dilated";
  spec.causal = c.causal;
  spec.block_size = 4;
  spec.dilated.segment_lengths = c.segments;
  spec.dilated.dilation_rates = c.rates;
  spec.dilated.mode = c.mode;
  spec.dilated.exact_longnet_grad = c.exact_grad;
  return spec;
}

class DilatedVsSingleProcess : public ::testing::TestWithParam<DilatedCase> {};

TEST_P(DilatedVsSingleProcess, ForwardAndBackwardMatch) {
  const DilatedCase c = GetParam();
  Communicator& comm = test_comm();
  const Shape g{2, 96, c.H, 4};
  const AttentionSpec spec = dilated_spec(c);
  const auto in = testing::random_inputs(g, DType::F64, 500 + c.H + c.causal);
  const bool root = comm.rank() == 0;
  DistributedInputs din;
  if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  const auto r = run_distributed(spec, DistConfig{DistMode::Dilated, Sharding::Contiguous}, comm,
                                 test_backend(), din, true);
  if (root) {
    testing::expect_matches_single_process(r, spec, in, kDistTolerance);
  }
  EXPECT_GT(r.forward_total.blocks_computed, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, DilatedVsSingleProcess,
    ::testing::Values(
        // Segments of 8 stay inside every shard (96/P >= 24), 24 and 48 span shards for P > 2.
        DilatedCase{DilatedMode::Groups, false, false, {8, 24, 48}, {1, 2, 4}, 4},
        DilatedCase{DilatedMode::Groups, true, false, {8, 24, 48}, {1, 2, 4}, 4},
        DilatedCase{DilatedMode::Groups, true, false, {12, 96}, {3, 2}, 3},
        DilatedCase{DilatedMode::LongNet, false, false, {8, 24, 48}, {1, 2, 4}, 4},
        DilatedCase{DilatedMode::LongNet, true, false, {8, 24, 48}, {1, 2, 4}, 4},
        DilatedCase{DilatedMode::LongNet, true, true, {16, 48}, {2, 3}, 3},
        DilatedCase{DilatedMode::LongNet, false, true, {96}, {4}, 2}),
    case_name);

// Groups with bf16 gradients: where no segment spans ranks, each local kernel call's
// gradients go through fp32 scratches of that call (DistConfig::split_rows caps its rows: 8
// cuts every run into single segments) and are copied out scaled, one rounding, as the
// single-process variant's fp32 accumulators give; with spanning segments (P > 2 for 24 and
// 48) the accumulators stay. Both against the single-process bf16 run (one bf16 rounding of
// the largest value apart at most) and the fp64 reference (within twice its error).
TEST(DilatedDist, HalfPrecisionGroupsGradients) {
  Communicator& comm = test_comm();
  const bool root = comm.rank() == 0;
  for (const DilatedCase& c : {DilatedCase{DilatedMode::Groups, true, false, {4, 8}, {1, 2}, 2},
                               DilatedCase{DilatedMode::Groups, false, false, {8, 24, 48},
                                           {1, 2, 4}, 4}})
    for (int64_t split : {int64_t{0}, int64_t{8}}) {
      SCOPED_TRACE(std::to_string(c.segments.size()) + " branches, split " +
                   std::to_string(split));
      const Shape g{2, 96, c.H, 8};
      const AttentionSpec spec = dilated_spec(c);
      const auto in = testing::random_inputs(g, DType::BF16, 71 + c.H);
      DistributedInputs din;
      if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
      DistConfig cfg{DistMode::Dilated, Sharding::Contiguous};
      cfg.split_rows = split;
      const auto r = run_distributed(spec, cfg, comm, test_backend(), din, true);
      if (!root) continue;
      const auto same = testing::single_process(spec, in, true);
      testing::FullInputs in64{in.q.to(DType::F64), in.k.to(DType::F64), in.v.to(DType::F64),
                               in.d_o.to(DType::F64)};
      const auto ref = testing::single_process(spec, in64, true);
      const Tensor* got[3] = {&r.dq, &r.dk, &r.dv};
      const Tensor* single[3] = {&same.dq, &same.dk, &same.dv};
      const Tensor* exact[3] = {&ref.dq, &ref.dk, &ref.dv};
      for (int i = 0; i < 3; ++i) {
        const double peak =
            max_abs_diff(exact[i]->view(), Tensor(DType::F64, g.B, g.N, g.H, g.D).view());
        EXPECT_LE(max_abs_diff(got[i]->view(), single[i]->view()), peak / 128)
            << "gradient " << "qkv"[i];
        EXPECT_LE(max_abs_diff(got[i]->view(), exact[i]->view()),
                  2 * max_abs_diff(single[i]->view(), exact[i]->view()) + peak / 256)
            << "gradient " << "qkv"[i];
      }
    }
}

// Longnet with bf16 tensors where every segment length divides the shard (4 and 8 divide 96 / P
// for P = 1..4): each rank runs the single-process variant on its shard, in row passes
// (pass_rows 8: passes of one 8-row run each), with no communication. A pass sees only its own
// rows, so o, lse and the gradients equal the single-process run's bits (itself in passes of
// 8 rows), exact and detached weights, causal or not; and within twice the bf16 single-process
// error of the fp64 reference with whole passes (pass_rows 0). Its counters are those of the
// fp32 run, which takes the whole-shard workspace path.
TEST(DilatedDist, HalfPrecisionLongnetOnShards) {
  Communicator& comm = test_comm();
  const bool root = comm.rank() == 0;
  for (const DilatedCase& c : {DilatedCase{DilatedMode::LongNet, true, false, {4, 8}, {1, 2}, 2},
                               DilatedCase{DilatedMode::LongNet, false, true, {4, 8}, {2, 1}, 3}})
    for (int64_t pass : {int64_t{8}, int64_t{0}}) {
      SCOPED_TRACE(std::string(c.exact_grad ? "exact" : "detached") + ", pass_rows " +
                   std::to_string(pass));
      const Shape g{2, 96, c.H, 8};
      AttentionSpec spec = dilated_spec(c);
      spec.dilated.pass_rows = pass;
      const auto in = testing::random_inputs(g, DType::BF16, 81 + c.H);
      DistributedInputs din;
      if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
      const auto r = run_distributed(spec, DistConfig{DistMode::Dilated, Sharding::Contiguous},
                                     comm, test_backend(), din, true);
      EXPECT_EQ(r.forward_total.bytes_sent, 0);
      EXPECT_EQ(r.backward_total.bytes_sent, 0);
      // The counters of the fp32 run, which takes the workspace path.
      const auto in32 = testing::random_inputs(g, DType::F32, 81 + c.H);
      DistributedInputs din32;
      if (root)
        din32 = DistributedInputs{in32.q.view(), in32.k.view(), in32.v.view(), in32.d_o.view()};
      const auto r32 = run_distributed(spec, DistConfig{DistMode::Dilated, Sharding::Contiguous},
                                       comm, test_backend(), din32, true);
      EXPECT_EQ(r.forward.steps, r32.forward.steps);
      EXPECT_EQ(r.backward.steps, r32.backward.steps);
      EXPECT_GT(r.forward_total.blocks_computed, 0);
      EXPECT_EQ(r.forward_total.blocks_computed, r32.forward_total.blocks_computed);
      EXPECT_EQ(r.backward_total.blocks_computed, r32.backward_total.blocks_computed);
      if (!root) continue;
      const auto same = testing::single_process(spec, in, true);
      const Tensor* got[5] = {&r.o, &r.lse, &r.dq, &r.dk, &r.dv};
      const Tensor* single[5] = {&same.o, &same.lse, &same.dq, &same.dk, &same.dv};
      if (pass > 0) {
        for (int i = 0; i < 5; ++i)
          EXPECT_EQ(max_abs_diff(got[i]->view(), single[i]->view()), 0.0) << "output " << i;
        continue;
      }
      testing::FullInputs in64{in.q.to(DType::F64), in.k.to(DType::F64), in.v.to(DType::F64),
                               in.d_o.to(DType::F64)};
      const auto ref = testing::single_process(spec, in64, true);
      const Tensor* exact[5] = {&ref.o, &ref.lse, &ref.dq, &ref.dk, &ref.dv};
      for (int i = 0; i < 5; ++i) {
        const double peak = i == 1 ? 1.0
                                   : max_abs_diff(exact[i]->view(),
                                                  Tensor(DType::F64, g.B, g.N, g.H, g.D).view());
        EXPECT_LE(max_abs_diff(got[i]->view(), exact[i]->view()),
                  2 * max_abs_diff(single[i]->view(), exact[i]->view()) + peak / 256)
            << "output " << i;
      }
    }
}

// A distributed variant on this rank's bf16 shards of `in` on a CPU backend: forward, then
// backward, with the workspace each call takes beyond what was held before it (the largest on
// any rank, in local bf16 [B, N/P, H, D] tensors), and this rank's rows of the outputs.
struct ShardRun {
  std::unique_ptr<Backend> be = make_cpu_backend(1);  // outlives the variant's workspace
  std::unique_ptr<DistributedAttention> attn;
  Shape l;
  DeviceTensor x[4], o, lse, gr[3];  // q, k, v, d_o; the outputs
  double fwd_workspace = 0, bwd_workspace = 0;

  ShardRun(const AttentionSpec& spec, const DistConfig& cfg, Communicator& comm,
           const testing::FullInputs& in, const Shape& g) {
    attn = make_distributed_attention(spec, cfg, comm);
    l = attn->local_shape(g);
    auto make = [&](DType t, int64_t D) { return DeviceTensor(*be, t, l.B, l.N, l.H, D); };
    const Tensor* src[4] = {&in.q, &in.k, &in.v, &in.d_o};
    for (int i = 0; i < 4; ++i) {
      x[i] = make(DType::BF16, l.D);
      Tensor shard(DType::BF16, l.B, l.N, l.H, l.D);
      attn->extract_local(comm.rank(), src[i]->view(), shard.view());
      be->upload(x[i].view(), shard.view());
    }
    o = make(DType::BF16, l.D);
    lse = make(DType::F32, 1);
    for (DeviceTensor& t : gr) t = make(DType::BF16, l.D);
    const double unit = static_cast<double>(l.B * l.N * l.H * l.D * 2);
    auto workspace = [&](size_t held) {
      double w = static_cast<double>(be->peak_bytes() - held) / unit;
      comm.allreduce_host(&w, 1, ReduceOp::Max, CommOp{"test maximum", -1});
      return w;
    };
    be->reset_peak();
    size_t held = be->peak_bytes();
    attn->forward(*be, x[0].view(), x[1].view(), x[2].view(), o.view(), lse.view());
    fwd_workspace = workspace(held);
    be->reset_peak();
    held = be->peak_bytes();
    attn->backward(*be, x[0].view(), x[1].view(), x[2].view(), o.view(), lse.view(), x[3].view(),
                   gr[0].view(), gr[1].view(), gr[2].view());
    bwd_workspace = workspace(held);
  }
  ShardRun(const ShardRun&) = delete;
  ShardRun& operator=(const ShardRun&) = delete;
  ~ShardRun() { attn->release_workspace(); }
  // Output i (o, lse, dq, dk, dv) of this rank, in fp64.
  Tensor got(int i) const {
    const DeviceTensor* out[5] = {&o, &lse, &gr[0], &gr[1], &gr[2]};
    Tensor t(DType::F64, l.B, l.N, l.H, i == 1 ? 1 : l.D);
    be->download(t.view(), out[i]->view());
    return t;
  }
  // This rank's rows of a full tensor, in fp64.
  Tensor mine(const Tensor& full, Communicator& comm) const {
    Tensor t(DType::F64, l.B, l.N, l.H, full.view().D);
    attn->extract_local(comm.rank(), full.view(), t.view());
    return t;
  }
};

// Groups with bf16 gradients and a segment spanning every rank (96 rows, rate 12): each
// gradient element is still written once, so no fp32 buffer of the shard's size is held. The
// backward's workspace on each rank stays under P local bf16 tensors (whole-shard fp32 dq, dk
// and dv alone would be six), and the gradients match the single-process bf16 run.
TEST(DilatedDist, HalfPrecisionGroupsSpanningHoldsNoShardSizedFp32) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  const DilatedCase c{DilatedMode::Groups, true, false, {8, 96}, {1, 12}, 2};
  const Shape g{1, 96, c.H, 8};
  const AttentionSpec spec = dilated_spec(c);
  DistConfig cfg{DistMode::Dilated, Sharding::Contiguous};
  cfg.split_rows = 8;  // local calls of one segment
  const auto in = testing::random_inputs(g, DType::BF16, 91);
  const ShardRun run(spec, cfg, comm, in, g);
  // Measured: 1, 2, 3.3 local tensors on 2, 3, 4 ranks; the whole-shard fp32 accumulators of
  // the path before took 6.8, 7.75, 9. The spanning segment's fp32 exchange buffers (8 rows
  // of one head) grow against the local shard (96 / P rows of two heads) with P.
  if (P > 1) EXPECT_LE(run.bwd_workspace, static_cast<double>(P));
  // This rank's rows against the single-process bf16 run.
  const auto same = testing::single_process(spec, in, true);
  const Tensor* single[3] = {&same.dq, &same.dk, &same.dv};
  for (int i = 0; i < 3; ++i) {
    const Tensor got = run.got(2 + i), expected = run.mine(*single[i], comm);
    const TensorView e = expected.view();
    const double peak = max_abs_diff(e, Tensor(DType::F64, e.B, e.N, e.H, e.D).view());
    EXPECT_LE(max_abs_diff(got.view(), e), peak / 128 + 1e-3) << "qkv"[i];
  }
}

// Longnet with bf16 tensors and a segment longer than the shard (768 spans every shard for
// P > 1; 4 and 8 divide 768 / P): the spanning branch's result for this rank's rows is computed
// first into buffers of those rows, then the shard goes in row passes (pass_rows 8: one 8-row
// run a pass), so no fp32 buffer of the shard's size is held. The forward's and the
// backward's workspace on each rank stay under bounds that the path before exceeds with its
// whole-shard fp32 output (2 local bf16 tensors; 4.25 with its branch buffer) and dq, dk, dv
// (6). o, lse and the gradients agree with the single-process bf16 run within one bf16
// rounding of the largest value, and with the fp64 reference within twice that run's error.
// Detached and exact weights, causal or not, two batches; a long segment whose rows all lie
// on one rank; and dividing branches small enough to be stored whole.
TEST(DilatedDist, HalfPrecisionLongnetSpanningHoldsNoShardSizedFp32) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  for (const DilatedCase& c : {DilatedCase{DilatedMode::LongNet, true, false, {8, 768}, {1, 8}, 4},
                               DilatedCase{DilatedMode::LongNet, false, true, {4, 8, 768},
                                           {1, 2, 6}, 3},
                               // Rate 768: one row a segment, all of it on rank 0.
                               DilatedCase{DilatedMode::LongNet, true, false, {8, 768}, {1, 768},
                                           2},
                               // The 64-row segments at rate 16 (4 rows, one head each) are
                               // small: stored over the shard, merged by the 64-row passes.
                               DilatedCase{DilatedMode::LongNet, false, false, {8, 64, 768},
                                           {1, 16, 8}, 4}}) {
    SCOPED_TRACE(std::string(c.exact_grad ? "exact" : "detached") + ", " +
                 std::to_string(c.segments.size()) + " segment lengths");
    const Shape g{2, 768, c.H, 8};
    AttentionSpec spec = dilated_spec(c);
    spec.dilated.pass_rows = 8;
    const auto in = testing::random_inputs(g, DType::BF16, 95 + c.H);
    const ShardRun run(spec, DistConfig{DistMode::Dilated, Sharding::Contiguous}, comm, in, g);
    const double fwd = run.fwd_workspace, bwd = run.bwd_workspace;
    // Measured on 2-4 ranks: forward 0.57-1.35, backward 1.4-3.5 local tensors (the spanning
    // segment's exchange buffers grow against the shard with P); the path before took 4.25
    // and 6.0-6.9 (whole-shard fp32 output, then dq, dk and dv). On one rank every segment
    // divides the shard: the single-process variant, whose one pass is the whole shard here.
    if (P > 1) {
      EXPECT_LE(fwd, 2.0) << "forward workspace, local bf16 tensors";
      EXPECT_LE(bwd, 4.5) << "backward workspace, local bf16 tensors";
    }
    const auto same = testing::single_process(spec, in, true);
    testing::FullInputs in64{in.q.to(DType::F64), in.k.to(DType::F64), in.v.to(DType::F64),
                             in.d_o.to(DType::F64)};
    const auto ref = testing::single_process(spec, in64, true);
    const Tensor* single[5] = {&same.o, &same.lse, &same.dq, &same.dk, &same.dv};
    const Tensor* exact[5] = {&ref.o, &ref.lse, &ref.dq, &ref.dk, &ref.dv};
    for (int i = 0; i < 5; ++i) {
      const Tensor got = run.got(i), one = run.mine(*single[i], comm),
                   best = run.mine(*exact[i], comm);
      const TensorView b = best.view();
      const double peak =
          i == 1 ? 1.0 : max_abs_diff(b, Tensor(DType::F64, b.B, b.N, b.H, b.D).view());
      EXPECT_LE(max_abs_diff(got.view(), one.view()), peak / 128) << "output " << i;
      EXPECT_LE(max_abs_diff(got.view(), b), 2 * max_abs_diff(one.view(), b) + peak / 256)
          << "output " << i;
    }
  }
}

// Rows of segment m on rank rho for a branch (segment s, rate r, offset o), counted directly.
int64_t rows_on_rank(int64_t m, int64_t s, int64_t r, int64_t o, int64_t c, int rho) {
  int64_t n = 0;
  for (int64_t p = m * s + o; p < (m + 1) * s; p += r)
    if (p >= rho * c && p < (rho + 1) * c) ++n;
  return n;
}

TEST(DilatedDist, SegmentsInsideShardsNeedNoCommunication) {
  Communicator& comm = test_comm();
  const DilatedCase c{DilatedMode::Groups, true, false, {4, 8}, {1, 2}, 2};
  const Shape g{2, 96, 2, 4};  // 96 / P is a multiple of 8 for P = 1..4
  const auto in = testing::random_inputs(g, DType::F64, 61);
  DistributedInputs din;
  if (comm.rank() == 0)
    din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  const auto r =
      run_distributed(dilated_spec(c), DistConfig{DistMode::Dilated, Sharding::Contiguous}, comm,
                      test_backend(), din, true);
  EXPECT_EQ(r.forward_total.bytes_sent, 0);
  EXPECT_EQ(r.backward_total.bytes_sent, 0);
  EXPECT_EQ(r.forward.steps, 2);  // both branches computed here
}

TEST(DilatedDist, SpanningSegmentsExchangeOnlyTheirDilatedRows) {
  Communicator& comm = test_comm();
  const int P = comm.world();
  const int64_t s = 48, rate = 2, N = 96, H = 2, D = 4, B = 2, c = N / P;
  const DilatedCase dc{DilatedMode::Groups, false, false, {s}, {rate}, H};
  const Shape g{B, N, H, D};
  const auto in = testing::random_inputs(g, DType::F64, 62);
  DistributedInputs din;
  if (comm.rank() == 0)
    din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  const auto r =
      run_distributed(dilated_spec(dc), DistConfig{DistMode::Dilated, Sharding::Contiguous}, comm,
                      test_backend(), din, true);
  // One branch, offset 0: this rank sends its dilated rows of each spanning segment (K and
  // V) to every other rank holding rows of that segment.
  int64_t expected = 0;
  const int me = comm.rank();
  for (int64_t m = 0; m < N / s; ++m) {
    const int64_t mine = rows_on_rank(m, s, rate, 0, c, me);
    int members = 0;
    for (int rho = 0; rho < P; ++rho) members += rows_on_rank(m, s, rate, 0, c, rho) > 0;
    if (mine > 0 && members > 1) expected += mine * 2 * B * H * D * 8 * (members - 1);
  }
  EXPECT_EQ(r.forward.bytes_sent, expected);
  // The whole segment would be s rows: only 1/rate of them ever moves.
  if (P > 2) EXPECT_GT(expected, 0);
  // Backward: the K/V rows again, plus the gradients of the other members' rows sent home.
  int64_t returned = 0;
  for (int64_t m = 0; m < N / s; ++m) {
    if (rows_on_rank(m, s, rate, 0, c, me) == 0) continue;
    int members = 0;
    int64_t others = 0;
    for (int rho = 0; rho < P; ++rho) {
      const int64_t n = rows_on_rank(m, s, rate, 0, c, rho);
      members += n > 0;
      if (rho != me) others += n;
    }
    if (members > 1) returned += others * 2 * B * H * D * 8;
  }
  EXPECT_EQ(r.backward.bytes_sent, expected + returned);
}

TEST(DilatedDist, ZigzagIsRejected) {
  AttentionSpec spec;
  spec.variant = "dilated";
  try {
    make_distributed_attention(spec, DistConfig{DistMode::Dilated, Sharding::Zigzag}, test_comm());
    ADD_FAILURE() << "zigzag accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("contiguous sharding only"), std::string::npos);
  }
}

}  // namespace
}  // namespace longattn
