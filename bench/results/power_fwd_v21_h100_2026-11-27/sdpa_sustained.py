# cuDNN SDPA forward (inputs without grad, as the anchors), then forward+backward, each warmed up
# (plan built) and then sustained for `secs` seconds; prints ms per call and wall-clock marks
import sys, time, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
n, d, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
F = torch.nn.functional.scaled_dot_product_attention
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    for phase in ("fwd", "fwdbwd"):
        grad = phase == "fwdbwd"
        q, k, v = (torch.randn(1, 16, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad) for _ in range(3))
        go = torch.randn(1, 16, n, d, device="cuda", dtype=torch.bfloat16)
        def step():
            o = F(q, k, v)
            if grad:
                q.grad = k.grad = v.grad = None
                o.backward(go)
        for _ in range(20): step()
        torch.cuda.synchronize()
        t0 = time.time(); print(f"mark {phase}_start {t0:.3f}", flush=True)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        calls = 0
        e0.record()
        while time.time() - t0 < secs:
            for _ in range(10):
                step(); calls += 1
            torch.cuda.synchronize()
        e1.record(); torch.cuda.synchronize()
        print(f"mark {phase}_end {time.time():.3f} calls {calls} ms_per_call {e0.elapsed_time(e1)/calls:.4f}", flush=True)
