// Distributed dilated attention (both modes) over contiguous sequence shards, LongNet's
// constant-communication scheme: a segment whose dilated rows all lie in one rank's shard is
// computed there with no communication (consecutive such segments folded into one kernel call);
// a segment whose dilated rows spread over several ranks all-gathers only those rows (1/rate of
// the segment, the branch's heads only) among the ranks holding some of them, each rank
// computes its own query rows against the gathered keys, and in the backward the key
// gradients are sent back to the rows' owners and summed there. Every mask and buffer of a call
// is made before its first exchange (one workspace, reused branch after branch and kept across
// calls), and the ranks agree that all of them got theirs before any data moves.
#include <algorithm>
#include <array>
#include <cstddef>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <tuple>

#include "attention/arena.hpp"
#include "attention/dense.hpp"
#include "attention/dilated.hpp"
#include "attention/distributed_base.hpp"
#include "attention/head_groups.hpp"
#include "attention/ring.hpp"
#include "runtime/bootstrap.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

bool is_half(DType t) { return t == DType::F16 || t == DType::BF16; }

// ceil(a / b) for b > 0 and any sign of a.
int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Dense (causal-trimmed) masks, prepared once per geometry and kept across calls on one
// backend (training steps prepare and upload nothing after the first).
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

// A temporary reused by successive kernel calls: `capacity` elements, viewed in each call's
// contiguous shape.
struct Scratch {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t capacity = 0;
  DeviceKind device = DeviceKind::Cpu;
  TensorView shaped(int64_t B, int64_t N, int64_t H, int64_t D) const {
    LONGATTN_ASSERT(B * N * H * D <= capacity, "a kernel call outgrew its sized scratch buffer");
    return make_view(data, dtype, B, N, H, D, device);
  }
};

// Hands out consecutive aligned pieces of one workspace. Without a base it only counts, so the
// same sequence of requests first sizes the workspace and then lays buffers out over it.
class Carver {
 public:
  Carver(void* base, DeviceKind device) : base_(static_cast<std::byte*>(base)), device_(device) {}
  TensorView tensor(DType dt, int64_t B, int64_t N, int64_t H, int64_t D) {
    return make_view(take(static_cast<size_t>(B * N * H * D) * dtype_size(dt)), dt, B, N, H, D,
                     device_);
  }
  Scratch scratch(DType dt, int64_t elements) {
    return Scratch{take(static_cast<size_t>(elements) * dtype_size(dt)), dt, elements, device_};
  }
  size_t used() const { return used_; }

 private:
  static constexpr size_t kAlign = 256;
  void* take(size_t bytes) {
    const size_t at = used_;
    used_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return base_ ? base_ + at : nullptr;
  }
  std::byte* base_;
  DeviceKind device_;
  size_t used_ = 0;
};

// K and V (or dK and dV) of n rows in one buffer [2B, n, h, D], so one message moves both;
// n == 0 takes no memory.
struct PairTensor {
  TensorView buf;
  int64_t B = 0;
  PairTensor() = default;
  PairTensor(Carver& c, DType dt, int64_t B_, int64_t n, int64_t h, int64_t D) : B(B_) {
    if (n > 0) buf = c.tensor(dt, 2 * B_, n, h, D);
  }
  TensorView first(int64_t n) const { return resized(n).batches(0, B); }
  TensorView second(int64_t n) const { return resized(n).batches(B, B); }
  size_t bytes(int64_t n) const {
    return static_cast<size_t>(2 * B * n * buf.H * buf.D) * dtype_size(buf.dtype);
  }
  void* data() const { return buf.data; }

 private:
  TensorView resized(int64_t n) const {
    return make_view(buf.data, buf.dtype, buf.B, n, buf.H, buf.D, buf.device);
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
    if (longnet_on_shard(q.N, o.dtype)) {
      count_shard_work(be, q);
      run_and_agree(comm_, name() + " forward",
                    [&] { shard_variant().forward(be, q, k, v, o, lse); });
      return;
    }
    if (longnet_stored(q, o.dtype)) {
      forward_stored(be, q, k, v, o, lse);
      return;
    }
    MaskCache& masks = masks_for(be);
    const bool groups = spec_.dilated.mode == DilatedMode::Groups;
    const std::vector<DilatedBranch> branches = dilated_branches(spec_.dilated, q.H);
    std::vector<BranchWork> work(branches.size());
    // longnet merges branches into an fp32 accumulator when o is fp16/bf16.
    DeviceTensor acc_buf;
    std::byte* workspace = nullptr;
    TensorView acc = o;
    BufferTypes types{k.dtype, k.dtype, false, std::nullopt, std::nullopt, std::nullopt, 0};
    bool foldable = false;
    run_and_agree(comm_, name() + " forward", [&] {
      if (!groups && is_half(o.dtype)) {
        acc_buf = DeviceTensor::scratch(be, DType::F32, o.B, o.N, o.H, o.D);  // backend-only
        acc = acc_buf.view();
      }
      if (!groups) {
        types.o_tmp = acc.dtype;
        types.lse_tmp = lse.dtype;
      }
      foldable = batch_foldable({q, k, v, acc, lse});
      workspace = prepare(be, masks, branches, q, foldable, types, work);
    });
    be.fill(acc, 0.0);
    be.fill(lse, kNegInf);
    for (size_t i = 0; i < branches.size(); ++i) {
      if (!has_rows(work[i])) continue;
      Carver c(workspace, be.device());
      carve(c, branches[i], q, foldable, types, work[i]);
      forward_branch(be, masks, branches[i], work[i], q, k, v, acc, lse, groups, foldable);
    }
    if (groups) be.scale(o, 1.0 / num_pairs());
    if (acc_buf.data()) be.copy(o, acc);
  }

