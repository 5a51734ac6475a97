# One SDPA forward shape through a chosen backend, a few calls (for ncu)
import sys, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
n, d, causal, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
q, k, v = (torch.randn(1, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
with sdpa_kernel([be]):
    for _ in range(4):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
torch.cuda.synchronize()
