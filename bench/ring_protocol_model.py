#!/usr/bin/env python3
"""Model of the Hopper forward's K/V ring protocol for walks with blank tiles (deadlock check).

One producer fills a ring of kS stages (separate K and V buffers, each refilled only once every
consumer warpgroup has released it), three consumer warpgroups walk the same tiles, each computing
only the tiles it sees (bit c of a tile) and skipping the others, optionally taking turns round
robin (ping-pong). A consumer follows the forward's order: QK^T of a tile together with P V of its
previous one, so it holds that tile's V stage until its next tile. Random walks over the union of
two mask rows' lists (the layout of kernels/cuda/sm90 with three warpgroups over two rows) are
run with and without the rule that a warpgroup issues its pending P V before it skips (the
union walk of bench/results/fwd_union_d64_2026-11-28.patch, run 264), and with the lazy rule of run
265 (the P V held while the next tile can load without its stage, issued at the blank kS - 1 tiles
past it); the model reports the walks that deadlock under each. usage: bench/ring_protocol_model.py [--trials N] [--stages S] [--seed X]
"""
import argparse
import random

W = 3  # consumer warpgroups


def run(walk, stages, pingpong, pv_before_skip):
    """True when the walk completes (every tile released by every warpgroup), False on deadlock.

    walk: per tile, the bits of the warpgroups that see it. Each agent is a generator that yields
    while it waits; a round of all agents that changes no shared state is a deadlock."""
    n = len(walk)
    last = [max([i for i in range(n) if walk[i] >> c & 1], default=-1) for c in range(W)]
    full_k, full_v = [False] * n, [False] * n  # tile i loaded into its stage
    rel_k, rel_v = [0] * n, [0] * n  # warpgroups that released tile i's stage
    turn = [0]  # turns taken so far, all warpgroups (round robin when pingpong)

    def producer():
        for i in range(n):
            while i >= stages and rel_k[i - stages] < W:
                yield
            full_k[i] = True
            while i >= stages and rel_v[i - stages] < W:
                yield
            full_v[i] = True

    def consumer(c):
        taken = [0]

        def take_turn():
            while pingpong and turn[0] != taken[0] * W + c:
                yield
            turn[0] += 1
            taken[0] += 1

        def wait(flags, i):
            while not flags[i]:
                yield

        def skip(i):  # a tile this warpgroup does not see: one turn, its releases
            yield from take_turn()
            rel_k[i] += 1
            yield from wait(full_v, i)
            rel_v[i] += 1

        def blank(i):
            return not walk[i] >> c & 1

        if n == 0:
            return
        i = 0
        yield from wait(full_k, i)
        while blank(i) and i < n - 1:  # leading blanks
            yield from skip(i)
            i += 1
            yield from wait(full_k, i)
        if blank(i):  # sees nothing: the last tile, and the turn of the last P V
            yield from skip(i)
            yield from take_turn()
            return
        yield from take_turn()  # the first QK^T
        rel_k[i] += 1
        prev, i = i, i + 1
        while prev != last[c]:
            yield from wait(full_k, i)
            if blank(i) and pv_before_skip == "lazy":
                # Skip while holding prev's V stage as long as the next tile can still be
                # loaded without it (i - prev < stages - 1); at the blank prev + stages - 1 the
                # pending P V goes out in that blank's turn, then the flushed path below.
                while blank(i) and i - prev < stages - 1:
                    yield from skip(i)
                    i += 1
                    yield from wait(full_k, i)
                if not blank(i):
                    yield from wait(full_v, prev)
                    yield from take_turn()  # QK^T of i with P V of prev
                    rel_k[i] += 1
                    rel_v[prev] += 1
                    prev, i = i, i + 1
                    continue
            if blank(i) and pv_before_skip:
                yield from wait(full_v, prev)
                yield from take_turn()  # the pending P V in the first blank's turn
                rel_k[i] += 1
                rel_v[prev] += 1
                yield from wait(full_v, i)
                rel_v[i] += 1
                i += 1
                yield from wait(full_k, i)
                while blank(i):
                    yield from skip(i)
                    i += 1
                    yield from wait(full_k, i)
                yield from take_turn()  # the next QK^T alone
                rel_k[i] += 1
                prev, i = i, i + 1
                continue
            while blank(i):  # (without the rule: skipping while holding prev's V stage)
                yield from skip(i)
                i += 1
                yield from wait(full_k, i)
            yield from wait(full_v, prev)
            yield from take_turn()  # QK^T of i with P V of prev
            rel_k[i] += 1
            rel_v[prev] += 1
            prev, i = i, i + 1
        yield from wait(full_v, prev)
        yield from take_turn()  # the last P V
        rel_v[prev] += 1
        for j in range(prev + 1, n):  # trailing blanks
            yield from wait(full_k, j)
            yield from skip(j)

    alive = [producer()] + [consumer(c) for c in range(W)]
    while alive:
        before = (sum(rel_k), sum(rel_v), sum(full_k), sum(full_v), turn[0], len(alive))
        for g in list(alive):
            try:
                next(g)
            except StopIteration:
                alive.remove(g)
        # (a generator's first step after a change may only re-test: allow two quiet rounds)
        if (sum(rel_k), sum(rel_v), sum(full_k), sum(full_v), turn[0], len(alive)) == before:
            quiet = True
            for g in list(alive):
                try:
                    next(g)
                except StopIteration:
                    alive.remove(g)
                    quiet = False
            if quiet and alive and before == (sum(rel_k), sum(rel_v), sum(full_k),
                                             sum(full_v), turn[0], len(alive)):
                return False
    return all(rel_k[i] == W and rel_v[i] == W for i in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3000)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    random.seed(args.seed)
    bad = {True: 0, False: 0, "lazy": 0}
    for _ in range(args.trials):
        nb = random.randint(1, 60)
        dens = random.choice([0.05, 0.1, 0.3, 0.5, 0.9])
        rows = [[random.random() < dens for _ in range(nb)] for _ in range(2)]
        split = random.choice([(0, 0, 1), (0, 1, 1)])  # the row of each warpgroup
        walk = []
        for b in range(nb):
            bits = sum(1 << c for c in range(3) if rows[split[c]][b])
            if bits:
                walk.append(bits)
        pingpong = random.random() < 0.5
        for rule in bad:
            if not run(walk, args.stages, pingpong, rule):
                bad[rule] += 1
    print(f"{args.trials} walks, {args.stages} stages: deadlocked with the pending P V issued "
          f"before skipping {bad[True]}, without {bad[False]}, issued only once "
          f"{args.stages - 1} tiles past it {bad['lazy']}")


if __name__ == "__main__":
    main()
