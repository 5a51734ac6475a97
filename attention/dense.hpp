// Dense attention (causal or not) through the kernel contract with the all-blocks mask.
#pragma once
#include <cstdint>
#include <memory>

#include "attention/variant.hpp"
#include "kernels/backend.hpp"

namespace longattn {

std::unique_ptr<AttentionVariant> make_dense_attention(const AttentionSpec& spec);

// Runs one masked attention over full [B, N, H, D] views (shared by dense and block-sparse).
void masked_forward(Backend& be, const AttentionSpec& spec, const BlockMask& mask,
                    const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& o, const TensorView& lse);
// Backward of masked_forward; gradients are overwritten.
void masked_backward(Backend& be, const AttentionSpec& spec, const BlockMask& mask,
                     const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& o, const TensorView& lse, const TensorView& d_o,
                     const TensorView& dq, const TensorView& dk, const TensorView& dv);
// The same over a mask (and its transpose) already prepared on the backend.
void masked_forward(Backend& be, const AttentionSpec& spec, const PreparedMask& mask,
                    const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& o, const TensorView& lse);
void masked_backward(Backend& be, const AttentionSpec& spec, const PreparedMask& mask,
                     const PreparedMask& mask_t, const TensorView& q, const TensorView& k,
                     const TensorView& v, const TensorView& o, const TensorView& lse,
                     const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                     const TensorView& dv);
// A variant's block mask prepared on a backend and kept across calls (its transpose prepared on
// the first backward), until the backend or the variant's key for the mask changes: repeated
// calls (training steps) build and upload nothing.
class KeptMask {
 public:
  // The mask prepared for `key` on `be`; build() gives the host mask when it must be prepared.
  template <typename Build>
  const PreparedMask& forward(Backend& be, uint64_t key, Build&& build) {
    if (!fwd_ || backend_ != be.instance_id() || key_ != key) {
      bwd_.reset();
      fwd_.reset();  // the old mask goes first
      fwd_ = be.prepare_mask(build());
      backend_ = be.instance_id();
      key_ = key;
    }
    return *fwd_;
  }
  // The transpose of the mask forward() last prepared.
  const PreparedMask& transposed(Backend& be) {
    if (!bwd_) bwd_ = be.prepare_mask(fwd_->host().transpose());
    return *bwd_;
  }

 private:
  uint64_t backend_ = 0, key_ = 0;
  std::unique_ptr<PreparedMask> fwd_, bwd_;
};

// 4 * D * (visible pairs) * B * H for a mask, counting causal exclusions element-wise.
double mask_flops(const BlockMask& mask, const Shape& s, bool causal);

}  // namespace longattn
