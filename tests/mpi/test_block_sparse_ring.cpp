// Block-sparse ring attention: every pattern x causal/non-causal x contiguous/zigzag, forward and
// backward, equal to the single-process block-sparse attention (fp64 to 1e-10); every block of
// the global mask computed exactly once over all ranks; a local window sends only the blocks
// its neighbours need and stops rotating as soon as nobody needs more.
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <utility>

#include "attention/dense.hpp"
#include "attention/distributed.hpp"
#include "attention/patterns.hpp"
#include "attention/ring.hpp"
#include "mpi_env.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
using testing::test_backend;
using testing::test_comm;

constexpr int64_t kBlock = 4;

SparseConfig pattern(const std::string& name) {
  SparseConfig c;
  c.pattern = name;
  c.block_size = kBlock;
  if (name == "local_window") {
    c.window_size = 2 * kBlock;  // one block either side
    c.window_given = true;
  } else if (name == "dilated_sparse") {
    c.dilation_rates = {1, 5};
    c.rates_given = true;
  } else if (name == "global_local") {
    c.window_size = 2 * kBlock;
    c.global_tokens = 2 * kBlock;
    c.window_given = c.global_given = true;
  } else if (name == "hierarchical") {
    c.levels = {{2 * kBlock, 2 * kBlock}, {8 * kBlock, -1}};
    c.levels_given = true;
  } else if (name == "random") {
    c.sparsity_ratio = 0.2;
    c.seed = 3;
  } else if (name == "content_adaptive") {
    c.topk = 4;
  }
  return c;
}

struct SparseCase {
  std::string pattern;
  bool causal;
  Sharding sharding;
  SparseRoute route;
  bool hilbert = false;
};

class SparseRingVsSingleProcess : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseRingVsSingleProcess, ForwardBackwardMatchAndEveryBlockComputedOnce) {
  const SparseCase c = GetParam();
  Communicator& comm = test_comm();
  // 24 blocks of 4: a multiple of 2P blocks for P = 1..4. Batch 1 moves a single run of rows
  // straight between the K/V tensors, batch 2 stages it.
  for (int64_t batch : {2, 1}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const Shape g{batch, 96, 2, 4};
    AttentionSpec spec;
    spec.variant = "block_sparse";
    spec.causal = c.causal;
    spec.sparse = pattern(c.pattern);
    spec.sparse.hilbert = c.hilbert;
    const auto in = testing::random_inputs(g, DType::F64, 300 + c.pattern.size() + c.causal);
    const bool root = comm.rank() == 0;
    DistributedInputs din;
    if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
    const DistributedResult r =
        run_distributed(spec, DistConfig{DistMode::BlockSparseRing, c.sharding, c.route}, comm,
                        test_backend(), din, true);
    if (root) {
      testing::expect_matches_single_process(r, spec, in, kDistTolerance);
    }
    if (c.pattern != "content_adaptive") {
      const BlockMask global = sparse_block_mask(spec.sparse, g.N, spec.causal);
      EXPECT_EQ(r.forward_total.blocks_computed, global.nnz());
      EXPECT_EQ(r.backward_total.blocks_computed, global.nnz());
    }
    EXPECT_LE(r.forward.steps, comm.world());
  }
}

std::vector<SparseCase> all_cases() {
  std::vector<SparseCase> v;
  for (const char* p : {"local_window", "dilated_sparse", "global_local", "hierarchical", "random",
                        "content_adaptive"})
    for (bool causal : {false, true})
      for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag})
        for (SparseRoute route : {SparseRoute::Direct, SparseRoute::Ring})
          v.push_back(SparseCase{p, causal, sh, route});
  v.push_back(SparseCase{"dilated_sparse", true, Sharding::Zigzag, SparseRoute::Direct, true});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Patterns, SparseRingVsSingleProcess, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<SparseCase>& i) {
                           return i.param.pattern + (i.param.causal ? "_causal_" : "_full_") +
                                  sharding_name(i.param.sharding) + "_" +
                                  sparse_route_name(i.param.route) +
                                  (i.param.hilbert ? "_hilbert" : "");
                         });

