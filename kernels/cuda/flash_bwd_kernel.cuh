// Backward flash attention on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate),
// FlashAttention-2 style: a key-stationary pass over the transposed mask for dK/dV (and dQ by
// fp32 atomics), and a query-stationary pass for a deterministic dQ. P is recomputed from the
// global LSE. Instantiated by kernels/cuda/flash_bwd_<dtype>_d<D>.cu.
#pragma once
#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_common.cuh"

namespace longattn::cuda::flash {

template <typename T, int D, int NW = 4>
struct BwdTraits {
  static constexpr int kWarps = NW;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockN = 16 * kWarps;  // keys per CTA (16 per warp) in the dK/dV pass
  static constexpr int kBlockM = 64;           // queries per step (and per CTA in the dQ pass)
  static constexpr int kStride = D + 8;
  static constexpr int kDSStride = kBlockM + 8;
  static constexpr int kTile = kBlockM * kStride;   // elements of one 64-row tile
  static constexpr int kKTile = kBlockN * kStride;  // elements of the K (or V) tile
  // dQ of the dK/dV pass: kWarps / 4 warps share each 16-query group, splitting D.
  static constexpr int kDQSplit = kWarps / 4;
  static constexpr int kDQCols = D / kDQSplit;
  static constexpr int kDQChunk = kDQCols < 64 ? kDQCols : 64;  // columns per accumulation round
  // dK/dV pass: K, V, two buffers of Q and dO, dS^T; then fp32 lse and delta x 2.
  static constexpr int kDkdvSmem =
      (2 * kKTile + 4 * kTile + kBlockN * kDSStride) * static_cast<int>(sizeof(T)) +
      4 * kBlockM * 4;
  // dQ pass: Q, dO, two buffers of K and V.
  static constexpr int kDqSmem = 6 * kTile * static_cast<int>(sizeof(T));
};

// Starts the copy of the per-query values of a 64-row tile into smem: raw lse (converted by
// lse2_of at use) and delta; rows past Nq get lse = +inf (so p = 0 there) and delta = 0.
__device__ __forceinline__ void load_row_stats(const BwdArgs& a, int b, int h, int q0, float* s_l,
                                               float* s_d, int tid) {
  if (tid < 64) {
    const int i = q0 + tid;
    if (i < a.Nq) {
      cp_async4(s_l + tid, static_cast<const float*>(a.lse.data) + b * a.lse.sb +
                               static_cast<int64_t>(i) * a.lse.sn + h * a.lse.sh);
      cp_async4(s_d + tid, static_cast<const float*>(a.delta.data) + b * a.delta.sb +
                               static_cast<int64_t>(i) * a.delta.sn + h * a.delta.sh);
    } else {
      s_l[tid] = kPosInf;
      s_d[tid] = 0.f;
    }
  }
}

// lse in the exp2 domain; a row that saw nothing (lse = -inf) gets +inf so that
// p = 2^(s - lse2) = 0 instead of inf.
__device__ __forceinline__ float lse2_of(float lse) {
  return lse == kNegInf ? kPosInf : lse * kLog2e;
}

// Key-stationary pass. Warp w owns keys k0 + 16w .. +15 and, per listed query tile, computes
//   S^T = K Q^T,  P^T = 2^(scale log2(e) S^T - lse2),  dP^T = V dO^T,  dS^T = P^T o (dP^T - delta)
//   dV += P^T dO,  dK += scale dS^T Q,  and (kDQAtomic) dQ += scale dS K via fp32 atomicAdd.
// acc (16 rows x D, mma accumulator layout) += X B: X 16 rows x kK fp32 values in the same
// layout, packed to the A operand per k16 step; B a [kK][D] tile in shared memory (row stride kS)
// read transposed by ldmatrix (bt_row, bt_col: the lane's row and column of the 16x16 step).
template <typename T, int D, int kK, int kS>
__device__ __forceinline__ void mma_add_xb(float (&acc)[D / 8][4], const float (&x)[kK / 8][4],
                                           const T* b_s, int bt_row, int bt_col) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t fa[4];
    fa[0] = Elem<T>::pack(x[2 * kk][0], x[2 * kk][1]);
    fa[1] = Elem<T>::pack(x[2 * kk][2], x[2 * kk][3]);
    fa[2] = Elem<T>::pack(x[2 * kk + 1][0], x[2 * kk + 1][1]);
    fa[3] = Elem<T>::pack(x[2 * kk + 1][2], x[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t fb[4];
      ldmatrix_x4_trans(fb, b_s + (kk * 16 + bt_row) * kS + dp * 16 + bt_col);
      Elem<T>::mma(acc[2 * dp], fa, fb[0], fb[1]);
      Elem<T>::mma(acc[2 * dp + 1], fa, fb[2], fb[3]);
    }
  }
}

