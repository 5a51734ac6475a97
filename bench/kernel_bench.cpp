// kernel_bench: times longattn's CUDA attention on one GPU (CUDA events on the backend's work
// stream, warm-up, median/p10/p90 of many repeats) over the sweeps of the CUDA-kernels issue:
// dense, block-sparse at fixed densities and dilated at the seed package's configurations.
// Writes a JSON of rows (and the block masks as .npy for the FlexAttention anchor, which
// bench/anchors.py runs on the same shapes; bench/run_kernel_bench.sh runs both in one command).
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attention/dense.hpp"
#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "kernels/backend.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#include "runtime/error.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace longattn {
namespace {

struct Options {
  std::string suites = "dense,sparse,dilated";
  // Passes timed per row ("fwd,bwd"): an A/B of forward kernels need not spend device time on
  // the backward (a row timing only the backward runs its forward once, untimed, for o and lse).
  std::string passes = "fwd,bwd";
  bool time_fwd = true, time_bwd = true;
  std::string out = "kernel_bench.json";
  std::string mask_dir = "kernel_bench_masks";
  std::string dtype = "bf16";
  // dk, dv of the dense and block-sparse backward rows: "fp32" accumulators or the "input" dtype
  // (zeroed once; the kernels add into them either way).
  std::string kv_grads = "fp32";
  std::string grads = "add";
  std::vector<int64_t> dense_n{4096, 8192, 16384, 32768, 65536};
  std::vector<int64_t> dense_d{64, 128};
  int64_t heads = 16;
  int64_t batch = 1;
  int64_t block = 128;
  int64_t sparse_n = 65536;
  int64_t sparse_d = 128;
  std::vector<double> densities{0.5, 0.25, 0.1, 0.05, 0.02};
  std::vector<std::string> sparse_patterns{"local_window", "random"};
  std::vector<int64_t> dilated_n{8192, 32768, 65536};
  int64_t dilated_heads = 8;
  int64_t dilated_d = 64;
  int warmup = 3;
  int repeats = 20;
  // Per row: fewer repeats (at least 5) for slow rows; the warm-up stops at a third of it.
  double max_seconds = 6.0;
  // Warm-up time per row: the board's power reaches its limit over ~1 s of sustained work after
  // any idle (A/B runs 46-49), and a process that idles before a row (PyTorch building a cuDNN
  // plan) is timed partly boosted after a short warm-up. 2 s puts every row, ours and the
  // anchors', in the capped steady state a training loop runs in (A/B run 57; 300 ms up to the
  // version-21 run).
  double warm_ms = 2000.0;
  // "queued" (default): the timed calls go back to back, timed by an event between each two, and
  // the warm-up runs in batches of ~10 ms: what the GPU spends per call under a training loop.
  // "sync" (every anchored run up to version 20): each call is waited for before the next is
  // launched, so a call's time includes its host launch latency (37-168 us per call for the
  // PyTorch anchors at 4K against a few us here: the anchors lose at short rows).
  // "graph": k calls (~10 ms) captured once into a CUDA graph, each replay timed by events and
  // divided by k: the GPU time of a call with no host work between calls (a diagnostic: the
  // anchors keep their own timing).
  std::string timing = "queued";
  double energy_ms = 0.0;  // > 0: energy per call over this much wall time of calls (NVML)
  int device = 0;
  std::string command;
};

struct Timing {
  double median = 0, p10 = 0, p90 = 0;
  int repeats = 0;
  double warm_ms = 0;  // GPU time of the warm-up calls (the setup call not counted)
  int warm_calls = 0;
  // Queued timing: the host's wall time per call of the timed launches (from the first launch
  // to the last one's return); at or above the median, the GPU waited for the host.
  double host_ms = -1;
  // --energy-ms: energy per call (J) and mean power (W) over energy_calls calls back to back
  // that took energy_ms of wall time; energy_j < 0 when not measured.
  double energy_j = -1, watts = 0, energy_ms = 0;
  int energy_calls = 0;
  double sm_mhz = -1;  // mean of the SM clock read after each batch of the energy window
};

// The GPU's cumulative energy counter (NVML's nvmlDeviceGetTotalEnergyConsumption, mJ), from
// the driver's libnvidia-ml.so.1 opened at run time (no build dependency). reason() says why
// not where the library, the device or the counter is missing.
class EnergyMeter {
 public:
  explicit EnergyMeter(const std::string& pci_bus_id) {
    lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) {
      reason_ = "libnvidia-ml.so.1 not found";
      return;
    }
    using Init = int (*)();
    using ByBus = int (*)(const char*, void**);
    auto init = reinterpret_cast<Init>(dlsym(lib_, "nvmlInit_v2"));
    auto by_bus = reinterpret_cast<ByBus>(dlsym(lib_, "nvmlDeviceGetHandleByPciBusId_v2"));
    read_ = reinterpret_cast<Read>(dlsym(lib_, "nvmlDeviceGetTotalEnergyConsumption"));
    if (init == nullptr || by_bus == nullptr || read_ == nullptr) {
      reason_ = "NVML lacks the energy functions";
      return;
    }
    if (const int rc = init(); rc != 0) {
      reason_ = "nvmlInit_v2 returned " + std::to_string(rc);
      return;
    }
    shutdown_ = reinterpret_cast<Shutdown>(dlsym(lib_, "nvmlShutdown"));
    unsigned long long mj = 0;
    if (const int rb = by_bus(pci_bus_id.c_str(), &device_); rb != 0) {
      reason_ = "no NVML device at PCI bus id " + pci_bus_id + " (" + std::to_string(rb) + ")";
      return;
    }
    if (const int re = read_(device_, &mj); re != 0) {
      reason_ = "nvmlDeviceGetTotalEnergyConsumption returned " + std::to_string(re);
      return;
    }
    ok_ = true;
    clock_ = reinterpret_cast<Clock>(dlsym(lib_, "nvmlDeviceGetClockInfo"));
  }
  ~EnergyMeter() {
    if (shutdown_ != nullptr) shutdown_();  // (set once nvmlInit_v2 succeeded)
    if (lib_ != nullptr) dlclose(lib_);
  }
  EnergyMeter(const EnergyMeter&) = delete;
  EnergyMeter& operator=(const EnergyMeter&) = delete;
  bool available() const { return ok_; }
  const std::string& reason() const { return reason_; }
  double millijoules() const {
    unsigned long long mj = 0;
    if (!ok_ || read_(device_, &mj) != 0) throw Error("the GPU's energy counter could not be read");
    return static_cast<double>(mj);
  }
  // The SM clock now (MHz; NVML_CLOCK_SM), or -1 where NVML cannot say.
  int sm_mhz() const {
    unsigned int mhz = 0;
    if (!ok_ || clock_ == nullptr || clock_(device_, 1, &mhz) != 0) return -1;
    return static_cast<int>(mhz);
  }

