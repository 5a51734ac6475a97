// Hopper (sm_90a) attention kernels: entry points the portable dispatcher
// (kernels/cuda/flash_attention.cu) calls when the device is compute capability 9.0, the library
// was built with the sm_90a kernels (LONGATTN_HAVE_SM90) and the call fits them.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/contract.hpp"
#include "kernels/cuda/flash_common.cuh"
#include "runtime/dtype.hpp"

namespace longattn::cuda::sm90 {

// Whether the forward kernel takes this call: fp16/bf16, head_dim 64 or 128, mask blocks that
// are multiples of 128 on both sides, q/k/v rows 16-byte aligned (TMA), running on sm_90, and
// LONGATTN_FLASH_KERNELS is not "portable".
bool fwd_accepts(const flash::FwdArgs& a, DType dtype, int head_dim);
// Whether an accepted forward runs the larger tiles of calls whose mask lists every key block
// they can see (a.complete) or whose rows are runs of key blocks (a.runs): 192-row query tiles
// (three consumer warpgroups) at head dim 64, 192-key tiles at head dim 128; unless
// LONGATTN_SM90_FWD_WIDE=0 (read on each call).
bool fwd_wide(const flash::FwdArgs& a, int head_dim);
// FwdArgs::gather for a call whose mask is neither complete nor one of runs (a.complete, a.runs
// set): whether the forward gathers 192-key tiles from the 64-key chunks of each row's listed
// blocks, forward_gathered_tiles (kernels/contract.hpp), unless LONGATTN_SM90_FWD_GATHER says
// otherwise ("0" never, "1" whatever the rows' length; read on each call).
int fwd_gather(const flash::FwdArgs& a, int head_dim, const BlockMaskView& mask);
// FwdArgs::runs for a call whose mask is not complete: forward_wide_runs (kernels/contract.hpp)
// unless LONGATTN_SM90_FWD_RUNS says otherwise ("0" never, "1" whenever the rows are runs).
int fwd_runs(int head_dim, const BlockMaskView& mask);
// FwdArgs::runs_narrow for a call over runs (a.runs set): forward_runs_narrow_keys
// (kernels/contract.hpp) unless LONGATTN_SM90_FWD_RUNS_NARROW says otherwise ("0" never; "64"
// or "128" that width wherever every run is longer; read on each call).
int fwd_runs_narrow(const flash::FwdArgs& a, int head_dim, const BlockMaskView& mask);
// Temporaries (the split items' pieces) come from pool when given, else the device's default.
void flash_forward(const flash::FwdArgs& a, DType dtype, int head_dim, cudaStream_t stream,
                   cudaMemPool_t pool = nullptr);

// Whether the backward kernel takes this call: as the forward, plus dQ by fp32 atomics (dq fp32,
// not deterministic), key blocks multiples of 128 and query blocks multiples of 64. Needs
// a.delta filled.
bool bwd_accepts(const flash::BwdArgs& a, DType dtype, int head_dim, bool atomic_dq);
// The query tiles an accepted backward takes (backward_tiles over a.complete, a.runs and
// mask_t.block_k); each choice but the 64-query lists has its switch, whose 0 falls back to them:
// LONGATTN_SM90_BWD_M80 (80 queries by position, head dim 128), LONGATTN_SM90_BWD_M128 (128 by
// position, head dim 64), LONGATTN_SM90_BWD_M128_LISTS (128 over the lists, head dim 64).
BackwardTiles bwd_tiles(const flash::BwdArgs& a, int head_dim);
// BwdArgs::runs for a call over mask_t (backward_runs_by_position; LONGATTN_SM90_BWD_RUNS=0
// never, =1 for contiguous rows of any length).
int bwd_runs(int head_dim, const BlockMaskView& mask_t);
// Whether an accepted backward can write dk and dv rather than add them (BwdArgs::dkv_write,
// AttnBwdParams::accumulate false): dk and dv of the input dtype and tiles by position (the
// kWrite instantiations). LONGATTN_SM90_BWD_WRITE=0 turns it off (read on each call).
bool bwd_writes_dkv(const flash::BwdArgs& a, int head_dim);
// Whether a call that writes dk and dv (bwd_writes_dkv) adds dQ into the transposed accumulator
// (BwdArgs::dq_t; backward_dq_t_rows) rather than into dq: the 80-query tiles (head dim 128).
// The caller then zeroes one, passes it, and writes dq from it after the launch.
bool bwd_dq_transposed(const flash::BwdArgs& a, int head_dim);
// pool: where the split works' pieces meet when dk and dv are of the 16-bit input dtype
// (BwdArgs::piece_scratch; null: the device's default pool).
void flash_backward(const flash::BwdArgs& a, DType dtype, int head_dim, cudaStream_t stream,
                    cudaMemPool_t pool = nullptr);
// Keys per CTA of the backward (one split flag per batch, head and key block of this size).
constexpr int kBwdKeysPerCta = 128;

// Where the backward's CTAs start their walks (a.rotate): 1, staggered query tiles, for head dim
// 64 calls without causality whose mask rows are dense (row_fill >= 0.75; A/B run 18: +2-10%
// there, head dim 128 and local-window masks 0 to -8%); 2, phased walks (backward_phased_walks)
// for head dim 128 over scattered mask rows; else 0, every walk from its first tile.
// LONGATTN_SM90_BWD_ROTATE ("0", "1", "2") fixes the mode for every call.
int bwd_rotate(const flash::BwdArgs& a, int head_dim, double row_fill);
// Whether the backward adds dK and dV by TMA reduces (a.dkv_reduce): backward_dkv_reduce
// (kernels/contract.hpp); LONGATTN_SM90_DKV_TMA "0" never, "1" wherever dk and dv allow it
// (read on each call).
int bwd_dkv_reduce(int head_dim, double tiles_per_key_block, double row_fill);
// The backward's scheduler for one launch over n_works (key block, part, head, batch) works: a
// zeroed counter pair (flash_bwd_sm90_kernel resets it) and the grid, one CTA per SM (the
// set_grid_limit limit where set) or one per work with LONGATTN_SM90_BWD_PERSISTENT=0.
int* make_bwd_schedule(int n_works, int& grid);
// Measurement builds (LONGATTN_SM90_FWD_TRACE, LONGATTN_SM90_BWD_TRACE): a launch's timeline to
// the file `name`: the header line, then one line per [n0][n1] entry of v ([n0][n1][events]
// clock values): its two indices and its events.
void write_trace(const char* name, const char* header, const long long* v, int n0, int n1,
                 int events);
// Whether the forward may store o in 16-byte groups (FwdArgs::o_vec where o allows it):
// LONGATTN_SM90_O_VEC=0 turns it off (read on each call).
bool o_vec_enabled();
// Whether the backward may add into dk and dv in 16-byte groups (BwdArgs::dkv_vec where both
// allow it): LONGATTN_SM90_DKV_VEC=0 turns it off (read on each call).
bool dkv_vec_enabled();
// Splits of equal backward works whose dk and dv are of the 16-bit input dtype, their pieces
// meeting in a scratch (BwdArgs::piece_scratch): LONGATTN_SM90_BWD_PIECES=0 turns them off (read on
// each call).
bool bwd_pieces_enabled();
// Whether the persistent kernels are launched with programmatic stream serialisation (each waits
// in pdl_wait for the work before it, which lets it go out while that work finishes):
// LONGATTN_SM90_PDL=0 turns it off (read on each call).
bool pdl_enabled();
// How many parts the backward cuts the query range into (a.q_splits): backward_query_parts
// (kernels/contract.hpp) with this device's L2; a.rotate must be set first (phased walks need
// fewer parts). At head dim 64 the kernel takes them only with its dK/dV reduces.
// LONGATTN_SM90_QSPLIT=n fixes it (read on each call).
int bwd_query_splits(const flash::BwdArgs& a, int head_dim, double tiles_per_key_block,
                     double row_fill);
// The backward's work order (BwdArgs::work_group, backward_work_group; LONGATTN_SM90_BWD_GROUP=g
// sets it, 0 head by head); 0 with query parts.
int bwd_work_group(const flash::BwdArgs& a, int head_dim);

// The current device is compute capability 9.0 and LONGATTN_FLASH_KERNELS does not ask for the
// portable kernels.
bool device_enabled();

// Caps the persistent kernels' grid (0: one CTA per SM) and fixes how many (batch, head) pairs
// interleave (0: as many as half of L2 holds the K/V of).
void set_grid_limit(int ctas, int group);
// Pieces of split items in the last forward launch of this process (0: none), for tests.
int last_fwd_split_pieces();
// Short items a pair in the last forward launch of this process (0: none), for tests.
int last_fwd_short_items();
// Keys of the narrow first tile of the last forward launch's whole-range items (the kNarrowKeys
// instantiations: 64 or 128; 0: none), noted by the launch, for tests.
void note_fwd_narrow_keys(int keys);
int last_fwd_narrow_keys();
// Tail splitting of a persistent backward launch over `works` equal works of tiles_per_work
// query tiles (backward_tail_split in kernels/contract.hpp): sets a.tail_first and a.tail_parts
// or a.tail_spans (both 0: not split) and returns the launch's works. LONGATTN_SM90_BWD_TAIL=0
// turns it off, LONGATTN_SM90_BWD_SPANS=0 the spans only (read on each call); not without
// persistent CTAs.
int64_t plan_bwd_tail_split(flash::BwdArgs& a, int64_t works, int tiles_per_work);
// With dk and dv of the 16-bit input dtype, where plan_bwd_tail_split split the launch: a
// scratch from `pool` (null: the device's default pool) where the split works' pieces meet,
// setting a.piece_scratch, a.piece_counts (zeroed on `stream`) and a.piece_max, and returning
// the allocation for the caller to free after the launch. Null where nothing is split, or the
// scratch cannot be had: then the split is undone (a.tail_* cleared, works the whole works).
void* plan_bwd_pieces(flash::BwdArgs& a, int64_t& works, int tiles_per_work, int head_dim,
                      cudaMemPool_t pool, cudaStream_t stream);
// Parts or spans of split works in the last backward launch of this process (0: none), for
// tests.
int last_bwd_tail_parts();
// Whether the last Hopper backward launch wrote 16-bit dk and dv by TMA stores
// (BwdArgs::dkv_store), for tests; note_bwd_dkv_store records it at each launch.
void note_bwd_dkv_store(bool stored);
bool last_bwd_dkv_store();

}  // namespace longattn::cuda::sm90
