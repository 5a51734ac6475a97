// The distributed variants (ring, block-sparse ring, data-parallel; dilated lives in
// distributed_dilated.cpp), their validation and canonical description, the factory, and the
// scatter / run / gather helpers for programs that hold full tensors on rank 0.
#include "attention/distributed.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <sstream>

#include "attention/distributed_base.hpp"
#include "attention/patterns.hpp"
#include "attention/variant.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {

namespace {

constexpr const char* kPresetPrefix = "block_sparse:";

bool is_block_sparse_name(const std::string& v) {
  return v == "block_sparse" || v.rfind(kPresetPrefix, 0) == 0;
}

// "block_sparse:<preset>" as the factory reads it: the preset's pattern, the caller's seed and
// Hilbert ordering.
AttentionSpec normalized(const AttentionSpec& spec) {
  if (spec.variant.rfind(kPresetPrefix, 0) != 0) return spec;
  AttentionSpec s = spec;
  s.variant = "block_sparse";
  s.sparse = sparse_preset(spec.variant.substr(std::string(kPresetPrefix).size()));
  s.sparse.seed = spec.sparse.seed;
  s.sparse.hilbert = spec.sparse.hilbert;
  return s;
}

std::string exact(double x) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%a", x);
  return buf;
}

template <typename T>
std::string list(const std::vector<T>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
  os << "]";
  return os.str();
}

}  // namespace

const char* dist_mode_name(DistMode m) {
  switch (m) {
    case DistMode::Ring:
      return "ring";
    case DistMode::BlockSparseRing:
      return "block_sparse_ring";
    case DistMode::Dilated:
      return "dilated";
    case DistMode::DataParallel:
      return "data_parallel";
  }
  return "ring";
}

std::vector<std::string> dist_mode_names() {
  return {"ring", "block_sparse_ring", "dilated", "data_parallel"};
}

DistMode parse_dist_mode(const std::string& s, const std::string& arg) {
  for (DistMode m :
       {DistMode::Ring, DistMode::BlockSparseRing, DistMode::Dilated, DistMode::DataParallel})
    if (s == dist_mode_name(m)) return m;
  throw InvalidArgument(arg, s.empty() ? "(empty)" : s,
                        "must be one of ring, block_sparse_ring, dilated, data_parallel");
}

DistMode default_dist_mode(const AttentionSpec& spec) {
  if (is_block_sparse_name(spec.variant)) return DistMode::BlockSparseRing;
  if (spec.variant == "dilated") return DistMode::Dilated;
  return DistMode::Ring;
}

void validate_distributed(const AttentionSpec& spec_in, const DistConfig& cfg, int world,
                          const Shape* global) {
  LONGATTN_CHECK_ARG(world >= 1, "world size", world, "must be at least 1");
  LONGATTN_CHECK_ARG(cfg.split_rows >= 0, "split_rows", cfg.split_rows,
                     "must be 0 (automatic) or a positive number of rows");
  const AttentionSpec spec = normalized(spec_in);
  auto variant = make_attention(spec);  // unknown names and invalid configs throw here
  const std::string mode = dist_mode_name(cfg.mode);
  switch (cfg.mode) {
    case DistMode::Ring:
      LONGATTN_CHECK_ARG(spec.variant == "dense", "variant", spec_in.variant,
                         "mode ring distributes dense attention; use block_sparse_ring for "
                         "block_sparse, dilated for dilated, or data_parallel");
      break;
    case DistMode::BlockSparseRing:
      LONGATTN_CHECK_ARG(spec.variant == "block_sparse", "variant", spec_in.variant,
                         "mode block_sparse_ring distributes block_sparse attention");
      break;
    case DistMode::Dilated:
      LONGATTN_CHECK_ARG(spec.variant == "dilated", "variant", spec_in.variant,
                         "mode dilated distributes dilated attention");
      LONGATTN_CHECK_ARG(cfg.sharding == Sharding::Contiguous, "sharding",
                         sharding_name(cfg.sharding),
                         "distributed dilated attention supports contiguous sharding only");
      break;
    case DistMode::DataParallel:
      break;
  }
  if (!global) return;
  validate_shape(*global);
  if (cfg.mode == DistMode::DataParallel) {
    const BatchSplit split = batch_split(global->B, world, 0);
    variant->validate(Shape{split.count, global->N, global->H, global->D});
    return;
  }
  variant->validate(*global);
  const ShardLayout layout(cfg.sharding, global->N, world);
  if (cfg.mode == DistMode::BlockSparseRing) {
    const int64_t bs = spec.sparse.block_size, piece = layout.pieces(0)[0].len;
    LONGATTN_CHECK_ARG(piece % bs == 0, "block_size", bs,
                       "must divide the rows of each shard piece (" + std::to_string(piece) +
                           " with " + sharding_name(cfg.sharding) + " sharding over " +
                           std::to_string(world) + " ranks)");
  }
}