 private:
  using Read = int (*)(void*, unsigned long long*);
  using Clock = int (*)(void*, int, unsigned int*);
  Clock clock_ = nullptr;
  using Shutdown = int (*)();
  void* lib_ = nullptr;
  Shutdown shutdown_ = nullptr;
  void* device_ = nullptr;
  Read read_ = nullptr;
  bool ok_ = false;
  std::string reason_;
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double pos = p * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

#define BENCH_CUDA(call)                                                                  \
  do {                                                                                    \
    const cudaError_t e_ = (call);                                                        \
    if (e_ != cudaSuccess)                                                                \
      throw Error(format_api_failure("CUDA", #call, __FILE__, __LINE__, cudaGetErrorString(e_))); \
  } while (0)

// Times fn on the backend's stream: warm-up calls, then repeats bracketed by CUDA events.
Timing time_on_stream(CudaBackend& be, const Options& opt, const std::function<void()>& fn,
                      const EnergyMeter* meter) {
  auto stream = static_cast<cudaStream_t>(be.stream());
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  // k calls between two events, waited for: the GPU time of the k calls.
  auto batch = [&](int k) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    for (int c = 0; c < k; ++c) fn();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    return static_cast<double>(ms);
  };
  const bool queued = opt.timing == "queued";
  // One setup call first, waited for and counted nowhere (allocator growth, lazy module loads;
  // anchors.py does the same for the PyTorch anchors, whose first cuDNN call compiles kernels
  // for over a second): counted as warm-up, such a call spends the warm-up's budget at once and
  // leaves the row timed cold.
  batch(1);
  // Warm-up: at least `warmup` calls (one at least) and warm_ms of GPU time, stopping early once
  // a third of the row's time budget is spent (slow rows at 64K would otherwise dominate the run).
  // Queued and graph: after the first call, batches of ~10 ms of calls between two events.
  double first = 0, warm_ms = 0;
  int warm_calls = 0;
  // Calls in ~10 ms at the last measured time per call.
  auto calls_in_10ms = [&] {
    return std::clamp(static_cast<int>(10.0 / std::max(first, 1e-3)), 1, 1000);
  };
  for (int i = 0;;) {
    const int k = opt.timing != "sync" && i > 0 ? calls_in_10ms() : 1;
    const double ms = batch(k);
    first = ms / k;
    warm_ms += ms;
    i += k;
    warm_calls = i;
    if (warm_ms > opt.max_seconds * 1e3 / 3) break;
    if (i >= std::max(1, opt.warmup) && warm_ms >= opt.warm_ms) break;
  }
  int reps = opt.repeats;
  if (first > 0) reps = std::min(reps, static_cast<int>(opt.max_seconds * 1e3 / first));
  reps = std::max(reps, 5);
  std::vector<double> ms;
  double host_ms = -1;
  if (queued) {
    // One event between consecutive calls, all launched before the first wait.
    std::vector<cudaEvent_t> ev(static_cast<size_t>(reps) + 1);
    for (auto& e : ev) BENCH_CUDA(cudaEventCreate(&e));
    BENCH_CUDA(cudaEventRecord(ev[0], stream));
    const auto h0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
      fn();
      BENCH_CUDA(cudaEventRecord(ev[static_cast<size_t>(i) + 1], stream));
    }
    host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0)
                  .count() /
              reps;
    BENCH_CUDA(cudaEventSynchronize(ev.back()));
    for (int i = 0; i < reps; ++i) {
      float t = 0;
      const auto k = static_cast<size_t>(i);
      BENCH_CUDA(cudaEventElapsedTime(&t, ev[k], ev[k + 1]));
      ms.push_back(t);
    }
    for (auto& e : ev) BENCH_CUDA(cudaEventDestroy(e));
  } else if (opt.timing == "graph") {
    // k calls captured once; each timed replay between two events.
    const int k = calls_in_10ms();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      for (int c = 0; c < k; ++c) fn();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    BENCH_CUDA(cudaStreamEndCapture(stream, &graph));
    BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < reps; ++i) {
      // An untimed replay first: the GPU is busy while the timed one is launched.
      BENCH_CUDA(cudaGraphLaunch(exec, stream));
      BENCH_CUDA(cudaEventRecord(start, stream));
      BENCH_CUDA(cudaGraphLaunch(exec, stream));
      BENCH_CUDA(cudaEventRecord(stop, stream));
      BENCH_CUDA(cudaEventSynchronize(stop));
      float t = 0;
      BENCH_CUDA(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(static_cast<double>(t) / k);
    }
    BENCH_CUDA(cudaGraphExecDestroy(exec));
    BENCH_CUDA(cudaGraphDestroy(graph));
  } else {
    for (int i = 0; i < reps; ++i) ms.push_back(batch(1));
  }
  Timing t{percentile(ms, 0.5), percentile(ms, 0.1), percentile(ms, 0.9), reps};
  t.warm_ms = warm_ms;
  t.warm_calls = warm_calls;
  t.host_ms = host_ms;
  if (opt.energy_ms > 0 && meter != nullptr && meter->available()) {
    // Batches of ~50 ms of calls, each waited for (the gaps are a few us in 50 ms), until
    // energy_ms of wall time has passed between two readings of the energy counter.
    const int k = std::clamp(static_cast<int>(50.0 / std::max(t.median, 1e-3)), 1, 10000);
    const double mj0 = meter->millijoules();
    const auto t0 = std::chrono::steady_clock::now();
    auto wall_ms = [&] {
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
          .count();
    };
    int calls = 0;
    double mhz_sum = 0;
    int mhz_n = 0;
    while (wall_ms() < opt.energy_ms) {
      for (int c = 0; c < k; ++c) fn();
      // The SM clock while the batch runs (the host is ahead of the GPU here).
      if (const int mhz = meter->sm_mhz(); mhz > 0) {
        mhz_sum += mhz;
        ++mhz_n;
      }
      BENCH_CUDA(cudaStreamSynchronize(stream));
      calls += k;
    }
    if (mhz_n > 0) t.sm_mhz = mhz_sum / mhz_n;
    const double joules = (meter->millijoules() - mj0) / 1e3;
    t.energy_ms = wall_ms();
    t.energy_calls = calls;
    t.energy_j = joules / calls;
    t.watts = joules / (t.energy_ms / 1e3);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  return t;
}

// A dense [nb, nb] uint8 block matrix as .npy (format 1.0), what anchors.py turns into a
// FlexAttention block mask.
void write_block_matrix(const std::string& path, const BlockMask& m) {
  std::vector<uint8_t> dense(static_cast<size_t>(m.num_q_blocks * m.num_k_blocks), 0);
  for (int64_t r = 0; r < m.num_q_blocks; ++r)
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
      dense[static_cast<size_t>(r * m.num_k_blocks + m.col_idx[e])] = 1;
  std::string header = "{'descr': '|u1', 'fortran_order': False, 'shape': (" +
                       std::to_string(m.num_q_blocks) + ", " + std::to_string(m.num_k_blocks) +
                       "), }";
  const size_t unpadded = 10 + header.size() + 1;  // magic+version+len, header, newline
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Error("cannot write " + path);
  const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(magic, 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  f.write(len_le, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(dense.data()), static_cast<std::streamsize>(dense.size()));
}

class Bench {
 public:
  Bench(const Options& opt) : opt_(opt), be_(make_cuda_backend(opt.device)), cuda_(as_cuda(*be_)) {
    dtype_ = parse_dtype(opt.dtype, "--dtype");
    kv_grad_dtype_ = opt.kv_grads == "input" || opt.grads == "write" ? dtype_ : DType::F32;
    dq_grad_dtype_ = opt.grads == "write" ? dtype_ : DType::F32;
    char bus[32] = {};
    BENCH_CUDA(cudaDeviceGetPCIBusId(bus, sizeof(bus), opt.device));
    pci_bus_id_ = bus;
    if (opt.energy_ms > 0) {
      meter_ = std::make_unique<EnergyMeter>(pci_bus_id_);
      if (!meter_->available())
        std::fprintf(stderr, "kernel_bench: no energy measurement (%s)\n",
                     meter_->reason().c_str());
    }
  }

  void run() {
    auto has = [&](const std::string& s) { return opt_.suites.find(s) != std::string::npos; };
    print_header();
    if (has("dense")) dense_suite();
    if (has("sparse")) sparse_suite();
    if (has("dilated")) dilated_suite();
    write_json();
  }

 private:
  // Inputs of one shape, drawn on the device; gradients are the fp32 accumulators the
  // kernels write (the ring and the variants accumulate in fp32 too), dk and dv in the input
  // dtype with --kv-grads input; with --grads write dq, dk and dv of the input dtype,
  // overwritten by each call (AttnBwdParams::accumulate false: the variants' backward, SDPA's).
  struct Buffers {
    DeviceTensor q, k, v, o, lse, d_o, dq, dk, dv;
  };
  Buffers buffers(int64_t B, int64_t N, int64_t H, int64_t D, bool grads) {
    Buffers b;
    b.q = DeviceTensor(*be_, dtype_, B, N, H, D);
    b.k = DeviceTensor(*be_, dtype_, B, N, H, D);
    b.v = DeviceTensor(*be_, dtype_, B, N, H, D);
    b.o = DeviceTensor(*be_, dtype_, B, N, H, D);
    b.lse = DeviceTensor(*be_, DType::F32, B, N, H, 1);
    cuda_.randn(b.q.view(), 1);
    cuda_.randn(b.k.view(), 2);
    cuda_.randn(b.v.view(), 3);
    if (grads) {
      b.d_o = DeviceTensor(*be_, dtype_, B, N, H, D);
      b.dq = DeviceTensor(*be_, dq_grad_dtype_, B, N, H, D);
      b.dk = DeviceTensor(*be_, kv_grad_dtype_, B, N, H, D);
      b.dv = DeviceTensor(*be_, kv_grad_dtype_, B, N, H, D);
      cuda_.randn(b.d_o.view(), 4);
      be_->fill(b.dq.view(), 0.0);
      be_->fill(b.dk.view(), 0.0);
      be_->fill(b.dv.view(), 0.0);
    }
    return b;
  }

  // Forward and backward of one masked attention through the backend's kernel calls.
  void time_masked(json row, const BlockMask& mask, int64_t B, int64_t N, int64_t H, int64_t D,
                   bool causal, double fwd_flops) {
    auto pm = be_->prepare_mask(mask);
    auto pmt = be_->prepare_mask(mask.transpose());
    Buffers b = buffers(B, N, H, D, true);
    AttnFwdParams f;
    f.q = b.q.view();
    f.k = b.k.view();
    f.v = b.v.view();
    f.o = b.o.view();
    f.lse = b.lse.view();
    f.mask = pm->view();
    f.causal = causal;
    Timing tf;
    if (opt_.time_fwd) {
      tf = time_on_stream(cuda_, opt_, [&] { be_->attention_forward(f); }, meter_.get());
    } else {
      if (!opt_.time_bwd) return;
      be_->attention_forward(f);  // o and lse for the backward
    }
    AttnBwdParams p;
    p.q = f.q;
    p.k = f.k;
    p.v = f.v;
    p.o = f.o;
    p.lse = f.lse;
    p.d_o = b.d_o.view();
    p.dq = b.dq.view();
    p.dk = b.dk.view();
    p.dv = b.dv.view();
    p.mask = pm->view();
    p.mask_t = pmt->view();
    p.causal = causal;
    p.accumulate = opt_.grads != "write";
    if (opt_.time_fwd) add_row(row, "fwd", tf, fwd_flops);
    if (!opt_.time_bwd) return;
    const Timing tb = time_on_stream(cuda_, opt_, [&] { be_->attention_backward(p); }, meter_.get());
    add_row(row, "bwd", tb, 2.5 * fwd_flops);
  }

  void dense_suite() {
    for (int64_t D : opt_.dense_d)
      for (bool causal : {false, true})
        for (int64_t N : opt_.dense_n) {
          const int64_t B = opt_.batch, H = opt_.heads;
          MaskGeometry g;
          g.nq = g.nk = N;
          g.block_q = g.block_k = opt_.block;
          g.causal = causal;
          // DESIGN.md: 4 * B * H * N^2 * D, causal counts half.
          const double flops = 4.0 * B * H * static_cast<double>(N) * N * D * (causal ? 0.5 : 1.0);
          json row{{"suite", "dense"}, {"B", B}, {"N", N}, {"H", H}, {"D", D},
                   {"causal", causal}, {"block", opt_.block}, {"density", causal ? 0.5 : 1.0}};
          guarded(row, [&] { time_masked(row, dense_block_mask(g), B, N, H, D, causal, flops); });
        }
  }

  void sparse_suite() {
    std::filesystem::create_directories(opt_.mask_dir);
    const int64_t B = opt_.batch, H = opt_.heads, D = opt_.sparse_d, N = opt_.sparse_n;
    for (const auto& pattern : opt_.sparse_patterns)
      for (double density : opt_.densities) {
        SparseConfig cfg;
        cfg.pattern = pattern;
        cfg.block_size = opt_.block;
        cfg.sparsity_ratio = density;
        cfg.seed = 1;
        const BlockMask mask = sparse_block_mask(cfg, N, false);
        char name[128];
        std::snprintf(name, sizeof(name), "%s_n%lld_bs%lld_r%g.npy", pattern.c_str(),
                      static_cast<long long>(N), static_cast<long long>(opt_.block), density);
        const std::string path = (std::filesystem::path(opt_.mask_dir) / name).string();
        write_block_matrix(path, mask);
        const double flops = mask_flops(mask, Shape{B, N, H, D}, false);
        json row{{"suite", "sparse"}, {"B", B},          {"N", N},
                 {"H", H},            {"D", D},          {"causal", false},
                 {"block", opt_.block}, {"pattern", pattern}, {"sparsity_ratio", density},
                 {"density", mask.density()}, {"mask_file", std::filesystem::absolute(path).string()}};
        guarded(row, [&] { time_masked(row, mask, B, N, H, D, false, flops); });
      }
  }

  void dilated_suite() {
    const int64_t B = opt_.batch, H = opt_.dilated_heads, D = opt_.dilated_d;
    struct Config {
      std::string name;
      std::function<std::vector<int64_t>(int64_t)> segments;
    };
    // The seed's benchmark_all.py ([min(s, N/2) for s in 1024, 2048, 4096]) and the
    // LongNet/torchscale-like [2048, 4096, 8192], both with rates [1, 2, 4].
    const std::vector<Config> configs{
        {"seed_benchmark_all",
         [](int64_t N) {
           std::vector<int64_t> s;
           for (int64_t x : {1024, 2048, 4096}) s.push_back(std::min(x, N / 2));
           return s;
         }},
        {"longnet_2048_4096_8192", [](int64_t) { return std::vector<int64_t>{2048, 4096, 8192}; }}};
    for (const auto& c : configs)
      for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet})
        for (bool causal : {false, true})
          for (int64_t N : opt_.dilated_n) {
            AttentionSpec spec;
            spec.variant = "dilated";
            spec.causal = causal;
            spec.block_size = opt_.block;
            spec.dilated.segment_lengths = c.segments(N);
            spec.dilated.dilation_rates = {1, 2, 4};
            spec.dilated.mode = mode;
            const std::string mode_name = mode == DilatedMode::Groups ? "groups" : "longnet";
            json row{{"suite", "dilated"},
                     {"config", c.name},
                     {"mode", mode_name},
                     {"B", B},
                     {"N", N},
                     {"H", H},
                     {"D", D},
                     {"causal", causal},
                     {"block", opt_.block},
                     {"segment_lengths", spec.dilated.segment_lengths},
                     {"dilation_rates", spec.dilated.dilation_rates}};
            guarded(row, [&] {
              auto variant = make_attention(spec);
              const Shape shape{B, N, H, D};
              variant->validate(shape);
              row["density"] = variant->density(shape);
              const double flops = variant->flops(shape);
              Buffers b = buffers(B, N, H, D, true);
              // The variant's gradients are in the input dtype (it owns the accumulation).
              DeviceTensor dq(*be_, dtype_, B, N, H, D), dk(*be_, dtype_, B, N, H, D),
                  dv(*be_, dtype_, B, N, H, D);
              auto fwd = [&] {
                variant->forward(*be_, b.q.view(), b.k.view(), b.v.view(), b.o.view(),
                                 b.lse.view());
              };
              if (opt_.time_fwd) {
                add_row(row, "fwd", time_on_stream(cuda_, opt_, fwd, meter_.get()), flops);
              } else {
                fwd();  // o and lse for the backward
              }
              if (!opt_.time_bwd) return;
              const Timing tb = time_on_stream(cuda_, opt_, [&] {
                variant->backward(*be_, b.q.view(), b.k.view(), b.v.view(), b.o.view(),
                                  b.lse.view(), b.d_o.view(), dq.view(), dk.view(), dv.view());
              }, meter_.get());
              add_row(row, "bwd", tb, 2.5 * flops);
            });
          }
  }

