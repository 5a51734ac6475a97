// Block-sparse pattern generators and presets: exact pair counts against brute-force
// definitions, symmetry, diagonal blocks, density against sparsity_ratio, determinism,
// non-dense hierarchical presets, Hilbert order, content-adaptive top-k, and every validation
// rule (messages name the argument).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>

#include "attention/hilbert.hpp"
#include "attention/patterns.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using Rows = std::vector<std::vector<int32_t>>;

int64_t pairs(const Rows& rows) {
  int64_t n = 0;
  for (const auto& r : rows) n += static_cast<int64_t>(r.size());
  return n;
}
double density(const Rows& rows) {
  const double nb = static_cast<double>(rows.size());
  return static_cast<double>(pairs(rows)) / (nb * nb);
}
bool has(const Rows& rows, int64_t i, int64_t j) {
  const auto& r = rows[static_cast<size_t>(i)];
  return std::binary_search(r.begin(), r.end(), static_cast<int32_t>(j));
}
// The pattern as an explicit predicate over all (i, j), to compare with the generator.
Rows brute(int64_t nb, const std::function<bool(int64_t, int64_t)>& keep) {
  Rows rows(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < nb; ++j)
      if (keep(i, j)) rows[static_cast<size_t>(i)].push_back(static_cast<int32_t>(j));
  return rows;
}
void expect_well_formed(const Rows& rows, const std::string& what) {
  const auto nb = static_cast<int32_t>(rows.size());
  for (int32_t i = 0; i < nb; ++i) {
    const auto& r = rows[static_cast<size_t>(i)];
    EXPECT_TRUE(std::is_sorted(r.begin(), r.end())) << what << " row " << i;
    EXPECT_EQ(std::adjacent_find(r.begin(), r.end()), r.end()) << what << " row " << i;
    EXPECT_TRUE(r.empty() || (r.front() >= 0 && r.back() < nb)) << what << " row " << i;
    EXPECT_TRUE(has(rows, i, i)) << what << ": row " << i << " lacks its diagonal block";
  }
}
std::vector<double> random_scores(int64_t nb, uint64_t seed) {
  Tensor t = Tensor::randn(DType::F64, 1, nb * nb, 1, 1, seed);
  std::vector<double> s(static_cast<size_t>(nb * nb));
  for (int64_t i = 0; i < nb * nb; ++i) s[static_cast<size_t>(i)] = t.at(0, i, 0, 0);
  return s;
}

SparseConfig local(int64_t window, int64_t block = 64) {
  SparseConfig c;
  c.pattern = "local_window";
  c.window_size = window;
  c.window_given = true;
  c.block_size = block;
  return c;
}
SparseConfig dilated(std::vector<int64_t> rates) {
  SparseConfig c;
  c.pattern = "dilated_sparse";
  c.dilation_rates = std::move(rates);
  c.rates_given = true;
  return c;
}
SparseConfig global_local(int64_t global, int64_t window, int64_t block = 64) {
  SparseConfig c;
  c.pattern = "global_local";
  c.global_tokens = global;
  c.window_size = window;
  c.global_given = c.window_given = true;
  c.block_size = block;
  return c;
}
SparseConfig with_ratio(const std::string& pattern, double ratio) {
  SparseConfig c;
  c.pattern = pattern;
  c.sparsity_ratio = ratio;
  return c;
}

TEST(Patterns, NamesAndPresetsAreListed) {
  EXPECT_EQ(sparse_pattern_names(),
            (std::vector<std::string>{"local_window", "dilated_sparse", "global_local",
                                      "hierarchical", "random", "content_adaptive"}));
  EXPECT_EQ(sparse_preset_names(),
            (std::vector<std::string>{"local", "dilated", "global_local", "hierarchical_standard",
                                      "hierarchical_fine", "hierarchical_long",
                                      "adaptive_standard", "ultra_sparse"}));
  for (const auto& name : sparse_preset_names())
    EXPECT_NO_THROW(validate_sparse(sparse_preset(name), 8192)) << name;
}

