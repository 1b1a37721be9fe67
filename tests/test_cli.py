"""The command line: exit codes, stdout holds only the product, stderr the rest."""

import json
import os
import re
import subprocess
import sys

from typer.testing import CliRunner

import charrnn
import charrnn.model as model_module
from charrnn.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    listed = re.findall(r"^\W*(\w+)\s{2,}\S", r.stdout.split("Commands")[1], re.M)  # first word of each command row
    assert listed == ["prepare", "train", "eval", "sample", "plot", "gradcheck", "tune"]


def test_no_arguments_shows_help():
    r = runner.invoke(app, [])
    assert "Usage" in r.stdout + r.stderr and "Commands" in r.stdout + r.stderr
    assert r.exit_code == 2  # no command is a usage error


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"charrnn {charrnn.__version__}"


def test_gradcheck_table_passes():
    r = runner.invoke(app, ["gradcheck", "--hidden", "6", "--layers", "2", "--seq", "5"])
    assert r.exit_code == 0, r.stderr
    for name in ("layers.0.Wxh", "layers.1.Whh", "Why", "by", "h0"):
        assert name in r.stdout
    assert "all gradients pass" in r.stdout
    assert r.stderr == ""


def test_gradcheck_json_for_scripts():
    r = runner.invoke(app, ["gradcheck", "--json", "--activation", "relu", "--layers", "1", "--vocab", "4"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["passed"] is True and d["settings"]["activation"] == "relu"
    assert [p["name"] for p in d["params"]][-1] == "h0"
    assert all(p["max_rel_error"] < 1e-6 for p in d["params"])


def test_gradcheck_cells_and_dropout():
    for cell in ("lstm", "gru"):
        r = runner.invoke(app, ["gradcheck", "--json", "--cell", cell, "--dropout", "0.3", "--layers", "2",
                                "--hidden", "5", "--max-checks", "8"])  # fmt: skip
        assert r.exit_code == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["passed"] is True and d["settings"]["cell"] == cell and d["settings"]["dropout"] == 0.3
        assert ("layers.1.bhn" in [p["name"] for p in d["params"]]) == (cell == "gru")
    r = runner.invoke(app, ["gradcheck", "--cell", "lstm", "--hidden", "4", "--seq", "3"])
    assert r.exit_code == 0 and "gradcheck: lstm," in r.stdout


def test_gradcheck_bad_cell_options_are_usage_errors():
    for args in (["--cell", "lstm", "--activation", "relu"], ["--cell", "transformer"], ["--dropout", "1"]):
        r = runner.invoke(app, ["gradcheck", *args])
        assert r.exit_code == 2, args
        assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_gradcheck_exits_1_when_a_gradient_is_wrong(monkeypatch):
    real = model_module.affine_backward

    def wrong(dout, cache, out=None):
        dx, dW, db = real(dout, cache, out)
        return dx, dW * 1.01, db  # a 1% error in every dense weight gradient

    monkeypatch.setattr(model_module, "affine_backward", wrong)
    r = runner.invoke(app, ["gradcheck", "--json"])
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    failed = {p["name"] for p in d["params"] if not p["passed"]}
    assert "Why" in failed and "layers.1.Wxh" in failed


def test_gradcheck_bad_option_is_a_usage_error():
    r = runner.invoke(app, ["gradcheck", "--hidden", "0"])
    assert r.exit_code == 2
    assert r.stdout == ""
    r = runner.invoke(app, ["gradcheck", "--activation", "sigmoid"])
    assert r.exit_code == 2


def test_help_starts_without_loading_numpy_or_yaml():
    import subprocess
    import sys

    code = "import sys, charrnn.cli; print(sorted(m for m in ('numpy', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_reads_like_a_unix_tool():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "100"})
    assert r.exit_code == 0
    assert "Usage: charrnn train [OPTIONS] CONFIG" in r.stdout  # typer 0.29 wrote {config}
    assert "<bool>" not in r.stdout  # flags take no value, so they show no type
    assert re.search(r"--resume\s+Continue from", r.stdout)
    assert re.search(r"--set\s+KEY=VALUE", r.stdout) and re.search(r"--threads\s+N", r.stdout)
    r = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "100"})
    assert "Usage: charrnn prepare [OPTIONS] [INPUT]" in r.stdout
    assert "Output folder. [default: (data/<input stem>)]" in r.stdout  # was "Output folder ." (markup ate it)
    for command in ("eval", "sample", "gradcheck", "plot"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"}).stdout
        assert "<bool>" not in text and not re.search(r"\w \.(\s|$)", text, re.M), command


def test_a_malformed_set_is_a_usage_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: d\n")
    r = runner.invoke(app, ["train", str(cfg), "--set", "train.max_steps"])
    assert r.exit_code == 2 and r.stdout == ""
    assert "--set" in r.stderr and "key.path=value" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_resume_command_reproduces_the_options_quoted_for_the_shell():
    from charrnn.cli.commands import resume_command

    cmd = resume_command("configs/my run.yaml", ["out_dir=runs/a b", "train.seed=3"], "runs/base", 1)
    assert cmd == ("charrnn train 'configs/my run.yaml' --set 'out_dir=runs/a b' --set train.seed=3 "
                   "--init-from runs/base --threads 1 --resume")  # fmt: skip


def _display(width):
    import io

    from rich.console import Console

    import charrnn.cli.display as cli

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None, soft_wrap=True)
    d = cli.TrainDisplay(quiet=False, as_json=False)
    return d, buf, console


