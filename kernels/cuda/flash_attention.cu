// Host side of the flash attention kernels: checks the contract's views against what the
// kernels support, fills the plain argument structs, computes delta = rowsum(dO * O) when the
// caller did not, and dispatches on dtype and head dim to the per-file instantiations.
#include "kernels/cuda/flash_attention.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/flash_common.cuh"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/tensor.hpp"

#if LONGATTN_HAVE_SM90
#include "kernels/cuda/sm90/flash_sm90.hpp"
#endif

namespace longattn::cuda {
namespace {

using flash::BwdArgs;
using flash::DevMask;
using flash::DevView;
using flash::FwdArgs;

constexpr int64_t kMaskBlockMultiple = 64;

DevView dev_view(const TensorView& t, const char* name) {
  LONGATTN_CHECK_ARG(t.sd == 1, name, t.sd, "the CUDA kernels need unit stride on D");
  LONGATTN_CHECK_ARG(t.data != nullptr || t.numel() == 0, name, "null",
                     "must point to device memory");
  DevView v;
  v.data = t.data;
  v.sb = t.sb;
  v.sn = t.sn;
  v.sh = t.sh;
  return v;
}

// A per-row statistics view (lse, delta: [B, N, H, 1] fp32), any strides.
DevView stat_view(const TensorView& t) {
  DevView v;
  v.data = t.data;
  v.sb = t.sb;
  v.sn = t.sn;
  v.sh = t.sh;
  return v;
}

DevMask dev_mask(const BlockMaskView& m, const char* name) {
  LONGATTN_CHECK_ARG(m.block_q % kMaskBlockMultiple == 0 && m.block_k % kMaskBlockMultiple == 0,
                     std::string(name) + " block size",
                     std::to_string(m.block_q) + "x" + std::to_string(m.block_k),
                     "the CUDA kernels need block sizes that are multiples of 64");
  LONGATTN_CHECK_ARG(m.row_ptr != nullptr, std::string(name) + ".row_ptr", "null",
                     "must point to the device copy of the mask");
  LONGATTN_CHECK_ARG(m.nnz == 0 || (m.col_idx != nullptr && m.partial != nullptr),
                     std::string(name) + ".col_idx", "null",
                     "must point to the device copy of the mask");
  DevMask d;
  d.row_ptr = m.row_ptr;
  d.col_idx = m.col_idx;
  d.partial = m.partial;
  d.block_q = static_cast<int>(m.block_q);
  d.block_k = static_cast<int>(m.block_k);
  return d;
}

// 16-byte loads need 16-byte aligned rows: the base and every stride of a non-trivial
// dimension a multiple of 16 bytes.
bool allows_vec(const TensorView& t) {
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
  auto ok = [&](int64_t stride, int64_t extent) { return extent <= 1 || (stride * es) % 16 == 0; };
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && ok(t.sb, t.B) && ok(t.sn, t.N) &&
         ok(t.sh, t.H) && (t.D * es) % 16 == 0;
}

// Two adjacent elements can be stored as one word.
bool allows_pair(const TensorView& t) {
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
  auto ok = [&](int64_t stride, int64_t extent) { return extent <= 1 || stride % 2 == 0; };
  return reinterpret_cast<uintptr_t>(t.data) % (2 * es) == 0 && ok(t.sb, t.B) && ok(t.sn, t.N) &&
         ok(t.sh, t.H);
}

int out_type(const TensorView& t, DType in, const char* name) {
  LONGATTN_CHECK_ARG(t.dtype == in || t.dtype == DType::F32, name, dtype_name(t.dtype),
                     std::string("must be fp32 or the input dtype ") + dtype_name(in));
  return t.dtype == DType::F32 ? flash::kOutF32 : flash::kOutSame;
}

void check_common(const TensorView& q, const TensorView& k, const TensorView& lse) {
  LONGATTN_CHECK_ARG(flash_supports(q.dtype, q.D), "dtype/head_dim",
                     std::string(dtype_name(q.dtype)) + "/" + std::to_string(q.D),
                     "the CUDA kernels support fp32, fp16 and bf16 with head_dim 32, 64, 128 "
                     "or 256");
  LONGATTN_CHECK_ARG(lse.dtype == DType::F32, "lse", dtype_name(lse.dtype),
                     "must be fp32 for the CUDA kernels");
  LONGATTN_CHECK_ARG(q.N < (int64_t{1} << 30) && k.N < (int64_t{1} << 30), "sequence length",
                     std::max(q.N, k.N), "must be below 2^30 rows per call");
  LONGATTN_CHECK_ARG(q.H <= 65535 && q.B <= 65535, "batch x heads",
                     std::to_string(q.B) + "x" + std::to_string(q.H),
                     "batch and heads must each be at most 65535");
}

template <int D>
void dispatch_fwd(const FwdArgs& a, DType dt, int m_tiles, cudaStream_t s) {
  switch (dt) {
    case DType::BF16: return flash::launch_fwd<__nv_bfloat16, D>(a, m_tiles, s);
    case DType::F16: return flash::launch_fwd<__half, D>(a, m_tiles, s);
    default: return flash::launch_fwd_f32<D>(a, s);
  }
}

template <int D>
void dispatch_bwd(const BwdArgs& a, DType dt, bool atomic_dq, cudaStream_t s) {
  switch (dt) {
    case DType::BF16: return flash::launch_bwd<__nv_bfloat16, D>(a, atomic_dq, s);
    case DType::F16: return flash::launch_bwd<__half, D>(a, atomic_dq, s);
    default: return flash::launch_bwd_f32<D>(a, s);
  }
}

// delta[b, i, h] = sum_d dO[b, i, h, d] * O[b, i, h, d]: one warp per row.
template <typename T>
__device__ __forceinline__ float to_f(const void* p, int64_t off, int type) {
  if (type == flash::kOutF32) return static_cast<const float*>(p)[off];
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<const float*>(p)[off];
  } else {
    return flash::Elem<T>::to_float(static_cast<const T*>(p)[off]);
  }
}

template <typename T>
__global__ void flash_bwd_delta_kernel(const BwdArgs a, float* out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= static_cast<int64_t>(a.B) * a.Nq * a.H) return;
  const int h = static_cast<int>(row % a.H);
  const int64_t bi = row / a.H;
  const int i = static_cast<int>(bi % a.Nq), b = static_cast<int>(bi / a.Nq);
  const int64_t ob = b * a.o.sb + static_cast<int64_t>(i) * a.o.sn + h * a.o.sh;
  const int64_t db = b * a.d_o.sb + static_cast<int64_t>(i) * a.d_o.sn + h * a.d_o.sh;
  float acc = 0.f;
  for (int d = lane; d < a.D; d += 32)
    acc = fmaf(to_f<T>(a.d_o.data, db + d, flash::kOutSame), to_f<T>(a.o.data, ob + d, a.o_type),
               acc);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) out[row] = acc;  // contiguous [B, Nq, H]
}

