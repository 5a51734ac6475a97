// Block-mask construction, transposition, validation, and the contract's shape checks.
#include "kernels/contract.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/error.hpp"

namespace longattn {

BlockMask BlockMask::transpose() const {
  BlockMask t;
  t.block_q = block_k;
  t.block_k = block_q;
  t.num_q_blocks = num_k_blocks;
  t.num_k_blocks = num_q_blocks;
  t.row_ptr.assign(static_cast<size_t>(num_k_blocks) + 1, 0);
  for (int32_t c : col_idx) t.row_ptr[static_cast<size_t>(c) + 1]++;
  for (int64_t i = 0; i < num_k_blocks; ++i) t.row_ptr[i + 1] += t.row_ptr[i];
  t.col_idx.resize(col_idx.size());
  t.partial.resize(col_idx.size());
  std::vector<int64_t> fill(t.row_ptr.begin(), t.row_ptr.end() - 1);
  for (int64_t r = 0; r < num_q_blocks; ++r)  // rows in order, so each column list is sorted
    for (int64_t k = row_ptr[r]; k < row_ptr[r + 1]; ++k) {
      const int64_t dst = fill[col_idx[k]]++;
      t.col_idx[dst] = static_cast<int32_t>(r);
      t.partial[dst] = partial[k];
    }
  return t;
}

void BlockMask::validate() const {
  LONGATTN_ASSERT(static_cast<int64_t>(row_ptr.size()) == num_q_blocks + 1, "row_ptr size");
  LONGATTN_ASSERT(row_ptr.front() == 0 && row_ptr.back() == nnz(), "row_ptr bounds");
  LONGATTN_ASSERT(partial.size() == col_idx.size(), "partial size");
  for (int64_t r = 0; r < num_q_blocks; ++r) {
    LONGATTN_ASSERT(row_ptr[r] <= row_ptr[r + 1], "row_ptr must be monotone");
    for (int64_t k = row_ptr[r]; k < row_ptr[r + 1]; ++k) {
      LONGATTN_ASSERT(col_idx[k] >= 0 && col_idx[k] < num_k_blocks, "column out of range");
      LONGATTN_ASSERT(k == row_ptr[r] || col_idx[k - 1] < col_idx[k],
                      "columns must be sorted and unique");
    }
  }
}

namespace {
// Classifies block (qb, kb): 0 = nothing visible, 1 = partly visible, 2 = fully visible.
int classify(const MaskGeometry& g, int64_t qb, int64_t kb) {
  const int64_t q0 = qb * g.block_q, q1 = std::min(g.nq, q0 + g.block_q);  // rows [q0, q1)
  const int64_t k0 = kb * g.block_k, k1 = std::min(g.nk, k0 + g.block_k);
  if (q0 >= q1 || k0 >= k1) return 0;
  const bool edge = (q1 - q0) < g.block_q || (k1 - k0) < g.block_k;
  if (!g.causal) return edge ? 1 : 2;
  const int64_t first_q = g.q_offset + q0, last_q = g.q_offset + q1 - 1;
  const int64_t first_k = g.k_offset + k0, last_k = g.k_offset + k1 - 1;
  if (first_k > last_q) return 0;        // every key after every query
  if (last_k <= first_q && !edge) return 2;  // every key at or before every query
  return 1;
}

// Items of a persistent launch's last, partial round on ctas CTAs: all of them when fewer than
// ctas, none when the rounds are whole.
int64_t last_round_items(int64_t items, int64_t ctas) {
  return items % ctas == 0 ? 0 : (items < ctas ? items : items % ctas);
}

// The part count s in [2, max_parts] (at least 2 tiles a part) whose cost(s), the split last
// round's time in whole items, is least; 0 unless it saves at least a tenth of an item. Both tail
// splits (forward pieces, backward parts) choose by it.
template <typename Cost>
int64_t cheapest_split(int64_t tiles, int64_t max_parts, Cost cost, double& best_cost) {
  best_cost = 1.0;
  int64_t best = 0;
  for (int64_t s = 2; s <= max_parts && 2 * s <= tiles; ++s) {
    const double c = cost(s);
    if (c < best_cost - 1e-12) {
      best_cost = c;
      best = s;
    }
  }
  return best > 0 && best_cost <= 0.9 ? best : 0;
}
}  // namespace

BlockMask build_block_mask(const MaskGeometry& g, const std::vector<std::vector<int32_t>>& rows) {
  LONGATTN_CHECK_ARG(g.block_q > 0, "block_q", g.block_q, "must be positive");
  LONGATTN_CHECK_ARG(g.block_k > 0, "block_k", g.block_k, "must be positive");
  BlockMask m;
  m.block_q = g.block_q;
  m.block_k = g.block_k;
  m.num_q_blocks = (g.nq + g.block_q - 1) / g.block_q;
  m.num_k_blocks = (g.nk + g.block_k - 1) / g.block_k;
  LONGATTN_CHECK_ARG(static_cast<int64_t>(rows.size()) == m.num_q_blocks, "mask rows",
                     rows.size(), "must equal the number of query blocks " +
                                      std::to_string(m.num_q_blocks));
  m.row_ptr.assign(1, 0);
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    std::vector<int32_t> cols = rows[r];
    std::sort(cols.begin(), cols.end());
    cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
    for (int32_t c : cols) {
      LONGATTN_CHECK_ARG(c >= 0 && c < m.num_k_blocks, "key block", c,
                         "must be in [0, " + std::to_string(m.num_k_blocks) + ")");
      const int cls = classify(g, r, c);
      if (cls == 0) continue;
      m.col_idx.push_back(c);
      m.partial.push_back(cls == 1 ? 1 : 0);
    }
    m.row_ptr.push_back(static_cast<int64_t>(m.col_idx.size()));
  }
  return m;
}

