"""Numerical gradient check: the analytic BPTT gradients against centered differences.

`gradcheck` builds a small float64 model (with random non-zero biases) and a
random batch with everything the training path meets: a non-zero initial state carried into the window, a mask
with masked positions in the middle of sequences (the state still flows through
them), and, for more than one layer, the gradient from upper layers into lower
ones, and, with dropout or the other training-only regularisers (variational
dropout, weight drop, embedding dropout), a fixed set of masks (every evaluation of
the loss draws them from a generator seeded alike). It works for every cell. It
compares every gradient of `CharRNN.backward`, the one into the initial state h0
included, with

    (-L(theta + 2 eps e_i) + 8 L(theta + eps e_i) - 8 L(theta - eps e_i) + L(theta - 2 eps e_i)) / (12 eps)

entry by entry (a fourth-order stencil, see `numeric_gradient`). The error of
one entry is

    |a - n| / max(|a| + |n|, floor),   floor = 1e-3 * max |a| over the array

a relative error, except that entries a thousand times smaller than the largest
gradient of their array are judged against that scale: their centered difference
is dominated by rounding (about |L| * 1e-16 / eps), and dividing that noise by a
near-zero gradient would measure nothing. With float64 and the default steps,
correct gradients give errors around 1e-9 to 1e-7, also at H = 512; a missing or wrong term gives errors of
order 1e-2 to 1 (the tests break the backward pass on purpose to show it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import CharRNN

# Step of the differences: smooth cells (tanh, sigmoid) take a large one, relu a small one (see `gradcheck`)
SMOOTH_EPS, KINK_EPS = 1e-3, 1e-4

# Entries below this fraction of their array's largest gradient are judged against that scale.
RELATIVE_FLOOR = 1e-3


@dataclass(frozen=True)
class ParamCheck:
    name: str
    shape: tuple[int, ...]
    checked: int  # entries compared
    max_rel_error: float
    passed: bool
    at_kink: int = 0  # entries left out because their step crossed a kink (relu), among those drawn


@dataclass(frozen=True)
class GradcheckResult:
    checks: list[ParamCheck]
    tol: float
    eps: float
    settings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_rel_error(self) -> float:
        return max(c.max_rel_error for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "tol": self.tol,
            "eps": self.eps,
            "settings": self.settings,
            "params": [
                {
                    "name": c.name,
                    "shape": list(c.shape),
                    "checked": c.checked,
                    "max_rel_error": c.max_rel_error,
                    "passed": c.passed,
                    "at_kink": c.at_kink,
                }
                for c in self.checks
            ],
        }


def relative_error(analytic: np.ndarray, numeric: np.ndarray, scale: float) -> np.ndarray:
    """Entry-wise |a - n| / max(|a| + |n|, RELATIVE_FLOOR * scale), scale = the array's max |a|."""
    floor = max(RELATIVE_FLOOR * scale, np.finfo(np.float64).tiny)
    return np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), floor)


def numeric_gradient(f, x: np.ndarray, indices, eps: float) -> np.ndarray:
    """Fourth-order centered differences of the scalar f() with respect to x at the given flat indices:

        f'(x) ~ (-f(x + 2e) + 8 f(x + e) - 8 f(x - e) + f(x - 2e)) / (12 e)

    Its truncation error is O(e^4) instead of the two-point formula's O(e^2), so a
    larger step keeps rounding noise low too: about 1e-9 relative error instead of
    1e-7, which leaves a wide margin under the 1e-6 tolerance even for H = 512.
    x is perturbed in place and restored exactly after each entry. An f() of NaN at
    any point makes that entry's difference NaN.
    """
    flat = x.reshape(-1)  # a view: x must be contiguous
    out = np.empty(len(indices))
    for k, i in enumerate(indices):
        old = flat[i]
        values = []
        for step in (2 * eps, eps, -eps, -2 * eps):
            flat[i] = old + step
            values.append(f())
        flat[i] = old
        out[k] = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * eps)
    return out


