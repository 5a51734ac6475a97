#!/usr/bin/env python3
"""CPU tests of the benchmark's Python tools: anchors.Timer's timing modes (with a fake torch
whose GPU clock runs only inside the timed calls, and a host that takes time between them), its
energy window (a fake NVML), bench/kernel_summary.py's target summary, bench/ab_compare.py's
paired comparison and bench/ncu_opcode_mix.py's instruction mix."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import anchors  # noqa: E402


class FakeGpu:
    """One stream: work runs in launch order; events take the stream's time when it reaches them.
    The host spends `host_ms` launching each call; the GPU is idle when the host is behind."""

    def __init__(self, call_ms, host_ms):
        self.call_ms, self.host_ms = call_ms, host_ms
        self.host = 0.0    # host clock (ms)
        self.stream = 0.0  # when the stream's queued work ends
        self.calls = 0

    def launch(self):
        if getattr(self, "captured", None) is not None:
            self.captured.append(self.call_ms)  # recorded into a graph, not run
            return
        self.host += self.host_ms
        self.stream = max(self.stream, self.host) + self.call_ms
        self.calls += 1


class FakeTorch:
    def __init__(self, gpu):
        gpu_ = gpu

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = max(gpu_.stream, gpu_.host)
                gpu_.stream = self.t

            def synchronize(self):
                gpu_.host = max(gpu_.host, self.t)

            def elapsed_time(self, other):
                return other.t - self.t

        class CUDAGraph:
            """Replays the calls captured into it back to back, one host launch for all."""

            def __init__(self):
                self.calls = []

            def replay(self):
                gpu_.host += gpu_.host_ms
                gpu_.stream = max(gpu_.stream, gpu_.host) + sum(self.calls)
                gpu_.calls += len(self.calls)

        class graph:
            def __init__(self, g):
                self.g = g

            def __enter__(self):
                gpu_.captured = self.g.calls

            def __exit__(self, *exc):
                gpu_.captured = None

        class Cuda:
            pass

        self.cuda = Cuda()
        self.cuda.Event = Event
        self.cuda.CUDAGraph = CUDAGraph
        self.cuda.graph = graph


class TimerModes(unittest.TestCase):
    def run_mode(self, mode, call_ms, host_ms, **kw):
        gpu = FakeGpu(call_ms, host_ms)
        timer = anchors.Timer(FakeTorch(gpu), warmup=3, repeats=20, max_seconds=3.0,
                              warm_ms=kw.get("warm_ms", 50.0), mode=mode)
        return timer(gpu.launch), gpu

    def test_sync_holds_host_latency(self):
        r, _ = self.run_mode("sync", call_ms=0.2, host_ms=0.1)
        self.assertAlmostEqual(r["ms_median"], 0.3, places=6)

    def test_queued_is_gpu_time_per_call(self):
        r, _ = self.run_mode("queued", call_ms=0.2, host_ms=0.1)
        self.assertAlmostEqual(r["ms_median"], 0.2, places=6)
        self.assertAlmostEqual(r["ms_p90"], 0.2, places=6)

    def test_queued_shows_a_host_bound_call(self):
        # A host slower than the GPU leaves gaps even when queued: they are part of each call.
        r, _ = self.run_mode("queued", call_ms=0.2, host_ms=0.5)
        self.assertAlmostEqual(r["ms_median"], 0.5, places=6)

    def test_graph_removes_a_host_bound_gap(self):
        # Replays of captured calls leave the host out: the GPU time per call even when the
        # host is slower than the GPU (where queued timing shows the host's time).
        r, _ = self.run_mode("graph", call_ms=0.2, host_ms=0.5)
        self.assertAlmostEqual(r["ms_median"], 0.2, places=6)
        q, _ = self.run_mode("queued", call_ms=0.2, host_ms=0.5)
        self.assertGreater(q["ms_median"], r["ms_median"] * 2)

    def test_queued_warm_up_reaches_its_time(self):
        r, gpu = self.run_mode("queued", call_ms=0.2, host_ms=0.01, warm_ms=300.0)
        warm_calls = gpu.calls - r["repeats"]
        self.assertGreaterEqual(warm_calls * 0.2, 300.0 - 1e-9)
        # At most one ~10 ms batch past the warm-up time.
        self.assertLess(warm_calls * 0.2, 300.0 + 10.0 + 0.2 + 1e-9)

    def test_a_slow_first_call_is_setup_not_warm_up(self):
        # A first call that builds a plan on the host for 1.5 s (cuDNN compiling its kernels)
        # must neither end the warm-up nor cut the repeats: before the setup call it was counted
        # as 1.5 s of warm-up, over a third of the 3 s budget, and the row ran cold on 5 repeats.
        for mode in ("queued", "sync", "graph"):
            gpu = FakeGpu(0.2, 0.01)
            first = [True]

            def call():
                if first[0]:
                    gpu.host += 1500.0
                    first[0] = False
                gpu.launch()

            timer = anchors.Timer(FakeTorch(gpu), warmup=3, repeats=20, max_seconds=3.0,
                                  warm_ms=300.0, mode=mode)
            r = timer(call)
            self.assertEqual(r["repeats"], 20, mode)
            self.assertGreaterEqual(r["warm_ms"], 300.0 - 1e-9, mode)
            self.assertGreaterEqual(r["warm_calls"], 300.0 / 0.2 if mode != "sync" else 3, mode)
            self.assertAlmostEqual(r["ms_median"], 0.2 if mode != "sync" else 0.21, places=6)

    def test_rejects_unknown_mode(self):
        with self.assertRaises(ValueError):
            anchors.Timer(FakeTorch(FakeGpu(1, 1)), 3, 20, 3.0, 0.0, mode="async")


class FwdSpans(unittest.TestCase):
    def test_span_summary(self):
        import fwd_trace_summary
        # Two CTAs: one enters at 1000 ns and leaves at 2000, the other enters at 1100, waits 50
        # and leaves at 1800 (its consumers at 1700 and 1800); a line of another shape and a CTA
        # that recorded nothing (zeros: not a timestamp) are skipped.
        text = ("# D=128\n0 0 1000 1010 1900 1950 2000 0\n1 0 1100 1150 1600 1700 1800 0\n"
                "2 0 0 0 0 0 0 0\n5 5 5\n")
        with tempfile.NamedTemporaryFile("w", suffix="_span.txt", delete=False) as f:
            f.write(text)
        try:
            r = fwd_trace_summary.span_summary(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r["ctas"], 2)
        self.assertAlmostEqual(r["span_us"], 1.0)
        self.assertAlmostEqual(r["start_spread_us"], 0.1)
        self.assertAlmostEqual(r["end_spread_us"], 0.2)
        self.assertAlmostEqual(r["wait_us"], (10 + 50) / 2 / 1e3)
        self.assertAlmostEqual(r["idle_share"], (0 + 0 + 100 + 200) / 2000)


class FakeNvml:
    """libnvidia-ml.so.1 for EnergyMeter: one device at bus `bus`, its counter from `energy()`."""

    def __init__(self, bus, energy, init_rc=0, mhz=None):
        self.bus, self.energy, self.init_rc = bus, energy, init_rc
        if mhz is not None:  # the SM clock, from `mhz()`, only where given
            def clock(handle, kind, value):
                if kind != 1:
                    return 2
                value._obj.value = int(mhz())
                return 0
            self.nvmlDeviceGetClockInfo = clock

    def nvmlInit_v2(self):
        return self.init_rc

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus, handle):
        return 0 if bus.decode() == self.bus else 2

    def nvmlDeviceGetTotalEnergyConsumption(self, handle, value):
        value._obj.value = int(self.energy())
        return 0


class Energy(unittest.TestCase):
    def test_summary(self):
        e = anchors.energy_summary(1000, 61000, 300, 200.0)
        self.assertAlmostEqual(e["energy_j_per_call"], 0.2)
        self.assertAlmostEqual(e["watts"], 300.0)
        self.assertEqual(e["energy_calls"], 300)
        for bad in ((1000, 900, 10, 1.0), (0, 10, 0, 1.0), (0, 10, 1, 0.0)):
            with self.assertRaises(ValueError):
                anchors.energy_summary(*bad)

    def test_meter_finds_the_device_or_says_why(self):
        m = anchors.EnergyMeter("0000:19:00.0", lib=FakeNvml("0000:19:00.0", lambda: 5))
        self.assertTrue(m.available())
        self.assertEqual(m.millijoules(), 5)
        m = anchors.EnergyMeter("0000:1a:00.0", lib=FakeNvml("0000:19:00.0", lambda: 5))
        self.assertFalse(m.available())
        self.assertIn("0000:1a:00.0", m.reason)
        m = anchors.EnergyMeter("0000:19:00.0", lib=FakeNvml("0000:19:00.0", lambda: 5, 9))
        self.assertFalse(m.available())
        self.assertIn("nvmlInit_v2", m.reason)

    def test_timer_energy_per_call(self):
        # 300 W while the host clock runs; GPU-bound calls of 0.2 ms: 0.06 J a call.
        gpu = FakeGpu(0.2, 0.01)
        meter = anchors.EnergyMeter("b", lib=FakeNvml("b", lambda: 300.0 * gpu.host))
        timer = anchors.Timer(FakeTorch(gpu), 3, 20, 3.0, 10.0, "queued", energy_ms=500.0,
                              meter=meter, clock=lambda: gpu.host / 1e3)
        r = timer(gpu.launch)
        self.assertAlmostEqual(r["ms_median"], 0.2, places=6)
        self.assertGreaterEqual(r["energy_ms"], 500.0)
        self.assertAlmostEqual(r["watts"], 300.0, delta=1.0)
        self.assertAlmostEqual(r["energy_j_per_call"], 0.06, delta=0.001)
        self.assertNotIn("sm_mhz", r)  # this NVML has no clock
        # With a clock: its mean over the batches, read while they run.
        gpu = FakeGpu(0.2, 0.01)
        clocks = iter(range(1500, 100000, 10))
        meter = anchors.EnergyMeter("b", lib=FakeNvml("b", lambda: 300.0 * gpu.host,
                                                      mhz=lambda: next(clocks)))
        self.assertEqual(meter.sm_mhz(), 1500)
        timer = anchors.Timer(FakeTorch(gpu), 3, 20, 3.0, 10.0, "queued", energy_ms=500.0,
                              meter=meter, clock=lambda: gpu.host / 1e3)
        r = timer(gpu.launch)
        n = (r["energy_calls"] + 249) // 250  # batches of 50 ms of 0.2 ms calls
        self.assertAlmostEqual(r["sm_mhz"], 1510 + 10 * (n - 1) / 2, delta=1e-6)
        # Without a meter (or with energy_ms 0) there are no energy keys.
        plain = FakeGpu(0.2, 0.01)
        r = anchors.Timer(FakeTorch(plain), 3, 20, 3.0, 10.0, "queued")(plain.launch)
        self.assertNotIn("energy_j_per_call", r)


def row(suite, p, n, d, causal, ms, ratios, density=1.0, pattern=None, spread=0.0, anchors=None):
    r = {"suite": suite, "pass": p, "N": n, "D": d, "causal": causal, "density": density,
         "ms_median": ms, "ms_p10": ms * (1 - spread / 2), "ms_p90": ms * (1 + spread / 2),
         "tflops": 100.0 / ms, "ratios": ratios, "anchors": anchors or {}}
    if pattern:
        r["pattern"] = pattern
    return r


class KernelSummary(unittest.TestCase):
    def setUp(self):
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import kernel_summary
        self.ks = kernel_summary
        self.rows = [
            row("dense", "fwd", 4096, 128, False, 1.0, {"sdpa_cudnn": 0.9}),
            row("dense", "fwd", 65536, 128, False, 100.0, {"sdpa_cudnn": 1.1}),
            row("dense", "bwd", 65536, 128, False, 300.0, {"sdpa_cudnn": 0.95},
                anchors={"sdpa_cudnn": {"ms_median": 285.0, "ms_p10": 200.0, "ms_p90": 300.0}}),
            row("sparse", "fwd", 65536, 128, False, 10.0, {"flex": 1.4}, 0.1008, "local_window"),
            row("sparse", "bwd", 65536, 128, False, 31.0, {"flex": 1.2}, 0.1008, "local_window",
                spread=0.3),
            row("sparse", "fwd", 65536, 128, False, 5.0, {"flex": 1.3}, 0.05, "random"),
        ]

    def test_dense_counts_and_rows_under(self):
        s = {(x["pass"], x["D"]): x for x in self.ks.dense_summary(self.rows)}
        self.assertEqual(s[("fwd", 128)]["met"], 1)
        self.assertEqual(s[("fwd", 128)]["rows"], 2)
        self.assertEqual(s[("fwd", 128)]["under"], ["non-causal 4K 0.900"])
        self.assertEqual(s[("bwd", 128)]["met"], 0)
        self.assertEqual(s[("fwd", 128)]["ratio"], (0.9, 1.1))

    def test_speedup_over_dense_at_the_target_density(self):
        got = self.ks.speedup_over_dense(self.rows)
        self.assertEqual([(p, pat) for p, pat, _, _ in got],
                         [("fwd", "local_window"), ("bwd", "local_window")])
        self.assertAlmostEqual(got[0][3], 10.0)
        self.assertAlmostEqual(got[1][3], 300.0 / 31.0)

    def test_spreads_name_ours_and_anchors(self):
        names = [(x[0], x[1], x[2]) for x in self.ks.spreads(self.rows)]
        self.assertIn(("longattn", "sparse", "bwd"), names)
        self.assertIn(("sdpa_cudnn", "dense", "bwd"), names)
        self.assertEqual(len(names), 2)

    def test_short_warm_ups(self):
        timing = {"warm_ms": 2000.0, "max_seconds_per_row": 3.0, "repeats_max": 20}
        warm = {"ms_median": 0.2, "ms_p10": 0.2, "ms_p90": 0.2, "repeats": 20, "warm_ms": 1004.0}
        cold = dict(warm, repeats=5, warm_ms=0.0)
        rows = [row("dense", "fwd", 4096, 128, False, 0.25, {}, anchors={"sdpa_cudnn": cold}),
                row("dense", "bwd", 4096, 128, False, 0.7, {}, anchors={"sdpa_cudnn": warm})]
        rows[0]["warm_ms"], rows[1]["warm_ms"] = 1001.0, 990.0
        got = self.ks.short_warm_ups({"timing": timing, "rows": rows})
        self.assertEqual([(x[0], x[2]) for x in got], [("sdpa_cudnn", "fwd")])
        self.assertIn("0 ms of warm-up of 1000", got[0][6])
        # Files without warm_ms: cut repeats on a short call mark it; on a slow one they do not.
        old = [row("dense", "fwd", 4096, 128, False, 0.25, {},
                   anchors={"sdpa_cudnn": {"ms_median": 0.205, "ms_p10": 0.2, "ms_p90": 0.35,
                                           "repeats": 5}}),
               row("dense", "bwd", 65536, 128, False, 300.0, {},
                   anchors={"sdpa_cudnn": {"ms_median": 400.0, "ms_p10": 399.0,
                                           "ms_p90": 401.0, "repeats": 5}})]
        for r in old:
            r["repeats"] = 20
        got = self.ks.short_warm_ups({"timing": timing, "rows": old})
        self.assertEqual([(x[0], x[3]) for x in got], [("sdpa_cudnn", 4096)])
        self.assertIn("5 repeats of 20", got[0][6])
        text = self.ks.render({"timing": timing, "rows": old})
        self.assertIn("- timed without its warm-up: sdpa_cudnn, dense fwd 4K d=128", text)

    def test_render_and_command_line(self):
        text = self.ks.render({"gpu": "NVIDIA H100 80GB HBM3", "rows": self.rows})
        self.assertIn("| dense fwd d=128 | 1.0-100.0 TFLOP/s; / SDPA cuDNN 0.90-1.10 (at least 1.0 "
                      "in 1 of 2) | H100 |", text)
        self.assertIn("/ FlexAttention 10%: 1.40", text)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.json")
            with open(path, "w") as f:
                json.dump({"rows": self.rows}, f)
            out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "kernel_summary.py"),
                                  path], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("block-sparse over our dense, fwd, local_window (0.1008) | 10.00x", out.stdout)
            with open(path, "w") as f:
                json.dump({"gpu": "x"}, f)
            out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "kernel_summary.py"),
                                  path], capture_output=True, text=True)
            self.assertEqual(out.returncode, 2)


LOG = """\
a 1 sparse   bwd  random             N=65536  H=16  D=128  full    dens=0.100     20.000 ms [  1, 2]    1 TFLOP/s
b 1 sparse   bwd  random             N=65536  H=16  D=128  full    dens=0.100     19.000 ms [  1, 2]    1 TFLOP/s
b 2 sparse   bwd  random             N=65536  H=16  D=128  full    dens=0.100     21.000 ms [  1, 2]    1 TFLOP/s
a 2 sparse   bwd  random             N=65536  H=16  D=128  full    dens=0.100     22.000 ms [  1, 2]    1 TFLOP/s
a 3 dense    fwd                     N=4096   H=16  D=64   causal  dens=0.500      1.000 ms [  1, 2]    1 TFLOP/s
b 3 dense    fwd                     N=4096   H=16  D=64   causal  dens=0.500      0.800 ms [  1, 2]    1 TFLOP/s
"""


class AbCompare(unittest.TestCase):
    def compare(self, *args):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(LOG)
        try:
            return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ab_compare.py"),
                                   f.name, *args], capture_output=True, text=True)
        finally:
            os.unlink(f.name)

    def test_paired_median_and_best(self):
        p = self.compare()
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = {l.split()[0] + " " + l.split()[1]: l for l in p.stdout.splitlines()[2:]}
        # random: rounds 1 and 2 pair 20/19 - 1 = +5.26% and 22/21 - 1 = +4.76%: median +5.0%;
        # best times 20.000 (a) and 19.000 (b).
        r = rows["sparse bwd"]
        self.assertIn("20.000", r)
        self.assertIn("19.000", r)
        self.assertIn("+5.0%", r)
        self.assertIn("+25.0%", rows["dense fwd"])

    def test_base_must_be_a_variant(self):
        p = self.compare("--base", "c")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--base c", p.stderr)


class ScheduleModel(unittest.TestCase):
    """bench/schedule_model.py: its copy of forward_head_group agrees with the C++ rule's test
    cases (tests/cpu/test_dense.cpp), and the model orders as the kernels' notes say."""

    def setUp(self):
        import schedule_model
        self.m = schedule_model

    def test_head_group_matches_the_rule(self):
        cases = {(16, 12): 16, (16, 6): 8, (16, 3): 4, (16, 0): 1, (16, 25): 16, (16, 8): 8,
                 (13, 5): 1, (24, 5): 6, (28, 10): 14, (36, 10): 12, (30, 7): 10, (22, 10): 11,
                 (34, 10): 17, (46, 10): 2}
        for (pairs, per_l2), g in cases.items():
            self.assertEqual(self.m.head_group(pairs, per_l2), g, (pairs, per_l2))
        self.assertEqual(self.m.head_group(16, 12, causal=False), 1)

    def test_makespan(self):
        self.assertEqual(self.m.makespan([3, 3, 3, 3], 2), 6)
        self.assertEqual(self.m.makespan([4, 1, 1, 1, 1], 2), 4)

    def test_grouped_orders_beat_head_by_head_at_4k(self):
        args = type("A", (), {"ctas": 132, "heads": 16, "l2_mb": 50, "fixed_fwd": 1.5,
                              "fixed_bwd": 5.0})()
        r = self.m.model(4096, 128, "bwd", args)
        self.assertGreater(r["head"], 1.2)
        self.assertLess(r["divisor"], 1.01)
        r = self.m.model(65536, 128, "fwd", args)
        self.assertLess(abs(r["head"] - r["divisor"]), 0.005)



