// Hopper forward attention instantiated for f16, head dim 64, 192-row query tiles with short
// items of 128 rows after the tall ones (three consumer warpgroups; non-causal calls over
// complete masks whose last round short items fill, fwd_short_items_wanted). Kernel:
// kernels/cuda/sm90/flash_fwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_fwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_fwd_sm90_impl<__half, 64, 3, 128, false, false, true>(
    const FwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
