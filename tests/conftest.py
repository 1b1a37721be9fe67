"""Shared fixtures: small texts and prepared data folders made by the tests themselves."""

import subprocess
import sys
import textwrap
import time

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


def one_line_error(r, code=1):
    """A CliRunner result that failed with exit `code` and exactly one line on stderr, no traceback: that line."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), repr(r.stderr)  # one line, no blank ones
    return r.stderr


def long_run_config(tmp_path, data_dir):
    """A run that trains until stopped, checkpointing every 3 steps: for the tests that signal real processes."""
    return write_config(tmp_path, data_dir, max_steps=100000, eval_every=3, hidden_size=24, eval_chars=200)


def start_train(cfg, *extra):
    """`charrnn train CFG -q EXTRA...` in a process of its own, stdout and stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(cfg), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(path, timeout=60):
    """Wait until path exists (a run's first checkpoint, say); fail after timeout seconds."""
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)
