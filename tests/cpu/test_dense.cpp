// Dense attention and the CPU kernel contract against an independent naive softmax: fp64 to
// 1e-12, fp16/bf16 within 2x a same-precision naive implementation, causal perturbation,
// ragged block edges, empty rows, gradients against finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "attention/dense.hpp"
#include "common/reference.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::naive_attention;

struct DenseCase {
  int64_t B, N, H, D, block;
  bool causal;
};

class DenseVsNaive : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseVsNaive, Fp64MatchesNaiveTo1e12) {
  const auto c = GetParam();
  auto be = make_cpu_backend();
  Tensor q = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 11 + c.N);
  Tensor k = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 12 + c.N);
  Tensor v = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 13 + c.N);
  Tensor o(DType::F64, c.B, c.N, c.H, c.D), lse(DType::F64, c.B, c.N, c.H, 1);
  AttentionSpec spec;
  spec.causal = c.causal;
  spec.block_size = c.block;
  make_dense_attention(spec)->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
  auto ref = naive_attention(q.view(), k.view(), v.view(), [&](int64_t, int64_t, int64_t i,
                                                               int64_t j) { return !c.causal || j <= i; });
  EXPECT_LT(compare(o.view(), ref.o.view()).max_abs, 1e-12);
  EXPECT_LT(compare(lse.view(), ref.lse.view()).max_abs, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseVsNaive,
                         ::testing::Values(DenseCase{1, 37, 2, 8, 16, false},
                                           DenseCase{2, 64, 3, 16, 16, true},
                                           DenseCase{1, 100, 1, 32, 64, true},
                                           DenseCase{2, 5, 2, 4, 64, false},
                                           DenseCase{1, 130, 2, 8, 32, true}));

TEST(Dense, HalfPrecisionWithinTwiceNaiveError) {
  auto be = make_cpu_backend();
  for (DType dt : {DType::F16, DType::BF16, DType::F32}) {
    const int64_t B = 1, N = 96, H = 2, D = 32;
    Tensor q64 = Tensor::randn(DType::F64, B, N, H, D, 21);
    Tensor k64 = Tensor::randn(DType::F64, B, N, H, D, 22);
    Tensor v64 = Tensor::randn(DType::F64, B, N, H, D, 23);
    Tensor q = q64.to(dt), k = k64.to(dt), v = v64.to(dt);
    // The fp64 reference sees the same (rounded) inputs.
    Tensor qr = q.to(DType::F64), kr = k.to(DType::F64), vr = v.to(DType::F64);
    auto causal = [](int64_t, int64_t, int64_t i, int64_t j) { return j <= i; };
    auto ref = naive_attention(qr.view(), kr.view(), vr.view(), causal);
    auto naive_lp = naive_attention(qr.view(), kr.view(), vr.view(), causal, 0.0, dt);
    Tensor o(dt, B, N, H, D), lse(DType::F32, B, N, H, 1);
    AttentionSpec spec;
    spec.causal = true;
    make_dense_attention(spec)->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
    const double naive_err = compare(naive_lp.o.view(), ref.o.view()).max_abs;
    const double err = compare(o.view(), ref.o.view()).max_abs;
    EXPECT_LE(err, testing::tolerance_for(dt, naive_err)) << dtype_name(dt);
  }
}

TEST(Dense, CausalOutputIgnoresFutureKeys) {
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 80, H = 2, D = 8, cut = 41;
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 31);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 32);
  Tensor v = Tensor::randn(DType::F64, B, N, H, D, 33);
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = 16;
  auto att = make_dense_attention(spec);
  Tensor o1(DType::F64, B, N, H, D), o2(DType::F64, B, N, H, D), l(DType::F64, B, N, H, 1);
  att->forward(*be, q.view(), k.view(), v.view(), o1.view(), l.view());
  for (int64_t n = cut; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < D; ++d) {
        k.set(0, n, h, d, 100.0 * (d + 1));
        v.set(0, n, h, d, -50.0);
      }
  att->forward(*be, q.view(), k.view(), v.view(), o2.view(), l.view());
  EXPECT_EQ(compare(o1.view().rows(0, cut), o2.view().rows(0, cut)).max_abs, 0.0);
  EXPECT_GT(compare(o1.view().rows(cut, N - cut), o2.view().rows(cut, N - cut)).max_abs, 1e-3);
}

// Listed blocks over spanned blocks: contiguous rows give 1, scattered rows their fraction,
// empty rows count for nothing.
TEST(Dense, MaskRowFill) {
  const MaskGeometry g3{48, 128, 16, 16, false, 0, 0}, g2{32, 128, 16, 16, false, 0, 0};
  EXPECT_DOUBLE_EQ(mask_row_fill(dense_block_mask(g3)), 1.0);
  EXPECT_DOUBLE_EQ(mask_row_fill(build_block_mask(g3, {{2, 3, 4}, {}, {5}})), 1.0);
  // Rows {0, 7} (2 of 8 spanned) and {1, 3, 5} (3 of 5): 5 of 13.
  const BlockMask m = build_block_mask(g2, {{0, 7}, {1, 3, 5}});
  EXPECT_DOUBLE_EQ(mask_row_fill(m), 5.0 / 13.0);
  EXPECT_DOUBLE_EQ(host_mask_view(m).row_fill, 5.0 / 13.0);
  EXPECT_DOUBLE_EQ(mask_row_fill(build_block_mask(g2, {{}, {}})), 1.0);
}

// Rows that are runs of consecutive key blocks, the keys a row lists on average, and which
// calls the Hopper forward walks by position over those runs.
TEST(Dense, MaskRuns) {
  const MaskGeometry g3{48, 128, 16, 16, false, 0, 0}, g2{32, 128, 16, 16, false, 0, 0};
  EXPECT_TRUE(mask_contiguous_rows(dense_block_mask(g3)));
  const BlockMask runs = build_block_mask(g3, {{2, 3, 4}, {}, {5}});
  EXPECT_TRUE(mask_contiguous_rows(runs));
  EXPECT_DOUBLE_EQ(mask_mean_row_keys(runs), 4.0 * 16 / 2);  // 4 blocks over 2 non-empty rows
  const BlockMaskView v = host_mask_view(runs);
  EXPECT_TRUE(v.contiguous_rows);
  EXPECT_DOUBLE_EQ(v.mean_row_keys, 32.0);
  EXPECT_FALSE(mask_contiguous_rows(build_block_mask(g2, {{0, 1, 2}, {1, 3}})));
  EXPECT_FALSE(host_mask_view(build_block_mask(g2, {{0, 2}, {}})).contiguous_rows);
  EXPECT_TRUE(mask_contiguous_rows(build_block_mask(g2, {{}, {}})));
  EXPECT_DOUBLE_EQ(mask_mean_row_keys(build_block_mask(g2, {{}, {}})), 0.0);
  // Causal trimming keeps a dense causal mask's rows contiguous.
  EXPECT_TRUE(mask_contiguous_rows(dense_block_mask({48, 128, 16, 16, true, 0, 0})));
  // A view nobody filled in claims nothing.
  EXPECT_FALSE(BlockMaskView{}.contiguous_rows);

  EXPECT_TRUE(forward_wide_runs(128, true, kForwardWideRunKeys));
  EXPECT_FALSE(forward_wide_runs(128, true, kForwardWideRunKeys - 1));
  EXPECT_FALSE(forward_wide_runs(128, false, 1e9));
  EXPECT_TRUE(forward_wide_runs(64, true, kForwardWideRunKeys));  // the union of two rows' runs
  EXPECT_FALSE(forward_wide_runs(64, true, kForwardWideRunKeys - 1));
  EXPECT_FALSE(forward_wide_runs(64, false, 1e9));
  EXPECT_FALSE(forward_wide_runs(96, true, 1e9));
}

