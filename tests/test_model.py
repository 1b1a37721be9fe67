"""The model: the API contract, initialisation, dtype, state carrying, learning."""

import numpy as np
import pytest

from charrnn import CharRNN, one_hot
from charrnn.model import EMBED_STD, param_shapes


def batch(rng, V, B, T):
    x = rng.integers(0, V, size=(B, T))
    y = rng.integers(0, V, size=(B, T))
    return x, y


def test_parameter_names_and_shapes_are_the_contract():
    m = CharRNN(vocab_size=13, hidden_size=8, num_layers=3)
    assert list(m.params) == [
        "layers.0.Wxh", "layers.0.Whh", "layers.0.bh",
        "layers.1.Wxh", "layers.1.Whh", "layers.1.bh",
        "layers.2.Wxh", "layers.2.Whh", "layers.2.bh",
        "Why", "by",
    ]  # fmt: skip
    assert m.params["layers.0.Wxh"].shape == (13, 8)
    assert m.params["layers.1.Wxh"].shape == (8, 8)
    assert m.params["layers.2.Whh"].shape == (8, 8)
    assert m.params["layers.2.bh"].shape == (8,)
    assert m.params["Why"].shape == (8, 13)
    assert m.params["by"].shape == (13,)
    assert {k: v.shape for k, v in m.params.items()} == param_shapes(13, 8, 3)
    x, y = batch(np.random.default_rng(0), 13, 2, 5)
    _loss, grads, h = m.loss_and_grads(x, y)
    assert list(grads) == list(m.params)
    assert all(grads[k].shape == m.params[k].shape for k in grads)
    assert h.shape == (3, 2, 8)
    logits, h1 = m.step(np.array([1, 2]), h)
    assert logits.shape == (2, 13) and h1.shape == (3, 2, 8)


def test_initialisation_is_deliberate_and_seeded():
    m = CharRNN(vocab_size=65, hidden_size=256, num_layers=2, seed=3)
    p = m.params
    # layer-0 input rows are embeddings: U(-1, 1), std 1/sqrt(3)
    assert abs(p["layers.0.Wxh"].std() - EMBED_STD) < 0.01
    assert np.abs(p["layers.0.Wxh"]).max() <= 1
    # tanh: orthogonal recurrence
    W = p["layers.1.Whh"].astype(np.float64)
    np.testing.assert_allclose(W.T @ W, np.eye(256), atol=1e-5)
    # fan-in scale above layer 0 and at the output
    for name in ("layers.1.Wxh", "Why"):
        assert abs(p[name].std() - 1 / np.sqrt(256)) < 0.005
    assert not p["layers.0.bh"].any() and not p["by"].any()
    # relu: a contraction, every singular value 0.5, so a carried state cannot sum the inputs up
    r = CharRNN(65, 16, activation="relu", dtype=np.float64).params["layers.0.Whh"]
    np.testing.assert_allclose(np.linalg.svd(r, compute_uv=False), np.full(16, 0.5), rtol=1e-12)
    # seeded: same seed same model, other seed other model, dtype does not change the draw
    same = CharRNN(65, 256, 2, seed=3)
    other = CharRNN(65, 256, 2, seed=4)
    wide = CharRNN(65, 256, 2, seed=3, dtype=np.float64)
    for k in p:
        np.testing.assert_array_equal(p[k], same.params[k])
        np.testing.assert_array_equal(p[k], wide.params[k].astype(np.float32))
    assert not np.array_equal(p["layers.0.Wxh"], other.params["layers.0.Wxh"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_end_to_end(dtype):
    m = CharRNN(10, 16, 2, dtype=dtype)
    x, y = batch(np.random.default_rng(0), 10, 4, 7)
    loss, grads, h = m.loss_and_grads(x, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert h.dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())
    logits, h2 = m.step(np.array([0, 1, 2, 3]), h)
    assert logits.dtype == dtype and h2.dtype == dtype


def reference_loss(m, x, y, h0, mask):
    """A plain per-step implementation with explicit one-hot products, in float64."""
    p = {k: v.astype(np.float64) for k, v in m.params.items()}
    f = np.tanh if m.activation == "tanh" else (lambda z: np.maximum(z, 0))
    B, T = x.shape
    h = [h0[i].astype(np.float64) for i in range(m.num_layers)]
    total = 0.0
    for t in range(T):
        inp = one_hot(x[:, t], m.vocab_size, np.float64)
        for i in range(m.num_layers):
            h[i] = f(inp @ p[f"layers.{i}.Wxh"] + h[i] @ p[f"layers.{i}.Whh"] + p[f"layers.{i}.bh"])
            inp = h[i]
        o = inp @ p["Why"] + p["by"]
        logp = o - o.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        total -= (logp[np.arange(B), y[:, t]] * mask[:, t]).sum()
    return total / mask.sum(), np.stack(h)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fast_path_equals_explicit_one_hot_reference(activation):
    rng = np.random.default_rng(5)
    m = CharRNN(9, 12, 2, activation=activation, seed=1, dtype=np.float64)
    x, y = batch(rng, 9, 3, 8)
    h0 = rng.uniform(0, 0.5, size=(2, 3, 12))
    mask = np.ones((3, 8))
    mask[1, 5:] = 0
    loss, h = m.loss(x, y, h0, mask)
    ref_loss, ref_h = reference_loss(m, x, y, h0, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12)


def test_carrying_the_state_equals_one_long_window():
    rng = np.random.default_rng(7)
    m = CharRNN(11, 20, 2, seed=2, dtype=np.float64)
    x, y = batch(rng, 11, 4, 12)
    h0 = rng.uniform(-0.5, 0.5, size=(2, 4, 20))
    loss_full, h_full = m.loss(x, y, h0)
    loss_a, h_a = m.loss(x[:, :6], y[:, :6], h0)
    loss_b, h_b = m.loss(x[:, 6:], y[:, 6:], h_a)
    assert (loss_a + loss_b) / 2 == pytest.approx(loss_full, rel=1e-12)
    np.testing.assert_allclose(h_b, h_full, rtol=1e-12)
    # and stepping one character at a time reaches the same state and logits
    logits_seq, _ = m.forward(x, h0)
    h = h0
    for t in range(12):
        logits, h = m.step(x[:, t], h)
        np.testing.assert_allclose(logits, logits_seq[:, t], rtol=1e-10)
    np.testing.assert_allclose(h, h_full, rtol=1e-12)


def test_loss_and_grads_do_not_modify_the_inputs():
    rng = np.random.default_rng(0)
    m = CharRNN(6, 8, 2, dtype=np.float64)
    x, y = batch(rng, 6, 2, 5)
    h0 = rng.standard_normal((2, 2, 8))
    before = {k: v.copy() for k, v in m.params.items()}
    h0_copy = h0.copy()
    m.loss_and_grads(x, y, h0)
    np.testing.assert_array_equal(h0, h0_copy)
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])


