// Multihead dilated attention: Linear projections as Backend::gemm calls (bias added as a rank-1
// update ones * b), the attention variant on the [B, N, H, E/H] view of the projections, the
// sub-LayerNorm on the host, and the output projection; backward in reverse order.
#include "attention/multihead.hpp"

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/error.hpp"

namespace longattn {

AttentionSpec default_multihead_attention() {
  AttentionSpec s;
  s.variant = "dilated";
  return s;
}

void validate_multihead(const MultiheadConfig& cfg) {
  LONGATTN_CHECK_ARG(cfg.embed_dim > 0, "embed_dim", cfg.embed_dim, "must be positive");
  LONGATTN_CHECK_ARG(cfg.num_heads > 0, "num_heads", cfg.num_heads, "must be positive");
  LONGATTN_CHECK_ARG(cfg.embed_dim % cfg.num_heads == 0, "embed_dim", cfg.embed_dim,
                     "must be divisible by num_heads = " + std::to_string(cfg.num_heads));
  LONGATTN_CHECK_ARG(cfg.embed_dim / cfg.num_heads <= 256, "head_dim",
                     cfg.embed_dim / cfg.num_heads, "embed_dim / num_heads must be <= 256");
  LONGATTN_CHECK_ARG(cfg.dropout >= 0.0 && cfg.dropout <= 1.0, "dropout", cfg.dropout,
                     "must be in [0, 1]");
  LONGATTN_CHECK_ARG(cfg.dropout == 0.0, "dropout", cfg.dropout,
                     "only 0 is supported: attention dropout is not implemented yet");
  LONGATTN_CHECK_ARG(cfg.layer_norm_eps > 0.0, "layer_norm_eps", cfg.layer_norm_eps,
                     "must be positive");
  LONGATTN_CHECK_ARG(cfg.gamma_init > 0.0, "gamma_init", cfg.gamma_init, "must be positive");
  LONGATTN_CHECK_ARG(cfg.param_dtype == DType::F32 || cfg.param_dtype == DType::F64,
                     "param_dtype", dtype_name(cfg.param_dtype), "must be fp32 or fp64");
  make_attention(cfg.attention);  // unknown variant names throw, listing the valid ones
}

namespace {

// Rows of a [B, N, H, D] view as a row-major [B*N, H*D] matrix: needs rows of H*D contiguous
// elements and batches N rows apart.
bool matrix_layout_ok(const TensorView& t) {
  return t.sd == 1 && (t.H == 1 || t.sh == t.D) && (t.B == 1 || t.sb == t.N * t.sn);
}
MatrixView as_matrix(const TensorView& t) {
  return MatrixView{t.data, t.dtype, t.B * t.N, t.H * t.D, t.sn};
}
// A [1, R, 1, C] parameter (weight R = C = E, vector R = 1) as an R x C matrix.
MatrixView param_matrix(const DeviceTensor& t) {
  const TensorView& v = t.view();
  return MatrixView{v.data, v.dtype, v.N, v.D, v.D};
}

uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (stream + 1) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

DeviceTensor upload_param(Backend& be, const Tensor& host, DType dtype) {
  const auto s = host.shape();
  DeviceTensor d(be, dtype, s[0], s[1], s[2], s[3]);
  be.upload(d.view(), host.view());
  return d;
}

}  // namespace

// What the backward needs from the forward, all on the backend except the LayerNorm statistics
// and the host rows the LayerNorm works on.
struct MultiheadDilatedAttention::Activations {
  DType dtype = DType::F32;
  DeviceTensor ones;  // [1, B*N, 1, 1], the left factor of the bias rank-1 updates
  DeviceTensor w_q, w_k, w_v, w_out, b_q, b_k, b_v, b_out;  // parameters in the input dtype
  DeviceTensor q, k, v, attn, lse;  // projections [B, N, H, E/H], attention output and its L
  DeviceTensor normed;              // LayerNorm(attn), when layer_norm
  Tensor rows;                      // fp64 host rows of the LayerNorm, when layer_norm
  std::vector<double> mean, rstd;   // LayerNorm statistics per row of attn
};

// What the backward takes besides the forward's activations.
struct MultiheadDilatedAttention::BackwardBuffers {
  DeviceTensor out;         // the recomputed forward's output
  DeviceTensor d_pre;       // gradient of the out_proj input
  DeviceTensor d_attn;      // gradient of the attention output, when layer_norm
  DeviceTensor dq, dk, dv;  // gradients of the projections
  DeviceTensor dw, db;      // one Linear's weight and bias gradients, reused by all four
  Tensor g;                 // fp64 host rows of the LayerNorm backward, when layer_norm
  std::vector<double> ln_dw, ln_db, ln_w;
};

MultiheadDilatedAttention::MultiheadDilatedAttention(const MultiheadConfig& cfg)
    : MultiheadDilatedAttention(cfg, nullptr) {}

MultiheadDilatedAttention::MultiheadDilatedAttention(const MultiheadConfig& cfg,
                                                     std::unique_ptr<AttentionVariant> attention,
                                                     Preparation prepare)
    : cfg_(cfg), prepare_(std::move(prepare)) {
  if (!prepare_)
    prepare_ = [](const std::string&, const std::function<void()>& allocate) { allocate(); };
  validate_multihead(cfg_);
  attention_ = attention ? std::move(attention) : make_attention(cfg_.attention);
  const int64_t E = cfg_.embed_dim;
  const DType pt = cfg_.param_dtype;
  // xavier-normal: std = gain * sqrt(2 / (fan_in + fan_out)), fan_in = fan_out = E.
  const double base_std = std::sqrt(2.0 / static_cast<double>(E + E));
  params_.w_q = Tensor::randn(pt, 1, E, 1, E, mix_seed(cfg_.seed, 0), base_std);
  params_.w_k = Tensor::randn(pt, 1, E, 1, E, mix_seed(cfg_.seed, 1), base_std);
  params_.w_v = Tensor::randn(pt, 1, E, 1, E, mix_seed(cfg_.seed, 2), cfg_.gamma_init * base_std);
  params_.w_out =
      Tensor::randn(pt, 1, E, 1, E, mix_seed(cfg_.seed, 3), cfg_.gamma_init * base_std);
  if (cfg_.bias) {
    params_.b_q = Tensor::zeros(pt, 1, 1, 1, E);
    params_.b_k = Tensor::zeros(pt, 1, 1, 1, E);
    params_.b_v = Tensor::zeros(pt, 1, 1, 1, E);
    params_.b_out = Tensor::zeros(pt, 1, 1, 1, E);
  }
  if (cfg_.layer_norm) {
    params_.ln_weight = Tensor(pt, 1, 1, 1, E);
    params_.ln_weight.fill(1.0);
    params_.ln_bias = Tensor::zeros(pt, 1, 1, 1, E);
  }
}

void MultiheadDilatedAttention::check_inputs(
    std::initializer_list<std::pair<const TensorView*, const char*>> views) const {
  const int64_t E = cfg_.embed_dim;
  const TensorView& ref = *views.begin()->first;
  for (const auto& [t, name] : views) {
    check_have_memory({{name, *t}});
    LONGATTN_CHECK_ARG(t->H * t->D == E, name, t->shape_string(),
                       "last dimension must be embed_dim = " + std::to_string(E));
    LONGATTN_CHECK_ARG(t->B == ref.B && t->N == ref.N, name, t->shape_string(),
                       "batch and sequence length must match x_q " + ref.shape_string());
    LONGATTN_CHECK_ARG(t->dtype == ref.dtype, name, dtype_name(t->dtype),
                       std::string("must have the dtype of x_q, ") + dtype_name(ref.dtype));
    LONGATTN_CHECK_ARG(matrix_layout_ok(*t), name, t->shape_string(),
                       "rows of embed_dim must be contiguous and batches N rows apart");
  }
}

void MultiheadDilatedAttention::allocate_forward(Backend& be, int64_t B, int64_t N, DType dt,
                                                 Activations& act) {
  const int64_t E = cfg_.embed_dim, H = cfg_.num_heads, Dh = E / H, M = B * N;
  act.dtype = dt;
  act.w_q = upload_param(be, params_.w_q, dt);
  act.w_k = upload_param(be, params_.w_k, dt);
  act.w_v = upload_param(be, params_.w_v, dt);
  act.w_out = upload_param(be, params_.w_out, dt);
  if (cfg_.bias) {
    act.b_q = upload_param(be, params_.b_q, dt);
    act.b_k = upload_param(be, params_.b_k, dt);
    act.b_v = upload_param(be, params_.b_v, dt);
    act.b_out = upload_param(be, params_.b_out, dt);
  }
  act.ones = DeviceTensor(be, dt, 1, M, 1, 1);
  act.q = DeviceTensor(be, dt, B, N, H, Dh);
  act.k = DeviceTensor(be, dt, B, N, H, Dh);
  act.v = DeviceTensor(be, dt, B, N, H, Dh);
  act.attn = DeviceTensor(be, dt, B, N, H, Dh);
  act.lse = DeviceTensor(be, dt == DType::F64 ? DType::F64 : DType::F32, B, N, H, 1);
  if (cfg_.layer_norm) {
    act.normed = DeviceTensor(be, dt, B, N, H, Dh);
    act.rows = Tensor(DType::F64, B, N, H, Dh);
    act.mean.assign(static_cast<size_t>(M), 0.0);
    act.rstd.assign(static_cast<size_t>(M), 0.0);
  }
}

void MultiheadDilatedAttention::run_forward(Backend& be, const TensorView& x_q,
                                            const TensorView& x_k, const TensorView& x_v,
                                            const TensorView& out, Activations& act) {
  const int64_t B = x_q.B, N = x_q.N, E = cfg_.embed_dim;
  const int64_t M = B * N;
  const DType dt = act.dtype;
  be.fill(act.ones.view(), 1.0);
  const MatrixView ones{act.ones.data(), dt, M, 1, 1};

  // y = x W^T (+ ones b).
  auto linear = [&](const TensorView& x, const DeviceTensor& w, const DeviceTensor& b,
                    const TensorView& y) {
    be.gemm(false, true, 1.0, as_matrix(x), param_matrix(w), 0.0, as_matrix(y));
    if (cfg_.bias) be.gemm(false, false, 1.0, ones, param_matrix(b), 1.0, as_matrix(y));
  };
  linear(x_q, act.w_q, act.b_q, act.q.view());
  linear(x_k, act.w_k, act.b_k, act.k.view());
  linear(x_v, act.w_v, act.b_v, act.v.view());

  attention_->forward(be, act.q.view(), act.k.view(), act.v.view(), act.attn.view(),
                      act.lse.view());

  const DeviceTensor* pre_out = &act.attn;
  if (cfg_.layer_norm) {
    // Host LayerNorm over the E features of each row: y = (x - mean) * rstd * w + b.
    be.download(act.rows.view(), act.attn.view());
    double* p = static_cast<double*>(act.rows.data());
    for (int64_t r = 0; r < M; ++r) {
      double* row = p + r * E;
      double mean = 0.0, var = 0.0;
      for (int64_t e = 0; e < E; ++e) mean += row[e];
      mean /= static_cast<double>(E);
      for (int64_t e = 0; e < E; ++e) var += (row[e] - mean) * (row[e] - mean);
      var /= static_cast<double>(E);
      const double rstd = 1.0 / std::sqrt(var + cfg_.layer_norm_eps);
      act.mean[r] = mean;
      act.rstd[r] = rstd;
      for (int64_t e = 0; e < E; ++e)
        row[e] = (row[e] - mean) * rstd * params_.ln_weight.at(0, 0, 0, e) +
                 params_.ln_bias.at(0, 0, 0, e);
    }
    be.upload(act.normed.view(), act.rows.view());
    pre_out = &act.normed;
  }
  linear(pre_out->view(), act.w_out, act.b_out, out);
}

void MultiheadDilatedAttention::forward(Backend& be, const TensorView& x_q,
                                        const TensorView& x_k, const TensorView& x_v,
                                        const TensorView& out) {
  check_inputs({{&x_q, "x_q"}, {&x_k, "x_k"}, {&x_v, "x_v"}, {&out, "out"}});
  const int64_t H = cfg_.num_heads;
  attention_->validate(Shape{x_q.B, x_q.N, H, cfg_.embed_dim / H});
  Activations act;
  prepare_("multihead forward", [&] { allocate_forward(be, x_q.B, x_q.N, x_q.dtype, act); });
  run_forward(be, x_q, x_k, x_v, out, act);
}

void MultiheadDilatedAttention::backward(Backend& be, const TensorView& x_q,
                                         const TensorView& x_k, const TensorView& x_v,
                                         const TensorView& d_out, const TensorView& d_x_q,
                                         const TensorView& d_x_k, const TensorView& d_x_v,
                                         MultiheadParams& grads) {
  check_inputs({{&x_q, "x_q"}, {&x_k, "x_k"}, {&x_v, "x_v"}, {&d_out, "d_out"},
                {&d_x_q, "d_x_q"}, {&d_x_k, "d_x_k"}, {&d_x_v, "d_x_v"}});
  const int64_t B = x_q.B, N = x_q.N, E = cfg_.embed_dim, H = cfg_.num_heads, Dh = E / H;
  const int64_t M = B * N;
  attention_->validate(Shape{B, N, H, Dh});
  const DType dt = x_q.dtype;
  const DType gdt = dt == DType::F64 ? DType::F64 : DType::F32;  // parameter gradients
  const DType pt = cfg_.param_dtype;
  Activations act;
  BackwardBuffers buf;
  prepare_("multihead backward", [&] {
    allocate_forward(be, B, N, dt, act);
    buf.out = DeviceTensor(be, dt, B, N, 1, E);
    buf.d_pre = DeviceTensor(be, dt, B, N, H, Dh);
    if (cfg_.layer_norm) {
      buf.d_attn = DeviceTensor(be, dt, B, N, H, Dh);
      buf.g = Tensor(DType::F64, B, N, H, Dh);
      buf.ln_dw.assign(static_cast<size_t>(E), 0.0);
      buf.ln_db.assign(static_cast<size_t>(E), 0.0);
      buf.ln_w.assign(static_cast<size_t>(E), 0.0);
    }
    buf.dq = DeviceTensor(be, dt, B, N, H, Dh);
    buf.dk = DeviceTensor(be, dt, B, N, H, Dh);
    buf.dv = DeviceTensor(be, dt, B, N, H, Dh);
    buf.dw = DeviceTensor(be, gdt, 1, E, 1, E);
    for (Tensor* w : {&grads.w_q, &grads.w_k, &grads.w_v, &grads.w_out})
      *w = Tensor(pt, 1, E, 1, E);
    for (Tensor* b : {&grads.b_q, &grads.b_k, &grads.b_v, &grads.b_out})
      *b = cfg_.bias ? Tensor(pt, 1, 1, 1, E) : Tensor();
    if (cfg_.bias) buf.db = DeviceTensor(be, gdt, 1, 1, 1, E);
    for (Tensor* t : {&grads.ln_weight, &grads.ln_bias})
      *t = cfg_.layer_norm ? Tensor(pt, 1, 1, 1, E) : Tensor();
  });
  run_forward(be, x_q, x_k, x_v, buf.out.view(), act);
  const MatrixView ones{act.ones.data(), dt, M, 1, 1};

  // Linear backward for y = x W^T + b: dx = dy W, dW = dy^T x, db = ones^T dy.
  auto linear_backward = [&](const TensorView& x, const DeviceTensor& w, const TensorView& dy,
                             const TensorView& dx, Tensor& gw, Tensor& gb) {
    be.gemm(false, false, 1.0, as_matrix(dy), param_matrix(w), 0.0, as_matrix(dx));
    be.gemm(true, false, 1.0, as_matrix(dy), as_matrix(x), 0.0, param_matrix(buf.dw));
    be.download(gw.view(), buf.dw.view());
    if (cfg_.bias) {
      be.gemm(true, false, 1.0, ones, as_matrix(dy), 0.0, param_matrix(buf.db));
      be.download(gb.view(), buf.db.view());
    }
  };

  const DeviceTensor& pre_out = cfg_.layer_norm ? act.normed : act.attn;
  linear_backward(pre_out.view(), act.w_out, d_out, buf.d_pre.view(), grads.w_out, grads.b_out);

  const DeviceTensor* d_attn = &buf.d_pre;
  if (cfg_.layer_norm) {
    // x_hat = (x - mean) rstd, y = x_hat w + b:
    //   dw = sum_rows dy x_hat, db = sum_rows dy, g = dy w,
    //   dx = rstd (g - mean_e(g) - x_hat mean_e(g x_hat)).
    Tensor& x = act.rows;
    be.download(x.view(), act.attn.view());
    be.download(buf.g.view(), buf.d_pre.view());
    double* px = static_cast<double*>(x.data());
    double* pg = static_cast<double*>(buf.g.data());
    std::vector<double>& dw = buf.ln_dw;
    std::vector<double>& db = buf.ln_db;
    std::vector<double>& w = buf.ln_w;
    for (int64_t e = 0; e < E; ++e) w[e] = params_.ln_weight.at(0, 0, 0, e);
    for (int64_t r = 0; r < M; ++r) {
      double* xr = px + r * E;
      double* gr = pg + r * E;
      double mean_g = 0.0, mean_gx = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        const double xh = (xr[e] - act.mean[r]) * act.rstd[r];
        dw[e] += gr[e] * xh;
        db[e] += gr[e];
        xr[e] = xh;
        gr[e] *= w[e];
        mean_g += gr[e];
        mean_gx += gr[e] * xh;
      }
      mean_g /= static_cast<double>(E);
      mean_gx /= static_cast<double>(E);
      for (int64_t e = 0; e < E; ++e)
        gr[e] = act.rstd[r] * (gr[e] - mean_g - xr[e] * mean_gx);
    }
    for (int64_t e = 0; e < E; ++e) {
      grads.ln_weight.set(0, 0, 0, e, dw[e]);
      grads.ln_bias.set(0, 0, 0, e, db[e]);
    }
    be.upload(buf.d_attn.view(), buf.g.view());
    d_attn = &buf.d_attn;
  }

  attention_->backward(be, act.q.view(), act.k.view(), act.v.view(), act.attn.view(),
                       act.lse.view(), d_attn->view(), buf.dq.view(), buf.dk.view(), buf.dv.view());
  linear_backward(x_q, act.w_q, buf.dq.view(), d_x_q, grads.w_q, grads.b_q);
  linear_backward(x_k, act.w_k, buf.dk.view(), d_x_k, grads.w_k, grads.b_k);
  linear_backward(x_v, act.w_v, buf.dv.view(), d_x_v, grads.w_v, grads.b_v);
}

}  // namespace longattn
