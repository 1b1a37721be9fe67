"""The command line: exit codes, stdout holds only the product, stderr the rest."""

import json
import re

from typer.testing import CliRunner

import charrnn
import charrnn.model as model_module
from charrnn.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    listed = re.findall(r"^\W*(\w+)\s{2,}\S", r.stdout.split("Commands")[1], re.M)  # first word of each command row
    assert listed == ["prepare", "train", "eval", "sample", "gradcheck"]


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
