// Ring plans (dense: full rotation; block-sparse: only needed blocks move, forwarded along the
// ring or sent directly) and the executor that runs a plan with double-buffered K/V and dK/dV
// that travel with them or go straight home.
#include "attention/ring.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <string>

#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {

const char* sparse_route_name(SparseRoute r) { return r == SparseRoute::Ring ? "ring" : "direct"; }

SparseRoute parse_sparse_route(const std::string& s, const std::string& arg) {
  if (s == "ring") return SparseRoute::Ring;
  if (s == "direct") return SparseRoute::Direct;
  throw InvalidArgument(arg, s.empty() ? "(empty)" : s, "must be one of: ring, direct");
}

int64_t total_rows(const RowRuns& runs) {
  int64_t n = 0;
  for (const RowRun& r : runs) n += r.len;
  return n;
}

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }

RowRuns full_runs(int64_t n) { return n > 0 ? RowRuns{RowRun{0, n}} : RowRuns{}; }
bool is_full(const RowRuns& r, int64_t n) {
  return r.size() == 1 && r[0].start == 0 && r[0].len == n;
}

// Sorted local block indices -> row runs (consecutive blocks merged).
RowRuns runs_of_blocks(const std::vector<int64_t>& blocks, int64_t bs) {
  RowRuns runs;
  for (int64_t b : blocks) {
    if (!runs.empty() && runs.back().start + runs.back().len == b * bs)
      runs.back().len += bs;
    else
      runs.push_back(RowRun{b * bs, bs});
  }
  return runs;
}

RingPlan plan_skeleton(const ShardLayout& layout, int rank) {
  RingPlan plan;
  plan.rank = rank;
  plan.world = layout.world();
  plan.local_rows = layout.local_len();
  for (int r = 0; r < layout.world(); ++r) plan.pieces.push_back(layout.pieces(r));
  return plan;
}

// Device buffers kept across calls: a named slot is reallocated only when the backend, dtype or
// shape changes, so repeated calls (training steps, benchmark repeats) allocate nothing.
class BufferCache {
 public:
  const DeviceTensor& get(const std::string& slot, Backend& be, DType dtype, int64_t B, int64_t N,
                          int64_t H, int64_t D) {
    Entry& e = slots_[slot];
    if (e.be != &be || e.dtype != dtype || e.B != B || e.N != N || e.H != H || e.D != D) {
      e.t = DeviceTensor();  // the old buffer goes before the new one is taken
      e.be = nullptr;        // an allocation that throws leaves the slot empty, not stale
      e.t = DeviceTensor(be, dtype, B, N, H, D);
      e.be = &be;
      e.dtype = dtype;
      e.B = B, e.N = N, e.H = H, e.D = D;
    }
    return e.t;
  }

 private:
  struct Entry {
    Backend* be = nullptr;
    DType dtype = DType::F32;
    int64_t B = 0, N = 0, H = 0, D = 0;
    DeviceTensor t;
  };
  std::map<std::string, Entry> slots_;
};

// Two [B, n, H, D] tensors in one buffer (a cache slot), the first (K or dK) then the second
// (V or dV), so one message moves both. Views of n <= capacity rows are laid out compactly from
// the start; at full capacity they are the full-layout tensors.
class PairBuffer {
 public:
  PairBuffer() = default;
  PairBuffer(BufferCache& cache, const std::string& slot, Backend& be, DType dtype, int64_t B,
             int64_t n, int64_t H, int64_t D)
      : data_(cache.get(slot, be, dtype, 2 * B, std::max<int64_t>(n, 1), H, D).data()),
        B_(B),
        n_(n),
        H_(H),
        D_(D),
        dtype_(dtype),
        device_(be.device()) {}
  TensorView first(int64_t n) const { return make_view(data_, dtype_, B_, n, H_, D_, device_); }
  TensorView second(int64_t n) const {
    return make_view(static_cast<std::byte*>(data_) + half_bytes(n), dtype_, B_, n, H_, D_,
                     device_);
  }
  TensorView first() const { return first(n_); }
  TensorView second() const { return second(n_); }
  void* data() const { return data_; }
  size_t bytes(int64_t n) const { return 2 * half_bytes(n); }
  int64_t rows() const { return n_; }