// The Hopper forward's gathered tiles: scattered rows at head dim 128, not causal, whole 64-key
// chunks only.
TEST(Dense, ForwardGatheredTilesRule) {
  const double k = kForwardGatherKeys;
  EXPECT_TRUE(forward_gathered_tiles(128, false, false, false, 65536, k));
  EXPECT_TRUE(forward_gathered_tiles(128, false, false, false, 64 * 129, k));  // a half block at the end
  EXPECT_FALSE(forward_gathered_tiles(128, false, false, false, 65536, k - 1));  // short rows
  EXPECT_FALSE(forward_gathered_tiles(128, false, false, false, 65536 - 32, k));
  EXPECT_FALSE(forward_gathered_tiles(128, false, false, false, 0, k));
  EXPECT_FALSE(forward_gathered_tiles(128, true, false, false, 65536, k));   // causal
  EXPECT_FALSE(forward_gathered_tiles(128, false, true, false, 65536, k));   // complete: by position
  EXPECT_FALSE(forward_gathered_tiles(128, false, false, true, 65536, k));   // runs: by position
  EXPECT_FALSE(forward_gathered_tiles(64, false, false, false, 65536, k));
  EXPECT_FALSE(forward_gathered_tiles(256, false, false, false, 65536, k));
}

// Head groups of the persistent forward: head by head without causality, whatever the L2
// budget; under causality groups that divide the pairs, rounded up within twice the budget,
// else down.
TEST(Dense, ForwardHeadGroup) {
  // Non-causal: one head at a time.
  EXPECT_EQ(forward_head_group(16, 12, false), 1);
  EXPECT_EQ(forward_head_group(16, 0, false), 1);
  EXPECT_EQ(forward_head_group(16, 25, false), 1);
  EXPECT_EQ(forward_head_group(1, 5, false), 1);
  EXPECT_EQ(forward_head_group(0, 5, true), 1);
  // Causal, 16 heads: 4K d=128 (12 pairs' K/V in half of the L2) and 8K d=64 take one group
  // of 16; 8K d=128 (6) two of 8; 16K d=128 (3) four of 4; 64K (0) sixteen of 1; 4K d=64 (25)
  // one of 16.
  EXPECT_EQ(forward_head_group(16, 12, true), 16);
  EXPECT_EQ(forward_head_group(16, 6, true), 8);
  EXPECT_EQ(forward_head_group(16, 3, true), 4);
  EXPECT_EQ(forward_head_group(16, 0, true), 1);
  EXPECT_EQ(forward_head_group(16, 25, true), 16);
  EXPECT_EQ(forward_head_group(16, 8, true), 8);  // a divisor already
  // No divisor within twice the budget: the largest below it (13 pairs are prime: groups of 1;
  // 24 pairs with a budget of 5: 6; 28 with 10: 14; 36 with 10: 12, not 9).
  EXPECT_EQ(forward_head_group(13, 5, true), 1);
  EXPECT_EQ(forward_head_group(24, 5, true), 6);
  EXPECT_EQ(forward_head_group(28, 10, true), 14);
  EXPECT_EQ(forward_head_group(36, 10, true), 12);
  EXPECT_EQ(forward_head_group(30, 7, true), 10);
  EXPECT_EQ(forward_head_group(22, 10, true), 11);
  EXPECT_EQ(forward_head_group(34, 10, true), 17);
  EXPECT_EQ(forward_head_group(46, 10, true), 2);  // 23 is past twice the budget
}

// The Hopper backward's work order: causal calls in head groups whose Q, dO and dq take half of
// the L2 (rounded to a divisor of the pairs as forward_head_group does), non-causal head by head.
TEST(Dense, BackwardWorkGroup) {
  const int64_t l2 = int64_t{50} << 20;
  // d=128, 16 heads: 4K (4 MB a head, 6 in 25 MB) groups of 8; 8K (8 MB, 3) of 4; 16K (16 MB,
  // 1) of 1; 64K of 1.
  EXPECT_EQ(backward_work_group(16, 4096, 128, true, l2), 8);
  EXPECT_EQ(backward_work_group(16, 8192, 128, true, l2), 4);
  EXPECT_EQ(backward_work_group(16, 16384, 128, true, l2), 1);
  EXPECT_EQ(backward_work_group(16, 65536, 128, true, l2), 1);
  // d=64, 4K (2 MB, 12): one group of 16.
  EXPECT_EQ(backward_work_group(16, 4096, 64, true, l2), 16);
  EXPECT_EQ(backward_work_group(16, 4096, 128, false, l2), 0);
  EXPECT_EQ(backward_work_group(0, 4096, 128, true, l2), 0);
  EXPECT_EQ(backward_work_group(3, 0, 128, true, l2), 3);
}

// The Hopper backward's work positions: pair by pair without a group, and with any group size
// (dividing the pairs or not) a bijection onto (key block or part, pair), each group's works key
// block by key block across its pairs.
TEST(Dense, BackwardWorkPositions) {
  EXPECT_EQ(backward_work_pos<int>(5, 4, 3, 0).x, 1);
  EXPECT_EQ(backward_work_pos<int>(5, 4, 3, 0).pair, 1);
  // nx 4, pairs 3, groups of 2: pairs {0, 1} x 0..3, then pair 2 x 0..3.
  const int want[12][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 0}, {2, 1},
                           {3, 0}, {3, 1}, {0, 2}, {1, 2}, {2, 2}, {3, 2}};
  for (int w = 0; w < 12; ++w) {
    EXPECT_EQ(backward_work_pos<int>(w, 4, 3, 2).x, want[w][0]) << w;
    EXPECT_EQ(backward_work_pos<int>(w, 4, 3, 2).pair, want[w][1]) << w;
  }
  for (int nx : {1, 3, 32, 512})
    for (int pairs : {1, 2, 7, 16, 48})
      for (int group = 0; group <= pairs + 2; ++group) {
        std::vector<int> seen(static_cast<size_t>(nx) * pairs, 0);
        for (int w = 0; w < nx * pairs; ++w) {
          const BackwardWorkPos<int> p = backward_work_pos(w, nx, pairs, group);
          ASSERT_TRUE(p.x >= 0 && p.x < nx && p.pair >= 0 && p.pair < pairs)
              << nx << " " << pairs << " " << group << " " << w;
          ++seen[static_cast<size_t>(p.pair) * nx + p.x];
        }
        for (int v : seen) ASSERT_EQ(v, 1) << nx << " " << pairs << " " << group;
      }
}

