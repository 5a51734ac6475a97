// Dilated attention in both modes against the independent naive implementation of
// tests/common/naive_dilated: fp64 to 1e-12 (groups: 1/G scaling and exact zeros at unselected
// rows; longnet: softmax-over-pairs weighting), fp16/bf16 within 2x a same-precision naive
// implementation, causal perturbation, strided (non-folding) inputs, gradients of both modes and
// of the exact longnet option against fp64 finite differences, and every validation rule.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <utility>

#include "attention/dilated.hpp"
#include "attention/head_groups.hpp"
#include "common/naive_dilated.hpp"
#include "common/reference.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

DilatedConfig make_cfg(DilatedMode mode, std::vector<int64_t> segs, std::vector<int64_t> rates,
                       bool exact = false) {
  DilatedConfig c;
  c.mode = mode;
  c.segment_lengths = std::move(segs);
  c.dilation_rates = std::move(rates);
  c.exact_longnet_grad = exact;
  return c;
}

AttentionSpec make_spec(const DilatedConfig& cfg, bool causal, int64_t block) {
  AttentionSpec s;
  s.variant = "dilated";
  s.dilated = cfg;
  s.causal = causal;
  s.block_size = block;
  return s;
}

const char* mode_name(DilatedMode m) { return m == DilatedMode::Groups ? "groups" : "longnet"; }

std::vector<int64_t> sizes(const std::vector<HeadRange>& g) {
  std::vector<int64_t> s;
  int64_t next = 0;
  for (const auto& r : g) {
    EXPECT_EQ(r.begin, next);  // contiguous, in order
    next = r.begin + r.count;
    s.push_back(r.count);
  }
  return s;
}

template <typename F>
void expect_invalid(F&& f, const std::string& arg) {
  try {
    f();
    FAIL() << "no error, expected one naming " << arg;
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
  }
}

