// Forward tensor-core flash attention instantiated for bf16, head dim 32 (one file per dtype and
// head dim keeps each CUDA translation unit small). Kernel: kernels/cuda/flash_fwd_kernel.cuh.
#include "kernels/cuda/flash_fwd_kernel.cuh"

namespace longattn::cuda::flash {
template void launch_fwd<__nv_bfloat16, 32>(const FwdArgs&, int, cudaStream_t);
}  // namespace longattn::cuda::flash
