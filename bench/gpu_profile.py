"""Where a training step's time goes on the GPU: launch-bound or device-bound, and what each speed item bought.

    python bench/gpu_profile.py --data tinyshakespeare.txt [--seconds 1.5] [--out DIR]

Times charrnn's training step (bench.py's `Ours`, Adam, clipping; timed up to the last loss's
read-back) on cuda:
  * LSTM 2 x 512 and vanilla 1 x 512 at B 64, 256 and 1024 (T 100), the better of two timings
    (best_ms_per_step): if the step's time does not grow with B, the device is idle part of the
    time and the host's kernel launches set the pace;
  * LSTM 2 x 512 at B64 with the fused cell kernels off (`CudaBackend.fuse_cells = False`) and with a
    read-back every step (`CudaBackend.eager_scalars = True`): what those two items of docs/gpu.md gain;
  * the device's busy time per step, the sum of its operations' durations (kernels, copies, memsets)
    as CUPTI records them (torch.profiler, which sees every kernel of the process, CuPy's too),
    against the step's wall time with and without the profiler, and the host's Python profile over
    10 steps (cProfile, the top functions by own time; a fused kernel's call counts in its caller's);
  * whether one step can be captured as a CUDA graph as the code stands (`capture_probe`).
Writes profile.json and profile.txt to --out. Run after bench/gpu_check.sh, for docs/gpu.md's
"Speed" section. CHARRNN_FAKE_CUPY=1 runs it against the tests' stand-in (a dry run, no timing meaning).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # sets up the path, and the stand-in under CHARRNN_FAKE_CUPY
from charrnn.backend import CudaBackend


def rate(cell, H, L, B, T, ids, V, seconds) -> dict:
    trainer = bench.Ours(V, H, L, B, T, cell, device="cuda")
    windows = bench.Windows(ids, B, T)
    runs = [bench.throughput(trainer, windows, seconds) for _ in range(2)]
    best = max(runs)
    return {"cell": cell, "hidden": H, "layers": L, "batch": B, "seq": T, "chars_per_s": runs,
            "best_ms_per_step": B * T / best * 1e3}  # fmt: skip


PROBE = (512, 2, 64, 100)  # H, L, B, T of the model the profiles and the capture probe look at: LSTM 2x512 B64


def warmed_lstm(ids, V):
    """bench.py's trainer for PROBE and its windows, after 3 steps read back (compiled kernels, a filled pool)."""
    H, L, B, T = PROBE
    trainer, windows = bench.Ours(V, H, L, B, T, "lstm", device="cuda"), bench.Windows(ids, B, T)
    run_steps(trainer, windows, 3)
    return trainer, windows


def run_steps(trainer, windows, steps: int) -> float:
    """Seconds for `steps` training steps, up to the last loss read back (the device done with all of them)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = trainer.step(*windows.next())
    float(loss)
    return time.perf_counter() - t0


def device_busy(ids, V, steps: int = 5) -> dict:
    """LSTM 2x512 B64: wall ms per step, with and without the profiler, against the summed device time per step
    (CUPTI via torch.profiler): its kernels, and its copies and memsets counted apart."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    trainer, windows = warmed_lstm(ids, V)
    plain = run_steps(trainer, windows, steps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = run_steps(trainer, windows, steps)
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    copies = [e for e in ops if e.name.startswith(("Memcpy", "Memset"))]
    busy_us = sum(e.device_time for e in ops)  # microseconds
    return {"steps": steps, "wall_ms_per_step": plain / steps * 1e3, "profiled_wall_ms_per_step": wall / steps * 1e3,
            "device_ops_per_step": len(ops) / steps, "copies_per_step": len(copies) / steps,
            "device_busy_ms_per_step": busy_us / steps / 1e3}  # fmt: skip


def capture_probe(ids, V, on_device: bool, replays: int = 20) -> dict:
    """Can one training step (LSTM 2x512 B64) be captured as a CUDA graph as the code stands, and how fast
    would its replay be? A probe for docs/gpu.md's item 2, not a feature: the replay repeats one window
    with one learning rate. on_device: the window's ids go up before the capture (else they are numpy)."""
    import cupy

    H, L, B, T = PROBE
    trainer = bench.Ours(V, H, L, B, T, "lstm", device="cuda")
    x, y = bench.Windows(ids, B, T).next()
    if on_device:
        x, y = cupy.asarray(x), cupy.asarray(y)
    for _ in range(3):  # the memory pool holds every block a step asks for
        loss = trainer.step(x, y)
    float(loss)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            loss = trainer.step(x, y)
        except Exception as e:
            with contextlib.suppress(Exception):  # the failed capture ends, its error is the answer
                stream.end_capture()
            return {"captured": False, "error": repr(e)[:400]}
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.launch(stream)
        stream.synchronize()
        ms = (time.perf_counter() - t0) / replays * 1e3
    return {"captured": True, "replay_ms_per_step": ms, "loss": float(loss)}


def host_profile(ids, V, steps: int = 10) -> str:
    trainer, windows = warmed_lstm(ids, V)
    pr = cProfile.Profile()
    pr.enable()
    run_steps(trainer, windows, steps)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    return s.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--hidden", type=int, default=512, help=argparse.SUPPRESS)  # dry runs: smaller sizes
    ap.add_argument("--batches", default="64,256,1024", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()
    ids, V = bench.load(args.data)
    H, T, out = args.hidden, args.seq, Path(args.out)
    batches = [int(b) for b in args.batches.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"batch_scaling": [], "variants": {}}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for cell, L in (("lstm", 2), ("rnn", 1)):
        for B in batches:
            r = rate(cell, H, L, B, T, ids, V, args.seconds)
            report["batch_scaling"].append(r)
            log(f"{cell} {L}x{H} B{B}: {r['best_ms_per_step']:.1f} ms/step")
    for name, attr, value in (("unfused", "fuse_cells", False), ("eager_scalars", "eager_scalars", True)):
        old = getattr(CudaBackend, attr)
        setattr(CudaBackend, attr, value)
        try:
            r = rate("lstm", H, 2, batches[0], T, ids, V, args.seconds)
        finally:
            setattr(CudaBackend, attr, old)
        report["variants"][name] = r
        log(f"lstm 2x{H} B{batches[0]}, {name}: {r['best_ms_per_step']:.1f} ms/step")
    text = ""
    if not os.environ.get("CHARRNN_FAKE_CUPY"):
        try:
            report["device_busy"] = device_busy(ids, V)
            log(f"device busy: {report['device_busy']}")
        except Exception as e:  # the profiler is a measurement aid; its absence is reported, not fatal
            report["device_busy"] = {"error": repr(e)}
            log(f"device busy: not measured ({e!r})")
        text = host_profile(ids, V)
        log(text[:6000])
        for on_device in (False, True):
            key = "capture_ids_on_device" if on_device else "capture_ids_from_host"
            try:
                report[key] = capture_probe(ids, V, on_device)
            except Exception as e:
                report[key] = {"captured": False, "error": repr(e)[:400]}
            log(f"{key}: {report[key]}")
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    (out / "profile.txt").write_text(text)


if __name__ == "__main__":
    main()
