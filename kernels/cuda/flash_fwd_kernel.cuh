// Forward flash attention on tensor cores (mma.sync m16n8k16, fp16/bf16 in, fp32 accumulate):
// one CTA per (query tile, head, batch) walks the key tiles its CSR mask row lists, with
// FlashAttention-2's online softmax. Instantiated by kernels/cuda/flash_fwd_<dtype>_d<D>.cu.
#pragma once
#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_common.cuh"

namespace longattn::cuda::flash {

template <typename T, int D, int MT, int BN = 64>
struct FwdTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarp = 16 * MT;
  static constexpr int kBlockM = kRowsPerWarp * kWarps;  // query rows per CTA
  static constexpr int kBlockN = BN;                     // key rows per tile
  static constexpr int kStride = D + 8;  // smem row stride: 16 bytes of padding, no bank conflicts
  static constexpr int kQElems = kBlockM * kStride;
  static constexpr int kKVElems = kBlockN * kStride;
  static constexpr int kSmemBytes = (kQElems + 4 * kKVElems) * static_cast<int>(sizeof(T));
  // Q fragments stay in registers when they are few; otherwise they are re-read from smem.
  static constexpr bool kQInRegs = MT * D <= 128;
};

// For query rows i of this CTA and listed key tiles j (BN keys each), with s = q_i.k_j:
//   m_i = max_j scale*log2(e)*s_ij (running), l_i = sum_j 2^(scale*log2(e)*s_ij - m_i),
//   o_i = sum_j 2^(...) v_j / l_i,  lse_i = ln(2) m_i + ln(l_i)  (rows with l_i = 0: o = 0,
//   lse = -inf).
template <typename T, int D, int MT, int BN>
__global__ void __launch_bounds__(128) flash_fwd_kernel(const FwdArgs a) {
  using Tr = FwdTraits<T, D, MT, BN>;
  constexpr int kN = Tr::kBlockN, kS = Tr::kStride;
  constexpr int kNT = kN / 8, kDT = D / 8, kKS = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kQElems;           // two buffers
  T* sV = sK + 2 * Tr::kKVElems;      // two buffers

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  // Last query tiles first: under causality they have the most keys, and starting the longest
  // CTAs first shortens the tail of the grid.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Tr::kBlockM;
  const int q_last = min(q0 + Tr::kBlockM, a.Nq) - 1;
  const int mrow = q0 / a.mask.block_q;
  const int64_t e0 = a.mask.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask.row_ptr[mrow + 1] - e0) * (a.mask.block_k / kN));
  const float sl2 = a.scale_log2;

  const T* qg = static_cast<const T*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const T* kg = static_cast<const T*>(a.k.data) + b * a.k.sb + h * a.k.sh;
  const T* vg = static_cast<const T*>(a.v.data) + b * a.v.sb + h * a.v.sh;

  // First listed tile at or after `it` with a key any row of this CTA may see (its first key
  // row in ks).
  auto next_visible = [&](int it, int& ks) {
    for (; it < n_items; ++it) {
      ks = tile_start<kN>(a.mask, e0, it);
      if (ks < a.Nk && !(a.causal && static_cast<int64_t>(ks - q_last) > a.diag)) break;
    }
    return it;
  };
  auto load_kv = [&](int ks, int buf) {
    load_tile<kN, D, kS, Tr::kThreads>(sK + buf * Tr::kKVElems, kg + ks * a.k.sn, a.k.sn,
                                        a.Nk - ks, a.vec, tid);
    load_tile<kN, D, kS, Tr::kThreads>(sV + buf * Tr::kKVElems, vg + ks * a.v.sn, a.v.sn,
                                        a.Nk - ks, a.vec, tid);
  };

  load_tile<Tr::kBlockM, D, kS, Tr::kThreads>(sQ, qg + static_cast<int64_t>(q0) * a.q.sn,
                                               a.q.sn, a.Nq - q0, a.vec, tid);
  int ks = 0;
  int it = next_visible(0, ks);
  if (it < n_items) load_kv(ks, 0);
  cp_async_commit();
  int nks = 0;
  int nxt = it < n_items ? next_visible(it + 1, nks) : n_items;
  const int nsub = a.mask.block_k / kN;

  float o[MT][kDT][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.f;
    m[mt][0] = m[mt][1] = kNegInf;
    l[mt][0] = l[mt][1] = 0.f;
  }
  constexpr int kQR = Tr::kQInRegs ? MT : 1, kQK = Tr::kQInRegs ? kKS : 1;
  uint32_t qf[kQR][kQK][4];
  bool q_in_regs = false;
  const int wrow = warp * Tr::kRowsPerWarp;
  // ldmatrix lane offsets: A operand (16x16 row-major) and B operand from [n][k] rows
  // (non-transposed) or from [k][n] rows (transposed).
  const int a_row = lane & 15, a_col = (lane >> 4) << 3;
  const int bn_row = (lane & 7) + ((lane >> 4) << 3), bn_col = ((lane >> 3) & 1) << 3;
  const int bt_row = (lane & 7) + (((lane >> 3) & 1) << 3), bt_col = (lane >> 4) << 3;

  constexpr uint32_t kEl = sizeof(T);
  const uint32_t q_addr = smem_addr(sQ) + ((wrow + a_row) * kS + a_col) * kEl;
  const uint32_t k_addr0 = smem_addr(sK) + (bn_row * kS + bn_col) * kEl;
  const uint32_t v_addr0 = smem_addr(sV) + (bt_row * kS + bt_col) * kEl;

  int buf = 0;
  while (it < n_items) {
    // One barrier per tile: after it, this tile's K/V are visible to every warp and every warp
    // is done with the other buffer, which the prefetch below refills.
    cp_async_wait<0>();
    __syncthreads();
    // The next tile streams in while this one is computed. The column of the tile after it is
    // read now and used at the end of the iteration, so its latency hides behind the math.
    if (nxt < n_items) load_kv(nks, buf ^ 1);
    cp_async_commit();
    const int it2 = nxt + 1;
    const int col2 = it2 < n_items ? a.mask.col_idx[e0 + it2 / nsub] : 0;
    const bool need_mask = tile_partial<kN>(a.mask, e0, it) || ks + kN > a.Nk ||
                           (a.causal && static_cast<int64_t>(ks + kN - 1 - q0) > a.diag);

    if constexpr (Tr::kQInRegs) {
      if (!q_in_regs) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kk = 0; kk < kKS; ++kk)
            ldmatrix_x4(qf[mt][kk], q_addr + (mt * 16 * kS + kk * 16) * kEl);
        q_in_regs = true;
      }
    }
    const uint32_t k_addr = k_addr0 + buf * (Tr::kKVElems * kEl);
    const uint32_t v_addr = v_addr0 + buf * (Tr::kKVElems * kEl);

    // S = Q K^T (fp32 accumulators, C layout: rows g and g + 8, columns 2*t4 + {0, 1}).
    float s[MT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Tr::kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][e] = qf[mt][kk][e];
        } else {
          ldmatrix_x4(qa[mt], q_addr + (mt * 16 * kS + kk * 16) * kEl);
        }
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_addr + (np * 16 * kS + kk * 16) * kEl);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Elem<T>::mma(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          Elem<T>::mma(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    if (need_mask) {  // key edge and causal diagonal, per element
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = q0 + wrow + mt * 16 + g + ((e >> 1) << 3);
            const int j = ks + nt * 8 + 2 * t4 + (e & 1);
            if (j >= a.Nk || (a.causal && static_cast<int64_t>(j - i) > a.diag))
              s[mt][nt][e] = kNegInf;
          }
    }

    // Online softmax: rescale what was accumulated by 2^(m_old - m_new). A row whose maximum
    // is still -inf uses 0 as its base so that 2^(-inf - base) = 0, never NaN.
    float alpha[MT][2];
    bool rescale = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        // Tree reductions: short dependency chains (few warps per scheduler hide little).
        float t[kNT];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) t[nt] = fmaxf(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]);