// Presets go through the factory's "block_sparse:<preset>" names.
TEST(SparseRing, PresetByName) {
  Communicator& comm = test_comm();
  const Shape g{1, 128, 2, 4};
  AttentionSpec spec;
  spec.variant = "block_sparse:local";
  spec.causal = true;
  const auto in = testing::random_inputs(g, DType::F64, 12);
  const AttentionSpec resolved = [&] {
    AttentionSpec s = spec;
    s.variant = "block_sparse";
    s.sparse = sparse_preset("local");
    return s;
  }();
  // The preset's block size must divide the shard; otherwise the error names it.
  Shape shard_ok = g;
  const int64_t bs = resolved.sparse.block_size;
  shard_ok.N = 2 * bs * comm.world();
  const auto in2 = testing::random_inputs(shard_ok, DType::F64, 13);
  DistributedInputs din;
  if (comm.rank() == 0) din = DistributedInputs{in2.q.view(), in2.k.view(), in2.v.view(), {}};
  const auto r = run_distributed(spec, DistConfig{DistMode::BlockSparseRing, Sharding::Zigzag},
                                 comm, test_backend(), din, false);
  if (comm.rank() == 0) {
    const auto ref = testing::single_process(spec, in2, false);
    EXPECT_LT(max_abs_diff(r.o.view(), ref.o.view()), kDistTolerance);
  }
  (void)in;
}

// A local window (one block either side) on contiguous shards: only boundary blocks travel.
TEST(SparseRing, LocalWindowSendsOnlyWhatNeighboursNeed) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const Shape g{2, 96, 2, 4};
  const int64_t block_bytes = 2 * g.B * kBlock * g.H * g.D * 8;  // K and V of one block, fp64
  const int64_t dense_bytes = (P - 1) * 2 * g.B * (g.N / P) * g.H * g.D * 8;
  for (SparseRoute route : {SparseRoute::Direct, SparseRoute::Ring})
    for (bool causal : {true, false}) {
      SCOPED_TRACE(std::string(sparse_route_name(route)) + (causal ? " causal" : " full"));
      AttentionSpec spec;
      spec.variant = "block_sparse";
      spec.causal = causal;
      spec.sparse = pattern("local_window");
      const auto in = testing::random_inputs(g, DType::F64, 40 + causal);
      DistributedInputs din;
      if (rank == 0) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
      const auto r =
          run_distributed(spec, DistConfig{DistMode::BlockSparseRing, Sharding::Contiguous, route},
                          comm, test_backend(), din, true);
      if (P == 1) {
        EXPECT_EQ(r.forward.steps, 1);
        EXPECT_EQ(r.forward.bytes_sent, 0);
        continue;
      }
      EXPECT_LT(r.forward.bytes_sent, dense_bytes);
      if (causal) {
        // Rank r's last block is all that rank r+1 needs; rank P-1 is needed by nobody.
        EXPECT_EQ(r.forward.steps, 2) << "rotation must stop after one hop";
        EXPECT_EQ(r.forward.bytes_sent, rank < P - 1 ? block_bytes : 0);
        EXPECT_EQ(r.forward.hops, rank < P - 1 ? 1 : 0);
        // Backward: the block goes out once and its dK/dV come straight back from rank r+1
        // (which is what rank r sends for rank r-1's block).
        EXPECT_EQ(r.backward.bytes_sent,
                  (rank < P - 1 ? block_bytes : 0) + (rank >= 1 ? block_bytes : 0));
        continue;
      }
      if (route == SparseRoute::Direct) {
        // Exactly the neighbours: the last block to rank r+1, the first to rank r-1 (the ends
        // of the sequence have one neighbour); distances 0, 1 and P-1 only.
        EXPECT_EQ(r.forward.steps, std::min(P, 3));
        EXPECT_EQ(r.forward.bytes_sent, ((rank < P - 1) + (rank > 0)) * block_bytes);
        EXPECT_EQ(r.forward_total.bytes_sent, 2 * (P - 1) * block_bytes);
      } else {
        // One-way ring: the first block reaches rank r-1 after P-1 hops, one block per hop;
        // rank 0's first and rank P-1's last block are needed by nobody. Over all origins:
        // 1 + (P-1) + (P-2) * P = P (P-1) blocks, against P (P-1) whole shards dense.
        EXPECT_EQ(r.forward.steps, P);
        EXPECT_EQ(r.forward_total.bytes_sent, P * (P - 1) * block_bytes);
      }
    }
}

