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

Two loops compute this. `lstm_forward` and `lstm_backward` are the CPU engine, tuned for
numpy (the exp trick of `exp_scale`, factors prepared a block of steps at a time, no
temporaries). On a backend that offers fused kernels (the GPU: `Backend.fused`),
`lstm_forward_fused` and `lstm_backward_fused` run each step as one product and one kernel
of `kernels`, the equations above written as plain expressions; the cell picks the loop
by the backend's answer. Both leave the same cache.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import backend_of
from . import cell_activations
from .base import (
    BaseCell,
    block_steps,
    gate_blocks,
    input_weights,
    orthogonal,
    previous_states_product,
    sigmoid_,
    work,
    zeroed,
)
from .base import sigmoid as base_sigmoid

# Initial bias of the forget gate. Jozefowicz, Zaremba & Sutskever (2015) recommend 1; on
# tiny-shakespeare (1 x 256, B32 T64, Adam 2e-3 cosine, whole-split validation) 0 measured
# better at every evaluation: after 1000 steps 1.801 vs 1.881 (bias 2: 1.959), and with
# input_lr_scale 10: 1.676 vs 1.730 and, seed 1, 1.677 vs 1.719; after 3000 steps 1.529 vs 1.555.
# The carried state and windows of 64-100 characters ask little long memory of the cell.
FORGET_BIAS = 0.0


class LSTMCache(NamedTuple):
    gates: np.ndarray  # (T, B, 4H) gate activations [i, f, g, o]
    cs: np.ndarray  # (T+1, B, H) cell states c_0..c_T
    tanh_cs: np.ndarray  # (T, B, H) tanh(c_t); lstm_backward overwrites it
    hs: np.ndarray  # (T, B, H) h_1..h_T
    s0: np.ndarray  # (B, 2H) [h_0, c_0]
    Whh: np.ndarray  # (H, 4H)


def exp_scale(H: int, dtype) -> np.ndarray:
    """(4H,) column factors that turn the gates' pre-activations into exp arguments.

    sigmoid(x) = 1 / (1 + exp(-x)) and tanh(x) = 2 / (1 + exp(-2x)) - 1: after
    a *= [-1, -1, -2, -1] (blocks i, f, g, o), one exp, one add and one divide of
    [1, 1, 2, 1] over all 4H columns give every gate, g as 1 + tanh(a_g). numpy's exp
    runs about twice as fast as its tanh, and the block-wise sigmoid-as-tanh it
    replaces took four calls per block. exp overflows to inf for very negative
    gates, and 1 / (1 + inf) = 0 is the right value: the loops ignore that warning.
    """
    s = np.full(4 * H, -1.0, dtype=dtype)
    s[2 * H : 3 * H] = -2.0
    return s


def kernels(xp):
    """The fused step kernels (`Backend.fused`): functions of xp's ufuncs, every argument (B, H)
    (a view of one gate block, or a step of cs, tanh_cs, hs), the outputs written in place.
    The GPU fuses each into one kernel; the stand-in runs them as they are.

    forward(i, f, g, o, ri, rf, rg, ro, c_prev, c, tanh_c, h): i..o hold a_t = x_t Wxh + bh and
        ri..ro h_{t-1} Whh, block by block; i..o <- the gates sigmoid(a_i), sigmoid(a_f), tanh(a_g),
        sigmoid(a_o) of a = i + ri, ...; c <- c_t = f c_prev + i g; tanh_c <- tanh(c_t); h <- o tanh(c_t).
    backward(dh, carry, dc, i, f, g, o, c_prev, tanh_c, di, df, dg, do): the equations of the module
        doc with dh_t = dh + carry (dhs_t, and da_{t+1} Whh^T); di..do <- da_t's blocks; dc (dc_{t+1} f_{t+1},
        zero after the last step) <- dc_t f_t. dh is only read.
    """

    def sigmoid(x):  # base.sigmoid bound to xp
        return base_sigmoid(x, xp)

    def forward(i, f, g, o, ri, rf, rg, ro, c_prev, c, tanh_c, h):
        gi, gf, gg, go = sigmoid(i + ri), sigmoid(f + rf), xp.tanh(g + rg), sigmoid(o + ro)
        ct = gf * c_prev + gi * gg
        tc = xp.tanh(ct)
        i[...] = gi
        f[...] = gf
        g[...] = gg
        o[...] = go
        c[...] = ct
        tanh_c[...] = tc
        xp.multiply(go, tc, out=h)

    def backward(dh, carry, dc, i, f, g, o, c_prev, tanh_c, di, df, dg, do):
        dht = dh + carry
        dct = dc + dht * o * (1 - tanh_c * tanh_c)
        xp.multiply(dht * tanh_c, o * (1 - o), out=do)
        xp.multiply(dct * g, i * (1 - i), out=di)
        xp.multiply(dct * c_prev, f * (1 - f), out=df)
        xp.multiply(dct * i, 1 - g * g, out=dg)
        xp.multiply(dct, f, out=dc)

    return {"forward": forward, "backward": backward}


