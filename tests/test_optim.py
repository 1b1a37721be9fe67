"""Optimizers, schedules and clipping over the params dict."""

import math

import numpy as np
import pytest

from charrnn import CharRNN
from charrnn.config import TrainConfig
from charrnn.optim import OPTIMIZERS, apply_update, clip_by_global_norm, global_norm, init_state, learning_rate


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(optimizer):
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, 8, size=24), 10)
    x, y = text[:-1].reshape(1, -1)[:, :200], text[1:].reshape(1, -1)[:, :200]
    m = CharRNN(8, 24, seed=1)
    lr = {"sgd": 0.5, "momentum": 0.1, "adagrad": 0.05, "rmsprop": 0.005, "adam": 0.01}[optimizer]
    cfg = TrainConfig(optimizer=optimizer, learning_rate=lr)
    state = init_state(optimizer, m.params)
    assert all(k.split(".", 1)[1] in m.params for k in state)  # state named after the parameters
    first = None
    for t in range(1, 61):
        loss, grads, _ = m.loss_and_grads(x, y)
        first = first if first is not None else loss
        clip_by_global_norm(grads, 5.0)
        apply_update(optimizer, m.params, grads, state, lr, t, cfg)
    assert loss < 0.5 * first, (optimizer, first, loss)
    assert all(p.dtype == np.float32 for p in m.params.values())


def test_adam_matches_the_textbook_rule():
    cfg = TrainConfig(weight_decay=0.0)
    p = {"W": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    state = init_state("adam", p)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    ref = {k: a.copy() for k, a in p.items()}
    for t in range(1, 4):
        g = {"W": np.array([[0.3 * t, -0.1]]), "b": np.array([0.2 / t])}
        for k in ref:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            ref[k] -= 0.01 * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
        apply_update("adam", p, {k: a.copy() for k, a in g.items()}, state, 0.01, t, cfg)
    for k in p:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-12)


def test_weight_decay_is_decoupled_and_spares_biases():
    cfg = TrainConfig(weight_decay=0.1)
    p = {"W": np.ones((2, 2)), "b": np.ones(2)}
    apply_update("sgd", p, {"W": np.zeros((2, 2)), "b": np.zeros(2)}, {}, 0.5, 1, cfg)
    np.testing.assert_allclose(p["W"], 0.95)
    np.testing.assert_allclose(p["b"], 1.0)


def test_clip_by_global_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert global_norm(g) == 5.0
    before = clip_by_global_norm(g, 1.0)
    assert before == 5.0
    assert global_norm(g) == pytest.approx(1.0, rel=1e-5)
    g2 = {"a": np.array([0.3, 0.4])}
    clip_by_global_norm(g2, 0)  # 0 disables
    np.testing.assert_array_equal(g2["a"], [0.3, 0.4])


def test_schedules():
    c = TrainConfig(learning_rate=1.0, warmup_steps=10, max_steps=110, lr_schedule="cosine", min_lr_frac=0.1)
    assert learning_rate(0, c) == pytest.approx(0.1)
    assert learning_rate(9, c) == pytest.approx(1.0)
    assert learning_rate(10, c) == pytest.approx(1.0)
    assert learning_rate(60, c) == pytest.approx(0.55)
    assert learning_rate(110, c) == pytest.approx(0.1)
    s = TrainConfig(learning_rate=1.0, warmup_steps=0, lr_schedule="step", lr_decay_every=5, lr_decay=0.5)
    assert [learning_rate(i, s) for i in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    k = TrainConfig(learning_rate=0.3, warmup_steps=0, lr_schedule="constant")
    assert learning_rate(12345, k) == 0.3
    assert math.isclose(learning_rate(5, TrainConfig(learning_rate=1.0, warmup_steps=0, max_steps=10)), 0.55)


def test_lr_scale_speeds_up_the_update_but_not_the_decay():
    cfg = TrainConfig(weight_decay=0.1)
    p = {"E": np.ones((2, 2)), "W": np.ones((2, 2))}
    g = {"E": np.full((2, 2), 0.1), "W": np.full((2, 2), 0.1)}
    apply_update("sgd", p, g, {}, 0.5, 1, cfg, lr_scale={"E": 10.0})
    np.testing.assert_allclose(p["W"], 0.95 - 0.05)  # decay 0.5 * 0.1, then step 0.5 * 0.1
    np.testing.assert_allclose(p["E"], 0.95 - 0.5)  # same decay, ten times the step
