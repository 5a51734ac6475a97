// Hopper backward attention instantiated for bf16, head dim 128 (one file per dtype and head
// dim keeps each CUDA translation unit small). Kernel: kernels/cuda/sm90/flash_bwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_bwd_sm90_impl<__nv_bfloat16, 128>(const BwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
