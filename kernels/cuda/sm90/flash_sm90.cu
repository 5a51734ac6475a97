// Host side of the Hopper kernels: which calls they take, the TMA tensor maps of the strided
// [B, N, H, D] views (encoded through the driver entry point, no libcuda link), and the dispatch
// on dtype and head dim to the per-file instantiations.
#include "kernels/cuda/sm90/flash_sm90.hpp"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "kernels/contract.hpp"
#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"
#include "runtime/error.hpp"

namespace longattn::cuda::sm90 {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || p == nullptr)
      throw Error("cuTensorMapEncodeTiled is not available from the driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// [B, rows, H, D] view as a 4-D tensor map (D innermost), boxes of (128 bytes) x box_rows with
// the 128-byte swizzle: 64 elements of a 16-bit type, 32 of fp32. A dimension of extent 1 may
// carry any stride; TMA wants multiples of 16 bytes.
CUtensorMap make_map(const flash::DevView& v, int B, int rows, int H, int D,
                     CUtensorMapDataType type, int box_rows, const char* name) {
  const int64_t es = type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4 : 2;
  const int64_t row_bytes = v.sn * es;
  auto stride = [&](int64_t s, int extent) {
    return static_cast<cuuint64_t>(extent <= 1 ? (row_bytes > 0 ? row_bytes : 16) : s * es);
  };
  cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(rows),
                        static_cast<cuuint64_t>(H), static_cast<cuuint64_t>(B)};
  cuuint64_t strides[3] = {stride(v.sn, rows), stride(v.sh, H), stride(v.sb, B)};
  for (auto& s : strides)
    if (s % 16 != 0 || s == 0) s = 16 * ((s + 15) / 16 > 0 ? (s + 15) / 16 : 1);
  cuuint32_t box[4] = {static_cast<cuuint32_t>(128 / es), static_cast<cuuint32_t>(box_rows), 1,
                       1};
  cuuint32_t elem[4] = {1, 1, 1, 1};
  CUtensorMap m;
  std::memset(&m, 0, sizeof(m));
  const CUresult r = encode_fn()(
      &m, type, 4, v.data,
      dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error(std::string("cuTensorMapEncodeTiled failed for ") + name + " (error " +
                    std::to_string(static_cast<int>(r)) + ")");
  return m;
}

// Read once per process (every call asks).
bool portable_requested() {
  static const bool portable = [] {
    const char* e = std::getenv("LONGATTN_FLASH_KERNELS");
    return e != nullptr && std::string(e) == "portable";
  }();
  return portable;
}

}  // namespace

