// wgmma shapes of the backward's 80-query tiles (head dim 128, complete masks and masks of runs):
// n = 80 queries, fp32 accumulators, one wrapper per element type (suffix _bf16 or _f16) and
// operand order, and Mma80<T> choosing between them. Kept apart from wgmma_ops.cuh so that only
// the backward's files include them.
//   ss80: S^T = K Q^T and dP^T = V dO^T, both operands K-major (128-byte swizzle);
//   ss80_tt: dQ^T = K^T dS^T, both operands MN-major (K read transposed, dS^T in the 32-byte
//            swizzle, smem_desc<3>: 80 queries are five 16-element atoms).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace longattn::cuda::sm90 {

#define LONGATTN_WGMMA80_D40                                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39}"
#define LONGATTN_WGMMA80_ACC40(d)                                                              \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),          \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),  \
      "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),            \
      "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),            \
      "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),            \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),            \
      "+f"(d[38]), "+f"(d[39])

// One m64n80k16 wrapper, A and B in shared memory: TRANS "0, 0" K-major, "1, 1" both MN-major.
#define LONGATTN_WGMMA80_SS(NAME, TY, TRANS)                                                   \
  __device__ __forceinline__ void NAME##_##TY(float (&d)[40], uint64_t desc_a, uint64_t desc_b, \
                                              int accumulate) {                                \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %42, 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n80k16.f32." #TY "." #TY " "                 \
                 LONGATTN_WGMMA80_D40 ", %40, %41, p, 1, 1, " TRANS ";\n}\n"                   \
                 : LONGATTN_WGMMA80_ACC40(d)                                                   \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                 \
  }

LONGATTN_WGMMA80_SS(wgmma_ss_n80, bf16, "0, 0")
LONGATTN_WGMMA80_SS(wgmma_ss_n80, f16, "0, 0")
LONGATTN_WGMMA80_SS(wgmma_ss_n80_tt, bf16, "1, 1")
LONGATTN_WGMMA80_SS(wgmma_ss_n80_tt, f16, "1, 1")

#undef LONGATTN_WGMMA80_SS
#undef LONGATTN_WGMMA80_D40
#undef LONGATTN_WGMMA80_ACC40

template <typename T>
struct Mma80 {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16");
  static constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  static __device__ __forceinline__ void ss(float (&d)[40], uint64_t a, uint64_t b, int acc) {
    if constexpr (kBf16) {
      wgmma_ss_n80_bf16(d, a, b, acc);
    } else {
      wgmma_ss_n80_f16(d, a, b, acc);
    }
  }
  static __device__ __forceinline__ void ss_tt(float (&d)[40], uint64_t a, uint64_t b, int acc) {
    if constexpr (kBf16) {
      wgmma_ss_n80_tt_bf16(d, a, b, acc);
    } else {
      wgmma_ss_n80_tt_f16(d, a, b, acc);
    }
  }
};

}  // namespace longattn::cuda::sm90
