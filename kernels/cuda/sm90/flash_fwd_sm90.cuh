// Forward flash attention for Hopper (sm_90a): warp-specialised, TMA + wgmma, with the same
// contract and outputs as the portable kernel (kernels/cuda/flash_fwd_kernel.cuh: o normalised,
// lse = ln(sum exp), -inf for empty rows). Persistent: one CTA of three warpgroups per SM takes
// (query tile of 128 rows, batch, head) items from a counter:
// - warpgroup 0 (the producer, registers given back with setmaxnreg) has one thread issue TMA
//   loads: Q, then K and V of every listed key tile into a ring of kStages shared-memory stages,
//   each completing on its own "full" mbarrier and reused once the consumers release it. With
//   each K tile it publishes the tile's first key, mask flags and last-tile flag, so the
//   consumers read no mask entries and divide nothing;
// - warpgroups 1 and 2 (the consumers, 64 query rows each, registers raised to 240; at head dim
//   64, for calls whose mask lists every key block they can see or whose rows are runs of key
//   blocks, three consumer warpgroups of 160 registers on 192-row tiles; at head dim 128 for
//   those calls, 192-key tiles; both walk the key tiles by position, a 192-row tile over the
//   union of the runs of the two mask rows it may span, each warpgroup masking outside its own
//   as the producer's per-tile info says and skipping the tiles it sees none of) compute
//   S = Q K^T with wgmma, the online softmax in registers (masking only on tiles flagged
//   partial, at the sequence edge or on the causal diagonal), and O += P V with P kept in
//   registers as the wgmma A operand and V read transposed from shared memory. QK^T of the next
//   key tile and PV of the previous one are in flight while the softmax runs, and the consumer
//   warpgroups ping-pong (but for two at head dim 64); at head dim 64 Q is the register operand
//   of QK^T. An item's o goes out while the next item's first QK^T runs.
// The CSR mask row of the query block lists the key tiles; tiles no row of the CTA may see under
// causality are skipped; the last (longest) query tiles first.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_common.cuh"
#include "kernels/cuda/sm90/flash_sm90.hpp"
#include "kernels/cuda/sm90/sm90_common.cuh"
#include "kernels/cuda/sm90/wgmma_ops.cuh"

namespace longattn::cuda::sm90 {

using flash::FwdArgs;

// Measurement builds only (cmake -DLONGATTN_SM90_FWD_TRACE=ON): CTA 0 records clock64() at
// points of its first 64 items, g_fwd_trace[item][row][event]. Row 0, the producer: 0 item
// published, 1 Q load issued, 2 first K tile issued, 7 the item's key tiles. Row 1 + w, consumer
// warpgroup w: 0 item read, 1 Q ready, 2 first K tile ready, 3 first turn, 4 S_0 done, 5 last
// P V done, 6 o stored (after the next item's first QK^T is issued). Each launch clears it, synchronises and writes it to
// $LONGATTN_SM90_FWD_TRACE_OUT_d<D>_bn<keys>_n<Nq>_c<causal>_r<runs>.txt (the last launch of each
// shape stays); bench/fwd_trace_summary.py summarises such files.
#ifndef LONGATTN_SM90_FWD_TRACE
#define LONGATTN_SM90_FWD_TRACE 0
#endif
#if LONGATTN_SM90_FWD_TRACE
static __device__ long long g_fwd_trace[64][4][8];
// Every CTA's span in %globaltimer nanoseconds (one clock for all SMs), g_fwd_span[cta][event]:
// 0 entry, 1 past pdl_wait, 2 the producer's exit (after its last item's loads), 3 + w consumer
// warpgroup w's exit (after its last o store). Written to <trace name>_span.txt.
constexpr int kFwdSpanCtas = 1024;
static __device__ long long g_fwd_span[kFwdSpanCtas][6];
#define FWD_SPAN(ev)                                                                       \
  do {                                                                                     \
    if (blockIdx.x < kFwdSpanCtas) g_fwd_span[blockIdx.x][ev] = global_ns();               \
  } while (0)
#define FWD_TRACE_VAL(n, role, ev, v)                                              \
  do {                                                                             \
    if (blockIdx.x == 0 && (n) < 64) g_fwd_trace[n][role][ev] = (v);               \
  } while (0)
#else
#define FWD_TRACE_VAL(n, role, ev, v) \
  do {                                \
  } while (0)
#define FWD_SPAN(ev) \
  do {               \
  } while (0)
#endif
#define FWD_TRACE(n, role, ev) FWD_TRACE_VAL(n, role, ev, clock64())

// The wgmma shapes the kernels use, by element type (wgmma_ops.cuh):
//   qk: S = Q K^T, m64n128 (Q from shared memory, or Q in registers);
//   pv: O += P V, P in registers, V read transposed (m64n128, m64n64);
//   ss64: m64n64, both operands K-major (S^T, dP^T in the backward);
//   ss64_tt: both operands transposed (dQ in the backward; m64n64, m64n32).
template <typename T>
struct Mma;
#define LONGATTN_MMA(T, TY)                                                                     \
  template <>                                                                                   \
  struct Mma<T> {                                                                               \
    static __device__ __forceinline__ void qk(float (&d)[64], uint64_t a, uint64_t b, int acc) { \
      wgmma_ss_n128_##TY(d, a, b, acc);                                                         \
    }                                                                                           \
    static __device__ __forceinline__ void qk(float (&d)[96], uint64_t a, uint64_t b, int acc) { \
      wgmma_ss_n192_##TY(d, a, b, acc);                                                         \
    }                                                                                           \
    static __device__ __forceinline__ void qk(float (&d)[64], const uint32_t (&a)[4],           \
                                              uint64_t b, int acc) {                            \
      wgmma_rs_n128_kb_##TY(d, a, b, acc);                                                      \
    }                                                                                           \
    static __device__ __forceinline__ void pv(float (&d)[64], const uint32_t (&a)[4],           \
                                              uint64_t b) {                                     \
      wgmma_rs_n128_##TY(d, a, b, 1);                                                           \
    }                                                                                           \
    static __device__ __forceinline__ void pv(float (&d)[32], const uint32_t (&a)[4],           \
                                              uint64_t b) {                                     \
      wgmma_rs_n64_##TY(d, a, b, 1);                                                            \
    }                                                                                           \
    static __device__ __forceinline__ void rs64(float (&d)[32], const uint32_t (&a)[4],         \
                                                uint64_t b, int acc) {                          \
      wgmma_rs_n64_kb_##TY(d, a, b, acc);                                                       \
    }                                                                                           \
    static __device__ __forceinline__ void ss64(float (&d)[32], uint64_t a, uint64_t b,         \
                                                int acc) {                                      \
      wgmma_ss_n64_##TY(d, a, b, acc);                                                          \
    }                                                                                           \
    static __device__ __forceinline__ void ss64_tt(float (&d)[32], uint64_t a, uint64_t b,      \
                                                   int acc) {                                   \
      wgmma_ss_n64_tt_##TY(d, a, b, acc);                                                       \
    }                                                                                           \
    static __device__ __forceinline__ void ss64_tt(float (&d)[16], uint64_t a, uint64_t b,      \
                                                   int acc) {                                   \
      wgmma_ss_n32_tt_##TY(d, a, b, acc);                                                       \
    }                                                                                           \
  };
LONGATTN_MMA(__nv_bfloat16, bf16)
LONGATTN_MMA(__half, f16)
#undef LONGATTN_MMA

// t[0] = max (or sum) of t[0 .. M), pairwise (the last M / 2 onto the first): short dependency
// chains, all indices constant, any M.
template <int M, bool kMax, int N>
__device__ __forceinline__ void tree_reduce(float (&t)[N]) {
  if constexpr (M > 1) {
    constexpr int H = M / 2;
#pragma unroll
    for (int i = 0; i < H; ++i)
      t[i] = kMax ? fmaxf(t[i], t[i + M - H]) : t[i] + t[i + M - H];
    tree_reduce<M - H, kMax>(t);
  }
}

// Pieces both forward kernels share. A consumer warpgroup holds S (and P) of its 64 rows x kNT*8
// key columns in the wgmma accumulator layout: thread (warp, g, t4) has rows my_row (e < 2) and
// my_row + 8 (e >= 2), columns 8 nt + 2 t4 + (e & 1), element sc[4 nt + e].

// -inf where key ks + column is before klo (kLo: the start of the warpgroup's run of key blocks)
// or at or past kend (Nk, the end of a split piece or of the warpgroup's run) or, under
// causality, not visible from the row.
template <int kNT, bool kLo>
__device__ __forceinline__ void mask_scores(float (&sc)[kNT * 4], const FwdArgs& a, int ks,
                                            int klo, int kend, int my_row, int t4) {
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = my_row + ((e >> 1) << 3);
      const int j = ks + nt * 8 + 2 * t4 + (e & 1);
      if ((kLo && j < klo) || j >= kend || (a.causal && static_cast<int64_t>(j - r) > a.diag))
        sc[nt * 4 + e] = flash::kNegInf;
    }
}

