// `longattn verify`: runs variants on fresh random inputs and compares O, LSE and (with the
// backward) dQ, dK, dV against the naive fp64 reference of launch/reference.hpp. --all covers
// every variant, pattern and preset; under mpirun the cases are spread over the ranks and rank 0
// prints one table. Tolerance (STYLE.md): max |ours - fp64 ref| <= 2 * max |same-precision
// naive - fp64 ref| + floor * max(1, max |ref|), floor 1e-12 (fp64), 2e-5 (fp32), 1e-6 (fp16/bf16).
#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "attention/patterns.hpp"
#include "launch/commands.hpp"
#include "launch/execute.hpp"
#include "launch/options.hpp"
#include "launch/reference.hpp"
#include "launch/table.hpp"
#include "runtime/error.hpp"

namespace longattn::cli {

namespace {

struct VerifyArgs {
  bool all = false;
  bool forward_only = false;
  std::string json_path;
};

struct Case {
  int index = 0;
  std::string label;
  AttentionSpec spec;
  DType dtype = DType::F64;
};

struct Tolerance {
  double err = 0.0, tol = 0.0;
  bool ok() const { return err <= tol; }
};

double floor_for(DType t) {
  switch (t) {
    case DType::F64: return 1e-12;
    case DType::F32: return 2e-5;
    default: return 1e-6;
  }
}

// err of ours against ref, with the tolerance from the same-precision naive error.
Tolerance measure(const Tensor& ours, const Tensor& ref, const Tensor* naive, DType dtype) {
  const ErrorStats e = compare(ours.view(), ref.view());
  const double naive_err = naive ? compare(naive->view(), ref.view()).max_abs : 0.0;
  return {e.max_abs, 2.0 * naive_err + floor_for(dtype) * std::max(1.0, e.max_ref)};
}

Tolerance worst(std::initializer_list<Tolerance> ts) {
  // The reported pair is the one closest to (or furthest past) its tolerance.
  Tolerance w{0.0, 1.0};
  double ratio = -1.0;
  for (const auto& t : ts) {
    const double r = t.tol > 0 ? t.err / t.tol : INFINITY;
    if (r > ratio || std::isnan(t.err)) {
      ratio = std::isnan(t.err) ? INFINITY : r;
      w = t;
    }
  }
  return w;
}

nlohmann::json run_case(const Case& c, const Shape& shape, uint64_t seed, bool backward,
                        Backend& be, int threads, int rank) {
  nlohmann::json row;
  row["index"] = c.index;
  row["case"] = c.label;
  row["causal"] = c.spec.causal;
  row["dtype"] = dtype_name(c.dtype);
  row["rank"] = rank;
  row["ranks"] = 1;
  row["N"] = shape.N;
  try {
    auto variant = make_attention(c.spec);
    variant->validate(shape);
    const HostInputs in = random_inputs(shape, c.dtype, seed, backward);
    const bool bwd = backward && !(c.spec.variant == "dilated" &&
                                   c.spec.dilated.mode == DilatedMode::LongNet &&
                                   c.spec.dilated.exact_longnet_grad);
    const HostOutputs res = execute(be, *variant, in, ExecOptions{bwd, 0, 1});
    row["density"] = variant->density(shape);
    row["forward_ms"] = res.forward_s * 1e3;
    row["backward_ms"] = bwd ? res.backward_s * 1e3 : -1.0;

    const AttentionSpec& spec = variant->spec();
    const Tensor q = in.q.to(DType::F64), k = in.k.to(DType::F64), v = in.v.to(DType::F64);
    const RefProblem problem = reference_problem(spec, shape, in.q.view(), in.k.view());
    const RefForward ref = reference_forward(problem, q.view(), k.view(), v.view(), spec.scale,
                                             DType::F64, threads);
    RefForward naive;
    const bool low = c.dtype != DType::F64;
    if (low)
      naive = reference_forward(problem, q.view(), k.view(), v.view(), spec.scale, c.dtype, threads);
    const Tolerance o = measure(res.o, ref.o, low ? &naive.o : nullptr, c.dtype);
    const Tolerance l = measure(res.lse, ref.lse, low ? &naive.lse : nullptr, c.dtype);
    row["o_err"] = o.err;
    row["o_tol"] = o.tol;
    row["lse_err"] = l.err;
    row["lse_tol"] = l.tol;
    bool ok = o.ok() && l.ok();
    if (bwd) {
      const Tensor d_o = in.d_o.to(DType::F64);
      const RefGrads g = reference_backward(problem, ref, q.view(), k.view(), v.view(),
                                            d_o.view(), spec.scale, DType::F64, threads);
      RefGrads gn;
      if (low)
        gn = reference_backward(problem, naive, q.view(), k.view(), v.view(), d_o.view(),
                                spec.scale, c.dtype, threads);
      const Tolerance w = worst({measure(res.dq, g.dq, low ? &gn.dq : nullptr, c.dtype),
                                 measure(res.dk, g.dk, low ? &gn.dk : nullptr, c.dtype),
                                 measure(res.dv, g.dv, low ? &gn.dv : nullptr, c.dtype)});
      row["grad_err"] = w.err;
      row["grad_tol"] = w.tol;
      ok = ok && w.ok();
    }
    row["status"] = ok ? "ok" : "FAIL";
  } catch (const InvalidArgument& e) {
    row["status"] = "invalid";
    row["message"] = e.what();
  } catch (const std::exception& e) {
    row["status"] = "error";
    row["message"] = e.what();
  }
  return row;
}

std::vector<Case> build_cases(const VerifyArgs& v, const AttentionArgs& a,
                              const po::variables_map& vm, const std::vector<DType>& dtypes) {
  std::vector<Case> cases;
  const AttentionSpec base = make_spec(a, vm);
  std::vector<bool> causal = {base.causal};
  const bool causal_given = vm.count("causal") && !vm["causal"].defaulted();
  if (v.all && !causal_given) causal = {false, true};

  std::vector<std::pair<std::string, AttentionSpec>> specs;
  if (!v.all) {
    std::string label = base.variant;
    if (base.variant == "dilated") label += std::string(" ") + mode_name(base.dilated.mode);
    if (base.variant == "block_sparse")
      label += a.preset.empty() ? "/" + base.sparse.pattern : ":" + a.preset;
    specs.emplace_back(label, base);
  } else {
    AttentionSpec s = base;
    s.variant = "dense";
    specs.emplace_back("dense", s);
    for (DilatedMode m : {DilatedMode::Groups, DilatedMode::LongNet}) {
      s = base;
      s.variant = "dilated";
      s.dilated.mode = m;
      specs.emplace_back(std::string("dilated ") + mode_name(m), s);
    }
    for (const auto& pattern : sparse_pattern_names()) {
      s = base;
      s.variant = "block_sparse";
      s.sparse = SparseConfig{};
      s.sparse.pattern = pattern;
      s.sparse.block_size = base.sparse.block_size;
      s.sparse.seed = a.seed;
      specs.emplace_back("block_sparse/" + pattern, s);
    }
    for (const auto& preset : sparse_preset_names()) {
      s = base;
      s.variant = "block_sparse:" + preset;
      specs.emplace_back("block_sparse:" + preset, s);
    }
  }
  for (DType dt : dtypes)
    for (const auto& [label, spec] : specs)
      for (bool c : causal) {
        Case k;
        k.index = static_cast<int>(cases.size());
        k.label = label;
        k.spec = spec;
        k.spec.causal = c;
        k.dtype = dt;
        cases.push_back(k);
      }
  return cases;
}

std::vector<DType> parse_dtypes(const std::string& text) {
  std::vector<DType> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(parse_dtype(item, "--dtype"));
  if (out.empty()) throw InvalidArgument("--dtype", text, "must name at least one dtype");
  return out;
}

std::string num_or_dash(const nlohmann::json& row, const char* key, int digits = 2) {
  return row.contains(key) && row[key].is_number() ? sci(row[key].get<double>(), digits) : "-";
}

void print_table(const std::vector<nlohmann::json>& rows, int world, const Shape& shape,
                 const std::string& device, uint64_t seed) {
  const Table t({{"case", "", 34, true},
                 {"causal", "", 6, true},
                 {"dtype", "", 5, true},
                 {"rank", "", 4},
                 {"N", "tokens", 6},
                 {"density", "", 7},
                 {"o_err", "max|d|", 8},
                 {"o_tol", "", 8},
                 {"lse_err", "max|d|", 8},
                 {"grad_err", "max|d|", 8},
                 {"grad_tol", "", 8},
                 {"fwd", "ms", 8},
                 {"bwd", "ms", 8},
                 {"status", "", 7, true}});
  std::cout << "# longattn verify: variants against the naive fp64 reference on random inputs\n"
            << "# B " << shape.B << "  N " << shape.N << "  H " << shape.H << "  D " << shape.D
            << "  seed " << seed << "  device " << device << "  ranks " << world << "\n"
            << "# each case ran single-process on the rank shown"
            << (world > 1 ? " (cases spread over the ranks)" : "") << "\n"
            << "# tolerance: 2 x same-precision naive error + floor (fp64 1e-12, fp32 2e-5, "
               "half 1e-6) x max(1, max|ref|)\n#\n";
  std::cout << t.header();
  for (const auto& r : rows) {
    const std::string causal = r["causal"].get<bool>() ? "yes" : "no";
    std::cout << t.row({r["case"].get<std::string>(), causal, r["dtype"].get<std::string>(),
                        std::to_string(r["rank"].get<int>()), std::to_string(r["N"].get<int64_t>()),
                        r.contains("density") ? fixed(r["density"].get<double>(), 3) : "-",
                        num_or_dash(r, "o_err"), num_or_dash(r, "o_tol"),
                        num_or_dash(r, "lse_err"), num_or_dash(r, "grad_err"),
                        num_or_dash(r, "grad_tol"),
                        r.contains("forward_ms") ? fixed(r["forward_ms"].get<double>(), 2) : "-",
                        r.contains("backward_ms") ? fixed(r["backward_ms"].get<double>(), 2) : "-",
                        r["status"].get<std::string>()});
  }
  int ok = 0, fail = 0, other = 0;
  for (const auto& r : rows) {
    const auto s = r["status"].get<std::string>();
    (s == "ok" ? ok : s == "FAIL" ? fail : other)++;
  }
  std::cout << "# " << rows.size() << " cases: " << ok << " passed, " << fail
            << " above tolerance, " << other << " not run\n";
  for (const auto& r : rows)
    if (r.contains("message"))
      std::cout << "# " << r["case"].get<std::string>() << " (" << r["dtype"].get<std::string>()
                << (r["causal"].get<bool>() ? ", causal" : "") << "): " << r["message"].get<std::string>()
                << "\n";
}

}  // namespace

int cmd_verify(const Args& args, const ProcessGroup& mpi) {
  AttentionArgs a;
  VerifyArgs v;
  DeviceArgs dev;
  po::options_description desc;
  po::options_description own("Verify");
  own.add_options()
      ("all", po::bool_switch(&v.all),
       "every variant (dense, dilated groups and longnet), every block-sparse pattern and "
       "preset, causal and not (unless --causal)")
      ("forward-only", po::bool_switch(&v.forward_only), "skip the backward check")
      ("json", po::value<std::string>(&v.json_path), "also write the rows to this JSON file");
  ArgDefaults d;
  d.batch = 1;
  d.seq_len = 512;
  d.heads = 4;
  d.head_dim = 32;
  d.dtype = "fp64";
  desc.add(own).add(shape_options(a, d)).add(variant_options(a)).add(device_options(dev));
  po::variables_map vm;
  if (!parse_command("verify",
                     "Runs variants on fresh random inputs and compares O, LSE, dQ, dK, dV with a "
                     "naive fp64\nreference (explicit softmax over each variant's token mask). "
                     "--dtype takes a comma list\n(e.g. fp64,bf16). Exit code 3 when an error is "
                     "above its tolerance. Under mpirun the\ncases are spread over the ranks and "
                     "rank 0 prints the table.",
                     args, desc, vm))
    return kExitOk;

  std::vector<Case> cases;
  Shape shape;
  std::unique_ptr<Backend> be;
  int threads = 1;
  try {
    const std::vector<DType> dtypes = parse_dtypes(a.dtype);
    shape = make_shape(a);
    validate_shape(shape);
    cases = build_cases(v, a, vm, dtypes);
    if (!v.all) {
      // A single case: a bad configuration is the user's argument, reported as such.
      auto variant = make_attention(cases.front().spec);
      variant->validate(shape);
    }
    be = make_backend(dev, mpi);
    threads = cpu_threads(dev, mpi);
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }

  std::vector<nlohmann::json> mine;
  for (const Case& c : cases)
    if (c.index % mpi.world() == mpi.rank())
      mine.push_back(run_case(c, shape, a.seed, !v.forward_only, *be, threads, mpi.rank()));

  const std::vector<std::string> gathered = mpi.gather(nlohmann::json(mine).dump());
  int code = kExitOk;
  if (mpi.rank() == 0) {
    std::vector<nlohmann::json> rows;
    for (const auto& text : gathered)
      for (auto& r : nlohmann::json::parse(text)) rows.push_back(r);
    std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) {
      return x["index"].template get<int>() < y["index"].template get<int>();
    });
    print_table(rows, mpi.world(), shape, be->name(), a.seed);
    bool fail = false, invalid = false, error = false;
    for (const auto& r : rows) {
      const auto s = r["status"].get<std::string>();
      fail |= s == "FAIL";
      invalid |= s == "invalid";
      error |= s == "error";
    }
    code = error ? kExitError : invalid ? kExitInvalidArgument : fail ? kExitVerifyFailed : kExitOk;
    if (!v.json_path.empty()) {
      nlohmann::json j;
      j["command"] = "verify";
      j["args"] = args;
      j["ranks"] = mpi.world();
      j["shape"] = {{"B", shape.B}, {"N", shape.N}, {"H", shape.H}, {"D", shape.D}};
      j["device"] = be->name();
      j["rows"] = rows;
      std::ofstream out(v.json_path);
      out << j.dump(2) << "\n";
      if (!out) throw Error(v.json_path + ": cannot write the JSON results");
    }
  }
  // Every rank exits with rank 0's verdict, so mpirun reports it.
  return mpi.max_all(code);
}

}  // namespace longattn::cli