std::string describe_distributed(const AttentionSpec& spec_in, const DistConfig& cfg) {
  const AttentionSpec s = normalized(spec_in);
  std::ostringstream os;
  os << "mode=" << dist_mode_name(cfg.mode) << " sharding=" << sharding_name(cfg.sharding)
     << " sparse_route=" << sparse_route_name(cfg.sparse_route)
     << " split_rows=" << cfg.split_rows << " variant=" << s.variant
     << " causal=" << s.causal << " scale=" << exact(s.scale) << " block_size=" << s.block_size;
  const DilatedConfig& d = s.dilated;
  os << " dilated{segments=" << list(d.segment_lengths) << " rates=" << list(d.dilation_rates)
     << " mode=" << (d.mode == DilatedMode::Groups ? "groups" : "longnet")
     << " exact_grad=" << d.exact_longnet_grad << " pass_rows=" << d.pass_rows << "}";
  const SparseConfig& p = s.sparse;
  os << " sparse{pattern=" << p.pattern << " ratio=" << exact(p.sparsity_ratio)
     << " block=" << p.block_size << " window=" << p.window_size
     << " rates=" << list(p.dilation_rates) << " global=" << p.global_tokens << " levels=[";
  for (size_t i = 0; i < p.levels.size(); ++i)
    os << (i ? "," : "") << p.levels[i].stride << ":" << p.levels[i].window;
  os << "] seed=" << p.seed << " topk=" << p.topk << " hilbert=" << p.hilbert
     << " given=" << p.window_given << p.rates_given << p.global_given << p.levels_given << "}";
  return os.str();
}

namespace {

void check_local(const TensorView& q,
                 std::initializer_list<std::pair<const char*, TensorView>> same,
                 const TensorView& lse) {
  check_have_memory({{"q", q}, {"lse", lse}});
  check_have_memory(same);
  for (const auto& [name, t] : same)
    LONGATTN_CHECK_ARG(t.B == q.B && t.N == q.N && t.H == q.H && t.D == q.D, name, t.shape_string(),
                       "must have the shape of q " + q.shape_string());
  LONGATTN_CHECK_ARG(lse.B == q.B && lse.N == q.N && lse.H == q.H && lse.D == 1, "lse",
                     lse.shape_string(), "must be [B, N, H, 1] of q " + q.shape_string());
  LONGATTN_CHECK_ARG(lse.dtype == DType::F32 || lse.dtype == DType::F64, "lse",
                     dtype_name(lse.dtype), "must be fp32 (or fp64 on the CPU)");
}

// Runs `checks`; then every rank compares `describe()` of its configuration (or, when its
// checks threw, the error) with all ranks, so an invalid or differing rank never leaves the
// others waiting. Rethrows this rank's own error first, else the mismatch. Collective.
template <typename Checks, typename Describe>
void validate_and_agree(Communicator& comm, const std::string& what, Checks&& checks,
                        Describe&& describe) {
  std::string mine;
  std::exception_ptr own_error;
  try {
    checks();
    mine = describe();
  } catch (const Error& e) {
    mine = std::string("rejected: ") + e.what();
    own_error = std::current_exception();
  }
  try {
    agree_on_config(comm, mine, what);
  } catch (const Error&) {
    if (own_error) std::rethrow_exception(own_error);
    throw;
  }
  if (own_error) std::rethrow_exception(own_error);
}

}  // namespace

