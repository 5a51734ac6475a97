// Device helpers of the flash attention kernels: the plain argument structs the host fills,
// tensor-core (mma.sync m16n8k16, ldmatrix) and cp.async wrappers, and the tile loaders.
// Included by kernels/cuda/flash_*.cu only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace longattn::cuda::flash {

// A strided device tensor [B, N, H, D] (element strides; unit stride on D).
struct DevView {
  void* data = nullptr;
  int64_t sb = 0, sn = 0, sh = 0;
};

// A CSR block mask in device memory (kernels/contract.hpp BlockMaskView).
struct DevMask {
  const int64_t* row_ptr = nullptr;
  const int32_t* col_idx = nullptr;
  const uint8_t* partial = nullptr;
  int block_q = 64, block_k = 64;  // rows of the first / second operand per block
};

// Output element type codes for views whose dtype may differ from the inputs'.
enum : int { kOutSame = 0, kOutF32 = 1 };

struct FwdArgs {
  DevView q, k, v, o, lse;
  int B = 0, H = 0, Nq = 0, Nk = 0;
  float scale = 0.f;       // softmax scale
  float scale_log2 = 0.f;  // scale * log2(e): scores live in the exp2 domain
  DevMask mask;
  int causal = 0;
  int64_t diag = 0;  // q_offset - k_offset: (i, j) visible iff j - i <= diag when causal
  int vec = 0;       // q, k, v allow 16-byte loads
  int o_type = kOutSame;
  int o_pair = 0;    // o allows 2-element (4-byte for 16-bit types) stores
  // o is of the input dtype and allows 16-byte stores (the Hopper forward then stores whole
  // 8-column groups: LONGATTN_SM90_O_VEC=0 turns that off).
  int o_vec = 0;
  int complete = 0;  // the mask lists every key block the call can see (mask_complete_for)
  // The mask's rows are runs of consecutive key blocks and the Hopper forward walks each row's
  // key range by position (forward_wide_runs).
  int runs = 0;
  // With runs: the keys of each walk's narrow first tile at head dim 128 (64 or 128,
  // forward_runs_narrow_keys; 0: none).
  int runs_narrow = 0;
  // The Hopper forward gathers each row's listed blocks into 192-key tiles
  // (forward_gathered_tiles).
  int gather = 0;
};

