// Element-wise device operations of the CUDA backend over strided [B, N, H, D] views (LSE views
// are the same with D = 1): fill, scale, axpy, copy with dtype conversion, the softmax-state
// merge, and a counter-based normal fill. All are asynchronous on the given stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/tensor.hpp"

namespace longattn::cuda {

// Arithmetic is done in fp64 and rounded once to the destination dtype (fp32 -> bf16/fp16 as the
// host conversions do), so results equal the CPU backend's for the same inputs.
void fill(const TensorView& t, double value, cudaStream_t stream);
void scale(const TensorView& t, double alpha, cudaStream_t stream);            // t *= alpha
void axpy(const TensorView& dst, double alpha, const TensorView& src, cudaStream_t stream);
void copy(const TensorView& dst, const TensorView& src, cudaStream_t stream);  // dst = src
// dst = alpha * src, rounded once to dst's dtype.
void copy_scaled(const TensorView& dst, double alpha, const TensorView& src,
                 cudaStream_t stream);

// (o_acc, lse_acc) <- merge((o_acc, lse_acc), (o_part, lse_part)) with kernels/merge.hpp's
// weights; lse views are [B, N, H, 1] in fp32 or fp64.
void merge(const TensorView& o_acc, const TensorView& lse_acc, const TensorView& o_part,
           const TensorView& lse_part, cudaStream_t stream);

// t[b,n,h,d] = stddev * z, z standard normal from a hash of (seed, logical index): the same seed
// gives the same values whatever the strides. For benchmarks and tests (no host transfer).
void randn(const TensorView& t, uint64_t seed, double stddev, cudaStream_t stream);

}  // namespace longattn::cuda