// kDV / kDK select the accumulators (head dim 256 runs a dV pass and a dK pass).
template <typename T, int D, int NW, bool kDV, bool kDK, bool kDQAtomic>
__global__ void __launch_bounds__(32 * NW) flash_bwd_dkdv_kernel(const BwdArgs a) {
  using Tr = BwdTraits<T, D, NW>;
  constexpr int kS = Tr::kStride, kM = Tr::kBlockM, kNT = kM / 8, kDT = D / 8, kKS = D / 16;
  constexpr int kDSS = Tr::kDSStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Tr::kKTile;
  T* sQ = sV + Tr::kKTile;      // two buffers
  T* sdO = sQ + 2 * Tr::kTile;  // two buffers
  T* sdS = sdO + 2 * Tr::kTile;
  float* sL = reinterpret_cast<float*>(sdS + Tr::kBlockN * kDSS);  // two buffers of 64
  float* sDl = sL + 2 * kM;                                        // two buffers of 64

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  const int k0 = blockIdx.x * Tr::kBlockN;
  const int mrow = k0 / a.mask_t.block_q;
  const int64_t e0 = a.mask_t.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask_t.row_ptr[mrow + 1] - e0) * (a.mask_t.block_k / kM));
  const float sl2 = a.scale_log2;

  const T* qg = static_cast<const T*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const T* dog = static_cast<const T*>(a.d_o.data) + b * a.d_o.sb + h * a.d_o.sh;

  auto next_visible = [&](int it) {
    for (; it < n_items; ++it) {
      const int qs = tile_start<kM>(a.mask_t, e0, it);
      if (qs >= a.Nq) continue;
      const int q_hi = min(qs + kM, a.Nq) - 1;
      if (!(a.causal && static_cast<int64_t>(k0 - q_hi) > a.diag)) break;
    }
    return it;
  };
  auto load_q = [&](int it, int buf) {
    const int qs = tile_start<kM>(a.mask_t, e0, it);
    load_tile<kM, D, kS, Tr::kThreads>(sQ + buf * Tr::kTile, qg + qs * a.q.sn, a.q.sn,
                                        a.Nq - qs, a.vec, tid);
    load_tile<kM, D, kS, Tr::kThreads>(sdO + buf * Tr::kTile, dog + qs * a.d_o.sn, a.d_o.sn,
                                        a.Nq - qs, a.vec, tid);
    load_row_stats(a, b, h, qs, sL + buf * kM, sDl + buf * kM, tid);
  };

  {
    const T* kg = static_cast<const T*>(a.k.data) + b * a.k.sb + h * a.k.sh + k0 * a.k.sn;
    const T* vg = static_cast<const T*>(a.v.data) + b * a.v.sb + h * a.v.sh + k0 * a.v.sn;
    load_tile<Tr::kBlockN, D, kS, Tr::kThreads>(sK, kg, a.k.sn, a.Nk - k0, a.vec, tid);
    load_tile<Tr::kBlockN, D, kS, Tr::kThreads>(sV, vg, a.v.sn, a.Nk - k0, a.vec, tid);
  }
  int it = next_visible(0);
  if (it < n_items) load_q(it, 0);
  cp_async_commit();

  float dk[kDK ? kDT : 1][4], dv[kDV ? kDT : 1][4];
