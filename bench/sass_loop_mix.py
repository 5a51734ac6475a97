#!/usr/bin/env python3
"""The steady loops of a kernel's SASS and their instruction mix, and where two builds differ.

Reads `cuobjdump -sass` output (one kernel's, or a file of several: --kernel REGEX picks the
first function whose name matches) and finds its loops: each backward branch (BRA to a lower
address) and the instructions from its target to it. It prints each innermost loop (one holding
no other) with at least --min-hgmma HGMMA instructions (default 1; --all: the enclosing loops
too): its range, instruction count, spill loads and stores (LDL, STL) and R2UR moves (the
register-to-uniform moves that wgmma descriptors need when the loop's stage arithmetic left the
uniform datapath). With two files it compares the innermost loops with the most HGMMA of each
(the steady state's), opcode by opcode: a change meant to touch only a kernel's prologue can
show here that it changed the steady loop too.

usage: sass_loop_mix.py [--kernel REGEX] [--min-hgmma N] [--all] A.sass [B.sass]
Exit status 1 when a file has no function matching --kernel or no loop with HGMMA.
"""
import argparse
import collections
import re
import sys

LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
FUNCTION = re.compile(r"^\s*Function : (\S+)")
BRANCH = re.compile(r"\bBRA\s+(?:`\(.*?\)\s*)?0x([0-9a-f]+)")


def functions(text):
    """{name: [(address, instruction text)]} of each function in cuobjdump -sass output (one
    unnamed function, "", when the text has no Function headings)."""
    out, name = collections.OrderedDict(), ""
    for line in text.splitlines():
        m = FUNCTION.match(line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = LINE.match(line)
        if m:
            out.setdefault(name, []).append((int(m.group(1), 16), m.group(2)))
    return out


def opcode(instruction):
    """The opcode without its predicate and modifiers: "@!P0 HGMMA.64x192x16.F32" -> "HGMMA"."""
    text = re.sub(r"^@!?U?P[0-9T]\s+", "", instruction.strip())
    return text.split()[0].split(".")[0] if text else ""


def loops(code):
    """Each backward branch's loop: (first address, branch address, [(address, instruction)])."""
    out = []
    for addr, ins in code:
        m = BRANCH.search(ins)
        if m and int(m.group(1), 16) < addr:
            first = int(m.group(1), 16)
            out.append((first, addr, [x for x in code if first <= x[0] <= addr]))
    return out


def innermost(found):
    """The loops of `found` ((first, last, body) triples) that hold no other loop."""
    return [x for x in found
            if not any(y is not x and x[0] <= y[0] and y[1] <= x[1] for y in found)]


def mix(body):
    return collections.Counter(opcode(ins) for _, ins in body)


def pick(text, pattern):
    funcs = functions(text)
    for name, code in funcs.items():
        if pattern is None or re.search(pattern, name):
            return name, code
    return None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", help="regular expression for the function's name")
    ap.add_argument("--min-hgmma", type=int, default=1)
    ap.add_argument("--all", action="store_true", help="print the enclosing loops too")
    ap.add_argument("files", nargs="+")
    args = ap.parse_intermixed_args(argv)
    if len(args.files) > 2:
        ap.error("one or two files")
    best = []
    for path in args.files:
        with open(path) as f:
            name, code = pick(f.read(), args.kernel)
        if code is None:
            print(f"{path}: no function matches {args.kernel!r}", file=sys.stderr)
            return 1
        whole = mix(code)
        print(f"{path}: {name or '(one function)'}: {len(code)} instructions, "
              f"{whole['HGMMA']} HGMMA, {whole['STL'] + whole['LDL']} spill loads and stores")
        every = loops(code)
        inner = innermost(every)
        found = [(mix(b)["HGMMA"], first, last, b) for first, last, b in
                 (every if args.all else inner)]
        found = [x for x in found if x[0] >= args.min_hgmma]
        if not found:
            print(f"{path}: no loop with {args.min_hgmma} or more HGMMA", file=sys.stderr)
            return 1
        for n_h, first, last, body in found:
            c = mix(body)
            print(f"  loop {first:#x}-{last:#x}: {len(body)} instructions, {n_h} HGMMA, "
                  f"{c['STL'] + c['LDL']} LDL/STL, {c['R2UR']} R2UR")
        steady = [(mix(b)["HGMMA"], b) for _, _, b in inner]
        best.append(mix(max(steady, key=lambda x: (x[0], len(x[1])))[1]))
    if len(best) == 2:
        a, b = best
        keys = sorted(set(a) | set(b), key=lambda k: (-(a[k] + b[k]), k))
        diff = [f"{k} {a[k]}/{b[k]}" for k in keys if a[k] != b[k]]
        print(f"innermost loops with the most HGMMA, {sum(a.values())} / {sum(b.values())} "
              f"instructions; "
              f"differing opcodes (first/second): {', '.join(diff) if diff else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