def lstm_forward(a: np.ndarray, s0: np.ndarray, Whh: np.ndarray, buffer=None):
    """Run the LSTM over a (T, B, 4H) = x Wxh + bh from state s0 (B, 2H) = [h_0, c_0].

    a is overwritten with the gate activations. Returns hs (T, B, H) and a cache.
    """
    be = backend_of(a)
    xp = be.xp
    T, B, G4 = a.shape
    H = G4 // 4
    dtype = a.dtype
    hs = work(buffer, "hs", (T, B, H), dtype, be)
    cs = work(buffer, "cs", (T + 1, B, H), dtype, be)
    tanh_cs = work(buffer, "tanh_cs", (T, B, H), dtype, be)
    scale = be.asarray(exp_scale(H, dtype))
    numer = -scale  # [1, 1, 2, 1]: 2 / (1 + exp(-2 a_g)) = 1 + tanh(a_g)
    Whh_s = work(buffer, "Whh_s", Whh.shape, dtype, be)
    xp.multiply(Whh, scale, out=Whh_s)  # h_{t-1} Whh, already scaled
    rec = work(buffer, "rec", (B, G4), dtype, be)
    ig = work(buffer, "ig", (B, H), dtype, be)  # i * g
    cs[0] = s0[:, H:]
    h_prev = s0[:, :H]
    K = block_steps(T, B)  # steps whose input terms are scaled in one call
    with be.errstate(over="ignore"):
        for t in range(T):
            if t % K == 0:
                a[t : t + K] *= scale
            at = a[t]
            xp.matmul(h_prev, Whh_s, out=rec)
            at += rec
            xp.exp(at, out=at)
            at += 1
            xp.divide(numer, at, out=at)  # [i, f, 1 + g, o]
            i, f, g, o = at[:, :H], at[:, H : 2 * H], at[:, 2 * H : 3 * H], at[:, 3 * H :]
            g -= 1
            c = cs[t + 1]
            xp.multiply(f, cs[t], out=c)  # c_t = f * c_{t-1} + i * g
            xp.multiply(i, g, out=ig)
            c += ig
            xp.tanh(c, out=tanh_cs[t])
            xp.multiply(o, tanh_cs[t], out=hs[t])  # h_t = o * tanh(c_t)
            h_prev = hs[t]
    return hs, LSTMCache(a, cs, tanh_cs, hs, s0, Whh)