BlockMask dense_block_mask(const MaskGeometry& g) {
  const int64_t nqb = (g.nq + g.block_q - 1) / g.block_q;
  const int64_t nkb = (g.nk + g.block_k - 1) / g.block_k;
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nqb));
  for (auto& r : rows)
    for (int64_t c = 0; c < nkb; ++c) r.push_back(static_cast<int32_t>(c));
  return build_block_mask(g, rows);
}

double mask_row_fill(const BlockMask& m) {
  int64_t listed = 0, spanned = 0;
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    const int64_t b = m.row_ptr[r], e = m.row_ptr[r + 1];
    if (e == b) continue;
    listed += e - b;
    spanned += m.col_idx[e - 1] - m.col_idx[b] + 1;  // columns sorted within a row
  }
  return spanned > 0 ? static_cast<double>(listed) / static_cast<double>(spanned) : 1.0;
}

bool mask_contiguous_rows(const BlockMask& m) {
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    const int64_t b = m.row_ptr[r], e = m.row_ptr[r + 1];
    if (e > b && m.col_idx[e - 1] - m.col_idx[b] + 1 != e - b) return false;
  }
  return true;
}

double mask_mean_row_keys(const BlockMask& m) {
  int64_t rows = 0;
  for (int64_t r = 0; r < m.num_q_blocks; ++r) rows += m.row_ptr[r + 1] > m.row_ptr[r] ? 1 : 0;
  return rows > 0 ? static_cast<double>(m.nnz()) * static_cast<double>(m.block_k) /
                        static_cast<double>(rows)
                  : 0.0;
}

void mask_run_stats(const BlockMask& m, BlockMaskView& v) {
  v.run_keys_min = 0;
  v.run_residue[0] = v.run_residue[1] = v.run_residue[2] = 0;
  if (m.block_k <= 0 || m.block_k % 64 != 0 || !mask_contiguous_rows(m)) return;
  int64_t least = 0, counts[3] = {0, 0, 0};
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    const int64_t blocks = m.row_ptr[r + 1] - m.row_ptr[r];
    if (blocks == 0) continue;
    const int64_t keys = blocks * m.block_k;
    least = least == 0 ? keys : std::min(least, keys);
    ++counts[(keys % kForwardRunTileKeys) / 64];
  }
  v.run_keys_min = least;
  for (int i = 0; i < 3; ++i) v.run_residue[i] = counts[i];
}

bool forward_runs_narrow_fits(int64_t head_dim, bool causal, int64_t nk, const BlockMaskView& m,
                              int64_t keys) {
  return head_dim == 128 && !causal && m.contiguous_rows && m.run_keys_min > keys &&
         nk == m.num_k_blocks * m.block_k;
}

int64_t forward_runs_narrow_keys(int64_t head_dim, bool causal, int64_t nk,
                                 const BlockMaskView& m) {
  const int64_t rows = m.run_residue[0] + m.run_residue[1] + m.run_residue[2];
  if (rows <= 0) return 0;
  for (int r = 1; r <= 2; ++r) {
    const int64_t keys = 64 * r;
    const double share = static_cast<double>(m.run_residue[r]) / static_cast<double>(rows);
    if (share >= kForwardRunNarrowShare && forward_runs_narrow_fits(head_dim, causal, nk, m, keys))
      return keys;
  }
  return 0;
}

