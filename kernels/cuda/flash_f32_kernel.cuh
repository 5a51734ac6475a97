// The fp32-input flash attention path: the same tiling, online softmax and block-mask walk as
// the tensor-core kernels, computed with fp32 FMA (no tf32), 32x32 tiles through shared memory.
// Slower than the fp16/bf16 kernels, accurate to fp32. Instantiated by flash_{fwd,bwd}_f32.cu.
#pragma once
#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/flash_common.cuh"

namespace longattn::cuda::flash {

template <int D>
struct F32Traits {
  static constexpr int kThreads = 128;
  static constexpr int kTile = 32;       // rows of queries and of keys per tile
  static constexpr int kStride = D + 1;  // odd stride: the 8 rows a warp reads hit 8 banks
  static constexpr int kPStride = kTile + 1;
  static constexpr int kTileElems = kTile * kStride;
  static constexpr int kPElems = kTile * kPStride;
  static constexpr int kFwdSmem = (3 * kTileElems + kPElems) * 4;
  static constexpr int kDkdvSmem = (4 * kTileElems + 2 * kPElems + 2 * kTile) * 4;
  static constexpr int kDqSmem = (4 * kTileElems + kPElems) * 4;
};

// Rows [0, 32) of a strided fp32 [rows x D] tile into smem (stride D + 1), zero past `valid`.
template <int D>
__device__ __forceinline__ void load_tile_f32(float* s, const float* g, int64_t row_stride,
                                              int valid, int tid) {
  constexpr int kS = F32Traits<D>::kStride;
#pragma unroll 4
  for (int idx = tid; idx < 32 * D; idx += 128) {
    const int r = idx / D, d = idx % D;
    s[r * kS + d] = r < valid ? g[static_cast<int64_t>(r) * row_stride + d] : 0.f;
  }
}

// Thread layout of every 32x32 score tile: row r = tid / 4, columns c4 + 4 c (c < 8); rows of
// a 32 x D accumulator: row r, columns c4 + 4 j (j < D / 4). A row's 4 threads are one quad.
template <int D>
__global__ void __launch_bounds__(128) flash_fwd_f32_kernel(const FwdArgs a) {
  using Tr = F32Traits<D>;
  constexpr int kS = Tr::kStride, kPS = Tr::kPStride, kJ = D / 4;
  extern __shared__ float smf[];
  float* sQ = smf;
  float* sK = sQ + Tr::kTileElems;
  float* sV = sK + Tr::kTileElems;
  float* sP = sV + Tr::kTileElems;

  const int tid = threadIdx.x, r = tid >> 2, c4 = tid & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = blockIdx.x * 32;
  const int q_last = min(q0 + 32, a.Nq) - 1;
  const int mrow = q0 / a.mask.block_q;
  const int64_t e0 = a.mask.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask.row_ptr[mrow + 1] - e0) * (a.mask.block_k / 32));
  const float sl2 = a.scale_log2;
  const float* qg = static_cast<const float*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const float* kg = static_cast<const float*>(a.k.data) + b * a.k.sb + h * a.k.sh;
  const float* vg = static_cast<const float*>(a.v.data) + b * a.v.sb + h * a.v.sh;

  load_tile_f32<D>(sQ, qg + static_cast<int64_t>(q0) * a.q.sn, a.q.sn, a.Nq - q0, tid);
  float o[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) o[j] = 0.f;
  float m = kNegInf, l = 0.f;
  const int i = q0 + r;

  for (int it = 0; it < n_items; ++it) {
    const int ks = tile_start<32>(a.mask, e0, it);
    if (ks >= a.Nk || (a.causal && static_cast<int64_t>(ks - q_last) > a.diag)) continue;
    const bool need_mask = tile_partial<32>(a.mask, e0, it) || ks + 32 > a.Nk ||
                           (a.causal && static_cast<int64_t>(ks + 31 - q0) > a.diag);
    __syncthreads();  // the previous tile's readers are done
    load_tile_f32<D>(sK, kg + static_cast<int64_t>(ks) * a.k.sn, a.k.sn, a.Nk - ks, tid);
    load_tile_f32<D>(sV, vg + static_cast<int64_t>(ks) * a.v.sn, a.v.sn, a.Nk - ks, tid);
    __syncthreads();

    float s[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) s[c] = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float qv = sQ[r * kS + d];
#pragma unroll
      for (int c = 0; c < 8; ++c) s[c] = fmaf(qv, sK[(c4 + 4 * c) * kS + d], s[c]);
    }
    float mx = kNegInf;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = ks + c4 + 4 * c;
      if (need_mask && (j >= a.Nk || (a.causal && static_cast<int64_t>(j - i) > a.diag)))
        s[c] = kNegInf;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx * sl2);
    const float base = m_new == kNegInf ? 0.f : m_new;
    const float alpha = fast_exp2(m - base);
    m = m_new;
    float rs = 0.f;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const float p = fast_exp2(fmaf(s[c], sl2, -base));
      rs += p;
      sP[r * kPS + c4 + 4 * c] = p;
    }
    l = l * alpha + rs;
    __syncwarp();
