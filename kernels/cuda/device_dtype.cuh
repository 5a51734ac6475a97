// Device element types of the CUDA backend's own kernels (element-wise, mask building): fp64
// round trips that round exactly as runtime/dtype.hpp does on the host, and the dispatch from a
// runtime DType to a template parameter. Included by kernels/cuda/*.cu only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "runtime/dtype.hpp"
#include "runtime/error.hpp"

namespace longattn::cuda {

// Element -> fp64 (exact for every dtype).
template <typename T>
__device__ __forceinline__ double to_f64(T x);
template <>
__device__ __forceinline__ double to_f64<double>(double x) { return x; }
template <>
__device__ __forceinline__ double to_f64<float>(float x) { return x; }
template <>
__device__ __forceinline__ double to_f64<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ double to_f64<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// fp64 -> element: fp64 -> fp32 first, then fp16/bf16 with round to nearest even, the host's
// double rounding (runtime/dtype.cpp round_to), so both backends store the same bits.
template <typename T>
__device__ __forceinline__ T from_f64(double x);
template <>
__device__ __forceinline__ double from_f64<double>(double x) { return x; }
template <>
__device__ __forceinline__ float from_f64<float>(double x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ __half from_f64<__half>(double x) {
  return __float2half_rn(static_cast<float>(x));
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f64<__nv_bfloat16>(double x) {
  return __float2bfloat16_rn(static_cast<float>(x));
}

// Calls f(T{}) with the device element type of a dtype (host side, for kernel launches).
template <typename F>
void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F64: f(double{}); return;
    case DType::F32: f(float{}); return;
    case DType::F16: f(__half{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
  }
  throw InvalidArgument("dtype", std::to_string(static_cast<int>(t)), "unknown dtype");
}

}  // namespace longattn::cuda