// Tail splitting of the persistent backward: the last partial round's works cut along their
// query range.
TEST(Dense, BackwardTailSplit) {
  auto expect_split = [](int64_t works, int64_t ctas, int64_t tiles, int64_t first,
                         int64_t items, int64_t parts, int64_t spans, double cost,
                         bool allow_spans = true) {
    SCOPED_TRACE(std::to_string(works) + " works of " + std::to_string(tiles) + " tiles");
    const BackwardTailSplit t = backward_tail_split(works, ctas, tiles, 32, allow_spans);
    EXPECT_EQ(t.first, first);
    EXPECT_EQ(t.items, items);
    EXPECT_EQ(t.parts, parts);
    EXPECT_EQ(t.spans, spans);
    EXPECT_EQ(t.launch_items(), spans > 0 ? spans : items * parts);
    EXPECT_NEAR(t.tail_cost, cost, 1e-12);
  };
  // 32K at head dim 128 (80-query tiles): 4096 works of 410 tiles on 132 CTAs leave 4 works
  // alone in a 32nd round; 32 parts of 13 tiles each fill 128 CTAs at once (spans, 12-13 tiles
  // in one or two pieces, take as long: parts are kept).
  expect_split(4096, 132, 410, 4092, 4, 32, 0, (13.0 + 4.0) / 414.0);
  // 16K: 2048 works of 205 tiles, a last round of 68; five parts of 41 tiles take 340 slots, three
  // rounds: (3 x 45) / 209. (Spans, 106 tiles in two pieces, would cost (106 + 2 x 4) / 209;
  // parts are taken wherever they save a tenth.)
  expect_split(2048, 132, 205, 1980, 68, 5, 0, 135.0 / 209.0);
  expect_split(2048, 132, 205, 1980, 68, 5, 0, 135.0 / 209.0, false);
  // 8K: a last round of 100 of 132 works of 103 tiles; no count of parts saves a tenth of a
  // work, spans of 78-79 tiles do (the longest, in two pieces, 78): (78 + 2 x 4) / 107.
  expect_split(1024, 132, 103, 924, 100, 0, 132, 86.0 / 107.0);
  EXPECT_EQ(backward_tail_split(1024, 132, 103, 32, false).parts, 0);
  EXPECT_EQ(backward_tail_split(1024, 132, 103, 32, false).spans, 0);
  // 4K: a last round of 116 of 132 works of 52 tiles: spans of 46 tiles in two pieces,
  // (46 + 8) / 56, save less than a tenth; nothing is split.
  EXPECT_EQ(backward_tail_split(512, 132, 52).launch_items(), 0);
  EXPECT_EQ(backward_tail_split(512, 132, 32).launch_items(), 0);
  // Whole rounds, too few tiles, nothing: not split.
  EXPECT_EQ(backward_tail_split(264, 132, 410).parts, 0);
  EXPECT_EQ(backward_tail_split(5, 132, 3).parts, 0);
  EXPECT_EQ(backward_tail_split(0, 132, 100).parts, 0);
  EXPECT_EQ(backward_tail_split(100, 0, 100).parts, 0);
  // Fewer works than CTAs: every work is the tail; parts of at least 2 tiles (spans would have
  // fewer).
  expect_split(2, 132, 12, 0, 2, 6, 0, (2.0 + 4.0) / 16.0);
  // The GPU test's shapes on 5 CTAs: 12 works of 9 (d=128) or 6 (d=64) tiles, two of them split
  // in two; 16 works of 8 or 5 tiles, the last in 4 or 2.
  const BackwardTailSplit t = backward_tail_split(12, 5, 9);
  EXPECT_EQ(t.first, 10);
  EXPECT_EQ(t.parts, 2);
  EXPECT_EQ(backward_tail_split(12, 5, 6).parts, 2);
  EXPECT_EQ(backward_tail_split(16, 5, 8).parts, 4);
  EXPECT_EQ(backward_tail_split(16, 5, 5).parts, 2);
  // The GPU test's spans on 4 CTAs: 7 works of 32 tiles (2560 queries at head dim 128, 4096 at
  // 64) leave 3; 4 spans of 24 tiles, one in two pieces: (24 + 8) / 36. No count of parts saves
  // a tenth there (four of 8 tiles: 12 parts, three rounds of 12).
  expect_split(7, 4, 32, 4, 3, 0, 4, 32.0 / 36.0);
}

// The spans' pieces cover the tail's tiles once each, in order, each span one or two pieces of
// one CTA's share.
TEST(Dense, BackwardSpanPieces) {
  for (int64_t works : {1, 4, 68, 100, 116})
    for (int64_t tiles : {2, 5, 52, 103, 205})
      for (int64_t spans : {works + 1, int64_t{132}}) {
        if (spans <= works) continue;
        SCOPED_TRACE(std::to_string(works) + " works of " + std::to_string(tiles) + ", " +
                     std::to_string(spans) + " spans");
        int64_t next = 0;  // the next tile, counted over the works one after the other
        for (int64_t k = 0; k < spans; ++k) {
          const auto p0 = backward_span_piece<int64_t>(k, works, tiles, spans, 0);
          int64_t len = 0;
          for (int piece = 0; piece < (p0.more ? 2 : 1); ++piece) {
            const auto p = backward_span_piece<int64_t>(k, works, tiles, spans, piece);
            ASSERT_EQ(p.more, piece == 0 && p0.more);
            ASSERT_GE(p.work, 0);
            ASSERT_LT(p.work, works);
            ASSERT_LE(0, p.lo);
            ASSERT_LE(p.lo, p.hi);
            ASSERT_LE(p.hi, tiles);
            ASSERT_EQ(p.work * tiles + p.lo, next);
            if (piece == 1) ASSERT_EQ(p.lo, 0);
            if (piece == 1) ASSERT_GT(p.hi, 0);
            next = p.work * tiles + p.hi;
            len += p.hi - p.lo;
          }
          // Equal shares: floor or ceil of the tail's tiles over the spans.
          ASSERT_GE(len, works * tiles / spans);
          ASSERT_LE(len, (works * tiles + spans - 1) / spans);
        }
        EXPECT_EQ(next, works * tiles);
      }
}

// Where a span's piece sits in its work (the 16-bit merge): each work's pieces, taken span by
// span, are numbered 0, 1, ... up to its count, the same count from every piece; the most
// pieces any work has is backward_split_max_pieces's.
// The transposed dQ accumulator (backward_dq_t_rows, _slot, _offset): rows of Nq rounded up to
// 80, each (query, column) an offset of its own inside its tile's block, a warpgroup's 64
// columns of a tile one piece of 20 KB, and the slot of every value the Hopper kernel stores: an
// stmatrix of dQ^T's fragment registers 4 nt + m (lane (g, t4): column 16 warp + 8 (m >> 1) + g,
// query 8 nt + 2 t4 + (m & 1)) puts register m of a lane at word t4 of row g of matrix m, whose
// rows the kernel addresses at chunk (2 nt + (m & 1)) ^ ((c >> 1) & 3) of column c's 320 bytes.
TEST(Dense, BackwardDqTransposedSlots) {
  EXPECT_EQ(backward_dq_t_rows(1), 80);
  EXPECT_EQ(backward_dq_t_rows(80), 80);
  EXPECT_EQ(backward_dq_t_rows(1003), 1040);
  EXPECT_EQ(backward_dq_t_rows(4096), 4160);
  const int64_t D = 128;
  for (int64_t nq : {80, 203}) {
    const int64_t rows = backward_dq_t_rows(nq);
    std::vector<int> used(static_cast<size_t>(rows * D), 0);
    for (int64_t q = 0; q < nq; ++q)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t o = backward_dq_t_offset(q, d, D);
        ASSERT_GE(o, (q / 80) * 80 * D);  // inside its tile's block
        ASSERT_LT(o, (q / 80 + 1) * 80 * D);
        ++used[static_cast<size_t>(o)];
      }
    for (int u : used) ASSERT_LE(u, 1);
  }
  for (int64_t tile : {0, 3})
    for (int64_t col0 : {0, 64}) {  // a warpgroup's columns: [col0 * 80, col0 * 80 + 5120)
      const int64_t base = tile * 80 * D + col0 * 80;
      for (int warp = 0; warp < 4; ++warp)
        for (int nt = 0; nt < 10; ++nt)
          for (int m = 0; m < 4; ++m)
            for (int g = 0; g < 8; ++g)
              for (int t4 = 0; t4 < 4; ++t4) {
                const int64_t c = 16 * warp + 8 * (m >> 1) + g;  // within the warpgroup
                const int64_t q = 80 * tile + 8 * nt + 2 * t4 + (m & 1);
                const int64_t chunk = (2 * nt + (m & 1)) ^ ((c >> 1) & 3);
                ASSERT_EQ(backward_dq_t_offset(q, col0 + c, D), base + c * 80 + 4 * chunk + t4)
                    << "nt " << nt << " m " << m << " g " << g << " t4 " << t4;
              }
    }
  // Eight rows' chunk k (an stmatrix matrix) fall on eight different 16-byte bank groups.
  for (int64_t c0 : {0, 8, 56})
    for (int64_t k = 0; k < 20; ++k) {
      std::vector<int> bank(8, 0);
      for (int64_t r = 0; r < 8; ++r) {
        const int64_t c = c0 + r;
        ++bank[static_cast<size_t>((c * 320 / 16 + (k ^ ((c >> 1) & 3))) % 8)];
      }
      for (int b : bank) EXPECT_EQ(b, 1) << "rows " << c0 << ".. chunk " << k;
    }
}

