"""The character-level recurrent language model: a stack of cells, the output layer, dropout, the loss.

Per time step t, rows being batch entries (so the input comes before the weight):

    layer 0:      a_t = x_t Wxh + bh (a row lookup: x_t is one-hot), then the cell's recurrence -> h_t
    layer l > 0:  the same on the (dropped-out) h_t of layer l-1
    output:       o_t = d(h_t) Why + by,   y_t = softmax(o_t)

The cell (charrnn.cells: rnn, lstm or gru) is the only part that differs; the
model knows it through its interface and never by name. The loss is the mean
negative log-likelihood (nats/char) of the next character over the unmasked
positions.

Parameters live in one flat dict whose names are the checkpoint keys:
``layers.{i}.Wxh`` (D_in, G*H), ``layers.{i}.Whh`` (H, G*H), ``layers.{i}.bh``
(G*H,) and any extra recurrent parameter of the cell (GRU: ``layers.{i}.bhn``
(H,)), then ``Why`` (H, V), ``by`` (V,); D_in = V for layer 0 and H above it, G =
1, 4, 3 for rnn, lstm, gru. Gradients use the same keys. The state is one array
(L, B, S), S = H for rnn and gru and 2H for lstm ([..., :H] is h, [..., H:] is c).

Regularisation, in training only: when a random generator is passed to the
training calls. Without one (evaluation, sampling) nothing is dropped. Every mask is
inverted (kept entries are scaled by 1/(1-p)) and drawn from that generator, in this
order per window: the embedding mask, then per layer its weight-drop mask, then its
dropout mask. An option that is off draws nothing, so the masks of the others do not
move.

    dropout p                 each layer's output sequence, the input of the layer above and of the
                              output layer: one mask per step, (T, B, H) (Srivastava et al. 2014)
    variational_dropout       the same p, but one mask per window shared by its T steps, (1, B, H):
                              "locked" dropout (Gal & Ghahramani 2016; Merity et al. 2018, AWD-LSTM)
    weight_drop p             DropConnect on each layer's recurrent matrix: Whh * M, M (H, G*H)
                              one mask per window for every step and stream (Wan et al. 2013; AWD-LSTM)
    embed_dropout p           whole characters: row v of layer 0's Wxh (character v's embedding)
                              dropped for the window, m (V,) (Gal & Ghahramani 2016; AWD-LSTM)

The gradients follow the masks: dWhh = dWhh_eff * M, dWxh_0 = dWxh_eff * m[:, None].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .backend import CPU, backend_of, get_backend, to_host
from .cells import make_cell
from .layers import (
    AffineCache,
    OneHotAffineCache,
    affine_backward,
    affine_forward,
    aligned_copy,
    onehot_affine_backward,
    onehot_affine_forward,
    softmax_cross_entropy,
    zeros_aligned,
)

DTYPES = {"float32": np.float32, "float64": np.float64}

# Standard deviation of the layer-0 input weights (character embeddings): U(-1, 1), see cells.base.input_weights.
EMBED_STD = 1.0 / np.sqrt(3.0)


def param_shapes(vocab_size: int, hidden_size: int, num_layers: int, cell: str = "rnn") -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in a fixed order (the checkpoint contract)."""
    V, H = vocab_size, hidden_size
    c = make_cell(cell) if isinstance(cell, str) else cell
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(num_layers):
        for local, shape in c.param_shapes(V if i == 0 else H, H).items():
            shapes[f"layers.{i}.{local}"] = shape
    shapes["Why"] = (H, V)
    shapes["by"] = (V,)
    return shapes


