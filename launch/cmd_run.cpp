// `longattn run`: one attention variant on inputs from .npy files or drawn from a seed; writes O
// and LSE (and dQ, dK, dV with --backward) as .npy and prints time, TFLOP/s and density.
#include <array>
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
#include "runtime/sharding.hpp"

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

// The files of --q, --k, --v (and --do): every rank checks their headers (shapes equal to Q's)
// so that all ranks agree on the shape and dtype without reading the data.
struct InputFiles {
  std::vector<std::pair<const char*, std::string>> files;  // option, path
  std::array<int64_t, 4> shape{};
  DType dtype = DType::F32;  // Q's
};

InputFiles check_input_files(const RunArgs& r) {
  InputFiles f;
  f.files = {{"--q", r.q}, {"--k", r.k}, {"--v", r.v}};
  if (r.backward && !r.d_o.empty()) f.files.emplace_back("--do", r.d_o);
  for (const auto& [option, path] : f.files) {
    try {
      const auto shape = npy_tensor_shape(path, NpyLayout::BNHD);
      if (option == f.files.front().first) {
        f.shape = shape;
        f.dtype = read_npy_info(path).dtype;
      } else if (shape != f.shape) {
        throw Error("shape [" + std::to_string(shape[0]) + ", " + std::to_string(shape[1]) +
                    ", " + std::to_string(shape[2]) + ", " + std::to_string(shape[3]) +
                    "] differs from --q's [" + std::to_string(f.shape[0]) + ", " +
                    std::to_string(f.shape[1]) + ", " + std::to_string(f.shape[2]) + ", " +
                    std::to_string(f.shape[3]) + "]");
      }
    } catch (const InvalidArgument&) {
      throw;
    } catch (const Error& e) {
      throw InvalidArgument(option, path, e.what());
    }
  }
  return f;
}

// The data of the checked files, converted to `dtype`.
HostInputs load_input_files(const InputFiles& f, DType dtype) {
  HostInputs in;
  for (const auto& [option, path] : f.files) {
    Tensor t = read_npy(path, NpyLayout::BNHD);
    if (t.dtype() != dtype) {
      log(LogLevel::Info, path, ": converting ", dtype_name(t.dtype()), " to ", dtype_name(dtype));
      t = t.to(dtype);
    }
    const std::string opt = option;
    (opt == "--q" ? in.q : opt == "--k" ? in.k : opt == "--v" ? in.v : in.d_o) = std::move(t);
  }
  return in;
}

std::string describe_shape(const Shape& s) {
  std::ostringstream os;
  os << "B " << s.B << " N " << s.N << " H " << s.H << " D " << s.D;
  return os.str();
}

}  // namespace

