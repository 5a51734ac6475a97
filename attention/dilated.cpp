// Dilated attention: each branch (pair, head range, offset) is one kernel-contract call on
// strided views, all segments of all batches folded into the batch dimension when the layout
// allows it. Only Backend operations are used, so the same code runs on every backend.
#include "attention/dilated.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <numeric>

#include "attention/dense.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }

// All segments of all batches of x are one batch dimension of stride segment*sn exactly when
// batch b starts N rows after batch b-1 (or there is one batch).
bool foldable(const TensorView& x) { return x.B == 1 || x.sb == x.N * x.sn; }

// Rows m*segment + offset + j*rate (j < count) of every segment m of every batch of x, heads of
// the branch, as one view with B*N/segment batches. Requires foldable(x).
TensorView segment_rows(const TensorView& x, const DilatedBranch& br, int64_t count) {
  TensorView v = x.heads(br.head_begin, br.head_count).rows(br.offset, count, br.rate);
  v.B = x.B * (x.N / br.segment);
  v.sb = br.segment * x.sn;
  return v;
}

// Calls fn(b0, nb) once for all batches when every view folds, else once per batch (a single
// batch always folds).
template <typename F>
void for_each_chunk(int64_t B, std::initializer_list<TensorView> views, F&& fn) {
  bool all = true;
  for (const auto& v : views) all = all && foldable(v);
  if (all) {
    fn(int64_t{0}, B);
    return;
  }
  for (int64_t b = 0; b < B; ++b) fn(b, int64_t{1});
}

// Dense (causal-trimmed) L x L masks of one call, prepared once per distinct L.
class MaskCache {
 public:
  MaskCache(Backend& be, int64_t block, bool causal) : be_(be), block_(block), causal_(causal) {}
  const PreparedMask& forward(int64_t L) { return *entry(L).fwd; }
  const PreparedMask& transposed(int64_t L) {
    Entry& e = entry(L);
    if (!e.bwd) e.bwd = be_.prepare_mask(e.mask.transpose());
    return *e.bwd;
  }

 private:
  struct Entry {
    BlockMask mask;
    std::unique_ptr<PreparedMask> fwd, bwd;
  };
  Entry& entry(int64_t L) {
    auto it = masks_.find(L);
    if (it != masks_.end()) return it->second;
    Entry e;
    e.mask = dense_block_mask(MaskGeometry{L, L, block_, block_, causal_, 0, 0});
    e.fwd = be_.prepare_mask(e.mask);
    return masks_.emplace(L, std::move(e)).first->second;
  }
  Backend& be_;
  int64_t block_;
  bool causal_;
  std::map<int64_t, Entry> masks_;
};

// A gradient destination: the caller's view, or an fp32 buffer when the caller's dtype is
// fp16/bf16 so that several branches accumulate without intermediate rounding.
class GradAccumulator {
 public:
  GradAccumulator(Backend& be, const TensorView& target) : target_(target), view_(target) {
    if (is_half(target.dtype)) {
      temp_ = DeviceTensor::scratch(be, DType::F32, target.B, target.N, target.H, target.D);
      view_ = temp_.view();
    }
    be.fill(view_, 0.0);
  }
  const TensorView& view() const { return view_; }
  // The caller's gradient = alpha * the accumulated one (one pass, one rounding).
  void finish(Backend& be, double alpha) {
    if (temp_.data())
      be.copy_scaled(target_, alpha, view_);
    else if (alpha != 1.0)
      be.scale(target_, alpha);
  }

 private:
  TensorView target_, view_;
  DeviceTensor temp_;
};

void check_same_shape(const TensorView& t, const char* name, const TensorView& q) {
  LONGATTN_CHECK_ARG(t.B == q.B && t.N == q.N && t.H == q.H && t.D == q.D, name,
                     t.shape_string(), "must have the shape of q " + q.shape_string());
  check_have_memory({{name, t}});
}
void check_lse(const TensorView& lse, const TensorView& q) {
  LONGATTN_CHECK_ARG(lse.B == q.B && lse.N == q.N && lse.H == q.H && lse.D == 1, "lse",
                     lse.shape_string(), "must be [B, N, H, 1] of q " + q.shape_string());
  LONGATTN_CHECK_ARG(lse.dtype == DType::F32 || lse.dtype == DType::F64, "lse",
                     dtype_name(lse.dtype), "must be fp32 (or fp64 on the CPU)");
}

