"""Benchmark charrnn against the PyTorch reference (bench/torch_ref.py) on the same text, in one run.

    pip install -e ".[bench]"        # torch (CPU build) and threadpoolctl
    python bench/bench.py [--data TEXT] [--repeats 5] [--threads 2] [--json]
    python bench/bench.py --device cuda [--data TEXT]     # on a GPU: against PyTorch cuDNN (bench/gpu_check.sh)

For each model (cell, size) it times our training step (charrnn.train.train_step: forward,
BPTT, clipping, Adam) and the reference's, interleaved repeat by repeat so that
the machine's drift hits both alike, and reports medians and ranges of characters
per second (batch_size * seq_length * steps / time, after warm-up steps). Then:
sampling speed at hidden 512 (vanilla and LSTM), peak RSS of a short training run
in a fresh process each (vanilla 1 x 512 and LSTM 2 x 512), the float32
matrix-multiply rate numpy reaches at each model's step product, and our training
throughput as a fraction of the bound that rate implies.

FLOPs per character of a training step (matrix products only, multiply-add = 2),
with G the cell's gate blocks (rnn 1, gru 3, lstm 4): forward 2*H*G*H per layer for
h_{t-1} Whh, 2*H*G*H per layer above the first for its input (layer 0 gathers a
row: no FLOPs), 2*H*V for the output; backward twice the forward (one product for
the input gradient, one for the weight gradient). The bound: the GEMM rate of the
step product (B, H) x (H, G*H), timed alone, divided by those FLOPs.
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
if os.environ.get("CHARRNN_FAKE_CUPY"):  # a dry run of --device cuda against the tests' numpy-backed stand-in
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_cupy

    sys.modules["cupy"] = fake_cupy

from charrnn import CharRNN  # noqa: E402
from charrnn.cells import cell_class  # noqa: E402
from charrnn.config import TrainConfig  # noqa: E402
from charrnn.data import Vocab, build_vocab  # noqa: E402
from charrnn.optim import init_state  # noqa: E402
from charrnn.sampling import generate  # noqa: E402
from charrnn.train import train_step, train_window, windows_per_epoch  # noqa: E402

DEFAULT_DATA = Path("tinyshakespeare.txt")  # as README's curl line downloads it into the working folder
ROWS = [  # cell, hidden, layers, batch, seq
    ("rnn", 128, 1, 32, 64),
    ("rnn", 256, 1, 64, 100),
    ("rnn", 512, 1, 64, 100),
    ("rnn", 512, 2, 64, 100),
    ("lstm", 128, 1, 32, 64),
    ("lstm", 512, 2, 64, 100),
    ("gru", 512, 2, 64, 100),
]
GPU_ROWS = [  # cell, hidden, layers, batch, seq: bench.py --device cuda
    (cell, 512, layers, batch, 100) for cell, layers in (("rnn", 1), ("lstm", 2), ("gru", 2)) for batch in (64, 256)
]


def gates(cell: str) -> int:
    """G, the cell's gate blocks (rnn 1, gru 3, lstm 4), as the registry's cell says."""
    return cell_class(cell).gates


def flops_per_char(cell: str, H: int, L: int, V: int) -> float:
    GH = gates(cell) * H
    forward = 2 * H * GH * L + 2 * H * GH * (L - 1) + 2 * H * V
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

    def __init__(self, V, H, L, B, T, cell="rnn", device="cpu"):
        self.tc = TrainConfig(batch_size=B, seq_length=T, learning_rate=2e-3, grad_clip=5.0, warmup_steps=0,
                              lr_schedule="constant", optimizer="adam", random_offset=False)  # fmt: skip
        self.model = CharRNN(V, H, L, cell, seed=0, device=device)
        self.state = init_state("adam", self.model.params)
        self.h, self.t = None, 0

    def step(self, x, y):
        loss, _, _, self.h = train_step(self.model, self.state, x, y, self.h, self.t, self.tc)
        self.t += 1
        return loss


def make_torch(V, H, L, B, T, cell="rnn"):
    from torch_ref import TorchTrainer

    t = TorchTrainer(V, H, L, cell)
    t.name = "pytorch"
    return t


def throughput(trainer, windows: Windows, seconds: float, warmup: int = 3) -> float:
    """Characters per second of trainer.step over about `seconds`, after warm-up steps.

    On a GPU both engines' steps return the loss on the device and nothing waits for it (the host
    queues the next steps ahead): the warm-up and the timed steps each end by reading the last loss
    back, so the time counts every queued step's device work. On the CPU the loss is a float already.
    """
    for _ in range(warmup):
        loss = trainer.step(*windows.next())
    float(loss)
    steps, t0 = 0, time.perf_counter()
    while True:
        loss = trainer.step(*windows.next())
        steps += 1
        if time.perf_counter() - t0 >= seconds and steps >= 3:
            float(loss)  # the device done with every step queued
            return windows.B * windows.T * steps / (time.perf_counter() - t0)


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


def child_rss(which: str, cell: str, H: int, L: int, B: int, T: int, steps: int, data: str) -> float:
    """Peak RSS (MiB) of a fresh process that trains `steps` steps."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--data", data, "--steps", str(steps), "--hidden", str(H),
         "--batch", str(B), "--seq", str(T), "--cell", cell, "--layers", str(L)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def run_child(args) -> None:
    ids, V = load(args.data)
    windows = Windows(ids, args.batch, args.seq)
    make = Ours if args.child == "ours" else make_torch
    trainer = make(V, args.hidden, args.layers, args.batch, args.seq, args.cell)
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
    ap.add_argument("--rows", default=",".join(map(str, range(len(ROWS)))), help="which models (indices into ROWS)")
    ap.add_argument("--sample-chars", type=int, default=5000)
    ap.add_argument("--no-torch", action="store_true", help="time charrnn alone")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the GPU rows (GPU_ROWS)")
    ap.add_argument("--gpu-rows", help="with --device cuda: which models (indices into GPU_ROWS; default all)")
    ap.add_argument("--child", choices=["ours", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--cell", default="rnn", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda":
        main_cuda(args)
        return

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
    report = {"data": args.data, "chars": len(ids), "vocab": V, "threads": args.threads, "blas": blas,
              "numpy": np.__version__, "rows": []}  # fmt: skip
    if use_torch:
        report["torch"] = torch.__version__
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"data {args.data}: {len(ids):,} chars, V={V}; {args.threads} threads; BLAS {blas}")

    rates: dict[tuple[int, int, int], float] = {}  # GEMM GFLOP/s by step-product shape
    for r in [int(i) for i in args.rows.split(",")]:
        cell, H, L, B, T = ROWS[r]
        ours_t, torch_t = Ours(V, H, L, B, T, cell), (make_torch(V, H, L, B, T, cell) if use_torch else None)
        w_ours, w_torch = Windows(ids, B, T), Windows(ids, B, T)
        ours_r, torch_r = [], []
        for _ in range(args.repeats):  # interleaved
            ours_r.append(throughput(ours_t, w_ours, args.seconds))
            if use_torch:
                torch_r.append(throughput(torch_t, w_torch, args.seconds))
        del ours_t, torch_t
        shape = (B, H, gates(cell) * H)
        if shape not in rates:
            rates[shape] = gemm_rate(*shape)
        fpc = flops_per_char(cell, H, L, V)
        row = {"cell": cell, "hidden": H, "layers": L, "batch": B, "seq": T, "ours": spread(ours_r),
               "flops_per_char": fpc, "gemm_gflops": rates[shape],
               "bound_chars_per_sec": rates[shape] * 1e9 / fpc}  # fmt: skip
        row["fraction_of_bound"] = row["ours"]["median"] / row["bound_chars_per_sec"]
        if use_torch:
            row["pytorch"] = spread(torch_r)
            row["ratio"] = row["ours"]["median"] / row["pytorch"]["median"]
        report["rows"].append(row)
        log(
            f"{cell} {L}x{H} B={B} T={T}: ours {row['ours']['median']:,.0f} chars/s"
            + (f", pytorch {row['pytorch']['median']:,.0f}, ratio {row['ratio']:.2f}" if use_torch else "")
        )

    # sampling at hidden 512, one sample, one character at a time
    vocab = Vocab(tuple(chr(32 + i) for i in range(V)))
    report["sampling"] = {}
    for cell in ("rnn", "lstm"):
        model = CharRNN(V, 512, 1, cell, seed=0)
        ours_s, torch_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            generate(model, vocab, args.sample_chars, seed=0)
            ours_s.append(args.sample_chars / (time.perf_counter() - t0))
            if use_torch:
                from torch_ref import torch_sample_speed

                torch_s.append(torch_sample_speed(V, 512, args.sample_chars, cell=cell))
        entry = {"ours": spread(ours_s)}
        if use_torch:
            entry["pytorch"] = spread(torch_s)
            entry["ratio"] = statistics.median(ours_s) / statistics.median(torch_s)
        report["sampling"][cell] = entry

    # peak memory of a short training run, each in a fresh process
    report["peak_rss_mib"] = {}
    for cell, H, L, steps in (("rnn", 512, 1, 20), ("lstm", 512, 2, 8)):
        entry = {"ours": child_rss("ours", cell, H, L, 64, 100, steps, args.data)}
        if use_torch:
            entry["pytorch"] = child_rss("torch", cell, H, L, 64, 100, steps, args.data)
        report["peak_rss_mib"][f"{cell} {L}x{H}"] = entry

    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"charrnn vs PyTorch {report.get('torch', '-')} on {Path(args.data).name}, float32, {args.threads} threads, "
          f"median of {args.repeats} interleaved runs [min - max]")  # fmt: skip
    print(f"{'model':<26}{'charrnn chars/s':>28}{'pytorch chars/s':>28}{'ratio':>8}{'of bound':>10}")
    for row in report["rows"]:
        o, p = row["ours"], row.get("pytorch")
        label = f"{row['cell']} {row['layers']}x{row['hidden']} B{row['batch']} T{row['seq']}"
        ptxt = f"{p['median']:>10,.0f} [{p['min']:,.0f}-{p['max']:,.0f}]" if p else "-"
        print(f"{label:<26}{o['median']:>10,.0f} [{o['min']:,.0f}-{o['max']:,.0f}]{ptxt:>28}"
              f"{row.get('ratio', float('nan')):>8.2f}{row['fraction_of_bound']:>10.0%}")  # fmt: skip
    for cell, s in report["sampling"].items():
        print(
            f"sampling {cell} 1x512, 1 sample: charrnn {s['ours']['median']:,.0f} chars/s"
            + (f", pytorch {s['pytorch']['median']:,.0f}, ratio {s['ratio']:.2f}" if "pytorch" in s else "")
        )
    for name, m in report["peak_rss_mib"].items():
        print(
            f"peak RSS, training {name} B64 T100: charrnn {m['ours']:.0f} MiB"
            + (f", pytorch {m['pytorch']:.0f} MiB" if "pytorch" in m else "")
        )
    for row in report["rows"]:
        B, H, GH = row["batch"], row["hidden"], gates(row["cell"]) * row["hidden"]
        print(f"{row['cell']} {row['layers']}x{H} B{B}: {row['flops_per_char'] / 1e6:.2f} MFLOP/char; "
              f"GEMM {row['gemm_gflops']:.0f} GFLOP/s at {B}x{H}x{GH} -> bound {row['bound_chars_per_sec']:,.0f} "
              f"chars/s; charrnn reaches {row['fraction_of_bound']:.0%}")  # fmt: skip


