// The one kernel contract: attend strided query rows to a CSR list of key blocks, producing O
// and the per-row log-sum-exp L; backward from the GLOBAL O and L. CPU and CUDA both implement
// it behind kernels/backend.hpp. Plain structs of pointers, strides and sizes: no MPI, no files.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace longattn {

// Block mask in CSR form: row r (query block r) sees key blocks col_idx[row_ptr[r] .. row_ptr[r+1])
// in increasing order; partial[k] = 1 when that block needs per-element masking (causal diagonal
// or a sequence edge). Block sizes are in rows of the Q and K views the mask is used with.
struct BlockMask {
  int64_t block_q = 64;
  int64_t block_k = 64;
  int64_t num_q_blocks = 0;
  int64_t num_k_blocks = 0;
  std::vector<int64_t> row_ptr{0};
  std::vector<int32_t> col_idx;
  std::vector<uint8_t> partial;

  int64_t nnz() const { return static_cast<int64_t>(col_idx.size()); }
  double density() const {
    const double total = static_cast<double>(num_q_blocks) * static_cast<double>(num_k_blocks);
    return total > 0 ? static_cast<double>(nnz()) / total : 0.0;
  }
  // Transposed mask (rows are key blocks, columns query blocks), partial flags carried along.
  BlockMask transpose() const;
  // Checks CSR structure (monotone row_ptr, sorted unique in-range columns); throws Error.
  void validate() const;
};

// Builds a mask from a per-row list of key blocks, marking partial blocks and dropping blocks
// that are entirely in the future (causal) for query rows [0, nq) at global positions
// q_offset + i and key rows [0, nk) at k_offset + j.
struct MaskGeometry {
  int64_t nq = 0, nk = 0;
  int64_t block_q = 64, block_k = 64;
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;
};
BlockMask build_block_mask(const MaskGeometry& g, const std::vector<std::vector<int32_t>>& rows);
// The all-blocks (dense) mask, causal-trimmed when g.causal.
BlockMask dense_block_mask(const MaskGeometry& g);

// BlockMaskView::complete_diag when every row lists every key block, and when unknown.
constexpr int64_t kMaskCompleteAll = INT64_MAX;
constexpr int64_t kMaskIncomplete = INT64_MIN;

// Pointer view of a mask (host or device memory), what kernels read.
struct BlockMaskView {
  const int64_t* row_ptr = nullptr;
  const int32_t* col_idx = nullptr;
  const uint8_t* partial = nullptr;
  int64_t block_q = 64, block_k = 64;
  int64_t num_q_blocks = 0, num_k_blocks = 0;
  int64_t nnz = 0;
  // Listed blocks over the blocks their rows span (first to last listed column), over the
  // non-empty rows: 1 for contiguous rows (dense, causal, windows), about the density for
  // scattered ones. Kernels use it to plan their walk; 1 when unknown.
  double row_fill = 1.0;
  // The largest causal diagonal (q_offset - k_offset) up to which every row lists, from key
  // block 0 on, every key block its rows can see (mask_complete_diag); kMaskCompleteAll when
  // every row lists every key block, kMaskIncomplete when unknown. A call within it may walk
  // the visible key blocks arithmetically instead of reading the lists (mask_complete_for).
  int64_t complete_diag = kMaskIncomplete;
  // Every non-empty row lists one run of consecutive key blocks (mask_contiguous_rows), so a
  // row's keys are the range from its first listed block to its last; false when unknown.
  bool contiguous_rows = false;
  // Mean keys a non-empty row lists (listed blocks x block_k); 0 when unknown.
  double mean_row_keys = 0.0;
  // Where every non-empty row is one run (contiguous_rows): the fewest keys such a run spans
  // (blocks x block_k; 0 when unknown or no row lists any), and how many non-empty rows span
  // keys of each residue modulo kForwardRunTileKeys in 64-key steps (run_residue[r]: residue
  // 64 r; all 0 when unknown or block_k is no multiple of 64). Set by mask_run_stats.
  int64_t run_keys_min = 0;
  int64_t run_residue[3] = {0, 0, 0};
};
double mask_row_fill(const BlockMask& m);
bool mask_contiguous_rows(const BlockMask& m);
double mask_mean_row_keys(const BlockMask& m);
// The key tile of the Hopper forward at head dim 128 over runs (its residues in BlockMaskView).
constexpr int64_t kForwardRunTileKeys = 192;
// Fills v.run_keys_min and v.run_residue from m (left 0 unless every non-empty row is a run).
void mask_run_stats(const BlockMask& m, BlockMaskView& v);
int64_t mask_complete_diag(const BlockMask& m);
// Whether the mask lists every key block visible to a call (causal with diagonal diag, or not
// causal), so that the call's result does not depend on the lists.
bool mask_complete_for(const BlockMaskView& m, bool causal, int64_t diag);

