// Block-sparse attention against naive attention over the expanded token mask (allowed(i, j) =
// block(j) in rows[block(i)], and j <= i when causal) for every pattern and preset: fp64 to
// 1e-12, fp16/bf16 within 2x a same-precision naive implementation, gradients against finite
// differences, Hilbert order never changing results, content-adaptive mask reuse, density and
// flops from the mask built, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "attention/block_sparse.hpp"
#include "attention/dense.hpp"
#include "attention/patterns.hpp"
#include "common/reference.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::naive_attention;

struct SparseCase {
  std::string label;
  SparseConfig cfg;
  int64_t N;
};

SparseConfig make(const std::string& pattern, int64_t block) {
  SparseConfig c;
  c.pattern = pattern;
  c.block_size = block;
  return c;
}

// Explicit structural parameters at block 16 (N = 256, nb = 16), the same patterns derived from
// a ratio, and every preset at its own block size (N = 1024).
std::vector<SparseCase> all_cases() {
  std::vector<SparseCase> cases;
  const int64_t N = 256, bs = 16;
  {
    SparseConfig c = make("local_window", bs);
    c.window_size = 48;  // 3 blocks: |i - j| <= 1
    c.window_given = true;
    cases.push_back({"local_window", c, N});
  }
  {
    SparseConfig c = make("dilated_sparse", bs);
    c.dilation_rates = {1, 3, 7};
    c.rates_given = true;
    cases.push_back({"dilated_sparse", c, N});
  }
  {
    SparseConfig c = make("global_local", bs);
    c.global_tokens = 20;  // 2 blocks
    c.window_size = 32;
    c.global_given = c.window_given = true;
    cases.push_back({"global_local", c, N});
  }
  {
    SparseConfig c = make("hierarchical", bs);
    c.levels = {{16, 32}, {64, 96}, {128, -1}};
    c.levels_given = true;
    cases.push_back({"hierarchical", c, N});
  }
  {
    SparseConfig c = make("random", bs);
    c.sparsity_ratio = 0.3;
    c.seed = 7;
    cases.push_back({"random", c, N});
  }
  {
    SparseConfig c = make("content_adaptive", bs);
    c.topk = 4;
    cases.push_back({"content_adaptive", c, N});
  }
  for (const auto& name : sparse_pattern_names()) {
    SparseConfig c = make(name, bs);
    c.sparsity_ratio = 0.3;
    cases.push_back({name + "_ratio", c, N});
  }
  for (const auto& name : sparse_preset_names())
    cases.push_back({"preset_" + name, sparse_preset(name), 1024});
  return cases;
}

// The expanded token mask of a config for these inputs.
testing::Allowed token_mask(const SparseConfig& cfg, const Tensor& q, const Tensor& k, bool causal) {
  const int64_t bs = cfg.block_size, nb = q.view().N / bs;
  const auto scores = block_mean_scores(q.view(), k.view(), bs);
  const auto rows = block_pattern(cfg, nb, &scores);
  std::vector<uint8_t> on(static_cast<size_t>(nb * nb), 0);
  for (int64_t i = 0; i < nb; ++i)
    for (int32_t j : rows[static_cast<size_t>(i)]) on[static_cast<size_t>(i * nb + j)] = 1;
  return [on, nb, bs, causal](int64_t, int64_t, int64_t i, int64_t j) {
    return on[static_cast<size_t>((i / bs) * nb + j / bs)] != 0 && (!causal || j <= i);
  };
}

class BlockSparseVsNaive : public ::testing::TestWithParam<std::tuple<SparseCase, bool>> {};

TEST_P(BlockSparseVsNaive, Fp64MatchesNaiveTo1e12) {
  const auto& [c, causal] = GetParam();
  const int64_t B = 1, H = 2, D = 8;
  auto be = make_cpu_backend();
  const uint64_t seed = 100 + static_cast<uint64_t>(c.N) + (causal ? 1 : 0);
  Tensor q = Tensor::randn(DType::F64, B, c.N, H, D, seed);
  Tensor k = Tensor::randn(DType::F64, B, c.N, H, D, seed + 10);
  Tensor v = Tensor::randn(DType::F64, B, c.N, H, D, seed + 20);
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.causal = causal;
  spec.sparse = c.cfg;
  auto att = make_block_sparse_attention(spec);
  Tensor o(DType::F64, B, c.N, H, D), lse(DType::F64, B, c.N, H, 1);
  att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
  auto ref = naive_attention(q.view(), k.view(), v.view(), token_mask(c.cfg, q, k, causal));
  EXPECT_LT(compare(o.view(), ref.o.view()).max_abs, 1e-12);
  EXPECT_LT(compare(lse.view(), ref.lse.view()).max_abs, 1e-12);
  // The pattern is really sparse here (not dense by accident), except where a ratio of 0.3 on
  // 16 blocks is asked for and the reported density is the mask's own.
  const Shape s{B, c.N, H, D};
  const double d = att->density(s);
  EXPECT_LT(d, causal ? 0.45 : 0.75) << c.label;
  const auto scores = block_mean_scores(q.view(), k.view(), c.cfg.block_size);
  const BlockMask m = sparse_block_mask(c.cfg, c.N, causal, &scores);
  EXPECT_DOUBLE_EQ(d, m.density());
  EXPECT_DOUBLE_EQ(att->flops(s), mask_flops(m, s, causal));
}

