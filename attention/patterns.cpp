// Block-sparse pattern generators, sparsity_ratio derivation, presets and block masks.
// Structured patterns (local, global, hierarchical) are described per row as a few intervals
// of key blocks, so pair counts (and hence the ratio derivation) cost O(nb), not O(nb^2).
#include "attention/patterns.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "runtime/error.hpp"

namespace longattn {
namespace {

enum class Kind { Local, Dilated, GlobalLocal, Hierarchical, Random, Adaptive };

const std::vector<std::pair<std::string, Kind>>& kind_table() {
  static const std::vector<std::pair<std::string, Kind>> table{
      {"local_window", Kind::Local},           {"dilated_sparse", Kind::Dilated},
      {"global_local", Kind::GlobalLocal},     {"hierarchical", Kind::Hierarchical},
      {"random", Kind::Random},                {"content_adaptive", Kind::Adaptive}};
  return table;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

template <typename T>
std::string list_string(const std::vector<T>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

Kind parse_kind(const std::string& name) {
  for (const auto& [n, k] : kind_table())
    if (n == name) return k;
  throw InvalidArgument("pattern", name, "must be one of: " + join(sparse_pattern_names()));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- structured rows: the union of a diagonal, a band, global rows/columns and levels ----

struct Interval {
  int64_t lo, hi;  // inclusive
};

struct LevelBlocks {
  int64_t stride;  // rows i with i % stride == 0 carry this level
  int64_t half;    // band half-width in blocks; < 0: every column
};

struct Structure {
  int64_t nb = 0;
  int64_t half = -1;   // band half-width of every row; < 0: no band
  int64_t global = 0;  // first `global` blocks are full rows and full columns
  std::vector<LevelBlocks> levels;
};

Interval band(int64_t i, int64_t half, int64_t nb) {
  return {std::max<int64_t>(0, i - half), std::min(nb - 1, i + half)};
}

void row_intervals(const Structure& s, int64_t i, std::vector<Interval>& out) {
  out.clear();
  out.push_back({i, i});  // every row keeps its diagonal block
  if (s.half >= 0) out.push_back(band(i, s.half, s.nb));
  if (i < s.global)
    out.push_back({0, s.nb - 1});
  else if (s.global > 0)
    out.push_back({0, s.global - 1});
  for (const auto& lv : s.levels)
    if (i % lv.stride == 0) out.push_back(lv.half < 0 ? Interval{0, s.nb - 1} : band(i, lv.half, s.nb));
}

// Sorts and merges the intervals in place; returns the number of blocks they cover.
int64_t merge_intervals(std::vector<Interval>& iv) {
  std::sort(iv.begin(), iv.end(), [](const Interval& a, const Interval& b) { return a.lo < b.lo; });
  size_t w = 0;
  for (size_t r = 1; r < iv.size(); ++r) {
    if (iv[r].lo <= iv[w].hi + 1)
      iv[w].hi = std::max(iv[w].hi, iv[r].hi);
    else
      iv[++w] = iv[r];
  }
  iv.resize(iv.empty() ? 0 : w + 1);
  int64_t n = 0;
  for (const auto& x : iv) n += x.hi - x.lo + 1;
  return n;
}

int64_t structure_pairs(const Structure& s) {
  std::vector<Interval> iv;
  int64_t pairs = 0;
  for (int64_t i = 0; i < s.nb; ++i) {
    row_intervals(s, i, iv);
    pairs += merge_intervals(iv);
  }
  return pairs;
}

std::vector<std::vector<int32_t>> structure_rows(const Structure& s) {
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(s.nb));
  std::vector<Interval> iv;
  for (int64_t i = 0; i < s.nb; ++i) {
    row_intervals(s, i, iv);
    auto& row = rows[static_cast<size_t>(i)];
    row.reserve(static_cast<size_t>(merge_intervals(iv)));
    for (const auto& x : iv)
      for (int64_t j = x.lo; j <= x.hi; ++j) row.push_back(static_cast<int32_t>(j));
  }
  return rows;
}

// Token parameters -> block parameters. A window of w tokens spans ceil(w / block) blocks
// centred on the row: half-width (that count) / 2.
int64_t window_half(int64_t window_tokens, int64_t bs) {
  return std::max<int64_t>(1, ceil_div(window_tokens, bs)) / 2;
}
int64_t global_blocks(int64_t global_tokens, int64_t bs, int64_t nb) {
  return std::min(nb, ceil_div(global_tokens, bs));
}
std::vector<LevelBlocks> level_blocks(const std::vector<HierarchicalLevel>& levels, int64_t bs) {
  std::vector<LevelBlocks> out;
  for (const auto& lv : levels)
    out.push_back({std::max<int64_t>(1, lv.stride / bs), lv.window < 0 ? -1 : window_half(lv.window, bs)});
  return out;
}

std::vector<HierarchicalLevel> standard_levels() { return {{64, 256}, {256, 1024}, {1024, -1}}; }

// The hierarchical family the ratio derivation searches (tokens; see resolve_sparse).
std::vector<HierarchicalLevel> derived_levels(int64_t a, int64_t bs) {
  return {{bs, std::max<int64_t>(1, 2 * a) * bs},
          {4 * bs, std::max<int64_t>(1, 8 * a) * bs},
          {16 * bs, std::max<int64_t>(1, 32 * a) * bs}};
}

bool levels_given(const SparseConfig& cfg) { return cfg.levels_given || !cfg.levels.empty(); }

// The x in [lo, hi] whose count(x) is closest to target, for count nondecreasing in x; ties
// go to the sparser (smaller) x.
template <typename F>
int64_t closest_param(int64_t lo, int64_t hi, const F& count, double target) {
  int64_t a = lo, b = hi;
  while (a < b) {
    const int64_t m = a + (b - a) / 2;
    if (static_cast<double>(count(m)) >= target)
      b = m;
    else
      a = m + 1;
  }
  if (a > lo && std::abs(static_cast<double>(count(a - 1)) - target) <=
                    std::abs(static_cast<double>(count(a)) - target))
    --a;
  return a;
}

// Dilation offsets in the order the ratio derivation adds them: powers of two below nb
// (logarithmic reach first), then every other offset in increasing order.
std::vector<int64_t> dilation_candidates(int64_t nb) {
  std::vector<int64_t> c;
  std::vector<uint8_t> used(static_cast<size_t>(std::max<int64_t>(nb, 1)), 0);
  for (int64_t r = 1; r < nb; r *= 2) {
    c.push_back(r);
    used[static_cast<size_t>(r)] = 1;
  }
  for (int64_t r = 1; r < nb; ++r)
    if (!used[static_cast<size_t>(r)]) c.push_back(r);
  return c;
}

// Pairs of the dilated pattern with distinct offsets `rates` (each < nb): the diagonal plus,
// per offset r, the nb - r pairs above and the nb - r below it.
int64_t dilated_pairs(int64_t nb, const std::vector<int64_t>& rates, size_t k) {
  int64_t pairs = nb;
  for (size_t t = 0; t < k; ++t) pairs += 2 * std::max<int64_t>(0, nb - rates[t]);
  return pairs;
}

int64_t per_row_count(double ratio, int64_t nb) {
  return std::clamp<int64_t>(std::llround(ratio * static_cast<double>(nb)), 1, nb);
}

// splitmix64: a tiny, portable generator so that patterns are identical on every platform
// and can be regenerated on the device.
uint64_t splitmix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t uniform_below(uint64_t& state, uint64_t n) {  // in [0, n), Lemire's multiply-shift
  return static_cast<uint64_t>((static_cast<unsigned __int128>(splitmix64(state)) * n) >> 64);
}

// Random: each row keeps its diagonal and count - 1 off-diagonal blocks drawn uniformly without
// replacement (Floyd's algorithm) from a stream seeded by (seed, row), independent of others.
std::vector<std::vector<int32_t>> random_rows(int64_t nb, int64_t count, uint64_t seed) {
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nb));
  const int64_t slots = nb - 1, m = count - 1;  // off-diagonal slots, picks per row
  std::vector<uint8_t> taken(static_cast<size_t>(std::max<int64_t>(slots, 1)), 0);
  std::vector<int64_t> picked;
  for (int64_t i = 0; i < nb; ++i) {
    uint64_t st = seed * 0xD1B54A32D192ED03ull ^ static_cast<uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull;
    picked.clear();
    for (int64_t j = slots - m; j < slots; ++j) {
      int64_t t = static_cast<int64_t>(uniform_below(st, static_cast<uint64_t>(j + 1)));
      if (taken[static_cast<size_t>(t)]) t = j;
      taken[static_cast<size_t>(t)] = 1;
      picked.push_back(t);
    }
    auto& row = rows[static_cast<size_t>(i)];
    row.push_back(static_cast<int32_t>(i));
    for (int64_t t : picked) {
      taken[static_cast<size_t>(t)] = 0;
      row.push_back(static_cast<int32_t>(t < i ? t : t + 1));  // slot -> column, skipping i
    }
    std::sort(row.begin(), row.end());
  }
  return rows;
}

// Content-adaptive: each row keeps its diagonal and the topk - 1 other key blocks of highest
// score (ties to the lower index; NaN ranks lowest).
std::vector<std::vector<int32_t>> topk_rows(int64_t nb, int64_t topk,
                                            const std::vector<double>& scores) {
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nb));
  std::vector<int32_t> cand;
  for (int64_t i = 0; i < nb; ++i) {
    const double* s = &scores[static_cast<size_t>(i * nb)];
    auto key = [&](int32_t j) {
      return std::isnan(s[j]) ? -std::numeric_limits<double>::infinity() : s[j];
    };
    cand.clear();
    for (int64_t j = 0; j < nb; ++j)
      if (j != i) cand.push_back(static_cast<int32_t>(j));
    const auto take = static_cast<size_t>(topk - 1);
    std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(take), cand.end(),
                      [&](int32_t a, int32_t b) {
                        const double ka = key(a), kb = key(b);
                        return ka > kb || (ka == kb && a < b);
                      });
    auto& row = rows[static_cast<size_t>(i)];
    row.assign(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(take));
    row.push_back(static_cast<int32_t>(i));
    std::sort(row.begin(), row.end());
  }
  return rows;
}

}  // namespace