#pragma unroll
  for (int dt = 0; dt < (kDK ? kDT : 1); ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = 0.f;
#pragma unroll
  for (int dt = 0; dt < (kDV ? kDT : 1); ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dv[dt][e] = 0.f;

  const int kw = warp * 16;
  const int a_row = lane & 15, a_col = (lane >> 4) << 3;
  const int bn_row = (lane & 7) + ((lane >> 4) << 3), bn_col = ((lane >> 3) & 1) << 3;
  const int bt_row = (lane & 7) + (((lane >> 3) & 1) << 3), bt_col = (lane >> 4) << 3;
  // A operand read transposed from a [k][m] tile (dS^T stored by key): rows k, columns m.
  const int at_row = (lane & 7) + ((lane >> 4) << 3), at_col = ((lane >> 3) & 1) << 3;

  // acc = A B^T over the head dim: A this warp's 16 rows of a [key][d] tile (K or V), B the
  // 64 rows of a [query][d] tile (Q or dO); 16 keys x 64 queries per warp.
  auto keys_by_queries = [&](float (&acc)[kNT][4], const T* a_s, const T* b_s) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
      uint32_t fa[4];
      ldmatrix_x4(fa, a_s + (kw + a_row) * kS + kk * 16 + a_col);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t fb[4];
        ldmatrix_x4(fb, b_s + (np * 16 + bn_row) * kS + kk * 16 + bn_col);
        Elem<T>::mma(acc[2 * np], fa, fb[0], fb[1]);
        Elem<T>::mma(acc[2 * np + 1], fa, fb[2], fb[3]);
      }
    }
  };
  // acc += X B over the queries: X 16 keys x 64 queries, B a [query][d] tile read transposed
  // (dO for dV, Q for dK).
  auto add_keys_by_d = [&](float (&acc)[kDT][4], const float (&x)[kNT][4], const T* b_s) {
    mma_add_xb<T, D, kM, kS>(acc, x, b_s, bt_row, bt_col);
  };

  int buf = 0;
  while (it < n_items) {
    const int qs = tile_start<kM>(a.mask_t, e0, it);
    const bool need_mask = tile_partial<kM>(a.mask_t, e0, it) || k0 + Tr::kBlockN > a.Nk ||
                           (a.causal && static_cast<int64_t>(k0 + Tr::kBlockN - 1 - qs) > a.diag);
    const int nxt = next_visible(it + 1);
    if (nxt < n_items) load_q(nxt, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* q_s = sQ + buf * Tr::kTile;
    const T* do_s = sdO + buf * Tr::kTile;
    const float* l_s = sL + buf * kM;
    const float* d_s = sDl + buf * kM;

    // S^T = K Q^T: 16 keys x 64 queries per warp.
    float st[kNT][4];
    keys_by_queries(st, sK, q_s);
    // P^T = 2^(scale log2(e) s - lse2), zero where masked.
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t4 + (e & 1);
        float sv = st[nt][e];
        if (need_mask) {
          const int j = k0 + kw + g + ((e >> 1) << 3);
          const int i = qs + c;
          if (j >= a.Nk || (a.causal && static_cast<int64_t>(j - i) > a.diag)) sv = kNegInf;
        }
        st[nt][e] = fast_exp2(fmaf(sv, sl2, -lse2_of(l_s[c])));
      }

    float dpt[kDK ? kNT : 1][4];
    if constexpr (kDK) {
      // dP^T = V dO^T, then dS^T = P^T o (dP^T - delta) in place.
      keys_by_queries(dpt, sV, do_s);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          dpt[nt][e] = st[nt][e] * (dpt[nt][e] - d_s[nt * 8 + 2 * t4 + (e & 1)]);
    }

    if constexpr (kDV) add_keys_by_d(dv, st, do_s);   // dV += P^T dO
    if constexpr (kDK) add_keys_by_d(dk, dpt, q_s);   // dK += dS^T Q (scaled at the end)

    if constexpr (kDQAtomic) {
      // dS^T to smem (by key), then dQ = scale dS K with warps over queries, added atomically.
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
          *reinterpret_cast<uint32_t*>(sdS + (kw + g + hh * 8) * kDSS + nt * 8 + 2 * t4) =
              Elem<T>::pack(dpt[nt][2 * hh], dpt[nt][2 * hh + 1]);
      __syncthreads();
      const int qw = (warp & 3) * 16;
      const int dq_col0 = (warp >> 2) * Tr::kDQCols;
      float* dqg = static_cast<float*>(a.dq.data) + b * a.dq.sb + h * a.dq.sh + dq_col0;
      constexpr int kC = Tr::kDQChunk;
#pragma unroll
      for (int dc = 0; dc < Tr::kDQCols / kC; ++dc) {
        float acc[kC / 8][4];
#pragma unroll
        for (int dt = 0; dt < kC / 8; ++dt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < Tr::kBlockN / 16; ++kk) {
          uint32_t da[4];
          ldmatrix_x4_trans(da, sdS + (kk * 16 + at_row) * kDSS + qw + at_col);
#pragma unroll
          for (int dp = 0; dp < kC / 16; ++dp) {
            uint32_t kb[4];
            ldmatrix_x4_trans(kb, sK + (kk * 16 + bt_row) * kS + dq_col0 + dc * kC + dp * 16 +
                                      bt_col);
            Elem<T>::mma(acc[2 * dp], da, kb[0], kb[1]);
            Elem<T>::mma(acc[2 * dp + 1], da, kb[2], kb[3]);
          }
        }
#pragma unroll
        for (int dt = 0; dt < kC / 8; ++dt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int i = qs + qw + g + hh * 8;
            if (i >= a.Nq) continue;
            float* p = dqg + static_cast<int64_t>(i) * a.dq.sn + dc * kC + dt * 8 + 2 * t4;
            const float x0 = a.scale * acc[dt][2 * hh], x1 = a.scale * acc[dt][2 * hh + 1];
            if (a.dq_pair) {  // one 8-byte reduction instead of two 4-byte ones (sm_90)
              atomicAdd(reinterpret_cast<float2*>(p), make_float2(x0, x1));
            } else {
              atomicAdd(p, x0);
              atomicAdd(p + 1, x1);
            }
          }
      }
    }
    __syncthreads();
    it = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();

  // dk += scale dK, dv += dV for keys j (+8) < Nk, old values loaded before the sums are stored.
  auto add_out = [&](const DevView& out, int type, const float (&acc)[kDT][4], float mul) {
    int64_t off[2];
    bool ok[2];
    fragment_rows(out, b, h, k0 + kw + g, a.Nk, t4, off, ok);
    add_rows_out<T, kDT>(out.data, type, a.dkv_pair != 0, off, ok, mul,
                         [&](int hh, int dt, int e) { return acc[dt][2 * hh + e]; });
  };
  if constexpr (kDK) add_out(a.dk, a.dk_type, dk, a.scale);
  if constexpr (kDV) add_out(a.dv, a.dv_type, dv, 1.f);
}

