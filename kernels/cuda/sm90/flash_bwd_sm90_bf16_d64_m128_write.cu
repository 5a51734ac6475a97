// Hopper backward attention instantiated for bf16, head dim 64, 128-query tiles (complete masks),
// writing dk and dv (AttnBwdParams::accumulate false). Kernel: kernels/cuda/sm90/flash_bwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_bwd_sm90_impl<__nv_bfloat16, 64, false, 128, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
