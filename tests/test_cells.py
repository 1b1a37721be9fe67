"""The cells: the registry, the common interface, each recurrence against a plain reference, dropout."""

import warnings

import numpy as np
import pytest

from charrnn import CharRNN, one_hot
from charrnn.cells import CELL_NAMES, cell_class, make_cell
from charrnn.cells.lstm import FORGET_BIAS
from charrnn.model import dropout_mask, param_shapes

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def sig(z):
    return 0.5 * np.tanh(0.5 * z) + 0.5  # the logistic function, without overflow for large |z|


def reference_step(cell, p, x, s, H):
    """One step of each cell, written from the equations of the docs, in float64: returns (h, new state)."""
    if cell == "rnn":
        h = np.tanh(x @ p["Wxh"] + s @ p["Whh"] + p["bh"])
        return h, h
    if cell == "lstm":
        h, c = s[:, :H], s[:, H:]
        a = x @ p["Wxh"] + h @ p["Whh"] + p["bh"]
        i, f, g, o = sig(a[:, :H]), sig(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]), sig(a[:, 3 * H :])
        c = f * c + i * g
        h = o * np.tanh(c)
        return h, np.concatenate([h, c], axis=1)
    u, v = x @ p["Wxh"] + p["bh"], s @ p["Whh"]
    r, z = sig(u[:, :H] + v[:, :H]), sig(u[:, H : 2 * H] + v[:, H : 2 * H])
    n = np.tanh(u[:, 2 * H :] + r * (v[:, 2 * H :] + p["bhn"]))
    h = (1 - z) * n + z * s
    return h, h


def reference_loss(m, x, y, h0, mask):
    """The whole model step by step with explicit one-hot products, in float64."""
    H, L = m.hidden_size, m.num_layers
    layers = [{k: v.astype(np.float64) for k, v in m.layer_params(i).items()} for i in range(L)]
    s = [h0[i].astype(np.float64) for i in range(L)]
    B, T = x.shape
    total = 0.0
    for t in range(T):
        inp = one_hot(x[:, t], m.vocab_size, np.float64)
        for i in range(L):
            inp, s[i] = reference_step(m.cell.name, layers[i], inp, s[i], H)
        o = inp @ m.params["Why"] + m.params["by"]
        logp = o - o.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        total -= (logp[np.arange(B), y[:, t]] * mask[:, t]).sum()
    return total / mask.sum(), np.stack(s)


