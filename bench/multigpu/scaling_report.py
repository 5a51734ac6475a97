#!/usr/bin/env python3
"""Merges the rows of multigpu_bench (longattn) and torch_anchors.py (PyTorch) into one JSON
with the GPU, date and command, and prints a table.

Per row (scaling, GPUs, total tokens, causal, pass):
  efficiency  per-GPU TFLOP/s over the same implementation's single-GPU TFLOP/s at the local
              length (N / GPUs), same causality and pass (the P=1 row of that length);
  exposed     longattn only: time of the ring minus the time of the same ring without
              transfers (multigpu_bench's twin run), i.e. communication not hidden by compute;
  vs_*        longattn's per-GPU TFLOP/s over each anchor's on the same case.
FLOPs: forward 4*B*H*D*pairs (causal: N(N+1)/2 pairs), backward 2.5x forward.
"""
import argparse
import datetime
import json


def read_rows(path):
    headers, rows = [], []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                r = json.loads(line)
                (headers if r.get("type") == "header" else rows).append(r)
    except FileNotFoundError:
        pass
    return headers, rows


def key(r):
    return (r["scaling"], r["gpus"], r["seq_len"], r["causal"], r["pass"])


def tflops(r, what):
    return r.get("fwd_tflops_per_gpu") if what == "fwd" else r.get("fwd_bwd_tflops_per_gpu")


def single_gpu_row(rows, impl, L, causal, what):
    """The impl's one-GPU row at L tokens (any scaling), measured for `what`."""
    base_impls = {"longattn": ("longattn",), "context_parallel": ("sdpa",),
                  "torch_ring": ("sdpa",), "sdpa": ("sdpa",)}[impl]
    for r in rows:
        if (r.get("impl") in base_impls and r["gpus"] == 1 and r["seq_len"] == L
                and r["causal"] == causal and r.get("status") == "ok" and tflops(r, what)):
            return r
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--theirs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    h1, ours = read_rows(a.ours)
    h2, theirs = read_rows(a.theirs)
    rows = ours + theirs
    for r in rows:
        if r.get("status") != "ok":
            continue
        L = r["seq_len"] // r["gpus"]
        for what in ("fwd", "fwd_bwd"):
            t = tflops(r, what)
            base = single_gpu_row(rows, r["impl"], L, r["causal"], what) if t else None
            if base:
                r["%s_efficiency" % what] = t / tflops(base, what)
                r["%s_single_gpu_tflops_at_local_len" % what] = tflops(base, what)
    by_key = {}
    for r in rows:
        if r.get("status") == "ok":
            by_key.setdefault(key(r), {})[r["impl"]] = r
    for k, impls in by_key.items():
        mine = impls.get("longattn")
        if not mine:
            continue
        for anchor in ("context_parallel", "torch_ring", "sdpa"):
            other = impls.get(anchor)
            if not other:
                continue
            for what in ("fwd", "fwd_bwd"):
                if tflops(mine, what) and tflops(other, what):
                    mine["%s_vs_%s" % (what, anchor)] = tflops(mine, what) / tflops(other, what)

    devices = next((h.get("devices") for h in h1 if h.get("devices")), [])
    gpu = devices[0]["name"] if devices else next((h.get("device") for h in h2), "unknown")
    result = {
        "benchmark": "multi-GPU scaling of dense ring attention (longattn) with PyTorch anchors",
        "gpu": gpu,
        "gpus_max": max([r["gpus"] for r in rows] or [0]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": a.command,
        "longattn_headers": h1,
        "pytorch_headers": h2,
        "flops": "forward 4*B*H*D*pairs (causal N(N+1)/2 pairs), backward 2.5x forward",
        "efficiency": "per-GPU TFLOP/s / same implementation's 1-GPU TFLOP/s at N/GPUs tokens",
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)

    lines = ["# %s" % a.command, "# %s, %s" % (gpu, result["date"]),
             "%-6s %4s %8s %7s %-7s %-16s %9s %9s %6s %6s %9s %9s %8s %8s" % (
                 "scale", "gpus", "N", "N/gpu", "mask", "impl", "fwd_ms", "fwd_TF/g",
                 "f_eff", "fb_eff", "fwdbwd_ms", "fb_TF/g", "exposed", "peak_GiB"),
             "%-6s %4s %8s %7s %-7s %-16s %9s %9s %6s %6s %9s %9s %8s %8s" % (
                 "", "", "tokens", "tokens", "", "", "ms", "TFLOP/s", "", "", "ms", "TFLOP/s",
                 "ms", "GiB")]
    order = {"longattn": 0, "context_parallel": 1, "torch_ring": 2, "sdpa": 3}
    def sort_key(r):
        length = r["seq_len"] // r["gpus"] if r["scaling"] == "weak" else r["seq_len"]
        return (r["scaling"], length, r["causal"], r["gpus"], r["pass"], order.get(r["impl"], 9))
    for r in sorted(rows, key=sort_key):
        mask = "causal" if r["causal"] else "full"
        head = "%-6s %4d %8d %7d %-7s %-16s" % (r["scaling"], r["gpus"], r["seq_len"],
                                                 r["seq_len"] // r["gpus"], mask, r["impl"])
        if r.get("status") != "ok":
            lines.append(head + " " + r.get("status", "?"))
            continue
        fmt = lambda x, s="%9.1f": (s % x) if x is not None else " " * (len(s % 0.0))
        exposed = r.get("fwd_bwd_exposed_comm_s", r.get("fwd_exposed_comm_s"))
        lines.append(head + " " + " ".join([
            fmt(r["fwd_s"] * 1e3), fmt(r["fwd_tflops_per_gpu"]),
            fmt(r.get("fwd_efficiency"), "%6.3f"), fmt(r.get("fwd_bwd_efficiency"), "%6.3f"),
            fmt(r["fwd_bwd_s"] * 1e3 if "fwd_bwd_s" in r else None),
            fmt(r.get("fwd_bwd_tflops_per_gpu")),
            fmt(exposed * 1e3 if exposed is not None else None, "%8.1f"),
            fmt(r.get("peak_bytes_per_gpu", 0) / 2**30, "%8.2f")]))
    ratios = []
    for r in rows:
        if r.get("impl") == "longattn" and r.get("status") == "ok":
            parts = ["%s %.2fx" % (k, v) for k, v in r.items() if "_vs_" in k]
            if parts:
                ratios.append("%s %d GPU N=%d %s: %s" % (r["scaling"], r["gpus"], r["seq_len"],
                                                         "causal" if r["causal"] else "full",
                                                         ", ".join(parts)))
    lines += ["", "# longattn per-GPU TFLOP/s over the anchors (same case, same command):"] + ratios
    text = "\n".join(lines) + "\n"
    with open(a.table, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