TEST(HeadGroups, FirstGroupsGetTheExtraHeads) {
  EXPECT_EQ(sizes(head_groups(8, 3)), (std::vector<int64_t>{3, 3, 2}));
  EXPECT_EQ(sizes(head_groups(12, 5)), (std::vector<int64_t>{3, 3, 2, 2, 2}));
  EXPECT_EQ(sizes(head_groups(5, 3)), (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(sizes(head_groups(4, 4)), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(sizes(head_groups(7, 1)), (std::vector<int64_t>{7}));
  expect_invalid([] { head_groups(2, 3); }, "heads");
  expect_invalid([] { head_groups(2, 0); }, "groups");
}

TEST(DilatedBranches, GroupsUseOneBranchPerPairWithOffsetIModR) {
  const auto br = dilated_branches(make_cfg(DilatedMode::Groups, {16, 32, 64}, {1, 2, 4}), 8);
  ASSERT_EQ(br.size(), 3u);
  const int64_t begins[] = {0, 3, 6}, counts[] = {3, 3, 2}, offsets[] = {0, 1, 2};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(br[i].pair, i);
    EXPECT_EQ(br[i].segment, 16 << i);
    EXPECT_EQ(br[i].rate, 1 << i);
    EXPECT_EQ(br[i].offset, offsets[i]);
    EXPECT_EQ(br[i].head_begin, begins[i]);
    EXPECT_EQ(br[i].head_count, counts[i]);
  }
}

TEST(DilatedBranches, LongNetOffsetsFollowDenseToSparse) {
  // H = 8, r = 3: heads padded to 9, 3 heads per offset, the last group loses its padded head.
  const auto br = dilated_branches(make_cfg(DilatedMode::LongNet, {16, 32, 64}, {1, 2, 3}), 8);
  struct Expect {
    int pair;
    int64_t offset, begin, count;
  };
  const std::vector<Expect> want = {{0, 0, 0, 8}, {1, 0, 0, 4}, {1, 1, 4, 4},
                                    {2, 0, 0, 3}, {2, 1, 3, 3}, {2, 2, 6, 2}};
  ASSERT_EQ(br.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(br[i].pair, want[i].pair) << i;
    EXPECT_EQ(br[i].offset, want[i].offset) << i;
    EXPECT_EQ(br[i].head_begin, want[i].begin) << i;
    EXPECT_EQ(br[i].head_count, want[i].count) << i;
  }
  // More offsets than heads: one head per offset, offsets past H unused.
  const auto wide = dilated_branches(make_cfg(DilatedMode::LongNet, {32}, {1000}), 6);
  ASSERT_EQ(wide.size(), 6u);
  for (int64_t h = 0; h < 6; ++h) {
    EXPECT_EQ(wide[h].offset, h);
    EXPECT_EQ(wide[h].head_begin, h);
    EXPECT_EQ(wide[h].head_count, 1);
    EXPECT_EQ(dilated_length(32, 1000, h), 1);
  }
  EXPECT_EQ(dilated_length(4, 8, 5), 0);
  EXPECT_EQ(dilated_length(10, 3, 1), 3);  // rows 1, 4, 7
}

struct DilatedCase {
  DilatedMode mode;
  int64_t B, N, H, D;
  std::vector<int64_t> segs, rates;
  bool causal;
  int64_t block;
};

void PrintTo(const DilatedCase& c, std::ostream* os) {
  *os << mode_name(c.mode) << " B" << c.B << " N" << c.N << " H" << c.H << " D" << c.D
      << (c.causal ? " causal" : "") << " block " << c.block;
}

class DilatedVsNaive : public ::testing::TestWithParam<DilatedCase> {};

TEST_P(DilatedVsNaive, Fp64MatchesNaiveTo1e12) {
  const auto c = GetParam();
  auto be = make_cpu_backend();
  const auto cfg = make_cfg(c.mode, c.segs, c.rates);
  Tensor q = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 101 + c.N);
  Tensor k = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 102 + c.N);
  Tensor v = Tensor::randn(DType::F64, c.B, c.N, c.H, c.D, 103 + c.N);
  Tensor o(DType::F64, c.B, c.N, c.H, c.D), lse(DType::F64, c.B, c.N, c.H, 1);
  o.fill(3.0);  // every element must be written
  make_dilated_attention(make_spec(cfg, c.causal, c.block))
      ->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
  const auto ref = testing::naive_dilated(q.view(), k.view(), v.view(), cfg, c.causal);
  EXPECT_LT(compare(o.view(), ref.o.view()).max_abs, 1e-12);
  EXPECT_LT(compare(lse.view(), ref.lse.view()).max_abs, 1e-12);
  // Rows no pair selects for a head are exactly 0 with L = -inf; the others are not all zero.
  int64_t unselected = 0, selected = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t h = 0; h < c.H; ++h) {
        if (ref.lse.at(b, n, h, 0) != kNegInf) {
          ++selected;
          continue;
        }
        ++unselected;
        EXPECT_EQ(lse.at(b, n, h, 0), kNegInf);
        for (int64_t d = 0; d < c.D; ++d) ASSERT_EQ(o.at(b, n, h, d), 0.0) << n << " " << h;
      }
  EXPECT_GT(selected, 0);
  if (c.mode == DilatedMode::Groups && c.rates.back() > 1) EXPECT_GT(unselected, 0);
}