// Online softmax in the exp2 domain (as the portable kernel) for rows my_row (hh = 0) and
// my_row + 8 (hh = 1), each spread over the 4 threads of a quad: S becomes P, the running maximum
// m and sum l advance, alpha is the factor the previous output must be scaled by.
//
// kMargin (the forward at head dim 64): the running maximum moves only when the tile's exceeds it
// by more than kFwdMargin (log2 units) or the row saw nothing before; otherwise m stays, alpha is
// exactly 1, and P = exp2(S sl2 - m) is at most 2^kFwdMargin (exact in the fp32 sums and o, and
// far inside fp16's range). Any m at or above the true maximum minus the margin gives the same
// softmax: o, l and the lse (m + log2 l) differ by one factor per row that o / l cancels. The
// caller then skips the rescale of o where no row of the warp moved its maximum.
constexpr float kFwdMargin = 8.f;
//
// kUse < kNT: only the first kUse column groups hold scores (a narrower tile in S's registers).
template <int kNT, bool kMargin = false, int kUse = kNT>
__device__ __forceinline__ void online_softmax(float (&sc)[kNT * 4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float sl2) {
  static_assert(kUse >= 1 && kUse <= kNT, "column groups of S");
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float t[kUse];
#pragma unroll
    for (int nt = 0; nt < kUse; ++nt) t[nt] = fmaxf(sc[nt * 4 + 2 * hh], sc[nt * 4 + 2 * hh + 1]);
    tree_reduce<kUse, true>(t);
    float mx = t[0];
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    float m_new = fmaxf(m[hh], mx * sl2);
    if constexpr (kMargin) {
      if (m_new <= m[hh] + kFwdMargin) m_new = m[hh];
    }
    const float base_v = m_new == flash::kNegInf ? 0.f : m_new;
    alpha[hh] = flash::fast_exp2(m[hh] - base_v);
    m[hh] = m_new;
#pragma unroll
    for (int nt = 0; nt < kUse; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e)
        sc[nt * 4 + 2 * hh + e] = flash::fast_exp2(fmaf(sc[nt * 4 + 2 * hh + e], sl2, -base_v));
      t[nt] = sc[nt * 4 + 2 * hh] + sc[nt * 4 + 2 * hh + 1];
    }
    tree_reduce<kUse, false>(t);
    l[hh] = l[hh] * alpha[hh] + t[0];
  }
}

// P in registers: two adjacent 8-column groups of S are one k16 step of the A operand (kUse: of
// the first kUse groups).
template <typename T, int kNT, int kUse = kNT>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[kNT / 2][4], const float (&sc)[kNT * 4]) {
#pragma unroll
  for (int kk = 0; kk < kUse / 2; ++kk) {
    pa[kk][0] = flash::Elem<T>::pack(sc[8 * kk + 0], sc[8 * kk + 1]);
    pa[kk][1] = flash::Elem<T>::pack(sc[8 * kk + 2], sc[8 * kk + 3]);
    pa[kk][2] = flash::Elem<T>::pack(sc[8 * kk + 4], sc[8 * kk + 5]);
    pa[kk][3] = flash::Elem<T>::pack(sc[8 * kk + 6], sc[8 * kk + 7]);
  }
}

// A row's l summed over its quad (the four lanes holding its columns), and the row's lse from it
// (-inf for a row that saw nothing).
__device__ __forceinline__ float quad_row_sum(float l) {
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  return l;
}
__device__ __forceinline__ float row_lse(float m, float row_sum) {
  return row_sum > 0.f ? m * flash::kLn2 + logf(row_sum) : flash::kNegInf;
}

// The end of an item's walk: o normalised by the row sums, m turned into the rows' lse (-inf for
// rows that saw nothing). Done right after the last P V has retired, so what a deferred store
// reads later is no longer a wgmma accumulator (the store then runs beside the next item's first
// QK^T without the compiler waiting for that product).
template <int D>
__device__ __forceinline__ void finish_rows(float (&o)[D / 2], float (&m)[2], const float (&l)[2]) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float lt = quad_row_sum(l[hh]);
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt * 4 + 2 * hh] *= inv;
      o[dt * 4 + 2 * hh + 1] *= inv;
    }
    m[hh] = row_lse(m[hh], lt);
  }
}

// o normalised by the row sums and the rows' lse (-inf for rows that saw nothing) of (b, h); with
// kNorm false o is normalised already and m holds the lse (finish_rows), l unused. With a.o_vec
// each lane stores whole 8-column groups (16 bytes) after a quad transpose: a quarter of the
// store instructions, each writing full 32-byte sectors.
template <typename T, int D, bool kNorm = true>
__device__ __forceinline__ void store_o_lse(const FwdArgs& a, const float (&o)[D / 2],
                                            const float (&m)[2], const float (&l)[2], int b, int h,
                                            int my_row, int t4) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float lt = kNorm ? quad_row_sum(l[hh]) : 0.f;
    const int r = my_row + hh * 8;
    const float inv = kNorm ? (lt > 0.f ? 1.f / lt : 0.f) : 1.f;
    const int64_t ob = b * a.o.sb + static_cast<int64_t>(r) * a.o.sn + h * a.o.sh;
    if (a.o_vec) {
      // (Every lane of the quad takes part in the shuffles, whatever its row.)
#pragma unroll
      for (int gq = 0; gq < D / 32; ++gq) {
        uint32_t v[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int dt = 4 * gq + q;
          v[q] = flash::Elem<T>::pack(o[dt * 4 + 2 * hh] * inv, o[dt * 4 + 2 * hh + 1] * inv);
        }
        quad_transpose(v, t4);
        if (r < a.Nq)
          *reinterpret_cast<uint4*>(static_cast<T*>(a.o.data) + ob + (4 * gq + t4) * 8) =
              make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
    if (r < a.Nq) {
      if (!a.o_vec) {
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
          flash::store_out2<T>(a.o.data, ob + dt * 8 + 2 * t4, a.o_type,
                               o[dt * 4 + 2 * hh] * inv, o[dt * 4 + 2 * hh + 1] * inv, a.o_pair);
      }
      if (t4 == 0) {
        float* lse = static_cast<float*>(a.lse.data);
        lse[b * a.lse.sb + static_cast<int64_t>(r) * a.lse.sn + h * a.lse.sh] =
            kNorm ? row_lse(m[hh], lt) : m[hh];
      }
    }
  }
}

// A piece of a split item: o normalised by the row sums and the rows' lse, fp32, rows relative
// to the item's first (rows past Nq are written too; the merge skips them); kNorm as above.
template <int D, bool kNorm = true>
__device__ __forceinline__ void store_piece(float* so, float* slse, const float (&o)[D / 2],
                                            const float (&m)[2], const float (&l)[2], int row,
                                            int t4) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float lt = kNorm ? quad_row_sum(l[hh]) : 0.f;
    const int r = row + hh * 8;
    const float inv = kNorm ? (lt > 0.f ? 1.f / lt : 0.f) : 1.f;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<float2*>(so + static_cast<int64_t>(r) * D + dt * 8 + 2 * t4) =
          make_float2(o[dt * 4 + 2 * hh] * inv, o[dt * 4 + 2 * hh + 1] * inv);
    if (t4 == 0) slse[r] = kNorm ? row_lse(m[hh], lt) : m[hh];
  }
}

// A consumer warpgroup's output accumulators for its rows of an item (thread's share: o in the
// wgmma accumulator layout, the running maximum and sum of its two rows).
template <int D>
struct FwdAcc {
  float o[D / 2];
  float m[2], l[2];
};

// kWG consumer warpgroups of 64 query rows each and key tiles of kBNt rows: 2 and 128 (any
// mask); for calls whose mask lists every visible key block (FwdArgs::complete) or whose rows
// are runs (FwdArgs::runs, the kRuns instantiations) 3 and 128 at head dim 64, 2 and 192 at head
// dim 128. The key tiles are then walked by position, so a tile need not sit inside one mask
// block. kGather (head dim 128, 2 and 192, forward_gathered_tiles): a row's listed blocks cut
// into 64-key chunks, three chunks a tile, whatever blocks they come from.
template <int D, int kWG = 2, int kBNt = 128, bool kRuns = false, bool kGather = false>
struct FwdSm90Traits {
  static_assert(kWG == 2 || (kWG == 3 && D == 64), "three consumer warpgroups at head dim 64");
  static_assert(kBNt == 128 || (kBNt == 192 && D == 128 && kWG == 2), "192-key tiles at d=128");
  static_assert(!kGather || (kBNt == 192 && !kRuns), "gathered tiles: 192 keys, listed masks");
  static constexpr int kChunkKeys = 64;  // keys of a gathered chunk (a TMA box of K or V rows)
  static constexpr int kChunksPerTile = kBNt / kChunkKeys;
  static constexpr int kBM = 64 * kWG;             // query rows per tile
  static constexpr int kBN = kBNt;                 // key rows per tile
  static constexpr int kStages = D <= 64 ? 4 : 2;  // K/V ring depth (3 at d=128: no faster)
  // Q as the register operand of QK^T (loaded once per item by ldmatrix): QK^T then reads only K
  // from shared memory and Q's buffer is free for the next item at once. Measured: +3-5% at
  // d=64, none at d=128 (where Q would take 32 more registers per thread). Not with three
  // consumer warpgroups (160 registers each).
  static constexpr bool kQRegs = D <= 64 && kWG == 2;
  // Key tiles by position, not from the mask's lists.
  static constexpr bool kByPosition = !kGather && (kWG == 3 || kBNt != 128);
  static_assert(kByPosition || !kRuns, "masks of runs are walked by position");
  static constexpr int kChunks = D / 64;           // 64-element (128-byte) column chunks
  static constexpr int kThreads = 128 * (kWG + 1);
  // Arrivals that release a shared resource: one per consumer warp.
  static constexpr int kConsumerWarps = 4 * kWG;
  // setmaxnreg split (sm90_common.cuh): the CTA owns 65536 / kThreads registers a thread.
  // Over masks of runs with three consumer warpgroups the producer has 32 (its walk holds each
  // warpgroup's key range and tests whether each sees the next tile): 32 x 128 + 160 x 384 =
  // 65536.
  static constexpr int kConsRegs = kWG == 2 ? kConsumerRegs : 160;
  static constexpr int kProdRegs = kWG == 3 && kRuns ? 32 : kProducerRegs;
  static_assert(kProdRegs * 128 + kConsRegs * 128 * kWG <= (65536 / kThreads / 8 * 8) * kThreads,
                "the warpgroup register split must fit the registers the CTA owns");
  static constexpr int kQBytes = kBM * D * 2;
  static constexpr int kTileBytes = kBN * D * 2;  // one K or one V tile
  // bar_q, q_empty, tile_full[2], tile_empty[2], then full_k, full_v, empty_k, empty_v per stage;
  // then the two tile slots.
  static constexpr int kBarBytes = 8 * (6 + 4 * kStages) + 16;
  // Per stage (kInfoInts int4): the tile's first key, mask flags (bit w: warpgroup w masks),
  // last-tile flag and the end of the keys it may show (Nk, or the end of the key range walked
  // by position). Over masks of runs instead of that end the keys of the tile warpgroup 0 may
  // see (first | one past the last << 16, relative to the first key; all warpgroups' on 128-row
  // tiles), then those of warpgroups 1 and 2 on 192-row tiles; and after the stages the
  // producer's copy of the current item's key range per warpgroup (two int4).
  static constexpr int kInfoInts = kRuns ? 2 : 1;
  static constexpr int kInfoBytes = 16 * kInfoInts * kStages + (kRuns ? 32 : 0);
  static constexpr int kSmemBytes =
      1024 + kQBytes + 2 * kStages * kTileBytes + kInfoBytes + kBarBytes;
};

