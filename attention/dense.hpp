// Dense attention (causal or not) through the kernel contract with the all-blocks mask.
#pragma once
#include "attention/variant.hpp"

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
// 4 * D * (visible pairs) * B * H for a mask, counting causal exclusions element-wise.
double mask_flops(const BlockMask& mask, const Shape& s, bool causal);

}  // namespace longattn
