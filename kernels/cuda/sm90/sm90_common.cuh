// Hopper (sm_90a) building blocks of the attention kernels: mbarriers, TMA tile loads
// (cp.async.bulk.tensor completing on an mbarrier), wgmma shared-memory descriptors for the
// 128-byte swizzle that TMA writes, wgmma fences and register reallocation.
// Included by kernels/cuda/sm90/*.cu only (compiled for sm_90a).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace longattn::cuda::sm90 {

__device__ __forceinline__ uint32_t saddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- programmatic dependent launch (launch_sm90 launches the kernels that call these) ----
// Waits until the grids this one depends on have completed and their memory is visible: every
// thread calls it before its first global memory access (a no-op in a grid launched without
// programmatic serialisation).
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
// Lets a grid launched after this one with programmatic serialisation be scheduled once every
// CTA of this grid has said so (or exited): its CTAs take the SMs ours leave and wait in
// pdl_wait. A persistent CTA says so once the counter has no item left for it, when every CTA
// of this grid is resident (CTAs that wait on each other's progress are never left out).
__device__ __forceinline__ void pdl_trigger() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// %globaltimer in nanoseconds, one clock for all SMs (the timeline builds' spans).
__device__ __forceinline__ long long global_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Launches a kernel that calls pdl_wait before its first global memory access: with `pdl`,
// with programmatic stream serialisation (it may be scheduled while the work before it in the
// stream finishes, once that work's grid has called pdl_trigger or exited), else as <<<>>>.
template <typename... Params, typename... Args>
cudaError_t launch_sm90(void (*kernel)(Params...), int grid, int threads, size_t smem,
                        cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(static_cast<unsigned>(threads));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// ---- mbarriers (shared memory, 8 bytes each) ----
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(saddr(bar)), "r"(count));
}
// Makes the initialised barriers visible to the asynchronous (TMA) proxy.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of asynchronous transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(saddr(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(saddr(bar)) : "memory");
}
// `count` arrivals at once (one thread standing in for several).
__device__ __forceinline__ void mbar_arrive_cnt(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0], %1;\n" ::"r"(saddr(bar)), "r"(count)
               : "memory");
}
// Waits until the phase with parity `parity` has completed. A fresh barrier counts its
// (non-existent) previous phase, parity 1, as complete.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(saddr(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA: a 4-D box [c0 .. c0+box0) x [c1 .. c1+box1) x {c2} x {c3} into shared memory ----
// Coordinates past the tensor's extent read as zeros (the transaction still counts every byte).
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(saddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(saddr(bar))
      : "memory");
}
// Adds a 4-D box of fp32 from shared memory into global memory (cp.reduce.async.bulk.tensor,
// element-wise .add in L2); coordinates past the tensor's extent are skipped. Completion is
// tracked per issuing thread by bulk async-groups.
__device__ __forceinline__ void tma_reduce_add_4d(const CUtensorMap* map, const void* src, int c0,
                                                  int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(saddr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Stores a box from shared memory at coordinates {c0, c1, c2, c3} (bulk group; elements out of
// the tensor's bounds are not written).
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* src, int c0,
                                             int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::
          "l"(reinterpret_cast<uint64_t>(map)),
      "r"(saddr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Adds `bytes` (a multiple of 16, both ends 16-byte aligned) of fp32 from shared memory into
// global memory in one piece (cp.reduce.async.bulk, no tensor map).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, const void* src, int bytes) {
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
      "r"(saddr(src)), "r"(bytes)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's bulk groups still read their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Waits until all of this thread's bulk groups have completed (writes included).
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
// A 32-bit shared-memory load the compiler may neither hoist nor merge: values read where they
// are used instead of held in registers across a loop.
__device__ __forceinline__ int ld_shared_volatile(const void* p) {
  int v;
  asm volatile("ld.volatile.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(saddr(p)));
  return v;
}
__device__ __forceinline__ void st_shared_v2(uint32_t addr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(x), "f"(y) : "memory");
}
// Four 8x8 matrices of 16-bit pairs (stmatrix): register j of lane (g, t4) is word t4 of row g of
// matrix j, and lane 8 j + r gives the address of row r of matrix j (16 bytes a row). A 32-bit
// value passes whole, so fp32 sums go out four a lane per instruction as well.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                            uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- wgmma ----
// Shared-memory matrix descriptor, 128-byte swizzle (the layout TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B into a 1024-byte aligned buffer). Byte offsets: lbo between
// 64-element column blocks of an MN-major operand (unused for K-major), sbo between groups of 8
// rows (1024 for dense 128-byte rows).
// kSwizzle: the descriptor's layout type, 1 the 128-byte swizzle, 3 the 32-byte one (16-byte
// chunk c of the 32-byte row r of a 256-byte atom at chunk c ^ ((r >> 2) & 1); lbo then between
// atoms along MN).
template <int kSwizzle = 1>
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  static_assert(kSwizzle == 1 || kSwizzle == 3, "128- or 32-byte swizzle");
  uint64_t d = static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
  d |= uint64_t{kSwizzle} << 62;
  return d;
}
// The descriptor of the operand `bytes` further on (the start address is its low field; shared
// memory addresses stay below 2^18, so the add never carries out of it). With a descriptor made
// once and constant offsets this is one add per wgmma instead of building each descriptor.
__device__ __forceinline__ uint64_t desc_at(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}
// The warpgroup of this thread, as a value the compiler knows is the same across the warp (a
// shuffle from lane 0), so what derives from it (descriptors) can live in uniform registers.
__device__ __forceinline__ int warpgroup_index() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across wgmma issue/wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Shared memory written by ordinary stores and read next by wgmma (the async proxy): each
// writing thread fences before the barrier that publishes it.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Barrier among `threads` threads (a multiple of 32) of the CTA; ids 1.. (0 is __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Arrives at named barrier `id` without waiting (the producer side of a handoff).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Keeps the compiler from reusing registers a wgmma still reads (register A operands) before
// the wait that retires it.
template <int N, int M>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}
// p[0] += x, p[1] += y as one 8-byte reduction (p 8-byte aligned).
__device__ __forceinline__ void red_add_v2(float* p, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(x), "f"(y) : "memory");
}

// Flag handoff between CTAs at GPU scope: the writer's earlier stores are visible to a reader
// whose acquire load saw the value.
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// First index in [lo, hi) whose sorted value v[i] >= x (hi if none), by the whole warp: each
// step probes 32 evenly spaced entries, so a row of up to 1024 entries takes two loads.
__device__ __forceinline__ int64_t warp_lower_bound(const int32_t* v, int64_t lo, int64_t hi,
                                                    int x) {
  const int lane = threadIdx.x % 32;
  while (lo < hi) {
    const int64_t step = (hi - lo + 31) / 32;
    const int64_t pos = lo + lane * step;
    const unsigned less = __ballot_sync(0xffffffffu, pos < hi && v[pos] < x);
    const int cnt = __popc(less);  // a prefix of the probes (v sorted)
    if (cnt == 0) break;
    const int64_t next_hi = lo + cnt * step < hi ? lo + cnt * step : hi;
    lo = lo + (cnt - 1) * step + 1;
    hi = next_hi;
  }
  return lo;
}

// Register split of a 384-thread CTA (one producer and two consumer warpgroups): the CTA
// owns the per-thread cap the compiler gives 384 threads (65536 / 384 rounded down to 8) times
// 384; setmaxnreg.inc waits until the producer's setmaxnreg.dec has freed enough of them, so the
// split must fit or the consumers wait forever.
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(kProducerRegs * 128 + kConsumerRegs * 256 <= (65536 / 384 / 8 * 8) * 384,
              "the warpgroup register split must fit the registers the CTA owns");

template <int R>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}