// Work items of one launch: query tiles of every (batch, head), last query tiles first (the
// longest rows under causality) within groups of heads whose K/V fit in L2 (causal calls; the
// others one head at a time), handed out by a counter the last CTA to leave resets.
struct FwdSchedule {
  int* counter = nullptr;  // [0]: next item - gridDim.x, [1]: CTAs done
  int n_qtiles = 0;
  int group = 1;  // (batch, head) pairs whose items interleave
  int flags = 0;  // kFwdPingPong
  // Items of the launch: items 0 .. split_first - 1 whole, then split_items items cut along the
  // keys into split_pieces pieces of split_keys keys each (forward_tail_split), each piece an
  // item of its own whose normalised o and lse go to split_o / split_lse (fp32, piece-major,
  // [piece][kBM][D] and [piece][kBM]) for fwd_split_merge_kernel.
  int n_items = 0;
  int split_first = 0, split_items = 0, split_pieces = 0, split_keys = 0;
  float* split_o = nullptr;
  float* split_lse = nullptr;
  // Short items (kShort launches, forward_short_items; never with split ones): after the
  // n_qtiles tall items of every pair come n_short items of kBM - 64 rows per pair, from row
  // n_qtiles * kBM on.
  int n_short = 0;
};

// First query row, head, batch and rows of item t (whole items; a split item's pieces share its
// t).
struct FwdItemPos {
  int q0, h, b, rows;
};
template <bool kShort = false>
__device__ __forceinline__ FwdItemPos fwd_item_pos(int t, const FwdSchedule& sched, int H, int B,
                                                   int kBM) {
  // Items come in groups of sched.group (batch, head) pairs, sized so that the group's K/V stay
  // in L2 while the CTAs running at once walk it (one pair without causality); within a group
  // the last (longest under causality) query tiles of every pair come first. kShort: short
  // items, if any, follow every tall one in the same order.
  int n = sched.n_qtiles, first = 0, rows = kBM;
  if (kShort && sched.n_short > 0 && t >= sched.n_qtiles * H * B) {
    t -= sched.n_qtiles * H * B;
    first = sched.n_qtiles * kBM;
    n = sched.n_short;
    rows = kBM - 64;
  }
  const int per_group = n * sched.group;
  const int g0 = t / per_group * sched.group;
  const int gsize = min(sched.group, H * B - g0);
  const int r = t % per_group;
  const int hb = g0 + r % gsize;
  return {first + (n - 1 - r / gsize) * rows, hb % H, hb / H, rows};
}