// Forward over a mask whose rows are runs of consecutive key blocks, not listing every block a
// call can see: whether the Hopper kernel at head_dim walks each row's key range by position in
// its wide tiles (192 keys at head dim 128; 192 query rows at head dim 64, a tile walking the
// union of the runs of the two mask rows it may span) instead of the listed blocks one by one
// (128 x 128 tiles). The range's ends are masked, so short runs waste part of a tile: taken at
// head dims 64 and 128 when a row lists at least kForwardWideRunKeys keys on average.
constexpr double kForwardWideRunKeys = 2048;
bool forward_wide_runs(int64_t head_dim, bool contiguous_rows, double mean_row_keys);
// Narrow first tiles over runs (head dim 128, not causal, walked by position as above): each
// row's walk starts with a tile of R keys (64 or 128), then 192-key tiles, the last one masked
// where the run ends inside it. A run of R + 192 m keys then takes no masked tile, and the
// first tile's products, exponentials and P V cover R keys instead of 192 (local_window at 10%
// of 64K: runs of 53 blocks, 6784 keys, 64 over 35 tiles). Returns the residue R that at least
// kForwardRunNarrowShare of the non-empty rows' runs leave over a multiple of 192, where every
// run is longer than R (a walk of two tiles or more) and the keys end at the mask's last block
// (nk == num_k_blocks x block_k: no run is cut short); else 0.
constexpr double kForwardRunNarrowShare = 0.75;
// Whether narrow first tiles of `keys` keys can walk these runs at all (the rule's conditions but
// the share: head dim 128, not causal, every run longer than `keys`, no run cut short by nk).
bool forward_runs_narrow_fits(int64_t head_dim, bool causal, int64_t nk, const BlockMaskView& m,
                              int64_t keys);
int64_t forward_runs_narrow_keys(int64_t head_dim, bool causal, int64_t nk,
                                 const BlockMaskView& m);

// Forward over a mask whose rows list scattered key blocks (it neither lists every visible block
// nor has rows that are runs walked by position), not causal: whether the Hopper kernel at
// head_dim gathers each row's listed blocks, in 64-key chunks, into 192-key tiles (three chunks a
// tile, the last tile masked past its chunks) instead of walking them one 128-key tile a block.
// The softmax does not depend on the order of the keys, so one tile may join chunks of different
// blocks. Taken at head dim 128 (whose 192-key tiles beat 128-key ones by position too) for calls
// with nk a multiple of 64 (no chunk crosses the end of the keys) and no causal masking (no chunk
// needs per-element masks), when rows list at least kForwardGatherKeys keys on average: a row's
// last tile holds one to three chunks, and the work of the masked ones (up to 2 of a row's
// chunks) must stay small against the wider tiles' gain (A/B run 208, random 64K: +3 to +4% at
// 10% and 50%, +1% at 25%, -2% at 5%, whose 52 chunks a row leave the last tile a third full).
constexpr double kForwardGatherKeys = 4096;
bool forward_gathered_tiles(int64_t head_dim, bool causal, bool complete, bool runs, int64_t nk,
                            double mean_row_keys);

// Heads (batch, head pairs) whose forward items interleave in one group of the persistent
// schedule, from how many pairs' K/V fit the L2 budget (per_l2: half of the L2 over one pair's K
// and V). Non-causal calls, whose items are equal, go head by head (1): the CTAs running at once
// then span the fewest heads. Interleaving half of the L2's worth of heads read their K/V from
// DRAM 2.2-2.7 times over on an H200 (ncu, run 337: d=128 4K 137 MB against 50, 16K 463 against
// 211) and ran 0.8-2.9% slower under the power cap for the same cycles (d=128 4K / 8K / 16K
// +2.9 / +1.3 / +0.8% head by head, d=64 8K +1.8%).
// Causal calls walk each group's longest items first, so the last group must be as large as the
// others: a smaller remainder starts its longest items late and ends the launch alone. They take
// the smallest divisor of n_pairs at or above per_l2 (the budget is half of the L2: up to twice
// it measured faster than a remainder), else the largest divisor below it. (A/B runs 217-218,
// 16 heads: 12 + 4 at 4K d=128 and 8K d=64 against one group of 16, +10.7% / +12.0%; 6 + 6 + 4 at
// 8K d=128 against 8 + 8, +5.0%; 16 groups of 1 at 64K unchanged.)
int64_t forward_head_group(int64_t n_pairs, int64_t per_l2, bool causal);

