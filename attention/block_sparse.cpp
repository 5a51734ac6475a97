// Block-sparse attention: builds the pattern's mask (cached per sequence length, or per input
// scores for content_adaptive) and runs one kernel call over it (the mask prepared once per mask
// and backend), or visits query blocks in Hilbert order when asked. Every path computes the same
// per-row sums in the same order, so the visiting order never changes the forward result.
#include "attention/block_sparse.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

#include "attention/dense.hpp"
#include "attention/hilbert.hpp"
#include "attention/patterns.hpp"
#include "attention/ring.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

// Backward in Hilbert order runs this many calls, each over a run of the Hilbert order: every
// call reads all of Q, K, V, O and dO, so one call per query block would cost O(nb * N).
constexpr int64_t kHilbertBackwardGroups = 8;

// The rows `keep` (query blocks) of m, every other row emptied; partial flags carried along.
BlockMask select_rows(const BlockMask& m, const std::vector<int32_t>& keep) {
  std::vector<uint8_t> on(static_cast<size_t>(m.num_q_blocks), 0);
  for (int32_t r : keep) on[static_cast<size_t>(r)] = 1;
  BlockMask s = m;
  s.row_ptr.assign(1, 0);
  s.col_idx.clear();
  s.partial.clear();
  for (int64_t r = 0; r < m.num_q_blocks; ++r) {
    if (on[static_cast<size_t>(r)])
      for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e) {
        s.col_idx.push_back(m.col_idx[e]);
        s.partial.push_back(m.partial[e]);
      }
    s.row_ptr.push_back(static_cast<int64_t>(s.col_idx.size()));
  }
  return s;
}

// Query block r of m alone, as a one-row mask for a view of that block's rows.
BlockMask single_row(const BlockMask& m, int64_t r) {
  BlockMask s;
  s.block_q = m.block_q;
  s.block_k = m.block_k;
  s.num_q_blocks = 1;
  s.num_k_blocks = m.num_k_blocks;
  s.col_idx.assign(m.col_idx.begin() + m.row_ptr[r], m.col_idx.begin() + m.row_ptr[r + 1]);
  s.partial.assign(m.partial.begin() + m.row_ptr[r], m.partial.begin() + m.row_ptr[r + 1]);
  s.row_ptr = {0, static_cast<int64_t>(s.col_idx.size())};
  return s;
}

