"""Analytic BPTT gradients against centered differences, and proof the check can fail."""

import numpy as np
import pytest

import charrnn.cells.rnn as rnn_module
import charrnn.model as model_module
from charrnn.cells.rnn import RNNCache, rnn_backward
from charrnn.gradcheck import gradcheck

EXPECTED = {
    1: ["layers.0.Wxh", "layers.0.Whh", "layers.0.bh", "Why", "by", "h0"],
    2: [
        "layers.0.Wxh",
        "layers.0.Whh",
        "layers.0.bh",
        "layers.1.Wxh",
        "layers.1.Whh",
        "layers.1.bh",
        "Why",
        "by",
        "h0",
    ],
}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_gradient_matches_the_numerical_one(activation, layers, seed):
    r = gradcheck(vocab=6, hidden=9, layers=layers, batch=3, seq=7, activation=activation, seed=seed, tol=1e-6)
    assert [c.name for c in r.checks] == EXPECTED[layers]
    for c in r.checks:
        assert c.checked == int(np.prod(c.shape))  # every entry compared
        assert c.max_rel_error < 1e-6, (c.name, c.max_rel_error)
    assert r.passed


def test_the_problem_has_a_nonzero_state_and_masked_positions():
    from charrnn import CharRNN
    from charrnn.gradcheck import make_problem

    m = CharRNN(5, 4, 2, dtype=np.float64)
    _x, _y, h0, mask = make_problem(m, 3, 7, np.random.default_rng(0))
    assert np.abs(h0).min() > 0
    assert (mask == 0).any() and mask[:, 3].sum() == 0 and mask[:, 4].sum() == 3


def test_a_missing_recurrent_term_is_caught(monkeypatch):
    def no_carry(dhs, cache):
        # the bug: drop the gradient that comes back from h_{t+1} through Whh
        da, dh0, dWhh = rnn_backward(dhs, RNNCache(cache.hs, cache.h0, np.zeros_like(cache.Whh), cache.activation))
        hs, h0 = cache.hs, cache.h0
        H = h0.shape[1]
        dWhh = h0.T @ da[0] + hs[:-1].reshape(-1, H).T @ da[1:].reshape(-1, H)
        return da, dh0, dWhh

    monkeypatch.setattr(rnn_module, "rnn_backward", no_carry)
    r = gradcheck(layers=1, seq=6)
    failed = {c.name for c in r.checks if not c.passed}
    assert {"layers.0.Whh", "layers.0.Wxh", "h0"} <= failed
    assert not r.passed and r.max_rel_error > 1e-3


def test_an_ignored_mask_is_caught(monkeypatch):
    real = model_module.softmax_cross_entropy

    def ce_without_mask_in_gradient(logits, targets, mask=None, out=None):
        loss, _ = real(logits.copy(), targets, mask)
        _, d = real(logits, targets, None, out)  # the bug: gradient as if nothing were masked
        return loss, d

    monkeypatch.setattr(model_module, "softmax_cross_entropy", ce_without_mask_in_gradient)
    r = gradcheck(layers=2, seq=6)
    assert not r.passed
    assert r.max_rel_error > 1e-2


def test_sampled_entries_and_json_shape():
    r = gradcheck(hidden=12, layers=2, max_checks=5, seed=3)
    assert all(c.checked == min(5, int(np.prod(c.shape))) for c in r.checks)
    d = r.to_dict()
    assert d["passed"] is True
    assert {p["name"] for p in d["params"]} >= {"h0", "Why"}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_larger_models_pass_with_the_default_steps(activation):
    # rounding noise grows with the model; the default step per activation keeps it well under tol
    r = gradcheck(vocab=40, hidden=96, layers=2, batch=4, seq=10, activation=activation, seed=3, max_checks=25)
    assert r.passed, [(c.name, c.max_rel_error) for c in r.checks]
    assert r.eps == {"tanh": 1e-3, "relu": 1e-4}[activation]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_gated_cells_pass_with_and_without_dropout(cell, layers, dropout):
    r = gradcheck(vocab=6, hidden=9, layers=layers, batch=3, seq=7, cell=cell, dropout=dropout, seed=layers)
    names = [c.name for c in r.checks]
    assert names[:3] == ["layers.0.Wxh", "layers.0.Whh", "layers.0.bh"] and names[-1] == "h0"
    assert ("layers.0.bhn" in names) == (cell == "gru")
    assert all(c.checked == int(np.prod(c.shape)) for c in r.checks)
    assert r.passed, [(c.name, c.max_rel_error) for c in r.checks]
    assert r.max_rel_error < 1e-6 and r.eps == 1e-3
    assert r.settings["cell"] == cell and r.settings["dropout"] == dropout


