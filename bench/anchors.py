#!/usr/bin/env python3
"""PyTorch anchors for longattn's kernel benchmark (bench/kernel_bench.cpp).

Reads the JSON kernel_bench wrote, runs on the same GPU and the same shapes:
  - dense rows: SDPA with the flash backend and with the cuDNN backend (torch.nn.attention.sdpa_kernel);
  - block-sparse rows: FlexAttention (torch.compile'd) with the identical block mask, read from the
    .npy block matrix kernel_bench saved, every kept block a full block as in longattn;
  - dilated rows (groups mode): the seed package's DilatedAttention written as per-segment SDPA
    (head groups, offset i mod r_i, rows offset::r of each segment, scatter, divide by G).
Timing as kernel_bench: CUDA events on the current stream, warm-up (calls and GPU time, as kernel_bench
used), median/p10/p90 of up to
--repeats calls within --max-seconds per row (at least 5). Backward anchors time autograd.grad of
a retained graph (the backward alone). Writes one merged JSON (rows with "anchors" and "ratios" =
anchor time / longattn time, > 1 means longattn is faster) and prints a table.
"""
import argparse
import json
import math
import platform
import sys
import time


def percentile(values, p):
    v = sorted(values)
    pos = p * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


class EnergyMeter:
    """The GPU's cumulative energy counter (NVML's nvmlDeviceGetTotalEnergyConsumption, in mJ),
    read through ctypes from the driver's libnvidia-ml.so.1 (`lib`: a stand-in for tests). Where
    NVML, the device or the counter is missing, available() is False and `reason` says why."""

    def __init__(self, pci_bus_id, lib=None):
        self.reason, self._read, self._mhz = None, None, None
        try:
            import ctypes
            nvml = lib if lib is not None else ctypes.CDLL("libnvidia-ml.so.1")
            rc = nvml.nvmlInit_v2()
            if rc != 0:
                raise RuntimeError(f"nvmlInit_v2 returned {rc}")
            handle = ctypes.c_void_p()
            rc = nvml.nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id.encode(), ctypes.byref(handle))
            if rc != 0:
                raise RuntimeError(f"no NVML device at PCI bus id {pci_bus_id!r} ({rc})")
            value = ctypes.c_ulonglong()

            def read():
                rc = nvml.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(value))
                if rc != 0:
                    raise RuntimeError(f"nvmlDeviceGetTotalEnergyConsumption returned {rc}")
                return int(value.value)

            read()
            self._read = read
            clock = getattr(nvml, "nvmlDeviceGetClockInfo", None)
            if clock is not None:
                mhz = ctypes.c_uint()

                def sm_mhz():  # NVML_CLOCK_SM; None where NVML cannot say
                    return int(mhz.value) if clock(handle, 1, ctypes.byref(mhz)) == 0 else None

                self._mhz = sm_mhz
        except Exception as e:  # energy is optional: the times are still measured
            self.reason = f"{type(e).__name__}: {e}"

    def available(self):
        return self._read is not None

    def millijoules(self):
        return self._read()

    def sm_mhz(self):
        """The SM clock now (MHz), or None where NVML cannot say."""
        return self._mhz() if self.available() and self._mhz is not None else None


def energy_summary(mj0, mj1, calls, wall_ms):
    """Energy per call and mean power of `calls` calls that took wall_ms between two readings
    of the energy counter (mJ)."""
    if calls <= 0 or wall_ms <= 0 or mj1 < mj0:
        raise ValueError(f"energy window: {calls} calls, {wall_ms} ms, {mj0}..{mj1} mJ")
    joules = (mj1 - mj0) / 1e3
    return {"energy_j_per_call": joules / calls, "watts": joules / (wall_ms / 1e3),
            "energy_calls": calls, "energy_ms": wall_ms}