bool forward_wide_runs(int64_t head_dim, bool contiguous_rows, double mean_row_keys) {
  return (head_dim == 64 || head_dim == 128) && contiguous_rows &&
         mean_row_keys >= kForwardWideRunKeys;
}

bool forward_gathered_tiles(int64_t head_dim, bool causal, bool complete, bool runs, int64_t nk,
                            double mean_row_keys) {
  return head_dim == 128 && !causal && !complete && !runs && nk > 0 && nk % 64 == 0 &&
         mean_row_keys >= kForwardGatherKeys;
}

int64_t forward_head_group(int64_t n_pairs, int64_t per_l2, bool causal) {
  if (n_pairs <= 1 || !causal) return 1;
  const int64_t budget = std::clamp<int64_t>(per_l2, 1, n_pairs);
  if (n_pairs % budget == 0) return budget;
  for (int64_t g = budget + 1; g <= std::min(n_pairs, 2 * budget); ++g)
    if (n_pairs % g == 0) return g;
  for (int64_t g = budget - 1; g > 1; --g)
    if (n_pairs % g == 0) return g;
  return 1;
}

int64_t backward_work_group(int64_t n_pairs, int64_t nq, int64_t head_dim, bool causal,
                            int64_t l2_bytes) {
  if (!causal || n_pairs <= 0) return 0;
  const int64_t per_pair = 8 * std::max<int64_t>(nq, 1) * std::max<int64_t>(head_dim, 1);
  return forward_head_group(n_pairs, (l2_bytes / 2) / per_pair, true);
}

ForwardTailSplit forward_tail_split(int64_t items, int64_t ctas, int64_t key_tiles,
                                    int64_t key_tile, int64_t max_pieces) {
  ForwardTailSplit best;
  if (items <= 0 || ctas <= 0 || key_tiles < 4 || key_tile <= 0) return best;
  const int64_t tail = last_round_items(items, ctas);
  if (tail == 0) return best;
  const double one = static_cast<double>(key_tiles) + kForwardItemOverheadTiles;
  auto per_piece = [&](int64_t s) { return (key_tiles + s - 1) / s; };
  auto pieces_of = [&](int64_t per) { return (key_tiles + per - 1) / per; };  // none empty
  double best_cost = 1.0;
  const int64_t s = cheapest_split(
      key_tiles, max_pieces,
      [&](int64_t n) {
        const int64_t per = per_piece(n), pieces = pieces_of(per);
        const int64_t waves = (tail * pieces + ctas - 1) / ctas;
        const double merge = kForwardMergeFixedTiles + static_cast<double>(tail * pieces) *
                                                           kForwardMergePieceKeys /
                                                           static_cast<double>(key_tile);
        return (static_cast<double>(waves) *
                    (static_cast<double>(per) + kForwardItemOverheadTiles) +
                merge) /
               one;
      },
      best_cost);
  if (s == 0) return best;
  best.tiles_per_piece = per_piece(s);
  best.pieces = pieces_of(best.tiles_per_piece);
  best.first = items - tail;
  best.items = tail;
  best.tail_cost = best_cost;
  return best;
}

double list_makespan(int64_t tall, int64_t shorts, int64_t ctas, double short_cost) {
  if (ctas <= 0) return 0.0;
  // After the tall items: ctas - rem CTAs free at q, rem at q + 1. Each short item starts at the
  // earliest free time: the starts are q + k c (ctas - rem of each) and q + 1 + k c (rem of each),
  // taken in increasing order.
  const int64_t q = tall / ctas, rem = tall % ctas;
  const double lo = static_cast<double>(q);
  double end = static_cast<double>(q + (rem > 0 ? 1 : 0));
  if (shorts <= 0) return end;
  const double c = short_cost;
  int64_t placed = 0, ka = 0, kb = 0;
  double start = lo;
  while (placed < shorts) {
    const double xa = lo + static_cast<double>(ka) * c;
    const double xb = rem > 0 ? lo + 1.0 + static_cast<double>(kb) * c
                              : std::numeric_limits<double>::infinity();
    if (xa <= xb) {
      placed += ctas - rem;
      start = xa;
      ++ka;
    } else {
      placed += rem;
      start = xb;
      ++kb;
    }
  }
  return std::max(end, start + c);
}

