// Hopper backward attention instantiated for bf16, head dim 128, 80-query tiles over complete
// masks, writing dk and dv (AttnBwdParams::accumulate false) and adding dQ into the transposed
// accumulator (sm90::bwd_dq_transposed). Kernel: kernels/cuda/sm90/flash_bwd_sm90.cuh.
#include "kernels/cuda/sm90/flash_bwd_sm90.cuh"

namespace longattn::cuda::sm90 {
template void launch_bwd_sm90_impl<__nv_bfloat16, 128, false, 80, true, true, true>(
    const BwdArgs&, cudaStream_t, cudaMemPool_t);
}  // namespace longattn::cuda::sm90