int cmd_run(const Args& args, const ProcessGroup& mpi) {
  AttentionArgs a;
  RunArgs r;
  DeviceArgs dev;
  DistArgs d;
  po::options_description desc(kHelpWidth);
  po::options_description io("Inputs and outputs", kHelpWidth);
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
  desc.add(shape_options(a, ArgDefaults{}))
      .add(variant_options(a))
      .add(io)
      .add(device_options(dev))
      .add(dist_options(d));
  po::variables_map vm;
  if (!parse_command("run",
                     "Runs one attention variant on Q, K, V read from .npy files or drawn at "
                     "random from --seed,\nwrites O (Q's dtype) and LSE (fp32; fp64 for fp64 "
                     "runs) as .npy, and prints the time,\nTFLOP/s (forward 4*pairs*D, causal "
                     "pairs only; backward 2.5x) and the block density.",
                     args, desc, vm, mpi.rank() == 0))
    return kExitOk;

  try {
    AttentionSpec spec = make_spec(a, vm);
    DType dtype = make_dtype(a.dtype);
    const bool from_files = !r.q.empty() || !r.k.empty() || !r.v.empty();
    InputFiles files;
    if (from_files) {
      for (const auto& [name, path] : {std::pair{"--q", r.q}, {"--k", r.k}, {"--v", r.v}})
        if (path.empty())
          throw InvalidArgument(name, "(missing)", "--q, --k and --v are given together");
      for (const char* opt : {"batch", "seq-len", "heads", "head-dim"})
        if (given(vm, opt))
          throw InvalidArgument(std::string("--") + opt, std::to_string(vm[opt].as<int64_t>()),
                                "the shape comes from --q; leave it out");
      files = check_input_files(r);
      if (!given(vm, "dtype")) dtype = files.dtype;
      a.batch = files.shape[0], a.seq_len = files.shape[1], a.heads = files.shape[2],
      a.head_dim = files.shape[3];
      if (!given(vm, "segment-lengths")) spec = make_spec(a, vm);  // defaults follow N
    }
    if (!r.d_o.empty() && !r.backward)
      throw InvalidArgument("--do", r.d_o, "is only used with --backward");
    const Shape shape = make_shape(a);
    validate_shape(shape);
    auto variant = make_attention(spec);
    variant->validate(shape);
    const bool distributed = mpi.active();
    check_dist_args(d, distributed);
    DistConfig dist;
    if (distributed) {
      dist = make_dist_config(d, spec);
      validate_distributed(spec, dist, mpi.world(), &shape);
      if (d.timeout_s > 0) mpi.comm().set_timeout_seconds(d.timeout_s);
    }
    auto be = make_backend(dev, mpi);

    // Rank 0 writes; every rank learns whether it can, so none is left waiting.
    std::error_code ec;
    if (mpi.rank() == 0) std::filesystem::create_directories(r.out, ec);
    if (mpi.max_all(ec ? 1 : 0))
      throw InvalidArgument("--out", r.out,
                            "rank 0 cannot create the directory" +
                                (ec ? ": " + ec.message() : std::string()));

    // Inputs live on rank 0 only (run_distributed scatters them).
    HostInputs in;
    if (mpi.rank() == 0) {
      if (from_files) in = load_input_files(files, dtype);
      else in = random_inputs(shape, dtype, a.seed, r.backward);
      if (r.backward && in.d_o.numel() == 0) in.d_o = random_inputs(shape, dtype, a.seed, true).d_o;
    }
    const ExecOptions opt{r.backward, r.warmup, r.repeats};
    HostOutputs res;
    DistCounters fwd_counters, bwd_counters;
    if (distributed) {
      DistributedOutputs dres = execute_distributed(mpi, *be, spec, dist, in, opt);
      res = std::move(dres.out);
      fwd_counters = dres.forward_total;
      bwd_counters = dres.backward_total;
    } else {
      res = execute(*be, *variant, in, opt);
    }
    if (mpi.rank() != 0) return kExitOk;

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
      j["ranks"] = mpi.world();
      if (distributed) {
        j["dist"] = dist_mode_name(dist.mode);
        j["sharding"] = sharding_name(dist.sharding);
        auto counters = [](const DistCounters& c) {
          return nlohmann::json{{"steps", c.steps}, {"hops", c.hops},
                                {"blocks_computed", c.blocks_computed},
                                {"bytes_sent", c.bytes_sent}, {"bytes_received", c.bytes_received}};
        };
        j["forward"]["counters"] = counters(fwd_counters);
        if (r.backward) j["backward"]["counters"] = counters(bwd_counters);
      }
      j["peak_bytes"] = res.peak_bytes;
      j["files"] = written;
      std::cout << j.dump(2) << "\n";
      return kExitOk;
    }
    std::cout << std::setprecision(4);
    std::cout << "longattn run: " << variant->name() << " (" << describe_spec(variant->spec())
              << "), " << (spec.causal ? "causal" : "non-causal") << ", " << dtype_name(dtype)
              << ", " << describe_shape(shape) << ", " << be->name() << "\n";
    if (distributed)
      std::cout << "  ranks     " << mpi.world() << ", " << dist_mode_name(dist.mode) << ", "
                << sharding_name(dist.sharding) << " sharding (times: the slowest rank; "
                << "TFLOP/s: all ranks together)\n";
    std::cout << "  density   " << std::fixed << std::setprecision(4) << density
              << " of query-key block pairs computed\n";
    std::cout << std::defaultfloat << std::setprecision(4);
    std::cout << "  forward   " << res.forward_s * 1e3 << " ms  " << fwd_tflops << " TFLOP/s  ("
              << fwd_flop << " FLOP)\n";
    if (r.backward)
      std::cout << "  backward  " << res.backward_s * 1e3 << " ms  " << bwd_tflops
                << " TFLOP/s  (" << bwd_flop << " FLOP)\n";
    auto print_counters = [](const char* what, const DistCounters& c) {
      std::cout << "  comm      " << what << ": " << c.steps << " steps, " << c.hops
                << " K/V hops, " << c.blocks_computed << " blocks computed, "
                << static_cast<double>(c.bytes_sent) / (1 << 20) << " MiB sent (all ranks)\n";
    };
    if (distributed) {
      print_counters("forward", fwd_counters);
      if (r.backward) print_counters("backward", bwd_counters);
    }
    std::cout << "  memory    " << static_cast<double>(res.peak_bytes) / (1 << 20)
              << " MiB peak on the backend" << (distributed ? " of rank 0" : "") << "\n";
    for (const auto& w : written) std::cout << "  wrote     " << w << "\n";
    return kExitOk;
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }
}

}  // namespace longattn::cli
