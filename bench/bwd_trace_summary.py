#!/usr/bin/env python3
"""Summarise Hopper backward timelines (cmake -DLONGATTN_SM90_BWD_TRACE=ON; the events are
listed in kernels/cuda/sm90/flash_bwd_sm90.cuh): per file, the mean over the traced CTAs (key
blocks 0..63 of head 0) and their two consumer warpgroups of the steady cycles per query tile and
of each fixed piece of a CTA (K/V load, first Q/dO tile, first tile's excess over a steady one,
dQ drain, dk/dv epilogue), in cycles and in tiles.

usage: bwd_trace_summary.py TRACE_FILE...
"""
import sys


def summarise(path):
    with open(path) as f:
        header = f.readline().strip()
        rows = [[int(x) for x in line.split()] for line in f if line.strip()]
    pieces = {"kv": [], "first_q": [], "first_excess": [], "dq_drain": [], "dkdv": [],
              "fixed": []}
    steady, tiles = [], []
    for r in rows:
        e = r[2:]
        n = e[8]
        if n < 3 or min(e[1:8]) == 0:
            continue
        st = (e[5] - e[4]) / (n - 1)
        steady.append(st)
        tiles.append(n)
        pieces["kv"].append(e[2] - e[1])
        pieces["first_q"].append(e[3] - e[2])
        pieces["first_excess"].append(e[4] - e[3] - st)
        pieces["dq_drain"].append(e[6] - e[5])
        pieces["dkdv"].append(e[7] - e[6])
        pieces["fixed"].append(e[7] - e[1] - n * st)
    print(f"{path}: {header}")
    if not steady:
        print("  no complete CTAs")
        return
    tile = sum(steady) / len(steady)
    print(f"  {len(steady)} warpgroups, {sum(tiles) / len(tiles):.1f} query tiles each, "
          f"{tile:.0f} cycles per steady tile")
    for k, v in pieces.items():
        m = sum(v) / len(v)
        print(f"  {k:13s} {m:8.0f} cycles = {m / tile:5.2f} tiles")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        summarise(path)
