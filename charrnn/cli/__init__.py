"""The `charrnn` command line: one Typer app of thin commands over the library.

Only this package imports typer and rich. The product (sampled text, tables of
results, --json output) goes to stdout; progress, logs and errors go to stderr.
A `CharRNNError` becomes one line on stderr and exit code 1; usage errors exit 2.
Library modules are imported inside the commands so that `charrnn --help` starts fast.

    app.py       the app, its error handling and consoles, the entry point `run`
    options.py   the options several commands share, and the checks of option values
    commands.py  the commands, each over one library function
    display.py   the live displays (prepare, train, tune) and the stdout writer of samples
"""

from . import commands  # noqa: F401 -- registers the commands on the app
from .app import app, run

__all__ = ["app", "run"]
