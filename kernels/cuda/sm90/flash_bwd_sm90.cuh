// Backward flash attention for Hopper (sm_90a): key-block-stationary, TMA + wgmma,
// warp-specialised, dQ accumulated in fp32 by TMA reduce-add.
//
// Works of 128 keys of one (batch, head) (and one part of the query range), each walking the
// query tiles (64 rows) its row of the transposed mask lists, or over a complete mask, or one
// whose transposed rows are runs of query blocks (windows, BwdArgs::runs), the taller query tiles
// of FlashAttention-3 for the head dim by position over its row's query range, the queries past
// the range masked through their lse (see BwdSm90Traits):
// - head dim 128, kM 80: S^T and dP^T are m64n80, dQ is computed transposed, dQ^T = K^T dS^T,
//   from dS^T in the 32-byte swizzle, and staged before the next tile's products;
// - head dim 64, kM 128 (also over the lists of other masks with 128-query blocks): S^T and dP^T
//   are m64n128 and each warpgroup computes the dQ of half of the tile's rows;
// persistent CTAs of three warpgroups (one per SM) take the works from a counter:
// - warpgroup 0 (producer, few registers): thread 0 takes the works and publishes them, loads a
//   work's K and V once (while the consumers add the previous work's dK and dV) and Q, dO of
//   every listed query tile by TMA into a ring of kStages stages; warp 1 loads the tile's lse
//   (in the exp2 domain, +inf past Nq or for rows that saw nothing) and delta into the same
//   stage, with the tile's TileInfo (first query, partial flag, last tile), so consumers read no
//   mask entries;
// - warpgroups 1 and 2 (consumers, 64 keys each):
//     S^T = K Q^T, dP^T = V dO^T                       (wgmma, both operands in shared memory)
//     P^T = 2^(scale log2(e) S^T - lse2), dS^T = P^T o (dP^T - delta)      (registers)
//     dV += P^T dO, dK += dS^T Q                        (wgmma, P^T / dS^T as register operands)
//     dS^T -> shared memory, dQ += scale dS K           (wgmma, both operands transposed)
//   warpgroup w computes dQ columns [w D/2, (w + 1) D/2) (128-query tiles: rows [64 w, 64 w +
//   64)) over all 128 keys (both warpgroups' dS^T, published by a named barrier; at head dim 128
//   and on 128-query tiles by two one-way barriers, each warpgroup starting on its own keys'
//   half). dQ (scaled) goes through a swizzled fp32 shared-memory
//   tile that one thread of the warpgroup adds into dq with a TMA reduce (cp.reduce.async.bulk),
//   or, where dq's layout does not allow TMA, by red.global.add.v2.f32 from registers; the
//   80-query writing kernel over complete masks (kDqT) stages dQ^T as it stands by stmatrix and
//   adds it by one bulk reduce into a tile-major transposed accumulator (BwdArgs::dq_t), which
//   the host converts into dq after the launch (backward_dq_t_offset). The next
//   tile's S^T and dP^T run while dQ goes out. At the end of a work dK and dV are added into dk
//   and dv the same way (staged in shared memory, TMA reduces) where a.dkv_reduce and fp32
//   dk/dv allow it, else loaded, added and stored from registers.
// At head dim 64, causal calls hold each warpgroup's K rows in registers as the A operand of
// S^T (kKRegs). Over scattered rows (row_fill < 0.75), and at head dim 64 non-causal over any
// rows, each work starts its walk at a phase from its index (a.rotate 2, backward_phase_start):
// over scattered rows the CTAs running together then walk one window of the query range, which
// keeps its Q, dO and dq in L2; over dense rows they spread over the range and add into
// different dQ tiles. a.rotate 1 (staggered starts by key block, backward_walk_start) is for
// measurements (LONGATTN_SM90_BWD_ROTATE=0|1|2 fixes the start).
// Instruction count matters here (two consumer warps share each scheduler): wgmma descriptors
// are made once and offset by constants, the warpgroup index is warp-uniform so they live in
// uniform registers, and masking uses selects in a loop taken only for tiles that need it.
// Same contract as the portable key-stationary pass (kernels/cuda/flash_bwd_kernel.cuh):
// dk += scale dS^T Q, dv += P^T dO, dq += scale dS K.
#pragma once
#include <type_traits>
#include <utility>

#include "kernels/contract.hpp"

// Consumers release a ring stage by one arrival per warp (__syncwarp, then lane 0 arrives): an
// order the PTX memory model gives but compute-sanitizer racecheck does not follow, so it reports
// write-after-read hazards on the lse/delta slots once a walk is longer than the ring. Building
// with LONGATTN_SM90_ARRIVE_PER_THREAD=1 (cmake -DLONGATTN_SM90_RACECHECK=ON) makes every
// consumer thread arrive: racecheck-clean on those walks, and 3-10% slower at head dim 64 causal,
// so it is for sanitizer builds only.
#ifndef LONGATTN_SM90_ARRIVE_PER_THREAD
#define LONGATTN_SM90_ARRIVE_PER_THREAD 0
#endif
// Measurement builds, the head-dim-128 loop's order (defaults are the measured best):
// - LONGATTN_SM90_BWD_M80_STAGE_EARLY (1): the 80-query tiles stage the last tile's dQ in shared
//   memory as soon as its products retired, before the next tile's S^T and dP^T are issued, and
//   only its reduce follows them (A/B run 122: +3.8 to +8.7% over the 64-query tiles on dense
//   4K-64K; with 0, dQ is staged while S^T runs and dP^T waits for it: -0.2 to -7.7%);
// - LONGATTN_SM90_BWD_M80_DP_EARLY (0): with STAGE_EARLY 0, dP^T before the write-out as well
//   (spills: S^T, dP^T and dQ's 120 registers beside dK/dV's 128 do not fit);
// - LONGATTN_SM90_BWD_M80_OWN_PT (0): P^T and dS^T in registers of their own instead of
//   overwriting S^T and dP^T (more spills);
// - LONGATTN_SM90_BWD_STAGE_EARLY (0): the 64-query tiles (incomplete masks) staged early as
//   well (A/B run 123: block-sparse 64K 10/5/50% -0.4 to -2.2%, so they overlap the staging
//   with the next tile's S^T and dP^T, as before).
#ifndef LONGATTN_SM90_BWD_M80_STAGE_EARLY
#define LONGATTN_SM90_BWD_M80_STAGE_EARLY 1
#endif
#ifndef LONGATTN_SM90_BWD_M80_DP_EARLY
#define LONGATTN_SM90_BWD_M80_DP_EARLY 0
#endif
#ifndef LONGATTN_SM90_BWD_M80_OWN_PT
#define LONGATTN_SM90_BWD_M80_OWN_PT 0
#endif
#ifndef LONGATTN_SM90_BWD_STAGE_EARLY
#define LONGATTN_SM90_BWD_STAGE_EARLY 0
#endif
// - LONGATTN_SM90_BWD_M128_SPLIT_BAR (1): the 128-query tiles share dS^T by the two one-way
//   barriers of head dim 128 (each warpgroup starting dQ over its own keys) instead of one
//   barrier of both (A/B run 136: dense d=64 +5.4 to +9.6%, local_window 10% +6.6%, random 10%
//   +2.4%; on the 64-query tiles at d=64 it had cost 1%, run 15).
// - LONGATTN_SM90_BWD_DQ_T (1): the 80-query writing kernel over complete masks stages dQ^T as
//   it stands, by stmatrix, in the layout of the transposed dq accumulator (BwdArgs::dq_t) and
//   adds it there by one bulk reduce, instead of transposing it into dq's rows by 32-bit stores
//   (A/B run 375, conversion into dq included: dense d=128 SDPA configuration +1.3 to +3.8%;
//   run 370 timed the stores alone at +4 to +6%); 0: the host (sm90::bwd_dq_transposed) never
//   takes it.
#ifndef LONGATTN_SM90_BWD_DQ_T
#define LONGATTN_SM90_BWD_DQ_T 1
#endif
#ifndef LONGATTN_SM90_BWD_M128_SPLIT_BAR
#define LONGATTN_SM90_BWD_M128_SPLIT_BAR 1
#endif
#include "kernels/cuda/sm90/flash_fwd_sm90.cuh"
#include "kernels/cuda/sm90/flash_sm90.hpp"
#include "kernels/cuda/sm90/wgmma_ops_m80.cuh"