// Configs: H % G != 0, ragged block tiles, the seed's [32,32,32]/[1,100,1000] edge case, pairs
// whose offset is >= their segment (empty branches), and heads no longnet pair selects.
const std::vector<DilatedCase> kCases = {
    {DilatedMode::Groups, 1, 32, 3, 8, {8, 16, 32}, {1, 2, 4}, false, 4},
    {DilatedMode::Groups, 1, 32, 3, 8, {8, 16, 32}, {1, 2, 4}, true, 4},
    {DilatedMode::Groups, 2, 24, 5, 4, {6, 12, 24}, {1, 2, 3}, true, 3},
    {DilatedMode::Groups, 2, 48, 4, 4, {16, 48}, {3, 5}, false, 64},
    {DilatedMode::Groups, 1, 1024, 6, 4, {32, 32, 32}, {1, 100, 1000}, false, 16},
    {DilatedMode::Groups, 1, 1024, 6, 4, {32, 32, 32}, {1, 100, 1000}, true, 16},
    {DilatedMode::Groups, 1, 16, 6, 4, {8, 4, 4, 4, 4, 4}, {1, 2, 8, 8, 8, 8}, true, 2},
    {DilatedMode::LongNet, 1, 32, 3, 8, {8, 16, 32}, {1, 2, 4}, false, 4},
    {DilatedMode::LongNet, 1, 32, 3, 8, {8, 16, 32}, {1, 2, 4}, true, 4},
    {DilatedMode::LongNet, 2, 24, 5, 4, {6, 12, 24}, {1, 2, 3}, true, 3},
    {DilatedMode::LongNet, 2, 48, 4, 4, {16, 48}, {3, 5}, false, 64},
    {DilatedMode::LongNet, 1, 1024, 6, 4, {32, 32, 32}, {1, 100, 1000}, false, 16},
    {DilatedMode::LongNet, 1, 1024, 6, 4, {32, 32, 32}, {1, 100, 1000}, true, 16},
    {DilatedMode::LongNet, 1, 16, 8, 4, {4, 8}, {8, 2}, true, 2},
    {DilatedMode::LongNet, 2, 8, 6, 4, {4}, {8}, false, 4},
};
INSTANTIATE_TEST_SUITE_P(Configs, DilatedVsNaive, ::testing::ValuesIn(kCases));

TEST(Dilated, GroupsSeedEdgeCaseGivesVOverGAtSingleRowSegments) {
  // segments [32]*3, rates [1, 100, 1000]: groups 1 and 2 select only row 1 (resp. 2) of each
  // segment, so their output there is v / 3 (softmax over one key).
  auto be = make_cpu_backend();
  const int64_t N = 1024, H = 6, D = 4;
  Tensor q = Tensor::randn(DType::F64, 1, N, H, D, 7);
  Tensor k = Tensor::randn(DType::F64, 1, N, H, D, 8);
  Tensor v = Tensor::randn(DType::F64, 1, N, H, D, 9);
  Tensor o(DType::F64, 1, N, H, D), lse(DType::F64, 1, N, H, 1);
  make_dilated_attention(
      make_spec(make_cfg(DilatedMode::Groups, {32, 32, 32}, {1, 100, 1000}), false, 64))
      ->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
  for (int64_t m = 0; m < N / 32; ++m)
    for (int64_t h = 2; h < H; ++h) {
      const int64_t row = m * 32 + (h < 4 ? 1 : 2);
      for (int64_t d = 0; d < D; ++d) {
        EXPECT_NEAR(o.at(0, row, h, d), v.at(0, row, h, d) / 3.0, 1e-15);
        EXPECT_EQ(o.at(0, row + 1, h, d), 0.0);
      }
    }
}

TEST(Dilated, LowPrecisionWithinTwiceNaiveError) {
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 64, H = 4, D = 32;
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet})
    for (DType dt : {DType::F16, DType::BF16, DType::F32}) {
      const auto cfg = make_cfg(mode, {16, 32, 64}, {1, 2, 4});
      Tensor q = Tensor::randn(DType::F64, B, N, H, D, 201).to(dt);
      Tensor k = Tensor::randn(DType::F64, B, N, H, D, 202).to(dt);
      Tensor v = Tensor::randn(DType::F64, B, N, H, D, 203).to(dt);
      // The references see the same rounded inputs.
      Tensor qr = q.to(DType::F64), kr = k.to(DType::F64), vr = v.to(DType::F64);
      const auto ref = testing::naive_dilated(qr.view(), kr.view(), vr.view(), cfg, true);
      const auto naive_lp =
          testing::naive_dilated(qr.view(), kr.view(), vr.view(), cfg, true, 0.0, dt);
      Tensor o(dt, B, N, H, D), lse(DType::F32, B, N, H, 1);
      make_dilated_attention(make_spec(cfg, true, 16))
          ->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
      const double naive_err = compare(naive_lp.o.view(), ref.o.view()).max_abs;
      const double err = compare(o.view(), ref.o.view()).max_abs;
      EXPECT_LE(err, testing::tolerance_for(dt, naive_err))
          << mode_name(mode) << " " << dtype_name(dt) << " naive " << naive_err;
      EXPECT_LT(compare(lse.view(), ref.lse.view()).max_abs, dt == DType::F32 ? 1e-5 : 1e-2)
          << mode_name(mode) << " " << dtype_name(dt);
    }
}

