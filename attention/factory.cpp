// The factory of single-process attention variants by name (declared in attention/variant.hpp).
// "block_sparse:<preset>" builds block-sparse attention from a named preset of patterns.hpp.
#include <string_view>

#include "attention/block_sparse.hpp"
#include "attention/dense.hpp"
#include "attention/dilated.hpp"
#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "runtime/error.hpp"

namespace longattn {

namespace {

constexpr std::string_view kPresetSeparator = ":";

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string valid_names_rule() {
  return "must be one of " + join(variant_names()) +
         ", or block_sparse:<preset> with preset one of " + join(sparse_preset_names());
}

}  // namespace

std::vector<std::string> variant_names() { return {"dense", "dilated", "block_sparse"}; }

std::unique_ptr<AttentionVariant> make_attention(const AttentionSpec& spec) {
  const std::string& name = spec.variant;
  if (name == "dense") return make_dense_attention(spec);
  if (name == "dilated") return make_dilated_attention(spec);
  if (name == "block_sparse") return make_block_sparse_attention(spec);

  const size_t sep = name.find(kPresetSeparator);
  if (sep != std::string::npos && name.substr(0, sep) == "block_sparse") {
    const std::string preset = name.substr(sep + kPresetSeparator.size());
    AttentionSpec s = spec;
    s.variant = "block_sparse";
    // The preset fixes the pattern; the caller's seed and Hilbert ordering are kept.
    s.sparse = sparse_preset(preset);
    s.sparse.seed = spec.sparse.seed;
    s.sparse.hilbert = spec.sparse.hilbert;
    return make_block_sparse_attention(s);
  }
  throw InvalidArgument("variant", name.empty() ? "(empty)" : name, valid_names_rule());
}

}  // namespace longattn
