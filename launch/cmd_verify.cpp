// `longattn verify`: runs variants on fresh random inputs and compares O, LSE and (with the
// backward) dQ, dK, dV against the naive fp64 reference of launch/reference.hpp. --all covers
// every variant, pattern and preset. Under mpirun every case runs distributed over all ranks
// (run_distributed) and the comparisons are spread over the ranks; rank 0 prints one table.
// Tolerance (STYLE.md): max |ours - fp64 ref| <= 2 * max |same-precision naive - fp64 ref|
// + floor * max(1, max |ref|), floor 1e-12 (fp64), 2e-5 (fp32), 1e-6 (fp16/bf16).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "attention/patterns.hpp"
#include "launch/commands.hpp"
#include "launch/execute.hpp"
#include "launch/options.hpp"
#include "launch/reference.hpp"
#include "launch/table.hpp"
#include "runtime/error.hpp"
#include "runtime/sharding.hpp"

namespace longattn::cli {

namespace {

constexpr int64_t kMinDefaultSeqLen = 512;
constexpr int64_t kLargestPresetBlock = 128;  // ultra_sparse: zigzag chunks must hold its blocks
constexpr int kTagMeta = 71, kTagData = 72;

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
  Shape shape;
  bool distributed = false;
  DistConfig dist;
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

// Error of ours against ref, with the tolerance from the same-precision naive error.
Tolerance measure(const Tensor& ours, const Tensor& ref, const Tensor* naive, DType dtype) {
  const ErrorStats e = compare(ours.view(), ref.view());
  const double naive_err = naive ? compare(naive->view(), ref.view()).max_abs : 0.0;
  return {e.max_abs, 2.0 * naive_err + floor_for(dtype) * std::max(1.0, e.max_ref)};
}

// The pair closest to (or furthest past) its tolerance.
Tolerance worst(std::initializer_list<Tolerance> ts) {
  Tolerance w{0.0, 1.0};
  double ratio = -1.0;
  for (const auto& t : ts) {
    const double r = std::isnan(t.err) ? INFINITY : t.tol > 0 ? t.err / t.tol : INFINITY;
    if (r > ratio) {
      ratio = r;
      w = t;
    }
  }
  return w;
}

bool checks_backward(const Case& c, bool backward) {
  // The exact longnet gradient differentiates the pair weights; the reference detaches them.
  return backward && !(c.spec.variant == "dilated" && c.spec.dilated.mode == DilatedMode::LongNet &&
                       c.spec.dilated.exact_longnet_grad);
}

std::string dist_label(const Case& c) {
  if (!c.distributed) return "-";
  if (c.dist.mode == DistMode::DataParallel || c.dist.mode == DistMode::Dilated)
    return dist_mode_name(c.dist.mode);
  return std::string(dist_mode_name(c.dist.mode)) + "/" + sharding_name(c.dist.sharding);
}

nlohmann::json row_header(const Case& c, int ranks) {
  nlohmann::json row;
  row["index"] = c.index;
  row["case"] = c.label;
  row["dist"] = dist_label(c);
  row["causal"] = c.spec.causal;
  row["dtype"] = dtype_name(c.dtype);
  row["ranks"] = ranks;
  row["B"] = c.shape.B;
  row["N"] = c.shape.N;
  return row;
}

// "[verify] 12/76 cases" on rank 0's terminal (not into logs and pipes).
void progress(const ProcessGroup& g, size_t done, size_t total) {
  if (g.rank() != 0 || !isatty(STDERR_FILENO)) return;
  std::cerr << "\r[verify] " << done << "/" << total << " cases" << (done == total ? "\n" : "")
            << std::flush;
}

// Compares outputs of case c (computed on inputs `in`) with the reference; fills row.
void compare_case(const Case& c, const HostInputs& in, const HostOutputs& res, bool bwd,
                  int threads, nlohmann::json& row) {
  auto variant = make_attention(c.spec);  // the single-process spec (presets resolved)
  const AttentionSpec& spec = variant->spec();
  const Shape& shape = c.shape;
  row["density"] = variant->density(shape);
  const Tensor q = in.q.to(DType::F64), k = in.k.to(DType::F64), v = in.v.to(DType::F64);
  const RefProblem problem = reference_problem(spec, shape, in.q.view(), in.k.view());
  const RefForward ref =
      reference_forward(problem, q.view(), k.view(), v.view(), spec.scale, DType::F64, threads);
  const bool low = c.dtype != DType::F64;
  RefForward naive;
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
    const RefGrads g = reference_backward(problem, ref, q.view(), k.view(), v.view(), d_o.view(),
                                          spec.scale, DType::F64, threads);
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
}

void record_failure(nlohmann::json& row, const std::exception& e) {
  row["status"] = dynamic_cast<const InvalidArgument*>(&e) ? "invalid" : "error";
  row["message"] = e.what();
}

// One case in this process with the single-process variant.
nlohmann::json run_single(const Case& c, uint64_t seed, bool backward, Backend& be, int threads) {
  nlohmann::json row = row_header(c, 1);
  try {
    auto variant = make_attention(c.spec);
    variant->validate(c.shape);
    const bool bwd = checks_backward(c, backward);
    const HostInputs in = random_inputs(c.shape, c.dtype, seed, bwd);
    const HostOutputs res = execute(be, *variant, in, ExecOptions{bwd, 0, 1});
    row["forward_ms"] = res.forward_s * 1e3;
    if (bwd) row["backward_ms"] = res.backward_s * 1e3;
    compare_case(c, in, res, bwd, threads, row);
  } catch (const std::exception& e) {
    record_failure(row, e);
  }
  return row;
}

// Host transfers of a finished distributed case from rank 0 to the rank that checks it.
void send_tensor(const ProcessGroup& g, const Tensor& t, int dest) {
  g.send(t.data(), t.bytes(), dest, kTagData);
}
Tensor recv_tensor(const ProcessGroup& g, DType dt, const Shape& s, int64_t D) {
  Tensor t(dt, s.B, s.N, s.H, D);
  g.recv(t.data(), t.bytes(), 0, kTagData);
  return t;
}
void send_text(const ProcessGroup& g, const std::string& text, int dest) {
  const int64_t n = static_cast<int64_t>(text.size());
  g.send(&n, sizeof(n), dest, kTagMeta);
  g.send(text.data(), text.size(), dest, kTagMeta);
}
std::string recv_text(const ProcessGroup& g) {
  int64_t n = 0;
  g.recv(&n, sizeof(n), 0, kTagMeta);
  std::string s(static_cast<size_t>(n), '\0');
  g.recv(s.data(), s.size(), 0, kTagMeta);
  return s;
}

// Every case over all ranks. Cases run in rounds of P: each case of a round runs distributed
// (collective), rank 0 hands its gathered outputs to the case's checking rank, and then the P
// ranks compare their cases with the reference in parallel. Returns this rank's rows.
std::vector<nlohmann::json> run_distributed_cases(const std::vector<Case>& cases,
                                                  const ProcessGroup& g, uint64_t seed,
                                                  bool backward, Backend& be, int threads) {
  std::vector<nlohmann::json> mine;
  const int P = g.world();
  for (size_t start = 0; start < cases.size(); start += static_cast<size_t>(P)) {
    struct Pending {
      const Case* c = nullptr;
      nlohmann::json row;
      HostOutputs res;
      bool compare = false, bwd = false;
    };
    std::optional<Pending> pending;
    const size_t end = std::min(cases.size(), start + static_cast<size_t>(P));
    for (size_t i = start; i < end; ++i) {
      const Case& c = cases[i];
      const int owner = static_cast<int>(i - start);
      const bool bwd = checks_backward(c, backward);
      nlohmann::json row = row_header(c, P);
      HostOutputs res;
      bool ran = false;
      try {
        validate_distributed(c.spec, c.dist, P, &c.shape);
        const HostInputs in = g.rank() == 0 ? random_inputs(c.shape, c.dtype, seed, bwd) : HostInputs{};
        DistributedOutputs d = execute_distributed(g, be, c.spec, c.dist, in, ExecOptions{bwd, 0, 1});
        res = std::move(d.out);
        const DistCounters& f = d.forward_total;
        const DistCounters& b = d.backward_total;
        row["forward_ms"] = res.forward_s * 1e3;
        if (bwd) row["backward_ms"] = res.backward_s * 1e3;
        row["steps"] = f.steps;
        row["hops"] = f.hops + b.hops;
        row["blocks"] = f.blocks_computed + b.blocks_computed;
        row["mib_sent"] = static_cast<double>(f.bytes_sent + b.bytes_sent) / (1 << 20);
        ran = true;
      } catch (const CommError&) {
        throw;  // a peer is gone or silent: main() stops every rank
      } catch (const std::exception& e) {
        record_failure(row, e);
      }
      // Every rank took the same branch (validation is rank-symmetric; run_distributed fails
      // on every rank or raises CommError), so the hand-over below is matched on both sides.
      if (ran && owner != 0) {
        if (g.rank() == 0) {
          send_text(g, row.dump(), owner);
          send_tensor(g, res.o, owner);
          send_tensor(g, res.lse, owner);
          if (bwd) {
            send_tensor(g, res.dq, owner);
            send_tensor(g, res.dk, owner);
            send_tensor(g, res.dv, owner);
          }
        } else if (g.rank() == owner) {
          row = nlohmann::json::parse(recv_text(g));
          const Shape& s = c.shape;
          res.o = recv_tensor(g, c.dtype, s, s.D);
          res.lse = recv_tensor(g, lse_dtype(c.dtype), s, 1);
          if (bwd) {
            res.dq = recv_tensor(g, c.dtype, s, s.D);
            res.dk = recv_tensor(g, c.dtype, s, s.D);
            res.dv = recv_tensor(g, c.dtype, s, s.D);
          }
        }
      }
      if (g.rank() == owner) pending = Pending{&c, std::move(row), std::move(res), ran, bwd};
    }
    progress(g, end, cases.size());
    if (!pending) continue;
    if (pending->compare) {
      try {
        const HostInputs in = random_inputs(pending->c->shape, pending->c->dtype, seed, pending->bwd);
        compare_case(*pending->c, in, pending->res, pending->bwd, threads, pending->row);
      } catch (const std::exception& e) {
        record_failure(pending->row, e);
      }
    }
    mine.push_back(std::move(pending->row));
  }
  return mine;
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

std::vector<Case> build_cases(const VerifyArgs& v, const AttentionArgs& a, const DistArgs& d,
                              const po::variables_map& vm, const std::vector<DType>& dtypes,
                              bool distributed, int world) {
  const AttentionSpec base = make_spec(a, vm);
  const Shape shape = make_shape(a);
  std::vector<bool> causal = {base.causal};
  const bool causal_given = vm.count("causal") && !vm["causal"].defaulted();
  if (v.all && !causal_given) causal = {false, true};

  struct Entry {
    std::string label;
    AttentionSpec spec;
    std::vector<DistConfig> dist;  // per causal value: {non-causal, causal}; empty: single
  };
  std::vector<Entry> entries;
  const int64_t split_rows = row_count(d.split_rows, "--split-rows");
  auto seq = [&](DistMode m, Sharding nc, Sharding c) {
    std::vector<DistConfig> out{DistConfig{m, nc}, DistConfig{m, c}};
    for (DistConfig& x : out) x.split_rows = split_rows;
    return out;
  };
  if (!v.all) {
    std::string label = base.variant;
    if (base.variant == "dilated") label += std::string(" ") + mode_name(base.dilated.mode);
    if (base.variant == "block_sparse")
      label += a.preset.empty() ? "/" + base.sparse.pattern : ":" + a.preset;
    Entry e{label, base, {}};
    if (distributed) {
      const DistConfig cfg = make_dist_config(d, base);
      e.dist = {cfg, cfg};
    }
    entries.push_back(e);
  } else {
    AttentionSpec s = base;
    s.variant = "dense";
    if (distributed) {
      entries.push_back({"dense", s, seq(DistMode::Ring, Sharding::Contiguous, Sharding::Contiguous)});
      entries.push_back({"dense", s, seq(DistMode::Ring, Sharding::Zigzag, Sharding::Zigzag)});
      entries.push_back({"dense", s, seq(DistMode::DataParallel, Sharding::Contiguous, Sharding::Contiguous)});
    } else {
      entries.push_back({"dense", s, {}});
    }
    for (DilatedMode m : {DilatedMode::Groups, DilatedMode::LongNet}) {
      s = base;
      s.variant = "dilated";
      s.dilated.mode = m;
      entries.push_back({std::string("dilated ") + mode_name(m), s,
                         distributed ? seq(DistMode::Dilated, Sharding::Contiguous, Sharding::Contiguous)
                                     : std::vector<DistConfig>{}});
    }
    // Block-sparse rings: zigzag where it matters (causal), contiguous otherwise.
    const auto bs_dist = distributed ? seq(DistMode::BlockSparseRing, Sharding::Contiguous, Sharding::Zigzag)
                                     : std::vector<DistConfig>{};
    for (const auto& pattern : sparse_pattern_names()) {
      s = base;
      s.variant = "block_sparse";
      s.sparse = SparseConfig{};
      s.sparse.pattern = pattern;
      s.sparse.block_size = base.sparse.block_size;
      s.sparse.seed = a.seed;
      entries.push_back({"block_sparse/" + pattern, s, bs_dist});
    }
    for (const auto& preset : sparse_preset_names()) {
      s = base;
      s.variant = "block_sparse:" + preset;
      entries.push_back({"block_sparse:" + preset, s, bs_dist});
    }
  }
  std::vector<Case> cases;
  for (DType dt : dtypes)
    for (const auto& e : entries)
      for (bool c : causal) {
        Case k;
        k.index = static_cast<int>(cases.size());
        k.label = e.label;
        k.spec = e.spec;
        k.spec.causal = c;
        k.dtype = dt;
        k.shape = shape;
        if (!e.dist.empty()) {
          k.distributed = true;
          k.dist = e.dist[c ? 1 : 0];
          // Data-parallel splits the batch: give every rank at least one sequence.
          if (k.dist.mode == DistMode::DataParallel && v.all)
            k.shape.B = (shape.B + world - 1) / world * world;
        }
        cases.push_back(k);
      }
  return cases;
}

std::string num_or_dash(const nlohmann::json& row, const char* key, int digits = 2) {
  return row.contains(key) && row[key].is_number() ? sci(row[key].get<double>(), digits) : "-";
}
std::string fixed_or_dash(const nlohmann::json& row, const char* key, int decimals) {
  return row.contains(key) && row[key].is_number() ? fixed(row[key].get<double>(), decimals) : "-";
}

void print_table(const std::vector<nlohmann::json>& rows, int world, bool distributed,
                 const Shape& shape, const std::string& device, uint64_t seed) {
  const Table t({{"case", "", 34, true},
                 {"dist", "", 28, true},
                 {"causal", "", 6, true},
                 {"dtype", "", 5, true},
                 {"ranks", "", 5},
                 {"N", "tokens", 6},
                 {"density", "", 7},
                 {"o_err", "max|d|", 8},
                 {"o_tol", "", 8},
                 {"lse_err", "max|d|", 8},
                 {"grad_err", "max|d|", 8},
                 {"grad_tol", "", 8},
                 {"fwd", "ms", 8},
                 {"bwd", "ms", 8},
                 {"hops", "K/V", 5},
                 {"sent", "MiB", 7},
                 {"status", "", 7, true}});
  std::cout << "# longattn verify: variants against the naive fp64 reference on random inputs\n"
            << "# B " << shape.B << "  N " << shape.N << "  H " << shape.H << "  D " << shape.D
            << "  seed " << seed << "  device " << device << "  ranks " << world << "\n"
            << (distributed
                    ? "# each case ran distributed over all ranks (dist: mode/sharding); "
                      "times: slowest rank; hops, sent: all ranks, forward + backward\n"
                    : "# each case ran in this single process (start with mpirun for the "
                      "distributed variants)\n")
            << "# tolerance: 2 x same-precision naive error + floor (fp64 1e-12, fp32 2e-5, "
               "half 1e-6) x max(1, max|ref|)\n#\n";
  std::cout << t.header();
  for (const auto& r : rows) {
    std::cout << t.row({r["case"].get<std::string>(), r["dist"].get<std::string>(),
                        r["causal"].get<bool>() ? "yes" : "no", r["dtype"].get<std::string>(),
                        std::to_string(r["ranks"].get<int>()),
                        std::to_string(r["N"].get<int64_t>()), fixed_or_dash(r, "density", 3),
                        num_or_dash(r, "o_err"), num_or_dash(r, "o_tol"),
                        num_or_dash(r, "lse_err"), num_or_dash(r, "grad_err"),
                        num_or_dash(r, "grad_tol"), fixed_or_dash(r, "forward_ms", 2),
                        fixed_or_dash(r, "backward_ms", 2),
                        r.contains("hops") ? std::to_string(r["hops"].get<int64_t>()) : "-",
                        fixed_or_dash(r, "mib_sent", 2), r["status"].get<std::string>()});
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
      std::cout << "# " << r["case"].get<std::string>() << " (" << r["dist"].get<std::string>()
                << ", " << r["dtype"].get<std::string>()
                << (r["causal"].get<bool>() ? ", causal" : "") << "): "
                << r["message"].get<std::string>() << "\n";
}

}  // namespace

int cmd_verify(const Args& args, const ProcessGroup& mpi) {
  AttentionArgs a;
  VerifyArgs v;
  DeviceArgs dev;
  DistArgs d;
  po::options_description desc(kHelpWidth);
  po::options_description own("Verify", kHelpWidth);
  own.add_options()
      ("all", po::bool_switch(&v.all),
       "every variant (dense, dilated groups and longnet), every block-sparse pattern and "
       "preset, causal and not (unless --causal); under mpirun every distributed mode "
       "(--dist and --sharding are then chosen per case)")
      ("forward-only", po::bool_switch(&v.forward_only), "skip the backward check")
      ("json", po::value<std::string>(&v.json_path), "also write the rows to this JSON file");
  ArgDefaults defaults;
  defaults.batch = 1;
  defaults.heads = 4;
  defaults.head_dim = 32;
  defaults.dtype = "fp64";
  // Under mpirun: zigzag cuts N into 2P chunks, each a whole number of the largest preset block.
  const int64_t chunk = 2 * static_cast<int64_t>(mpi.world()) * kLargestPresetBlock;
  defaults.seq_len = mpi.active() ? (kMinDefaultSeqLen + chunk - 1) / chunk * chunk : kMinDefaultSeqLen;
  desc.add(own)
      .add(shape_options(a, defaults))
      .add(variant_options(a))
      .add(device_options(dev))
      .add(dist_options(d));
  po::variables_map vm;
  if (!parse_command("verify",
                     "Runs variants on fresh random inputs and compares O, LSE, dQ, dK, dV with a "
                     "naive fp64\nreference (explicit softmax over each variant's token mask). "
                     "--dtype takes a comma list\n(e.g. fp64,bf16). Exit code 3 when an error is "
                     "above its tolerance. Under mpirun each case\nruns distributed over all "
                     "ranks and rank 0 prints the table with the communication counters.",
                     args, desc, vm, mpi.rank() == 0))
    return kExitOk;

  std::vector<Case> cases;
  Shape shape;
  std::unique_ptr<Backend> be;
  int threads = 1;
  const bool distributed = mpi.active();
  try {
    const std::vector<DType> dtypes = parse_dtypes(a.dtype);
    shape = make_shape(a);
    validate_shape(shape);
    check_dist_args(d, distributed);
    cases = build_cases(v, a, d, vm, dtypes, distributed, mpi.world());
    if (!v.all) {
      // A single case: a bad configuration is the user's argument, reported as such.
      const Case& c = cases.front();
      make_attention(c.spec)->validate(c.shape);
      if (c.distributed) validate_distributed(c.spec, c.dist, mpi.world(), &c.shape);
    }
    if (distributed && d.timeout_s > 0) mpi.comm().set_timeout_seconds(d.timeout_s);
    be = make_backend(dev, mpi);
    threads = cpu_threads(dev, mpi);
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }

  const bool backward = !v.forward_only;
  std::vector<nlohmann::json> mine;
  if (distributed) {
    mine = run_distributed_cases(cases, mpi, a.seed, backward, *be, threads);
  } else {
    for (const Case& c : cases) {
      mine.push_back(run_single(c, a.seed, backward, *be, threads));
      progress(mpi, mine.size(), cases.size());
    }
  }

  const std::vector<std::string> gathered = mpi.gather(nlohmann::json(mine).dump());
  int code = kExitOk;
  if (mpi.rank() == 0) {
    std::vector<nlohmann::json> rows;
    for (const auto& text : gathered)
      for (auto& r : nlohmann::json::parse(text)) rows.push_back(r);
    std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) {
      return x["index"].template get<int>() < y["index"].template get<int>();
    });
    print_table(rows, mpi.world(), distributed, shape, be->name(), a.seed);
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
      j["distributed"] = distributed;
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
