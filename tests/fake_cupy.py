"""A NumPy-backed stand-in for the parts of CuPy that charrnn's cuda backend uses. Tests only, never installed.

Installed as sys.modules["cupy"] by the `fake_cupy` fixture (tests/test_gpu_standin.py), it runs
the whole cuda code path on the CPU: the backend, the model, training, checkpoints, eval and
sampling with `device: cuda`. Device arrays are `ndarray`, a numpy subclass of their own, so that:

- a host (plain numpy) array that reaches a ufunc together with device arrays, or any cupy.*
  function other than asarray/array/asnumpy (also inside lists and tuples, and as `out=`),
  raises TypeError, as CuPy refuses to mix the two (a forgotten upload shows);
- a numpy function (np.concatenate, np.zeros_like, ...) applied to a device array raises
  TypeError (`__array_function__`), as CuPy refuses implicit conversion to numpy (a forgotten
  `xp` shows);
- a host array as an index of a device array, or assigned into one, raises TypeError (an
  implicit upload in the middle of the maths);
- whatever the engine returns (parameters, gradients, state, optimizer slots) can be checked to
  be on the "device", and checkpoints to hold plain numpy arrays (`asnumpy` gives one).

Read-backs are counted: every device -> host conversion that makes CuPy wait for the device
(`asnumpy`, `.get()`, `float()`, `int()`, `bool()`, `.item()`, `.tolist()`, and `nonzero`,
`flatnonzero` and `argwhere`, whose result size the host must learn) adds one to READBACKS under
its name, so the tests can count where the host would stop for the GPU.

`asarray` and `array` copy a host array, as an upload does: the device array never shares
memory with the host one. `fuse` runs the decorated function itself, as plain ufunc expressions
(so the cells' fused kernels are tested for their arithmetic), with two of cupy.fuse's rules
enforced while it runs: its arguments are device arrays, scalars or None, and the function
indexes no array except whole, as `x[...] = value` (cupy.fuse supports no slicing: the callers
pass each gate block as a view of its own). `cuda.runtime.getDeviceCount()` returns DEVICE_COUNT (the tests set 0
for "CuPy but no GPU"). Any other name falls through to numpy, its array results made device arrays.

What the stand-in cannot check (the tests marked `gpu` do, on a real GPU): real kernels (cuBLAS,
the kernels `cupy.fuse` compiles, CuPy's own ufunc implementations and their float32 rounding on
the device), CUDA graph capture, streams and synchronisation, memory use, timing, and whether
CuPy implements every numpy function and keyword the engine calls (a name CuPy lacks still
works here).
"""

from __future__ import annotations

import collections
import functools
import types

import numpy as np

DEVICE_COUNT = 1
__version__ = "stand-in"
READBACKS: collections.Counter = collections.Counter()  # device -> host conversions by kind (see the doc)
SYNCING = {"nonzero", "flatnonzero", "argwhere"}  # CuPy reads the count of their results back


def _read_back(kind: str) -> None:
    READBACKS[kind] += 1