 private:
  size_t half_bytes(int64_t n) const {
    return static_cast<size_t>(B_ * n * H_ * D_) * dtype_size(dtype_);
  }
  void* data_ = nullptr;
  int64_t B_ = 0, n_ = 0, H_ = 0, D_ = 0;
  DType dtype_ = DType::F32;
  DeviceKind device_ = DeviceKind::Cpu;
};

// Copies the rows `runs` of a full-layout pair into a compact pair (pack), or back (unpack),
// or adds them back (unpack_add).
void pack(Backend& be, const PairBuffer& full, const RowRuns& runs, const PairBuffer& stage) {
  const int64_t n = total_rows(runs);
  int64_t pos = 0;
  for (const RowRun& r : runs) {
    be.copy(stage.first(n).rows(pos, r.len), full.first().rows(r.start, r.len));
    be.copy(stage.second(n).rows(pos, r.len), full.second().rows(r.start, r.len));
    pos += r.len;
  }
}
void unpack(Backend& be, const PairBuffer& stage, const RowRuns& runs, const PairBuffer& full,
            bool add) {
  const int64_t n = total_rows(runs);
  int64_t pos = 0;
  for (const RowRun& r : runs) {
    const TensorView s1 = stage.first(n).rows(pos, r.len), s2 = stage.second(n).rows(pos, r.len);
    const TensorView d1 = full.first().rows(r.start, r.len),
                     d2 = full.second().rows(r.start, r.len);
    if (add) {
      be.axpy(d1, 1.0, s1);
      be.axpy(d2, 1.0, s2);
    } else {
      be.copy(d1, s1);
      be.copy(d2, s2);
    }
    pos += r.len;
  }
}

// The largest row count of the runs chosen by `pick` over every step that would need a
// staging buffer (full-layout transfers use the full buffers directly).
template <typename Pick>
int64_t max_staged_rows(const RingPlan& plan, Pick pick) {
  int64_t m = 0;
  for (const RingStep& s : plan.steps) {
    const RowRuns& r = pick(s);
    if (!r.empty() && !is_full(r, plan.local_rows)) m = std::max(m, total_rows(r));
  }
  return m;
}

// Outgoing rows of a full-layout pair: the pair itself when every row goes, else packed into
// `stage`.
SendSpec outgoing(Backend& be, const PairBuffer& full, const RowRuns& runs, const PairBuffer& stage,
                  int peer) {
  if (runs.empty()) return SendSpec{nullptr, 0, peer};
  if (is_full(runs, full.rows())) return SendSpec{full.data(), full.bytes(full.rows()), peer};
  pack(be, full, runs, stage);
  return SendSpec{stage.data(), stage.bytes(total_rows(runs)), peer};
}
// Where incoming rows land: the full-layout pair when every row comes, else `stage`.
RecvSpec incoming(const PairBuffer& full, const RowRuns& runs, const PairBuffer& stage, int peer) {
  if (runs.empty()) return RecvSpec{nullptr, 0, peer};
  if (is_full(runs, full.rows())) return RecvSpec{full.data(), full.bytes(full.rows()), peer};
  return RecvSpec{stage.data(), stage.bytes(total_rows(runs)), peer};
}
// After the wait: staged rows are copied (or added) into place.
void land(Backend& be, const PairBuffer& stage, const RowRuns& runs, const PairBuffer& full,
          bool add) {
  if (runs.empty()) return;
  if (is_full(runs, full.rows())) {
    LONGATTN_ASSERT(!add, "a full-layout receive cannot be added in place");
    return;
  }
  unpack(be, stage, runs, full, add);
}

