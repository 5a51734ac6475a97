// Dilated attention (LongNet) in both modes, `groups` (the seed package's DilatedAttention) and
// `longnet` (torchscale's LSE-weighted pairs), forward and backward through the kernel contract.
// Every branch runs on strided views of the inputs (row stride rate*H*D): no gather copies.
#pragma once
#include "attention/head_groups.hpp"
#include "attention/variant.hpp"

namespace longattn {

// spec.dilated (segment_lengths, dilation_rates, mode, exact_longnet_grad), spec.causal,
// spec.scale and spec.block_size (the kernel tile) are used. The config is validated here;
// shapes at each call.
//
// lse written by forward: groups mode, the L of the row's own branch at selected rows and -inf
// elsewhere; longnet mode, the combined L = logsumexp over pairs of the pairs' L.
// flops: 4 * D * (visible pairs of every branch) summed over batches, segments and heads.
// density: flops / (4 * B * H * N * N * D), the fraction of all query-key pairs computed.
std::unique_ptr<AttentionVariant> make_dilated_attention(const AttentionSpec& spec);

}  // namespace longattn