// o and lse of the split items from their pieces: lse = log sum_p exp(lse_p), o = sum_p
// exp(lse_p - lse) o_p. One warp per (split item, row), kMergeRows rows a block; each lane
// takes D / 32 neighbouring columns (one 8- or 16-byte load per piece).
constexpr int kMergeRows = 8;
template <typename T, int D, int kBM>
__global__ void __launch_bounds__(32 * kMergeRows)
    fwd_split_merge_kernel(const FwdArgs a, const FwdSchedule sched) {
  constexpr int kC = D / 32;  // columns per lane
  const int task = blockIdx.x * kMergeRows + threadIdx.x / 32;
  if (task >= sched.split_items * kBM) return;
  const int j = task / kBM, row = task % kBM;
  const FwdItemPos pos = fwd_item_pos(sched.split_first + j, sched, a.H, a.B, kBM);
  const int r = pos.q0 + row;
  if (r >= a.Nq) return;
  const int np = sched.split_pieces;
  const float* lse = sched.split_lse + static_cast<int64_t>(j) * np * kBM + row;
  float mx = flash::kNegInf;
  for (int p = 0; p < np; ++p) mx = fmaxf(mx, lse[static_cast<int64_t>(p) * kBM]);
  const int c = kC * (threadIdx.x % 32);
  float acc[kC] = {}, wsum = 0.f;
  if (mx != flash::kNegInf) {
    for (int p = 0; p < np; ++p) {
      const float wgt = expf(lse[static_cast<int64_t>(p) * kBM] - mx);
      const float* op =
          sched.split_o + (static_cast<int64_t>(j * np + p) * kBM + row) * D + c;
      float x[kC];
      if constexpr (kC == 4) {
        const float4 v = *reinterpret_cast<const float4*>(op);
        x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
      } else {
        const float2 v = *reinterpret_cast<const float2*>(op);
        x[0] = v.x, x[1] = v.y;
      }
      wsum += wgt;
#pragma unroll
      for (int e = 0; e < kC; ++e) acc[e] += wgt * x[e];
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  const int64_t ob = pos.b * a.o.sb + static_cast<int64_t>(r) * a.o.sn + pos.h * a.o.sh;
#pragma unroll
  for (int e = 0; e < kC; e += 2)
    flash::store_out2<T>(a.o.data, ob + c + e, a.o_type, acc[e] * inv, acc[e + 1] * inv,
                         a.o_pair);
  if (threadIdx.x % 32 == 0) {
    float* out = static_cast<float*>(a.lse.data);
    out[pos.b * a.lse.sb + static_cast<int64_t>(r) * a.lse.sn + pos.h * a.lse.sh] =
        wsum > 0.f ? mx + logf(wsum) : flash::kNegInf;
  }
}
constexpr int kFwdPingPong = 1;

// Whether warpgroup c of a 192-row tile over a mask of runs sees none of the key tile from ks:
// ks outside its run (run[c] .. run[4 + c], the producer's copy).
template <int kBN>
__device__ __forceinline__ bool fwd_blank(const volatile int* run, int c, int ks) {
  const int lo = max(0, min(kBN, run[c] - ks));
  const int hi = max(0, min(kBN, run[4 + c] - ks));
  return lo >= hi;
}

// kShort: the instantiation for launches with short items (plan_fwd_short_items: three
// warpgroups over a complete mask, not causal), whose warpgroups without rows in an item sit it
// out; the other instantiations have none of that code.
template <typename T, int D, int kWG, int kBNt, bool kRuns, bool kGather, bool kShort = false,
          int kNarrowKeys = 0>
__global__ void __launch_bounds__(128 * (kWG + 1), 1)
    flash_fwd_sm90_kernel(const __grid_constant__ CUtensorMap tq,
                          const __grid_constant__ CUtensorMap tk,
                          const __grid_constant__ CUtensorMap tv, const FwdArgs a,
                          const FwdSchedule sched) {
  using Tr = FwdSm90Traits<D, kWG, kBNt, kRuns, kGather>;
  constexpr int kBM = Tr::kBM, kBN = Tr::kBN, kS = Tr::kStages, kII = Tr::kInfoInts;
  extern __shared__ unsigned char smem_raw[];
  // TMA's 128-byte swizzle repeats every 1024 bytes: tiles start on 1024-byte boundaries.
  const uint32_t raw = saddr(smem_raw);
  unsigned char* base = smem_raw + (((raw + 1023) & ~1023u) - raw);
  unsigned char* sQ = base;
  unsigned char* sK = sQ + Tr::kQBytes;
  unsigned char* sV = sK + kS * Tr::kTileBytes;
  int4* sInfo = reinterpret_cast<int4*>(sV + kS * Tr::kTileBytes);  // kS tile infos
  // kRuns: the producer's key ranges by warpgroup, lo[3] | hi[3] (in shared memory: its 32
  // registers do not hold them with the rest of its walk).
  int* sRun = reinterpret_cast<int*>(sInfo + kII * kS);
  uint64_t* bars = reinterpret_cast<uint64_t*>(sInfo + kII * kS + (kRuns ? 2 : 0));
  uint64_t* bar_q = bars;            // Q of the current item landed (TMA)
  uint64_t* q_empty = bars + 1;      // consumers are done reading Q (8 warps)
  uint64_t* tile_full = bars + 2;    // [2] the producer published an item
  uint64_t* tile_empty = bars + 4;   // [2] the consumers read it (8 warps)
  uint64_t* full_k = bars + 6;
  uint64_t* full_v = full_k + kS;
  uint64_t* empty_k = full_v + kS;   // 8 warps each
  uint64_t* empty_v = empty_k + kS;
  int* tile_slot = reinterpret_cast<int*>(empty_v + kS);  // [2]

  const int n_items_total = sched.n_items;
  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    FWD_SPAN(0);
    mbar_init(bar_q, 1);
    mbar_init(q_empty, Tr::kConsumerWarps);
    for (int i = 0; i < 2; ++i) {
      mbar_init(&tile_full[i], 1);
      mbar_init(&tile_empty[i], Tr::kConsumerWarps);
    }
    for (int s = 0; s < kS; ++s) {
      mbar_init(&full_k[s], 1);
      mbar_init(&full_v[s], 1);
      mbar_init(&empty_k[s], Tr::kConsumerWarps);  // one arrival per consumer warp
      mbar_init(&empty_v[s], Tr::kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();
  pdl_wait();
  if (threadIdx.x == 0) FWD_SPAN(1);

  // Item -> (query tile, head, batch) and its mask row.
  struct Item {
    int q0, q_last, h, b, n_items, nsub;
    // By position: the keys walked (kRuns: the union of the warpgroups' runs, else all or the
    // piece's) and with kRuns the keys each warpgroup may see (its mask row's run, none past Nq).
    int k_lo, k_hi;
    int lo[kWG], hi[kWG];
    int64_t e0;
    int piece;  // >= 0: this item is piece `piece` of the split ones (its slot in split_o)
    int narrow;  // kNarrowable: keys of the walk's first tile, kNarrowKeys (0: a whole tile)
    int chunks;  // kGather: the row's 64-key chunks (nsub a block), before the end of the keys
  };
  // kNarrowKeys (64 or 128; the 192-key tiles over complete masks without causality, an
  // instantiation of its own, for calls of more than 192 keys, kNarrowKeys over a multiple of
  // 192, without tail split; with kRuns, for non-causal calls whose runs mostly leave
  // kNarrowKeys over a multiple of 192, fwd_runs_narrow): every item walks a first tile of
  // kNarrowKeys keys, then whole tiles, not whole tiles and a last one mostly past the keys
  // (the products, exponentials and mask of 192 - kNarrowKeys keys an item fewer). Every item
  // alike, with no branch on it: a branch taken per item made ptxas move the steady loop's stage
  // arithmetic off the uniform datapath (R2UR 16 -> 62, 4% more instructions a tile).
  constexpr bool kNarrowable = kNarrowKeys > 0;
  static_assert(!kNarrowable || ((kNarrowKeys == 64 || kNarrowKeys == 128) && D == 128 &&
                                 kBN == 192 && Tr::kByPosition && (!kRuns || kBM <= 128) &&
                                 !kShort),
                "narrow first tiles: 192-key tiles by position at head dim 128");
  auto decode = [&](int t) {
    Item w;
    w.piece = -1;
    w.narrow = 0;
    if (Tr::kByPosition && sched.split_pieces > 0 && t >= sched.split_first) {  // a piece
      w.piece = t - sched.split_first;
      t = sched.split_first + w.piece / sched.split_pieces;
    }
    const FwdItemPos pos = fwd_item_pos<kShort>(t, sched, a.H, a.B, kBM);
    w.q0 = pos.q0;
    w.h = pos.h;
    w.b = pos.b;
    w.q_last = min(w.q0 + pos.rows, a.Nq) - 1;
    w.k_lo = 0;
    w.k_hi = a.Nk;
    if constexpr (Tr::kByPosition) {  // key tiles in order over a key range
      w.e0 = 0;
      w.nsub = 1;
      if (w.piece >= 0) {  // the piece's key range (split items are non-causal, complete)
        w.k_lo = (w.piece % sched.split_pieces) * sched.split_keys;
        w.k_hi = min(a.Nk, w.k_lo + sched.split_keys);
      }
      if constexpr (kRuns) {  // (never split)
        // Each warpgroup's 64 rows lie in one mask row (64 divides block_q); 128-row tiles in
        // one for both, 192-row ones may span two. The tile walks the union of their runs.
        w.k_lo = a.Nk;
        w.k_hi = 0;
#pragma unroll
        for (int c = 0; c < kWG; ++c) {
          const int r0 = w.q0 + 64 * c;
          int lo = 0, hi = 0;
          if (c > 0 && kBM <= 128) {
            lo = w.lo[0];
            hi = w.hi[0];
          } else if (r0 < a.Nq) {
            const int mrow = r0 / a.mask.block_q;
            const int64_t b0 = a.mask.row_ptr[mrow], b1 = a.mask.row_ptr[mrow + 1];
            if (b1 > b0) {
              lo = a.mask.col_idx[b0] * a.mask.block_k;
              hi = min(a.Nk, (a.mask.col_idx[b1 - 1] + 1) * a.mask.block_k);
            }
          }
          if (hi <= lo) lo = hi = 0;
          w.lo[c] = lo;
          w.hi[c] = hi;
          if (hi > lo) {
            w.k_lo = min(w.k_lo, lo);
            w.k_hi = max(w.k_hi, hi);
          }
        }
        if (w.k_hi == 0) w.k_lo = 0;
      }
      w.n_items = w.k_hi > w.k_lo ? (w.k_hi - w.k_lo + kBN - 1) / kBN : 0;
      if constexpr (kNarrowable) {
        // The narrow tile, then tiles of kBN keys to the range's end (kRuns: the last one masked
        // where the run ends inside it; the launch's rule keeps every run longer than the
        // narrow tile, so each walk has two tiles or more).
        w.narrow = kNarrowKeys;
        if (w.k_hi > w.k_lo)
          w.n_items = 1 + max(0, (w.k_hi - w.k_lo - kNarrowKeys + kBN - 1) / kBN);
      }
    } else if constexpr (kGather) {
      // Every chunk of the row's listed blocks but those at or past Nk (a multiple of 64: only
      // the last key block may hold such chunks, and only if the row lists it).
      const int mrow = w.q0 / a.mask.block_q;
      w.e0 = a.mask.row_ptr[mrow];
      w.nsub = a.mask.block_k / Tr::kChunkKeys;
      const int nb = static_cast<int>(a.mask.row_ptr[mrow + 1] - w.e0);
      w.chunks = nb * w.nsub;
      if (nb > 0) {
        const int64_t end = (int64_t{a.mask.col_idx[w.e0 + nb - 1]} + 1) * a.mask.block_k;
        if (end > a.Nk) w.chunks -= static_cast<int>((end - a.Nk) / Tr::kChunkKeys);
      }
      w.n_items = (w.chunks + Tr::kChunksPerTile - 1) / Tr::kChunksPerTile;
    } else {
      const int mrow = w.q0 / a.mask.block_q;
      w.e0 = a.mask.row_ptr[mrow];
      w.nsub = a.mask.block_k / kBN;
      w.n_items = static_cast<int>((a.mask.row_ptr[mrow + 1] - w.e0) * w.nsub);
    }
    return w;
  };
  // Three warpgroups over a complete mask: the warpgroups with rows in the item (fewer on a
  // short item, or where the rows end at Nq). The others sit the item out: they take the path
  // of an item without tiles (Q waited for and released, nothing stored), the producer arrives
  // for their warps on each stage's release, and the turns go round the active ones.
  static_assert(!kShort || (kWG == 3 && !kRuns && !kGather), "short items: three warpgroups");
  constexpr bool kIdleWG = kShort;
  auto active_wgs = [&](const Item& w) {
    return kIdleWG ? min(kWG, (w.q_last - w.q0) / 64 + 1) : kWG;
  };
  // Key tiles the producer walks for an item by position (kIdleWG: all it has, to the causal
  // limit), which an idle warpgroup counts past in its ring position.
  auto walk_tiles = [&](const Item& w) {
    int n = w.n_items;
    if (a.causal) {
      const int64_t lim = static_cast<int64_t>(w.q_last) + a.diag - w.k_lo;
      n = lim < 0 ? 0 : static_cast<int>(min(static_cast<int64_t>(n), lim / kBN + 1));
    }
    return n;
  };
  // First listed key tile at or after `it` that some row of the item may see (first key in ks).
  auto next_visible = [&](const Item& w, int it, int& ks) {
    if constexpr (kGather) {  // (not causal: every tile; its columns are tile-relative)
      ks = 0;
    } else if constexpr (Tr::kByPosition) {  // tiles past the causal limit: all later ones are too
      ks = w.k_lo + it * kBN;
      if (kNarrowable && it > 0) ks -= kBN - kNarrowKeys;
      if (it < w.n_items && a.causal && static_cast<int64_t>(ks - w.q_last) > a.diag)
        it = w.n_items;
    } else {
      for (; it < w.n_items; ++it) {
        ks = a.mask.col_idx[w.e0 + it / w.nsub] * a.mask.block_k + (it % w.nsub) * kBN;
        if (ks < a.Nk && !(a.causal && static_cast<int64_t>(ks - w.q_last) > a.diag)) break;
      }
    }
    return it;
  };

  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<Tr::kProdRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&tq);
      tma_prefetch_map(&tk);
      tma_prefetch_map(&tv);
      int t = blockIdx.x;
      int kv = 0;  // K/V stage uses so far, over all items
      for (int n = 0;; ++n) {
        const int slot = n & 1;
        mbar_wait(&tile_empty[slot], ((n >> 1) & 1) ^ 1);
        tile_slot[slot] = t;
        mbar_arrive(&tile_full[slot]);
        FWD_TRACE(n, 0, 0);
        if (t >= n_items_total) break;
        const int t_next = atomicAdd(sched.counter, 1) + static_cast<int>(gridDim.x);
        if (t_next >= n_items_total) pdl_trigger();  // this item is the CTA's last
        const Item w = decode(t);
        if constexpr (kRuns) {
#pragma unroll
          for (int c = 0; c < kWG; ++c) {
            sRun[c] = w.lo[c];
            sRun[4 + c] = w.hi[c];
          }
        }
        mbar_wait(q_empty, (n & 1) ^ 1);
        FWD_TRACE(n, 0, 1);
        FWD_TRACE_VAL(n, 0, 7, w.n_items);
        int traced_k = 0;
        // (The idle warpgroups' warps: their stage releases come from here.)
        const uint32_t idle_warps = 4 * (kWG - active_wgs(w));
        mbar_arrive_expect_tx(bar_q, Tr::kQBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c)
          tma_load_4d(sQ + c * kBM * 128, &tq, bar_q, c * 64, w.q0, w.h, w.b);
        int ks = 0;
        for (int it = next_visible(w, 0, ks); it < w.n_items;) {
          const int s = kv % kS;
          const uint32_t ph = ((kv / kS) & 1) ^ 1;
          int ks_next = 0;
          const int it_next = next_visible(w, it + 1, ks_next);
          // The tile's info, published with the K tile (the arrive below releases it), so the
          // consumers read no mask entries and divide nothing.
          int mask_bits = 0;
          int see[kRuns && kBM > 128 ? kWG : 1] = {};
          int valid = 0;                                   // kGather: chunks in the tile
          int gkey[kGather ? Tr::kChunksPerTile : 1] = {};  // kGather: each chunk's first key
          if constexpr (kRuns) {
            // Per warpgroup the columns it may see and whether it masks (a column outside them
            // or the diagonal). Two warpgroups on 128-row tiles share one mask row, one range.
            constexpr int kRanges = kBM > 128 ? kWG : 1;
#pragma unroll
            for (int c = 0; c < kRanges; ++c) {
              const volatile int* run = sRun;
              const int lo = max(0, min(kBN, run[c] - ks));
              const int hi = max(0, min(kBN, run[4 + c] - ks));
              see[c] = lo | (hi << 16);
              if (lo > 0 || hi < kBN) mask_bits |= kRanges == 1 ? (1 << kWG) - 1 : 1 << c;
            }
          } else if constexpr (kGather) {
            // The tile's chunks: the last tile may hold fewer than three; its other rows repeat
            // its last chunk (keys of the row, masked out), so no stale rows enter P V.
            valid = min(Tr::kChunksPerTile, w.chunks - it * Tr::kChunksPerTile);
#pragma unroll
            for (int r = 0; r < Tr::kChunksPerTile; ++r) {
              const int c = it * Tr::kChunksPerTile + min(r, valid - 1);
              gkey[r] = a.mask.col_idx[w.e0 + c / w.nsub] * static_cast<int>(a.mask.block_k) +
                        (c % w.nsub) * Tr::kChunkKeys;
            }
            if (valid < Tr::kChunksPerTile) mask_bits = (1 << kWG) - 1;
          } else if ((!Tr::kByPosition && a.mask.partial[w.e0 + it / w.nsub] != 0) ||
                     ks + (kNarrowable && it == 0 ? kNarrowKeys : kBN) > w.k_hi) {
            mask_bits = (1 << kWG) - 1;
          }
          if constexpr (!kGather) {
#pragma unroll
            for (int cw = 0; cw < kWG; ++cw)
              if (a.causal && static_cast<int64_t>(ks + kBN - 1 - (w.q0 + cw * 64)) > a.diag)
                mask_bits |= 1 << cw;
          }
          // The last-tile flag (bit 0), and on 192-row tiles bit 1 + c on the last tile warpgroup c
          // sees: the next one, if any, is blank for it (fwd_blank).
          int last_bits = it_next >= w.n_items ? 1 : 0;
          if constexpr (kRuns && kBM > 128) {
#pragma unroll
            for (int c = 0; c < kWG; ++c)
              if (!fwd_blank<kBN>(sRun, c, ks) &&
                  (it_next >= w.n_items || fwd_blank<kBN>(sRun, c, ks_next)))
                last_bits |= 2 << c;
          }
          mbar_wait(&empty_k[s], ph);
          if (kIdleWG && idle_warps > 0) mbar_arrive_cnt(&empty_k[s], idle_warps);
          if (traced_k++ == 0) FWD_TRACE(n, 0, 2);
          // (kGather: columns relative to the tile, its keys end after its chunks.)
          sInfo[kII * s] = make_int4(ks, mask_bits, last_bits,
                                     kRuns     ? see[0]
                                     : kGather ? valid * Tr::kChunkKeys
                                               : w.k_hi);
          if constexpr (kRuns && kBM > 128)
            sInfo[2 * s + 1] = make_int4(see[1], see[kWG - 1], 0, 0);
          // K, then V: per 64-column chunk c of the head dim, the tile's rows (kGather: per
          // 64-key chunk r of the tile its rows 64 r.., 1024-byte aligned like the swizzle).
          auto load_tile = [&](unsigned char* dst, const CUtensorMap* map, uint64_t* bar) {
            mbar_arrive_expect_tx(bar, Tr::kTileBytes);
#pragma unroll
            for (int c = 0; c < Tr::kChunks; ++c) {
              if constexpr (kGather) {
#pragma unroll
                for (int r = 0; r < Tr::kChunksPerTile; ++r)
                  tma_load_4d(dst + s * Tr::kTileBytes + c * kBN * 128 + r * Tr::kChunkKeys * 128,
                              map, bar, c * 64, gkey[r], w.h, w.b);
              } else {
                tma_load_4d(dst + s * Tr::kTileBytes + c * kBN * 128, map, bar, c * 64, ks, w.h,
                            w.b);
              }
            }
          };
          load_tile(sK, &tk, &full_k[s]);
          mbar_wait(&empty_v[s], ph);
          if (kIdleWG && idle_warps > 0) mbar_arrive_cnt(&empty_v[s], idle_warps);
          load_tile(sV, &tv, &full_v[s]);
          ++kv;
          it = it_next;
          ks = ks_next;
        }
        t = t_next;
      }
      // The last CTA to leave resets the counter for the next launch that uses it.
      __threadfence();
      if (atomicAdd(sched.counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
        sched.counter[0] = 0;
        sched.counter[1] = 0;
        __threadfence();
      }
      FWD_SPAN(2);
    }
    return;
  }

  // ---------------- consumers ----------------
  regs_alloc<Tr::kConsRegs>();
  const int cw = wg - 1;  // 64 query rows each
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const float sl2 = a.scale_log2;
  const bool pingpong = (sched.flags & kFwdPingPong) != 0;
  constexpr int kNT = kBN / 8;  // 8-column groups of S
  constexpr int kDT = D / 8;    // 8-column groups of O
  // Head dim 64: the running maximum moves by more than kFwdMargin or not at all (online_softmax).
  // A/B run 269 (H200, against version 42): +0.3 to +2.6% on 13 of 14 d=64 forward rows; at head
  // dim 128 a runtime-switched build was 0 to -11% (run 268, causal 4K worst; its switch alone
  // cost 1-4%) and the compile-time form -1 to -2% (run 271): those keep the plain update.
  constexpr bool kMarginD = D == 64;
  const uint32_t q_base = saddr(sQ) + cw * 64 * 128;
  const uint32_t k_base = saddr(sK), v_base = saddr(sV);
  // At head dim 128 the operands' descriptors are made once and each wgmma's is one add to them
  // (desc_at); at 64 each is built where it is used. A/B runs 327-328, 333 (H200): d=128
  // random 10% +1.1%, the other d=128 rows within noise (4K +1.8% in run 327 only); d=64
  // causal 16K -2%.
  constexpr bool kDescOnce = D == 128;
  const uint64_t q_desc = smem_desc(q_base, 16, 1024);
  const uint64_t k_desc = smem_desc(k_base, 16, 1024);
  const uint64_t v_desc = smem_desc(v_base, kBN * 128, 1024);
  // Ping-pong: warpgroup cw issues its GEMMs after named barrier 1 + cw, then lets the next
  // one go (round robin), so one warpgroup's softmax runs under the others' tensor-core work.
  // The last warpgroup lets warpgroup 0 start.
  if (pingpong && cw == kWG - 1) named_barrier_arrive(1, 256);
  [[maybe_unused]] const int cw_bcast = kIdleWG ? __shfl_sync(0xffffffffu, cw, 0) : 0;
  // kIdleWG: the barrier of the next warpgroup in turn among the item's active ones.
  [[maybe_unused]] int turn_next = 1 + (cw + 1) % kWG;
  auto turn_begin = [&] {
    if (pingpong) named_barrier(1 + cw, 256);
  };
  auto turn_end = [&] {
    if (pingpong) named_barrier_arrive(kIdleWG ? turn_next : 1 + (cw + 1) % kWG, 256);
  };
  auto warp_arrive = [&](uint64_t* bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  // Shared slots the producer rewrites once a warp_arrive released them are read by lane 0 (the
  // thread that arrives) and broadcast, so every read is ordered before that arrive in one
  // thread's program order.
  auto lane_read = [&](const int& slot) {
    int v = 0;
    if (lane == 0) v = slot;
    return __shfl_sync(0xffffffffu, v, 0);
  };
  // The tile's first key, mask flags, last-tile flag and the end of its keys (Nk but for key
  // ranges walked by position); kRuns: this warpgroup's visible columns instead of that end.
  auto read_info = [&](int s) {
    const int4& in = sInfo[kII * s];
    if constexpr (kRuns && kBM > 128) {
      const int* see = reinterpret_cast<const int*>(&sInfo[2 * s + 1]);
      return make_int4(lane_read(in.x), lane_read(in.y), lane_read(in.z),
                       lane_read(cw > 0 ? see[cw - 1] : in.w));
    }
    return make_int4(lane_read(in.x), lane_read(in.y), lane_read(in.z),
                     Tr::kByPosition || kGather ? lane_read(in.w) : a.Nk);
  };
  // 192-row tiles over masks of runs: a warpgroup's run is one range of the keys the tile walks
  // (the union of two rows' runs), so the tiles it sees none of come first or last. It skips
  // those: no products, only its ring arrivals and a turn each (kSkip). The producer flags on
  // each tile whether it is the last one this warpgroup sees (bit 1 + cw of the tile's last-tile
  // word; bit 0: the walk's last), so the steady loop tests one bit, as it tested the last-tile
  // flag, and the tiles after it are walked without products.
  constexpr bool kSkip = kRuns && kBM > 128;
  auto blank = [&](const int4& info) {
    if constexpr (!kSkip) return false;
    return (info.w & 0xffff) >= (info.w >> 16);
  };
  // (Broadcast from lane 0: tested on cw directly, the consumer loop lost its uniform registers.)
  const int my_last_bit = kSkip ? __shfl_sync(0xffffffffu, 2 << cw, 0) : 1;
  auto mine_last = [&](const int4& info) {
    if constexpr (kSkip) return (info.z & my_last_bit) != 0;
    return info.z != 0;
  };
  // A tile this warpgroup skips, from its stage's K having landed: one turn, its ring arrivals.
  auto skip_tile = [&](int s, int kv_s) {
    turn_begin();
    turn_end();
    warp_arrive(&empty_k[s]);
    mbar_wait(&full_v[s], (kv_s / kS) & 1);
    warp_arrive(&empty_v[s]);
  };

  // At head dim 64 an item's o and lse stay in registers after its last P V (normalised there,
  // finish_rows): they are stored (flush) once the next item's first QK^T is issued, so the store
  // runs beside that product instead of leaving the tensor cores idle between items; o, m and l
  // then start over. At head dim 128, whose warpgroups ping-pong over longer products, the store
  // follows the last P V (A/B runs 206-208: deferred, +0.5-2% at head dim 64 and -1-2% at 128),
  // and each item has its own accumulators. The pending item: where o goes (pend_b: batch, or
  // -1 - piece of the split items; kNoItem: none), its head and this thread's first row. (An item
  // without tiles stores o zero and lse -inf: finish_rows of the initial state.)
  constexpr bool kDefer = D == 64;
  constexpr int kNoItem = -0x7fffffff;
  FwdAcc<D> carried;  // kDefer: the pending item's, across items
  int pend_b = kNoItem, pend_h = 0, pend_row = 0;
#if LONGATTN_SM90_FWD_TRACE
  int pend_n = 0;
#endif
  auto flush_acc = [&](const FwdAcc<D>& x) {
    if (pend_b != kNoItem) {
      if (pend_b < 0) {
        const int64_t piece = -1 - pend_b;
        store_piece<D, false>(sched.split_o + piece * kBM * D, sched.split_lse + piece * kBM,
                              x.o, x.m, x.l, cw * 64 + warp * 16 + g, t4);
      } else {
        store_o_lse<T, D, false>(a, x.o, x.m, x.l, pend_b, pend_h, pend_row, t4);
      }
      if (tid == 0) FWD_TRACE(pend_n, 1 + cw, 6);
    }
    pend_b = kNoItem;
  };

  int kv = 0;
  for (int n = 0;; ++n) {
    const int slot = n & 1;
    mbar_wait(&tile_full[slot], (n >> 1) & 1);
    const int t = lane_read(tile_slot[slot]);
    warp_arrive(&tile_empty[slot]);
    if (tid == 0) FWD_TRACE(n, 1 + cw, 0);
    if (t >= n_items_total) {
      if constexpr (kDefer) flush_acc(carried);  // (else the last item's o is stored)
      if (tid == 0) FWD_SPAN(3 + cw);
      break;
    }
    const Item w = decode(t);
    // Where o goes: batch w.b, or piece -1 - out_b of the split items (one value kept live
    // across the walk, not two).
    const int out_b = w.piece >= 0 ? -1 - w.piece : w.b;
    const int row0 = w.q0 + cw * 64;            // first row of this warpgroup
    const int my_row = row0 + warp * 16 + g;    // rows my_row and my_row + 8
    // kIdleWG: a warpgroup with no rows in the item takes the path of an item without tiles
    // below (it stores nothing) and counts past the item's tiles in its ring position; the turn
    // passes to the next active warpgroup. (idle on cw broadcast from lane 0, as my_last_bit.)
    bool idle = false;
    if constexpr (kIdleWG) {
      const int active = active_wgs(w);
      idle = cw_bcast >= active;
      turn_next = 1 + (cw + 1 < active ? cw + 1 : 0);
    }
    FwdAcc<D> fresh;  // !kDefer: this item's
    FwdAcc<D>& acc = kDefer ? carried : fresh;
    float(&o)[D / 2] = acc.o;
    float(&m)[2] = acc.m;
    float(&l)[2] = acc.l;
    auto reset_acc = [&] {
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
      m[0] = flash::kNegInf;
      m[1] = flash::kNegInf;
      l[0] = 0.f;
      l[1] = 0.f;
    };
    auto flush = [&] { flush_acc(acc); };
    // This item's o, m and l are the next to be stored (after flush() stored the last one's).
    auto adopt = [&] {
      finish_rows<D>(o, m, l);
      pend_b = out_b;
      pend_h = w.h;
      pend_row = my_row;
#if LONGATTN_SM90_FWD_TRACE
      pend_n = n;
#endif
    };
    if constexpr (!kDefer) reset_acc();

    float sc[kBN / 2];
    uint32_t pa[kBN / 16][4];

    uint32_t qa[Tr::kQRegs ? D / 16 : 1][4];  // Q fragments (k16 steps over d)
    auto issue_qk = [&](int s) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off = (kk % 4) * 32;  // 16 elements = 32 bytes into the 128-byte row
        const uint32_t kb = s * Tr::kTileBytes + (kk / 4) * kBN * 128 + off;
        const uint64_t db = kDescOnce ? desc_at(k_desc, kb) : smem_desc(k_base + kb, 16, 1024);
        if constexpr (Tr::kQRegs) {
          Mma<T>::qk(sc, qa[kk], db, kk > 0 ? 1 : 0);
        } else {
          const uint32_t qb = (kk / 4) * kBM * 128 + off;
          const uint64_t da = kDescOnce ? desc_at(q_desc, qb) : smem_desc(q_base + qb, 16, 1024);
          Mma<T>::qk(sc, da, db, kk > 0 ? 1 : 0);
        }
      }
      wgmma_commit();
    };
    auto issue_pv = [&](int s) {
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint32_t vb = s * Tr::kTileBytes + kk * 16 * 128;
        const uint64_t db =
            kDescOnce ? desc_at(v_desc, vb) : smem_desc(v_base + vb, kBN * 128, 1024);
        Mma<T>::pv(o, pa[kk], db);
      }
      wgmma_commit();
    };
    // Masks S where the tile needs it (the producer's info), then the online softmax.
    auto softmax = [&](const int4& info, float (&alpha)[2]) {
      if ((info.y >> cw) & 1) {
        if constexpr (kRuns)
          mask_scores<kNT, true>(sc, a, info.x, info.x + (info.w & 0xffff), info.x + (info.w >> 16),
                                 my_row, t4);
        else
          mask_scores<kNT, false>(sc, a, info.x, 0, info.w, my_row, t4);
      }
      online_softmax<kNT, kMarginD>(sc, m, l, alpha, sl2);
    };
    auto pack = [&] { pack_p<T, kNT>(pa, sc); };
    // kNarrowable: the first tile of R = w.narrow keys (64 or 128): its QK^T into an
    // accumulator of its own (sn; writing part of S's registers had ptxas serialise the
    // kernel's wgmma), its softmax and P from that, its P V over R keys. (Never masked: it lies
    // inside the range, every walk's range being longer; over complete masks the later tiles
    // end at the range's end, over runs the last one is masked where the run ends inside it.)
    auto issue_qk_narrow = [&](auto& sn, int s) {
      constexpr int R = 2 * static_cast<int>(sizeof(sn) / sizeof(float));
      static_assert(!Tr::kQRegs && (R == 64 || R == 128), "narrow tiles at head dim 128");
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off = (kk % 4) * 32;
        const uint32_t kb = s * Tr::kTileBytes + (kk / 4) * kBN * 128 + off;
        const uint32_t qb = (kk / 4) * kBM * 128 + off;
        const uint64_t db = kDescOnce ? desc_at(k_desc, kb) : smem_desc(k_base + kb, 16, 1024);
        const uint64_t da = kDescOnce ? desc_at(q_desc, qb) : smem_desc(q_base + qb, 16, 1024);
        if constexpr (R == 64)
          Mma<T>::ss64(sn, da, db, kk > 0 ? 1 : 0);
        else
          Mma<T>::qk(sn, da, db, kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    auto issue_pv_narrow = [&](auto rc, int s) {
      constexpr int R = decltype(rc)::value;
#pragma unroll
      for (int kk = 0; kk < R / 16; ++kk) {
        const uint32_t vb = s * Tr::kTileBytes + kk * 16 * 128;
        const uint64_t db =
            kDescOnce ? desc_at(v_desc, vb) : smem_desc(v_base + vb, kBN * 128, 1024);
        Mma<T>::pv(o, pa[kk], db);
      }
      wgmma_commit();
    };
    auto softmax_pack_narrow = [&](auto& sn, float (&alpha)[2]) {
      constexpr int kNTn = static_cast<int>(sizeof(sn) / sizeof(float)) / 4;
      online_softmax<kNTn, kMarginD>(sn, m, l, alpha, sl2);
#pragma unroll
      for (int kk = 0; kk < kNTn / 2; ++kk)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          pa[kk][e] = flash::Elem<T>::pack(sn[8 * kk + 2 * e], sn[8 * kk + 2 * e + 1]);
    };
    using NarrowR = std::integral_constant<int, kNarrowable ? kNarrowKeys : 64>;

    mbar_wait(bar_q, n & 1);
    if (tid == 0) FWD_TRACE(n, 1 + cw, 1);
    if constexpr (Tr::kQRegs) {
      // ldmatrix.x4 per k16 step: lane L addresses row (L % 8) + 8 (L / 8 % 2) of the warp's 16
      // and the 16-byte chunk (L / 16) of the step, in TMA's 128-byte swizzle.
      const int rr = cw * 64 + warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int chunk = (kk % 4) * 2 + (lane >> 4);
        const uint32_t addr =
            saddr(sQ) + (kk / 4) * kBM * 128 + rr * 128 + ((chunk ^ (rr & 7)) << 4);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(qa[kk][0]), "=r"(qa[kk][1]), "=r"(qa[kk][2]), "=r"(qa[kk][3])
                     : "r"(addr)
                     : "memory");
      }
      warp_arrive(q_empty);
    }
    int ks = 0;
    if (idle || next_visible(w, 0, ks) >= w.n_items) {  // later tiles: the producer's info
      if constexpr (!Tr::kQRegs) warp_arrive(q_empty);
      // o zero, lse -inf (idle: none stored, its rows are another item's or past Nq).
      if constexpr (kDefer) {
        flush();
        reset_acc();
      }
      if constexpr (kDefer) adopt();
      if constexpr (kIdleWG) {
        if constexpr (kDefer) pend_b = idle ? kNoItem : pend_b;
        kv += walk_tiles(w);  // (0 for an item without tiles)
      }
    } else {
      // First tile: S_0, its softmax, P_0.
      int s = kv % kS;
      mbar_wait(&full_k[s], (kv / kS) & 1);
      if (tid == 0) FWD_TRACE(n, 1 + cw, 2);
      int4 info = read_info(s);
      bool none = false;  // kSkip: every tile of the walk blank for this warpgroup
      if constexpr (kSkip) {
        while (blank(info)) {
          if ((info.z & 1) != 0) {
            none = true;
            break;
          }
          skip_tile(s, kv);
          ++kv;
          s = kv % kS;
          mbar_wait(&full_k[s], (kv / kS) & 1);
          info = read_info(s);
        }
      }
      if (kSkip && none) {
        // Nothing to compute: the last tile, and the turn of the last P V; o stays zero and
        // the rows' lse -inf.
        skip_tile(s, kv);
        ++kv;
        warp_arrive(q_empty);
        turn_begin();
        turn_end();
        if constexpr (kDefer) {
          flush();
          reset_acc();
        }
        if constexpr (kDefer) adopt();
      } else {
        float alpha[2];
        // The first tile (R keys; R = kBN: a whole one, into S).
        auto first_tile = [&](auto rc) {
          constexpr int R = decltype(rc)::value;
          float sn[R == kBN ? 1 : R / 2];
          turn_begin();
          if (tid == 0) FWD_TRACE(n, 1 + cw, 3);
          wgmma_fence();
          if constexpr (R == kBN)
            issue_qk(s);
          else
            issue_qk_narrow(sn, s);
          turn_end();
          // The last item's store while S_0 is computed (o, m, l then start over).
          if constexpr (kDefer) {
            flush();
            reset_acc();
          }
          wgmma_wait<0>();
          if (tid == 0) FWD_TRACE(n, 1 + cw, 4);
          if constexpr (R == kBN)
            fence_regs(sc);
          else
            fence_regs(sn);
          fence_regs(qa);
          warp_arrive(&empty_k[s]);
          if (!Tr::kQRegs && mine_last(info)) warp_arrive(q_empty);
          if constexpr (R == kBN) {
            softmax(info, alpha);
            pack();
          } else {
            softmax_pack_narrow(sn, alpha);
          }
        };
        if constexpr (kNarrowable) {
          first_tile(NarrowR{});
        } else {
          first_tile(std::integral_constant<int, kBN>{});
        }
        int s_prev = s, kv_prev = kv;
        ++kv;
        // kNarrowable: the first tile's P V over its keys, beside the next tile's QK^T (the
        // steady state's first step, peeled; a narrow walk has whole tiles after its first).
        auto peeled = [&](auto rc) {
          s = kv % kS;
          mbar_wait(&full_k[s], (kv / kS) & 1);
          info = read_info(s);
          mbar_wait(&full_v[s_prev], (kv_prev / kS) & 1);
          turn_begin();
          fence_regs(o);
          wgmma_fence();
          issue_qk(s);
          issue_pv_narrow(rc, s_prev);
          turn_end();
          wgmma_wait<1>();
          fence_regs(sc);
          fence_regs(qa);
          warp_arrive(&empty_k[s]);
          if (!Tr::kQRegs && mine_last(info)) warp_arrive(q_empty);
          softmax(info, alpha);
          wgmma_wait<0>();
          fence_regs(o);
          fence_regs(pa);
          warp_arrive(&empty_v[s_prev]);
#pragma unroll
          for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[dt * 4 + e] *= alpha[e >> 1];
          pack();
          s_prev = s;
          kv_prev = kv;
          ++kv;
        };
        if constexpr (kNarrowable) {
          peeled(NarrowR{});
        }
        // Steady state: S_j = Q K_j^T and O += P_{j-1} V_{j-1} in flight together; the softmax
        // of S_j runs while the P V product finishes.
        while (!mine_last(info)) {
          s = kv % kS;
          mbar_wait(&full_k[s], (kv / kS) & 1);
          info = read_info(s);
          mbar_wait(&full_v[s_prev], (kv_prev / kS) & 1);
          turn_begin();
          fence_regs(o);
          wgmma_fence();
          issue_qk(s);
          issue_pv(s_prev);
          turn_end();
          wgmma_wait<1>();
          fence_regs(sc);
          fence_regs(qa);
          warp_arrive(&empty_k[s]);
          if (!Tr::kQRegs && mine_last(info)) warp_arrive(q_empty);
          softmax(info, alpha);
          wgmma_wait<0>();
          fence_regs(o);
          fence_regs(pa);
          warp_arrive(&empty_v[s_prev]);
          // (kMarginD: o rescaled only where a row of the warp moved its maximum.)
          if (!kMarginD || __any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
            for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
              for (int e = 0; e < 4; ++e) o[dt * 4 + e] *= alpha[e >> 1];
          }
          pack();
          s_prev = s;
          kv_prev = kv;
          ++kv;
        }
        // Last P V.
        mbar_wait(&full_v[s_prev], (kv_prev / kS) & 1);
        turn_begin();
        fence_regs(o);
        wgmma_fence();
        issue_pv(s_prev);
        turn_end();
        wgmma_wait<0>();
        fence_regs(o);
        fence_regs(pa);
        warp_arrive(&empty_v[s_prev]);
        if constexpr (kSkip) {
          // The tiles after the last one this warpgroup sees (its Q reads are done).
          while ((info.z & 1) == 0) {
            s = kv % kS;
            mbar_wait(&full_k[s], (kv / kS) & 1);
            info = read_info(s);
            skip_tile(s, kv);
            ++kv;
          }
        }
        if constexpr (kDefer) adopt();
      }
      if (tid == 0) FWD_TRACE(n, 1 + cw, 5);
    }
    if constexpr (!kDefer) {  // this item's o, now
      if (out_b < 0) {
        const int64_t piece = -1 - out_b;
        store_piece<D>(sched.split_o + piece * kBM * D, sched.split_lse + piece * kBM, o, m, l,
                       cw * 64 + warp * 16 + g, t4);
      } else {
        store_o_lse<T, D>(a, o, m, l, out_b, w.h, my_row, t4);
      }
      if (tid == 0) FWD_TRACE(n, 1 + cw, 6);
    }
  }
}