// The Hopper backward's work order under causality: heads in groups of forward_head_group over
// the pairs whose Q, dO (16-bit) and fp32 dq fit half of the L2 (l2_bytes), each group walked key
// block by key block across its heads, so that every head's longest works (its first key blocks)
// start early. Head by head (0: the order of non-causal calls) a head's longest works start only
// when the heads before it are done, and the last head's end the launch nearly alone (modelled:
// 26% over the balanced time at 4K, 11% at 8K with 16 heads on 132 CTAs). Returns 0 for
// non-causal calls.
int64_t backward_work_group(int64_t n_pairs, int64_t nq, int64_t head_dim, bool causal,
                            int64_t l2_bytes);
// Work w of the Hopper backward (nx key blocks and query parts a pair, `pairs` (batch, head)
// pairs, works [0, nx * pairs)): its key block and part x and its pair. group 0: pair by pair
// (x = w mod nx); group g > 0: pairs in groups of g (the last one smaller if g does not divide
// pairs), each group's works x by x across its pairs. Either way a bijection onto
// [0, nx) x [0, pairs).
template <class I>
struct BackwardWorkPos {
  I x, pair;
};
template <class I>
constexpr BackwardWorkPos<I> backward_work_pos(I w, I nx, I pairs, I group) {
  if (group <= 0) return {w % nx, w / nx};
  const I per_group = nx * group;
  const I g0 = w / per_group * group;
  const I size = pairs - g0 < group ? pairs - g0 : group;
  const I r = w % per_group;
  return {r / size, g0 + r % size};
}

// Tail splitting for a persistent forward over equal items (non-causal calls whose mask lists
// every key block): `items` items of `key_tiles` key tiles each on `ctas` CTAs leave a last,
// partial wave of items % ctas items (all items when fewer than ctas), during which the other
// CTAs idle. Each of those last items is cut into `pieces` ranges of `tiles_per_piece` key
// tiles, processed as separate items and merged (log-sum-exp) after the kernel. Chosen to
// minimise the last wave's time, counting kForwardItemOverheadTiles of fixed work per item or
// piece and the merge: kForwardMergeFixedTiles for its launch, and per piece the time the GPU
// takes to read the piece's fp32 o back, about kForwardMergePieceKeys keys of one CTA's work
// (`key_tile` keys a tile). Taken only when that saves at least a tenth of an item; pieces = 0
// when not taken. (8K at head dim 64 measured 9.8% faster split; 4K, whose best split the merge
// brings to 0.91 of an item, 3.8% slower.)
constexpr double kForwardItemOverheadTiles = 2.0;
constexpr double kForwardMergeFixedTiles = 2.0;
constexpr double kForwardMergePieceKeys = 1.5;
struct ForwardTailSplit {
  int64_t first = 0;          // items [first, first + items) are split
  int64_t items = 0;
  int64_t pieces = 0;         // pieces per split item (every one non-empty)
  int64_t tiles_per_piece = 0;
  double tail_cost = 1.0;     // the split last wave's time, in items
};
ForwardTailSplit forward_tail_split(int64_t items, int64_t ctas, int64_t key_tiles,
                                    int64_t key_tile = 128, int64_t max_pieces = 8);

