// The suites of `longattn bench` (see bench.hpp): which variants, modes, shapes and passes each
// runs. They mirror the seed package's benchmark scripts (SEED_SPEC.md section 9) with the
// seeds' configurations as defaults; the command line can shrink or change them.
#include <algorithm>
#include <numeric>
#include <sstream>

#include "attention/distributed.hpp"
#include "launch/bench.hpp"
#include "launch/options.hpp"
#include "runtime/error.hpp"

namespace longattn::cli {

namespace {

// Default sizes per device: the seeds' and the issue's shapes on GPUs, small ones on CPU ranks
// (the CPU backend is the fp64-accumulating reference, a few GFLOP/s per core).
struct Defaults {
  int64_t tile_gpu = 128, tile_cpu = 64;
};
constexpr Defaults kDefaults{};

std::string ratio_text(double r) {
  std::ostringstream os;
  os << r;
  return os.str();
}

int64_t tile_block(const SuiteParams& p) {
  return p.block_size > 0 ? p.block_size : p.cuda ? kDefaults.tile_gpu : kDefaults.tile_cpu;
}

std::vector<bool> causal_values(const SuiteParams& p, std::vector<bool> fallback) {
  if (p.causal == "no") return {false};
  if (p.causal == "yes") return {true};
  if (p.causal == "both") return {false, true};
  return fallback;
}

std::vector<std::string> passes_or(const SuiteParams& p, std::vector<std::string> fallback) {
  return p.passes.empty() ? fallback : p.passes;
}

// The suite's shapes, or the command line's: --seq-len x --batch (each defaulting to the
// suite's values), --heads and --head-dim applied to every shape.
std::vector<Shape> shapes_or(const SuiteParams& p, const std::vector<Shape>& fallback) {
  std::vector<Shape> out;
  if (!p.seq_lens.empty() || !p.batches.empty()) {
    std::vector<int64_t> ns = p.seq_lens, bs = p.batches;
    for (const auto& s : fallback) {
      if (p.seq_lens.empty() && std::find(ns.begin(), ns.end(), s.N) == ns.end()) ns.push_back(s.N);
      if (p.batches.empty() && std::find(bs.begin(), bs.end(), s.B) == bs.end()) bs.push_back(s.B);
    }
    for (int64_t n : ns)
      for (int64_t b : bs) out.push_back(Shape{b, n, fallback.front().H, fallback.front().D});
  } else {
    out = fallback;
  }
  for (auto& s : out) {
    if (p.heads > 0) s.H = p.heads;
    if (p.head_dim > 0) s.D = p.head_dim;
  }
  return out;
}

AttentionSpec dense_spec(int64_t tile, bool causal) {
  AttentionSpec s;
  s.variant = "dense";
  s.block_size = tile;
  s.causal = causal;
  return s;
}

AttentionSpec dilated_spec(std::vector<int64_t> segments, DilatedMode mode, int64_t tile,
                           bool causal, int64_t pass_rows) {
  AttentionSpec s;
  s.variant = "dilated";
  s.block_size = tile;
  s.causal = causal;
  s.dilated.segment_lengths = std::move(segments);
  s.dilated.dilation_rates = {1, 2, 4};
  s.dilated.mode = mode;
  s.dilated.pass_rows = pass_rows;
  return s;
}

AttentionSpec sparse_spec(const std::string& pattern, double ratio, int64_t block, bool causal) {
  AttentionSpec s;
  s.variant = "block_sparse";
  s.block_size = block;
  s.causal = causal;
  s.sparse.pattern = pattern;
  s.sparse.block_size = block;
  s.sparse.sparsity_ratio = ratio;
  s.sparse.seed = 1;
  return s;
}

std::string sparse_label(const std::string& pattern, double ratio) {
  return "block_sparse/" + pattern + " r=" + ratio_text(ratio);
}

std::string dilated_label(DilatedMode m) { return std::string("dilated/") + mode_name(m); }

// Appends one case per pass. A case already listed (same row key) runs once; it joins the new
// case's group ("weak,strong" when weak scaling reaches a strong-scaling length).
class CaseList {
 public:
  void add(BenchCase c, const std::vector<std::string>& passes) {
    for (const auto& pass : passes) {
      c.pass = pass;
      const std::string k = key(c);
      const auto it = std::find(keys_.begin(), keys_.end(), k);
      if (it != keys_.end()) {
        std::string& g = cases_[static_cast<size_t>(it - keys_.begin())].group;
        if (!c.group.empty() && ("," + g + ",").find("," + c.group + ",") == std::string::npos)
          g += (g.empty() ? "" : ",") + c.group;
        continue;
      }
      keys_.push_back(k);
      cases_.push_back(c);
    }
  }
  std::vector<BenchCase> take() { return std::move(cases_); }