def test_live_line_at_80_columns_keeps_step_bar_loss_val_and_gradient_norm(monkeypatch):
    import charrnn.cli.display as cli

    d, buf, console = _display(80)
    monkeypatch.setattr(cli, "err", console)
    d(
        "start",
        {
            "step": 0,
            "max_steps": 2000,
            "resumed": False,
            "model": "rnn 1 x 512",
            "params": 1,
            "out_dir": "runs/x",
            "vocab_size": 65,
            "windows_per_epoch": 10,
            "time_limit": None,
            "elapsed_s": 0.0,
        },
    )
    step = {"step": 1234, "max_steps": 2000, "loss": 1.5, "smooth_loss": 1.456, "lr": 1.2e-3, "grad_norm": 0.47,
            "chars_per_sec": 12345.0, "epoch": 1, "elapsed_s": 60.0}  # fmt: skip
    d("step", step)
    d("eval", {"step": 1234, "train_loss": 1.45, "val_loss": 1.5123, "val_bpc": 2.18, "chars_per_sec": 12345.0,
               "elapsed_s": 60.0})  # fmt: skip
    d.progress.stop()  # the final render of the live line
    screen = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", buf.getvalue())  # cursor codes of the live display
    last = screen.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert len(last) <= 80
    assert last.startswith("1234/2000") and "━" in last
    assert "loss 1.456" in last and "|g| 0.47" in last
    assert "val 1.512" in last  # the evaluation just done, not the one before: shown without waiting for a step


def test_eta_is_the_nearer_of_the_last_step_and_the_time_limit(monkeypatch):
    import charrnn.cli.display as cli

    d, _, console = _display(120)
    monkeypatch.setattr(cli, "err", console)
    clock = iter([100.0, 200.0])
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    d(
        "start",
        {
            "step": 0,
            "max_steps": 1000,
            "resumed": False,
            "model": "m",
            "params": 1,
            "out_dir": "o",
            "vocab_size": 5,
            "windows_per_epoch": 1,
            "time_limit": 300.0,
            "elapsed_s": 0.0,
        },
    )
    # after 100 s (all training) at step 100: 900 steps would take 900 s, the limit leaves 200 s
    assert d._eta({"step": 100, "max_steps": 1000, "elapsed_s": 100.0}) == "0:03:20"
    d.time_limit = None
    clock = iter([200.0])
    assert d._eta({"step": 100, "max_steps": 1000, "elapsed_s": 100.0}) == "0:15:00"
    d.progress.stop()


