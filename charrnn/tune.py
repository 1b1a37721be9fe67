"""`charrnn tune`: search hyperparameters with Optuna, one ordinary training run per trial.

The config is a training config plus a `tune:` section (which `charrnn train` ignores):

    tune:
      trials: 20                 # the study's budget: complete + pruned trials, all workers together
      pruner: hyperband          # hyperband | median | none
      sampler: tpe               # tpe | random | grid
      startup_trials: 5          # trials the TPE sampler and the median pruner leave alone first
      space:                     # any config key by its dotted name: a list (one of these) or a range
        model.hidden_size: [256, 512]
        train.learning_rate: {low: 5.0e-4, high: 5.0e-3, log: true}

Why Optuna: it is the field's standard search engine (TPE, Hyperband, grids), and its storages make a study a
shared object, so many processes on one machine or many share the trials without a coordinator of ours.

Every trial is a run of `train.train` in `out_dir/trials/<number>`, with the config's seed: it reports each
evaluation's validation loss with `trial.report` and stops through `should_stop` when the pruner prunes it (one
training loop, not a second). Its value is the run's best validation loss (nats/char). A loss that stops being
finite (train.DivergedError) prunes the trial, with the reason in its user attribute `diverged`: the pruner's job
is to drop hopeless settings, and a pruned trial (unlike a failed one) tells the TPE sampler to avoid them.

Processes. `tune()` (the command) starts J worker processes (`python -m charrnn.tune`), each with
max(1, cores // J) BLAS threads, and watches the study; the workers run trials until the budget is reached.
Workers on this machine take a lock (`out_dir/.tune.lock`) around "check the budget, ask for a trial, take its
run folder's lock", so they neither overshoot the budget nor mistake a starting trial for a dead one. Workers on
other machines overshoot by at most one trial each, like Optuna's MaxTrialsCallback.

Faults. A stop request (SIGINT, SIGTERM) makes every worker stop its trial after the current step: the run keeps
a resumable last.npz, the trial is marked (user attribute `stopped_at_step`) and failed, and a retry of it is
queued, which resumes from that checkpoint (its folder is renamed to the retry's number). A worker killed
outright is noticed by Optuna's heartbeat on RDB storages (SQLite, PostgreSQL, MySQL: failed after GRACE_S, then
retried by RetryHeartbeatStaleTrialCallback); Optuna's journal storage has no heartbeat, so for it a worker here fails
the RUNNING trials of this machine whose run folder is no longer locked (runlock.py: the lock dies with its
process), and queues their retry the same way. Running the same command again continues the study: the budget
counts the complete and pruned trials already there.

Optuna is imported here only, through `_optuna()`; without it, TuneError says what to install.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import (
    _DURATION,
    OTHER_SECTIONS,
    Config,
    ConfigError,
    _check_range,
    _coerce,
    _suggest,
    from_dict,
    read_yaml,
    valid_keys,
)
from .errors import CharRNNError, plural

TUNE_EXTRA = 'pip install -e ".[tune]"'
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
HEARTBEAT_S = 10  # RDB storages: a running trial's heartbeat interval, seconds
GRACE_S = 30  # ... and how long without one before another worker fails and retries it
MAX_RETRY = 3  # retries of one trial after its worker died or was stopped
MAX_FAILS = 3  # a worker gives up after this many trials in a row failed (a config error in every trial, say)
POLL_S = 0.5  # how often the command reads the study for its display


class TuneError(CharRNNError):
    """A study that cannot be set up or run: a bad tune section, storage or option; missing Optuna."""


# --------------------------------------------------------------------------- the tune section


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


def _field_types() -> dict[str, str]:
    import dataclasses

    types = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    for section in ("model", "train"):
        cls = type(getattr(Config(), section))
        types |= {f"{section}.{f.name}": str(f.type) for f in dataclasses.fields(cls)}
    return types


def _value(key: str, value: Any, typ: str) -> Any:
    """One value of key, checked and converted as the config checks it (ConfigError naming key)."""
    v = _coerce(key, value, typ)
    if isinstance(v, str) and key in ("model.cell", "model.activation", "model.dtype", "train.optimizer",
                                      "train.lr_schedule"):  # fmt: skip
        v = v.lower()
    _check_range(key, v)
    return v


def parse_space(raw: Any) -> dict[str, list | Range]:
    """tune.space as read from YAML -> {dotted key: list of values | Range}.

    Raises ConfigError naming the key: an unknown key (with did-you-mean), a key tune sets itself, a value of the
    wrong type or out of the key's range (the config's own rules), a range whose low is not below high, a log
    range that reaches 0, a range of a key that is not a number.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("tune.space must be a mapping of config keys (model.hidden_size, ...) to a list of values "
                          "or a range {low, high}")  # fmt: skip
    types = _field_types()
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
            vals = [_value(key, v, typ) for v in spec]
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
            low, high = _value(key, spec["low"], num), _value(key, spec["high"], num)
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
    m = _DURATION.match(str(text))
    if not m or not float(m.group(1)) > 0:
        raise TuneError(f"--timeout must be a duration like 90s, 10m or 1.5h, got {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[(m.group(2) or "s").lower()]


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


# --------------------------------------------------------------------------- Optuna


_OPTUNA = None


def _optuna():
    """The optuna module, imported once, quietly; TuneError saying what to install without it."""
    global _OPTUNA
    if _OPTUNA is None:
        try:
            import optuna
        except ImportError:
            raise TuneError(f"charrnn tune needs Optuna: {TUNE_EXTRA}") from None
        import warnings

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the command's table says what its log would
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        _OPTUNA = optuna
    return _OPTUNA


def _retry_callback():
    """Optuna's callback that queues a failed trial again (WAITING, same parameters, its number recorded)."""
    import warnings

    with warnings.catch_warnings():  # experimental since 2.8, and the API we rely on
        warnings.simplefilter("ignore", _optuna().exceptions.ExperimentalWarning)
        return _optuna().storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(url: str):
    """An Optuna storage: an RDB URL (sqlite:///, postgresql+psycopg://, mysql+pymysql://...) with a heartbeat
    that fails and retries the trials of dead workers, or else a journal file path (created as needed).

    Raises TuneError when the URL cannot be used (a missing driver, a server that does not answer).
    """
    optuna = _optuna()
    if "://" in url:
        import warnings

        for attempt in range(3):
            try:
                with warnings.catch_warnings():  # the heartbeat is experimental, and what we rely on
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                      heartbeat_stale_trial_callback=_retry_callback())  # fmt: skip
            except ImportError as e:
                hint = " (for PostgreSQL use postgresql+psycopg://, the driver the tune extra installs)" \
                    if url.startswith("postgresql://") else ""  # fmt: skip
                raise TuneError(f"--storage {_hide_password(url)}: its database driver is not installed "
                                f"({e.name or e}){hint}") from None  # fmt: skip
            except Exception as e:  # sqlalchemy's errors: a bad URL, a refused connection, a wrong password
                if attempt < 2 and "duplicate key" in str(e):  # another process created the tables at that moment
                    time.sleep(0.5)
                    continue
                first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise TuneError(f"cannot open --storage {_hide_password(url)}: {first}") from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as e:
        raise TuneError(f"cannot use the journal file {path}: {e.strerror or e}") from None


