// The compute backend behind the kernel contract: memory, the attention kernels, merge and the
// few element-wise operations the variants need. CPU (reference, fp64 accumulation) and CUDA
// implement it; attention/ code is written once against this interface.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "kernels/contract.hpp"

namespace longattn {

// A mask copied where the backend's kernels can read it.
class PreparedMask {
 public:
  virtual ~PreparedMask() = default;
  virtual BlockMaskView view() const = 0;
  virtual const BlockMask& host() const = 0;
};

// A row-major matrix view: element (r, c) at data[r * ld + c].
struct MatrixView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0, ld = 0;
};

class Backend {
 public:
  Backend();
  virtual ~Backend() = default;
  // Unique per backend object of this process (never reused), so callers can key caches of
  // prepared masks and buffers by it.
  uint64_t instance_id() const { return instance_id_; }
  virtual DeviceKind device() const = 0;
  virtual std::string name() const = 0;

  virtual void* allocate(size_t bytes) = 0;  // throws OutOfMemory saying how much was needed
  virtual void deallocate(void* p) = 0;
  // A call's temporary, ordered with this backend's operations: those issued after it may use
  // it, and release_scratch hands it back once those issued before the release are done,
  // without waiting for them (on the GPU: a stream-ordered pool, no synchronisation and no
  // cudaMalloc per call). Only this backend's operations may touch it, never work on another
  // stream (communication). Counted in peak_bytes while held. Default: allocate / deallocate.
  virtual void* allocate_scratch(size_t bytes) { return allocate(bytes); }
  virtual void release_scratch(void* p) { deallocate(p); }
  virtual std::unique_ptr<PreparedMask> prepare_mask(const BlockMask& m) = 0;
  // The mask block (kernel tile) this backend's kernels run fastest with. Variants whose
  // results do not depend on the tile (dense, dilated) use max(spec.block_size, this).
  virtual int64_t preferred_tile() const { return 64; }

  virtual void attention_forward(const AttnFwdParams& p) = 0;
  virtual void attention_backward(const AttnBwdParams& p) = 0;

  // (o_acc, lse_acc) <- merge((o_acc, lse_acc), (o_part, lse_part)), see kernels/merge.hpp.
  virtual void merge(const TensorView& o_acc, const TensorView& lse_acc,
                     const TensorView& o_part, const TensorView& lse_part) = 0;
  virtual void fill(const TensorView& t, double value) = 0;
  virtual void scale(const TensorView& t, double alpha) = 0;  // t *= alpha
  // dst += alpha * src (shapes equal, dtypes may differ).
  virtual void axpy(const TensorView& dst, double alpha, const TensorView& src) = 0;
  // dst = src with dtype conversion; both on this backend.
  virtual void copy(const TensorView& dst, const TensorView& src) = 0;
  // dst = alpha * src, computed in fp64 and rounded once to dst's dtype (alpha = 1: copy).
  virtual void copy_scaled(const TensorView& dst, double alpha, const TensorView& src) = 0;
  // Host <-> backend copies of equal-shape views (dtypes may differ).
  virtual void upload(const TensorView& dst, const TensorView& host_src) = 0;
  virtual void download(const TensorView& host_dst, const TensorView& src) = 0;
  // C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T (row-major views, fp32+ accumulation).
  // Used by the multihead projections (cuBLAS on the GPU).
  virtual void gemm(bool trans_a, bool trans_b, double alpha, const MatrixView& a,
                    const MatrixView& b, double beta, const MatrixView& c) = 0;
  virtual void synchronize() {}
  // Peak bytes allocated through this backend since creation (or the last reset).
  virtual size_t peak_bytes() const = 0;
  virtual void reset_peak() = 0;

 private:
  uint64_t instance_id_;
};

// The CPU reference backend (host memory, fp64 accumulation, threads over batch x heads).
std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);

// An owning buffer on a backend, viewed as a contiguous [B, N, H, D] tensor.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(Backend& be, DType dtype, int64_t B, int64_t N, int64_t H, int64_t D);
  // A call's temporary from Backend::allocate_scratch (its rules apply: only the backend's own
  // operations may use it).
  static DeviceTensor scratch(Backend& be, DType dtype, int64_t B, int64_t N, int64_t H,
                              int64_t D);
  ~DeviceTensor();
  DeviceTensor(DeviceTensor&& o) noexcept;
  DeviceTensor& operator=(DeviceTensor&& o) noexcept;
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  const TensorView& view() const { return view_; }
  void* data() const { return view_.data; }

 private:
  void release() noexcept;
  Backend* be_ = nullptr;
  TensorView view_;
  bool scratch_ = false;
};

}  // namespace longattn