// The K/V buffers of a run. A ring forwards what it holds, so two buffers alternate; direct
// delivery sends from this rank's own shard at every step, so the own shard stays and two
// visitor buffers alternate.
class KvBuffers {
 public:
  KvBuffers(BufferCache& cache, Backend& be, const RingPlan& plan, const TensorView& k,
            const TensorView& v) {
    const int S = static_cast<int>(plan.steps.size());
    const bool direct = !plan.steps.empty() && plan.steps[0].send_own;
    const int count = S == 1 ? 1 : (direct && S > 2 ? 3 : 2);
    for (int i = 0; i < count; ++i)
      bufs_[i] = PairBuffer(cache, "kv" + std::to_string(i), be, k.dtype, k.B, plan.local_rows,
                            k.H, k.D);
    be.copy(bufs_[0].first(), k);
    be.copy(bufs_[0].second(), v);
    keep_own_ = direct;
  }
  const PairBuffer& own() const { return bufs_[0]; }
  const PairBuffer& current() const { return bufs_[cur_]; }
  const PairBuffer& next() const { return bufs_[next_index()]; }
  void advance() { cur_ = next_index(); }

 private:
  int next_index() const {
    if (!keep_own_) return 1 - cur_;
    return cur_ == 1 ? 2 : 1;
  }
  PairBuffer bufs_[3];
  int cur_ = 0;
  bool keep_own_ = false;
};

void check_views(const RingPlan& plan, Communicator& comm, Backend& be, const TensorView& q,
                 std::initializer_list<std::pair<const char*, TensorView>> same,
                 const TensorView& lse) {
  LONGATTN_CHECK_ARG(comm.world() == plan.world && comm.rank() == plan.rank, "communicator",
                     "rank " + std::to_string(comm.rank()) + " of " + std::to_string(comm.world()),
                     "must be the rank and world the ring plan was made for (rank " +
                         std::to_string(plan.rank) + " of " + std::to_string(plan.world) + ")");
  LONGATTN_CHECK_ARG(comm.buffer_device() == be.device(), "communicator", comm.backend(),
                     "must move the memory of backend " + be.name());
  LONGATTN_CHECK_ARG(q.N == plan.local_rows, "q", q.shape_string(),
                     "must hold this rank's " + std::to_string(plan.local_rows) + " rows");
  for (const auto& [name, t] : same)
    LONGATTN_CHECK_ARG(t.B == q.B && t.N == q.N && t.H == q.H && t.D == q.D, name, t.shape_string(),
                       "must have the shape of q " + q.shape_string());
  LONGATTN_CHECK_ARG(lse.B == q.B && lse.N == q.N && lse.H == q.H && lse.D == 1, "lse",
                     lse.shape_string(), "must be [B, N, H, 1] of q " + q.shape_string());
}

int64_t max_piece_len(const RingPlan& plan) {
  int64_t m = 0;
  for (const ShardPiece& p : plan.pieces[plan.rank]) m = std::max(m, p.len);
  return m;
}

}  // namespace

RingPlan make_dense_ring_plan(const ShardLayout& layout, int rank, int64_t block, bool causal) {
  LONGATTN_CHECK_ARG(block > 0, "block_size", block, "must be positive");
  RingPlan plan = plan_skeleton(layout, rank);
  const int P = plan.world;
  const RowRuns all = full_runs(plan.local_rows);
  for (int t = 0; t < P; ++t) {
    RingStep st;
    st.origin = (rank - t + P) % P;
    st.distance = t;
    st.send_peer = (rank + 1) % P;
    st.recv_peer = (rank + P - 1) % P;
    st.home_peer = (rank + t) % P;
    const auto& qp = plan.pieces[rank];
    const auto& kp = plan.pieces[st.origin];
    for (size_t i = 0; i < qp.size(); ++i)
      for (size_t j = 0; j < kp.size(); ++j) {
        BlockMask m = dense_block_mask(
            MaskGeometry{qp[i].len, kp[j].len, block, block, causal, qp[i].global, kp[j].global});
        if (m.nnz() > 0)
          st.work.push_back(RingWork{static_cast<int>(i), static_cast<int>(j), std::move(m)});
      }
    if (t + 1 < P) {
      st.send = all;
      st.recv = all;
    }
    if (P > 1 && t == P - 1) {  // the accumulators of the last visitor go home: one ring hop
      st.retire = all;
      st.home = all;
    }
    plan.steps.push_back(std::move(st));
  }
  return plan;
}