struct BwdArgs {
  DevView q, k, v, o, d_o, lse, delta, dq, dk, dv;
  int B = 0, H = 0, Nq = 0, Nk = 0;
  int D = 0;
  float scale = 0.f, scale_log2 = 0.f;
  DevMask mask;    // by query block
  DevMask mask_t;  // by key block: block_q = key block size, block_k = query block size
  int causal = 0;
  int64_t diag = 0;
  int vec = 0;  // q, k, v, d_o allow 16-byte loads
  int o_type = kOutSame;
  int dq_type = kOutSame, dk_type = kOutSame, dv_type = kOutSame;
  int dq_pair = 0;  // dq allows two adjacent elements as one access (float2 atomics when fp32)
  int dkv_pair = 0;  // dk and dv allow two adjacent elements as one access
  // dk and dv allow 16-byte accesses (the Hopper backward then adds whole 8-column groups:
  // LONGATTN_SM90_DKV_VEC=0 turns that off).
  int dkv_vec = 0;
  // Hopper backward: the query range cut into q_splits parts, one CTA per (key block, part);
  // the parts of a key block add into dk and dv in order, part s after split_flags[...] says
  // parts 0..s-1 have (one int per batch, head and key block, zeroed before the launch), but
  // where dK and dV go out by TMA reduces (dkv_reduce), which add in any order.
  int q_splits = 1;
  int* split_flags = nullptr;
  // Hopper backward: dK and dV added by TMA reduces (backward_dkv_reduce) where dk and dv are
  // fp32 that TMA can address; the parts of a query range then add in any order.
  int dkv_reduce = 0;
  // Hopper backward: where each work's walk over its query tiles starts (wrapping around).
  // 1 (head dim 64, dense rows): at an offset that grows with its key block, so CTAs running
  // together add into different dQ tiles; 2 (head dim 128, scattered rows): at a phase from the
  // work's index (backward_phase_start), so CTAs running together walk one window of the query
  // range; 0: at the first tile.
  int rotate = 0;
  // The mask lists every key block the call can see (mask_complete_for): the Hopper backward then
  // walks its tiles by position (80 queries at head dim 128, 128 at 64).
  int complete = 0;
  // Not complete, but every row of mask_t is one run of query blocks (backward_runs_by_position):
  // the Hopper backward walks its tiles by position over each row's range (80 queries at head
  // dim 128, 128 at 64).
  int runs = 0;
  // Hopper backward: the works' order. 0: head by head, each head's key blocks in order; g > 0
  // (causal calls): heads in groups of g (backward_work_group), within a group key block by key
  // block across its heads, so the longest works (the first key blocks under causality) of
  // every head of the group come first.
  int work_group = 0;
  // Hopper backward over equal works (backward_tail_split): works tail_first.. of the last
  // round cut along their query range into tail_parts parts each, or their query tiles taken
  // one after the other cut into tail_spans spans (backward_span_piece; 0 and 0: none), taken
  // after the whole works and adding their dK and dV by TMA reduces (fp32 dk, dv), or meeting
  // in piece_scratch (16-bit dk, dv).
  int tail_first = 0;
  int tail_parts = 0;
  int tail_spans = 0;
  // With dk and dv of the 16-bit input dtype (no reduces), the split works' pieces store their
  // fp32 sums in piece_scratch (per split work piece_max slots of 2 x 128 x D floats) and count
  // themselves in piece_counts (one zeroed int per split work, which the last piece, the one
  // that adds them up in piece order and stores the total, zeroes again); null: no such split.
  float* piece_scratch = nullptr;
  int* piece_counts = nullptr;
  int piece_max = 0;
  // Hopper backward, AttnBwdParams::accumulate false where sm90::bwd_writes_dkv: the kWrite
  // instantiation, whose first (or only) part of each key block writes its dK and dV instead of
  // adding them (the later parts, ordered by split_flags, add).
  int dkv_write = 0;
  // With dkv_write, the 80-query kernel's whole works write dk and dv (16-bit, 16-byte aligned)
  // by TMA stores of boxes staged in shared memory (the launch's maps are of the input dtype),
  // so the consumers go on to the next work while the stores drain; 0: from registers.
  int dkv_store = 0;
  // Hopper backward, the 80-query writing kernel (sm90::bwd_dq_transposed): dQ is added into
  // this zeroed fp32 accumulator of dq transposed, [B][H][D][dq_t_rows] (dq_t_rows: Nq rounded
  // up to 8), query q at slot backward_dq_t_slot(q) of its row, instead of into dq, which
  // flash_backward then writes from it; null: into dq.
  float* dq_t = nullptr;
  int64_t dq_t_rows = 0;
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x with the special-function unit: 2^-inf = +0, relative error ~2^-22.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst_smem, const void* src_global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst_smem)),
               "l"(src_global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i holds
// matrix i with lane l owning row l/4, columns 2(l%4), 2(l%4)+1 (transposed with .trans).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// Same, from a 32-bit shared-memory address (lets the compiler fold tile offsets into
// immediates and keep one base register per operand).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Element-type traits: the mma.sync instruction and fp32 <-> T conversions.
template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
  // d += a * b, 16x8x16, fp32 accumulation.
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Copies rows [0, ROWS) of a strided [rows x D] global tile into shared memory with row stride
// SSTRIDE elements; rows >= valid are zero-filled (so padding keys and queries are finite and
// contribute nothing). vec: 16-byte cp.async (caller commits and waits), else scalar loads.
// Thread t copies 16-byte chunk t % (D/8) of rows t / (D/8) + i * (THREADS / (D/8)).
template <int ROWS, int D, int SSTRIDE, int THREADS, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t row_stride, int valid,
                                          bool vec, int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && ROWS % kRowStep == 0, "tile chunks must divide");
  const int r0 = tid / kChunks, cc = tid % kChunks;
  const T* src = g + r0 * row_stride + cc * 8;
  T* dst = s + r0 * SSTRIDE + cc * 8;
  const int64_t src_step = kRowStep * row_stride;
  if (vec && valid >= ROWS) {  // the common case: no per-row checks
#pragma unroll
    for (int i = 0; i < ROWS / kRowStep; ++i)
      cp_async16(dst + i * kRowStep * SSTRIDE, src + i * src_step);
    return;
  }
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    T* d = dst + i * kRowStep * SSTRIDE;
    if (r0 + i * kRowStep < valid) {
      if (vec) {
        cp_async16(d, src + i * src_step);
      } else {
        const unsigned short* src16 = reinterpret_cast<const unsigned short*>(src + i * src_step);
        unsigned short* dst16 = reinterpret_cast<unsigned short*>(d);
#pragma unroll
        for (int e = 0; e < 8; ++e) dst16[e] = src16[e];
      }
    } else {
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// 4-byte asynchronous copy (per-row statistics such as lse and delta).
__device__ __forceinline__ void cp_async4(void* dst_smem, const void* src_global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst_smem)),
               "l"(src_global));
}

