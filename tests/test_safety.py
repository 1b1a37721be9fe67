"""Bad input, faults and untrusted files: clear errors, nothing lost, nothing executed."""

import codecs
import contextlib
import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import long_run_config, one_line_error, start_train, wait_for, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn import checkpoint
from charrnn.checkpoint import CheckpointError
from charrnn.cli import app
from charrnn.config import ConfigError, load_config
from charrnn.data import build_vocab
from charrnn.model import param_shapes
from charrnn.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ck")
    from charrnn.data import prepare

    prepare("to be or not to be, that is the question. " * 40, tmp / "data")
    cfg = load_config(write_config(tmp, tmp / "data", max_steps=10, eval_every=5, hidden_size=8))
    train(cfg)
    return tmp / "run" / "last.npz"


# ----------------------------------------------------------------------------- prepare


def test_prepare_bad_inputs(tmp_path):
    assert "no such file" in one_line_error(runner.invoke(app, ["prepare", str(tmp_path / "nope.txt")]))
    assert "directory" in one_line_error(runner.invoke(app, ["prepare", str(tmp_path)]))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "0 characters" in one_line_error(runner.invoke(app, ["prepare", str(empty)]))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "offset 128" in one_line_error(runner.invoke(app, ["prepare", str(binary)]))
    good = tmp_path / "good.txt"
    good.write_text("some text to prepare " * 10)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot write" in one_line_error(runner.invoke(app, ["prepare", str(good), "--out", str(blocker / "sub")]))
    one_line_error(runner.invoke(app, ["prepare", str(good), "--val-frac", "0"]), code=2)


class _Broken(codecs.IncrementalDecoder):
    def decode(self, data, final=False):
        raise IndentationError("unexpected indent (<unknown>, line 1)")  # what future-typing's codec raised


def _lookup(name, real=codecs.lookup):
    """codecs.lookup with three test codecs; patched in rather than registered, because a catch-all search
    function that some package registers (future-typing's) would answer before one registered here."""
    name = name.lower().replace("-", "_")
    if name == "charrnn_test_broken":
        return codecs.CodecInfo(None, None, incrementaldecoder=_Broken, name="charrnn-test-broken")
    if name == "charrnn_test_raising":
        raise IndentationError("a search function that fails")
    if name.startswith("charrnn_test"):  # a catch-all search function, as future-typing's is
        return codecs.CodecInfo(None, None, incrementaldecoder=codecs.getincrementaldecoder("utf-8"), name="catchall")
    return real(name)


def test_prepare_codec_failures_are_one_line_errors(tmp_path, monkeypatch):
    good = tmp_path / "good.txt"
    good.write_text("some text to prepare " * 10)
    monkeypatch.setattr(codecs, "lookup", _lookup)
    for encoding, message in (
        ("charrnn-test-broken", "cannot decode " + str(good) + " as charrnn-test-broken: IndentationError"),
        ("charrnn-test-raising", "unknown encoding 'charrnn-test-raising' (looking it up raised IndentationError"),
        ("charrnn-test-misspelt", "unknown encoding 'charrnn-test-misspelt' (only 'catchall'"),
        ("no-such-encoding", "unknown encoding 'no-such-encoding'"),
        ("base64", "'base64' is not a text encoding"),
    ):
        r = runner.invoke(app, ["prepare", str(good), "--out", str(tmp_path / "d"), "--encoding", encoding])
        assert message in one_line_error(r)
    assert not (tmp_path / "d").exists()


def test_prepare_cli_reports_what_it_changed_and_warns_on_one_character(tmp_path):
    raw = b"\xef\xbb\xbf" + b"to be or not\r\nto be\r\n" * 5
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "d"), "--json"], input=raw)  # spooled stdin
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["encoding"], out["bom_removed"], out["line_endings_converted"], out["chars"]) == ("utf-8", True, 10, 95)
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "e")], input=raw.decode("utf-8").encode("utf-16"))
    assert r.exit_code == 0 and "utf-16-le" in r.stderr and "removed" in r.stderr and "10 converted" in r.stderr
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "f"), "--keep-line-endings", "--json"], input=raw)
    assert json.loads(r.stdout)["chars"] == 105 and "line endings" not in r.stderr
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "g"), "--json"], input=b"z" * 50)
    assert r.exit_code == 0 and (tmp_path / "g" / "train.npy").exists()
    assert r.stderr.startswith("warning: ") and r.stderr.count("\n") == 1 and "nothing to learn" in r.stderr
    r = runner.invoke(app, ["prepare", "-", "--out", str(tmp_path / "h")], input=b"to be or not to be " * 5)
    assert r.stderr.startswith("prepared ") and "encoding" not in r.stderr and "removed" not in r.stderr