RingPlan make_sparse_ring_plan(const ShardLayout& layout, int rank, const BlockMask& global,
                               SparseRoute route) {
  RingPlan plan = plan_skeleton(layout, rank);
  const int P = plan.world;
  const int64_t bs = global.block_q, N = layout.seq_len();
  LONGATTN_CHECK_ARG(global.block_k == bs && bs > 0, "block mask",
                     std::to_string(global.block_q) + "x" + std::to_string(global.block_k),
                     "must use square positive blocks");
  LONGATTN_CHECK_ARG(global.num_q_blocks * bs == N && global.num_k_blocks * bs == N, "block mask",
                     std::to_string(global.num_q_blocks) + " blocks of " + std::to_string(bs),
                     "must cover the sequence length " + std::to_string(N) + " exactly");
  const int64_t piece = plan.pieces[0][0].len;
  LONGATTN_CHECK_ARG(piece % bs == 0, "block_size", bs,
                     "must divide the rows of each shard piece (" + std::to_string(piece) +
                         " with " + sharding_name(layout.kind()) + " sharding over " +
                         std::to_string(P) + " ranks)");
  plan.global_blocks_needed = global.nnz();
  const int64_t nb = N / bs, nlb = plan.local_rows / bs;
  std::vector<int> owner(static_cast<size_t>(nb));
  std::vector<int64_t> local_block(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    owner[b] = layout.owner(b * bs);
    local_block[b] = layout.local_row(b * bs) / bs;
  }
  // need[origin][distance][local block]: the rank at that ring distance from the origin
  // needs the block. It decides what is sent (direct) or how far a block travels (ring).
  std::vector<std::vector<std::vector<uint8_t>>> need(
      static_cast<size_t>(P),
      std::vector<std::vector<uint8_t>>(static_cast<size_t>(P), std::vector<uint8_t>(nlb, 0)));
  for (int64_t qb = 0; qb < nb; ++qb)
    for (int64_t e = global.row_ptr[qb]; e < global.row_ptr[qb + 1]; ++e) {
      const int64_t kb = global.col_idx[e];
      const int d = (owner[qb] - owner[kb] + P) % P;
      need[owner[kb]][d][local_block[kb]] = 1;
    }
  // last[origin][local block]: the furthest distance at which the block is needed (-1: never).
  std::vector<std::vector<int>> last(static_cast<size_t>(P), std::vector<int>(nlb, -1));
  std::vector<uint8_t> distance_used(static_cast<size_t>(P), 0);
  distance_used[0] = 1;
  for (int o = 0; o < P; ++o)
    for (int d = 0; d < P; ++d)
      for (int64_t lb = 0; lb < nlb; ++lb)
        if (need[o][d][lb]) {
          last[o][lb] = std::max(last[o][lb], d);
          distance_used[d] = 1;
        }
  auto rows_where = [&](auto pred) {
    std::vector<int64_t> blocks;
    for (int64_t lb = 0; lb < nlb; ++lb)
      if (pred(lb)) blocks.push_back(lb);
    return runs_of_blocks(blocks, bs);
  };
  // The distances visited: ring walks 0, 1, ... up to the furthest need; direct visits only
  // the distances some rank needs.
  std::vector<int> distances;
  if (route == SparseRoute::Ring) {
    int furthest = 0;
    for (int d = 0; d < P; ++d)
      if (distance_used[d]) furthest = d;
    for (int d = 0; d <= furthest; ++d) distances.push_back(d);
  } else {
    for (int d = 0; d < P; ++d)
      if (distance_used[d]) distances.push_back(d);
  }
  plan.travelling_grads = route == SparseRoute::Ring;
  const int S = static_cast<int>(distances.size());
  const auto& my_pieces = plan.pieces[rank];
  for (int t = 0; t < S; ++t) {
    RingStep st;
    const int d = distances[t];
    st.distance = d;
    st.origin = (rank - d + P) % P;
    const auto& kp = plan.pieces[st.origin];
    for (size_t i = 0; i < my_pieces.size(); ++i) {
      const int64_t qb0 = my_pieces[i].global / bs, nqb = my_pieces[i].len / bs;
      for (size_t j = 0; j < kp.size(); ++j) {
        const int64_t kb0 = kp[j].global / bs, nkb = kp[j].len / bs;
        BlockMask m;
        m.block_q = m.block_k = bs;
        m.num_q_blocks = nqb;
        m.num_k_blocks = nkb;
        for (int64_t r = 0; r < nqb; ++r) {
          const int64_t qb = qb0 + r;
          for (int64_t e = global.row_ptr[qb]; e < global.row_ptr[qb + 1]; ++e) {
            const int64_t kb = global.col_idx[e];
            if (kb < kb0 || kb >= kb0 + nkb) continue;
            m.col_idx.push_back(static_cast<int32_t>(kb - kb0));
            m.partial.push_back(global.partial[e]);
          }
          m.row_ptr.push_back(m.nnz());
        }
        if (m.nnz() > 0)
          st.work.push_back(RingWork{static_cast<int>(i), static_cast<int>(j), std::move(m)});
      }
    }
    const int o = st.origin;
    if (route == SparseRoute::Ring) {
      st.send_peer = (rank + 1) % P;
      st.recv_peer = (rank + P - 1) % P;
      st.home_peer = (rank + d) % P;
      if (t + 1 < S) {
        const int next_origin = (rank - d - 1 + P) % P;
        st.send = rows_where([&](int64_t lb) { return last[o][lb] >= d + 1; });
        st.recv = rows_where([&](int64_t lb) { return last[next_origin][lb] >= d + 1; });
      }
      if (t >= 1) {
        st.retire = rows_where([&](int64_t lb) { return last[o][lb] == d; });
        st.home = rows_where([&](int64_t lb) { return last[rank][lb] == d; });
      }
    } else {
      st.send_own = true;
      st.home_peer = (rank + d) % P;
      if (t + 1 < S) {
        const int dn = distances[t + 1];
        st.send_peer = (rank + dn) % P;
        st.recv_peer = (rank - dn + P) % P;
        st.send = rows_where([&](int64_t lb) { return need[rank][dn][lb] != 0; });
        st.recv = rows_where([&](int64_t lb) { return need[st.recv_peer][dn][lb] != 0; });
      }
      if (t >= 1) {
        st.retire = rows_where([&](int64_t lb) { return need[o][d][lb] != 0; });
        st.home = rows_where([&](int64_t lb) { return need[rank][d][lb] != 0; });
      }
    }
    plan.steps.push_back(std::move(st));
  }
  return plan;
}