#pragma unroll
    for (int j = 0; j < kJ; ++j) o[j] *= alpha;
#pragma unroll 4
    for (int c = 0; c < 32; ++c) {
      const float p = sP[r * kPS + c];
#pragma unroll
      for (int j = 0; j < kJ; ++j) o[j] = fmaf(p, sV[c * kS + c4 + 4 * j], o[j]);
    }
  }

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (i < a.Nq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float* og = static_cast<float*>(a.o.data) + b * a.o.sb + static_cast<int64_t>(i) * a.o.sn +
                h * a.o.sh;
#pragma unroll
    for (int j = 0; j < kJ; ++j) og[c4 + 4 * j] = o[j] * inv;
    if (c4 == 0) {
      float* lse = static_cast<float*>(a.lse.data);
      lse[b * a.lse.sb + static_cast<int64_t>(i) * a.lse.sn + h * a.lse.sh] =
          l > 0.f ? m * kLn2 + logf(l) : kNegInf;
    }
  }
}

// Per-row lse * log2(e) (+inf where nothing is seen or past Nq) and delta (0 past Nq).
__device__ __forceinline__ void row_stats_f32(const BwdArgs& a, int b, int h, int i, float& l2,
                                              float& dl) {
  l2 = kPosInf;
  dl = 0.f;
  if (i < a.Nq) {
    const float l = static_cast<const float*>(
        a.lse.data)[b * a.lse.sb + static_cast<int64_t>(i) * a.lse.sn + h * a.lse.sh];
    l2 = l == kNegInf ? kPosInf : l * kLog2e;
    dl = static_cast<const float*>(
        a.delta.data)[b * a.delta.sb + static_cast<int64_t>(i) * a.delta.sn + h * a.delta.sh];
  }
}

