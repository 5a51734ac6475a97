// wgmma instructions used by the Hopper attention kernels (sm_90a), one function per shape and
// element type (suffix _bf16 or _f16), fp32 accumulators: d (+)= A * B with accumulate = 0
// overwriting d. "ss": A and B in shared memory (descriptors); "rs": A in registers (the m16n8k16
// A layout per warp). Inline PTX names every accumulator register, so the operand lists are
// macros (each size extends the one below it) and each element type's set of wrappers comes from one macro.
#pragma once
#include <cstdint>

namespace longattn::cuda::sm90 {

#define LONGATTN_WGMMA_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define LONGATTN_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LONGATTN_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LONGATTN_WGMMA_D96 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}"
#define LONGATTN_WGMMA_ACC16(d)  \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define LONGATTN_WGMMA_ACC32(d)  \
    LONGATTN_WGMMA_ACC16(d), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define LONGATTN_WGMMA_ACC64(d)  \
    LONGATTN_WGMMA_ACC32(d), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define LONGATTN_WGMMA_ACC88(d)  \
    LONGATTN_WGMMA_ACC64(d), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])

#define LONGATTN_WGMMA_ACC96(d)  \
    LONGATTN_WGMMA_ACC88(d), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])

// The wrappers for element type TY (bf16 or f16).
#define LONGATTN_WGMMA_WRAPPERS(TY)  \
  /* A and B K-major in shared memory (descriptors), m64n128k16 */  \
  __device__ __forceinline__ void wgmma_ss_n128_##TY(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"  \
                 : LONGATTN_WGMMA_ACC64(d)  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A and B K-major in shared memory, m64n192k16 (192-key tiles of the forward at head dim 128) */  \
  __device__ __forceinline__ void wgmma_ss_n192_##TY(float (&d)[96], uint64_t desc_a, uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D96 ", %96, %97, p, 1, 1, 0, 0;\n}\n"  \
                 : LONGATTN_WGMMA_ACC96(d)  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A in registers (the m16n8k16 A layout per warp), B MN-major in shared memory (transposed descriptor), m64n64k16 */  \
  __device__ __forceinline__ void wgmma_rs_n64_##TY(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"  \
                 : LONGATTN_WGMMA_ACC32(d)  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A in registers, B K-major in shared memory, m64n64k16 */  \
  __device__ __forceinline__ void wgmma_rs_n64_kb_##TY(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"  \
                 : LONGATTN_WGMMA_ACC32(d)  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A in registers, B MN-major in shared memory (transposed descriptor), m64n128k16 */  \
  __device__ __forceinline__ void wgmma_rs_n128_##TY(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"  \
                 : LONGATTN_WGMMA_ACC64(d)  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A in registers, B K-major in shared memory, m64n128k16 */  \
  __device__ __forceinline__ void wgmma_rs_n128_kb_##TY(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"  \
                 : LONGATTN_WGMMA_ACC64(d)  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A and B K-major in shared memory, m64n64k16 */  \
  __device__ __forceinline__ void wgmma_ss_n64_##TY(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"  \
                 : LONGATTN_WGMMA_ACC32(d)  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A and B both transposed (MN-major) in shared memory, m64n64k16 */  \
  __device__ __forceinline__ void wgmma_ss_n64_tt_##TY(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D32 ", %32, %33, p, 1, 1, 1, 1;\n}\n"  \
                 : LONGATTN_WGMMA_ACC32(d)  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));  \
  }  \
  /* A and B both transposed (MN-major) in shared memory, m64n32k16 */  \
  __device__ __forceinline__ void wgmma_ss_n32_tt_##TY(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"  \
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32." #TY "." #TY " "  \
                 LONGATTN_WGMMA_D16 ", %16, %17, p, 1, 1, 1, 1;\n}\n"  \
                 : LONGATTN_WGMMA_ACC16(d)  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));  \
  }

LONGATTN_WGMMA_WRAPPERS(bf16)
LONGATTN_WGMMA_WRAPPERS(f16)

#undef LONGATTN_WGMMA_WRAPPERS
#undef LONGATTN_WGMMA_D16
#undef LONGATTN_WGMMA_D32
#undef LONGATTN_WGMMA_D64
#undef LONGATTN_WGMMA_ACC16
#undef LONGATTN_WGMMA_ACC32
#undef LONGATTN_WGMMA_ACC64
#undef LONGATTN_WGMMA_ACC88
#undef LONGATTN_WGMMA_D96
#undef LONGATTN_WGMMA_ACC96

}  // namespace longattn::cuda::sm90
