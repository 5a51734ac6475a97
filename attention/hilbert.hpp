// Hilbert-curve ordering of blocks: a locality-friendly permutation of [0, n) that the
// block-sparse variant uses as its query-block visiting order. A layout choice only: it never
// changes results.
#pragma once
#include <cstdint>
#include <vector>

namespace longattn {

// The cell (x, y) that position d of the Hilbert curve visits on a side x side grid
// (side a power of two, 0 <= d < side * side).
struct HilbertCell {
  int64_t x = 0, y = 0;
};
HilbertCell hilbert_cell(int64_t side, int64_t d);

// Canonical 1-D Hilbert order of n items: side = the smallest power of two with side^2 >= n;
// walk the curve on that grid, map cell (x, y) to y * side + x, keep the values < n in visiting
// order. Always a permutation of [0, n). n = 4 gives [0, 2, 3, 1].
std::vector<int32_t> hilbert_order(int64_t n);

}  // namespace longattn
