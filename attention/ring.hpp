// Ring attention over sequence shards, dense and block-sparse, forward and backward: a per-rank
// plan (which origin's K/V is visited at each step, the per-step masks, which rows travel) and
// its executor, written against the Backend and Communicator interfaces only.
//
// Forward: Q stays; the K/V of each origin rank travel to rank+1 (a whole shard as two
// messages, K then V; some rows as one packed message), the exchange for the next step posted
// before the current step is computed (double buffering). Each step's mask is the global mask
// restricted to (local Q rows, visiting K rows), causal in GLOBAL positions through q_offset /
// k_offset; partial results are merged by their LSE, each work over its span (ForwardOrder).
// Backward (dense): every origin's rows are cut into key chunks (the same share of each shard
// piece). K/V and the dK/dV accumulator of one chunk travel together as one message, sent to
// rank+1 as soon as the chunk's step is computed and landing while the next chunk computes; the
// kernel adds straight into the arrived accumulator. An accumulator starts at its origin (the
// origin's own contribution) and after P hops arrives home complete; dQ stays local. With C
// chunks, C+1 chunk buffers are alive at once: (C+1)/C packed K/V and fp32 dK/dV shards.
// Backward (block-sparse): K/V travel as in the forward. Ring route: the dK/dV accumulator of
// an origin's rows follows them one step behind (a step computes into a zeroed partial while
// the incoming accumulator is in flight, then adds), and when no rank further along needs a
// row its accumulator goes straight home. Direct route: each step's partial, over just the
// rows the step needs, goes home. dQ stays local; key rows of this rank that one call alone
// reaches take their dK/dV straight into dk and dv (BackwardSplit). Both use the GLOBAL O and
// LSE of the forward.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/spec.hpp"
#include "comm/communicator.hpp"
#include "kernels/backend.hpp"
#include "runtime/sharding.hpp"

