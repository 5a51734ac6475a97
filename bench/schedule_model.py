#!/usr/bin/env python3
"""List-scheduling model of the Hopper kernels' persistent work orders under causality.

Each CTA takes the next item (forward: a query tile of one head; backward: a key block of one
head) from a counter as soon as it is free; an item costs its key (forward) or query (backward)
tiles plus a fixed cost. The model prints, for the orders the kernels use, the launch's time over
the balanced time (total work / CTAs): what the last CTAs spend alone at the end.

  python3 bench/schedule_model.py [--ctas 132] [--heads 16] [--l2-mb 50]

Orders: 'head': head by head, each head's longest items first (the backward before version 40);
'budget': groups of as many heads as half of the L2 holds, a smaller remainder last (the forward
before version 39); 'divisor': groups of forward_head_group's size (kernels/contract.cpp),
longest items first across the group's heads (both directions since versions 39 and 40); 'one':
one group of every head.
"""
import argparse
import heapq


def makespan(costs, ctas):
    free = [0.0] * ctas
    heapq.heapify(free)
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def head_group(n_pairs, per_l2, causal=True):
    """forward_head_group of kernels/contract.cpp (non-causal calls: head by head, version 45)."""
    if n_pairs <= 1 or not causal:
        return 1
    budget = min(max(per_l2, 1), n_pairs)
    if n_pairs % budget == 0:
        return budget
    for g in range(budget + 1, min(n_pairs, 2 * budget) + 1):
        if n_pairs % g == 0:
            return g
    for g in range(budget - 1, 1, -1):
        if n_pairs % g == 0:
            return g
    return 1


def grouped(lengths, heads, group):
    """Items in groups of `group` heads, longest first across each group's heads."""
    order = []
    for g0 in range(0, heads, group):
        size = min(group, heads - g0)
        for length in lengths:  # lengths sorted longest first
            order += [length] * size
    return order


def model(n, d, direction, args):
    l2_half = args.l2_mb * (1 << 20) // 2
    if direction == "fwd":  # 128-row items at d=128 (192-key tiles), 192-row at d=64 (128-key)
        rows, keys = (128, 192) if d == 128 else (192, 128)
        lengths = [-(-min(n, (i + 1) * rows) // keys) + args.fixed_fwd
                   for i in range(-(-n // rows))]
        per_pair = 4 * n * d  # K and V, 16-bit
    else:  # 128-key works; 80-query tiles at d=128, 128 at d=64
        tile = 80 if d == 128 else 128
        lengths = [-(-(n - j * 128) // tile) + args.fixed_bwd for j in range(n // 128)]
        per_pair = 8 * n * d  # Q, dO (16-bit) and dq (fp32)
    lengths.sort(reverse=True)
    per_l2 = l2_half // per_pair
    budget = min(max(per_l2, 1), args.heads)
    balanced = sum(lengths) * args.heads / args.ctas
    orders = {
        "head": [c for _ in range(args.heads) for c in lengths],
        "budget": grouped(lengths, args.heads, budget),
        "divisor": grouped(lengths, args.heads, head_group(args.heads, per_l2)),
        "one": grouped(lengths, args.heads, args.heads),
    }
    return {k: makespan(v, args.ctas) / balanced for k, v in orders.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ctas", type=int, default=132)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--l2-mb", type=int, default=50)
    ap.add_argument("--fixed-fwd", type=float, default=1.5, help="fixed tiles an item (forward)")
    ap.add_argument("--fixed-bwd", type=float, default=5.0, help="fixed tiles a work (backward)")
    args = ap.parse_args()
    if args.ctas < 1 or args.heads < 1 or args.l2_mb < 1:
        ap.error("--ctas, --heads and --l2-mb must be positive")
    print(f"# causal, {args.heads} heads on {args.ctas} CTAs, L2 {args.l2_mb} MB: "
          "time over the balanced time")
    print(f"{'pass':5} {'d':>4} {'n':>6} {'head':>7} {'budget':>7} {'divisor':>8} {'one':>7}")
    for direction in ("fwd", "bwd"):
        for d in (64, 128):
            for n in (4096, 8192, 16384, 32768, 65536):
                r = model(n, d, direction, args)
                print(f"{direction:5} {d:4} {n:6} {r['head']:7.3f} {r['budget']:7.3f} "
                      f"{r['divisor']:8.3f} {r['one']:7.3f}")


if __name__ == "__main__":
    main()
