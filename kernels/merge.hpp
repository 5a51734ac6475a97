// The softmax-state merge of the kernel contract, shared by CPU and GPU (header-only).
// A partial result over a key set S is (O_S, L_S) with L_S = log sum_{j in S} exp(s_j) and
// O_S = sum_j exp(s_j - L_S) v_j. For disjoint S1, S2:
//   L = logaddexp(L1, L2),  O = O1 * exp(L1 - L) + O2 * exp(L2 - L).
// An empty set has L = -inf and O = 0; merging with it returns the other side unchanged, and
// merging two empty sets stays empty (no -inf - -inf = NaN).
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define LONGATTN_HD __host__ __device__ __forceinline__
#else
#define LONGATTN_HD inline
#endif

namespace longattn {

template <typename T>
struct MergeWeights {
  T lse;  // merged log-sum-exp
  T w1;   // weight of side 1: exp(L1 - L)
  T w2;   // weight of side 2: exp(L2 - L)
};

// Weights for merging two partial results with log-sum-exps l1 and l2.
template <typename T>
LONGATTN_HD MergeWeights<T> merge_weights(T l1, T l2) {
  const T neg_inf = -INFINITY;
  if (l1 == neg_inf && l2 == neg_inf) return {neg_inf, T(0), T(0)};
  if (l1 == neg_inf) return {l2, T(0), T(1)};
  if (l2 == neg_inf) return {l1, T(1), T(0)};
  const T m = l1 > l2 ? l1 : l2;
  // L = m + log(exp(l1 - m) + exp(l2 - m)); one of the exponents is exp(0) = 1.
  const T e1 = exp(l1 - m), e2 = exp(l2 - m);
  const T lse = m + log(e1 + e2);
  return {lse, e1 / (e1 + e2), e2 / (e1 + e2)};
}

}  // namespace longattn
