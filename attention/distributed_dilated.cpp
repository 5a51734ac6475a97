// Distributed dilated attention (both modes) over contiguous sequence shards, LongNet's
// constant-communication scheme: a segment whose dilated rows all lie in one rank's shard is
// computed there with no communication (consecutive such segments folded into one kernel call);
// a segment whose dilated rows spread over several ranks all-gathers only those rows (1/rate of
// the segment, the branch's heads only) among the ranks holding some of them, each rank
// computes its own query rows against the gathered keys, and in the backward the key
// gradients are sent back to the rows' owners and summed there.
#include <algorithm>
#include <limits>
#include <map>
#include <tuple>

#include "attention/dense.hpp"
#include "attention/distributed_base.hpp"
#include "attention/head_groups.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }

// ceil(a / b) for b > 0 and any sign of a.
int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Dense (causal-trimmed) masks of one call, prepared once per geometry.
class MaskCache {
 public:
  MaskCache(Backend& be, int64_t block, bool causal) : be_(be), block_(block), causal_(causal) {}
  struct Entry {
    BlockMask mask;
    std::unique_ptr<PreparedMask> fwd, bwd;
  };
  Entry& get(int64_t nq, int64_t nk, int64_t q_offset) {
    const auto key = std::make_tuple(nq, nk, q_offset);
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      Entry e;
      e.mask = dense_block_mask(MaskGeometry{nq, nk, block_, block_, causal_, q_offset, 0});
      e.fwd = be_.prepare_mask(e.mask);
      it = cache_.emplace(key, std::move(e)).first;
    }
    return it->second;
  }
  const PreparedMask& transposed(Entry& e) {
    if (!e.bwd) e.bwd = be_.prepare_mask(e.mask.transpose());
    return *e.bwd;
  }

 private:
  Backend& be_;
  int64_t block_;
  bool causal_;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Entry> cache_;
};

// Where a segment's dilated rows j in [0, L) (global rows base + j * rate) live: member i of
// `ranks` holds j in [lo[i], hi[i]); `me` is this rank's index.
struct SegmentRows {
  int64_t m = 0, base = 0, L = 0;
  std::vector<int> ranks;
  std::vector<int64_t> lo, hi;
  int me = -1;
  int64_t count(int i) const { return hi[i] - lo[i]; }
};

// K and V (or dK and dV) of n rows in one allocation [2B, n, h, D], so one message moves both.
struct PairTensor {
  DeviceTensor buf;
  int64_t B = 0;
  PairTensor() = default;
  PairTensor(Backend& be, DType dt, int64_t B_, int64_t n, int64_t h, int64_t D)
      : buf(be, dt, 2 * B_, std::max<int64_t>(n, 1), h, D), B(B_) {
    if (n == 0) buf = DeviceTensor();
  }
  TensorView first(int64_t n) const { return resized(n).batches(0, B); }
  TensorView second(int64_t n) const { return resized(n).batches(B, B); }
  size_t bytes(int64_t n) const {
    const TensorView v = buf.view();
    return static_cast<size_t>(2 * B * n * v.H * v.D) * dtype_size(v.dtype);
  }
  void* data() const { return buf.data(); }

 private:
  TensorView resized(int64_t n) const {
    const TensorView v = buf.view();
    return make_view(v.data, v.dtype, v.B, n, v.H, v.D, v.device);
  }
};

class DilatedDistributed final : public SequenceShardedBase {
 public:
  DilatedDistributed(const AttentionSpec& spec, const DistConfig& cfg, Communicator& comm)
      : SequenceShardedBase(spec, cfg, comm) {
    validate_dilated_config(spec.dilated);
  }
  std::string name() const override {
    return std::string("dilated(") +
           (spec_.dilated.mode == DilatedMode::Groups ? "groups" : "longnet") + ", contiguous)";
  }

