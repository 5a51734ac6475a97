#!/usr/bin/env python3
"""The instruction mix of a kernel from ncu's text output, per unit of a reference opcode.

Reads files written by
  ncu --metrics sass__inst_executed_per_opcode,... --print-metric-instances details ...
(bench/results/fwd_desc_once_h200_2026-11-28/commands.sh has the commands) and prints, per file,
the warp instructions executed in all and, for the most frequent opcodes, their count per
instruction of the reference opcode (MUFU by default: one exp2 per score in the forward; HGMMA
for the backward). The first kernel of a file is read, or with --kernel REGEX the first whose
name matches (a file profiling several kernels, such as cuDNN's backward: its dot, bprop and
convert kernels).

usage: ncu_opcode_mix.py [--per OPCODE] [--top N] [--kernel REGEX] FILE...
"""
import argparse
import re
import sys

METRIC = "sass__inst_executed_per_opcode"
# A kernel's heading in ncu's text output: its name, then grid and block, "(132, 1, 1)x(384, 1, 1)".
HEADING = re.compile(r"^  (\S.*?) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", re.M)


def kernel_section(text, pattern):
    """The part of ncu's text output under the first kernel heading whose name matches the
    regular expression `pattern` (up to the next heading); None when no heading matches."""
    heads = list(HEADING.finditer(text))
    for i, h in enumerate(heads):
        if re.search(pattern, h.group(1)):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            return text[h.start():end]
    return None


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
    ap.add_argument("--kernel", default=None,
                    help="regular expression: the first kernel whose name matches (default: the "
                         "file's first kernel)")
    args = ap.parse_args(argv)
    if args.top < 1:
        ap.error("--top must be at least 1")
    status = 0
    for path in args.files:
        with open(path) as f:
            text = f.read()
        if args.kernel is not None:
            section = kernel_section(text, args.kernel)
            if section is None:
                print(f"{path}: no kernel matches {args.kernel!r}", file=sys.stderr)
                status = 1
                continue
            text = section
        counts = opcode_counts(text)
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