// The same over 16-byte groups, where dO and O are both of the 16-bit input dtype with 16-byte
// aligned rows: G = D / 8 threads a row, each one group of each (one 16-byte load apiece), their
// products summed over the row's G lanes by shuffles; rows < 2^31 / G, so 32-bit index
// arithmetic. (The warp-per-row kernel spends most of its time on its two 64-bit divisions and
// 2-byte loads: at 4K x 16 heads, 65536 rows, it was about as long as the memory traffic twice
// over.)
template <typename T>
__device__ __forceinline__ float dot_pair(uint32_t x, uint32_t y) {
  float2 fx, fy;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    fx = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
    fy = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&y));
  } else {
    fx = __half22float2(*reinterpret_cast<const __half2*>(&x));
    fy = __half22float2(*reinterpret_cast<const __half2*>(&y));
  }
  return fmaf(fx.x, fy.x, fx.y * fy.y);
}

constexpr int kDeltaThreads = 256;
// Blocks past the rows' (index delta_blocks and on) zero `zero` instead, kZeroPerThread float4 a
// thread, the last block the buffer's start (the next launch's first works add there first, so
// those lines are the likeliest still in L2).
constexpr int kZeroPerThread = 4;
template <typename T, int G>
__global__ void __launch_bounds__(kDeltaThreads)
    flash_bwd_delta_vec_kernel(const BwdArgs a, float* out, int rows, float4* zero, int64_t zero_n4,
                               unsigned delta_blocks) {
  static_assert(G >= 1 && G <= 32 && (G & (G - 1)) == 0, "a row's lanes: a power of two <= 32");
  if (blockIdx.x >= delta_blocks) {
    const int64_t per_block = int64_t{kDeltaThreads} * kZeroPerThread;
    const int64_t z = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * per_block;
#pragma unroll
    for (int i = 0; i < kZeroPerThread; ++i) {
      const int64_t at = z + i * kDeltaThreads + threadIdx.x;
      if (at < zero_n4) zero[at] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    return;
  }
  const int t = static_cast<int>(blockIdx.x) * kDeltaThreads + static_cast<int>(threadIdx.x);
  const int row = t / G, c = t % G;
  float acc = 0.f;
  if (row < rows) {
    const int h = row % a.H, bi = row / a.H;
    const int i = bi % a.Nq, b = bi / a.Nq;
    const int64_t ob = b * a.o.sb + static_cast<int64_t>(i) * a.o.sn + h * a.o.sh + 8 * c;
    const int64_t db = b * a.d_o.sb + static_cast<int64_t>(i) * a.d_o.sn + h * a.d_o.sh + 8 * c;
    const uint4 x = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.d_o.data) + db);
    const uint4 y = *reinterpret_cast<const uint4*>(static_cast<const T*>(a.o.data) + ob);
    acc = (dot_pair<T>(x.x, y.x) + dot_pair<T>(x.y, y.y)) +
          (dot_pair<T>(x.z, y.z) + dot_pair<T>(x.w, y.w));
  }
  // (Every lane takes part, whatever its row: rows past the end add zeros.)
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (row < rows && c == 0) out[row] = acc;  // contiguous [B, Nq, H]
}

