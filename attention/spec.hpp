// What is computed: keyword-style configuration of every attention variant, and its validation.
// Plain structs with named fields (no positional parameter-order traps).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace longattn {

// Input geometry of an attention call: Q, K, V are [B, N, H, D].
struct Shape {
  int64_t B = 1, N = 0, H = 1, D = 64;
};

enum class DilatedMode { Groups, LongNet };

struct DilatedConfig {
  std::vector<int64_t> segment_lengths{2048, 4096, 8192};
  std::vector<int64_t> dilation_rates{1, 2, 4};
  DilatedMode mode = DilatedMode::Groups;
  bool exact_longnet_grad = false;  // longnet: differentiate the pair weights too
  // longnet on one device with fp16/bf16 tensors: the most rows of one pass, whose fp32 buffers
  // (merged output; dq, dk, dv) hold only its rows; rounded down to a multiple of every segment
  // length (at least one such multiple). 0: automatic, longnet_pass_rows(B * N) / B.
  int64_t pass_rows = 0;
};

// One level of the hierarchical pattern (tokens): rows every `stride` get a window of `window`
// tokens centred on them, or every column when window < 0.
struct HierarchicalLevel {
  int64_t stride = 64;
  int64_t window = 256;
};

struct SparseConfig {
  // local_window | dilated_sparse | global_local | hierarchical | random | content_adaptive
  std::string pattern = "local_window";
  double sparsity_ratio = 0.0;  // fraction of blocks KEPT in (0, 1]; 0 = not given
  int64_t block_size = 64;
  int64_t window_size = 256;  // tokens (local_window, global_local)
  std::vector<int64_t> dilation_rates{1, 2, 4};  // block offsets (dilated_sparse)
  int64_t global_tokens = 64;  // tokens, not blocks (global_local)
  std::vector<HierarchicalLevel> levels;  // hierarchical
  uint64_t seed = 0;                       // random
  int64_t topk = 0;  // content_adaptive: key blocks per query block; 0 = from sparsity_ratio
  bool hilbert = false;  // visit blocks in Hilbert order (layout only; never changes results)
  // Which fields the user set explicitly (a ratio given alone derives the structural one).
  bool window_given = false, rates_given = false, global_given = false, levels_given = false;
};

struct AttentionSpec {
  std::string variant = "dense";  // dense | dilated | block_sparse
  bool causal = false;
  double scale = 0.0;      // 0 -> 1/sqrt(D)
  // Kernel tile for dense and dilated (their results do not depend on it): the smallest tile;
  // single-device variants and distributed dilated use max(block_size, the backend's
  // preferred tile), 128 on CUDA. The distributed dense ring uses it as given (shards must be
  // multiples of it).
  int64_t block_size = 64;
  DilatedConfig dilated;
  SparseConfig sparse;
};

// Rejects invalid shapes/configs before any work; throws InvalidArgument naming the argument.
void validate_shape(const Shape& s);

// Most rows of one backward kernel call whose gradients are held in fp32 only while it runs
// (the block-sparse ring's chunks on a rank's own K/V, dilated groups' runs of segments), for
// `rows` rows in all: an eighth of them, and at least kSplitMinRows (shorter tensors are not
// cut: their kernel calls stay large).
constexpr int64_t kSplitMinRows = 262144;
constexpr int64_t kSplitParts = 8;
constexpr int64_t backward_split_rows(int64_t rows) {
  const int64_t part = (rows + kSplitParts - 1) / kSplitParts;
  return part > kSplitMinRows ? part : kSplitMinRows;
}

// Rows of one longnet pass (DilatedConfig::pass_rows = 0) for `rows` rows in all: an eighth of
// them, and at least kLongnetMinPassRows. Each pass costs its kernel calls again, so passes stay
// large where the fp32 buffers of every row are small anyway (at 1M rows, passes of a quarter
// million rows ran 2-4% slower on an H200).
constexpr int64_t kLongnetMinPassRows = int64_t{1} << 20;
constexpr int64_t longnet_pass_rows(int64_t rows) {
  const int64_t part = (rows + kSplitParts - 1) / kSplitParts;
  return part > kLongnetMinPassRows ? part : kLongnetMinPassRows;
}

}  // namespace longattn
