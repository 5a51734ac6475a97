#!/usr/bin/env python3
"""Summarise Hopper backward timelines (cmake -DLONGATTN_SM90_BWD_TRACE=ON; the events are
listed in kernels/cuda/sm90/flash_bwd_sm90.cuh): per file, the mean over the traced works (key
blocks 0..63 of head 0, or with LONGATTN_SM90_BWD_TRACE_BY_CTA=1 the first 8 works of CTAs 0..7,
then also by the work's place in its CTA: 0 the first wave) and their two consumer warpgroups of
the steady cycles per query tile and of each fixed piece of a work (K/V wait, first Q/dO tile,
first tile's excess over a steady one, dQ drain, dk/dv epilogue, and with by_cta the gap from
the previous work's epilogue end to this work's start), in cycles and in tiles.

usage: bwd_trace_summary.py TRACE_FILE...
"""
import sys


def summarise(path):
    with open(path) as f:
        header = f.readline().strip()
        rows = [[int(x) for x in line.split()] for line in f if line.strip()]
    by_cta = "by_cta=1" in header
    names = ["kv", "first_q", "first_excess", "dq_drain", "dkdv", "fixed", "gap"]
    pieces = {}  # (place or None, name) -> values
    steady, tiles = [], []
    ends = {}  # (cta, warpgroup, place) -> event 7 (dk/dv added)
    for r in rows:
        if r[2 + 7] != 0:
            ends[(r[0] // 8, r[1], r[0] % 8)] = r[2 + 7]
    for r in rows:
        e = r[2:]
        n = e[8]
        if n < 3 or min(e[1:8]) == 0:
            continue
        st = (e[5] - e[4]) / (n - 1)
        steady.append(st)
        tiles.append(n)
        place = r[0] % 8 if by_cta else None
        v = {"kv": e[2] - e[1], "first_q": e[3] - e[2], "first_excess": e[4] - e[3] - st,
             "dq_drain": e[6] - e[5], "dkdv": e[7] - e[6], "fixed": e[7] - e[1] - n * st}
        prev = ends.get((r[0] // 8, r[1], place - 1)) if by_cta and place > 0 else None
        if prev is not None:
            v["gap"] = e[1] - prev
        for k, x in v.items():
            pieces.setdefault((None, k), []).append(x)
            if by_cta:
                pieces.setdefault((place, k), []).append(x)
    print(f"{path}: {header}")
    if not steady:
        print("  no complete CTAs")
        return
    tile = sum(steady) / len(steady)
    print(f"  {len(steady)} warpgroup works, {sum(tiles) / len(tiles):.1f} query tiles each, "
          f"{tile:.0f} cycles per steady tile")
    places = [None] + sorted({p for p, _ in pieces if p is not None})
    for p in places:
        label = "all works" if p is None else f"place {p}"
        cells = []
        for k in names:
            v = pieces.get((p, k))
            if v:
                m = sum(v) / len(v)
                cells.append(f"{k} {m / tile:5.2f}")
        n_here = len(pieces.get((p, "kv"), []))
        print(f"  {label:10s} ({n_here:3d}) tiles: " + ", ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        summarise(path)