def lstm_forward_fused(a, s0, Whh, k: dict, buffer=None):
    """`lstm_forward` with each step's elementwise work one call of the fused kernel k["forward"]."""
    be = backend_of(a)
    xp = be.xp
    T, B, G4 = a.shape
    H = G4 // 4
    dtype = a.dtype
    hs = work(buffer, "hs", (T, B, H), dtype, be)
    cs = work(buffer, "cs", (T + 1, B, H), dtype, be)
    tanh_cs = work(buffer, "tanh_cs", (T, B, H), dtype, be)
    rec = work(buffer, "rec", (B, G4), dtype, be)
    A, R = gate_blocks(a, 4), gate_blocks(rec, 4)
    cs[0] = s0[:, H:]
    h_prev = s0[:, :H]
    step = k["forward"]
    for t in range(T):
        xp.matmul(h_prev, Whh, out=rec)
        h_prev = hs[t]
        step(A[0][t], A[1][t], A[2][t], A[3][t], *R, cs[t], cs[t + 1], tanh_cs[t], h_prev)
    return hs, LSTMCache(a, cs, tanh_cs, hs, s0, Whh)


def lstm_backward(dhs: np.ndarray, cache: LSTMCache, buffer=None):
    """BPTT for `lstm_forward`: gradients for (a, s0, Whh). dhs (T, B, H) and cache.tanh_cs are overwritten.

    Returns da (T, B, 4H), ds0 (B, 2H) = [dh_0, dc_0] and dWhh (H, 4H).

    Every da_t is a factor that the forward values fix, times dh_t or dc_t:
    [da_i, da_f, da_g] = dc_t * [g i (1-i), c_{t-1} f (1-f), i (1-g^2)] and
    da_o = dh_t * tanh(c_t) o (1-o); and dc_t = dc_{t+1} f_{t+1} + dh_t * o (1 - tanh(c_t)^2).
    The factors are written into da (and the last one over tanh_cs) a block of
    steps at a time; the loop going back then multiplies them in place.
    """
    be = backend_of(dhs)
    xp = be.xp
    gates, cs, tanh_cs, hs, s0, Whh = cache
    T, B, H = hs.shape
    dtype = hs.dtype
    da = work(buffer, "da", (T, B, 4 * H), dtype, be)
    K = block_steps(T, B)
    tmp = work(buffer, "tmp", (K, B, 2 * H), dtype, be)
    WhhT = work(buffer, "WhhT", Whh.shape[::-1], dtype, be)
    WhhT[...] = Whh.T  # C-ordered: the step product runs faster than on the transposed view
    ds0 = zeroed(buffer, "ds0", (B, 2 * H), dtype, be)
    dh_carry = zeroed(buffer, "dh_carry", (B, H), dtype, be)  # da_{t+1} Whh^T
    dc = ds0[:, H:]  # the gradient carried into c; after the loop it is dc_0
    dcq = work(buffer, "dcq", (B, H), dtype, be)
    da4 = da.reshape(T, B, 4, H)  # a view: the blocks i, f, g, o along axis 2
    for t1 in range(T, 0, -K):
        t0 = max(0, t1 - K)
        G, D, q = gates[t0:t1], da[t0:t1], tanh_cs[t0:t1]  # q: tanh(c) -> o (1 - tanh(c)^2)
        i, g, o = G[..., :H], G[..., 2 * H : 3 * H], G[..., 3 * H :]
        x2 = tmp[: t1 - t0]
        x = x2[..., :H]
        xp.subtract(1, G[..., : 2 * H], out=x2)  # [i (1-i), f (1-f)]
        x2 *= G[..., : 2 * H]
        xp.multiply(x2[..., H:], cs[t0:t1], out=D[..., H : 2 * H])  # c_{t-1} f (1-f)
        xp.multiply(x, g, out=D[..., :H])  # g i (1-i)
        xp.multiply(g, g, out=x)
        xp.subtract(1, x, out=x)
        xp.multiply(x, i, out=D[..., 2 * H : 3 * H])  # i (1 - g^2)
        xp.subtract(1, o, out=x)
        x *= o
        xp.multiply(x, q, out=D[..., 3 * H :])  # tanh(c) o (1-o)
        xp.multiply(q, q, out=x)
        xp.subtract(1, x, out=x)
        xp.multiply(x, o, out=q)  # o (1 - tanh(c)^2)
        for t in range(t1 - 1, t0 - 1, -1):
            dh = dhs[t]
            dh += dh_carry
            d_t = da[t]
            d_t[:, 3 * H :] *= dh  # da_o
            xp.multiply(dh, tanh_cs[t], out=dcq)
            dc += dcq  # dc_t
            da4[t, :, :3] *= dc[:, None, :]  # da_i, da_f, da_g
            dc *= gates[t][:, H : 2 * H]  # dc_{t-1} = dc_t * f_t
            xp.matmul(d_t, WhhT, out=dh_carry)
    ds0[:, :H] = dh_carry
    dWhh = previous_states_product(s0[:, :H], hs, da)
    return da, ds0, dWhh


