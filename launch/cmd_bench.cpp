// `longattn bench`: times attention variants over the ranks of an mpirun job (CPU ranks or one
// GPU per rank) and prints an nccl-tests-style table: a header (version, command, arguments,
// rank-ordered devices), a units row, fixed-width rows with a #wrong column from a sampled fp64
// check, and a footer; --json and --csv write the same rows with arguments, environment,
// versions and devices. Suites are in bench_suites.cpp, the check in bench_check.cpp.
#include <unistd.h>

#include <algorithm>
#include <boost/version.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "attention/distributed.hpp"
#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "comm/mpi_communicator.hpp"
#include "launch/bench.hpp"
#include "launch/execute.hpp"
#include "launch/options.hpp"
#include "launch/table.hpp"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/npy.hpp"
#ifdef LONGATTN_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_backend.hpp"
#endif
#ifdef LONGATTN_HAVE_NCCL
#include <nccl.h>
#endif

#ifndef LONGATTN_VERSION
#define LONGATTN_VERSION "0.1.0"
#endif

extern char** environ;

namespace longattn::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Block matrices for the FlexAttention anchor are written up to this many blocks per side.
constexpr int64_t kMaxMaskFileBlocks = 8192;

// ---- options ----------------------------------------------------------------------------------

struct BenchArgs {
  std::string suite = "custom";
  std::vector<std::string> seq_len, batch, local_n, passes, ratios, patterns, modes;
  int64_t heads = 0, head_dim = 0, window = 0;
  std::string dtype, causal;
  int warmup = -1, repeats = -1, min_repeats = 3;
  double max_seconds = 2.0, budget = 0.0;
  int check_rows = -1;
  double perturb = 0.0;
  uint64_t seed = 0;
  std::string json_path, csv_path, mask_dir, baseline;
  double threshold = 20.0;
  std::vector<std::string> min_n, max_n, granularity;
  double trial_seconds = 0.0;
  bool quiet = false;
};

std::vector<std::string> split_words(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  for (const auto& t : tokens) {
    std::string cur;
    for (char c : t) {
      if (c == ',' || c == ' ') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else {
        cur.push_back(c);
      }
    }
    if (!cur.empty()) out.push_back(cur);
  }
  return out;
}

std::vector<double> parse_doubles(const std::vector<std::string>& tokens, const std::string& arg) {
  std::vector<double> out;
  for (const auto& w : split_words(tokens)) {
    size_t used = 0;
    double x = 0;
    try {
      x = std::stod(w, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != w.size()) throw InvalidArgument(arg, w, "must be a number");
    out.push_back(x);
  }
  return out;
}

// "128K", "1M" and plain integers (parse_int_list takes the suffixes).
std::vector<int64_t> parse_sizes(const std::vector<std::string>& tokens, const std::string& arg) {
  const std::vector<std::string> words = split_words(tokens);
  return words.empty() ? std::vector<int64_t>{} : parse_int_list(words, arg);
}

// ---- a communicator for one process without a launcher -----------------------------------------

// World of one: the distributed modes run with no peer (no exchange carries bytes at P = 1;
// host-memory self exchanges are copies), collectives are identities.
class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(DeviceKind device) : device_(device) {}
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string backend() const override { return "self"; }
  DeviceKind buffer_device() const override { return device_; }
  double timeout_seconds() const override { return timeout_; }
  void set_timeout_seconds(double s) override { timeout_ = s; }
  CommRequest start_exchange(const std::vector<SendSpec>& sends, const std::vector<RecvSpec>& recvs,
                             CommOp op) override {
    std::vector<const SendSpec*> s;
    std::vector<const RecvSpec*> r;
    for (const auto& x : sends)
      if (x.bytes) s.push_back(&x);
    for (const auto& x : recvs)
      if (x.bytes) r.push_back(&x);
    LONGATTN_ASSERT(s.size() == r.size() && (s.empty() || device_ == DeviceKind::Cpu),
                    std::string("a self exchange in one process: ") + op.name);
    for (size_t i = 0; i < s.size(); ++i) {
      LONGATTN_ASSERT(s[i]->bytes == r[i]->bytes, "self exchange sizes differ");
      std::memmove(r[i]->buf, s[i]->buf, s[i]->bytes);
    }
    return CommRequest();
  }
  void allreduce(void*, size_t, DType, ReduceOp, CommOp) override {}
  void broadcast(void*, size_t, int, CommOp) override {}
  void barrier(CommOp) override {}
  void allgather_host(const void* send, size_t bytes, void* recv, CommOp) override {
    std::memmove(recv, send, bytes);
  }
  void broadcast_host(void*, size_t, int, CommOp) override {}
  void allreduce_host(double*, size_t, ReduceOp, CommOp) override {}

 private:
  DeviceKind device_;
  double timeout_ = CommOptions::kDefaultTimeoutSeconds;
};

// ---- environment, versions, devices ------------------------------------------------------------

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[256];
  while (fgets(buf, sizeof(buf), p)) out += buf;
  pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// LONGATTN_GIT_DESCRIBE (environment, then build definition), else `git describe` of the tree
// this file was compiled from, else "unknown".
std::string git_describe() {
  if (const char* e = std::getenv("LONGATTN_GIT_DESCRIBE")) return e;
#ifdef LONGATTN_GIT_DESCRIBE
  return LONGATTN_GIT_DESCRIBE;
#endif
  const std::filesystem::path src = std::filesystem::path(__FILE__).parent_path().parent_path();
  if (!std::filesystem::exists(src / ".git")) return "unknown";
  const std::string d =
      run_capture("git -C '" + src.string() + "' describe --always --dirty 2>/dev/null");
  return d.empty() ? "unknown" : d;
}

json versions_json(const ProcessGroup& mpi) {
  json v;
  v["longattn"] = LONGATTN_VERSION;
  v["git"] = git_describe();
#if defined(__clang__)
  v["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  v["compiler"] = std::string("gcc ") + __VERSION__;
#endif
  v["boost"] = BOOST_LIB_VERSION;
  v["nlohmann_json"] = std::to_string(NLOHMANN_JSON_VERSION_MAJOR) + "." +
                       std::to_string(NLOHMANN_JSON_VERSION_MINOR) + "." +
                       std::to_string(NLOHMANN_JSON_VERSION_PATCH);
  if (mpi.active()) {
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(lib, &len);
    std::string s(lib, static_cast<size_t>(len));
    v["mpi"] = s.substr(0, s.find_first_of("\n,"));
  }
#ifdef LONGATTN_HAVE_CUDA
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  v["cuda_runtime"] = rt;
  v["cuda_driver"] = drv;
#endif
#ifdef LONGATTN_HAVE_NCCL
  int nccl = 0;
  if (ncclGetVersion(&nccl) == ncclSuccess) v["nccl"] = nccl;
#endif
  return v;
}

// The variables that change what a run does or how fast it goes (not the launcher's own
// bookkeeping: addresses, session folders, job ids).
json environment_json() {
  json e = json::object();
  const char* prefixes[] = {"LONGATTN_",
                            "NCCL_",
                            "CUDA_VISIBLE_DEVICES",
                            "CUDA_DEVICE_MAX",
                            "OMP_NUM_THREADS",
                            "OMPI_COMM_WORLD_SIZE",
                            "OMPI_COMM_WORLD_LOCAL_SIZE",
                            "OMPI_MCA_btl",
                            "OMPI_MCA_pml",
                            "OMPI_MCA_osc",
                            "OMPI_MCA_coll",
                            "OMPI_MCA_mpi_",
                            "OMPI_MCA_rmaps_",
                            "OMPI_MCA_hwloc_",
                            "SLURM_NNODES",
                            "SLURM_NTASKS"};
  for (char** p = environ; p && *p; ++p) {
    const std::string kv = *p;
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = kv.substr(0, eq);
    for (const char* pre : prefixes)
      if (name.rfind(pre, 0) == 0) e[name] = kv.substr(eq + 1);
  }
  return e;
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t'\"$&|;<>*?()[]{}\\") == std::string::npos) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string reproduce_command(const Args& args, const ProcessGroup& mpi) {
  std::ostringstream os;
  if (mpi.active()) os << "mpirun -np " << mpi.world() << " ";
  // The program as it would be typed from the current folder (relative when inside it).
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto cwd = std::filesystem::current_path(ec);
    const auto rel = ec ? std::filesystem::path() : exe.lexically_relative(cwd);
    if (!rel.empty() && *rel.begin() != "..") exe = rel;
  }
  os << (ec || exe.empty() ? std::string("longattn") : exe.string()) << " bench";
  for (const auto& a : args) os << " " << shell_quote(a);
  return os.str();
}