// A measurement switch, read on each call: on unless the variable is "0".
bool env_switch_on(const char* name) {
  const char* e = std::getenv(name);
  return e == nullptr || std::string(e) != "0";
}

// Measurement switch: LONGATTN_BWD_ZERO_IN_DELTA=0 zeroes the transposed dq accumulator by a
// memset of its own instead of in the delta kernel's launch.
bool zero_in_delta_enabled() { return env_switch_on("LONGATTN_BWD_ZERO_IN_DELTA"); }

bool delta_vec_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("LONGATTN_DELTA_VEC");  // measurement switch
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

// (zero, zero_bytes: a buffer to zero in the same launch, 16-byte aligned and sized; none where
// zero is null.)
template <typename T>
bool launch_delta_vec(const BwdArgs& a, float* out, int64_t rows, float* zero, size_t zero_bytes,
                      cudaStream_t s) {
  const int g = a.D / 8;
  const int64_t threads = rows * g;
  if (threads >= (int64_t{1} << 31) - kDeltaThreads) return false;
  const int64_t zero_n4 = zero != nullptr ? static_cast<int64_t>(zero_bytes / sizeof(float4)) : 0;
  const int64_t per_block = int64_t{kDeltaThreads} * kZeroPerThread;
  const int64_t delta_blocks = (threads + kDeltaThreads - 1) / kDeltaThreads;
  const int64_t blocks = delta_blocks + (zero_n4 + per_block - 1) / per_block;
  if (blocks > int64_t{0x7fffffff}) return false;
  const dim3 grid(static_cast<unsigned>(blocks));
  const int r = static_cast<int>(rows);
  float4* const z = reinterpret_cast<float4*>(zero);
  const auto db = static_cast<unsigned>(delta_blocks);
  void (*kernel)(const BwdArgs, float*, int, float4*, int64_t, unsigned) = nullptr;
  switch (g) {
    case 4: kernel = flash_bwd_delta_vec_kernel<T, 4>; break;
    case 8: kernel = flash_bwd_delta_vec_kernel<T, 8>; break;
    case 16: kernel = flash_bwd_delta_vec_kernel<T, 16>; break;
    case 32: kernel = flash_bwd_delta_vec_kernel<T, 32>; break;
    default: return false;
  }
  kernel<<<grid, kDeltaThreads, 0, s>>>(a, out, r, z, zero_n4, db);
  CUDA_CHECK_LAUNCH("flash_bwd_delta_vec_kernel");
  return true;
}

// o_vec: o of the input dtype with 16-byte aligned rows (a.vec covers d_o). With zero (16-byte
// aligned, zero_bytes a multiple of 16), the grouped kernel zeroes it in the same launch where it
// runs: returns whether it did (else the caller zeroes it).
bool launch_delta(const BwdArgs& a, DType dt, float* out, bool o_vec, cudaStream_t s,
                  float* zero = nullptr, size_t zero_bytes = 0) {
  const int64_t rows = static_cast<int64_t>(a.B) * a.Nq * a.H;
  if (o_vec && a.vec && a.D % 8 == 0 && delta_vec_enabled()) {
    if (dt == DType::BF16 && launch_delta_vec<__nv_bfloat16>(a, out, rows, zero, zero_bytes, s))
      return zero != nullptr;
    if (dt == DType::F16 && launch_delta_vec<__half>(a, out, rows, zero, zero_bytes, s))
      return zero != nullptr;
  }
  const int threads = 256, rows_per_block = threads / 32;
  const dim3 grid(static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block));
  switch (dt) {
    case DType::BF16: flash_bwd_delta_kernel<__nv_bfloat16><<<grid, threads, 0, s>>>(a, out); break;
    case DType::F16: flash_bwd_delta_kernel<__half><<<grid, threads, 0, s>>>(a, out); break;
    default: flash_bwd_delta_kernel<float><<<grid, threads, 0, s>>>(a, out); break;
  }
  CUDA_CHECK_LAUNCH("flash_bwd_delta_kernel");
  return false;
}

}  // namespace

bool flash_supports(DType dtype, int64_t head_dim) {
  const bool dtype_ok = dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16;
  const bool dim_ok = head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
  return dtype_ok && dim_ok;
}