def _hide_password(url: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def make_sampler(study: Study, worker: str):
    """The study's sampler, seeded from train.seed and the worker's name: host, command slot, index.

    Workers must differ (the same seed would draw the same first points in every worker), and a study run by
    one command from scratch with --jobs 1 draws the same points every time: so the name holds no process id.
    """
    optuna = _optuna()
    spec = study.spec
    seed = zlib.crc32(f"{study.cfg.train.seed}:{worker}".encode())
    if spec.sampler == "grid":
        grid = {k: (d if isinstance(d, list) else d.values()) for k, d in spec.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)


def make_pruner(study: Study):
    """hyperband (resources: training steps, from one evaluation to the last), median, or none."""
    optuna = _optuna()
    if study.spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=study.cfg.train.eval_every, max_resource="auto",
                                              reduction_factor=3)  # fmt: skip
    if study.spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=study.spec.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(study: Study, worker: str = "main"):
    """The Optuna study (created when new; minimizing the validation loss)."""
    optuna = _optuna()
    storage = open_storage(study.storage)
    try:
        return optuna.create_study(storage=storage, study_name=study.name, direction="minimize",
                                   sampler=make_sampler(study, worker), pruner=make_pruner(study),
                                   load_if_exists=True)  # fmt: skip
    except ValueError as e:  # a study of that name that maximizes, say
        raise TuneError(f"study {study.name!r} in {_hide_password(study.storage)}: {e}") from None


