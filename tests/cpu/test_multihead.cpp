// Multihead dilated attention against a naive test-side layer (explicit projections, the naive
// dilated or dense attention, explicit LayerNorm, output projection) in fp64 to 1e-12, its
// gradients (inputs and every parameter) against finite differences, the MAGNETO init, and the
// config validation rules.
#include <gtest/gtest.h>

#include <cmath>

#include "attention/multihead.hpp"
#include "common/naive_dilated.hpp"
#include "common/reference.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

MultiheadConfig small_config(const std::string& variant, DilatedMode mode, bool causal) {
  MultiheadConfig c;
  c.embed_dim = 16;
  c.num_heads = 4;
  c.attention.variant = variant;
  c.attention.causal = causal;
  c.attention.block_size = 4;
  c.attention.dilated.segment_lengths = {4, 8, 16};
  c.attention.dilated.dilation_rates = {1, 2, 4};
  c.attention.dilated.mode = mode;
  c.param_dtype = DType::F64;
  c.seed = 17;
  return c;
}

// Fills biases and LayerNorm parameters with fresh values so that every term is exercised.
void randomize_vectors(MultiheadParams& p, uint64_t seed) {
  for (Tensor* t : {&p.b_q, &p.b_k, &p.b_v, &p.b_out, &p.ln_weight, &p.ln_bias}) {
    if (t->numel() == 0) continue;
    const auto s = t->shape();
    Tensor r = Tensor::randn(t->dtype(), s[0], s[1], s[2], s[3], seed++, 0.5);
    for (int64_t e = 0; e < s[3]; ++e) t->set(0, 0, 0, e, t->at(0, 0, 0, e) + r.at(0, 0, 0, e));
  }
}

// The naive layer: x [B, N, 1, E] fp64 -> out [B, N, 1, E].
Tensor naive_multihead(const MultiheadConfig& cfg, const MultiheadParams& p, const Tensor& xq,
                       const Tensor& xk, const Tensor& xv) {
  const auto s = xq.shape();
  const int64_t B = s[0], N = s[1], E = cfg.embed_dim, H = cfg.num_heads, Dh = E / H;
  auto project = [&](const Tensor& x, const Tensor& w, const Tensor& b) {
    Tensor y(DType::F64, B, N, H, Dh);
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < E; ++o) {
          double acc = cfg.bias ? b.at(0, 0, 0, o) : 0.0;
          for (int64_t i = 0; i < E; ++i) acc += x.at(bb, n, 0, i) * w.at(0, o, 0, i);
          y.set(bb, n, o / Dh, o % Dh, acc);  // embedding index e = h * Dh + d
        }
    return y;
  };
  Tensor q = project(xq, p.w_q, p.b_q), k = project(xk, p.w_k, p.b_k),
         v = project(xv, p.w_v, p.b_v);
  Tensor a;
  if (cfg.attention.variant == "dense") {
    const bool causal = cfg.attention.causal;
    a = testing::naive_attention(q.view(), k.view(), v.view(),
                                 [causal](int64_t, int64_t, int64_t i, int64_t j) {
                                   return !causal || j <= i;
                                 })
            .o;
  } else {
    a = testing::naive_dilated(q.view(), k.view(), v.view(), cfg.attention.dilated,
                               cfg.attention.causal)
            .o;
  }
  Tensor y(DType::F64, B, N, 1, E);
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> row(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) row[e] = a.at(bb, n, e / Dh, e % Dh);
      if (cfg.layer_norm) {
        double mean = 0.0, var = 0.0;
        for (double x : row) mean += x / static_cast<double>(E);
        for (double x : row) var += (x - mean) * (x - mean) / static_cast<double>(E);
        for (int64_t e = 0; e < E; ++e)
          row[e] = (row[e] - mean) / std::sqrt(var + cfg.layer_norm_eps) *
                       p.ln_weight.at(0, 0, 0, e) +
                   p.ln_bias.at(0, 0, 0, e);
      }
      for (int64_t e = 0; e < E; ++e) y.set(bb, n, 0, e, row[e]);
    }
  Tensor out(DType::F64, B, N, 1, E);
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < E; ++o) {
        double acc = cfg.bias ? p.b_out.at(0, 0, 0, o) : 0.0;
        for (int64_t i = 0; i < E; ++i) acc += y.at(bb, n, 0, i) * p.w_out.at(0, o, 0, i);
        out.set(bb, n, 0, o, acc);
      }
  return out;
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