// Query-stationary dQ pass (no atomics, bitwise reproducible). Warp w owns queries q0 + 16w..,
// per listed key tile: S = Q K^T, P = 2^(scale log2(e) S - lse2), dP = dO V^T,
// dS = P o (dP - delta), dQ += scale dS K; dq += the sum at the end.
template <typename T, int D>
__global__ void __launch_bounds__(128) flash_bwd_dq_kernel(const BwdArgs a) {
  using Tr = BwdTraits<T, D>;
  constexpr int kS = Tr::kStride, kN = Tr::kBlockN, kNT = kN / 8, kDT = D / 8, kKS = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + Tr::kTile;
  T* sK = sdO + Tr::kTile;     // two buffers
  T* sV = sK + 2 * Tr::kTile;  // two buffers

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Tr::kBlockM;  // heavy causal tiles first
  const int q_last = min(q0 + Tr::kBlockM, a.Nq) - 1;
  const int mrow = q0 / a.mask.block_q;
  const int64_t e0 = a.mask.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask.row_ptr[mrow + 1] - e0) * (a.mask.block_k / kN));
  const float sl2 = a.scale_log2;

  const T* kg = static_cast<const T*>(a.k.data) + b * a.k.sb + h * a.k.sh;
  const T* vg = static_cast<const T*>(a.v.data) + b * a.v.sb + h * a.v.sh;
  auto next_visible = [&](int it) {
    for (; it < n_items; ++it) {
      const int ks = tile_start<kN>(a.mask, e0, it);
      if (ks < a.Nk && !(a.causal && static_cast<int64_t>(ks - q_last) > a.diag)) break;
    }
    return it;
  };
  auto load_kv = [&](int it, int buf) {
    const int ks = tile_start<kN>(a.mask, e0, it);
    load_tile<kN, D, kS, Tr::kThreads>(sK + buf * Tr::kTile, kg + ks * a.k.sn, a.k.sn,
                                        a.Nk - ks, a.vec, tid);
    load_tile<kN, D, kS, Tr::kThreads>(sV + buf * Tr::kTile, vg + ks * a.v.sn, a.v.sn,
                                        a.Nk - ks, a.vec, tid);
  };

  {
    const T* qg = static_cast<const T*>(a.q.data) + b * a.q.sb + h * a.q.sh + q0 * a.q.sn;
    const T* dog = static_cast<const T*>(a.d_o.data) + b * a.d_o.sb + h * a.d_o.sh + q0 * a.d_o.sn;
    load_tile<Tr::kBlockM, D, kS, Tr::kThreads>(sQ, qg, a.q.sn, a.Nq - q0, a.vec, tid);
    load_tile<Tr::kBlockM, D, kS, Tr::kThreads>(sdO, dog, a.d_o.sn, a.Nq - q0, a.vec, tid);
  }
  int it = next_visible(0);
  if (it < n_items) load_kv(it, 0);
  cp_async_commit();

  // Row statistics of rows g and g + 8 of this warp.
  const int wrow = warp * 16;
  float lse2[2], delta[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = q0 + wrow + g + hh * 8;
    lse2[hh] = kPosInf;
    delta[hh] = 0.f;
    if (i < a.Nq) {
      const float l = static_cast<const float*>(
          a.lse.data)[b * a.lse.sb + static_cast<int64_t>(i) * a.lse.sn + h * a.lse.sh];
      lse2[hh] = lse2_of(l);
      delta[hh] = static_cast<const float*>(
          a.delta.data)[b * a.delta.sb + static_cast<int64_t>(i) * a.delta.sn + h * a.delta.sh];
    }
  }

  float dq[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[dt][e] = 0.f;
  const int a_row = lane & 15, a_col = (lane >> 4) << 3;
  const int bn_row = (lane & 7) + ((lane >> 4) << 3), bn_col = ((lane >> 3) & 1) << 3;
  const int bt_row = (lane & 7) + (((lane >> 3) & 1) << 3), bt_col = (lane >> 4) << 3;

  int buf = 0;
  while (it < n_items) {
    const int ks = tile_start<kN>(a.mask, e0, it);
    const bool need_mask = tile_partial<kN>(a.mask, e0, it) || ks + kN > a.Nk ||
                           (a.causal && static_cast<int64_t>(ks + kN - 1 - q0) > a.diag);
    const int nxt = next_visible(it + 1);
    if (nxt < n_items) load_kv(nxt, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* k_s = sK + buf * Tr::kTile;
    const T* v_s = sV + buf * Tr::kTile;

    float s[kNT][4], dp[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
      uint32_t qa[4], oa[4];
      ldmatrix_x4(qa, sQ + (wrow + a_row) * kS + kk * 16 + a_col);
      ldmatrix_x4(oa, sdO + (wrow + a_row) * kS + kk * 16 + a_col);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t kb[4], vb[4];
        ldmatrix_x4(kb, k_s + (np * 16 + bn_row) * kS + kk * 16 + bn_col);
        ldmatrix_x4(vb, v_s + (np * 16 + bn_row) * kS + kk * 16 + bn_col);
        Elem<T>::mma(s[2 * np], qa, kb[0], kb[1]);
        Elem<T>::mma(s[2 * np + 1], qa, kb[2], kb[3]);
        Elem<T>::mma(dp[2 * np], oa, vb[0], vb[1]);
        Elem<T>::mma(dp[2 * np + 1], oa, vb[2], vb[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int hh = e >> 1;
        float sv = s[nt][e];
        if (need_mask) {
          const int i = q0 + wrow + g + hh * 8;
          const int j = ks + nt * 8 + 2 * t4 + (e & 1);
          if (j >= a.Nk || (a.causal && static_cast<int64_t>(j - i) > a.diag)) sv = kNegInf;
        }
        const float p = fast_exp2(fmaf(sv, sl2, -lse2[hh]));
        s[nt][e] = p * (dp[nt][e] - delta[hh]);  // dS
      }
    mma_add_xb<T, D, kN, kS>(dq, s, k_s, bt_row, bt_col);  // dQ += dS K
    __syncthreads();
    it = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();

  // dq += scale dQ for queries i (+8) < Nq, old values loaded before the sums are stored.
  int64_t off[2];
  bool ok[2];
  fragment_rows(a.dq, b, h, q0 + wrow + g, a.Nq, t4, off, ok);
  add_rows_out<T, kDT>(a.dq.data, a.dq_type, a.dq_pair != 0, off, ok, a.scale,
                       [&](int hh, int dt, int e) { return dq[dt][2 * hh + e]; });
}

template <typename Kernel>
void launch_bwd_kernel(Kernel kernel, dim3 grid, int threads, int smem, const BwdArgs& a,
                       cudaStream_t stream) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<grid, threads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH("flash backward kernel");
}

template <typename T, int D, int NW, bool kAtomic>
void launch_dkdv(const BwdArgs& a, cudaStream_t stream) {
  using Tr = BwdTraits<T, D, NW>;
  const dim3 grid((a.Nk + Tr::kBlockN - 1) / Tr::kBlockN, a.H, a.B);
  const int th = Tr::kThreads, sm = Tr::kDkdvSmem;
  if constexpr (D <= 128) {
    launch_bwd_kernel(flash_bwd_dkdv_kernel<T, D, NW, true, true, kAtomic>, grid, th, sm, a,
                      stream);
  } else {  // registers do not hold both dK and dV accumulators: one pass each
    launch_bwd_kernel(flash_bwd_dkdv_kernel<T, D, NW, true, false, false>, grid, th, sm, a,
                      stream);
    launch_bwd_kernel(flash_bwd_dkdv_kernel<T, D, NW, false, true, kAtomic>, grid, th, sm, a,
                      stream);
  }
}

template <typename T, int D>
void launch_bwd(const BwdArgs& a, bool atomic_dq, cudaStream_t stream) {
  // 128 keys per CTA (8 warps) need key blocks of 128 and fit shared memory up to D = 128.
  // dQ atomics pay off only there (half the atomics per key of 64-key CTAs); elsewhere the
  // query-stationary dQ pass was faster on H100 (bench/NOTES-kernels.md).
  bool atomics = false;
  if constexpr (D <= 128) {
    if (a.mask_t.block_q % 128 == 0) {
      atomics = atomic_dq;
      if (atomics)
        launch_dkdv<T, D, 8, true>(a, stream);
      else
        launch_dkdv<T, D, 8, false>(a, stream);
    } else {
      launch_dkdv<T, D, 4, false>(a, stream);
    }
  } else {
    launch_dkdv<T, D, 4, false>(a, stream);
  }
  if (!atomics) {
    using Tr = BwdTraits<T, D>;
    const dim3 grid_q((a.Nq + Tr::kBlockM - 1) / Tr::kBlockM, a.H, a.B);
    launch_bwd_kernel(flash_bwd_dq_kernel<T, D>, grid_q, Tr::kThreads, Tr::kDqSmem, a, stream);
  }
}

}  // namespace longattn::cuda::flash
