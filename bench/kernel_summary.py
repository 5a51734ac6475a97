#!/usr/bin/env python3
"""The issue "Hopper path" targets from an anchored kernel_bench JSON (bench/run_kernel_bench.sh).

Prints markdown for bench/RESULTS.md: per dense pass and head dim the TFLOP/s and ratio ranges
and how many rows reach 1.0x cuDNN (with the rows under it), the block-sparse rows against
FlexAttention per pattern and density, the block-sparse speed-up over our dense at the same
shape (64K, head dim 128, non-causal, for the target density), the rows whose p10-p90
spread exceeds 20% (ours or an anchor's), and the rows timed without their warm-up.

  bench/kernel_summary.py bench/results/kernel_bench_h100_sm90_v21_2026-11-27.json
"""
import argparse
import json
import sys


def k(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def dense_summary(rows, anchor="sdpa_cudnn"):
    """Per (pass, head dim): TFLOP/s range, ratio range, rows at least 1.0, rows under."""
    out = []
    for p in ("fwd", "bwd"):
        for d in sorted({r["D"] for r in rows if r["suite"] == "dense"}, reverse=True):
            rs = [r for r in rows if r["suite"] == "dense" and r["pass"] == p and r["D"] == d
                  and anchor in r.get("ratios", {})]
            if not rs:
                continue
            ratios = [r["ratios"][anchor] for r in rs]
            under = [f"{'causal' if r['causal'] else 'non-causal'} {k(r['N'])} "
                     f"{r['ratios'][anchor]:.3f}" for r in rs if r["ratios"][anchor] < 1.0]
            out.append({"pass": p, "D": d, "rows": len(rs),
                        "tflops": (min(r["tflops"] for r in rs), max(r["tflops"] for r in rs)),
                        "ratio": (min(ratios), max(ratios)),
                        "met": sum(x >= 1.0 for x in ratios), "under": under})
    return out


def sparse_summary(rows, anchor="flex"):
    """Per (pass, pattern): [(density, ratio)] in the rows' order."""
    out = {}
    for r in rows:
        if r["suite"] == "sparse" and anchor in r.get("ratios", {}):
            key = (r["pass"], r.get("pattern", "?"))
            out.setdefault(key, []).append((r["density"], r["ratios"][anchor]))
    return out


def speedup_over_dense(rows, n=65536, d=128, density=0.1, tol=0.02):
    """(pass, pattern, density) -> our dense time / our sparse time at the same shape."""
    out = []
    for p in ("fwd", "bwd"):
        dense = [r for r in rows if r["suite"] == "dense" and r["pass"] == p and r["N"] == n
                 and r["D"] == d and not r["causal"]]
        if not dense:
            continue
        for r in rows:
            if (r["suite"] == "sparse" and r["pass"] == p and r["N"] == n and r["D"] == d
                    and abs(r["density"] - density) <= tol):
                out.append((p, r.get("pattern", "?"), r["density"],
                            dense[0]["ms_median"] / r["ms_median"]))
    return out


def spreads(rows, limit=0.2):
    """Rows (ours or an anchor's) whose p10-p90 spread exceeds `limit` of their median."""
    out = []
    for r in rows:
        timed = [("longattn", r)] + list(r.get("anchors", {}).items())
        for name, t in timed:
            if "ms_median" in t and t["ms_median"] > 0:
                s = (t["ms_p90"] - t["ms_p10"]) / t["ms_median"]
                if s > limit:
                    out.append((name, r["suite"], r["pass"], r["N"], r["D"], r["causal"], s))
    return out


def short_warm_ups(result, slack=0.9):
    """Rows (ours or an anchor's) timed without their warm-up: where the row records it
    (warm_ms), less than `slack` of what the timing asked (--warm-ms, at most a third of the row
    budget); in files from before that record, repeats cut below --repeats although the median
    call would have fit them all, the mark of a first call (a plan being built) counted as the
    warm-up. Such a row ran partly boosted, not in the capped steady state."""
    timing = result.get("timing", {})
    want = min(float(timing.get("warm_ms", 0.0)),
               float(timing.get("max_seconds_per_row", 0.0)) * 1e3 / 3)
    reps_max = int(timing.get("repeats_max", 0))
    budget_ms = float(timing.get("max_seconds_per_row", 0.0)) * 1e3
    out = []
    for r in result["rows"]:
        timed = [("longattn", r)] + list(r.get("anchors", {}).items())
        for name, t in timed:
            if not isinstance(t, dict) or "ms_median" not in t:
                continue
            if "warm_ms" in t:
                if want > 0 and t["warm_ms"] < slack * want:
                    out.append((name, r["suite"], r["pass"], r["N"], r["D"], r["causal"],
                                f"{t['warm_ms']:.0f} ms of warm-up of {want:.0f}"))
            elif (reps_max > 0 and t.get("repeats", reps_max) < reps_max
                  and t["ms_median"] * reps_max < budget_ms / 3):
                out.append((name, r["suite"], r["pass"], r["N"], r["D"], r["causal"],
                            f"{t['repeats']} repeats of {reps_max} at {t['ms_median']:.3f} ms"))
    return out


def render(result, target_density=0.1):
    rows = result["rows"]
    lines = [f"GPU {result.get('gpu', '?')}, {result.get('date', '?')}: `{result.get('command', '?')}`",
             "", "| quantity | value | GPU |", "|---|---|---|"]
    gpu = "H100" if "H100" in result.get("gpu", "") else result.get("gpu", "?")
    for s in dense_summary(rows):
        lines.append(f"| dense {s['pass']} d={s['D']} | {s['tflops'][0]:.1f}-{s['tflops'][1]:.1f} "
                     f"TFLOP/s; / SDPA cuDNN {s['ratio'][0]:.2f}-{s['ratio'][1]:.2f} (at least "
                     f"1.0 in {s['met']} of {s['rows']}) | {gpu} |")
    for (p, pattern), v in sorted(sparse_summary(rows).items(),
                                  key=lambda kv: (kv[0][0] != "fwd", kv[0][1])):
        vals = "; ".join(f"{100 * dn:.0f}%: {x:.2f}" for dn, x in v)
        lines.append(f"| block-sparse {p}, {pattern} | / FlexAttention {vals} | {gpu} |")
    for p, pattern, dn, x in speedup_over_dense(rows, density=target_density):
        lines.append(f"| block-sparse over our dense, {p}, {pattern} ({dn:.4f}) | {x:.2f}x | {gpu} |")
    lines.append("")
    for s in dense_summary(rows):
        if s["under"]:
            lines.append(f"- dense {s['pass']} d={s['D']} under 1.0x cuDNN: " + ", ".join(s["under"]))
    for name, suite, p, n, d, causal, s in spreads(rows):
        lines.append(f"- spread over 20%: {name}, {suite} {p} {k(n)} d={d}"
                     f"{' causal' if causal else ''}: {100 * s:.0f}%")
    for name, suite, p, n, d, causal, why in short_warm_ups(result):
        lines.append(f"- timed without its warm-up: {name}, {suite} {p} {k(n)} d={d}"
                     f"{' causal' if causal else ''}: {why}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="merged JSON of bench/run_kernel_bench.sh")
    ap.add_argument("--density", type=float, default=0.1,
                    help="density of the speed-up over dense (default 0.1)")
    args = ap.parse_args()
    with open(args.json) as f:
        result = json.load(f)
    if "rows" not in result:
        print(f"kernel_summary: {args.json} has no rows", file=sys.stderr)
        return 2
    print(render(result, args.density))
    return 0


if __name__ == "__main__":
    sys.exit(main())