// Key-stationary dK/dV: row r = key k0 + r, columns = the step's 32 queries.
//   P^T = 2^(scale log2(e) K Q^T - lse2), dS^T = P^T o (V dO^T - delta),
//   dV += P^T dO, dK += scale dS^T Q.
template <int D>
__global__ void __launch_bounds__(128) flash_bwd_dkdv_f32_kernel(const BwdArgs a) {
  using Tr = F32Traits<D>;
  constexpr int kS = Tr::kStride, kPS = Tr::kPStride, kJ = D / 4;
  extern __shared__ float smf[];
  float* sK = smf;
  float* sV = sK + Tr::kTileElems;
  float* sQ = sV + Tr::kTileElems;
  float* sdO = sQ + Tr::kTileElems;
  float* sP = sdO + Tr::kTileElems;
  float* sdS = sP + Tr::kPElems;
  float* sL = sdS + Tr::kPElems;
  float* sDl = sL + 32;

  const int tid = threadIdx.x, r = tid >> 2, c4 = tid & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  const int k0 = blockIdx.x * 32;
  const int mrow = k0 / a.mask_t.block_q;
  const int64_t e0 = a.mask_t.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask_t.row_ptr[mrow + 1] - e0) * (a.mask_t.block_k / 32));
  const float sl2 = a.scale_log2;
  const float* qg = static_cast<const float*>(a.q.data) + b * a.q.sb + h * a.q.sh;
  const float* dog = static_cast<const float*>(a.d_o.data) + b * a.d_o.sb + h * a.d_o.sh;
  load_tile_f32<D>(sK, static_cast<const float*>(a.k.data) + b * a.k.sb + h * a.k.sh +
                           static_cast<int64_t>(k0) * a.k.sn,
                   a.k.sn, a.Nk - k0, tid);
  load_tile_f32<D>(sV, static_cast<const float*>(a.v.data) + b * a.v.sb + h * a.v.sh +
                           static_cast<int64_t>(k0) * a.v.sn,
                   a.v.sn, a.Nk - k0, tid);
  float dk[kJ], dv[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) dk[j] = dv[j] = 0.f;
  const int jkey = k0 + r;

  for (int it = 0; it < n_items; ++it) {
    const int qs = tile_start<32>(a.mask_t, e0, it);
    if (qs >= a.Nq) continue;
    const int q_hi = min(qs + 32, a.Nq) - 1;
    if (a.causal && static_cast<int64_t>(k0 - q_hi) > a.diag) continue;
    const bool need_mask = tile_partial<32>(a.mask_t, e0, it) || k0 + 32 > a.Nk ||
                           (a.causal && static_cast<int64_t>(k0 + 31 - qs) > a.diag);
    __syncthreads();
    load_tile_f32<D>(sQ, qg + static_cast<int64_t>(qs) * a.q.sn, a.q.sn, a.Nq - qs, tid);
    load_tile_f32<D>(sdO, dog + static_cast<int64_t>(qs) * a.d_o.sn, a.d_o.sn, a.Nq - qs, tid);
    if (tid < 32) row_stats_f32(a, b, h, qs + tid, sL[tid], sDl[tid]);
    __syncthreads();

    float st[8], dpt[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) st[c] = dpt[c] = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float kv = sK[r * kS + d], vv = sV[r * kS + d];
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        st[c] = fmaf(kv, sQ[(c4 + 4 * c) * kS + d], st[c]);
        dpt[c] = fmaf(vv, sdO[(c4 + 4 * c) * kS + d], dpt[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int cc = c4 + 4 * c, i = qs + cc;
      float p = fast_exp2(fmaf(st[c], sl2, -sL[cc]));
      if (need_mask && (jkey >= a.Nk || (a.causal && static_cast<int64_t>(jkey - i) > a.diag)))
        p = 0.f;
      sP[r * kPS + cc] = p;
      sdS[r * kPS + cc] = p * (dpt[c] - sDl[cc]);
    }
    __syncwarp();
#pragma unroll 4
    for (int c = 0; c < 32; ++c) {
      const float p = sP[r * kPS + c], ds = sdS[r * kPS + c];
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        dv[j] = fmaf(p, sdO[c * kS + c4 + 4 * j], dv[j]);
        dk[j] = fmaf(ds, sQ[c * kS + c4 + 4 * j], dk[j]);
      }
    }
  }
  if (jkey < a.Nk) {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int d = c4 + 4 * j;
      store_out<float>(a.dk.data,
                       b * a.dk.sb + static_cast<int64_t>(jkey) * a.dk.sn + h * a.dk.sh + d,
                       kOutF32, a.scale * dk[j], true);
      store_out<float>(a.dv.data,
                       b * a.dv.sb + static_cast<int64_t>(jkey) * a.dv.sn + h * a.dv.sh + d,
                       kOutF32, dv[j], true);
    }
  }
}

