"""The array backends: NumPy on the CPU, CuPy on an NVIDIA GPU, chosen in this one place.

Layers, cells, the loss, the model and the optimizers are written against a `Backend`:
its array module ``xp`` (numpy or cupy, the same function names) and the few
operations whose best form differs between the two:

    empty, zeros, copy     work arrays; on the CPU 64-byte aligned through .ctypes (layers.empty_aligned)
    asarray, asnumpy       host -> device and device -> host (the identity on the CPU)
    take_rows              the one-hot lookup; on the CPU np.take(mode="clip", out=) into the output
    check_ids              the ids' range check; on the CPU in the layer, on the GPU done on the host
                           by the model before the upload (a device min/max would stop the stream)
    sum_squares            gradient clipping's sum of squares: on the GPU summed on the device
    eager_scalars          whether a scalar result (the loss, the gradient norm) comes back to the host at
                           once, as a Python float (CPU), or stays a 0-d device array (GPU) until the
                           training loop reads a batch of them back with `to_floats`, in one transfer
    scalar, to_floats      a 0-d result as the maths hands it on (float, or the device array itself); many
                           of them as Python floats
    errstate               numpy's floating-point warnings; CuPy raises none
    fused                  a cell's per-step elementwise work as fused kernels (cupy.fuse) on the GPU,
                           None on the CPU, where the cell runs its tuned in-place sequence instead

The maths never asks which device it runs on: a function takes the backend of its
arrays (`backend_of`), so the same code runs on either, and the CPU path is the
engine it always was. The tests run the cuda path on the CPU with a NumPy-backed
stand-in for CuPy (tests/fake_cupy.py); docs/gpu.md says what is measured where.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from .errors import CharRNNError

DEVICES = ("cpu", "cuda")


class DeviceError(CharRNNError):
    """The device asked for is not usable here (no CuPy, no visible GPU)."""


class Backend:
    """numpy on the CPU; the CUDA backend overrides what differs (`CudaBackend`)."""

    name = "cpu"
    host = True  # the arrays are numpy arrays in host memory
    # True: a scalar result comes back as a Python float at once (on the CPU it is one already).
    # False: it stays a 0-d device array, and nothing in a training step waits for the device: the
    # loop reads the losses and norms back when it logs (charrnn/train.py, `_StepLog`). The one place
    # the choice is made; the maths and the loop ask this, never the device's name.
    eager_scalars = True

    def __init__(self, xp=np):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    # arrays
    def empty(self, shape, dtype=np.float32):
        from .layers import empty_aligned

        return empty_aligned(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        from .layers import zeros_aligned

        return zeros_aligned(shape, dtype)

    def copy(self, a, dtype=None):
        """A C-contiguous copy of a (host or device array) on this device, cast to dtype if given."""
        from .layers import aligned_copy

        return aligned_copy(to_host(a), dtype)  # a device array comes down first: CuPy refuses np.asarray

    def asarray(self, a, dtype=None):
        """a on this device (no copy if it is there already in that dtype)."""
        return np.asarray(a, dtype=dtype)

    def asnumpy(self, a) -> np.ndarray:
        return np.asarray(a)

    # operations whose best form differs
    def take_rows(self, table, ids, out):
        # mode="clip" (a no-op on checked ids) lets np.take write straight into out; the
        # default mode="raise" gathers into a temporary first, 4x slower at (100, 64, 512)
        np.take(table, ids, axis=0, out=out, mode="clip")
        return out

    def check_ids(self, ids, n: int, what: str, error=IndexError) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise error(f"{what} must lie in [0, {n})")

    def sum_squares(self, arrays) -> float:
        """The sum of squares of every entry of every array, as a Python float (float64 accumulation)."""
        return sum(float(np.vdot(g, g)) for g in arrays)

    def scalar(self, a):
        """A 0-d result as the maths hands it on: a Python float when eager_scalars, else a itself."""
        return float(a) if self.eager_scalars else a

    def to_floats(self, values) -> list[float]:
        """Python floats of values (floats, or 0-d arrays of this device): the loop's one read-back."""
        return [float(v) for v in values]

    def errstate(self, **kwargs):
        return np.errstate(**kwargs)

    def fused(self, kernels):
        """A cell's fused step kernels, or None: run the unfused in-place sequence.

        kernels(xp) -> {name: function of xp's ufuncs} is the cell's kernel set (for example
        `charrnn.cells.lstm.kernels`). On the CPU the answer is None: numpy runs each ufunc as
        its own loop anyway, and the cells' tuned sequences (the exp trick, block steps, no
        temporaries) are faster there than the fused functions' plain expressions.
        """
        return None


