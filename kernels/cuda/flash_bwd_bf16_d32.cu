// Backward tensor-core flash attention instantiated for bf16, head dim 32 (one file per dtype and
// head dim keeps each CUDA translation unit small). Kernels: kernels/cuda/flash_bwd_kernel.cuh.
#include "kernels/cuda/flash_bwd_kernel.cuh"

namespace longattn::cuda::flash {
template void launch_bwd<__nv_bfloat16, 32>(const BwdArgs&, bool, cudaStream_t);
}  // namespace longattn::cuda::flash