struct RingAttention::Masks {
  Backend* be = nullptr;
  std::vector<std::vector<std::unique_ptr<PreparedMask>>> fwd, bwd;
};

struct RingAttention::Workspace {
  BufferCache cache;
};

RingAttention::RingAttention(RingPlan plan, const AttentionSpec& spec)
    : plan_(std::move(plan)), spec_(spec) {}
RingAttention::~RingAttention() = default;

RingAttention::Workspace& RingAttention::workspace() {
  if (!workspace_) workspace_ = std::make_unique<Workspace>();
  return *workspace_;
}

RingAttention::Masks& RingAttention::masks(Backend& be) {
  if (masks_ && masks_->be == &be) return *masks_;
  masks_.reset();
  // Built aside and kept only when complete: a failed preparation leaves no partial set.
  auto m = std::make_unique<Masks>();
  m->be = &be;
  for (const RingStep& st : plan_.steps) {
    m->fwd.emplace_back();
    m->bwd.emplace_back(st.work.size());
    for (const RingWork& w : st.work) m->fwd.back().push_back(be.prepare_mask(w.mask));
  }
  masks_ = std::move(m);
  return *masks_;
}

std::string RingAttention::op_name(const char* pass) const {
  return std::string(spec_.variant == "block_sparse" ? "block-sparse ring " : "ring ") + pass;
}

