#!/usr/bin/env python3
"""Summarise Hopper forward timelines (cmake -DLONGATTN_SM90_FWD_TRACE=ON builds; see
kernels/cuda/sm90/flash_fwd_sm90.cuh): per file, the mean over CTA 0's items of the steady
cycles per key tile, the o store, the Q latency, the first S tile and the gap from one item's
last P V to the next item's first S, in cycles and in key tiles, and the item's whole cost
beyond its steady tiles (from one item's last P V to the next one's, less the next item's tiles
at the steady rate: what item changes cost, wherever the o store sits).

Files ending in _span.txt hold every CTA's span in %globaltimer nanoseconds (entry, past
pdl_wait, the producer's exit, each consumer warpgroup's exit): for those it prints the launch's
span, how far apart the CTAs started and ended, and the share of the SMs' time idle before a
CTA's entry or after its exit (what the launch's start and end cost).

usage: fwd_trace_summary.py TRACE_FILE...
"""
import sys


def span_summary(path):
    """The span file's numbers: a dict, or None when it holds no CTA with an entry and an exit."""
    ctas = []
    with open(path) as f:
        f.readline()
        for line in f:
            v = [int(x) for x in line.split()]
            if len(v) != 8:
                continue
            ends = [t for t in v[5:8] if t > 0]
            if v[2] > 0 and ends:
                ctas.append((v[2], v[3], max(ends)))
    if not ctas:
        return None
    t0 = min(c[0] for c in ctas)
    t1 = max(c[2] for c in ctas)
    span = t1 - t0
    idle = sum((c[0] - t0) + (t1 - c[2]) for c in ctas)
    return {"ctas": len(ctas), "span_us": span / 1e3,
            "start_spread_us": (max(c[0] for c in ctas) - t0) / 1e3,
            "wait_us": sum(c[1] - c[0] for c in ctas if c[1] > 0) / len(ctas) / 1e3,
            "end_spread_us": (t1 - min(c[2] for c in ctas)) / 1e3,
            "idle_share": idle / (span * len(ctas)) if span > 0 else 0.0}


def load(path):
    rows = {}
    with open(path) as f:
        header = f.readline().strip()
        for line in f:
            v = [int(x) for x in line.split()]
            if len(v) == 10:
                rows[(v[0], v[1])] = v[2:]
    return header, rows


def summarise(path):
    header, rows = load(path)
    keys = ("steady", "store", "q_latency", "s0", "gap", "item_over")
    acc = {k: [] for k in keys}
    tiles = []
    for n in range(63):
        p, c, pn, cn = (rows.get((n, 0)), rows.get((n, 1)), rows.get((n + 1, 0)),
                        rows.get((n + 1, 1)))
        if not (p and c and pn and cn) or min(c[4:7]) == 0 or min(cn[:7]) == 0 or p[7] < 2:
            continue
        # (Rows of another launch, in files written before each launch cleared them. An item's o
        # may be stored after the next item is read: its last P V is what precedes it.)
        if not c[0] <= c[5] <= cn[0] <= cn[5]:
            continue
        acc["steady"].append((c[5] - c[4]) / (p[7] - 1))
        acc["store"].append(c[6] - c[5])
        acc["q_latency"].append(cn[1] - pn[1])
        acc["s0"].append(cn[4] - cn[3])
        acc["gap"].append(cn[4] - c[5])
        # (cn[5] - cn[4]) / (tiles - 1) is the next item's steady rate: its cost beyond it.
        if pn[7] >= 2:
            rate = (cn[5] - cn[4]) / (pn[7] - 1)
            acc["item_over"].append(cn[5] - c[5] - rate * pn[7])
        tiles.append(p[7])
    print(f"{path}: {header}")
    if not tiles:
        print("  no complete item pairs")
        return
    mean = {k: sum(v) / len(v) if v else float("nan") for k, v in acc.items()}
    tile = mean["steady"]
    print(f"  {len(tiles)} items, {sum(tiles) / len(tiles):.1f} key tiles each, "
          f"{tile:.0f} cycles per steady tile")
    for k in keys[1:]:
        print(f"  {k:10s} {mean[k]:8.0f} cycles = {mean[k] / tile:5.2f} tiles")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        if path.endswith("_span.txt"):
            r = span_summary(path)
            print(f"{path}: " + ("no CTA spans" if r is None else
                  f"{r['ctas']} CTAs over {r['span_us']:.1f} us; entries within "
                  f"{r['start_spread_us']:.1f} us, pdl_wait {r['wait_us']:.1f} us a CTA, exits "
                  f"within {r['end_spread_us']:.1f} us; SM time idle before entry or after exit "
                  f"{100 * r['idle_share']:.1f}%"))
        else:
            summarise(path)
