// Ring plans (dense: full rotation; block-sparse: only needed blocks move, forwarded along the
// ring or sent directly) and the executor that runs a plan with double-buffered K/V and dK/dV
// that travel with them or go straight home (dense backward: chunk by chunk, K/V and dK/dV in
// one message), every buffer carved from one workspace allocation.
#include "attention/ring.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "attention/arena.hpp"
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

// Where rows [start, start + len) lie when only `runs` are held, one run after another; -1 when
// they are not inside one run.
int64_t compact_pos(const RowRuns& runs, int64_t start, int64_t len) {
  int64_t at = 0;
  for (const RowRun& r : runs) {
    if (start >= r.start && start + len <= r.start + r.len) return at + start - r.start;
    at += r.len;
  }
  return -1;
}

// Calls fn(start, len, inside) for the parts of rows [start, start + len) inside and outside
// the sorted runs, in order.
template <class Fn>
void for_each_part(const RowRuns& runs, int64_t start, int64_t len, Fn fn) {
  int64_t at = start;
  const int64_t end = start + len;
  for (const RowRun& r : runs) {
    if (at >= end) break;
    const int64_t s = std::max(at, r.start), e = std::min(end, r.start + r.len);
    if (e <= s) continue;
    if (s > at) fn(at, s - at, false);
    fn(s, e - s, true);
    at = e;
  }
  if (at < end) fn(at, end - at, false);
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

// Offsets of a call's buffers in the workspace, each aligned for vector and TMA loads.
class Layout {
 public:
  static constexpr size_t kAlign = 256;
  size_t take(size_t bytes) {
    const size_t at = end_;
    end_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return at;
  }
  size_t bytes() const { return end_; }

 private:
  size_t end_ = 0;
};

size_t tensor_bytes(DType t, int64_t B, int64_t N, int64_t H, int64_t D) {
  return static_cast<size_t>(B * N * H * D) * dtype_size(t);
}

// Two [B, n, H, D] tensors in one buffer, the first (K or dK) then the second (V or dV), so one
// message moves both. Views of n <= capacity rows are laid out compactly from the start; at full
// capacity they are the full-layout tensors.
class PairBuffer {
 public:
  PairBuffer() = default;
  PairBuffer(std::byte* data, DType dtype, int64_t B, int64_t n, int64_t H, int64_t D,
             DeviceKind device)
      : data_(data), B_(B), n_(n), H_(H), D_(D), dtype_(dtype), device_(device) {}
  static size_t capacity_bytes(DType dtype, int64_t B, int64_t n, int64_t H, int64_t D) {
    return 2 * tensor_bytes(dtype, B, n, H, D);
  }
  TensorView first(int64_t n) const { return make_view(data_, dtype_, B_, n, H_, D_, device_); }
  TensorView second(int64_t n) const {
    return make_view(data_ + half_bytes(n), dtype_, B_, n, H_, D_, device_);
  }
  TensorView first() const { return first(n_); }
  TensorView second() const { return second(n_); }
  void* data() const { return data_; }
  size_t bytes(int64_t n) const { return 2 * half_bytes(n); }
  int64_t rows() const { return n_; }
  // The same memory as a pair of n rows (n at most the rows it was made for).
  PairBuffer resized(int64_t n) const {
    PairBuffer b = *this;
    b.n_ = n;
    return b;
  }

 private:
  size_t half_bytes(int64_t n) const { return tensor_bytes(dtype_, B_, n, H_, D_); }
  std::byte* data_ = nullptr;
  int64_t B_ = 0, n_ = 0, H_ = 0, D_ = 0;
  DType dtype_ = DType::F32;
  DeviceKind device_ = DeviceKind::Cpu;
};

// A pair of [B, rows, H, D] tensors placed in a layout now and bound to the workspace later.
struct PairSlot {
  size_t offset = 0;
  DType dtype = DType::F32;
  int64_t rows = 0;
  bool used = false;
  void place(Layout& l, DType t, int64_t B, int64_t n, int64_t H, int64_t D) {
    dtype = t;
    rows = n;
    used = true;
    offset = l.take(PairBuffer::capacity_bytes(t, B, n, H, D));
  }
  PairBuffer bind(std::byte* base, int64_t B, int64_t H, int64_t D, DeviceKind dev) const {
    return used ? PairBuffer(base + offset, dtype, B, rows, H, D, dev) : PairBuffer();
  }
};

// Copies the rows `runs` of a full-layout pair into a compact pair (pack), or back (unpack),
// or adds them back (unpack_add).
template <typename Pair>
void pack(Backend& be, const Pair& full, const RowRuns& runs, const PairBuffer& stage) {
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

// The same for K/V transfers, whose rows travel in place where kv_rows_in_place says so.
bool kv_rows_in_place(const RowRuns& runs, int64_t rows, int64_t batch);
template <typename Pick>
int64_t kv_staged_rows(const RingPlan& plan, int64_t batch, Pick pick) {
  int64_t m = 0;
  for (const RingStep& s : plan.steps) {
    const RowRuns& r = pick(s);
    if (!r.empty() && !kv_rows_in_place(r, plan.local_rows, batch))
      m = std::max(m, total_rows(r));
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
// Starts an exchange and adds its bytes to the counters (hops are counted by the caller: what
// makes a hop differs between the routes).
CommRequest counted_exchange(Communicator& comm, const std::vector<SendSpec>& sends,
                             const std::vector<RecvSpec>& recvs, const CommOp& op,
                             DistCounters& counters) {
  for (const auto& x : sends) counters.bytes_sent += static_cast<int64_t>(x.bytes);
  for (const auto& x : recvs) counters.bytes_received += static_cast<int64_t>(x.bytes);
  return comm.start_exchange(sends, recvs, op);
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

// K and V of one origin: this rank's own input tensors, or a visitor's buffer.
struct KvPair {
  TensorView k, v;
  TensorView first() const { return k; }
  TensorView second() const { return v; }
  int64_t rows() const { return k.N; }
};

// The K/V buffers of a run. Step 0 computes on this rank's own K and V where they lie (no
// copy); visitors arrive in workspace buffers, step t's in visitor[t % 2] (one buffer when
// a single visitor comes), so the buffer computed on is never the one being received into.
// A ring forwards the visitor it holds; direct delivery always sends from the own shard.
// Non-contiguous inputs are copied into a buffer of their own first (whole-shard messages
// need contiguous memory).
class KvBuffers {
 public:
  // compact: a visitor holds only the rows its step needs (RingStep::retire of the step, runs
  // one after another; RingAttention::compact_).
  void place(Layout& l, const RingPlan& plan, const TensorView& k, const TensorView& v,
             bool compact) {
    const int S = static_cast<int>(plan.steps.size());
    visitors_ = S <= 1 ? 0 : S == 2 ? 1 : 2;
    copy_own_ = !(k.is_contiguous() && v.is_contiguous());
    compact_ = compact;
    rows_.assign(static_cast<size_t>(S), plan.local_rows);
    int64_t most = 0;
    for (int t = 1; t < S; ++t) {
      if (compact) rows_[t] = total_rows(plan.steps[t].retire);
      most = std::max(most, rows_[t]);
    }
    for (int i = 0; i < visitors_; ++i) slots_[i].place(l, k.dtype, k.B, most, k.H, k.D);
    if (copy_own_) slots_[visitors_].place(l, k.dtype, k.B, plan.local_rows, k.H, k.D);
  }
  bool compact() const { return compact_; }
  void bind(Backend& be, std::byte* base, const TensorView& k, const TensorView& v) {
    for (int i = 0; i < visitors_ + copy_own_; ++i)
      bufs_[i] = slots_[i].bind(base, k.B, k.H, k.D, be.device());
    own_ = KvPair{k, v};
    if (copy_own_) {
      const PairBuffer& c = bufs_[visitors_];
      be.copy(c.first(), k);
      be.copy(c.second(), v);
      own_ = KvPair{c.first(), c.second()};
    }
    step_ = 0;
  }
  const KvPair& own() const { return own_; }
  KvPair current() const {
    if (step_ == 0) return own_;
    const PairBuffer& b = bufs_[(step_ - 1) % visitors_];
    const int64_t n = rows_[step_];
    return KvPair{b.first(n), b.second(n)};
  }
  // The next step's buffer and the rows it receives (a PairBuffer of exactly those rows).
  PairBuffer next() const {
    const PairBuffer& b = bufs_[step_ % visitors_];
    return b.resized(rows_[step_ + 1]);
  }
  void advance() { ++step_; }

 private:
  PairSlot slots_[3];
  PairBuffer bufs_[3];
  int visitors_ = 0;
  bool copy_own_ = false;
  bool compact_ = false;
  std::vector<int64_t> rows_;  // [step]: rows a visitor holds
  int step_ = 0;
  KvPair own_;
};

// Rows of a K/V pair that travel straight from and to the full-layout tensors, K then V as two
// messages: every row, or (batch 1) one run of rows, contiguous in both. Other row sets are
// staged as one packed message. Sender and receiver apply the same rule to the same rows.
bool kv_rows_in_place(const RowRuns& runs, int64_t rows, int64_t batch) {
  return !runs.empty() && (is_full(runs, rows) || (runs.size() == 1 && batch == 1));
}

// One ring step's K/V move: this rank's own (direct) or current (ring) K/V out to
// st.send_peer, the next origin's in from st.recv_peer (kv_rows_in_place: straight from where
// they lie into the visitor buffer; else through the stages). A hop when anything is sent.
CommRequest start_kv_step(Communicator& comm, Backend& be, const RingStep& st,
                          const KvBuffers& kv, const PairBuffer& send_stage,
                          const PairBuffer& recv_stage, const char* what, int t,
                          DistCounters& counters) {
  std::vector<SendSpec> sends;
  std::vector<RecvSpec> recvs;
  const KvPair from = st.send_own ? kv.own() : kv.current();
  auto bytes_of = [](const TensorView& x, int64_t rows) {
    return tensor_bytes(x.dtype, x.B, rows, x.H, x.D);
  };
  if (kv_rows_in_place(st.send, from.rows(), from.k.B)) {
    const RowRun r = st.send.size() == 1 ? st.send[0] : RowRun{0, from.rows()};
    sends = {SendSpec{from.k.rows(r.start, r.len).data, bytes_of(from.k, r.len), st.send_peer},
             SendSpec{from.v.rows(r.start, r.len).data, bytes_of(from.v, r.len), st.send_peer}};
  } else if (!st.send.empty()) {
    pack(be, from, st.send, send_stage);
    sends = {SendSpec{send_stage.data(), send_stage.bytes(total_rows(st.send)), st.send_peer}};
  }
  const PairBuffer to = kv.next();
  const int64_t full_rows = from.rows();  // every rank holds as many rows
  if (kv.compact() && !st.recv.empty()) {
    // The visitor holds just these rows, in the layout of a staged message.
    const int64_t n = total_rows(st.recv);
    if (kv_rows_in_place(st.recv, full_rows, to.first().B))
      recvs = {RecvSpec{to.first(n).data, bytes_of(to.first(n), n), st.recv_peer},
               RecvSpec{to.second(n).data, bytes_of(to.second(n), n), st.recv_peer}};
    else
      recvs = {RecvSpec{to.data(), to.bytes(n), st.recv_peer}};
  } else if (kv_rows_in_place(st.recv, to.rows(), to.first().B)) {
    const RowRun r = st.recv.size() == 1 ? st.recv[0] : RowRun{0, to.rows()};
    const TensorView k = to.first().rows(r.start, r.len), v = to.second().rows(r.start, r.len);
    recvs = {RecvSpec{k.data, bytes_of(k, r.len), st.recv_peer},
             RecvSpec{v.data, bytes_of(v, r.len), st.recv_peer}};
  } else if (!st.recv.empty()) {
    recvs = {RecvSpec{recv_stage.data(), recv_stage.bytes(total_rows(st.recv)), st.recv_peer}};
  }
  counters.hops += !sends.empty();
  return counted_exchange(comm, sends, recvs, CommOp{what, t}, counters);
}

// After the wait: staged K/V rows are copied into the visitor buffer (rows that travelled in
// place, or into a compact visitor, are there already).
void land_kv(Backend& be, const KvBuffers& kv, const PairBuffer& stage, const RowRuns& runs) {
  const PairBuffer full = kv.next();
  if (!kv.compact() && !kv_rows_in_place(runs, full.rows(), full.first().B))
    land(be, stage, runs, full, false);
}

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

// Each piece cut into `chunks` parts at multiples of `block` (fewer chunks when a piece has
// fewer blocks); chunk j holds part j of every piece.
std::vector<KeyChunk> make_key_chunks(const std::vector<ShardPiece>& pieces, int64_t block,
                                      int chunks) {
  int64_t fewest_blocks = std::numeric_limits<int64_t>::max();
  for (const ShardPiece& p : pieces)
    fewest_blocks = std::min(fewest_blocks, (p.len + block - 1) / block);
  const int64_t c = std::max<int64_t>(1, std::min<int64_t>(chunks, fewest_blocks));
  std::vector<KeyChunk> out(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j)
    for (size_t i = 0; i < pieces.size(); ++i) {
      const int64_t len = pieces[i].len, nb = (len + block - 1) / block;
      const int64_t begin = std::min(len, j * nb / c * block);
      const int64_t end = j + 1 == c ? len : std::min(len, (j + 1) * nb / c * block);
      if (end <= begin) continue;
      out[j].parts.push_back(ChunkPart{static_cast<int>(i), begin, end - begin});
      out[j].rows += end - begin;
    }
  return out;
}

}  // namespace

int ring_backward_chunks(int64_t shortest_piece_rows) {
  const int64_t fit = shortest_piece_rows / kRingChunkMinRows;
  return static_cast<int>(std::clamp<int64_t>(fit, kRingBackwardChunks, kRingBackwardMaxChunks));
}

RingPlan make_dense_ring_plan(const ShardLayout& layout, int rank, int64_t block, bool causal,
                              int backward_chunks) {
  LONGATTN_CHECK_ARG(block > 0, "block_size", block, "must be positive");
  LONGATTN_CHECK_ARG(backward_chunks >= 0, "backward_chunks", backward_chunks,
                     "must be 0 (automatic) or a positive count");
  RingPlan plan = plan_skeleton(layout, rank);
  const int P = plan.world;
  const RowRuns all = full_runs(plan.local_rows);
  if (backward_chunks == 0) {
    int64_t shortest = plan.local_rows;
    for (const ShardPiece& p : plan.pieces[rank]) shortest = std::min(shortest, p.len);
    backward_chunks = ring_backward_chunks(shortest);
  }
  plan.key_chunks = make_key_chunks(plan.pieces[rank], block, backward_chunks);
  auto mask_of = [&](const ShardPiece& q, int64_t k_len, int64_t k_global) {
    return dense_block_mask(MaskGeometry{q.len, k_len, block, block, causal, q.global, k_global});
  };
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
        BlockMask m = mask_of(qp[i], kp[j].len, kp[j].global);
        if (m.nnz() > 0)
          st.work.push_back(RingWork{static_cast<int>(i), static_cast<int>(j), std::move(m)});
      }
    for (const KeyChunk& c : plan.key_chunks) {
      st.chunk_work.emplace_back();
      for (size_t i = 0; i < qp.size(); ++i)
        for (size_t j = 0; j < c.parts.size(); ++j) {
          const ChunkPart& part = c.parts[j];
          BlockMask m = mask_of(qp[i], part.len, kp[part.piece].global + part.offset);
          if (m.nnz() > 0)
            st.chunk_work.back().push_back(
                RingWork{static_cast<int>(i), static_cast<int>(j), std::move(m)});
        }
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

BlockMask mask_select(const BlockMask& m, int64_t b0, int64_t b1, int64_t c0, int64_t c1) {
  LONGATTN_ASSERT(0 <= b0 && b0 <= b1 && b1 <= m.num_q_blocks, "mask_select: bad rows");
  LONGATTN_ASSERT(0 <= c0 && c0 <= c1 && c1 <= m.num_k_blocks, "mask_select: bad key blocks");
  BlockMask s;
  s.block_q = m.block_q;
  s.block_k = m.block_k;
  s.num_q_blocks = b1 - b0;
  s.num_k_blocks = c1 - c0;
  for (int64_t r = b0; r < b1; ++r) {
    for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e)
      if (m.col_idx[e] >= c0 && m.col_idx[e] < c1) {
        s.col_idx.push_back(static_cast<int32_t>(m.col_idx[e] - c0));
        s.partial.push_back(m.partial[e]);
      }
    s.row_ptr.push_back(s.nnz());
  }
  return s;
}

BlockMask mask_slice(const BlockMask& m, int64_t b0, int64_t b1, int64_t c0, int64_t c1) {
  if (c1 < 0) c1 = m.num_k_blocks;
  BlockMask s = mask_select(m, b0, b1, c0, c1);
  LONGATTN_ASSERT(s.nnz() == m.row_ptr[b1] - m.row_ptr[b0], "mask_slice: a listed block outside");
  return s;
}

namespace {

// First and one past the last block row of a mask that lists something (b0 == b1: none).
std::pair<int64_t, int64_t> listed_rows(const BlockMask& m, int64_t b0, int64_t b1) {
  while (b0 < b1 && m.row_ptr[b0 + 1] == m.row_ptr[b0]) ++b0;
  while (b1 > b0 && m.row_ptr[b1] == m.row_ptr[b1 - 1]) --b1;
  return {b0, b1};
}

// Runs of rows whose count passes `keep`.
template <class Keep>
RowRuns runs_where(const std::vector<int>& count, Keep keep) {
  RowRuns runs;
  const int64_t n = static_cast<int64_t>(count.size());
  for (int64_t i = 0; i < n;) {
    if (!keep(count[i])) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < n && keep(count[j])) ++j;
    runs.push_back(RowRun{i, j - i});
    i = j;
  }
  return runs;
}

}  // namespace

BackwardSplit make_backward_split(const RingPlan& plan) {
  BackwardSplit bs;
  if (plan.steps.empty()) return bs;
  const RingStep& st0 = plan.steps[0];
  const auto& kp = plan.pieces[st0.origin];
  const auto& qp = plan.pieces[plan.rank];
  const int64_t n = plan.local_rows;
  const int64_t most = plan.split_rows > 0 ? plan.split_rows : backward_split_rows(n);
  // Each work's span of query blocks cut into chunks of at most `most` rows, equal in blocks
  // (each trimmed to the rows that list something).
  struct Span {
    int64_t b0, b1;
  };
  std::vector<std::vector<Span>> spans(st0.work.size());
  for (size_t w = 0; w < st0.work.size(); ++w) {
    const BlockMask& m = st0.work[w].mask;
    const auto [b0, b1] = listed_rows(m, 0, m.num_q_blocks);
    const int64_t per = std::max<int64_t>(1, most / m.block_q);
    const int64_t parts = std::max<int64_t>(1, (b1 - b0 + per - 1) / per);
    for (int64_t i = 0; i < parts; ++i) {
      const auto [s, e] = listed_rows(m, b0 + (b1 - b0) * i / parts, b0 + (b1 - b0) * (i + 1) / parts);
      if (e > s) spans[w].push_back(Span{s, e});
    }
  }
  // Chunks reaching each local key row: step-0 chunks that list it (returns: below).
  std::vector<int> reach(static_cast<size_t>(n), 0);
  for (size_t w = 0; w < st0.work.size(); ++w) {
    const BlockMask& m = st0.work[w].mask;
    const ShardPiece& p = kp[st0.work[w].k_piece];
    std::vector<uint8_t> listed(static_cast<size_t>(m.num_k_blocks), 0);
    for (const Span& sp : spans[w]) {
      std::fill(listed.begin(), listed.end(), 0);
      for (int64_t e = m.row_ptr[sp.b0]; e < m.row_ptr[sp.b1]; ++e) listed[m.col_idx[e]] = 1;
      for (int64_t c = 0; c < m.num_k_blocks; ++c)
        if (listed[c])
          for (int64_t r = c * m.block_k; r < std::min(p.len, (c + 1) * m.block_k); ++r)
            ++reach[p.local + r];
    }
  }
  // A row whose dK/dV comes back from another rank is added into the fp32 accumulator, so it is
  // always merged, whether or not a step-0 chunk reaches it.
  for (size_t t = 1; t < plan.steps.size(); ++t)
    for (const RowRun& r : plan.steps[t].home)
      for (int64_t i = r.start; i < r.start + r.len; ++i) reach[i] += 2;
  bs.merged = runs_where(reach, [](int c) { return c >= 2; });
  // Calls of a chunk: runs of key blocks of one kind, each over the chunk's query rows that list
  // them (one pass over the chunk's rows of the mask).
  struct KeyRun {
    int64_t s0, s1;
    bool merged;
    int64_t b0, b1;
  };
  constexpr size_t kMostCalls = 4;
  bool scattered = false;
  for (size_t w = 0; w < st0.work.size(); ++w) {
    const BlockMask& m = st0.work[w].mask;
    const ShardPiece& p = kp[st0.work[w].k_piece];
    const int64_t q_len = qp[st0.work[w].q_piece].len;
    bs.step0.emplace_back();
    bs.chunks.emplace_back();
    // A key block is merged when any of its rows is.
    auto merged_block = [&](int64_t c) {
      for (int64_t r = c * m.block_k; r < std::min(p.len, (c + 1) * m.block_k); ++r)
        if (reach[p.local + r] >= 2) return true;
      return false;
    };
    std::vector<int32_t> run_of(static_cast<size_t>(m.num_k_blocks), -1);
    for (const Span& sp : spans[w]) {
      const int chunk = static_cast<int>(bs.chunks.back().size());
      const int64_t row0 = sp.b0 * m.block_q;
      bs.chunks.back().push_back(BackwardSplit::Chunk{row0, std::min(q_len, sp.b1 * m.block_q) - row0});
      int64_t c0 = m.num_k_blocks, c1 = 0;
      for (int64_t e = m.row_ptr[sp.b0]; e < m.row_ptr[sp.b1]; ++e)
        c0 = std::min<int64_t>(c0, m.col_idx[e]), c1 = std::max<int64_t>(c1, m.col_idx[e] + 1);
      std::vector<KeyRun> runs;
      for (int64_t s0 = c0; s0 < c1;) {
        const bool merged = merged_block(s0);
        int64_t s1 = s0 + 1;
        while (s1 < c1 && merged_block(s1) == merged) ++s1;
        for (int64_t c = s0; c < s1; ++c) run_of[c] = static_cast<int32_t>(runs.size());
        runs.push_back(KeyRun{s0, s1, merged, sp.b1, sp.b0});
        s0 = s1;
      }
      for (int64_t r = sp.b0; r < sp.b1; ++r)
        for (int64_t e = m.row_ptr[r]; e < m.row_ptr[r + 1]; ++e) {
          KeyRun& kr = runs[run_of[m.col_idx[e]]];
          kr.b0 = std::min(kr.b0, r);
          kr.b1 = std::max(kr.b1, r + 1);
        }
      size_t calls = 0;
      for (const KeyRun& kr : runs) {
        if (kr.b1 <= kr.b0) continue;  // no query row of the chunk lists these blocks
        BackwardSplit::Call call;
        call.row0 = kr.b0 * m.block_q;
        call.rows = std::min(q_len, kr.b1 * m.block_q) - call.row0;
        call.col0 = kr.s0 * m.block_k;
        call.cols = std::min(p.len, kr.s1 * m.block_k) - call.col0;
        call.direct = !kr.merged;
        call.chunk = chunk;
        bs.step0.back().push_back(call);
        ++calls;
      }
      scattered = scattered || calls > kMostCalls;
    }
  }
  // Scattered masks would cut a chunk into many small calls: there, every chunk is one call
  // over its span into the fp32 accumulator, which holds every row.
  if (scattered) {
    bs.merged = n > 0 ? RowRuns{RowRun{0, n}} : RowRuns{};
    for (size_t w = 0; w < st0.work.size(); ++w) {
      const BlockMask& m = st0.work[w].mask;
      const int64_t q_len = qp[st0.work[w].q_piece].len;
      const int64_t k_len = kp[st0.work[w].k_piece].len;
      bs.step0[w].clear();
      for (size_t i = 0; i < spans[w].size(); ++i) {
        const Span& sp = spans[w][i];
        int64_t c0 = m.num_k_blocks, c1 = 0;
        for (int64_t e = m.row_ptr[sp.b0]; e < m.row_ptr[sp.b1]; ++e)
          c0 = std::min<int64_t>(c0, m.col_idx[e]), c1 = std::max<int64_t>(c1, m.col_idx[e] + 1);
        BackwardSplit::Call call;
        call.row0 = sp.b0 * m.block_q;
        call.rows = std::min(q_len, sp.b1 * m.block_q) - call.row0;
        call.col0 = c0 * m.block_k;
        call.cols = std::min(k_len, c1 * m.block_k) - call.col0;
        call.chunk = static_cast<int>(i);
        bs.step0[w].push_back(call);
      }
    }
  }
  // dQ: chunks and later steps' spans (ForwardOrder's) reaching each query row.
  std::vector<int> qreach(static_cast<size_t>(n), 0);
  for (size_t w = 0; w < st0.work.size(); ++w) {
    const ShardPiece& p = qp[st0.work[w].q_piece];
    for (const BackwardSplit::Chunk& c : bs.chunks[w]) {
      bs.chunk_rows = std::max(bs.chunk_rows, c.rows);
      for (int64_t i = p.local + c.row0; i < p.local + c.row0 + c.rows; ++i) ++qreach[i];
    }
  }
  for (size_t t = 1; t < plan.steps.size(); ++t)
    for (const RingWork& wk : plan.steps[t].work) {
      const BlockMask& m = wk.mask;
      const ShardPiece& p = qp[wk.q_piece];
      const auto [b0, b1] = listed_rows(m, 0, m.num_q_blocks);
      const int64_t r1 = std::min(p.len, b1 * m.block_q);
      for (int64_t i = p.local + b0 * m.block_q; i < p.local + r1; ++i) qreach[i] += 2;
    }
  bs.dq_merged = runs_where(qreach, [](int c) { return c >= 2; });
  bs.dq_unreached = runs_where(qreach, [](int c) { return c == 0; });
  return bs;
}

ForwardOrder make_forward_order(const RingPlan& plan) {
  const auto& pieces = plan.pieces[plan.rank];
  const size_t NP = pieces.size();
  ForwardOrder fo;
  fo.piece_computed.assign(NP, 0);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> spans(NP);  // later works' spans
  for (const RingStep& st : plan.steps) {
    fo.works.emplace_back();
    // The pieces' first works: the largest of this step's works on a piece not computed yet.
    std::vector<int> first_of(NP, -1);
    for (size_t w = 0; w < st.work.size(); ++w) {
      const size_t i = static_cast<size_t>(st.work[w].q_piece);
      if (fo.piece_computed[i]) continue;
      if (first_of[i] < 0 || st.work[w].mask.nnz() > st.work[first_of[i]].mask.nnz())
        first_of[i] = static_cast<int>(w);
    }
    std::vector<int> firsts, others;
    for (size_t w = 0; w < st.work.size(); ++w) {
      ForwardOrder::Work fw;
      const size_t i = static_cast<size_t>(st.work[w].q_piece);
      const BlockMask& m = st.work[w].mask;
      const auto [b0, b1] = listed_rows(m, 0, m.num_q_blocks);
      LONGATTN_ASSERT(b1 > b0, "ring forward: a work with an empty mask");
      fw.row0 = b0 * m.block_q;
      fw.rows = std::min(pieces[i].len, b1 * m.block_q) - fw.row0;
      int64_t c0 = m.num_k_blocks, c1 = 0;
      for (int64_t e = m.row_ptr[b0]; e < m.row_ptr[b1]; ++e) {
        c0 = std::min<int64_t>(c0, m.col_idx[e]);
        c1 = std::max<int64_t>(c1, m.col_idx[e] + 1);
      }
      const int64_t k_len = plan.pieces[st.origin][st.work[w].k_piece].len;
      fw.col0 = c0 * m.block_k;
      fw.cols = std::min(k_len, c1 * m.block_k) - fw.col0;
      if (first_of[i] == static_cast<int>(w)) {
        fw.first = true;
        firsts.push_back(static_cast<int>(w));
      } else {
        spans[i].push_back({fw.row0, fw.row0 + fw.rows});
        others.push_back(static_cast<int>(w));
      }
      fo.works.back().push_back(fw);
    }
    for (size_t i = 0; i < NP; ++i)
      if (first_of[i] >= 0) fo.piece_computed[i] = 1;
    firsts.insert(firsts.end(), others.begin(), others.end());
    fo.run_order.push_back(std::move(firsts));
  }
  // Merged rows: the later spans of each piece, overlapping or touching ones joined.
  std::vector<std::vector<int>> run_of_piece(NP);
  for (size_t i = 0; i < NP; ++i) {
    auto sp = spans[i];
    std::sort(sp.begin(), sp.end());
    for (const auto& [a, b] : sp) {
      if (!fo.runs.empty() && fo.runs.back().piece == static_cast<int>(i) &&
          a <= fo.runs.back().start + fo.runs.back().len) {
        auto& r = fo.runs.back();
        r.len = std::max(r.len, b - r.start);
      } else {
        fo.runs.push_back(ForwardOrder::Run{static_cast<int>(i), a, b - a, 0});
      }
    }
  }
  for (auto& r : fo.runs) {
    r.acc_row = fo.acc_rows;
    fo.acc_rows += r.len;
  }
  for (size_t t = 0; t < plan.steps.size(); ++t)
    for (size_t w = 0; w < plan.steps[t].work.size(); ++w) {
      ForwardOrder::Work& fw = fo.works[t][w];
      if (fw.first) continue;
      const int piece = plan.steps[t].work[w].q_piece;
      for (size_t j = 0; j < fo.runs.size(); ++j) {
        const auto& r = fo.runs[j];
        if (r.piece == piece && r.start <= fw.row0 && fw.row0 + fw.rows <= r.start + r.len)
          fw.run = static_cast<int>(j);
      }
      LONGATTN_ASSERT(fw.run >= 0, "ring forward: a span outside the merged rows");
    }
  return fo;
}

namespace {

uint64_t mask_hash(const BlockMask& m) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the shape and the CSR arrays
  auto mix = [&h](uint64_t x) {
    h ^= x;
    h *= 1099511628211ULL;
  };
  for (int64_t x : {m.block_q, m.block_k, m.num_q_blocks, m.num_k_blocks})
    mix(static_cast<uint64_t>(x));
  for (int64_t x : m.row_ptr) mix(static_cast<uint64_t>(x));
  for (int32_t x : m.col_idx) mix(static_cast<uint32_t>(x));
  for (uint8_t x : m.partial) mix(x);
  return h;
}

bool same_mask(const BlockMask& a, const BlockMask& b) {
  return a.block_q == b.block_q && a.block_k == b.block_k && a.num_q_blocks == b.num_q_blocks &&
         a.num_k_blocks == b.num_k_blocks && a.row_ptr == b.row_ptr && a.col_idx == b.col_idx &&
         a.partial == b.partial;
}

// The buffer of one key chunk in the chunked backward: its K and V (input dtype), then its dK
// and dV accumulators, each [B, n, H, D] for the chunk's n rows and laid out one after another,
// so that one message moves the chunk (the dK/dV tail alone on its last hop, home).
class ChunkBuffer {
 public:
  ChunkBuffer(std::byte* data, DType kv, DType grad, int64_t B, int64_t H, int64_t D,
              DeviceKind device)
      : data_(data), kv_(kv), grad_(grad), B_(B), H_(H), D_(D), device_(device) {}
  static size_t capacity(DType kv, DType grad, int64_t B, int64_t n, int64_t H, int64_t D) {
    return 2 * tensor_bytes(kv, B, n, H, D) + 2 * tensor_bytes(grad, B, n, H, D);
  }
  TensorView k(int64_t n) const { return view(0, kv_, n); }
  TensorView v(int64_t n) const { return view(kv_bytes(n), kv_, n); }
  TensorView dk(int64_t n) const { return view(2 * kv_bytes(n), grad_, n); }
  TensorView dv(int64_t n) const { return view(2 * kv_bytes(n) + grad_bytes(n) / 2, grad_, n); }
  void* data() const { return data_; }
  size_t bytes(int64_t n) const { return 2 * kv_bytes(n) + grad_bytes(n); }
  void* grads(int64_t n) const { return data_ + 2 * kv_bytes(n); }
  size_t grad_bytes(int64_t n) const { return 2 * tensor_bytes(grad_, B_, n, H_, D_); }

 private:
  size_t kv_bytes(int64_t n) const { return tensor_bytes(kv_, B_, n, H_, D_); }
  TensorView view(size_t at, DType t, int64_t n) const {
    return make_view(data_ + at, t, B_, n, H_, D_, device_);
  }
  std::byte* data_;
  DType kv_, grad_;
  int64_t B_, H_, D_;
  DeviceKind device_;
};

}  // namespace

// The plan's masks on the device, each distinct mask prepared once: the steps of a dense ring
// share a few (all blocks, the causal diagonal), so the device holds those few. Each pass's set
// is built aside and kept only when complete.
struct RingAttention::Masks {
  using Ptr = std::shared_ptr<const PreparedMask>;
  Backend* be = nullptr;
  uint64_t be_id = 0;
  std::map<uint64_t, std::vector<Ptr>> by_hash;
  std::map<const PreparedMask*, Ptr> transposed;
  std::vector<std::vector<Ptr>> fwd, bwd;                     // [step][work]; bwd transposed
  std::vector<std::vector<Ptr>> fwd_span;  // [step][work]: the forward's rows (ForwardOrder)
  std::vector<std::vector<Ptr>> bwd_span;  // [step][work]: the span of every work
  std::vector<std::vector<Ptr>> split, split_t;  // [step-0 work][call] (BackwardSplit)
  std::vector<std::vector<std::vector<Ptr>>> chunk, chunk_t;  // [step][chunk][work]

  Ptr get(const BlockMask& m) {
    std::vector<Ptr>& same = by_hash[mask_hash(m)];
    for (const Ptr& p : same)
      if (same_mask(p->host(), m)) return p;
    same.push_back(Ptr(be->prepare_mask(m)));
    return same.back();
  }
  Ptr transpose_of(const Ptr& p) {
    Ptr& t = transposed[p.get()];
    if (!t) t = get(p->host().transpose());
    return t;
  }
  void prepare_masks(const RingPlan& plan) {
    if (!fwd.empty()) return;
    std::vector<std::vector<Ptr>> f;
    for (const RingStep& st : plan.steps) {
      f.emplace_back();
      for (const RingWork& w : st.work) f.back().push_back(get(w.mask));
    }
    fwd = std::move(f);
  }
  // The work's mask over its span of rows and key rows (ForwardOrder::Work), or its whole
  // mask when `whole`.
  Ptr span_mask(const RingPlan& plan, const ForwardOrder& order, size_t t, size_t w, bool whole) {
    const ForwardOrder::Work& fw = order.works[t][w];
    const BlockMask& m = plan.steps[t].work[w].mask;
    const int64_t b0 = fw.row0 / m.block_q, b1 = b0 + (fw.rows + m.block_q - 1) / m.block_q;
    const int64_t c0 = fw.col0 / m.block_k, c1 = c0 + (fw.cols + m.block_k - 1) / m.block_k;
    const bool all = b0 == 0 && b1 == m.num_q_blocks && c0 == 0 && c1 == m.num_k_blocks;
    return whole || all ? fwd[t][w] : get(mask_slice(m, b0, b1, c0, c1));
  }
  // Forward: first works over their whole piece (with compact visitors, after step 0: their
  // key rows only), later ones over their span.
  void prepare_forward(const RingPlan& plan, const ForwardOrder& order, bool compact) {
    prepare_masks(plan);
    if (!fwd_span.empty()) return;
    std::vector<std::vector<Ptr>> f;
    for (size_t t = 0; t < plan.steps.size(); ++t) {
      f.emplace_back();
      for (size_t w = 0; w < plan.steps[t].work.size(); ++w) {
        const ForwardOrder::Work& fw = order.works[t][w];
        if (fw.first && compact && t >= 1) {
          const BlockMask& m = plan.steps[t].work[w].mask;
          const int64_t c0 = fw.col0 / m.block_k, c1 = c0 + (fw.cols + m.block_k - 1) / m.block_k;
          f.back().push_back(get(mask_slice(m, 0, m.num_q_blocks, c0, c1)));
        } else {
          f.back().push_back(span_mask(plan, order, t, w, fw.first));
        }
      }
    }
    fwd_span = std::move(f);
  }
  // Step-wise backward: every work over its span (bwd_span), and the transposes (bwd).
  void prepare_stepwise_backward(const RingPlan& plan, const ForwardOrder& order,
                                 const BackwardSplit& bsplit) {
    prepare_masks(plan);
    if (!bwd.empty()) return;
    std::vector<std::vector<Ptr>> s, b;
    for (size_t t = 0; t < plan.steps.size(); ++t) {
      s.emplace_back();
      b.emplace_back();
      for (size_t w = 0; w < plan.steps[t].work.size(); ++w) {
        s.back().push_back(span_mask(plan, order, t, w, false));
        b.back().push_back(transpose_of(s.back().back()));
      }
    }
    bwd_span = std::move(s);
    bwd = std::move(b);
    split.clear();
    split_t.clear();
    for (size_t w = 0; w < plan.steps[0].work.size(); ++w) {
      const BlockMask& m = plan.steps[0].work[w].mask;
      split.emplace_back();
      split_t.emplace_back();
      for (const BackwardSplit::Call& c : bsplit.step0[w]) {
        const int64_t b0 = c.row0 / m.block_q, b1 = b0 + (c.rows + m.block_q - 1) / m.block_q;
        const int64_t c0 = c.col0 / m.block_k, c1 = c0 + (c.cols + m.block_k - 1) / m.block_k;
        split.back().push_back(get(mask_select(m, b0, b1, c0, c1)));
        split_t.back().push_back(transpose_of(split.back().back()));
      }
    }
  }
  void prepare_chunked_backward(const RingPlan& plan) {
    if (!chunk.empty()) return;
    std::vector<std::vector<std::vector<Ptr>>> c, ct;
    for (const RingStep& st : plan.steps) {
      c.emplace_back();
      ct.emplace_back();
      for (const auto& work : st.chunk_work) {
        c.back().emplace_back();
        ct.back().emplace_back();
        for (const RingWork& w : work) {
          c.back().back().push_back(get(w.mask));
          ct.back().back().push_back(transpose_of(c.back().back().back()));
        }
      }
    }
    chunk = std::move(c);
    chunk_t = std::move(ct);
  }
};

struct RingAttention::Workspace {
  Arena arena;
};

// Measurement switch: with LONGATTN_RING_PROFILE set, every phase of a call ends with a
// synchronisation of the backend, and the ring prints (to stderr, when destroyed) the
// milliseconds each phase took per call on this rank. The synchronisations remove the overlap
// of exchanges and compute: for finding where the time goes, not for timing.
struct RingAttention::Profile {
  using Clock = std::chrono::steady_clock;
  std::map<std::string, double> seconds;
  std::map<std::string, int> calls;
  std::vector<std::string> order;
  Clock::time_point last;
  int rank = 0;
  static bool enabled() {
    static const bool on = std::getenv("LONGATTN_RING_PROFILE") != nullptr;
    return on;
  }
  void begin(Backend& be, const std::string& pass) {
    be.synchronize();
    last = Clock::now();
    ++calls[pass];
  }
  void mark(Backend& be, const std::string& phase) {
    be.synchronize();
    const auto now = Clock::now();
    if (!seconds.count(phase)) order.push_back(phase);
    seconds[phase] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
  ~Profile() {
    std::ostringstream os;
    os << "[ring profile] rank " << rank << ":";
    for (const auto& [pass, n] : calls) os << " " << pass << " x" << n;
    for (const std::string& ph : order) {
      const std::string pass = ph.substr(0, ph.find(' '));
      const int n = calls.count(pass) ? calls.at(pass) : 1;
      os << "\n  " << ph << ": " << seconds.at(ph) * 1e3 / std::max(1, n) << " ms";
    }
    std::cerr << os.str() << std::endl;
  }
};

RingAttention::RingAttention(RingPlan plan, const AttentionSpec& spec)
    : plan_(std::move(plan)),
      spec_(spec),
      fwd_order_(make_forward_order(plan_)),
      bwd_split_(make_backward_split(plan_)) {
  const int S = static_cast<int>(plan_.steps.size());
  auto same = [](const RowRuns& a, const RowRuns& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].start != b[i].start || a[i].len != b[i].len) return false;
    return true;
  };
  compact_ = S >= 2 && plan_.steps[0].send_own;
  for (int t = 1; t < S && compact_; ++t) {
    const RingStep& st = plan_.steps[t];
    compact_ = same(plan_.steps[t - 1].recv, st.retire);
    const auto& kp = plan_.pieces[st.origin];
    for (size_t w = 0; w < st.work.size() && compact_; ++w) {
      const ForwardOrder::Work& fw = fwd_order_.works[t][w];
      compact_ = compact_pos(st.retire, kp[st.work[w].k_piece].local + fw.col0, fw.cols) >= 0;
    }
  }
  compact_home_ = true;
  const auto& kp0 = plan_.pieces[plan_.rank];
  for (size_t w = 0; w < bwd_split_.step0.size(); ++w)
    for (const BackwardSplit::Call& c : bwd_split_.step0[w])
      if (!c.direct &&
          compact_pos(bwd_split_.merged, kp0[plan_.steps[0].work[w].k_piece].local + c.col0,
                      c.cols) < 0)
        compact_home_ = false;
  for (int t = 1; t < S; ++t)
    for (const RowRun& r : plan_.steps[t].home)
      if (compact_pos(bwd_split_.merged, r.start, r.len) < 0) compact_home_ = false;
  if (Profile::enabled()) {
    profile_ = std::make_unique<Profile>();
    profile_->rank = plan_.rank;
  }
}
RingAttention::~RingAttention() = default;

RingAttention::Workspace& RingAttention::workspace() {
  if (!workspace_) workspace_ = std::make_unique<Workspace>();
  return *workspace_;
}

size_t RingAttention::workspace_bytes() const { return workspace_ ? workspace_->arena.bytes() : 0; }

void RingAttention::release_workspace() {
  workspace_.reset();
  masks_.reset();
}

RingAttention::Masks& RingAttention::masks(Backend& be) {
  if (masks_ && masks_->be == &be && masks_->be_id == be.instance_id()) return *masks_;
  masks_.reset();
  masks_ = std::make_unique<Masks>();
  masks_->be = &be;
  masks_->be_id = be.instance_id();
  return *masks_;
}

RingAttention::Taken RingAttention::take_agreed(Backend& be, Communicator& comm, const char* pass,
                                               const std::function<void(Masks&)>& prepare,
                                               size_t bytes) {
  Taken t;
  run_and_agree(comm, op_name(pass), [&] {
    t.masks = &masks(be);
    prepare(*t.masks);
    t.base = workspace().arena.reserve(be, bytes);
  });
  return t;
}

std::string RingAttention::op_name(const char* pass) const {
  return std::string(spec_.variant == "block_sparse" ? "block-sparse ring " : "ring ") + pass;
}

void RingAttention::forward(Backend& be, Communicator& comm, const TensorView& q,
                            const TensorView& k, const TensorView& v, const TensorView& o,
                            const TensorView& lse, DistCounters& counters) {
  check_views(plan_, comm, be, q, {{"k", k}, {"v", v}, {"o", o}}, lse);
  const int64_t B = q.B, H = q.H, D = q.D;
  const int S = static_cast<int>(plan_.steps.size());
  const DeviceKind dev = be.device();
  if (profile_) profile_->begin(be, "fwd");
  auto mark = [&](const char* phase) {
    if (profile_) profile_->mark(be, std::string("fwd ") + phase);
  };

  // Where every buffer of the call lies in the workspace.
  Layout layout;
  KvBuffers kv;
  kv.place(layout, plan_, k, v, compact_);
  PairSlot send_slot, recv_slot;
  if (const int64_t n =
          kv_staged_rows(plan_, B, [](const RingStep& s) -> const RowRuns& { return s.send; }))
    send_slot.place(layout, q.dtype, B, n, H, D);
  if (const int64_t n =
          kv_staged_rows(plan_, B, [](const RingStep& s) -> const RowRuns& { return s.recv; });
      n > 0 && !compact_)
    recv_slot.place(layout, q.dtype, B, n, H, D);
  // Partial results merge into an fp32 accumulator when o is fp16/bf16 (no per-step rounding),
  // holding only the merged rows (ForwardOrder).
  const ForwardOrder& fo = fwd_order_;
  const bool fp32_acc = is_half(o.dtype) && fo.acc_rows > 0;
  const size_t acc_at = fp32_acc ? layout.take(tensor_bytes(DType::F32, B, fo.acc_rows, H, D)) : 0;
  int64_t pl = 1;  // partial outputs: the longest span of a later work
  for (const auto& step : fo.works)
    for (const ForwardOrder::Work& fw : step)
      if (!fw.first) pl = std::max(pl, fw.rows);
  const size_t o_part_at = layout.take(tensor_bytes(o.dtype, B, pl, H, D));
  const size_t l_part_at = layout.take(tensor_bytes(lse.dtype, B, pl, H, 1));

  // Every buffer of the call is taken before the first exchange, and the ranks agree that all
  // of them got theirs: a rank out of memory stops every rank here, none waits in the loop.
  const Taken taken = take_agreed(
      be, comm, "forward", [&](Masks& m) { m.prepare_forward(plan_, fo, compact_); },
      layout.bytes());
  Masks* pm = taken.masks;
  std::byte* base = taken.base;
  kv.bind(be, base, k, v);
  const PairBuffer send_stage = send_slot.bind(base, B, H, D, dev);
  const PairBuffer recv_stage = recv_slot.bind(base, B, H, D, dev);
  const TensorView acc =
      fp32_acc ? make_view(base + acc_at, DType::F32, B, fo.acc_rows, H, D, dev) : TensorView{};
  const TensorView o_part = make_view(base + o_part_at, o.dtype, B, pl, H, D, dev);
  const TensorView l_part = make_view(base + l_part_at, lse.dtype, B, pl, H, 1, dev);
  const auto& my_pieces = plan_.pieces[plan_.rank];
  // Where the merged rows of a run live: the accumulator, or o itself (fp32/fp64 outputs).
  auto merged_rows = [&](const ForwardOrder::Run& r, int64_t row0, int64_t rows) {
    return fp32_acc ? acc.rows(r.acc_row + row0 - r.start, rows)
                    : o.rows(my_pieces[r.piece].local + row0, rows);
  };
  for (size_t i = 0; i < my_pieces.size(); ++i)
    if (!fo.piece_computed[i]) {  // rows that see nothing anywhere
      be.fill(o.rows(my_pieces[i].local, my_pieces[i].len), 0.0);
      be.fill(lse.rows(my_pieces[i].local, my_pieces[i].len), kNegInf);
    }
  mark("setup");

  for (int t = 0; t < S; ++t) {
    const RingStep& st = plan_.steps[t];
    CommRequest req;
    if (t + 1 < S)
      req = start_kv_step(comm, be, st, kv, send_stage, recv_stage, "ring forward K/V", t,
                          counters);
    mark("exchange start");
    const auto& kp = plan_.pieces[st.origin];
    for (const int w : fo.run_order[t]) {
      const RingWork& work = st.work[w];
      const ForwardOrder::Work& fw = fo.works[t][w];
      const ShardPiece& qp = my_pieces[work.q_piece];
      const ShardPiece& kpc = kp[work.k_piece];
      const KvPair cur = kv.current();
      // Where the work's key rows lie in the K/V it reads (a compact visitor: its own layout).
      const int64_t k_at = compact_ && t >= 1
                               ? compact_pos(st.retire, kpc.local + fw.col0, fw.cols)
                               : kpc.local + fw.col0;
      if (fw.first) {
        const bool trimmed = compact_ && t >= 1;  // key rows of the span only
        const int64_t k0 = trimmed ? k_at : kpc.local, nk = trimmed ? fw.cols : kpc.len;
        be.attention_forward(make_fwd_params(
            {q.rows(qp.local, qp.len), cur.k.rows(k0, nk), cur.v.rows(k0, nk),
             o.rows(qp.local, qp.len), lse.rows(qp.local, qp.len)},
            pm->fwd_span[t][w]->view(),
            {spec_.scale, spec_.causal, qp.global, kpc.global + (trimmed ? fw.col0 : 0)}));
        mark("kernel first");
        if (fp32_acc)
          for (const ForwardOrder::Run& r : fo.runs)
            if (r.piece == work.q_piece)
              be.copy(merged_rows(r, r.start, r.len), o.rows(qp.local + r.start, r.len));
        mark("widen");
      } else {
        const AttnFwdParams p = make_fwd_params(
            {q.rows(qp.local + fw.row0, fw.rows), cur.k.rows(k_at, fw.cols),
             cur.v.rows(k_at, fw.cols), o_part.rows(0, fw.rows), l_part.rows(0, fw.rows)},
            pm->fwd_span[t][w]->view(),
            {spec_.scale, spec_.causal, qp.global + fw.row0, kpc.global + fw.col0});
        be.attention_forward(p);
        mark("kernel later");
        be.merge(merged_rows(fo.runs[fw.run], fw.row0, fw.rows),
                 lse.rows(qp.local + fw.row0, fw.rows), p.o, p.lse);
        mark("merge");
      }
      counters.blocks_computed += work.mask.nnz();
    }
    req.wait();
    mark("wait");
    if (t + 1 < S) {
      land_kv(be, kv, recv_stage, st.recv);
      kv.advance();
    }
    mark("land");
  }
  counters.steps += S;
  if (fp32_acc)
    for (const ForwardOrder::Run& r : fo.runs)
      be.copy(o.rows(my_pieces[r.piece].local + r.start, r.len), merged_rows(r, r.start, r.len));
  mark("copy back");
}

void RingAttention::backward(Backend& be, Communicator& comm, const TensorView& q,
                             const TensorView& k, const TensorView& v, const TensorView& o,
                             const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                             const TensorView& dk, const TensorView& dv, DistCounters& counters) {
  check_views(plan_, comm, be, q,
              {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}},
              lse);
  if (!plan_.key_chunks.empty())
    backward_chunked(be, comm, q, k, v, o, lse, d_o, dq, dk, dv, counters);
  else
    backward_stepwise(be, comm, q, k, v, o, lse, d_o, dq, dk, dv, counters);
}