TEST(Dense, BackwardSpanPieceOf) {
  for (int64_t works : {1, 3, 68, 100, 116})
    for (int64_t tiles : {2, 5, 32, 52, 103})
      for (int64_t spans : {works + 1, int64_t{4}, int64_t{132}}) {
        if (works * tiles < spans) continue;
        SCOPED_TRACE(std::to_string(works) + " works of " + std::to_string(tiles) + ", " +
                     std::to_string(spans) + " spans");
        std::vector<int64_t> seen(static_cast<size_t>(works), 0), count(works, -1);
        int64_t most = 0;
        for (int64_t k = 0; k < spans; ++k)
          for (int piece = 0;; ++piece) {
            const auto p = backward_span_piece<int64_t>(k, works, tiles, spans, piece);
            const auto of = backward_span_piece_of<int64_t>(p.work, works, tiles, spans, k);
            const size_t w = static_cast<size_t>(p.work);
            ASSERT_EQ(of.index, seen[w]);  // in order, from 0
            if (count[w] < 0) count[w] = of.count;
            ASSERT_EQ(of.count, count[w]);
            ++seen[w];
            most = std::max(most, of.count);
            if (!p.more) break;
          }
        for (size_t w = 0; w < seen.size(); ++w) ASSERT_EQ(seen[w], count[w]);
        BackwardTailSplit t;
        t.items = works;
        t.spans = spans;
        EXPECT_EQ(backward_split_max_pieces(t, tiles), most);
      }
  // 8K at head dim 128: 100 works of 103 tiles in 132 spans of 78: some works in three pieces.
  BackwardTailSplit t = backward_tail_split(1024, 132, 103);
  EXPECT_EQ(backward_split_max_pieces(t, 103), 3);
  t = backward_tail_split(2048, 132, 205);  // 16K: five parts
  EXPECT_EQ(backward_split_max_pieces(t, 205), 5);
}

// Tail splitting of the persistent forward: the last partial wave's items cut along the keys.
TEST(Dense, ForwardTailSplit) {
  // 8K at head dim 64 (192-row items): 688 items on 132 CTAs, a last wave of 28 items of 64 key
  // tiles: four pieces of 16 tiles fill 112 CTAs at once; with the merge (2 tiles, and 1.5 keys
  // of 128 per piece) 21.3 / 66 of an item.
  ForwardTailSplit t = forward_tail_split(688, 132, 64);
  EXPECT_EQ(t.first, 660);
  EXPECT_EQ(t.items, 28);
  EXPECT_EQ(t.pieces, 4);
  EXPECT_EQ(t.tiles_per_piece, 16);
  EXPECT_NEAR(t.tail_cost, (18.0 + 2.0 + 112 * 1.5 / 128) / 66.0, 1e-12);
  // 4K at head dim 64: 352 items, a last wave of 88. Its best split, three pieces of 11 tiles in
  // two waves of 132, costs (2 x 13 + 2 + 264 x 1.5 / 128) / 34 = 0.91 of an item with the
  // merge: not taken.
  EXPECT_EQ(forward_tail_split(352, 132, 32).pieces, 0);
  // Without the merge's per-piece reads (a tile of many keys) the same call is split in three.
  t = forward_tail_split(352, 132, 32, 1 << 30);
  EXPECT_EQ(t.first, 264);
  EXPECT_EQ(t.items, 88);
  EXPECT_EQ(t.pieces, 3);
  EXPECT_EQ(t.tiles_per_piece, 11);
  EXPECT_NEAR(t.tail_cost, (26.0 + 2.0) / 34.0, 1e-6);
  // 4K at head dim 128: 512 items leave 116 of 132 CTAs busy in the last wave; no split helps.
  EXPECT_EQ(forward_tail_split(512, 132, 24).pieces, 0);
  // Whole waves: nothing to split.
  EXPECT_EQ(forward_tail_split(264, 132, 64).pieces, 0);
  // Fewer items than CTAs: every item is the tail.
  t = forward_tail_split(24, 132, 8);
  EXPECT_EQ(t.first, 0);
  EXPECT_EQ(t.items, 24);
  EXPECT_EQ(t.pieces, 4);
  EXPECT_EQ(t.tiles_per_piece, 2);
  // Uneven key tiles: at most 3 pieces (2 tiles each would leave 4 pieces, 3 needs 2 x 3 <= 7);
  // pieces of 3, 3 and 1 tiles, one wave of (3 + 2) / (7 + 2) of an item and the merge.
  t = forward_tail_split(3, 132, 7);
  EXPECT_EQ(t.pieces, 3);
  EXPECT_EQ(t.tiles_per_piece, 3);
  EXPECT_NEAR(t.tail_cost, (5.0 + 2.0 + 9 * 1.5 / 128) / 9.0, 1e-12);
  EXPECT_LE((t.pieces - 1) * t.tiles_per_piece, 6);
  // Too few key tiles to cut, bad arguments.
  EXPECT_EQ(forward_tail_split(10, 132, 3).pieces, 0);
  EXPECT_EQ(forward_tail_split(0, 132, 64).pieces, 0);
  EXPECT_EQ(forward_tail_split(10, 0, 64).pieces, 0);
  EXPECT_EQ(forward_tail_split(10, 132, 64, 0).pieces, 0);
  for (int64_t items : {1, 5, 131, 133, 300, 1000, 5000})
    for (int64_t tiles : {4, 9, 24, 64, 512}) {
      const ForwardTailSplit s = forward_tail_split(items, 132, tiles);
      if (s.pieces == 0) continue;
      EXPECT_GE(s.pieces, 2);
      EXPECT_LT((s.pieces - 1) * s.tiles_per_piece, tiles);  // no empty piece
      EXPECT_GE(s.pieces * s.tiles_per_piece, tiles);        // every tile in a piece
      EXPECT_EQ(s.first + s.items, items);
      EXPECT_LE(s.tail_cost, 0.9);
    }
}

// List schedules of tall items then short ones on a persistent grid (forward_short_items).
TEST(Dense, ListMakespan) {
  // Whole rounds of tall items; a partial last round takes a whole item.
  EXPECT_DOUBLE_EQ(list_makespan(264, 0, 132, 0.78), 2.0);
  EXPECT_DOUBLE_EQ(list_makespan(265, 0, 132, 0.78), 3.0);
  EXPECT_DOUBLE_EQ(list_makespan(0, 0, 132, 0.78), 0.0);
  // 256 tall: 8 CTAs free at 1, 124 at 2. 128 short: 8 start at 1, 8 at 1.78, 112 at 2.
  EXPECT_NEAR(list_makespan(256, 128, 132, 0.78), 2.78, 1e-12);
  // Short items only: 512 on 132 CTAs start at 0, 0.5, 1, 1.5 (the last 116 at 1.5).
  EXPECT_NEAR(list_makespan(0, 512, 132, 0.5), 2.0, 1e-12);
  // One CTA: everything in a row.
  EXPECT_NEAR(list_makespan(3, 4, 1, 0.25), 4.0, 1e-12);
  // A short item never ends before the tall ones of its round: 1 tall, 1 short on 2 CTAs.
  EXPECT_NEAR(list_makespan(1, 1, 2, 0.5), 1.0, 1e-12);
  // Against a direct simulation of the counter (each item to the CTA free first).
  for (int64_t ctas : {1, 3, 7, 132})
    for (int64_t tall : {0, 1, 5, 131, 132, 200, 300})
      for (int64_t shorts : {0, 1, 9, 64, 131, 400})
        for (double c : {0.5, 0.78, 0.9}) {
          std::vector<double> free_at(static_cast<size_t>(ctas), 0.0);
          double end = 0.0;
          for (int64_t i = 0; i < tall + shorts; ++i) {
            auto it = std::min_element(free_at.begin(), free_at.end());
            *it += i < tall ? 1.0 : c;
            end = std::max(end, *it);
          }
          EXPECT_NEAR(list_makespan(tall, shorts, ctas, c), end, 1e-9)
              << ctas << " " << tall << " " << shorts << " " << c;
        }
}

