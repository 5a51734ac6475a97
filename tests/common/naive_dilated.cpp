// Naive dilated attention: one explicit softmax per selected row, no views, no blocking.
#include "common/naive_dilated.hpp"

#include <cmath>
#include <limits>

namespace longattn::testing {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Offset of head h in pair i, or -1 when the pair does not cover the head.
int64_t head_offset(const DilatedConfig& cfg, int64_t H, int64_t i, int64_t h) {
  const int64_t G = static_cast<int64_t>(cfg.segment_lengths.size());
  const int64_t r = cfg.dilation_rates[i];
  if (cfg.mode == DilatedMode::LongNet) {
    const int64_t heads_per_offset = ((H + r - 1) / r * r) / r;
    return h / heads_per_offset;
  }
  // groups: the first H % G groups have base + 1 heads, the rest base heads.
  const int64_t base = H / G, extra = H % G, boundary = extra * (base + 1);
  const int64_t group = h < boundary ? h / (base + 1) : extra + (h - boundary) / base;
  return group == i ? i % r : -1;
}

}  // namespace

std::vector<NaiveResult> naive_dilated_pairs(const TensorView& q, const TensorView& k,
                                             const TensorView& v, const DilatedConfig& cfg,
                                             bool causal, double scale, DType round) {
  const int64_t B = q.B, N = q.N, H = q.H, D = q.D;
  if (scale <= 0) scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto r = [round](double x) { return round_to(round, x); };
  std::vector<NaiveResult> out;
  for (size_t i = 0; i < cfg.segment_lengths.size(); ++i) {
    const int64_t seg = cfg.segment_lengths[i], rate = cfg.dilation_rates[i];
    NaiveResult res{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, 1)};
    res.lse.fill(kNegInf);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t off = head_offset(cfg, H, static_cast<int64_t>(i), h);
        if (off < 0) continue;
        for (int64_t m = 0; m < N / seg; ++m) {
          std::vector<int64_t> rows;
          for (int64_t t = off; t < seg; t += rate) rows.push_back(m * seg + t);
          const size_t L = rows.size();
          std::vector<double> s(L);
          for (size_t a = 0; a < L; ++a) {
            const size_t visible = causal ? a + 1 : L;  // dilated order: keys up to a
            double mx = kNegInf;
            for (size_t c = 0; c < visible; ++c) {
              double acc = 0.0;
              for (int64_t d = 0; d < D; ++d)
                acc += load(q, b, rows[a], h, d) * load(k, b, rows[c], h, d);
              s[c] = r(r(acc) * scale);
              mx = std::max(mx, s[c]);
            }
            double sum = 0.0;
            for (size_t c = 0; c < visible; ++c) sum += std::exp(s[c] - mx);
            res.lse.set(b, rows[a], h, 0, mx + std::log(sum));
            for (int64_t d = 0; d < D; ++d) {
              double acc = 0.0;
              for (size_t c = 0; c < visible; ++c)
                acc += r(r(std::exp(s[c] - mx)) / r(sum)) * load(v, b, rows[c], h, d);
              res.o.set(b, rows[a], h, d, r(acc));
            }
          }
        }
      }
    out.push_back(std::move(res));
  }
  return out;
}

NaiveResult naive_dilated_combine(const std::vector<NaiveResult>& pairs, DilatedMode mode,
                                  DType round) {
  auto r = [round](double x) { return round_to(round, x); };
  const auto shape = pairs.at(0).o.shape();
  const int64_t B = shape[0], N = shape[1], H = shape[2], D = shape[3];
  const double G = static_cast<double>(pairs.size());
  NaiveResult res{Tensor(DType::F64, B, N, H, D), Tensor(DType::F64, B, N, H, 1)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h) {
        if (mode == DilatedMode::Groups) {
          // At most one pair (the head's group) selects the row; elsewhere O = 0, L = -inf.
          double lse = kNegInf;
          std::vector<double> o(static_cast<size_t>(D), 0.0);
          for (const auto& p : pairs) {
            if (p.lse.at(b, n, h, 0) == kNegInf) continue;
            lse = p.lse.at(b, n, h, 0);
            for (int64_t d = 0; d < D; ++d) o[d] = p.o.at(b, n, h, d);
          }
          res.lse.set(b, n, h, 0, lse);
          for (int64_t d = 0; d < D; ++d) res.o.set(b, n, h, d, r(o[d] / G));
          continue;
        }
        double mx = kNegInf;
        for (const auto& p : pairs) mx = std::max(mx, p.lse.at(b, n, h, 0));
        if (mx == kNegInf) {
          res.lse.set(b, n, h, 0, kNegInf);
          continue;  // no pair selects this row for this head: O stays 0
        }
        double sum = 0.0;
        for (const auto& p : pairs) sum += std::exp(p.lse.at(b, n, h, 0) - mx);
        res.lse.set(b, n, h, 0, mx + std::log(sum));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (const auto& p : pairs)
            acc += r(std::exp(p.lse.at(b, n, h, 0) - mx) / sum) * p.o.at(b, n, h, d);
          res.o.set(b, n, h, d, r(acc));
        }
      }
  return res;
}

NaiveResult naive_dilated(const TensorView& q, const TensorView& k, const TensorView& v,
                          const DilatedConfig& cfg, bool causal, double scale, DType round) {
  return naive_dilated_combine(naive_dilated_pairs(q, k, v, cfg, causal, scale, round), cfg.mode,
                               round);
}

}  // namespace longattn::testing