// Items of two heights for the persistent forward over equal key walks (non-causal calls over
// complete masks on the three-warpgroup kernel: 192-row items, a warpgroup of 64 rows each; a
// warpgroup whose rows all lie past its item's end sits the item out). Each (batch, head) pair's
// nq rows are cut into `tall` items of rows_tall rows, then `shorts` items of rows_short rows,
// which the counter hands out after every tall one. A tall item costs 1, a short one short_cost
// (its third warpgroup idle; measured on the GPU), so where the one-height cut leaves a last
// round only partly busy (4K at head dim 64: 352 items, 2.67 rounds of 132 CTAs, 3 rounds of
// time), trading tall items for short ones fills the rounds instead: 256 tall and 128 short
// items take 2 + short_cost. Chosen to minimise the makespan of the counter's list schedule on
// `ctas` CTAs; taken when it is at least 2% under `baseline` (the one-height cut's time in items:
// its rounds, or its last round split, forward_tail_split). Only for launches of at most 16
// rounds (beyond, a round is under 1/16 of the time). shorts = 0: not taken.
constexpr double kForwardShortItemCost = 0.78;
struct ForwardShortItems {
  int64_t tall = 0;    // per pair
  int64_t shorts = 0;  // per pair
  double makespan = 0.0;
};
// Makespan, in tall items, of `tall` items of cost 1 then `shorts` of cost short_cost handed out
// in that order to whichever of `ctas` CTAs is free first.
double list_makespan(int64_t tall, int64_t shorts, int64_t ctas, double short_cost);
// The head-dim-128 forward's narrow first tile (the kNarrowKeys instantiations): for a
// non-causal call over a complete mask of nk keys, nk % key_tile when that is 64 or 128 and nk
// is more than one tile, and the launch of `items` items on `ctas` CTAs has no tail split
// (forward_tail_split; tail_split: whether the launch would plan one), so every item's walk is
// a narrow tile and whole ones; else 0.
int64_t forward_narrow_keys(int64_t nk, int64_t items, int64_t ctas, bool tail_split,
                            int64_t key_tile = 192);
ForwardShortItems forward_short_items(int64_t nq, int64_t pairs, int64_t ctas, double baseline,
                                      int64_t rows_tall = 192, int64_t rows_short = 128,
                                      double short_cost = kForwardShortItemCost);

// Tail splitting for the persistent Hopper backward over equal works (non-causal calls whose mask
// lists every key block, walked by position: one work per key block and (batch, head), every
// work `tiles_per_work` query tiles): `works` works on `ctas` CTAs leave a last, partial round of
// works % ctas works (all when fewer than ctas) during which the other CTAs idle. That round is
// cut one of two ways, both adding their dK and dV by TMA reduces (which add in any order):
// - parts: each of its works cut along its query range into `parts` parts (the first parts one
//   tile longer where the tiles do not divide), taken as works of their own;
// - spans: its works' query tiles, one after the other, cut into `spans` = ctas equal spans, one
//   a CTA, each the end of one work and, where it crosses into the next, the start of that one
//   (backward_span_piece): every CTA then ends at about the same time, where parts leave the
//   rounds of parts partial too (8K at head dim 128: 100 works of 103 tiles on 132 CTAs; no
//   count of parts saves a tenth of a work, spans of 78-79 tiles save a fifth).
// Each is costed as the last round's time, counting kBackwardWorkOverheadTiles of fixed work per
// work, part or piece (K and V loaded, dK and dV added), and taken when that saves at least a
// tenth of a work, at least 2 tiles a part or span: the count of parts that costs least, else
// spans (parts, whose pieces the counter balances over CTAs that end their whole works at
// different times, measured faster where both save: 16K, run 356). Neither: parts = spans = 0.
constexpr double kBackwardWorkOverheadTiles = 4.0;
struct BackwardTailSplit {
  int64_t first = 0;  // works [first, first + items) are split
  int64_t items = 0;
  int64_t parts = 0;
  int64_t spans = 0;
  double tail_cost = 1.0;  // the split last round's time, in works
  // The launch's items in place of the split works.
  int64_t launch_items() const { return spans > 0 ? spans : items * parts; }
};
BackwardTailSplit backward_tail_split(int64_t works, int64_t ctas, int64_t tiles_per_work,
                                      int64_t max_parts = 32, bool allow_spans = true);
// Piece `piece` of span k of `spans` over the query tiles of tail_works equal works of `tiles`
// tiles taken one after the other: the tail work (from 0) and its tiles [lo, hi). Spans at least
// as many as the works are shorter than a work, so they have one piece or two.
template <class I>
struct BackwardSpanPiece {
  I work;
  I lo;
  I hi;
  bool more;  // another piece follows (the span goes on into the next work)
};
template <class I>
constexpr BackwardSpanPiece<I> backward_span_piece(I k, I tail_works, I tiles, I spans,
                                                   int piece) {
  const I total = tail_works * tiles;
  const I s0 = k * total / spans, s1 = (k + 1) * total / spans;
  const I j = s0 / tiles + piece;
  const I w0 = j * tiles, w1 = w0 + tiles;
  return {j, (s0 > w0 ? s0 : w0) - w0, (s1 < w1 ? s1 : w1) - w0, s1 > w1};
}

