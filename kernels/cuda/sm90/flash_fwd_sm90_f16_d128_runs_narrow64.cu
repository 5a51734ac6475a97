// Hopper forward attention instantiated for f16, head dim 128, 192-key tiles walking each mask
// row's run by position with a first tile of 64 keys (non-causal calls over runs that mostly leave
// 64 keys over a multiple of 192, fwd_runs_narrow). Kernel: kernels/cuda/sm90/flash_fwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_fwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_fwd_sm90_impl<__half, 128, 2, 192, true, false, false, 64>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