def lstm_backward_fused(dhs, cache: LSTMCache, k: dict, buffer=None):
    """`lstm_backward` with each step's elementwise work one call of the fused kernel k["backward"].

    dhs and the cache are only read."""
    be = backend_of(dhs)
    xp = be.xp
    gates, cs, tanh_cs, hs, s0, Whh = cache
    T, B, H = hs.shape
    dtype = hs.dtype
    da = work(buffer, "da", (T, B, 4 * H), dtype, be)
    WhhT = work(buffer, "WhhT", Whh.shape[::-1], dtype, be)
    WhhT[...] = Whh.T
    ds0 = zeroed(buffer, "ds0", (B, 2 * H), dtype, be)
    dh_carry = zeroed(buffer, "dh_carry", (B, H), dtype, be)  # da_{t+1} Whh^T
    dc = ds0[:, H:]  # the gradient carried into c; after the loop it is dc_0
    Gs, D = gate_blocks(gates, 4), gate_blocks(da, 4)
    step = k["backward"]
    for t in range(T - 1, -1, -1):
        step(dhs[t], dh_carry, dc, Gs[0][t], Gs[1][t], Gs[2][t], Gs[3][t], cs[t], tanh_cs[t], D[0][t], D[1][t],
             D[2][t], D[3][t])  # fmt: skip
        xp.matmul(da[t], WhhT, out=dh_carry)
    ds0[:, :H] = dh_carry
    return da, ds0, previous_states_product(s0[:, :H], hs, da)


class Cell(BaseCell):
    """The LSTM behind the common interface (see charrnn.cells)."""

    name = "lstm"
    gates = 4
    activations = cell_activations("lstm")
    state_factor = 2
    kernels = staticmethod(kernels)

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
        k = self.fused(a)
        if k is None:
            hs, cache = lstm_forward(a, s0, p["Whh"], buffer)
        else:
            hs, cache = lstm_forward_fused(a, s0, p["Whh"], k, buffer)
        if hs.shape[0] == 0:
            return hs, s0.copy(), cache
        return hs, backend_of(hs).xp.concatenate([hs[-1], cache.cs[-1]], axis=-1), cache

    def backward(self, dhs, cache, buffer=None):
        k = self.fused(dhs)
        if k is None:
            da, ds0, dWhh = lstm_backward(dhs, cache, buffer)
        else:
            da, ds0, dWhh = lstm_backward_fused(dhs, cache, k, buffer)
        return da, ds0, {"Whh": dWhh}

    def step_(self, ax, v, h, rest, xp=np):
        H = h.shape[-1]
        a = xp.add(ax, v)  # (K, 4H)
        sigmoid_(a[..., : 2 * H], xp)
        xp.tanh(a[..., 2 * H : 3 * H], out=a[..., 2 * H : 3 * H])
        sigmoid_(a[..., 3 * H :], xp)
        c = rest  # c_{t-1} -> c_t in place
        c *= a[..., H : 2 * H]
        c += a[..., :H] * a[..., 2 * H : 3 * H]
        xp.tanh(c, out=h)
        h *= a[..., 3 * H :]
