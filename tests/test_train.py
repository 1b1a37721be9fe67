"""The training loop: batching layout, evaluation coverage, checkpoints, resume, guards."""

import json
import math
import os
import warnings

import numpy as np
import pytest
from conftest import write_config

from charrnn import checkpoint
from charrnn.config import load_config
from charrnn.model import param_shapes
from charrnn.train import TrainError, eval_checkpoint, eval_windows, train, train_window, windows_per_epoch


def test_windows_continue_each_stream():
    ids = np.arange(101)
    B, T = 4, 5
    S = 100 // B  # 25 characters per stream
    assert windows_per_epoch(len(ids), B, T) == 5
    x0, y0 = train_window(ids, B, T, 0)
    x1, _y1 = train_window(ids, B, T, 1)
    np.testing.assert_array_equal(x0[:, 0], np.arange(B) * S)  # streams start S apart
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # the next window continues each stream
    np.testing.assert_array_equal(y0, x0 + 1)  # targets are the next characters


def test_an_offset_shifts_every_stream_and_wraps_around_the_text():
    ids = np.arange(101)  # 100 inputs, read as a circle
    x, y = train_window(ids, 4, 5, 4, offset=10)  # window 4 of streams starting at 10, 35, 60, 85
    np.testing.assert_array_equal(x[:, 0], [30, 55, 80, 5])  # the last stream wrapped past the end
    np.testing.assert_array_equal(y, x + 1)