// The dense backward, chunk by chunk (see ring.hpp). At the compute of chunk c of step t this
// rank holds: the chunk computed (K/V and the accumulator that arrived for it), the chunk just
// computed being sent on, the chunk arriving from the predecessor, and the chunks that arrived
// earlier and wait their turn: C+1 chunk buffers for C chunks. An exchange posted after a chunk
// is waited after the next chunk is computed, so each transfer runs behind one chunk's compute;
// the chunk an exchange brings is computed C chunks later.
void RingAttention::backward_chunked(Backend& be, Communicator& comm, const TensorView& q,
                                     const TensorView& k, const TensorView& v, const TensorView& o,
                                     const TensorView& lse, const TensorView& d_o,
                                     const TensorView& dq, const TensorView& dk,
                                     const TensorView& dv, DistCounters& counters) {
  const int64_t B = q.B, Nl = plan_.local_rows, H = q.H, D = q.D;
  const int S = static_cast<int>(plan_.steps.size());
  const int C = static_cast<int>(plan_.key_chunks.size());
  const int rank = plan_.rank;
  const DeviceKind dev = be.device();
  // Gradients accumulate over steps in fp32 when the inputs are fp16/bf16.
  const DType gd = is_half(dq.dtype) ? DType::F32 : dq.dtype;
  const bool dq_in_place = gd == dq.dtype;
  int64_t most_rows = 0;
  std::vector<std::vector<int64_t>> part_at(static_cast<size_t>(C));  // a part's row in its chunk
  for (int c = 0; c < C; ++c) {
    const KeyChunk& ch = plan_.key_chunks[c];
    most_rows = std::max(most_rows, ch.rows);
    int64_t pos = 0;
    for (const ChunkPart& part : ch.parts) {
      part_at[c].push_back(pos);
      pos += part.len;
    }
  }
  // One rank: each chunk is finished where it is computed.
  const int buffers = S == 1 ? 1 : C + 1;

  Layout layout;
  const size_t dq_at = dq_in_place ? 0 : layout.take(tensor_bytes(gd, B, Nl, H, D));
  std::vector<size_t> buffer_at;
  for (int i = 0; i < buffers; ++i)
    buffer_at.push_back(layout.take(ChunkBuffer::capacity(k.dtype, gd, B, most_rows, H, D)));

  // Every mask and buffer of the call is taken before the first exchange, and the ranks agree
  // that all of them got theirs (see forward).
  const Taken taken = take_agreed(
      be, comm, "backward", [&](Masks& m) { m.prepare_chunked_backward(plan_); }, layout.bytes());
  Masks* pm = taken.masks;
  std::byte* base = taken.base;
  const TensorView dq_acc = dq_in_place ? dq : make_view(base + dq_at, gd, B, Nl, H, D, dev);
  std::vector<ChunkBuffer> bufs;
  for (size_t at : buffer_at) bufs.emplace_back(base + at, k.dtype, gd, B, H, D, dev);
  be.fill(dq_acc, 0.0);

  const auto& my_pieces = plan_.pieces[rank];
  std::vector<int> free_bufs;
  for (int i = buffers - 1; i >= 0; --i) free_bufs.push_back(i);
  auto take = [&] {
    LONGATTN_ASSERT(!free_bufs.empty(), "ring backward: no free chunk buffer");
    const int b = free_bufs.back();
    free_bufs.pop_back();
    return b;
  };
  // This rank's rows of chunk c in the chunk buffer (at) and in its shard (local).
  auto each_part = [&](int c, auto&& fn) {
    const KeyChunk& ch = plan_.key_chunks[c];
    for (size_t i = 0; i < ch.parts.size(); ++i)
      fn(part_at[c][i], my_pieces[ch.parts[i].piece].local + ch.parts[i].offset, ch.parts[i].len);
  };
  // The finished accumulator of this rank's chunk c goes into dk, dv.
  auto write_home = [&](int b, int c) {
    const int64_t m = plan_.key_chunks[c].rows;
    each_part(c, [&](int64_t at, int64_t local, int64_t len) {
      be.copy(dk.rows(local, len), bufs[b].dk(m).rows(at, len));
      be.copy(dv.rows(local, len), bufs[b].dv(m).rows(at, len));
    });
  };
  // The exchange posted after the last chunk computed: the buffer it sends and where the
  // predecessor's chunk lands (`home`: this rank's own finished chunk).
  struct InFlight {
    CommRequest req;
    int sent = -1, landing = -1, chunk = -1;
    bool home = false;
  } flight;
  auto settle = [&] {
    if (flight.sent < 0) return;
    flight.req.wait();
    free_bufs.push_back(flight.sent);
    if (flight.home) {
      write_home(flight.landing, flight.chunk);
      free_bufs.push_back(flight.landing);
    }
    flight = InFlight{};
  };

  std::vector<int> held(static_cast<size_t>(C), -1), arriving(static_cast<size_t>(C), -1);
  for (int t = 0; t < S; ++t) {
    const RingStep& st = plan_.steps[t];
    const auto& kp = plan_.pieces[st.origin];
    const bool last = t + 1 == S;
    for (int c = 0; c < C; ++c) {
      const KeyChunk& ch = plan_.key_chunks[c];
      const int64_t m = ch.rows;
      int b = -1;
      if (t == 0) {  // this rank's own K/V rows and a zero accumulator start the chunk
        b = take();
        each_part(c, [&](int64_t at, int64_t local, int64_t len) {
          be.copy(bufs[b].k(m).rows(at, len), k.rows(local, len));
          be.copy(bufs[b].v(m).rows(at, len), v.rows(local, len));
        });
        be.fill(bufs[b].dk(m), 0.0);
        be.fill(bufs[b].dv(m), 0.0);
      } else {
        b = held[c];
        if (flight.landing == b) settle();  // one chunk: it is the one still arriving
      }
      const ChunkBuffer& buf = bufs[b];
      for (size_t w = 0; w < st.chunk_work[c].size(); ++w) {
        const RingWork& work = st.chunk_work[c][w];
        const ShardPiece& qp = my_pieces[work.q_piece];
        const ChunkPart& part = ch.parts[work.k_piece];
        const int64_t at = part_at[c][work.k_piece];
        be.attention_backward(make_bwd_params(
            {q.rows(qp.local, qp.len), buf.k(m).rows(at, part.len), buf.v(m).rows(at, part.len),
             o.rows(qp.local, qp.len), lse.rows(qp.local, qp.len)},
            {d_o.rows(qp.local, qp.len), dq_acc.rows(qp.local, qp.len),
             buf.dk(m).rows(at, part.len), buf.dv(m).rows(at, part.len)},
            pm->chunk[t][c][w]->view(), pm->chunk_t[t][c][w]->view(),
            {spec_.scale, spec_.causal, qp.global, kp[part.piece].global + part.offset}));
        counters.blocks_computed += work.mask.nnz();
      }
      settle();
      if (S == 1) {
        write_home(b, c);
        free_bufs.push_back(b);
        continue;
      }
      // The chunk moves on to rank+1: K/V with the accumulator, or after the last step the
      // accumulator alone (rank+1 is its origin). The predecessor's chunk c lands here.
      const int land = take();
      const SendSpec s = last ? SendSpec{buf.grads(m), buf.grad_bytes(m), st.send_peer}
                              : SendSpec{buf.data(), buf.bytes(m), st.send_peer};
      const RecvSpec r = last
                             ? RecvSpec{bufs[land].grads(m), bufs[land].grad_bytes(m), st.recv_peer}
                             : RecvSpec{bufs[land].data(), bufs[land].bytes(m), st.recv_peer};
      flight.req =
          counted_exchange(comm, {s}, {r}, CommOp{"ring backward K/V and dK/dV", t}, counters);
      flight.sent = b;
      flight.landing = land;
      flight.chunk = c;
      flight.home = last;
      if (!last) arriving[c] = land;
    }
    counters.hops += !last;
    std::swap(held, arriving);
  }
  settle();
  counters.steps += S;
  if (!dq_in_place) be.copy(dq, dq_acc);
}