class Timer:
    """kernel_bench's timing: mode "sync" waits for each timed call, "queued" launches the calls
    back to back with an event between each two (and warms up in batches of ~10 ms), "graph"
    captures k calls (~10 ms) into a CUDA graph and times its replays, divided by k. With
    energy_ms > 0 and a working meter, the calls then run back to back for at least energy_ms
    of wall time between two readings of the GPU's energy counter (energy per call, mean
    power), as kernel_bench's --energy-ms."""

    def __init__(self, torch, warmup, repeats, max_seconds, warm_ms=0.0, mode="sync",
                 energy_ms=0.0, meter=None, clock=time.perf_counter):
        if mode not in ("sync", "queued", "graph"):
            raise ValueError(f"timing mode {mode!r}: must be sync, queued or graph")
        self.torch, self.warmup, self.repeats, self.max_seconds = torch, warmup, repeats, max_seconds
        self.warm_ms, self.mode = warm_ms, mode
        self.energy_ms, self.meter, self.clock = energy_ms, meter, clock

    def __call__(self, fn):
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)

        def batch(k):
            start.record()
            for _ in range(k):
                fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop)

        queued = self.mode != "sync"
        # One setup call first, waited for and counted nowhere, as kernel_bench does: a first
        # call can build a plan (cuDNN's attention compiles its kernels at first use, over a
        # second), and counted as warm-up it spent the warm-up's budget at once and left the row
        # timed cold, on 5 repeats (the cuDNN 4K anchors of RESULTS 1.56 and 1.58).
        batch(1)
        # At least `warmup` calls and warm_ms of GPU time, stopping early on slow rows, as
        # kernel_bench does.
        first, warm_ms, i = 0.0, 0.0, 0
        while True:
            k = min(max(int(10.0 / max(first, 1e-3)), 1), 1000) if queued and i > 0 else 1
            t = batch(k)
            first, warm_ms, i = t / k, warm_ms + t, i + k
            if warm_ms > self.max_seconds * 1e3 / 3:
                break
            if i >= max(1, self.warmup) and warm_ms >= self.warm_ms:
                break
        reps = self.repeats
        if first > 0:
            reps = min(reps, int(self.max_seconds * 1e3 / first))
        reps = max(reps, 5)
        if self.mode == "graph":
            k = min(max(int(10.0 / max(first, 1e-3)), 1), 1000)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(k):
                    fn()
            ms = []
            for _ in range(reps):
                graph.replay()  # untimed: the GPU is busy while the timed replay is launched
                start.record()
                graph.replay()
                stop.record()
                stop.synchronize()
                ms.append(start.elapsed_time(stop) / k)
            del graph
        elif queued:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
            ev[0].record()
            for j in range(reps):
                fn()
                ev[j + 1].record()
            ev[-1].synchronize()
            ms = [ev[j].elapsed_time(ev[j + 1]) for j in range(reps)]
        else:
            ms = [batch(1) for _ in range(reps)]
        result = {"ms_median": percentile(ms, 0.5), "ms_p10": percentile(ms, 0.1),
                  "ms_p90": percentile(ms, 0.9), "repeats": reps,
                  "warm_ms": round(warm_ms, 3), "warm_calls": i}
        if self.energy_ms > 0 and self.meter is not None and self.meter.available():
            # Batches of ~50 ms of calls, each waited for (the gaps are a few us in 50 ms).
            k = min(max(int(50.0 / max(percentile(ms, 0.5), 1e-3)), 1), 10000)
            done = torch.cuda.Event()
            mj0, t0, calls, mhz = self.meter.millijoules(), self.clock(), 0, []
            while (self.clock() - t0) * 1e3 < self.energy_ms:
                for _ in range(k):
                    fn()
                m = self.meter.sm_mhz()  # while the batch runs
                if m:
                    mhz.append(m)
                done.record()
                done.synchronize()
                calls += k
            result.update(energy_summary(mj0, self.meter.millijoules(), calls,
                                         (self.clock() - t0) * 1e3))
            if mhz:
                result["sm_mhz"] = sum(mhz) / len(mhz)
        return result


def dtype_of(torch, name):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def bnhd(torch, shape, dtype, seed, grad):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t = torch.randn(*shape, device="cuda", dtype=dtype, generator=g)
    return t.requires_grad_(grad)


def time_pass(timer, torch, forward, inputs, pass_name, grad_out_seed=4):
    """forward(*inputs) -> output; times the forward alone or the backward alone."""
    if pass_name == "fwd":
        with torch.no_grad():
            return timer(lambda: forward(*inputs))
    out = forward(*inputs)
    g = torch.Generator(device="cuda").manual_seed(grad_out_seed)
    d_out = torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=g)
    return timer(lambda: torch.autograd.grad(out, inputs, d_out, retain_graph=True))