def test_prepare_progress_bar_starts_only_after_a_second(monkeypatch):
    from rich.console import Console

    import charrnn.cli.display as cli

    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=True))
    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    with cli.PrepareProgress() as progress:
        progress(10, 100, "counting characters")
        now[0] += 0.5
        progress(20, 100, "counting characters")
        assert progress._bar is None and cli.err.file.getvalue() == ""  # a quick input prints nothing
        now[0] += 1.0
        progress(30, 100, "counting characters")
        progress(5, 100, "encoding")
        assert progress._bar is not None and [t.description for t in progress._bar.tasks] == ["encoding"]
    assert not progress._bar.live.is_started


# ----------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]\n", "must hold a mapping"),
        ("data: d\ntrain: {batch_sise: 4}\n", "did you mean 'train.batch_size'"),
        ("data: d\nmodel: {hidden_size: '64'}\n", "model.hidden_size must be an integer"),
        ("data: d\ntrain: {learning_rate: -1}\n", "train.learning_rate must be > 0"),
        ("data: d\nmodel: {num_layers: 0}\n", "model.num_layers must be > 0"),
        ("data: d\n  bad indent: [\n", "not valid YAML at line"),
    ],
)  # fmt: skip
def test_train_config_errors(tmp_path, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    assert message in one_line_error(runner.invoke(app, ["train", str(cfg)]))


def test_train_data_and_resume_errors(tmp_path, data_dir):
    cfg = write_config(tmp_path, tmp_path / "not-prepared", max_steps=5)
    assert "run `charrnn prepare` first" in one_line_error(runner.invoke(app, ["train", str(cfg)]))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "vocab.json").write_text("{not json")
    for name in ("train.npy", "val.npy"):
        (tmp_path / "junk" / name).write_bytes(b"garbage")
    cfg = write_config(tmp_path, tmp_path / "junk", max_steps=5)
    assert "damaged" in one_line_error(runner.invoke(app, ["train", str(cfg)]))
    cfg = write_config(tmp_path, data_dir, max_steps=5, seq_length=2000)
    assert "seq_length" in one_line_error(runner.invoke(app, ["train", str(cfg)]))
    cfg = write_config(tmp_path, data_dir, max_steps=5)
    assert "nothing to resume" in one_line_error(runner.invoke(app, ["train", str(cfg), "--resume"]))
    assert runner.invoke(app, ["train", str(cfg), "-q"]).exit_code == 0
    msg = one_line_error(runner.invoke(app, ["train", str(cfg), "--resume", "--set", "model.num_layers=2"]))
    assert "model.num_layers: checkpoint 1, config 2" in msg
    other = tmp_path / "other"
    from charrnn.data import prepare

    prepare("completely different characters: XYZ 123 " * 30, other)
    msg = one_line_error(runner.invoke(app, ["train", str(cfg), "--resume", "--set", f"data={other}"]))
    assert "vocabulary" in msg


# ----------------------------------------------------------------------------- checkpoints


