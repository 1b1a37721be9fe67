"""What every cell shares: the activation check, the state width, work arrays. See the package doc."""

from __future__ import annotations

import functools

import numpy as np

from ..backend import backend_of


class BaseCell:
    name = ""
    gates = 1  # G: blocks of H columns in Wxh, Whh and bh
    activations: tuple[str, ...] = ("tanh",)  # accepted nonlinearities, the default first
    state_factor = 1  # S = state_factor * H
    kernels = None  # the module's fused-kernel set, kernels(xp) -> {name: function of ufuncs} (see fused)

    def __init__(self, activation: str = "tanh"):
        if activation not in self.activations:
            only = "relu applies to cell rnn only" if activation == "relu" else f"one of {self.activations}"
            raise ValueError(f"activation {activation!r} does not fit cell {self.name} ({only})")
        self.activation = activation

    @property
    def smooth(self) -> bool:
        """Whether the cell's derivative is continuous (gradcheck takes larger steps then)."""
        return True

    @property
    def divergence_hint(self) -> str:
        """Advice the training loop adds when the loss stops being finite ("" for none)."""
        return ""

    def kink_pattern(self, cache):
        """Which piece of its nonlinearity every unit is on, for a cell with kinks (None: smooth).

        A numerical derivative is only the slope the backward pass computes if every
        point of the difference stays on the same pieces: gradcheck compares this
        pattern at each point and leaves out the entries whose step crosses a kink.
        """
        return None

    def state_size(self, H: int) -> int:
        return self.state_factor * H

    def param_shapes(self, D: int, H: int) -> dict[str, tuple[int, ...]]:
        GH = self.gates * H
        return {"Wxh": (D, GH), "Whh": (H, GH), "bh": (GH,)}

    def split_bias(self, p: dict) -> tuple[np.ndarray, np.ndarray]:
        """(b_in, b_rec): by default the whole bias sits on the recurrent side."""
        return backend_of(p["bh"]).xp.zeros_like(p["bh"]), p["bh"]

    def fused(self, x):
        """The cell's fused step kernels on the backend of x (`Backend.fused` of the module's `kernels`),
        or None: run the unfused sequence. The backend decides (cupy.fuse on the GPU, None on the CPU);
        the cell's forward and backward only pick the loop that fits the answer."""
        return backend_of(x).fused(type(self).kernels)

    def step_fn(self, xp=np):
        """`step_` bound once to an array module (numpy or cupy): the maths holds no device branch."""
        return functools.partial(self.step_, xp=xp)

    def __repr__(self) -> str:
        args = repr(self.activation) if len(self.activations) > 1 else ""
        return f"{type(self).__name__}({args})"


def work(buffer, name: str, shape: tuple[int, ...], dtype, be) -> np.ndarray:
    """A work array: the model's kept one (buffer(name, shape)) or a fresh one from backend be."""
    return be.empty(shape, dtype) if buffer is None else buffer(name, shape)


def zeroed(buffer, name: str, shape: tuple[int, ...], dtype, be) -> np.ndarray:
    """`work`, filled with zeros (as be.zeros: the same values, no new memory with a buffer)."""
    out = work(buffer, name, shape, dtype, be)
    out.fill(0)
    return out


def gate_blocks(x, G: int) -> list:
    """x (..., G*H) as G views (..., H), one per gate block: a fused kernel takes no slices, so
    its callers pass each block as an argument of its own (strided views are fine there)."""
    H = x.shape[-1] // G
    return [x[..., j * H : (j + 1) * H] for j in range(G)]


# Rows of (B, G*H) gate work that the gated cells prepare in one call: in the forward the LSTM's
# input-term scaling, in the backward the factors that do not depend on the gradient flowing back.
# One call per block of steps instead of one per step where the arrays are small; the block still
# fits in cache where they are large.
BLOCK_ROWS = 256


def block_steps(T: int, B: int) -> int:
    """Time steps per block of BLOCK_ROWS rows (at least 1, at most T unless T = 0)."""
    return max(1, min(T, BLOCK_ROWS // B))


def sigmoid(x, xp=np):
    """The logistic function as an expression, 1 / (1 + exp(-x)), for the fused kernels (`kernels(xp)`).

    exp overflows to inf for x < -88 in float32, and 1 / inf = 0 is the right value.
    """
    return 1 / (1 + xp.exp(-x))


def sigmoid_(x: np.ndarray, xp=np) -> np.ndarray:
    """The logistic function in place, as 0.5 * tanh(x / 2) + 0.5: one vectorised tanh, no overflow."""
    x *= 0.5
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal (n, n) matrix, uniformly distributed (QR with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def input_weights(D: int, cols: int, H: int, rng: np.random.Generator, embedding: bool) -> np.ndarray:
    """Layer input weights (D, cols): U(-1, 1) character embeddings for layer 0, N(0, 1/H) above.

    A one-hot input selects one row, so each unit's input has fan-in 1, not V: a
    dense-layer scale such as U(+-1/sqrt(H)) (PyTorch's default, std 0.026 at
    H = 512) makes the character signal tiny next to the recurrent one, and learning
    starts slowly (measured with PyTorch's vanilla RNN at H = 512: val loss 1.82
    after 1000 steps against 1.66 with std 0.58). Above layer 0 the input is dense,
    H units of unit-order magnitude: the fan-in (LeCun) scale.
    """
    if embedding:
        return rng.uniform(-1.0, 1.0, size=(D, cols))
    return rng.standard_normal((D, cols)) / np.sqrt(H)


def previous_states_product(h0: np.ndarray, hs: np.ndarray, d: np.ndarray) -> np.ndarray:
    """sum_t h_{t-1}^T d_t over all steps and batch rows: the recurrent weight gradient as one product.

    h0: (B, H) the state before step 1; hs: (T, B, H) h_1..h_T; d: (T, B, K), or a
    strided view of the first K columns of a wider array. Returns (H, K).
    """
    H = h0.shape[-1]
    out = h0.T @ d[0]
    if hs.shape[0] > 1:
        out += hs[:-1].reshape(-1, H).T @ d[1:].reshape(-1, d.shape[-1])
    return out
