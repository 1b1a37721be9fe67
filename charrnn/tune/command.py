"""`tune()`, what `charrnn tune` runs: starts the worker processes, watches the study, stops them, sums up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import plural
from .space import LOG_DIR, TRIALS_DIR, Study, TuneError, grid_size, load_study_config
from .study import done_count, hide_password, load_optuna, open_study, state_counts, trial_row, write_best
from .worker import POLL_S, LocalLock

STOP_GRACE_S = 60.0  # after a stop, a worker that has not ended in this long is killed (its trial resumes later)


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
    optuna = load_optuna()
    ostudy = open_study(study)
    threads = trial_threads(study.cfg, jobs)
    deadline = time.time() + timeout if timeout else None
    cb("start", {"study": study.name, "storage": hide_password(study.storage), "trials": study.spec.trials,
                 "jobs": jobs, "threads": threads, "out_dir": str(study.out_dir),
                 "done": done_count(state_counts(ostudy))})  # fmt: skip
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
                counts = state_counts(ostudy)
                if rc < 0 and not stopping:  # killed outright (the OOM killer, kill -9): its trial is retried
                    cb("note", f"worker {index} was killed ({_signal_name(-rc)}); its trial will be retried")
                    if respawns < 3 * jobs and done_count(counts) < study.spec.trials:
                        respawns += 1
                        spawn(int(index))
                elif rc == 0 and not stopping and counts.get("WAITING", 0) and not procs and respawns < 3 * jobs:
                    # stopped on its own (a SIGTERM to it alone): its queued retry still needs a worker
                    respawns += 1
                    spawn(int(index))
                elif rc > 0 and not stopping:
                    errors.append(_last_line(logs[index]) or f"worker {index} exited with status {rc}")
            cb("trials", [trial_row(t) for t in ostudy.get_trials(deepcopy=False)])
    finally:
        for p in procs.values():  # an error here (or Ctrl-C twice): the workers stop too
            _signal(p, signal.SIGTERM)
        give_up = time.time() + STOP_GRACE_S
        for p in procs.values():  # a worker stuck (on a lock, an unreachable database) is killed after the grace
            try:
                p.wait(timeout=max(give_up - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL)
                p.wait()
        slot_lock.release()
    all_trials = ostudy.get_trials(deepcopy=False)
    counts = state_counts(ostudy)
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
        "study": study.name, "storage": hide_password(study.storage), "out_dir": str(study.out_dir),
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
    mine = {"study": study.name, "storage": hide_password(storage)}
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


def _take_slot(out_dir: Path) -> tuple[int, LocalLock]:
    """The lowest command slot free on this machine (0 for the only command): a lock held until the end.

    The slot names this command's workers, and so seeds their samplers (make_sampler) apart from those of
    another command running the same study here.
    """
    import fcntl

    for slot in range(1000):
        lock = LocalLock(out_dir / LOG_DIR / f".slot-{slot}.lock")
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
