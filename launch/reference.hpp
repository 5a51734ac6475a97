// The reference `longattn verify` compares against: every variant written as a weighted sum of
// plain token-level attentions ("terms"), each an explicit softmax over the keys a predicate
// allows, computed naively in fp64 (or rounding at each step to a lower precision, which models
// a naive implementation in that precision for the FlashAttention tolerance rule).
// Built from DESIGN.md's semantics, independently of the kernels and of attention/dilated.
#pragma once
#include <functional>
#include <vector>

#include "attention/spec.hpp"
#include "runtime/tensor.hpp"

namespace longattn::cli {

// Rows i of head h attend to the keys j with allowed(h, i, j); rows with none get O = 0, L = -inf.
struct RefTerm {
  std::function<bool(int64_t h, int64_t i, int64_t j)> allowed;
  double coeff = 1.0;  // Combine::Sum: constant weight of this term's output
};

enum class Combine {
  Sum,          // O = sum_t coeff_t O_t (dense, block-sparse, dilated groups: 1/G)
  LseWeighted,  // O = sum_t exp(L_t - L) O_t (dilated longnet; weights detached in backward)
};

struct RefProblem {
  std::vector<RefTerm> terms;
  Combine combine = Combine::Sum;
  // L = logsumexp over terms of L_t (for disjoint terms: the L of the row's own term).
};

// The problem a spec defines on inputs of shape s. dense: one term (causal: j <= i);
// block_sparse: the pattern's block mask expanded to tokens (content_adaptive scores from q, k);
// dilated: one term per (pair, head offset group) as DESIGN.md defines both modes.
RefProblem reference_problem(const AttentionSpec& spec, const Shape& s, const TensorView& q,
                             const TensorView& k);

struct RefForward {
  Tensor o, lse;                  // fp64 [B, N, H, D], [B, N, H, 1]
  std::vector<Tensor> o_t, lse_t;  // per term
};
struct RefGrads {
  Tensor dq, dk, dv;  // fp64
};

// round = F64: exact fp64; otherwise scores, probabilities and outputs are rounded to `round`.
RefForward reference_forward(const RefProblem& p, const TensorView& q, const TensorView& k,
                             const TensorView& v, double scale, DType round = DType::F64,
                             int threads = 0);
// Gradients of sum(d_o * O), with the pair weights of longnet detached. threads: 0 = all cores.
RefGrads reference_backward(const RefProblem& p, const RefForward& fwd, const TensorView& q,
                            const TensorView& k, const TensorView& v, const TensorView& d_o,
                            double scale, DType round = DType::F64, int threads = 0);

}  // namespace longattn::cli