def test_threads_are_set_through_the_environment_before_numpy_loads():
    import subprocess
    import sys

    code = ("import os, sys; from charrnn.threads import set_threads; how = set_threads(1); "
            "print(how, os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["env", "1", "False"], r.stderr
    code = (
        "import numpy, threadpoolctl; from charrnn.threads import set_threads; print(set_threads(1)); "
        "print({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "No module named 'threadpoolctl'" in r.stderr:
        return  # the optional extra is not installed here: the next test covers that case
    assert r.stdout.split("\n")[:2] == ["threadpoolctl", "{1}"], r.stderr


def test_threads_after_numpy_without_threadpoolctl_is_one_clear_error(monkeypatch):
    import sys

    import pytest

    import charrnn.threads as threads
    from charrnn.errors import CharRNNError

    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with pytest.raises(CharRNNError, match=r"numpy is already loaded.*threadpoolctl.*\.\[threads\]"):
        threads.set_threads(2)


def test_the_cli_sets_the_threads_before_numpy_loads(tmp_path):
    """Each command's --threads must act while numpy is not yet imported, or the environment is ignored."""
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: nowhere\n")
    code = """
import sys
import charrnn.threads as threads
seen = []
real = threads.set_threads
threads.set_threads = lambda n: (seen.append("numpy" in sys.modules), real(n))[1]
from typer.testing import CliRunner
from charrnn.cli import app
CliRunner().invoke(app, sys.argv[1:])
print(seen[:1])
"""
    for args in (["train", str(cfg)], ["eval", "--ckpt", "x"], ["sample", "--ckpt", "x"]):
        r = subprocess.run([sys.executable, "-c", code, *args, "--threads", "1"], capture_output=True, text=True)
        assert r.stdout.strip() == "[False]", (args, r.stdout, r.stderr)  # the first call: numpy not loaded yet


def test_the_top_level_help_shows_no_bool_type_either():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert r.exit_code == 0 and "--version" in r.stdout and "<bool>" not in r.stdout


def test_threads_0_means_the_default_as_train_threads_0_does(tmp_path):
    r = runner.invoke(app, ["train", str(tmp_path / "missing.yaml"), "--threads", "0"])
    assert r.exit_code == 1 and "no such config file" in r.stderr  # past option parsing: 0 is accepted
    r = runner.invoke(app, ["gradcheck", "--cell", "LSTM", "--hidden", "3", "--layers", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["settings"]["cell"] == "lstm"


def test_a_fine_tune_step_0_evaluation_shows_no_speed_and_notes_are_shown_even_when_quiet(monkeypatch):
    import charrnn.cli.display as cli

    d, buf, console = _display(120)
    monkeypatch.setattr(cli, "err", console)
    d(
        "start",
        {
            "step": 0,
            "max_steps": 20,
            "resumed": False,
            "model": "rnn 1 x 8",
            "params": 1,
            "out_dir": "o",
            "vocab_size": 1,
            "windows_per_epoch": 1,
            "time_limit": None,
            "elapsed_s": 0.0,
            "notes": ["N1"],
        },
    )
    d("eval", {"step": 0, "train_loss": None, "val_loss": 1.5, "val_bpc": 2.1, "chars_per_sec": 0.0,
               "elapsed_s": 0.0})  # fmt: skip
    d.progress.stop()
    screen = buf.getvalue()
    assert "step 0: val 1.5000 nats/char (2.100 bits), 0s" in screen and "chars/s" not in screen
    assert "note: N1" in screen and "1 parameter," in screen and "1 window per epoch" in screen
    quiet = cli.TrainDisplay(quiet=True, as_json=False)
    quiet("start", {"step": 0, "max_steps": 20, "resumed": True, "elapsed_s": 0.0, "notes": ["schedule changed"]})
    assert "note: schedule changed" in buf.getvalue()


def test_a_log_file_gets_the_log_lines_without_frames_of_the_live_bar(monkeypatch):
    import io

    from rich.console import Console

    import charrnn.cli.display as cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buf, width=80))  # not a terminal: stderr redirected to a file
    d = cli.TrainDisplay(quiet=False, as_json=False)
    d("start", {"step": 0, "max_steps": 20, "resumed": False, "model": "rnn 1 x 8", "params": 10, "out_dir": "o",
                "vocab_size": 5, "windows_per_epoch": 2, "time_limit": None, "elapsed_s": 0.0})  # fmt: skip
    d("step", {"step": 10, "max_steps": 20, "loss": 1.5, "smooth_loss": 1.4, "lr": 1e-3, "grad_norm": 0.5,
               "chars_per_sec": 1000.0, "epoch": 0, "elapsed_s": 1.0})  # fmt: skip
    d("eval", {"step": 10, "train_loss": 1.45, "val_loss": 1.5, "val_bpc": 2.16, "chars_per_sec": 1000.0,
               "elapsed_s": 1.0})  # fmt: skip
    d.__exit__(None, None, None)
    text = buf.getvalue()
    assert "training from step 0" in text and "step 10: train 1.4500, val 1.5000" in text
    assert "━" not in text and "\r" not in text and "10/20" not in text


def test_a_table_on_stdout_in_a_file_is_not_wrapped_at_80_columns(tmp_path):
    """A study's summary in a file (`charrnn tune ... > file`): a file has no width, so a trial's parameters keep
    their line (at Rich's default 80 columns they were broken into one-word lines)."""
    params = {"model.cell": "gru", "model.hidden_size": 384, "model.num_layers": 2, "model.dropout": 0.0165,
              "train.learning_rate": 0.0056, "train.input_lr_scale": 1.0}  # fmt: skip
    row = {"number": 10, "params": params, "val_loss": 1.4734, "state": "COMPLETE", "seconds": 687.0, "note": "",
           "step": 1000}  # fmt: skip
    result = {"study": "s", "counts": {"COMPLETE": 1}, "trials": [row], "best": None}
    code = f"import charrnn.cli.display as d; d.tune_summary({result!r})"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "hidden_size=384, num_layers=2, dropout=0.0165, learning_rate=0.0056, input_lr_scale=1" in r.stdout
