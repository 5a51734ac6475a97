// Backend selection, upload, timed forward/backward and download for the longattn command.
#include "launch/execute.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "launch/options.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel.hpp"
#include "runtime/sharding.hpp"
#ifdef LONGATTN_HAVE_CUDA
#include "kernels/cuda/cuda_backend.hpp"
#endif

namespace longattn::cli {

namespace po = boost::program_options;

po::options_description device_options(DeviceArgs& a) {
  po::options_description o("Device", kHelpWidth);
  o.add_options()
      ("device", po::value<std::string>(&a.device)->default_value("cpu"),
       "cpu (the fp64-accumulating reference backend) or cuda")
      ("threads", po::value<int>(&a.threads)->default_value(0),
       "CPU threads per rank (0: this node's cores shared among its ranks)")
      ("gpu", po::value<int>(&a.gpu)->default_value(-1),
       "CUDA device index (-1: the rank's local index on its node)");
  return o;
}

po::options_description dist_options(DistArgs& a) {
  po::options_description o("Distributed (under mpirun)", kHelpWidth);
  o.add_options()
      ("dist", po::value<std::string>(&a.dist),
       "ring | block_sparse_ring | dilated | data_parallel (default: the variant's sequence-"
       "parallel mode: dense -> ring, block_sparse -> block_sparse_ring, dilated -> dilated)")
      ("sharding", po::value<std::string>(&a.sharding)->default_value("contiguous"),
       "contiguous or zigzag (balances causal work; ring and block_sparse_ring)")
      ("comm-timeout", po::value<double>(&a.timeout_s)->default_value(0.0),
       "seconds any rank waits for a peer before every rank stops with a diagnosis "
       "(0: LONGATTN_COMM_TIMEOUT, else 300)")
      ("split-rows", po::value<std::string>(&a.split_rows)->default_value("0"),
       "the most query rows of one backward chunk (block_sparse_ring) or kernel call (dilated "
       "groups) whose gradients are held in fp32 (0: an eighth of the shard, at least 262,144); "
       "less memory, more calls");
  return o;
}

DistConfig make_dist_config(const DistArgs& a, const AttentionSpec& spec) {
  DistConfig c;
  c.mode = a.dist.empty() ? default_dist_mode(spec) : parse_dist_mode(a.dist, "--dist");
  c.sharding = parse_sharding(a.sharding, "--sharding");
  LONGATTN_CHECK_ARG(a.timeout_s >= 0, "--comm-timeout", a.timeout_s, "must be >= 0");
  c.split_rows = row_count(a.split_rows, "--split-rows");
  return c;
}

void check_dist_args(const DistArgs& a, bool distributed) {
  const int64_t split = row_count(a.split_rows, "--split-rows");
  LONGATTN_CHECK_ARG(a.timeout_s >= 0, "--comm-timeout", a.timeout_s, "must be >= 0");
  if (distributed) return;
  const char* needs = "needs several ranks: start longattn with mpirun -np <ranks>";
  if (!a.dist.empty()) throw InvalidArgument("--dist", a.dist, needs);
  if (split != 0) throw InvalidArgument("--split-rows", a.split_rows, needs);
}

int cpu_threads(const DeviceArgs& a, const ProcessGroup& mpi) {
  LONGATTN_CHECK_ARG(a.threads >= 0, "--threads", a.threads, "must be >= 0");
  if (a.threads > 0) return a.threads;
  const int cores = default_cpu_threads();
  return std::max(1, cores / std::max(1, mpi.local_world()));
}

std::unique_ptr<Backend> make_backend(const DeviceArgs& a, const ProcessGroup& mpi) {
  if (a.device == "cpu") return make_cpu_backend(cpu_threads(a, mpi));
  if (a.device != "cuda") throw InvalidArgument("--device", a.device, "must be cpu or cuda");
#ifdef LONGATTN_HAVE_CUDA
  const int count = cuda_device_count();
  if (count == 0)
    throw InvalidArgument("--device", "cuda",
                          "no GPU is visible to this process (no device, no driver, or "
                          "CUDA_VISIBLE_DEVICES hides them); use --device cpu");
  const int gpu = a.gpu >= 0 ? a.gpu : mpi.local_rank() % count;
  LONGATTN_CHECK_ARG(gpu < count, "--gpu", gpu,
                     "must be below the number of visible GPUs, " + std::to_string(count));
  return make_cuda_backend(gpu);
#else
  throw InvalidArgument("--device", "cuda",
                        "this longattn was built without CUDA (nvcc was not found when it was "
                        "configured); use --device cpu or rebuild with the CUDA toolkit");
#endif
}

DType lse_dtype(DType dtype) { return dtype == DType::F64 ? DType::F64 : DType::F32; }

HostInputs random_inputs(const Shape& s, DType dtype, uint64_t seed, bool with_grad) {
  // Distinct streams per tensor and per seed: seed s draws from 4s .. 4s+3.
  HostInputs in;
  in.q = Tensor::randn(dtype, s.B, s.N, s.H, s.D, 4 * seed + 0);
  in.k = Tensor::randn(dtype, s.B, s.N, s.H, s.D, 4 * seed + 1);
  in.v = Tensor::randn(dtype, s.B, s.N, s.H, s.D, 4 * seed + 2);
  if (with_grad) in.d_o = Tensor::randn(dtype, s.B, s.N, s.H, s.D, 4 * seed + 3);
  return in;
}

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

Tensor download(Backend& be, const DeviceTensor& t) {
  const TensorView& v = t.view();
  Tensor h(v.dtype, v.B, v.N, v.H, v.D);
  be.download(h.view(), v);
  return h;
}

}  // namespace