// Instantiated in kernels/cuda/sm90/flash_fwd_sm90_<dtype>_d<D>.cu, not here.
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 64>(const FwdArgs&, cudaStream_t,
                                                             cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128>(const FwdArgs&, cudaStream_t,
                                                              cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 64>(const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128>(const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 64, 3>(const FwdArgs&, cudaStream_t,
                                                                cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 64, 3>(const FwdArgs&, cudaStream_t,
                                                         cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 64, 3, 128, false, false, true>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 64, 3, 128, false, false, true>(const FwdArgs&,
                                                                                 cudaStream_t,
                                                                                 cudaMemPool_t);
// Narrow first tiles: kernels/cuda/sm90/flash_fwd_sm90_<dtype>_d128_narrow<keys>.cu.
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, false, false, false, 64>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, false, false, false, 128>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192, false, false, false, 64>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192, false, false, false, 128>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192>(const FwdArgs&,
                                                                      cudaStream_t,
                                                                      cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192>(const FwdArgs&, cudaStream_t,
                                                               cudaMemPool_t);
// Over masks of runs: kernels/cuda/sm90/flash_fwd_sm90_<dtype>_d<D>_runs.cu (with narrow first
// tiles: ..._d128_runs_narrow<keys>.cu).
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true, false, false, 64>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true, false, false, 128>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192, true, false, false, 64>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192, true, false, false, 128>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 64, 3, 128, true>(const FwdArgs&,
                                                                           cudaStream_t,
                                                                           cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 64, 3, 128, true>(const FwdArgs&, cudaStream_t,
                                                                    cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true>(const FwdArgs&,
                                                                            cudaStream_t,
                                                                            cudaMemPool_t);
extern template void launch_fwd_sm90_impl<__half, 128, 2, 192, true>(const FwdArgs&,
                                                                     cudaStream_t,
                                                                     cudaMemPool_t);
// Writing dk and dv: kernels/cuda/sm90/flash_bwd_sm90_<dtype>_d<D>_m<M>_write.cu.
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 128, false, 80, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80, true, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 128, false, 80, true, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 64, false, 128, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 64>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 128>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 64>(const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 128>(const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 64, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 64, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 128, false, 80>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 64, false, 128>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128, false>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
extern template void launch_bwd_sm90_impl<__half, 64, false, 128, false>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);

static CUtensorMapDataType half_type(bool bf16) {
  return bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// An fp32 [B, N, H, D] view TMA can address: 16-byte aligned base, strides of dimensions with
// more than one index multiples of 16 bytes.
static bool f32_view_fits_tma(const flash::DevView& v, int B, int N, int H) {
  auto ok = [](int64_t stride, int extent) { return extent <= 1 || (stride * 4) % 16 == 0; };
  return reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && ok(v.sn, N) && ok(v.sh, H) &&
         ok(v.sb, B);
}

FwdMaps make_fwd_maps(const FwdArgs& a, int D, bool bf16, int box_q, int box_kv) {
  FwdMaps m;
  m.q = make_map(a.q, a.B, a.Nq, a.H, D, half_type(bf16), box_q, "q");
  m.k = make_map(a.k, a.B, a.Nk, a.H, D, half_type(bf16), box_kv, "k");
  m.v = make_map(a.v, a.B, a.Nk, a.H, D, half_type(bf16), box_kv, "v");
  return m;
}

// Scheduler counters: a ring of zeroed pairs per device, one pair per launch; the kernel's last
// CTA zeroes its pair again. The ring is long enough that a pair comes back only after its
// launch has finished (the launch queue holds far fewer kernels).
namespace {
constexpr int kCounterPairs = 16384;
std::atomic<int> g_grid_limit{0}, g_group{0}, g_last_split{0}, g_last_short{0}, g_last_narrow{0};
struct DeviceSched {
  int* pairs = nullptr;
  int sms = 0;
  int64_t l2_bytes = 0;
  std::atomic<uint32_t> next{0};
};
DeviceSched& device_sched() {
  static std::mutex mu;
  static DeviceSched per_device[64];
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) throw Error("device index out of range for the Hopper scheduler");
  DeviceSched& d = per_device[dev];
  std::lock_guard<std::mutex> lock(mu);
  if (d.pairs == nullptr) {
    int* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(int) * 2 * kCounterPairs));
    CUDA_CHECK(cudaMemset(p, 0, sizeof(int) * 2 * kCounterPairs));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    int l2 = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    d.l2_bytes = l2;
    d.pairs = p;
    // Measurement switch: persistent launches of at most this many CTAs (SMs left to others,
    // such as the communication kernels of a ring).
    if (const char* e = std::getenv("LONGATTN_SM90_GRID_LIMIT")) g_grid_limit.store(std::atoi(e));
  }
  return d;
}
// Measurement switches, on unless the variable is "0"; read once per process (each call asks).
bool switch_on(const char* name) {
  const char* e = std::getenv(name);
  return e == nullptr || std::string(e) != "0";
}
bool dq_tma_enabled() {
  static const bool on = switch_on("LONGATTN_SM90_DQ_TMA");
  return on;
}
bool persistent_enabled() {
  static const bool on = switch_on("LONGATTN_SM90_PERSISTENT");
  return on;
}
bool pingpong_enabled() {
  static const bool on = switch_on("LONGATTN_SM90_PINGPONG");
  return on;
}

// A launch's counter pair from the ring, and its grid over n_items items: one CTA per SM when
// persistent (the set_grid_limit limit where set), else one per item.
int* take_counter(DeviceSched& d) { return d.pairs + 2 * (d.next.fetch_add(1) % kCounterPairs); }
// CTAs of a persistent launch: one per SM, or the set_grid_limit limit where set.
int persistent_ctas(const DeviceSched& d) {
  const int limit = g_grid_limit.load();
  return limit > 0 && limit < d.sms ? limit : d.sms;
}
int grid_for(const DeviceSched& d, int n_items, bool persistent) {
  const int limit = g_grid_limit.load();
  const bool capped = limit > 0 && limit < d.sms;
  const int ctas = persistent || capped ? persistent_ctas(d) : n_items;
  return n_items < ctas ? n_items : ctas;
}
}  // namespace

FwdSchedule make_fwd_schedule(int n_qtiles, int n_pairs, int64_t kv_bytes_per_pair, bool causal,
                              int& grid) {
  DeviceSched& d = device_sched();
  FwdSchedule s;
  s.counter = take_counter(d);
  s.n_qtiles = n_qtiles;
  // Under causality half of L2 for the K/V of the heads walked together (at least one head), in
  // groups of equal size; without it head by head (forward_head_group).
  const int64_t per_l2 = kv_bytes_per_pair > 0 ? (d.l2_bytes / 2) / kv_bytes_per_pair : n_pairs;
  s.group = static_cast<int>(forward_head_group(n_pairs, per_l2, causal));
  if (g_group.load() > 0) s.group = g_group.load() < n_pairs ? g_group.load() : n_pairs;
  if (const char* e = std::getenv("LONGATTN_SM90_FWD_GROUP")) {  // measurement switch
    const int g = std::atoi(e);
    if (g > 0) s.group = g < n_pairs ? g : n_pairs;
  }
  s.flags = pingpong_enabled() ? kFwdPingPong : 0;
  s.n_items = n_qtiles * n_pairs;
  g_last_split.store(0);
  g_last_short.store(0);
  g_last_narrow.store(0);
  grid = grid_for(d, s.n_items, persistent_enabled());
  return s;
}

int last_fwd_split_pieces() { return g_last_split.load(); }

int64_t plan_fwd_tail_split(FwdSchedule& s, int& grid, int key_tiles, int key_tile) {
  // (Read on each call: the tests compare a call with and without.)
  if (!switch_on("LONGATTN_SM90_FWD_TAIL") || !persistent_enabled()) return 0;
  const DeviceSched& d = device_sched();
  const ForwardTailSplit t = forward_tail_split(s.n_items, persistent_ctas(d), key_tiles, key_tile);
  if (t.pieces < 2) return 0;
  s.split_first = static_cast<int>(t.first);
  s.split_items = static_cast<int>(t.items);
  s.split_pieces = static_cast<int>(t.pieces);
  s.split_keys = static_cast<int>(t.tiles_per_piece) * key_tile;
  s.n_items = static_cast<int>(t.first + t.items * t.pieces);
  grid = grid_for(d, s.n_items, true);
  g_last_split.store(static_cast<int>(t.items * t.pieces));
  return t.items * t.pieces;
}

// The short items of a three-warpgroup launch over nq rows a pair (whole: its 192-row items a
// pair): shorts 0 where the one-height cut (its rounds, or its last round split along the keys)
// is kept.
ForwardShortItems fwd_short_plan(int64_t whole, int64_t nq, int64_t n_pairs, int64_t key_tiles,
                                 int64_t key_tile) {
  ForwardShortItems p;
  p.tall = whole;
  if (!switch_on("LONGATTN_SM90_FWD_SHORT") || !persistent_enabled()) return p;
  const int ctas = persistent_ctas(device_sched());
  if (const char* e = std::getenv("LONGATTN_SM90_FWD_SHORT_TALL")) {  // measurements, tests
    p.tall = std::clamp<int64_t>(std::atoll(e), 0, whole);
    p.shorts = p.tall < whole ? (nq - p.tall * 192 + 127) / 128 : 0;
    return p;
  }
  const int64_t items = whole * n_pairs;
  double baseline = static_cast<double>((items + ctas - 1) / ctas);
  if (switch_on("LONGATTN_SM90_FWD_TAIL")) {
    const ForwardTailSplit t = forward_tail_split(items, ctas, key_tiles, key_tile);
    if (t.pieces >= 2) baseline = static_cast<double>(items / ctas) + t.tail_cost;
  }
  return forward_short_items(nq, n_pairs, ctas, baseline);
}

bool fwd_short_items_wanted(const FwdArgs& a) {
  if (a.complete == 0 || a.causal != 0 || a.runs != 0 || a.Nq <= 0 || a.H * a.B <= 0) return false;
  return fwd_short_plan((a.Nq + 191) / 192, a.Nq, int64_t{a.H} * a.B, (a.Nk + 127) / 128, 128)
             .shorts > 0;
}

bool plan_fwd_short_items(FwdSchedule& s, int& grid, int nq, int n_pairs, int key_tiles,
                          int key_tile) {
  g_last_short.store(0);
  if (s.n_short != 0 || s.split_pieces != 0) return false;
  const ForwardShortItems p = fwd_short_plan(s.n_qtiles, nq, n_pairs, key_tiles, key_tile);
  if (p.shorts <= 0) return false;
  s.n_qtiles = static_cast<int>(p.tall);
  s.n_short = static_cast<int>(p.shorts);
  s.n_items = static_cast<int>((p.tall + p.shorts) * n_pairs);
  grid = grid_for(device_sched(), s.n_items, true);
  g_last_short.store(s.n_short);
  return true;
}

int last_fwd_short_items() { return g_last_short.load(); }

void note_fwd_narrow_keys(int keys) { g_last_narrow.store(keys); }
int last_fwd_narrow_keys() { return g_last_narrow.load(); }

std::atomic<int> g_last_bwd_tail{0};

int64_t plan_bwd_tail_split(flash::BwdArgs& a, int64_t works, int tiles_per_work) {
  a.tail_first = 0;
  a.tail_parts = 0;
  a.tail_spans = 0;
  a.piece_scratch = nullptr;  // (plan_bwd_pieces sets them)
  a.piece_counts = nullptr;
  a.piece_max = 0;
  g_last_bwd_tail.store(0);
  static const bool persistent = switch_on("LONGATTN_SM90_BWD_PERSISTENT");
  // The parts add dK and dV by TMA reduces: none where LONGATTN_SM90_DKV_TMA=0 turns those off.
  if (!switch_on("LONGATTN_SM90_BWD_TAIL") || !switch_on("LONGATTN_SM90_DKV_TMA") || !persistent)
    return works;
  const DeviceSched& d = device_sched();
  const BackwardTailSplit t = backward_tail_split(works, persistent_ctas(d), tiles_per_work, 32,
                                                  switch_on("LONGATTN_SM90_BWD_SPANS"));
  if (t.parts < 2 && t.spans == 0) return works;
  a.tail_first = static_cast<int>(t.first);
  a.tail_parts = static_cast<int>(t.parts);
  a.tail_spans = static_cast<int>(t.spans);
  g_last_bwd_tail.store(static_cast<int>(t.launch_items()));
  return t.first + t.launch_items();
}

void* plan_bwd_pieces(flash::BwdArgs& a, int64_t& works, int tiles_per_work, int head_dim,
                      cudaMemPool_t pool, cudaStream_t stream) {
  if (a.tail_parts == 0 && a.tail_spans == 0) return nullptr;
  const int64_t whole_works = int64_t{(a.Nk + kBwdKeysPerCta - 1) / kBwdKeysPerCta} * a.H * a.B;
  BackwardTailSplit t;
  t.first = a.tail_first;
  t.items = whole_works - a.tail_first;
  t.parts = a.tail_parts;
  t.spans = a.tail_spans;
  const int64_t most = backward_split_max_pieces(t, tiles_per_work);
  // Per split work `most` slots of both consumer warpgroups' sums (128 threads, head_dim floats
  // each), then its counter.
  const size_t scratch_bytes =
      static_cast<size_t>(t.items) * most * 2 * kBwdKeysPerCta * head_dim * sizeof(float);
  const size_t bytes = scratch_bytes + static_cast<size_t>(t.items) * sizeof(int);
  void* mem = nullptr;
  const cudaError_t e = pool ? cudaMallocFromPoolAsync(&mem, bytes, pool, stream)
                             : cudaMallocAsync(&mem, bytes, stream);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    mem = nullptr;
  }
  if (mem == nullptr || most <= 0 || most >= 65536) {  // no scratch: the works stay whole
    if (mem != nullptr) CUDA_CHECK(cudaFreeAsync(mem, stream));
    works = whole_works;
    plan_bwd_tail_split(a, 0, 0);
    return nullptr;
  }
  a.piece_scratch = static_cast<float*>(mem);
  a.piece_counts = reinterpret_cast<int*>(static_cast<unsigned char*>(mem) + scratch_bytes);
  a.piece_max = static_cast<int>(most);
  CUDA_CHECK(cudaMemsetAsync(a.piece_counts, 0, static_cast<size_t>(t.items) * sizeof(int),
                             stream));
  return mem;
}

int last_bwd_tail_parts() { return g_last_bwd_tail.load(); }

std::atomic<bool> g_last_bwd_dkv_store{false};
void note_bwd_dkv_store(bool stored) { g_last_bwd_dkv_store.store(stored); }
bool last_bwd_dkv_store() { return g_last_bwd_dkv_store.load(); }

int* make_bwd_schedule(int n_works, int& grid) {
  DeviceSched& d = device_sched();
  static const bool persistent = switch_on("LONGATTN_SM90_BWD_PERSISTENT");
  grid = grid_for(d, n_works, persistent);
  return take_counter(d);
}

void set_grid_limit(int ctas, int group) {
  g_grid_limit.store(ctas > 0 ? ctas : 0);
  g_group.store(group > 0 ? group : 0);
}

void write_trace(const char* name, const char* header, const long long* v, int n0, int n1,
                 int events) {
  FILE* f = std::fopen(name, "w");
  if (f == nullptr) return;
  std::fprintf(f, "%s\n", header);
  for (int i = 0; i < n0; ++i)
    for (int j = 0; j < n1; ++j) {
      std::fprintf(f, "%d %d", i, j);
      for (int e = 0; e < events; ++e)
        std::fprintf(f, " %lld", v[(static_cast<int64_t>(i) * n1 + j) * events + e]);
      std::fprintf(f, "\n");
    }
  std::fclose(f);
}

bool o_vec_enabled() { return switch_on("LONGATTN_SM90_O_VEC"); }
bool bwd_pieces_enabled() { return switch_on("LONGATTN_SM90_BWD_PIECES"); }
bool dkv_vec_enabled() { return switch_on("LONGATTN_SM90_DKV_VEC"); }
bool pdl_enabled() { return switch_on("LONGATTN_SM90_PDL"); }
// The head-dim-128 forward's narrow first tile for this call (the kNarrowKeys instantiations):
// Nk % 192 (64 or 128) for non-causal calls over complete masks of more than 192 keys whose
// launch has no tail split, else 0.
// LONGATTN_SM90_FWD_NARROW=0 turns it off (read on each call).
int fwd_narrow_keys(const FwdArgs& a) {
  if (a.complete == 0 || a.causal != 0 || a.runs != 0 || a.Nk <= 192) return 0;
  const int r = a.Nk % 192;
  if (r != 64 && r != 128) return 0;
  if (!switch_on("LONGATTN_SM90_FWD_NARROW")) return 0;
  // Not where the launch's last round would be split along the keys (plan_fwd_tail_split):
  // the narrow instantiation's items are all alike.
  const int64_t items = int64_t{(a.Nq + 127) / 128} * a.H * a.B;
  return static_cast<int>(forward_narrow_keys(
      a.Nk, items, persistent_ctas(device_sched()),
      switch_on("LONGATTN_SM90_FWD_TAIL") && persistent_enabled(), 192));
}

int bwd_rotate(const BwdArgs& a, int head_dim, double row_fill) {
  if (const char* e = std::getenv("LONGATTN_SM90_BWD_ROTATE")) {
    if (std::string(e) == "0") return 0;
    if (std::string(e) == "1") return 1;
    if (std::string(e) == "2") return 2;
  }
  return backward_phased_walks(head_dim, a.causal != 0, row_fill) ? 2 : 0;
}

int bwd_dkv_reduce(int head_dim, double tiles_per_key_block, double row_fill) {
  if (const char* e = std::getenv("LONGATTN_SM90_DKV_TMA")) {
    if (std::string(e) == "0") return 0;
    if (std::string(e) == "1") return 1;
  }
  return backward_dkv_reduce(head_dim, tiles_per_key_block, row_fill) ? 1 : 0;
}

int bwd_query_splits(const BwdArgs& a, int head_dim, double tiles_per_key_block,
                     double row_fill) {
  if (const char* e = std::getenv("LONGATTN_SM90_QSPLIT")) {
    const int n = std::atoi(e);
    if (n >= 1) return n < 16 ? n : 16;
  }
  return backward_query_parts(a.Nq, head_dim, tiles_per_key_block, row_fill,
                              device_sched().l2_bytes, a.rotate == 2);
}

int bwd_work_group(const flash::BwdArgs& a, int head_dim) {
  if (a.q_splits != 1) return 0;  // (the parts' dk/dv flags index the works head by head)
  if (const char* e = std::getenv("LONGATTN_SM90_BWD_GROUP")) {  // measurement switch
    const int g = std::atoi(e);
    if (g >= 0) return g < a.H * a.B ? g : a.H * a.B;
  }
  return static_cast<int>(backward_work_group(int64_t{a.H} * a.B, a.Nq, head_dim, a.causal != 0,
                                              device_sched().l2_bytes));
}

BwdMaps make_bwd_maps(const BwdArgs& a, int D, bool bf16, int box_q, int box_kv, int box_dq) {
  BwdMaps m;
  m.q = make_map(a.q, a.B, a.Nq, a.H, D, half_type(bf16), box_q, "q");
  m.d_o = make_map(a.d_o, a.B, a.Nq, a.H, D, half_type(bf16), box_q, "d_o");
  m.k = make_map(a.k, a.B, a.Nk, a.H, D, half_type(bf16), box_kv, "k");
  m.v = make_map(a.v, a.B, a.Nk, a.H, D, half_type(bf16), box_kv, "v");
  // dq by TMA reduce (boxes of 32 fp32 columns x box_dq rows) where its layout allows, else the
  // kernel's red.global path; LONGATTN_SM90_DQ_TMA=0 forces the latter.
  m.dq_tma = a.dq_type == flash::kOutF32 && dq_tma_enabled() &&
             f32_view_fits_tma(a.dq, a.B, a.Nq, a.H);
  if (a.dq_t != nullptr) {
    // (The transposed accumulator takes a bulk reduce of each warpgroup's half of a tile: no
    // map.)
    std::memset(&m.dq, 0, sizeof(m.dq));
    m.dq_tma = false;
  } else if (m.dq_tma) {
    m.dq = make_map(a.dq, a.B, a.Nq, a.H, D, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, box_dq, "dq");
  } else {
    std::memset(&m.dq, 0, sizeof(m.dq));
  }
  // dk and dv by TMA reduce (boxes of 32 fp32 columns x 64 keys, a consumer warpgroup's rows)
  // where the call takes them (a.dkv_reduce) and both are fp32 and TMA-able; the parts of a
  // query range then add in any order, as dq's tiles do.
  m.dkv_tma = a.dkv_reduce != 0 && a.dk_type == flash::kOutF32 &&
              a.dv_type == flash::kOutF32 &&
              f32_view_fits_tma(a.dk, a.B, a.Nk, a.H) && f32_view_fits_tma(a.dv, a.B, a.Nk, a.H);
  // Written dk and dv of the input dtype with 16-byte aligned bases and strides: by TMA stores
  // from the head-dim-128 writing kernel (the launch keeps it to that kernel);
  // LONGATTN_SM90_DKV_STORE=0 writes them from registers.
  m.dkv_store = !m.dkv_tma && a.dkv_write != 0 && D == 128 && a.dk_type == flash::kOutSame &&
                a.dv_type == flash::kOutSame && a.dkv_vec != 0 &&
                switch_on("LONGATTN_SM90_DKV_STORE");
  if (m.dkv_tma) {
    m.dk = make_map(a.dk, a.B, a.Nk, a.H, D, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 64, "dk");
    m.dv = make_map(a.dv, a.B, a.Nk, a.H, D, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 64, "dv");
  } else if (m.dkv_store) {
    m.dk = make_map(a.dk, a.B, a.Nk, a.H, D, half_type(bf16), 64, "dk");
    m.dv = make_map(a.dv, a.B, a.Nk, a.H, D, half_type(bf16), 64, "dv");
  } else {
    std::memset(&m.dk, 0, sizeof(m.dk));
    std::memset(&m.dv, 0, sizeof(m.dv));
  }
  return m;
}

bool device_enabled() {
  if (portable_requested()) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::mutex mu;
  static int cached[64];
  static bool known[64] = {};
  if (dev < 0 || dev >= 64) return false;
  std::lock_guard<std::mutex> lock(mu);
  if (!known[dev]) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cached[dev] = major * 10 + minor;
    known[dev] = true;
  }
  return cached[dev] == 90;
}

// What both directions need: fp16/bf16, head dim 64 or 128, 16-byte aligned bases and strides
// (what TMA needs), an sm_90 device.
static bool kernels_fit(DType dtype, int head_dim, bool vec) {
  return (dtype == DType::BF16 || dtype == DType::F16) && (head_dim == 64 || head_dim == 128) &&
         vec && device_enabled();
}

bool fwd_accepts(const FwdArgs& a, DType dtype, int head_dim) {
  return a.mask.block_q % 128 == 0 && a.mask.block_k % 128 == 0 &&
         kernels_fit(dtype, head_dim, a.vec != 0);
}

int fwd_runs(int head_dim, const BlockMaskView& mask) {
  if (const char* e = std::getenv("LONGATTN_SM90_FWD_RUNS")) {
    if (std::string(e) == "0") return 0;
    if (std::string(e) == "1")  // whatever the rows' length
      return forward_wide_runs(head_dim, mask.contiguous_rows,
                               std::numeric_limits<double>::infinity())
                 ? 1
                 : 0;
  }
  return forward_wide_runs(head_dim, mask.contiguous_rows, mask.mean_row_keys) ? 1 : 0;
}

int fwd_runs_narrow(const FwdArgs& a, int head_dim, const BlockMaskView& mask) {
  if (const char* e = std::getenv("LONGATTN_SM90_FWD_RUNS_NARROW")) {
    const std::string s(e);
    if (s == "0") return 0;
    if (s == "64" || s == "128") {
      const int keys = std::stoi(s);
      // (Whatever the residues; the rule's other conditions.)
      return forward_runs_narrow_fits(head_dim, a.causal != 0, a.Nk, mask, keys) ? keys : 0;
    }
  }
  return static_cast<int>(forward_runs_narrow_keys(head_dim, a.causal != 0, a.Nk, mask));
}

bool fwd_wide(const FwdArgs& a, int head_dim) {
  // Head dim 64: 192-row tiles; head dim 128: 192-key tiles, causal or not (FlashAttention-3
  // has 176 without causality and 128 with it; here 176 measured 5-7% faster than 128 under
  // causality too, A/B run 9, and 192 -0.3 to +4.6% against 176, run 78). Both for
  // complete masks and masks whose rows are runs walked by position (a.runs; a 192-row tile
  // walks the union of the runs of the two mask rows it may span, each warpgroup masking the
  // keys outside its own).
  const bool fits = (head_dim == 64 || head_dim == 128) && (a.complete != 0 || a.runs != 0);
  if (!fits) return false;
  const char* e = std::getenv("LONGATTN_SM90_FWD_WIDE");
  return e == nullptr || std::string(e) != "0";
}

int fwd_gather(const FwdArgs& a, int head_dim, const BlockMaskView& mask) {
  double keys = mask.mean_row_keys;
  if (const char* e = std::getenv("LONGATTN_SM90_FWD_GATHER")) {
    if (std::string(e) == "0") return 0;
    if (std::string(e) == "1") keys = std::numeric_limits<double>::infinity();
  }
  return forward_gathered_tiles(head_dim, a.causal != 0, a.complete != 0, a.runs != 0, a.Nk, keys)
             ? 1
             : 0;
}

void flash_forward(const FwdArgs& a, DType dtype, int head_dim, cudaStream_t stream,
                   cudaMemPool_t pool) {
  const bool bf16 = dtype == DType::BF16;
  if (a.gather != 0 && head_dim == 128) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, false, true>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 128, 2, 192, false, true>(a, stream, pool);
  }
  const bool wide = fwd_wide(a, head_dim);
  if (wide && a.runs != 0 && head_dim == 64) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 64, 3, 128, true>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 64, 3, 128, true>(a, stream, pool);
  }
  if (wide && a.runs != 0 && head_dim == 128 && a.runs_narrow == 64) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true, false, false, 64>(
                      a, stream, pool)
                : launch_fwd_sm90_impl<__half, 128, 2, 192, true, false, false, 64>(a, stream,
                                                                                   pool);
  }
  if (wide && a.runs != 0 && head_dim == 128 && a.runs_narrow == 128) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true, false, false, 128>(
                      a, stream, pool)
                : launch_fwd_sm90_impl<__half, 128, 2, 192, true, false, false, 128>(a, stream,
                                                                                    pool);
  }
  if (wide && a.runs != 0) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, true>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 128, 2, 192, true>(a, stream, pool);
  }
  if (wide && head_dim == 64 && fwd_short_items_wanted(a)) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 64, 3, 128, false, false, true>(a, stream,
                                                                                      pool)
                : launch_fwd_sm90_impl<__half, 64, 3, 128, false, false, true>(a, stream, pool);
  }
  if (wide && head_dim == 64) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 64, 3>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 64, 3>(a, stream, pool);
  }
  if (wide && head_dim == 128) {
    const int narrow = fwd_narrow_keys(a);
    if (narrow == 64)
      return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, false, false, false, 64>(
                        a, stream, pool)
                  : launch_fwd_sm90_impl<__half, 128, 2, 192, false, false, false, 64>(a, stream,
                                                                                      pool);
    if (narrow == 128)
      return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192, false, false, false, 128>(
                        a, stream, pool)
                  : launch_fwd_sm90_impl<__half, 128, 2, 192, false, false, false, 128>(a, stream,
                                                                                       pool);
  }
  if (wide) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128, 2, 192>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 128, 2, 192>(a, stream, pool);
  }
  if (head_dim == 64) {
    return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 64>(a, stream, pool)
                : launch_fwd_sm90_impl<__half, 64>(a, stream, pool);
  }
  return bf16 ? launch_fwd_sm90_impl<__nv_bfloat16, 128>(a, stream, pool)
              : launch_fwd_sm90_impl<__half, 128>(a, stream, pool);
}