def make_problem(model: CharRNN, batch: int, seq: int, rng: np.random.Generator):
    """A random batch (x, y, h0, mask) exercising every path of the gradient."""
    V, L, S = model.vocab_size, model.num_layers, model.state_size
    x = rng.integers(0, V, size=(batch, seq))
    y = rng.integers(0, V, size=(batch, seq))
    h0 = rng.uniform(-0.5, 0.5, size=(L, batch, S))  # every part of the state (lstm: h and c) non-zero
    if not model.cell.smooth:
        h0 = np.abs(h0)  # a relu state is never negative
    mask = np.ones((batch, seq))
    if seq > 2:
        mask[:, seq // 2] = 0  # masked in mid-sequence: no loss there, but the state flows on
        mask[0, -1] = 0  # and a ragged tail on the first row
    return x, y, h0, mask


def gradcheck(
    vocab: int = 7,
    hidden: int = 10,
    layers: int = 2,
    batch: int = 3,
    seq: int = 6,
    cell: str = "rnn",
    activation: str = "tanh",
    dropout: float = 0.0,
    seed: int = 0,
    tol: float = 1e-6,
    variational_dropout: bool = False,
    weight_drop: float = 0.0,
    embed_dropout: float = 0.0,
    eps: float | None = None,
    max_checks: int | None = None,
    model: CharRNN | None = None,
) -> GradcheckResult:
    """Compare analytic and numerical gradients for every parameter and for h0.

    eps defaults to 1e-3 for smooth cells (tanh and sigmoid: a large step keeps
    rounding noise down), 1e-4 for relu. A step that moves some pre-activation across
    relu's kink at 0 compares the slopes of two pieces, so for cells with kinks every
    point of every difference is checked to lie on the same pieces as the model
    itself (`CharRNN.kink_pattern`), and an entry whose step crosses a kink is left
    out and counted (`ParamCheck.at_kink`). A smaller step crosses fewer kinks but
    leaves more rounding noise: 1e-5 gave up to 7e-6 relative error on a 2 x 96
    relu model, 1e-4 at most 3e-7 with 0 to 24 of 225 entries left out (6 seeds). With dropout
    p > 0 (or weight_drop, embed_dropout > 0) every loss evaluation uses the same masks, drawn
    from a generator seeded from `seed`, so the gradient of one fixed thinned network is checked.
    max_checks caps the entries compared per array (chosen at random with the
    seeded generator); None compares every entry. A given `model` (float64
    recommended) is checked instead of a freshly built one.
    """
    rng = np.random.default_rng(seed)
    if model is None:
        model = CharRNN(vocab, hidden, layers, cell, activation, dropout, seed=seed, dtype=np.float64,
                        variational_dropout=variational_dropout, weight_drop=weight_drop,
                        embed_dropout=embed_dropout)  # fmt: skip
        # Non-zero biases. Zeros would hide a backward pass that drops a bias where it multiplies
        # (GRU: dr needs v_n + bhn), and with relu and dropout an all-dropped input row makes a
        # pre-activation exactly 0, on the kink. For relu they stay tiny: large ones move more
        # pre-activations within a step of the kink (measured at V65 H128, 8 seeds: one crossing)
        scale = 0.5 if model.cell.smooth else 0.01
        bias_rng = np.random.default_rng([seed, 2])
        for p in model.params.values():
            if p.ndim == 1:
                p += bias_rng.uniform(-scale, scale, p.shape)
    eps = (SMOOTH_EPS if model.cell.smooth else KINK_EPS) if eps is None else eps
    x, y, h0, mask = make_problem(model, batch, seq, rng)
    h0 = h0.astype(model.dtype)

    drops = model.dropout > 0 or model.weight_drop > 0 or model.embed_dropout > 0

    def masks():  # the same masks at every call (None: nothing dropped)
        return np.random.default_rng([seed, 1]) if drops else None

    loss, cache, _ = model.forward_loss(x, y, h0, mask, rng=masks())
    grads, dh0 = model.backward(cache)
    arrays = dict(model.params)
    analytic = dict(grads)
    arrays["h0"], analytic["h0"] = h0, dh0

    base_pattern = model.kink_pattern(cache)

    def f() -> float:
        value, c, _ = model.forward_loss(x, y, h0, mask, rng=masks())
        if base_pattern is not None and not np.array_equal(model.kink_pattern(c), base_pattern):
            return np.nan  # this point lies on another piece: its difference would straddle a kink
        return value

    checks = []
    for name, arr in arrays.items():
        n = arr.size
        if max_checks is None or max_checks >= n:
            idx = np.arange(n)
        else:
            idx = np.sort(rng.choice(n, size=max_checks, replace=False))
        num = numeric_gradient(f, arr, idx, eps)
        valid = ~np.isnan(num)
        a = analytic[name].reshape(-1)
        err = relative_error(a[idx][valid], num[valid], float(np.abs(a).max()))
        worst = float(err.max()) if err.size else 0.0
        passed = worst <= tol and (valid.any() or idx.size == 0)  # every entry at a kink proves nothing: fail
        checks.append(ParamCheck(name, tuple(arr.shape), int(valid.sum()), worst, bool(passed),
                                 int((~valid).sum())))  # fmt: skip
    settings = dict(
        vocab=model.vocab_size,
        hidden=model.hidden_size,
        layers=model.num_layers,
        batch=batch,
        seq=seq,
        cell=model.cell.name,
        activation=model.activation,
        dropout=model.dropout,
        **model.regularization(),
        seed=seed,
        dtype=str(model.dtype),
        loss=loss,
    )
    return GradcheckResult(checks, tol, eps, settings)
