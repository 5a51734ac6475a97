// Shared option definitions of the longattn subcommands and their translation into specs.
#include "launch/options.hpp"

#include <algorithm>
#include <iostream>
#include <limits>
#include <sstream>

#include "attention/patterns.hpp"
#include "runtime/error.hpp"

namespace longattn::cli {

namespace {

bool given(const po::variables_map& vm, const char* name) {
  return vm.count(name) && !vm[name].defaulted();
}

std::vector<std::string> split(const std::vector<std::string>& tokens, char sep) {
  std::vector<std::string> out;
  for (const auto& t : tokens) {
    std::string cur;
    for (char c : t) {
      if (c == sep || c == ' ') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else {
        cur.push_back(c);
      }
    }
    if (!cur.empty()) out.push_back(cur);
  }
  return out;
}

// An integer, or one with a K (x1024) or M (x1048576) suffix, as the sequence lengths take.
int64_t parse_int(const std::string& s, const std::string& arg, const std::string& whole) {
  std::string digits = s;
  int64_t mult = 1;
  if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) mult = int64_t{1} << 10;
  if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'm')) mult = int64_t{1} << 20;
  if (mult > 1) digits.pop_back();
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(digits, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const int64_t limit = std::numeric_limits<int64_t>::max() / mult;
  if (used == 0 || used != digits.size() || v > limit || v < -limit)
    throw InvalidArgument(arg, whole,
                          "must be a comma-separated list of integers (K and M suffixes allowed)");
  return v * mult;
}

std::vector<HierarchicalLevel> parse_levels(const std::string& text) {
  std::vector<HierarchicalLevel> out;
  for (const auto& item : split({text}, ',')) {
    const size_t colon = item.find(':');
    if (colon == std::string::npos)
      throw InvalidArgument("--levels", text, "must be stride:window pairs, e.g. 64:256,256:-1");
    HierarchicalLevel l;
    l.stride = parse_int(item.substr(0, colon), "--levels", text);
    l.window = parse_int(item.substr(colon + 1), "--levels", text);
    out.push_back(l);
  }
  if (out.empty()) throw InvalidArgument("--levels", text, "must list at least one stride:window");
  return out;
}

}  // namespace

bool parse_command(const std::string& command, const std::string& summary,
                   const std::vector<std::string>& args, po::options_description& desc,
                   po::variables_map& vm, bool print_help) {
  desc.add_options()("help,h", "this help");
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
    // No command takes operands: a word that is no option's value (a stray argument, or a value
    // after a switch that takes none, as run's --causal) is an error, not silently dropped.
    for (const po::option& o : parsed.options)
      if (o.position_key >= 0)
        throw UsageError("unexpected argument '" + (o.value.empty() ? o.string_key : o.value[0]) +
                         "': every argument is an option, --name or --name value where the "
                         "option takes one (see longattn " + command + " --help)");
    po::store(parsed, vm);
    if (vm.count("help")) {
      if (print_help)
        std::cout << "Usage: longattn " << command << " [options]\n\n" << summary << "\n\n"
                << desc << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(e.what()) + " (see longattn " + command + " --help)");
  }
  return true;
}

std::string cli_message(const std::exception& e, const po::options_description& desc) {
  const auto* ia = dynamic_cast<const InvalidArgument*>(&e);
  std::string msg = e.what();
  if (!ia) return msg;
  const std::string& arg = ia->argument();
  const size_t cut = arg.find_first_of("[.");
  std::string head = arg.substr(0, cut);
  if (head.rfind("--", 0) == 0) return msg;
  std::string option = head;
  std::replace(option.begin(), option.end(), '_', '-');
  if (!desc.find_nothrow(option, false)) return msg;
  const std::string prefix = "invalid argument " + arg;
  if (msg.rfind(prefix, 0) != 0) return msg;
  return "invalid argument --" + option + (cut == std::string::npos ? "" : arg.substr(cut)) +
         msg.substr(prefix.size());
}

std::string join_ints(const std::vector<int64_t>& v, const char* sep) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? sep : "") << v[i];
  return os.str();
}

std::vector<int64_t> parse_int_list(const std::vector<std::string>& tokens,
                                    const std::string& arg) {
  std::string whole;
  for (const auto& t : tokens) whole += (whole.empty() ? "" : " ") + t;
  std::vector<int64_t> out;
  for (const auto& item : split(tokens, ',')) out.push_back(parse_int(item, arg, whole));
  if (out.empty()) throw InvalidArgument(arg, "(empty)", "must list at least one integer");
  return out;
}

