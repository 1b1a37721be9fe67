"""Benchmark charrnn against the PyTorch reference (bench/torch_ref.py) on the same text, in one run.

    pip install -e ".[bench]"        # torch (CPU build) and threadpoolctl
    python bench/bench.py [--data TEXT] [--repeats 5] [--threads 2] [--json]

For each model size it times our training step (charrnn.train.train_step: forward,
BPTT, clipping, Adam) and the reference's, interleaved repeat by repeat so that
the machine's drift hits both alike, and reports medians and ranges of characters
per second (batch_size * seq_length * steps / time, after warm-up steps). Then:
sampling speed at hidden 512, peak RSS of a short training run in a fresh process
each, the float32 matrix-multiply rate numpy reaches on this machine, and our
training throughput as a fraction of the bound that rate implies.

FLOPs per character of a training step (matrix products only, multiply-add = 2):
forward 2*H*H per layer for h_{t-1} Whh, 2*H*H per layer above the first for its
input (layer 0 gathers a row: no FLOPs), 2*H*V for the output; backward twice the
forward (one product for the input gradient, one for the weight gradient).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from charrnn import CharRNN  # noqa: E402
from charrnn.config import TrainConfig  # noqa: E402
from charrnn.data import Vocab, build_vocab  # noqa: E402
from charrnn.optim import init_state  # noqa: E402
from charrnn.sampling import generate  # noqa: E402
from charrnn.train import train_step, train_window, windows_per_epoch  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
ROWS = [  # hidden, layers, batch, seq
    (128, 1, 32, 64),
    (256, 1, 64, 100),
    (512, 1, 64, 100),
    (512, 2, 64, 100),
]


def flops_per_char(H: int, L: int, V: int) -> float:
    forward = 2 * H * H * L + 2 * H * H * (L - 1) + 2 * H * V
    return 3.0 * forward


class Windows:
    def __init__(self, ids: np.ndarray, B: int, T: int):
        self.ids, self.B, self.T = ids, B, T
        self.n = windows_per_epoch(len(ids), B, T)
        self.w = 0

    def next(self):
        x, y = train_window(self.ids, self.B, self.T, self.w % self.n)
        self.w += 1
        return x, y


class Ours:
    name = "charrnn"

    def __init__(self, V, H, L, B, T):
        self.tc = TrainConfig(batch_size=B, seq_length=T, learning_rate=2e-3, grad_clip=5.0, warmup_steps=0,
                              lr_schedule="constant", optimizer="adam", random_offset=False)  # fmt: skip
        self.model = CharRNN(V, H, L, seed=0)
        self.state = init_state("adam", self.model.params)
        self.h, self.t = None, 0

    def step(self, x, y):
        loss, _, _, self.h = train_step(self.model, self.state, x, y, self.h, self.t, self.tc)
        self.t += 1
        return loss


def make_torch(V, H, L, B, T):
    from torch_ref import TorchTrainer

    t = TorchTrainer(V, H, L)
    t.name = "pytorch"
    return t


def throughput(trainer, windows: Windows, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        trainer.step(*windows.next())
    steps, t0 = 0, time.perf_counter()
    while True:
        trainer.step(*windows.next())
        steps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and steps >= 3:
            return windows.B * windows.T * steps / dt


def gemm_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """GFLOP/s of float32 (m, k) @ (k, n) with a preallocated output, median of 5."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    reps = max(1, int(seconds / 5 / max(2 * m * k * n / 1e11, 1e-6)))
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=c)
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def child_rss(which: str, V: int, H: int, B: int, T: int, steps: int, data: str) -> float:
    """Peak RSS (MiB) of a fresh process that trains `steps` steps."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--data", data, "--steps", str(steps), "--hidden", str(H),
         "--batch", str(B), "--seq", str(T)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def run_child(args) -> None:
    ids, V = load(args.data)
    windows = Windows(ids, args.batch, args.seq)
    trainer = Ours(V, args.hidden, 1, args.batch, args.seq) if args.child == "ours" else make_torch(
        V, args.hidden, 1, args.batch, args.seq)  # fmt: skip
    for _ in range(args.steps):
        trainer.step(*windows.next())
    # VmHWM, the peak RSS of this process's own memory map; ru_maxrss would also count the parent's
    # memory at spawn, which Linux carries across exec
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(hwm_kib / 1024)


def load(path: str):
    text = Path(path).read_text(encoding="utf-8")
    vocab, ids = build_vocab(text)
    return ids.astype(np.uint8 if vocab.size <= 256 else np.int64), vocab.size


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="text file (default: tiny-shakespeare)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rows", default="0,1,2,3", help="which model sizes (indices into ROWS)")
    ap.add_argument("--sample-chars", type=int, default=5000)
    ap.add_argument("--no-torch", action="store_true", help="time charrnn alone")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["ours", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(args.threads)
    use_torch = not args.no_torch and args.child != "ours"  # our child process must not load torch
    if use_torch:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        run_child(args)
        return

    ids, V = load(args.data)
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, {i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]  # fmt: skip
    report = {"data": args.data, "chars": int(len(ids)), "vocab": V, "threads": args.threads, "blas": blas,
              "numpy": np.__version__, "rows": []}  # fmt: skip
    if use_torch:
        report["torch"] = torch.__version__
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"data {args.data}: {len(ids):,} chars, V={V}; {args.threads} threads; BLAS {blas}")

    for r in [int(i) for i in args.rows.split(",")]:
        H, L, B, T = ROWS[r]
        ours_t, torch_t = Ours(V, H, L, B, T), (make_torch(V, H, L, B, T) if use_torch else None)
        w_ours, w_torch = Windows(ids, B, T), Windows(ids, B, T)
        ours_r, torch_r = [], []
        for _ in range(args.repeats):  # interleaved
            ours_r.append(throughput(ours_t, w_ours, args.seconds))
            if use_torch:
                torch_r.append(throughput(torch_t, w_torch, args.seconds))
        row = {"hidden": H, "layers": L, "batch": B, "seq": T, "ours": spread(ours_r),
               "flops_per_char": flops_per_char(H, L, V)}  # fmt: skip
        if use_torch:
            row["pytorch"] = spread(torch_r)
            row["ratio"] = row["ours"]["median"] / row["pytorch"]["median"]
        report["rows"].append(row)
        log(f"H={H} L={L} B={B} T={T}: ours {row['ours']['median']:,.0f} chars/s"
            + (f", pytorch {row['pytorch']['median']:,.0f}, ratio {row['ratio']:.2f}" if use_torch else ""))

    # matrix-multiply rate and the bound it implies at hidden 512
    step_rate = gemm_rate(64, 512, 512)
    big_rate = gemm_rate(6400, 512, 512)
    report["gemm_gflops"] = {"64x512x512": step_rate, "6400x512x512": big_rate}
    for row in report["rows"]:
        if row["hidden"] == 512:
            ceiling = step_rate * 1e9 / row["flops_per_char"]
            row["ceiling_chars_per_sec"] = ceiling
            row["fraction_of_ceiling"] = row["ours"]["median"] / ceiling

    # sampling at hidden 512, one sample, one character at a time
    vocab = Vocab(tuple(chr(32 + i) for i in range(V)))
    model = CharRNN(V, 512, 1, seed=0)
    ours_s, torch_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        generate(model, vocab, args.sample_chars, seed=0)
        ours_s.append(args.sample_chars / (time.perf_counter() - t0))
        if use_torch:
            from torch_ref import torch_sample_speed

            torch_s.append(torch_sample_speed(V, 512, args.sample_chars))
    report["sampling"] = {"ours": spread(ours_s)}
    if use_torch:
        report["sampling"]["pytorch"] = spread(torch_s)
        report["sampling"]["ratio"] = statistics.median(ours_s) / statistics.median(torch_s)

    # peak memory of a short training run, each in a fresh process
    report["peak_rss_mib"] = {"ours": child_rss("ours", V, 512, 64, 100, 20, args.data)}
    if use_torch:
        report["peak_rss_mib"]["pytorch"] = child_rss("torch", V, 512, 64, 100, 20, args.data)

    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"charrnn vs PyTorch {report.get('torch', '-')} on {Path(args.data).name}, float32, {args.threads} threads, "
          f"median of {args.repeats} interleaved runs [min - max]")  # fmt: skip
    print(f"{'model':<22}{'charrnn chars/s':>28}{'pytorch chars/s':>28}{'ratio':>8}")
    for row in report["rows"]:
        o, p = row["ours"], row.get("pytorch")
        label = f"H{row['hidden']} x{row['layers']} B{row['batch']} T{row['seq']}"
        ptxt = f"{p['median']:>10,.0f} [{p['min']:,.0f}-{p['max']:,.0f}]" if p else "-"
        print(f"{label:<22}{o['median']:>10,.0f} [{o['min']:,.0f}-{o['max']:,.0f}]{ptxt:>28}"
              f"{row.get('ratio', float('nan')):>8.2f}")  # fmt: skip
    s = report["sampling"]
    print(f"sampling H512, 1 sample: charrnn {s['ours']['median']:,.0f} chars/s"
          + (f", pytorch {s['pytorch']['median']:,.0f}, ratio {s['ratio']:.2f}" if "pytorch" in s else ""))
    m = report["peak_rss_mib"]
    print(f"peak RSS, 20 steps H512 B64 T100: charrnn {m['ours']:.0f} MiB"
          + (f", pytorch {m['pytorch']:.0f} MiB" if "pytorch" in m else ""))
    g = report["gemm_gflops"]
    print(f"numpy float32 GEMM: {g['64x512x512']:.0f} GFLOP/s at 64x512x512, {g['6400x512x512']:.0f} at 6400x512x512")
    for row in report["rows"]:
        if "ceiling_chars_per_sec" in row:
            print(f"H512 x{row['layers']}: {row['flops_per_char'] / 1e6:.2f} MFLOP/char -> bound "
                  f"{row['ceiling_chars_per_sec']:,.0f} chars/s; charrnn reaches {row['fraction_of_ceiling']:.0%}")


if __name__ == "__main__":
    main()