def main_cuda(args) -> None:
    """The GPU rows: training steps (timed up to the last one's loss on the host: the device's time), both
    engines interleaved; sampling 256 samples at once; the device memory each engine held at its peak."""
    import cupy

    use_torch = not args.no_torch
    if use_torch:
        import torch
        from torch_ref import torch_batch_sample_speed

        assert torch.cuda.is_available(), "PyTorch sees no GPU"
    ids, V = load(args.data)
    dev = cupy.cuda.runtime.getDeviceProperties(0)["name"] if hasattr(cupy.cuda.runtime, "getDeviceProperties") else "?"
    report = {"device": "cuda", "gpu": dev.decode() if isinstance(dev, bytes) else dev, "cupy": cupy.__version__,
              "data": args.data, "vocab": V, "rows": []}  # fmt: skip
    if use_torch:
        report["torch"], report["cudnn"] = torch.__version__, torch.backends.cudnn.version()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    rows = GPU_ROWS if args.gpu_rows is None else [GPU_ROWS[int(i)] for i in args.gpu_rows.split(",")]
    for cell, H, L, B, T in rows:
        ours_t = Ours(V, H, L, B, T, cell, device="cuda")
        torch_t = None
        if use_torch:
            from torch_ref import TorchTrainer

            torch_t = TorchTrainer(V, H, L, cell, device="cuda")
        w_ours, w_torch = Windows(ids, B, T), Windows(ids, B, T)
        ours_r, torch_r = [], []
        for _ in range(args.repeats):
            ours_r.append(throughput(ours_t, w_ours, args.seconds))
            if use_torch:
                torch_r.append(throughput(torch_t, w_torch, args.seconds))
        row = {"cell": cell, "hidden": H, "layers": L, "batch": B, "seq": T, "ours": spread(ours_r),
               "ms_per_step": B * T / statistics.median(ours_r) * 1e3}  # fmt: skip
        if use_torch:
            row["pytorch"] = spread(torch_r)
            row["ratio"] = row["ours"]["median"] / row["pytorch"]["median"]
        report["rows"].append(row)
        log(f"{cell} {L}x{H} B{B} T{T}: ours {row['ours']['median']:,.0f} chars/s ({row['ms_per_step']:.1f} ms/step)"
            + (f", cuDNN {row['pytorch']['median']:,.0f}, ratio {row['ratio']:.2f}" if use_torch else ""))  # fmt: skip
        del ours_t, torch_t
    vocab = Vocab(tuple(chr(32 + i) for i in range(V)))
    report["sampling"] = {}
    K, n = 256, max(1, min(args.sample_chars, 500))
    for cell in ("rnn", "lstm"):
        model = CharRNN(V, 512, 1, cell, seed=0, device="cuda")
        t0 = time.perf_counter()
        generate(model, vocab, n, seed=0, num_samples=K)
        entry = {"ours": K * n / (time.perf_counter() - t0), "samples": K, "chars": n}
        if use_torch:
            entry["pytorch"] = torch_batch_sample_speed(V, 512, n, K, cell, "cuda")
            entry["ratio"] = entry["ours"] / entry["pytorch"]
        report["sampling"][cell] = entry
        log(f"sampling {cell} 1x512, {K} samples at once: ours {entry['ours']:,.0f} chars/s"
            + (f", pytorch {entry['pytorch']:,.0f}, ratio {entry['ratio']:.2f}" if use_torch else ""))  # fmt: skip
    pool = cupy.get_default_memory_pool()
    report["gpu_memory_mib"] = {"ours_pool_total": pool.total_bytes() / 2**20}
    if use_torch:
        report["gpu_memory_mib"]["pytorch_max_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    log(f"GPU memory: {report['gpu_memory_mib']}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