// Tensor maps of q, k, v (kernels/cuda/sm90/flash_sm90.cu).
struct FwdMaps {
  CUtensorMap q, k, v;
};
FwdMaps make_fwd_maps(const FwdArgs& a, int D, bool bf16, int box_q, int box_kv);
// Per-launch scheduler state: a zeroed counter pair from a per-device pool, the grid size (one
// CTA per SM, at most one per item), the flags (LONGATTN_SM90_PINGPONG=0 turns ping-pong off).
// Causal calls take groups of heads that divide the pairs, the others one head at a time
// (forward_head_group).
FwdSchedule make_fwd_schedule(int n_qtiles, int n_pairs, int64_t kv_bytes_per_pair, bool causal,
                              int& grid);
// Tail splitting (kernels/contract.hpp forward_tail_split) for a persistent launch of s.n_items
// equal items of key_tiles key tiles each: sets the split fields of s, its item count and the
// grid, and returns the number of pieces (0: none). LONGATTN_SM90_FWD_TAIL=0 turns it off.
int64_t plan_fwd_tail_split(FwdSchedule& s, int& grid, int key_tiles, int key_tile);
// Short items (kernels/contract.hpp forward_short_items) for a launch of the three-warpgroup
// kernel over equal items (s.n_qtiles tiles of 192 rows per pair, nq rows): sets s.n_qtiles,
// s.n_short, the item count and the grid when they beat the one-height cut (with its tail split,
// if that would be taken), and returns whether they were taken. LONGATTN_SM90_FWD_SHORT=0 turns
// them off; LONGATTN_SM90_FWD_SHORT_TALL=n (measurements, tests) takes n tall items a pair.
bool plan_fwd_short_items(FwdSchedule& s, int& grid, int nq, int n_pairs, int key_tiles,
                          int key_tile);

