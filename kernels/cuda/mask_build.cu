// Device-side block-mask construction (CUDA backend). Every pattern of attention/patterns.cpp is
// a membership test per (query block, key block), evaluated by one thread block per query row in
// two passes (count, then an ordered write with a block scan), so rows come out sorted exactly
// as build_block_mask() sorts them. Content-adaptive: block means of q and k, scores by an fp64
// GEMM, and a per-row radix select of the top-k (ties to the lower block index).
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/patterns.hpp"
#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/device_dtype.cuh"
#include "kernels/cuda/mask_build.hpp"
#include "runtime/error.hpp"

namespace longattn::cuda {
namespace {

constexpr int kRowThreads = 256;     // threads per query-block row
constexpr int kMaxRowBlocks = 8192;  // grid cap; rows are grid-strided
constexpr int kMaxLevels = 16;       // hierarchical levels carried by value

using BlockScan = cub::BlockScan<int, kRowThreads>;

// ---- what contract.cpp's classify() decides, per block pair ----------------------------------
// 0 = nothing visible (dropped), 1 = partly visible (partial), 2 = fully visible.
struct Geometry {
  int64_t nq, nk, bq, bk, q_offset, k_offset;
  bool causal;
};

__device__ __forceinline__ int classify(const Geometry& g, int64_t qb, int64_t kb) {
  const int64_t q0 = qb * g.bq, q1 = min(g.nq, q0 + g.bq);
  const int64_t k0 = kb * g.bk, k1 = min(g.nk, k0 + g.bk);
  if (q0 >= q1 || k0 >= k1) return 0;
  const bool edge = (q1 - q0) < g.bq || (k1 - k0) < g.bk;
  if (!g.causal) return edge ? 1 : 2;
  const int64_t first_q = g.q_offset + q0, last_q = g.q_offset + q1 - 1;
  const int64_t first_k = g.k_offset + k0, last_k = g.k_offset + k1 - 1;
  if (first_k > last_q) return 0;
  if (last_k <= first_q && !edge) return 2;
  return 1;
}

// ---- patterns as membership tests -----------------------------------------------------------
// Structured rows (local_window, global_local, hierarchical): the union of the diagonal, a band
// of half-width `half` (< 0: none), the first `global` blocks as full rows and columns, and per
// level a band (or every column) on rows i with i % stride == 0.
struct StructuredPattern {
  int64_t nb;
  int64_t half;
  int64_t global;
  int nlevels;
  int64_t level_stride[kMaxLevels];
  int64_t level_half[kMaxLevels];  // < 0: every column

  static constexpr size_t smem_bytes(int64_t) { return 0; }
  __device__ void prepare(int64_t, uint32_t*) const {}
  __device__ bool member(int64_t i, int64_t j, const uint32_t*) const {
    const int64_t d = i > j ? i - j : j - i;
    if (d == 0) return true;
    if (half >= 0 && d <= half) return true;
    if (i < global || j < global) return true;
    for (int l = 0; l < nlevels; ++l)
      if (i % level_stride[l] == 0 && (level_half[l] < 0 || d <= level_half[l])) return true;
    return false;
  }
};

// dilated_sparse: the diagonal and every offset |i - j| flagged in `offsets` (nb bytes).
struct DilatedPattern {
  int64_t nb;
  const uint8_t* offsets;

  static constexpr size_t smem_bytes(int64_t) { return 0; }
  __device__ void prepare(int64_t, uint32_t*) const {}
  __device__ bool member(int64_t i, int64_t j, const uint32_t*) const {
    const int64_t d = i > j ? i - j : j - i;
    return d == 0 || offsets[d] != 0;
  }
};

// splitmix64 and Lemire's multiply-shift, as patterns.cpp draws them.
__device__ __forceinline__ uint64_t splitmix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ uint64_t uniform_below(uint64_t& state, uint64_t n) {
  return __umul64hi(splitmix64(state), n);
}

// random: row i keeps its diagonal and count - 1 off-diagonal slots chosen by Floyd's algorithm
// from the stream seeded by (seed, i); the chosen slots are a bitmap in shared memory, filled by
// one thread (the draw is sequential by definition), read by all.
struct RandomPattern {
  int64_t nb;
  int64_t count;
  uint64_t seed;