TEST(Patterns, LocalWindowPairCountsMatchTheBand) {
  // 256 tokens at block 64 = 4 blocks, half-width 2: |i - j| <= 2. Counts for nb = 8, 16, 128
  // follow nb (2h + 1) - h (h + 1).
  const std::vector<std::pair<int64_t, int64_t>> expected{{8, 34}, {16, 74}, {128, 634}};
  for (auto [nb, count] : expected) {
    const Rows rows = block_pattern(local(256), nb);
    EXPECT_EQ(pairs(rows), count) << nb;
    EXPECT_EQ(rows, brute(nb, [](int64_t i, int64_t j) { return std::abs(i - j) <= 2; }));
  }
  // The window is rounded up to whole blocks: 100 tokens = 2 blocks, half-width 1; 64 = 1
  // block, the diagonal only.
  EXPECT_EQ(block_pattern(local(100), 10),
            brute(10, [](int64_t i, int64_t j) { return std::abs(i - j) <= 1; }));
  EXPECT_EQ(block_pattern(local(64), 10), brute(10, [](int64_t i, int64_t j) { return i == j; }));
}

TEST(Patterns, DilatedPairCountsMatchTheOffsets) {
  const std::vector<std::pair<int64_t, int64_t>> expected{{8, 42}, {16, 98}, {128, 882}};
  for (auto [nb, count] : expected) {
    const Rows rows = block_pattern(dilated({1, 2, 4}), nb);
    EXPECT_EQ(pairs(rows), count) << nb;
    EXPECT_EQ(rows, brute(nb, [](int64_t i, int64_t j) {
                const int64_t d = std::abs(i - j);
                return d == 0 || d == 1 || d == 2 || d == 4;
              }));
  }
  EXPECT_EQ(block_pattern(dilated({3, 3, 50}), 12), brute(12, [](int64_t i, int64_t j) {
              return std::abs(i - j) == 3 || i == j;
            }));
}

TEST(Patterns, GlobalLocalCountsGlobalTokensInTokens) {
  // 64 tokens at block 64 = 1 global block: nb = 8 -> 44 pairs, nb = 128 -> 884.
  for (auto [nb, count] : std::vector<std::pair<int64_t, int64_t>>{{8, 44}, {128, 884}})
    EXPECT_EQ(pairs(block_pattern(global_local(64, 256), nb)), count) << nb;
  // 64 tokens at block 16 = 4 global blocks; 100 tokens at block 64 = 2 (rounded up).
  for (auto [tokens, block, g] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {64, 16, 4}, {100, 64, 2}}) {
    const int64_t nb = 20;
    const Rows rows = block_pattern(global_local(tokens, block * 2, block), nb);
    EXPECT_EQ(rows, brute(nb, [g = g](int64_t i, int64_t j) {
                return i < g || j < g || std::abs(i - j) <= 1;
              })) << tokens << " tokens at block " << block;
  }
}

TEST(Patterns, HierarchicalLevelsFollowTheirDefinition) {
  SparseConfig c;
  c.pattern = "hierarchical";
  c.block_size = 16;
  // Every row: |i - j| <= 1; rows multiple of 4: |i - j| <= 4; rows multiple of 16: all.
  c.levels = {{16, 32}, {64, 128}, {256, -1}};
  c.levels_given = true;
  const int64_t nb = 40;
  EXPECT_EQ(block_pattern(c, nb), brute(nb, [](int64_t i, int64_t j) {
              return std::abs(i - j) <= 1 || (i % 4 == 0 && std::abs(i - j) <= 4) || i % 16 == 0;
            }));
  // Levels whose strides skip rows still leave every row its diagonal block.
  c.levels = {{64, 128}};
  const Rows sparse_rows = block_pattern(c, nb);
  expect_well_formed(sparse_rows, "strided hierarchical");
  EXPECT_EQ(sparse_rows[1], std::vector<int32_t>{1});
}