def test_vanilla_cell_passes_with_dropout():
    for activation in ("tanh", "relu"):
        r = gradcheck(hidden=8, layers=3, seq=6, activation=activation, dropout=0.5, seed=2)
        assert r.passed, [(c.name, c.max_rel_error) for c in r.checks]


@pytest.mark.parametrize("cell, activation", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_every_cell_passes_with_weight_drop_embedding_and_variational_dropout(cell, activation):
    # 30 random entries per array (every array, h0 included): the masks touch every one alike; the full check
    # of every entry is `charrnn gradcheck --weight-drop 0.3 ...`, whose results docs/commands.md quotes
    r = gradcheck(cell=cell, activation=activation, layers=2, dropout=0.3, variational_dropout=True, weight_drop=0.3,
                  embed_dropout=0.3, seed=5, max_checks=30)  # fmt: skip
    assert r.passed, [(c.name, c.max_rel_error) for c in r.checks]
    assert r.settings["weight_drop"] == 0.3 and r.settings["variational_dropout"] is True


@pytest.mark.parametrize("option", ["weight_drop", "embed_dropout"])
def test_a_mask_left_out_of_the_backward_pass_is_caught(monkeypatch, option):
    from charrnn.model import CharRNN

    real = CharRNN._backward

    def forgets_the_mask(self, cache, buffer=None):  # the bug: the weights' gradient ignores the mask
        forget = {"weight_drop": dict(weight_masks=[None] * len(cache.weight_masks)), "embed_dropout": dict(
            embed_mask=None)}[option]  # fmt: skip
        return real(self, cache._replace(**forget), buffer)

    monkeypatch.setattr(CharRNN, "_backward", forgets_the_mask)
    r = gradcheck(cell="lstm", layers=2, seed=1, max_checks=20, **{option: 0.4})
    assert not r.passed


def test_dropout_is_really_applied_in_the_check():
    # the masks change the loss: the check is not silently running the plain network
    plain = gradcheck(cell="lstm", layers=2, dropout=0.0, seed=4, max_checks=1)
    dropped = gradcheck(cell="lstm", layers=2, dropout=0.5, seed=4, max_checks=1)
    assert plain.settings["loss"] != dropped.settings["loss"]


@pytest.mark.parametrize("cell, module", [("lstm", "lstm_backward"), ("gru", "gru_backward")])
def test_a_wrong_gated_gradient_is_caught(monkeypatch, cell, module):
    import importlib

    mod = importlib.import_module(f"charrnn.cells.{cell}")
    real = getattr(mod, module)

    def off_by_one_percent(dhs, cache, buffer=None):
        # the bug: the second gate block's pre-activation gradient 1% too large (lstm: forget; gru: update)
        # as it leaves the cell, after dWhh was formed from it
        out = real(dhs, cache, buffer)
        H = cache.hs.shape[-1]
        out[0][..., H : 2 * H] *= 1.01
        return out

    monkeypatch.setattr(mod, module, off_by_one_percent)
    r = gradcheck(cell=cell, layers=1, seq=6)
    failed = {c.name for c in r.checks if not c.passed}
    assert {"layers.0.Wxh", "layers.0.bh"} <= failed
    assert r.max_rel_error > 1e-3


def test_relu_entries_whose_step_crosses_a_kink_are_left_out_not_failed(monkeypatch):
    from charrnn.model import CharRNN

    # a step of 3e-3 moves many pre-activations across 0: those entries compare two slopes
    r = gradcheck(vocab=12, hidden=24, layers=2, batch=3, seq=8, activation="relu", seed=1, eps=3e-3)
    assert r.passed and sum(c.at_kink for c in r.checks) > 10
    assert all(c.checked + c.at_kink == int(np.prod(c.shape)) for c in r.checks)  # every entry: compared or out
    monkeypatch.setattr(CharRNN, "kink_pattern", lambda self, cache: None)  # without the check: they fail
    blind = gradcheck(vocab=12, hidden=24, layers=2, batch=3, seq=8, activation="relu", seed=1, eps=3e-3)
    assert not blind.passed and sum(c.at_kink for c in blind.checks) == 0
    tanh = gradcheck(vocab=12, hidden=24, layers=2, batch=3, seq=8, seed=1, max_checks=40)
    assert sum(c.at_kink for c in tanh.checks) == 0  # smooth cells have no kinks to leave out


def test_an_array_whose_every_entry_crossed_a_kink_fails_instead_of_passing_vacuously():
    r = gradcheck(vocab=5, hidden=6, layers=1, batch=2, seq=4, activation="relu", seed=0, eps=0.5)
    vacuous = [c for c in r.checks if c.checked == 0 and c.at_kink > 0]
    assert vacuous and not any(c.passed for c in vacuous) and not r.passed