std::vector<std::string> sparse_pattern_names() {
  std::vector<std::string> names;
  for (const auto& [n, k] : kind_table()) names.push_back(n);
  return names;
}

namespace {

// The presets. Names come from the seed package; configurations are ours, chosen so that none
// is dense by accident (see the notes on each).
std::vector<std::pair<std::string, SparseConfig>> preset_table() {
  std::vector<std::pair<std::string, SparseConfig>> t;
  auto base = [](const std::string& pattern, int64_t block) {
    SparseConfig c;
    c.pattern = pattern;
    c.block_size = block;
    return c;
  };
  {  // a band of 256 tokens (5 blocks of 64) around the diagonal
    SparseConfig c = base("local_window", 64);
    c.window_size = 256;
    c.window_given = true;
    t.emplace_back("local", c);
  }
  {  // the diagonal and block offsets +-1, 2, 4, 8
    SparseConfig c = base("dilated_sparse", 64);
    c.dilation_rates = {1, 2, 4, 8};
    c.rates_given = true;
    t.emplace_back("dilated", c);
  }
  {  // 64 global TOKENS (one block of 64) as full rows and columns, plus the 256-token band
    SparseConfig c = base("global_local", 64);
    c.global_tokens = 64;
    c.window_size = 256;
    c.global_given = c.window_given = true;
    t.emplace_back("global_local", c);
  }
  {  // band of 256 tokens everywhere; every 256 tokens a 1024 window; every 1024 a global row
    SparseConfig c = base("hierarchical", 64);
    c.levels = standard_levels();
    c.levels_given = true;
    t.emplace_back("hierarchical_standard", c);
  }
  {  // four finer levels: 128-token band; every 256 a 512 window; every 1024 a 2048 window;
     // every 4096 a global row (strides >= one block, so never every row global)
    SparseConfig c = base("hierarchical", 64);
    c.levels = {{64, 128}, {256, 512}, {1024, 2048}, {4096, -1}};
    c.levels_given = true;
    t.emplace_back("hierarchical_fine", c);
  }
  {  // long reach: 512-token band; every 512 tokens a 4096 window; every 4096 a global row
    SparseConfig c = base("hierarchical", 64);
    c.levels = {{64, 512}, {512, 4096}, {4096, -1}};
    c.levels_given = true;
    t.emplace_back("hierarchical_long", c);
  }
  {  // top 10% of key blocks per query block by block-mean score
    SparseConfig c = base("content_adaptive", 64);
    c.sparsity_ratio = 0.1;
    t.emplace_back("adaptive_standard", c);
  }
  {  // dilated with the offsets derived for 2% density (1, 2, 4, ... as N grows)
    SparseConfig c = base("dilated_sparse", 64);
    c.sparsity_ratio = 0.02;
    t.emplace_back("ultra_sparse", c);
  }
  return t;
}

}  // namespace

