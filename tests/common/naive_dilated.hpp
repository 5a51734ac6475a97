// Independent naive dilated attention for tests, both modes: explicit loops over pairs,
// segments and dilated index sets with a two-pass softmax per row, in fp64 (or rounded to a
// lower precision at each step, for the fp16/bf16 tolerance rule). Shares no code with attention/.
#pragma once
#include <vector>

#include "attention/spec.hpp"
#include "common/reference.hpp"

namespace longattn::testing {

// Per-pair results (O_i, L_i) over [B, N, H, D]: pair i attends, for every head it covers, among
// rows offset + j * r_i of each segment of length s_i. Heads a pair does not cover and rows it
// does not select get O = 0, L = -inf. groups mode: pair i covers head group i (first H % G
// groups one larger) with offset i mod r_i; longnet mode: every head, head h with offset
// h div (ceil(H / r_i)).
std::vector<NaiveResult> naive_dilated_pairs(const TensorView& q, const TensorView& k,
                                             const TensorView& v, const DilatedConfig& cfg,
                                             bool causal, double scale = 0.0,
                                             DType round = DType::F64);

// Combines per-pair results by the mode: groups, O = O_{group(h)} / G and L = L_{group(h)};
// longnet, weights softmax over pairs of L_i per row and head, L = log sum_i exp(L_i).
NaiveResult naive_dilated_combine(const std::vector<NaiveResult>& pairs, DilatedMode mode,
                                  DType round = DType::F64);

// The whole function: naive_dilated_combine(naive_dilated_pairs(...), cfg.mode, round).
NaiveResult naive_dilated(const TensorView& q, const TensorView& k, const TensorView& v,
                          const DilatedConfig& cfg, bool causal, double scale = 0.0,
                          DType round = DType::F64);

}  // namespace longattn::testing
