"""The options that several commands share, and the checks of option values (a bad value is a usage error, exit 2).

Annotated types in the Typer way: `def cmd(as_json: JsonOpt = False)`. Nothing
here imports numpy, so that `charrnn --help` starts without it.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated

import typer

from .app import user_errors


class Activation(str, Enum):
    tanh = "tanh"
    relu = "relu"


def _cell_enum() -> type[Enum]:
    from ..cells import CELL_NAMES  # the registry's names only: no cell (and no numpy) is imported

    return Enum("Cell", {name: name for name in CELL_NAMES}, type=str)


Cell = _cell_enum()


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]


SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random generator.")]


ActivationOpt = Annotated[
    Activation,
    typer.Option("--activation", case_sensitive=False, help="Hidden-unit nonlinearity (relu: cell rnn only)."),
]


CellOpt = Annotated[Cell, typer.Option("--cell", case_sensitive=False, help="Recurrent cell.")]


HiddenOpt = Annotated[int, typer.Option("--hidden", min=1, help="Hidden units per layer.")]


LayersOpt = Annotated[int, typer.Option("--layers", min=1, help="Number of stacked recurrent layers.")]


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[
    Device | None,
    typer.Option(
        "--device",
        case_sensitive=False,
        help="Where the model runs: cpu, or cuda (an NVIDIA GPU through CuPy; docs/gpu.md). train: train.device.",
        show_default="cpu",
    ),
]
CkptOpt = Annotated[str, typer.Option("--ckpt", help="Checkpoint file, or run folder (its best.npz, else last.npz).")]


class Weights(str, Enum):
    averaged = "averaged"
    trained = "trained"


WeightsOpt = Annotated[
    Weights,
    typer.Option(
        "--weights",
        case_sensitive=False,
        help="averaged: the checkpoint's weight average if it has one (train.ema_decay), else its weights; "
        "trained: the weights being trained.",
    ),
]


def apply_threads(n: int | None) -> None:
    """Limit the BLAS threads before the command imports numpy (see charrnn.threads); 0 or None: the default."""
    if n:
        from ..threads import set_threads

        with user_errors():
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


class ErrorsMode(str, Enum):
    strict = "strict"
    replace = "replace"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


class XAxis(str, Enum):
    step = "step"
    time = "time"


def check_positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def check_temperature(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):  # 0, negatives, inf and nan alike: one usage error
        raise typer.BadParameter(
            f"must be a finite number > 0, got {value}; for the most likely character every time use --argmax"
        )
    return value


def check_top_p(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"must lie in (0, 1], got {value}")
    return value


def check_fraction(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must lie in (0, 1), got {value}")
    return value


def check_probability(value: float) -> float:
    if not 0 <= value < 1:
        raise typer.BadParameter(f"must lie in [0, 1), got {value}")
    return value


def check_overrides(values: list[str] | None) -> list[str] | None:
    """--set values must read key.path=value: a malformed one is a usage error (exit 2)."""
    from ..config import ConfigError, parse_override

    for text in values or []:
        try:
            parse_override(text)
        except ConfigError as e:
            raise typer.BadParameter(str(e).removeprefix("--set ")) from None
    return values


def check_duration(value: str | None) -> str | None:
    """--timeout must read as a duration: otherwise a usage error (exit 2)."""
    if value is not None:
        from ..tune import TuneError, parse_duration

        try:
            parse_duration(value)
        except TuneError as e:
            raise typer.BadParameter(str(e).removeprefix("--timeout ")) from None
    return value
