// Kernel benchmark of the flash attention kernels (disabled test: run with
// --gtest_also_run_disabled_tests --gtest_filter='*Bench*'; bench/run_kernel_bench.sh runs it
// beside PyTorch SDPA in one command). Dense bf16 forward and backward, d = 64 and 128,
// n = 4K..16K, causal and not, B = 16K / n sequences of H = 2048 / d heads. CUDA events, warm-up,
// median of repeats; FLOPs 4*B*H*n*n*d (half when causal), backward 2.5x. Writes JSON rows to
// $LONGATTN_BENCH_JSON (stdout table always).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/contract.hpp"
#include "kernels/cuda/flash_attention.hpp"
#include "runtime/error.hpp"

namespace longattn {
namespace {

void bck(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

struct BenchCfg {
  int warmup = 3;
  int repeats = 20;
  int64_t tokens = 16384;  // B * n
  int64_t hidden = 2048;   // H * d
  int64_t mask_block = 128;
};

// Median milliseconds of `fn` over cfg.repeats runs timed with CUDA events.
template <typename F>
double median_ms(const BenchCfg& cfg, F&& fn) {
  cudaEvent_t a, b;
  bck(cudaEventCreate(&a), "event");
  bck(cudaEventCreate(&b), "event");
  for (int i = 0; i < cfg.warmup; ++i) fn();
  std::vector<float> ms;
  for (int i = 0; i < cfg.repeats; ++i) {
    bck(cudaEventRecord(a, nullptr), "record");
    fn();
    bck(cudaEventRecord(b, nullptr), "record");
    bck(cudaEventSynchronize(b), "sync");
    float t = 0.f;
    bck(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Fills a bf16 device buffer with pseudo-random values in [-2, 2) (a host-side hash, uploaded).
void fill_random_bf16(void* dev, int64_t n, uint64_t seed) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& v : h) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const float f = (static_cast<float>(x >> 40) / static_cast<float>(1 << 24)) * 4.f - 2.f;
    v = float_to_bf16(f).bits;
  }
  bck(cudaMemcpy(dev, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "upload");
}

TEST(FlashBench, DISABLED_DenseBf16) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) GTEST_SKIP() << "no CUDA device";
  const BenchCfg cfg;
  const int64_t elems = cfg.tokens * cfg.hidden;
  void *q, *k, *v, *o, *dout, *lse, *dq, *dk, *dv;
  bck(cudaMalloc(&q, elems * 2), "malloc");
  bck(cudaMalloc(&k, elems * 2), "malloc");
  bck(cudaMalloc(&v, elems * 2), "malloc");
  bck(cudaMalloc(&o, elems * 2), "malloc");
  bck(cudaMalloc(&dout, elems * 2), "malloc");
  bck(cudaMalloc(&lse, cfg.tokens * 64 * 4), "malloc");
  bck(cudaMalloc(&dq, elems * 4), "malloc");
  bck(cudaMalloc(&dk, elems * 4), "malloc");
  bck(cudaMalloc(&dv, elems * 4), "malloc");
  fill_random_bf16(q, elems, 1);
  fill_random_bf16(k, elems, 2);
  fill_random_bf16(v, elems, 3);
  fill_random_bf16(dout, elems, 4);
  bck(cudaMemset(dq, 0, elems * 4), "memset");
  bck(cudaMemset(dk, 0, elems * 4), "memset");
  bck(cudaMemset(dv, 0, elems * 4), "memset");

  cudaDeviceProp prop{};
  bck(cudaGetDeviceProperties(&prop, 0), "props");
  std::string rows;
  std::printf("%-6s %4s %6s %6s %3s %3s %9s %9s\n", "op", "d", "n", "causal", "B", "H", "ms",
              "TFLOP/s");
  // Mask block 128 runs 128 query rows per CTA, block 64 runs 64 (reported as longattn_b64).
  for (int64_t mask_block : {cfg.mask_block, int64_t{64}})
  for (int64_t D : {64, 128})
    for (int64_t N : {4096, 8192, 16384})
      for (bool causal : {false, true}) {
        // LONGATTN_BENCH_ONLY="d,n,causal,mask_block" runs one configuration (for profilers).
        if (const char* only = std::getenv("LONGATTN_BENCH_ONLY")) {
          long od = 0, on = 0, oc = 0, ob = 0;
          if (std::sscanf(only, "%ld,%ld,%ld,%ld", &od, &on, &oc, &ob) == 4 &&
              (od != D || on != N || oc != (causal ? 1 : 0) || ob != mask_block))
            continue;
        }
        const int64_t B = cfg.tokens / N, H = cfg.hidden / D;
        const TensorView qv = make_view(q, DType::BF16, B, N, H, D, DeviceKind::Cuda);
        const TensorView kv = make_view(k, DType::BF16, B, N, H, D, DeviceKind::Cuda);
        const TensorView vv = make_view(v, DType::BF16, B, N, H, D, DeviceKind::Cuda);
        const TensorView ov = make_view(o, DType::BF16, B, N, H, D, DeviceKind::Cuda);
        const TensorView dov = make_view(dout, DType::BF16, B, N, H, D, DeviceKind::Cuda);
        const TensorView lv = make_view(lse, DType::F32, B, N, H, 1, DeviceKind::Cuda);
        const MaskGeometry g{N, N, mask_block, mask_block, causal, 0, 0};
        const BlockMask m = dense_block_mask(g), mt = m.transpose();
        std::vector<void*> mem;
        auto put = [&](const BlockMask& bm) {
          BlockMaskView mv = host_mask_view(bm);
          void *rp, *ci, *pa;
          bck(cudaMalloc(&rp, bm.row_ptr.size() * 8), "malloc");
          bck(cudaMalloc(&ci, bm.col_idx.size() * 4 + 4), "malloc");
          bck(cudaMalloc(&pa, bm.partial.size() + 1), "malloc");
          const auto h2d = cudaMemcpyHostToDevice;
          bck(cudaMemcpy(rp, bm.row_ptr.data(), bm.row_ptr.size() * 8, h2d), "cp");
          bck(cudaMemcpy(ci, bm.col_idx.data(), bm.col_idx.size() * 4, h2d), "cp");
          bck(cudaMemcpy(pa, bm.partial.data(), bm.partial.size(), h2d), "cp");
          mem.insert(mem.end(), {rp, ci, pa});
          mv.row_ptr = static_cast<const int64_t*>(rp);
          mv.col_idx = static_cast<const int32_t*>(ci);
          mv.partial = static_cast<const uint8_t*>(pa);
          return mv;
        };
        AttnFwdParams fp;
        fp.q = qv;
        fp.k = kv;
        fp.v = vv;
        fp.o = ov;
        fp.lse = lv;
        fp.mask = put(m);
        fp.causal = causal;
        AttnBwdParams bp;
        bp.q = qv;
        bp.k = kv;
        bp.v = vv;
        bp.o = ov;
        bp.d_o = dov;
        bp.lse = lv;
        bp.dq = make_view(dq, DType::F32, B, N, H, D, DeviceKind::Cuda);
        bp.dk = make_view(dk, DType::F32, B, N, H, D, DeviceKind::Cuda);
        bp.dv = make_view(dv, DType::F32, B, N, H, D, DeviceKind::Cuda);
        bp.mask = fp.mask;
        bp.mask_t = put(mt);
        bp.causal = causal;
        bp.deterministic = std::getenv("LONGATTN_BENCH_DETERMINISTIC") != nullptr;
        const double flops = 4.0 * B * H * static_cast<double>(N) * N * D * (causal ? 0.5 : 1.0);
        const double fwd = median_ms(cfg, [&] { cuda::flash_forward(fp, nullptr); });
        const double bwd = median_ms(cfg, [&] { cuda::flash_backward(bp, nullptr); });
        bck(cudaDeviceSynchronize(), "sync");
        for (void* p : mem) cudaFree(p);
        for (int pass = 0; pass < 2; ++pass) {
          const double ms = pass == 0 ? fwd : bwd;
          const double tf = (pass == 0 ? flops : 2.5 * flops) / (ms * 1e-3) / 1e12;
          const char* op = pass == 0 ? "fwd" : "bwd";
          const char* impl = mask_block == cfg.mask_block ? "longattn" : "longattn_b64";
          std::printf("%-6s %4ld %6ld %6d %3ld %3ld %9.3f %9.1f %s\n", op, static_cast<long>(D),
                      static_cast<long>(N), causal ? 1 : 0, static_cast<long>(B),
                      static_cast<long>(H), ms, tf, impl);
          char buf[320];
          std::snprintf(buf, sizeof buf,
                        "%s{\"impl\": \"%s\", \"op\": \"%s\", \"dtype\": \"bf16\", \"d\": %ld, "
                        "\"n\": %ld, \"causal\": %s, \"B\": %ld, \"H\": %ld, \"ms\": %.4f, "
                        "\"tflops\": %.2f}",
                        rows.empty() ? "" : ",\n    ", impl, op, static_cast<long>(D),
                        static_cast<long>(N), causal ? "true" : "false", static_cast<long>(B),
                        static_cast<long>(H), ms, tf);
          rows += buf;
        }
      }
  for (void* p : {q, k, v, o, dout, lse, dq, dk, dv}) cudaFree(p);
  if (const char* path = std::getenv("LONGATTN_BENCH_JSON")) {
    std::ofstream f(path);
    f << "{\n  \"gpu\": \"" << prop.name << "\",\n  \"warmup\": " << cfg.warmup
      << ",\n  \"repeats\": " << cfg.repeats << ",\n  \"mask_block\": " << cfg.mask_block
      << ",\n  \"rows\": [\n    " << rows << "\n  ]\n}\n";
  }
}

}  // namespace
}  // namespace longattn
