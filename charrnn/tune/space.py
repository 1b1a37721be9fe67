"""The `tune:` section and the study it describes: the search space, the budget, the storage, a trial's config.

No Optuna here: the section is checked before anything runs, with the config's own type and range rules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    OTHER_SECTIONS,
    Config,
    ConfigError,
    _coerce,
    _suggest,
    check_value,
    field_types,
    from_dict,
    read_yaml,
    valid_keys,
)
from ..config import parse_duration as _duration_seconds
from ..errors import CharRNNError

PRUNERS = ("hyperband", "median", "none")


SAMPLERS = ("tpe", "random", "grid")


TUNE_KEYS = ("trials", "pruner", "sampler", "startup_trials", "space")


NOT_TUNABLE = {"data": "the text is the study's, not a hyperparameter", "out_dir": "tune sets it per trial",
               "train.threads": "tune splits the cores among its workers (--jobs)"}  # fmt: skip


JOURNAL_FILE = "study.journal"  # the default storage, in out_dir


BEST_FILE = "best.yaml"


TRIALS_DIR = "trials"


LOCK_NAME = ".tune.lock"


LOG_DIR = "tune-logs"  # the workers' stderr


class TuneError(CharRNNError):
    """A study that cannot be set up or run: a bad tune section, storage or option; missing Optuna."""


@dataclass
class Range:
    """A numeric range of one key: low..high, on a log scale or in steps of step (ints stay ints)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def values(self) -> list:
        """Every value of a stepped range (the grid sampler's points); TuneError when it has no step."""
        step = self.step or (1 if self.integer else None)
        if step is None:
            raise TuneError("a float range without a step has no list of values")
        n = math.floor((self.high - self.low) / step + 1e-9) + 1
        vals = [self.low + i * step for i in range(n)]
        return [int(v) for v in vals] if self.integer else [round(v, 12) for v in vals]


@dataclass
class TuneSpec:
    """The validated tune section. space maps a dotted config key to a list of values or a Range."""

    trials: int = 20
    pruner: str = "hyperband"
    sampler: str = "tpe"
    startup_trials: int = 5
    space: dict[str, list | Range] = field(default_factory=dict)


def parse_space(raw: Any) -> dict[str, list | Range]:
    """tune.space as read from YAML -> {dotted key: list of values | Range}.

    Raises ConfigError naming the key: an unknown key (with did-you-mean), a key tune sets itself, a value of the
    wrong type or out of the key's range (the config's own rules), a range whose low is not below high, a log
    range that reaches 0, a range of a key that is not a number.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("tune.space must be a mapping of config keys (model.hidden_size, ...) to a list of values "
                          "or a range {low, high}")  # fmt: skip
    types = field_types()
    space: dict[str, list | Range] = {}
    for key, spec in raw.items():
        key = str(key)
        where = f"tune.space.{key}"
        if key in NOT_TUNABLE:
            raise ConfigError(f"{where}: {key} cannot be tuned ({NOT_TUNABLE[key]})")
        if key not in valid_keys():
            raise ConfigError(f"{where}: unknown config key '{key}'{_suggest(key)}")
        typ = types[key]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} lists no values")
            vals = [check_value(key, v, typ) for v in spec]
            if len(set(map(repr, vals))) != len(vals):
                raise ConfigError(f"{where} lists a value twice: {spec}")
            space[key] = vals
        elif isinstance(spec, dict):
            if typ not in ("int", "float", "float | None"):
                raise ConfigError(f"{where}: {key} is not a number, so it takes a list of values, not a range")
            unknown = sorted(set(map(str, spec)) - {"low", "high", "log", "step"})
            if unknown:
                import difflib

                close = difflib.get_close_matches(unknown[0], ["low", "high", "log", "step"], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: unknown key '{unknown[0]}' (a range takes low, high, log, step){hint}")
            if "low" not in spec or "high" not in spec:
                raise ConfigError(f"{where}: a range needs low and high")
            num = "int" if typ == "int" else "float"
            low, high = check_value(key, spec["low"], num), check_value(key, spec["high"], num)
            if not low < high:
                raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise ConfigError(f"{where}.log must be true or false, got {log!r}")
            step = spec.get("step")
            if step is not None:
                step = _coerce(f"{where}.step", step, num)
                if not step > 0:
                    raise ConfigError(f"{where}.step must be > 0, got {step!r}")
                if log:
                    raise ConfigError(f"{where}: a range takes log or step, not both")
            if log and not low > 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
            space[key] = Range(low, high, log, step, integer=typ == "int")
        else:
            raise ConfigError(f"{where} must be a list of values or a range {{low, high}}, got {spec!r}")
    return space


def parse_tune(raw: Any) -> TuneSpec:
    """The `tune:` section of a config as read from YAML -> TuneSpec; ConfigError naming what is wrong."""
    if raw is None:
        raise ConfigError("the config has no tune: section; add one with a space to search (see docs/tune.md)")
    if not isinstance(raw, dict):
        raise ConfigError(f"tune must be a mapping, got {raw!r}")
    spec = TuneSpec()
    for key, value in raw.items():
        key = str(key)
        if key not in TUNE_KEYS:
            import difflib

            close = difflib.get_close_matches(key, TUNE_KEYS, n=1, cutoff=0.5)
            hint = f"; did you mean 'tune.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key 'tune.{key}'{hint}")
        if key in ("trials", "startup_trials"):
            v = _coerce(f"tune.{key}", value, "int")
            if v < (1 if key == "trials" else 0):
                raise ConfigError(f"tune.{key} must be {'> 0' if key == 'trials' else '>= 0'}, got {value!r}")
            setattr(spec, key, v)
        elif key in ("pruner", "sampler"):
            choices = PRUNERS if key == "pruner" else SAMPLERS
            v = "none" if value is None and key == "pruner" else value
            if not isinstance(v, str) or v.lower() not in choices:
                import difflib

                close = difflib.get_close_matches(str(v), choices, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"tune.{key} must be one of {', '.join(choices)}, got {value!r}{hint}")
            setattr(spec, key, v.lower())
        else:
            spec.space = parse_space(value)
    if not spec.space:
        raise ConfigError("the tune: section needs a space: the config keys to search (see docs/tune.md)")
    if spec.sampler == "grid":
        for key, dim in spec.space.items():
            if isinstance(dim, Range) and dim.step is None and not dim.integer:
                raise ConfigError(f"tune.space.{key}: the grid sampler needs a list or a range with a step")
    return spec


def grid_size(spec: TuneSpec) -> int:
    """How many points the grid of spec has (lists times stepped ranges)."""
    return math.prod(len(d) if isinstance(d, list) else len(d.values()) for d in spec.space.values())


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds; TuneError otherwise."""
    seconds = _duration_seconds(text)
    if seconds is None or not seconds > 0:
        raise TuneError(f"--timeout must be a duration like 90s, 10m or 1.5h, got {text!r}")
    return seconds


