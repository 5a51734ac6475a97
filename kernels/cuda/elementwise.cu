// Element-wise kernels of the CUDA backend over strided 4-D views: fill, scale, axpy, copy with
// dtype conversion, the softmax-state merge (kernels/merge.hpp) and a hashed normal fill.
// Layout of every launch: threadIdx.x walks the head dimension, each y-row one (b, n, h) row.
#include <algorithm>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/device_dtype.cuh"
#include "kernels/cuda/elementwise.hpp"
#include "kernels/merge.hpp"
#include "runtime/error.hpp"

namespace longattn::cuda {
namespace {

// A strided view as the kernels see it (plain values, passed by value).
struct DevView {
  void* data;
  int64_t N, H, D;
  int64_t sb, sn, sh, sd;
};

DevView dev_view(const TensorView& t) {
  return {t.data, t.N, t.H, t.D, t.sb, t.sn, t.sh, t.sd};
}

// Arithmetic uses __dmul_rn/__dadd_rn (no fused multiply-add) so results round exactly as the
// CPU backend's fp64 expressions do; conversions are device_dtype.cuh's.
template <typename T>
__device__ __forceinline__ T* elem(const DevView& v, int64_t b, int64_t n, int64_t h, int64_t d) {
  return static_cast<T*>(v.data) + (b * v.sb + n * v.sn + h * v.sh + d * v.sd);
}

// Row r of the B*N*H rows of a view -> (b, n, h).
struct RowIndex {
  int64_t b, n, h;
};
__device__ __forceinline__ RowIndex split_row(int64_t r, int64_t N, int64_t H) {
  const int64_t h = r % H;
  const int64_t bn = r / H;
  return {bn / N, bn % N, h};
}

// Launch shape: x over the head dimension (up to a warp), y over rows, grid-stride over rows.
struct Launch {
  dim3 grid, block;
};
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxGrid = 1 << 20;

Launch launch_for(int64_t rows, int64_t D) {
  int tx = 1;
  while (tx < 32 && tx < D) tx *= 2;
  const int ty = kThreadsPerBlock / tx;
  const int64_t blocks = std::min<int64_t>((rows + ty - 1) / ty, kMaxGrid);
  return {dim3(static_cast<unsigned>(std::max<int64_t>(blocks, 1))), dim3(tx, ty)};
}

template <typename T>
__global__ void fill_kernel(DevView t, int64_t rows, double value) {
  const T x = from_f64<T>(value);
  for (int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y; r < rows;
       r += int64_t(gridDim.x) * blockDim.y) {
    const RowIndex ri = split_row(r, t.N, t.H);
    for (int64_t d = threadIdx.x; d < t.D; d += blockDim.x) *elem<T>(t, ri.b, ri.n, ri.h, d) = x;
  }
}

// t = alpha * t
template <typename T>
__global__ void scale_kernel(DevView t, int64_t rows, double alpha) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y; r < rows;
       r += int64_t(gridDim.x) * blockDim.y) {
    const RowIndex ri = split_row(r, t.N, t.H);
    for (int64_t d = threadIdx.x; d < t.D; d += blockDim.x) {
      T* p = elem<T>(t, ri.b, ri.n, ri.h, d);
      *p = from_f64<T>(__dmul_rn(alpha, to_f64(*p)));
    }
  }
}

// dst = dst + alpha * src, or with the `copy` flag dst = alpha * src without reading dst
// (alpha = 1: the plain copy, exact since 1 * s = s).
template <typename TD, typename TS, bool kCopy>
__global__ void axpy_kernel(DevView dst, DevView src, int64_t rows, double alpha) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y; r < rows;
       r += int64_t(gridDim.x) * blockDim.y) {
    const RowIndex ri = split_row(r, dst.N, dst.H);
    for (int64_t d = threadIdx.x; d < dst.D; d += blockDim.x) {
      const double s = to_f64(*elem<TS>(src, ri.b, ri.n, ri.h, d));
      TD* p = elem<TD>(dst, ri.b, ri.n, ri.h, d);
      *p = kCopy ? from_f64<TD>(__dmul_rn(alpha, s))
                 : from_f64<TD>(__dadd_rn(to_f64(*p), __dmul_rn(alpha, s)));
    }
  }
}

