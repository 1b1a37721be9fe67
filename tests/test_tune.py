"""charrnn tune: the tune section, studies with worker processes, pruning, faults, storages, reproducibility.

Real studies on a ~20 KB text with 8-16 hidden units and tens of steps per trial: each worker process costs about
a second of imports, so the tests keep the studies few and short.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import VERSE, write_config
from typer.testing import CliRunner

from charrnn import tune as tune_mod
from charrnn.cli import app
from charrnn.config import ConfigError, load_config
from charrnn.data import prepare
from charrnn.tune import study as tune_study
from charrnn.tune.command import _take_slot
from charrnn.tune.study import retry_callback

optuna = pytest.importorskip("optuna", reason='charrnn tune needs Optuna (pip install -e ".[tune]")')
runner = CliRunner()
TEXT = VERSE * 135  # ~20 KB


@pytest.fixture
def text_dir(tmp_path):
    prepare(TEXT, tmp_path / "data", val_frac=0.1)
    return tmp_path / "data"


def tune_config(tmp_path, data_dir, tune: str, model=None, **train):
    """write_config's tiny training config plus a tune: section (YAML text, indented by the caller's dedent)."""
    train.setdefault("max_steps", 60)
    path = write_config(tmp_path, data_dir, model=model, **train)
    path.write_text(path.read_text() + "tune:\n" + "".join(f"  {line}\n" for line in tune.strip().splitlines()))
    return path


def study_trials(storage: str, name: str = "cfg"):
    s = optuna.load_study(study_name=name, storage=storage if "://" in storage else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))  # fmt: skip
    return s.get_trials(deepcopy=False)


def assert_budget_met(trials, budget):
    """Exactly `budget` trials count (complete or pruned), none still running, numbers and run folders unique."""
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == budget, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    runs = [t.user_attrs["run"] for t in counted]
    assert len(set(runs)) == len(runs)
    for t in counted:
        assert Path(t.user_attrs["run"]).name == str(t.number)
        assert (Path(t.user_attrs["run"]) / "last.npz").is_file() or t.user_attrs.get("diverged")  # a run of its own


def cli(*args):
    return [sys.executable, "-m", "charrnn", "tune", *map(str, args)]


# --------------------------------------------------------------------------- the tune section


def test_space_parses_lists_and_ranges_as_the_config_types_them():
    spec = tune_mod.parse_tune({
        "trials": 7, "pruner": "Median", "sampler": "random",
        "space": {"model.hidden_size": [8, 16.0], "model.cell": ["RNN", "lstm"],
                  "train.learning_rate": {"low": "1e-3", "high": 0.1, "log": True},
                  "model.num_layers": {"low": 1, "high": 3}, "model.dropout": {"low": 0.0, "high": 0.5, "step": 0.25}},
    })  # fmt: skip
    assert (spec.trials, spec.pruner, spec.sampler) == (7, "median", "random")
    assert spec.space["model.hidden_size"] == [8, 16] and all(type(v) is int for v in spec.space["model.hidden_size"])
    assert spec.space["model.cell"] == ["rnn", "lstm"]
    lr = spec.space["train.learning_rate"]
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-3, 0.1, True, False)
    layers = spec.space["model.num_layers"]
    assert layers.integer and type(layers.low) is int and layers.values() == [1, 2, 3]
    assert spec.space["model.dropout"].values() == [0.0, 0.25, 0.5]


@pytest.mark.parametrize(
    "tune, message",
    [
        ({"space": {"train.lerning_rate": [0.1]}},
         "unknown config key 'train.lerning_rate'; did you mean 'train.learning_rate'"),
        ({"space": {"lr": [0.1]}}, "did you mean 'train.learning_rate'"),
        ({"space": {"model.hidden_size": ["big"]}}, "model.hidden_size must be an integer, got 'big'"),
        ({"space": {"model.hidden_size": {"low": 8, "high": 16.5}}}, "model.hidden_size must be an integer"),
        ({"space": {"model.dropout": {"low": 0.0, "high": 1.5}}}, r"model.dropout must lie in \[0, 1\)"),
        ({"space": {"train.learning_rate": [0.1, -1]}}, "train.learning_rate must be > 0"),
        ({"space": {"train.learning_rate": {"low": 0.1, "high": 0.01}}}, r"low \(0.1\) must be below high \(0.01\)"),
        ({"space": {"train.weight_decay": {"low": 0.0, "high": 0.1, "log": True}}}, "a log range needs low > 0"),
        ({"space": {"model.cell": {"low": 1, "high": 2}}}, "model.cell is not a number"),
        ({"space": {"model.cell": ["lstn"]}}, "did you mean 'lstm'"),
        ({"space": {"train.learning_rate": {"low": 0.1, "hihg": 1}}}, "unknown key 'hihg'.*did you mean 'high'"),
        ({"space": {"data": ["a", "b"]}}, "data cannot be tuned"),
        ({"space": {"train.threads": [1, 2]}}, "--jobs"),
        ({"space": {}}, "tune.space must be a mapping"),
        ({"trails": 3, "space": {"model.hidden_size": [8]}}, "unknown key 'tune.trails'; did you mean 'tune.trials'"),
        ({"pruner": "hyperbnd", "space": {"model.hidden_size": [8]}}, "did you mean 'hyperband'"),
        ({"trials": 0, "space": {"model.hidden_size": [8]}}, "tune.trials must be > 0"),
        ({"sampler": "grid", "space": {"train.learning_rate": {"low": 0.1, "high": 1}}}, "grid sampler needs a list"),
        (None, "has no tune: section"),
    ],
)  # fmt: skip
def test_space_errors_name_the_key(tune, message):
    with pytest.raises(ConfigError, match=message):
        tune_mod.parse_tune(tune)


def test_tune_section_is_ignored_by_train_and_checked_against_the_config(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, "space:\n  model.activation: [tanh, relu]", model={"cell": "lstm"})
    assert load_config(path).model.cell == "lstm"  # `charrnn train` reads the same file
    with pytest.raises(ConfigError, match=r"tune.space.model.activation: 'relu' does not fit the config.*lstm"):
        tune_mod.load_study_config(str(path))
    path.write_text(path.read_text().replace("tune:", "tunes:"))
    with pytest.raises(ConfigError, match="did you mean 'tune'"):
        load_config(path)
    r = runner.invoke(app, ["tune", str(path)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "did you mean 'tune'" in r.stderr
    assert runner.invoke(app, ["tune", str(path), "--timeout", "soon"]).exit_code == 2


def test_without_optuna_one_line_says_what_to_install(tmp_path, text_dir, monkeypatch):
    path = tune_config(tmp_path, text_dir, "space:\n  model.hidden_size: [8]")
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    monkeypatch.setattr(tune_study, "_OPTUNA", None)
    r = runner.invoke(app, ["tune", str(path)])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip() == 'error: charrnn tune needs Optuna: pip install -e ".[tune]"'


# --------------------------------------------------------------------------- studies


def test_study_with_two_workers_completes_every_trial_once(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, """
        trials: 6
        pruner: median
        startup_trials: 2
        space:
          train.learning_rate: {low: 0.003, high: 0.05, log: true}
          model.hidden_size: [8, 16]
    """.replace("        ", ""))  # fmt: skip
    r = runner.invoke(app, ["tune", str(path), "--jobs", "2", "--json"])
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "finished" and result["done"] == 6
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert_budget_met(trials, 6)
    assert not [t for t in trials if t.state.name == "FAIL"]
    assert sorted(p.name for p in (tmp_path / "run" / "tune-logs").glob("worker-*.log")) == [
        "worker-0.log",
        "worker-1.log",
    ]
    assert all(isinstance(t.params["model.hidden_size"], int) for t in trials)
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result["best"]["number"] == best.number
    cfg = load_config(tmp_path / "run" / "best.yaml")  # ready for `charrnn train`, without the tune section
    assert cfg.out_dir == str(tmp_path / "run" / "best")
    assert cfg.train.learning_rate == best.params["train.learning_rate"]
    assert "tune" not in (tmp_path / "run" / "best.yaml").read_text()
    # the same command again: the budget is met, nothing runs, nothing is counted twice
    r = runner.invoke(app, ["tune", str(path), "--jobs", "2", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["trials"]) == len(trials)


def test_pruner_stops_a_bad_trial_and_a_diverging_one_is_pruned(tmp_path, text_dir):
    """One study, three runs of it (a range may change within a study): two good trials first, the median
    pruner's startup; then a learning rate far too small, pruned after its first evaluation; then one far too
    large for relu units without clipping, whose loss overflows: pruned too (DivergedError), with the reason."""
    spec = "trials: {n}\npruner: median\nstartup_trials: 2\nspace:\n  train.learning_rate: {{low: {low}, high: {high}}}"
    journal = str(tmp_path / "run" / "study.journal")
    for n, low, high, act in ((2, 0.02, 0.03, "tanh"), (3, 1e-6, 2e-6, "tanh"), (4, 3e4, 4e4, "relu")):
        path = tune_config(tmp_path, text_dir, spec.format(n=n, low=low, high=high), model={"activation": act},
                           max_steps=100, grad_clip=0)  # fmt: skip
        r = runner.invoke(app, ["tune", str(path)])
        assert r.exit_code == 0, r.stderr
        assert_budget_met(study_trials(journal), n)
    good, slow, huge = study_trials(journal)[1:]
    assert good.state.name == "COMPLETE" and max(good.intermediate_values) == 100
    assert slow.state.name == "PRUNED" and slow.user_attrs["pruned_at_step"] == 20  # not max_steps
    assert slow.intermediate_values[20] > good.intermediate_values[20]
    assert huge.state.name == "PRUNED" and "loss became" in huge.user_attrs["diverged"]
    path.write_text(path.read_text().replace("{low: 30000.0, high: 40000.0}", "[0.01, 0.02]"))  # list, not range
    r = runner.invoke(app, ["tune", str(path), "--trials", "5"])
    assert r.exit_code == 1 and "use --study NEWNAME" in r.stderr, r.stderr


def test_sigkilled_worker_then_the_same_command_finishes_the_study(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, "trials: 2\npruner: none\nspace:\n  model.hidden_size: [8, 16]",
                       max_steps=200)  # fmt: skip
    first = tmp_path / "run" / "trials" / "0"
    proc = subprocess.Popen(cli(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (first / "last.npz").is_file():  # the trial has a checkpoint (its first evaluation)
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.01)
        worker = json.loads((first / ".lock").read_text())["pid"]
        os.kill(worker, signal.SIGKILL)  # mid-trial
        os.kill(proc.pid, signal.SIGKILL)  # and the command with it (a machine that went down)
    finally:
        proc.wait()
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert [t.state.name for t in trials] == ["RUNNING"]
    r = runner.invoke(app, ["tune", str(path), "--json"])
    assert r.exit_code == 0, r.stderr
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["worker_died"]
    assert_budget_met(trials, 2)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name == "COMPLETE" and retry.params == trials[0].params
    assert retry.user_attrs["resumed_from"] == 0 and not first.exists()  # its run went on from the checkpoint
    steps = [json.loads(line)["step"] for line in (first.parent / str(retry.number) / "metrics.jsonl").open()]
    assert steps == list(range(20, 201, 20))  # every evaluation once


def test_sqlite_url_storage(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, "trials: 2\nspace:\n  model.hidden_size: [8, 16]")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    r = runner.invoke(app, ["tune", str(path), "--storage", url, "--study", "s1", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["storage"] == url
    assert_budget_met(study_trials(url, "s1"), 2)
    assert not (tmp_path / "run" / "study.journal").exists()
    r = runner.invoke(app, ["tune", str(path), "--storage", url, "--study", "s2"])  # its trial numbers would clash
    assert r.exit_code == 1 and "holds the trials of study 's1'" in r.stderr and r.stderr.count("\n") == 1
    r = runner.invoke(app, ["tune", str(path), "--storage", "postgresql://nobody@/x?host=/nonexistent"])
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_two_commands_share_one_journal_file(tmp_path, text_dir):
    """The many-machines case on one machine: two separate commands, one storage, one budget."""
    path = tune_config(tmp_path, text_dir, "trials: 5\nspace:\n  train.learning_rate: {low: 0.005, high: 0.05}")
    journal = tmp_path / "shared" / "study.journal"
    procs = [subprocess.Popen(cli(path, "--storage", journal, "--study", "shared", "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = study_trials(str(journal), "shared")
    assert_budget_met(trials, 5)
    assert all(json.loads(out)["done"] == 5 for out, _ in outs)
    # two commands here take two slots, which seed their workers' samplers apart
    first, second = _take_slot(tmp_path / "run"), _take_slot(tmp_path / "run")
    assert (first[0], second[0]) == (0, 1)
    first[1].release()
    assert _take_slot(tmp_path / "run")[0] == 0


def test_trial_gives_the_result_of_charrnn_train(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, "trials: 1\npruner: none\nspace:\n  train.learning_rate: [0.02]",
                       threads=1, random_offset="true", max_steps=80)  # fmt: skip
    r = runner.invoke(app, ["tune", str(path)])
    assert r.exit_code == 0, r.stderr
    train = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(tmp_path / "run" / "best.yaml"), "-q"],
        capture_output=True,
        text=True,
    )  # a fresh process: train.threads applies before numpy
    assert train.returncode == 0, train.stderr

    def losses(run):
        return [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").open()]

    trial, trained = losses(tmp_path / "run" / "trials" / "0"), losses(tmp_path / "run" / "best")
    assert len(trial) == 4 and trial == trained  # exactly


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_skip_reason():
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        return "no PostgreSQL binaries (initdb, pg_ctl) on PATH"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg is not installed (pip install -e ".[tune]")'
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user for initdb"
    return None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a unix socket in a temporary folder; yields its psycopg URL."""
    reason = _postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="charrnn-pg-"))
    as_user = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = {"user": "postgres", "group": "postgres"}
    data = folder / "data"
    try:
        subprocess.run(["initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], check=True,
                       capture_output=True, **as_user)  # fmt: skip
        subprocess.run(["pg_ctl", "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                        f"-c listen_addresses='' -k {folder} -c fsync=off", "start"], check=True,
                       capture_output=True, **as_user)  # fmt: skip
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}"
    finally:
        subprocess.run(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, **as_user)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_commands_share_a_postgresql_study(tmp_path, text_dir, postgres):
    path = tune_config(tmp_path, text_dir, "trials: 3\nspace:\n  model.hidden_size: {low: 8, high: 16}", max_steps=40)
    procs = [subprocess.Popen(cli(path, "--storage", postgres, "--study", "pg", "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = study_trials(postgres, "pg")
    assert_budget_met(trials, 3)
    assert all(type(t.params["model.hidden_size"]) is int for t in trials)


def test_sigterm_stops_the_workers_with_resumable_trials(tmp_path, text_dir):
    path = tune_config(tmp_path, text_dir, "trials: 1\npruner: none\nspace:\n  model.hidden_size: [16]", max_steps=400)
    first = tmp_path / "run" / "trials" / "0"
    proc = subprocess.Popen(cli(path, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (first / "last.npz").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # to the command alone: it stops its workers
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and json.loads(out)["status"] == "stopped"
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # marked, and queued to go on
    stopped = trials[0].user_attrs["stopped_at_step"]
    assert 0 < stopped < 400 and (first / "last.npz").is_file()
    r = runner.invoke(app, ["tune", str(path), "--json"])
    assert r.exit_code == 0, r.stderr
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert_budget_met(trials, 1)
    assert trials[1].state.name == "COMPLETE" and trials[1].user_attrs["resumed_from"] == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "trials" / "1" / "train.jsonl").open()]
    assert records[-1]["step"] == 400 and any(r["step"] == stopped for r in records)  # went on from there


def test_a_combination_the_config_refuses_is_pruned_and_a_grid_moves_past_it(tmp_path, text_dir):
    """lstm with relu is refused by the config: the grid's four points run once each, that one pruned (it used to
    fail, so the exhausted grid trained a completed point a second time to fill the budget)."""
    path = tune_config(tmp_path, text_dir, """
        trials: 4
        sampler: grid
        pruner: none
        space:
          model.cell: [rnn, lstm]
          model.activation: [tanh, relu]
    """.replace("        ", ""), max_steps=20)  # fmt: skip
    r = runner.invoke(app, ["tune", str(path)])
    assert r.exit_code == 0, r.stderr
    trials = study_trials(str(tmp_path / "run" / "study.journal"))
    assert sorted((t.state.name, t.params["model.cell"], t.params["model.activation"]) for t in trials) == [
        ("COMPLETE", "lstm", "tanh"), ("COMPLETE", "rnn", "relu"), ("COMPLETE", "rnn", "tanh"),
        ("PRUNED", "lstm", "relu"),
    ]  # fmt: skip
    refused = next(t for t in trials if t.state.name == "PRUNED")
    assert "relu" in refused.user_attrs["error"]


def test_a_retry_of_a_stopped_trial_that_fails_counts_as_a_failure(tmp_path, text_dir):
    """A retry inherits its original's user attributes: a stop marker it did not earn must not make its own
    failure look like a stop (which queued retry after retry and never counted toward giving up)."""
    path = tune_config(tmp_path, text_dir, "trials: 2\npruner: none\nspace:\n  model.hidden_size: [8, 16]")
    journal = str(tmp_path / "run" / "study.journal")
    (tmp_path / "run").mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.create_study(study_name="cfg", storage=storage)
    dist = {"model.hidden_size": optuna.distributions.CategoricalDistribution([8, 16])}
    stopped = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"model.hidden_size": 8},
                                        distributions=dist, user_attrs={"stopped_at_step": 10})  # fmt: skip
    study.add_trial(stopped)
    retry_callback(limited=False)(study, study.get_trials(deepcopy=False)[0])
    shutil.rmtree(text_dir)  # every trial now fails for a real reason: its data is gone
    r = runner.invoke(app, ["tune", str(path)])
    assert r.exit_code == 1 and "3 trials in a row failed" in r.stderr, r.stderr
    failed = [t for t in study_trials(journal) if t.state.name == "FAIL"]
    assert len(failed) == 1 + 3  # the original stop, then three failures, not a retry of each