// Query-stationary dQ: row r = query q0 + r; dS = P o (dO V^T - delta), dQ += scale dS K.
template <int D>
__global__ void __launch_bounds__(128) flash_bwd_dq_f32_kernel(const BwdArgs a) {
  using Tr = F32Traits<D>;
  constexpr int kS = Tr::kStride, kPS = Tr::kPStride, kJ = D / 4;
  extern __shared__ float smf[];
  float* sQ = smf;
  float* sdO = sQ + Tr::kTileElems;
  float* sK = sdO + Tr::kTileElems;
  float* sV = sK + Tr::kTileElems;
  float* sdS = sV + Tr::kTileElems;

  const int tid = threadIdx.x, r = tid >> 2, c4 = tid & 3;
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = blockIdx.x * 32;
  const int q_last = min(q0 + 32, a.Nq) - 1;
  const int mrow = q0 / a.mask.block_q;
  const int64_t e0 = a.mask.row_ptr[mrow];
  const int n_items = static_cast<int>((a.mask.row_ptr[mrow + 1] - e0) * (a.mask.block_k / 32));
  const float sl2 = a.scale_log2;
  const float* kg = static_cast<const float*>(a.k.data) + b * a.k.sb + h * a.k.sh;
  const float* vg = static_cast<const float*>(a.v.data) + b * a.v.sb + h * a.v.sh;
  load_tile_f32<D>(sQ, static_cast<const float*>(a.q.data) + b * a.q.sb + h * a.q.sh +
                           static_cast<int64_t>(q0) * a.q.sn,
                   a.q.sn, a.Nq - q0, tid);
  load_tile_f32<D>(sdO, static_cast<const float*>(a.d_o.data) + b * a.d_o.sb + h * a.d_o.sh +
                            static_cast<int64_t>(q0) * a.d_o.sn,
                   a.d_o.sn, a.Nq - q0, tid);
  const int i = q0 + r;
  float lse2, delta;
  row_stats_f32(a, b, h, i, lse2, delta);
  float dq[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) dq[j] = 0.f;

  for (int it = 0; it < n_items; ++it) {
    const int ks = tile_start<32>(a.mask, e0, it);
    if (ks >= a.Nk || (a.causal && static_cast<int64_t>(ks - q_last) > a.diag)) continue;
    const bool need_mask = tile_partial<32>(a.mask, e0, it) || ks + 32 > a.Nk ||
                           (a.causal && static_cast<int64_t>(ks + 31 - q0) > a.diag);
    __syncthreads();
    load_tile_f32<D>(sK, kg + static_cast<int64_t>(ks) * a.k.sn, a.k.sn, a.Nk - ks, tid);
    load_tile_f32<D>(sV, vg + static_cast<int64_t>(ks) * a.v.sn, a.v.sn, a.Nk - ks, tid);
    __syncthreads();
    float s[8], dp[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) s[c] = dp[c] = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float qv = sQ[r * kS + d], ov = sdO[r * kS + d];
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        s[c] = fmaf(qv, sK[(c4 + 4 * c) * kS + d], s[c]);
        dp[c] = fmaf(ov, sV[(c4 + 4 * c) * kS + d], dp[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int j = ks + c4 + 4 * c;
      float p = fast_exp2(fmaf(s[c], sl2, -lse2));
      if (need_mask && (j >= a.Nk || (a.causal && static_cast<int64_t>(j - i) > a.diag))) p = 0.f;
      sdS[r * kPS + c4 + 4 * c] = p * (dp[c] - delta);
    }
    __syncwarp();
#pragma unroll 4
    for (int c = 0; c < 32; ++c) {
      const float ds = sdS[r * kPS + c];
#pragma unroll
      for (int j = 0; j < kJ; ++j) dq[j] = fmaf(ds, sK[c * kS + c4 + 4 * j], dq[j]);
    }
  }
  if (i < a.Nq) {
#pragma unroll
    for (int j = 0; j < kJ; ++j)
      store_out<float>(a.dq.data,
                       b * a.dq.sb + static_cast<int64_t>(i) * a.dq.sn + h * a.dq.sh + c4 + 4 * j,
                       kOutF32, a.scale * dq[j], true);
  }
}

template <int D>
void launch_fwd_f32(const FwdArgs& a, cudaStream_t stream) {
  using Tr = F32Traits<D>;
  auto kernel = flash_fwd_f32_kernel<D>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kFwdSmem));
  kernel<<<dim3((a.Nq + 31) / 32, a.H, a.B), Tr::kThreads, Tr::kFwdSmem, stream>>>(a);
  CUDA_CHECK_LAUNCH("flash_fwd_f32_kernel");
}

template <int D>
void launch_bwd_f32(const BwdArgs& a, cudaStream_t stream) {
  using Tr = F32Traits<D>;
  auto dkdv = flash_bwd_dkdv_f32_kernel<D>;
  CUDA_CHECK(cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kDkdvSmem));
  dkdv<<<dim3((a.Nk + 31) / 32, a.H, a.B), Tr::kThreads, Tr::kDkdvSmem, stream>>>(a);
  CUDA_CHECK_LAUNCH("flash_bwd_dkdv_f32_kernel");
  auto dq = flash_bwd_dq_f32_kernel<D>;
  CUDA_CHECK(cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  Tr::kDqSmem));
  dq<<<dim3((a.Nq + 31) / 32, a.H, a.B), Tr::kThreads, Tr::kDqSmem, stream>>>(a);
  CUDA_CHECK_LAUNCH("flash_bwd_dq_f32_kernel");
}

}  // namespace longattn::cuda::flash