INSTANTIATE_TEST_SUITE_P(
    PatternsAndPresets, BlockSparseVsNaive,
    ::testing::Combine(::testing::ValuesIn(all_cases()), ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<SparseCase, bool>>& info) {
      return std::get<0>(info.param).label + (std::get<1>(info.param) ? "_causal" : "_full");
    });

TEST(BlockSparse, HalfPrecisionWithinTwiceNaiveError) {
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 128, H = 2, D = 32;
  SparseConfig cfg = make("dilated_sparse", 16);
  cfg.dilation_rates = {1, 2, 5};
  cfg.rates_given = true;
  for (DType dt : {DType::F16, DType::BF16}) {
    Tensor q = Tensor::randn(DType::F64, B, N, H, D, 71).to(dt);
    Tensor k = Tensor::randn(DType::F64, B, N, H, D, 72).to(dt);
    Tensor v = Tensor::randn(DType::F64, B, N, H, D, 73).to(dt);
    // The references see the same rounded inputs.
    Tensor qr = q.to(DType::F64), kr = k.to(DType::F64), vr = v.to(DType::F64);
    const auto allowed = token_mask(cfg, qr, kr, true);
    auto ref = naive_attention(qr.view(), kr.view(), vr.view(), allowed);
    auto naive_lp = naive_attention(qr.view(), kr.view(), vr.view(), allowed, 0.0, dt);
    AttentionSpec spec;
    spec.causal = true;
    spec.sparse = cfg;
    Tensor o(dt, B, N, H, D), lse(DType::F32, B, N, H, 1);
    make_block_sparse_attention(spec)->forward(*be, q.view(), k.view(), v.view(), o.view(),
                                               lse.view());
    const double naive_err = compare(naive_lp.o.view(), ref.o.view()).max_abs;
    const double err = compare(o.view(), ref.o.view()).max_abs;
    EXPECT_GT(naive_err, 0.0) << dtype_name(dt);
    EXPECT_LE(err, testing::tolerance_for(dt, naive_err)) << dtype_name(dt);
  }
}

// fp16/bf16 gradients of more rows than backward_split_rows: the backward runs in chunks of
// query rows, dQ through a chunk's fp32 scratch and the key rows two chunks reach in fp32
// (local window); a mask whose key rows are all shared (non-causal
// global tokens, which every query row sees) keeps the single call.
// Against the fp32 run on the same values (one call): within a few roundings of the largest
// value, batch 2 and 1, causal or not.
TEST(BlockSparse, HalfPrecisionGradientsInChunks) {
  auto be = make_cpu_backend();
  const int64_t H = 2, D = 4;
  SparseConfig window = make("local_window", 16);
  window.window_size = 48;
  window.window_given = true;
  SparseConfig global = make("global_local", 16);
  global.global_tokens = 32;
  global.window_size = 32;
  global.global_given = global.window_given = true;
  struct Case {
    SparseConfig cfg;
    int64_t B, N;
    bool causal;
    DType dt;
  };
  for (const Case& c : {Case{window, 2, int64_t{1} << 18, false, DType::BF16},
                        Case{window, 1, int64_t{1} << 19, true, DType::F16},
                        Case{global, 1, int64_t{1} << 19, false, DType::BF16}}) {
    SCOPED_TRACE(c.cfg.pattern + " B " + std::to_string(c.B) + " " + dtype_name(c.dt));
    ASSERT_LT(backward_split_rows(c.B * c.N) / c.B, c.N);  // more rows than one chunk
    AttentionSpec spec;
    spec.variant = "block_sparse";
    spec.causal = c.causal;
    spec.sparse = c.cfg;
    auto att = make_block_sparse_attention(spec);
    Tensor in[4];
    for (int i = 0; i < 4; ++i)
      in[i] = Tensor::randn(DType::F64, c.B, c.N, H, D, 700 + i).to(c.dt);
    testing::expect_half_gradients_near_fp32(*att, *be, in);
  }
}

