"""Optuna, imported here only: the storage (a journal file or an RDB URL with a heartbeat), the sampler, the
pruner, the study; the trials' counts, rows and the best trial's config."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import yaml

from .space import BEST_FILE, TRIALS_DIR, Range, Study, TuneError, trial_config

TUNE_EXTRA = 'pip install -e ".[tune]"'


HEARTBEAT_S = 10  # RDB storages: a running trial's heartbeat interval, seconds


GRACE_S = 30  # ... and how long without one before another worker fails and retries it


MAX_RETRY = 3  # retries of one trial whose worker died (a trial the user stopped is retried whatever its history)


_OPTUNA = None


def load_optuna():
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


def retry_callback(limited: bool = True):
    """Optuna's callback that queues a failed trial again (WAITING, same parameters, its number recorded).

    limited: at most MAX_RETRY retries in a line (a crash that repeats); a trial the user stopped is
    retried whatever its history (limited=False), so that no stopped trial is ever lost."""
    import warnings

    with warnings.catch_warnings():  # experimental since 2.8, and the API we rely on
        warnings.simplefilter("ignore", load_optuna().exceptions.ExperimentalWarning)
        return load_optuna().storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY if limited else None)


def open_storage(url: str):
    """An Optuna storage: an RDB URL (sqlite:///, postgresql+psycopg://, mysql+pymysql://...) with a heartbeat
    that fails and retries the trials of dead workers, or else a journal file path (created as needed).

    Raises TuneError when the URL cannot be used (a missing driver, a server that does not answer).
    """
    optuna = load_optuna()
    if "://" in url:
        import warnings

        attempts = 6
        for attempt in range(attempts):
            try:
                with warnings.catch_warnings():  # the heartbeat is experimental, and what we rely on
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                      heartbeat_stale_trial_callback=retry_callback())  # fmt: skip
            except ImportError as e:
                hint = " (for PostgreSQL use postgresql+psycopg://, the driver the tune extra installs)" \
                    if url.startswith("postgresql://") else ""  # fmt: skip
                raise TuneError(f"--storage {hide_password(url)}: its database driver is not installed "
                                f"({e.name or e}){hint}") from None  # fmt: skip
            except Exception as e:  # sqlalchemy's errors: a bad URL, a refused connection, a wrong password
                # another process created the tables at that moment: PostgreSQL reports a table's row in its
                # catalogue ("duplicate key") or an enum type ('type "..." already exists'); open it again
                if attempt < attempts - 1 and ("duplicate key" in str(e) or "already exists" in str(e)):
                    time.sleep(0.2 + 0.3 * attempt)
                    continue
                first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
                raise TuneError(f"cannot open --storage {hide_password(url)}: {first}") from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as e:
        raise TuneError(f"cannot use the journal file {path}: {e.strerror or e}") from None


def hide_password(url: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def make_sampler(study: Study, worker: str):
    """The study's sampler, seeded from train.seed and the worker's name: host, command slot, index.

    Workers must differ (the same seed would draw the same first points in every worker), and a study run by
    one command from scratch with --jobs 1 draws the same points every time: so the name holds no process id.
    """
    optuna = load_optuna()
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
    optuna = load_optuna()
    if study.spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=study.cfg.train.eval_every, max_resource="auto",
                                              reduction_factor=3)  # fmt: skip
    if study.spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=study.spec.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(study: Study, worker: str = "main"):
    """The Optuna study (created when new; minimizing the validation loss)."""
    optuna = load_optuna()
    storage = open_storage(study.storage)
    try:
        return optuna.create_study(storage=storage, study_name=study.name, direction="minimize",
                                   sampler=make_sampler(study, worker), pruner=make_pruner(study),
                                   load_if_exists=True)  # fmt: skip
    except ValueError as e:  # a study of that name that maximizes, say
        raise TuneError(f"study {study.name!r} in {hide_password(study.storage)}: {e}") from None


def suggest_value(trial, key: str, dim: list | Range):
    if isinstance(dim, list):
        if all(isinstance(v, (int, float, str, bool)) or v is None for v in dim):
            return trial.suggest_categorical(key, dim)
        raise AssertionError(dim)
    if dim.integer:
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)


def state_counts(ostudy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in ostudy.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def done_count(counts: dict[str, int]) -> int:
    """Trials that count toward the budget: complete and pruned ones (a failed trial is retried instead)."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


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
    from ..files import atomic_write

    text = head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise TuneError(f"cannot write {path}: {e.strerror or e}") from None
    return path
