"""Shared fixtures: small texts and prepared data folders made by the tests themselves."""

import textwrap

import pytest

from charrnn.data import prepare

VERSE = textwrap.dedent(
    """\
    First Citizen:
    Before we proceed any further, hear me speak.

    All:
    Speak, speak.

    First Citizen:
    You are all resolved rather to die than to famish?
    """
)


@pytest.fixture
def small_text():
    return VERSE * 30


@pytest.fixture
def data_dir(tmp_path, small_text):
    prepare(small_text, tmp_path / "data", val_frac=0.1)
    return tmp_path / "data"


def write_config(tmp_path, data_dir, model=None, **train):
    """A tiny config file; train keys override the defaults below, `model` adds model keys (cell, dropout, ...)."""
    hidden = train.pop("hidden_size", 16) or 16
    t = dict(batch_size=4, seq_length=16, max_steps=40, eval_every=20, learning_rate=0.01, warmup_steps=5,
             sample_chars=0, lr_schedule="constant")  # fmt: skip
    t.update(train)
    lines = [f"data: {data_dir}", f"out_dir: {tmp_path / 'run'}", "model:", f"  hidden_size: {hidden}"]
    lines += [f"  {k}: {v}" for k, v in (model or {}).items()]
    lines += ["train:"]
    lines += [f"  {k}: {v}" for k, v in t.items()]
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