  // Runs one row's measurements; an error (out of memory, unsupported shape) becomes a row with
  // an "error" field instead of ending the sweep.
  void guarded(json row, const std::function<void()>& fn) {
    be_->reset_peak();  // peak_bytes of a row: what that row allocated
    try {
      fn();
    } catch (const std::exception& e) {
      row["pass"] = "fwd+bwd";
      row["error"] = e.what();
      rows_.push_back(row);
      std::printf("%-8s %-7s N=%-7lld D=%-4lld ERROR: %s\n", row["suite"].get<std::string>().c_str(),
                  "", static_cast<long long>(row["N"].get<int64_t>()),
                  static_cast<long long>(row["D"].get<int64_t>()), e.what());
    }
  }

  void add_row(json row, const std::string& pass, const Timing& t, double flops) {
    row["pass"] = pass;
    row["dtype"] = opt_.dtype;
    row["flops"] = flops;
    row["ms_median"] = t.median;
    row["ms_p10"] = t.p10;
    row["ms_p90"] = t.p90;
    row["repeats"] = t.repeats;
    row["warm_ms"] = t.warm_ms;
    row["warm_calls"] = t.warm_calls;
    if (t.host_ms >= 0) row["host_ms_per_call"] = t.host_ms;
    row["tflops"] = flops / (t.median * 1e-3) / 1e12;
    row["peak_bytes"] = be_->peak_bytes();
    if (t.energy_j >= 0) {
      row["energy_j_per_call"] = t.energy_j;
      row["watts"] = t.watts;
      row["energy_calls"] = t.energy_calls;
      row["energy_ms"] = t.energy_ms;
      if (t.sm_mhz > 0) row["sm_mhz"] = t.sm_mhz;
    }
    row["id"] = rows_.size();
    rows_.push_back(row);
    std::string what = row.value("pattern", row.value("mode", std::string("")));
    if (row.contains("config")) what += "/" + row["config"].get<std::string>().substr(0, 6);
    std::printf("%-8s %-4s %-18s N=%-6lld H=%-3lld D=%-4lld %-7s dens=%5.3f  %9.3f ms "
                "[%8.3f, %8.3f]  %7.1f TFLOP/s\n",
                row["suite"].get<std::string>().c_str(), pass.c_str(), what.c_str(),
                static_cast<long long>(row["N"].get<int64_t>()),
                static_cast<long long>(row["H"].get<int64_t>()),
                static_cast<long long>(row["D"].get<int64_t>()),
                row["causal"].get<bool>() ? "causal" : "full", row.value("density", 1.0), t.median,
                t.p10, t.p90, row["tflops"].get<double>());
    if (t.energy_j >= 0)
      std::printf("  energy %.4f J a call, %.0f W over %d calls (%.0f ms), SM clock %.0f MHz\n",
                  t.energy_j, t.watts, t.energy_calls, t.energy_ms, t.sm_mhz);
    std::fflush(stdout);
  }