class Boom:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_arrays_are_refused_and_never_run(tmp_path, ckpt_file):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    with np.load(ckpt_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["layers.0.Whh"] = np.array([Boom(str(marker))], dtype=object)
    np.savez(evil, **arrays)
    with pytest.raises(CheckpointError, match="pickled"):
        checkpoint.load(evil)
    msg = one_line_error(runner.invoke(app, ["sample", "--ckpt", str(evil), "-n", "5"]))
    assert "pickled" in msg
    assert not marker.exists()


def test_a_giant_declared_array_is_refused_before_allocation(tmp_path, ckpt_file):
    # a member whose header claims 10^12 floats but stores 40 bytes
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    buf.write(b"\0" * 40)
    crafted = tmp_path / "giant.npz"
    with zipfile.ZipFile(ckpt_file) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            data = buf.getvalue() if info.filename == "layers.0.Whh.npy" else src.read(info)
            dst.writestr(info.filename, data)
    with pytest.raises(CheckpointError, match="declares"):
        checkpoint.load(crafted)


def rewrite_meta(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)


def test_newer_foreign_and_inconsistent_checkpoints(tmp_path, ckpt_file):
    newer = tmp_path / "newer.npz"
    rewrite_meta(ckpt_file, newer, lambda m, a: m.update(format_version=99))
    assert "upgrade charrnn" in one_line_error(runner.invoke(app, ["eval", "--ckpt", str(newer)]))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    assert "not a charrnn checkpoint" in one_line_error(runner.invoke(app, ["sample", "--ckpt", str(foreign)]))
    bigger = tmp_path / "bigger.npz"
    rewrite_meta(ckpt_file, bigger, lambda m, a: m["config"]["model"].update(hidden_size=4096))
    with pytest.raises(CheckpointError, match=r"expected \(.*4096"):
        checkpoint.load(bigger)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    assert "not a charrnn checkpoint" in one_line_error(runner.invoke(app, ["sample", "--ckpt", str(text)]))
    missing = tmp_path / "missing.npz"
    assert "no such checkpoint" in one_line_error(runner.invoke(app, ["sample", "--ckpt", str(missing)]))


def test_damaged_weight_averages_are_refused(tmp_path, ckpt_file):
    def with_average(change):
        def edit(meta, arrays):
            params = {k: v for k, v in arrays.items() if k != "meta" and not k.startswith(("optim.", "state."))}
            arrays.update({f"ema.{k}": v for k, v in params.items()})  # a whole average, then the damage
            change(arrays)

        return edit

    partial = tmp_path / "partial.npz"
    rewrite_meta(ckpt_file, partial, with_average(lambda a: a.pop("ema.Why")))
    with pytest.raises(CheckpointError, match="averaged parameters lack Why"):
        checkpoint.load(partial)
    stray = tmp_path / "stray.npz"
    rewrite_meta(ckpt_file, stray, with_average(lambda a: a.update({"ema.layers.9.Whh": a["ema.Why"]})))
    assert "names no parameter" in one_line_error(runner.invoke(app, ["eval", "--ckpt", str(stray)]))


def test_truncated_checkpoints_are_clear_errors(tmp_path, ckpt_file):
    raw = ckpt_file.read_bytes()
    for cut in (0, 10, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            checkpoint.load(bad)
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    one_line_error(runner.invoke(app, ["sample", "--ckpt", str(bad)]))


def test_debug_shows_the_traceback(tmp_path):
    args = ["sample", "--ckpt", str(tmp_path / "nope.npz")]
    plain = subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-m", "charrnn", "--debug", *args], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "CheckpointError: no such checkpoint" in debug.stderr


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_vocab_round_trips_any_unicode(text):
    if not text:
        return
    vocab, ids = build_vocab(text)
    assert vocab.decode(ids) == text
    assert np.array_equal(vocab.encode(text), ids)
    assert list(vocab.chars) == sorted(set(text))


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "data": yaml_values, "out_dir": yaml_values,
        "model": st.dictionaries(st.sampled_from(["hidden_size", "num_layers", "activation", "dtype", "hiden"]),
                                 yaml_values),
        "train": st.dictionaries(st.sampled_from(["batch_size", "learning_rate", "time_limit", "optimizer",
                                                  "eval_chars", "random_offset", "max_steps", "weight_decay"]),
                                 yaml_values),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(yaml_values, config_like), raw=st.text(max_size=60))
def test_config_loader_raises_only_config_errors(tmp_path, doc, raw):
    import yaml

    p = tmp_path / "fuzz.yaml"
    for content in (yaml.safe_dump(doc, allow_unicode=True), raw):
        p.write_text(content, encoding="utf-8")
        with contextlib.suppress(ConfigError):
            load_config(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=2000))
