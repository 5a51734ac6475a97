// Block-sparse attention patterns: generators over nb = N / block_size blocks, the derivation
// of structural parameters from sparsity_ratio, the named presets, and the token-level mask.
// Device-agnostic; the block-sparse variants (single-process and ring) build their masks here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "kernels/contract.hpp"
#include "runtime/tensor.hpp"

namespace longattn {

// Defaults used when neither the ratio nor the pattern's own count parameter is given.
struct SparseDefaults {
  static constexpr double kRandomRatio = 0.1;    // random: fraction of blocks kept
  static constexpr double kAdaptiveRatio = 0.1;  // content_adaptive without topk
};

// local_window, dilated_sparse, global_local, hierarchical, random, content_adaptive.
std::vector<std::string> sparse_pattern_names();
// local, dilated, global_local, hierarchical_standard, hierarchical_fine, hierarchical_long,
// adaptive_standard, ultra_sparse.
std::vector<std::string> sparse_preset_names();
// The preset's configuration; an unknown name throws InvalidArgument listing the valid names.
SparseConfig sparse_preset(const std::string& name);

// Rejects, before any work, a config that cannot describe a pattern over N tokens: block_size
// > 0, N > 0 and a multiple of block_size, sparsity_ratio 0 (not given) or in (0, 1], a known
// pattern, and the parameters the pattern uses: window_size > 0, dilation rates > 0 (non-empty
// when given), global_tokens > 0, levels with stride > 0 and window > 0 or < 0 (global),
// 0 <= topk <= N / block_size. Fields the pattern does not use are not checked.
void validate_sparse(const SparseConfig& cfg, int64_t N);

// The config with every structural parameter the pattern needs made explicit for nb blocks:
// when sparsity_ratio is given and the structural parameter is not (window_given, rates_given,
// global_given, levels_given false), that parameter is chosen so that the pattern's density
// (pairs / nb^2, before causal trimming) is as close as possible to the ratio. Derived fields
// are marked given, so resolving twice is a no-op. Random gets its ratio (default 0.1) and
// content_adaptive its topk (from the ratio, default 0.1). Hierarchical levels count as given
// when levels_given is set or the list is non-empty (its default is empty). How each is derived:
//   local_window    window_size = max(1, 2h) * block_size, h the band half-width in blocks;
//   dilated_sparse  the first k >= 1 rates of 1, 2, 4, ... (powers of two below nb), then the
//                   remaining offsets 3, 5, 6, 7, ... in increasing order;
//   global_local    the window as local_window, global_tokens kept (default 64); or, when only
//                   the window is given, global_tokens = g * block_size, g >= 1;
//   hierarchical    three levels (tokens, b = block_size): (b, 2a b), (4b, 8a b), (16b, 32a b)
//                   (a window of 0 means one block), a >= 0.
SparseConfig resolve_sparse(const SparseConfig& cfg, int64_t nb);

// Block-level pattern for nb blocks: rows[i] = the key blocks of query block i (sorted,
// unique), before causal trimming, every row containing its diagonal block. Deterministic
// (random is seeded by cfg.seed). content_adaptive needs `scores` (nb x nb block-mean scores,
// row-major); the other patterns ignore it.
std::vector<std::vector<int32_t>> block_pattern(const SparseConfig& cfg, int64_t nb,
                                                const std::vector<double>* scores = nullptr);

// Block-mean scores for content_adaptive, computed from host views q and k [B, N, H, D]:
// s(i, j) = mean over batch and heads of <mean of q over block i, mean of k over block j>.
std::vector<double> block_mean_scores(const TensorView& q, const TensorView& k,
                                      int64_t block_size);

// The CSR block mask over N tokens (block_size = cfg.block_size), causal-trimmed when causal.
// Every pattern, content_adaptive's top-k included, is chosen before causal trimming, so
// sparsity_ratio is a fraction of all nb^2 block pairs; a causal mask keeps about half of them
// and BlockMask::density() (blocks kept / nb^2) reports that.
BlockMask sparse_block_mask(const SparseConfig& cfg, int64_t N, bool causal,
                            const std::vector<double>* scores = nullptr);

}  // namespace longattn