def randomised(cell, seed=1, V=9, H=6, L=2):
    """A float64 model whose biases are random too (zero biases would hide one counted in the wrong place)."""
    m = CharRNN(V, H, L, cell, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in m.params.values():
        if p.ndim == 1:
            p[:] = rng.uniform(-0.5, 0.5, p.shape)
    return m


def test_the_registry_names_every_cell_and_refuses_others():
    assert CELL_NAMES == ("rnn", "lstm", "gru")
    for name in CELL_NAMES:
        assert cell_class(name).name == name
    with pytest.raises(ValueError, match="one of rnn, lstm, gru"):
        make_cell("transformer")
    with pytest.raises(ValueError, match="relu applies to cell rnn only"):
        make_cell("lstm", "relu")
    with pytest.raises(ValueError, match="relu"):
        CharRNN(5, 4, cell="gru", activation="relu")
    assert make_cell("rnn", "relu").smooth is False and make_cell("gru").smooth is True


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_cell_keeps_the_interface(cell):
    c = make_cell(cell)
    G, D, H = GATES[cell], 7, 5
    assert c.gates == G
    assert c.state_size(H) == (2 * H if cell == "lstm" else H)
    shapes = c.param_shapes(D, H)
    assert shapes["Wxh"] == (D, G * H) and shapes["Whh"] == (H, G * H) and shapes["bh"] == (G * H,)
    assert set(shapes) - {"Wxh", "Whh", "bh"} == ({"bhn"} if cell == "gru" else set())
    p = c.init_params(D, H, np.random.default_rng(0), embedding=True)
    assert {k: v.shape for k, v in p.items()} == shapes and all(v.dtype == np.float64 for v in p.values())
    # the recurrence: forward -> (hs, s_last, cache), backward -> (da, ds0, grads of the recurrent parameters)
    T, B = 4, 3
    rng = np.random.default_rng(1)
    a = rng.standard_normal((T, B, G * H))
    s0 = rng.uniform(-0.5, 0.5, (B, c.state_size(H)))
    hs, s_last, cache = c.forward(a, s0, p)
    assert hs.shape == (T, B, H) and s_last.shape == (B, c.state_size(H))
    np.testing.assert_array_equal(s_last[:, :H], hs[-1])  # the state starts with h
    da, ds0, grads = c.backward(rng.standard_normal((T, B, H)), cache)
    assert da.shape == (T, B, G * H) and ds0.shape == s0.shape
    assert set(grads) == set(shapes) - {"Wxh", "bh"} and all(grads[k].shape == shapes[k] for k in grads)
    b_in, b_rec = c.split_bias(p)
    np.testing.assert_allclose(b_in + b_rec, p["bh"] + (np.r_[np.zeros(2 * H), p["bhn"]] if cell == "gru" else 0))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_the_engine_equals_the_equations_step_by_step(cell):
    m = randomised(cell)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 9, (3, 8)), rng.integers(0, 9, (3, 8))
    h0 = rng.uniform(-0.5, 0.5, (2, 3, m.state_size))
    mask = np.ones((3, 8))
    mask[1, 5:] = 0
    loss, h = m.loss(x, y, h0, mask)
    ref_loss, ref_h = reference_loss(m, x, y, h0, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saturated_gates_are_exact_and_silent(cell, dtype):
    """The gates come from exp(-x), which overflows to inf for x below about -88 (float32) or -709:
    1 / (1 + inf) = 0 is the right value, and no warning may escape into the user's terminal."""
    r = randomised(cell)
    r.params["layers.0.Wxh"] *= 2000  # pre-activations of several hundred, both signs
    m = CharRNN(9, 6, 2, cell, dtype=dtype, params=r.params)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 9, (3, 8)), rng.integers(0, 9, (3, 8))
    h0, mask = np.zeros((2, 3, m.state_size), dtype), np.ones((3, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grads, h = m.loss_and_grads(x, y, h0, mask)
    ref_loss, ref_h = reference_loss(m, x, y, h0, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-12 if dtype == np.float64 else 1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-12 if dtype == np.float64 else 1e-5)
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_step_stepper_and_forward_agree(cell):
    m = randomised(cell, L=3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, (4, 7))
    h0 = rng.uniform(-0.5, 0.5, (3, 4, m.state_size))
    logits_seq, h_seq = m.forward(x, h0)
    h, stepper = h0, m.stepper(h0)
    single = m.stepper(h0[:, :1])
    for t in range(7):
        logits, h = m.step(x[:, t], h)
        np.testing.assert_allclose(logits, logits_seq[:, t], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stepper.feed(x[:, t]), logits, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(single.feed_one(int(x[0, t])), logits[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, h_seq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stepper.h, h_seq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(single.h, h_seq[:, :1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_parameter_names_and_state_shape(cell):
    m = CharRNN(13, 8, 2, cell)
    G = GATES[cell]
    extra = ["bhn"] if cell == "gru" else []
    assert list(m.params) == [f"layers.{i}.{k}" for i in range(2) for k in ["Wxh", "Whh", "bh", *extra]] + ["Why", "by"]
    assert m.params["layers.0.Wxh"].shape == (13, G * 8) and m.params["layers.1.Wxh"].shape == (8, G * 8)
    assert {k: v.shape for k, v in m.params.items()} == param_shapes(13, 8, 2, cell)
    x = np.zeros((2, 5), dtype=int)
    _loss, grads, h = m.loss_and_grads(x, x)
    assert list(grads) == list(m.params) and h.shape == (2, 2, m.state_size) == m.initial_state(2).shape
    with pytest.raises(ValueError, match="h0"):
        m.loss(x, x, h0=np.zeros((2, 2, 8 if cell == "lstm" else 16)))


def test_gated_initialisation():
    m = CharRNN(65, 64, 2, "lstm", seed=3)
    p = m.params
    H = 64
    for i in range(2):
        bh = p[f"layers.{i}.bh"]
        assert np.all(bh[H : 2 * H] == FORGET_BIAS) and not bh[:H].any() and not bh[2 * H :].any()
        W = p[f"layers.{i}.Whh"].astype(np.float64)
        for k in range(4):  # four independent orthogonal blocks
            blk = W[:, k * H : (k + 1) * H]
            np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=1e-5)
        assert not np.allclose(W[:, :H], W[:, H : 2 * H])
    assert np.abs(p["layers.0.Wxh"]).max() <= 1 and abs(p["layers.0.Wxh"].std() - 1 / np.sqrt(3)) < 0.02
    g = CharRNN(65, 64, 1, "gru", seed=3).params
    assert not g["layers.0.bh"].any() and not g["layers.0.bhn"].any()
    # seeded and dtype-independent, as for the vanilla cell
    same, wide = CharRNN(65, 64, 2, "lstm", seed=3), CharRNN(65, 64, 2, "lstm", seed=3, dtype=np.float64)
    for k in p:
        np.testing.assert_array_equal(p[k], same.params[k])
        np.testing.assert_array_equal(p[k], wide.params[k].astype(np.float32))


# ----------------------------------------------------------------------------- dropout


def test_dropout_masks_are_inverted_and_seeded():
    mask = dropout_mask(np.random.default_rng(0), (50, 40, 30), 0.25, np.float32)
    assert mask.dtype == np.float32
    assert set(np.unique(mask).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.01 and abs(mask.mean() - 1) < 0.02  # expected value kept
    np.testing.assert_array_equal(mask, dropout_mask(np.random.default_rng(0), (50, 40, 30), 0.25, np.float32))
    # float32 and float64 models drop the same units
    wide = dropout_mask(np.random.default_rng(0), (50, 40, 30), 0.25, np.float64)
    np.testing.assert_array_equal(wide == 0, mask == 0)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_dropout_acts_in_training_only(cell):
    m = CharRNN(9, 16, 2, cell, dropout=0.5, dtype=np.float64)
    plain = CharRNN(9, 16, 2, cell, dtype=np.float64)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 9, (4, 10)), rng.integers(0, 9, (4, 10))
    # without a generator nothing is dropped: evaluation, and loss_and_grads without rng
    assert m.loss(x, y)[0] == plain.loss(x, y)[0] == m.loss_and_grads(x, y)[0]
    l1, g1, h1 = m.loss_and_grads(x, y, rng=np.random.default_rng(7))
    l2, g2, _h2 = m.loss_and_grads(x, y, rng=np.random.default_rng(7))
    l3 = m.loss_and_grads(x, y, rng=np.random.default_rng(8))[0]
    assert l1 == l2 and l1 != l3 and l1 != plain.loss(x, y)[0]
    assert all(np.array_equal(g1[k], g2[k]) for k in g1)
    # the carried state is the recurrence's own, not its dropped-out copy: layer 0's is untouched
    # (layer 1 reads layer 0's dropped output, so its state differs)
    h_plain = plain.loss(x, y)[1]
    np.testing.assert_array_equal(h1[0], h_plain[0])
    assert not np.allclose(h1[1], h_plain[1])
    # a model without dropout draws nothing from the generator
    r = np.random.default_rng(1)
    plain.loss_and_grads(x, y, rng=r)
    assert r.random() == np.random.default_rng(1).random()


def test_dropout_drops_each_layers_output_including_the_top():
    m = CharRNN(9, 8, 2, "lstm", dropout=0.5, dtype=np.float64)
    x = np.zeros((3, 4), dtype=int)
    _, cache, _ = m.forward_loss(x, x, rng=np.random.default_rng(0))
    assert len(cache.masks) == 2 and all(mk.shape == (4, 3, 8) for mk in cache.masks)
    # the output layer reads the top layer's dropped output
    np.testing.assert_array_equal(cache.out.x, cache.cells[1].hs * cache.masks[1])
    np.testing.assert_array_equal(cache.proj[1].x, cache.cells[0].hs * cache.masks[0])