  void print_header() {
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    std::printf("# longattn kernel_bench on %s (CUDA runtime %d, driver %d), dtype %s\n",
                be_->name().c_str(), rt, drv, opt_.dtype.c_str());
    std::printf("# %s\n", opt_.command.c_str());
    std::printf("# timing: CUDA events on the work stream (%s), at least %d warm-up calls and "
                "%.0f ms, median of up to %d repeats (<= %.1f s per row, >= 5), p10/p90; FLOPs "
                "fwd 4*B*H*pairs*D (causal half), bwd 2.5x\n",
                opt_.timing == "queued"  ? "calls queued back to back"
                : opt_.timing == "graph" ? "calls replayed from a CUDA graph"
                                         : "each call waited for",
                opt_.warmup, opt_.warm_ms, opt_.repeats, opt_.max_seconds);
  }

  void write_json() {
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    const auto now = std::chrono::system_clock::now();
    const std::time_t tt = std::chrono::system_clock::to_time_t(now);
    char date[64];
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&tt));
    json j{{"program", "kernel_bench"},
           {"gpu", cuda_device_name(opt_.device)},
           {"device", opt_.device},
           {"date", date},
           {"command", opt_.command},
           {"cuda_runtime", rt},
           {"cuda_driver", drv},
           {"dtype", opt_.dtype},
           {"passes", opt_.passes},
           {"timing",
            {{"warmup", opt_.warmup},
             {"warm_ms", opt_.warm_ms},
             {"repeats_max", opt_.repeats},
             {"max_seconds_per_row", opt_.max_seconds},
             {"mode", opt_.timing},
             {"energy_ms", opt_.energy_ms},
             {"pci_bus_id", pci_bus_id_},
             {"energy", opt_.energy_ms <= 0 ? std::string("off")
                        : meter_ && meter_->available()
                            ? std::string("NVML energy counter over calls back to back")
                            : "unavailable: " + (meter_ ? meter_->reason() : std::string())},
             {"method",
              opt_.timing == "queued"
                  ? "CUDA events on the backend work stream, calls queued back to back"
              : opt_.timing == "graph"
                  ? "CUDA events around replays of a CUDA graph of k calls, divided by k"
                  : "CUDA events on the backend work stream, each call waited for"}}},
           {"flops_convention",
            "fwd 4*B*H*(visible pairs)*D; dense causal counts half (4*B*H*N^2*D/2); bwd 2.5x fwd"},
           {"grad_dtype",
            {{"dense_sparse",
              opt_.grads == "write"   ? "dq, dk and dv " + opt_.dtype + " (kernel call, overwriting)"
              : opt_.kv_grads == "input" ? "dq fp32, dk and dv " + opt_.dtype + " (kernel call, adding)"
                                         : "fp32 accumulators (kernel call)"},
             {"dilated", opt_.dtype + " (variant backward)"}}},
           {"rows", rows_}};
    std::ofstream f(opt_.out);
    if (!f) throw Error("cannot write " + opt_.out);
    f << j.dump(1) << "\n";
    std::printf("# wrote %s (%zu rows)\n", opt_.out.c_str(), rows_.size());
  }

  Options opt_;
  std::unique_ptr<Backend> be_;
  CudaBackend& cuda_;
  std::string pci_bus_id_;
  std::unique_ptr<EnergyMeter> meter_;
  DType dtype_ = DType::BF16;
  DType kv_grad_dtype_ = DType::F32, dq_grad_dtype_ = DType::F32;
  std::vector<json> rows_;
};

}  // namespace
}  // namespace longattn