  void backward(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const TensorView& lse, const TensorView& d_o,
                const TensorView& dq, const TensorView& dk, const TensorView& dv) override {
    check_and_agree(
        q, {{"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}, lse);
    counters_ = {};
    if (longnet_on_shard(q.N, dq.dtype)) {
      count_shard_work(be, q);
      run_and_agree(comm_, name() + " backward", [&] {
        shard_variant().backward(be, q, k, v, o, lse, d_o, dq, dk, dv);
      });
      return;
    }
    if (longnet_stored(q, dq.dtype)) {
      backward_stored(be, q, k, v, o, lse, d_o, dq, dk, dv);
      return;
    }
    MaskCache& masks = masks_for(be);
    const std::vector<DilatedBranch> branches = dilated_branches(spec_.dilated, q.H);
    std::vector<BranchWork> work(branches.size());
    const DilatedConfig& d = spec_.dilated;
    // Groups: a (row, head) belongs to one branch and one segment. Its dQ comes from one kernel
    // call; its dK, dV from one local call or, in a spanning segment, from the calls of every
    // member rank, summed at the owner in fp32 in the segment's own buffer. So with fp16/bf16
    // gradients each element is written once: a local call's gradients and a spanning call's
    // dQ go through fp32 scratches of that call, a spanning segment's key gradients through its
    // fp32 exchange buffers, each copied out scaled (one rounding); nothing of the shard's size
    // is held in fp32 (`once`). Longnet adds branches up: whole-shard fp32 accumulators.
    const bool once = d.mode == DilatedMode::Groups && is_half(dq.dtype);
    const DType gd = is_half(dq.dtype) && !once ? DType::F32 : dq.dtype;
    DeviceTensor bufs[3];
    std::byte* workspace = nullptr;
    TensorView grads[3] = {dq, dk, dv};
    // The branch's own O (and its LSE, longnet) that the gradient is taken with, unless the
    // exact longnet gradient uses the merged o.
    BufferTypes types{k.dtype, gd, true, std::nullopt, std::nullopt, std::nullopt, 0};
    if (!(d.mode == DilatedMode::LongNet && d.exact_longnet_grad)) types.o_tmp = o.dtype;
    if (d.mode == DilatedMode::LongNet && !d.exact_longnet_grad) types.lse_tmp = DType::F32;
    if (once) {
      types.g_tmp = DType::F32;
      types.most_rows = cfg_.split_rows > 0 ? cfg_.split_rows : backward_split_rows(q.B * q.N);
    }
    const double alpha = d.mode == DilatedMode::Groups ? 1.0 / num_pairs() : 1.0;
    bool foldable = false;
    run_and_agree(comm_, name() + " backward", [&] {
      for (int i = 0; i < 3; ++i)
        if (gd != grads[i].dtype) {
          bufs[i] = DeviceTensor::scratch(be, gd, q.B, q.N, q.H, q.D);  // backend-only
          grads[i] = bufs[i].view();
        }
      foldable = batch_foldable({q, k, v, o, lse, d_o, grads[0], grads[1], grads[2]});
      workspace = prepare(be, masks, branches, q, foldable, types, work);
    });
    for (int i = 0; i < 3; ++i) be.fill(grads[i], 0.0);
    for (size_t i = 0; i < branches.size(); ++i) {
      if (!has_rows(work[i])) continue;
      Carver c(workspace, be.device());
      carve(c, branches[i], q, foldable, types, work[i]);
      backward_branch(be, masks, branches[i], work[i], q, k, v, o, lse, d_o, grads[0], grads[1],
                      grads[2], foldable, types, alpha);
    }
    if (once) return;  // copied out scaled by each call
    const TensorView outs[3] = {dq, dk, dv};
    for (int i = 0; i < 3; ++i) {
      if (bufs[i].data())
        be.copy_scaled(outs[i], alpha, grads[i]);  // one pass, one rounding
      else if (alpha != 1.0)
        be.scale(grads[i], alpha);
    }
  }

  void release_workspace() override {
    arena_.release();
    shard_.reset();
  }

 private:
  // Longnet with fp16/bf16 tensors where every segment length divides the shard (the same on
  // every rank): no segment spans ranks, so the shard's result depends on its own rows only.
  // The single-process variant runs on it in row passes (DilatedConfig::pass_rows), each
  // holding the fp32 merged output or dq, dk, dv of its own rows, instead of whole-shard fp32
  // buffers for the branches to add into. No communication, as on the workspace path.
  bool longnet_on_shard(int64_t shard, DType t) const {
    if (spec_.dilated.mode != DilatedMode::LongNet || !is_half(t)) return false;
    for (int64_t s : spec_.dilated.segment_lengths)
      if (shard % s != 0) return false;
    return true;
  }
  AttentionVariant& shard_variant() {
    if (!shard_) shard_ = make_dilated_attention(spec_);
    return *shard_;
  }
  // The counters of the workspace path: a step per branch with rows, blocks once per segment.
  void count_shard_work(const Backend& be, const TensorView& q) {
    const int64_t tile = kernel_tile(be);
    for (const DilatedBranch& br : dilated_branches(spec_.dilated, q.H)) {
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      if (L == 0) continue;
      ++counters_.steps;
      const BlockMask m = dense_block_mask(MaskGeometry{L, L, tile, tile, spec_.causal, 0, 0});
      counters_.blocks_computed += m.nnz() * (q.N / br.segment);
    }
  }
  // The kernels' mask tile: block_size, raised to the backend's preferred tile as on one
  // device (128 on CUDA, where the Hopper kernels take 128-multiples; results never depend on
  // it, and no shard length has to be a multiple of it here).
  int64_t kernel_tile(const Backend& be) const {
    return std::max(spec_.block_size, be.preferred_tile());
  }
  double num_pairs() const { return static_cast<double>(spec_.dilated.segment_lengths.size()); }
  MaskCache& masks_for(Backend& be) {
    if (!masks_ || masks_backend_ != be.instance_id()) {
      masks_.reset();
      masks_ = std::make_unique<MaskCache>(be, kernel_tile(be), spec_.causal);
      masks_backend_ = be.instance_id();
    }
    return *masks_;
  }

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
  // folded into the segment dimension when the run covers the whole shard. most_rows > 0: a
  // call holds at most that many dilated rows (at least one segment), runs cut as needed.
  template <typename F>
  void for_each_local_run(const std::vector<int64_t>& local, const DilatedBranch& br,
                          const TensorView& q, F&& fn, int64_t most_rows = 0) const {
    const int64_t L = std::max<int64_t>(1, dilated_length(br.segment, br.rate, br.offset));
    size_t i = 0;
    while (i < local.size()) {
      size_t j = i + 1;
      while (j < local.size() && local[j] == local[j - 1] + 1) ++j;
      const int64_t cnt = static_cast<int64_t>(j - i);
      const bool whole = cnt * br.segment == q.N;  // batch b+1 starts right after batch b
      if ((whole || q.B == 1) && (most_rows <= 0 || q.B * cnt * L <= most_rows)) {
        fn(local[i], cnt, int64_t{0}, q.B);
      } else {
        const int64_t per = most_rows > 0 ? std::max<int64_t>(1, most_rows / L) : cnt;
        for (int64_t b = 0; b < q.B; ++b)
          for (int64_t s = 0; s < cnt; s += per)
            fn(local[i] + s, std::min(per, cnt - s), b, int64_t{1});
      }
      i = j;
    }
  }
  // The kernel calls of those runs: fn(m0, cnt, b, nb, row0), one batch at a time where the
  // views cannot fold batches (nb > 1 only when foldable); row0 is segment m0's first dilated
  // row in the views' rows, whose row 0 is global row first_row.
  template <typename F>
  void for_each_local_call(const std::vector<int64_t>& local, const DilatedBranch& br,
                           const TensorView& q, bool foldable, int64_t most_rows,
                           int64_t first_row, F&& fn) const {
    for_each_local_run(
        local, br, q,
        [&](int64_t m0, int64_t cnt, int64_t b0, int64_t nb) {
          const int64_t row0 = m0 * br.segment + br.offset - first_row;
          if (nb > 1 && !foldable) {
            for (int64_t b = b0; b < b0 + nb; ++b) fn(m0, cnt, b, int64_t{1}, row0);
          } else {
            fn(m0, cnt, b0, nb, row0);
          }
        },
        most_rows);
  }
  // Batches fold only when every view has batch stride N rows (contiguous local tensors).
  static bool batch_foldable(std::initializer_list<TensorView> views) {
    for (const TensorView& t : views)
      if (t.B > 1 && t.sb != t.N * t.sn) return false;
    return true;
  }

  // A spanning segment's K/V rows: this rank's, every other member's, all of them in dilated
  // order.
  struct Gather {
    SegmentRows seg;
    PairTensor mine, all;
    std::vector<PairTensor> theirs;  // by member index (own slot unused)
    CommRequest req;
  };
  // The key gradients of a spanning segment returned to the rows' owners.
  struct Scatter {
    PairTensor grads;                 // [2B, L, hc, D]: dK, dV of every gathered row
    std::vector<PairTensor> out, in;  // by member index
    CommRequest req;
  };
  // One branch on this rank: its local segments, its spanning segments, and its device buffers
  // (laid out over the call's workspace right before the branch runs).
  struct BranchWork {
    std::vector<int64_t> local;
    std::vector<Gather> gathers;
    std::vector<Scatter> scatters;  // backward
    // forward (longnet): one kernel call's O and LSE before the merge; backward: the branch's
    // own O (and LSE) the gradient is taken with.
    Scratch o_tmp, lse_tmp;
    Scratch g_tmp[3];  // backward, gradients reached once: a local call's dQ, dK, dV
  };
  static bool has_rows(const BranchWork& w) { return !w.local.empty() || !w.gathers.empty(); }
  // Dtypes of a call's buffers; a scratch without a dtype is not needed.
  struct BufferTypes {
    DType kv, grad;
    bool backward;
    std::optional<DType> o_tmp, lse_tmp;
    // Backward with gradients reached once (groups): each local call's dQ, dK, dV and each
    // spanning call's dQ in fp32 scratches (and the spanning segments' exchange buffers in
    // fp32), copied out scaled; local calls hold at most most_rows rows (0: no limit).
    std::optional<DType> g_tmp;
    int64_t most_rows = 0;
    // The stored longnet path: a branch of segments longer than the shard runs one call over
    // its rows here, all batches at once; in the forward it writes O and L into buffers of
    // its own, so it needs no o_tmp, lse_tmp.
    bool stored = false;
  };

  // Lays out a branch's buffers from `c`, always in the same order.
  void carve(Carver& c, const DilatedBranch& br, const TensorView& q, bool foldable,
             const BufferTypes& t, BranchWork& w) const {
    const int64_t B = q.B, hc = br.head_count, D = q.D;
    const int64_t L = dilated_length(br.segment, br.rate, br.offset);
    for (Gather& g : w.gathers) {
      const SegmentRows& s = g.seg;
      g.mine = PairTensor(c, t.kv, B, s.count(s.me), hc, D);
      g.theirs.assign(s.ranks.size(), PairTensor());
      for (size_t i = 0; i < s.ranks.size(); ++i)
        if (static_cast<int>(i) != s.me)
          g.theirs[i] = PairTensor(c, t.kv, B, s.count(static_cast<int>(i)), hc, D);
      g.all = PairTensor(c, t.kv, B, s.L, hc, D);
    }
    if (t.backward) {
      w.scatters.clear();
      w.scatters.resize(w.gathers.size());
      for (size_t gi = 0; gi < w.gathers.size(); ++gi) {
        const SegmentRows& s = w.gathers[gi].seg;
        Scatter& sc = w.scatters[gi];
        const DType sg = t.g_tmp ? *t.g_tmp : t.grad;  // the key gradients' sums
        sc.grads = PairTensor(c, sg, B, s.L, hc, D);
        sc.out.assign(s.ranks.size(), PairTensor());
        sc.in.assign(s.ranks.size(), PairTensor());
        for (size_t i = 0; i < s.ranks.size(); ++i) {
          if (static_cast<int>(i) == s.me) continue;
          sc.out[i] = PairTensor(c, sg, B, s.count(static_cast<int>(i)), hc, D);
          sc.in[i] = PairTensor(c, sg, B, s.count(s.me), hc, D);
        }
      }
    }
    // The scratch fits the largest kernel call: a run of local segments folded into the batch
    // (see for_each_local_run) or this rank's rows of a spanning segment.
    int64_t rows = 0;
    int64_t local_rows = 0;
    for_each_local_run(
        w.local, br, q,
        [&](int64_t, int64_t cnt, int64_t, int64_t nb) {
          local_rows = std::max(local_rows, (nb > 1 && !foldable ? 1 : nb) * cnt * L);
        },
        t.most_rows);
    rows = local_rows;
    for (const Gather& g : w.gathers) rows = std::max(rows, B * g.seg.count(g.seg.me));
    if (t.stored && br.segment > q.N) {
      if (!w.local.empty()) rows = std::max(rows, B * L);
      if (!t.backward) rows = 0;
    }
    if (t.o_tmp) w.o_tmp = c.scratch(*t.o_tmp, rows * hc * D);
    if (t.lse_tmp) w.lse_tmp = c.scratch(*t.lse_tmp, rows * hc);
    if (t.g_tmp) {
      w.g_tmp[0] = c.scratch(*t.g_tmp, rows * hc * D);  // a spanning call's dQ too
      for (int i = 1; i < 3; ++i) w.g_tmp[i] = c.scratch(*t.g_tmp, local_rows * hc * D);
    }
  }

  // Before the first exchange: every branch's segments, their masks (and the transposed ones
  // for the backward) and one workspace that fits the largest branch's buffers.
  std::byte* prepare(Backend& be, MaskCache& masks, const std::vector<DilatedBranch>& branches,
                     const TensorView& q, bool foldable, const BufferTypes& t,
                     std::vector<BranchWork>& work) {
    size_t bytes = 0;
    for (size_t i = 0; i < branches.size(); ++i) {
      const DilatedBranch& br = branches[i];
      BranchWork& w = work[i];
      std::vector<SegmentRows> spanning;
      segments(br, q.N, w.local, spanning);
      if (w.local.empty() && spanning.empty()) continue;
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      count_work(masks, L, w.local, spanning);
      if (t.backward) {
        if (!w.local.empty()) masks.transposed(masks.get(L, L, 0));
        for (const SegmentRows& s : spanning)
          masks.transposed(masks.get(s.count(s.me), s.L, s.lo[s.me]));
      }
      w.gathers.resize(spanning.size());
      for (size_t j = 0; j < spanning.size(); ++j) w.gathers[j].seg = std::move(spanning[j]);
      Carver sizing(nullptr, be.device());
      carve(sizing, br, q, foldable, t, w);
      bytes = std::max(bytes, sizing.used());
    }
    if (bytes == 0) return nullptr;
    return arena_.reserve(be, bytes);
  }

  // Posts the all-gather of a spanning segment's K/V rows among its members.
  void start_gather(Backend& be, const DilatedBranch& br, const TensorView& k, const TensorView& v,
                    Gather& g, int64_t row0_global) {
    const SegmentRows& s = g.seg;
    const int64_t hc = br.head_count, n = s.count(s.me);
    const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
    be.copy(g.mine.first(n), k.heads(br.head_begin, hc).rows(row0, n, br.rate));
    be.copy(g.mine.second(n), v.heads(br.head_begin, hc).rows(row0, n, br.rate));
    std::vector<size_t> bytes;
    std::vector<void*> recv;
    for (size_t i = 0; i < s.ranks.size(); ++i) {
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
  void finish_gather(Backend& be, Gather& g) {
    g.req.wait();
    const SegmentRows& s = g.seg;
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      const int ii = static_cast<int>(i);
      const PairTensor& src = ii == s.me ? g.mine : g.theirs[i];
      const int64_t n = s.count(ii);
      be.copy(g.all.first(s.L).rows(s.lo[i], n), src.first(n));
      be.copy(g.all.second(s.L).rows(s.lo[i], n), src.second(n));
    }
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
  void emit(Backend& be, MaskCache::Entry& m, const BranchWork& w, const TensorView& q,
            const TensorView& k, const TensorView& v, const TensorView& acc, const TensorView& lse,
            int64_t q_offset, bool groups) {
    if (groups) {
      kernel_forward(be, *m.fwd, q, k, v, acc, lse, q_offset);
      return;
    }
    const TensorView ob = w.o_tmp.shaped(q.B, q.N, q.H, q.D),
                     lb = w.lse_tmp.shaped(q.B, q.N, q.H, 1);
    kernel_forward(be, *m.fwd, q, k, v, ob, lb, q_offset);
    be.merge(acc, lse, ob, lb);
  }
  void forward_branch(Backend& be, MaskCache& masks, const DilatedBranch& br, BranchWork& w,
                      const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& acc, const TensorView& lse, bool groups, bool foldable) {
    const int64_t c = q.N, row0_global = comm_.rank() * c;
    for (Gather& g : w.gathers) start_gather(be, br, k, v, g, row0_global);
    // Local segments compute while the gathers are in flight.
    const int64_t L = dilated_length(br.segment, br.rate, br.offset);
    for_each_local_call(w.local, br, q, foldable, 0, row0_global,
                        [&](int64_t, int64_t cnt, int64_t b, int64_t nb, int64_t row0) {
                          auto f = [&](const TensorView& x) {
                            return fold(x, br, row0, L, b, nb, cnt);
                          };
                          emit(be, masks.get(L, L, 0), w, f(q), f(k), f(v), f(acc), f(lse), 0,
                               groups);
                        });
    for (Gather& g : w.gathers) {
      finish_gather(be, g);
      const SegmentRows& s = g.seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, br.head_count).rows(row0, n, br.rate);
      };
      emit(be, masks.get(n, s.L, s.lo[s.me]), w, mine(q), g.all.first(s.L), g.all.second(s.L),
           mine(acc), mine(lse), s.lo[s.me], groups);
    }
  }

  // The O that the branch's gradient is taken with, for query rows x_o (views of o / lse):
  // groups: the branch's own O_b = G * o; longnet: the branch's own O_i recomputed (detached
  // pair weights, torchscale) or the merged o (exact gradient).
  TensorView branch_output(Backend& be, MaskCache::Entry& m, const BranchWork& w,
                           const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& o_rows, int64_t q_offset) const {
    const DilatedConfig& d = spec_.dilated;
    if (d.mode == DilatedMode::LongNet && d.exact_longnet_grad) return o_rows;
    const TensorView store = w.o_tmp.shaped(o_rows.B, o_rows.N, o_rows.H, o_rows.D);
    if (d.mode == DilatedMode::Groups) {
      be.copy(store, o_rows);
      be.scale(store, num_pairs());
    } else {
      kernel_forward(be, *m.fwd, q, k, v, store, w.lse_tmp.shaped(o_rows.B, o_rows.N, o_rows.H, 1),
                     q_offset);
    }
    return store;
  }

  void backward_branch(Backend& be, MaskCache& masks, const DilatedBranch& br, BranchWork& w,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv,
                       bool foldable, const BufferTypes& t, double alpha) {
    const int64_t c = q.N, row0_global = comm_.rank() * c;
    for (Gather& g : w.gathers) start_gather(be, br, k, v, g, row0_global);
    const int64_t L = dilated_length(br.segment, br.rate, br.offset);
    const bool once = t.g_tmp.has_value();
    for_each_local_call(
        w.local, br, q, foldable, t.most_rows, row0_global,
        [&](int64_t, int64_t cnt, int64_t bb, int64_t n, int64_t row0) {
          auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, n, cnt); };
          MaskCache::Entry& m = masks.get(L, L, 0);
          const TensorView fq = f(q);
          const TensorView ob = branch_output(be, m, w, fq, f(k), f(v), f(o), 0);
          if (!once) {
            kernel_backward(be, *m.fwd, masks.transposed(m), fq, f(k), f(v), ob, f(lse),
                            f(d_o), f(dq), f(dk), f(dv), 0);
            return;
          }
          TensorView g[3];
          for (int i = 0; i < 3; ++i) {
            g[i] = w.g_tmp[i].shaped(fq.B, fq.N, fq.H, fq.D);
            be.fill(g[i], 0.0);
          }
          kernel_backward(be, *m.fwd, masks.transposed(m), fq, f(k), f(v), ob, f(lse), f(d_o),
                          g[0], g[1], g[2], 0);
          be.copy_scaled(f(dq), alpha, g[0]);  // one rounding, as the accumulators' copy
          be.copy_scaled(f(dk), alpha, g[1]);
          be.copy_scaled(f(dv), alpha, g[2]);
        });
    // Spanning segments: gradients of the gathered keys are summed at the rows' owners.
    std::vector<Gather>& gathers = w.gathers;
    std::vector<Scatter>& scatters = w.scatters;
    const int64_t hc = br.head_count;
    for (size_t gi = 0; gi < gathers.size(); ++gi) {
      Gather& g = gathers[gi];
      Scatter& sc = scatters[gi];
      finish_gather(be, g);
      const SegmentRows& s = g.seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, hc).rows(row0, n, br.rate);
      };
      MaskCache::Entry& m = masks.get(n, s.L, s.lo[s.me]);
      const TensorView kg = g.all.first(s.L), vg = g.all.second(s.L);
      const TensorView ob = branch_output(be, m, w, mine(q), kg, vg, mine(o), s.lo[s.me]);
      be.fill(sc.grads.first(s.L), 0.0);
      be.fill(sc.grads.second(s.L), 0.0);
      const TensorView dq_rows = mine(dq);
      TensorView dq_call = dq_rows;
      if (once) {
        dq_call = w.g_tmp[0].shaped(dq_rows.B, dq_rows.N, dq_rows.H, dq_rows.D);
        be.fill(dq_call, 0.0);
      }
      kernel_backward(be, *m.fwd, masks.transposed(m), mine(q), kg, vg, ob, mine(lse), mine(d_o),
                      dq_call, sc.grads.first(s.L), sc.grads.second(s.L), s.lo[s.me]);
      if (once) be.copy_scaled(dq_rows, alpha, dq_call);  // this row's one contribution
      post_key_grads(be, g.seg, sc);
    }
    for (size_t gi = 0; gi < gathers.size(); ++gi) {
      Scatter& sc = scatters[gi];
      const SegmentRows& s = gathers[gi].seg;
      const int64_t n = s.count(s.me);
      const int64_t row0 = s.base + s.lo[s.me] * br.rate - row0_global;
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, hc).rows(row0, n, br.rate);
      };
      // once: the members' sums in the fp32 buffer of this rank's rows, then one rounding;
      // else into the fp32 accumulators, in the same order.
      if (once) {
        const auto [own_k, own_v] = sum_key_grads(be, s, sc);
        be.copy_scaled(mine(dk), alpha, own_k);
        be.copy_scaled(mine(dv), alpha, own_v);
        continue;
      }
      sc.req.wait();
      be.axpy(mine(dk), 1.0, sc.grads.first(s.L).rows(s.lo[s.me], n));
      be.axpy(mine(dv), 1.0, sc.grads.second(s.L).rows(s.lo[s.me], n));
      for (size_t i = 0; i < s.ranks.size(); ++i) {
        if (static_cast<int>(i) == s.me) continue;
        be.axpy(mine(dk), 1.0, sc.in[i].first(n));
        be.axpy(mine(dv), 1.0, sc.in[i].second(n));
      }
    }
  }

  // Sends each member the key gradients of its rows of a spanning segment (computed here in
  // sc.grads) and receives this rank's rows' from every member.
  void post_key_grads(Backend& be, const SegmentRows& s, Scatter& sc) {
    const int64_t n = s.count(s.me);
    std::vector<SendSpec> sends;
    std::vector<RecvSpec> recvs;
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      const int ii = static_cast<int>(i);
      if (ii == s.me) continue;
      const int64_t ni = s.count(ii);
      be.copy(sc.out[i].first(ni), sc.grads.first(s.L).rows(s.lo[i], ni));
      be.copy(sc.out[i].second(ni), sc.grads.second(s.L).rows(s.lo[i], ni));
      sends.push_back(SendSpec{sc.out[i].data(), sc.out[i].bytes(ni), s.ranks[i]});
      recvs.push_back(RecvSpec{sc.in[i].data(), sc.in[i].bytes(n), s.ranks[i]});
      counters_.bytes_sent += static_cast<int64_t>(sc.out[i].bytes(ni));
      counters_.bytes_received += static_cast<int64_t>(sc.in[i].bytes(n));
    }
    sc.req = comm_.start_exchange(sends, recvs, CommOp{"dilated segment dK/dV return", -1});
  }
  // Waits for the exchange and sums every member's key gradients of this rank's rows into
  // this rank's rows of sc.grads (in member order); returns those rows (dK, dV).
  std::pair<TensorView, TensorView> sum_key_grads(Backend& be, const SegmentRows& s,
                                                  Scatter& sc) {
    sc.req.wait();
    const int64_t n = s.count(s.me);
    const TensorView own_k = sc.grads.first(s.L).rows(s.lo[s.me], n),
                     own_v = sc.grads.second(s.L).rows(s.lo[s.me], n);
    for (size_t i = 0; i < s.ranks.size(); ++i) {
      if (static_cast<int>(i) == s.me) continue;
      be.axpy(own_k, 1.0, sc.in[i].first(n));
      be.axpy(own_v, 1.0, sc.in[i].second(n));
    }
    return {own_k, own_v};
  }

  // Longnet with fp16/bf16 tensors where every segment length divides the shard or is a
  // multiple of it, some a multiple (where all divide, longnet_on_shard). A branch of
  // multiples ("wide") has at most one segment with rows on this rank, so its result for them
  // (forward: O and L; backward: dq, dk, dv) is a buffer of those rows only, 1/rate of the
  // shard for the branch's heads. Those buffers are computed first, with the exchanges of the
  // workspace path; then the shard goes in row passes as on one device: a pass holds the fp32
  // merged output or dq, dk, dv of its own rows, and takes the branches in their order, the
  // dividing ones computed on the pass's segments, the wide ones merged (added) from their
  // buffers. No fp32 buffer of the shard's size is held.
  // Taken where the shard needs more than one pass (DilatedConfig::pass_rows; by default
  // shards over 2^20 rows): in one pass the workspace path holds no more.
  bool longnet_stored(const TensorView& q, DType t) const {
    if (spec_.dilated.mode != DilatedMode::LongNet || !is_half(t)) return false;
    for (int64_t s : spec_.dilated.segment_lengths)
      if (q.N % s != 0 && s % q.N != 0) return false;
    return stored_pass_rows(q) < q.N;
  }
  static bool wide(const DilatedBranch& br, int64_t shard) { return br.segment > shard; }
  // Rows of a stored pass: a multiple of every segment length that divides the shard, at most
  // DilatedConfig::pass_rows (longnet_pass_rows when 0) where that allows.
  int64_t stored_pass_rows(const TensorView& q) const {
    int64_t unit = 1;
    for (int64_t s : spec_.dilated.segment_lengths)
      if (q.N % s == 0) unit = std::lcm(unit, s);  // divides the shard
    const int64_t given = spec_.dilated.pass_rows;
    const int64_t most = given > 0 ? given : longnet_pass_rows(q.B * q.N) / q.B;
    return std::min(q.N, std::max(unit, most / unit * unit));
  }
  // A wide branch's rows on this rank: shard rows row0 + j * rate, j in [0, n); q_offset is
  // the first one's position in the segment's dilated order.
  struct OwnRows {
    int64_t row0 = 0, n = 0, q_offset = 0;
    bool spanning = false;
  };
  static OwnRows own_rows(const DilatedBranch& br, const BranchWork& w, int64_t row0_global) {
    LONGATTN_ASSERT(w.local.size() + w.gathers.size() <= 1,
                    "a segment longer than the shard has more than one segment on a rank");
    if (!w.local.empty())
      return {w.local[0] * br.segment + br.offset - row0_global,
              dilated_length(br.segment, br.rate, br.offset), 0, false};
    if (!w.gathers.empty()) {
      const SegmentRows& s = w.gathers[0].seg;
      return {s.base + s.lo[s.me] * br.rate - row0_global, s.count(s.me), s.lo[s.me], true};
    }
    return {};
  }
  // Each wide branch's rows on this rank (none for the others).
  static std::vector<OwnRows> wide_rows(const std::vector<DilatedBranch>& branches,
                                        const std::vector<BranchWork>& work, int64_t shard,
                                        int64_t row0_global) {
    std::vector<OwnRows> out(branches.size());
    for (size_t i = 0; i < branches.size(); ++i)
      if (wide(branches[i], shard)) out[i] = own_rows(branches[i], work[i], row0_global);
    return out;
  }
  // Dividing branches whose result over the whole shard is small (rows x heads at most the
  // pass accumulator's, shared among the branches: high rates, few heads) are stored too, so
  // that all their segments go in one call (or a few of at most a pass) instead of one call a
  // pass; their buffers are [B x segments, L, heads, D], the local segments in order.
  static std::vector<char> small_rows(const std::vector<DilatedBranch>& branches,
                                      const std::vector<BranchWork>& work, const TensorView& q,
                                      int64_t pass) {
    std::vector<char> out(branches.size(), 0);
    const int64_t budget = pass * q.H / static_cast<int64_t>(branches.size());
    for (size_t i = 0; i < branches.size(); ++i) {
      const DilatedBranch& br = branches[i];
      if (wide(br, q.N) || work[i].local.empty()) continue;
      const int64_t L = dilated_length(br.segment, br.rate, br.offset);
      out[i] = static_cast<int64_t>(work[i].local.size()) * L * br.head_count <= budget;
    }
    return out;
  }
  // The shape [B', N', heads] of branch i's stored buffers: this rank's rows of a wide branch
  // [B, n, heads], every local segment of a small one [B x segments, L, heads]; B' = 0 for a
  // branch computed in the passes.
  static std::array<int64_t, 3> stored_shape(const DilatedBranch& br, const BranchWork& w,
                                             const OwnRows& own, bool small, int64_t B) {
    if (own.n > 0) return {B, own.n, br.head_count};
    if (small)
      return {B * static_cast<int64_t>(w.local.size()),
              dilated_length(br.segment, br.rate, br.offset), br.head_count};
    return {0, 0, 0};
  }
  // Before the first exchange of a stored call: the workspace path's preparation, each
  // branch's stored rows (own, small), and fn(i, b, n, heads) for each stored buffer's shape.
  template <typename F>
  std::byte* prepare_stored(Backend& be, MaskCache& masks,
                            const std::vector<DilatedBranch>& branches, const TensorView& q,
                            bool foldable, const BufferTypes& t, std::vector<BranchWork>& work,
                            std::vector<OwnRows>& own, std::vector<char>& small, F&& fn) {
    std::byte* workspace = prepare(be, masks, branches, q, foldable, t, work);
    own = wide_rows(branches, work, q.N, comm_.rank() * q.N);
    small = small_rows(branches, work, q, t.most_rows);
    for (size_t i = 0; i < branches.size(); ++i) {
      const auto [b, n, h] = stored_shape(branches[i], work[i], own[i], small[i], q.B);
      if (b > 0) fn(i, b, n, h);
    }
    return workspace;
  }
  // Batches [at, at + n) of a small branch's buffer: batch b's local segments from m on.
  static int64_t small_at(const BranchWork& w, int64_t b, int64_t m) {
    return b * static_cast<int64_t>(w.local.size()) + (m - w.local[0]);
  }
  // The rows j of `r` whose shard rows lie in [a, b).
  static std::pair<int64_t, int64_t> rows_in(const OwnRows& r, int64_t rate, int64_t a,
                                             int64_t b) {
    auto at = [&](int64_t row) {
      return std::clamp<int64_t>(ceil_div(row - r.row0, rate), 0, r.n);
    };
    return {at(a), at(b)};
  }
  // A wide branch's stored rows [j0, j1) inside the pass [r0, r0 + n), and the view of them in a
  // tensor of the pass's rows (every rate-th row from `first`, the branch's heads).
  struct PassSlice {
    int64_t j0 = 0, j1 = 0, first = 0, rate = 1, head_begin = 0, head_count = 0;
    bool empty() const { return j1 <= j0; }
    TensorView in_pass(const TensorView& x) const {
      return x.heads(head_begin, head_count).rows(first, j1 - j0, rate);
    }
    TensorView stored(const TensorView& x) const { return x.rows(j0, j1 - j0); }
  };
  static PassSlice pass_slice(const OwnRows& r, const DilatedBranch& br, int64_t r0, int64_t n) {
    const auto [j0, j1] = rows_in(r, br.rate, r0, r0 + n);
    return {j0, j1, r.row0 + j0 * br.rate - r0, br.rate, br.head_begin, br.head_count};
  }
  // The local segments of a dividing branch inside shard rows [a, a + n).
  static std::vector<int64_t> segments_in(const std::vector<int64_t>& local,
                                          const DilatedBranch& br, int64_t a, int64_t n) {
    std::vector<int64_t> out;
    for (int64_t m : local)
      if (m * br.segment >= a && (m + 1) * br.segment <= a + n) out.push_back(m);
    return out;
  }

  void forward_stored(Backend& be, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& o, const TensorView& lse) {
    MaskCache& masks = masks_for(be);
    const std::vector<DilatedBranch> branches = dilated_branches(spec_.dilated, q.H);
    std::vector<BranchWork> work(branches.size());
    const int64_t c = q.N, row0_global = comm_.rank() * c, pass = stored_pass_rows(q);
    BufferTypes types{k.dtype, k.dtype, false, DType::F32, lse.dtype, std::nullopt, pass};
    types.stored = true;
    const bool foldable = batch_foldable({q, k, v, o, lse});
    std::vector<DeviceTensor> so(branches.size()), sl(branches.size());
    std::vector<OwnRows> own;
    std::vector<char> small;
    DeviceTensor acc_buf;
    std::byte* workspace = nullptr;
    run_and_agree(comm_, name() + " forward", [&] {
      workspace = prepare_stored(be, masks, branches, q, foldable, types, work, own, small,
                                 [&](size_t i, int64_t b, int64_t n, int64_t h) {
                                   so[i] = DeviceTensor::scratch(be, DType::F32, b, n, h, q.D);
                                   sl[i] = DeviceTensor::scratch(be, lse.dtype, b, n, h, 1);
                                 });
      acc_buf = DeviceTensor::scratch(be, DType::F32, q.B, pass, q.H, q.D);  // backend-only
    });
    // The stored branches' O and L of this rank's rows.
    for (size_t i = 0; i < branches.size(); ++i) {
      const DilatedBranch& br = branches[i];
      if (own[i].n == 0 && !small[i]) continue;
      Carver cv(workspace, be.device());
      carve(cv, br, q, foldable, types, work[i]);
      if (small[i]) {
        const int64_t L = dilated_length(br.segment, br.rate, br.offset);
        for_each_local_call(
            work[i].local, br, q, foldable, pass, row0_global,
            [&](int64_t m0, int64_t cnt, int64_t bb, int64_t nn, int64_t row0) {
              auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, nn, cnt); };
              const int64_t at = small_at(work[i], bb, m0);
              kernel_forward(be, *masks.get(L, L, 0).fwd, f(q), f(k), f(v),
                             so[i].view().batches(at, nn * cnt), sl[i].view().batches(at, nn * cnt),
                             0);
            });
        continue;
      }
      const OwnRows& r = own[i];
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, br.head_count).rows(r.row0, r.n, br.rate);
      };
      if (!r.spanning) {
        kernel_forward(be, *masks.get(r.n, r.n, 0).fwd, mine(q), mine(k), mine(v), so[i].view(),
                       sl[i].view(), 0);
        continue;
      }
      Gather& g = work[i].gathers[0];
      start_gather(be, br, k, v, g, row0_global);
      finish_gather(be, g);
      kernel_forward(be, *masks.get(r.n, g.seg.L, r.q_offset).fwd, mine(q), g.all.first(g.seg.L),
                     g.all.second(g.seg.L), so[i].view(), sl[i].view(), r.q_offset);
    }
    // Row passes, the branches merged in their order.
    for (int64_t r0 = 0; r0 < c; r0 += pass) {
      const int64_t n = std::min(pass, c - r0);
      auto p = [&](const TensorView& x) { return x.rows(r0, n); };
      const TensorView acc = acc_buf.view().rows(0, n), lp = p(lse);
      be.fill(acc, 0.0);
      be.fill(lp, kNegInf);
      const bool fold_ok = batch_foldable({p(q), p(k), p(v), acc, lp});
      for (size_t i = 0; i < branches.size(); ++i) {
        const DilatedBranch& br = branches[i];
        if (!has_rows(work[i])) continue;
        if (wide(br, c)) {
          if (own[i].n == 0) continue;
          const PassSlice ps = pass_slice(own[i], br, r0, n);
          if (ps.empty()) continue;
          be.merge(ps.in_pass(acc), ps.in_pass(lp), ps.stored(so[i].view()),
                   ps.stored(sl[i].view()));
          continue;
        }
        const int64_t L = dilated_length(br.segment, br.rate, br.offset);
        if (small[i]) {
          for_each_local_run(segments_in(work[i].local, br, row0_global + r0, n), br, p(q),
                             [&](int64_t m0, int64_t cnt, int64_t b0, int64_t nb) {
                               const int64_t row0 = m0 * br.segment + br.offset - row0_global - r0;
                               for (int64_t b = b0; b < b0 + nb; ++b) {
                                 auto f = [&](const TensorView& x) {
                                   return fold(x, br, row0, L, b, 1, cnt);
                                 };
                                 const int64_t at = small_at(work[i], b, m0);
                                 be.merge(f(acc), f(lp), so[i].view().batches(at, cnt),
                                          sl[i].view().batches(at, cnt));
                               }
                             });
          continue;
        }
        Carver cv(workspace, be.device());
        carve(cv, br, q, foldable, types, work[i]);
        for_each_local_call(
            segments_in(work[i].local, br, row0_global + r0, n), br, p(q), fold_ok, pass,
            row0_global + r0, [&](int64_t, int64_t cnt, int64_t bb, int64_t nn, int64_t row0) {
              auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, nn, cnt); };
              emit(be, masks.get(L, L, 0), work[i], f(p(q)), f(p(k)), f(p(v)), f(acc), f(lp), 0,
                   false);
            });
      }
      be.copy(p(o), acc);
    }
  }

  void backward_stored(Backend& be, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& o, const TensorView& lse,
                       const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv) {
    MaskCache& masks = masks_for(be);
    const std::vector<DilatedBranch> branches = dilated_branches(spec_.dilated, q.H);
    std::vector<BranchWork> work(branches.size());
    const int64_t c = q.N, row0_global = comm_.rank() * c, pass = stored_pass_rows(q);
    const DilatedConfig& d = spec_.dilated;
    // fp32 key-gradient sums; the branch's own O (and L) unless the exact gradient takes o.
    BufferTypes types{k.dtype, DType::F32, true, std::nullopt, std::nullopt, std::nullopt, pass};
    if (!d.exact_longnet_grad) {
      types.o_tmp = o.dtype;
      types.lse_tmp = DType::F32;
    }
    types.stored = true;
    const bool foldable = batch_foldable({q, k, v, o, lse, d_o, dq, dk, dv});
    std::vector<std::array<DeviceTensor, 3>> stored(branches.size());
    std::vector<OwnRows> own;
    std::vector<char> small;
    DeviceTensor acc[3];
    std::byte* workspace = nullptr;
    run_and_agree(comm_, name() + " backward", [&] {
      workspace = prepare_stored(be, masks, branches, q, foldable, types, work, own, small,
                                 [&](size_t i, int64_t b, int64_t n, int64_t h) {
                                   for (DeviceTensor& t : stored[i])
                                     t = DeviceTensor::scratch(be, DType::F32, b, n, h, q.D);
                                 });
      for (DeviceTensor& t : acc) t = DeviceTensor::scratch(be, DType::F32, q.B, pass, q.H, q.D);
    });
    // The stored branches' dq, dk, dv of this rank's rows (a wide branch's key gradients
    // summed over its members).
    for (size_t i = 0; i < branches.size(); ++i) {
      const DilatedBranch& br = branches[i];
      if (own[i].n == 0 && !small[i]) continue;
      BranchWork& w = work[i];
      Carver cv(workspace, be.device());
      carve(cv, br, q, foldable, types, w);
      if (small[i]) {
        for (DeviceTensor& t : stored[i]) be.fill(t.view(), 0.0);
        const int64_t L = dilated_length(br.segment, br.rate, br.offset);
        for_each_local_call(
            w.local, br, q, foldable, pass, row0_global,
            [&](int64_t m0, int64_t cnt, int64_t bb, int64_t nn, int64_t row0) {
              auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, nn, cnt); };
              const int64_t at = small_at(w, bb, m0);
              auto part = [&](int t) { return stored[i][t].view().batches(at, nn * cnt); };
              MaskCache::Entry& m = masks.get(L, L, 0);
              const TensorView fq = f(q);
              const TensorView ob = branch_output(be, m, w, fq, f(k), f(v), f(o), 0);
              kernel_backward(be, *m.fwd, masks.transposed(m), fq, f(k), f(v), ob, f(lse), f(d_o),
                              part(0), part(1), part(2), 0);
            });
        continue;
      }
      const OwnRows& r = own[i];
      auto mine = [&](const TensorView& x) {
        return x.heads(br.head_begin, br.head_count).rows(r.row0, r.n, br.rate);
      };
      const TensorView sq = stored[i][0].view(), sk = stored[i][1].view(),
                       sv = stored[i][2].view();
      be.fill(sq, 0.0);
      if (!r.spanning) {
        be.fill(sk, 0.0);
        be.fill(sv, 0.0);
        MaskCache::Entry& m = masks.get(r.n, r.n, 0);
        const TensorView ob = branch_output(be, m, w, mine(q), mine(k), mine(v), mine(o), 0);
        kernel_backward(be, *m.fwd, masks.transposed(m), mine(q), mine(k), mine(v), ob, mine(lse),
                        mine(d_o), sq, sk, sv, 0);
        continue;
      }
      Gather& g = w.gathers[0];
      Scatter& sc = w.scatters[0];
      const SegmentRows& s = g.seg;
      start_gather(be, br, k, v, g, row0_global);
      finish_gather(be, g);
      MaskCache::Entry& m = masks.get(r.n, s.L, r.q_offset);
      const TensorView kg = g.all.first(s.L), vg = g.all.second(s.L);
      const TensorView ob = branch_output(be, m, w, mine(q), kg, vg, mine(o), r.q_offset);
      be.fill(sc.grads.first(s.L), 0.0);
      be.fill(sc.grads.second(s.L), 0.0);
      kernel_backward(be, *m.fwd, masks.transposed(m), mine(q), kg, vg, ob, mine(lse), mine(d_o),
                      sq, sc.grads.first(s.L), sc.grads.second(s.L), r.q_offset);
      post_key_grads(be, s, sc);
      const auto [own_k, own_v] = sum_key_grads(be, s, sc);
      be.copy(sk, own_k);
      be.copy(sv, own_v);
    }
    // Row passes, the branches added in their order.
    for (int64_t r0 = 0; r0 < c; r0 += pass) {
      const int64_t n = std::min(pass, c - r0);
      auto p = [&](const TensorView& x) { return x.rows(r0, n); };
      TensorView g[3];
      for (int i = 0; i < 3; ++i) {
        g[i] = acc[i].view().rows(0, n);
        be.fill(g[i], 0.0);
      }
      const bool fold_ok =
          batch_foldable({p(q), p(k), p(v), p(o), p(lse), p(d_o), g[0], g[1], g[2]});
      for (size_t i = 0; i < branches.size(); ++i) {
        const DilatedBranch& br = branches[i];
        if (!has_rows(work[i])) continue;
        if (wide(br, c)) {
          if (own[i].n == 0) continue;
          const PassSlice ps = pass_slice(own[i], br, r0, n);
          if (ps.empty()) continue;
          for (int t = 0; t < 3; ++t)
            be.axpy(ps.in_pass(g[t]), 1.0, ps.stored(stored[i][t].view()));
          continue;
        }
        BranchWork& w = work[i];
        const int64_t L = dilated_length(br.segment, br.rate, br.offset);
        if (small[i]) {
          for_each_local_run(segments_in(w.local, br, row0_global + r0, n), br, p(q),
                             [&](int64_t m0, int64_t cnt, int64_t b0, int64_t nb) {
                               const int64_t row0 = m0 * br.segment + br.offset - row0_global - r0;
                               for (int64_t b = b0; b < b0 + nb; ++b) {
                                 const int64_t at = small_at(w, b, m0);
                                 for (int t = 0; t < 3; ++t)
                                   be.axpy(fold(g[t], br, row0, L, b, 1, cnt), 1.0,
                                           stored[i][t].view().batches(at, cnt));
                               }
                             });
          continue;
        }
        Carver cv(workspace, be.device());
        carve(cv, br, q, foldable, types, w);
        for_each_local_call(
            segments_in(w.local, br, row0_global + r0, n), br, p(q), fold_ok, pass,
            row0_global + r0, [&](int64_t, int64_t cnt, int64_t bb, int64_t nn, int64_t row0) {
              auto f = [&](const TensorView& x) { return fold(x, br, row0, L, bb, nn, cnt); };
              MaskCache::Entry& m = masks.get(L, L, 0);
              const TensorView fq = f(p(q));
              const TensorView ob = branch_output(be, m, w, fq, f(p(k)), f(p(v)), f(p(o)), 0);
              kernel_backward(be, *m.fwd, masks.transposed(m), fq, f(p(k)), f(p(v)), ob,
                              f(p(lse)), f(p(d_o)), f(g[0]), f(g[1]), f(g[2]), 0);
            });
      }
      be.copy(p(dq), g[0]);
      be.copy(p(dk), g[1]);
      be.copy(p(dv), g[2]);
    }
  }

  std::unique_ptr<MaskCache> masks_;
  uint64_t masks_backend_ = 0;
  Arena arena_;  // the workspace, kept across calls (communication uses it)
  std::unique_ptr<AttentionVariant> shard_;  // longnet_on_shard's single-process variant
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