TEST(Multihead, MagnetoInitIsSeededXavierNormal) {
  MultiheadConfig c;
  c.embed_dim = 64;
  c.num_heads = 4;
  c.gamma_init = 2.0;
  c.seed = 5;
  MultiheadDilatedAttention a(c), same(c);
  c.seed = 6;
  MultiheadDilatedAttention other(c);
  const double base = std::sqrt(2.0 / (64.0 + 64.0));
  auto stddev = [](const Tensor& t) {
    double s = 0.0, s2 = 0.0;
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t j = 0; j < 64; ++j) {
        s += t.at(0, i, 0, j);
        s2 += t.at(0, i, 0, j) * t.at(0, i, 0, j);
      }
    const double n = 64.0 * 64.0;
    return std::sqrt(s2 / n - (s / n) * (s / n));
  };
  const auto& p = a.params();
  EXPECT_NEAR(stddev(p.w_q), base, 0.06 * base);
  EXPECT_NEAR(stddev(p.w_k), base, 0.06 * base);
  EXPECT_NEAR(stddev(p.w_v), 2.0 * base, 0.12 * base);
  EXPECT_NEAR(stddev(p.w_out), 2.0 * base, 0.12 * base);
  EXPECT_GT(compare(p.w_q.view(), p.w_k.view()).max_abs, 0.1);
  EXPECT_EQ(compare(p.w_v.view(), same.params().w_v.view()).max_abs, 0.0);
  EXPECT_GT(compare(p.w_v.view(), other.params().w_v.view()).max_abs, 0.1);
  for (int64_t e = 0; e < 64; ++e) {
    EXPECT_EQ(p.b_q.at(0, 0, 0, e), 0.0);
    EXPECT_EQ(p.b_out.at(0, 0, 0, e), 0.0);
    EXPECT_EQ(p.ln_weight.at(0, 0, 0, e), 1.0);
    EXPECT_EQ(p.ln_bias.at(0, 0, 0, e), 0.0);
  }
  c.bias = false;
  c.layer_norm = false;
  MultiheadDilatedAttention bare(c);
  EXPECT_EQ(bare.params().b_q.numel(), 0);
  EXPECT_EQ(bare.params().ln_weight.numel(), 0);
  EXPECT_EQ(bare.attention().name(), "dilated");
}

struct MhCase {
  std::string variant;
  DilatedMode mode;
  bool causal, layer_norm, bias, cross;
};

class MultiheadVsNaive : public ::testing::TestWithParam<MhCase> {};

TEST_P(MultiheadVsNaive, Fp64MatchesNaiveTo1e12) {
  const auto c = GetParam();
  auto cfg = small_config(c.variant, c.mode, c.causal);
  cfg.layer_norm = c.layer_norm;
  cfg.bias = c.bias;
  MultiheadDilatedAttention mh(cfg);
  randomize_vectors(mh.params(), 40);
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 32, E = cfg.embed_dim;
  Tensor xq = Tensor::randn(DType::F64, B, N, 1, E, 41);
  Tensor xk = c.cross ? Tensor::randn(DType::F64, B, N, 1, E, 42) : xq.clone();
  Tensor xv = c.cross ? Tensor::randn(DType::F64, B, N, 1, E, 43) : xq.clone();
  Tensor out(DType::F64, B, N, 1, E);
  mh.forward(*be, xq.view(), xk.view(), xv.view(), out.view());
  const Tensor ref = naive_multihead(cfg, mh.params(), xq, xk, xv);
  const auto st = compare(out.view(), ref.view());
  EXPECT_LT(st.max_abs, 1e-12);
  EXPECT_GT(st.max_ref, 0.1);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, MultiheadVsNaive,
    ::testing::Values(MhCase{"dilated", DilatedMode::Groups, false, true, true, false},
                      MhCase{"dilated", DilatedMode::Groups, true, true, true, true},
                      MhCase{"dilated", DilatedMode::LongNet, true, false, true, true},
                      MhCase{"dilated", DilatedMode::LongNet, false, true, false, false},
                      MhCase{"dense", DilatedMode::Groups, true, true, true, true},
                      MhCase{"dense", DilatedMode::Groups, false, false, false, true}));

