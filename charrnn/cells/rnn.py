"""The vanilla (Elman) cell: h_t = f(x_t Wxh + h_{t-1} Whh + bh), f = tanh or relu.

G = 1, state (B, H) = h. Parameters: Wxh (D, H), Whh (H, H), bh (H,).

Backward (BPTT), with dhs_t the gradient from above: going back in time,
dh_t = dhs_t + da_{t+1} Whh^T, da_t = dh_t * f'(a_t), and dh_0 = da_1 Whh^T; the
weight gradient needs no loop: dWhh = sum_t h_{t-1}^T da_t, one (H, N) x (N, H) product.

Two loops compute this. `rnn_forward` and `rnn_backward` are the CPU engine: each step a
product and a few in-place ufuncs. On a backend that offers fused kernels (the GPU:
`Backend.fused`), `rnn_forward_fused` and `rnn_backward_fused` run each step as the
product and one kernel of `kernels`; the cell picks the loop by the backend's answer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ..backend import backend_of
from . import cell_activations
from .base import BaseCell, input_weights, orthogonal, previous_states_product, work, zeroed

ACTIVATIONS = cell_activations("rnn")
RELU_RECURRENT_SCALE = 0.5  # relu: Whh starts as 0.5 x an orthogonal matrix (see Cell.init_params)


def activate_(a: np.ndarray, activation: str, xp=np) -> np.ndarray:
    """Apply the nonlinearity in place: tanh, or relu = max(a, 0). Returns a."""
    if activation == "tanh":
        return xp.tanh(a, out=a)
    return xp.maximum(a, 0, out=a)


class RNNCache(NamedTuple):
    hs: np.ndarray  # (T, B, H) hidden states h_1..h_T (the activations, not the pre-activations)
    h0: np.ndarray  # (B, H) state before the first step
    Whh: np.ndarray  # (H, H)
    activation: str


def kernels(xp):
    """The fused step kernels (`Backend.fused`): functions of xp's ufuncs, every argument (B, H),
    the first one updated in place. The GPU fuses each into one kernel; the stand-in runs them as they are.

        forward_f(a, rec):         a <- h_t = f(a_t + rec),  rec = h_{t-1} Whh
        backward_f(d, carry, h):   d <- da_t = (dhs_t + carry) * f'(a_t),  carry = da_{t+1} Whh^T,
                                   f'(a_t) = 1 - h_t^2 (tanh) or [h_t > 0] (relu)
    """

    def forward_tanh(a, rec):
        xp.tanh(a + rec, out=a)

    def forward_relu(a, rec):
        xp.maximum(a + rec, 0, out=a)

    def backward_tanh(d, carry, h):
        xp.multiply(d + carry, 1 - h * h, out=d)

    def backward_relu(d, carry, h):
        xp.multiply(d + carry, h > 0, out=d)

    return {f.__name__: f for f in (forward_tanh, forward_relu, backward_tanh, backward_relu)}


def rnn_forward(a: np.ndarray, h0: np.ndarray, Whh: np.ndarray, activation: str = "tanh", buffer=None):
    """Run h_t = f(a_t + h_{t-1} @ Whh) for t = 1..T.

    a: (T, B, H) input pre-activations x_t Wxh + bh, already computed for all steps
    with one large product. It is overwritten: its memory becomes the output hs.
    h0: (B, H); Whh: (H, H). Returns hs (T, B, H) and a cache.

    Only f(a) is kept: both derivatives are functions of the output
    (tanh' = 1 - h^2, relu' = [h > 0]), so the pre-activations need no storage.
    """
    be = backend_of(a)
    xp = be.xp
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    T = a.shape[0]
    hs = a  # in place: a_t is consumed before h_t is written over it
    rec = work(buffer, "rec", h0.shape, h0.dtype, be)  # (B, H) buffer for h_{t-1} @ Whh
    h_prev = h0
    for t in range(T):
        xp.matmul(h_prev, Whh, out=rec)
        at = hs[t]
        at += rec
        activate_(at, activation, xp)
        h_prev = at
    return hs, RNNCache(hs, h0, Whh, activation)


def rnn_forward_fused(a, h0, Whh, activation: str, k: dict, buffer=None):
    """`rnn_forward` with each step's elementwise work one call of the fused kernel k["forward_<f>"]."""
    be = backend_of(a)
    xp = be.xp
    step = k[f"forward_{activation}"]
    rec = work(buffer, "rec", h0.shape, h0.dtype, be)
    h_prev = h0
    for t in range(a.shape[0]):
        xp.matmul(h_prev, Whh, out=rec)
        h_prev = a[t]
        step(h_prev, rec)  # a_t -> h_t in place
    return a, RNNCache(a, h0, Whh, activation)


