// Dense attention: the all-blocks mask (future blocks dropped when causal) through the contract.
#include "attention/dense.hpp"

#include <algorithm>

#include "runtime/error.hpp"

namespace longattn {

void validate_shape(const Shape& s) {
  LONGATTN_CHECK_ARG(s.B > 0, "batch", s.B, "must be positive");
  LONGATTN_CHECK_ARG(s.N > 0, "seq_len", s.N, "must be positive");
  LONGATTN_CHECK_ARG(s.H > 0, "heads", s.H, "must be positive");
  LONGATTN_CHECK_ARG(s.D > 0 && s.D <= 256, "head_dim", s.D, "must be in [1, 256]");
}

void masked_forward(Backend& be, const AttentionSpec& spec, const PreparedMask& mask,
                    const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& o, const TensorView& lse) {
  be.attention_forward(make_fwd_params({q, k, v, o, lse}, mask.view(), {spec.scale, spec.causal}));
}

void masked_backward(Backend& be, const AttentionSpec& spec, const PreparedMask& mask,
                     const PreparedMask& mask_t, const TensorView& q, const TensorView& k,
                     const TensorView& v, const TensorView& o, const TensorView& lse,
                     const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                     const TensorView& dv) {
  // One call: the gradients are overwritten (no fill; the Hopper kernel writes dk and dv of
  // the input dtype without reading them).
  AttnBwdParams p = make_bwd_params({q, k, v, o, lse}, {d_o, dq, dk, dv}, mask.view(),
                                    mask_t.view(), {spec.scale, spec.causal});
  p.accumulate = false;
  be.attention_backward(p);
}

void masked_forward(Backend& be, const AttentionSpec& spec, const BlockMask& mask,
                    const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& o, const TensorView& lse) {
  masked_forward(be, spec, *be.prepare_mask(mask), q, k, v, o, lse);
}

void masked_backward(Backend& be, const AttentionSpec& spec, const BlockMask& mask,
                     const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& o, const TensorView& lse, const TensorView& d_o,
                     const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  masked_backward(be, spec, *be.prepare_mask(mask), *be.prepare_mask(mask.transpose()), q, k, v,
                  o, lse, d_o, dq, dk, dv);
}

double mask_flops(const BlockMask& mask, const Shape& s, bool causal) {
  double pairs = 0.0;
  for (int64_t r = 0; r < mask.num_q_blocks; ++r) {
    const int64_t q0 = r * mask.block_q, q1 = std::min(s.N, q0 + mask.block_q);
    for (int64_t e = mask.row_ptr[r]; e < mask.row_ptr[r + 1]; ++e) {
      const int64_t k0 = mask.col_idx[e] * mask.block_k, k1 = std::min(s.N, k0 + mask.block_k);
      if (!causal || !mask.partial[e]) {
        pairs += static_cast<double>(q1 - q0) * static_cast<double>(k1 - k0);
        continue;
      }
      for (int64_t i = q0; i < q1; ++i)  // keys j <= i within [k0, k1)
        pairs += static_cast<double>(std::clamp<int64_t>(i + 1, k0, k1) - k0);
    }
  }
  return 4.0 * static_cast<double>(s.D) * pairs * static_cast<double>(s.B * s.H);
}

namespace {

class DenseAttention final : public AttentionVariant {
 public:
  explicit DenseAttention(const AttentionSpec& spec) : spec_(spec) {
    LONGATTN_CHECK_ARG(spec.block_size > 0, "block_size", spec.block_size, "must be positive");
  }
  std::string name() const override { return "dense"; }
  const AttentionSpec& spec() const override { return spec_; }
  void validate(const Shape& s) const override { validate_shape(s); }
  BlockMask mask_for(const Shape& s, int64_t tile = 0) const {
    MaskGeometry g;
    g.nq = g.nk = s.N;
    g.block_q = g.block_k = std::max(spec_.block_size, tile);
    g.causal = spec_.causal;
    return dense_block_mask(g);
  }
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    validate(Shape{q.B, q.N, q.H, q.D});
    check_have_memory({{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}});
    masked_forward(be, spec_, prepared(be, q.N), q, k, v, o, lse);
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    validate(Shape{q.B, q.N, q.H, q.D});
    check_have_memory({{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}, {"d_o", d_o},
                       {"dq", dq}, {"dk", dk}, {"dv", dv}});
    const PreparedMask& m = prepared(be, q.N);
    masked_backward(be, spec_, m, cache_.transposed(be), q, k, v, o, lse, d_o, dq, dk, dv);
  }
  double flops(const Shape& s) const override { return mask_flops(mask_for(s), s, spec_.causal); }
  double density(const Shape& s) const override { return mask_for(s).density(); }

 private:
  // The mask depends only on N: built and prepared once per (backend, N), its transpose on the
  // first backward.
  const PreparedMask& prepared(Backend& be, int64_t n) {
    return cache_.forward(be, static_cast<uint64_t>(n),
                          [&] { return mask_for(Shape{1, n, 1, 1}, be.preferred_tile()); });
  }

  AttentionSpec spec_;
  KeptMask cache_;
};

}  // namespace

std::unique_ptr<AttentionVariant> make_dense_attention(const AttentionSpec& spec) {
  return std::make_unique<DenseAttention>(spec);
}

}  // namespace longattn