std::vector<std::string> sparse_preset_names() {
  std::vector<std::string> names;
  for (const auto& [n, c] : preset_table()) names.push_back(n);
  return names;
}

SparseConfig sparse_preset(const std::string& name) {
  for (const auto& [n, c] : preset_table())
    if (n == name) return c;
  throw InvalidArgument("preset", name, "must be one of: " + join(sparse_preset_names()));
}

void validate_sparse(const SparseConfig& cfg, int64_t N) {
  const int64_t bs = cfg.block_size;
  LONGATTN_CHECK_ARG(bs > 0, "block_size", bs, "must be positive");
  LONGATTN_CHECK_ARG(N > 0, "seq_len", N, "must be positive");
  LONGATTN_CHECK_ARG(N % bs == 0, "seq_len", N,
                     "must be a multiple of block_size " + std::to_string(bs));
  const double r = cfg.sparsity_ratio;
  LONGATTN_CHECK_ARG(r == 0.0 || (r > 0.0 && r <= 1.0), "sparsity_ratio", r,
                     "must be in (0, 1] (the fraction of blocks kept; 0 = not given)");
  const int64_t nb = N / bs;
  switch (parse_kind(cfg.pattern)) {
    case Kind::Local:
      LONGATTN_CHECK_ARG(cfg.window_size > 0, "window_size", cfg.window_size,
                         "must be positive (tokens)");
      break;
    case Kind::Dilated:
      if (cfg.rates_given || r == 0.0)
        LONGATTN_CHECK_ARG(!cfg.dilation_rates.empty(), "dilation_rates", "[]",
                           "must not be empty");
      for (int64_t rate : cfg.dilation_rates)
        LONGATTN_CHECK_ARG(rate > 0, "dilation_rates", list_string(cfg.dilation_rates),
                           "every rate must be positive (block offsets)");
      break;
    case Kind::GlobalLocal:
      LONGATTN_CHECK_ARG(cfg.window_size > 0, "window_size", cfg.window_size,
                         "must be positive (tokens)");
      LONGATTN_CHECK_ARG(cfg.global_tokens > 0, "global_tokens", cfg.global_tokens,
                         "must be positive (tokens, not blocks)");
      break;
    case Kind::Hierarchical:
      LONGATTN_CHECK_ARG(!cfg.levels_given || !cfg.levels.empty(), "levels", "[]",
                         "must not be empty when given");
      for (size_t i = 0; i < cfg.levels.size(); ++i) {
        const std::string at = "levels[" + std::to_string(i) + "]";
        LONGATTN_CHECK_ARG(cfg.levels[i].stride > 0, at + ".stride", cfg.levels[i].stride,
                           "must be positive (tokens)");
        LONGATTN_CHECK_ARG(cfg.levels[i].window != 0, at + ".window", cfg.levels[i].window,
                           "must be positive (tokens) or negative (every column)");
      }
      break;
    case Kind::Random:
      break;
    case Kind::Adaptive:
      LONGATTN_CHECK_ARG(cfg.topk >= 0 && cfg.topk <= nb, "topk", cfg.topk,
                         "must be in [0, N / block_size = " + std::to_string(nb) +
                             "] (0 = from sparsity_ratio)");
      break;
  }
}