TEST(Patterns, SymmetricPatternsAreSymmetric) {
  const int64_t nb = 37;
  for (const SparseConfig& c : {local(320), dilated({1, 3, 8}), global_local(130, 192),
                                with_ratio("local_window", 0.3), with_ratio("dilated_sparse", 0.2),
                                with_ratio("global_local", 0.25)}) {
    const Rows rows = block_pattern(c, nb);
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j < nb; ++j) ASSERT_EQ(has(rows, i, j), has(rows, j, i)) << c.pattern;
  }
}

TEST(Patterns, EveryPatternAndPresetKeepsTheDiagonalAndIsWellFormed) {
  const int64_t nb = 64;
  const auto scores = random_scores(nb, 5);
  for (const auto& name : sparse_pattern_names()) {
    SparseConfig c;
    c.pattern = name;
    expect_well_formed(block_pattern(c, nb, &scores), name);
    c.sparsity_ratio = 0.07;
    expect_well_formed(block_pattern(c, nb, &scores), name + " ratio 0.07");
  }
  for (const auto& name : sparse_preset_names())
    expect_well_formed(block_pattern(sparse_preset(name), nb, &scores), name);
}

TEST(Patterns, DensityApproachesSparsityRatio) {
  // The derived parameter moves the density in steps; the closest step is chosen, so the error
  // is at most half the largest step: 2 / nb per band or offset step (local, global_local,
  // dilated), 6 / nb for the three-level hierarchical family, 1 / (2 nb) for the per-row counts
  // of random and content_adaptive. Tolerance: that bound plus 1e-12.
  for (int64_t nb : {128, 256}) {
    const auto scores = random_scores(nb, 9);
    const double step = 1.0 / static_cast<double>(nb);
    const std::vector<std::pair<std::string, double>> tol{
        {"local_window", step},   {"dilated_sparse", step}, {"global_local", step},
        {"hierarchical", 3 * step}, {"random", 0.5 * step},  {"content_adaptive", 0.5 * step}};
    for (const auto& [name, t] : tol)
      for (double ratio : {0.05, 0.1, 0.25, 0.5}) {
        const Rows rows = block_pattern(with_ratio(name, ratio), nb, &scores);
        EXPECT_NEAR(density(rows), ratio, t + 1e-12) << name << " nb " << nb;
        // The achieved density is what the mask reports.
        const BlockMask m = sparse_block_mask(with_ratio(name, ratio), nb * 64, false, &scores);
        EXPECT_DOUBLE_EQ(m.density(), density(rows)) << name;
      }
  }
  // A ratio of 1 keeps every block.
  const int64_t nb = 24;
  const auto scores = random_scores(nb, 10);
  for (const auto& name : sparse_pattern_names())
    EXPECT_EQ(pairs(block_pattern(with_ratio(name, 1.0), nb, &scores)), nb * nb) << name;
}

TEST(Patterns, RatioDerivesOnlyTheMissingParameter) {
  const int64_t nb = 128;
  // global_local with the window given: the number of global blocks is derived instead.
  SparseConfig c = with_ratio("global_local", 0.2);
  c.window_size = 256;
  c.window_given = true;
  const SparseConfig r = resolve_sparse(c, nb);
  EXPECT_EQ(r.window_size, 256);
  EXPECT_GT(r.global_tokens, 64);
  EXPECT_NEAR(density(block_pattern(c, nb)), 0.2, 2.0 / nb);
  // A given structural parameter wins over the ratio.
  SparseConfig d = dilated({1, 2});
  d.sparsity_ratio = 0.5;
  EXPECT_EQ(pairs(block_pattern(d, nb)), nb + 2 * (nb - 1) + 2 * (nb - 2));
  // Resolving is idempotent and reproduces the same pattern.
  for (const auto& name : {"local_window", "dilated_sparse", "global_local", "hierarchical"}) {
    const SparseConfig once = resolve_sparse(with_ratio(name, 0.15), nb);
    EXPECT_EQ(block_pattern(once, nb), block_pattern(with_ratio(name, 0.15), nb)) << name;
    EXPECT_EQ(block_pattern(resolve_sparse(once, nb), nb), block_pattern(once, nb)) << name;
  }
}

