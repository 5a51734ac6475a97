// One rank that cannot allocate: the forward and backward of every distributed mode make EVERY
// rank throw the same OutOfMemory naming that rank, the call and the bytes requested, at once
// (well under the communication timeout) instead of leaving its peers waiting in an exchange;
// the same object then gives the exact result (fp64 to 1e-10) for a smaller call, and after a
// failure half-way through its allocations. The same holds for every device allocation of
// run_distributed (inputs, scatter and gather staging), of scatter_from_root / gather_to_root
// and of the distributed multihead layer, and for host memory (std::bad_alloc) running out
// while the block-sparse ring builds its plan (content_adaptive block means and scores, the
// global mask) or the multihead layer takes its parameters.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <new>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attention/distributed.hpp"
#include "attention/distributed_multihead.hpp"
#include "mpi_env.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

// Host allocations of this process through operator new (std::vector, std::string, Tensor):
// once armed with a size, the first request of at least that many bytes throws std::bad_alloc,
// and the refusal disarms itself (so the failing rank can still unwind and agree).
namespace {
std::atomic<size_t> g_refuse_at_least{0};  // 0: not armed
std::atomic<int64_t> g_host_refusals{0};
}  // namespace

void* operator new(std::size_t bytes) {
  size_t armed = g_refuse_at_least.load(std::memory_order_relaxed);
  if (armed != 0 && bytes >= armed && g_refuse_at_least.compare_exchange_strong(armed, 0)) {
    g_host_refusals.fetch_add(1);
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::local_part;
using testing::max_abs_diff;
using testing::multihead_reference;
using testing::MultiheadReference;
using testing::test_comm;

// The CPU backend, except that allocate() throws OutOfMemory once armed: for a request above
// `limit` bytes, or once `allowed` more allocations have been made.
class FailingBackend final : public Backend {
 public:
  FailingBackend() : cpu_(make_cpu_backend(1)) {}
  void disarm() {
    limit_ = std::numeric_limits<size_t>::max();
    allowed_ = -1;
  }
  void fail_above(size_t bytes) { limit_ = bytes; }
  void fail_after(int64_t allocations) { allowed_ = allocations; }
  int64_t allocations() const { return allocations_; }
  size_t largest_allocation() const { return largest_; }

  DeviceKind device() const override { return cpu_->device(); }
  std::string name() const override { return "failing " + cpu_->name(); }
  void* allocate(size_t bytes) override {
    if (bytes > limit_ || allowed_ == 0)
      throw OutOfMemory("test backend refused an allocation of " + std::to_string(bytes) + " bytes",
                        bytes);
    if (allowed_ > 0) --allowed_;
    ++allocations_;
    largest_ = std::max(largest_, bytes);
    return cpu_->allocate(bytes);
  }
  void deallocate(void* p) override { cpu_->deallocate(p); }
  std::unique_ptr<PreparedMask> prepare_mask(const BlockMask& m) override {
    return cpu_->prepare_mask(m);
  }
  void attention_forward(const AttnFwdParams& p) override { cpu_->attention_forward(p); }
  void attention_backward(const AttnBwdParams& p) override { cpu_->attention_backward(p); }
  void merge(const TensorView& o_acc, const TensorView& lse_acc, const TensorView& o_part,
             const TensorView& lse_part) override {
    cpu_->merge(o_acc, lse_acc, o_part, lse_part);
  }
  void fill(const TensorView& t, double value) override { cpu_->fill(t, value); }
  void scale(const TensorView& t, double alpha) override { cpu_->scale(t, alpha); }
  void axpy(const TensorView& dst, double alpha, const TensorView& src) override {
    cpu_->axpy(dst, alpha, src);
  }
  void copy(const TensorView& dst, const TensorView& src) override { cpu_->copy(dst, src); }
  void copy_scaled(const TensorView& dst, double alpha, const TensorView& src) override {
    cpu_->copy_scaled(dst, alpha, src);
  }
  void upload(const TensorView& dst, const TensorView& host_src) override {
    cpu_->upload(dst, host_src);
  }
  void download(const TensorView& host_dst, const TensorView& src) override {
    cpu_->download(host_dst, src);
  }
  void gemm(bool trans_a, bool trans_b, double alpha, const MatrixView& a, const MatrixView& b,
            double beta, const MatrixView& c) override {
    cpu_->gemm(trans_a, trans_b, alpha, a, b, beta, c);
  }
  void synchronize() override { cpu_->synchronize(); }
  size_t peak_bytes() const override { return cpu_->peak_bytes(); }
  void reset_peak() override { cpu_->reset_peak(); }

 private:
  std::unique_ptr<Backend> cpu_;
  size_t limit_ = std::numeric_limits<size_t>::max();
  int64_t allowed_ = -1;  // < 0: no count limit
  int64_t allocations_ = 0;
  size_t largest_ = 0;
};

// This rank's shards of the inputs and of the outputs.
struct Shards {
  Tensor q, k, v, d_o, o, lse, dq, dk, dv;
};

Shards shards_of(const DistributedAttention& attn, int rank, const testing::FullInputs& in) {
  const TensorView g = in.q.view();
  const Shape l = attn.local_shape(Shape{g.B, g.N, g.H, g.D});
  auto make = [&](int64_t D) { return Tensor(DType::F64, l.B, l.N, l.H, D); };
  Shards s{make(l.D), make(l.D), make(l.D), make(l.D), make(l.D),
           make(1),   make(l.D), make(l.D), make(l.D)};
  attn.extract_local(rank, in.q.view(), s.q.view());
  attn.extract_local(rank, in.k.view(), s.k.view());
  attn.extract_local(rank, in.v.view(), s.v.view());
  attn.extract_local(rank, in.d_o.view(), s.d_o.view());
  return s;
}

void forward(DistributedAttention& attn, Backend& be, Shards& s) {
  attn.forward(be, s.q.view(), s.k.view(), s.v.view(), s.o.view(), s.lse.view());
}
void backward(DistributedAttention& attn, Backend& be, Shards& s) {
  attn.backward(be, s.q.view(), s.k.view(), s.v.view(), s.o.view(), s.lse.view(), s.d_o.view(),
                s.dq.view(), s.dk.view(), s.dv.view());
}

// This rank's results equal its rows of the single-process run.
void expect_exact(const DistributedAttention& attn, int rank, const AttentionSpec& spec,
                  const testing::FullInputs& in, const Shards& s) {
  const auto ref = testing::single_process(spec, in, true);
  for (const auto& [name, ours, full] :
       {std::tuple{"o", &s.o, &ref.o}, std::tuple{"lse", &s.lse, &ref.lse},
        std::tuple{"dq", &s.dq, &ref.dq}, std::tuple{"dk", &s.dk, &ref.dk},
        std::tuple{"dv", &s.dv, &ref.dv}}) {
    Tensor expected = ours->clone();
    attn.extract_local(rank, full->view(), expected.view());
    EXPECT_LT(max_abs_diff(ours->view(), expected.view()), kDistTolerance) << name;
  }
}

// The largest value of x over all ranks.
int64_t max_over_ranks(Communicator& comm, int64_t x) {
  double v = static_cast<double>(x);
  comm.allreduce_host(&v, 1, ReduceOp::Max, CommOp{"test maximum", -1});
  return static_cast<int64_t>(v);
}

// Where the refused memory was: the backend's (the error gives the bytes requested) or the
// host's (std::bad_alloc).
enum class Memory { Device, Host };

// Runs `call`, which must throw OutOfMemory on every rank because rank `failing` could not
// allocate: the message names that rank, `op` and (device memory) the bytes requested or (host
// memory) std::bad_alloc, it is the same on every rank, and it comes at once rather than after
// the communication timeout. Returns the message.
template <typename Call>
std::string expect_agreed_oom(Communicator& comm, int failing, const std::string& op, Call&& call,
                              Memory memory = Memory::Device) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string what;
  try {
    call();
    ADD_FAILURE() << op << ": rank " << comm.rank() << " did not throw";
  } catch (const OutOfMemory& e) {
    what = e.what();
    if (memory == Memory::Device) EXPECT_GT(e.requested_bytes(), 0u) << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << op << ": rank " << comm.rank() << " threw another error: " << e.what();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, comm.timeout_seconds() / 4) << op << " took " << seconds << " s";
  EXPECT_NE(what.find(op), std::string::npos) << what;
  EXPECT_NE(what.find("rank " + std::to_string(failing) + ":"), std::string::npos) << what;
  EXPECT_NE(what.find(memory == Memory::Device ? "bytes requested" : "std::bad_alloc"),
            std::string::npos)
      << what;
  // The same message everywhere: agree_on_config throws when any rank's text differs.
  EXPECT_NO_THROW(agree_on_config(comm, what, op + " error message"));
  return what;
}

// A short communication timeout for one test: a rank left waiting fails it quickly, not hangs.
struct ShortTimeout {
  explicit ShortTimeout(Communicator& c) : comm(c), saved(c.timeout_seconds()) {
    comm.set_timeout_seconds(20.0);
  }
  ~ShortTimeout() { comm.set_timeout_seconds(saved); }
  Communicator& comm;
  double saved;
};

// Arms the host refusal on this rank for the scope (when `armed`), and says whether it fired.
class HostRefusal {
 public:
  HostRefusal(bool armed, size_t at_least) : before_(g_host_refusals.load()) {
    if (armed) g_refuse_at_least.store(at_least);
  }
  ~HostRefusal() { g_refuse_at_least.store(0); }
  int64_t refusals() const { return g_host_refusals.load() - before_; }

 private:
  int64_t before_;
};

// Whether some message contains `op`.
bool any_names(const std::vector<std::string>& messages, const std::string& op) {
  for (const std::string& m : messages)
    if (m.find(op) != std::string::npos) return true;
  return false;
}

struct OomCase {
  std::string name;
  AttentionSpec spec;
  DistConfig cfg;
  Shape small, big;  // global shapes; big needs larger allocations than small
  // Whether big's forward needs more than small's largest allocation (dilated groups allocates
  // in the forward only for segments that span ranks, whose size does not grow with N).
  bool big_forward_fails = true;
  // The block-sparse ring on one rank: its forward writes o directly and its backward dq, dk
  // and dv (fp64), so neither holds a workspace that grows with the shape: big fits.
  bool fits_on_one_rank = false;
};

std::string case_name(const ::testing::TestParamInfo<OomCase>& i) { return i.param.name; }

class OneRankOutOfMemory : public ::testing::TestWithParam<OomCase> {};

TEST_P(OneRankOutOfMemory, EveryRankThrowsTheSameErrorAndTheObjectStaysUsable) {
  const OomCase c = GetParam();
  Communicator& comm = test_comm();
  const int rank = comm.rank(), failing = comm.world() - 1;
  const bool fails_here = rank == failing;
  const ShortTimeout short_timeout(comm);
  const auto small_in = testing::random_inputs(c.small, DType::F64, 4100);
  const auto big_in = testing::random_inputs(c.big, DType::F64, 4200);
  FailingBackend be;
  auto attn = make_distributed_attention(c.spec, c.cfg, comm);

  // A fresh object's first small forward and backward, unarmed: how many allocations each
  // makes on the failing rank and the largest one (the byte limit used below).
  // A ring's backward reuses the workspace of the forward; released, the backward takes its own.
  Shards small = shards_of(*attn, rank, small_in);
  const int64_t before_fwd = be.allocations();
  forward(*attn, be, small);
  const int64_t fwd_allocs = be.allocations() - before_fwd;
  attn->release_workspace();
  backward(*attn, be, small);
  const int64_t bwd_allocs = be.allocations() - before_fwd - fwd_allocs;
  expect_exact(*attn, rank, c.spec, small_in, small);
  const int64_t fwd_allocates = max_over_ranks(comm, fails_here ? fwd_allocs : 0);
  const int64_t bwd_allocates = max_over_ranks(comm, fails_here ? bwd_allocs : 0);
  ASSERT_GT(bwd_allocates, 0) << "the case must allocate in the backward";

  // The big call needs more than the limit on the failing rank: every rank stops.
  if (fails_here) be.fail_above(be.largest_allocation());
  Shards big = shards_of(*attn, rank, big_in);
  if (c.fits_on_one_rank && comm.world() == 1) {
    EXPECT_NO_THROW(forward(*attn, be, big));
    EXPECT_NO_THROW(backward(*attn, be, big));
  } else {
    if (c.big_forward_fails)
      expect_agreed_oom(comm, failing, "forward", [&] { forward(*attn, be, big); });
    else
      EXPECT_NO_THROW(forward(*attn, be, big));
    expect_agreed_oom(comm, failing, "backward", [&] { backward(*attn, be, big); });
  }
  // A later smaller call on the same object, the limit still in force, is exact.
  small = shards_of(*attn, rank, small_in);
  forward(*attn, be, small);
  backward(*attn, be, small);
  expect_exact(*attn, rank, c.spec, small_in, small);
  be.disarm();

  // A fresh object whose failing rank runs out on its last allocation, leaving the others of
  // the call made: the failed forward and backward leave it usable with the same shapes.
  auto fresh = make_distributed_attention(c.spec, c.cfg, comm);
  small = shards_of(*fresh, rank, small_in);
  if (fwd_allocates > 0) {
    if (fails_here) be.fail_after(fwd_allocs - 1);
    expect_agreed_oom(comm, failing, "forward", [&] { forward(*fresh, be, small); });
    be.disarm();
  }
  forward(*fresh, be, small);
  fresh->release_workspace();
  if (fails_here) be.fail_after(bwd_allocs - 1);
  expect_agreed_oom(comm, failing, "backward", [&] { backward(*fresh, be, small); });
  be.disarm();
  backward(*fresh, be, small);
  expect_exact(*fresh, rank, c.spec, small_in, small);
  comm.barrier(CommOp{"after out-of-memory case", -1});
}

std::vector<OomCase> cases() {
  std::vector<OomCase> v;
  AttentionSpec dense;
  dense.causal = true;
  dense.block_size = 4;
  // The ring keeps its buffers across calls of one length: big differs in the batch, so the
  // failed call leaves the buffers of the earlier small one replaced (48 rows: 2P zigzag
  // chunks for P = 1..4).
  v.push_back(OomCase{"ring", dense, DistConfig{DistMode::Ring, Sharding::Zigzag},
                      Shape{1, 48, 2, 4}, Shape{4, 48, 2, 4}});
  AttentionSpec sparse;
  sparse.variant = "block_sparse";
  sparse.causal = true;
  sparse.sparse.pattern = "local_window";
  sparse.sparse.block_size = 4;
  sparse.sparse.window_size = 8;
  sparse.sparse.window_given = true;
  for (SparseRoute route : {SparseRoute::Direct, SparseRoute::Ring})
    v.push_back(OomCase{std::string("block_sparse_ring_") + sparse_route_name(route), sparse,
                        DistConfig{DistMode::BlockSparseRing, Sharding::Contiguous, route},
                        Shape{1, 96, 2, 4}, Shape{4, 96, 2, 4}, true, true});
  AttentionSpec dilated;
  dilated.variant = "dilated";
  dilated.causal = true;
  dilated.block_size = 4;
  dilated.dilated.segment_lengths = {8, 24, 48};
  dilated.dilated.dilation_rates = {1, 2, 4};
  for (DilatedMode mode : {DilatedMode::LongNet, DilatedMode::Groups}) {
    dilated.dilated.mode = mode;
    const bool longnet = mode == DilatedMode::LongNet;
    v.push_back(OomCase{longnet ? "dilated_longnet" : "dilated_groups", dilated,
                        DistConfig{DistMode::Dilated, Sharding::Contiguous}, Shape{1, 96, 4, 4},
                        Shape{1, 384, 4, 4}, longnet});
  }
  // Data-parallel runs the single-process variant; its longnet dilated allocates per branch.
  AttentionSpec local = dilated;
  local.dilated.mode = DilatedMode::LongNet;
  local.dilated.segment_lengths = {8, 16};
  local.dilated.dilation_rates = {1, 2};
  v.push_back(OomCase{"data_parallel", local, DistConfig{DistMode::DataParallel},
                      Shape{12, 16, 2, 4}, Shape{48, 16, 2, 4}});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Modes, OneRankOutOfMemory, ::testing::ValuesIn(cases()), case_name);

// The ranks that fail in turn: rank 0 (which stages the scatter and gather) and the last.
std::vector<int> failing_ranks(const Communicator& comm) {
  return comm.world() > 1 ? std::vector<int>{0, comm.world() - 1} : std::vector<int>{0};
}

// run_distributed (`longattn run`, `verify`, `bench` under mpirun) with each of its device
// allocations refused in turn on rank 0, then on the last rank: its own inputs, the staging of
// the scatter and gather, the attention's buffers. Every rank throws the same error at once,
// and a run without the failure is exact.
TEST(RunDistributedOutOfMemory, EveryAllocationFailsEveryRankAtOnceAndALaterRunIsExact) {
  Communicator& comm = test_comm();
  const ShortTimeout short_timeout(comm);
  const int rank = comm.rank();
  const bool root = rank == 0;
  AttentionSpec dense;
  dense.causal = true;
  dense.block_size = 4;
  struct RunCase {
    std::string name;
    DistConfig cfg;
    Shape shape;
  };
  for (const RunCase& c :
       {RunCase{"ring", DistConfig{DistMode::Ring, Sharding::Zigzag}, Shape{1, 48, 2, 4}},
        RunCase{"data_parallel", DistConfig{DistMode::DataParallel}, Shape{12, 16, 2, 4}}}) {
    SCOPED_TRACE(c.name);
    const auto in = testing::random_inputs(c.shape, DType::F64, 4300);
    DistributedInputs din;
    if (root) din = DistributedInputs{in.q.view(), in.k.view(), in.v.view(), in.d_o.view()};
    FailingBackend be;
    auto run = [&] { return run_distributed(dense, c.cfg, comm, be, din, true); };
    for (int failing : failing_ranks(comm)) {
      const bool fails_here = rank == failing;
      const int64_t before = be.allocations();
      run();
      const int64_t allocates = max_over_ranks(comm, fails_here ? be.allocations() - before : 0);
      ASSERT_GT(allocates, 0);
      std::vector<std::string> messages;
      for (int64_t k = 0; k < allocates; ++k) {
        if (fails_here) be.fail_after(k);
        messages.push_back(expect_agreed_oom(comm, failing, "failed on rank", run));
        be.disarm();
      }
      // The phases this change guards were among them: the inputs, and with peers rank 0's
      // staging of the gathers.
      EXPECT_TRUE(any_names(messages, "scatter of the inputs from rank 0"));
      EXPECT_TRUE(any_names(messages, "scatter of d_o from rank 0"));
      if (failing == 0 && comm.world() > 1) {
        EXPECT_TRUE(any_names(messages, "gather of the forward results to rank 0"));
        EXPECT_TRUE(any_names(messages, "gather of the gradients to rank 0"));
      }
    }
    const DistributedResult r = run();
    if (root) {
      testing::expect_matches_single_process(r, dense, in, kDistTolerance);
    }
  }
  comm.barrier(CommOp{"after run_distributed out of memory", -1});
}

// scatter_from_root / gather_to_root into a local view that is not contiguous (the other
// ranks stage it too): a refused stage on rank 0 or the last rank, or a full tensor of the
// wrong shape on rank 0, fails every rank at once; a later round trip is exact.
TEST(RunDistributedOutOfMemory, ScatterAndGatherAgreeBeforeTheirFirstMessage) {
  Communicator& comm = test_comm();
  const ShortTimeout short_timeout(comm);
  const int rank = comm.rank(), P = comm.world();
  const bool root = rank == 0;
  auto attn = make_distributed_attention(AttentionSpec{},
                                         DistConfig{DistMode::Ring, Sharding::Zigzag}, comm);
  const Shape g{2, 4 * P, 2, 3};
  const Tensor full = Tensor::randn(DType::F64, g.B, g.N, g.H, g.D, 98);
  Tensor back(DType::F64, g.B, g.N, g.H, g.D), wrong(DType::F64, g.B, g.N, g.H + 1, g.D);
  const Shape l = attn->local_shape(g);
  FailingBackend be;
  DeviceTensor wide(be, DType::F64, l.B, l.N, 2 * l.H, l.D);
  const TensorView local = wide.view().heads(1, l.H);
  ASSERT_FALSE(local.is_contiguous());
  auto scatter = [&] { scatter_from_root(*attn, be, root ? full.view() : TensorView{}, local); };
  auto gather = [&] { gather_to_root(*attn, be, local, root ? back.view() : TensorView{}); };
  // With one rank nothing is staged on the device.
  if (P > 1) {
    for (int failing : failing_ranks(comm)) {
      if (rank == failing) be.fail_after(0);
      expect_agreed_oom(comm, failing, "scatter from rank 0", scatter);
      expect_agreed_oom(comm, failing, "gather to rank 0", gather);
      be.disarm();
    }
  }
  for (const char* op : {"scatter from rank 0", "gather to rank 0"}) {
    try {
      if (std::string(op) == "scatter from rank 0")
        scatter_from_root(*attn, be, root ? wrong.view() : TensorView{}, local);
      else
        gather_to_root(*attn, be, local, root ? wrong.view() : TensorView{});
      ADD_FAILURE() << op << ": rank " << rank << " did not throw";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(std::string(op) + " failed on rank 0"), std::string::npos) << what;
      EXPECT_NE(what.find("full tensor"), std::string::npos) << what;
    }
  }
  scatter();
  const ShardLayout layout(Sharding::Zigzag, g.N, P);
  for (int64_t n = 0; n < l.N; ++n)
    for (int64_t d = 0; d < g.D; ++d)
      EXPECT_EQ(load(local, 1, n, 1, d), full.at(1, layout.global_row(rank, n), 1, d));
  gather();
  if (root) EXPECT_EQ(compare(back.view(), full.view()).max_abs, 0.0);
  comm.barrier(CommOp{"after scatter and gather out of memory", -1});
}