void DistributedBase::check_and_agree(
    const TensorView& q, std::initializer_list<std::pair<const char*, TensorView>> same,
    const TensorView& lse) {
  validate_and_agree(
      comm_, name() + " inputs",
      [&] {
        check_local(q, same, lse);
        const Shape g = global_shape(Shape{q.B, q.N, q.H, q.D});
        validate_distributed(spec_, cfg_, comm_.world(), &g);
      },
      [&] {
        std::ostringstream os;
        os << "local q [" << q.B << ", " << q.N << ", " << q.H << ", " << q.D << "] "
           << dtype_name(q.dtype) << ", lse " << dtype_name(lse.dtype);
        return os.str();
      });
}

namespace {

// Dense ring attention over sequence shards.
class RingDistributed final : public SequenceShardedBase {
 public:
  using SequenceShardedBase::SequenceShardedBase;
  std::string name() const override {
    return std::string("ring(dense, ") + sharding_name(cfg_.sharding) + ")";
  }
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    check_and_agree(q, {{"k", k}, {"v", v}, {"o", o}}, lse);
    counters_ = {};
    ring(be, q.N).forward(be, comm_, q, k, v, o, lse, counters_);
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_and_agree(
        q, {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}, lse);
    counters_ = {};
    ring(be, q.N).backward(be, comm_, q, k, v, o, lse, d_o, dq, dk, dv, counters_);
  }
  void release_workspace() override {
    if (ring_) ring_->release_workspace();
  }

 private:
  // The kernels' tile: block_size, raised to the backend's preferred tile (128 on CUDA, where
  // the Hopper kernels take 128-multiples) when that is a multiple of it and each of the
  // backward's key chunks of every shard piece is a multiple of it: then the chunks, and so the
  // memory, are those of block_size. Results never depend on the tile. The same on every rank
  // (N, P, sharding).
  int64_t tile(const Backend& be, const ShardLayout& l) const {
    const int64_t bs = spec_.block_size, pref = be.preferred_tile();
    if (pref <= bs || pref % bs != 0) return bs;
    int64_t shortest = l.seq_len();
    for (int r = 0; r < l.world(); ++r)
      for (const auto& piece : l.pieces(r)) shortest = std::min(shortest, piece.len);
    const int64_t chunks = ring_backward_chunks(shortest);
    for (int r = 0; r < l.world(); ++r)
      for (const auto& piece : l.pieces(r))
        if (piece.len % (pref * chunks) != 0) return bs;
    return pref;
  }
  RingAttention& ring(const Backend& be, int64_t local_n) {
    const int64_t N = local_n * comm_.world();
    const ShardLayout l = layout(N);
    const int64_t t = tile(be, l);
    if (!ring_ || ring_n_ != N || ring_tile_ != t) {
      ring_ = std::make_unique<RingAttention>(
          make_dense_ring_plan(l, comm_.rank(), t, spec_.causal), spec_);
      ring_n_ = N;
      ring_tile_ = t;
    }
    return *ring_;
  }
  std::unique_ptr<RingAttention> ring_;
  int64_t ring_n_ = -1, ring_tile_ = 0;
};