std::string utc_now() {
  const std::time_t tt = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char date[64];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&tt));
  return date;
}

// ---- timing -----------------------------------------------------------------------------------

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

struct Limits {
  int warmup = 1, repeats = 10, min_repeats = 3;
  double max_seconds = 2.0;
  int check_rows = 8;
  double perturb = 0.0;
  // maxseq: seconds per forward FLOP of the last passing trial (0: none) and the trial limit.
  double seconds_per_flop = 0.0, trial_seconds = 0.0;
};

struct Timing {
  double median = 0, p10 = 0, p90 = 0;
  int repeats = 0;
};

// ---- the runner -------------------------------------------------------------------------------

enum class Status { Ok = 0, Time = 1, Oom = 2, Invalid = 3, Error = 4, Skipped = 5 };
const char* status_name(Status s) {
  switch (s) {
    case Status::Ok:
      return "ok";
    case Status::Time:
      return "time";
    case Status::Oom:
      return "oom";
    case Status::Invalid:
      return "invalid";
    case Status::Error:
      return "error";
    default:
      return "skipped";
  }
}

// The fields that name a row (every row has them, whatever its status).
json case_json(const BenchCase& c, int ranks) {
  json r;
  r["suite"] = c.suite;
  r["group"] = c.group;
  r["variant"] = c.label;
  r["config"] = describe_spec(c.spec);
  r["mode"] = c.mode;
  r["sharding"] = sharding_name(c.sharding);
  r["ranks"] = ranks;
  r["N"] = c.shape.N;
  r["B"] = c.shape.B;
  r["H"] = c.shape.H;
  r["D"] = c.shape.D;
  r["local_n"] = c.local_n;
  r["dtype"] = dtype_name(c.dtype);
  r["causal"] = c.spec.causal;
  r["pass"] = c.pass;
  r["block"] = c.spec.variant == "block_sparse" ? c.spec.sparse.block_size : c.spec.block_size;
  if (c.spec.variant == "dilated") {
    r["segment_lengths"] = c.spec.dilated.segment_lengths;
    r["dilation_rates"] = c.spec.dilated.dilation_rates;
    r["dilated_mode"] = mode_name(c.spec.dilated.mode);
  }
  return r;
}

std::string row_key(const json& r) {
  std::ostringstream os;
  os << r["suite"].get<std::string>() << '|' << r["variant"].get<std::string>() << '|'
     << r["mode"].get<std::string>() << '|' << r["sharding"].get<std::string>() << '|'
     << r["ranks"].get<int>() << '|' << r["N"].get<int64_t>() << '|' << r["B"].get<int64_t>() << '|'
     << r["H"].get<int64_t>() << '|' << r["D"].get<int64_t>() << '|'
     << r["dtype"].get<std::string>() << '|' << r["causal"].get<bool>() << '|'
     << r["pass"].get<std::string>();
  return os.str();
}

void write_mask_file(const std::string& path, const BlockMask& m) {
  std::vector<float> dense(static_cast<size_t>(m.num_q_blocks * m.num_k_blocks), 0.0f);
  for (int64_t r = 0; r < m.num_q_blocks; ++r)
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
      dense[static_cast<size_t>(r * m.num_k_blocks + m.col_idx[e])] = 1.0f;
  write_npy_array(path, DType::F32, {m.num_q_blocks, m.num_k_blocks}, dense.data());
}

class Runner {
 public:
  Runner(Backend& be, Communicator& host, Communicator& dev, uint64_t seed, std::string mask_dir)
      : be_(be), host_(host), dev_(dev), seed_(seed), mask_dir_(std::move(mask_dir)) {}

  int rank() const { return host_.rank(); }
  int world() const { return host_.world(); }
  // DistConfig::split_rows of every distributed row (--split-rows).
  void set_split_rows(int64_t rows) { split_rows_ = rows; }
  // Decisions that depend on a clock are taken on the slowest rank's value, so that every rank
  // takes the same branch.
  double max_all(double x) const { return slowest(x); }
  const std::vector<json>& rows() const { return rows_; }
  std::vector<json>& rows() { return rows_; }

  // Efficiency and speed-ups again, against every row of the run (a baseline may have come
  // after the row it serves).
  void annotate_all() {
    const std::vector<json> pool = rows_;
    for (auto& r : rows_) annotate(r, pool);
  }

  // The row of one case (identical on every rank), appended to rows().
  json run(const BenchCase& c, const Limits& lim) {
    json row = case_json(c, world());
    Status st = Status::Ok;
    std::string msg;
    std::unique_ptr<AttentionVariant> variant;
    DistConfig cfg;
    const bool dist = c.mode != kModeSingle;
    double fwd_flops = 0;
    try {
      variant = make_attention(c.spec);
      variant->validate(c.shape);
      if (dist) {
        cfg.mode = parse_dist_mode(c.mode, "mode");
        cfg.sharding = c.sharding;
        cfg.split_rows = split_rows_;
        validate_distributed(c.spec, cfg, world(), &c.shape);
      }
      fwd_flops = forward_flops(*variant, c);
      row["density"] = density(*variant, c, fwd_flops);
      row["flops"] = fwd_flops * pass_flop_factor(c.pass);
      if (variant->spec().variant == "block_sparse") {
        row["pattern"] = variant->spec().sparse.pattern;
        if (c.spec.sparse.sparsity_ratio > 0) row["sparsity_ratio"] = c.spec.sparse.sparsity_ratio;
        maybe_write_mask(c, *variant, row);
      }
    } catch (const InvalidArgument& e) {
      st = Status::Invalid;
      msg = e.what();
    } catch (const std::bad_alloc&) {
      st = Status::Oom;
      msg = "host memory exhausted (std::bad_alloc) while building the masks";
    }
    // Every rank built the same plan; a rank short of host memory must not go on alone.
    st = static_cast<Status>(static_cast<int>(slowest(static_cast<double>(st))));
    if (st != Status::Ok && msg.empty()) msg = "failed on another rank";
    if (st == Status::Ok) measure(c, lim, *variant, cfg, fwd_flops, row, st, msg);
    row["status"] = status_name(st);
    if (!msg.empty()) row["message"] = msg;
    annotate(row);
    rows_.push_back(row);
    return row;
  }

 private:
  struct Buffers {
    DeviceTensor q, k, v, o, lse, d_o, dq, dk, dv;
  };

  // Dense: exact pairs without building the N^2/block^2 mask; the others from their masks.
  static double forward_flops(const AttentionVariant& v, const BenchCase& c) {
    const Shape& s = c.shape;
    if (c.spec.variant == "dense") {
      const double n = static_cast<double>(s.N);
      const double pairs = c.spec.causal ? n * (n + 1.0) / 2.0 : n * n;
      return 4.0 * static_cast<double>(s.B * s.H * s.D) * pairs;
    }
    return v.flops(s);
  }
  static double density(const AttentionVariant& v, const BenchCase& c, double flops) {
    if (c.spec.variant == "dilated" || c.spec.variant == "dense") {
      const Shape& s = c.shape;
      return flops / (4.0 * static_cast<double>(s.B * s.H * s.D) * static_cast<double>(s.N) *
                      static_cast<double>(s.N));
    }
    return v.density(c.shape);
  }