#pragma unroll
        for (int w = kNT / 2; w > 0; w >>= 1)
#pragma unroll
          for (int nt = 0; nt < w; ++nt) t[nt] = fmaxf(t[nt], t[nt + w]);
        float mx = t[0];
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mt][hh], mx * sl2);
        const float base = m_new == kNegInf ? 0.f : m_new;
        alpha[mt][hh] = fast_exp2(m[mt][hh] - base);
        m[mt][hh] = m_new;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e)
            s[mt][nt][2 * hh + e] = fast_exp2(fmaf(s[mt][nt][2 * hh + e], sl2, -base));
          t[nt] = s[mt][nt][2 * hh] + s[mt][nt][2 * hh + 1];
        }
#pragma unroll
        for (int w = kNT / 2; w > 0; w >>= 1)
#pragma unroll
          for (int nt = 0; nt < w; ++nt) t[nt] += t[nt + w];
        l[mt][hh] = l[mt][hh] * alpha[mt][hh] + t[0];
        rescale |= alpha[mt][hh] != 1.f;
      }
    // Once the running maxima settle, alpha is 1 for every row of the warp: skip the multiply.
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][dt][e] *= alpha[mt][e >> 1];
    }

    // O += P V: the C layout of two adjacent 8-column S tiles is the A layout of one k16 step.
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = Elem<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = Elem<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = Elem<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = Elem<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_addr + (kk * 16 * kS + dp * 16) * kEl);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Elem<T>::mma(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          Elem<T>::mma(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    int nks2 = col2 * a.mask.block_k + (it2 % nsub) * kN;
    int nxt2 = it2;
    if (it2 >= n_items) {
      nxt2 = n_items;
    } else if (!(nks2 < a.Nk && !(a.causal && static_cast<int64_t>(nks2 - q_last) > a.diag))) {
      nxt2 = next_visible(it2 + 1, nks2);
    }
    it = nxt;
    ks = nks;
    nxt = nxt2;
    nks = nks2;
    buf ^= 1;
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float lt = l[mt][hh];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const int i = q0 + wrow + mt * 16 + g + hh * 8;
      if (i < a.Nq) {
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        const int64_t ob = b * a.o.sb + static_cast<int64_t>(i) * a.o.sn + h * a.o.sh;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
          store_out2<T>(a.o.data, ob + dt * 8 + 2 * t4, a.o_type, o[mt][dt][2 * hh] * inv,
                        o[mt][dt][2 * hh + 1] * inv, a.o_pair);
        if (t4 == 0) {
          float* lse = static_cast<float*>(a.lse.data);
          lse[b * a.lse.sb + static_cast<int64_t>(i) * a.lse.sn + h * a.lse.sh] =
              lt > 0.f ? m[mt][hh] * kLn2 + logf(lt) : kNegInf;
        }
      }
    }
}

template <typename T, int D, int MT, int BN = 64>
void launch_fwd_tiles(const FwdArgs& a, cudaStream_t stream) {
  using Tr = FwdTraits<T, D, MT, BN>;
  auto kernel = flash_fwd_kernel<T, D, MT, BN>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kSmemBytes));
  const dim3 grid((a.Nq + Tr::kBlockM - 1) / Tr::kBlockM, a.H, a.B);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(a);
  CUDA_CHECK_LAUNCH("flash_fwd_kernel");
}

template <typename T, int D>
void launch_fwd(const FwdArgs& a, int m_tiles, cudaStream_t stream) {
  if constexpr (D <= 128) {
    if (m_tiles == 2) return launch_fwd_tiles<T, D, 2>(a, stream);
  }
  launch_fwd_tiles<T, D, 1>(a, stream);
}

}  // namespace longattn::cuda::flash
