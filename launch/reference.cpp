// Naive token-level reference of `longattn verify` (see reference.hpp): two-pass softmax per row
// over a predicate, no blocking, no online rescaling; the variants' semantics from DESIGN.md.
#include "launch/reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/patterns.hpp"
#include "runtime/error.hpp"
#include "runtime/parallel.hpp"

namespace longattn::cli {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Dilated selection: position n is in the dilated rows of its segment of length `segment`
// with offset `offset` and rate `rate`.
bool selected(int64_t n, int64_t segment, int64_t rate, int64_t offset) {
  const int64_t pos = n % segment;
  return pos >= offset && (pos - offset) % rate == 0;
}

RefTerm dilated_term(int64_t segment, int64_t rate, int64_t offset, int64_t h0, int64_t h1,
                     bool causal, double coeff) {
  RefTerm t;
  t.coeff = coeff;
  t.allowed = [=](int64_t h, int64_t i, int64_t j) {
    return h >= h0 && h < h1 && i / segment == j / segment && (!causal || j <= i) &&
           selected(i, segment, rate, offset) && selected(j, segment, rate, offset);
  };
  return t;
}

double dot_rows(const TensorView& a, int64_t b, int64_t i, int64_t h, const TensorView& c,
                int64_t j) {
  double acc = 0.0;
  for (int64_t d = 0; d < a.D; ++d) acc += load(a, b, i, h, d) * load(c, b, j, h, d);
  return acc;
}

}  // namespace

RefProblem reference_problem(const AttentionSpec& spec, const Shape& s, const TensorView& q,
                             const TensorView& k) {
  RefProblem p;
  const bool causal = spec.causal;
  if (spec.variant == "dense") {
    p.terms.push_back({[causal](int64_t, int64_t i, int64_t j) { return !causal || j <= i; }, 1.0});
    return p;
  }
  if (spec.variant == "block_sparse") {
    const SparseConfig& cfg = spec.sparse;
    std::vector<double> scores;
    if (cfg.pattern == "content_adaptive") scores = block_mean_scores(q, k, cfg.block_size);
    const BlockMask m = sparse_block_mask(cfg, s.N, causal, scores.empty() ? nullptr : &scores);
    auto bits = std::make_shared<std::vector<uint8_t>>(
        static_cast<size_t>(m.num_q_blocks * m.num_k_blocks), 0);
    for (int64_t r = 0; r < m.num_q_blocks; ++r)
      for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
        (*bits)[static_cast<size_t>(r * m.num_k_blocks + m.col_idx[e])] = 1;
    const int64_t bq = m.block_q, bk = m.block_k, nkb = m.num_k_blocks;
    p.terms.push_back({[=](int64_t, int64_t i, int64_t j) {
                         return (!causal || j <= i) &&
                                (*bits)[static_cast<size_t>((i / bq) * nkb + j / bk)] != 0;
                       },
                       1.0});
    return p;
  }
  if (spec.variant == "dilated") {
    const auto& seg = spec.dilated.segment_lengths;
    const auto& rate = spec.dilated.dilation_rates;
    LONGATTN_CHECK_ARG(seg.size() == rate.size() && !seg.empty(), "dilation_rates",
                       rate.size(), "one rate per segment length");
    const int64_t G = static_cast<int64_t>(seg.size()), H = s.H;
    if (spec.dilated.mode == DilatedMode::Groups) {
      // Heads split into G contiguous groups, the first H % G one larger; group i uses offset
      // i mod r_i; the sum of the groups' outputs is scaled by 1/G.
      p.combine = Combine::Sum;
      const int64_t base = H / G, extra = H % G;
      for (int64_t i = 0; i < G; ++i) {
        const int64_t h0 = i * base + std::min(i, extra);
        const int64_t h1 = h0 + base + (i < extra ? 1 : 0);
        p.terms.push_back(dilated_term(seg[i], rate[i], i % rate[i], h0, h1, causal,
                                       1.0 / static_cast<double>(G)));
      }
    } else {
      // Every pair on all heads; heads padded to H' = ceil(H / r) * r, head j takes offset
      // j div (H' / r); pairs combined per row by softmax over their L.
      p.combine = Combine::LseWeighted;
      for (int64_t i = 0; i < G; ++i) {
        const int64_t r = rate[i];
        const int64_t padded = (H + r - 1) / r * r, per = padded / r;
        for (int64_t o = 0; o < r; ++o) {
          const int64_t h0 = o * per, h1 = std::min(H, (o + 1) * per);
          if (h0 < h1) p.terms.push_back(dilated_term(seg[i], r, o, h0, h1, causal, 1.0));
        }
      }
    }
    return p;
  }
  throw InvalidArgument("variant", spec.variant, "has no reference (dense, dilated, block_sparse)");
}

