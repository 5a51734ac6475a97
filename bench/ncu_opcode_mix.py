#!/usr/bin/env python3
"""The instruction mix of a kernel from ncu's text output, per unit of a reference opcode.

Reads files written by
  ncu --metrics sass__inst_executed_per_opcode,... --print-metric-instances details ...
(bench/results/fwd_desc_once_h200_2026-11-28/commands.sh has the commands) and prints, per file,
the warp instructions executed in all and, for the most frequent opcodes, their count per
instruction of the reference opcode (MUFU by default: one exp2 per score in the forward; HGMMA
for the backward). Only the first kernel of a file is read.

usage: ncu_opcode_mix.py [--per OPCODE] [--top N] FILE...
"""
import argparse
import re
import sys

METRIC = "sass__inst_executed_per_opcode"


def opcode_counts(text):
    """{opcode: warp instructions executed} of the first per-opcode metric in ncu's text output
    (instances printed as 'OPCODE: count;' after the metric's name); {} when there is none."""
    at = text.find(METRIC)
    if at < 0:
        return {}
    rest = text[at + len(METRIC):]
    # The instance list is the bracketed part after the metric's total; it ends at ')'.
    start = rest.find("(")
    end = rest.find(")", start)
    if start < 0 or end < 0:
        return {}
    body = re.sub(r"\s+", " ", rest[start + 1:end])
    counts = {}
    for name, value in re.findall(r"([A-Z][A-Z0-9_.]*): ([\d,]+)", body):
        counts[name] = counts.get(name, 0) + int(value.replace(",", ""))
    return counts


def mix(counts, per, top):
    """(total, [(opcode, count / count[per])...] for the top opcodes by count)."""
    if per not in counts or counts[per] == 0:
        raise ValueError(f"no {per} instructions in the counts (opcodes: {sorted(counts)})")
    ref = counts[per]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return sum(counts.values()), [(name, n / ref) for name, n in ranked]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--per", default="MUFU", help="reference opcode (default MUFU)")
    ap.add_argument("--top", type=int, default=24, help="opcodes listed (default 24)")
    args = ap.parse_args(argv)
    if args.top < 1:
        ap.error("--top must be at least 1")
    status = 0
    for path in args.files:
        with open(path) as f:
            counts = opcode_counts(f.read())
        if not counts:
            print(f"{path}: no {METRIC} instances (run ncu with --print-metric-instances details)",
                  file=sys.stderr)
            status = 1
            continue
        try:
            total, rows = mix(counts, args.per, args.top)
        except ValueError as e:
            print(f"{path}: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: {total:,} warp instructions, {total / counts[args.per]:.2f} per {args.per}")
        print("  " + ", ".join(f"{name} {r:.2f}" for name, r in rows))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
