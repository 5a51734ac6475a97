// The CUDA backend: the kernel contract on one GPU. Memory through cudaMalloc with current and
// peak accounting, every operation on one work stream, the flash kernels of flash_attention.hpp,
// the element-wise kernels of elementwise.cu, device masks of mask_build.cu, gemm via cuBLAS.
#include "kernels/cuda/cuda_backend.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/flash_attention.hpp"
#include "kernels/cuda/mask_build.hpp"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"

namespace longattn {
namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024.0 && u < 5) {
    b /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", b, units[u]);
  return buf;
}

// Makes `device` current for the scope and restores the caller's device afterwards, so a
// backend works whatever device the calling thread had selected.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) CUDA_CHECK(cudaSetDevice(device));
    device_ = device;
  }
  ~DeviceGuard() {
    if (prev_ != device_) cudaSetDevice(prev_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0, device_ = 0;
};

// A view of a row-major matrix as a [1, rows, 1, cols] tensor with row stride ld.
TensorView matrix_tensor(const MatrixView& m) {
  TensorView t;
  t.data = m.data;
  t.dtype = m.dtype;
  t.device = DeviceKind::Cuda;
  t.B = 1;
  t.N = m.rows;
  t.H = 1;
  t.D = m.cols;
  t.sb = m.rows * m.ld;
  t.sn = m.ld;
  t.sh = m.cols;
  t.sd = 1;
  return t;
}

cudaDataType_t cuda_dtype(DType t) {
  switch (t) {
    case DType::F64: return CUDA_R_64F;
    case DType::F32: return CUDA_R_32F;
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

bool same_shape(const TensorView& a, const TensorView& b) {
  return a.B == b.B && a.N == b.N && a.H == b.H && a.D == b.D;
}

class CudaBackendImpl;

// A mask whose CSR arrays live on the device; the host copy stays for planning and tests.
class CudaMask final : public PreparedMask {
 public:
  CudaMask(Backend& be, BlockMask host, cuda::DeviceMaskArrays dev)
      : be_(be), host_(std::move(host)), dev_(dev), meta_(host_mask_view(host_)) {}
  ~CudaMask() override {
    if (!dev_.storage) return;
    try {
      be_.deallocate(dev_.storage);
    } catch (const std::exception& e) {  // a destructor must not throw; say what was lost
      log(LogLevel::Error, "freeing a device mask failed: ", e.what());
    }
  }
  BlockMaskView view() const override {
    // The host view's sizes and planning metadata, with the device arrays.
    BlockMaskView v = meta_;
    v.row_ptr = dev_.row_ptr;
    v.col_idx = dev_.col_idx;
    v.partial = dev_.partial;
    return v;
  }
  const BlockMask& host() const override { return host_; }

 private:
  Backend& be_;
  BlockMask host_;
  cuda::DeviceMaskArrays dev_;
  BlockMaskView meta_;  // host_mask_view(host_), computed once
};

class CudaBackendImpl final : public CudaBackend {
 public:
  explicit CudaBackendImpl(const CudaBackendOptions& opt) : opt_(opt) {
    const int count = cuda_device_count();
    LONGATTN_CHECK_ARG(opt.device >= 0 && opt.device < count, "device", opt.device,
                       "must be in [0, " + std::to_string(count) + ") (CUDA devices visible)");
    DeviceGuard g(opt_.device);
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, opt_.device));
    device_name_ = prop.name;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    // The pool of a call's temporaries: stream-ordered (no device synchronisation per call) and
    // caching (freed blocks serve the next call); allocate() trims it when the device runs out.
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = opt_.device;
    CUDA_CHECK(cudaMemPoolCreate(&pool_, &props));
    uint64_t keep = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  ~CudaBackendImpl() override {
    // Best effort: a destructor cannot report errors, and a broken context must not abort here.
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(opt_.device);
    cudaStreamSynchronize(stream_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
    cudaMemPoolDestroy(pool_);
    cudaSetDevice(prev);
  }

  DeviceKind device() const override { return DeviceKind::Cuda; }
  std::string name() const override {
    return "cuda:" + std::to_string(opt_.device) + " (" + device_name_ + ")";
  }
  int device_index() const override { return opt_.device; }
  void* stream() const override { return stream_; }

  // ---- memory ----------------------------------------------------------------------------
  void* allocate(size_t bytes) override {
    DeviceGuard g(opt_.device);
    void* p = nullptr;
    const size_t n = std::max<size_t>(bytes, 1);  // every allocation gets a distinct address
    cudaError_t e = cudaMalloc(&p, n);
    if (e == cudaErrorMemoryAllocation) {  // give the scratch pool's cached blocks back, retry
      cudaGetLastError();
      trim_scratch();
      e = cudaMalloc(&p, n);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
      throw OutOfMemory(oom_message("cudaMalloc", bytes));
    }
    if (e != cudaSuccess) cuda::throw_cuda_error(e, "cudaMalloc(&p, n)", __FILE__, __LINE__);
    account(p, bytes);
    return p;
  }
  void deallocate(void* p) override {
    if (!p) return;
    DeviceGuard g(opt_.device);
    unaccount(p);
    // Work queued on the stream may still read p; cudaFree must not race it. A failed
    // synchronisation reports the asynchronous error of an earlier kernel, after the free.
    const cudaError_t sync = cudaStreamSynchronize(stream_);
    CUDA_CHECK(cudaFree(p));
    if (sync != cudaSuccess)
      cuda::throw_cuda_error(sync, "cudaStreamSynchronize(stream_) before cudaFree", __FILE__,
                             __LINE__);
  }
  void* allocate_scratch(size_t bytes) override {
    DeviceGuard g(opt_.device);
    return scratch_alloc(bytes);
  }
  void release_scratch(void* p) override {
    if (!p) return;
    DeviceGuard g(opt_.device);
    scratch_free(p);
  }
  size_t peak_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  size_t current_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = current_;
  }
  void synchronize() override {
    DeviceGuard g(opt_.device);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- masks -----------------------------------------------------------------------------
  // The Hopper kernels (and the portable kernels' 128-row CTAs) want 128-blocks.
  int64_t preferred_tile() const override { return 128; }
  std::unique_ptr<PreparedMask> prepare_mask(const BlockMask& m) override {
    m.validate();
    DeviceGuard g(opt_.device);
    BlockMask host = m;
    cuda::DeviceMaskArrays dev = cuda::upload_mask(*this, stream_, host);
    return std::make_unique<CudaMask>(*this, std::move(host), dev);
  }
  std::unique_ptr<PreparedMask> build_pattern_mask(const SparseConfig& cfg, int64_t N,
                                                   bool causal) override {
    DeviceGuard g(opt_.device);
    cuda::DeviceMaskArrays dev;
    BlockMask host = cuda::build_pattern_mask(*this, stream_, cfg, N, causal, &dev);
    return std::make_unique<CudaMask>(*this, std::move(host), dev);
  }
  std::unique_ptr<PreparedMask> build_topk_mask(const TensorView& q, const TensorView& k,
                                                const SparseConfig& cfg, bool causal) override {
    check_device(q, "q");
    check_device(k, "k");
    DeviceGuard g(opt_.device);
    cuda::DeviceMaskArrays dev;
    BlockMask host = cuda::build_topk_mask(*this, stream_, q, k, cfg, causal, &dev);
    return std::make_unique<CudaMask>(*this, std::move(host), dev);
  }
  std::vector<double> block_mean_scores(const TensorView& q, const TensorView& k,
                                        int64_t block_size) override {
    check_device(q, "q");
    check_device(k, "k");
    DeviceGuard g(opt_.device);
    return cuda::block_mean_scores_host(*this, stream_, q, k, block_size);
  }

  // ---- attention -------------------------------------------------------------------------
  void attention_forward(const AttnFwdParams& p) override {
    check_devices({{&p.q, "q"}, {&p.k, "k"}, {&p.v, "v"}, {&p.o, "o"}, {&p.lse, "lse"}});
    validate_forward(p);
    check_lse_f32(p.lse, "lse");
    check_supported(p.q);
    check_mask_on_device(p.mask, "mask");
    if (p.q.numel() == 0) return;
    DeviceGuard g(opt_.device);
    cuda::flash_forward(p, stream_, pool_);
    CUDA_CHECK_LAUNCH("cuda::flash_forward");
  }

  // Gradients accumulate into dq, dk, dv of any dtype. The kernels add each key row's dK and dV
  // once per call (one CTA owns a key block), so they add into dk and dv of any dtype directly
  // (one rounding, as the CPU reference). dQ gets one contribution per key block: a dq that is
  // not fp32 gets a zeroed fp32 accumulator from the scratch pool, added into it afterwards
  // (except in the deterministic mode, whose query-stationary dQ pass also adds once).
  // With p.accumulate false the gradients are overwritten: cuda::flash_backward zeroes dq (or
  // the fp32 accumulator) and writes dk and dv directly where its kernel can (else zeroes them
  // first), and the accumulator is converted into dq instead of added. Where the Hopper kernel
  // writes dk and dv at head dim 128, it adds dQ into a transposed accumulator (whatever dq's
  // dtype), written into dq after it (cuda::backward_dq_accumulator says which and how large).
  void attention_backward(const AttnBwdParams& p) override {
    check_devices({{&p.q, "q"}, {&p.k, "k"}, {&p.v, "v"}, {&p.o, "o"}, {&p.d_o, "d_o"},
                   {&p.lse, "lse"}, {&p.dq, "dq"}, {&p.dk, "dk"}, {&p.dv, "dv"}});
    validate_backward(p);
    check_lse_f32(p.lse, "lse");
    if (p.delta.data) {
      check_device(p.delta, "delta");
      check_lse_f32(p.delta, "delta");
    }
    check_supported(p.q);
    check_mask_on_device(p.mask, "mask");
    check_mask_on_device(p.mask_t, "mask_t");
    if (p.q.numel() == 0 || p.k.numel() == 0) {
      if (!p.accumulate) {  // no pair seen: zero gradients
        DeviceGuard g(opt_.device);
        for (const TensorView* t : {&p.dq, &p.dk, &p.dv})
          if (t->numel() > 0) cuda::fill(*t, 0.0, stream_);
      }
      return;
    }
    DeviceGuard g(opt_.device);
    AttnBwdParams run = p;
    run.deterministic = p.deterministic || opt_.deterministic;
    const cuda::DqAccumulator acc = cuda::backward_dq_accumulator(run);
    if (acc.floats == 0) {
      cuda::flash_backward(run, stream_, pool_);
      CUDA_CHECK_LAUNCH("cuda::flash_backward");
      return;
    }
    void* buf = scratch_alloc(acc.floats * sizeof(float));
    try {
      cuda::flash_backward(run, stream_, pool_, buf, &acc);
      CUDA_CHECK_LAUNCH("cuda::flash_backward");
    } catch (...) {
      scratch_free(buf);
      throw;
    }
    scratch_free(buf);
  }

  // ---- element-wise ----------------------------------------------------------------------
  void merge(const TensorView& o_acc, const TensorView& lse_acc, const TensorView& o_part,
             const TensorView& lse_part) override {
    DeviceGuard g(opt_.device);
    cuda::merge(o_acc, lse_acc, o_part, lse_part, stream_);
  }
  void fill(const TensorView& t, double value) override {
    DeviceGuard g(opt_.device);
    cuda::fill(t, value, stream_);
  }
  void scale(const TensorView& t, double alpha) override {
    DeviceGuard g(opt_.device);
    cuda::scale(t, alpha, stream_);
  }
  void axpy(const TensorView& dst, double alpha, const TensorView& src) override {
    DeviceGuard g(opt_.device);
    cuda::axpy(dst, alpha, src, stream_);
  }
  void copy(const TensorView& dst, const TensorView& src) override {
    DeviceGuard g(opt_.device);
    cuda::copy(dst, src, stream_);
  }
  void copy_scaled(const TensorView& dst, double alpha, const TensorView& src) override {
    DeviceGuard g(opt_.device);
    cuda::copy_scaled(dst, alpha, src, stream_);
  }
  void randn(const TensorView& t, uint64_t seed, double stddev) override {
    DeviceGuard g(opt_.device);
    cuda::randn(t, seed, stddev, stream_);
  }

  // ---- host <-> device -------------------------------------------------------------------
  // Host-side conversion into a contiguous staging tensor of the device dtype (the CPU's
  // rounding rules), one copy to the device, then a strided device copy when dst is strided.
  void upload(const TensorView& dst, const TensorView& host_src) override {
    check_device(dst, "dst");
    LONGATTN_CHECK_ARG(host_src.device == DeviceKind::Cpu, "host_src", "a device view",
                       "must be a host view");
    LONGATTN_CHECK_ARG(same_shape(dst, host_src), "host_src", host_src.shape_string(),
                       "must match dst " + dst.shape_string());
    if (dst.numel() == 0) return;
    DeviceGuard g(opt_.device);
    const size_t bytes = static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype);
    Tensor stage;
    const void* src_bytes = host_src.data;
    if (host_src.dtype != dst.dtype || !host_src.is_contiguous()) {
      stage = Tensor(dst.dtype, dst.B, dst.N, dst.H, dst.D);
      stage.copy_from(host_src);
      src_bytes = stage.data();
    }
    if (dst.is_contiguous()) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data, src_bytes, bytes, cudaMemcpyHostToDevice, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      return;
    }
    void* tmp = allocate(bytes);
    try {
      CUDA_CHECK(cudaMemcpyAsync(tmp, src_bytes, bytes, cudaMemcpyHostToDevice, stream_));
      cuda::copy(dst, make_view(tmp, dst.dtype, dst.B, dst.N, dst.H, dst.D, DeviceKind::Cuda),
                 stream_);
    } catch (...) {
      release_quietly(tmp);
      throw;
    }
    deallocate(tmp);  // synchronises the stream
  }

  // A strided source is first packed on the device, copied to a host staging tensor of its
  // dtype, then converted into host_dst on the host.
  void download(const TensorView& host_dst, const TensorView& src) override {
    check_device(src, "src");
    LONGATTN_CHECK_ARG(host_dst.device == DeviceKind::Cpu, "host_dst", "a device view",
                       "must be a host view");
    LONGATTN_CHECK_ARG(same_shape(host_dst, src), "host_dst", host_dst.shape_string(),
                       "must match src " + src.shape_string());
    if (src.numel() == 0) return;
    DeviceGuard g(opt_.device);
    const size_t bytes = static_cast<size_t>(src.numel()) * dtype_size(src.dtype);
    const bool direct = host_dst.dtype == src.dtype && host_dst.is_contiguous();
    Tensor stage;
    void* dst_bytes = host_dst.data;
    if (!direct) {
      stage = Tensor(src.dtype, src.B, src.N, src.H, src.D);
      dst_bytes = stage.data();
    }
    if (src.is_contiguous()) {
      CUDA_CHECK(cudaMemcpyAsync(dst_bytes, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
    } else {
      void* tmp = allocate(bytes);
      try {
        cuda::copy(make_view(tmp, src.dtype, src.B, src.N, src.H, src.D, DeviceKind::Cuda), src,
                   stream_);
        CUDA_CHECK(cudaMemcpyAsync(dst_bytes, tmp, bytes, cudaMemcpyDeviceToHost, stream_));
      } catch (...) {
        release_quietly(tmp);
        throw;
      }
      deallocate(tmp);  // synchronises the stream
    }
    if (!direct) copy_view(host_dst, stage.view());
  }

  // ---- gemm ------------------------------------------------------------------------------
  // Row-major C = alpha op(A) op(B) + beta C through column-major cuBLAS: a row-major matrix is
  // its transpose in column-major order, so C^T = op(B)^T op(A)^T is computed, i.e. cuBLAS gets
  // (B, A) swapped with m = cols(C), n = rows(C). Accumulation in fp32 (fp64 for fp64 inputs);
  // dtype combinations cuBLAS lacks go through fp32 (or fp64) copies.
  void gemm(bool ta, bool tb, double alpha, const MatrixView& a, const MatrixView& b, double beta,
            const MatrixView& c) override {
    const int64_t M = ta ? a.cols : a.rows, K = ta ? a.rows : a.cols;
    const int64_t Kb = tb ? b.cols : b.rows, N = tb ? b.rows : b.cols;
    LONGATTN_CHECK_ARG(K == Kb && c.rows == M && c.cols == N, "gemm shapes",
                       std::to_string(M) + "x" + std::to_string(K) + " * " + std::to_string(Kb) +
                           "x" + std::to_string(N) + " -> " + std::to_string(c.rows) + "x" +
                           std::to_string(c.cols),
                       "inner and outer dimensions must agree");
    for (const auto& [m, n] : std::initializer_list<std::pair<const MatrixView*, const char*>>{
             {&a, "a"}, {&b, "b"}, {&c, "c"}}) {
      LONGATTN_CHECK_ARG(m->ld >= std::max<int64_t>(m->cols, 1), std::string(n) + ".ld", m->ld,
                         "must be >= cols " + std::to_string(m->cols));
      LONGATTN_CHECK_ARG(m->rows * m->cols == 0 || m->data != nullptr, n, "null data",
                         "must point at device memory");
    }
    if (M == 0 || N == 0) return;
    DeviceGuard g(opt_.device);
    if (K == 0) {  // op(A) op(B) is the zero matrix
      const TensorView cv = matrix_tensor(c);
      if (beta == 0.0)
        cuda::fill(cv, 0.0, stream_);
      else
        cuda::scale(cv, beta, stream_);
      return;
    }
    const bool any64 = a.dtype == DType::F64 || b.dtype == DType::F64 || c.dtype == DType::F64;
    const bool native =
        a.dtype == b.dtype &&
        (any64 ? (a.dtype == DType::F64 && c.dtype == DType::F64)
               : (c.dtype == a.dtype || c.dtype == DType::F32));
    if (native) {
      gemm_native(ta, tb, alpha, a, b, beta, c, M, N, K);
      return;
    }
    // Convert what cuBLAS cannot mix into one common type, compute, convert C back.
    const DType common = any64 ? DType::F64 : DType::F32;
    std::vector<void*> temps;
    auto converted = [&](const MatrixView& m, bool need_values) {
      if (m.dtype == common) return m;
      MatrixView t{nullptr, common, m.rows, m.cols, m.cols};
      t.data = allocate(static_cast<size_t>(m.rows * m.cols) * dtype_size(common));
      temps.push_back(t.data);
      if (need_values) cuda::copy(matrix_tensor(t), matrix_tensor(m), stream_);
      return t;
    };
    try {
      const MatrixView a2 = converted(a, true), b2 = converted(b, true);
      const MatrixView c2 = converted(c, beta != 0.0);
      gemm_native(ta, tb, alpha, a2, b2, beta, c2, M, N, K);
      if (c2.data != c.data) cuda::copy(matrix_tensor(c), matrix_tensor(c2), stream_);
    } catch (...) {
      for (void* t : temps) release_quietly(t);
      throw;
    }
    for (void* t : temps) deallocate(t);
  }

 private:
  void gemm_native(bool ta, bool tb, double alpha, const MatrixView& a, const MatrixView& b,
                   double beta, const MatrixView& c, int64_t M, int64_t N, int64_t K) {
    LONGATTN_CHECK_ARG(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "gemm size",
                       std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K),
                       "each dimension must fit cuBLAS's 32-bit int");
    const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    if (a.dtype == DType::F64) {
      const double al = alpha, be = beta;
      CUBLAS_CHECK(cublasGemmEx(cublas_, op_b, op_a, m, n, k, &al, b.data, CUDA_R_64F,
                                static_cast<int>(b.ld), a.data, CUDA_R_64F, static_cast<int>(a.ld),
                                &be, c.data, CUDA_R_64F, static_cast<int>(c.ld),
                                CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const bool tf32 = opt_.allow_tf32 && a.dtype == DType::F32;
    CUBLAS_CHECK(cublasGemmEx(cublas_, op_b, op_a, m, n, k, &al, b.data, cuda_dtype(b.dtype),
                              static_cast<int>(b.ld), a.data, cuda_dtype(a.dtype),
                              static_cast<int>(a.ld), &be, c.data, cuda_dtype(c.dtype),
                              static_cast<int>(c.ld),
                              tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  }

  void check_devices(
      std::initializer_list<std::pair<const TensorView*, const char*>> views) const {
    for (const auto& [t, n] : views) check_device(*t, n);
  }
  void check_device(const TensorView& t, const char* name) const {
    LONGATTN_CHECK_ARG(t.device == DeviceKind::Cuda, name, "a host view " + t.shape_string(),
                       "must live on the CUDA device (" + this->name() + ")");
  }
  static void check_lse_f32(const TensorView& t, const char* name) {
    LONGATTN_CHECK_ARG(t.dtype == DType::F32, name, dtype_name(t.dtype),
                       "must be fp32 on the CUDA backend");
  }
  static void check_supported(const TensorView& q) {
    LONGATTN_CHECK_ARG(cuda::flash_supports(q.dtype, q.D),
                       "q", std::string(dtype_name(q.dtype)) + " head_dim " + std::to_string(q.D),
                       "this dtype and head dimension have no CUDA attention kernel");
  }
  // A mask view must come from this backend's prepare_mask (device memory), not a host mask.
  void check_mask_on_device(const BlockMaskView& m, const char* name) const {
    LONGATTN_CHECK_ARG(m.row_ptr != nullptr, name, "null row_ptr", "must be a prepared mask");
    cudaPointerAttributes attr{};
    const cudaError_t e = cudaPointerGetAttributes(&attr, m.row_ptr);
    if (e != cudaSuccess) cudaGetLastError();
    const bool on_device = e == cudaSuccess && (attr.type == cudaMemoryTypeDevice ||
                                                attr.type == cudaMemoryTypeManaged);
    LONGATTN_CHECK_ARG(on_device, name, "host memory",
                       "must come from prepare_mask of the CUDA backend");
  }
  std::string oom_message(const char* what, size_t bytes) const {
    size_t free_b = 0, total_b = 0;
    const bool info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    if (!info) cudaGetLastError();
    std::string msg = name() + ": out of device memory: " + what + " asked for " +
                      human_bytes(static_cast<double>(bytes)) + " (" + std::to_string(bytes) +
                      " bytes)";
    if (info)
      msg += "; " + human_bytes(static_cast<double>(free_b)) + " free of " +
             human_bytes(static_cast<double>(total_b));
    msg += "; longattn holds " + human_bytes(static_cast<double>(current_bytes())) + " (peak " +
           human_bytes(static_cast<double>(peak_bytes())) + ")";
    return msg;
  }
  void account(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    current_ += bytes;
    peak_ = std::max(peak_, current_);
  }
  void unaccount(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    LONGATTN_CHECK_ARG(it != sizes_.end(), "pointer", p, "was not allocated by " + name());
    current_ -= it->second;
    sizes_.erase(it);
  }
  // A call's temporary, ordered on the work stream: later work on the stream may use it, and
  // scratch_free returns it to the pool once that work is done, without a synchronisation.
  // Counted in current_bytes / peak_bytes while held.
  void* scratch_alloc(size_t bytes) {
    void* p = nullptr;
    const size_t n = std::max<size_t>(bytes, 1);
    cudaError_t e = cudaMallocFromPoolAsync(&p, n, pool_, stream_);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      trim_scratch();
      e = cudaMallocFromPoolAsync(&p, n, pool_, stream_);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw OutOfMemory(oom_message("the scratch pool", bytes));
    }
    if (e != cudaSuccess)
      cuda::throw_cuda_error(e, "cudaMallocFromPoolAsync", __FILE__, __LINE__);
    account(p, bytes);
    return p;
  }
  void scratch_free(void* p) noexcept {
    try {
      unaccount(p);
    } catch (...) {
    }
    cudaFreeAsync(p, stream_);
  }
  // Cached blocks of the scratch pool back to the device (after the work that used them).
  void trim_scratch() noexcept {
    cudaStreamSynchronize(stream_);
    cudaMemPoolTrimTo(pool_, 0);
    cudaGetLastError();
  }
  // Frees during error handling, where a second error must not replace the first.
  void release_quietly(void* p) noexcept {
    try {
      deallocate(p);
    } catch (...) {
    }
  }

  CudaBackendOptions opt_;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  size_t current_ = 0, peak_ = 0;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return n;
}

std::string cuda_device_name(int device) {
  if (device < 0 || device >= cuda_device_count()) return "";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return prop.name;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  CudaBackendOptions o;
  o.device = device;
  return make_cuda_backend(o);
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackendImpl>(options);
}

CudaBackend& as_cuda(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  LONGATTN_CHECK_ARG(c != nullptr, "backend", be.name(), "must be a CUDA backend");
  return *c;
}

}  // namespace longattn
