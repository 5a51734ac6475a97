// Host-callable flash attention kernels of the CUDA backend: the kernel contract
// (kernels/contract.hpp) on device pointers, FlashAttention-2 style (tiling, online softmax,
// mma.sync tensor cores for fp16/bf16, an fp32 FMA path). Includes no CUDA device headers.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/contract.hpp"

namespace longattn::cuda {

// What the kernels accept (checked by flash_forward / flash_backward, which throw
// InvalidArgument naming the argument, its value and the rule otherwise):
// - q, k, v (and d_o, o in the backward) in device memory, one dtype: fp32, fp16 or bf16;
//   o may also be fp32 when the inputs are fp16/bf16; head_dim 32, 64, 128 or 256;
//   any batch, row and head strides, unit stride on D. 16-byte vector loads are used when every
//   base pointer is 16-byte aligned and every stride a multiple of 16 bytes, a scalar path
//   otherwise (same results).
// - lse (and delta) fp32 views [B, Nq, H, 1] with any strides.
// - mask (and mask_t) device arrays with block_q and block_k multiples of 64 (64 and 128 are
//   what the runtime builds). Per-element masking (causal in global positions q_offset + i,
//   k_offset + j, and the sequence edges Nq, Nk) runs only on blocks flagged partial or that
//   cross an edge or the causal diagonal; full blocks run unmasked.
bool flash_supports(DType dtype, int64_t head_dim);

// Forward: writes o and lse for every query row; a row that sees no key gets o = 0 and
// lse = -inf. Asynchronous on `stream`; temporaries (the Hopper forward's split pieces) come
// from `pool` when given, else from the device's default pool, stream-ordered.
void flash_forward(const AttnFwdParams& p, cudaStream_t stream, cudaMemPool_t pool = nullptr);

// Which kernel flash_forward runs for p on the current device: "sm90" (Hopper TMA + wgmma:
// compute capability 9.0, fp16/bf16, head_dim 64/128, mask blocks multiples of 128, 16-byte
// aligned rows; LONGATTN_FLASH_KERNELS=portable turns it off), with "-wide" for its 192-row or
// 192-key tiles walked by position and "-gather" for its 192-key tiles gathered from scattered
// rows' blocks (forward_gathered_tiles), "portable" (mma.sync) or "fp32".
std::string flash_forward_kernel(const AttnFwdParams& p);

// Backward from the global o and lse: dq += dL/dq, dk += dL/dk, dv += dL/dv (accumulated,
// never overwritten). dq, dk, dv may be fp32 (the backend's accumulators) or the input dtype.
// p.mask_t (the transpose of p.mask, by key block) must be given: the dK/dV pass is
// key-block-stationary. delta = rowsum(dO * O) is read from p.delta when given, else computed
// into device scratch taken with cudaMallocAsync/cudaFreeAsync on `stream`.
// dQ: fp32 atomics (8-byte float2 reductions where dq is aligned) from the dK/dV pass when
// p.deterministic is false, dq is fp32, the inputs are fp16/bf16, head_dim <= 128 and the key
// blocks are multiples of 128 (128-key CTAs); otherwise a separate query-stationary pass with no
// atomics, bitwise reproducible run to run (fp32 inputs always take it). Asynchronous on
// `stream`.
// pool: where the delta scratch comes from (stream-ordered); nullptr: the device's default pool.
//
// dq_acc: the fp32 dQ accumulator of backward_dq_accumulator(p) (its floats, uninitialised), for
// a dq that is not fp32 (not deterministic) or a call whose kernel adds into the transposed one;
// flash_backward zeroes it, accumulates into it and then adds (p.accumulate) or writes it into
// dq. Where such a call gives none, it takes one from `pool`. plan: backward_dq_accumulator(p)
// where the caller has it (not asked again).
// The dQ accumulator flash_backward needs for p (floats 0: none, p.dq takes the sums): the
// transposed one of the Hopper 80-query writing kernel (sm90::bwd_dq_transposed: rows queries
// a row, backward_dq_t_rows), else an fp32 [B, Nq, H, D] one where dq is not fp32 (and the call
// not deterministic, whose dQ pass adds into dq once).
struct DqAccumulator {
  size_t floats = 0;
  bool transposed = false;
  int64_t rows = 0;
};
void flash_backward(const AttnBwdParams& p, cudaStream_t stream, cudaMemPool_t pool = nullptr,
                    void* dq_acc = nullptr, const DqAccumulator* plan = nullptr);
DqAccumulator backward_dq_accumulator(const AttnBwdParams& p);

// Which kernel flash_backward runs for p on the current device: "sm90" (as the forward, plus
// dq fp32 and not deterministic, key blocks multiples of 128), "portable" or "fp32".
std::string flash_backward_kernel(const AttnBwdParams& p);

// The Hopper kernels are persistent: at most one CTA per SM walks the work items. Tests cap the
// grid (0 = one CTA per SM) so that every CTA walks many items, and may fix how many (batch,
// head) pairs the forward interleaves (0 = by the L2 size); no effect elsewhere.
void set_persistent_grid_limit(int ctas, int group = 0);
// Pieces the last Hopper forward launch cut its last wave's items into (forward_tail_split in
// kernels/contract.hpp; 0: none, or no Hopper launch), for tests.
int forward_last_split_pieces();
// Whether this process has logged that an sm_90 call runs the portable kernels only because
// its mask blocks are not multiples of 128 (once per process), for tests.
bool portable_blocks_warned();
// Short items per (batch, head) pair of the last Hopper forward launch (forward_short_items in
// kernels/contract.hpp; 0: none, or no Hopper launch), for tests.
int forward_last_short_items();
// Keys of the narrow first key tile of the last Hopper forward launch's walks by position (head
// dim 128 without causality: 64 or 128 where Nk is that much over a multiple of 192, or over
// runs where most runs leave that much, fwd_runs_narrow; 0: none, or no Hopper launch), for
// tests.
int forward_last_narrow_keys();
// Parts the last Hopper backward launch cut its last round's works into (backward_tail_split
// in kernels/contract.hpp; 0: none, or no Hopper launch), for tests.
int backward_last_tail_parts();
// Whether the last backward call's kernel wrote dk and dv itself (AttnBwdParams::accumulate
// false on the Hopper kernels that can: sm90::bwd_writes_dkv) rather than having them zeroed
// and adding, for tests.
bool backward_last_wrote_dkv();
// Whether that call's kernel wrote them by TMA stores from shared memory (16-bit dk and dv with
// 16-byte aligned bases and strides, head dim 128's writing kernel), for tests.
bool backward_last_stored_dkv_by_tma();
// Whether the last flash_backward call added dQ into the transposed accumulator, for tests.
bool backward_last_dq_transposed();

}  // namespace longattn::cuda