namespace {

// The kernels' argument struct for one forward call (after the contract's checks).
FwdArgs make_fwd_args(const AttnFwdParams& p) {
  validate_forward(p);
  check_common(p.q, p.k, p.lse);
  const DType dt = p.q.dtype;
  FwdArgs a;
  a.q = dev_view(p.q, "q");
  a.k = dev_view(p.k, "k");
  a.v = dev_view(p.v, "v");
  a.o = dev_view(p.o, "o");
  a.lse = stat_view(p.lse);
  a.o_type = out_type(p.o, dt, "o");
  a.B = static_cast<int>(p.q.B);
  a.H = static_cast<int>(p.q.H);
  a.Nq = static_cast<int>(p.q.N);
  a.Nk = static_cast<int>(p.k.N);
  if (p.q.N == 0 || p.q.B == 0 || p.q.H == 0) return a;
  a.mask = dev_mask(p.mask, "mask");
  const double scale = effective_scale(p.scale, p.q.D);
  a.scale = static_cast<float>(scale);
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  a.causal = p.causal ? 1 : 0;
  a.diag = p.q_offset - p.k_offset;
  a.vec = allows_vec(p.q) && allows_vec(p.k) && allows_vec(p.v);
  a.o_pair = allows_pair(p.o);
  a.complete = mask_complete_for(p.mask, p.causal, a.diag) ? 1 : 0;
#if LONGATTN_HAVE_SM90
  a.runs = a.complete ? 0 : sm90::fwd_runs(static_cast<int>(p.q.D), p.mask);
  a.runs_narrow = a.runs ? sm90::fwd_runs_narrow(a, static_cast<int>(p.q.D), p.mask) : 0;
  a.gather = a.complete || a.runs ? 0 : sm90::fwd_gather(a, static_cast<int>(p.q.D), p.mask);
  a.o_vec = p.o.dtype == p.q.dtype && allows_vec(p.o) && sm90::o_vec_enabled() ? 1 : 0;
#endif
  return a;
}

// Once per process: a call the Hopper kernels would take but for its mask's blocks (not
// 128-multiples, such as block-sparse block_size 64) says that it runs the portable kernels.
std::atomic<bool> g_portable_blocks_said{false};
std::atomic<bool> g_bwd_wrote_dkv{false};  // backward_last_wrote_dkv

void warn_portable_blocks_once(DType dt, int64_t D, bool vec, const BlockMaskView& m) {
#if LONGATTN_HAVE_SM90
  std::atomic<bool>& said = g_portable_blocks_said;
  if ((dt != DType::BF16 && dt != DType::F16) || (D != 64 && D != 128) || !vec) return;
  if (m.block_q % 128 == 0 && m.block_k % 128 == 0) return;
  if (said.load() || !sm90::device_enabled() || said.exchange(true)) return;
  longattn::log(LogLevel::Warn, "attention over ", m.block_q, "x", m.block_k,
      " mask blocks runs the portable CUDA kernels on this GPU: its Hopper kernels take blocks "
      "of multiples of 128 (block_size 128)");
#else
  (void)dt, (void)D, (void)vec, (void)m;
#endif
}

bool takes_sm90(const FwdArgs& a, DType dt, int64_t D) {
#if LONGATTN_HAVE_SM90
  return sm90::fwd_accepts(a, dt, static_cast<int>(D));
#else
  (void)a, (void)dt, (void)D;
  return false;
#endif
}

}  // namespace

std::string flash_forward_kernel(const AttnFwdParams& p) {
  const FwdArgs a = make_fwd_args(p);
  if (p.q.dtype == DType::F32) return "fp32";
  if (!takes_sm90(a, p.q.dtype, p.q.D)) return "portable";
#if LONGATTN_HAVE_SM90
  if (a.gather != 0) return "sm90-gather";
  if (sm90::fwd_wide(a, static_cast<int>(p.q.D))) return "sm90-wide";
#endif
  return "sm90";
}

void flash_forward(const AttnFwdParams& p, cudaStream_t stream, cudaMemPool_t pool) {
  const FwdArgs a = make_fwd_args(p);
  if (p.q.N == 0 || p.q.B == 0 || p.q.H == 0) return;
  const DType dt = p.q.dtype;
#if LONGATTN_HAVE_SM90
  // Hopper: the warp-specialised TMA + wgmma kernel where it applies (sm_90, fp16/bf16, head dim
  // 64/128, 128-multiple mask blocks, 16-byte aligned rows); the portable kernels otherwise.
  if (takes_sm90(a, dt, p.q.D))
    return sm90::flash_forward(a, dt, static_cast<int>(p.q.D), stream, pool);
#endif
  warn_portable_blocks_once(dt, p.q.D, a.vec != 0, p.mask);
  // 128 query rows per CTA when the mask's query blocks allow it (more reuse of each K/V tile).
  const int m_tiles = (a.mask.block_q % 128 == 0 && p.q.D <= 128) ? 2 : 1;
  switch (p.q.D) {
    case 32: dispatch_fwd<32>(a, dt, m_tiles, stream); break;
    case 64: dispatch_fwd<64>(a, dt, m_tiles, stream); break;
    case 128: dispatch_fwd<128>(a, dt, m_tiles, stream); break;
    default: dispatch_fwd<256>(a, dt, m_tiles, stream); break;
  }
}

