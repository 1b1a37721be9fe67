"""The `charrnn` command line: one Typer app of thin commands over the library.

Only this module imports typer and rich. The product (sampled text, tables of
results, --json output) goes to stdout; progress, logs and errors go to stderr.
A `CharRNNError` becomes one line on stderr and exit code 1; usage errors exit 2.
Library modules are imported inside the commands so that `charrnn --help` starts fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .errors import CharRNNError, plural

# click's exception classes, found through a public one (typer may vendor click or depend on it)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _untyped_flags(params):
    """typer 0.29 shows `<bool>` as the type of every flag; a flag takes no value, so show none."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""  # typer shows the metavar, when set, in place of the type
    return params


class _OneLineErrors(TyperGroup):
    """Typer's group, except that a usage error is one line on stderr (exit 2), not a framed panel,
    and its flags (--version, --debug, --help) show no `<bool>`."""

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `charrnn`: the help text itself
                e.show()
            else:
                where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                print(f"error: {e.format_message()}{where}", file=sys.stderr)
            sys.exit(e.exit_code)
        except _ClickException as e:
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class _Command(TyperCommand):
    """Typer's command, with help that reads like every other Unix tool's.

    typer 0.29 puts a type column after every option, `<bool>` for flags too, and
    writes a required argument as `{config}` in the usage line. Here a flag shows no
    type, and the usage line names arguments in capitals, optional ones in brackets:
    `charrnn train [OPTIONS] CONFIG`.
    """

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = (p.metavar or p.name).upper()
                pieces.append(name if p.required else f"[{name}]")
        return pieces


app = typer.Typer(
    cls=_OneLineErrors,
    name="charrnn",
    help="Train character-level recurrent language models on any text, and sample from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

out = Console(soft_wrap=True)  # stdout: the product
err = Console(stderr=True, soft_wrap=True)  # stderr: progress, logs, errors


class Activation(str, Enum):
    tanh = "tanh"
    relu = "relu"


def _cell_enum() -> type[Enum]:
    from .cells import CELL_NAMES  # the registry's names only: no cell (and no numpy) is imported

    return Enum("Cell", {name: name for name in CELL_NAMES}, type=str)


Cell = _cell_enum()


# Shared options --------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random generator.")]
ActivationOpt = Annotated[
    Activation,
    typer.Option("--activation", case_sensitive=False, help="Hidden-unit nonlinearity (relu: cell rnn only)."),
]
CellOpt = Annotated[Cell, typer.Option("--cell", case_sensitive=False, help="Recurrent cell.")]
HiddenOpt = Annotated[int, typer.Option("--hidden", min=1, help="Hidden units per layer.")]
LayersOpt = Annotated[int, typer.Option("--layers", min=1, help="Number of stacked recurrent layers.")]


def _debug() -> bool:
    return os.environ.get("CHARRNN_DEBUG", "") not in ("", "0")


@contextmanager
def _user_errors():
    """Map the domain exception to one line on stderr and exit 1 (traceback with CHARRNN_DEBUG=1)."""
    try:
        yield
    except CharRNNError as e:
        if _debug():
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(1) from None


def _positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def _temperature(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):  # 0, negatives, inf and nan alike: one usage error
        raise typer.BadParameter(
            f"must be a finite number > 0, got {value}; for the most likely character every time use --argmax"
        )
    return value


def _top_p(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"must lie in (0, 1], got {value}")
    return value


def _fraction(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must lie in (0, 1), got {value}")
    return value


def _probability(value: float) -> float:
    if not 0 <= value < 1:
        raise typer.BadParameter(f"must lie in [0, 1), got {value}")
    return value


def _version(value: bool) -> None:
    if value:
        print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the Python traceback of an error (also CHARRNN_DEBUG=1).")
    ] = False,
) -> None:
    """Train character-level recurrent language models on any text, and sample from them."""
    if debug:
        os.environ["CHARRNN_DEBUG"] = "1"
    # SIGTERM (sent by `timeout`, schedulers, Docker, systemd) ends every command as an exception, exit 143, so
    # that cleanups run: a half-written file of `prepare` or a checkpoint is removed, not left behind. `train`
    # handles it itself: it saves and prints how to resume.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


class ErrorsMode(str, Enum):
    strict = "strict"
    replace = "replace"


CkptOpt = Annotated[str, typer.Option("--ckpt", help="Checkpoint file, or run folder (its best.npz, else last.npz).")]


class _PrepareProgress:
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