// The same operations over whole contiguous tensors of equal layout, four elements a thread in
// one aligned vector access each side (the caller checks alignment and a multiple of 4), with
// the row kernels' arithmetic. kOp: 0 dst = alpha * src, 1 dst += alpha * src, 2 dst *= alpha.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};
template <typename TD, typename TS, int kOp>
__global__ void flat_kernel(TD* dst, const TS* src, int64_t quads, double alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < quads;
       i += int64_t(gridDim.x) * blockDim.x) {
    Quad<TD> d;
    Quad<TS> s;
    if (kOp != 2) s = reinterpret_cast<const Quad<TS>*>(src)[i];
    if (kOp != 0) d = reinterpret_cast<const Quad<TD>*>(dst)[i];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (kOp == 0) d.v[j] = from_f64<TD>(__dmul_rn(alpha, to_f64(s.v[j])));
      if (kOp == 1)
        d.v[j] = from_f64<TD>(__dadd_rn(to_f64(d.v[j]), __dmul_rn(alpha, to_f64(s.v[j]))));
      if (kOp == 2) d.v[j] = from_f64<TD>(__dmul_rn(alpha, to_f64(d.v[j])));
    }
    reinterpret_cast<Quad<TD>*>(dst)[i] = d;
  }
}

__device__ __forceinline__ double load_lse(const DevView& v, bool f64, int64_t b, int64_t n,
                                           int64_t h) {
  return f64 ? *elem<double>(v, b, n, h, 0) : double(*elem<float>(v, b, n, h, 0));
}

// A row's merge weights from the two sides' log-sum-exps.
__device__ __forceinline__ MergeWeights<double> row_weights(const DevView& lse_acc, bool acc_f64,
                                                            const DevView& lse_part,
                                                            bool part_f64, const RowIndex& ri) {
  return merge_weights(load_lse(lse_acc, acc_f64, ri.b, ri.n, ri.h),
                       load_lse(lse_part, part_f64, ri.b, ri.n, ri.h));
}

// One merged element; 0 * inf would be NaN: a side with weight 0 is skipped, not multiplied.
__device__ __forceinline__ double merged(const MergeWeights<double>& w, double acc, double part) {
  double x = 0.0;
  if (w.w1 != 0.0) x = __dmul_rn(w.w1, acc);
  if (w.w2 != 0.0) x = __dadd_rn(x, __dmul_rn(w.w2, part));
  return x;
}

__device__ __forceinline__ void store_lse(const DevView& lse_acc, bool acc_f64, const RowIndex& ri,
                                          double lse) {
  if (acc_f64)
    *elem<double>(lse_acc, ri.b, ri.n, ri.h, 0) = lse;
  else
    *elem<float>(lse_acc, ri.b, ri.n, ri.h, 0) = static_cast<float>(lse);
}

// L = logaddexp(L_acc, L_part), O_acc = O_acc exp(L_acc - L) + O_part exp(L_part - L), with the
// -inf cases of merge_weights (an empty side contributes nothing; both empty stays empty).
// The loop is uniform over the block so the barrier between reading and writing L_acc is legal.
template <typename TA, typename TP>
__global__ void merge_kernel(DevView o_acc, DevView lse_acc, bool acc_f64, DevView o_part,
                             DevView lse_part, bool part_f64, int64_t rows) {
  for (int64_t base = blockIdx.x * int64_t(blockDim.y); base < rows;
       base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const bool active = r < rows;
    RowIndex ri{0, 0, 0};
    MergeWeights<double> w{0.0, 0.0, 0.0};
    if (active) {
      ri = split_row(r, o_acc.N, o_acc.H);
      w = row_weights(lse_acc, acc_f64, lse_part, part_f64, ri);
    }
    __syncthreads();  // every lane has read L_acc before one lane overwrites it
    if (active) {
      for (int64_t d = threadIdx.x; d < o_acc.D; d += blockDim.x) {
        TA* pa = elem<TA>(o_acc, ri.b, ri.n, ri.h, d);
        *pa = from_f64<TA>(merged(w, to_f64(*pa), to_f64(*elem<TP>(o_part, ri.b, ri.n, ri.h, d))));
      }
      if (threadIdx.x == 0) store_lse(lse_acc, acc_f64, ri, w.lse);
    }
    __syncthreads();
  }
}