def sdpa_anchor(torch, timer, row, backend):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    B, N, H, D = row["B"], row["N"], row["H"], row["D"]
    dtype = dtype_of(torch, row["dtype"])
    grad = row["pass"] == "bwd"

    def fwd(q, k, v):
        with sdpa_kernel([be]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=row["causal"])

    # [B, N, H, D] memory like longattn's, seen as [B, H, N, D] by SDPA; a backend that refuses
    # that layout gets contiguous [B, H, N, D] instead (recorded).
    try:
        q, k, v = (bnhd(torch, (B, N, H, D), dtype, s, False).transpose(1, 2).requires_grad_(grad)
                   for s in (1, 2, 3))
        result = time_pass(timer, torch, fwd, (q, k, v), row["pass"])
        result["layout"] = "BNHD"
    except RuntimeError:
        q = k = v = None
        torch.cuda.empty_cache()
        q, k, v = (bnhd(torch, (B, H, N, D), dtype, s, grad) for s in (1, 2, 3))
        result = time_pass(timer, torch, fwd, (q, k, v), row["pass"])
        result["layout"] = "BHND"
    return result


_flex_compiled = None


def flex_anchor(torch, timer, row, np):
    global _flex_compiled
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    B, N, H, D, bs = row["B"], row["N"], row["H"], row["D"], row["block"]
    dense = torch.from_numpy(np.load(row["mask_file"]).astype(np.bool_)).cuda()
    nq, nk = dense.shape
    # Every kept block is a full block (N is a multiple of the block size; non-causal), exactly
    # the blocks longattn computes: no partial blocks, no mask_mod evaluation.
    counts = dense.sum(dim=1).to(torch.int32)
    order = torch.argsort((~dense).to(torch.int8), dim=1, stable=True).to(torch.int32)
    full_num = counts.view(1, 1, nq)
    full_idx = order.view(1, 1, nq, nk).contiguous()
    zeros_num = torch.zeros_like(full_num)
    zeros_idx = torch.zeros_like(full_idx)
    block_mask = BlockMask.from_kv_blocks(zeros_num, zeros_idx, full_num, full_idx,
                                          BLOCK_SIZE=bs, mask_mod=lambda b, h, qi, ki: qi >= 0,
                                          seq_lengths=(N, N))
    dtype = dtype_of(torch, row["dtype"])
    grad = row["pass"] == "bwd"
    q, k, v = (bnhd(torch, (B, H, N, D), dtype, s, grad) for s in (1, 2, 3))

    def fwd(q, k, v):
        return _flex_compiled(q, k, v, block_mask=block_mask)

    return time_pass(timer, torch, fwd, (q, k, v), row["pass"])


