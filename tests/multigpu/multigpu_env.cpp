// Helpers of the multigpu tests: identical inputs on every rank, the single-GPU and CPU
// reference runs, the comparison rules.
#include "multigpu_env.hpp"

#include <algorithm>
#include <cmath>

#include "attention/variant.hpp"

namespace longattn::testing {

FullInputs random_inputs(const Shape& s, DType dtype, uint64_t seed) {
  return FullInputs{Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 1),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 2),
                    Tensor::randn(dtype, s.B, s.N, s.H, s.D, seed + 3)};
}

FullInputs to_f64(const FullInputs& in) {
  return FullInputs{in.q.to(DType::F64), in.k.to(DType::F64), in.v.to(DType::F64),
                    in.d_o.to(DType::F64)};
}

namespace {

Outputs run_single(Backend& be, const AttentionSpec& spec, const FullInputs& in, bool backward) {
  auto variant = make_attention(spec);
  const TensorView q = in.q.view();
  const DType dt = q.dtype, lse_dt = dt == DType::F64 ? DType::F64 : DType::F32;
  auto dev = [&](DType t, int64_t D) { return DeviceTensor(be, t, q.B, q.N, q.H, D); };
  DeviceTensor gq = dev(dt, q.D), gk = dev(dt, q.D), gv = dev(dt, q.D), go = dev(dt, q.D),
               glse = dev(lse_dt, 1);
  be.upload(gq.view(), in.q.view());
  be.upload(gk.view(), in.k.view());
  be.upload(gv.view(), in.v.view());
  variant->forward(be, gq.view(), gk.view(), gv.view(), go.view(), glse.view());
  auto fetch = [&](const DeviceTensor& t) {
    const TensorView w = t.view();
    Tensor h(w.dtype, w.B, w.N, w.H, w.D);
    be.download(h.view(), w);
    return h;
  };
  Outputs r;
  r.o = fetch(go);
  r.lse = fetch(glse);
  if (!backward) return r;
  DeviceTensor gdo = dev(dt, q.D), gdq = dev(dt, q.D), gdk = dev(dt, q.D), gdv = dev(dt, q.D);
  be.upload(gdo.view(), in.d_o.view());
  for (DeviceTensor* g : {&gdq, &gdk, &gdv}) be.fill(g->view(), 0.0);
  variant->backward(be, gq.view(), gk.view(), gv.view(), go.view(), glse.view(), gdo.view(),
                    gdq.view(), gdk.view(), gdv.view());
  r.dq = fetch(gdq);
  r.dk = fetch(gdk);
  r.dv = fetch(gdv);
  return r;
}

}  // namespace

Outputs single_gpu(const AttentionSpec& spec, const FullInputs& in, bool backward) {
  return run_single(test_backend(), spec, in, backward);
}

Outputs cpu_reference(const AttentionSpec& spec, const FullInputs& in, bool backward) {
  auto cpu = make_cpu_backend();
  return run_single(*cpu, spec, to_f64(in), backward);
}

double ulp_of_one(DType t) {
  switch (t) {
    case DType::F64: return 0x1.0p-52;
    case DType::F32: return 0x1.0p-23;
    case DType::F16: return 0x1.0p-10;
    case DType::BF16: return 0x1.0p-7;
  }
  return 0.0;
}

void expect_matches(const std::string& name, DType dtype, const TensorView& dist,
                    const TensorView& single, const TensorView& ref) {
  constexpr double kF32Tolerance = 2e-5;
  const bool low = dtype == DType::F16 || dtype == DType::BF16;
  const ErrorStats vs_single = compare(dist, single);
  const ErrorStats vs_ref = compare(dist, ref);
  const ErrorStats single_vs_ref = compare(single, ref);
  EXPECT_TRUE(vs_single.finite) << name << ": non-finite values where the single GPU has none";
  const double scale_single = std::max(1.0, vs_single.max_ref);
  const double tol_single = (low && name != "lse") ? 2.0 * ulp_of_one(dtype) * vs_single.max_ref
                                                   : kF32Tolerance * scale_single;
  EXPECT_LE(vs_single.max_abs, tol_single)
      << name << " vs the single-GPU run (" << dtype_name(dtype) << ", largest |value| "
      << vs_single.max_ref << ")";
  const double slack = kF32Tolerance * std::max(1.0, vs_ref.max_ref);
  const double tol_ref = low ? 2.0 * single_vs_ref.max_abs + slack : slack;
  EXPECT_LE(vs_ref.max_abs, tol_ref) << name << " vs the fp64 CPU reference ("
                                     << dtype_name(dtype) << ", single-GPU error "
                                     << single_vs_ref.max_abs << ")";
}

}  // namespace longattn::testing