RefForward reference_forward(const RefProblem& p, const TensorView& q, const TensorView& k,
                             const TensorView& v, double scale, DType round, int threads) {
  const int64_t B = q.B, N = q.N, H = q.H, D = q.D;
  scale = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(D));
  auto r = [round](double x) { return round_to(round, x); };
  RefForward f;
  f.o = Tensor(DType::F64, B, N, H, D);
  f.lse = Tensor(DType::F64, B, N, H, 1);
  for (size_t t = 0; t < p.terms.size(); ++t) {
    f.o_t.emplace_back(DType::F64, B, N, H, D);
    f.lse_t.emplace_back(DType::F64, B, N, H, 1);
  }
  parallel_for(B * H, threads, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    std::vector<int64_t> js;
    std::vector<double> s;
    for (size_t t = 0; t < p.terms.size(); ++t) {
      Tensor& ot = f.o_t[t];
      Tensor& lt = f.lse_t[t];
      for (int64_t i = 0; i < N; ++i) {
        js.clear();
        s.clear();
        double mx = kNegInf;
        for (int64_t j = 0; j < N; ++j) {
          if (!p.terms[t].allowed(h, i, j)) continue;
          js.push_back(j);
          s.push_back(r(r(dot_rows(q, b, i, h, k, j)) * scale));
          mx = std::max(mx, s.back());
        }
        if (js.empty()) {
          lt.set(b, i, h, 0, kNegInf);
          continue;  // o stays 0
        }
        double sum = 0.0;
        for (double x : s) sum += std::exp(x - mx);
        lt.set(b, i, h, 0, mx + std::log(sum));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (size_t e = 0; e < js.size(); ++e)
            acc += r(r(std::exp(s[e] - mx)) / r(sum)) * load(v, b, js[e], h, d);
          ot.set(b, i, h, d, r(acc));
        }
      }
    }
    // Combine: L = logsumexp_t L_t; O = sum_t w_t O_t.
    for (int64_t i = 0; i < N; ++i) {
      double mx = kNegInf;
      for (const auto& lt : f.lse_t) mx = std::max(mx, lt.at(b, i, h, 0));
      double L = kNegInf;
      if (mx != kNegInf) {
        double sum = 0.0;
        for (const auto& lt : f.lse_t) sum += std::exp(lt.at(b, i, h, 0) - mx);
        L = mx + std::log(sum);
      }
      f.lse.set(b, i, h, 0, L);
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (size_t t = 0; t < p.terms.size(); ++t) {
          const double lt = f.lse_t[t].at(b, i, h, 0);
          const double w = p.combine == Combine::Sum ? p.terms[t].coeff
                           : lt == kNegInf           ? 0.0
                                                     : std::exp(lt - L);
          acc += r(w * f.o_t[t].at(b, i, h, d));
        }
        f.o.set(b, i, h, d, r(acc));
      }
    }
  });
  return f;
}

RefGrads reference_backward(const RefProblem& p, const RefForward& fwd, const TensorView& q,
                            const TensorView& k, const TensorView& v, const TensorView& d_o,
                            double scale, DType round, int threads) {
  const int64_t B = q.B, N = q.N, H = q.H, D = q.D;
  scale = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(D));
  auto r = [round](double x) { return round_to(round, x); };
  RefGrads g{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, D),
             Tensor(DType::F64, B, N, H, D)};
  parallel_for(B * H, threads, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    // Accumulators for this (b, h), rounded once at the end.
    std::vector<double> dq(static_cast<size_t>(N * D), 0.0), dk(dq.size(), 0.0), dv(dq.size(), 0.0);
    std::vector<double> dot(static_cast<size_t>(D));
    for (size_t t = 0; t < p.terms.size(); ++t) {
      const Tensor& ot = fwd.o_t[t];
      const Tensor& lt = fwd.lse_t[t];
      for (int64_t i = 0; i < N; ++i) {
        const double L = lt.at(b, i, h, 0);
        if (L == kNegInf) continue;
        // dO_t = w_t dO, w_t detached: the constant coefficient or exp(L_t - L).
        const double w = p.combine == Combine::Sum ? p.terms[t].coeff
                                                   : std::exp(L - fwd.lse.at(b, i, h, 0));
        for (int64_t d = 0; d < D; ++d) dot[d] = r(w * load(d_o, b, i, h, d));
        double delta = 0.0;
        for (int64_t d = 0; d < D; ++d) delta += dot[d] * ot.at(b, i, h, d);
        delta = r(delta);
        for (int64_t j = 0; j < N; ++j) {
          if (!p.terms[t].allowed(h, i, j)) continue;
          const double sc = r(r(dot_rows(q, b, i, h, k, j)) * scale);
          const double pij = r(std::exp(sc - L));
          double dp = 0.0;
          for (int64_t d = 0; d < D; ++d) dp += dot[d] * load(v, b, j, h, d);
          const double ds = r(pij * (r(dp) - delta));
          for (int64_t d = 0; d < D; ++d) {
            dq[i * D + d] += scale * ds * load(k, b, j, h, d);
            dk[j * D + d] += scale * ds * load(q, b, i, h, d);
            dv[j * D + d] += pij * dot[d];
          }
        }
      }
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) {
        g.dq.set(b, n, h, d, r(dq[n * D + d]));
        g.dk.set(b, n, h, d, r(dk[n * D + d]));
        g.dv.set(b, n, h, d, r(dv[n * D + d]));
      }
  });
  return g;
}

}  // namespace longattn::cli