int64_t forward_narrow_keys(int64_t nk, int64_t items, int64_t ctas, bool tail_split,
                            int64_t key_tile) {
  if (key_tile <= 0 || nk <= key_tile || items <= 0) return 0;
  const int64_t r = nk % key_tile;
  if (r != 64 && r != 128) return 0;
  if (tail_split && forward_tail_split(items, ctas, (nk + key_tile - 1) / key_tile, key_tile)
                            .pieces >= 2)
    return 0;
  return r;
}

ForwardShortItems forward_short_items(int64_t nq, int64_t pairs, int64_t ctas, double baseline,
                                      int64_t rows_tall, int64_t rows_short, double short_cost) {
  ForwardShortItems best;
  if (nq <= 0 || pairs <= 0 || ctas <= 0 || rows_tall <= rows_short || rows_short <= 0)
    return best;
  const int64_t whole = (nq + rows_tall - 1) / rows_tall;
  best.tall = whole;
  best.makespan = baseline;
  if ((whole * pairs + ctas - 1) / ctas > 16) return best;
  double cost = baseline;
  for (int64_t tall = whole - 1; tall >= 0; --tall) {
    const int64_t shorts = (nq - tall * rows_tall + rows_short - 1) / rows_short;
    const double m = list_makespan(tall * pairs, shorts * pairs, ctas, short_cost);
    if (m < cost - 1e-9) {
      cost = m;
      best.tall = tall;
      best.shorts = shorts;
    }
  }
  if (best.shorts > 0 && cost <= 0.98 * baseline) {
    best.makespan = cost;
    return best;
  }
  best.tall = whole;
  best.shorts = 0;
  best.makespan = baseline;
  return best;
}

BackwardTailSplit backward_tail_split(int64_t works, int64_t ctas, int64_t tiles_per_work,
                                      int64_t max_parts, bool allow_spans) {
  BackwardTailSplit best;
  if (works <= 0 || ctas <= 0 || tiles_per_work < 4) return best;
  const int64_t tail = last_round_items(works, ctas);
  if (tail == 0) return best;
  const double one = static_cast<double>(tiles_per_work) + kBackwardWorkOverheadTiles;
  double parts_cost = 1.0;
  const int64_t parts = cheapest_split(
      tiles_per_work, max_parts,
      [&](int64_t p) {
        const int64_t per = (tiles_per_work + p - 1) / p;  // the longest part
        const int64_t rounds = (tail * p + ctas - 1) / ctas;
        return static_cast<double>(rounds) *
               (static_cast<double>(per) + kBackwardWorkOverheadTiles) / one;
      },
      parts_cost);
  // Parts where they save a tenth (their pieces are short, and the counter hands them to the
  // CTAs as their whole works end, which they do not all at once: at 16K, spans measured 0.1-0.7%
  // slower than five parts a work at both head dims, run 356); spans only where no parts do:
  // one a CTA (tail < ctas), costed by the longest span's tiles and pieces.
  // (The kernel counts a span's tiles in 32 bits: (k + 1) x tail x tiles_per_work < 2^31.)
  double spans_cost = 1.0;
  if (parts == 0 && allow_spans && tail * tiles_per_work >= 2 * ctas &&
      ctas * tail * tiles_per_work < (int64_t{1} << 31)) {
    const int64_t total = tail * tiles_per_work;
    double worst = 0.0;
    for (int64_t k = 0; k < ctas; ++k) {
      const int64_t len = (k + 1) * total / ctas - k * total / ctas;
      const int pieces =
          backward_span_piece<int64_t>(k, tail, tiles_per_work, ctas, 0).more ? 2 : 1;
      worst = std::max(worst, static_cast<double>(len) + pieces * kBackwardWorkOverheadTiles);
    }
    spans_cost = worst / one;
  }
  const bool take_spans = parts == 0 && spans_cost <= 0.9;
  if (!take_spans && parts == 0) return best;
  best.first = works - tail;
  best.items = tail;
  best.parts = take_spans ? 0 : parts;
  best.spans = take_spans ? ctas : 0;
  best.tail_cost = take_spans ? spans_cost : parts_cost;
  return best;
}

int64_t backward_split_max_pieces(const BackwardTailSplit& t, int64_t tiles_per_work) {
  if (t.parts > 0) return t.parts;
  if (t.spans <= 0 || t.items <= 0 || tiles_per_work <= 0) return 0;
  int64_t most = 0;
  for (int64_t w = 0; w < t.items; ++w) {
    const int64_t first = backward_span_of(w * tiles_per_work, t.items * tiles_per_work, t.spans);
    const auto p = backward_span_piece_of<int64_t>(w, t.items, tiles_per_work, t.spans, first);
    most = std::max(most, p.count);
  }
  return most;
}