// Block-sparse ring: the global pattern's mask, restricted per step; only needed rows travel.
class BlockSparseRingDistributed final : public SequenceShardedBase {
 public:
  using SequenceShardedBase::SequenceShardedBase;
  std::string name() const override {
    return "block_sparse_ring(" + spec_.sparse.pattern + ", " + sharding_name(cfg_.sharding) +
           ", " + sparse_route_name(cfg_.sparse_route) + ")";
  }
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    check_and_agree(q, {{"k", k}, {"v", v}, {"o", o}}, lse);
    counters_ = {};
    ring(be, q, k, "forward").forward(be, comm_, q, k, v, o, lse, counters_);
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_and_agree(
        q, {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}, lse);
    counters_ = {};
    ring(be, q, k, "backward").backward(be, comm_, q, k, v, o, lse, d_o, dq, dk, dv, counters_);
  }
  void release_workspace() override {
    if (ring_) ring_->release_workspace();
  }

 private:
  bool adaptive() const { return spec_.sparse.pattern == "content_adaptive"; }

  // content_adaptive: every rank's block means of q and k, all-gathered (means[t][b][h][local
  // block][d] of each rank in turn, t = 0 for q, 1 for k). Each rank averages its own blocks
  // (rows summed in order, as the single-process scores do). The host copies and both buffers
  // are taken, and agreed on, before the all-gather.
  std::vector<double> gathered_block_means(Backend& be, const TensorView& q, const TensorView& k,
                                           const std::string& op) {
    const int64_t B = q.B, H = q.H, D = q.D, n = q.N, bs = spec_.sparse.block_size;
    const int64_t nlb = n / bs;
    const size_t per_rank = static_cast<size_t>(2 * B * H * nlb * D);
    Tensor hq, hk;
    std::vector<double> mine, all;
    run_and_agree(comm_, op + ": content_adaptive block means", [&] {
      hq = Tensor(q.dtype, B, n, H, D);
      hk = Tensor(k.dtype, B, n, H, D);
      mine.assign(per_rank, 0.0);
      all.resize(per_rank * static_cast<size_t>(comm_.world()));
    });
    be.download(hq.view(), q);
    be.download(hk.view(), k);
    be.synchronize();
    for (int t = 0; t < 2; ++t) {
      const TensorView src = t == 0 ? hq.view() : hk.view();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t r = 0; r < n; ++r) {
            double* dst = &mine[static_cast<size_t>((((t * B + b) * H + h) * nlb + r / bs) * D)];
            for (int64_t d = 0; d < D; ++d) dst[d] += load(src, b, r, h, d);
          }
    }
    for (double& x : mine) x /= static_cast<double>(bs);
    comm_.allgather_host(mine.data(), mine.size() * sizeof(double), all.data(),
                         CommOp{"content_adaptive block means", -1});
    return all;
  }

  // The block-mean scores of the GLOBAL q and k from the gathered means, laid out in global
  // block order: block_mean_scores over those one-row "blocks" performs the identical dot
  // products, so every rank and the single-process variant pick the same top-k blocks.
  std::vector<double> global_scores(const std::vector<double>& all, const Shape& local) const {
    const int64_t B = local.B, H = local.H, D = local.D, bs = spec_.sparse.block_size;
    const int64_t nlb = local.N / bs, P = comm_.world(), nb = nlb * P;
    const size_t per_rank = all.size() / static_cast<size_t>(P);
    const ShardLayout lay = layout(local.N * P);
    Tensor qm(DType::F64, B, nb, H, D), km(DType::F64, B, nb, H, D);
    for (int64_t gb = 0; gb < nb; ++gb) {
      const int owner = lay.owner(gb * bs);
      const int64_t lb = lay.local_row(gb * bs) / bs;
      const double* base = &all[per_rank * static_cast<size_t>(owner)];
      for (int t = 0; t < 2; ++t)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d)
              (t == 0 ? qm : km).set(b, gb, h, d, base[(((t * B + b) * H + h) * nlb + lb) * D + d]);
    }
    return block_mean_scores(qm.view(), km.view(), 1);
  }

  // The ring of this call's plan, rebuilt when the length or (content_adaptive) the scores
  // changed. Every rank takes the same decision from the same values. The host work before
  // the ring's first exchange (scores, global mask, plan) is agreed on: a rank that cannot
  // allocate it stops every rank, and every rank then drops its plan, so the next call
  // rebuilds it on all of them.
  RingAttention& ring(Backend& be, const TensorView& q, const TensorView& k, const char* pass) {
    const int64_t N = q.N * comm_.world();
    if (!adaptive() && ring_ && ring_n_ == N) return *ring_;
    const std::string op = name() + " " + pass;
    std::vector<double> means;
    if (adaptive()) means = gathered_block_means(be, q, k, op);
    try {
      run_and_agree(comm_, op + ": block-sparse plan", [&] {
        std::vector<double> scores;
        if (adaptive()) scores = global_scores(means, Shape{q.B, q.N, q.H, q.D});
        if (ring_ && ring_n_ == N && scores == scores_) return;
        ring_.reset();
        ring_n_ = -1;
        scores_.clear();
        const BlockMask global =
            sparse_block_mask(spec_.sparse, N, spec_.causal, adaptive() ? &scores : nullptr);
        RingPlan plan = make_sparse_ring_plan(layout(N), comm_.rank(), global, cfg_.sparse_route);
        plan.split_rows = cfg_.split_rows;
        ring_ = std::make_unique<RingAttention>(std::move(plan), spec_);
        ring_n_ = N;
        scores_ = std::move(scores);
      });
    } catch (...) {
      ring_.reset();
      ring_n_ = -1;
      scores_.clear();
      throw;
    }
    return *ring_;
  }

  std::unique_ptr<RingAttention> ring_;
  int64_t ring_n_ = -1;
  std::vector<double> scores_;
};