@pytest.mark.parametrize("n, B, T", [(101, 4, 5), (100, 3, 7), (11, 16, 4), (50, 1, 100)])
def test_evaluation_scores_every_target_exactly_once(n, B, T):
    ids = np.arange(n)
    seen = []
    for x, y, mask in eval_windows(ids, B, T):
        np.testing.assert_array_equal(y, np.minimum(x + 1, n - 1))
        seen.extend(y[mask].tolist())
    assert sorted(seen) == list(range(1, n))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_learns_and_writes_checkpoints(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=60, eval_every=20))
    events = []
    result = train(cfg, callback=lambda kind, info: events.append(kind))
    run = tmp_path / "run"
    assert result.status == "done" and result.step == 60
    assert (run / "last.npz").is_file() and (run / "best.npz").is_file()
    recs = records(run)
    assert [r["step"] for r in recs] == [20, 40, 60]
    assert (
        recs[-1]["val_loss"]
        < recs[0]["val_loss"]
        < np.log(len(json.loads((data_dir / "vocab.json").read_text())["chars"]))
    )
    assert set(recs[0]) >= {"step", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s"}
    assert events[0] == "start" and events[-1] == "end" and events.count("eval") == 3
    ck = checkpoint.load(run / "last.npz")
    assert ck.step == 60 and ck.meta["config"]["train"]["max_steps"] == 60
    V = len(json.loads((data_dir / "vocab.json").read_text())["chars"])
    assert {k: v.shape for k, v in ck.params.items()} == param_shapes(V, 16, 1)
    assert ck.h is not None and ck.h.shape == (1, 4, 16)
    assert set(ck.optim_state) == {f"{s}.{k}" for s in ("m", "v") for k in ck.params}
    assert len(ck.meta["history"]) == 3 and ck.meta["rng"]["bit_generator"] == "PCG64"
    assert ck.meta["position"] == {"epoch": 0, "window": 60, "offset": 0}
    # past the first epoch the streams start at a random offset
    cfg.train.max_steps = 70
    train(cfg, resume=True)
    pos = checkpoint.load(run / "last.npz").meta["position"]
    assert pos["epoch"] == 1 and pos["window"] == 70 - 62 and 0 < pos["offset"] < 998  # 62 windows of 16 per epoch


def params_of(path):
    return checkpoint.load(path).params


@pytest.mark.parametrize(
    "schedule, batch, seq",
    [("constant", 4, 16), ("cosine", 4, 16), ("cosine", 8, 64)],  # the last wraps 5 epochs
)
def test_resume_is_exact(tmp_path, data_dir, schedule, batch, seq):
    kw = dict(max_steps=30, eval_every=7, lr_schedule=schedule, batch_size=batch, seq_length=seq)
    # one run of 2N steps ...
    a = tmp_path / "a"
    a.mkdir()
    cfg_a = load_config(write_config(a, data_dir, **kw))
    train(cfg_a)
    # ... equals N steps, stop, resume, N more steps (the interruption lands mid-epoch and between evaluations)
    b = tmp_path / "b"
    b.mkdir()
    cfg_b = load_config(write_config(b, data_dir, **kw))
    steps = []
    r1 = train(cfg_b, callback=lambda k, i: steps.append(i["step"]) if k == "step" else None,
               should_stop=lambda: len(steps) >= 15)  # fmt: skip
    assert r1.status == "interrupted" and r1.step == 15
    assert checkpoint.load(b / "run" / "last.npz").step == 15
    r2 = train(cfg_b, resume=True)
    assert r2.step == 30
    pa, pb = params_of(a / "run" / "last.npz"), params_of(b / "run" / "last.npz")
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert [r["val_loss"] for r in records(a / "run")] == [r["val_loss"] for r in records(b / "run")]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gated_cells_with_dropout_learn_and_resume_exactly(tmp_path, data_dir, cell):
    model = {"cell": cell, "dropout": 0.3, "num_layers": 2}
    kw = dict(max_steps=24, eval_every=8, lr_schedule="cosine", batch_size=4, seq_length=16, learning_rate=0.02)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ra = train(load_config(write_config(a, data_dir, model, **kw)))
    recs = records(a / "run")
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    cfg_b = load_config(write_config(b, data_dir, model, **kw))
    steps = []
    train(cfg_b, callback=lambda k, i: steps.append(i["step"]) if k == "step" else None,
          should_stop=lambda: len(steps) >= 11)  # fmt: skip
    rb = train(cfg_b, resume=True)
    assert ra.step == rb.step == 24
    pa, pb = params_of(a / "run" / "last.npz"), params_of(b / "run" / "last.npz")
    assert set(pa) == set(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
    ck = checkpoint.load(a / "run" / "last.npz")
    assert ck.config.model.cell == cell and ck.config.model.dropout == 0.3
    assert ck.h.shape == (2, 4, 32 if cell == "lstm" else 16)


def test_weight_averaging_and_the_regularisers_resume_exactly(tmp_path, data_dir):
    model = {"cell": "lstm", "dropout": 0.3, "num_layers": 2, "variational_dropout": "true", "weight_drop": 0.3,
             "embed_dropout": 0.1}  # fmt: skip
    kw = dict(max_steps=24, eval_every=8, lr_schedule="cosine", learning_rate=0.02, ema_decay=0.99)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    train(load_config(write_config(a, data_dir, model, **kw)))
    cfg_b = load_config(write_config(b, data_dir, model, **kw))
    steps = []
    train(cfg_b, callback=lambda k, i: steps.append(i["step"]) if k == "step" else None,
          should_stop=lambda: len(steps) >= 11)  # fmt: skip
    train(cfg_b, resume=True)
    ca, cb = checkpoint.load(a / "run" / "last.npz"), checkpoint.load(b / "run" / "last.npz")
    for name in ca.params:
        np.testing.assert_array_equal(ca.params[name], cb.params[name])
        np.testing.assert_array_equal(ca.ema[name], cb.ema[name])
    assert records(a / "run") == [{**r, "elapsed_s": x["elapsed_s"], "chars_per_sec": x["chars_per_sec"]}
                                  for r, x in zip(records(b / "run"), records(a / "run"), strict=True)]  # fmt: skip
    assert ca.meta["format_version"] == 3 and ca.config.model.weight_drop == 0.3


def test_the_averaged_weights_are_what_is_evaluated_kept_and_sampled(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=30, eval_every=10, ema_decay=0.9))
    r = train(cfg)
    best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert best.ema is not None and any(not np.array_equal(best.ema[k], best.params[k]) for k in best.params)
    recorded = next(rec["val_loss"] for rec in records(tmp_path / "run") if rec["step"] == best.step)
    assert recorded == r.best_val == eval_checkpoint(str(tmp_path / "run"))["val_loss"]  # best.npz, averaged
    trained = eval_checkpoint(str(tmp_path / "run"), averaged=False)
    assert trained["weights"] == "trained" and trained["val_loss"] != recorded
    for name in best.params:
        np.testing.assert_array_equal(best.model().params[name], best.ema[name])
        np.testing.assert_array_equal(best.model(averaged=False).params[name], best.params[name])
    # sample draws from the average too (and from the trained weights when asked)
    from charrnn.model import CharRNN
    from charrnn.sampling import generate, open_run

    text = open_run(str(tmp_path / "run"), 60, seed=3).result()
    assert text["weights"] == "averaged"
    assert text["samples"] == generate(CharRNN.from_params(best.ema), best.vocab, 60, seed=3)
    assert open_run(str(tmp_path / "run"), 60, seed=3, averaged=False).result()["samples"] == generate(
        CharRNN.from_params(best.params), best.vocab, 60, seed=3
    )


def test_switching_the_average_on_or_off_at_a_resume_says_so(tmp_path, data_dir):
    notes = []

    def run(resume, **keys):
        cfg = load_config(write_config(tmp_path, data_dir, max_steps=keys.pop("max_steps"), eval_every=10, **keys))
        train(cfg, resume=resume, callback=lambda k, i: notes.extend(i["notes"]) if k == "start" else None)
        return checkpoint.load(tmp_path / "run" / "last.npz")

    plain = run(False, max_steps=10)
    assert plain.ema is None and plain.meta["format_version"] == 2
    on = run(True, max_steps=20, ema_decay=0.9)  # the average starts at the resumed weights
    assert on.ema is not None and on.meta["format_version"] == 3
    assert any("the weight average starts here, from the step-10 weights" in n for n in notes)
    off = run(True, max_steps=30)
    assert off.ema is None and off.meta["format_version"] == 2
    assert any("the checkpoint's weight average is dropped" in n for n in notes)


def test_the_average_follows_the_parameters_with_a_warm_up():
    from charrnn.train import ema_rate, update_ema

    assert ema_rate(1, 0.999) == 2 / 11 and ema_rate(8, 0.999) == 0.5 and ema_rate(10**6, 0.999) == 0.999
    p = {"w": np.full(3, 2.0)}
    ema = {"w": np.zeros(3)}
    update_ema(ema, p, 1, 0.5)  # d = min(0.5, 2/11): 2/11 * 0 + 9/11 * 2
    np.testing.assert_allclose(ema["w"], 18 / 11)
    for t in range(2, 60):
        update_ema(ema, p, t, 0.5, scratch={"w": np.empty(3)})
    np.testing.assert_allclose(ema["w"], 2.0)


def test_evaluating_more_often_changes_no_parameter(tmp_path, data_dir):
    # evaluation and samples draw nothing from the run's generator, which also draws the dropout masks
    model = {"cell": "lstm", "dropout": 0.5}
    runs = []
    for every, chars in ((5, 30), (20, 0)):
        d = tmp_path / f"e{every}"
        d.mkdir()
        train(load_config(write_config(d, data_dir, model, max_steps=20, eval_every=every, sample_chars=chars)))
        runs.append(params_of(d / "run" / "last.npz"))
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_resume_with_a_longer_max_steps_continues(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=20))
    train(cfg)
    cfg.train.max_steps = 40
    r = train(cfg, resume=True)
    assert r.step == 40


