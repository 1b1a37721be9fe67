"""Fine-tuning (train.init_from / --init-from): rows matched by character, fresh optimizer, origin recorded."""

import json
import shutil

import numpy as np
import pytest
from conftest import VERSE, write_config
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.data import Vocab, load_dataset, prepare
from charrnn.finetune import FineTuneError, transfer, vocab_axes
from charrnn.model import init_params, param_shapes
from charrnn.train import TrainError, evaluate, train


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_vocabulary_axes_are_the_embeddings_the_output_weights_and_bias(cell):
    assert vocab_axes(8, 2, cell) == {"layers.0.Wxh": 0, "Why": 1, "by": 0}


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_transfer_keeps_each_shared_characters_rows_by_character_not_by_id(cell):
    old_vocab, new_vocab = Vocab(tuple("abcz")), Vocab(tuple("Xabdz"))  # ids shift: a 0 -> 1, z 3 -> 4
    rng = np.random.default_rng(0)
    old = init_params(4, 6, 2, cell, rng=rng, dtype=np.float64)
    fresh = init_params(5, 6, 2, cell, rng=np.random.default_rng(1), dtype=np.float64)
    before = {k: v.copy() for k, v in fresh.items()}
    got = transfer(old, old_vocab, fresh, new_vocab, vocab_axes(6, 2, cell))
    for new_id, old_id in ((1, 0), (2, 1), (4, 3)):  # a, b, z
        np.testing.assert_array_equal(got["layers.0.Wxh"][new_id], old["layers.0.Wxh"][old_id])
        np.testing.assert_array_equal(got["Why"][:, new_id], old["Why"][:, old_id])
        assert got["by"][new_id] == old["by"][old_id]
    for new_id in (0, 3):  # X and d are new: their fresh rows stay
        np.testing.assert_array_equal(got["layers.0.Wxh"][new_id], before["layers.0.Wxh"][new_id])
        np.testing.assert_array_equal(got["Why"][:, new_id], before["Why"][:, new_id])
    for name in param_shapes(5, 6, 2, cell):
        if name not in ("layers.0.Wxh", "Why", "by"):
            np.testing.assert_array_equal(got[name], old[name])  # everything else is copied whole


def _config(folder, data, **keys):
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, data, **keys)


def _pretrain(tmp_path, data_dir, **train_keys):
    cfg = load_config(_config(tmp_path, data_dir, max_steps=40, eval_every=20, **train_keys))
    train(cfg)
    return tmp_path / "run"


def test_a_fine_tuned_run_starts_from_the_checkpoint_on_a_new_text(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)
    new_text = VERSE.replace("e", "E") * 20 + "Zounds! 1 2 3\n"  # loses 'e', gains 'E', 'Z', digits
    prepare(new_text, tmp_path / "new", val_frac=0.2)
    cfg = load_config(_config(tmp_path / "ft", tmp_path / "new", max_steps=20, eval_every=10))
    cfg.train.init_from = str(pre)  # a run folder: its best.npz
    events = []
    result = train(cfg, callback=lambda kind, info: events.append((kind, info)))
    start = next(info for kind, info in events if kind == "start")
    assert start["init_from"].startswith(f"fine-tuning from {pre / 'best.npz'}")
    assert "6 new '!123EZ', 1 dropped 'e'" in start["init_from"]
    evals = [info for kind, info in events if kind == "eval"]
    assert [e["step"] for e in evals] == [0, 10, 20]  # step 0 scores the starting point: the "before"
    assert evals[0]["train_loss"] is None and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.step == 20  # its own step count, not the checkpoint's 40
    ck = checkpoint.load(tmp_path / "ft" / "run" / "last.npz")
    origin = ck.meta["init_from"]
    assert origin["path"] == str(pre / "best.npz") and origin["step"] == 40 and origin["data"] == str(data_dir)
    assert origin["new"] == "".join(sorted(set(new_text) - set(VERSE)))
    assert origin["dropped"] == "e"
    assert ck.config.train.init_from == str(pre)


