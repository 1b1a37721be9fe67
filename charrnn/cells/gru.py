"""The GRU cell (Cho et al. 2014) in PyTorch's formulation, where the reset gate multiplies h Whh_n + bhn.

G = 3 gate blocks side by side in PyTorch's order r, z, n. Per step, with
u = x_t Wxh + bh (all steps at once) and v = h_{t-1} Whh:

    r = sigmoid(u_r + v_r),  z = sigmoid(u_z + v_z)
    n = tanh(u_n + r * (v_n + bhn))
    h_t = (1 - z) * n + z * h_{t-1}  =  n + z * (h_{t-1} - n)

Parameters: Wxh (D, 3H), Whh (H, 3H), bh (3H,), bhn (H,). State (B, H) = h.
PyTorch's weights map as weight_ih = Wxh^T, weight_hh = Whh^T, bias_ih = bh,
bias_hh = [0, 0, bhn] (its r and z hidden biases only add to bh; its n one is bhn).

Backward, going back in time with dh = dhs_t + (the gradient through the recurrence):

    da_n = dh * (1 - z) * (1 - n^2)                  (n's pre-activation; du_n = da_n)
    da_z = dh * (h_{t-1} - n) * z (1 - z)            (du_z = dv_z = da_z)
    da_r = da_n * (v_n + bhn) * r (1 - r)            (du_r = dv_r = da_r)
    dv_n = da_n * r,   dbhn = sum dv_n
    dh_{t-1} = dh * z + dv Whh^T

dWhh = sum_t h_{t-1}^T dv_t, one product over all steps.

Two loops compute this. `gru_forward` and `gru_backward` are the CPU engine, tuned for numpy
(negated Whh columns for one-exp sigmoids, factors prepared a block of steps at a time). On a
backend that offers fused kernels (the GPU: `Backend.fused`), `gru_forward_fused` and
`gru_backward_fused` run each step as one product and one kernel of `kernels`, the equations
above written as plain expressions; the cell picks the loop by the backend's answer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import backend_of
from . import cell_activations
from .base import BaseCell, block_steps, gate_blocks, input_weights, orthogonal, sigmoid_, work, zeroed
from .base import sigmoid as base_sigmoid


class GRUCache(NamedTuple):
    gates: np.ndarray  # (T, B, 3H) activations [r, z, n]
    hn: np.ndarray  # (T, B, H) v_n + bhn, what r multiplies; gru_backward overwrites it
    hs: np.ndarray  # (T+1, B, H) h_0..h_T
    Whh: np.ndarray  # (H, 3H)


def kernels(xp):
    """The fused step kernels (`Backend.fused`): functions of xp's ufuncs, every argument (B, H)
    (a view of one gate block, or a step of hs, hn, du, dvs) but bhn (H,), the outputs written in
    place. The GPU fuses each into one kernel; the stand-in runs them as they are.

    forward(r, z, n, vr, vz, vn, bhn, h_prev, hn, h): r, z, n hold u_t = x_t Wxh + bh and vr, vz, vn
        h_{t-1} Whh, block by block; r, z, n <- the gates of the module doc; hn <- v_n + bhn; h <- h_t.
    backward(dh, carry, direct, r, z, n, hn, h_prev, dur, duz, dun, dvr, dvz, dvn): the equations of
        the module doc with dh_t = dh + carry + direct (dhs_t, dv_{t+1} Whh^T and dh_{t+1} z_{t+1});
        du.. <- [da_r, da_z, da_n], dv.. <- [da_r, da_z, da_n r], direct <- dh_t z_t. dh is only read.
    """

    def sigmoid(x):  # base.sigmoid bound to xp
        return base_sigmoid(x, xp)

    def forward(r, z, n, vr, vz, vn, bhn, h_prev, hn, h):
        gr, gz = sigmoid(r + vr), sigmoid(z + vz)
        q = vn + bhn
        gn = xp.tanh(n + gr * q)
        r[...] = gr
        z[...] = gz
        n[...] = gn
        hn[...] = q
        xp.add(gn, gz * (h_prev - gn), out=h)

    def backward(dh, carry, direct, r, z, n, hn, h_prev, dur, duz, dun, dvr, dvz, dvn):
        dht = dh + carry + direct
        da_n = dht * (1 - z) * (1 - n * n)
        da_z = dht * (h_prev - n) * z * (1 - z)
        da_r = da_n * hn * r * (1 - r)
        dur[...] = da_r
        duz[...] = da_z
        dun[...] = da_n
        dvr[...] = da_r
        dvz[...] = da_z
        xp.multiply(da_n, r, out=dvn)
        xp.multiply(dht, z, out=direct)

    return {"forward": forward, "backward": backward}


def gru_forward(u: np.ndarray, h0: np.ndarray, Whh: np.ndarray, bhn: np.ndarray, buffer=None):
    """Run the GRU over u (T, B, 3H) = x Wxh + bh from h0 (B, H). u is overwritten with [r, z, n].

    Returns hs (T, B, H) and a cache. The sigmoids are 1 / (1 + exp(-x)), with the
    r and z columns of Whh negated once so that one subtraction forms -x (see the
    LSTM's `exp_scale`); exp overflowing to inf gives the right 0.
    """
    be = backend_of(u)
    xp = be.xp
    T, B, G3 = u.shape
    H = G3 // 3
    dtype = u.dtype
    hs = work(buffer, "hs", (T + 1, B, H), dtype, be)
    hn = work(buffer, "hn", (T, B, H), dtype, be)
    Whh_s = work(buffer, "Whh_s", Whh.shape, dtype, be)
    Whh_s[...] = Whh
    Whh_s[:, : 2 * H] *= -1
    v = work(buffer, "v", (B, G3), dtype, be)  # h_{t-1} Whh, its r and z blocks negated
    hs[0] = h0
    with be.errstate(over="ignore"):
        for t in range(T):
            ut = u[t]
            h_prev, ht = hs[t], hs[t + 1]
            xp.matmul(h_prev, Whh_s, out=v)
            rz = ut[:, : 2 * H]
            xp.subtract(v[:, : 2 * H], rz, out=rz)  # -(u + v) for r and z
            xp.exp(rz, out=rz)
            rz += 1
            xp.divide(1, rz, out=rz)
            r, z, n = ut[:, :H], ut[:, H : 2 * H], ut[:, 2 * H :]
            hnt = hn[t]
            xp.add(v[:, 2 * H :], bhn, out=hnt)
            xp.multiply(r, hnt, out=ht)  # ht as scratch: r * (v_n + bhn)
            n += ht
            xp.tanh(n, out=n)
            xp.subtract(h_prev, n, out=ht)  # h_t = n + z * (h_{t-1} - n)
            ht *= z
            ht += n
    return hs[1:], GRUCache(u, hn, hs, Whh)


def gru_forward_fused(u, h0, Whh, bhn, k: dict, buffer=None):
    """`gru_forward` with each step's elementwise work one call of the fused kernel k["forward"]."""
    be = backend_of(u)
    xp = be.xp
    T, B, G3 = u.shape
    H = G3 // 3
    hs = work(buffer, "hs", (T + 1, B, H), u.dtype, be)
    hn = work(buffer, "hn", (T, B, H), u.dtype, be)
    v = work(buffer, "v", (B, G3), u.dtype, be)  # h_{t-1} Whh
    U, V = gate_blocks(u, 3), gate_blocks(v, 3)
    hs[0] = h0
    step = k["forward"]
    for t in range(T):
        h_prev = hs[t]
        xp.matmul(h_prev, Whh, out=v)
        step(U[0][t], U[1][t], U[2][t], *V, bhn, h_prev, hn[t], hs[t + 1])
    return hs[1:], GRUCache(u, hn, hs, Whh)


def gru_backward(dhs: np.ndarray, cache: GRUCache, buffer=None):
    """BPTT for `gru_forward`: gradients for (u, h0, Whh, bhn). dhs (T, B, H) and cache.hn are overwritten.

    Returns du (T, B, 3H), dh0 (B, H), dWhh (H, 3H), dbhn (H,).

    The factors the forward values fix, [(h_{t-1} - n) z (1-z), (1-z)(1-n^2)] for
    da_z and da_n (times dh) and (v_n + bhn) r (1-r) for da_r (times da_n), are
    written into du and over hn a block of steps at a time; the loop going back
    multiplies them in place.
    """
    be = backend_of(dhs)
    xp = be.xp
    gates, hn, hs, Whh = cache
    T, B, H = hn.shape
    dtype = hn.dtype
    du = work(buffer, "du", (T, B, 3 * H), dtype, be)
    dvn = work(buffer, "dvn", (T, B, H), dtype, be)  # dv_n for every step (dWhh's n block, dbhn)
    K = block_steps(T, B)
    x = work(buffer, "tmp", (K, B, H), dtype, be)
    WhhT = work(buffer, "WhhT", Whh.shape[::-1], dtype, be)
    WhhT[...] = Whh.T
    carry = zeroed(buffer, "carry", (B, H), dtype, be)  # the gradient into h_t through step t+1
    dv = work(buffer, "dv", (B, 3 * H), dtype, be)  # dv_t = [da_r, da_z, dv_n]
    tmp = work(buffer, "direct", (B, H), dtype, be)
    du3 = du.reshape(T, B, 3, H)  # a view: the blocks r, z, n along axis 2
    for t1 in range(T, 0, -K):
        t0 = max(0, t1 - K)
        G, D, q, xb = gates[t0:t1], du[t0:t1], hn[t0:t1], x[: t1 - t0]  # q: v_n + bhn -> r (1-r) q
        r, z, n = G[..., :H], G[..., H : 2 * H], G[..., 2 * H :]
        xp.subtract(1, r, out=xb)
        xb *= r
        q *= xb  # (v_n + bhn) r (1-r)
        xp.subtract(1, z, out=xb)
        xp.multiply(n, n, out=D[..., 2 * H :])
        xp.subtract(1, D[..., 2 * H :], out=D[..., 2 * H :])
        D[..., 2 * H :] *= xb  # (1-z)(1-n^2)
        xb *= z
        xp.subtract(hs[t0:t1], n, out=D[..., H : 2 * H])
        D[..., H : 2 * H] *= xb  # (h_{t-1} - n) z (1-z)
        for t in range(t1 - 1, t0 - 1, -1):
            g_t, d_t = gates[t], du[t]
            dh = dhs[t]
            dh += carry
            du3[t, :, 1:] *= dh[:, None, :]  # da_z, da_n
            xp.multiply(d_t[:, 2 * H :], hn[t], out=d_t[:, :H])  # da_r = da_n (v_n + bhn) r (1-r)
            xp.multiply(d_t[:, 2 * H :], g_t[:, :H], out=dvn[t])  # dv_n = da_n * r
            dv[:, : 2 * H] = d_t[:, : 2 * H]
            dv[:, 2 * H :] = dvn[t]
            xp.matmul(dv, WhhT, out=carry)
            xp.multiply(dh, g_t[:, H : 2 * H], out=tmp)  # the direct path h_{t-1} -> h_t
            carry += tmp
    hp = hs[:-1].reshape(-1, H).T  # (H, T*B) h_0..h_{T-1}
    dWhh = xp.empty((H, 3 * H), dtype=dtype)
    xp.matmul(hp, du[..., : 2 * H].reshape(-1, 2 * H), out=dWhh[:, : 2 * H])
    xp.matmul(hp, dvn.reshape(-1, H), out=dWhh[:, 2 * H :])
    dbhn = xp.ones(T * B, dtype=dtype) @ dvn.reshape(-1, H)
    return du, carry, dWhh, dbhn


def gru_backward_fused(dhs, cache: GRUCache, k: dict, buffer=None):
    """`gru_backward` with each step's elementwise work one call of the fused kernel k["backward"].

    dhs and the cache are only read. dv_t = [da_r, da_z, dv_n] is kept for every step (dvs), so that
    dWhh is one product."""
    be = backend_of(dhs)
    xp = be.xp
    gates, hn, hs, Whh = cache
    T, B, H = hn.shape
    dtype = hn.dtype
    du = work(buffer, "du", (T, B, 3 * H), dtype, be)
    dvs = work(buffer, "dvs", (T, B, 3 * H), dtype, be)
    WhhT = work(buffer, "WhhT", Whh.shape[::-1], dtype, be)
    WhhT[...] = Whh.T
    carry = zeroed(buffer, "carry", (B, H), dtype, be)  # dv_{t+1} Whh^T
    direct = zeroed(buffer, "direct", (B, H), dtype, be)  # dh_{t+1} z_{t+1}, the direct path
    Gs, DU, DV = gate_blocks(gates, 3), gate_blocks(du, 3), gate_blocks(dvs, 3)
    step = k["backward"]
    for t in range(T - 1, -1, -1):
        step(dhs[t], carry, direct, Gs[0][t], Gs[1][t], Gs[2][t], hn[t], hs[t], DU[0][t], DU[1][t], DU[2][t],
             DV[0][t], DV[1][t], DV[2][t])  # fmt: skip
        xp.matmul(dvs[t], WhhT, out=carry)
    carry += direct  # dh_0
    dWhh = xp.matmul(hs[:-1].reshape(-1, H).T, dvs.reshape(-1, 3 * H))
    dbhn = DV[2].sum(axis=(0, 1))
    return du, carry, dWhh, dbhn


class Cell(BaseCell):
    """The GRU behind the common interface (see charrnn.cells)."""

    name = "gru"
    gates = 3
    activations = cell_activations("gru")
    kernels = staticmethod(kernels)

    def param_shapes(self, D: int, H: int) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(D, H), "bhn": (H,)}

    def init_params(self, D: int, H: int, rng: np.random.Generator, embedding: bool) -> dict[str, np.ndarray]:
        """Wxh as `input_weights` for all three blocks; Whh three independent orthogonal (H, H) blocks;
        bh and bhn zero. On tiny-shakespeare (1 x 256, 1000 steps, as for the LSTM's FORGET_BIAS) this
        measured 1.724 against 1.907 with PyTorch's U(+-1/sqrt(H)) embedding rows and 1.918 with
        PyTorch's default for everything."""
        Wxh = input_weights(D, 3 * H, H, rng, embedding)
        Whh = np.hstack([orthogonal(H, rng) for _ in range(3)])
        return {"Wxh": Wxh, "Whh": Whh, "bh": np.zeros(3 * H), "bhn": np.zeros(H)}

    def split_bias(self, p):
        """u_n carries bh's n block; v carries bh's r and z blocks (they only add up) and bhn."""
        H = p["bhn"].shape[0]
        b_in = backend_of(p["bh"]).xp.zeros_like(p["bh"])
        b_in[2 * H :] = p["bh"][2 * H :]
        b_rec = p["bh"].copy()
        b_rec[2 * H :] = p["bhn"]
        return b_in, b_rec

    def forward(self, a, s0, p, buffer=None):
        k = self.fused(a)
        if k is None:
            hs, cache = gru_forward(a, s0, p["Whh"], p["bhn"], buffer)
        else:
            hs, cache = gru_forward_fused(a, s0, p["Whh"], p["bhn"], k, buffer)
        return hs, cache.hs[-1].copy(), cache

    def backward(self, dhs, cache, buffer=None):
        k = self.fused(dhs)
        if k is None:
            du, dh0, dWhh, dbhn = gru_backward(dhs, cache, buffer)
        else:
            du, dh0, dWhh, dbhn = gru_backward_fused(dhs, cache, k, buffer)
        return du, dh0, {"Whh": dWhh, "bhn": dbhn}

    def step_(self, ax, v, h, rest, xp=np):
        H = h.shape[-1]
        rz = xp.add(ax[..., : 2 * H], v[..., : 2 * H])
        sigmoid_(rz, xp)
        n = xp.multiply(v[..., 2 * H :], rz[..., :H])  # r * (h Whh_n + bhn)
        n += ax[..., 2 * H :]
        xp.tanh(n, out=n)
        h -= n  # h_t = n + z * (h_{t-1} - n)
        h *= rz[..., H:]
        h += n