// The row walk of the quad kernels: eight lanes (sub 0-7) a row, four rows (slot 0-3) a warp;
// a warp's rows start at first + slot and advance by step, the whole grid's rows a round.
constexpr int kQuadLanes = 8;
struct QuadRows {
  int sub, slot;
  int64_t first, step;
};
__device__ __forceinline__ QuadRows quad_rows() {
  constexpr int kRowsPerWarp = 32 / kQuadLanes;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  return {lane % kQuadLanes, lane / kQuadLanes, warp * kRowsPerWarp, warps * kRowsPerWarp};
}

// The same merge where both o views have unit element stride, D a multiple of 4 and every row
// 4-element aligned: eight lanes a row, four rows a warp (the row's weights, fp64 exp and log,
// computed once for four rows), four elements a lane in one vector access each side. A row
// lives in one warp, so __syncwarp orders its lanes' reads of L_acc before the write.
template <typename TA, typename TP>
__global__ void merge_quad_kernel(DevView o_acc, DevView lse_acc, bool acc_f64, DevView o_part,
                                  DevView lse_part, bool part_f64, int64_t rows) {
  const QuadRows w4 = quad_rows();
  const int sub = w4.sub;
  const int64_t quads = o_acc.D / 4;
  for (int64_t base = w4.first; base < rows; base += w4.step) {
    const int64_t r = base + w4.slot;
    const bool active = r < rows;
    RowIndex ri{0, 0, 0};
    MergeWeights<double> w{0.0, 0.0, 0.0};
    if (active) {
      ri = split_row(r, o_acc.N, o_acc.H);
      w = row_weights(lse_acc, acc_f64, lse_part, part_f64, ri);
    }
    __syncwarp();  // every lane has read L_acc before its row's first lane overwrites it
    if (active) {
      Quad<TA>* pa = reinterpret_cast<Quad<TA>*>(elem<TA>(o_acc, ri.b, ri.n, ri.h, 0));
      const Quad<TP>* pp = reinterpret_cast<const Quad<TP>*>(elem<TP>(o_part, ri.b, ri.n, ri.h, 0));
      for (int64_t q = sub; q < quads; q += kQuadLanes) {
        Quad<TA> a = pa[q];
        const Quad<TP> p = pp[q];
#pragma unroll
        for (int j = 0; j < 4; ++j) a.v[j] = from_f64<TA>(merged(w, to_f64(a.v[j]), to_f64(p.v[j])));
        pa[q] = a;
      }
      if (sub == 0) store_lse(lse_acc, acc_f64, ri, w.lse);
    }
    __syncwarp();
  }
}

// dst = alpha * src (kCopy) or dst += alpha * src over rows with unit element stride whose
// starts are 4-element aligned (strided views such as dilated rows or head ranges): eight lanes
// a row, one aligned vector access of four elements each side, the row kernel's arithmetic.
template <typename TD, typename TS, bool kCopy>
__global__ void axpy_quad_kernel(DevView dst, DevView src, int64_t rows, double alpha) {
  const QuadRows w4 = quad_rows();
  const int sub = w4.sub;
  const int64_t quads = dst.D / 4;
  for (int64_t base = w4.first; base < rows; base += w4.step) {
    const int64_t r = base + w4.slot;
    if (r >= rows) continue;
    const RowIndex ri = split_row(r, dst.N, dst.H);
    Quad<TD>* pd = reinterpret_cast<Quad<TD>*>(elem<TD>(dst, ri.b, ri.n, ri.h, 0));
    const Quad<TS>* ps = reinterpret_cast<const Quad<TS>*>(elem<TS>(src, ri.b, ri.n, ri.h, 0));
    for (int64_t q = sub; q < quads; q += kQuadLanes) {
      const Quad<TS> x = ps[q];
      Quad<TD> y;
      if (!kCopy) y = pd[q];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        y.v[j] = kCopy ? from_f64<TD>(__dmul_rn(alpha, to_f64(x.v[j])))
                       : from_f64<TD>(__dadd_rn(to_f64(y.v[j]), __dmul_rn(alpha, to_f64(x.v[j]))));
      pd[q] = y;
    }
  }
}

