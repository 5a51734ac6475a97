// multigpu_bench: scaling of longattn's dense ring attention (or, with --variant block_sparse,
// the block-sparse ring) over one MPI rank per GPU (NCCL), forward and backward, weak (fixed
// tokens per GPU) and strong (fixed total tokens); one rank runs the single-device variant. For each
// case it also runs the identical ring with the transfers left out (the same kernels, steps and
// merges on stale K/V), so the exposed communication time is the difference. Rank 0 writes one
// JSON line per case; bench/multigpu/run_scaling.sh runs it beside the PyTorch anchors and
// bench/multigpu/scaling_report.py turns both into the committed JSON and a table.
//
//   mpirun -np 4 multigpu_bench --weak 32768,16384 --strong 131072 --out rows.jsonl
#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attention/distributed.hpp"
#include "attention/ring.hpp"
#include "attention/variant.hpp"
#include "comm/mpi_communicator.hpp"
#include "comm/nccl/nccl_communicator.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#include "runtime/error.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace longattn {
namespace {

struct Options {
  std::vector<int64_t> weak{32768};    // tokens per GPU
  std::vector<int64_t> strong;         // total tokens
  std::vector<int64_t> strong_fwd_only;  // total tokens, forward only (the longest runs)
  int64_t heads = 16, head_dim = 128, batch = 1, block = 128;
  std::string dtype = "bf16";
  std::string causal = "both";  // both | causal | full
  // dense | block_sparse (the block-sparse ring; pattern, ratio or window as `longattn run`)
  std::string variant = "dense";
  std::string pattern = "local_window";
  double ratio = 0.0;        // kept share of blocks; 0: from the window
  int64_t window = 0;        // local_window tokens; 0: from the ratio
  std::string route = "";    // block-sparse: ring | direct (empty: the default)
  std::string sharding = "";  // contiguous | zigzag (empty: zigzag when causal)
  bool ring_on_one = false;   // one rank: the distributed variant (S = 1) instead of the single
  int warmup = 1, repeats = 3, null_repeats = 2;
  // Timed runs (and transfer-free runs) shrink so each set takes about this long, judged by the
  // case's first run; at least one of each. 0: always `repeats` and `null_repeats`.
  double max_seconds = 0.0;
  // No new case starts after this many seconds, nor one predicted (from the seconds per FLOP of
  // the last case that ran) to end after it.
  double budget_s = 60.0;
  std::string out = "multigpu_bench.jsonl";
  std::string command;
};

// The same communicator with the transfers left out: every exchange completes at once and
// moves nothing, so the ring runs exactly its compute. Collectives and the control plane pass
// through (config agreement still works).
class NoTransferComm final : public Communicator {
 public:
  explicit NoTransferComm(Communicator& real) : real_(real) {}
  int rank() const override { return real_.rank(); }
  int world() const override { return real_.world(); }
  std::string backend() const override { return real_.backend() + " (no transfers)"; }
  DeviceKind buffer_device() const override { return real_.buffer_device(); }
  double timeout_seconds() const override { return real_.timeout_seconds(); }
  void set_timeout_seconds(double s) override { real_.set_timeout_seconds(s); }
  CommRequest start_exchange(const std::vector<SendSpec>&, const std::vector<RecvSpec>&,
                             CommOp) override {
    return CommRequest();
  }
  void allreduce(void* buf, size_t count, DType dtype, ReduceOp reduce, CommOp op) override {
    real_.allreduce(buf, count, dtype, reduce, op);
  }
  void broadcast(void* buf, size_t bytes, int root, CommOp op) override {
    real_.broadcast(buf, bytes, root, op);
  }
  void barrier(CommOp op) override { real_.barrier(op); }
  void allgather_host(const void* send, size_t bytes, void* recv, CommOp op) override {
    real_.allgather_host(send, bytes, recv, op);
  }
  void broadcast_host(void* buf, size_t bytes, int root, CommOp op) override {
    real_.broadcast_host(buf, bytes, root, op);
  }
  void allreduce_host(double* values, size_t count, ReduceOp reduce, CommOp op) override {
    real_.allreduce_host(values, count, reduce, op);
  }