// kRuns: the instantiation for calls over masks of runs (a.runs), which the others ignore;
// kGather: for the calls forward_gathered_tiles takes (non-causal, Nk a multiple of 64);
// kShort: for the calls fwd_short_items_wanted takes (three warpgroups, complete mask, not
// causal), which plans the short items. kNarrowKeys: for the calls fwd_narrow_keys takes (head
// dim 128, complete mask, not causal, Nk that many keys over a multiple of 192).
template <typename T, int D, int kWG = 2, int kBNt = 128, bool kRuns = false,
          bool kGather = false, bool kShort = false, int kNarrowKeys = 0>
void launch_fwd_sm90_impl(const FwdArgs& a, cudaStream_t stream, cudaMemPool_t pool) {
  using Tr = FwdSm90Traits<D, kWG, kBNt, kRuns, kGather>;
  static_assert(Tr::kSmemBytes <= 227 * 1024, "shared memory of one CTA");
  if constexpr (kGather) {
    LONGATTN_CHECK_ARG(a.causal == 0 && a.Nk % Tr::kChunkKeys == 0, "k",
                       std::to_string(a.Nk) + " keys" + (a.causal ? ", causal" : ""),
                       "gathered key tiles need a non-causal call over a multiple of 64 keys");
  }
  if constexpr (kShort) {
    LONGATTN_CHECK_ARG(a.complete != 0 && a.causal == 0, "mask",
                       std::string(a.causal ? "causal" : "not complete"),
                       "short items need a non-causal call over a complete mask");
  }
  auto kernel = flash_fwd_sm90_kernel<T, D, kWG, kBNt, kRuns, kGather, kShort, kNarrowKeys>;
  // Per launch (cheap), so a process driving several devices gets it on each.
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kSmemBytes));
  const int n_qtiles = (a.Nq + Tr::kBM - 1) / Tr::kBM;
  if (n_qtiles == 0 || a.H == 0 || a.B == 0) return;
  const FwdMaps maps = make_fwd_maps(a, D, std::is_same_v<T, __nv_bfloat16>, Tr::kBM,
                                     kGather ? Tr::kChunkKeys : Tr::kBN);
  int grid = 0;
  FwdSchedule sched =
      make_fwd_schedule(n_qtiles, a.H * a.B, int64_t{4} * a.Nk * D, a.causal != 0, grid);
  // Two consumer warpgroups at head dim 64 issue their products without ping-pong (A/B runs
  // 71-72: random masks +0.5-1.9%, dense causal 16K +3-4% on these tiles).
  if constexpr (D == 64 && kWG == 2) sched.flags &= ~kFwdPingPong;
  if constexpr (kNarrowKeys > 0 && kRuns) {
    LONGATTN_CHECK_ARG(a.runs != 0 && a.causal == 0 && a.runs_narrow == kNarrowKeys, "mask",
                       std::string(a.causal ? "causal" : "not causal") + ", runs_narrow " +
                           std::to_string(a.runs_narrow),
                       "narrow first tiles over runs need a non-causal call whose runs are all "
                       "longer than " + std::to_string(kNarrowKeys) +
                           " keys (fwd_runs_narrow)");
    note_fwd_narrow_keys(kNarrowKeys);
  } else if constexpr (kNarrowKeys > 0) {
    LONGATTN_CHECK_ARG(a.complete != 0 && a.causal == 0 && a.runs == 0 && a.Nk > kBNt &&
                           a.Nk % kBNt == kNarrowKeys,
                       "k", std::to_string(a.Nk) + " keys" + (a.causal ? ", causal" : ""),
                       "narrow first tiles need a non-causal call over a complete mask of more "
                       "than 192 keys, " + std::to_string(kNarrowKeys) +
                           " over a multiple of 192");
    note_fwd_narrow_keys(kNarrowKeys);
  }
  // Non-causal calls over complete masks have equal items: their last, partial wave is cut
  // along the keys, its pieces merged after the kernel.
  float* split = nullptr;
  int64_t pieces = 0;
  // kShort: some of those items are short ones instead, which fill the last round.
  bool shorts = false;
  if constexpr (kShort)
    shorts = plan_fwd_short_items(sched, grid, a.Nq, a.H * a.B, (a.Nk + Tr::kBN - 1) / Tr::kBN,
                                  Tr::kBN);
  if (!shorts && kNarrowKeys == 0 && Tr::kByPosition && a.complete != 0 && a.runs == 0 &&
      a.causal == 0) {
    pieces = plan_fwd_tail_split(sched, grid, (a.Nk + Tr::kBN - 1) / Tr::kBN, Tr::kBN);
    if (pieces > 0) {
      split = scratch_async<float>(sizeof(float) * pieces * Tr::kBM * (D + 1), pool, stream);
      sched.split_o = split;
      sched.split_lse = split + pieces * Tr::kBM * D;
    }
  }