def rnn_backward(dhs: np.ndarray, cache: RNNCache):
    """Backpropagation through time for `rnn_forward`: gradients for (a, h0, Whh).

    dhs: (T, B, H) gradient of the loss with respect to each h_t from above (the
    output layer or the next layer up). It is overwritten and returned as da.

    Going backwards, the gradient into h_t is the one from above plus the one
    coming back from step t+1 through Whh:  dh_t = dhs_t + da_{t+1} @ Whh^T,
    and da_t = dh_t * f'(a_t). The weight gradient then needs no loop:
    dWhh = sum_t h_{t-1}^T da_t, one (H, N) x (N, H) product over all steps.
    """
    be = backend_of(dhs)
    xp = be.xp
    hs, h0, Whh, activation = cache
    T = hs.shape[0]
    da = dhs  # in place: dhs_t is consumed before da_t is written over it
    carry = be.zeros(h0.shape, h0.dtype)  # (B, H) da_{t+1} @ Whh^T, zero after the last step
    fprime = be.empty(h0.shape, h0.dtype)  # (B, H) f'(a_t), computed while h_t is in cache
    WhhT = be.copy(Whh.T)  # a C-ordered copy: the step product runs ~20% faster than on the view
    for t in range(T - 1, -1, -1):
        dt, ht = da[t], hs[t]
        dt += carry
        if activation == "tanh":
            xp.multiply(ht, ht, out=fprime)
            xp.subtract(1, fprime, out=fprime)  # tanh' = 1 - h^2
            dt *= fprime
        else:
            dt *= ht > 0  # relu' = [h > 0]
        xp.matmul(dt, WhhT, out=carry)
    return da, carry, previous_states_product(h0, hs, da)  # carry is dh0 after the loop


def rnn_backward_fused(dhs, cache: RNNCache, k: dict, buffer=None):
    """`rnn_backward` with each step's elementwise work one call of the fused kernel k["backward_<f>"]."""
    be = backend_of(dhs)
    xp = be.xp
    hs, h0, Whh, activation = cache
    step = k[f"backward_{activation}"]
    da = dhs
    carry = zeroed(buffer, "carry", h0.shape, h0.dtype, be)
    WhhT = work(buffer, "WhhT", Whh.shape[::-1], Whh.dtype, be)
    WhhT[...] = Whh.T
    for t in range(hs.shape[0] - 1, -1, -1):
        dt = da[t]
        step(dt, carry, hs[t])  # dhs_t -> da_t in place
        xp.matmul(dt, WhhT, out=carry)
    return da, carry, previous_states_product(h0, hs, da)


class Cell(BaseCell):
    """The vanilla cell behind the common interface (see charrnn.cells)."""

    name = "rnn"
    gates = 1
    activations = ACTIVATIONS
    kernels = staticmethod(kernels)

    @property
    def smooth(self) -> bool:
        return self.activation != "relu"

    def kink_pattern(self, cache):
        return cache.hs > 0 if self.activation == "relu" else None  # relu: which units are active

    @property
    def divergence_hint(self) -> str:
        if self.activation != "relu":
            return ""
        return "relu units are unbounded: docs/model.md, Initialisation, says what trains"

    def init_params(self, D: int, H: int, rng: np.random.Generator, embedding: bool) -> dict[str, np.ndarray]:
        """Wxh as `input_weights`; Whh orthogonal (all singular values 1: gradients neither explode nor
        vanish through Whh at the start), scaled by RELU_RECURRENT_SCALE for relu; bh zero.

        relu units are unbounded, and the state is carried from window to window for a whole epoch.
        The identity of the IRNN (Le, Jaitly & Hinton 2015; charrnn 0.1) then adds up the
        inputs of thousands of steps: with the default config the training loss reached 1e5 to 1e8
        in the first hundred steps. A contraction (every singular value 0.5) keeps a carried state
        within twice the size of one step's input, and on tiny-shakespeare it trains as well as tanh
        (docs/model.md, "relu"). Drawn in the order of 0.1.0 (Wxh, then Whh for both activations now)."""
        Wxh = input_weights(D, H, H, rng, embedding)
        Whh = orthogonal(H, rng)
        if self.activation == "relu":
            Whh *= RELU_RECURRENT_SCALE
        return {"Wxh": Wxh, "Whh": Whh, "bh": np.zeros(H)}

    def forward(self, a, s0, p, buffer=None):
        k = self.fused(a)
        if k is None:
            hs, cache = rnn_forward(a, s0, p["Whh"], self.activation, buffer)  # hs is a, overwritten
        else:
            hs, cache = rnn_forward_fused(a, s0, p["Whh"], self.activation, k, buffer)
        return hs, (hs[-1] if hs.shape[0] else s0.copy()), cache

    def backward(self, dhs, cache, buffer=None):
        k = self.fused(dhs)
        if k is None:
            da, dh0, dWhh = rnn_backward(dhs, cache)  # da is dhs, overwritten (its temporaries are small)
        else:
            da, dh0, dWhh = rnn_backward_fused(dhs, cache, k, buffer)
        return da, dh0, {"Whh": dWhh}

    def activation_fn(self, xp=np):
        """The nonlinearity of array module xp as one C-level call f(h, out=h), for the sampler
        (activate_'s Python dispatch is ~5% of a character)."""
        return xp.tanh if self.activation == "tanh" else functools.partial(xp.maximum, 0)

    def step_fn(self, xp=np):
        """`step_` with the nonlinearity of xp bound once (the sampler's loop looks nothing up)."""
        return functools.partial(self._step, f=self.activation_fn(xp), xp=xp)

    def step_(self, ax, v, h, rest, xp=np):
        self._step(ax, v, h, rest, self.activation_fn(xp), xp)

    @staticmethod
    def _step(ax, v, h, rest, f, xp):
        xp.add(v, ax, out=h)  # a_t = x_t Wxh + h_{t-1} Whh + bh, written where h_t goes
        f(h, out=h)