// Groups with fp16/bf16 gradients hold each kernel call's gradients in fp32 while it runs and
// copy them out scaled (one rounding); at 2^19 rows every branch is cut into calls of
// backward_split_rows rows. Against the fp32 run on the same values (whole fp32 accumulators):
// within a few roundings of the largest value, bf16 non-causal and fp16 causal.
TEST(Dilated, HalfPrecisionGroupsGradientsInCalls) {
  auto be = make_cpu_backend();
  const int64_t N = int64_t{1} << 19, H = 2, D = 4;
  ASSERT_LT(backward_split_rows(N), N);  // cut into calls
  for (const auto& [causal, dt] : {std::pair{false, DType::BF16}, std::pair{true, DType::F16}}) {
    SCOPED_TRACE(std::string(dtype_name(dt)) + (causal ? " causal" : " full"));
    auto att = make_dilated_attention(make_spec(make_cfg(DilatedMode::Groups, {4, 8}, {1, 2}),
                                                causal, 4));
    Tensor in[4];
    for (int i = 0; i < 4; ++i) in[i] = Tensor::randn(DType::F64, 1, N, H, D, 600 + i).to(dt);
    testing::expect_half_gradients_near_fp32(*att, *be, in);
  }
}

// Longnet with fp16/bf16 tensors runs in passes over runs of rows at multiples of every
// segment length (here two passes: pass_rows N / 2), each holding its fp32 buffers for its own
// rows. A pass sees nothing outside its rows, so the whole call must give the same bits as two
// calls on the halves (each one pass), forward and backward, exact and detached weights; its
// fp32 buffers stay under what one pass over every row holds.
TEST(Dilated, HalfPrecisionLongnetInRowPasses) {
  auto be = make_cpu_backend();
  const int64_t N = int64_t{1} << 17, H = 2, D = 4, half = N / 2;
  EXPECT_EQ(longnet_pass_rows(N), int64_t{1} << 20);  // automatic: one pass at this length
  for (const auto& [exact, dt] : {std::pair{true, DType::BF16}, std::pair{false, DType::F16}}) {
    SCOPED_TRACE(std::string(dtype_name(dt)) + (exact ? " exact" : " detached"));
    auto cfg = make_cfg(DilatedMode::LongNet, {4, 8}, {1, 2});
    cfg.exact_longnet_grad = exact;
    cfg.pass_rows = half + 4;  // rounded down to a multiple of 8
    auto att = make_dilated_attention(make_spec(cfg, true, 4));
    Tensor in[4];
    for (int i = 0; i < 4; ++i) in[i] = Tensor::randn(DType::F64, 1, N, H, D, 700 + i).to(dt);
    Tensor o(dt, 1, N, H, D), lse(DType::F32, 1, N, H, 1);
    be->reset_peak();
    const size_t before = be->peak_bytes();
    att->forward(*be, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view());
    const size_t f32_tensor = static_cast<size_t>(N * H * D) * 4;
    EXPECT_LE(be->peak_bytes() - before, f32_tensor);  // one pass: acc 1, a branch's O 0.5
    Tensor g[3] = {o.clone(), o.clone(), o.clone()};
    for (Tensor& t : g) t.fill(5.0);  // overwritten
    be->reset_peak();
    att->backward(*be, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view(),
                  in[3].view(), g[0].view(), g[1].view(), g[2].view());
    EXPECT_LE(be->peak_bytes() - before, 2 * f32_tensor);  // one pass: 3 for dq, dk, dv
    Tensor ho(dt, 1, N, H, D), hl(DType::F32, 1, N, H, 1), hg[3];
    for (Tensor& t : hg) t = Tensor(dt, 1, N, H, D);
    for (int64_t r0 : {int64_t{0}, half}) {
      auto r = [&](const Tensor& t) { return t.view().rows(r0, half); };
      att->forward(*be, r(in[0]), r(in[1]), r(in[2]), r(ho), r(hl));  // N / 2 rows: one pass
      att->backward(*be, r(in[0]), r(in[1]), r(in[2]), r(ho), r(hl), r(in[3]), r(hg[0]),
                    r(hg[1]), r(hg[2]));
    }
    EXPECT_EQ(compare(o.view(), ho.view()).max_abs, 0.0);
    EXPECT_EQ(compare(lse.view(), hl.view()).max_abs, 0.0);
    for (int i = 0; i < 3; ++i) {
      EXPECT_GT(compare(g[i].view(), Tensor(DType::F64, 1, N, H, D).view()).max_abs, 0.1);
      EXPECT_EQ(compare(g[i].view(), hg[i].view()).max_abs, 0.0) << "gradient " << "qkv"[i];
    }
  }
}

