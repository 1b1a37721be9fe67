"""The pure layers: one-hot lookup == one-hot product, stable softmax, fused loss."""

import numpy as np
import pytest

from charrnn import one_hot
from charrnn.layers import (
    PRODUCT_MAX_VOCAB,
    affine_backward,
    affine_forward,
    log_softmax,
    onehot_affine_backward,
    onehot_affine_forward,
    softmax,
    softmax_cross_entropy,
)


def test_one_hot_encodes_ids_of_any_shape():
    ids = np.array([[0, 2], [1, 2]])
    oh = one_hot(ids, 3)
    assert oh.shape == (2, 2, 3)
    assert oh.dtype == np.float32
    np.testing.assert_array_equal(oh.argmax(-1), ids)
    np.testing.assert_array_equal(oh.sum(-1), 1)


def test_one_hot_rejects_out_of_range_and_non_integer_ids():
    with pytest.raises(ValueError):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(TypeError):
        one_hot(np.array([0.0, 1.0]), 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V", [11, PRODUCT_MAX_VOCAB + 40])  # the gradient's product path and its sort path
def test_row_lookup_equals_one_hot_product_forward_and_backward(dtype, V):
    rng = np.random.default_rng(1)
    H, T, B = 6, 5, 4
    ids = rng.integers(0, V, size=(T, B))
    ids[0, :] = 3  # repeated ids must accumulate in the scatter-add
    W = rng.standard_normal((V, H)).astype(dtype)
    b = rng.standard_normal(H).astype(dtype)
    dout = rng.standard_normal((T, B, H)).astype(dtype)

    fast, fcache = onehot_affine_forward(ids, W, b)
    ref, rcache = affine_forward(one_hot(ids, V, dtype), W, b)
    assert fast.dtype == dtype
    np.testing.assert_allclose(fast, ref, rtol=1e-6)

    dW, db = onehot_affine_backward(dout, fcache)
    _, dW_ref, db_ref = affine_backward(dout, rcache)
    assert dW.dtype == dtype
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-6)
    # rows of characters that never occur get exactly zero gradient
    unseen = np.setdiff1d(np.arange(V), ids)
    assert np.all(dW[unseen] == 0)


def test_softmax_and_loss_are_finite_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        p = softmax(logits)
        lp = log_softmax(logits)
        loss, d = softmax_cross_entropy(logits.copy(), np.array([1, 0]))
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lp)) and np.all(np.isfinite(d))
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)
    # -log p(target) is exactly the logit gap: 1e4 and 2e4, mean 1.5e4, not clipped
    assert loss == pytest.approx(1.5e4, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_keeps_precision_for_rows_far_below_the_batch_maximum(dtype):
    # exp is shifted by the batch maximum, and rows far below it are redone with their
    # own: 95 below, float32 row sums are subnormal (1 / sum overflows to inf); 3000
    # below, they are 0 in either dtype. Fortran-ordered logits must work too.
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)) * 3
    logits[1] -= 30.0
    logits[2] -= 95.0
    logits[4] -= 3000.0
    y = np.array([0, 1, 2, 3, 0, 1])
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(6), y]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for lg in (logits.astype(dtype), np.asfortranarray(logits.astype(dtype))):
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            loss, d = softmax_cross_entropy(lg, y)
        assert loss == pytest.approx(nll.mean(), rel=rtol)
        np.testing.assert_allclose(d, (p - one_hot(y, 4, np.float64)) / 6, rtol=rtol * 10, atol=rtol * 1e-3)
        assert d.dtype == dtype
    with pytest.raises(IndexError):
        softmax_cross_entropy(logits, np.array([0, 1, 2, 3, 0, 4]))


def test_cross_entropy_matches_the_definition_and_respects_the_mask():
    rng = np.random.default_rng(0)
    N, V = 9, 5
    logits = rng.standard_normal((N, V))
    y = rng.integers(0, V, N)
    mask = np.ones(N)
    mask[[2, 7]] = 0
    loss, d = softmax_cross_entropy(logits.copy(), y, mask)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    nll = -np.log(p[np.arange(N), y])
    assert loss == pytest.approx(nll[mask == 1].mean(), rel=1e-12)
    expected = (p - one_hot(y, V, np.float64)) * (mask / mask.sum())[:, None]
    np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-15)
    assert np.all(d[[2, 7]] == 0)
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits.copy(), y, np.zeros(N))


def test_out_arrays_receive_the_same_results_and_bad_ones_are_refused():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 5, (3, 2))
    W, b, x = rng.standard_normal((5, 4)), rng.standard_normal(4), rng.standard_normal((3, 2, 5))
    out = np.empty((3, 2, 4))
    assert onehot_affine_forward(ids, W, b, out=out)[0] is out
    np.testing.assert_array_equal(out, onehot_affine_forward(ids, W, b)[0])
    y, cache = affine_forward(x, W, b, out=np.empty((3, 2, 4)))
    np.testing.assert_array_equal(y, affine_forward(x, W, b)[0])
    dout = rng.standard_normal((3, 2, 4))
    dx = affine_backward(dout, cache, out=np.empty((3, 2, 5)))[0]
    np.testing.assert_array_equal(dx, affine_backward(dout, cache)[0])
    logits, targets = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    d = softmax_cross_entropy(logits, targets, out=np.empty((6, 5)))[1]
    np.testing.assert_array_equal(d, softmax_cross_entropy(logits, targets)[1])
    with pytest.raises(IndexError):
        onehot_affine_forward(np.array([[5]]), W, b, out=np.empty((1, 1, 4)))
    # a wrong dtype, a wrong shape, a strided layout
    for bad in (np.empty((3, 2, 4), np.float32), np.empty((3, 2, 3)), np.empty((3, 2, 8))[..., ::2]):
        with pytest.raises(ValueError):
            affine_forward(x, W, b, out=bad)
    with pytest.raises(ValueError):
        softmax_cross_entropy(logits, targets, out=logits)
    base = np.empty(60)  # dx written over dout would corrupt dW and db
    overlapping_dout = base[:24].reshape(3, 2, 4)
    overlapping_dout[...] = dout
    with pytest.raises(ValueError):
        affine_backward(overlapping_dout, cache, out=base[20:50].reshape(3, 2, 5))


def test_engine_arrays_start_on_cache_lines():
    from charrnn import CharRNN
    from charrnn.layers import ALIGN, aligned_copy, empty_aligned

    for shape, dtype in (((100, 64, 512), np.float32), ((3,), np.float64), (7, np.float32)):
        a = empty_aligned(shape, dtype)
        assert a.ctypes.data % ALIGN == 0 and a.flags.c_contiguous and a.dtype == dtype
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
    src = np.arange(12.0).reshape(3, 4).T
    c = aligned_copy(src, np.float32)
    assert c.ctypes.data % ALIGN == 0 and c.flags.c_contiguous and np.array_equal(c, src)
    m = CharRNN(7, 40, 2)
    assert all(p.ctypes.data % ALIGN == 0 for p in m.params.values())
    stepper = m.stepper(m.initial_state(3))
    assert all(layer[0].ctypes.data % ALIGN == 0 and layer[0].strides[0] % ALIGN == 0 for layer in stepper.layers)