// The head-dim-128 forward's narrow first tile: the keys over a multiple of 192 when they are 64
// or 128 and the walk has more than one tile, and only where the launch plans no tail split.
TEST(Dense, ForwardNarrowKeys) {
  // 16 heads of 4K (512 items) and 8K (1024) on 132 CTAs: no tail split, narrow 64 and 128.
  EXPECT_EQ(forward_narrow_keys(4096, 512, 132, true), 64);
  EXPECT_EQ(forward_narrow_keys(8192, 1024, 132, true), 128);
  // 16K: the tail split takes the last round, so the whole-tile kernel; without it, narrow.
  ASSERT_GE(forward_tail_split(2048, 132, 86, 192).pieces, 2);
  EXPECT_EQ(forward_narrow_keys(16384, 2048, 132, true), 0);
  EXPECT_EQ(forward_narrow_keys(16384, 2048, 132, false), 64);
  // Keys a multiple of 192, or leaving other than 64 or 128, or one tile: none.
  EXPECT_EQ(forward_narrow_keys(192 * 20, 512, 132, false), 0);
  EXPECT_EQ(forward_narrow_keys(192 * 20 + 96, 512, 132, false), 0);
  EXPECT_EQ(forward_narrow_keys(192 * 20 + 100, 512, 132, false), 0);
  EXPECT_EQ(forward_narrow_keys(64, 4, 132, false), 0);
  EXPECT_EQ(forward_narrow_keys(128, 4, 132, false), 0);
  EXPECT_EQ(forward_narrow_keys(256, 4, 132, false), 64);
  EXPECT_EQ(forward_narrow_keys(320, 4, 132, false), 128);
  // Degenerate launches: none.
  EXPECT_EQ(forward_narrow_keys(4096, 0, 132, true), 0);
  EXPECT_EQ(forward_narrow_keys(4096, 512, 132, true, 0), 0);
  // Against the tail split's own answer over many launches.
  for (int64_t ctas : {5, 132})
    for (int64_t nk : {256, 1024, 1088, 4096, 8192, 16384, 32768, 65536})
      for (int64_t items : {1, 6, 131, 132, 133, 512, 1024, 2048, 8192}) {
        const int64_t r = nk % 192;
        const bool split = forward_tail_split(items, ctas, (nk + 191) / 192, 192).pieces >= 2;
        EXPECT_EQ(forward_narrow_keys(nk, items, ctas, true), split ? 0 : r)
            << nk << " " << items << " " << ctas;
      }
}

// Windows of w blocks of 128 keys around the diagonal of an nb-block square mask (rows near the
// ends shorter), and the narrow first tile the forward over runs takes for them.
BlockMaskView window_view(int64_t nb, int64_t before, int64_t after, BlockMask& keep) {
  const MaskGeometry g{nb * 128, nb * 128, 128, 128, false, 0, 0};
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nb));
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t c = std::max<int64_t>(0, r - before); c <= std::min(nb - 1, r + after); ++c)
      rows[r].push_back(static_cast<int32_t>(c));
  keep = build_block_mask(g, rows);
  return host_mask_view(keep);
}

// Narrow first tiles over runs: the residue modulo 192 of most rows' runs (at least three in
// four), where every run is longer than it, for non-causal calls at head dim 128 whose keys end
// at the mask's last block.
TEST(Dense, ForwardRunsNarrowKeys) {
  BlockMask m;
  // local_window at 10% of 64K (512 blocks, 26 on each side): 53 blocks, 6784 keys, in 460 of
  // 512 rows: 64 over 35 tiles of 192.
  BlockMaskView v = window_view(512, 26, 26, m);
  EXPECT_TRUE(v.contiguous_rows);
  EXPECT_EQ(v.run_keys_min, 27 * 128);
  EXPECT_EQ(v.run_residue[0] + v.run_residue[1] + v.run_residue[2], 512);
  EXPECT_GE(v.run_residue[1], 460);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 512 * 128, v), 64);
  // Not causal, head dim 128, and the keys ending at the mask's end only.
  EXPECT_EQ(forward_runs_narrow_keys(128, true, 512 * 128, v), 0);
  EXPECT_EQ(forward_runs_narrow_keys(64, false, 512 * 128, v), 0);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 512 * 128 - 5, v), 0);
  // What a forced width (LONGATTN_SM90_FWD_RUNS_NARROW) checks: the rule's conditions without
  // the share; every run longer than the narrow tile.
  EXPECT_TRUE(forward_runs_narrow_fits(128, false, 512 * 128, v, 128));
  EXPECT_FALSE(forward_runs_narrow_fits(128, false, 512 * 128, v, 27 * 128));
  EXPECT_FALSE(forward_runs_narrow_fits(128, true, 512 * 128, v, 64));
  // 7 blocks (896 keys: 128 over 4 tiles), the first and last rows 4 (512 keys, 128 over 2):
  // 8 of 12 rows, under three in four, none; 28 of 32 rows: 128.
  v = window_view(12, 3, 3, m);
  EXPECT_EQ(v.run_residue[2], 8);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 12 * 128, v), 0);
  v = window_view(32, 3, 3, m);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 32 * 128, v), 128);
  // 6 blocks (768 keys, a multiple of 192): none. One block a row (128 keys): residue 128 in
  // every row, but a walk of one tile: none.
  v = window_view(32, 3, 2, m);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 32 * 128, v), 0);
  v = window_view(32, 0, 0, m);
  EXPECT_EQ(v.run_residue[2], 32);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 32 * 128, v), 0);
  // Rows that are not runs: no statistics, none.
  const MaskGeometry g{512, 512, 128, 128, false, 0, 0};
  m = build_block_mask(g, {{0, 2}, {1}, {2}, {3}});
  v = host_mask_view(m);
  EXPECT_EQ(v.run_keys_min, 0);
  EXPECT_EQ(forward_runs_narrow_keys(128, false, 512, v), 0);
}

// Items of two heights for the three-warpgroup forward (192-row tall items, 128-row short ones).
TEST(Dense, ForwardShortItems) {
  // 4K at head dim 64, 16 heads on 132 CTAs: 22 tall items a head (the last of 64 rows) take 3
  // rounds; 16 tall and 8 short a head take 2 + 0.78.
  ForwardShortItems p = forward_short_items(4096, 16, 132, 3.0);
  EXPECT_EQ(p.tall, 16);
  EXPECT_EQ(p.shorts, 8);
  EXPECT_NEAR(p.makespan, 2.78, 1e-12);
  EXPECT_EQ(p.tall * 192 + p.shorts * 128, 4096);
  // Short items costing as much as tall ones never pay; nor do they against a baseline already
  // within 2% of what they reach (8K: the tail split's 5.32 rounds).
  EXPECT_EQ(forward_short_items(4096, 16, 132, 3.0, 192, 128, 1.0).shorts, 0);
  p = forward_short_items(8192, 16, 132, 5.32);
  EXPECT_EQ(p.shorts, 0);
  EXPECT_EQ(p.tall, 43);
  EXPECT_DOUBLE_EQ(p.makespan, 5.32);
  // Whole rounds already: 3072 rows, 11 heads: 176 tall items on 88 CTAs, 2 rounds.
  EXPECT_EQ(forward_short_items(3072, 11, 88, 2.0).shorts, 0);
  // More than 16 rounds: not planned.
  EXPECT_EQ(forward_short_items(65536, 16, 132, 42.0).shorts, 0);
  // Bad arguments: the one-height cut.
  EXPECT_EQ(forward_short_items(0, 16, 132, 1.0).shorts, 0);
  EXPECT_EQ(forward_short_items(4096, 0, 132, 1.0).shorts, 0);
  EXPECT_EQ(forward_short_items(4096, 16, 0, 1.0).shorts, 0);
  EXPECT_EQ(forward_short_items(4096, 16, 132, 3.0, 128, 128).shorts, 0);
  // Whatever is taken covers every row, beats the baseline by 2% and is the list schedule's.
  for (int64_t nq : {100, 1000, 2048, 4096, 6000, 8192})
    for (int64_t pairs : {1, 4, 16, 48})
      for (int64_t ctas : {5, 66, 132}) {
        const int64_t whole = (nq + 191) / 192;
        const double base = static_cast<double>((whole * pairs + ctas - 1) / ctas);
        const ForwardShortItems q = forward_short_items(nq, pairs, ctas, base);
        if (q.shorts == 0) {
          EXPECT_EQ(q.tall, whole);
          continue;
        }
        EXPECT_LT(q.tall, whole);
        EXPECT_GE(q.tall * 192 + q.shorts * 128, nq);
        EXPECT_LT(q.tall * 192 + (q.shorts - 1) * 128, nq);  // no empty short item
        EXPECT_LE(q.makespan, 0.98 * base);
        EXPECT_DOUBLE_EQ(q.makespan, list_makespan(q.tall * pairs, q.shorts * pairs, ctas,
                                                   kForwardShortItemCost));
      }
}