void RingAttention::backward_stepwise(Backend& be, Communicator& comm, const TensorView& q,
                                      const TensorView& k, const TensorView& v, const TensorView& o,
                                      const TensorView& lse, const TensorView& d_o,
                                      const TensorView& dq, const TensorView& dk,
                                      const TensorView& dv, DistCounters& counters) {
  const int64_t B = q.B, Nl = plan_.local_rows, H = q.H, D = q.D;
  const int S = static_cast<int>(plan_.steps.size());
  const int rank = plan_.rank;
  const DeviceKind dev = be.device();
  // Gradients accumulate over steps in fp32 when the inputs are fp16/bf16.
  const DType gd = is_half(dq.dtype) ? DType::F32 : dq.dtype;
  if (profile_) profile_->begin(be, "bwd");
  auto mark = [&](const char* phase) {
    if (profile_) profile_->mark(be, std::string("bwd ") + phase);
  };
  auto pick_send = [](const RingStep& s) -> const RowRuns& { return s.send; };
  auto pick_recv = [](const RingStep& s) -> const RowRuns& { return s.recv; };
  auto pick_retire = [](const RingStep& s) -> const RowRuns& { return s.retire; };
  const bool travelling = plan_.travelling_grads;

  // home: this rank's own dK/dV (its step-0 contribution plus every accumulator that returns).
  // acc[a]: the visiting origin's dK/dV (ring: the travelling accumulator; direct: this
  // step's partial, sent home); part (ring): a step's contribution computed while the
  // incoming accumulator is still in flight.
  Layout layout;
  KvBuffers kv;
  kv.place(layout, plan_, k, v, compact_);
  PairSlot kv_send_slot, kv_recv_slot, home_slot, acc_slot[2], part_slot, fwd_send_slot,
      fwd_recv_slot, retire_slot, home_stage_slot;
  if (const int64_t n = kv_staged_rows(plan_, B, pick_send))
    kv_send_slot.place(layout, q.dtype, B, n, H, D);
  if (const int64_t n = kv_staged_rows(plan_, B, pick_recv); n > 0 && !compact_)
    kv_recv_slot.place(layout, q.dtype, B, n, H, D);
  // dQ (fp16/bf16 dq): one step-0 chunk's fp32 scratch and an fp32 accumulator of the rows
  // that more than one chunk or step reach (BackwardSplit), or, where those two would hold as
  // many rows as the shard, one fp32 accumulator of the shard (`dq_whole`); fp32/fp64 dq
  // accumulates in place.
  const bool dq_in_place = gd == dq.dtype;
  const bool dq_whole =
      !dq_in_place && total_rows(bwd_split_.dq_merged) + bwd_split_.chunk_rows >= Nl;
  const bool dq_split = !dq_in_place && !dq_whole;
  const int64_t dq_rows = dq_whole ? Nl : dq_split ? total_rows(bwd_split_.dq_merged) : 0;
  const int64_t dq_scratch_rows = dq_split ? bwd_split_.chunk_rows : 0;
  const size_t dq_at = dq_rows > 0 ? layout.take(tensor_bytes(gd, B, dq_rows, H, D)) : 0;
  const size_t dq_scratch_at =
      dq_scratch_rows > 0 ? layout.take(tensor_bytes(gd, B, dq_scratch_rows, H, D)) : 0;
  // Rows of this rank's dK/dV accumulated in fp32, and of a step's partial (compact layouts:
  // those rows only, one run after another).
  const int64_t home_rows = compact_home_ ? total_rows(bwd_split_.merged) : Nl;
  std::vector<int64_t> part_rows(static_cast<size_t>(S), Nl);
  int64_t acc_rows = 0;
  for (int t = 1; t < S; ++t) {
    if (compact_) part_rows[t] = total_rows(plan_.steps[t].retire);
    acc_rows = std::max(acc_rows, part_rows[t]);
  }
  if (home_rows > 0) home_slot.place(layout, gd, B, home_rows, H, D);
  if (S > 1) {
    for (PairSlot& a : acc_slot) a.place(layout, gd, B, acc_rows, H, D);
    if (travelling) {
      part_slot.place(layout, gd, B, Nl, H, D);
      if (const int64_t n = max_staged_rows(plan_, pick_send))
        fwd_send_slot.place(layout, gd, B, n, H, D);
      if (const int64_t n = max_staged_rows(plan_, pick_recv))
        fwd_recv_slot.place(layout, gd, B, n, H, D);
    }
    if (const int64_t n = max_staged_rows(plan_, pick_retire); n > 0 && !compact_)
      retire_slot.place(layout, gd, B, n, H, D);
    // Returning accumulators are added into `home`, so they always land in a buffer first.
    int64_t hn = 0;
    for (const RingStep& s : plan_.steps) hn = std::max(hn, total_rows(s.home));
    if (hn > 0) home_stage_slot.place(layout, gd, B, hn, H, D);
  }

  // Every mask and buffer of the call is taken before the first exchange, and the ranks agree
  // that all of them got theirs (see forward).
  const Taken taken = take_agreed(
      be, comm, "backward", [&](Masks& m) { m.prepare_stepwise_backward(plan_, fwd_order_, bwd_split_); },
      layout.bytes());
  Masks* pm = taken.masks;
  std::byte* base = taken.base;
  kv.bind(be, base, k, v);
  auto bind = [&](const PairSlot& s) { return s.bind(base, B, H, D, dev); };
  const PairBuffer kv_send_stage = bind(kv_send_slot), kv_recv_stage = bind(kv_recv_slot);
  const PairBuffer home = bind(home_slot), part = bind(part_slot);
  const PairBuffer acc[2] = {bind(acc_slot[0]), bind(acc_slot[1])};
  const PairBuffer fwd_send_stage = bind(fwd_send_slot), fwd_recv_stage = bind(fwd_recv_slot);
  const PairBuffer retire_stage = bind(retire_slot), home_stage = bind(home_stage_slot);
  TensorView dq_acc = dq;
  if (dq_in_place) {
    be.fill(dq, 0.0);
  } else {
    if (dq_rows > 0) {
      dq_acc = make_view(base + dq_at, gd, B, dq_rows, H, D, dev);
      be.fill(dq_acc, 0.0);
    }
    if (dq_split)
      for (const RowRun& r : bwd_split_.dq_unreached) be.fill(dq.rows(r.start, r.len), 0.0);
  }
  // Where rows [start, start + len) of dQ accumulate (split: inside one merged run).
  auto dq_at_rows = [&](int64_t start, int64_t len) {
    if (!dq_split) return dq_acc.rows(start, len);
    const int64_t at = compact_pos(bwd_split_.dq_merged, start, len);
    LONGATTN_ASSERT(at >= 0, "ring backward: dQ rows outside the merged rows");
    return dq_acc.rows(at, len);
  };
  // dk and dv take the rows one call reaches straight; home the others (BackwardSplit).
  be.fill(dk, 0.0);
  be.fill(dv, 0.0);
  // Where rows [start, start + len) of this rank's dK/dV accumulate.
  auto home_at = [&](int64_t start, int64_t len) {
    return compact_home_ ? compact_pos(bwd_split_.merged, start, len) : start;
  };
  if (compact_home_) {
    if (home_rows > 0) {
      be.fill(home.first(), 0.0);
      be.fill(home.second(), 0.0);
    }
  } else {
    for (const RowRun& r : bwd_split_.merged) {
      be.fill(home.first().rows(r.start, r.len), 0.0);
      be.fill(home.second().rows(r.start, r.len), 0.0);
    }
  }
  if (S > 1 && travelling)  // ring: rows an accumulator did not bring must read as zeros
    for (int i = 0; i < 2; ++i) {
      be.fill(acc[i].first(), 0.0);
      be.fill(acc[i].second(), 0.0);
    }

  const auto& my_pieces = plan_.pieces[rank];
  int a = 0;
  CommRequest dkv_req;
  mark("setup");
  // Lands the dK/dV exchange posted after step `t`: the next visitor's accumulator into acc[a]
  // and this rank's returning rows added into home.
  auto finish_dkv = [&](int t) {
    dkv_req.wait();
    const RingStep& st = plan_.steps[t];
    if (travelling && t + 1 < S) land(be, fwd_recv_stage, st.recv, acc[a], false);
    const int64_t n = total_rows(st.home);
    int64_t pos = 0;
    for (const RowRun& r : st.home) {  // returned rows added into the accumulator
      const int64_t at = home_at(r.start, r.len);
      be.axpy(home.first().rows(at, r.len), 1.0, home_stage.first(n).rows(pos, r.len));
      be.axpy(home.second().rows(at, r.len), 1.0, home_stage.second(n).rows(pos, r.len));
      pos += r.len;
    }
  };

  for (int t = 0; t < S; ++t) {
    const RingStep& st = plan_.steps[t];
    CommRequest kv_req;
    if (t + 1 < S)
      kv_req = start_kv_step(comm, be, st, kv, kv_send_stage, kv_recv_stage, "ring backward K/V",
                             t, counters);
    mark("exchange start");
    // Where this step's dK/dV contributions go.
    const PairBuffer* target = &home;
    const PairBuffer acc_t = acc[a].resized(part_rows[t]);  // compact: this step's rows
    if (t == 1 || (t >= 2 && !travelling)) {
      // ring: the first visitor starts the accumulator (it arrives as zeros); direct: each
      // step's partial goes home on its own.
      target = &acc[a];
      if (compact_) {
        target = &acc_t;
        be.fill(acc_t.first(), 0.0);
        be.fill(acc_t.second(), 0.0);
      } else if (travelling) {
        be.fill(acc[a].first(), 0.0);
        be.fill(acc[a].second(), 0.0);
      } else {
        // direct: only the rows going home are read, and they are exactly the key rows this
        // step's works reach; the others may hold anything.
        for (const RowRun& r : st.retire) {
          be.fill(acc[a].first().rows(r.start, r.len), 0.0);
          be.fill(acc[a].second().rows(r.start, r.len), 0.0);
        }
      }
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
      if (t == 0) {  // this rank's own K/V: the chunks and calls of BackwardSplit
        const KvPair cur = kv.current();
        const auto& calls = bwd_split_.step0[w];
        size_t i = 0;
        for (size_t ci = 0; ci < bwd_split_.chunks[w].size(); ++ci) {
          const BackwardSplit::Chunk& ch = bwd_split_.chunks[w][ci];
          const int64_t q0 = qp.local + ch.row0;
          TensorView scratch;
          if (dq_split) {
            scratch = make_view(base + dq_scratch_at, gd, B, ch.rows, H, D, dev);
            be.fill(scratch, 0.0);
          }
          for (; i < calls.size() && calls[i].chunk == static_cast<int>(ci); ++i) {
            const BackwardSplit::Call& c = calls[i];
            const int64_t r0 = qp.local + c.row0, k0 = kpc.local + c.col0;
            const int64_t h0 = c.direct ? 0 : home_at(k0, c.cols);
            const TensorView tk = c.direct ? dk.rows(k0, c.cols) : home.first().rows(h0, c.cols);
            const TensorView tv = c.direct ? dv.rows(k0, c.cols) : home.second().rows(h0, c.cols);
            const TensorView tq =
                dq_split ? scratch.rows(c.row0 - ch.row0, c.rows) : dq_at_rows(r0, c.rows);
            be.attention_backward(make_bwd_params(
                {q.rows(r0, c.rows), cur.k.rows(k0, c.cols), cur.v.rows(k0, c.cols),
                 o.rows(r0, c.rows), lse.rows(r0, c.rows)},
                {d_o.rows(r0, c.rows), tq, tk, tv}, pm->split[w][i]->view(),
                pm->split_t[w][i]->view(),
                {spec_.scale, spec_.causal, qp.global + c.row0, kpc.global + c.col0}));
          }
          if (!dq_split) continue;
          // The chunk's dQ: shared rows into the accumulator, the others straight into dq.
          for_each_part(bwd_split_.dq_merged, q0, ch.rows,
                        [&](int64_t start, int64_t len, bool merged) {
                          const TensorView part = scratch.rows(start - q0, len);
                          if (merged)
                            be.axpy(dq_at_rows(start, len), 1.0, part);
                          else
                            be.copy(dq.rows(start, len), part);
                        });
        }
        LONGATTN_ASSERT(i == calls.size(), "ring backward: a call outside its chunks");
        counters.blocks_computed += work.mask.nnz();
        continue;
      }
      const ForwardOrder::Work& span = fwd_order_.works[t][w];  // the rows it reaches
      const int64_t r0 = qp.local + span.row0, nr = span.rows;
      const int64_t c0 = compact_ ? compact_pos(st.retire, kpc.local + span.col0, span.cols)
                                  : kpc.local + span.col0;
      const int64_t nc = span.cols;
      const KvPair cur = kv.current();
      be.attention_backward(make_bwd_params(
          {q.rows(r0, nr), cur.k.rows(c0, nc), cur.v.rows(c0, nc), o.rows(r0, nr),
           lse.rows(r0, nr)},
          {d_o.rows(r0, nr), dq_at_rows(r0, nr), target->first().rows(c0, nc),
           target->second().rows(c0, nc)},
          pm->bwd_span[t][w]->view(), pm->bwd[t][w]->view(),
          {spec_.scale, spec_.causal, qp.global + span.row0, kpc.global + span.col0}));
      counters.blocks_computed += work.mask.nnz();
    }
    mark("kernels");
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
      // Finished rows in one run at batch 1 go straight from the accumulator, dK then dV, and
      // land as the two halves of the home stage (the same rule on both sides); a compact
      // partial is laid out as the staged message already.
      if (compact_ && !st.retire.empty()) {
        const int64_t n = part_rows[t];
        if (st.retire.size() == 1 && B == 1) {
          sends.push_back(SendSpec{acc_t.first(n).data, acc_t.bytes(n) / 2, st.origin});
          sends.push_back(SendSpec{acc_t.second(n).data, acc_t.bytes(n) / 2, st.origin});
        } else {
          sends.push_back(SendSpec{acc_t.data(), acc_t.bytes(n), st.origin});
        }
      } else if (st.retire.size() == 1 && B == 1) {
        const RowRun r = st.retire[0];
        const TensorView k = acc[a].first().rows(r.start, r.len),
                         v = acc[a].second().rows(r.start, r.len);
        const size_t half = tensor_bytes(gd, 1, r.len, H, D);
        sends.push_back(SendSpec{k.data, half, st.origin});
        sends.push_back(SendSpec{v.data, half, st.origin});
      } else {
        sends.push_back(outgoing(be, acc[a], st.retire, retire_stage, st.origin));
      }
      if (st.home.size() == 1 && B == 1) {
        const int64_t n = st.home[0].len;
        const size_t half = tensor_bytes(gd, 1, n, H, D);
        recvs.push_back(RecvSpec{home_stage.first(n).data, half, st.home_peer});
        recvs.push_back(RecvSpec{home_stage.second(n).data, half, st.home_peer});
      } else if (!st.home.empty()) {
        recvs.push_back(
            RecvSpec{home_stage.data(), home_stage.bytes(total_rows(st.home)), st.home_peer});
      }
      dkv_req = counted_exchange(comm, sends, recvs, CommOp{"ring backward dK/dV", t}, counters);
      a = 1 - a;
    }
    mark("dK/dV exchange");
    kv_req.wait();
    if (t + 1 < S) {
      land_kv(be, kv, kv_recv_stage, st.recv);
      kv.advance();
    }
    mark("K/V wait and land");
  }
  if (S >= 2) finish_dkv(S - 1);
  mark("last dK/dV wait");
  counters.steps += S;
  if (dq_whole) be.copy(dq, dq_acc);
  if (dq_split)
    for (const RowRun& r : bwd_split_.dq_merged)
      be.copy(dq.rows(r.start, r.len), dq_at_rows(r.start, r.len));
  for (const RowRun& r : bwd_split_.merged) {
    const int64_t at = home_at(r.start, r.len);
    be.copy(dk.rows(r.start, r.len), home.first().rows(at, r.len));
    be.copy(dv.rows(r.start, r.len), home.second().rows(at, r.len));
  }
  mark("copy out");
}

}  // namespace longattn
