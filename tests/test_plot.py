"""`charrnn plot`: curves read from real runs, drawn in the terminal and written to image files."""

import json
import struct
import sys

import pytest
from conftest import write_config
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.config import load_config
from charrnn.plot import PlotError, load_run, load_runs, save_plot
from charrnn.train import train

runner = CliRunner()


@pytest.fixture
def runs(tmp_path, data_dir):
    """Two real runs, 'fast' and 'slow' (different learning rates), 40 steps each."""
    folders = []
    for name, lr in (("fast", 0.01), ("slow", 0.002)):
        (tmp_path / name).mkdir()
        cfg = load_config(write_config(tmp_path / name, data_dir, max_steps=40, eval_every=10, log_every=5,
                                       learning_rate=lr))  # fmt: skip
        train(cfg)
        folders.append(tmp_path / name / "run")
    return folders


def test_curves_come_from_the_train_log_and_the_evaluations(runs):
    c = load_run(str(runs[0]))
    assert c.train_x == [5, 10, 15, 20, 25, 30, 35, 40] and c.val_x == [10, 20, 30, 40]
    evals = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert c.val_y == [r["val_loss"] for r in evals]
    t = load_run(str(runs[0] / "metrics.jsonl"), x="time")  # the metrics file names its run too
    assert t.val_x == [r["elapsed_s"] for r in evals] and t.val_x == sorted(t.val_x)
    assert [c.name for c in load_runs([str(r) for r in runs])] == ["fast/run", "slow/run"]  # told apart


def test_a_run_from_before_the_train_log_is_drawn_from_its_evaluations(runs):
    (runs[0] / "train.jsonl").unlink()
    c = load_run(str(runs[0]))
    assert c.train_x == c.val_x == [10, 20, 30, 40]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_png_and_svg_files_with_every_curve(runs, tmp_path):
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "loss.png", tmp_path / "loss.svg"
    r = runner.invoke(app, ["plot", *map(str, runs), "--out", str(png)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and f"wrote {png}" in r.stderr
    w, h = _png_size(png.read_bytes())
    assert (w, h) == (800, 480)
    r = runner.invoke(app, ["plot", *map(str, runs), "--x", "time", "--out", str(svg)])
    assert r.exit_code == 0, r.stderr
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for label in ("fast/run train", "fast/run val", "slow/run train", "slow/run val", "training time (seconds)"):
        assert label in text  # matplotlib writes text as text in SVG (svg.fonttype 'path' would not)


def test_plot_draws_in_the_terminal_on_stdout(runs):
    pytest.importorskip("plotext")
    r = runner.invoke(app, ["plot", *map(str, runs), "--width", "90", "--height", "20"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "\x1b[" not in r.stdout  # not a terminal: no colour codes
    assert max(len(line) for line in lines) <= 90 and len(lines) >= 18
    for label in ("fast/run train", "slow/run val", "loss (nats/char)", "step"):
        assert label in r.stdout
    assert any(ch in r.stdout for ch in "⠁⠂⠄⡀⢀⠈⠐⠠⣀⠉")  # the training curves, in braille dots


def test_plot_errors_are_one_line(runs, tmp_path, monkeypatch):
    r = runner.invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "no such run folder" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["plot", str(tmp_path)])
    assert r.exit_code == 1 and "is it a run folder" in r.stderr
    r = runner.invoke(app, ["plot", str(runs[0]), "--out", str(tmp_path / "loss.txt")])
    assert r.exit_code == 1 and "name a .png, .svg, .pdf file" in r.stderr
    monkeypatch.setitem(sys.modules, "plotext", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    r = runner.invoke(app, ["plot", str(runs[0])])
    assert r.exit_code == 1 and 'needs plotext: pip install -e ".[plot]"' in r.stderr
    with pytest.raises(PlotError, match="needs matplotlib"):
        save_plot([load_run(str(runs[0]))], str(tmp_path / "x.png"))


def test_the_y_range_cuts_only_the_first_steps_never_a_later_spike_and_is_never_flat():
    from charrnn.plot import Curves, _y_range

    steps = list(range(10, 1010, 10))
    train_y = [4.2, 3.5] + [1.8] * 48 + [6.0] * 5 + [1.8] * 45  # a spike at steps 510-550
    lo, hi = _y_range([Curves("r", steps, train_y, [500, 1000], [1.9, 2.9])])
    assert hi > 6.0 and lo < 1.8  # the spike and the rising validation loss stay in view
    lo, hi = _y_range([Curves("r", steps, [4.2, 3.5] + [1.8] * 98)])
    assert 1.8 < hi < 3.5  # the first 5% of the points (here 5) may lie above: 4.2 and 3.5 are cut
    lo, hi = _y_range([Curves("one", val_x=[0], val_y=[2.4224])])  # a fine-tuned run at step 0 only
    assert hi - lo >= 0.04


def test_a_run_with_only_its_step_0_evaluation_plots(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "ft"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "train_loss": None, "val_loss": 2.42,
                                                   "elapsed_s": 0.0}) + "\n")  # fmt: skip
    c = load_run(str(run))
    assert c.train_x == [] and c.val_y == [2.42]
    save_plot([c], str(tmp_path / "one.svg"))
    assert "ft val" in (tmp_path / "one.svg").read_text()
