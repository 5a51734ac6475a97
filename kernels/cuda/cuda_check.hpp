// Checking macros for the CUDA runtime and cuBLAS: every failure throws longattn::Error with
// host, rank, device, file:line, the call as written and the library's error name and string
// (one reporter, runtime/error.hpp's format_api_failure). Included by CUDA sources only.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "runtime/error.hpp"

namespace longattn::cuda {

// "device D: cudaErrorX: text" for a CUDA runtime error on the current device.
inline std::string describe_cuda_error(cudaError_t e) {
  int dev = -1;
  // The device query itself may fail once the context is broken; the message then says -1.
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  return "device " + std::to_string(dev) + ": " + cudaGetErrorName(e) + ": " +
         cudaGetErrorString(e);
}

inline std::string describe_cublas_error(cublasStatus_t s) {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  return "device " + std::to_string(dev) + ": " + cublasGetStatusName(s) + ": " +
         cublasGetStatusString(s);
}

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* call, const char* file,
                                          int line) {
  throw Error(format_api_failure("CUDA", call, file, line, describe_cuda_error(e)));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* call, const char* file,
                                            int line) {
  throw Error(format_api_failure("cuBLAS", call, file, line, describe_cublas_error(s)));
}

}  // namespace longattn::cuda

#define CUDA_CHECK(call)                                                           \
  do {                                                                             \
    const cudaError_t longattn_cuda_err_ = (call);                                 \
    if (longattn_cuda_err_ != cudaSuccess)                                         \
      ::longattn::cuda::throw_cuda_error(longattn_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports launch-configuration errors (asynchronous faults surface at
// the next synchronising call, which is checked too).
#define CUDA_CHECK_LAUNCH(kernel_name)                                                  \
  do {                                                                                  \
    const cudaError_t longattn_cuda_err_ = cudaGetLastError();                          \
    if (longattn_cuda_err_ != cudaSuccess)                                              \
      ::longattn::cuda::throw_cuda_error(longattn_cuda_err_, "launch of " kernel_name, \
                                         __FILE__, __LINE__);                           \
  } while (0)

namespace longattn::cuda {
// `bytes` of stream-ordered scratch on `stream`: from `pool` when given, else from the device's
// default pool (release with cudaFreeAsync on the same stream).
template <typename T>
T* scratch_async(size_t bytes, cudaMemPool_t pool, cudaStream_t stream) {
  void* p = nullptr;
  if (pool)
    CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, pool, stream));
  else
    CUDA_CHECK(cudaMallocAsync(&p, bytes, stream));
  return static_cast<T*>(p);
}
}  // namespace longattn::cuda

#define CUBLAS_CHECK(call)                                                               \
  do {                                                                                   \
    const cublasStatus_t longattn_cublas_st_ = (call);                                   \
    if (longattn_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::longattn::cuda::throw_cublas_error(longattn_cublas_st_, #call, __FILE__, __LINE__); \
  } while (0)