// The forward's order of writes (ForwardOrder): the first work on each query piece (its largest
// in the first step with work on it, run before the step's other works) writes it whole, every
// later work computes only its span (its mask's first to last non-empty row),
// the spans lie in disjoint runs of merged rows, and the accumulator holds those rows only.
// A local window merges one block at each end of a shard that has a neighbour there.
TEST(SparseRing, ForwardMergesOnlyTheRowsLaterWorksReach) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const int64_t N = 48 * P;  // 12 blocks a rank, zigzag pieces of 6
  for (const std::string& name : sparse_pattern_names())
    for (bool causal : {false, true})
      for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag})
        for (SparseRoute route : {SparseRoute::Direct, SparseRoute::Ring}) {
          SCOPED_TRACE(name + (causal ? " causal " : " full ") + sharding_name(sh) + " " +
                       sparse_route_name(route));
          if (name == "content_adaptive") continue;  // its mask needs the inputs
          const BlockMask global = sparse_block_mask(pattern(name), N, causal);
          const RingPlan plan =
              make_sparse_ring_plan(ShardLayout(sh, N, P), rank, global, route);
          const ForwardOrder fo = make_forward_order(plan);
          const auto& pieces = plan.pieces[rank];
          std::vector<int> firsts(pieces.size(), 0);
          int64_t merged = 0;
          for (size_t j = 0; j < fo.runs.size(); ++j) {
            const auto& r = fo.runs[j];
            EXPECT_EQ(r.acc_row, merged);
            merged += r.len;
            ASSERT_LT(static_cast<size_t>(r.piece), pieces.size());
            EXPECT_GE(r.start, 0);
            EXPECT_LE(r.start + r.len, pieces[r.piece].len);
            if (j > 0 && fo.runs[j - 1].piece == r.piece)
              EXPECT_GT(r.start, fo.runs[j - 1].start + fo.runs[j - 1].len);
          }
          EXPECT_EQ(fo.acc_rows, merged);
          for (size_t t = 0; t < plan.steps.size(); ++t) {
            // Every work runs once; a first work is its piece's largest in the step.
            std::vector<int> order = fo.run_order[t];
            std::sort(order.begin(), order.end());
            ASSERT_EQ(order.size(), plan.steps[t].work.size());
            for (size_t w = 0; w < order.size(); ++w) EXPECT_EQ(order[w], static_cast<int>(w));
            for (const int w : fo.run_order[t]) {
              const RingWork& work = plan.steps[t].work[w];
              const ForwardOrder::Work& fw = fo.works[t][w];
              if (fw.first) {
                EXPECT_EQ(firsts[work.q_piece]++, 0) << "one first work a piece";
                for (const RingWork& other : plan.steps[t].work)
                  if (other.q_piece == work.q_piece) EXPECT_LE(other.mask.nnz(), work.mask.nnz());
                continue;
              }
              EXPECT_EQ(firsts[work.q_piece], 1) << "a later work before the piece's first";
              const auto& r = fo.runs[fw.run];
              EXPECT_EQ(r.piece, work.q_piece);
              EXPECT_LE(r.start, fw.row0);
              EXPECT_LE(fw.row0 + fw.rows, r.start + r.len);
              // Every non-empty row of the work's mask is in its span, and its ends are not
              // empty.
              const BlockMask& m = work.mask;
              for (int64_t b = 0; b < m.num_q_blocks; ++b) {
                const bool in = b * kBlock >= fw.row0 && b * kBlock < fw.row0 + fw.rows;
                if (m.row_ptr[b + 1] > m.row_ptr[b]) EXPECT_TRUE(in) << "row block " << b;
              }
              EXPECT_GT(m.row_ptr[fw.row0 / kBlock + 1], m.row_ptr[fw.row0 / kBlock]);
              const int64_t last = (fw.row0 + fw.rows) / kBlock - 1;
              EXPECT_GT(m.row_ptr[last + 1], m.row_ptr[last]);
              // The key rows: from the first listed block to the last.
              int32_t lo = INT32_MAX, hi = -1;
              for (int32_t c : m.col_idx) lo = std::min(lo, c), hi = std::max(hi, c);
              EXPECT_EQ(fw.col0, lo * kBlock);
              EXPECT_EQ(fw.col0 + fw.cols, (hi + 1) * kBlock);
              const BlockMask slice =
                  mask_slice(m, fw.row0 / kBlock, last + 1, lo, static_cast<int64_t>(hi) + 1);
              slice.validate();
              EXPECT_EQ(slice.num_k_blocks, hi + 1 - lo);
              int64_t nnz = 0;
              for (int64_t b = fw.row0 / kBlock; b <= last; ++b)
                nnz += m.row_ptr[b + 1] - m.row_ptr[b];
              EXPECT_EQ(slice.nnz(), m.nnz());
              EXPECT_EQ(nnz, m.nnz());
            }
          }
          for (size_t i = 0; i < pieces.size(); ++i)
            EXPECT_EQ(firsts[i], fo.piece_computed[i] ? 1 : 0);
          if (name == "local_window" && !causal && sh == Sharding::Contiguous &&
              route == SparseRoute::Direct)
            EXPECT_EQ(fo.acc_rows, ((rank > 0) + (rank < P - 1)) * kBlock);
        }
}