#if LONGATTN_SM90_FWD_TRACE
  void* trace = nullptr;
  CUDA_CHECK(cudaGetSymbolAddress(&trace, g_fwd_trace));
  CUDA_CHECK(cudaMemsetAsync(trace, 0, sizeof(g_fwd_trace), stream));
  CUDA_CHECK(cudaGetSymbolAddress(&trace, g_fwd_span));
  CUDA_CHECK(cudaMemsetAsync(trace, 0, sizeof(g_fwd_span), stream));
#endif
  try {
    CUDA_CHECK(launch_sm90(kernel, grid, Tr::kThreads, Tr::kSmemBytes, stream, pdl_enabled(),
                           maps.q, maps.k, maps.v, a, sched));
    CUDA_CHECK_LAUNCH("flash_fwd_sm90_kernel");
    if (pieces > 0) {
      fwd_split_merge_kernel<T, D, Tr::kBM>
          <<<(sched.split_items * Tr::kBM + kMergeRows - 1) / kMergeRows, 32 * kMergeRows, 0,
             stream>>>(a, sched);
      CUDA_CHECK_LAUNCH("fwd_split_merge_kernel");
    }
  } catch (...) {
    if (split) cudaFreeAsync(split, stream);  // (the launch failed: nothing reads the pieces)
    throw;
  }
  if (split) CUDA_CHECK(cudaFreeAsync(split, stream));
