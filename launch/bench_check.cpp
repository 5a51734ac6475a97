// The #wrong column of `longattn bench`: a few query rows of every benchmarked output recomputed
// naively in fp64 on the host (see bench.hpp). Each rank reduces its own K/V rows to partial
// softmax sums (max, sum of exponentials, weighted V), the ranks combine them by log-sum-exp,
// so no rank ever needs the full K/V: the check works at any sequence length.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <unordered_map>

#include "attention/patterns.hpp"
#include "launch/bench.hpp"
#include "launch/reference.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel.hpp"

namespace longattn::cli {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// (batch, head) pairs whose K/V rows are fetched (the check's main cost at long lengths); the
// sampled rows are spread over them, at least two rows per pair.
constexpr int64_t kCheckedPairs = 2;
// Tolerance factors (bench.hpp): random-walk accumulation and the final rounding of O.
constexpr double kWalkFactor = 8.0, kOutputFactor = 2.0;

struct Term {
  std::function<bool(int64_t h, int64_t i, int64_t j)> allowed;
  double coeff = 1.0;
};

struct Problem {
  std::vector<Term> terms;
  bool lse_weighted = false;
  std::string unsupported;  // non-empty: no host reference for this spec
};

// The variant's token-level semantics. Dense and dilated come from launch/reference.hpp (the
// verify reference); block-sparse reads the CSR mask directly, which stays small at any length
// where reference.cpp's block bitmap (nb^2 bytes) would not.
Problem make_problem(const AttentionSpec& spec, const Shape& g) {
  Problem p;
  if (spec.variant == "block_sparse") {
    if (spec.sparse.pattern == "content_adaptive") {
      p.unsupported = "content_adaptive masks depend on all of Q and K";
      return p;
    }
    auto m = std::make_shared<BlockMask>(sparse_block_mask(spec.sparse, g.N, spec.causal));
    const bool causal = spec.causal;
    p.terms.push_back({[m, causal](int64_t, int64_t i, int64_t j) {
                         if (causal && j > i) return false;
                         const int64_t r = i / m->block_q;
                         const auto first = m->col_idx.begin() + m->row_ptr[r];
                         const auto last = m->col_idx.begin() + m->row_ptr[r + 1];
                         return std::binary_search(first, last,
                                                   static_cast<int32_t>(j / m->block_k));
                       },
                       1.0});
    return p;
  }
  const RefProblem r = reference_problem(spec, g, TensorView{}, TensorView{});
  for (const auto& t : r.terms) p.terms.push_back({t.allowed, t.coeff});
  p.lse_weighted = r.combine == Combine::LseWeighted;
  return p;
}

double unit_roundoff(DType t) {
  switch (t) {
    case DType::F64:
      return std::ldexp(1.0, -50);
    case DType::F32:
      return std::ldexp(1.0, -20);
    case DType::F16:
      return std::ldexp(1.0, -10);
    default:
      return std::ldexp(1.0, -7);
  }
}

struct Sample {
  int64_t b = 0, i = 0, h = 0;
};

std::vector<Sample> draw_samples(const Shape& g, int samples, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ULL + 0x5bd1e995ULL);
  const int64_t pairs =
      std::min<int64_t>({kCheckedPairs, g.B * g.H, std::max<int64_t>(1, samples / 2)});
  std::vector<std::pair<int64_t, int64_t>> bh;
  while (static_cast<int64_t>(bh.size()) < pairs) {
    const std::pair<int64_t, int64_t> c{static_cast<int64_t>(rng() % g.B),
                                        static_cast<int64_t>(rng() % g.H)};
    if (std::find(bh.begin(), bh.end(), c) == bh.end()) bh.push_back(c);
  }
  std::vector<Sample> out;
  for (int s = 0; s < samples; ++s) {
    const auto& [b, h] = bh[static_cast<size_t>(s) % bh.size()];
    int64_t i = static_cast<int64_t>(rng() % g.N);
    if (s == 0) i = 0;  // the first and last rows: causal and window edges
    if (s == 1) i = g.N - 1;
    out.push_back({b, i, h});
  }
  return out;
}

// A host copy of a device view (fp64 inputs stay fp64; others widen to fp32 exactly).
Tensor fetch(Backend& be, const TensorView& v) {
  Tensor t(v.dtype == DType::F64 ? DType::F64 : DType::F32, v.B, v.N, v.H, v.D);
  be.download(t.view(), v);
  return t;
}

}  // namespace