  // The block matrix of a non-causal single-process block-sparse row, for the FlexAttention
  // anchor (bench/suite_anchors.py): every kept block is a full block.
  void maybe_write_mask(const BenchCase& c, const AttentionVariant& v, json& row) const {
    if (mask_dir_.empty() || c.mode != kModeSingle || c.spec.causal) return;
    const SparseConfig& cfg = v.spec().sparse;
    if (cfg.pattern == "content_adaptive" || c.shape.N % cfg.block_size != 0) return;
    if (c.shape.N / cfg.block_size > kMaxMaskFileBlocks) return;
    std::ostringstream name;
    name << cfg.pattern << "_n" << c.shape.N << "_bs" << cfg.block_size << "_r"
         << cfg.sparsity_ratio << ".npy";
    const auto path = std::filesystem::absolute(std::filesystem::path(mask_dir_) / name.str());
    if (rank() == 0 && !std::filesystem::exists(path)) {
      std::filesystem::create_directories(path.parent_path());
      write_mask_file(path.string(), sparse_block_mask(cfg, c.shape.N, false));
    }
    row["mask_file"] = path.string();
  }

  double slowest(double x) const {
    host_.allreduce_host(&x, 1, ReduceOp::Max, CommOp{"bench timing", -1});
    return x;
  }
  double sum_all(double x) const {
    host_.allreduce_host(&x, 1, ReduceOp::Sum, CommOp{"bench counters", -1});
    return x;
  }

  void fill_random(const TensorView& t, uint64_t seed) {
#ifdef LONGATTN_HAVE_CUDA
    if (be_.device() == DeviceKind::Cuda) {
      as_cuda(be_).randn(t, seed);
      return;
    }
#endif
    const Tensor h = Tensor::randn(t.dtype, t.B, t.N, t.H, t.D, seed);
    be_.upload(t, h.view());
  }