// Where a split work's pieces go when dk and dv are of the 16-bit input dtype (no reduces): each
// piece stores its fp32 sums, and the last to finish adds them in piece order and writes the
// result, so the sums do not depend on which piece ends last. The span holding tile x of the
// tail's `total` tiles cut into `spans` spans (backward_span_piece).
template <class I>
constexpr I backward_span_of(I x, I total, I spans) {
  return ((x + 1) * spans + total - 1) / total - 1;
}
// Which piece of its work a span's piece is, and how many pieces that work has.
template <class I>
struct BackwardPieceOf {
  I index;
  I count;
};
template <class I>
constexpr BackwardPieceOf<I> backward_span_piece_of(I work, I tail_works, I tiles, I spans,
                                                    I span) {
  const I total = tail_works * tiles;
  const I first = backward_span_of(work * tiles, total, spans);
  const I last = backward_span_of((work + 1) * tiles - 1, total, spans);
  return {span - first, last - first + 1};
}
// The most pieces any work of the split has: tail_parts, or for spans the largest count of
// backward_span_piece_of.
int64_t backward_split_max_pieces(const BackwardTailSplit& t, int64_t tiles_per_work);

// Parts of the query range for a key-stationary backward whose CTAs walk a key block's listed
// query tiles in order: with scattered rows (row_fill < 0.75) the CTAs running together touch
// a head's whole query range, so the range is cut until one part's Q and dO (16-bit) and fp32
// dq of a head fit in half of the L2 (l2_bytes), keeping at least 24 listed query tiles per CTA
// and part on average, at most 4 parts. Contiguous rows (dense, causal, windows) keep one part:
// their CTAs walk the same tiles together. With phased walks (backward_phased_walks) the CTAs
// running together touch a window of the range rather than all of it, taken as a quarter: a
// part's range may then be 4x half of the L2 (at 64K, d=128: one part; A/B run 61 measured one
// part 1-4% faster than the unphased rule's 2-3 at 5-25% density; at 50%, two parts measured
// +1.9% and +0.3% against one in A/B runs 63 and 64: not taken). Below head dim 128 the window
// is not taken as a quarter and a part keeps at least 48 tiles (A/B run 98, random 64K, d=64,
// 32 MB per head: 2 parts +3.3% at 10% (51 tiles a part), +0.5% at 25%, -1.2% at 5% (25 tiles
// a part), 4 parts -1 to -18%); the Hopper kernel takes parts there only with its dK/dV reduces.
int backward_query_parts(int64_t nq, int64_t head_dim, double tiles_per_key_block,
                         double row_fill, int64_t l2_bytes, bool phased_walks = false);