namespace {

// The kernels' argument struct for one backward call, delta not yet set (after the checks).
BwdArgs make_bwd_args(const AttnBwdParams& p) {
  validate_backward(p);
  check_common(p.q, p.k, p.lse);
  const DType dt = p.q.dtype;
  LONGATTN_CHECK_ARG(p.d_o.dtype == dt, "d_o", dtype_name(p.d_o.dtype),
                     std::string("must have the input dtype ") + dtype_name(dt));
  BwdArgs a;
  a.q = dev_view(p.q, "q");
  a.k = dev_view(p.k, "k");
  a.v = dev_view(p.v, "v");
  a.o = dev_view(p.o, "o");
  a.d_o = dev_view(p.d_o, "d_o");
  a.dq = dev_view(p.dq, "dq");
  a.dk = dev_view(p.dk, "dk");
  a.dv = dev_view(p.dv, "dv");
  a.o_type = out_type(p.o, dt, "o");
  a.dq_type = out_type(p.dq, dt, "dq");
  a.dk_type = out_type(p.dk, dt, "dk");
  a.dv_type = out_type(p.dv, dt, "dv");
  a.lse = stat_view(p.lse);
  if (p.q.N == 0 || p.k.N == 0 || p.q.B == 0 || p.q.H == 0) return a;
  a.mask = dev_mask(p.mask, "mask");
  a.mask_t = dev_mask(p.mask_t, "mask_t");
  LONGATTN_CHECK_ARG(p.mask_t.block_q == p.mask.block_k && p.mask_t.block_k == p.mask.block_q &&
                         p.mask_t.num_q_blocks == p.mask.num_k_blocks &&
                         p.mask_t.nnz == p.mask.nnz,
                     "mask_t",
                     std::to_string(p.mask_t.num_q_blocks) + " rows of " +
                         std::to_string(p.mask_t.block_q),
                     "must be the transpose of mask");
  a.B = static_cast<int>(p.q.B);
  a.H = static_cast<int>(p.q.H);
  a.Nq = static_cast<int>(p.q.N);
  a.Nk = static_cast<int>(p.k.N);
  a.D = static_cast<int>(p.q.D);
  const double scale = effective_scale(p.scale, p.q.D);
  a.scale = static_cast<float>(scale);
  a.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  a.causal = p.causal ? 1 : 0;
  a.diag = p.q_offset - p.k_offset;
  a.vec = allows_vec(p.q) && allows_vec(p.k) && allows_vec(p.v) && allows_vec(p.d_o);
  a.complete = mask_complete_for(p.mask, p.causal, a.diag) ? 1 : 0;
#if LONGATTN_HAVE_SM90
  a.runs = a.complete ? 0 : sm90::bwd_runs(static_cast<int>(p.q.D), p.mask_t);
#endif
  return a;
}

bool atomic_dq_of(const AttnBwdParams& p) {
  // Atomics need an fp32 dq; the fp32-input path always uses its query-stationary dQ pass.
  return !p.deterministic && p.dq.dtype == DType::F32 && p.q.dtype != DType::F32;
}

bool bwd_takes_sm90(const BwdArgs& a, const AttnBwdParams& p) {
#if LONGATTN_HAVE_SM90
  return sm90::bwd_accepts(a, p.q.dtype, static_cast<int>(p.q.D), atomic_dq_of(p));
#else
  (void)a, (void)p;
  return false;
#endif
}

}  // namespace

std::string flash_backward_kernel(const AttnBwdParams& p) {
  const BwdArgs a = make_bwd_args(p);
  if (p.q.dtype == DType::F32) return "fp32";
  if (!bwd_takes_sm90(a, p)) return "portable";
#if LONGATTN_HAVE_SM90
  switch (sm90::bwd_tiles(a, static_cast<int>(p.q.D))) {
    case BackwardTiles::kPosition80: return "sm90-m80";
    case BackwardTiles::kPosition128: return "sm90-m128";
    case BackwardTiles::kListed128: return "sm90-m128-lists";
    case BackwardTiles::kListed64: break;
  }
#endif
  return "sm90";
}

bool portable_blocks_warned() { return g_portable_blocks_said.load(); }

int forward_last_split_pieces() {
#ifdef LONGATTN_HAVE_SM90
  return sm90::last_fwd_split_pieces();
#else
  return 0;
#endif
}

int forward_last_short_items() {
#ifdef LONGATTN_HAVE_SM90
  return sm90::last_fwd_short_items();
#else
  return 0;
#endif
}

int forward_last_narrow_keys() {
#ifdef LONGATTN_HAVE_SM90
  return sm90::last_fwd_narrow_keys();
#else
  return 0;
#endif
}

bool backward_last_wrote_dkv() { return g_bwd_wrote_dkv.load(); }

bool backward_last_stored_dkv_by_tma() {
#if LONGATTN_HAVE_SM90
  return g_bwd_wrote_dkv.load() && sm90::last_bwd_dkv_store();
#else
  return false;
#endif
}

int backward_last_tail_parts() {
#ifdef LONGATTN_HAVE_SM90
  return sm90::last_bwd_tail_parts();
#else
  return 0;
#endif
}

void set_persistent_grid_limit(int ctas, int group) {
#ifdef LONGATTN_HAVE_SM90
  sm90::set_grid_limit(ctas, group);
#else
  (void)ctas;
  (void)group;
#endif
}