@app.command(cls=_Command)
def prepare(
    input: Annotated[
        str | None, typer.Argument(help="Text file to prepare, or - for standard input.", show_default=False)
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            "--corpus", help="A built-in corpus instead of INPUT: shakespeare, or one play: shakespeare:macbeth."
        ),
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Output folder.", show_default="data/<input stem>")
    ] = None,
    val_frac: Annotated[
        float,
        typer.Option("--val-frac", callback=_fraction, help="Fraction of the text, at its end, kept for validation."),
    ] = 0.1,
    encoding: Annotated[
        str, typer.Option("--encoding", help="Text encoding of INPUT (with utf-8, a UTF-16/32 byte-order mark wins).")
    ] = "utf-8",
    errors: Annotated[
        ErrorsMode, typer.Option("--errors", help="On undecodable bytes: stop (strict) or substitute U+FFFD (replace).")
    ] = ErrorsMode.strict,
    keep_line_endings: Annotated[
        bool, typer.Option("--keep-line-endings", help="Keep \\r\\n and \\r line endings (by default they become \\n).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Encode a text into a vocabulary and contiguous train/validation splits."""
    from . import data

    if (input is None) == (corpus is None):
        raise typer.BadParameter("give exactly one of INPUT (a path or -) and --corpus NAME")
    with _user_errors(), _PrepareProgress() as progress:
        if corpus is not None:
            text, stem = data.corpus_text(corpus), corpus.rpartition(":")[2]
            out = out_dir or os.path.join("data", stem)
            summary = data.prepare(text, out, val_frac, keep_line_endings=keep_line_endings, progress=progress)
        else:
            stem = "stdin" if input == "-" else os.path.splitext(os.path.basename(os.path.normpath(input)))[0]
            summary = data.prepare_file(
                input, out_dir or os.path.join("data", stem), val_frac, encoding=encoding, errors=errors.value,
                keep_line_endings=keep_line_endings, progress=progress,
            )  # fmt: skip
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(title=f"prepared {summary.out_dir}", show_header=False)
    if summary.encoding not in (None, "utf-8"):
        table.add_row("encoding", summary.encoding)
    if summary.bom_removed:
        table.add_row("byte-order mark", "removed")
    if summary.line_endings_converted:
        n = summary.line_endings_converted
        table.add_row("line endings", f"{n:,} converted to \\n")
    table.add_row("characters", f"{summary.chars:,}")
    table.add_row("vocabulary", f"{summary.vocab_size} ({summary.dtype} ids)")
    table.add_row("train / val", f"{summary.train_size:,} / {summary.val_size:,}")
    table.add_row("most frequent", "  ".join(f"{c!r} {n:,}" for c, n in summary.top))
    err.print(table)


def _overrides(values: list[str] | None) -> list[str] | None:
    """--set values must read key.path=value: a malformed one is a usage error (exit 2)."""
    from .config import ConfigError, parse_override

    for text in values or []:
        try:
            parse_override(text)
        except ConfigError as e:
            raise typer.BadParameter(str(e).removeprefix("--set ")) from None
    return values


def _threads(n: int | None) -> None:
    """Limit the BLAS threads before the command imports numpy (see charrnn.threads); 0 or None: the default."""
    if n:
        from .threads import set_threads

        with _user_errors():
            set_threads(n)


ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        metavar="N",
        help="Threads for the matrix products; 0 = every core (train: train.threads).",
        show_default="every core",
    ),
]


