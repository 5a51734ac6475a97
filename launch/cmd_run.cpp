// `longattn run`: one attention variant on inputs from .npy files or drawn from a seed; writes O
// and LSE (and dQ, dK, dV with --backward) as .npy and prints time, TFLOP/s and density.
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "launch/commands.hpp"
#include "launch/execute.hpp"
#include "launch/options.hpp"
#include "runtime/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/npy.hpp"

namespace longattn::cli {

namespace {

constexpr double kBackwardFlopFactor = 2.5;  // DESIGN.md: backward counts 2.5x the forward

struct RunArgs {
  std::string out = "out";
  std::string q, k, v, d_o;
  bool backward = false;
  bool save_inputs = false;
  bool json = false;
  int warmup = 0, repeats = 1;
};

bool given(const po::variables_map& vm, const char* name) {
  return vm.count(name) && !vm[name].defaulted();
}

// Q, K, V (and dO) from files: all of Q, K, V or none; shapes equal; converted to `dtype`.
HostInputs load_inputs(const RunArgs& r, DType* dtype, bool dtype_given) {
  auto read = [&](const std::string& path, const char* option) {
    try {
      return read_npy(path, NpyLayout::BNHD);
    } catch (const Error& e) {
      throw InvalidArgument(option, path, e.what());
    }
  };
  HostInputs in;
  in.q = read(r.q, "--q");
  in.k = read(r.k, "--k");
  in.v = read(r.v, "--v");
  if (r.backward && !r.d_o.empty()) in.d_o = read(r.d_o, "--do");
  if (!dtype_given) *dtype = in.q.dtype();
  const auto shape = in.q.shape();
  auto conform = [&](Tensor& t, const char* option, const std::string& path) {
    if (t.numel() == 0) return;
    LONGATTN_CHECK_ARG(t.shape() == shape, option, path,
                       "must have Q's shape " + in.q.view().shape_string() + ", not " +
                           t.view().shape_string());
    if (t.dtype() != *dtype) {
      log(LogLevel::Info, path, ": converting ", dtype_name(t.dtype()), " to ",
          dtype_name(*dtype));
      t = t.to(*dtype);
    }
  };
  conform(in.q, "--q", r.q);
  conform(in.k, "--k", r.k);
  conform(in.v, "--v", r.v);
  conform(in.d_o, "--do", r.d_o);
  return in;
}

std::string describe_shape(const Shape& s) {
  std::ostringstream os;
  os << "B " << s.B << " N " << s.N << " H " << s.H << " D " << s.D;
  return os.str();
}

}  // namespace

int cmd_run(const Args& args, const MpiSession& mpi) {
  AttentionArgs a;
  RunArgs r;
  DeviceArgs dev;
  po::options_description desc;
  po::options_description io("Inputs and outputs");
  io.add_options()
      ("q", po::value<std::string>(&r.q), "Q as .npy [B, N, H, D] (with --k and --v; "
                                         "default: random from --seed)")
      ("k", po::value<std::string>(&r.k), "K as .npy [B, N, H, D]")
      ("v", po::value<std::string>(&r.v), "V as .npy [B, N, H, D]")
      ("do", po::value<std::string>(&r.d_o), "dO as .npy [B, N, H, D] for --backward "
                                             "(default: random from --seed)")
      ("backward", po::bool_switch(&r.backward), "also compute dQ, dK, dV")
      ("out,o", po::value<std::string>(&r.out)->default_value("out"),
       "directory for o.npy, lse.npy (and dq.npy, dk.npy, dv.npy)")
      ("save-inputs", po::bool_switch(&r.save_inputs),
       "also write the inputs used (q.npy, k.npy, v.npy, do.npy) to --out")
      ("warmup", po::value<int>(&r.warmup)->default_value(0), "untimed runs first")
      ("repeats", po::value<int>(&r.repeats)->default_value(1), "timed runs (median reported)")
      ("json", po::bool_switch(&r.json), "print the summary as JSON");
  desc.add(shape_options(a, ArgDefaults{})).add(variant_options(a)).add(io).add(device_options(dev));
  po::variables_map vm;
  if (!parse_command("run",
                     "Runs one attention variant on Q, K, V read from .npy files or drawn at "
                     "random from --seed,\nwrites O (Q's dtype) and LSE (fp32; fp64 for fp64 "
                     "runs) as .npy, and prints the time,\nTFLOP/s (forward 4*pairs*D, causal "
                     "pairs only; backward 2.5x) and the block density.",
                     args, desc, vm))
    return kExitOk;

  try {
    AttentionSpec spec = make_spec(a, vm);
    DType dtype = make_dtype(a.dtype);
    HostInputs in;
    const bool from_files = !r.q.empty() || !r.k.empty() || !r.v.empty();
    if (from_files) {
      for (const auto& [name, path] : {std::pair{"--q", r.q}, {"--k", r.k}, {"--v", r.v}})
        if (path.empty())
          throw InvalidArgument(name, "(missing)", "--q, --k and --v are given together");
      for (const char* opt : {"batch", "seq-len", "heads", "head-dim"})
        if (given(vm, opt))
          throw InvalidArgument(std::string("--") + opt, std::to_string(vm[opt].as<int64_t>()),
                                "the shape comes from --q; leave it out");
      in = load_inputs(r, &dtype, given(vm, "dtype"));
      const auto sh = in.q.shape();
      a.batch = sh[0], a.seq_len = sh[1], a.heads = sh[2], a.head_dim = sh[3];
      if (!given(vm, "segment-lengths")) spec = make_spec(a, vm);  // defaults follow N
    }
    if (!r.d_o.empty() && !r.backward)
      throw InvalidArgument("--do", r.d_o, "is only used with --backward");
    const Shape shape = make_shape(a);
    validate_shape(shape);
    if (!from_files) in = random_inputs(shape, dtype, a.seed, r.backward);
    if (r.backward && in.d_o.numel() == 0)
      in.d_o = random_inputs(shape, dtype, a.seed, true).d_o;

    auto variant = make_attention(spec);
    variant->validate(shape);
    auto be = make_backend(dev, mpi);

    // Until the distributed variants are wired in, rank 0 computes alone under mpirun.
    if (mpi.rank() != 0) return kExitOk;
    if (mpi.world() > 1)
      log(LogLevel::Warn, "run: ", mpi.world(),
          " ranks, but this build's run computes on rank 0 only (single-process variants)");

    std::error_code ec;
    std::filesystem::create_directories(r.out, ec);
    if (ec) throw InvalidArgument("--out", r.out, "cannot create the directory: " + ec.message());
    const HostOutputs res = execute(*be, *variant, in, ExecOptions{r.backward, r.warmup, r.repeats});

    auto path = [&](const char* name) { return (std::filesystem::path(r.out) / name).string(); };
    std::vector<std::string> written;
    auto write = [&](const char* name, const Tensor& t, NpyLayout layout) {
      write_npy(path(name), t.view(), layout);
      written.push_back(path(name));
    };
    write("o.npy", res.o, NpyLayout::BNHD);
    write("lse.npy", res.lse, NpyLayout::BNH);
    if (r.backward) {
      write("dq.npy", res.dq, NpyLayout::BNHD);
      write("dk.npy", res.dk, NpyLayout::BNHD);
      write("dv.npy", res.dv, NpyLayout::BNHD);
    }
    if (r.save_inputs) {
      write("q.npy", in.q, NpyLayout::BNHD);
      write("k.npy", in.k, NpyLayout::BNHD);
      write("v.npy", in.v, NpyLayout::BNHD);
      if (r.backward) write("do.npy", in.d_o, NpyLayout::BNHD);
    }

    const double fwd_flop = variant->flops(shape);
    const double density = variant->density(shape);
    const double fwd_tflops = res.forward_s > 0 ? fwd_flop / res.forward_s / 1e12 : 0.0;
    const double bwd_flop = kBackwardFlopFactor * fwd_flop;
    const double bwd_tflops = res.backward_s > 0 ? bwd_flop / res.backward_s / 1e12 : 0.0;

    if (r.json) {
      nlohmann::json j;
      j["variant"] = variant->name();
      j["config"] = describe_spec(variant->spec());
      j["causal"] = spec.causal;
      j["dtype"] = dtype_name(dtype);
      j["shape"] = {{"B", shape.B}, {"N", shape.N}, {"H", shape.H}, {"D", shape.D}};
      j["device"] = be->name();
      j["density"] = density;
      j["forward"] = {{"seconds", res.forward_s}, {"flop", fwd_flop}, {"tflops", fwd_tflops}};
      if (r.backward)
        j["backward"] = {{"seconds", res.backward_s}, {"flop", bwd_flop}, {"tflops", bwd_tflops}};
      j["peak_bytes"] = res.peak_bytes;
      j["files"] = written;
      std::cout << j.dump(2) << "\n";
      return kExitOk;
    }
    std::cout << std::setprecision(4);
    std::cout << "longattn run: " << variant->name() << " (" << describe_spec(variant->spec())
              << "), " << (spec.causal ? "causal" : "non-causal") << ", " << dtype_name(dtype)
              << ", " << describe_shape(shape) << ", " << be->name() << "\n";
    std::cout << "  density   " << std::fixed << std::setprecision(4) << density
              << " of query-key block pairs computed\n";
    std::cout << std::defaultfloat << std::setprecision(4);
    std::cout << "  forward   " << res.forward_s * 1e3 << " ms  " << fwd_tflops << " TFLOP/s  ("
              << fwd_flop << " FLOP)\n";
    if (r.backward)
      std::cout << "  backward  " << res.backward_s * 1e3 << " ms  " << bwd_tflops
                << " TFLOP/s  (" << bwd_flop << " FLOP)\n";
    std::cout << "  memory    " << static_cast<double>(res.peak_bytes) / (1 << 20)
              << " MiB peak on the backend\n";
    for (const auto& w : written) std::cout << "  wrote     " << w << "\n";
    return kExitOk;
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }
}

}  // namespace longattn::cli