TEST(BlockSparse, GradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend(1);
  const int64_t B = 1, N = 32, H = 2, D = 4, bs = 8;
  std::vector<SparseConfig> cfgs;
  {
    SparseConfig c = make("local_window", bs);
    c.window_size = 8;  // diagonal block only
    c.window_given = true;
    cfgs.push_back(c);
  }
  {
    SparseConfig c = make("dilated_sparse", bs);
    c.dilation_rates = {2};
    c.rates_given = true;
    c.hilbert = true;
    cfgs.push_back(c);
  }
  {
    SparseConfig c = make("random", bs);
    c.sparsity_ratio = 0.5;
    c.seed = 3;
    cfgs.push_back(c);
  }
  {
    SparseConfig c = make("content_adaptive", bs);
    c.topk = 2;
    cfgs.push_back(c);
  }
  for (const auto& cfg : cfgs)
    for (bool causal : {false, true}) {
      Tensor q = Tensor::randn(DType::F64, B, N, H, D, 81);
      Tensor k = Tensor::randn(DType::F64, B, N, H, D, 82);
      Tensor v = Tensor::randn(DType::F64, B, N, H, D, 83);
      Tensor w = Tensor::randn(DType::F64, B, N, H, D, 84);
      AttentionSpec spec;
      spec.causal = causal;
      spec.sparse = cfg;
      auto att = make_block_sparse_attention(spec);
      Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
      auto loss = [&] {
        att->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
        return testing::dot_all(o.view(), w.view());
      };
      loss();
      Tensor dq(DType::F64, B, N, H, D), dk(DType::F64, B, N, H, D), dv(DType::F64, B, N, H, D);
      att->backward(*be, q.view(), k.view(), v.view(), o.view(), lse.view(), w.view(),
                    dq.view(), dk.view(), dv.view());
      for (auto [t, g] : {std::pair{&q, &dq}, std::pair{&k, &dk}, std::pair{&v, &dv}})
        for (int64_t n : {0L, 9L, 20L, 31L})
          for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; d += 3) {
              const double fd = testing::finite_difference(*t, 0, n, h, d, loss);
              EXPECT_NEAR(g->at(0, n, h, d), fd, 1e-7)
                  << cfg.pattern << " causal " << causal << " n " << n;
            }
    }
}

TEST(BlockSparse, HilbertOrderNeverChangesResults) {
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 320, H = 2, D = 8;  // 20 blocks of 16: not a power of four
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 91);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 92);
  Tensor v = Tensor::randn(DType::F64, B, N, H, D, 93);
  Tensor d_o = Tensor::randn(DType::F64, B, N, H, D, 94);
  for (const auto& name : sparse_pattern_names())
    for (bool causal : {false, true}) {
      SparseConfig cfg = make(name, 16);
      cfg.sparsity_ratio = 0.25;
      struct Run {
        Tensor o, lse, dq, dk, dv;
      };
      auto run = [&](bool hilbert) {
        AttentionSpec spec;
        spec.causal = causal;
        spec.sparse = cfg;
        spec.sparse.hilbert = hilbert;
        auto att = make_block_sparse_attention(spec);
        Run r{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, 1),
              Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, D),
              Tensor(DType::F64, B, N, H, D)};
        att->forward(*be, q.view(), k.view(), v.view(), r.o.view(), r.lse.view());
        att->backward(*be, q.view(), k.view(), v.view(), r.o.view(), r.lse.view(), d_o.view(),
                      r.dq.view(), r.dk.view(), r.dv.view());
        return r;
      };
      const Run a = run(false), b = run(true);
      // Forward rows and dQ rows are computed whole in one call: bit-identical.
      EXPECT_EQ(compare(b.o.view(), a.o.view()).max_abs, 0.0) << name << " causal " << causal;
      EXPECT_EQ(compare(b.lse.view(), a.lse.view()).max_abs, 0.0) << name;
      EXPECT_EQ(compare(b.dq.view(), a.dq.view()).max_abs, 0.0) << name;
      // dK and dV add partial sums of runs of query blocks: equal to rounding.
      EXPECT_LT(compare(b.dk.view(), a.dk.view()).max_abs, 1e-14) << name;
      EXPECT_LT(compare(b.dv.view(), a.dv.view()).max_abs, 1e-14) << name;
      EXPECT_GT(compare(a.dk.view(), a.dk.view()).max_ref, 0.0);
    }
}