def test_a_new_run_does_not_overwrite_an_old_one(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=5))
    train(cfg)
    with pytest.raises(TrainError, match="--resume"):
        train(cfg)
    assert train(cfg, force=True).step == 5


def test_resume_refuses_a_different_architecture(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=5))
    with pytest.raises(TrainError, match="nothing to resume"):
        train(cfg, resume=True)
    train(cfg)
    cfg.model.hidden_size = 8
    with pytest.raises(TrainError, match="hidden_size: checkpoint 16, config 8"):
        train(cfg, resume=True)
    cfg.model.hidden_size, cfg.model.cell = 16, "lstm"
    with pytest.raises(TrainError, match=r"model.cell: checkpoint 'rnn', config 'lstm'"):
        train(cfg, resume=True)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=40, eval_every=10))
    import charrnn.train as train_module

    real = train_module.clip_by_global_norm
    calls = []

    def poisoned(grads, max_norm):
        calls.append(1)
        if len(calls) == 25:
            grads["Why"][...] = np.nan
        return real(grads, max_norm)

    monkeypatch.setattr(train_module, "clip_by_global_norm", poisoned)
    with pytest.raises(TrainError, match=r"at step 25.*learning_rate.*checkpoint \(step 20\) is kept in .*last.npz"):
        train(cfg)
    ck = checkpoint.load(tmp_path / "run" / "last.npz")
    assert ck.step == 20  # the last evaluation's checkpoint survives, with finite parameters