int64_t row_count(const std::string& text, const std::string& arg) {
  const std::string rule = "must be a whole number of rows >= 0 (0: automatic; K and M suffixes "
                           "allowed)";
  int64_t v = 0;
  try {
    v = parse_int(text, arg, text);
  } catch (const InvalidArgument&) {
    throw InvalidArgument(arg, text, rule);
  }
  if (v < 0) throw InvalidArgument(arg, text, rule);
  return v;
}

po::options_description shape_options(AttentionArgs& a, const ArgDefaults& d) {
  a.batch = d.batch;
  a.seq_len = d.seq_len;
  a.heads = d.heads;
  a.head_dim = d.head_dim;
  a.dtype = d.dtype;
  po::options_description o("Problem", kHelpWidth);
  o.add_options()
      ("batch,b", po::value<int64_t>(&a.batch)->default_value(d.batch), "batch size B")
      ("seq-len,n", po::value<int64_t>(&a.seq_len)->default_value(d.seq_len),
       "sequence length N (tokens)")
      ("heads", po::value<int64_t>(&a.heads)->default_value(d.heads), "number of heads H")
      ("head-dim", po::value<int64_t>(&a.head_dim)->default_value(d.head_dim),
       "head dimension D (1..256)")
      ("dtype", po::value<std::string>(&a.dtype)->default_value(d.dtype),
       "element type: fp64 (CPU only), fp32, fp16, bf16")
      ("causal", po::bool_switch(&a.causal), "causal masking in global positions")
      ("scale", po::value<double>(&a.scale)->default_value(0.0),
       "softmax scale (0: 1/sqrt(D))")
      ("seed", po::value<uint64_t>(&a.seed)->default_value(0),
       "seed of the random inputs and of the random pattern");
  return o;
}

po::options_description sparse_options(AttentionArgs& a) {
  po::options_description o("Block-sparse (--variant block_sparse)", kHelpWidth);
  o.add_options()
      ("pattern", po::value<std::string>(&a.pattern),
       "local_window | dilated_sparse | global_local | hierarchical | random | content_adaptive "
       "(default local_window)")
      ("preset", po::value<std::string>(&a.preset),
       "a named configuration: local, dilated, global_local, hierarchical_standard, "
       "hierarchical_fine, hierarchical_long, adaptive_standard, ultra_sparse; other options "
       "given with it override its fields")
      ("sparsity-ratio", po::value<double>(&a.sparsity_ratio),
       "fraction of blocks KEPT, in (0, 1] (0.1 = 90% sparse); given alone, the pattern's "
       "structural parameter is derived to approach it")
      ("block-size", po::value<int64_t>(&a.block_size)->default_value(64),
       "block size in tokens (the sparse pattern's block; the kernel tile of dense and dilated)")
      ("window-size", po::value<int64_t>(&a.window_size),
       "local window in tokens (local_window, global_local)")
      ("global-tokens", po::value<int64_t>(&a.global_tokens),
       "global tokens, counted in tokens (global_local)")
      ("levels", po::value<std::string>(&a.levels),
       "hierarchical levels as stride:window tokens, e.g. 64:256,256:1024,1024:-1 (-1: all)")
      ("topk", po::value<int64_t>(&a.topk), "key blocks per query block (content_adaptive)")
      ("hilbert", po::bool_switch(&a.hilbert),
       "visit blocks in Hilbert order (layout only; results do not change)");
  return o;
}

po::options_description variant_options(AttentionArgs& a) {
  po::options_description o("Variant", kHelpWidth);
  o.add_options()
      ("variant,v", po::value<std::string>(&a.variant)->default_value("dense"),
       "dense | dilated | block_sparse (or block_sparse:<preset>)")
      ("mode", po::value<std::string>(&a.mode)->default_value("groups"),
       "dilated mode: groups (heads split among the pairs) or longnet (every pair on all "
       "heads, combined by their log-sum-exp)")
      ("segment-lengths", po::value<std::vector<std::string>>(&a.segment_lengths)->multitoken(),
       "dilated segment lengths, K and M suffixes allowed (default 2048,4096,8192; N/4,N/2,N "
       "when N < 8192)")
      ("dilation-rates", po::value<std::vector<std::string>>(&a.dilation_rates)->multitoken(),
       "dilated: one rate per segment length (default 1,2,4); block_sparse dilated_sparse: "
       "block offsets")
      ("exact-longnet-grad", po::bool_switch(&a.exact_longnet_grad),
       "longnet mode: differentiate the pair weights too (default: detached, as torchscale)")
      ("pass-rows", po::value<std::string>(&a.pass_rows)->default_value("0"),
       "longnet mode with fp16/bf16: the most rows a pass holds fp32 buffers for, rounded to "
       "whole segments (0: an eighth of the rows, at least 1,048,576); less memory, more calls");
  o.add(sparse_options(a));
  return o;
}