class CudaBackend(Backend):
    """CuPy on the current GPU. Parameters, state, work arrays and gradients live on the device."""

    name = "cuda"
    host = False
    eager_scalars = False  # True: read every loss and norm back at once, as the CPU does (a sync per step)
    fuse_cells = True  # False: the cells run their unfused sequence (tests/test_gpu.py compares the two)

    def __init__(self, cupy):
        super().__init__(cupy)
        self._kernels: dict = {}  # kernel set -> its functions fused, compiled once per dtype and shape rank

    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def copy(self, a, dtype=None):
        return self.xp.array(a, dtype=dtype, order="C", copy=True)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def asnumpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a) if isinstance(a, self.xp.ndarray) else np.asarray(a)

    def take_rows(self, table, ids, out):
        self.xp.take(table, ids, axis=0, out=out)
        return out

    def check_ids(self, ids, n: int, what: str, error=IndexError) -> None:
        """No check on the device: the model checks the ids on the host before they go up."""

    def sum_squares(self, arrays):
        """The sum on the device: a 0-d float64 device array (a float, one transfer, when eager_scalars)."""
        xp = self.xp
        total = xp.zeros((), dtype=np.float64)
        for g in arrays:
            total += xp.vdot(g, g).astype(np.float64)
        return self.scalar(total)

    def to_floats(self, values) -> list[float]:
        """The device scalars among values stacked and brought down in one transfer; floats pass through."""
        xp = self.xp
        on_device = [v for v in values if isinstance(v, xp.ndarray)]
        down = iter(self.asnumpy(xp.stack(on_device).astype(np.float64)).tolist() if on_device else ())
        return [next(down) if isinstance(v, xp.ndarray) else float(v) for v in values]

    def errstate(self, **kwargs):
        return contextlib.nullcontext()

    def fused(self, kernels):
        """kernels(cupy), each function fused by cupy.fuse into one elementwise kernel (built once).

        A step of a cell is then one cuBLAS product and one kernel, instead of one kernel per
        ufunc (each paying a launch). The stand-in's fuse (tests/fake_cupy.py) runs the function
        itself, so the tests run these very functions as plain ufunc expressions on the CPU.
        """
        if kernels is None or not self.fuse_cells:  # a cell without kernels runs its unfused sequence
            return None
        fused = self._kernels.get(kernels)
        if fused is None:
            cell = kernels.__module__.rsplit(".", 1)[-1]  # names in the CUDA source: charrnn_lstm_forward
            fns = kernels(self.xp).items()
            fused = self._kernels[kernels] = {n: self.xp.fuse(kernel_name=f"charrnn_{cell}_{n}")(f) for n, f in fns}
        return fused


CPU = Backend()
_cuda: CudaBackend | None = None


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def get_backend(device: str = "cpu") -> Backend:
    """The backend of a device name: cpu, or cuda (DeviceError, one line, if CuPy or a GPU is missing)."""
    global _cuda
    if check_device(device) == "cpu":
        return CPU
    if _cuda is not None and sys.modules.get("cupy") is _cuda.xp:
        return _cuda
    try:
        import cupy
    except ImportError as e:
        raise DeviceError(
            f"device cuda needs CuPy, which is not installed ({e}): pip install -e '.[gpu]' (docs/gpu.md)"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when there is no driver
        raise DeviceError(f"device cuda: CuPy finds no usable GPU ({type(e).__name__}: {e})") from None
    if count < 1:
        raise DeviceError("device cuda: CuPy sees no GPU (0 CUDA devices visible); use --device cpu")
    _cuda = CudaBackend(cupy)
    return _cuda


def backend_of(a) -> Backend:
    """The backend whose arrays a belongs to: CPU for numpy arrays and scalars."""
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(a, cp.ndarray):
        if _cuda is None or _cuda.xp is not cp:
            return get_backend("cuda")
        return _cuda
    return CPU


def to_host(a):
    """a as a numpy array (device arrays come down, numpy arrays and None pass through)."""
    if a is None or type(a) is np.ndarray:
        return a
    return backend_of(a).asnumpy(a)