CheckResult check_sampled_rows(const AttentionSpec& spec, const CheckLayout& layout, Backend& be,
                               const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& o, const TensorView& lse, int samples,
                               uint64_t seed, Communicator& host, double perturb) {
  CheckResult res;
  const Problem prob = make_problem(spec, layout.global);
  if (samples <= 0 || !prob.unsupported.empty()) {
    res.note = samples <= 0 ? "check disabled" : prob.unsupported;
    return res;
  }
  const Shape& g = layout.global;
  const Shape& l = layout.local;
  const int64_t D = g.D, N = g.N, T = static_cast<int64_t>(prob.terms.size());
  const double scale = spec.scale > 0 ? spec.scale : 1.0 / std::sqrt(static_cast<double>(D));
  const std::vector<Sample> smp = draw_samples(g, samples, seed);
  const auto S = static_cast<int64_t>(smp.size());
  CommOp op{"bench check", -1};

  // Local batch of each global batch this rank holds (-1: none), and where the sampled rows are.
  std::vector<int64_t> local_batch(static_cast<size_t>(g.B), -1);
  std::unordered_map<int64_t, int64_t> where;
  if (layout.participates) {
    for (const auto& s : smp) where[s.b * N + s.i] = -1;
    for (int64_t lb = 0; lb < l.B; ++lb) {
      const int64_t first = layout.global_row[static_cast<size_t>(lb * l.N)];
      local_batch[static_cast<size_t>(first / N)] = lb;
      for (int64_t ln = 0; ln < l.N; ++ln) {
        const int64_t gr = layout.global_row[static_cast<size_t>(lb * l.N + ln)];
        auto it = where.find(gr);
        if (it != where.end()) it->second = lb * l.N + ln;
      }
    }
  }

  // The owners' q, o and lse of each sampled row, summed into every rank (others add zeros).
  const int64_t stride = 2 * D + 2;
  std::vector<double> obs(static_cast<size_t>(S * stride), 0.0);
  for (int64_t s = 0; s < S; ++s) {
    auto it = where.find(smp[s].b * N + smp[s].i);
    if (it == where.end() || it->second < 0) continue;
    const int64_t lb = it->second / l.N, ln = it->second % l.N, h = smp[s].h;
    const Tensor qr = fetch(be, q.batches(lb, 1).rows(ln, 1).heads(h, 1));
    const Tensor orow = fetch(be, o.batches(lb, 1).rows(ln, 1).heads(h, 1));
    const Tensor lr = fetch(be, lse.batches(lb, 1).rows(ln, 1).heads(h, 1));
    double* dst = &obs[static_cast<size_t>(s * stride)];
    for (int64_t d = 0; d < D; ++d) {
      dst[d] = qr.at(0, 0, 0, d);
      dst[D + d] = orow.at(0, 0, 0, d);
    }
    dst[D] += perturb;  // first element of the observed output row
    dst[2 * D] = lr.at(0, 0, 0, 0);
    dst[2 * D + 1] = 1.0;
  }
  host.allreduce_host(obs.data(), obs.size(), ReduceOp::Sum, op);

  // Partial sums over this rank's keys: per (sample, term) the max score m, and, relative to
  // it, se = sum exp(s - m), sv_d = sum exp(s - m) v_d, sv2_d = sum exp(2 (s - m)) v_d^2.
  std::vector<double> m(static_cast<size_t>(S * T), kNegInf);
  std::vector<double> sums(static_cast<size_t>(S * T * (1 + 2 * D)), 0.0);
  auto contains = [&](int64_t s, int64_t t) {
    return prob.terms[t].allowed(smp[s].h, smp[s].i, smp[s].i);
  };
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (b, h) in sample order
  for (const auto& s : smp)
    if (std::find(pairs.begin(), pairs.end(), std::make_pair(s.b, s.h)) == pairs.end())
      pairs.emplace_back(s.b, s.h);
  if (layout.participates) {
    for (const auto& [b, h] : pairs) {
      const int64_t lb = local_batch[static_cast<size_t>(b)];
      if (lb < 0) continue;
      const Tensor kh = fetch(be, k.batches(lb, 1).heads(h, 1));
      const Tensor vh = fetch(be, v.batches(lb, 1).heads(h, 1));
      // Contiguous [1, n, 1, D] host copies: element (ln, d) at ln * D + d.
      auto element = [](const Tensor& t) {
        const bool f64 = t.dtype() == DType::F64;
        const void* base = t.data();
        return [f64, base](int64_t idx) {
          return f64 ? static_cast<const double*>(base)[idx]
                     : static_cast<double>(static_cast<const float*>(base)[idx]);
        };
      };
      const auto kat = element(kh), vat = element(vh);
      std::vector<int64_t> mine;
      for (int64_t s = 0; s < S; ++s)
        if (smp[s].b == b && smp[s].h == h && obs[static_cast<size_t>(s * stride + 2 * D + 1)] > 0)
          mine.push_back(s);
      parallel_for(static_cast<int64_t>(mine.size()), 0, [&](int64_t idx) {
        const int64_t s = mine[static_cast<size_t>(idx)];
        const double* qs = &obs[static_cast<size_t>(s * stride)];
        std::vector<double> score(static_cast<size_t>(l.N));
        for (int64_t t = 0; t < T; ++t) {
          if (!contains(s, t)) continue;
          double mx = kNegInf;
          for (int64_t ln = 0; ln < l.N; ++ln) {
            const int64_t j = layout.global_row[static_cast<size_t>(lb * l.N + ln)] % N;
            double sc = kNegInf;
            if (prob.terms[t].allowed(h, smp[s].i, j)) {
              sc = 0.0;
              for (int64_t d = 0; d < D; ++d) sc += qs[d] * kat(ln * D + d);
              sc *= scale;
            }
            score[static_cast<size_t>(ln)] = sc;
            mx = std::max(mx, sc);
          }
          if (mx == kNegInf) continue;
          double* acc = &sums[static_cast<size_t>((s * T + t) * (1 + 2 * D))];
          for (int64_t ln = 0; ln < l.N; ++ln) {
            const double sc = score[static_cast<size_t>(ln)];
            if (sc == kNegInf) continue;
            const double e = std::exp(sc - mx);
            acc[0] += e;
            for (int64_t d = 0; d < D; ++d) {
              const double x = vat(ln * D + d);
              acc[1 + d] += e * x;
              acc[1 + D + d] += e * e * x * x;
            }
          }
          m[static_cast<size_t>(s * T + t)] = mx;
        }
      });
    }
  }
  std::vector<double> gm = m;
  host.allreduce_host(gm.data(), gm.size(), ReduceOp::Max, op);
  for (int64_t st = 0; st < S * T; ++st) {
    const double f = m[st] == kNegInf ? 0.0 : std::exp(m[st] - gm[st]);
    double* acc = &sums[static_cast<size_t>(st * (1 + 2 * D))];
    acc[0] *= f;
    for (int64_t d = 0; d < D; ++d) {
      acc[1 + d] *= f;
      acc[1 + D + d] *= f * f;
    }
  }
  host.allreduce_host(sums.data(), sums.size(), ReduceOp::Sum, op);

  // Combine the terms per row as the variant does and compare.
  const double u = unit_roundoff(q.dtype);
  const double floor_abs = q.dtype == DType::F64 ? 1e-12 : 1e-6;
  const double lse_rel = q.dtype == DType::F64 ? 1e-10 : 1e-4;
  std::ostringstream worst;
  for (int64_t s = 0; s < S; ++s) {
    const double* ob = &obs[static_cast<size_t>(s * stride)];
    if (ob[2 * D + 1] != 1.0)
      throw Error("bench check: sampled row " + std::to_string(smp[s].i) + " of batch " +
                  std::to_string(smp[s].b) + " is held by " +
                  std::to_string(static_cast<int64_t>(ob[2 * D + 1])) +
                  " ranks (expected exactly one)");
    std::vector<double> lt, ot_w;  // per contributing term: L_t, weight of O_t
    std::vector<const double*> acc_t;
    for (int64_t t = 0; t < T; ++t) {
      const double* acc = &sums[static_cast<size_t>((s * T + t) * (1 + 2 * D))];
      if (gm[s * T + t] == kNegInf || acc[0] <= 0.0) continue;
      lt.push_back(gm[s * T + t] + std::log(acc[0]));
      ot_w.push_back(prob.terms[t].coeff);
      acc_t.push_back(acc);
    }
    double L = kNegInf;
    for (double x : lt)
      L = L == kNegInf ? x : std::max(L, x) + std::log1p(std::exp(-std::abs(L - x)));
    if (prob.lse_weighted)
      for (size_t t = 0; t < lt.size(); ++t) ot_w[t] = std::exp(lt[t] - L);
    bool bad = false;
    double row_ratio = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      double ref = 0.0, walk = 0.0;
      for (size_t t = 0; t < lt.size(); ++t) {
        ref += ot_w[t] * acc_t[t][1 + d] / acc_t[t][0];
        walk += std::abs(ot_w[t]) * std::sqrt(acc_t[t][1 + D + d]) / acc_t[t][0];
      }
      const double got = ob[D + d];
      const double tol = u * (kWalkFactor * walk + kOutputFactor * std::abs(ref)) + floor_abs;
      const double err = std::abs(got - ref);
      if (!std::isfinite(got) || !(err <= tol)) bad = true;
      row_ratio = std::max(row_ratio, std::isfinite(err) ? err / tol : INFINITY);
    }
    const double got_l = ob[2 * D];
    if (L == kNegInf) {
      if (!(got_l == kNegInf)) bad = true;
    } else {
      const double tol = lse_rel * std::max(1.0, std::abs(L));
      const double err = std::abs(got_l - L);
      if (!std::isfinite(got_l) || !(err <= tol)) bad = true;
      row_ratio = std::max(row_ratio, std::isfinite(err) ? err / tol : INFINITY);
    }
    res.rows++;
    res.wrong += bad ? 1 : 0;
    if (row_ratio >= res.max_ratio) {
      res.max_ratio = row_ratio;
      worst.str("");
      worst << "worst row b=" << smp[s].b << " n=" << smp[s].i << " h=" << smp[s].h << " at "
            << row_ratio << "x its tolerance";
    }
  }
  res.note = worst.str();
  return res;
}

}  // namespace longattn::cli