// Key blocks that only other ranks' queries list (each query block lists the block half the
// sequence away, and its own on even blocks): their dK/dV come back from other ranks only, so
// they accumulate apart from the rows the step-0 calls write straight into dk and dv
// (BackwardSplit). Forward and backward equal the single-process masked attention in fp64.
TEST(SparseRing, KeyBlocksListedOnlyByOtherRanks) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const int64_t nb = 8 * P, N = nb * kBlock;
  BlockMask global;
  global.block_q = global.block_k = kBlock;
  global.num_q_blocks = global.num_k_blocks = nb;
  for (int64_t b = 0; b < nb; ++b) {
    std::vector<int32_t> cols{static_cast<int32_t>((b + nb / 2) % nb)};
    if (b % 2 == 0) cols.push_back(static_cast<int32_t>(b));
    std::sort(cols.begin(), cols.end());
    for (int32_t c : cols) {
      global.col_idx.push_back(c);
      global.partial.push_back(0);
    }
    global.row_ptr.push_back(global.nnz());
  }
  const Shape g{1, N, 2, 4};
  const auto in = testing::random_inputs(g, DType::F64, 91);
  AttentionSpec spec;
  spec.variant = "block_sparse";
  Backend& be = test_backend();
  Tensor ro(DType::F64, 1, N, 2, 4), rl(DType::F64, 1, N, 2, 1), rdq = ro.clone(),
      rdk = ro.clone(), rdv = ro.clone();
  masked_forward(be, spec, global, in.q.view(), in.k.view(), in.v.view(), ro.view(), rl.view());
  masked_backward(be, spec, global, in.q.view(), in.k.view(), in.v.view(), ro.view(), rl.view(),
                  in.d_o.view(), rdq.view(), rdk.view(), rdv.view());
  for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag})
    for (SparseRoute route : {SparseRoute::Direct, SparseRoute::Ring}) {
      SCOPED_TRACE(std::string(sharding_name(sh)) + " " + sparse_route_name(route));
      const ShardLayout layout(sh, N, P);
      RingAttention ring(make_sparse_ring_plan(layout, rank, global, route), spec);
      const int64_t n = N / P;
      auto local = [&](const Tensor& full) {
        Tensor t(DType::F64, 1, n, full.view().H, full.view().D);
        extract_shard(layout, rank, full.view(), t.view());
        return t;
      };
      Tensor q = local(in.q), k = local(in.k), v = local(in.v), d_o = local(in.d_o);
      Tensor o(DType::F64, 1, n, 2, 4), lse(DType::F64, 1, n, 2, 1), dq = o.clone(),
          dk = o.clone(), dv = o.clone();
      DistCounters fc, bc;
      ring.forward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), fc);
      ring.backward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(),
                    dq.view(), dk.view(), dv.view(), bc);
      EXPECT_LT(max_abs_diff(o.view(), local(ro).view()), kDistTolerance);
      EXPECT_LT(max_abs_diff(dq.view(), local(rdq).view()), kDistTolerance);
      EXPECT_LT(max_abs_diff(dk.view(), local(rdk).view()), kDistTolerance);
      EXPECT_LT(max_abs_diff(dv.view(), local(rdv).view()), kDistTolerance);
    }
}

