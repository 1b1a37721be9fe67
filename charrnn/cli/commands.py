"""The commands of `charrnn`: each a thin layer over one library function.

A command parses its options, calls the library (imported inside the command, so
that `charrnn --help` starts fast), renders the result (the product on stdout)
and maps the library's errors to exit codes through `user_errors`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Annotated

import typer

from ..errors import plural
from .app import Command, app, err, out, stop_requests, user_errors
from .display import PrepareProgress, StdoutWriter, TrainDisplay, TuneDisplay, tune_summary
from .options import (
    Activation,
    ActivationOpt,
    Cell,
    CellOpt,
    CkptOpt,
    DeviceOpt,
    ErrorsMode,
    HiddenOpt,
    JsonOpt,
    LayersOpt,
    SeedOpt,
    ThreadsOpt,
    Unknown,
    Weights,
    WeightsOpt,
    XAxis,
    apply_threads,
    check_duration,
    check_fraction,
    check_overrides,
    check_positive,
    check_probability,
    check_temperature,
    check_top_p,
)


@app.command(cls=Command)
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
        typer.Option(
            "--val-frac", callback=check_fraction, help="Fraction of the text, at its end, kept for validation."
        ),
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
    from .. import data

    if (input is None) == (corpus is None):
        raise typer.BadParameter("give exactly one of INPUT (a path or -) and --corpus NAME")
    with user_errors(), PrepareProgress() as progress:
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


@app.command(cls=Command)
def train(
    config: Annotated[str, typer.Argument(help="YAML config file.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            callback=check_overrides,
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
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live display, no samples.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per evaluation on stdout.")] = False,
) -> None:
    """Train a model as a YAML config says, with a live display and checkpoints."""

    from ..config import load_config

    if resume and force:
        raise typer.BadParameter("--resume and --force exclude each other")
    with user_errors():
        cfg = load_config(config, overrides or [])
    if init_from is not None:
        cfg.train.init_from = init_from
    if threads is not None:
        cfg.train.threads = threads
    if device is not None:
        cfg.train.device = device.value
    apply_threads(cfg.train.threads)  # before numpy loads
    from ..train import train as run_train

    # Ctrl-C and SIGTERM ask the loop to stop after its step: it saves last.npz, and we exit 128 + the signal's
    # number (130, 143). A reader of --json that goes away (`| head -1`) stops it the same way, as SIGPIPE would
    # (141).
    with stop_requests("still saving the checkpoint, please wait") as received:
        display = TrainDisplay(quiet=quiet, as_json=as_json,
                               on_closed_stdout=lambda: received.append(signal.SIGPIPE))  # fmt: skip
        with user_errors(), display:
            result = run_train(cfg, resume=resume, force=force, callback=display, should_stop=lambda: bool(received))
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


@app.command(name="eval", cls=Command)
def eval_(
    ckpt: CkptOpt,
    data: Annotated[
        str | None, typer.Option("--data", help="Prepared data folder.", show_default="the checkpoint's")
    ] = None,
    weights: WeightsOpt = Weights.averaged,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validation loss and bits/char of a checkpoint over the whole validation split."""
    apply_threads(threads)
    from ..train import eval_checkpoint

    with user_errors():
        r = eval_checkpoint(ckpt, data, device=device.value if device else "cpu",
                            averaged=weights is Weights.averaged)  # fmt: skip
    if as_json:
        print(json.dumps(r))
    else:
        which = ", averaged weights" if r["weights"] == "averaged" else ""
        print(f"val loss {r['val_loss']:.4f} nats/char, {r['val_bpc']:.4f} bits/char "
              f"({plural(r['val_chars'], 'character')}, step {r['step']}{which}, {r['checkpoint']})")  # fmt: skip