namespace longattn::cuda::sm90 {

using flash::BwdArgs;

// Measurement builds only (cmake -DLONGATTN_SM90_BWD_TRACE=ON): the works of key blocks 0..63 of
// batch 0, head 0 (part 0) record, per consumer warpgroup (thread 0),
// g_bwd_trace[key block][warpgroup]: 0 globaltimer when the work was taken, 1 clock64 there,
// 2 K/V ready, 3 first Q/dO tile ready, 4 first tile's products retired, 5 walk done, 6 K/V
// given back, 7 dk/dv added, 8 the walk's tiles, 9 globaltimer at the end. Cleared before each
// launch and written after it to $LONGATTN_SM90_BWD_TRACE_OUT_d<D>_n<Nq>_c<causal>_p<parts>.txt
// (each launch synchronises).
#ifndef LONGATTN_SM90_BWD_TRACE
#define LONGATTN_SM90_BWD_TRACE 0
#endif
#if LONGATTN_SM90_BWD_TRACE
static __device__ long long g_bwd_trace[64][2][10];
// Set before each launch from LONGATTN_SM90_BWD_TRACE_BY_CTA=1: the rows are then the first 8
// works (n: the CTA's work count) of CTAs 0..7, row 8 x CTA + n, instead of key blocks.
static __device__ int g_bwd_trace_by_cta;
// The current work (w: its index, below nkb for head 0, batch 0, part 0) and its tiles so far.
#define BWD_TRACE_WORK(w)                                                                    \
  const int trace_w = g_bwd_trace_by_cta                                                     \
                          ? (blockIdx.x < 8 && n < 8 ? static_cast<int>(blockIdx.x) * 8 + n \
                                                     : 64)                                   \
                          : (static_cast<int>(w) < nkb ? static_cast<int>(w) : 64);         \
  int trace_tiles = 0
#define BWD_TRACE(ev, value)                                      \
  do {                                                            \
    if (tid == 0 && trace_w < 64)                                 \
      g_bwd_trace[trace_w][cw][ev] = (value);                     \
  } while (0)
#define BWD_TRACE_FIRST(ev)                       \
  do {                                            \
    if (trace_tiles == 0) BWD_TRACE(ev, clock64()); \
  } while (0)
#define BWD_TRACE_TILE()             \
  do {                               \
    ++trace_tiles;                   \
    BWD_TRACE(8, trace_tiles);       \
  } while (0)
#else
#define BWD_TRACE_WORK(w) \
  do {                    \
  } while (0)
#define BWD_TRACE(ev, value) \
  do {                       \
  } while (0)
#define BWD_TRACE_FIRST(ev) \
  do {                      \
  } while (0)
#define BWD_TRACE_TILE() \
  do {                   \
  } while (0)
#endif

template <int D, int kM = 64, bool kByPosition = kM != 64>
struct BwdSm90Traits {
  static constexpr int kBN = kBwdKeysPerCta;  // keys per CTA (two consumer warpgroups of 64)
  static constexpr int kBM = kM;   // queries per tile
  // 80-query tiles (head dim 128, complete masks, walked by position): S^T and dP^T are
  // m64n80, dQ is computed transposed (dQ^T = K^T dS^T, m64n80: a warpgroup's 64 columns of
  // dQ over the tile's 80 queries) from dS^T in the 32-byte swizzle, and dK/dV go out in
  // rounds of 32 columns through the dQ staging tile.
  static constexpr bool kM80 = kM == 80;
  // 128-query tiles (head dim 64, complete masks, walked by position; FlashAttention-3's tile
  // for this head dim): S^T and dP^T are m64n128, P^T and dS^T stay the register A operands of
  // dV/dK (eight k16 steps), dS^T goes to shared memory as two [128 keys][64 queries] halves, and
  // warpgroup w computes dQ rows [64 w, 64 w + 64) (all D columns) from half w over all 128 keys.
  // Per 128-query tile the shared-memory traffic is ~350 KB for 10.5 MFLOP, against 2 x 208 KB
  // on 64-query tiles (their m64n64 SS products read as many operand bytes per clock as shared
  // memory delivers, the m64n32 dQ product more).
  // Over masks whose 128-query blocks are listed (random masks: kByPosition false) the same tiles
  // walk the mask row's list, one tile a block (two for 256-query blocks).
  static constexpr bool kM128 = kM == 128;
  static constexpr bool kTall = kM != 64;  // 80- or 128-query tiles
  // Tiles walked by position over the row's query range (no mask entries per tile).
  static constexpr bool kPos = kTall && kByPosition;
  static_assert(kTall || !kByPosition, "64-query tiles walk the mask's lists");
  static_assert(!kM80 || kByPosition, "80-query tiles walk by position");
  static_assert(kM == 64 || (kM == 80 && D == 128) || (kM == 128 && D == 64),
                "80-query tiles at head dim 128, 128-query tiles at head dim 64");
  static constexpr int kStages = 2;
  static constexpr int kChunks = D / 64;
  static constexpr int kThreads = 384;
  // dQ columns per warpgroup (split over all 128 keys; 128-query tiles: all, rows split).
  static constexpr int kDqCols = kM128 ? D : D / 2;
  static constexpr int kDqRows = kM128 ? 64 : kBM;  // dQ rows per warpgroup
  // How a consumer warpgroup overlaps one query tile's products with the next tile's:
  // - head dim 64 (pipelined): the next tile's S^T and dP^T are issued before this tile's
  //   dV/dK/dQ products retire and before its dQ goes out (64 more live registers);
  // - head dim 128 (early S^T): only the next tile's S^T, once this tile's products retired,
  //   so it runs while dQ goes out (32 more live registers; S^T and dP^T both spill there and
  //   the compiler serialises every wgmma). Its dP^T follows once dQ is out.
  static constexpr bool kPipelined = D <= 64 && kM == 64;
  // Head dim 128 and the 128-query tiles: the warpgroups share dS^T by two one-way barriers,
  // each starting dQ over its own keys before it waits for the other's half (A/B run 15: +1-4%
  // at 128, -1% on 64-query tiles at 64; run 136: 128-query tiles +2.4 to +9.6%).
  static constexpr bool kSplitBar = D >= 128 || (kM128 && LONGATTN_SM90_BWD_M128_SPLIT_BAR != 0);
  static constexpr int kKVBytes = kBN * D * 2;  // K or V
  static constexpr int kQBytes = kBM * D * 2;   // Q or dO tile
  static constexpr int kDSBytes = kBN * kBM * 2;
  // lse2[kBM], delta[kBM] and the tile's TileInfo (first query, partial, last).
  static constexpr int kStatFloats = 2 * kBM + 4;
  static constexpr int kStatBytes = kStatFloats * 4;
  static constexpr int kDQBytes = kDqRows * kDqCols * 4;  // one warpgroup's fp32 dQ tile
  // dQ tiles per warpgroup: two at head dim 64, so a tile's write-out does not wait for the
  // previous tile's reduce to have read its buffer (at 128 a second one does not fit).
  // (128-query tiles: one; a second does not fit.)
  static constexpr int kDqBufs = D <= 64 && !kM128 ? 2 : 1;
  // bar_kv, kv_empty, work_full[2], work_empty[2], and full_q, full_st, empty per stage.
  static constexpr int kBarBytes = 8 * (6 + 3 * kStages);
  static constexpr int kWorkBytes = 2 * 8 * 8;  // two slots of the published work (int64 x 8)
  // dK and dV go out through shared memory by TMA reduce-adds into fp32 dk and dv
  // (BwdMaps::dkv_tma), so the consumers start the next work once their sums are staged
  // instead of after a load-add-store round trip through L2, as D / 32 boxes of [64 rows][32
  // columns] in TMA's 128-byte swizzle. Head dim 64: per warpgroup [64 keys][64] fp32 for each
  // (64 KB in all). Head dim 128 (kDkvHalves): the 128 KB do not fit; each warpgroup stages
  // 64-column halves in turn through one buffer of its own (16 KB) and its dQ staging tile,
  // four rounds (dV low, dV high, dK low, dK high), each waiting only for the reduce two rounds
  // back to have read its buffer.
  static constexpr bool kDkvHalves = D >= 128;
  static_assert(!kDkvHalves || (kDqBufs == 1 && kDQBytes >= 64 * 64 * 4),
                "the dK/dV halves reuse a warpgroup's one dQ staging tile");
  static constexpr int kDkvBytes = 64 * 64 * 4;  // one box pair: a warpgroup's 64 x 64 fp32
  // (80-query tiles: none of its own; rounds of 32 columns alternate between the two halves of
  // the warpgroup's dQ staging tile.)
  // (128-query tiles likewise: four rounds.)
  static constexpr int kDkvSmem = kTall ? 0 : kDkvHalves ? 2 * kDkvBytes : 4 * 64 * D * 4;
  static constexpr int kSmemBytes = 1024 + 2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDSBytes +
                                    2 * kDqBufs * kDQBytes + kDkvSmem + kStages * kStatBytes +
                                    kBarBytes + kWorkBytes;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

// out[row r_hh, column c] += mul * acc for the two rows of a wgmma accumulator fragment (row:
// offsets of their column 0, ok: below Nk; column dt * 8 + 2 t4 + e in acc[dt * 4 + 2 hh + e])
// in whole 8-column groups: the even and the odd columns are transposed across the quad
// (quad_transpose), so lane t4 holds columns 0..7 of group 4 gq + t4, and 16-bit outputs take one
// 16-byte load and store per group and row, fp32 outputs two. The old values are loaded before
// any sum is stored (both rows for 16-bit outputs, row by row for fp32). Needs 16-byte aligned
// base and strides (BwdArgs::dkv_vec); every lane of the quad takes part, whatever its rows.
// write: out = mul * acc, no old values loaded (the same bits as adding to zeros).
template <typename T, int D>
__device__ __forceinline__ void add_rows_out_vec(void* data, int type, const int64_t (&row)[2],
                                                 const bool (&ok)[2], float mul,
                                                 const float (&acc)[D / 2], int t4, bool write) {
  constexpr int NG = D / 32;  // sets of four 8-column groups
  float x[2][NG][8];          // x[hh][gq][c]: column (4 gq + t4) * 8 + c
#pragma unroll
  for (int hh = 0; hh < 2; ++hh)
#pragma unroll
    for (int gq = 0; gq < NG; ++gq) {
      uint32_t ev[4], od[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        ev[q] = __float_as_uint(acc[(4 * gq + q) * 4 + 2 * hh]);
        od[q] = __float_as_uint(acc[(4 * gq + q) * 4 + 2 * hh + 1]);
      }
      quad_transpose(ev, t4);
      quad_transpose(od, t4);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        x[hh][gq][2 * j] = __uint_as_float(ev[j]);
        x[hh][gq][2 * j + 1] = __uint_as_float(od[j]);
      }
    }
  if (type == flash::kOutF32) {
    float* p = static_cast<float*>(data);
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      if (!ok[hh]) continue;
      float4 old[NG][2];
#pragma unroll
      for (int gq = 0; gq < NG; ++gq)
#pragma unroll
        for (int u = 0; u < 2; ++u)
          old[gq][u] = write ? make_float4(0.f, 0.f, 0.f, 0.f)
                             : *reinterpret_cast<const float4*>(p + row[hh] + (4 * gq + t4) * 8 +
                                                                4 * u);
#pragma unroll
      for (int gq = 0; gq < NG; ++gq)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const float* xs = &x[hh][gq][4 * u];
          *reinterpret_cast<float4*>(p + row[hh] + (4 * gq + t4) * 8 + 4 * u) =
              make_float4(old[gq][u].x + mul * xs[0], old[gq][u].y + mul * xs[1],
                          old[gq][u].z + mul * xs[2], old[gq][u].w + mul * xs[3]);
        }
    }
  } else {
    T* p = static_cast<T*>(data);
    uint4 old[2][NG];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
#pragma unroll
      for (int gq = 0; gq < NG; ++gq)
        old[hh][gq] = ok[hh] && !write
                          ? *reinterpret_cast<const uint4*>(p + row[hh] + (4 * gq + t4) * 8)
                          : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      if (!ok[hh]) continue;
#pragma unroll
      for (int gq = 0; gq < NG; ++gq) {
        const T* o = reinterpret_cast<const T*>(&old[hh][gq]);
        const float* xs = x[hh][gq];
        using E = flash::Elem<T>;
        *reinterpret_cast<uint4*>(p + row[hh] + (4 * gq + t4) * 8) =
            make_uint4(E::pack(E::to_float(o[0]) + mul * xs[0], E::to_float(o[1]) + mul * xs[1]),
                       E::pack(E::to_float(o[2]) + mul * xs[2], E::to_float(o[3]) + mul * xs[3]),
                       E::pack(E::to_float(o[4]) + mul * xs[4], E::to_float(o[5]) + mul * xs[5]),
                       E::pack(E::to_float(o[6]) + mul * xs[6], E::to_float(o[7]) + mul * xs[7]));
      }
    }
  }
}