HostOutputs execute(Backend& be, AttentionVariant& variant, const HostInputs& in,
                    const ExecOptions& opt) {
  LONGATTN_CHECK_ARG(opt.repeats >= 1, "--repeats", opt.repeats, "must be >= 1");
  LONGATTN_CHECK_ARG(opt.warmup >= 0, "--warmup", opt.warmup, "must be >= 0");
  const TensorView& qv = in.q.view();
  const Shape s{qv.B, qv.N, qv.H, qv.D};
  variant.validate(s);
  const DType dt = in.q.dtype();
  be.reset_peak();
  auto make = [&](DType t, int64_t D) { return DeviceTensor(be, t, s.B, s.N, s.H, D); };
  DeviceTensor q = make(dt, s.D), k = make(dt, s.D), v = make(dt, s.D);
  be.upload(q.view(), in.q.view());
  be.upload(k.view(), in.k.view());
  be.upload(v.view(), in.v.view());
  DeviceTensor o = make(dt, s.D), lse = make(lse_dtype(dt), 1);

  using clock = std::chrono::steady_clock;
  auto timed = [&](const auto& fn) {
    for (int i = 0; i < opt.warmup; ++i) fn();
    be.synchronize();
    std::vector<double> t;
    for (int i = 0; i < opt.repeats; ++i) {
      const auto t0 = clock::now();
      fn();
      be.synchronize();
      t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
    }
    return median(t);
  };

  HostOutputs out;
  out.forward_s = timed([&] {
    variant.forward(be, q.view(), k.view(), v.view(), o.view(), lse.view());
  });
  if (opt.backward) {
    LONGATTN_CHECK_ARG(in.d_o.numel() == in.q.numel(), "--do", in.d_o.view().shape_string(),
                       "must have Q's shape " + qv.shape_string());
    DeviceTensor d_o = make(dt, s.D), dq = make(dt, s.D), dk = make(dt, s.D), dv = make(dt, s.D);
    be.upload(d_o.view(), in.d_o.view());
    out.backward_s = timed([&] {
      variant.backward(be, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(),
                       dq.view(), dk.view(), dv.view());
    });
    out.dq = download(be, dq);
    out.dk = download(be, dk);
    out.dv = download(be, dv);
  }
  out.o = download(be, o);
  out.lse = download(be, lse);
  out.peak_bytes = be.peak_bytes();
  return out;
}

DistributedOutputs execute_distributed(const ProcessGroup& group, Backend& be,
                                       const AttentionSpec& spec, const DistConfig& cfg,
                                       const HostInputs& in, const ExecOptions& opt) {
  LONGATTN_CHECK_ARG(opt.repeats >= 1, "--repeats", opt.repeats, "must be >= 1");
  LONGATTN_CHECK_ARG(opt.warmup >= 0, "--warmup", opt.warmup, "must be >= 0");
  DistributedInputs din;
  if (group.rank() == 0) {
    din.q = in.q.view();
    din.k = in.k.view();
    din.v = in.v.view();
    if (opt.backward) din.d_o = in.d_o.view();
  }
  DistributedOutputs res;
  std::vector<double> fwd, bwd;
  for (int i = 0; i < opt.warmup + opt.repeats; ++i) {
    DistributedResult r = run_distributed(spec, cfg, group.comm_for(be), be, din, opt.backward);
    if (i < opt.warmup) continue;
    fwd.push_back(r.forward_seconds);
    bwd.push_back(r.backward_seconds);
    if (i + 1 < opt.warmup + opt.repeats) continue;
    res.out.o = std::move(r.o);
    res.out.lse = std::move(r.lse);
    res.out.dq = std::move(r.dq);
    res.out.dk = std::move(r.dk);
    res.out.dv = std::move(r.dv);
    res.out.peak_bytes = r.peak_bytes;
    res.forward_total = r.forward_total;
    res.backward_total = r.backward_total;
  }
  res.out.forward_s = median(fwd);
  res.out.backward_s = opt.backward ? median(bwd) : 0.0;
  return res;
}

}  // namespace longattn::cli