@app.command(cls=Command)
def sample(
    ckpt: CkptOpt,
    n: Annotated[int, typer.Option("-n", "--chars", min=0, help="Characters to generate per sample.")] = 1000,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature", "-t", callback=check_temperature, help="Softmax temperature (a finite number > 0)."
        ),
    ] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Keep only the K most likely characters.")] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p", callback=check_top_p, help="Keep the smallest set of likeliest characters with mass P."
        ),
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
    weights: WeightsOpt = Weights.averaged,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream", help="Print as generated (--no-stream: when done).", show_default="stream"
        ),
    ] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate text from a checkpoint; the text alone goes to stdout."""
    if prime is not None and prime_file is not None:
        raise typer.BadParameter("give --prime or --prime-file, not both")
    if argmax and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise typer.BadParameter(
            "--argmax always takes the most likely character: drop --temperature, --top-k and --top-p"
        )
    apply_threads(threads)
    from ..sampling import Decoding, open_run

    with user_errors():
        from ..data import decode_bytes, read_text

        if prime == "-":
            prime = decode_bytes(sys.stdin.buffer.read(), source="standard input")
        elif prime_file is not None:
            prime = read_text(prime_file)
        # streamed to terminals, pipes and files alike; --no-stream and --json print when done (and keep the text)
        streaming = (True if stream is None else stream) and not as_json
        run = open_run(
            ckpt, n, prime=prime or "", decoding=Decoding(temperature, top_k, top_p, argmax),
            seed=seed, num_samples=num_samples, unknown=unknown.value, prime_echo=prime_echo,
            keep_text=not streaming, device=device.value if device else "cpu", averaged=weights is Weights.averaged,
        )  # fmt: skip
        # every check has passed: the notes go to stderr before the first character
        if seed is None and not argmax:
            s = run.info["seed"]
            print(f"seed {s} (repeat with --seed {s})", file=sys.stderr, flush=True)
        if run.dropped_count:
            print(run.dropped_message(), file=sys.stderr, flush=True)
        writer = StdoutWriter()
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


@app.command(cls=Command)
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

    from ..plot import load_runs, save_plot, terminal_plot

    with user_errors():
        curves = load_runs(runs, x.value)
        if out_file is not None:
            save_plot(curves, out_file, x.value)
            err.print(f"wrote {out_file}", highlight=False)
            return
        text = terminal_plot(curves, x.value, width or shutil.get_terminal_size((100, 24)).columns, height,
                             color=sys.stdout.isatty())  # fmt: skip
    print(text)


@app.command(cls=Command)
def gradcheck(
    cell: CellOpt = Cell.rnn,
    activation: ActivationOpt = Activation.tanh,
    dropout: Annotated[
        float,
        typer.Option("--dropout", callback=check_probability, help="Dropout probability, checked with fixed masks."),
    ] = 0.0,
    variational_dropout: Annotated[
        bool, typer.Option("--variational-dropout", help="One dropout mask per window instead of per step.")
    ] = False,
    weight_drop: Annotated[
        float,
        typer.Option("--weight-drop", callback=check_probability, help="DropConnect probability on Whh."),
    ] = 0.0,
    embed_dropout: Annotated[
        float,
        typer.Option("--embed-dropout", callback=check_probability, help="Probability of dropping a character."),
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
        typer.Option("--eps", callback=check_positive, help="Difference step.", show_default="1e-3, 1e-4 for relu"),
    ] = None,
    max_checks: Annotated[
        int, typer.Option("--max-checks", min=0, help="Entries compared per array, drawn at random; 0 = all.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Check every analytic gradient (and the one into h0) against centered differences in float64.

    Exit 0 when every array passes, 1 otherwise.
    """
    from ..cells import cell_class
    from ..gradcheck import gradcheck as run_gradcheck

    if activation.value not in cell_class(cell.value).activations:
        raise typer.BadParameter(f"--activation {activation.value} does not fit --cell {cell.value} (relu: rnn only)")
    with user_errors():
        result = run_gradcheck(
            vocab=vocab,
            hidden=hidden,
            layers=layers,
            batch=batch,
            seq=seq,
            cell=cell.value,
            activation=activation.value,
            dropout=dropout,
            variational_dropout=variational_dropout,
            weight_drop=weight_drop,
            embed_dropout=embed_dropout,
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
            + (f", {'variational ' * s['variational_dropout']}dropout {s['dropout']:g}" if s["dropout"] else "")
            + (f", weight drop {s['weight_drop']:g}" if s["weight_drop"] else "")
            + (f", embedding dropout {s['embed_dropout']:g}" if s["embed_dropout"] else "")
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


@app.command(cls=Command)
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
            callback=check_duration,
            help="Start no trial after this long (90s, 10m, 1.5h); running ones finish.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search hyperparameters with Optuna: one training run per trial, on one machine or many."""
    from ..tune import parse_duration
    from ..tune import tune as run_tune

    seconds = parse_duration(timeout) if timeout is not None else None
    with stop_requests("still stopping the workers, please wait") as received, user_errors(), TuneDisplay() as display:
        result = run_tune(config, trials=trials, jobs=jobs, storage=storage, study_name=study, timeout=seconds,
                          callback=display, should_stop=lambda: bool(received))  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        tune_summary(result)
    if result["status"] == "stopped":
        name = signal.Signals(received[0]).name if received else "a stop request"
        err.print(f"stopped by {name}: {result['done']} of {result['budget']} trials done; the stopped trials keep "
                  f"their checkpoints and resume when you run the same command again", highlight=False)  # fmt: skip
        raise typer.Exit(128 + (received[0] if received else signal.SIGINT))
    if result["status"] in ("timeout", "unfinished"):
        why = "--timeout reached" if result["status"] == "timeout" else "the workers ended"
        err.print(f"{why}: {result['done']} of {result['budget']} trials done; run the same command again to "
                  f"continue", highlight=False)  # fmt: skip
        if result["status"] == "unfinished":  # the study lacks trials and nobody asked it to stop
            raise typer.Exit(1)
