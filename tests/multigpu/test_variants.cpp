// Every distributed variant on GPUs (one rank per GPU, NCCL), forward and backward, fp32 and
// bf16, causal and not: equal to the same variant on one GPU and to the fp64 CPU reference
// (rules in multigpu_env.hpp), with the communication counters each mode promises; the
// counters agree with what NCCL moved; memory per GPU shrinks with the number of ranks.
#include <gtest/gtest.h>

#include <cctype>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "attention/distributed_multihead.hpp"
#include "attention/patterns.hpp"
#include "kernels/cuda/cuda_backend.hpp"
#include "multigpu_env.hpp"

namespace longattn {
namespace {

using testing::expect_matches;
using testing::test_backend;
using testing::test_comm;

constexpr int64_t kBlock = 64;  // the CUDA kernels' smallest block

// Sequence length for P ranks: zigzag pieces of at least one block, and a multiple of the
// largest dilated segment (512) so dilated segments span several ranks.
int64_t seq_len(int P) { return 128 * std::lcm(P, 4); }

struct VariantCase {
  std::string name;
  AttentionSpec spec;
  DistConfig cfg;
  int64_t B = 1, H = 2, D = 64;
  bool batch_per_rank = false;  // data_parallel: B = P
};

SparseConfig pattern(const std::string& name) {
  SparseConfig c;
  c.pattern = name;
  c.block_size = kBlock;
  if (name == "local_window") {
    c.window_size = 2 * kBlock;
    c.window_given = true;
  } else if (name == "dilated_sparse") {
    c.dilation_rates = {1, 3};
    c.rates_given = true;
  } else if (name == "global_local") {
    c.window_size = 2 * kBlock;
    c.global_tokens = kBlock;
    c.window_given = c.global_given = true;
  } else if (name == "random") {
    c.sparsity_ratio = 0.4;
    c.seed = 11;
  } else if (name == "content_adaptive") {
    c.topk = 3;
  }
  return c;
}

// Distributed dilated longnet with the given segments, rates and pass rows.
VariantCase longnet_case(const char* name, std::vector<int64_t> segments,
                         std::vector<int64_t> rates, int64_t pass_rows, int64_t B, int64_t H) {
  VariantCase c;
  c.name = name;
  c.spec.variant = "dilated";
  c.spec.block_size = kBlock;
  c.spec.dilated.segment_lengths = std::move(segments);
  c.spec.dilated.dilation_rates = std::move(rates);
  c.spec.dilated.mode = DilatedMode::LongNet;
  c.spec.dilated.pass_rows = pass_rows;
  c.cfg = DistConfig{DistMode::Dilated, Sharding::Contiguous};
  c.B = B;
  c.H = H;
  return c;
}

std::vector<VariantCase> cases() {
  std::vector<VariantCase> v;
  for (Sharding sh : {Sharding::Contiguous, Sharding::Zigzag}) {
    VariantCase c;
    c.name = std::string("ring_") + sharding_name(sh);
    c.spec.variant = "dense";
    c.spec.block_size = kBlock;
    c.cfg = DistConfig{DistMode::Ring, sh};
    v.push_back(c);
  }
  struct Sp {
    const char* pattern;
    Sharding sharding;
    SparseRoute route;
  };
  for (const Sp& s : {Sp{"local_window", Sharding::Contiguous, SparseRoute::Direct},
                      Sp{"local_window", Sharding::Zigzag, SparseRoute::Ring},
                      Sp{"dilated_sparse", Sharding::Zigzag, SparseRoute::Direct},
                      Sp{"global_local", Sharding::Contiguous, SparseRoute::Ring},
                      Sp{"random", Sharding::Contiguous, SparseRoute::Direct},
                      Sp{"content_adaptive", Sharding::Zigzag, SparseRoute::Direct}}) {
    VariantCase c;
    c.name = std::string("block_sparse_ring_") + s.pattern + "_" + sharding_name(s.sharding) +
             "_" + sparse_route_name(s.route);
    c.spec.variant = "block_sparse";
    c.spec.sparse = pattern(s.pattern);
    c.cfg = DistConfig{DistMode::BlockSparseRing, s.sharding, s.route};
    v.push_back(c);
  }
  {  // the backward on each rank's own K/V in chunks of one block (fp32 dQ per chunk)
    VariantCase c;
    c.name = "block_sparse_ring_local_window_contiguous_direct_chunks";
    c.spec.variant = "block_sparse";
    c.spec.sparse = pattern("local_window");
    c.cfg = DistConfig{DistMode::BlockSparseRing, Sharding::Contiguous, SparseRoute::Direct};
    c.cfg.split_rows = kBlock;
    v.push_back(c);
  }
  for (DilatedMode mode : {DilatedMode::Groups, DilatedMode::LongNet}) {
    VariantCase c;
    c.name = mode == DilatedMode::Groups ? "dilated_groups" : "dilated_longnet";
    c.spec.variant = "dilated";
    c.spec.block_size = kBlock;
    c.spec.dilated.segment_lengths = {128, 256, 512};
    c.spec.dilated.dilation_rates = {1, 2, 4};
    c.spec.dilated.mode = mode;
    c.cfg = DistConfig{DistMode::Dilated, Sharding::Contiguous};
    c.H = 4;
    v.push_back(c);
  }
  {  // segments inside every shard: bf16 gradients through one call's fp32 scratches, calls of
     // one segment
    VariantCase c;
    c.name = "dilated_groups_local_split";
    c.spec.variant = "dilated";
    c.spec.block_size = kBlock;
    c.spec.dilated.segment_lengths = {64, 128};
    c.spec.dilated.dilation_rates = {1, 2};
    c.cfg = DistConfig{DistMode::Dilated, Sharding::Contiguous};
    c.cfg.split_rows = kBlock;
    c.H = 2;
    v.push_back(c);
  }
  // Longnet, segments inside every shard: with bf16 each rank runs the single-GPU variant on
  // its shard in row passes (here of one 128-row run each).
  v.push_back(longnet_case("dilated_longnet_on_shards", {64, 128}, {1, 2}, 128, 1, 2));
  // Longnet, a segment spanning every shard (512) beside ones inside them: with bf16 the
  // spanning branch's rows are computed first into buffers of those rows, then the shard goes
  // in row passes of one 64-row run each; two batches.
  v.push_back(longnet_case("dilated_longnet_spanning_passes", {64, 512}, {1, 4}, 64, 2, 4));
  // The same with branches small enough to be stored whole (128-row segments at rate 32: 4
  // rows of one head each), on 2 ranks; on 4 the 128-row shard is one pass.
  v.push_back(longnet_case("dilated_longnet_spanning_small", {64, 128, 512}, {1, 32, 4}, 64, 2, 4));
  for (const char* variant : {"dense", "dilated"}) {
    VariantCase c;
    c.name = std::string("data_parallel_") + variant;
    c.spec.variant = variant;
    c.spec.block_size = kBlock;
    c.spec.dilated.segment_lengths = {128, 256};
    c.spec.dilated.dilation_rates = {1, 2};
    c.cfg = DistConfig{DistMode::DataParallel, Sharding::Contiguous};
    c.batch_per_rank = true;
    v.push_back(c);
  }
  return v;
}

struct Param {
  int index;
  bool causal;
  DType dtype;
};

std::vector<Param> params() {
  std::vector<Param> p;
  for (int i = 0; i < static_cast<int>(cases().size()); ++i)
    for (bool causal : {false, true})
      for (DType dt : {DType::F32, DType::BF16}) p.push_back(Param{i, causal, dt});
  return p;
}

class DistributedOnGpus : public ::testing::TestWithParam<Param> {};

TEST_P(DistributedOnGpus, MatchesSingleGpuAndCpuReference) {
  const Param prm = GetParam();
  VariantCase c = cases()[static_cast<size_t>(prm.index)];
  c.spec.causal = prm.causal;
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  const Shape g{c.batch_per_rank ? P : c.B, seq_len(P), c.H, c.D};
  const auto in = testing::random_inputs(g, prm.dtype,
                                         1000 + 16 * static_cast<uint64_t>(prm.index) +
                                             (prm.causal ? 8 : 0) +
                                             (prm.dtype == DType::BF16 ? 4 : 0));
  const bool root = comm.rank() == 0;
  DistributedInputs din;
  if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  const DistributedResult r = run_distributed(c.spec, c.cfg, comm, be, din, true);

  // Counters of this rank, by mode.
  const int64_t kv_bytes = 2 * g.B * (g.N / P) * g.H * g.D *
                           static_cast<int64_t>(dtype_size(prm.dtype));
  switch (c.cfg.mode) {
    case DistMode::Ring:
      EXPECT_EQ(r.forward.steps, P);
      EXPECT_EQ(r.forward.hops, P - 1);
      EXPECT_EQ(r.forward.bytes_sent, (P - 1) * kv_bytes);
      EXPECT_EQ(r.forward.bytes_received, (P - 1) * kv_bytes);
      EXPECT_EQ(r.backward.hops, P - 1);
      break;
    case DistMode::BlockSparseRing:
      EXPECT_LE(r.forward.steps, P);
      EXPECT_LE(r.forward.bytes_sent, (P - 1) * kv_bytes);
      EXPECT_GT(r.forward_total.blocks_computed, 0);
      break;
    case DistMode::Dilated:
      EXPECT_GE(r.forward.steps, 1);
      if (P == 1) EXPECT_EQ(r.forward.bytes_sent, 0);
      break;
    case DistMode::DataParallel:
      EXPECT_EQ(r.forward.hops, 0);
      EXPECT_EQ(r.forward.bytes_sent, 0);
      EXPECT_EQ(r.backward.bytes_sent, 0);
      break;
  }
  EXPECT_GT(r.peak_bytes, 0u);
  if (!root) return;
  const testing::Outputs single = testing::single_gpu(c.spec, in, true);
  const testing::Outputs ref = testing::cpu_reference(c.spec, in, true);
  expect_matches("o", prm.dtype, r.o.view(), single.o.view(), ref.o.view());
  expect_matches("lse", prm.dtype, r.lse.view(), single.lse.view(), ref.lse.view());
  expect_matches("dq", prm.dtype, r.dq.view(), single.dq.view(), ref.dq.view());
  expect_matches("dk", prm.dtype, r.dk.view(), single.dk.view(), ref.dk.view());
  expect_matches("dv", prm.dtype, r.dv.view(), single.dv.view(), ref.dv.view());
}

INSTANTIATE_TEST_SUITE_P(
    EveryVariant, DistributedOnGpus, ::testing::ValuesIn(params()),
    [](const ::testing::TestParamInfo<Param>& info) {
      return cases()[static_cast<size_t>(info.param.index)].name +
             (info.param.causal ? "_causal_" : "_full_") + dtype_name(info.param.dtype);
    });

// What NCCL moved is what the ring's counters say, forward and backward, on the shard-level
// API (no scatter or gather in between); sparse patterns move less than the dense ring.
TEST(DistributedOnGpus, CountersAgreeWithNcclBytes) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  CudaBackend& cuda = as_cuda(be);
  const int P = comm.world();
  const Shape g{1, seq_len(P), 2, 64};
  int64_t dense_sent = 0;
  for (const char* variant : {"dense", "block_sparse"}) {
    SCOPED_TRACE(variant);
    AttentionSpec spec;
    spec.variant = variant;
    spec.causal = true;
    spec.block_size = kBlock;
    spec.sparse = pattern("local_window");
    const DistConfig cfg{std::string(variant) == "dense" ? DistMode::Ring
                                                         : DistMode::BlockSparseRing,
                         Sharding::Zigzag, SparseRoute::Direct};
    auto attn = make_distributed_attention(spec, cfg, comm);
    const Shape l = attn->local_shape(g);
    auto local = [&](DType t, int64_t d) { return DeviceTensor(be, t, l.B, l.N, l.H, d); };
    DeviceTensor q = local(DType::BF16, l.D), k = local(DType::BF16, l.D),
                 v = local(DType::BF16, l.D), o = local(DType::BF16, l.D),
                 lse = local(DType::F32, 1), d_o = local(DType::BF16, l.D),
                 dq = local(DType::BF16, l.D), dk = local(DType::BF16, l.D),
                 dv = local(DType::BF16, l.D);
    uint64_t seed = 50 + 10 * static_cast<uint64_t>(comm.rank());
    for (DeviceTensor* t : {&q, &k, &v, &d_o}) cuda.randn(t->view(), ++seed);
    const NcclStats s0 = comm.stats();
    attn->forward(be, q.view(), k.view(), v.view(), o.view(), lse.view());
    const DistCounters fwd = attn->counters();
    const NcclStats s1 = comm.stats();
    attn->backward(be, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(), dq.view(),
                   dk.view(), dv.view());
    const DistCounters bwd = attn->counters();
    const NcclStats s2 = comm.stats();
    EXPECT_EQ(s1.bytes_sent - s0.bytes_sent, fwd.bytes_sent);
    EXPECT_EQ(s1.bytes_received - s0.bytes_received, fwd.bytes_received);
    // A hop is two messages, K then V, where the rows travel in place (a whole shard, or one
    // run of rows at batch 1), else one staged message.
    if (std::string(variant) == "dense") {
      EXPECT_EQ(s1.sends - s0.sends, 2 * fwd.hops);
    } else {
      EXPECT_GE(s1.sends - s0.sends, fwd.hops);
      EXPECT_LE(s1.sends - s0.sends, 2 * fwd.hops);
    }
    EXPECT_EQ(s2.bytes_sent - s1.bytes_sent, bwd.bytes_sent);
    EXPECT_EQ(s2.bytes_received - s1.bytes_received, bwd.bytes_received);
    if (std::string(variant) == "dense") {
      dense_sent = fwd.bytes_sent;
      EXPECT_EQ(fwd.hops, P - 1);
    } else if (P > 2) {
      EXPECT_LT(fwd.bytes_sent, dense_sent) << "a local window needs only the neighbours' blocks";
    }
  }
}

// Peak device memory per rank of the ring's forward and backward falls like 1/P against the
// single-GPU run of the same global problem (inputs, outputs and workspace counted).
TEST(DistributedOnGpus, PeakMemoryPerGpuShrinksWithRanks) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  const Shape g{1, 2048 * P, 4, 64};
  AttentionSpec spec;
  spec.causal = true;
  spec.block_size = kBlock;
  const auto in = testing::random_inputs(g, DType::BF16, 77);
  DistributedInputs din;
  if (comm.rank() == 0)
    din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
  be.reset_peak();
  const size_t base = as_cuda(be).current_bytes();
  const DistributedResult r =
      run_distributed(spec, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm, be, din, true);
  const size_t dist_peak = r.peak_bytes - base;
  size_t single_peak = dist_peak * P;
  if (comm.rank() == 0) {
    be.reset_peak();
    const size_t b0 = as_cuda(be).current_bytes();
    (void)testing::single_gpu(spec, in, true);
    single_peak = be.peak_bytes() - b0;
  }
  comm.broadcast_host(&single_peak, sizeof(single_peak), 0, CommOp{"single-GPU peak", -1});
  std::cout << "[rank " << comm.rank() << "] peak device memory: ring over " << P << " GPUs "
            << dist_peak / (1 << 20) << " MiB, one GPU " << single_peak / (1 << 20) << " MiB"
            << std::endl;
  EXPECT_LE(static_cast<double>(dist_peak) * P, 4.0 * static_cast<double>(single_peak));
}

