// Shared state and helpers of the multigpu test binary (one MPI rank per GPU): the NCCL
// communicator and CUDA backend every test uses, identical random inputs on every rank, the
// single-GPU and CPU reference runs on rank 0, and the comparison rules.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "attention/distributed.hpp"
#include "comm/nccl/nccl_communicator.hpp"
#include "kernels/backend.hpp"
#include "runtime/tensor.hpp"

namespace longattn::testing {

NcclCommunicator& test_comm();
Backend& test_backend();  // this rank's GPU
// Long enough for rank 0's CPU references while the other ranks wait in a collective.
constexpr double kTestTimeoutSeconds = 120.0;

struct FullInputs {
  Tensor q, k, v, d_o;
};
// Fresh random inputs of `dtype` from a seed: every rank draws the same values.
FullInputs random_inputs(const Shape& s, DType dtype, uint64_t seed);
// The same values in fp64 (what the CPU reference sees: the inputs after rounding).
FullInputs to_f64(const FullInputs& in);

struct Outputs {
  Tensor o, lse, dq, dk, dv;
};
// The single-process variant of `spec` on this rank's GPU (full tensors uploaded).
Outputs single_gpu(const AttentionSpec& spec, const FullInputs& in, bool backward);
// The single-process variant on the CPU reference backend (fp64 accumulation).
Outputs cpu_reference(const AttentionSpec& spec, const FullInputs& in, bool backward);

// Units in the last place of 1 for a dtype (2^-23 fp32, 2^-7 bf16, 2^-10 fp16).
double ulp_of_one(DType t);

// The comparison rules of the multigpu tests, for one output tensor `name`:
// - against the single-GPU run (same kernels, different merge order and partial sums):
//   fp32 within 2e-5 of the largest |value| (at least 1), fp16/bf16 within 2 units in the last
//   place of the largest |value|;
// - against the fp64 CPU reference: fp32 within 2e-5 of the largest |value| (at least 1);
//   fp16/bf16 at most twice the single-GPU run's error plus that fp32 slack (STYLE.md's rule,
//   the single-GPU run being the same-precision implementation).
// `dtype` is the dtype of the run (LSE is fp32 but follows its run's rule against the
// reference; against the single-GPU run it is always compared as fp32).
void expect_matches(const std::string& name, DType dtype, const TensorView& dist,
                    const TensorView& single, const TensorView& ref);

}  // namespace longattn::testing
