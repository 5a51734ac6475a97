// Naive references for tests: two-pass softmax per row, no blocking, no online rescaling.
#include "common/reference.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace longattn::testing {

NaiveResult naive_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const Allowed& allowed, double scale, DType round) {
  const int64_t B = q.B, H = q.H, D = q.D, Nq = q.N, Nk = k.N;
  if (scale <= 0) scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto r = [round](double x) { return round_to(round, x); };
  NaiveResult res{Tensor(DType::F64, B, Nq, H, D), Tensor(DType::F64, B, Nq, H, 1)};
  std::vector<double> s(static_cast<size_t>(Nk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Nq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Nk; ++j) {
          if (!allowed(b, h, i, j)) {
            s[j] = -std::numeric_limits<double>::infinity();
            continue;
          }
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += load(q, b, i, h, d) * load(k, b, j, h, d);
          s[j] = r(r(acc) * scale);
          mx = std::max(mx, s[j]);
        }
        if (mx == -std::numeric_limits<double>::infinity()) {
          res.lse.set(b, i, h, 0, mx);
          continue;  // o stays 0
        }
        double sum = 0.0;
        for (int64_t j = 0; j < Nk; ++j)
          if (s[j] != -std::numeric_limits<double>::infinity()) sum += std::exp(s[j] - mx);
        res.lse.set(b, i, h, 0, mx + std::log(sum));
        // The rounded probabilities once per row (p = 0 where masked adds nothing).
        for (int64_t j = 0; j < Nk; ++j)
          s[j] = s[j] != -std::numeric_limits<double>::infinity() ? r(r(std::exp(s[j] - mx)) / r(sum))
                                                                 : 0.0;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < Nk; ++j)
            if (s[j] != 0.0) acc += s[j] * load(v, b, j, h, d);
          res.o.set(b, i, h, d, r(acc));
        }
      }
  return res;
}

double tolerance_for(DType dtype, double naive_err) {
  switch (dtype) {
    case DType::F64: return 1e-12;
    case DType::F32: return 2e-5;
    default: return 2.0 * naive_err + 1e-6;
  }
}

double finite_difference(Tensor& x, int64_t b, int64_t n, int64_t h, int64_t d,
                         const std::function<double()>& f, double eps) {
  const double x0 = x.at(b, n, h, d);
  x.set(b, n, h, d, x0 + eps);
  const double fp = f();
  x.set(b, n, h, d, x0 - eps);
  const double fm = f();
  x.set(b, n, h, d, x0);
  return (fp - fm) / (2.0 * eps);
}

double dot_all(const TensorView& a, const TensorView& w) {
  double s = 0.0;
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t h = 0; h < a.H; ++h)
        for (int64_t d = 0; d < a.D; ++d) s += load(a, b, n, h, d) * load(w, b, n, h, d);
  return s;
}

VariantRun run_variant(AttentionVariant& att, Backend& be, const Tensor (&in)[4]) {
  const TensorView q = in[0].view();
  VariantRun r;
  r.o = Tensor(q.dtype, q.B, q.N, q.H, q.D);
  r.lse = Tensor(DType::F32, q.B, q.N, q.H, 1);
  att.forward(be, q, in[1].view(), in[2].view(), r.o.view(), r.lse.view());
  for (Tensor& g : r.grads) {
    g = Tensor(q.dtype, q.B, q.N, q.H, q.D);
    g.fill(5.0);
  }
  att.backward(be, q, in[1].view(), in[2].view(), r.o.view(), r.lse.view(), in[3].view(),
               r.grads[0].view(), r.grads[1].view(), r.grads[2].view());
  return r;
}

void expect_half_gradients_near_fp32(AttentionVariant& att, Backend& be, const Tensor (&in)[4]) {
  const VariantRun half = run_variant(att, be, in);
  Tensor f[4];
  for (int i = 0; i < 4; ++i) f[i] = in[i].to(DType::F32);
  const VariantRun full = run_variant(att, be, f);
  const TensorView q = f[0].view();
  const Tensor zero(DType::F32, q.B, q.N, q.H, q.D);
  for (int i = 0; i < 3; ++i) {
    const double peak = compare(full.grads[i].view(), zero.view()).max_abs;
    EXPECT_GT(peak, 0.1);
    EXPECT_LE(compare(half.grads[i].view(), full.grads[i].view()).max_abs, peak / 64)
        << "gradient " << "qkv"[i];
  }
}

}  // namespace longattn::testing
