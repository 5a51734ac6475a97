// Hopper forward attention instantiated for f16, head dim 128, 192-key tiles gathered from the
// 64-key chunks of each row's listed blocks (forward_gathered_tiles: scattered rows, not causal).
// Kernel: kernels/cuda/sm90/flash_fwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_fwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_fwd_sm90_impl<__half, 128, 2, 192, false, true>(const FwdArgs&,
                                                                     cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
