// One rank that cannot allocate: the forward and backward of every distributed mode make EVERY
// rank throw the same OutOfMemory naming that rank, the call and the bytes requested, at once
// (well under the communication timeout) instead of leaving its peers waiting in an exchange;
// the same object then gives the exact result (fp64 to 1e-10) for a smaller call, and after a
// failure half-way through its allocations.
#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "attention/distributed.hpp"
#include "mpi_env.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

using testing::kDistTolerance;
using testing::max_abs_diff;
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

// Runs `call`, which must throw OutOfMemory on every rank because rank `failing` could not
// allocate: the message names that rank, `op` and the bytes requested, it is the same on every
// rank, and it comes at once rather than after the communication timeout.
template <typename Call>
void expect_agreed_oom(Communicator& comm, int failing, const std::string& op, Call&& call) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string what;
  try {
    call();
    ADD_FAILURE() << op << ": rank " << comm.rank() << " did not throw";
  } catch (const OutOfMemory& e) {
    what = e.what();
    EXPECT_GT(e.requested_bytes(), 0u) << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << op << ": rank " << comm.rank() << " threw another error: " << e.what();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, comm.timeout_seconds() / 4) << op << " took " << seconds << " s";
  EXPECT_NE(what.find(op), std::string::npos) << what;
  EXPECT_NE(what.find("rank " + std::to_string(failing) + ":"), std::string::npos) << what;
  EXPECT_NE(what.find("bytes requested"), std::string::npos) << what;
  // The same message everywhere: agree_on_config throws when any rank's text differs.
  EXPECT_NO_THROW(agree_on_config(comm, what, op + " error message"));
}

struct OomCase {
  std::string name;
  AttentionSpec spec;
  DistConfig cfg;
  Shape small, big;  // global shapes; big needs larger allocations than small
  // Whether big's forward needs more than small's largest allocation (dilated groups allocates
  // in the forward only for segments that span ranks, whose size does not grow with N).
  bool big_forward_fails = true;
};

std::string case_name(const ::testing::TestParamInfo<OomCase>& i) { return i.param.name; }

class OneRankOutOfMemory : public ::testing::TestWithParam<OomCase> {};

TEST_P(OneRankOutOfMemory, EveryRankThrowsTheSameErrorAndTheObjectStaysUsable) {
  const OomCase c = GetParam();
  Communicator& comm = test_comm();
  const int rank = comm.rank(), failing = comm.world() - 1;
  const bool fails_here = rank == failing;
  // A short timeout: a rank left waiting would fail this test quickly, not hang it.
  struct TimeoutGuard {
    Communicator& comm;
    double saved;
    ~TimeoutGuard() { comm.set_timeout_seconds(saved); }
  } guard{comm, comm.timeout_seconds()};
  comm.set_timeout_seconds(20.0);
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
  if (c.big_forward_fails)
    expect_agreed_oom(comm, failing, "forward", [&] { forward(*attn, be, big); });
  else
    EXPECT_NO_THROW(forward(*attn, be, big));
  expect_agreed_oom(comm, failing, "backward", [&] { backward(*attn, be, big); });
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
                        Shape{1, 96, 2, 4}, Shape{4, 96, 2, 4}});
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

}  // namespace
}  // namespace longattn
