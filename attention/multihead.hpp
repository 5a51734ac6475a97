// Multihead dilated attention: q/k/v projections, an attention variant over [B, N, H, E/H]
// (dilated by default, any variant of the factory), optional sub-LayerNorm (MAGNETO) and the
// output projection, forward and backward. Projections run through Backend::gemm.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "attention/variant.hpp"
#include "runtime/tensor.hpp"

namespace longattn {

// The attention a multihead layer uses unless told otherwise: dilated, groups mode, defaults of
// DilatedConfig.
AttentionSpec default_multihead_attention();

struct MultiheadConfig {
  int64_t embed_dim = 0;
  int64_t num_heads = 0;
  AttentionSpec attention = default_multihead_attention();  // any variant of make_attention
  double dropout = 0.0;  // only 0 is supported for now
  bool bias = true;
  bool layer_norm = true;  // sub-LayerNorm of the attention output before out_proj
  double layer_norm_eps = 1e-5;
  double gamma_init = 1.0;  // xavier-normal gain of v_proj and out_proj (q, k: gain 1)
  uint64_t seed = 0;        // parameter initialisation
  DType param_dtype = DType::F32;  // host parameters and their gradients
};

// Throws InvalidArgument naming the argument: embed_dim > 0, num_heads > 0,
// embed_dim % num_heads == 0, head_dim <= 256, 0 <= dropout <= 1 and dropout == 0 (dropout is
// not implemented yet), layer_norm_eps > 0, gamma_init > 0, a variant make_attention knows.
void validate_multihead(const MultiheadConfig& cfg);

// Host parameters. Weights are [1, E, 1, E] tensors read as row-major [out, in] matrices
// (y = x W^T + b, PyTorch's Linear); vectors are [1, 1, 1, E]. Biases are empty without bias,
// the LayerNorm's weight and bias empty without layer_norm. Gradients use the same layout.
struct MultiheadParams {
  Tensor w_q, w_k, w_v, w_out;
  Tensor b_q, b_k, b_v, b_out;
  Tensor ln_weight, ln_bias;
};

class MultiheadDilatedAttention {
 public:
  // How a call takes its buffers: every buffer of a forward or backward (projections,
  // activations, gradients, host parameter gradients) is taken by `allocate` before the
  // attention runs; Preparation calls it with the call's name ("multihead forward",
  // "multihead backward"). The default just calls it; a layer over a distributed attention
  // (attention/distributed_multihead.hpp) calls it on every rank and agrees on the outcome, so
  // a rank that cannot allocate stops every rank before the attention's first exchange.
  using Preparation =
      std::function<void(const std::string& op, const std::function<void()>& allocate)>;

  // Initialises parameters from cfg.seed: xavier-normal (std = gain * sqrt(2 / (E + E))) with
  // gain 1 for q and k and gain gamma_init for v and out (MAGNETO, as the seed package's
  // upstream does), biases 0, LayerNorm weight 1 and bias 0.
  explicit MultiheadDilatedAttention(const MultiheadConfig& cfg);
  // The same layer over a given attention (e.g. a distributed variant on this rank's shard,
  // attention/distributed_multihead.hpp) instead of make_attention(cfg.attention); cfg is
  // validated and the parameters initialised as above.
  MultiheadDilatedAttention(const MultiheadConfig& cfg, std::unique_ptr<AttentionVariant> attention,
                            Preparation prepare = {});

  const MultiheadConfig& config() const { return cfg_; }
  MultiheadParams& params() { return params_; }
  const MultiheadParams& params() const { return params_; }
  AttentionVariant& attention() { return *attention_; }

  // Inputs x_q, x_k, x_v: [B, N, E] as views [B, N, 1, E] (any H * D == E with contiguous rows
  // of E elements and batch stride N rows); out has the same shape. All on `be`, one dtype.
  // The LayerNorm is computed on the host (download, upload) when `be` is not the CPU.
  void forward(Backend& be, const TensorView& x_q, const TensorView& x_k, const TensorView& x_v,
               const TensorView& out);
  // Gradients of sum(d_out * out): d_x_q, d_x_k, d_x_v are OVERWRITTEN, `grads` receives the
  // parameter gradients (host tensors of param_dtype, taken anew by every call). The forward is
  // recomputed inside.
  void backward(Backend& be, const TensorView& x_q, const TensorView& x_k, const TensorView& x_v,
                const TensorView& d_out, const TensorView& d_x_q, const TensorView& d_x_k,
                const TensorView& d_x_v, MultiheadParams& grads);

 private:
  struct Activations;
  struct BackwardBuffers;
  // Takes every buffer of a forward over [B, N, E] inputs of dtype dt (parameters uploaded).
  void allocate_forward(Backend& be, int64_t B, int64_t N, DType dt, Activations& act);
  // The forward into buffers allocate_forward took; allocates nothing.
  void run_forward(Backend& be, const TensorView& x_q, const TensorView& x_k,
                   const TensorView& x_v, const TensorView& out, Activations& act);
  // Shapes, dtype and layout of named [B, N, E] views; the first is the reference.
  void check_inputs(std::initializer_list<std::pair<const TensorView*, const char*>> views) const;

  MultiheadConfig cfg_;
  MultiheadParams params_;
  std::unique_ptr<AttentionVariant> attention_;
  Preparation prepare_;
};

}  // namespace longattn