DType make_dtype(const std::string& text) { return parse_dtype(text, "--dtype"); }

Shape make_shape(const AttentionArgs& a) { return Shape{a.batch, a.seq_len, a.heads, a.head_dim}; }

const char* mode_name(DilatedMode m) { return m == DilatedMode::LongNet ? "longnet" : "groups"; }

SparseConfig make_sparse_config(const AttentionArgs& a, const po::variables_map& vm) {
  SparseConfig c = given(vm, "preset") ? sparse_preset(a.preset) : SparseConfig{};
  if (given(vm, "pattern")) c.pattern = a.pattern;
  if (given(vm, "sparsity-ratio")) c.sparsity_ratio = a.sparsity_ratio;
  if (given(vm, "block-size") || !given(vm, "preset")) c.block_size = a.block_size;
  if (given(vm, "window-size")) {
    c.window_size = a.window_size;
    c.window_given = true;
  }
  if (given(vm, "dilation-rates")) {
    c.dilation_rates = parse_int_list(a.dilation_rates, "--dilation-rates");
    c.rates_given = true;
  }
  if (given(vm, "global-tokens")) {
    c.global_tokens = a.global_tokens;
    c.global_given = true;
  }
  if (given(vm, "levels")) {
    c.levels = parse_levels(a.levels);
    c.levels_given = true;
  }
  if (given(vm, "topk")) c.topk = a.topk;
  c.seed = a.seed;
  c.hilbert = a.hilbert;
  return c;
}

AttentionSpec make_spec(const AttentionArgs& a, const po::variables_map& vm) {
  AttentionSpec s;
  s.variant = a.variant;
  const bool sparse_given = given(vm, "preset") || given(vm, "pattern");
  if (sparse_given) {
    if (!given(vm, "variant")) s.variant = "block_sparse";
    if (s.variant != "block_sparse")
      throw InvalidArgument(given(vm, "preset") ? "--preset" : "--pattern",
                            given(vm, "preset") ? a.preset : a.pattern,
                            "applies to --variant block_sparse only (the variant is " +
                                s.variant + ")");
  }
  s.causal = a.causal;
  s.scale = a.scale;
  s.block_size = a.block_size;

  if (a.mode == "groups") {
    s.dilated.mode = DilatedMode::Groups;
  } else if (a.mode == "longnet") {
    s.dilated.mode = DilatedMode::LongNet;
  } else {
    throw InvalidArgument("--mode", a.mode, "must be groups or longnet");
  }
  s.dilated.exact_longnet_grad = a.exact_longnet_grad;
  s.dilated.pass_rows = row_count(a.pass_rows, "--pass-rows");
  if (given(vm, "segment-lengths")) {
    s.dilated.segment_lengths = parse_int_list(a.segment_lengths, "--segment-lengths");
  } else if (a.seq_len < 8192) {
    s.dilated.segment_lengths = {a.seq_len / 4, a.seq_len / 2, a.seq_len};
  }
  if (given(vm, "dilation-rates"))
    s.dilated.dilation_rates = parse_int_list(a.dilation_rates, "--dilation-rates");

  s.sparse = make_sparse_config(a, vm);
  return s;
}

std::string describe_spec(const AttentionSpec& spec) {
  std::ostringstream os;
  const std::string& v = spec.variant;
  if (v == "dilated") {
    os << "mode " << mode_name(spec.dilated.mode) << ", segments "
       << join_ints(spec.dilated.segment_lengths) << ", rates "
       << join_ints(spec.dilated.dilation_rates);
  } else if (v.rfind("block_sparse", 0) == 0) {
    const SparseConfig& c = spec.sparse;
    os << "pattern " << c.pattern << ", block " << c.block_size;
    if (c.sparsity_ratio > 0) os << ", ratio " << c.sparsity_ratio;
    if (c.window_given) os << ", window " << c.window_size;
    if (c.rates_given) os << ", rates " << join_ints(c.dilation_rates);
    if (c.global_given) os << ", global " << c.global_tokens;
    if (c.topk) os << ", topk " << c.topk;
    if (c.hilbert) os << ", hilbert";
  } else {
    os << "block " << spec.block_size;
  }
  return os.str();
}

}  // namespace longattn::cli
