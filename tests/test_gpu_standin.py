"""The cuda code path, run on the CPU against a NumPy-backed stand-in for CuPy (tests/fake_cupy.py).

CI has no GPU. These tests prove what the stand-in can: that with `device: cuda` every array
of the engine lives on the "device" (a host array mixed into device maths, or a numpy function
applied to a device array, raises: fake_cupy's doc lists the guards), that the
loss and every gradient equal the CPU engine's, that training, evaluation, sampling and
checkpoints work across devices, and that cuda without CuPy or without a GPU is one clear line.
What it cannot check (real kernels, cupy.fuse's compiled code, graph capture, float32 rounding
on the device, timing) is tests/test_gpu.py's, marked `gpu`, on a real GPU (fake_cupy's doc).

The read-backs: the stand-in counts every device -> host conversion (fake_cupy.READBACKS), so the
tests at the end prove that no training step waits for the device on cuda, that the loss and the
gradient norm come back once per log interval and evaluation, and that the NaN guard, run at the
read-back, still names the first bad step. Whether CuPy itself syncs somewhere the count cannot
see (an allocation, a full launch queue) only a GPU shows.

The cells' fused kernels: on cuda each cell step runs the functions of its module's `kernels`,
which the stand-in's `fuse` runs as plain numpy (refusing slices and non-array arguments, as
cupy.fuse does). So the equivalence tests below check the fused kernels' equations, and count
that they are what the cuda path calls; that cupy.fuse compiles them, what they cost, and their
float32 rounding on the device, are tests/test_gpu.py's.
"""

import collections
import json
import sys

import fake_cupy
import numpy as np
import pytest
from conftest import write_config
from typer.testing import CliRunner

from charrnn import backend, checkpoint
from charrnn.backend import DeviceError, get_backend
from charrnn.cells import make_cell
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.model import CharRNN
from charrnn.optim import OPTIMIZERS, init_state
from charrnn.sampling import Decoding, generate
from charrnn.train import eval_checkpoint, train, train_step

runner = CliRunner()