// Staggered walks of the key-stationary backward (a measurement mode now): where each CTA starts
// (every start inside the walk, neighbouring key blocks apart, spread over the items).
TEST(Dense, BackwardStaggeredWalks) {
  EXPECT_EQ(backward_walk_start(0, 256, 512), 0);
  EXPECT_EQ(backward_walk_start(1, 256, 512), 2);
  EXPECT_EQ(backward_walk_start(255, 256, 512), 510);
  EXPECT_EQ(backward_walk_start(3, 8, 4), 1);  // fewer items than key blocks: starts repeat
  EXPECT_EQ(backward_walk_start(5, 8, 0), 0);  // no items
  EXPECT_EQ(backward_walk_start(5, 0, 7), 0);
  for (int64_t nkb : {1, 7, 64, 300})
    for (int64_t n : {1, 5, 64, 1000}) {
      int64_t prev = -1;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t s = backward_walk_start(kb, nkb, n);
        ASSERT_GE(s, 0);
        ASSERT_LT(s, n);
        ASSERT_GE(s, prev);  // in key-block order
        if (n >= nkb) ASSERT_GT(s, prev);  // distinct when there are enough items
        prev = s;
      }
    }
}

// Phased walks over scattered rows: which calls take them, and where each work starts (inside
// its walk; the works of one round of the grid spread over the walk in work order; the same
// phase one grid later).
// Which Hopper backward calls add dK and dV by TMA reduces: every head-dim-64 call; at head dim
// 128 works under 112 tiles, but scattered rows under 32.
TEST(Dense, BackwardDkvReduce) {
  EXPECT_TRUE(backward_dkv_reduce(64, 1024.0, 1.0));
  EXPECT_TRUE(backward_dkv_reduce(64, 20.0, 0.1));
  EXPECT_TRUE(backward_dkv_reduce(128, 64.0, 1.0));    // dense 4K
  EXPECT_TRUE(backward_dkv_reduce(128, 33.0, 1.0));    // causal 4K
  EXPECT_TRUE(backward_dkv_reduce(128, 20.0, 1.0));    // local_window 2%
  EXPECT_TRUE(backward_dkv_reduce(128, 102.0, 0.1));   // random 10%
  EXPECT_TRUE(backward_dkv_reduce(128, 32.0, 0.74));
  EXPECT_FALSE(backward_dkv_reduce(128, 20.0, 0.1));   // random 2%
  EXPECT_FALSE(backward_dkv_reduce(128, 31.9, 0.74));
  EXPECT_FALSE(backward_dkv_reduce(128, 112.0, 1.0));
  EXPECT_FALSE(backward_dkv_reduce(128, 129.0, 1.0));  // causal 16K
  EXPECT_FALSE(backward_dkv_reduce(128, 1024.0, 1.0)); // dense 64K
  EXPECT_FALSE(backward_dkv_reduce(32, 20.0, 0.1));    // no Hopper backward there
  EXPECT_FALSE(backward_dkv_reduce(256, 20.0, 0.1));
}

TEST(Dense, BackwardPhasedWalks) {
  EXPECT_TRUE(backward_phased_walks(128, false, 0.1));
  EXPECT_TRUE(backward_phased_walks(128, true, 0.74));
  EXPECT_FALSE(backward_phased_walks(128, false, 0.75));  // dense, causal and windowed rows walk
  EXPECT_FALSE(backward_phased_walks(128, false, 1.0));   // together at head dim 128
  EXPECT_FALSE(backward_phased_walks(128, true, 1.0));
  EXPECT_TRUE(backward_phased_walks(64, false, 0.1));
  EXPECT_TRUE(backward_phased_walks(64, true, 0.1));
  EXPECT_TRUE(backward_phased_walks(64, false, 1.0));     // non-causal at 64: any rows
  EXPECT_TRUE(backward_phased_walks(64, false, 0.75));
  EXPECT_FALSE(backward_phased_walks(64, true, 1.0));     // causal walks start apart already
  EXPECT_FALSE(backward_phased_walks(64, true, 0.75));
  EXPECT_FALSE(backward_phased_walks(96, false, 0.1));    // no Hopper backward at other head dims
  EXPECT_EQ(backward_phase_start<int64_t>(0, 132, 52), 0);
  EXPECT_EQ(backward_phase_start<int64_t>(66, 132, 52), 26);
  EXPECT_EQ(backward_phase_start<int64_t>(131, 132, 52), 51);
  EXPECT_EQ(backward_phase_start<int64_t>(132 + 66, 132, 52), 26);
  EXPECT_EQ(backward_phase_start<unsigned>(66, 132, 52), 26u);
  EXPECT_EQ(backward_phase_start<int64_t>(5, 132, 0), 0);   // no items
  EXPECT_EQ(backward_phase_start<int64_t>(5, 0, 10), 0);    // no grid
  for (int64_t ctas : {1, 3, 132})
    for (int64_t n : {1, 7, 52, 1024}) {
      int64_t prev = -1;
      for (int64_t w = 0; w < 3 * ctas; ++w) {
        const int64_t s = backward_phase_start(w, ctas, n);
        ASSERT_GE(s, 0);
        ASSERT_LT(s, n);
        if (w % ctas == 0) prev = -1;
        ASSERT_GE(s, prev);  // in work order within a round of the grid
        prev = s;
        ASSERT_EQ(s, backward_phase_start(w % ctas, ctas, n));
      }
    }
}

// The backward's tiles by position over masks of runs (80 queries at head dim 128, 128 at 64):
// contiguous transposed rows of at least 1024 queries on average.
TEST(Dense, BackwardRunsByPosition) {
  EXPECT_TRUE(backward_runs_by_position(128, true, 1024.0));
  EXPECT_TRUE(backward_runs_by_position(128, true, 1310.72));  // local_window 2% at 64K
  EXPECT_TRUE(backward_runs_by_position(128, true, 6553.6));
  EXPECT_FALSE(backward_runs_by_position(128, true, 1023.0));  // short runs: up to 79 wasted queries
  EXPECT_FALSE(backward_runs_by_position(128, false, 1e9));    // scattered rows
  EXPECT_TRUE(backward_runs_by_position(64, true, 1310.72));
  EXPECT_FALSE(backward_runs_by_position(64, true, 1023.0));
  EXPECT_FALSE(backward_runs_by_position(64, false, 1e9));
  EXPECT_FALSE(backward_runs_by_position(256, true, 1e9));  // no such tiles at head dim 256
}

