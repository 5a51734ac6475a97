# Runs SDPA's cuDNN backend (bf16, [B, N, H=16, D] memory seen as BHND) at the shapes given as
# B:N:D[:flags] arguments (flags: c causal, b the backward too), 30 calls each, so that ncu can
# profile the kernels cuDNN picks.
import sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
for arg in sys.argv[1:]:
    f = arg.split(":")
    B, N, D = int(f[0]), int(f[1]), int(f[2])
    flags = f[3] if len(f) > 3 else ""
    causal, bwd = "c" in flags, "b" in flags
    q, k, v = (torch.randn(B, N, 16, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               .requires_grad_(bwd) for _ in range(3))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for i in range(30):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            if bwd:
                torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
    torch.cuda.synchronize()
    print(arg, "done", flush=True)