def test_a_tiny_model_memorises_a_repeated_string_with_plain_sgd():
    text = "hello, world! " * 20
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    m = CharRNN(len(chars), 32, 1, seed=0)
    B, T = 4, 16
    starts = np.arange(B) * ((len(ids) - 1) // B)
    first = None
    for step in range(300):
        off = (step * T) % ((len(ids) - 1) // B - T)
        x = np.stack([ids[s + off : s + off + T] for s in starts])
        y = np.stack([ids[s + off + 1 : s + off + T + 1] for s in starts])
        loss, grads, _ = m.loss_and_grads(x, y)
        first = loss if first is None else first
        norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        scale = min(1.0, 5.0 / norm)  # clip by global norm
        for k in m.params:
            m.params[k] -= 0.5 * scale * grads[k]
    assert first > 2.0
    assert loss < 0.05, loss


@pytest.mark.parametrize(
    "kwargs",
    [dict(vocab_size=0, hidden_size=4), dict(vocab_size=4, hidden_size=-1),
     dict(vocab_size=4, hidden_size=4, num_layers=0), dict(vocab_size=4, hidden_size=4, activation="sigmoid"),
     dict(vocab_size=4, hidden_size=4, dtype=np.int32)],
)  # fmt: skip
def test_bad_architecture_is_rejected(kwargs):
    with pytest.raises(ValueError):
        CharRNN(**kwargs)


def test_bad_inputs_are_rejected():
    m = CharRNN(5, 4)
    good = np.zeros((2, 3), dtype=int)
    with pytest.raises(ValueError, match="outside"):
        m.loss_and_grads(good + 5, good)
    with pytest.raises(ValueError, match="same shape"):
        m.loss_and_grads(good, good[:, :2])
    with pytest.raises(ValueError, match="h0"):
        m.loss_and_grads(good, good, h0=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="mask"):
        m.loss_and_grads(good, good, mask=np.ones((3, 2)))


def test_from_params_rebuilds_the_same_model():
    m = CharRNN(7, 6, 2, activation="relu", seed=9)
    m2 = CharRNN.from_params(m.params, activation="relu")
    assert (m2.vocab_size, m2.hidden_size, m2.num_layers, m2.dtype) == (7, 6, 2, np.float32)
    x, y = batch(np.random.default_rng(0), 7, 2, 4)
    assert m.loss(x, y)[0] == m2.loss(x, y)[0]
    bad = dict(m.params)
    bad["layers.1.Whh"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="shape"):
        CharRNN.from_params(bad, activation="relu")


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stepper_follows_step_exactly(activation):
    # the sampler's fused path ([h, 1] times [[Whh, W_above], [bh, b_above]]) is the same model as step
    m = CharRNN(7, 6, 3, activation=activation, seed=2, dtype=np.float64)
    for name, p in m.params.items():
        if name.endswith(("bh", "by")):
            p[:] = np.random.default_rng(len(name)).standard_normal(p.shape)  # biases must count once
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 4, 6)) * 0.5
    stepper = m.stepper(h)
    for _ in range(6):
        ids = rng.integers(0, 7, 4)
        logits, h = m.step(ids, h)
        np.testing.assert_allclose(stepper.feed(ids), logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stepper.h, h, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        m.stepper(np.zeros((2, 4, 6)))
    with pytest.raises(ValueError):  # one id for a stepper of 4 sequences
        stepper.feed(np.array([1]))
    with pytest.raises(ValueError):
        stepper.feed_one(1)
    # a stepper is a snapshot: later parameter updates do not reach it
    single = m.stepper(h[:, :1])
    before = single.feed_one(2).copy()
    snapshot = m.stepper(h[:, :1])
    for p in m.params.values():
        p += 0.1
    np.testing.assert_array_equal(snapshot.feed_one(2), before)


def test_reused_work_arrays_change_no_result():
    # loss_and_grads and loss run on arrays the model keeps between calls; forward_loss/backward
    # allocate fresh ones: results must be identical, across shape changes, and a cache held
    # by the caller must survive later loss_and_grads calls
    m = CharRNN(9, 8, 2, seed=1, dtype=np.float64)
    rng = np.random.default_rng(5)
    batches = [(rng.integers(0, 9, (B, T)), rng.integers(0, 9, (B, T))) for B, T in ((3, 5), (3, 5), (2, 7))]
    x0, y0 = batches[0]
    _loss0, cache0, _ = m.forward_loss(x0, y0)
    for x, y in batches:
        loss, grads, h = m.loss_and_grads(x, y)
        ref_loss, cache, ref_h = m.forward_loss(x, y)
        ref_grads, _ = m.backward(cache)
        assert loss == ref_loss and np.array_equal(h, ref_h)
        assert all(np.array_equal(grads[k], ref_grads[k]) for k in grads)
        assert m.loss(x, y)[0] == ref_loss
    grads0, _ = m.backward(cache0)  # the held cache is intact
    assert all(np.array_equal(grads0[k], m.loss_and_grads(x0, y0)[1][k]) for k in grads0)


def test_the_regularisers_drop_in_training_only_and_draw_nothing_when_off():
    kw = dict(vocab_size=9, hidden_size=6, num_layers=2, cell="lstm", dropout=0.3, seed=3)
    plain = CharRNN(**kw)
    reg = CharRNN(**kw, variational_dropout=True, weight_drop=0.5, embed_dropout=0.5)
    x, y = batch(np.random.default_rng(0), 9, 4, 5)
    assert reg.loss(x, y)[0] == plain.loss(x, y)[0]  # evaluation drops nothing
    rng = np.random.default_rng(1)
    _, cache, _ = reg.forward_loss(x, y, rng=rng)
    assert all(m.shape == (1, 4, 6) for m in cache.masks)  # one mask per window, for all its steps
    assert all(w.shape == (6, 24) and set(np.unique(w)) == {0, 2} for w in cache.weight_masks)
    assert cache.embed_mask.shape == (9, 1) and set(np.unique(cache.embed_mask)) == {0, 2}
    # with the options off, the dropout masks are the draws they always were
    r1, r2 = np.random.default_rng(2), np.random.default_rng(2)
    _, c1, _ = plain.forward_loss(x, y, rng=r1)
    off = CharRNN(**kw, variational_dropout=False, weight_drop=0.0, embed_dropout=0.0)
    _, c2, _ = off.forward_loss(x, y, rng=r2)
    assert c2.weight_masks == [None, None] and c2.embed_mask is None
    assert all(np.array_equal(a, b) for a, b in zip(c1.masks, c2.masks, strict=True))
    assert r1.random() == r2.random()
    with pytest.raises(ValueError, match="weight_drop"):
        CharRNN(**kw, weight_drop=1.0)
    rebuilt = CharRNN.from_params(reg.params, "lstm", **reg.regularization())
    assert rebuilt.weight_drop == 0.5 and rebuilt.variational_dropout