int main(int argc, char** argv) {
  using namespace longattn;
  Options opt;
  for (int i = 0; i < argc; ++i) opt.command += (i ? " " : "") + std::string(argv[i]);
  po::options_description desc("kernel_bench options");
  desc.add_options()("help,h", "this help")(
      "suites", po::value(&opt.suites)->default_value(opt.suites), "comma list: dense,sparse,dilated")(
      "passes", po::value(&opt.passes)->default_value(opt.passes),
      "comma list of the passes timed per row: fwd,bwd")(
      "out", po::value(&opt.out)->default_value(opt.out), "JSON output file")(
      "mask-dir", po::value(&opt.mask_dir)->default_value(opt.mask_dir),
      "folder for the block masks (.npy) of the sparse rows")(
      "dtype", po::value(&opt.dtype)->default_value(opt.dtype), "bf16 | fp16 | fp32")(
      "kv-grads", po::value(&opt.kv_grads)->default_value(opt.kv_grads),
      "dk, dv of the dense and sparse backward: fp32 (accumulators) | input (the dtype)")(
      "grads", po::value(&opt.grads)->default_value(opt.grads),
      "dense and sparse backward: add (into the accumulators of --kv-grads) | write (dq, dk, "
      "dv of the input dtype, overwritten: the variants' backward and SDPA's)")(
      "dense-n", po::value(&opt.dense_n)->multitoken(), "dense sequence lengths")(
      "dense-d", po::value(&opt.dense_d)->multitoken(), "dense head dims")(
      "heads", po::value(&opt.heads)->default_value(opt.heads), "heads (dense, sparse)")(
      "batch", po::value(&opt.batch)->default_value(opt.batch), "batch")(
      "block", po::value(&opt.block)->default_value(opt.block), "mask block size (64 or 128)")(
      "sparse-n", po::value(&opt.sparse_n)->default_value(opt.sparse_n), "block-sparse length")(
      "sparse-d", po::value(&opt.sparse_d)->default_value(opt.sparse_d), "block-sparse head dim")(
      "densities", po::value(&opt.densities)->multitoken(), "block-sparse sparsity_ratio values")(
      "sparse-patterns", po::value(&opt.sparse_patterns)->multitoken(),
      "patterns with sparsity_ratio (local_window, random, dilated_sparse, ...)")(
      "dilated-n", po::value(&opt.dilated_n)->multitoken(), "dilated lengths")(
      "dilated-heads", po::value(&opt.dilated_heads)->default_value(opt.dilated_heads),
      "dilated heads")(
      "dilated-d", po::value(&opt.dilated_d)->default_value(opt.dilated_d), "dilated head dim")(
      "warmup", po::value(&opt.warmup)->default_value(opt.warmup), "warm-up calls per row (min)")(
      "warm-ms", po::value(&opt.warm_ms)->default_value(opt.warm_ms),
      "warm-up GPU time per row in ms (min; clocks settle under the power limit)")(
      "repeats", po::value(&opt.repeats)->default_value(opt.repeats), "timed calls per row (max)")(
      "max-seconds", po::value(&opt.max_seconds)->default_value(opt.max_seconds),
      "time budget per row (repeats shrink, at least 5)")(
      "timing", po::value(&opt.timing)->default_value(opt.timing),
      "queued (calls back to back, events between them) | sync (wait for each timed call) | "
      "graph (calls captured in a CUDA graph, replays timed; ours only)")(
      "energy-ms", po::value(&opt.energy_ms)->default_value(opt.energy_ms),
      "after each row's timing, run its calls back to back for this many ms between two "
      "readings of the GPU's energy counter (NVML): J a call, mean W (0: off)")(
      "device", po::value(&opt.device)->default_value(opt.device), "CUDA device");
  try {
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    po::notify(vm);
    LONGATTN_CHECK_ARG(opt.warmup >= 0, "--warmup", opt.warmup, "must be >= 0");
    LONGATTN_CHECK_ARG(opt.warm_ms >= 0, "--warm-ms", opt.warm_ms, "must be >= 0");
    LONGATTN_CHECK_ARG(opt.repeats >= 1, "--repeats", opt.repeats, "must be >= 1");
    LONGATTN_CHECK_ARG(opt.energy_ms >= 0, "--energy-ms", opt.energy_ms, "must be >= 0");
    if (opt.timing != "sync" && opt.timing != "queued" && opt.timing != "graph")
      throw InvalidArgument("--timing", opt.timing, "must be sync, queued or graph");
    {
      bool fwd = false, bwd = false;
      std::stringstream ss(opt.passes);
      for (std::string tok; std::getline(ss, tok, ',');) {
        if (tok == "fwd") {
          fwd = true;
        } else if (tok == "bwd") {
          bwd = true;
        } else {
          throw InvalidArgument("--passes", opt.passes, "must be a comma list of fwd and bwd");
        }
      }
      if (!fwd && !bwd) throw InvalidArgument("--passes", opt.passes, "must name fwd or bwd");
      opt.time_fwd = fwd;
      opt.time_bwd = bwd;
    }
    if (opt.kv_grads != "fp32" && opt.kv_grads != "input")
      throw InvalidArgument("--kv-grads", opt.kv_grads, "must be fp32 or input");
    if (opt.grads != "add" && opt.grads != "write")
      throw InvalidArgument("--grads", opt.grads, "must be add or write");
    if (cuda_device_count() == 0) {
      std::cerr << "kernel_bench: no CUDA device visible\n";
      return 1;
    }
    Bench(opt).run();
    return 0;
  } catch (const po::error& e) {
    std::cerr << "kernel_bench: " << e.what() << "\n";
    return 2;
  } catch (const InvalidArgument& e) {
    std::cerr << "kernel_bench: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kernel_bench: " << e.what() << "\n";
    return 1;
  }
}
