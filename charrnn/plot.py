"""Loss curves of training runs, drawn in the terminal (plotext) or to an image file (matplotlib).

A run folder holds two logs that the training loop appends to: train.jsonl, the
mean training loss over every train.log_every steps, and metrics.jsonl, one
record per evaluation (the validation loss). Runs written before train.jsonl
existed are drawn from metrics.jsonl alone (its smoothed training loss at each
evaluation). The x axis is the step or the training time (evaluations excluded,
as in the records).

Both libraries are optional extras (`pip install -e ".[plot]"`), imported only
here and only when a plot is drawn: plotext because it draws with Unicode braille
dots and needs nothing else, matplotlib because it is the reference for PNG, SVG
and PDF. A missing one is a PlotError naming the extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CharRNNError
from .train import METRICS_FILE as METRICS
from .train import TRAIN_LOG

PLOT_EXTRA = 'pip install -e ".[plot]"'
X_KEYS = {"step": "step", "time": "elapsed_s"}
FILE_FORMATS = (".png", ".svg", ".pdf")
VAL_MARKERS = ("•", "x", "+", "o", "*", "#")  # the validation points, one per run: told apart without colour
COLORS = ("blue", "red", "green", "magenta", "cyan", "orange", "yellow", "gray")  # one per run, in order


class PlotError(CharRNNError):
    """Nothing to draw, or no library to draw with."""


@dataclass
class Curves:
    """One run's training and validation loss (nats/char) against x."""

    name: str
    train_x: list[float] = field(default_factory=list)
    train_y: list[float] = field(default_factory=list)
    val_x: list[float] = field(default_factory=list)
    val_y: list[float] = field(default_factory=list)


def _records(path: Path) -> list[dict]:
    """The JSON lines of path (a torn last line, from a run killed while writing, is skipped)."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror}") from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _run_folder(path: str) -> Path:
    """A run folder, given itself or one of its files (its metrics.jsonl)."""
    p = Path(path)
    return p.parent if p.is_file() else p


def load_run(path: str, x: str = "step", name: str | None = None) -> Curves:
    """The curves of a run folder (or of the folder holding the metrics.jsonl given)."""
    folder = _run_folder(path)
    if not folder.is_dir():
        raise PlotError(f"no such run folder: {path}")
    metrics, train_log = folder / METRICS, folder / TRAIN_LOG
    if not metrics.is_file() and not train_log.is_file():
        raise PlotError(f"{folder} holds no {METRICS} or {TRAIN_LOG}: is it a run folder (out_dir)?")
    key = X_KEYS[x]
    c = Curves(name or folder.name)
    evals = _records(metrics) if metrics.is_file() else []
    train_rows = _records(train_log) if train_log.is_file() else [r for r in evals if r.get("train_loss") is not None]
    for r in train_rows:
        if r.get(key) is not None and r.get("train_loss") is not None:
            c.train_x.append(float(r[key]))
            c.train_y.append(float(r["train_loss"]))
    for r in evals:
        if r.get(key) is not None and r.get("val_loss") is not None:
            c.val_x.append(float(r[key]))
            c.val_y.append(float(r["val_loss"]))
    if not c.train_x and not c.val_x:
        raise PlotError(f"{folder} has no records yet (the first is written after train.log_every steps)")
    return c


def load_runs(paths: list[str], x: str = "step") -> list[Curves]:
    """Every run's curves, named by folder; folders of the same name are told apart by their parent."""
    folders = [_run_folder(p).resolve() for p in paths]
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.parent.name}/{f.name}" for f in folders]
    return [load_run(p, x, n) for p, n in zip(paths, names, strict=True)]


def _axis_label(x: str, seconds: float) -> tuple[str, float]:
    """The x-axis label and the divisor that turns seconds into its unit."""
    if x == "step":
        return "step", 1.0
    if seconds >= 2 * 3600:
        return "training time (hours)", 3600.0
    if seconds >= 2 * 60:
        return "training time (minutes)", 60.0
    return "training time (seconds)", 1.0


def _span(curves: list[Curves]) -> float:
    return max([v for c in curves for v in c.train_x + c.val_x] or [0.0])


def _y_range(curves: list[Curves]) -> tuple[float, float]:
    """The loss range to draw: every validation point and every training point after the first 5% of
    each run's, so that only the first steps (log V nats and more) can lie above it and be cut,
    never a later spike."""
    kept = [v for c in curves for v in c.val_y + c.train_y[len(c.train_y) // 20 :]]
    lo, hi = min(kept), max(kept)
    pad = max(0.04 * (hi - lo), 0.02)  # a flat curve or a single point still gets a readable axis
    return lo - pad, hi + pad


def terminal_plot(curves: list[Curves], x: str = "step", width: int = 100, height: int = 24,
                  color: bool = True) -> str:  # fmt: skip
    """The curves as text for a terminal: training loss as a braille line, validation as dots."""
    try:
        import plotext as plt
    except ImportError:
        raise PlotError(f"plotting in the terminal needs plotext: {PLOT_EXTRA}") from None
    span = _span(curves)
    label, div = _axis_label(x, span)
    _lo, hi = _y_range(curves)
    f = plt.figure
    f.clear()
    f.theme("simple" if color else "colorless")
    f.plot_size(width, height)
    for i, c in enumerate(curves):
        hue = COLORS[i % len(COLORS)]
        # plotext has no y limits: the first steps above the range are left out (the curve enters from the top)
        train = [(v / div, y) for v, y in zip(c.train_x, c.train_y, strict=True) if y <= hi]
        if train:
            s = f.signal(*map(list, zip(*train, strict=True)), marker=plt.marker("braille", hue))
            s.lines()
            s.label(f"{c.name} train")
            f.draw(s)
        if c.val_x:
            s = f.signal([v / div for v in c.val_x], c.val_y, marker=plt.marker(VAL_MARKERS[i % len(VAL_MARKERS)], hue))
            s.label(f"{c.name} val")
            f.draw(s)
    f.legend(x=span / div, y=hi, ha="right", va="top", relative=True)  # top right: curves fall from the left
    f.title("loss (nats/char)")
    f.label(label, axis="x")
    text = f.build()
    f.clear()
    return text if color else plt.uncolorize(text)


def save_plot(curves: list[Curves], path: str, x: str = "step") -> None:
    """The curves as an image; the format follows the file's suffix (.png, .svg or .pdf)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise PlotError(f"cannot tell the image format of {path}: name a {', '.join(FILE_FORMATS)} file")
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot, no global backend or state
    except ImportError:
        raise PlotError(f"plotting to a file needs matplotlib: {PLOT_EXTRA}") from None
    label, div = _axis_label(x, _span(curves))
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(curves):
        hue = f"C{i % 10}"
        if c.train_x:
            ax.plot([v / div for v in c.train_x], c.train_y, color=hue, linewidth=1, alpha=0.6,
                    label=f"{c.name} train")  # fmt: skip
        if c.val_x:
            ax.plot([v / div for v in c.val_x], c.val_y, color=hue, linewidth=2, marker="o", markersize=4,
                    label=f"{c.name} val")  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_ylim(*_y_range(curves))
    try:
        fig.savefig(path)
    except OSError as e:
        raise PlotError(f"cannot write {path}: {e.strerror or e}") from None