// Staggered walks (LONGATTN_SM90_BWD_ROTATE=1, measurements only): the first walk step of the
// CTA of key block kb (of nkb) over its n_items listed query tiles, the starts spread evenly over
// the items in key-block order, so the CTAs running together reduce into different dQ tiles
// rather than all into the first one. The default for head dim 64 non-causal calls until phased
// walks replaced it there (below); 0 to -8% at head dim 128 (A/B run 18).
constexpr int64_t backward_walk_start(int64_t kb, int64_t nkb, int64_t n_items) {
  return n_items > 0 && nkb > 0 ? kb * n_items / nkb % n_items : 0;
}
// Phased walks for scattered mask rows (row_fill < 0.75): their works differ in length, so CTAs
// that all started at their first query tile drift apart, and those running together read (and
// add dQ into) the whole query range at once, more than L2 holds at long lengths. Work w of a
// persistent launch of `ctas` CTAs starts about w / ctas work-times after the first; starting
// its walk at the fraction (w mod ctas) / ctas of its items puts every CTA near the same
// fraction of the query range at any moment (wrapping around), so the CTAs running together
// walk one window of it. Taken at both head dims (A/B runs 60-62 at 128: random 64K 2-10%
// +4-6.5%; runs 63-64 at 64: 2% +2%, 5% +10%, 10% +12%, 25% +9-12%). Also taken at head dim 64
// without causality on any rows: equal works then keep their phases, so the CTAs running
// together spread over the whole query range and add into different dQ tiles, as staggered
// walks did (A/B runs 64-65 against staggered walks: 4K-16K +0-0.8%, 32K +1.6%, 64K
// +2.1-3.4%). Not at head dim 128 on contiguous rows (64K dense -4.5%, run 65: Q, dO and dq of
// the whole range do not fit in L2), nor causal ones (run 64: -3.9%).
bool backward_phased_walks(int64_t head_dim, bool causal, double row_fill);
// Whether the Hopper backward adds its dK and dV sums by TMA reduces from shared memory (where
// dk and dv are fp32 that TMA can address) instead of loading, adding and storing them from
// registers; tiles_per_key_block: listed 64-query tiles per 128-key block on average (a work's
// length). Head dim 64: always (A/B run 81: +0.4 to +1.2% dense and block-sparse). Head dim 128
// stages them in four rounds through smaller buffers, each waiting for the reduce two rounds
// back to have read its buffer; taken for works under 112 tiles, where the epilogue is a larger
// share (A/B runs 87, 90, 91, medians of three rounds: dense 4K +1.1%, causal 4K +3.5%, causal
// 8K +2.3%, local_window 10% / 5% / 2% +0.5% / +1.3-1.7% / +2.6%, random 10% / 5% +1.2% /
// +1.0-1.5%; the query parts then also add in any order), but not for scattered rows under 32
// tiles (random 2%: -3.9%, its Q/dO loads mostly from DRAM, so the rounds' reads wait behind
// them), nor longer works (dense 8K -0.3%, 16K / 64K -0.1% / -0.2%, causal 16K -0.6%).
bool backward_dkv_reduce(int64_t head_dim, double tiles_per_key_block, double row_fill);
// (Any integer type: the kernel takes it in 32 bits, where (ctas - 1) * n_items fits.)
template <class I>
constexpr I backward_phase_start(I work, I ctas, I n_items) {
  return n_items > 0 && ctas > 0 ? work % ctas * n_items / ctas : 0;  // work >= 0
}
// Whether the Hopper backward walks the tiles of each key block's query range by position (80
// queries at head dim 128, 128 at head dim 64) over a mask that is not complete: every row of
// the transposed mask one run of query blocks (contiguous_rows, windows) of at least
// kBackwardRunQueries queries on average (mean_row_keys), where the tiles past a run's end (at
// most 79 or 127 queries a work, masked) cost little. A/B run 125 (head dim 128, local_window
// 64K against the 64-query tiles): 50-5% +5.4 to +6.2%, 2% (1310 queries a row) +4.7%; shorter
// rows not measured. Head dim 64: A/B run 130.
constexpr double kBackwardRunQueries = 1024;
bool backward_runs_by_position(int64_t head_dim, bool contiguous_rows, double mean_row_keys);
// The query tiles the Hopper backward walks for a call (kernels/cuda/sm90/flash_bwd_sm90.cuh):
// FlashAttention-3's tile for the head dim (80 queries at 128, 128 at 64) by position over each
// key block's query range where the mask lists every visible block (complete) or its transposed
// rows are runs (backward_runs_by_position); at head dim 64 the 128-query tiles also over the
// lists of other masks whose query blocks (query_block) are 128-multiples; else the 64-query
// tiles of the mask's lists. (Each choice but the last can be turned off by its switch.)
enum class BackwardTiles { kListed64, kPosition80, kPosition128, kListed128 };
BackwardTiles backward_tiles(int64_t head_dim, bool complete, bool runs, int64_t query_block);
// The transposed dQ accumulator of the Hopper backward's 80-query writing kernel
// (BwdArgs::dq_t): fp32, per (batch, head) backward_dq_t_rows(nq) / 80 blocks of [D][80 slots]
// (nq rounded up to 80), one a tile of 80 queries, so that a consumer warpgroup's 64 columns of a
// tile are 20 KB in one piece (one bulk reduce). Query 8 n + 2 t + e of a tile (n < 10, t < 4,
// e < 2) is word t of 16-byte chunk 2 n + e, the order stmatrix stores a wgmma fragment's
// columns in, and chunk k of column d's row lies at k ^ ((d >> 1) & 3) (a swizzle within groups
// of four chunks, so the stores of eight rows meet no bank twice).
constexpr int64_t backward_dq_t_rows(int64_t nq) { return (nq + 79) / 80 * 80; }
constexpr int64_t backward_dq_t_slot(int64_t j, int64_t d) {  // j < 80: query within its tile
  const int64_t chunk = 2 * (j / 8) + (j & 1);
  return 4 * (chunk ^ ((d >> 1) & 3)) + ((j & 7) >> 1);
}
// Query q, column d (of D) within its (batch, head)'s part of the accumulator.
constexpr int64_t backward_dq_t_offset(int64_t q, int64_t d, int64_t D) {
  return ((q / 80) * D + d) * 80 + backward_dq_t_slot(q % 80, d);
}
// The first query tile (of `tile` rows from query 0, nq queries) that some key of a causal key
// block starting at key k0 sees (key j visible from query q iff j - q <= diag): the tile of
// query k0 - diag; ceil(nq / tile) when no query below nq sees the block.
template <class I>
constexpr I backward_first_tile(I k0, I diag, I nq, I tile) {
  const I q = k0 - diag;
  if (q <= 0) return 0;
  if (q >= nq) return (nq + tile - 1) / tile;
  return q / tile;
}
BlockMaskView host_mask_view(const BlockMask& m);