@pytest.fixture
def cupy(monkeypatch):
    """The stand-in installed as cupy, one GPU visible."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(fake_cupy, "DEVICE_COUNT", 1)
    monkeypatch.setattr(backend, "_cuda", None)
    return fake_cupy


@pytest.fixture
def kernel_calls(cupy, monkeypatch):
    """Calls of each fused kernel by its kernel_name (charrnn_lstm_forward, ...), counted."""
    calls = collections.Counter()
    fuse = cupy.fuse

    def counting_fuse(kernel_name):
        def decorate(f):
            fused = fuse(kernel_name=kernel_name)(f)

            def call(*args):
                calls[kernel_name] += 1
                return fused(*args)

            return call

        return decorate

    monkeypatch.setattr(cupy, "fuse", counting_fuse)
    return calls


def on_device(a) -> bool:
    return isinstance(a, fake_cupy.ndarray)


def on_host(a) -> bool:
    return type(a) is np.ndarray


def pair(cell, activation="tanh", V=11, H=7, L=2, dropout=0.0, dtype=np.float64):
    cpu = CharRNN(V, H, L, cell, activation, dropout, seed=3, dtype=dtype)
    cuda = CharRNN.from_params(cpu.params, cell, activation, dropout, device="cuda")
    return cpu, cuda


CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.mark.parametrize("cell, activation", CELLS)
@pytest.mark.parametrize("V", [11, 120])  # 120: the embedding gradient's sort path (PRODUCT_MAX_VOCAB = 96)
def test_loss_and_every_gradient_equal_the_cpu_engines(cupy, kernel_calls, cell, activation, V):
    """On cuda the cells run their fused kernels (counted), the CPU its own loops: the same numbers."""
    cpu, cuda = pair(cell, activation, V=V, dropout=0.25)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (5, 9)), rng.integers(0, V, (5, 9))
    mask = (rng.random((5, 9)) > 0.2).astype(np.float64)
    h0 = rng.standard_normal((2, 5, cpu.state_size)) * 0.5
    for m in (None, mask):
        lc, gc, hc = cpu.loss_and_grads(x, y, h0, m, rng=np.random.default_rng(7))
        lg, gg, hg = cuda.loss_and_grads(x, y, h0, m, rng=np.random.default_rng(7))  # the same dropout masks
        assert abs(lc - lg) < 1e-10
        assert set(gc) == set(gg) == set(cpu.params)
        for name in gc:
            assert on_device(gg[name]), name
            np.testing.assert_allclose(cupy.asnumpy(gg[name]), gc[name], rtol=1e-10, atol=1e-10, err_msg=name)
        assert on_device(hg)
        np.testing.assert_allclose(cupy.asnumpy(hg), hc, rtol=1e-10, atol=1e-10)
    # evaluation and the plain forward
    np.testing.assert_allclose(float(cuda.loss(x, y, h0)[0]), cpu.loss(x, y, h0)[0], rtol=1e-12)  # a device scalar
    logits_c, _ = cpu.forward(x, h0)
    logits_g, _ = cuda.forward(x, h0)
    np.testing.assert_allclose(cupy.asnumpy(logits_g), logits_c, rtol=1e-10, atol=1e-12)
    # one kernel call per layer and step: 2 layers x 9 steps, forward in 4 passes, backward in 2
    f = f"_{activation}" if cell == "rnn" else ""
    assert kernel_calls == {f"charrnn_{cell}_forward{f}": 4 * 18, f"charrnn_{cell}_backward{f}": 2 * 18}


@pytest.mark.parametrize("cell, activation", CELLS)
def test_the_unfused_cuda_path_equals_the_cpu_engine(cupy, kernel_calls, monkeypatch, cell, activation):
    """fuse_cells = False: the CPU's loops on device arrays, tests/test_gpu.py's reference for the
    fused kernels, stay device-clean. The CPU backend never offers kernels."""
    assert backend.CPU.fused(make_cell(cell, activation).kernels) is None
    monkeypatch.setattr(backend.CudaBackend, "fuse_cells", False)
    cpu, cuda = pair(cell, activation, dropout=0.25)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (5, 9)), rng.integers(0, 11, (5, 9))
    h0 = rng.standard_normal((2, 5, cpu.state_size)) * 0.5
    lc, gc, hc = cpu.loss_and_grads(x, y, h0, rng=np.random.default_rng(7))
    lg, gg, hg = cuda.loss_and_grads(x, y, h0, rng=np.random.default_rng(7))
    assert abs(lc - lg) < 1e-10 and not kernel_calls
    for name in gc:
        assert on_device(gg[name]), name
        np.testing.assert_allclose(cupy.asnumpy(gg[name]), gc[name], rtol=1e-10, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(cupy.asnumpy(hg), hc, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_fused_kernels_take_saturated_gates(cupy, cell, dtype, tol):
    """Pre-activations of several hundred: the fused sigmoid 1 / (1 + exp(-x)) gives exactly 0 where
    exp overflows (numpy warns here, hence the errstate; a GPU kernel raises no warning)."""
    cpu = CharRNN(9, 6, 2, cell, seed=3, dtype=dtype)
    cpu.params["layers.0.Wxh"] *= 2000
    cuda = CharRNN.from_params(cpu.params, cell, "tanh", 0.0, device="cuda")
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 9, (3, 8)), rng.integers(0, 9, (3, 8))
    lc, gc, hc = cpu.loss_and_grads(x, y)
    with np.errstate(over="ignore"):
        lg, gg, hg = cuda.loss_and_grads(x, y)
    assert lg == pytest.approx(lc, rel=tol)
    np.testing.assert_allclose(cupy.asnumpy(hg), hc, atol=tol)
    for name in gc:
        g = cupy.asnumpy(gg[name])
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, gc[name], rtol=tol, atol=tol * max(1.0, np.abs(gc[name]).max()), err_msg=name)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_an_update_on_the_device_equals_the_cpu_update(cupy, optimizer):
    cpu, cuda = pair("lstm")
    from charrnn.config import TrainConfig

    tc = TrainConfig(optimizer=optimizer, weight_decay=0.01, grad_clip=0.5, warmup_steps=0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (4, 6)), rng.integers(0, 11, (4, 6))
    sc, sg = init_state(optimizer, cpu.params), init_state(optimizer, cuda.params)
    assert all(on_device(a) for a in sg.values())
    for step in range(3):
        lc, nc, _, _ = train_step(cpu, sc, x, y, None, step, tc)
        lg, ng, _, _ = train_step(cuda, sg, x, y, None, step, tc)
        assert abs(lc - lg) < 1e-10 and abs(nc - ng) < 1e-9  # the clipping norm, summed on the device
    for name, p in cpu.params.items():
        assert on_device(cuda.params[name])
        np.testing.assert_allclose(cupy.asnumpy(cuda.params[name]), p, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_sampler_steps_on_the_device_and_draws_the_same_text(cupy, cell):
    cpu, cuda = pair(cell, V=65 if cell == "rnn" else 11, dtype=np.float32)
    from charrnn.data import Vocab

    vocab = Vocab("\n" + "".join(chr(ord("A") + i) for i in range(cpu.vocab_size - 1)))
    for k, decoding in ((1, Decoding(0.8)), (3, Decoding(1.0, top_k=4)), (2, Decoding(argmax=True))):
        a = generate(cpu, vocab, 40, "AB", decoding, seed=5, num_samples=k)
        b = generate(cuda, vocab, 40, "AB", decoding, seed=5, num_samples=k)
        assert a == b
    s = cuda.stepper(cuda.initial_state(2))
    assert on_host(s.feed(np.array([1, 2]))) and on_device(s.h)  # the logits come down, the state stays up


@pytest.mark.parametrize("bad", [11, -1])
def test_out_of_range_ids_raise_the_cpu_error_on_cuda(cupy, bad):
    """CuPy does not range-check indices: step and Stepper.feed check the ids on the host, on either device."""
    cpu, cuda = pair("lstm", V=11)
    ids = np.array([0, bad])
    for model in (cpu, cuda):
        with pytest.raises(IndexError, match=r"ids must lie in \[0, 11\)"):
            model.step(ids, model.initial_state(2))
        with pytest.raises(IndexError, match=r"ids must lie in \[0, 11\)"):
            model.stepper(model.initial_state(2)).feed(ids)


def test_the_cpu_backend_copies_a_device_array_to_the_host(cupy, monkeypatch):
    """Backend.copy on the CPU brings a device array down before aligned_copy's np.asarray, which
    real CuPy refuses (implicit conversion) and the stand-in, a numpy subclass, cannot: hence the spy."""
    from charrnn import layers

    aligned_copy = layers.aligned_copy

    def host_only(a, dtype=None):
        assert on_host(a), "aligned_copy given a device array"
        return aligned_copy(a, dtype)

    monkeypatch.setattr(layers, "aligned_copy", host_only)
    d = cupy.asarray(np.arange(6.0).reshape(2, 3))
    c = backend.CPU.copy(d, np.float32)
    assert on_host(c) and c.dtype == np.float32 and c.flags.c_contiguous
    np.testing.assert_array_equal(c, np.arange(6.0).reshape(2, 3))


def test_a_model_moves_between_devices(cupy):
    cpu = CharRNN(9, 5, 2, "gru", seed=0)
    assert cpu.to("cpu") is cpu and cpu.device == "cpu"
    cuda = cpu.to("cuda")
    assert cuda.device == "cuda" and all(on_device(p) for p in cuda.params.values())
    back = cuda.to("cpu")
    assert all(on_host(p) for p in back.params.values())
    for name, p in cpu.params.items():
        np.testing.assert_array_equal(back.params[name], p)
        np.testing.assert_array_equal(cuda.host_params()[name], p)


def test_a_host_array_in_device_maths_is_refused(cupy):
    """The stand-in's guard: what the tests above rely on to find a forgotten upload."""
    with pytest.raises(TypeError, match="mixes host"):
        np.add(cupy.zeros(3), np.ones(3))