 private:
  static std::string key(const BenchCase& c) {
    std::ostringstream os;
    os << c.label << '|' << c.mode << '|' << sharding_name(c.sharding) << '|' << c.shape.B << '|'
       << c.shape.N << '|' << c.shape.H << '|' << c.shape.D << '|' << c.spec.causal << '|' << c.pass
       << '|' << join_ints(c.spec.dilated.segment_lengths);
    return os.str();
  }
  std::vector<std::string> keys_;
  std::vector<BenchCase> cases_;
};

BenchCase make_case(const std::string& suite, const std::string& group, const std::string& label,
                    const AttentionSpec& spec, const Shape& shape, DType dtype,
                    const std::string& mode = kModeSingle,
                    Sharding sharding = Sharding::Contiguous) {
  BenchCase c;
  c.suite = suite;
  c.group = group;
  c.label = label;
  c.spec = spec;
  c.shape = shape;
  c.dtype = dtype;
  c.mode = mode;
  c.sharding = sharding;
  return c;
}

// benchmark_all.py (SEED_SPEC 9.1): segment_lengths [min(s, N/2) for s in 1024, 2048, 4096],
// rates [1, 2, 4], B 1 2 4, N 2048 4096 8192, H 8, D 64; dense, dilated (both modes) and
// block-sparse dilated_sparse at ratios 0.1, 0.25, 0.5 (the seed used 32-token blocks; the GPU
// kernels take 64 or 128).
std::vector<BenchCase> implementations(const SuiteParams& p) {
  std::vector<Shape> seed;
  for (int64_t n : {2048, 4096, 8192})
    for (int64_t b : {1, 2, 4}) seed.push_back(Shape{b, n, 8, 64});
  const int64_t tile = tile_block(p);
  const int64_t sparse_block = p.block_size > 0 ? p.block_size : 64;
  const std::vector<double> ratios =
      p.ratios.empty() ? std::vector<double>{0.1, 0.25, 0.5} : p.ratios;
  const auto passes = passes_or(p, {"fwd", "bwd"});
  CaseList list;
  for (const Shape& s : shapes_or(p, seed))
    for (bool causal : causal_values(p, {false})) {
      std::vector<int64_t> segs;
      for (int64_t x : {1024, 2048, 4096}) segs.push_back(std::min(x, s.N / 2));
      list.add(make_case("implementations", "seed", "dense", dense_spec(tile, causal), s, p.dtype),
               passes);
      for (DilatedMode m : {DilatedMode::Groups, DilatedMode::LongNet})
        list.add(make_case("implementations", "seed", dilated_label(m),
                           dilated_spec(segs, m, tile, causal, p.pass_rows), s, p.dtype),
                 passes);
      for (double r : ratios)
        list.add(make_case("implementations", "seed", sparse_label("dilated_sparse", r),
                           sparse_spec("dilated_sparse", r, sparse_block, causal), s, p.dtype),
                 passes);
    }
  return list.take();
}

// benchmark_comprehensive_report.py (SEED_SPEC 9.7): block-sparse at 90, 95, 98% sparsity (and
// 99%) beside dense at the same shape: Small 2048 x B4, Medium 4096 x B2, Large 8192, Extra
// Large 16384 (H 8, D 64), and the issue's 64K tokens at H 16, D 128.
std::vector<BenchCase> sparsity(const SuiteParams& p) {
  const std::vector<Shape> seed{
      {4, 2048, 8, 64}, {2, 4096, 8, 64}, {1, 8192, 8, 64}, {1, 16384, 8, 64}};
  const Shape issue{1, 65536, 16, 128};
  // The issue's shape first: it matters most when a time budget cuts the suite short.
  std::vector<Shape> shapes{issue};
  shapes.insert(shapes.end(), seed.begin(), seed.end());
  const bool custom = !p.seq_lens.empty() || !p.batches.empty();
  shapes = shapes_or(p, custom ? std::vector<Shape>{seed.front()} : shapes);
  const int64_t block = p.block_size > 0 ? p.block_size : kDefaults.tile_gpu;
  const std::vector<double> ratios =
      p.ratios.empty() ? std::vector<double>{0.1, 0.05, 0.02, 0.01} : p.ratios;
  const std::vector<std::string> patterns =
      p.patterns.empty() ? std::vector<std::string>{"local_window", "dilated_sparse"} : p.patterns;
  const auto passes = passes_or(p, {"fwd", "bwd"});
  CaseList list;
  for (const Shape& s : shapes) {
    const std::string group = s.N == issue.N && s.H == issue.H && s.D == issue.D ? "issue" : "seed";
    for (bool causal : causal_values(p, {false})) {
      list.add(make_case("sparsity", group, "dense", dense_spec(block, causal), s, p.dtype),
               passes);
      for (const auto& pattern : patterns)
        for (double r : ratios)
          list.add(make_case("sparsity", group, sparse_label(pattern, r),
                             sparse_spec(pattern, r, block, causal), s, p.dtype),
                   passes);
    }
  }
  return list.take();
}

Sharding sharding_for(bool causal) { return causal ? Sharding::Zigzag : Sharding::Contiguous; }

// Single rank vs data-parallel vs ring vs block-sparse ring vs distributed dilated on all ranks
// (SEED_SPEC 9.6, done with real sequence parallelism). weak: N = ranks x local length; strong:
// fixed N, with single-rank rows at N (speed-up) and at N / ranks (efficiency).
std::vector<BenchCase> scaling(const SuiteParams& p) {
  const int P = p.world;
  const std::vector<int64_t> locals = !p.local_lens.empty() ? p.local_lens
                                      : p.cuda              ? std::vector<int64_t>{16384, 32768}
                                                            : std::vector<int64_t>{256};
  const std::vector<int64_t> totals = !p.seq_lens.empty() ? p.seq_lens
                                      : p.cuda            ? std::vector<int64_t>{131072}
                                                          : std::vector<int64_t>{1024};
  const int64_t H = p.heads > 0 ? p.heads : p.cuda ? 16 : 4;
  const int64_t D = p.head_dim > 0 ? p.head_dim : p.cuda ? 128 : 32;
  const int64_t tile = tile_block(p);
  const double ratio = p.ratios.empty() ? 0.1 : p.ratios.front();
  const std::string pattern = p.patterns.empty() ? "local_window" : p.patterns.front();
  const auto passes = passes_or(p, {"fwd", "fwd+bwd"});
  auto segments_for = [&](int64_t n_smallest) {
    if (!p.segments.empty()) return p.segments;
    if (p.cuda) return std::vector<int64_t>{2048, 4096, 8192};
    return std::vector<int64_t>{n_smallest / 4, n_smallest / 2, n_smallest};
  };
  CaseList list;
  auto variants = [&](const std::string& group, bool causal, int64_t n_single, int64_t n_dist,
                      int64_t local_n, const std::vector<int64_t>& segs) {
    const Sharding sh = sharding_for(causal);
    struct V {
      std::string label, mode;
      AttentionSpec spec;
      Sharding sharding;
    };
    const std::vector<V> vs{
        {"dense", "ring", dense_spec(tile, causal), sh},
        {sparse_label(pattern, ratio), "block_sparse_ring",
         sparse_spec(pattern, ratio, tile, causal), sh},
        {dilated_label(DilatedMode::Groups), "dilated",
         dilated_spec(segs, DilatedMode::Groups, tile, causal, p.pass_rows), Sharding::Contiguous}};
    for (const auto& v : vs) {
      BenchCase one =
          make_case("scaling", group, v.label, v.spec, Shape{1, n_single, H, D}, p.dtype);
      one.local_n = local_n;
      list.add(one, passes);
      if (group == "strong" && n_dist / P != n_single) {
        BenchCase local = one;
        local.shape.N = n_dist / P;
        list.add(local, passes);
      }
      BenchCase dist = make_case("scaling", group, v.label, v.spec, Shape{1, n_dist, H, D}, p.dtype,
                                 v.mode, v.sharding);
      dist.local_n = local_n;
      list.add(dist, passes);
      if (v.label == "dense" && group == "weak") {
        // Data-parallel: one whole sequence per rank, no communication inside attention.
        BenchCase dp = make_case("scaling", group, v.label, v.spec, Shape{P, n_single, H, D},
                                 p.dtype, "data_parallel");
        dp.local_n = local_n;
        list.add(dp, passes);
      }
    }
  };
  for (bool causal : causal_values(p, {false, true})) {
    for (int64_t L : locals) variants("weak", causal, L, L * P, L, segments_for(L));
    for (int64_t T : totals) variants("strong", causal, T, T, T / P, segments_for(T / P));
  }
  // The single-rank baselines first, so every distributed row's efficiency and speed-up can be
  // printed when it completes.
  std::vector<BenchCase> cases = list.take();
  std::stable_partition(cases.begin(), cases.end(),
                        [](const BenchCase& c) { return c.mode == kModeSingle; });
  return cases;
}

// A fixed small set compared with a committed baseline (tests/test_performance_regression_all.py
// of the seeds, with real timings): dense, dense causal, dilated groups, block-sparse.
std::vector<BenchCase> regression(const SuiteParams& p) {
  const std::vector<Shape> shapes = shapes_or(p, {Shape{1, 1024, 4, 32}});
  const int64_t tile = tile_block(p);
  CaseList list;
  for (const Shape& s : shapes) {
    const std::vector<int64_t> segs{s.N / 4, s.N / 2, s.N};
    list.add(make_case("regression", "", "dense", dense_spec(tile, false), s, p.dtype),
             {"fwd", "bwd"});
    list.add(make_case("regression", "", "dense", dense_spec(tile, true), s, p.dtype), {"fwd"});
    list.add(make_case("regression", "", dilated_label(DilatedMode::Groups),
                       dilated_spec(segs, DilatedMode::Groups, tile, false, p.pass_rows), s,
                       p.dtype),
             {"fwd"});
    list.add(make_case("regression", "", sparse_label("dilated_sparse", 0.25),
                       sparse_spec("dilated_sparse", 0.25, tile, false), s, p.dtype),
             {"fwd"});
    if (p.world > 1) {
      list.add(make_case("regression", "", "dense", dense_spec(tile, true), s, p.dtype, "ring",
                         Sharding::Zigzag),
               {"fwd"});
      list.add(make_case("regression", "", sparse_label("dilated_sparse", 0.25),
                         sparse_spec("dilated_sparse", 0.25, tile, false), s, p.dtype,
                         "block_sparse_ring"),
               {"fwd"});
    }
  }
  return list.take();
}

// One variant from the usual options over --seq-len x --batch, single or --dist.
std::vector<BenchCase> custom(const SuiteParams& p) {
  const std::vector<Shape> shapes = shapes_or(p, {Shape{1, 4096, 8, 64}});
  CaseList list;
  for (const Shape& s : shapes)
    for (bool causal : causal_values(p, {p.custom.causal})) {
      AttentionSpec spec = p.custom;
      spec.causal = causal;
      list.add(make_case("custom", "", p.custom_label, spec, s, p.dtype,
                         p.dist.empty() ? kModeSingle : p.dist, p.sharding),
               passes_or(p, {"fwd"}));
    }
  return list.take();
}

}  // namespace

double pass_flop_factor(const std::string& pass) {
  if (pass == "fwd") return 1.0;
  if (pass == "bwd") return 2.5;
  return 3.5;
}
bool pass_has_backward(const std::string& pass) { return pass != "fwd"; }

std::vector<SuiteInfo> suite_infos() {
  return {{"implementations",
           "seeds' benchmark_all.py configurations: dense, dilated, block-sparse 10/25/50%"},
          {"sparsity", "block-sparse at 90, 95, 98, 99% sparsity beside dense (speed-up)"},
          {"maxseq", "longest N per mode: doubling, bisection, until OOM, --max-n or time"},
          {"scaling", "single vs data-parallel vs ring vs block-sparse ring vs dilated"},
          {"regression", "a fixed small set against --baseline (exit 4 when slower)"},
          {"custom", "the variant options over --seq-len x --batch (the default)"}};
}

std::vector<BenchCase> suite_cases(const std::string& suite, const SuiteParams& p) {
  if (suite == "implementations") return implementations(p);
  if (suite == "sparsity") return sparsity(p);
  if (suite == "scaling") return scaling(p);
  if (suite == "regression") return regression(p);
  if (suite == "custom") return custom(p);
  std::string names;
  for (const auto& s : suite_infos()) names += (names.empty() ? "" : ", ") + s.name;
  throw InvalidArgument("--suite", suite, "must be one of " + names);
}

std::vector<MaxseqEntry> maxseq_entries(const SuiteParams& p, const MaxseqParams& m) {
  const int P = p.world;
  const int64_t H = p.heads > 0 ? p.heads : p.cuda ? 16 : 4;
  const int64_t D = p.head_dim > 0 ? p.head_dim : p.cuda ? 128 : 32;
  const int64_t tile = tile_block(p);
  const bool causal = p.causal.empty() || p.causal == "yes";
  LONGATTN_CHECK_ARG(p.causal != "both", "--causal", p.causal,
                     "must be yes or no for maxseq (one search per mode)");
  const std::vector<int64_t> segs = !p.segments.empty() ? p.segments
                                    : p.cuda            ? std::vector<int64_t>{2048, 4096, 8192}
                                                        : std::vector<int64_t>{256, 512, 1024};
  const int64_t window = p.window > 0 ? p.window : p.cuda ? 4096 : 256;
  std::vector<std::string> kinds = m.kinds;
  if (kinds.empty())
    kinds = P == 1 ? std::vector<std::string>{"dense"}
                   : std::vector<std::string>{"dense", "block_sparse", "dilated", "data_parallel"};
  std::vector<MaxseqEntry> out;
  for (const auto& k : kinds) {
    const size_t colon = k.find(':');
    const std::string kind = k.substr(0, colon);
    const std::string pass = colon == std::string::npos ? "fwd+bwd" : k.substr(colon + 1);
    LONGATTN_CHECK_ARG(pass == "fwd" || pass == "bwd" || pass == "fwd+bwd", "--modes", k,
                       "a pass after ':' must be fwd, bwd or fwd+bwd");
    const Sharding sh = sharding_for(causal);
    MaxseqEntry e;
    int64_t g = m.granularity > 0 ? m.granularity : 1024 * static_cast<int64_t>(P);
    auto require = [&g](int64_t multiple) { g = std::lcm(g, multiple); };
    if (kind == "dense") {
      e.base =
          make_case("maxseq", "", "dense", dense_spec(tile, causal), Shape{1, 0, H, D}, p.dtype,
                    P == 1 ? kModeSingle : "ring", P == 1 ? Sharding::Contiguous : sh);
      require(2 * P * tile);
    } else if (kind == "block_sparse") {
      AttentionSpec s = sparse_spec("local_window", 0.0, tile, causal);
      s.sparse.window_size = window;
      s.sparse.window_given = true;
      e.base = make_case("maxseq", "", "block_sparse/local_window w=" + std::to_string(window), s,
                         Shape{1, 0, H, D}, p.dtype, P == 1 ? kModeSingle : "block_sparse_ring",
                         P == 1 ? Sharding::Contiguous : sh);
      require(2 * P * tile);
    } else if (kind == "dilated" || kind == "dilated_longnet") {
      const DilatedMode dm = kind == "dilated" ? DilatedMode::Groups : DilatedMode::LongNet;
      e.base = make_case("maxseq", "", dilated_label(dm),
                         dilated_spec(segs, dm, tile, causal, p.pass_rows), Shape{1, 0, H, D},
                         p.dtype, P == 1 ? kModeSingle : "dilated");
      // Shards of whole segments: no segment spans ranks (LongNet's no-communication case,
      // where fp16/bf16 gradients hold no shard-sized fp32).
      for (int64_t seg : segs) require(seg * P);
    } else if (kind == "data_parallel") {
      LONGATTN_CHECK_ARG(P > 1, "--modes", k, "data_parallel needs several ranks");
      e.base = make_case("maxseq", "", "dense", dense_spec(tile, causal), Shape{P, 0, H, D},
                         p.dtype, "data_parallel");
      require(tile);
    } else {
      throw InvalidArgument("--modes", k,
                            "must be dense, block_sparse, dilated, dilated_longnet or "
                            "data_parallel, optionally "
                            "followed by :fwd, :bwd or :fwd+bwd");
    }
    e.base.pass = pass;
    e.granularity = g;
    out.push_back(e);
  }
  return out;
}

}  // namespace longattn::cli