class ndarray(np.ndarray):  # CuPy's name
    """A "device" array: numpy memory, its own type."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out") or ()
        if any(type(a) is np.ndarray and a.ndim for a in inputs + tuple(out)):
            raise TypeError(f"fake cupy: {ufunc.__name__} mixes host (numpy) and device arrays")
        args = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in inputs)
        if out:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __getitem__(self, index):
        _check_fused_index(index)
        if _has_host_array(index):
            raise TypeError("fake cupy: a device array indexed with a host (numpy) array")
        return super().__getitem__(index)

    def __setitem__(self, index, value):
        _check_fused_index(index)
        if _has_host_array((index, value)):
            raise TypeError("fake cupy: a host (numpy) array in an item assignment to a device array")
        super().__setitem__(index, value)

    def __array_function__(self, func, types, args, kwargs):
        if func in _PRINTING:  # repr() and str() of a device array, for error messages
            return func(*_host_view(args), **_host_view(kwargs))
        raise TypeError(f"fake cupy: numpy.{func.__name__} applied to a device array (use the array's xp)")

    def get(self) -> np.ndarray:
        return asnumpy(self)

    # the conversions that read a value back (each a wait for the device in CuPy), counted
    def __float__(self):
        _read_back("float")
        return float(self.view(np.ndarray))

    def __int__(self):
        _read_back("int")
        return int(self.view(np.ndarray))

    def __bool__(self):
        _read_back("bool")
        return bool(self.view(np.ndarray))

    def item(self, *args):
        _read_back("item")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _read_back("tolist")
        return self.view(np.ndarray).tolist()

    def nonzero(self):
        _read_back("nonzero")
        return _device(self.view(np.ndarray).nonzero())


_PRINTING = {np.array_repr, np.array_str, np.array2string}


def _has_host_array(x) -> bool:
    """Whether x holds a plain numpy array with ndim > 0 (directly or inside lists, tuples, dicts)."""
    if type(x) is np.ndarray:
        return x.ndim > 0
    if isinstance(x, (list, tuple)):
        return any(_has_host_array(v) for v in x)
    if isinstance(x, dict):
        return any(_has_host_array(v) for v in x.values())
    return False


def _host_view(x):
    """Device arrays as plain numpy views (also inside lists, tuples, dicts), for numpy to work on."""
    if isinstance(x, ndarray):
        return x.view(np.ndarray)
    if isinstance(x, list):
        return [_host_view(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_host_view(v) for v in x)
    if isinstance(x, dict):
        return {k: _host_view(v) for k, v in x.items()}
    return x


def _device(x):
    if isinstance(x, tuple):
        return tuple(_device(v) for v in x)
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, np.generic):  # numpy hands 0-d results back as scalars; CuPy's stay 0-d device arrays
        return np.asarray(x).view(ndarray)
    return x


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return np.array(a, dtype=dtype, order=order, copy=True).view(ndarray)


def array(a, dtype=None, order="K", copy=True):
    return np.array(np.asarray(a).view(np.ndarray), dtype=dtype, order=order, copy=True).view(ndarray)


def asnumpy(a) -> np.ndarray:
    if isinstance(a, ndarray):
        _read_back("asnumpy")
    return np.array(a, copy=True).view(np.ndarray)


def get_array_module(*args):
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


_fusing = 0  # > 0 while a function decorated by fuse runs


def _check_fused_index(index) -> None:
    if _fusing and not (index is Ellipsis or (isinstance(index, slice) and index == slice(None))):
        raise TypeError(f"fake cupy: indexing [{index!r}] inside a fused function (cupy.fuse takes [...] only)")


def fuse(*args, **kwargs):
    """cupy.fuse, as @fuse or @fuse(kernel_name=...): the function itself, run under two of fuse's rules."""

    def decorate(f):
        @functools.wraps(f)
        def fused(*fargs):
            global _fusing
            for a in fargs:
                if not (a is None or isinstance(a, (ndarray, np.generic, int, float, bool, complex))):
                    raise TypeError(f"fake cupy: fused {f.__name__} given a {type(a).__name__}")
            _fusing += 1
            try:
                return f(*fargs)
            finally:
                _fusing -= 1

        return fused

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: DEVICE_COUNT,
        getDeviceProperties=lambda device: {"name": b"fake_cupy stand-in"},
        memGetInfo=lambda: (0, 0),  # (free, total) bytes
    )
)


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0


def get_default_memory_pool() -> _MemoryPool:
    return _MemoryPool()


def __getattr__(name: str):
    value = getattr(np, name)
    if isinstance(value, type) or not callable(value):
        return value  # dtypes, constants

    def wrapped(*args, **kwargs):
        if _has_host_array((args, kwargs)):
            raise TypeError(f"fake cupy: cupy.{name} given a host (numpy) array")
        if name in SYNCING:
            _read_back(name)
        out = kwargs.get("out")
        result = value(*_host_view(args), **_host_view(kwargs))
        return out if out is not None and isinstance(out, ndarray) else _device(result)

    wrapped.__name__ = name
    return wrapped
