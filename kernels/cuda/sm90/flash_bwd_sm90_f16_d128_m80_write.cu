// Hopper backward attention instantiated for f16, head dim 128, 80-query tiles (complete masks
// and runs), writing dk and dv (AttnBwdParams::accumulate false), adding dQ into dq.
// Kernel: kernels/cuda/sm90/flash_bwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_bwd_sm90_impl<__half, 128, false, 80, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
