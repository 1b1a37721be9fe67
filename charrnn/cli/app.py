"""The Typer app of `charrnn`: its error handling, its consoles and the entry point.

A `CharRNNError` becomes one line on stderr and exit code 1 (`user_errors`); a usage
error is one line and exit 2 (`OneLineErrors`); `--debug` or CHARRNN_DEBUG=1 shows
the traceback. `out` (stdout) carries the product, `err` (stderr) progress, logs
and errors. The commands (commands.py) register themselves on `app`.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..errors import CharRNNError

# click's exception classes, found through a public one (typer may vendor click or depend on it)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _untyped_flags(params):
    """typer 0.29 shows `<bool>` as the type of every flag; a flag takes no value, so show none."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""  # typer shows the metavar, when set, in place of the type
    return params


class OneLineErrors(TyperGroup):
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


class Command(TyperCommand):
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
    cls=OneLineErrors,
    name="charrnn",
    help="Train character-level recurrent language models on any text, and sample from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# stdout: the product. In a file or a pipe it has no width to fit, so tables are laid out 200 columns wide
# instead of Rich's 80, which broke a study's parameters into one-word lines (COLUMNS still wins)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)


err = Console(stderr=True, soft_wrap=True)  # stderr: progress, logs, errors


def _debug() -> bool:
    return os.environ.get("CHARRNN_DEBUG", "") not in ("", "0")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stop_requests turns into requests to stop


@contextmanager
def stop_requests(waiting: str):
    """Within the block, Ctrl-C (SIGINT) and SIGTERM (what SLURM, `timeout`, Docker and systemd send before
    killing) are requests to stop, not deaths: yields the list of the signal numbers received, which the
    block's work polls (`should_stop=lambda: bool(received)`) to stop cleanly. A second signal prints
    `waiting`; after the block, once one came, further ones are ignored while the command reports and exits
    (128 + the signal's number)."""
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:
            err.print(waiting, highlight=False)

    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN if received else old[s])


@contextmanager
def user_errors():
    """Map the domain exception to one line on stderr and exit 1 (traceback with CHARRNN_DEBUG=1)."""
    try:
        yield
    except CharRNNError as e:
        if _debug():
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(1) from None


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


def run() -> None:
    """Console-script entry point."""
    app()