TEST(Dilated, CausalOutputIgnoresFutureKeys) {
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 64, H = 3, D = 8, cut = 37;
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet}) {
    auto att = make_dilated_attention(make_spec(make_cfg(mode, {8, 32, 64}, {1, 2, 3}), true, 8));
    Tensor q = Tensor::randn(DType::F64, B, N, H, D, 301);
    Tensor k = Tensor::randn(DType::F64, B, N, H, D, 302);
    Tensor v = Tensor::randn(DType::F64, B, N, H, D, 303);
    Tensor o1(DType::F64, B, N, H, D), o2(DType::F64, B, N, H, D), l(DType::F64, B, N, H, 1);
    att->forward(*be, q.view(), k.view(), v.view(), o1.view(), l.view());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = cut; n < N; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D; ++d) {
            k.set(b, n, h, d, 50.0 * (d + 1));
            v.set(b, n, h, d, -40.0);
          }
    att->forward(*be, q.view(), k.view(), v.view(), o2.view(), l.view());
    EXPECT_EQ(compare(o1.view().rows(0, cut), o2.view().rows(0, cut)).max_abs, 0.0)
        << mode_name(mode);
    EXPECT_GT(compare(o1.view().rows(cut, N - cut), o2.view().rows(cut, N - cut)).max_abs, 1e-3)
        << mode_name(mode);
  }
}

