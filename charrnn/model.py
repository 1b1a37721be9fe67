"""The character-level recurrent language model: parameters, loss, gradients, one inference step.

Per layer l and time step t (rows are batch entries, so the input comes before the weight):

    a_t = x_t Wxh + h_{t-1} Whh + bh,   h_t = f(a_t),   f = tanh or relu
    o_t = h_t Why + by  (top layer),    y_t = softmax(o_t)

Layer 0 reads the one-hot character x_t, so x_t Wxh is the row Wxh[id]; layer l > 0
reads h_t of layer l-1. The loss is the mean negative log-likelihood (nats/char) of
the next character over the unmasked positions.

Parameters live in one flat dict whose names are the checkpoint keys:
``layers.{i}.Wxh`` (D_in, H), ``layers.{i}.Whh`` (H, H), ``layers.{i}.bh`` (H,),
``Why`` (H, V), ``by`` (V,), with D_in = V for layer 0 and H above it. Gradients use
the same keys. The hidden state is one array (L, B, H).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .layers import (
    ACTIVATIONS,
    AffineCache,
    OneHotAffineCache,
    RNNCache,
    activate_,
    affine_backward,
    affine_forward,
    aligned_copy,
    empty_aligned,
    zeros_aligned,
    onehot_affine_backward,
    onehot_affine_forward,
    rnn_backward,
    rnn_forward,
    softmax_cross_entropy,
)

DTYPES = {"float32": np.float32, "float64": np.float64}

# Standard deviation of the layer-0 input weights (character embeddings); see init_params.
EMBED_STD = 1.0 / np.sqrt(3.0)


def param_shapes(vocab_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in a fixed order (the checkpoint contract)."""
    V, H = vocab_size, hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(num_layers):
        shapes[f"layers.{i}.Wxh"] = (V if i == 0 else H, H)
        shapes[f"layers.{i}.Whh"] = (H, H)
        shapes[f"layers.{i}.bh"] = (H,)
    shapes["Why"] = (H, V)
    shapes["by"] = (V,)
    return shapes


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal (n, n) matrix, uniformly distributed (QR with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def init_params(
    vocab_size: int,
    hidden_size: int,
    num_layers: int = 1,
    activation: str = "tanh",
    rng: np.random.Generator | None = None,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """Initial parameters, each scale chosen for its role.

    - ``layers.0.Wxh`` ~ U(-1, 1), std 1/sqrt(3) ~ 0.58. A one-hot input selects one
      row, so each unit's input has fan-in 1, not V: a dense-layer scale such as
      U(+-1/sqrt(H)) (PyTorch's default, std 0.026 at H = 512) makes the character
      signal tiny next to the recurrent one, and learning starts slowly (measured with
      PyTorch at H = 512: val loss 1.82 after 1000 steps against 1.66 with std 0.58).
      Std 0.58 keeps the input term at about a third of the unit variance, so tanh
      stays in its responsive range while the recurrent term carries the rest.
    - ``Whh``: random orthogonal for tanh (all singular values 1: gradients neither
      explode nor vanish through Whh at the start); the identity for relu, as in the
      IRNN (Le, Jaitly & Hinton 2015), so that a relu state is carried unchanged until
      the inputs teach it otherwise.
    - ``layers.{i>0}.Wxh`` and ``Why``: N(0, 1/H), the fan-in (LeCun) scale for a dense
      input of H units of unit-order magnitude.
    - biases: zero.

    All draws come from ``rng`` (a seeded numpy Generator), in the order of
    `param_shapes`, in float64, then cast: the same seed gives the same model in
    either dtype.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    H = hidden_size
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(vocab_size, hidden_size, num_layers).items():
        if name == "layers.0.Wxh":
            w = rng.uniform(-1.0, 1.0, size=shape)
        elif name.endswith("Whh"):
            w = _orthogonal(H, rng) if activation == "tanh" else np.eye(H)
        elif name.endswith("Wxh") or name == "Why":
            w = rng.standard_normal(shape) / np.sqrt(H)
        else:  # biases
            w = np.zeros(shape)
        params[name] = aligned_copy(w, dtype)
    return params


class ModelCache(NamedTuple):
    """What `CharRNN.forward_loss` keeps for `CharRNN.backward`."""

    proj: list[OneHotAffineCache | AffineCache]  # per layer: the one-hot lookup (layer 0), dense above
    rnn: list[RNNCache]  # per layer
    out: AffineCache  # the output projection
    dlogits: np.ndarray  # (T*B, V) gradient of the mean loss with respect to the logits


class CharRNN:
    """A stacked vanilla RNN over characters, trained by truncated BPTT.

    >>> model = CharRNN(vocab_size=65, hidden_size=128)
    >>> loss, grads, h = model.loss_and_grads(x, y)          # x, y: (B, T) int ids
    >>> loss, grads, h = model.loss_and_grads(x2, y2, h0=h)  # next window, state carried
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int = 1,
        activation: str = "tanh",
        seed: int = 0,
        dtype=np.float32,
        params: dict[str, np.ndarray] | None = None,
    ):
        for label, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.activation = activation
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        shapes = param_shapes(self.vocab_size, self.hidden_size, self.num_layers)
        if params is None:
            params = init_params(vocab_size, hidden_size, num_layers, activation, np.random.default_rng(seed), self.dtype)
        else:
            if set(params) != set(shapes):
                missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
                raise ValueError(f"parameter names do not match the architecture (missing {missing}, unexpected {extra})")
            for name, shape in shapes.items():
                if params[name].shape != shape:
                    raise ValueError(f"parameter {name} has shape {params[name].shape}, expected {shape}")
            params = {name: aligned_copy(params[name], self.dtype) for name in shapes}
        self.params: dict[str, np.ndarray] = params
        self._buffers: dict[str, np.ndarray] = {}  # see _buffer

    @classmethod
    def from_params(cls, params: dict[str, np.ndarray], activation: str = "tanh") -> "CharRNN":
        """Rebuild a model around existing parameters; sizes and dtype are read from them."""
        if "Why" not in params:
            raise ValueError("parameters lack 'Why'")
        H, V = params["Why"].shape
        L = sum(1 for name in params if name.startswith("layers.") and name.endswith(".Whh"))
        return cls(V, H, L, activation, dtype=params["Why"].dtype, params=params)

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def initial_state(self, batch_size: int) -> np.ndarray:
        """The zero state, (L, B, H)."""
        return zeros_aligned((self.num_layers, batch_size, self.hidden_size), self.dtype)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A work array kept from call to call (reallocated when its shape changes).

        `loss_and_grads` and `loss` run on these: their caches never leave the call, so
        the (T, B, H) activations and gradients need not be fresh memory each step, and
        reused memory is warm (+1-6% per step in interleaved runs, most at H512). Hence
        one model must not run two of those calls at once from two threads.
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = empty_aligned(shape, self.dtype)
        return buf

    # ------------------------------------------------------------------ checks

    def _check_ids(self, name: str, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must be a 2-D integer array (B, T), got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{name} holds ids outside [0, {self.vocab_size})")
        return ids

    def _check_state(self, h0, batch_size: int) -> np.ndarray:
        if h0 is None:
            return self.initial_state(batch_size)
        h0 = np.asarray(h0, dtype=self.dtype)
        expected = (self.num_layers, batch_size, self.hidden_size)
        if h0.shape != expected:
            raise ValueError(f"h0 must have shape (L, B, H) = {expected}, got {h0.shape}")
        return h0

    # ----------------------------------------------------------------- forward

    def _hidden_states(self, ids_tb: np.ndarray, h0: np.ndarray, buffer=None):
        """Run every layer over time-major ids (T, B). Returns the top hs (T, B, H) and caches.

        buffer: None for fresh arrays, or `_buffer` to run on the model's work arrays.
        """
        p = self.params
        proj_caches, rnn_caches = [], []
        hs = None
        T, B = ids_tb.shape
        for i in range(self.num_layers):
            Wxh, Whh, bh = p[f"layers.{i}.Wxh"], p[f"layers.{i}.Whh"], p[f"layers.{i}.bh"]
            out = None if buffer is None else buffer(f"hs.{i}", (T, B, self.hidden_size))
            if i == 0:
                a, pc = onehot_affine_forward(ids_tb, Wxh, bh, out=out)  # (T, B, H)
            else:
                a, pc = affine_forward(hs, Wxh, bh, out=out)  # (T, B, H)
            hs, rc = rnn_forward(a, h0[i], Whh, self.activation)  # (T, B, H)
            proj_caches.append(pc)
            rnn_caches.append(rc)
        return hs, proj_caches, rnn_caches

    def forward(self, x, h0=None):
        """Logits for every position of x (B, T): returns logits (B, T, V) and the last state (L, B, H)."""
        x = self._check_ids("x", x)
        B, T = x.shape
        h0 = self._check_state(h0, B)
        hs, _, rnn_caches = self._hidden_states(np.ascontiguousarray(x.T), h0)
        logits, _ = affine_forward(hs, self.params["Why"], self.params["by"])  # (T, B, V)
        h_last = np.stack([c.hs[-1] for c in rnn_caches]) if T else h0.copy()
        return logits.transpose(1, 0, 2), h_last

    def step(self, ids, h):
        """One time step for a batch of ids (B,) from state h (L, B, H): returns logits (B, V), new h (L, B, H).

        The lean inference path (no caches, no per-call validation beyond shapes):
        the sampler calls it once per generated character.
        """
        ids = np.asarray(ids).reshape(-1)
        if h.shape != (self.num_layers, ids.shape[0], self.hidden_size):
            raise ValueError(f"h must have shape (L, B, H) = {(self.num_layers, ids.shape[0], self.hidden_size)}")
        p = self.params
        h_new = np.empty(h.shape, dtype=self.dtype)
        x = None
        for i in range(self.num_layers):
            a = h_new[i]  # (B, H), written in place
            np.matmul(h[i], p[f"layers.{i}.Whh"], out=a)
            if i == 0:
                a += p["layers.0.Wxh"][ids]
            else:
                a += x @ p[f"layers.{i}.Wxh"]
            a += p[f"layers.{i}.bh"]
            x = activate_(a, self.activation)
        logits = x @ p["Why"]  # (B, V)
        logits += p["by"]
        return logits, h_new

    def stepper(self, h) -> "Stepper":
        """A `Stepper` continuing from state h (L, K, H): the fast path for generating text."""
        return Stepper(self, h)

    def forward_loss(self, x, y, h0=None, mask=None):
        """Mean NLL of y given x, and everything `backward` needs. Returns (loss, cache, h_last)."""
        return self._forward_loss(x, y, h0, mask)

    def _forward_loss(self, x, y, h0=None, mask=None, buffer=None):
        x, y = self._check_ids("x", x), self._check_ids("y", y)
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
        B, T = x.shape
        if T == 0 or B == 0:
            raise ValueError("x must hold at least one position")
        h0 = self._check_state(h0, B)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != x.shape:
                raise ValueError(f"mask must have the shape of x {x.shape}, got {mask.shape}")
            mask = mask.T.reshape(-1)  # (T*B,) time-major like the logits
        hs, proj_caches, rnn_caches = self._hidden_states(np.ascontiguousarray(x.T), h0, buffer)
        V = self.vocab_size
        logits = dlogits = None
        if buffer is not None:
            logits, dlogits = buffer("logits", (T, B, V)), buffer("dlogits", (T * B, V))
        logits, out_cache = affine_forward(hs, self.params["Why"], self.params["by"], out=logits)  # (T, B, V)
        loss, dlogits = softmax_cross_entropy(logits.reshape(T * B, V), y.T.reshape(-1), mask, out=dlogits)
        h_last = np.stack([c.hs[-1] for c in rnn_caches])  # (L, B, H), a copy
        return loss, ModelCache(proj_caches, rnn_caches, out_cache, dlogits), h_last

    # ---------------------------------------------------------------- backward

    def backward(self, cache: ModelCache):
        """Gradients of the loss of `forward_loss`: (grads keyed like params, dh0 (L, B, H))."""
        return self._backward(cache)

    def _backward(self, cache: ModelCache, buffer=None):
        grads: dict[str, np.ndarray] = {}
        T, B, H = cache.rnn[0].hs.shape
        dx = None if buffer is None else buffer("dhs", (T, B, H))
        dhs, grads["Why"], grads["by"] = affine_backward(cache.dlogits.reshape(T, B, -1), cache.out, out=dx)
        dh0 = np.empty((self.num_layers, B, self.hidden_size), dtype=self.dtype)
        for i in range(self.num_layers - 1, -1, -1):
            da, dh0[i], grads[f"layers.{i}.Whh"] = rnn_backward(dhs, cache.rnn[i])  # da is dhs, overwritten
            if i == 0:
                grads["layers.0.Wxh"], grads["layers.0.bh"] = onehot_affine_backward(da, cache.proj[0])
            else:
                # dhs of the layer below: not da's buffer, which is read while this is written
                dx = None if buffer is None else buffer(f"dhs.{i - 1}", (T, B, H))
                dhs, grads[f"layers.{i}.Wxh"], grads[f"layers.{i}.bh"] = affine_backward(da, cache.proj[i], out=dx)
        return {name: grads[name] for name in self.params}, dh0

    def loss_and_grads(self, x, y, h0=None, mask=None):
        """Loss (nats/char), gradients (dict keyed like params) and the last state (L, B, H).

        x, y: (B, T) integer ids, y the next character of x; h0: (L, B, H) or None for
        zeros; mask: (B, T) of 0/1 or None. Pass the returned state as the next
        window's h0 to carry it across windows (truncated BPTT).
        """
        loss, cache, h_last = self._forward_loss(x, y, h0, mask, self._buffer)
        grads, _ = self._backward(cache, self._buffer)
        return loss, grads, h_last

    def loss(self, x, y, h0=None, mask=None):
        """Loss and last state without gradients (evaluation)."""
        loss, _, h_last = self._forward_loss(x, y, h0, mask, self._buffer)
        return loss, h_last


class Stepper:
    """Inference one character at a time for K sequences, one matrix product per layer per step.

    ``CharRNN.step`` multiplies each new state twice: h_t Whh (for step t+1) and h_t
    times the weights above it (the next layer's Wxh, or Why). Here both are one
    product, [h_t, 1] @ [[Whh, W_above], [bh, b_above]], with the biases in an extra
    row so that they cost nothing: a one-layer step is then one (H+1, H+V)
    matrix-vector product (11.5 us of the ~16 us per sampled character at hidden 512), a row
    lookup, an add and the activation. Same model, same numbers as ``step`` up to
    float rounding.

    >>> s = model.stepper(h)              # h: (L, K, H), e.g. after the prime
    >>> logits = s.feed(ids)              # ids (K,) -> logits (K, V) of the next character

    The returned logits are a view into the stepper's buffer, valid until the next feed.
    """

    def __init__(self, model: CharRNN, h: np.ndarray):
        p, L, H = model.params, model.num_layers, model.hidden_size
        if h.ndim != 3 or h.shape[0] != L or h.shape[2] != H:
            raise ValueError(f"h must have shape (L, K, H) with L = {L}, H = {H}, got {h.shape}")
        K, dtype = h.shape[1], model.dtype
        # f(a, out=a) as one C-level call (activate_'s Python dispatch is ~5% of a sampled character)
        self.f = np.tanh if model.activation == "tanh" else functools.partial(np.maximum, 0)
        # (V, H) x_t Wxh for a one-hot x_t: a row (bh is in the product). A copy, like the fused
        # weights: a stepper is a snapshot of the model, unaffected by later parameter updates
        self.embed = aligned_copy(p["layers.0.Wxh"])
        self.K = K
        self.layers = []
        Kp = -(-(H + 1) // 16) * 16  # [h, 1] padded with zeros to whole 64-byte lines: rows stay aligned
        for i in range(L):
            top = i == L - 1
            W_above = p["Why"] if top else p[f"layers.{i + 1}.Wxh"]  # (H, D) with D = V or H
            b_above = p["by"] if top else np.zeros(H, dtype)  # a layer's bh rides on its own Whh block
            # (Kp, H+D): rows [Whh, W_above], then [bh, b_above], then zeros. Stored transposed
            # and 64-byte aligned: the matrix-vector product runs ~15% faster each way
            W = zeros_aligned((H + W_above.shape[1], Kp), dtype).T
            W[:H, :H], W[:H, H:] = p[f"layers.{i}.Whh"], W_above
            W[H, :H], W[H, H:] = p[f"layers.{i}.bh"], b_above
            hbuf = zeros_aligned((K, Kp), dtype)  # (K, Kp): [h_t, 1, 0...]; the 1 and the zeros stay
            hbuf[:, :H], hbuf[:, H] = h[i], 1
            z = empty_aligned((K, W.shape[1]), dtype)  # (K, H+D): [h Whh + bh, h W_above + b_above]
            np.dot(hbuf, W, out=z)
            # views fixed once: (full [h, 1] buffer, its h part, weights, product, its two parts)
            self.layers.append((hbuf, hbuf[:, :H], W, z, z[:, :H], z[:, H:]))
        # the same buffers as 1-D views of their first row, for feed_one
        self.single = [(hb[0], h[0], W, z[0], rec[0], above[0]) for hb, h, W, z, rec, above in self.layers]

    def feed(self, ids) -> np.ndarray:
        """Advance every sequence by one character, ids (K,); returns the logits (K, V) that follow."""
        if np.shape(ids) != (self.K,):
            raise ValueError(f"ids must have shape ({self.K},), got {np.shape(ids)}")
        x = self.embed[ids]  # (K, H) x_t Wxh of layer 0
        for hbuf, h, W, z, recurrent, above in self.layers:
            np.add(recurrent, x, out=h)  # a_t = h_{t-1} Whh + bh + x_t Wxh, written where h_t goes
            self.f(h, out=h)
            np.dot(hbuf, W, out=z)
            x = above  # the next layer's input term (with its bias folded in its own Whh row), or the logits
        return x

    def feed_one(self, c: int) -> np.ndarray:
        """`feed` for a single sequence (K = 1) and an int id; returns logits (V,).

        The same arithmetic on 1-D views: a plain row lookup instead of fancy
        indexing, and a matrix-vector product; what the sampler's loop runs.
        """
        if self.K != 1:
            raise ValueError(f"feed_one advances a single sequence; this stepper holds {self.K}")
        x, f = self.embed[c], self.f  # (H,)
        for hbuf, h, W, z, recurrent, above in self.single:
            np.add(recurrent, x, out=h)
            f(h, out=h)
            np.dot(hbuf, W, out=z)
            x = above
        return x

    @property
    def h(self) -> np.ndarray:
        """The current state (L, K, H), a copy."""
        return np.stack([layer[1] for layer in self.layers])
