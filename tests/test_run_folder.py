"""A run folder is one run's: other data, a second process, a scheduler's SIGTERM or a read-only disk never
leaves it wrong or a user guessing (issue 18: items 1, 12, 13, 17, 18)."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import long_run_config, one_line_error, start_train, wait_for, write_config
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.data import prepare
from charrnn.errors import CharRNNError
from charrnn.runlock import RunLock, RunLockedError
from charrnn.train import TrainError, train

runner = CliRunner()


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


def test_a_checkpoint_from_before_fingerprints_is_checked_by_its_character_counts(tmp_path):
    text = "the cat sat on the mat and the rat ate the hat. " * 40
    prepare(text, tmp_path / "data")
    cfg = load_config(write_config(tmp_path, tmp_path / "data", max_steps=20, eval_every=10))
    train(cfg)
    last = tmp_path / "run" / "last.npz"
    ck = checkpoint.load(last)
    del ck.meta["data_fingerprint"]  # as charrnn 0.2.0 wrote it
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "format_version")}
    checkpoint.save(last, ck.params, meta, ck.optim_state, ck.h)
    prepare(text.replace("the", "tte"), tmp_path / "data")  # the same characters, other counts
    cfg.train.max_steps = 30
    with pytest.raises(TrainError, match="the same sizes, other content"):
        train(cfg, resume=True)
    prepare(text, tmp_path / "data")
    assert train(cfg, resume=True).step == 30
    assert checkpoint.load(last).meta["data_fingerprint"]["train_chars"] == 1728  # fingerprinted from now on


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
    assert "'\\ufeff'" in one_line_error(r)


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
    cfg = long_run_config(tmp_path, data_dir)
    first = start_train(cfg)
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
    cfg = long_run_config(tmp_path, data_dir)
    proc = start_train(cfg)
    wait_for(tmp_path / "run" / "last.npz")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
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
    message = one_line_error(runner.invoke(app, args))
    assert "Read-only file system" in message and str(tmp_path / "run") in message


def test_a_json_reader_that_goes_away_stops_the_run_with_its_work_saved(tmp_path, data_dir):
    # `train --json | head -1` used to exit 1 silently with last.npz behind the last metrics record
    cfg = long_run_config(tmp_path, data_dir)
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(cfg), "-q", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert '"step": 3' in first and "stdout closed at step" in err and "Traceback" not in err
    records = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert checkpoint.load(tmp_path / "run" / "last.npz").step >= int(records[-1].split(",")[0].split(":")[1])


def test_a_file_system_without_locks_trains_unlocked_and_says_so(tmp_path, data_dir, monkeypatch):
    import charrnn.runlock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(charrnn.runlock.fcntl, "flock", no_flock)
    notes = []
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=4, eval_every=2))
    assert train(cfg, callback=lambda k, i: notes.extend(i["notes"]) if k == "start" else None).step == 4
    assert len(notes) == 1 and "cannot lock files" in notes[0]


def test_a_refused_new_run_leaves_no_empty_folder(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path, data_dir, max_steps=4, init_from=tmp_path / "missing.npz"))
    with pytest.raises(CharRNNError, match=r"missing.npz"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_lock_file_removed_as_a_run_opened_it_is_made_anew(tmp_path, monkeypatch):
    """The folder cleanup removes .lock while holding it; a run that had opened the file just before then
    locks a deleted file: it must notice, and lock a new one, never share the folder with a later run."""
    import charrnn.runlock as runlock

    folder = tmp_path / "f"
    folder.mkdir()
    stale = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)  # opened by a run just before ...
    os.unlink(folder / ".lock")  # ... the holder removed the file and its folder
    folder.rmdir()
    real_open, opened = os.open, []

    def open_once_stale(*args, **kwargs):
        opened.append(args[0])
        return stale if len(opened) == 1 else real_open(*args, **kwargs)

    monkeypatch.setattr(runlock.os, "open", open_once_stale)
    with RunLock(folder) as lock:
        assert len(opened) == 2 and os.path.samestat(os.fstat(lock.fd), os.stat(folder / ".lock"))
        assert f'"pid": {os.getpid()}' in (folder / ".lock").read_text()
        with pytest.raises(RunLockedError):  # and it holds the new file
            RunLock(folder).__enter__()