def test_on_the_same_text_step_0_is_the_checkpoint_exactly_and_the_optimizer_starts_fresh(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)
    old = checkpoint.load(pre / "last.npz")
    assert any(np.any(v) for v in old.optim_state.values())  # the pretrained run's Adam moments
    cfg = load_config(_config(tmp_path / "ft", data_dir, max_steps=20, eval_every=10, seed=5))
    cfg.train.init_from = str(pre / "last.npz")
    step0 = tmp_path / "step0.npz"

    def keep_step_0(kind, info):  # the checkpoint written at step 0, before any update
        if kind == "checkpoint" and info["step"] == 0 and info["path"].endswith("last.npz"):
            shutil.copy(info["path"], step0)

    train(cfg, callback=keep_step_0)
    rec = [json.loads(line) for line in (tmp_path / "ft" / "run" / "metrics.jsonl").read_text().splitlines()]
    ds = load_dataset(data_dir)
    assert [r["step"] for r in rec] == [0, 10, 20]
    assert rec[0]["val_loss"] == pytest.approx(evaluate(old.model(), ds.val, 4, 16), rel=1e-12)
    best = checkpoint.load(step0)  # the run's own optimizer state as it started: all zeros
    assert best.step == 0 and best.meta["init_from"]["step"] == 40
    assert set(best.optim_state) == set(old.optim_state)
    assert not any(np.any(v) for v in best.optim_state.values())
    for k in old.params:
        np.testing.assert_array_equal(best.params[k], old.params[k])


def test_resuming_a_fine_tuned_run_keeps_its_origin_and_is_bit_exact(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)

    def run(folder, steps, resume=False):
        cfg = load_config(_config(folder, data_dir, max_steps=steps, eval_every=10))
        cfg.train.init_from = str(pre)
        return train(cfg, resume=resume)

    run(tmp_path / "a", 30)
    run(tmp_path / "b", 10)
    run(tmp_path / "b", 30, resume=True)
    a, b = (checkpoint.load(tmp_path / x / "run" / "last.npz") for x in "ab")
    assert b.meta["init_from"] == a.meta["init_from"] and b.meta["init_from"]["step"] == 40
    # the resumed run does not score its starting point again
    assert [r["step"] for r in b.meta["history"]] == [r["step"] for r in a.meta["history"]] == [0, 10, 20, 30]
    assert b.meta["evals_since_best"] == a.meta["evals_since_best"]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_a_different_architecture_is_refused_naming_the_keys(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)
    cfg = load_config(_config(tmp_path / "ft", data_dir, hidden_size=8, model={"cell": "gru"}))
    cfg.train.init_from = str(pre)
    with pytest.raises(FineTuneError, match=r"model.cell: checkpoint 'rnn', config 'gru'; model.hidden_size: "
                                            r"checkpoint 16, config 8"):  # fmt: skip
        train(cfg)
    assert not (tmp_path / "ft" / "run").exists()


def test_the_cli_takes_init_from_and_reports_it(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)
    cfg = _config(tmp_path / "ft", data_dir, max_steps=10, eval_every=10)
    r = CliRunner().invoke(app, ["train", str(cfg), "--init-from", str(pre), "--json"])
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["step"] for line in r.stdout.splitlines()] == [0, 10]
    assert f"fine-tuning from {pre / 'best.npz'} (step 40)" in r.stderr
    r = CliRunner().invoke(app, ["train", str(cfg), "--init-from", str(tmp_path / "nope"), "--force"])
    assert r.exit_code == 1 and "no such checkpoint" in r.stderr and r.stdout == ""


def test_a_text_that_shares_no_character_is_refused(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)
    prepare("0123456789" * 300, tmp_path / "digits", val_frac=0.1)
    cfg = load_config(_config(tmp_path / "ft", tmp_path / "digits", max_steps=10, eval_every=10))
    cfg.train.init_from = str(pre)
    with pytest.raises(FineTuneError, match="shares no character"):
        train(cfg)


def test_init_from_a_checkpoint_that_the_new_run_would_replace_is_refused(tmp_path, data_dir):
    pre = _pretrain(tmp_path / "pre", data_dir)  # out_dir tmp_path / "pre" / "run"
    cfg = load_config(_config(tmp_path / "pre", data_dir, max_steps=10, eval_every=10))
    cfg.train.init_from = str(pre)
    with pytest.raises(TrainError, match=r"is a checkpoint of out_dir .* which a new run replaces"):
        train(cfg, force=True)
    assert checkpoint.load(pre / "best.npz").step == 40  # untouched


def test_fine_tuning_starts_from_the_checkpoints_weight_average(tmp_path, data_dir):
    from charrnn.finetune import init_from

    pre = _pretrain(tmp_path / "pre", data_dir, ema_decay=0.9)
    old = checkpoint.load(pre / "best.npz")
    cfg = load_config(_config(tmp_path / "ft", data_dir, max_steps=10))
    fresh = init_params(old.vocab.size, 16, 1, rng=np.random.default_rng(0))
    params, _ = init_from(str(pre), cfg, old.vocab, fresh)  # the same text: every row carries over
    for name in old.params:
        np.testing.assert_array_equal(params[name], old.ema[name])
    assert any(not np.array_equal(old.ema[k], old.params[k]) for k in old.params)