namespace {

std::atomic<bool> g_bwd_dq_transposed{false};

// dq (a [B, Nq, H, D] view, unit stride on D) = the transposed accumulator acc (per (batch,
// head) `tiles` blocks of [D][80 slots], backward_dq_t_offset), without shared memory: a warp
// takes 8 queries (chunks 2 n, 2 n + 1 of backward_dq_t_slot) and 64 columns of a block, lane l
// columns c0 + 2 l and + 1, whose rows' swizzle ((column >> 1) & 3) is the same, so it reads one
// 32-byte sector of each of its two rows (the chunks' swizzled places are a pair) and writes the
// 8 queries' two columns, each query's 64 columns one piece of the warp (store_out2: dq of the
// input dtype T or fp32 by `type`, pairs where the view's base and strides are even).
template <typename T>
__global__ void __launch_bounds__(256) dq_from_transposed_kernel(
    void* dq, int type, int64_t sb, int64_t sn, int64_t sh, const float* __restrict__ acc, int nq,
    int H, int64_t tiles, int64_t tasks, bool pairs, bool last_first) {
  constexpr int D = 128;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Launched with programmatic serialisation after the backward kernel (dq_convert_pdl): its
  // sums complete and visible from here on.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  const int lane = threadIdx.x & 31;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < tasks;
       w += warps) {
    // (last_first) Last blocks first: the last heads' sums are the likeliest still in L2.
    const int64_t task = last_first ? tasks - 1 - w : w;
    const int n = static_cast<int>(task % 10);  // queries 8 n .. 8 n + 7 of the tile
    const int64_t rest = task / 10;
    const int d = static_cast<int>(rest & 1) * 64 + 2 * lane;
    const int64_t blk = rest >> 1;
    const int sw = (d >> 1) & 3;
    const float* src = acc + blk * (D * 80) + static_cast<int64_t>(d) * 80;
    // Chunk 2 n + e (queries 8 n + e + 2 t, word t) of rows d and d + 1 at chunk (2 n + e) ^ sw.
    float4 v[2][2];  // [e][row]
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        v[e][r] = __ldg(reinterpret_cast<const float4*>(src + r * 80 + 4 * ((2 * n + e) ^ sw)));
    const int64_t bh = blk / tiles, q0 = (blk % tiles) * 80 + 8 * n;
    const int64_t at = (bh / H) * sb + (bh % H) * sh + d;
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const int64_t q = q0 + e + 2 * t;
        if (q >= nq) continue;
        const float x0 = t == 0 ? v[e][0].x : t == 1 ? v[e][0].y : t == 2 ? v[e][0].z : v[e][0].w;
        const float x1 = t == 0 ? v[e][1].x : t == 1 ? v[e][1].y : t == 2 ? v[e][1].z : v[e][1].w;
        flash::store_out2<T>(dq, at + q * sn, type, x0, x1, pairs);
      }
  }
}

// Measurement switch: LONGATTN_DQ_CONVERT_PDL=0 launches the conversion without programmatic
// serialisation.
bool dq_convert_pdl() { return env_switch_on("LONGATTN_DQ_CONVERT_PDL"); }

// Measurement switch: LONGATTN_DQ_CONVERT_LAST_FIRST=0 converts the blocks first to last.
bool dq_convert_last_first() { return env_switch_on("LONGATTN_DQ_CONVERT_LAST_FIRST"); }

// (in: the inputs' dtype; dq of it or fp32.)
void dq_from_transposed(const TensorView& dq, DType in, const float* acc, int64_t rows,
                        cudaStream_t stream) {
  const DevView v = dev_view(dq, "dq");
  LONGATTN_CHECK_ARG(dq.D == 128, "dq", dq.D, "the transposed accumulator is for head dim 128");
  const int64_t tiles = rows / 80, tasks = dq.B * dq.H * tiles * 20;  // 2 halves x 10 groups
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1)
      n = 132;
    return n;
  }();
  const unsigned grid =
      static_cast<unsigned>(std::min<int64_t>((tasks + 7) / 8, int64_t{8} * sms));
  const int nq = static_cast<int>(dq.N), H = static_cast<int>(dq.H);
  const size_t es = dtype_size(dq.dtype);
  const bool pairs = reinterpret_cast<uintptr_t>(v.data) % (2 * es) == 0 && v.sb % 2 == 0 &&
                     v.sn % 2 == 0 && v.sh % 2 == 0;
  const int type = out_type(dq, in, "dq");
  // Programmatic serialisation: its CTAs may take the SMs the backward kernel's leave (that one
  // says so once its counter has no work left) and wait there for its completion.
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(256);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = dq_convert_pdl() ? 1 : 0;
  void* const out = v.data;
  const bool last_first = dq_convert_last_first();
  if (in == DType::BF16)
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, dq_from_transposed_kernel<__nv_bfloat16>, out, type, v.sb,
                                  v.sn, v.sh, acc, nq, H, tiles, tasks, pairs, last_first));
  else
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, dq_from_transposed_kernel<__half>, out, type, v.sb, v.sn,
                                  v.sh, acc, nq, H, tiles, tasks, pairs, last_first));
  CUDA_CHECK_LAUNCH("dq_from_transposed_kernel");
}