@dataclass
class Study:
    """A study as the command line names it: the config, its tune section, where the trials are stored."""

    config_path: str
    raw: dict  # the config's mapping, without its tune section
    cfg: Config  # the config as `charrnn train` reads it
    spec: TuneSpec
    out_dir: Path
    storage: str  # an Optuna storage URL, or a journal file path
    name: str

    @property
    def is_rdb(self) -> bool:
        return "://" in self.storage


def load_study_config(config_path: str, trials: int | None = None, storage: str | None = None,
                      study: str | None = None) -> Study:  # fmt: skip
    """Read and validate a tune config (the training config and its tune section): ConfigError if bad.

    trials overrides tune.trials; storage defaults to out_dir/study.journal; the study's name to the config
    file's stem.
    """
    raw = read_yaml(config_path)
    tune_raw = raw.get("tune")
    base = {k: v for k, v in raw.items() if k not in OTHER_SECTIONS}
    cfg = from_dict(base, default_out_dir=str(Path("runs") / Path(config_path).stem))
    spec = parse_tune(tune_raw)
    if trials is not None:
        if trials < 1:
            raise TuneError(f"--trials must be > 0, got {trials}")
        spec.trials = trials
    for key, dim in spec.space.items():  # every value of the space must make a valid config with the rest
        for v in dim if isinstance(dim, list) else [dim.low, dim.high]:
            try:
                trial_config(base, {key: v}, cfg.out_dir)
            except ConfigError as e:
                raise ConfigError(f"tune.space.{key}: {v!r} does not fit the config: {e}") from None
    out = Path(cfg.out_dir)
    return Study(config_path, base, cfg, spec, out, storage or str(out / JOURNAL_FILE),
                 study or Path(config_path).stem)  # fmt: skip


def _set(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *path, last = dotted.split(".")
    for part in path:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def trial_config(base: dict, params: dict, out_dir: str, threads: int | None = None) -> Config:
    """The config of one trial: base with params (dotted keys) set, out_dir and, if given, train.threads."""
    raw = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    for key, value in params.items():
        _set(raw, key, value)
    raw["out_dir"] = str(out_dir)
    if threads is not None:
        _set(raw, "train.threads", threads)
    return from_dict(raw)