namespace longattn {

// What one call of a distributed variant did on this rank.
struct DistCounters {
  // Ring steps run (1: no rotation); dilated: branches with rows on this rank.
  int64_t steps = 0;
  // K/V messages this rank sent: ring, to its successor (direct route: to the rank at the
  // step's distance; the dense backward sends a step's K/V in one message per key chunk and
  // counts it once); dilated, to the other members of the segments spanning its shard.
  int64_t hops = 0;
  // (query block, key block) pairs of the masks computed here (not multiplied by B or H).
  int64_t blocks_computed = 0;
  int64_t bytes_sent = 0;  // every payload byte this rank sent (K/V, dK/dV, gathers)
  int64_t bytes_received = 0;
  DistCounters& operator+=(const DistCounters& o) {
    steps += o.steps;
    hops += o.hops;
    blocks_computed += o.blocks_computed;
    bytes_sent += o.bytes_sent;
    bytes_received += o.bytes_received;
    return *this;
  }
};

// Rows of an origin rank's shard: local rows [start, start + len).
struct RowRun {
  int64_t start = 0, len = 0;
};
using RowRuns = std::vector<RowRun>;
int64_t total_rows(const RowRuns& runs);

// One kernel call of a step: this rank's query piece q_piece against the visiting origin's key
// piece k_piece, with the global mask restricted to them (never empty).
struct RingWork {
  int q_piece = 0, k_piece = 0;
  BlockMask mask;
};

// How K/V blocks reach the ranks that need them in the block-sparse ring.
// ring: the held buffer is forwarded to rank+1 at each step, carrying every block some rank
//   further along still needs; dK/dV accumulators follow it and go home when nobody further
//   needs the block. Only neighbour links are used.
// direct: at ring distance d, rank r sends rank r+d exactly the blocks it needs and nothing
//   else, distances nobody needs are skipped, and dK/dV partials go straight home. Never more
//   bytes or steps than ring (a local window talks to its two neighbours only); suits
//   all-to-all fabrics (NVSwitch, fat trees).
enum class SparseRoute { Ring, Direct };
const char* sparse_route_name(SparseRoute r);
SparseRoute parse_sparse_route(const std::string& s, const std::string& arg = "sparse_route");

// One step of this rank. Row sets are in the owning rank's local rows.
struct RingStep {
  int origin = 0;              // whose K/V this rank holds during the step
  int distance = 0;            // (rank - origin) mod P
  std::vector<RingWork> work;  // empty: nothing to compute here
  // Dense backward, by key chunk (RingPlan::key_chunks): k_piece indexes the chunk's parts.
  std::vector<std::vector<RingWork>> chunk_work;
  // K/V exchanged after (overlapping) this step for the next step: `send` rows go to
  // send_peer, `recv` rows of the next origin come from recv_peer. ring: the held buffer is
  // forwarded to rank+1; direct: this rank's own rows go to rank + next distance.
  RowRuns send, recv;
  int send_peer = 0, recv_peer = 0;
  bool send_own = false;
  // Backward: `retire` rows of the origin have their dK/dV sent home to the origin after this
  // step; `home` rows of this rank have theirs arriving from home_peer. ring only: dK/dV of
  // the `send` rows travel on to send_peer with the K/V (and arrive for `recv` rows).
  RowRuns retire, home;
  int home_peer = 0;
};

// A share of an origin's rows in the chunked backward: rows [offset, offset + len) of its shard
// piece `piece` (the same for every origin, whose pieces have equal local layouts).
struct ChunkPart {
  int piece = 0;
  int64_t offset = 0, len = 0;
};
// One key chunk: a part of every shard piece, laid out one after another in its buffer.
struct KeyChunk {
  std::vector<ChunkPart> parts;
  int64_t rows = 0;
};

struct RingPlan {
  int rank = 0, world = 1;
  int64_t local_rows = 0;
  std::vector<std::vector<ShardPiece>> pieces;  // of every rank
  std::vector<RingStep> steps;                  // at least one (step 0: own K/V)
  bool travelling_grads = true;                 // ring route: dK/dV accumulators travel
  int64_t global_blocks_needed = 0;             // block-sparse: nnz of the global mask
  // Dense: the key chunks of the chunked backward (empty: the step-wise backward).
  std::vector<KeyChunk> key_chunks;
  // Block-sparse: most query rows of a step-0 backward chunk (BackwardSplit; 0: automatic).
  int64_t split_rows = 0;
};

// The forward's order of writes. The first work on each query piece writes the piece's o and
// lse directly (every row: a row it does not see gets 0 and -inf, the empty merge state); each
// later work on the piece computes only its span (the rows from its mask's first non-empty
// block row to its last) and merges it in. Rows some later span covers are the piece's merged
// rows: widened into an fp32 accumulator right after the first work (fp16/bf16 outputs, so
// the partial results are not rounded again at each merge) and written back at the end.
// Results equal merging every work into an accumulator that starts empty.
struct ForwardOrder {
  struct Work {
    bool first = false;          // writes its piece's o and lse directly
    int64_t row0 = 0, rows = 0;  // the span, rows of the piece (the backward computes only it)
    // The key rows of the piece its mask lists (first to last listed block): later works in
    // the forward and every work in the backward read and write only them.
    int64_t col0 = 0, cols = 0;
    int run = -1;                // later works: index into `runs` of the merged rows holding it
  };
  std::vector<std::vector<Work>> works;  // [step][work]
  // [step]: the order the step's works run in, first works before the others. A piece's first
  // work is its largest (most blocks) of the first step that has work on it.
  std::vector<std::vector<int>> run_order;
  // Merged rows of every piece: piece, rows [start, start + len) of it, and where the run
  // starts in the accumulator (runs one after another).
  struct Run {
    int piece = 0;
    int64_t start = 0, len = 0, acc_row = 0;
  };
  std::vector<Run> runs;
  int64_t acc_rows = 0;                // rows of the accumulator
  std::vector<uint8_t> piece_computed;  // pieces some work writes (the others get 0 and -inf)
};
ForwardOrder make_forward_order(const RingPlan& plan);

// The step-wise backward's calls on this rank's own K/V (step 0). Each step-0 work's span of
// query rows is cut into chunks of at most RingPlan::split_rows rows (0: backward_split_rows,
// attention/spec.hpp),
// equal in blocks; a key row of the shard that one chunk alone reaches (one chunk lists it and
// no other rank sends dK/dV back for it) gets its dK/dV added straight into dk and dv (the
// kernels add each key row once per call, one rounding, as the fp32 accumulator's copy would
// give); the other rows accumulate in fp32 (`merged`) and are copied out at the end. Each
// chunk is cut along its key span into runs of one kind or the other, each call over the query
// rows of the chunk that list its keys; where that would take more than 4 calls for a chunk
// (scattered masks), every chunk is one call into the accumulator.
// dQ (fp16/bf16 outputs): a chunk's calls add into one fp32 scratch of the chunk's rows. Rows
// that no other chunk and no later step reach go from it straight into dq (one rounding); the
// others (`dq_merged`) are added into an fp32 accumulator that holds only them, copied out at
// the end. So the backward holds fp32 dQ for one chunk and the shared rows, not for the shard.
struct BackwardSplit {
  struct Call {
    int64_t row0 = 0, rows = 0;  // query rows of the piece
    int64_t col0 = 0, cols = 0;  // key rows of the piece
    bool direct = false;         // into dk/dv, else into the fp32 accumulator
    int chunk = 0;               // index into chunks[work]; a work's calls go chunk by chunk
  };
  struct Chunk {
    int64_t row0 = 0, rows = 0;  // query rows of the piece
  };
  std::vector<std::vector<Call>> step0;    // [step-0 work]
  std::vector<std::vector<Chunk>> chunks;  // [step-0 work]
  RowRuns merged;                          // this rank's key rows accumulated in fp32
  RowRuns dq_merged;     // this rank's query rows whose dQ accumulates in fp32
  RowRuns dq_unreached;  // query rows no call reaches (their dQ is 0)
  int64_t chunk_rows = 0;  // rows of the largest chunk
};
BackwardSplit make_backward_split(const RingPlan& plan);
// Rows [b0, b1) of a block mask and the listed blocks among key blocks [c0, c1), shifted to
// start at c0 (blocks outside are dropped).
BlockMask mask_select(const BlockMask& m, int64_t b0, int64_t b1, int64_t c0, int64_t c1);
// Rows [b0, b1) and key blocks [c0, c1) of a block mask (every listed block of those rows must
// lie in [c0, c1)), as a mask of its own; c1 < 0: every key block.
BlockMask mask_slice(const BlockMask& m, int64_t b0, int64_t b1, int64_t c0 = 0,
                     int64_t c1 = -1);

// Key chunks per origin in the dense backward. C chunks keep (C+1)/C packed K/V shards and as
// many fp32 dK/dV shards alive; more chunks hold less but make more, smaller kernel calls and
// messages. The automatic count is kRingBackwardChunks, raised up to kRingBackwardMaxChunks
// while every part of a shard piece keeps at least kRingChunkMinRows rows: long shards, where
// the memory decides the longest sequence, hold less and their kernel calls stay large.
constexpr int kRingBackwardChunks = 2;
constexpr int kRingBackwardMaxChunks = 4;
constexpr int64_t kRingChunkMinRows = 32768;
int ring_backward_chunks(int64_t shortest_piece_rows);

// Dense ring: every origin visits every rank (P steps, P-1 hops), masks all-blocks with causal
// trimming in global positions (block = kernel tile). The backward cuts each shard piece into
// `backward_chunks` parts (0: ring_backward_chunks) at multiples of `block` (fewer when a piece
// has fewer blocks).
RingPlan make_dense_ring_plan(const ShardLayout& layout, int rank, int64_t block, bool causal,
                              int backward_chunks = 0);

// Block-sparse ring from the GLOBAL block mask (block_q == block_k == block size, which must
// divide every shard piece): only blocks some rank needs are sent (route: see SparseRoute),
// steps run only while some rank still needs a visiting block, and a step with no block for
// this rank computes nothing. Every rank derives the same plan from the same mask.
RingPlan make_sparse_ring_plan(const ShardLayout& layout, int rank, const BlockMask& global,
                               SparseRoute route = SparseRoute::Direct);

// Runs a plan. Views are this rank's shards [B, N/P, H, D] on the backend; lse is [B, N/P, H, 1]
// fp32 (fp64 on the CPU). spec.scale and spec.causal are used. The communicator must move the
// backend's memory (buffer_device() == be.device()). Counters are added to `counters`.
// Every buffer of a call is carved from one workspace allocation kept across calls (grown when
// a call needs more; the forward's and the backward's buffers share it), and the device masks
// are prepared once (identical masks once), so the step loop allocates, frees and waits for
// nothing but the exchanges (on a GPU: no host synchronisation inside the ring). They are taken
// before the first exchange of a call, and the ranks then agree that every rank got them: when
// one rank runs out of memory, every rank throws the same OutOfMemory naming it (no rank is
// left waiting in an exchange), and the object stays usable for a later call.
// Workspace of a dense ring in local [B, N/P, H, D] tensors of the input dtype (fp16/bf16,
// fp32 accumulators counting 2), plus the row statistics: forward at most 7 (visitors' K/V 4,
// or 2 with one visitor; this rank's own K/V is read where it lies unless k or v is strided;
// fp32 accumulator 2 over the rows that later steps merge into, partial output 1 or 1/2);
// backward 2 + 6 (C+1)/C (fp32 dQ, C+1 chunk buffers of K/V and fp32 dK/dV): 11 with 2 key
// chunks, 9.5 with 4. A block-sparse ring holds only the rows its steps need (local window:
// forward under 1; backward about 2.2, fp32 dQ 2 of them, or about 1 when the step-0 backward
// runs in chunks, BackwardSplit).
class RingAttention {
 public:
  RingAttention(RingPlan plan, const AttentionSpec& spec);
  ~RingAttention();
  const RingPlan& plan() const { return plan_; }
  // Bytes of the workspace held between calls (0 before the first call or after a release).
  size_t workspace_bytes() const;
  // Frees the workspace and the device masks; the next call takes them again.
  void release_workspace();
  // o and lse are overwritten with this rank's rows of the global result.
  void forward(Backend& be, Communicator& comm, const TensorView& q, const TensorView& k,
               const TensorView& v, const TensorView& o, const TensorView& lse,
               DistCounters& counters);
  // o, lse: this rank's rows of the GLOBAL forward result. dq, dk, dv are overwritten.
  void backward(Backend& be, Communicator& comm, const TensorView& q, const TensorView& k,
                const TensorView& v, const TensorView& o, const TensorView& lse,
                const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                const TensorView& dv, DistCounters& counters);