def test_divergence_before_the_first_checkpoint_says_none_was_written_and_warns_nothing(tmp_path, data_dir):
    # unbounded relu units, no clipping and an absurd rate: the loss overflows at step 2
    cfg = load_config(write_config(tmp_path, data_dir, model={"activation": "relu"}, max_steps=40, eval_every=20,
                                   learning_rate=1e4, grad_clip=0, optimizer="sgd", warmup_steps=0))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainError) as e:
            train(cfg)
    message = str(e.value)
    assert "no checkpoint was written yet (the first comes at step 20)" in message
    assert "at step 2 " in message and "set train.grad_clip" in message and "kept" not in message
    assert [str(w.message) for w in caught] == []  # numpy's overflow warnings would precede the one-line error
    assert not (tmp_path / "run" / "last.npz").exists()


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, data_dir, monkeypatch):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=20, eval_every=10))
    train(cfg)
    last = tmp_path / "run" / "last.npz"
    before = last.read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", crash)
    cfg.train.max_steps = 30
    with pytest.raises(checkpoint.CheckpointError, match="No space left"):
        train(cfg, resume=True)
    assert last.read_bytes() == before
    assert checkpoint.load(last).step == 20
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]  # no temporary file left behind


def test_early_stopping_and_time_limit(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=400, eval_every=2, patience=1, learning_rate=1.0))
    r = train(cfg)
    assert r.status == "early_stop" and r.step < 400
    cfg2 = load_config(write_config(tmp_path / "..", data_dir, max_steps=10**6, time_limit=0.5))
    cfg2.out_dir = str(tmp_path / "t")
    r2 = train(cfg2)
    assert r2.status == "time_limit" and r2.step >= 1  # stopped by the clock, long before max_steps
    assert checkpoint.load(tmp_path / "t" / "last.npz").step == r2.step  # and saved where it stopped


def test_too_long_windows_are_refused(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, seq_length=5000))
    with pytest.raises(TrainError, match="too short"):
        train(cfg)


def test_relu_with_the_default_rates_trains_without_blowing_up(tmp_path, data_dir):
    # the identity recurrence (IRNN) that relu started from summed the inputs of every carried window:
    # this run's logged loss went 12, 120, 1152 before recovering; the contraction keeps it below log V
    cfg = load_config(write_config(tmp_path, data_dir, model={"activation": "relu"}, hidden_size=64, batch_size=8,
                                   seq_length=32, max_steps=60, eval_every=30, learning_rate=2e-3,
                                   lr_schedule="cosine", warmup_steps=10, log_every=5))  # fmt: skip
    train(cfg)
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert len(losses) == 12
    assert max(losses) < 4.0 and losses[-1] < 2.2


