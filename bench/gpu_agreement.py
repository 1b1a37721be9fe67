"""The same training run on the CPU and on the GPU: how close their losses stay, the GPU's speed and memory.

    python bench/gpu_agreement.py --data tinyshakespeare.txt [--steps 300] [--cpu-seconds 150] [--out DIR]

Trains configs/shakespeare-lstm.yaml (LSTM 2 x 512, its regularisers, batch 32, Adam) from the same
seed on cuda for --steps steps and on cpu for as many of them as --cpu-seconds allow, evaluating
on the whole validation split every 100 steps, and writes agreement.json: the per-step training
losses of both, their largest difference over the steps both ran, the validation losses, the
GPU's milliseconds per step and its memory. float32 on both: the devices round differently
(cuBLAS and numpy's BLAS sum in other orders), so the runs drift apart slowly; the numbers say
how far. Part of bench/gpu_check.sh. CHARRNN_FAKE_CUPY=1 runs it against the tests' stand-in
(a dry run of the Python on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if os.environ.get("CHARRNN_FAKE_CUPY"):  # dry run: the numpy-backed stand-in as cupy
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_cupy

    sys.modules["cupy"] = fake_cupy

from charrnn.config import load_config  # noqa: E402
from charrnn.data import prepare  # noqa: E402
from charrnn.train import train  # noqa: E402


def run(cfg, device: str, steps: int, seconds: float | None) -> dict:
    cfg.train.device, cfg.train.max_steps, cfg.train.time_limit = device, steps, seconds
    losses, evals = [], []

    def cb(kind, info):
        if kind == "step":
            losses.append(info["loss"])
        elif kind == "eval":
            evals.append({"step": info["step"], "val_loss": info["val_loss"]})

    t0 = time.perf_counter()
    result = train(cfg, callback=cb, force=True)
    wall = time.perf_counter() - t0
    return {"device": device, "steps": result.step, "wall_s": wall, "losses": losses, "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a text file (tiny-shakespeare)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpu-seconds", type=float, default=150.0, help="time limit of the CPU run")
    ap.add_argument("--config", default=str(ROOT / "configs" / "shakespeare-lstm.yaml"))
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="charrnn-gpu-"))
    prepare(Path(args.data).read_text(encoding="utf-8"), work / "data")
    report = {"config": args.config, "data": args.data}
    runs = {}
    for device, seconds in (("cuda", None), ("cpu", args.cpu_seconds)):
        overrides = [f"data={work / 'data'}", f"out_dir={work / device}", "train.eval_every=100",
                     "train.sample_chars=0"]  # fmt: skip
        runs[device] = run(load_config(args.config, overrides), device, args.steps, seconds)
        print(f"{device}: {runs[device]['steps']} steps in {runs[device]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        if device == "cuda":
            import cupy

            pool = cupy.get_default_memory_pool()
            free, total = cupy.cuda.runtime.memGetInfo()
            mib = 2**20
            report["gpu_memory_mib"] = {"pool_used": pool.used_bytes() / mib, "pool_total": pool.total_bytes() / mib,
                                        "device_used": (total - free) / mib}  # fmt: skip
    g, c = runs["cuda"], runs["cpu"]
    n = min(len(g["losses"]), len(c["losses"]))
    diffs = [abs(a - b) for a, b in zip(g["losses"][:n], c["losses"][:n], strict=True)]
    report.update(
        runs=runs,
        common_steps=n,
        max_abs_loss_diff=max(diffs) if diffs else None,
        loss_diff_at={s: diffs[s - 1] for s in (1, 10, 50, 100, 200, 300) if s <= n},
        gpu_ms_per_step=1e3 * g["wall_s"] / max(1, g["steps"]),  # wall time, the evaluations included
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "agreement.json").write_text(json.dumps(report, indent=1))
    summary = {k: report[k] for k in ("common_steps", "max_abs_loss_diff", "loss_diff_at", "gpu_ms_per_step")}
    summary["val"] = {d: r["evals"] for d, r in runs.items()}
    summary["gpu_memory_mib"] = report.get("gpu_memory_mib")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
