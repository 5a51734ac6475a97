// Hilbert-curve index generation (d -> (x, y) by the classic quadrant-rotation walk) and the
// canonical 1-D order the block-sparse variant visits query blocks in.
#include "attention/hilbert.hpp"

#include <utility>

#include "runtime/error.hpp"

namespace longattn {

HilbertCell hilbert_cell(int64_t side, int64_t d) {
  // At each scale s the two bits of d pick a quadrant (rx, ry); the lower-left and lower-right
  // quadrants are reflected / transposed so consecutive cells stay neighbours.
  HilbertCell c;
  int64_t t = d;
  for (int64_t s = 1; s < side; s *= 2) {
    const int64_t rx = 1 & (t / 2);
    const int64_t ry = 1 & (t ^ rx);
    if (ry == 0) {
      if (rx == 1) {
        c.x = s - 1 - c.x;
        c.y = s - 1 - c.y;
      }
      std::swap(c.x, c.y);
    }
    c.x += s * rx;
    c.y += s * ry;
    t /= 4;
  }
  return c;
}

std::vector<int32_t> hilbert_order(int64_t n) {
  LONGATTN_CHECK_ARG(n >= 0 && n <= (int64_t{1} << 30), "hilbert n", n, "must be in [0, 2^30]");
  int64_t side = 1;
  while (side * side < n) side *= 2;
  std::vector<int32_t> order;
  order.reserve(static_cast<size_t>(n));
  for (int64_t d = 0; d < side * side; ++d) {
    const HilbertCell c = hilbert_cell(side, d);
    const int64_t idx = c.y * side + c.x;
    if (idx < n) order.push_back(static_cast<int32_t>(idx));
  }
  return order;
}

}  // namespace longattn
