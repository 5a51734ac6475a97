#!/usr/bin/env python3
"""PyTorch anchors of longattn's multi-GPU scaling benchmark, one process per GPU.

Run with torch's launcher (bench/multigpu/run_scaling.sh does), e.g.
  python3 -m torch.distributed.run --nproc_per_node 4 bench/multigpu/torch_anchors.py \
      --weak 32768 --strong 131072 --out anchors.jsonl

Two implementations, timed on the same shapes as bench/multigpu/multigpu_bench.cpp:
  context_parallel  PyTorch's own context parallelism
                    (torch.distributed.tensor.experimental.context_parallel, default options,
                    SDPA restricted to the flash backend, causal runs load-balanced by PyTorch,
                    non-causal runs with its load balancing off: contiguous shards; each row
                    records the setting the context saw as cp_load_balance);
  torch_ring        a ring written here: the FlashAttention-2 kernel PyTorch ships
                    (aten._scaled_dot_product_flash_attention and its backward, which take the
                    global output and log-sum-exp) and torch.distributed.batch_isend_irecv, the
                    next step's K/V exchange posted before the current step's kernel; causal
                    runs use zigzag shards (rank r holds chunks r and 2P-1-r, as longattn does)
                    and dK/dV travel with K/V.
With one GPU both are plain SDPA on the flash backend: the single-GPU baseline of the
efficiency figures. --check compares torch_ring with single-GPU SDPA first (forward and
gradients); --cpu-test runs that check on CPU processes (gloo, a math kernel) to test the ring
logic without GPUs.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist


# ---- kernels: the FA2 kernel on GPUs, a math kernel for --cpu-test ------------------------------

def attn_forward(q, k, v, causal):
    """out [B,H,Nq,D] (input dtype), lse [B,H,Nq] fp32, and what the backward needs."""
    if q.is_cuda:
        r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False)
        return r[0], r[1], r
    s = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", torch.exp(s - lse[..., None]), v.double())
    return out.to(q.dtype), lse.to(acc_dtype(q)), None


def attn_backward(dout, q, k, v, out, lse, causal, saved):
    """dq, dk, dv of (q, k, v) from the GLOBAL out and lse of these query rows."""
    if q.is_cuda:
        _, _, cum_q, cum_k, _, _, seed, offset, _ = saved
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse, cum_q, cum_k, q.shape[2], k.shape[2], 0.0, causal, seed,
            offset)
    scale = 1.0 / math.sqrt(q.shape[-1])
    qd, kd, vd, dod, od = (t.double() for t in (q, k, v, dout, out))
    s = torch.einsum("bhid,bhjd->bhij", qd, kd) * scale
    if causal:
        mask = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.exp(s - lse.double()[..., None])
    dv = torch.einsum("bhij,bhid->bhjd", p, dod)
    dp = torch.einsum("bhid,bhjd->bhij", dod, vd)
    delta = (dod * od).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.einsum("bhij,bhjd->bhid", ds, kd) * scale
    dk = torch.einsum("bhij,bhid->bhjd", ds, qd) * scale
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


# ---- the ring --------------------------------------------------------------------------------

def merge(acc_o, acc_lse, o, lse, rows):
    """(acc_o, acc_lse)[rows] <- merge with (o, lse): L = logaddexp, O weighted by exp(L_i - L)."""
    a_o, a_l = acc_o[:, :, rows], acc_lse[:, :, rows]
    new = torch.logaddexp(a_l, lse)
    w_a = torch.exp(a_l - new).nan_to_num(0.0)[..., None]
    w_b = torch.exp(lse - new).nan_to_num(0.0)[..., None]
    acc_o[:, :, rows] = a_o * w_a + o.to(acc_o.dtype) * w_b
    acc_lse[:, :, rows] = new


def exchange(send, recv, rank, world):
    """Posts send -> rank+1 and recv <- rank-1 as one group; returns the requests."""
    ops = [dist.P2POp(dist.isend, send, (rank + 1) % world),
           dist.P2POp(dist.irecv, recv, (rank - 1 + world) % world)]
    return dist.batch_isend_irecv(ops)


def step_blocks(step, rank, L, causal):
    """(query rows, key rows, causal) of a step, or None. Zigzag: local rows [0, L/2) are chunk
    r, [L/2, L) chunk 2P-1-r; the visitor at step s comes from rank r-s."""
    full = slice(0, L)
    if not causal:
        return full, full, False
    if step == 0:
        return full, full, True  # both chunks in increasing order: local causal is global causal
    origin_before = step <= rank  # origin r - step < r
    if origin_before:  # every query row sees the visitor's first chunk, not its second
        return full, slice(0, L // 2), False
    return slice(L // 2, L), full, False  # only the second query chunk sees the visitor


def acc_dtype(t):
    """Accumulators: fp32 for fp16/bf16 inputs (fp64 for the fp64 CPU test)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ring_forward(q, k, v, causal, rank, world):
    B, H, L, D = q.shape
    acc_o = torch.zeros(B, H, L, D, dtype=acc_dtype(q), device=q.device)
    acc_lse = torch.full((B, H, L), float("-inf"), dtype=acc_dtype(q), device=q.device)
    kv = torch.stack([k, v]).contiguous()
    nxt = torch.empty_like(kv)
    for step in range(world):
        reqs = exchange(kv, nxt, rank, world) if step + 1 < world else []
        rows, cols, c = step_blocks(step, rank, L, causal)
        o, lse, _ = attn_forward(q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols], c)
        merge(acc_o, acc_lse, o, lse, rows)
        for r in reqs:
            r.wait()
        kv, nxt = nxt, kv
    return acc_o.to(q.dtype), acc_lse