  static size_t smem_bytes(int64_t nb) {
    return static_cast<size_t>((std::max<int64_t>(nb - 1, 1) + 31) / 32) * sizeof(uint32_t);
  }
  __device__ void prepare(int64_t i, uint32_t* bits) const {
    const int64_t slots = nb - 1, m = count - 1;
    const int64_t words = (max(slots, int64_t(1)) + 31) / 32;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) bits[w] = 0;
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t st = seed * 0xD1B54A32D192ED03ull ^ static_cast<uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull;
      for (int64_t j = slots - m; j < slots; ++j) {
        int64_t t = static_cast<int64_t>(uniform_below(st, static_cast<uint64_t>(j + 1)));
        if (bits[t >> 5] & (1u << (t & 31))) t = j;
        bits[t >> 5] |= 1u << (t & 31);
      }
    }
    __syncthreads();
  }
  __device__ bool member(int64_t i, int64_t j, const uint32_t* bits) const {
    if (j == i) return true;
    const int64_t t = j < i ? j : j - 1;  // column -> slot, skipping the diagonal
    return (bits[t >> 5] >> (t & 31)) & 1u;
  }
};

// Pass 1: counts[i] = visible blocks of row i.
template <typename P>
__global__ void count_kernel(P pat, Geometry g, int64_t nrows, int64_t ncols, int64_t* counts) {
  extern __shared__ uint32_t smem[];
  __shared__ typename BlockScan::TempStorage scan;
  for (int64_t i = blockIdx.x; i < nrows; i += gridDim.x) {
    pat.prepare(i, smem);
    int local = 0;
    for (int64_t j = threadIdx.x; j < ncols; j += blockDim.x)
      local += (pat.member(i, j, smem) && classify(g, i, j) != 0) ? 1 : 0;
    int total = 0;
    BlockScan(scan).ExclusiveSum(local, local, total);
    if (threadIdx.x == 0) counts[i] = total;
    __syncthreads();  // scan storage and the pattern's shared state are reused by the next row
  }
}

// Pass 2: the visible blocks of row i in increasing order at col_idx[row_ptr[i] ...], with their
// partial flags; a block scan orders each chunk of kRowThreads columns.
template <typename P>
__global__ void write_kernel(P pat, Geometry g, int64_t nrows, int64_t ncols,
                             const int64_t* row_ptr, int32_t* col_idx, uint8_t* partial) {
  extern __shared__ uint32_t smem[];
  __shared__ typename BlockScan::TempStorage scan;
  for (int64_t i = blockIdx.x; i < nrows; i += gridDim.x) {
    pat.prepare(i, smem);
    int64_t base = row_ptr[i];
    for (int64_t j0 = 0; j0 < ncols; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      const int cls = (j < ncols && pat.member(i, j, smem)) ? classify(g, i, j) : 0;
      int pos = 0, total = 0;
      BlockScan(scan).ExclusiveSum(cls != 0 ? 1 : 0, pos, total);
      if (cls != 0) {
        col_idx[base + pos] = static_cast<int32_t>(j);
        partial[base + pos] = cls == 1 ? 1 : 0;
      }
      base += total;
      __syncthreads();
    }
  }
}

// ---- content-adaptive top-k -----------------------------------------------------------------

// Block means of a view: out[i * (B*H*D) + (b*H + h)*D + d] = mean over the rows of block i,
// summed in row order in fp64 (as patterns.cpp sums them).
template <typename T>
__global__ void block_mean_kernel(const T* data, int64_t B, int64_t N, int64_t H, int64_t D,
                                  int64_t sb, int64_t sn, int64_t sh, int64_t sd, int64_t bs,
                                  double* out) {
  const int64_t nb = N / bs, width = B * H * D, total = nb * width;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / width, c = e % width;
    const int64_t d = c % D, bh = c / D, h = bh % H, b = bh / H;
    const T* p = data + b * sb + h * sh + d * sd + i * bs * sn;
    double s = 0.0;
    for (int64_t t = 0; t < bs; ++t) s = __dadd_rn(s, to_f64(p[t * sn]));
    out[e] = s / static_cast<double>(bs);
  }
}