def test_checkpoint_loader_raises_only_its_error_on_arbitrary_bytes(tmp_path, blob):
    p = tmp_path / "fuzz.npz"
    p.write_bytes(blob)
    with pytest.raises(CheckpointError):
        checkpoint.load(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_checkpoint_loader_on_damaged_real_checkpoints(tmp_path, ckpt_file, data):
    raw = bytearray(ckpt_file.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="byte")
            raw[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    p = tmp_path / "damaged.npz"
    p.write_bytes(bytes(raw))
    try:
        ck = checkpoint.load(p)
    except CheckpointError:
        return
    # a flip in the data area can leave a valid checkpoint: then it has every array at its shape
    mc = ck.config.model
    assert {k: v.shape for k, v in ck.params.items()} == param_shapes(
        ck.vocab.size, mc.hidden_size, mc.num_layers, mc.cell
    )


# ----------------------------------------------------------------------------- nothing lost (real processes)


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path, data_dir):
    cfg = long_run_config(tmp_path, data_dir)
    last = tmp_path / "run" / "last.npz"
    rnd = random.Random(0)
    steps = []
    for i in range(6):
        proc = start_train(cfg, "--resume" if last.exists() else "--force")
        if i == 0:
            wait_for(last)
        time.sleep(rnd.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps.append(checkpoint.load(last).step)  # loadable after every kill
        leftovers = [p for p in os.listdir(last.parent) if p.endswith(".tmp")]
        for p in leftovers:  # an interrupted write leaves at most a temporary file, never a damaged last.npz
            os.unlink(last.parent / p)
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_ctrl_c_saves_and_exits_130_with_the_command_that_resumes_this_run(tmp_path, data_dir):
    cfg = long_run_config(tmp_path, data_dir)
    other = tmp_path / "other run"  # out_dir set on the command line, with a space to quote
    last = other / "last.npz"
    proc = start_train(cfg, "--set", f"out_dir={other}", "--set", "train.seed=3")
    wait_for(last)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C while it saves
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    ck = checkpoint.load(last)
    assert ck.step > 0
    assert str(ck.step) in err
    hint = err.split("resume with: ", 1)[1].strip()
    words = shlex.split(hint)
    assert words[:3] == ["charrnn", "train", str(cfg)] and words[-1] == "--resume"
    assert words[3:-1] == ["--set", f"out_dir={other}", "--set", "train.seed=3"]
    # run as shown (with a finite max_steps), it continues this run, not the config's own out_dir
    words[-1:] = ["--set", f"train.max_steps={ck.step + 3}", "-q", "--resume"]
    r = subprocess.run([sys.executable, "-m", "charrnn", *words[1:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(last).step == ck.step + 3
    assert not (tmp_path / "run").exists()


def test_a_train_error_in_a_real_process_is_exactly_one_line(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "not-prepared", max_steps=5)
    r = subprocess.run([sys.executable, "-m", "charrnn", "train", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), repr(r.stderr)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Checkpoints and prepared data are written through a temporary file, which mkstemp makes 0600;
    they must end with the mode every other new file of the user's gets, and leave no temporary file."""
    from charrnn.data import prepare
    from charrnn.model import CharRNN

    old = os.umask(umask)
    try:
        prepare("to be or not to be, that is the question\n" * 20, tmp_path / "data")
        m = CharRNN(10, 4)
        checkpoint.save(tmp_path / "ck" / "last.npz", m.params, {"step": 0})
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4 and not [p for p in files if p.name.endswith(".tmp")]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: mode for p in files}


def test_sigterm_during_prepare_leaves_no_temporary_file(tmp_path):
    """SIGTERM (timeout, a scheduler) used to kill prepare mid-write, leaving its .tmp files behind."""
    text = tmp_path / "in.txt"
    text.write_text("to be or not to be, that is the question\n" * 200)
    code = (
        "import os, signal, sys\n"
        "import charrnn.data as data\n"
        "header = data._npy_header\n"
        "def header_then_sigterm(f, n, dtype):\n"
        "    header(f, n, dtype)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "data._npy_header = header_then_sigterm\n"
        f"sys.argv = ['charrnn', 'prepare', {str(text)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "from charrnn.cli import run\n"
        "run()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == []  # the half-written splits were removed