void RingAttention::forward(Backend& be, Communicator& comm, const TensorView& q,
                            const TensorView& k, const TensorView& v, const TensorView& o,
                            const TensorView& lse, DistCounters& counters) {
  check_views(plan_, comm, be, q, {{"k", k}, {"v", v}, {"o", o}}, lse);
  const int64_t B = q.B, Nl = plan_.local_rows, H = q.H, D = q.D;
  const int S = static_cast<int>(plan_.steps.size());
  BufferCache& cache = workspace().cache;

  // Every buffer of the call is taken before the first exchange, and the ranks agree that all
  // of them got theirs: a rank out of memory stops every rank here, none waits in the loop.
  Masks* pm = nullptr;
  std::optional<KvBuffers> kv;
  PairBuffer send_stage, recv_stage;
  TensorView acc = o;
  const DeviceTensor *o_part = nullptr, *l_part = nullptr;
  run_and_agree(comm, op_name("forward"), [&] {
    pm = &masks(be);
    kv.emplace(cache, be, plan_, k, v);
    if (const int64_t n =
            max_staged_rows(plan_, [](const RingStep& s) -> const RowRuns& { return s.send; }))
      send_stage = PairBuffer(cache, "kv_send_stage", be, q.dtype, B, n, H, D);
    if (const int64_t n =
            max_staged_rows(plan_, [](const RingStep& s) -> const RowRuns& { return s.recv; }))
      recv_stage = PairBuffer(cache, "kv_recv_stage", be, q.dtype, B, n, H, D);
    // Partial results merge into an fp32 accumulator when o is fp16/bf16 (no per-step
    // rounding).
    if (is_half(o.dtype)) acc = cache.get("o_acc", be, DType::F32, B, Nl, H, D).view();
    const int64_t pl = max_piece_len(plan_);
    o_part = &cache.get("o_part", be, o.dtype, B, pl, H, D);
    l_part = &cache.get("lse_part", be, lse.dtype, B, pl, H, 1);
  });
  be.fill(acc, 0.0);
  be.fill(lse, kNegInf);

  const auto& my_pieces = plan_.pieces[plan_.rank];
  for (int t = 0; t < S; ++t) {
    const RingStep& st = plan_.steps[t];
    CommRequest req;
    if (t + 1 < S) {
      const SendSpec s =
          outgoing(be, st.send_own ? kv->own() : kv->current(), st.send, send_stage, st.send_peer);
      const RecvSpec r = incoming(kv->next(), st.recv, recv_stage, st.recv_peer);
      req = comm.start_exchange({s}, {r}, CommOp{"ring forward K/V", t});
      counters.hops += s.bytes > 0;
      counters.bytes_sent += static_cast<int64_t>(s.bytes);
      counters.bytes_received += static_cast<int64_t>(r.bytes);
    }
    const auto& kp = plan_.pieces[st.origin];
    for (size_t w = 0; w < st.work.size(); ++w) {
      const RingWork& work = st.work[w];
      const ShardPiece& qp = my_pieces[work.q_piece];
      const ShardPiece& kpc = kp[work.k_piece];
      const AttnFwdParams p = make_fwd_params(
          {q.rows(qp.local, qp.len), kv->current().first().rows(kpc.local, kpc.len),
           kv->current().second().rows(kpc.local, kpc.len), o_part->view().rows(0, qp.len),
           l_part->view().rows(0, qp.len)},
          pm->fwd[t][w]->view(), {spec_.scale, spec_.causal, qp.global, kpc.global});
      be.attention_forward(p);
      be.merge(acc.rows(qp.local, qp.len), lse.rows(qp.local, qp.len), p.o, p.lse);
      counters.blocks_computed += work.mask.nnz();
    }
    req.wait();
    if (t + 1 < S) {
      land(be, recv_stage, st.recv, kv->next(), false);
      kv->advance();
    }
  }
  counters.steps += S;
  if (acc.data != o.data) be.copy(o, acc);
}