int64_t mask_complete_diag(const BlockMask& m) {
  int64_t best = kMaskCompleteAll;
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    // Leading entries 0, 1, 2, ...: the key blocks listed from block 0 on without a gap.
    int64_t prefix = 0;
    for (int64_t k = m.row_ptr[r]; k < m.row_ptr[r + 1] && m.col_idx[k] == prefix; ++k) ++prefix;
    if (prefix >= m.num_k_blocks) continue;
    // Row i of the block sees keys j <= i + diag; its last row (r + 1) block_q - 1 needs keys
    // below prefix * block_k: diag <= prefix * block_k - (r + 1) * block_q.
    best = std::min(best, prefix * m.block_k - (r + 1) * m.block_q);
  }
  return best;
}

bool mask_complete_for(const BlockMaskView& m, bool causal, int64_t diag) {
  if (!causal) return m.complete_diag == kMaskCompleteAll;
  return m.complete_diag != kMaskIncomplete && diag <= m.complete_diag;
}

int backward_query_parts(int64_t nq, int64_t head_dim, double tiles_per_key_block,
                         double row_fill, int64_t l2_bytes, bool phased_walks) {
  if (row_fill >= 0.75 || l2_bytes <= 0) return 1;
  const bool wide = head_dim >= 128;
  const double part_bytes =
      static_cast<double>(l2_bytes) / 2.0 * (phased_walks && wide ? 4.0 : 1.0);
  const double head_bytes = static_cast<double>(nq) * static_cast<double>(head_dim) * (2 + 2 + 4);
  const double min_tiles = wide ? 24.0 : 48.0;
  int n = static_cast<int>(std::ceil(head_bytes / part_bytes));
  n = std::clamp(n, 1, 4);
  while (n > 1 && tiles_per_key_block / n < min_tiles) --n;
  return n;
}

bool backward_phased_walks(int64_t head_dim, bool causal, double row_fill) {
  if (head_dim != 64 && head_dim != 128) return false;
  return row_fill < 0.75 || (head_dim == 64 && !causal);
}

bool backward_runs_by_position(int64_t head_dim, bool contiguous_rows, double mean_row_keys) {
  return (head_dim == 128 || head_dim == 64) && contiguous_rows &&
         mean_row_keys >= kBackwardRunQueries;
}

BackwardTiles backward_tiles(int64_t head_dim, bool complete, bool runs, int64_t query_block) {
  const bool by_position = complete || runs;
  if (head_dim == 128) return by_position ? BackwardTiles::kPosition80 : BackwardTiles::kListed64;
  if (head_dim == 64) {
    if (by_position) return BackwardTiles::kPosition128;
    if (query_block > 0 && query_block % 128 == 0) return BackwardTiles::kListed128;
  }
  return BackwardTiles::kListed64;
}

bool backward_dkv_reduce(int64_t head_dim, double tiles_per_key_block, double row_fill) {
  if (head_dim == 64) return true;
  if (head_dim != 128 || tiles_per_key_block >= 112.0) return false;
  return row_fill >= 0.75 || tiles_per_key_block >= 32.0;
}

BlockMaskView host_mask_view(const BlockMask& m) {
  BlockMaskView v;
  v.row_ptr = m.row_ptr.data();
  v.col_idx = m.col_idx.data();
  v.partial = m.partial.data();
  v.block_q = m.block_q;
  v.block_k = m.block_k;
  v.num_q_blocks = m.num_q_blocks;
  v.num_k_blocks = m.num_k_blocks;
  v.nnz = m.nnz();
  v.row_fill = mask_row_fill(m);
  v.complete_diag = mask_complete_diag(m);
  v.contiguous_rows = mask_contiguous_rows(m);
  v.mean_row_keys = mask_mean_row_keys(m);
  mask_run_stats(m, v);
  return v;
}

AttnFwdParams make_fwd_params(const AttnTensors& t, const BlockMaskView& mask,
                              const AttnPositions& pos) {
  AttnFwdParams p;
  p.q = t.q;
  p.k = t.k;
  p.v = t.v;
  p.o = t.o;
  p.lse = t.lse;
  p.mask = mask;
  p.scale = pos.scale;
  p.causal = pos.causal;
  p.q_offset = pos.q_offset;
  p.k_offset = pos.k_offset;
  return p;
}

