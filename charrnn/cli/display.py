"""The live displays of the commands, on stderr, and the writer of streamed text on stdout.

Each display renders a library function's callback events (the library never
prints): `PrepareProgress` for prepare's chunks, `TrainDisplay` for the training
loop, `TuneDisplay` and `tune_summary` for a study's trials. `StdoutWriter`
streams sampled text and ends quietly when its reader goes away.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..errors import plural
from .app import err, out


class PrepareProgress:
    """prepare's progress callback: a Rich bar on stderr (a terminal), started once a second has passed,
    so that a small input prints nothing extra. Use it as a context manager: leaving it removes the bar."""

    DELAY_S = 1.0

    def __init__(self):
        import time

        self._clock = time.monotonic
        self._start = self._clock()
        self._bar = self._task = self._phase = None

    def __call__(self, done: int, total: int | None, phase: str) -> None:
        if self._bar is None:
            if not err.is_terminal or self._clock() - self._start < self.DELAY_S:
                return
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeRemainingColumn(), console=err, transient=True)  # fmt: skip
            self._bar.start()
        if phase != self._phase:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._phase, self._task = phase, self._bar.add_task(phase, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()


class TrainDisplay:
    """Renders the training loop's callback events: a Rich progress bar and log lines on stderr, JSON on stdout.

    The live line is `step N/M, bar, ETA, loss | val | |g| | speed | lr`, most
    important first, so that a narrow terminal cuts the least useful statistics.
    The ETA is the nearer of the last step and the time limit, at the pace since
    the start (evaluations included).
    """

    def __init__(self, quiet: bool, as_json: bool, on_closed_stdout=None):
        self.quiet, self.as_json = quiet, as_json
        self.on_closed_stdout = on_closed_stdout  # called once if the reader of --json goes away
        self.progress = None
        self.task = None
        self.val = "-"
        self.val_chars = 0  # the evaluations score only this many characters (train.eval_chars), 0 = all
        self.last_step: dict | None = None
        self.time_limit = None
        self.start_wall = self.start_step = self.start_elapsed = None

    def __enter__(self):
        return self

    def _start_progress(self):
        """The live display starts with training, so an error before it stays a single line."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.table import Column

        # the step count, bar and ETA keep their width; on a narrow terminal the statistics are cut instead
        self.progress = Progress(
            MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=9)),
            BarColumn(bar_width=16, table_column=Column(no_wrap=True, min_width=16)),
            TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True, min_width=7)),
            TextColumn("{task.fields[stats]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=err, transient=False,
            disable=not err.is_terminal,  # in a log file, the log lines alone: no frames of a live bar
        )  # fmt: skip
        self.progress.__enter__()

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, highlight=False, markup=False)

    def _eta(self, info: dict) -> str:
        import time

        now = time.perf_counter()
        done = info["step"] - self.start_step
        if done <= 0 or now <= self.start_wall:
            return "-:--:--"
        wall = now - self.start_wall
        left = (info["max_steps"] - info["step"]) * wall / done
        trained = info["elapsed_s"] - self.start_elapsed
        if self.time_limit is not None and trained > 0:
            left = min(left, max(self.time_limit - info["elapsed_s"], 0.0) * wall / trained)
        left = round(left)
        return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"

    def _render(self) -> None:
        info = self.last_step
        if self.progress is None or info is None:
            return
        stats = (f"loss {info['smooth_loss']:.3f} | val {self.val} | |g| {info['grad_norm']:.2f} | "
                 f"{info['chars_per_sec'] / 1000:.1f}k char/s | lr {info['lr']:.1e}")  # fmt: skip
        self.progress.update(self.task, completed=info["step"], stats=stats, eta=self._eta(info))

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            import time

            self.time_limit = info.get("time_limit")
            self.start_wall, self.start_step = time.perf_counter(), info["step"]
            self.start_elapsed = info.get("elapsed_s", 0.0)
            if self.quiet:  # no display, but what the user must know about this run still goes to stderr
                for note in info.get("notes") or ():
                    err.print(f"note: {note}", highlight=False, markup=False)
                return
            self._start_progress()
            self.task = self.progress.add_task("train", total=info["max_steps"], completed=info["step"], stats="",
                                               eta="-:--:--")  # fmt: skip
            what = "resuming at step" if info["resumed"] else "training from step"
            if info.get("init_from"):
                self.log(info["init_from"])
            for note in info.get("notes") or ():
                self.log(f"note: {note}")
            on = f" on {info['device']}" if info.get("device", "cpu") != "cpu" else ""
            self.log(f"{what} {info['step']}: {info['model']}{on}, {plural(info['params'], 'parameter')}, "
                     f"vocabulary {info['vocab_size']}, {plural(info['windows_per_epoch'], 'window')} per epoch "
                     f"-> {info['out_dir']}")  # fmt: skip
        elif kind == "step":
            self.last_step = info
            self._render()
        elif kind == "eval":
            self.val = f"{info['val_loss']:.3f}"
            self.val_chars = info.get("val_chars", 0)
            if self.as_json:
                record = {
                    k: info[k] for k in ("step", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s")
                }
                try:
                    print(json.dumps(record), flush=True)
                except BrokenPipeError:  # `| head -1`: stop writing, and let the loop save and stop
                    self.as_json = False
                    StdoutWriter.closed_pipe()
                    if self.on_closed_stdout is not None:
                        self.on_closed_stdout()
            train = f"train {info['train_loss']:.4f}, " if info["train_loss"] is not None else ""
            subset = f" on the first {plural(info['val_chars'], 'val character')}" if "val_chars" in info else ""
            speed = f", {info['chars_per_sec'] / 1000:.1f}k chars/s" if info["chars_per_sec"] else ""  # none at step 0
            self.log(f"step {info['step']}: {train}val {info['val_loss']:.4f} nats/char "
                     f"({info['val_bpc']:.3f} bits){subset}{speed}, {info['elapsed_s']:.0f}s")  # fmt: skip
            self._render()  # the live line shows this evaluation now, not from the next step on
        elif kind == "sample":
            self.log("-" * 40 + "\n" + info["text"] + "\n" + "-" * 40)


class StdoutWriter:
    """UTF-8 text to stdout; a reader that closes the pipe ends us quietly.

    `write` flushes unless told not to; `flush_now_and_then` flushes at most every
    20 ms, so streamed text reaches a terminal or a pipe (`| head`) as it is made
    without a system call per piece.
    """

    def __init__(self):
        self.buffer = getattr(sys.stdout, "buffer", None)
        self.last_flush = time.monotonic()

    def write(self, text: str, flush: bool = True) -> None:
        if self.buffer is not None:
            self.buffer.write(text.encode("utf-8"))
        else:
            sys.stdout.write(text)
        if flush:
            self.flush()

    def flush(self) -> None:
        (self.buffer or sys.stdout).flush()
        self.last_flush = time.monotonic()

    def flush_now_and_then(self) -> None:
        if time.monotonic() - self.last_flush > 0.02:
            self.flush()

    @staticmethod
    def closed_pipe() -> None:
        # the reader is gone (e.g. `| head`): silence the final flush at exit and end with status 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def _params_text(params: dict) -> str:
    def short(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rpartition('.')[2]}={short(v)}" for k, v in params.items())


def _duration_text(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _trials_table(rows: list[dict], title: str, best_number=None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (("trial", "right"), ("parameters", "left"), ("best val loss", "right"),
                          ("state", "left"), ("time", "right"), ("", "left")):  # fmt: skip
        table.add_column(name, justify=justify, overflow="fold")
    colors = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
    for r in rows:
        val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        mark = " *" if r["number"] == best_number else ""
        step = f" @{r['step']}" if r["state"] == "RUNNING" and r["step"] else ""
        table.add_row(f"{r['number']}{mark}", _params_text(r["params"]), val,
                      f"[{colors.get(r['state'], 'white')}]{r['state'].lower()}[/]{step}",
                      _duration_text(r["seconds"]), r["note"])  # fmt: skip
    return table


class TuneDisplay:
    """The study's trials as they run, on stderr: a live Rich table on a terminal, else a line per finished trial."""

    def __init__(self):
        self.live = None
        self.header = ""
        self.reported: set[tuple[int, str]] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False

    def __call__(self, kind: str, info) -> None:
        if kind == "start":
            done = f", {info['done']} done already" if info["done"] else ""
            self.header = (f"study {info['study']} in {info['storage']}: {info['trials']} trials{done}, "
                           f"{info['jobs']} worker(s) x {info['threads']} thread(s); runs in "
                           f"{info['out_dir']}/trials")  # fmt: skip
            err.print(self.header, highlight=False, markup=False)
            if err.is_terminal:
                from rich.live import Live

                self.live = Live(console=err, auto_refresh=False, transient=True)  # the summary follows on stdout
                self.live.start()
        elif kind == "note":
            err.print(f"note: {info}", highlight=False, markup=False)
        elif kind == "trials":
            if self.live is not None:
                finished = [r for r in info if r["state"] == "COMPLETE" and r["val_loss"] is not None]
                best = min(finished, key=lambda r: r["val_loss"])["number"] if finished else None
                self.live.update(_trials_table(info[-20:], "trials (the last 20; * best)", best), refresh=True)
                return
            for r in info:
                if r["state"] in ("RUNNING", "WAITING") or (r["number"], r["state"]) in self.reported:
                    continue
                self.reported.add((r["number"], r["state"]))
                val = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
                note = f" ({r['note']})" if r["note"] else ""
                err.print(f"trial {r['number']} {r['state'].lower()}: val {val}, {_params_text(r['params'])}, "
                          f"{_duration_text(r['seconds'])}{note}", highlight=False, markup=False)  # fmt: skip


def tune_summary(result: dict) -> None:
    """The study's trials, best first, and the best config, on stdout."""
    rows = sorted(result["trials"], key=lambda r: (r["state"] != "COMPLETE", r["val_loss"] is None,
                                                    r["val_loss"] or 0.0, r["number"]))  # fmt: skip
    best = result["best"]
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result["counts"].items()))
    out.print(_trials_table(rows, f"study {result['study']}: {counts}", best and best["number"]))
    if best is None:
        out.print("no trial completed yet", highlight=False)
    else:
        out.print(f"best: trial {best['number']}, val loss {best['val_loss']:.4f} nats/char "
                  f"({best['val_loss'] / 0.6931471805599453:.3f} bits), {_params_text(best['params'])}\n"
                  f"its run: {best['run']}\nits config: {best['config']} (charrnn train {best['config']})",
                  highlight=False, markup=False)  # fmt: skip