void RingAttention::backward(Backend& be, Communicator& comm, const TensorView& q,
                             const TensorView& k, const TensorView& v, const TensorView& o,
                             const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                             const TensorView& dk, const TensorView& dv, DistCounters& counters) {
  check_views(plan_, comm, be, q,
              {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}},
              lse);
  const int64_t B = q.B, Nl = plan_.local_rows, H = q.H, D = q.D;
  const int S = static_cast<int>(plan_.steps.size());
  const int rank = plan_.rank;
  BufferCache& cache = workspace().cache;
  // Gradients accumulate over steps in fp32 when the inputs are fp16/bf16.
  const DType gd = is_half(dq.dtype) ? DType::F32 : dq.dtype;
  auto pick_send = [](const RingStep& s) -> const RowRuns& { return s.send; };
  auto pick_recv = [](const RingStep& s) -> const RowRuns& { return s.recv; };
  auto pick_retire = [](const RingStep& s) -> const RowRuns& { return s.retire; };
  const bool travelling = plan_.travelling_grads;

  // Every mask and buffer of the call is taken before the first exchange, and the ranks agree
  // that all of them got theirs (see forward).
  Masks* pm = nullptr;
  std::optional<KvBuffers> kv;
  PairBuffer kv_send_stage, kv_recv_stage;
  TensorView dq_acc = dq;
  // home: this rank's own dK/dV (its step-0 contribution plus every accumulator that returns).
  // acc[a]: the visiting origin's dK/dV (ring: the travelling accumulator; direct: this
  // step's partial, sent home); part (ring): a step's contribution computed while the
  // incoming accumulator is still in flight.
  PairBuffer home, acc[2], part, fwd_send_stage, fwd_recv_stage, retire_stage, home_stage;
  run_and_agree(comm, op_name("backward"), [&] {
    pm = &masks(be);
    // The transposed masks of the dK/dV pass (preparing one copies it to the device and
    // waits).
    for (size_t t = 0; t < plan_.steps.size(); ++t)
      for (size_t w = 0; w < plan_.steps[t].work.size(); ++w)
        if (!pm->bwd[t][w])
          pm->bwd[t][w] = be.prepare_mask(plan_.steps[t].work[w].mask.transpose());
    kv.emplace(cache, be, plan_, k, v);
    if (const int64_t n = max_staged_rows(plan_, pick_send))
      kv_send_stage = PairBuffer(cache, "kv_send_stage", be, q.dtype, B, n, H, D);
    if (const int64_t n = max_staged_rows(plan_, pick_recv))
      kv_recv_stage = PairBuffer(cache, "kv_recv_stage", be, q.dtype, B, n, H, D);
    if (gd != dq.dtype) dq_acc = cache.get("dq_acc", be, gd, B, Nl, H, D).view();
    home = PairBuffer(cache, "dkv_home", be, gd, B, Nl, H, D);
    if (S > 1) {
      for (int i = 0; i < 2; ++i)
        acc[i] = PairBuffer(cache, "dkv_acc" + std::to_string(i), be, gd, B, Nl, H, D);
      if (travelling) {
        part = PairBuffer(cache, "dkv_part", be, gd, B, Nl, H, D);
        if (const int64_t n = max_staged_rows(plan_, pick_send))
          fwd_send_stage = PairBuffer(cache, "dkv_send_stage", be, gd, B, n, H, D);
        if (const int64_t n = max_staged_rows(plan_, pick_recv))
          fwd_recv_stage = PairBuffer(cache, "dkv_recv_stage", be, gd, B, n, H, D);
      }
      if (const int64_t n = max_staged_rows(plan_, pick_retire))
        retire_stage = PairBuffer(cache, "dkv_retire_stage", be, gd, B, n, H, D);
      // Returning accumulators are added into `home`, so they always land in a buffer first.
      int64_t hn = 0;
      for (const RingStep& s : plan_.steps) hn = std::max(hn, total_rows(s.home));
      if (hn > 0) home_stage = PairBuffer(cache, "dkv_home_stage", be, gd, B, hn, H, D);
    }
  });
  be.fill(dq_acc, 0.0);
  be.fill(home.first(), 0.0);
  be.fill(home.second(), 0.0);
  if (S > 1)
    for (int i = 0; i < 2; ++i) {
      be.fill(acc[i].first(), 0.0);
      be.fill(acc[i].second(), 0.0);
    }

  const auto& my_pieces = plan_.pieces[rank];
  int a = 0;
  CommRequest dkv_req;
  // Lands the dK/dV exchange posted after step `t`: the next visitor's accumulator into acc[a]
  // and this rank's returning rows added into home.
  auto finish_dkv = [&](int t) {
    dkv_req.wait();
    const RingStep& st = plan_.steps[t];
    if (travelling && t + 1 < S) land(be, fwd_recv_stage, st.recv, acc[a], false);
    if (!st.home.empty()) unpack(be, home_stage, st.home, home, true);
  };

  for (int t = 0; t < S; ++t) {
    const RingStep& st = plan_.steps[t];
    CommRequest kv_req;
    if (t + 1 < S) {
      const SendSpec s = outgoing(be, st.send_own ? kv->own() : kv->current(), st.send,
                                  kv_send_stage, st.send_peer);
      const RecvSpec r = incoming(kv->next(), st.recv, kv_recv_stage, st.recv_peer);
      kv_req = comm.start_exchange({s}, {r}, CommOp{"ring backward K/V", t});
      counters.hops += s.bytes > 0;
      counters.bytes_sent += static_cast<int64_t>(s.bytes);
      counters.bytes_received += static_cast<int64_t>(r.bytes);
    }
    // Where this step's dK/dV contributions go.
    const PairBuffer* target = &home;
    if (t == 1 || (t >= 2 && !travelling)) {
      // ring: the first visitor starts the accumulator (it arrives as zeros); direct: each
      // step's partial goes home on its own.
      target = &acc[a];
      be.fill(acc[a].first(), 0.0);
      be.fill(acc[a].second(), 0.0);
    } else if (t >= 2 && !st.work.empty()) {
      target = &part;
      be.fill(part.first(), 0.0);
      be.fill(part.second(), 0.0);
    }
    const auto& kp = plan_.pieces[st.origin];
    for (size_t w = 0; w < st.work.size(); ++w) {
      const RingWork& work = st.work[w];
      const ShardPiece& qp = my_pieces[work.q_piece];
      const ShardPiece& kpc = kp[work.k_piece];
      be.attention_backward(make_bwd_params(
          {q.rows(qp.local, qp.len), kv->current().first().rows(kpc.local, kpc.len),
           kv->current().second().rows(kpc.local, kpc.len), o.rows(qp.local, qp.len),
           lse.rows(qp.local, qp.len)},
          {d_o.rows(qp.local, qp.len), dq_acc.rows(qp.local, qp.len),
           target->first().rows(kpc.local, kpc.len), target->second().rows(kpc.local, kpc.len)},
          pm->fwd[t][w]->view(), pm->bwd[t][w]->view(),
          {spec_.scale, spec_.causal, qp.global, kpc.global}));
      counters.blocks_computed += work.mask.nnz();
    }
    if (t >= 2) {
      finish_dkv(t - 1);
      if (target == &part) {
        be.axpy(acc[a].first(), 1.0, part.first());
        be.axpy(acc[a].second(), 1.0, part.second());
      }
    }
    if (t >= 1) {
      // The accumulator moves on with the rows someone further needs; finished rows go home.
      std::vector<SendSpec> sends;
      std::vector<RecvSpec> recvs;
      if (travelling) {
        sends.push_back(outgoing(be, acc[a], st.send, fwd_send_stage, st.send_peer));
        if (t + 1 < S) recvs.push_back(incoming(acc[1 - a], st.recv, fwd_recv_stage, st.recv_peer));
      }
      sends.push_back(outgoing(be, acc[a], st.retire, retire_stage, st.origin));
      if (!st.home.empty())
        recvs.push_back(
            RecvSpec{home_stage.data(), home_stage.bytes(total_rows(st.home)), st.home_peer});
      dkv_req = comm.start_exchange(sends, recvs, CommOp{"ring backward dK/dV", t});
      for (const auto& s : sends) counters.bytes_sent += static_cast<int64_t>(s.bytes);
      for (const auto& r : recvs) counters.bytes_received += static_cast<int64_t>(r.bytes);
      a = 1 - a;
    }
    kv_req.wait();
    if (t + 1 < S) {
      land(be, kv_recv_stage, st.recv, kv->next(), false);
      kv->advance();
    }
  }
  if (S >= 2) finish_dkv(S - 1);
  counters.steps += S;
  if (dq_acc.data != dq.data) be.copy(dq, dq_acc);
  be.copy(dk, home.first());
  be.copy(dv, home.second());
}

}  // namespace longattn