TEST(Multihead, Fp32MatchesFp64Naive) {
  auto cfg = small_config("dilated", DilatedMode::Groups, true);
  cfg.param_dtype = DType::F32;
  MultiheadDilatedAttention mh(cfg);
  randomize_vectors(mh.params(), 50);
  auto be = make_cpu_backend();
  const int64_t B = 1, N = 32, E = cfg.embed_dim;
  Tensor x = Tensor::randn(DType::F32, B, N, 1, E, 51);
  Tensor out(DType::F32, B, N, 1, E);
  mh.forward(*be, x.view(), x.view(), x.view(), out.view());
  Tensor x64 = x.to(DType::F64);
  const Tensor ref = naive_multihead(cfg, mh.params(), x64, x64, x64);
  EXPECT_LT(compare(out.view(), ref.view()).max_abs, 1e-4);
}

struct MhGradCase {
  DilatedMode mode;
  bool causal, layer_norm, bias, exact;
};

// Loss = sum(w * out); every input element and a sample of every parameter's elements.
TEST(Multihead, GradientsMatchFiniteDifferences) {
  auto be = make_cpu_backend(1);
  for (const auto gc : {MhGradCase{DilatedMode::Groups, true, true, true, false},
                        MhGradCase{DilatedMode::Groups, false, false, false, false},
                        MhGradCase{DilatedMode::LongNet, true, true, true, true}}) {
    MultiheadConfig cfg;
    cfg.embed_dim = 8;
    cfg.num_heads = 2;
    cfg.attention.causal = gc.causal;
    cfg.attention.block_size = 2;
    cfg.attention.dilated.segment_lengths = {4, 8};
    cfg.attention.dilated.dilation_rates = {1, 2};
    cfg.attention.dilated.mode = gc.mode;
    cfg.attention.dilated.exact_longnet_grad = gc.exact;
    cfg.layer_norm = gc.layer_norm;
    cfg.bias = gc.bias;
    cfg.param_dtype = DType::F64;
    cfg.seed = 3;
    MultiheadDilatedAttention mh(cfg);
    randomize_vectors(mh.params(), 60);
    const int64_t B = 2, N = 8, E = 8;
    Tensor xq = Tensor::randn(DType::F64, B, N, 1, E, 61);
    Tensor xk = Tensor::randn(DType::F64, B, N, 1, E, 62);
    Tensor xv = Tensor::randn(DType::F64, B, N, 1, E, 63);
    Tensor w = Tensor::randn(DType::F64, B, N, 1, E, 64);
    Tensor out(DType::F64, B, N, 1, E);
    auto loss = [&] {
      mh.forward(*be, xq.view(), xk.view(), xv.view(), out.view());
      return testing::dot_all(out.view(), w.view());
    };
    Tensor dxq(DType::F64, B, N, 1, E), dxk(DType::F64, B, N, 1, E), dxv(DType::F64, B, N, 1, E);
    dxq.fill(7.0);  // overwritten
    MultiheadParams grads;
    mh.backward(*be, xq.view(), xk.view(), xv.view(), w.view(), dxq.view(), dxk.view(),
                dxv.view(), grads);
    auto check = [&](Tensor& x, const Tensor& g, int64_t step, const char* what) {
      const auto s = x.shape();
      ASSERT_EQ(g.shape(), s) << what;
      double max_err = 0.0, max_fd = 0.0;
      int64_t flat = 0;
      for (int64_t b = 0; b < s[0]; ++b)
        for (int64_t n = 0; n < s[1]; ++n)
          for (int64_t e = 0; e < s[3]; ++e, ++flat) {
            if (flat % step != 0) continue;
            const double fd = testing::finite_difference(x, b, n, 0, e, loss);
            max_err = std::max(max_err, std::fabs(g.at(b, n, 0, e) - fd));
            max_fd = std::max(max_fd, std::fabs(fd));
          }
      EXPECT_LT(max_err, 1e-6 * std::max(1.0, max_fd)) << what << " mode " << int(gc.mode);
      EXPECT_GT(max_fd, 1e-3) << what;
    };
    check(xq, dxq, 1, "x_q");
    check(xk, dxk, 1, "x_k");
    check(xv, dxv, 1, "x_v");
    auto& p = mh.params();
    check(p.w_q, grads.w_q, 3, "w_q");
    check(p.w_k, grads.w_k, 3, "w_k");
    check(p.w_v, grads.w_v, 3, "w_v");
    check(p.w_out, grads.w_out, 3, "w_out");
    if (gc.bias) {
      check(p.b_q, grads.b_q, 1, "b_q");
      check(p.b_v, grads.b_v, 1, "b_v");
      check(p.b_out, grads.b_out, 1, "b_out");
      // b_k shifts every score of a row by the same amount: its gradient is ~0 by softmax
      // invariance; it must still agree.
      const double fd = testing::finite_difference(p.b_k, 0, 0, 0, 1, loss);
      EXPECT_NEAR(grads.b_k.at(0, 0, 0, 1), fd, 1e-6);
    } else {
      EXPECT_EQ(grads.b_q.numel(), 0);
    }
    if (gc.layer_norm) {
      check(p.ln_weight, grads.ln_weight, 1, "ln_weight");
      check(p.ln_bias, grads.ln_bias, 1, "ln_bias");
    }
  }
}