SparseConfig resolve_sparse(const SparseConfig& cfg, int64_t nb) {
  LONGATTN_CHECK_ARG(nb > 0, "num_blocks", nb, "must be positive");
  validate_sparse(cfg, nb * cfg.block_size);
  SparseConfig out = cfg;
  const int64_t bs = cfg.block_size;
  const bool ratio_given = cfg.sparsity_ratio > 0.0;
  const double target = cfg.sparsity_ratio * static_cast<double>(nb) * static_cast<double>(nb);
  switch (parse_kind(cfg.pattern)) {
    case Kind::Local:
      if (ratio_given && !cfg.window_given) {
        const int64_t h = closest_param(
            0, nb, [&](int64_t x) { return structure_pairs({nb, x, 0, {}}); }, target);
        out.window_size = std::max<int64_t>(1, 2 * h) * bs;
        out.window_given = true;
      }
      break;
    case Kind::Dilated:
      if (ratio_given && !cfg.rates_given) {
        const auto cand = dilation_candidates(nb);
        if (cand.empty()) break;  // one block: nothing but the diagonal exists
        const auto k = closest_param(
            1, static_cast<int64_t>(cand.size()),
            [&](int64_t x) { return dilated_pairs(nb, cand, static_cast<size_t>(x)); }, target);
        out.dilation_rates.assign(cand.begin(), cand.begin() + k);
        std::sort(out.dilation_rates.begin(), out.dilation_rates.end());
        out.rates_given = true;
      }
      break;
    case Kind::GlobalLocal:
      if (ratio_given && !cfg.window_given) {
        const int64_t g = global_blocks(cfg.global_tokens, bs, nb);
        const int64_t h = closest_param(
            0, nb, [&](int64_t x) { return structure_pairs({nb, x, g, {}}); }, target);
        out.window_size = std::max<int64_t>(1, 2 * h) * bs;
        out.window_given = true;
      } else if (ratio_given && !cfg.global_given) {
        const int64_t h = window_half(cfg.window_size, bs);
        const int64_t g = closest_param(
            1, nb, [&](int64_t x) { return structure_pairs({nb, h, x, {}}); }, target);
        out.global_tokens = g * bs;
        out.global_given = true;
      }
      break;
    case Kind::Hierarchical:
      if (!levels_given(cfg)) {
        if (ratio_given) {
          const int64_t a = closest_param(
              0, nb,
              [&](int64_t x) {
                return structure_pairs({nb, -1, 0, level_blocks(derived_levels(x, bs), bs)});
              },
              target);
          out.levels = derived_levels(a, bs);
        } else {
          out.levels = standard_levels();
        }
        out.levels_given = true;
      }
      break;
    case Kind::Random:
      if (!ratio_given) out.sparsity_ratio = SparseDefaults::kRandomRatio;
      break;
    case Kind::Adaptive:
      if (cfg.topk == 0)
        out.topk = per_row_count(ratio_given ? cfg.sparsity_ratio : SparseDefaults::kAdaptiveRatio, nb);
      break;
  }
  return out;
}