// Views whose batches do not fold into segments (batch stride != N rows) take the per-batch
// path and must give bit-identical results, forward and backward. The groups forward on
// folding inputs allocates nothing: every branch is a strided view, no gather copies.
TEST(Dilated, StridedInputsMatchContiguousAndGroupsForwardAllocatesNothing) {
  auto be = make_cpu_backend();
  const int64_t B = 3, N = 32, H = 3, D = 4;
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet}) {
    auto att = make_dilated_attention(make_spec(make_cfg(mode, {8, 16}, {1, 2}), true, 4));
    Tensor big[3] = {Tensor::randn(DType::F64, B, 2 * N, H, D, 401),
                     Tensor::randn(DType::F64, B, 2 * N, H, D, 402),
                     Tensor::randn(DType::F64, B, 2 * N, H, D, 403)};
    Tensor dense[3];
    for (int i = 0; i < 3; ++i) {
      dense[i] = Tensor(DType::F64, B, N, H, D);
      dense[i].copy_from(big[i].view().rows(5, N));
    }
    auto strided = [&](int i) { return big[i].view().rows(5, N); };
    Tensor o1(DType::F64, B, N, H, D), l1(DType::F64, B, N, H, 1);
    Tensor o2(DType::F64, B, 2 * N, H, D), l2(DType::F64, B, N, H, 1);
    be->reset_peak();
    const size_t before = be->peak_bytes();
    att->forward(*be, dense[0].view(), dense[1].view(), dense[2].view(), o1.view(), l1.view());
    if (mode == DilatedMode::Groups) EXPECT_EQ(be->peak_bytes(), before);
    const TensorView o2v = o2.view().rows(N, N);
    att->forward(*be, strided(0), strided(1), strided(2), o2v, l2.view());
    EXPECT_EQ(compare(o2v, o1.view()).max_abs, 0.0) << mode_name(mode);
    EXPECT_EQ(compare(l2.view(), l1.view()).max_abs, 0.0) << mode_name(mode);

    Tensor w = Tensor::randn(DType::F64, B, N, H, D, 404);
    Tensor g1[3], g2[3];
    for (int i = 0; i < 3; ++i) {
      g1[i] = Tensor(DType::F64, B, N, H, D);
      g2[i] = Tensor(DType::F64, B, 2 * N, H, D);
    }
    att->backward(*be, dense[0].view(), dense[1].view(), dense[2].view(), o1.view(), l1.view(),
                  w.view(), g1[0].view(), g1[1].view(), g1[2].view());
    att->backward(*be, strided(0), strided(1), strided(2), o2v, l2.view(), w.view(),
                  g2[0].view().rows(3, N), g2[1].view().rows(3, N), g2[2].view().rows(3, N));
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(compare(g2[i].view().rows(3, N), g1[i].view()).max_abs, 0.0) << mode_name(mode);
  }
}

struct GradCase {
  DilatedMode mode;
  bool causal;
  bool exact;
};

// Loss = sum(w * o). Groups and exact longnet: finite differences of the forward itself.
// Detached longnet: finite differences of sum(w * sum_i c_i O_i(q, k, v)) with the pair weights
// c_i = exp(L_i - L) frozen at the evaluation point (torchscale detaches them).
TEST(Dilated, GradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend(1);
  const int64_t B = 2, N = 16, H = 3, D = 4;
  for (const GradCase gc : {GradCase{DilatedMode::Groups, false, false},
                            GradCase{DilatedMode::Groups, true, false},
                            GradCase{DilatedMode::LongNet, false, false},
                            GradCase{DilatedMode::LongNet, true, false},
                            GradCase{DilatedMode::LongNet, false, true},
                            GradCase{DilatedMode::LongNet, true, true}}) {
    const auto cfg = make_cfg(gc.mode, {4, 8, 16}, {1, 2, 4}, gc.exact);
    auto att = make_dilated_attention(make_spec(cfg, gc.causal, 4));
    Tensor q = Tensor::randn(DType::F64, B, N, H, D, 501);
    Tensor k = Tensor::randn(DType::F64, B, N, H, D, 502);
    Tensor v = Tensor::randn(DType::F64, B, N, H, D, 503);
    Tensor w = Tensor::randn(DType::F64, B, N, H, D, 504);
    Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
    att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
    Tensor dq(DType::F64, B, N, H, D), dk(DType::F64, B, N, H, D), dv(DType::F64, B, N, H, D);
    dq.fill(9.0);  // gradients are overwritten, not accumulated
    att->backward(*be, q.view(), k.view(), v.view(), o.view(), lse.view(), w.view(), dq.view(),
                  dk.view(), dv.view());

    std::function<double()> loss;
    Tensor o_eval(DType::F64, B, N, H, D), l_eval(DType::F64, B, N, H, 1);
    const bool detached = gc.mode == DilatedMode::LongNet && !gc.exact;
    std::vector<Tensor> frozen;  // c_i per (b, n, h)
    if (detached) {
      const auto pairs = testing::naive_dilated_pairs(q.view(), k.view(), v.view(), cfg, gc.causal);
      for (const auto& p : pairs) {
        Tensor c(DType::F64, B, N, H, 1);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t h = 0; h < H; ++h)
              c.set(b, n, h, 0, std::exp(p.lse.at(b, n, h, 0) - lse.at(b, n, h, 0)));
        frozen.push_back(std::move(c));
      }
      loss = [&] {
        const auto pairs =
            testing::naive_dilated_pairs(q.view(), k.view(), v.view(), cfg, gc.causal);
        double s = 0.0;
        for (size_t i = 0; i < pairs.size(); ++i)
          for (int64_t b = 0; b < B; ++b)
            for (int64_t n = 0; n < N; ++n)
              for (int64_t h = 0; h < H; ++h)
                for (int64_t d = 0; d < D; ++d)
                  s += w.at(b, n, h, d) * frozen[i].at(b, n, h, 0) * pairs[i].o.at(b, n, h, d);
        return s;
      };
    } else {
      loss = [&] {
        att->forward(*be, q.view(), k.view(), v.view(), o_eval.view(), l_eval.view());
        return testing::dot_all(o_eval.view(), w.view());
      };
    }
    double max_err = 0.0, max_grad = 0.0;
    for (auto [t, g] : {std::pair{&q, &dq}, std::pair{&k, &dk}, std::pair{&v, &dv}})
      for (int64_t b = 0; b < B; ++b)
        for (int64_t n = 0; n < N; n += (b == 0 ? 1 : 5))
          for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; d += 2) {
              const double fd = testing::finite_difference(*t, b, n, h, d, loss);
              max_err = std::max(max_err, std::fabs(g->at(b, n, h, d) - fd));
              max_grad = std::max(max_grad, std::fabs(fd));
            }
    EXPECT_LT(max_err, 1e-7) << mode_name(gc.mode) << " causal " << gc.causal << " exact "
                             << gc.exact;
    EXPECT_GT(max_grad, 1e-2);
  }
}

