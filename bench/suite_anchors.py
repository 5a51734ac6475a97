#!/usr/bin/env python3
"""PyTorch anchors beside `longattn bench` suites, and the merge of one GPU command's results.

Reads the JSON files that `longattn bench --json` wrote in one command (bench/run_suites_gpu.sh)
and runs, on the same GPU, shapes and dtypes:
  - dense single-rank rows: SDPA with the flash backend and with the cuDNN backend;
  - block-sparse single-rank rows that carry a block matrix (`longattn bench --mask-dir`:
    non-causal rows) with N >= --flex-min-n: FlexAttention with the identical block mask;
  - dilated rows in groups mode: the seed package's DilatedAttention written as per-segment SDPA;
  (these three are bench/anchors.py's functions, imported as a module)
  - distributed dense rows (ring, scaling suite) and the dense maxseq summary: PyTorch's
    context_parallel, from the JSON lines bench/multigpu/torch_anchors.py wrote (--cp-jsonl) on
    the same GPUs in the same command.
A single-rank fwd+bwd row gets the sum of the anchor's fwd and bwd medians.

Writes ONE JSON: the command, date, GPU and versions, the bench documents ("runs") whose rows
gain "anchors" and "ratios" (anchor ms / longattn ms: > 1 means longattn is faster), and
"headline" (the issue's numbers: longest sequences, block-sparse speed-up over dense at 10%
density, dense TFLOP/s against SDPA, weak-scaling efficiency); and a text table.

  bench/suite_anchors.py --in a.json b.json --out suites.json --table suites.txt \
      [--cp-jsonl cp.jsonl] [--command "..."] [--no-torch]
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_runs(paths):
    runs = []
    for p in paths:
        try:
            with open(p) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            runs.append({"file": p, "error": "%s: %s" % (type(e).__name__, e), "rows": []})
            continue
        doc["file"] = os.path.basename(p)
        if "maxseq" not in doc and any(r.get("suite") == "maxseq" for r in doc.get("rows", [])):
            doc["maxseq"] = maxseq_from_rows(doc)
        runs.append(doc)
    return runs


def maxseq_from_rows(run):
    """A run cut short (killed, or a rank lost) has its trial rows but no maxseq summary: the
    largest exact passing N per (variant, mode, pass)."""
    found = {}
    for r in run.get("rows", []):
        if r.get("suite") != "maxseq":
            continue
        k = (r["variant"], r["mode"], r["pass"])
        s = found.setdefault(k, {"variant": r["variant"], "mode": r["mode"], "pass": r["pass"],
                                 "causal": r["causal"], "B": r["B"], "H": r["H"], "D": r["D"],
                                 "dtype": r["dtype"], "ranks": r["ranks"], "largest_n": 0,
                                 "stopped_by": "run cut short"})
        passed = r.get("status") in ("ok", "time") and "median_ms" in r and r.get("wrong", 1) == 0
        if passed and r["N"] > s["largest_n"]:
            s.update(largest_n=r["N"], time_ms=r["median_ms"], peak_bytes=r.get("peak_bytes"))
    return list(found.values())


def load_jsonl(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def is_single_ok(r):
    return r.get("status") == "ok" and r.get("mode") == "single" and "median_ms" in r


def anchors_for(r, flex_min_n):
    """Anchor names for one longattn row (single rank, 16-bit dtypes: what the anchors run).
    The longest-sequence trials get none: at a million tokens one anchor call takes a minute."""
    if not is_single_ok(r) or r.get("dtype") not in ("bf16", "fp16") or r.get("suite") == "maxseq":
        return []
    v = r.get("variant", "")
    if v == "dense":
        return ["sdpa_flash", "sdpa_cudnn"]
    if v.startswith("block_sparse") and r.get("mask_file") and r["N"] >= flex_min_n:
        return ["flex"]
    if v == "dilated/groups":
        return ["dilated_sdpa"]
    return []


def time_anchor(anchors, torch, timer, np, name, row):
    """One anchor on one row; fwd+bwd as the sum of the fwd and bwd medians."""
    if row["pass"] == "fwd+bwd":
        parts = [time_anchor(anchors, torch, timer, np, name, dict(row, **{"pass": p}))
                 for p in ("fwd", "bwd")]
        for p in parts:
            if "error" in p:
                return p
        return {"ms_median": sum(p["ms_median"] for p in parts),
                "ms_p10": sum(p["ms_p10"] for p in parts),
                "ms_p90": sum(p["ms_p90"] for p in parts),
                "repeats": min(p["repeats"] for p in parts), "how": "sum of fwd and bwd medians"}
    try:
        a = anchors.run_anchor(name, torch, timer, row, np)
    except Exception as e:  # an anchor that fails is recorded; the others go on
        a = {"error": "%s: %s" % (type(e).__name__, str(e).split("\n")[0][:300])}
    torch.cuda.empty_cache()
    return a


def run_single_anchors(runs, args, out_meta):
    try:
        sys.path.insert(0, HERE)
        import anchors  # bench/anchors.py: SDPA, FlexAttention and per-segment SDPA anchors
        import numpy as np
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
    except Exception as e:
        out_meta["anchors_error"] = "%s: %s" % (type(e).__name__, e)
        print("suite_anchors: single-GPU anchors skipped (%s)" % out_meta["anchors_error"],
              file=sys.stderr)
        return
    out_meta["torch"] = torch.__version__
    out_meta["torch_cuda"] = torch.version.cuda
    out_meta["torch_cudnn"] = torch.backends.cudnn.version()
    out_meta["torch_gpu"] = torch.cuda.get_device_name(0)
    timer = anchors.Timer(torch, args.warmup, args.repeats, args.max_seconds)
    # The shapes (N >= --flex-min-n) first, in case the deadline comes.
    work = [(r, name) for run in runs for r in run.get("rows", [])
            for name in anchors_for(r, args.flex_min_n)]
    work.sort(key=lambda w: w[0]["N"] < args.flex_min_n)
    start = time.monotonic()
    for r, name in work:
        if args.deadline and time.monotonic() - start > args.deadline:
            r.setdefault("anchors", {})[name] = {"error": "not run: --deadline reached"}
            continue
        a = time_anchor(anchors, torch, timer, np, name, r)
        if "ms_median" in a:
            a["tflops"] = r["flops"] / (a["ms_median"] * 1e-3) / 1e12
            r.setdefault("ratios", {})[name] = a["ms_median"] / r["median_ms"]
        r.setdefault("anchors", {})[name] = a
        print("anchor %-12s %-28s N=%-7d B=%d %-7s %s" % (
            name, r["variant"], r["N"], r["B"], r["pass"],
            ("%.3f ms (ours %.3f)" % (a["ms_median"], r["median_ms"]))
            if "ms_median" in a else a["error"]), file=sys.stderr, flush=True)


def attach_context_parallel(runs, cp_rows):
    """context_parallel rows (torch_anchors.py) beside our dense distributed rows and maxseq."""
    cp = [c for c in cp_rows if c.get("impl") == "context_parallel" and c.get("status") == "ok"]
    failed = [c for c in cp_rows if c.get("impl") == "context_parallel" and c.get("status") != "ok"
              and c.get("type") != "header"]
    for run in runs:
        for r in run.get("rows", []):
            if r.get("variant") != "dense" or r.get("mode") not in ("ring",) or r.get("status") != "ok":
                continue
            for c in cp:
                if (c["seq_len"] == r["N"] and c["gpus"] == r["ranks"] and
                        bool(c["causal"]) == bool(r["causal"]) and c.get("batch", 1) == r["B"] and
                        c.get("heads") == r["H"] and c.get("head_dim") == r["D"]):
                    if r["pass"] == "fwd":
                        ms, tf = c["fwd_s"] * 1e3, c["fwd_tflops_per_gpu"]
                    elif r["pass"] == "fwd+bwd" and "fwd_bwd_s" in c:
                        ms, tf = c["fwd_bwd_s"] * 1e3, c["fwd_bwd_tflops_per_gpu"]
                    else:
                        continue
                    r.setdefault("anchors", {})["context_parallel"] = {
                        "ms_median": ms, "tflops": tf, "peak_bytes": c.get("peak_bytes_per_gpu"),
                        "how": "bench/multigpu/torch_anchors.py, median of its repeats"}
                    r.setdefault("ratios", {})["context_parallel"] = ms / r["median_ms"]
        for s in run.get("maxseq", []):
            if s.get("variant") != "dense" or s.get("mode") != "ring":
                continue
            for c in cp + failed:
                if c.get("seq_len") == s.get("largest_n") and c.get("gpus") == s.get("ranks"):
                    s.setdefault("anchors", {})["context_parallel_" + c.get("pass", "")] = c


def headline(runs):
    h = {"maxseq": [], "sparse_speedup_64k": [], "dense_vs_sdpa": [], "weak_efficiency": []}
    for run in runs:
        for s in run.get("maxseq", []):
            h["maxseq"].append({k: s.get(k) for k in ("variant", "mode", "ranks", "pass", "causal",
                                                      "H", "D", "dtype", "largest_n", "time_ms",
                                                      "peak_bytes", "stopped_by", "stopped_at")})
        for r in run.get("rows", []):
            if r.get("status") != "ok":
                continue
            v = r.get("variant", "")
            if (r.get("suite") == "sparsity" and v.startswith("block_sparse") and r["N"] == 65536
                    and abs(r.get("sparsity_ratio", 0) - 0.1) < 1e-9):
                h["sparse_speedup_64k"].append({
                    "variant": v, "pass": r["pass"], "density": r.get("density"),
                    "speedup_vs_dense": r.get("speedup_vs_dense"), "ms": r["median_ms"],
                    "flex_ratio": r.get("ratios", {}).get("flex"), "H": r["H"], "D": r["D"]})
            if v == "dense" and r.get("mode") == "single" and "ratios" in r:
                h["dense_vs_sdpa"].append({
                    "suite": r["suite"], "N": r["N"], "B": r["B"], "H": r["H"], "D": r["D"],
                    "causal": r["causal"], "pass": r["pass"], "tflops": r["tflops"],
                    "ratio_sdpa_flash": r["ratios"].get("sdpa_flash"),
                    "ratio_sdpa_cudnn": r["ratios"].get("sdpa_cudnn")})
            if ("weak" in r.get("group", "").split(",") and r.get("mode") != "single"
                    and "efficiency" in r):
                h["weak_efficiency"].append({
                    "variant": v, "mode": r["mode"], "ranks": r["ranks"], "local_n": r.get("local_n"),
                    "causal": r["causal"], "pass": r["pass"], "efficiency": r["efficiency"],
                    "ratio_context_parallel": r.get("ratios", {}).get("context_parallel")})
    return h


ANCHOR_COLUMNS = ["sdpa_flash", "sdpa_cudnn", "flex", "dilated_sdpa", "context_parallel"]


def fmt(x, spec, dash="-"):
    return dash if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table_text(doc):
    lines = ["# longattn bench suites on %s, %s" % (doc.get("gpu", "?"), doc["date"]),
             "# command: %s" % doc["command"],
             "# torch %s; ratio = anchor ms / longattn ms (> 1: longattn faster)" %
             doc.get("torch", "(not run: %s)" % doc.get("anchors_error", "?"))]
    head = ("%-8s %-34s %-24s %5s %8s %2s %3s %4s %-6s %-7s %10s %8s %6s %-7s" %
            ("suite", "variant", "mode", "ranks", "N", "B", "H", "D", "causal", "pass", "ms",
             "TFLOP/s", "#wrong", "status"))
    head += "".join("%24s" % (a + " ms(x)") for a in ANCHOR_COLUMNS)
    for run in doc["runs"]:
        lines.append("")
        lines.append("# run %s: %s" % (run.get("file", "?"), run.get("command", run.get("error", ""))))
        lines.append(head)
        for r in run.get("rows", []):
            line = ("%-8s %-34s %-24s %5d %8d %2d %3d %4d %-6s %-7s %10s %8s %6s %-7s" % (
                r.get("suite", "")[:8], r.get("variant", "")[:34],
                (r.get("mode", "") + ("/" + r["sharding"] if r.get("mode", "").endswith("ring") else ""))[:24],
                r.get("ranks", 0), r.get("N", 0), r.get("B", 0), r.get("H", 0), r.get("D", 0),
                "yes" if r.get("causal") else "no", r.get("pass", ""),
                fmt(r.get("median_ms"), ".3f"),
                fmt(r.get("tflops"), ".1f" if r.get("tflops", 0) >= 1 else ".4f"),
                str(r["wrong"]) if "wrong" in r else "-", r.get("status", "")))
            for a in ANCHOR_COLUMNS:
                x = r.get("anchors", {}).get(a)
                if x is None:
                    line += "%24s" % "-"
                elif "ms_median" not in x:
                    line += "%24s" % "error"
                else:
                    line += "%24s" % ("%.3f(%.2f)" % (x["ms_median"], r["ratios"][a]))
            lines.append(line)
        for s in run.get("maxseq", []):
            lines.append("# maxseq %s %s x%d %s%s H%s D%s %s: largest N %s%s; stopped by %s%s" % (
                s["variant"], s["mode"], s["ranks"], s["pass"], " causal" if s.get("causal") else "",
                s.get("H"), s.get("D"), s.get("dtype"), s.get("largest_n"),
                (" in %.2f s, peak %.2f GiB/rank" % (s["time_ms"] / 1e3, s["peak_bytes"] / 2**30))
                if s.get("largest_n") else "", s.get("stopped_by"),
                (" at N %s" % s["stopped_at"]) if "stopped_at" in s else ""))
    h = doc["headline"]
    lines.append("")
    lines.append("# headline")
    for s in h["maxseq"]:
        lines.append("#   longest %s %s on %s rank(s), %s: N = %s" % (
            s["variant"], s["mode"], s["ranks"], s["pass"], s["largest_n"]))
    for s in h["sparse_speedup_64k"]:
        lines.append("#   64K %s %s: density %.3f, %.2fx over dense%s" % (
            s["variant"], s["pass"], s["density"] or 0, s["speedup_vs_dense"] or 0,
            (", %.2fx FlexAttention" % s["flex_ratio"]) if s["flex_ratio"] else ""))
    lines.append("# the issue's goals (met / not met / not measured here)")
    for text, ok in goals(h):
        lines.append("#   %-13s %s" % (ok, text))
    return "\n".join(lines) + "\n"


def goals(h):
    """The benchmark issue's targets against what this command measured."""
    out = []

    def longest(pred):
        vals = [s["largest_n"] for s in h["maxseq"] if pred(s)]
        return max(vals) if vals else None

    def verdict(value, goal):
        return "not measured" if value is None else ("met" if value >= goal else "not met")

    one = longest(lambda s: s["variant"] == "dense" and s["mode"] == "single" and
                  s["pass"] == "fwd+bwd" and s.get("H") == 16 and s.get("D") == 128)
    out.append(("dense fwd+bwd on one GPU (h16 d128): %s tokens, goal >= 1M" % one,
                verdict(one, 1 << 20)))
    four = longest(lambda s: s["variant"] == "dense" and s["mode"] == "ring" and
                   s["ranks"] == 4 and s["pass"] == "fwd+bwd")
    out.append(("dense ring fwd+bwd on 4 GPUs: %s tokens, goal >= 4M" % four,
                verdict(four, 1 << 22)))
    for mode in ("block_sparse_ring", "dilated"):
        v = longest(lambda s, m=mode: s["mode"] == m and s["ranks"] == 4)
        out.append(("%s on 4 GPUs: %s tokens, goal >= 16M" % (mode, v), verdict(v, 1 << 24)))
    for s in h["sparse_speedup_64k"]:
        x = s["speedup_vs_dense"]
        out.append(("64K %s %s speed-up over dense at density %.3f: %.2fx, goal >= 9.5x" % (
            s["variant"], s["pass"], s["density"] or 0, x or 0), verdict(x, 9.5)))
    if not h["sparse_speedup_64k"]:
        out.append(("64K block-sparse speed-up over dense at 10%: goal >= 9.5x", "not measured"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in", dest="inputs", nargs="+", required=True,
                    help="JSON files of longattn bench --json")
    ap.add_argument("--out", required=True, help="the merged JSON")
    ap.add_argument("--table", help="also write the text table here")
    ap.add_argument("--cp-jsonl", help="torch_anchors.py rows (context_parallel) to attach")
    ap.add_argument("--command", default="", help="the command that produced the inputs")
    ap.add_argument("--flex-min-n", type=int, default=65536,
                    help="FlexAttention anchors only at N >= this (each new shape compiles)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=1.0, help="time per anchor row")
    ap.add_argument("--no-torch", action="store_true", help="merge only, run no anchor")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds after which no further anchor starts (0: none)")
    args = ap.parse_args()

    runs = load_runs(args.inputs)
    doc = {"program": "bench/suite_anchors.py", "command": args.command or " ".join(sys.argv),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "python": platform.python_version(), "runs": runs}
    for run in runs:
        for d in run.get("devices", []):
            doc.setdefault("gpu", d.get("device"))
    if args.no_torch:
        doc["anchors_error"] = "not run (--no-torch)"
    else:
        run_single_anchors(runs, args, doc)
    cp_rows = load_jsonl(args.cp_jsonl)
    if cp_rows:
        doc["context_parallel_header"] = [c for c in cp_rows if c.get("type") == "header"]
        attach_context_parallel(runs, cp_rows)
    doc["headline"] = headline(runs)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    text = table_text(doc)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
