// `longattn bench`: the benchmark suites (what each suite runs), the sampled-row reference check
// behind the table's #wrong column, and the subcommand itself. cmd_bench.cpp runs cases, prints
// the nccl-tests-style table and writes JSON/CSV; bench_suites.cpp defines the suites;
// bench_check.cpp recomputes sampled output rows in fp64 on the host.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "comm/communicator.hpp"
#include "kernels/backend.hpp"
#include "launch/commands.hpp"
#include "runtime/dtype.hpp"
#include "runtime/sharding.hpp"

namespace longattn::cli {

int cmd_bench(const Args& args, const ProcessGroup& mpi);

// Exit code of `longattn bench --suite regression` when a row is slower than its baseline by
// more than the threshold (the other codes are options.hpp's ExitCode).
constexpr int kExitBenchRegression = 4;

// How a case is spread over the ranks. single: every rank runs the whole problem on its own
// device at the same time (the one-GPU baseline; the slowest rank is reported); the others are
// attention/distributed.hpp's modes over all ranks.
inline const char* const kModeSingle = "single";

// One row of a suite: a variant, a mode, a GLOBAL shape, a dtype and a pass.
struct BenchCase {
  std::string suite;
  // weak | strong | seed | issue | "" (what the row belongs to in plots); a comma list when
  // one row serves several (weak scaling at a strong-scaling length: "weak,strong").
  std::string group;
  std::string label;  // "dense", "dilated/groups", "block_sparse/local_window r=0.1"
  AttentionSpec spec;
  std::string mode = kModeSingle;  // single | ring | block_sparse_ring | dilated | data_parallel
  Sharding sharding = Sharding::Contiguous;
  Shape shape;  // global
  DType dtype = DType::F32;
  std::string pass = "fwd";  // fwd | bwd (backward alone) | fwd+bwd
  int64_t local_n = 0;       // weak scaling: tokens per rank (0 elsewhere)
};

// Forward FLOPs are counted once per row; the passes scale them (DESIGN.md: backward 2.5x).
double pass_flop_factor(const std::string& pass);
bool pass_has_backward(const std::string& pass);

// What the command line changes in a suite. Empty lists and zeros keep the suite's defaults.
struct SuiteParams {
  int world = 1;
  bool cuda = false;
  DType dtype = DType::F32;
  std::vector<int64_t> seq_lens, batches, local_lens;
  int64_t heads = 0, head_dim = 0;
  std::string causal;  // "" (suite default) | no | yes | both
  std::vector<std::string> passes;
  int64_t block_size = 0;
  std::vector<double> ratios;
  std::vector<std::string> patterns;
  std::vector<int64_t> segments;  // dilated segment lengths (scaling, maxseq, custom)
  int64_t pass_rows = 0;          // dilated longnet: DilatedConfig::pass_rows
  int64_t window = 0;             // maxseq block_sparse: local window in tokens
  // The custom suite: one variant from the usual variant options.
  AttentionSpec custom;
  std::string custom_label;
  std::string dist;  // custom: "" (single) or a distributed mode
  Sharding sharding = Sharding::Contiguous;
};

struct SuiteInfo {
  std::string name, summary;
};
std::vector<SuiteInfo> suite_infos();
// The rows of a suite (every suite but maxseq). Unknown names throw InvalidArgument.
std::vector<BenchCase> suite_cases(const std::string& suite, const SuiteParams& p);

// The longest-sequence search: one entry per mode searched; N is what the search varies.
struct MaxseqEntry {
  BenchCase base;           // shape.N is filled in per trial
  int64_t granularity = 1;  // every trial N is a multiple of this
};
struct MaxseqParams {
  std::vector<std::string> kinds;  // dense | block_sparse | dilated | data_parallel [":" pass]
  int64_t min_n = 0, max_n = 0, granularity = 0;
};
std::vector<MaxseqEntry> maxseq_entries(const SuiteParams& p, const MaxseqParams& m);

// ---- the sampled-row check ------------------------------------------------------------------

// Where this rank's local rows sit in the global problem: global_row[lb * local.N + ln] is
// b * N + n for the global batch b and row n of local batch lb, row ln. A rank that does not
// take part (single mode, ranks > 0) holds nothing.
struct CheckLayout {
  Shape global, local;
  bool participates = true;
  std::vector<int64_t> global_row;
};

struct CheckResult {
  int rows = 0;          // sampled rows checked (0: the variant has no host reference here)
  int wrong = 0;         // rows with an O element or the LSE beyond tolerance (or not finite)
  double max_ratio = 0;  // max over rows and elements of error / tolerance
  std::string note;      // why nothing was checked, or the worst row
};

// Recomputes `samples` query rows of O and LSE (in two (batch, head) pairs, one for fewer than
// four samples; rows 0, N-1 and random ones) naively in fp64 on the host from this rank's K/V rows,
// reduces the partial softmax sums over the ranks through `host` (collective), and compares with
// the device's o and lse rows. Tolerance per element: u * (8 * E + 2 * |O|) + floor, where u is the
// dtype's unit roundoff (fp32: 2^-20, allowing for approximate exponentials), E = sqrt(sum_j (p_j
// v_j)^2) is the scale of rounding errors that accumulate as a random walk over the keys, and floor
// is 1e-12 (fp64) or 1e-6; the LSE within 1e-10 (fp64) or 1e-4, relative to max(1, |L|). `perturb`
// (testing the check itself) is added to one element of every observed row.
CheckResult check_sampled_rows(const AttentionSpec& resolved, const CheckLayout& layout,
                               Backend& be, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& o, const TensorView& lse,
                               int samples, uint64_t seed, Communicator& host,
                               double perturb = 0.0);

}  // namespace longattn::cli