def init_params(
    vocab_size: int,
    hidden_size: int,
    num_layers: int = 1,
    cell: str = "rnn",
    activation: str = "tanh",
    rng: np.random.Generator | None = None,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """Initial parameters: each layer's from its cell (`Cell.init_params`), then Why ~ N(0, 1/H), by = 0.

    The layer-0 input rows are character embeddings U(-1, 1) and the inputs above
    layer 0 are N(0, 1/H) for every cell (`cells.base.input_weights` says why); the
    recurrent weights and biases are the cell's choice (its docstring says what and
    why). All draws come from ``rng`` (a seeded numpy Generator), layer by layer,
    in float64, then cast: the same seed gives the same model in either dtype, and
    the rnn cell draws exactly as 0.1.0 did.
    """
    c = make_cell(cell, activation)
    rng = np.random.default_rng(0) if rng is None else rng
    V, H = vocab_size, hidden_size
    params: dict[str, np.ndarray] = {}
    for i in range(num_layers):
        for local, w in c.init_params(V if i == 0 else H, H, rng, embedding=i == 0).items():
            params[f"layers.{i}.{local}"] = aligned_copy(w, dtype)
    params["Why"] = aligned_copy(rng.standard_normal((H, V)) / np.sqrt(H), dtype)
    params["by"] = zeros_aligned(V, dtype)
    return params


class ModelCache(NamedTuple):
    """What `CharRNN.forward_loss` keeps for `CharRNN.backward`."""

    proj: list[OneHotAffineCache | AffineCache]  # per layer: the one-hot lookup (layer 0), dense above
    cells: list  # per layer: the cell's cache
    masks: list[np.ndarray | None]  # per layer: the dropout multipliers (T or 1, B, H) (0 or 1/(1-p)), or None
    weight_masks: list[np.ndarray | None]  # per layer: the weight-drop multipliers of Whh (H, G*H), or None
    embed_mask: np.ndarray | None  # the embedding-dropout multipliers of layer 0's rows (V, 1), or None
    out: AffineCache  # the output projection
    dlogits: np.ndarray  # (T*B, V) gradient of the mean loss with respect to the logits


class CharRNN:
    """A stack of recurrent cells over characters, trained by truncated BPTT.

    >>> model = CharRNN(vocab_size=65, hidden_size=128, cell="lstm", dropout=0.25)
    >>> loss, grads, h = model.loss_and_grads(x, y, rng=rng)          # x, y: (B, T) int ids
    >>> loss, grads, h = model.loss_and_grads(x2, y2, h0=h, rng=rng)  # next window, state carried
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: str = "rnn",
        activation: str = "tanh",
        dropout: float = 0.0,
        seed: int = 0,
        dtype=np.float32,
        params: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
        *,
        variational_dropout: bool = False,
        weight_drop: float = 0.0,
        embed_dropout: float = 0.0,
    ):
        for label, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        for label, value in (("dropout", dropout), ("weight_drop", weight_drop), ("embed_dropout", embed_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"{label} must lie in [0, 1), got {value!r}")
        self.cell = make_cell(cell, activation)  # ValueError for an unknown cell or a wrong activation
        self.backend = be = get_backend(device)  # DeviceError (one line) without CuPy or a GPU
        self.device = be.name
        self.xp = be.xp
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.activation = activation
        self.dropout = float(dropout)
        self.variational_dropout = bool(variational_dropout)
        self.weight_drop = float(weight_drop)
        self.embed_dropout = float(embed_dropout)
        self.state_size = self.cell.state_size(self.hidden_size)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        shapes = param_shapes(self.vocab_size, self.hidden_size, self.num_layers, self.cell)
        if params is None:
            rng = np.random.default_rng(seed)
            params = init_params(vocab_size, hidden_size, num_layers, cell, activation, rng, self.dtype)
            params = {name: be.asarray(p) for name, p in params.items()}  # drawn on the host, then uploaded
        else:
            if set(params) != set(shapes):
                missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
                raise ValueError(
                    f"parameter names do not match the architecture (missing {missing}, unexpected {extra})"
                )
            for name, shape in shapes.items():
                if params[name].shape != shape:
                    raise ValueError(f"parameter {name} has shape {params[name].shape}, expected {shape}")
            params = {name: be.copy(params[name], self.dtype) for name in shapes}
        self.params: dict[str, np.ndarray] = params
        self._buffers: dict[str, np.ndarray] = {}  # see _buffer

    @classmethod
    def from_params(
        cls,
        params: dict[str, np.ndarray],
        cell: str = "rnn",
        activation: str = "tanh",
        dropout: float = 0.0,
        device: str = "cpu",
        **regularization,
    ) -> CharRNN:
        """Rebuild a model around existing parameters (host or device arrays) on a device; sizes and dtype
        are read from them. regularization: the constructor's variational_dropout, weight_drop, embed_dropout."""
        if "Why" not in params:
            raise ValueError("parameters lack 'Why'")
        H, V = params["Why"].shape
        L = sum(1 for name in params if name.startswith("layers.") and name.endswith(".Whh"))
        return cls(V, H, L, cell, activation, dropout, dtype=params["Why"].dtype, params=params, device=device,
                   **regularization)  # fmt: skip

    def to(self, device: str) -> CharRNN:
        """This model on another device (a copy; the same model if it is there already)."""
        if get_backend(device) is self.backend:
            return self
        return CharRNN.from_params(self.host_params(), self.cell.name, self.activation, self.dropout, device,
                                   **self.regularization())  # fmt: skip

    def host_params(self) -> dict[str, np.ndarray]:
        """The parameters as numpy arrays (what checkpoints hold), whatever the device."""
        return {name: to_host(p) for name, p in self.params.items()}

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def layer_params(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's parameters under the cell's own names (Wxh, Whh, bh, ...)."""
        prefix = f"layers.{i}."
        return {name[len(prefix) :]: p for name, p in self.params.items() if name.startswith(prefix)}

    def initial_state(self, batch_size: int) -> np.ndarray:
        """The zero state, (L, B, S)."""
        return self.backend.zeros((self.num_layers, batch_size, self.state_size), self.dtype)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A work array kept from call to call (reallocated when its shape changes).

        `loss_and_grads` and `loss` run on these: their caches never leave the call, so
        the (T, B, H) activations and gradients need not be fresh memory each step, and
        reused memory is warm (+1-6% per step in interleaved runs, most at H512). Hence
        one model must not run two of those calls at once from two threads.
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = self.backend.empty(shape, self.dtype)
        return buf

    # ------------------------------------------------------------------ checks

    def _check_ids(self, name: str, ids) -> np.ndarray:
        """ids checked on the host (a device's layers do not check them: see backend.check_ids)."""
        ids = np.asarray(to_host(ids))
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must be a 2-D integer array (B, T), got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{name} holds ids outside [0, {self.vocab_size})")
        return ids

    def _check_state(self, h0, batch_size: int) -> np.ndarray:
        if h0 is None:
            return self.initial_state(batch_size)
        h0 = self.backend.asarray(h0, dtype=self.dtype)  # a state from the host (a checkpoint) goes up
        expected = (self.num_layers, batch_size, self.state_size)
        if h0.shape != expected:
            raise ValueError(f"h0 must have shape (L, B, S) = {expected}, got {h0.shape}")
        return h0

    # ----------------------------------------------------------------- forward

    def regularization(self) -> dict:
        """The training-only settings besides dropout, as keyword arguments of the constructor."""
        return {"variational_dropout": self.variational_dropout, "weight_drop": self.weight_drop,
                "embed_dropout": self.embed_dropout}  # fmt: skip

    def _hidden_states(self, ids_tb: np.ndarray, h0: np.ndarray, buffer=None, rng=None):
        """Run every layer over time-major ids (T, B).

        Returns the top layer's output (T, B, H) (dropped out if rng is given and
        dropout > 0), the last state (L, B, S), the projection caches, cell caches
        and dropout masks per layer, the weight-drop masks per layer and the embedding
        mask (see the module doc; None where an option is off or rng is None).
        buffer: None for fresh arrays, or `_buffer` to run on the model's work arrays.
        """
        T, B = ids_tb.shape
        ids_tb = self.backend.asarray(ids_tb)  # up as a small integer array (no copy on the CPU)
        H, GH = self.hidden_size, self.cell.gates * self.hidden_size
        be, xp = self.backend, self.xp
        train = rng is not None
        drop = self.dropout if train else 0.0
        embed_mask = None
        if train and self.embed_dropout > 0:  # (V, 1): a whole row, character v's embedding, per window
            embed_mask = dropout_mask(rng, (self.vocab_size, 1), self.embed_dropout, self.dtype, be=be)
        proj_caches, cell_caches, masks, weight_masks, last = [], [], [], [], []
        x = None
        for i in range(self.num_layers):
            lp = self.layer_params(i)
            cell_buffer = _layer_buffer(buffer, i)
            out = None if buffer is None else buffer(f"a.{i}", (T, B, GH))
            if i == 0:
                W0 = lp["Wxh"]
                if embed_mask is not None:
                    out_w = None if buffer is None else buffer("embed_dropped.Wxh", W0.shape)
                    W0 = xp.multiply(W0, embed_mask, out=out_w)
                a, pc = onehot_affine_forward(ids_tb, W0, lp["bh"], out=out)  # (T, B, G*H)
            else:
                a, pc = affine_forward(x, lp["Wxh"], lp["bh"], out=out)  # (T, B, G*H)
            weight_mask = None
            if train and self.weight_drop > 0:  # DropConnect: the cell runs on Whh * M for this window
                shape = lp["Whh"].shape
                weight_mask = None if buffer is None else buffer(f"wmask.{i}", shape)
                weight_mask = dropout_mask(rng, shape, self.weight_drop, self.dtype, out=weight_mask, be=be)
                out_w = None if buffer is None else buffer(f"weight_dropped.{i}", shape)
                lp = {**lp, "Whh": xp.multiply(lp["Whh"], weight_mask, out=out_w)}
            hs, s_last, cc = self.cell.forward(a, h0[i], lp, cell_buffer)  # (T, B, H), (B, S)
            mask = None
            if drop > 0:
                shape = (1, B, H) if self.variational_dropout else (T, B, H)  # one mask per window, or per step
                mask = None if buffer is None else buffer(f"mask.{i}", shape)
                mask = dropout_mask(rng, shape, drop, self.dtype, out=mask, be=be)
                shape = (T, B, H)
                dropped = be.empty(shape, self.dtype) if buffer is None else buffer(f"drop.{i}", shape)
                hs = xp.multiply(hs, mask, out=dropped)
            proj_caches.append(pc)
            cell_caches.append(cc)
            masks.append(mask)
            weight_masks.append(weight_mask)
            last.append(s_last)
            x = hs
        h_last = xp.stack(last) if T else h0.copy()  # (L, B, S), a copy
        return x, h_last, proj_caches, cell_caches, masks, weight_masks, embed_mask

    def forward(self, x, h0=None):
        """Logits for every position of x (B, T): returns logits (B, T, V) and the last state (L, B, S)."""
        x = self._check_ids("x", x)
        B, _T = x.shape
        h0 = self._check_state(h0, B)
        hs, h_last, *_ = self._hidden_states(np.ascontiguousarray(x.T), h0)
        logits, _ = affine_forward(hs, self.params["Why"], self.params["by"])  # (T, B, V)
        return logits.transpose(1, 0, 2), h_last

    def step(self, ids, h):
        """One time step for a batch of ids (B,) from state h (L, B, S): returns logits (B, V), new h (L, B, S).

        The plain inference path (no caches); the sampler runs the fused `Stepper`,
        which computes the same.
        """
        ids = np.asarray(to_host(ids)).reshape(-1)
        # checked here, on the host, on either device: CuPy's indexing does not range-check
        CPU.check_ids(ids, self.vocab_size, "ids")
        ids = self.backend.asarray(ids)
        if h.shape != (self.num_layers, ids.shape[0], self.state_size):
            raise ValueError(f"h must have shape (L, B, S) = {(self.num_layers, ids.shape[0], self.state_size)}")
        H = self.hidden_size
        h = self.backend.asarray(h)
        h_new = self.xp.array(h, dtype=self.dtype)  # each layer's state is updated in place
        x = None
        for i in range(self.num_layers):
            lp = self.layer_params(i)
            b_in, b_rec = self.cell.split_bias(lp)
            ax = (lp["Wxh"][ids] if i == 0 else x @ lp["Wxh"]) + b_in  # (B, G*H)
            v = h[i][:, :H] @ lp["Whh"] + b_rec  # (B, G*H)
            self.cell.step_fn(self.xp)(ax, v, h_new[i][:, :H], h_new[i][:, H:])
            x = h_new[i][:, :H]
        logits = x @ self.params["Why"]  # (B, V)
        logits += self.params["by"]
        return logits, h_new

    def stepper(self, h) -> Stepper:
        """A `Stepper` continuing from state h (L, K, S): the fast path for generating text."""
        return Stepper(self, h)

    def forward_loss(self, x, y, h0=None, mask=None, rng=None):
        """Mean NLL of y given x, and everything `backward` needs. Returns (loss, cache, h_last).

        rng: the generator that draws the dropout masks (training); None drops nothing.
        """
        return self._forward_loss(x, y, h0, mask, rng=rng)

    def _forward_loss(self, x, y, h0=None, mask=None, buffer=None, rng=None):
        x, y = self._check_ids("x", x), self._check_ids("y", y)
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
        B, T = x.shape
        if T == 0 or B == 0:
            raise ValueError("x must hold at least one position")
        h0 = self._check_state(h0, B)
        if mask is not None:
            mask = np.asarray(to_host(mask))
            if mask.shape != x.shape:
                raise ValueError(f"mask must have the shape of x {x.shape}, got {mask.shape}")
            mask = self.backend.asarray(mask.T.reshape(-1))  # (T*B,) time-major like the logits
        hs, h_last, proj_caches, cell_caches, masks, weight_masks, embed_mask = self._hidden_states(
            np.ascontiguousarray(x.T), h0, buffer, rng
        )
        V = self.vocab_size
        logits = dlogits = None
        if buffer is not None:
            logits, dlogits = buffer("logits", (T, B, V)), buffer("dlogits", (T * B, V))
        logits, out_cache = affine_forward(hs, self.params["Why"], self.params["by"], out=logits)  # (T, B, V)
        targets = self.backend.asarray(y.T.reshape(-1))
        loss, dlogits = softmax_cross_entropy(logits.reshape(T * B, V), targets, mask, out=dlogits)
        cache = ModelCache(proj_caches, cell_caches, masks, weight_masks, embed_mask, out_cache, dlogits)
        return loss, cache, h_last

    # ---------------------------------------------------------------- backward

    def kink_pattern(self, cache: ModelCache) -> np.ndarray | None:
        """The cells' kink patterns (`BaseCell.kink_pattern`) of a forward pass, as one flat array, or None."""
        parts = [self.cell.kink_pattern(c) for c in cache.cells]
        if all(part is None for part in parts):
            return None
        return np.concatenate([np.ravel(to_host(part)) for part in parts if part is not None])

    def backward(self, cache: ModelCache):
        """Gradients of the loss of `forward_loss`: (grads keyed like params, dh0 (L, B, S))."""
        return self._backward(cache)

    def _backward(self, cache: ModelCache, buffer=None):
        grads: dict[str, np.ndarray] = {}
        T, B = cache.out.x.shape[:2]
        H = self.hidden_size
        dx = None if buffer is None else buffer("dhs", (T, B, H))
        dhs, grads["Why"], grads["by"] = affine_backward(cache.dlogits.reshape(T, B, -1), cache.out, out=dx)
        dh0 = self.xp.empty((self.num_layers, B, self.state_size), dtype=self.dtype)
        for i in range(self.num_layers - 1, -1, -1):
            if cache.masks[i] is not None:
                dhs *= cache.masks[i]  # through the dropout: the kept units, scaled
            cell_buffer = _layer_buffer(buffer, i)
            da, dh0[i], cell_grads = self.cell.backward(dhs, cache.cells[i], cell_buffer)  # dhs may be overwritten
            if cache.weight_masks[i] is not None:
                cell_grads["Whh"] *= cache.weight_masks[i]  # dWhh = dWhh_eff * M
            for local, g in cell_grads.items():
                grads[f"layers.{i}.{local}"] = g
            if i == 0:
                grads["layers.0.Wxh"], grads["layers.0.bh"] = onehot_affine_backward(da, cache.proj[0])
                if cache.embed_mask is not None:
                    grads["layers.0.Wxh"] *= cache.embed_mask  # a dropped character's row gets no gradient
            else:
                # dhs of the layer below: not da's buffer, which is read while this is written
                dx = None if buffer is None else buffer(f"dhs.{i - 1}", (T, B, H))
                dhs, grads[f"layers.{i}.Wxh"], grads[f"layers.{i}.bh"] = affine_backward(da, cache.proj[i], out=dx)
        return {name: grads[name] for name in self.params}, dh0

    def loss_and_grads(self, x, y, h0=None, mask=None, rng=None):
        """Loss (nats/char), gradients (dict keyed like params) and the last state (L, B, S).

        x, y: (B, T) integer ids, y the next character of x; h0: (L, B, S) or None for
        zeros; mask: (B, T) of 0/1 or None; rng: a numpy Generator that draws the
        dropout masks (training), or None for the network without dropout. Pass the
        returned state as the next window's h0 to carry it across windows (truncated BPTT).
        """
        loss, cache, h_last = self._forward_loss(x, y, h0, mask, self._buffer, rng)
        grads, _ = self._backward(cache, self._buffer)
        return loss, grads, h_last

    def loss(self, x, y, h0=None, mask=None):
        """Loss and last state without gradients and without dropout (evaluation)."""
        loss, _, h_last = self._forward_loss(x, y, h0, mask, self._buffer)
        return loss, h_last


def _layer_buffer(buffer, i: int):
    """Layer i's cell's work arrays, named apart from every other layer's; None stays None (fresh arrays)."""
    if buffer is None:
        return None
    return lambda name, shape: buffer(f"cell.{i}.{name}", shape)


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float, dtype, out=None, be=None) -> np.ndarray:
    """Inverted-dropout multipliers: 0 with probability p, else 1/(1-p), drawn from rng.

    The uniforms are drawn in float32 whatever the model's dtype, so a float32 and a
    float64 model with the same seed drop the same units, and so do a CPU and a GPU model: the
    draws are made on the host (from the run's generator) and go up. be: the backend of the
    result (default: out's, else the CPU).
    """
    be = be or (CPU if out is None else backend_of(out))
    u = be.asarray(rng.random(shape, dtype=np.float32))  # drawn on the host on every device, then uploaded
    out = be.empty(shape, dtype) if out is None else out
    be.xp.greater_equal(u, np.float32(p), out=out)  # 1.0 where kept
    out *= np.dtype(dtype).type(1.0 / (1.0 - p))
    return out


class Stepper:
    """Inference one character at a time for K sequences, one matrix product per layer per step.

    ``CharRNN.step`` multiplies each new h twice: h_t Whh (for step t+1) and h_t
    times the weights above it (the next layer's Wxh, or Why). Here both are one
    product, [h_t, 1] @ [[Whh, W_above], [b_rec, b_above]], with the biases in an
    extra row so that they cost nothing (b_rec and b_above from the cells'
    `split_bias`): a one-layer step is then one (H+1, G*H+V) matrix-vector product
    (11.5 us of the ~16 us per sampled character of a vanilla cell at hidden 512), a
    row lookup and the cell's `step_`. Same model, same numbers as ``step`` up to
    float rounding.

    >>> s = model.stepper(h)              # h: (L, K, S), e.g. after the prime
    >>> logits = s.feed(ids)              # ids (K,) -> logits (K, V) of the next character

    The returned logits are a numpy array on every device: on the CPU a view into the stepper's
    buffer, valid until the next feed; from a GPU a copy brought to the host (the state stays there).
    """

    def __init__(self, model: CharRNN, h: np.ndarray):
        p, L, H, S = model.params, model.num_layers, model.hidden_size, model.state_size
        if h.ndim != 3 or h.shape[0] != L or h.shape[2] != S:
            raise ValueError(f"h must have shape (L, K, S) with L = {L}, S = {S}, got {h.shape}")
        K, dtype, cell = h.shape[1], model.dtype, model.cell
        be = self.backend = model.backend
        h = be.asarray(h)
        GH = cell.gates * H
        self.step_ = cell.step_fn(be.xp)
        self.dot = be.xp.dot
        biases = [cell.split_bias(model.layer_params(i)) for i in range(L)]  # (b_in, b_rec) per layer
        # (V, G*H) x_t Wxh + b_in for a one-hot x_t: a row. A copy, like the fused weights: a
        # stepper is a snapshot of the model, unaffected by later parameter updates
        self.embed = be.copy(p["layers.0.Wxh"] + biases[0][0])
        self.K = K
        self.layers = []
        Kp = -(-(H + 1) // 16) * 16  # [h, 1] padded with zeros to whole 64-byte lines: rows stay aligned
        for i in range(L):
            top = i == L - 1
            W_above = p["Why"] if top else p[f"layers.{i + 1}.Wxh"]  # (H, D) with D = V or G*H
            b_above = p["by"] if top else biases[i + 1][0]
            # (Kp, G*H+D): rows [Whh, W_above], then [b_rec, b_above], then zeros. Stored transposed
            # and 64-byte aligned: the matrix-vector product runs ~15% faster each way
            W = be.zeros((GH + W_above.shape[1], Kp), dtype).T
            W[:H, :GH], W[:H, GH:] = p[f"layers.{i}.Whh"], W_above
            W[H, :GH], W[H, GH:] = biases[i][1], b_above
            hbuf = be.zeros((K, Kp), dtype)  # (K, Kp): [h_t, 1, 0...]; the 1 and the zeros stay
            hbuf[:, :H], hbuf[:, H] = h[i][:, :H], 1
            rest = be.copy(h[i][:, H:], dtype)  # (K, S-H): the rest of the state (lstm: c)
            z = be.empty((K, W.shape[1]), dtype)  # (K, G*H+D): [h Whh + b_rec, h W_above + b_above]
            be.xp.dot(hbuf, W, out=z)
            # views fixed once: (full [h, 1] buffer, its h part, the rest, weights, product, its two parts)
            self.layers.append((hbuf, hbuf[:, :H], rest, W, z, z[:, :GH], z[:, GH:]))
        # the same buffers as 1-D views of their first row, for feed_one
        self.single = [(hb[0], hh[0], r[0], W, z[0], rec[0], ab[0]) for hb, hh, r, W, z, rec, ab in self.layers]
        # the logits go to the host, where the sampler draws: on the CPU they are there (the one-row loop
        # pays nothing); from a GPU, feed and feed_one bring them down
        if not be.host:
            device_feed, device_feed_one = self.feed, self.feed_one
            self.feed = lambda ids: be.asnumpy(device_feed(ids))
            self.feed_one = lambda c: be.asnumpy(device_feed_one(c))

    def feed(self, ids) -> np.ndarray:
        """Advance every sequence by one character, ids (K,); returns the logits (K, V) that follow."""
        if np.shape(ids) != (self.K,):
            raise ValueError(f"ids must have shape ({self.K},), got {np.shape(ids)}")
        ids = np.asarray(to_host(ids))
        CPU.check_ids(ids, self.embed.shape[0], "ids")  # on the host: CuPy's indexing does not range-check
        x = self.embed[self.backend.asarray(ids)]  # (K, G*H) x_t Wxh + b_in of layer 0
        step_, dot = self.step_, self.dot
        for hbuf, h, rest, W, z, recurrent, above in self.layers:
            step_(x, recurrent, h, rest)  # the new state, written where the old one was
            dot(hbuf, W, out=z)
            x = above  # the next layer's input term (its b_in folded in), or the logits
        return x

    def feed_one(self, c: int) -> np.ndarray:
        """`feed` for a single sequence (K = 1) and an int id; returns logits (V,).

        The same arithmetic on 1-D views: a plain row lookup instead of fancy
        indexing, and a matrix-vector product; what the sampler's loop runs.
        """
        if self.K != 1:
            raise ValueError(f"feed_one advances a single sequence; this stepper holds {self.K}")
        x, step_, dot = self.embed[c], self.step_, self.dot  # (G*H,)
        for hbuf, h, rest, W, z, recurrent, above in self.single:
            step_(x, recurrent, h, rest)
            dot(hbuf, W, out=z)
            x = above
        return x

    @property
    def h(self) -> np.ndarray:
        """The current state (L, K, S), a copy."""
        xp = self.backend.xp
        return xp.stack([xp.concatenate([layer[1], layer[2]], axis=-1) for layer in self.layers])
