// A minimal training loop on longattn's distributed ring attention, built against the installed
// package (find_package(longattn)). Each MPI rank holds a shard of the sequence, projects it to
// Q/K/V with weights every rank shares, runs causal ring attention forward, a mean-squared-error
// loss against a teacher's output, the ring backward, and an SGD step on the projection weights
// (gradients summed over ranks). Rank 0 prints the loss, which must fall, and a finite-difference
// check of the gradient; the exit code is 1 when either fails.
//
//   mpirun -np 4 ./train_step [steps] [learning_rate]
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/distributed.hpp"
#include "comm/mpi_communicator.hpp"
#include "kernels/backend.hpp"
#include "runtime/error.hpp"
#include "runtime/tensor.hpp"

namespace {

using namespace longattn;

// The model: x [B, n, 1, E] -> q, k, v = x * W_{q,k,v} viewed as [B, n, H, D] (E = H * D).
struct Sizes {
  static constexpr int64_t kBatch = 1, kHeads = 2, kHeadDim = 8;
  static constexpr int64_t kEmbed = kHeads * kHeadDim;
  // Rows per rank: two zigzag pieces of kPiece rows; kPiece is also the kernel block.
  static constexpr int64_t kPiece = 16;
};

struct Weights {
  Tensor wq, wk, wv;  // [1, E, 1, E]: row-major E x E matrices
};

MatrixView matrix(const Tensor& t, int64_t rows, int64_t cols) {
  return MatrixView{t.data(), t.dtype(), rows, cols, cols};
}

Weights random_weights(uint64_t seed) {
  const int64_t E = Sizes::kEmbed;
  const double stddev = 1.0 / std::sqrt(static_cast<double>(E));
  return Weights{Tensor::randn(DType::F64, 1, E, 1, E, seed, stddev),
                 Tensor::randn(DType::F64, 1, E, 1, E, seed + 1, stddev),
                 Tensor::randn(DType::F64, 1, E, 1, E, seed + 2, stddev)};
}

// Activations of one step on this rank's shard.
struct Activations {
  Tensor q, k, v, o, lse;
};

Activations forward(Backend& be, DistributedAttention& attn, const Tensor& x, const Weights& w) {
  const int64_t B = Sizes::kBatch, H = Sizes::kHeads, D = Sizes::kHeadDim, E = Sizes::kEmbed;
  const int64_t n = x.view().N, rows = B * n;
  Activations a{Tensor(DType::F64, B, n, H, D), Tensor(DType::F64, B, n, H, D),
                Tensor(DType::F64, B, n, H, D), Tensor(DType::F64, B, n, H, D),
                Tensor(DType::F64, B, n, H, 1)};
  be.gemm(false, false, 1.0, matrix(x, rows, E), matrix(w.wq, E, E), 0.0, matrix(a.q, rows, E));
  be.gemm(false, false, 1.0, matrix(x, rows, E), matrix(w.wk, E, E), 0.0, matrix(a.k, rows, E));
  be.gemm(false, false, 1.0, matrix(x, rows, E), matrix(w.wv, E, E), 0.0, matrix(a.v, rows, E));
  attn.forward(be, a.q.view(), a.k.view(), a.v.view(), a.o.view(), a.lse.view());
  return a;
}

// One rank's view of the task: its input shard, the teacher's output on it, and the loss.
struct Problem {
  Backend& be;
  Communicator& comm;
  DistributedAttention& attn;
  Tensor x;       // [B, n, 1, E] this rank's input rows
  Tensor target;  // [B, n, H, D] the teacher's output on them
  double count = 0.0;  // elements of the GLOBAL output

  // loss = mean over the global output of (o - target)^2, the same value on every rank.
  // With `d_o`, also writes dloss/do = 2 (o - target) / count for this rank's rows.
  double loss(const Activations& a, Tensor* d_o) const {
    const TensorView o = a.o.view();
    double sq = 0.0;
    for (int64_t b = 0; b < o.B; ++b)
      for (int64_t i = 0; i < o.N; ++i)
        for (int64_t h = 0; h < o.H; ++h)
          for (int64_t d = 0; d < o.D; ++d) {
            const double diff = a.o.at(b, i, h, d) - target.at(b, i, h, d);
            sq += diff * diff;
            if (d_o) d_o->set(b, i, h, d, 2.0 * diff / count);
          }
    comm.allreduce_host(&sq, 1, ReduceOp::Sum, CommOp{"loss"});
    return sq / count;
  }
  double loss(const Weights& w) { return loss(forward(be, attn, x, w), nullptr); }