std::vector<std::vector<int32_t>> block_pattern(const SparseConfig& cfg_in, int64_t nb,
                                                const std::vector<double>* scores) {
  const SparseConfig cfg = resolve_sparse(cfg_in, nb);
  const int64_t bs = cfg.block_size;
  switch (parse_kind(cfg.pattern)) {
    case Kind::Local:
      return structure_rows({nb, window_half(cfg.window_size, bs), 0, {}});
    case Kind::GlobalLocal:
      return structure_rows(
          {nb, window_half(cfg.window_size, bs), global_blocks(cfg.global_tokens, bs, nb), {}});
    case Kind::Hierarchical:
      return structure_rows({nb, -1, 0, level_blocks(cfg.levels, bs)});
    case Kind::Dilated: {
      std::vector<std::vector<int32_t>> rows(static_cast<size_t>(nb));
      for (int64_t i = 0; i < nb; ++i) {
        auto& row = rows[static_cast<size_t>(i)];
        row.push_back(static_cast<int32_t>(i));
        for (int64_t r : cfg.dilation_rates) {
          if (i - r >= 0) row.push_back(static_cast<int32_t>(i - r));
          if (i + r < nb) row.push_back(static_cast<int32_t>(i + r));
        }
        std::sort(row.begin(), row.end());
        row.erase(std::unique(row.begin(), row.end()), row.end());
      }
      return rows;
    }
    case Kind::Random:
      return random_rows(nb, per_row_count(cfg.sparsity_ratio, nb), cfg.seed);
    case Kind::Adaptive:
      LONGATTN_CHECK_ARG(scores != nullptr, "scores", "none",
                         "content_adaptive needs the block-mean scores (block_mean_scores)");
      LONGATTN_CHECK_ARG(static_cast<int64_t>(scores->size()) == nb * nb, "scores",
                         scores->size(), "must hold nb * nb = " + std::to_string(nb * nb) + " values");
      return topk_rows(nb, cfg.topk, *scores);
  }
  return {};
}