 private:
  Communicator& real_;
};

struct Case {
  std::string scaling;  // weak | strong
  int64_t N = 0;        // total tokens
  bool causal = false;
  bool backward = true;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

AttentionSpec case_spec(const Case& c, const Options& o) {
  AttentionSpec spec;
  spec.variant = o.variant;
  spec.causal = c.causal;
  spec.block_size = o.block;
  if (o.variant == "block_sparse") {
    spec.sparse.pattern = o.pattern;
    spec.sparse.block_size = o.block;
    spec.sparse.sparsity_ratio = o.ratio;
    spec.sparse.seed = 1;
    if (o.window > 0) {
      spec.sparse.window_size = o.window;
      spec.sparse.window_given = true;
    }
  }
  return spec;
}

// Forward FLOPs over all visible pairs (dense causal: j <= i, N(N+1)/2 pairs; block-sparse: the
// pairs of its mask, as the variant counts them).
double forward_flops(const Case& c, const Options& o) {
  if (o.variant != "dense")
    return make_attention(case_spec(c, o))->flops(Shape{o.batch, c.N, o.heads, o.head_dim});
  const double n = static_cast<double>(c.N);
  const double pairs = c.causal ? n * (n + 1.0) / 2.0 : n * n;
  return 4.0 * static_cast<double>(o.batch * o.heads * o.head_dim) * pairs;
}

struct Timings {
  double fwd = 0, bwd = 0;  // medians, slowest rank
  int runs = 0;             // timed runs behind the medians
  DistCounters fwd_counters;  // of this rank's last forward
};

// Runs that fit `max_seconds` when one run takes `run_s`, between 1 and `most` (max_seconds 0:
// `most`). Every rank sees the same slowest-rank time, so every rank picks the same count.
int runs_within(double max_seconds, double run_s, int most) {
  if (max_seconds <= 0.0 || most <= 1) return most;
  const double fit = run_s > 0.0 ? std::floor(max_seconds / run_s) : static_cast<double>(most);
  return static_cast<int>(std::clamp(fit, 1.0, static_cast<double>(most)));
}

// Medians over `repeats` of the slowest rank's forward (and backward) wall time; every rank
// starts together (barrier after its stream is idle) and stops when its stream is idle. With
// max_seconds > 0 the first run (warm-up or timed) decides how many timed runs follow.
// One forward (and backward) of the variant under test: the distributed one, or on one rank the
// single-device variant.
struct Runner {
  DistributedAttention* dist = nullptr;
  AttentionVariant* single = nullptr;
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) {
    if (dist) dist->forward(be, q, k, v, o, lse);
    else single->forward(be, q, k, v, o, lse);
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) {
    if (dist) dist->backward(be, q, k, v, o, lse, d_o, dq, dk, dv);
    else single->backward(be, q, k, v, o, lse, d_o, dq, dk, dv);
  }
  DistCounters counters() const { return dist ? dist->counters() : DistCounters{}; }
};

Timings time_ring(Runner attn, Backend& be, Communicator& comm, int warmup, int repeats,
                  double max_seconds, bool backward, const std::vector<DeviceTensor*>& t) {
  using clock = std::chrono::steady_clock;
  const TensorView q = t[0]->view(), k = t[1]->view(), v = t[2]->view(), o = t[3]->view(),
                   lse = t[4]->view(), d_o = t[5]->view();
  std::vector<double> fwd, bwd;
  Timings res;
  for (int i = 0; i < warmup + repeats; ++i) {
    be.synchronize();
    comm.barrier(CommOp{"bench start", -1});
    const auto t0 = clock::now();
    attn.forward(be, q, k, v, o, lse);
    be.synchronize();
    const auto t1 = clock::now();
    res.fwd_counters = attn.counters();
    if (backward) {
      attn.backward(be, q, k, v, o, lse, d_o, t[6]->view(), t[7]->view(), t[8]->view());
      be.synchronize();
    }
    const auto t2 = clock::now();
    double s[2] = {std::chrono::duration<double>(t1 - t0).count(),
                   std::chrono::duration<double>(t2 - t1).count()};
    comm.allreduce_host(s, 2, ReduceOp::Max, CommOp{"bench timing", -1});
    if (i == 0) repeats = runs_within(max_seconds, s[0] + s[1], repeats);
    if (i < warmup) continue;
    fwd.push_back(s[0]);
    bwd.push_back(s[1]);
  }
  res.fwd = median(fwd);
  res.bwd = median(bwd);
  res.runs = static_cast<int>(fwd.size());
  return res;
}

json run_case(const Case& c, const Options& o, NcclCommunicator& comm, Backend& be) {
  const int P = comm.world();
  const DType dt = parse_dtype(o.dtype);
  const AttentionSpec spec = case_spec(c, o);
  const bool sparse = spec.variant == "block_sparse";
  DistConfig cfg{sparse ? DistMode::BlockSparseRing : DistMode::Ring,
                 c.causal ? Sharding::Zigzag : Sharding::Contiguous};
  if (!o.sharding.empty()) cfg.sharding = parse_sharding(o.sharding, "--sharding");
  if (sparse && !o.route.empty()) cfg.sparse_route = parse_sparse_route(o.route, "--route");
  json row = {{"impl", "longattn"},
              {"scaling", c.scaling},
              {"gpus", P},
              {"seq_len", c.N},
              {"tokens_per_gpu", c.N / P},
              {"causal", c.causal},
              {"sharding", sharding_name(cfg.sharding)},
              {"batch", o.batch},
              {"heads", o.heads},
              {"head_dim", o.head_dim},
              {"dtype", o.dtype},
              {"block", o.block},
              {"pass", c.backward ? "fwd+bwd" : "fwd"}};
  const Shape g{o.batch, c.N, o.heads, o.head_dim};
  be.reset_peak();
  const size_t base = as_cuda(be).current_bytes();
  // Allocation may fail on some ranks only: every rank learns it before any collective.
  std::vector<DeviceTensor> bufs;
  std::string oom;
  std::unique_ptr<DistributedAttention> attn;
  try {
    validate_distributed(spec, cfg, P, &g);
    const Shape l{g.B, g.N / P, g.H, g.D};
    for (int i = 0; i < 9; ++i) {
      if (!c.backward && i >= 5) break;
      bufs.emplace_back(be, i == 4 ? DType::F32 : dt, l.B, l.N, l.H, i == 4 ? 1 : l.D);
    }
    uint64_t seed = 1000 * static_cast<uint64_t>(comm.rank()) + 1;
    for (size_t i : {0, 1, 2, 5})
      if (i < bufs.size()) as_cuda(be).randn(bufs[i].view(), seed++);
  } catch (const std::exception& e) {
    oom = e.what();
  }
  double failed = oom.empty() ? 0.0 : 1.0;
  comm.allreduce_host(&failed, 1, ReduceOp::Max, CommOp{"bench allocation", -1});
  if (failed > 0) {
    row["status"] = oom.empty() ? "failed on another rank" : "failed: " + oom;
    return row;
  }
  std::vector<DeviceTensor*> t;
  for (auto& b : bufs) t.push_back(&b);
  while (t.size() < 9) t.push_back(t[0]);  // forward only: never touched

  // Forward-only cases are the longest sequences: one timed run, no transfer-free twin.
  const int repeats = c.backward ? o.repeats : 1;
  const int null_repeats = c.backward ? o.null_repeats : 0;
  std::unique_ptr<AttentionVariant> single;
  Runner runner;
  if (P == 1 && !o.ring_on_one) {
    single = make_attention(spec);
    runner.single = single.get();
  } else {
    attn = make_distributed_attention(spec, cfg, comm);
    runner.dist = attn.get();
  }
  row["variant"] = sparse ? "block_sparse_ring" : "ring";
  if (single) row["variant"] = spec.variant;
  if (sparse) {
    row["pattern"] = o.pattern;
    if (o.window > 0) row["window"] = o.window;
    if (o.ratio > 0) row["ratio"] = o.ratio;
    row["route"] = sparse_route_name(cfg.sparse_route);
  }
  const Timings real = time_ring(runner, be, comm, o.warmup, repeats, o.max_seconds, c.backward, t);
  const DistCounters& fwd_counters = real.fwd_counters;
  // Peak of the real run (inputs, outputs, ring workspace), before the twin takes its own.
  double peak = static_cast<double>(be.peak_bytes() - base);
  comm.allreduce_host(&peak, 1, ReduceOp::Max, CommOp{"bench peak", -1});
  attn.reset();
  Timings compute = real;
  int null_runs = 0;
  if (P > 1 && null_repeats > 0) {
    NoTransferComm none(comm);
    auto attn_none = make_distributed_attention(spec, cfg, none);
    Runner none_runner;
    none_runner.dist = attn_none.get();
    // The twin's count follows from the real run's median: nothing left to decide inside.
    null_runs = runs_within(o.max_seconds, real.fwd + real.bwd, null_repeats);
    compute = time_ring(none_runner, be, none, 0, null_runs, 0.0, c.backward, t);
  }

  const double flops = single ? single->flops(g) : forward_flops(c, o);
  const double per_gpu = flops / P;
  row["status"] = "ok";
  row["timed_runs"] = real.runs;
  if (null_runs > 0) row["compute_only_runs"] = null_runs;
  row["fwd_s"] = real.fwd;
  row["fwd_tflops_per_gpu"] = per_gpu / real.fwd / 1e12;
  if (P > 1 && null_repeats > 0) {
    row["fwd_compute_only_s"] = compute.fwd;
    row["fwd_exposed_comm_s"] = std::max(0.0, real.fwd - compute.fwd);
  }
  if (c.backward) {
    const double total = real.fwd + real.bwd;
    row["bwd_s"] = real.bwd;
    row["fwd_bwd_s"] = total;
    row["fwd_bwd_tflops_per_gpu"] = per_gpu * (1.0 + 2.5) / total / 1e12;
    if (P > 1 && null_repeats > 0) {
      row["bwd_compute_only_s"] = compute.bwd;
      row["fwd_bwd_exposed_comm_s"] = std::max(0.0, total - compute.fwd - compute.bwd);
    }
  }
  row["flops_fwd"] = flops;
  row["peak_bytes_per_gpu"] = peak;
  row["kv_bytes_sent_per_rank_fwd"] = fwd_counters.bytes_sent;
  row["ring_steps"] = fwd_counters.steps;
  return row;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) v.push_back(std::stoll(item));
  return v;
}

