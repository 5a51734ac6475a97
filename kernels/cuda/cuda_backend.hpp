// The CUDA backend of the kernel contract (kernels/backend.hpp) on one GPU: cudaMalloc with
// current/peak accounting, one work stream, masks copied to the device, the flash kernels,
// element-wise kernels, cuBLAS gemm. Declared without CUDA types so host code can include it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "kernels/backend.hpp"

namespace longattn {

struct CudaBackendOptions {
  int device = 0;
  // gemm: fp32 inputs use plain fp32 math unless TF32 tensor cores are explicitly allowed.
  bool allow_tf32 = false;
  // attention_backward: ask the kernels for the deterministic (reproducible) reduction order
  // even when a call does not request it.
  bool deterministic = false;
};

// The CUDA-specific surface the distributed runtime needs beside the Backend interface:
// the device and the work stream, so an NCCL communicator can order its own stream against
// the kernels with events (cudaEventRecord on stream(), cudaStreamWaitEvent on its own).
// Every Backend operation is issued on stream(); allocate/deallocate, prepare_mask, upload,
// download and the mask builders return with the stream synchronised.
class CudaBackend : public Backend {
 public:
  virtual int device_index() const = 0;
  // The cudaStream_t every operation of this backend is issued on (as void*).
  virtual void* stream() const = 0;
  // Bytes currently held through allocate() and by calls in flight (their scratch).
  virtual size_t current_bytes() const = 0;
  // Fills a device view with stddev * N(0, 1) values drawn from a hash of (seed, logical
  // index): no host transfer, for benchmarks and tests.
  virtual void randn(const TensorView& t, uint64_t seed, double stddev = 1.0) = 0;
  // Device-side mask construction (kernels/cuda/mask_build.hpp), equal to the host's
  // sparse_block_mask(cfg, N, causal); the mask keeps its device arrays and a host copy.
  virtual std::unique_ptr<PreparedMask> build_pattern_mask(const SparseConfig& cfg, int64_t N,
                                                           bool causal) = 0;
  // content_adaptive: block-mean scores of the device views q and k, top-k per query block.
  virtual std::unique_ptr<PreparedMask> build_topk_mask(const TensorView& q, const TensorView& k,
                                                        const SparseConfig& cfg,
                                                        bool causal) = 0;
  // The block-mean scores of that construction, copied to the host (nb x nb, row-major).
  virtual std::vector<double> block_mean_scores(const TensorView& q, const TensorView& k,
                                                int64_t block_size) = 0;
};

// Number of CUDA devices visible to this process; 0 when there is no GPU or no driver.
int cuda_device_count();

// A backend on `device` (throws InvalidArgument when it does not exist).
std::unique_ptr<Backend> make_cuda_backend(int device = 0);
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// The CUDA surface of a backend made by make_cuda_backend; throws InvalidArgument otherwise.
CudaBackend& as_cuda(Backend& be);

// Name of the device ("NVIDIA H100 80GB HBM3"); "" when it does not exist.
std::string cuda_device_name(int device);

}  // namespace longattn