  void forward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& o, const TensorView& lse) override {
    check_and_agree(q, {{"k", k}, {"v", v}, {"o", o}}, lse);
    counters_ = {};
    MaskCache masks(be, spec_.block_size, spec_.causal);
    const bool groups = spec_.dilated.mode == DilatedMode::Groups;
    // longnet merges branches into an fp32 accumulator when o is fp16/bf16.
    DeviceTensor acc_buf;
    TensorView acc = o;
    if (!groups && is_half(o.dtype)) {
      acc_buf = DeviceTensor(be, DType::F32, o.B, o.N, o.H, o.D);
      acc = acc_buf.view();
    }
    be.fill(acc, 0.0);
    be.fill(lse, kNegInf);
    for (const DilatedBranch& br : dilated_branches(spec_.dilated, q.H))
      forward_branch(be, masks, br, q, k, v, acc, lse, groups);
    if (groups) be.scale(o, 1.0 / num_pairs());
    if (acc_buf.data()) be.copy(o, acc);
  }

  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_and_agree(
        q, {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}, lse);
    counters_ = {};
    MaskCache masks(be, spec_.block_size, spec_.causal);
    // Several branches add into the same rows: accumulate in fp32 for fp16/bf16 gradients.
    const DType gd = is_half(dq.dtype) ? DType::F32 : dq.dtype;
    DeviceTensor bufs[3];
    TensorView grads[3] = {dq, dk, dv};
    for (int i = 0; i < 3; ++i) {
      if (gd != grads[i].dtype) {
        bufs[i] = DeviceTensor(be, gd, q.B, q.N, q.H, q.D);
        grads[i] = bufs[i].view();
      }
      be.fill(grads[i], 0.0);
    }
    for (const DilatedBranch& br : dilated_branches(spec_.dilated, q.H))
      backward_branch(be, masks, br, q, k, v, o, lse, d_o, grads[0], grads[1], grads[2]);
    const TensorView outs[3] = {dq, dk, dv};
    for (int i = 0; i < 3; ++i) {
      if (spec_.dilated.mode == DilatedMode::Groups) be.scale(grads[i], 1.0 / num_pairs());
      if (bufs[i].data()) be.copy(outs[i], grads[i]);
    }
  }

 private:
  double num_pairs() const { return static_cast<double>(spec_.dilated.segment_lengths.size()); }

  // The segments of a branch with dilated rows on this rank: `local` (every row here) and
  // `spanning` (rows on several ranks).
  void segments(const DilatedBranch& br, int64_t c, std::vector<int64_t>& local,
                std::vector<SegmentRows>& spanning) const {
    const int r = comm_.rank();
    const int64_t s = br.segment, rate = br.rate;
    const int64_t L = dilated_length(s, rate, br.offset);
    if (L == 0) return;
    auto lo_of = [&](int64_t base, int64_t row) {
      return std::clamp<int64_t>(ceil_div(row - base, rate), 0, L);
    };
    for (int64_t m = (r * c) / s; m <= ((r + 1) * c - 1) / s; ++m) {
      SegmentRows seg;
      seg.m = m;
      seg.base = m * s + br.offset;
      seg.L = L;
      for (int64_t rho = (m * s) / c; rho <= ((m + 1) * s - 1) / c; ++rho) {
        const int64_t lo = lo_of(seg.base, rho * c), hi = lo_of(seg.base, (rho + 1) * c);
        if (hi <= lo) continue;
        if (rho == r) seg.me = static_cast<int>(seg.ranks.size());
        seg.ranks.push_back(static_cast<int>(rho));
        seg.lo.push_back(lo);
        seg.hi.push_back(hi);
      }
      if (seg.me < 0) continue;
      if (seg.ranks.size() == 1)
        local.push_back(m);
      else
        spanning.push_back(std::move(seg));
    }
  }

  // A branch that has rows here is one step; its blocks are counted once per segment (not
  // per batch or head), like the ring's.
  void count_work(MaskCache& masks, int64_t L, const std::vector<int64_t>& local,
                  const std::vector<SegmentRows>& spanning) {
    ++counters_.steps;
    if (!local.empty())
      counters_.blocks_computed +=
          masks.get(L, L, 0).mask.nnz() * static_cast<int64_t>(local.size());
    for (const SegmentRows& s : spanning)
      counters_.blocks_computed += masks.get(s.count(s.me), s.L, s.lo[s.me]).mask.nnz();
  }

  // Views of consecutive local segments m0 .. m0+cnt-1 of a branch (rows base + j*rate of each),
  // heads of the branch, for batches [b0, b0+nb): segments become the batch dimension.
  static TensorView fold(const TensorView& x, const DilatedBranch& br, int64_t row0, int64_t L,
                         int64_t b0, int64_t nb, int64_t cnt) {
    TensorView t = x.batches(b0, nb).heads(br.head_begin, br.head_count).rows(row0, L, br.rate);
    t.B = nb * cnt;
    t.sb = br.segment * x.sn;
    return t;
  }

  // Runs of consecutive local segments: calls fn(first segment, count, b0, nb) with batches
  // folded into the segment dimension when the run covers the whole shard.
  template <typename F>
  void for_each_local_run(const std::vector<int64_t>& local, const DilatedBranch& br,
                          const TensorView& q, F&& fn) const {
    size_t i = 0;
    while (i < local.size()) {
      size_t j = i + 1;
      while (j < local.size() && local[j] == local[j - 1] + 1) ++j;
      const int64_t cnt = static_cast<int64_t>(j - i);
      const bool whole = cnt * br.segment == q.N;  // batch b+1 starts right after batch b
      if (whole || q.B == 1) {
        fn(local[i], cnt, int64_t{0}, q.B);
      } else {
        for (int64_t b = 0; b < q.B; ++b) fn(local[i], cnt, b, int64_t{1});
      }
      i = j;
    }
  }
  // Batches fold only when every view has batch stride N rows (contiguous local tensors).
  static bool batch_foldable(std::initializer_list<TensorView> views) {
    for (const TensorView& t : views)
      if (t.B > 1 && t.sb != t.N * t.sn) return false;
    return true;
  }

  // Posts the all-gather of a spanning segment's K/V rows among its members.
  struct Gather {
    SegmentRows seg;
    PairTensor mine, all;
    std::vector<PairTensor> theirs;  // by member index (own slot unused)
    CommRequest req;
  };
  void start_gather(Backend& be, const DilatedBranch& br, const TensorView& k, const TensorView& v,
                    Gather& g, int64_t row0_global) {
    const SegmentRows& s = g.seg;
    const int64_t B = k.B, hc = br.head_count, D = k.D, n = s.count(s.me);
    const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
    g.mine = PairTensor(be, k.dtype, B, n, hc, D);
    be.copy(g.mine.first(n), k.heads(br.head_begin, hc).rows(row0, n, br.rate));
    be.copy(g.mine.second(n), v.heads(br.head_begin, hc).rows(row0, n, br.rate));
    std::vector<size_t> bytes;
    std::vector<void*> recv;
    g.theirs.resize(s.ranks.size());
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      if (static_cast<int>(i) != s.me)
        g.theirs[i] = PairTensor(be, k.dtype, B, s.count(static_cast<int>(i)), hc, D);
      bytes.push_back(g.mine.bytes(s.count(static_cast<int>(i))));
      recv.push_back(static_cast<int>(i) == s.me ? nullptr : g.theirs[i].data());
    }
    g.req = comm_.start_allgather_group(s.ranks, g.mine.data(), bytes, recv,
                                        CommOp{"dilated segment all-gather", -1});
    const int64_t others = static_cast<int64_t>(s.ranks.size()) - 1;
    counters_.hops += others;
    counters_.bytes_sent += others * static_cast<int64_t>(g.mine.bytes(n));
    for (size_t i = 0; i < s.ranks.size(); ++i)
      if (static_cast<int>(i) != s.me)
        counters_.bytes_received +=
            static_cast<int64_t>(g.mine.bytes(s.count(static_cast<int>(i))));
  }
  // Waits and lays every member's rows out in dilated order: all.first = K [B, L, hc, D].
  void finish_gather(Backend& be, const DilatedBranch& br, Gather& g, DType dt, int64_t B,
                     int64_t D) {
    g.req.wait();
    const SegmentRows& s = g.seg;
    g.all = PairTensor(be, dt, B, s.L, br.head_count, D);
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      const int ii = static_cast<int>(i);
      const PairTensor& src = ii == s.me ? g.mine : g.theirs[i];
      const int64_t n = s.count(ii);
      be.copy(g.all.first(s.L).rows(s.lo[i], n), src.first(n));
      be.copy(g.all.second(s.L).rows(s.lo[i], n), src.second(n));
    }
    g.theirs.clear();
  }

  void kernel_forward(Backend& be, const PreparedMask& m, const TensorView& q, const TensorView& k,
                      const TensorView& v, const TensorView& o, const TensorView& lse,
                      int64_t q_offset) const {
    // q_offset: positions in the segment's dilated order.
    be.attention_forward(
        make_fwd_params({q, k, v, o, lse}, m.view(), {spec_.scale, spec_.causal, q_offset}));
  }
  void kernel_backward(Backend& be, const PreparedMask& m, const PreparedMask& mt,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv,
                       int64_t q_offset) const {
    be.attention_backward(make_bwd_params({q, k, v, o, lse}, {d_o, dq, dk, dv}, m.view(),
                                          mt.view(), {spec_.scale, spec_.causal, q_offset}));
  }

  // One branch's result for query rows: written in place (groups) or merged by L (longnet).
  void emit(Backend& be, MaskCache::Entry& m, const TensorView& q, const TensorView& k,
            const TensorView& v, const TensorView& acc, const TensorView& lse, int64_t q_offset,
            bool groups) {
    if (groups) {
      kernel_forward(be, *m.fwd, q, k, v, acc, lse, q_offset);
      return;
    }
    DeviceTensor ob(be, acc.dtype, q.B, q.N, q.H, q.D), lb(be, lse.dtype, q.B, q.N, q.H, 1);
    kernel_forward(be, *m.fwd, q, k, v, ob.view(), lb.view(), q_offset);
    be.merge(acc, lse, ob.view(), lb.view());
  }
  void forward_branch(Backend& be, MaskCache& masks, const DilatedBranch& br, const TensorView& q,
                      const TensorView& k, const TensorView& v, const TensorView& acc,
                      const TensorView& lse, bool groups) {
    std::vector<int64_t> local;
    std::vector<SegmentRows> spanning;
    const int64_t c = q.N, row0_global = comm_.rank() * c;
    segments(br, c, local, spanning);
    if (local.empty() && spanning.empty()) return;
    count_work(masks, dilated_length(br.segment, br.rate, br.offset), local, spanning);
    std::vector<Gather> gathers(spanning.size());
    for (size_t i = 0; i < spanning.size(); ++i) {
      gathers[i].seg = std::move(spanning[i]);
      start_gather(be, br, k, v, gathers[i], row0_global);
    }
    // Local segments compute while the gathers are in flight.
    const int64_t L = dilated_length(br.segment, br.rate, br.offset);
    const bool foldable = batch_foldable({q, k, v, acc, lse});
    for_each_local_run(local, br, q, [&](int64_t m0, int64_t cnt, int64_t b0, int64_t nb) {
      const int64_t row0 = m0 * br.segment + br.offset - row0_global;
      auto run = [&](int64_t bb, int64_t n) {
        auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, n, cnt); };
        emit(be, masks.get(L, L, 0), f(q), f(k), f(v), f(acc), f(lse), 0, groups);
      };
      if (nb > 1 && !foldable) {
        for (int64_t b = b0; b < b0 + nb; ++b) run(b, 1);
      } else {
        run(b0, nb);
      }
    });
    for (Gather& g : gathers) {
      finish_gather(be, br, g, k.dtype, q.B, q.D);
      const SegmentRows& s = g.seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, br.head_count).rows(row0, n, br.rate);
      };
      emit(be, masks.get(n, s.L, s.lo[s.me]), mine(q), g.all.first(s.L), g.all.second(s.L),
           mine(acc), mine(lse), s.lo[s.me], groups);
    }
  }

  // The O that the branch's gradient is taken with, for query rows x_o (views of o / lse):
  // groups: the branch's own O_b = G * o; longnet: the branch's own O_i recomputed (detached
  // pair weights, torchscale) or the merged o (exact gradient).
  TensorView branch_output(Backend& be, MaskCache::Entry& m, const TensorView& q,
                           const TensorView& k, const TensorView& v, const TensorView& o_rows,
                           int64_t q_offset, DeviceTensor& store, DeviceTensor& lse_store) const {
    const DilatedConfig& d = spec_.dilated;
    if (d.mode == DilatedMode::LongNet && d.exact_longnet_grad) return o_rows;
    store = DeviceTensor(be, o_rows.dtype, o_rows.B, o_rows.N, o_rows.H, o_rows.D);
    if (d.mode == DilatedMode::Groups) {
      be.copy(store.view(), o_rows);
      be.scale(store.view(), num_pairs());
    } else {
      lse_store = DeviceTensor(be, DType::F32, o_rows.B, o_rows.N, o_rows.H, 1);
      kernel_forward(be, *m.fwd, q, k, v, store.view(), lse_store.view(), q_offset);
    }
    return store.view();
  }

  void backward_branch(Backend& be, MaskCache& masks, const DilatedBranch& br, const TensorView& q,
                       const TensorView& k, const TensorView& v, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                       const TensorView& dk, const TensorView& dv) {
    std::vector<int64_t> local;
    std::vector<SegmentRows> spanning;
    const int64_t c = q.N, row0_global = comm_.rank() * c;
    segments(br, c, local, spanning);
    if (local.empty() && spanning.empty()) return;
    count_work(masks, dilated_length(br.segment, br.rate, br.offset), local, spanning);
    std::vector<Gather> gathers(spanning.size());
    for (size_t i = 0; i < spanning.size(); ++i) {
      gathers[i].seg = std::move(spanning[i]);
      start_gather(be, br, k, v, gathers[i], row0_global);
    }
    const int64_t L = dilated_length(br.segment, br.rate, br.offset);
    const bool foldable = batch_foldable({q, k, v, o, lse, d_o, dq, dk, dv});
    for_each_local_run(local, br, q, [&](int64_t m0, int64_t cnt, int64_t b0, int64_t nb) {
      const int64_t row0 = m0 * br.segment + br.offset - row0_global;
      auto run = [&](int64_t bb, int64_t n) {
        auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, n, cnt); };
        MaskCache::Entry& m = masks.get(L, L, 0);
        DeviceTensor store, lse_store;
        const TensorView ob = branch_output(be, m, f(q), f(k), f(v), f(o), 0, store, lse_store);
        kernel_backward(be, *m.fwd, masks.transposed(m), f(q), f(k), f(v), ob, f(lse), f(d_o),
                        f(dq), f(dk), f(dv), 0);
      };
      if (nb > 1 && !foldable) {
        for (int64_t b = b0; b < b0 + nb; ++b) run(b, 1);
      } else {
        run(b0, nb);
      }
    });
    // Spanning segments: gradients of the gathered keys are summed at the rows' owners.
    struct Scatter {
      PairTensor grads;                 // [2B, L, hc, D]: dK, dV of every gathered row
      std::vector<PairTensor> out, in;  // by member index
      CommRequest req;
    };
    std::vector<Scatter> scatters(gathers.size());
    const DType gd = dq.dtype;
    const int64_t hc = br.head_count;
    for (size_t gi = 0; gi < gathers.size(); ++gi) {
      Gather& g = gathers[gi];
      Scatter& sc = scatters[gi];
      finish_gather(be, br, g, k.dtype, q.B, q.D);
      const SegmentRows& s = g.seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, hc).rows(row0, n, br.rate);
      };
      MaskCache::Entry& m = masks.get(n, s.L, s.lo[s.me]);
      const TensorView kg = g.all.first(s.L), vg = g.all.second(s.L);
      DeviceTensor store, lse_store;
      const TensorView ob =
          branch_output(be, m, mine(q), kg, vg, mine(o), s.lo[s.me], store, lse_store);
      sc.grads = PairTensor(be, gd, q.B, s.L, hc, q.D);
      be.fill(sc.grads.first(s.L), 0.0);
      be.fill(sc.grads.second(s.L), 0.0);
      kernel_backward(be, *m.fwd, masks.transposed(m), mine(q), kg, vg, ob, mine(lse), mine(d_o),
                      mine(dq), sc.grads.first(s.L), sc.grads.second(s.L), s.lo[s.me]);
      std::vector<SendSpec> sends;
      std::vector<RecvSpec> recvs;
      sc.out.resize(s.ranks.size());
      sc.in.resize(s.ranks.size());
      for (size_t i = 0; i < s.ranks.size(); ++i) {
        const int ii = static_cast<int>(i);
        if (ii == s.me) continue;
        const int64_t ni = s.count(ii);
        sc.out[i] = PairTensor(be, gd, q.B, ni, hc, q.D);
        be.copy(sc.out[i].first(ni), sc.grads.first(s.L).rows(s.lo[i], ni));
        be.copy(sc.out[i].second(ni), sc.grads.second(s.L).rows(s.lo[i], ni));
        sc.in[i] = PairTensor(be, gd, q.B, n, hc, q.D);
        sends.push_back(SendSpec{sc.out[i].data(), sc.out[i].bytes(ni), s.ranks[i]});
        recvs.push_back(RecvSpec{sc.in[i].data(), sc.in[i].bytes(n), s.ranks[i]});
        counters_.bytes_sent += static_cast<int64_t>(sc.out[i].bytes(ni));
        counters_.bytes_received += static_cast<int64_t>(sc.in[i].bytes(n));
      }
      sc.req = comm_.start_exchange(sends, recvs, CommOp{"dilated segment dK/dV return", -1});
    }
    for (size_t gi = 0; gi < gathers.size(); ++gi) {
      Scatter& sc = scatters[gi];
      sc.req.wait();
      const SegmentRows& s = gathers[gi].seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, hc).rows(row0, n, br.rate);
      };
      be.axpy(mine(dk), 1.0, sc.grads.first(s.L).rows(s.lo[s.me], n));
      be.axpy(mine(dv), 1.0, sc.grads.second(s.L).rows(s.lo[s.me], n));
      for (size_t i = 0; i < s.ranks.size(); ++i) {
        if (static_cast<int>(i) == s.me) continue;
        be.axpy(mine(dk), 1.0, sc.in[i].first(n));
        be.axpy(mine(dv), 1.0, sc.in[i].second(n));
      }
    }
  }
};

}  // namespace

std::unique_ptr<DistributedAttention> make_distributed_dilated(const AttentionSpec& spec,
                                                               const DistConfig& cfg,
                                                               Communicator& comm) {
  LONGATTN_CHECK_ARG(cfg.sharding == Sharding::Contiguous, "sharding", sharding_name(cfg.sharding),
                     "distributed dilated attention supports contiguous sharding only");
  return std::make_unique<DilatedDistributed>(spec, cfg, comm);
}

}  // namespace longattn