// Which query tiles the Hopper backward walks: by position where the mask is complete or of
// runs (80 queries at head dim 128, 128 at 64), the 128-query tiles over other masks' lists at
// head dim 64 when their query blocks are 128-multiples, else the 64-query tiles.
TEST(Dense, BackwardTilesRule) {
  using enum BackwardTiles;
  EXPECT_EQ(backward_tiles(128, true, false, 128), kPosition80);
  EXPECT_EQ(backward_tiles(128, false, true, 256), kPosition80);
  EXPECT_EQ(backward_tiles(128, false, false, 128), kListed64);  // random masks
  EXPECT_EQ(backward_tiles(64, true, false, 64), kPosition128);  // by position: any blocks
  EXPECT_EQ(backward_tiles(64, false, true, 128), kPosition128);
  EXPECT_EQ(backward_tiles(64, false, false, 128), kListed128);
  EXPECT_EQ(backward_tiles(64, false, false, 256), kListed128);
  EXPECT_EQ(backward_tiles(64, false, false, 64), kListed64);  // 64-query blocks
  EXPECT_EQ(backward_tiles(64, false, false, 192), kListed64);
  EXPECT_EQ(backward_tiles(32, true, false, 128), kListed64);  // no taller tiles there
  EXPECT_EQ(backward_tiles(256, true, false, 128), kListed64);
}

// The first query tile a causal key block sees, against a brute-force scan of every tile's
// queries.
TEST(Dense, BackwardFirstTile) {
  EXPECT_EQ(backward_first_tile<int64_t>(0, 0, 4096, 80), 0);
  EXPECT_EQ(backward_first_tile<int64_t>(128, 0, 4096, 80), 1);   // query 128 in tile 1
  EXPECT_EQ(backward_first_tile<int64_t>(160, 0, 4096, 80), 2);   // tile 2 starts at 160
  EXPECT_EQ(backward_first_tile<int64_t>(4096, 0, 4096, 80), 52); // no query sees it
  EXPECT_EQ(backward_first_tile<int64_t>(256, 300, 4096, 80), 0); // diag past the block
  for (int64_t nq : {1, 79, 80, 81, 250, 1000})
    for (int64_t tile : {64, 80})
      for (int64_t diag : {-200, -1, 0, 5, 130})
        for (int64_t k0 = 0; k0 < 1400; k0 += 37) {
          const int64_t nt = (nq + tile - 1) / tile;
          int64_t want = nt;
          for (int64_t t = 0; t < nt && want == nt; ++t)
            for (int64_t q = t * tile; q < std::min(nq, (t + 1) * tile); ++q)
              if (k0 - q <= diag) {
                want = t;
                break;
              }
          ASSERT_EQ(backward_first_tile(k0, diag, nq, tile), want)
              << "k0 " << k0 << " diag " << diag << " nq " << nq << " tile " << tile;
        }
}

// The query parts of the key-stationary backward on a 50 MB L2 (half: 25 MB per part).
TEST(Dense, BackwardQueryParts) {
  const int64_t l2 = 50 << 20;
  // Contiguous rows keep one part at any length.
  EXPECT_EQ(backward_query_parts(65536, 128, 1024, 1.0, l2), 1);
  EXPECT_EQ(backward_query_parts(65536, 128, 1024, 0.75, l2), 1);
  // Scattered rows at 64K, d=128 (64 MB per head): 3 parts while each keeps >= 24 tiles.
  EXPECT_EQ(backward_query_parts(65536, 128, 512, 0.5, l2), 3);
  EXPECT_EQ(backward_query_parts(65536, 128, 102, 0.1, l2), 3);
  EXPECT_EQ(backward_query_parts(65536, 128, 51, 0.05, l2), 2);   // 3 parts would be 17 tiles
  EXPECT_EQ(backward_query_parts(65536, 128, 20, 0.02, l2), 1);   // too few tiles to cut
  // 32 MB per head: 2 parts; 16 MB fits: 1; very long sequences stop at 4.
  EXPECT_EQ(backward_query_parts(32768, 128, 200, 0.1, l2), 2);
  EXPECT_EQ(backward_query_parts(16384, 128, 200, 0.1, l2), 1);
  EXPECT_EQ(backward_query_parts(1 << 20, 128, 4096, 0.1, l2), 4);
  // Unknown L2: one part.
  EXPECT_EQ(backward_query_parts(65536, 128, 512, 0.1, 0), 1);
  // Phased walks: a part's range may be 4x half of the L2 (100 MB here).
  EXPECT_EQ(backward_query_parts(65536, 128, 512, 0.5, l2, true), 1);
  EXPECT_EQ(backward_query_parts(65536, 128, 102, 0.1, l2, true), 1);
  EXPECT_EQ(backward_query_parts(131072, 128, 204, 0.1, l2, true), 2);
  EXPECT_EQ(backward_query_parts(262144, 128, 408, 0.1, l2, true), 3);
  EXPECT_EQ(backward_query_parts(262144, 128, 40, 0.01, l2, true), 1);  // too few tiles to cut
  EXPECT_EQ(backward_query_parts(65536, 128, 512, 1.0, l2, true), 1);
  // Head dim 64 (32 MB per head at 64K): the phased window is not a quarter, and a part keeps
  // at least 48 tiles.
  EXPECT_EQ(backward_query_parts(65536, 64, 102, 0.1, l2, true), 2);
  EXPECT_EQ(backward_query_parts(65536, 64, 256, 0.25, l2, true), 2);
  EXPECT_EQ(backward_query_parts(65536, 64, 51, 0.05, l2, true), 1);  // 25 tiles a part
  EXPECT_EQ(backward_query_parts(65536, 64, 20, 0.02, l2, true), 1);
  EXPECT_EQ(backward_query_parts(32768, 64, 102, 0.1, l2, true), 1);  // 16 MB fits
  EXPECT_EQ(backward_query_parts(65536, 64, 1024, 1.0, l2, true), 1);  // contiguous rows
}

TEST(Dense, EmptyRowsGiveZeroAndMinusInfNeverNaN) {
  auto be = make_cpu_backend();
  const int64_t N = 40, D = 8;
  Tensor q = Tensor::randn(DType::F32, 1, N, 1, D, 41);
  Tensor k = Tensor::randn(DType::F32, 1, N, 1, D, 42);
  Tensor v = Tensor::randn(DType::F32, 1, N, 1, D, 43);
  // Query block 1 (rows 16..31) sees nothing; block 0 sees block 2 only.
  MaskGeometry g{N, N, 16, 16, false, 0, 0};
  BlockMask m = build_block_mask(g, {{2}, {}, {0, 1, 2}});
  Tensor o(DType::F32, 1, N, 1, D), lse(DType::F32, 1, N, 1, 1);
  o.fill(7.0);
  AttentionSpec spec;
  masked_forward(*be, spec, m, q.view(), k.view(), v.view(), o.view(), lse.view());
  for (int64_t i = 16; i < 32; ++i) {
    EXPECT_TRUE(std::isinf(lse.at(0, i, 0, 0)) && lse.at(0, i, 0, 0) < 0);
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(o.at(0, i, 0, d), 0.0);
  }
  auto ref = naive_attention(q.view(), k.view(), v.view(), [](int64_t, int64_t, int64_t i,
                                                               int64_t j) {
    return (i < 16 && j >= 32) || (i >= 32);
  });
  auto st = compare(o.view(), ref.o.view());
  EXPECT_TRUE(st.finite);
  EXPECT_LT(st.max_abs, 1e-5);
  // Backward over an empty row contributes nothing and stays finite.
  Tensor d_o = Tensor::randn(DType::F32, 1, N, 1, D, 44);
  Tensor dq(DType::F32, 1, N, 1, D), dk(DType::F32, 1, N, 1, D), dv(DType::F32, 1, N, 1, D);
  masked_backward(*be, spec, m, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(),
                  dq.view(), dk.view(), dv.view());
  EXPECT_TRUE(compare(dq.view(), dq.view()).finite);
  for (int64_t i = 16; i < 32; ++i)
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(dq.at(0, i, 0, d), 0.0);
}