// splitmix64: a bijective 64-bit mix, good enough to draw independent uniforms per index.
__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// z = sqrt(-2 ln u1) cos(2 pi u2) (Box-Muller) with u1 in (0, 1], u2 in [0, 1).
template <typename T>
__global__ void randn_kernel(DevView t, int64_t rows, uint64_t seed, double stddev) {
  const uint64_t key = mix64(seed ^ 0x5851f42d4c957f2dull);
  for (int64_t r = blockIdx.x * int64_t(blockDim.y) + threadIdx.y; r < rows;
       r += int64_t(gridDim.x) * blockDim.y) {
    const RowIndex ri = split_row(r, t.N, t.H);
    for (int64_t d = threadIdx.x; d < t.D; d += blockDim.x) {
      const uint64_t idx = static_cast<uint64_t>(r * t.D + d);
      const uint64_t bits = mix64(key + mix64(idx));
      const double u1 = (static_cast<double>(bits >> 40) + 1.0) * 0x1.0p-24;
      const double u2 = static_cast<double>(bits & 0xffffffull) * 0x1.0p-24;
      const double z = sqrt(-2.0 * log(u1)) * cospi(2.0 * u2);
      *elem<T>(t, ri.b, ri.n, ri.h, d) = from_f64<T>(stddev * z);
    }
  }
}

bool same_shape(const TensorView& a, const TensorView& b) {
  return a.B == b.B && a.N == b.N && a.H == b.H && a.D == b.D;
}

void check_device_view(const TensorView& t, const char* name) {
  LONGATTN_CHECK_ARG(t.device == DeviceKind::Cuda, name, "a host view",
                     "must live on the CUDA device");
  LONGATTN_CHECK_ARG(t.numel() == 0 || t.data != nullptr, name, "null data",
                     "must point at device memory");
}

void check_pair(const TensorView& dst, const TensorView& src) {
  check_device_view(dst, "dst");
  check_device_view(src, "src");
  LONGATTN_CHECK_ARG(same_shape(dst, src), "src", src.shape_string(),
                     "must match dst " + dst.shape_string());
}

int64_t rows_of(const TensorView& t) { return t.B * t.N * t.H; }

// Whether merge_quad_kernel may take t: unit element stride, D and the row strides multiples of
// 4, the data 4-element aligned.
bool rows_quad_ok(const TensorView& t) {
  const size_t quad = 4 * dtype_size(t.dtype);
  return t.sd == 1 && t.D % 4 == 0 && t.sh % 4 == 0 && t.sn % 4 == 0 && t.sb % 4 == 0 &&
         reinterpret_cast<uintptr_t>(t.data) % quad == 0;
}

// Whether flat_kernel may take t: contiguous, a multiple of 4 elements, 4-element aligned.
bool flat_ok(const TensorView& t) {
  const size_t quad = 4 * dtype_size(t.dtype);
  return t.is_contiguous() && t.numel() % 4 == 0 &&
         reinterpret_cast<uintptr_t>(t.data) % quad == 0;
}

// Launches flat_kernel<TD, TS, kOp> over the whole of dst (and src, of the same layout).
template <typename TD, typename TS, int kOp>
void launch_flat(const TensorView& dst, const TensorView& src, double alpha,
                 cudaStream_t stream) {
  const int64_t quads = dst.numel() / 4;
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((quads + kThreads - 1) / kThreads, kMaxGrid);
  flat_kernel<TD, TS, kOp><<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0,
                             stream>>>(static_cast<TD*>(dst.data),
                                       static_cast<const TS*>(src.data), quads, alpha);
}

}  // namespace