std::vector<double> block_mean_scores(const TensorView& q, const TensorView& k,
                                      int64_t block_size) {
  LONGATTN_CHECK_ARG(q.device == DeviceKind::Cpu && k.device == DeviceKind::Cpu, "q, k",
                     "device views", "block_mean_scores reads host views");
  LONGATTN_CHECK_ARG(block_size > 0, "block_size", block_size, "must be positive");
  LONGATTN_CHECK_ARG(k.B == q.B && k.N == q.N && k.H == q.H && k.D == q.D, "k", k.shape_string(),
                     "must have the shape of q " + q.shape_string());
  LONGATTN_CHECK_ARG(q.N > 0 && q.N % block_size == 0, "seq_len", q.N,
                     "must be a positive multiple of block_size " + std::to_string(block_size));
  const int64_t B = q.B, H = q.H, D = q.D, nb = q.N / block_size;
  // Block means of q and k per (batch, head): [bh][block][d].
  auto block_means = [&](const TensorView& t) {
    std::vector<double> m(static_cast<size_t>(B * H * nb * D), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < t.N; ++n) {
          double* dst = &m[static_cast<size_t>(((b * H + h) * nb + n / block_size) * D)];
          for (int64_t d = 0; d < D; ++d) dst[d] += load(t, b, n, h, d);
        }
    for (double& x : m) x /= static_cast<double>(block_size);
    return m;
  };
  const auto qm = block_means(q), km = block_means(k);
  std::vector<double> s(static_cast<size_t>(nb * nb), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < nb; ++i) {
      const double* qi = &qm[static_cast<size_t>((bh * nb + i) * D)];
      for (int64_t j = 0; j < nb; ++j) {
        const double* kj = &km[static_cast<size_t>((bh * nb + j) * D)];
        double dot = 0.0;
        for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
        s[static_cast<size_t>(i * nb + j)] += dot;
      }
    }
  for (double& x : s) x /= static_cast<double>(B * H);
  return s;
}

BlockMask sparse_block_mask(const SparseConfig& cfg, int64_t N, bool causal,
                            const std::vector<double>* scores) {
  validate_sparse(cfg, N);
  const int64_t bs = cfg.block_size;
  MaskGeometry g;
  g.nq = g.nk = N;
  g.block_q = g.block_k = bs;
  g.causal = causal;
  return build_block_mask(g, block_pattern(cfg, N / bs, scores));
}

}  // namespace longattn