@app.command(cls=_Command)
def train(
    config: Annotated[str, typer.Argument(help="YAML config file.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            callback=_overrides,
            metavar="KEY=VALUE",
            help="Override a config value: key.path=value (repeatable).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from out_dir/last.npz.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over even if out_dir holds a run.")] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from", metavar="PATH", help="Fine-tune: start from this checkpoint or run folder (train.init_from)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display, no samples.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per evaluation on stdout.")] = False,
) -> None:
    """Train a model as a YAML config says, with a live display and checkpoints."""

    from .config import load_config

    if resume and force:
        raise typer.BadParameter("--resume and --force exclude each other")
    with _user_errors():
        cfg = load_config(config, overrides or [])
    if init_from is not None:
        cfg.train.init_from = init_from
    if threads is not None:
        cfg.train.threads = threads
    _threads(cfg.train.threads)  # before numpy loads
    from .train import train as run_train

    # Ctrl-C (SIGINT) and SIGTERM (what SLURM, `timeout`, Docker and systemd send before killing) both ask
    # the loop to stop after its step: it saves last.npz, and we exit 128 + the signal's number (130, 143).
    # A reader of --json that goes away (`| head -1`) stops it the same way, as SIGPIPE would (141).
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:
            err.print("still saving the checkpoint, please wait", highlight=False)

    display = _TrainDisplay(quiet=quiet, as_json=as_json, on_closed_stdout=lambda: received.append(signal.SIGPIPE))
    old = {s: signal.signal(s, on_signal) for s in stop_signals}
    try:
        with _user_errors(), display:
            result = run_train(cfg, resume=resume, force=force, callback=display, should_stop=lambda: bool(received))
    finally:
        # after a stop signal, further ones must not kill us while we report and exit
        for s in stop_signals:
            signal.signal(s, signal.SIG_IGN if received else old[s])
    if result.status == "interrupted":
        why = "stdout closed" if received[0] == signal.SIGPIPE else f"stopped by {signal.Signals(received[0]).name}"
        err.print(f"{why} at step {result.step}; saved {result.checkpoint}\n"
                  f"resume with: {resume_command(config, overrides, init_from, threads)}", highlight=False)  # fmt: skip
        raise typer.Exit(128 + received[0])
    if not quiet:
        how = {"done": "finished", "early_stop": "stopped early (patience)", "time_limit": "reached the time limit"}
        best = f", best val loss {result.best_val:.4f}" if result.best_val is not None else ""
        if best and display.val_chars:
            best += (f" on the first {plural(display.val_chars, 'val character')} (train.eval_chars; "
                     f"`charrnn eval` scores the whole split)")  # fmt: skip
        err.print(
            f"{how.get(result.status, result.status)} at step {result.step}{best}; checkpoints in {result.out_dir}",
            highlight=False,
        )


def resume_command(config: str, overrides: list[str] | None, init_from: str | None, threads: int | None) -> str:
    """The shell command that continues this run: the same config and options, with --resume."""
    import shlex

    words = ["charrnn", "train", config]
    for text in overrides or []:
        words += ["--set", text]
    if init_from is not None:
        words += ["--init-from", init_from]
    if threads is not None:
        words += ["--threads", str(threads)]
    return shlex.join([*words, "--resume"])


