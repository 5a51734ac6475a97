// Head groups and the branch decomposition of dilated attention (attention/ layer, no device
// code): which heads attend within which segments to which dilated rows, for both modes.
#pragma once
#include <cstdint>
#include <vector>

#include "attention/spec.hpp"

namespace longattn {

// A contiguous range of heads [begin, begin + count).
struct HeadRange {
  int64_t begin = 0, count = 0;
};

// Splits H heads into G contiguous groups, the first H % G groups one head larger:
// (8, 3) -> sizes [3, 3, 2]. H < G or G <= 0 throws InvalidArgument.
std::vector<HeadRange> head_groups(int64_t H, int64_t G);

// One branch of dilated attention: heads [head_begin, head_begin + head_count) attend, inside
// every segment of length `segment`, among the rows offset, offset + rate, ... (< segment) of
// that segment (causal in that order when causal).
struct DilatedBranch {
  int pair = 0;  // index into segment_lengths / dilation_rates
  int64_t segment = 0, rate = 1, offset = 0;
  int64_t head_begin = 0, head_count = 0;
};

// Rows a branch selects per segment: ceil((segment - offset) / rate), 0 when offset >= segment.
inline int64_t dilated_length(int64_t segment, int64_t rate, int64_t offset) {
  return offset >= segment ? 0 : (segment - offset + rate - 1) / rate;
}

// Branches of a config for H heads.
// groups: one branch per pair i, heads of group i (head_groups(H, G)), offset i mod r_i.
// longnet: for each pair, one branch per offset group of heads, as torchscale's dense_to_sparse:
// heads padded to H' = ceil(H / r) * r, head j gets offset j div (H' / r); padded heads dropped.
std::vector<DilatedBranch> dilated_branches(const DilatedConfig& cfg, int64_t H);

// Config rules that need no shape: non-empty equal-length segment_lengths and dilation_rates,
// all values positive. Throws InvalidArgument naming the argument, its value and the rule.
void validate_dilated_config(const DilatedConfig& cfg);
// Config and shape: the rules above, validate_shape, N divisible by max(segment_lengths), and
// H >= G in groups mode.
void validate_dilated(const DilatedConfig& cfg, const Shape& s);

}  // namespace longattn
