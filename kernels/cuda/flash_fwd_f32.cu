// Forward fp32-input flash attention (FMA path) instantiated for head dims 32, 64, 128 and 256.
// Kernels: kernels/cuda/flash_f32_kernel.cuh.
#include "kernels/cuda/flash_f32_kernel.cuh"

namespace longattn::cuda::flash {
template void launch_fwd_f32<32>(const FwdArgs&, cudaStream_t);
template void launch_fwd_f32<64>(const FwdArgs&, cudaStream_t);
template void launch_fwd_f32<128>(const FwdArgs&, cudaStream_t);
template void launch_fwd_f32<256>(const FwdArgs&, cudaStream_t);
}  // namespace longattn::cuda::flash