 private:
  struct Masks;
  struct Workspace;
  Masks& masks(Backend& be);
  Workspace& workspace();
  void backward_chunked(Backend& be, Communicator& comm, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& o, const TensorView& lse,
                        const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv, DistCounters& counters);
  void backward_stepwise(Backend& be, Communicator& comm, const TensorView& q, const TensorView& k,
                         const TensorView& v, const TensorView& o, const TensorView& lse,
                         const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, DistCounters& counters);
  std::string op_name(const char* pass) const;  // "ring forward", "block-sparse ring backward"
  // The pass's masks (prepared by `prepare`) and `bytes` of workspace, taken before the first
  // exchange and agreed on by every rank: one rank out of memory stops them all at once.
  struct Taken {
    Masks* masks = nullptr;
    std::byte* base = nullptr;
  };
  Taken take_agreed(Backend& be, Communicator& comm, const char* pass,
                    const std::function<void(Masks&)>& prepare, size_t bytes);
  struct Profile;  // LONGATTN_RING_PROFILE (ring.cpp)
  std::unique_ptr<Profile> profile_;
  RingPlan plan_;
  AttentionSpec spec_;
  ForwardOrder fwd_order_;
  BackwardSplit bwd_split_;
  // Direct route: visitors' K/V and the dK/dV partials sent home hold only the rows their step
  // needs (every work's key rows inside one run of them), one run after another; the backward's
  // fp32 accumulator of this rank's dK/dV holds only BackwardSplit::merged rows. Else whole
  // shards.
  bool compact_ = false, compact_home_ = false;
  std::unique_ptr<Masks> masks_;
  std::unique_ptr<Workspace> workspace_;
};

}  // namespace longattn
