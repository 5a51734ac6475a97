// The local-variant adapter of a DistributedAttention and the distributed multihead layer.
#include "attention/distributed_multihead.hpp"

#include <array>
#include <functional>
#include <string>
#include <vector>

#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

class LocalVariant final : public AttentionVariant {
 public:
  explicit LocalVariant(std::shared_ptr<DistributedAttention> attn)
      : attn_(std::move(attn)), variant_(make_attention(attn_->spec())) {}
  std::string name() const override { return attn_->name(); }
  const AttentionSpec& spec() const override { return attn_->spec(); }
  void validate(const Shape& local) const override {
    const Shape g = attn_->global_shape(local);
    validate_distributed(attn_->spec(), attn_->config(), attn_->comm().world(), &g);
  }
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    attn_->forward(be, q, k, v, o, lse);
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    attn_->backward(be, q, k, v, o, lse, d_o, dq, dk, dv);
  }
  double flops(const Shape& local) const override {
    return variant_->flops(attn_->global_shape(local)) / attn_->comm().world();
  }
  double density(const Shape& local) const override {
    return variant_->density(attn_->global_shape(local));
  }

 private:
  std::shared_ptr<DistributedAttention> attn_;
  std::unique_ptr<AttentionVariant> variant_;
};

std::array<Tensor*, 10> param_tensors(MultiheadParams& p) {
  return {&p.w_q, &p.w_k, &p.w_v,   &p.w_out,     &p.b_q,
          &p.b_k, &p.b_v, &p.b_out, &p.ln_weight, &p.ln_bias};
}

// Sums every element of the non-empty host tensors over all ranks (one all-reduce through
// `flat`, which holds them all).
void sum_over_ranks(Communicator& comm, const std::array<Tensor*, 10>& tensors,
                    std::vector<double>& flat) {
  size_t pos = 0;
  for (const Tensor* t : tensors) {
    const TensorView v = t->view();
    for (int64_t i = 0; i < t->numel(); ++i) flat[pos++] = load(v, 0, 0, 0, i);
  }
  LONGATTN_ASSERT(pos == flat.size(), "the parameter gradients fill the buffer of their sum");
  comm.allreduce_host(flat.data(), flat.size(), ReduceOp::Sum,
                      CommOp{"multihead parameter gradients", -1});
  pos = 0;
  for (Tensor* t : tensors) {
    const TensorView v = t->view();
    for (int64_t i = 0; i < t->numel(); ++i) store(v, 0, 0, 0, i, flat[pos++]);
  }
}

}  // namespace

std::unique_ptr<AttentionVariant> as_local_variant(std::shared_ptr<DistributedAttention> attn) {
  LONGATTN_CHECK_ARG(attn != nullptr, "attention", "null", "must be a distributed attention");
  return std::make_unique<LocalVariant>(std::move(attn));
}

DistributedMultihead::DistributedMultihead(const MultiheadConfig& cfg, const DistConfig& dist,
                                           Communicator& comm)
    : comm_(comm) {
  validate_multihead(cfg);
  attn_ = make_distributed_attention(cfg.attention, dist, comm);
  // The parameters and the buffer of the gradient sum are taken on every rank, then agreed on.
  run_and_agree(comm_, "distributed multihead parameters", [&] {
    layer_ = std::make_unique<MultiheadDilatedAttention>(
        cfg, as_local_variant(attn_),
        [this](const std::string& op, const std::function<void()>& allocate) {
          run_and_agree(comm_, "distributed " + op, allocate);
        });
    size_t n = 0;
    for (const Tensor* t : param_tensors(layer_->params())) n += static_cast<size_t>(t->numel());
    grad_sum_.assign(n, 0.0);
  });
}

Shape DistributedMultihead::local_shape(int64_t B, int64_t N) const {
  const MultiheadConfig& c = layer_->config();
  const Shape l = attn_->local_shape(Shape{B, N, c.num_heads, c.embed_dim / c.num_heads});
  return Shape{l.B, l.N, 1, c.embed_dim};
}

void DistributedMultihead::forward(Backend& be, const TensorView& x_q, const TensorView& x_k,
                                   const TensorView& x_v, const TensorView& out) {
  layer_->forward(be, x_q, x_k, x_v, out);
}

void DistributedMultihead::backward(Backend& be, const TensorView& x_q, const TensorView& x_k,
                                    const TensorView& x_v, const TensorView& d_out,
                                    const TensorView& d_x_q, const TensorView& d_x_k,
                                    const TensorView& d_x_v, MultiheadParams& grads) {
  // The layer takes every buffer, grads included, before the attention's first exchange and
  // agrees on it; the sum goes through a buffer taken at construction.
  layer_->backward(be, x_q, x_k, x_v, d_out, d_x_q, d_x_k, d_x_v, grads);
  sum_over_ranks(comm_, param_tensors(grads), grad_sum_);
}

}  // namespace longattn
