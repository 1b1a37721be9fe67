"""The cuda backend on a real GPU: `pytest -m gpu` (bench/gpu_check.sh runs it). Skipped without CuPy and a GPU.

tests/test_gpu_standin.py proves the same code path on the CPU against a stand-in; these tests
check what it cannot: CuPy's own kernels and cuBLAS, in float64 (1e-9) and float32 (1e-4),
the cells' kernels as cupy.fuse compiles them against the unfused path (the same tolerances),
resume across devices with real device arrays, and sampling on the device.
"""

import numpy as np
import pytest
from conftest import write_config


def _real_gpu() -> bool:
    try:
        import cupy

        return not cupy.__name__.startswith("fake") and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _real_gpu(), reason="needs CuPy and a visible NVIDIA GPU")]

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.mark.parametrize("cell, activation", CELLS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("V", [65, 120])
def test_loss_and_gradients_equal_the_cpu_engines(cell, activation, dtype, tol, V):
    import cupy

    from charrnn.model import CharRNN

    cpu = CharRNN(V, 64, 2, cell, activation, dropout=0.2, seed=1, dtype=dtype)
    gpu = CharRNN.from_params(cpu.params, cell, activation, 0.2, device="cuda")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (16, 20)), rng.integers(0, V, (16, 20))
    h0 = (rng.standard_normal((2, 16, cpu.state_size)) * 0.5).astype(dtype)
    lc, gc, hc = cpu.loss_and_grads(x, y, h0, rng=np.random.default_rng(3))
    lg, gg, hg = gpu.loss_and_grads(x, y, h0, rng=np.random.default_rng(3))
    assert abs(lc - lg) <= tol * max(1.0, abs(lc))
    for name in gc:
        assert isinstance(gg[name], cupy.ndarray)
        scale = max(1.0, float(np.abs(gc[name]).max()))
        np.testing.assert_allclose(cupy.asnumpy(gg[name]), gc[name], rtol=tol, atol=tol * scale, err_msg=name)
    np.testing.assert_allclose(cupy.asnumpy(hg), hc, rtol=tol, atol=tol)


@pytest.mark.parametrize("cell, activation", CELLS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_the_fused_kernels_equal_the_unfused_path(cell, activation, dtype, tol, monkeypatch):
    """The cells' step kernels compiled by cupy.fuse (the stand-in runs them as numpy) against the
    unfused sequence of CuPy ufuncs (CudaBackend.fuse_cells = False), on the same GPU."""
    import cupy

    from charrnn.backend import get_backend
    from charrnn.model import CharRNN

    be = get_backend("cuda")
    model = CharRNN(65, 64, 2, cell, activation, dropout=0.2, seed=1, dtype=dtype, device="cuda")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (16, 20)), rng.integers(0, 65, (16, 20))
    h0 = (rng.standard_normal((2, 16, model.state_size)) * 0.5).astype(dtype)
    runs = {}
    for fused in (False, True):
        monkeypatch.setattr(be, "fuse_cells", fused)
        loss, grads, h = model.loss_and_grads(x, y, h0, rng=np.random.default_rng(3))
        runs[fused] = loss, {k: cupy.asnumpy(g) for k, g in grads.items()}, cupy.asnumpy(h)
    (l0, g0, h0_), (l1, g1, h1) = runs[False], runs[True]
    assert abs(l1 - l0) <= tol * max(1.0, abs(l0))
    for name in g0:
        scale = max(1.0, float(np.abs(g0[name]).max()))
        np.testing.assert_allclose(g1[name], g0[name], rtol=tol, atol=tol * scale, err_msg=name)
    np.testing.assert_allclose(h1, h0_, rtol=tol, atol=tol)
    kernels = be.fused(type(model.cell).kernels)
    assert all(type(k).__name__ == "Fusion" for k in kernels.values())  # what ran is cupy.fuse's


def test_training_resumes_across_devices_and_samples_on_the_gpu(tmp_path, data_dir):
    from charrnn import checkpoint
    from charrnn.config import load_config
    from charrnn.sampling import Decoding, generate
    from charrnn.train import eval_checkpoint, train

    model = {"cell": "lstm", "num_layers": 2, "dropout": 0.2, "dtype": "float64"}
    kw = dict(max_steps=20, eval_every=10, batch_size=8, seq_length=32)
    runs = {}
    for name, first, second in (("cpu", "cpu", "cpu"), ("gpu-cpu", "cuda", "cpu"), ("cpu-gpu", "cpu", "cuda")):
        (tmp_path / name).mkdir()
        cfg = load_config(write_config(tmp_path / name, data_dir, model, device=first, **kw))
        calls = []
        train(cfg, should_stop=lambda calls=calls: calls.append(1) or len(calls) > 10)
        cfg.train.device = second
        assert train(cfg, resume=True).step == 20
        runs[name] = checkpoint.load(tmp_path / name / "run" / "last.npz")
    for name in ("gpu-cpu", "cpu-gpu"):
        for key, p in runs["cpu"].params.items():
            np.testing.assert_allclose(runs[name].params[key], p, rtol=1e-7, atol=1e-9, err_msg=f"{name} {key}")
    path = str(tmp_path / "gpu-cpu" / "run" / "last.npz")
    assert abs(eval_checkpoint(path)["val_loss"] - eval_checkpoint(path, device="cuda")["val_loss"]) < 1e-9
    ck = runs["gpu-cpu"]
    cpu_model, gpu_model = ck.model(), ck.model("cuda")
    for k in (1, 4):
        a = generate(cpu_model, ck.vocab, 60, "F", Decoding(argmax=True), seed=0, num_samples=k)
        b = generate(gpu_model, ck.vocab, 60, "F", Decoding(argmax=True), seed=0, num_samples=k)
        assert a == b
        texts = generate(gpu_model, ck.vocab, 60, "F", Decoding(0.8), seed=0, num_samples=k)
        assert len(texts) == k and all(len(t) == 60 for t in texts)