// A consumer warpgroup's fp32 accumulator fragment (rows 16 warp + g and + 8, columns 8 nt + 2 t4
// and + 1, in acc[4 nt + 2 hh + e]) times mul into shared memory at dst, as kCols / 32 boxes of
// [64 rows][32 columns] in TMA's 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r & 7)):
// the source of the fp32 TMA reduces: kCols columns from fragment column kFirst (a multiple of 8)
// of an accumulator of N values.
template <int kCols, int kFirst = 0, int N>
__device__ __forceinline__ void stage_f32_boxes(uint32_t dst, const float (&acc)[N], float mul,
                                                int warp, int g, int t4) {
  static_assert(kFirst % 8 == 0 && (kFirst + kCols) / 2 <= N, "columns inside the fragment");
  constexpr int o = kFirst / 2;
#pragma unroll
  for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = warp * 16 + g + hh * 8;
      const int chunk = (nt % 4) * 2 + (t4 >> 1);
      st_shared_v2(dst + (nt / 4) * (64 * 128) + r * 128 + ((chunk ^ (r & 7)) << 4) + (t4 & 1) * 8,
                   mul * acc[o + nt * 4 + 2 * hh], mul * acc[o + nt * 4 + 2 * hh + 1]);
    }
}

// x where B, else y (arrays of different sizes: the one not taken is a placeholder).
template <bool B, class X, class Y>
__device__ __forceinline__ auto& pick_ref(X& x, Y& y) {
  if constexpr (B) {
    return x;
  } else {
    return y;
  }
}

// Columns [kFirst, kFirst + 64) of a wgmma accumulator fragment (row 16 warp + g + 8 hh, column
// 8 dt + 2 t4 + e in acc[dt * 4 + 2 hh + e]), times mul, as T into one [64 rows][64 columns]
// box of 16-bit elements in TMA's 128-byte swizzle (16-byte chunk c of row r at c ^ (r & 7)):
// a warp's 32 stores of a step meet 32 different banks.
template <typename T, int kFirst, int N>
__device__ __forceinline__ void stage_half_box(uint32_t dst, const float (&acc)[N], float mul,
                                               int warp, int g, int t4) {
  static_assert(kFirst % 64 == 0 && (kFirst + 64) / 2 <= N, "columns inside the fragment");
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = warp * 16 + g + hh * 8;
      const int j = (kFirst / 8 + nt) * 4 + 2 * hh;
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(dst + r * 128 + ((nt ^ (r & 7)) << 4) +
                                                       t4 * 4),
                   "r"(flash::Elem<T>::pack(mul * acc[j], mul * acc[j + 1]))
                   : "memory");
    }
}

__device__ __forceinline__ void st_shared_f32(uint32_t addr, float x) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(x) : "memory");
}