// The call itself, into p.dq (fp32 for the atomic paths), or with dq_t into the transposed
// accumulator (sm90::bwd_dq_transposed; dq then left to the caller).
void flash_backward_run(const AttnBwdParams& p, cudaStream_t stream, cudaMemPool_t pool,
                        float* dq_t, int64_t dq_t_rows);

}  // namespace

DqAccumulator backward_dq_accumulator(const AttnBwdParams& p) {
  DqAccumulator acc;
  if (p.deterministic || p.q.dtype == DType::F32 || p.q.N == 0 || p.k.N == 0 || p.q.B == 0 ||
      p.q.H == 0)
    return acc;
  [[maybe_unused]] const BwdArgs a = make_bwd_args(p);
#if LONGATTN_HAVE_SM90
  // (The Hopper kernels would take the call with an fp32 dq: what bwd_takes_sm90 asks, but
  // whatever dq's dtype.)
  if (!p.accumulate && sm90::bwd_accepts(a, p.q.dtype, static_cast<int>(p.q.D), true) &&
      sm90::bwd_dq_transposed(a, static_cast<int>(p.q.D))) {
    acc.transposed = true;
    acc.rows = backward_dq_t_rows(p.q.N);
    acc.floats = static_cast<size_t>(p.q.B) * p.q.H * p.q.D * acc.rows;
    return acc;
  }
#endif
  if (p.dq.dtype != DType::F32) acc.floats = static_cast<size_t>(p.dq.numel());
  return acc;
}

bool backward_last_dq_transposed() { return g_bwd_dq_transposed.load(); }

void flash_backward(const AttnBwdParams& p, cudaStream_t stream, cudaMemPool_t pool,
                    void* dq_acc, const DqAccumulator* plan) {
  g_bwd_dq_transposed.store(false);
  const DqAccumulator acc = plan != nullptr ? *plan : backward_dq_accumulator(p);
  if (acc.floats == 0) {
    LONGATTN_CHECK_ARG(dq_acc == nullptr, "dq_acc", "given",
                       "this call takes no dq accumulator (backward_dq_accumulator)");
    return flash_backward_run(p, stream, pool, nullptr, 0);
  }
  // (Not given: one from the pool, stream-ordered.)
  float* const own =
      dq_acc == nullptr ? scratch_async<float>(acc.floats * sizeof(float), pool, stream) : nullptr;
  float* const buf = dq_acc != nullptr ? static_cast<float*>(dq_acc) : own;
  try {
    AttnBwdParams run = p;
    run.dq = make_view(buf, DType::F32, p.dq.B, p.dq.N, p.dq.H, p.dq.D, DeviceKind::Cuda);
    if (acc.transposed) {
      flash_backward_run(run, stream, pool, buf, acc.rows);
      dq_from_transposed(p.dq, p.q.dtype, buf, acc.rows, stream);
      g_bwd_dq_transposed.store(true);
    } else {
      if (p.accumulate) cuda::fill(run.dq, 0.0, stream);  // (else flash_backward_run zeroes it)
      flash_backward_run(run, stream, pool, nullptr, 0);
      if (p.accumulate)
        cuda::axpy(p.dq, 1.0, run.dq, stream);
      else
        cuda::copy(p.dq, run.dq, stream);
    }
  } catch (...) {
    if (own != nullptr) cudaFreeAsync(own, stream);
    throw;
  }
  if (own != nullptr) CUDA_CHECK(cudaFreeAsync(own, stream));
}