struct MultiheadCase {
  std::string name;
  AttentionSpec attention;
  DistConfig dist;
  int64_t B, N;
};

std::vector<MultiheadCase> multihead_cases() {
  AttentionSpec s;
  s.causal = true;
  s.block_size = 4;
  s.dilated.segment_lengths = {8, 24};
  s.dilated.dilation_rates = {1, 2};
  s.sparse.block_size = 4;
  s.sparse.window_size = 8;
  s.sparse.window_given = true;
  AttentionSpec dense = s, sparse = s, dilated = s;
  sparse.variant = "block_sparse";
  dilated.variant = "dilated";
  return {{"ring", dense, {DistMode::Ring, Sharding::Zigzag}, 2, 48},
          {"block_sparse_ring", sparse, {DistMode::BlockSparseRing, Sharding::Contiguous}, 2, 48},
          {"dilated", dilated, {DistMode::Dilated, Sharding::Contiguous}, 2, 48},
          {"data_parallel", dilated, {DistMode::DataParallel, Sharding::Contiguous}, 12, 24}};
}

// The distributed multihead layer with each device allocation of a forward, then of a
// backward, refused in turn on the last rank (projections, activations, gradients and the
// attention's own buffers): every rank throws the same error at once, and later calls give the
// single-process layer's output and gradients.
TEST(MultiheadOutOfMemory, EveryAllocationFailsEveryRankAtOnceAndLaterCallsAreExact) {
  Communicator& comm = test_comm();
  const ShortTimeout short_timeout(comm);
  const int rank = comm.rank(), failing = comm.world() - 1;
  const bool fails_here = rank == failing;
  for (const MultiheadCase& c : multihead_cases()) {
    SCOPED_TRACE(c.name);
    auto cpu = make_cpu_backend(1);
    const MultiheadReference ref = multihead_reference(c.attention, c.B, c.N, 6, 91, *cpu);
    const int64_t E = ref.cfg.embed_dim;
    const Tensor &xq = ref.xq, &xk = ref.xk, &xv = ref.xv, &dout = ref.dout;
    const Tensor &out_ref = ref.out, &dxq_ref = ref.dxq, &dxk_ref = ref.dxk, &dxv_ref = ref.dxv;
    const MultiheadParams& g_ref = ref.g;

    FailingBackend be;
    DistributedMultihead dist(ref.cfg, c.dist, comm);
    const Shape l = dist.local_shape(c.B, c.N);
    auto local = [&](const Tensor& full) { return local_part(dist, rank, c.B, c.N, full); };
    const Tensor lq = local(xq), lk = local(xk), lv = local(xv), ld = local(dout);
    Tensor out(DType::F64, l.B, l.N, 1, E), dxq = out.clone(), dxk = out.clone(), dxv = out.clone();
    MultiheadParams g;
    auto forward = [&] { dist.forward(be, lq.view(), lk.view(), lv.view(), out.view()); };
    auto backward = [&] {
      dist.backward(be, lq.view(), lk.view(), lv.view(), ld.view(), dxq.view(), dxk.view(),
                    dxv.view(), g);
    };
    // Warm calls (the attention keeps its buffers across calls of one shape): how many
    // allocations a forward and a backward make on the failing rank.
    forward();
    backward();
    int64_t before = be.allocations();
    forward();
    const int64_t fwd_allocs = max_over_ranks(comm, fails_here ? be.allocations() - before : 0);
    before = be.allocations();
    backward();
    const int64_t bwd_allocs = max_over_ranks(comm, fails_here ? be.allocations() - before : 0);
    ASSERT_GT(fwd_allocs, 0);
    ASSERT_GT(bwd_allocs, fwd_allocs);
    std::vector<std::string> messages;
    for (int64_t k = 0; k < fwd_allocs; ++k) {
      if (fails_here) be.fail_after(k);
      messages.push_back(expect_agreed_oom(comm, failing, "forward", forward));
      be.disarm();
    }
    for (int64_t k = 0; k < bwd_allocs; ++k) {
      if (fails_here) be.fail_after(k);
      messages.push_back(expect_agreed_oom(comm, failing, "failed on rank", backward));
      be.disarm();
    }
    EXPECT_TRUE(any_names(messages, "distributed multihead forward failed"));
    EXPECT_TRUE(any_names(messages, "distributed multihead backward failed"));

    forward();
    EXPECT_LT(max_abs_diff(out.view(), local(out_ref).view()), kDistTolerance);
    backward();
    EXPECT_LT(max_abs_diff(dxq.view(), local(dxq_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(dxk.view(), local(dxk_ref).view()), kDistTolerance);
    EXPECT_LT(max_abs_diff(dxv.view(), local(dxv_ref).view()), kDistTolerance);
    for (const auto& [name, ours, ref] :
         {std::tuple{"w_q", &g.w_q, &g_ref.w_q}, std::tuple{"w_k", &g.w_k, &g_ref.w_k},
          std::tuple{"w_v", &g.w_v, &g_ref.w_v}, std::tuple{"w_out", &g.w_out, &g_ref.w_out},
          std::tuple{"b_q", &g.b_q, &g_ref.b_q}, std::tuple{"b_out", &g.b_out, &g_ref.b_out},
          std::tuple{"ln_weight", &g.ln_weight, &g_ref.ln_weight},
          std::tuple{"ln_bias", &g.ln_bias, &g_ref.ln_bias}})
      EXPECT_LT(max_abs_diff(ours->view(), ref->view()), kDistTolerance) << name;
  }
  comm.barrier(CommOp{"after multihead out of memory", -1});
}

// Host memory running out on the last rank while the layer takes its parameters: every rank
// throws at once; a later construction works.
TEST(MultiheadOutOfMemory, HostMemoryForTheParametersFailsEveryRankAtOnce) {
  Communicator& comm = test_comm();
  const ShortTimeout short_timeout(comm);
  const int failing = comm.world() - 1;
  MultiheadConfig cfg;
  cfg.embed_dim = 64;
  cfg.num_heads = 2;
  cfg.param_dtype = DType::F64;
  cfg.attention.block_size = 4;
  cfg.attention.dilated.segment_lengths = {8};
  cfg.attention.dilated.dilation_rates = {1};
  const DistConfig dist{DistMode::Dilated, Sharding::Contiguous};
  {
    // The first weight is the first host request this large.
    const size_t weight_bytes = static_cast<size_t>(cfg.embed_dim * cfg.embed_dim) * 8;
    const HostRefusal refusal(comm.rank() == failing, weight_bytes);
    expect_agreed_oom(
        comm, failing, "distributed multihead parameters",
        [&] { DistributedMultihead layer(cfg, dist, comm); }, Memory::Host);
    EXPECT_EQ(refusal.refusals(), comm.rank() == failing ? 1 : 0);
  }
  DistributedMultihead dist_ok(cfg, dist, comm);
  EXPECT_EQ(dist_ok.layer().params().w_q.numel(), cfg.embed_dim * cfg.embed_dim);
  comm.barrier(CommOp{"after multihead host out of memory", -1});
}

struct PlanCase {
  std::string name;
  std::string pattern;
  Shape shape;
  // The size of the host request refused: the first this large in the call is the one named.
  size_t (*refused_bytes)(const Shape& global, int world);
  std::string op;  // the phase of the call that names it
};

std::vector<PlanCase> plan_cases() {
  return {
      // This rank's host copy of q, the first of the buffers taken before the all-gather of
      // the block means.
      {"content_adaptive_block_means", "content_adaptive", Shape{2, 96, 2, 16},
       [](const Shape& g, int P) { return static_cast<size_t>(g.B * (g.N / P) * g.H * g.D) * 8; },
       "content_adaptive block means"},
      // The nb x nb block-mean scores, larger than every earlier request of the call.
      {"content_adaptive_scores", "content_adaptive", Shape{1, 96, 1, 4},
       [](const Shape& g, int) { return static_cast<size_t>((g.N / 4) * (g.N / 4)) * 8; },
       "block-sparse plan"},
      // The rows of the global mask (one std::vector per block row).
      {"local_window_mask", "local_window", Shape{1, 384, 1, 4},
       [](const Shape& g, int) {
         return static_cast<size_t>(g.N / 4) * sizeof(std::vector<int32_t>);
       },
       "block-sparse plan"},
  };
}

std::string plan_case_name(const ::testing::TestParamInfo<PlanCase>& i) { return i.param.name; }

class BlockSparsePlanOutOfHostMemory : public ::testing::TestWithParam<PlanCase> {};

// Host memory (std::bad_alloc) running out on the last rank while the block-sparse ring builds
// its plan, in a forward and then in a backward: every rank throws the same error naming the
// phase at once, and later calls are exact.
TEST_P(BlockSparsePlanOutOfHostMemory, EveryRankThrowsAtOnceAndLaterCallsAreExact) {
  const PlanCase c = GetParam();
  Communicator& comm = test_comm();
  const ShortTimeout short_timeout(comm);
  const int rank = comm.rank(), failing = comm.world() - 1;
  const bool fails_here = rank == failing;
  AttentionSpec spec;
  spec.variant = "block_sparse";
  spec.causal = true;
  spec.sparse.pattern = c.pattern;
  spec.sparse.block_size = 4;
  spec.sparse.window_size = 8;
  spec.sparse.window_given = true;
  spec.sparse.topk = 3;
  const auto in = testing::random_inputs(c.shape, DType::F64, 4400);
  FailingBackend be;
  auto attn = make_distributed_attention(
      spec, DistConfig{DistMode::BlockSparseRing, Sharding::Contiguous, SparseRoute::Direct}, comm);
  Shards s = shards_of(*attn, rank, in);
  const size_t bytes = c.refused_bytes(c.shape, comm.world());
  {
    const HostRefusal refusal(fails_here, bytes);
    expect_agreed_oom(
        comm, failing, "forward: " + c.op, [&] { forward(*attn, be, s); }, Memory::Host);
    EXPECT_EQ(refusal.refusals(), fails_here ? 1 : 0);
  }
  // The failed forward left no plan on any rank: the backward builds it again (and
  // content_adaptive recomputes its scores).
  {
    const HostRefusal refusal(fails_here, bytes);
    expect_agreed_oom(
        comm, failing, "backward: " + c.op, [&] { backward(*attn, be, s); }, Memory::Host);
    EXPECT_EQ(refusal.refusals(), fails_here ? 1 : 0);
  }
  forward(*attn, be, s);
  backward(*attn, be, s);
  expect_exact(*attn, rank, spec, in, s);
  comm.barrier(CommOp{"after block-sparse plan out of host memory", -1});
}

INSTANTIATE_TEST_SUITE_P(Plans, BlockSparsePlanOutOfHostMemory, ::testing::ValuesIn(plan_cases()),
                         plan_case_name);

}  // namespace
}  // namespace longattn