// kKRegs (head dim 64): the warpgroup's K rows kept in registers as the A operand of S^T, so
// that product reads only Q from shared memory (A/B runs 14-15: causal +0-4%, non-causal -8-12%,
// so the dispatch takes it for causal calls only). kWrite (AttnBwdParams::accumulate false, dk
// and dv of the input dtype): the key block's first query part writes dk and dv without reading
// them; an instantiation of its own, so the adding kernels' code is what it was (a runtime
// switch cost the head-dim-128 steady loop 33 instructions and 4 spill accesses).
// kDqT (the 80-query writing kernel over complete masks, sm90::bwd_dq_transposed): dQ is added
// into the transposed accumulator (BwdArgs::dq_t) instead of dq.
template <typename T, int D, bool kKRegs, int kM, bool kByPosition, bool kWrite, bool kDqT>
__global__ void __launch_bounds__(384, 1)
    flash_bwd_sm90_kernel(const __grid_constant__ CUtensorMap tq,
                          const __grid_constant__ CUtensorMap tk,
                          const __grid_constant__ CUtensorMap tv,
                          const __grid_constant__ CUtensorMap tdo,
                          const __grid_constant__ CUtensorMap tdq,
                          const __grid_constant__ CUtensorMap tdk,
                          const __grid_constant__ CUtensorMap tdv, const BwdArgs a,
                          const int dq_tma, const int dkv_tma, int* const counter) {
  using Tr = BwdSm90Traits<D, kM, kByPosition>;
  constexpr int kBN = Tr::kBN, kBM = Tr::kBM, kS = Tr::kStages;
  constexpr bool kM80 = Tr::kM80, kM128 = Tr::kM128, kTall = Tr::kTall, kPos = Tr::kPos;
  static_assert(!kDqT || (kM80 && kWrite), "the transposed dq accumulator: 80-query writing");
  extern __shared__ unsigned char smem_raw[];
  __shared__ int piece_last_s;  // the split work's last piece (16-bit dk, dv): 1, else 0
  int* const piece_last = &piece_last_s;
  const uint32_t raw = saddr(smem_raw);
  unsigned char* base = smem_raw + (((raw + 1023) & ~1023u) - raw);
  unsigned char* sK = base;
  unsigned char* sV = sK + Tr::kKVBytes;
  unsigned char* sQ = sV + Tr::kKVBytes;        // kS stages
  unsigned char* sdO = sQ + kS * Tr::kQBytes;   // kS stages
  // Two dS^T buffers: [128 keys][64 queries] in the 128-byte swizzle, or with 80-query tiles
  // [16 groups of 8 keys][5 atoms of 16 queries][8 keys][32 bytes] in the 32-byte swizzle.
  unsigned char* sdS = sdO + kS * Tr::kQBytes;
  unsigned char* sdQ = sdS + 2 * Tr::kDSBytes;  // per warpgroup: kDqBufs dQ tiles, each
                                                // kDqCols / 32 boxes of [64 rows][32 fp32]
  unsigned char* sDkv = sdQ + 2 * Tr::kDqBufs * Tr::kDQBytes;  // per warpgroup: dK, dV stages
  float* sStat = reinterpret_cast<float*>(sDkv + Tr::kDkvSmem);  // kS stats
  uint64_t* bars = reinterpret_cast<uint64_t*>(sStat + kS * Tr::kStatFloats);
  uint64_t* bar_kv = bars;         // K and V of the current work landed (TMA)
  uint64_t* kv_empty = bars + 1;   // the consumers' products no longer read K, V (8 warps)
  uint64_t* work_full = bars + 2;  // [2] the producer published a work
  uint64_t* work_empty = bars + 4;  // [2] the stats warp and the consumers are done with it
  uint64_t* full_q = bars + 6;   // Q and dO of a stage (TMA)
  uint64_t* full_st = full_q + kS;  // lse2, delta and TileInfo of a stage (32 arrivals)
  uint64_t* empty = full_st + kS;
  // Two slots of [first entry, end entry, work index, first key, head, batch, q_begin, q_end]:
  // the work the producer took (entries: its query tiles with 80-query tiles).
  int64_t* sWork = reinterpret_cast<int64_t*>(empty + kS);

  // Works (key block, part, head, batch) in the order the hardware would launch them, part *
  // (key blocks) + key block fastest: the CTAs of one part of the query range run together, so
  // Q, dO and dq of that part are what L2 has to hold. CTA c takes work c first, then the next
  // untaken one from the counter (the persistent grid has one CTA per SM; the K and V of its
  // next work load while its consumers add the last one's dK and dV).
  // The query range in parts (a.q_splits). Parts that add into dk/dv one after the other (the
  // flags, without dkv_tma) at head dim 128 only: that code cost the head-dim-64 kernel, whose
  // registers are tighter, 5-7% (measured); there parts need the reduces (the launch checks).
  constexpr bool kFlags = D >= 128;
  const int nkb = (a.Nk + kBN - 1) / kBN;  // key blocks (works per part)
  const int nx = nkb * a.q_splits;
  // With a tail split (one part of the query range otherwise) the whole works tail_first.. come
  // after the others as a.tail_parts parts each, or as a.tail_spans spans of their query tiles
  // taken one after the other, each span one item of one or two pieces (backward_span_piece).
  const int n_whole = nx * a.H * a.B;
  const int n_works = a.tail_spans > 0   ? a.tail_first + a.tail_spans
                      : a.tail_parts > 0 ? a.tail_first + (n_whole - a.tail_first) * a.tail_parts
                                         : n_whole;
  const bool split_tail = a.tail_parts > 0 || a.tail_spans > 0;
  const int nsub = a.mask_t.block_k / kBM;
  // This work's key block, head, batch and mask row entries [e0, e1), set per work (80-query
  // tiles: its query tiles [e0, e1) from query q_begin, all visible, the queries from q_end on
  // outside the row: its whole range [0, Nq) over a complete mask, its run's over a mask of
  // runs).
  int k0 = 0, h = 0, b = 0, n_items = 0, rot = 0, q_begin = 0, q_end = 0;
  int64_t e0 = 0;
  auto decode = [&](const int64_t* slot) {
    k0 = static_cast<int>(slot[3]);
    h = static_cast<int>(slot[4]);
    b = static_cast<int>(slot[5]);
    e0 = slot[0];
    n_items = static_cast<int>((slot[1] - e0) * (kPos ? 1 : nsub));
    if constexpr (kPos) {
      q_begin = static_cast<int>(slot[6]);
      q_end = static_cast<int>(slot[7]);
    }
  };

  const int wg = warpgroup_index();
  constexpr int kEmptyArrivals = LONGATTN_SM90_ARRIVE_PER_THREAD ? 256 : 8;
  if (threadIdx.x == 0) {
    mbar_init(bar_kv, 1);
    mbar_init(kv_empty, 8);
    for (int j = 0; j < 2; ++j) {
      mbar_init(&work_full[j], 1);
      mbar_init(&work_empty[j], 9);
    }
    for (int s = 0; s < kS; ++s) {
      mbar_init(&full_q[s], 1);
      mbar_init(&full_st[s], 32);
      mbar_init(&empty[s], kEmptyArrivals);
    }
    mbar_init_fence();
  }
  __syncthreads();
  pdl_wait();
  // Walk step `it` takes item it + rot (mod n_items). a.rotate 1 (staggered, measurements): the
  // CTAs of neighbouring key blocks start at different query tiles, so those running together
  // reduce into different dQ tiles (all starting at the first one, they add into the same lines
  // at the same time; at head dim 128 it measured 0 to -8%, A/B run 18). a.rotate 2 (phased:
  // scattered rows, and head dim 64 non-causal): work `work` starts at the fraction
  // (work mod grid) / grid of its walk (backward_phase_start).
  auto set_rot = [&](int64_t work) {
    rot = a.rotate == 1   ? static_cast<int>(backward_walk_start(k0 / kBN, nkb, n_items))
          : a.rotate == 2 ? static_cast<int>(backward_phase_start<unsigned>(
                                static_cast<unsigned>(work), gridDim.x, n_items))
                          : 0;
  };
  auto item = [&](int it) {
    const int p = it + rot;
    return p >= n_items ? p - n_items : p;
  };

  // First listed query tile at or after walk step `it` that some key of this CTA may be seen by.
  auto next_visible = [&](int it, int& qs) {
    if constexpr (kPos) {
      if (it < n_items) qs = q_begin + static_cast<int>(e0 + item(it)) * kBM;
    } else {
      for (; it < n_items; ++it) {
        const int p = item(it);
        qs = a.mask_t.col_idx[e0 + p / nsub] * a.mask_t.block_k + (p % nsub) * kBM;
        if (qs >= a.Nq) continue;
        const int q_hi = min(qs + kBM, a.Nq) - 1;
        if (!(a.causal && static_cast<int64_t>(k0 - q_hi) > a.diag)) break;
      }
    }
    return it;
  };

  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<kProducerRegs>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0) {
      // Takes the works, publishes each with its mask entries (this part's, found by the whole
      // warp), and loads K, V (once the consumers' products of the last work are done with them)
      // and Q, dO of every tile. The tile count runs over all works of the CTA.
      int w = blockIdx.x;
      int piece = 0;  // of a span: 1 for its second piece, taken without a claim
      int i = 0;
      for (int n = 0;; ++n) {
        const int slot = n & 1;
        int64_t w0 = 0, w1 = 0;
        // The work's key block and part (x) and (batch, head) pair: head by head, or with
        // a.work_group key block by key block across the heads of each group.
        // (A part of a split work: the whole work's index, and which part; a piece of a span:
        // the whole work's index and its tiles.)
        const bool tail = split_tail && w >= a.tail_first && w < n_works;
        int tail_part = 0, whole = w;
        // (32-bit: the launch takes spans only where spans x tiles fit, backward_tail_split.)
        BackwardSpanPiece<int> span{0, 0, 0, false};
        if (tail && a.tail_spans > 0) {
          span = backward_span_piece<int>(w - a.tail_first, n_whole - a.tail_first,
                                          (a.Nq + kBM - 1) / kBM, a.tail_spans, piece);
          whole = a.tail_first + span.work;
        } else if (tail) {
          tail_part = (w - a.tail_first) % a.tail_parts;
          whole = a.tail_first + (w - a.tail_first) / a.tail_parts;
        }
        // With 16-bit dk and dv (a.piece_scratch): the split work's slot (from 1), this piece's
        // place among its pieces and their count, published in the high halves of sw[6], sw[7].
        int64_t piece_tag = 0, slot_tag = 0;
        if (tail && a.piece_scratch != nullptr) {
          BackwardPieceOf<int> of{tail_part, a.tail_parts};
          if (a.tail_spans > 0)
            of = backward_span_piece_of<int>(span.work, n_whole - a.tail_first,
                                             (a.Nq + kBM - 1) / kBM, a.tail_spans,
                                             w - a.tail_first);
          piece_tag = (int64_t{of.index} << 32) | (int64_t{of.count} << 48);
          slot_tag = int64_t{whole - a.tail_first + 1} << 32;
        }
        const BackwardWorkPos<int> pos = w < n_works
                                             ? backward_work_pos(whole, nx, a.H * a.B,
                                                                 a.work_group)
                                             : BackwardWorkPos<int>{0, 0};
        const int x = pos.x, hb = pos.pair;
        if (kPos && w < n_works) {
          // The work's query tiles: its part's of its row's query range, from the first one a
          // key of the block sees.
          k0 = x % nkb * kBN;
          h = hb % a.H;
          b = hb / a.H;
          q_begin = 0;
          q_end = a.Nq;
          if (!a.complete) {  // a run of query blocks (a.runs), or none
            const int mrow = k0 / a.mask_t.block_q;
            const int64_t r0 = a.mask_t.row_ptr[mrow], r1 = a.mask_t.row_ptr[mrow + 1];
            q_begin = r1 > r0 ? a.mask_t.col_idx[r0] * a.mask_t.block_k : 0;
            q_end = r1 > r0 ? min((a.mask_t.col_idx[r1 - 1] + 1) * a.mask_t.block_k, a.Nq) : 0;
            if (q_end < q_begin) q_end = q_begin;
          }
          const int part = x / nkb;
          const int nt = (q_end - q_begin + kBM - 1) / kBM;
          w0 = int64_t{part} * nt / a.q_splits;
          w1 = int64_t{part + 1} * nt / a.q_splits;
          if (a.causal)
            w0 = max(w0, backward_first_tile<int64_t>(k0 - q_begin, a.diag, q_end - q_begin,
                                                      kBM));
          if (w1 < w0) w1 = w0;
          if (tail && a.tail_spans > 0) {  // this piece of the work's tiles (complete mask)
            w1 = w0 + span.hi;
            w0 = w0 + span.lo;
          } else if (tail) {  // this part of the work's tiles
            const int64_t n = w1 - w0;
            w1 = w0 + (tail_part + 1) * n / a.tail_parts;
            w0 = w0 + tail_part * n / a.tail_parts;
          }
        } else if (w < n_works) {
          k0 = x % nkb * kBN;
          const int mrow = k0 / a.mask_t.block_q;
          w0 = a.mask_t.row_ptr[mrow];
          w1 = a.mask_t.row_ptr[mrow + 1];
          h = hb % a.H;
          b = hb / a.H;
          if (a.q_splits > 1) {
            const int part = x / nkb;
            const int nqb = (a.Nq + a.mask_t.block_k - 1) / a.mask_t.block_k;
            w0 = warp_lower_bound(a.mask_t.col_idx, w0, w1,
                                  static_cast<int>(int64_t{part} * nqb / a.q_splits));
            w1 = warp_lower_bound(a.mask_t.col_idx, w0, w1,
                                  static_cast<int>(int64_t{part + 1} * nqb / a.q_splits));
          }
        }
        int w_next = 0;
        if (lane == 0) {
          int64_t* sw = sWork + 8 * slot;
          mbar_wait(&work_empty[slot], ((n >> 1) & 1) ^ 1);
          sw[0] = w0;
          sw[1] = w1;
          sw[2] = w;
          sw[3] = k0;
          sw[4] = h;
          sw[5] = b;
          sw[6] = q_begin | piece_tag;
          sw[7] = q_end | slot_tag;
          mbar_arrive(&work_full[slot]);
          if (w < n_works) {
            decode(sw);
            set_rot(w);
            // (Also for works without tiles: the consumers then take K/V and give them back.)
            mbar_wait(kv_empty, (n & 1) ^ 1);
            mbar_arrive_expect_tx(bar_kv, 2 * Tr::kKVBytes);
#pragma unroll
            for (int c = 0; c < Tr::kChunks; ++c) {
              tma_load_4d(sK + c * kBN * 128, &tk, bar_kv, c * 64, k0, h, b);
              tma_load_4d(sV + c * kBN * 128, &tv, bar_kv, c * 64, k0, h, b);
            }
            int qs = 0;
            int it = next_visible(0, qs);
            for (; it < n_items; ++i) {
              const int s = i % kS;
              mbar_wait(&empty[s], ((i / kS) & 1) ^ 1);
              mbar_arrive_expect_tx(&full_q[s], 2 * Tr::kQBytes);
#pragma unroll
              for (int c = 0; c < Tr::kChunks; ++c) {
                tma_load_4d(sQ + s * Tr::kQBytes + c * kBM * 128, &tq, &full_q[s], c * 64, qs,
                            h, b);
                tma_load_4d(sdO + s * Tr::kQBytes + c * kBM * 128, &tdo, &full_q[s], c * 64,
                            qs, h, b);
              }
              it = next_visible(it + 1, qs);
            }
            // The next work is claimed only now, once this one's tiles are issued: claimed when
            // this one starts, the counter handed out works a whole work ahead and uneven (causal)
            // works lost their balance (A/B run 39: 4K/8K causal 5-8% slower than claiming here).
            // (A span's second piece comes next, with no claim.)
            if (span.more) {
              w_next = w;
            } else {
              w_next = atomicAdd(counter, 1) + static_cast<int>(gridDim.x);
              if (w_next >= n_works) pdl_trigger();  // this work is the CTA's last
            }
          }
        }
        if (w >= n_works) break;
        w = __shfl_sync(0xffffffffu, w_next, 0);
        piece = span.more ? piece + 1 : 0;
      }
      // The last CTA to leave resets the counter for the next launch that uses it.
      if (lane == 0) {
        __threadfence();
        if (atomicAdd(counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
          counter[0] = 0;
          counter[1] = 0;
          __threadfence();
        }
      }
    } else if (warp == 1) {
      int i = 0;
      for (int n = 0;; ++n) {
        const int slot = n & 1;
        mbar_wait(&work_full[slot], (n >> 1) & 1);
        const int64_t* sw = sWork + 8 * slot;
        const int64_t w = sw[2];
        if (w < n_works) decode(sw);
        __syncwarp();
        if (lane == 0) mbar_arrive(&work_empty[slot]);
        if (w >= n_works) break;
        set_rot(w);
        const float* lse = static_cast<const float*>(a.lse.data) + b * a.lse.sb + h * a.lse.sh;
        const float* dl =
            static_cast<const float*>(a.delta.data) + b * a.delta.sb + h * a.delta.sh;
        int qs = 0;
        int it = next_visible(0, qs);
        for (; it < n_items; ++i) {
          const int s = i % kS;
          mbar_wait(&empty[s], ((i / kS) & 1) ^ 1);
          float* st = sStat + s * Tr::kStatFloats;
          // The tile's TileInfo, so the consumers read no mask entries.
          int qs_next = 0;
          const int it_next = next_visible(it + 1, qs_next);
          if (lane == 0) {
            int* info = reinterpret_cast<int*>(st + 2 * kBM);
            info[0] = qs;
            info[1] = kPos ? 0 : a.mask_t.partial[e0 + item(it) / nsub] != 0;
            info[2] = it_next >= n_items;
          }
#pragma unroll
          for (int r = lane; r < kBM; r += 32) {
            const int q = qs + r;
            float l2 = flash::kPosInf, dv = 0.f;
            // (80-query tiles: the queries past the row's range see none of the block's keys,
            // so their P^T and dS^T are 0 and they add 0 into dq.)
            if (q < (kPos ? q_end : a.Nq)) {
              const float l = lse[static_cast<int64_t>(q) * a.lse.sn];
              l2 = l == flash::kNegInf ? flash::kPosInf : l * flash::kLog2e;
              dv = dl[static_cast<int64_t>(q) * a.delta.sn];
            }
            st[r] = l2;
            st[kBM + r] = dv;
          }
          mbar_arrive(&full_st[s]);
          it = it_next;
          qs = qs_next;
        }
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  regs_alloc<kConsumerRegs>();
  const int cw = wg - 1;
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  // The current work's first key, head and batch, read from its slot where used (held in
  // registers across the tile loop they cost the consumers spills).
  int n = 0;  // works so far
  auto cur_work = [&] { return sWork + 8 * (n & 1); };
  // This warpgroup's first key; this thread's keys my_key and my_key + 8.
  auto key0_ = [&] { return ld_shared_volatile(cur_work() + 3) + cw * 64; };
  auto my_key_ = [&] { return key0_() + warp * 16 + g; };
  auto h_ = [&] { return ld_shared_volatile(cur_work() + 4); };
  auto b_ = [&] { return ld_shared_volatile(cur_work() + 5); };
  const float sl2 = a.scale_log2;
  constexpr int kDT = D / 8;
  constexpr bool kStageEarly = kTall ? LONGATTN_SM90_BWD_M80_STAGE_EARLY != 0
                                    : D == 128 && LONGATTN_SM90_BWD_STAGE_EARLY != 0;

  float dk[D / 2], dv[D / 2];

  const uint32_t k_base = saddr(sK) + cw * 64 * 128, v_base = saddr(sV) + cw * 64 * 128;
  const uint32_t q_base = saddr(sQ), do_base = saddr(sdO), ds_base = saddr(sdS);

  // S^T = K Q^T and dP^T = V dO^T of the tile in stage s_: 64 keys x kBM queries each, two
  // commit groups.
  constexpr int kSR = kBM / 2;  // their registers
  float st[kSR], dpt[kSR];
  // acc = A B^T over the head dim: A the warpgroup's 64 rows of K or V, B a 64-row Q or dO tile.
  // Descriptors made once; each wgmma adds a constant (or per-stage) offset.
  const uint64_t k_desc = smem_desc(k_base, 16, 1024), v_desc = smem_desc(v_base, 16, 1024);
  const uint64_t q_desc = smem_desc(q_base, 16, 1024), do_desc = smem_desc(do_base, 16, 1024);
  auto ss_over_d = [&](float (&acc)[kSR], uint64_t a_desc, uint64_t b_desc) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;
      if constexpr (kM80) {
        Mma80<T>::ss(acc, desc_at(a_desc, (kk / 4) * kBN * 128 + off),
                     desc_at(b_desc, (kk / 4) * kBM * 128 + off), kk > 0 ? 1 : 0);
      } else if constexpr (kM128) {
        Mma<T>::qk(acc, desc_at(a_desc, off), desc_at(b_desc, off), kk > 0 ? 1 : 0);
      } else {
        Mma<T>::ss64(acc, desc_at(a_desc, (kk / 4) * kBN * 128 + off),
                     desc_at(b_desc, (kk / 4) * kBM * 128 + off), kk > 0 ? 1 : 0);
      }
    }
    wgmma_commit();
  };
  // With kKRegs, the warpgroup's 64 rows of K as wgmma A fragments (the m16n8k16 A layout per
  // warp: rows 16 warp + g (+8), columns 16 kk + 2 t4 (+8)), read once from the swizzled tile.
  static_assert(!kKRegs || (D == 64 && kM == 64), "K in registers at head dim 64, 64-query tiles");
  uint32_t kfr[kKRegs ? D / 16 : 1][4];
  auto load_kregs = [&] {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = cw * 64 + warp * 16 + g + (r & 1) * 8;
        const int j = (kk % 4) * 2 + (r >> 1);
        kfr[kk][r] = *reinterpret_cast<const uint32_t*>(sK + (kk / 4) * kBN * 128 + row * 128 +
                                                        ((j ^ (row & 7)) << 4) + 4 * t4);
      }
  };
  auto issue_s = [&](int s_) {
    wgmma_fence();
    if constexpr (kKRegs) {
      const uint64_t qd = desc_at(q_desc, s_ * Tr::kQBytes);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Mma<T>::rs64(st, kfr[kk], desc_at(qd, (kk / 4) * kBM * 128 + (kk % 4) * 32),
                     kk > 0 ? 1 : 0);
      wgmma_commit();
    } else {
      ss_over_d(st, k_desc, desc_at(q_desc, s_ * Tr::kQBytes));
    }
  };
  auto issue_dp = [&](int s_) {
    wgmma_fence();
    ss_over_d(dpt, v_desc, desc_at(do_desc, s_ * Tr::kQBytes));
  };
  auto issue_sdp = [&](int s_) {
    issue_s(s_);
    issue_dp(s_);
  };

  // P^T and dS^T of the tile in stage s as the register A operands of dV/dK. Waits for S^T
  // (S^T and dP^T at once when wait_both) and then dP^T; returns the tile's TileInfo.
  struct TileInfo {
    int qs, partial, last;
  };
  constexpr int kKQ = kBM / 16;  // k16 steps over the tile's queries
  uint32_t pa[kKQ][4], da[kKQ][4];
  auto grad_tile = [&](int s, uint32_t ph, bool wait_both) {
    mbar_wait(&full_st[s], ph);
    const float* l2s = sStat + s * Tr::kStatFloats;
    const float* dls = l2s + kBM;
    const int* info = reinterpret_cast<const int*>(l2s + 2 * kBM);
    const TileInfo ti{info[0], info[1], info[2]};
    const int qs_ = ti.qs;
    if (wait_both) {
      wgmma_wait<0>();
    } else {
      wgmma_wait<1>();
    }
    fence_regs(st);

    // P^T = 2^(scale log2(e) S^T - lse2) (columns are queries qs_ + 8 nt + 2 t4 + e), masked
    // where the tile needs it: two loops, so tiles that need no mask run no mask code (tested
    // per element, the compiler branches around every element), and neither writes S^T (writing
    // a wgmma accumulator while another wgmma is in flight makes the compiler serialise them).
    // (80-query tiles, where dK/dV's 128 registers beside S^T, dP^T and P^T at 40 each do not
    // fit: P^T overwrites S^T and dS^T dP^T, FlashAttention-3's order; LONGATTN_SM90_BWD_M80_
    // OWN_PT=1 keeps them apart.)
    constexpr bool kInPlace = kTall && !LONGATTN_SM90_BWD_M80_OWN_PT;
    float pt_own[kInPlace ? 1 : kSR];
    auto& pt = pick_ref<kInPlace>(st, pt_own);
    const int key0 = key0_();
    const bool need_mask = ti.partial != 0 || key0 + 64 > a.Nk ||
                           (a.causal && static_cast<int64_t>(key0 + 63 - qs_) > a.diag);
    if (need_mask) {
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nt * 8 + 2 * t4 + (e & 1);
          const int j = key0 + warp * 16 + g + ((e >> 1) << 3);
          // (Selects, not branches: bitwise on the conditions.)
          const bool out =
              (j >= a.Nk) | (a.causal & (static_cast<int64_t>(j - (qs_ + c)) > a.diag));
          const float x = fmaf(st[nt * 4 + e], sl2, -l2s[c]);
          pt[nt * 4 + e] = flash::fast_exp2(out ? flash::kNegInf : x);
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          pt[nt * 4 + e] =
              flash::fast_exp2(fmaf(st[nt * 4 + e], sl2, -l2s[nt * 8 + 2 * t4 + (e & 1)]));
    }
    wgmma_wait<0>();
    fence_regs(dpt);
    // (P^T and dS^T in their own registers: instructions that write a wgmma accumulator while
    // other wgmma are in flight make the compiler serialise them.)
    float dst_own[kInPlace ? 1 : kSR];
    auto& dst = pick_ref<kInPlace>(dpt, dst_own);
#pragma unroll
    for (int nt = 0; nt < kBM / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dst[nt * 4 + e] = pt[nt * 4 + e] * (dpt[nt * 4 + e] - dls[nt * 8 + 2 * t4 + (e & 1)]);

    // k16 steps over the tile's queries.
#pragma unroll
    for (int kk = 0; kk < kKQ; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        pa[kk][r] = flash::Elem<T>::pack(pt[8 * kk + 2 * r], pt[8 * kk + 2 * r + 1]);
        da[kk][r] = flash::Elem<T>::pack(dst[8 * kk + 2 * r], dst[8 * kk + 2 * r + 1]);
      }
    return ti;
  };

  // dV += P^T dO and dK += dS^T Q (one commit group), dS^T into shared buffer i & 1, then
  // dQ = dS K over both warpgroups' keys for this warpgroup's columns (another group).
  constexpr int kDqCols = Tr::kDqCols;
  const int col0 = kM128 ? 0 : cw * kDqCols;
  const int row0 = kM128 ? cw * 64 : 0;  // this warpgroup's first dQ row in the tile
  // dQ's registers: 64 queries x kDqCols columns (128-query tiles: rows row0..), or with 80-query
  // tiles dQ^T, kDqCols (64)
  // columns x 80 queries (rows 16 warp + g (+8) are columns col0 + ..., columns 8 nt + 2 t4 (+1)
  // queries).
  constexpr int kDqR = kM80 ? kBM / 2 : kDqCols / 2;
  float dq[kDqR];
  // B operands of dV/dK ([query][d] tiles read transposed) and dQ's operands.
  const uint64_t qt_desc = smem_desc(q_base, kBM * 128, 1024);
  const uint64_t dot_desc = smem_desc(do_base, kBM * 128, 1024);
  const uint64_t ds_desc = smem_desc(ds_base, 8192, 1024);
  const uint64_t kt_desc =
      smem_desc(saddr(sK) + (col0 / 64) * kBN * 128 + (col0 % 64) * 2, 8192, 1024);
  // 80-query tiles: dS^T as the MN-major B operand of dQ^T (atoms of 16 queries 256 bytes apart,
  // groups of 8 keys 1280 apart); K's columns col0.. as its MN-major A operand.
  const uint64_t ds80_desc = smem_desc<3>(ds_base, 256, 1280);
  // While this warpgroup's dk/dv TMA stores (a.dkv_store) may still read its halves of the dS^T
  // buffers: its next dS^T store waits for them (the same in every thread of the warpgroup, kept
  // in a register: a shared flag read on every tile cost instructions in the steady loop).
  bool dkv_pending = false;
  auto issue_products = [&](int s, int i) {
    const uint64_t qb = desc_at(qt_desc, s * Tr::kQBytes);
    const uint64_t dob = desc_at(dot_desc, s * Tr::kQBytes);
    // B operands are the [query][d] tiles read transposed.
    fence_regs(dv);
    fence_regs(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKQ; ++kk)
      Mma<T>::pv(dv, pa[kk], desc_at(dob, kk * 16 * 128));
#pragma unroll
    for (int kk = 0; kk < kKQ; ++kk)
      Mma<T>::pv(dk, da[kk], desc_at(qb, kk * 16 * 128));
    wgmma_commit();

    // dS^T (by key) into shared memory with the swizzle the descriptors expect, by stmatrix:
    // da[kk][j] (queries 16 kk + 8 (j >> 1).., keys 8 (j & 1) + g of the warp's 16) is 8x8
    // matrix j of the instruction, whose row r (this lane's address: j = lane / 8, r = lane % 8)
    // is key r's 16 bytes of those 8 queries (run 370: within noise of a 32-bit store per
    // register, with fewer instructions).
    const int dsb = i & 1;
    unsigned char* ds = sdS + dsb * Tr::kDSBytes;
    if constexpr (kM80 && kWrite) {
      // The previous work's dk/dv stores (a.dkv_store) read this warpgroup's halves of both dS^T
      // buffers: they have before its first dS^T of this work (their issuing thread waits, the
      // barrier tells the others; the last dQ reduce had been read before they were staged).
      if (dkv_pending) {
        if (tid == 0) bulk_wait_read<0>();
        named_barrier(4 + cw, 128);
        dkv_pending = false;
      }
    }
    {
      const int mj = lane >> 3, mr = lane & 7;  // this lane's matrix and row
      const int r = cw * 64 + warp * 16 + (mj & 1) * 8 + mr;  // its key row within the CTA
      const uint32_t ds_s = saddr(ds);
#pragma unroll
      for (int kk = 0; kk < kKQ; ++kk) {
        const int nt = 2 * kk + (mj >> 1);
        uint32_t at;
        if constexpr (kM80) {
          // Queries 8 nt.. are 16-byte chunk nt & 1 of atom nt / 2; r & 7 == mr.
          at = ds_s + (r >> 3) * 1280 + kk * 256 + mr * 32 + (((mj >> 1) ^ (mr >> 2)) << 4);
        } else {
          // (128-query tiles: queries 64.. in the second [128 keys][64 queries] half.)
          at = ds_s + (nt / 8) * (kBN * 128) + r * 128 + (((nt % 8) ^ mr) << 4);
        }
        stmatrix_x4(at, da[kk][0], da[kk][1], da[kk][2], da[kk][3]);
      }
    }
    fence_proxy_async();

    // dQ (64 queries x kDqCols columns from col0) = dS K over all 128 keys: A = dS^T read
    // transposed, B = K's columns read transposed (at d=64 half of the 128-byte swizzled row).
    if constexpr (Tr::kSplitBar) {
      // This warpgroup's own 64 keys first, while the other one may still be writing its half:
      // each publishes its half with an arrive on its own barrier and waits on the other's only
      // before the second half of the products. Barriers 6-9 by warpgroup and tile parity: a
      // warpgroup can be one tile ahead at most (it waited for the other's arrival on the
      // previous tile), so an arrival of tile i + 2 never meets an unfinished use of tile i.
      const int bar_me = 6 + 2 * dsb + cw, bar_other = 6 + 2 * dsb + (1 - cw);
      named_barrier_arrive(bar_me, 256);
      wgmma_fence();
      const uint64_t ds_t =
          desc_at(kM80 ? ds80_desc : ds_desc, dsb * Tr::kDSBytes + row0 * 2 * kBN);
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        if (h2 == 1) named_barrier(bar_other, 256);
        const int half = h2 == 0 ? cw : 1 - cw;
#pragma unroll
        for (int kk = 0; kk < kBN / 32; ++kk) {
          const int step = half * (kBN / 32) + kk;  // 16 keys from 16 step
          const uint32_t off = step * 16 * 128;
          if constexpr (kM80) {
            // dQ^T = K^T dS^T: A = K's columns read transposed, B = dS^T read transposed.
            Mma80<T>::ss_tt(dq, desc_at(kt_desc, off), desc_at(ds_t, step * 2 * 1280),
                            h2 + kk > 0 ? 1 : 0);
          } else {
            Mma<T>::ss64_tt(dq, desc_at(ds_t, off), desc_at(kt_desc, off),
                            h2 + kk > 0 ? 1 : 0);
          }
        }
      }
    } else {
      named_barrier(1, 256);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        Mma<T>::ss64_tt(dq, desc_at(ds_desc, dsb * Tr::kDSBytes + row0 * 2 * kBN + kk * 16 * 128),
                        desc_at(kt_desc, kk * 16 * 128), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  // After the products retired: dQ scaled into registers no wgmma writes (with the early S^T
  // they are written out while the next S^T is in flight).
  float dqs[kDqR];
  auto products_retired = [&] {
    fence_regs(dq);
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pa);  // register operands of dV/dK: live until those products retired
    fence_regs(da);
#pragma unroll
    for (int j = 0; j < kDqR; ++j) dqs[j] = a.scale * dq[j];
  };

  // dq rows qs_ + 16 warp + g (+8), columns col0 + 8 nt + 2 t4 (+1), scaled.
  // part 1: the staging stores (or the red.global adds), part 2: the reduce, 3: both.
  auto dq_out = [&](int qs_, int n, int part = 3) {  // n: the tile's index in this CTA's walk
    if (kDqT || dq_tma) {
      const int buf = (cw * Tr::kDqBufs + n % Tr::kDqBufs) * Tr::kDQBytes;
      if (part & 1) {
      // The reduce that last used this buffer has read it (its issuing thread waits, the
      // barrier tells the others); then the tile in TMA's 128-byte swizzle, two boxes of 32
      // columns: 16-byte chunk c of row r lives at chunk c ^ (r & 7).
      if (tid == 0) bulk_wait_read<Tr::kDqBufs - 1>();
      named_barrier(4 + cw, 128);
      if constexpr (kDqT) {
        // dQ^T as it stands, in the accumulator's layout (backward_dq_t_offset): this
        // warpgroup's 64 columns of the tile, 320 bytes each. Register 4 nt + m of lane (g,
        // t4), column c = 16 warp + 8 (m >> 1) + g and query 8 nt + 2 t4 + (m & 1), is word t4
        // of row g of the stmatrix's matrix m: chunk (2 nt + (m & 1)) ^ ((c >> 1) & 3) of c.
        const uint32_t dst = saddr(sdQ) + buf;
        const int mj = lane >> 3, mr = lane & 7;  // this lane's matrix and row
        const int c = warp * 16 + (mj >> 1) * 8 + mr;
#pragma unroll
        for (int nt = 0; nt < kBM / 8; ++nt) {
          const int k = (2 * nt + (mj & 1)) ^ ((c >> 1) & 3);
          stmatrix_x4(dst + c * (kBM * 4) + (k << 4), __float_as_uint(dqs[nt * 4]),
                      __float_as_uint(dqs[nt * 4 + 1]), __float_as_uint(dqs[nt * 4 + 2]),
                      __float_as_uint(dqs[nt * 4 + 3]));
        }
      } else if constexpr (kM80) {
        // dQ^T transposed into boxes of [80 queries][32 columns]: column c = 16 warp + g (+8),
        // query q = 8 nt + 2 t4 (+1), at chunk (c % 32) / 4 ^ (q & 7) of row q.
        static_assert(kDqCols == 64, "two boxes of 32 columns per warpgroup");
        const uint32_t dst = saddr(sdQ) + buf;
#pragma unroll
        for (int nt = 0; nt < kBM / 8; ++nt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = warp * 16 + g + hh * 8, q = nt * 8 + 2 * t4 + e;
              st_shared_f32(dst + (c / 32) * (kBM * 128) + q * 128 +
                                ((((c % 32) >> 2) ^ (q & 7)) << 4) + (c & 3) * 4,
                            dqs[nt * 4 + 2 * hh + e]);
            }
      } else {
        static_assert(Tr::kDqRows == 64, "dQ tiles of 64 query rows");
        stage_f32_boxes<kDqCols>(saddr(sdQ) + buf, dqs, 1.f, warp, g, t4);
      }
      fence_proxy_async();
      }
      if (!(part & 2)) return;
      named_barrier(4 + cw, 128);
      if (tid == 0) {
        if constexpr (kDqT) {
          // The tile's block of its (batch, head) (qs_ a multiple of 80 over complete masks),
          // one bulk reduce (run 374: a tensor reduce of the same box timed the same).
          const int64_t tile =
              (static_cast<int64_t>(b_()) * a.H + h_()) * (a.dq_t_rows / kBM) + qs_ / kBM;
          bulk_reduce_add_f32(a.dq_t + (tile * D + col0) * kBM, sdQ + buf, Tr::kDQBytes);
        } else {
#pragma unroll
          for (int bx = 0; bx < kDqCols / 32; ++bx)
            tma_reduce_add_4d(&tdq, sdQ + buf + bx * Tr::kDqRows * 128, col0 + 32 * bx,
                              qs_ + row0, h_(), b_());
        }
        bulk_commit();
      }
    } else if (!(part & 1)) {
      return;
    } else if constexpr (kM80) {
      // dQ^T by element: its fragment's neighbours are queries, a row apart in dq.
      float* dqg = static_cast<float*>(a.dq.data) + b_() * a.dq.sb + h_() * a.dq.sh + col0;
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int q = qs_ + nt * 8 + 2 * t4 + e;
          if (q >= a.Nq) continue;
          float* row = dqg + static_cast<int64_t>(q) * a.dq.sn + warp * 16 + g;
          atomicAdd(row, dqs[nt * 4 + e]);
          atomicAdd(row + 8, dqs[nt * 4 + 2 + e]);
        }
    } else {
      float* dqg = static_cast<float*>(a.dq.data) + b_() * a.dq.sb + h_() * a.dq.sh + col0;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int q = qs_ + row0 + warp * 16 + g + hh * 8;
        if (q >= a.Nq) continue;
        float* row = dqg + static_cast<int64_t>(q) * a.dq.sn + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < kDqCols / 8; ++nt) {
          const float x0 = dqs[nt * 4 + 2 * hh], x1 = dqs[nt * 4 + 2 * hh + 1];
          if (a.dq_pair) {
            red_add_v2(row + nt * 8, x0, x1);
          } else {
            atomicAdd(row + nt * 8, x0);
            atomicAdd(row + nt * 8 + 1, x1);
          }
        }
      }
    }
  };
  auto release = [&](int s) {
#if LONGATTN_SM90_ARRIVE_PER_THREAD
    mbar_arrive(&empty[s]);
#else
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
#endif
  };

  // dk += scale dK, dv += dV for keys my_key (+8) < Nk; every old value loaded before any sum
  // is stored (flash::add_rows_out: element by element each load waited a memory latency).
  // write: dk = scale dK, dv = dV, nothing loaded (kWrite, the key block's first part).
  auto add_out = [&](const flash::DevView& out, int type, const float (&acc)[D / 2], float mul,
                     bool write) {
    int64_t off[2];
    bool ok[2];
    if (a.dkv_vec) {
      flash::fragment_rows(out, b_(), h_(), my_key_(), a.Nk, 0, off, ok);
      add_rows_out_vec<T, D>(out.data, type, off, ok, mul, acc, t4, write);
      return;
    }
    flash::fragment_rows(out, b_(), h_(), my_key_(), a.Nk, t4, off, ok);
    flash::add_rows_out<T, kDT>(
        out.data, type, a.dkv_pair != 0, off, ok, mul,
        [&](int hh, int dt, int e) { return acc[dt * 4 + 2 * hh + e]; }, write);
  };

  // The works the producer publishes; tile index i runs over all of them (stage ring, dS and
  // dQ buffers, barrier parities).
  int i = 0;
  for (;; ++n) {
    const int slot = n & 1;
    mbar_wait(&work_full[slot], (n >> 1) & 1);
    const int64_t* sw = sWork + 8 * slot;
    if (sw[2] >= n_works) break;
    decode(sw);  // (rot stays 0 here: whether a work has a visible tile is the same from any start)
    BWD_TRACE_WORK(sw[2]);
    BWD_TRACE(0, global_ns());
    BWD_TRACE(1, clock64());
#pragma unroll
    for (int j = 0; j < D / 2; ++j) dk[j] = dv[j] = 0.f;
    int qs0 = 0;
    bool have = next_visible(0, qs0) < n_items;  // later tiles: the stats warp's TileInfo
    mbar_wait(bar_kv, n & 1);
    BWD_TRACE(2, clock64());
    if (have) {
      if constexpr (kKRegs) load_kregs();
      if constexpr (!Tr::kPipelined) {
        // Iteration i finishes tile i - 1 and computes tile i. The next tile's S^T and dP^T are
        // issued as soon as the current tile's products retired and run while its dQ goes out
        // (dP^T issued after the write-out instead: 1-3% slower). Every wgmma retires within the
        // iteration that issued it (a group in flight across the loop's back edge makes the
        // compiler serialise every wgmma).
        int qs_prev = -1;  // none yet
        for (;; ++i) {
          const int s = i % kS;
          const uint32_t ph = (i / kS) & 1;
          if (!have) {
            if (qs_prev >= 0) {
              release((i - 1) % kS);
              dq_out(qs_prev, i - 1, kStageEarly ? 2 : 3);
            }
            break;
          }
          mbar_wait(&full_q[s], ph);
          BWD_TRACE_FIRST(3);
          issue_s(s);
          // (80-query tiles: the last tile's dQ is staged before this tile's S^T and dP^T are
          // issued, and only its reduce follows them (kStageEarly); or dP^T after the write-out
          // (LONGATTN_SM90_BWD_M80_STAGE_EARLY=0), unless LONGATTN_SM90_BWD_M80_DP_EARLY: both
          // products' 80 registers beside dQ's 40 and dK/dV's 128 do not fit.)
          if constexpr (!kM80 || kStageEarly || LONGATTN_SM90_BWD_M80_DP_EARLY) issue_dp(s);
          if (qs_prev >= 0) {
            release((i - 1) % kS);
            dq_out(qs_prev, i - 1, kStageEarly ? 2 : 3);
          }
          if constexpr (kM80 && !kStageEarly && !LONGATTN_SM90_BWD_M80_DP_EARLY) issue_dp(s);
          const TileInfo ti = grad_tile(s, ph, false);
          issue_products(s, i);
          wgmma_wait<0>();
          products_retired();
          if constexpr (kStageEarly) dq_out(ti.qs, i, 1);
          BWD_TRACE_FIRST(4);
          BWD_TRACE_TILE();
          qs_prev = ti.qs;
          have = !ti.last;
        }
      } else {
        // Pipelined: the next tile's S^T and dP^T are issued before this tile's dV/dK/dQ products
        // are waited for, so the tensor cores have work while dQ goes out. (Both products are
        // waited for at once: reading S^T while dP^T of a product issued in the previous iteration
        // is in flight makes the compiler serialise every wgmma.)
        mbar_wait(&full_q[i % kS], (i / kS) & 1);
        BWD_TRACE(3, clock64());
        issue_sdp(i % kS);
        for (; have; ++i) {
          const int s = i % kS;
          const uint32_t ph = (i / kS) & 1;
          const TileInfo ti = grad_tile(s, ph, true);
          issue_products(s, i);
          have = !ti.last;
          if (have) {
            const int s1 = (i + 1) % kS;
            mbar_wait(&full_q[s1], ((i + 1) / kS) & 1);
            issue_sdp(s1);
            wgmma_wait<2>();  // this tile's dV, dK, dQ; the next tile's S^T, dP^T still run
          } else {
            wgmma_wait<0>();
          }
          products_retired();
          BWD_TRACE_FIRST(4);
          BWD_TRACE_TILE();
          release(s);
          dq_out(ti.qs, i);
        }
      }
      // Nothing is in flight here (the last tile waited for everything); the compiler cannot see
      // that the pipelined branch never leaves the loop, and says so by serialising every wgmma.
      wgmma_wait<0>();
      fence_regs(st);
      fence_regs(dpt);
      BWD_TRACE(5, clock64());
    }
    // K and V are free for the next work's loads, which run while dK and dV go out.
    __syncwarp();
    if (lane == 0) mbar_arrive(kv_empty);
    BWD_TRACE(6, clock64());

    // Parts of the query range add into dk and dv one after the other: part p waits for parts
    // 0..p-1 of its key block. Their works come earlier in the order the CTAs take them, so they
    // are running or done and the wait ends; it is normally over at once, the earlier part
    // having started a whole pass over the key blocks before.
    // (part and the flag recomputed from the published work here: values kept live across the
    // tile loop cost the consumers registers, and the compiler then serialises every wgmma.)
    // (Not with dkv_tma: the reduces add atomically, in any order.)
    int* flag = nullptr;
    int part = 0;
    if (kFlags && a.q_splits > 1 && !dkv_tma) {
      const int64_t w = sw[2];
      const int x = static_cast<int>(w % nx);
      part = x / nkb;
      flag = a.split_flags + (w / nx) * nkb + (x - part * nkb);
      if (part > 0)
        while (ld_acquire_gpu(flag) < part) __nanosleep(256);
    }
    // Parts of a split work add by the reduces (their maps exist then), whole works as the
    // launch says.
    // (With 16-bit dk and dv the split works' pieces store their sums for the last one to add:
    // below.)
    if (dkv_tma || (split_tail && a.piece_scratch == nullptr && sw[2] >= a.tail_first)) {
      if constexpr (kTall) {
        // D / 16 rounds of 32 columns (dV, then dK) alternating between the two 8 KB halves of
        // this warpgroup's dQ staging tile, each waiting for the reduce two rounds back to have
        // read its half (the first two: the last dQ tile's reduce).
        const uint32_t b0 = saddr(sdQ) + cw * Tr::kDQBytes;
        unsigned char* const p0 = sdQ + cw * Tr::kDQBytes;
        const int key0 = key0_(), hh = h_(), bb = b_();
        constexpr int kRounds = D / 16;  // D / 32 for dV, then as many for dK
        auto round = [&](auto r_) {
          constexpr int r = decltype(r_)::value, first = (r % (kRounds / 2)) * 32;
          constexpr bool is_dv = r < kRounds / 2;
          const int half = r & 1;
          stage_f32_boxes<32, first>(b0 + half * 8192, is_dv ? dv : dk, is_dv ? 1.f : a.scale,
                                     warp, g, t4);
          fence_proxy_async();
          named_barrier(4 + cw, 128);
          if (tid == 0) {
            tma_reduce_add_4d(is_dv ? &tdv : &tdk, p0 + half * 8192, first, key0, hh, bb);
            bulk_commit();
            if (r < kRounds - 1) bulk_wait_read<1>();
          }
          if (r < kRounds - 1) named_barrier(4 + cw, 128);
        };
        if (tid == 0) bulk_wait_read<0>();
        named_barrier(4 + cw, 128);
        [&]<int... R>(std::integer_sequence<int, R...>) {
          (round(std::integral_constant<int, R>{}), ...);
        }(std::make_integer_sequence<int, kRounds>{});
      } else if constexpr (Tr::kDkvHalves) {
        // Four rounds of 64 columns (dV low, dV high, dK low, dK high) alternating between this
        // warpgroup's own buffer b0 and its dQ staging tile b1. Before a round's stores, the
        // reduce that last used its buffer has read it (its issuing thread, tid 0, waits for all
        // but its latest group; the barrier tells the others): for the first round the previous
        // work's, for the second the last dQ tile's, then the round two back.
        unsigned char* const b0 = sDkv + cw * Tr::kDkvBytes;
        unsigned char* const b1 = sdQ + cw * Tr::kDQBytes;
        const int key0 = key0_(), hh = h_(), bb = b_();
        // One round: columns [first, first + 64) of acc into buf, added by two reduces; but for
        // the last round, tid 0 then waits for the round before to have read its buffer.
        auto round = [&](auto first, const float (&acc)[D / 2], float mul, const CUtensorMap* map,
                         unsigned char* buf, bool last) {
          stage_f32_boxes<64, decltype(first)::value>(saddr(buf), acc, mul, warp, g, t4);
          fence_proxy_async();
          named_barrier(4 + cw, 128);
          if (tid == 0) {
            tma_reduce_add_4d(map, buf, first, key0, hh, bb);
            tma_reduce_add_4d(map, buf + 64 * 128, first + 32, key0, hh, bb);
            bulk_commit();
            if (!last) bulk_wait_read<1>();
          }
          if (!last) named_barrier(4 + cw, 128);
        };
        using Lo = std::integral_constant<int, 0>;
        using Hi = std::integral_constant<int, 64>;
        if (tid == 0) bulk_wait_read<1>();
        named_barrier(4 + cw, 128);
        round(Lo{}, dv, 1.f, &tdv, b0, false);
        round(Hi{}, dv, 1.f, &tdv, b1, false);
        round(Lo{}, dk, a.scale, &tdk, b0, false);
        round(Hi{}, dk, a.scale, &tdk, b1, true);
      } else {
        // Staged in shared memory once the previous work's reduces have read it (their issuing
        // thread waits, the barrier tells the others), then added by two TMA reduces per box.
        if (tid == 0) bulk_wait_read<0>();
        named_barrier(4 + cw, 128);
        const uint32_t sb = saddr(sDkv) + cw * 2 * Tr::kDkvBytes;
        stage_f32_boxes<D>(sb, dk, a.scale, warp, g, t4);
        stage_f32_boxes<D>(sb + Tr::kDkvBytes, dv, 1.f, warp, g, t4);
        fence_proxy_async();
        named_barrier(4 + cw, 128);
        if (tid == 0) {
          const int key0 = key0_(), hh = h_(), bb = b_();
#pragma unroll
          for (int bx = 0; bx < D / 32; ++bx) {
            tma_reduce_add_4d(&tdk, sDkv + cw * 2 * Tr::kDkvBytes + bx * 64 * 128, 32 * bx, key0,
                              hh, bb);
            tma_reduce_add_4d(&tdv, sDkv + (cw * 2 + 1) * Tr::kDkvBytes + bx * 64 * 128, 32 * bx,
                              key0, hh, bb);
          }
          bulk_commit();
        }
      }
    } else {
      // A piece of a split work with 16-bit dk and dv: each piece stores its fp32 sums (per
      // thread, in fragment order) in its slot of a.piece_scratch; the last one to finish adds
      // every piece's in piece order (so the result does not depend on which ends last) and
      // stores or adds the total as a whole work would. (Adding the other pieces' loads into
      // this piece's registers one by one put an L2 round trip on every element: measured no
      // gain, run 367.)
      const int tslot = static_cast<int>(sw[7] >> 32) - 1;
      bool out = true;
      if (tslot >= 0) {
        const int pidx = static_cast<int>((sw[6] >> 32) & 0xffff);
        const int np = static_cast<int>(sw[6] >> 48);
        constexpr int64_t kPieceFloats = 2 * 128 * D;  // both consumer warpgroups' sums
        float* const mine =
            a.piece_scratch + (int64_t{tslot} * a.piece_max + pidx) * kPieceFloats + cw * 128 * D;
#pragma unroll
        for (int j = 0; j < D / 2; ++j) {
          __stcg(mine + j * 128 + tid, dk[j]);
          __stcg(mine + (D / 2 + j) * 128 + tid, dv[j]);
        }
        __threadfence();
        named_barrier(2, 256);  // both warpgroups' sums stored
        if (tid == 0 && cw == 0)
          *piece_last = atomicAdd(a.piece_counts + tslot, 1) == np - 1 ? 1 : 0;
        named_barrier(2, 256);
        out = *piece_last != 0;
        if (out) {
          // Every piece's sums read back (this one's too: the adds then need no second copy
          // of dK and dV in registers), each piece's as one batch of independent loads.
          __threadfence();
          const float* const base =
              a.piece_scratch + int64_t{tslot} * a.piece_max * kPieceFloats + cw * 128 * D;
#pragma unroll
          for (int j = 0; j < D / 2; ++j) {
            dk[j] = __ldcg(base + j * 128 + tid);
            dv[j] = __ldcg(base + (D / 2 + j) * 128 + tid);
          }
          for (int q = 1; q < np; ++q) {
            const float* const pq = base + q * kPieceFloats;
#pragma unroll
            for (int j = 0; j < D / 2; ++j) {
              dk[j] += __ldcg(pq + j * 128 + tid);
              dv[j] += __ldcg(pq + (D / 2 + j) * 128 + tid);
            }
          }
          if (tid == 0 && cw == 0) a.piece_counts[tslot] = 0;  // for the next launch
        }
      }
      if (out) {
        const bool write = kWrite && part == 0;  // later parts add after it (flags)
        bool stored = false;
        if constexpr (kM80 && kWrite) {
          if (write && a.dkv_store != 0 && tslot < 0) {
            // A whole work's dK and dV of the input dtype by TMA stores: this warpgroup's 64 keys
            // as four [64 keys][64 columns] boxes, dV in its dQ staging tile (20 KB), dK in its
            // halves of the two dS^T buffers (10 KB each, free once both warpgroups' last dQ
            // products, which read the other's half, retired: the CTA barrier). No wait after
            // the stores: the next work's first dS^T store and first dQ staging wait for their
            // reads.
            named_barrier(2, 256);
            if (tid == 0) bulk_wait_read<0>();  // the last dQ reduce has read the staging tile
            dkv_pending = true;
            named_barrier(4 + cw, 128);
            unsigned char* const pv = sdQ + cw * Tr::kDQBytes;
            unsigned char* const pk0 = sdS + cw * (Tr::kDSBytes / 2);
            unsigned char* const pk1 = pk0 + Tr::kDSBytes;
            stage_half_box<T, 0>(saddr(pv), dv, 1.f, warp, g, t4);
            stage_half_box<T, 64>(saddr(pv) + 8192, dv, 1.f, warp, g, t4);
            stage_half_box<T, 0>(saddr(pk0), dk, a.scale, warp, g, t4);
            stage_half_box<T, 64>(saddr(pk1), dk, a.scale, warp, g, t4);
            fence_proxy_async();
            named_barrier(4 + cw, 128);
            if (tid == 0) {
              const int key0 = key0_(), hh = h_(), bb = b_();
              tma_store_4d(&tdv, pv, 0, key0, hh, bb);
              tma_store_4d(&tdv, pv + 8192, 64, key0, hh, bb);
              tma_store_4d(&tdk, pk0, 0, key0, hh, bb);
              tma_store_4d(&tdk, pk1, 64, key0, hh, bb);
              bulk_commit();
            }
            stored = true;
          }
        }
        if (!stored) {
          add_out(a.dk, a.dk_type, dk, a.scale, write);
          add_out(a.dv, a.dv_type, dv, 1.f, write);
        }
      }
    }
    BWD_TRACE(7, clock64());
    BWD_TRACE(9, global_ns());
    if (kFlags && flag != nullptr && part + 1 < a.q_splits) {
      __threadfence();
      named_barrier(2, 256);  // every consumer's sums stored
      if (tid == 0 && cw == 0) st_release_gpu(flag, part + 1);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&work_empty[slot]);
  }
  // The shared-memory dQ (and dK, dV) tiles must outlive the last reduce's reads.
  if ((kDqT || dq_tma || dkv_tma || split_tail || (kM80 && kWrite && a.dkv_store != 0)) &&
      tid == 0)
    bulk_wait_all();
}

