// Head groups, dilated branches and the dilated config's validation (see head_groups.hpp).
#include "attention/head_groups.hpp"

#include <algorithm>
#include <string>

#include "runtime/error.hpp"

namespace longattn {

namespace {
std::string list_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}
}  // namespace

std::vector<HeadRange> head_groups(int64_t H, int64_t G) {
  LONGATTN_CHECK_ARG(G > 0, "groups", G, "must be positive");
  LONGATTN_CHECK_ARG(H >= G, "heads", H,
                     "must be >= the number of groups G = " + std::to_string(G) +
                         " (one head group per (segment_lengths, dilation_rates) pair)");
  std::vector<HeadRange> groups(static_cast<size_t>(G));
  const int64_t base = H / G, extra = H % G;
  int64_t begin = 0;
  for (int64_t i = 0; i < G; ++i) {
    const int64_t count = base + (i < extra ? 1 : 0);
    groups[i] = {begin, count};
    begin += count;
  }
  return groups;
}

std::vector<DilatedBranch> dilated_branches(const DilatedConfig& cfg, int64_t H) {
  validate_dilated_config(cfg);
  LONGATTN_CHECK_ARG(H > 0, "heads", H, "must be positive");
  const int G = static_cast<int>(cfg.segment_lengths.size());
  std::vector<DilatedBranch> out;
  if (cfg.mode == DilatedMode::Groups) {
    const auto groups = head_groups(H, G);
    for (int i = 0; i < G; ++i) {
      const int64_t s = cfg.segment_lengths[i], r = cfg.dilation_rates[i];
      out.push_back({i, s, r, i % r, groups[i].begin, groups[i].count});
    }
    return out;
  }
  for (int i = 0; i < G; ++i) {
    const int64_t s = cfg.segment_lengths[i], r = cfg.dilation_rates[i];
    const int64_t per_offset = (H + r - 1) / r;  // H' / r with H' = ceil(H / r) * r
    for (int64_t o = 0; o < r; ++o) {
      const int64_t begin = o * per_offset;
      if (begin >= H) break;  // only padded heads would get this and later offsets
      out.push_back({i, s, r, o, begin, std::min(per_offset, H - begin)});
    }
  }
  return out;
}

void validate_dilated_config(const DilatedConfig& cfg) {
  LONGATTN_CHECK_ARG(!cfg.segment_lengths.empty(), "segment_lengths", "[]", "cannot be empty");
  LONGATTN_CHECK_ARG(!cfg.dilation_rates.empty(), "dilation_rates", "[]", "cannot be empty");
  LONGATTN_CHECK_ARG(cfg.segment_lengths.size() == cfg.dilation_rates.size(), "dilation_rates",
                     list_string(cfg.dilation_rates),
                     "must have the same length as segment_lengths " +
                         list_string(cfg.segment_lengths));
  for (size_t i = 0; i < cfg.segment_lengths.size(); ++i) {
    LONGATTN_CHECK_ARG(cfg.segment_lengths[i] > 0, "segment_lengths[" + std::to_string(i) + "]",
                       cfg.segment_lengths[i], "must be positive");
    LONGATTN_CHECK_ARG(cfg.dilation_rates[i] > 0, "dilation_rates[" + std::to_string(i) + "]",
                       cfg.dilation_rates[i], "must be positive");
  }
  LONGATTN_CHECK_ARG(cfg.pass_rows >= 0, "pass_rows", cfg.pass_rows,
                     "must be >= 0 (0: automatic)");
}

void validate_dilated(const DilatedConfig& cfg, const Shape& s) {
  validate_dilated_config(cfg);
  validate_shape(s);
  const int64_t smax = *std::max_element(cfg.segment_lengths.begin(), cfg.segment_lengths.end());
  LONGATTN_CHECK_ARG(s.N % smax == 0, "seq_len", s.N,
                     "must be divisible by the largest of segment_lengths " +
                         list_string(cfg.segment_lengths) + " (" + std::to_string(smax) +
                         "); pad the sequence to a multiple of " + std::to_string(smax));
  if (cfg.mode == DilatedMode::Groups) {
    const int64_t G = static_cast<int64_t>(cfg.segment_lengths.size());
    LONGATTN_CHECK_ARG(s.H >= G, "heads", s.H,
                       "must be >= the number of (segment_lengths, dilation_rates) pairs G = " +
                           std::to_string(G) + " in groups mode (one head group per pair)");
  }
}

}  // namespace longattn
