// The merge function of the contract: -inf on either or both sides, empty chunks, order
// independence, and equality of chunked-then-merged attention with one-shot attention.
#include <gtest/gtest.h>

#include <cmath>

#include "attention/dense.hpp"
#include "common/reference.hpp"
#include "kernels/backend.hpp"
#include "kernels/merge.hpp"

namespace longattn {
namespace {

TEST(Merge, MinusInfinityCases) {
  const double ninf = -INFINITY;
  auto both = merge_weights(ninf, ninf);
  EXPECT_TRUE(std::isinf(both.lse) && both.lse < 0);
  EXPECT_EQ(both.w1, 0.0);
  EXPECT_EQ(both.w2, 0.0);
  auto left = merge_weights(ninf, 1.5);
  EXPECT_EQ(left.lse, 1.5);
  EXPECT_EQ(left.w1, 0.0);
  EXPECT_EQ(left.w2, 1.0);
  auto right = merge_weights(-2.0, ninf);
  EXPECT_EQ(right.lse, -2.0);
  EXPECT_EQ(right.w1, 1.0);
  auto big = merge_weights(1000.0, 999.0);
  EXPECT_TRUE(std::isfinite(big.lse));
  EXPECT_NEAR(big.lse, 1000.0 + std::log1p(std::exp(-1.0)), 1e-12);
  EXPECT_NEAR(big.w1 + big.w2, 1.0, 1e-15);
}

TEST(Merge, ChunkedAttentionEqualsOneShotInAnyOrder) {
  auto be = make_cpu_backend();
  const int64_t B = 2, N = 48, H = 2, D = 8;
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 61);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 62);
  Tensor v = Tensor::randn(DType::F64, B, N, H, D, 63);
  auto ref = testing::naive_attention(q.view(), k.view(), v.view(),
                                      [](int64_t, int64_t, int64_t, int64_t) { return true; });
  // Split keys into chunks [0,16), [16,16) (empty), [16,48); merge in two different orders.
  const std::vector<std::pair<int64_t, int64_t>> chunks = {{16, 32}, {0, 16}, {16, 0}};
  for (int order = 0; order < 2; ++order) {
    Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
    be->fill(lse.view(), -INFINITY);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const auto [k0, len] = chunks[order == 0 ? c : chunks.size() - 1 - c];
      Tensor op(DType::F64, B, N, H, D), lp(DType::F64, B, N, H, 1);
      if (len == 0) {
        be->fill(lp.view(), -INFINITY);  // an empty chunk: O = 0, L = -inf
      } else {
        MaskGeometry g{N, len, 16, 16, false, 0, 0};
        AttentionSpec spec;
        masked_forward(*be, spec, dense_block_mask(g), q.view(), k.view().rows(k0, len),
                       v.view().rows(k0, len), op.view(), lp.view());
      }
      be->merge(o.view(), lse.view(), op.view(), lp.view());
    }
    EXPECT_LT(compare(o.view(), ref.o.view()).max_abs, 1e-13);
    EXPECT_LT(compare(lse.view(), ref.lse.view()).max_abs, 1e-13);
  }
}


// copy_scaled: dst = alpha * src formed in fp64 and rounded once to dst's dtype (what the
// dilated variant's gradients take in one pass), on a strided destination.
TEST(CpuBackend, CopyScaledRoundsOnceIntoTheDestination) {
  auto be = make_cpu_backend(1);
  const Tensor src = Tensor::randn(DType::F32, 2, 9, 3, 5, 77);
  for (DType dt : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor wide(dt, 2, 18, 3, 5);
    be->fill(wide.view(), 7.0);
    const TensorView dst = wide.view().rows(1, 9, 2);  // odd rows
    be->copy_scaled(dst, 1.0 / 3.0, src.view());
    Tensor expect = src.to(DType::F64);
    be->scale(expect.view(), 1.0 / 3.0);  // the fp64 products
    EXPECT_EQ(compare(dst, expect.to(dt).view()).max_abs, 0.0);
    Tensor sevens(dt, 2, 9, 3, 5);
    be->fill(sevens.view(), 7.0);
    EXPECT_EQ(compare(wide.view().rows(0, 9, 2), sevens.view()).max_abs, 0.0);  // even rows
  }
}

}  // namespace
}  // namespace longattn