void fill(const TensorView& t, double value, cudaStream_t stream) {
  check_device_view(t, "t");
  if (t.numel() == 0) return;
  if (value == 0.0 && t.is_contiguous()) {  // all-zero bits are +0 in every float dtype
    CUDA_CHECK(cudaMemsetAsync(t.data, 0, static_cast<size_t>(t.numel()) * dtype_size(t.dtype),
                               stream));
    return;
  }
  const Launch l = launch_for(rows_of(t), t.D);
  dispatch_dtype(t.dtype, [&](auto x) {
    using T = decltype(x);
    fill_kernel<T><<<l.grid, l.block, 0, stream>>>(dev_view(t), rows_of(t), value);
  });
  CUDA_CHECK_LAUNCH("fill_kernel");
}

void scale(const TensorView& t, double alpha, cudaStream_t stream) {
  check_device_view(t, "t");
  if (t.numel() == 0) return;
  if (flat_ok(t)) {
    dispatch_dtype(t.dtype, [&](auto x) {
      using T = decltype(x);
      launch_flat<T, T, 2>(t, t, alpha, stream);
    });
    CUDA_CHECK_LAUNCH("scale (flat_kernel)");
    return;
  }
  const Launch l = launch_for(rows_of(t), t.D);
  dispatch_dtype(t.dtype, [&](auto x) {
    using T = decltype(x);
    scale_kernel<T><<<l.grid, l.block, 0, stream>>>(dev_view(t), rows_of(t), alpha);
  });
  CUDA_CHECK_LAUNCH("scale_kernel");
}

namespace {

// dst += alpha * src (kCopy false) or dst = alpha * src (kCopy true): whole contiguous tensors by
// the vector kernel, anything else by the row kernel.
template <bool kCopy>
void two_operand(const TensorView& dst, double alpha, const TensorView& src, cudaStream_t stream) {
  check_pair(dst, src);
  if (dst.numel() == 0) return;
  if (flat_ok(dst) && flat_ok(src)) {
    dispatch_dtype(dst.dtype, [&](auto xd) {
      dispatch_dtype(src.dtype, [&](auto xs) {
        launch_flat<decltype(xd), decltype(xs), kCopy ? 0 : 1>(dst, src, alpha, stream);
      });
    });
    if constexpr (kCopy)
      CUDA_CHECK_LAUNCH("copy (flat_kernel)");
    else
      CUDA_CHECK_LAUNCH("axpy (flat_kernel)");
    return;
  }
  if (rows_quad_ok(dst) && rows_quad_ok(src)) {
    const int64_t rows = rows_of(dst);
    constexpr int kThreads = 256;  // 32 rows a block
    const int64_t blocks = std::min<int64_t>((rows + 31) / 32, kMaxGrid);
    dispatch_dtype(dst.dtype, [&](auto xd) {
      dispatch_dtype(src.dtype, [&](auto xs) {
        axpy_quad_kernel<decltype(xd), decltype(xs), kCopy>
            <<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0, stream>>>(
                dev_view(dst), dev_view(src), rows, alpha);
      });
    });
    if constexpr (kCopy)
      CUDA_CHECK_LAUNCH("copy (axpy_quad_kernel)");
    else
      CUDA_CHECK_LAUNCH("axpy_quad_kernel");
    return;
  }
  const Launch l = launch_for(rows_of(dst), dst.D);
  dispatch_dtype(dst.dtype, [&](auto xd) {
    dispatch_dtype(src.dtype, [&](auto xs) {
      using TD = decltype(xd);
      using TS = decltype(xs);
      axpy_kernel<TD, TS, kCopy>
          <<<l.grid, l.block, 0, stream>>>(dev_view(dst), dev_view(src), rows_of(dst), alpha);
    });
  });
  if constexpr (kCopy)
    CUDA_CHECK_LAUNCH("copy (axpy_kernel)");
  else
    CUDA_CHECK_LAUNCH("axpy_kernel");
}

}  // namespace