// Multihead attention over the ring: projections per rank, attention distributed, parameter
// gradients summed over ranks; equal to the single-GPU layer and the fp64 CPU layer.
TEST(DistributedOnGpus, MultiheadOverTheRing) {
  NcclCommunicator& comm = test_comm();
  Backend& be = test_backend();
  const int P = comm.world();
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    MultiheadConfig cfg;
    cfg.embed_dim = 128;
    cfg.num_heads = 2;
    cfg.attention.variant = "dense";
    cfg.attention.causal = true;
    cfg.attention.block_size = kBlock;
    cfg.seed = 9;
    const int64_t B = 1, N = seq_len(P), E = cfg.embed_dim;
    const Tensor xq = Tensor::randn(dt, B, N, 1, E, 81), xk = Tensor::randn(dt, B, N, 1, E, 82),
                 xv = Tensor::randn(dt, B, N, 1, E, 83), dout = Tensor::randn(dt, B, N, 1, E, 84);
    struct Result {
      Tensor out, dxq, dxk, dxv;
      MultiheadParams g;
    };
    auto run_layer = [&](MultiheadDilatedAttention& layer, Backend& b, DType t) {
      Result res;
      auto dev = [&](const Tensor& h) {
        DeviceTensor d(b, t, B, N, 1, E);
        b.upload(d.view(), h.view());
        return d;
      };
      DeviceTensor q = dev(xq), k = dev(xk), v = dev(xv), d = dev(dout), out(b, t, B, N, 1, E),
                   gq(b, t, B, N, 1, E), gk(b, t, B, N, 1, E), gv(b, t, B, N, 1, E);
      layer.forward(b, q.view(), k.view(), v.view(), out.view());
      layer.backward(b, q.view(), k.view(), v.view(), d.view(), gq.view(), gk.view(), gv.view(),
                     res.g);
      auto fetch = [&](const DeviceTensor& x) {
        Tensor h(DType::F64, B, N, 1, E);
        b.download(h.view(), x.view());
        return h;
      };
      res.out = fetch(out);
      res.dxq = fetch(gq);
      res.dxk = fetch(gk);
      res.dxv = fetch(gv);
      return res;
    };
    MultiheadDilatedAttention single_layer(cfg);
    const Result single = run_layer(single_layer, be, dt);
    auto cpu = make_cpu_backend();
    MultiheadDilatedAttention cpu_layer(cfg);
    const Result ref = run_layer(cpu_layer, *cpu, DType::F64);

    DistributedMultihead dist(cfg, DistConfig{DistMode::Ring, Sharding::Zigzag}, comm);
    const Shape l = dist.local_shape(B, N);
    auto shard = [&](const Tensor& full) {
      Tensor t(full.dtype(), l.B, l.N, 1, E);
      dist.attention().extract_local(comm.rank(), full.view(), t.view());
      return t;
    };
    auto dev = [&](const Tensor& h) {
      DeviceTensor d(be, dt, l.B, l.N, 1, E);
      be.upload(d.view(), h.view());
      return d;
    };
    DeviceTensor q = dev(shard(xq)), k = dev(shard(xk)), v = dev(shard(xv)), d = dev(shard(dout)),
                 out(be, dt, l.B, l.N, 1, E), gq(be, dt, l.B, l.N, 1, E),
                 gk(be, dt, l.B, l.N, 1, E), gv(be, dt, l.B, l.N, 1, E);
    MultiheadParams grads;
    dist.forward(be, q.view(), k.view(), v.view(), out.view());
    dist.backward(be, q.view(), k.view(), v.view(), d.view(), gq.view(), gk.view(), gv.view(),
                  grads);
    auto fetch = [&](const DeviceTensor& x) {
      Tensor h(DType::F64, l.B, l.N, 1, E);
      be.download(h.view(), x.view());
      return h;
    };
    expect_matches("out", dt, fetch(out).view(), shard(single.out).view(), shard(ref.out).view());
    expect_matches("d_x_q", dt, fetch(gq).view(), shard(single.dxq).view(),
                   shard(ref.dxq).view());
    expect_matches("d_x_k", dt, fetch(gk).view(), shard(single.dxk).view(),
                   shard(ref.dxk).view());
    expect_matches("d_x_v", dt, fetch(gv).view(), shard(single.dxv).view(),
                   shard(ref.dxv).view());
    const Tensor* mine[] = {&grads.w_q, &grads.w_k, &grads.w_v, &grads.w_out, &grads.b_q,
                            &grads.b_out, &grads.ln_weight, &grads.ln_bias};
    const Tensor* one[] = {&single.g.w_q, &single.g.w_k, &single.g.w_v, &single.g.w_out,
                           &single.g.b_q, &single.g.b_out, &single.g.ln_weight,
                           &single.g.ln_bias};
    const Tensor* exact[] = {&ref.g.w_q, &ref.g.w_k, &ref.g.w_v, &ref.g.w_out,
                             &ref.g.b_q, &ref.g.b_out, &ref.g.ln_weight, &ref.g.ln_bias};
    const char* names[] = {"grad w_q", "grad w_k", "grad w_v", "grad w_out",
                           "grad b_q", "grad b_out", "grad ln_weight", "grad ln_bias"};
    for (int i = 0; i < 8; ++i)
      expect_matches(names[i], dt, mine[i]->view(), one[i]->view(), exact[i]->view());
  }
}

}  // namespace
}  // namespace longattn