def _suggest_value(trial, key: str, dim: list | Range):
    if isinstance(dim, list):
        if all(isinstance(v, (int, float, str, bool)) or v is None for v in dim):
            return trial.suggest_categorical(key, dim)
        raise AssertionError(dim)
    if dim.integer:
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)


# --------------------------------------------------------------------------- the worker


class _SpaceChanged(Exception):
    """The study's trials used another list or scale for a key: no trial of this worker can run (not caught
    with the trial's other errors: the worker ends)."""


class _Stopped(Exception):
    """A stop request (SIGINT, SIGTERM) ended the trial; its run keeps a resumable last.npz."""


class _LocalLock:
    """The lock of this machine's workers around 'check the budget, ask, lock the trial's run folder'."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _folder_is_free(folder: Path) -> bool:
    """Whether no process holds the run folder's lock (a folder not made yet counts as free)."""
    from .runlock import RunLock, RunLockedError

    if not folder.is_dir():
        return True
    try:
        with RunLock(folder):
            return True
    except RunLockedError:
        return False
    except OSError:
        return False


def _worker_alive(pid) -> bool:
    """Whether process pid lives and is a tune worker (a pid reused by another program, or a zombie, is not)."""
    if not isinstance(pid, int):
        return True  # not recorded yet: the trial is starting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"charrnn.tune" in cmdline.read_bytes()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc (macOS): the signal test alone


