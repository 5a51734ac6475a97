// Device-side construction of block-sparse masks (CUDA backend): every pattern of
// attention/patterns.hpp evaluated per block pair on the GPU, and the content-adaptive top-k
// from block means of q and k. The results equal sparse_block_mask() on the host.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "attention/spec.hpp"
#include "kernels/backend.hpp"

namespace longattn::cuda {

// CSR arrays of a mask in one device allocation made through Backend::allocate (the caller
// frees `storage` with Backend::deallocate).
struct DeviceMaskArrays {
  void* storage = nullptr;
  int64_t* row_ptr = nullptr;
  int32_t* col_idx = nullptr;
  uint8_t* partial = nullptr;
};

// Allocates and fills the device arrays of a host mask (the copy prepare_mask makes).
DeviceMaskArrays upload_mask(Backend& be, cudaStream_t stream, const BlockMask& m);

// The mask sparse_block_mask(cfg, N, causal) builds, constructed on the device; returns the
// host copy and stores the device arrays in *out. cfg.pattern must not be content_adaptive
// (see build_topk_mask). Synchronises the stream before returning.
BlockMask build_pattern_mask(Backend& be, cudaStream_t stream, const SparseConfig& cfg, int64_t N,
                             bool causal, DeviceMaskArrays* out);

// Block-mean scores on the device, as attention/patterns.hpp defines them:
// s(i, j) = mean over batch and heads of <mean of q over block i, mean of k over block j>,
// an nb x nb row-major fp64 matrix in device memory allocated through `be`.
double* block_mean_scores(Backend& be, cudaStream_t stream, const TensorView& q,
                          const TensorView& k, int64_t block_size);
// The same scores copied to the host (tests compare them with the CPU's).
std::vector<double> block_mean_scores_host(Backend& be, cudaStream_t stream, const TensorView& q,
                                           const TensorView& k, int64_t block_size);

// Content-adaptive mask: scores from q and k on the device, the top-k key blocks of every query
// block (ties to the lower block index) with the diagonal kept, causal-trimmed when causal;
// equal to sparse_block_mask(cfg, N, causal, &scores) for the same scores. cfg.pattern must be
// content_adaptive.
BlockMask build_topk_mask(Backend& be, cudaStream_t stream, const TensorView& q,
                          const TensorView& k, const SparseConfig& cfg, bool causal,
                          DeviceMaskArrays* out);
// The top-k selection alone, from device scores (nb x nb fp64).
BlockMask topk_mask_from_scores(Backend& be, cudaStream_t stream, const double* scores,
                                int64_t nb, const SparseConfig& cfg, bool causal,
                                DeviceMaskArrays* out);

}  // namespace longattn::cuda