@pytest.mark.parametrize(
    "call",
    [
        lambda cp, d, h: cp.dot(d, d, out=h),
        lambda cp, d, h: cp.take(d, h.astype(np.intp)),
        lambda cp, d, h: cp.concatenate([d, h]),
        lambda cp, d, h: cp.stack((d, h)),
        lambda cp, d, h: cp.vdot(h, d),
        lambda cp, d, h: d.__setitem__(slice(None), h),
        lambda cp, d, h: d[np.array([0, 1])],
    ],
    ids=["dot-out", "take", "concatenate", "stack", "vdot", "setitem", "host-index"],
)
def test_a_host_array_given_to_a_cupy_function_is_refused(cupy, call):
    """The catch-all and the device array refuse host arrays, also inside lists and tuples and as out=."""
    d, h = cupy.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="host"):
        call(cupy, d, h)
    # 0-d host arrays (numpy scalars) and plain Python values pass, as in CuPy
    assert cupy.asnumpy(cupy.concatenate([d, cupy.ones(1)])).shape == (4,)
    d[0] = np.float64(2.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: np.concatenate([d, d]),
        lambda d: np.zeros_like(d),
        lambda d: np.take(d, [0]),
        lambda d: np.vdot(d, d),
    ],
    ids=["concatenate", "zeros_like", "take", "vdot"],
)
def test_a_numpy_function_on_a_device_array_is_refused(cupy, call):
    """__array_function__: a forgotten xp (np.* on a device array) raises, as CuPy refuses to convert."""
    with pytest.raises(TypeError, match="applied to a device array"):
        call(cupy.zeros(3))
    assert "ndarray" in repr(cupy.zeros(3))  # printing still works, for error messages


