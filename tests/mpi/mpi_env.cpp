// Helpers of the mpi tests: identical random inputs on every rank, the single-process run.
#include "mpi_env.hpp"

#include <cmath>
#include <utility>

#include "attention/variant.hpp"

namespace longattn::testing {

FullInputs random_inputs(const Shape& s, DType dtype, uint64_t seed) {
  return FullInputs{Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 1),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 2),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 3)};
}

Reference single_process(const AttentionSpec& spec, const FullInputs& in, bool backward) {
  auto be = make_cpu_backend(1);
  auto variant = make_attention(spec);
  const TensorView q = in.q.view();
  const DType lse_dt = q.dtype == DType::F64 ? DType::F64 : DType::F32;
  Reference r{Tensor(q.dtype, q.B, q.N, q.H, q.D), Tensor(lse_dt, q.B, q.N, q.H, 1), {}, {}, {}};
  variant->forward(*be, q, in.k.view(), in.v.view(), r.o.view(), r.lse.view());
  if (backward) {
    r.dq = Tensor(q.dtype, q.B, q.N, q.H, q.D);
    r.dk = Tensor(q.dtype, q.B, q.N, q.H, q.D);
    r.dv = Tensor(q.dtype, q.B, q.N, q.H, q.D);
    variant->backward(*be, q, in.k.view(), in.v.view(), r.o.view(), r.lse.view(), in.d_o.view(),
                      r.dq.view(), r.dk.view(), r.dv.view());
  }
  return r;
}

void expect_matches_single_process(const DistributedResult& r, const AttentionSpec& spec,
                                   const FullInputs& in, double tol, const std::string& what) {
  const Reference ref = single_process(spec, in, true);
  const std::pair<const Tensor*, const Tensor*> pairs[] = {
      {&r.o, &ref.o}, {&r.lse, &ref.lse}, {&r.dq, &ref.dq}, {&r.dk, &ref.dk}, {&r.dv, &ref.dv}};
  const char* names[] = {"o", "lse", "dq", "dk", "dv"};
  for (int i = 0; i < 5; ++i)
    EXPECT_LT(max_abs_diff(pairs[i].first->view(), pairs[i].second->view()), tol)
        << names[i] << " " << what;
}

double max_abs_diff(const TensorView& a, const TensorView& ref) {
  EXPECT_TRUE(a.B == ref.B && a.N == ref.N && a.H == ref.H && a.D == ref.D)
      << a.shape_string() << " vs " << ref.shape_string();
  double m = 0.0;
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t h = 0; h < a.H; ++h)
        for (int64_t d = 0; d < a.D; ++d) {
          const double x = load(a, b, n, h, d), y = load(ref, b, n, h, d);
          if (x == y) continue;  // includes -inf == -inf
          const double e = std::fabs(x - y);
          m = std::isnan(e) ? INFINITY : std::max(m, e);
        }
  return m;
}

MultiheadReference multihead_reference(const AttentionSpec& attention, int64_t B, int64_t N,
                                       uint64_t param_seed, uint64_t input_seed, Backend& be) {
  MultiheadReference r;
  r.cfg.embed_dim = 8;
  r.cfg.num_heads = 2;
  r.cfg.attention = attention;
  r.cfg.param_dtype = DType::F64;
  r.cfg.seed = param_seed;
  const int64_t E = r.cfg.embed_dim;
  r.xq = Tensor::randn(DType::F64, B, N, 1, E, input_seed);
  r.xk = Tensor::randn(DType::F64, B, N, 1, E, input_seed + 1);
  r.xv = Tensor::randn(DType::F64, B, N, 1, E, input_seed + 2);
  r.dout = Tensor::randn(DType::F64, B, N, 1, E, input_seed + 3);
  MultiheadDilatedAttention single(r.cfg);
  r.out = Tensor(DType::F64, B, N, 1, E);
  r.dxq = r.out.clone();
  r.dxk = r.out.clone();
  r.dxv = r.out.clone();
  single.forward(be, r.xq.view(), r.xk.view(), r.xv.view(), r.out.view());
  single.backward(be, r.xq.view(), r.xk.view(), r.xv.view(), r.dout.view(), r.dxq.view(),
                  r.dxk.view(), r.dxv.view(), r.g);
  return r;
}

Tensor local_part(DistributedMultihead& dist, int rank, int64_t B, int64_t N, const Tensor& full) {
  const Shape l = dist.local_shape(B, N);
  Tensor t(full.dtype(), l.B, l.N, 1, full.view().D);
  dist.attention().extract_local(rank, full.view(), t.view());
  return t;
}

}  // namespace longattn::testing