// AttnBwdParams::accumulate false: gradients that start at 7 are overwritten, bit for bit the
// gradients of the call adding into zeros, in every dtype (an empty query block included); and
// the dense variant's masked_backward overwrites whatever its gradients held.
TEST(Dense, BackwardOverwritesGradients) {
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 40, H = 2, D = 8;
  MaskGeometry g{N, N, 16, 16, false, 0, 0};
  const BlockMask m = build_block_mask(g, {{2}, {}, {0, 1, 2}});
  AttentionSpec spec;
  for (DType dt : {DType::F64, DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const DType st = dt == DType::F64 ? DType::F64 : DType::F32;
    Tensor q = Tensor::randn(dt, B, N, H, D, 61), k = Tensor::randn(dt, B, N, H, D, 62),
           v = Tensor::randn(dt, B, N, H, D, 63), d_o = Tensor::randn(dt, B, N, H, D, 64);
    Tensor o(dt, B, N, H, D), lse(st, B, N, H, 1);
    masked_forward(*be, spec, m, q.view(), k.view(), v.view(), o.view(), lse.view());
    const BlockMask mt = m.transpose();
    Tensor grads[3][3];  // [zeros and add, 7 and write, 7 and masked_backward][dq, dk, dv]
    for (int mode = 0; mode < 3; ++mode) {
      for (Tensor& t : grads[mode]) {
        t = Tensor(dt, B, N, H, D);
        t.fill(mode == 0 ? 0.0 : 7.0);
      }
      if (mode == 2) {
        masked_backward(*be, spec, m, q.view(), k.view(), v.view(), o.view(), lse.view(),
                        d_o.view(), grads[2][0].view(), grads[2][1].view(), grads[2][2].view());
        continue;
      }
      AttnBwdParams p = make_bwd_params({q.view(), k.view(), v.view(), o.view(), lse.view()},
                                        {d_o.view(), grads[mode][0].view(), grads[mode][1].view(),
                                         grads[mode][2].view()},
                                        host_mask_view(m), host_mask_view(mt), {});
      p.accumulate = mode == 0;
      be->attention_backward(p);
    }
    for (int i = 0; i < 3; ++i) {
      const ErrorStats z = compare(Tensor(dt, B, N, H, D).view(), grads[0][i].view());
      EXPECT_GT(z.max_ref, 0.01) << "gradient " << i << ": zeros prove nothing";
      EXPECT_EQ(compare(grads[1][i].view(), grads[0][i].view()).max_abs, 0.0) << "gradient " << i;
      EXPECT_EQ(compare(grads[2][i].view(), grads[0][i].view()).max_abs, 0.0) << "gradient " << i;
    }
  }
}

TEST(Dense, GradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend(1);
  for (bool causal : {false, true}) {
    const int64_t B = 1, N = 19, H = 2, D = 4;
    Tensor q = Tensor::randn(DType::F64, B, N, H, D, 51);
    Tensor k = Tensor::randn(DType::F64, B, N, H, D, 52);
    Tensor v = Tensor::randn(DType::F64, B, N, H, D, 53);
    Tensor w = Tensor::randn(DType::F64, B, N, H, D, 54);
    AttentionSpec spec;
    spec.causal = causal;
    spec.block_size = 8;
    auto att = make_dense_attention(spec);
    Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
    auto loss = [&] {
      att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
      return testing::dot_all(o.view(), w.view());
    };
    loss();
    Tensor dq(DType::F64, B, N, H, D), dk(DType::F64, B, N, H, D), dv(DType::F64, B, N, H, D);
    att->backward(*be, q.view(), k.view(), v.view(), o.view(), lse.view(), w.view(), dq.view(),
                  dk.view(), dv.view());
    for (auto [t, g] : {std::pair{&q, &dq}, std::pair{&k, &dk}, std::pair{&v, &dv}})
      for (int64_t n : {0L, 7L, 18L})
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; d += 3) {
            const double fd = testing::finite_difference(*t, 0, n, h, d, loss);
            EXPECT_NEAR(g->at(0, n, h, d), fd, 1e-7) << "causal " << causal << " n " << n;
          }
  }
}

TEST(Dense, RejectsMismatchedShapesNamingTheArgument) {
  auto be = make_cpu_backend();
  Tensor q = Tensor::randn(DType::F32, 1, 8, 1, 8, 1);
  Tensor k = Tensor::randn(DType::F32, 1, 8, 1, 4, 2);
  Tensor o(DType::F32, 1, 8, 1, 8), lse(DType::F32, 1, 8, 1, 1);
  AttentionSpec spec;
  try {
    make_dense_attention(spec)->forward(*be, q.view(), k.view(), k.view(), o.view(), lse.view());
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace longattn

namespace longattn {
namespace {

// One variant object reused across lengths and backends: the prepared mask follows both.
TEST(Dense, ReusedVariantFollowsLengthAndBackend) {
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = 16;
  auto att = make_dense_attention(spec);
  for (int64_t N : {40L, 24L, 40L}) {
    auto be = make_cpu_backend();
    Tensor q = Tensor::randn(DType::F64, 1, N, 2, 8, 71 + N);
    Tensor k = Tensor::randn(DType::F64, 1, N, 2, 8, 72 + N);
    Tensor v = Tensor::randn(DType::F64, 1, N, 2, 8, 73 + N);
    Tensor o(DType::F64, 1, N, 2, 8), lse(DType::F64, 1, N, 2, 1);
    att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
    auto ref = testing::naive_attention(
        q.view(), k.view(), v.view(), [](int64_t, int64_t, int64_t i, int64_t j) { return j <= i; });
    EXPECT_LT(compare(o.view(), ref.o.view()).max_abs, 1e-12) << "N " << N;
  }
}

}  // namespace
}  // namespace longattn

namespace longattn {
namespace {

// A mask is complete for a call when every row lists, from key block 0 on, every key block the
// call lets it see; the largest causal diagonal for which that holds.
TEST(Dense, MaskCompleteDiag) {
  // Every row lists every key block: complete for any call, causal or not.
  const MaskGeometry full{300, 500, 128, 128, false, 0, 0};
  const BlockMaskView fv = host_mask_view(dense_block_mask(full));
  EXPECT_EQ(fv.complete_diag, kMaskCompleteAll);
  EXPECT_TRUE(mask_complete_for(fv, false, 0));
  EXPECT_TRUE(mask_complete_for(fv, true, 1 << 20));
  // The causal dense mask (row r lists blocks 0..r): complete up to diagonal 0, not beyond,
  // and never for a call without causality.
  const MaskGeometry causal{512, 512, 128, 128, true, 0, 0};
  const BlockMaskView cv = host_mask_view(dense_block_mask(causal));
  EXPECT_EQ(cv.complete_diag, 0);
  EXPECT_TRUE(mask_complete_for(cv, true, 0));
  EXPECT_TRUE(mask_complete_for(cv, true, -64));
  EXPECT_FALSE(mask_complete_for(cv, true, 1));
  EXPECT_FALSE(mask_complete_for(cv, false, 0));
  // Query blocks of 256 over key blocks of 128, and a query offset of 100: row r lists blocks
  // 0..r + 1 (its last query 128 (r + 1) + 99 sees them), so the mask stays complete up to 128.
  EXPECT_EQ(host_mask_view(dense_block_mask({512, 640, 256, 128, true, 0, 0})).complete_diag, 0);
  EXPECT_EQ(mask_complete_diag(dense_block_mask({512, 640, 128, 128, true, 100, 0})), 128);
  // A gap (block 1 missing in row 1) or a row that does not start at block 0 makes the mask
  // complete only where those rows see nothing.
  const MaskGeometry g{256, 512, 128, 128, false, 0, 0};
  EXPECT_EQ(mask_complete_diag(build_block_mask(g, {{0, 1, 2, 3}, {0, 2, 3}})), 128 - 256);
  EXPECT_EQ(mask_complete_diag(build_block_mask(g, {{1, 2, 3}, {0, 1, 2, 3}})), -128);
  EXPECT_FALSE(mask_complete_for(host_mask_view(build_block_mask(g, {{1, 2, 3}, {0, 1, 2, 3}})),
                                 false, 0));
  // A view of unknown completeness is never complete.
  EXPECT_FALSE(mask_complete_for(BlockMaskView{}, true, 0));
  EXPECT_FALSE(mask_complete_for(BlockMaskView{}, false, 0));
}

}  // namespace
}  // namespace longattn