def test_train_log_holds_the_mean_loss_of_every_log_every_steps_and_is_trimmed_on_resume(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=30, eval_every=10, log_every=4))
    losses = []
    train(cfg, callback=lambda kind, info: losses.append(info["loss"]) if kind == "step" else None)
    log = tmp_path / "run" / "train.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20, 24, 28, 30]  # the last two steps close the log
    assert rows[-1]["steps"] == 2 and rows[-1]["train_loss"] == pytest.approx(np.mean(losses[28:]))
    assert rows[1]["train_loss"] == pytest.approx(np.mean(losses[4:8]))
    assert {"lr", "grad_norm", "chars_per_sec", "elapsed_s"} <= set(rows[0])
    # a run killed at step 27 after checkpointing step 20 logged steps 24; resuming must not log them twice
    full = log.read_text()
    ck20 = tmp_path / "ck20.npz"
    cfg.train.max_steps = 20
    train(cfg, force=True)
    (tmp_path / "run" / "last.npz").replace(ck20)
    log.write_text(full[: full.index('{"step": 28')] + '{"step": 2')  # steps 4..24 and a torn line
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({**records(tmp_path / "run")[-1], "step": 30}) + "\n")
    ck20.replace(tmp_path / "run" / "last.npz")
    cfg.train.max_steps = 30
    train(cfg, resume=True)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [r["step"] for r in records(tmp_path / "run")] == [10, 20, 30]  # the stray step-30 record went


def test_a_stop_between_two_log_records_logs_its_steps_and_the_resumed_run_the_rest(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=12, eval_every=100, log_every=4))
    losses = []
    on_step = lambda kind, info: losses.append(info["loss"]) if kind == "step" else None  # noqa: E731
    r = train(cfg, callback=on_step, should_stop=lambda: len(losses) >= 6)  # Ctrl-C after step 6
    assert r.status == "interrupted" and r.step == 6
    train(cfg, resume=True, callback=on_step)
    rows = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps"]) for r in rows] == [(4, 4), (6, 2), (8, 2), (12, 4)]
    assert rows[2]["train_loss"] == pytest.approx(np.mean(losses[6:8]))  # steps 7 and 8 only


def test_a_new_run_starts_its_logs_afresh(tmp_path, data_dir):
    # a run killed before its first checkpoint leaves train.jsonl (and perhaps more) but no last.npz
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.jsonl").write_text('{"step": 6278, "train_loss": 9.0}\n')
    (run / "metrics.jsonl").write_text('{"step": 5000, "val_loss": 9.0}\n')
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=10, eval_every=10, log_every=5))
    train(cfg)
    assert [json.loads(line)["step"] for line in (run / "train.jsonl").read_text().splitlines()] == [5, 10]
    assert [r["step"] for r in records(run)] == [10]


# ------------------------------------------------------------------------- issue 18: numbers that mean what they say


def test_the_training_loss_of_an_evaluation_is_the_mean_of_the_steps_since_the_previous_one(tmp_path, data_dir):
    # it was an EMA (decay 0.98, seeded with the first loss): 3.17 / 2.01 / 1.33 at steps 20 / 60 / 100 where the
    # steps' mean was 2.14 / 0.87 / 0.76, so it read as overfitting that was not there
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=30, eval_every=10, log_every=5))
    losses, shown = [], []

    def on(kind, info):
        if kind == "step":
            losses.append(info["loss"])
            shown.append(info["smooth_loss"])

    train(cfg, callback=on)
    recs = records(tmp_path / "run")
    for i, r in enumerate(recs):
        assert r["train_steps"] == 10
        assert r["train_loss"] == pytest.approx(np.mean(losses[10 * i : 10 * i + 10]), rel=1e-12)
    log = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert recs[1]["train_loss"] == pytest.approx(np.mean([r["train_loss"] for r in log[2:4]]))  # the same number
    # the live display's loss is a debiased average of recent steps: at step 1 it is that step's loss
    assert shown[0] == pytest.approx(losses[0])
    assert abs(shown[9] - np.mean(losses[5:10])) < abs(shown[9] - losses[0])