  // Wall time of fn with the device synchronised before and after, every rank starting
  // together; the slowest rank per repeat; repeats shrink to fit max_seconds.
  Timing time_fn(const std::function<void()>& fn, const Limits& lim) {
    auto once = [&] {
      be_.synchronize();
      if (world() > 1) host_.barrier(CommOp{"bench start", -1});
      const auto t0 = Clock::now();
      fn();
      be_.synchronize();
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    for (int i = 0; i < lim.warmup; ++i)
      if (slowest(once()) > lim.max_seconds / 3) break;
    std::vector<double> t{once()};
    const double first = slowest(t[0]);
    int reps = lim.repeats;
    if (first > 0) reps = std::min(reps, static_cast<int>(lim.max_seconds / first));
    reps = std::max(reps, std::min(lim.min_repeats, lim.repeats));
    for (int i = 1; i < reps; ++i) t.push_back(once());
    host_.allreduce_host(t.data(), t.size(), ReduceOp::Max, CommOp{"bench timing", -1});
    return {percentile(t, 0.5), percentile(t, 0.1), percentile(t, 0.9), reps};
  }

  CheckLayout check_layout(const BenchCase& c, const DistributedAttention* attn,
                           const Shape& local) const {
    CheckLayout L;
    L.global = c.shape;
    L.local = local;
    L.participates = attn != nullptr || rank() == 0;
    const int64_t N = c.shape.N;
    if (!attn) {
      L.global_row.resize(static_cast<size_t>(local.B * local.N));
      for (int64_t i = 0; i < local.B * local.N; ++i) L.global_row[static_cast<size_t>(i)] = i;
      return L;
    }
    Tensor full(DType::F64, c.shape.B, N, 1, 1), mine(DType::F64, local.B, local.N, 1, 1);
    for (int64_t b = 0; b < c.shape.B; ++b)
      for (int64_t n = 0; n < N; ++n) full.set(b, n, 0, 0, static_cast<double>(b * N + n));
    attn->extract_local(rank(), full.view(), mine.view());
    L.global_row.resize(static_cast<size_t>(local.B * local.N));
    for (int64_t b = 0; b < local.B; ++b)
      for (int64_t n = 0; n < local.N; ++n)
        L.global_row[static_cast<size_t>(b * local.N + n)] =
            static_cast<int64_t>(mine.at(b, n, 0, 0));
    return L;
  }

  void measure(const BenchCase& c, const Limits& lim, AttentionVariant& variant,
               const DistConfig& cfg, double fwd_flops, json& row, Status& st, std::string& msg) {
    const bool bwd = pass_has_backward(c.pass);
    std::unique_ptr<DistributedAttention> attn;
    Buffers b;
    Shape local = c.shape;
    // Allocation first: an out-of-memory shape fails fast, on every rank together.
    int failed = 0;
    try {
      if (c.mode != kModeSingle) {
        attn = make_distributed_attention(c.spec, cfg, dev_);
        local = attn->local_shape(c.shape);
      }
      be_.reset_peak();
      const DType dt = c.dtype;
      auto make = [&](DType t, int64_t D) {
        return DeviceTensor(be_, t, local.B, local.N, local.H, D);
      };
      b.q = make(dt, local.D);
      b.k = make(dt, local.D);
      b.v = make(dt, local.D);
      b.o = make(dt, local.D);
      b.lse = make(lse_dtype(dt), 1);
      if (bwd) {
        b.d_o = make(dt, local.D);
        b.dq = make(dt, local.D);
        b.dk = make(dt, local.D);
        b.dv = make(dt, local.D);
      }
      const uint64_t base = seed_ * 1000003ULL + rows_.size() * 64ULL +
                            (attn ? static_cast<uint64_t>(rank()) * 8ULL : 0ULL);
      fill_random(b.q.view(), base + 0);
      fill_random(b.k.view(), base + 1);
      fill_random(b.v.view(), base + 2);
      if (bwd) fill_random(b.d_o.view(), base + 3);
    } catch (const OutOfMemory& e) {
      failed = 1;
      msg = e.what();
    } catch (const std::bad_alloc&) {
      failed = 1;
      msg = "host memory exhausted (std::bad_alloc) while preparing the inputs";
    } catch (const InvalidArgument& e) {
      failed = 2;
      msg = e.what();
    }
    failed = static_cast<int>(slowest(failed));
    if (failed) {
      st = failed == 1 ? Status::Oom : Status::Invalid;
      if (msg.empty()) msg = "another rank failed to allocate its inputs";
      return;
    }
    if (lim.seconds_per_flop > 0 && lim.trial_seconds > 0) {
      const double predicted = lim.seconds_per_flop * fwd_flops * pass_flop_factor(c.pass);
      row["predicted_s"] = predicted;
      if (predicted > lim.trial_seconds) {
        st = Status::Time;
        std::ostringstream os;
        os << "not run: predicted " << std::fixed << std::setprecision(0) << predicted
           << " s > trial limit " << lim.trial_seconds << " s (inputs fit in memory)";
        msg = os.str();
        return;
      }
    }

    const TensorView q = b.q.view(), k = b.k.view(), v = b.v.view(), o = b.o.view(),
                     lse = b.lse.view();
    DistCounters fc, bc;
    auto forward = [&] {
      if (attn) {
        attn->forward(be_, q, k, v, o, lse);
        fc = attn->counters();
      } else {
        variant.forward(be_, q, k, v, o, lse);
      }
    };
    auto backward = [&] {
      if (attn) {
        attn->backward(be_, q, k, v, o, lse, b.d_o.view(), b.dq.view(), b.dk.view(), b.dv.view());
        bc = attn->counters();
      } else {
        variant.backward(be_, q, k, v, o, lse, b.d_o.view(), b.dq.view(), b.dk.view(), b.dv.view());
      }
    };
    Timing t;
    int code = 0;
    try {
      if (c.pass == "fwd") {
        t = time_fn(forward, lim);
      } else if (c.pass == "bwd") {
        forward();
        t = time_fn(backward, lim);
      } else {
        t = time_fn(
            [&] {
              forward();
              backward();
            },
            lim);
      }
    } catch (const CommError&) {
      throw;  // a peer is gone or silent: the run cannot go on
    } catch (const OutOfMemory& e) {
      code = 1;
      msg = e.what();
    } catch (const std::bad_alloc&) {
      code = 1;
      msg = "host memory exhausted (std::bad_alloc)";
    } catch (const InvalidArgument& e) {
      code = 2;
      msg = e.what();
    } catch (const std::exception& e) {
      code = 3;
      msg = e.what();
    }
    code = static_cast<int>(slowest(code));
    if (code) {
      st = code == 1 ? Status::Oom : code == 2 ? Status::Invalid : Status::Error;
      if (msg.empty()) msg = "failed on another rank";
      return;
    }
    const double P = c.mode == kModeSingle ? 1.0 : static_cast<double>(world());
    row["median_ms"] = t.median * 1e3;
    row["p10_ms"] = t.p10 * 1e3;
    row["p90_ms"] = t.p90 * 1e3;
    row["repeats"] = t.repeats;
    row["tflops"] = row["flops"].get<double>() / t.median / P / 1e12;
    row["peak_bytes"] = slowest(static_cast<double>(be_.peak_bytes()));
    if (attn) {
      DistCounters mine;
      if (c.pass != "bwd") mine += fc;
      if (bwd) mine += bc;
      const double bytes = sum_all(static_cast<double>(mine.bytes_sent));
      row["comm_bytes"] = bytes;
      row["comm_gbps"] = bytes / P / t.median / 1e9;
      row["hops"] = sum_all(static_cast<double>(mine.hops));
      row["steps"] = slowest(static_cast<double>(mine.steps));
      row["blocks_computed"] = sum_all(static_cast<double>(mine.blocks_computed));
    }
    if (lim.trial_seconds > 0 && t.median > lim.trial_seconds) {
      st = Status::Time;
      msg = "ran, over the trial limit";
    }
    // The gradients are not checked; their memory and the ring's workspace go before the check
    // stages K/V rows.
    if (attn) attn->release_workspace();
    b.d_o = DeviceTensor();
    b.dq = DeviceTensor();
    b.dk = DeviceTensor();
    b.dv = DeviceTensor();
    CheckResult chk;
    try {
      const CheckLayout layout = check_layout(c, attn.get(), local);
      chk = check_sampled_rows(variant.spec(), layout, be_, q, k, v, o, lse, lim.check_rows,
                               seed_ + rows_.size(), host_, lim.perturb);
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      chk.note = std::string("check not run: ") + e.what();
    }
    row["check_rows"] = chk.rows;
    row["wrong"] = chk.wrong;
    row["check_max_ratio"] = chk.max_ratio;
    if (!chk.note.empty()) row["check_note"] = chk.note;
  }

  // Speed-up over dense at the same shape and mode; efficiency against a single-rank row at
  // this row's local length; speed-up over a single rank at the same total size.
  void annotate(json& row) const { annotate(row, rows_); }
  void annotate(json& row, const std::vector<json>& pool) const {
    if (row["status"] != "ok") return;
    const double ms = row["median_ms"].get<double>();
    auto same = [&](const json& r, const char* k) { return r[k] == row[k]; };
    const std::string mode = row["mode"].get<std::string>();
    const int64_t P = row["ranks"].get<int>();
    int64_t lN = row["N"].get<int64_t>(), lB = row["B"].get<int64_t>();
    if (mode == "data_parallel")
      lB /= P;
    else if (mode != kModeSingle)
      lN /= P;
    for (const auto& r : pool) {
      if (r["status"] != "ok" || !same(r, "dtype") || !same(r, "causal") || !same(r, "pass") ||
          !same(r, "H") || !same(r, "D") || !same(r, "suite"))
        continue;
      const bool mode_match =
          same(r, "mode") || (r["mode"] == "ring" && row["mode"] == "block_sparse_ring");
      if (row["variant"] != "dense" && r["variant"] == "dense" && mode_match &&
          same(r, "sharding") && same(r, "N") && same(r, "B"))
        row["speedup_vs_dense"] = r["median_ms"].get<double>() / ms;
      if (mode == kModeSingle || r["mode"] != kModeSingle || !same(r, "variant")) continue;
      if (r["N"].get<int64_t>() == lN && r["B"].get<int64_t>() == lB)
        row["efficiency"] = row["tflops"].get<double>() / r["tflops"].get<double>();
      if (same(r, "N") && same(r, "B") && mode != "data_parallel")
        row["speedup_vs_single"] = r["median_ms"].get<double>() / ms;
    }
  }

  Backend& be_;
  Communicator& host_;
  Communicator& dev_;
  uint64_t seed_;
  std::string mask_dir_;
  int64_t split_rows_ = 0;
  std::vector<json> rows_;
};

// ---- the table --------------------------------------------------------------------------------

const Table& bench_table() {
  static const Table t({{"variant", "", 34, true},
                        {"mode", "", 24, true},
                        {"ranks", "", 5},
                        {"N", "tokens", 9},
                        {"B", "", 3},
                        {"H", "", 3},
                        {"D", "", 4},
                        {"dtype", "", 5},
                        {"causal", "", 6},
                        {"pass", "", 7},
                        {"median", "ms", 11},
                        {"p10", "ms", 11},
                        {"p90", "ms", 11},
                        {"TFLOP/s", "per rank", 8},
                        {"density", "", 7},
                        {"peak", "MiB", 9},
                        {"comm", "MiB", 9},
                        {"comm", "GB/s", 7},
                        {"eff", "%", 6},
                        {"vs", "dense", 6},
                        {"#wrong", "", 6},
                        {"status", "", 7, true}});
  return t;
}

std::string num(const json& r, const char* k, int decimals, double mult = 1.0) {
  if (!r.contains(k) || !r[k].is_number()) return "-";
  const double v = r[k].get<double>() * mult;
  if (std::abs(v) >= 1e6 && decimals > 0) return sci(v, 3);
  return fixed(v, decimals);
}

std::string table_row(const json& r) {
  const bool ok = r["status"] == "ok" || r["status"] == "time";
  std::string mode = r["mode"].get<std::string>();
  if (mode == "ring" || mode == "block_sparse_ring") mode += "/" + r["sharding"].get<std::string>();
  const double tflops = r.value("tflops", -1.0);
  return bench_table().row({r["variant"].get<std::string>(),
                            mode,
                            std::to_string(r["ranks"].get<int>()),
                            std::to_string(r["N"].get<int64_t>()),
                            std::to_string(r["B"].get<int64_t>()),
                            std::to_string(r["H"].get<int64_t>()),
                            std::to_string(r["D"].get<int64_t>()),
                            r["dtype"].get<std::string>(),
                            r["causal"].get<bool>() ? "yes" : "no",
                            r["pass"].get<std::string>(),
                            ok ? num(r, "median_ms", 3) : "-",
                            ok ? num(r, "p10_ms", 3) : "-",
                            ok ? num(r, "p90_ms", 3) : "-",
                            tflops < 0 ? "-"
                                       : fixed(tflops, tflops < 1     ? 4
                                                       : tflops < 100 ? 2
                                                                      : 1),
                            num(r, "density", 4),
                            ok ? num(r, "peak_bytes", 1, 1.0 / (1 << 20)) : "-",
                            num(r, "comm_bytes", 2, 1.0 / (1 << 20)),
                            num(r, "comm_gbps", 2),
                            num(r, "efficiency", 1, 100.0),
                            num(r, "speedup_vs_dense", 2),
                            r.contains("check_rows") && r["check_rows"].get<int>() > 0
                                ? std::to_string(r["wrong"].get<int>())
                                : "-",
                            r["status"].get<std::string>()});
}

// ---- progress ---------------------------------------------------------------------------------

// Rough cost of a case for the ETA: attended pairs x B x H x D, per rank.
double work_estimate(const BenchCase& c, int world) {
  const Shape& s = c.shape;
  double pairs = static_cast<double>(s.N) * static_cast<double>(s.N);
  if (c.spec.variant == "block_sparse")
    pairs *= c.spec.sparse.sparsity_ratio > 0 ? c.spec.sparse.sparsity_ratio : 0.1;
  if (c.spec.variant == "dilated" && !c.spec.dilated.segment_lengths.empty())
    pairs = static_cast<double>(s.N) *
            static_cast<double>(*std::max_element(c.spec.dilated.segment_lengths.begin(),
                                                  c.spec.dilated.segment_lengths.end()));
  if (c.spec.causal) pairs /= 2;
  const double ranks = c.mode == kModeSingle ? 1.0 : static_cast<double>(world);
  return pairs * static_cast<double>(s.B * s.H * s.D) * pass_flop_factor(c.pass) / ranks + 1e6;
}

std::string clock_text(double s) {
  const auto t = static_cast<int64_t>(s + 0.5);
  std::ostringstream os;
  os << std::setfill('0');
  if (t >= 3600) os << t / 3600 << ":" << std::setw(2);
  os << (t / 60) % 60 << ":" << std::setw(2) << t % 60;
  return os.str();
}

class Progress {
 public:
  Progress(bool on, double total) : on_(on), total_(total), start_(Clock::now()) {}
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  void done(const json& r, double work, size_t i, size_t n) {
    done_ += work;
    if (!on_) return;
    const double el = elapsed();
    const double eta = done_ > 0 ? el * (total_ - done_) / done_ : 0.0;
    std::cerr << "[bench] " << i << "/" << n << " elapsed " << clock_text(el) << " ETA "
              << clock_text(std::max(0.0, eta)) << "  " << r["variant"].get<std::string>() << " "
              << r["mode"].get<std::string>() << " N=" << r["N"].get<int64_t>() << " "
              << r["pass"].get<std::string>() << ": " << r["status"].get<std::string>();
    if (r.contains("median_ms"))
      std::cerr << " " << fixed(r["median_ms"].get<double>(), 3) << " ms";
    std::cerr << std::endl;
  }
  void line(const std::string& s) const {
    if (on_) std::cerr << "[bench] " << s << std::endl;
  }