class DilatedAttention final : public AttentionVariant {
 public:
  explicit DilatedAttention(const AttentionSpec& spec) : spec_(spec) {
    LONGATTN_CHECK_ARG(spec.block_size > 0, "block_size", spec.block_size, "must be positive");
    validate_dilated_config(spec.dilated);
  }
  std::string name() const override { return "dilated"; }
  const AttentionSpec& spec() const override { return spec_; }
  void validate(const Shape& s) const override { validate_dilated(spec_.dilated, s); }

  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    check_io(q, k, v, o, lse);
    MaskCache& masks = masks_for(be);
    const auto branches = dilated_branches(spec_.dilated, q.H);
    if (spec_.dilated.mode == DilatedMode::Groups) {
      forward_groups(be, masks, branches, q, k, v, o, lse);
      return;
    }
    const int64_t chunk = pass_rows_for(q, is_half(o.dtype));
    for (int64_t r0 = 0; r0 < q.N; r0 += chunk) {
      const int64_t n = std::min(chunk, q.N - r0);
      auto r = [&](const TensorView& t) { return t.rows(r0, n); };
      forward_longnet(be, masks, branches, r(q), r(k), r(v), r(o), r(lse));
    }
  }

  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_io(q, k, v, o, lse);
    check_same_shape(d_o, "d_o", q);
    check_same_shape(dq, "dq", q);
    check_same_shape(dk, "dk", q);
    check_same_shape(dv, "dv", q);
    MaskCache& masks = masks_for(be);
    const auto branches = dilated_branches(spec_.dilated, q.H);
    if (spec_.dilated.mode == DilatedMode::Groups && is_half(dq.dtype)) {
      backward_groups_once(be, masks, branches, q, k, v, o, lse, d_o, dq, dk, dv);
      return;
    }
    if (spec_.dilated.mode == DilatedMode::Groups) {
      GradAccumulator gq(be, dq), gk(be, dk), gv(be, dv);
      backward_groups(be, masks, branches, q, k, v, o, lse, d_o, gq.view(), gk.view(), gv.view());
      const double alpha = 1.0 / static_cast<double>(spec_.dilated.segment_lengths.size());
      gq.finish(be, alpha);
      gk.finish(be, alpha);
      gv.finish(be, alpha);
      return;
    }
    // longnet: the branches overlap, so fp16/bf16 gradients accumulate in fp32, chunk by chunk.
    const int64_t chunk = pass_rows_for(q, is_half(dq.dtype) || is_half(dk.dtype));
    for (int64_t r0 = 0; r0 < q.N; r0 += chunk) {
      const int64_t n = std::min(chunk, q.N - r0);
      auto r = [&](const TensorView& t) { return t.rows(r0, n); };
      GradAccumulator gq(be, r(dq)), gk(be, r(dk)), gv(be, r(dv));
      backward_longnet(be, masks, branches, r(q), r(k), r(v), r(o), r(lse), r(d_o), gq.view(),
                       gk.view(), gv.view());
      gq.finish(be, 1.0);
      gk.finish(be, 1.0);
      gv.finish(be, 1.0);
    }
  }

  double flops(const Shape& s) const override {
    validate(s);
    double total = 0.0;
    for (const auto& br : dilated_branches(spec_.dilated, s.H)) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const BlockMask m = dense_block_mask(
          MaskGeometry{L, L, spec_.block_size, spec_.block_size, spec_.causal, 0, 0});
      total += mask_flops(m, Shape{s.B * (s.N / br.segment), L, br.head_count, s.D},
                          spec_.causal);
    }
    return total;
  }
  double density(const Shape& s) const override {
    const double dense = 4.0 * static_cast<double>(s.B) * static_cast<double>(s.H) *
                         static_cast<double>(s.N) * static_cast<double>(s.N) *
                         static_cast<double>(s.D);
    return flops(s) / dense;
  }

 private:
  void check_io(const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse) const {
    validate(Shape{q.B, q.N, q.H, q.D});
    check_same_shape(k, "k", q);
    check_same_shape(v, "v", q);
    check_same_shape(o, "o", q);
    check_lse(lse, q);
    check_have_memory({{"q", q}, {"lse", lse}});  // (k, v, o: check_same_shape)
  }

  // Rows of one longnet pass. Every segment of every branch lies inside a run of rows that
  // starts at a multiple of all segment lengths, and the result of those rows depends on
  // nothing outside it; so the passes cover runs of such rows, and the fp32 buffers of a
  // pass (forward: the merged output and a branch's O and LSE; backward: dq, dk, dv of
  // fp16/bf16 gradients) are held for its rows only. With fp16/bf16 a pass takes at most
  // pass_rows rows (longnet_pass_rows when 0) where the segments allow it; otherwise (fp32,
  // fp64) one pass.
  int64_t pass_rows_for(const TensorView& q, bool half) const {
    if (!half || q.N == 0) return std::max<int64_t>(q.N, 1);
    int64_t unit = 1;
    for (int64_t s : spec_.dilated.segment_lengths) {
      unit = std::lcm(unit, s);
      if (unit >= q.N) return q.N;
    }
    const int64_t given = spec_.dilated.pass_rows;
    const int64_t most = given > 0 ? given : longnet_pass_rows(q.B * q.N) / q.B;
    return std::min(q.N, std::max(unit, most / unit * unit));
  }

  void kernel_forward(Backend& be, const PreparedMask& m, const TensorView& q,
                      const TensorView& k, const TensorView& v, const TensorView& o,
                      const TensorView& lse) const {
    // Causal in dilated order: positions 0..L-1 of the branch, offsets 0.
    be.attention_forward(make_fwd_params({q, k, v, o, lse}, m.view(), {spec_.scale, spec_.causal}));
  }

  void kernel_backward(Backend& be, const PreparedMask& m, const PreparedMask& mt,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv) const {
    be.attention_backward(make_bwd_params({q, k, v, o, lse}, {d_o, dq, dk, dv}, m.view(),
                                          mt.view(), {spec_.scale, spec_.causal}));
  }

  // groups: each branch writes its rows of its heads; everything is scaled by 1/G after.
  void forward_groups(Backend& be, MaskCache& masks, const std::vector<DilatedBranch>& branches,
                      const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& o, const TensorView& lse) const {
    be.fill(o, 0.0);
    be.fill(lse, kNegInf);
    for (const auto& br : branches) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const PreparedMask& m = masks.forward(L);
      for_each_chunk(q.B, {q, k, v, o, lse}, [&](int64_t b0, int64_t nb) {
        auto seg = [&](const TensorView& t) { return segment_rows(t.batches(b0, nb), br, L); };
        kernel_forward(be, m, seg(q), seg(k), seg(v), seg(o), seg(lse));
      });
    }
    be.scale(o, 1.0 / static_cast<double>(spec_.dilated.segment_lengths.size()));
  }

  // longnet: each branch's (O_b, L_b) is merged into (o, lse) by L, which weights the pairs of
  // a row and head by softmax over pairs of their L (unselected rows: L = -inf, weight 0).
  void forward_longnet(Backend& be, MaskCache& masks, const std::vector<DilatedBranch>& branches,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse) const {
    DeviceTensor acc_buf;  // fp32 accumulator when o is fp16/bf16
    TensorView acc = o;
    if (is_half(o.dtype)) {
      acc_buf = DeviceTensor::scratch(be, DType::F32, o.B, o.N, o.H, o.D);
      acc = acc_buf.view();
    }
    be.fill(acc, 0.0);
    be.fill(lse, kNegInf);
    for (const auto& br : branches) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const int64_t nseg = q.N / br.segment;
      DeviceTensor ob = DeviceTensor::scratch(be, o.dtype, q.B * nseg, L, br.head_count, q.D);
      DeviceTensor lb = DeviceTensor::scratch(be, lse.dtype, q.B * nseg, L, br.head_count, 1);
      const PreparedMask& m = masks.forward(L);
      for_each_chunk(q.B, {q, k, v, acc, lse}, [&](int64_t b0, int64_t nb) {
        auto seg = [&](const TensorView& t) { return segment_rows(t.batches(b0, nb), br, L); };
        const TensorView o_part = ob.view().batches(b0 * nseg, nb * nseg);
        const TensorView l_part = lb.view().batches(b0 * nseg, nb * nseg);
        kernel_forward(be, m, seg(q), seg(k), seg(v), o_part, l_part);
        be.merge(seg(acc), seg(lse), o_part, l_part);
      });
    }
    if (acc_buf.data()) be.copy(o, acc);
  }

  // groups: o holds O_b / G. The branch's gradient with dO is the contract's backward with the
  // branch's own O_b = G * o (delta = <dO, O_b>); the caller scales the sum by 1/G (finish).
  void backward_groups(Backend& be, MaskCache& masks, const std::vector<DilatedBranch>& branches,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv) const {
    const double G = static_cast<double>(spec_.dilated.segment_lengths.size());
    for (const auto& br : branches) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const int64_t nseg = q.N / br.segment;
      DeviceTensor ob = DeviceTensor::scratch(be, o.dtype, q.B * nseg, L, br.head_count, q.D);
      const PreparedMask& m = masks.forward(L);
      const PreparedMask& mt = masks.transposed(L);
      for_each_chunk(q.B, {q, k, v, o, lse, d_o, dq, dk, dv}, [&](int64_t b0, int64_t nb) {
        auto seg = [&](const TensorView& t) { return segment_rows(t.batches(b0, nb), br, L); };
        const TensorView o_branch = ob.view().batches(b0 * nseg, nb * nseg);
        be.copy_scaled(o_branch, G, seg(o));
        kernel_backward(be, m, mt, seg(q), seg(k), seg(v), o_branch, seg(lse), seg(d_o), seg(dq),
                        seg(dk), seg(dv));
      });
    }
  }

  // groups with fp16/bf16 gradients: a (row, head) belongs to one branch and one segment, so
  // each gradient element gets one kernel call's contribution. Each call's dQ, dK, dV go into
  // fp32 scratches of its rows and are copied out scaled by 1/G (one rounding, as the fp32
  // accumulators' copy gives), calls of at most backward_split_rows rows (runs of segments):
  // fp32 is held for one call, not for the whole tensors.
  void backward_groups_once(Backend& be, MaskCache& masks,
                            const std::vector<DilatedBranch>& branches, const TensorView& q,
                            const TensorView& k, const TensorView& v, const TensorView& o,
                            const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                            const TensorView& dk, const TensorView& dv) const {
    const double G = static_cast<double>(spec_.dilated.segment_lengths.size());
    for (const TensorView* g : {&dq, &dk, &dv}) be.fill(*g, 0.0);  // rows no branch selects
    const int64_t most = backward_split_rows(q.B * q.N);
    for (const auto& br : branches) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const int64_t per = std::max<int64_t>(1, most / L);  // segments a call
      const int64_t calls_of = std::min(per, q.B * (q.N / br.segment));
      const int64_t hc = br.head_count;
      DeviceTensor ob = DeviceTensor::scratch(be, o.dtype, calls_of, L, hc, q.D);
      DeviceTensor g[3];
      for (DeviceTensor& t : g) t = DeviceTensor::scratch(be, DType::F32, calls_of, L, hc, q.D);
      const PreparedMask& m = masks.forward(L);
      const PreparedMask& mt = masks.transposed(L);
      for_each_chunk(q.B, {q, k, v, o, lse, d_o, dq, dk, dv}, [&](int64_t b0, int64_t nb) {
        auto seg = [&](const TensorView& t) { return segment_rows(t.batches(b0, nb), br, L); };
        const int64_t segs = seg(q).B;
        for (int64_t s0 = 0; s0 < segs; s0 += per) {
          const int64_t n = std::min(per, segs - s0);
          auto part = [&](const TensorView& t) { return seg(t).batches(s0, n); };
          const TensorView o_branch = ob.view().batches(0, n);
          be.copy_scaled(o_branch, G, part(o));
          TensorView gv3[3];
          for (int i = 0; i < 3; ++i) {
            gv3[i] = g[i].view().batches(0, n);
            be.fill(gv3[i], 0.0);
          }
          kernel_backward(be, m, mt, part(q), part(k), part(v), o_branch, part(lse), part(d_o),
                          gv3[0], gv3[1], gv3[2]);
          be.copy_scaled(part(dq), 1.0 / G, gv3[0]);
          be.copy_scaled(part(dk), 1.0 / G, gv3[1]);
          be.copy_scaled(part(dv), 1.0 / G, gv3[2]);
        }
      });
    }
  }

  // longnet, o = sum_i w_i O_i with w_i = exp(L_i - L). Pair i's contribution, written with the
  // combined L, has p = w_i p_i = exp(s - L):
  //   detached weights (torchscale): dO_i = w_i dO with the pair's own O_i, L_i, which equals the
  //     contract's backward with (dO, O_i, L); O_i is recomputed here.
  //   exact: the combined function is attention over the union of the pairs' keys, whose
  //     gradient is each pair's backward with (dO, O, L), the merged O and L.
  void backward_longnet(Backend& be, MaskCache& masks, const std::vector<DilatedBranch>& branches,
                        const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& o, const TensorView& lse, const TensorView& d_o,
                        const TensorView& dq, const TensorView& dk, const TensorView& dv) const {
    const bool exact = spec_.dilated.exact_longnet_grad;
    for (const auto& br : branches) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      const int64_t nseg = q.N / br.segment;
      DeviceTensor ob, lb;
      if (!exact) {
        ob = DeviceTensor::scratch(be, o.dtype, q.B * nseg, L, br.head_count, q.D);
        lb = DeviceTensor::scratch(be, lse.dtype, q.B * nseg, L, br.head_count, 1);
      }
      const PreparedMask& m = masks.forward(L);
      const PreparedMask& mt = masks.transposed(L);
      for_each_chunk(q.B, {q, k, v, o, lse, d_o, dq, dk, dv}, [&](int64_t b0, int64_t nb) {
        auto seg = [&](const TensorView& t) { return segment_rows(t.batches(b0, nb), br, L); };
        TensorView o_used = seg(o);
        if (!exact) {
          o_used = ob.view().batches(b0 * nseg, nb * nseg);
          kernel_forward(be, m, seg(q), seg(k), seg(v), o_used,
                         lb.view().batches(b0 * nseg, nb * nseg));
        }
        kernel_backward(be, m, mt, seg(q), seg(k), seg(v), o_used, seg(lse), seg(d_o), seg(dq),
                        seg(dk), seg(dv));
      });
    }
  }

  // The branches' masks (one per distinct length), prepared on the backend once and kept
  // across calls on it, so repeated calls (training steps) build and upload nothing.
  MaskCache& masks_for(Backend& be) {
    if (!masks_ || masks_backend_ != be.instance_id()) {
      masks_.reset();
      masks_ = std::make_unique<MaskCache>(be, std::max(spec_.block_size, be.preferred_tile()),
                                           spec_.causal);
      masks_backend_ = be.instance_id();
    }
    return *masks_;
  }

  AttentionSpec spec_;
  std::unique_ptr<MaskCache> masks_;
  uint64_t masks_backend_ = 0;
};

}  // namespace

std::unique_ptr<AttentionVariant> make_dilated_attention(const AttentionSpec& spec) {
  return std::make_unique<DilatedAttention>(spec);
}

}  // namespace longattn