#if LONGATTN_SM90_FWD_TRACE
  if (const char* path = std::getenv("LONGATTN_SM90_FWD_TRACE_OUT")) {
    static long long host[64][4][8];
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaMemcpyFromSymbol(host, g_fwd_trace, sizeof(host)));
    char name[512];
    std::snprintf(name, sizeof(name), "%s_d%d_bn%d_n%d_c%d_r%d.txt", path, D, kBNt, a.Nq, a.causal,
                  a.runs);
    char header[256];
    std::snprintf(header, sizeof(header), "# D=%d kWG=%d kBN=%d Nq=%d Nk=%d grid=%d", D, kWG, kBNt,
                  a.Nq, a.Nk, grid);
    write_trace(name, header, &host[0][0][0], 64, 4, 8);
    static long long span[kFwdSpanCtas][6];
    CUDA_CHECK(cudaMemcpyFromSymbol(span, g_fwd_span, sizeof(span)));
    std::snprintf(name, sizeof(name), "%s_d%d_bn%d_n%d_c%d_r%d_span.txt", path, D, kBNt, a.Nq,
                  a.causal, a.runs);
    write_trace(name, header, &span[0][0], grid < kFwdSpanCtas ? grid : kFwdSpanCtas, 1, 6);
  }
#endif
}

}  // namespace longattn::cuda::sm90
