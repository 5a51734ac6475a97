// Independent naive references for tests: explicit softmax over an allowed(b, h, i, j)
// predicate in fp64, a same-precision variant for the fp16/bf16 tolerance rule, and finite
// differences for gradients.
#pragma once
#include <functional>

#include "attention/variant.hpp"
#include "runtime/tensor.hpp"

namespace longattn::testing {

using Allowed = std::function<bool(int64_t b, int64_t h, int64_t i, int64_t j)>;

struct NaiveResult {
  Tensor o;    // fp64 [B, Nq, H, D]
  Tensor lse;  // fp64 [B, Nq, H, 1]
};

// O_i = sum_j softmax_j(scale q_i.k_j over allowed j) v_j; rows with nothing allowed get 0, -inf.
// When `round` is not F64, scores, probabilities and outputs are rounded to that dtype at each
// step, modelling a naive implementation in that precision (FlashAttention's test rule).
NaiveResult naive_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                            const Allowed& allowed, double scale = 0.0, DType round = DType::F64);

// Tolerance rule of STYLE.md: for fp16/bf16, err(ours vs fp64 ref) <= 2 * err(same-precision
// naive vs fp64 ref) + tiny absolute slack; for fp32 and fp64 a fixed bound is used.
double tolerance_for(DType dtype, double naive_same_precision_err);

// Central finite difference of a scalar function of one fp64 tensor at element (b, n, h, d).
double finite_difference(Tensor& x, int64_t b, int64_t n, int64_t h, int64_t d,
                         const std::function<double()>& f, double eps = 1e-6);

// Sum of w * o over all elements, the scalar loss used by gradient checks (dO = w).
double dot_all(const TensorView& a, const TensorView& w);

// One forward and backward call of a variant on host tensors in[4] = q, k, v, dO (any one
// dtype; lse fp32): o, lse and dq, dk, dv (which start at 5, so the call must overwrite them).
struct VariantRun {
  Tensor o, lse, grads[3];
};
VariantRun run_variant(AttentionVariant& att, Backend& be, const Tensor (&in)[4]);

// The variant's gradients on fp16/bf16 inputs in[4] against its fp32 run on the same values
// (with that run's own output): each within 1/64 of its largest fp32 value, which exceeds 0.1.
void expect_half_gradients_near_fp32(AttentionVariant& att, Backend& be, const Tensor (&in)[4]);

}  // namespace longattn::testing