def fail_dead_trials(ostudy, study: Study) -> list[int]:
    """Fail this machine's RUNNING trials whose worker died, and queue their retries; their numbers.

    Optuna's journal storage has no heartbeat. A trial records its worker's host and process id, and the worker
    holds the trial's run folder's lock while it trains (runlock.py: the lock dies with the process): a trial of
    this host whose worker process is gone and whose run folder is not locked is dead. (The lock alone is not
    enough: a worker releases it when training ends, a moment before it reports the result.) On RDB storages
    Optuna's heartbeat does the same across machines (fail_stale_trials, RetryHeartbeatStaleTrialCallback);
    this check only comes sooner for this machine's trials.
    """
    import warnings

    optuna = _optuna()
    if study.is_rdb:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)
    host = socket.gethostname()
    storage, failed = ostudy._storage, []
    retry = _retry_callback()
    for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ua = t.user_attrs
        if ua.get("host") != host or _worker_alive(ua.get("pid")) or not _folder_is_free(Path(ua.get("run", "."))):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "worker_died", True)
            if storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(t.number)
                retry(ostudy, storage.get_trial(t._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed


def _counts(ostudy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in ostudy.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def done_count(counts: dict[str, int]) -> int:
    """Trials that count toward the budget: complete and pruned ones (a failed trial is retried instead)."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


class _Worker:
    """One worker process: runs trials until the budget is reached, a stop request comes, or time runs out."""

    def __init__(self, study: Study, worker: str, threads: int, deadline: float | None):
        self.study, self.worker, self.threads, self.deadline = study, worker, threads, deadline
        self.stop_signal: int | None = None
        self.parent = os.getppid()  # when the command dies outright, its workers stop too
        self.lock = _LocalLock(study.out_dir / LOCK_NAME)

    def run(self) -> int:
        optuna = _optuna()
        ostudy = open_study(self.study, self.worker)
        fails, last_error = 0, ""
        while not self.stopping():
            self.lock.acquire()
            try:
                fail_dead_trials(ostudy, self.study)
                counts = _counts(ostudy)
                done, running, waiting = done_count(counts), counts.get("RUNNING", 0), counts.get("WAITING", 0)
                if done >= self.study.spec.trials:
                    return 0
                if self.deadline is not None and time.time() >= self.deadline:
                    return 0
                if waiting == 0 and done + running >= self.study.spec.trials:
                    # the others run the rest; stay while one of them is on this machine, to retry it if it dies
                    local = [t for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                             if t.user_attrs.get("host") == socket.gethostname()]  # fmt: skip
                    if not local:
                        return 0
                    self.lock.release()
                    time.sleep(POLL_S)
                    continue
                self.number = None
                ostudy.optimize(self.objective, n_trials=1, catch=(CharRNNError, _Stopped))
            finally:
                self.lock.release()
            if self.number is None:
                continue
            frozen = next(t for t in ostudy.get_trials(deepcopy=False) if t.number == self.number)
            if frozen.state == optuna.trial.TrialState.FAIL and "stopped_at_step" in frozen.user_attrs:
                # stopped, not broken: queue its retry, which resumes from its checkpoint
                _retry_callback()(ostudy, frozen)
            elif frozen.state == optuna.trial.TrialState.FAIL:
                fails, last_error = fails + 1, frozen.user_attrs.get("error") or "see the log"
                if fails >= MAX_FAILS:
                    print(f"error: {plural(fails, 'trial')} in a row failed; the last: {last_error}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    return 3
            else:
                fails = 0
        return 0

    def stopping(self) -> bool:
        """A stop signal came, or the command that started this worker is gone."""
        return self.stop_signal is not None or os.getppid() != self.parent

    def objective(self, trial) -> float:
        """Train one trial's run; its best validation loss (nats/char). Raises optuna.TrialPruned, _Stopped."""
        optuna = _optuna()
        from . import checkpoint
        from .train import DivergedError, train

        self.number = trial.number
        study = self.study
        try:
            params = {key: _suggest_value(trial, key, dim) for key, dim in study.spec.space.items()}
        except ValueError as e:  # the study holds trials of another list or scale for a key
            raise _SpaceChanged(
                f"the study {study.name!r} was run with another tune.space ({e}); a list of values "
                f"or a log setting cannot change within a study: use --study NEWNAME"
            ) from None
        folder = (study.out_dir / TRIALS_DIR / str(trial.number)).absolute()
        for key, value in {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.worker,
                           "run": str(folder)}.items():  # fmt: skip
            trial.set_user_attr(key, value)
        for stale in ("stopped_at_step", "worker_died", "error", "diverged", "pruned_at_step"):
            if stale in trial.user_attrs:  # a retry inherits its original's attributes
                trial.set_user_attr(stale, None)
        try:
            cfg = trial_config(study.raw, params, str(folder), self.threads)
        except ConfigError as e:
            trial.set_user_attr("error", str(e))
            raise
        resume = False
        system_attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
        original = system_attrs.get("failed_trial")  # RetryHeartbeatStaleTrialCallback's record
        if original is not None:
            old = folder.parent / str(original)
            history = system_attrs.get("retry_history", [original])
            for n in reversed(history):  # the latest checkpoint of this trial's line of retries
                old = folder.parent / str(n)
                if (old / checkpoint.LAST).is_file():
                    break
            if (old / checkpoint.LAST).is_file() and not folder.exists() and _folder_is_free(old):
                old.rename(folder)
                resume = True
                trial.set_user_attr("resumed_from", int(old.name))
                meta = checkpoint.load(folder / checkpoint.LAST).meta
                for record in meta.get("history", []):
                    trial.report(record["val_loss"], record["step"])
        state = {"pruned": False, "step": 0}

        def callback(kind: str, info: dict) -> None:
            if kind == "start":
                self.lock.release()  # the run folder is locked now: the trial is visibly alive
            elif kind == "step":
                state["step"] = info["step"]
            elif kind == "eval":
                trial.report(info["val_loss"], info["step"])
                if trial.should_prune():
                    state["pruned"] = True

        try:
            result = train(cfg, resume=resume, callback=callback,
                           should_stop=lambda: state["pruned"] or self.stopping())  # fmt: skip
        except DivergedError as e:
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except CharRNNError as e:
            trial.set_user_attr("error", str(e))
            raise
        finally:
            self.lock.release()
        if state["pruned"] and result.status == "interrupted":  # pruned at the last step, it completed anyway
            trial.set_user_attr("pruned_at_step", result.step)
            raise optuna.TrialPruned(f"pruned at step {result.step}")
        if result.status == "interrupted":
            trial.set_user_attr("stopped_at_step", result.step)
            raise _Stopped(f"stopped at step {result.step}")
        if result.best_val is None:
            raise CharRNNError("the run ended before its first evaluation")
        return result.best_val


def _worker_main(argv: list[str]) -> int:
    """`python -m charrnn.tune ARGS_JSON`: one worker of tune(); stops its trial on SIGINT/SIGTERM."""
    args = json.loads(argv[0])
    worker: _Worker | None = None
    pending: list[int] = []

    def on_signal(signum, frame):
        pending.append(signum)
        if worker is not None:
            worker.stop_signal = signum

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    from .threads import set_threads

    try:
        set_threads(args["threads"])  # before numpy loads
        study = load_study_config(args["config"], args["trials"], args["storage"], args["study"])
        worker = _Worker(study, args["worker"], args["threads"], args["deadline"])
        if pending:
            return 0
        return worker.run()
    except (CharRNNError, _SpaceChanged) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


# --------------------------------------------------------------------------- the command


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def trial_threads(cfg: Config, jobs: int) -> int:
    """A worker's BLAS threads: its share of the cores, max(1, cores // jobs), or train.threads if lower."""
    share = max(1, cores() // jobs)
    return min(cfg.train.threads, share) if cfg.train.threads else share


def trial_row(t, now: float | None = None) -> dict:
    """What the display and the summary show of one trial (a FrozenTrial)."""
    import datetime

    start, end = t.datetime_start, t.datetime_complete
    seconds = None
    if start is not None:
        seconds = ((end or datetime.datetime.now()) - start).total_seconds()
    inter = t.intermediate_values
    best = t.value if t.value is not None else (min(inter.values()) if inter else None)
    ua = t.user_attrs
    note = ""
    if ua.get("diverged"):
        note = "diverged"
    elif ua.get("pruned_at_step") is not None:
        note = f"pruned at step {ua['pruned_at_step']}"
    elif ua.get("stopped_at_step") is not None:
        note = f"stopped at step {ua['stopped_at_step']}, retried"
    elif ua.get("worker_died"):
        note = "worker died, retried"
    elif ua.get("error"):
        note = ua["error"]
    if ua.get("resumed_from") is not None:
        note = (note + "; " if note else "") + f"resumed trial {ua['resumed_from']}'s run"
    return {"number": t.number, "state": t.state.name, "params": dict(t.params), "val_loss": best,
            "step": max(inter) if inter else None, "seconds": seconds, "note": note,
            "run": ua.get("run")}  # fmt: skip


def write_best(study: Study, best) -> Path:
    """out_dir/best.yaml: the best trial's config, for `charrnn train` (out_dir: out_dir/best; no tune section)."""
    cfg = trial_config(study.raw, best.params, str(study.out_dir / "best"))
    path = study.out_dir / BEST_FILE
    head = (f"# the best trial of study {study.name!r} ({study.config_path}): trial {best.number}, best val loss "
            f"{best.value:.4f} nats/char; its run: {study.out_dir / TRIALS_DIR / str(best.number)}\n")  # fmt: skip
    from .files import atomic_write

    text = head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise TuneError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def tune(
    config_path: str,
    *,
    trials: int | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    callback: Callable[[str, Any], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Run (or continue) the study of a tune config with `jobs` worker processes here; return its summary.

    timeout: seconds after which no new trial starts (running ones finish). callback(kind, info) reports
    ("start", {...}), ("trials", [row, ...]) every POLL_S seconds, ("note", text). When should_stop() turns
    true, every worker is sent SIGTERM and stops its trial with a resumable checkpoint. Returns a dict: the
    study, its counts, its trials (trial_row), the best trial and best.yaml, status ("finished", "stopped",
    "timeout" or "unfinished"). Raises ConfigError/TuneError (CharRNNError) for a bad config, storage or
    option, or when the workers fail (the last error).
    """
    cb = callback or (lambda kind, info: None)
    stop = should_stop or (lambda: False)
    if jobs < 1:
        raise TuneError(f"--jobs must be >= 1, got {jobs}")
    study = load_study_config(config_path, trials, storage, study_name)
    if study.spec.sampler == "grid" and grid_size(study.spec) < study.spec.trials:
        cb("note", f"the grid has {plural(grid_size(study.spec), 'point')}: the study stops there, "
                   f"below tune.trials ({study.spec.trials})")  # fmt: skip
        study.spec.trials = grid_size(study.spec)
    try:
        (study.out_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TuneError(f"cannot create {study.out_dir / LOG_DIR}: {e.strerror}") from None
    _claim_out_dir(study)
    optuna = _optuna()
    ostudy = open_study(study)
    threads = trial_threads(study.cfg, jobs)
    deadline = time.time() + timeout if timeout else None
    cb("start", {"study": study.name, "storage": _hide_password(study.storage), "trials": study.spec.trials,
                 "jobs": jobs, "threads": threads, "out_dir": str(study.out_dir),
                 "done": done_count(_counts(ostudy))})  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    host = socket.gethostname()
    slot, slot_lock = _take_slot(study.out_dir)

    def spawn(index: int) -> None:
        name = f"{host}:{slot}:{index}"
        args = {"config": config_path, "trials": study.spec.trials, "storage": study.storage,
                "study": study.name, "worker": name, "threads": threads, "deadline": deadline}  # fmt: skip
        log = study.out_dir / LOG_DIR / (f"worker-{index}.log" if slot == 0 else f"worker-{slot}.{index}.log")
        with open(log, "ab") as f:
            procs[str(index)] = subprocess.Popen([sys.executable, "-m", "charrnn.tune", json.dumps(args)],
                                                 stdin=subprocess.DEVNULL, stdout=f, stderr=f)  # fmt: skip
        logs[str(index)] = log

    for i in range(jobs):
        spawn(i)
    stopping, respawns, errors = False, 0, []
    try:
        while procs:
            for _ in range(10):  # the display every POLL_S; a stop request within POLL_S / 10
                time.sleep(POLL_S / 10)
                if stop() and not stopping:
                    break
            if stop() and not stopping:
                stopping = True
                for p in procs.values():
                    _signal(p, signal.SIGTERM)
            for index, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[index]
                if rc < 0 and not stopping:  # killed outright (the OOM killer, kill -9): its trial is retried
                    cb("note", f"worker {index} was killed ({_signal_name(-rc)}); its trial will be retried")
                    if respawns < 3 * jobs and done_count(_counts(ostudy)) < study.spec.trials:
                        respawns += 1
                        spawn(int(index))
                elif rc > 0 and not stopping:
                    errors.append(_last_line(logs[index]) or f"worker {index} exited with status {rc}")
            cb("trials", [trial_row(t) for t in ostudy.get_trials(deepcopy=False)])
    finally:
        for p in procs.values():  # an error here (or Ctrl-C twice): the workers stop too
            _signal(p, signal.SIGTERM)
        for p in procs.values():
            p.wait()
        slot_lock.release()
    all_trials = ostudy.get_trials(deepcopy=False)
    counts = _counts(ostudy)
    rows = [trial_row(t) for t in all_trials]
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    best_path = write_best(study, best) if best is not None else None
    done = done_count(counts)
    if done >= study.spec.trials:
        status = "finished"
    elif stopping:
        status = "stopped"
    elif deadline is not None and time.time() >= deadline:
        status = "timeout"
    else:
        status = "unfinished"
    if status == "unfinished" and errors:
        raise TuneError(errors[-1].removeprefix("error: "))
    return {
        "study": study.name, "storage": _hide_password(study.storage), "out_dir": str(study.out_dir),
        "status": status, "budget": study.spec.trials, "done": done, "counts": counts, "trials": rows,
        "best": None if best is None else {
            "number": best.number, "val_loss": best.value, "params": dict(best.params),
            "run": str(study.out_dir / TRIALS_DIR / str(best.number)), "config": str(best_path),
        },
    }  # fmt: skip


def _claim_out_dir(study: Study) -> None:
    """out_dir's trials/<number> folders belong to one study: refuse another (its numbers would clash)."""
    marker = study.out_dir / LOG_DIR / "study.json"
    storage = study.storage if study.is_rdb else str(Path(study.storage).resolve())
    mine = {"study": study.name, "storage": _hide_password(storage)}
    try:
        theirs = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        theirs = None
    if theirs is not None and theirs != mine:
        raise TuneError(f"{study.out_dir} holds the trials of study {theirs.get('study')!r} in "
                        f"{theirs.get('storage')}; study {study.name!r} in {mine['storage']} needs an out_dir of its "
                        f"own (set out_dir in {study.config_path}), or run that study again")  # fmt: skip
    if theirs is None:
        try:
            marker.write_text(json.dumps(mine) + "\n", encoding="utf-8")
        except OSError as e:
            raise TuneError(f"cannot write {marker}: {e.strerror or e}") from None


def _take_slot(out_dir: Path) -> tuple[int, _LocalLock]:
    """The lowest command slot free on this machine (0 for the only command): a lock held until the end.

    The slot names this command's workers, and so seeds their samplers (make_sampler) apart from those of
    another command running the same study here.
    """
    import fcntl

    for slot in range(1000):
        lock = _LocalLock(out_dir / LOG_DIR / f".slot-{slot}.lock")
        lock.fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, lock
        except BlockingIOError:
            lock.release()
    raise TuneError(f"1,000 commands run this study in {out_dir} at once")


def _signal(p: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        p.send_signal(sig)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
