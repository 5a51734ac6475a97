#!/usr/bin/env python3
"""The arithmetic of bench/run_session_4gpu.sh: its time plan, the lengths each part can afford,
the merge of the scaling rows and the session summary. The shell script runs the programs; this
file decides nothing that needs a GPU and is tested on its own (`selftest`).

Time model (bf16, b=1, one GPU per rank; from bench/results/multigpu_scaling_h200x4_2026-11-26.*
and bench/results/gpu/maxseq_dense_4gpu_h200x4_2026-11-26.*):
  run time = FLOPs / GPUs / rate; FLOPs = 4*B*H*D*pairs (causal: N(N+1)/2 pairs), backward 2.5x;
  rate per GPU: longattn dense fwd+bwd 230 TFLOP/s (233-251 measured before the Hopper forward
  kernel), SDPA / context_parallel (FA2) fwd+bwd 290; causal rows at short lengths 10% lower.
  Measured rates replace these as soon as the session has them (part a's rows for part b, parts
  a and b for part c).
Memory model of the dense ring (fwd+bwd, zigzag, bf16), in local bf16 [N/P, H, D] tensors per
rank: the inputs, outputs and gradients of the benchmark (8) and the ring's workspace, which the
forward shares with the backward: fp32 dQ (2) and C+1 chunk buffers of K/V and fp32 dK/dV
(6 (C+1)/C), C key chunks per shard (attention/ring.hpp: 2, up to 4 while every part of a
zigzag piece keeps 32K rows), plus 0.05 for the row statistics, the device masks and
alignment: 19.05 tensors below 192K tokens per GPU, 17.55 from 256K (CPU ranks count 19.03 with
2 chunks and the workspace formula exactly, tests/mpi/test_ring_memory.cpp). The step-wise
backward before it held about 36.75 (measured 37480 MiB at 1M, 75120 at 2M, 94000 at 2.5M
tokens on 4 GPUs).
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile

RATE_OURS = 230.0          # TFLOP/s per GPU, longattn dense fwd+bwd
RATE_SDPA = 290.0          # TFLOP/s per GPU, SDPA flash / context_parallel fwd+bwd
CAUSAL_SHORT_FACTOR = 0.9  # causal rows below 64K tokens per GPU
LAUNCH_MPI = {1: 4.0, 2: 6.0, 4: 8.0}  # mpirun, MPI, CUDA contexts, NCCL communicator
LAUNCH_TORCH = 15.0        # torch.distributed.run, import torch, NCCL, device mesh
CASE_OVERHEAD = 0.5        # allocation and random fill of one case
RING_TENSORS_PER_RANK = 17.55  # local bf16 [N/P, H, D] tensors at the ring's fwd+bwd peak (4 chunks)
RING_CHUNK_MIN_ROWS = 32768    # attention/ring.hpp kRingChunkMinRows
RING_CHUNKS = (2, 4)           # kRingBackwardChunks, kRingBackwardMaxChunks
MEM_RESERVED_MIB = 1536    # CUDA context, NCCL buffers, allocator slack
MEM_USABLE = 0.97          # of what nvidia-smi reports
LONG_OVERHEAD = 25.0       # part c's launch, input fill and sampled-row check
LONG_GRANULARITY = 262144  # part c's lengths are multiples of 256K tokens


def fwd_flops(N, H, D, causal, B=1):
    pairs = N * (N + 1) / 2.0 if causal else float(N) * N
    return 4.0 * B * H * D * pairs


def run_seconds(N, P, causal, rate, H, D, backward=True):
    """One run (fwd or fwd+bwd) of dense attention over N tokens on P GPUs at `rate`."""
    return fwd_flops(N, H, D, causal) * (3.5 if backward else 1.0) / P / (rate * 1e12)


def runs_within(max_seconds, run_s, most):
    """The adaptive count of multigpu_bench and torch_anchors.py (--max-seconds)."""
    if max_seconds <= 0 or most <= 1:
        return most
    fit = math.floor(max_seconds / run_s) if run_s > 0 else most
    return int(min(max(fit, 1), most))


def parse_list(s):
    return [int(x) for x in str(s).replace(" ", ",").split(",") if x]


def read_jsonl(paths):
    rows = []
    for p in paths:
        try:
            with open(p) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        try:
                            rows.append(json.loads(line))
                        except ValueError:
                            pass  # a line cut by a timeout
        except FileNotFoundError:
            pass
    return rows


def measured_rate(rows, impl, gpus, causal=True):
    """fwd+bwd TFLOP/s per GPU of `impl`'s ok row with the most tokens at `gpus` (None: none)."""
    best = None
    for r in rows:
        if (r.get("impl") == impl and r.get("gpus") == gpus and r.get("causal") == causal
                and r.get("status") == "ok" and r.get("fwd_bwd_tflops_per_gpu")):
            if best is None or r["seq_len"] > best["seq_len"]:
                best = r
    return best["fwd_bwd_tflops_per_gpu"] if best else None