struct BwdMaps {
  CUtensorMap q, k, v, d_o, dq, dk, dv;
  bool dq_tma = false;  // dq (fp32) allows TMA: 16-byte aligned base and strides
  // dK and dV by TMA reduce (a.dkv_reduce, dk and dv fp32 that allow TMA).
  bool dkv_tma = false;
  // dk and dv of the input dtype written by TMA stores (BwdArgs::dkv_store): their maps are
  // 16-bit then.
  bool dkv_store = false;
};
BwdMaps make_bwd_maps(const BwdArgs& a, int D, bool bf16, int box_q, int box_kv, int box_dq);

template <typename T, int D, bool kKRegs = false, int kM = 64, bool kByPosition = kM != 64,
          bool kWrite = false, bool kDqT = false>
void launch_bwd_sm90_impl(const BwdArgs& args, cudaStream_t stream, cudaMemPool_t pool) {
  using Tr = BwdSm90Traits<D, kM, kByPosition>;
  auto kernel = flash_bwd_sm90_kernel<T, D, kKRegs, kM, kByPosition, kWrite, kDqT>;
  // Per launch (cheap), so a process driving several devices gets it on each.
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kSmemBytes));
  LONGATTN_CHECK_ARG(args.q_splits >= 1 && (args.q_splits == 1 || args.split_flags != nullptr),
                     "q_splits", args.q_splits, "must be >= 1, with split_flags when > 1");
  LONGATTN_CHECK_ARG((args.dq_t != nullptr) == kDqT &&
                         (!kDqT || (args.complete != 0 &&
                                    args.dq_t_rows == backward_dq_t_rows(args.Nq))),
                     "dq_t", args.dq_t == nullptr ? "null" : "an accumulator",
                     "the transposed dq accumulator (backward_dq_t_rows(Nq) rows) goes with the "
                     "80-query writing kernel over complete masks (sm90::bwd_dq_transposed) only");
  BwdArgs a = args;
  // Equal works (walked by position over a complete mask, not causal, one part of the query
  // range) may have their last round split (backward_tail_split): the parts add dK and dV by TMA
  // reduces, so dk and dv get their maps wherever they allow TMA, whatever a.dkv_reduce says for
  // the whole works.
  const bool may_split = Tr::kPos && a.complete != 0 && a.causal == 0 && a.q_splits == 1;
  BwdArgs map_args = a;
  if (may_split) map_args.dkv_reduce = 1;
  const BwdMaps maps =
      make_bwd_maps(map_args, D, std::is_same_v<T, __nv_bfloat16>, Tr::kBM, Tr::kBN, Tr::kDqRows);
  const bool dkv_tma = maps.dkv_tma && a.dkv_reduce != 0;  // the whole works'
  a.dkv_store = maps.dkv_store && Tr::kM80 && kWrite ? 1 : 0;
  note_bwd_dkv_store(a.dkv_store != 0);
  // Below head dim 128 the parts need the dK/dV reduces (no ordering flags there); without them
  // the call takes one part, which gives the same sums.
  if (D < 128 && !dkv_tma) a.q_splits = 1;
  int64_t works = int64_t{(a.Nk + Tr::kBN - 1) / Tr::kBN} * a.q_splits * a.H * a.B;
  a.tail_first = 0;
  a.tail_parts = 0;
  const int tiles_per_work = (a.Nq + Tr::kBM - 1) / Tr::kBM;
  // dk and dv of the 16-bit input dtype allow no reduces: a split's pieces then meet in a scratch
  // (plan_bwd_pieces).
  const bool piece_split = may_split && !maps.dkv_tma && a.dk_type == flash::kOutSame &&
                           a.dv_type == flash::kOutSame && bwd_pieces_enabled();
  if (may_split && (maps.dkv_tma || piece_split) && a.q_splits == 1)
    works = plan_bwd_tail_split(a, works, tiles_per_work);
  else
    plan_bwd_tail_split(a, 0, 0);  // (records no split)
  void* const piece_mem =
      piece_split ? plan_bwd_pieces(a, works, tiles_per_work, D, pool, stream) : nullptr;
  LONGATTN_CHECK_ARG(works < (int64_t{1} << 31) - (int64_t{1} << 20), "k",
                     std::to_string(works) + " key blocks over batch and heads",
                     "must be fewer than 2^31 - 2^20");
  int grid = 0;
  int* const counter = make_bwd_schedule(static_cast<int>(works), grid);