TEST(Multihead, ValidationNamesTheArgument) {
  auto with = [](auto edit) {
    return [edit] {
      MultiheadConfig c;
      c.embed_dim = 64;
      c.num_heads = 4;
      edit(c);
      MultiheadDilatedAttention mh(c);
    };
  };
  expect_invalid(with([](MultiheadConfig& c) { c.num_heads = 5; }), "embed_dim");
  expect_invalid(with([](MultiheadConfig& c) { c.num_heads = 5; }), "num_heads");
  expect_invalid(with([](MultiheadConfig& c) { c.num_heads = 0; }), "num_heads");
  expect_invalid(with([](MultiheadConfig& c) { c.embed_dim = 0; }), "embed_dim");
  expect_invalid(with([](MultiheadConfig& c) { c.dropout = 0.1; }), "dropout");
  expect_invalid(with([](MultiheadConfig& c) { c.dropout = 1.5; }), "dropout");
  expect_invalid(with([](MultiheadConfig& c) { c.layer_norm_eps = 0.0; }), "layer_norm_eps");
  expect_invalid(with([](MultiheadConfig& c) { c.gamma_init = -1.0; }), "gamma_init");
  expect_invalid(with([](MultiheadConfig& c) { c.attention.variant = "ring"; }), "variant");
  expect_invalid(with([](MultiheadConfig& c) { c.attention.dilated.segment_lengths = {}; }),
                 "segment_lengths");
  EXPECT_NO_THROW(with([](MultiheadConfig&) {})());

  auto be = make_cpu_backend();
  auto cfg = small_config("dilated", DilatedMode::Groups, false);
  MultiheadDilatedAttention mh(cfg);
  Tensor x = Tensor::randn(DType::F64, 1, 32, 1, 16, 1);
  Tensor narrow = Tensor::randn(DType::F64, 1, 32, 1, 8, 2);
  Tensor short_seq = Tensor::randn(DType::F64, 1, 24, 1, 16, 3);
  Tensor out(DType::F64, 1, 32, 1, 16), out24(DType::F64, 1, 24, 1, 16);
  expect_invalid([&] { mh.forward(*be, x.view(), narrow.view(), x.view(), out.view()); },
                 "x_k");
  expect_invalid(
      [&] {
        mh.forward(*be, short_seq.view(), short_seq.view(), short_seq.view(), out24.view());
      },
      "seq_len");
}

}  // namespace
}  // namespace longattn