def ring_backward(dout, q, k, v, out, lse, causal, rank, world):
    B, H, L, D = q.shape
    dq = torch.zeros(B, H, L, D, dtype=acc_dtype(q), device=q.device)
    kv = torch.stack([k, v]).contiguous()
    nxt = torch.empty_like(kv)
    dkv = [torch.zeros(2, B, H, L, D, dtype=acc_dtype(q), device=q.device) for _ in range(2)]
    dkv_reqs = []
    cur = 0
    # The kernel's backward takes the forward's bookkeeping tensors (no dropout: placeholders);
    # a one-row forward provides them once.
    saved = attn_forward(q[:, :, :1], k[:, :, :1], v[:, :, :1], False)[2]
    for step in range(world):
        kv_reqs = exchange(kv, nxt, rank, world) if step + 1 < world else []
        rows, cols, c = step_blocks(step, rank, L, causal)
        qs, ks, vs = q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols]
        gq, gk, gv = attn_backward(dout[:, :, rows], qs, ks, vs, out[:, :, rows],
                                   lse[:, :, rows].contiguous(), c, saved)
        dq[:, :, rows] += gq.to(dq.dtype)
        if step > 0:  # the visitor's accumulator arrives from the previous rank
            for r in dkv_reqs:
                r.wait()
            cur = 1 - cur
        acc = dkv[cur]
        if step == 0:
            acc.zero_()
        acc[0][:, :, cols] += gk.to(acc.dtype)
        acc[1][:, :, cols] += gv.to(acc.dtype)
        other = dkv[1 - cur]
        dkv_reqs = exchange(acc, other, rank, world) if world > 1 else []
        for r in kv_reqs:
            r.wait()
        kv, nxt = nxt, kv
    for r in dkv_reqs:
        r.wait()
    home = dkv[1 - cur] if world > 1 else dkv[cur]
    return dq.to(q.dtype), home[0].to(q.dtype), home[1].to(q.dtype)


def zigzag_shard(x, rank, world, dim=2):
    chunks = x.chunk(2 * world, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * world - 1 - rank]], dim=dim).contiguous()


def shard(x, rank, world, causal):
    return zigzag_shard(x, rank, world) if causal else x.chunk(world, dim=2)[rank].contiguous()


# ---- timing ------------------------------------------------------------------------------------

