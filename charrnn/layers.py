"""Pure array layers shared by every cell: input projections, the loss, aligned arrays. No state, no I/O.

They compute with the backend of their arrays (charrnn/backend.py): numpy on the CPU, CuPy on a GPU.

The recurrences themselves live one per module in charrnn/cells.

Every layer is a pair of pure functions in the CS231n style:

    out, cache = <layer>_forward(inputs..., params...)
    grads      = <layer>_backward(dout, cache)   # one gradient per input, in argument order

Caches are small named tuples. Arrays are *time-major* inside the engine: a
sequence of hidden states is (T, B, H), so that the slice for one time step is a
contiguous (B, H) block, which is what the step-by-step recurrence and BLAS want.

Shape letters: T time, B batch, V vocabulary, D input features, H hidden units,
N = T * B rows when time and batch are flattened for one large matrix product.

Nothing here upcasts: float32 inputs give float32 outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .backend import backend_of


def one_hot(ids: np.ndarray, vocab_size: int, dtype=np.float32) -> np.ndarray:
    """Encode integer ids of any shape (...) as one-hot vectors of shape (..., V).

    The training path never builds this matrix (a one-hot row times a weight matrix
    is a row lookup, see `onehot_affine_forward`); it is the plain reference encoder,
    used by the tests to prove that the lookup is the same product.
    """
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
    out = np.zeros((*ids.shape, vocab_size), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


ALIGN = 64  # bytes: a cache line, and the width of an AVX-512 register


def empty_aligned(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    numpy's large allocations start 16 bytes past a page boundary. BLAS and numpy's
    SIMD loops run faster on cache-line-aligned data: alone, the (64, 512) x
    (512, 512) step product takes 155 us aligned against 164 us, (32, 128) x
    (128, 128) 7.9 against 10.2 us, and tanh, add and the sampler's matrix-vector
    product gain alike. The engine's parameters and work arrays are allocated here.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def zeros_aligned(shape, dtype=np.float32) -> np.ndarray:
    """`empty_aligned`, filled with zeros."""
    out = empty_aligned(shape, dtype)
    out.fill(0)
    return out


def aligned_copy(a, dtype=None) -> np.ndarray:
    """A C-contiguous, 64-byte-aligned copy of a (cast to dtype if given)."""
    a = np.asarray(a)
    out = empty_aligned(a.shape, a.dtype if dtype is None else dtype)
    out[...] = a
    return out


def _check_out(out: np.ndarray, shape: tuple, dtype, *inputs: np.ndarray) -> np.ndarray:
    """Check an `out=` array: C-contiguous (reshapes stay views), the exact shape and dtype, apart from the inputs."""
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, got {out.dtype} {out.shape}"
        )
    xp = backend_of(out).xp
    if any(xp.may_share_memory(out, a) for a in inputs):
        raise ValueError("out must not overlap the inputs")
    return out


# ---------------------------------------------------------------------------
# Input projections
# ---------------------------------------------------------------------------


class OneHotAffineCache(NamedTuple):
    ids: np.ndarray  # (...) integer ids that selected the rows
    W_shape: tuple[int, int]  # (V, H)


def onehot_affine_forward(ids: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray | None = None):
    """out = one_hot(ids) @ W + b, computed as a row lookup.

    ids: (...) integers in [0, V); W: (V, H); b: (H,). Returns out (..., H), written
    into `out` if given (a C-contiguous array of that shape and W's dtype).
    """
    be = backend_of(W)
    table = W + b  # (V, H): the bias added to the V rows, then one gather pass
    shape = (*ids.shape, W.shape[1])
    out = be.empty(shape, table.dtype) if out is None else _check_out(out, shape, table.dtype, W)
    be.check_ids(ids, W.shape[0], "ids")
    be.take_rows(table, ids, out)
    return out, OneHotAffineCache(ids, W.shape)


# Up to this vocabulary size the embedding gradient is a matrix product with the
# one-hot selector; above it, a sort and a sum per character (see onehot_affine_backward).
PRODUCT_MAX_VOCAB = 96


def onehot_affine_backward(dout: np.ndarray, cache: OneHotAffineCache):
    """Gradients of `onehot_affine_forward` with respect to (W, b).

    dout: (..., H). The ids carry no gradient. dW is a scatter-add of the rows of
    dout into the rows their ids selected: row v of dW is the sum of dout over every
    position whose input was character v, that is one_hot(ids)^T @ dout. Two ways:

    - V <= PRODUCT_MAX_VOCAB: that product, (V, N) x (N, H). It spends V times the
      additions needed, yet at V = 65 a training step runs 0-5% faster with it than
      with the sort below (interleaved runs, H 128-512): one streaming pass over
      dout instead of a gather of it.
    - larger V (CJK text, emoji): the product's cost grows with V (alone, at V = 128
      it already takes 1.5-1.8x the sort's time), so the positions are sorted by id
      and each run of equal ids is summed, ~N * H additions whatever V is.

    np.add.at and np.add.reduceat are both far slower. The forward pass stays a row lookup.
    """
    xp = backend_of(dout).xp
    H = dout.shape[-1]
    V = cache.W_shape[0]
    d2 = dout.reshape(-1, H)  # (N, H)
    ids = cache.ids.reshape(-1)  # (N,)
    if V <= PRODUCT_MAX_VOCAB:
        selector = xp.zeros((V, ids.size), dtype=dout.dtype)  # (V, N) one_hot(ids)^T
        selector[ids, xp.arange(ids.size)] = 1
        dW = selector @ d2  # (V, H)
    else:
        dW = xp.zeros((V, H), dtype=dout.dtype)
        if ids.size:
            order = xp.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            first = xp.ones(1, dtype=bool)
            starts = xp.flatnonzero(xp.concatenate((first, sorted_ids[1:] != sorted_ids[:-1])))
            ends = xp.concatenate((starts[1:], xp.full(1, ids.size, dtype=starts.dtype)))
            rows = d2[order]  # (N, H) grouped by character
            for v, start, end in zip(sorted_ids[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
                rows[start:end].sum(axis=0, out=dW[v])  # an int index: dW[v] is a view on either device
    db = dW.sum(axis=0)  # every position adds its row to exactly one row of dW
    return dW, db


class AffineCache(NamedTuple):
    x: np.ndarray  # (..., D)
    W: np.ndarray  # (D, H)


def affine_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray | None = None):
    """out = x @ W + b over all leading axes at once (one matrix product of N rows).

    x: (..., D); W: (D, H); b: (H,). Returns out (..., H), written into `out` if given
    (C-contiguous, that shape, W's dtype).
    """
    be = backend_of(W)
    D, H = W.shape
    shape = (*x.shape[:-1], H)
    dtype = np.result_type(x.dtype, W.dtype)
    out = be.empty(shape, dtype) if out is None else _check_out(out, shape, dtype, x, W, b)
    o2 = out.reshape(-1, H)  # (N, H), a view
    be.xp.matmul(x.reshape(-1, D), W, out=o2)
    o2 += b
    return out, AffineCache(x, W)


def affine_backward(dout: np.ndarray, cache: AffineCache, out: np.ndarray | None = None):
    """Gradients of `affine_forward` with respect to (x, W, b). dout: (..., H).

    dx is written into `out` if given (C-contiguous, the shape of x).
    """
    x, W = cache
    be = backend_of(W)
    D, H = W.shape
    x2 = x.reshape(-1, D)  # (N, D)
    d2 = dout.reshape(-1, H)  # (N, H)
    dtype = np.result_type(dout.dtype, W.dtype)
    dx = be.empty(x.shape, dtype) if out is None else _check_out(out, x.shape, dtype, dout, x, W)
    be.xp.matmul(d2, W.T, out=dx.reshape(-1, D))
    dW = x2.T @ d2
    db = be.xp.ones(d2.shape[0], dtype=d2.dtype) @ d2  # column sums as one matrix-vector product (short rows: slow)
    return dx, dW, db


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (the row max is subtracted)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


_MIN_SHIFTED_SUM = float(np.exp(-20.0))  # see softmax_cross_entropy


def softmax_cross_entropy(
    logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None, out: np.ndarray | None = None
):
    """Mean negative log-likelihood of the targets and its gradient, fused.

    logits: (N, V); targets: (N,) integer ids; mask: (N,) of 0/1 or None (all ones).
    Returns (loss, dlogits): loss is a Python float in nats per counted position (a 0-d
    float64 device array where the backend keeps scalars on the device, cuda),
    dlogits (N, V) has the dtype of logits, written into `out` if given (an (N, V)
    array of that dtype, not overlapping logits). Masked positions contribute neither
    loss nor gradient. The gradient of the mean NLL is (softmax - one_hot) / count.

    The rows are short (V ~ 65), and numpy reduces short rows slowly, so: exp is
    shifted by the batch maximum, one scalar, not by each row's (softmax does not
    depend on the shift; exp(z - max) <= 1 cannot overflow); the row sums are one
    matrix-vector product; targets are read and written through flat indices.
    Shifting a row by more than its own maximum costs precision in proportion to
    the gap (rounding of z - max), and past ~87 nats in float32 its exponentials
    leave the normal range; so a row whose sum is below e^-20 (its maximum more
    than 20 nats below the batch's; a trained model's gaps measured up to ~16) is
    redone with its own maximum. -log p is log(sum) - (shifted target logit): exact
    even when p itself underflows.

    Where the backend keeps scalars on the device (`Backend.eager_scalars` False, cuda),
    finding those rows would wait for the device (which rows, how many), so there every
    row is shifted by its own maximum (a GPU reduces short rows fast); and a mask is not
    checked for a counted position (that too would read back): an empty one gives NaN.
    """
    be = backend_of(logits)
    xp = be.xp
    logits = xp.ascontiguousarray(logits)  # the flat indices assume C order
    N, V = logits.shape
    dtype = logits.dtype
    targets = be.asarray(targets)
    if targets.shape != (N,) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be {N} integer ids, got {targets.dtype} {targets.shape}")
    be.check_ids(targets, V, "targets")
    flat = xp.arange(0, N * V, V) + targets  # (N,) flat index of each row's target
    if out is None:
        out = be.empty(logits.shape, dtype)
    else:
        _check_out(out, logits.shape, dtype, logits)  # rows far below the maximum are redone from logits
    eager = be.eager_scalars  # False (cuda): nothing here may wait for the device, see below
    # one scalar shift on the CPU; where a read-back is not allowed, each row's own maximum (one
    # reduction kernel either way), so that no row ever needs redoing
    shift = logits.max() if eager else logits.max(axis=1, keepdims=True)
    probs = xp.subtract(logits, shift, out=out)  # (N, V), <= 0
    shifted_target = probs.reshape(-1)[flat]  # (N,)
    xp.exp(probs, out=probs)
    sums = probs @ xp.ones(V, dtype=dtype)  # (N,), >= exp(row max - shift)
    if eager:
        low = xp.flatnonzero(sums < _MIN_SHIFTED_SUM)  # which rows, and how many: a read-back on a device
        if low.size:  # rows far below the batch maximum: shift each by its own maximum
            sub = logits[low]
            sub = sub - sub.max(axis=1, keepdims=True)  # (n_low, V)
            shifted_target[low] = sub[xp.arange(low.size), targets[low]]
            xp.exp(sub, out=sub)
            probs[low] = sub
            sums[low] = sub.sum(axis=1)
    nll = xp.log(sums) - shifted_target  # (N,) exact -log p
    if mask is None:
        count = N
        loss = be.scalar(nll.sum(dtype=np.float64)) / count
        scale = xp.divide(dtype.type(1.0 / count), sums)  # (N,) softmax normaliser and 1/count in one pass
        target_grad = dtype.type(1.0 / count)
    else:
        mask = be.asarray(mask, dtype=dtype)
        if eager:
            count = float(mask.sum(dtype=np.float64))
            if count <= 0:
                raise ValueError("the mask leaves no position to score")
            loss = float((nll * mask).sum(dtype=np.float64)) / count
            target_grad = mask / dtype.type(count)  # (N,)
        else:  # count and loss stay on the device; an empty mask (unchecked: a read-back) gives a NaN loss
            count = mask.sum(dtype=np.float64)
            loss = (nll * mask).sum(dtype=np.float64) / count
            target_grad = mask / count.astype(dtype)  # (N,)
        scale = target_grad / sums
    probs *= scale[:, None]
    probs.reshape(-1)[flat] -= target_grad
    return loss, probs
