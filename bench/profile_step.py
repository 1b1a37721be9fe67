"""Where the time of one training step goes: each phase of charrnn's step timed separately.

    python bench/profile_step.py [--cell rnn] [--hidden 512] [--batch 64] [--seq 100] [--vocab 65] [--steps 20]

Phases, in the order the step runs them: the embedding gather, the forward
recurrence (the cell's loop), the output layer, the fused softmax cross-entropy,
the output layer's backward, BPTT (the cell's loop and its weight gradients), the
embedding scatter-add, global norm clipping and Adam. One layer, float32, the
BLAS thread count as set.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charrnn import CharRNN
from charrnn.config import TrainConfig
from charrnn.layers import (
    affine_backward,
    affine_forward,
    aligned_copy,
    empty_aligned,
    onehot_affine_backward,
    onehot_affine_forward,
    softmax_cross_entropy,
)
from charrnn.optim import apply_update, clip_by_global_norm, init_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", default="rnn")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    H, B, T, V = a.hidden, a.batch, a.seq, a.vocab
    model = CharRNN(V, H, 1, a.cell)
    p, cell = model.params, model.cell
    lp, GH = model.layer_params(0), cell.gates * H
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    tc, state = TrainConfig(), init_state("adam", p)
    totals: dict[str, float] = {}
    h0 = model.initial_state(B)[0]
    for it in range(a.steps + 3):
        marks = [("start", time.perf_counter())]
        mark = lambda name, marks=marks: marks.append((name, time.perf_counter()))  # noqa: E731

        # the work arrays CharRNN.loss_and_grads runs on (model._buffer), so the phases match its step
        buf = model._buffer
        cbuf = lambda name, shape, buf=buf: buf(f"cell.0.{name}", shape)  # noqa: E731
        a0, pc = onehot_affine_forward(
            np.ascontiguousarray(x.T), p["layers.0.Wxh"], p["layers.0.bh"], out=buf("a.0", (T, B, GH))
        )
        mark("embedding gather")
        hs, _, rc = cell.forward(a0, h0, lp, cbuf)
        mark("forward recurrence")
        logits, oc = affine_forward(hs, p["Why"], p["by"], out=buf("logits", (T, B, V)))
        mark("output layer")
        _, dl = softmax_cross_entropy(logits.reshape(T * B, V), y.T.reshape(-1), out=buf("dlogits", (T * B, V)))
        mark("softmax cross-entropy")
        dhs, dWhy, dby = affine_backward(dl.reshape(T, B, V), oc, out=buf("dhs", (T, B, H)))
        mark("output layer backward")
        da, _, cell_grads = cell.backward(dhs, rc, cbuf)
        mark("BPTT loop + dWhh")
        dWxh, dbh = onehot_affine_backward(da, pc)
        mark("embedding scatter-add")
        grads = {"layers.0.Wxh": dWxh, "layers.0.bh": dbh, "Why": dWhy, "by": dby}
        grads.update({f"layers.0.{k}": g for k, g in cell_grads.items()})
        clip_by_global_norm(grads, 5.0)
        mark("clip")
        apply_update("adam", p, grads, state, 1e-3, it + 1, tc)
        mark("adam")
        if it >= 3:  # after warm-up
            for (_, t0), (name, t1) in itertools.pairwise(marks):
                totals[name] = totals.get(name, 0.0) + t1 - t0
    total = sum(totals.values())
    print(f"{a.cell} H{H} B{B} T{T} V{V}, float32, mean of {a.steps} steps")
    for name, t in totals.items():
        print(f"  {name:24s} {t / a.steps * 1e3:8.2f} ms  {t / total:6.1%}")
    print(f"  {'total':24s} {total / a.steps * 1e3:8.2f} ms  -> {B * T / (total / a.steps):,.0f} chars/s")
    floor = gemm_floor(H, cell.gates, B, T, V, rng)
    print(f"  the step's matrix products alone, each timed apart at its shape: {floor * 1e3:.2f} ms, "
          f"{floor / (total / a.steps):.0%} of the step")  # fmt: skip


def gemm_floor(H: int, G: int, B: int, T: int, V: int, rng: np.random.Generator) -> float:
    """Seconds per step that the step's matrix products take alone, each timed in isolation at its shape.

    G: the cell's gate blocks (1 rnn, 4 lstm, 3 gru): its weights have G*H columns.
    """
    N = T * B
    m = lambda *shape: aligned_copy(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731, as the engine's arrays
    h, dat, W, hs, da, dl = m(B, H), m(B, G * H), m(H, G * H), m(N, H), m(N, G * H), m(N, V)
    Why, sel = m(H, V), m(V, N)
    products = [  # (count per step, operands): the loops' step products, then the one-off ones
        (T, h, W),  # forward h_{t-1} Whh
        (T, dat, np.ascontiguousarray(W.T)),  # BPTT da_t Whh^T
        (1, hs.T, da),  # dWhh over all steps (two arrays: numpy runs a.T @ a as a half-cost syrk)
        (1, hs, Why),  # logits
        (1, dl, Why.T),  # dhs
        (1, hs.T, dl),  # dWhy
        (1, sel, da),  # dWxh, one_hot(ids)^T @ da
    ]
    total = 0.0
    for count, x, y in products:
        out = empty_aligned((x.shape[0], y.shape[1]), np.float32)
        np.matmul(x, y, out=out)
        reps = max(3, int(2e8 / (2 * x.shape[0] * x.shape[1] * y.shape[1])))
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(x, y, out=out)
        total += count * (time.perf_counter() - t0) / reps
    return total


if __name__ == "__main__":
    main()