void axpy(const TensorView& dst, double alpha, const TensorView& src, cudaStream_t stream) {
  two_operand<false>(dst, alpha, src, stream);
}

void copy_scaled(const TensorView& dst, double alpha, const TensorView& src,
                 cudaStream_t stream) {
  check_pair(dst, src);
  if (alpha == 1.0 && dst.dtype == src.dtype && dst.is_contiguous() && src.is_contiguous() &&
      dst.numel() > 0) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data,
                               static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype),
                               cudaMemcpyDeviceToDevice, stream));
    return;
  }
  two_operand<true>(dst, alpha, src, stream);
}

void copy(const TensorView& dst, const TensorView& src, cudaStream_t stream) {
  copy_scaled(dst, 1.0, src, stream);
}

void merge(const TensorView& o_acc, const TensorView& lse_acc, const TensorView& o_part,
           const TensorView& lse_part, cudaStream_t stream) {
  check_pair(o_acc, o_part);
  check_device_view(lse_acc, "lse_acc");
  check_device_view(lse_part, "lse_part");
  for (const TensorView* l : {&lse_acc, &lse_part}) {
    const char* name = l == &lse_acc ? "lse_acc" : "lse_part";
    LONGATTN_CHECK_ARG(l->B == o_acc.B && l->N == o_acc.N && l->H == o_acc.H && l->D == 1, name,
                       l->shape_string(), "must be [B, N, H, 1] of o_acc " + o_acc.shape_string());
    LONGATTN_CHECK_ARG(l->dtype == DType::F32 || l->dtype == DType::F64, name,
                       dtype_name(l->dtype), "must be fp32 or fp64");
  }
  if (o_acc.numel() == 0) return;
  if (rows_quad_ok(o_acc) && rows_quad_ok(o_part)) {
    const int64_t rows = rows_of(o_acc);
    constexpr int kThreads = 256;  // 32 rows a block
    const int64_t blocks = std::min<int64_t>((rows + 31) / 32, kMaxGrid);
    dispatch_dtype(o_acc.dtype, [&](auto xa) {
      dispatch_dtype(o_part.dtype, [&](auto xp) {
        merge_quad_kernel<decltype(xa), decltype(xp)>
            <<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0, stream>>>(
                dev_view(o_acc), dev_view(lse_acc), lse_acc.dtype == DType::F64, dev_view(o_part),
                dev_view(lse_part), lse_part.dtype == DType::F64, rows);
      });
    });
    CUDA_CHECK_LAUNCH("merge_quad_kernel");
    return;
  }
  const Launch l = launch_for(rows_of(o_acc), o_acc.D);
  dispatch_dtype(o_acc.dtype, [&](auto xa) {
    dispatch_dtype(o_part.dtype, [&](auto xp) {
      using TA = decltype(xa);
      using TP = decltype(xp);
      merge_kernel<TA, TP><<<l.grid, l.block, 0, stream>>>(
          dev_view(o_acc), dev_view(lse_acc), lse_acc.dtype == DType::F64, dev_view(o_part),
          dev_view(lse_part), lse_part.dtype == DType::F64, rows_of(o_acc));
    });
  });
  CUDA_CHECK_LAUNCH("merge_kernel");
}

void randn(const TensorView& t, uint64_t seed, double stddev, cudaStream_t stream) {
  check_device_view(t, "t");
  if (t.numel() == 0) return;
  const Launch l = launch_for(rows_of(t), t.D);
  dispatch_dtype(t.dtype, [&](auto x) {
    using T = decltype(x);
    randn_kernel<T><<<l.grid, l.block, 0, stream>>>(dev_view(t), rows_of(t), seed, stddev);
  });
  CUDA_CHECK_LAUNCH("randn_kernel");
}

}  // namespace longattn::cuda