class BlockSparseAttention final : public AttentionVariant {
 public:
  explicit BlockSparseAttention(const AttentionSpec& spec) : spec_(spec) {
    // What does not depend on N is checked now (pattern name, block size, ranges).
    SparseConfig probe = spec.sparse;
    probe.topk = 0;
    validate_sparse(probe, std::max<int64_t>(1, probe.block_size));
    LONGATTN_CHECK_ARG(spec.sparse.topk >= 0, "topk", spec.sparse.topk, "must not be negative");
  }
  std::string name() const override { return "block_sparse"; }
  const AttentionSpec& spec() const override { return spec_; }
  void validate(const Shape& s) const override {
    validate_shape(s);
    validate_sparse(spec_.sparse, s.N);
  }

  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    validate(shape_of(q));
    check_self_attention(q, k);
    check_have_memory({{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}});
    const BlockMask& m = mask_for_inputs(be, q, k);
    if (!spec_.sparse.hilbert) {
      masked_forward(be, spec_, kept_mask(be), q, k, v, o, lse);
      return;
    }
    // Each call computes whole rows of one query block, so the order of calls cannot change
    // any row's sums.
    const int64_t bs = m.block_q;
    for (int32_t r : hilbert_order(m.num_q_blocks)) {
      const int64_t q0 = static_cast<int64_t>(r) * bs, rows = std::min(bs, q.N - q0);
      auto pm = be.prepare_mask(single_row(m, r));
      be.attention_forward(make_fwd_params({q.rows(q0, rows), k, v, o.rows(q0, rows),
                                            lse.rows(q0, rows)},
                                           pm->view(), {spec_.scale, spec_.causal, q0}));
    }
  }

  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    validate(shape_of(q));
    check_self_attention(q, k);
    check_have_memory({{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}, {"d_o", d_o},
                       {"dq", dq}, {"dk", dk}, {"dv", dv}});
    const BlockMask& m = mask_for_inputs(be, q, k);
    if (!spec_.sparse.hilbert) {
      if (backward_in_chunks(be, m, q, k, v, o, lse, d_o, dq, dk, dv)) return;
      const PreparedMask& pm = kept_mask(be);
      masked_backward(be, spec_, pm, prepared_.transposed(be), q, k, v, o, lse, d_o, dq, dk, dv);
      return;
    }
    // Runs of the Hilbert order, one accumulating call each. dQ rows are complete within one
    // call (bit-identical to the single call); dK and dV add the runs' partial sums, so they
    // agree with the single call to rounding.
    be.fill(dq, 0.0);
    be.fill(dk, 0.0);
    be.fill(dv, 0.0);
    const auto order = hilbert_order(m.num_q_blocks);
    const auto n = static_cast<int64_t>(order.size());
    const int64_t per = (n + kHilbertBackwardGroups - 1) / kHilbertBackwardGroups;
    for (int64_t g0 = 0; g0 < n; g0 += per) {
      const std::vector<int32_t> run(order.begin() + g0, order.begin() + std::min(n, g0 + per));
      const BlockMask part = select_rows(m, run);
      auto pm = be.prepare_mask(part);
      auto pmt = be.prepare_mask(part.transpose());
      be.attention_backward(make_bwd_params({q, k, v, o, lse}, {d_o, dq, dk, dv}, pm->view(),
                                            pmt->view(), {spec_.scale, spec_.causal}));
    }
  }

  double flops(const Shape& s) const override {
    return mask_flops(reported_mask(s), s, spec_.causal);
  }
  double density(const Shape& s) const override { return reported_mask(s).density(); }

 private:
  static Shape shape_of(const TensorView& q) { return Shape{q.B, q.N, q.H, q.D}; }
  static void check_self_attention(const TensorView& q, const TensorView& k) {
    LONGATTN_CHECK_ARG(k.N == q.N, "k rows", k.N,
                       "block-sparse attention needs as many keys as queries " + std::to_string(q.N));
  }
  bool adaptive() const { return spec_.sparse.pattern == "content_adaptive"; }

  std::vector<double> scores_of(Backend& be, const TensorView& q, const TensorView& k) const {
    const int64_t bs = spec_.sparse.block_size;
    if (q.device == DeviceKind::Cpu && k.device == DeviceKind::Cpu)
      return block_mean_scores(q, k, bs);
    Tensor hq(q.dtype, q.B, q.N, q.H, q.D), hk(k.dtype, k.B, k.N, k.H, k.D);
    be.download(hq.view(), q);
    be.download(hk.view(), k);
    be.synchronize();
    return block_mean_scores(hq.view(), hk.view(), bs);
  }

  const BlockMask& mask_for_inputs(Backend& be, const TensorView& q, const TensorView& k) {
    if (!adaptive()) {
      if (cached_n_ != q.N) {
        mask_ = sparse_block_mask(spec_.sparse, q.N, spec_.causal);
        cached_n_ = q.N;
        ++generation_;
      }
      return mask_;
    }
    auto scores = scores_of(be, q, k);
    if (cached_n_ != q.N || scores != cached_scores_) {
      mask_ = sparse_block_mask(spec_.sparse, q.N, spec_.causal, &scores);
      cached_scores_ = std::move(scores);
      cached_n_ = q.N;
      ++generation_;
    }
    return mask_;
  }

  // mask_ (after mask_for_inputs) prepared on the backend, kept until it or the backend changes.
  const PreparedMask& kept_mask(Backend& be) {
    return prepared_.forward(be, generation_, [&]() -> const BlockMask& { return mask_; });
  }

  BlockMask reported_mask(const Shape& s) const {
    validate(s);
    if (cached_n_ == s.N) return mask_;
    if (!adaptive()) return sparse_block_mask(spec_.sparse, s.N, spec_.causal);
    const int64_t nb = s.N / spec_.sparse.block_size;
    std::vector<double> locality(static_cast<size_t>(nb * nb));
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j < nb; ++j)
        locality[static_cast<size_t>(i * nb + j)] = -static_cast<double>(std::abs(i - j));
    return sparse_block_mask(spec_.sparse, s.N, spec_.causal, &locality);
  }

  // fp16/bf16 gradients of more than backward_split_rows rows: the kernels add dQ in fp32, and
  // one call over every row would hold fp32 dQ for all of them. The backward runs instead in
  // chunks of query rows (the BackwardSplit of a one-rank plan, as the block-sparse ring does
  // on a rank's own K/V): each chunk's dQ in an fp32 scratch of its rows, copied into dq (one
  // rounding); key rows one chunk alone reaches take their dK/dV straight into dk and dv, the
  // others (`merged`) accumulate in fp32 and are copied out. Used where that holds less fp32
  // than the single call (masks whose chunks share few key rows, such as local windows) and the
  // chunks are not scattered; returns false otherwise.
  bool backward_in_chunks(Backend& be, const BlockMask& m, const TensorView& q,
                          const TensorView& k, const TensorView& v, const TensorView& o,
                          const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                          const TensorView& dk, const TensorView& dv) {
    if (dq.dtype != DType::F16 && dq.dtype != DType::BF16) return false;
    const int64_t most = std::max(m.block_q, backward_split_rows(q.B * q.N) / q.B);
    if (q.N <= most || m.block_q != m.block_k || q.N % m.block_q != 0) return false;
    Chunks& c = chunks_;
    if (c.backend != be.instance_id() || c.key != generation_ || c.most != most) {
      c = Chunks{};
      RingPlan plan = make_sparse_ring_plan(ShardLayout(Sharding::Contiguous, q.N, 1), 0, m);
      plan.split_rows = most;
      c.split = make_backward_split(plan);
      const BackwardSplit& bs = c.split;
      int64_t merged = 0;
      for (const RowRun& r : bs.merged) merged += r.len;
      c.usable = plan.steps.size() == 1 && bs.step0.size() == 1 && bs.chunks[0].size() > 1 &&
                 bs.dq_merged.empty() && 2 * merged + bs.chunk_rows < q.N;
      if (c.usable) {
        const BlockMask& wm = plan.steps[0].work[0].mask;
        for (const BackwardSplit::Call& call : bs.step0[0]) {
          const int64_t b0 = call.row0 / wm.block_q, b1 = b0 + (call.rows + wm.block_q - 1) / wm.block_q;
          const int64_t c0 = call.col0 / wm.block_k, c1 = c0 + (call.cols + wm.block_k - 1) / wm.block_k;
          const BlockMask cm = mask_select(wm, b0, b1, c0, c1);
          c.masks.emplace_back(be.prepare_mask(cm), be.prepare_mask(cm.transpose()));
        }
      }
      c.backend = be.instance_id();
      c.key = generation_;
      c.most = most;
    }
    if (!c.usable) return false;
    const BackwardSplit& bs = c.split;
    // Where rows [start, start + len) of the merged key rows lie in their accumulator.
    auto merged_at = [&](int64_t start, int64_t len) {
      int64_t at = 0;
      for (const RowRun& r : bs.merged) {
        if (start >= r.start && start + len <= r.start + r.len) return at + start - r.start;
        at += r.len;
      }
      LONGATTN_ASSERT(false, "block-sparse backward: key rows outside the merged rows");
      return int64_t{-1};
    };
    int64_t merged_rows = 0;
    for (const RowRun& r : bs.merged) merged_rows += r.len;
    DeviceTensor scratch = DeviceTensor::scratch(be, DType::F32, q.B, bs.chunk_rows, q.H, q.D);
    DeviceTensor home_k, home_v;
    if (merged_rows > 0) {
      home_k = DeviceTensor::scratch(be, DType::F32, q.B, merged_rows, q.H, q.D);
      home_v = DeviceTensor::scratch(be, DType::F32, q.B, merged_rows, q.H, q.D);
      be.fill(home_k.view(), 0.0);
      be.fill(home_v.view(), 0.0);
    }
    be.fill(dk, 0.0);
    be.fill(dv, 0.0);
    for (const RowRun& r : bs.dq_unreached) be.fill(dq.rows(r.start, r.len), 0.0);
    const auto& calls = bs.step0[0];
    size_t i = 0;
    for (size_t ci = 0; ci < bs.chunks[0].size(); ++ci) {
      const BackwardSplit::Chunk& ch = bs.chunks[0][ci];
      const TensorView sq =
          make_view(scratch.data(), DType::F32, q.B, ch.rows, q.H, q.D, scratch.view().device);
      be.fill(sq, 0.0);
      for (; i < calls.size() && calls[i].chunk == static_cast<int>(ci); ++i) {
        const BackwardSplit::Call& cl = calls[i];
        const int64_t r0 = cl.row0, c0 = cl.col0;
        const TensorView tk = cl.direct ? dk.rows(c0, cl.cols)
                                        : home_k.view().rows(merged_at(c0, cl.cols), cl.cols);
        const TensorView tv = cl.direct ? dv.rows(c0, cl.cols)
                                        : home_v.view().rows(merged_at(c0, cl.cols), cl.cols);
        be.attention_backward(make_bwd_params(
            {q.rows(r0, cl.rows), k.rows(c0, cl.cols), v.rows(c0, cl.cols), o.rows(r0, cl.rows),
             lse.rows(r0, cl.rows)},
            {d_o.rows(r0, cl.rows), sq.rows(r0 - ch.row0, cl.rows), tk, tv},
            c.masks[i].first->view(), c.masks[i].second->view(),
            {spec_.scale, spec_.causal, r0, c0}));
      }
      be.copy(dq.rows(ch.row0, ch.rows), sq);
    }
    LONGATTN_ASSERT(i == calls.size(), "block-sparse backward: a call outside its chunks");
    for (const RowRun& r : bs.merged) {
      be.copy(dk.rows(r.start, r.len), home_k.view().rows(merged_at(r.start, r.len), r.len));
      be.copy(dv.rows(r.start, r.len), home_v.view().rows(merged_at(r.start, r.len), r.len));
    }
    return true;
  }
  struct Chunks {
    uint64_t backend = 0, key = ~uint64_t{0};
    int64_t most = 0;
    bool usable = false;
    BackwardSplit split;
    std::vector<std::pair<std::unique_ptr<PreparedMask>, std::unique_ptr<PreparedMask>>> masks;
  };

  AttentionSpec spec_;
  Chunks chunks_;  // the chunked backward's split and call masks, for mask_ on a backend
  int64_t cached_n_ = -1;
  BlockMask mask_;
  std::vector<double> cached_scores_;
  uint64_t generation_ = 0;  // counts the rebuilds of mask_: the key of prepared_
  KeptMask prepared_;         // mask_ on the backend, kept until mask_ or the backend changes
};

}  // namespace

std::unique_ptr<AttentionVariant> make_block_sparse_attention(const AttentionSpec& spec) {
  return std::make_unique<BlockSparseAttention>(spec);
}

}  // namespace longattn