AttnBwdParams make_bwd_params(const AttnTensors& t, const AttnGrads& g,
                              const BlockMaskView& mask, const BlockMaskView& mask_t,
                              const AttnPositions& pos) {
  AttnBwdParams p;
  p.q = t.q;
  p.k = t.k;
  p.v = t.v;
  p.o = t.o;
  p.lse = t.lse;
  p.d_o = g.d_o;
  p.dq = g.dq;
  p.dk = g.dk;
  p.dv = g.dv;
  p.mask = mask;
  p.mask_t = mask_t;
  p.scale = pos.scale;
  p.causal = pos.causal;
  p.q_offset = pos.q_offset;
  p.k_offset = pos.k_offset;
  return p;
}

namespace {
void check_same_bhd(const TensorView& a, const char* an, const TensorView& b, const char* bn) {
  LONGATTN_CHECK_ARG(a.B == b.B && a.H == b.H, an, a.shape_string(),
                     std::string("batch and heads must match ") + bn + " " + b.shape_string());
}
void check_lse(const TensorView& lse, const TensorView& q, const char* name) {
  LONGATTN_CHECK_ARG(lse.B == q.B && lse.N == q.N && lse.H == q.H && lse.D == 1, name,
                     lse.shape_string(), "must be [B, Nq, H, 1] of q " + q.shape_string());
  LONGATTN_CHECK_ARG(lse.dtype == DType::F32 || lse.dtype == DType::F64, name,
                     dtype_name(lse.dtype), "must be fp32 (or fp64 on the CPU)");
}
void check_mask(const BlockMaskView& m, const TensorView& q, const TensorView& k) {
  LONGATTN_CHECK_ARG(m.block_q > 0 && m.block_k > 0, "mask block size",
                     std::to_string(m.block_q) + "x" + std::to_string(m.block_k),
                     "must be positive");
  LONGATTN_CHECK_ARG(m.num_q_blocks == (q.N + m.block_q - 1) / m.block_q, "mask query blocks",
                     m.num_q_blocks, "must cover Nq = " + std::to_string(q.N));
  LONGATTN_CHECK_ARG(m.num_k_blocks == (k.N + m.block_k - 1) / m.block_k, "mask key blocks",
                     m.num_k_blocks, "must cover Nk = " + std::to_string(k.N));
}
}  // namespace

void validate_forward(const AttnFwdParams& p) {
  check_have_memory({{"q", p.q}, {"k", p.k}, {"v", p.v}, {"o", p.o}, {"lse", p.lse}});
  check_same_bhd(p.k, "k", p.q, "q");
  check_same_bhd(p.v, "v", p.q, "q");
  LONGATTN_CHECK_ARG(p.q.D == p.k.D && p.v.D == p.q.D, "head_dim", p.k.D,
                     "q, k and v must have the same head dimension " + std::to_string(p.q.D));
  LONGATTN_CHECK_ARG(p.k.N == p.v.N, "v rows", p.v.N, "must equal k rows " + std::to_string(p.k.N));
  LONGATTN_CHECK_ARG(p.q.dtype == p.k.dtype && p.q.dtype == p.v.dtype, "dtype",
                     dtype_name(p.k.dtype), "q, k and v must share one dtype");
  LONGATTN_CHECK_ARG(p.o.B == p.q.B && p.o.N == p.q.N && p.o.H == p.q.H && p.o.D == p.q.D, "o",
                     p.o.shape_string(), "must have the shape of q " + p.q.shape_string());
  check_lse(p.lse, p.q, "lse");
  check_mask(p.mask, p.q, p.k);
}

void validate_backward(const AttnBwdParams& p) {
  AttnFwdParams f;
  f.q = p.q;
  f.k = p.k;
  f.v = p.v;
  f.o = p.o;
  f.lse = p.lse;
  f.mask = p.mask;
  validate_forward(f);
  auto same = [](const TensorView& a, const TensorView& b, const char* n) {
    LONGATTN_CHECK_ARG(a.B == b.B && a.N == b.N && a.H == b.H && a.D == b.D, n, a.shape_string(),
                       "must have shape " + b.shape_string());
  };
  check_have_memory({{"d_o", p.d_o}, {"dq", p.dq}, {"dk", p.dk}, {"dv", p.dv}});
  same(p.d_o, p.q, "d_o");
  same(p.dq, p.q, "dq");
  same(p.dk, p.k, "dk");
  same(p.dv, p.v, "dv");
  if (p.delta.data) check_lse(p.delta, p.q, "delta");
}

}  // namespace longattn