// Data-parallel: whole sequences, the batch split over ranks, the single-process variant.
class DataParallelDistributed final : public DistributedBase {
 public:
  DataParallelDistributed(const AttentionSpec& spec, const DistConfig& cfg, Communicator& comm)
      : DistributedBase(spec, cfg, comm), variant_(make_attention(spec)) {}
  std::string name() const override { return "data_parallel(" + spec_.variant + ")"; }
  Shape local_shape(const Shape& g) const override {
    return Shape{batch_split(g.B, comm_.world(), comm_.rank()).count, g.N, g.H, g.D};
  }
  Shape global_shape(const Shape& l) const override {
    return Shape{l.B * comm_.world(), l.N, l.H, l.D};
  }
  void extract_local(int rank, const TensorView& full, const TensorView& local) const override {
    const BatchSplit s = batch_split(full.B, comm_.world(), rank);
    copy_view(local, full.batches(s.begin, s.count));
  }
  void insert_local(int rank, const TensorView& local, const TensorView& full) const override {
    const BatchSplit s = batch_split(full.B, comm_.world(), rank);
    copy_view(full.batches(s.begin, s.count), local);
  }
  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    check_and_agree(q, {{"k", k}, {"v", v}, {"o", o}}, lse);
    counters_ = {};
    counters_.steps = 1;
    // Nothing is exchanged inside; the ranks still agree on the outcome, so a rank out of
    // memory makes every rank throw here rather than leave its peers waiting in whatever
    // collective comes next.
    run_and_agree(comm_, name() + " forward", [&] { variant_->forward(be, q, k, v, o, lse); });
  }
  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_and_agree(
        q, {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}, lse);
    counters_ = {};
    counters_.steps = 1;
    run_and_agree(comm_, name() + " backward",
                  [&] { variant_->backward(be, q, k, v, o, lse, d_o, dq, dk, dv); });
  }

 private:
  std::unique_ptr<AttentionVariant> variant_;
};

}  // namespace

std::unique_ptr<DistributedAttention> make_distributed_attention(const AttentionSpec& spec_in,
                                                                 const DistConfig& cfg,
                                                                 Communicator& comm) {
  validate_and_agree(
      comm, "distributed attention", [&] { validate_distributed(spec_in, cfg, comm.world()); },
      [&] { return describe_distributed(spec_in, cfg); });
  const AttentionSpec spec = normalized(spec_in);
  switch (cfg.mode) {
    case DistMode::Ring:
      return std::make_unique<RingDistributed>(spec, cfg, comm);
    case DistMode::BlockSparseRing:
      return std::make_unique<BlockSparseRingDistributed>(spec, cfg, comm);
    case DistMode::Dilated:
      return make_distributed_dilated(spec, cfg, comm);
    case DistMode::DataParallel:
      return std::make_unique<DataParallelDistributed>(spec, cfg, comm);
  }
  throw InvalidArgument("mode", std::to_string(static_cast<int>(cfg.mode)), "unknown mode");
}

