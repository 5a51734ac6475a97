// Hopper backward attention instantiated for f16, head dim 64, 128-query tiles (complete
// masks). Kernel: kernels/cuda/sm90/flash_bwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_bwd_sm90_impl<__half, 64, false, 128>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