bool bwd_accepts(const BwdArgs& a, DType dtype, int head_dim, bool atomic_dq) {
  // The deterministic dQ pass stays portable. Key blocks (rows of the transposed mask) of
  // 128-multiples, query blocks of 64-multiples.
  return atomic_dq && a.mask_t.block_q % 128 == 0 && a.mask_t.block_k % 64 == 0 &&
         kernels_fit(dtype, head_dim, a.vec != 0);
}

BackwardTiles bwd_tiles(const BwdArgs& a, int head_dim) {
  const BackwardTiles t = backward_tiles(head_dim, a.complete != 0, a.runs != 0, a.mask_t.block_k);
  const char* off = t == BackwardTiles::kPosition80    ? "LONGATTN_SM90_BWD_M80"
                    : t == BackwardTiles::kPosition128 ? "LONGATTN_SM90_BWD_M128"
                    : t == BackwardTiles::kListed128   ? "LONGATTN_SM90_BWD_M128_LISTS"
                                                       : nullptr;
  return off == nullptr || switch_on(off) ? t : BackwardTiles::kListed64;
}

int bwd_runs(int head_dim, const BlockMaskView& mask_t) {
  if (const char* e = std::getenv("LONGATTN_SM90_BWD_RUNS")) {
    if (std::string(e) == "0") return 0;
    if (std::string(e) == "1")
      return backward_runs_by_position(head_dim, mask_t.contiguous_rows,
                                       std::numeric_limits<double>::infinity())
                 ? 1
                 : 0;
  }
  return backward_runs_by_position(head_dim, mask_t.contiguous_rows, mask_t.mean_row_keys) ? 1 : 0;
}