TEST(Patterns, DeterministicAndSeeded) {
  const int64_t nb = 50;
  const auto scores = random_scores(nb, 3);
  for (const auto& name : sparse_pattern_names()) {
    SparseConfig c = with_ratio(name, 0.2);
    c.seed = 17;
    EXPECT_EQ(block_pattern(c, nb, &scores), block_pattern(c, nb, &scores)) << name;
  }
  SparseConfig a = with_ratio("random", 0.2), b = a;
  a.seed = 1;
  b.seed = 2;
  const Rows ra = block_pattern(a, nb), rb = block_pattern(b, nb);
  EXPECT_NE(ra, rb);
  EXPECT_EQ(pairs(ra), pairs(rb));
  // Every row keeps the same count, and the off-diagonal picks are spread over the columns.
  std::set<int32_t> used;
  for (const auto& r : ra) {
    EXPECT_EQ(static_cast<int64_t>(r.size()), 10);
    used.insert(r.begin(), r.end());
  }
  EXPECT_GT(static_cast<int64_t>(used.size()), nb * 3 / 4);
}

TEST(Patterns, ContentAdaptiveKeepsTheTopScoringBlocks) {
  const int64_t nb = 20, topk = 5;
  const auto scores = random_scores(nb, 21);
  SparseConfig c;
  c.pattern = "content_adaptive";
  c.topk = topk;
  const Rows rows = block_pattern(c, nb, &scores);
  for (int64_t i = 0; i < nb; ++i) {
    // Independent selection: rank the off-diagonal scores, take the best topk - 1.
    std::vector<std::pair<double, int32_t>> ranked;
    for (int32_t j = 0; j < nb; ++j)
      if (j != i) ranked.emplace_back(-scores[static_cast<size_t>(i * nb + j)], j);
    std::sort(ranked.begin(), ranked.end());
    std::vector<int32_t> want{static_cast<int32_t>(i)};
    for (int64_t t = 0; t < topk - 1; ++t) want.push_back(ranked[static_cast<size_t>(t)].second);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(rows[static_cast<size_t>(i)], want) << "row " << i;
  }
  // topk from the ratio: 0.25 of 20 blocks = 5 per row.
  EXPECT_EQ(block_pattern(with_ratio("content_adaptive", 0.25), nb, &scores), rows);
  // Without scores it is an error naming them.
  try {
    block_pattern(c, nb);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "scores");
  }
}

TEST(Patterns, BlockMeanScoresMatchAFormulaWrittenOut) {
  const int64_t B = 2, N = 24, H = 3, D = 5, bs = 8, nb = N / bs;
  Tensor q = Tensor::randn(DType::F64, B, N, H, D, 61), k = Tensor::randn(DType::F64, B, N, H, D, 62);
  const auto s = block_mean_scores(q.view(), k.view(), bs);
  ASSERT_EQ(static_cast<int64_t>(s.size()), nb * nb);
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < nb; ++j) {
      // mean_{b,h} (1/bs^2) sum_{t in i, u in j} <q_t, k_u>
      double want = 0.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t t = i * bs; t < (i + 1) * bs; ++t)
            for (int64_t u = j * bs; u < (j + 1) * bs; ++u)
              for (int64_t d = 0; d < D; ++d) want += q.at(b, t, h, d) * k.at(b, u, h, d);
      want /= static_cast<double>(B * H * bs * bs);
      EXPECT_NEAR(s[static_cast<size_t>(i * nb + j)], want, 1e-12);
    }
}