TEST(Dilated, ExactAndDetachedLongNetGradientsDiffer) {
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 16, H = 2, D = 4;
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 601);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 602);
  Tensor v = Tensor::randn(DType::F64, B, N, H, D, 603);
  Tensor w = Tensor::randn(DType::F64, B, N, H, D, 604);
  Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
  Tensor g[2][3];
  for (int exact = 0; exact < 2; ++exact) {
    auto att = make_dilated_attention(
        make_spec(make_cfg(DilatedMode::LongNet, {8, 16}, {1, 2}, exact == 1), false, 8));
    att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
    for (auto& t : g[exact]) t = Tensor(DType::F64, B, N, H, D);
    att->backward(*be, q.view(), k.view(), v.view(), o.view(), lse.view(), w.view(),
                  g[exact][0].view(), g[exact][1].view(), g[exact][2].view());
  }
  // The pair weights depend on q and k only: dq and dk differ, dv is the same function.
  EXPECT_GT(compare(g[0][0].view(), g[1][0].view()).max_abs, 1e-4);
  EXPECT_GT(compare(g[0][1].view(), g[1][1].view()).max_abs, 1e-4);
  EXPECT_LT(compare(g[0][2].view(), g[1][2].view()).max_abs, 1e-14);
}

TEST(Dilated, LowPrecisionGradientsStayCloseToFp64) {
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 32, H = 2, D = 16;
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet}) {
    auto att = make_dilated_attention(make_spec(make_cfg(mode, {8, 32}, {1, 2}), true, 8));
    Tensor x[4];
    for (int i = 0; i < 4; ++i)
      x[i] = Tensor::randn(DType::F64, B, N, H, D, 701 + i).to(DType::BF16);
    auto grads = [&](DType dt) {
      Tensor in[4];
      for (int i = 0; i < 4; ++i) in[i] = x[i].to(dt);
      Tensor o(dt, B, N, H, D), lse(DType::F32, B, N, H, 1);
      att->forward(*be, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view());
      std::vector<Tensor> g(3);
      for (auto& t : g) t = Tensor(dt, B, N, H, D);
      att->backward(*be, in[0].view(), in[1].view(), in[2].view(), o.view(), lse.view(),
                    in[3].view(), g[0].view(), g[1].view(), g[2].view());
      return g;
    };
    const auto ref = grads(DType::F64), low = grads(DType::BF16);
    for (int i = 0; i < 3; ++i) {
      const auto st = compare(low[i].view(), ref[i].view());
      EXPECT_TRUE(st.finite);
      EXPECT_LT(st.rel_l2, 3e-2) << mode_name(mode) << " grad " << i;
    }
  }
}