class _TrainDisplay:
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
            self.log(f"{what} {info['step']}: {info['model']}, {plural(info['params'], 'parameter')}, "
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
                    _StdoutWriter.closed_pipe()
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


@app.command(name="eval", cls=_Command)
def eval_(
    ckpt: CkptOpt,
    data: Annotated[
        str | None, typer.Option("--data", help="Prepared data folder.", show_default="the checkpoint's")
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validation loss and bits/char of a checkpoint over the whole validation split."""
    _threads(threads)
    from .train import eval_checkpoint

    with _user_errors():
        r = eval_checkpoint(ckpt, data)
    if as_json:
        print(json.dumps(r))
    else:
        print(f"val loss {r['val_loss']:.4f} nats/char, {r['val_bpc']:.4f} bits/char "
              f"({plural(r['val_chars'], 'character')}, step {r['step']}, {r['checkpoint']})")  # fmt: skip


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


@app.command(cls=_Command)
def sample(
    ckpt: CkptOpt,
    n: Annotated[int, typer.Option("-n", "--chars", min=0, help="Characters to generate per sample.")] = 1000,
    temperature: Annotated[
        float,
        typer.Option("--temperature", "-t", callback=_temperature, help="Softmax temperature (a finite number > 0)."),
    ] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Keep only the K most likely characters.")] = None,
    top_p: Annotated[
        float | None,
        typer.Option("--top-p", callback=_top_p, help="Keep the smallest set of likeliest characters with mass P."),
    ] = None,
    prime: Annotated[str | None, typer.Option("--prime", help="Text to warm the state up on; - reads stdin.")] = None,
    prime_file: Annotated[str | None, typer.Option("--prime-file", help="Read the prime text from a file.")] = None,
    prime_echo: Annotated[
        bool, typer.Option("--prime-echo/--no-prime-echo", help="Print the prime before the text.")
    ] = True,
    unknown: Annotated[
        Unknown, typer.Option("--unknown", help="Prime characters outside the vocabulary: error or skip them.")
    ] = Unknown.error,
    argmax: Annotated[bool, typer.Option("--argmax", help="Always take the most likely character (greedy).")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed; the same seed gives the same text.")] = None,
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-k", min=1, help="Independent samples, printed one after another.")
    ] = 1,
    separator: Annotated[str, typer.Option("--separator", help="Line printed between samples.")] = "---",
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream", help="Print as generated (--no-stream: when done).", show_default="stream"
        ),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate text from a checkpoint; the text alone goes to stdout."""
    if prime is not None and prime_file is not None:
        raise typer.BadParameter("give --prime or --prime-file, not both")
    if argmax and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise typer.BadParameter(
            "--argmax always takes the most likely character: drop --temperature, --top-k and --top-p"
        )
    _threads(threads)
    from .sampling import Decoding, open_run

    with _user_errors():
        from .data import decode_bytes, read_text

        if prime == "-":
            prime = decode_bytes(sys.stdin.buffer.read(), source="standard input")
        elif prime_file is not None:
            prime = read_text(prime_file)
        # streamed to terminals, pipes and files alike; --no-stream and --json print when done (and keep the text)
        streaming = (True if stream is None else stream) and not as_json
        run = open_run(
            ckpt, n, prime=prime or "", decoding=Decoding(temperature, top_k, top_p, argmax),
            seed=seed, num_samples=num_samples, unknown=unknown.value, prime_echo=prime_echo,
            keep_text=not streaming,
        )  # fmt: skip
        # every check has passed: the notes go to stderr before the first character
        if seed is None and not argmax:
            s = run.info["seed"]
            print(f"seed {s} (repeat with --seed {s})", file=sys.stderr, flush=True)
        if run.dropped_count:
            print(run.dropped_message(), file=sys.stderr, flush=True)
        writer = _StdoutWriter()
        try:
            if as_json:
                writer.write(json.dumps(run.result(), ensure_ascii=False) + "\n")
            elif streaming:
                current = 0
                for k, piece in run.pieces():
                    if k != current:  # the next sample begins
                        current = k
                        writer.write(f"\n{separator}\n", flush=False)
                    writer.write(piece, flush=False)
                    writer.flush_now_and_then()
                writer.write("\n")
            else:
                writer.write(f"\n{separator}\n".join(run.result()["samples"]) + "\n")
            writer.flush()
        except BrokenPipeError:
            writer.closed_pipe()


class _StdoutWriter:
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


class XAxis(str, Enum):
    step = "step"
    time = "time"


@app.command(cls=_Command)
def plot(
    runs: Annotated[
        list[str], typer.Argument(metavar="RUN...", help="Run folders (their out_dir).", show_default=False)
    ],
    x: Annotated[XAxis, typer.Option("--x", help="Against steps, or training time.")] = XAxis.step,
    out_file: Annotated[
        str | None, typer.Option("--out", metavar="FILE", help="Write a .png, .svg or .pdf instead of drawing here.")
    ] = None,
    width: Annotated[
        int | None, typer.Option("--width", min=20, metavar="N", help="Columns.", show_default="the terminal's")
    ] = None,
    height: Annotated[int, typer.Option("--height", min=8, metavar="N", help="Rows.")] = 24,
) -> None:
    """Plot training and validation loss of one or more runs, in the terminal or to an image file."""
    import shutil

    from .plot import load_runs, save_plot, terminal_plot

    with _user_errors():
        curves = load_runs(runs, x.value)
        if out_file is not None:
            save_plot(curves, out_file, x.value)
            err.print(f"wrote {out_file}", highlight=False)
            return
        text = terminal_plot(curves, x.value, width or shutil.get_terminal_size((100, 24)).columns, height,
                             color=sys.stdout.isatty())  # fmt: skip
    print(text)


@app.command(cls=_Command)
def gradcheck(
    cell: CellOpt = Cell.rnn,
    activation: ActivationOpt = Activation.tanh,
    dropout: Annotated[
        float, typer.Option("--dropout", callback=_probability, help="Dropout probability, checked with fixed masks.")
    ] = 0.0,
    hidden: HiddenOpt = 10,
    layers: LayersOpt = 2,
    vocab: Annotated[int, typer.Option("--vocab", min=2, help="Vocabulary size.")] = 7,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size B.")] = 3,
    seq: Annotated[int, typer.Option("--seq", min=1, help="Sequence length T.")] = 6,
    seed: SeedOpt = 0,
    tol: Annotated[float, typer.Option("--tol", min=0.0, help="Largest relative error that passes.")] = 1e-6,
    eps: Annotated[
        float | None,
        typer.Option("--eps", callback=_positive, help="Difference step.", show_default="1e-3, 1e-4 for relu"),
    ] = None,
    max_checks: Annotated[
        int, typer.Option("--max-checks", min=0, help="Entries compared per array, drawn at random; 0 = all.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Check every analytic gradient (and the one into h0) against centered differences in float64.

    Exit 0 when every array passes, 1 otherwise.
    """
    from .cells import cell_class
    from .gradcheck import gradcheck as run_gradcheck

    if activation.value not in cell_class(cell.value).activations:
        raise typer.BadParameter(f"--activation {activation.value} does not fit --cell {cell.value} (relu: rnn only)")
    with _user_errors():
        result = run_gradcheck(
            vocab=vocab,
            hidden=hidden,
            layers=layers,
            batch=batch,
            seq=seq,
            cell=cell.value,
            activation=activation.value,
            dropout=dropout,
            seed=seed,
            tol=tol,
            eps=eps,
            max_checks=max_checks or None,
        )
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        from rich.table import Table

        s = result.settings
        table = Table(
            title=f"gradcheck: {s['cell']}"
            + (f" ({s['activation']})" if len(cell_class(s["cell"]).activations) > 1 else "")
            + f", {s['layers']} layer(s), V={s['vocab']} H={s['hidden']} B={s['batch']} T={s['seq']}"
            + (f", dropout {s['dropout']:g}" if s["dropout"] else "")
            + f", float64, eps={result.eps:g}",
        )
        table.add_column("parameter")
        table.add_column("shape")
        table.add_column("checked", justify="right")
        table.add_column("max rel. error", justify="right")
        table.add_column("result")
        for c in result.checks:
            table.add_row(
                c.name,
                "x".join(map(str, c.shape)),
                str(c.checked),
                f"{c.max_rel_error:.2e}",
                "[green]pass[/]" if c.passed else "[bold red]FAIL[/]",
            )
        out.print(table)
        verdict = "[green]all gradients pass[/]" if result.passed else "[bold red]gradient check failed[/]"
        out.print(f"{verdict} (tolerance {tol:g}, worst {result.max_rel_error:.2e})")
        at_kink = sum(c.at_kink for c in result.checks)
        if at_kink:
            out.print(f"{at_kink} entries left out: their difference step crossed a relu kink (see --eps)")
    raise typer.Exit(0 if result.passed else 1)


# `charrnn tune` ---------------------------------------------------------------
# The command and its displays, in one block (the CLI's split into a package moves it as a whole).


@app.command(cls=_Command)
def tune(
    config: Annotated[str, typer.Argument(help="YAML config with a tune: section.", show_default=False)],
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            min=1,
            metavar="N",
            help="The study's budget of complete and pruned trials.",
            show_default="tune.trials",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=1, metavar="J", help="Worker processes here; each gets cores / J threads."),
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="URL",
            help="Optuna storage: sqlite:///FILE, postgresql+psycopg://..., mysql+pymysql://..., or a journal "
            "file path.",
            show_default="out_dir/study.journal",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study", metavar="NAME", help="Study name in the storage.", show_default="the config file's stem"
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            callback=_duration,
            help="Start no trial after this long (90s, 10m, 1.5h); running ones finish.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search hyperparameters with Optuna: one training run per trial, on one machine or many."""
    import signal

    from .tune import parse_duration
    from .tune import tune as run_tune

    seconds = parse_duration(timeout) if timeout is not None else None
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:
            err.print("still stopping the workers, please wait", highlight=False)

    display = _TuneDisplay()
    old = {s: signal.signal(s, on_signal) for s in stop_signals}
    try:
        with _user_errors(), display:
            result = run_tune(config, trials=trials, jobs=jobs, storage=storage, study_name=study, timeout=seconds,
                              callback=display, should_stop=lambda: bool(received))  # fmt: skip
    finally:
        for s in stop_signals:
            signal.signal(s, signal.SIG_IGN if received else old[s])
    if as_json:
        print(json.dumps(result))
    else:
        _tune_summary(result)
    if result["status"] == "stopped":
        name = signal.Signals(received[0]).name if received else "a stop request"
        err.print(f"stopped by {name}: {result['done']} of {result['budget']} trials done; the stopped trials keep "
                  f"their checkpoints and resume when you run the same command again", highlight=False)  # fmt: skip
        raise typer.Exit(128 + (received[0] if received else signal.SIGINT))
    if result["status"] in ("timeout", "unfinished"):
        why = "--timeout reached" if result["status"] == "timeout" else "the workers ended"
        err.print(f"{why}: {result['done']} of {result['budget']} trials done; run the same command again to "
                  f"continue", highlight=False)  # fmt: skip


def _duration(value: str | None) -> str | None:
    """--timeout must read as a duration: otherwise a usage error (exit 2)."""
    if value is not None:
        from .tune import TuneError, parse_duration

        try:
            parse_duration(value)
        except TuneError as e:
            raise typer.BadParameter(str(e).removeprefix("--timeout ")) from None
    return value


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


class _TuneDisplay:
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


def _tune_summary(result: dict) -> None:
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


def run() -> None:
    """Console-script entry point."""
    app()
