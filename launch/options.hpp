// Command-line options shared by the longattn subcommands (run, pattern, verify): the shape,
// the attention variant and its configuration, and their translation into an AttentionSpec.
// Parsing never runs attention; every bad value becomes InvalidArgument naming the option.
#pragma once
#include <boost/program_options.hpp>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "runtime/dtype.hpp"

namespace longattn::cli {

namespace po = boost::program_options;

// Width of --help text.
constexpr unsigned kHelpWidth = 100;

// Exit codes of the longattn command.
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,            // a run failed (I/O, out of memory, communication, internal)
  kExitInvalidArgument = 2,  // an argument broke a rule; the message names it
  kExitVerifyFailed = 3,     // verify: an error above tolerance
};

// A command-line mistake (exit code 2); the message names the option, its value and the rule.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses `args` (the words after the subcommand) into vm. Returns false after printing (when
// print_help: rank 0 under mpirun)
// "Usage: longattn <command> [options]", the summary and the options when --help is given.
// Unknown options and malformed values throw UsageError.
bool parse_command(const std::string& command, const std::string& summary,
                   const std::vector<std::string>& args, po::options_description& desc,
                   po::variables_map& vm, bool print_help = true);

// The library names an argument as in the spec ("seq_len", "segment_lengths[1]"); on the
// command line it is an option ("--seq-len"). Rewrites the message of an InvalidArgument
// with the option's name when desc has such an option.
std::string cli_message(const std::exception& e, const po::options_description& desc);

// What the user asked for, as typed; turned into a spec and shape by the functions below.
struct AttentionArgs {
  std::string variant = "dense";
  bool causal = false;
  std::string dtype = "fp32";
  int64_t batch = 1, seq_len = 4096, heads = 8, head_dim = 64;
  std::vector<std::string> segment_lengths, dilation_rates;  // comma lists or several tokens
  std::string mode = "groups";
  std::string pattern, preset;
  double sparsity_ratio = 0.0;
  int64_t block_size = 64;
  int64_t window_size = 0, global_tokens = 0, topk = 0;
  std::string levels;  // "stride:window,stride:window"
  uint64_t seed = 0;
  bool hilbert = false;
  bool exact_longnet_grad = false;
  std::string pass_rows = "0";  // dilated longnet: DilatedConfig::pass_rows (row_count)
  double scale = 0.0;
};

// Defaults that differ per subcommand (verify uses a small problem).
struct ArgDefaults {
  int64_t batch = 1, seq_len = 4096, heads = 8, head_dim = 64;
  std::string dtype = "fp32";
};

// --batch --seq-len --heads --head-dim --dtype --causal --seed --scale.
po::options_description shape_options(AttentionArgs& a, const ArgDefaults& d);
// --variant --mode --segment-lengths --dilation-rates --exact-longnet-grad --pass-rows and the
// sparse ones.
po::options_description variant_options(AttentionArgs& a);
// --pattern --preset --sparsity-ratio --block-size --window-size --global-tokens --levels
// --topk --hilbert (also part of variant_options).
po::options_description sparse_options(AttentionArgs& a);

// "128,256 512" -> {128, 256, 512} (K and M suffixes: x1024, x1048576); throws
// InvalidArgument(arg) on anything else.
std::vector<int64_t> parse_int_list(const std::vector<std::string>& tokens, const std::string& arg);
// A count of rows, >= 0 (0: automatic), K and M suffixes allowed; InvalidArgument(arg) else.
int64_t row_count(const std::string& text, const std::string& arg);

// The sparse configuration: --preset first (if given), then every explicitly given option
// on top of it, marking structural fields as given. Validation is left to the variant.
SparseConfig make_sparse_config(const AttentionArgs& a, const po::variables_map& vm);
// The whole spec. Dilated segment lengths default to 2048,4096,8192, scaled to N/4,N/2,N when
// N < 8192 so that the default runs at any N divisible by 4.
AttentionSpec make_spec(const AttentionArgs& a, const po::variables_map& vm);
Shape make_shape(const AttentionArgs& a);
DType make_dtype(const std::string& text);

// "groups" / "longnet".
const char* mode_name(DilatedMode m);
// A one-line description of the spec's configuration ("segments 128,256 rates 1,2 groups").
std::string describe_spec(const AttentionSpec& spec);

// Joins values with a separator.
std::string join_ints(const std::vector<int64_t>& v, const char* sep = ",");

}  // namespace longattn::cli