// Forward: for each batch b, head h, query row i of Q (Nq rows), over the key rows j of the
// listed blocks that are visible (j < Nk; causal: k_offset + j <= q_offset + i):
//   s_ij = scale * <q_i, k_j>,  L_i = log sum_j exp(s_ij),  O_i = sum_j exp(s_ij - L_i) v_j.
// A row that sees nothing gets O_i = 0 and L_i = -inf.
struct AttnFwdParams {
  TensorView q, k, v;  // [B, Nq, H, D], [B, Nk, H, D], [B, Nk, H, D]
  TensorView o;        // [B, Nq, H, D], written
  TensorView lse;      // [B, Nq, H, 1], fp32 (fp64 allowed on the CPU), written
  BlockMaskView mask;
  double scale = 0.0;  // 0 -> 1/sqrt(D)
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;
};

// Backward from the global O and L of each query row:
//   p_ij = exp(s_ij - L_i), delta_i = <dO_i, O_i>, dS_ij = p_ij (<dO_i, v_j> - delta_i),
//   dQ_i += scale sum_j dS_ij k_j,  dK_j += scale sum_i dS_ij q_i,  dV_j += sum_i p_ij dO_i.
// Gradients ACCUMULATE into dq, dk, dv (callers zero them once), so ring steps add up; with
// accumulate = false they are OVERWRITTEN (as if zeroed first: the same bits), so a single call
// (the variants' backward, SDPA's) needs no fill of its gradients and, where the kernel writes
// them directly, no read of them.
struct AttnBwdParams {
  TensorView q, k, v, o, d_o;  // o: global output of these query rows
  TensorView lse;              // global L of these query rows [B, Nq, H, 1]
  TensorView delta;            // optional precomputed [B, Nq, H, 1]; data == nullptr -> computed
  TensorView dq, dk, dv;       // accumulated
  BlockMaskView mask;          // by query block
  BlockMaskView mask_t;        // transpose of mask (by key block), for key-stationary kernels
  double scale = 0.0;
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;
  bool deterministic = false;
  bool accumulate = true;  // false: dq, dk, dv overwritten
};

// Shorthand for building one call's parameters: the tensors, the gradients and the positions.
struct AttnTensors {
  TensorView q, k, v, o, lse;
};
struct AttnGrads {
  TensorView d_o, dq, dk, dv;
};
struct AttnPositions {
  double scale = 0.0;
  bool causal = false;
  int64_t q_offset = 0, k_offset = 0;
};
AttnFwdParams make_fwd_params(const AttnTensors& t, const BlockMaskView& mask,
                              const AttnPositions& pos);
AttnBwdParams make_bwd_params(const AttnTensors& t, const AttnGrads& g,
                              const BlockMaskView& mask, const BlockMaskView& mask_t,
                              const AttnPositions& pos);

inline double effective_scale(double scale, int64_t D) {
  return scale > 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(D));
}

// Shape and dtype checks shared by every backend; throw InvalidArgument naming the argument.
void validate_forward(const AttnFwdParams& p);
void validate_backward(const AttnBwdParams& p);

}  // namespace longattn
