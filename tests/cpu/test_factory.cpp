// The attention factory: every listed name builds a variant that runs, presets are reachable as
// block_sparse:<preset>, and unknown names fail with InvalidArgument listing the valid ones.
#include <gtest/gtest.h>

#include <cmath>

#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

AttentionSpec small_spec(const std::string& variant) {
  AttentionSpec spec;
  spec.variant = variant;
  spec.block_size = 16;
  spec.dilated.segment_lengths = {16, 32};
  spec.dilated.dilation_rates = {1, 2};
  spec.sparse.block_size = 16;
  spec.sparse.window_size = 32;
  return spec;
}

TEST(Factory, ListsTheVariants) {
  const auto names = variant_names();
  for (const char* n : {"dense", "dilated", "block_sparse"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

TEST(Factory, EveryNameBuildsAVariantThatRuns) {
  auto be = make_cpu_backend(1);
  const int64_t B = 1, N = 64, H = 2, D = 8;
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 1);
  Tensor k = Tensor::randn(DType::F64, B, N, H, D, 2);
  Tensor v = Tensor::randn(DType::F64, B, N, H, D, 3);
  for (const auto& name : variant_names()) {
    auto var = make_attention(small_spec(name));
    ASSERT_TRUE(var);
    EXPECT_EQ(var->name().rfind(name, 0), 0u) << var->name() << " for " << name;
    Tensor o(DType::F64, B, N, H, D), lse(DType::F64, B, N, H, 1);
    o.fill(std::nan(""));
    var->forward(*be, q.view(), k.view(), v.view(), o.view(), lse.view());
    double sum_abs = 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) {
          ASSERT_TRUE(std::isfinite(o.at(0, n, h, d))) << name << " row " << n;
          sum_abs += std::fabs(o.at(0, n, h, d));
        }
    EXPECT_GT(sum_abs, 0.0) << name;
    const double density = var->density({B, N, H, D});
    EXPECT_GT(density, 0.0) << name;
    EXPECT_LE(density, 1.0) << name;
  }
}

// A view with elements but no memory (a default TensorView's null data) is an InvalidArgument
// naming it, in every variant's forward and backward (never a crash: the variants slice views
// before the kernels see them), and in the kernel contract.
TEST(Factory, ViewsWithoutMemoryAreInvalidArguments) {
  auto be = make_cpu_backend(1);
  const int64_t B = 1, N = 64, H = 2, D = 8;
  Tensor t[9];
  for (int i = 0; i < 9; ++i) t[i] = Tensor::randn(DType::F64, B, N, H, i == 4 ? 1 : D, 10 + i);
  const char* names[9] = {"q", "k", "v", "o", "lse", "d_o", "dq", "dk", "dv"};
  for (const auto& name : variant_names()) {
    auto var = make_attention(small_spec(name));
    for (int which = 0; which < 9; ++which) {
      TensorView v[9];
      for (int i = 0; i < 9; ++i) v[i] = t[i].view();
      v[which].data = nullptr;
      try {
        if (which < 5)
          var->forward(*be, v[0], v[1], v[2], v[3], v[4]);
        else
          var->backward(*be, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
        ADD_FAILURE() << name << ": a null " << names[which] << " did not throw";
      } catch (const InvalidArgument& e) {
        EXPECT_EQ(e.argument(), names[which]) << name << ": " << e.what();
        EXPECT_NE(std::string(e.what()).find("no memory"), std::string::npos) << e.what();
      }
    }
  }
  // The backend's own entry (validate_forward), where a caller drives the kernels directly.
  AttnFwdParams p;
  p.q = t[0].view();
  p.k = t[1].view();
  p.v = t[2].view();
  p.o = t[3].view();
  p.lse = t[4].view();
  p.v.data = nullptr;
  auto mask = be->prepare_mask(dense_block_mask(MaskGeometry{N, N, 16, 16, false, 0, 0}));
  p.mask = mask->view();
  try {
    be->attention_forward(p);
    ADD_FAILURE() << "a null v reached the kernel";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "v") << e.what();
  }
}

TEST(Factory, PresetsAreReachableByName) {
  const int64_t N = 1024;
  for (const auto& preset : sparse_preset_names()) {
    AttentionSpec spec;
    spec.variant = "block_sparse:" + preset;
    auto by_name = make_attention(spec);
    AttentionSpec direct;
    direct.variant = "block_sparse";
    direct.sparse = sparse_preset(preset);
    auto by_config = make_attention(direct);
    const Shape s{1, N, 2, 16};
    EXPECT_DOUBLE_EQ(by_name->density(s), by_config->density(s)) << preset;
    EXPECT_EQ(by_name->spec().sparse.pattern, sparse_preset(preset).pattern) << preset;
  }
}

TEST(Factory, UnknownNamesListTheValidOnes) {
  for (const char* bad : {"flash", "", "block_sparse:nope", "dense:local", "Dense"}) {
    AttentionSpec spec;
    spec.variant = bad;
    try {
      make_attention(spec);
      ADD_FAILURE() << "variant '" << bad << "' was accepted";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      const bool preset_error = std::string(bad) == "block_sparse:nope";
      if (!preset_error) {
        EXPECT_EQ(e.argument(), "variant") << msg;
        for (const auto& n : variant_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
      }
      // Either way the preset names are listed, so the user sees how to spell one.
      for (const auto& p : sparse_preset_names()) EXPECT_NE(msg.find(p), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace longattn