#if LONGATTN_SM90_BWD_TRACE
  void* trace = nullptr;
  CUDA_CHECK(cudaGetSymbolAddress(&trace, g_bwd_trace));
  CUDA_CHECK(cudaMemsetAsync(trace, 0, sizeof(g_bwd_trace), stream));
  {
    const char* by = std::getenv("LONGATTN_SM90_BWD_TRACE_BY_CTA");
    const int by_cta = by != nullptr && std::string(by) == "1" ? 1 : 0;
    CUDA_CHECK(cudaMemcpyToSymbolAsync(g_bwd_trace_by_cta, &by_cta, sizeof(int), 0,
                                       cudaMemcpyHostToDevice, stream));
  }
#endif
  CUDA_CHECK(launch_sm90(kernel, grid, Tr::kThreads, Tr::kSmemBytes, stream, pdl_enabled(),
                         maps.q, maps.k, maps.v, maps.d_o, maps.dq, maps.dk, maps.dv, a,
                         maps.dq_tma ? 1 : 0, dkv_tma ? 1 : 0, counter));
  CUDA_CHECK_LAUNCH("flash_bwd_sm90_kernel");
  if (piece_mem != nullptr) CUDA_CHECK(cudaFreeAsync(piece_mem, stream));
#if LONGATTN_SM90_BWD_TRACE
  if (const char* path = std::getenv("LONGATTN_SM90_BWD_TRACE_OUT")) {
    static long long host[64][2][10];
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpyFromSymbol(host, g_bwd_trace, sizeof(host)));
    char name[512];
    std::snprintf(name, sizeof(name), "%s_d%d_n%d_c%d_p%d.txt", path, D, a.Nq, a.causal,
                  a.q_splits);
    char header[256];
    const char* by = std::getenv("LONGATTN_SM90_BWD_TRACE_BY_CTA");
    std::snprintf(header, sizeof(header),
                  "# D=%d Nq=%d Nk=%d causal=%d parts=%d rotate=%d grid=%d by_cta=%d", D, a.Nq,
                  a.Nk, a.causal, a.q_splits, a.rotate, grid,
                  by != nullptr && std::string(by) == "1" ? 1 : 0);
    write_trace(name, header, &host[0][0][0], 64, 2, 10);
  }
#endif
}

}  // namespace longattn::cuda::sm90