namespace {

void check_full(const DistributedAttention& attn, const TensorView& full, const TensorView& local,
                const char* what) {
  const Shape g = attn.global_shape(Shape{local.B, local.N, local.H, local.D});
  LONGATTN_CHECK_ARG(full.B == g.B && full.N == g.N && full.H == g.H && full.D == local.D, what,
                     full.shape_string(),
                     "must be the global shape [" + std::to_string(g.B) + ", " +
                         std::to_string(g.N) + ", " + std::to_string(g.H) + ", " +
                         std::to_string(local.D) + "] of the local " + local.shape_string());
}

}  // namespace

namespace {

// What moving views of `local`'s shape and dtype between rank 0's full host tensor and every
// rank's local tensor takes on this rank: rank 0 a host tensor and, with peers, a device stage;
// another rank a device stage when its view is not contiguous. Taken before the first exchange
// of a scatter or gather, so the ranks can agree that every one got its part.
struct Staging {
  Tensor host;
  DeviceTensor stage;
  Staging() = default;
  Staging(const Communicator& comm, Backend& be, const TensorView& local) {
    const bool root = comm.rank() == 0;
    if (root) host = Tensor(local.dtype, local.B, local.N, local.H, local.D);
    if (root ? comm.world() > 1 : !local.is_contiguous())
      stage = DeviceTensor(be, local.dtype, local.B, local.N, local.H, local.D);
  }
};

size_t bytes_of(const TensorView& t) {
  return static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
}

void scatter_staged(const DistributedAttention& attn, Backend& be, const TensorView& full,
                    const TensorView& local, const Staging& s) {
  Communicator& comm = attn.comm();
  const size_t bytes = bytes_of(local);
  if (comm.rank() == 0) {
    for (int dst = 1; dst < comm.world(); ++dst) {
      attn.extract_local(dst, full, s.host.view());
      be.upload(s.stage.view(), s.host.view());
      be.synchronize();
      comm.sendrecv(s.stage.data(), bytes, dst, nullptr, 0, 0, CommOp{"scatter from rank 0", -1});
    }
    attn.extract_local(0, full, s.host.view());
    be.upload(local, s.host.view());
    return;
  }
  if (local.is_contiguous()) {
    comm.sendrecv(nullptr, 0, 0, local.data, bytes, 0, CommOp{"scatter from rank 0", -1});
    return;
  }
  comm.sendrecv(nullptr, 0, 0, s.stage.data(), bytes, 0, CommOp{"scatter from rank 0", -1});
  be.copy(local, s.stage.view());
}

void gather_staged(const DistributedAttention& attn, Backend& be, const TensorView& local,
                   const TensorView& full, const Staging& s) {
  Communicator& comm = attn.comm();
  const size_t bytes = bytes_of(local);
  if (comm.rank() != 0) {
    if (local.is_contiguous()) {
      be.synchronize();
      comm.sendrecv(local.data, bytes, 0, nullptr, 0, 0, CommOp{"gather to rank 0", -1});
      return;
    }
    be.copy(s.stage.view(), local);
    be.synchronize();
    comm.sendrecv(s.stage.data(), bytes, 0, nullptr, 0, 0, CommOp{"gather to rank 0", -1});
    return;
  }
  be.download(s.host.view(), local);
  be.synchronize();
  attn.insert_local(0, s.host.view(), full);
  for (int src = 1; src < comm.world(); ++src) {
    comm.sendrecv(nullptr, 0, 0, s.stage.data(), bytes, src, CommOp{"gather to rank 0", -1});
    be.download(s.host.view(), s.stage.view());
    be.synchronize();
    attn.insert_local(src, s.host.view(), full);
  }
}


// Rank 0's check of the full tensor and every rank's staging buffers, agreed on before the first
// message: a rank that rejects or cannot allocate stops all of them.
Staging agreed_staging(const DistributedAttention& attn, Backend& be, const TensorView& full,
                       const TensorView& local, const char* what) {
  Communicator& comm = attn.comm();
  Staging s;
  run_and_agree(comm, what, [&] {
    if (comm.rank() == 0) check_full(attn, full, local, "full tensor");
    s = Staging(comm, be, local);
  });
  return s;
}

}  // namespace

