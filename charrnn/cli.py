"""The `charrnn` command line: one Typer app of thin commands over the library.

Only this module imports typer and rich. The product (sampled text, tables of
results, --json output) goes to stdout; progress, logs and errors go to stderr.
A `CharRNNError` becomes one line on stderr and exit code 1; usage errors exit 2.
Library modules are imported inside the commands so that `charrnn --help` starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import CharRNNError

app = typer.Typer(
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


# Shared options --------------------------------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random generator.")]
ActivationOpt = Annotated[Activation, typer.Option("--activation", help="Hidden-unit nonlinearity.")]
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
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(1) from None


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def _version(value: bool) -> None:
    if value:
        print(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Train character-level recurrent language models on any text, and sample from them."""


def _not_yet(command: str) -> None:
    err.print(f"error: `charrnn {command}` is not implemented yet", highlight=False)
    raise typer.Exit(2)


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def prepare(ctx: typer.Context) -> None:
    """Encode a text file into a vocabulary and train/validation splits."""
    _not_yet("prepare")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train(ctx: typer.Context) -> None:
    """Train a model from a YAML config."""
    _not_yet("train")


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def sample(ctx: typer.Context) -> None:
    """Generate text from a checkpoint."""
    _not_yet("sample")


@app.command()
def gradcheck(
    activation: ActivationOpt = Activation.tanh,
    hidden: HiddenOpt = 10,
    layers: LayersOpt = 2,
    vocab: Annotated[int, typer.Option("--vocab", min=2, help="Vocabulary size.")] = 7,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size B.")] = 3,
    seq: Annotated[int, typer.Option("--seq", min=1, help="Sequence length T.")] = 6,
    seed: SeedOpt = 0,
    tol: Annotated[float, typer.Option("--tol", min=0.0, help="Largest relative error that passes.")] = 1e-6,
    eps: Annotated[float, typer.Option("--eps", callback=_positive, help="Centered-difference step.")] = 1e-5,
    max_checks: Annotated[
        int, typer.Option("--max-checks", min=0, help="Entries compared per array, drawn at random; 0 = all.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Check every analytic gradient (and the one into h0) against centered differences in float64.

    Exit 0 when every array passes, 1 otherwise.
    """
    from .gradcheck import gradcheck as run_gradcheck

    with _user_errors():
        result = run_gradcheck(
            vocab=vocab, hidden=hidden, layers=layers, batch=batch, seq=seq, activation=activation.value,
            seed=seed, tol=tol, eps=eps, max_checks=max_checks or None,
        )
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        from rich.table import Table

        s = result.settings
        table = Table(
            title=f"gradcheck: {s['activation']}, {s['layers']} layer(s), V={s['vocab']} H={s['hidden']} "
            f"B={s['batch']} T={s['seq']}, float64, eps={eps:g}",
        )
        table.add_column("parameter")
        table.add_column("shape")
        table.add_column("checked", justify="right")
        table.add_column("max rel. error", justify="right")
        table.add_column("result")
        for c in result.checks:
            table.add_row(
                c.name, "x".join(map(str, c.shape)), str(c.checked), f"{c.max_rel_error:.2e}",
                "[green]pass[/]" if c.passed else "[bold red]FAIL[/]",
            )
        out.print(table)
        verdict = "[green]all gradients pass[/]" if result.passed else "[bold red]gradient check failed[/]"
        out.print(f"{verdict} (tolerance {tol:g}, worst {result.max_rel_error:.2e})")
    raise typer.Exit(0 if result.passed else 1)


def run() -> None:
    """Console-script entry point."""
    app()