class OpcodeMix(unittest.TestCase):
    """bench/ncu_opcode_mix.py: the per-opcode instances of ncu's text output (wrapped over lines,
    an opcode split across two entries), counts per reference opcode, and the exit status when a
    file has no counts or no reference opcode."""

    TEXT = """  void kernel(...) (132, 1, 1)x(384, 1, 1)
    Section: Command line profiler metrics
    gpu__time_duration.sum                        us          277.06
    sass__inst_executed_per_opcode                     1,100 (MUFU: 100;
                                                  FFMA: 300; HGMMA:
                                                  20; FFMA: 100; U2UR.X: 80; BRA: 500)
    smsp__inst_executed.sum                       inst        1,100
"""

    def setUp(self):
        import ncu_opcode_mix
        self.m = ncu_opcode_mix

    def test_counts_and_mix(self):
        counts = self.m.opcode_counts(self.TEXT)
        self.assertEqual(counts, {"MUFU": 100, "FFMA": 400, "HGMMA": 20, "U2UR.X": 80, "BRA": 500})
        total, rows = self.m.mix(counts, "MUFU", 2)
        self.assertEqual(total, 1100)
        self.assertEqual(rows, [("BRA", 5.0), ("FFMA", 4.0)])
        self.assertEqual(self.m.mix(counts, "HGMMA", 1)[1], [("BRA", 25.0)])
        with self.assertRaises(ValueError):
            self.m.mix(counts, "LDS", 3)
        self.assertEqual(self.m.opcode_counts("no metrics here"), {})

    def test_kernel_by_name(self):
        second = self.TEXT.replace("void kernel(...)", "bprop_kernel").replace("MUFU: 100",
                                                                              "MUFU: 50")
        text = "==PROF== header\n" + self.TEXT + second
        self.assertEqual(self.m.opcode_counts(self.m.kernel_section(text, "bprop"))["MUFU"], 50)
        self.assertEqual(self.m.opcode_counts(self.m.kernel_section(text, "kernel"))["MUFU"], 100)
        self.assertIsNone(self.m.kernel_section(text, "convert"))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "two.txt")
            with open(path, "w") as f:
                f.write(text)
            tool = os.path.join(ROOT, "bench", "ncu_opcode_mix.py")
            p = subprocess.run([sys.executable, tool, "--kernel", "bprop", path],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("1,050 warp instructions, 21.00 per MUFU", p.stdout)
            p = subprocess.run([sys.executable, tool, "--kernel", "convert", path],
                               capture_output=True, text=True)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("no kernel matches", p.stderr)

    def test_command_line(self):
        with tempfile.TemporaryDirectory() as d:
            good, bad = os.path.join(d, "good.txt"), os.path.join(d, "bad.txt")
            with open(good, "w") as f:
                f.write(self.TEXT)
            with open(bad, "w") as f:
                f.write("nothing")
            tool = os.path.join(ROOT, "bench", "ncu_opcode_mix.py")
            p = subprocess.run([sys.executable, tool, "--top", "2", good], capture_output=True,
                               text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("1,100 warp instructions, 11.00 per MUFU", p.stdout)
            self.assertIn("BRA 5.00, FFMA 4.00", p.stdout)
            p = subprocess.run([sys.executable, tool, good, bad], capture_output=True, text=True)
            self.assertEqual(p.returncode, 1)
            self.assertIn("no sass__inst_executed_per_opcode", p.stderr)
            p = subprocess.run([sys.executable, tool, "--per", "LDS", good], capture_output=True,
                               text=True)
            self.assertEqual(p.returncode, 1)
            self.assertIn("no LDS instructions", p.stderr)


class SassLoopMix(unittest.TestCase):
    """bench/sass_loop_mix.py: functions of cuobjdump -sass output, opcodes without predicates
    and modifiers, backward branches as loops, the innermost ones, the steady loops of two builds
    compared, and the exit status when nothing matches."""

    @staticmethod
    def sass(name, extra_in_loop):
        body = ["        /*0000*/                   LDC R1, c[0x0][0x28] ;",
                "        /*0010*/                   S2R R0, SR_TID.X ;",
                # outer loop 0x20-0x90, inner (steady) loop 0x30-0x70
                "        /*0020*/                   IMAD R2, R0, 0x2, RZ ;",
                "        /*0030*/                   HGMMA.64x192x16.F32.BF16 R24, gdesc[UR4], R24 ;",
                "        /*0040*/                   R2UR UR6, R2 ;"] + extra_in_loop + [
                "        /*0060*/              @!P0 HGMMA.64x128x16.F32.BF16 R88, R8, gdesc[UR8], R88 ;",
                "        /*0070*/              @!P6 BRA 0x30 ;",
                "        /*0080*/                   STL [R1], R5 ;",
                "        /*0090*/              @P1 BRA 0x20 ;",
                "        /*00a0*/                   EXIT ;"]
        return "\t\tFunction : %s\n" % name + "\n".join(x + "   /* 0x0 */" for x in body) + "\n"

    def setUp(self):
        import sass_loop_mix
        self.m = sass_loop_mix

    def test_loops(self):
        text = self.sass("kernel_a", ["        /*0050*/                   FMUL R3, R3, R4 ;"])
        funcs = self.m.functions(text)
        self.assertEqual(list(funcs), ["kernel_a"])
        code = funcs["kernel_a"]
        self.assertEqual(self.m.opcode("@!P0 HGMMA.64x128x16.F32.BF16 R88"), "HGMMA")
        ls = self.m.loops(code)
        self.assertEqual([(a, b) for a, b, _ in ls], [(0x30, 0x70), (0x20, 0x90)])
        inner = self.m.innermost(ls)
        self.assertEqual([(a, b) for a, b, _ in inner], [(0x30, 0x70)])
        c = self.m.mix(inner[0][2])
        self.assertEqual((c["HGMMA"], c["R2UR"], c["FMUL"], c["STL"]), (2, 1, 1, 0))

    def test_command_line(self):
        a = self.sass("kernel_a", ["        /*0050*/                   FMUL R3, R3, R4 ;"])
        b = self.sass("kernel_b", ["        /*0050*/                   R2UR UR7, R3 ;"])
        with tempfile.TemporaryDirectory() as d:
            pa, pb = os.path.join(d, "a.sass"), os.path.join(d, "b.sass")
            with open(pa, "w") as f:
                f.write(a)
            with open(pb, "w") as f:
                f.write(a + b)
            tool = os.path.join(ROOT, "bench", "sass_loop_mix.py")
            p = subprocess.run([sys.executable, tool, "--kernel", "kernel_b", pa, pb],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 1)
            self.assertIn("no function matches", p.stderr)
            p = subprocess.run([sys.executable, tool, pa, "--kernel", "kernel_", pb],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("loop 0x30-0x70: 5 instructions, 2 HGMMA, 0 LDL/STL, 1 R2UR", p.stdout)
            self.assertIn("differing opcodes (first/second): none", p.stdout)
            with open(pb, "w") as f:
                f.write(b)
            p = subprocess.run([sys.executable, tool, pa, pb], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("R2UR 1/2, FMUL 1/0", p.stdout)
            p = subprocess.run([sys.executable, tool, "--min-hgmma", "3", pa],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 1)
            self.assertIn("no loop with 3 or more HGMMA", p.stderr)
            p = subprocess.run([sys.executable, tool, "--all", pa], capture_output=True, text=True)
            self.assertIn("loop 0x20-0x90", p.stdout)


class AnchorRounds(unittest.TestCase):
    """bench/anchor_rounds.py: rows matched across rounds, medians, paired per-round ratios,
    rows and anchors missing from a round; anchors.py --only; run_kernel_bench.sh --rounds."""

    @staticmethod
    def round_of(ours_ms, cudnn_ms, extra_row=False, cudnn_error=False):
        a = {"sdpa_cudnn": {"ms_median": cudnn_ms, "ms_p10": cudnn_ms, "ms_p90": cudnn_ms,
                            "energy_j_per_call": 1.0, "watts": 700.0}}
        if cudnn_error:
            a = {"sdpa_cudnn": {"error": "RuntimeError: no"}}
        r = row("dense", "fwd", 4096, 128, False, ours_ms, {}, anchors=a)
        r.update(H=16, flops=1e12, energy_j_per_call=1.0, watts=690.0,
                 energy_ratios={"sdpa_cudnn": 1.0})
        rows = [r]
        if extra_row:
            rows.append(dict(row("sparse", "fwd", 65536, 64, False, 5.0, {}, 0.1, "random"), H=16))
        return {"gpu": "NVIDIA H200", "date": "d", "command": "c", "rows": rows}

    def setUp(self):
        import anchor_rounds
        self.m = anchor_rounds

    def test_paired_median(self):
        # Round 2 ran on a slower clock: ours and cuDNN alike; its paired ratio stays 1.0.
        rounds = [self.round_of(1.0, 0.98), self.round_of(1.2, 1.2), self.round_of(1.0, 1.02)]
        got = self.m.merge(rounds)
        self.assertEqual(got["rounds"], 3)
        (r,) = got["rows"]
        self.assertAlmostEqual(r["ms_median"], 1.0)
        self.assertAlmostEqual(r["anchors"]["sdpa_cudnn"]["ms_median"], 1.02)
        self.assertEqual(r["round_ms"], [1.0, 1.2, 1.0])
        self.assertEqual([round(x, 3) for x in r["round_ratios"]["sdpa_cudnn"]], [0.98, 1.0, 1.02])
        self.assertAlmostEqual(r["ratios"]["sdpa_cudnn"], 1.0)
        self.assertAlmostEqual(r["tflops"], 1e12 / 1e-3 / 1e12)
        # Energy is per round only: print_table's energy section must not see merged rows.
        self.assertNotIn("energy_j_per_call", r)
        self.assertNotIn("energy_j_per_call", r["anchors"]["sdpa_cudnn"])

    def test_missing_rows_and_failed_anchors(self):
        rounds = [self.round_of(1.0, 0.9, extra_row=True), self.round_of(1.1, 1.0, cudnn_error=True)]
        got = self.m.merge(rounds)
        self.assertEqual(len(got["rows"]), 2)
        dense, sparse = got["rows"]
        self.assertEqual(dense["rounds_with"], 2)
        self.assertAlmostEqual(dense["ms_median"], 1.05)
        self.assertEqual(dense["anchors"]["sdpa_cudnn"]["rounds_with"], 1)
        self.assertAlmostEqual(dense["ratios"]["sdpa_cudnn"], 0.9)
        self.assertEqual(sparse["rounds_with"], 1)
        with self.assertRaises(ValueError):
            self.m.merge([])
        twice = self.round_of(1.0, 1.0)
        twice["rows"] = twice["rows"] * 2
        with self.assertRaisesRegex(ValueError, "appears twice"):
            self.m.merge([twice])

    def test_command_line(self):
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for i, (o, c) in enumerate([(1.0, 0.97), (1.0, 1.03), (1.0, 1.01)]):
                paths.append(os.path.join(d, f"r{i}.json"))
                with open(paths[-1], "w") as f:
                    json.dump(self.round_of(o, c), f)
            out, table = os.path.join(d, "m.json"), os.path.join(d, "t.txt")
            tool = os.path.join(ROOT, "bench", "anchor_rounds.py")
            p = subprocess.run([sys.executable, tool, *paths, "--out", out, "--table", table,
                                "--command", "cmd --rounds 3"], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(out) as f:
                merged = json.load(f)
            self.assertEqual(merged["command"], "cmd --rounds 3")
            self.assertAlmostEqual(merged["rows"][0]["ratios"]["sdpa_cudnn"], 1.01)
            with open(table) as f:
                text = f.read()
            self.assertIn("1.01", text)
            self.assertIn("sdpa_cudnn: 0.970 1.030 1.010", text)
            p = subprocess.run([sys.executable, tool, os.path.join(d, "none.json"), "--out", out],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("cannot read round", p.stderr)

    def test_only_filters_anchors(self):
        r = row("dense", "fwd", 4096, 128, False, 1.0, {})
        self.assertEqual(anchors.anchors_for(r), ["sdpa_flash", "sdpa_cudnn"])
        self.assertEqual(anchors.anchors_for(r, ["sdpa_cudnn"]), ["sdpa_cudnn"])
        self.assertEqual(anchors.anchors_for(r, ["flex"]), [])
        with tempfile.TemporaryDirectory() as d:
            ours = os.path.join(d, "o.json")
            with open(ours, "w") as f:
                json.dump({"rows": []}, f)
            p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "anchors.py"),
                                "--ours", ours, "--out", os.path.join(d, "m.json"),
                                "--only", "sdpa_cudnn,cudnn9"], capture_output=True, text=True)
            self.assertEqual(p.returncode, 2)
            self.assertIn("unknown anchor cudnn9", p.stderr)

    def test_run_kernel_bench_rounds(self):
        script = os.path.join(ROOT, "bench", "run_kernel_bench.sh")
        with tempfile.TemporaryDirectory() as d:
            # A stand-in kernel_bench: one row whose time is the round number (a counter file).
            fake = os.path.join(d, "kernel_bench")
            with open(fake, "w") as f:
                f.write("#!/usr/bin/env python3\n"
                        "import json, os, sys\n"
                        "c = os.path.join(os.path.dirname(sys.argv[0]), 'count')\n"
                        "n = int(open(c).read()) + 1 if os.path.exists(c) else 1\n"
                        "open(c, 'w').write(str(n))\n"
                        "out = sys.argv[sys.argv.index('--out') + 1]\n"
                        "r = {'suite': 'dense', 'pass': 'fwd', 'N': 4096, 'H': 16, 'D': 128,\n"
                        "     'causal': False, 'density': 1.0, 'ms_median': float(n),\n"
                        "     'ms_p10': float(n), 'ms_p90': float(n), 'tflops': 1.0, 'flops': 1e9}\n"
                        "json.dump({'gpu': 'g', 'date': 'd', 'command': 'k', 'rows': [r]},\n"
                        "          open(out, 'w'))\n")
            os.chmod(fake, 0o755)
            out_dir = os.path.join(d, "o")
            p = subprocess.run(["bash", script, "--bin", fake, "--out-dir", out_dir, "--no-anchors",
                                "--rounds", "3"], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
            with open(os.path.join(out_dir, "kernel_bench.json")) as f:
                merged = json.load(f)
            self.assertEqual(merged["rounds"], 3)
            self.assertEqual(merged["rows"][0]["round_ms"], [1.0, 2.0, 3.0])
            self.assertAlmostEqual(merged["rows"][0]["ms_median"], 2.0)
            for i in (1, 2, 3):
                self.assertTrue(os.path.exists(os.path.join(out_dir, f"kernel_bench_r{i}.json")))
            for bad in (["--rounds", "0"], ["--rounds", "x"], ["--rounds"],
                        ["--anchors", "sdpa_cudnn", "--no-anchors"]):
                p = subprocess.run(["bash", script, "--bin", fake, "--out-dir", out_dir, *bad],
                                   capture_output=True, text=True)
                self.assertEqual(p.returncode, 2, bad)
                self.assertIn("run_kernel_bench.sh:", p.stderr)



if __name__ == "__main__":
    unittest.main()