def forward_flops(N, B, H, D, causal):
    pairs = N * (N + 1) / 2 if causal else N * N
    return 4.0 * B * H * D * pairs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slowest(x, device):
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def runs_within(max_seconds, run_s, most):
    """Runs that fit max_seconds when one takes run_s, between 1 and most (0 seconds: most)."""
    if max_seconds <= 0 or most <= 1:
        return most
    fit = math.floor(max_seconds / run_s) if run_s > 0 else most
    return int(min(max(fit, 1), most))


def timed(fn_fwd, fn_bwd, warmup, repeats, device, max_seconds=0.0):
    """Medians of the slowest rank's forward and backward times; with max_seconds > 0 the first
    run (warm-up or timed) decides how many timed runs follow (every rank sees the same times)."""
    fwd, bwd = [], []
    i = 0
    while i < warmup + repeats:
        sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        state = fn_fwd()
        sync(device)
        t1 = time.perf_counter()
        if fn_bwd is not None:
            fn_bwd(state)
            sync(device)
        t2 = time.perf_counter()
        f, b = slowest(t1 - t0, device), slowest(t2 - t1, device)
        if i == 0:
            repeats = runs_within(max_seconds, f + b, repeats)
        if i >= warmup:
            fwd.append(f)
            bwd.append(b)
        i += 1
    return median(fwd), median(bwd), len(fwd)


_MESH = {}


def world_mesh(world):
    """One 1-D device mesh over all ranks, made once."""
    if world not in _MESH:
        from torch.distributed.device_mesh import init_device_mesh
        _MESH[world] = init_device_mesh("cuda", (world,))
    return _MESH[world]


def run_case(impl, scaling, N, causal, backward, a, rank, world, device):
    B, H, D = a.batch, a.heads, a.head_dim
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    row = {"impl": impl, "scaling": scaling, "gpus": world, "seq_len": N,
           "tokens_per_gpu": N // world, "causal": causal,
           "sharding": ("zigzag" if causal else "contiguous") if world > 1 else "none",
           "batch": B, "heads": H, "head_dim": D, "dtype": a.dtype,
           "pass": "fwd+bwd" if backward else "fwd"}
    L = N // world
    repeats = a.repeats if backward else 1  # forward-only cases are the longest: one timed run
    gen = torch.Generator(device=device).manual_seed(1234 + rank)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    try:
        if impl == "sdpa" or world == 1:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            q, k, v, g = (torch.randn(B, H, N, D, device=device, dtype=dtype, generator=gen)
                          for _ in range(4))
            q.requires_grad_(backward), k.requires_grad_(backward), v.requires_grad_(backward)

            def fwd():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                            is_causal=causal)
            bwd = (lambda out: out.backward(g)) if backward else None
            tf, tb, runs = timed(fwd, bwd, a.warmup, repeats, device, a.max_seconds)
        elif impl == "context_parallel":
            from torch.distributed.tensor.experimental import context_parallel
            from torch.nn.attention import SDPBackend, sdpa_kernel
            # PyTorch load-balances causal runs (its own zigzag) and refuses to for non-causal
            # ones ("Load balancing requires is_causal=True"): on for causal only. The switch is
            # the module-level _cp_options object (where the code lives in the package
            # _context_parallel, the _attention module re-exports that same object, so setting
            # its field is seen by both). context_parallel() reads it to pick its load balancer
            # (none when off: contiguous shards) and the ring reads it at every step; the row
            # records what the context saw.
            cp_options = None
            try:
                from torch.distributed.tensor.experimental import _attention as cp_attention
                cp_options = cp_attention._cp_options
                cp_options.enable_load_balance = causal
            except (ImportError, AttributeError) as e:
                row["cp_load_balance_note"] = "could not set: %s" % e
            mesh = world_mesh(world)
            bufs = [torch.randn(B, H, N, D, device=device, dtype=dtype, generator=gen)
                    for _ in range(4)]
            with context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2, 2],
                                  no_restore_buffers=set(bufs)):
                q, k, v = (t.detach().requires_grad_(backward) for t in bufs[:3])
                g = bufs[3]
                if cp_options is not None:
                    row["cp_load_balance"] = bool(cp_options.enable_load_balance)

                def fwd():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=causal)
                bwd = (lambda out: out.backward(g)) if backward else None
                tf, tb, runs = timed(fwd, bwd, a.warmup, repeats, device, a.max_seconds)
        else:  # torch_ring
            q, k, v, g = (torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)
                          for _ in range(4))

            def fwd():
                return ring_forward(q, k, v, causal, rank, world)
            bwd = (lambda st: ring_backward(g, q, k, v, st[0], st[1], causal, rank, world)) \
                if backward else None
            tf, tb, runs = timed(fwd, bwd, a.warmup, repeats, device, a.max_seconds)
    except torch.OutOfMemoryError as e:
        row["status"] = "failed: out of memory: " + str(e).split("\n")[0]
        torch.cuda.empty_cache()
        return row
    except Exception as e:  # an anchor that fails is reported, the sweep goes on
        row["status"] = "failed: %s: %s" % (type(e).__name__, str(e).split("\n")[0][:300])
        return row
    flops = forward_flops(N, B, H, D, causal)
    per_gpu = flops / world
    row.update({"status": "ok", "timed_runs": runs, "fwd_s": tf,
                "fwd_tflops_per_gpu": per_gpu / tf / 1e12,
                "flops_fwd": flops,
                "peak_bytes_per_gpu": slowest(torch.cuda.max_memory_allocated(device) - base,
                                              device)})
    if backward:
        row.update({"bwd_s": tb, "fwd_bwd_s": tf + tb,
                    "fwd_bwd_tflops_per_gpu": per_gpu * 3.5 / (tf + tb) / 1e12})
    return row


