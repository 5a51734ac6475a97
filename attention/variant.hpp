// The interface every single-process attention variant fills (dense, dilated, block-sparse),
// and the factory by name. Tests and benchmarks iterate over the registry.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "kernels/backend.hpp"

namespace longattn {

class AttentionVariant {
 public:
  virtual ~AttentionVariant() = default;
  virtual std::string name() const = 0;
  virtual const AttentionSpec& spec() const = 0;
  // Throws InvalidArgument when the variant cannot run on inputs of this shape.
  virtual void validate(const Shape& s) const = 0;
  // o [B, N, H, D] (q's dtype) and lse [B, N, H, 1] fp32/fp64 are written. For dense and
  // block-sparse, lse is the row's log-sum-exp; for dilated it is the combined L of the row.
  virtual void forward(Backend& be, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& o, const TensorView& lse) = 0;
  // Gradients are OVERWRITTEN (not accumulated): dq, dk, dv have q's shape.
  virtual void backward(Backend& be, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& o, const TensorView& lse,
                        const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv) = 0;
  // Forward FLOPs, 4 * (visible query-key pairs) * D summed over batch and heads.
  virtual double flops(const Shape& s) const = 0;
  // Fraction of (query, key) block pairs computed, from the masks actually built.
  virtual double density(const Shape& s) const = 0;
};

// Builds a variant from a spec. Unknown names throw InvalidArgument listing valid names.
std::unique_ptr<AttentionVariant> make_attention(const AttentionSpec& spec);
std::vector<std::string> variant_names();

}  // namespace longattn
