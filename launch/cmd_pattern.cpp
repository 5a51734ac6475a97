// `longattn pattern`: the block mask of a block-sparse pattern or preset over N tokens: pairs,
// density, per-row counts, the resolved structural parameters and, for small masks, a picture.
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "attention/patterns.hpp"
#include "launch/commands.hpp"
#include "launch/execute.hpp"
#include "launch/options.hpp"
#include "runtime/error.hpp"

namespace longattn::cli {

namespace {

struct PatternArgs {
  int64_t seq_len = 4096;
  int64_t head_dim = 64;
  bool causal = false;
  uint64_t seed = 0;
  bool json = false;
  int64_t picture = 64;
};

nlohmann::json resolved_json(const SparseConfig& c) {
  nlohmann::json j;
  j["pattern"] = c.pattern;
  j["block_size"] = c.block_size;
  j["sparsity_ratio"] = c.sparsity_ratio;
  if (c.pattern == "local_window" || c.pattern == "global_local") j["window_size"] = c.window_size;
  if (c.pattern == "global_local") j["global_tokens"] = c.global_tokens;
  if (c.pattern == "dilated_sparse") j["dilation_rates"] = c.dilation_rates;
  if (c.pattern == "hierarchical") {
    j["levels"] = nlohmann::json::array();
    for (const auto& l : c.levels) j["levels"].push_back({{"stride", l.stride}, {"window", l.window}});
  }
  if (c.pattern == "random") j["seed"] = c.seed;
  if (c.pattern == "content_adaptive") j["topk"] = c.topk;
  j["hilbert"] = c.hilbert;
  return j;
}

}  // namespace

int cmd_pattern(const Args& args, const ProcessGroup& mpi) {
  AttentionArgs a;
  PatternArgs p;
  po::options_description desc(kHelpWidth);
  po::options_description mask_opts("Mask", kHelpWidth);
  mask_opts.add_options()
      ("seq-len,n", po::value<int64_t>(&p.seq_len)->default_value(4096), "sequence length N")
      ("causal", po::bool_switch(&p.causal), "drop blocks entirely in the future")
      ("seed", po::value<uint64_t>(&p.seed)->default_value(0),
       "seed of the random pattern and of content_adaptive's random Q, K")
      ("head-dim", po::value<int64_t>(&p.head_dim)->default_value(64),
       "head dimension of content_adaptive's random Q, K")
      ("json", po::bool_switch(&p.json), "print JSON (with every row's key blocks)")
      ("picture", po::value<int64_t>(&p.picture)->default_value(64),
       "draw the mask when it has at most this many block rows");
  desc.add(mask_opts).add(sparse_options(a));
  po::variables_map vm;
  if (!parse_command("pattern",
                     "Summarises the block mask a block-sparse pattern (or --preset) gives over "
                     "N tokens:\nkey blocks per query block, pairs, achieved density against the "
                     "requested sparsity ratio.",
                     args, desc, vm, mpi.rank() == 0))
    return kExitOk;
  if (mpi.rank() != 0) return kExitOk;

  try {
    a.seed = p.seed;
    SparseConfig cfg = make_sparse_config(a, vm);
    validate_sparse(cfg, p.seq_len);
    const int64_t nb = p.seq_len / cfg.block_size;
    const SparseConfig resolved = resolve_sparse(cfg, nb);
    std::vector<double> scores;
    if (cfg.pattern == "content_adaptive") {
      LONGATTN_CHECK_ARG(p.head_dim > 0, "--head-dim", p.head_dim, "must be positive");
      const HostInputs in = random_inputs(Shape{1, p.seq_len, 1, p.head_dim}, DType::F32, p.seed, false);
      scores = block_mean_scores(in.q.view(), in.k.view(), cfg.block_size);
    }
    const BlockMask m =
        sparse_block_mask(cfg, p.seq_len, p.causal, scores.empty() ? nullptr : &scores);

    std::vector<int64_t> counts(static_cast<size_t>(m.num_q_blocks));
    int64_t partial = 0;
    for (int64_t r = 0; r < m.num_q_blocks; ++r) counts[r] = m.row_ptr[r + 1] - m.row_ptr[r];
    for (uint8_t f : m.partial) partial += f ? 1 : 0;
    const auto [mn, mx] = std::minmax_element(counts.begin(), counts.end());
    const double mean = static_cast<double>(m.nnz()) / static_cast<double>(std::max<int64_t>(1, nb));

    if (p.json) {
      nlohmann::json j;
      j["preset"] = a.preset;
      j["seq_len"] = p.seq_len;
      j["causal"] = p.causal;
      j["num_blocks"] = nb;
      j["config"] = resolved_json(resolved);
      j["pairs"] = m.nnz();
      j["partial_pairs"] = partial;
      j["density"] = m.density();
      j["row_min"] = *mn;
      j["row_mean"] = mean;
      j["row_max"] = *mx;
      j["row_counts"] = counts;
      j["rows"] = nlohmann::json::array();
      for (int64_t r = 0; r < m.num_q_blocks; ++r)
        j["rows"].push_back(std::vector<int32_t>(m.col_idx.begin() + m.row_ptr[r],
                                                 m.col_idx.begin() + m.row_ptr[r + 1]));
      std::cout << j.dump(2) << "\n";
      return kExitOk;
    }

    std::cout << "pattern " << resolved.pattern;
    if (!a.preset.empty()) std::cout << " (preset " << a.preset << ")";
    std::cout << " over N " << p.seq_len << " tokens, block " << cfg.block_size << ": " << nb
              << " x " << nb << " blocks" << (p.causal ? ", causal" : "") << "\n";
    std::cout << "  config    " << resolved_json(resolved).dump() << "\n";
    std::cout << std::fixed << std::setprecision(4);
    std::cout << "  pairs     " << m.nnz() << " of " << nb * nb << " (" << partial
              << " partial)\n";
    std::cout << "  density   " << m.density();
    if (cfg.sparsity_ratio > 0) std::cout << " (sparsity ratio asked: " << cfg.sparsity_ratio << ")";
    std::cout << "\n";
    std::cout << std::setprecision(2) << "  per row   min " << *mn << "  mean " << mean << "  max "
              << *mx << "\n";
    if (nb <= p.picture) {
      std::cout << "  picture   (query blocks down, key blocks across; '#' full, '+' partial, "
                   "'.' skipped)\n";
      for (int64_t r = 0; r < m.num_q_blocks; ++r) {
        std::string line(static_cast<size_t>(m.num_k_blocks), '.');
        for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
          line[static_cast<size_t>(m.col_idx[e])] = m.partial[e] ? '+' : '#';
        std::cout << "    " << line << "\n";
      }
    }
    return kExitOk;
  } catch (const InvalidArgument& e) {
    throw UsageError(cli_message(e, desc));
  }
}

}  // namespace longattn::cli