# ---- correctness of the ring anchor ----------------------------------------------------------

def check_ring(rank, world, device, dtype, N=1024, B=1, H=2, D=64):
    """Max errors of torch_ring (forward, dq, dk, dv) against the single-device computation."""
    worst = {}
    for causal in (False, True):
        gen = torch.Generator(device="cpu").manual_seed(7)
        full = [torch.randn(B, H, N, D, generator=gen).to(device=device, dtype=dtype)
                for _ in range(4)]
        q, k, v, g = full
        if device.type == "cuda":
            qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
            ref_o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
            ref_o.backward(g)
            ref = [ref_o.detach(), qq.grad, kk.grad, vv.grad]
        else:
            o, lse, _ = attn_forward(q, k, v, causal)
            ref = [o, *attn_backward(g, q, k, v, o, lse, causal, None)]
        local = [shard(t, rank, world, causal) for t in full]
        o, lse = ring_forward(*local[:3], causal, rank, world)
        grads = ring_backward(local[3], *local[:3], o, lse, causal, rank, world)
        for name, got, want in zip(("o", "dq", "dk", "dv"), (o, *grads), ref):
            err = (got.double() - shard(want, rank, world, causal).double()).abs().max().item()
            scale = shard(want, rank, world, causal).double().abs().max().item()
            key = "%s_%s" % ("causal" if causal else "full", name)
            worst[key] = max(worst.get(key, 0.0), err / max(scale, 1e-30))
    t = torch.tensor(list(worst.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(worst.keys(), t.tolist()))


def parse_list(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weak", default="32768", help="tokens per GPU, comma-separated")
    ap.add_argument("--strong", default="", help="total tokens (causal, fwd+bwd), comma-separated")
    ap.add_argument("--strong-fwd", default="", help="total tokens (causal, forward only)")
    ap.add_argument("--causal", default="both", choices=["both", "causal", "full"])
    ap.add_argument("--impls", default="context_parallel,torch_ring")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="timed runs shrink to about this many seconds per case, judged by its "
                         "first run; at least one (0: always --repeats)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds after which no new case starts, nor one predicted (from the "
                         "last case of the same implementation, scaling and pass) to end after "
                         "them")
    ap.add_argument("--out", default="torch_anchors.jsonl")
    ap.add_argument("--check", action="store_true", help="check torch_ring against SDPA first")
    ap.add_argument("--cpu-test", action="store_true",
                    help="only the ring check, on CPU processes (gloo, math kernel)")
    a = ap.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if a.cpu_test:
        dist.init_process_group("gloo")
        errs = check_ring(rank, world, torch.device("cpu"), torch.float64, N=16 * world, H=2, D=8)
        if rank == 0:
            print(json.dumps({"cpu_ring_check_max_rel_error": errs}))
        bad = {k: e for k, e in errs.items() if not e < 1e-10}
        dist.destroy_process_group()
        if bad:
            print("torch_ring is wrong on CPU: %s" % bad, file=sys.stderr)
            sys.exit(1)
        return

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    out = open(a.out, "a") if rank == 0 else None
    header = {"type": "header", "impl": "pytorch", "gpus": world, "torch": torch.__version__,
              "nccl": ".".join(map(str, torch.cuda.nccl.version())),
              "device": torch.cuda.get_device_name(device),
              "command": "python3 -m torch.distributed.run --nproc_per_node %d "
                         "bench/multigpu/torch_anchors.py %s" % (world, " ".join(sys.argv[1:]))}
    if a.check and world > 1:
        header["torch_ring_check_max_rel_error_bf16"] = check_ring(rank, world, device,
                                                                   torch.bfloat16)
    if out:
        out.write(json.dumps(header) + "\n")
        out.flush()

    cases = []
    for L in parse_list(a.weak):
        if a.causal != "causal":
            cases.append(("weak", L * world, False, True))
        if a.causal != "full":
            cases.append(("weak", L * world, True, True))
    cases += [("strong", N, True, True) for N in parse_list(a.strong)]
    cases += [("strong", N, True, False) for N in parse_list(a.strong_fwd)]
    impls = ["sdpa"] if world == 1 else [i for i in a.impls.split(",") if i]

    start = time.perf_counter()
    s_per_flop = {}  # (impl, scaling, pass) -> seconds per FLOP of its last case that ran
    for scaling, N, causal, backward in cases:
        for impl in impls:
            flops = forward_flops(N, a.batch, a.heads, a.head_dim, causal)
            flops *= 3.5 if backward else 1.0
            predicted = s_per_flop.get((impl, scaling, backward), 0.0) * flops * (a.warmup + 1)
            elapsed = time.perf_counter() - start
            decision = 0.0 if elapsed >= a.budget else -1.0 if elapsed + predicted > a.budget \
                else 1.0
            go = torch.tensor([decision], device=device)
            dist.broadcast(go, 0)
            if go.item() != 1.0:
                why = "skipped: time budget spent" if go.item() == 0.0 else \
                    "skipped: predicted %.0f s, past the time budget" % predicted
                row = {"impl": impl, "scaling": scaling, "gpus": world, "seq_len": N,
                       "causal": causal, "pass": "fwd+bwd" if backward else "fwd",
                       "status": why}
            else:
                row = run_case(impl, scaling, N, causal, backward, a, rank, world, device)
                if row.get("status") == "ok":
                    taken = row["fwd_bwd_s"] if backward else row["fwd_s"]
                    s_per_flop[(impl, scaling, backward)] = taken / flops
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
                msg = row.get("status")
                if msg == "ok":
                    msg = "fwd %.1f ms (%.0f TFLOP/s/GPU)" % (row["fwd_s"] * 1e3,
                                                              row["fwd_tflops_per_gpu"])
                    if backward:
                        msg += ", fwd+bwd %.1f ms (%.0f TFLOP/s/GPU)" % (
                            row["fwd_bwd_s"] * 1e3, row["fwd_bwd_tflops_per_gpu"])
                print("%s %d GPU(s) %s N=%d %s %s: %s" % (impl, world, scaling, N,
                                                          "causal" if causal else "full",
                                                          row["pass"], msg), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