def test_a_stopped_and_resumed_run_reports_the_same_training_loss(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=20, eval_every=10))
    train(cfg)
    whole = records(tmp_path / "run")
    steps = []
    train(
        cfg,
        force=True,
        should_stop=lambda: len(steps) >= 14,
        callback=lambda k, i: steps.append(1) if k == "step" else None,
    )  # stopped mid-interval, at step 14
    train(cfg, resume=True)
    assert [r["train_loss"] for r in records(tmp_path / "run")] == [r["train_loss"] for r in whole]


def test_a_one_character_text_shows_zero_loss_never_negative(tmp_path):
    from charrnn.data import prepare

    prepare("a" * 400, tmp_path / "data")
    cfg = load_config(write_config(tmp_path, tmp_path / "data", max_steps=20, eval_every=10, log_every=5))
    train(cfg)
    for r in records(tmp_path / "run"):  # the model learns "always a": the loss is 0 up to rounding, never below
        for loss in (r["val_loss"], r["train_loss"]):
            assert 0 <= loss < 1e-3 and math.copysign(1, loss) == 1
    for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines():
        assert math.copysign(1, json.loads(line)["train_loss"]) == 1


def test_the_validation_length_limit_is_stated_as_it_is(tmp_path):
    from charrnn.data import prepare

    prepare("abcdefghij" * 15, tmp_path / "data", val_frac=0.1)  # 135 / 15 characters
    ok = load_config(write_config(tmp_path, tmp_path / "data", seq_length=14, batch_size=2, max_steps=2))
    assert train(ok).step == 2
    bad = load_config(write_config(tmp_path, tmp_path / "data", seq_length=15, batch_size=2, max_steps=2))
    with pytest.raises(TrainError, match=r"seq_length 15 needs a validation split of at least 16 characters .* "
                                         r"it has 15: use seq_length <= 14"):  # fmt: skip
        train(bad, force=True)
    long = load_config(write_config(tmp_path, tmp_path / "data", seq_length=14, batch_size=10, max_steps=2))
    with pytest.raises(TrainError, match=r"\(135 characters\) is too short .* needs at least 141"):
        train(long, force=True)


def test_extending_a_finished_schedule_says_what_the_rate_now_does(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=20, eval_every=10, lr_schedule="cosine",
                                   warmup_steps=2, learning_rate=1e-2))  # fmt: skip
    train(cfg)
    cfg.train.max_steps = 40
    notes = []
    train(cfg, resume=True, callback=lambda k, i: notes.extend(i["notes"]) if k == "start" else None)
    assert len(notes) == 1
    # cosine from 1e-2 to 1e-3 over steps 2..20 ended at 1e-3; over 2..40, step 20 is at 5.87e-3
    assert "train.max_steps 20 -> 40" in notes[0] and "step 21 trains at 5.87e-03" in notes[0]
    assert "gave 1.00e-03" in notes[0]
    assert notes[0].endswith("--set train.lr_schedule=constant --set train.learning_rate=0.001")  # the old schedule's
    cfg.train.max_steps = 50  # the same schedule family, constant: nothing changes at the step it resumes
    cfg.train.lr_schedule = "constant"
    notes.clear()
    train(cfg, resume=True, callback=lambda k, i: notes.extend(i["notes"]) if k == "start" else None)
    assert len(notes) == 1  # cosine -> constant changed the rate
    notes.clear()
    cfg.train.max_steps = 60
    train(cfg, resume=True, callback=lambda k, i: notes.extend(i["notes"]) if k == "start" else None)
    assert notes == []  # constant, longer: the rate goes on as it was