// Element store into an output of type T or fp32, optionally accumulating (dst += x).
template <typename T>
__device__ __forceinline__ void store_out(void* base, int64_t off, int type, float x,
                                          bool accumulate) {
  if (type == kOutF32 || std::is_same_v<T, float>) {
    float* p = static_cast<float*>(base) + off;
    *p = accumulate ? *p + x : x;
  } else if constexpr (!std::is_same_v<T, float>) {
    T* p = static_cast<T*>(base) + off;
    *p = Elem<T>::from_float(accumulate ? Elem<T>::to_float(*p) + x : x);
  }
}

// Two adjacent elements (off, off + 1); pair = 4-byte (16-bit T) or 8-byte (fp32) aligned.
template <typename T>
__device__ __forceinline__ void store_out2(void* base, int64_t off, int type, float x0, float x1,
                                           bool pair) {
  if (type == kOutF32) {
    float* p = static_cast<float*>(base) + off;
    if (pair) {
      *reinterpret_cast<float2*>(p) = make_float2(x0, x1);
    } else {
      p[0] = x0;
      p[1] = x1;
    }
  } else {
    T* p = static_cast<T*>(base) + off;
    if (pair) {
      *reinterpret_cast<uint32_t*>(p) = Elem<T>::pack(x0, x1);
    } else {
      p[0] = Elem<T>::from_float(x0);
      p[1] = Elem<T>::from_float(x1);
    }
  }
}

// Offsets of rows r0 and r0 + 8 of a [B, N, H, D] view (plus the column 2 t4) and whether they
// are below n: the two rows of an mma / wgmma accumulator fragment.
__device__ __forceinline__ void fragment_rows(const DevView& v, int b, int h, int r0, int n, int t4,
                                              int64_t (&off)[2], bool (&ok)[2]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int r = r0 + hh * 8;
    ok[hh] = r < n;
    off[hh] = b * v.sb + static_cast<int64_t>(r) * v.sn + h * v.sh + 2 * t4;
  }
}

// Pairs (two adjacent elements) of rows with ok[r]: old[r][dt] = load(r, dt) for all of them
// (zero for rows without rd[r]) first, then store(r, dt, old[r][dt]); rows kRows at a time.
template <int kRows, int NDT, typename W, typename Load, typename Store>
__device__ __forceinline__ void rmw_pairs(const bool (&ok)[2], const bool (&rd)[2], W zero,
                                          Load load, Store store) {
#pragma unroll
  for (int h0 = 0; h0 < 2; h0 += kRows) {
    W old[kRows][NDT];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int dt = 0; dt < NDT; ++dt) old[r][dt] = rd[h0 + r] ? load(h0 + r, dt) : zero;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int dt = 0; dt < NDT; ++dt)
        if (ok[h0 + r]) store(h0 + r, dt, old[r][dt]);
  }
}