TEST(Patterns, CausalMaskDropsFutureBlocksAndMarksTheDiagonal) {
  const SparseConfig c = global_local(64, 256);
  const int64_t N = 64 * 12;
  const BlockMask full = sparse_block_mask(c, N, false), causal = sparse_block_mask(c, N, true);
  const Rows rows = block_pattern(c, 12);
  EXPECT_EQ(full.nnz(), pairs(rows));
  int64_t expected = 0;
  for (int64_t i = 0; i < 12; ++i)
    for (int32_t j : rows[static_cast<size_t>(i)]) expected += j <= i;
  EXPECT_EQ(causal.nnz(), expected);
  for (int64_t r = 0; r < causal.num_q_blocks; ++r)
    for (int64_t e = causal.row_ptr[r]; e < causal.row_ptr[r + 1]; ++e) {
      EXPECT_LE(causal.col_idx[e], r);
      EXPECT_EQ(causal.partial[e] != 0, causal.col_idx[e] == r);
    }
}

TEST(Patterns, HierarchicalPresetsAreNeverDense) {
  for (const auto& name : {"hierarchical_standard", "hierarchical_fine", "hierarchical_long"})
    for (int64_t block : {64, 128}) {
      double previous = 1.0;
      for (int64_t N : {4096, 8192, 16384, 32768, 65536}) {
        SparseConfig c = sparse_preset(name);
        c.block_size = block;
        const double d = density(block_pattern(c, N / block));
        EXPECT_LT(d, 0.5) << name << " block " << block << " N " << N;
        EXPECT_LE(d, previous + 1e-12) << name << " density grows with N";
        previous = d;
      }
    }
  // The three presets are three different patterns.
  const int64_t nb = 128;
  EXPECT_NE(block_pattern(sparse_preset("hierarchical_standard"), nb),
            block_pattern(sparse_preset("hierarchical_fine"), nb));
  EXPECT_NE(block_pattern(sparse_preset("hierarchical_standard"), nb),
            block_pattern(sparse_preset("hierarchical_long"), nb));
}

TEST(Patterns, UltraSparseIsReallySparse) {
  const SparseConfig c = sparse_preset("ultra_sparse");
  for (int64_t N : {8192, 16384, 32768, 65536}) {
    const double d = sparse_block_mask(c, N, false).density();
    EXPECT_GE(d, 0.01) << N;
    EXPECT_LE(d, 0.03) << N;
  }
}

TEST(Patterns, UnknownPresetListsValidNames) {
  try {
    sparse_preset("hierarchical_turbo");
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.argument(), "preset");
    EXPECT_NE(msg.find("hierarchical_turbo"), std::string::npos) << msg;
    for (const auto& name : sparse_preset_names())
      EXPECT_NE(msg.find(name), std::string::npos) << msg;
  }
}