# ---- estimates ---------------------------------------------------------------------------------

def est_weak(P, locals_, H, D, rate, launch, warmup=1, repeats=3, null=2, max_s=3.0):
    """Seconds of one weak-scaling program (full and causal at each local length)."""
    total = launch
    for L in locals_:
        for causal in (False, True):
            r = rate * (CAUSAL_SHORT_FACTOR if causal and L < 65536 else 1.0)
            t = run_seconds(L * P, P, causal, r, H, D)
            n = runs_within(max_s, t, null) if (P > 1 and null > 0) else 0
            total += (warmup + runs_within(max_s, t, repeats) + n) * t + CASE_OVERHEAD
    return total


def covered_by_weak(P, locals_):
    """Total lengths of part a's causal rows at P GPUs (they are strong-scaling rows too)."""
    return {L * P for L in locals_}


def strong_lengths(P, strong, locals_):
    return [N for N in sorted(strong) if N not in covered_by_weak(P, locals_)]


def est_strong(P, Ns, H, D, rate):
    return LAUNCH_MPI.get(P, 8.0) + sum(run_seconds(N, P, True, rate, H, D) + CASE_OVERHEAD
                                         for N in Ns)


def ring_tensors_per_rank(local_n):
    """Local tensors at the dense ring's fwd+bwd peak with zigzag pieces of local_n / 2 rows."""
    chunks = min(max((local_n // 2) // RING_CHUNK_MIN_ROWS, RING_CHUNKS[0]), RING_CHUNKS[1])
    return RING_TENSORS_PER_RANK - 6.0 * (RING_CHUNKS[1] + 1) / RING_CHUNKS[1] \
        + 6.0 * (chunks + 1) / chunks


def ring_peak_mib(N, P, H, D):
    return ring_tensors_per_rank(N // P) * (N / P) * H * D * 2 / 2**20


def pick_long(want, P, H, D, mem_mib, limit_s, rate, force=False):
    """(N, reason): the dense ring fwd+bwd trial of part c, at most `want` tokens, fitting the
    memory (`mem_mib` per GPU) and `limit_s` seconds (with the launch, fill and check)."""
    gran = math.lcm(LONG_GRANULARITY, 2 * P * 128)
    if force:
        return want, "forced (--long-force)"
    usable = mem_mib * MEM_USABLE - MEM_RESERVED_MIB
    budget = limit_s - LONG_OVERHEAD
    N = want - want % gran if want >= gran else want
    notes = []
    while N >= gran:
        mem_ok = mem_mib <= 0 or ring_peak_mib(N, P, H, D) <= usable
        time_ok = run_seconds(N, P, True, rate, H, D) <= budget
        if mem_ok and time_ok:
            break
        if not mem_ok and "memory" not in notes:
            notes.append("memory")
        if not time_ok and "time" not in notes:
            notes.append("time")
        N -= gran
    if N < gran:
        return 0, "nothing fits: %s" % " and ".join(notes or ["time"])
    if N == want:
        reason = "as asked"
    elif not notes:
        reason = "%d rounded down to a multiple of %d" % (want, gran)
    else:
        reason = "%d does not fit (%s): predicted %.0f GiB per GPU of %.0f usable, %.0f s of %.0f" \
            % (want, " and ".join(notes), ring_peak_mib(want, P, H, D) / 1024, usable / 1024,
               run_seconds(want, P, True, rate, H, D), budget)
    return N, reason + "; predicted %.0f s at %.0f TFLOP/s per GPU, %.0f GiB per GPU" % (
        run_seconds(N, P, True, rate, H, D), rate, ring_peak_mib(N, P, H, D) / 1024)


# ---- the plan ----------------------------------------------------------------------------------

def make_plan(a):
    """Steps with their estimated seconds ("want") and the parts' limits."""
    gpus = parse_list(a.gpus)
    locals_ = parse_list(a.weak)
    strong = parse_list(a.strong)
    parts = set(a.parts.split(","))
    H, D = a.heads, a.head_dim
    Pmax = max(gpus)
    steps = []

    def add(name, part, want, what):
        steps.append({"name": name, "part": part, "want": int(math.ceil(want)), "what": what})

    if "a" in parts:
        for P in gpus:
            add("a_ours_%d" % P, "a", est_weak(P, locals_, H, D, RATE_OURS, LAUNCH_MPI.get(P, 8.0)),
                "longattn weak %s/GPU, %d GPU(s)" % (a.weak, P))
        if a.anchors:
            for P in gpus:
                add("a_anchor_%d" % P, "a",
                    est_weak(P, locals_, H, D, RATE_SDPA, LAUNCH_TORCH, null=0),
                    "%s weak, %d GPU(s)" % ("sdpa" if P == 1 else "context_parallel", P))
    if "b" in parts:
        for P in sorted(gpus, reverse=True):
            Ns = strong_lengths(P, strong, locals_ if "a" in parts else [])
            if Ns:
                add("b_%d" % P, "b", est_strong(P, Ns, H, D, RATE_OURS),
                    "longattn strong causal %s, %d GPU(s)" % (",".join(map(str, Ns)), P))
    T, R = a.budget, a.reserve
    caps = {"a": 0.45 * T, "b": 0.2 * T, "d": min(45, 0.1 * T)}
    for item in (a.part_seconds or "").split(","):
        if item:
            part, _, secs = item.partition("=")
            if part not in ("a", "b", "d") or not secs.isdigit():
                raise SystemExit("--part-seconds: '%s' must be a=S, b=S or d=S (seconds)" % item)
            caps[part] = float(secs)
    limits = {}
    for part in ("a", "b"):
        want = sum(s["want"] for s in steps if s["part"] == part)
        if want:
            limits[part] = int(min(want, caps[part]))
    if "d" in parts:
        limits["d"] = int(caps["d"])
        add("d_dilated", "d", limits["d"], "distributed dilated maxseq, %d GPUs" % Pmax)
    if "c" in parts:
        limits["c"] = max(0, int(T - R - a.elapsed - sum(limits.values())))
        N, why = pick_long(a.long_n, Pmax, H, D, a.mem_mib, limits["c"], RATE_OURS, a.long_force)
        c1 = run_seconds(N, Pmax, True, RATE_OURS, H, D) + LONG_OVERHEAD if N else 0
        add("c1_ring", "c", min(c1, limits["c"]),
            "dense ring causal fwd+bwd, one trial at N=%d on %d GPUs (%s)" % (N, Pmax, why))
        add("c2_data_parallel", "c", max(0, limits["c"] - c1),
            "data-parallel maxseq fwd+bwd, %d GPUs (what part c leaves)" % Pmax)
    order = {"a": 0, "b": 1, "c": 2, "d": 3}
    steps.sort(key=lambda s: order[s["part"]])
    return {"budget_s": T, "reserve_s": R, "elapsed_s": a.elapsed, "limits": limits,
            "steps": steps, "long_n_planned": N if "c" in parts else None}


def cmd_plan(a):
    plan = make_plan(a)
    with open(a.shell, "w") as f:
        for part, v in plan["limits"].items():
            f.write("plan_limit_%s=%d\n" % (part, v))
        for s in plan["steps"]:
            f.write("want_%s=%d\n" % (s["name"], s["want"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(plan, f, indent=1)
    print("# plan: %d s in all, %d s kept for the merge and summary; estimates from the time "
          "model of bench/multigpu/session_4gpu.py" % (plan["budget_s"], plan["reserve_s"]))
    for part in ("a", "b", "c", "d"):
        if part not in plan["limits"]:
            continue
        print("#  part %s: at most %4d s" % (part, plan["limits"][part]))
        for s in plan["steps"]:
            if s["part"] == part:
                print("#    %-18s ~%4d s  %s" % (s["name"], s["want"], s["what"]))


# ---- choices at run time -------------------------------------------------------------------------

def pick_strong(rows, P, strong, limit, H, D, assume_weak=()):
    """Part b's lengths at P GPUs: those part a did not measure, smallest first, as many as
    `limit` seconds allow at the rate part a measured (without rows: `assume_weak` per GPU)."""
    covered = {r["seq_len"] for r in rows
               if r.get("impl") == "longattn" and r.get("gpus") == P and r.get("causal")
               and r.get("status") == "ok" and r.get("pass") == "fwd+bwd"}
    if not rows:
        covered = covered_by_weak(P, assume_weak)
    rate = measured_rate(rows, "longattn", P) or RATE_OURS
    left = limit - LAUNCH_MPI.get(P, 8.0)
    chosen = []
    for N in sorted(strong):
        if N in covered:
            continue
        t = run_seconds(N, P, True, rate, H, D) + CASE_OVERHEAD
        if t > left:
            break
        chosen.append(N)
        left -= t
    return chosen


def cmd_pick_strong(a):
    print(",".join(map(str, pick_strong(read_jsonl(a.rows), a.gpus, parse_list(a.strong), a.limit,
                                        a.heads, a.head_dim, parse_list(a.assume_weak)))))


def cmd_pick_long(a):
    rows = read_jsonl(a.rows)
    rate = measured_rate(rows, "longattn", a.gpus) or RATE_OURS
    N, why = pick_long(a.want, a.gpus, a.heads, a.head_dim, a.mem_mib, a.limit, rate, a.force)
    print("%d %s" % (N, why))


# ---- merge and summary ---------------------------------------------------------------------------

def merge_rows(ours_a, ours_b, theirs, strong):
    """Part b's rows without its warm-up row (weak), and every causal fwd+bwd weak row whose
    total length is a strong-scaling length copied as a strong row (measured once, both)."""
    out_ours = [r for r in ours_a]
    out_ours += [r for r in ours_b if r.get("type") == "header" or r.get("scaling") == "strong"]
    out_theirs = list(theirs)
    strong = set(strong)
    for rows in (out_ours, out_theirs):
        have = {(r.get("impl"), r.get("gpus"), r.get("seq_len"), r.get("pass"))
                for r in rows if r.get("scaling") == "strong" and r.get("status") == "ok"}
        copies = []
        for r in rows:
            if (r.get("scaling") == "weak" and r.get("causal") and r.get("status") == "ok"
                    and r.get("seq_len") in strong and r.get("pass") == "fwd+bwd"
                    and (r.get("impl"), r.get("gpus"), r.get("seq_len"), "fwd+bwd") not in have):
                c = dict(r)
                c["scaling"] = "strong"
                c["measured_as"] = "weak"
                copies.append(c)
        rows.extend(copies)
    return out_ours, out_theirs


def cmd_merge(a):
    ours, theirs = merge_rows(read_jsonl([a.ours_a]), read_jsonl([a.ours_b]),
                              read_jsonl([a.theirs]), parse_list(a.strong))
    if not [r for r in ours + theirs if r.get("type") != "header"]:
        print("no scaling rows to merge")
        return
    with tempfile.TemporaryDirectory() as tmp:
        po, pt = os.path.join(tmp, "ours.jsonl"), os.path.join(tmp, "theirs.jsonl")
        for path, rows in ((po, ours), (pt, theirs)):
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "scaling_report.py"), "--ours", po,
                        "--theirs", pt, "--out", a.out, "--table", a.table,
                        "--command", a.command], check=True, stdout=subprocess.DEVNULL)


def load_json(path):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def maxseq_summary(path, mode):
    """Longest ok N of a `longattn bench --suite maxseq` JSON and what stopped the search."""
    d = load_json(path)
    if not d:
        return {"status": "no result"}
    rows = [r for r in d.get("rows", []) if r.get("mode", "").startswith(mode)]
    ok = [r for r in rows if r.get("status") in ("ok", "time") and "median_ms" in r
          and r.get("wrong", 1) == 0]
    res = {"trials": [{k: r.get(k) for k in ("N", "status", "median_ms", "tflops", "peak_bytes",
                                               "wrong", "message", "predicted_s") if k in r}
                      for r in rows]}
    if ok:
        best = max(ok, key=lambda r: r["N"])
        res.update({"longest_N": best["N"], "longest_status": best["status"],
                    "seconds": best.get("median_ms", 0) / 1e3,
                    "peak_GiB": best.get("peak_bytes", 0) / 2**30,
                    "tflops_per_gpu": best.get("tflops"), "wrong": best.get("wrong")})
    failed = [r for r in rows if r.get("status") != "ok" and "median_ms" not in r]
    if failed:
        res["stopped_by"] = "%s at N=%s" % (failed[-1].get("status"), failed[-1].get("N"))
    res["wrong_rows"] = sum(int(r.get("wrong", 0) or 0) for r in rows)
    return res


def scaling_summary(path):
    d = load_json(path)
    if not d:
        return {"status": "no result"}
    rows = d.get("rows", [])
    Pmax = max([r.get("gpus", 0) for r in rows] or [0])
    res = {"gpu": d.get("gpu"), "gpus_max": Pmax, "weak_4gpu": [], "strong": [],
           "anchors_failed": [],
           "cp_load_balance": sorted({"%s:%s" % ("causal" if r["causal"] else "full",
                                                r.get("cp_load_balance"))
                                      for r in rows if r.get("impl") == "context_parallel"
                                      and "cp_load_balance" in r})}
    for r in rows:
        if r.get("status") != "ok":
            if r.get("impl") != "longattn" and not str(r.get("status", "")).startswith("skipped"):
                res["anchors_failed"].append("%s %d GPU N=%d %s: %s" % (
                    r.get("impl"), r.get("gpus"), r.get("seq_len"),
                    "causal" if r.get("causal") else "full", r.get("status")))
            continue
        if r.get("impl") != "longattn":
            continue
        if r["scaling"] == "weak" and r["gpus"] == Pmax and Pmax > 1:
            res["weak_4gpu"].append({
                "tokens_per_gpu": r["seq_len"] // r["gpus"], "causal": r["causal"],
                "fwd_eff": r.get("fwd_efficiency"), "fwd_bwd_eff": r.get("fwd_bwd_efficiency"),
                "fwd_vs_cp": r.get("fwd_vs_context_parallel"),
                "fwd_bwd_vs_cp": r.get("fwd_bwd_vs_context_parallel"),
                "exposed_ms": 1e3 * r.get("fwd_bwd_exposed_comm_s", 0.0)})
        if r["scaling"] == "strong":
            res["strong"].append({"N": r["seq_len"], "gpus": r["gpus"],
                                  "fwd_bwd_s": r.get("fwd_bwd_s"),
                                  "tflops_per_gpu": r.get("fwd_bwd_tflops_per_gpu"),
                                  "fwd_bwd_eff": r.get("fwd_bwd_efficiency")})
    res["strong"].sort(key=lambda x: (x["N"], x["gpus"]))
    res["weak_4gpu"].sort(key=lambda x: (x["tokens_per_gpu"], x["causal"]))
    return res


def fmt(x, f="%.3f"):
    return f % x if isinstance(x, (int, float)) else "-"


def cmd_summary(a):
    steps = read_jsonl([a.steps])
    plan = load_json(a.plan) or {}
    res = {"session": "bench/run_session_4gpu.sh", "command": a.command,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "gpus": [l for l in open(a.gpu_info).read().splitlines() if l]
           if a.gpu_info and os.path.exists(a.gpu_info) else [],
           "plan": plan, "steps": steps,
           "scaling": scaling_summary(os.path.join(a.out_dir, "scaling.json")),
           "long_ring": maxseq_summary(os.path.join(a.out_dir, "maxseq_ring.json"), "ring"),
           "data_parallel": maxseq_summary(os.path.join(a.out_dir, "maxseq_data_parallel.json"),
                                           "data_parallel"),
           "dilated": maxseq_summary(os.path.join(a.out_dir, "maxseq_dilated.json"), "dilated")}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    lines = ["# summary (%s)" % res["date"]]
    for s in steps:
        lines.append("  %-18s %-9s %5.0f s of %4d  %s" % (s["name"], s["result"], s["seconds"],
                                                          s["limit"], s.get("note", "")))
    sc = res["scaling"]
    if sc.get("weak_4gpu"):
        lines.append("  weak scaling on %d GPUs: tokens/GPU mask, efficiency fwd / fwd+bwd, "
                     "vs context_parallel fwd / fwd+bwd, exposed comm ms" % sc["gpus_max"])
        for w in sc["weak_4gpu"]:
            lines.append("    %7d %-6s %s / %s   %s / %s   %.1f" % (
                w["tokens_per_gpu"], "causal" if w["causal"] else "full", fmt(w["fwd_eff"]),
                fmt(w["fwd_bwd_eff"]), fmt(w["fwd_vs_cp"], "%.2fx"),
                fmt(w["fwd_bwd_vs_cp"], "%.2fx"), w["exposed_ms"]))
    if sc.get("cp_load_balance"):
        lines.append("  context_parallel load balancing seen: %s" % ", ".join(
            sc["cp_load_balance"]))
    for f_ in sc.get("anchors_failed", []):
        lines.append("  anchor failed: %s" % f_)
    if sc.get("strong"):
        lines.append("  strong scaling (causal fwd+bwd): N gpus seconds TFLOP/s/GPU efficiency")
        for s in sc["strong"]:
            lines.append("    %8d %d %9s %7s %s" % (s["N"], s["gpus"], fmt(s["fwd_bwd_s"], "%.2f"),
                                                   fmt(s["tflops_per_gpu"], "%.1f"),
                                                   fmt(s["fwd_bwd_eff"])))
    for key, label in (("long_ring", "dense ring fwd+bwd"), ("data_parallel", "data-parallel"),
                       ("dilated", "distributed dilated")):
        m = res[key]
        if m.get("status") == "no result":
            lines.append("  %s: no result" % label)
            continue
        lines.append("  %s: longest %s%s%s" % (
            label, m.get("longest_N", "none"),
            " (%.1f s, %.1f GiB/GPU, #wrong %s)" % (m["seconds"], m["peak_GiB"], m["wrong"])
            if "longest_N" in m else "",
            "; stopped by %s" % m["stopped_by"] if m.get("stopped_by") else ""))
    text = "\n".join(lines)
    print(text)
    bad = [s for s in steps if s["result"] == "failed"]
    wrong = sum(res[k].get("wrong_rows", 0) for k in ("long_ring", "data_parallel", "dilated"))
    if wrong:
        print("  #wrong > 0 in the maxseq runs: %d sampled rows" % wrong)
    sys.exit(1 if (bad or wrong) else 0)


def cmd_sanitize(a):
    """Replaces machine paths in every file of the output folder (longest first)."""
    subs = []
    for pair in a.replace:
        old, _, new = pair.partition("=")
        if old and old not in ("/", "."):
            subs.append((old.rstrip("/"), new))
    subs.sort(key=lambda p: -len(p[0]))
    for name in sorted(os.listdir(a.dir)):
        path = os.path.join(a.dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        new = text
        for old, rep in subs:
            new = new.replace(old + "/", rep + "/" if rep else "").replace(old, rep or ".")
        if new != text:
            with open(path, "w") as f:
                f.write(new)


# ---- self-test -----------------------------------------------------------------------------------

def cmd_selftest(_):
    # Adaptive repeats as in the programs.
    assert runs_within(0, 10.0, 3) == 3 and runs_within(3, 0.5, 3) == 3
    assert runs_within(3, 2.0, 3) == 1 and runs_within(3, 100.0, 2) == 1
    # Memory model: 2, 3 and 4 key chunks; under half the step-wise backward's measured peaks
    # (4x H200: 37480 MiB at 1M, 75120 at 2M, 94000 at 2.5M).
    for local_n, tensors in ((65536, 19.05), (196608, 18.05), (262144, 17.55), (1 << 20, 17.55)):
        assert abs(ring_tensors_per_rank(local_n) - tensors) < 1e-9, (local_n, tensors)
    for N, mib in ((1 << 20, 37480), (2 << 20, 75120), (2621440, 94000)):
        got = ring_peak_mib(N, 4, 16, 128)
        assert got < 0.5 * mib and abs(got - 17.55 * N / 1024) < 1e-6, (N, got)
    # 4M fits 80 GB cards now (70 GiB per GPU); 8M fits neither 80 GB nor 141 GB cards and the
    # fallbacks do.
    N, why = pick_long(4194304, 4, 16, 128, 81559, 1000, 240)
    assert N == 4194304 and "as asked" in why, (N, why)
    N, why = pick_long(8388608, 4, 16, 128, 81559, 5000, 240)
    assert N == 4456448 and "memory" in why, (N, why)
    N, why = pick_long(8388608, 4, 16, 128, 143771, 5000, 240)
    assert N == 7864320 and "memory" in why, (N, why)
    N, why = pick_long(4194304, 4, 16, 128, 143771, 130, 240)  # time: ~2.2M in 100 s at 240
    assert 1 << 21 <= N <= 2621440 and "time" in why, (N, why)
    assert pick_long(4194304, 4, 16, 128, 81559, 10, 240)[0] == 0
    N, why = pick_long(1000000, 4, 16, 128, 0, 1000, 240)
    assert N == 786432 and "rounded" in why, (N, why)
    assert pick_long(4194304, 4, 16, 128, 81559, 10, 240, force=True)[0] == 4194304
    assert pick_long(1048576, 4, 16, 128, 0, 1000, 240) == (1048576, pick_long(
        1048576, 4, 16, 128, 0, 1000, 240)[1]) and "as asked" in pick_long(
        1048576, 4, 16, 128, 0, 1000, 240)[1]
    # Strong lengths part a already measured are not run again.
    assert strong_lengths(4, [131072, 262144, 524288, 1048576],
                          [16384, 32768, 65536, 131072]) == [1048576]
    assert strong_lengths(1, [131072, 262144, 524288, 1048576],
                          [16384, 32768, 65536, 131072]) == [262144, 524288, 1048576]
    # Part b: lengths part a measured are left out, the rest fit the seconds at part a's rate.
    strong_all = [131072, 262144, 524288, 1048576]
    rows = [{"impl": "longattn", "gpus": 1, "causal": True, "status": "ok", "pass": "fwd+bwd",
             "seq_len": 131072, "fwd_bwd_tflops_per_gpu": 240.0}]
    assert pick_strong(rows, 1, strong_all, 1000, 16, 128) == [262144, 524288, 1048576]
    assert pick_strong(rows, 1, strong_all, 30, 16, 128) == [262144, 524288]
    assert pick_strong(rows, 1, strong_all, 5, 16, 128) == []
    assert pick_strong([], 4, strong_all, 40, 16, 128, [16384, 32768, 65536, 131072]) == [1048576]
    # Merge: part b's warm-up row goes, causal weak rows at strong lengths are copied once.
    weak = {"impl": "longattn", "scaling": "weak", "gpus": 4, "seq_len": 524288, "causal": True,
            "pass": "fwd+bwd", "status": "ok", "fwd_bwd_tflops_per_gpu": 240.0}
    full = dict(weak, causal=False)
    warm = dict(weak, seq_len=32768)
    strong = {"impl": "longattn", "scaling": "strong", "gpus": 4, "seq_len": 1048576,
              "causal": True, "pass": "fwd+bwd", "status": "ok"}
    cp = dict(weak, impl="context_parallel")
    ours, theirs = merge_rows([weak, full], [{"type": "header"}, warm, strong], [cp],
                              [131072, 524288, 1048576])
    assert [r for r in ours if r.get("seq_len") == 32768] == []
    copies = [r for r in ours if r.get("measured_as") == "weak"]
    assert len(copies) == 1 and copies[0]["scaling"] == "strong" and copies[0]["seq_len"] == 524288
    assert [r["scaling"] for r in theirs] == ["weak", "strong"]
    assert weak["scaling"] == "weak"  # the original row is left as it was
    # Rates: the most tokens wins; none gives None.
    assert measured_rate([weak, dict(weak, seq_len=1 << 16, fwd_bwd_tflops_per_gpu=1.0)],
                         "longattn", 4) == 240.0
    assert measured_rate([], "longattn", 4) is None
    # The plan fits the budget and orders the parts.
    ns = argparse.Namespace(gpus="1 2 4", weak="16384,32768,65536,131072",
                            strong="131072,262144,524288,1048576", parts="a,b,c,d", heads=16,
                            head_dim=128, anchors=True, budget=540, reserve=20, elapsed=10,
                            part_seconds="", long_n=4194304, mem_mib=81559, long_force=False)
    plan = make_plan(ns)
    assert sum(plan["limits"].values()) + 20 + 10 <= 540, plan["limits"]
    assert [s["part"] for s in plan["steps"]] == sorted(s["part"] for s in plan["steps"])
    assert plan["limits"]["c"] > 60, plan["limits"]
    ns.part_seconds = "a=150,b=60"
    plan2 = make_plan(ns)
    assert plan2["limits"]["a"] == 150 and plan2["limits"]["b"] == 60
    assert plan2["limits"]["c"] == plan["limits"]["c"] + (plan["limits"]["a"] - 150) + (
        plan["limits"]["b"] - 60), (plan["limits"], plan2["limits"])
    # Sanitising replaces the longest path first.
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.txt")
        with open(p, "w") as f:
            f.write("/r/oot/out/a.json /r/oot/bin/longattn /r/oot\n")
        cmd_sanitize(argparse.Namespace(dir=d, replace=["/r/oot=", "/r/oot/out=$OUT"]))
        got = open(p).read()
        assert got == "$OUT/a.json bin/longattn .\n", got
    print("session_4gpu.py selftest: 1 passed, 0 failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--gpus", default="1 2 4")
    p.add_argument("--weak", default="16384,32768,65536,131072")
    p.add_argument("--strong", default="131072,262144,524288,1048576")
    p.add_argument("--parts", default="a,b,c,d")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--anchors", type=int, default=1)
    p.add_argument("--budget", type=int, default=540)
    p.add_argument("--reserve", type=int, default=20)
    p.add_argument("--elapsed", type=int, default=0)
    p.add_argument("--part-seconds", default="",
                   help="a=S,b=S,d=S: the most these parts may take (c takes the rest)")
    p.add_argument("--long-n", type=int, default=4194304)
    p.add_argument("--long-force", type=int, default=0)
    p.add_argument("--mem-mib", type=float, default=0)
    p.add_argument("--shell", required=True)
    p.add_argument("--json")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("pick-strong")
    p.add_argument("--rows", nargs="*", default=[])
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--strong", required=True)
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--assume-weak", default="",
                   help="without rows (dry run): part a's tokens per GPU, taken as measured")
    p.set_defaults(fn=cmd_pick_strong)
    p = sub.add_parser("pick-long")
    p.add_argument("--rows", nargs="*", default=[])
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--want", type=int, required=True)
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--mem-mib", type=float, default=0)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--force", type=int, default=0)
    p.set_defaults(fn=cmd_pick_long)
    p = sub.add_parser("merge")
    for k in ("--ours-a", "--ours-b", "--theirs", "--out", "--table"):
        p.add_argument(k, required=True)
    p.add_argument("--strong", default="")
    p.add_argument("--command", default="")
    p.set_defaults(fn=cmd_merge)
    p = sub.add_parser("summary")
    for k in ("--steps", "--out", "--out-dir"):
        p.add_argument(k, required=True)
    p.add_argument("--plan")
    p.add_argument("--gpu-info")
    p.add_argument("--command", default="")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("sanitize")
    p.add_argument("--dir", required=True)
    p.add_argument("--replace", nargs="*", default=[], help="OLD=NEW (NEW may be empty)")
    p.set_defaults(fn=cmd_sanitize)
    p = sub.add_parser("selftest")
    p.set_defaults(fn=cmd_selftest)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