namespace {

void flash_backward_run(const AttnBwdParams& p, cudaStream_t stream, cudaMemPool_t pool,
                        float* dq_t, int64_t dq_t_rows) {
  BwdArgs a = make_bwd_args(p);
  g_bwd_wrote_dkv.store(false);
#if LONGATTN_HAVE_SM90
  sm90::note_bwd_dkv_store(false);
#endif
  if (p.q.N == 0 || p.k.N == 0 || p.q.B == 0 || p.q.H == 0) {
    if (!p.accumulate)  // no pair seen: zero gradients
      for (const TensorView* t : {&p.dq, &p.dk, &p.dv})
        if (t->numel() > 0) cuda::fill(*t, 0.0, stream);
    return;
  }
  const DType dt = p.q.dtype;
  float* scratch = nullptr;
  // The transposed accumulator, zeroed by the delta kernel's launch where it runs (as one
  // launch, its lines the likeliest in L2 when the first works add), else by a memset below.
  const size_t dq_t_bytes =
      dq_t != nullptr ? static_cast<size_t>(a.B) * a.H * a.D * dq_t_rows * sizeof(float) : 0;
  bool dq_t_zeroed = false;
  if (p.delta.data) {
    LONGATTN_CHECK_ARG(p.delta.dtype == DType::F32, "delta", dtype_name(p.delta.dtype),
                       "must be fp32 for the CUDA kernels");
    a.delta = stat_view(p.delta);
  } else {
    scratch = scratch_async<float>(static_cast<size_t>(a.B) * a.Nq * a.H * sizeof(float), pool,
                                   stream);
    a.delta.data = scratch;
    a.delta.sb = static_cast<int64_t>(a.Nq) * a.H;
    a.delta.sn = a.H;
    a.delta.sh = 1;
    const bool fuse = dq_t != nullptr && !p.accumulate && dq_t_bytes % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(dq_t) % 16 == 0 && zero_in_delta_enabled();
    dq_t_zeroed = launch_delta(a, dt, scratch, p.o.dtype == dt && allows_vec(p.o), stream,
                               fuse ? dq_t : nullptr, fuse ? dq_t_bytes : 0);
  }
  const bool atomic_dq = atomic_dq_of(p);
  a.dq_pair = allows_pair(p.dq);  // float2 atomics, or pairs in the dQ pass's read-modify-write
  a.dkv_pair = allows_pair(p.dk) && allows_pair(p.dv);
#if LONGATTN_HAVE_SM90
  a.dkv_vec = allows_vec(p.dk) && allows_vec(p.dv) && sm90::dkv_vec_enabled() ? 1 : 0;
#endif
  try {
    [[maybe_unused]] const bool sm90_path = bwd_takes_sm90(a, p);
    // Overwritten gradients: dq zeroed here (its kernels add); dk and dv written by the Hopper
    // kernel where it can (sm90::bwd_writes_dkv: of the input dtype, tiles by position), else
    // zeroed here too.
    if (!p.accumulate) {
      if (dq_t != nullptr) {
        if (!dq_t_zeroed) CUDA_CHECK(cudaMemsetAsync(dq_t, 0, dq_t_bytes, stream));
      } else {
        cuda::fill(p.dq, 0.0, stream);
      }
#if LONGATTN_HAVE_SM90
      if (sm90_path && sm90::bwd_writes_dkv(a, static_cast<int>(p.q.D))) {
        a.dkv_write = 1;
        g_bwd_wrote_dkv.store(true);
      }
#endif
      if (a.dkv_write == 0) {
        cuda::fill(p.dk, 0.0, stream);
        cuda::fill(p.dv, 0.0, stream);
      }
    }
    LONGATTN_CHECK_ARG(dq_t == nullptr || (a.dkv_write != 0 && !p.accumulate), "dq_acc",
                       "transposed", "is for the calls that write dk and dv (bwd_dq_transposed)");
    a.dq_t = dq_t;
    a.dq_t_rows = dq_t_rows;
#if LONGATTN_HAVE_SM90
    if (sm90_path) {
      // Listed 64-query tiles per 128-key block (CTA), for how many parts the query range takes.
      const double tiles = static_cast<double>(p.mask_t.nnz) * (p.mask_t.block_k / 64) /
                           std::max<int64_t>(p.mask_t.num_q_blocks, 1);
      a.rotate = sm90::bwd_rotate(a, static_cast<int>(p.q.D), p.mask_t.row_fill);
      a.dkv_reduce = sm90::bwd_dkv_reduce(static_cast<int>(p.q.D), tiles, p.mask_t.row_fill);
      a.q_splits = sm90::bwd_query_splits(a, static_cast<int>(p.q.D), tiles, p.mask_t.row_fill);
      a.work_group = sm90::bwd_work_group(a, static_cast<int>(p.q.D));
      if (a.q_splits > 1) {
        const int nkb = (a.Nk + sm90::kBwdKeysPerCta - 1) / sm90::kBwdKeysPerCta;
        const size_t flags = static_cast<size_t>(a.B) * a.H * nkb * sizeof(int);
        a.split_flags = scratch_async<int>(flags, pool, stream);
        CUDA_CHECK(cudaMemsetAsync(a.split_flags, 0, flags, stream));
      }
      try {
        sm90::flash_backward(a, dt, static_cast<int>(p.q.D), stream, pool);
      } catch (...) {
        if (a.split_flags) cudaFreeAsync(a.split_flags, stream);
        throw;
      }
      if (a.split_flags) CUDA_CHECK(cudaFreeAsync(a.split_flags, stream));
      if (scratch) CUDA_CHECK(cudaFreeAsync(scratch, stream));
      return;
    }
#endif
    warn_portable_blocks_once(dt, p.q.D, a.vec != 0, p.mask);
    switch (p.q.D) {
      case 32: dispatch_bwd<32>(a, dt, atomic_dq, stream); break;
      case 64: dispatch_bwd<64>(a, dt, atomic_dq, stream); break;
      case 128: dispatch_bwd<128>(a, dt, atomic_dq, stream); break;
      default: dispatch_bwd<256>(a, dt, atomic_dq, stream); break;
    }
  } catch (...) {
    if (scratch) cudaFreeAsync(scratch, stream);
    throw;
  }
  if (scratch) CUDA_CHECK(cudaFreeAsync(scratch, stream));
}

}  // namespace

}  // namespace longattn::cuda