// A local window's ring holds only the rows it needs (bf16 inputs, in local [B, N/P, H, D]
// tensors of bf16): visitors' K/V, the dK/dV partials sent home and this rank's fp32 dK/dV
// accumulator hold the neighbours' blocks and the rows they return, not whole shards. The
// backward's largest part is fp32 dQ: a whole shard (2) while the shard is one chunk, a
// quarter of that with the step-0 backward in chunks of a quarter shard (as long shards are
// cut, backward_split_rows). Whole shards took 7 forward and 18 backward (K/V visitors 4, dK/dV
// accumulators 4 + 8, dQ 2).
TEST(SparseRing, LocalWindowHoldsOnlyTheRowsItNeeds) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const Shape g{1, 384 * P, 2, 8};  // 96 blocks of 4 a rank, a window of one block each side
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.sparse = pattern("local_window");
  const BlockMask global = sparse_block_mask(spec.sparse, g.N, false);
  const ShardLayout layout(Sharding::Contiguous, g.N, P);
  const auto in = testing::random_inputs(g, DType::BF16, 17);
  const int64_t n = g.N / P;
  auto local = [&](const Tensor& full) {
    Tensor t(full.view().dtype, 1, n, g.H, g.D);
    extract_shard(layout, rank, full.view(), t.view());
    return t;
  };
  Backend& be = test_backend();
  const double unit = static_cast<double>(n * g.H * g.D * 2);
  Tensor dq_whole;
  for (int64_t split : {int64_t{0}, n / 4}) {
    RingPlan plan = make_sparse_ring_plan(layout, rank, global, SparseRoute::Direct);
    plan.split_rows = split;
    RingAttention ring(std::move(plan), spec);
    Tensor q = local(in.q), k = local(in.k), v = local(in.v), d_o = local(in.d_o),
           o = q.clone(), dq = q.clone(), dk = q.clone(), dv = q.clone();
    Tensor lse(DType::F32, 1, n, g.H, 1);
    DistCounters c;
    ring.forward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), c);
    const double fwd = static_cast<double>(ring.workspace_bytes()) / unit;
    ring.release_workspace();
    ring.backward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(),
                  dq.view(), dk.view(), dv.view(), c);
    const double bwd = static_cast<double>(ring.workspace_bytes()) / unit;
    if (rank == 0)
      std::cout << "[sparse ring memory] P=" << P << (split ? " chunks of n/4:" : "")
                << " forward " << fwd << " backward " << bwd << " local tensors\n";
    EXPECT_LE(fwd, 0.25);
    EXPECT_LE(bwd, split ? 1.25 : 2.5);
    if (!split) {
      dq_whole = dq.clone();
    } else {  // the same sums in fp32, rounded once: at most one bf16 rounding apart
      const double peak = max_abs_diff(dq_whole.view(), Tensor(DType::F64, 1, n, g.H, g.D).view());
      EXPECT_LE(max_abs_diff(dq.view(), dq_whole.view()), peak / 128);
    }
  }
}