void scatter_from_root(const DistributedAttention& attn, Backend& be, const TensorView& full,
                       const TensorView& local) {
  const Staging s = agreed_staging(attn, be, full, local, "scatter from rank 0");
  scatter_staged(attn, be, full, local, s);
}

void gather_to_root(const DistributedAttention& attn, Backend& be, const TensorView& local,
                    const TensorView& full) {
  const Staging s = agreed_staging(attn, be, full, local, "gather to rank 0");
  gather_staged(attn, be, local, full, s);
}

namespace {

// Shape and dtype of rank 0's inputs, broadcast so the other ranks need no copy of them.
struct InputHeader {
  int64_t B = 0, N = 0, H = 0, D = 0;
  int32_t dtype = 0;
  int32_t has_grad = 0;
  int32_t rejected = 0;  // rank 0's inputs failed its checks
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Sums (steps: maximum) of every rank's counters.
DistCounters total_over_ranks(Communicator& comm, const DistCounters& c) {
  double sums[4] = {static_cast<double>(c.hops), static_cast<double>(c.blocks_computed),
                    static_cast<double>(c.bytes_sent), static_cast<double>(c.bytes_received)};
  double steps = static_cast<double>(c.steps);
  comm.allreduce_host(sums, 4, ReduceOp::Sum, CommOp{"counter totals", -1});
  comm.allreduce_host(&steps, 1, ReduceOp::Max, CommOp{"counter totals", -1});
  DistCounters t;
  t.steps = static_cast<int64_t>(steps);
  t.hops = static_cast<int64_t>(sums[0]);
  t.blocks_computed = static_cast<int64_t>(sums[1]);
  t.bytes_sent = static_cast<int64_t>(sums[2]);
  t.bytes_received = static_cast<int64_t>(sums[3]);
  return t;
}

double max_over_ranks(Communicator& comm, double x) {
  comm.allreduce_host(&x, 1, ReduceOp::Max, CommOp{"timing", -1});
  return x;
}

}  // namespace

DistributedResult run_distributed(const AttentionSpec& spec, const DistConfig& cfg,
                                  Communicator& comm, Backend& be, const DistributedInputs& in,
                                  bool backward) {
  InputHeader hdr;
  std::exception_ptr rejected;
  if (comm.rank() == 0) {
    try {
      const TensorView& q = in.q;
      LONGATTN_CHECK_ARG(q.data != nullptr, "q", "(none)", "rank 0 must hold the full inputs");
      for (const auto& [name, t] : {std::pair<const char*, TensorView>{"k", in.k}, {"v", in.v}}) {
        LONGATTN_CHECK_ARG(t.B == q.B && t.N == q.N && t.H == q.H && t.D == q.D, name,
                           t.shape_string(), "must have the shape of q " + q.shape_string());
        LONGATTN_CHECK_ARG(t.dtype == q.dtype, name, dtype_name(t.dtype),
                           std::string("must have the dtype of q ") + dtype_name(q.dtype));
      }
      if (backward)
        LONGATTN_CHECK_ARG(
            in.d_o.data && in.d_o.B == q.B && in.d_o.N == q.N && in.d_o.H == q.H && in.d_o.D == q.D,
            "d_o", in.d_o.data ? in.d_o.shape_string() : "(none)",
            "the backward needs d_o of the shape of q " + q.shape_string());
      hdr = InputHeader{q.B, q.N, q.H, q.D, static_cast<int32_t>(q.dtype), backward ? 1 : 0, 0};
    } catch (const Error&) {
      rejected = std::current_exception();
      hdr.rejected = 1;
    }
  }
  // Rank 0's verdict reaches every rank, so none waits for a run that will not happen.
  comm.broadcast_host(&hdr, sizeof(hdr), 0, CommOp{"input shape from rank 0", -1});
  if (rejected) std::rethrow_exception(rejected);
  if (hdr.rejected)
    throw InvalidArgument("inputs", "rank 0's", "rank 0 rejected its inputs (its error says why)");
  DistributedResult res;
  res.shape = Shape{hdr.B, hdr.N, hdr.H, hdr.D};
  res.dtype = static_cast<DType>(hdr.dtype);
  const bool run_backward = hdr.has_grad != 0;
  // The config is agreed first; then every rank checks the same shape against the same config
  // and reaches the same verdict.
  auto attn = make_distributed_attention(spec, cfg, comm);
  validate_distributed(spec, cfg, comm.world(), &res.shape);
  const Shape l = attn->local_shape(res.shape);
  const DType dt = res.dtype, lse_dt = dt == DType::F64 ? DType::F64 : DType::F32;
  const Shape& g = res.shape;
  const bool root = comm.rank() == 0;
  auto local = [&](DType t, int64_t d) { return DeviceTensor(be, t, l.B, l.N, l.H, d); };
  auto full = [&](DType t, int64_t d) { return Tensor(t, g.B, g.N, g.H, d); };
  // Each phase takes every buffer it needs (this rank's tensors, rank 0's results and the
  // staging of the scatter or gather) before its first exchange, and the ranks agree that all
  // of them got theirs: a rank out of memory stops every rank at once. The staging buffers are
  // freed before the attention runs.
  DeviceTensor q, k, v, o, lse;
  {
    Staging s;
    run_and_agree(comm, "scatter of the inputs from rank 0", [&] {
      q = local(dt, l.D);
      k = local(dt, l.D);
      v = local(dt, l.D);
      o = local(dt, l.D);
      lse = local(lse_dt, 1);
      s = Staging(comm, be, q.view());
    });
    scatter_staged(*attn, be, in.q, q.view(), s);
    scatter_staged(*attn, be, in.k, k.view(), s);
    scatter_staged(*attn, be, in.v, v.view(), s);
  }
  be.reset_peak();

  comm.barrier(CommOp{"before forward", -1});
  auto t0 = std::chrono::steady_clock::now();
  attn->forward(be, q.view(), k.view(), v.view(), o.view(), lse.view());
  be.synchronize();
  res.forward_seconds = max_over_ranks(comm, seconds_since(t0));
  res.forward = attn->counters();
  res.forward_total = total_over_ranks(comm, res.forward);

  {
    Staging so, sl;
    run_and_agree(comm, "gather of the forward results to rank 0", [&] {
      if (root) {
        res.o = full(dt, g.D);
        res.lse = full(lse_dt, 1);
      }
      so = Staging(comm, be, o.view());
      sl = Staging(comm, be, lse.view());
    });
    gather_staged(*attn, be, o.view(), res.o.view(), so);
    gather_staged(*attn, be, lse.view(), res.lse.view(), sl);
  }

  if (run_backward) {
    DeviceTensor d_o, dq, dk, dv;
    {
      Staging s;
      run_and_agree(comm, "scatter of d_o from rank 0", [&] {
        d_o = local(dt, l.D);
        dq = local(dt, l.D);
        dk = local(dt, l.D);
        dv = local(dt, l.D);
        s = Staging(comm, be, d_o.view());
      });
      scatter_staged(*attn, be, in.d_o, d_o.view(), s);
    }
    comm.barrier(CommOp{"before backward", -1});
    t0 = std::chrono::steady_clock::now();
    attn->backward(be, q.view(), k.view(), v.view(), o.view(), lse.view(), d_o.view(), dq.view(),
                   dk.view(), dv.view());
    be.synchronize();
    res.backward_seconds = max_over_ranks(comm, seconds_since(t0));
    res.backward = attn->counters();
    res.backward_total = total_over_ranks(comm, res.backward);
    Staging s;
    run_and_agree(comm, "gather of the gradients to rank 0", [&] {
      if (root) {
        res.dq = full(dt, g.D);
        res.dk = full(dt, g.D);
        res.dv = full(dt, g.D);
      }
      s = Staging(comm, be, dq.view());
    });
    gather_staged(*attn, be, dq.view(), res.dq.view(), s);
    gather_staged(*attn, be, dk.view(), res.dk.view(), s);
    gather_staged(*attn, be, dv.view(), res.dv.view(), s);
  }
  res.peak_bytes = be.peak_bytes();
  return res;
}

}  // namespace longattn
