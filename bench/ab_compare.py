#!/usr/bin/env python3
"""Compare kernel_bench variants from an A/B log.

Each line of the log is "<variant> <round> <kernel_bench table line>", as the device scripts
write them (grep of kernel_bench's printed rows with the variant and round put in front). For
every row (suite, pass, pattern, N, D, causal, density) it prints, per variant, the best time over
the rounds and the median over the rounds of the time ratio against the first variant in the same
round (> 0%: faster than the first variant). The paired per-round ratio is the number to read:
the card's clocks drift between rounds under the power limit, and a variant always timed first
or last in a round would otherwise gain or lose by its place (alternate the order).

usage: bench/ab_compare.py LOG [--base VARIANT]
"""
import argparse
import re
import statistics
from collections import OrderedDict

ROW = re.compile(r"(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*?)\s*N=(\d+)\s+H=\d+\s+D=(\d+)\s+(\S+)"
                 r"\s+dens=(\S+)\s+([\d.]+) ms")


def parse(path):
    rows = OrderedDict()  # key -> {variant: {round: ms}}
    variants = []
    with open(path) as f:
        for line in f:
            m = ROW.match(line.strip())
            if not m:
                continue
            var, rnd, suite, pas, pat, n, d, causal, dens, ms = m.groups()
            if var not in variants:
                variants.append(var)
            key = (suite, pas, pat.strip() or "-", n, d, causal, dens)
            per = rows.setdefault(key, {}).setdefault(var, {})
            per[rnd] = min(per.get(rnd, float("inf")), float(ms))
    return rows, variants


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--base", help="variant the others are compared with (default: the first)")
    args = ap.parse_args()
    rows, variants = parse(args.log)
    if not rows:
        raise SystemExit(f"{args.log}: no kernel_bench rows")
    base = args.base or variants[0]
    if base not in variants:
        raise SystemExit(f"--base {base}: not a variant of {args.log} ({', '.join(variants)})")
    others = [v for v in variants if v != base]
    head = "row".ljust(52) + f"{base:>12}" + "".join(f"{v:>22}" for v in others)
    print(head)
    print(" " * 52 + f"{'best ms':>12}" + "".join(f"{'best ms  paired':>22}" for _ in others))
    for key, per in rows.items():
        b = per.get(base, {})
        cells = f"{min(b.values()):12.3f}" if b else f"{'-':>12}"
        for v in others:
            o = per.get(v, {})
            if not o:
                cells += f"{'-':>22}"
                continue
            paired = [b[r] / o[r] - 1.0 for r in o if r in b]
            med = f"{100 * statistics.median(paired):+.1f}%" if paired else "-"
            cells += f"{min(o.values()):13.3f} {med:>8}"
        print(" ".join(key).ljust(52) + cells)


if __name__ == "__main__":
    main()