bool bwd_writes_dkv(const BwdArgs& a, int head_dim) {
  if (a.dk_type != flash::kOutSame || a.dv_type != flash::kOutSame) return false;
  if (!switch_on("LONGATTN_SM90_BWD_WRITE")) return false;
  const BackwardTiles t = bwd_tiles(a, head_dim);
  return t == BackwardTiles::kPosition128 || t == BackwardTiles::kPosition80;
}

bool bwd_dq_transposed(const BwdArgs& a, int head_dim) {
  return LONGATTN_SM90_BWD_DQ_T != 0 && a.complete != 0 && bwd_writes_dkv(a, head_dim) &&
         bwd_tiles(a, head_dim) == BackwardTiles::kPosition80;
}

void flash_backward(const BwdArgs& a, DType dtype, int head_dim, cudaStream_t stream,
                    cudaMemPool_t pool) {
  const bool bf16 = dtype == DType::BF16;
  // Head dim 64, causal: K in registers (A/B runs 14-15: causal +0-4%, non-causal -8-12%).
  static const bool kregs = switch_on("LONGATTN_SM90_BWD_KREGS");
  const BackwardTiles tiles = bwd_tiles(a, head_dim);
  if (a.dkv_write != 0) {  // the caller asked bwd_writes_dkv (not asked again: a getenv)
    LONGATTN_CHECK_ARG(a.dk_type == flash::kOutSame && a.dv_type == flash::kOutSame &&
                           (tiles == BackwardTiles::kPosition128 ||
                            tiles == BackwardTiles::kPosition80),
                       "dkv_write", a.dkv_write,
                       "needs dk and dv of the input dtype and tiles by position");
    if (tiles == BackwardTiles::kPosition128)
      return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128, true, true>(a, stream, pool)
                  : launch_bwd_sm90_impl<__half, 64, false, 128, true, true>(a, stream, pool);
    if (a.dq_t != nullptr)  // (bwd_dq_transposed)
      return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80, true, true, true>(
                        a, stream, pool)
                  : launch_bwd_sm90_impl<__half, 128, false, 80, true, true, true>(a, stream,
                                                                                     pool);
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80, true, true>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 128, false, 80, true, true>(a, stream, pool);
  }
  if (tiles == BackwardTiles::kPosition128) {
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 64, false, 128>(a, stream, pool);
  }
  if (tiles == BackwardTiles::kListed128) {
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128, false>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 64, false, 128, false>(a, stream, pool);
  }
  if (head_dim == 64 && a.causal && kregs) {
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 64, true>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 64, true>(a, stream, pool);
  }
  if (head_dim == 64) {
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 64>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 64>(a, stream, pool);
  }
  if (tiles == BackwardTiles::kPosition80) {
    return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80>(a, stream, pool)
                : launch_bwd_sm90_impl<__half, 128, false, 80>(a, stream, pool);
  }
  return bf16 ? launch_bwd_sm90_impl<__nv_bfloat16, 128>(a, stream, pool)
              : launch_bwd_sm90_impl<__half, 128>(a, stream, pool);
}

}  // namespace longattn::cuda::sm90