  // The loss and its gradient with respect to the weights, summed over every rank's shard.
  double loss_and_gradient(const Weights& w, Weights& grad) {
    const int64_t E = Sizes::kEmbed, rows = x.view().B * x.view().N;
    Activations a = forward(be, attn, x, w);
    Tensor d_o(DType::F64, a.o.view().B, a.o.view().N, a.o.view().H, a.o.view().D);
    const double value = loss(a, &d_o);
    Tensor dq = d_o.clone(), dk = d_o.clone(), dv = d_o.clone();
    attn.backward(be, a.q.view(), a.k.view(), a.v.view(), a.o.view(), a.lse.view(), d_o.view(),
                  dq.view(), dk.view(), dv.view());
    // q = x W_q, so dW_q = x^T dq on this shard; the shards' sum is the full gradient.
    const std::array<std::pair<Tensor*, const Tensor*>, 3> layers{
        {{&grad.wq, &dq}, {&grad.wk, &dk}, {&grad.wv, &dv}}};
    for (const auto& [g, d_proj] : layers) {
      *g = Tensor(DType::F64, 1, E, 1, E);
      be.gemm(true, false, 1.0, matrix(x, rows, E), matrix(*d_proj, rows, E), 0.0,
              matrix(*g, E, E));
      comm.allreduce(g->data(), static_cast<size_t>(E * E), DType::F64, ReduceOp::Sum,
                     CommOp{"weight gradient"});
    }
    return value;
  }
};

// w + alpha * u, for every weight.
Weights shifted(Backend& be, const Weights& w, double alpha, const Weights& u) {
  Weights r{w.wq.clone(), w.wk.clone(), w.wv.clone()};
  be.axpy(r.wq.view(), alpha, u.wq.view());
  be.axpy(r.wk.view(), alpha, u.wk.view());
  be.axpy(r.wv.view(), alpha, u.wv.view());
  return r;
}

double dot(const Weights& a, const Weights& b) {
  double s = 0.0;
  for (auto [x, y] : {std::pair{&a.wq, &b.wq}, std::pair{&a.wk, &b.wk}, std::pair{&a.wv, &b.wv}})
    for (int64_t i = 0; i < x->numel(); ++i)
      s += static_cast<const double*>(x->data())[i] * static_cast<const double*>(y->data())[i];
  return s;
}

int run(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 8;
  const double lr = argc > 2 ? std::atof(argv[2]) : 0.5;
  LONGATTN_CHECK_ARG(steps >= 2, "steps", steps, "must be at least 2");
  LONGATTN_CHECK_ARG(lr > 0.0, "learning_rate", lr, "must be positive");

  auto comm = make_mpi_communicator();
  auto be = make_cpu_backend(1);
  const int rank = comm->rank(), world = comm->world();

  // Causal dense attention, K/V rotating around the ring, zigzag shards for causal balance.
  AttentionSpec spec;
  spec.variant = "dense";
  spec.causal = true;
  spec.block_size = Sizes::kPiece;
  auto attn = make_distributed_attention(spec, DistConfig{DistMode::Ring, Sharding::Zigzag}, *comm);

  const int64_t B = Sizes::kBatch, H = Sizes::kHeads, D = Sizes::kHeadDim, E = Sizes::kEmbed;
  const int64_t N = 2 * Sizes::kPiece * world;  // global sequence length
  const int64_t n = attn->local_shape(Shape{B, N, H, D}).N;

  // The input sequence. A real job reads only its shard; here every rank draws the same full
  // sequence from a seed and keeps the rows the zigzag layout gives it.
  Tensor x_full = Tensor::randn(DType::F64, B, N, 1, E, 2024);
  Problem problem{*be, *comm, *attn, Tensor(DType::F64, B, n, 1, E), Tensor(), 0.0};
  attn->extract_local(rank, x_full.view(), problem.x.view());
  // The task: reproduce the output of a teacher with other projection weights.
  problem.target = forward(*be, *attn, problem.x, random_weights(7)).o;
  problem.count = static_cast<double>(B * N * H * D);
  Weights w = random_weights(100);

  std::vector<double> losses;
  bool gradient_ok = true;
  for (int step = 0; step < steps; ++step) {
    Weights grad;
    losses.push_back(problem.loss_and_gradient(w, grad));
    const DistCounters fwd = attn->counters();
    if (step == 0) {
      // The distributed backward agrees with a central difference of the distributed forward
      // along a random direction u: (L(w + eps u) - L(w - eps u)) / 2 eps = <grad, u>.
      const Weights u = random_weights(555);
      const double eps = 1e-5;
      const double numeric =
          (problem.loss(shifted(*be, w, eps, u)) - problem.loss(shifted(*be, w, -eps, u))) /
          (2.0 * eps);
      const double analytic = dot(grad, u);
      const double rel = std::abs(numeric - analytic) / std::max(std::abs(analytic), 1e-300);
      gradient_ok = rel < 1e-6;
      if (rank == 0)
        std::printf("train_step: %d ranks, causal ring attention (zigzag), N=%lld H=%lld "
                    "D=%lld, K/V hops per rank %lld\n"
                    "train_step: gradient check: analytic %.10e numeric %.10e rel. error %.1e %s\n"
                    "%6s %14s\n",
                    world, static_cast<long long>(N), static_cast<long long>(H),
                    static_cast<long long>(D), static_cast<long long>(fwd.hops), analytic,
                    numeric, rel, gradient_ok ? "ok" : "WRONG", "step", "loss");
    }
    if (rank == 0) std::printf("%6d %14.8f\n", step, losses.back());
    w = shifted(*be, w, -lr, grad);  // SGD
  }

  // Every step must improve on the last (the step size is small for this problem) and the
  // total fall must be clear; every rank reaches the same verdict from the same losses.
  bool decreasing = losses.back() < 0.9 * losses.front();
  for (size_t i = 1; i < losses.size(); ++i) decreasing = decreasing && losses[i] < losses[i - 1];
  if (rank == 0)
    std::printf("train_step: loss %.8f -> %.8f: %s\n", losses.front(), losses.back(),
                decreasing ? "decreasing" : "NOT decreasing");
  return decreasing && gradient_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<longattn::MpiSession> session;
  try {
    session = std::make_unique<longattn::MpiSession>(&argc, &argv);
    return run(argc, argv);
  } catch (const std::exception& e) {
    // Peers may still be waiting for this rank: end them all now, not at their timeout.
    std::fprintf(stderr, "train_step: %s\n", e.what());
    const int code = dynamic_cast<const longattn::InvalidArgument*>(&e) ? 2 : 1;
    if (session && session->info().world > 1) longattn::mpi_abort(code);
    return code;
  }
}