// Each invalid config is rejected, and the message names the argument at fault.
TEST(Patterns, EveryValidationRuleNamesItsArgument) {
  struct Bad {
    std::string argument;
    std::function<void(SparseConfig&)> edit;
    int64_t N = 1024;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<Bad> cases{
      {"block_size", [](SparseConfig& c) { c.block_size = 0; }},
      {"block_size", [](SparseConfig& c) { c.block_size = -64; }},
      {"seq_len", [](SparseConfig&) {}, 1000},
      {"seq_len", [](SparseConfig&) {}, 0},
      {"sparsity_ratio", [](SparseConfig& c) { c.sparsity_ratio = -0.1; }},
      {"sparsity_ratio", [](SparseConfig& c) { c.sparsity_ratio = 1.5; }},
      {"sparsity_ratio", [nan](SparseConfig& c) { c.sparsity_ratio = nan; }},
      {"pattern", [](SparseConfig& c) { c.pattern = "adaptive"; }},
      {"window_size", [](SparseConfig& c) { c.window_size = 0; }},
      {"window_size",
       [](SparseConfig& c) {
         c.pattern = "global_local";
         c.window_size = -5;
       }},
      {"global_tokens",
       [](SparseConfig& c) {
         c.pattern = "global_local";
         c.global_tokens = 0;
       }},
      {"dilation_rates",
       [](SparseConfig& c) {
         c.pattern = "dilated_sparse";
         c.dilation_rates = {1, 0, 4};
       }},
      {"dilation_rates",
       [](SparseConfig& c) {
         c.pattern = "dilated_sparse";
         c.dilation_rates = {-2};
       }},
      {"dilation_rates",
       [](SparseConfig& c) {
         c.pattern = "dilated_sparse";
         c.dilation_rates.clear();
         c.rates_given = true;
       }},
      {"levels",
       [](SparseConfig& c) {
         c.pattern = "hierarchical";
         c.levels_given = true;
       }},
      {"levels[1].stride",
       [](SparseConfig& c) {
         c.pattern = "hierarchical";
         c.levels = {{64, 256}, {0, 512}};
       }},
      {"levels[0].window",
       [](SparseConfig& c) {
         c.pattern = "hierarchical";
         c.levels = {{64, 0}};
       }},
      {"topk",
       [](SparseConfig& c) {
         c.pattern = "content_adaptive";
         c.topk = -1;
       }},
      {"topk",
       [](SparseConfig& c) {
         c.pattern = "content_adaptive";
         c.topk = 17;  // 1024 / 64 = 16 blocks
       }},
  };
  for (const auto& bad : cases) {
    SparseConfig c;
    bad.edit(c);
    try {
      validate_sparse(c, bad.N);
      ADD_FAILURE() << "accepted: " << bad.argument;
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(e.argument(), bad.argument) << e.what();
      EXPECT_NE(std::string(e.what()).find(bad.argument), std::string::npos) << e.what();
    }
    // The mask builder rejects it the same way before any work.
    EXPECT_THROW(sparse_block_mask(c, bad.N, false), InvalidArgument) << bad.argument;
  }
  // The pattern message lists the valid names.
  SparseConfig c;
  c.pattern = "strided";
  try {
    validate_sparse(c, 1024);
  } catch (const InvalidArgument& e) {
    for (const auto& name : sparse_pattern_names())
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  // Parameters a pattern does not use are not checked.
  SparseConfig r = with_ratio("random", 0.3);
  r.window_size = 0;
  EXPECT_NO_THROW(validate_sparse(r, 1024));
}

TEST(Hilbert, OrderIsAPermutationAndMatchesTheCanonicalCurve) {
  EXPECT_EQ(hilbert_order(4), (std::vector<int32_t>{0, 2, 3, 1}));
  EXPECT_EQ(hilbert_order(8), (std::vector<int32_t>{0, 1, 5, 4, 7, 6, 2, 3}));
  EXPECT_EQ(hilbert_order(16),
            (std::vector<int32_t>{0, 1, 5, 4, 8, 12, 13, 9, 10, 14, 15, 11, 7, 6, 2, 3}));
  EXPECT_EQ(hilbert_order(20), (std::vector<int32_t>{0, 8, 9, 1, 2, 3, 11, 10, 18, 19, 17, 16,
                                                     13, 12, 4, 5, 6, 14, 15, 7}));
  for (int64_t n = 0; n <= 300; ++n) {
    auto order = hilbert_order(n);
    ASSERT_EQ(static_cast<int64_t>(order.size()), n);
    std::sort(order.begin(), order.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(order[static_cast<size_t>(i)], i) << "n " << n;
  }
  // Consecutive curve cells are grid neighbours (the locality the order exists for).
  for (int64_t side : {2, 4, 16})
    for (int64_t d = 1; d < side * side; ++d) {
      const auto a = hilbert_cell(side, d - 1), b = hilbert_cell(side, d);
      EXPECT_EQ(std::abs(a.x - b.x) + std::abs(a.y - b.y), 1) << side << " " << d;
    }
}

}  // namespace
}  // namespace longattn