// ---- warp exchanges ----
// The four lanes of a quad each hold one 32-bit word of four 8-column groups (v[q]: group q,
// columns 2 t4, 2 t4 + 1); afterwards lane t4 holds all four words of group t4 (columns 0..7 in
// order): a 4 x 4 transpose in two exchange stages (lane bit 1, then bit 0), two shuffles each.
__device__ __forceinline__ void quad_transpose(uint32_t (&v)[4], int t4) {
  const bool hi = (t4 & 2) != 0;
  const uint32_t x0 = __shfl_xor_sync(0xffffffffu, hi ? v[0] : v[2], 2);
  const uint32_t x1 = __shfl_xor_sync(0xffffffffu, hi ? v[1] : v[3], 2);
  // w[i][j]: word of lane (t4 & 1) | 2 i, group 2 (t4 >> 1) + j.
  const uint32_t w00 = hi ? x0 : v[0], w01 = hi ? x1 : v[1];
  const uint32_t w10 = hi ? v[2] : x0, w11 = hi ? v[3] : x1;
  const bool odd = (t4 & 1) != 0;
  const uint32_t y0 = __shfl_xor_sync(0xffffffffu, odd ? w00 : w01, 1);
  const uint32_t y1 = __shfl_xor_sync(0xffffffffu, odd ? w10 : w11, 1);
  v[0] = odd ? y0 : w00;
  v[1] = odd ? w01 : y0;
  v[2] = odd ? y1 : w10;
  v[3] = odd ? w11 : y1;
}

}  // namespace longattn::cuda::sm90
