"""A worker process (`python -m charrnn.tune ARGS`): runs trials until the budget is reached or a stop comes;
finds the trials of dead workers on this machine and queues their retry."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ..config import ConfigError
from ..errors import CharRNNError, plural
from .space import LOCK_NAME, TRIALS_DIR, Study, load_study_config, trial_config
from .study import done_count, load_optuna, open_study, retry_callback, state_counts, suggest_value

POLL_S = 0.5  # how often the command reads the study for its display
MAX_FAILS = 3  # a worker gives up after this many trials in a row failed (a config error in every trial, say)


class _SpaceChanged(Exception):
    """The study's trials used another list or scale for a key: no trial of this worker can run (not caught
    with the trial's other errors: the worker ends)."""


class _Stopped(Exception):
    """A stop request (SIGINT, SIGTERM) ended the trial; its run keeps a resumable last.npz."""


class LocalLock:
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
    from ..runlock import RunLock, RunLockedError

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

    optuna = load_optuna()
    if study.is_rdb:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ostudy)
    host = socket.gethostname()
    storage, failed = ostudy._storage, []
    retry = retry_callback()
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


class _Worker:
    """One worker process: runs trials until the budget is reached, a stop request comes, or time runs out."""

    def __init__(self, study: Study, worker: str, threads: int, deadline: float | None):
        self.study, self.worker, self.threads, self.deadline = study, worker, threads, deadline
        self.stop_signal: int | None = None
        self.parent = os.getppid()  # when the command dies outright, its workers stop too
        self.lock = LocalLock(study.out_dir / LOCK_NAME)

    def run(self) -> int:
        optuna = load_optuna()
        ostudy = open_study(self.study, self.worker)
        fails, last_error = 0, ""
        while not self.stopping():
            self.lock.acquire()
            try:
                if self.stopping():  # the stop came while this worker waited for the lock: start nothing
                    return 0
                fail_dead_trials(ostudy, self.study)
                counts = state_counts(ostudy)
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
            if frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs.get("stopped_at_step") is not None:
                # stopped, not broken: queue its retry, which resumes from its checkpoint (a retry inherits the
                # attribute, set to None, from a stopped original: only this trial's own stop counts here)
                retry_callback(limited=False)(ostudy, frozen)
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
        optuna = load_optuna()
        from .. import checkpoint
        from ..train import DivergedError, train

        self.number = trial.number
        study = self.study
        try:
            params = {key: suggest_value(trial, key, dim) for key, dim in study.spec.space.items()}
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
            # a combination the config refuses (model.cell lstm with activation relu): pruned, so that it counts
            # (a grid moves past it; TPE learns to avoid it) instead of failing and being proposed again
            trial.set_user_attr("error", str(e))
            raise optuna.TrialPruned(f"the config refuses these values: {e}") from None
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
        if state["pruned"] and result.status == "interrupted":  # pruned (a prune at the last step completes)
            trial.set_user_attr("pruned_at_step", result.step)
            raise optuna.TrialPruned(f"pruned at step {result.step}")
        if result.status == "interrupted":
            trial.set_user_attr("stopped_at_step", result.step)
            raise _Stopped(f"stopped at step {result.step}")
        if result.best_val is None:
            raise CharRNNError("the run ended before its first evaluation")
        return result.best_val


def worker_main(argv: list[str]) -> int:
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
    from ..threads import set_threads

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
