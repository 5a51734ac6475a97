#!/usr/bin/env python3
"""Merge the rounds of an anchored kernel benchmark (bench/run_kernel_bench.sh --rounds N).

Each round is one merged JSON of bench/anchors.py: kernel_bench's rows, then the PyTorch anchors
of the same rows, timed one after the other on the same GPU. Under a power cap the card's clock
moves by a few percent from minute to minute, so one round's ratio of two rows timed a minute
apart moves by as much. The rounds are merged row by row:

  - ms_median, ms_p10, ms_p90 (ours and each anchor's): the median over the rounds of that
    round's value;
  - ratios[name]: the median over the rounds of the round's own ratio (anchor ms / our ms in
    the same round: a paired ratio, so a round timed on a slower clock counts as one round);
  - round_ms, round_anchor_ms[name], round_ratios[name]: every round's value, in order.

A row missing from a round, or an anchor that failed in one, is merged over the rounds that
have it (rounds_with counts them). The output keeps the first round's metadata, adds "rounds"
and the command, and prints anchors.py's table.

usage: bench/anchor_rounds.py ROUND.json... --out MERGED.json [--table TABLE.txt] [--command C]
"""
import argparse
import json
import statistics
import sys

import anchors

KEY_FIELDS = ("suite", "pass", "pattern", "mode", "config", "N", "B", "H", "D", "causal",
              "density", "block", "dtype")
ENERGY_FIELDS = ("energy_j_per_call", "watts", "energy_ratios", "energy_calls", "energy_ms",
                 "sm_mhz")


def row_key(row):
    return tuple(json.dumps(row.get(f), sort_keys=True) for f in KEY_FIELDS)


def merge(rounds):
    """rounds: the parsed JSON of each round. Returns the merged result (first round's metadata)."""
    if not rounds:
        raise ValueError("no rounds to merge")
    out = {k: v for k, v in rounds[0].items() if k != "rows"}
    out["rounds"] = len(rounds)
    order, by_key = [], {}
    for i, res in enumerate(rounds):
        seen = set()
        for row in res.get("rows", []):
            key = row_key(row)
            if key in seen:
                raise ValueError(f"round {i + 1}: row {row.get('id')} appears twice")
            seen.add(key)
            if key not in by_key:
                by_key[key] = []
                order.append(key)
            by_key[key].append(row)
    rows = []
    for key in order:
        group = by_key[key]
        good = [r for r in group if not r.get("error") and "ms_median" in r]
        if not good:
            rows.append(dict(group[0]))
            continue
        m = dict(good[0])
        for f in ("ms_median", "ms_p10", "ms_p90"):
            if all(f in r for r in good):
                m[f] = statistics.median(r[f] for r in good)
        m["round_ms"] = [r["ms_median"] for r in good]
        m["rounds_with"] = len(good)
        if "flops" in m and m["ms_median"] > 0:
            m["tflops"] = m["flops"] / (m["ms_median"] * 1e-3) / 1e12
        m["anchors"], m["ratios"] = {}, {}
        for f in ENERGY_FIELDS:  # per round only (each round's JSON keeps them)
            m.pop(f, None)
        m["round_anchor_ms"], m["round_ratios"] = {}, {}
        names = []
        for r in good:
            for n in r.get("anchors", {}):
                if n not in names:
                    names.append(n)
        for n in names:
            timed = [r for r in good if "ms_median" in r.get("anchors", {}).get(n, {})]
            if not timed:
                m["anchors"][n] = dict(good[0]["anchors"][n])
                continue
            a = {k: v for k, v in timed[0]["anchors"][n].items() if k not in ENERGY_FIELDS}
            for f in ("ms_median", "ms_p10", "ms_p90"):
                if all(f in r["anchors"][n] for r in timed):
                    a[f] = statistics.median(r["anchors"][n][f] for r in timed)
            if "flops" in m:
                a["tflops"] = m["flops"] / (a["ms_median"] * 1e-3) / 1e12
            a["rounds_with"] = len(timed)
            m["anchors"][n] = a
            paired = [r["anchors"][n]["ms_median"] / r["ms_median"] for r in timed]
            m["round_anchor_ms"][n] = [r["anchors"][n]["ms_median"] for r in timed]
            m["round_ratios"][n] = paired
            m["ratios"][n] = statistics.median(paired)
        rows.append(m)
    out["rows"] = rows
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", nargs="+", help="one anchored JSON per round")
    ap.add_argument("--out", required=True, help="merged JSON to write")
    ap.add_argument("--table", default=None, help="also write the printed table here")
    ap.add_argument("--command", default=None, help="the command to record")
    args = ap.parse_args(argv)
    loaded = []
    for path in args.rounds:
        try:
            with open(path) as f:
                loaded.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"anchor_rounds.py: cannot read round '{path}': {e}", file=sys.stderr)
            return 2
    try:
        result = merge(loaded)
    except ValueError as e:
        print(f"anchor_rounds.py: {e}", file=sys.stderr)
        return 2
    if args.command:
        result["command"] = args.command
    result["round_files"] = list(args.rounds)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    anchors.print_table(result, args.table)
    spread = []
    for r in result["rows"]:
        for n, rs in r.get("round_ratios", {}).items():
            if len(rs) > 1:
                spread.append(f"{r['suite']} {r.get('pass', '')} N={r['N']} D={r['D']} "
                              f"{'causal' if r['causal'] else 'full'} {n}: "
                              + " ".join(f"{x:.3f}" for x in rs))
    if spread:
        text = "\n# each round's ratio (anchor ms / ours, paired in the round)\n" + "\n".join(spread)
        print(text)
        if args.table:
            with open(args.table, "a") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
