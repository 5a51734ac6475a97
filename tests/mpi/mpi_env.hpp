// Shared state and helpers of the mpi test binary: the communicator and CPU backend every test
// uses, inputs drawn identically on every rank, and the single-process reference run.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "attention/distributed.hpp"
#include "attention/distributed_multihead.hpp"
#include "attention/multihead.hpp"
#include "comm/communicator.hpp"
#include "kernels/backend.hpp"
#include "runtime/tensor.hpp"

namespace longattn::testing {

// The world communicator of the test run (timeout kTestTimeoutSeconds, so a test that breaks
// the collective order fails instead of hanging).
Communicator& test_comm();
Backend& test_backend();
constexpr double kTestTimeoutSeconds = 60.0;
// fp64 distributed results vs the single-process reference.
constexpr double kDistTolerance = 1e-10;

struct FullInputs {
  Tensor q, k, v, d_o;
};
// Fresh random inputs from a seed: every rank draws the same values.
FullInputs random_inputs(const Shape& s, DType dtype, uint64_t seed);

struct Reference {
  Tensor o, lse, dq, dk, dv;
};
// The single-process variant of `spec` (attention/variant.hpp factory) on the full tensors.
Reference single_process(const AttentionSpec& spec, const FullInputs& in, bool backward);

// A multihead layer (embed 8, 2 heads, fp64 parameters from param_seed) running `attention`,
// full random inputs [B, N, 1, 8] from input_seed .. input_seed + 3 (q, k, v, dout), and the
// single-process layer's output and gradients computed on `be`.
struct MultiheadReference {
  MultiheadConfig cfg;
  Tensor xq, xk, xv, dout;
  Tensor out, dxq, dxk, dxv;
  MultiheadParams g;
};
MultiheadReference multihead_reference(const AttentionSpec& attention, int64_t B, int64_t N,
                                       uint64_t param_seed, uint64_t input_seed, Backend& be);
// The part of the full [B, N, 1, E] tensor `full` that `rank` holds under `dist`.
Tensor local_part(DistributedMultihead& dist, int rank, int64_t B, int64_t N, const Tensor& full);

// Max |a - ref| over all elements (views of equal shape); -inf == -inf counts as equal.
double max_abs_diff(const TensorView& a, const TensorView& ref);

// On the root rank: o, lse, dq, dk and dv of a distributed run (run_distributed with the
// backward) each within `tol` of the single-process run of `spec` on `in`; `what` labels
// failures.
void expect_matches_single_process(const DistributedResult& r, const AttentionSpec& spec,
                                   const FullInputs& in, double tol,
                                   const std::string& what = "");

}  // namespace longattn::testing
