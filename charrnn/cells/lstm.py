"""The LSTM cell (Hochreiter & Schmidhuber 1997, with a forget gate; PyTorch's nn.LSTM equations).

G = 4 gate blocks side by side in PyTorch's order i, f, g, o. Per step, rows being
batch entries:

    a = x_t Wxh + h_{t-1} Whh + bh                        (B, 4H)
    i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
    c_t = f * c_{t-1} + i * g,     h_t = o * tanh(c_t)

The state is one array (B, 2H): [h, c]. PyTorch's weights map as weight_ih = Wxh^T,
weight_hh = Whh^T, bias_ih + bias_hh = bh.

Backward, going back in time with dh_t = dhs_t + da_{t+1} Whh^T (the gradient from
above plus the one through the recurrence) and dc_t the gradient carried into c_t:

    dc   = dc_t + dh_t * o * (1 - tanh(c_t)^2)
    da_o = dh_t * tanh(c_t) * o (1 - o)
    da_i = dc * g * i (1 - i)
    da_f = dc * c_{t-1} * f (1 - f)
    da_g = dc * i * (1 - g^2)
    dc_{t-1} = dc * f

then dWhh = sum_t h_{t-1}^T da_t, one product over all steps, and the state
gradient [dh_0, dc_0] after the first step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..layers import aligned_copy, empty_aligned, zeros_aligned
from .base import BaseCell, input_weights, orthogonal, previous_states_product, sigmoid_, work

# Initial bias of the forget gate. Jozefowicz, Zaremba & Sutskever (2015) recommend 1; on
# tiny-shakespeare (1 x 256, B32 T64, Adam 2e-3 cosine, whole-split validation) 0 measured
# better at every evaluation: after 1000 steps 1.801 vs 1.881 (bias 2: 1.959), and with
# input_lr_scale 10: 1.676 vs 1.730 and, seed 1, 1.677 vs 1.719; after 3000 steps 1.529 vs 1.555.
# The carried state and windows of 64-100 characters ask little long memory of the cell.
FORGET_BIAS = 0.0


class LSTMCache(NamedTuple):
    gates: np.ndarray  # (T, B, 4H) gate activations [i, f, g, o]
    cs: np.ndarray  # (T, B, H) cell states c_1..c_T
    tanh_cs: np.ndarray  # (T, B, H) tanh(c_t)
    hs: np.ndarray  # (T, B, H) h_1..h_T
    s0: np.ndarray  # (B, 2H) [h_0, c_0]
    Whh: np.ndarray  # (H, 4H)


def lstm_forward(a: np.ndarray, s0: np.ndarray, Whh: np.ndarray, buffer=None):
    """Run the LSTM over a (T, B, 4H) = x Wxh + bh from state s0 (B, 2H) = [h_0, c_0].

    a is overwritten with the gate activations. Returns hs (T, B, H) and a cache.
    """
    T, B, G4 = a.shape
    H = G4 // 4
    dtype = a.dtype
    hs = work(buffer, "hs", (T, B, H), dtype)
    cs = work(buffer, "cs", (T, B, H), dtype)
    tanh_cs = work(buffer, "tanh_cs", (T, B, H), dtype)
    rec = empty_aligned((B, G4), dtype)  # h_{t-1} Whh
    ig = empty_aligned((B, H), dtype)  # i * g
    h_prev, c_prev = s0[:, :H], s0[:, H:]
    for t in range(T):
        at = a[t]
        np.matmul(h_prev, Whh, out=rec)
        at += rec
        sigmoid_(at[:, : 2 * H])  # i, f
        np.tanh(at[:, 2 * H : 3 * H], out=at[:, 2 * H : 3 * H])  # g
        sigmoid_(at[:, 3 * H :])  # o
        i, f, g, o = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :]
        c = cs[t]
        np.multiply(f, c_prev, out=c)
        np.multiply(i, g, out=ig)
        c += ig
        np.tanh(c, out=tanh_cs[t])
        np.multiply(o, tanh_cs[t], out=hs[t])
        h_prev, c_prev = hs[t], c
    return hs, LSTMCache(a, cs, tanh_cs, hs, s0, Whh)


def lstm_backward(dhs: np.ndarray, cache: LSTMCache, buffer=None):
    """BPTT for `lstm_forward`: gradients for (a, s0, Whh). dhs (T, B, H) is overwritten.

    Returns da (T, B, 4H), ds0 (B, 2H) = [dh_0, dc_0] and dWhh (H, 4H).
    """
    gates, cs, tanh_cs, hs, s0, Whh = cache
    T, B, H = hs.shape
    dtype = hs.dtype
    da = work(buffer, "da", (T, B, 4 * H), dtype)
    WhhT = aligned_copy(Whh.T)  # C-ordered: the step product runs faster than on the transposed view
    ds0 = zeros_aligned((B, 2 * H), dtype)
    dh_carry = zeros_aligned((B, H), dtype)  # da_{t+1} Whh^T
    dc = ds0[:, H:]  # the gradient carried into c; after the loop it is dc_0
    tmp = empty_aligned((B, H), dtype)
    for t in range(T - 1, -1, -1):
        g_t = gates[t]
        i, f, g, o = g_t[:, :H], g_t[:, H : 2 * H], g_t[:, 2 * H : 3 * H], g_t[:, 3 * H :]
        c_prev = cs[t - 1] if t else s0[:, H:]
        tc = tanh_cs[t]
        dh = dhs[t]
        dh += dh_carry
        d_t = da[t]
        di, df, dg, do = d_t[:, :H], d_t[:, H : 2 * H], d_t[:, 2 * H : 3 * H], d_t[:, 3 * H :]
        np.multiply(dh, tc, out=do)  # da_o = dh * tanh(c) * o (1 - o)
        np.subtract(1, o, out=tmp)
        tmp *= o
        do *= tmp
        np.multiply(tc, tc, out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
        np.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        dc += tmp
        np.multiply(dc, g, out=di)  # da_i = dc * g * i (1 - i)
        np.subtract(1, i, out=tmp)
        tmp *= i
        di *= tmp
        np.multiply(dc, c_prev, out=df)  # da_f = dc * c_{t-1} * f (1 - f)
        np.subtract(1, f, out=tmp)
        tmp *= f
        df *= tmp
        np.multiply(g, g, out=tmp)  # da_g = dc * i * (1 - g^2)
        np.subtract(1, tmp, out=tmp)
        tmp *= i
        np.multiply(dc, tmp, out=dg)
        dc *= f  # dc_{t-1}
        np.matmul(d_t, WhhT, out=dh_carry)
    ds0[:, :H] = dh_carry
    dWhh = previous_states_product(s0[:, :H], hs, da)
    return da, ds0, dWhh


class Cell(BaseCell):
    """The LSTM behind the common interface (see charrnn.cells)."""

    name = "lstm"
    gates = 4
    state_factor = 2

    def init_params(self, D: int, H: int, rng: np.random.Generator, embedding: bool) -> dict[str, np.ndarray]:
        """Wxh as `input_weights` for all four blocks; Whh four independent orthogonal (H, H) blocks;
        bh zero, its forget block at FORGET_BIAS. In the FORGET_BIAS setting, all with forget bias 1:
        the U(-1, 1) embedding rows 1.881 against 2.086 with PyTorch's U(+-1/sqrt(H)) (1.730 against
        1.817 at input_lr_scale 10); orthogonal Whh blocks 1.881, N(0, 1/H) 1.865 (no measurable
        difference); PyTorch's default for everything 1.993."""
        Wxh = input_weights(D, 4 * H, H, rng, embedding)
        Whh = np.hstack([orthogonal(H, rng) for _ in range(4)])
        bh = np.zeros(4 * H)
        bh[H : 2 * H] = FORGET_BIAS
        return {"Wxh": Wxh, "Whh": Whh, "bh": bh}

    def forward(self, a, s0, p, buffer=None):
        hs, cache = lstm_forward(a, s0, p["Whh"], buffer)
        if hs.shape[0] == 0:
            return hs, s0.copy(), cache
        return hs, np.concatenate([hs[-1], cache.cs[-1]], axis=-1), cache

    def backward(self, dhs, cache, buffer=None):
        da, ds0, dWhh = lstm_backward(dhs, cache, buffer)
        return da, ds0, {"Whh": dWhh}

    def step_(self, ax, v, h, rest):
        H = h.shape[-1]
        a = np.add(ax, v)  # (K, 4H)
        sigmoid_(a[..., : 2 * H])
        np.tanh(a[..., 2 * H : 3 * H], out=a[..., 2 * H : 3 * H])
        sigmoid_(a[..., 3 * H :])
        c = rest  # c_{t-1} -> c_t in place
        c *= a[..., H : 2 * H]
        c += a[..., :H] * a[..., 2 * H : 3 * H]
        np.tanh(c, out=h)
        h *= a[..., 3 * H :]