def train_cfg(tmp_path, data_dir, device, model_keys=None, **kw):
    tmp_path.mkdir(exist_ok=True)
    model = {"cell": "lstm", "num_layers": 2, "dropout": 0.2, "dtype": "float64", **(model_keys or {})}
    base = dict(max_steps=12, eval_every=6, lr_schedule="cosine", batch_size=4, seq_length=16, device=device)
    return load_config(write_config(tmp_path, data_dir, model, **{**base, **kw}))


def test_training_on_cuda_matches_cpu_and_checkpoints_cross_devices(cupy, tmp_path, data_dir):
    samples = {}
    for device in ("cpu", "cuda"):  # the samples after each evaluation too
        cb = lambda k, i, d=device: samples.setdefault(d, []).append(i["text"]) if k == "sample" else None  # noqa: E731
        r = train(train_cfg(tmp_path / device, data_dir, device, sample_chars=40), callback=cb)
        assert r.step == 12
    assert samples["cpu"] == samples["cuda"] and len(samples["cpu"]) == 2
    pc = checkpoint.load(tmp_path / "cpu" / "run" / "last.npz")
    gpu_file = tmp_path / "cuda" / "run" / "last.npz"
    pg = checkpoint.load(gpu_file)
    assert all(on_host(a) for a in (*pg.params.values(), *pg.optim_state.values(), pg.h))  # numpy in the file
    assert pg.config.train.device == "cuda" and pg.meta["config"]["train"]["device"] == "cuda"
    # a CPU checkpoint's stored config has no device key: 0.2.0, which refuses unknown keys, still reads it
    assert "device" not in pc.meta["config"]["train"] and pc.config.train.device == "cpu"
    for name in pc.params:
        np.testing.assert_allclose(pg.params[name], pc.params[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # a GPU checkpoint evaluates on the CPU and the other way round
    e_cpu = eval_checkpoint(str(gpu_file))
    e_gpu = eval_checkpoint(str(tmp_path / "cpu" / "run" / "last.npz"), device="cuda")
    assert abs(e_cpu["val_loss"] - e_gpu["val_loss"]) < 1e-9


def test_the_regularisers_and_weight_averaging_run_on_cuda_as_on_the_cpu(cupy, tmp_path, data_dir):
    keys = {"variational_dropout": "true", "weight_drop": 0.3, "embed_dropout": 0.2}
    for device in ("cpu", "cuda"):
        train(train_cfg(tmp_path / device, data_dir, device, keys, ema_decay=0.9))
    pc, pg = (checkpoint.load(tmp_path / d / "run" / "last.npz") for d in ("cpu", "cuda"))
    assert all(on_host(a) for a in pg.ema.values())
    for name in pc.params:  # the masks are drawn on the host from the run's generator: the same on both
        np.testing.assert_allclose(pg.params[name], pc.params[name], rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(pg.ema[name], pc.ema[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert [r["val_loss"] for r in pg.meta["history"]] == pytest.approx([r["val_loss"] for r in pc.meta["history"]])


def stop_after(n):
    calls = []

    def stop():  # polled once before each step
        calls.append(1)
        return len(calls) > n

    return stop


def test_resume_across_devices_continues_the_same_run(cupy, tmp_path, data_dir):
    train(train_cfg(tmp_path / "a", data_dir, "cpu", max_steps=10))
    for first, second, where in (("cuda", "cpu", "b"), ("cpu", "cuda", "c")):
        cfg = train_cfg(tmp_path / where, data_dir, first, max_steps=10)
        assert train(cfg, should_stop=stop_after(5)).step == 5
        cfg.train.device = second
        assert train(cfg, resume=True).step == 10
        pa = checkpoint.load(tmp_path / "a" / "run" / "last.npz").params
        pb = checkpoint.load(tmp_path / where / "run" / "last.npz").params
        for name in pa:
            np.testing.assert_allclose(pb[name], pa[name], rtol=1e-9, atol=1e-12, err_msg=f"{where} {name}")


def test_the_cli_trains_evaluates_and_samples_on_cuda(cupy, tmp_path, data_dir):
    cfg = write_config(tmp_path, data_dir, {"cell": "gru"}, max_steps=6, eval_every=3)
    r = runner.invoke(app, ["train", str(cfg), "--device", "cuda", "--quiet"])
    assert r.exit_code == 0, r.stderr
    ck = str(tmp_path / "run")
    assert checkpoint.load(tmp_path / "run" / "last.npz").config.train.device == "cuda"
    r_gpu = runner.invoke(app, ["eval", "--ckpt", ck, "--device", "cuda", "--json"])
    r_cpu = runner.invoke(app, ["eval", "--ckpt", ck, "--json"])
    assert r_gpu.exit_code == 0 and r_cpu.exit_code == 0, r_gpu.stderr + r_cpu.stderr
    assert r_gpu.stdout.split('"val_loss": ')[1][:8] == r_cpu.stdout.split('"val_loss": ')[1][:8]
    s_gpu = runner.invoke(app, ["sample", "--ckpt", ck, "-n", "30", "--seed", "1", "--device", "cuda"])
    s_cpu = runner.invoke(app, ["sample", "--ckpt", ck, "-n", "30", "--seed", "1"])
    assert s_gpu.exit_code == 0 and s_gpu.stdout == s_cpu.stdout


def test_cuda_without_cupy_is_one_clear_line(monkeypatch, tmp_path, data_dir):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setattr(backend, "_cuda", None)
    with pytest.raises(DeviceError, match="needs CuPy"):
        get_backend("cuda")
    cfg = write_config(tmp_path, data_dir, max_steps=2)
    for args in (["train", str(cfg), "--device", "cuda", "--quiet"], ["sample", "--ckpt", "x.npz", "--device", "cuda"],
                 ["eval", "--ckpt", "x.npz", "--device", "cuda"]):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 1, r.output
        assert "needs CuPy" in r.stderr and "pip install" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cuda_without_a_gpu_is_one_clear_line(cupy, monkeypatch, tmp_path, data_dir):
    monkeypatch.setattr(fake_cupy, "DEVICE_COUNT", 0)
    with pytest.raises(DeviceError, match="sees no GPU"):
        CharRNN(5, 4, device="cuda")
    r = runner.invoke(app, ["train", str(write_config(tmp_path, data_dir)), "--device", "cuda", "--quiet"])
    assert r.exit_code == 1 and "sees no GPU" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- read-backs (issue 21, speed work 3)


@pytest.fixture
def readbacks(cupy, monkeypatch):
    """fake_cupy's count of device -> host conversions, from zero (its doc lists what counts)."""
    counter = collections.Counter()
    monkeypatch.setattr(fake_cupy, "READBACKS", counter)
    return counter


def count_readbacks(monkeypatch, module, name, counter):
    """Wrap module.name so that the read-backs made inside each call are listed, one entry per call."""
    real, calls = getattr(module, name), []

    def counted(*args, **kwargs):
        before = sum(counter.values())
        try:
            return real(*args, **kwargs)
        finally:
            calls.append(sum(counter.values()) - before)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_cuda_training_reads_the_loss_back_only_when_it_logs_and_logs_what_the_cpu_does(
    readbacks, monkeypatch, tmp_path, data_dir
):
    """22 steps, log_every 5, an evaluation at 12, a stop after 22: no step waits for the device; the
    losses and norms come back 6 times (steps 5, 10, before the evaluation at 12, 15, 20, and the
    stop's 21-22), the evaluation once; nothing else but the checkpoints' arrays. train.jsonl,
    metrics.jsonl and every step's report equal the CPU run's (float64; the GPU path shifts each
    row of the softmax by its own maximum, hence not bit for bit)."""
    import charrnn.train as train_module

    kw = dict(max_steps=24, eval_every=12, log_every=5, grad_clip=0.25)
    steps = count_readbacks(monkeypatch, train_module, "train_step", readbacks)
    evals = count_readbacks(monkeypatch, train_module, "evaluate", readbacks)
    saves = count_readbacks(monkeypatch, checkpoint, "save", readbacks)
    runs = {}
    for device in ("cpu", "cuda"):  # the counts of the cuda run remain
        for counts in (steps, evals, saves, readbacks):
            counts.clear()
        reports = []
        cb = lambda kind, info, reports=reports: reports.append(info) if kind == "step" else None  # noqa: E731
        r = train(train_cfg(tmp_path / device, data_dir, device, **kw), callback=cb, should_stop=stop_after(22))
        assert r.step == 22 and r.status == "interrupted"
        run = tmp_path / device / "run"
        logs = {f: [json.loads(line) for line in (run / f).read_text().splitlines()]
                for f in ("train.jsonl", "metrics.jsonl")}  # fmt: skip
        runs[device] = logs, reports
    assert len(steps) == 22 and not any(steps)  # no training step waits for the device
    assert evals == [1]  # the validation losses summed on the device, read back once
    assert sum(readbacks.values()) - sum(saves) == 6 + 1 and set(readbacks) == {"asnumpy"}
    (logs_c, reports_c), (logs_g, reports_g) = runs["cpu"], runs["cuda"]
    assert [i["step"] for i in reports_g] == list(range(1, 23))  # every step reported, in order, if late
    norms = [i["grad_norm"] for i in reports_c]
    assert min(norms) < 0.25 < max(norms)  # clipping both applied and not
    for a, b in zip(reports_c, reports_g, strict=True):
        for key in ("loss", "smooth_loss", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12), (a["step"], key)
        assert isinstance(b["loss"], float) and isinstance(b["grad_norm"], float)
    assert [r["steps"] for r in logs_g["train.jsonl"]] == [5, 5, 5, 5, 2]  # the stop's record holds 21-22
    for f in ("train.jsonl", "metrics.jsonl"):
        assert len(logs_c[f]) == len(logs_g[f])
        for a, b in zip(logs_c[f], logs_g[f], strict=True):
            for key in ("step", "steps", "train_steps", "epoch"):
                assert a.get(key) == b.get(key), (f, key)
            for key in ("train_loss", "grad_norm", "lr", "val_loss", "best_val"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12), (f, key)


def test_an_eager_cuda_backend_reads_the_loss_and_norm_back_every_step(readbacks, monkeypatch, tmp_path, data_dir):
    """CudaBackend.eager_scalars = True: the behaviour before (the loss and the norm read back each step,
    and the CPU's check of rows far below the batch maximum), as a reference on a GPU."""
    monkeypatch.setattr(backend.CudaBackend, "eager_scalars", True)
    r = train(train_cfg(tmp_path, data_dir, "cuda", max_steps=4, eval_every=100, log_every=100))
    assert r.step == 4 and readbacks["float"] >= 2 * 4


def test_the_nan_guard_on_cuda_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(
    cupy, monkeypatch, tmp_path, data_dir
):
    """The update of step 25 is poisoned. On cuda the loop reads the losses back only at step 30 (the
    evaluation; log_every is larger): steps 26-30 ran on NaN parameters, yet the error names step 25
    and nothing was saved after step 20."""
    import charrnn.train as train_module

    real, calls = train_module.clip_by_global_norm, []

    def poisoned(grads, max_norm):
        calls.append(1)
        if len(calls) == 25:
            grads["Why"][...] = np.nan
        return real(grads, max_norm)

    monkeypatch.setattr(train_module, "clip_by_global_norm", poisoned)
    cfg = train_cfg(tmp_path, data_dir, "cuda", max_steps=40, eval_every=10, log_every=50)
    with pytest.raises(train_module.DivergedError, match=r"at step 25 \(gradient norm nan\).*learning_rate.*"
                                                         r"checkpoint \(step 20\) is kept in .*last.npz"):  # fmt: skip
        train(cfg)
    assert len(calls) == 30  # the steps after 25 ran before the read-back found it
    for name in ("last.npz", "best.npz"):
        ck = checkpoint.load(tmp_path / "run" / name)
        assert ck.step <= 20 and all(np.isfinite(p).all() for p in ck.params.values())
    assert not (tmp_path / "run" / "train.jsonl").exists()  # log_every 50: no record yet
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [10, 20]  # not 30: the read-back came first


def test_the_loss_of_a_row_far_below_the_batch_maximum_on_cuda(readbacks):
    """The CPU redoes such rows with their own maximum (asking which: a read-back); cuda shifts every
    row by its own maximum: the same loss and gradient, nothing read back."""
    from charrnn.layers import softmax_cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 9))
    logits[2] -= 60.0  # e^-60 below the batch maximum: the CPU path redoes this row
    targets = rng.integers(0, 9, 6)
    mask = np.array([1, 1, 0, 1, 1, 1.0])
    for m in (None, mask):
        lc, gc = softmax_cross_entropy(logits, targets, m)
        lg, gg = softmax_cross_entropy(fake_cupy.asarray(logits), fake_cupy.asarray(targets), m)
        assert not readbacks and on_device(lg) and lg.shape == ()
        assert float(lg) == pytest.approx(lc, rel=1e-14)
        np.testing.assert_allclose(fake_cupy.asnumpy(gg), gc, rtol=1e-12, atol=1e-15)
        readbacks.clear()