// BackwardSplit, automatic and with chunks of two blocks: each step-0 work's chunks are
// disjoint and hold every query row it lists; the calls of a chunk cover every (query block,
// key block) pair the chunk lists once, in at most 4 calls; a call straight into dk/dv holds no
// row that is reached twice or returned (those are the merged rows, accumulated in fp32), and
// a scattered mask makes every row merged. dQ: a row two chunks or a later step reach is
// merged, a row no chunk or step reaches is unreached, and the rest are reached once.
TEST(SparseRing, BackwardSplitCoversEveryListedBlockOnce) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const int64_t N = 96 * P;
  int split = 0, scattered = 0, chunked = 0;
  for (int64_t split_rows : {int64_t{0}, 2 * kBlock})
    for (const std::string& name : sparse_pattern_names())
      for (bool causal : {false, true})
        for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
          if (name == "content_adaptive") continue;  // its mask needs the inputs
          SCOPED_TRACE(name + (causal ? " causal " : " full ") + sharding_name(sh) + " split " +
                       std::to_string(split_rows));
          const BlockMask global = sparse_block_mask(pattern(name), N, causal);
          RingPlan plan = make_sparse_ring_plan(ShardLayout(sh, N, P), rank, global);
          plan.split_rows = split_rows;
          const BackwardSplit bs = make_backward_split(plan);
          const int64_t n = plan.local_rows;
          auto marks = [&](const RowRuns& runs) {
            std::vector<uint8_t> m(static_cast<size_t>(n), 0);
            for (const RowRun& r : runs)
              for (int64_t i = r.start; i < r.start + r.len; ++i) m[i] = 1;
            return m;
          };
          const std::vector<uint8_t> merged = marks(bs.merged), dq_merged = marks(bs.dq_merged),
                                     dq_unreached = marks(bs.dq_unreached);
          std::vector<int> qreach(static_cast<size_t>(n), 0);
          for (size_t t = 1; t < plan.steps.size(); ++t) {
            for (const RowRun& r : plan.steps[t].home)
              for (int64_t i = r.start; i < r.start + r.len; ++i) EXPECT_TRUE(merged[i]);
            for (const RingWork& w : plan.steps[t].work) {
              const ShardPiece& qp = plan.pieces[rank][w.q_piece];
              for (int64_t b = 0; b < w.mask.num_q_blocks; ++b)
                if (w.mask.row_ptr[b + 1] > w.mask.row_ptr[b])
                  for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i)
                    EXPECT_TRUE(dq_merged[qp.local + i]) << "row " << qp.local + i;
            }
          }
          const bool all_merged = bs.merged.size() == 1 && bs.merged[0].len == n;
          ASSERT_EQ(bs.step0.size(), plan.steps[0].work.size());
          ASSERT_EQ(bs.chunks.size(), plan.steps[0].work.size());
          bool several = false;
          for (size_t w = 0; w < bs.step0.size(); ++w) {
            const RingWork& work = plan.steps[0].work[w];
            const BlockMask& m = work.mask;
            const auto& kp = plan.pieces[plan.steps[0].origin][work.k_piece];
            const auto& qp = plan.pieces[rank][work.q_piece];
            if (split_rows > 0) EXPECT_LE(bs.chunk_rows, split_rows);
            chunked += bs.chunks[w].size() > 1;
            // Chunks: disjoint, in order, holding every listed row.
            std::vector<int> chunk_of(static_cast<size_t>(m.num_q_blocks), -1);
            for (size_t ci = 0; ci < bs.chunks[w].size(); ++ci) {
              const BackwardSplit::Chunk& ch = bs.chunks[w][ci];
              EXPECT_LE(ch.rows, bs.chunk_rows);
              for (int64_t b = ch.row0 / kBlock; b < (ch.row0 + ch.rows) / kBlock; ++b) {
                EXPECT_EQ(chunk_of[b], -1) << "query block " << b;
                chunk_of[b] = static_cast<int>(ci);
              }
              for (int64_t i = qp.local + ch.row0; i < qp.local + ch.row0 + ch.rows; ++i)
                ++qreach[i];
            }
            std::vector<int> calls_of(bs.chunks[w].size(), 0);
            std::map<std::pair<int64_t, int64_t>, int> covered;
            int last_chunk = 0;
            for (const BackwardSplit::Call& c : bs.step0[w]) {
              EXPECT_GE(c.chunk, last_chunk);
              last_chunk = c.chunk;
              ++calls_of[c.chunk];
              const BackwardSplit::Chunk& ch = bs.chunks[w][c.chunk];
              EXPECT_GE(c.row0, ch.row0);
              EXPECT_LE(c.row0 + c.rows, ch.row0 + ch.rows);
              for (int64_t b = c.row0 / kBlock; b < (c.row0 + c.rows) / kBlock; ++b)
                for (int64_t e = m.row_ptr[b]; e < m.row_ptr[b + 1]; ++e)
                  if (m.col_idx[e] >= c.col0 / kBlock && m.col_idx[e] < (c.col0 + c.cols) / kBlock)
                    ++covered[{b, m.col_idx[e]}];
              if (c.direct)
                for (int64_t i = c.col0; i < c.col0 + c.cols; ++i)
                  EXPECT_FALSE(merged[kp.local + i]) << "row " << kp.local + i;
            }
            for (int calls : calls_of) {
              EXPECT_LE(calls, 4);
              several = several || calls > 1;
            }
            for (int64_t b = 0; b < m.num_q_blocks; ++b)
              for (int64_t e = m.row_ptr[b]; e < m.row_ptr[b + 1]; ++e) {
                EXPECT_NE(chunk_of[b], -1) << "query block " << b;
                EXPECT_EQ((covered[{b, m.col_idx[e]}]), 1) << "block " << b << "," << m.col_idx[e];
              }
          }
          for (int64_t i = 0; i < n; ++i) {
            if (qreach[i] >= 2) EXPECT_TRUE(dq_merged[i]) << "row " << i;
            EXPECT_EQ(dq_unreached[i] != 0, qreach[i] == 0 && !dq_merged[i]) << "row " << i;
          }
          if (several) ++split;
          if (all_merged && P > 1) ++scattered;
        }
  if (rank == 0)
    std::cout << "[backward split] P=" << P << ": " << split << " cases cut into calls, "
              << scattered << " with every row merged, " << chunked << " works in chunks\n";
  EXPECT_GT(chunked, 0);
}

