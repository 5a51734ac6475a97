#!/usr/bin/env python3
# PyTorch anchors for the kernel benchmark (tests/gpu/bench_flash_kernels.cpp): SDPA with the
# flash (FlashAttention-2) and cuDNN backends on the same shapes, timed the same way (CUDA
# events, warm-up, median), then one table and one JSON with longattn / anchor ratios.
# Usage: kernel_anchor.py LONGATTN_JSON OUT_JSON [--command "..."]
import argparse
import datetime
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def anchor_rows(shapes, warmup, repeats):
    rows = []
    for (d, n, causal, B, H) in shapes:
        flops = 4.0 * B * H * n * n * d * (0.5 if causal else 1.0)
        shape = (B, H, n, d)
        q, k, v, g = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for q_ in (q, k, v):
            q_.requires_grad_(True)
        for impl, backend in BACKENDS.items():
            try:
                with sdpa_kernel(backend):
                    attn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    fwd = median_ms(attn, warmup, repeats)
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    bwd = median_ms(lambda: out.backward(g, retain_graph=True), warmup, repeats)
            except RuntimeError as e:  # a backend that does not take this shape
                print(f"# {impl} d={d} n={n} causal={causal}: {e}".splitlines()[0])
                continue
            for op, ms, f in (("fwd", fwd, flops), ("bwd", bwd, 2.5 * flops)):
                rows.append({"impl": impl, "op": op, "dtype": "bf16", "d": d, "n": n,
                             "causal": causal, "B": B, "H": H, "ms": round(ms, 4),
                             "tflops": round(f / (ms * 1e-3) / 1e12, 2)})
        del q, k, v, g
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("longattn_json")
    ap.add_argument("out_json")
    ap.add_argument("--command", default="")
    args = ap.parse_args()
    ours = json.load(open(args.longattn_json))
    shapes = sorted({(r["d"], r["n"], r["causal"], r["B"], r["H"]) for r in ours["rows"]})
    anchors = anchor_rows(shapes, ours["warmup"], ours["repeats"])
    key = lambda r: (r["op"], r["d"], r["n"], r["causal"])
    table = {}
    for r in ours["rows"] + anchors:
        table.setdefault(key(r), {})[r["impl"]] = r["tflops"]
    ratios = []
    print(f"{'op':4} {'d':>4} {'n':>6} {'causal':>6} {'longattn':>9} {'b64':>7} {'fa2':>7} "
          f"{'cudnn':>7} {'/fa2':>6} {'/cudnn':>7}   (TFLOP/s; b64: 64-row query tiles)")
    for k in sorted(table):
        t = table[k]
        la, fa, cu = t.get("longattn"), t.get("sdpa_flash"), t.get("sdpa_cudnn")
        b64 = t.get("longattn_b64")
        r_fa = round(la / fa, 3) if la and fa else None
        r_cu = round(la / cu, 3) if la and cu else None
        ratios.append({"op": k[0], "d": k[1], "n": k[2], "causal": k[3], "longattn": la,
                       "longattn_b64": b64, "sdpa_flash": fa, "sdpa_cudnn": cu,
                       "ratio_flash": r_fa, "ratio_cudnn": r_cu})
        fmt = lambda x, w: f"{x:>{w}.1f}" if x is not None else f"{'-':>{w}}"
        fmtr = lambda x, w: f"{x:>{w}.2f}" if x is not None else f"{'-':>{w}}"
        print(f"{k[0]:4} {k[1]:>4} {k[2]:>6} {str(k[3]):>6} {fmt(la, 9)} {fmt(b64, 7)} "
              f"{fmt(fa, 7)} {fmt(cu, 7)} {fmtr(r_fa, 6)} {fmtr(r_cu, 7)}")
    out = {"gpu": ours["gpu"], "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": args.command, "warmup": ours["warmup"], "repeats": ours["repeats"],
           "flops": "fwd 4*B*H*n*n*d (causal half), bwd 2.5x fwd",
           "rows": ours["rows"] + anchors, "ratios": ratios}
    json.dump(out, open(args.out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
