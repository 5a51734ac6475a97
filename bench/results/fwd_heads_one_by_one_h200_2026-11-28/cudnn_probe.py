# Runs SDPA's cuDNN backend (bf16, [B, N, H=16, D] memory seen as BHND) at the shapes given as
# B:N:D[:c] arguments, 30 calls each, so that ncu can profile the kernels cuDNN picks.
import sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
for arg in sys.argv[1:]:
    f = arg.split(":")
    B, N, D, causal = int(f[0]), int(f[1]), int(f[2]), len(f) > 3
    q, k, v = (torch.randn(B, N, 16, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for i in range(30):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.cuda.synchronize()
    print(arg, "done", flush=True)
