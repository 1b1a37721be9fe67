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

Processes. `tune()` (the command) starts J worker processes (`python -m charrnn.tune`, worker.py), each with
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

Optuna is imported in study.py only, through `load_optuna()`; without it, TuneError says what to install.

The package, one job a file:

    space.py    the tune: section and the study it describes (no Optuna)
    study.py    Optuna, imported here only: storage, sampler, pruner, the trials' rows, best.yaml
    worker.py   a worker process: runs trials, retries the dead ones of this machine
    command.py  tune(): starts the workers, watches the study, stops them, sums up
"""

from .command import cores, trial_threads, tune
from .space import (
    Range,
    Study,
    TuneError,
    TuneSpec,
    grid_size,
    load_study_config,
    parse_duration,
    parse_space,
    parse_tune,
    trial_config,
)
from .study import TUNE_EXTRA, done_count, open_storage, open_study, trial_row, write_best

__all__ = [
    "TUNE_EXTRA",
    "Range",
    "Study",
    "TuneError",
    "TuneSpec",
    "cores",
    "done_count",
    "grid_size",
    "load_study_config",
    "open_storage",
    "open_study",
    "parse_duration",
    "parse_space",
    "parse_tune",
    "trial_config",
    "trial_row",
    "trial_threads",
    "tune",
    "write_best",
]
