// Block-sparse attention (single process): exact softmax over the union of the key blocks a
// pattern (attention/patterns.hpp) gives each query block, forward and backward through the
// kernel contract. Options: causal, scale, Hilbert visiting order of query blocks.
#pragma once
#include <memory>

#include "attention/variant.hpp"

namespace longattn {

// Uses spec.sparse (pattern, block size, ratio, hilbert), spec.causal and spec.scale.
// content_adaptive builds its mask from q and k at each forward and keeps it for the backward
// of the same inputs (rebuilt when the block-mean scores of q and k differ). Its density() and
// flops() report the last mask built for that N; before any forward they report the mask of
// locality scores s(i, j) = -|i - j| (an estimate). Not safe to call from several threads.
std::unique_ptr<AttentionVariant> make_block_sparse_attention(const AttentionSpec& spec);

}  // namespace longattn