// The step-0 backward in chunks of two blocks (RingPlan::split_rows) with bf16 inputs, so dQ
// goes through each chunk's fp32 scratch, straight into dq or into the accumulator of the
// merged rows. Against the fp64 reference on the same (bf16) values, the chunked ring's error
// stays within twice the unchunked ring's plus a bf16 rounding of the largest value.
TEST(SparseRing, ChunkedBackwardInHalfPrecision) {
  Communicator& comm = test_comm();
  const int P = comm.world(), rank = comm.rank();
  const int64_t N = 96 * P;
  const Shape g{1, N, 2, 8};
  Backend& be = test_backend();
  for (const char* name : {"local_window", "dilated_sparse", "global_local", "random"})
    for (bool causal : {false, true})
      for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
        SCOPED_TRACE(std::string(name) + (causal ? " causal " : " full ") + sharding_name(sh));
        AttentionSpec spec;
        spec.variant = "block_sparse";
        spec.causal = causal;
        spec.sparse = pattern(name);
        const BlockMask global = sparse_block_mask(spec.sparse, N, causal);
        const auto in = testing::random_inputs(g, DType::BF16, 57 + causal);
        Tensor q64 = in.q.to(DType::F64), k64 = in.k.to(DType::F64), v64 = in.v.to(DType::F64),
               do64 = in.d_o.to(DType::F64);
        Tensor ro(DType::F64, 1, N, g.H, g.D), rl(DType::F64, 1, N, g.H, 1), rdq = ro.clone(),
            rdk = ro.clone(), rdv = ro.clone();
        masked_forward(be, spec, global, q64.view(), k64.view(), v64.view(), ro.view(), rl.view());
        masked_backward(be, spec, global, q64.view(), k64.view(), v64.view(), ro.view(),
                        rl.view(), do64.view(), rdq.view(), rdk.view(), rdv.view());
        const ShardLayout layout(sh, N, P);
        const int64_t n = N / P;
        auto local = [&](const Tensor& full) {
          Tensor t(full.dtype(), 1, n, g.H, g.D);
          extract_shard(layout, rank, full.view(), t.view());
          return t;
        };
        const Tensor ref[3] = {local(rdq), local(rdk), local(rdv)};
        double err[2][3] = {};
        for (int chunked = 0; chunked < 2; ++chunked) {
          RingPlan plan = make_sparse_ring_plan(layout, rank, global, SparseRoute::Direct);
          plan.split_rows = chunked ? 2 * kBlock : 0;
          RingAttention ring(std::move(plan), spec);
          Tensor q = local(in.q), k = local(in.k), v = local(in.v), d_o = local(in.d_o);
          Tensor o = q.clone(), dq = q.clone(), dk = q.clone(), dv = q.clone();
          Tensor lse(DType::F32, 1, n, g.H, 1);
          DistCounters c;
          ring.forward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), c);
          dq.fill(7.0);  // overwritten
          ring.backward(be, comm, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(),
                        dq.view(), dk.view(), dv.view(), c);
          const Tensor* got[3] = {&dq, &dk, &dv};
          for (int i = 0; i < 3; ++i) err[chunked][i] = max_abs_diff(got[i]->view(), ref[i].view());
        }
        for (int i = 0; i < 3; ++i) {
          const double peak = max_abs_diff(ref[i].view(), Tensor(DType::F64, 1, n, g.H, g.D).view());
          EXPECT_LE(err[1][i], 2 * err[0][i] + peak / 256) << "gradient " << "qkv"[i];
          EXPECT_LE(err[0][i], peak / 32 + 1e-3) << "gradient " << "qkv"[i];
        }
      }
}

TEST(SparseRing, BlockSizeMustDivideTheShard) {
  Communicator& comm = test_comm();
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.sparse = pattern("local_window");
  spec.sparse.block_size = 8;
  spec.sparse.window_size = 16;
  const Shape g{1, 8 * 2 * comm.world() * 3 / 2, 1, 4};  // zigzag piece of 12 rows
  try {
    validate_distributed(spec, DistConfig{DistMode::BlockSparseRing, Sharding::Zigzag},
                         comm.world(), &g);
    ADD_FAILURE() << "accepted block 8 with zigzag pieces of 12 rows";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("block_size"), std::string::npos) << e.what();
  }
}

TEST(SparseRing, NegativeSplitRowsIsRejected) {
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.sparse = pattern("local_window");
  DistConfig cfg{DistMode::BlockSparseRing, Sharding::Contiguous};
  cfg.split_rows = -8;
  try {
    validate_distributed(spec, cfg, 2);
    ADD_FAILURE() << "accepted split_rows -8";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("split_rows"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace longattn
