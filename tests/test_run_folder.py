"""A run folder is one run's: other data, a second process, a scheduler's SIGTERM or a read-only disk never
leaves it wrong or a user guessing (issue 18: items 1, 12, 13, 17, 18)."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import write_config
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.data import prepare
from charrnn.runlock import RunLock, RunLockedError
from charrnn.train import TrainError, train

runner = CliRunner()


def one_line(r, code=1):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, repr(r.stderr)
    return r.stderr


def start(cfg, *extra):
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(cfg), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(path, timeout=60):
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


# ----------------------------------------------------------------------------- item 1: resuming on other data


def test_resuming_on_another_text_with_the_same_characters_is_refused(tmp_path):
    text = "the cat sat on the mat and the rat ate the hat. " * 40
    prepare(text, tmp_path / "data")
    cfg = load_config(write_config(tmp_path, tmp_path / "data", max_steps=60, eval_every=20, patience=2))
    train(cfg)
    # another text, the same characters, prepared into the same folder: every command used to exit 0, and the
    # resumed run stopped on patience against the old text's best loss, keeping the old text's best.npz
    prepare("".join(reversed(text)), tmp_path / "data")
    cfg.train.max_steps = 200
    with pytest.raises(TrainError) as e:
        train(cfg, resume=True)
    message = str(e.value)
    assert "no longer holds the text this run trained on" in message and "the same sizes, other content" in message
    assert "--init-from" in message
    assert checkpoint.load(tmp_path / "run" / "last.npz").step == 60  # nothing was touched
    # a different size is named
    prepare(text[:-100], tmp_path / "data")
    with pytest.raises(TrainError, match=r"train split 1,728 characters then, 1,638 now"):
        train(cfg, resume=True)
    # the same text prepared again resumes
    prepare(text, tmp_path / "data")
    assert train(cfg, resume=True).step > 60


def test_fine_tuning_is_the_way_to_go_on_with_another_text(tmp_path):
    prepare("abc abd abe " * 100, tmp_path / "a")
    prepare("abe abd abc " * 120, tmp_path / "b")
    cfg = load_config(write_config(tmp_path, tmp_path / "a", max_steps=20, eval_every=10))
    train(cfg)
    ft = load_config(write_config(tmp_path / "..", tmp_path / "b", max_steps=20, eval_every=10))
    ft.out_dir, ft.train.init_from = str(tmp_path / "ft"), str(tmp_path / "run")
    train(ft)
    ft.train.max_steps = 30
    assert train(ft, resume=True).step == 30  # its own data: resumes


def test_a_vocabulary_mismatch_names_the_characters(tmp_path):
    prepare("\ufeffhello world, hello there\n" * 30, tmp_path / "data")
    cfg = load_config(write_config(tmp_path, tmp_path / "data", max_steps=10, eval_every=10))
    train(cfg)
    prepare("hello world, hello there\n" * 30, tmp_path / "data")
    with pytest.raises(TrainError, match=r"the checkpoint has '\\ufeff' that the data lacks"):
        train(cfg, resume=True)
    r = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "run")])
    assert "'\\ufeff'" in one_line(r)


# ----------------------------------------------------------------------------- items 12, 18: one run per folder


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=10, eval_every=5))
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):  # as another process would hold it
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=rf"{tmp_path / 'run'} is in use by another charrnn run "
                                                     rf"\(pid {os.getpid()}, since "):  # fmt: skip
                train(cfg, resume=resume, force=True) if not resume else train(cfg, resume=True)
    assert sorted(os.listdir(tmp_path / "run")) == [".lock"]  # the refused runs wrote nothing
    assert train(cfg).step == 10  # released: the next run goes ahead


def test_two_processes_one_folder_the_second_is_refused_and_the_first_unharmed(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, max_steps=100000, eval_every=3, hidden_size=24, eval_chars=200)
    first = start(cfg)
    wait_for(tmp_path / "run" / "last.npz")
    for extra in ((), ("--resume",), ("--force",)):  # the same command a second later, a resume, a restart
        r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(cfg), "-q", *extra],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and f"(pid {first.pid}" in r.stderr, r.stderr
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGKILL)  # killed outright: the kernel releases the lock with its descriptors
    first.wait()
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(cfg), "-q", "--resume",
                        "--set", "train.max_steps=1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- item 13: SIGTERM


def test_sigterm_saves_and_exits_143_with_the_resume_command(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, max_steps=100000, eval_every=3, hidden_size=24, eval_chars=200)
    proc = start(cfg)
    wait_for(tmp_path / "run" / "last.npz")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped by SIGTERM at step" in err
    step = checkpoint.load(tmp_path / "run" / "last.npz").step
    assert f"at step {step};" in err and err.rstrip().endswith("--resume")


# ----------------------------------------------------------------------------- item 17: every file operation


READ_ONLY = OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.mark.parametrize("fail", ["unlink", "lock", "append", "trim"])
def test_a_read_only_run_folder_is_one_line_whatever_operation_fails(tmp_path, data_dir, monkeypatch, fail):
    """Each file operation of a run, failing as on a read-only file system, is one line naming the file."""
    import pathlib

    import charrnn.runlock
    import charrnn.train

    cfg_path = write_config(tmp_path, data_dir, max_steps=6, eval_every=3)
    assert runner.invoke(app, ["train", str(cfg_path), "-q"]).exit_code == 0
    args = ["train", str(cfg_path), "-q"] + (["--resume", "--set", "train.max_steps=9"] if fail == "trim" else
                                             ["--force"])  # fmt: skip

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "x"))

    if fail == "unlink":  # the traceback users saw: a new run clearing the old run's files
        monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    elif fail == "lock":
        monkeypatch.setattr(charrnn.runlock.os, "open", refuse)
    elif fail == "append":
        monkeypatch.setattr(charrnn.train, "open", refuse, raising=False)
    else:  # a resumed run cutting a record past its checkpoint from the log
        with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
            f.write('{"step": 99}\n')
        monkeypatch.setattr(charrnn.train, "atomic_write", refuse)
    message = one_line(runner.invoke(app, args))
    assert "Read-only file system" in message and str(tmp_path / "run") in message
