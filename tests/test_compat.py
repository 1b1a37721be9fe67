"""Checkpoints written by charrnn 0.1.0 (format 1, no cell in the config) load and compute what they computed then.

tests/data/v010-rnn.npz was written by 0.1.0 and v010-rnn.json holds what 0.1.0 computed
from it (tests/data/make_v010_checkpoint.py says how both were made).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import VERSE
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.config import from_dict
from charrnn.data import prepare
from charrnn.sampling import Decoding, generate
from charrnn.train import train

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def expected():
    return json.loads((DATA / "v010-rnn.json").read_text())


def test_a_010_checkpoint_is_read_as_a_vanilla_model_and_computes_the_same():
    model, vocab, ck = checkpoint.load_model(DATA / "v010-rnn.npz")
    assert ck.meta["format_version"] == 1 and "cell" not in ck.meta["config"]["model"]
    assert ck.config.model.cell == "rnn" and ck.config.model.dropout == 0.0
    assert model.cell.name == "rnn" and model.num_layers == 2 and model.hidden_size == 8
    e = expected()
    loss, h = model.loss(np.array(e["x"]), np.array(e["y"]))
    # Not bit for bit: the numbers were made on one machine, and OpenBLAS picks its float32 kernels per CPU
    # (an AVX-512 one gave 3.418861738840739 for 3.418861707051595, 9e-9 apart). A kernel changes the order
    # of the sums in each product, each rounding to float32's 2^-24 = 6e-8: the products here sum at most
    # 8 + V terms, and the loss averages them over 16 steps of a contracting tanh recurrence, so a change of
    # the summation order moves the loss by some 1e-7 at worst. rtol 1e-5 (over 150 float32 roundings) is
    # loose enough for every kernel and tight enough to catch any change of the arithmetic itself.
    assert loss == pytest.approx(e["loss"], rel=1e-5)
    np.testing.assert_allclose(h, np.array(e["h_last"], dtype=np.float32), rtol=1e-5, atol=1e-6)
    # The samples stay exact: a draw is the argmax of logits + noise, and in these draws the winner leads the
    # runner-up by at least 2e-3 (measured), far more than a kernel's rounding moves a logit.
    assert generate(model, vocab, 80, prime="All:", seed=7)[0] == e["sample"]
    batch = generate(model, vocab, 40, prime="All:", seed=7, num_samples=2, decoding=Decoding(top_k=5))
    assert batch == e["sample_batch"]


def test_a_010_checkpoint_resumes_and_evaluates(tmp_path):
    prepare(VERSE * 30, tmp_path / "data", val_frac=0.1)  # the text it was trained on
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(DATA / "v010-rnn.npz", run / "last.npz")
    cfg = from_dict({
        "data": str(tmp_path / "data"), "out_dir": str(run),
        "model": {"hidden_size": 8, "num_layers": 2},
        "train": {"batch_size": 4, "seq_length": 16, "max_steps": 14, "eval_every": 6, "learning_rate": 0.01,
                  "warmup_steps": 2, "sample_chars": 0},
    })  # fmt: skip
    r = train(cfg, resume=True)
    assert r.step == 14
    ck = checkpoint.load(run / "last.npz")
    # rewritten in the current format; without averaged weights that is still version 2, which 0.2.0 reads
    assert ck.meta["format_version"] == 2 and ck.config.model.cell == "rnn" and ck.ema is None
    res = runner.invoke(app, ["eval", "--ckpt", str(DATA / "v010-rnn.npz"), "--data", str(tmp_path / "data"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert np.isfinite(json.loads(res.stdout)["val_loss"])