def dilated_groups_sdpa(torch, q, k, v, segments, rates, causal):
    """The seed's DilatedAttention on [B, N, H, D]: per head group, per-segment SDPA."""
    import torch.nn.functional as F
    B, N, H, D = q.shape
    G = len(segments)
    sizes = [H // G + (1 if i < H % G else 0) for i in range(G)]
    out = torch.zeros_like(q)
    h0 = 0
    for i, (s, r) in enumerate(zip(segments, rates)):
        g, off = sizes[i], i % r
        hs = slice(h0, h0 + g)
        h0 += g
        if g == 0 or off >= s:
            continue
        n_seg = N // s

        def pick(t):
            x = t.view(B, n_seg, s, H, D)[:, :, off::r, hs]  # [B, n_seg, L, g, D]
            L = x.shape[2]
            return x.reshape(B * n_seg, L, g, D).transpose(1, 2), L

        (qi, L), (ki, _), (vi, _) = pick(q), pick(k), pick(v)
        a = F.scaled_dot_product_attention(qi, ki, vi, is_causal=causal)  # [B', g, L, D]
        out.view(B, n_seg, s, H, D)[:, :, off::r, hs] = a.transpose(1, 2).reshape(B, n_seg, L, g, D)
    return out / G


def dilated_anchor(torch, timer, row):
    B, N, H, D = row["B"], row["N"], row["H"], row["D"]
    dtype = dtype_of(torch, row["dtype"])
    grad = row["pass"] == "bwd"
    q, k, v = (bnhd(torch, (B, N, H, D), dtype, s, grad) for s in (1, 2, 3))

    def fwd(q, k, v):
        return dilated_groups_sdpa(torch, q, k, v, row["segment_lengths"], row["dilation_rates"],
                                   row["causal"])

    return time_pass(timer, torch, fwd, (q, k, v), row["pass"])


ANCHORS = ("sdpa_flash", "sdpa_cudnn", "flex", "dilated_sdpa")


def anchors_for(row, only=None):
    """The anchors of a row (all of them, or those of `only`)."""
    names = []
    if row.get("error"):
        names = []
    elif row["suite"] == "dense":
        names = ["sdpa_flash", "sdpa_cudnn"]
    elif row["suite"] == "sparse":
        names = ["flex"]
    elif row["suite"] == "dilated" and row.get("mode") == "groups":
        names = ["dilated_sdpa"]
    return [n for n in names if only is None or n in only]


def run_anchor(name, torch, timer, row, np):
    if name == "sdpa_flash":
        return sdpa_anchor(torch, timer, row, "flash")
    if name == "sdpa_cudnn":
        return sdpa_anchor(torch, timer, row, "cudnn")
    if name == "flex":
        return flex_anchor(torch, timer, row, np)
    if name == "dilated_sdpa":
        return dilated_anchor(torch, timer, row)
    raise ValueError(name)


def describe(row):
    what = row.get("pattern") or row.get("mode") or ""
    if row.get("config"):
        what += "/" + row["config"][:6]
    return what


def print_table(result, out):
    names = list(ANCHORS)
    head = (f"{'suite':<8}{'pass':<8}{'what':<16}{'N':>7}{'H':>4}{'D':>5}{'causal':>7}{'dens':>7}"
            f"{'ms':>10}{'p10':>9}{'p90':>9}{'TFLOP/s':>9}")
    for n in names:
        head += f"{n + ' ms':>16}{'ratio':>7}"
    units = " " * 51 + f"{'(median)':>24}{'':>18}" + "".join(
        f"{'(median)':>16}{'(x)':>7}" for _ in names)
    lines = [f"# longattn kernel benchmark on {result['gpu']}, {result['date']}",
             f"# command: {result['command']}",
             f"# torch {result.get('torch', '?')}; ratio = anchor ms / longattn ms (> 1: longattn faster)",
             head, units]
    for r in result["rows"]:
        base = (f"{r['suite']:<8}{r.get('pass', ''):<8}{describe(r):<16}{r['N']:>7}{r['H']:>4}"
                f"{r['D']:>5}{('yes' if r['causal'] else 'no'):>7}{r.get('density', 1.0):>7.3f}")
        if r.get("error"):
            lines.append(base + f"  ERROR {r['error'][:100]}")
            continue
        base += (f"{r['ms_median']:>10.3f}{r['ms_p10']:>9.3f}{r['ms_p90']:>9.3f}"
                 f"{r['tflops']:>9.1f}")
        for n in names:
            a = r.get("anchors", {}).get(n)
            if a is None:
                base += f"{'-':>16}{'-':>7}"
            elif "error" in a:
                base += f"{'error':>16}{'-':>7}"
            else:
                base += f"{a['ms_median']:>16.3f}{r['ratios'][n]:>7.2f}"
        lines.append(base)
    energy = [r for r in result["rows"] if "energy_j_per_call" in r]
    if energy:
        lines += ["", f"# energy per call and mean power over at least "
                      f"{result['timing'].get('energy_ms', 0):g} ms of calls back to back (NVML "
                      "energy counter); ratio = anchor J / longattn J (> 1: longattn spends less)",
                  f"{'suite':<8}{'pass':<8}{'what':<16}{'N':>7}{'D':>5}{'causal':>7}{'dens':>7}"
                  f"{'J':>10}{'W':>7}" + "".join(f"{n + ' J':>16}{'W':>7}{'ratio':>7}" for n in names)]
        for r in energy:
            line = (f"{r['suite']:<8}{r.get('pass', ''):<8}{describe(r):<16}{r['N']:>7}{r['D']:>5}"
                    f"{('yes' if r['causal'] else 'no'):>7}{r.get('density', 1.0):>7.3f}"
                    f"{r['energy_j_per_call']:>10.4f}{r['watts']:>7.0f}")
            for n in names:
                a = r.get("anchors", {}).get(n, {})
                if "energy_j_per_call" in a:
                    line += (f"{a['energy_j_per_call']:>16.4f}{a['watts']:>7.0f}"
                             f"{r['energy_ratios'][n]:>7.2f}")
                else:
                    line += f"{'-':>16}{'-':>7}{'-':>7}"
            lines.append(line)
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="JSON written by kernel_bench")
    ap.add_argument("--out", required=True, help="merged JSON to write")
    ap.add_argument("--table", default=None, help="also write the printed table here")
    ap.add_argument("--command", default=None, help="the command to record (default: kernel_bench's)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up calls per row (default: what kernel_bench used)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per row, at most (default: what kernel_bench used)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget per row (default: what kernel_bench used)")
    ap.add_argument("--timing", choices=("sync", "queued", "graph"), default=None,
                    help="timing mode (default: what kernel_bench used)")
    ap.add_argument("--warm-ms", type=float, default=None,
                    help="warm-up GPU time per row (default: what kernel_bench used)")
    ap.add_argument("--only", default=None,
                    help="comma-separated anchors to run (of sdpa_flash, sdpa_cudnn, flex, "
                         "dilated_sdpa; default: every anchor a row has)")
    ap.add_argument("--energy-ms", type=float, default=None,
                    help="energy window per row, ms of calls back to back (default: what "
                         "kernel_bench used; 0: none)")
    args = ap.parse_args()
    only = None
    if args.only is not None:
        only = [n for n in args.only.split(",") if n]
        unknown = [n for n in only if n not in ANCHORS]
        if unknown or not only:
            ap.error(f"--only: unknown anchor {','.join(unknown) or repr(args.only)} "
                     f"(known: {', '.join(ANCHORS)})")

    with open(args.ours) as f:
        result = json.load(f)
    if args.command:
        result["kernel_bench_command"] = result.get("command")
        result["command"] = args.command
    result["python"] = platform.python_version()
    try:
        import numpy as np
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        result["torch"] = torch.__version__
        result["torch_cuda"] = torch.version.cuda
        result["torch_cudnn"] = torch.backends.cudnn.version()
        result["torch_gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # the anchors are optional; our rows are still written
        result["anchors_error"] = f"{type(e).__name__}: {e}"
        print(f"anchors: skipped ({result['anchors_error']})", file=sys.stderr)
        torch = None
    if torch is not None:
        warm_ms = args.warm_ms
        if warm_ms is None:
            warm_ms = float(result.get("timing", {}).get("warm_ms", 0.0))
        mode = args.timing or result.get("timing", {}).get("mode", "sync")
        timing = result.setdefault("timing", {})
        energy_ms = args.energy_ms
        if energy_ms is None:
            energy_ms = float(timing.get("energy_ms", 0.0))
        meter = None
        if energy_ms > 0:
            meter = EnergyMeter(timing.get("pci_bus_id", ""))
            timing["anchor_energy"] = "nvml" if meter.available() else meter.reason
            timing["anchor_energy_ms"] = energy_ms
        # The row budget, warm-up and repeats of kernel_bench unless given: the warm-up stops
        # at a third of the budget, so a long --warm-ms needs the same --max-seconds on both.
        def same(arg, key, default):
            return arg if arg is not None else type(default)(timing.get(key, default))
        timer = Timer(torch, same(args.warmup, "warmup", 3), same(args.repeats, "repeats_max", 20),
                      same(args.max_seconds, "max_seconds_per_row", 3.0), warm_ms, mode,
                      energy_ms, meter)
        timing["anchor_warmup"], timing["anchor_max_seconds"] = timer.warmup, timer.max_seconds
        timing["anchor_mode"] = mode
        for r in result["rows"]:
            for name in anchors_for(r, only):
                try:
                    a = run_anchor(name, torch, timer, r, np)
                    a["tflops"] = r["flops"] / (a["ms_median"] * 1e-3) / 1e12
                except Exception as e:
                    a = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                torch.cuda.empty_cache()
                r.setdefault("anchors", {})[name] = a
                if "ms_median" in a:
                    r.setdefault("ratios", {})[name] = a["ms_median"] / r["ms_median"]
                if "energy_j_per_call" in a and "energy_j_per_call" in r:
                    r.setdefault("energy_ratios", {})[name] = (a["energy_j_per_call"] /
                                                              r["energy_j_per_call"])
                print(f"anchor {name:<13} {r['suite']:<8}{r.get('pass', ''):<5}N={r['N']:<7}"
                      f"D={r['D']:<4}{'causal' if r['causal'] else 'full':<7} "
                      + (f"{a['ms_median']:.3f} ms" if "ms_median" in a else a["error"]),
                      file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_table(result, args.table)


if __name__ == "__main__":
    main()