// Scores compare as doubles with NaN lowest and -0 == +0 (patterns.cpp's key); this maps them to
// unsigned integers with the same order, so a radix select can find the k-th largest.
__device__ __forceinline__ uint64_t ordered_key(double v) {
  double x = isnan(v) ? -INFINITY : v;
  if (x == 0.0) x = 0.0;
  const uint64_t b = static_cast<uint64_t>(__double_as_longlong(x));
  return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}

// Rows [row0, row0 + nrows) of the top-k mask from their scores (nrows x nb). Row i keeps its
// diagonal and the `take` = topk - 1 others with the largest keys, ties to the lower index:
// a radix select (8 bits per pass) finds the take-th largest key T; the row keeps every key > T
// and the first `need_eq` keys equal to T in index order. Causal trimming as classify().
// Output: up to topk entries per row at out_cols[i * topk], counts[i].
__global__ void topk_kernel(const double* scores, int64_t row0, int64_t nrows, int64_t nb,
                            int64_t topk, Geometry g, int32_t* out_cols, uint8_t* out_partial,
                            int64_t* counts) {
  __shared__ unsigned int hist[256];
  __shared__ uint64_t s_prefix;
  __shared__ int64_t s_need;
  __shared__ typename BlockScan::TempStorage scan;
  const int64_t take = min(topk - 1, nb - 1);
  for (int64_t r = blockIdx.x; r < nrows; r += gridDim.x) {
    const int64_t i = row0 + r;
    const double* s = scores + r * nb;
    // Radix select of the take-th largest key among j != i (skipped when nothing or everything
    // off the diagonal is kept).
    uint64_t prefix = 0, mask = 0;
    int64_t need = take;  // rank still to find within the keys matching `prefix`
    if (take > 0 && take < nb - 1) {
      for (int shift = 56; shift >= 0; shift -= 8) {
        for (int t = threadIdx.x; t < 256; t += blockDim.x) hist[t] = 0;
        __syncthreads();
        for (int64_t j = threadIdx.x; j < nb; j += blockDim.x) {
          if (j == i) continue;
          const uint64_t u = ordered_key(s[j]);
          if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          int64_t above = 0;
          int digit = 0;
          for (digit = 255; digit > 0; --digit) {
            if (above + hist[digit] >= need) break;
            above += hist[digit];
          }
          s_prefix = prefix | (static_cast<uint64_t>(digit) << shift);
          s_need = need - above;
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= 255ull << shift;
        __syncthreads();
      }
    }
    const bool all = take >= nb - 1;
    const uint64_t T = prefix;
    int64_t eq_seen = 0, base = 0;
    for (int64_t j0 = 0; j0 < nb; j0 += blockDim.x) {
      const int64_t j = j0 + threadIdx.x;
      bool off = j < nb && j != i;
      const uint64_t u = off ? ordered_key(s[j]) : 0;
      const int is_eq = (off && take > 0 && !all && u == T) ? 1 : 0;
      int eq_pos = 0, eq_total = 0;
      BlockScan(scan).ExclusiveSum(is_eq, eq_pos, eq_total);
      __syncthreads();
      bool keep = false;
      if (j < nb) {
        if (j == i || all)
          keep = true;
        else if (take > 0)
          keep = u > T || (is_eq && eq_seen + eq_pos < need);
      }
      const int cls = keep ? classify(g, i, j) : 0;
      int pos = 0, total = 0;
      BlockScan(scan).ExclusiveSum(cls != 0 ? 1 : 0, pos, total);
      if (cls != 0) {
        out_cols[i * topk + base + pos] = static_cast<int32_t>(j);
        out_partial[i * topk + base + pos] = cls == 1 ? 1 : 0;
      }
      base += total;
      eq_seen += eq_total;
      __syncthreads();
    }
    if (threadIdx.x == 0) counts[i] = base;
  }
}

// ---- host helpers ---------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Block-level parameters from the (resolved) token-level config, as patterns.cpp derives them.
int64_t window_half(int64_t window_tokens, int64_t bs) {
  return std::max<int64_t>(1, ceil_div(window_tokens, bs)) / 2;
}
int64_t global_blocks(int64_t global_tokens, int64_t bs, int64_t nb) {
  return std::min(nb, ceil_div(global_tokens, bs));
}
int64_t per_row_count(double ratio, int64_t nb) {
  return std::clamp<int64_t>(std::llround(ratio * static_cast<double>(nb)), 1, nb);
}

// Device memory taken through the backend, returned on scope exit (errors included).
class Scratch {
 public:
  explicit Scratch(Backend& be) : be_(be) {}
  ~Scratch() {
    for (void* p : ptrs_) {
      try {
        be_.deallocate(p);
      } catch (...) {  // a destructor must not throw; the first error is already in flight
      }
    }
  }
  template <typename T>
  T* take(size_t count) {
    void* p = be_.allocate(std::max<size_t>(count, 1) * sizeof(T));
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }

 private:
  Backend& be_;
  std::vector<void*> ptrs_;
};

template <typename T>
void to_device(void* dst, const std::vector<T>& src, cudaStream_t s) {
  if (src.empty()) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <typename T>
void to_host(std::vector<T>& dst, const void* src, cudaStream_t s) {
  if (dst.empty()) return;
  CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, dst.size() * sizeof(T), cudaMemcpyDeviceToHost, s));
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// One allocation holding row_ptr, col_idx and partial of a mask with nq rows and nnz blocks.
DeviceMaskArrays allocate_mask_arrays(Backend& be, int64_t nq, int64_t nnz) {
  const size_t rp = align_up(static_cast<size_t>(nq + 1) * sizeof(int64_t));
  const size_t ci = align_up(static_cast<size_t>(std::max<int64_t>(nnz, 1)) * sizeof(int32_t));
  const size_t pa = static_cast<size_t>(std::max<int64_t>(nnz, 1));
  DeviceMaskArrays a;
  a.storage = be.allocate(rp + ci + pa);
  a.row_ptr = static_cast<int64_t*>(a.storage);
  a.col_idx = reinterpret_cast<int32_t*>(static_cast<char*>(a.storage) + rp);
  a.partial = reinterpret_cast<uint8_t*>(static_cast<char*>(a.storage) + rp + ci);
  return a;
}

int row_grid(int64_t rows) {
  return static_cast<int>(std::clamp<int64_t>(rows, 1, kMaxRowBlocks));
}

Geometry square_geometry(int64_t N, int64_t bs, bool causal) {
  return {N, N, bs, bs, 0, 0, causal};
}

// The two passes for one pattern: counts, host prefix sum, ordered write, host copy.
template <typename P>
BlockMask run_pattern(Backend& be, cudaStream_t stream, const P& pat, const Geometry& g,
                      int64_t nb, DeviceMaskArrays* out) {
  const size_t smem = P::smem_bytes(nb);
  if (smem > 48 * 1024) {
    int dev = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    LONGATTN_CHECK_ARG(smem + sizeof(typename BlockScan::TempStorage) <= static_cast<size_t>(optin),
                       "num_blocks", nb, "too many blocks for the device random-pattern bitmap");
    CUDA_CHECK(cudaFuncSetAttribute(count_kernel<P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
    CUDA_CHECK(cudaFuncSetAttribute(write_kernel<P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  }
  Scratch scratch(be);
  int64_t* counts_d = scratch.take<int64_t>(static_cast<size_t>(nb));
  count_kernel<P><<<row_grid(nb), kRowThreads, smem, stream>>>(pat, g, nb, nb, counts_d);
  CUDA_CHECK_LAUNCH("count_kernel");
  std::vector<int64_t> counts(static_cast<size_t>(nb));
  to_host(counts, counts_d, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));

  BlockMask m;
  m.block_q = g.bq;
  m.block_k = g.bk;
  m.num_q_blocks = nb;
  m.num_k_blocks = nb;
  m.row_ptr.assign(static_cast<size_t>(nb) + 1, 0);
  for (int64_t i = 0; i < nb; ++i) m.row_ptr[i + 1] = m.row_ptr[i] + counts[i];
  const int64_t nnz = m.row_ptr.back();
  m.col_idx.resize(static_cast<size_t>(nnz));
  m.partial.resize(static_cast<size_t>(nnz));

  DeviceMaskArrays a = allocate_mask_arrays(be, nb, nnz);
  try {
    to_device(a.row_ptr, m.row_ptr, stream);
    write_kernel<P><<<row_grid(nb), kRowThreads, smem, stream>>>(pat, g, nb, nb, a.row_ptr,
                                                                  a.col_idx, a.partial);
    CUDA_CHECK_LAUNCH("write_kernel");
    to_host(m.col_idx, a.col_idx, stream);
    to_host(m.partial, a.partial, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    try {
      be.deallocate(a.storage);
    } catch (...) {
    }
    throw;
  }
  *out = a;
  return m;
}

// Block means of q and k as [nb, B*H*D] fp64 matrices.
void block_means(const TensorView& t, int64_t bs, double* out, cudaStream_t stream) {
  const int64_t total = (t.N / bs) * t.B * t.H * t.D;
  if (total == 0) return;
  const int grid = static_cast<int>(std::min<int64_t>(ceil_div(total, 256), 1 << 16));
  dispatch_dtype(t.dtype, [&](auto x) {
    using T = decltype(x);
    block_mean_kernel<T><<<grid, 256, 0, stream>>>(static_cast<const T*>(t.data), t.B, t.N, t.H,
                                                   t.D, t.sb, t.sn, t.sh, t.sd, bs, out);
  });
  CUDA_CHECK_LAUNCH("block_mean_kernel");
}

void check_qk(const TensorView& q, const TensorView& k, int64_t bs) {
  LONGATTN_CHECK_ARG(q.device == DeviceKind::Cuda && k.device == DeviceKind::Cuda, "q, k",
                     "host views", "must live on the CUDA device");
  LONGATTN_CHECK_ARG(bs > 0, "block_size", bs, "must be positive");
  LONGATTN_CHECK_ARG(k.B == q.B && k.N == q.N && k.H == q.H && k.D == q.D, "k", k.shape_string(),
                     "must have the shape of q " + q.shape_string());
  LONGATTN_CHECK_ARG(q.N > 0 && q.N % bs == 0, "seq_len", q.N,
                     "must be a positive multiple of block_size " + std::to_string(bs));
}

// Rows of the score matrix computed per GEMM so that a chunk stays near 256 MiB.
int64_t score_chunk_rows(int64_t nb) {
  const int64_t budget = int64_t(256) << 20;
  return std::clamp<int64_t>(budget / (nb * static_cast<int64_t>(sizeof(double))), 1, nb);
}

// scores[r, j] = (1 / (B*H)) <qm[row0 + r], km[j]> for r < rows: one fp64 GEMM.
void score_rows(Backend& be, const double* qm, const double* km, int64_t nb, int64_t width,
                int64_t row0, int64_t rows, double inv_bh, double* scores) {
  MatrixView a{const_cast<double*>(qm + row0 * width), DType::F64, rows, width, width};
  MatrixView b{const_cast<double*>(km), DType::F64, nb, width, width};
  MatrixView c{scores, DType::F64, rows, nb, nb};
  be.gemm(false, true, inv_bh, a, b, 0.0, c);
}

}  // namespace

DeviceMaskArrays upload_mask(Backend& be, cudaStream_t stream, const BlockMask& m) {
  DeviceMaskArrays a = allocate_mask_arrays(be, m.num_q_blocks, m.nnz());
  try {
    to_device(a.row_ptr, m.row_ptr, stream);
    to_device(a.col_idx, m.col_idx, stream);
    to_device(a.partial, m.partial, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    try {
      be.deallocate(a.storage);
    } catch (...) {
    }
    throw;
  }
  return a;
}

BlockMask build_pattern_mask(Backend& be, cudaStream_t stream, const SparseConfig& cfg_in,
                             int64_t N, bool causal, DeviceMaskArrays* out) {
  validate_sparse(cfg_in, N);
  LONGATTN_CHECK_ARG(cfg_in.pattern != "content_adaptive", "pattern", cfg_in.pattern,
                     "content_adaptive masks come from q and k (build_topk_mask)");
  const int64_t bs = cfg_in.block_size, nb = N / bs;
  const SparseConfig cfg = resolve_sparse(cfg_in, nb);
  const Geometry g = square_geometry(N, bs, causal);

  if (cfg.pattern == "dilated_sparse") {
    std::vector<uint8_t> offsets(static_cast<size_t>(nb), 0);
    for (int64_t r : cfg.dilation_rates)
      if (r > 0 && r < nb) offsets[static_cast<size_t>(r)] = 1;
    Scratch scratch(be);
    uint8_t* offsets_d = scratch.take<uint8_t>(offsets.size());
    to_device(offsets_d, offsets, stream);
    return run_pattern(be, stream, DilatedPattern{nb, offsets_d}, g, nb, out);
  }
  if (cfg.pattern == "random") {
    RandomPattern p{nb, per_row_count(cfg.sparsity_ratio, nb), cfg.seed};
    return run_pattern(be, stream, p, g, nb, out);
  }
  StructuredPattern p{};
  p.nb = nb;
  p.half = -1;
  p.global = 0;
  p.nlevels = 0;
  if (cfg.pattern == "local_window") {
    p.half = window_half(cfg.window_size, bs);
  } else if (cfg.pattern == "global_local") {
    p.half = window_half(cfg.window_size, bs);
    p.global = global_blocks(cfg.global_tokens, bs, nb);
  } else if (cfg.pattern == "hierarchical") {
    LONGATTN_CHECK_ARG(cfg.levels.size() <= static_cast<size_t>(kMaxLevels), "levels",
                       cfg.levels.size(),
                       "the device builder takes at most " + std::to_string(kMaxLevels));
    for (const auto& lv : cfg.levels) {
      p.level_stride[p.nlevels] = std::max<int64_t>(1, lv.stride / bs);
      p.level_half[p.nlevels] = lv.window < 0 ? -1 : window_half(lv.window, bs);
      ++p.nlevels;
    }
  } else {
    throw InvalidArgument("pattern", cfg.pattern, "has no device builder");
  }
  return run_pattern(be, stream, p, g, nb, out);
}

double* block_mean_scores(Backend& be, cudaStream_t stream, const TensorView& q,
                          const TensorView& k, int64_t bs) {
  check_qk(q, k, bs);
  const int64_t nb = q.N / bs, width = q.B * q.H * q.D;
  Scratch scratch(be);
  double* qm = scratch.take<double>(static_cast<size_t>(nb * width));
  double* km = scratch.take<double>(static_cast<size_t>(nb * width));
  block_means(q, bs, qm, stream);
  block_means(k, bs, km, stream);
  auto* scores = static_cast<double*>(be.allocate(static_cast<size_t>(nb * nb) * sizeof(double)));
  try {
    score_rows(be, qm, km, nb, width, 0, nb, 1.0 / static_cast<double>(q.B * q.H), scores);
  } catch (...) {
    try {
      be.deallocate(scores);
    } catch (...) {
    }
    throw;
  }
  return scores;
}

std::vector<double> block_mean_scores_host(Backend& be, cudaStream_t stream, const TensorView& q,
                                           const TensorView& k, int64_t bs) {
  double* scores = block_mean_scores(be, stream, q, k, bs);
  const int64_t nb = q.N / bs;
  std::vector<double> host(static_cast<size_t>(nb * nb));
  try {
    to_host(host, scores, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    try {
      be.deallocate(scores);
    } catch (...) {
    }
    throw;
  }
  be.deallocate(scores);
  return host;
}

namespace {

// Selection over score rows [row0, row0 + rows) already in `scores`; results at the fixed
// stride topk in cols/partial, counts per row.
void topk_rows_device(const double* scores, int64_t row0, int64_t rows, int64_t nb, int64_t topk,
                      const Geometry& g, int32_t* cols, uint8_t* partial, int64_t* counts,
                      cudaStream_t stream) {
  topk_kernel<<<row_grid(rows), kRowThreads, 0, stream>>>(scores, row0, rows, nb, topk, g, cols,
                                                          partial, counts);
  CUDA_CHECK_LAUNCH("topk_kernel");
}

// Compacts the fixed-stride selection into a CSR mask on the host, then uploads it.
BlockMask finish_topk(Backend& be, cudaStream_t stream, int64_t nb, int64_t topk, int64_t bs,
                      const int32_t* cols_d, const uint8_t* partial_d, const int64_t* counts_d,
                      DeviceMaskArrays* out) {
  std::vector<int64_t> counts(static_cast<size_t>(nb));
  std::vector<int32_t> cols(static_cast<size_t>(nb * topk));
  std::vector<uint8_t> part(static_cast<size_t>(nb * topk));
  to_host(counts, counts_d, stream);
  to_host(cols, cols_d, stream);
  to_host(part, partial_d, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  BlockMask m;
  m.block_q = m.block_k = bs;
  m.num_q_blocks = m.num_k_blocks = nb;
  m.row_ptr.assign(1, 0);
  for (int64_t i = 0; i < nb; ++i) {
    const auto first = static_cast<std::ptrdiff_t>(i * topk);
    m.col_idx.insert(m.col_idx.end(), cols.begin() + first, cols.begin() + first + counts[i]);
    m.partial.insert(m.partial.end(), part.begin() + first, part.begin() + first + counts[i]);
    m.row_ptr.push_back(static_cast<int64_t>(m.col_idx.size()));
  }
  *out = upload_mask(be, stream, m);
  return m;
}

int64_t resolved_topk(const SparseConfig& cfg, int64_t N) {
  validate_sparse(cfg, N);
  LONGATTN_CHECK_ARG(cfg.pattern == "content_adaptive", "pattern", cfg.pattern,
                     "must be content_adaptive for a top-k mask");
  const int64_t nb = N / cfg.block_size;
  const int64_t topk = resolve_sparse(cfg, nb).topk;
  LONGATTN_CHECK_ARG(topk >= 1 && topk <= nb, "topk", topk,
                     "must be in [1, " + std::to_string(nb) + "]");
  return topk;
}

}  // namespace

BlockMask topk_mask_from_scores(Backend& be, cudaStream_t stream, const double* scores,
                                int64_t nb, const SparseConfig& cfg, bool causal,
                                DeviceMaskArrays* out) {
  const int64_t bs = cfg.block_size;
  const int64_t topk = resolved_topk(cfg, nb * bs);
  Scratch scratch(be);
  int32_t* cols = scratch.take<int32_t>(static_cast<size_t>(nb * topk));
  uint8_t* part = scratch.take<uint8_t>(static_cast<size_t>(nb * topk));
  int64_t* counts = scratch.take<int64_t>(static_cast<size_t>(nb));
  topk_rows_device(scores, 0, nb, nb, topk, square_geometry(nb * bs, bs, causal), cols, part,
                   counts, stream);
  return finish_topk(be, stream, nb, topk, bs, cols, part, counts, out);
}

BlockMask build_topk_mask(Backend& be, cudaStream_t stream, const TensorView& q,
                          const TensorView& k, const SparseConfig& cfg, bool causal,
                          DeviceMaskArrays* out) {
  const int64_t bs = cfg.block_size;
  check_qk(q, k, bs);
  const int64_t topk = resolved_topk(cfg, q.N);
  const int64_t nb = q.N / bs, width = q.B * q.H * q.D;
  const Geometry g = square_geometry(q.N, bs, causal);
  Scratch scratch(be);
  double* qm = scratch.take<double>(static_cast<size_t>(nb * width));
  double* km = scratch.take<double>(static_cast<size_t>(nb * width));
  block_means(q, bs, qm, stream);
  block_means(k, bs, km, stream);
  // The nb x nb scores are produced and consumed in row chunks to bound memory at large N.
  const int64_t chunk = score_chunk_rows(nb);
  double* scores = scratch.take<double>(static_cast<size_t>(chunk * nb));
  int32_t* cols = scratch.take<int32_t>(static_cast<size_t>(nb * topk));
  uint8_t* part = scratch.take<uint8_t>(static_cast<size_t>(nb * topk));
  int64_t* counts = scratch.take<int64_t>(static_cast<size_t>(nb));
  const double inv_bh = 1.0 / static_cast<double>(q.B * q.H);
  for (int64_t row0 = 0; row0 < nb; row0 += chunk) {
    const int64_t rows = std::min(chunk, nb - row0);
    score_rows(be, qm, km, nb, width, row0, rows, inv_bh, scores);
    topk_rows_device(scores, row0, rows, nb, topk, g, cols, part, counts, stream);
  }
  return finish_topk(be, stream, nb, topk, bs, cols, part, counts, out);
}

}  // namespace longattn::cuda