TEST(Dilated, FlopsCountEveryBranchAndDensityIsTheFraction) {
  const Shape s{2, 64, 4, 8};
  const auto cfg = make_cfg(DilatedMode::Groups, {16, 64}, {1, 4});
  auto att = make_dilated_attention(make_spec(cfg, false, 8));
  // Group 0: 2 heads, 4 segments of 16 rows; group 1: 2 heads, 1 segment, offset 1, 16 rows.
  const double want = 4.0 * 8 * 2 * (2 * 4 * 16.0 * 16.0 + 2 * 1 * 16.0 * 16.0);
  EXPECT_DOUBLE_EQ(att->flops(s), want);
  EXPECT_DOUBLE_EQ(att->density(s), want / (4.0 * 2 * 4 * 64 * 64 * 8));
  auto causal = make_dilated_attention(make_spec(cfg, true, 8));
  EXPECT_DOUBLE_EQ(causal->flops(s), 4.0 * 8 * 2 * (2 * 4 + 2) * (16.0 * 17.0 / 2));
}

TEST(Dilated, ValidationNamesTheArgumentBeforeAnyWork) {
  auto bad = [](DilatedConfig cfg) {
    return [cfg] { make_dilated_attention(make_spec(cfg, false, 64)); };
  };
  expect_invalid(bad(make_cfg(DilatedMode::Groups, {}, {})), "segment_lengths");
  expect_invalid(bad(make_cfg(DilatedMode::Groups, {8}, {})), "dilation_rates");
  expect_invalid(bad(make_cfg(DilatedMode::Groups, {8, 16}, {1})), "dilation_rates");
  expect_invalid(bad(make_cfg(DilatedMode::Groups, {8, 0}, {1, 2})), "segment_lengths[1]");
  expect_invalid(bad(make_cfg(DilatedMode::LongNet, {8, 16}, {-1, 2})), "dilation_rates[0]");
  DilatedConfig negative_pass = make_cfg(DilatedMode::LongNet, {8, 16}, {1, 2});
  negative_pass.pass_rows = -1;
  expect_invalid(bad(negative_pass), "pass_rows");
  expect_invalid(
      [] {
        make_dilated_attention(make_spec(make_cfg(DilatedMode::Groups, {8}, {1}), false, 0));
      },
      "block_size");

  auto be = make_cpu_backend();
  auto run = [&](DilatedMode mode, int64_t N, int64_t H, int64_t k_rows) {
    return [&be, mode, N, H, k_rows] {
      auto att = make_dilated_attention(make_spec(make_cfg(mode, {8, 16}, {1, 2}), false, 8));
      Tensor q = Tensor::randn(DType::F32, 1, N, H, 4, 1);
      Tensor k = Tensor::randn(DType::F32, 1, k_rows, H, 4, 2);
      Tensor o(DType::F32, 1, N, H, 4), lse(DType::F32, 1, N, H, 1);
      o.fill(5.0);
      try {
        att->forward(*be, q.view(), k.view(), k.view(), o.view(), lse.view());
      } catch (...) {
        EXPECT_EQ(o.at(0, 0, 0, 0), 5.0);  // nothing was written
        throw;
      }
    };
  };
  expect_invalid(run(DilatedMode::Groups, 24, 2, 24), "seq_len");
  expect_invalid(run(DilatedMode::Groups, 24, 2, 24), "segment_lengths");
  expect_invalid(run(DilatedMode::Groups, 32, 1, 32), "heads");
  EXPECT_NO_THROW(run(DilatedMode::LongNet, 32, 1, 32)());  // longnet: any H
  expect_invalid(run(DilatedMode::Groups, 32, 2, 16), "argument k =");
}

}  // namespace
}  // namespace longattn