 private:
  bool on_;
  double total_, done_ = 0;
  Clock::time_point start_;
};

// ---- maxseq -----------------------------------------------------------------------------------

json run_maxseq(Runner& runner, const MaxseqEntry& e, const MaxseqParams& mp, Limits lim,
                double trial_seconds, const Progress& prog, double budget, bool print,
                const std::function<void(const json&)>& emit) {
  const int64_t g = e.granularity;
  auto round_up = [g](int64_t n) { return (n + g - 1) / g * g; };
  auto round_down = [g](int64_t n) { return n / g * g; };
  lim.trial_seconds = trial_seconds;
  int64_t lo = 0, hi = 0;  // largest N that passed, smallest that failed
  json best, stop;
  auto elapsed = [&] { return runner.max_all(prog.elapsed()); };
  auto trial = [&](int64_t n) {
    BenchCase c = e.base;
    c.shape.N = n;
    // A trial must fit both its own limit and what is left of the budget.
    if (budget > 0) lim.trial_seconds = std::min(trial_seconds, std::max(1.0, budget - elapsed()));
    const json r = runner.run(c, lim);
    emit(r);
    const std::string s = r["status"].get<std::string>();
    const bool exact = r.value("wrong", 0) == 0;
    const bool passed = (s == "ok" || (s == "time" && r.contains("median_ms"))) && exact;
    if (passed) {
      lo = std::max(lo, n);
      best = r;
      // Seconds per FLOP of this pass (row flops already include the pass factor).
      lim.seconds_per_flop = r["median_ms"].get<double>() * 1e-3 / r["flops"].get<double>();
    } else {
      hi = hi == 0 ? n : std::min(hi, n);
      stop = r;
      if (!exact && s == "ok") stop["status"] = "wrong";
    }
    std::ostringstream os;
    os << "maxseq " << c.label << " " << c.mode << ": N=" << n << " " << s;
    if (r.contains("median_ms")) os << " " << fixed(r["median_ms"].get<double>() / 1e3, 2) << " s";
    if (!exact) os << " (#wrong " << r["wrong"].get<int>() << ")";
    prog.line(os.str());
    // A trial that ran past the limit passes, but nothing longer would fit the limit.
    if (passed && s == "time") {
      hi = n + g;
      stop = r;
    }
    return passed;
  };
  auto over_budget = [&] { return budget > 0 && elapsed() > budget; };
  bool capped = false;
  for (int64_t n = round_up(std::max<int64_t>(mp.min_n, g)); !over_budget(); n *= 2) {
    if (n > mp.max_n) {
      // Doubling went past --max-n: the longest length allowed is tried before the search
      // stops there (a failure leaves the bisection between it and the last length passed).
      const int64_t last = round_down(mp.max_n);
      capped = last <= lo || last < mp.min_n || (trial(last) && !hi);
      break;
    }
    if (!trial(n)) break;
    if (hi) break;
  }
  while (lo > 0 && hi > 0 && hi - lo > g && !over_budget()) {
    const int64_t mid = round_down(lo + (hi - lo) / 2);
    if (mid <= lo || mid >= hi) break;
    trial(mid);
  }
  json s;
  s["variant"] = e.base.label;
  s["mode"] = e.base.mode;
  s["sharding"] = sharding_name(e.base.sharding);
  s["pass"] = e.base.pass;
  s["causal"] = e.base.spec.causal;
  s["B"] = e.base.shape.B;
  s["H"] = e.base.shape.H;
  s["D"] = e.base.shape.D;
  s["dtype"] = dtype_name(e.base.dtype);
  s["ranks"] = runner.world();
  s["granularity"] = g;
  s["largest_n"] = lo;
  if (lo > 0) {
    s["time_ms"] = best["median_ms"];
    s["peak_bytes"] = best["peak_bytes"];
    s["tflops"] = best["tflops"];
  }
  if (!stop.is_null()) {
    s["stopped_by"] = stop["status"];
    s["stopped_at"] = stop["N"];
    if (stop.contains("message")) s["stop_message"] = stop["message"];
  } else {
    s["stopped_by"] = capped ? "max-n" : over_budget() ? "budget" : "none";
  }
  if (print) {
    std::cout << "# maxseq " << e.base.label << " (" << e.base.mode << ", " << e.base.pass
              << (e.base.spec.causal ? ", causal" : "") << "): largest N " << lo;
    if (lo > 0)
      std::cout << " in " << fixed(best["median_ms"].get<double>() / 1e3, 3) << " s, peak "
                << fixed(best["peak_bytes"].get<double>() / (1 << 30), 2) << " GiB per rank";
    std::cout << "; stopped by " << s["stopped_by"].get<std::string>();
    if (s.contains("stopped_at")) std::cout << " at N " << s["stopped_at"].get<int64_t>();
    std::cout << "\n" << std::flush;
  }
  return s;
}

// ---- regression -------------------------------------------------------------------------------

struct RegressionSummary {
  int compared = 0, slower = 0, fresh = 0;
};

RegressionSummary compare_baseline(std::vector<json>& rows, const std::string& path,
                                   double threshold) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument("--baseline", path, "must be a readable JSON file");
  json base;
  try {
    in >> base;
  } catch (const std::exception& e) {
    throw InvalidArgument("--baseline", path, std::string("must hold JSON: ") + e.what());
  }
  if (!base.contains("rows") || !base["rows"].is_array())
    throw InvalidArgument("--baseline", path, "must be a `longattn bench --json` file (rows)");
  std::map<std::string, double> ms;
  for (const auto& r : base["rows"])
    if (r.value("status", "") == "ok" && r.contains("median_ms")) ms[row_key(r)] = r["median_ms"];
  RegressionSummary s;
  for (auto& r : rows) {
    if (r["status"] != "ok") continue;
    auto it = ms.find(row_key(r));
    if (it == ms.end()) {
      s.fresh++;
      continue;
    }
    const double pct = (r["median_ms"].get<double>() - it->second) / it->second * 100.0;
    r["baseline_ms"] = it->second;
    r["change_pct"] = pct;
    r["regression"] = pct > threshold;
    s.compared++;
    s.slower += pct > threshold ? 1 : 0;
  }
  return s;
}

// ---- output files -----------------------------------------------------------------------------