// out[row hh, column dt * 8 + 2 t4 + e] += mul * acc(hh, dt, e) for the two rows of an mma /
// wgmma accumulator fragment (off, ok: fragment_rows). The old values are loaded before any sum
// is stored (both rows at once up to 16 column groups, else row by row): independent loads share
// one memory latency, where element by element each load waits behind the previous store, which
// may alias it. pair: two adjacent elements per access (4-byte aligned for 16-bit outputs,
// 8-byte for fp32). write: out = mul * acc, no old values loaded (the same bits as adding to
// zeros).
template <typename T, int NDT, typename Acc>
__device__ __forceinline__ void add_rows_out(void* data, int type, bool pair,
                                             const int64_t (&off)[2], const bool (&ok)[2],
                                             float mul, Acc acc, bool write = false) {
  constexpr int kRows = NDT <= 16 ? 2 : 1;  // rows whose old values are held at once
  const bool rd[2] = {ok[0] && !write, ok[1] && !write};  // rows whose old values are read
  if (!pair) {  // odd strides or base (rare): element by element
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
      for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (ok[hh])
            store_out<T>(data, off[hh] + dt * 8 + e, type, mul * acc(hh, dt, e), !write);
  } else if (type == kOutF32 || std::is_same_v<T, float>) {
    float* p = static_cast<float*>(data);
    rmw_pairs<kRows, NDT>(
        ok, rd, make_float2(0.f, 0.f),
        [&](int r, int dt) { return *reinterpret_cast<const float2*>(p + off[r] + dt * 8); },
        [&](int r, int dt, float2 old) {
          *reinterpret_cast<float2*>(p + off[r] + dt * 8) =
              make_float2(old.x + mul * acc(r, dt, 0), old.y + mul * acc(r, dt, 1));
        });
  } else if constexpr (!std::is_same_v<T, float>) {
    T* p = static_cast<T*>(data);
    rmw_pairs<kRows, NDT>(
        ok, rd, 0u,
        [&](int r, int dt) { return *reinterpret_cast<const uint32_t*>(p + off[r] + dt * 8); },
        [&](int r, int dt, uint32_t old) {
          const T* two = reinterpret_cast<const T*>(&old);
          *reinterpret_cast<uint32_t*>(p + off[r] + dt * 8) =
              Elem<T>::pack(Elem<T>::to_float(two[0]) + mul * acc(r, dt, 0),
                            Elem<T>::to_float(two[1]) + mul * acc(r, dt, 1));
        });
  }
}

// Listed tiles of a CSR mask row: mask blocks of block_k rows are cut into block_k / TILE tiles
// of TILE rows; item = (entry - e_begin) * (block_k / TILE) + sub-tile. tile_start gives the
// first row of the item's tile in the second operand.
template <int TILE>
__device__ __forceinline__ int tile_start(const DevMask& m, int64_t e_begin, int item) {
  const int nsub = m.block_k / TILE;
  return m.col_idx[e_begin + item / nsub] * m.block_k + (item % nsub) * TILE;
}
template <int TILE>
__device__ __forceinline__ bool tile_partial(const DevMask& m, int64_t e_begin, int item) {
  return m.partial[e_begin + item / (m.block_k / TILE)] != 0;
}

}  // namespace longattn::cuda::flash

namespace longattn::cuda::flash {

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kPosInf = __builtin_huge_valf();

// Launchers, explicitly instantiated per (dtype, head dim) in kernels/cuda/flash_{fwd,bwd}_*.cu
// so the CUDA build spreads over many small translation units.
// m_tiles: 16-row mma tiles per warp (1: 64 query rows per CTA, 2: 128; needs D <= 128).
template <typename T, int D>
void launch_fwd(const FwdArgs& a, int m_tiles, cudaStream_t stream);
// atomic_dq: dQ by fp32 atomicAdd into a.dq (fp32) from the key-stationary pass; otherwise a
// separate query-stationary pass accumulates dQ without atomics.
template <typename T, int D>
void launch_bwd(const BwdArgs& a, bool atomic_dq, cudaStream_t stream);
template <int D>
void launch_fwd_f32(const FwdArgs& a, cudaStream_t stream);
template <int D>
void launch_bwd_f32(const BwdArgs& a, cudaStream_t stream);

}  // namespace longattn::cuda::flash