int run(int argc, char** argv, const MpiSession& session) {
  Options o;
  std::string weak = "32768", strong, strong_fwd;
  po::options_description desc("multigpu_bench options");
  desc.add_options()("help", "this text")(
      "weak", po::value<std::string>(&weak)->default_value(weak),
      "tokens per GPU, comma-separated (weak scaling: N = tokens x GPUs)")(
      "strong", po::value<std::string>(&strong)->default_value(""),
      "total tokens, comma-separated (strong scaling, causal zigzag, forward and backward)")(
      "strong-fwd", po::value<std::string>(&strong_fwd)->default_value(""),
      "total tokens, comma-separated (strong scaling, causal zigzag, forward only)")(
      "heads", po::value<int64_t>(&o.heads)->default_value(o.heads), "heads")(
      "head-dim", po::value<int64_t>(&o.head_dim)->default_value(o.head_dim), "head dimension")(
      "batch", po::value<int64_t>(&o.batch)->default_value(o.batch), "batch")(
      "block", po::value<int64_t>(&o.block)->default_value(o.block), "mask block size")(
      "dtype", po::value<std::string>(&o.dtype)->default_value(o.dtype), "bf16 | fp16 | fp32")(
      "variant", po::value<std::string>(&o.variant)->default_value(o.variant),
      "dense (ring) | block_sparse (block-sparse ring); one rank: the single-device variant")(
      "pattern", po::value<std::string>(&o.pattern)->default_value(o.pattern),
      "block_sparse: the pattern")(
      "ratio", po::value<double>(&o.ratio)->default_value(o.ratio),
      "block_sparse: share of blocks kept (0: from --window)")(
      "window", po::value<int64_t>(&o.window)->default_value(o.window),
      "block_sparse local_window: tokens (0: from --ratio)")(
      "route", po::value<std::string>(&o.route)->default_value(o.route),
      "block_sparse: ring | direct (default: the library's)")(
      "sharding", po::value<std::string>(&o.sharding)->default_value(o.sharding),
      "contiguous | zigzag (default: zigzag when causal, else contiguous)")(
      "ring-on-one", po::bool_switch(&o.ring_on_one),
      "on one rank, time the distributed variant (one step) instead of the single-device one")(
      "causal", po::value<std::string>(&o.causal)->default_value(o.causal),
      "weak scaling: both | causal | full")(
      "warmup", po::value<int>(&o.warmup)->default_value(o.warmup), "untimed runs per case")(
      "repeats", po::value<int>(&o.repeats)->default_value(o.repeats), "timed runs (median)")(
      "null-repeats", po::value<int>(&o.null_repeats)->default_value(o.null_repeats),
      "timed runs without transfers (exposed communication)")(
      "max-seconds", po::value<double>(&o.max_seconds)->default_value(o.max_seconds),
      "timed runs (and runs without transfers) shrink to about this many seconds each, "
      "judged by the case's first run; at least one (0: off)")(
      "budget", po::value<double>(&o.budget_s)->default_value(o.budget_s),
      "seconds after which no new case starts, nor one predicted to end after them")(
      "out", po::value<std::string>(&o.out)->default_value(o.out), "JSON lines (rank 0)");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (session.info().rank == 0) std::cout << desc << "\n";
    return 0;
  }
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(argv[i]);
  o.weak = parse_list(weak);
  o.strong = parse_list(strong);
  o.strong_fwd_only = parse_list(strong_fwd);
  LONGATTN_CHECK_ARG(o.warmup >= 0, "--warmup", o.warmup, "must be >= 0");
  LONGATTN_CHECK_ARG(o.repeats >= 1, "--repeats", o.repeats, "must be >= 1");
  LONGATTN_CHECK_ARG(o.null_repeats >= 0, "--null-repeats", o.null_repeats, "must be >= 0");
  LONGATTN_CHECK_ARG(o.max_seconds >= 0.0, "--max-seconds", o.max_seconds, "must be >= 0");
  LONGATTN_CHECK_ARG(o.variant == "dense" || o.variant == "block_sparse", "--variant", o.variant,
                     "must be dense or block_sparse");

  GpuRank gpu = make_gpu_rank(comm_options_from_env(), true);
  NcclCommunicator& comm = *gpu.comm;
  Backend& be = *gpu.backend;
  const int P = comm.world();
  const bool root = comm.rank() == 0;
  std::ofstream out;
  if (root) {
    out.open(o.out, std::ios::app);
    json header = {{"type", "header"},
                   {"impl", "longattn"},
                   {"gpus", P},
                   {"nccl", NcclCommunicator::nccl_version()},
                   {"command", o.command}};
    for (const GpuRankInfo& d : comm.devices())
      header["devices"].push_back({{"rank", d.rank},
                                   {"host", d.host},
                                   {"device", d.device},
                                   {"name", d.name},
                                   {"uuid", d.uuid},
                                   {"memory_bytes", d.total_bytes}});
    out << header.dump() << "\n" << std::flush;
  }
  std::vector<Case> cases;
  for (int64_t L : o.weak) {
    if (o.causal != "causal") cases.push_back({"weak", L * P, false, true});
    if (o.causal != "full") cases.push_back({"weak", L * P, true, true});
  }
  for (int64_t N : o.strong) cases.push_back({"strong", N, true, true});
  for (int64_t N : o.strong_fwd_only) cases.push_back({"strong", N, true, false});

  const auto start = std::chrono::steady_clock::now();
  // Seconds per FLOP of the last case that ran, per scaling and pass (none yet: no prediction); a
  // forward+backward case's FLOPs count 3.5x its forward's. Rank 0's prediction decides.
  std::map<std::string, double> s_per_flop;
  for (const Case& c : cases) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flops = forward_flops(c, o) * (c.backward ? 3.5 : 1.0);
    // The fewest runs the case can take: warm-up, one timed run, one without transfers.
    const int least_runs = o.warmup + 1 + (c.backward && P > 1 && o.null_repeats > 0 ? 1 : 0);
    const std::string kind = c.scaling + (c.backward ? " fwd+bwd" : " fwd");
    const double predicted = s_per_flop.count(kind) ? s_per_flop[kind] * flops * least_runs : 0.0;
    double go = elapsed >= o.budget_s ? 0.0 : elapsed + predicted > o.budget_s ? -1.0 : 1.0;
    comm.broadcast_host(&go, sizeof(go), 0, CommOp{"bench budget", -1});
    json row;
    if (go != 1.0) {
      std::string why = "skipped: time budget spent";
      if (go < 0.0) {
        std::ostringstream os;
        os << "skipped: predicted " << std::fixed << std::setprecision(0) << predicted
           << " s, past the time budget";
        why = os.str();
      }
      row = {{"impl", "longattn"}, {"scaling", c.scaling}, {"gpus", P},     {"seq_len", c.N},
             {"causal", c.causal}, {"pass", c.backward ? "fwd+bwd" : "fwd"},
             {"status", why}};
    } else {
      row = run_case(c, o, comm, be);
      if (row.value("status", "") == "ok")
        s_per_flop[kind] =
            (c.backward ? row["fwd_bwd_s"].get<double>() : row["fwd_s"].get<double>()) / flops;
    }
    if (root) {
      out << row.dump() << "\n" << std::flush;
      std::cout << "longattn " << P << " GPU(s) " << c.scaling << " N=" << c.N
                << (c.causal ? " causal" : " full") << " " << row.value("pass", "") << ": ";
      if (row.value("status", "") == "ok") {
        std::cout << "fwd " << row["fwd_s"].get<double>() * 1e3 << " ms ("
                  << row["fwd_tflops_per_gpu"].get<double>() << " TFLOP/s/GPU";
        if (row.contains("fwd_exposed_comm_s"))
          std::cout << ", exposed comm " << row["fwd_exposed_comm_s"].get<double>() * 1e3
                    << " ms";
        std::cout << ")";
        if (c.backward)
          std::cout << ", fwd+bwd " << row["fwd_bwd_s"].get<double>() * 1e3 << " ms ("
                    << row["fwd_bwd_tflops_per_gpu"].get<double>() << " TFLOP/s/GPU)";
        std::cout << ", peak " << row["peak_bytes_per_gpu"].get<double>() / (1 << 30) << " GiB";
      } else {
        std::cout << row.value("status", "");
      }
      std::cout << std::endl;
    }
  }
  return 0;
}

}  // namespace
}  // namespace longattn

int main(int argc, char** argv) {
  longattn::MpiSession session(&argc, &argv);
  try {
    return longattn::run(argc, argv, session);
  } catch (const std::exception& e) {
    std::cerr << "multigpu_bench: error: " << e.what() << std::endl;
    longattn::mpi_abort(1);
  }
}