TEST(BlockSparse, ContentAdaptiveRebuildsItsMaskWhenInputsChange) {
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 128, H = 2, D = 8;
  SparseConfig cfg = make("content_adaptive", 16);
  cfg.topk = 3;
  AttentionSpec spec;
  spec.sparse = cfg;
  Tensor q1 = Tensor::randn(DType::F64, B, N, H, D, 1), q2 = Tensor::randn(DType::F64, B, N, H, D, 2);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 3), v = Tensor::randn(DType::F64, B, N, H, D, 4);
  Tensor d_o = Tensor::randn(DType::F64, B, N, H, D, 5);
  // The two inputs select different blocks, so a stale mask would show.
  const auto s1 = block_mean_scores(q1.view(), k.view(), 16), s2 = block_mean_scores(q2.view(), k.view(), 16);
  ASSERT_NE(block_pattern(cfg, 8, &s1), block_pattern(cfg, 8, &s2));
  auto fresh = make_block_sparse_attention(spec), reused = make_block_sparse_attention(spec);
  Tensor o1(DType::F64, B, N, H, D), l1(DType::F64, B, N, H, 1);
  Tensor o2(DType::F64, B, N, H, D), l2(DType::F64, B, N, H, 1);
  reused->forward(*be, q1.view(), k.view(), v.view(), o1.view(), l1.view());
  EXPECT_DOUBLE_EQ(reused->density({B, N, H, D}), sparse_block_mask(cfg, N, false, &s1).density());
  fresh->forward(*be, q2.view(), k.view(), v.view(), o2.view(), l2.view());
  auto grads = [&](AttentionVariant& att) {
    std::array<Tensor, 3> g{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, D),
                            Tensor(DType::F64, B, N, H, D)};
    att.backward(*be, q2.view(), k.view(), v.view(), o2.view(), l2.view(), d_o.view(),
                 g[0].view(), g[1].view(), g[2].view());
    return g;
  };
  const auto want = grads(*fresh), got = grads(*reused);  // reused last saw q1
  for (int t = 0; t < 3; ++t) EXPECT_EQ(compare(got[t].view(), want[t].view()).max_abs, 0.0);
  // Forward on q1 again after that gives the q1 result again.
  Tensor o3(DType::F64, B, N, H, D), l3(DType::F64, B, N, H, 1);
  reused->forward(*be, q1.view(), k.view(), v.view(), o3.view(), l3.view());
  EXPECT_EQ(compare(o3.view(), o1.view()).max_abs, 0.0);
}

TEST(BlockSparse, RejectsInvalidConfigsAndShapesNamingTheArgument) {
  auto be = make_cpu_backend();
  auto expect_arg = [](const std::function<void()>& f, const std::string& arg) {
    try {
      f();
      ADD_FAILURE() << "no error for " << arg;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
    }
  };
  AttentionSpec spec;
  spec.sparse.pattern = "learned";
  expect_arg([&] { make_block_sparse_attention(spec); }, "pattern");
  spec.sparse.pattern = "local_window";
  spec.sparse.sparsity_ratio = 2.0;
  expect_arg([&] { make_block_sparse_attention(spec); }, "sparsity_ratio");
  spec.sparse.sparsity_ratio = 0.0;
  spec.sparse.block_size = 16;
  auto att = make_block_sparse_attention(spec);
  Tensor q = Tensor::randn(DType::F32, 1, 40, 1, 8, 1);  // 40 is not a multiple of 16
  Tensor o(DType::F32, 1, 40, 1, 8), lse(DType::F32, 1, 40, 1, 1);
  expect_arg([&] { att->forward(*be, q.view(), q.view(), q.view(), o.view(), lse.view()); },
             "seq_len");
  expect_arg([&] { att->density({1, 40, 1, 8}); }, "seq_len");
  Tensor q2 = Tensor::randn(DType::F32, 1, 32, 1, 8, 2), k2 = Tensor::randn(DType::F32, 1, 48, 1, 8, 3);
  Tensor o2(DType::F32, 1, 32, 1, 8), l2(DType::F32, 1, 32, 1, 1);
  expect_arg([&] { att->forward(*be, q2.view(), k2.view(), k2.view(), o2.view(), l2.view()); },
             "k rows");
}

}  // namespace
}  // namespace longattn