const std::vector<std::string>& csv_fields() {
  static const std::vector<std::string> f{"suite",
                                          "group",
                                          "variant",
                                          "config",
                                          "mode",
                                          "sharding",
                                          "ranks",
                                          "N",
                                          "B",
                                          "H",
                                          "D",
                                          "local_n",
                                          "dtype",
                                          "causal",
                                          "pass",
                                          "status",
                                          "median_ms",
                                          "p10_ms",
                                          "p90_ms",
                                          "repeats",
                                          "flops",
                                          "tflops",
                                          "density",
                                          "peak_bytes",
                                          "comm_bytes",
                                          "comm_gbps",
                                          "steps",
                                          "hops",
                                          "efficiency",
                                          "speedup_vs_dense",
                                          "speedup_vs_single",
                                          "check_rows",
                                          "wrong",
                                          "check_max_ratio",
                                          "baseline_ms",
                                          "change_pct",
                                          "message"};
  return f;
}

std::string csv_cell(const json& v) {
  if (v.is_null()) return "";
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

void write_csv(const std::string& path, const json& doc) {
  std::ofstream out(path);
  out << "# longattn bench " << doc["versions"]["longattn"].get<std::string>() << " (git "
      << doc["versions"]["git"].get<std::string>() << ")\n"
      << "# command: " << doc["command"].get<std::string>() << "\n"
      << "# arguments: " << doc["args"].dump() << "\n"
      << "# versions: " << doc["versions"].dump() << "\n"
      << "# environment: " << doc["environment"].dump() << "\n";
  for (const auto& d : doc["devices"]) out << "# device: " << d.dump() << "\n";
  const auto& f = csv_fields();
  for (size_t i = 0; i < f.size(); ++i) out << (i ? "," : "") << f[i];
  out << "\n";
  for (const auto& r : doc["rows"]) {
    for (size_t i = 0; i < f.size(); ++i) out << (i ? "," : "") << csv_cell(r.value(f[i], json()));
    out << "\n";
  }
  if (!out) throw Error(path + ": cannot write the CSV results");
}

void write_json(const std::string& path, const json& doc) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << doc.dump(1) << "\n";
    if (!out) throw Error(path + ": cannot write the JSON results");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

int cmd_bench(const Args& args, const ProcessGroup& mpi) {
  BenchArgs ba;
  AttentionArgs a;
  DeviceArgs dev;
  DistArgs d;
  po::options_description own("Bench", kHelpWidth);
  std::string suite_names, suite_list;
  for (const auto& s : suite_infos()) {
    suite_names += (suite_names.empty() ? "" : " | ") + s.name;
    suite_list += "\n  " + s.name + ": " + s.summary;
  }
  // clang-format off
  own.add_options()
      ("suite", po::value(&ba.suite)->default_value("custom"), suite_names.c_str())
      ("seq-len,n", po::value(&ba.seq_len)->multitoken(),
       "sequence lengths N (list; 128K, 1M accepted; scaling: total tokens of the strong rows)")
      ("batch,b", po::value(&ba.batch)->multitoken(), "batch sizes B (list)")
      ("local-n", po::value(&ba.local_n)->multitoken(), "scaling: tokens per rank of the weak rows")
      ("heads", po::value(&ba.heads)->default_value(0), "heads H (0: the suite's)")
      ("head-dim", po::value(&ba.head_dim)->default_value(0), "head dimension D (0: the suite's)")
      ("dtype", po::value(&ba.dtype),
       "fp64 (CPU), fp32, fp16, bf16 (default: bf16 on cuda, fp32 on cpu)")
      ("causal", po::value(&ba.causal), "no | yes | both (default: the suite's)")
      ("pass", po::value(&ba.passes)->multitoken(),
       "passes: fwd, bwd (the backward alone, after one forward), fwd+bwd (default: the suite's)")
      ("ratios", po::value(&ba.ratios)->multitoken(), "block-sparse ratios (fraction KEPT)")
      ("patterns", po::value(&ba.patterns)->multitoken(),
       "block-sparse patterns (sparsity, scaling)")
      ("warmup", po::value(&ba.warmup), "warm-up calls per row (default 1; maxseq 0)")
      ("repeats", po::value(&ba.repeats), "timed calls per row at most (default 10; maxseq 1)")
      ("min-repeats", po::value(&ba.min_repeats)->default_value(3), "timed calls per row at least")
      ("max-seconds", po::value(&ba.max_seconds)->default_value(2.0),
       "time per row: repeats shrink to fit (never below --min-repeats)")
      ("budget", po::value(&ba.budget)->default_value(0.0),
       "seconds after which no new row or trial starts (0: none); the rest are 'skipped'")
      ("check-rows", po::value(&ba.check_rows),
       "sampled query rows checked against the fp64 host reference per row (default 8; "
       "maxseq 4; 0: off)")
      ("seed", po::value(&ba.seed)->default_value(0), "seed of the random inputs and row samples")
      ("json", po::value(&ba.json_path),
       "write the run (arguments, environment, versions, devices, rows)")
      ("csv", po::value(&ba.csv_path),
       "write the rows as CSV ('#' lines: command, versions, devices)")
      ("mask-dir", po::value(&ba.mask_dir),
       "write the block matrix of each non-causal single-rank block-sparse row as .npy here "
       "(for bench/suite_anchors.py)")
      ("baseline", po::value(&ba.baseline), "regression: a previous --json file to compare with")
      ("threshold", po::value(&ba.threshold)->default_value(20.0),
       "regression: percent slower than the baseline that fails the run (exit 4)")
      ("modes", po::value(&ba.modes)->multitoken(),
       "maxseq: dense, block_sparse, dilated (groups), dilated_longnet, data_parallel, each "
       "optionally :fwd, :bwd or :fwd+bwd (default fwd+bwd; default modes: dense on one rank; "
       "dense, block_sparse, dilated and data_parallel on several)")
      ("min-n", po::value(&ba.min_n)->multitoken(),
       "maxseq: first N (default 128K on cuda, 1K x ranks on cpu)")
      ("max-n", po::value(&ba.max_n)->multitoken(),
       "maxseq: largest N tried (default 128M on cuda, 16K on cpu)")
      ("granularity", po::value(&ba.granularity)->multitoken(),
       "maxseq: every N a multiple of this (default 1024 x ranks, raised to fit blocks and "
       "segments; dilated: ranks x each segment length, so that no segment spans ranks)")
      ("trial-seconds", po::value(&ba.trial_seconds)->default_value(0.0),
       "maxseq: a trial predicted to take longer is not run, and none longer follows one that did "
       "(default 100 on cuda, 20 on cpu)")
      ("window", po::value(&ba.window)->default_value(0),
       "maxseq block_sparse: local window in tokens (default 4096 on cuda, 256 on cpu)")
      ("perturb-output", po::value(&ba.perturb)->default_value(0.0),
       "testing aid: add this to one element of each sampled output row before the check")
      ("quiet", po::bool_switch(&ba.quiet), "no progress lines on stderr");
  // clang-format on
  po::options_description desc(kHelpWidth);
  desc.add(own).add(variant_options(a)).add(device_options(dev)).add(dist_options(d));
  po::variables_map vm;
  if (!parse_command(
          "bench",
          "Times attention variants and prints an nccl-tests-style table: one row per "
          "(variant, mode,\nshape, pass) with median/p10/p90, TFLOP/s per rank, density, "
          "peak memory, communication,\nefficiency and #wrong (sampled rows against "
          "the fp64 reference). Under mpirun -np P the\ndistributed modes use all P "
          "ranks (CPU ranks, or one GPU per rank with --device cuda).\n"
          "Exit codes: 0 ok, 1 error, 2 invalid argument, 3 #wrong > 0, 4 regression."
          "\n\nSuites (--suite):" +
              suite_list,
          args, desc, vm, mpi.rank() == 0))
    return kExitOk;

  const int P = mpi.world();
  SuiteParams sp;
  MaxseqParams mp;
  Limits lim;
  int64_t split_rows = 0;  // --split-rows
  std::unique_ptr<Backend> be;
  std::vector<BenchCase> cases;
  std::vector<MaxseqEntry> entries;
  const bool maxseq = ba.suite == "maxseq";
  try {
    sp.world = P;
    sp.cuda = dev.device == "cuda";
    sp.dtype = make_dtype(ba.dtype.empty() ? (sp.cuda ? "bf16" : "fp32") : ba.dtype);
    if (sp.cuda && sp.dtype == DType::F64)
      throw InvalidArgument("--dtype", "fp64", "is CPU only; use fp32, fp16 or bf16 on cuda");
    sp.seq_lens = parse_sizes(ba.seq_len, "--seq-len");
    sp.batches = parse_sizes(ba.batch, "--batch");
    sp.local_lens = parse_sizes(ba.local_n, "--local-n");
    sp.heads = ba.heads;
    sp.head_dim = ba.head_dim;
    LONGATTN_CHECK_ARG(
        ba.causal.empty() || ba.causal == "no" || ba.causal == "yes" || ba.causal == "both",
        "--causal", ba.causal, "must be no, yes or both");
    sp.causal = ba.causal;
    for (const auto& p : split_words(ba.passes)) {
      LONGATTN_CHECK_ARG(p == "fwd" || p == "bwd" || p == "fwd+bwd", "--pass", p,
                         "must be fwd, bwd or fwd+bwd");
      sp.passes.push_back(p);
    }
    sp.ratios = parse_doubles(ba.ratios, "--ratios");
    for (double r : sp.ratios)
      LONGATTN_CHECK_ARG(r > 0 && r <= 1, "--ratios", r, "must be in (0, 1]");
    sp.patterns = split_words(ba.patterns);
    if (vm.count("block-size") && !vm["block-size"].defaulted()) sp.block_size = a.block_size;
    if (!a.segment_lengths.empty())
      sp.segments = parse_int_list(a.segment_lengths, "--segment-lengths");
    sp.pass_rows = row_count(a.pass_rows, "--pass-rows");
    sp.window = ba.window;
    sp.sharding = parse_sharding(d.sharding, "--sharding");
    if (ba.suite == "custom") {
      a.seq_len = sp.seq_lens.empty() ? 4096 : sp.seq_lens.front();
      a.seed = ba.seed;
      a.causal = ba.causal == "yes";
      sp.custom = make_spec(a, vm);
      sp.custom_label = sp.custom.variant;
      if (sp.custom.variant == "dilated")
        sp.custom_label += std::string("/") + mode_name(sp.custom.dilated.mode);
      if (sp.custom.variant == "block_sparse")
        sp.custom_label +=
            "/" + sp.custom.sparse.pattern +
            (sp.custom.sparse.sparsity_ratio > 0 ? " r=" + fixed(sp.custom.sparse.sparsity_ratio, 3)
                                                 : std::string());
      // Under mpirun the variant's sequence-parallel mode, as `longattn run`; --dist single
      // runs the whole problem on every rank.
      sp.dist = d.dist;
      if (sp.dist.empty() && P > 1) sp.dist = dist_mode_name(default_dist_mode(sp.custom));
      if (sp.dist == kModeSingle) sp.dist.clear();
      if (!sp.dist.empty()) parse_dist_mode(sp.dist, "--dist");
    }
    lim.warmup = ba.warmup >= 0 ? ba.warmup : maxseq ? 0 : 1;
    lim.repeats = ba.repeats >= 0 ? ba.repeats : maxseq ? 1 : 10;
    lim.min_repeats = ba.min_repeats;
    lim.max_seconds = ba.max_seconds;
    lim.check_rows = ba.check_rows >= 0 ? ba.check_rows : maxseq ? 4 : 8;
    lim.perturb = ba.perturb;
    LONGATTN_CHECK_ARG(lim.repeats >= 1, "--repeats", lim.repeats, "must be >= 1");
    LONGATTN_CHECK_ARG(lim.warmup >= 0, "--warmup", lim.warmup, "must be >= 0");
    LONGATTN_CHECK_ARG(lim.max_seconds > 0, "--max-seconds", lim.max_seconds, "must be > 0");
    LONGATTN_CHECK_ARG(ba.threshold > 0, "--threshold", ba.threshold, "must be > 0");
    split_rows = row_count(d.split_rows, "--split-rows");
    if (maxseq) {
      mp.kinds = split_words(ba.modes);
      const auto mins = parse_sizes(ba.min_n, "--min-n"), maxs = parse_sizes(ba.max_n, "--max-n"),
                 gs = parse_sizes(ba.granularity, "--granularity");
      mp.min_n = mins.empty() ? (sp.cuda ? 131072 : 1024 * static_cast<int64_t>(P)) : mins.front();
      mp.max_n = maxs.empty() ? (sp.cuda ? (int64_t{1} << 27) : 16384) : maxs.front();
      mp.granularity = gs.empty() ? 0 : gs.front();
      LONGATTN_CHECK_ARG(mp.min_n > 0 && mp.max_n >= mp.min_n, "--max-n", mp.max_n,
                         "must be >= --min-n (" + std::to_string(mp.min_n) + ")");
      entries = maxseq_entries(sp, mp);
    } else {
      cases = suite_cases(ba.suite, sp);
    }
    if (ba.suite == "regression" && ba.baseline.empty() && ba.json_path.empty())
      throw InvalidArgument("--baseline", "(none)",
                            "regression compares with a baseline: give --baseline FILE, or "
                            "--json FILE to write one");
    if (mpi.active() && d.timeout_s > 0) mpi.comm().set_timeout_seconds(d.timeout_s);
    be = make_backend(dev, mpi);
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }
  const double trial_seconds = ba.trial_seconds > 0 ? ba.trial_seconds : sp.cuda ? 100.0 : 20.0;

  std::unique_ptr<SelfCommunicator> self_host, self_dev;
  if (!mpi.active()) {
    self_host = std::make_unique<SelfCommunicator>(DeviceKind::Cpu);
    self_dev = std::make_unique<SelfCommunicator>(be->device());
  }
  Communicator& host = mpi.active() ? mpi.comm() : *self_host;
  Communicator& devc = mpi.active() ? mpi.comm_for(*be) : *self_dev;

  // The header: what ran, where, with what.
  json doc;
  doc["program"] = "longattn bench";
  doc["versions"] = versions_json(mpi);
  doc["date"] = utc_now();
  doc["command"] = reproduce_command(args, mpi);
  doc["argv"] = args;
  json parsed;
  for (const auto& [name, value] : vm) {
    if (value.defaulted() && name != "suite") continue;
    const auto& any = value.value();
    if (auto* s = boost::any_cast<std::string>(&any))
      parsed[name] = *s;
    else if (auto* v = boost::any_cast<std::vector<std::string>>(&any))
      parsed[name] = *v;
    else if (auto* i = boost::any_cast<int64_t>(&any))
      parsed[name] = *i;
    else if (auto* n = boost::any_cast<int>(&any))
      parsed[name] = *n;
    else if (auto* x = boost::any_cast<double>(&any))
      parsed[name] = *x;
    else if (auto* u = boost::any_cast<uint64_t>(&any))
      parsed[name] = *u;
    else if (auto* b = boost::any_cast<bool>(&any))
      parsed[name] = *b;
  }
  doc["args"] = parsed;
  doc["suite"] = ba.suite;
  doc["ranks"] = P;
  doc["device"] = dev.device;
  doc["dtype"] = dtype_name(sp.dtype);
  doc["environment"] = environment_json();
  doc["timing"] = {{"warmup", lim.warmup},
                   {"repeats_max", lim.repeats},
                   {"repeats_min", lim.min_repeats},
                   {"max_seconds_per_row", lim.max_seconds},
                   {"method",
                    "wall clock around the call with the device synchronised before "
                    "and after, ranks started together by a barrier; per repeat the "
                    "slowest rank; median, p10, p90 over the repeats"}};
  doc["flops_convention"] =
      "forward 4*B*H*D*(visible query-key pairs) (causal: the pairs j <= i, about half); "
      "bwd 2.5x, fwd+bwd 3.5x; TFLOP/s per rank = flops / time / ranks (single: / 1)";
  doc["check"] = {{"rows_per_row", lim.check_rows},
                  {"what",
                   "sampled query rows of O and LSE recomputed in fp64 on the host "
                   "from the ranks' own K/V rows, combined over ranks by log-sum-exp"},
                  {"tolerance",
                   "u * (8 * sqrt(sum_j (p_j v_j)^2) + 2 * |O|) + floor; u = 2^-50 "
                   "fp64, 2^-20 fp32, 2^-10 fp16, 2^-7 bf16; floor 1e-12 fp64 else "
                   "1e-6; LSE 1e-10 (fp64) or 1e-4 relative"}};
  {
    std::ostringstream mine;
    std::string dev_name = be->name();
    if (be->device() == DeviceKind::Cpu)
      dev_name += ", " + std::to_string(cpu_threads(dev, mpi)) + " threads";
    json dj{{"rank", mpi.rank()},
            {"local_rank", mpi.local_rank()},
            {"host", host_name()},
            {"pid", static_cast<int64_t>(getpid())},
            {"device", dev_name}};
    const std::vector<std::string> all = mpi.gather(dj.dump());
    json devices = json::array();
    for (const auto& s : all) devices.push_back(json::parse(s));
    doc["devices"] = devices;
  }
  const bool root = mpi.rank() == 0;
  const bool print = root;
  if (print) {
    std::cout << "# longattn bench " << LONGATTN_VERSION << " (git "
              << doc["versions"]["git"].get<std::string>() << ")\n"
              << "# command: " << doc["command"].get<std::string>() << "\n"
              << "# arguments: " << doc["args"].dump() << "\n"
              << "# suite " << ba.suite << ": ";
    for (const auto& s : suite_infos())
      if (s.name == ba.suite) std::cout << s.summary;
    std::cout << "\n# date " << doc["date"].get<std::string>() << "  ranks " << P << "  device "
              << dev.device << "  dtype " << dtype_name(sp.dtype) << "  warmup " << lim.warmup
              << "  repeats " << std::min(lim.min_repeats, lim.repeats) << ".." << lim.repeats
              << " within " << lim.max_seconds << " s per row\n"
              << "# versions: " << doc["versions"].dump() << "\n"
              << "# timing: wall clock, device synchronised, slowest rank per repeat; median, "
                 "p10, p90 over repeats\n"
              << "# FLOPs: forward 4*B*H*D*visible pairs (causal: half), bwd 2.5x, fwd+bwd 3.5x; "
                 "TFLOP/s per rank; comm: bytes sent by all ranks per call, GB/s per rank\n"
              << "# eff: TFLOP/s per rank over a single-rank row at the local length; vs dense: "
                 "dense time / this time at the same shape and mode\n"
              << "# #wrong: of " << lim.check_rows
              << " sampled query rows (O and LSE) recomputed in fp64 on the host\n#\n";
    for (const auto& dj : doc["devices"])
      std::cout << "#  Rank " << std::setw(3) << dj["rank"].get<int>() << " Local " << std::setw(2)
                << dj["local_rank"].get<int>() << " Pid " << std::setw(7)
                << dj["pid"].get<int64_t>() << " on " << std::setw(12)
                << dj["host"].get<std::string>() << " device " << dj["device"].get<std::string>()
                << "\n";
    std::cout << "#\n" << bench_table().header() << std::flush;
  }

  Runner runner(*be, host, devc, ba.seed, ba.mask_dir);
  runner.set_split_rows(split_rows);
  auto emit = [&](const json& r) {
    if (print) std::cout << table_row(r) << std::flush;
    // The file is rewritten after every row: a run cut short still leaves its rows.
    if (root && !ba.json_path.empty()) {
      doc["rows"] = runner.rows();
      doc["complete"] = false;
      write_json(ba.json_path, doc);
    }
  };
  const bool progress_on = root && !ba.quiet;
  json maxseq_summary = json::array();
  if (maxseq) {
    Progress prog(progress_on, 1.0);
    for (const auto& e : entries) {
      if (ba.budget > 0 && runner.max_all(prog.elapsed()) > ba.budget) break;
      maxseq_summary.push_back(
          run_maxseq(runner, e, mp, lim, trial_seconds, prog, ba.budget, print, emit));
    }
  } else {
    double total = 0;
    for (const auto& c : cases) total += work_estimate(c, P);
    Progress prog(progress_on, total);
    for (size_t i = 0; i < cases.size(); ++i) {
      const BenchCase& c = cases[i];
      if (ba.budget > 0 && runner.max_all(prog.elapsed()) > ba.budget) {
        json r = case_json(c, P);
        r["status"] = "skipped";
        r["message"] = "time budget (--budget) spent";
        runner.rows().push_back(r);
        emit(r);
        continue;
      }
      const json r = runner.run(c, lim);
      emit(r);
      prog.done(r, work_estimate(c, P), i + 1, cases.size());
    }
  }

  // Footer, files, exit code.
  int counts[6] = {0, 0, 0, 0, 0, 0};
  int wrong = 0, checked = 0;
  for (const auto& r : runner.rows()) {
    const std::string s = r["status"].get<std::string>();
    for (int k = 0; k < 6; ++k)
      if (s == status_name(static_cast<Status>(k))) counts[k]++;
    wrong += r.value("wrong", 0);
    checked += r.value("check_rows", 0);
  }
  runner.annotate_all();
  RegressionSummary reg;
  int code = kExitOk;
  if (root && !ba.baseline.empty()) {
    try {
      reg = compare_baseline(runner.rows(), ba.baseline, ba.threshold);
    } catch (const InvalidArgument& e) {
      std::cerr << "longattn: " << e.what() << "\n";
      code = kExitInvalidArgument;
    }
  }
  if (print) {
    std::cout << "# rows: " << runner.rows().size() << " (" << counts[0] << " ok, " << counts[1]
              << " over time, " << counts[2] << " out of memory, " << counts[3] << " invalid, "
              << counts[4] << " error, " << counts[5] << " skipped)\n"
              << "# #wrong: " << wrong << " of " << checked << " sampled rows\n";
    for (const auto& r : runner.rows())
      if (r.contains("message") && r["status"] != "skipped")
        std::cout << "# " << r["variant"].get<std::string>() << " " << r["mode"].get<std::string>()
                  << " N=" << r["N"].get<int64_t>() << " " << r["pass"].get<std::string>() << ": "
                  << r["status"].get<std::string>() << ": " << r["message"].get<std::string>()
                  << "\n";
    if (!ba.baseline.empty() && code == kExitOk) {
      std::cout << "# regression vs " << ba.baseline << " (threshold " << ba.threshold
                << "%): " << reg.compared << " rows compared, " << reg.slower
                << " slower beyond the threshold, " << reg.fresh << " without a baseline row\n";
      for (const auto& r : runner.rows())
        if (r.value("regression", false))
          std::cout << "#   SLOWER " << r["variant"].get<std::string>() << " "
                    << r["mode"].get<std::string>() << " N=" << r["N"].get<int64_t>() << " "
                    << (r["causal"].get<bool>() ? "causal " : "") << r["pass"].get<std::string>()
                    << ": " << fixed(r["median_ms"].get<double>(), 3) << " ms vs "
                    << fixed(r["baseline_ms"].get<double>(), 3) << " ms (+"
                    << fixed(r["change_pct"].get<double>(), 1) << "%)\n";
    }
    std::cout << std::flush;
  }
  if (root) {
    doc["rows"] = runner.rows();
    if (maxseq) doc["maxseq"] = maxseq_summary;
    if (!ba.baseline.empty())
      doc["regression"] = {{"baseline", ba.baseline},
                           {"threshold_pct", ba.threshold},
                           {"compared", reg.compared},
                           {"slower", reg.slower},
                           {"without_baseline", reg.fresh}};
    doc["complete"] = true;
    if (!ba.json_path.empty()) write_json(ba.json_path, doc);
    if (!ba.csv_path.empty()) write_csv(ba.csv_path, doc);
    if (code == kExitOk) {
      if (counts[4] > 0)
        code = kExitError;
      else if (wrong > 0)
        code = kExitVerifyFailed;
      else if (reg.slower > 0)
        code = kExitBenchRegression;
      else if (ba.suite == "custom" && counts[3] == static_cast<int>(runner.rows().size()))
        code = kExitInvalidArgument;
    }
  }
  return mpi.max_all(code);
}

}  // namespace longattn::cli
